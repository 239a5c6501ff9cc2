//! The dataflow builder: a DAG of logical operators over record types.
//!
//! A [`Dataflow`] is built by code that every worker (and every process)
//! runs, so closures need not be `Send`: each worker builds its own copy of
//! the graph and instantiates its operator instances from it. Nothing runs
//! while the graph is built; [`Runtime::start`](crate::runtime::Runtime::start)
//! instantiates and runs it.
//!
//! The primitives here are deliberately few; the operator library (`ops`)
//! builds `map`, `filter`, windows, joins and the rest on them:
//! - [`Dataflow::source`]: a source with one instance or one per worker;
//! - [`Stream::unary`]: a fused one-input operator (direct calls, no channel);
//! - [`Stream::key_by`]: a repartitioning edge routing records by key hash
//!   through the routing table into batches for the owning worker;
//! - [`Stream::binary`]: a fused two-input operator;
//! - [`Stream::sink`]: the end of a stream.

use std::any::Any;
use std::cell::RefCell;
use std::collections::HashMap;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;

use spate_state::keyspace::BinRange;

use crate::assignment::Assignment;
use crate::checkpoint::Checkpointer;
use crate::config::RuntimeConfig;
pub use crate::data::{Data, Key};
use crate::exchange::{EdgeReceiver, EdgeRuntime, ExchangeSender};
use crate::handoff::HandoffBoard;
use crate::metrics::JobMetrics;
use crate::push::{
    BarrierTracker, BinaryCore, BinaryOperator, BoxPush, Discard, FirstInput, SecondInput, Tee,
};
use crate::routing::{key_hash, RoutingTable};
use crate::source::{RunSource, Source, SourceRunner, SourceTask};

/// How many instances an operator has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Parallelism {
    /// One instance, on worker 0 (an embedding input, a file read once).
    One,
    /// One instance on every worker.
    PerWorker,
}

/// What an operator instance knows about where it runs, handed to the
/// factories that create instances.
pub struct InstanceCtx<'a> {
    /// The dataflow's name.
    pub dataflow: &'a str,
    /// This worker's index, `0..workers`.
    pub worker: usize,
    /// Workers of the job.
    pub workers: usize,
    /// The logical operator's name.
    pub operator: &'a str,
    /// The key range this instance owns, for operators downstream of a
    /// `key_by` (the whole space otherwise).
    pub bins: BinRange,
    /// For a source: the partition this instance produces, of
    /// `partitions` (see [`Dataflow::source`]). For other operators, the
    /// worker.
    pub partition: usize,
    /// For a source: its partitions (the job's workers when it first
    /// started, kept by its checkpoints). For other operators, the workers.
    pub partitions: usize,
    /// `B` of the key space.
    pub bins_log2: u8,
    /// The job's metrics.
    pub metrics: &'a Arc<JobMetrics>,
    /// The runtime configuration.
    pub config: &'a RuntimeConfig,
    /// This worker's checkpointing, when the job takes checkpoints: a
    /// stateful instance registers with it, saves its store on a barrier
    /// and restores from it at start.
    pub checkpointer: Option<&'a Rc<Checkpointer>>,
    /// The job's live handoffs, when its bins can move between workers:
    /// a keyed instance registers with it and hands bins off and takes
    /// them in (see [`crate::handoff`]).
    pub handoff: Option<&'a Arc<HandoffBoard>>,
}

impl InstanceCtx<'_> {
    /// The directory for this instance's state: unique per dataflow, operator
    /// and instance.
    pub fn state_dir(&self) -> PathBuf {
        self.config.data_dir.join(self.dataflow).join(self.instance())
    }

    /// This stateful instance's name in checkpoints and backup stores.
    pub fn instance(&self) -> String {
        crate::checkpoint::instance_name(self.operator, self.worker)
    }
}

type PushFactory<T> = Rc<dyn Fn(&mut WorkerBuild) -> BoxPush<T>>;

/// The consumers registered on one stream.
struct Consumers<T> {
    list: RefCell<Vec<PushFactory<T>>>,
}

fn make_output<T: Data>(consumers: &Consumers<T>, wb: &mut WorkerBuild) -> BoxPush<T> {
    let list: Vec<PushFactory<T>> = consumers.list.borrow().clone();
    match list.len() {
        0 => Box::new(Discard),
        1 => (list[0])(wb),
        _ => Box::new(Tee::new(list.iter().map(|f| f(wb)).collect())),
    }
}

pub(crate) type SourceFactory = Box<dyn Fn(&mut WorkerBuild) -> Option<SourceTask>>;
pub(crate) type EdgeFactory = Box<dyn Fn(&mut WorkerBuild)>;

pub(crate) struct Graph {
    pub(crate) name: String,
    pub(crate) operators: Vec<String>,
    pub(crate) sources: Vec<SourceFactory>,
    /// Per exchange edge: instantiates the receiving side on a worker.
    pub(crate) edges: Vec<EdgeFactory>,
    /// Per exchange edge: its `key_by`'s name (for messages).
    pub(crate) edge_names: Vec<String>,
    pub(crate) errors: Vec<String>,
}

/// A dataflow under construction.
#[derive(Clone)]
pub struct Dataflow {
    pub(crate) graph: Rc<RefCell<Graph>>,
}

/// The per-worker context in which a graph is instantiated.
pub struct WorkerBuild {
    pub(crate) worker: usize,
    pub(crate) workers: usize,
    pub(crate) config: Arc<RuntimeConfig>,
    pub(crate) metrics: Arc<JobMetrics>,
    pub(crate) dataflow: String,
    /// Partitions of each source (see [`Dataflow::source`]).
    pub(crate) partitions: usize,
    /// Which worker owns each bin of the keyed operators.
    pub(crate) assignment: Assignment,
    /// The job's live handoffs (`None`: the job's bins never move).
    pub(crate) handoff: Option<Arc<HandoffBoard>>,
    /// Shared instances (binary operators, exchange receivers), by key.
    pub(crate) shared: HashMap<String, Box<dyn Any>>,
    pub(crate) edges: Vec<EdgeRuntime>,
    /// Barrier alignments in progress on this worker.
    pub(crate) barriers: Rc<BarrierTracker>,
    pub(crate) checkpointer: Option<Rc<Checkpointer>>,
    /// The worker's per-bin load counts (`None`: no load reports).
    pub(crate) bin_counts: crate::load::BinCounts,
}

impl WorkerBuild {
    pub(crate) fn instance_ctx<'a>(&'a self, operator: &'a str, bins: BinRange) -> InstanceCtx<'a> {
        InstanceCtx {
            dataflow: &self.dataflow,
            worker: self.worker,
            workers: self.workers,
            operator,
            bins,
            partition: self.worker,
            partitions: self.workers,
            bins_log2: self.config.bins_log2,
            metrics: &self.metrics,
            config: &self.config,
            checkpointer: self.checkpointer.as_ref(),
            handoff: self.handoff.as_ref(),
        }
    }

    fn whole_space(&self) -> BinRange {
        BinRange::all(self.config.bins_log2)
    }

    /// The name of the dataflow being instantiated.
    pub fn dataflow(&self) -> &str {
        &self.dataflow
    }
}

impl Dataflow {
    /// A new, empty dataflow named `name` (the name scopes its state
    /// directories).
    pub fn new(name: &str) -> Self {
        Self {
            graph: Rc::new(RefCell::new(Graph {
                name: name.to_string(),
                operators: Vec::new(),
                sources: Vec::new(),
                edges: Vec::new(),
                edge_names: Vec::new(),
                errors: Vec::new(),
            })),
        }
    }

    /// The dataflow's name.
    pub fn name(&self) -> String {
        self.graph.borrow().name.clone()
    }

    /// Registers an operator name; names must be unique (they name state
    /// directories and metrics).
    fn register(&self, name: &str) {
        let mut g = self.graph.borrow_mut();
        if g.operators.iter().any(|n| n == name) {
            g.errors.push(format!("operator name `{name}` is used twice"));
        }
        g.operators.push(name.to_string());
    }

    /// A source. `make` creates an instance for each of its partitions
    /// ([`InstanceCtx::partition`] of [`InstanceCtx::partitions`]): one
    /// for [`Parallelism::One`], on worker 0; for
    /// [`Parallelism::PerWorker`], as many as the job had workers when it
    /// first started, kept across restores onto other worker counts —
    /// worker `w` of `W` runs partitions `p ≡ w (mod W)` (one each, unless
    /// rescaled), in turn, into one chain.
    pub fn source<T, S, F>(&self, name: &str, parallelism: Parallelism, make: F) -> Stream<T>
    where
        T: Data,
        S: Source<T> + 'static,
        F: Fn(&InstanceCtx<'_>) -> S + 'static,
    {
        self.register(name);
        let consumers = Rc::new(Consumers { list: RefCell::new(Vec::new()) });
        let c2 = consumers.clone();
        let name = name.to_string();
        self.graph.borrow_mut().sources.push(Box::new(move |wb: &mut WorkerBuild| {
            let (hosted, partitions): (Vec<usize>, usize) = match parallelism {
                Parallelism::One => (if wb.worker == 0 { vec![0] } else { Vec::new() }, 1),
                Parallelism::PerWorker => ((wb.worker..wb.partitions).step_by(wb.workers).collect(), wb.partitions),
            };
            if hosted.is_empty() {
                return None;
            }
            let parts = hosted
                .iter()
                .map(|&p| {
                    let mut ctx = wb.instance_ctx(&name, wb.whole_space());
                    (ctx.partition, ctx.partitions) = (p, partitions);
                    (p, make(&ctx))
                })
                .collect();
            let out = make_output(&c2, wb);
            let mut runner = SourceRunner::new(parts, out);
            if let Some(c) = wb.checkpointer.clone() {
                for p in hosted {
                    let ready = if runner.offset(p).is_none() {
                        Err(format!("source `{name}` cannot replay from an offset, so a job with checkpoints cannot restore it; turn checkpoints off"))
                    } else {
                        c.register();
                        match c.source_offset(&name, p) {
                            Ok(Some(off)) => runner.seek(p, off).map_err(|e| format!("source `{name}`: {e}")),
                            Ok(None) => Ok(()),
                            Err(e) => Err(e.to_string()),
                        }
                    };
                    if let Err(e) = ready {
                        wb.metrics.fail(e);
                        break;
                    }
                }
            }
            Some(SourceTask { name: name.clone(), runner: Box::new(runner) })
        }));
        Stream { df: self.clone(), consumers }
    }
}

/// A stream of `T` records in a dataflow under construction.
pub struct Stream<T> {
    df: Dataflow,
    consumers: Rc<Consumers<T>>,
}

impl<T> Clone for Stream<T> {
    fn clone(&self) -> Self {
        Self { df: self.df.clone(), consumers: self.consumers.clone() }
    }
}

impl<T: Data> Stream<T> {
    /// The dataflow this stream belongs to.
    pub fn dataflow(&self) -> &Dataflow {
        &self.df
    }

    fn add_consumer(&self, f: PushFactory<T>) {
        self.consumers.list.borrow_mut().push(f);
    }

    /// A fused one-input operator: `make` receives the instance context and
    /// the downstream push, and returns the push that accepts this stream's
    /// records.
    pub fn unary<U, F>(&self, name: &str, make: F) -> Stream<U>
    where
        U: Data,
        F: Fn(&InstanceCtx<'_>, BoxPush<U>) -> BoxPush<T> + 'static,
    {
        self.unary_in(name, Bins::Whole, make)
    }

    fn unary_in<U, F>(&self, name: &str, bins: Bins, make: F) -> Stream<U>
    where
        U: Data,
        F: Fn(&InstanceCtx<'_>, BoxPush<U>) -> BoxPush<T> + 'static,
    {
        self.df.register(name);
        let out = Rc::new(Consumers { list: RefCell::new(Vec::new()) });
        let o2 = out.clone();
        let name = name.to_string();
        self.add_consumer(Rc::new(move |wb: &mut WorkerBuild| {
            let downstream = make_output(&o2, wb);
            let ctx = wb.instance_ctx(&name, bins.resolve(wb));
            make(&ctx, downstream)
        }));
        Stream { df: self.df.clone(), consumers: out }
    }

    /// The end of the stream: `make` creates the sink instance on each
    /// worker.
    pub fn sink<F>(&self, name: &str, make: F)
    where
        F: Fn(&InstanceCtx<'_>) -> BoxPush<T> + 'static,
    {
        self.df.register(name);
        let name = name.to_string();
        self.add_consumer(Rc::new(move |wb: &mut WorkerBuild| {
            let ctx = wb.instance_ctx(&name, wb.whole_space());
            make(&ctx)
        }));
    }

    /// Repartitions the stream by key: each record goes to the worker whose
    /// instance owns its key's bin. Operators on the returned stream see all
    /// records of the keys they own.
    pub fn key_by<K, F>(&self, name: &str, key: F) -> KeyedStream<K, T>
    where
        K: Key,
        F: Fn(&T) -> K + 'static,
    {
        self.df.register(name);
        let key = Rc::new(key);
        let edge = {
            let mut g = self.df.graph.borrow_mut();
            g.edges.push(Box::new(|_| {}));
            g.edge_names.push(name.to_string());
            (g.edges.len() - 1) as u32
        };
        let downstream = Rc::new(Consumers::<T> { list: RefCell::new(Vec::new()) });
        // Receiving side: on every worker, an edge receiver feeding the
        // downstream consumers.
        {
            let d2 = downstream.clone();
            let mut g = self.df.graph.borrow_mut();
            g.edges[edge as usize] = Box::new(move |wb: &mut WorkerBuild| {
                let out = make_output(&d2, wb);
                install_receiver::<T>(wb, edge, out);
            });
        }
        // Sending side: routes by key hash.
        let k2 = key.clone();
        self.add_consumer(Rc::new(move |wb: &mut WorkerBuild| {
            let routing = wb.assignment.routing();
            make_sender::<T, K, F>(wb, edge, routing, k2.clone())
        }));
        KeyedStream {
            stream: Stream { df: self.df.clone(), consumers: downstream },
            key,
            expected_keys: None,
        }
    }

    /// A fused two-input operator over this stream (first input) and
    /// `other` (second input), one shared instance per worker.
    pub fn binary<B, U, Op, F>(&self, other: &Stream<B>, name: &str, make: F) -> Stream<U>
    where
        B: Data,
        U: Data,
        Op: BinaryOperator<T, B> + 'static,
        F: Fn(&InstanceCtx<'_>, BoxPush<U>) -> Op + 'static,
    {
        self.binary_in(other, name, Bins::Whole, make)
    }

    fn binary_in<B, U, Op, F>(&self, other: &Stream<B>, name: &str, bins: Bins, make: F) -> Stream<U>
    where
        B: Data,
        U: Data,
        Op: BinaryOperator<T, B> + 'static,
        F: Fn(&InstanceCtx<'_>, BoxPush<U>) -> Op + 'static,
    {
        self.df.register(name);
        let out = Rc::new(Consumers::<U> { list: RefCell::new(Vec::new()) });
        let make = Rc::new(make);
        let key = format!("binary:{name}");
        let get_core = {
            let out = out.clone();
            let name = name.to_string();
            let key = key.clone();
            Rc::new(move |wb: &mut WorkerBuild| -> Rc<RefCell<BinaryCore<Op>>> {
                if let Some(c) =
                    wb.shared.get(&key).and_then(|c| c.downcast_ref::<Rc<RefCell<BinaryCore<Op>>>>())
                {
                    return c.clone();
                }
                let downstream = make_output(&out, wb);
                let bins = bins.resolve(wb);
                let op = {
                    let ctx = wb.instance_ctx(&name, bins);
                    make(&ctx, downstream)
                };
                let core = BinaryCore::new(op, wb.barriers.clone());
                wb.shared.insert(key.clone(), Box::new(core.clone()));
                core
            })
        };
        let g1 = get_core.clone();
        self.add_consumer(Rc::new(move |wb: &mut WorkerBuild| {
            Box::new(FirstInput::<Op, B>::new(g1(wb))) as BoxPush<T>
        }));
        let g2 = get_core;
        other.add_consumer(Rc::new(move |wb: &mut WorkerBuild| {
            Box::new(SecondInput::<Op, T>::new(g2(wb))) as BoxPush<B>
        }));
        Stream { df: self.df.clone(), consumers: out }
    }
}

/// A stream partitioned by key: every instance of an operator on it sees all
/// the records of the keys (bins) it owns.
pub struct KeyedStream<K, T> {
    stream: Stream<T>,
    key: Rc<dyn Fn(&T) -> K>,
    /// See [`KeyedStream::expect_keys`].
    expected_keys: Option<u64>,
}

impl<K, T> Clone for KeyedStream<K, T> {
    fn clone(&self) -> Self {
        Self { stream: self.stream.clone(), key: self.key.clone(), expected_keys: self.expected_keys }
    }
}

/// The key function of a keyed stream, with the key's hash.
pub struct KeyFn<K, T> {
    key: Rc<dyn Fn(&T) -> K>,
    scratch: Vec<u8>,
}

impl<K: Key, T> KeyFn<K, T> {
    /// The key of `rec` and its portable hash.
    #[inline]
    pub fn key_and_hash(&mut self, rec: &T) -> (K, u64) {
        let k = (self.key)(rec);
        let h = key_hash(&k, &mut self.scratch);
        (k, h)
    }

    /// Appends the key of each of `recs` to `keys`, then their hashes to
    /// `hashes` (see [`crate::routing::keys_and_hashes`]).
    pub fn keys_and_hashes(
        &mut self,
        recs: &[(T, crate::batch::Meta)],
        keys: &mut Vec<K>,
        hashes: &mut Vec<u64>,
    ) {
        crate::routing::keys_and_hashes(recs, &*self.key, &mut self.scratch, keys, hashes);
    }
}

impl<K: Key, T: Data> KeyedStream<K, T> {
    /// The underlying (partitioned) stream.
    pub fn stream(&self) -> &Stream<T> {
        &self.stream
    }

    /// A sizing hint, as a hash map's capacity: about how many distinct
    /// keys the stream has (over all instances). An operator that keeps a
    /// value per key makes room for its instance's share when it starts,
    /// instead of growing into it table rebuild by table rebuild; more
    /// keys than that are still taken. The hint is not kept in
    /// checkpoints.
    pub fn expect_keys(mut self, keys: u64) -> Self {
        self.expected_keys = Some(keys);
        self
    }

    /// The hint given with [`KeyedStream::expect_keys`], if any.
    pub fn expected_keys(&self) -> Option<u64> {
        self.expected_keys
    }

    /// A stateful one-input operator on the keyed stream: `make` receives the
    /// instance context (whose `bins` are the key range this instance owns:
    /// create its state store over them), the key function, and the
    /// downstream push.
    pub fn keyed_unary<U, F>(&self, name: &str, make: F) -> Stream<U>
    where
        U: Data,
        F: Fn(&InstanceCtx<'_>, KeyFn<K, T>, BoxPush<U>) -> BoxPush<T> + 'static,
    {
        self.stream.unary_keyed(name, self.key.clone(), make)
    }

    /// A stateful two-input operator over two keyed streams with the same key
    /// type (a keyed join): both inputs are partitioned the same way, so an
    /// instance sees both sides of every key it owns.
    pub fn keyed_binary<B, U, Op, F>(&self, other: &KeyedStream<K, B>, name: &str, make: F) -> Stream<U>
    where
        B: Data,
        U: Data,
        Op: BinaryOperator<T, B> + 'static,
        F: Fn(&InstanceCtx<'_>, KeyFn<K, T>, KeyFn<K, B>, BoxPush<U>) -> Op + 'static,
    {
        let (ka, kb) = (self.key.clone(), other.key.clone());
        self.stream.binary_keyed(&other.stream, name, move |ctx, out| {
            make(
                ctx,
                KeyFn { key: ka.clone(), scratch: Vec::with_capacity(64) },
                KeyFn { key: kb.clone(), scratch: Vec::with_capacity(64) },
                out,
            )
        })
    }
}

impl<T: Data> Stream<T> {
    fn unary_keyed<K: Key, U: Data, F>(&self, name: &str, key: Rc<dyn Fn(&T) -> K>, make: F) -> Stream<U>
    where
        F: Fn(&InstanceCtx<'_>, KeyFn<K, T>, BoxPush<U>) -> BoxPush<T> + 'static,
    {
        self.unary_in(name, Bins::Keyed, move |ctx, out| {
            make(ctx, KeyFn { key: key.clone(), scratch: Vec::with_capacity(64) }, out)
        })
    }

    fn binary_keyed<B: Data, U: Data, Op, F>(&self, other: &Stream<B>, name: &str, make: F) -> Stream<U>
    where
        Op: BinaryOperator<T, B> + 'static,
        F: Fn(&InstanceCtx<'_>, BoxPush<U>) -> Op + 'static,
    {
        self.binary_in(other, name, Bins::Keyed, make)
    }
}

/// Which key range an instance owns.
#[derive(Clone, Copy)]
enum Bins {
    /// The whole key space (operators not downstream of a `key_by`).
    Whole,
    /// This worker's part of the key space on a keyed edge.
    Keyed,
}

impl Bins {
    fn resolve(self, wb: &WorkerBuild) -> BinRange {
        match self {
            Bins::Whole => wb.whole_space(),
            Bins::Keyed => keyed_bins(wb),
        }
    }
}

fn keyed_bins(wb: &WorkerBuild) -> BinRange {
    wb.assignment.bins_of(wb.worker)
}

/// The receiving side of exchange edge `edge` on this worker, created by
/// whichever side asks first.
fn local_receiver<T: Data>(wb: &mut WorkerBuild, edge: u32) -> Rc<RefCell<EdgeReceiver<T>>> {
    let (workers, barriers, metrics) = (wb.workers, &wb.barriers, &wb.metrics);
    let r = wb.edges[edge as usize].local_receiver::<T>(edge, workers, barriers, metrics);
    if let Some(b) = &wb.handoff {
        r.borrow_mut().follow(b.clone(), wb.worker, workers);
    }
    r
}

/// Installs the receiving side of `edge` on this worker, feeding `out`.
fn install_receiver<T: Data>(wb: &mut WorkerBuild, edge: u32, out: BoxPush<T>) {
    let r = local_receiver::<T>(wb, edge);
    wb.edges[edge as usize].install_receiver(r, out);
}

/// The sending side of `edge` on this worker, routing by the hash of
/// `key(record)`.
fn make_sender<T: Data, K: Key, F: Fn(&T) -> K + 'static>(
    wb: &mut WorkerBuild,
    edge: u32,
    routing: RoutingTable,
    key: Rc<F>,
) -> BoxPush<T> {
    let local = local_receiver::<T>(wb, edge);
    let me = wb.worker;
    let e = &mut wb.edges[edge as usize];
    assert!(!e.sender_installed, "edge {edge} has two senders on worker {me}");
    e.sender_installed = true;
    let mut sender = ExchangeSender::new(
        key,
        routing,
        me,
        e.outboxes.clone(),
        local,
        wb.metrics.clone(),
        wb.config.batch_records.max(1),
    );
    if let Some(b) = &wb.handoff {
        sender.follow(b.clone());
    }
    sender.count_bins_into(wb.bin_counts.clone(), wb.config.bins_log2);
    Box::new(sender)
}
