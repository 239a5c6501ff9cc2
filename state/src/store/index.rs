//! The per-bin, per-table index: an open-addressing hash table of 8-byte
//! slots with linear probing and backward-shift deletion (no tombstones).
//!
//! The index is derived data, not in the segments: it is rebuilt from the
//! records (which carry their hash) when a bin is restored or moved, and it is
//! what keeps a lookup to one or two cache lines. It grows by doubling, one
//! bin at a time, so growth never pauses the whole store.
//!
//! # Slots
//!
//! A slot is one `u64`: the record's location in the top [`LOC_BITS`] bits
//! and the low [`TAG_BITS`] bits of the key's hash (the *tag*) in the rest.
//! Slots are probed from `hash & mask` (the low bits; the bin is the top
//! bits, so the two are independent), so for an index of up to
//! `2^TAG_BITS` slots the tag gives a slot's home without reading its record;
//! larger indexes read the record's hash (`hash_at`). A lookup compares the
//! tag before touching a record, so a probe past a foreign slot almost never
//! costs a cache miss; the record's full hash and key decide. Every slot of a
//! given hash lies in the run of occupied slots that starts at its home slot,
//! which is what [`BinIndex::for_each_in_run`] relies on.
//!
//! # Arena
//!
//! The slots of every bin and table of a store live in one [`SlotArena`]: an
//! anonymous memory map (transparent huge pages requested once it is large)
//! cut into power-of-two blocks of at least one cache line. The map reserves
//! 4 GiB of address space (not memory) so that the arena grows in place; a
//! bin's index grows by taking a block twice as large and rehashing only that
//! bin, its old block going to a free list for other bins. A [`BinIndex`] is
//! an offset, a mask and a count; a bin's first block is a shared, always
//! empty sentinel, so a lookup in an empty bin needs no special case. Keeping
//! all slots together keeps the pages (TLB entries) a random lookup touches
//! few, where one heap allocation per bin spread them over the heap.

use memmap2::{Advice, MmapMut, MmapOptions};

/// Bits of a slot holding the low bits of the key's hash.
pub(crate) const TAG_BITS: u32 = 20;
const TAG_MASK: u64 = (1 << TAG_BITS) - 1;
/// Bits of a slot holding the record's location.
pub(crate) const LOC_BITS: u32 = 64 - TAG_BITS;
/// Locations must be below this (the segment file is at most 16 TiB).
pub(crate) const LOC_LIMIT: u64 = (1 << LOC_BITS) - 1;
/// An empty slot (its location would be `LOC_LIMIT`, which is never used).
pub(crate) const EMPTY: u64 = u64::MAX;

/// Slots of the smallest block (one 64-byte cache line).
const BLOCK_MIN_LOG2: u32 = 3;
/// The sentinel block: always empty, shared by every empty bin.
const SENTINEL_MASK: usize = (1 << BLOCK_MIN_LOG2) - 1;
/// Arena bytes from which huge pages are requested.
const HUGE_FROM: usize = 2 << 20;
/// Alignment of a large arena's slots (a huge page).
const HUGE_ALIGN: usize = 2 << 20;
/// Slots of a new arena.
const ARENA_INITIAL: usize = 1 << 10;
/// Slots of address space an arena reserves up front (4 GiB, committed only
/// where touched, and not counted against swap), so that it grows to that
/// size without moving; past it, growing copies the slots to a larger map.
const ARENA_RESERVE: usize = (4 << 30) / 8;

/// The location in slot `s`.
#[inline(always)]
pub(crate) fn slot_loc(s: u64) -> u64 {
    s >> TAG_BITS
}

#[inline(always)]
fn make_slot(hash: u64, loc: u64) -> u64 {
    debug_assert!(loc < LOC_LIMIT);
    (loc << TAG_BITS) | (hash & TAG_MASK)
}

/// Whether slot `s` may belong to `hash` (its tag matches).
#[inline(always)]
pub(crate) fn tag_matches(s: u64, hash: u64) -> bool {
    (s ^ hash) & TAG_MASK == 0
}

/// The slots of all indexes of a store.
pub(crate) struct SlotArena {
    /// The backing map.
    map: MmapMut,
    /// First slot: inside `map`, 8-byte aligned (2 MiB aligned when large),
    /// `skip` bytes from the map's start.
    base: *mut u64,
    skip: usize,
    /// Slots in use by the arena (blocks lie below it).
    cap: usize,
    /// Slots the map has room for from `base` (at least `cap`).
    room: usize,
    /// Slots handed out (blocks are taken from the bottom up).
    top: usize,
    /// Freed blocks, by log2 of their slots.
    free: Vec<Vec<usize>>,
}

// SAFETY: `base` points into `map`, which this struct owns and which is only
// reached through it; moving the arena to another thread moves that exclusive
// ownership with it (the struct is not `Sync`).
unsafe impl Send for SlotArena {}

impl SlotArena {
    /// A new arena holding only the sentinel block.
    pub(crate) fn new() -> std::io::Result<Self> {
        // Reserve address space to grow in place; if the system refuses (a
        // small address space, strict overcommit), grow by copying.
        let mut a = match Self::map(ARENA_RESERVE, true) {
            Ok(a) => a,
            Err(_) => Self::map(ARENA_INITIAL, false)?,
        };
        a.cap = ARENA_INITIAL;
        let s = a.alloc(BLOCK_MIN_LOG2)?;
        debug_assert_eq!(s, 0);
        Ok(a)
    }

    /// A new arena without reserved room: it grows by copying.
    #[cfg(test)]
    pub(crate) fn unreserved() -> std::io::Result<Self> {
        let mut a = Self::map(ARENA_INITIAL, false)?;
        let s = a.alloc(BLOCK_MIN_LOG2)?;
        debug_assert_eq!(s, 0);
        Ok(a)
    }

    /// An empty arena with room for `room` slots (all of them in use unless
    /// the caller lowers `cap`), 2 MiB aligned when `room` is large.
    fn map(room: usize, reserve: bool) -> std::io::Result<Self> {
        let bytes = room * 8;
        let slack = if bytes >= HUGE_FROM { HUGE_ALIGN } else { 0 };
        let mut opts = MmapOptions::new();
        opts.len(bytes + slack);
        if reserve {
            opts.no_reserve_swap();
        }
        let mut map = opts.map_anon()?;
        let p = map.as_mut_ptr();
        let skip = if slack > 0 { p.align_offset(HUGE_ALIGN) } else { 0 };
        // SAFETY: `skip < slack` (or 0), so `p + skip .. p + skip + bytes` lies
        // inside the map; the map is page-aligned, so the result is 8-byte
        // aligned.
        let base = unsafe { p.add(skip) }.cast::<u64>();
        Ok(Self { map, base, skip, cap: room, room, top: 0, free: Vec::new() })
    }

    /// Asks for huge pages for the slots in use once they are many (only a
    /// hint: without huge pages the arena works the same).
    fn advise_huge(&mut self) {
        let bytes = self.cap * 8;
        if bytes >= HUGE_FROM {
            #[cfg(target_os = "linux")]
            let _ = self.map.advise_range(Advice::HugePage, self.skip, bytes);
        }
    }

    /// All slots of the arena.
    #[inline(always)]
    fn all(&self) -> &[u64] {
        // SAFETY: `base .. base + cap` lies in `map` (see `map`), which lives
        // as long as `self`; it is 8-byte aligned, and every bit pattern is a
        // valid `u64` (fresh anonymous memory is zero). Writes need `&mut self`.
        unsafe { std::slice::from_raw_parts(self.base, self.cap) }
    }

    #[inline(always)]
    fn all_mut(&mut self) -> &mut [u64] {
        // SAFETY: as in `all`; `&mut self` makes this the only access.
        unsafe { std::slice::from_raw_parts_mut(self.base, self.cap) }
    }

    /// The block of `mask + 1` slots at `off`.
    #[inline(always)]
    fn block(&self, off: usize, mask: usize) -> &[u64] {
        &self.all()[off..=off + mask]
    }

    #[inline(always)]
    fn block_mut(&mut self, off: usize, mask: usize) -> &mut [u64] {
        &mut self.all_mut()[off..=off + mask]
    }

    /// A block of `2^log2` empty slots; returns its offset.
    fn alloc(&mut self, log2: u32) -> std::io::Result<usize> {
        let n = 1usize << log2;
        let off = match self.free.get_mut(log2 as usize).and_then(Vec::pop) {
            Some(off) => off,
            None => {
                if self.top + n > self.cap {
                    self.grow(self.top + n)?;
                }
                self.top += n;
                self.top - n
            }
        };
        self.all_mut()[off..off + n].fill(EMPTY);
        Ok(off)
    }

    /// Makes room for at least `need` slots (doubling) within the reserved
    /// room, without moving the map; false if the room is too small.
    fn grow_in_place(&mut self, need: usize) -> bool {
        let cap = need.max(self.cap * 2).next_power_of_two();
        if cap > self.room {
            return false;
        }
        self.cap = cap;
        self.advise_huge();
        true
    }

    /// The offset of a block of `2^log2` slots whose contents are left as
    /// they are, taken without moving the map (from a free list or the
    /// reserved room); `None` if that is not possible. It creates no slice
    /// of the slots, so it may run while other threads fill blocks taken
    /// before (see [`SharedArena`]).
    fn take_in_place(&mut self, log2: u32) -> Option<usize> {
        let n = 1usize << log2;
        if let Some(off) = self.free.get_mut(log2 as usize).and_then(Vec::pop) {
            return Some(off);
        }
        if self.top + n > self.cap && !self.grow_in_place(self.top + n) {
            return None;
        }
        self.top += n;
        Some(self.top - n)
    }

    /// Gives a block back.
    fn free(&mut self, off: usize, log2: u32) {
        let l = log2 as usize;
        if self.free.len() <= l {
            self.free.resize_with(l + 1, Vec::new);
        }
        self.free[l].push(off);
    }

    /// Makes room for at least `need` slots (doubling): in place within the
    /// reserved room, else by moving the slots to a larger map.
    #[cold]
    fn grow(&mut self, need: usize) -> std::io::Result<()> {
        if self.grow_in_place(need) {
            return Ok(());
        }
        let cap = need.max(self.cap * 2).next_power_of_two();
        let mut new = Self::map(cap, false)?;
        let top = self.top;
        new.top = top;
        new.free = std::mem::take(&mut self.free);
        new.all_mut()[..top].copy_from_slice(&self.all()[..top]);
        new.advise_huge();
        *self = new;
        Ok(())
    }
}

/// The index of one table in one bin: a block of the store's arena.
#[derive(Clone, Copy, Debug)]
pub(crate) struct BinIndex {
    /// Offset of the block in the arena (0: the sentinel).
    off: u32,
    /// Slots of the block minus one.
    mask: u32,
    len: u32,
}

impl Default for BinIndex {
    fn default() -> Self {
        Self { off: 0, mask: SENTINEL_MASK as u32, len: 0 }
    }
}

impl BinIndex {
    /// Offset of the block in the arena.
    #[inline(always)]
    fn off(&self) -> usize {
        self.off as usize
    }

    /// Slots of the block minus one.
    #[inline(always)]
    fn mask(&self) -> usize {
        self.mask as usize
    }

    /// Number of keys.
    #[inline]
    pub(crate) fn len(&self) -> usize {
        self.len as usize
    }

    /// Number of slot positions (`0` for an index that has none).
    #[inline]
    pub(crate) fn capacity(&self) -> usize {
        if self.off() == 0 {
            0
        } else {
            self.mask() + 1
        }
    }

    /// The block of slots to probe (the sentinel for an empty index) and
    /// its mask: `hash`'s home is `hash & mask`, the next slot `(i + 1) & mask`.
    #[inline(always)]
    pub(crate) fn probe<'a>(&self, a: &'a SlotArena) -> (&'a [u64], usize) {
        (a.block(self.off(), self.mask()), self.mask())
    }

    /// The slots (empty ones are [`EMPTY`]).
    #[inline]
    pub(crate) fn slots<'a>(&self, a: &'a SlotArena) -> &'a [u64] {
        &a.block(self.off(), self.mask())[..self.capacity()]
    }

    /// Home slot position of `hash`.
    #[inline(always)]
    pub(crate) fn home(&self, hash: u64) -> usize {
        hash as usize & self.mask()
    }

    /// Home of the occupied slot `s`.
    #[inline(always)]
    fn home_of(&self, s: u64, hash_at: &impl Fn(u64) -> u64) -> usize {
        if self.mask() as u64 <= TAG_MASK {
            (s & TAG_MASK) as usize & self.mask()
        } else {
            hash_at(slot_loc(s)) as usize & self.mask()
        }
    }

    /// The position of the slot whose tag matches `hash` and for whose
    /// location `is_key` returns true (`is_key` checks the record's full hash
    /// and key).
    #[inline(always)]
    pub(crate) fn find(
        &self,
        a: &SlotArena,
        hash: u64,
        mut is_key: impl FnMut(u64) -> bool,
    ) -> Option<usize> {
        let slots = a.block(self.off(), self.mask());
        let mut i = hash as usize & self.mask();
        loop {
            let s = slots[i];
            if s == EMPTY {
                return None;
            }
            if tag_matches(s, hash) && is_key(slot_loc(s)) {
                return Some(i);
            }
            i = (i + 1) & self.mask();
        }
    }

    /// The first slot of `hash`'s probe sequence (for a prefetch).
    #[inline(always)]
    pub(crate) fn home_slot(&self, a: &SlotArena, hash: u64) -> (*const u64, u64) {
        let slots = a.block(self.off(), self.mask());
        let i = hash as usize & self.mask();
        (slots[i..].as_ptr(), slots[i])
    }

    /// The address of `hash`'s home slot, without reading it.
    #[inline(always)]
    pub(crate) fn home_addr(&self, a: &SlotArena, hash: u64) -> *const u64 {
        a.block(self.off(), self.mask())[hash as usize & self.mask()..].as_ptr()
    }

    /// Calls `f` with the position and location of every slot whose tag
    /// matches `hash` (the caller checks the record's full hash).
    pub(crate) fn for_each_in_run(&self, a: &SlotArena, hash: u64, mut f: impl FnMut(usize, u64)) {
        let slots = a.block(self.off(), self.mask());
        let mut i = hash as usize & self.mask();
        loop {
            let s = slots[i];
            if s == EMPTY {
                return;
            }
            if tag_matches(s, hash) {
                f(i, slot_loc(s));
            }
            i = (i + 1) & self.mask();
        }
    }

    /// The position of the first slot, counting from `from` (a position in
    /// `hash`'s run) in probe order, whose tag matches `hash` and for whose
    /// location `is_hash` returns true; `None` at the end of the run. Used
    /// to walk a run while removing from it.
    pub(crate) fn next_in_run(
        &self,
        a: &SlotArena,
        hash: u64,
        from: usize,
        mut is_hash: impl FnMut(u64) -> bool,
    ) -> Option<usize> {
        let slots = a.block(self.off(), self.mask());
        let mut i = from & self.mask();
        loop {
            let s = slots[i];
            if s == EMPTY {
                return None;
            }
            if tag_matches(s, hash) && is_hash(slot_loc(s)) {
                return Some(i);
            }
            i = (i + 1) & self.mask();
        }
    }

    /// The location in the occupied slot at `i`.
    #[inline(always)]
    pub(crate) fn loc(&self, a: &SlotArena, i: usize) -> u64 {
        let s = a.block(self.off(), self.mask())[i];
        debug_assert!(s != EMPTY);
        slot_loc(s)
    }

    /// Sets the location of the occupied slot at `i`.
    #[inline(always)]
    pub(crate) fn set_loc(&self, a: &mut SlotArena, i: usize, loc: u64) {
        let slot = &mut a.block_mut(self.off(), self.mask())[i];
        debug_assert!(*slot != EMPTY && loc < LOC_LIMIT);
        *slot = (loc << TAG_BITS) | (*slot & TAG_MASK);
    }

    /// Inserts a key known to be absent; returns its position. `hash_at`
    /// gives the hash of the record at a location.
    pub(crate) fn insert_new(
        &mut self,
        a: &mut SlotArena,
        hash: u64,
        loc: u64,
        hash_at: impl Fn(u64) -> u64,
    ) -> std::io::Result<usize> {
        debug_assert!(loc < LOC_LIMIT);
        // Grow at a load factor of 13/16: slots are small, so a dense index
        // keeps more of it in cache, and a tag compare per probe is cheap.
        if (self.len as usize + 1) * 16 > self.capacity() * 13 {
            self.grow(a, &hash_at)?;
        }
        self.len += 1;
        Ok(self.place(a, hash as usize, make_slot(hash, loc)))
    }

    fn place(&self, a: &mut SlotArena, home: usize, s: u64) -> usize {
        let slots = a.block_mut(self.off(), self.mask());
        let mut i = home & self.mask();
        while slots[i] != EMPTY {
            i = (i + 1) & self.mask();
        }
        slots[i] = s;
        i
    }

    /// Log2 of the slots of the next larger block.
    fn next_log2(&self) -> u32 {
        if self.off() == 0 {
            BLOCK_MIN_LOG2
        } else {
            (self.mask() + 1).trailing_zeros() + 1
        }
    }

    #[cold]
    fn grow(&mut self, a: &mut SlotArena, hash_at: &impl Fn(u64) -> u64) -> std::io::Result<()> {
        self.grow_to(a, self.next_log2(), hash_at)
    }

    /// Moves the index into a new block of `2^log2` slots (larger than its
    /// block), rehashing its keys.
    fn grow_to(
        &mut self,
        a: &mut SlotArena,
        log2: u32,
        hash_at: &impl Fn(u64) -> u64,
    ) -> std::io::Result<()> {
        let old = *self;
        debug_assert!(log2 >= self.next_log2());
        // Offsets and masks are 32-bit (a smaller entry per bin keeps more
        // of them in cache): an arena of 2^32 slots (32 GiB) is the limit.
        let too_big = || std::io::Error::other("key index above 2^32 slots");
        if log2 >= 32 {
            return Err(too_big());
        }
        let off = u32::try_from(a.alloc(log2)?).map_err(|_| too_big())?;
        *self = Self { off, mask: (1 << log2) - 1, len: old.len };
        for i in 0..old.capacity() {
            let s = a.all()[old.off() + i];
            if s != EMPTY {
                let home = self.home_of(s, hash_at);
                self.place(a, home, s);
            }
        }
        if old.off() != 0 {
            a.free(old.off(), (old.mask() + 1).trailing_zeros());
        }
        Ok(())
    }

    /// Grows the index (if needed) so that `n` more keys fit without growing
    /// again (for rebuilding a bin's index in one go).
    pub(crate) fn reserve(
        &mut self,
        a: &mut SlotArena,
        n: usize,
        hash_at: impl Fn(u64) -> u64,
    ) -> std::io::Result<()> {
        // Straight to the final size: one block, one rehash.
        let need = self.len as usize + n;
        if need * 16 <= self.capacity() * 13 {
            return Ok(());
        }
        self.grow_to(a, block_log2(self.next_log2(), need), &hash_at)
    }

    /// Gives the index's block back to the arena and leaves it empty (for a
    /// bin that leaves the store).
    pub(crate) fn release(&mut self, a: &mut SlotArena) {
        if self.off() != 0 {
            a.free(self.off(), (self.mask() + 1).trailing_zeros());
        }
        *self = Self::default();
    }

    /// Removes the slot at `i`, shifting later slots of its run back so that
    /// no probe sequence is broken.
    pub(crate) fn remove_at(&mut self, a: &mut SlotArena, mut i: usize, hash_at: impl Fn(u64) -> u64) {
        let mask = self.mask();
        let this = *self;
        let slots = a.block_mut(self.off(), mask);
        debug_assert!(slots[i] != EMPTY);
        self.len -= 1;
        let mut j = i;
        loop {
            j = (j + 1) & mask;
            let s = slots[j];
            if s == EMPTY {
                break;
            }
            let home = this.home_of(s, &hash_at);
            // `s` may move to the hole at `i` if its home is not in the
            // cyclic range `(i, j]`.
            let stays = if i <= j { i < home && home <= j } else { i < home || home <= j };
            if !stays {
                slots[i] = s;
                i = j;
            }
        }
        slots[i] = EMPTY;
    }
}

/// Log2 of the slots of the smallest block, of at least `2^min_log2`
/// slots, that holds `keys` keys below the load factor at which an index
/// grows (13/16).
fn block_log2(min_log2: u32, keys: usize) -> u32 {
    let mut log2 = min_log2;
    while keys * 16 > (1usize << log2) * 13 {
        log2 += 1;
    }
    log2
}

/// A store's arena shared by the threads of a restore, each building the
/// indexes of the bins it took: blocks are handed out under a lock (a few
/// instructions, once per table and bin) and filled without one, since no
/// two threads get the same block.
///
/// Only blocks that need no move of the arena's map are handed out (an
/// arena reserves 4 GiB of address space, so that is every block while the
/// slots fit in it); past that, or in an arena that could not reserve,
/// [`SharedArena::build`] declines and the caller builds the index later
/// with [`BinIndex::reserve`] and [`BinIndex::insert_new`].
pub(crate) struct SharedArena<'a> {
    arena: std::sync::Mutex<&'a mut SlotArena>,
    /// The arena's first slot; fixed while the arena is borrowed, since it
    /// only grows in place.
    base: *mut u64,
}

// SAFETY: the arena's bookkeeping is behind the mutex; its slots are only
// reached through blocks that `build` takes under the lock, each handed to
// one thread, so no two threads touch the same slot, and `base` stays valid
// and fixed while the arena is borrowed (blocks come from the reserved
// room, never from a moved map).
unsafe impl Sync for SharedArena<'_> {}

impl<'a> SharedArena<'a> {
    /// Shares `arena` until the returned value is dropped.
    pub(crate) fn new(arena: &'a mut SlotArena) -> Self {
        let base = arena.base;
        Self { arena: std::sync::Mutex::new(arena), base }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, &'a mut SlotArena> {
        // A panic while the lock was held is a bug that the restore's
        // scope propagates; the bookkeeping it guards is a few integers.
        self.arena.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// An index of the `keys` keys given by `entries` (hash, location; no
    /// key twice) in a fresh block, or `None` if the arena cannot give one
    /// without moving (nothing is taken then).
    pub(crate) fn build(&self, keys: usize, entries: impl Iterator<Item = (u64, u64)>) -> Option<BinIndex> {
        let log2 = block_log2(BLOCK_MIN_LOG2, keys);
        if log2 >= 32 {
            return None;
        }
        let off = self.lock().take_in_place(log2)?;
        let Ok(off32) = u32::try_from(off) else {
            self.lock().free(off, log2);
            return None;
        };
        let mask = (1usize << log2) - 1;
        // SAFETY: `take_in_place` handed out `off .. off + 2^log2` under the
        // lock, to this call only, inside the reserved room of the map,
        // which is mapped and does not move while the arena is borrowed; no
        // other slice of it exists (the arena is borrowed by `self`, so none
        // of its methods can make one).
        let slots = unsafe { std::slice::from_raw_parts_mut(self.base.add(off), mask + 1) };
        // Besides emptying the block, the sequential fill takes its page
        // faults and brings it into cache before the random stores below.
        // (Tried: zero as the empty slot, so that fresh blocks skip the
        // fill. The stores then missed the cache, and the indexes of a
        // 1 GiB restore took 0.20 s per thread instead of 0.17.)
        slots.fill(EMPTY);
        let mut len = 0u32;
        for (hash, loc) in entries {
            debug_assert!(loc < LOC_LIMIT);
            let mut i = hash as usize & mask;
            while slots[i] != EMPTY {
                i = (i + 1) & mask;
            }
            slots[i] = make_slot(hash, loc);
            len += 1;
        }
        debug_assert_eq!(len as usize, keys);
        Some(BinIndex { off: off32, mask: mask as u32, len })
    }

    /// Gives back the block of an index that `build` made (for a bin whose
    /// indexes are built later after all).
    pub(crate) fn give_back(&self, ix: &mut BinIndex) {
        ix.release(&mut self.lock());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arena() -> SlotArena {
        match SlotArena::new() {
            Ok(a) => a,
            Err(e) => panic!("arena: {e}"),
        }
    }

    /// Inserts, finds and removes `hashes` in an arena that grows in place
    /// and in one that grows by copying.
    fn insert_find_remove(hashes: &[u64]) {
        insert_find_remove_in(arena(), hashes);
        match SlotArena::unreserved() {
            Ok(a) => insert_find_remove_in(a, hashes),
            Err(e) => panic!("arena: {e}"),
        }
    }

    /// Hash of the record at `loc` in the tests: `hashes[loc]`.
    fn insert_find_remove_in(mut a: SlotArena, hashes: &[u64]) {
        let mut ix = BinIndex::default();
        let mut other = BinIndex::default();
        let hash_at = |loc: u64| hashes[loc as usize];
        for (n, &h) in hashes.iter().enumerate() {
            assert!(ix.insert_new(&mut a, h, n as u64, hash_at).is_ok());
            // Another index growing beside it in the same arena.
            assert!(other.insert_new(&mut a, !h, n as u64, |l| !hashes[l as usize]).is_ok());
        }
        for (n, &h) in hashes.iter().enumerate() {
            assert!(ix.find(&a, h, |l| l == n as u64).is_some());
            assert!(other.find(&a, !h, |l| l == n as u64).is_some());
        }
        for (n, &h) in hashes.iter().enumerate().step_by(3) {
            let i = ix.find(&a, h, |l| l == n as u64).unwrap_or(usize::MAX);
            ix.remove_at(&mut a, i, hash_at);
        }
        for (n, &h) in hashes.iter().enumerate() {
            assert_eq!(ix.find(&a, h, |l| l == n as u64).is_some(), n % 3 != 0, "{n}");
            assert!(other.find(&a, !h, |l| l == n as u64).is_some());
        }
        let removed = hashes.len().div_ceil(3);
        assert_eq!(ix.len(), hashes.len() - removed);
        assert_eq!(ix.slots(&a).iter().filter(|&&s| s != EMPTY).count(), ix.len());
    }

    #[test]
    fn insert_find_remove_with_collisions() {
        // Many equal low bits: long runs, wrapping around the end.
        let hashes: Vec<u64> = (0..50u64).map(|k| (k % 5) | (k << 40) | 7).collect();
        insert_find_remove(&hashes);
    }

    #[test]
    fn large_indexes_read_the_hash_from_the_record() {
        // More than 2^TAG_BITS slots: homes come from `hash_at`.
        let hashes: Vec<u64> = (0..900_000u64).map(|k| crate::keyspace::hash_u64(k % 700_000) ^ k).collect();
        insert_find_remove(&hashes);
    }

    #[test]
    fn empty_index_finds_nothing() {
        let a = arena();
        let ix = BinIndex::default();
        assert_eq!(ix.find(&a, 12345, |_| true), None);
        assert_eq!(ix.capacity(), 0);
        assert!(ix.slots(&a).is_empty());
    }
}
