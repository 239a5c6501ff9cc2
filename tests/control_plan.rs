//! The coordinator's plan (`spate::control::plan`, sans-IO) driven by a
//! seeded simulation of its nodes: messages arrive late and out of order
//! across nodes, nodes crash (their connection drops, or they just go
//! silent), stall long enough to be declared failed and then speak again,
//! and answer deployments, checkpoints and aborts after random delays. The
//! checks, on every action the plan takes:
//!
//! - nothing is sent to a node after it was fenced, and no deployment
//!   names a fenced node;
//! - a deployment restores exactly the last checkpoint the plan completed,
//!   every node that did not take part in it fetches its part from a live
//!   node that backed it up, and no node backs up its own checkpoints;
//! - an epoch is deployed only after every live node of the aborted one
//!   said it stopped; a checkpoint completes only after every node of the
//!   placement sent its part;
//! - the job ends: it finishes, or fails with a reason that the scenario
//!   makes true (every node that could take over is gone, or every backup
//!   of a part). With spares for every crash and crashes far apart, it
//!   must finish.
//!
//! Odd seeds run with live recovery (`PlanConfig::live`): survivors answer
//! `Recover` with `Recovered` after a random delay (some also report the
//! broken link to the failed node as a `Failed` of the epoch before; in
//! some runs one survivor never answers, or answers `Failed`), and joining
//! deployments are answered like others. Checked besides:
//!
//! - `Recover` goes only to live nodes that ran the epoch before, never to
//!   the failed one; its `moved` is exactly the workers whose owner
//!   changed (all of fenced nodes), its checkpoint the last complete one;
//! - a joining deployment is sent only after every survivor told to
//!   recover answered `Recovered`, to a node running no share or a
//!   survivor running its own share of that epoch, for a moved
//!   slot of its own, with the placement and moved workers the survivors
//!   were given, restoring the last complete checkpoint and fetching
//!   exactly the parts its node lacks;
//! - every `aborted` is at least every checkpoint id requested before, and
//!   ids requested later are above it; no checkpoint is requested while
//!   survivors re-link, nor of a node before it said it runs the epoch;
//! - a `Failed` of the new epoch before every joiner is ready (some
//!   joiners fail), or before a checkpoint of the epoch is complete (some
//!   survivors fail to re-link shortly after the joiners start), makes the
//!   plan fall back at once: it aborts the epoch.
//!
//! `SPATE_PLAN_SEEDS=N` runs N seeds (default 2000); `SPATE_PLAN_SEED=S`
//! replays one. A failure prints its seed and the command that replays it.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;

use spate::core::checkpoint::Manifest;
use spate::core::control::plan::{Action, Plan, PlanConfig};
use spate::core::control::NodeReport;
use spate::core::control::NodeSpec;
use spate::core::control::{Deployment, Msg};

/// splitmix64: small, seeded, good enough to pick delays and faults.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

const FAILURE_TIMEOUT_MS: u64 = 500;
/// The reason of a survivor's injected failure to re-link.
const LATE_RELINK: &str = "re-linking worker 9: no barrier of checkpoint 9 was received from it";
/// The reason of an injected share failure that no node failure explains.
const GLITCH: &str = "the link to worker 9 broke and no replacement re-linked it";
/// Restarts the simulated plan may take (each run injects at most one
/// glitch, so a run never needs more).
const RESTARTS: u32 = 2;
const INTERVAL_MS: u64 = 200;

/// One simulated node.
#[derive(Debug, Default)]
struct Node {
    /// Crashed: sends nothing more.
    dead: bool,
    /// Stalled until this time: sends nothing (heartbeats included) until then.
    stalled_until: u64,
    /// Its deployment: epoch, its workers.
    epoch: Option<u64>,
    workers: Vec<usize>,
    /// It ran its share of `epoch` to the end.
    finished: bool,
    /// When it will finish its share, once ready.
    finish_at: Option<u64>,
}

/// How a survivor answers `Recover` in a live run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    /// `Recovered` after a random delay.
    Recovered,
    /// Never answers (but keeps heartbeating and answers `Abort`).
    Mute,
    /// `Failed` of the new epoch (it could not re-link).
    Fails,
}

struct Sim {
    rng: Rng,
    plan: Plan,
    nodes: Vec<Node>,
    /// Messages on their way to the plan: (arrival, order, from, message).
    inbox: Vec<(u64, u64, usize, Msg)>,
    order: u64,
    now: u64,
    fenced: HashSet<usize>,
    /// Per epoch: the nodes told to abort it, and those that said they did.
    aborts: HashMap<u64, (HashSet<usize>, HashSet<usize>)>,
    /// The parts received per checkpoint id (as the nodes sent them).
    parts: HashMap<u64, HashSet<usize>>,
    /// The placement of the latest deployment, and the owner of each
    /// worker in it.
    placement: Vec<String>,
    owners: Vec<String>,
    last_complete: Option<u64>,
    /// Per complete checkpoint: per worker, the node that took its part,
    /// and every node's replica targets.
    taken_by: HashMap<u64, (Vec<String>, HashMap<usize, Vec<SocketAddr>>)>,
    /// Per complete checkpoint and worker, the nodes that fetched its part.
    fetched: HashMap<(u64, usize), HashSet<String>>,
    /// Per worker, the replica targets of the share that runs it.
    replicas_now: HashMap<usize, Vec<SocketAddr>>,
    /// Per epoch, its owner of each worker (as deployed or recovered).
    owners_of: HashMap<u64, Vec<String>>,
    /// Per live recovery's epoch: its placement and moved workers, the
    /// survivors told to recover, and those whose `Recovered` the plan got.
    recover_of: HashMap<u64, (Vec<String>, Vec<usize>)>,
    recover_sent: HashMap<u64, HashSet<usize>>,
    recovered: HashMap<u64, HashSet<usize>>,
    /// The epoch whose survivors are re-linking, until its joiners are
    /// deployed or it is aborted.
    relinking: Option<u64>,
    /// Per epoch, the joiners whose `Ready` the plan has not got yet.
    joiners: HashMap<u64, HashSet<usize>>,
    /// Epochs in which a checkpoint completed, and the newest epoch any
    /// node was given.
    settled: HashSet<u64>,
    latest_epoch: u64,
    /// Survivors that failed to re-link after the joiners started.
    late_failures: u64,
    /// `(epoch, node)`: the plan got the node's `Ready` (or `Recovered`).
    readied: HashSet<(u64, usize)>,
    /// The highest checkpoint id requested, and the highest `aborted`.
    max_requested: u64,
    max_aborted: u64,
    /// How survivors answer `Recover`: this node (if any) answers so, the
    /// others `Recovered`.
    odd_one: Option<(usize, Answer)>,
    /// A share runs 300 ms and up to this much longer.
    spread: u64,
    relinks: u64,
    joins: u64,
    /// Joins onto a survivor, beside its own share.
    beside: u64,
    fallbacks: u64,
    /// Shares failed for no node failure (see `GLITCH`), and the restarts
    /// the plan took.
    glitches: u64,
    restarts: u64,
    /// A node whose share fails again in every epoch (a failure that
    /// recurs after every restart), and the epoch it last failed in.
    glitch_again: Option<usize>,
    glitched_epoch: Option<u64>,
    ended: Option<Result<(), String>>,
    trace: u64,
    names: Vec<String>,
    /// The job's workers (one per active node).
    workers: usize,
    /// Epochs deployed after a failure, and survivors that took over.
    recoveries: u64,
    takeovers: u64,
    /// Per failed node, the replacements of its workers in this recovery;
    /// recoveries that split a node's workers over several.
    took_over: HashMap<String, u64>,
    splits: u64,
}

fn replica_of(i: usize) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 20_000 + i as u16))
}

/// The owner of each worker of a placement.
fn owners(nodes: &[NodeSpec]) -> Vec<String> {
    nodes.iter().flat_map(|n| std::iter::repeat_n(n.name.clone(), n.workers)).collect()
}

impl Sim {
    fn new(seed: u64, active: usize, spares: usize, live: bool) -> Self {
        let mut rng = Rng(seed);
        let mut cfg_nodes = Vec::new();
        for i in 0..active + spares {
            let name = if i < active { format!("n{i}") } else { format!("s{}", i - active) };
            // Nodes of one or two workers: a failed node's workers may be
            // split over several replacements.
            let workers = 1 + rng.below(2) as usize;
            cfg_nodes.push((
                name,
                SocketAddr::from(([127, 0, 0, 1], 10_000 + i as u16)),
                workers,
                i >= active,
            ));
        }
        let workers = cfg_nodes.iter().filter(|n| !n.3).map(|n| n.2).sum();
        let config = PlanConfig {
            failure_timeout_ms: FAILURE_TIMEOUT_MS,
            connect_timeout_ms: 2000,
            interval_ms: INTERVAL_MS,
            backups: 1,
            origin_ns: 1,
            live,
            restarts: RESTARTS,
        };
        let mut plan = Plan::new(&cfg_nodes, 0, config);
        for (i, n) in cfg_nodes.iter().enumerate() {
            plan.register(i, 1, n.2, replica_of(i), 0).unwrap_or_else(|e| panic!("{e}"));
        }
        let names = cfg_nodes.iter().map(|n| n.0.clone()).collect();
        let nodes = (0..cfg_nodes.len()).map(|_| Node::default()).collect();
        let _ = rng.next();
        Sim {
            rng,
            plan,
            nodes,
            inbox: Vec::new(),
            order: 0,
            now: 0,
            fenced: HashSet::new(),
            aborts: HashMap::new(),
            parts: HashMap::new(),
            placement: Vec::new(),
            owners: Vec::new(),
            last_complete: None,
            taken_by: HashMap::new(),
            fetched: HashMap::new(),
            replicas_now: HashMap::new(),
            owners_of: HashMap::new(),
            recover_of: HashMap::new(),
            recover_sent: HashMap::new(),
            recovered: HashMap::new(),
            relinking: None,
            joiners: HashMap::new(),
            settled: HashSet::new(),
            latest_epoch: 0,
            late_failures: 0,
            readied: HashSet::new(),
            max_requested: 0,
            max_aborted: 0,
            odd_one: None,
            // Live recovery needs every share running: longer jobs give
            // crashes more chances to find them so.
            spread: if live { 3000 } else { 1500 },
            relinks: 0,
            joins: 0,
            beside: 0,
            fallbacks: 0,
            glitches: 0,
            restarts: 0,
            glitch_again: None,
            glitched_epoch: None,
            ended: None,
            trace: 0,
            names,
            workers,
            recoveries: 0,
            takeovers: 0,
            took_over: HashMap::new(),
            splits: 0,
        }
    }

    fn silent(&self, i: usize) -> bool {
        self.nodes[i].dead || self.now < self.nodes[i].stalled_until
    }

    /// Node `i` sends `msg` to the coordinator; it arrives later (a stalled
    /// node's messages wait for the stall to end).
    fn reply(&mut self, i: usize, msg: Msg) {
        self.reply_after(i, 0, msg);
    }

    /// As [`Sim::reply`], `delay` ms later.
    fn reply_after(&mut self, i: usize, delay: u64, msg: Msg) {
        if self.nodes[i].dead {
            return;
        }
        let at = self.now.max(self.nodes[i].stalled_until) + delay + self.rng.below(40);
        self.order += 1;
        self.inbox.push((at, self.order, i, msg));
    }

    fn mix(&mut self, v: u64) {
        self.trace = (self.trace ^ v).wrapping_mul(0x100_0000_01b3);
    }

    /// Applies the plan's actions, checking each.
    fn actions(&mut self) -> Result<(), String> {
        for a in self.plan.take_actions() {
            self.mix(format!("{a:?}").len() as u64);
            match a {
                Action::Send { to, msg } => {
                    if self.fenced.contains(&to) {
                        return Err(format!("sent {msg:?} to fenced node {}", self.names[to]));
                    }
                    self.deliver(to, msg)?;
                }
                Action::Fence { node, .. } => {
                    self.fenced.insert(node);
                }
                Action::Event(e) | Action::Note(e) => {
                    if (e.starts_with("deployed ") && e != "deployed 0") || e.starts_with("relinking ") {
                        self.recoveries += 1;
                    }
                    if e.starts_with("relinking ") {
                        self.relinks += 1;
                    }
                    if e.contains("falls back to a global rollback") {
                        self.fallbacks += 1;
                    }
                    if e.contains("no node failure explains it") {
                        self.restarts += 1;
                    }
                    if let Some(id) = e.strip_prefix("requested ") {
                        let id: u64 = id.parse().map_err(|_| format!("bad event {e:?}"))?;
                        if id <= self.max_requested || id <= self.max_aborted {
                            return Err(format!(
                                "checkpoint {id} requested after {} was and {} was voided",
                                self.max_requested, self.max_aborted
                            ));
                        }
                        if let Some(r) = self.relinking {
                            return Err(format!("checkpoint {id} requested while epoch {r} re-links"));
                        }
                        self.max_requested = id;
                    }
                    if e.contains("takes over") && !e.contains("`s") {
                        self.takeovers += 1;
                    }
                    if let Some((_, failed)) = e.split_once("workers of node ") {
                        let n = self.took_over.entry(failed.to_string()).or_insert(0);
                        *n += 1;
                        if *n == 2 {
                            self.splits += 1;
                        }
                    }
                    if e.starts_with("deployed ") || e.starts_with("relinking ") {
                        self.took_over.clear();
                    }
                    if std::env::var_os("SPATE_PLAN_DEBUG").is_some() {
                        eprintln!("{:>6} ms: {e}", self.now);
                    }
                }
                Action::Finish(_) => self.ended = Some(Ok(())),
                Action::Fail(reason) => self.ended = Some(Err(reason)),
            }
        }
        Ok(())
    }

    /// The job's placement `nodes` is sound: no fenced node, every worker.
    fn check_placement(&self, epoch: u64, nodes: &[NodeSpec]) -> Result<(), String> {
        for n in nodes {
            let i = self.names.iter().position(|x| *x == n.name).ok_or("unknown node")?;
            if self.fenced.contains(&i) {
                return Err(format!("epoch {epoch} places fenced node {}", n.name));
            }
        }
        let workers = nodes.iter().map(|n| n.workers).sum::<usize>();
        if workers != self.workers {
            return Err(format!("epoch {epoch} has {workers} workers, the job {}", self.workers));
        }
        Ok(())
    }

    fn check_deploy(&mut self, to: usize, d: &Deployment) -> Result<(), String> {
        self.check_placement(d.epoch, &d.nodes)?;
        if d.replicas.contains(&replica_of(to)) {
            return Err(format!("node {} backs up its own checkpoints", self.names[to]));
        }
        if d.restore.as_ref().map(|m| m.id) != self.last_complete {
            return Err(format!(
                "epoch {} restores {:?}, the last complete checkpoint is {:?}",
                d.epoch,
                d.restore.as_ref().map(|m| m.id),
                self.last_complete
            ));
        }
        if d.aborted < self.max_requested {
            return Err(format!(
                "epoch {} voids checkpoints up to {}, but {} was requested",
                d.epoch, d.aborted, self.max_requested
            ));
        }
        let owners = owners(&d.nodes);
        // The workers this deployment runs.
        let mut mine = Vec::new();
        match d.join {
            None => {
                if !d.moved.is_empty() {
                    return Err(format!("epoch {}'s deployment moves workers {:?}", d.epoch, d.moved));
                }
                if d.epoch > 0 {
                    let (told, done) = self.aborts.get(&(d.epoch - 1)).cloned().unwrap_or_default();
                    let pending: Vec<&usize> =
                        told.iter().filter(|j| !done.contains(j) && !self.fenced.contains(j)).collect();
                    if !pending.is_empty() {
                        return Err(format!(
                            "epoch {} deployed before nodes {pending:?} stopped the last",
                            d.epoch
                        ));
                    }
                    // Every live node that ran an earlier epoch (as
                    // deployed, joined or recovered) was told to stop it.
                    let running = (0..self.nodes.len()).find(|&j| {
                        !self.fenced.contains(&j) && self.nodes[j].epoch.is_some_and(|e| e < d.epoch)
                    });
                    if let Some(j) = running {
                        return Err(format!(
                            "epoch {} deployed while {} still runs epoch {:?}",
                            d.epoch, self.names[j], self.nodes[j].epoch
                        ));
                    }
                }
                mine.extend((0..owners.len()).filter(|&w| owners[w] == self.names[to]));
            }
            Some(slot) => {
                let told = self.recover_sent.get(&d.epoch).cloned().unwrap_or_default();
                let answered = self.recovered.get(&d.epoch).cloned().unwrap_or_default();
                let mut pending: Vec<&String> =
                    told.iter().filter(|j| !answered.contains(j)).map(|&j| &self.names[j]).collect();
                pending.sort_unstable();
                if told.is_empty() || !pending.is_empty() {
                    return Err(format!(
                        "{} joins epoch {} before survivors {pending:?} re-linked (told: {told:?})",
                        self.names[to], d.epoch
                    ));
                }
                let (placement, moved) = self.recover_of.get(&d.epoch).cloned().unwrap_or_default();
                if d.moved != moved {
                    return Err(format!(
                        "{} joins epoch {} told workers {:?} moved, the survivors {moved:?}",
                        self.names[to], d.epoch, d.moved
                    ));
                }
                if d.nodes.iter().map(|n| n.name.clone()).collect::<Vec<_>>() != placement {
                    return Err(format!(
                        "epoch {}'s joiners and survivors have different placements",
                        d.epoch
                    ));
                }
                let Some(n) = d.nodes.get(slot).filter(|n| n.name == self.names[to]) else {
                    return Err(format!(
                        "{} joins epoch {} as slot {slot}, not its own",
                        self.names[to], d.epoch
                    ));
                };
                let base: usize = d.nodes[..slot].iter().map(|n| n.workers).sum();
                mine.extend(base..base + n.workers);
                if let Some(w) = mine.iter().find(|w| !moved.contains(w)) {
                    return Err(format!(
                        "{} joins epoch {} with worker {w}, which did not move",
                        self.names[to], d.epoch
                    ));
                }
            }
        }
        // Who must fetch: the owners of workers whose part they do not have.
        if let Some(id) = self.last_complete {
            let (took, replicas) = self.taken_by.get(&id).cloned().unwrap_or_default();
            let name = self.names[to].clone();
            if let Some((w, _)) = d.fetch.iter().find(|(w, _)| !mine.contains(w)) {
                return Err(format!("{name} fetches worker {w}'s part, which it does not run"));
            }
            for &w in &mine {
                let fetched: Vec<&(usize, SocketAddr)> = d.fetch.iter().filter(|(x, _)| *x == w).collect();
                let has = took.get(w) == Some(&name)
                    || self.fetched.get(&(id, w)).is_some_and(|f| f.contains(&name));
                if has {
                    if !fetched.is_empty() {
                        return Err(format!("{name} fetches worker {w}'s part, which it has"));
                    }
                    continue;
                }
                let [(_, a)] = fetched.as_slice() else {
                    return Err(format!("{name} does not fetch worker {w}'s part of checkpoint {id}"));
                };
                let allowed = replicas.get(&w).cloned().unwrap_or_default();
                let holder = (a.port() - 20_000) as usize;
                if self.fenced.contains(&holder) || !allowed.contains(a) {
                    return Err(format!("{name} fetches worker {w} from {a}, not a live holder"));
                }
                self.fetched.entry((id, w)).or_default().insert(name.clone());
            }
        } else if !d.fetch.is_empty() {
            return Err(format!("{} fetches parts of no checkpoint", self.names[to]));
        }
        Ok(())
    }

    /// Checks a `Recover` to node `to`.
    fn check_recover(&self, to: usize, msg: &Msg) -> Result<(), String> {
        let Msg::Recover { epoch, checkpoint, aborted, nodes, replicas, moved } = msg else {
            return Err(format!("not a recovery: {msg:?}"));
        };
        let (epoch, checkpoint, aborted) = (*epoch, *checkpoint, *aborted);
        let name = &self.names[to];
        self.check_placement(epoch, nodes)?;
        if self.nodes[to].epoch != Some(epoch - 1) {
            return Err(format!(
                "{name} told to recover into epoch {epoch}, but it runs {:?}",
                self.nodes[to].epoch
            ));
        }
        if !nodes.iter().any(|n| n.name == *name) {
            return Err(format!("{name} told to recover into epoch {epoch}, which does not place it"));
        }
        if replicas.contains(&replica_of(to)) {
            return Err(format!("node {name} backs up its own checkpoints"));
        }
        if checkpoint != self.last_complete.unwrap_or(0) {
            return Err(format!(
                "epoch {epoch} recovers from checkpoint {checkpoint}, the last complete is {:?}",
                self.last_complete
            ));
        }
        if aborted < self.max_requested {
            return Err(format!(
                "epoch {epoch} voids checkpoints up to {aborted}, but {} was requested",
                self.max_requested
            ));
        }
        let before = self.owners_of.get(&(epoch - 1)).cloned().unwrap_or_default();
        let after = owners(nodes);
        let changed: Vec<usize> = (0..after.len()).filter(|&w| before.get(w) != Some(&after[w])).collect();
        if changed.is_empty() || changed != *moved {
            return Err(format!(
                "epoch {epoch} moves workers {moved:?}, but these changed owner: {changed:?}"
            ));
        }
        for &w in moved {
            let i = self.names.iter().position(|x| *x == before[w]).ok_or("unknown node")?;
            if !self.fenced.contains(&i) {
                return Err(format!("epoch {epoch} moves worker {w} away from live node {}", before[w]));
            }
        }
        if let Some((placement, m)) = self.recover_of.get(&epoch) {
            if *placement != nodes.iter().map(|n| n.name.clone()).collect::<Vec<_>>() || m != moved {
                return Err(format!("epoch {epoch}'s survivors are told different placements"));
            }
        }
        Ok(())
    }

    /// A message reaches node `to` (the coordinator's own node at once).
    fn deliver(&mut self, to: usize, msg: Msg) -> Result<(), String> {
        if let Msg::Recover { .. } = &msg {
            self.check_recover(to, &msg)?;
        }
        match msg {
            Msg::Deploy(d) => {
                self.check_deploy(to, &d)?;
                self.latest_epoch = self.latest_epoch.max(d.epoch);
                self.placement = d.nodes.iter().map(|n| n.name.clone()).collect();
                self.owners = owners(&d.nodes);
                self.owners_of.entry(d.epoch).or_insert_with(|| self.owners.clone());
                self.max_aborted = self.max_aborted.max(d.aborted);
                let mine: Vec<usize> = match d.join {
                    None => (0..self.owners.len()).filter(|&w| self.owners[w] == self.names[to]).collect(),
                    Some(slot) => {
                        let base: usize = d.nodes[..slot].iter().map(|n| n.workers).sum();
                        (base..base + d.nodes[slot].workers).collect()
                    }
                };
                for &w in &mine {
                    self.replicas_now.insert(w, d.replicas.clone());
                }
                let ready = self.now + 5 + self.rng.below(100);
                let finish = ready + 300 + self.rng.below(self.spread);
                let node = &mut self.nodes[to];
                if d.join.is_some() {
                    self.joins += 1;
                }
                // A survivor that took a moved slot over runs it beside its
                // own share (of the same epoch: it re-linked first).
                let beside = d.join.is_some() && node.epoch.is_some() && !node.finished;
                if beside && node.epoch != Some(d.epoch) {
                    return Err(format!(
                        "{} joins epoch {} while running a share of epoch {:?}",
                        self.names[to], d.epoch, node.epoch
                    ));
                }
                if beside {
                    self.beside += 1;
                }
                self.relinking = None;
                node.epoch = Some(d.epoch);
                if beside {
                    node.workers.extend(mine);
                } else {
                    node.workers = mine;
                }
                node.finished = false;
                node.finish_at = Some(finish);
                if d.join.is_some() {
                    for j in 0..self.nodes.len() {
                        if j != to
                            && self.nodes[j].epoch == Some(d.epoch)
                            && self.nodes[j].finish_at.is_none()
                        {
                            self.nodes[j].finish_at = Some(ready + 300 + self.rng.below(self.spread));
                        }
                    }
                    self.joiners.entry(d.epoch).or_default().insert(to);
                    if self.rng.chance(8) {
                        // A survivor finds it cannot re-link this joiner's
                        // workers, soon after they start (before the
                        // epoch's first checkpoint can complete).
                        let mut told: Vec<usize> =
                            self.recover_sent.get(&d.epoch).into_iter().flatten().copied().collect();
                        told.sort_unstable();
                        told.retain(|&j| {
                            j != to
                                && !self.fenced.contains(&j)
                                && !self.nodes[j].dead
                                && self.nodes[j].stalled_until <= self.now
                        });
                        if let Some(&s) = told.get(self.rng.below(told.len() as u64) as usize) {
                            self.late_failures += 1;
                            let delay = self.rng.below(100);
                            self.reply_after(
                                s,
                                delay,
                                Msg::Failed { epoch: d.epoch, reason: LATE_RELINK.into() },
                            );
                        }
                    }
                    if self.rng.chance(10) {
                        // It cannot restore, or reach a survivor.
                        let reason = "cannot connect to the survivors".to_string();
                        self.reply(to, Msg::Failed { epoch: d.epoch, reason });
                        return Ok(());
                    }
                }
                self.reply(to, Msg::Ready { epoch: d.epoch });
            }
            Msg::Recover { epoch, aborted, nodes, replicas, moved, .. } => {
                self.latest_epoch = self.latest_epoch.max(epoch);
                self.recover_sent.entry(epoch).or_default().insert(to);
                self.recover_of
                    .insert(epoch, (nodes.iter().map(|n| n.name.clone()).collect(), moved.clone()));
                self.placement = nodes.iter().map(|n| n.name.clone()).collect();
                self.owners = owners(&nodes);
                self.owners_of.insert(epoch, self.owners.clone());
                self.max_aborted = self.max_aborted.max(aborted);
                self.relinking = Some(epoch);
                for w in 0..self.owners.len() {
                    if self.owners[w] == self.names[to] && !moved.contains(&w) {
                        self.replicas_now.insert(w, replicas.clone());
                    }
                }
                let answer = match self.odd_one {
                    Some((i, a)) if i == to => a,
                    _ => Answer::Recovered,
                };
                if answer == Answer::Mute {
                    return Ok(());
                }
                if self.rng.chance(30) {
                    // Its link to the failed node broke first.
                    let reason = "worker 0: peer closed the connection".to_string();
                    self.reply(to, Msg::Failed { epoch: epoch - 1, reason });
                }
                let delay = self.rng.below(150);
                if answer == Answer::Fails {
                    let reason = "cannot accept the moved workers".to_string();
                    self.reply_after(to, delay, Msg::Failed { epoch, reason });
                    return Ok(());
                }
                // Its share cannot end before the moved workers run again
                // (it waits for their input): it ends after they join.
                let node = &mut self.nodes[to];
                node.epoch = Some(epoch);
                node.finished = false;
                node.finish_at = None;
                self.reply_after(to, delay, Msg::Recovered { epoch });
            }
            Msg::Checkpoint { epoch, id } => {
                if let Some(r) = self.relinking {
                    return Err(format!("checkpoint {id} requested while epoch {r} re-links"));
                }
                if !self.readied.contains(&(epoch, to)) {
                    return Err(format!(
                        "checkpoint {id} requested of {} before it said it runs epoch {epoch}",
                        self.names[to]
                    ));
                }
                if self.nodes[to].epoch == Some(epoch) && !self.nodes[to].finished {
                    let mut part = Manifest::new(id, 0);
                    for &w in &self.nodes[to].workers {
                        part.offsets.insert(("source".to_string(), w), id * 100 + w as u64);
                    }
                    self.parts.entry(id).or_default().insert(to);
                    self.reply(to, Msg::Done { epoch, part });
                }
            }
            Msg::Complete { epoch, id } => {
                self.settled.insert(epoch);
                let placed: Vec<usize> = self
                    .placement
                    .iter()
                    .filter_map(|n| self.names.iter().position(|x| x == n))
                    .collect::<HashSet<_>>()
                    .into_iter()
                    .collect();
                let got = self.parts.get(&id).cloned().unwrap_or_default();
                if let Some(missing) = placed.iter().find(|i| !got.contains(i)) {
                    return Err(format!("checkpoint {id} complete without {}'s part", self.names[*missing]));
                }
                if self.last_complete != Some(id) {
                    self.last_complete = Some(id);
                    self.taken_by.insert(id, (self.owners.clone(), self.replicas_now.clone()));
                }
            }
            Msg::Abort { epoch } => {
                if self.relinking == Some(epoch) {
                    self.relinking = None;
                }
                self.aborts.entry(epoch).or_default().0.insert(to);
                self.nodes[to].epoch = None;
                self.nodes[to].finish_at = None;
                self.reply(to, Msg::Aborted { epoch });
            }
            other => return Err(format!("unexpected {other:?} to node {}", self.names[to])),
        }
        Ok(())
    }

    fn step(
        &mut self,
        crash_at: &mut Vec<(u64, usize, bool)>,
        stall_at: &mut Vec<(u64, usize, u64)>,
        glitch_at: &mut Option<(u64, usize)>,
    ) -> Result<(), String> {
        self.now += 1 + self.rng.below(20);
        if let Some(i) = self.glitch_again {
            if glitch_at.is_none() && self.nodes[i].epoch.is_some_and(|e| Some(e) != self.glitched_epoch) {
                *glitch_at = Some((self.now + 50, i));
            }
        }
        // A share that fails on a running node (a link between two
        // running nodes broke): it never finishes, and no node failure
        // explains it.
        if let Some((t, i)) = *glitch_at {
            if t <= self.now {
                *glitch_at = None;
                let n = &self.nodes[i];
                if let (Some(e), false, false) = (n.epoch, n.finished, n.dead || self.silent(i)) {
                    self.nodes[i].finish_at = None;
                    self.glitches += 1;
                    self.glitched_epoch = Some(e);
                    self.reply(i, Msg::Failed { epoch: e, reason: GLITCH.into() });
                }
            }
        }
        // Faults due now.
        while let Some(&(t, i, drop_conn)) = crash_at.first() {
            if t > self.now {
                break;
            }
            crash_at.remove(0);
            if !self.nodes[i].dead {
                self.nodes[i].dead = true;
                // Nodes running its epoch may see their links to it break
                // (and say so) before the plan hears of the failure.
                if let (Some(e), false) = (self.nodes[i].epoch, self.fenced.contains(&i)) {
                    for j in 0..self.nodes.len() {
                        if j != i && self.nodes[j].epoch == Some(e) && self.rng.chance(30) {
                            let reason = format!("worker link to node {} closed", self.names[i]);
                            self.reply_after(j, 20, Msg::Failed { epoch: e, reason });
                        }
                    }
                }
                if drop_conn {
                    let why = "its control connection closed";
                    self.plan.connection_lost(i, why, self.now);
                }
            }
        }
        while let Some(&(t, i, len)) = stall_at.first() {
            if t > self.now {
                break;
            }
            stall_at.remove(0);
            self.nodes[i].stalled_until = self.now + len;
        }
        // Heartbeats of the nodes that speak.
        for i in 1..self.nodes.len() {
            if !self.silent(i) {
                self.plan.heard(i, self.now);
            }
        }
        // Nodes that finish their share.
        for i in 0..self.nodes.len() {
            let n = &self.nodes[i];
            if let (Some(e), Some(at)) = (n.epoch, n.finish_at) {
                if at <= self.now && !n.finished && !self.silent(i) {
                    self.nodes[i].finished = true;
                    let report = NodeReport {
                        node: self.names[i].clone(),
                        records_in: 1,
                        records_out: 1,
                        seconds: 1.0,
                    };
                    self.reply(i, Msg::Finished { epoch: e, report });
                }
            }
        }
        // Messages that arrived, in arrival order.
        self.inbox.sort_by_key(|m| (m.0, m.1));
        let due = self.inbox.iter().take_while(|m| m.0 <= self.now).count();
        let arrived: Vec<(u64, u64, usize, Msg)> = self.inbox.drain(..due).collect();
        let mut must_fall_back = None;
        for (_, _, from, msg) in arrived {
            if let Msg::Aborted { epoch } = &msg {
                self.aborts.entry(*epoch).or_default().1.insert(from);
            }
            if let Msg::Recovered { epoch } = &msg {
                self.recovered.entry(*epoch).or_default().insert(from);
            }
            if let Msg::Ready { epoch } | Msg::Recovered { epoch } = &msg {
                self.readied.insert((*epoch, from));
                if let Some(j) = self.joiners.get_mut(epoch) {
                    j.remove(&from);
                }
            }
            // A live recovery that is not over when a node's share of its
            // epoch fails must fall back.
            if let Msg::Failed { epoch, .. } = &msg {
                let joining = self.joiners.get(epoch).is_some_and(|j| !j.is_empty());
                // A survivor that could not re-link a replacement already
                // running (injected below, before any checkpoint of the
                // epoch can complete).
                let late = matches!(&msg, Msg::Failed { reason, .. } if reason == LATE_RELINK)
                    && *epoch >= self.latest_epoch
                    && !self.settled.contains(epoch);
                if !self.fenced.contains(&from) && (self.relinking == Some(*epoch) || joining || late) {
                    must_fall_back = Some((*epoch, !(self.relinking == Some(*epoch) || joining)));
                }
            }
            if std::env::var_os("SPATE_PLAN_DEBUG").is_some() {
                eprintln!("{:>6} ms: {} -> plan: {msg:?}", self.now, self.names[from]);
            }
            self.mix(from as u64);
            self.plan.message(from, msg, self.now);
        }
        self.plan.tick(self.now);
        self.actions()?;
        if let Some((e, late)) = must_fall_back {
            // (A late failure is moot when a node failure in the same step
            // already began a newer epoch: the plan ignores the old one's.)
            let superseded = late && self.latest_epoch > e;
            if self.ended.is_none() && !superseded && self.aborts.get(&e).is_none_or(|a| a.0.is_empty()) {
                return Err(format!("a share of epoch {e} failed during its live recovery, which went on"));
            }
        }
        Ok(())
    }
}

/// What a run did: its trace hash, recoveries, survivors that took over,
/// live recoveries begun, joining deployments, live recoveries that fell
/// back, whether it failed (for a good reason).
#[derive(Debug, PartialEq, Eq)]
struct Ran {
    trace: u64,
    recoveries: u64,
    takeovers: u64,
    splits: u64,
    relinks: u64,
    joins: u64,
    beside: u64,
    late_failures: u64,
    fallbacks: u64,
    glitches: u64,
    restarts: u64,
    failed: bool,
}

/// One scenario: active nodes, spares, crashes, stalls.
fn run(seed: u64) -> Result<Ran, String> {
    let mut rng = Rng(seed ^ 0x5eed);
    let active = 3 + rng.below(2) as usize;
    // Odd seeds recover live; in some of those runs one survivor never
    // answers `Recover`, or cannot re-link. Live recovery needs a free
    // spare per moved slot: live runs get one more.
    let live = seed % 2 == 1;
    let spares = rng.below(3) as usize + usize::from(live);
    let mut sim = Sim::new(seed, active, spares, live);
    if live && rng.chance(20) {
        let answer = if rng.chance(50) { Answer::Mute } else { Answer::Fails };
        sim.odd_one = Some((1 + rng.below((active - 1) as u64) as usize, answer));
    }
    // A mute survivor delays the recovery by the abort timeout: no new
    // checkpoint in the meantime, so later crashes may take every backup.
    let slow = matches!(sim.odd_one, Some((_, Answer::Mute)));
    // 0–3 crashes of nodes other than the coordinator (node 0), at random
    // times; half drop their connection, half go silent.
    let crashes = rng.below(4) as usize;
    let mut crash_at: Vec<(u64, usize, bool)> = (0..crashes)
        .map(|_| (rng.below(3000), 1 + rng.below((active + spares - 1) as u64) as usize, rng.chance(50)))
        .collect();
    crash_at.sort_unstable();
    // Sometimes a node stalls past the failure timeout (a false suspicion).
    let mut stall_at: Vec<(u64, usize, u64)> = Vec::new();
    if rng.chance(30) {
        stall_at.push((
            rng.below(3000),
            1 + rng.below((active - 1) as u64) as usize,
            FAILURE_TIMEOUT_MS + 200,
        ));
    }
    let mut victims: Vec<usize> = crash_at.iter().map(|c| c.1).chain(stall_at.iter().map(|s| s.1)).collect();
    victims.sort_unstable();
    victims.dedup();
    let stalls = !stall_at.is_empty();
    // Sometimes a share fails for no node failure: the plan restarts. In
    // some of those runs (and no other fault) it fails again in every
    // epoch: after its restarts, the job fails with its reason.
    let mut glitch_at =
        rng.chance(25).then(|| (rng.below(3000), 1 + rng.below((active - 1) as u64) as usize));
    let recurring = glitch_at.is_some() && rng.chance(20);
    if recurring {
        crash_at.clear();
        stall_at.clear();
        victims.clear();
        // (Its first failure too: 50 ms into the first epoch.)
        sim.glitch_again = glitch_at.take().map(|g| g.1);
    }
    let far_apart = crash_at.windows(2).all(|w| w[1].0 > w[0].0 + 4 * INTERVAL_MS + FAILURE_TIMEOUT_MS);
    if std::env::var_os("SPATE_PLAN_DEBUG").is_some() {
        eprintln!(
            "seed {seed}: {active} active, {spares} spares, crashes {crash_at:?}, stalls {stall_at:?}, \
             live {live}, odd one {:?}",
            sim.odd_one
        );
    }
    sim.plan.start(0);
    sim.actions().map_err(|e| format!("seed {seed}: {e}"))?;
    while sim.ended.is_none() {
        if sim.now > 300_000 {
            return Err(format!("seed {seed}: the job neither finished nor failed in 300 s"));
        }
        sim.step(&mut crash_at, &mut stall_at, &mut glitch_at)
            .map_err(|e| format!("seed {seed} at {} ms: {e}", sim.now))?;
    }
    if recurring {
        return match sim.ended.take() {
            Some(Err(reason)) if reason.contains(GLITCH) && sim.restarts == u64::from(RESTARTS) => {
                Ok(sim.ran(true))
            }
            other => Err(format!(
                "seed {seed}: a share failing in every epoch must fail the job after {RESTARTS} restarts \
                 ({} taken), not end with {other:?}",
                sim.restarts
            )),
        };
    }
    let failed = match sim.ended.take() {
        Some(Ok(())) => false,
        Some(Err(reason)) => {
            let acceptable = ["no node is left", "are all gone", "one node is left"];
            if !acceptable.iter().any(|a| reason.contains(a)) {
                return Err(format!("seed {seed}: failed for no good reason: {reason}"));
            }
            let single = victims.len() == 1 && active + spares > 2;
            if single || (victims.len() <= spares && far_apart && !stalls && !slow) {
                return Err(format!(
                    "seed {seed}: {} failure(s) far apart with {spares} spare(s) must be survived: {reason}",
                    victims.len()
                ));
            }
            true
        }
        None => return Err(format!("seed {seed}: no end")),
    };
    Ok(sim.ran(failed))
}

impl Sim {
    /// What the run did (see [`Ran`]).
    fn ran(&self, failed: bool) -> Ran {
        Ran {
            trace: self.trace,
            recoveries: self.recoveries,
            takeovers: self.takeovers,
            splits: self.splits,
            relinks: self.relinks,
            joins: self.joins,
            beside: self.beside,
            late_failures: self.late_failures,
            fallbacks: self.fallbacks,
            glitches: self.glitches,
            restarts: self.restarts,
            failed,
        }
    }
}

fn env(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| v.parse().unwrap_or_else(|_| panic!("{name}={v:?} is not a number")))
}

#[test]
fn the_plan_recovers_or_fails_for_a_reason_under_random_faults() {
    let seeds: Vec<u64> = match env("SPATE_PLAN_SEED") {
        Some(s) => vec![s],
        None => (0..env("SPATE_PLAN_SEEDS").unwrap_or(2000)).collect(),
    };
    let (one, n) = (seeds.len() == 1, seeds.len());
    let mut failures = Vec::new();
    let (mut recovered, mut takeovers, mut failed, mut splits) = (0, 0, 0, 0);
    let (mut relinks, mut joins, mut beside, mut late, mut fallbacks) = (0, 0, 0, 0, 0);
    let (mut glitches, mut restarts) = (0, 0);
    for seed in seeds {
        match run(seed) {
            Ok(r) => {
                recovered += u64::from(r.recoveries > 0);
                takeovers += r.takeovers;
                splits += r.splits;
                relinks += r.relinks;
                joins += r.joins;
                beside += r.beside;
                late += r.late_failures;
                fallbacks += r.fallbacks;
                glitches += r.glitches;
                restarts += r.restarts;
                failed += u64::from(r.failed);
            }
            Err(e) => failures.push(format!(
                "{e}\n  replay: SPATE_PLAN_SEED={seed} cargo test -p spate --test control_plan"
            )),
        }
    }
    eprintln!("{n} seeds: {recovered} recovered at least once, {takeovers} survivor takeovers, {failed} failed for a good reason, {splits} splits of a node's workers");
    eprintln!(
        "  live: {relinks} recoveries begun, {joins} joining deployments ({beside} onto a survivor), {late} \
         survivors failing to re-link a running joiner, {fallbacks} fell back to a rollback"
    );
    eprintln!("  {glitches} shares failed for no node failure, {restarts} restarts");
    if !one && failures.is_empty() {
        // The scenarios exercise what they claim to.
        assert!(recovered > n as u64 / 4, "only {recovered} of {n} runs recovered");
        assert!(
            takeovers > 0 && failed > 0 && splits > 0,
            "no survivor takeover, split or justified failure"
        );
        if n >= 100 {
            assert!(glitches > 0 && restarts > 0, "{glitches} glitches, {restarts} restarts");
            assert!(
                relinks > n as u64 / 20 && joins > 0 && beside > 0 && late > 0 && fallbacks > 0,
                "live recovery not exercised: {relinks} begun, {joins} joins ({beside} onto a survivor), \
                 {late} late re-link failures, {fallbacks} fallbacks"
            );
        }
    }
    assert!(
        failures.is_empty(),
        "{} failing seeds:\n{}",
        failures.len(),
        failures.iter().take(5).cloned().collect::<Vec<_>>().join("\n")
    );
}

#[test]
fn a_seed_replays_exactly() {
    for seed in [3u64, 77, 1234] {
        assert_eq!(run(seed), run(seed), "seed {seed}");
    }
}
