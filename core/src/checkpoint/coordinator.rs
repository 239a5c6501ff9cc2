//! The job-wide checkpoint state shared by a job's workers
//! ([`CheckpointCoordinator`]): which checkpoint is requested and which is
//! complete, the participants' reports, the manifests it writes, and — on
//! a node of a cluster — its part of each checkpoint for the coordinator
//! and what the coordinator's deployment gave it ([`ClusterCheckpoints`]).

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::backups::{BackupNet, BackupTargets, Backups, TcpBackups};
use super::error::CheckpointError;
use super::manifest::{manifest_path, Manifest};

/// What a node of a cluster job is given for its checkpoints by the
/// coordinator's deployment (see `spate::control`): in a cluster the
/// coordinator, not worker 0, requests each checkpoint, collects every
/// node's part of it and tells the nodes when it is complete.
#[derive(Debug, Clone, Default)]
pub struct ClusterCheckpoints {
    /// The complete checkpoint to restore, if the job resumes.
    pub restore: Option<Manifest>,
    /// The backup nodes' replica services this node streams its
    /// checkpoints to (never itself); a checkpoint is only reported once
    /// each of them has acknowledged it whole.
    pub replicas: Vec<std::net::SocketAddr>,
    /// The job's id on the wire.
    pub cluster: u64,
    /// The deployment's epoch: a backup node refuses a worker's streams of
    /// an older epoch once a newer one connected.
    pub epoch: u64,
    /// Checkpoints up to this id are void: they were in flight when a node
    /// failed, and the job recovered live (their barriers, replayed from
    /// upstream buffers, are ignored).
    pub aborted: u64,
    /// This node joins a running job (its workers replace a failed node's
    /// and restore `restore`): the node's other shares keep running, so
    /// nothing of theirs in the data directory is removed.
    /// The runtime sets it from the placement's `join`.
    pub joining: bool,
    /// How checkpoints reach the backup nodes (`None`: over TCP to their
    /// replica services; the simulator has its own).
    pub backups: Option<BackupNet>,
}

#[derive(Default)]
struct Progress {
    reported: usize,
    offsets: BTreeMap<(String, usize), u64>,
    ahead: BTreeMap<(usize, usize, usize), u64>,
}

/// Job-wide checkpoint state shared by the workers.
pub struct CheckpointCoordinator {
    dir: PathBuf,
    workers: usize,
    interval_ms: u64,
    requested: AtomicU64,
    completed: AtomicU64,
    participants: AtomicUsize,
    workers_built: AtomicUsize,
    /// A source ended: later checkpoints could not complete, none is taken.
    stopped: AtomicBool,
    /// Checkpoints up to this id are void (see [`CheckpointCoordinator::abort_through`]).
    aborted: AtomicU64,
    /// Bumped when every stateful instance's next checkpoint must be a
    /// full image.
    pub(super) full_generation: AtomicU64,
    progress: Mutex<BTreeMap<u64, Progress>>,
    restore: Option<Manifest>,
    /// Checkpoints completed by this run.
    taken: AtomicU64,
    last_ms: AtomicU64,
    started: Mutex<Option<Instant>>,
    /// In a cluster: this node's workers, its backup nodes, and its parts
    /// of checkpoints, complete on this node, for the coordinator.
    pub(super) cluster: Option<ClusterState>,
    /// The job's assignment of bins, recorded in each manifest (`None`:
    /// the uniform one).
    assignment: Mutex<Option<(u64, Vec<spate_state::BinRange>)>>,
    /// No checkpoint is requested while a live handoff runs.
    held: AtomicBool,
    /// Partitions of each source, when not restoring (the workers used at
    /// the start).
    first_partitions: AtomicUsize,
}

pub(super) struct ClusterState {
    local_workers: usize,
    targets: BackupTargets,
    done: Mutex<Vec<Manifest>>,
}

impl CheckpointCoordinator {
    /// A coordinator writing manifests to `dir`, restoring from `restore`;
    /// new checkpoint ids start above `after` (and above the restored one).
    pub fn new(
        dir: PathBuf,
        workers: usize,
        interval_ms: u64,
        restore: Option<Manifest>,
        after: u64,
    ) -> Arc<Self> {
        let first = restore.as_ref().map_or(0, |m| m.id).max(after);
        Self::build(dir, workers, interval_ms, restore, first, None)
    }

    /// The checkpointing of one node of a cluster job, which runs
    /// `local_workers` of the job's `workers`: the coordinator requests
    /// checkpoints ([`CheckpointCoordinator::request`]), this node hands it
    /// its part of each ([`CheckpointCoordinator::take_done`]) and learns
    /// which are complete ([`CheckpointCoordinator::complete`]). Manifests
    /// are kept by the coordinator, not written here.
    pub fn new_cluster(
        workers: usize,
        local_workers: usize,
        interval_ms: u64,
        c: ClusterCheckpoints,
    ) -> Arc<Self> {
        let first = c.restore.as_ref().map_or(0, |m| m.id);
        let cluster = ClusterState {
            local_workers,
            targets: BackupTargets {
                backups: c.backups.map_or_else(|| Arc::new(TcpBackups) as Arc<dyn Backups>, |b| b.0),
                replicas: Mutex::new((c.replicas, c.epoch)),
                generation: AtomicU64::new(0),
                cluster: c.cluster,
            },
            done: Mutex::new(Vec::new()),
        };
        let aborted = c.aborted;
        let coord = Self::build(PathBuf::new(), workers, interval_ms, c.restore, first, Some(cluster));
        coord.aborted.store(aborted, Ordering::Release);
        coord
    }

    fn build(
        dir: PathBuf,
        workers: usize,
        interval_ms: u64,
        restore: Option<Manifest>,
        first: u64,
        cluster: Option<ClusterState>,
    ) -> Arc<Self> {
        Arc::new(Self {
            dir,
            workers,
            interval_ms,
            requested: AtomicU64::new(first),
            completed: AtomicU64::new(first),
            participants: AtomicUsize::new(0),
            workers_built: AtomicUsize::new(0),
            stopped: AtomicBool::new(false),
            aborted: AtomicU64::new(0),
            full_generation: AtomicU64::new(0),
            progress: Mutex::new(BTreeMap::new()),
            restore,
            taken: AtomicU64::new(0),
            last_ms: AtomicU64::new(0),
            started: Mutex::new(None),
            cluster,
            assignment: Mutex::new(None),
            held: AtomicBool::new(false),
            first_partitions: AtomicUsize::new(workers),
        })
    }

    /// In a cluster: where this node's checkpoints are streamed.
    pub(super) fn backup_targets(&self) -> Option<&BackupTargets> {
        self.cluster.as_ref().map(|c| &c.targets)
    }

    /// Whether this is one node's part of a cluster job's checkpointing.
    pub fn is_cluster(&self) -> bool {
        self.cluster.is_some()
    }

    /// Whether every local worker has built its instances (in a cluster, a
    /// checkpoint may only be requested then: before, the participants are
    /// not all counted).
    pub fn ready(&self) -> bool {
        let workers = self.cluster.as_ref().map_or(self.workers, |c| c.local_workers);
        self.workers_built.load(Ordering::Acquire) >= workers
    }

    /// In a cluster: the coordinator requests checkpoint `id` (above every
    /// earlier one). Sources inject its barrier at their next step.
    pub fn request(&self, id: u64) {
        if let Ok(mut s) = self.started.lock() {
            *s = Some(Instant::now());
        }
        self.requested.fetch_max(id, Ordering::AcqRel);
    }

    /// In a cluster: checkpoint `id` is complete on every node.
    pub fn complete(&self, id: u64) {
        if self.completed.fetch_max(id, Ordering::AcqRel) < id {
            self.taken.fetch_add(1, Ordering::Relaxed);
            if let Ok(s) = self.started.lock() {
                if let Some(t) = *s {
                    self.last_ms.store(t.elapsed().as_millis() as u64, Ordering::Relaxed);
                }
            }
        }
    }

    /// In a cluster: the checkpoints every local participant has reported
    /// since the last call, with this node's source offsets.
    pub fn take_done(&self) -> Vec<Manifest> {
        match &self.cluster {
            Some(c) => c.done.lock().map(|mut d| std::mem::take(&mut *d)).unwrap_or_default(),
            None => Vec::new(),
        }
    }

    /// Whether a source of this job ended (no later checkpoint can
    /// complete).
    pub fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::Acquire)
    }

    /// The interval between checkpoints.
    pub fn interval_ms(&self) -> u64 {
        self.interval_ms
    }

    /// The checkpoint this job restored from, if any.
    pub fn restored(&self) -> Option<&Manifest> {
        self.restore.as_ref()
    }

    /// Partitions of each source: the restored checkpoint's, else one per
    /// worker (see `crate::source::SourceRunner`).
    pub fn partitions(&self) -> usize {
        self.restore.as_ref().map_or(self.first_partitions.load(Ordering::Acquire), |m| m.partitions)
    }

    /// A job not restoring runs `n` partitions of each source (the workers
    /// it uses at the start).
    pub(crate) fn set_partitions(&self, n: usize) {
        if self.restore.is_none() {
            self.first_partitions.store(n, Ordering::Release);
        }
    }

    /// Holds checkpoints back (`true`: none is requested from now on) or
    /// lets them go on; a live handoff runs between the two.
    pub(crate) fn hold(&self, held: bool) {
        // The lock `request_next` makes its request under: a request begun
        // before is counted in `requested` when this returns.
        let _s = self.started.lock();
        self.held.store(held, Ordering::Release);
    }

    /// From now on, checkpoints record `a` as the job's assignment of bins.
    pub fn set_assignment(&self, a: &crate::assignment::Assignment) {
        if let Ok(mut slot) = self.assignment.lock() {
            *slot = (!(a.is_uniform() && a.version() == 0)).then(|| (a.version(), a.ranges().to_vec()));
        }
    }

    /// Workers of the job, all nodes together.
    pub fn workers(&self) -> usize {
        self.workers
    }

    /// Whether this job restores a checkpoint that another number of
    /// workers took: its stateful instances gather their bins from the
    /// parts of every old worker whose bins overlap theirs.
    pub fn rescaled(&self) -> bool {
        self.restore.as_ref().is_some_and(|m| m.workers != self.workers)
    }

    /// The highest checkpoint id requested so far.
    pub fn requested(&self) -> u64 {
        self.requested.load(Ordering::Acquire)
    }

    /// The highest complete checkpoint id.
    pub fn completed(&self) -> u64 {
        self.completed.load(Ordering::Acquire)
    }

    /// Checkpoints completed by this run.
    pub fn taken(&self) -> u64 {
        self.taken.load(Ordering::Relaxed)
    }

    /// Milliseconds from request to completion of the last checkpoint.
    pub fn last_duration_ms(&self) -> u64 {
        self.last_ms.load(Ordering::Relaxed)
    }

    /// Requests the next checkpoint if the previous one is complete and
    /// every worker is running; whether it did.
    pub(crate) fn request_next(&self) -> bool {
        if self.cluster.is_some()
            || self.held.load(Ordering::Acquire)
            || self.stopped.load(Ordering::Acquire)
            || self.participants.load(Ordering::Acquire) == 0
            || self.workers_built.load(Ordering::Acquire) < self.workers
            || self.completed() < self.requested()
        {
            return false;
        }
        // Under the lock `hold` takes: once it returns, no request is
        // half made.
        let Ok(mut s) = self.started.lock() else { return false };
        if self.held.load(Ordering::Acquire) {
            return false;
        }
        *s = Some(Instant::now());
        self.requested.fetch_add(1, Ordering::AcqRel);
        true
    }

    /// A worker built its instances, `participants` of which report
    /// checkpoints.
    pub(crate) fn worker_built(&self, participants: usize) {
        self.participants.fetch_add(participants, Ordering::AcqRel);
        self.workers_built.fetch_add(1, Ordering::AcqRel);
    }

    /// In a cluster that recovers live from a failure: checkpoints up to
    /// `id` are void (they were in flight when the node failed; the
    /// replacement restores the last complete one). Their alignments end
    /// without a snapshot, their barriers are ignored, their parts are
    /// never reported, and every stateful instance's next checkpoint is a
    /// full image (a voided increment may be missing where it would be
    /// restored).
    pub fn abort_through(&self, id: u64) {
        if self.aborted.fetch_max(id, Ordering::AcqRel) < id {
            if let Ok(mut p) = self.progress.lock() {
                p.retain(|&k, _| k > id);
            }
            if let Some(c) = &self.cluster {
                if let Ok(mut d) = c.done.lock() {
                    d.retain(|m| m.id > id);
                }
            }
        }
        self.full_generation.fetch_add(1, Ordering::AcqRel);
    }

    /// The highest void checkpoint id (0: none).
    pub fn aborted(&self) -> u64 {
        self.aborted.load(Ordering::Acquire)
    }

    /// In a cluster: from now on, checkpoints stream to `replicas` under
    /// `epoch` (a live recovery replaced a backup node).
    pub fn retarget(&self, replicas: Vec<std::net::SocketAddr>, epoch: u64) {
        if let Some(c) = &self.cluster {
            if let Ok(mut r) = c.targets.replicas.lock() {
                *r = (replicas, epoch);
            }
            c.targets.generation.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// A source ended: no further checkpoint can complete.
    pub(crate) fn stop(&self) {
        self.stopped.store(true, Ordering::Release);
    }

    /// A participant reported checkpoint `id` (a source with its offset).
    pub(crate) fn report(&self, id: u64, source: Option<(&str, usize, u64)>) -> Result<(), CheckpointError> {
        let mut progress =
            self.progress.lock().map_err(|_| CheckpointError::Poisoned { lock: "checkpoint progress" })?;
        if id <= self.aborted() {
            // A part of a checkpoint voided while it was being written.
            return Ok(());
        }
        let p = progress.entry(id).or_default();
        p.reported += 1;
        if let Some((name, w, off)) = source {
            p.offsets.insert((name.to_string(), w), off);
        }
        if p.reported < self.participants.load(Ordering::Acquire) {
            return Ok(());
        }
        let (offsets, ahead) = (std::mem::take(&mut p.offsets), std::mem::take(&mut p.ahead));
        progress.remove(&id);
        drop(progress);
        let assignment =
            self.assignment.lock().map_err(|_| CheckpointError::Poisoned { lock: "assignment" })?.clone();
        let m =
            Manifest { id, workers: self.workers, partitions: self.partitions(), assignment, offsets, ahead };
        if let Some(c) = &self.cluster {
            // The coordinator completes it once every node's part is in.
            c.done.lock().map_err(|_| CheckpointError::Poisoned { lock: "checkpoint" })?.push(m);
            return Ok(());
        }
        self.write_manifest(&m)?;
        self.completed.fetch_max(id, Ordering::AcqRel);
        self.taken.fetch_add(1, Ordering::Relaxed);
        if let Ok(s) = self.started.lock() {
            if let Some(t) = *s {
                self.last_ms.store(t.elapsed().as_millis() as u64, Ordering::Relaxed);
            }
        }
        Ok(())
    }

    /// A receiver's state holds `records` of `producer`'s stream on `edge`
    /// beyond checkpoint `id`'s barrier (see [`Manifest::ahead`]). Noted
    /// when the barrier reaches the receiver, before any instance
    /// downstream of it on the worker reports `id`, so before `id` can
    /// complete.
    pub(crate) fn note_ahead(
        &self,
        id: u64,
        (edge, producer, consumer): (usize, usize, usize),
        records: u64,
    ) {
        let Ok(mut progress) = self.progress.lock() else { return };
        if id <= self.aborted() || id <= self.completed() {
            return;
        }
        progress.entry(id).or_default().ahead.insert((edge, producer, consumer), records);
    }

    fn write_manifest(&self, m: &Manifest) -> Result<(), CheckpointError> {
        let err = |op: &'static str, p: &Path, source: std::io::Error| CheckpointError::Io {
            op,
            path: p.to_path_buf(),
            source,
        };
        std::fs::create_dir_all(&self.dir).map_err(|e| err("create", &self.dir, e))?;
        let path = manifest_path(&self.dir, m.id);
        let tmp = path.with_extension("tmp");
        let mut f = std::fs::File::create(&tmp).map_err(|e| err("create", &tmp, e))?;
        f.write_all(m.encode().as_bytes()).map_err(|e| err("write", &tmp, e))?;
        f.sync_all().map_err(|e| err("sync", &tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| err("rename", &tmp, e))?;
        // Older manifests are no longer needed.
        if m.id > 1 {
            let _ = std::fs::remove_file(manifest_path(&self.dir, m.id - 1));
        }
        Ok(())
    }
}
