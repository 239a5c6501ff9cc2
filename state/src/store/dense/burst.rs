//! Burst updates of a dense table ([`StateStore::dense_update_burst`]):
//! runs of updates that work out and prefetch each key's part and home
//! slot [`PREFETCH_AHEAD`] keys ahead, insert missing keys in place where
//! nothing moves, and stop where an insert must grow a bin.

use super::layout::{DenseBin, DenseTable, Hot};
use super::probe::{lookup, prefetch_home, probe, value_ptr, Probe};
use super::slots::{insert_at, insert_slot};
use super::{load_max, PREFETCH_AHEAD};
use crate::error::StateError;
use crate::fixed::{FixedBuf, FIXED_MAX};
use crate::store::{SegmentFile, StateStore};

impl StateStore {
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
/// is marked dirty in this epoch (see [`WholeMarks`](super::WholeMarks)), so the updates mark
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
