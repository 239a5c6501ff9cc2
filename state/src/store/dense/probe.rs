//! Lookups in a dense table: the part and slot of a key ([`probe`], then
//! [`find_slot`], or [`find`]), where its value lies, and the prefetch of
//! what a lookup reads first.

use super::group::Group;
use super::layout::{ctrl_loc, kv_off, DenseTable};
use super::{tag_of, GROUP};
use crate::store::keys::prefetch_ptr;
use crate::store::SegmentFile;

/// Control bytes of a bin without a table yet: always empty (never written).
static EMPTY_CTRL: [u8; 2 * GROUP] = [0; 2 * GROUP];

/// Where a key was found: part number and slot.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SlotAt {
    pub(crate) part: usize,
    pub(crate) slot: usize,
}

/// Where a lookup of one hash goes: its part's control bytes, as a pointer
/// into the live map and as a location, and the part's size.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Probe {
    pub(super) ctrl: *const u8,
    pub(super) ctrl_loc: u64,
    pub(super) slots: usize,
    pub(super) part: usize,
}

impl Probe {
    /// The probe of a bin without a table: finds nothing.
    const EMPTY: Probe = Probe { ctrl: EMPTY_CTRL.as_ptr(), ctrl_loc: 0, slots: 1, part: 0 };
}

/// The part that holds (or would hold) `hash` in bin `bi` of `d`; `None`
/// if the bin is not owned.
#[inline(always)]
pub(crate) fn probe(
    d: &DenseTable,
    file: &SegmentFile,
    bi: usize,
    bins_log2: u8,
    hash: u64,
) -> Option<Probe> {
    let h = d.hot_owned(bi)?;
    // A bin of one part (the only kind with an address): its lookup entry
    // is already the answer.
    if h.one_part() {
        return Some(Probe { ctrl: h.ctrl(), ctrl_loc: d.bins[bi].ctrl_loc(), slots: h.slots(), part: 0 });
    }
    if h.0 == 0 {
        return Some(Probe::EMPTY);
    }
    let db = &d.bins[bi];
    let p = db.part_no(hash, bins_log2);
    let ctrl_loc = ctrl_loc(db.part(p).loc);
    match file.addr(ctrl_loc) {
        Some(ctrl) => Some(Probe { ctrl: ctrl.cast_const(), ctrl_loc, slots: 1 << db.slots_log2, part: p }),
        None => unreachable!("a dense part outside the segment file"),
    }
}

/// The slot of `key` (of `hash`) in the part `p` found by [`probe`]. `key`
/// must have the table's key length and `stride` be the table's.
#[inline(always)]
pub(crate) fn find_slot(p: &Probe, stride: usize, hash: u64, key: &[u8]) -> Option<usize> {
    lookup(p, stride, hash, key).ok()
}

/// As [`find_slot`]; if `key` is absent, `Err` of the slot it would go in
/// (the first empty one from its home on, as [`first_empty`](super::slots::first_empty) finds: the
/// lookup stops at the group of control bytes that has it). For a bin
/// without a table that slot is meaningless.
#[inline(always)]
pub(super) fn lookup(p: &Probe, stride: usize, hash: u64, key: &[u8]) -> Result<usize, usize> {
    let mask = p.slots - 1;
    // SAFETY: `p.ctrl` points at the part's `slots + GROUP` control bytes,
    // followed by its slots' keys and values, in the live map (the part
    // lies in one segment, inside one map); for a bin without a table,
    // `slots` is 1 and the static has 2 * GROUP zeros, so no key is read.
    // Every read stays inside them: `i <= mask` and `j <= mask`.
    unsafe {
        let kv = p.ctrl.add(kv_off(p.slots));
        let tag = tag_of(hash);
        let mut i = hash as usize & mask;
        loop {
            let g = Group::load(p.ctrl.add(i));
            let mut m = g.match_tag(tag);
            while !m.none() {
                let j = (i + m.lowest()) & mask;
                let k = std::slice::from_raw_parts(kv.add(j * stride), key.len());
                if super::key_diff(k, key) == 0 {
                    return Ok(j);
                }
                m = m.rest();
            }
            let e = g.match_empty();
            if !e.none() {
                return Err((i + e.lowest()) & mask);
            }
            i = (i + GROUP) & mask;
        }
    }
}

/// Finds `key` (of `hash`) in bin `bi` of `d`: its part and slot, with the
/// probe that found it. `None` if absent (or the bin is not owned).
#[inline(always)]
pub(crate) fn find(
    d: &DenseTable,
    file: &SegmentFile,
    bi: usize,
    bins_log2: u8,
    hash: u64,
    key: &[u8],
) -> Option<(Probe, SlotAt)> {
    let p = probe(d, file, bi, bins_log2, hash)?;
    let j = find_slot(&p, d.stride(), hash, key)?;
    Some((p, SlotAt { part: p.part, slot: j }))
}

/// Prefetches what a lookup of `hash` in bin `bi` of `d` reads first: its
/// group of control bytes and its home slot.
#[inline(always)]
pub(crate) fn prefetch(d: &DenseTable, file: &SegmentFile, bi: usize, bins_log2: u8, hash: u64) {
    if let Some(p) = probe(d, file, bi, bins_log2, hash) {
        prefetch_home(p.ctrl, p.slots - 1, d.stride(), hash);
    }
}

/// Bytes past the start of a key's home slot whose cache line is
/// prefetched too (see [`prefetch_home`]).
const PREFETCH_PAST_HOME: usize = 32;

/// Prefetches the group of control bytes and the slot that a lookup of
/// `hash` reads first, in the part of `mask + 1` slots (of `stride` bytes)
/// whose control bytes are at `ctrl`, and the line [`PREFETCH_PAST_HOME`]
/// bytes on: a key displaced from its home slot (one or two slots, often,
/// with parts up to 7/8 full) lies there when the home slot is in the back
/// half of its line; otherwise it is the same line. (A part of 8 slots, a
/// bin of at most 7 keys, gains nothing from it, but testing for one cost
/// more than the prefetch: it is in cache.)
#[inline(always)]
pub(super) fn prefetch_home(ctrl: *const u8, mask: usize, stride: usize, hash: u64) {
    let i = hash as usize & mask;
    prefetch_ptr(ctrl.wrapping_add(i));
    let home = ctrl.wrapping_add(kv_off(mask + 1) + i * stride);
    prefetch_ptr(home);
    prefetch_ptr(home.wrapping_add(PREFETCH_PAST_HOME));
}

/// Where the value of `key` (of `hash`) is, in bin `bi` of `d`: its
/// location in the file. `None` if absent (or the bin is not owned).
#[inline(always)]
pub(crate) fn find_value(
    d: &DenseTable,
    file: &SegmentFile,
    bi: usize,
    bins_log2: u8,
    hash: u64,
    key: &[u8],
) -> Option<u64> {
    find(d, file, bi, bins_log2, hash, key).map(|(p, at)| value_ptr(&p, d.key_len, d.stride(), at.slot).1)
}

/// A pointer to the value of slot `j` of the part of probe `p` (keys of
/// `key_len`, slots of `stride` bytes) and its location, for writing in
/// place after [`SegmentFile::mark_dirty`].
#[inline(always)]
pub(crate) fn value_ptr(p: &Probe, key_len: usize, stride: usize, j: usize) -> (*mut u8, u64) {
    let off = kv_off(p.slots) + j * stride + key_len;
    (p.ctrl.wrapping_add(off).cast_mut(), p.ctrl_loc + off as u64)
}
