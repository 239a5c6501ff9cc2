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
//!
//! # Files
//!
//! - `dense.rs` (this file): the constants of the format, a part's load
//!   limit and a hash's control tag.
//! - `dense/layout.rs`: a table's bins and parts ([`DenseTable`],
//!   [`DenseBin`], [`DensePart`]), their one-word lookup entries, where a
//!   part's fields lie, and reading a part's entries.
//! - `dense/group.rs`: [`Group`], control bytes compared at once (SSE2 or
//!   SWAR).
//! - `dense/probe.rs`: lookups: a key's part and slot, and their prefetch.
//! - `dense/slots.rs`: single-key writes (insert, remove, retain) and the
//!   slot writes they share with bursts.
//! - `dense/burst.rs`: burst updates, with their lookahead and in-place
//!   inserts.
//! - `dense/marks.rs`: how burst updates mark pages dirty ([`WholeMarks`]).
//! - `dense/growth.rs`: growing a bin, and reserving room up front.
//! - `dense/placement.rs`: where a new part goes in its bin's segments
//!   (cache-line offset and colour), writing an empty part, moving a part.
//! - `dense/check.rs`: checking parts read back from a checkpoint or
//!   another store, and installing them.
//!
//! The store's methods on dense tables are in an `impl StateStore` block
//! in the file of their concern (every file but `group.rs` and
//! `probe.rs`, whose lookups are free functions); the record-table side of
//! the store calls them.

mod burst;
mod check;
mod group;
mod growth;
mod layout;
mod marks;
mod placement;
mod probe;
mod slots;
#[cfg(test)]
mod tests;

pub(crate) use check::{check_part, check_parts, PartInfo};
pub(crate) use layout::{run_of, DenseTable, Entry};
pub(crate) use marks::WholeMarks;
pub(crate) use probe::{find, find_slot, find_value, prefetch, probe, value_ptr};

// Items of the store that the files below name as `super::…`.
use super::keys::key_diff;
use super::record::{self, write_pad};
use super::{file, Table, SEG_MIN_BYTES};

#[cfg(doc)]
use {
    crate::store::StateStore,
    group::Group,
    layout::{DenseBin, DensePart},
};

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
