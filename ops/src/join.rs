//! Two-input keyed joins without windows: the unbounded inner join of two
//! keyed streams (SQL's regular join of append-only inputs), and the
//! interval aggregate, where each record of the first input opens an
//! event-time interval of its key that records of the second input fold
//! into until the watermark passes it.
//!
//! Both keep their records in the instance's state store under the key's
//! hash, so they checkpoint, restore and move with the key's bin as the
//! window operators do.

use std::cell::Cell;
use std::rc::Rc;
use std::sync::Arc;

use spate_core::metrics::JobMetrics;
use spate_core::push::{BinaryOperator, BoxPush};
use spate_core::{Data, Key, KeyFn, KeyedStream, Meta, Stream, Timestamp};
use spate_state::{ListState, StateError, StateStore, ValueState};

use crate::keyed::{open_store, Failed, Opened, Saver};
use crate::window::count_late;

/// Joins of two keyed streams.
pub trait JoinExt<K: Key, A: Data> {
    /// The unbounded inner join on the key: for every pair of records `(a,
    /// b)` of equal keys, emits `f(key, a, b)` as soon as the second of
    /// the two arrives. Both inputs are kept for ever (filter them first:
    /// the state grows with every record kept).
    fn join<B: Data, O: Data>(
        &self,
        other: &KeyedStream<K, B>,
        name: &str,
        f: impl Fn(&K, &A, &B) -> O + 'static,
    ) -> Stream<O>;

    /// The interval aggregate: a record `a` of this stream opens the
    /// interval `span(a) = [start, end]` (inclusive) of its key, with the
    /// accumulator `init(a)`; every record `b` of `other` with that key and
    /// `ts_b(b)` in the interval is folded in with `fold`. When the
    /// watermark passes `end`, `(a, accumulator)` is emitted and the
    /// interval's state removed. A record of `other` folds into the
    /// intervals of its key that are open when it arrives; if none is, it
    /// waits for one until the watermark passes its time. A record of this
    /// stream whose interval has already passed the watermark is late:
    /// dropped and counted.
    #[allow(clippy::too_many_arguments)]
    fn interval_aggregate<B: Data, Acc: Data>(
        &self,
        other: &KeyedStream<K, B>,
        name: &str,
        span: impl Fn(&A) -> (Timestamp, Timestamp) + 'static,
        ts_b: impl Fn(&B) -> Timestamp + 'static,
        init: impl Fn(&A) -> Acc + 'static,
        fold: impl Fn(&mut Acc, &B) + 'static,
    ) -> Stream<(A, Acc)>;
}

impl<K: Key, A: Data> JoinExt<K, A> for KeyedStream<K, A> {
    fn join<B: Data, O: Data>(
        &self,
        other: &KeyedStream<K, B>,
        name: &str,
        f: impl Fn(&K, &A, &B) -> O + 'static,
    ) -> Stream<O> {
        let f: Rc<dyn Fn(&K, &A, &B) -> O> = Rc::new(f);
        self.keyed_binary(other, name, move |ctx, ka, kb, out| {
            let parts = open_store(ctx, false).and_then(|Opened { mut store, saver, watermark }| {
                let left = ListState::register(&mut store, "join-left").map_err(|e| e.to_string())?;
                let right = ListState::register(&mut store, "join-right").map_err(|e| e.to_string())?;
                Ok(Box::new(Unbounded {
                    store,
                    left,
                    right,
                    ka,
                    kb,
                    f: f.clone(),
                    out,
                    watermark,
                    scratch_a: Vec::new(),
                    scratch_b: Vec::new(),
                    metrics: ctx.metrics.clone(),
                    operator: ctx.operator.to_string(),
                    saver,
                }))
            });
            match parts {
                Ok(s) => Running::Yes(s),
                Err(e) => {
                    ctx.metrics.fail(e);
                    Running::No(Failed)
                }
            }
        })
    }

    fn interval_aggregate<B: Data, Acc: Data>(
        &self,
        other: &KeyedStream<K, B>,
        name: &str,
        span: impl Fn(&A) -> (Timestamp, Timestamp) + 'static,
        ts_b: impl Fn(&B) -> Timestamp + 'static,
        init: impl Fn(&A) -> Acc + 'static,
        fold: impl Fn(&mut Acc, &B) + 'static,
    ) -> Stream<(A, Acc)> {
        let span: Rc<dyn Fn(&A) -> (Timestamp, Timestamp)> = Rc::new(span);
        let ts_b: Rc<dyn Fn(&B) -> Timestamp> = Rc::new(ts_b);
        let init: Rc<dyn Fn(&A) -> Acc> = Rc::new(init);
        let fold: Rc<dyn Fn(&mut Acc, &B)> = Rc::new(fold);
        self.keyed_binary(other, name, move |ctx, ka, kb, out| {
            let parts = open_store(ctx, false).and_then(|Opened { mut store, saver, watermark }| {
                let open = ValueState::register(&mut store, "intervals").map_err(|e| e.to_string())?;
                let pending =
                    ListState::register(&mut store, "interval-pending").map_err(|e| e.to_string())?;
                Ok(Box::new(Interval {
                    store,
                    open,
                    pending,
                    ka,
                    kb,
                    span: span.clone(),
                    ts_b: ts_b.clone(),
                    init: init.clone(),
                    fold: fold.clone(),
                    out,
                    watermark,
                    next_fire: if watermark > 0 { 0 } else { Timestamp::MAX },
                    next_expiry: if watermark > 0 { 0 } else { Timestamp::MAX },
                    fired: Vec::new(),
                    kept: Vec::new(),
                    kept_pending: Vec::new(),
                    metrics: ctx.metrics.clone(),
                    operator: ctx.operator.to_string(),
                    saver,
                }))
            });
            match parts {
                Ok(s) => Running::Yes(s),
                Err(e) => {
                    ctx.metrics.fail(e);
                    Running::No(Failed)
                }
            }
        })
    }
}

/// A two-input operator that started, or one whose start failed the job.
enum Running<S> {
    Yes(Box<S>),
    No(Failed),
}

/// What both joins' instances do with barriers, flushes and the end.
trait Joined<A, B> {
    fn push_first(&mut self, rec: A, meta: Meta);
    fn push_second(&mut self, rec: B, meta: Meta);
    fn watermark(&mut self, wm: Timestamp);
    fn save(&mut self, id: u64);
    fn out_finish(&mut self);
    fn out_flush(&mut self);
}

impl<A, B, S: Joined<A, B>> BinaryOperator<A, B> for Running<S> {
    fn push_first(&mut self, rec: A, meta: Meta) {
        if let Running::Yes(s) = self {
            s.push_first(rec, meta);
        }
    }
    fn push_second(&mut self, rec: B, meta: Meta) {
        if let Running::Yes(s) = self {
            s.push_second(rec, meta);
        }
    }
    fn watermark(&mut self, wm: Timestamp) {
        if let Running::Yes(s) = self {
            s.watermark(wm);
        }
    }
    fn finish(&mut self) {
        if let Running::Yes(s) = self {
            s.out_finish();
        }
    }
    fn barrier(&mut self, id: u64) {
        if let Running::Yes(s) = self {
            s.save(id);
        }
    }
    fn flush(&mut self) {
        if let Running::Yes(s) = self {
            s.out_flush();
        }
    }
}

struct Unbounded<K, A, B, O> {
    store: StateStore,
    left: ListState<K, A>,
    right: ListState<K, B>,
    ka: KeyFn<K, A>,
    kb: KeyFn<K, B>,
    f: Rc<dyn Fn(&K, &A, &B) -> O>,
    out: BoxPush<O>,
    watermark: Timestamp,
    scratch_a: Vec<A>,
    scratch_b: Vec<B>,
    metrics: Arc<JobMetrics>,
    operator: String,
    saver: Saver,
}

impl<K: Key, A: Data, B: Data, O: Data> Unbounded<K, A, B, O> {
    fn failed(&self, e: &StateError) {
        self.metrics.fail(format!("operator `{}`: state append failed: {e}", self.operator));
    }
}

impl<K: Key, A: Data, B: Data, O: Data> Joined<A, B> for Unbounded<K, A, B, O> {
    fn push_first(&mut self, rec: A, meta: Meta) {
        let (k, h) = self.ka.key_and_hash(&rec);
        if let Err(e) = self.left.append(&mut self.store, h, &k, &rec) {
            return self.failed(&e);
        }
        let scratch = &mut self.scratch_b;
        scratch.clear();
        self.right.for_each(&self.store, h, &k, |b| scratch.push(b));
        for b in scratch.iter() {
            self.out.push((self.f)(&k, &rec, b), meta);
        }
    }

    fn push_second(&mut self, rec: B, meta: Meta) {
        let (k, h) = self.kb.key_and_hash(&rec);
        if let Err(e) = self.right.append(&mut self.store, h, &k, &rec) {
            return self.failed(&e);
        }
        let scratch = &mut self.scratch_a;
        scratch.clear();
        self.left.for_each(&self.store, h, &k, |a| scratch.push(a));
        for a in scratch.iter() {
            self.out.push((self.f)(&k, a, &rec), meta);
        }
    }

    fn watermark(&mut self, wm: Timestamp) {
        self.watermark = self.watermark.max(wm);
        self.out.watermark(self.watermark);
    }

    fn save(&mut self, id: u64) {
        self.saver.save(&mut self.store, id, self.watermark);
        self.out.barrier(id);
    }

    fn out_finish(&mut self) {
        self.out.finish();
    }

    fn out_flush(&mut self) {
        self.out.flush();
    }
}

/// An open interval: its record, `end` (inclusive) and accumulator.
type Open<A, Acc> = (A, Timestamp, Timestamp, Acc);

struct Interval<K, A, B, Acc> {
    store: StateStore,
    /// A key's open intervals: (record, start, end, accumulator).
    open: ValueState<K, Vec<Open<A, Acc>>>,
    /// Records of the second input that came before any interval of their
    /// key, with their times.
    pending: ListState<K, (Timestamp, B)>,
    ka: KeyFn<K, A>,
    kb: KeyFn<K, B>,
    span: Rc<dyn Fn(&A) -> (Timestamp, Timestamp)>,
    ts_b: Rc<dyn Fn(&B) -> Timestamp>,
    init: Rc<dyn Fn(&A) -> Acc>,
    fold: Rc<dyn Fn(&mut Acc, &B)>,
    out: BoxPush<(A, Acc)>,
    watermark: Timestamp,
    /// The least `end + 1` of an open interval (`MAX`: none).
    next_fire: Timestamp,
    /// The least `time + 1` of a pending record (`MAX`: none).
    next_expiry: Timestamp,
    fired: Vec<(Timestamp, A, Acc)>,
    kept: Vec<(u64, K, Vec<Open<A, Acc>>)>,
    kept_pending: Vec<(u64, K, (Timestamp, B))>,
    metrics: Arc<JobMetrics>,
    operator: String,
    saver: Saver,
}

impl<K: Key, A: Data, B: Data, Acc: Data> Interval<K, A, B, Acc> {
    fn failed(&self, what: &str, e: &StateError) {
        self.metrics.fail(format!("operator `{}`: {what} failed: {e}", self.operator));
    }

    /// Emits the intervals that ended before `wm` (in order of end).
    fn fire(&mut self, wm: Timestamp) {
        let next = Cell::new(Timestamp::MAX);
        let (fired, kept) = (&mut self.fired, &mut self.kept);
        let res = self.open.drain_filter(
            &mut self.store,
            |_, open| {
                let due = open.iter().any(|o| o.2 < wm);
                if !due {
                    next.set(open.iter().fold(next.get(), |n, o| n.min(o.2.saturating_add(1))));
                }
                due
            },
            |hash, k, open| {
                let mut rest = Vec::new();
                for (a, s, e, acc) in open {
                    if e < wm {
                        fired.push((e, a, acc));
                    } else {
                        next.set(next.get().min(e.saturating_add(1)));
                        rest.push((a, s, e, acc));
                    }
                }
                if !rest.is_empty() {
                    kept.push((hash, k, rest));
                }
            },
        );
        let mut res = res.map(drop);
        for (hash, k, rest) in self.kept.drain(..) {
            res = res.and(self.open.put(&mut self.store, hash, &k, &rest));
        }
        if let Err(e) = res {
            self.failed("firing intervals", &e);
        }
        self.next_fire = next.get();
        self.fired.sort_by_key(|f| f.0);
        for (_, a, acc) in self.fired.drain(..) {
            self.out.push((a, acc), Meta::default());
        }
    }

    /// Drops pending records that no interval can take any more (their
    /// time is below `wm`: an interval holding it would be late).
    fn expire(&mut self, wm: Timestamp) {
        let next = Cell::new(Timestamp::MAX);
        let kept = &mut self.kept_pending;
        let res = self.pending.drain_filter(
            &mut self.store,
            |_| true,
            |hash, k, items| {
                for (t, b) in items {
                    if t >= wm {
                        next.set(next.get().min(t.saturating_add(1)));
                        kept.push((hash, k.clone(), (t, b)));
                    }
                }
            },
        );
        let mut res = res.map(drop);
        for (hash, k, item) in self.kept_pending.drain(..) {
            res = res.and(self.pending.append(&mut self.store, hash, &k, &item));
        }
        if let Err(e) = res {
            self.failed("expiring pending records", &e);
        }
        self.next_expiry = next.get();
    }
}

impl<K: Key, A: Data, B: Data, Acc: Data> Joined<A, B> for Interval<K, A, B, Acc> {
    fn push_first(&mut self, rec: A, _meta: Meta) {
        let (start, end) = (self.span)(&rec);
        if end < self.watermark {
            count_late();
            return;
        }
        let (k, h) = self.ka.key_and_hash(&rec);
        let mut acc = (self.init)(&rec);
        // Records that came first, in the interval, fold in now; the others
        // stay pending for another interval of the key.
        let mut early = Vec::new();
        self.pending.for_each(&self.store, h, &k, |p| early.push(p));
        if !early.is_empty() {
            self.pending.remove(&mut self.store, h, &k);
            for (t, b) in early {
                if (start..=end).contains(&t) {
                    (self.fold)(&mut acc, &b);
                } else if let Err(e) = self.pending.append(&mut self.store, h, &k, &(t, b)) {
                    return self.failed("state append", &e);
                }
            }
        }
        let res = self.open.update(&mut self.store, h, &k, |old| {
            let mut open = old.unwrap_or_default();
            open.push((rec, start, end, acc));
            open
        });
        if let Err(e) = res {
            return self.failed("state update", &e);
        }
        self.next_fire = self.next_fire.min(end.saturating_add(1));
    }

    fn push_second(&mut self, rec: B, _meta: Meta) {
        let t = (self.ts_b)(&rec);
        let (k, h) = self.kb.key_and_hash(&rec);
        let fold = &self.fold;
        let mut any = false;
        let mut touched = false;
        if let Some(mut open) = self.open.get(&self.store, h, &k) {
            any = true;
            for (_, s, e, acc) in open.iter_mut() {
                if (*s..=*e).contains(&t) {
                    fold(acc, &rec);
                    touched = true;
                }
            }
            if touched {
                if let Err(e) = self.open.put(&mut self.store, h, &k, &open) {
                    return self.failed("state update", &e);
                }
            }
        }
        if !any && t >= self.watermark {
            if let Err(e) = self.pending.append(&mut self.store, h, &k, &(t, rec)) {
                return self.failed("state append", &e);
            }
            self.next_expiry = self.next_expiry.min(t.saturating_add(1));
        }
    }

    fn watermark(&mut self, wm: Timestamp) {
        let wm = wm.max(self.watermark);
        self.watermark = wm;
        if wm >= self.next_fire {
            self.fire(wm);
        }
        if wm >= self.next_expiry {
            self.expire(wm);
        }
        self.out.watermark(wm);
    }

    fn save(&mut self, id: u64) {
        self.saver.save(&mut self.store, id, self.watermark);
        self.out.barrier(id);
    }

    fn out_finish(&mut self) {
        self.out.finish();
    }

    fn out_flush(&mut self) {
        self.out.flush();
    }
}
