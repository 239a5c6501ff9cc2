//! Keyed stateful operators: running aggregation (`fold`) and `reduce`.
//!
//! State lives in the instance's [`StateStore`] (memory-mapped, per bin) and
//! is reached only through typed handles; the operator structs hold the
//! handles and the user's functions, never keyed data.

use std::any::{Any, TypeId};
use std::rc::Rc;
use std::sync::Arc;

use spate_core::checkpoint::Checkpointer;
use spate_core::handoff::{Handoff, Movable, Mover};
use spate_core::metrics::JobMetrics;
use spate_core::push::{BoxPush, Push};
use spate_core::{Data, InstanceCtx, Key, KeyFn, KeyedStream, Meta, Stream, Timestamp};
use spate_state::{StateError, StateStore, StoreConfig, ValueState};

/// A stateful instance's link to the job's checkpoints: saves its store
/// when an aligned barrier reaches it.
pub(crate) struct Saver {
    checkpointer: Option<Rc<Checkpointer>>,
    instance: String,
    metrics: Arc<JobMetrics>,
}

impl Saver {
    /// Saves `store` as checkpoint `id`, with the instance's watermark (a
    /// failure fails the job).
    pub(crate) fn save(&self, store: &mut StateStore, id: u64, watermark: Timestamp) {
        if let Some(c) = &self.checkpointer {
            if let Err(e) = c.save(&self.instance, store, id, &watermark.to_le_bytes()) {
                self.metrics.fail(e.to_string());
            }
        }
    }
}

/// A stateful instance's store, fresh or (when the job restores) rebuilt
/// from the checkpoint, with the watermark the instance had then.
pub(crate) struct Opened {
    pub(crate) store: StateStore,
    pub(crate) saver: Saver,
    pub(crate) watermark: Timestamp,
}

/// Opens the state store of a stateful instance over the bins it owns;
/// registers the operator with the job's live handoffs (`movable`: its
/// instances hand bins off and take them in, see [`Mover`]).
pub(crate) fn open_store(ctx: &InstanceCtx<'_>, movable: bool) -> Result<Opened, String> {
    if let Some(b) = ctx.handoff {
        b.register_keyed(ctx.operator, movable);
    }
    let dir = ctx.state_dir();
    let instance = ctx.instance();
    let saver = Saver { checkpointer: ctx.checkpointer.cloned(), instance, metrics: ctx.metrics.clone() };
    let failed = |what: &str, e: &dyn std::fmt::Display| {
        format!(
            "operator `{}` on worker {}: cannot {what} its state store in {}: {e}",
            ctx.operator,
            ctx.worker,
            dir.display()
        )
    };
    if let Some(c) = ctx.checkpointer {
        c.register();
        if c.restoring().is_some() {
            // The old run's live files are replaced by the checkpoint.
            match std::fs::remove_dir_all(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(failed("clear", &e)),
            }
            let restored = c
                .restore_instance(ctx.operator, ctx.bins, StoreConfig::new(&dir, ctx.bins_log2))
                .map_err(|e| e.to_string())?;
            if let Some((store, metas)) = restored {
                // Gathered from several old parts (a rescaled restore), the
                // instance resumes at the least of their watermarks: no
                // window fires early, and none fires twice (a fired
                // window's state is gone from its part).
                let watermark = metas
                    .iter()
                    .map(|meta| meta.get(..8).and_then(|b| b.try_into().ok()).map_or(0, u64::from_le_bytes))
                    .min()
                    .unwrap_or(0);
                return Ok(Opened { store, saver, watermark });
            }
        }
    }
    let store = StateStore::create(StoreConfig::new(&dir, ctx.bins_log2), ctx.bins)
        .map_err(|e| failed("create", &e))?;
    Ok(Opened { store, saver, watermark: 0 })
}

/// A push that has failed to start: it drops records (the job is already
/// marked failed and stops).
pub(crate) struct Failed;

impl<T> Push<T> for Failed {
    fn push(&mut self, _rec: T, _meta: Meta) {}
    fn watermark(&mut self, _wm: Timestamp) {}
    fn finish(&mut self) {}
    fn barrier(&mut self, _id: u64) {}
    fn flush(&mut self) {}
}

/// Creates a stateful instance (`movable`: see [`open_store`]), or marks
/// the job failed and returns a [`Failed`] push.
pub(crate) fn stateful<T: 'static>(
    ctx: &InstanceCtx<'_>,
    movable: bool,
    make: impl FnOnce(Opened) -> Result<BoxPush<T>, String>,
) -> BoxPush<T> {
    match open_store(ctx, movable).and_then(make) {
        Ok(p) => p,
        Err(e) => {
            ctx.metrics.fail(e);
            Box::new(Failed)
        }
    }
}

/// A running update per key, `fold`'s and `reduce`'s: for every record the
/// key's value becomes `step(old value, record)`, and `emit(key, new
/// value)` goes downstream.
struct PerKey<K, T, V, O, S, E> {
    store: StateStore,
    acc: ValueState<K, V>,
    key: KeyFn<K, T>,
    step: S,
    emit: E,
    out: BoxPush<O>,
    metrics: Arc<JobMetrics>,
    operator: String,
    saver: Saver,
    /// A burst's keys and their hashes, and its results (see
    /// `push_burst`); allocated once.
    keys: Vec<K>,
    hashes: Vec<u64>,
    results: Vec<(O, Meta)>,
    /// With live handoffs: its part in them.
    moving: Option<Box<Mover<T>>>,
}

impl<K, T, V, O, S, E> PerKey<K, T, V, O, S, E>
where
    K: Key,
    T: Data,
    V: Data,
    O: 'static,
    S: Fn(Option<V>, &T) -> V,
    E: Fn(K, V) -> O,
{
    /// Updates the state of a burst (`keys` and `hashes` of `recs`, which
    /// it empties) through [`ValueState::update_burst`], and sends the
    /// results downstream as one burst.
    ///
    /// Compiled twice, for the target's baseline and for AVX2 with BMI2
    /// (where the CPU has them: [`spate_state::cpu::vectors`]): the whole
    /// loop, the state's lookups inlined in it, then broadcasts a key's
    /// control tag in one instruction instead of four and shifts by a
    /// register without tying up `cl`, which leaves registers for what
    /// was reloaded from the stack (keyed-sum: 91.3 → 89.5 instructions a
    /// record, ×1.032–1.036 with one and two workers, 9 rounds of 20 M).
    fn update_burst(&mut self, recs: &mut Vec<(T, Meta)>, hashes: &[u64], keys: Vec<K>) {
        #[cfg(target_arch = "x86_64")]
        if spate_state::cpu::vectors() >= spate_state::cpu::Vectors::Avx2 {
            // SAFETY: the CPU has what the function is compiled for.
            return unsafe { self.update_burst_avx2(recs, hashes, keys) };
        }
        self.update_burst_any(recs, hashes, keys)
    }

    /// `update_burst` compiled for AVX2, BMI1, BMI2, LZCNT and POPCNT.
    ///
    /// # Safety
    ///
    /// The CPU must have them.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,bmi1,bmi2,lzcnt,popcnt")]
    unsafe fn update_burst_avx2(&mut self, recs: &mut Vec<(T, Meta)>, hashes: &[u64], keys: Vec<K>) {
        self.update_burst_any(recs, hashes, keys)
    }

    /// `update_burst`, for either form.
    #[inline(always)]
    fn update_burst_any(&mut self, recs: &mut Vec<(T, Meta)>, hashes: &[u64], keys: Vec<K>) {
        if TypeId::of::<O>() == TypeId::of::<T>() {
            return self.update_burst_in_place(recs, hashes, keys);
        }
        let mut results = std::mem::take(&mut self.results);
        let (step, emit) = (&self.step, &self.emit);
        // One slice each, shared by the state's loop and both closures, cut
        // to the hashes' length: that bounds every index the state's loop
        // passes, so the closures need no bounds checks.
        let n = hashes.len();
        let (burst, key_slice) = (&recs[..n], &keys[..n]);
        let r = self.acc.update_burst(
            &mut self.store,
            hashes,
            key_slice,
            |i, old| step(old, &burst[i].0),
            |i, v| results.push((emit(key_slice[i].clone(), v), burst[i].1)),
        );
        recs.clear();
        if let Err(e) = r {
            self.fail_update(&e);
        }
        self.out.push_burst(&mut results);
        (self.keys, self.results) = (keys, results);
    }

    /// As `update_burst`, for results of the records' own type (`O` is
    /// `T`: `reduce`, or a `fold` of `(key, accumulator)` pairs): each
    /// result replaces its record in `recs`, which then goes downstream as
    /// the burst, so no second vector is written and read.
    #[inline(always)]
    fn update_burst_in_place(&mut self, recs: &mut Vec<(T, Meta)>, hashes: &[u64], keys: Vec<K>) {
        let (step, emit) = (&self.step, &self.emit);
        debug_assert_eq!(hashes.len(), recs.len());
        // The callers make a hash for every record; were one short, the
        // records past the last hash would be dropped, as `update_burst`
        // drops them, not passed on unapplied.
        let n = hashes.len().min(recs.len());
        recs.truncate(n);
        let key_slice = &keys[..n];
        // Both closures reach the records through this one pointer (no
        // reference to them lives across the call), each at the index the
        // state's loop passes, which is below `n`.
        let base = recs.as_mut_ptr();
        let r = self.acc.update_burst(
            &mut self.store,
            &hashes[..n],
            key_slice,
            // SAFETY: `i < n <= recs.len()`; the record is read before its
            // result is written (`done(i, ..)` follows `f(i, ..)`).
            |i, old| step(old, unsafe { &(*base.add(i)).0 }),
            |i, v| {
                // SAFETY: `i < n`, the length of `key_slice` (as above).
                let result = emit(unsafe { key_slice.get_unchecked(i) }.clone(), v);
                // SAFETY: `O` is `T` (their `TypeId`s are equal, checked by
                // the caller), and `i < n <= recs.len()`: the assignment
                // drops the record and puts its result in its place.
                unsafe { (*base.cast::<(O, Meta)>().add(i)).0 = result };
            },
        );
        if let Err(e) = r {
            recs.clear();
            self.fail_update(&e);
        }
        if let Some(results) = (recs as &mut dyn Any).downcast_mut::<Vec<(O, Meta)>>() {
            self.out.push_burst(results);
        }
        recs.clear();
        self.keys = keys;
    }

    /// A burst while an incoming step's records are held: one by one.
    #[cold]
    fn push_each(&mut self, recs: &mut Vec<(T, Meta)>) {
        for (rec, meta) in recs.drain(..) {
            self.push_one(rec, meta);
        }
        self.out.flush();
    }

    /// One record: held while its bin's state is on its way, else applied.
    fn push_one(&mut self, rec: T, meta: Meta) {
        let (key, hash) = self.key.key_and_hash(&rec);
        if let Some(m) = self.moving.as_mut().filter(|m| m.holds(hash)) {
            return m.hold(rec, meta);
        }
        self.apply_out(rec, key, hash, meta);
    }

    /// One record applied now.
    fn push_now(&mut self, rec: T, meta: Meta) {
        let (key, hash) = self.key.key_and_hash(&rec);
        self.apply_out(rec, key, hash, meta);
    }

    /// Applies `rec` and sends its result downstream.
    #[inline(always)]
    fn apply_out(&mut self, rec: T, key: K, hash: u64, meta: Meta) {
        if let Some(result) = self.apply(rec, key, hash) {
            self.out.push(result, meta);
        }
    }

    /// A state update failed: so does the job.
    #[cold]
    fn fail_update(&self, e: &StateError) {
        self.metrics.fail(format!("operator `{}`: state update failed: {e}", self.operator));
    }

    /// Applies `rec` (of `key`, whose hash is `hash`) to its key's value;
    /// returns the result to emit (`None`: the update failed, and so did
    /// the job).
    #[inline(always)]
    fn apply(&mut self, rec: T, key: K, hash: u64) -> Option<O> {
        let step = &self.step;
        match self.acc.update(&mut self.store, hash, &key, |old| step(old, &rec)) {
            Ok(v) => Some((self.emit)(key, v)),
            Err(e) => {
                self.fail_update(&e);
                None
            }
        }
    }
}

/// Its part in live handoffs: the protocol's sequence is [`Movable`]'s.
impl<K, T, V, O, S, E> Movable<T> for PerKey<K, T, V, O, S, E>
where
    K: Key,
    T: Data,
    V: Data,
    O: 'static,
    S: Fn(Option<V>, &T) -> V,
    E: Fn(K, V) -> O,
{
    fn parts(&mut self) -> (&str, &mut StateStore, Option<&mut Mover<T>>) {
        (&self.operator, &mut self.store, self.moving.as_deref_mut())
    }
    fn check_parcel(&self, parcel: &mut StateStore) -> Result<(), String> {
        ValueState::<K, V>::register(parcel, "acc").map(drop).map_err(|e| e.to_string())
    }
    fn revalidate(&mut self) -> Result<(), String> {
        self.acc = ValueState::register(&mut self.store, "acc").map_err(|e| e.to_string())?;
        Ok(())
    }
    fn apply_held(&mut self, rec: T, meta: Meta) {
        self.push_now(rec, meta);
    }
    fn flush_out(&mut self) {
        self.out.flush();
    }
    fn finish_out(&mut self) {
        self.out.finish();
    }
    fn fail(&mut self, reason: String) {
        self.metrics.fail(reason);
    }
}

impl<K, T, V, O, S, E> Push<T> for PerKey<K, T, V, O, S, E>
where
    K: Key,
    T: Data,
    V: Data,
    O: 'static,
    S: Fn(Option<V>, &T) -> V,
    E: Fn(K, V) -> O,
{
    /// A lone record (not part of a burst) is applied at once.
    fn push(&mut self, rec: T, meta: Meta) {
        if self.handoff_turn() {
            return self.push_one(rec, meta);
        }
        self.push_now(rec, meta);
    }
    fn watermark(&mut self, wm: Timestamp) {
        self.out.watermark(wm);
    }
    /// Ends the output, unless an incoming step's records are held: then
    /// once its state is merged and they are applied (see `try_merge`).
    fn finish(&mut self) {
        self.on_finish();
    }
    fn barrier(&mut self, id: u64) {
        self.saver.save(&mut self.store, id, 0);
        self.out.barrier(id);
    }
    fn flush(&mut self) {
        self.out.flush();
    }
    fn handoff(&mut self, h: &Handoff) {
        self.on_handoff(h);
    }
    /// A whole burst at once (what an exchange hands a keyed operator):
    /// its keys and hashes first, then the updates through
    /// [`ValueState::update_burst`], which fetches the state of the records
    /// further on while it updates; the results go downstream as
    /// one burst.
    fn push_burst(&mut self, recs: &mut Vec<(T, Meta)>) {
        if self.handoff_turn() {
            return self.push_each(recs);
        }
        let mut hashes = std::mem::take(&mut self.hashes);
        hashes.clear();
        let mut keys = std::mem::take(&mut self.keys);
        keys.clear();
        self.key.keys_and_hashes(recs, &mut keys, &mut hashes);
        self.update_burst(recs, &hashes, keys);
        self.hashes = hashes;
    }

    /// As `push_burst`, with the keys the exchange routed the records by
    /// (those of this operator's key function) and their hashes: the keys
    /// are taken over, not worked out again.
    fn push_burst_keyed(&mut self, recs: &mut Vec<(T, Meta)>, hashes: &[u64], keys: &mut dyn Any) {
        if self.handoff_turn() {
            return self.push_each(recs);
        }
        let Some(keys) =
            keys.downcast_mut::<Vec<K>>().filter(|k| k.len() == recs.len() && hashes.len() == recs.len())
        else {
            return self.push_burst(recs);
        };
        #[cfg(debug_assertions)]
        for (((rec, _), k), &h) in recs.iter().zip(keys.iter()).zip(hashes) {
            assert!(self.key.key_and_hash(rec) == (k.clone(), h), "an exchange routed by another key");
        }
        // Swap buffers: the exchange clears ours before it fills it again.
        let keys = std::mem::replace(keys, std::mem::take(&mut self.keys));
        self.update_burst(recs, hashes, keys);
    }
}

/// Opens a [`PerKey`] instance (its store and value table, with room for
/// its share of `expected_keys` keys if given) for `ctx`.
fn per_key<K, T, V, O, S, E>(
    ctx: &InstanceCtx<'_>,
    key: KeyFn<K, T>,
    out: BoxPush<O>,
    expected_keys: Option<u64>,
    step: S,
    emit: E,
) -> BoxPush<T>
where
    K: Key,
    T: Data,
    V: Data,
    O: 'static,
    S: Fn(Option<V>, &T) -> V + 'static,
    E: Fn(K, V) -> O + 'static,
{
    stateful(ctx, true, |Opened { mut store, saver, .. }| {
        let acc = ValueState::register(&mut store, "acc").map_err(|e| e.to_string())?;
        if let Some(keys) = expected_keys {
            acc.reserve(&mut store, keys).map_err(|e| e.to_string())?;
        }
        Ok(Box::new(PerKey {
            store,
            acc,
            key,
            step,
            emit,
            out,
            metrics: ctx.metrics.clone(),
            operator: ctx.operator.to_string(),
            saver,
            keys: Vec::new(),
            hashes: Vec::new(),
            results: Vec::new(),
            moving: ctx.handoff.map(|board| Box::new(Mover::new(board, ctx.worker, ctx.bins_log2))),
        }) as BoxPush<T>)
    })
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
        // Shared by the workers' instances, but not type-erased: each
        // instance's step calls the user's functions directly (inlined into
        // its burst loop), not through a virtual call per record.
        let (init, f, expected) = (Rc::new(init), Rc::new(f), self.expected_keys());
        self.keyed_unary(name, move |ctx, key, out| {
            let (init, f) = (init.clone(), f.clone());
            let step = move |old: Option<A>, rec: &T| {
                let mut a = old.unwrap_or_else(|| init());
                f(&mut a, rec);
                a
            };
            per_key(ctx, key, out, expected, step, |k, a| (k, a))
        })
    }

    fn reduce(&self, name: &str, f: impl Fn(&T, &T) -> T + 'static) -> Stream<T> {
        let (f, expected) = (Rc::new(f), self.expected_keys());
        self.keyed_unary(name, move |ctx, key, out| {
            let f = f.clone();
            // A key's first record is its value: the one clone per key.
            let step = move |old: Option<T>, rec: &T| match old {
                Some(a) => f(&a, rec),
                None => rec.clone(),
            };
            per_key(ctx, key, out, expected, step, |_, v| v)
        })
    }
}
