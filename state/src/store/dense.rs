//! Dense tables: the state of a [`ValueState`](crate::ValueState) whose key
//! and value types have a fixed layout, kept in open-addressing tables whose
//! slots *are* the state, with no index beside them.
//!
//! # Why
//!
//! A record table reaches a key through its index slot, then the record the
//! slot points to: two dependent cache misses per lookup, and a 20-byte
//! header per key. For keys and values of a fixed size (a running sum per
//! `u64` key, a window aggregate per `(key, window)`), a slot can hold the
//! key and the value themselves: one lookup is a group of control bytes and
//! one slot, both at addresses known from the hash alone, so an operator
//! walking a burst can prefetch them several records ahead (keyed-sum's
//! state update went from about 33 to 11 ns in one harness; ARCHITECTURE
//! decision 27).
//!
//! # Layout
//!
//! A dense table keeps, per bin, `2^depth` *parts*. A part is one record of
//! kind `DENSE` in the bin's segments, so checkpoints, backups, restores,
//! splits and merges carry it as they carry any record (it holds no
//! locations, so it can be copied anywhere):
//!
//! ```text
//! header (20 bytes)  hash = the bin's first hash, key_len = 0, val_len =
//!                    payload bytes, table, kind DENSE, flags
//! payload
//!   0   value_len  u32   value bytes of a slot
//!   4   depth      u8    the bin has 2^depth parts
//!   5   slots_log2 u8    this part has 2^slots_log2 slots
//!   6   key_len    u16   key bytes of a slot
//!   8   part       u32   this part's number, below 2^depth
//!   12  reserved   u32   0
//!   16  ctrl       2^slots_log2 + GROUP bytes: 0 for an empty slot, else
//!                  0x80 | 7 bits of the slot's hash; the last GROUP bytes
//!                  repeat the first GROUP, so a group read never wraps
//!       kv         per slot: the key's bytes, then the value's
//!       hashes     per slot: the key's full hash (u64)
//! ```
//!
//! A part is placed with its control bytes at byte 8 of a cache line, in
//! one of several lines of a fresh segment (dead padding before it: see
//! [`StateStore::alloc_part`]).
//!
//! A key's part is given by the `depth` hash bits just below the bin's
//! bits, its home slot by the low bits ([`SLOTS_LOG2_MAX`] of them at most),
//! its control tag by bits 16..23. Lookups probe linearly from the home
//! slot, reading [`GROUP`] control bytes at once and comparing them all in
//! one instruction (SSE2 on x86-64, else SWAR in one word: [`Group`]), so
//! a lookup's branches are as predictable as in a
//! Swiss table: the key is almost always the first match of the first
//! group. Removal shifts the following slots of the run back (no
//! tombstones). A part that would pass 7/8 full makes the whole bin grow:
//! its parts are rebuilt twice as large, or twice as many once a part would
//! no longer fit in one segment. The full hashes are only read to grow,
//! remove, iterate and restore; lookups never touch them.
//!
//! # What is not promised
//!
//! Dense tables hold values only (no lists), and only for handles whose key
//! and value are fixed-layout types. A table restored as records stays a
//! record table.

use super::record::{u32_at, Header, HEADER, KIND_DENSE};
use super::{kill, prefetch_ptr, ListItems, SegmentFile, StateStore};
#[cfg(test)]
use super::{TableId, TypeSig};
use crate::error::StateError;
use crate::fixed::{FixedBuf, FIXED_MAX};
use crate::keyspace::{Bin, BinRange};

/// Control bytes compared at once (a [`Group`]).
pub(crate) const GROUP: usize = 8;
/// Bytes of a part's own head, after the record header.
pub(crate) const PART_HEAD: usize = 16;
/// Slots of a bin's first part.
pub(crate) const SLOTS_LOG2_MIN: u8 = 3;
/// Most slots of one part: the home slot comes from the hash bits below
/// bit 16 (the tag's bits start there).
pub(crate) const SLOTS_LOG2_MAX: u8 = 16;
/// Most parts of one bin, as log2. The part bits lie just below the bin's
/// bits and must stay above the tag's (bits 16..23): bins_log2 + depth <= 40.
pub(crate) const DEPTH_MAX: u8 = 24;
/// Bits of the hash above which part bits may not reach (see [`DEPTH_MAX`]).
const PART_BITS_FLOOR: u32 = 24;
/// Most key and value bytes of a slot: two fixed-layout types.
pub(crate) const SLOT_MAX: usize = 2 * crate::fixed::FIXED_MAX;
/// How many keys ahead of its update a burst works out and prefetches a
/// key's state (and a record table's update, its index slot).
pub(crate) const PREFETCH_AHEAD: usize = 8;
/// Dirty epochs in a row whose burst updates may mark every dense page at
/// once (see [`WholeMarks`]); the epoch after them marks page by page, to
/// measure the writes again.
const WHOLE_EPOCHS_MAX: u32 = 4;
/// Slots of a part that may be occupied: 7/8 of them.
#[inline(always)]
fn load_max(slots: usize) -> usize {
    slots - slots / 8
}

/// The control byte of an occupied slot whose key has hash `hash`.
#[inline(always)]
pub(crate) fn tag_of(hash: u64) -> u8 {
    0x80 | ((hash >> 16) & 0x7f) as u8
}

/// [`GROUP`] control bytes, read at once and compared all together: in
/// the low half of an SSE2 register on x86-64 (a compare and a move-mask
/// find the matching bytes, exactly), elsewhere in one `u64` (SWAR).
#[derive(Clone, Copy)]
struct Group(
    #[cfg(target_arch = "x86_64")] std::arch::x86_64::__m128i,
    #[cfg(not(target_arch = "x86_64"))] u64,
);

/// The bytes of a [`Group`] that matched, lowest first: one bit per byte
/// on x86-64, the high bit of each byte elsewhere.
#[derive(Clone, Copy)]
struct Matches(#[cfg(target_arch = "x86_64")] u32, #[cfg(not(target_arch = "x86_64"))] u64);

impl Matches {
    /// Whether no byte matched.
    #[inline(always)]
    fn none(self) -> bool {
        self.0 == 0
    }

    /// The lowest byte that matched (there must be one).
    #[inline(always)]
    fn lowest(self) -> usize {
        #[cfg(target_arch = "x86_64")]
        return self.0.trailing_zeros() as usize;
        #[cfg(not(target_arch = "x86_64"))]
        return (self.0.trailing_zeros() / 8) as usize;
    }

    /// Without the lowest byte that matched.
    #[inline(always)]
    fn rest(self) -> Matches {
        Matches(self.0 & self.0.wrapping_sub(1))
    }
}

impl Group {
    /// The [`GROUP`] bytes at `p`.
    ///
    /// # Safety
    ///
    /// `p .. p + GROUP` must be readable.
    #[inline(always)]
    unsafe fn load(p: *const u8) -> Group {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the caller's; SSE2 is part of x86-64, and the load is
        // unaligned and of 8 bytes (the upper 8 of the register are 0).
        return unsafe { Group(std::arch::x86_64::_mm_loadl_epi64(p.cast())) };
        #[cfg(not(target_arch = "x86_64"))]
        // SAFETY: the caller's.
        return unsafe { Group(p.cast::<u64>().read_unaligned()) };
    }

    /// The [`GROUP`] bytes of `ctrl` from `i` on (panics past its end).
    #[inline(always)]
    fn at(ctrl: &[u8], i: usize) -> Group {
        let b = &ctrl[i..i + GROUP];
        // SAFETY: `b` is GROUP bytes long.
        unsafe { Group::load(b.as_ptr()) }
    }

    /// The bytes equal to `tag`, an occupied slot's control byte (its high
    /// bit set). Exact on x86-64; elsewhere possibly also bytes above a
    /// match that differ from `tag` in the lowest bit. Empty bytes are
    /// never among them, so a candidate is confirmed by comparing keys.
    #[inline(always)]
    fn match_tag(self, tag: u8) -> Matches {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::x86_64::{_mm_cmpeq_epi8, _mm_movemask_epi8, _mm_set1_epi8};
            // SAFETY: SSE2 is part of x86-64. The upper 8 bytes of the
            // group are 0 and `tag` has its high bit set: they never match.
            unsafe { Matches(_mm_movemask_epi8(_mm_cmpeq_epi8(self.0, _mm_set1_epi8(tag as i8))) as u32) }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let x = self.0 ^ (LO * u64::from(tag));
            Matches(x.wrapping_sub(LO) & !x & HI)
        }
    }

    /// The empty bytes (0), exactly (an occupied byte has its high bit
    /// set, an empty one not; with SWAR, a false positive of the zero-byte
    /// test would need a byte of 0x01, which no control byte is).
    #[inline(always)]
    fn match_empty(self) -> Matches {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: SSE2 is part of x86-64. The move-mask takes each byte's
        // high bit: set for the occupied among the low 8, clear for the
        // upper 8 (zeros), which the complement's mask drops.
        return unsafe { Matches(!(std::arch::x86_64::_mm_movemask_epi8(self.0) as u32) & 0xff) };
        #[cfg(not(target_arch = "x86_64"))]
        return Matches(self.0.wrapping_sub(LO) & !self.0 & HI);
    }
}

#[cfg(not(target_arch = "x86_64"))]
const LO: u64 = 0x0101_0101_0101_0101;
#[cfg(not(target_arch = "x86_64"))]
const HI: u64 = 0x8080_8080_8080_8080;

/// Control bytes of a bin without a table yet: always empty (never written).
static EMPTY_CTRL: [u8; 2 * GROUP] = [0; 2 * GROUP];

/// Payload bytes of a part of `2^slots_log2` slots of `stride` key and
/// value bytes each.
#[inline(always)]
pub(crate) fn payload_bytes(slots_log2: u8, stride: usize) -> usize {
    PART_HEAD + payload_bytes_from_ctrl(1 << slots_log2, stride)
}

/// How burst updates of dense tables mark their pages dirty.
///
/// Marking a value's page per update cost keyed-sum about 30 of its 194
/// instructions a record. When most dense pages are written in a dirty
/// epoch anyway (the one between two checkpoints), the first burst of the
/// epoch marks every page of every dense part's control bytes, keys and
/// values instead, and the updates mark nothing; an insert still marks its
/// key's hash, and a growth or a move what it writes. Not
/// while a checkpoint's copy-on-write is on: marking a page copies it
/// first if the stream has not read it yet, and marking every page at once
/// would copy them all in one stall, where marking page by page spreads the
/// copies over the writes.
///
/// Whether an epoch may mark all is decided when the one before it ends
/// (at a checkpoint): yes if that epoch was marked page by page and
/// dirtied at least half as many pages as the dense parts hold (a few hot
/// keys do not make every page part of the next increment), or if it was
/// marked whole and fewer than [`WHOLE_EPOCHS_MAX`] were in a row (then one
/// epoch marks page by page, to measure again). A fresh or restored store's
/// first epoch may: its first checkpoint is a full image, which reads no
/// dirty bit.
#[derive(Clone, Debug)]
pub(crate) struct WholeMarks {
    /// The dirty epoch in which every dense part's pages were marked (0:
    /// none).
    marked: u64,
    /// This epoch may mark them all.
    allowed: bool,
    /// Epochs in a row marked whole, this one included.
    in_a_row: u32,
}

impl Default for WholeMarks {
    fn default() -> Self {
        Self { marked: 0, allowed: true, in_a_row: 0 }
    }
}

/// One part of a bin's dense table.
#[derive(Clone, Debug, Default)]
pub(crate) struct DensePart {
    /// Location of the part's record (unused while the bin has no table).
    pub(crate) loc: u64,
    /// Occupied slots.
    pub(crate) len: u32,
}

/// The dense table of one bin: its parts and their size.
#[derive(Clone, Debug, Default)]
pub(crate) struct DenseBin {
    /// Part 0, kept inline: a bin of one part is reached without a second
    /// pointer.
    first: DensePart,
    /// Parts `1 .. 2^depth`.
    rest: Vec<DensePart>,
    /// The bin has `2^depth` parts.
    pub(crate) depth: u8,
    /// Each part has `2^slots_log2` slots (0 while the bin has no table).
    pub(crate) slots_log2: u8,
}

impl DenseBin {
    /// Whether the bin has a table (parts allocated).
    #[inline(always)]
    pub(crate) fn exists(&self) -> bool {
        self.slots_log2 != 0
    }

    /// Number of the part of `hash`.
    #[inline(always)]
    fn part_no(&self, hash: u64, bins_log2: u8) -> usize {
        if self.depth == 0 {
            0
        } else {
            ((hash << bins_log2) >> (64 - u32::from(self.depth))) as usize
        }
    }

    #[inline(always)]
    fn part(&self, p: usize) -> &DensePart {
        if p == 0 {
            &self.first
        } else {
            &self.rest[p - 1]
        }
    }

    #[inline(always)]
    fn part_mut(&mut self, p: usize) -> &mut DensePart {
        if p == 0 {
            &mut self.first
        } else {
            &mut self.rest[p - 1]
        }
    }

    /// The bin's parts, in order.
    pub(crate) fn parts(&self) -> impl Iterator<Item = &DensePart> {
        std::iter::once(&self.first).chain(self.rest.iter()).filter(|_| self.exists())
    }

    /// Every entry of the bin's parts (in `file`; keys of `key_len`, slots
    /// of `stride` bytes), part by part.
    pub(crate) fn entries<'a>(
        &'a self,
        file: &'a SegmentFile,
        key_len: usize,
        stride: usize,
    ) -> impl Iterator<Item = Entry<'a>> + 'a {
        let slots = self.slots();
        self.parts().flat_map(move |part| {
            part_entries(part_body(file, part, slots, stride), slots, key_len, stride).map(|(_, e)| e)
        })
    }

    /// Occupied slots of the bin.
    pub(crate) fn len(&self) -> usize {
        self.parts().map(|p| p.len as usize).sum()
    }

    #[inline(always)]
    pub(crate) fn slots(&self) -> usize {
        1usize << self.slots_log2
    }

    /// The bin's entry in [`DenseTable::hot`] (`file`: the store's).
    fn hot(&self, file: &SegmentFile) -> Hot {
        if !self.exists() {
            return Hot::default();
        }
        // The address is exposed, so the pointer made from it again has the
        // map's provenance (strict-provenance rules).
        let addr = file.addr(self.ctrl_loc()).map_or(0, |p| p.expose_provenance() as u64);
        if self.depth > 0 || addr == 0 || addr >> (64 - HOT_MASK_BITS) != 0 {
            Hot(HOT_DEEP)
        } else {
            Hot(addr << HOT_MASK_BITS | (self.slots() - 1) as u64)
        }
    }

    /// Where the control bytes of the bin's first part lie in the file.
    #[inline(always)]
    fn ctrl_loc(&self) -> u64 {
        ctrl_loc(self.first.loc)
    }
}

/// What a lookup needs of a bin, in one word (4096 bins take 32 KiB of
/// cache, where [`DenseBin`]s take 160 KiB; with 16-byte entries, 64 KiB,
/// keyed-sum with one worker ran about 3 % slower): 0 for a bin without a
/// table, [`HOT_DEEP`] for one the lookup reads the [`DenseBin`] of
/// (several parts, or an address wider than 48 bits), else the address of
/// its one part's control bytes shifted left by [`HOT_MASK_BITS`], and its
/// slots less one, the mask of a slot number, below it (so one shift tells
/// a bin of one part, and the mask is one `and` away; a `slots_log2` there
/// took three instructions more a lookup). Where those control bytes lie in
/// the file, read only to mark pages dirty one by one, is the
/// [`DenseBin`]'s.
#[derive(Clone, Copy, Debug, Default)]
struct Hot(u64);

/// The [`Hot`] entry of a bin whose lookup reads its [`DenseBin`].
const HOT_DEEP: u64 = 1;
/// Low bits of a [`Hot`] entry that hold a part's slot mask.
const HOT_MASK_BITS: u32 = SLOTS_LOG2_MAX as u32;

impl Hot {
    /// Whether this is a bin of one part, whose control bytes' address
    /// this entry holds.
    #[inline(always)]
    fn one_part(self) -> bool {
        self.0 >> HOT_MASK_BITS != 0
    }

    /// Where the control bytes of a bin of one part are mapped.
    #[inline(always)]
    fn ctrl(self) -> *const u8 {
        std::ptr::with_exposed_provenance::<u8>((self.0 >> HOT_MASK_BITS) as usize)
    }

    /// The slots of a bin of one part, less one.
    #[inline(always)]
    fn mask(self) -> usize {
        (self.0 & ((1 << HOT_MASK_BITS) - 1)) as usize
    }

    /// The slots of a bin of one part.
    #[inline(always)]
    fn slots(self) -> usize {
        self.mask() + 1
    }
}

/// The dense side of a table: its slot shape, one [`DenseBin`] per owned
/// bin and one lookup entry per bin of the key space.
#[derive(Clone, Debug)]
pub(crate) struct DenseTable {
    /// Key bytes of a slot.
    pub(crate) key_len: usize,
    /// Value bytes of a slot.
    pub(crate) val_len: usize,
    /// The owned bins, from bin `first` on. Change only through
    /// [`DenseTable::set_bin`] and the other methods, which keep `hot` in
    /// step.
    pub(crate) bins: Vec<DenseBin>,
    /// The bin (of the key space) of `bins[0]`.
    first: usize,
    /// What a lookup needs of each bin of the key space (see [`Hot`]), by
    /// the bin's number, so that a burst's lookahead reaches it from a
    /// hash in one shift, with no subtraction or bounds test: `2^bins_log2`
    /// entries, 0 (no table) for every bin not owned.
    hot: Vec<Hot>,
}

impl DenseTable {
    /// An empty dense table of the bins `bins` of a space of
    /// `2^bins_log2`.
    pub(crate) fn new(key_len: usize, val_len: usize, bins: BinRange, bins_log2: u8) -> Self {
        Self {
            key_len,
            val_len,
            bins: vec![DenseBin::default(); bins.len() as usize],
            first: bins.start as usize,
            hot: vec![Hot::default(); 1 << bins_log2],
        }
    }

    /// Replaces bin `bi` (whose parts are in `file`, the store's).
    pub(crate) fn set_bin(&mut self, bi: usize, db: DenseBin, file: &SegmentFile) {
        self.hot[self.first + bi] = db.hot(file);
        self.bins[bi] = db;
    }

    /// Removes the bins `at` (the first or the last of the owned bins),
    /// returning how many entries they held; the bins owned from then on
    /// start at bin `first`.
    pub(crate) fn remove_bins(&mut self, at: std::ops::Range<usize>, first: usize) -> usize {
        for bi in at.clone() {
            self.hot[self.first + bi] = Hot::default();
        }
        let entries = self.bins.drain(at).map(|db| db.len()).sum();
        self.first = first;
        entries
    }

    /// Inserts `n` bins without a table at `at` (after dropping every bin,
    /// with `clear`); the bins owned from then on start at bin `first`.
    pub(crate) fn insert_bins(&mut self, at: usize, n: usize, clear: bool, first: usize) {
        if clear {
            self.bins.clear();
            self.hot.fill(Hot::default());
        }
        self.bins.splice(at..at, (0..n).map(|_| DenseBin::default()));
        self.first = first;
    }

    /// The lookup entry of bin `bin` (of the key space).
    ///
    /// # Safety
    ///
    /// `bin` must be below `2^bins_log2` (as [`crate::keyspace::bin_of`]
    /// gives), the length of `hot`.
    #[inline(always)]
    unsafe fn hot_of(&self, bin: usize) -> Hot {
        debug_assert!(bin < self.hot.len());
        // SAFETY: the caller's.
        unsafe { *self.hot.get_unchecked(bin) }
    }

    /// The lookup entry of owned bin `bi`; `None` if not owned.
    #[inline(always)]
    fn hot_owned(&self, bi: usize) -> Option<Hot> {
        if bi < self.bins.len() {
            self.hot.get(self.first + bi).copied()
        } else {
            None
        }
    }

    /// Key and value bytes of a slot.
    #[inline(always)]
    pub(crate) fn stride(&self) -> usize {
        self.key_len + self.val_len
    }
}

/// Where a key was found: part number and slot.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SlotAt {
    pub(crate) part: usize,
    pub(crate) slot: usize,
}

/// Offsets, from a part's control bytes, of its slots' keys and hashes.
#[inline(always)]
fn kv_off(slots: usize) -> usize {
    slots + GROUP
}

#[inline(always)]
fn hash_off(slots: usize, stride: usize) -> usize {
    slots + GROUP + slots * stride
}

/// Bytes of a part from its control bytes on (`slots` slots of `stride`).
#[inline(always)]
fn payload_bytes_from_ctrl(slots: usize, stride: usize) -> usize {
    hash_off(slots, stride) + slots * 8
}

/// Location of a part's control bytes.
#[inline(always)]
fn ctrl_loc(part_loc: u64) -> u64 {
    part_loc + (HEADER + PART_HEAD) as u64
}

/// Where a lookup of one hash goes: its part's control bytes, as a pointer
/// into the live map and as a location, and the part's size.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Probe {
    ctrl: *const u8,
    ctrl_loc: u64,
    slots: usize,
    part: usize,
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
/// (the first empty one from its home on, as [`first_empty`] finds: the
/// lookup stops at the group of control bytes that has it). For a bin
/// without a table that slot is meaningless.
#[inline(always)]
fn lookup(p: &Probe, stride: usize, hash: u64, key: &[u8]) -> Result<usize, usize> {
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
fn prefetch_home(ctrl: *const u8, mask: usize, stride: usize, hash: u64) {
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

/// One entry of a dense table, as iteration gives it.
pub(crate) struct Entry<'a> {
    pub(crate) hash: u64,
    pub(crate) key: &'a [u8],
    pub(crate) value: &'a [u8],
}

/// The entries of one part (`slots` slots of `stride` bytes, keys of
/// `key_len`), read from its bytes `b` (control bytes first).
pub(crate) fn part_entries(
    b: &[u8],
    slots: usize,
    key_len: usize,
    stride: usize,
) -> impl Iterator<Item = (usize, Entry<'_>)> + '_ {
    (0..slots).filter(move |&j| b[j] != 0).map(move |j| (j, slot_entry(b, slots, key_len, stride, j)))
}

/// The entry in slot `j` of a part's bytes `b` (control bytes first;
/// `slots` slots of `stride` bytes, keys of `key_len`).
fn slot_entry(b: &[u8], slots: usize, key_len: usize, stride: usize, j: usize) -> Entry<'_> {
    let kv = kv_off(slots) + j * stride;
    let s = &b[kv..kv + stride];
    let hash = super::record::u64_at(b, hash_off(slots, stride) + j * 8);
    Entry { hash, key: &s[..key_len], value: &s[key_len..] }
}

/// The entries of the run of slots that starts at the home slot of `hash`
/// in its part of `db` (where every entry of that hash lies), up to the
/// first empty slot.
pub(crate) fn run_of<'a>(
    file: &'a SegmentFile,
    db: &'a DenseBin,
    bins_log2: u8,
    key_len: usize,
    stride: usize,
    hash: u64,
) -> impl Iterator<Item = (usize, Entry<'a>)> + 'a {
    let slots = db.slots();
    let body = if db.exists() {
        part_body(file, db.part(db.part_no(hash, bins_log2)), slots, stride)
    } else {
        &[][..]
    };
    let home = hash as usize & (slots - 1);
    (0..slots)
        .map(move |k| (home + k) & (slots - 1))
        .take_while(move |&j| body.get(j).is_some_and(|&c| c != 0))
        .map(move |j| (j, slot_entry(body, slots, key_len, stride, j)))
}

/// A part's bytes from its control bytes on.
pub(crate) fn part_body<'a>(
    file: &'a SegmentFile,
    part: &DensePart,
    slots: usize,
    stride: usize,
) -> &'a [u8] {
    file.bytes(ctrl_loc(part.loc), hash_off(slots, stride) + slots * 8)
}

/// A part record read back from a checkpoint (or another store), checked.
pub(crate) struct PartInfo {
    pub(crate) table: u16,
    pub(crate) key_len: usize,
    pub(crate) val_len: usize,
    pub(crate) depth: u8,
    pub(crate) slots_log2: u8,
    pub(crate) part: u32,
    pub(crate) loc: u64,
    /// Occupied slots.
    pub(crate) len: u32,
}

/// Checks a live part record `r` (header `h`, at `loc`, of bin `bin`)
/// read from a checkpoint: its head, its size, and every slot — the
/// mirrored control bytes, each occupied slot's hash (its bin, its part,
/// its tag) and that it is reachable from its home slot. Returns what the
/// restore needs to rebuild the bin's table.
pub(crate) fn check_part(
    r: &[u8],
    h: &Header,
    loc: u64,
    bin: Bin,
    bins_log2: u8,
) -> Result<PartInfo, String> {
    let p = &r[HEADER..];
    if p.len() < PART_HEAD {
        return Err("dense part shorter than its head".into());
    }
    let val_len = u32_at(p, 0) as usize;
    let (depth, slots_log2, part) = (p[4], p[5], u32_at(p, 8));
    let key_len = usize::from(u16::from_le_bytes([p[6], p[7]]));
    if h.key_len != 0 {
        return Err("dense part with key bytes in its header".into());
    }
    let stride = key_len + val_len;
    if !(SLOTS_LOG2_MIN..=SLOTS_LOG2_MAX).contains(&slots_log2)
        || depth > DEPTH_MAX
        || u32::from(bins_log2) + u32::from(depth) > 64 - PART_BITS_FLOOR
        || u64::from(part) >> depth != 0
    {
        return Err(format!("dense part {part} of {} with 2^{slots_log2} slots", 1u64 << depth.min(63)));
    }
    if key_len == 0 || stride > SLOT_MAX {
        return Err(format!("dense part with {key_len}-byte keys and {val_len}-byte values"));
    }
    if h.val_len as usize != payload_bytes(slots_log2, stride) {
        return Err(format!("dense part of {} bytes for 2^{slots_log2} slots of {stride}", h.val_len));
    }
    let slots = 1usize << slots_log2;
    let mask = slots - 1;
    let b = &p[PART_HEAD..];
    if b[slots..slots + GROUP] != b[..GROUP] {
        return Err("dense part's mirrored control bytes differ".into());
    }
    let db = DenseBin { depth, slots_log2, ..DenseBin::default() };
    let mut len = 0u32;
    for (j, e) in part_entries(b, slots, key_len, stride) {
        if b[j] != tag_of(e.hash) {
            return Err(format!("slot {j} of a dense part: tag does not match its hash"));
        }
        if crate::keyspace::bin_of(e.hash, bins_log2) != bin || db.part_no(e.hash, bins_log2) != part as usize
        {
            return Err(format!("slot {j} of a dense part: hash of another bin or part"));
        }
        // Reachable: every slot from its home to it is occupied.
        let mut i = e.hash as usize & mask;
        while i != j {
            if b[i] == 0 {
                return Err(format!("slot {j} of a dense part: not reachable from its home slot"));
            }
            i = (i + 1) & mask;
        }
        len += 1;
    }
    if len as usize > load_max(slots) {
        return Err(format!("dense part holds {len} keys in {slots} slots"));
    }
    Ok(PartInfo { table: h.table, key_len, val_len, depth, slots_log2, part, loc, len })
}

/// Checks that a bin's dense parts, checked one by one with [`check_part`]
/// and sorted by part number, make its whole table: every part of
/// `2^depth` present once, all of one size.
pub(crate) fn check_parts(parts: &[PartInfo]) -> Result<(), String> {
    let Some(f) = parts.first() else {
        return Ok(());
    };
    let (depth, slots_log2, key_len, val_len) = (f.depth, f.slots_log2, f.key_len, f.val_len);
    if parts.len() as u64 != 1u64 << depth {
        return Err(format!("{} dense parts where 2^{depth} are needed", parts.len()));
    }
    for (i, p) in parts.iter().enumerate() {
        if p.part as usize != i
            || (p.depth, p.slots_log2, p.key_len, p.val_len) != (depth, slots_log2, key_len, val_len)
        {
            return Err(format!("dense part {} does not match part 0 of its bin", p.part));
        }
    }
    Ok(())
}

impl StateStore {
    /// Installs the checked parts of bin `bi` of dense table `ti` (from a
    /// restore or an import).
    pub(crate) fn install_dense_parts(&mut self, ti: usize, bi: usize, parts: &[PartInfo]) {
        let Some(f) = parts.first() else {
            return;
        };
        let mk = |p: &PartInfo| DensePart { loc: p.loc, len: p.len };
        let db = DenseBin {
            first: mk(f),
            rest: parts[1..].iter().map(mk).collect(),
            depth: f.depth,
            slots_log2: f.slots_log2,
        };
        let n = db.len();
        let table = &mut self.tables[ti];
        if let Some(d) = table.dense.as_mut() {
            d.set_bin(bi, db, &self.file);
            table.len += n;
        }
    }

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

    /// Inserts the missing key of a burst's update: into its bin's one
    /// part if it has room, where nothing moves and the burst's lookahead
    /// holds (the usual case), else through [`Self::dense_insert`], which
    /// grows the bin. Returns whether parts moved. Not inlined: in the
    /// burst's function, the updates took 102.2 instructions a record
    /// against 101.8.
    #[inline(never)]
    fn dense_insert_missing(
        &mut self,
        ti: usize,
        hash: u64,
        key: &[u8],
        value: &[u8],
    ) -> Result<bool, StateError> {
        let bin = crate::keyspace::bin_number(hash, self.config.bins_log2) as usize;
        let Self { tables, file, .. } = self;
        if let Some(super::Table { dense: Some(d), len, .. }) = tables.get_mut(ti) {
            if let Some(db) = room_in_place(d, bin) {
                insert_slot(file, db.first.loc, db.slots(), hash, key, value);
                db.first.len += 1;
                *len += 1;
                return Ok(false);
            }
        }
        let bi = self.bin_index(hash)?;
        self.dense_insert(ti, bi, hash, key, value)
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

    /// Updates a burst of keys of dense table `t` (slots of `key_len` and
    /// `val_len` bytes) in order: for each `i`, `key_of(i, buf)` writes the
    /// key of hash `hashes[i]` into `buf` (`key_len` bytes), and
    /// `update(i, old, new)` writes the new value into `new` (`val_len`
    /// bytes) from the old one (`None`: the key is absent, and is
    /// inserted). The same effects as one update after the other; while
    /// key `i` is updated, the part and home slot of key `i + PREFETCH_AHEAD` are
    /// worked out and prefetched, so the cache misses of a burst overlap.
    /// Returns `Ok(false)` without touching anything if `t` is not a dense
    /// table of those slot sizes.
    #[inline(always)]
    pub(crate) fn dense_update_burst(
        &mut self,
        t: usize,
        hashes: &[u64],
        key_len: usize,
        val_len: usize,
        mut key_of: impl FnMut(usize, &mut FixedBuf),
        mut update: impl FnMut(usize, Option<&[u8]>, &mut FixedBuf),
    ) -> Result<bool, StateError> {
        let bins_log2 = self.config.bins_log2;
        match self.tables.get(t).and_then(|t| t.dense.as_ref()) {
            Some(d) if (d.key_len, d.val_len) == (key_len, val_len) && key_len.max(val_len) <= FIXED_MAX => {}
            _ => return Ok(false),
        }
        // A missing key and its new value, encoded by the caller.
        let mut kb: FixedBuf = [0u8; FIXED_MAX];
        let mut nb: FixedBuf = [0u8; FIXED_MAX];
        let n = hashes.len();
        let mut i = 0;
        // A run stops at a missing key it does not insert itself, and when
        // it settles: the next one takes its ring, unless the insert moved
        // a part (grew its bin), so that the keys' entries are not worked
        // out again.
        let mut ahead = Lookahead::NONE;
        // After a missing key, runs insert keys that fit in place
        // themselves, until enough keys in a row were there (see
        // `update_run`).
        let mut inserting = false;
        while i < n {
            // A run of updates (see `update_run`), compiled four times:
            // with and without marking each value's page, and with and
            // without inserting missing keys in place.
            let all = self.dense_all_marked();
            let shape = RunShape { key_len, val_len, bins_log2 };
            let (k, u) = (&mut key_of, &mut update);
            let stop = if !inserting {
                let Some(d) = self.tables.get(t).and_then(|t| t.dense.as_ref()) else {
                    return Ok(false);
                };
                update_run_marking(all, d, &mut self.file, shape, hashes, &mut i, &mut ahead, k, u)
            } else {
                let Some(super::Table { dense: Some(d), len, .. }) = self.tables.get_mut(t) else {
                    return Ok(false);
                };
                let d = Inserting { d, len };
                update_run_marking(all, d, &mut self.file, shape, hashes, &mut i, &mut ahead, k, u)
            };
            match stop {
                Stop::Done => break,
                Stop::NotOwned => return Err(self.not_owned(hashes[i])),
                Stop::Settled => inserting = false,
                Stop::Missing => {
                    key_of(i, &mut kb);
                    update(i, None, &mut nb);
                    let hash = hashes[i];
                    if self.dense_insert_missing(t, hash, &kb[..key_len], &nb[..val_len])? {
                        ahead = Lookahead::NONE;
                    }
                    i += 1;
                    inserting = true;
                }
            }
        }
        Ok(true)
    }

    /// Whether every page of every dense part is marked dirty in this dirty
    /// epoch, marking them now if the epoch may (see [`WholeMarks`]).
    fn dense_all_marked(&mut self) -> bool {
        let epoch = self.file.dirty_epoch();
        if self.marks.marked == epoch {
            return true;
        }
        if !self.marks.allowed || self.file.copying() {
            return false;
        }
        for (loc, len) in kv_regions(&self.tables) {
            self.file.mark_dirty(loc, len);
        }
        self.marks.marked = epoch;
        self.marks.in_a_row += 1;
        true
    }

    /// The dirty epoch ends (a checkpoint takes or clears the dirty pages):
    /// decides whether the next one may mark every dense page at once.
    pub(crate) fn plan_whole_marks(&mut self) {
        let allowed = if self.marks.marked == self.file.dirty_epoch() {
            self.marks.in_a_row < WHOLE_EPOCHS_MAX
        } else {
            self.marks.in_a_row = 0;
            // Pages of the dense parts' keys and values (about: a part's
            // may share their first and last page with others).
            let dense_pages: usize =
                kv_regions(&self.tables).map(|(_, len)| len.div_ceil(super::file::PAGE_BYTES)).sum();
            self.file.dirty_page_count() * 2 >= dense_pages.max(1)
        };
        self.marks.allowed = allowed;
        if !allowed {
            self.marks.in_a_row = 0;
        }
    }

    /// Points part `k` of bin `bi` of dense table `ti` at its record's new
    /// location `loc` (compaction moved it, or rolled the move back).
    pub(crate) fn relocate_part(&mut self, ti: usize, bi: usize, k: usize, loc: u64) {
        let Some(d) = self.tables[ti].dense.as_mut() else {
            return;
        };
        let mut db = d.bins[bi].clone();
        db.part_mut(k).loc = loc;
        d.set_bin(bi, db, &self.file);
    }

    /// The dense bin `bi` of table `ti` (which must be dense).
    fn dense_bin(&self, ti: usize, bi: usize) -> &DenseBin {
        match &self.tables[ti].dense {
            Some(d) => &d.bins[bi],
            None => unreachable!("dense_bin of a record table"),
        }
    }

    /// Rebuilds bin `bi` of dense table `ti` with room for more keys: parts
    /// twice as large, or twice as many once a part would not fit in a
    /// segment (or a bin without a table gets its first part). Compacts the
    /// bin first if half its bytes are garbage (old parts, mostly). On
    /// error the bin is as it was.
    #[cold]
    fn dense_grow(&mut self, ti: usize, bi: usize) -> Result<(), StateError> {
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

    /// Gives up the `size` bytes at `loc`, just allocated in bin `bi` and
    /// not written: they become a dead padding record, garbage to compact.
    fn abandon(&mut self, bi: usize, loc: u64, size: usize) {
        super::write_pad(&mut self.file, loc, size as u64);
        self.heaps[bi].dead += size as u64;
    }

    /// Takes space in bin `bi` for its new part number `part`, of `size`
    /// bytes, placed so that the part's control bytes start at byte
    /// [`CTRL_IN_LINE`] of a cache line and, in a fresh segment, in one of
    /// a few lines of it (see [`part_pad`]). Returns where the space taken starts and where the
    /// part does: the bytes between are for [`Self::pad_part`] (a
    /// reservation makes them padding once their pages are backed).
    ///
    /// Every part of one size used to start its segment, and segments are
    /// aligned to their size, so the parts' control bytes (read by every
    /// lookup) and first slots fell in a sixteenth of the cache's sets, the
    /// control bytes split over two lines. Keyed-sum (100 000 keys, 1
    /// worker, against that) ran ×1.047 with the control bytes starting a
    /// line, ×1.063 with three colours as well, ×1.019 with the colours
    /// alone (9 rounds of 20 M records each), ×1.071 as now (decision 37).
    fn alloc_part(&mut self, bi: usize, part: usize, size: usize) -> Result<(u64, u64), StateError> {
        let h = &self.heaps[bi];
        let here = line_pad(h.tail);
        let fresh = part_pad(bi + part, size);
        // A part that does not fit where the bin's segment is filled goes
        // at the start of a new one (where `fresh` is worked out for),
        // unless it does with the fresh pad: then it is not aligned (rare).
        let pad = if h.tail + (here + size) as u64 <= h.end {
            here
        } else if h.tail + (fresh + size) as u64 > h.end {
            fresh
        } else {
            0
        };
        let at = self.alloc(bi, pad + size, false)?;
        Ok((at, at + pad as u64))
    }

    /// Makes the bytes before a part placed by [`Self::alloc_part`] (from
    /// `at` to the part at `loc`) dead padding.
    fn pad_part(&mut self, bi: usize, at: u64, loc: u64) {
        if loc > at {
            self.abandon(bi, at, (loc - at) as usize);
        }
    }

    /// [`Self::alloc_part`] with the bytes before the part made padding at
    /// once: where the part goes.
    pub(crate) fn place_part(&mut self, bi: usize, part: usize, size: usize) -> Result<u64, StateError> {
        let (at, loc) = self.alloc_part(bi, part, size)?;
        self.pad_part(bi, at, loc);
        Ok(loc)
    }

    /// Copies dense part number `part` of bin `bi`, at `loc`, to new space
    /// of the bin (see [`Self::place_part`]); returns its new location.
    pub(crate) fn copy_part(&mut self, bi: usize, part: usize, loc: u64) -> Result<u64, StateError> {
        let size = Header::read(self.file.bytes(loc, HEADER)).record_bytes();
        let new = self.place_part(bi, part, size)?;
        self.file.copy(loc, new, size);
        Ok(new)
    }

    /// The hash of the first key of owned bin `bi` (what a dense part's
    /// record header holds).
    fn bin_hash(&self, bi: usize) -> u64 {
        let bins_log2 = self.config.bins_log2;
        if bins_log2 == 0 {
            0
        } else {
            u64::from(self.bins.start + bi as u32) << (64 - u32::from(bins_log2))
        }
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

/// Where the control bytes, keys and values of every part of the dense
/// tables of `tables` lie in the file (what burst updates write, and the
/// inserts of their runs but for the keys' hashes): (location, bytes).
/// The control bytes come first in a part, on the first page of its keys
/// but in the largest parts: marked with them, they take an insert's mark
/// of its control byte off (about 10 instructions an insert).
fn kv_regions(tables: &[super::Table]) -> impl Iterator<Item = (u64, usize)> + '_ {
    tables.iter().filter_map(|t| t.dense.as_ref()).flat_map(|d| {
        d.bins.iter().filter(|db| db.exists()).flat_map(move |db| {
            let slots = db.slots();
            db.parts().map(move |p| (ctrl_loc(p.loc), kv_off(slots) + slots * d.stride()))
        })
    })
}

/// What a run of burst updates needs of its table and store, besides them.
#[derive(Clone, Copy)]
struct RunShape {
    key_len: usize,
    val_len: usize,
    bins_log2: u8,
}

/// A run of updates of keys that are there, from key `*from` on (see
/// [`StateStore::dense_update_burst`]): the table is only read (but for
/// the lengths of in-place inserts) and the file only written until a key
/// is missing that the run does not insert (an insert may grow or move
/// parts), so both are borrowed once for the run. `ALL`: every dense page
/// is marked dirty in this epoch (see [`WholeMarks`]), so the updates mark
/// none.
///
/// A run of an [`Inserting`] table (`D::INSERTS`) also inserts a missing
/// key whose bin is one part with room (which moves nothing, so the
/// lookahead holds), and stops ([`Stop::Settled`]) once [`SETTLED_AFTER`]
/// keys in a row were there. The runs after a missing key are of this
/// kind: while a state is built most keys are new, and each one stopping a
/// run cost about 440 instructions (the run's restart, the insert's call
/// and its marks) against about 100 here; keyed-sum's first 100 000
/// records (all keys new) went from 57.3 to 34.5 M instructions. The runs
/// of a settled state, of a `&DenseTable`, have no insert in their loop:
/// there it made every update cost about 4 instructions more, 14 when the
/// loop went on after the insert (what the loop keeps in registers had to
/// survive the call), and with a `&mut DenseTable` passed to both kinds,
/// 7 more (the next key's number no longer stayed in a register).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn update_run<const ALL: bool, D: RunTable>(
    mut t: D,
    file: &mut SegmentFile,
    shape: RunShape,
    hashes: &[u64],
    from: &mut usize,
    ahead: &mut Lookahead,
    key_of: &mut impl FnMut(usize, &mut FixedBuf),
    update: &mut impl FnMut(usize, Option<&[u8]>, &mut FixedBuf),
) -> Stop {
    let RunShape { key_len, val_len, bins_log2 } = shape;
    let stride = key_len + val_len;
    // The key and the new value of each update, encoded by the caller:
    // local to the run, so they need not live in memory (a missing key is
    // encoded again where it is inserted).
    let (mut kb, mut nb): (FixedBuf, FixedBuf) = ([0u8; FIXED_MAX], [0u8; FIXED_MAX]);
    let bin = |h: u64| crate::keyspace::bin_number(h, bins_log2) as usize;
    // The next key's number: local, and written back when the run stops,
    // so that it stays in a register.
    let mut i = *from;
    // The table's lookup entries, reached from here without the table: a
    // run changes no entry and never resizes them (an insert that would
    // stops the run), and their address in a register, not the table's,
    // takes a load off the lookahead's chain of dependent loads (when the
    // table's address was spilled, keyed-sum ran ×0.966).
    let hot = t.table().hot.as_ptr();
    // Where the next PREFETCH_AHEAD keys are, worked out (and prefetched)
    // that many updates ahead, and, when pages are marked one by one, where
    // their parts' control bytes lie (with `ALL` these are never read, and
    // so never written).
    // Taken from the run before when that one stopped at a key it
    // inserted without moving a part (its entries hold), else worked out
    // here; local to the loop, where they stay off the heap's pointers.
    // (With `ALL` the locations are never read, so not copied either: a
    // copy of both took a call to `memcpy` each way.)
    let mut ring = ahead.ring;
    let mut locs = if ALL { [0; PREFETCH_AHEAD] } else { ahead.locs };
    if ahead.from != i || ahead.all != ALL {
        for (k, &h) in hashes.iter().enumerate().skip(i).take(PREFETCH_AHEAD) {
            // SAFETY: `hot` is the table's (above); `bin` gives a bin of
            // the table's space.
            (ring[k % PREFETCH_AHEAD], locs[k % PREFETCH_AHEAD]) =
                unsafe { Ahead::of::<ALL>(t.table(), hot, file, bin(h), bins_log2, stride, h) };
        }
    }
    // Keys in a row that were there (in a run that inserts).
    let mut there = 0u32;
    loop {
        let Some(&hash) = hashes.get(i) else {
            *from = i;
            break Stop::Done;
        };
        let (a, ctrl_loc) = (ring[i % PREFETCH_AHEAD], locs[i % PREFETCH_AHEAD]);
        if let Some(&h) = hashes.get(i + PREFETCH_AHEAD) {
            // SAFETY: as above.
            let (a, loc) = unsafe { Ahead::of::<ALL>(t.table(), hot, file, bin(h), bins_log2, stride, h) };
            ring[i % PREFETCH_AHEAD] = a;
            // With `ALL`, the locations are never read (nor written).
            if !ALL {
                locs[i % PREFETCH_AHEAD] = loc;
            }
        }
        if a.ctrl.is_null() {
            cold();
            *from = i;
            break Stop::NotOwned;
        }
        let p = Probe { ctrl: a.ctrl, ctrl_loc, slots: a.mask + 1, part: 0 };
        key_of(i, &mut kb);
        let j = match lookup(&p, stride, hash, &kb[..key_len]) {
            Ok(j) => j,
            Err(empty) => {
                if D::INSERTS {
                    // The ring's entry of a bin of one part is that part.
                    if let Some((db, len)) = t.room(bin(hash)) {
                        update(i, None, &mut nb);
                        let (key, value) = (&kb[..key_len], &nb[..val_len]);
                        insert_at::<ALL>(
                            file,
                            p.ctrl.cast_mut(),
                            db.ctrl_loc(),
                            p.slots,
                            empty,
                            hash,
                            key,
                            value,
                        );
                        db.first.len += 1;
                        *len += 1;
                        there = 0;
                        i += 1;
                        continue;
                    }
                } else {
                    cold();
                }
                // The ring holds the next PREFETCH_AHEAD keys' entries.
                ahead.save(ring, locs, i + 1, ALL);
                *from = i;
                break Stop::Missing;
            }
        };
        let (ptr, vloc) = value_ptr(&p, key_len, stride, j);
        if !ALL {
            file.mark_dirty(vloc, val_len);
        }
        // SAFETY: `ptr .. ptr + val_len` is the slot's value in the live
        // map (the probe was worked out in this run, in which no part
        // moves, so its part has not moved), marked dirty just now or, with
        // every dense page, earlier in this dirty epoch and with no
        // copy-on-write on; `file` is borrowed mutably for the run and no
        // other slice of it lives.
        let value = unsafe { std::slice::from_raw_parts_mut(ptr, val_len) };
        update(i, Some(value), &mut nb);
        value.copy_from_slice(&nb[..val_len]);
        i += 1;
        if D::INSERTS {
            there += 1;
            if there == SETTLED_AFTER {
                ahead.save(ring, locs, i, ALL);
                *from = i;
                break Stop::Settled;
            }
        }
    }
}

/// [`update_run`] with `ALL` = `all`: the same run compiled for each.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn update_run_marking<D: RunTable>(
    all: bool,
    t: D,
    file: &mut SegmentFile,
    shape: RunShape,
    hashes: &[u64],
    from: &mut usize,
    ahead: &mut Lookahead,
    key_of: &mut impl FnMut(usize, &mut FixedBuf),
    update: &mut impl FnMut(usize, Option<&[u8]>, &mut FixedBuf),
) -> Stop {
    if all {
        update_run::<true, D>(t, file, shape, hashes, from, ahead, key_of, update)
    } else {
        update_run::<false, D>(t, file, shape, hashes, from, ahead, key_of, update)
    }
}

/// The table of a run of updates (see [`update_run`]): only read, or, for
/// a run that inserts, also changed where a key goes in in place.
trait RunTable {
    /// Whether the run inserts.
    const INSERTS: bool;
    fn table(&self) -> &DenseTable;
    /// The bin of a missing key of bin `bin` (of the key space) and the
    /// table's length, if the key goes in in place (see [`room_in_place`]).
    fn room(&mut self, bin: usize) -> Option<(&mut DenseBin, &mut usize)>;
}

impl RunTable for &DenseTable {
    const INSERTS: bool = false;
    #[inline(always)]
    fn table(&self) -> &DenseTable {
        self
    }
    #[inline(always)]
    fn room(&mut self, _: usize) -> Option<(&mut DenseBin, &mut usize)> {
        None
    }
}

/// The table of a run that inserts, and its length (entries).
struct Inserting<'a> {
    d: &'a mut DenseTable,
    len: &'a mut usize,
}

impl RunTable for Inserting<'_> {
    const INSERTS: bool = true;
    #[inline(always)]
    fn table(&self) -> &DenseTable {
        self.d
    }
    #[inline(always)]
    fn room(&mut self, bin: usize) -> Option<(&mut DenseBin, &mut usize)> {
        Some((room_in_place(self.d, bin)?, &mut *self.len))
    }
}

/// Keys in a row found by a run that inserts (see [`update_run`]) after
/// which it stops, for a run that does not.
const SETTLED_AFTER: u32 = 32;

/// Puts `key` (absent, of `hash`) with `value` in empty slot `j` of the
/// part of `slots` slots whose control bytes are mapped at `ctrl` and lie
/// at `cl` in the file: marks what it writes dirty (with `ALL`, only the
/// hash: the pages of the control bytes, keys and values are, see
/// [`kv_regions`]), then fills the slot with plain stores.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn insert_at<const ALL: bool>(
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

/// The lookahead ring of a burst's updates, kept from one run of them to
/// the next (see [`update_run`]): the entries of keys `from ..
/// from + PREFETCH_AHEAD`, worked out for `all`.
#[derive(Clone, Copy)]
struct Lookahead {
    ring: [Ahead; PREFETCH_AHEAD],
    locs: [u64; PREFETCH_AHEAD],
    /// `usize::MAX`: no entries.
    from: usize,
    all: bool,
}

impl Lookahead {
    const NONE: Lookahead = Lookahead {
        ring: [Ahead::NONE; PREFETCH_AHEAD],
        locs: [0; PREFETCH_AHEAD],
        from: usize::MAX,
        all: false,
    };

    /// Keeps a run's ring, of the entries of keys `from ..` worked out
    /// for `all` (with `all` the locations are not kept: never read).
    #[inline(always)]
    fn save(&mut self, ring: [Ahead; PREFETCH_AHEAD], locs: [u64; PREFETCH_AHEAD], from: usize, all: bool) {
        self.ring = ring;
        if !all {
            self.locs = locs;
        }
        (self.from, self.all) = (from, all);
    }
}

/// Marks the branch that calls it as rarely taken, so that the compiler
/// lays out and allocates registers for the other (what
/// `std::hint::cold_path` does, which this crate's minimum Rust lacks).
#[cold]
#[inline(never)]
fn cold() {}

/// Why a run of a burst's updates stopped.
enum Stop {
    /// Every update is done.
    Done,
    /// The key of the next update is missing: it is inserted.
    Missing,
    /// A run that inserts found enough keys in a row: the next runs need
    /// not insert.
    Settled,
    /// The next key's bin is not this store's.
    NotOwned,
}

/// Where a burst's update will look for its key, worked out ahead: the
/// control bytes of its part (null: its bin is not owned) and the part's
/// slots less one (the mask of a slot number). With where the control
/// bytes lie, a [`Probe`] (the part's number is not needed to update).
#[derive(Clone, Copy)]
struct Ahead {
    ctrl: *const u8,
    mask: usize,
}

impl Ahead {
    const NONE: Ahead = Ahead { ctrl: std::ptr::null(), mask: 0 };

    /// Where `hash` (in bin `bin` of the key space, a bin of `d` or not)
    /// is, with what its lookup reads first prefetched: its group of
    /// control bytes and its home slot; and, unless `ALL`, where its part's
    /// control bytes lie (else 0).
    ///
    /// # Safety
    ///
    /// `hot` must point at `d`'s lookup entries (`d.hot`, not resized
    /// since), and `bin` be below their number, `2^bins_log2` (as
    /// [`crate::keyspace::bin_of`] gives).
    #[inline(always)]
    unsafe fn of<const ALL: bool>(
        d: &DenseTable,
        hot: *const Hot,
        file: &SegmentFile,
        bin: usize,
        bins_log2: u8,
        stride: usize,
        hash: u64,
    ) -> (Ahead, u64) {
        // The one-part case of `probe` written out again: with the rest of
        // `probe` inlined here too, keyed-sum took 139.8 instructions a
        // record instead of 136.9.
        // SAFETY: the caller's.
        let h = unsafe { *hot.add(bin) };
        let bi = bin.wrapping_sub(d.first);
        let (ctrl, mask, loc) = if h.one_part() {
            (h.ctrl(), h.mask(), if ALL { 0 } else { d.bins[bi].ctrl_loc() })
        } else {
            match probe(d, file, bi, bins_log2, hash) {
                Some(p) => (p.ctrl, p.slots - 1, p.ctrl_loc),
                None => return (Ahead::NONE, 0),
            }
        };
        prefetch_home(ctrl, mask, stride, hash);
        (Ahead { ctrl, mask }, if ALL { 0 } else { loc })
    }
}

/// The first empty slot at or after the home slot of `hash`, from a part's
/// control bytes `ctrl` (`slots + GROUP` of them). The part is never full.
fn first_empty(ctrl: &[u8], hash: u64, slots: usize) -> usize {
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

/// Bytes of a cache line.
const LINE: u64 = 64;

/// Where a part's control bytes start in its record.
const CTRL_AT: u64 = (HEADER + PART_HEAD) as u64;

/// Where in its cache line a part's control bytes start: byte 8, so that
/// its keys and values (which follow `slots + GROUP` control bytes, 8 more
/// than a multiple of 16 in a part of 16 slots or more) start at a multiple
/// of 16 and a slot of a `u64` key and value never straddles two lines, and
/// the 40 control bytes of a part of 32 slots lie in one line. (With the
/// control bytes at byte 0, a quarter of such slots straddled: keyed-sum ran
/// ×1.003 and ×0.989 of this with one worker at 100 000 keys, ×0.951 at
/// 1 000 000.)
const CTRL_IN_LINE: u64 = 8;

/// Bytes at `at` to leave dead for a part placed after them to have its
/// control bytes at [`CTRL_IN_LINE`]: none, or a padding record's (its
/// header) or more.
fn line_pad(at: u64) -> usize {
    let p = ((LINE + CTRL_IN_LINE - (at + CTRL_AT) % LINE) % LINE) as usize;
    if p == 0 || p >= HEADER {
        p
    } else {
        p + LINE as usize
    }
}

/// Most colours of parts (see [`part_pad`]): the lines of a page.
const COLOURS_MAX: usize = 64;

/// Bytes to leave dead at the start of a fresh segment before part `n` (a
/// bin's number plus the part's) of `size` bytes: [`line_pad`]'s, and
/// whole lines more for the part's colour, `n` modulo the colours that the
/// room a segment of its size leaves gives, within a quarter of the
/// segment (so that padding never makes a bin compact) and
/// [`COLOURS_MAX`]; none where the room is less than the line's pad.
/// Keyed-sum's parts of 32 slots (844 bytes, in segments of 1 KiB) get
/// three colours.
fn part_pad(n: usize, size: usize) -> usize {
    let seg = size.next_power_of_two().max(super::SEG_MIN_BYTES);
    let first = line_pad(0);
    let room = (seg - size).min(seg / 4);
    if room < first {
        return 0;
    }
    let colours = (1 + (room - first) / LINE as usize).min(COLOURS_MAX);
    first + (n % colours) * LINE as usize
}

/// Bytes between two parts of a reservation that still put them in one
/// run of pages to back at once (see [`StateStore::dense_reserve`]).
const RUN_GAP: u64 = 64 * 1024;

/// What a new dense part's head says.
#[derive(Clone, Copy)]
struct PartShape {
    ti: usize,
    bin_hash: u64,
    key_len: usize,
    val_len: usize,
    depth: u8,
    slots_log2: u8,
}

/// Writes an empty part, number `part`, of `shape` at `loc`: its record
/// header and head, every slot empty (all of it zeroed, so no earlier
/// bytes of reused space stay in it). Returns its body, from the control
/// bytes on, marked dirty.
fn init_part(file: &mut SegmentFile, loc: u64, shape: PartShape, part: u32) -> &mut [u8] {
    let PartShape { ti, bin_hash, key_len, val_len, depth, slots_log2 } = shape;
    let size = HEADER + payload_bytes(slots_log2, key_len + val_len);
    let h = Header {
        hash: bin_hash,
        key_len: 0,
        val_len: (size - HEADER) as u32,
        table: ti as u16,
        kind: KIND_DENSE,
        flags: 0,
    };
    let b = file.bytes_mut(loc, size);
    b.fill(0);
    h.write(b);
    let p = &mut b[HEADER..];
    p[0..4].copy_from_slice(&(val_len as u32).to_le_bytes());
    p[4] = depth;
    p[5] = slots_log2;
    p[6..8].copy_from_slice(&(key_len as u16).to_le_bytes());
    p[8..12].copy_from_slice(&part.to_le_bytes());
    &mut p[PART_HEAD..]
}

/// Puts `key` (absent, of `hash`) with `value` in the first empty slot
/// at or after its home in the part at `part_loc`, of `slots` slots (never
/// full): marks what it writes dirty, then fills the slot with plain stores
/// (a checked, marking write per field cost an insert about 250
/// instructions).
fn insert_slot(file: &mut SegmentFile, part_loc: u64, slots: usize, hash: u64, key: &[u8], value: &[u8]) {
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

/// The bin of a missing key of bin `bin` (of the key space) if the key
/// goes into it in place: the bin is owned, one part, with room for one
/// more key (the usual case). Then neither its part nor any other moves,
/// so a burst's lookahead holds.
#[inline(always)]
fn room_in_place(d: &mut DenseTable, bin: usize) -> Option<&mut DenseBin> {
    // SAFETY: `bin` is `bin_of` a hash in the table's space.
    let h = unsafe { d.hot_of(bin) };
    if !h.one_part() {
        return None;
    }
    let bi = bin.wrapping_sub(d.first);
    d.bins.get_mut(bi).filter(|db| (db.first.len as usize) < load_max(h.slots()))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::record::NONE;
    use crate::store::tests::{ok, tmp};
    use crate::{hash_u64, Backing, BinRange, StoreConfig, ValueState};

    fn small_store(dir: &tempfile::TempDir) -> StateStore {
        ok(StateStore::create(StoreConfig::new(dir.path(), 2).with_segment_bytes(4096), BinRange::all(2)))
    }

    #[test]
    fn every_key_stays_found_while_bins_grow_into_several_parts() {
        let dir = tmp();
        let mut s = small_store(&dir);
        let mut sums = ok(ValueState::<u64, u64>::register(&mut s, "sums"));
        for k in 0..600u64 {
            ok(sums.update(&mut s, hash_u64(k), &k, |old| old.unwrap_or(0) + k));
            for j in (0..=k).step_by(7) {
                assert_eq!(sums.get(&s, hash_u64(j), &j), Some(j), "key {j} after inserting {k}");
            }
        }
        // 150 keys a bin need several parts of at most 128 slots.
        let d = s.tables[0].dense.as_ref().map(|d| d.bins.iter().map(|b| b.depth).max());
        assert!(matches!(d, Some(Some(depth)) if depth >= 1), "{d:?}");
        assert_eq!(sums.len(&s), 600);
    }

    /// Checks every lookup entry of table 0 against its bin: a bin of one
    /// part is reached through the entry alone (its address and size),
    /// any other through its `DenseBin`; returns how many of each.
    fn check_lookup_entries(s: &StateStore) -> (usize, usize) {
        let Some(d) = s.tables[0].dense.as_ref() else {
            panic!("table 0 is not dense");
        };
        assert_eq!(d.hot.len(), 1 << s.config.bins_log2);
        let owned = d.first..d.first + d.bins.len();
        for (b, h) in d.hot.iter().enumerate() {
            assert!(owned.contains(&b) || h.0 == 0, "bin {b} is not owned, yet has a lookup entry {h:?}");
        }
        let (mut one, mut other) = (0, 0);
        for (bi, db) in d.bins.iter().enumerate() {
            let h = d.hot[d.first + bi];
            if !db.exists() {
                assert_eq!(h.0, 0, "bin {bi} has no table");
                continue;
            }
            let loc = db.ctrl_loc();
            if db.depth == 0 {
                assert!(h.one_part(), "bin {bi} of one part: {h:?}");
                assert_eq!(Some(h.ctrl().cast_mut()), s.file.addr(loc), "bin {bi}: its control bytes");
                assert_eq!(h.slots(), db.slots(), "bin {bi}: its slots");
                one += 1;
            } else {
                assert_eq!(h.0, HOT_DEEP, "bin {bi} of several parts");
                other += 1;
            }
        }
        (one, other)
    }

    #[test]
    fn lookup_entries_follow_their_bins_through_growth_and_compaction() {
        let dir = tmp();
        let mut s = small_store(&dir);
        let mut sums = ok(ValueState::<u64, u64>::register(&mut s, "sums"));
        let mut seen = Vec::new();
        for k in 0..600u64 {
            ok(sums.update(&mut s, hash_u64(k), &k, |old| old.unwrap_or(0) + k));
            if k % 25 == 0 {
                seen.push(check_lookup_entries(&s));
            }
        }
        // Bins of one part first, then of several (the entries are checked
        // on both sides of every growth and the compactions after them).
        assert!(seen.iter().any(|&(one, _)| one > 0), "{seen:?}");
        assert!(seen.last().is_some_and(|&(_, other)| other > 0), "{seen:?}");
        // What the entries say is what the lookups find.
        for k in 0..600u64 {
            assert_eq!(sums.get(&s, hash_u64(k), &k), Some(k), "key {k}");
        }
    }

    #[test]
    fn lookup_entries_follow_their_bins_through_split_and_merge() {
        // 8 bins; a store owning all of them gives away its first two and
        // its last two, then takes both back.
        let cfg = |d: &tempfile::TempDir| StoreConfig::new(d.path(), 3).with_segment_bytes(4096);
        let (da, db, dc) = (tmp(), tmp(), tmp());
        let mut s = ok(StateStore::create(cfg(&da), BinRange::all(3)));
        let mut sums = ok(ValueState::<u64, u64>::register(&mut s, "sums"));
        let keys: Vec<u64> = (0..400).collect();
        let hashes: Vec<u64> = keys.iter().map(|&k| hash_u64(k)).collect();
        // Every update of a burst adds the key's number to its sum.
        let burst = |s: &mut StateStore, sums: &mut ValueState<u64, u64>, hashes: &[u64], keys: &[u64]| {
            sums.update_burst(s, hashes, keys, |i, old| old.unwrap_or(0) + keys[i], |_, _| {})
        };
        ok(burst(&mut s, &mut sums, &hashes, &keys));
        check_lookup_entries(&s);
        let head = ok(s.split_off_into(BinRange::new(0, 2), cfg(&db)));
        let mut tail = ok(s.split_off_into(BinRange::new(6, 8), cfg(&dc)));
        for st in [&s, &head, &tail] {
            let (one, other) = check_lookup_entries(st);
            assert!(one + other > 0, "the store has bins with tables");
        }
        // A burst of the remaining store's keys finds each one (a second
        // update each), and one of a key whose bin went away fails rather
        // than being taken for a missing key and inserted.
        let mine: Vec<usize> =
            (0..keys.len()).filter(|&i| (2..6).contains(&crate::bin_of(hashes[i], 3))).collect();
        let (mh, mk): (Vec<u64>, Vec<u64>) = mine.iter().map(|&i| (hashes[i], keys[i])).unzip();
        ok(burst(&mut s, &mut sums, &mh, &mk));
        let gone = (0..keys.len()).find(|&i| crate::bin_of(hashes[i], 3) >= 6).unwrap_or(0);
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            burst(&mut s, &mut sums, &hashes[gone..gone + 1], &keys[gone..gone + 1])
        }));
        // A programmer error: debug builds assert, release builds fail.
        if cfg!(debug_assertions) {
            assert!(r.is_err(), "debug builds assert");
        } else {
            assert!(matches!(r, Ok(Err(StateError::BinNotOwned { bin: 6, .. }))), "{r:?}");
        }
        // The tail comes back: its keys are found through their entries.
        let mut tail_sums = ok(ValueState::<u64, u64>::register(&mut tail, "sums"));
        assert_eq!(tail_sums.get(&tail, hashes[gone], &keys[gone]), Some(keys[gone]));
        // The tail comes back after the store's bins, the head before
        // them (the owned bins start elsewhere then).
        ok(s.merge(tail));
        check_lookup_entries(&s);
        ok(s.merge(head));
        check_lookup_entries(&s);
        // The merged parts are placed as new ones are (`alloc_part`).
        let Some(d) = s.tables[0].dense.as_ref() else { panic!("not dense") };
        for p in d.bins.iter().filter(|db| db.exists()).flat_map(|db| db.parts()) {
            assert_eq!(ctrl_loc(p.loc) % LINE, CTRL_IN_LINE, "a merged part at {}", p.loc);
        }
        let mut sums = ok(ValueState::<u64, u64>::register(&mut s, "sums"));
        ok(burst(&mut s, &mut sums, &hashes, &keys));
        for (&h, &k) in hashes.iter().zip(&keys) {
            let updates = if (2..6).contains(&crate::bin_of(h, 3)) { 3 } else { 2 };
            assert_eq!(sums.get(&s, h, &k), Some(updates * k), "key {k}");
        }
    }

    #[test]
    fn reserve_gives_each_bin_its_share_up_front() {
        let dir = tmp();
        // 8 bins; 160 keys are 20 a bin: 32 slots (28 under the 7/8 load).
        let mut s = ok(StateStore::create(StoreConfig::new(dir.path(), 3), BinRange::all(3)));
        let mut sums = ok(ValueState::<u64, u64>::register(&mut s, "sums"));
        let slots = |s: &StateStore| -> Vec<u8> {
            s.tables[0]
                .dense
                .as_ref()
                .map(|d| d.bins.iter().map(|db| db.slots_log2).collect())
                .unwrap_or_default()
        };
        // Too few keys for more than a first part: nothing is made early.
        ok(sums.reserve(&mut s, 40));
        assert_eq!(slots(&s), vec![0; 8]);
        ok(sums.reserve(&mut s, 160));
        assert_eq!(slots(&s), vec![5; 8]);
        check_lookup_entries(&s);
        // Three times as many keys as reserved: the bins grow past it, and
        // every key is found.
        for k in 0..480u64 {
            ok(sums.update(&mut s, hash_u64(k), &k, |old| old.unwrap_or(0) + k));
        }
        assert!(slots(&s).iter().all(|&l| l >= 6), "{:?}", slots(&s));
        for k in 0..480u64 {
            assert_eq!(sums.get(&s, hash_u64(k), &k), Some(k), "key {k}");
        }
        // Bins that hold keys are left as they are by a later reserve.
        let before = slots(&s);
        ok(sums.reserve(&mut s, 1 << 20));
        assert_eq!(slots(&s), before);
    }

    /// Every part's control bytes start at byte `CTRL_IN_LINE` of a cache
    /// line (a reservation's parts, each at the start of a segment of its
    /// own, at one of three lines of it: their colours), and so do those of
    /// grown bins and those a compaction moved (checked: with compaction
    /// copying parts as records, this fails).
    #[test]
    fn parts_are_placed_in_their_lines_in_several_colours() {
        let dir = tmp();
        let mut s = ok(StateStore::create(StoreConfig::new(dir.path(), 4), BinRange::all(4)));
        let mut sums = ok(ValueState::<u64, u64>::register(&mut s, "sums"));
        let ctrl_locs = |s: &StateStore| -> Vec<u64> {
            let Some(d) = s.tables[0].dense.as_ref() else { panic!("not dense") };
            d.bins
                .iter()
                .filter(|db| db.exists())
                .flat_map(|db| db.parts().map(|p| ctrl_loc(p.loc)))
                .collect()
        };
        // 16 bins of 20 keys: parts of 32 slots (844 bytes, 180 to spare
        // in a segment of 1 KiB).
        ok(sums.reserve(&mut s, 16 * 20));
        let reserved = ctrl_locs(&s);
        assert_eq!(reserved.len(), 16);
        assert!(reserved.iter().all(|l| l % LINE == CTRL_IN_LINE), "{reserved:?}");
        let colours: std::collections::BTreeSet<u64> = reserved.iter().map(|l| l % 1024).collect();
        assert_eq!(colours.len(), 3, "{colours:?}");
        let keys = 4000u64;
        for k in 0..keys {
            ok(sums.update(&mut s, hash_u64(k), &k, |old| old.unwrap_or(0) + k));
        }
        let grown = ctrl_locs(&s);
        assert!(grown.iter().all(|l| !reserved.contains(l)), "every bin grew: {grown:?}");
        assert!(grown.iter().all(|l| l % LINE == CTRL_IN_LINE), "{grown:?}");
        check_lookup_entries(&s);
        for k in 0..keys {
            assert_eq!(sums.get(&s, hash_u64(k), &k), Some(k), "key {k}");
        }
    }

    /// The maps of this process advised `MADV_HUGEPAGE`: their `VmFlags`
    /// in `/proc/self/smaps` say `hg` (whether or not huge pages are
    /// enabled).
    #[cfg(target_os = "linux")]
    fn huge_advised_maps() -> Vec<std::ops::Range<usize>> {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap_or_default();
        let (mut maps, mut range) = (Vec::new(), None);
        for line in smaps.lines() {
            if let Some(flags) = line.strip_prefix("VmFlags:") {
                if flags.split_whitespace().any(|f| f == "hg") {
                    maps.extend(range.take());
                }
                continue;
            }
            // A map's first line: `start-end perms offset ...`.
            let bounds = line.split_whitespace().next().and_then(|r| r.split_once('-'));
            if let Some((Ok(lo), Ok(hi))) =
                bounds.map(|(lo, hi)| (usize::from_str_radix(lo, 16), usize::from_str_radix(hi, 16)))
            {
                range = Some(lo..hi);
            }
        }
        maps
    }

    /// A reservation of megabytes in memory asks for huge pages for its
    /// parts; a small one, and one in a file, do not.
    #[cfg(target_os = "linux")]
    #[test]
    fn large_reservations_in_memory_ask_for_huge_pages() {
        let part_addrs = |s: &StateStore| -> Vec<usize> {
            let Some(d) = s.tables[0].dense.as_ref() else { panic!("not dense") };
            let locs = d.bins.iter().filter(|db| db.exists()).map(|db| db.first.loc);
            locs.filter_map(|loc| s.file.addr(loc)).map(|p| p as usize).collect()
        };
        let reserve = |backing: Backing, bins_log2: u8, keys: u64| {
            let dir = tmp();
            let cfg = StoreConfig::new(dir.path(), bins_log2).with_backing(backing);
            let mut s = ok(StateStore::create(cfg, BinRange::all(bins_log2)));
            let sums = ok(ValueState::<u64, u64>::register(&mut s, "sums"));
            ok(sums.reserve(&mut s, keys));
            let addrs = part_addrs(&s);
            assert_eq!(addrs.len(), 1 << bins_log2);
            let maps = huge_advised_maps();
            let advised = addrs.iter().filter(|&&a| maps.iter().any(|m| m.contains(&a))).count();
            (advised, addrs.len())
        };
        // 4 096 parts of 32 slots: over 4 MiB. All but those at the ends of
        // the span lie in 2 MiB ranges it covers whole.
        let (advised, parts) = reserve(Backing::Memory, 12, 100_000);
        assert!(advised * 2 > parts, "{advised} of {parts} parts in advised maps");
        // 16 such parts (16 KiB), and the same 4 MiB in a file: none.
        assert_eq!(reserve(Backing::Memory, 4, 16 * 24).0, 0);
        assert_eq!(reserve(Backing::File, 12, 100_000).0, 0);
    }

    /// A burst's new keys that go into their bins in place (one part with
    /// room) mark what they write dirty, so the next incremental checkpoint
    /// carries them: each slot's key and value, hash and control byte, on
    /// pages of their own in parts of 2048 slots, in an epoch that marks
    /// page by page.
    #[test]
    fn keys_inserted_in_place_mark_their_slots_dirty() {
        let dir = tmp();
        let mut s = ok(StateStore::create(StoreConfig::new(dir.path(), 2), BinRange::all(2)));
        let mut sums = ok(ValueState::<u64, u64>::register(&mut s, "sums"));
        ok(sums.reserve(&mut s, 4 * 1500));
        assert!(s.tables[0].dense.as_ref().is_some_and(|d| d.bins.iter().all(|db| db.slots_log2 == 11)));
        s.clear_dirty();
        s.marks.allowed = false;
        let keys: Vec<u64> = (0..400).collect();
        let hashes: Vec<u64> = keys.iter().map(|&k| hash_u64(k)).collect();
        ok(sums.update_burst(&mut s, &hashes, &keys, |i, old| old.unwrap_or(0) + i as u64, |_, _| {}));
        let Some(d) = s.tables[0].dense.as_ref() else { panic!("not dense") };
        // Still one part per bin: every key went in in place.
        assert!(d.bins.iter().all(|db| db.depth == 0 && db.slots_log2 == 11));
        for (&k, &h) in keys.iter().zip(&hashes) {
            assert_slot_dirty(&s, k, &format!("key {k}"));
            assert_eq!(sums.get(&s, h, &k), Some(k));
        }
    }

    /// Asserts that the pages of `u64` key `k`'s slot in table 0 of `s`
    /// (a store of 4 bins) are dirty: its control byte, key and value, and
    /// hash.
    fn assert_slot_dirty(s: &StateStore, k: u64, name: &str) {
        let Some(d) = s.tables[0].dense.as_ref() else { panic!("not dense") };
        let h = hash_u64(k);
        let bi = ok(s.bin_index(h));
        let Some((p, at)) = find(d, &s.file, bi, 2, h, &k.to_le_bytes()) else { panic!("{name} not found") };
        let (slots, stride, j) = (p.slots, d.stride(), at.slot);
        let page = |loc: u64| (loc >> super::super::file::PAGE_LOG2) as usize;
        for (what, loc) in [
            ("control byte", p.ctrl_loc + j as u64),
            ("key and value", p.ctrl_loc + (kv_off(slots) + j * stride) as u64),
            ("hash", p.ctrl_loc + (hash_off(slots, stride) + j * 8) as u64),
        ] {
            assert!(s.file.is_dirty(page(loc)), "{name}: the page of its {what} is not dirty");
        }
    }

    /// With every dense page marked at once (the default), a burst's runs
    /// insert new keys in place without marking their control bytes, keys
    /// and values again: those pages are among the marked. Their hashes
    /// are not, and the inserts mark them. Checked over bursts of
    /// new keys in a row (inserted by the runs) between more than
    /// `SETTLED_AFTER` keys found in a row (so runs switch back and forth),
    /// in parts large enough that their hashes lie on pages of their own,
    /// until bins grow.
    #[test]
    fn keys_inserted_in_place_under_whole_marks_leave_every_page_they_wrote_dirty() {
        let dir = tmp();
        let mut s = ok(StateStore::create(StoreConfig::new(dir.path(), 2), BinRange::all(2)));
        let mut sums = ok(ValueState::<u64, u64>::register(&mut s, "sums"));
        ok(sums.reserve(&mut s, 4 * 1500));
        let mut want = std::collections::HashMap::new();
        for round in 0..6u64 {
            s.clear_dirty();
            s.marks.allowed = true;
            // Blocks of 50 new keys, each after 40 keys already there.
            let new = round * 1200..(round + 1) * 1200;
            let mut keys = Vec::new();
            for k in new.clone().step_by(50) {
                keys.extend((0..40).map(|x| (k * 7 + x) % k.max(1)));
                keys.extend(k..k + 50);
            }
            let hashes: Vec<u64> = keys.iter().map(|&k| hash_u64(k)).collect();
            ok(sums.update_burst(&mut s, &hashes, &keys, |_, old| old.unwrap_or(0) + 1, |_, _| {}));
            for &k in &keys {
                *want.entry(k).or_insert(0u64) += 1;
            }
            assert!(s.marks.marked == s.file.dirty_epoch(), "round {round}: the epoch was marked whole");
            for k in new {
                assert_slot_dirty(&s, k, &format!("round {round}, key {k}"));
            }
        }
        for (&k, &n) in &want {
            assert_eq!(sums.get(&s, hash_u64(k), &k), Some(n), "key {k}");
        }
        assert_eq!(sums.len(&s), want.len());
        // Bins grew past their reservation on the way.
        assert!(s.tables[0]
            .dense
            .as_ref()
            .is_some_and(|d| d.bins.iter().any(|db| db.slots_log2 > 11 || db.depth > 0)));
    }

    /// Marking every dense page at once covers the parts' control bytes
    /// as well as their keys and values (the inserts of a run under whole
    /// marks mark only their hashes), here in parts whose control bytes
    /// take pages of their own.
    #[test]
    fn whole_marks_cover_the_control_bytes() {
        let dir = tmp();
        let config = StoreConfig::new(dir.path(), 2).with_segment_bytes(1 << 20);
        let mut s = ok(StateStore::create(config, BinRange::all(2)));
        let sums = ok(ValueState::<u64, u64>::register(&mut s, "sums"));
        ok(sums.reserve(&mut s, 4 * 8000));
        s.clear_dirty();
        s.marks.allowed = true;
        assert!(s.dense_all_marked());
        let Some(d) = s.tables[0].dense.as_ref() else { panic!("not dense") };
        let page = |loc: u64| (loc >> super::super::file::PAGE_LOG2) as usize;
        assert!(d.bins.iter().all(|db| db.slots() + GROUP > 2 * super::super::file::PAGE_BYTES));
        for db in &d.bins {
            for p in db.parts() {
                let cl = ctrl_loc(p.loc);
                for loc in [cl, cl + (db.slots() + GROUP) as u64 - 1] {
                    assert!(s.file.is_dirty(page(loc)), "the page of control bytes at {loc} is not dirty");
                }
            }
        }
    }

    /// A reservation's parts may reuse space that held other records:
    /// they start empty all the same (every byte of a part is written), and
    /// take keys as any part does.
    #[test]
    fn reserved_parts_in_reused_space_start_empty() {
        let dir = tmp();
        let mut s = ok(StateStore::create(StoreConfig::new(dir.path(), 2), BinRange::all(2)));
        // Records of 0xff bytes in every bin, then none: compaction gives
        // their segments back to the file.
        let junk = ok(s.table("junk"));
        let keys: Vec<u64> = (0..4000).collect();
        for &k in &keys {
            ok(s.put(junk, hash_u64(k), &k.to_le_bytes(), &[0xff; 40]));
        }
        let written: Vec<(u64, u64)> =
            s.heaps.iter().flat_map(|h| h.segs.iter().map(|g| (g.loc, g.loc + (1 << g.log2)))).collect();
        for &k in &keys {
            assert!(s.remove(junk, hash_u64(k), &k.to_le_bytes()));
        }
        for bi in 0..4 {
            ok(s.compact(bi));
        }
        let mut sums = ok(ValueState::<u64, u64>::register(&mut s, "sums"));
        ok(sums.reserve(&mut s, 4 * 1500));
        let Some(d) = s.tables[sums.table().index()].dense.as_ref() else { panic!("not dense") };
        let reused =
            d.bins.iter().filter(|db| written.iter().any(|&(a, b)| (a..b).contains(&db.first.loc))).count();
        assert!(reused > 0, "no reserved part reused the junk's space");
        assert!(d.bins.iter().all(|db| db.exists() && db.len() == 0));
        assert_eq!(sums.len(&s), 0);
        let mut n = 0;
        sums.for_each(&s, |_, _, _| n += 1);
        assert_eq!(n, 0, "a reserved part held entries");
        let hashes: Vec<u64> = keys.iter().map(|&k| hash_u64(k)).collect();
        ok(sums.update_burst(&mut s, &hashes, &keys, |i, old| old.unwrap_or(0) + i as u64, |_, _| {}));
        for (&k, &h) in keys.iter().zip(&hashes) {
            assert_eq!(sums.get(&s, h, &k), Some(k), "key {k}");
        }
        assert_eq!(sums.len(&s), keys.len());
    }

    /// A reservation that runs out of space fails with the error, leaves
    /// every bin without a table as it was (the space it took is dead
    /// padding, counted as garbage), and the store goes on: its keys go in
    /// as they would have without the reservation.
    #[test]
    fn a_reservation_out_of_space_leaves_the_bins_as_they_were() {
        let dir = tmp();
        let mut s = ok(StateStore::create(StoreConfig::new(dir.path(), 4), BinRange::all(4)));
        let mut sums = ok(ValueState::<u64, u64>::register(&mut s, "sums"));
        // 16 bins of 2048-slot parts (about 48 KiB each, one 64 KiB
        // segment): room for 10 of them.
        s.file.segments_max_for_tests = Some(10);
        let r = sums.reserve(&mut s, 16 * 1500);
        assert!(matches!(r, Err(StateError::StoreFull { .. })), "{r:?}");
        let Some(d) = s.tables[sums.table().index()].dense.as_ref() else { panic!("not dense") };
        assert!(d.bins.iter().all(|db| !db.exists()));
        check_lookup_entries(&s);
        for h in &s.heaps {
            assert_eq!(h.dead, h.used, "space taken by the failed reservation is not all garbage");
        }
        s.file.segments_max_for_tests = None;
        let keys: Vec<u64> = (0..3000).collect();
        let hashes: Vec<u64> = keys.iter().map(|&k| hash_u64(k)).collect();
        ok(sums.update_burst(&mut s, &hashes, &keys, |_, old| old.unwrap_or(0) + 1, |_, _| {}));
        for (&k, &h) in keys.iter().zip(&hashes) {
            assert_eq!(sums.get(&s, h, &k), Some(1), "key {k}");
        }
    }

    /// The bytes of part 0 of bin 0 of table 0 (record header included).
    fn part_record(s: &StateStore) -> (Vec<u8>, Header, u64) {
        let d = s.tables[0].dense.as_ref().map(|d| d.bins[0].first.loc);
        let loc = d.unwrap_or(NONE);
        let h = Header::read(s.file.bytes(loc, HEADER));
        (s.file.bytes(loc, h.record_bytes()).to_vec(), h, loc)
    }

    #[test]
    fn a_restored_part_is_checked_slot_by_slot() {
        let dir = tmp();
        let mut s = ok(StateStore::create(StoreConfig::new(dir.path(), 0), BinRange::all(0)));
        let mut sums = ok(ValueState::<u64, u64>::register(&mut s, "sums"));
        for k in 0..5u64 {
            ok(sums.update(&mut s, hash_u64(k), &k, |_| k));
        }
        let (r, h, loc) = part_record(&s);
        let info = check_part(&r, &h, loc, 0, 0).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((info.len, info.key_len, info.val_len, info.slots_log2), (5, 8, 8, SLOTS_LOG2_MIN));
        let ctrl = HEADER + PART_HEAD;
        let slots = 1usize << SLOTS_LOG2_MIN;
        let full = (0..slots).find(|&j| r[ctrl + j] != 0).unwrap_or(0);
        let empty = (0..slots).find(|&j| r[ctrl + j] == 0).unwrap_or(0);
        let damaged = |f: &dyn Fn(&mut Vec<u8>)| {
            let mut b = r.clone();
            f(&mut b);
            check_part(&b, &h, loc, 0, 0).err()
        };
        // A tag that does not match the slot's hash.
        let e = damaged(&|b| b[ctrl + full] ^= 0x01);
        assert!(e.as_deref().is_some_and(|e| e.contains("tag") || e.contains("mirror")), "{e:?}");
        // A mirror byte that differs.
        assert!(damaged(&|b| b[ctrl + slots] ^= 0x40).is_some_and(|e| e.contains("mirror")));
        // Too many keys for the part, and a size that does not fit.
        assert!(damaged(&|b| b[HEADER + 5] = 2).is_some());
        assert!(damaged(&|b| b[HEADER + 4] = 40).is_some());
        // An occupied byte where a slot was empty (its hash is zeros, whose
        // tag is 0x80).
        let e = damaged(&|b| {
            b[ctrl + empty] = 0x81;
            if empty < GROUP {
                b[ctrl + slots + empty] = 0x81;
            }
        });
        assert!(e.is_some_and(|e| e.contains("tag")), "a slot whose tag is not its hash's is refused");
    }

    #[test]
    fn a_record_table_merges_into_a_dense_one_and_back() {
        let sig =
            TypeSig { id: std::any::TypeId::of::<ValueState<u64, u64>>(), name: "ValueState<u64, u64>" };
        let (da, db) = (tmp(), tmp());
        let mut a = ok(StateStore::create(StoreConfig::new(da.path(), 2), BinRange::new(0, 2)));
        let mut b = ok(StateStore::create(StoreConfig::new(db.path(), 2), BinRange::new(2, 4)));
        let ta = ok(a.typed_table("sums", sig, Some((8, 8))));
        // A record table of the same handle type (as a restore of an
        // older checkpoint gives).
        let tb = ok(b.typed_table("sums", sig, None));
        let mut want = Vec::new();
        for k in 0..400u64 {
            let h = hash_u64(k);
            let (s, t) = if crate::bin_of(h, 2) < 2 { (&mut a, ta) } else { (&mut b, tb) };
            ok(s.put_impl(t, h, &k.to_le_bytes(), &(k * 3).to_le_bytes()));
            want.push((h, k.to_le_bytes().to_vec(), (k * 3).to_le_bytes().to_vec()));
        }
        want.sort();
        let dump = |s: &StateStore, t: TableId| {
            let mut v = Vec::new();
            s.for_each(t, |h, k, val| v.push((h, k.to_vec(), val.to_vec())));
            v.sort();
            v
        };
        ok(a.merge(b));
        assert!(a.tables[0].dense.is_some());
        assert_eq!(dump(&a, ta), want);
        // And a dense table into a record one.
        let dc = tmp();
        let mut c = ok(StateStore::create(StoreConfig::new(dc.path(), 2), BinRange::new(0, 2)));
        let tc = ok(c.typed_table("sums", sig, None));
        let moved = ok(a.split_off(BinRange::new(2, 4)));
        ok(c.merge(moved));
        assert!(c.tables[0].dense.is_none());
        let mut rest = dump(&c, tc);
        rest.extend(dump(&a, ta));
        rest.sort();
        assert_eq!(rest, want);
    }

    /// The bytes of `m`, lowest first.
    fn all(mut m: Matches) -> Vec<usize> {
        let mut v = Vec::new();
        while !m.none() {
            v.push(m.lowest());
            m = m.rest();
        }
        v
    }

    #[test]
    fn tag_and_empty_matching_are_exact_where_it_matters() {
        // Control bytes: empty, tag 0x85, tag 0x84 (differs in the lowest
        // bit), empty, tag 0x85, ...
        let bytes = [0x00u8, 0x85, 0x84, 0x00, 0x85, 0xff, 0x80, 0x00];
        let g = Group::at(&bytes, 0);
        let hits = all(g.match_tag(0x85));
        // Every true match is found; no empty byte is a candidate.
        assert!(hits.contains(&1) && hits.contains(&4), "{hits:?}");
        assert!(!hits.contains(&0) && !hits.contains(&3) && !hits.contains(&7), "{hits:?}");
        assert_eq!(all(g.match_empty()), vec![0, 3, 7]);
        // A full group has no empty byte; a tag found nowhere, no match.
        let full = [0x81u8; GROUP];
        assert!(Group::at(&full, 0).match_empty().none());
        assert!(Group::at(&full, 0).match_tag(0x82).none());
        assert_eq!(all(Group::at(&full, 0).match_tag(0x81)), (0..GROUP).collect::<Vec<_>>());
    }

    #[test]
    fn first_empty_wraps_through_the_mirror() {
        // 8 slots: all full but slot 2; the mirror repeats the first 8.
        let mut ctrl = [0x81u8; 16];
        ctrl[2] = 0;
        ctrl[10] = 0;
        // Home 6: slots 6, 7, then 0, 1 are full, 2 is empty.
        assert_eq!(first_empty(&ctrl, 6, 8), 2);
        assert_eq!(first_empty(&ctrl, 2, 8), 2);
    }
}
