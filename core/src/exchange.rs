//! Repartitioning edges: the sending side routes each record by key hash
//! through the routing table into a batch per destination worker (an
//! [`Outbox`]); the receiving side decodes batches from every producer,
//! merges their watermarks and pushes records downstream.
//!
//! Records whose owner is the sending worker itself skip serialization: they
//! are pushed straight into the local receiver (fusion across the edge).

use std::any::Any;
use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::Arc;

use spate_state::codec;

use crate::batch::{Batch, Meta, FLAG_BARRIER, FLAG_FINAL};
use crate::data::{Data, Key};
use crate::metrics::JobMetrics;
use crate::push::{BarrierTracker, BoxPush, InputFrontier, Push};
use crate::routing::{key_hash, keys_and_hashes, RoutingTable};
use crate::time::{now_ns, Timestamp, WATERMARK_END};

/// The batches one worker has for one destination on one edge.
pub struct Outbox {
    touched: bool,
    touch_list: TouchList,
    edge: u32,
    dest: u32,
    producer: u32,
    current: Batch,
    opened_ns: u64,
    ready: VecDeque<Batch>,
    next_seq: u64,
    watermark: Timestamp,
    watermark_pending: bool,
    final_pending: bool,
    final_sent: bool,
    batch_records: u32,
    batch_bytes: usize,
    /// The buffer of a batch that was sent (copied out), for the next one.
    spare: Option<Vec<u8>>,
}

impl Outbox {
    pub(crate) fn new(
        edge: u32,
        producer: u32,
        dest: u32,
        touch_list: TouchList,
        batch_records: usize,
        batch_bytes: usize,
    ) -> Self {
        Self {
            touched: false,
            touch_list,
            edge,
            dest,
            producer,
            current: Batch::with_capacity(edge, producer, 0),
            opened_ns: 0,
            ready: VecDeque::new(),
            next_seq: 1,
            watermark: 0,
            watermark_pending: false,
            final_pending: false,
            final_sent: false,
            batch_records: batch_records.max(1) as u32,
            batch_bytes,
            spare: None,
        }
    }

    /// Puts this outbox on the worker's list of outboxes with work to send,
    /// once: the task whose step touched it flushes it.
    #[inline]
    fn touch(&mut self) {
        if !self.touched {
            self.touched = true;
            self.touch_list.borrow_mut().push((self.edge, self.dest));
        }
    }

    /// Takes the outbox off the touched list (its flusher is about to run).
    pub(crate) fn untouch(&mut self) {
        self.touched = false;
    }

    #[inline(always)]
    fn push<T: Data>(&mut self, rec: &T, meta: Meta) -> Result<(), codec::CodecError> {
        self.open();
        self.current.push(rec, meta)?;
        self.close_if_full();
        Ok(())
    }

    /// Before a record goes into the open batch: an empty one opens now
    /// (its linger starts) and is put on the list to flush.
    #[inline(always)]
    fn open(&mut self) {
        if self.current.count == 0 {
            self.opened_ns = now_ns();
            self.touch();
        }
    }

    /// After records went into the open batch: it closes once it holds
    /// `batch_records` records, or `batch_bytes` bytes or more.
    #[inline(always)]
    fn close_if_full(&mut self) {
        if self.current.count >= self.batch_records || self.current.data.len() >= self.batch_bytes {
            self.close(0);
        }
    }

    /// Appends `recs`, closing batches where [`Outbox::push`] of one after
    /// the other would: each batch's share of the run is framed in one
    /// [`Batch::push_run`].
    fn push_run<T: Data>(&mut self, mut recs: &[(T, Meta)]) -> Result<(), codec::CodecError> {
        let Some(len) = codec::fixed_size::<T>() else {
            for (rec, meta) in recs {
                self.push(rec, *meta)?;
            }
            return Ok(());
        };
        while !recs.is_empty() {
            self.open();
            // How many more records the open batch takes before
            // `close_if_full` closes it.
            let by_count = self.batch_records.saturating_sub(self.current.count).max(1) as usize;
            let by_bytes = self.current.fixed_records_until(len, self.batch_bytes);
            let (now, rest) = recs.split_at(recs.len().min(by_count).min(by_bytes));
            self.current.push_run(now)?;
            recs = rest;
            self.close_if_full();
        }
        Ok(())
    }

    /// Closes the open batch during a step: the step's flush sends it.
    fn close(&mut self, flags: u32) {
        self.seal(flags);
        self.touch();
    }

    /// Closes the open batch onto the queue of batches to send.
    fn seal(&mut self, flags: u32) {
        // The next batch starts in the buffer of one already sent to
        // another process (`recycle`: still in cache), else in a new one
        // half again the size the last batch reached, so a steady stream
        // allocates one buffer per batch that batches of about the same
        // size never outgrow (growing one copies it: batches closed per
        // source step vary in size from step to step), and tiny
        // low-latency batches stay small.
        let len = self.current.data.len();
        let hint = (len + len / 2).min(self.batch_bytes + 256);
        let mut next = Batch::with_capacity(self.edge, self.producer, 0);
        match self.spare.take() {
            // One too small would be grown by `realloc`, which copies it
            // whole: it is dropped instead (keeping such buffers, ×0.989).
            Some(data) if data.capacity() >= hint => next.data = data,
            _ => next.data.reserve_exact(hint),
        }
        let mut b = std::mem::replace(&mut self.current, next);
        b.seq = self.next_seq;
        self.next_seq += 1;
        b.watermark = self.watermark;
        b.flags = flags;
        self.watermark_pending = false;
        self.ready.push_back(b);
    }

    /// The next batch to send, if any: closed batches first, then a partly
    /// filled batch whose linger (`linger_ns`) has passed at `now` (linger 0
    /// closes any), then the end of the stream; a batch that carries only a
    /// watermark advance goes only when `watermark_only` (the ticker's
    /// flush), so a fast source stepping a record at a time does not send an
    /// empty batch per step.
    pub(crate) fn take_next(&mut self, linger_ns: u64, now: u64, watermark_only: bool) -> Option<Batch> {
        if let Some(b) = self.ready.pop_front() {
            return Some(b);
        }
        if self.final_sent {
            return None;
        }
        // The caller is sending: what closes here needs no touch.
        if self.final_pending {
            self.seal(FLAG_FINAL);
            self.final_sent = true;
        } else if self.current.count > 0 {
            if now.saturating_sub(self.opened_ns) >= linger_ns {
                self.seal(0);
            }
        } else if self.watermark_pending && watermark_only {
            self.seal(0);
        }
        self.ready.pop_front()
    }

    /// Returns a batch that could not be sent to the front of the queue.
    pub(crate) fn put_back(&mut self, b: Batch) {
        self.ready.push_front(b);
    }

    /// `b` was sent (copied out), or came in from the worker this outbox
    /// sends to and was read: its buffer serves the next batch, unless the
    /// spare kept is larger.
    pub(crate) fn recycle(&mut self, b: Batch) {
        let mut data = b.data;
        data.clear();
        if data.capacity() > 0 && self.spare.as_ref().is_none_or(|s| s.capacity() < data.capacity()) {
            self.spare = Some(data);
        }
    }

    /// Queues `replay` (batches sent before, in order) ahead of every
    /// batch not sent yet: a re-linked receiver gets them again.
    pub(crate) fn replay(&mut self, replay: impl DoubleEndedIterator<Item = Batch>) {
        for b in replay.rev() {
            self.ready.push_front(b);
        }
    }

    /// Whether a partly filled batch is waiting for its linger.
    pub(crate) fn has_open(&self) -> bool {
        self.current.count > 0 || (self.final_pending && !self.final_sent) || self.watermark_pending
    }

    fn set_watermark(&mut self, wm: Timestamp) {
        if wm > self.watermark {
            // Records already in the open batch were sent under the old
            // watermark: close it, so every batch's records were all pushed
            // under the watermark its header carries, and the receiver can
            // apply that watermark *before* the records — exactly what the
            // local (unencoded) path does. Late records are then late the
            // same way whichever worker owns their key.
            if self.current.count > 0 {
                self.close(0);
            }
            self.watermark = wm;
            self.watermark_pending = true;
            self.touch();
        }
    }

    /// Checkpoint barrier `id`: closes the open batch, then queues an
    /// empty barrier batch behind it.
    fn set_barrier(&mut self, id: u64) {
        if self.final_sent {
            return;
        }
        if self.current.count > 0 {
            self.close(0);
        }
        self.current.barrier = id;
        self.close(FLAG_BARRIER);
    }

    fn set_final(&mut self) {
        self.set_watermark(WATERMARK_END);
        self.final_pending = true;
        self.touch();
    }
}

/// The (edge, destination) outboxes of a worker that steps have given work
/// since their last flush.
pub(crate) type TouchList = Rc<RefCell<Vec<(u32, u32)>>>;

/// Type-erased receiving side of an edge on one worker.
pub(crate) trait BatchInput {
    /// A batch from another worker, but for its first `skip` records (a
    /// replacement's replay re-sends records this worker already took).
    fn on_batch(&mut self, batch: &Batch, skip: usize);
}

/// The receiving side of an edge on one worker.
pub(crate) struct EdgeReceiver<T> {
    edge: u32,
    metrics: std::sync::Arc<crate::metrics::JobMetrics>,
    out: Option<BoxPush<T>>,
    frontier: InputFrontier,
    finished: bool,
    /// A batch's records, decoded, handed downstream as one burst (see
    /// [`crate::push::Push::push_burst`]); allocated once.
    burst: Vec<(T, Meta)>,
}

impl<T: Data> EdgeReceiver<T> {
    fn new(
        edge: u32,
        producers: usize,
        tracker: Rc<BarrierTracker>,
        metrics: std::sync::Arc<crate::metrics::JobMetrics>,
    ) -> Self {
        let mut frontier = InputFrontier::new(producers);
        frontier.set_tracker(tracker);
        Self { edge, metrics, out: None, frontier, finished: false, burst: Vec::new() }
    }

    fn barrier_from(&mut self, producer: usize, id: u64) {
        if let Some(id) = self.frontier.barrier(producer, id) {
            if let Some(o) = self.out.as_mut() {
                o.barrier(id);
            }
            self.frontier.aligned_done();
        }
    }

    fn flush_local(&mut self) {
        if let Some(o) = self.out.as_mut() {
            o.flush();
        }
    }

    /// Records of this worker for this worker, as one burst (ends it),
    /// with the keys they were routed by (a `Vec` of the key type, which
    /// the downstream operator may take) and their hashes.
    fn push_local_burst(&mut self, recs: &mut Vec<(T, Meta)>, hashes: &[u64], keys: &mut dyn Any) {
        match self.out.as_mut() {
            Some(o) => o.push_burst_keyed(recs, hashes, keys),
            None => recs.clear(),
        }
    }

    fn watermark_from(&mut self, producer: usize, wm: Timestamp) {
        if let Some(w) = self.frontier.advance(producer, wm) {
            if let Some(o) = self.out.as_mut() {
                o.watermark(w);
            }
        }
    }

    fn finish_from(&mut self, producer: usize) {
        self.watermark_from(producer, WATERMARK_END);
        let all = self.frontier.finish(producer);
        if let Some(id) = self.frontier.barrier_after_finish() {
            if let Some(o) = self.out.as_mut() {
                o.barrier(id);
            }
            self.frontier.aligned_done();
        }
        if all && !self.finished {
            self.finished = true;
            if let Some(o) = self.out.as_mut() {
                o.finish();
            }
        }
    }
}

impl<T: Data> BatchInput for EdgeReceiver<T> {
    fn on_batch(&mut self, batch: &Batch, skip: usize) {
        let producer = batch.producer as usize;
        // The header's watermark was in force when every record of the batch
        // was pushed (see `Outbox::set_watermark`).
        self.watermark_from(producer, batch.watermark);
        if let Some(o) = self.out.as_mut() {
            let burst = &mut self.burst;
            burst.clear();
            burst.reserve(batch.count as usize);
            if batch.untrusted {
                // From another process: check every record before reading it.
                for (bytes, meta) in batch.records().skip(skip) {
                    match codec::decode_checked::<T>(bytes) {
                        Ok(rec) => burst.push((rec, meta)),
                        Err(e) => {
                            // None of the batch goes downstream.
                            burst.clear();
                            self.metrics.fail(format!(
                                "edge {}: a record from worker {producer} (batch {}) is not a valid record: {e}",
                                self.edge, batch.seq
                            ));
                            return;
                        }
                    }
                }
            } else if let Some(fixed) = batch.fixed_records::<T>(skip) {
                // Records of a fixed-layout type, all framed alike: read in
                // one pass, with no length to follow per record.
                // SAFETY: batches that are not `untrusted` were built by
                // `Batch::push::<T>` (or `push_run`) on this edge in this
                // process, so each record's bytes are one `T`'s.
                burst.extend(fixed.map(|(bytes, meta)| (unsafe { codec::decode::<T>(bytes) }, meta)));
            } else {
                for (bytes, meta) in batch.records().skip(skip) {
                    // SAFETY: batches that are not `untrusted` were built by
                    // `Batch::push::<T>` on this edge in this process, so
                    // each record's bytes are one archived `T`.
                    burst.push((unsafe { codec::decode::<T>(bytes) }, meta));
                }
            }
            o.push_burst(burst);
        }
        if let Some(id) = batch.barrier() {
            self.barrier_from(producer, id);
        }
        if batch.is_final() {
            self.finish_from(producer);
        }
    }
}

/// One edge's endpoints on one worker.
pub(crate) struct EdgeRuntime {
    /// Per destination worker; `None` for this worker.
    pub(crate) outboxes: Vec<Option<Rc<RefCell<Outbox>>>>,
    /// `Rc<RefCell<EdgeReceiver<T>>>`, created by whichever side asks first.
    local: Option<Box<dyn Any>>,
    pub(crate) input: Option<Rc<RefCell<dyn BatchInput>>>,
    pub(crate) sender_installed: bool,
}

impl EdgeRuntime {
    pub(crate) fn new(
        edge: u32,
        me: usize,
        workers: usize,
        touch_list: &TouchList,
        batch_records: usize,
        batch_bytes: usize,
    ) -> Self {
        let outboxes = (0..workers)
            .map(|d| {
                (d != me).then(|| {
                    Rc::new(RefCell::new(Outbox::new(
                        edge,
                        me as u32,
                        d as u32,
                        touch_list.clone(),
                        batch_records,
                        batch_bytes,
                    )))
                })
            })
            .collect();
        Self { outboxes, local: None, input: None, sender_installed: false }
    }

    /// Marks every outbox final: this worker hosts no sender on the edge.
    pub(crate) fn finish_without_sender(&mut self, me: usize) {
        for o in self.outboxes.iter().flatten() {
            o.borrow_mut().set_final();
        }
        if let Some(l) = self.local.as_ref() {
            // The receiver's type is known only to the typed side; it
            // registered a finisher closure instead.
            if let Some(f) = l.downcast_ref::<LocalFinisher>() {
                (f.0)(me);
            }
        }
    }

    /// The receiving side of `edge` on this worker, from `workers`
    /// producers: created by whichever side (receiver or sender) asks
    /// first, the same one after.
    pub(crate) fn local_receiver<T: Data>(
        &mut self,
        edge: u32,
        workers: usize,
        barriers: &Rc<BarrierTracker>,
        metrics: &Arc<JobMetrics>,
    ) -> Rc<RefCell<EdgeReceiver<T>>> {
        if let Some(l) = self.local.as_ref().and_then(|l| l.downcast_ref::<LocalFinisher>()) {
            if let Some(r) = l.1.downcast_ref::<Rc<RefCell<EdgeReceiver<T>>>>() {
                return r.clone();
            }
        }
        let r =
            Rc::new(RefCell::new(EdgeReceiver::<T>::new(edge, workers, barriers.clone(), metrics.clone())));
        let r2 = r.clone();
        self.local = Some(Box::new(LocalFinisher(
            Box::new(move |me| r2.borrow_mut().finish_from(me)),
            Box::new(r.clone()),
        )));
        r
    }

    /// Installs `r` (see [`EdgeRuntime::local_receiver`]) as the receiving
    /// side of the edge on this worker, feeding `out`.
    pub(crate) fn install_receiver<T: Data>(&mut self, r: Rc<RefCell<EdgeReceiver<T>>>, out: BoxPush<T>) {
        r.borrow_mut().out = Some(out);
        self.input = Some(r as Rc<RefCell<dyn BatchInput>>);
    }
}

struct LocalFinisher(Box<dyn Fn(usize)>, Box<dyn Any>);

/// The other worker of a two-instance edge as this worker (`me`) sees it:
/// two instances, `me` and one other, which has an outbox. `None` for any
/// other shape.
fn pair_of(outboxes: &[Option<Rc<RefCell<Outbox>>>], me: usize) -> Option<usize> {
    if outboxes.len() != 2 || me >= 2 {
        return None;
    }
    let other = 1 - me;
    (outboxes[other].is_some() && outboxes[me].is_none()).then_some(other)
}

pub(crate) struct ExchangeSender<T, K, F> {
    key: Rc<F>,
    /// Where a key that is not a `u64` is encoded to be hashed.
    scratch: Vec<u8>,
    routing: RoutingTable,
    me: usize,
    outboxes: Vec<Option<Rc<RefCell<Outbox>>>>,
    local: Rc<RefCell<EdgeReceiver<T>>>,
    metrics: std::sync::Arc<crate::metrics::JobMetrics>,
    /// Records this worker keeps, unencoded, until the end of the burst
    /// (or `burst_max` of them): downstream takes them as one burst, as it
    /// takes a batch from another worker. Allocated once.
    burst: Vec<(T, Meta)>,
    /// The key of each record of `burst`, and the hash it was routed by.
    burst_keys: Vec<K>,
    burst_hashes: Vec<u64>,
    burst_max: usize,
    /// No other worker has an outbox here: every record stays.
    alone: bool,
    /// Exactly one other worker has an outbox here (this one is the only
    /// other instance) and keys need no drop: bursts take
    /// `push_burst_pair`.
    pair: Option<usize>,
    /// A burst's records by destination worker (see `push_burst_spread`).
    /// Allocated once.
    stage: Vec<Stage<T, K>>,
    /// One per `stage` while a burst is staged. Allocated once.
    cursors: Vec<Cursor<T, K>>,
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
struct Cursor<T, K> {
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
struct Stage<T, K> {
    recs: Vec<(T, Meta)>,
    keys: Vec<K>,
    hashes: Vec<u64>,
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
        }
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
    fn push_burst_spread(&mut self, recs: &mut Vec<(T, Meta)>) {
        if let Some(other) = self.pair {
            return self.push_burst_pair(recs, other);
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
    fn push_burst_pair(&mut self, recs: &mut Vec<(T, Meta)>, other: usize) {
        let n = recs.len();
        let (mut keys, mut hashes) = self.keys_and_hashes_of(recs);
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
    }

    /// A burst from upstream (a source's step), then the end of the burst.
    /// With no other worker to send to (a one-worker job), the burst goes
    /// downstream as it is, with the keys and hashes of its records, and no
    /// record is moved. Otherwise see `push_burst_spread`.
    fn push_burst(&mut self, recs: &mut Vec<(T, Meta)>) {
        if !self.alone {
            return self.push_burst_spread(recs);
        }
        let (keys, hashes) = self.keys_and_hashes_of(recs);
        self.keep_burst(recs, keys, hashes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::JobMetrics;

    type Rec = (u64, String);

    struct Collect(Rc<RefCell<Vec<Rec>>>);

    impl Push<Rec> for Collect {
        fn push(&mut self, rec: Rec, _meta: Meta) {
            self.0.borrow_mut().push(rec);
        }
        fn watermark(&mut self, _wm: Timestamp) {}
        fn finish(&mut self) {}
        fn barrier(&mut self, _id: u64) {}
        fn flush(&mut self) {}
    }

    /// The batches `o` closed (and its open one), as (count, bytes).
    fn batches(o: &mut Outbox) -> Vec<(u32, Vec<u8>)> {
        o.seal(0);
        o.ready.drain(..).map(|b| (b.count, b.data)).collect()
    }

    /// `recs` through `push_run` in runs of `run` records, and one by one
    /// through `push`, into outboxes of `records` records and `bytes`
    /// bytes a batch: the batches must be the same.
    fn run_matches_one_by_one<T: Data>(recs: &[(T, Meta)], run: usize, records: usize, bytes: usize) {
        let outbox = || Outbox::new(0, 0, 1, Rc::new(RefCell::new(Vec::new())), records, bytes);
        let (mut by_run, mut by_one) = (outbox(), outbox());
        for chunk in recs.chunks(run) {
            assert!(by_run.push_run(chunk).is_ok());
        }
        for (rec, meta) in recs {
            assert!(by_one.push(rec, *meta).is_ok());
        }
        let (a, b) = (batches(&mut by_run), batches(&mut by_one));
        assert!(a.len() > 2, "the limits must close batches");
        assert_eq!(a, b, "run {run}, {records} records, {bytes} bytes a batch");
    }

    /// A recycled buffer serves the next batch when it holds what that
    /// batch is sized for (the same allocation, emptied), and not when it
    /// is smaller (it would be grown by copying).
    #[test]
    fn a_recycled_buffer_serves_the_next_batch_if_large_enough() {
        let mut o = Outbox::new(0, 0, 1, Rc::new(RefCell::new(Vec::new())), 4, 1 << 20);
        let rec = |i: u64| ((i, i), Meta { ingest_ns: 7 });
        let fill = |o: &mut Outbox| {
            for i in 0..4 {
                assert!(o.push(&rec(i).0, rec(i).1).is_ok());
            }
        };
        fill(&mut o);
        // A full batch closed; the one open now was sized by it.
        let hint = o.ready.back().map_or(0, |b| b.data.len() * 3 / 2);
        assert!(hint > 0);
        let mut big = Batch::with_capacity(0, 0, 0);
        big.data = Vec::with_capacity(hint * 4);
        big.data.extend_from_slice(b"stale");
        let big_ptr = big.data.as_ptr();
        o.recycle(big);
        fill(&mut o);
        assert_eq!(o.current.data.as_ptr(), big_ptr, "the recycled buffer is the open batch's");
        assert!(o.current.data.is_empty(), "emptied");
        let mut small = Batch::with_capacity(0, 0, 0);
        small.data = Vec::with_capacity(1);
        let small_ptr = small.data.as_ptr();
        o.recycle(small);
        fill(&mut o);
        assert_ne!(o.current.data.as_ptr(), small_ptr, "a buffer too small is not grown");
        assert!(o.current.data.capacity() >= hint);
        // Every batch still frames its records.
        let got = batches(&mut o);
        assert!(got.iter().filter(|(count, _)| *count == 4).count() >= 3, "{:?}", got.len());
    }

    #[test]
    fn a_run_of_records_closes_and_frames_batches_as_one_by_one() {
        let fixed: Vec<((u64, u64), Meta)> =
            (0..3000u64).map(|i| ((i % 7, i * 3), Meta { ingest_ns: 1_000 + i })).collect();
        let other: Vec<(Rec, Meta)> =
            (0..700u64).map(|i| ((i, "x".repeat(i as usize % 13)), Meta { ingest_ns: i })).collect();
        for run in [1, 5, 512, 1024, 5000] {
            // Closed on the record count, on the byte size (28 bytes a
            // record: 100 is passed mid-record), and on both.
            run_matches_one_by_one(&fixed, run, 1024, 1 << 20);
            run_matches_one_by_one(&fixed, run, 1 << 20, 100);
            run_matches_one_by_one(&fixed, run, 300, 64 * 28);
            run_matches_one_by_one(&other, run, 100, 1 << 20);
            run_matches_one_by_one(&other, run, 1 << 20, 500);
        }
    }

    /// Collects a burst with the keys and hashes handed over with it.
    struct CollectKeyed(Rc<RefCell<Vec<(Rec, u64, u64)>>>);

    impl Push<Rec> for CollectKeyed {
        fn push(&mut self, _rec: Rec, _meta: Meta) {
            panic!("a spread burst's own records go downstream as a burst");
        }
        fn watermark(&mut self, _wm: Timestamp) {}
        fn finish(&mut self) {}
        fn barrier(&mut self, _id: u64) {}
        fn flush(&mut self) {}
        fn push_burst_keyed(&mut self, recs: &mut Vec<(Rec, Meta)>, hashes: &[u64], keys: &mut dyn Any) {
            let keys = keys.downcast_mut::<Vec<u64>>().map(std::mem::take).unwrap_or_default();
            assert!(
                keys.len() == recs.len() && hashes.len() == recs.len(),
                "keys and hashes for every record"
            );
            let mut got = self.0.borrow_mut();
            for (((rec, _), k), &h) in recs.drain(..).zip(keys).zip(hashes) {
                got.push((rec, k, h));
            }
        }
    }

    #[test]
    fn a_spread_burst_stages_every_record_for_its_worker_in_order() {
        // Worker 1 of 3, through a cursor per worker.
        spread_burst_reaches_every_worker_in_order(1, 3, false);
    }

    #[test]
    fn a_burst_between_two_workers_reaches_each_in_order() {
        // Either worker of 2, split in one pass (`push_burst_pair`), and
        // through the cursors for comparison.
        for me in [0, 1] {
            spread_burst_reaches_every_worker_in_order(me, 2, true);
            spread_burst_reaches_every_worker_in_order(me, 2, false);
        }
    }

    /// Worker `me` of `workers` exchanges records of heap-owning type, in
    /// bursts small and large (the staging vectors start empty and grow
    /// mid-burst): every record reaches the worker that owns its key, in
    /// order, this worker's own with their keys and hashes. With `pair`,
    /// through `push_burst_pair`.
    fn spread_burst_reaches_every_worker_in_order(me: usize, workers: usize, pair: bool) {
        let metrics = JobMetrics::new();
        let touch: TouchList = Rc::new(RefCell::new(Vec::new()));
        let edge = EdgeRuntime::new(0, me, workers, &touch, 1 << 20, 1 << 26);
        let local = Rc::new(RefCell::new(EdgeReceiver::<Rec>::new(
            0,
            workers,
            Rc::new(BarrierTracker::default()),
            metrics.clone(),
        )));
        let kept = Rc::new(RefCell::new(Vec::new()));
        local.borrow_mut().out = Some(Box::new(CollectKeyed(kept.clone())));
        let routing = RoutingTable::uniform(6, workers);
        let mut sender = ExchangeSender {
            key: Rc::new(|r: &Rec| r.0),
            scratch: Vec::new(),
            routing: routing.clone(),
            me,
            outboxes: edge.outboxes.clone(),
            local,
            metrics: metrics.clone(),
            burst: Vec::new(),
            burst_keys: Vec::new(),
            burst_hashes: Vec::new(),
            burst_max: 1024,
            alone: false,
            pair: if pair { pair_of(&edge.outboxes, me) } else { None },
            stage: (0..workers)
                .map(|_| Stage { recs: Vec::new(), keys: Vec::new(), hashes: Vec::new() })
                .collect(),
            cursors: Vec::new(),
        };
        assert_eq!(sender.pair.is_some(), pair, "a pair of workers takes push_burst_pair");
        let mut want: Vec<Vec<Rec>> = vec![Vec::new(); workers];
        let mut i = 0u64;
        for size in [1usize, 700, 3000, 5, 2048] {
            let mut burst: Vec<(Rec, Meta)> = (i..i + size as u64)
                .map(|j| ((j.wrapping_mul(0x9E37_79B9), "r".repeat(j as usize % 17)), Meta { ingest_ns: j }))
                .collect();
            i += size as u64;
            for (rec, _) in &burst {
                want[routing.route(spate_state::keyspace::hash_u64(rec.0)) as usize].push(rec.clone());
            }
            sender.push_burst(&mut burst);
            assert!(burst.is_empty(), "the burst is taken");
        }
        assert!(!metrics.has_failed());
        for (d, want) in want.iter().enumerate() {
            let got: Vec<Rec> = match &edge.outboxes[d] {
                Some(o) => {
                    let mut o = o.borrow_mut();
                    o.seal(0);
                    o.ready
                        .drain(..)
                        .flat_map(|b| {
                            b.records()
                                .map(|(bytes, _)| {
                                    codec::decode_checked::<Rec>(bytes).unwrap_or_else(|e| panic!("{e}"))
                                })
                                .collect::<Vec<_>>()
                        })
                        .collect()
                }
                None => kept
                    .borrow()
                    .iter()
                    .map(|(rec, k, h)| {
                        assert_eq!(
                            (*k, *h),
                            (rec.0, spate_state::keyspace::hash_u64(rec.0)),
                            "handed key and hash"
                        );
                        rec.clone()
                    })
                    .collect(),
            };
            assert!(want.len() > 1000, "worker {d} gets its share");
            assert_eq!(&got, want, "worker {d}'s records, in order (worker {me} of {workers}, pair {pair})");
        }
    }

    #[test]
    fn records_from_another_process_are_validated_before_they_are_read() {
        let metrics = JobMetrics::new();
        let mut r = EdgeReceiver::<Rec>::new(3, 2, Rc::new(BarrierTracker::default()), metrics.clone());
        let got = Rc::new(RefCell::new(Vec::new()));
        r.out = Some(Box::new(Collect(got.clone())));

        let mut good = Batch::with_capacity(3, 1, 64);
        assert!(good.push(&(7u64, "seven".to_string()), Meta { ingest_ns: 0 }).is_ok());
        good.untrusted = true;
        r.on_batch(&good, 0);
        assert_eq!(*got.borrow(), vec![(7, "seven".to_string())]);
        assert!(!metrics.has_failed());

        // Sound framing, but the record's 3 bytes cannot hold a `Rec`.
        let mut bad = Batch::with_capacity(3, 1, 64);
        bad.data.extend_from_slice(&3u32.to_le_bytes());
        bad.data.extend_from_slice(&0u64.to_le_bytes());
        bad.data.extend_from_slice(&[0xff; 3]);
        bad.count = 1;
        assert!(bad.validate_framing().is_ok());
        bad.untrusted = true;
        r.on_batch(&bad, 0);
        assert_eq!(got.borrow().len(), 1, "a garbage record was read");
        let failure = metrics.failure().unwrap_or_default();
        assert!(failure.contains("edge 3") && failure.contains("not a valid record"), "{failure}");
    }
}
