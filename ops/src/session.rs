//! Event-time session windows: a key's records closer than a gap to one
//! another make one session, aggregated incrementally, emitted as
//! `(key, start, end, accumulator)` when the watermark reaches its end.
//!
//! A record at `t` opens the session `[t, t + gap)`; sessions of a key
//! that intersect or touch (`s1 <= e2 && e1 >= s2`, as Flink's
//! `TimeWindow` merges them) merge, their accumulators combined by the
//! `merge` function. A session fires, and its state is removed, once the
//! watermark reaches its end. A record whose own session `[t, t + gap)`
//! would already have fired (`t + gap <= watermark`) is late: dropped and
//! counted in [`crate::window::late_records`]. A record never merges into a
//! session that has fired; it opens a new one.
//!
//! A key's open sessions live in one value of the instance's state store
//! (under the key's hash, so they move with its bin); a watermark below
//! the earliest open end touches no state (decision 26).

use std::cell::Cell;
use std::rc::Rc;
use std::sync::Arc;

use spate_core::metrics::JobMetrics;
use spate_core::push::{BoxPush, Push};
use spate_core::{Data, Key, KeyFn, KeyedStream, Meta, Stream, Timestamp};
use spate_state::{StateStore, ValueState};

use crate::keyed::{stateful, Opened, Saver};
use crate::window::{count_late, WindowResult};

/// A keyed stream grouped into event-time sessions.
pub struct SessionStream<K, T> {
    keyed: KeyedStream<K, T>,
    gap: Timestamp,
    ts: Rc<dyn Fn(&T) -> Timestamp>,
}

/// Session windows on keyed streams.
pub trait SessionExt<K: Key, T: Data> {
    /// Groups each key's records into sessions of inactivity `gap` (> 0);
    /// `ts` gives a record's event time.
    fn session(&self, gap: Timestamp, ts: impl Fn(&T) -> Timestamp + 'static) -> SessionStream<K, T>;
}

impl<K: Key, T: Data> SessionExt<K, T> for KeyedStream<K, T> {
    fn session(&self, gap: Timestamp, ts: impl Fn(&T) -> Timestamp + 'static) -> SessionStream<K, T> {
        assert!(gap > 0, "a session window needs a gap > 0");
        SessionStream { keyed: self.clone(), gap, ts: Rc::new(ts) }
    }
}

/// One open session: `[start, end)` and its accumulator.
type Session<A> = (Timestamp, Timestamp, A);

struct SessionAggregate<K, T, A> {
    store: StateStore,
    sessions: ValueState<K, Vec<Session<A>>>,
    key: KeyFn<K, T>,
    gap: Timestamp,
    ts: Rc<dyn Fn(&T) -> Timestamp>,
    init: Rc<dyn Fn() -> A>,
    fold: Rc<dyn Fn(&mut A, &T)>,
    merge: Rc<dyn Fn(&mut A, A)>,
    out: BoxPush<WindowResult<K, A>>,
    watermark: Timestamp,
    /// The earliest end of an open session (`MAX`: none).
    next_fire: Timestamp,
    fired: Vec<WindowResult<K, A>>,
    kept: Vec<(u64, K, Vec<Session<A>>)>,
    metrics: Arc<JobMetrics>,
    operator: String,
    saver: Saver,
}

impl<K: Key, T: Data, A: Data> Push<T> for SessionAggregate<K, T, A> {
    fn push(&mut self, rec: T, _meta: Meta) {
        let t = (self.ts)(&rec);
        let end = t.saturating_add(self.gap);
        if end <= self.watermark {
            count_late();
            return;
        }
        let (k, h) = self.key.key_and_hash(&rec);
        let (init, fold, merge) = (&self.init, &self.fold, &self.merge);
        let mut merged_end = end;
        let res = self.sessions.update(&mut self.store, h, &k, |old| {
            let mut sessions = old.unwrap_or_default();
            let mut acc = init();
            fold(&mut acc, &rec);
            let (mut s, mut e) = (t, end);
            // Merge every open session that intersects or touches [s, e).
            let mut i = 0;
            while i < sessions.len() {
                let (s2, e2, _) = &sessions[i];
                if *s2 <= e && *e2 >= s {
                    let (s2, e2, a2) = sessions.swap_remove(i);
                    s = s.min(s2);
                    e = e.max(e2);
                    merge(&mut acc, a2);
                    // The wider session may now touch one passed over.
                    i = 0;
                } else {
                    i += 1;
                }
            }
            merged_end = e;
            sessions.push((s, e, acc));
            sessions
        });
        if let Err(e) = res {
            self.metrics.fail(format!("operator `{}`: state update failed: {e}", self.operator));
            return;
        }
        self.next_fire = self.next_fire.min(merged_end);
    }

    fn watermark(&mut self, wm: Timestamp) {
        let wm = wm.max(self.watermark);
        self.watermark = wm;
        if wm >= self.next_fire {
            let next = Cell::new(Timestamp::MAX);
            let (fired, kept) = (&mut self.fired, &mut self.kept);
            let res = self.sessions.drain_filter(
                &mut self.store,
                |_, sessions| {
                    let due = sessions.iter().any(|(_, e, _)| *e <= wm);
                    if !due {
                        next.set(sessions.iter().fold(next.get(), |n, (_, e, _)| n.min(*e)));
                    }
                    due
                },
                |hash, k, sessions| {
                    let mut rest = Vec::new();
                    for (s, e, a) in sessions {
                        if e <= wm {
                            fired.push((k.clone(), s, e, a));
                        } else {
                            next.set(next.get().min(e));
                            rest.push((s, e, a));
                        }
                    }
                    if !rest.is_empty() {
                        kept.push((hash, k, rest));
                    }
                },
            );
            let mut res = res.map(drop);
            for (hash, k, rest) in self.kept.drain(..) {
                res = res.and(self.sessions.put(&mut self.store, hash, &k, &rest));
            }
            if let Err(e) = res {
                self.metrics.fail(format!("operator `{}`: firing sessions failed: {e}", self.operator));
            }
            self.next_fire = next.get();
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

impl<K: Key, T: Data> SessionStream<K, T> {
    /// Aggregates each session incrementally: `fold` adds a record to an
    /// accumulator that starts as `init()`, `merge` adds one session's
    /// accumulator to another's when they merge. Emits `(key, start, end,
    /// accumulator)` when the watermark reaches the session's end, in order
    /// of end.
    pub fn aggregate<A: Data>(
        &self,
        name: &str,
        init: impl Fn() -> A + 'static,
        fold: impl Fn(&mut A, &T) + 'static,
        merge: impl Fn(&mut A, A) + 'static,
    ) -> Stream<WindowResult<K, A>> {
        let init: Rc<dyn Fn() -> A> = Rc::new(init);
        let fold: Rc<dyn Fn(&mut A, &T)> = Rc::new(fold);
        let merge: Rc<dyn Fn(&mut A, A)> = Rc::new(merge);
        let (gap, ts) = (self.gap, self.ts.clone());
        self.keyed.keyed_unary(name, move |ctx, key, out| {
            let (init, fold, merge, ts) = (init.clone(), fold.clone(), merge.clone(), ts.clone());
            stateful(ctx, false, |Opened { mut store, saver, watermark }| {
                let sessions = ValueState::register(&mut store, "sessions").map_err(|e| e.to_string())?;
                Ok(Box::new(SessionAggregate {
                    store,
                    sessions,
                    key,
                    gap,
                    ts,
                    init,
                    fold,
                    merge,
                    out,
                    watermark,
                    next_fire: if watermark > 0 { 0 } else { Timestamp::MAX },
                    fired: Vec::new(),
                    kept: Vec::new(),
                    metrics: ctx.metrics.clone(),
                    operator: ctx.operator.to_string(),
                    saver,
                }) as BoxPush<T>)
            })
        })
    }
}
