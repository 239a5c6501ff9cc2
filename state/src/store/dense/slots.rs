//! Single-key writes of a dense table: inserting a key, removing one
//! (shifting its run back, with no tombstones) and retaining some, with
//! the slot writes they share with burst updates.

use super::group::Group;
use super::layout::{ctrl_loc, hash_off, kv_off, part_body, payload_bytes_from_ctrl};
use super::probe::SlotAt;
use super::{load_max, tag_of, GROUP};
use crate::error::StateError;
use crate::store::{ListItems, SegmentFile, StateStore};

impl StateStore {
    /// Inserts `key` (absent) with `value` into bin `bi` of dense table `ti`,
    /// growing the bin first if its part would pass 7/8 full; returns
    /// whether it grew (its parts moved).
    pub(crate) fn dense_insert(
        &mut self,
        ti: usize,
        bi: usize,
        hash: u64,
        key: &[u8],
        value: &[u8],
    ) -> Result<bool, StateError> {
        let bins_log2 = self.config.bins_log2;
        let stride = match &self.tables[ti].dense {
            Some(d) => d.stride(),
            None => return Err(StateError::KindMismatch { expected: "dense value", found: "record table" }),
        };
        debug_assert_eq!(key.len() + value.len(), stride);
        let mut grew = false;
        loop {
            let db = self.dense_bin(ti, bi);
            let full = !db.exists() || {
                let part = db.part(db.part_no(hash, bins_log2));
                part.len as usize + 1 > load_max(db.slots())
            };
            if !full {
                break;
            }
            self.dense_grow(ti, bi)?;
            grew = true;
        }
        let db = self.dense_bin(ti, bi);
        let p = db.part_no(hash, bins_log2);
        let slots = db.slots();
        let part_loc = db.part(p).loc;
        insert_slot(&mut self.file, part_loc, slots, hash, key, value);
        if let Some(d) = self.tables[ti].dense.as_mut() {
            d.bins[bi].part_mut(p).len += 1;
        }
        self.tables[ti].len += 1;
        Ok(grew)
    }

    /// Removes the entry in slot `at` of bin `bi` of dense table `ti`,
    /// shifting the rest of its run back.
    pub(crate) fn dense_remove_at(&mut self, ti: usize, bi: usize, at: SlotAt) {
        let Self { file, tables, .. } = self;
        let table = &mut tables[ti];
        let Some(d) = table.dense.as_mut() else {
            return;
        };
        let stride = d.stride();
        let db = &mut d.bins[bi];
        let slots = db.slots();
        let mask = slots - 1;
        let part = db.part_mut(at.part);
        let cl = ctrl_loc(part.loc);
        let mut hole = at.slot;
        let mut k = (hole + 1) & mask;
        loop {
            let c = file.bytes(cl + k as u64, 1)[0];
            if c == 0 {
                break;
            }
            let h = super::record::u64_at(file.bytes(cl + (hash_off(slots, stride) + k * 8) as u64, 8), 0);
            let home = h as usize & mask;
            // The entry at `k` may move to the hole if its home is not
            // cyclically within (hole, k].
            if (k.wrapping_sub(home) & mask) >= (k.wrapping_sub(hole) & mask) {
                move_slot(file, cl, slots, stride, k, hole);
                hole = k;
            }
            k = (k + 1) & mask;
        }
        set_ctrl(file, cl, slots, hole, 0);
        part.len -= 1;
        table.len -= 1;
    }

    /// Keeps the entries of dense table `ti` for which `keep(hash, key,
    /// value, no items)` is true and removes the others; with `only =
    /// Some((bi, hash))`, visits only the run of `hash` in bin `bi`.
    /// Returns how many were removed.
    pub(crate) fn dense_retain(
        &mut self,
        ti: usize,
        only: Option<(usize, u64)>,
        mut keep: impl FnMut(u64, &[u8], &[u8], ListItems<'_>) -> bool,
    ) -> usize {
        let bins_log2 = self.config.bins_log2;
        let Some(d) = &self.tables[ti].dense else {
            return 0;
        };
        let (key_len, stride, nbins) = (d.key_len, d.stride(), d.bins.len());
        let mut removed = 0;
        let bins = match only {
            Some((bi, _)) => bi..bi + 1,
            None => 0..nbins,
        };
        for bi in bins {
            let db = self.dense_bin(ti, bi);
            if !db.exists() {
                continue;
            }
            let (slots, nparts) = (db.slots(), 1usize << db.depth);
            let mask = slots - 1;
            for p in 0..nparts {
                if only.is_some_and(|(_, h)| self.dense_bin(ti, bi).part_no(h, bins_log2) != p) {
                    continue;
                }
                // Start just after an empty slot (or, for one hash's run, at
                // its home): removal shifts slots back within a run only, so
                // no entry is visited twice or skipped.
                let body = part_body(&self.file, self.dense_bin(ti, bi).part(p), slots, stride);
                let (mut i, run_only) = match only {
                    Some((_, h)) => (h as usize & mask, true),
                    None => match body[..slots].iter().position(|&c| c == 0) {
                        Some(e) => ((e + 1) & mask, false),
                        None => continue,
                    },
                };
                let mut steps = 0;
                while steps < slots {
                    let body = part_body(&self.file, self.dense_bin(ti, bi).part(p), slots, stride);
                    if body[i] == 0 {
                        if run_only {
                            break;
                        }
                        i = (i + 1) & mask;
                        steps += 1;
                        continue;
                    }
                    let kv = kv_off(slots) + i * stride;
                    let hash = super::record::u64_at(body, hash_off(slots, stride) + i * 8);
                    let items = ListItems::new(&self.file, super::record::NONE);
                    if keep(hash, &body[kv..kv + key_len], &body[kv + key_len..kv + stride], items) {
                        i = (i + 1) & mask;
                        steps += 1;
                    } else {
                        self.dense_remove_at(ti, bi, SlotAt { part: p, slot: i });
                        removed += 1;
                    }
                }
            }
        }
        removed
    }
}

/// Puts `key` (absent, of `hash`) with `value` in empty slot `j` of the
/// part of `slots` slots whose control bytes are mapped at `ctrl` and lie
/// at `cl` in the file: marks what it writes dirty (with `ALL`, only the
/// hash: the pages of the control bytes, keys and values are, see
/// `kv_regions` in `marks.rs`), then fills the slot with plain stores.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(super) fn insert_at<const ALL: bool>(
    file: &mut SegmentFile,
    ctrl: *mut u8,
    cl: u64,
    slots: usize,
    j: usize,
    hash: u64,
    key: &[u8],
    value: &[u8],
) {
    let stride = key.len() + value.len();
    if !ALL {
        file.mark_dirty(cl + (kv_off(slots) + j * stride) as u64, stride);
        file.mark_dirty(cl + j as u64, 1);
        if j < GROUP {
            file.mark_dirty(cl + (slots + j) as u64, 1);
        }
    }
    file.mark_dirty(cl + (hash_off(slots, stride) + j * 8) as u64, 8);
    // SAFETY: `ctrl` points at the part's control bytes in the live map
    // (a probe's, of a part that has not moved since), followed by all of
    // its slots and hashes; `j < slots`; the slot was marked just now.
    unsafe { fill_slot(ctrl, slots, j, hash, key, value) }
}

/// The first empty slot at or after the home slot of `hash`, from a part's
/// control bytes `ctrl` (`slots + GROUP` of them). The part is never full.
pub(super) fn first_empty(ctrl: &[u8], hash: u64, slots: usize) -> usize {
    let mask = slots - 1;
    let mut i = hash as usize & mask;
    loop {
        let e = Group::at(ctrl, i).match_empty();
        if !e.none() {
            return (i + e.lowest()) & mask;
        }
        i = (i + GROUP) & mask;
    }
}

/// Writes control byte `c` of slot `j` (and its mirror) of the part whose
/// control bytes are at `cl`.
fn set_ctrl(file: &mut SegmentFile, cl: u64, slots: usize, j: usize, c: u8) {
    file.write(cl + j as u64, &[c]);
    if j < GROUP {
        file.write(cl + (slots + j) as u64, &[c]);
    }
}

/// Puts `key` (absent, of `hash`) with `value` in the first empty slot
/// at or after its home in the part at `part_loc`, of `slots` slots (never
/// full): marks what it writes dirty, then fills the slot with plain stores
/// (a checked, marking write per field cost an insert about 250
/// instructions).
pub(super) fn insert_slot(
    file: &mut SegmentFile,
    part_loc: u64,
    slots: usize,
    hash: u64,
    key: &[u8],
    value: &[u8],
) {
    let (cl, stride) = (ctrl_loc(part_loc), key.len() + value.len());
    let ctrl = file.ptr(cl, payload_bytes_from_ctrl(slots, stride));
    // SAFETY: `ctrl` is the part's control bytes, `slots + GROUP` of them
    // (checked by `ptr` to lie in one map, with the rest of the part).
    let j = first_empty(unsafe { std::slice::from_raw_parts(ctrl, slots + GROUP) }, hash, slots);
    insert_at::<false>(file, ctrl, cl, slots, j, hash, key, value);
}

/// Writes `key`, `value`, `hash` and the control byte of slot `j` of the
/// part of `slots` slots whose control bytes are at `ctrl`, with plain
/// stores.
///
/// # Safety
///
/// `ctrl` must point at the part's control bytes in the live map, valid
/// for writes of the whole part after them (see [`payload_bytes_from_ctrl`],
/// with a stride of `key.len() + value.len()`), `j` must be below `slots`,
/// and no reference into those bytes may live.
#[inline(always)]
unsafe fn fill_slot(ctrl: *mut u8, slots: usize, j: usize, hash: u64, key: &[u8], value: &[u8]) {
    let stride = key.len() + value.len();
    let tag = tag_of(hash);
    // SAFETY: the caller's; each write lies in the part's bytes.
    unsafe {
        let kv = ctrl.add(kv_off(slots) + j * stride);
        copy_small(key.as_ptr(), kv, key.len());
        copy_small(value.as_ptr(), kv.add(key.len()), value.len());
        ctrl.add(hash_off(slots, stride) + j * 8).cast::<[u8; 8]>().write_unaligned(hash.to_le_bytes());
        *ctrl.add(j) = tag;
        if j < GROUP {
            *ctrl.add(slots + j) = tag;
        }
    }
}

/// Copies `n` bytes from `src` to `dst` (non-overlapping): one load and
/// one store for the usual 8 (a `u64` key or value), else `memcpy`.
///
/// # Safety
///
/// As [`std::ptr::copy_nonoverlapping`].
#[inline(always)]
unsafe fn copy_small(src: *const u8, dst: *mut u8, n: usize) {
    // SAFETY: the caller's.
    unsafe {
        if n == 8 {
            dst.cast::<u64>().write_unaligned(src.cast::<u64>().read_unaligned());
        } else {
            std::ptr::copy_nonoverlapping(src, dst, n);
        }
    }
}

/// Moves slot `from` to slot `to` of the part whose control bytes are at
/// `cl` (the caller empties `from` or overwrites it next).
fn move_slot(file: &mut SegmentFile, cl: u64, slots: usize, stride: usize, from: usize, to: usize) {
    let kv = kv_off(slots) as u64;
    file.copy(cl + kv + (from * stride) as u64, cl + kv + (to * stride) as u64, stride);
    let hs = hash_off(slots, stride) as u64;
    file.copy(cl + hs + from as u64 * 8, cl + hs + to as u64 * 8, 8);
    let c = file.bytes(cl + from as u64, 1)[0];
    set_ctrl(file, cl, slots, to, c);
}
