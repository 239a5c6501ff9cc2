//! One worker ([`Worker`]): builds its share of the dataflow, then runs in
//! *turns* — one pass of the poll loop over its work items (see the
//! module documentation of [`crate::runtime`]). Production runs the turns
//! back to back on the worker's pinned glommio executor ([`Worker::run`]);
//! the simulator calls [`Worker::turn`] itself, one worker at a time, with
//! simulated time and connections. Both run this code.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crate::assignment::Assignment;
use crate::batch::Batch;
use crate::checkpoint::{CheckpointCoordinator, Checkpointer};
use crate::config::RuntimeConfig;
use crate::dataflow::{Dataflow, WorkerBuild};
use crate::exchange::{EdgeRuntime, TouchList};
use crate::handoff::HandoffBoard;
use crate::limits::{NAP_US, TICK_US_MAX};
use crate::link::netlink::NetLink;
use crate::link::route::{Rx, Tx};
use crate::link::{channel, Conn};
use crate::load::{BinCounts, InputLoad, LoadBoard, LoadMeter, SourceLoad, TurnKind};
use crate::metrics::JobMetrics;
use crate::push::BarrierTracker;
use crate::replay::{LogStore, ReplayCursor, ReplayLog};
use crate::ring::{Consumer, Producer};
use crate::runtime::error::WorkerError;
use crate::runtime::flusher::{Flusher, Route};
use crate::runtime::item::{Ckpt, Item, Work};
use crate::runtime::live::{Live, RelinkBoard};
use crate::sabotage::{self, Bug};
use crate::time::{now, now_ns};

/// A dataflow's build function, run once on every worker.
pub(crate) type BuildFn = Arc<dyn Fn(&Dataflow) + Send + Sync>;

/// Everything a worker needs to build itself: made by
/// [`crate::runtime::Runtime`] for each worker of a share.
pub(crate) struct WorkerSetup<C> {
    pub(crate) me: usize,
    pub(crate) workers: usize,
    pub(crate) name: String,
    pub(crate) build: BuildFn,
    pub(crate) config: Arc<RuntimeConfig>,
    pub(crate) metrics: Arc<JobMetrics>,
    pub(crate) coord: Option<Arc<CheckpointCoordinator>>,
    /// Rings to and from the other workers of this process, by (edge,
    /// worker).
    pub(crate) out: HashMap<(usize, usize), Producer<Batch>>,
    pub(crate) inp: HashMap<(usize, usize), Consumer<Batch>>,
    /// Links to remote workers, by remote worker.
    pub(crate) net: Vec<(usize, C)>,
    /// With live recovery: where re-links reach this worker (its slot).
    pub(crate) relinks: Option<(Arc<RelinkBoard<C>>, usize)>,
    /// Whether the checkpointer's backup writer runs inline
    /// ([`Worker::write_checkpoints`], the simulator) rather than on a
    /// thread of its own.
    pub(crate) inline_writer: bool,
    /// Which worker owns each bin of the keyed operators, at the start.
    pub(crate) assignment: Assignment,
    /// The job's live handoffs (`None`: its bins never move).
    pub(crate) handoff: Option<Arc<HandoffBoard>>,
    /// Partitions of each source (see [`crate::dataflow::Dataflow::source`]).
    pub(crate) partitions: usize,
    /// Counts the worker as ended, whether it is built or not.
    pub(crate) done: WorkerDone,
    /// Where its load reports go, and its slot there (`None`: the job
    /// takes no load reports).
    pub(crate) load: Option<(Arc<LoadBoard>, usize)>,
}

/// Counts a worker as ended when dropped, even by a panic: made with its
/// setup, so that a worker whose thread dies before it is built (its
/// executor could not be made, its build panicked) is counted too.
pub(crate) struct WorkerDone(pub(crate) Arc<JobMetrics>);

impl Drop for WorkerDone {
    fn drop(&mut self) {
        self.0.workers_done.fetch_add(1, Ordering::AcqRel);
    }
}

/// What a turn did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Turn {
    /// Something moved.
    Progress,
    /// Nothing to do now.
    Idle,
    /// The worker is through: its job ended, failed or was cancelled.
    Done,
}

/// One worker of a running share (see the module documentation).
pub struct Worker<C> {
    me: usize,
    name: String,
    items: Vec<Item<C>>,
    flusher: Flusher<C>,
    metrics: Arc<JobMetrics>,
    config: Arc<RuntimeConfig>,
    ckpt: Ckpt,
    live: Option<Live<C>>,
    /// The job's live handoffs.
    handoff: Option<Arc<HandoffBoard>>,
    tick_ns: u64,
    next_tick: u64,
    next_maintain: u64,
    next_debug: u64,
    debug: bool,
    started: bool,
    done: bool,
    /// Through, waiting for the release (see [`JobMetrics::workers_through`]).
    through: bool,
    /// The dataflow instances (dropped after the items).
    wb: Option<WorkerBuild>,
    /// The item the turn is stepping (for the message of a panic).
    at: Option<usize>,
    /// Each exchange edge's name.
    edge_names: Vec<String>,
    /// Its load measurements (`None`: the job takes no load reports).
    meter: Option<LoadMeter>,
    /// An item of this turn waited on a full outbox.
    blocked: bool,
    _done: WorkerDone,
}

impl<C: Conn> Worker<C> {
    /// Builds worker `setup.me`'s share of the dataflow; `None` if that
    /// failed (the job's metrics say why).
    pub(crate) fn build(setup: WorkerSetup<C>) -> Option<Self> {
        let WorkerSetup {
            me,
            workers,
            name,
            build,
            config,
            metrics,
            coord,
            mut out,
            mut inp,
            mut net,
            mut relinks,
            inline_writer,
            assignment,
            handoff,
            partitions,
            done: done_guard,
            load,
        } = setup;
        let bin_counts: BinCounts =
            load.as_ref().map(|_| Rc::new(RefCell::new(vec![0u32; 1usize << config.bins_log2])));
        let checkpointer = match coord.map(|c| Checkpointer::open(&config.data_dir, &name, me, c)).transpose()
        {
            Ok(c) => c.map(Rc::new),
            Err(e) => {
                metrics.fail(e.to_string());
                return None;
            }
        };
        // The user's code runs here (the build function, the operators'
        // factories): a panic fails the job before this worker's rings and
        // links close, so that the other workers' failures it causes do
        // not come first (decision 44).
        let built = crate::panic::catch(Some("building its share of the dataflow"), || {
            let df = Dataflow::new(&name);
            build(&df);
            let (sources, edge_factories, edge_names) = {
                let mut g = df.graph.borrow_mut();
                (
                    std::mem::take(&mut g.sources),
                    std::mem::take(&mut g.edges),
                    std::mem::take(&mut g.edge_names),
                )
            };
            let touched: TouchList = Rc::new(RefCell::new(Vec::new()));
            let mut wb = WorkerBuild {
                worker: me,
                workers,
                config: config.clone(),
                metrics: metrics.clone(),
                dataflow: name.clone(),
                partitions,
                assignment,
                handoff: handoff.clone(),
                shared: HashMap::new(),
                edges: (0..edge_factories.len())
                    .map(|e| {
                        EdgeRuntime::new(
                            e as u32,
                            me,
                            workers,
                            &touched,
                            config.batch_records,
                            config.batch_bytes,
                        )
                    })
                    .collect(),
                barriers: Rc::new(BarrierTracker::default()),
                checkpointer: checkpointer.clone(),
                bin_counts: bin_counts.clone(),
            };
            for f in &edge_factories {
                f(&mut wb);
            }
            let mut items: Vec<Item<C>> = Vec::new();
            for f in &sources {
                if let Some(t) = f(&mut wb) {
                    items.push(Item {
                        work: Work::Source(t),
                        done: false,
                        waiting: Vec::new(),
                        passed: 0,
                        records: 0,
                    });
                }
            }
            (wb, items, touched, edge_names)
        });
        let (mut wb, mut items, touched, edge_names) = match built {
            Ok(b) => b,
            Err(p) => {
                metrics.fail(p.to_string());
                return None;
            }
        };
        let mut live = relinks.take().map(|(board, slot)| Live {
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
        let mut outs: HashMap<(usize, usize), Tx<C>> = out.drain().map(|(k, p)| (k, Tx::Ring(p))).collect();
        let mut ins: HashMap<(usize, usize), Rx<C>> = inp.drain().map(|(k, c)| (k, Rx::Ring(c))).collect();
        // In the order of the remote workers, so that every run (and every
        // replay of a simulator's seed) visits the links alike.
        net.sort_by_key(|(v, _)| *v);
        for (v, conn) in net.drain(..) {
            let link = Rc::new(RefCell::new(NetLink::new(conn, v, me, workers)));
            if let Some(l) = &mut live {
                link.borrow_mut().set_live();
                l.links.push((v, link.clone()));
            }
            for e in 0..edges {
                let out_ch = channel(e, me, v, workers);
                let in_ch = channel(e, v, me, workers);
                link.borrow_mut().sends_on(out_ch);
                outs.insert((e, v), Tx::Net { link: link.clone(), channel: out_ch });
                let queue = link.borrow_mut().queue(in_ch);
                ins.insert((e, v), Rx::Net { link: link.clone(), channel: in_ch, queue });
            }
            items.push(Item {
                work: Work::Net(link),
                done: false,
                waiting: Vec::new(),
                passed: 0,
                records: 0,
            });
        }
        let mut routes: Vec<Vec<Option<Route<C>>>> =
            (0..wb.edges.len()).map(|_| (0..workers).map(|_| None).collect()).collect();
        for ((e, d), tx) in outs.drain() {
            if let Some(Some(outbox)) = wb.edges[e].outboxes.get(d) {
                let log = (live.is_some() && matches!(tx, Tx::Net { .. })).then(ReplayLog::new);
                routes[e][d] = Some(Route { outbox: outbox.clone(), tx, backlogged: false, log });
            }
        }
        let mut inputs: Vec<(usize, usize, Rx<C>)> = ins.drain().map(|((e, s), rx)| (e, s, rx)).collect();
        inputs.sort_by_key(|&(e, s, _)| (e, s));
        for (edge, producer, rx) in inputs {
            let Some(input) = wb.edges[edge].input.clone() else { continue };
            // A restored state may already hold records of the producer's
            // stream beyond the checkpoint's barrier: they are skipped (on a
            // ring too, after a rollback that put both workers on one node).
            let (restored, ahead) = wb.checkpointer.as_ref().map_or((0, 0), |c| {
                let ahead = if sabotage::on(Bug::IgnoreAhead) { 0 } else { c.restored_ahead(edge, producer) };
                (c.restoring().unwrap_or(0), ahead)
            });
            let cursor = (ahead > 0 || (live.is_some() && matches!(rx, Rx::Net { .. })))
                .then(|| (producer, ReplayCursor::resuming(restored, ahead)));
            items.push(Item {
                work: Work::Input { edge, producer, rx, input, cursor },
                done: false,
                waiting: Vec::new(),
                passed: 0,
                records: 0,
            });
        }
        if let Some(c) = &checkpointer {
            let started =
                if inline_writer { c.start_inline_writer() } else { c.start_writer(metrics.clone()) };
            if let Err(e) = started {
                metrics.fail(e.to_string());
            }
            c.coordinator().worker_built(c.participants());
        }
        let barriers = wb.barriers.clone();
        let flusher = Flusher {
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
        let t = now_ns();
        let meter = load.map(|(board, slot)| LoadMeter::new(slot, board, bin_counts, config.bins_log2, t));
        let ckpt = Ckpt { checkpointer, barriers, next_ns: t + config.checkpoint_interval_ms * 1_000_000 };
        Some(Self {
            me,
            name,
            items,
            flusher,
            metrics,
            config,
            ckpt,
            live,
            handoff,
            tick_ns,
            next_tick: t + tick_ns,
            next_maintain: 0,
            next_debug: t,
            debug: std::env::var_os("SPATE_DEBUG").is_some(),
            started: false,
            done: false,
            through: false,
            wb: Some(wb),
            at: None,
            edge_names,
            meter,
            blocked: false,
            _done: done_guard,
        })
    }

    /// The worker's global id.
    pub fn id(&self) -> usize {
        self.me
    }

    /// One pass of the poll loop at `now_ns` (realtime nanoseconds, as
    /// [`crate::time::now_ns`] reads them). An error fails the job.
    pub fn turn(&mut self, now_ns: u64) -> Turn {
        if self.done {
            return Turn::Done;
        }
        if let Some(m) = &mut self.meter {
            m.begin(now_ns);
            if now_ns >= m.next_report_ns {
                self.report_load(now_ns);
            }
        }
        match self.pass(now_ns) {
            Ok(t) => {
                if let Some(m) = &mut self.meter {
                    m.end(match t {
                        Turn::Progress => TurnKind::Busy,
                        _ if std::mem::take(&mut self.blocked) => TurnKind::Blocked,
                        _ => TurnKind::Idle,
                    });
                }
                if t == Turn::Done {
                    self.finish();
                }
                t
            }
            Err(e) => {
                self.metrics.fail(e.to_string());
                self.finish();
                Turn::Done
            }
        }
    }

    /// Folds the interval that ends at `now_ns` into a load report and
    /// leaves it on the job's board (cold: once an interval).
    #[cold]
    fn report_load(&mut self, now_ns: u64) {
        let Some(m) = &mut self.meter else { return };
        let mut sources = Vec::new();
        let mut inputs = Vec::new();
        for item in &mut self.items {
            let records = std::mem::take(&mut item.records);
            match &item.work {
                Work::Source(t) => sources.push(SourceLoad {
                    name: t.name.clone(),
                    records,
                    offered_per_s: if item.done { Some(0.0) } else { t.runner.offered_per_s(now_ns) },
                }),
                Work::Input { edge, producer, rx, .. } => {
                    let (queued, capacity) = rx.fill();
                    inputs.push(InputLoad { edge: *edge, producer: *producer, records, queued, capacity });
                }
                Work::Net(_) => {}
            }
        }
        let report = m.report(self.me, now_ns, sources, inputs);
        m.board.publish(m.slot, report);
    }

    /// Ends the worker: its instances and links are dropped (closing its
    /// connections), and the job counts it as ended.
    fn finish(&mut self) {
        if std::mem::take(&mut self.through) {
            self.metrics.workers_through.fetch_sub(1, Ordering::AcqRel);
        }
        self.done = true;
        self.items.clear();
        self.wb = None;
    }

    fn pass(&mut self, now_ns: u64) -> Result<Turn, WorkerError> {
        if !self.started {
            self.started = true;
            // Edges this worker sends nothing on still owe their final
            // batches.
            self.flusher.flush_idle(true)?;
            self.ckpt.sync_abort();
        }
        if self.metrics.has_failed() {
            return Ok(Turn::Done);
        }
        let (items, flusher, ckpt, at) = (&mut self.items, &mut self.flusher, &mut self.ckpt, &mut self.at);
        let mut progress = false;
        if let Some(l) = self.live.as_mut() {
            if l.board.pending[l.slot].load(Ordering::Relaxed) {
                // Not through any more, said before the flag is cleared
                // (see `Job::is_finished`).
                if std::mem::take(&mut self.through) {
                    self.metrics.workers_through.fetch_sub(1, Ordering::SeqCst);
                }
                l.relink(items, flusher, ckpt)?;
                progress = true;
            }
        }
        progress |= flusher.drain_backlog()?;
        if self.handoff.as_ref().is_some_and(|b| b.take_wake(self.me)) {
            // A live handoff concerns this worker: senders switch their
            // routing now, keyed instances look at the board. Inputs that
            // ended are poked too: their keyed instances may still owe a
            // step's split, or hold records for its state.
            for item in items.iter_mut().filter(|i| !i.done || matches!(i.work, Work::Input { .. })) {
                match &mut item.work {
                    Work::Source(t) => t.runner.poke(),
                    Work::Input { input, .. } => input.borrow_mut().poke(),
                    Work::Net(_) => {}
                }
            }
            flusher.flush_touched(true, &mut Vec::new())?;
            progress = true;
        }
        let (mut live, mut links) = (0, 0);
        for (i, item) in items.iter_mut().enumerate() {
            if item.done {
                continue;
            }
            if matches!(item.work, Work::Net(_)) {
                links += 1;
            } else {
                live += 1;
            }
            if item.is_blocked(flusher) {
                self.blocked = true;
                continue;
            }
            if ckpt.holds(item) {
                continue;
            }
            *at = Some(i);
            progress |= item.step(flusher, &self.metrics, ckpt, self.config.source_step_records)?;
        }
        *at = None;
        if now_ns >= self.next_maintain {
            self.next_maintain = now_ns + TICK_US_MAX * 1000;
            ckpt.sync_abort();
            if let Some(l) = self.live.as_mut() {
                l.maintain(items, flusher, ckpt, now())?;
            }
        }
        if self.me == 0 && now_ns >= ckpt.next_ns {
            if let Some(c) = &ckpt.checkpointer {
                if c.coordinator().request_next() {
                    ckpt.next_ns = now_ns + self.config.checkpoint_interval_ms * 1_000_000;
                }
            }
        }
        // A worker a live handoff still needs stays: it owes a split, or
        // the records it holds for the state on its way.
        let through = live == 0 && !self.handoff.as_ref().is_some_and(|b| b.involves(self.me)) && {
            // Everything is in the outboxes: send it all, then wait for the
            // connections to close (both directions).
            flusher.flush_idle(true)?;
            links == 0 && flusher.all_sent()
        };
        if through != self.through {
            self.through = through;
            if through {
                self.metrics.workers_through.fetch_add(1, Ordering::AcqRel);
            } else {
                // A replacement re-linked it: its streams run again.
                self.metrics.workers_through.fetch_sub(1, Ordering::AcqRel);
            }
        }
        if through {
            // With live recovery a worker waits, links and logs kept, until
            // the job is done everywhere: a failed worker's replacement may
            // still re-link it and need its replay.
            if (self.live.is_none() || self.metrics.is_released())
                && self.handoff.as_ref().is_none_or(|b| b.retire(self.me))
            {
                return Ok(Turn::Done);
            }
            return Ok(if progress { Turn::Progress } else { Turn::Idle });
        } else if live > 0 && now_ns >= self.next_tick {
            self.next_tick = now_ns + self.tick_ns;
            flusher.flush_idle(false)?;
            if self.debug && now_ns >= self.next_debug {
                self.next_debug = now_ns + 300_000_000;
                let states: Vec<String> = items
                    .iter()
                    .map(|i| {
                        if ckpt.holds(i) {
                            format!("{} (held at barrier {})", i.describe(), i.passed)
                        } else {
                            i.describe()
                        }
                    })
                    .collect();
                eprintln!("{} worker {}: items {states:?} backlog {:?}", self.name, self.me, flusher.backlog);
            }
        }
        Ok(if progress { Turn::Progress } else { Turn::Idle })
    }

    /// Runs the checkpoints this worker's instances saved through the
    /// backup writer, here, when the writer is inline (see
    /// [`WorkerSetup::inline_writer`]); whether it wrote any.
    pub fn write_checkpoints(&self) -> bool {
        self.ckpt.checkpointer.as_ref().is_some_and(|c| c.write_inline(&self.metrics))
    }

    /// Runs turns back to back until the worker is through, napping when
    /// idle as the config says: a production worker's whole life on its
    /// executor. A panic (an operator's, or Spate's) is caught once, around
    /// the whole loop, and fails the job naming the thread, the item it was
    /// stepping and the message, before the worker's rings and links close
    /// (decision 44).
    pub(crate) fn run(mut self) {
        if let Err(mut p) = crate::panic::catch(None, || self.run_turns()) {
            p.during = Some(self.stepping());
            self.metrics.fail(p.to_string());
            self.finish();
        }
    }

    /// What the turn was doing: the item it was stepping, if any.
    fn stepping(&self) -> String {
        match self.at.and_then(|i| self.items.get(i)).map(|i| &i.work) {
            Some(Work::Source(t)) => {
                format!("running source `{}` or an operator its records reach on this worker", t.name)
            }
            Some(Work::Input { edge, .. }) => match self.edge_names.get(*edge) {
                Some(name) => format!("running the operators after exchange `{name}`"),
                None => format!("running the operators after exchange edge {edge}"),
            },
            Some(Work::Net(l)) => match l.try_borrow() {
                Ok(l) => format!("moving the frames of its link to worker {}", l.remote),
                Err(_) => "moving the frames of a link".to_string(),
            },
            None => format!("running worker {}'s poll loop", self.me),
        }
    }

    /// [`Worker::run`]'s loop.
    fn run_turns(&mut self) {
        let nap = Duration::from_micros(NAP_US);
        let spin_ns = self.config.spin_before_park_us * 1000;
        let mut idle_since: Option<u64> = None;
        loop {
            let now = now_ns();
            match self.turn(now) {
                Turn::Done => break,
                Turn::Progress => idle_since = None,
                Turn::Idle => {
                    if self.config.park_when_idle {
                        let since = *idle_since.get_or_insert(now);
                        if now - since >= spin_ns {
                            std::thread::sleep(nap);
                        }
                    } else {
                        std::hint::spin_loop();
                    }
                }
            }
        }
    }
}
