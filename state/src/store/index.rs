//! The per-bin, per-table index: an open-addressing hash table of
//! `(hash, location)` slots with linear probing and backward-shift deletion
//! (no tombstones).
//!
//! The index lives on the heap, not in the segments: it is derived data,
//! rebuilt from the records (which carry their hash) when a bin is restored or
//! moved, and it is what keeps a lookup to one or two cache lines. It grows by
//! doubling, one bin at a time, so growth never pauses the whole store.
//!
//! Slots are probed from `hash & mask` (the low bits; the bin is the top
//! bits, so the two are independent). Every slot of a given hash lies in the
//! run of occupied slots that starts at its home slot, which is what
//! [`BinIndex::for_each_in_run`] relies on.

/// A slot: the full hash of the key and the location of its record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Slot {
    pub(crate) hash: u64,
    pub(crate) loc: u64,
}

/// `loc` of an empty slot.
pub(crate) const EMPTY: u64 = u64::MAX;
const EMPTY_SLOT: Slot = Slot { hash: 0, loc: EMPTY };
/// Slots of a bin's first index.
const SLOTS_INITIAL: usize = 8;

/// The index of one table in one bin.
#[derive(Default)]
pub(crate) struct BinIndex {
    slots: Vec<Slot>,
    len: usize,
}

impl BinIndex {
    /// Number of keys.
    #[inline]
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The slots (empty ones have `loc == EMPTY`).
    #[inline]
    pub(crate) fn slots(&self) -> &[Slot] {
        &self.slots
    }

    /// The position of the slot whose hash is `hash` and for whose location
    /// `is_key` returns true.
    #[inline(always)]
    pub(crate) fn find(&self, hash: u64, mut is_key: impl FnMut(u64) -> bool) -> Option<usize> {
        let n = self.slots.len();
        if n == 0 {
            return None;
        }
        let mask = n - 1;
        let mut i = hash as usize & mask;
        loop {
            let s = self.slots[i];
            if s.loc == EMPTY {
                return None;
            }
            if s.hash == hash && is_key(s.loc) {
                return Some(i);
            }
            i = (i + 1) & mask;
        }
    }

    /// Calls `f` with the position and slot of every slot whose hash is
    /// `hash`.
    pub(crate) fn for_each_in_run(&self, hash: u64, mut f: impl FnMut(usize, Slot)) {
        let n = self.slots.len();
        if n == 0 {
            return;
        }
        let mask = n - 1;
        let mut i = hash as usize & mask;
        loop {
            let s = self.slots[i];
            if s.loc == EMPTY {
                return;
            }
            if s.hash == hash {
                f(i, s);
            }
            i = (i + 1) & mask;
        }
    }

    /// The position of the first slot at or after `hash`'s home slot (in
    /// probe order) that is empty or has hash `hash`, counting from `from`
    /// (a position in the run). Used to walk a run while removing from it.
    pub(crate) fn next_in_run(&self, hash: u64, from: usize) -> Option<usize> {
        let n = self.slots.len();
        if n == 0 {
            return None;
        }
        let mask = n - 1;
        let mut i = from & mask;
        loop {
            let s = self.slots[i];
            if s.loc == EMPTY {
                return None;
            }
            if s.hash == hash {
                return Some(i);
            }
            i = (i + 1) & mask;
        }
    }

    /// Home slot of `hash`.
    #[inline]
    pub(crate) fn home(&self, hash: u64) -> usize {
        hash as usize & self.slots.len().wrapping_sub(1)
    }

    /// The slot at `i`.
    #[inline(always)]
    pub(crate) fn slot(&self, i: usize) -> Slot {
        self.slots[i]
    }

    /// Sets the location of the slot at `i`.
    #[inline(always)]
    pub(crate) fn set_loc(&mut self, i: usize, loc: u64) {
        debug_assert!(self.slots[i].loc != EMPTY && loc != EMPTY);
        self.slots[i].loc = loc;
    }

    /// Inserts a key known to be absent; returns its position.
    pub(crate) fn insert_new(&mut self, hash: u64, loc: u64) -> usize {
        debug_assert!(loc != EMPTY);
        // Grow at a load factor of 3/4.
        if (self.len + 1) * 4 > self.slots.len() * 3 {
            self.grow();
        }
        self.len += 1;
        self.place(Slot { hash, loc })
    }

    fn place(&mut self, slot: Slot) -> usize {
        let mask = self.slots.len() - 1;
        let mut i = slot.hash as usize & mask;
        while self.slots[i].loc != EMPTY {
            i = (i + 1) & mask;
        }
        self.slots[i] = slot;
        i
    }

    fn grow(&mut self) {
        let n = (self.slots.len() * 2).max(SLOTS_INITIAL);
        let old = std::mem::replace(&mut self.slots, vec![EMPTY_SLOT; n]);
        for s in old {
            if s.loc != EMPTY {
                self.place(s);
            }
        }
    }

    /// Removes the slot at `i`, shifting later slots of its run back so that
    /// no probe sequence is broken.
    pub(crate) fn remove_at(&mut self, mut i: usize) {
        debug_assert!(self.slots[i].loc != EMPTY);
        let mask = self.slots.len() - 1;
        self.len -= 1;
        let mut j = i;
        loop {
            j = (j + 1) & mask;
            let s = self.slots[j];
            if s.loc == EMPTY {
                break;
            }
            let home = s.hash as usize & mask;
            // `s` may move to the hole at `i` if its home is not in the
            // cyclic range `(i, j]`.
            let stays = if i <= j { i < home && home <= j } else { i < home || home <= j };
            if !stays {
                self.slots[i] = s;
                i = j;
            }
        }
        self.slots[i] = EMPTY_SLOT;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_find_remove_with_collisions() {
        let mut ix = BinIndex::default();
        // Many equal low bits: long runs, wrapping around the end.
        let hashes: Vec<u64> = (0..50u64).map(|k| (k % 5) | (k << 40) | 7).collect();
        for (n, &h) in hashes.iter().enumerate() {
            ix.insert_new(h, n as u64);
        }
        for (n, &h) in hashes.iter().enumerate() {
            assert!(ix.find(h, |l| l == n as u64).is_some());
        }
        for (n, &h) in hashes.iter().enumerate().step_by(3) {
            let i = ix.find(h, |l| l == n as u64).unwrap_or(usize::MAX);
            ix.remove_at(i);
        }
        for (n, &h) in hashes.iter().enumerate() {
            assert_eq!(ix.find(h, |l| l == n as u64).is_some(), n % 3 != 0, "{n}");
        }
        assert_eq!(ix.len(), 50 - 17);
    }
}
