//! Growth of a dense table's bins: a bin rebuilt with parts twice as
//! large or twice as many when a part would pass 7/8 full
//! ([`StateStore::dense_grow`]), and room reserved for a number of keys up
//! front ([`StateStore::dense_reserve`]).

use super::layout::{
    ctrl_loc, hash_off, kv_off, payload_bytes, payload_bytes_from_ctrl, DenseBin, DensePart,
};
use super::placement::{init_part, PartShape};
use super::slots::first_empty;
use super::{load_max, tag_of, DEPTH_MAX, GROUP, PART_BITS_FLOOR, SLOTS_LOG2_MAX, SLOTS_LOG2_MIN};
use crate::error::StateError;
use crate::store::heap::kill;
use crate::store::record::HEADER;
use crate::store::StateStore;

impl StateStore {
    /// Rebuilds bin `bi` of dense table `ti` with room for more keys: parts
    /// twice as large, or twice as many once a part would not fit in a
    /// segment (or a bin without a table gets its first part). Compacts the
    /// bin first if half its bytes are garbage (old parts, mostly). On
    /// error the bin is as it was.
    #[cold]
    pub(super) fn dense_grow(&mut self, ti: usize, bi: usize) -> Result<(), StateError> {
        let bins_log2 = self.config.bins_log2;
        let heap = &self.heaps[bi];
        if heap.capacity > 0 && heap.dead * 2 >= heap.capacity {
            self.compact(bi)?;
        }
        let (key_len, val_len) = match &self.tables[ti].dense {
            Some(d) => (d.key_len, d.val_len),
            None => return Ok(()),
        };
        let stride = key_len + val_len;
        let old = self.dense_bin(ti, bi);
        let (depth, slots_log2) = if !old.exists() {
            (0, SLOTS_LOG2_MIN)
        } else if self.dense_part_fits(old.slots_log2 + 1, stride) {
            (old.depth, old.slots_log2 + 1)
        } else {
            (old.depth + 1, old.slots_log2)
        };
        if !self.dense_part_fits(slots_log2, stride) {
            return Err(StateError::RecordTooLarge {
                record_bytes: HEADER + payload_bytes(slots_log2, stride),
                max_bytes: self.file.segment_bytes() as usize,
            });
        }
        if depth > DEPTH_MAX || u32::from(bins_log2) + u32::from(depth) > 64 - PART_BITS_FLOOR {
            let bin = self.bins.start + bi as u32;
            return Err(StateError::DenseBinFull { bin, keys: old.len() as u64 });
        }
        self.dense_build(ti, bi, depth, slots_log2)
    }

    /// Whether a part of `2^slots_log2` slots of `stride` bytes may be
    /// made: no more slots than a hash's low bits address, and its record
    /// in one segment.
    fn dense_part_fits(&self, slots_log2: u8, stride: usize) -> bool {
        slots_log2 <= SLOTS_LOG2_MAX
            && HEADER + payload_bytes(slots_log2, stride) <= self.file.segment_bytes() as usize
    }

    /// Makes room in dense table `ti` for about `keys` keys in the whole
    /// key space (a hint, as a hash map's capacity): each owned bin
    /// without a table gets its first part, with slots for its share of
    /// them (`keys / 2^bins_log2`) under the 7/8 load, or as many as fit in
    /// a segment. Bins that hash more keys than their share grow past it as
    /// they must: sized for a quarter more than the share and four, every
    /// bin of keyed-sum at 100 000 keys got twice the slots, and it ran
    /// slower (×1.044 against no hint, where the share gave ×1.068). Bins
    /// with a table (restored state) are left as they are.
    pub(crate) fn dense_reserve(&mut self, ti: usize, keys: u64) -> Result<(), StateError> {
        let (key_len, val_len) = match self.tables.get(ti).and_then(|t| t.dense.as_ref()) {
            Some(d) => (d.key_len, d.val_len),
            None => return Ok(()),
        };
        let stride = key_len + val_len;
        let share = keys >> self.config.bins_log2;
        let want = usize::try_from(share).unwrap_or(usize::MAX);
        let mut slots_log2 = SLOTS_LOG2_MIN;
        while load_max(1 << slots_log2) < want && self.dense_part_fits(slots_log2 + 1, stride) {
            slots_log2 += 1;
        }
        // A bin's first part has the fewest slots anyway: made when its
        // first key comes, not now for bins that may never have one.
        if slots_log2 == SLOTS_LOG2_MIN || !self.dense_part_fits(slots_log2, stride) {
            return Ok(());
        }
        // First the space of every part, then its pages backed in a few
        // calls (one a run of neighbouring parts: they are mostly
        // consecutive), then the parts written. Made one by one, each new
        // page was a page fault in the middle of writing a part, and about
        // 1 000 of them (4 MiB of parts at 100 000 keys) were most of the
        // time a reservation took. In memory, `populate` asks for huge
        // pages first: backing 4 MiB took two faults instead of
        // 1 024 pages (keyed-sum's first 100 000 records 6.75 → 5.52 ms),
        // and the state's pages then cost the TLB two entries (at
        // 1 000 000 keys, 64 MiB of parts, keyed-sum ran ×1.16–1.22).
        let size = HEADER + payload_bytes(slots_log2, stride);
        // (bin, where its space starts, where its part does)
        let mut parts: Vec<(usize, u64, u64)> = Vec::new();
        for bi in 0..self.bins.len() as usize {
            if self.dense_bin(ti, bi).exists() {
                continue;
            }
            match self.alloc_part(bi, 0, size) {
                Ok((at, loc)) => parts.push((bi, at, loc)),
                Err(e) => {
                    // Nothing is written at the space taken so far: it
                    // becomes dead padding (`kill` would read a header).
                    for &(bi, at, loc) in &parts {
                        self.abandon(bi, at, (loc - at) as usize + size);
                    }
                    return Err(e);
                }
            }
        }
        let mut spans: Vec<(u64, u64)> = parts.iter().map(|&(_, at, loc)| (at, loc + size as u64)).collect();
        spans.sort_unstable();
        let chunk = |loc: u64| self.file.chunk_of(loc);
        // (The spans are sorted and do not overlap: a part's end is its
        // run's.)
        let mut run: Option<(u64, u64)> = None;
        for (loc, end) in spans {
            run = match run {
                Some((start, run_end)) if loc <= run_end + RUN_GAP && chunk(loc) == chunk(start) => {
                    Some((start, end))
                }
                Some((start, run_end)) => {
                    self.file.populate(start, (run_end - start) as usize);
                    Some((loc, end))
                }
                None => Some((loc, end)),
            };
        }
        if let Some((start, end)) = run {
            self.file.populate(start, (end - start) as usize);
        }
        for (bi, at, loc) in parts {
            self.pad_part(bi, at, loc);
            let shape = PartShape { ti, bin_hash: self.bin_hash(bi), key_len, val_len, depth: 0, slots_log2 };
            init_part(&mut self.file, loc, shape, 0);
            let first = DensePart { loc, len: 0 };
            if let Some(d) = self.tables[ti].dense.as_mut() {
                d.set_bin(bi, DenseBin { first, rest: Vec::new(), depth: 0, slots_log2 }, &self.file);
            }
        }
        Ok(())
    }

    /// Rebuilds bin `bi` of dense table `ti` as `2^depth` parts of
    /// `2^slots_log2` slots each (which must hold its entries and fit in a
    /// segment), its entries moved into them. On error the bin is as it
    /// was.
    fn dense_build(&mut self, ti: usize, bi: usize, depth: u8, slots_log2: u8) -> Result<(), StateError> {
        let bins_log2 = self.config.bins_log2;
        let (key_len, val_len) = match &self.tables[ti].dense {
            Some(d) => (d.key_len, d.val_len),
            None => return Ok(()),
        };
        let stride = key_len + val_len;
        let old = self.dense_bin(ti, bi).clone();
        let slots = 1usize << slots_log2;
        let size = HEADER + payload_bytes(slots_log2, stride);
        let bin_hash = self.bin_hash(bi);
        // The old parts' bytes from their control bytes on, read in place
        // while the new parts are written: a pointer into a chunk stays
        // valid (the file maps more chunks, it never moves one), no new part
        // overlaps an old one (they are live until all are written), and
        // allocating here never compacts. (Read out into a vector first,
        // each entry cost about 115 instructions.)
        let old_slots = old.slots();
        let old_bytes = payload_bytes_from_ctrl(old_slots, stride);
        let olds: Vec<*const u8> =
            old.parts().map(|p| self.file.ptr(ctrl_loc(p.loc), old_bytes).cast_const()).collect();
        let grown = DenseBin { first: DensePart::default(), rest: Vec::new(), depth, slots_log2 };
        let mut new_parts: Vec<DensePart> = Vec::with_capacity(1 << depth);
        for part in 0..1u32 << depth {
            let loc = match self.place_part(bi, part as usize, size) {
                Ok(loc) => loc,
                Err(e) => {
                    for p in &new_parts {
                        kill(&mut self.file, &mut self.heaps[bi], p.loc);
                    }
                    return Err(e);
                }
            };
            let shape = PartShape { ti, bin_hash, key_len, val_len, depth, slots_log2 };
            let body = init_part(&mut self.file, loc, shape, part);
            // This part's share of the old entries, slot by slot.
            let mut len = 0;
            for &src in &olds {
                // SAFETY: `src` is an old part's `old_bytes` bytes in the
                // live map (see above), which nothing writes while this
                // slice lives: `body` is another part's bytes.
                let src = unsafe { std::slice::from_raw_parts(src, old_bytes) };
                for j in (0..old_slots).filter(|&j| src[j] != 0) {
                    let hash = super::record::u64_at(src, hash_off(old_slots, stride) + j * 8);
                    if grown.part_no(hash, bins_log2) != part as usize {
                        continue;
                    }
                    let k = first_empty(&body[..slots + GROUP], hash, slots);
                    let (to, from) = (kv_off(slots) + k * stride, kv_off(old_slots) + j * stride);
                    body[to..to + stride].copy_from_slice(&src[from..from + stride]);
                    let hs = hash_off(slots, stride) + k * 8;
                    body[hs..hs + 8].copy_from_slice(&hash.to_le_bytes());
                    body[k] = tag_of(hash);
                    if k < GROUP {
                        body[slots + k] = tag_of(hash);
                    }
                    len += 1;
                }
            }
            new_parts.push(DensePart { loc, len });
        }
        for op in old.parts() {
            kill(&mut self.file, &mut self.heaps[bi], op.loc);
        }
        let mut it = new_parts.into_iter();
        let first = it.next().unwrap_or_default();
        if let Some(d) = self.tables[ti].dense.as_mut() {
            d.set_bin(bi, DenseBin { first, rest: it.collect(), depth, slots_log2 }, &self.file);
        }
        // The old parts, and the ends of the segments they filled, are
        // garbage now: a third of the bin's bytes or more compacts it, so a
        // bin of a few parts keeps to about twice their size and shares
        // pages with other bins (a failed compaction leaves it as it is).
        let heap = &self.heaps[bi];
        if heap.dead * 3 >= heap.capacity {
            let _ = self.compact(bi);
        }
        Ok(())
    }
}

/// Bytes between two parts of a reservation that still put them in one
/// run of pages to back at once (see [`StateStore::dense_reserve`]).
const RUN_GAP: u64 = 64 * 1024;
