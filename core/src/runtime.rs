//! The thread-per-core runtime: one glommio executor per worker, pinned to a
//! core, running the worker's operator instances as a few cooperative tasks.
//!
//! Per worker there is one task per source instance and one task per
//! (exchange edge, producing worker) pair that receives batches. Every task
//! runs synchronous *steps* — a source step, or one received batch pushed
//! through the fused operator chain — and after each step flushes the batches
//! the step closed, awaiting a full channel (backpressure). Because the graph
//! is acyclic, a task blocked on an edge's channel is only ever waiting on
//! tasks further downstream, which never wait on it: no deadlock.
//!
//! Workers share nothing but bounded single-producer, single-consumer
//! rings ([`crate::ring`]), one per edge and worker pair, polled.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use glommio::{LocalExecutorBuilder, Placement};

use crate::batch::Batch;
use crate::config::{available_cores, RuntimeConfig};
use crate::dataflow::{Dataflow, WorkerBuild};
use crate::exchange::{EdgeRuntime, Outbox, TouchList};
use crate::limits::TICK_US_MAX;
use crate::metrics::JobMetrics;
use crate::ring::{ring, Consumer, Producer};
use crate::source::SourceStatus;
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
}

impl std::fmt::Display for RuntimeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RuntimeError::Config(e) => write!(f, "invalid runtime configuration: {e}"),
            RuntimeError::Dataflow(es) => write!(f, "invalid dataflow: {}", es.join("; ")),
            RuntimeError::Spawn { worker, reason } => write!(f, "cannot start worker {worker}: {reason}"),
            RuntimeError::WorkerPanicked { worker } => write!(f, "worker {worker} panicked"),
            RuntimeError::Failed(e) => write!(f, "job failed: {e}"),
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
    workers: usize,
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
        self.config.validate().map_err(RuntimeError::Config)?;
        let workers = self.config.effective_workers();
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
                        (0..workers).map(|d| (s != d).then(|| ring(self.config.channel_batches))).collect()
                    })
                    .collect()
            })
            .collect();
        let metrics = JobMetrics::new();
        let build = Arc::new(build);
        let config = Arc::new(self.config.clone());
        let cores = available_cores();
        let mut handles = Vec::with_capacity(workers);
        let mut per_worker: Vec<WorkerChannels> =
            (0..workers).map(|_| WorkerChannels { out: HashMap::new(), inp: HashMap::new() }).collect();
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
        for (w, chans) in per_worker.into_iter().enumerate() {
            let pinned = config.pin && config.first_core + workers <= cores;
            // glommio busy-polls only executors bound to CPUs, so an
            // "unpinned" worker is fenced to every online CPU (the OS still
            // places it freely) rather than left unbound.
            let placement = if pinned {
                Placement::Fixed(config.first_core + w)
            } else {
                match glommio::CpuSet::online() {
                    Ok(set) => Placement::Fenced(set),
                    Err(_) => Placement::Unbound,
                }
            };
            let (build, config, metrics, name) =
                (build.clone(), config.clone(), metrics.clone(), name.to_string());
            let mut builder = LocalExecutorBuilder::new(placement)
                .name(&format!("spate-w{w}"))
                .io_memory(config.io_memory_bytes)
                .ring_depth(64)
                .preempt_timer(Duration::from_micros(config.preempt_us.max(10)));
            if !config.park_when_idle {
                // Never park: poll timers and channels continuously.
                builder = builder.spin_before_park(Duration::from_secs(24 * 3600));
            } else if config.spin_before_park_us > 0 {
                builder = builder.spin_before_park(Duration::from_micros(config.spin_before_park_us));
            }
            let h = builder
                .spawn(move || async move {
                    let _done = WorkerDone(metrics.clone());
                    worker_main(w, workers, name, build, config, metrics, chans).await;
                })
                .map_err(|e| RuntimeError::Spawn { worker: w, reason: e.to_string() })?;
            handles.push(h);
        }
        Ok(Job { handles, metrics, started, workers })
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

    /// Waits for the job to end.
    pub fn wait(self) -> Result<JobReport, RuntimeError> {
        let mut panicked = None;
        for (w, h) in self.handles.into_iter().enumerate() {
            if h.join().is_err() && panicked.is_none() {
                panicked = Some(w);
            }
        }
        let elapsed = self.started.elapsed();
        if let Some(reason) = self.metrics.failure() {
            return Err(RuntimeError::Failed(reason));
        }
        if let Some(worker) = panicked {
            return Err(RuntimeError::WorkerPanicked { worker });
        }
        Ok(JobReport {
            workers: self.workers,
            elapsed,
            records_in: self.metrics.records_in.load(Ordering::Relaxed),
            records_out: self.metrics.records_out.load(Ordering::Relaxed),
        })
    }
}

thread_local! {
    static FLUSH_STAGE: std::cell::Cell<(&'static str, u32, u32)> = const { std::cell::Cell::new(("none", 0, 0)) };
}

/// Lets the worker's other tasks run once, then resumes.
///
/// Workers busy-poll: every wait in the runtime (an empty or full ring, a
/// source with nothing due, the ticker's period) is a loop around this
/// yield, never a glommio timer or a channel waker. Under load on a 2-core
/// machine, glommio 0.9 was seen to stop firing an executor's timers and to
/// lose channel wake-ups, stalling a job for good (docs/ARCHITECTURE.md,
/// decision 15); a task that polls cannot miss anything. The price is a
/// worker that uses its whole core even when idle, as thread-per-core
/// engines usually do.
async fn idle() {
    futures_lite::future::yield_now().await;
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
}

/// One outbox with its channel, sent in order under a one-permit semaphore.
struct Route {
    outbox: Rc<RefCell<Outbox>>,
    tx: Producer<Batch>,
    order: glommio::sync::Semaphore,
}

/// Sends the batches that steps closed, in order, waiting on full channels.
///
/// A task flushes only the outboxes its own step touched: those are
/// downstream of it, so waiting on them is backpressure. Waiting on any other
/// outbox could wait on a task that waits on this one (deadlock).
struct Flusher {
    /// `routes[edge][dest]`.
    routes: Vec<Vec<Option<Route>>>,
    touched: TouchList,
    spare: RefCell<Vec<(u32, u32)>>,
    linger_ns: u64,
    metrics: Arc<JobMetrics>,
}

impl Flusher {
    /// Sends the batches of the outboxes touched since the last call;
    /// partly filled ones go too once their linger has passed (at once with
    /// linger 0, or with `force`). Outboxes left with a lingering batch stay
    /// touched for the linger ticker.
    async fn flush_touched(&self, force: bool) {
        // Swap the list with a spare so that steady state allocates nothing.
        let mut touched = std::mem::take(&mut *self.spare.borrow_mut());
        std::mem::swap(&mut touched, &mut *self.touched.borrow_mut());
        for &(e, d) in &touched {
            if let Some(Some(r)) = self.routes.get(e as usize).and_then(|r| r.get(d as usize)) {
                r.outbox.borrow_mut().untouch();
                FLUSH_STAGE.with(|f| f.set(("permit", e, d)));
                let Ok(_permit) = r.order.acquire_permit(1).await else { continue };
                FLUSH_STAGE.with(|f| f.set(("send", e, d)));
                self.send_route(r, force, false).await;
                FLUSH_STAGE.with(|f| f.set(("done", e, d)));
            }
        }
        touched.clear();
        *self.spare.borrow_mut() = touched;
    }

    /// The ticker: sends what is due on every outbox nobody is sending on
    /// right now, without ever waiting (the ticker must keep ticking: it is
    /// what bounds a missed wake-up). A batch that does not fit goes back
    /// to its outbox.
    fn flush_idle(&self) {
        let now = if self.linger_ns > 0 { now_ns() } else { 0 };
        for r in self.routes.iter().flatten().flatten() {
            if !r.outbox.borrow().has_open() {
                continue;
            }
            let Ok(_permit) = r.order.try_acquire_permit(1) else { continue };
            loop {
                let next = r.outbox.borrow_mut().take_next(self.linger_ns, now, true);
                let Some(b) = next else { break };
                if let Err(b) = r.tx.try_push(b) {
                    r.outbox.borrow_mut().put_back(b);
                    break;
                }
            }
        }
    }

    async fn send_route(&self, r: &Route, force: bool, watermark_only: bool) {
        let linger = if force { 0 } else { self.linger_ns };
        let now = if linger > 0 { now_ns() } else { 0 };
        loop {
            let next = r.outbox.borrow_mut().take_next(linger, now, watermark_only || force);
            let Some(mut b) = next else { break };
            // A full ring is backpressure: wait for room, polling.
            loop {
                match r.tx.try_push(b) {
                    Ok(()) => break,
                    Err(back) => {
                        if r.tx.is_closed() {
                            self.metrics.fail("a worker's input closed while the job ran");
                            return;
                        }
                        b = back;
                        idle().await;
                    }
                }
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn worker_main<F>(
    me: usize,
    workers: usize,
    name: String,
    build: Arc<F>,
    config: Arc<RuntimeConfig>,
    metrics: Arc<JobMetrics>,
    mut chans: WorkerChannels,
) where
    F: Fn(&Dataflow) + Send + Sync + 'static,
{
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
    };
    for f in &edge_factories {
        f(&mut wb);
    }
    let mut tasks = Vec::new();
    for f in &sources {
        if let Some(t) = f(&mut wb) {
            tasks.push(t);
        }
    }
    for e in wb.edges.iter_mut() {
        if !e.sender_installed {
            e.finish_without_sender(me);
        }
    }

    let mut routes: Vec<Vec<Option<Route>>> =
        (0..wb.edges.len()).map(|_| (0..workers).map(|_| None).collect()).collect();
    for ((e, d), tx) in chans.out.drain() {
        if let Some(Some(outbox)) = wb.edges[e].outboxes.get(d) {
            routes[e][d] =
                Some(Route { outbox: outbox.clone(), tx, order: glommio::sync::Semaphore::new(1) });
        }
    }
    let inputs: Vec<(usize, usize, Consumer<Batch>)> =
        chans.inp.drain().map(|((e, s), rx)| (e, s, rx)).collect();
    let flusher = Rc::new(Flusher {
        routes,
        touched: touched.clone(),
        spare: RefCell::new(Vec::new()),
        linger_ns: config.linger_us * 1000,
        metrics: metrics.clone(),
    });

    // Debug: what each task is doing, printed by the ticker with SPATE_DEBUG.
    let states: Rc<RefCell<Vec<&'static str>>> = Rc::new(RefCell::new(Vec::new()));
    let mut running = Vec::new();
    for mut t in tasks {
        let (st, my) = (states.clone(), {
            states.borrow_mut().push("new");
            states.borrow().len() - 1
        });
        let (flusher, metrics, step_max) = (flusher.clone(), metrics.clone(), config.source_step_records);
        running.push(glommio::spawn_local(async move {
            loop {
                if metrics.has_failed() {
                    break;
                }
                st.borrow_mut()[my] = "source:step";
                let step = t.runner.step(step_max);
                st.borrow_mut()[my] = "source:flush";
                metrics.records_in.fetch_add(step.emitted as u64, Ordering::Relaxed);
                match step.status {
                    SourceStatus::Done => {
                        flusher.flush_touched(true).await;
                        break;
                    }
                    SourceStatus::Busy => {
                        flusher.flush_touched(false).await;
                        futures_lite::future::yield_now().await;
                    }
                    SourceStatus::Idle { next_ns } => {
                        flusher.flush_touched(false).await;
                        st.borrow_mut()[my] = "source:sleep";
                        // Sleep, even briefly, rather than yield: a sleeping
                        // task lets the executor poll its reactor, which is
                        // where batches from other workers are picked up.
                        // The next step re-checks whether a record is due.
                        let _ = next_ns;
                        idle().await;
                    }
                }
            }
            let _ = &t.name;
        }));
    }
    for (e, _producer, rx) in inputs {
        let Some(input) = wb.edges[e].input.clone() else { continue };
        let (flusher, metrics) = (flusher.clone(), metrics.clone());
        let (st, my) = (states.clone(), {
            states.borrow_mut().push("new");
            states.borrow().len() - 1
        });
        running.push(glommio::spawn_local(async move {
            loop {
                st.borrow_mut()[my] = "recv:wait";
                let Some(batch) = rx.try_pop() else {
                    if rx.is_finished() {
                        if !metrics.has_failed() {
                            metrics.fail(format!(
                                "edge {e}: a producing worker stopped without ending its stream"
                            ));
                        }
                        break;
                    }
                    if metrics.has_failed() {
                        break;
                    }
                    idle().await;
                    continue;
                };
                let last = batch.is_final();
                input.borrow_mut().on_batch(&batch);
                drop(batch);
                st.borrow_mut()[my] = "recv:flush";
                flusher.flush_touched(false).await;
                if last || metrics.has_failed() {
                    break;
                }
            }
        }));
    }
    // The ticker sends lingering batches that no step is flushing, and bounds
    // how long the executor sleeps: glommio can miss a cross-executor wake-up
    // when both sides park at once (seen as a multi-minute stall at 1 M
    // records/s), and a periodic timer turns such a miss into a delay of at
    // most one tick.
    let ticker = {
        let period = if config.linger_us > 0 {
            Duration::from_micros(config.linger_us.clamp(20, TICK_US_MAX))
        } else {
            Duration::from_micros(TICK_US_MAX)
        };
        let flusher = flusher.clone();
        let debug = std::env::var_os("SPATE_DEBUG").is_some();
        let states = states.clone();
        let mut last = Instant::now();
        let mut next_tick = Instant::now() + period;
        glommio::spawn_local(async move {
            loop {
                idle().await;
                let now = Instant::now();
                if now < next_tick {
                    continue;
                }
                next_tick = now + period;
                if debug && last.elapsed() > Duration::from_millis(300) {
                    last = Instant::now();
                    eprintln!(
                        "worker {me}: tasks {:?} flush {:?} permits {:?}",
                        states.borrow(),
                        FLUSH_STAGE.with(|f| f.get()),
                        flusher
                            .routes
                            .iter()
                            .flatten()
                            .flatten()
                            .map(|r| r.order.available())
                            .collect::<Vec<_>>()
                    );
                }
                flusher.flush_idle();
            }
        })
    };
    // Edges this worker sends nothing on still owe their final batches.
    flusher.flush_touched(true).await;
    for t in running {
        t.await;
    }
    flusher.flush_touched(true).await;
    drop(ticker.cancel());
    drop(wb);
}
