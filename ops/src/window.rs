//! Event-time windows driven by watermarks: tumbling and sliding windows
//! with incremental aggregation, and a windowed two-input keyed join.
//!
//! A window `[start, start + size)` of a key fires when the operator's input
//! watermark reaches `start + size`; its state is then removed. Records that
//! arrive for a window that has already fired are late and dropped (counted
//! in the operator's `late` total; see [`late_records`]).
//!
//! Window state is keyed by `(key, window start)` in the instance's state
//! store under the *record key's* hash, so a window's state lives in the
//! key's bin and moves with it.

use std::cell::Cell;
use std::rc::Rc;
use std::sync::Arc;

use spate_core::metrics::JobMetrics;
use spate_core::push::{BinaryOperator, BoxPush, Push};
use spate_core::{Data, Key, KeyFn, KeyedStream, Meta, Stream, Timestamp};
use spate_state::{ListState, StateError, StateStore, ValueState};

use crate::keyed::{open_store, stateful, Failed, Opened, Saver};

/// A window assigner.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Window {
    /// Fixed-size, non-overlapping windows `[k*size, (k+1)*size)`.
    Tumbling {
        /// Window length, in event-time units.
        size: Timestamp,
    },
    /// Fixed-size windows starting every `slide` units; a record belongs to
    /// `size / slide` windows.
    Sliding {
        /// Window length.
        size: Timestamp,
        /// Distance between window starts.
        slide: Timestamp,
    },
}

impl Window {
    /// Tumbling windows of `size` (must be > 0).
    pub fn tumbling(size: Timestamp) -> Self {
        assert!(size > 0, "a tumbling window needs a size > 0");
        Window::Tumbling { size }
    }

    /// Sliding windows of `size` every `slide` (0 < slide <= size).
    pub fn sliding(size: Timestamp, slide: Timestamp) -> Self {
        assert!(slide > 0 && slide <= size, "a sliding window needs 0 < slide <= size");
        Window::Sliding { size, slide }
    }

    /// The window length.
    pub fn size(&self) -> Timestamp {
        match *self {
            Window::Tumbling { size } | Window::Sliding { size, .. } => size,
        }
    }

    fn slide(&self) -> Timestamp {
        match *self {
            Window::Tumbling { size } => size,
            Window::Sliding { slide, .. } => slide,
        }
    }

    /// The starts of the windows containing `ts`, earliest first.
    pub fn starts(&self, ts: Timestamp) -> impl Iterator<Item = Timestamp> {
        let (size, slide) = (self.size(), self.slide());
        let last = ts - ts % slide;
        // The earliest window containing ts starts after ts - size.
        let first_min = (ts + 1).saturating_sub(size);
        let first = first_min.div_ceil(slide) * slide;
        (0..).map(move |i| first + i * slide).take_while(move |s| *s <= last)
    }
}

thread_local! {
    static LATE: Cell<u64> = const { Cell::new(0) };
}

/// Late records dropped by window operators on this worker thread so far.
pub fn late_records() -> u64 {
    LATE.with(|l| l.get())
}

pub(crate) fn count_late() {
    LATE.with(|l| l.set(l.get() + 1));
}

/// A keyed stream with a window assigner and an event-time function.
pub struct WindowedStream<K, T> {
    pub(crate) keyed: KeyedStream<K, T>,
    pub(crate) window: Window,
    pub(crate) ts: Rc<dyn Fn(&T) -> Timestamp>,
}

/// Windows on keyed streams.
pub trait WindowExt<K: Key, T: Data> {
    /// Groups the keyed stream into event-time windows; `ts` gives a
    /// record's event time (consistent with the stream's watermarks).
    fn window(&self, window: Window, ts: impl Fn(&T) -> Timestamp + 'static) -> WindowedStream<K, T>;
}

impl<K: Key, T: Data> WindowExt<K, T> for KeyedStream<K, T> {
    fn window(&self, window: Window, ts: impl Fn(&T) -> Timestamp + 'static) -> WindowedStream<K, T> {
        WindowedStream { keyed: self.clone(), window, ts: Rc::new(ts) }
    }
}

/// A window's result: `(key, window start, window end, value)`.
pub type WindowResult<K, A> = (K, Timestamp, Timestamp, A);

struct WindowAggregate<K, T, A> {
    store: StateStore,
    acc: ValueState<(K, Timestamp), A>,
    key: KeyFn<K, T>,
    window: Window,
    ts: Rc<dyn Fn(&T) -> Timestamp>,
    init: Rc<dyn Fn() -> A>,
    f: Rc<dyn Fn(&mut A, &T)>,
    out: BoxPush<WindowResult<K, A>>,
    watermark: Timestamp,
    /// Earliest end of a window with state (`MAX` if none): watermarks below
    /// it fire nothing, so the state is not scanned.
    next_fire: Timestamp,
    fired: Vec<WindowResult<K, A>>,
    metrics: Arc<JobMetrics>,
    operator: String,
    saver: Saver,
}

impl<K: Key, T: Data, A: Data> Push<T> for WindowAggregate<K, T, A> {
    fn push(&mut self, rec: T, _meta: Meta) {
        let t = (self.ts)(&rec);
        let (k, h) = self.key.key_and_hash(&rec);
        let size = self.window.size();
        let mut composite = (k, 0);
        for start in self.window.starts(t) {
            let end = start.saturating_add(size);
            if end <= self.watermark {
                count_late();
                continue;
            }
            composite.1 = start;
            let (init, f) = (&self.init, &self.f);
            if let Err(e) = self.acc.update(&mut self.store, h, &composite, |old| {
                let mut a = old.unwrap_or_else(|| init());
                f(&mut a, &rec);
                a
            }) {
                self.metrics.fail(format!("operator `{}`: state update failed: {e}", self.operator));
                return;
            }
            self.next_fire = self.next_fire.min(end);
        }
    }

    fn watermark(&mut self, wm: Timestamp) {
        // After a restore, upstream watermarks restart below the one saved.
        let wm = wm.max(self.watermark);
        self.watermark = wm;
        if wm >= self.next_fire {
            let size = self.window.size();
            let mut next = Timestamp::MAX;
            let fired = &mut self.fired;
            let res = self.acc.drain_filter(
                &mut self.store,
                |(_, start), _| {
                    let end = start.saturating_add(size);
                    if end <= wm {
                        true
                    } else {
                        next = next.min(end);
                        false
                    }
                },
                |_, (k, start), a| fired.push((k, start, start.saturating_add(size), a)),
            );
            if let Err(e) = res {
                self.metrics.fail(format!("operator `{}`: firing windows failed: {e}", self.operator));
            }
            self.next_fire = next;
            // Fire in window order for a readable, stable output.
            self.fired.sort_by_key(|r| (r.2, r.1));
            for r in self.fired.drain(..) {
                self.out.push(r, Meta::default());
            }
        }
        self.out.watermark(wm);
    }

    fn finish(&mut self) {
        self.out.finish();
    }

    fn barrier(&mut self, id: u64) {
        self.saver.save(&mut self.store, id, self.watermark);
        self.out.barrier(id);
    }

    fn flush(&mut self) {
        self.out.flush();
    }
}

impl<K: Key, T: Data> WindowedStream<K, T> {
    /// Aggregates each key's window incrementally (`f` folds a record into
    /// the accumulator, starting from `init()`), and emits
    /// `(key, start, end, accumulator)` when the watermark passes the window's
    /// end.
    pub fn aggregate<A: Data>(
        &self,
        name: &str,
        init: impl Fn() -> A + 'static,
        f: impl Fn(&mut A, &T) + 'static,
    ) -> Stream<WindowResult<K, A>> {
        let init: Rc<dyn Fn() -> A> = Rc::new(init);
        let f: Rc<dyn Fn(&mut A, &T)> = Rc::new(f);
        let (window, ts) = (self.window, self.ts.clone());
        self.keyed.keyed_unary(name, move |ctx, key, out| {
            let (init, f, ts) = (init.clone(), f.clone(), ts.clone());
            stateful(ctx, false, |Opened { mut store, saver, watermark }| {
                let acc = ValueState::register(&mut store, "window-acc").map_err(|e| e.to_string())?;
                Ok(Box::new(WindowAggregate {
                    store,
                    acc,
                    key,
                    window,
                    ts,
                    init,
                    f,
                    out,
                    watermark,
                    // Restored windows fire at the first watermark past them.
                    next_fire: if watermark > 0 { 0 } else { Timestamp::MAX },
                    fired: Vec::new(),
                    metrics: ctx.metrics.clone(),
                    operator: ctx.operator.to_string(),
                    saver,
                }) as BoxPush<T>)
            })
        })
    }

    /// Joins two windowed streams on key and window: for every pair of
    /// records `(a, b)` with equal keys in the same window, emits
    /// `f(key, a, b)` as soon as the second of the two arrives. Both sides
    /// must use the same window assigner. Window contents are kept in
    /// append-lists in the state store until the window's end passes the
    /// watermark.
    pub fn join<B: Data, O: Data>(
        &self,
        other: &WindowedStream<K, B>,
        name: &str,
        f: impl Fn(&K, &T, &B) -> O + 'static,
    ) -> Stream<O> {
        assert_eq!(self.window, other.window, "a window join needs the same windows on both sides");
        let f: Rc<dyn Fn(&K, &T, &B) -> O> = Rc::new(f);
        let (window, ts_a, ts_b) = (self.window, self.ts.clone(), other.ts.clone());
        self.keyed.keyed_binary(&other.keyed, name, move |ctx, ka, kb, out| {
            let parts = open_store(ctx, false).and_then(|Opened { mut store, saver, watermark }| {
                let left = ListState::register(&mut store, "join-left").map_err(|e| e.to_string())?;
                let right = ListState::register(&mut store, "join-right").map_err(|e| e.to_string())?;
                Ok((store, left, right, saver, watermark))
            });
            match parts {
                Ok((store, left, right, saver, watermark)) => WindowJoin::Running(Box::new(JoinState {
                    store,
                    left,
                    right,
                    ka,
                    kb,
                    ts_a: ts_a.clone(),
                    ts_b: ts_b.clone(),
                    window,
                    f: f.clone(),
                    out,
                    watermark,
                    scratch_a: Vec::new(),
                    scratch_b: Vec::new(),
                    metrics: ctx.metrics.clone(),
                    operator: ctx.operator.to_string(),
                    saver,
                })),
                Err(e) => {
                    ctx.metrics.fail(e);
                    WindowJoin::Failed(Failed)
                }
            }
        })
    }
}

enum WindowJoin<K, A, B, O> {
    Running(Box<JoinState<K, A, B, O>>),
    Failed(Failed),
}

struct JoinState<K, A, B, O> {
    store: StateStore,
    left: ListState<(K, Timestamp), A>,
    right: ListState<(K, Timestamp), B>,
    ka: KeyFn<K, A>,
    kb: KeyFn<K, B>,
    ts_a: Rc<dyn Fn(&A) -> Timestamp>,
    ts_b: Rc<dyn Fn(&B) -> Timestamp>,
    window: Window,
    f: Rc<dyn Fn(&K, &A, &B) -> O>,
    out: BoxPush<O>,
    watermark: Timestamp,
    scratch_a: Vec<A>,
    scratch_b: Vec<B>,
    metrics: Arc<JobMetrics>,
    operator: String,
    saver: Saver,
}

/// One side of the symmetric window join: for every window of the record
/// that has not fired yet, appends the record to its side's list and calls
/// `emit` with each record already stored on the other side. Late windows
/// are counted and skipped.
#[allow(clippy::too_many_arguments)]
fn store_and_probe<K: Key, R: Data, S: Data>(
    store: &mut StateStore,
    own: &mut ListState<(K, Timestamp), R>,
    other: &mut ListState<(K, Timestamp), S>,
    scratch: &mut Vec<S>,
    (window, watermark): (Window, Timestamp),
    (key, hash, t): (K, u64, Timestamp),
    rec: &R,
    mut emit: impl FnMut(&K, &S),
) -> Result<(), StateError> {
    let size = window.size();
    let mut composite = (key, 0);
    for start in window.starts(t) {
        if start.saturating_add(size) <= watermark {
            count_late();
            continue;
        }
        composite.1 = start;
        own.append(store, hash, &composite, rec)?;
        scratch.clear();
        other.for_each(store, hash, &composite, |s| scratch.push(s));
        for s in scratch.iter() {
            emit(&composite.0, s);
        }
    }
    Ok(())
}

impl<K: Key, A: Data, B: Data, O: Data> BinaryOperator<A, B> for WindowJoin<K, A, B, O> {
    fn push_first(&mut self, rec: A, meta: Meta) {
        let WindowJoin::Running(s) = self else { return };
        let s = &mut **s;
        let t = (s.ts_a)(&rec);
        let (k, h) = s.ka.key_and_hash(&rec);
        let (out, f) = (&mut s.out, &s.f);
        let res = store_and_probe(
            &mut s.store,
            &mut s.left,
            &mut s.right,
            &mut s.scratch_b,
            (s.window, s.watermark),
            (k, h, t),
            &rec,
            |k, b| out.push(f(k, &rec, b), meta),
        );
        if let Err(e) = res {
            s.metrics.fail(format!("operator `{}`: state append failed: {e}", s.operator));
        }
    }

    fn push_second(&mut self, rec: B, meta: Meta) {
        let WindowJoin::Running(s) = self else { return };
        let s = &mut **s;
        let t = (s.ts_b)(&rec);
        let (k, h) = s.kb.key_and_hash(&rec);
        let (out, f) = (&mut s.out, &s.f);
        let res = store_and_probe(
            &mut s.store,
            &mut s.right,
            &mut s.left,
            &mut s.scratch_a,
            (s.window, s.watermark),
            (k, h, t),
            &rec,
            |k, a| out.push(f(k, a, &rec), meta),
        );
        if let Err(e) = res {
            s.metrics.fail(format!("operator `{}`: state append failed: {e}", s.operator));
        }
    }

    fn watermark(&mut self, wm: Timestamp) {
        let WindowJoin::Running(s) = self else { return };
        let wm = wm.max(s.watermark);
        s.watermark = wm;
        let size = s.window.size();
        let expired = |(_, start): &(K, Timestamp)| start.saturating_add(size) <= wm;
        let r1 = s.left.drain_filter(&mut s.store, expired, |_, _, _| {});
        let r2 = s.right.drain_filter(&mut s.store, expired, |_, _, _| {});
        if let Err(e) = r1.and(r2) {
            s.metrics.fail(format!("operator `{}`: expiring windows failed: {e}", s.operator));
        }
        s.out.watermark(wm);
    }

    fn finish(&mut self) {
        if let WindowJoin::Running(s) = self {
            s.out.finish();
        }
    }

    fn barrier(&mut self, id: u64) {
        if let WindowJoin::Running(s) = self {
            s.saver.save(&mut s.store, id, s.watermark);
            s.out.barrier(id);
        }
    }

    fn flush(&mut self) {
        if let WindowJoin::Running(s) = self {
            s.out.flush();
        }
    }
}

/// Drops the records that are late for every window of `window` that
/// holds them (their last window has ended: its end is at or below the
/// watermark), counting them in [`late_records`]; passes the others. Put
/// before a query's branches, it makes them all drop the same records: a
/// record it passes is late for no window of that assigner downstream,
/// whose watermarks lag its own.
struct DropLate<T> {
    window: Window,
    ts: Rc<dyn Fn(&T) -> Timestamp>,
    watermark: Timestamp,
    out: BoxPush<T>,
}

impl<T> Push<T> for DropLate<T> {
    fn push(&mut self, rec: T, meta: Meta) {
        let t = (self.ts)(&rec);
        let (size, slide) = (self.window.size(), self.window.slide());
        let last_end = (t - t % slide).saturating_add(size);
        if last_end <= self.watermark {
            count_late();
        } else {
            self.out.push(rec, meta);
        }
    }
    fn watermark(&mut self, wm: Timestamp) {
        self.watermark = self.watermark.max(wm);
        self.out.watermark(wm);
    }
    fn finish(&mut self) {
        self.out.finish();
    }
    fn barrier(&mut self, id: u64) {
        self.out.barrier(id);
    }
    fn flush(&mut self) {
        self.out.flush();
    }
}

/// Dropping late records before windows.
pub trait LateExt<T: Data> {
    /// Drops the records late for all their windows of `window` (event
    /// time `ts`); see the type's docs.
    fn drop_late(&self, name: &str, window: Window, ts: impl Fn(&T) -> Timestamp + 'static) -> Stream<T>;
}

impl<T: Data> LateExt<T> for Stream<T> {
    fn drop_late(&self, name: &str, window: Window, ts: impl Fn(&T) -> Timestamp + 'static) -> Stream<T> {
        let ts: Rc<dyn Fn(&T) -> Timestamp> = Rc::new(ts);
        self.unary(name, move |_ctx, out| {
            Box::new(DropLate { window, ts: ts.clone(), watermark: 0, out }) as BoxPush<T>
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tumbling_starts() {
        let w = Window::tumbling(10);
        assert_eq!(w.starts(0).collect::<Vec<_>>(), vec![0]);
        assert_eq!(w.starts(9).collect::<Vec<_>>(), vec![0]);
        assert_eq!(w.starts(10).collect::<Vec<_>>(), vec![10]);
    }

    #[test]
    fn sliding_starts() {
        let w = Window::sliding(10, 5);
        assert_eq!(w.starts(0).collect::<Vec<_>>(), vec![0]);
        assert_eq!(w.starts(7).collect::<Vec<_>>(), vec![0, 5]);
        assert_eq!(w.starts(10).collect::<Vec<_>>(), vec![5, 10]);
        let w = Window::sliding(10, 3);
        // windows containing 11: starts 3 ([3,13)), 6, 9
        assert_eq!(w.starts(11).collect::<Vec<_>>(), vec![3, 6, 9]);
    }
}
