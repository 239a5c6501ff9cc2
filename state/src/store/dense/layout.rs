//! The layout of a dense table: its bins ([`DenseBin`]) and their parts
//! ([`DensePart`]), the one-word lookup entry of each bin ([`Hot`]) that
//! the table ([`DenseTable`]) keeps in step with them, where a part's
//! control bytes, slots and hashes lie, and reading a part's entries.

use super::{GROUP, PART_HEAD, SLOTS_LOG2_MAX};
use crate::keyspace::BinRange;
use crate::store::record::HEADER;
use crate::store::{SegmentFile, StateStore};

/// Payload bytes of a part of `2^slots_log2` slots of `stride` key and
/// value bytes each.
#[inline(always)]
pub(crate) fn payload_bytes(slots_log2: u8, stride: usize) -> usize {
    PART_HEAD + payload_bytes_from_ctrl(1 << slots_log2, stride)
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
    pub(super) first: DensePart,
    /// Parts `1 .. 2^depth`.
    pub(super) rest: Vec<DensePart>,
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
    pub(super) fn part_no(&self, hash: u64, bins_log2: u8) -> usize {
        if self.depth == 0 {
            0
        } else {
            ((hash << bins_log2) >> (64 - u32::from(self.depth))) as usize
        }
    }

    #[inline(always)]
    pub(super) fn part(&self, p: usize) -> &DensePart {
        if p == 0 {
            &self.first
        } else {
            &self.rest[p - 1]
        }
    }

    #[inline(always)]
    pub(super) fn part_mut(&mut self, p: usize) -> &mut DensePart {
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
    pub(super) fn ctrl_loc(&self) -> u64 {
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
pub(super) struct Hot(pub(super) u64);

/// The [`Hot`] entry of a bin whose lookup reads its [`DenseBin`].
pub(super) const HOT_DEEP: u64 = 1;

/// Low bits of a [`Hot`] entry that hold a part's slot mask.
const HOT_MASK_BITS: u32 = SLOTS_LOG2_MAX as u32;

impl Hot {
    /// Whether this is a bin of one part, whose control bytes' address
    /// this entry holds.
    #[inline(always)]
    pub(super) fn one_part(self) -> bool {
        self.0 >> HOT_MASK_BITS != 0
    }

    /// Where the control bytes of a bin of one part are mapped.
    #[inline(always)]
    pub(super) fn ctrl(self) -> *const u8 {
        std::ptr::with_exposed_provenance::<u8>((self.0 >> HOT_MASK_BITS) as usize)
    }

    /// The slots of a bin of one part, less one.
    #[inline(always)]
    pub(super) fn mask(self) -> usize {
        (self.0 & ((1 << HOT_MASK_BITS) - 1)) as usize
    }

    /// The slots of a bin of one part.
    #[inline(always)]
    pub(super) fn slots(self) -> usize {
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
    pub(super) first: usize,
    /// What a lookup needs of each bin of the key space (see [`Hot`]), by
    /// the bin's number, so that a burst's lookahead reaches it from a
    /// hash in one shift, with no subtraction or bounds test: `2^bins_log2`
    /// entries, 0 (no table) for every bin not owned.
    pub(super) hot: Vec<Hot>,
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
    pub(super) unsafe fn hot_of(&self, bin: usize) -> Hot {
        debug_assert!(bin < self.hot.len());
        // SAFETY: the caller's.
        unsafe { *self.hot.get_unchecked(bin) }
    }

    /// The lookup entry of owned bin `bi`; `None` if not owned.
    #[inline(always)]
    pub(super) fn hot_owned(&self, bi: usize) -> Option<Hot> {
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

/// Offsets, from a part's control bytes, of its slots' keys and hashes.
#[inline(always)]
pub(super) fn kv_off(slots: usize) -> usize {
    slots + GROUP
}

#[inline(always)]
pub(super) fn hash_off(slots: usize, stride: usize) -> usize {
    slots + GROUP + slots * stride
}

/// Bytes of a part from its control bytes on (`slots` slots of `stride`).
#[inline(always)]
pub(super) fn payload_bytes_from_ctrl(slots: usize, stride: usize) -> usize {
    hash_off(slots, stride) + slots * 8
}

/// Location of a part's control bytes.
#[inline(always)]
pub(super) fn ctrl_loc(part_loc: u64) -> u64 {
    part_loc + (HEADER + PART_HEAD) as u64
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

impl StateStore {
    /// The dense bin `bi` of table `ti` (which must be dense).
    pub(super) fn dense_bin(&self, ti: usize, bi: usize) -> &DenseBin {
        match &self.tables[ti].dense {
            Some(d) => &d.bins[bi],
            None => unreachable!("dense_bin of a record table"),
        }
    }
}
