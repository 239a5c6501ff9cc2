//! The coordinator's decisions as a sans-IO state machine: which nodes run
//! which workers in each epoch, checkpoints, failure detection and
//! fencing (through [`crate::control::detector::FailureDetector`]) and
//! recovery by rolling every node back to the last complete checkpoint
//! (docs/ARCHITECTURE.md, decision 23), or — with [`PlanConfig::live`] —
//! by re-running only the failed node's workers.
//!
//! **Global rollback.** The failed node's slots get new owners (a spare
//! first, else the survivor running the fewest workers; a multi-worker
//! node is split one slot per worker, so its workers restore in
//! parallel). Every survivor is told to `Abort` the epoch; once all said
//! `Aborted`, the next epoch is deployed and every node restores the last
//! complete checkpoint (new owners fetch the parts they lack from a live
//! node that backed them up).
//!
//! **Live recovery** (SEEP-style): the survivors keep their state and
//! keep running. It is taken only when it can work: checkpoints are on
//! (the moved workers restore one, and survivors replay their buffered
//! output since it), the epoch ran on every node (every survivor has its
//! workers and links up) and no share has finished yet (a finished
//! survivor could not replay). The slots are split and given new owners as
//! above — a survivor that takes a slot over runs it as a joining share
//! beside its own, so a node may both re-link and join; it is ready once
//! its joining shares are. The epoch advances and every
//! survivor gets `Recover`: the new placement,
//! the moved workers, their checkpoint, its new backup nodes, and
//! `aborted`, the last checkpoint id requested — those were in flight
//! when the node failed and can never complete, so they are void (ids
//! continue after it: none is reused). No checkpoint is requested while
//! survivors re-link. Once every survivor answered `Recovered` (it
//! dropped the void checkpoints and accepts the moved workers' links),
//! each moved slot's new owner gets a joining `Deploy` (`join`: that slot
//! only, restored from the last complete checkpoint), after which the
//! moved workers connect to the survivors, which replay to them. Joining
//! only after every survivor re-linked means no moved worker ever
//! connects to a survivor that would refuse it. Anything going wrong
//! before the joiners are ready — a `Failed` of the new epoch, another
//! node failing, survivors silent for the abort timeout — falls back to a
//! global rollback of the new epoch (joiners included), which is always
//! correct; so does a `Failed` of the new epoch after that but before a
//! checkpoint of it is complete (a survivor that could not re-link a
//! replacement which was already running).
//!
//! **Restarts.** A share that fails when no node failure explains it
//! within the failure timeout (a link between two running nodes broke, a
//! worker hit an error) rolls every node back to the last complete
//! checkpoint, as a failed live recovery does, up to
//! [`PlanConfig::restarts`] times in the job; then the job fails with the
//! share's reason (a failure that recurs after every restart is not
//! transient).
//!
//! Events go in — a node's message, a lost connection, what was heard
//! from whom, a tick with the time in milliseconds — and [`Action`]s come
//! out: send this message to that node, fence that node, report an event,
//! finish, fail. There is no socket, clock or thread here: the
//! coordinator's driver ([`super::Coordinator`]) feeds it from its control
//! connections, in production and under the whole-cluster simulator
//! (`core/src/sim`), whose monitor checks the plan's invariants.
//!
//! The plan is one state machine in three files: this one (its state,
//! registration, messages and ticks), `deploy.rs` (where parts are and
//! where they go: holders, fetches, deployments) and `recover.rs` (node
//! failures, live recovery, rollback, restarts).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;

use crate::checkpoint::Manifest;
use crate::control::detector::{DetectorConfig, FailureDetector, FailureReason, Incarnation, NodeId};
use crate::control::error::{JobFailure, RegisterError};
use crate::control::placement::NodeSpec;

use super::{Deployment, Msg};
use crate::control::report::NodeReport;

mod deploy;
mod recover;
mod rescale;
mod scale;

pub use rescale::MAX_BINS_PER_STEP;
mod stall;

/// Tunables of a [`Plan`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlanConfig {
    /// A node silent this long is declared failed.
    pub failure_timeout_ms: u64,
    /// How long nodes may take to connect a deployment's workers.
    pub connect_timeout_ms: u64,
    /// Checkpoint interval; 0: no checkpoints.
    pub interval_ms: u64,
    /// Backup nodes per checkpoint part.
    pub backups: usize,
    /// The schedule origin of every epoch (ns since the Unix epoch).
    pub origin_ns: u64,
    /// Recover from a node failure by re-running only its workers while
    /// the survivors keep running (see the module documentation), when
    /// possible; else, and always without this, by a global rollback.
    pub live: bool,
    /// How many times a share failure that no node failure explains rolls
    /// every node back to the last complete checkpoint before the job
    /// fails instead (0: it fails at once; without checkpoints it always
    /// does).
    pub restarts: u32,
    /// The key space has `2^bins_log2` bins (the workers' config).
    pub bins_log2: u8,
    /// The first `start_workers` workers own the bins when the job first
    /// starts (0: every worker; see `RuntimeConfig::cluster_start_workers`).
    pub start_workers: usize,
    /// The job's workers at most (0: the workers of the nodes that are not
    /// spares). Those past the running nodes' are parked: one-worker slots
    /// hosted by the running nodes, owning no bins and running no source
    /// (`start_workers` must leave them out), until a rescale gives them
    /// bins and each moves to a spare that joins the job (decision 63).
    pub max_workers: usize,
    /// A checkpoint outstanding this many intervals is reported as stalled
    /// (an event `stalled <id>` and a warning naming the nodes, workers
    /// and backups whose parts are missing); 0: never.
    pub stall_intervals: u32,
}

/// What the coordinator must do.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Send `msg` to node `to` (possibly the coordinator's own node).
    Send {
        /// The node (index among the config's nodes).
        to: usize,
        /// The message (boxed: a deployment is large, the other actions
        /// small).
        msg: Box<Msg>,
    },
    /// Node `node` is declared failed: drop its control connection; it
    /// never takes part again.
    Fence {
        /// The node.
        node: usize,
        /// Why.
        why: String,
    },
    /// A moment worth reporting: `failed <node>`, `deployed <epoch>`,
    /// `relinking <epoch>` (a live recovery began), `joining <epoch>` (every
    /// survivor re-linked; the replacements are deployed), `running <epoch>`,
    /// `requested <id>`, `checkpoint <id>`, `stalled <id>` (outstanding
    /// for [`PlanConfig::stall_intervals`] intervals).
    Event(String),
    /// A line for the log.
    Note(String),
    /// The job is done: release every node; these are the reports of the
    /// last epoch.
    Finish(Vec<NodeReport>),
    /// The job failed: stop every node with this error.
    Fail(String),
    /// Answer the `spate ctl` connection `admin`.
    Reply {
        /// The connection.
        admin: u64,
        /// Whether the request was done.
        ok: bool,
        /// What was done, or why not.
        text: String,
    },
}

/// A node as the coordinator knows it.
#[derive(Debug, Clone)]
struct NodeInfo {
    name: String,
    addr: SocketAddr,
    workers: usize,
    replica: Option<SocketAddr>,
    /// The incarnation registered last (`None`: not registered yet).
    incarnation: Option<u64>,
    role: Role,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    /// In the placement.
    Active,
    /// Registered, idle, ready to replace a failed node.
    Spare,
    /// Declared failed and fenced.
    Failed,
    /// The coordinator's own node, running no workers: it only
    /// coordinates (so that any node running workers may fail).
    Coordinator,
}

/// A complete checkpoint and where its parts are.
#[derive(Debug, Clone)]
struct Complete {
    manifest: Manifest,
    /// Per worker, the nodes that back up its part (in their replica
    /// service: a replacement fetches it from one of them).
    holders: Vec<Vec<usize>>,
    /// Per worker, the nodes that have its part in their own backup store
    /// (the node that took it, and any that fetched it since): they
    /// restore it without fetching.
    local: Vec<Vec<usize>>,
}

/// A checkpoint being collected.
#[derive(Debug)]
struct InFlight {
    id: u64,
    parts: HashMap<usize, Manifest>,
    /// When it was requested.
    requested_ms: u64,
    /// Its stall was reported.
    stalled: bool,
}

/// A moved slot of a live recovery: its new owner joins the running job.
#[derive(Debug)]
struct Join {
    /// The slot's position in the placement.
    pos: usize,
    /// Its new owner.
    node: usize,
    /// `(worker, node)`: the owner fetches the worker's part from there.
    fetch: Vec<(usize, usize)>,
}

/// What the coordinator is doing.
#[derive(Debug)]
enum Phase {
    /// The epoch's deployment runs.
    Running,
    /// Waiting for these nodes to stop their share of the failed epoch.
    Aborting { waiting: HashSet<usize>, since_ms: u64 },
    /// A live recovery: waiting for these survivors to answer `Recovered`
    /// before the moved slots join.
    Relinking { waiting: HashSet<usize>, survivors: Vec<usize>, joins: Vec<Join>, since_ms: u64 },
    /// Finished or failed: nothing more happens.
    Over,
}

/// The coordinator's state (see the module documentation).
#[derive(Debug)]
pub struct Plan {
    nodes: Vec<NodeInfo>,
    /// The placement: node indexes in worker order (a node that took over a
    /// failed node's workers appears twice), and each slot's workers.
    slots: Vec<usize>,
    slot_workers: Vec<usize>,
    /// Per slot: parked on a node that hosts it beside its own until a
    /// spare takes it (decision 63, `rescale.rs`).
    parked: Vec<bool>,
    me: usize,
    epoch: u64,
    phase: Phase,
    ready: HashSet<usize>,
    /// Nodes given joining deployments in this epoch, and how many of them
    /// have not said `Ready` yet: such a node is ready after the last.
    joining: HashMap<usize, usize>,
    finished: BTreeMap<usize, NodeReport>,
    config: PlanConfig,
    detector: FailureDetector,
    next_checkpoint_ms: u64,
    last_id: u64,
    in_flight: Option<InFlight>,
    last_complete: Option<Complete>,
    /// A node's share failed at this time for this reason: unless a node
    /// failure explains it within the failure timeout, the job fails.
    share_failed: Option<(u64, JobFailure)>,
    /// The epoch began as a live recovery and no checkpoint has completed
    /// in it yet: a share that fails now may have failed re-linking (even
    /// after the joiners said `Ready`), and the recovery falls back.
    unsettled: bool,
    /// A checkpoint of this epoch is complete: every worker's part of the
    /// last complete checkpoint is on its node and its backup nodes now
    /// (a slot moves to another node only then, `rescale.rs`).
    checkpointed: bool,
    /// Restarts taken so far (see [`PlanConfig::restarts`]).
    restarted: u32,
    /// `(worker, node)`: node was told, in this epoch, to fetch the
    /// worker's part of the last complete checkpoint, and has not said it
    /// runs the epoch yet.
    fetching: Vec<(usize, usize)>,
    /// The assignment of bins to workers the epoch runs (see
    /// `rescale.rs`).
    assignment: Option<crate::assignment::Assignment>,
    /// A rescale of `spate ctl` (or of the scaling policy) under way.
    rescale: Option<rescale::Rescale>,
    /// The scaling policy, if the job has one (`scale.rs`).
    scaling: Option<scale::Scaler>,
    /// Bins moved since the last checkpoint was requested: a failure
    /// rolls every node back.
    moved_since_checkpoint: bool,
    actions: Vec<Action>,
}

fn node_id(i: usize) -> NodeId {
    NodeId(i as u32)
}

impl Plan {
    /// The plan for the config's nodes — `(name, address, workers,
    /// spare)` in config order — run by node `me` (the coordinator), before
    /// any node registered.
    pub fn new(nodes: &[(String, SocketAddr, usize, bool)], me: usize, config: PlanConfig) -> Self {
        let nodes = nodes
            .iter()
            .map(|(name, addr, workers, spare)| NodeInfo {
                name: name.clone(),
                addr: *addr,
                workers: *workers,
                replica: None,
                incarnation: None,
                role: if *spare { Role::Spare } else { Role::Active },
            })
            .collect::<Vec<_>>();
        let mut nodes = nodes;
        if let Some(n) = nodes.get_mut(me) {
            if n.workers == 0 {
                n.role = Role::Coordinator;
            }
        }
        let detector = FailureDetector::new(DetectorConfig {
            failure_timeout_ms: config.failure_timeout_ms,
            declare_on_connection_loss: true,
        });
        Self {
            nodes,
            slots: Vec::new(),
            slot_workers: Vec::new(),
            parked: Vec::new(),
            me,
            epoch: 0,
            phase: Phase::Running,
            ready: HashSet::new(),
            joining: HashMap::new(),
            finished: BTreeMap::new(),
            config,
            detector,
            next_checkpoint_ms: 0,
            last_id: 0,
            in_flight: None,
            last_complete: None,
            share_failed: None,
            unsettled: false,
            checkpointed: false,
            restarted: 0,
            fetching: Vec::new(),
            assignment: None,
            rescale: None,
            scaling: None,
            moved_since_checkpoint: false,
            actions: Vec::new(),
        }
    }

    /// Incarnation `incarnation` of node `i` registered with `workers`
    /// workers and its replica service at `replica` (the coordinator
    /// registers itself too). A node whose earlier incarnation was
    /// declared failed comes back as a spare, with nothing stored; a
    /// greater incarnation of a node not yet declared failed means its
    /// process restarted: the old incarnation is failed first. An
    /// incarnation not greater than the last one registered is refused.
    pub fn register(
        &mut self,
        i: usize,
        incarnation: u64,
        workers: usize,
        replica: SocketAddr,
        now_ms: u64,
    ) -> Result<(), RegisterError> {
        let Some(n) = self.nodes.get(i) else { return Err(RegisterError::UnknownNode { index: i }) };
        let name = n.name.clone();
        if workers == 0 && i != self.me {
            return Err(RegisterError::NoWorkers { node: name });
        }
        match n.incarnation {
            None => {}
            Some(old) if incarnation <= old => {
                return Err(RegisterError::StaleIncarnation { node: name, incarnation, last: old });
            }
            Some(_) => {
                if n.role != Role::Failed {
                    self.node_failed(i, format!("its process restarted (incarnation {incarnation})"), now_ms);
                }
                if i == self.me || matches!(self.phase, Phase::Over) {
                    return Err(RegisterError::CannotComeBack { node: name });
                }
                // A new process: nothing of the old one's checkpoints is
                // stored there any more.
                if let Some(c) = &mut self.last_complete {
                    for l in c.local.iter_mut().chain(c.holders.iter_mut()) {
                        l.retain(|&j| j != i);
                    }
                }
                self.nodes[i].role = Role::Spare;
                self.event(format!("rejoined {name}"));
                self.actions.push(Action::Note(format!(
                    "node `{name}` came back as incarnation {incarnation}: a spare"
                )));
            }
        }
        self.detector
            .register(node_id(i), Incarnation(incarnation), now_ms)
            .map_err(|source| RegisterError::Fenced { node: name, source })?;
        let n = &mut self.nodes[i];
        n.workers = workers;
        n.replica = Some(replica);
        n.incarnation = Some(incarnation);
        Ok(())
    }

    /// The nodes that have not registered yet.
    pub fn missing(&self) -> Vec<&str> {
        self.nodes.iter().filter(|n| n.incarnation.is_none()).map(|n| n.name.as_str()).collect()
    }

    /// Node `i`'s name.
    pub fn name(&self, i: usize) -> &str {
        self.nodes.get(i).map_or("?", |n| n.name.as_str())
    }

    /// The index of the node called `name`.
    pub fn index(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.name == name)
    }

    /// The last complete checkpoint's manifest, if any.
    pub fn last_complete(&self) -> Option<&Manifest> {
        self.last_complete.as_ref().map(|c| &c.manifest)
    }

    /// The current epoch.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Whether node `i` was declared failed.
    pub fn is_fenced(&self, i: usize) -> bool {
        self.nodes.get(i).is_some_and(|n| n.role == Role::Failed)
    }

    /// Takes the actions decided so far.
    pub fn take_actions(&mut self) -> Vec<Action> {
        std::mem::take(&mut self.actions)
    }

    /// Deploys epoch 0: the nodes that are not spares, in config order,
    /// then the parked slots up to [`PlanConfig::max_workers`], each on the
    /// node that runs the fewest workers.
    pub fn start(&mut self, now_ms: u64) {
        self.slots = (0..self.nodes.len()).filter(|&i| self.nodes[i].role == Role::Active).collect();
        self.slot_workers = self.slots.iter().map(|&i| self.nodes[i].workers).collect();
        self.parked = vec![false; self.slots.len()];
        let running: usize = self.slot_workers.iter().sum();
        for _ in running..self.config.max_workers {
            let Some(host) = self.least_loaded(None) else { break };
            self.slots.push(host);
            self.slot_workers.push(1);
            self.parked.push(true);
        }
        if let Err(e) = self.deploy(&HashMap::new(), now_ms) {
            self.fail(e);
        }
    }

    /// Something arrived from node `i` at `now_ms` (any message or
    /// heartbeat): it is alive.
    pub fn heard(&mut self, i: usize, now_ms: u64) {
        if let Some(n) = self.nodes.get(i).filter(|n| n.role != Role::Failed) {
            if let Some(inc) = n.incarnation {
                let _ = self.detector.heard_from(node_id(i), Incarnation(inc), now_ms);
            }
        }
    }

    /// The control connection to node `i` broke (or a send to it failed).
    pub fn connection_lost(&mut self, i: usize, why: &str, now_ms: u64) {
        if self.detector.connection_lost(node_id(i)).is_some() {
            self.node_failed(i, why.to_string(), now_ms);
        }
    }

    fn fail(&mut self, reason: JobFailure) {
        if !matches!(self.phase, Phase::Over) {
            self.phase = Phase::Over;
            self.actions.push(Action::Fail(reason.to_string()));
        }
    }

    fn send(&mut self, to: usize, msg: Msg) {
        self.actions.push(Action::Send { to, msg: Box::new(msg) });
    }

    fn event(&mut self, what: String) {
        self.actions.push(Action::Event(what));
    }

    /// A message from node `i`.
    pub fn message(&mut self, from: usize, msg: Msg, now_ms: u64) {
        if self.is_fenced(from) || matches!(self.phase, Phase::Over) {
            return;
        }
        self.heard(from, now_ms);
        let name = self.nodes[from].name.clone();
        match msg {
            Msg::Ready { epoch } if epoch == self.epoch && matches!(self.phase, Phase::Running) => {
                // A node that joins with several slots is ready after the
                // last of them.
                if let Some(n) = self.joining.get_mut(&from) {
                    *n = n.saturating_sub(1);
                    if *n > 0 {
                        return;
                    }
                    self.joining.remove(&from);
                }
                self.fetch_done(from);
                self.ready.insert(from);
                if self.ready.len() == self.active().len() {
                    self.event(format!("running {}", self.epoch));
                }
            }
            Msg::Done { epoch, part } if epoch == self.epoch => {
                let active = self.active().len();
                let Some(f) = &mut self.in_flight else { return };
                if f.id != part.id {
                    return;
                }
                f.parts.insert(from, part);
                let early = crate::sabotage::on(crate::sabotage::Bug::CompleteEarly) && active > 1;
                if f.parts.len() == active || (early && f.parts.len() + 1 == active) {
                    let id = f.id;
                    let mut manifest = Manifest::new(id, self.slot_workers.iter().sum());
                    for p in f.parts.values() {
                        manifest.merge(p);
                    }
                    let slot_of = self.slot_of_workers();
                    let holders = slot_of.iter().map(|&p| self.holders(p)).collect();
                    let local = slot_of.iter().map(|&p| vec![self.slots[p]]).collect();
                    // A live recovery's epoch settles once a checkpoint
                    // finds no receiver still skipping a replacement's
                    // replay: until then a handoff step could route a
                    // replayed record to a worker that never had it.
                    if manifest.ahead.is_empty() {
                        self.unsettled = false;
                    }
                    self.last_complete = Some(Complete { manifest, holders, local });
                    self.in_flight = None;
                    self.checkpointed = true;
                    // Requested after every step (none is during one): it
                    // records the assignment.
                    self.moved_since_checkpoint = false;
                    for j in self.active() {
                        self.send(j, Msg::Complete { epoch, id });
                    }
                    self.event(format!("checkpoint {id}"));
                }
            }
            Msg::Aborted { epoch } => {
                if let Phase::Aborting { waiting, .. } = &mut self.phase {
                    if epoch == self.epoch {
                        waiting.remove(&from);
                    }
                }
            }
            Msg::Recovered { epoch } if epoch == self.epoch => {
                if let Phase::Relinking { waiting, .. } = &mut self.phase {
                    waiting.remove(&from);
                    if waiting.is_empty() {
                        self.join(now_ms);
                    }
                }
            }
            Msg::Failed { epoch, reason } if epoch == self.epoch => {
                // Until the joiners run and a checkpoint of the epoch is
                // complete, a live recovery can still fall back (a
                // `Failed` of the epoch before is ignored below: a
                // survivor's link to the failed node broke).
                let live = matches!(self.phase, Phase::Relinking { .. })
                    || (matches!(self.phase, Phase::Running) && (!self.joining.is_empty() || self.unsettled));
                if self.rescale.is_some() && matches!(self.phase, Phase::Running) {
                    let why = format!("node `{name}`: {reason}");
                    self.interrupt(&why);
                    self.restart(JobFailure::ShareFailed { node: name, reason, also: Vec::new() }, now_ms);
                } else if live {
                    self.fall_back(format!("node `{name}`: {reason}"), now_ms);
                } else if matches!(self.phase, Phase::Running) {
                    match &mut self.share_failed {
                        None => {
                            self.share_failed = Some((
                                now_ms,
                                JobFailure::ShareFailed { node: name, reason, also: Vec::new() },
                            ))
                        }
                        // Heard while the first waits for a node failure
                        // that would explain it: often its consequence
                        // (links to a share that stopped broke), sometimes
                        // its cause (a panic whose report came second).
                        // One a node, so the job's failure names them all.
                        Some((_, JobFailure::ShareFailed { node, also, .. })) => {
                            if *node != name && also.iter().all(|(n, _)| *n != name) {
                                also.push((name, reason));
                            }
                        }
                        Some(_) => {}
                    }
                }
            }
            Msg::Finished { epoch, report } if epoch == self.epoch => {
                self.finished.insert(from, report);
            }
            Msg::Staged { epoch, version } if epoch == self.epoch => self.staged(from, version),
            Msg::HandedOff { epoch, version, bytes, micros } if epoch == self.epoch => {
                self.handed_off(version, bytes, micros, now_ms);
            }
            Msg::Load { epoch, report } if epoch == self.epoch => self.load_report(report),
            // A message of an earlier epoch, or one that no longer matters.
            Msg::Ready { .. }
            | Msg::Done { .. }
            | Msg::Failed { .. }
            | Msg::Finished { .. }
            | Msg::HandedOff { .. }
            | Msg::Staged { .. }
            | Msg::Load { .. }
            | Msg::Recovered { .. } => {}
            other => self.fail(JobFailure::Unexpected { node: name, message: Box::new(other) }),
        }
    }

    /// Timers: silent nodes, checkpoints, the end of an abort, survivors
    /// that do not re-link, a share's failure that no node failure
    /// explains, the end of the job.
    pub fn tick(&mut self, now_ms: u64) {
        // The coordinator's own node is alive as long as this runs.
        self.heard(self.me, now_ms);
        for d in self.detector.tick(now_ms) {
            let i = d.node.0 as usize;
            let why = match d.reason {
                FailureReason::Timeout { silent_ms } => format!("silent for {silent_ms} ms"),
                other => format!("{other:?}"),
            };
            self.node_failed(i, why, now_ms);
        }
        let abort_timeout_ms = self.config.connect_timeout_ms + self.config.failure_timeout_ms * 4 + 10_000;
        match &self.phase {
            Phase::Over => {}
            Phase::Relinking { waiting, since_ms, .. } => {
                if now_ms.saturating_sub(*since_ms) > abort_timeout_ms {
                    let mut names: Vec<&str> = waiting.iter().map(|&i| self.nodes[i].name.as_str()).collect();
                    names.sort_unstable();
                    let why = format!("nodes did not re-link: {}", names.join(", "));
                    self.fall_back(why, now_ms);
                }
            }
            Phase::Aborting { waiting, since_ms } => {
                if waiting.is_empty() {
                    self.redeploy(now_ms);
                } else if now_ms.saturating_sub(*since_ms) > abort_timeout_ms {
                    // (A node may be connecting the aborted epoch's workers,
                    // which it only gives up after the connect timeout.)
                    let mut nodes: Vec<String> =
                        waiting.iter().map(|&i| self.nodes[i].name.clone()).collect();
                    nodes.sort_unstable();
                    self.fail(JobFailure::NotStopped { nodes });
                }
            }
            Phase::Running => {
                self.check_stall(now_ms);
                if let Some((at, reason)) = &self.share_failed {
                    if now_ms.saturating_sub(*at) > self.config.failure_timeout_ms + 500 {
                        let r = reason.clone();
                        return self.restart(r, now_ms);
                    }
                }
                if !self.slots.is_empty() && self.finished.len() == self.active().len() {
                    self.phase = Phase::Over;
                    let reports = self.finished.values().cloned().collect();
                    self.actions.push(Action::Finish(reports));
                    return;
                }
                self.tick_rescale(now_ms);
                if !matches!(self.phase, Phase::Running) {
                    return;
                }
                self.tick_scaling(now_ms);
                if self.config.interval_ms > 0
                    && self.in_flight.is_none()
                    && self.rescale.as_ref().is_none_or(|r| r.takes_checkpoints())
                    && self.finished.is_empty()
                    && self.ready.len() == self.active().len()
                    && now_ms >= self.next_checkpoint_ms
                {
                    self.last_id += 1;
                    let id = self.last_id;
                    self.in_flight =
                        Some(InFlight { id, parts: HashMap::new(), requested_ms: now_ms, stalled: false });
                    self.next_checkpoint_ms = now_ms + self.config.interval_ms;
                    self.event(format!("requested {id}"));
                    for j in self.active() {
                        self.send(j, Msg::Checkpoint { epoch: self.epoch, id });
                    }
                }
            }
        }
    }
}
