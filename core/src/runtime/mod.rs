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
//!
//! Map: [`worker`] (a worker: its build and its turns), `item` (work
//! items and their steps: barrier injection and alignment), `flusher`
//! (outboxes into rings and links, backpressure, replay logs), `live` (a
//! worker's side of live recovery), [`error`] ([`RuntimeError`],
//! [`WorkerError`], [`RecoverError`], [`RelinkError`]). This
//! file starts jobs: threads for production, or workers handed to the
//! caller to drive (the simulator).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use glommio::{LocalExecutorBuilder, Placement};

use crate::assignment::{Assignment, AssignmentError};
use crate::batch::Batch;
use crate::checkpoint::{self, CheckpointCoordinator, ClusterCheckpoints};
use crate::config::{available_cores, ConfigError, RuntimeConfig};
use crate::control::placement::ClusterPlacement;
use crate::dataflow::Dataflow;
use crate::handoff::{HandoffBoard, HandoffError, StepDone, StepInfo};
use crate::link::Conn;
use crate::load::LoadBoard;
use crate::metrics::JobMetrics;
use crate::ring::{ring, Consumer, Producer};
use spate_state::BinRange;

pub mod error;
mod flusher;
pub(crate) mod item;
mod live;
pub mod worker;

pub use error::{RecoverError, RelinkError, ReplayError, RuntimeError, WorkerError};
pub(crate) use live::RelinkBoard;
use worker::{BuildFn, WorkerSetup};
pub use worker::{Turn, Worker};

/// Runs dataflows on this process's workers.
#[derive(Clone, Debug, Default)]
pub struct Runtime {
    config: RuntimeConfig,
}

/// A running job (or one node's share of a cluster job). `C` is the
/// connection type of its links to other nodes.
pub struct Job<C = spate_net::Connection> {
    handles: Vec<std::thread::JoinHandle<()>>,
    metrics: Arc<JobMetrics>,
    started: Instant,
    /// With live recovery: where replacements' connections go.
    relinks: Option<Arc<RelinkBoard<C>>>,
    /// This node's workers (global ids).
    local: Vec<usize>,
    /// Bytes of each replay buffer.
    replay_buffer_bytes: usize,
    workers: usize,
    coord: Option<Arc<CheckpointCoordinator>>,
    /// Live handoffs between this process's workers, or (a share of a
    /// cluster job) between the nodes' (`None` for a job of one worker).
    handoff: Option<Arc<HandoffBoard>>,
    /// A share of a cluster job (its handoffs come from the coordinator).
    is_cluster: bool,
    name: String,
    data_dir: std::path::PathBuf,
    /// Where its workers leave their load reports (`None`: they take
    /// none, `load_interval_ms` is 0).
    load: Option<Arc<LoadBoard>>,
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

/// A share of a cluster job to start: where its workers run, its links to
/// the other nodes' workers (all up), and its checkpointing.
pub struct ShareLinks<C> {
    /// The placement (its `join`, if set: the share joins a running job).
    pub placement: ClusterPlacement,
    /// The links by (local worker, remote worker).
    pub links: BTreeMap<(usize, usize), C>,
    /// What the coordinator gave this node for its checkpoints (needed
    /// when the config takes checkpoints).
    pub checkpoints: Option<ClusterCheckpoints>,
}

/// Rings between the workers of one process: `[edge][src][dst]`.
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
        let (job, setups) = self.prepare::<spate_net::Connection>(name, Arc::new(build), None, false)?;
        self.spawn(job, setups)
    }

    /// Starts this node's share of a job that spans several node processes,
    /// without checkpoints: every node runs the same `build`; this one runs
    /// the workers `placement` gives it and connects them to the others'
    /// through `listener` before the job starts (within the placement's
    /// timeout; the error names the workers not connected). A node of a
    /// job with checkpoints and recovery runs its shares through
    /// [`crate::control::NodeAgent`] instead.
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
        if self.config.checkpoint_interval_ms > 0 {
            return Err(RuntimeError::Config(ConfigError::NeedsCoordinator));
        }
        let links = crate::link::mesh::connect_blocking(&placement, listener).map_err(RuntimeError::Links)?;
        self.start_share(name, Arc::new(build), ShareLinks { placement, links, checkpoints: None })
    }

    /// Starts a share of a cluster job whose links are up, one thread per
    /// worker (what [`crate::control::NodeAgent`] does in production).
    pub fn start_share(
        &self,
        name: &str,
        build: Arc<dyn Fn(&Dataflow) + Send + Sync>,
        share: ShareLinks<spate_net::Connection>,
    ) -> Result<Job, RuntimeError> {
        let (job, setups) = self.prepare(name, build, Some(share), false)?;
        self.spawn(job, setups)
    }

    /// Prepares a share of a cluster job whose links are up and hands its
    /// workers to the caller, which builds them and drives their turns
    /// itself (the simulator), with the backup writer inline.
    #[cfg(test)]
    pub(crate) fn start_driven<C: Conn>(
        &self,
        name: &str,
        build: BuildFn,
        share: ShareLinks<C>,
    ) -> Result<(Job<C>, Vec<Worker<C>>), RuntimeError> {
        let (job, setups) = self.prepare(name, build, Some(share), true)?;
        let workers = setups.into_iter().filter_map(Worker::build).collect();
        Ok((job, workers))
    }

    /// One thread (a pinned glommio executor) per worker, building and
    /// running it.
    fn spawn(
        &self,
        mut job: Job,
        setups: Vec<WorkerSetup<spate_net::Connection>>,
    ) -> Result<Job, RuntimeError> {
        let cores = available_cores();
        let locals = setups.len();
        let config = &self.config;
        for (slot, setup) in setups.into_iter().enumerate() {
            let w = setup.me;
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
            // The worker's future never returns `Pending`: it runs the poll
            // loop to the end of the job, so glommio's scheduler never runs
            // (decision 15). The thread is Spate's own, so that a panic
            // anywhere on it — glommio making the executor, the build, an
            // operator — is caught once at its boundary and fails the job
            // (decision 44); the setup counts the worker as ended however
            // the thread ends.
            let (metrics, io_memory) = (job.metrics.clone(), config.io_memory_bytes);
            let h = std::thread::Builder::new()
                .name(format!("spate-w{w}"))
                .spawn(move || run_worker(w, placement, io_memory, setup, &metrics))
                .map_err(|e| RuntimeError::Spawn { worker: w, reason: e.to_string() })?;
            job.handles.push(h);
        }
        Ok(job)
    }

    /// Validates the dataflow, sets up checkpointing, the rings between
    /// this process's workers and each worker's links; returns the job
    /// (with no worker running yet) and each local worker's setup.
    fn prepare<C: Conn>(
        &self,
        name: &str,
        build: BuildFn,
        cluster: Option<ShareLinks<C>>,
        inline_writer: bool,
    ) -> Result<(Job<C>, Vec<WorkerSetup<C>>), RuntimeError> {
        self.config.validate().map_err(RuntimeError::Config)?;
        if let Some(s) = &cluster {
            let me = s.placement.join.as_ref().map_or(s.placement.me, |j| j.slot);
            if s.placement.nodes.get(me).is_none_or(|n| n.workers == 0) {
                return Err(RuntimeError::Config(ConfigError::NoWorkers { node: me }));
            }
            if self.config.checkpoint_interval_ms > 0 && s.checkpoints.is_none() {
                return Err(RuntimeError::Config(ConfigError::NoCheckpointPlan));
            }
        }
        let (workers, local) = match &cluster {
            Some(s) => (s.placement.total_workers(), s.placement.local()),
            None => {
                let w = self.config.threads();
                (w, (0..w).collect::<Vec<usize>>())
            }
        };
        // Workers that own bins and run sources from the start (the others,
        // up to `max_workers`, wait for bins to move to them).
        let active = match (&cluster, self.config.cluster_start_workers) {
            (Some(_), 0) => workers,
            (Some(_), n) => n.min(workers),
            (None, _) => self.config.effective_workers().min(workers),
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
        let joining = cluster.as_ref().is_some_and(|s| s.placement.join.is_some());
        let cluster_ckpt = cluster.as_ref().and_then(|s| s.checkpoints.clone());
        let coord = if let (true, Some(c)) = (self.config.checkpoint_interval_ms > 0, cluster_ckpt) {
            let c = ClusterCheckpoints { joining, ..c };
            // The backup stores of this node's workers only hold what this
            // incarnation of the job (or the fetch before it) put there.
            if c.restore.is_none() && !c.joining {
                checkpoint::remove_checkpoints(&self.config.data_dir, name)
                    .map_err(|e| RuntimeError::Config(e.into()))?;
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
                checkpoint::latest_manifest(&dir).map_err(|e| RuntimeError::Config(e.into()))?
            } else {
                checkpoint::remove_checkpoints(&self.config.data_dir, name)
                    .map_err(|e| RuntimeError::Config(e.into()))?;
                None
            };
            // A checkpoint of another number of workers restores too: each
            // stateful instance gathers its bins from the old parts, and the
            // sources keep their partitions (decision 42).
            if let Some(m) = &manifest {
                if m.workers != workers && !m.ahead.is_empty() {
                    return Err(RuntimeError::Config(ConfigError::RescaleAhead {
                        dataflow: name.to_string(),
                        checkpoint: m.id,
                        taken: m.workers,
                        workers,
                    }));
                }
            }
            let after = match &manifest {
                Some(m) => checkpoint::highest_stored_id(&self.config.data_dir, name, workers.max(m.workers))
                    .map_err(|e| RuntimeError::Config(e.into()))?,
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
        let config = Arc::new(self.config.clone());
        let relinks = (coord.as_ref().is_some_and(|c| c.is_cluster()) && self.config.replay_buffer_bytes > 0)
            .then(|| {
                Arc::new(RelinkBoard {
                    inbox: local.iter().map(|_| Mutex::new(Vec::new())).collect(),
                    pending: local.iter().map(|_| std::sync::atomic::AtomicBool::new(false)).collect(),
                    checkpoint: std::sync::atomic::AtomicU64::new(0),
                    overflowed: Arc::new(std::sync::atomic::AtomicBool::new(false)),
                })
            });
        let assignment = initial_assignment(coord.as_deref(), workers, active, self.config.bins_log2)
            .map_err(|e| RuntimeError::Config(ConfigError::Assignment(e)))?;
        let partitions = coord.as_ref().and_then(|c| c.restored().map(|m| m.partitions)).unwrap_or(active);
        if let Some(c) = &coord {
            c.set_assignment(&assignment);
            c.set_partitions(partitions);
        }
        // Live handoff moves bins between the workers of one process or,
        // driven by the coordinator, of a cluster's nodes.
        let is_cluster = cluster.is_some();
        let handoff = (workers > 1).then(|| HandoffBoard::with_local(assignment.clone(), &local));
        let load = (self.config.load_interval_ms > 0)
            .then(|| Arc::new(LoadBoard::new(local.len(), self.config.load_interval_ms)));
        let mut setups: BTreeMap<usize, WorkerSetup<C>> = local
            .iter()
            .enumerate()
            .map(|(slot, &w)| {
                let setup = WorkerSetup {
                    me: w,
                    workers,
                    name: name.to_string(),
                    build: build.clone(),
                    config: config.clone(),
                    metrics: metrics.clone(),
                    coord: coord.clone(),
                    out: HashMap::new(),
                    inp: HashMap::new(),
                    net: Vec::new(),
                    relinks: relinks.as_ref().map(|b| (b.clone(), slot)),
                    inline_writer,
                    assignment: assignment.clone(),
                    handoff: handoff.clone(),
                    partitions,
                    done: worker::WorkerDone(metrics.clone()),
                    load: load.as_ref().map(|b| (b.clone(), slot)),
                };
                (w, setup)
            })
            .collect();
        if let Some(s) = cluster {
            for ((w, v), c) in s.links {
                if let Some(setup) = setups.get_mut(&w) {
                    setup.net.push((v, c));
                }
            }
        }
        for (e, by_src) in channels.iter_mut().enumerate() {
            for (s, by_dst) in by_src.iter_mut().enumerate() {
                for (d, ch) in by_dst.iter_mut().enumerate() {
                    if let Some((tx, rx)) = ch.take() {
                        if let Some(setup) = setups.get_mut(&s) {
                            setup.out.insert((e, d), tx);
                        }
                        if let Some(setup) = setups.get_mut(&d) {
                            setup.inp.insert((e, s), rx);
                        }
                    }
                }
            }
        }
        let job = Job {
            handles: Vec::new(),
            metrics,
            started: crate::time::now(),
            relinks,
            local: local.clone(),
            replay_buffer_bytes: self.config.replay_buffer_bytes,
            workers: local.len(),
            coord,
            handoff,
            is_cluster,
            name: name.to_string(),
            data_dir: self.config.data_dir.clone(),
            load,
        };
        let setups = local.iter().filter_map(|w| setups.remove(w)).collect();
        Ok((job, setups))
    }
}

/// A production worker's thread: makes its glommio executor (pinned as
/// `placement` says) and runs the worker on it to the end of the job. A
/// failure to make the executor, or a panic anywhere on the thread that
/// the worker did not catch itself (glommio's, the build's), fails the
/// job with a message naming the thread.
fn run_worker(
    w: usize,
    placement: Placement,
    io_memory: usize,
    setup: WorkerSetup<spate_net::Connection>,
    metrics: &JobMetrics,
) {
    let during = std::cell::Cell::new("making its executor");
    let ran = crate::panic::catch(None, || {
        let ex = LocalExecutorBuilder::new(placement).io_memory(io_memory).ring_depth(64).make()?;
        ex.run(async {
            during.set("building its share of the dataflow");
            if let Some(worker) = Worker::build(setup) {
                during.set("running");
                worker.run();
            }
        });
        Ok::<(), glommio::GlommioError<()>>(())
    });
    match ran {
        Ok(Ok(())) => {}
        Ok(Err(e)) => metrics.fail(RuntimeError::Spawn { worker: w, reason: e.to_string() }.to_string()),
        Err(mut p) => {
            p.during = Some(during.get().to_string());
            metrics.fail(p.to_string());
        }
    }
}

impl<C> Job<C> {
    /// The job's live metrics.
    pub fn metrics(&self) -> &Arc<JobMetrics> {
        &self.metrics
    }

    /// Whether every worker has ended.
    pub fn is_finished(&self) -> bool {
        // A re-link handed to a worker and not taken yet makes it run
        // again: read before the count (a worker that took it stopped
        // counting itself through before it cleared the flag).
        if self.relinks.as_ref().is_some_and(|b| b.pending.iter().any(|p| p.load(Ordering::SeqCst))) {
            return false;
        }
        let done = self.metrics.workers_done.load(Ordering::SeqCst);
        done + self.metrics.workers_through.load(Ordering::SeqCst) >= self.workers
    }

    /// Where this process's workers leave their load reports (`None`:
    /// the job takes none, `RuntimeConfig::load_interval_ms` is 0).
    pub fn load(&self) -> Option<&Arc<LoadBoard>> {
        self.load.as_ref()
    }

    /// When the job started.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// The job's checkpointing, when it takes checkpoints.
    pub fn checkpoints(&self) -> Option<&Arc<CheckpointCoordinator>> {
        self.coord.as_ref()
    }

    /// The job's current assignment of bins to workers (`None` where its
    /// bins cannot move live).
    pub fn assignment(&self) -> Option<Assignment> {
        self.handoff.as_ref().map(|b| b.assignment())
    }

    /// The job's handoff board, or why its bins cannot move live from
    /// here.
    fn board(&self) -> Result<&Arc<HandoffBoard>, HandoffError> {
        if self.is_cluster {
            return Err(HandoffError::NotLive {
                why: "it is a share of a cluster job: its coordinator moves bins (`spate ctl`)",
            });
        }
        self.handoff.as_ref().ok_or(HandoffError::NotLive { why: "it runs one worker" })
    }

    /// The handoff board of this node's share of a cluster job (`None`:
    /// its bins cannot move, the job runs one worker), which the node's
    /// agent drives from the coordinator's steps.
    pub fn share_board(&self) -> Option<&Arc<HandoffBoard>> {
        self.handoff.as_ref().filter(|_| self.is_cluster)
    }

    /// Rescales the job live to `used` workers of those it started
    /// (`[runtime] max_workers`): equal ranges of bins over the first
    /// `used`, none on the others, reached by handoffs of at most
    /// `max_bins` bins between neighbours ([`Assignment::moves_to`]).
    /// Returns every step's report; refuses more workers than the job
    /// started.
    pub fn rescale(
        &self,
        used: usize,
        max_bins: u32,
        timeout: Duration,
    ) -> Result<Vec<StepDone>, HandoffError> {
        self.rescale_sized(used, crate::assignment::StepBounds::bins(max_bins), timeout)
    }

    /// As [`Job::rescale`], its steps bounded and paced by `bounds`
    /// ([`Job::move_bins_sized`]).
    pub fn rescale_sized(
        &self,
        used: usize,
        bounds: crate::assignment::StepBounds,
        timeout: Duration,
    ) -> Result<Vec<StepDone>, HandoffError> {
        let board = self.board()?;
        let now = board.assignment();
        if used == 0 || used > now.workers() {
            return Err(HandoffError::Assignment(crate::assignment::AssignmentError::NoSuchWorker {
                worker: used.saturating_sub(1),
                workers: now.workers(),
            }));
        }
        let target = Assignment::uniform_over(now.bins_log2(), now.workers(), used, 0)
            .map_err(HandoffError::Assignment)?;
        self.rescale_to_sized(&target, bounds, timeout)
    }

    /// Moves the job live to `target`'s ranges (of as many workers and
    /// bins; its version is ignored) by neighbour handoffs of at most
    /// `max_bins` bins ([`Assignment::moves_to`]), as a scaling policy
    /// decides them. Stops at the first step that fails (the steps
    /// before it stand); returns every step's report.
    pub fn rescale_to(
        &self,
        target: &Assignment,
        max_bins: u32,
        timeout: Duration,
    ) -> Result<Vec<StepDone>, HandoffError> {
        self.rescale_to_sized(target, crate::assignment::StepBounds::bins(max_bins), timeout)
    }

    /// As [`Job::rescale_to`], its steps bounded and paced by `bounds`
    /// ([`Job::move_bins_sized`]).
    pub fn rescale_to_sized(
        &self,
        target: &Assignment,
        bounds: crate::assignment::StepBounds,
        timeout: Duration,
    ) -> Result<Vec<StepDone>, HandoffError> {
        let now = self.board()?.assignment();
        let mut done = Vec::new();
        for (bins, from, to) in now.moves_to(target).map_err(HandoffError::Assignment)? {
            done.extend(self.move_bins_sized(bins, from, to, bounds, timeout)?);
        }
        Ok(done)
    }

    /// Whether a handoff step is in flight in this process.
    pub fn handoff_running(&self) -> bool {
        self.handoff.as_ref().is_some_and(|b| b.step().is_some())
    }

    /// As [`Job::move_bins`], in steps of at most `max_bins` bins, each a
    /// handoff of its own, from the end of `bins` next to `to`: the extra
    /// memory and the time the moving bins' records wait are those of one
    /// step, not of the whole move. Stops at the first step that fails
    /// (the steps before it stand); returns every step's report.
    pub fn move_bins_by(
        &self,
        bins: BinRange,
        from: usize,
        to: usize,
        max_bins: u32,
        timeout: Duration,
    ) -> Result<Vec<StepDone>, HandoffError> {
        self.move_bins_sized(bins, from, to, crate::assignment::StepBounds::bins(max_bins), timeout)
    }

    /// As [`Job::move_bins_by`], each step bounded by `bounds.max_bins`
    /// bins and about `bounds.max_bytes` bytes of state, sized as the move
    /// goes from what the steps before moved
    /// ([`crate::assignment::StepSizer`]): a step's pause on the giving
    /// and the taking worker, and the memory it holds twice, are set by
    /// its bytes. With a pace, each step after the first waits that many
    /// times as long as the one before took.
    pub fn move_bins_sized(
        &self,
        bins: BinRange,
        from: usize,
        to: usize,
        bounds: crate::assignment::StepBounds,
        timeout: Duration,
    ) -> Result<Vec<StepDone>, HandoffError> {
        if let Some(board) = &self.handoff {
            // The whole move must fit before any step runs.
            board.assignment().moved(bins, from, to).map_err(HandoffError::Assignment)?;
        }
        let mut done = Vec::new();
        let mut sizer = crate::assignment::StepSizer::new(bins, from, to, bounds.max_bins, bounds.max_bytes);
        while let Some(step) = sizer.next_step() {
            if let Some(last) = done.last() {
                let last: &StepDone = last;
                std::thread::sleep(bounds.gap(Duration::from_micros(last.micros)));
            }
            let d = self.move_bins(step, from, to, timeout)?;
            sizer.moved(step.len(), d.bytes);
            done.push(d);
        }
        Ok(done)
    }

    /// Moves `bins` of every keyed operator from worker `from` to worker
    /// `to` while the job runs (live handoff, see [`crate::handoff`]):
    /// records of other bins are not paused, those of `bins` that reach
    /// `to` before their state are held there, and every record affects
    /// the state once. `bins` must be a run at the end of `from`'s range
    /// next to `to`'s ([`Assignment::moved`]). Waits for a checkpoint in
    /// flight to complete first (none is taken during the move), and for
    /// the move to complete, at most `timeout` each; returns what moved.
    /// The workers must keep running meanwhile: an embedding program keeps
    /// taking the job's outputs on another thread (a full output stops the
    /// workers, and with them the move).
    pub fn move_bins(
        &self,
        bins: BinRange,
        from: usize,
        to: usize,
        timeout: Duration,
    ) -> Result<StepDone, HandoffError> {
        let board = self.board()?;
        let operators = board.unmovable();
        if !operators.is_empty() {
            return Err(HandoffError::Unmovable { operators });
        }
        if let Some(step) = board.step() {
            return Err(HandoffError::Busy { version: step.version });
        }
        let next = board.assignment().moved(bins, from, to).map_err(HandoffError::Assignment)?;
        let over = |t0: Instant| crate::time::now().saturating_duration_since(t0) > timeout;
        let ended = || self.metrics.has_failed() || self.is_finished();
        if let Some(c) = &self.coord {
            c.hold(true);
            let t0 = crate::time::now();
            while c.completed().max(c.aborted()) < c.requested() {
                if ended() || over(t0) {
                    c.hold(false);
                    return Err(if ended() {
                        HandoffError::JobEnded
                    } else {
                        HandoffError::CheckpointBusy { checkpoint: c.requested() }
                    });
                }
                std::thread::sleep(Duration::from_micros(200));
            }
        }
        let info = StepInfo { version: next.version(), bins, from, to };
        if let Err(e) = board.publish(info, next.clone()) {
            if let Some(c) = &self.coord {
                c.hold(false);
            }
            return Err(e);
        }
        let t0 = crate::time::now();
        let done = loop {
            if let Some(d) = board.done().into_iter().rev().find(|d| d.info.version == info.version) {
                break Ok(d);
            }
            if ended() {
                break Err(HandoffError::JobEnded);
            }
            if over(t0) {
                let waited_ms = crate::time::now().saturating_duration_since(t0).as_millis() as u64;
                break Err(HandoffError::TimedOut { step: info, waited_ms });
            }
            std::thread::sleep(Duration::from_micros(100));
        };
        if let Some(c) = &self.coord {
            if done.is_ok() {
                c.set_assignment(&next);
            }
            c.hold(false);
        }
        done
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
    ) -> Result<(), RecoverError> {
        let (Some(board), Some(coord)) = (&self.relinks, &self.coord) else {
            return Err(RecoverError::NotLive);
        };
        if board.overflowed.load(Ordering::Acquire) {
            return Err(RecoverError::Overflowed { bytes: self.replay_buffer_bytes });
        }
        if checkpoint > coord.requested().max(aborted) {
            return Err(RecoverError::NeverRequested { checkpoint });
        }
        // A worker that ended has dropped its links and its replay logs: it
        // could neither re-link a replacement nor replay to it (the
        // simulator found a live recovery that waited on one for ever).
        let ended = self.metrics.workers_done.load(Ordering::Acquire);
        if ended > 0 {
            return Err(RecoverError::WorkersEnded { ended, workers: self.workers });
        }
        if !crate::sabotage::on(crate::sabotage::Bug::NoAbortInFlight) {
            coord.abort_through(aborted);
        }
        coord.retarget(replicas, replica_epoch);
        board.checkpoint.store(checkpoint, Ordering::Release);
        Ok(())
    }

    /// The replacement of worker `from` connected to local worker `to`
    /// over `conn` (after [`Job::recover`]): the worker re-links, replays
    /// what it sent `from` since the checkpoint, and skips what it already
    /// took from it.
    pub fn relink(&self, to: usize, from: usize, conn: C) -> Result<(), RelinkError> {
        let Some(board) = &self.relinks else {
            return Err(RelinkError::NotLive);
        };
        let slot = self.local.iter().position(|&w| w == to).ok_or(RelinkError::NotHere { worker: to })?;
        board.inbox[slot].lock().map_err(|_| RelinkError::Poisoned)?.push((from, conn));
        board.pending[slot].store(true, Ordering::SeqCst);
        Ok(())
    }

    /// This node's workers (global ids).
    pub fn local_workers(&self) -> &[usize] {
        &self.local
    }

    /// Waits for the job to end.
    pub fn wait(self) -> Result<JobReport, RuntimeError> {
        // Workers that are through (a share that recovers live) end now.
        self.metrics.release();
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
            checkpoint::remove_checkpoints(&self.data_dir, &self.name).map_err(RuntimeError::Cleanup)?;
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

/// The assignment a job of `workers` starts from: its restored
/// checkpoint's, when as many workers took it (a rescaled restore starts
/// uniform, one version on), else the first `active` workers' uniform one
/// (the others own nothing until bins move to them).
fn initial_assignment(
    coord: Option<&CheckpointCoordinator>,
    workers: usize,
    active: usize,
    bins_log2: u8,
) -> Result<Assignment, AssignmentError> {
    assignment_for(coord.and_then(|c| c.restored()), workers, active, bins_log2)
}

/// The assignment a job of `workers` workers, the first `active` of which
/// own bins at a fresh start, runs from `restored` (a checkpoint's
/// manifest) or from the start: the one the coordinator of a cluster
/// computes too, so that both agree on every step's version.
pub fn assignment_for(
    restored: Option<&crate::checkpoint::Manifest>,
    workers: usize,
    active: usize,
    bins_log2: u8,
) -> Result<Assignment, AssignmentError> {
    let fresh = |version| Assignment::uniform_over(bins_log2, workers, active, version);
    let Some(m) = restored else { return fresh(0) };
    match &m.assignment {
        Some((version, ranges)) if m.workers == workers => {
            Assignment::from_ranges(*version, bins_log2, ranges.clone())
        }
        Some((version, _)) => fresh(version + 1),
        None => fresh(0),
    }
}

#[cfg(test)]
mod assignment_tests {
    use super::*;
    use crate::checkpoint::Manifest;
    use spate_state::BinRange;

    fn restoring(workers: usize, assignment: Option<(u64, Vec<BinRange>)>) -> Arc<CheckpointCoordinator> {
        let m = Manifest { assignment, ..Manifest::new(5, workers) };
        CheckpointCoordinator::new(std::path::PathBuf::new(), workers, 100, Some(m), 0)
    }

    #[test]
    fn a_job_starts_from_its_checkpoints_assignment() {
        let moved = vec![BinRange::new(0, 10), BinRange::new(10, 16)];
        // Fresh, or a checkpoint of the uniform one: uniform.
        assert_eq!(initial_assignment(None, 2, 2, 4), Ok(Assignment::uniform(4, 2)));
        assert_eq!(initial_assignment(Some(&restoring(2, None)), 2, 2, 4), Ok(Assignment::uniform(4, 2)));
        // As many workers: the recorded one.
        let a = initial_assignment(Some(&restoring(2, Some((3, moved.clone())))), 2, 2, 4);
        assert_eq!(a.as_ref().map(|a| (a.version(), a.ranges().to_vec())), Ok((3, moved.clone())));
        // Rescaled: uniform over the new workers, one version on.
        let a = initial_assignment(Some(&restoring(2, Some((3, moved.clone())))), 3, 3, 4);
        assert_eq!(a.as_ref().map(|a| (a.version(), a.is_uniform(), a.workers())), Ok((4, true, 3)));
        // Three workers, one used at first: it owns everything.
        let a = initial_assignment(None, 3, 1, 4);
        assert_eq!(
            a.as_ref().map(|a| a.ranges().to_vec()),
            Ok(vec![BinRange::new(0, 16), BinRange::new(16, 16), BinRange::new(16, 16)])
        );
        // Ranges that do not cover the space: an error.
        let bad = vec![BinRange::new(0, 10), BinRange::new(11, 16)];
        assert!(initial_assignment(Some(&restoring(2, Some((3, bad)))), 2, 2, 4).is_err());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::IO_MEMORY_BYTES;

    /// A worker whose thread fails before it is built — glommio cannot
    /// make its executor, or panics making it (an allocation the machine
    /// refuses, as `io_memory_bytes` beyond the memory made it) — fails the
    /// job with why and counts as ended: the job ends instead of waiting
    /// for it for ever.
    #[test]
    fn a_worker_whose_executor_cannot_be_made_fails_and_ends_the_job() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let rt = Runtime::new(RuntimeConfig {
            workers: 1,
            pin: false,
            data_dir: dir.path().to_path_buf(),
            ..Default::default()
        });
        for (placement, io_memory, expected) in [
            (Placement::Fixed(1 << 20), IO_MEMORY_BYTES, "cannot start worker 0"),
            (Placement::Unbound, 1 << 62, "panicked while making its executor"),
        ] {
            let (job, mut setups) = rt
                .prepare::<spate_net::Connection>("no-executor", Arc::new(|_: &Dataflow| {}), None, false)
                .unwrap_or_else(|e| panic!("prepare: {e}"));
            let setup = setups.pop().unwrap_or_else(|| panic!("no worker"));
            assert!(!job.is_finished());
            run_worker(0, placement, io_memory, setup, &job.metrics);
            assert!(job.is_finished(), "the worker did not count as ended");
            let e = job.wait().map(|_| ()).map_err(|e| e.to_string());
            assert!(e.as_ref().is_err_and(|e| e.contains(expected)), "{expected:?} not in {e:?}");
        }
    }
}
