//! Dense parts read back from a checkpoint or another store: checking
//! each part slot by slot and a bin's parts together, and installing
//! them in a table.

use super::layout::{part_entries, payload_bytes, DenseBin, DensePart};
use super::{
    load_max, tag_of, DEPTH_MAX, GROUP, PART_BITS_FLOOR, PART_HEAD, SLOTS_LOG2_MAX, SLOTS_LOG2_MIN, SLOT_MAX,
};
use crate::keyspace::Bin;
use crate::store::record::{u32_at, Header, HEADER};
use crate::store::StateStore;

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
}
