//! The thread-per-core runtime: one glommio executor per worker, pinned to a
//! core, running one hand-written poll loop over the worker's operator
//! instances.
//!
//! A worker's *work items* are its source instances and, per (exchange edge,
//! producing worker), the ring it receives batches on. The loop visits every
//! item in turn and runs one synchronous *step* — a bounded source step, or
//! a received batch pushed through the fused operator chain — then sends the
//! batches that step closed. A batch that does not fit in its ring stays
//! queued in its outbox (the *backlog*), and the item that produced it is
//! skipped until that outbox has drained: backpressure, with every queue
//! bounded. An item only ever waits on outboxes it wrote to, which in a DAG
//! lie downstream of it, so no cycle of waits exists: no deadlock.
//!
//! Nothing in the loop awaits: no task, waker, timer or semaphore is on the
//! data path (docs/ARCHITECTURE.md, decision 15). Workers share nothing but
//! bounded single-producer, single-consumer rings ([`crate::ring`]), one per
//! edge and worker pair, polled.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use glommio::{LocalExecutorBuilder, Placement};

use crate::batch::Batch;
use crate::checkpoint::{self, CheckpointCoordinator, Checkpointer, ClusterCheckpoints};
use crate::config::{available_cores, RuntimeConfig};
use crate::control::placement::ClusterPlacement;
use crate::dataflow::{Dataflow, WorkerBuild};
use crate::exchange::{BatchInput, EdgeRuntime, Outbox, TouchList};
use crate::limits::{BATCHES_PER_VISIT, NAP_US, TICK_US_MAX};
use crate::metrics::JobMetrics;
use crate::push::BarrierTracker;
use crate::remote::{self, NetLink, Rx, Tx};
use crate::replay::{LogStore, ReplayCursor, ReplayLog};
use crate::ring::{ring, Consumer, Producer};
use crate::source::{SourceStatus, SourceTask};
use crate::time::now_ns;

/// Why a job could not start or did not finish.
#[derive(Debug)]
pub enum RuntimeError {
    /// The configuration is invalid.
    Config(String),
    /// The dataflow is invalid (duplicate names, ...).
    Dataflow(Vec<String>),
    /// A worker thread could not be started.
    Spawn {
        /// The worker.
        worker: usize,
        /// glommio's error.
        reason: String,
    },
    /// A worker panicked.
    WorkerPanicked {
        /// The worker.
        worker: usize,
    },
    /// An operator failed while running.
    Failed(String),
    /// The job was cancelled ([`Job::cancel`]).
    Cancelled,
}

impl std::fmt::Display for RuntimeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RuntimeError::Config(e) => write!(f, "invalid runtime configuration: {e}"),
            RuntimeError::Dataflow(es) => write!(f, "invalid dataflow: {}", es.join("; ")),
            RuntimeError::Spawn { worker, reason } => write!(f, "cannot start worker {worker}: {reason}"),
            RuntimeError::WorkerPanicked { worker } => write!(f, "worker {worker} panicked"),
            RuntimeError::Failed(e) => write!(f, "job failed: {e}"),
            RuntimeError::Cancelled => write!(f, "job cancelled"),
        }
    }
}

impl std::error::Error for RuntimeError {}

/// Runs dataflows on this process's workers.
#[derive(Clone, Debug, Default)]
pub struct Runtime {
    config: RuntimeConfig,
}

/// A running job.
pub struct Job {
    handles: Vec<glommio::ExecutorJoinHandle<()>>,
    metrics: Arc<JobMetrics>,
    started: Instant,
    /// With live recovery: where replacements' connections go.
    relinks: Option<Arc<RelinkBoard>>,
    /// This node's workers (global ids).
    local: Vec<usize>,
    /// Bytes of each replay buffer.
    replay_buffer_bytes: usize,
    workers: usize,
    coord: Option<Arc<CheckpointCoordinator>>,
    name: String,
    data_dir: std::path::PathBuf,
}

/// What a finished job reports.
#[derive(Debug, Clone)]
pub struct JobReport {
    /// Workers that ran.
    pub workers: usize,
    /// Wall time from start to the last worker's end.
    pub elapsed: Duration,
    /// Records produced by sources.
    pub records_in: u64,
    /// Records that reached sinks.
    pub records_out: u64,
    /// Checkpoints this run completed.
    pub checkpoints: u64,
    /// The checkpoint this run resumed from, if any.
    pub restored_from: Option<u64>,
}

type Channels = Vec<Vec<Vec<Option<(Producer<Batch>, Consumer<Batch>)>>>>;

impl Runtime {
    /// A runtime with `config`.
    pub fn new(config: RuntimeConfig) -> Self {
        Self { config }
    }

    /// The configuration.
    pub fn config(&self) -> &RuntimeConfig {
        &self.config
    }

    /// Builds the dataflow named `name` with `build` on every worker and
    /// starts it. `build` runs once here first, to validate the graph.
    pub fn start<F>(&self, name: &str, build: F) -> Result<Job, RuntimeError>
    where
        F: Fn(&Dataflow) + Send + Sync + 'static,
    {
        self.start_inner(name, build, None)
    }

    /// Starts this node's share of a job that spans several node processes
    /// (see [`crate::remote`]): every node runs the same `build`; this one
    /// runs the workers `placement` gives it and connects them to the
    /// others' through `listener` before the job starts (within the
    /// placement's timeout; the error names the workers not connected).
    pub fn start_cluster<F>(
        &self,
        name: &str,
        build: F,
        placement: ClusterPlacement,
        listener: &mut spate_net::Listener,
    ) -> Result<Job, RuntimeError>
    where
        F: Fn(&Dataflow) + Send + Sync + 'static,
    {
        self.start_cluster_or_abort(name, build, placement, listener, None, &mut || None, None)
    }

    /// As [`Runtime::start_cluster`], with the checkpointing the
    /// coordinator gave this node (needed when the config takes
    /// checkpoints: what to restore and which backup nodes to stream
    /// checkpoints to); stops connecting the workers as soon as `abort`
    /// gives a reason (see [`remote::connect_mesh_or_abort`]). With
    /// `placement.join` this share joins a running job as the replacement
    /// of failed workers (live recovery, see [`crate::control::Join`]).
    ///
    /// `beside`: the shares already running in this process, which take
    /// the joining share's links to their workers (a survivor that takes
    /// over a failed node's workers, see [`remote::Beside`]).
    #[allow(clippy::too_many_arguments)]
    pub fn start_cluster_or_abort<F>(
        &self,
        name: &str,
        build: F,
        placement: ClusterPlacement,
        listener: &mut spate_net::Listener,
        checkpoints: Option<ClusterCheckpoints>,
        abort: &mut dyn FnMut() -> Option<String>,
        beside: Option<&mut dyn remote::Beside>,
    ) -> Result<Job, RuntimeError>
    where
        F: Fn(&Dataflow) + Send + Sync + 'static,
    {
        self.config.validate().map_err(RuntimeError::Config)?;
        if self.config.checkpoint_interval_ms > 0 && checkpoints.is_none() {
            return Err(RuntimeError::Config(
                "a cluster job with checkpoints needs the coordinator's checkpoint plan".into(),
            ));
        }
        let me = placement.join.as_ref().map_or(placement.me, |j| j.slot);
        if placement.nodes.get(me).is_none_or(|n| n.workers == 0) {
            return Err(RuntimeError::Config(format!("node {me} of the placement runs no worker")));
        }
        let conns = match placement.join {
            // A replacement of failed workers joins a running job (live
            // recovery): it connects to the workers that run already
            // (their nodes hand its links to `Job::relink`).
            Some(_) => remote::connect_mesh_joining(&placement, listener, abort, beside),
            None => remote::connect_mesh_or_abort(&placement, listener, abort),
        }
        .map_err(RuntimeError::Failed)?;
        let checkpoints = checkpoints.map(|c| ClusterCheckpoints { joining: placement.join.is_some(), ..c });
        self.start_inner(name, build, Some((placement, conns, checkpoints)))
    }

    fn start_inner<F>(
        &self,
        name: &str,
        build: F,
        cluster: Option<(
            ClusterPlacement,
            HashMap<(usize, usize), spate_net::Connection>,
            Option<ClusterCheckpoints>,
        )>,
    ) -> Result<Job, RuntimeError>
    where
        F: Fn(&Dataflow) + Send + Sync + 'static,
    {
        self.config.validate().map_err(RuntimeError::Config)?;
        let (workers, local) = match &cluster {
            Some((p, _, _)) => (p.total_workers(), p.local()),
            None => {
                let w = self.config.effective_workers();
                (w, (0..w).collect::<Vec<usize>>())
            }
        };
        let mine: Vec<bool> = (0..workers).map(|w| local.contains(&w)).collect();
        let edges = {
            let df = Dataflow::new(name);
            build(&df);
            let g = df.graph.borrow();
            if !g.errors.is_empty() {
                return Err(RuntimeError::Dataflow(g.errors.clone()));
            }
            g.edges.len()
        };
        // channels[edge][src][dst]
        let mut channels: Channels = (0..edges)
            .map(|_| {
                (0..workers)
                    .map(|s| {
                        (0..workers)
                            .map(|d| {
                                (s != d && mine[s] && mine[d]).then(|| ring(self.config.channel_batches))
                            })
                            .collect()
                    })
                    .collect()
            })
            .collect();
        let cluster_ckpt = cluster.as_ref().and_then(|(_, _, c)| c.clone());
        let coord = if let (true, Some(c)) = (self.config.checkpoint_interval_ms > 0, cluster_ckpt) {
            // The backup stores of this node's workers only hold what this
            // incarnation of the job (or the fetch before it) put there.
            if c.restore.is_none() && !c.joining {
                checkpoint::remove_checkpoints(&self.config.data_dir, name).map_err(RuntimeError::Config)?;
            }
            Some(CheckpointCoordinator::new_cluster(
                workers,
                local.len(),
                self.config.checkpoint_interval_ms,
                c,
            ))
        } else if self.config.checkpoint_interval_ms > 0 {
            let dir = checkpoint::checkpoint_dir(&self.config.data_dir, name);
            let manifest = if self.config.restore {
                checkpoint::latest_manifest(&dir).map_err(RuntimeError::Config)?
            } else {
                checkpoint::remove_checkpoints(&self.config.data_dir, name).map_err(RuntimeError::Config)?;
                None
            };
            if let Some(m) = &manifest {
                if m.workers != workers {
                    return Err(RuntimeError::Config(format!(
                        "checkpoint {} of `{name}` was taken with {} workers, this run has {workers}",
                        m.id, m.workers
                    )));
                }
            }
            let after = match &manifest {
                Some(_) => checkpoint::highest_stored_id(&self.config.data_dir, name, workers)
                    .map_err(RuntimeError::Config)?,
                None => 0,
            };
            Some(CheckpointCoordinator::new(
                dir,
                workers,
                self.config.checkpoint_interval_ms,
                manifest,
                after,
            ))
        } else {
            None
        };
        let metrics = JobMetrics::new();
        let build = Arc::new(build);
        let config = Arc::new(self.config.clone());
        let cores = available_cores();
        let mut handles = Vec::with_capacity(workers);
        let mut per_worker: Vec<WorkerChannels> = (0..workers)
            .map(|_| WorkerChannels {
                out: HashMap::new(),
                inp: HashMap::new(),
                net: Vec::new(),
                relinks: None,
            })
            .collect();
        let relinks = (coord.as_ref().is_some_and(|c| c.is_cluster()) && self.config.replay_buffer_bytes > 0)
            .then(|| {
                Arc::new(RelinkBoard {
                    inbox: local.iter().map(|_| std::sync::Mutex::new(Vec::new())).collect(),
                    pending: local.iter().map(|_| std::sync::atomic::AtomicBool::new(false)).collect(),
                    checkpoint: std::sync::atomic::AtomicU64::new(0),
                    overflowed: Arc::new(std::sync::atomic::AtomicBool::new(false)),
                })
            });
        if let Some(board) = &relinks {
            for (slot, &w) in local.iter().enumerate() {
                per_worker[w].relinks = Some((board.clone(), slot));
            }
        }
        if let Some((_, conns, _)) = cluster {
            for ((w, v), c) in conns {
                per_worker[w].net.push((v, c));
            }
        }
        for (e, by_src) in channels.iter_mut().enumerate() {
            for (s, by_dst) in by_src.iter_mut().enumerate() {
                for (d, ch) in by_dst.iter_mut().enumerate() {
                    if let Some((tx, rx)) = ch.take() {
                        per_worker[s].out.insert((e, d), tx);
                        per_worker[d].inp.insert((e, s), rx);
                    }
                }
            }
        }
        let started = Instant::now();
        let locals = local.len();
        for (w, chans) in per_worker.into_iter().enumerate() {
            if !mine[w] {
                continue;
            }
            let slot = local.iter().position(|&l| l == w).unwrap_or(0);
            let pinned = config.pin && config.first_core + locals <= cores;
            // glommio busy-polls only executors bound to CPUs, so an
            // "unpinned" worker is fenced to every online CPU (the OS still
            // places it freely) rather than left unbound.
            let placement = if pinned {
                Placement::Fixed(config.first_core + slot)
            } else {
                match glommio::CpuSet::online() {
                    Ok(set) => Placement::Fenced(set),
                    Err(_) => Placement::Unbound,
                }
            };
            let (build, config, metrics, name, coord) =
                (build.clone(), config.clone(), metrics.clone(), name.to_string(), coord.clone());
            // The worker's future never returns `Pending`: it runs the poll
            // loop to the end of the job, so glommio's scheduler never runs
            // (decision 15).
            let h = LocalExecutorBuilder::new(placement)
                .name(&format!("spate-w{w}"))
                .io_memory(config.io_memory_bytes)
                .ring_depth(64)
                .spawn(move || async move {
                    let _done = WorkerDone(metrics.clone());
                    worker_main(w, workers, name, build, config, metrics, chans, coord);
                })
                .map_err(|e| RuntimeError::Spawn { worker: w, reason: e.to_string() })?;
            handles.push(h);
        }
        Ok(Job {
            handles,
            metrics,
            started,
            relinks,
            local,
            replay_buffer_bytes: self.config.replay_buffer_bytes,
            workers: locals,
            coord,
            name: name.to_string(),
            data_dir: self.config.data_dir.clone(),
        })
    }
}

impl Job {
    /// The job's live metrics.
    pub fn metrics(&self) -> &Arc<JobMetrics> {
        &self.metrics
    }

    /// Whether every worker has ended.
    pub fn is_finished(&self) -> bool {
        self.metrics.workers_done.load(Ordering::Acquire) >= self.workers
    }

    /// When the job started.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// The job's checkpointing, when it takes checkpoints.
    pub fn checkpoints(&self) -> Option<&Arc<CheckpointCoordinator>> {
        self.coord.as_ref()
    }

    /// Stops every worker of this node's share of the job at its next step
    /// (their connections close), keeping the checkpoints: what a node does
    /// when the coordinator rolls the job back to recover from a failure.
    /// [`Job::wait`] then returns [`RuntimeError::Cancelled`].
    pub fn cancel(&self) {
        self.metrics.cancel();
    }

    /// Whether this share recovers live from another node's failure: it
    /// keeps replay buffers, and links to a vanished worker wait for its
    /// replacement (see [`Job::recover`]).
    pub fn is_live(&self) -> bool {
        self.relinks.is_some()
    }

    /// Another node failed and the job recovers live: checkpoints up to
    /// `aborted` are void; the failed node's workers are being restored
    /// from checkpoint `checkpoint` (0: none, from the start) elsewhere,
    /// and their replacements will connect ([`Job::relink`]); this node's
    /// checkpoints now stream to `replicas` under `replica_epoch`.
    pub fn recover(
        &self,
        checkpoint: u64,
        aborted: u64,
        replicas: Vec<std::net::SocketAddr>,
        replica_epoch: u64,
    ) -> Result<(), String> {
        let (Some(board), Some(coord)) = (&self.relinks, &self.coord) else {
            return Err("this share of the job keeps no replay buffers: it cannot recover live".into());
        };
        if board.overflowed.load(Ordering::Acquire) {
            return Err(format!(
                "its replay buffers overflowed ({} bytes per worker) while no checkpoint trimmed them",
                self.replay_buffer_bytes
            ));
        }
        if checkpoint > coord.requested().max(aborted) {
            return Err(format!("checkpoint {checkpoint} was never requested here"));
        }
        coord.abort_through(aborted);
        coord.retarget(replicas, replica_epoch);
        board.checkpoint.store(checkpoint, Ordering::Release);
        Ok(())
    }

    /// The replacement of worker `from` connected to local worker `to`
    /// over `conn` (after [`Job::recover`]): the worker re-links, replays
    /// what it sent `from` since the checkpoint, and skips what it already
    /// took from it.
    pub fn relink(&self, to: usize, from: usize, conn: spate_net::Connection) -> Result<(), String> {
        let Some(board) = &self.relinks else {
            return Err("this share of the job keeps no replay buffers: it cannot re-link".into());
        };
        let slot = self
            .local
            .iter()
            .position(|&w| w == to)
            .ok_or_else(|| format!("worker {to} is not on this node"))?;
        board.inbox[slot]
            .lock()
            .map_err(|_| "the re-link mailbox lock is poisoned".to_string())?
            .push((from, conn));
        board.pending[slot].store(true, Ordering::SeqCst);
        Ok(())
    }

    /// This node's workers (global ids).
    pub fn local_workers(&self) -> &[usize] {
        &self.local
    }

    /// Waits for the job to end.
    pub fn wait(self) -> Result<JobReport, RuntimeError> {
        let mut panicked = None;
        for (w, h) in self.handles.into_iter().enumerate() {
            if h.join().is_err() && panicked.is_none() {
                panicked = Some(w);
            }
        }
        let elapsed = self.started.elapsed();
        if self.metrics.is_cancelled() {
            return Err(RuntimeError::Cancelled);
        }
        if let Some(reason) = self.metrics.failure() {
            return Err(RuntimeError::Failed(reason));
        }
        if let Some(worker) = panicked {
            return Err(RuntimeError::WorkerPanicked { worker });
        }
        // A job that ended has nothing left to resume. (A node of a cluster
        // keeps its checkpoints until the whole job is done: another
        // node's failure can still roll this share back.)
        if self.coord.as_ref().is_some_and(|c| !c.is_cluster()) {
            checkpoint::remove_checkpoints(&self.data_dir, &self.name).map_err(RuntimeError::Failed)?;
        }
        Ok(JobReport {
            workers: self.workers,
            elapsed,
            records_in: self.metrics.records_in.load(Ordering::Relaxed),
            records_out: self.metrics.records_out.load(Ordering::Relaxed),
            checkpoints: self.coord.as_ref().map_or(0, |c| c.taken()),
            restored_from: self.coord.as_ref().and_then(|c| c.restored().map(|m| m.id)),
        })
    }
}

/// Counts a worker as ended when dropped, even by a panic.
struct WorkerDone(Arc<JobMetrics>);

impl Drop for WorkerDone {
    fn drop(&mut self) {
        self.0.workers_done.fetch_add(1, Ordering::AcqRel);
    }
}

struct WorkerChannels {
    out: HashMap<(usize, usize), Producer<Batch>>,
    inp: HashMap<(usize, usize), Consumer<Batch>>,
    /// Connections to remote workers, by remote worker.
    net: Vec<(usize, spate_net::Connection)>,
    /// With live recovery: where re-links reach this worker (its slot).
    relinks: Option<(Arc<RelinkBoard>, usize)>,
}

/// How long a link to a vanished worker may stay down before the job
/// fails (the coordinator normally re-links it, or rolls the job back,
/// well before).
const LINK_DOWN_MAX: Duration = Duration::from_secs(30);

/// Live recovery's mailbox (docs/ARCHITECTURE.md, decision 25): the
/// connections from replacements of failed workers, handed by the node to
/// the local workers they link to, which re-link and replay at their next
/// loop turn.
pub(crate) struct RelinkBoard {
    /// Per local worker (its slot in the node's list): `(remote worker,
    /// connection from its replacement)`.
    inbox: Vec<std::sync::Mutex<Vec<(usize, spate_net::Connection)>>>,
    pending: Vec<std::sync::atomic::AtomicBool>,
    /// The checkpoint the replacements restored (0: none).
    checkpoint: std::sync::atomic::AtomicU64,
    /// A replay buffer of this node gave up (stayed full with no checkpoint
    /// to trim it): a replacement could not be replayed what it lost.
    overflowed: Arc<std::sync::atomic::AtomicBool>,
}

/// A worker's side of live recovery.
struct Live {
    board: Arc<RelinkBoard>,
    slot: usize,
    /// Its links to remote workers.
    links: Vec<(usize, Rc<RefCell<NetLink>>)>,
    /// The checkpoint the buffers were last trimmed to.
    trimmed: u64,
    /// Since when a replay buffer has been full, with no trim since.
    full_since: Option<Instant>,
    /// How long buffers may stay full before they are given up.
    grace: Duration,
    /// Bytes the replay buffers may hold.
    limit: usize,
    /// Whether throttling was reported.
    told: bool,
}

impl Live {
    /// Takes the connections replacements made to this worker: re-links,
    /// replays the buffers and restarts the receivers' counts.
    fn relink(&mut self, items: &mut [Item], flusher: &mut Flusher, ckpt: &Ckpt) -> Result<(), String> {
        self.board.pending[self.slot].store(false, Ordering::SeqCst);
        let conns = match self.board.inbox[self.slot].lock() {
            Ok(mut q) => std::mem::take(&mut *q),
            Err(_) => return Err("the re-link mailbox lock is poisoned".into()),
        };
        let checkpoint = self.board.checkpoint.load(Ordering::Acquire);
        ckpt.sync_abort();
        for (v, conn) in conns {
            let Some((_, link)) = self.links.iter().find(|(r, _)| *r == v) else {
                return Err(format!("a re-link from worker {v}, which this worker has no link to"));
            };
            {
                let mut l = link.borrow_mut();
                l.relink(conn);
                flusher.replay_to(v, checkpoint, &mut l)?;
            }
            for item in items.iter_mut() {
                match &mut item.work {
                    Work::Input { cursor: Some((r, c)), edge, .. } if *r == v => {
                        c.restart(checkpoint, item.done)
                            .map_err(|why| format!("edge {edge}: re-linking worker {v}: {why}"))?;
                        item.done = false;
                    }
                    Work::Net(l) if l.borrow().remote == v => item.done = false,
                    _ => {}
                }
            }
        }
        Ok(())
    }

    /// Trims the buffers and counts to the last complete checkpoint, and
    /// fails a link that stayed down too long.
    fn maintain(&mut self, items: &mut [Item], flusher: &mut Flusher, ckpt: &Ckpt) -> Result<(), String> {
        let done = ckpt.checkpointer.as_ref().map_or(0, |c| c.coordinator().completed());
        if done > self.trimmed {
            self.trimmed = done;
            flusher.trim_logs(done);
            for item in items.iter_mut() {
                if let Work::Input { cursor: Some((_, c)), .. } = &mut item.work {
                    c.trim(done);
                }
            }
            // Checkpoints are trimming: the grace starts again.
            self.full_since = None;
        }
        let bytes = flusher.logged_bytes();
        flusher.throttled = bytes >= self.limit;
        if !flusher.throttled {
            self.full_since = None;
        } else {
            let since = *self.full_since.get_or_insert_with(Instant::now);
            if !std::mem::replace(&mut self.told, true) {
                let me = self.links.first().map_or(0, |(_, l)| l.borrow().me);
                eprintln!(
                    "spate: worker {me}: its replay buffers are full ({bytes} bytes): throttling the sources \
                     until a checkpoint trims them"
                );
            }
            if since.elapsed() > self.grace {
                // No checkpoint is coming to trim them.
                flusher.give_up_logs();
                flusher.throttled = false;
                self.full_since = None;
                self.board.overflowed.store(true, Ordering::Release);
            }
        }
        for (v, link) in &self.links {
            if let Some((_, why)) = link.borrow().down_for().filter(|&(t, _)| t > LINK_DOWN_MAX) {
                return Err(format!(
                    "the link to worker {v} broke ({why}) and no replacement re-linked it within {LINK_DOWN_MAX:?}"
                ));
            }
        }
        Ok(())
    }
}

/// One outbox with the ring its batches go to.
struct Route {
    outbox: Rc<RefCell<Outbox>>,
    tx: Tx,
    /// Whether the outbox is on the backlog list.
    backlogged: bool,
    /// With live recovery, on a channel to another node: what was sent
    /// since the last complete checkpoint.
    log: Option<ReplayLog>,
}

/// Moves closed batches from outboxes into rings, never waiting.
///
/// Batches go out in order per outbox: every path below takes them from the
/// front of the outbox's queue and puts one that does not fit back there,
/// and nothing runs concurrently on a worker.
struct Flusher {
    /// `routes[edge][dest]`.
    routes: Vec<Vec<Option<Route>>>,
    touched: TouchList,
    spare: Vec<(u32, u32)>,
    /// Outboxes holding closed batches that did not fit in their ring.
    backlog: Vec<(u32, u32)>,
    linger_ns: u64,
    /// A replay buffer is full: sources wait (see `crate::replay`).
    throttled: bool,
    /// The records of the replay buffers.
    store: LogStore,
}

/// What sending one outbox's batches did.
#[derive(PartialEq, Eq)]
enum Sent {
    /// Everything that was due went out.
    All,
    /// The ring filled up; batches wait in the outbox.
    Full,
    /// The receiving worker is gone.
    Closed,
}

impl Flusher {
    /// `b` came in on edge `e` from worker `p` and was read: its buffer
    /// serves this worker's next batch to `p` on that edge. Its lines are
    /// in this worker's cache, having just been read; a buffer from the
    /// allocator was last read by the other worker (the one that freed it),
    /// and writing it took each line back from that worker's cache first:
    /// with two workers, `Outbox::push_run`'s stores into fresh buffers
    /// took 24–31 % of keyed-sum's samples on a contended VM (6 % on a quiet
    /// one). With this, ×1.045–1.059 (9 rounds of 20 M records, contended).
    /// (Giving the buffer back to the worker that wrote it, tried in
    /// session 15, moved the lines across the other way and ran slower.)
    fn recycle_received(&mut self, e: u32, p: u32, b: Batch) {
        if let Some(r) = Self::route(&mut self.routes, e, p) {
            r.outbox.borrow_mut().recycle(b);
        }
    }

    fn route(routes: &mut [Vec<Option<Route>>], e: u32, d: u32) -> Option<&mut Route> {
        routes.get_mut(e as usize).and_then(|r| r.get_mut(d as usize)).and_then(Option::as_mut)
    }

    /// Sends what is due on one outbox: closed batches, then (with
    /// `linger_ns` passed at `now`) the open one; `watermark_only` also
    /// sends a batch that only advances the watermark.
    fn send(
        r: &mut Route,
        store: &mut LogStore,
        linger_ns: u64,
        now: u64,
        watermark_only: bool,
        moved: &mut usize,
    ) -> Sent {
        loop {
            let next = r.outbox.borrow_mut().take_next(linger_ns, now, watermark_only);
            let Some(b) = next else { return Sent::All };
            match r.tx.try_push(b) {
                Ok(Some(b)) => {
                    // Copied into the connection (and the log): its buffer
                    // goes back to the outbox.
                    if let Some(log) = &mut r.log {
                        log.keep(store, &b);
                    }
                    r.outbox.borrow_mut().recycle(b);
                }
                Ok(None) => {}
                Err(b) => {
                    r.outbox.borrow_mut().put_back(b);
                    return if r.tx.is_closed() { Sent::Closed } else { Sent::Full };
                }
            }
            *moved += 1;
        }
    }

    /// Bytes in the replay buffers.
    fn logged_bytes(&self) -> usize {
        self.routes.iter().flatten().flatten().filter_map(|r| r.log.as_ref()).map(ReplayLog::bytes).sum()
    }

    /// Gives up every replay buffer.
    fn give_up_logs(&mut self) {
        for r in self.routes.iter_mut().flatten().flatten() {
            if let Some(log) = r.log.as_mut() {
                log.give_up(&mut self.store);
            }
        }
    }

    /// Checkpoint `completed` is complete everywhere: trims the replay
    /// buffers.
    fn trim_logs(&mut self, completed: u64) {
        for r in self.routes.iter_mut().flatten().flatten() {
            if let Some(log) = &mut r.log {
                log.trim(&mut self.store, completed);
            }
        }
    }

    /// Worker `remote` was replaced by one restored at `checkpoint`: queues
    /// again, ahead of anything not sent yet, every batch sent to it since
    /// that checkpoint's barrier.
    fn replay_to(&mut self, remote: usize, checkpoint: u64, link: &mut NetLink) -> Result<(), String> {
        for (e, by_dest) in self.routes.iter_mut().enumerate() {
            let Some(Some(r)) = by_dest.get_mut(remote) else { continue };
            let Some(log) = &mut r.log else { continue };
            let again = log
                .take_after(&mut self.store, checkpoint)
                .map_err(|why| format!("edge {e}: cannot replay to worker {remote}: {why}"))?;
            if again.iter().any(Batch::is_final) {
                if let Tx::Net { channel, .. } = &r.tx {
                    link.reopen_out(*channel);
                }
            }
            let any = !again.is_empty();
            r.outbox.borrow_mut().replay(again.into_iter());
            if any && !r.backlogged {
                r.backlogged = true;
                self.backlog.push((e as u32, remote as u32));
            }
        }
        Ok(())
    }

    /// Sends the batches of the outboxes the last step touched (partly
    /// filled ones too once their linger has passed: at once with linger 0,
    /// or with `force`). Outboxes whose ring is full go on the backlog and
    /// into `waiting`: the step's item must wait for them.
    fn flush_touched(&mut self, force: bool, waiting: &mut Vec<(u32, u32)>) -> Result<(), String> {
        // Swap the list with a spare so that steady state allocates nothing.
        let mut touched = std::mem::take(&mut self.spare);
        std::mem::swap(&mut touched, &mut *self.touched.borrow_mut());
        let linger = if force { 0 } else { self.linger_ns };
        let now = if linger > 0 { now_ns() } else { 0 };
        let mut result = Ok(());
        for &(e, d) in &touched {
            let Some(r) = Self::route(&mut self.routes, e, d) else { continue };
            r.outbox.borrow_mut().untouch();
            let sent = Self::send(r, &mut self.store, linger, now, force, &mut 0);
            match sent {
                Sent::All => {}
                Sent::Full => {
                    waiting.push((e, d));
                    if !r.backlogged {
                        r.backlogged = true;
                        self.backlog.push((e, d));
                    }
                }
                Sent::Closed => result = Err(format!("edge {e}: worker {d} stopped taking batches")),
            }
        }
        touched.clear();
        self.spare = touched;
        result
    }

    /// Retries the backlog; whether anything went out.
    fn drain_backlog(&mut self) -> Result<bool, String> {
        if self.backlog.is_empty() {
            return Ok(false);
        }
        let mut backlog = std::mem::take(&mut self.backlog);
        let mut moved = 0;
        let mut result = Ok(());
        backlog.retain(|&(e, d)| {
            let Some(r) = self.routes.get_mut(e as usize).and_then(|r| r.get_mut(d as usize)) else {
                return false;
            };
            let Some(r) = r.as_mut() else { return false };
            let sent = Self::send(r, &mut self.store, u64::MAX, 0, false, &mut moved);
            if sent == Sent::Closed {
                result = Err(format!("edge {e}: worker {d} stopped taking batches"));
            }
            r.backlogged = sent != Sent::All;
            r.backlogged
        });
        self.backlog = backlog;
        result.map(|()| moved > 0)
    }

    /// Whether an outbox still holds closed batches.
    fn is_backed_up(&self, e: u32, d: u32) -> bool {
        self.routes
            .get(e as usize)
            .and_then(|r| r.get(d as usize))
            .and_then(Option::as_ref)
            .is_some_and(|r| r.backlogged)
    }

    /// The linger tick: sends every outbox's due partly filled batch and
    /// watermark advance (`force`: everything, for the end of the job).
    fn flush_idle(&mut self, force: bool) -> Result<(), String> {
        let linger = if force { 0 } else { self.linger_ns };
        let now = if linger > 0 { now_ns() } else { 0 };
        let mut result = Ok(());
        for (e, by_dest) in self.routes.iter_mut().enumerate() {
            for (d, r) in by_dest.iter_mut().enumerate() {
                let Some(r) = r.as_mut() else { continue };
                if r.backlogged || !r.outbox.borrow().has_open() {
                    continue;
                }
                match Self::send(r, &mut self.store, linger, now, true, &mut 0) {
                    Sent::All => {}
                    Sent::Full => {
                        r.backlogged = true;
                        self.backlog.push((e as u32, d as u32));
                    }
                    Sent::Closed => result = Err(format!("edge {e}: worker {d} stopped taking batches")),
                }
            }
        }
        result
    }

    /// Whether every outbox has sent everything, its final batch included.
    fn all_sent(&self) -> bool {
        self.backlog.is_empty()
            && self.routes.iter().flatten().flatten().all(|r| !r.outbox.borrow().has_open())
    }
}

/// What a worker runs: a source instance or the receiving end of a ring.
enum Work {
    Source(SourceTask),
    Input {
        edge: usize,
        rx: Rx,
        input: Rc<RefCell<dyn BatchInput>>,
        /// With live recovery, from a worker of another node: what was
        /// taken from it.
        cursor: Option<(usize, ReplayCursor)>,
    },
    /// A connection to a remote worker: moves its bytes and frames.
    Net(Rc<RefCell<NetLink>>),
}

/// One work item and the outboxes its last step could not flush.
struct Item {
    work: Work,
    done: bool,
    waiting: Vec<(u32, u32)>,
    /// The last checkpoint barrier this item passed (a source injected it,
    /// or the producer of this ring sent it).
    passed: u64,
}

/// A worker's checkpointing state.
struct Ckpt {
    checkpointer: Option<Rc<Checkpointer>>,
    barriers: Rc<BarrierTracker>,
    /// When worker 0 requests the next checkpoint.
    next_ns: u64,
}

impl Ckpt {
    /// Voids the alignments of checkpoints the coordinator aborted.
    fn sync_abort(&self) {
        if let Some(c) = &self.checkpointer {
            let a = c.coordinator().aborted();
            if a > self.barriers.aborted() {
                self.barriers.abort_through(a);
            }
        }
    }

    /// Whether an item that passed a barrier must wait: an alignment is in
    /// progress on this worker, and the item's records from after the
    /// barrier could reach an instance that has not aligned it yet.
    fn holds(&self, item: &Item) -> bool {
        self.barriers.holds(item.passed)
    }
}

impl Item {
    /// Whether an outbox this item wrote to is still backed up.
    fn is_blocked(&mut self, flusher: &Flusher) -> bool {
        if self.waiting.is_empty() {
            return false;
        }
        self.waiting.retain(|&(e, d)| flusher.is_backed_up(e, d));
        !self.waiting.is_empty()
    }

    /// What the item is and where it stands, for `SPATE_DEBUG`.
    fn describe(&self) -> String {
        let what = match &self.work {
            Work::Net(l) => format!("net to worker {}", l.borrow().remote),
            Work::Source(t) => t.name.clone(),
            Work::Input { edge, .. } => format!("edge {edge}"),
        };
        let state = if self.done {
            "done"
        } else if self.waiting.is_empty() {
            "ready"
        } else {
            "blocked"
        };
        format!("{what}: {state}")
    }

    /// Runs one step; whether it did anything.
    fn step(
        &mut self,
        flusher: &mut Flusher,
        metrics: &JobMetrics,
        ckpt: &Ckpt,
        step_records: usize,
    ) -> Result<bool, String> {
        let (progress, force) = match &mut self.work {
            Work::Net(link) => {
                let mut l = link.borrow_mut();
                let moved = l.poll(std::time::Instant::now())?;
                self.done = l.is_done();
                // Received batches are taken by their input items.
                return Ok(moved);
            }
            Work::Source(t) => {
                if let Some(c) = &ckpt.checkpointer {
                    let requested = c.coordinator().requested();
                    let behind = self.passed.max(c.coordinator().completed()).max(c.coordinator().aborted());
                    if requested > behind {
                        // Inject the next barrier before any later record.
                        // Checkpoints are requested one at a time, so the
                        // source is exactly one behind (a cluster's ids may
                        // skip those of a rolled-back attempt).
                        let id = requested;
                        let offset = t.runner.offset().unwrap_or(0);
                        t.runner.barrier(id);
                        self.passed = id;
                        c.source_reported(id, &t.name, offset)?;
                        flusher.flush_touched(true, &mut self.waiting)?;
                        return Ok(true);
                    }
                }
                if flusher.throttled {
                    // A replay buffer is full: no new records until a
                    // checkpoint trims it (barriers above still go).
                    return Ok(false);
                }
                let step = t.runner.step(step_records);
                metrics.records_in.fetch_add(step.emitted as u64, Ordering::Relaxed);
                let done = step.status == SourceStatus::Done;
                if done {
                    if let Some(c) = &ckpt.checkpointer {
                        c.coordinator().stop();
                    }
                }
                self.done = done;
                (step.emitted > 0 || done, done)
            }
            Work::Input { edge, rx, input, cursor } => {
                let aborted = ckpt.barriers.aborted();
                let mut got = false;
                for _ in 0..BATCHES_PER_VISIT {
                    let Some(batch) = rx.try_pop() else {
                        if !got && rx.is_finished() {
                            return Err(format!(
                                "edge {edge}: a producing worker stopped without ending its stream"
                            ));
                        }
                        break;
                    };
                    got = true;
                    let mut skip = 0;
                    if let Some((producer, c)) = cursor.as_mut() {
                        skip = c.arrive(&batch, aborted);
                        let ahead = c.ahead();
                        if ahead > 0 {
                            // Noted before the barrier goes downstream, so
                            // before any instance there can report it.
                            if let (Some(id), Some(k)) = (batch.barrier(), &ckpt.checkpointer) {
                                if id > aborted {
                                    k.note_ahead(id, *edge, *producer, ahead);
                                }
                            }
                        } else if matches!(rx, Rx::Ring(_)) {
                            // A restored skip on a ring is done (rings are
                            // never re-linked: no count is needed).
                            *cursor = None;
                        }
                    }
                    input.borrow_mut().on_batch(&batch, skip);
                    if batch.is_final() {
                        self.done = true;
                        break;
                    }
                    if let Some(id) = batch.barrier().filter(|&id| id > aborted) {
                        // Later batches from this producer wait for the
                        // alignment (see `Ckpt::holds`).
                        self.passed = id;
                        break;
                    }
                    flusher.recycle_received(*edge as u32, batch.producer, batch);
                    // With linger 0 every batch's results go out at once.
                    if flusher.linger_ns == 0 {
                        break;
                    }
                }
                (got, false)
            }
        };
        if progress {
            flusher.flush_touched(force, &mut self.waiting)?;
        }
        Ok(progress)
    }
}

/// Builds this worker's share of the dataflow and runs its poll loop until
/// the job ends or fails.
#[allow(clippy::too_many_arguments)]
fn worker_main<F>(
    me: usize,
    workers: usize,
    name: String,
    build: Arc<F>,
    config: Arc<RuntimeConfig>,
    metrics: Arc<JobMetrics>,
    mut chans: WorkerChannels,
    coord: Option<Arc<CheckpointCoordinator>>,
) where
    F: Fn(&Dataflow) + Send + Sync + 'static,
{
    let checkpointer = match coord.map(|c| Checkpointer::open(&config.data_dir, &name, me, c)).transpose() {
        Ok(c) => c.map(Rc::new),
        Err(e) => {
            metrics.fail(e);
            return;
        }
    };
    let df = Dataflow::new(&name);
    build(&df);
    let (sources, edge_factories) = {
        let mut g = df.graph.borrow_mut();
        (std::mem::take(&mut g.sources), std::mem::take(&mut g.edges))
    };
    let touched: TouchList = Rc::new(RefCell::new(Vec::new()));
    let mut wb = WorkerBuild {
        worker: me,
        workers,
        config: config.clone(),
        metrics: metrics.clone(),
        dataflow: name.clone(),
        shared: HashMap::new(),
        edges: (0..edge_factories.len())
            .map(|e| {
                EdgeRuntime::new(e as u32, me, workers, &touched, config.batch_records, config.batch_bytes)
            })
            .collect(),
        barriers: Rc::new(BarrierTracker::default()),
        checkpointer: checkpointer.clone(),
    };
    for f in &edge_factories {
        f(&mut wb);
    }
    let mut items: Vec<Item> = Vec::new();
    for f in &sources {
        if let Some(t) = f(&mut wb) {
            items.push(Item { work: Work::Source(t), done: false, waiting: Vec::new(), passed: 0 });
        }
    }
    let mut live = chans.relinks.take().map(|(board, slot)| Live {
        board,
        slot,
        links: Vec::new(),
        trimmed: 0,
        full_since: None,
        // A full replay buffer waits this long for a checkpoint to trim it.
        grace: Duration::from_millis(config.checkpoint_interval_ms * 3 + 1000),
        limit: config.replay_buffer_bytes,
        told: false,
    });
    for e in wb.edges.iter_mut() {
        if !e.sender_installed {
            e.finish_without_sender(me);
        }
    }
    let edges = wb.edges.len();
    let mut outs: HashMap<(usize, usize), Tx> = chans.out.drain().map(|(k, p)| (k, Tx::Ring(p))).collect();
    let mut ins: HashMap<(usize, usize), Rx> = chans.inp.drain().map(|(k, c)| (k, Rx::Ring(c))).collect();
    for (v, conn) in chans.net.drain(..) {
        let link = Rc::new(RefCell::new(NetLink::new(conn, v, me, workers)));
        if let Some(l) = &mut live {
            link.borrow_mut().set_live();
            l.links.push((v, link.clone()));
        }
        for e in 0..edges {
            let out_ch = remote::channel(e, me, v, workers);
            let in_ch = remote::channel(e, v, me, workers);
            link.borrow_mut().sends_on(out_ch);
            outs.insert((e, v), Tx::Net { link: link.clone(), channel: out_ch });
            let queue = link.borrow_mut().queue(in_ch);
            ins.insert((e, v), Rx::Net { link: link.clone(), channel: in_ch, queue });
        }
        items.push(Item { work: Work::Net(link), done: false, waiting: Vec::new(), passed: 0 });
    }
    let mut routes: Vec<Vec<Option<Route>>> =
        (0..wb.edges.len()).map(|_| (0..workers).map(|_| None).collect()).collect();
    for ((e, d), tx) in outs.drain() {
        if let Some(Some(outbox)) = wb.edges[e].outboxes.get(d) {
            let log = (live.is_some() && matches!(tx, Tx::Net { .. })).then(ReplayLog::new);
            routes[e][d] = Some(Route { outbox: outbox.clone(), tx, backlogged: false, log });
        }
    }
    let mut inputs: Vec<(usize, usize, Rx)> = ins.drain().map(|((e, s), rx)| (e, s, rx)).collect();
    inputs.sort_by_key(|&(e, s, _)| (e, s));
    for (edge, producer, rx) in inputs {
        let Some(input) = wb.edges[edge].input.clone() else { continue };
        // A restored state may already hold records of the producer's
        // stream beyond the checkpoint's barrier: they are skipped (on a
        // ring too, after a rollback that put both workers on one node).
        let (restored, ahead) = wb
            .checkpointer
            .as_ref()
            .map_or((0, 0), |c| (c.restoring().unwrap_or(0), c.restored_ahead(edge, producer)));
        let cursor = (ahead > 0 || (live.is_some() && matches!(rx, Rx::Net { .. })))
            .then(|| (producer, ReplayCursor::resuming(restored, ahead)));
        items.push(Item {
            work: Work::Input { edge, rx, input, cursor },
            done: false,
            waiting: Vec::new(),
            passed: 0,
        });
    }
    if let Some(c) = &checkpointer {
        if let Err(e) = c.start_writer(metrics.clone()) {
            metrics.fail(e);
        }
        c.coordinator().worker_built(c.participants());
    }
    let barriers = wb.barriers.clone();
    let mut flusher = Flusher {
        routes,
        touched,
        spare: Vec::new(),
        backlog: Vec::new(),
        linger_ns: config.linger_us * 1000,
        throttled: false,
        store: LogStore::default(),
    };
    let tick_ns =
        if config.linger_us > 0 { config.linger_us.clamp(20, TICK_US_MAX) } else { TICK_US_MAX } * 1000;
    let nap = Duration::from_micros(NAP_US);
    let spin_ns = config.spin_before_park_us * 1000;
    let debug = std::env::var_os("SPATE_DEBUG").is_some();

    let mut ckpt =
        Ckpt { checkpointer, barriers, next_ns: now_ns() + config.checkpoint_interval_ms * 1_000_000 };
    if let Err(e) = run_loop(
        &mut items,
        &mut flusher,
        &metrics,
        &config,
        &mut ckpt,
        live.as_mut(),
        tick_ns,
        spin_ns,
        nap,
        debug,
        me,
        &name,
    ) {
        metrics.fail(e);
    }
    drop(items);
    drop(wb);
}

/// The worker's poll loop (see the module documentation).
#[allow(clippy::too_many_arguments)]
fn run_loop(
    items: &mut [Item],
    flusher: &mut Flusher,
    metrics: &JobMetrics,
    config: &RuntimeConfig,
    ckpt: &mut Ckpt,
    mut recovery: Option<&mut Live>,
    tick_ns: u64,
    spin_ns: u64,
    nap: Duration,
    debug: bool,
    me: usize,
    name: &str,
) -> Result<(), String> {
    // Edges this worker sends nothing on still owe their final batches.
    flusher.flush_idle(true)?;
    let mut next_tick = now_ns() + tick_ns;
    let mut idle_since: Option<u64> = None;
    let mut next_debug = now_ns();
    let mut next_maintain = 0;
    ckpt.sync_abort();
    loop {
        if metrics.has_failed() {
            return Ok(());
        }
        let mut progress = false;
        if let Some(l) = recovery.as_deref_mut() {
            if l.board.pending[l.slot].load(Ordering::Relaxed) {
                l.relink(items, flusher, ckpt)?;
                progress = true;
            }
        }
        progress |= flusher.drain_backlog()?;
        let (mut live, mut links) = (0, 0);
        for item in items.iter_mut() {
            if item.done {
                continue;
            }
            if matches!(item.work, Work::Net(_)) {
                links += 1;
            } else {
                live += 1;
            }
            if item.is_blocked(flusher) || ckpt.holds(item) {
                continue;
            }
            progress |= item.step(flusher, metrics, ckpt, config.source_step_records)?;
        }
        let now = now_ns();
        if now >= next_maintain {
            next_maintain = now + TICK_US_MAX * 1000;
            ckpt.sync_abort();
            if let Some(l) = recovery.as_deref_mut() {
                l.maintain(items, flusher, ckpt)?;
            }
        }
        if me == 0 && now >= ckpt.next_ns {
            if let Some(c) = &ckpt.checkpointer {
                if c.coordinator().request_next() {
                    ckpt.next_ns = now + config.checkpoint_interval_ms * 1_000_000;
                }
            }
        }
        if live == 0 {
            // Everything is in the outboxes: send it all, then wait for the
            // connections to close (both directions).
            flusher.flush_idle(true)?;
            if links == 0 && flusher.all_sent() {
                return Ok(());
            }
        } else if now >= next_tick {
            next_tick = now + tick_ns;
            flusher.flush_idle(false)?;
            if debug && now >= next_debug {
                next_debug = now + 300_000_000;
                let states: Vec<String> = items.iter().map(Item::describe).collect();
                eprintln!("{name} worker {me}: items {states:?} backlog {:?}", flusher.backlog);
            }
        }
        if progress {
            idle_since = None;
        } else if config.park_when_idle {
            let since = *idle_since.get_or_insert(now);
            if now - since >= spin_ns {
                std::thread::sleep(nap);
            }
        } else {
            std::hint::spin_loop();
        }
    }
}
