//! Chunk framing: framing a payload as a chunk, the page and trailer
//! chunks, encoding a whole checkpoint, and reading stored bytes back:
//! decoding and checking chunks, walking a checkpoint's chunks (its page
//! chunks located by their framing and verified when read), parsing it,
//! and compacting a parsed chain into one full image.

use std::collections::BTreeMap;

use super::header::{layout_pages, CkptHeader};
use super::{Checkpoint, CHUNK_MAX, FRAME_BYTES, PAGE_PAYLOAD};
use crate::error::StateError;
use crate::keyspace::Bin;
use crate::store::record::{u32_at, u64_at};
use crate::store::PAGE_BYTES;

/// The kind of a chunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChunkKind {
    /// The checkpoint's manifest (first chunk).
    Header,
    /// One page of the segment file.
    Page,
    /// The end of the checkpoint (last chunk).
    Trailer,
}

impl ChunkKind {
    pub(super) fn code(self) -> u8 {
        match self {
            ChunkKind::Header => 1,
            ChunkKind::Page => 2,
            ChunkKind::Trailer => 3,
        }
    }

    fn from_code(c: u8) -> Option<Self> {
        match c {
            1 => Some(ChunkKind::Header),
            2 => Some(ChunkKind::Page),
            3 => Some(ChunkKind::Trailer),
            _ => None,
        }
    }
}

/// One decoded chunk, borrowing its payload.
#[derive(Clone, Copy, Debug)]
pub struct Chunk<'a> {
    /// The chunk's kind.
    pub kind: ChunkKind,
    /// The payload (after the framing).
    pub payload: &'a [u8],
}

/// Decodes the chunk at the start of `buf`, checking its framing and crc32;
/// returns it and the bytes it spans. The error says what is wrong.
pub fn decode_chunk(buf: &[u8]) -> Result<(Chunk<'_>, usize), String> {
    if buf.len() < FRAME_BYTES {
        return Err(format!("truncated chunk framing: {} bytes", buf.len()));
    }
    let len = u32_at(buf, 0) as usize;
    if len == 0 || len > CHUNK_MAX {
        return Err(format!("chunk length {len} out of range"));
    }
    let end = 8 + len;
    if buf.len() < end {
        return Err(format!("truncated chunk: {} of {end} bytes", buf.len()));
    }
    let crc = u32_at(buf, 4);
    let body = &buf[8..end];
    let actual = crc32fast::hash(body);
    if actual != crc {
        return Err(format!("chunk crc32 mismatch: stored {crc:#010x}, computed {actual:#010x}"));
    }
    let kind = ChunkKind::from_code(body[0]).ok_or_else(|| format!("unknown chunk kind {}", body[0]))?;
    Ok((Chunk { kind, payload: &body[1..] }, end))
}

/// Frames a payload as a chunk.
pub(super) fn frame(kind: ChunkKind, parts: &[&[u8]]) -> Vec<u8> {
    let len: usize = 1 + parts.iter().map(|p| p.len()).sum::<usize>();
    let mut out = Vec::with_capacity(8 + len);
    out.extend_from_slice(&(len as u32).to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.push(kind.code());
    for p in parts {
        out.extend_from_slice(p);
    }
    let crc = crc32fast::hash(&out[8..]);
    out[4..8].copy_from_slice(&crc.to_le_bytes());
    out
}

/// A checkpoint's bytes, validated: its header and its pages (index and
/// the 4096 bytes, borrowed).
pub(crate) struct Parsed<'a> {
    pub(crate) header: CkptHeader,
    pub(crate) pages: Vec<(u64, &'a [u8])>,
}

pub(super) fn corrupt(
    checkpoint: u64,
    bin: Option<Bin>,
    page: Option<u64>,
    reason: impl Into<String>,
) -> StateError {
    StateError::CorruptCheckpoint { checkpoint, bin, page, reason: reason.into() }
}

/// Checks a page chunk's payload; returns the page index and bytes.
pub(crate) fn decode_page(payload: &[u8]) -> Result<(u64, &[u8]), (Option<u64>, String)> {
    if payload.len() != PAGE_PAYLOAD {
        return Err((None, format!("page chunk of {} bytes, not {PAGE_PAYLOAD}", payload.len())));
    }
    let p = u64_at(payload, 0);
    let crc = u32_at(payload, 8);
    let data = &payload[12..];
    let actual = crc32fast::hash(data);
    if crc != actual {
        return Err((Some(p), format!("page crc32 mismatch: stored {crc:#010x}, computed {actual:#010x}")));
    }
    Ok((p, data))
}

/// The page chunk at the start of `b`, if it is one whose framing is intact
/// and whose chunk and page crc32s both match, checked in one pass over the
/// page (the chunk's crc extends the crc of the 13 bytes before the page
/// with the page's crc): its page index, the page and the chunk's length.
/// `None` otherwise: the caller decodes the chunk with [`decode_chunk`] and
/// [`decode_page`], which compute the same crcs and name the fault.
pub(crate) fn page_chunk_fast(b: &[u8]) -> Option<(u64, &[u8], usize)> {
    const N: usize = 9 + PAGE_PAYLOAD;
    if b.len() < N || u32_at(b, 0) as usize != 1 + PAGE_PAYLOAD || b[8] != ChunkKind::Page.code() {
        return None;
    }
    let data = &b[21..N];
    let data_crc = crc32fast::hash(data);
    if data_crc != u32_at(b, 17) {
        return None;
    }
    let mut h = crc32fast::Hasher::new();
    h.update(&b[8..21]);
    h.combine(&crc32fast::Hasher::new_with_initial_len(data_crc, PAGE_BYTES as u64));
    (h.finalize() == u32_at(b, 4)).then(|| (u64_at(b, 9), data, N))
}

/// Checks a trailer payload against the pages seen and the header payload.
pub(crate) fn check_trailer(payload: &[u8], pages: u64, header_payload: &[u8]) -> Result<(), String> {
    if payload.len() != 12 {
        return Err(format!("trailer of {} bytes", payload.len()));
    }
    let (n, crc) = (u64_at(payload, 0), u32_at(payload, 8));
    if n != pages {
        return Err(format!("trailer counts {n} pages, {pages} received"));
    }
    if crc != crc32fast::hash(header_payload) {
        return Err("trailer's header crc32 does not match the header".into());
    }
    Ok(())
}

/// The page index a page chunk at the start of `b` claims, if its framing
/// (length and kind) is intact.
fn peek_page(b: &[u8]) -> Option<u64> {
    let ok = b.len() >= 8 + 1 + PAGE_PAYLOAD
        && u32_at(b, 0) as usize == 1 + PAGE_PAYLOAD
        && b[8] == ChunkKind::Page.code();
    ok.then(|| u64_at(b, 9))
}

/// Validates the stored bytes of checkpoint `id` (every chunk and page crc,
/// the order of chunks, the trailer): [`walk`], then every page chunk's
/// crcs in stream order (so with several faults, damaged framing is named
/// before a damaged page that precedes it).
pub(crate) fn parse(id: u64, bytes: &[u8]) -> Result<Parsed<'_>, StateError> {
    let framed = walk(id, bytes)?;
    let pages = framed
        .pages
        .iter()
        .map(|c| Ok((c.page, framed.verify(c)?)))
        .collect::<Result<Vec<_>, StateError>>()?;
    Ok(Parsed { header: framed.header, pages })
}

/// Bytes of a page chunk: framing, page index, page crc32, page.
pub(crate) const PAGE_CHUNK: usize = FRAME_BYTES + PAGE_PAYLOAD;

/// A page chunk located by [`walk`], its crcs not checked yet.
#[derive(Clone, Copy, Debug)]
pub(crate) struct PageChunk<'a> {
    /// The page index the chunk claims.
    pub(crate) page: u64,
    /// The chunk's byte offset in its checkpoint's bytes (for errors).
    pub(crate) at: usize,
    /// The chunk's [`PAGE_CHUNK`] bytes.
    pub(crate) bytes: &'a [u8],
}

/// A checkpoint's bytes with every chunk but the pages' validated: its
/// header (decoded, checked) and its page chunks, located by their framing.
/// The trailer matched the header and the number of page chunks.
pub(crate) struct Framed<'a> {
    pub(crate) id: u64,
    pub(crate) header: CkptHeader,
    pub(crate) pages: Vec<PageChunk<'a>>,
}

impl<'a> Framed<'a> {
    /// Checks the crcs of page chunk `c` of this checkpoint (one pass over
    /// the page, [`page_chunk_fast`]); returns the page's bytes, or the
    /// error naming the checkpoint, the page the chunk claims and its bin.
    #[inline]
    pub(crate) fn verify(&self, c: &PageChunk<'a>) -> Result<&'a [u8], StateError> {
        match page_chunk_fast(c.bytes) {
            Some((_, data, n)) if n == c.bytes.len() => Ok(data),
            _ => self.fault(c),
        }
    }

    /// What is wrong with page chunk `c`, whose fast check failed: the
    /// full decode names it (the same checks, one at a time).
    #[cold]
    fn fault(&self, c: &PageChunk<'a>) -> Result<&'a [u8], StateError> {
        let (id, h) = (self.id, &self.header);
        let (chunk, _) = decode_chunk(c.bytes).map_err(|r| {
            corrupt(id, h.bin_of_page(c.page), Some(c.page), format!("chunk at byte {}: {r}", c.at))
        })?;
        let (_, data) = decode_page(chunk.payload)
            .map_err(|(p, r)| corrupt(id, p.and_then(|p| h.bin_of_page(p)), p, r))?;
        Ok(data)
    }
}

/// Walks the stored bytes of checkpoint `id`: decodes and checks its
/// header, its trailer and the order of its chunks, and locates its page
/// chunks by their framing (length and kind) without reading their pages,
/// so that a restore reads each page once, when it verifies it
/// ([`Framed::verify`]) and copies it. A page chunk whose framing is
/// damaged fails here; one whose contents are damaged, at its verification.
pub(crate) fn walk(id: u64, bytes: &[u8]) -> Result<Framed<'_>, StateError> {
    let mut at = 0;
    let mut header: Option<(CkptHeader, &[u8])> = None;
    let mut pages = Vec::new();
    let mut last_page = None;
    loop {
        if at >= bytes.len() {
            return Err(corrupt(id, None, last_page, "truncated: no trailer"));
        }
        if header.is_some() {
            if let Some(page) = peek_page(&bytes[at..]) {
                pages.push(PageChunk { page, at, bytes: &bytes[at..at + PAGE_CHUNK] });
                at += PAGE_CHUNK;
                last_page = Some(page);
                continue;
            }
        }
        let (chunk, n) = decode_chunk(&bytes[at..]).map_err(|r| {
            // The page after the last one located is named (a chunk framed
            // as a page was taken above).
            let page = last_page.map(|p| p + 1).filter(|_| header.is_some());
            let bin = page.and_then(|p| header.as_ref().and_then(|(h, _)| h.bin_of_page(p)));
            corrupt(id, bin, page, format!("chunk at byte {at}: {r}"))
        })?;
        at += n;
        match (chunk.kind, &header) {
            (ChunkKind::Header, None) => {
                let h = CkptHeader::decode(chunk.payload).map_err(|r| corrupt(id, None, None, r))?;
                if h.id != id {
                    return Err(corrupt(id, None, None, format!("header names checkpoint {}", h.id)));
                }
                header = Some((h, chunk.payload));
            }
            (ChunkKind::Page, Some((h, _))) => {
                // An intact page chunk is framed as one and was taken above:
                // this one's length is wrong.
                let (p, r) = decode_page(chunk.payload)
                    .err()
                    .unwrap_or((None, format!("page chunk of {} bytes", chunk.payload.len())));
                return Err(corrupt(id, p.and_then(|p| h.bin_of_page(p)), p, r));
            }
            (ChunkKind::Trailer, Some((_, hp))) => {
                check_trailer(chunk.payload, pages.len() as u64, hp)
                    .map_err(|r| corrupt(id, None, None, r))?;
                if at != bytes.len() {
                    return Err(corrupt(id, None, None, "bytes after the trailer"));
                }
                let (header, _) = header.ok_or_else(|| corrupt(id, None, None, "no header"))?;
                return Ok(Framed { id, header, pages });
            }
            (k, _) => return Err(corrupt(id, None, last_page, format!("unexpected {k:?} chunk"))),
        }
    }
}

/// Encodes a checkpoint from a header and its pages.
pub(crate) fn encode<'a>(header: &CkptHeader, pages: impl Iterator<Item = (u64, &'a [u8])>) -> Checkpoint {
    let hp = header.encode();
    let mut chunks = vec![frame(ChunkKind::Header, &[&hp])];
    let mut n = 0u64;
    for (p, data) in pages {
        let crc = crc32fast::hash(data);
        chunks.push(frame(ChunkKind::Page, &[&p.to_le_bytes(), &crc.to_le_bytes(), data]));
        n += 1;
    }
    let mut t = n.to_le_bytes().to_vec();
    t.extend_from_slice(&crc32fast::hash(&hp).to_le_bytes());
    chunks.push(frame(ChunkKind::Trailer, &[&t]));
    Checkpoint { id: header.id, base: header.base, pages: n, chunks }
}

/// Builds a full image of the chain `parsed` (oldest first, validated):
/// the last header with base 0 and every page of its layout.
pub(crate) fn compact_chain(parsed: &[Parsed<'_>]) -> Option<Checkpoint> {
    let last = parsed.last()?;
    let mut pages: BTreeMap<u64, &[u8]> = BTreeMap::new();
    let wanted: std::collections::BTreeSet<u64> = layout_pages(&last.header.layout).into_iter().collect();
    for p in parsed {
        for &(page, data) in &p.pages {
            if wanted.contains(&page) {
                pages.insert(page, data);
            }
        }
    }
    let zero = [0u8; PAGE_BYTES];
    let mut header = last.header.clone();
    header.base = 0;
    Some(encode(&header, wanted.iter().map(|p| (*p, pages.get(p).copied().unwrap_or(&zero[..])))))
}
