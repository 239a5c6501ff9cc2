//! The running top N per key: each key keeps its `n` best records so far
//! (SQL's `ROW_NUMBER() OVER (PARTITION BY key ORDER BY ...) <= n`, and
//! with `n = 1` its deduplication to the first or last row). A record that
//! enters its key's top N goes downstream with the rank it took (1 =
//! best); one that does not is dropped. The records it pushes down a rank,
//! or out, are not sent again: the stream is the inserts of SQL's
//! changelog, and a key's top N at any point is its last `n` inserts'
//! ranking.
//!
//! A key's top N is one value in the instance's state store under the
//! key's hash.

use std::cmp::Ordering;
use std::rc::Rc;
use std::sync::Arc;

use spate_core::metrics::JobMetrics;
use spate_core::push::{BoxPush, Push};
use spate_core::{Data, Key, KeyFn, KeyedStream, Meta, Stream, Timestamp};
use spate_state::{StateStore, ValueState};

use crate::keyed::{stateful, Opened, Saver};

struct TopN<K, T> {
    store: StateStore,
    top: ValueState<K, Vec<T>>,
    key: KeyFn<K, T>,
    n: usize,
    order: Rc<dyn Fn(&T, &T) -> Ordering>,
    out: BoxPush<(T, u64)>,
    watermark: Timestamp,
    metrics: Arc<JobMetrics>,
    operator: String,
    saver: Saver,
}

impl<K: Key, T: Data> Push<T> for TopN<K, T> {
    fn push(&mut self, rec: T, meta: Meta) {
        let (k, h) = self.key.key_and_hash(&rec);
        let mut top = self.top.get(&self.store, h, &k).unwrap_or_default();
        // After the records that rank as well or better: ties keep their
        // order of arrival.
        let at = top.partition_point(|t| (self.order)(t, &rec) != Ordering::Greater);
        if at >= self.n {
            return;
        }
        top.insert(at, rec.clone());
        top.truncate(self.n);
        if let Err(e) = self.top.put(&mut self.store, h, &k, &top) {
            self.metrics.fail(format!("operator `{}`: state update failed: {e}", self.operator));
            return;
        }
        self.out.push((rec, at as u64 + 1), meta);
    }

    fn watermark(&mut self, wm: Timestamp) {
        self.watermark = self.watermark.max(wm);
        self.out.watermark(self.watermark);
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

/// The running top N of a keyed stream.
pub trait TopNExt<K: Key, T: Data> {
    /// Keeps each key's `n` (> 0) best records by `order` (`Less`: the
    /// first ranks better); emits `(record, rank)` for each record that
    /// enters them.
    fn top_n(&self, name: &str, n: usize, order: impl Fn(&T, &T) -> Ordering + 'static) -> Stream<(T, u64)>;
}

impl<K: Key, T: Data> TopNExt<K, T> for KeyedStream<K, T> {
    fn top_n(&self, name: &str, n: usize, order: impl Fn(&T, &T) -> Ordering + 'static) -> Stream<(T, u64)> {
        assert!(n > 0, "a top N needs n > 0");
        let order: Rc<dyn Fn(&T, &T) -> Ordering> = Rc::new(order);
        self.keyed_unary(name, move |ctx, key, out| {
            let order = order.clone();
            stateful(ctx, false, |Opened { mut store, saver, watermark }| {
                let top = ValueState::register(&mut store, "top-n").map_err(|e| e.to_string())?;
                Ok(Box::new(TopN {
                    store,
                    top,
                    key,
                    n,
                    order,
                    out,
                    watermark,
                    metrics: ctx.metrics.clone(),
                    operator: ctx.operator.to_string(),
                    saver,
                }) as BoxPush<T>)
            })
        })
    }
}
