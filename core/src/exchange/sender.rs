//! The sending side of an edge on one worker: an [`ExchangeSender`] routes
//! each record (one by one, or a burst at a time) by the hash of its key
//! to the worker that owns it: into that worker's [`Outbox`], or, for this
//! worker's own records, unencoded into the local [`EdgeReceiver`].

use std::cell::RefCell;
use std::rc::Rc;

use spate_state::codec;

use super::outbox::Outbox;
use super::receiver::EdgeReceiver;
use crate::batch::Meta;
use crate::data::{Data, Key};
use crate::push::Push;
use crate::routing::{key_hash, keys_and_hashes, RoutingTable};
use crate::time::Timestamp;

/// The other worker of a two-instance edge as this worker (`me`) sees it:
/// two instances, `me` and one other, which has an outbox. `None` for any
/// other shape.
pub(super) fn pair_of(outboxes: &[Option<Rc<RefCell<Outbox>>>], me: usize) -> Option<usize> {
    if outboxes.len() != 2 || me >= 2 {
        return None;
    }
    let other = 1 - me;
    (outboxes[other].is_some() && outboxes[me].is_none()).then_some(other)
}

pub(crate) struct ExchangeSender<T, K, F> {
    pub(super) key: Rc<F>,
    /// Where a key that is not a `u64` is encoded to be hashed.
    pub(super) scratch: Vec<u8>,
    pub(super) routing: RoutingTable,
    pub(super) me: usize,
    pub(super) outboxes: Vec<Option<Rc<RefCell<Outbox>>>>,
    pub(super) local: Rc<RefCell<EdgeReceiver<T>>>,
    pub(super) metrics: std::sync::Arc<crate::metrics::JobMetrics>,
    /// Records this worker keeps, unencoded, until the end of the burst
    /// (or `burst_max` of them): downstream takes them as one burst, as it
    /// takes a batch from another worker. Allocated once.
    pub(super) burst: Vec<(T, Meta)>,
    /// The key of each record of `burst`, and the hash it was routed by.
    pub(super) burst_keys: Vec<K>,
    pub(super) burst_hashes: Vec<u64>,
    pub(super) burst_max: usize,
    /// No other worker has an outbox here: every record stays.
    pub(super) alone: bool,
    /// Exactly one other worker has an outbox here (this one is the only
    /// other instance) and keys need no drop: bursts take
    /// `push_burst_pair`.
    pub(super) pair: Option<usize>,
    /// A burst's records by destination worker (see `push_burst_spread`).
    /// Allocated once.
    pub(super) stage: Vec<Stage<T, K>>,
    /// One per `stage` while a burst is staged. Allocated once.
    pub(super) cursors: Vec<Cursor<T, K>>,
    /// The job's live handoffs, and the assignment version `routing` is
    /// of (see `crate::handoff`).
    pub(super) board: Option<std::sync::Arc<crate::handoff::HandoffBoard>>,
    pub(super) version: u64,
    /// Per-bin load counts of one burst in
    /// [`crate::load::BIN_SAMPLE_BURSTS`] (`None`: no load reports), `B`,
    /// and the bursts seen.
    pub(super) bin_counts: crate::load::BinCounts,
    pub(super) bins_log2: u8,
    pub(super) bursts: u64,
}

/// Encodes `rec` into `o`, the outbox for worker `dest`; a record that
/// cannot be encoded fails the job.
#[inline(always)]
fn encode_for<T: Data>(
    o: &mut Outbox,
    rec: &T,
    meta: Meta,
    dest: usize,
    metrics: &crate::metrics::JobMetrics,
) {
    if let Err(e) = o.push(rec, meta) {
        fail_encode(metrics, dest, &e);
    }
}

/// A record for worker `dest` could not be encoded: the job fails.
#[cold]
fn fail_encode(metrics: &crate::metrics::JobMetrics, dest: usize, e: &codec::CodecError) {
    metrics.fail(format!("cannot encode a record for worker {dest}: {e}"));
}

/// Where the next records of a burst for one worker are written (see
/// `push_burst_spread`): the room past the ends of its [`Stage`]'s
/// vectors, `room` elements in each, of which `len` are written.
pub(super) struct Cursor<T, K> {
    recs: *mut (T, Meta),
    keys: *mut K,
    hashes: *mut u64,
    len: usize,
    room: usize,
}

impl<T, K> Cursor<T, K> {
    /// A cursor at the ends of `s`'s vectors.
    fn at_end(s: &mut Stage<T, K>) -> Self {
        let spare = |cap: usize, len: usize| cap - len;
        Cursor {
            recs: s.recs.as_mut_ptr().wrapping_add(s.recs.len()),
            keys: s.keys.as_mut_ptr().wrapping_add(s.keys.len()),
            hashes: s.hashes.as_mut_ptr().wrapping_add(s.hashes.len()),
            len: 0,
            room: spare(s.recs.capacity(), s.recs.len())
                .min(spare(s.keys.capacity(), s.keys.len()))
                .min(spare(s.hashes.capacity(), s.hashes.len())),
        }
    }

    /// Adds the `len` elements written to `s`'s vectors' lengths; the
    /// cursor is spent.
    fn commit(&mut self, s: &mut Stage<T, K>) {
        // SAFETY: the cursor was made at the ends of `s`'s vectors, which
        // have not changed since, and the first `len <= room` elements of
        // each one's room were written.
        unsafe {
            s.recs.set_len(s.recs.len() + self.len);
            s.keys.set_len(s.keys.len() + self.len);
            s.hashes.set_len(s.hashes.len() + self.len);
        }
        self.len = 0;
        self.room = 0;
    }

    /// The cursor is full: commits it, doubles `s`'s vectors (at least 64
    /// more elements each) and starts again at their ends.
    #[cold]
    #[inline(never)]
    fn grow(&mut self, s: &mut Stage<T, K>) {
        self.commit(s);
        let more = s.recs.len().max(64);
        s.recs.reserve(more);
        s.keys.reserve(more);
        s.hashes.reserve(more);
        *self = Cursor::at_end(s);
    }
}

/// The records of a burst for one worker, with their keys and hashes.
pub(super) struct Stage<T, K> {
    pub(super) recs: Vec<(T, Meta)>,
    pub(super) keys: Vec<K>,
    pub(super) hashes: Vec<u64>,
}

impl<T: Data, K: Key, F: Fn(&T) -> K> ExchangeSender<T, K, F> {
    /// The sending side of an edge on worker `me`, routing by the hash of
    /// `key(record)` through `routing`: into `outboxes` (one per worker;
    /// `None` for this one), or, for this worker's own records, in bursts
    /// of up to `burst_max` into `local`.
    pub(crate) fn new(
        key: Rc<F>,
        routing: RoutingTable,
        me: usize,
        outboxes: Vec<Option<Rc<RefCell<Outbox>>>>,
        local: Rc<RefCell<EdgeReceiver<T>>>,
        metrics: std::sync::Arc<crate::metrics::JobMetrics>,
        burst_max: usize,
    ) -> Self {
        let alone = outboxes.iter().all(Option::is_none);
        let pair = pair_of(&outboxes, me).filter(|_| !std::mem::needs_drop::<K>());
        let stage = outboxes
            .iter()
            .map(|_| Stage { recs: Vec::new(), keys: Vec::new(), hashes: Vec::new() })
            .collect();
        let cursors = Vec::with_capacity(outboxes.len());
        ExchangeSender {
            key,
            scratch: Vec::with_capacity(64),
            routing,
            me,
            outboxes,
            local,
            metrics,
            burst: Vec::new(),
            burst_keys: Vec::new(),
            burst_hashes: Vec::new(),
            burst_max,
            alone,
            pair,
            stage,
            cursors,
            board: None,
            version: 0,
            bin_counts: None,
            bins_log2: 0,
            bursts: 0,
        }
    }

    /// Counts the bins of one record in [`crate::load::BIN_SAMPLE`] of
    /// every burst into `counts` (of `2^bins_log2` bins) from now on.
    pub(crate) fn count_bins_into(&mut self, counts: crate::load::BinCounts, bins_log2: u8) {
        self.bin_counts = counts;
        self.bins_log2 = bins_log2;
    }

    /// Whether this burst's bins are counted (when the job takes load
    /// reports): one branch a burst when it does not.
    #[inline(always)]
    fn samples_burst(&mut self) -> bool {
        if self.bin_counts.is_none() {
            return false;
        }
        self.bursts = self.bursts.wrapping_add(1);
        true
    }

    /// Counts one hash in [`crate::load::BIN_SAMPLE`] of `hashes` by bin,
    /// from a position that turns with each burst.
    #[inline(never)]
    fn count_burst(&self, hashes: &[u64]) {
        if let Some(c) = &self.bin_counts {
            let from = (self.bursts % crate::load::BIN_SAMPLE) as usize;
            crate::load::count_bins(c, hashes, from, self.bins_log2);
        }
    }

    /// Routes by the assignment on `board` from now on, following its
    /// handoffs (see `crate::handoff`).
    pub(crate) fn follow(&mut self, board: std::sync::Arc<crate::handoff::HandoffBoard>) {
        self.version = board.version();
        self.board = Some(board);
    }

    /// At a burst's boundary (every flush: the end of each burst, and the
    /// worker's wake): the board's assignment changed, so the
    /// records routed by the old one go out, then a marker of the new
    /// version to every consumer, and later records go by the new table.
    #[inline]
    fn follow_handoff(&mut self) {
        if let Some(b) = &self.board {
            if b.version() != self.version {
                self.switch_routing();
            }
        }
    }

    #[cold]
    fn switch_routing(&mut self) {
        let Some(b) = self.board.clone() else { return };
        self.deliver();
        let (version, routing) = b.routing();
        for o in self.outboxes.iter().flatten() {
            o.borrow_mut().set_handoff(version);
        }
        self.local.borrow_mut().handoff_from(self.me, version);
        self.routing = routing;
        self.version = version;
    }

    /// Hands the records kept here downstream (ending the burst there).
    fn deliver(&mut self) {
        if !self.burst.is_empty() {
            self.local.borrow_mut().push_local_burst(
                &mut self.burst,
                &self.burst_hashes,
                &mut self.burst_keys,
            );
            self.burst_hashes.clear();
            self.burst_keys.clear();
        }
    }

    /// Sends `rec` towards the worker that owns its key: into that
    /// worker's batch, or into this worker's burst.
    #[inline(always)]
    fn route(&mut self, rec: T, meta: Meta) {
        let key = (self.key)(&rec);
        let hash = key_hash(&key, &mut self.scratch);
        let dest = self.routing.route(hash) as usize;
        self.send(rec, meta, key, hash, dest);
    }

    /// A burst with other workers to send to: each record is staged by
    /// destination, then each worker's records are encoded into its batch
    /// in one run and this worker's go downstream as one burst, with their
    /// keys and hashes. Which worker a record goes to is data, not a
    /// branch: a branch per record on it (taken for half the records with
    /// two workers, at random) was mispredicted so often that routing took
    /// 29 % of a two-worker run's cycles (`perf record`).
    fn push_burst_spread(&mut self, recs: &mut Vec<(T, Meta)>, sample: bool) {
        if let Some(other) = self.pair {
            return self.push_burst_pair(recs, other, sample);
        }
        // Records pushed one by one before this burst go first.
        self.deliver();
        let n = self.stage.len();
        let me = self.me;
        // A record is staged by three writes through its worker's cursor
        // and one count, not three `Vec::push`es (each loads, compares and
        // stores its vector's length per record).
        self.cursors.clear();
        for s in &mut self.stage {
            self.cursors.push(Cursor::at_end(s));
        }
        // What the loop reads of `self`, as locals: the stores through the
        // cursors are raw, so fields read through `self` would be loaded
        // again after each.
        let (key_fn, scratch, routing) = (&*self.key, &mut self.scratch, self.routing.view());
        let (cursors, stage) = (&mut self.cursors[..n], &mut self.stage[..n]);
        for (rec, meta) in recs.drain(..) {
            let key = key_fn(&rec);
            let hash = key_hash(&key, scratch);
            let dest = routing.route(hash) as usize;
            let d = if dest < n { dest } else { me };
            let c = &mut cursors[d];
            if c.len == c.room {
                c.grow(&mut stage[d]);
            }
            // SAFETY: `len < room`, so the three slots lie in the room the
            // worker's vectors have past their ends.
            unsafe {
                c.recs.add(c.len).write((rec, meta));
                c.keys.add(c.len).write(key);
                c.hashes.add(c.len).write(hash);
            }
            c.len += 1;
        }
        for (s, c) in self.stage.iter_mut().zip(&mut self.cursors) {
            c.commit(s);
        }
        if sample {
            for s in &self.stage {
                self.count_burst(&s.hashes);
            }
        }
        let mut kept = false;
        for (d, s) in self.stage.iter_mut().enumerate() {
            match self.outboxes.get(d) {
                Some(Some(o)) => {
                    if let Err(e) = o.borrow_mut().push_run(&s.recs) {
                        fail_encode(&self.metrics, d, &e);
                    }
                    s.recs.clear();
                }
                _ if !s.recs.is_empty() => {
                    kept = true;
                    self.local.borrow_mut().push_local_burst(&mut s.recs, &s.hashes, &mut s.keys);
                }
                _ => {}
            }
            s.keys.clear();
            s.hashes.clear();
        }
        if !kept {
            self.local.borrow_mut().flush_local();
        }
    }

    /// `push_burst_spread` with one other worker to send to (a job of two
    /// workers, or of two nodes of one worker each), for keys that need no
    /// drop: the burst's keys and hashes are worked out first, in one
    /// vectorised pass as with one worker, then one pass moves each record
    /// this worker keeps to the front of `recs` (its key and hash to the
    /// front of theirs) and each other one to the other worker's stage.
    /// Every record is written to both places and only one of the two
    /// positions advances, by the record's destination, so the loop has no
    /// branch on it and keeps both positions in registers. Through one
    /// cursor per worker (the general path), a record's position was
    /// loaded, incremented and stored, and the next record for that worker
    /// waited for the store: the exchange took about as long as the keyed
    /// operator in a two-worker run.
    fn push_burst_pair(&mut self, recs: &mut Vec<(T, Meta)>, other: usize, sample: bool) {
        let n = recs.len();
        let (mut keys, mut hashes) = self.keys_and_hashes_of(recs);
        if sample {
            self.count_burst(&hashes);
        }
        debug_assert!(keys.len() == n && hashes.len() == n);
        let n = n.min(keys.len()).min(hashes.len());
        let remote = &mut self.stage[other].recs;
        remote.clear();
        remote.reserve(n);
        let routing = self.routing.view();
        let (rb, kb, hb, sb) =
            (recs.as_mut_ptr(), keys.as_mut_ptr(), hashes.as_mut_ptr(), remote.as_mut_ptr());
        // Until the end of the loop no element of `recs` or `keys` counts
        // as theirs: a record is in two places at once for a while, and a
        // panic must leak it rather than drop it twice.
        // SAFETY: shrinking a length.
        unsafe {
            recs.set_len(0);
            keys.set_len(0);
        }
        let (mut kept, mut sent) = (0usize, 0usize);
        for i in 0..n {
            // SAFETY: `i < n`, within all three vectors' first `n`
            // elements, initialised above; `kept <= i` and `sent <= i`, and
            // `remote` has room for `n`. The record at `i` is copied to the
            // stage before it is (perhaps) overwritten at `kept`, and `copy`
            // allows `kept == i`. Each record ends up counted in exactly
            // one of `recs[..kept]` and `remote[..sent]`; every other copy
            // of it lies past those lengths (or is overwritten), so it is
            // dropped once. Keys need no drop (checked when `pair` was
            // set), so a key left past `kept` leaks nothing.
            unsafe {
                let hash = *hb.add(i);
                let keep = usize::from(routing.route(hash) as usize != other);
                std::ptr::copy_nonoverlapping(rb.add(i), sb.add(sent), 1);
                std::ptr::copy(rb.add(i), rb.add(kept), 1);
                std::ptr::copy(kb.add(i), kb.add(kept), 1);
                *hb.add(kept) = hash;
                kept += keep;
                sent += 1 - keep;
            }
        }
        // SAFETY: see the loop: the first `kept` and `sent` elements are
        // the records (and keys and hashes) kept and sent, each once.
        unsafe {
            recs.set_len(kept);
            keys.set_len(kept);
            remote.set_len(sent);
        }
        hashes.truncate(kept);
        if let Some(Some(o)) = self.outboxes.get(other) {
            if !remote.is_empty() {
                if let Err(e) = o.borrow_mut().push_run(remote) {
                    fail_encode(&self.metrics, other, &e);
                }
            }
        }
        remote.clear();
        self.keep_burst(recs, keys, hashes);
    }

    /// A burst's keys and hashes, in the buffers kept for them (empty
    /// between bursts), after the records pushed one by one before it,
    /// which go first. Taken out of `self` for their loops, so that their
    /// lengths stay in registers rather than being stored back per record.
    #[inline(always)]
    fn keys_and_hashes_of(&mut self, recs: &[(T, Meta)]) -> (Vec<K>, Vec<u64>) {
        self.deliver();
        let (mut keys, mut hashes) =
            (std::mem::take(&mut self.burst_keys), std::mem::take(&mut self.burst_hashes));
        keys_and_hashes(recs, &*self.key, &mut self.scratch, &mut keys, &mut hashes);
        (keys, hashes)
    }

    /// Hands `recs`, the burst's records this worker keeps, downstream as
    /// one burst with their `keys` and `hashes` (a flush when there are
    /// none), and keeps the buffers, emptied, for the next burst.
    #[inline(always)]
    fn keep_burst(&mut self, recs: &mut Vec<(T, Meta)>, mut keys: Vec<K>, mut hashes: Vec<u64>) {
        let mut local = self.local.borrow_mut();
        if recs.is_empty() {
            local.flush_local();
        } else {
            local.push_local_burst(recs, &hashes, &mut keys);
        }
        drop(local);
        hashes.clear();
        keys.clear();
        (self.burst_keys, self.burst_hashes) = (keys, hashes);
    }

    /// Sends `rec`, whose key is `key` of hash `hash`, to worker `dest`.
    #[inline(always)]
    fn send(&mut self, rec: T, meta: Meta, key: K, hash: u64, dest: usize) {
        match self.outboxes.get(dest) {
            Some(Some(o)) => encode_for(&mut o.borrow_mut(), &rec, meta, dest, &self.metrics),
            _ => {
                self.burst.push((rec, meta));
                self.burst_keys.push(key);
                self.burst_hashes.push(hash);
                if self.burst.len() >= self.burst_max {
                    self.deliver();
                }
            }
        }
    }
}

impl<T: Data, K: Key, F: Fn(&T) -> K> Push<T> for ExchangeSender<T, K, F> {
    #[inline]
    fn push(&mut self, rec: T, meta: Meta) {
        self.route(rec, meta);
    }

    fn barrier(&mut self, id: u64) {
        self.deliver();
        for o in self.outboxes.iter().flatten() {
            o.borrow_mut().set_barrier(id);
        }
        self.local.borrow_mut().barrier_from(self.me, id);
    }

    fn watermark(&mut self, wm: Timestamp) {
        // The records kept so far were pushed under the old watermark.
        self.deliver();
        self.local.borrow_mut().watermark_from(self.me, wm);
        for o in self.outboxes.iter().flatten() {
            o.borrow_mut().set_watermark(wm);
        }
    }

    fn finish(&mut self) {
        self.deliver();
        for o in self.outboxes.iter().flatten() {
            o.borrow_mut().set_final();
        }
        self.local.borrow_mut().finish_from(self.me);
    }

    fn flush(&mut self) {
        // Records for other workers go in batches (closed on size or
        // linger); those this worker keeps go downstream now.
        if self.burst.is_empty() {
            self.local.borrow_mut().flush_local();
        } else {
            self.deliver();
        }
        self.follow_handoff();
    }

    /// A burst from upstream (a source's step), then the end of the burst.
    /// With no other worker to send to (a one-worker job), the burst goes
    /// downstream as it is, with the keys and hashes of its records, and no
    /// record is moved. Otherwise see `push_burst_spread`.
    fn push_burst(&mut self, recs: &mut Vec<(T, Meta)>) {
        let sample = self.samples_burst();
        if !self.alone {
            return self.push_burst_spread(recs, sample);
        }
        let (keys, hashes) = self.keys_and_hashes_of(recs);
        if sample {
            self.count_burst(&hashes);
        }
        self.keep_burst(recs, keys, hashes);
    }
}
