//! Periodic, aligned checkpoints of a whole job on one machine, and restore
//! after a restart (docs/ARCHITECTURE.md, decision 18).
//!
//! Every `interval` worker 0 requests checkpoint `n + 1` once checkpoint `n`
//! is complete. Each source instance, at its next step, records its offset
//! and pushes barrier `n + 1` downstream; barriers travel in band (through
//! fused chains, and as empty batches with [`crate::batch::FLAG_BARRIER`]
//! over rings) and are aligned wherever inputs meet (exchange receivers,
//! binary operators; see [`crate::push::InputFrontier`]). A stateful
//! instance saves its store when the aligned barrier reaches it, so every
//! instance's checkpoint `n` reflects exactly the records its sources
//! produced before their offsets of checkpoint `n`. Checkpoint `n` is
//! complete when every source and stateful instance has reported it; then a
//! manifest naming `n`, the worker count and every source's offset is
//! written atomically (temporary file, fsync, rename). Restore loads the
//! highest complete manifest: stateful instances rebuild their stores from
//! the per-worker [`BackupStore`]s and sources seek to their offsets.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use std::sync::mpsc::Sender;
use std::thread::JoinHandle;

use spate_state::checkpoint::CheckpointStream;
use spate_state::{BackupStore, Durability, StateStore, StoreConfig};

use crate::metrics::JobMetrics;

const MANIFEST_MAGIC: &str = "spate-checkpoint-manifest 1";

/// Every this many checkpoints, an instance's chain in the backup store is
/// compacted into one image (bounding the backup's size and restore time).
const COMPACT_EVERY: u64 = 32;

/// A complete checkpoint of a job, as recorded in its manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// The checkpoint id.
    pub id: u64,
    /// Workers of the job that took it.
    pub workers: usize,
    /// `(source, worker) -> offset` to resume from.
    pub offsets: BTreeMap<(String, usize), u64>,
    /// `(edge, producer, consumer) -> records`: with live recovery, how
    /// many records of `producer`'s stream on `edge` the `consumer`
    /// worker's state already held beyond the checkpoint's barrier (it was
    /// skipping a replacement's replay of what it had taken before; see
    /// `crate::replay`). A worker restored from this checkpoint skips them
    /// when the stream is replayed to it. Absent: none.
    pub ahead: BTreeMap<(usize, usize, usize), u64>,
}

impl Manifest {
    /// The manifest as text (what its file holds).
    pub fn encode(&self) -> String {
        let mut s = format!("{MANIFEST_MAGIC}\nid {}\nworkers {}\n", self.id, self.workers);
        for ((name, w), off) in &self.offsets {
            let _ = writeln!(s, "source {w} {off} {name}");
        }
        for ((edge, producer, consumer), n) in &self.ahead {
            let _ = writeln!(s, "ahead {edge} {producer} {consumer} {n}");
        }
        s.push_str("end\n");
        s
    }

    /// Parses [`Manifest::encode`]'s text; errors name `path` (the file,
    /// or where the text came from) and the line.
    pub fn parse(path: &Path, text: &str) -> Result<Manifest, String> {
        let bad =
            |line: usize, what: &str| format!("checkpoint manifest {}: line {line}: {what}", path.display());
        let mut lines = text.lines().enumerate().map(|(i, l)| (i + 1, l));
        match lines.next() {
            Some((_, l)) if l == MANIFEST_MAGIC => {}
            _ => return Err(bad(1, "not a spate checkpoint manifest")),
        }
        let mut num = |key: &str| -> Result<u64, String> {
            let (n, l) = lines.next().ok_or_else(|| bad(0, "truncated"))?;
            l.strip_prefix(key)
                .and_then(|v| v.trim().parse().ok())
                .ok_or_else(|| bad(n, &format!("expected `{key} <number>`")))
        };
        let id = num("id ")?;
        let workers = num("workers ")? as usize;
        let mut offsets = BTreeMap::new();
        let mut ahead = BTreeMap::new();
        let mut ended = false;
        for (n, l) in lines {
            if l == "end" {
                ended = true;
                break;
            }
            if let Some(rest) = l.strip_prefix("ahead ") {
                let f: Vec<u64> =
                    rest.split(' ').map(str::parse).collect::<Result<_, _>>().unwrap_or_default();
                let [edge, producer, consumer, count] = f[..] else {
                    return Err(bad(n, "expected `ahead <edge> <producer> <consumer> <records>`"));
                };
                ahead.insert((edge as usize, producer as usize, consumer as usize), count);
                continue;
            }
            let mut parts = l.splitn(4, ' ');
            let (Some("source"), Some(w), Some(off), Some(name)) =
                (parts.next(), parts.next(), parts.next(), parts.next())
            else {
                return Err(bad(n, "expected `source <worker> <offset> <name>`"));
            };
            let w: usize = w.parse().map_err(|_| bad(n, "bad worker"))?;
            let off: u64 = off.parse().map_err(|_| bad(n, "bad offset"))?;
            offsets.insert((name.to_string(), w), off);
        }
        if !ended {
            return Err(bad(0, "truncated (no `end` line)"));
        }
        Ok(Manifest { id, workers, offsets, ahead })
    }

    /// An empty manifest of checkpoint `id` of a job of `workers`.
    pub fn new(id: u64, workers: usize) -> Manifest {
        Manifest { id, workers, offsets: BTreeMap::new(), ahead: BTreeMap::new() }
    }

    /// Adds another node's part of the same checkpoint.
    pub fn merge(&mut self, part: &Manifest) {
        self.offsets.extend(part.offsets.iter().map(|(k, v)| (k.clone(), *v)));
        self.ahead.extend(part.ahead.iter().map(|(k, v)| (*k, *v)));
    }

    /// Records of `producer`'s stream on `edge` that `consumer`'s restored
    /// state already holds beyond the barrier (see [`Manifest::ahead`]).
    pub fn ahead_of(&self, edge: usize, producer: usize, consumer: usize) -> u64 {
        self.ahead.get(&(edge, producer, consumer)).copied().unwrap_or(0)
    }
}

/// Where a job's checkpoints live under the data directory.
pub fn checkpoint_dir(data_dir: &Path, dataflow: &str) -> PathBuf {
    data_dir.join(dataflow).join("checkpoints")
}

fn manifest_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("manifest-{id:020}"))
}

/// The highest complete checkpoint in `dir`, if any. A manifest that does
/// not parse is an error naming it (never silently skipped).
pub fn latest_manifest(dir: &Path) -> Result<Option<Manifest>, String> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read checkpoint directory {}: {e}", dir.display())),
    };
    let mut best: Option<PathBuf> = None;
    for entry in entries {
        let entry = entry.map_err(|e| format!("cannot read checkpoint directory {}: {e}", dir.display()))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.starts_with("manifest-") && !name.ends_with(".tmp") {
            let p = entry.path();
            if best.as_ref().is_none_or(|b| p > *b) {
                best = Some(p);
            }
        }
    }
    let Some(path) = best else { return Ok(None) };
    let text = std::fs::read_to_string(&path)
        .map_err(|e| format!("cannot read checkpoint manifest {}: {e}", path.display()))?;
    Manifest::parse(&path, &text).map(Some)
}

/// The highest checkpoint id any instance of the job has stored in the
/// backup stores of `workers` workers. A run killed in the middle of a
/// checkpoint can leave some instances with a complete checkpoint newer than
/// the last complete manifest; the resumed run numbers its checkpoints above
/// it, so the backup stores accept them.
pub fn highest_stored_id(data_dir: &Path, dataflow: &str, workers: usize) -> Result<u64, String> {
    let mut max = 0;
    for w in 0..workers {
        let dir = data_dir.join(dataflow).join("backup").join(format!("w{w}"));
        if !dir.exists() {
            continue;
        }
        let backup = BackupStore::open(&dir, Durability::PageCache)
            .map_err(|e| format!("cannot open the backup store in {}: {e}", dir.display()))?;
        for instance in backup.instances() {
            max = max.max(backup.complete_checkpoints(&instance).last().copied().unwrap_or(0));
        }
    }
    Ok(max)
}

/// Removes a job's checkpoints (after it finished, nothing is left to
/// restore).
pub fn remove_checkpoints(data_dir: &Path, dataflow: &str) -> Result<(), String> {
    let dir = data_dir.join(dataflow);
    for sub in ["checkpoints", "backup"] {
        let p = dir.join(sub);
        match std::fs::remove_dir_all(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("cannot remove {}: {e}", p.display())),
        }
    }
    Ok(())
}

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

/// How a worker's backup writer reaches its backup nodes.
pub trait Backups: Send + Sync {
    /// Opens a stream of worker `worker`'s checkpoints (under `epoch`) to
    /// the backup node whose replica service is at `target`.
    fn connect(
        &self,
        target: std::net::SocketAddr,
        cluster: u64,
        worker: usize,
        epoch: u64,
    ) -> Result<Box<dyn BackupLink>, String>;
}

/// One stream of checkpoints to one backup node.
pub trait BackupLink: Send {
    /// Sends one chunk of `instance`'s checkpoint.
    fn send_chunk(&mut self, instance: &str, chunk: &[u8]) -> Result<(), String>;
    /// Waits until the backup node has stored checkpoint `id` of
    /// `instance` whole.
    fn wait_ack(&mut self, instance: &str, id: u64) -> Result<(), String>;
}

/// A [`Backups`] to hand around (cloned into every worker's writer).
#[derive(Clone)]
pub struct BackupNet(pub Arc<dyn Backups>);

impl std::fmt::Debug for BackupNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BackupNet")
    }
}

/// Checkpoints over TCP to the backup nodes' replica services
/// ([`crate::replica`]).
struct TcpBackups;

impl Backups for TcpBackups {
    fn connect(
        &self,
        target: std::net::SocketAddr,
        cluster: u64,
        worker: usize,
        epoch: u64,
    ) -> Result<Box<dyn BackupLink>, String> {
        let client =
            crate::replica::ReplicaClient::connect_epoch(target, cluster, worker, epoch, REPLICA_TIMEOUT)
                .map_err(|e| e.to_string())?;
        Ok(Box::new(client))
    }
}

impl BackupLink for crate::replica::ReplicaClient {
    fn send_chunk(&mut self, instance: &str, chunk: &[u8]) -> Result<(), String> {
        crate::replica::ReplicaClient::send_chunk(self, instance, chunk).map_err(|e| e.to_string())
    }
    fn wait_ack(&mut self, instance: &str, id: u64) -> Result<(), String> {
        crate::replica::ReplicaClient::wait_ack(self, instance, id, REPLICA_TIMEOUT)
            .map_err(|e| e.to_string())
    }
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
    full_generation: AtomicU64,
    progress: Mutex<BTreeMap<u64, Progress>>,
    restore: Option<Manifest>,
    /// Checkpoints completed by this run.
    taken: AtomicU64,
    last_ms: AtomicU64,
    started: Mutex<Option<Instant>>,
    /// In a cluster: this node's workers, its backup nodes, and its parts
    /// of checkpoints, complete on this node, for the coordinator.
    cluster: Option<ClusterState>,
}

struct ClusterState {
    local_workers: usize,
    backups: Arc<dyn Backups>,
    /// The backup nodes' replica services and the epoch to stream under;
    /// a live recovery may change both (the generation counts changes).
    replicas: Mutex<(Vec<std::net::SocketAddr>, u64)>,
    replicas_generation: AtomicU64,
    id: u64,
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
            backups: c.backups.map_or_else(|| Arc::new(TcpBackups) as Arc<dyn Backups>, |b| b.0),
            replicas: Mutex::new((c.replicas, c.epoch)),
            replicas_generation: AtomicU64::new(0),
            id: c.cluster,
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
        })
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
            || self.stopped.load(Ordering::Acquire)
            || self.participants.load(Ordering::Acquire) == 0
            || self.workers_built.load(Ordering::Acquire) < self.workers
            || self.completed() < self.requested()
        {
            return false;
        }
        if let Ok(mut s) = self.started.lock() {
            *s = Some(Instant::now());
        }
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
            if let Ok(mut r) = c.replicas.lock() {
                *r = (replicas, epoch);
            }
            c.replicas_generation.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// A source ended: no further checkpoint can complete.
    pub(crate) fn stop(&self) {
        self.stopped.store(true, Ordering::Release);
    }

    /// A participant reported checkpoint `id` (a source with its offset).
    pub(crate) fn report(&self, id: u64, source: Option<(&str, usize, u64)>) -> Result<(), String> {
        let mut progress =
            self.progress.lock().map_err(|_| "checkpoint progress lock poisoned".to_string())?;
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
        let m = Manifest { id, workers: self.workers, offsets, ahead };
        if let Some(c) = &self.cluster {
            // The coordinator completes it once every node's part is in.
            c.done.lock().map_err(|_| "checkpoint lock poisoned".to_string())?.push(m);
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

    fn write_manifest(&self, m: &Manifest) -> Result<(), String> {
        let err = |what: &str, p: &Path, e: std::io::Error| format!("cannot {what} {}: {e}", p.display());
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

/// The backup writer's state when it runs inline.
struct Inline {
    backup: BackupStore,
    replicas: Replicas,
    queue: std::collections::VecDeque<SaveJob>,
}

/// A checkpoint being streamed into the backup store.
struct SaveJob {
    instance: String,
    id: u64,
    stream: CheckpointStream,
}

/// A worker's side of checkpointing: its backup store, and what stateful
/// instances and sources call.
///
/// Saving is asynchronous: `save` only begins the checkpoint (a
/// copy-on-write snapshot of the store, see `StateStore::begin_checkpoint`)
/// and hands the stream to the worker's *backup writer* thread, which
/// streams the chunks into the backup store and reports the checkpoint. The
/// worker's pause does not grow with the state. Restores read the backup
/// store on the worker thread while the dataflow is built, before the
/// writer starts.
pub struct Checkpointer {
    worker: usize,
    backup: std::cell::RefCell<Option<BackupStore>>,
    writer: std::cell::RefCell<Option<(Sender<SaveJob>, JoinHandle<()>)>>,
    /// The backup writer run inline (the simulator): its store, its
    /// streams and the checkpoints saved and not yet written.
    inline: std::cell::RefCell<Option<Inline>>,
    coord: Arc<CheckpointCoordinator>,
    participants: std::cell::Cell<usize>,
    /// Per instance, the full-image generation its last checkpoint met
    /// (see [`CheckpointCoordinator::abort_through`]).
    full_seen: std::cell::RefCell<std::collections::HashMap<String, u64>>,
}

impl Checkpointer {
    pub(crate) fn open(
        data_dir: &Path,
        dataflow: &str,
        worker: usize,
        coord: Arc<CheckpointCoordinator>,
    ) -> Result<Self, String> {
        let dir = data_dir.join(dataflow).join("backup").join(format!("w{worker}"));
        let backup = BackupStore::open(&dir, Durability::PageCache)
            .map_err(|e| format!("cannot open the backup store in {}: {e}", dir.display()))?;
        Ok(Self {
            worker,
            backup: std::cell::RefCell::new(Some(backup)),
            writer: std::cell::RefCell::new(None),
            inline: std::cell::RefCell::new(None),
            coord,
            participants: std::cell::Cell::new(0),
            full_seen: std::cell::RefCell::new(std::collections::HashMap::new()),
        })
    }

    /// Starts the backup writer (after the dataflow is built and restored).
    pub(crate) fn start_writer(&self, metrics: Arc<JobMetrics>) -> Result<(), String> {
        let Some(mut backup) = self.backup.borrow_mut().take() else { return Ok(()) };
        let (tx, rx) = std::sync::mpsc::channel::<SaveJob>();
        let coord = self.coord.clone();
        let worker = self.worker;
        let handle = std::thread::Builder::new()
            .name(format!("spate-backup-w{worker}"))
            .spawn(move || {
                let mut replicas = Replicas::new(&coord, worker);
                for job in rx {
                    match write_checkpoint(&mut backup, &mut replicas, &coord, job) {
                        Ok(()) => {}
                        // A backup node that is gone: the checkpoint does
                        // not complete, and the coordinator, which detects
                        // the failure, recovers the job.
                        Err(CheckpointError::Replica(e)) => {
                            eprintln!("spate: worker {worker}: {e}");
                            if metrics.has_failed() {
                                break;
                            }
                        }
                        Err(CheckpointError::Local(e)) => metrics.fail(format!("worker {worker}: {e}")),
                    }
                }
            })
            .map_err(|e| format!("cannot start the backup writer of worker {worker}: {e}"))?;
        *self.writer.borrow_mut() = Some((tx, handle));
        Ok(())
    }

    /// Runs the backup writer inline: checkpoints saved are queued until
    /// [`Checkpointer::write_inline`] writes them (the simulator).
    pub(crate) fn start_inline_writer(&self) -> Result<(), String> {
        let Some(backup) = self.backup.borrow_mut().take() else { return Ok(()) };
        let replicas = Replicas::new(&self.coord, self.worker);
        *self.inline.borrow_mut() =
            Some(Inline { backup, replicas, queue: std::collections::VecDeque::new() });
        Ok(())
    }

    /// Writes the oldest checkpoint queued for the inline writer, as the
    /// writer thread would; whether there was one.
    pub(crate) fn write_inline(&self, metrics: &JobMetrics) -> bool {
        let mut inline = self.inline.borrow_mut();
        let Some(w) = inline.as_mut() else { return false };
        let Some(job) = w.queue.pop_front() else { return false };
        match write_checkpoint(&mut w.backup, &mut w.replicas, &self.coord, job) {
            Ok(()) => {}
            Err(CheckpointError::Replica(e)) => eprintln!("spate: worker {}: {e}", self.worker),
            Err(CheckpointError::Local(e)) => metrics.fail(format!("worker {}: {e}", self.worker)),
        }
        true
    }

    /// Waits for the checkpoints handed to the writer to be stored.
    pub(crate) fn stop_writer(&self) {
        if let Some((tx, handle)) = self.writer.borrow_mut().take() {
            drop(tx);
            let _ = handle.join();
        }
    }

    /// Registers one more participant (a stateful instance or a source).
    pub fn register(&self) {
        self.participants.set(self.participants.get() + 1);
    }

    pub(crate) fn participants(&self) -> usize {
        self.participants.get()
    }

    /// The checkpoint being restored, if any.
    pub fn restoring(&self) -> Option<u64> {
        self.coord.restored().map(|m| m.id)
    }

    /// Begins checkpoint `id` of `instance` (with the operator's `meta`
    /// bytes) and hands it to the backup writer, which stores and reports
    /// it.
    pub fn save(&self, instance: &str, store: &mut StateStore, id: u64, meta: &[u8]) -> Result<(), String> {
        let generation = self.coord.full_generation.load(Ordering::Acquire);
        if generation > 0 {
            let mut seen = self.full_seen.borrow_mut();
            if seen.get(instance).copied().unwrap_or(0) < generation {
                store.require_full_checkpoint();
                seen.insert(instance.to_string(), generation);
            }
        }
        let stream = store
            .begin_checkpoint(id, meta)
            .map_err(|e| format!("checkpoint {id} of `{instance}` on worker {}: {e}", self.worker))?;
        if let Some(w) = self.inline.borrow_mut().as_mut() {
            w.queue.push_back(SaveJob { instance: instance.to_string(), id, stream });
            return Ok(());
        }
        let writer = self.writer.borrow();
        let Some((tx, _)) = writer.as_ref() else {
            return Err(format!("checkpoint {id} of `{instance}`: the backup writer is not running"));
        };
        tx.send(SaveJob { instance: instance.to_string(), id, stream }).map_err(|_| {
            format!("checkpoint {id} of `{instance}`: the backup writer of worker {} stopped", self.worker)
        })
    }

    /// A participant without state reached barrier `id` and made what
    /// precedes it durable (a sink wrote its output): checkpoint `id` can
    /// only complete after every such participant said so.
    pub fn commit(&self, id: u64) -> Result<(), String> {
        self.coord.report(id, None)
    }

    /// Rebuilds `instance`'s store from the checkpoint being restored, into
    /// `config.dir`; returns it with its `meta` bytes. `None` when not
    /// restoring.
    pub fn restore(
        &self,
        instance: &str,
        config: StoreConfig,
    ) -> Result<Option<(StateStore, Vec<u8>)>, String> {
        let Some(id) = self.restoring() else { return Ok(None) };
        let backup = self.backup.borrow();
        let Some(backup) = backup.as_ref() else {
            return Err(format!("restoring `{instance}`: the backup store is in use by its writer"));
        };
        let (store, meta, _) = StateStore::restore_id(config, backup, instance, id)
            .map_err(|e| format!("restoring `{instance}` from checkpoint {id}: {e}"))?;
        Ok(Some((store, meta)))
    }

    /// The offset source `name` resumes from, when restoring.
    pub(crate) fn source_offset(&self, name: &str) -> Result<Option<u64>, String> {
        let Some(m) = self.coord.restored() else { return Ok(None) };
        m.offsets.get(&(name.to_string(), self.worker)).copied().map(Some).ok_or_else(|| {
            format!("checkpoint {} has no offset for source `{name}` on worker {}", m.id, self.worker)
        })
    }

    /// A receiver of `producer`'s stream on `edge` reached checkpoint
    /// `id`'s barrier with `records` of that stream beyond it already in
    /// its state (see [`Manifest::ahead`]).
    pub(crate) fn note_ahead(&self, id: u64, edge: usize, producer: usize, records: u64) {
        self.coord.note_ahead(id, (edge, producer, self.worker), records);
    }

    /// Records of `producer`'s stream on `edge` that this worker's
    /// restored state holds beyond the checkpoint's barrier.
    pub(crate) fn restored_ahead(&self, edge: usize, producer: usize) -> u64 {
        self.coord.restored().map_or(0, |m| m.ahead_of(edge, producer, self.worker))
    }

    pub(crate) fn source_reported(&self, id: u64, name: &str, offset: u64) -> Result<(), String> {
        self.coord.report(id, Some((name, self.worker, offset)))
    }

    pub(crate) fn coordinator(&self) -> &Arc<CheckpointCoordinator> {
        &self.coord
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.stop_writer();
    }
}

/// Why a checkpoint was not stored.
enum CheckpointError {
    /// The local backup store failed: the job fails.
    Local(String),
    /// A backup node did not acknowledge it.
    Replica(String),
}

/// How long a backup node may take to acknowledge a checkpoint, and to
/// accept a connection.
const REPLICA_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// A worker's streams to its backup nodes, made at its first checkpoint;
/// one that failed is made again at the next.
struct Replicas {
    targets: Vec<std::net::SocketAddr>,
    cluster: u64,
    epoch: u64,
    worker: usize,
    clients: Vec<Option<Box<dyn BackupLink>>>,
    /// The coordinator's replica generation these targets are of.
    generation: u64,
}

impl Replicas {
    fn new(coord: &CheckpointCoordinator, worker: usize) -> Self {
        let mut r = Self {
            targets: Vec::new(),
            cluster: coord.cluster.as_ref().map_or(0, |c| c.id),
            epoch: 0,
            worker,
            clients: Vec::new(),
            generation: u64::MAX,
        };
        r.refresh(coord);
        r
    }

    /// Takes the coordinator's current backup nodes, if they changed.
    fn refresh(&mut self, coord: &CheckpointCoordinator) {
        let Some(c) = &coord.cluster else { return };
        let generation = c.replicas_generation.load(Ordering::Acquire);
        if generation == self.generation {
            return;
        }
        if let Ok(r) = c.replicas.lock() {
            (self.targets, self.epoch) = (r.0.clone(), r.1);
        }
        self.clients = self.targets.iter().map(|_| None).collect();
        self.generation = generation;
    }

    fn connect(&mut self, coord: &CheckpointCoordinator) -> Result<(), String> {
        let Some(c) = &coord.cluster else { return Ok(()) };
        for (t, client) in self.targets.iter().zip(self.clients.iter_mut()) {
            if client.is_none() {
                *client = Some(
                    c.backups
                        .connect(*t, self.cluster, self.worker, self.epoch)
                        .map_err(|e| format!("backup node {t}: {e}"))?,
                );
            }
        }
        Ok(())
    }

    fn send_chunk(&mut self, instance: &str, chunk: &[u8]) -> Result<(), String> {
        for (t, c) in self.targets.iter().zip(self.clients.iter_mut()) {
            if let Some(client) = c {
                if let Err(e) = client.send_chunk(instance, chunk) {
                    *c = None;
                    return Err(format!("backup node {t}: {e}"));
                }
            }
        }
        Ok(())
    }

    fn wait_acks(&mut self, instance: &str, id: u64) -> Result<(), String> {
        for (t, c) in self.targets.iter().zip(self.clients.iter_mut()) {
            if let Some(client) = c {
                if let Err(e) = client.wait_ack(instance, id) {
                    *c = None;
                    return Err(format!("backup node {t}: {e}"));
                }
            }
        }
        Ok(())
    }
}

/// Streams one checkpoint into the local backup store (compacting the
/// instance's chain now and then) and to the backup nodes, waits for their
/// acknowledgements, and reports it.
fn write_checkpoint(
    backup: &mut BackupStore,
    replicas: &mut Replicas,
    coord: &CheckpointCoordinator,
    job: SaveJob,
) -> Result<(), CheckpointError> {
    let SaveJob { instance, id, mut stream } = job;
    if id <= coord.aborted() {
        // Voided while it waited: dropping the stream puts its pages back
        // as dirty (the next checkpoint is a full image anyway).
        return Ok(());
    }
    // Compact only a chain that ends at the last globally complete
    // checkpoint: a newer one may never complete, and the manifest's
    // checkpoint must stay restorable.
    let done = coord.completed();
    // Keep only what restoring the last complete checkpoint (or a later
    // one) reads: every chain starts afresh with a full image now and then.
    if done > 0 && backup.complete_checkpoints(&instance).contains(&done) {
        backup.retain_from(&instance, done).map_err(|e| {
            CheckpointError::Local(format!("retention of `{instance}` in the backup store: {e}"))
        })?;
    }
    if id % COMPACT_EVERY == 0 && backup.complete_checkpoints(&instance).last() == Some(&done) {
        backup.compact(&instance).map_err(|e| {
            CheckpointError::Local(format!(
                "compacting the checkpoints of `{instance}` in the backup store: {e}"
            ))
        })?;
    }
    replicas.refresh(coord);
    replicas.connect(coord).map_err(CheckpointError::Replica)?;
    let mut acked = false;
    while let Some(chunk) = stream.next_chunk() {
        if backup
            .receive(&instance, chunk)
            .map_err(|e| {
                CheckpointError::Local(format!("checkpoint {id} of `{instance}` into the backup store: {e}"))
            })?
            .is_some()
        {
            acked = true;
        }
        replicas
            .send_chunk(&instance, chunk)
            .map_err(|e| CheckpointError::Replica(format!("checkpoint {id} of `{instance}`: {e}")))?;
    }
    if !acked {
        return Err(CheckpointError::Local(format!(
            "checkpoint {id} of `{instance}`: the backup store did not acknowledge it"
        )));
    }
    replicas
        .wait_acks(&instance, id)
        .map_err(|e| CheckpointError::Replica(format!("checkpoint {id} of `{instance}`: {e}")))?;
    coord.report(id, None).map_err(CheckpointError::Local)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_round_trips_and_rejects_damage() {
        let mut offsets = BTreeMap::new();
        offsets.insert(("gen with spaces".to_string(), 1), 42);
        offsets.insert(("gen".to_string(), 0), 7);
        let mut m = Manifest { id: 9, workers: 2, offsets, ahead: BTreeMap::new() };
        m.ahead.insert((1, 2, 0), 222);
        m.ahead.insert((0, 3, 1), 5);
        let p = Path::new("m");
        assert_eq!(Manifest::parse(p, &m.encode()), Ok(m.clone()));
        let text = m.encode();
        let truncated = &text[..text.len() - 4];
        let e = Manifest::parse(p, truncated).err().unwrap_or_default();
        assert!(e.contains("truncated") || e.contains("line"), "{e}");
        let e = Manifest::parse(p, &text.replace("workers 2", "workers x")).err().unwrap_or_default();
        assert!(e.contains("workers"), "{e}");
        let e = Manifest::parse(p, &text.replace("ahead 1 2 0 222", "ahead 1 2 0")).err().unwrap_or_default();
        assert!(e.contains("ahead"), "{e}");
        assert!(Manifest::parse(p, "hello").is_err());
    }
}
