//! Keyed stateful operators: running aggregation (`fold`) and `reduce`.
//!
//! State lives in the instance's [`StateStore`] (memory-mapped, per bin) and
//! is reached only through typed handles; the operator structs hold the
//! handles and the user's functions, never keyed data.

use std::rc::Rc;
use std::sync::Arc;

use spate_core::metrics::JobMetrics;
use spate_core::push::{BoxPush, Push};
use spate_core::{Data, InstanceCtx, Key, KeyFn, KeyedStream, Meta, Stream, Timestamp};
use spate_state::{StateStore, StoreConfig, ValueState};

/// Opens the state store of a stateful instance over the bins it owns.
pub(crate) fn open_store(ctx: &InstanceCtx<'_>) -> Result<StateStore, String> {
    let dir = ctx.state_dir();
    StateStore::create(StoreConfig::new(&dir, ctx.bins_log2), ctx.bins).map_err(|e| {
        format!(
            "operator `{}` on worker {}: cannot create its state store in {}: {e}",
            ctx.operator,
            ctx.worker,
            dir.display()
        )
    })
}

/// A push that has failed to start: it drops records (the job is already
/// marked failed and stops).
pub(crate) struct Failed;

impl<T> Push<T> for Failed {
    fn push(&mut self, _rec: T, _meta: Meta) {}
    fn watermark(&mut self, _wm: Timestamp) {}
    fn finish(&mut self) {}
}

/// Creates a stateful instance, or marks the job failed and returns a
/// [`Failed`] push.
pub(crate) fn stateful<T: 'static>(
    ctx: &InstanceCtx<'_>,
    make: impl FnOnce(StateStore) -> Result<BoxPush<T>, String>,
) -> BoxPush<T> {
    match open_store(ctx).and_then(make) {
        Ok(p) => p,
        Err(e) => {
            ctx.metrics.fail(e);
            Box::new(Failed)
        }
    }
}

struct Fold<K, T, A> {
    store: StateStore,
    acc: ValueState<K, A>,
    key: KeyFn<K, T>,
    init: Rc<dyn Fn() -> A>,
    f: Rc<dyn Fn(&mut A, &T)>,
    out: BoxPush<(K, A)>,
    metrics: Arc<JobMetrics>,
    operator: String,
}

impl<K: Key, T: Data, A: Data> Push<T> for Fold<K, T, A> {
    #[inline]
    fn push(&mut self, rec: T, meta: Meta) {
        let (k, h) = self.key.key_and_hash(&rec);
        let (init, f) = (&self.init, &self.f);
        match self.acc.update(&mut self.store, h, &k, |old| {
            let mut a = old.unwrap_or_else(|| init());
            f(&mut a, &rec);
            a
        }) {
            Ok(a) => self.out.push((k, a), meta),
            Err(e) => self.metrics.fail(format!("operator `{}`: state update failed: {e}", self.operator)),
        }
    }
    fn watermark(&mut self, wm: Timestamp) {
        self.out.watermark(wm);
    }
    fn finish(&mut self) {
        self.out.finish();
    }
}

struct Reduce<K, T> {
    store: StateStore,
    acc: ValueState<K, T>,
    key: KeyFn<K, T>,
    f: Rc<dyn Fn(&T, &T) -> T>,
    out: BoxPush<T>,
    metrics: Arc<JobMetrics>,
    operator: String,
}

impl<K: Key, T: Data> Push<T> for Reduce<K, T> {
    #[inline]
    fn push(&mut self, rec: T, meta: Meta) {
        let (k, h) = self.key.key_and_hash(&rec);
        let f = &self.f;
        match self.acc.update(&mut self.store, h, &k, |old| match old {
            Some(a) => f(&a, &rec),
            None => rec,
        }) {
            Ok(a) => self.out.push(a, meta),
            Err(e) => self.metrics.fail(format!("operator `{}`: state update failed: {e}", self.operator)),
        }
    }
    fn watermark(&mut self, wm: Timestamp) {
        self.out.watermark(wm);
    }
    fn finish(&mut self) {
        self.out.finish();
    }
}

/// Stateful operators on a keyed stream.
pub trait KeyedExt<K: Key, T: Data> {
    /// A running aggregate per key: for every record, folds it into the key's
    /// accumulator (starting from `init()`) and emits `(key, accumulator)`.
    fn fold<A: Data>(
        &self,
        name: &str,
        init: impl Fn() -> A + 'static,
        f: impl Fn(&mut A, &T) + 'static,
    ) -> Stream<(K, A)>;

    /// A running reduction per key: emits `f(previous, record)` for every
    /// record (the record itself for a key's first).
    fn reduce(&self, name: &str, f: impl Fn(&T, &T) -> T + 'static) -> Stream<T>;
}

impl<K: Key, T: Data> KeyedExt<K, T> for KeyedStream<K, T> {
    fn fold<A: Data>(
        &self,
        name: &str,
        init: impl Fn() -> A + 'static,
        f: impl Fn(&mut A, &T) + 'static,
    ) -> Stream<(K, A)> {
        let init: Rc<dyn Fn() -> A> = Rc::new(init);
        let f: Rc<dyn Fn(&mut A, &T)> = Rc::new(f);
        self.keyed_unary(name, move |ctx, key, out| {
            let (init, f) = (init.clone(), f.clone());
            stateful(ctx, |mut store| {
                let acc = ValueState::register(&mut store, "acc").map_err(|e| e.to_string())?;
                Ok(Box::new(Fold {
                    store,
                    acc,
                    key,
                    init,
                    f,
                    out,
                    metrics: ctx.metrics.clone(),
                    operator: ctx.operator.to_string(),
                }) as BoxPush<T>)
            })
        })
    }

    fn reduce(&self, name: &str, f: impl Fn(&T, &T) -> T + 'static) -> Stream<T> {
        let f: Rc<dyn Fn(&T, &T) -> T> = Rc::new(f);
        self.keyed_unary(name, move |ctx, key, out| {
            let f = f.clone();
            stateful(ctx, |mut store| {
                let acc = ValueState::register(&mut store, "acc").map_err(|e| e.to_string())?;
                Ok(Box::new(Reduce {
                    store,
                    acc,
                    key,
                    f,
                    out,
                    metrics: ctx.metrics.clone(),
                    operator: ctx.operator.to_string(),
                }) as BoxPush<T>)
            })
        })
    }
}
