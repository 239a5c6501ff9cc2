//! Where a dense part goes in its bin's segments: space taken with its
//! control bytes at [`CTRL_IN_LINE`] of a cache line and, in a fresh
//! segment, in one of a few lines (its colour); the padding before it;
//! an empty part written there; and a part copied or pointed elsewhere.

use super::layout::payload_bytes;
use super::PART_HEAD;
use crate::error::StateError;
use crate::store::record::{Header, HEADER, KIND_DENSE};
use crate::store::{SegmentFile, StateStore};

impl StateStore {
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

    /// Gives up the `size` bytes at `loc`, just allocated in bin `bi` and
    /// not written: they become a dead padding record, garbage to compact.
    pub(super) fn abandon(&mut self, bi: usize, loc: u64, size: usize) {
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
    pub(super) fn alloc_part(
        &mut self,
        bi: usize,
        part: usize,
        size: usize,
    ) -> Result<(u64, u64), StateError> {
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
    pub(super) fn pad_part(&mut self, bi: usize, at: u64, loc: u64) {
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
    pub(super) fn bin_hash(&self, bi: usize) -> u64 {
        let bins_log2 = self.config.bins_log2;
        if bins_log2 == 0 {
            0
        } else {
            u64::from(self.bins.start + bi as u32) << (64 - u32::from(bins_log2))
        }
    }
}

/// Bytes of a cache line.
pub(super) const LINE: u64 = 64;

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
pub(super) const CTRL_IN_LINE: u64 = 8;

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

/// What a new dense part's head says.
#[derive(Clone, Copy)]
pub(super) struct PartShape {
    pub(super) ti: usize,
    pub(super) bin_hash: u64,
    pub(super) key_len: usize,
    pub(super) val_len: usize,
    pub(super) depth: u8,
    pub(super) slots_log2: u8,
}

/// Writes an empty part, number `part`, of `shape` at `loc`: its record
/// header and head, every slot empty (all of it zeroed, so no earlier
/// bytes of reused space stay in it). Returns its body, from the control
/// bytes on, marked dirty.
pub(super) fn init_part(file: &mut SegmentFile, loc: u64, shape: PartShape, part: u32) -> &mut [u8] {
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
