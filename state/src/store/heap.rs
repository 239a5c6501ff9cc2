//! Each bin's allocation: its segments ([`BinHeap`], [`Segs`]), bump
//! allocation of records into the last one, dead bytes (`kill`), and the
//! compaction of a bin whose garbage reaches half its segments.

use super::index::{slot_loc, EMPTY};
use super::record::*;
use super::{SegmentFile, StateStore};
use crate::error::StateError;

/// One segment of a bin: its location and log2 of its bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Seg {
    pub(crate) loc: u64,
    pub(crate) log2: u32,
}

/// A bin's segments: none or one inline (most bins: a reservation gives
/// each of 4 096 bins one, which as a shared vector took two allocations
/// to make and two frees to drop: handing out the segments of a
/// 100 000-key reservation took 0.6–0.8 ms, 0.11 ms inline), or
/// several in a vector shared with the snapshot of a checkpoint being
/// streamed (copied on the next change, see
/// [`StateStore::begin_checkpoint`]). Reads as a slice.
#[derive(Clone, Debug, Default)]
pub(crate) enum Segs {
    #[default]
    None,
    One(Seg),
    Many(std::sync::Arc<Vec<Seg>>),
}

impl Segs {
    /// Appends `s`.
    pub(crate) fn push(&mut self, s: Seg) {
        match self {
            Segs::None => *self = Segs::One(s),
            Segs::One(first) => *self = Segs::Many(std::sync::Arc::new(vec![*first, s])),
            Segs::Many(v) => std::sync::Arc::make_mut(v).push(s),
        }
    }
}

impl From<Vec<Seg>> for Segs {
    fn from(v: Vec<Seg>) -> Self {
        match v[..] {
            [] => Segs::None,
            [s] => Segs::One(s),
            _ => Segs::Many(std::sync::Arc::new(v)),
        }
    }
}

impl std::ops::Deref for Segs {
    type Target = [Seg];
    fn deref(&self) -> &[Seg] {
        match self {
            Segs::None => &[],
            Segs::One(s) => std::slice::from_ref(s),
            Segs::Many(v) => v,
        }
    }
}

/// Allocation state of one bin.
#[derive(Default, Clone, Debug)]
pub(crate) struct BinHeap {
    /// The bin's segments, in allocation order; the last is being filled.
    /// Each is twice the size of the previous one, up to the full size.
    pub(crate) segs: Segs,
    /// Bytes of the bin's segments.
    pub(crate) capacity: u64,
    /// Next free byte in the last segment.
    pub(crate) tail: u64,
    /// End of the last segment (0 when the bin has none).
    pub(crate) end: u64,
    /// Bytes handed to records and padding.
    pub(crate) used: u64,
    /// Bytes of dead records and padding.
    pub(crate) dead: u64,
}

/// Flags the record at `loc` dead and accounts its bytes (and, for a list,
/// its blocks') as garbage of its bin.
pub(crate) fn kill(file: &mut SegmentFile, heap: &mut BinHeap, loc: u64) {
    let h = header(file, loc);
    let mut bytes = h.record_bytes() as u64;
    if h.kind == KIND_LIST {
        let (_, mut block, _) = read_head(file, loc, h.key_len);
        while block != NONE {
            let bh = header(file, block);
            bytes += bh.record_bytes() as u64;
            block = u64_at(file.bytes(block + HEADER as u64, 8), 0);
        }
    }
    file.bytes_mut(loc + FLAGS_AT, 1)[0] = h.flags | FLAG_DEAD;
    heap.dead += bytes;
    debug_assert!(heap.dead <= heap.used);
}

impl StateStore {
    /// Reserves `n` bytes for a record of bin `bi`. With `may_compact`, a
    /// segment switch may first compact the bin, which moves its records
    /// (and rewrites their slots' locations; slot positions do not change).
    #[inline(always)]
    pub(crate) fn alloc(&mut self, bi: usize, n: usize, may_compact: bool) -> Result<u64, StateError> {
        let h = &mut self.heaps[bi];
        let n = n as u64;
        if h.tail + n <= h.end {
            let loc = h.tail;
            h.tail += n;
            h.used += n;
            return Ok(loc);
        }
        self.alloc_slow(bi, n, may_compact)
    }

    #[cold]
    fn alloc_slow(&mut self, bi: usize, n: u64, mut may_compact: bool) -> Result<u64, StateError> {
        let seg = self.file.segment_bytes();
        if n > seg {
            return Err(StateError::RecordTooLarge { record_bytes: n as usize, max_bytes: seg as usize });
        }
        loop {
            let h = &mut self.heaps[bi];
            if h.tail + n <= h.end {
                let loc = h.tail;
                h.tail += n;
                h.used += n;
                return Ok(loc);
            }
            // Close the current segment with padding.
            if !h.segs.is_empty() {
                let rem = h.end - h.tail;
                let at = h.tail;
                h.used += rem;
                h.dead += rem;
                h.tail = h.end;
                if rem >= HEADER as u64 {
                    write_pad(&mut self.file, at, rem);
                }
            }
            let h = &self.heaps[bi];
            if may_compact && h.capacity > 0 && h.dead * 2 >= h.capacity {
                may_compact = false;
                self.compact(bi)?;
                continue;
            }
            let log2 = self.file.next_segment_log2(h.segs.last().map(|s| s.log2), n);
            let loc = self.file.alloc_segment(log2)?;
            let h = &mut self.heaps[bi];
            h.segs.push(Seg { loc, log2 });
            h.capacity += 1 << log2;
            h.tail = loc;
            h.end = loc + (1 << log2);
        }
    }

    /// Copies the live records of bin `bi` into fresh segments and frees the
    /// old ones. On failure (the file cannot grow) the bin is left as it was.
    #[cold]
    pub(super) fn compact(&mut self, bi: usize) -> Result<(), StateError> {
        let old = std::mem::take(&mut self.heaps[bi]);
        let mut moved = std::mem::take(&mut self.moved);
        moved.clear();
        let mut result = Ok(());
        'tables: for ti in 0..self.tables.len() {
            for pos in 0..self.tables[ti].bins[bi].capacity() {
                let s = self.tables[ti].bins[bi].slots(&self.index)[pos];
                if s == EMPTY {
                    continue;
                }
                let loc = slot_loc(s);
                match self.copy_record(bi, loc) {
                    Ok(new) => {
                        self.tables[ti].bins[bi].set_loc(&mut self.index, pos, new);
                        moved.push((ti, pos, loc));
                    }
                    Err(e) => {
                        result = Err(e);
                        break 'tables;
                    }
                }
            }
        }
        // Dense parts move whole (they hold no locations).
        let mut moved_dense = Vec::new();
        if result.is_ok() {
            'dense: for ti in 0..self.tables.len() {
                let Some(d) = &self.tables[ti].dense else {
                    continue;
                };
                let locs: Vec<u64> = d.bins[bi].parts().map(|p| p.loc).collect();
                for (k, loc) in locs.into_iter().enumerate() {
                    match self.copy_part(bi, k, loc) {
                        Ok(new) => {
                            self.relocate_part(ti, bi, k, new);
                            moved_dense.push((ti, k, loc));
                        }
                        Err(e) => {
                            result = Err(e);
                            break 'dense;
                        }
                    }
                }
            }
        }
        let fresh = std::mem::replace(&mut self.heaps[bi], old);
        match result {
            Ok(()) => {
                let old = std::mem::replace(&mut self.heaps[bi], fresh);
                for s in old.segs.iter() {
                    self.file.free_segment(s.loc, s.log2);
                }
            }
            Err(_) => {
                // Roll back: the old records are untouched.
                for &(ti, pos, loc) in &moved {
                    self.tables[ti].bins[bi].set_loc(&mut self.index, pos, loc);
                }
                for &(ti, k, loc) in &moved_dense {
                    self.relocate_part(ti, bi, k, loc);
                }
                for s in fresh.segs.iter() {
                    self.file.free_segment(s.loc, s.log2);
                }
            }
        }
        moved.clear();
        self.moved = moved;
        result
    }

    /// Copies the record at `loc` (with its list blocks, trimmed to their
    /// used bytes) into bin `bi`'s current segments; returns its new location.
    pub(crate) fn copy_record(&mut self, bi: usize, loc: u64) -> Result<u64, StateError> {
        let h = header(&self.file, loc);
        let size = h.record_bytes();
        let new = self.alloc(bi, size, false)?;
        self.file.copy(loc, new, size);
        if h.kind != KIND_LIST {
            return Ok(new);
        }
        let (count, mut block, _) = read_head(&self.file, loc, h.key_len);
        let (mut first, mut prev) = (NONE, NONE);
        while block != NONE {
            let body = self.file.bytes(block + HEADER as u64, BLOCK_HEAD);
            let (next, used) = (u64_at(body, 0), u32_at(body, 8) as usize);
            let nb = self.alloc(bi, HEADER + BLOCK_HEAD + used, false)?;
            self.file.copy(block, nb, HEADER + BLOCK_HEAD + used);
            self.file.write(nb + 12, &((BLOCK_HEAD + used) as u32).to_le_bytes());
            self.file.write(nb + HEADER as u64, &NONE.to_le_bytes());
            if prev == NONE {
                first = nb;
            } else {
                self.file.write(prev + HEADER as u64, &nb.to_le_bytes());
            }
            prev = nb;
            block = next;
        }
        write_head(&mut self.file, new, h.key_len, (count, first, prev));
        Ok(new)
    }
}
