//! The simulated cluster ([`World`]): production nodes ([`Node`] over
//! [`SimEnv`]) and their production workers, turned one at a time in
//! virtual time by a seeded scheduler, with the faults of a [`Scenario`]
//! injected at their times — a node's process killed (and perhaps started
//! again, a new incarnation), a node stalled (silent, then back as a
//! zombie), a connection cut. When the job ends, [`World::check`] compares
//! every output with the closed form.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::config::RuntimeConfig;
use crate::control::coordinator::Journal;
use crate::control::msg::Msg;
use crate::control::peer::Peer;
use crate::control::placement::{ClusterPlacement, NodeSpec};
use crate::control::plan::PlanConfig;
use crate::control::{Node, NodeSetup};
use crate::runtime::{Turn, Worker};
use crate::sim::env::{Replicas, Shared, SimEnv};
use crate::sim::monitor::Monitor;
use crate::sim::net::{Net, SimConn, SimConnecting};
use crate::sim::rng::Rng;
use crate::sim::workload::{self, Files, Workload, QUERY};
use crate::time::virtual_clock;

/// A node of the scenario.
#[derive(Clone, Debug)]
pub(crate) struct NodeDef {
    pub(crate) workers: usize,
    pub(crate) spare: bool,
}

/// A fault, at a time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fault {
    /// The node's process is killed.
    Crash(usize),
    /// A killed node's process starts again (a new incarnation).
    Restart(usize),
    /// The node stops (no turn of it runs) for this many ns.
    Stall(usize, u64),
    /// One connection between two live nodes is cut (the `n`th of those
    /// open, modulo their number).
    Cut(u64),
}

/// What one seed runs.
#[derive(Clone, Debug)]
pub(crate) struct Scenario {
    pub(crate) nodes: Vec<NodeDef>,
    pub(crate) coordinator: usize,
    pub(crate) live: bool,
    pub(crate) interval_ms: u64,
    pub(crate) failure_timeout_ms: u64,
    /// Backup nodes per checkpoint part.
    pub(crate) backups: usize,
    pub(crate) workload: Workload,
    pub(crate) batch_records: usize,
    pub(crate) channel_batches: usize,
    /// Records a source step emits at most (few: a replacement catches up
    /// slowly, so checkpoints are taken while receivers still skip what
    /// they had).
    pub(crate) step_records: usize,
    pub(crate) replay_buffer_bytes: usize,
    /// Faults by virtual time (ns).
    pub(crate) faults: Vec<(u64, Fault)>,
    /// Faults at the first coordinator event that starts with the text
    /// (a recovery beginning, replacements joining, a checkpoint
    /// requested): crashes during recovery and during checkpoints.
    pub(crate) triggers: Vec<(String, Fault)>,
    pub(crate) min_delay_ns: u64,
    pub(crate) jitter_ns: u64,
    /// Workers the job starts on (0: all of them); the others own no bins
    /// until a rescale gives them some.
    pub(crate) start_workers: usize,
    /// `spate ctl` requests by virtual time (ns): each is sent no earlier
    /// than its time, and after the previous one was answered.
    pub(crate) requests: Vec<(u64, String)>,
    /// The job's workers at most (0: the running nodes'): the others are
    /// parked until a rescale puts them on spares that join (decision 63).
    pub(crate) max_workers: usize,
    /// A scaling policy in the coordinator, fed the workers' load reports
    /// in virtual time (decisions 55–57): its decisions rescale the job as
    /// requests do, joins and all.
    pub(crate) scaling: Option<crate::control::scaling::ScalingConfig>,
}

/// Journal labels a crash may be triggered at during a rescale: the
/// request taken, a step staged, staged everywhere, switched, merged.
const HANDOFF_TRIGGERS: [&str; 6] =
    ["rescale", "sent Handoff", "got Staged", "sent Switch", "got HandedOff", "handoff"];

/// A random `spate ctl` request for a job of `workers` workers (some are
/// refused: bins no worker owns whole, a node that is not last).
fn random_request(r: &mut Rng, workers: usize, nodes: usize) -> String {
    let mut max = if r.chance(60) { format!(" --max-bins {}", r.range(1, 8)) } else { String::new() };
    if r.chance(30) {
        max += &format!(" --max-bytes {}", r.range(1, 1 << 16));
    }
    match r.below(10) {
        0..=6 => format!("scale {}{max}", r.range(1, workers as u64)),
        7..=8 => {
            let start = r.below(16);
            let end = (start + r.range(1, 6)).min(16);
            format!("move {start} {end} {}{max}", r.below(workers as u64))
        }
        _ => {
            let exit = if r.chance(30) { " --exit" } else { "" };
            format!("scale-in n{}{max}{exit}", r.range(1, nodes.max(2) as u64 - 1))
        }
    }
}

impl Scenario {
    /// A random scenario of seed `seed` (see `crate::sim` for the ranges).
    pub(crate) fn random(seed: u64) -> Self {
        let mut r = Rng::new(seed ^ 0xC0FF_EE00);
        if r.chance(25) {
            return Self::two_failures(&mut r);
        }
        if r.chance(8) {
            return Self::crash_after_a_step(&mut r);
        }
        if r.chance(6) {
            return Self::grow_from_one(&mut r);
        }
        let active = r.range(2, 4) as usize;
        let spares = r.range(0, 2) as usize;
        let dedicated = r.chance(15);
        let mut nodes = Vec::new();
        if dedicated {
            nodes.push(NodeDef { workers: 0, spare: false });
        }
        for _ in 0..active {
            nodes.push(NodeDef { workers: r.range(1, 2) as usize, spare: false });
        }
        for _ in 0..spares {
            nodes.push(NodeDef { workers: 1, spare: true });
        }
        let mut workload =
            Workload { records: r.range(100, 600), keys: r.range(1, 12), every_ns: r.range(100, 400) * 1000 };
        // Live handoffs in about 40 % of the seeds: rescale requests while
        // the job runs, perhaps from fewer workers than it has.
        let running: usize = nodes.iter().filter(|n| !n.spare).map(|n| n.workers).sum();
        let handoffs = running >= 2 && r.chance(40);
        let mut start_workers = 0;
        let mut max_workers = 0;
        let mut requests = Vec::new();
        if handoffs {
            workload.records = r.range(300, 900);
            workload.keys = r.range(4, 24);
            // Parked workers in half of them: a rescale onto those makes
            // spares join the running job, a scale-in makes a node leave.
            if spares > 0 && r.chance(50) {
                max_workers = running + r.range(1, spares as u64) as usize;
            }
            let workers = running.max(max_workers);
            if r.chance(50) {
                start_workers = r.range(1, running as u64 - 1) as usize;
            }
            let mut at = r.range(10, 60) * 1_000_000;
            for _ in 0..r.range(1, 4) {
                requests.push((at, random_request(&mut r, workers, nodes.len())));
                at += r.range(5, 80) * 1_000_000;
            }
        }
        let run_ns = workload.records * workload.every_ns;
        let interval_ms = if r.chance(30) { r.range(4, 12) } else { r.range(15, 60) };
        let failure_timeout_ms = 250;
        // Faults: a few, in the first part of the run, never the
        // coordinator's node; each may fence a node (a stall past the
        // failure timeout, a cut control connection), so at most as many
        // as leave two nodes to run the workers (a restart gives one back).
        let mut faults = Vec::new();
        let victims: Vec<usize> = (0..nodes.len()).filter(|&i| i != 0).collect();
        let capable = nodes.iter().filter(|n| n.workers > 0 || n.spare).count() as i64;
        // A node that leaves with `--exit` is one fewer too.
        let exits = requests.iter().filter(|(_, q)| q.contains("--exit")).count() as i64;
        let mut budget = capable - 2 - exits;
        // Fencing faults, restarts not counted (a trigger may come before
        // a restart does).
        let mut fencing = 0;
        let count = r.below(5);
        let mut at = r.range(30, 200) * 1_000_000;
        for _ in 0..count {
            if at > run_ns + 1_000_000_000 || budget <= 0 {
                break;
            }
            let n = victims[r.below(victims.len() as u64) as usize];
            let f = match r.below(10) {
                0..=4 => Fault::Crash(n),
                5..=6 => Fault::Stall(n, r.range(300, 800) * 1_000_000),
                7 => Fault::Stall(n, r.range(10, 120) * 1_000_000),
                _ => Fault::Cut(r.next()),
            };
            if !matches!(f, Fault::Stall(_, d) if d < 200_000_000) {
                budget -= 1;
                fencing += 1;
            }
            faults.push((at, f));
            let mut next = at + r.range(20, 400) * 1_000_000;
            if let Fault::Crash(n) = f {
                if r.chance(40) {
                    // Back as a spare, which counts only once it is.
                    let back = at + r.range(50, 500) * 1_000_000;
                    faults.push((back, Fault::Restart(n)));
                    budget += 1;
                    next = next.max(back + 100_000_000);
                }
            }
            at = next;
        }
        faults.sort_by_key(|&(t, _)| t);
        let mut triggers = Vec::new();
        if capable - 2 - fencing - exits > 0 && r.chance(40) {
            let on = if handoffs && r.chance(70) {
                HANDOFF_TRIGGERS[r.below(HANDOFF_TRIGGERS.len() as u64) as usize]
            } else {
                ["relinking", "joining", "requested", "deployed 1", "checkpoint"][r.below(5) as usize]
            };
            let n = victims[r.below(victims.len() as u64) as usize];
            triggers.push((on.to_string(), Fault::Crash(n)));
        }
        let workers_nodes = nodes.iter().filter(|n| n.workers > 0 && !n.spare).count();
        let backups = if workers_nodes >= 3 && r.chance(40) { 2 } else { 1 };
        Scenario {
            backups,
            nodes,
            coordinator: 0,
            live: !r.chance(15),
            interval_ms,
            failure_timeout_ms,
            workload,
            batch_records: r.range(4, 64) as usize,
            step_records: [1, 2, 4, 16][r.below(4) as usize],
            channel_batches: r.range(2, 8) as usize,
            replay_buffer_bytes: if r.chance(10) { 16 << 10 } else { 4 << 20 },
            faults,
            triggers,
            min_delay_ns: 10_000,
            jitter_ns: r.range(50, 2000) * 1000,
            start_workers,
            requests,
            max_workers,
            scaling: None,
        }
    }

    /// A scenario made for the interleaving that `Manifest::ahead` is
    /// about: a producer's node fails and its replacement catches up
    /// slowly (one record a step) while checkpoints come often, so a
    /// checkpoint completes while receivers still skip what they had
    /// taken; then a receiver's node fails and its replacement restores
    /// that checkpoint.
    fn two_failures(r: &mut Rng) -> Self {
        let active = r.range(2, 4) as usize;
        let mut nodes: Vec<NodeDef> = (0..active).map(|_| NodeDef { workers: 1, spare: false }).collect();
        nodes.push(NodeDef { workers: 1, spare: true });
        nodes.push(NodeDef { workers: 1, spare: true });
        let first = r.range(1, active as u64 - 1) as usize;
        let t0 = r.range(60, 120) * 1_000_000;
        let mut faults = vec![(t0, Fault::Crash(first))];
        // The second: another worker node, or the first's replacement.
        let second = if r.chance(50) && active > 2 {
            (1..active).find(|&i| i != first).unwrap_or(first)
        } else {
            active + r.below(2) as usize
        };
        faults.push((t0 + r.range(15, 80) * 1_000_000, Fault::Crash(second)));
        Scenario {
            nodes,
            coordinator: 0,
            live: true,
            interval_ms: r.range(3, 8),
            failure_timeout_ms: 250,
            backups: 1,
            workload: Workload {
                records: r.range(400, 800),
                keys: r.range(1, 6),
                every_ns: r.range(100, 200) * 1000,
            },
            batch_records: r.range(2, 16) as usize,
            channel_batches: r.range(2, 4) as usize,
            step_records: 1,
            replay_buffer_bytes: 4 << 20,
            faults,
            triggers: Vec::new(),
            min_delay_ns: 10_000,
            jitter_ns: r.range(50, 500) * 1000,
            start_workers: 0,
            requests: Vec::new(),
            max_workers: 0,
            scaling: None,
        }
    }

    /// A job that starts on one node and grows onto the pool (decision
    /// 63): two spares back its checkpoints up until they join; it scales
    /// out onto them, a node leaves again (perhaps for good), and one of
    /// them may crash at a moment of a join or a leave.
    fn grow_from_one(r: &mut Rng) -> Self {
        let mut nodes = vec![NodeDef { workers: 1, spare: false }];
        nodes.push(NodeDef { workers: 1, spare: true });
        nodes.push(NodeDef { workers: 1, spare: true });
        let mut requests = vec![(r.range(15, 40) * 1_000_000, format!("scale {}", r.range(2, 3)))];
        let at = requests[0].0 + r.range(20, 60) * 1_000_000;
        requests
            .push((at, format!("scale-in n{}{}", r.range(1, 2), if r.chance(30) { " --exit" } else { "" })));
        requests.push((at + r.range(20, 60) * 1_000_000, "scale 3 --max-bins 4".to_string()));
        let mut triggers = Vec::new();
        if r.chance(50) {
            let on = ["joined", "relinking", "joining", "left", "handoff"][r.below(5) as usize];
            triggers.push((on.to_string(), Fault::Crash(r.range(1, 2) as usize)));
        }
        // Half of them with a policy instead of requests: thresholds low
        // enough that a worker of the simulator crosses them, so that it
        // scales out onto the pool and back in.
        let mut scaling = None;
        if r.chance(50) {
            use crate::control::scaling::{PolicyKind, ScalingConfig};
            let high = r.range(1, 300) as f64 / 1000.0;
            scaling = Some(ScalingConfig {
                policy: if r.chance(50) { PolicyKind::Threshold } else { PolicyKind::Rate },
                interval_ms: r.range(2, 10),
                high,
                low: high / 4.0,
                reports: r.range(1, 2) as u32,
                reports_in: r.range(1, 3) as u32,
                target_utilization: r.range(1, 300) as f64 / 1000.0,
                cooldown_ms: r.range(5, 40),
                scale_in_hold_ms: r.range(10, 60),
                max_bins_per_step: r.range(1, 8) as u32,
                ..ScalingConfig::default()
            });
            requests.clear();
        }
        Scenario {
            nodes,
            coordinator: 0,
            live: true,
            interval_ms: r.range(5, 30),
            failure_timeout_ms: 250,
            backups: 1,
            workload: Workload {
                records: r.range(400, 900),
                keys: r.range(4, 24),
                every_ns: r.range(100, 200) * 1000,
            },
            batch_records: r.range(2, 32) as usize,
            channel_batches: r.range(2, 6) as usize,
            step_records: [1, 4, 16][r.below(3) as usize],
            replay_buffer_bytes: 4 << 20,
            faults: Vec::new(),
            triggers,
            min_delay_ns: 10_000,
            jitter_ns: r.range(50, 800) * 1000,
            start_workers: 0,
            requests,
            max_workers: 3,
            scaling,
        }
    }

    /// A scenario made for the window between a handoff step and the
    /// checkpoint that records it: the job starts on its first worker and
    /// scales out to two in one step, or to three in steps of a few bins;
    /// a node crashes right after a step. The last complete checkpoint has the assignment
    /// before the step, so every node must roll back to it (a live
    /// recovery would restore the failed worker's old bins beside
    /// survivors that run the new assignment).
    fn crash_after_a_step(r: &mut Rng) -> Self {
        let mut nodes: Vec<NodeDef> = (0..3).map(|_| NodeDef { workers: 1, spare: false }).collect();
        nodes.push(NodeDef { workers: 1, spare: true });
        // Mostly the target of the step (worker 1), else a third node.
        let victim = if r.chance(70) { 1 } else { 2 };
        let on = if r.chance(70) { "handoff" } else { HANDOFF_TRIGGERS[r.below(6) as usize] };
        Scenario {
            nodes,
            coordinator: 0,
            live: true,
            interval_ms: r.range(10, 40),
            failure_timeout_ms: 250,
            backups: 1,
            workload: Workload {
                records: r.range(500, 900),
                keys: r.range(4, 24),
                every_ns: r.range(100, 200) * 1000,
            },
            batch_records: r.range(2, 16) as usize,
            channel_batches: r.range(2, 4) as usize,
            step_records: [1, 4, 16][r.below(3) as usize],
            replay_buffer_bytes: 4 << 20,
            faults: Vec::new(),
            triggers: vec![(on.to_string(), Fault::Crash(victim))],
            min_delay_ns: 10_000,
            jitter_ns: r.range(50, 500) * 1000,
            start_workers: 1,
            // One step (then the checkpoint is requested at once), or a few.
            requests: vec![(
                r.range(15, 40) * 1_000_000,
                if r.chance(60) {
                    "scale 2".to_string()
                } else {
                    format!("scale 3 --max-bins {}", r.range(1, 3))
                },
            )],
            max_workers: 0,
            scaling: None,
        }
    }

    /// The nodes a fault may fence (crashed, stalled past the failure
    /// timeout), and whether a connection was cut (which may fence either
    /// end).
    pub(crate) fn fenced(&self) -> (std::collections::BTreeSet<usize>, bool) {
        let mut nodes = std::collections::BTreeSet::new();
        let mut cut = false;
        for &(_, f) in &self.faults {
            match f {
                Fault::Crash(n) => {
                    nodes.insert(n);
                }
                Fault::Stall(n, d) if d >= self.failure_timeout_ms * 1_000_000 => {
                    nodes.insert(n);
                }
                Fault::Cut(_) => cut = true,
                _ => {}
            }
        }
        for (_, f) in &self.triggers {
            if let Fault::Crash(n) = f {
                nodes.insert(*n);
            }
        }
        (nodes, cut)
    }

    /// Workers of the job (those of the nodes that are not spares).
    pub(crate) fn workers(&self) -> usize {
        let running = self.nodes.iter().filter(|n| !n.spare).map(|n| n.workers).sum();
        self.max_workers.max(running)
    }

    /// The workers that own the bins and run the sources at first (the
    /// runtime's `cluster_start_workers`: never a parked one).
    pub(crate) fn first_workers(&self) -> usize {
        let running = self.nodes.iter().filter(|n| !n.spare).map(|n| n.workers).sum();
        match self.start_workers {
            0 if self.max_workers > running => running,
            n => n,
        }
    }
}

/// A worker the world turns.
struct Running {
    worker: Worker<SimConn>,
    next: u64,
    write_next: u64,
    /// Turns in a row that did nothing (the gap to the next grows).
    idle: u32,
}

enum State {
    Up(Box<Node<SimEnv>>),
    /// Its process is dead (killed) or ended.
    Down,
}

struct SimNode {
    name: String,
    addr: SocketAddr,
    replica: SocketAddr,
    incarnation: u64,
    state: State,
    next: u64,
    stalled_until: u64,
    workers: Vec<Running>,
    /// How much slower than the others this node's workers run.
    slow: u64,
}

/// `spate ctl` as the simulator runs it: the production control
/// connection and [`Peer`], one request at a time.
struct Admin {
    queue: std::collections::VecDeque<(u64, String)>,
    state: AdminState,
    next: u64,
}

enum AdminState {
    Idle,
    Connecting(SimConnecting, String),
    Waiting(Box<Peer<SimConn>>, String, u64),
}

/// Where the simulator's `spate ctl` connects from (no node listens there).
const ADMIN_ADDR: ([u8; 4], u16) = ([10, 0, 0, 250], 7000);
/// The simulated network's id of `spate ctl`'s process.
const ADMIN_NODE: usize = usize::MAX - 1;
/// How long `spate ctl` waits for an answer.
const ADMIN_WAIT_NS: u64 = 20_000_000_000;

/// How the run ended.
#[derive(Debug)]
pub(crate) struct Ran {
    /// The coordinator's outcome: `Ok` finished, `Err` failed with.
    pub(crate) outcome: Result<(), String>,
    /// The job's events.
    pub(crate) events: Vec<String>,
    /// Virtual ms at the end.
    pub(crate) ms: u64,
    /// Scheduler steps.
    pub(crate) steps: u64,
    /// A hash of everything that happened, in order.
    pub(crate) trace: u64,
    /// Complete checkpoints whose manifest said a receiver's state was
    /// ahead of a barrier (`Manifest::ahead`).
    pub(crate) ahead: u64,
    /// The first invariant of the plan the coordinator broke, if one.
    pub(crate) violation: Option<String>,
    /// Handoff steps that completed (`handoff <version>` events).
    pub(crate) handoffs: u64,
    /// Nodes that joined the running job and that left it (`joined`,
    /// `left` events, decision 63).
    pub(crate) joins: u64,
    pub(crate) leaves: u64,
    /// A scaling policy's rescales that went through (`scaled` events).
    pub(crate) scaled: u64,
    /// The answers to the `spate ctl` requests: (request, done, text).
    pub(crate) answers: Vec<(String, bool, String)>,
}

/// The simulated cluster (see the module documentation).
pub(crate) struct World {
    pub(crate) scenario: Scenario,
    rng: Rng,
    shared: Rc<Shared>,
    nodes: Vec<SimNode>,
    files: Arc<Mutex<Files>>,
    dir: tempfile::TempDir,
    now: u64,
    faults: Vec<(u64, Fault)>,
    triggers: Vec<(String, Fault)>,
    trace: u64,
    steps: u64,
    outcome: Option<Result<(), String>>,
    events: Vec<String>,
    ahead: std::collections::BTreeSet<u64>,
    monitor: Monitor,
    violation: Option<String>,
    admin: Admin,
    answers: Vec<(String, bool, String)>,
}

impl Drop for World {
    fn drop(&mut self) {
        // The nodes and workers go first, in virtual time still.
        for n in &mut self.nodes {
            n.workers.clear();
            n.state = State::Down;
        }
        virtual_clock::stop();
    }
}

/// Virtual time allowed for a run before it counts as hung.
const RUN_MAX_NS: u64 = 120_000_000_000;

/// What a crash trigger matches a journal entry by: an event's text,
/// `sent <Message>`, `got <Message>`.
fn journal_label(j: &Journal) -> Option<String> {
    let kind =
        |m: &Msg| format!("{m:?}").split(|c: char| !c.is_alphanumeric()).next().unwrap_or("").to_string();
    match j {
        Journal::Event(e) => Some(e.clone()),
        Journal::Sent(_, m) => Some(format!("sent {}", kind(m))),
        Journal::Received(_, m) => Some(format!("got {}", kind(m))),
        Journal::Fence(_) => None,
    }
}

fn mix(h: u64, v: u64) -> u64 {
    (h ^ v).wrapping_mul(0x100_0000_01b3).rotate_left(23)
}

impl World {
    /// The world of `scenario`, run by seed `seed`.
    pub(crate) fn new(seed: u64, scenario: Scenario, verbose: bool) -> Result<Self, String> {
        let base = std::path::Path::new("/dev/shm");
        let dir = if base.is_dir() { tempfile::tempdir_in(base) } else { tempfile::tempdir() }
            .map_err(|e| format!("cannot make the simulator's directory: {e}"))?;
        let mut net = Net::new(seed);
        net.min_delay_ns = scenario.min_delay_ns;
        net.jitter_ns = scenario.jitter_ns;
        let shared = Rc::new(Shared {
            net: Rc::new(std::cell::RefCell::new(net)),
            started: std::cell::RefCell::new(Vec::new()),
            replicas: Arc::new(Mutex::new(Replicas::default())),
            fetch_ns: 2_000_000,
            log: std::cell::RefCell::new(Vec::new()),
            verbose,
        });
        let nodes = scenario
            .nodes
            .iter()
            .enumerate()
            .map(|(i, _)| SimNode {
                name: format!("n{i}"),
                addr: SocketAddr::from(([10, 0, 0, i as u8 + 1], 7000)),
                replica: SocketAddr::from(([10, 0, 0, i as u8 + 1], 7001)),
                incarnation: 0,
                state: State::Down,
                next: 0,
                stalled_until: 0,
                workers: Vec::new(),
                slow: 1,
            })
            .collect::<Vec<_>>();
        let faults = scenario.faults.clone();
        let triggers = scenario.triggers.clone();
        let admin =
            Admin { queue: scenario.requests.iter().cloned().collect(), state: AdminState::Idle, next: 0 };
        // Everything the nodes do reads virtual time, from their start on.
        virtual_clock::start();
        let mut w = Self {
            scenario,
            rng: Rng::new(seed),
            shared,
            nodes,
            files: Arc::new(Mutex::new(Files::default())),
            dir,
            now: 0,
            faults,
            triggers,
            trace: seed,
            steps: 0,
            outcome: None,
            events: Vec::new(),
            ahead: std::collections::BTreeSet::new(),
            monitor: Monitor::new(Vec::new(), Vec::new(), 0),
            violation: None,
            admin,
            answers: Vec::new(),
        };
        w.admin.next = w.admin.queue.front().map_or(u64::MAX, |(t, _)| *t);
        w.monitor = Monitor::new(
            w.nodes.iter().map(|n| n.name.clone()).collect(),
            w.nodes.iter().map(|n| n.replica).collect(),
            w.scenario.workers(),
        );
        for i in 0..w.nodes.len() {
            w.nodes[i].slow = if w.rng.chance(30) { w.rng.range(2, 8) } else { 1 };
            w.start_node(i);
        }
        Ok(w)
    }

    fn placement(&self, me: usize) -> ClusterPlacement {
        ClusterPlacement {
            nodes: self
                .nodes
                .iter()
                .zip(&self.scenario.nodes)
                .map(|(n, d)| NodeSpec { name: n.name.clone(), addr: n.addr, workers: d.workers })
                .collect(),
            me,
            cluster: 7,
            connect_timeout: Duration::from_millis(2000),
            epoch: 0,
            join: None,
        }
    }

    /// Starts node `i`'s process (again): a new incarnation, with nothing
    /// stored.
    fn start_node(&mut self, i: usize) {
        let s = &self.scenario;
        let n = &mut self.nodes[i];
        n.incarnation += 1;
        let data_dir: PathBuf = self.dir.path().join(format!("{}-{}", n.name, n.incarnation));
        let rc = RuntimeConfig {
            workers: s.nodes[i].workers.max(1),
            pin: false,
            linger_us: 0,
            batch_records: s.batch_records,
            channel_batches: s.channel_batches,
            source_step_records: s.step_records,
            bins_log2: 4,
            data_dir,
            checkpoint_interval_ms: s.interval_ms,
            replay_buffer_bytes: s.replay_buffer_bytes,
            cluster_start_workers: s.first_workers(),
            load_interval_ms: s.scaling.as_ref().map_or(0, |c| c.interval_ms),
            ..RuntimeConfig::default()
        };
        let plan = PlanConfig {
            failure_timeout_ms: s.failure_timeout_ms,
            connect_timeout_ms: 2000,
            interval_ms: s.interval_ms,
            backups: s.backups,
            origin_ns: crate::time::now_ns() + 50_000_000,
            live: s.live,
            restarts: 3,
            bins_log2: rc.bins_log2,
            start_workers: rc.cluster_start_workers,
            max_workers: s.max_workers,
            stall_intervals: 3,
        };
        let build = Arc::new(workload::build(s.workload, self.files.clone()));
        let setup = NodeSetup {
            query: QUERY.to_string(),
            build,
            rc,
            placement: self.placement(i),
            spares: s.nodes.iter().map(|d| d.spare).collect(),
            coordinator: s.coordinator,
            plan,
            incarnation: self.nodes[i].incarnation,
            replica: self.nodes[i].replica,
            quiet: true,
            events: false,
        };
        let n = &mut self.nodes[i];
        let env = SimEnv { node: i, name: n.name.clone(), addr: n.addr, shared: self.shared.clone() };
        self.shared.net.borrow_mut().listen(n.addr, i);
        if let Ok(mut r) = self.shared.replicas.lock() {
            r.by_addr.insert(n.replica, i);
        }
        let mut node = Node::new(env, setup, virtual_clock::at(self.now));
        if let (Some(c), Some(coord)) = (&self.scenario.scaling, node.coordinator_mut()) {
            coord.set_scaling(c.clone());
        }
        let n = &mut self.nodes[i];
        n.state = State::Up(Box::new(node));
        n.next = self.now;
        n.stalled_until = 0;
    }

    /// Node `i`'s process ends: killed (`crash`: its connections end
    /// abruptly, a few frames lost) or exited.
    fn stop_node(&mut self, i: usize, crash: bool) {
        if crash {
            self.shared.net.borrow_mut().crash(i, self.now);
        } else {
            self.shared.net.borrow_mut().listeners_of_node_gone(i);
        }
        if let Ok(mut r) = self.shared.replicas.lock() {
            r.by_addr.retain(|_, n| *n != i);
            r.stores.retain(|&(n, _), _| n != i);
        }
        let n = &mut self.nodes[i];
        n.workers.clear();
        n.state = State::Down;
    }

    /// Runs until the job ends (and every node is through) or the time
    /// limit: how it ended.
    pub(crate) fn run(&mut self) -> Ran {
        let ended_at = loop {
            let Some(t) = self.next_time() else { break self.now };
            if t > RUN_MAX_NS {
                self.outcome.get_or_insert(Err(format!(
                    "no outcome after {} s of virtual time",
                    RUN_MAX_NS / 1_000_000_000
                )));
                break self.now;
            }
            self.now = t;
            virtual_clock::set(t);
            self.step();
            if self.outcome.is_some() && self.nodes.iter().all(|n| matches!(n.state, State::Down)) {
                break self.now;
            }
        };
        Ran {
            outcome: self.outcome.clone().unwrap_or(Err("the run stopped without an outcome".into())),
            events: self.events.clone(),
            ms: ended_at / 1_000_000,
            steps: self.steps,
            trace: self.trace,
            ahead: self.ahead.len() as u64,
            violation: self.violation.clone(),
            handoffs: self.events.iter().filter(|e| e.starts_with("handoff ")).count() as u64,
            joins: self.events.iter().filter(|e| e.starts_with("joined ")).count() as u64,
            leaves: self.events.iter().filter(|e| e.starts_with("left ")).count() as u64,
            scaled: self.events.iter().filter(|e| e.starts_with("scaled ")).count() as u64,
            answers: self.answers.clone(),
        }
    }

    /// When the next thing happens.
    fn next_time(&self) -> Option<u64> {
        let mut t = self.faults.first().map(|&(t, _)| t);
        let mut min = |x: u64| t = Some(t.map_or(x, |y| y.min(x)));
        if self.outcome.is_none() && self.admin.next != u64::MAX {
            min(self.admin.next);
        }
        for n in &self.nodes {
            if let State::Up(_) = n.state {
                let wake = n.stalled_until;
                min(n.next.max(wake));
                for w in &n.workers {
                    min(w.next.max(wake));
                    min(w.write_next.max(wake));
                }
            }
        }
        t
    }

    /// Runs what is due now: a fault, else the first due node or worker.
    fn step(&mut self) {
        self.steps += 1;
        let now = self.now;
        if self.faults.first().is_some_and(|&(t, _)| t <= now) {
            let (_, f) = self.faults.remove(0);
            self.trace = mix(self.trace, now ^ 0xFA);
            return self.fault(f);
        }
        if self.outcome.is_none() && self.admin.next <= now {
            self.trace = mix(self.trace, now ^ 0xAD);
            return self.admin_turn();
        }
        for i in 0..self.nodes.len() {
            if !matches!(self.nodes[i].state, State::Up(_)) || self.nodes[i].stalled_until > now {
                continue;
            }
            if self.nodes[i].next <= now {
                self.trace = mix(self.trace, (i as u64) << 32 | 1);
                return self.node_turn(i);
            }
            for k in 0..self.nodes[i].workers.len() {
                if self.nodes[i].workers[k].next <= now {
                    self.trace = mix(self.trace, (i as u64) << 32 | (k as u64) << 8 | 2);
                    return self.worker_turn(i, k);
                }
                if self.nodes[i].workers[k].write_next <= now {
                    self.trace = mix(self.trace, (i as u64) << 32 | (k as u64) << 8 | 3);
                    let w = &mut self.nodes[i].workers[k];
                    let wrote = w.worker.write_checkpoints();
                    w.write_next = now + if wrote { 100_000 } else { self.rng.range(300, 3000) * 1000 };
                    return;
                }
            }
        }
    }

    fn fault(&mut self, f: Fault) {
        self.note(format!("fault {f:?}"));
        match f {
            Fault::Crash(i) => {
                if matches!(self.nodes[i].state, State::Up(_)) {
                    self.stop_node(i, true);
                }
            }
            Fault::Restart(i) => {
                if matches!(self.nodes[i].state, State::Down) && self.outcome.is_none() {
                    self.start_node(i);
                }
            }
            Fault::Stall(i, d) => {
                if matches!(self.nodes[i].state, State::Up(_)) {
                    self.nodes[i].stalled_until = self.now + d;
                }
            }
            Fault::Cut(k) => {
                let mut net = self.shared.net.borrow_mut();
                let links = net.cuttable();
                if !links.is_empty() {
                    let id = links[(k % links.len() as u64) as usize];
                    net.cut(id, self.now);
                }
            }
        }
    }

    fn node_turn(&mut self, i: usize) {
        let State::Up(node) = &mut self.nodes[i].state else { return };
        let ended = node.turn(virtual_clock::at(self.now));
        let coordinator = node.coordinator().is_some();
        if let Some(c) = node.coordinator_mut() {
            for j in c.take_journal() {
                if let Err(e) = self.monitor.see(&j) {
                    self.violation.get_or_insert(format!("at {} ms: {e}", self.now / 1_000_000));
                }
                if let Some(e) = journal_label(&j) {
                    if let Some(k) = self.triggers.iter().position(|(on, _)| e.starts_with(on.as_str())) {
                        let (_, f) = self.triggers.remove(k);
                        let at = self.now + self.rng.range(0, 3000) * 1000;
                        let pos = self.faults.partition_point(|&(t, _)| t <= at);
                        self.faults.insert(pos, (at, f));
                    }
                }
            }
        }
        if coordinator {
            if let Some(c) = node.coordinator() {
                for e in c.events().iter().skip(self.events.len()) {
                    self.events.push(e.what.clone());
                }
                if let Some(m) = c.plan().last_complete().filter(|m| !m.ahead.is_empty()) {
                    self.ahead.insert(m.id);
                }
            }
        }
        match ended {
            Ok(None) => {}
            Ok(Some(end)) => {
                if let Some(o) = end.outcome {
                    for e in o.events.iter().skip(self.events.len()) {
                        self.events.push(e.what.clone());
                    }
                    self.outcome.get_or_insert(Ok(()));
                }
                self.note(format!("{} ended", self.nodes[i].name));
                self.exit(i, coordinator);
            }
            Err(e) => {
                if coordinator {
                    self.outcome.get_or_insert(Err(e.to_string()));
                }
                self.note(format!("{} stopped: {e}", self.nodes[i].name));
                self.exit(i, coordinator);
            }
        }
        // Workers of shares started this turn.
        let started: Vec<(usize, Worker<SimConn>)> = self.shared.started.borrow_mut().drain(..).collect();
        for (n, worker) in started {
            let at = self.now + self.rng.range(10, 100) * 1000;
            let write = self.now + self.rng.range(300, 3000) * 1000;
            self.nodes[n].workers.push(Running { worker, next: at, write_next: write, idle: 0 });
        }
        self.nodes[i].next = self.now + self.rng.range(300, 2000) * 1000;
    }

    /// Node `i` exits (its job ended or it stopped with an error); the
    /// coordinator pushes its last messages out first.
    fn exit(&mut self, i: usize, coordinator: bool) {
        if coordinator {
            if let State::Up(node) = &mut self.nodes[i].state {
                node.flush(virtual_clock::at(self.now));
            }
            // Its last messages are on the wire; then the process is gone.
        }
        self.stop_node(i, false);
    }

    fn worker_turn(&mut self, i: usize, k: usize) {
        let t = crate::time::now_ns();
        let slow = self.nodes[i].slow;
        let w = &mut self.nodes[i].workers[k];
        match w.worker.turn(t) {
            Turn::Done => {
                self.nodes[i].workers.remove(k);
            }
            Turn::Progress => {
                w.idle = 0;
                w.next = self.now + self.rng.range(10, 80) * 1000 * slow;
            }
            Turn::Idle => {
                w.idle = (w.idle + 1).min(4);
                w.next = self.now + ((self.rng.range(50, 150) * 1000) << w.idle) * slow;
            }
        }
    }

    /// `spate ctl`'s turn: sends the next request when due (a connection
    /// to the coordinator of its own), or waits for the answer.
    fn admin_turn(&mut self) {
        let now = self.now;
        let at = virtual_clock::at(now);
        self.admin.next = now + 500_000;
        match std::mem::replace(&mut self.admin.state, AdminState::Idle) {
            AdminState::Idle => {
                let Some((due, _)) = self.admin.queue.front() else {
                    self.admin.next = u64::MAX;
                    return;
                };
                if *due > now {
                    self.admin.next = *due;
                    return;
                }
                let Some((_, request)) = self.admin.queue.pop_front() else { return };
                let to = self.nodes[self.scenario.coordinator].addr;
                let c = crate::sim::net::connect(
                    &self.shared.net,
                    ADMIN_NODE,
                    SocketAddr::from(ADMIN_ADDR),
                    to,
                    "adm:sim".to_string(),
                    crate::limits::NET_CREDIT_WINDOW,
                );
                self.note(format!("ctl: {request}"));
                self.admin.state = AdminState::Connecting(c, request);
            }
            AdminState::Connecting(mut c, request) => match c.poll() {
                Ok(None) => self.admin.state = AdminState::Connecting(c, request),
                Ok(Some(conn)) => {
                    let mut peer = Box::new(Peer::new("coordinator".to_string(), conn));
                    match peer.send(&Msg::Control { request: request.clone() }, at) {
                        Ok(()) => self.admin.state = AdminState::Waiting(peer, request, now),
                        Err(e) => self.answer(request, false, format!("not sent: {e}")),
                    }
                }
                Err(e) => self.answer(request, false, format!("no connection: {e}")),
            },
            AdminState::Waiting(mut peer, request, sent) => {
                let polled = peer.poll(at);
                if let Some(i) = peer.inbox.iter().position(|m| matches!(m, Msg::Reply { .. })) {
                    if let Msg::Reply { ok, text } = peer.inbox.remove(i) {
                        return self.answer(request, ok, text);
                    }
                }
                if let Err(e) = polled {
                    return self.answer(request, false, format!("connection lost: {e}"));
                }
                if peer.closed || now.saturating_sub(sent) > ADMIN_WAIT_NS {
                    return self.answer(request, false, "no answer".into());
                }
                self.admin.state = AdminState::Waiting(peer, request, sent);
            }
        }
    }

    fn answer(&mut self, request: String, ok: bool, text: String) {
        self.note(format!(
            "ctl: {request}: {} {}",
            if ok { "done" } else { "refused" },
            text.replace('\n', "; ")
        ));
        self.answers.push((request, ok, text));
        self.admin.state = AdminState::Idle;
    }

    fn note(&mut self, line: String) {
        if self.shared.verbose {
            self.shared.log.borrow_mut().push(format!("{:>9.3} ms {line}", self.now as f64 / 1e6));
        }
    }

    /// The lines the nodes logged (with the world's own), when verbose.
    pub(crate) fn log(&self) -> Vec<String> {
        self.shared.log.borrow().clone()
    }

    /// Every output against the closed form: each key's `(sum, count)`
    /// lines are exactly the running sums of its source's records, each
    /// count once over every worker's file (a handoff moves a key's later
    /// outputs to another file), in order within each file.
    pub(crate) fn check(&self) -> Result<(), String> {
        let w = self.scenario.workload;
        // The job's sources run on the workers it starts on.
        let workers = match self.scenario.first_workers() {
            0 => self.scenario.workers(),
            n => n.min(self.scenario.workers()),
        } as u64;
        let mut want: BTreeMap<u64, Vec<(u64, u64)>> = BTreeMap::new();
        for s in 0..workers {
            for i in 0..w.records {
                let (k, v) = workload::record(s, i, w.keys);
                let seq = want.entry(k).or_default();
                let (sum, n) = seq.last().copied().unwrap_or((0, 0));
                seq.push((sum + v, n + 1));
            }
        }
        let files = self.files.lock().map_err(|_| "the files' lock is poisoned")?;
        let mut got: BTreeMap<u64, (Vec<usize>, Vec<(u64, u64)>)> = BTreeMap::new();
        for (&worker, _) in files.current.iter() {
            let Some(f) = files.of(worker) else { continue };
            let mut last: BTreeMap<u64, u64> = BTreeMap::new();
            for &(k, sum, n) in &f.lines {
                let before = last.insert(k, n).unwrap_or(0);
                if n <= before {
                    return Err(format!(
                        "key {k:#x} in worker {worker}'s file: count {n} after count {before}"
                    ));
                }
                let e = got.entry(k).or_default();
                if !e.0.contains(&worker) {
                    e.0.push(worker);
                }
                e.1.push((sum, n));
            }
        }
        for (k, (_, g)) in got.iter_mut() {
            g.sort_by_key(|&(_, n)| n);
            if let Some(d) = g.windows(2).find(|p| p[0].1 == p[1].1) {
                return Err(format!("key {k:#x}: count {} came twice: {:?} and {:?}", d[0].1, d[0], d[1]));
            }
        }
        for (k, seq) in &want {
            let Some((worker, g)) = got.get(k) else {
                return Err(format!("key {k:#x}: no output at all (want {} lines)", seq.len()));
            };
            if g != seq {
                let at = g.iter().zip(seq).position(|(a, b)| a != b).unwrap_or(g.len().min(seq.len()));
                return Err(format!(
                    "key {k:#x} (files of workers {worker:?}): {} lines, want {}; first difference at line {at}: got {:?}, want {:?}",
                    g.len(),
                    seq.len(),
                    g.get(at),
                    seq.get(at)
                ));
            }
        }
        if let Some(k) = got.keys().find(|k| !want.contains_key(k)) {
            return Err(format!("key {k:#x} was never produced"));
        }
        Ok(())
    }
}
