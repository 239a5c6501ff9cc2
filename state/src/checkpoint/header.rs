//! The header chunk of a checkpoint: what it holds ([`CkptHeaderOf`]: a
//! store's layout and tables, snapshotted at a checkpoint's begin, or
//! decoded from a stored header), its one encoder, its decoder with the
//! layout's checks, and the pages a layout's segments lie in.

use super::{FORMAT_VERSION, MAGIC};
use crate::keyspace::{Bin, BinRange};
use crate::store::record::{u32_at, u64_at};
use crate::store::{Seg, PAGE_BYTES, SEG_MIN_LOG2};

/// A bin's layout at a checkpoint's begin.
pub(crate) struct BinSnapshot {
    pub(super) segs: crate::store::Segs,
    pub(super) tail: u64,
    pub(super) used: u64,
    pub(super) dead: u64,
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
