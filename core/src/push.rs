//! The instance side of operators: records are *pushed* through fused chains
//! of operator instances by direct calls.
//!
//! An operator instance is something that accepts records, watermarks and the
//! end of its input ([`Push`]), and holds the [`Push`] of what comes after it.
//! Operators with no repartitioning between them are composed this way on one
//! worker: one virtual call per record per operator, no channel, no copy.

use std::any::Any;
use std::cell::RefCell;
use std::marker::PhantomData;
use std::rc::Rc;

use crate::batch::Meta;
use crate::time::Timestamp;

/// Accepts the records of one stream on one worker.
pub trait Push<T> {
    /// One record.
    fn push(&mut self, rec: T, meta: Meta);
    /// The input's watermark advanced to `wm`: no later record has an event
    /// time below it. Called with non-decreasing values.
    fn watermark(&mut self, wm: Timestamp);
    /// The input ended: no more records or watermarks follow.
    fn finish(&mut self);
    /// Checkpoint barrier `id`: every record before it belongs to
    /// checkpoint `id`, none after it. Called with increasing ids, once
    /// every input of the caller has delivered the barrier (aligned).
    /// Stateful operators save their state, then forward the barrier.
    fn barrier(&mut self, id: u64);
    /// The end of a burst of records (a batch taken from a channel, a
    /// source's step): an operator that held records back (a keyed operator
    /// overlapping the state accesses of consecutive records) processes
    /// them now, then forwards the flush. Every record pushed is processed
    /// by the next `flush`, `watermark`, `barrier` or `finish` at the latest.
    fn flush(&mut self);
    /// A burst of records in order (a batch taken from a channel), then
    /// the end of the burst: as `push` of each, then `flush`, and leaves
    /// `recs` empty (its capacity is the caller's, reused for the next
    /// burst). The records are the callee's, as if pushed one by one: it
    /// may replace them in place and hand the vector on (a keyed operator
    /// whose results are of the records' type does). An operator that
    /// gains from seeing the whole burst at once (a keyed operator
    /// prefetching the state of records further on, a counting sink)
    /// overrides it; the caller hands a burst only where it has one.
    fn push_burst(&mut self, recs: &mut Vec<(T, Meta)>) {
        for (rec, meta) in recs.drain(..) {
            self.push(rec, meta);
        }
        self.flush();
    }

    /// [`Push::push_burst`] with the keys of the records by the key
    /// function of the exchange that routed them (this worker's own records
    /// of a keyed edge): `keys` is a `Vec<K>` of that function's key type,
    /// `keys[i]` the key of `recs[i]` and `hashes[i]` its hash. An operator
    /// keyed by that key may take them instead of keying and hashing again
    /// (and may leave any `Vec<K>` in `keys`: the caller clears it before
    /// its next use). The default ignores them.
    fn push_burst_keyed(&mut self, recs: &mut Vec<(T, Meta)>, hashes: &[u64], keys: &mut dyn Any) {
        let _ = (hashes, keys);
        self.push_burst(recs);
    }
    /// A live handoff concerns this worker (see [`crate::handoff`]): a
    /// keyed instance hands its moving bins off, or looks for a step or a
    /// parcel on the board, then flushes. The default flushes (an operator
    /// that holds no keyed state has nothing to move).
    fn handoff(&mut self, h: &crate::handoff::Handoff) {
        let _ = h;
        self.flush();
    }
}

/// A boxed [`Push`]: the downstream of an operator instance.
pub type BoxPush<T> = Box<dyn Push<T>>;

/// Pushes to nothing: the output of a stream nobody consumes.
pub struct Discard;

impl<T> Push<T> for Discard {
    fn push(&mut self, _rec: T, _meta: Meta) {}
    fn watermark(&mut self, _wm: Timestamp) {}
    fn finish(&mut self) {}
    fn barrier(&mut self, _id: u64) {}
    fn flush(&mut self) {}
}

/// Pushes every record to several consumers (a stream with fan-out).
pub struct Tee<T: Clone> {
    outs: Vec<BoxPush<T>>,
}

impl<T: Clone> Tee<T> {
    /// A tee over `outs` (at least two).
    pub fn new(outs: Vec<BoxPush<T>>) -> Self {
        debug_assert!(outs.len() >= 2);
        Self { outs }
    }
}

impl<T: Clone> Push<T> for Tee<T> {
    fn push(&mut self, rec: T, meta: Meta) {
        if let Some((last, rest)) = self.outs.split_last_mut() {
            for o in rest {
                o.push(rec.clone(), meta);
            }
            last.push(rec, meta);
        }
    }
    fn watermark(&mut self, wm: Timestamp) {
        for o in &mut self.outs {
            o.watermark(wm);
        }
    }
    fn finish(&mut self) {
        for o in &mut self.outs {
            o.finish();
        }
    }
    fn barrier(&mut self, id: u64) {
        for o in &mut self.outs {
            o.barrier(id);
        }
    }
    fn flush(&mut self) {
        for o in &mut self.outs {
            o.flush();
        }
    }
    fn handoff(&mut self, h: &crate::handoff::Handoff) {
        for o in &mut self.outs {
            o.handoff(h);
        }
    }
}

/// Tracks the watermarks, checkpoint barriers and ends of several inputs of
/// one instance: its watermark is the minimum over inputs, a barrier is
/// aligned once every input that has not ended delivered it, and it ends
/// when every input has.
#[derive(Clone)]
pub struct InputFrontier {
    watermarks: Vec<Timestamp>,
    finished: Vec<bool>,
    current: Timestamp,
    barriers: Vec<u64>,
    aligned: u64,
    tracker: Option<Rc<BarrierTracker>>,
}

/// Counts a worker's alignments in progress: while one is, the worker's
/// work items that already passed the barrier are paused, so no record from
/// after a barrier reaches an instance before that instance has aligned it.
#[derive(Debug, Default)]
pub struct BarrierTracker {
    pending: std::cell::Cell<usize>,
    aligning: std::cell::Cell<u64>,
    /// Checkpoints up to this id are void (a node failed while they were
    /// in flight, and the job recovered live): their barriers are ignored.
    aborted: std::cell::Cell<u64>,
}

impl BarrierTracker {
    /// Whether an item that passed barrier `passed` must wait: an alignment
    /// of that barrier (or a later one) is in progress on this worker.
    pub fn holds(&self, passed: u64) -> bool {
        passed > 0 && self.pending.get() > 0 && passed >= self.aligning.get()
    }

    /// Voids every checkpoint up to `id`: alignments in progress end
    /// without forwarding their barrier (each frontier catches up when it
    /// is next used), and later barriers of those ids are ignored.
    pub fn abort_through(&self, id: u64) {
        if id > self.aborted.get() {
            self.aborted.set(id);
            self.pending.set(0);
            self.aligning.set(0);
        }
    }

    /// The highest void checkpoint id.
    pub fn aborted(&self) -> u64 {
        self.aborted.get()
    }
}

impl InputFrontier {
    /// A frontier over `inputs` inputs, all at watermark 0.
    pub fn new(inputs: usize) -> Self {
        Self {
            watermarks: vec![0; inputs],
            finished: vec![false; inputs],
            current: 0,
            barriers: vec![0; inputs],
            aligned: 0,
            tracker: None,
        }
    }

    /// Reports alignments in progress to `tracker`.
    pub fn set_tracker(&mut self, tracker: Rc<BarrierTracker>) {
        self.tracker = Some(tracker);
    }

    /// Input `i` delivered barrier `id`; returns the id to forward when the
    /// barrier is aligned. The caller forwards it, then calls
    /// [`InputFrontier::aligned_done`].
    pub fn barrier(&mut self, i: usize, id: u64) -> Option<u64> {
        self.sync_abort();
        if id <= self.aligned || self.finished.get(i).copied().unwrap_or(true) {
            // An input that ended takes part in no alignment: its barrier
            // is one a replacement of its producer sends when it replays
            // a stream this side had taken to its end (live recovery after
            // the producer finished); the simulator found the alignment it
            // started waiting for ever.
            return None;
        }
        let first = self.barriers.iter().zip(&self.finished).all(|(&b, &f)| f || b <= self.aligned);
        self.barriers[i] = self.barriers[i].max(id);
        if first {
            if let Some(t) = &self.tracker {
                t.pending.set(t.pending.get() + 1);
                t.aligning.set(t.aligning.get().max(id));
            }
        }
        self.try_align()
    }

    /// Catches up with checkpoints voided since this frontier was last
    /// used: an alignment of a void id is over, and never forwarded.
    fn sync_abort(&mut self) {
        let Some(t) = &self.tracker else { return };
        let a = t.aborted.get();
        if a > self.aligned {
            self.aligned = a;
            for b in &mut self.barriers {
                *b = (*b).min(a);
            }
        }
    }

    fn try_align(&mut self) -> Option<u64> {
        let started = self.barriers.iter().zip(&self.finished).any(|(&b, &f)| !f && b > self.aligned);
        if !started {
            return None;
        }
        let min = self.barriers.iter().zip(&self.finished).filter(|(_, &f)| !f).map(|(&b, _)| b).min()?;
        (min > self.aligned).then(|| {
            self.aligned = min;
            min
        })
    }

    /// The forwarded barrier has been handled downstream: the alignment is
    /// over.
    pub fn aligned_done(&mut self) {
        if let Some(t) = &self.tracker {
            t.pending.set(t.pending.get().saturating_sub(1));
        }
    }

    /// Input `i` reached `wm`; returns the new combined watermark if it advanced.
    pub fn advance(&mut self, i: usize, wm: Timestamp) -> Option<Timestamp> {
        if wm > self.watermarks[i] {
            self.watermarks[i] = wm;
        }
        let min = self.watermarks.iter().copied().min().unwrap_or(0);
        if min > self.current {
            self.current = min;
            Some(min)
        } else {
            None
        }
    }

    /// Input `i` ended; returns true when every input has. An input that
    /// ends can complete a barrier alignment: see
    /// [`InputFrontier::barrier_after_finish`].
    pub fn finish(&mut self, i: usize) -> bool {
        self.finished[i] = true;
        self.finished.iter().all(|f| *f)
    }

    /// After an input ended: the barrier to forward, if the ended input was
    /// the last one an alignment waited for (then call
    /// [`InputFrontier::aligned_done`] after forwarding it).
    pub fn barrier_after_finish(&mut self) -> Option<u64> {
        self.sync_abort();
        if self.finished.iter().all(|f| *f) {
            // Nothing to align any more; release a pending alignment.
            if self.barriers.iter().any(|&b| b > self.aligned) {
                self.aligned = self.barriers.iter().copied().max().unwrap_or(self.aligned);
                self.aligned_done();
            }
            return None;
        }
        self.try_align()
    }

    /// The combined watermark.
    pub fn watermark(&self) -> Timestamp {
        self.current
    }
}

/// An operator with two inputs (a join, a union), shared by the two pushes
/// that feed it on one worker.
pub trait BinaryOperator<A, B> {
    /// A record on the first input.
    fn push_first(&mut self, rec: A, meta: Meta);
    /// A record on the second input.
    fn push_second(&mut self, rec: B, meta: Meta);
    /// The combined watermark of both inputs advanced.
    fn watermark(&mut self, wm: Timestamp);
    /// Both inputs ended.
    fn finish(&mut self);
    /// Checkpoint barrier `id`, aligned over both inputs (see
    /// [`Push::barrier`]).
    fn barrier(&mut self, id: u64);
    /// The end of a burst of records on either input (see [`Push::flush`]).
    fn flush(&mut self);
}

/// The shared core behind the two input pushes of a [`BinaryOperator`].
pub struct BinaryCore<Op> {
    op: Op,
    frontier: InputFrontier,
}

impl<Op> BinaryCore<Op> {
    /// Wraps `op`; alignments in progress are reported to `tracker`.
    pub fn new(op: Op, tracker: Rc<BarrierTracker>) -> Rc<RefCell<Self>> {
        let mut frontier = InputFrontier::new(2);
        frontier.set_tracker(tracker);
        Rc::new(RefCell::new(Self { op, frontier }))
    }
}

/// The first input of a shared [`BinaryOperator`] (`B` is the type of the
/// other input).
pub struct FirstInput<Op, B> {
    core: Rc<RefCell<BinaryCore<Op>>>,
    _other: PhantomData<fn(B)>,
}

/// The second input of a shared [`BinaryOperator`] (`A` is the type of the
/// other input).
pub struct SecondInput<Op, A> {
    core: Rc<RefCell<BinaryCore<Op>>>,
    _other: PhantomData<fn(A)>,
}

impl<Op, B> FirstInput<Op, B> {
    /// The first input of `core`.
    pub fn new(core: Rc<RefCell<BinaryCore<Op>>>) -> Self {
        Self { core, _other: PhantomData }
    }
}

impl<Op, A> SecondInput<Op, A> {
    /// The second input of `core`.
    pub fn new(core: Rc<RefCell<BinaryCore<Op>>>) -> Self {
        Self { core, _other: PhantomData }
    }
}

fn binary_watermark<A, B, Op: BinaryOperator<A, B>>(
    core: &RefCell<BinaryCore<Op>>,
    side: usize,
    wm: Timestamp,
) {
    let mut c = core.borrow_mut();
    if let Some(w) = c.frontier.advance(side, wm) {
        c.op.watermark(w);
    }
}

fn binary_finish<A, B, Op: BinaryOperator<A, B>>(core: &RefCell<BinaryCore<Op>>, side: usize) {
    let mut c = core.borrow_mut();
    let all = c.frontier.finish(side);
    if let Some(id) = c.frontier.barrier_after_finish() {
        c.op.barrier(id);
        c.frontier.aligned_done();
    }
    if all {
        c.op.finish();
    }
}

fn binary_barrier<A, B, Op: BinaryOperator<A, B>>(core: &RefCell<BinaryCore<Op>>, side: usize, id: u64) {
    let mut c = core.borrow_mut();
    if let Some(id) = c.frontier.barrier(side, id) {
        c.op.barrier(id);
        c.frontier.aligned_done();
    }
}

impl<A, B, Op: BinaryOperator<A, B>> Push<A> for FirstInput<Op, B> {
    fn push(&mut self, rec: A, meta: Meta) {
        self.core.borrow_mut().op.push_first(rec, meta);
    }
    fn watermark(&mut self, wm: Timestamp) {
        binary_watermark::<A, B, Op>(&self.core, 0, wm);
    }
    fn finish(&mut self) {
        binary_finish::<A, B, Op>(&self.core, 0);
    }
    fn barrier(&mut self, id: u64) {
        binary_barrier::<A, B, Op>(&self.core, 0, id);
    }
    fn flush(&mut self) {
        self.core.borrow_mut().op.flush();
    }
}

impl<A, B, Op: BinaryOperator<A, B>> Push<B> for SecondInput<Op, A> {
    fn push(&mut self, rec: B, meta: Meta) {
        self.core.borrow_mut().op.push_second(rec, meta);
    }
    fn watermark(&mut self, wm: Timestamp) {
        binary_watermark::<A, B, Op>(&self.core, 1, wm);
    }
    fn finish(&mut self) {
        binary_finish::<A, B, Op>(&self.core, 1);
    }
    fn barrier(&mut self, id: u64) {
        binary_barrier::<A, B, Op>(&self.core, 1, id);
    }
    fn flush(&mut self) {
        self.core.borrow_mut().op.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_barrier_is_aligned_once_every_live_input_delivered_it() {
        let tracker = Rc::new(BarrierTracker::default());
        let mut f = InputFrontier::new(3);
        f.set_tracker(tracker.clone());
        assert_eq!(f.barrier(0, 1), None);
        assert!(tracker.holds(1), "input 0 passed barrier 1 and must wait");
        assert!(!tracker.holds(0), "an item that has not passed it keeps running");
        assert_eq!(f.barrier(2, 1), None);
        // A duplicate changes nothing.
        assert_eq!(f.barrier(2, 1), None);
        assert_eq!(f.barrier(1, 1), Some(1));
        f.aligned_done();
        assert!(!tracker.holds(1));
        // An input that ends completes the next alignment.
        assert_eq!(f.barrier(0, 2), None);
        assert_eq!(f.barrier(1, 2), None);
        assert!(!f.finish(2));
        assert_eq!(f.barrier_after_finish(), Some(2));
        f.aligned_done();
        assert!(!tracker.holds(2));
        // With every input ended, a pending alignment is released.
        assert_eq!(f.barrier(0, 3), None);
        assert!(tracker.holds(3));
        f.finish(0);
        f.finish(1);
        assert_eq!(f.barrier_after_finish(), None);
        assert!(!tracker.holds(3));
    }

    #[test]
    fn an_aborted_alignment_releases_its_items_and_ignores_its_barriers() {
        let tracker = Rc::new(BarrierTracker::default());
        let mut f = InputFrontier::new(2);
        f.set_tracker(tracker.clone());
        assert_eq!(f.barrier(0, 4), None);
        assert!(tracker.holds(4), "aligning 4, waiting for input 1");
        // Input 1's producer failed: checkpoints up to 4 are void.
        tracker.abort_through(4);
        assert!(!tracker.holds(4), "the abort releases the held input");
        // Its replacement replays a barrier 4 (from before the failure): ignored.
        assert_eq!(f.barrier(1, 4), None);
        assert!(!tracker.holds(4));
        // The next checkpoint aligns as usual.
        assert_eq!(f.barrier(1, 5), None);
        assert!(tracker.holds(5));
        assert_eq!(f.barrier(0, 5), Some(5));
        f.aligned_done();
        assert!(!tracker.holds(5));
    }
}
