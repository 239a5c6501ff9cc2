//! The simulator's job: on every worker a replayable source of `(key,
//! value)` records, repartitioned by key, a running sum and count per key
//! kept in the worker's state store (checkpointed, restored and moved like
//! any keyed state), and a sink that writes every `(key, sum, count)` to
//! a per-worker "file" with a commit log, rolled back to its commit when a
//! checkpoint is restored — the file sink's exactly-once contract.
//!
//! Every key belongs to one source worker, so the sequence of a key's
//! outputs has a closed form: the running sums of that source's records
//! of the key, in offset order, counts 1, 2, 3, ... Live handoffs move a
//! key's bin between workers, so its outputs may be spread over the files
//! of several: each count comes exactly once, in one of them.

use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::{Arc, Mutex};

use spate_state::{StateStore, StoreConfig, ValueState};

use crate::batch::Meta;
use crate::checkpoint::Checkpointer;
use crate::dataflow::{Dataflow, InstanceCtx, KeyFn, Parallelism};
use crate::handoff::{Handoff, Movable, Mover};
use crate::metrics::JobMetrics;
use crate::push::{BoxPush, Push};
use crate::source::{Source, SourceStatus, Step};
use crate::time::{now_ns, Timestamp};

/// The job's name.
pub(crate) const QUERY: &str = "sim";

/// What the workload does, per seed.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Workload {
    /// Records each source produces.
    pub(crate) records: u64,
    /// Keys of each source.
    pub(crate) keys: u64,
    /// One record every this many ns (from the job's schedule origin).
    pub(crate) every_ns: u64,
}

/// Record `i` of source `s`: its key and value.
pub(crate) fn record(s: u64, i: u64, keys: u64) -> (u64, u64) {
    let x = (s << 40) | i;
    let k = x.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(17) % keys.max(1);
    ((s << 32) | k, 1 + (i * 7 + s * 13) % 101)
}

/// The "files" the sinks write: each worker's file (a path) is the latest
/// of its versions (inodes). As the file sink does, a restore writes the
/// committed prefix into a new file that replaces the old one, so a zombie
/// still writing to the old one writes where no one reads; so does a fresh
/// start.
#[derive(Default, Debug)]
pub(crate) struct Files {
    /// Per worker, the version its path names now.
    pub(crate) current: BTreeMap<usize, usize>,
    pub(crate) versions: Vec<File>,
}

impl Files {
    /// The file worker `w`'s path names now.
    pub(crate) fn of(&self, w: usize) -> Option<&File> {
        self.current.get(&w).and_then(|&v| self.versions.get(v))
    }
}

/// One sink's file.
#[derive(Default, Debug)]
pub(crate) struct File {
    pub(crate) lines: Vec<(u64, u64, u64)>,
    pub(crate) commits: BTreeMap<u64, usize>,
}

/// The dataflow, writing into `files`.
pub(crate) fn build(w: Workload, files: Arc<Mutex<Files>>) -> impl Fn(&Dataflow) + Send + Sync {
    move |df: &Dataflow| {
        let files = files.clone();
        df.source("events", Parallelism::PerWorker, move |ctx: &InstanceCtx<'_>| Events {
            source: ctx.worker as u64,
            next: 0,
            w,
            origin_ns: ctx.config.schedule_origin_ns,
        })
        .key_by("by-key", |r: &(u64, u64)| r.0)
        .keyed_unary("sum", |ctx, key, out| Sum::open(ctx, key, out))
        .sink("out", move |ctx| Box::new(Sink::open(ctx, files.clone())));
    }
}

/// A source's records, one every `every_ns` from the schedule origin.
struct Events {
    source: u64,
    next: u64,
    w: Workload,
    origin_ns: u64,
}

impl Source<(u64, u64)> for Events {
    fn step(&mut self, out: &mut dyn Push<(u64, u64)>, max_records: usize) -> Step {
        let due = now_ns().saturating_sub(self.origin_ns) / self.w.every_ns.max(1) + 1;
        let until = due.min(self.w.records).min(self.next + max_records as u64);
        let emitted = until.saturating_sub(self.next) as usize;
        while self.next < until {
            out.push(record(self.source, self.next, self.w.keys), Meta::default());
            self.next += 1;
        }
        let status = if self.next >= self.w.records {
            SourceStatus::Done
        } else if emitted == 0 {
            SourceStatus::Idle { next_ns: None }
        } else {
            SourceStatus::Busy
        };
        Step { emitted, status }
    }

    fn offset(&self) -> Option<u64> {
        Some(self.next)
    }

    fn seek(&mut self, offset: u64) -> Result<(), String> {
        self.next = offset;
        Ok(())
    }
}

/// The running sum and count per key, in the state store; it takes part
/// in live handoffs through the production [`Mover`], as `ops`' keyed
/// operators do.
struct Sum {
    store: StateStore,
    acc: ValueState<u64, (u64, u64)>,
    key: KeyFn<u64, (u64, u64)>,
    out: BoxPush<(u64, u64, u64)>,
    checkpointer: Option<Rc<Checkpointer>>,
    operator: String,
    instance: String,
    metrics: Arc<JobMetrics>,
    moving: Option<Mover<(u64, u64)>>,
}

impl Sum {
    fn open(
        ctx: &InstanceCtx<'_>,
        key: KeyFn<u64, (u64, u64)>,
        out: BoxPush<(u64, u64, u64)>,
    ) -> BoxPush<(u64, u64)> {
        match Self::try_open(ctx, key, out) {
            Ok(s) => Box::new(s),
            Err(e) => {
                ctx.metrics.fail(e);
                Box::new(crate::push::Discard)
            }
        }
    }

    fn try_open(
        ctx: &InstanceCtx<'_>,
        key: KeyFn<u64, (u64, u64)>,
        out: BoxPush<(u64, u64, u64)>,
    ) -> Result<Self, String> {
        if let Some(b) = ctx.handoff {
            b.register_keyed(ctx.operator, true);
        }
        let dir = ctx.state_dir();
        let instance = ctx.instance();
        let mut store = None;
        if let Some(c) = ctx.checkpointer {
            c.register();
            if c.restoring().is_some() {
                let _ = std::fs::remove_dir_all(&dir);
                store = c
                    .restore_instance(ctx.operator, ctx.bins, StoreConfig::new(&dir, ctx.bins_log2))
                    .map_err(|e| e.to_string())?
                    .map(|(s, _)| s);
            }
        }
        let mut store = match store {
            Some(s) => s,
            None => StateStore::create(StoreConfig::new(&dir, ctx.bins_log2), ctx.bins)
                .map_err(|e| format!("creating the state of `{instance}`: {e}"))?,
        };
        let acc = ValueState::register(&mut store, "sum").map_err(|e| e.to_string())?;
        Ok(Self {
            store,
            acc,
            key,
            out,
            checkpointer: ctx.checkpointer.cloned(),
            operator: ctx.operator.to_string(),
            instance,
            metrics: ctx.metrics.clone(),
            moving: ctx.handoff.map(|b| Mover::new(b, ctx.worker, ctx.bins_log2)),
        })
    }

    fn apply(&mut self, rec: (u64, u64), meta: Meta) {
        let (key, hash) = self.key.key_and_hash(&rec);
        match self.acc.update(&mut self.store, hash, &key, |old| {
            let (s, n) = old.unwrap_or((0, 0));
            (s + rec.1, n + 1)
        }) {
            Ok((s, n)) => self.out.push((key, s, n), meta),
            Err(e) => self.metrics.fail(format!("`{}`: {e}", self.instance)),
        }
    }
}

impl Movable<(u64, u64)> for Sum {
    fn parts(&mut self) -> (&str, &mut StateStore, Option<&mut Mover<(u64, u64)>>) {
        (&self.operator, &mut self.store, self.moving.as_mut())
    }
    fn check_parcel(&self, parcel: &mut StateStore) -> Result<(), String> {
        ValueState::<u64, (u64, u64)>::register(parcel, "sum").map(drop).map_err(|e| e.to_string())
    }
    fn revalidate(&mut self) -> Result<(), String> {
        self.acc = ValueState::register(&mut self.store, "sum").map_err(|e| e.to_string())?;
        Ok(())
    }
    fn apply_held(&mut self, rec: (u64, u64), meta: Meta) {
        self.apply(rec, meta);
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

impl Push<(u64, u64)> for Sum {
    fn push(&mut self, rec: (u64, u64), meta: Meta) {
        if self.handoff_turn() {
            let (_, hash) = self.key.key_and_hash(&rec);
            if let Some(m) = self.moving.as_mut().filter(|m| m.holds(hash)) {
                return m.hold(rec, meta);
            }
        }
        self.apply(rec, meta);
    }
    fn watermark(&mut self, wm: Timestamp) {
        self.out.watermark(wm);
    }
    fn finish(&mut self) {
        self.on_finish();
    }
    fn barrier(&mut self, id: u64) {
        if let Some(c) = &self.checkpointer {
            if let Err(e) = c.save(&self.instance, &mut self.store, id, &[]) {
                self.metrics.fail(e.to_string());
            }
        }
        self.out.barrier(id);
    }
    fn flush(&mut self) {
        self.out.flush();
    }
    fn handoff(&mut self, h: &Handoff) {
        self.on_handoff(h);
    }
}

/// Writes `(key, sum, count)` lines to its worker's file; at a barrier
/// commits the file's length with the checkpoint; opened at a restore, it
/// rolls the file back to what was committed with the restored checkpoint.
struct Sink {
    /// The version of the file this sink writes.
    version: usize,
    files: Arc<Mutex<Files>>,
    pending: Vec<(u64, u64, u64)>,
    checkpointer: Option<Rc<Checkpointer>>,
    metrics: Arc<JobMetrics>,
}

impl Sink {
    fn open(ctx: &InstanceCtx<'_>, files: Arc<Mutex<Files>>) -> Self {
        let checkpointer = ctx.checkpointer.cloned();
        if let Some(c) = &checkpointer {
            c.register();
        }
        let restore = checkpointer.as_ref().and_then(|c| c.restoring());
        let mut version = usize::MAX;
        if let Ok(mut f) = files.lock() {
            let old = f.current.get(&ctx.worker).copied();
            match (restore, old) {
                (Some(id), old) => {
                    let prev = old.and_then(|v| f.versions.get(v));
                    match prev.and_then(|p| p.commits.get(&id).map(|&len| (p, len))) {
                        Some((p, len)) => {
                            let file = File {
                                lines: p.lines[..len.min(p.lines.len())].to_vec(),
                                commits: p
                                    .commits
                                    .iter()
                                    .filter(|(&k, _)| k <= id)
                                    .map(|(&k, &v)| (k, v))
                                    .collect(),
                            };
                            f.versions.push(file);
                            version = f.versions.len() - 1;
                            f.current.insert(ctx.worker, version);
                        }
                        None => ctx.metrics.fail(format!(
                            "sink of worker {}: its commit log has no entry for checkpoint {id}",
                            ctx.worker
                        )),
                    }
                }
                (None, _) => {
                    // As the file sink does: a new file replaces the old.
                    f.versions.push(File::default());
                    version = f.versions.len() - 1;
                    f.current.insert(ctx.worker, version);
                }
            }
        }
        Self { version, files, pending: Vec::new(), checkpointer, metrics: ctx.metrics.clone() }
    }

    fn write_out(&mut self) -> usize {
        let Ok(mut f) = self.files.lock() else { return 0 };
        let Some(file) = f.versions.get_mut(self.version) else { return 0 };
        file.lines.append(&mut self.pending);
        file.lines.len()
    }
}

impl Push<(u64, u64, u64)> for Sink {
    fn push(&mut self, rec: (u64, u64, u64), _meta: Meta) {
        self.pending.push(rec);
    }
    fn watermark(&mut self, _wm: Timestamp) {}
    fn flush(&mut self) {}
    fn barrier(&mut self, id: u64) {
        let len = self.write_out();
        if let Ok(mut f) = self.files.lock() {
            if let Some(file) = f.versions.get_mut(self.version) {
                file.commits.insert(id, len);
            }
        }
        if let Some(c) = &self.checkpointer {
            if let Err(e) = c.commit(id) {
                self.metrics.fail(e.to_string());
            }
        }
    }
    fn finish(&mut self) {
        self.write_out();
    }
}
