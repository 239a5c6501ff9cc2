//! Distinct records per event-time window, by key: the first record of
//! each key in each window passes, later ones of that key and window do
//! not. With the value to count distinct folded into the key, a count of
//! what passes is SQL's `COUNT(DISTINCT value)` per window.
//!
//! What has been seen is one small value per (key, window start) in the
//! instance's state store, under the key's hash; it is removed when the
//! watermark reaches the window's end. A record for a window that has
//! ended is late: dropped and counted.

use std::cell::Cell;
use std::rc::Rc;
use std::sync::Arc;

use spate_core::metrics::JobMetrics;
use spate_core::push::{BoxPush, Push};
use spate_core::{Data, Key, KeyFn, Meta, Stream, Timestamp};
use spate_state::{StateStore, ValueState};

use crate::keyed::{stateful, Opened, Saver};
use crate::window::{count_late, Window, WindowedStream};

struct Distinct<K, T> {
    store: StateStore,
    seen: ValueState<(K, Timestamp), u8>,
    key: KeyFn<K, T>,
    window: Window,
    ts: Rc<dyn Fn(&T) -> Timestamp>,
    out: BoxPush<T>,
    watermark: Timestamp,
    next_fire: Timestamp,
    metrics: Arc<JobMetrics>,
    operator: String,
    saver: Saver,
}

impl<K: Key, T: Data> Push<T> for Distinct<K, T> {
    fn push(&mut self, rec: T, meta: Meta) {
        let t = (self.ts)(&rec);
        let (k, h) = self.key.key_and_hash(&rec);
        let size = self.window.size();
        let mut composite = (k, 0);
        let mut new = false;
        for start in self.window.starts(t) {
            let end = start.saturating_add(size);
            if end <= self.watermark {
                count_late();
                continue;
            }
            composite.1 = start;
            if self.seen.get(&self.store, h, &composite).is_none() {
                if let Err(e) = self.seen.put(&mut self.store, h, &composite, &1) {
                    self.metrics.fail(format!("operator `{}`: state update failed: {e}", self.operator));
                    return;
                }
                new = true;
                self.next_fire = self.next_fire.min(end);
            }
        }
        if new {
            self.out.push(rec, meta);
        }
    }

    fn watermark(&mut self, wm: Timestamp) {
        let wm = wm.max(self.watermark);
        self.watermark = wm;
        if wm >= self.next_fire {
            let size = self.window.size();
            let next = Cell::new(Timestamp::MAX);
            let res = self.seen.drain_filter(
                &mut self.store,
                |(_, start), _| {
                    let end = start.saturating_add(size);
                    if end <= wm {
                        return true;
                    }
                    next.set(next.get().min(end));
                    false
                },
                |_, _, _| {},
            );
            if let Err(e) = res {
                self.metrics.fail(format!("operator `{}`: expiring windows failed: {e}", self.operator));
            }
            self.next_fire = next.get();
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
    /// Passes a record if it is the first of its key in one of its windows
    /// (for tumbling windows: in its window); drops it otherwise. A record
    /// passes at most once, at once: its key's later records in the
    /// window do not.
    pub fn distinct(&self, name: &str) -> Stream<T> {
        let (window, ts) = (self.window, self.ts.clone());
        self.keyed.keyed_unary(name, move |ctx, key, out| {
            let ts = ts.clone();
            stateful(ctx, false, |Opened { mut store, saver, watermark }| {
                let seen = ValueState::register(&mut store, "distinct-seen").map_err(|e| e.to_string())?;
                Ok(Box::new(Distinct {
                    store,
                    seen,
                    key,
                    window,
                    ts,
                    out,
                    watermark,
                    next_fire: if watermark > 0 { 0 } else { Timestamp::MAX },
                    metrics: ctx.metrics.clone(),
                    operator: ctx.operator.to_string(),
                    saver,
                }) as BoxPush<T>)
            })
        })
    }
}
