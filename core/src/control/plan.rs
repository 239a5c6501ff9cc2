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
//! connections, and `tests/control_plan.rs` from a seeded simulation of
//! nodes that crash, stall and answer late.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;

use crate::checkpoint::Manifest;
use crate::control::detector::{DetectorConfig, FailureDetector, FailureReason, Incarnation, NodeId};
use crate::control::error::{JobFailure, RegisterError};
use crate::control::placement::NodeSpec;

use super::{Deployment, Msg};
use crate::control::report::NodeReport;

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
}

/// What the coordinator must do.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Send `msg` to node `to` (possibly the coordinator's own node).
    Send {
        /// The node (index among the config's nodes).
        to: usize,
        /// The message.
        msg: Msg,
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
    /// `requested <id>`, `checkpoint <id>`.
    Event(String),
    /// A line for the log.
    Note(String),
    /// The job is done: release every node; these are the reports of the
    /// last epoch.
    Finish(Vec<NodeReport>),
    /// The job failed: stop every node with this error.
    Fail(String),
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
    /// Restarts taken so far (see [`PlanConfig::restarts`]).
    restarted: u32,
    /// `(worker, node)`: node was told, in this epoch, to fetch the
    /// worker's part of the last complete checkpoint, and has not said it
    /// runs the epoch yet.
    fetching: Vec<(usize, usize)>,
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
            restarted: 0,
            fetching: Vec::new(),
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

    /// Deploys epoch 0: the nodes that are not spares, in config order.
    pub fn start(&mut self, now_ms: u64) {
        self.slots = (0..self.nodes.len()).filter(|&i| self.nodes[i].role == Role::Active).collect();
        self.slot_workers = self.slots.iter().map(|&i| self.nodes[i].workers).collect();
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
        self.actions.push(Action::Send { to, msg });
    }

    fn event(&mut self, what: String) {
        self.actions.push(Action::Event(what));
    }

    /// The nodes of the placement, each once, in order.
    fn active(&self) -> Vec<usize> {
        let mut out: Vec<usize> = Vec::new();
        for &i in &self.slots {
            if !out.contains(&i) {
                out.push(i);
            }
        }
        out
    }

    /// The nodes that back up slot `pos`'s checkpoints in this placement:
    /// the next `backups` other nodes after it, in a ring.
    fn holders(&self, pos: usize) -> Vec<usize> {
        let n = self.slots.len();
        let own = self.slots[pos];
        let mut out = Vec::new();
        for k in 1..n {
            let j = self.slots[(pos + k) % n];
            if j != own && !out.contains(&j) && out.len() < self.config.backups {
                out.push(j);
            }
        }
        out
    }

    /// The slot of each worker, in order.
    fn slot_of_workers(&self) -> Vec<usize> {
        let mut out = Vec::new();
        for (pos, &w) in self.slot_workers.iter().enumerate() {
            out.extend(std::iter::repeat_n(pos, w));
        }
        out
    }

    /// The placement as deployed: each slot's node and workers.
    fn specs(&self) -> Vec<NodeSpec> {
        self.slots
            .iter()
            .zip(&self.slot_workers)
            .map(|(&i, &w)| NodeSpec {
                name: self.nodes[i].name.clone(),
                addr: self.nodes[i].addr,
                workers: w,
            })
            .collect()
    }

    /// The workers of slot `pos` (global ids).
    fn workers_of(&self, pos: usize) -> std::ops::Range<usize> {
        let base: usize = self.slot_workers[..pos].iter().sum();
        base..base + self.slot_workers[pos]
    }

    /// The replica services that the slots at `positions` stream their
    /// checkpoints to: their backup nodes', without repeats.
    fn replicas_of(&self, positions: &[usize]) -> Result<Vec<SocketAddr>, JobFailure> {
        let mut replicas = Vec::new();
        if self.config.interval_ms == 0 {
            return Ok(replicas);
        }
        for &pos in positions {
            for h in self.holders(pos) {
                let r = self.replica_of(h)?;
                if !replicas.contains(&r) {
                    replicas.push(r);
                }
            }
        }
        Ok(replicas)
    }

    /// The replica service of backup node `h`.
    fn replica_of(&self, h: usize) -> Result<SocketAddr, JobFailure> {
        self.nodes[h].replica.ok_or_else(|| JobFailure::NoReplicaService { node: self.nodes[h].name.clone() })
    }

    /// `(worker, replica service)` for the workers among `workers` that
    /// `fetch_for` sends to a backup node.
    fn fetches(
        &self,
        workers: impl Iterator<Item = usize>,
        fetch_for: &HashMap<usize, usize>,
    ) -> Result<Vec<(usize, SocketAddr)>, JobFailure> {
        let mut fetch = Vec::new();
        for w in workers {
            if let Some(&holder) = fetch_for.get(&w) {
                fetch.push((w, self.replica_of(holder)?));
            }
        }
        Ok(fetch)
    }

    /// For each of `workers` whose current owner did not take part in the
    /// last complete checkpoint, nor fetched its part since: a live node
    /// that backed its part up, to fetch it from. An error when every such
    /// node is gone.
    fn fetch_plan(&self, workers: impl Iterator<Item = usize>) -> Result<HashMap<usize, usize>, JobFailure> {
        let mut fetch_for = HashMap::new();
        let Some(c) = &self.last_complete else { return Ok(fetch_for) };
        let slot_of = self.slot_of_workers();
        for w in workers {
            let i = self.slots[slot_of[w]];
            // A node that took its part, or fetched it, has it locally.
            if c.local.get(w).is_some_and(|l| l.contains(&i)) {
                continue;
            }
            let live = c
                .holders
                .get(w)
                .and_then(|h| h.iter().copied().find(|&h| self.nodes[h].role == Role::Active));
            let Some(h) = live else {
                return Err(JobFailure::BackupsGone {
                    checkpoint: c.manifest.id,
                    worker: w,
                    node: self.nodes[i].name.clone(),
                });
            };
            fetch_for.insert(w, h);
        }
        Ok(fetch_for)
    }

    /// The owners of `workers` were told to fetch their parts of the last
    /// complete checkpoint: once each says it runs the epoch (the fetch
    /// worked), it has them locally (see [`Plan::fetch_done`]).
    fn fetched(&mut self, workers: impl Iterator<Item = usize>) {
        let slot_of = self.slot_of_workers();
        let owners: Vec<(usize, usize)> = workers.map(|w| (w, self.slots[slot_of[w]])).collect();
        self.fetching.extend(owners);
    }

    /// Node `i` runs the epoch: the parts it was told to fetch are stored
    /// there now.
    fn fetch_done(&mut self, i: usize) {
        let done: Vec<usize> = self.fetching.iter().filter(|&&(_, n)| n == i).map(|&(w, _)| w).collect();
        self.fetching.retain(|&(_, n)| n != i);
        if let Some(c) = &mut self.last_complete {
            for w in done {
                if let Some(l) = c.local.get_mut(w) {
                    if !l.contains(&i) {
                        l.push(i);
                    }
                }
            }
        }
    }

    /// This epoch's deployment of the slots at `positions` to their node:
    /// the placement, the slots' backup nodes, the last complete
    /// checkpoint and the parts to fetch for it (`fetch_for`: worker →
    /// holder); with `join`, `(slot, every moved worker)`: the slot joins
    /// the running job alone.
    fn deployment(
        &self,
        positions: &[usize],
        fetch_for: &HashMap<usize, usize>,
        join: Option<(usize, Vec<usize>)>,
    ) -> Result<Deployment, JobFailure> {
        let mut fetch = Vec::new();
        for &pos in positions {
            fetch.extend(self.fetches(self.workers_of(pos), fetch_for)?);
        }
        let (join, moved) = match join {
            Some((slot, moved)) => (Some(slot), moved),
            None => (None, Vec::new()),
        };
        Ok(Deployment {
            epoch: self.epoch,
            nodes: self.specs(),
            replicas: self.replicas_of(positions)?,
            fetch,
            restore: self.last_complete.as_ref().map(|c| c.manifest.clone()),
            origin_ns: self.config.origin_ns,
            join,
            moved,
            // Every id requested so far belongs to an earlier epoch.
            aborted: self.last_id,
        })
    }

    /// The epoch's deployment for every node of the placement; `fetch_for`
    /// maps a worker to the node its new owner fetches its part from.
    fn deploy(&mut self, fetch_for: &HashMap<usize, usize>, now_ms: u64) -> Result<(), JobFailure> {
        for i in self.active() {
            let positions: Vec<usize> = (0..self.slots.len()).filter(|&p| self.slots[p] == i).collect();
            let d = self.deployment(&positions, fetch_for, None)?;
            self.send(i, Msg::Deploy(d));
        }
        self.epoch_begins(false);
        self.phase = Phase::Running;
        self.next_checkpoint_ms = now_ms + self.config.interval_ms;
        self.event(format!("deployed {}", self.epoch));
        Ok(())
    }

    /// A new epoch begins (deployed, or recovering live when `live`): no
    /// node is ready, joining or finished in it, no checkpoint or share
    /// failure is pending.
    fn epoch_begins(&mut self, live: bool) {
        self.fetching.clear();
        self.ready.clear();
        self.joining.clear();
        self.finished.clear();
        self.in_flight = None;
        self.share_failed = None;
        self.unsettled = live;
    }

    /// Node `i` failed: fence it and, if it ran workers, recover.
    fn node_failed(&mut self, i: usize, why: String, now_ms: u64) {
        if self.is_fenced(i) || matches!(self.phase, Phase::Over) {
            return;
        }
        // Whether every node of the placement runs this epoch (before the
        // failure): a live recovery needs every survivor's links up.
        let all_ready = self.ready.len() == self.active().len();
        let was = self.nodes[i].role;
        self.nodes[i].role = Role::Failed;
        let _ = self.detector.declare_failed(node_id(i), FailureReason::Reported);
        let name = self.nodes[i].name.clone();
        self.actions.push(Action::Fence { node: i, why: why.clone() });
        self.event(format!("failed {name}"));
        self.actions.push(Action::Note(format!("node `{name}` declared failed ({why})")));
        if was == Role::Spare {
            return;
        }
        if i == self.me {
            return self.fail(JobFailure::CoordinatorFailed);
        }
        // Split the failed node's slots into one slot per worker (each
        // owns its own bins): their replacements restore in parallel, and
        // survivors share the load.
        let mut p = self.slots.len();
        while p > 0 {
            p -= 1;
            if self.slots[p] == i && self.slot_workers[p] > 1 {
                let k = self.slot_workers[p];
                self.slots.splice(p..=p, std::iter::repeat_n(i, k));
                self.slot_workers.splice(p..=p, std::iter::repeat_n(1, k));
            }
        }
        let lost: Vec<usize> = (0..self.slots.len()).filter(|&p| self.slots[p] == i).collect();
        if lost.is_empty() {
            return;
        }
        let mut activated = Vec::new();
        for &pos in &lost {
            // A spare first; else the survivor running the fewest workers
            // takes the slot's workers on top of its own.
            let spare = (0..self.nodes.len()).find(|&j| self.nodes[j].role == Role::Spare);
            let replacement = match spare {
                Some(j) => {
                    self.nodes[j].role = Role::Active;
                    activated.push(j);
                    j
                }
                None => {
                    let load = |j: usize| -> usize {
                        (0..self.slots.len())
                            .filter(|&p| self.slots[p] == j)
                            .map(|p| self.slot_workers[p])
                            .sum()
                    };
                    let Some(j) = self.active().into_iter().filter(|&j| j != i).min_by_key(|&j| load(j))
                    else {
                        return self.fail(JobFailure::NoNodeLeft { node: name.clone(), why: why.clone() });
                    };
                    j
                }
            };
            self.actions.push(Action::Note(format!(
                "node `{}` takes over the {} workers of node `{name}`",
                self.nodes[replacement].name, self.slot_workers[pos]
            )));
            self.slots[pos] = replacement;
        }
        if self.active().len() < 2 && self.config.interval_ms > 0 && self.config.backups > 0 {
            return self.fail(JobFailure::NoBackupNodeLeft { node: name });
        }
        let survivors: Vec<usize> = self.active().into_iter().filter(|j| !activated.contains(j)).collect();
        if self.config.live
            && self.config.interval_ms > 0
            && matches!(self.phase, Phase::Running)
            && was == Role::Active
            && self.finished.is_empty()
            && all_ready
            && !survivors.is_empty()
        {
            return self.relink(&lost, survivors, now_ms);
        }
        // Abort the epoch everywhere (again, if a recovery was under way;
        // a live one included: its joiners too).
        let waiting: HashSet<usize> = match &self.phase {
            Phase::Aborting { waiting, .. } => waiting.iter().copied().filter(|&j| j != i).collect(),
            _ => survivors.into_iter().collect(),
        };
        if !matches!(self.phase, Phase::Aborting { .. }) {
            let mut to: Vec<usize> = waiting.iter().copied().collect();
            to.sort_unstable();
            for j in to {
                self.send(j, Msg::Abort { epoch: self.epoch });
            }
        }
        self.phase = Phase::Aborting { waiting, since_ms: now_ms };
        self.in_flight = None;
        self.share_failed = None;
        self.joining.clear();
    }

    /// Starts a live recovery (see the module documentation): the slots at
    /// `lost` have new owners; `survivors` keep running and are told the
    /// new placement.
    fn relink(&mut self, lost: &[usize], survivors: Vec<usize>, now_ms: u64) {
        let moved: Vec<usize> = lost.iter().flat_map(|&p| self.workers_of(p)).collect();
        // Where the new owners will fetch the parts they lack: if some
        // part has no live backup, no recovery can restore it.
        let fetch_for = match self.fetch_plan(moved.iter().copied()) {
            Ok(f) => f,
            Err(e) => return self.fail(e),
        };
        self.epoch += 1;
        let epoch = self.epoch;
        let specs = self.specs();
        let checkpoint = self.last_complete.as_ref().map_or(0, |c| c.manifest.id);
        for &j in &survivors {
            // Its own slots; a moved slot it takes over has its own
            // backup nodes, in its joining deployment.
            let own: Vec<usize> =
                (0..self.slots.len()).filter(|&p| self.slots[p] == j && !lost.contains(&p)).collect();
            let replicas = match self.replicas_of(&own) {
                Ok(r) => r,
                Err(e) => return self.fail(e),
            };
            let msg = Msg::Recover {
                epoch,
                checkpoint,
                aborted: self.last_id,
                nodes: specs.clone(),
                replicas,
                moved: moved.clone(),
            };
            self.send(j, msg);
        }
        let joins = lost
            .iter()
            .map(|&pos| Join {
                pos,
                node: self.slots[pos],
                fetch: self.workers_of(pos).filter_map(|w| fetch_for.get(&w).map(|&h| (w, h))).collect(),
            })
            .collect();
        self.epoch_begins(true);
        self.phase = Phase::Relinking {
            waiting: survivors.iter().copied().collect(),
            survivors,
            joins,
            since_ms: now_ms,
        };
        if crate::sabotage::on(crate::sabotage::Bug::JoinEarly) {
            self.event(format!("relinking {epoch}"));
            return self.join(now_ms);
        }
        self.event(format!("relinking {epoch}"));
        self.actions.push(Action::Note(format!(
            "live recovery: epoch {epoch} keeps the survivors running; workers {moved:?} restore checkpoint \
             {checkpoint} on their new nodes; checkpoints up to {} are void",
            self.last_id
        )));
    }

    /// Every survivor re-linked: the moved slots' new owners join, each
    /// restoring its slot from the last complete checkpoint.
    fn join(&mut self, now_ms: u64) {
        let Phase::Relinking { survivors, joins, .. } = std::mem::replace(&mut self.phase, Phase::Running)
        else {
            return;
        };
        let moved: Vec<usize> = joins.iter().flat_map(|j| self.workers_of(j.pos)).collect();
        for j in &joins {
            let fetch_for: HashMap<usize, usize> = j.fetch.iter().copied().collect();
            let d = match self.deployment(&[j.pos], &fetch_for, Some((j.pos, moved.clone()))) {
                Ok(d) => d,
                Err(e) => return self.fail(e),
            };
            self.send(j.node, Msg::Deploy(d));
            *self.joining.entry(j.node).or_insert(0) += 1;
            self.fetched(fetch_for.into_keys());
        }
        for s in survivors {
            if !self.joining.contains_key(&s) {
                self.ready.insert(s);
            }
        }
        self.next_checkpoint_ms = now_ms + self.config.interval_ms;
        self.event(format!("joining {}", self.epoch));
        self.actions.push(Action::Note(format!(
            "every survivor re-linked: {} moved slot(s) join epoch {}",
            joins.len(),
            self.epoch
        )));
        if self.ready.len() == self.active().len() {
            self.event(format!("running {}", self.epoch));
        }
    }

    /// The live recovery under way cannot finish: abort its epoch on every
    /// node of the placement (joiners included) and roll back.
    fn fall_back(&mut self, why: String, now_ms: u64) {
        self.actions.push(Action::Note(format!(
            "the live recovery of epoch {} falls back to a global rollback: {why}",
            self.epoch
        )));
        self.roll_back(now_ms);
    }

    /// A share failed and no node failure explains it: every node rolls
    /// back to the last complete checkpoint, while restarts are left;
    /// else the job fails.
    fn restart(&mut self, why: JobFailure, now_ms: u64) {
        if self.config.interval_ms == 0 || self.restarted >= self.config.restarts {
            return self.fail(why);
        }
        self.restarted += 1;
        let checkpoint = self.last_complete.as_ref().map_or(0, |c| c.manifest.id);
        self.actions.push(Action::Note(format!(
            "{why}; no node failure explains it: every node rolls back to checkpoint {checkpoint} \
             (restart {} of {})",
            self.restarted, self.config.restarts
        )));
        self.roll_back(now_ms);
    }

    /// Aborts the epoch on every node of the placement (joiners included);
    /// once all stopped, the next epoch restores the last complete
    /// checkpoint.
    fn roll_back(&mut self, now_ms: u64) {
        let mut to = self.active();
        to.sort_unstable();
        for &j in &to {
            self.send(j, Msg::Abort { epoch: self.epoch });
        }
        self.phase = Phase::Aborting { waiting: to.into_iter().collect(), since_ms: now_ms };
        self.in_flight = None;
        self.share_failed = None;
        self.joining.clear();
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
                    self.last_complete = Some(Complete { manifest, holders, local });
                    self.in_flight = None;
                    self.unsettled = false;
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
                if live {
                    self.fall_back(format!("node `{name}`: {reason}"), now_ms);
                } else if matches!(self.phase, Phase::Running) && self.share_failed.is_none() {
                    self.share_failed = Some((now_ms, JobFailure::ShareFailed { node: name, reason }));
                }
            }
            Msg::Finished { epoch, report } if epoch == self.epoch => {
                self.finished.insert(from, report);
            }
            // A message of an earlier epoch, or one that no longer matters.
            Msg::Ready { .. }
            | Msg::Done { .. }
            | Msg::Failed { .. }
            | Msg::Finished { .. }
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
                if self.config.interval_ms > 0
                    && self.in_flight.is_none()
                    && self.finished.is_empty()
                    && self.ready.len() == self.active().len()
                    && now_ms >= self.next_checkpoint_ms
                {
                    self.last_id += 1;
                    let id = self.last_id;
                    self.in_flight = Some(InFlight { id, parts: HashMap::new() });
                    self.next_checkpoint_ms = now_ms + self.config.interval_ms;
                    self.event(format!("requested {id}"));
                    for j in self.active() {
                        self.send(j, Msg::Checkpoint { epoch: self.epoch, id });
                    }
                }
            }
        }
    }

    /// Deploys the next epoch; the new owner of each slot whose node did
    /// not take part in the last complete checkpoint fetches that slot's
    /// part from a live node that backed it up.
    fn redeploy(&mut self, now_ms: u64) {
        self.epoch += 1;
        let workers = self.slot_workers.iter().sum();
        let fetch_for = match self.fetch_plan(0..workers) {
            Ok(f) => f,
            Err(e) => return self.fail(e),
        };
        if let Err(e) = self.deploy(&fetch_for, now_ms) {
            return self.fail(e);
        }
        self.fetched(fetch_for.into_keys());
    }
}
