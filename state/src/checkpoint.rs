//! Incremental checkpoints of a [`StateStore`] as a stream of
//! self-describing chunks, and restore from a [`BackupStore`](crate::BackupStore).
//!
//! # Chunks
//!
//! A checkpoint is an ordered sequence of chunks, each framed as
//!
//! ```text
//! len u32 | crc32 u32 | kind u8 | payload
//! ```
//!
//! (little endian; `len` counts `kind` and `payload`, `crc32` covers them).
//! The kinds, in stream order:
//!
//! - **header** (one): magic `SPATECKP`, format version, checkpoint id, base
//!   checkpoint id (0 for a full image), the bins range and `bins_log2`, the
//!   segment file's layout (full segment size, high-water mark, free
//!   segments) and every bin's segments (location and size) with its
//!   allocation state, the table registry (names and handle type names) and
//!   the runtime's opaque `meta` bytes;
//! - **page** (one per page): page index, crc32 of the page, its 4096 bytes;
//! - **trailer** (one): number of page chunks and the crc32 of the header
//!   chunk's payload.
//!
//! A full image holds every page of every segment in use by a bin; an
//! increment holds the pages written since the previous checkpoint. The
//! first checkpoint of a store, the first after a restore, split or merge,
//! and the first after `full_every` increments
//! ([`StateStore::set_checkpoint_full_every`]) are full images.
//!
//! # Consistency: asynchronous checkpoints
//!
//! [`StateStore::begin_checkpoint`] returns a [`CheckpointStream`] that
//! produces the chunks on any thread, while the store's thread goes on
//! writing: the checkpoint is exactly the store as it was at the call (which
//! the runtime makes between two batches). The call copies no page; it takes
//! the dirty bitmap, snapshots the layout (sharing each bin's segment list,
//! so the work is per bin, not per segment) and starts a **copy-on-write
//! shadow**: until the stream has read every page, the first write to a page
//! of the checkpoint copies that page (4 KiB, once) aside, and the stream
//! reads that copy instead of the live page. Each page is claimed atomically
//! by whichever side comes first, so the stream never reads a page while it
//! is written (see `store/cow.rs` for the protocol and its ordering
//! argument). The header is encoded, and a full image's page list built, by
//! the stream. Without a checkpoint in flight the write path pays one
//! predictable branch.
//!
//! One checkpoint streams at a time ([`StateError::CheckpointInFlight`]). A
//! stream dropped before its trailer is forgotten: its pages are dirty again
//! and the chain is as it was, so the next checkpoint holds them.
//! [`StateStore::checkpoint`] is a begin and a drain on the calling thread.
//!
//! # Restore
//!
//! [`StateStore::restore`] loads the chain (full image, then increments) of
//! the latest complete checkpoint in a [`BackupStore`](crate::BackupStore),
//! checking every chunk's and page's crc32 (one pass over each page: the
//! chunk's crc is derived from the page's). Bin by bin, on several threads
//! for a large store, it verifies and copies the latest version of each
//! page straight from the mapped backup files into the new store, then
//! rebuilds the bin's index by scanning its segments while they are in
//! cache (records carry their hash) and validating the record framing (see
//! `checkpoint/restore.rs`). Any fault gives
//! [`StateError::CorruptCheckpoint`] naming the checkpoint and, where known,
//! the bin and page, and restore falls back to the previous complete
//! checkpoint; nothing corrupt is loaded.

mod restore;
mod stream;

use std::collections::BTreeMap;

pub use restore::{restore_threads, RESTORE_PAGES_PER_THREAD_MIN, RESTORE_THREADS_MAX};
pub use stream::CheckpointStream;

use crate::error::StateError;
use crate::keyspace::{Bin, BinRange};
use crate::store::cow::Phase;
use crate::store::record::{u32_at, u64_at};
use crate::store::{Seg, StateStore, PAGE_BYTES, SEG_MIN_LOG2};

/// Magic bytes opening a header chunk's payload.
pub const MAGIC: [u8; 8] = *b"SPATECKP";
/// Version of the chunk format (2: segments from [`SEG_MIN_BYTES`], less
/// than a page, and dense table parts).
///
/// [`SEG_MIN_BYTES`]: crate::store::SEG_MIN_BYTES
pub const FORMAT_VERSION: u16 = 2;
/// Bytes of a chunk's framing before the payload (`len`, `crc32`, `kind`).
pub const FRAME_BYTES: usize = 9;
/// Largest chunk payload accepted by the decoder (a header of a store with
/// many segments is the largest chunk).
pub const CHUNK_MAX: usize = 1 << 30;
/// Default number of increments after which the next checkpoint is a full
/// image.
pub const FULL_EVERY_DEFAULT: u32 = 16;

const PAGE_PAYLOAD: usize = 12 + PAGE_BYTES;

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
    fn code(self) -> u8 {
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
fn frame(kind: ChunkKind, parts: &[&[u8]]) -> Vec<u8> {
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

/// A checkpoint: its chunks, in stream order.
#[derive(Debug)]
pub struct Checkpoint {
    id: u64,
    base: u64,
    pages: u64,
    chunks: Vec<Vec<u8>>,
}

impl Checkpoint {
    /// The checkpoint's id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The id of the checkpoint this one is an increment on (0 for a full
    /// image).
    pub fn base(&self) -> u64 {
        self.base
    }

    /// Whether this is a full image.
    pub fn is_full(&self) -> bool {
        self.base == 0
    }

    /// Number of page chunks.
    pub fn page_count(&self) -> u64 {
        self.pages
    }

    /// The chunks, in the order they must be sent.
    pub fn chunks(&self) -> &[Vec<u8>] {
        &self.chunks
    }

    /// The chunks, in the order they must be sent.
    pub fn into_chunks(self) -> Vec<Vec<u8>> {
        self.chunks
    }

    /// Total bytes of the chunks.
    pub fn bytes(&self) -> u64 {
        self.chunks.iter().map(|c| c.len() as u64).sum()
    }
}

/// Where a store stands in its checkpoint chain.
#[derive(Debug)]
pub(crate) struct ChainState {
    /// The last checkpoint's id (0: none yet).
    pub(crate) last: u64,
    /// Increments since the last full image.
    pub(crate) increments: u32,
    /// The next checkpoint must be a full image.
    pub(crate) need_full: bool,
    /// Increments after which a full image is taken.
    pub(crate) full_every: u32,
    /// The checkpoint begun last, with the chain as it was before, until it
    /// is settled (see `StateStore::settle_checkpoint`).
    pub(crate) inflight: Option<Inflight>,
}

/// A begun checkpoint and the chain state it replaced.
#[derive(Debug)]
pub(crate) struct Inflight {
    pub(crate) id: u64,
    pub(crate) last: u64,
    pub(crate) increments: u32,
    pub(crate) need_full: bool,
}

impl Default for ChainState {
    fn default() -> Self {
        Self { last: 0, increments: 0, need_full: true, full_every: FULL_EVERY_DEFAULT, inflight: None }
    }
}

/// A bin's layout at a checkpoint's begin.
pub(crate) struct BinSnapshot {
    segs: crate::store::Segs,
    tail: u64,
    used: u64,
    dead: u64,
}

/// What a checkpoint's header holds, taken at its begin and encoded by its
/// stream.
pub(crate) type HeaderSnapshot = CkptHeaderOf<BinSnapshot>;

impl HeaderSnapshot {
    /// The pages of the bins' segments, as a bitmap of `words` words.
    pub(crate) fn layout_page_set(&self, words: usize) -> Vec<u64> {
        let mut set = vec![0u64; words];
        for s in self.layout.iter().flat_map(|b| b.segs.iter()) {
            let (first, n) = seg_pages(s);
            set_page_bits(&mut set, first, n);
        }
        set
    }
}

/// The pages segment `s` lies in: the first and how many (one for a
/// segment smaller than a page, which shares its page with others).
pub(crate) fn seg_pages(s: &Seg) -> (u64, u64) {
    let first = s.loc / PAGE_BYTES as u64;
    let last = (s.loc + (1u64 << s.log2) - 1) / PAGE_BYTES as u64;
    (first, last - first + 1)
}

/// Sets the bits of pages `first .. first + n` in the page bitmap `set`
/// (pages past its end are left out).
fn set_page_bits(set: &mut [u64], first: u64, n: u64) {
    let (mut p, end) = (first, first + n);
    while p < end {
        let (w, b) = ((p / 64) as usize, p % 64);
        let take = (64 - b).min(end - p);
        let Some(word) = set.get_mut(w) else {
            return;
        };
        *word |= if take == 64 { u64::MAX } else { ((1u64 << take) - 1) << b };
        p += take;
    }
}

/// A bin's layout in a header.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct BinLayout {
    pub(crate) segs: Vec<Seg>,
    pub(crate) tail: u64,
    pub(crate) used: u64,
    pub(crate) dead: u64,
}

/// A table in a header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct TableEntry {
    pub(crate) name: String,
    /// The handle type name, `None` for a raw table.
    pub(crate) typed: Option<String>,
}

/// What a header chunk holds; `B` is a bin's layout: shared segment lists
/// in a store's [`HeaderSnapshot`], owned ones in a decoded [`CkptHeader`].
#[derive(Clone, Debug)]
pub(crate) struct CkptHeaderOf<B> {
    pub(crate) id: u64,
    pub(crate) base: u64,
    pub(crate) bins: BinRange,
    pub(crate) bins_log2: u8,
    pub(crate) segment_log2: u8,
    pub(crate) next_segment: u32,
    pub(crate) free: Vec<Vec<u64>>,
    pub(crate) layout: Vec<B>,
    pub(crate) tables: Vec<TableEntry>,
    pub(crate) meta: Vec<u8>,
}

/// A decoded header chunk.
pub(crate) type CkptHeader = CkptHeaderOf<BinLayout>;

/// A bin's layout as a header encodes it.
pub(crate) trait HeaderBin {
    /// The bin's `(segments, tail, used, dead)`.
    fn parts(&self) -> (&[Seg], u64, u64, u64);
}

impl HeaderBin for BinLayout {
    fn parts(&self) -> (&[Seg], u64, u64, u64) {
        (&self.segs, self.tail, self.used, self.dead)
    }
}

impl HeaderBin for BinSnapshot {
    fn parts(&self) -> (&[Seg], u64, u64, u64) {
        (&self.segs, self.tail, self.used, self.dead)
    }
}

struct Writer(Vec<u8>);

impl Writer {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u16(&mut self, v: u16) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn bytes(&mut self, b: &[u8]) {
        self.u32(b.len() as u32);
        self.0.extend_from_slice(b);
    }
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.b.len());
        let end = end.ok_or_else(|| format!("header truncated at byte {} (needs {n} more)", self.at))?;
        let s = &self.b[self.at..end];
        self.at = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, String> {
        let s = self.take(2)?;
        Ok(u16::from_le_bytes([s[0], s[1]]))
    }
    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32_at(self.take(4)?, 0))
    }
    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64_at(self.take(8)?, 0))
    }
    fn bytes(&mut self) -> Result<&'a [u8], String> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    fn string(&mut self) -> Result<String, String> {
        String::from_utf8(self.bytes()?.to_vec()).map_err(|_| "header string is not UTF-8".to_string())
    }
    /// A count of items of at least `min_bytes` each, bounded by the bytes left.
    fn count(&mut self, min_bytes: usize) -> Result<usize, String> {
        let n = self.u32()? as usize;
        if n.saturating_mul(min_bytes) > self.b.len() - self.at {
            return Err(format!("header count {n} exceeds the bytes left"));
        }
        Ok(n)
    }
}

impl<B: HeaderBin> CkptHeaderOf<B> {
    /// The header chunk's payload: the fields, each bin's layout
    /// `(segments, tail, used, dead)` and each table `(name, handle type
    /// name)`. The one encoder of both a store's header (without copying
    /// its layout) and a decoded one.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut w = Writer(Vec::with_capacity(64 + self.meta.len() + self.layout.len() * 48));
        w.0.extend_from_slice(&MAGIC);
        w.u16(FORMAT_VERSION);
        w.u64(self.id);
        w.u64(self.base);
        w.u32(self.bins.start);
        w.u32(self.bins.end);
        w.u8(self.bins_log2);
        w.u8(self.segment_log2);
        w.u32(self.next_segment);
        w.u32(self.free.len() as u32);
        for class in &self.free {
            w.u32(class.len() as u32);
            class.iter().for_each(|&l| w.u64(l));
        }
        w.u32(self.layout.len() as u32);
        for (segs, tail, used, dead) in self.layout.iter().map(HeaderBin::parts) {
            w.u32(segs.len() as u32);
            for s in segs {
                w.u64(s.loc);
                w.u8(s.log2 as u8);
            }
            w.u64(tail);
            w.u64(used);
            w.u64(dead);
        }
        w.u32(self.tables.len() as u32);
        for TableEntry { name, typed } in &self.tables {
            w.bytes(name.as_bytes());
            match typed {
                None => w.u8(0),
                Some(n) => {
                    w.u8(1);
                    w.bytes(n.as_bytes());
                }
            }
        }
        w.bytes(&self.meta);
        w.0
    }
}

impl CkptHeader {
    /// Decodes and checks a header payload (not the layout against the
    /// pages: see `validate_layout`).
    pub(crate) fn decode(b: &[u8]) -> Result<Self, String> {
        let mut r = Reader { b, at: 0 };
        if r.take(8)? != MAGIC {
            return Err("bad magic".into());
        }
        let v = r.u16()?;
        if v != FORMAT_VERSION {
            return Err(format!("format version {v} is not {FORMAT_VERSION}"));
        }
        let id = r.u64()?;
        let base = r.u64()?;
        let (start, end) = (r.u32()?, r.u32()?);
        let bins_log2 = r.u8()?;
        let segment_log2 = r.u8()?;
        if !(12..=30).contains(&segment_log2) || start > end || bins_log2 > crate::keyspace::BINS_LOG2_MAX {
            return Err("bad bins or segment size".into());
        }
        if u64::from(end) > 1u64 << bins_log2 {
            return Err(format!("bins {start}..{end} exceed 2^{bins_log2}"));
        }
        let next_segment = r.u32()?;
        let classes = r.count(4)?;
        if classes != (u32::from(segment_log2) - SEG_MIN_LOG2 + 1) as usize {
            return Err(format!("{classes} free classes for segments of 2^{segment_log2}"));
        }
        let mut free = Vec::with_capacity(classes);
        for _ in 0..classes {
            let n = r.count(8)?;
            free.push((0..n).map(|_| r.u64()).collect::<Result<Vec<_>, _>>()?);
        }
        let nbins = r.count(28)?;
        if nbins != (end - start) as usize {
            return Err(format!("{nbins} bin layouts for bins {start}..{end}"));
        }
        let mut layout = Vec::with_capacity(nbins);
        for _ in 0..nbins {
            let n = r.count(9)?;
            let mut segs = Vec::with_capacity(n);
            for _ in 0..n {
                let loc = r.u64()?;
                let log2 = u32::from(r.u8()?);
                segs.push(Seg { loc, log2 });
            }
            layout.push(BinLayout { segs, tail: r.u64()?, used: r.u64()?, dead: r.u64()? });
        }
        let ntables = r.count(5)?;
        if ntables > crate::store::TABLES_MAX {
            return Err(format!("{ntables} tables"));
        }
        let mut tables = Vec::with_capacity(ntables);
        for _ in 0..ntables {
            let name = r.string()?;
            let typed = match r.u8()? {
                0 => None,
                1 => Some(r.string()?),
                k => return Err(format!("table kind {k}")),
            };
            tables.push(TableEntry { name, typed });
        }
        let meta = r.bytes()?.to_vec();
        if r.at != b.len() {
            return Err(format!("{} trailing header bytes", b.len() - r.at));
        }
        let h = CkptHeader {
            id,
            base,
            bins: BinRange::new(start, end),
            bins_log2,
            segment_log2,
            next_segment,
            free,
            layout,
            tables,
            meta,
        };
        h.validate_layout()?;
        Ok(h)
    }

    /// Checks that segments are aligned, sized and below the high-water
    /// mark, and that tails and byte counts are consistent.
    fn validate_layout(&self) -> Result<(), String> {
        let seg_log2 = u32::from(self.segment_log2);
        let limit = u64::from(self.next_segment) << seg_log2;
        let seg_ok = |s: &Seg| {
            (SEG_MIN_LOG2..=seg_log2).contains(&s.log2)
                && s.loc & ((1u64 << s.log2) - 1) == 0
                && s.loc.checked_add(1 << s.log2).is_some_and(|e| e <= limit)
        };
        for (class, locs) in self.free.iter().enumerate() {
            let log2 = SEG_MIN_LOG2 + class as u32;
            if !locs.iter().all(|&loc| seg_ok(&Seg { loc, log2 })) {
                return Err(format!("free segment of class {class} out of the file"));
            }
        }
        for (i, b) in self.layout.iter().enumerate() {
            if !b.segs.iter().all(seg_ok) {
                return Err(format!("bin {}: segment out of the file", self.bins.start + i as u32));
            }
            let capacity: u64 = b.segs.iter().map(|s| 1u64 << s.log2).sum();
            let tail_ok = match b.segs.last() {
                None => b.tail == 0,
                Some(s) => (s.loc..=s.loc + (1 << s.log2)).contains(&b.tail),
            };
            if !tail_ok || b.used > capacity || b.dead > b.used {
                return Err(format!("bin {}: inconsistent tail or byte counts", self.bins.start + i as u32));
            }
        }
        Ok(())
    }

    /// The bin whose segments hold page `p`, if any.
    pub(crate) fn bin_of_page(&self, p: u64) -> Option<Bin> {
        let loc = p * PAGE_BYTES as u64;
        self.layout
            .iter()
            .position(|b| b.segs.iter().any(|s| (s.loc..s.loc + (1 << s.log2)).contains(&loc)))
            .map(|i| self.bins.start + i as u32)
    }
}

/// A checkpoint's bytes, validated: its header and its pages (index and
/// the 4096 bytes, borrowed).
pub(crate) struct Parsed<'a> {
    pub(crate) header: CkptHeader,
    pub(crate) pages: Vec<(u64, &'a [u8])>,
}

fn corrupt(checkpoint: u64, bin: Option<Bin>, page: Option<u64>, reason: impl Into<String>) -> StateError {
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

/// The pages of the segments in use by the bins of `layout`, ascending,
/// each once.
pub(crate) fn layout_pages(layout: &[BinLayout]) -> Vec<u64> {
    let mut pages: Vec<u64> = layout
        .iter()
        .flat_map(|b| b.segs.iter())
        .flat_map(|s| {
            let (first, n) = seg_pages(s);
            first..first + n
        })
        .collect();
    pages.sort_unstable();
    pages.dedup();
    pages
}

impl StateStore {
    /// Sets after how many increments the next checkpoint is a full image
    /// (default [`FULL_EVERY_DEFAULT`]; 0: every checkpoint is full).
    pub fn set_checkpoint_full_every(&mut self, increments: u32) {
        self.chain.full_every = increments;
    }

    /// Makes the next checkpoint a full image (its chain's earlier links
    /// may be missing where it will be restored: a new backup node, or a
    /// checkpoint that was voided).
    pub fn require_full_checkpoint(&mut self) {
        self.chain.need_full = true;
    }

    /// The id of the last checkpoint taken, begun (or restored), 0 if none.
    /// A checkpoint whose stream was dropped before its trailer does not
    /// count.
    pub fn last_checkpoint(&self) -> u64 {
        match (&self.chain.inflight, self.file.cow_phase()) {
            (Some(prev), Some(Phase::Abandoned)) => prev.last,
            _ => self.chain.last,
        }
    }

    /// Takes checkpoint `id` (greater than the last one's) with the
    /// runtime's opaque `meta` bytes, synchronously: a full image if it is
    /// the store's first (or the first after a restore, split or merge, or
    /// after the configured number of increments), else the pages written
    /// since the last checkpoint. [`StateStore::begin_checkpoint`] and a
    /// drain of its stream on this thread: the result is a consistent image
    /// at the call. Clears the dirty bits. Prefer `begin_checkpoint` for a
    /// large state: this call holds the processing thread for the copy.
    pub fn checkpoint(&mut self, id: u64, meta: &[u8]) -> Result<Checkpoint, StateError> {
        let ckpt = self.begin_checkpoint(id, meta)?.into_checkpoint();
        self.settle_checkpoint()?;
        Ok(ckpt)
    }

    /// Begins checkpoint `id` (greater than the last one's) with the
    /// runtime's opaque `meta` bytes and returns its [`CheckpointStream`],
    /// which produces the chunks on any thread while this store goes on
    /// being written: the image is the store exactly as it is at this call
    /// (a copy-on-write shadow keeps the pages the store overwrites before
    /// the stream reads them). A full image if it is the store's first (or
    /// the first after a restore, split or merge, or after the configured
    /// number of increments), else the pages written since the last
    /// checkpoint. Clears the dirty bits.
    ///
    /// The call copies no page and encodes nothing: it takes the dirty
    /// bitmap, snapshots the layout (each bin's segment list is shared, not
    /// copied) and the tables, sets up the page bitmaps of the copy-on-write
    /// and maps the shadow's address space. Its pause grows with the number
    /// of bins and with a word per 64 pages of the file, not with the bytes
    /// of state; the stream encodes the header and, for a full image, finds
    /// the pages of the bins' segments. While the stream reads pages, each
    /// first write to a page of the checkpoint (for a full image, to any
    /// page of the file) copies that page (4 KiB) into the shadow.
    ///
    /// One checkpoint streams at a time: fails with
    /// [`StateError::CheckpointInFlight`] while the previous stream has not
    /// handed out its trailer and is not dropped. A stream dropped before
    /// its trailer is forgotten: its pages are dirty again and the chain is
    /// as before it began (the next checkpoint has the same base, or is a
    /// full image if this one was), so no page is ever lost.
    pub fn begin_checkpoint(&mut self, id: u64, meta: &[u8]) -> Result<CheckpointStream, StateError> {
        self.settle_checkpoint().map_err(|e| match e {
            StateError::CheckpointInFlight { checkpoint, .. } => {
                StateError::CheckpointInFlight { checkpoint, requested: id }
            }
            e => e,
        })?;
        if id == 0 || id <= self.chain.last {
            return Err(StateError::InvalidConfig {
                field: "checkpoint id",
                reason: format!("{id} is not above the last checkpoint {}", self.chain.last),
            });
        }
        let full = self.chain.need_full || self.chain.increments >= self.chain.full_every;
        let base = if full { 0 } else { self.chain.last };
        // The one step that can fail, before anything changes.
        let mut shadow = self.file.map_shadow()?;
        let snapshot = self.header_snapshot(id, base, meta);
        // How the next dirty epoch's burst updates mark pages, from how
        // this one's did.
        self.plan_whole_marks();
        // A full image: every page of the file is copied before it is first
        // written (the stream reads those of the bins' segments, from the
        // snapshot); an increment: the dirty pages.
        let set = (!full).then(|| self.file.take_dirty());
        let (shared, live) = self.file.begin_cow(set, &mut shadow);
        let pages = if full {
            self.file.clear_dirty();
            let words = shared.set.len();
            snapshot.layout_page_set(words).iter().map(|w| u64::from(w.count_ones())).sum()
        } else {
            shared.page_count()
        };
        self.chain.inflight = Some(Inflight {
            id,
            last: self.chain.last,
            increments: self.chain.increments,
            need_full: self.chain.need_full,
        });
        self.chain.last = id;
        self.chain.need_full = false;
        self.chain.increments = if full { 0 } else { self.chain.increments + 1 };
        Ok(CheckpointStream::new(snapshot, pages, shared, shadow.take(), live))
    }

    /// Whether a checkpoint's stream is still producing chunks (begun, its
    /// trailer not handed out, not dropped).
    pub fn checkpoint_in_flight(&self) -> bool {
        matches!(self.file.cow_phase(), Some(Phase::Pages | Phase::PagesDone))
    }

    /// Settles the checkpoint whose stream ended: forgets a complete one;
    /// for one dropped before its trailer, marks its pages dirty again and
    /// puts the chain back as it was before it began (keeping a full image
    /// asked for since). Fails if its stream is still producing chunks.
    pub(crate) fn settle_checkpoint(&mut self) -> Result<(), StateError> {
        let Some(phase) = self.file.cow_phase() else {
            return Ok(());
        };
        match phase {
            Phase::Pages | Phase::PagesDone => {
                return Err(StateError::CheckpointInFlight { checkpoint: self.chain.last, requested: 0 });
            }
            Phase::Complete => {
                self.file.end_cow();
            }
            Phase::Abandoned => {
                if let Some(shared) = self.file.end_cow() {
                    self.file.redirty(&shared.set);
                }
                if let Some(prev) = self.chain.inflight.take() {
                    debug_assert_eq!(prev.id, self.chain.last);
                    self.chain.last = prev.last;
                    self.chain.increments = prev.increments;
                    self.chain.need_full |= prev.need_full;
                }
            }
        }
        self.chain.inflight = None;
        Ok(())
    }

    /// What the header of checkpoint `id` on `base` (0: a full image)
    /// holds, without copying any bin's segment list (they are shared until
    /// the bin next changes): the work is per bin and per table, not per
    /// segment.
    fn header_snapshot(&self, id: u64, base: u64, meta: &[u8]) -> HeaderSnapshot {
        HeaderSnapshot {
            id,
            base,
            bins: self.bins,
            bins_log2: self.config.bins_log2,
            segment_log2: self.file.segment_log2() as u8,
            next_segment: self.file.next_segment(),
            free: self.file.free_lists().to_vec(),
            layout: self
                .heaps
                .iter()
                .map(|h| BinSnapshot { segs: h.segs.clone(), tail: h.tail, used: h.used, dead: h.dead })
                .collect(),
            tables: self
                .tables
                .iter()
                .map(|t| {
                    let typed =
                        (t.sig.is_some() || t.restored_sig.is_some()).then(|| t.type_name().to_string());
                    TableEntry { name: t.name.clone(), typed }
                })
                .collect(),
            meta: meta.to_vec(),
        }
    }
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
