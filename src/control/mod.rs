//! The control plane of a multi-process job: one node is the coordinator
//! (docs/ARCHITECTURE.md, decision 23).
//!
//! 1. Every other node — spares included — opens a control connection to
//!    the coordinator (its `Hello` names it `ctl:<node>`; unknown or
//!    duplicate nodes are refused) and registers with its worker count and
//!    the address of its replica service (where other nodes stream their
//!    checkpoints to it).
//! 2. Once every node of the config has registered (or the connect timeout
//!    passes: the error names the missing nodes), the coordinator deploys
//!    epoch 0: the placement of the nodes that are not spares, in config
//!    order, and for each node the backup nodes it streams its checkpoints
//!    to (the next `[checkpoint] backups` nodes of the placement, in a
//!    ring: never itself).
//! 3. While the job runs, control connections carry heartbeats both ways.
//!    Every `[checkpoint] interval_ms` the coordinator requests a checkpoint
//!    from every node; each node answers with its part (its sources'
//!    offsets) once its instances have stored it locally and its backup
//!    nodes acknowledged it; when every part is in, the checkpoint is
//!    complete and the nodes are told.
//! 4. A node silent for `failure_timeout_ms`, or whose control connection
//!    closes before the job ends, is declared failed and fenced: it is
//!    never deployed again, its control connection is dropped, and worker
//!    links carry the epoch in their names, so nothing of its incarnation
//!    can join a later deployment. The coordinator aborts the epoch on the
//!    survivors (they stop their share of the job and keep their
//!    checkpoints), gives the failed node's place in the placement to a
//!    spare, and deploys the next epoch restoring the last complete
//!    checkpoint: survivors from their local backup stores, the spare
//!    after fetching the failed node's checkpoint from a node that backed
//!    it up; sources seek to the checkpoint's offsets, and file sinks roll
//!    their files back to what they committed with it. Every input then
//!    affects the state exactly once and every output is written once.
//! 5. When every node's share has ended, the coordinator releases every
//!    node (spares included), which removes its checkpoints and exits,
//!    and prints the totals.
//!
//! The coordinator's decisions are the sans-IO [`plan::Plan`];
//! [`Coordinator`] drives it from the control connections (and
//! `tests/control_plan.rs` from a seeded simulation). The coordinator does
//! not survive its own failure (the job fails on every node).
//!
//! Messages are control frames with small text payloads (`Kind::Deploy`
//! for a deployment, `Kind::Recovery` for the rest), read by
//! [`Msg::decode`], which names what is malformed.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use spate_core::checkpoint::{ClusterCheckpoints, Manifest};
use spate_core::remote::{net_config, ClusterPlacement, NodeSpec};
use spate_core::{Dataflow, Job, Runtime, RuntimeConfig, RuntimeError};
use spate_net::frame::Kind;
use spate_net::hello::Rejection;
use spate_net::{Connection, Delivery, Listener, NetErrorKind};

use crate::deploy::NodeReport;

pub mod plan;

/// A control message.
#[derive(Debug, Clone, PartialEq)]
pub enum Msg {
    /// Node → coordinator: it runs `workers` workers and its replica
    /// service listens at `replica`.
    Register {
        /// Its workers.
        workers: usize,
        /// Its replica service.
        replica: SocketAddr,
    },
    /// Coordinator → node: run this epoch's deployment.
    Deploy(Deployment),
    /// Node → coordinator: its share of `epoch` runs (every worker built
    /// and restored).
    Ready {
        /// The epoch.
        epoch: u64,
    },
    /// Coordinator → node: take checkpoint `id`.
    Checkpoint {
        /// The epoch.
        epoch: u64,
        /// The checkpoint.
        id: u64,
    },
    /// Node → coordinator: its part of a checkpoint is stored and backed
    /// up (the manifest holds its sources' offsets).
    Done {
        /// The epoch.
        epoch: u64,
        /// Its part.
        part: Manifest,
    },
    /// Coordinator → node: checkpoint `id` is complete.
    Complete {
        /// The epoch.
        epoch: u64,
        /// The checkpoint.
        id: u64,
    },
    /// Coordinator → node: stop your share of `epoch` (a node failed).
    Abort {
        /// The epoch.
        epoch: u64,
    },
    /// Node → coordinator: its share of `epoch` has stopped.
    Aborted {
        /// The epoch.
        epoch: u64,
    },
    /// Node → coordinator: its share of `epoch` failed.
    Failed {
        /// The epoch.
        epoch: u64,
        /// Why.
        reason: String,
    },
    /// Node → coordinator: its share of `epoch` ended.
    Finished {
        /// The epoch.
        epoch: u64,
        /// Its counts.
        report: NodeReport,
    },
    /// Coordinator → node: the job is done; clean up and exit.
    Release,
    /// Coordinator → node: the job failed; exit with this error.
    Stop {
        /// Why.
        reason: String,
    },
    /// Coordinator → survivor of a failure (live recovery): keep running,
    /// now as part of `epoch` with placement `nodes`; the workers `moved`
    /// are re-run elsewhere from checkpoint `checkpoint` and connect to
    /// yours.
    Recover {
        /// The new epoch.
        epoch: u64,
        /// The checkpoint the moved workers restore (0: none is complete,
        /// they start from the beginning).
        checkpoint: u64,
        /// Checkpoints up to this id are void (they were in flight when
        /// the node failed): abort their alignment, never report them.
        aborted: u64,
        /// The new placement: the nodes that run workers, in worker order.
        nodes: Vec<NodeSpec>,
        /// The replica services this node now streams its checkpoints to.
        replicas: Vec<SocketAddr>,
        /// The global ids of the workers that changed node.
        moved: Vec<usize>,
    },
    /// Survivor → coordinator: it aborted the void checkpoints and accepts
    /// the moved workers' links (its `Ready` for `epoch`).
    Recovered {
        /// The new epoch.
        epoch: u64,
    },
}

/// What the coordinator deploys to a node for one epoch.
#[derive(Debug, Clone, PartialEq)]
pub struct Deployment {
    /// The epoch.
    pub epoch: u64,
    /// The placement: the nodes that run workers, in worker order.
    pub nodes: Vec<NodeSpec>,
    /// The replica services this node streams its checkpoints to.
    pub replicas: Vec<SocketAddr>,
    /// `(worker, replica service)`: before starting, fetch the checkpoint
    /// being restored of these workers from there (a node that takes over
    /// a failed node's workers).
    pub fetch: Vec<(usize, SocketAddr)>,
    /// The checkpoint to restore, if any.
    pub restore: Option<Manifest>,
    /// The job's schedule origin (ns since the Unix epoch), the same in
    /// every epoch: rate-limited sources that restart from a checkpoint
    /// keep their schedule (see `RuntimeConfig::schedule_origin_ns`).
    pub origin_ns: u64,
    /// `None`: run every slot of this node's name. `Some(slot)`: join a
    /// running job (live recovery): run only the workers of
    /// `nodes[slot]`, restored from `restore`, and connect out to every
    /// other worker (the survivors accept).
    pub join: Option<usize>,
    /// With `join`: every worker being replaced in this recovery (so that
    /// two replacements know which of them connects to the other).
    pub moved: Vec<usize>,
    /// Checkpoints up to this id are void in this epoch (they were in
    /// flight when a node failed): barriers carrying them are ignored.
    pub aborted: u64,
}

impl Msg {
    /// The frame kind and payload.
    pub fn encode(&self) -> (Kind, String) {
        let r = |s: String| (Kind::Recovery, s);
        match self {
            Msg::Register { workers, replica } => r(format!("register {workers} {replica}")),
            Msg::Deploy(d) => {
                let mut s = format!("epoch {}\norigin {}\naborted {}\n", d.epoch, d.origin_ns, d.aborted);
                if let Some(slot) = d.join {
                    s.push_str(&format!("join {slot}\n"));
                }
                for w in &d.moved {
                    s.push_str(&format!("moved {w}\n"));
                }
                encode_placement(&mut s, &d.nodes, &d.replicas);
                for (w, a) in &d.fetch {
                    s.push_str(&format!("fetch {w} {a}\n"));
                }
                if let Some(m) = &d.restore {
                    s.push_str("restore\n");
                    s.push_str(&m.encode());
                }
                (Kind::Deploy, s)
            }
            Msg::Ready { epoch } => r(format!("ready {epoch}")),
            Msg::Checkpoint { epoch, id } => r(format!("checkpoint {epoch} {id}")),
            Msg::Done { epoch, part } => r(format!("done {epoch}\n{}", part.encode())),
            Msg::Complete { epoch, id } => r(format!("complete {epoch} {id}")),
            Msg::Abort { epoch } => r(format!("abort {epoch}")),
            Msg::Aborted { epoch } => r(format!("aborted {epoch}")),
            Msg::Failed { epoch, reason } => r(format!("failed {epoch} {reason}")),
            Msg::Finished { epoch, report } => r(format!("finished {epoch} {}", report.to_json())),
            Msg::Release => r("release".into()),
            Msg::Stop { reason } => r(format!("stop {reason}")),
            Msg::Recover { epoch, checkpoint, aborted, nodes, replicas, moved } => {
                let mut s = format!("recover {epoch} {checkpoint} {aborted}\n");
                encode_placement(&mut s, nodes, replicas);
                for w in moved {
                    s.push_str(&format!("moved {w}\n"));
                }
                r(s)
            }
            Msg::Recovered { epoch } => r(format!("recovered {epoch}")),
        }
    }

    /// Reads a message; the error names what is malformed.
    pub fn decode(kind: Kind, text: &str) -> Result<Msg, String> {
        let bad = |what: &str| format!("malformed control message ({what}): {:?}", truncate(text));
        if kind == Kind::Deploy {
            return decode_deployment(text).map(Msg::Deploy).map_err(|e| bad(&e));
        }
        if kind != Kind::Recovery {
            return Err(bad(&format!("unexpected frame kind {kind:?}")));
        }
        let (head, body) = text.split_once('\n').unwrap_or((text, ""));
        let mut words = head.splitn(3, ' ');
        let verb = words.next().unwrap_or("");
        let a = words.next();
        let rest = words.next();
        let num = |s: Option<&str>, what: &str| -> Result<u64, String> {
            s.and_then(|s| s.parse().ok()).ok_or_else(|| bad(&format!("expected {what}")))
        };
        Ok(match verb {
            "register" => Msg::Register {
                workers: num(a, "a worker count")? as usize,
                replica: rest.and_then(|s| s.parse().ok()).ok_or_else(|| bad("expected an address"))?,
            },
            "ready" => Msg::Ready { epoch: num(a, "an epoch")? },
            "checkpoint" => Msg::Checkpoint { epoch: num(a, "an epoch")?, id: num(rest, "an id")? },
            "done" => Msg::Done {
                epoch: num(a, "an epoch")?,
                part: Manifest::parse(Path::new("control message"), body)?,
            },
            "complete" => Msg::Complete { epoch: num(a, "an epoch")?, id: num(rest, "an id")? },
            "abort" => Msg::Abort { epoch: num(a, "an epoch")? },
            "aborted" => Msg::Aborted { epoch: num(a, "an epoch")? },
            "failed" => Msg::Failed {
                epoch: num(a, "an epoch")?,
                // The reason may span lines.
                reason: text.splitn(3, ' ').nth(2).unwrap_or("").to_string(),
            },
            "finished" => Msg::Finished {
                epoch: num(a, "an epoch")?,
                report: rest.and_then(NodeReport::parse).ok_or_else(|| bad("expected a report"))?,
            },
            "release" => Msg::Release,
            "stop" => Msg::Stop { reason: text.strip_prefix("stop ").unwrap_or("").to_string() },
            "recover" => {
                let mut ids = rest.unwrap_or("").split(' ');
                let (epoch, checkpoint) = (num(a, "an epoch")?, num(ids.next(), "a checkpoint id")?);
                let aborted = num(ids.next(), "an aborted checkpoint id")?;
                if ids.next().is_some() {
                    return Err(bad("trailing words after the aborted checkpoint id"));
                }
                let (mut nodes, mut replicas, mut moved) = (Vec::new(), Vec::new(), Vec::new());
                for l in body.lines() {
                    let p: Vec<&str> = l.split(' ').collect();
                    if parse_placement(l, &p, &mut nodes, &mut replicas).map_err(|e| bad(&e))? {
                        continue;
                    }
                    match p.as_slice() {
                        ["moved", w] => {
                            moved.push(w.parse().map_err(|_| bad(&format!("bad worker in `{l}`")))?)
                        }
                        _ => return Err(bad(&format!("cannot read `{l}`"))),
                    }
                }
                if nodes.is_empty() {
                    return Err(bad("no node"));
                }
                Msg::Recover { epoch, checkpoint, aborted, nodes, replicas, moved }
            }
            "recovered" => Msg::Recovered { epoch: num(a, "an epoch")? },
            _ => return Err(bad("unknown verb")),
        })
    }
}

fn truncate(s: &str) -> &str {
    match s.char_indices().nth(120) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// The `node <name> <addr> <workers>` and `replica <addr>` lines of a
/// deployment or a `recover` message.
fn encode_placement(s: &mut String, nodes: &[NodeSpec], replicas: &[SocketAddr]) {
    for n in nodes {
        s.push_str(&format!("node {} {} {}\n", n.name, n.addr, n.workers));
    }
    for a in replicas {
        s.push_str(&format!("replica {a}\n"));
    }
}

/// Reads line `l` (split into `p`) if it is a `node` or `replica` line.
fn parse_placement(
    l: &str,
    p: &[&str],
    nodes: &mut Vec<NodeSpec>,
    replicas: &mut Vec<SocketAddr>,
) -> Result<bool, String> {
    let addr = |s: &str| s.parse::<SocketAddr>().map_err(|_| format!("bad address in `{l}`"));
    match p {
        ["node", name, a, w] => nodes.push(NodeSpec {
            name: name.to_string(),
            addr: addr(a)?,
            workers: w.parse().map_err(|_| format!("bad worker count in `{l}`"))?,
        }),
        ["replica", a] => replicas.push(addr(a)?),
        _ => return Ok(false),
    }
    Ok(true)
}

fn decode_deployment(text: &str) -> Result<Deployment, String> {
    let mut d = Deployment {
        epoch: 0,
        nodes: Vec::new(),
        replicas: Vec::new(),
        fetch: Vec::new(),
        restore: None,
        origin_ns: 0,
        join: None,
        moved: Vec::new(),
        aborted: 0,
    };
    let mut lines = text.lines();
    let mut epoch = None;
    while let Some(l) = lines.next() {
        let p: Vec<&str> = l.split(' ').collect();
        if parse_placement(l, &p, &mut d.nodes, &mut d.replicas)? {
            continue;
        }
        let addr = |s: &str| s.parse::<SocketAddr>().map_err(|_| format!("bad address in `{l}`"));
        match p.as_slice() {
            ["epoch", e] => epoch = Some(e.parse().map_err(|_| format!("bad epoch in `{l}`"))?),
            ["origin", o] => d.origin_ns = o.parse().map_err(|_| format!("bad origin in `{l}`"))?,
            ["aborted", a] => {
                d.aborted = a.parse().map_err(|_| format!("bad aborted checkpoint id in `{l}`"))?
            }
            ["join", j] => d.join = Some(j.parse().map_err(|_| format!("bad join slot in `{l}`"))?),
            ["moved", ws @ ..] => {
                for w in ws {
                    d.moved.push(w.parse().map_err(|_| format!("bad moved worker in `{l}`"))?);
                }
            }
            ["fetch", w, a] => {
                d.fetch.push((w.parse().map_err(|_| format!("bad worker in `{l}`"))?, addr(a)?))
            }
            ["restore"] => {
                let rest: Vec<&str> = lines.by_ref().collect();
                d.restore = Some(Manifest::parse(Path::new("deployment"), &rest.join("\n"))?);
            }
            _ => return Err(format!("cannot read `{l}`")),
        }
    }
    d.epoch = epoch.ok_or("no epoch")?;
    if d.nodes.is_empty() {
        return Err("no node".into());
    }
    if let Some(slot) = d.join.filter(|&j| j >= d.nodes.len()) {
        return Err(format!("bad join slot {slot}: the placement has {} nodes", d.nodes.len()));
    }
    Ok(d)
}

/// One control connection, with the messages received and not yet taken.
struct Peer {
    node: String,
    conn: Connection,
    /// The peer closed its side.
    closed: bool,
    inbox: Vec<Msg>,
}

fn ctl_name(node: &str) -> String {
    format!("ctl:{node}")
}

impl Peer {
    /// Moves bytes; queues received control messages; heartbeats.
    fn poll(&mut self, now: Instant) -> Result<(), String> {
        if self.closed {
            return Ok(());
        }
        let node = self.node.clone();
        let err = |e: spate_net::NetError| format!("control connection to node `{node}`: {e}");
        let ended =
            |e: &spate_net::NetError| matches!(e.kind, NetErrorKind::PeerClosed | NetErrorKind::Closed);
        match self.conn.poll_io() {
            Ok(_) => {}
            Err(e) if ended(&e) => {}
            Err(e) => return Err(err(e)),
        }
        let mut bad = None;
        let inbox = &mut self.inbox;
        let got = self.conn.poll_recv(16, |f| {
            match Msg::decode(f.header.kind, &String::from_utf8_lossy(f.payload)) {
                Ok(m) => inbox.push(m),
                Err(e) => bad = Some(e),
            }
            Delivery::Consumed
        });
        if let Some(e) = bad {
            return Err(format!("node `{}`: {e}", self.node));
        }
        match got {
            Ok(_) => self.conn.poll_heartbeat(now).map(|_| ()).map_err(err),
            Err(e) if ended(&e) => {
                self.closed = true;
                Ok(())
            }
            Err(e) => Err(err(e)),
        }
    }

    fn send(&mut self, msg: &Msg) -> Result<(), String> {
        let (kind, text) = msg.encode();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let sent = self
                .conn
                .try_send_control(kind, 0, 0, text.as_bytes())
                .map_err(|e| format!("control connection to node `{}`: {e}", self.node))?;
            if sent {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!("node `{}` does not take control messages", self.node));
            }
            self.poll(Instant::now())?;
            std::thread::sleep(Duration::from_millis(1));
        }
        // Push it out now.
        while self.conn.unsent_bytes() > 0 && Instant::now() < deadline {
            self.poll(Instant::now())?;
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(())
    }

    /// How long the peer has been silent.
    fn silent(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.conn.last_heard())
    }
}

/// With this environment variable set to a number of milliseconds, a node
/// prints its output rate and latency that often on stdout, as JSON lines
/// (`{"metrics":"<node>","unix_ms":..,"epoch":..,"records_out":..,"p99_us":..}`,
/// `records_out` since the previous line, `p99_us` of the records since
/// then, 0 if none): the latency-over-time view of `spate bench recovery`.
pub const METRICS_ENV: &str = "SPATE_NODE_METRICS_MS";

/// How many times a cluster job rolls every node back after a share
/// failure that no node failure explains, before it fails (see
/// [`plan::PlanConfig::restarts`]).
pub const RESTARTS: u32 = 3;

/// One line of a node's metrics over time (see [`METRICS_ENV`]).
#[derive(Debug, Clone, PartialEq)]
pub struct MetricsLine {
    /// The node.
    pub node: String,
    /// When, in ms since the Unix epoch.
    pub unix_ms: u64,
    /// The epoch that ran.
    pub epoch: u64,
    /// Records that reached its sinks since the previous line.
    pub records_out: u64,
    /// p99 latency of those, microseconds.
    pub p99_us: u64,
}

impl MetricsLine {
    /// One JSON line.
    pub fn to_json(&self) -> String {
        format!(
            "{{\"metrics\":\"{}\",\"unix_ms\":{},\"epoch\":{},\"records_out\":{},\"p99_us\":{}}}",
            self.node, self.unix_ms, self.epoch, self.records_out, self.p99_us
        )
    }

    /// Parses [`MetricsLine::to_json`]'s output (`None` for other lines).
    pub fn parse(line: &str) -> Option<MetricsLine> {
        let body = line.trim().strip_prefix("{\"metrics\":\"")?.strip_suffix('}')?;
        let (node, rest) = body.split_once('"')?;
        let field = |k: &str| -> Option<u64> {
            let i = rest.find(&format!("\"{k}\":"))? + k.len() + 3;
            rest[i..].split([',', '}']).next()?.parse().ok()
        };
        Some(MetricsLine {
            node: node.to_string(),
            unix_ms: field("unix_ms")?,
            epoch: field("epoch")?,
            records_out: field("records_out")?,
            p99_us: field("p99_us")?,
        })
    }
}

/// What a node's agent wants after handling a message.
#[derive(Debug)]
pub enum Exit {
    /// The job is done (`Release`).
    Released,
}

/// A share of the job running on this node: its own slot's workers, or
/// (a survivor that took over a failed node's workers in a live recovery)
/// a failed slot's workers, joined beside its own.
struct Share {
    epoch: u64,
    job: Job,
    /// The checkpoint requested and not yet handed to the job (its
    /// workers were still being built).
    pending: Option<u64>,
    /// Its `Ready` (or, for a share that went on live, `Recovered`) was
    /// sent.
    ready_sent: bool,
}

/// Runs one node's share of the job, epoch after epoch, as the
/// coordinator's messages say; the same on the coordinator's node and on
/// the others. A node runs one share, plus one per failed slot it took
/// over during a live recovery (decision 25); to the coordinator it is one
/// node: one checkpoint part (the shares' parts merged), one end.
pub struct NodeAgent {
    name: String,
    query: String,
    build: Arc<dyn Fn(&Dataflow) + Send + Sync>,
    rc: RuntimeConfig,
    placement: ClusterPlacement,
    listener: Listener,
    /// Told which checkpoints are complete (it compacts what it stores).
    replica: Option<spate_core::replica::CompletionHandle>,
    /// The shares running here (the first is the node's own).
    shares: Vec<Share>,
    /// A live recovery under way: its epoch, and the workers whose
    /// replacements will connect here.
    recovering: Option<(u64, Vec<usize>)>,
    /// Checkpoint parts of some of the shares, by id, until every share's
    /// is in.
    parts: std::collections::BTreeMap<u64, Vec<Manifest>>,
    failed_sent: bool,
    /// With [`METRICS_ENV`]: print the job's output rate and latency this
    /// often, and when next.
    metrics_every: Option<(Duration, Instant, u64)>,
    /// The latency histogram and the report of the last epoch that
    /// finished.
    latency: Option<hdrhistogram::Histogram<u64>>,
    report: Option<NodeReport>,
    quiet: bool,
}

/// The shares of a node, taking the links a joining share's mesh setup
/// accepts for them (see [`spate_core::remote::Beside`]).
struct Running<'a> {
    shares: &'a [Share],
    moved: &'a [usize],
}

impl spate_core::remote::Beside for Running<'_> {
    fn wants(&self, from: usize, to: usize, epoch: u64) -> bool {
        self.moved.contains(&from)
            && self.shares.iter().any(|s| s.epoch == epoch && s.job.local_workers().contains(&to))
    }

    fn take(&mut self, from: usize, to: usize, conn: Connection) {
        if let Some(s) = self.shares.iter().find(|s| s.job.local_workers().contains(&to)) {
            if let Err(e) = s.job.relink(to, from, conn) {
                s.job.metrics().fail(format!("re-linking worker {from}: {e}"));
            }
        }
    }
}

impl NodeAgent {
    /// The agent of node `placement.me`, listening on `listener`.
    pub fn new(
        query: &str,
        build: Arc<dyn Fn(&Dataflow) + Send + Sync>,
        rc: RuntimeConfig,
        placement: ClusterPlacement,
        listener: Listener,
        quiet: bool,
    ) -> Self {
        Self {
            name: placement.nodes[placement.me].name.clone(),
            query: query.to_string(),
            build,
            rc,
            placement,
            listener,
            replica: None,
            shares: Vec::new(),
            recovering: None,
            parts: std::collections::BTreeMap::new(),
            failed_sent: false,
            latency: None,
            report: None,
            metrics_every: std::env::var(METRICS_ENV)
                .ok()
                .and_then(|v| v.parse::<u64>().ok())
                .filter(|&ms| ms > 0)
                .map(|ms| (Duration::from_millis(ms), Instant::now(), 0)),
            quiet,
        }
    }

    /// Tells this node's replica service which checkpoints are complete.
    pub fn set_replica(&mut self, replica: spate_core::replica::CompletionHandle) {
        self.replica = Some(replica);
    }

    /// This node's report of the last epoch that finished here.
    pub fn report(&self) -> Option<&NodeReport> {
        self.report.as_ref()
    }

    /// The latency histogram of the last epoch that finished here.
    pub fn latency(&self) -> Option<&hdrhistogram::Histogram<u64>> {
        self.latency.as_ref()
    }

    /// The listener (the coordinator refuses connections on it between
    /// deployments).
    pub fn listener(&mut self) -> &mut Listener {
        &mut self.listener
    }

    /// Handles a message from the coordinator, queueing answers in `out`.
    pub fn handle(&mut self, msg: Msg, out: &mut Vec<Msg>) -> Result<Option<Exit>, String> {
        self.handle_or_abort(msg, out, &mut || None)
    }

    /// As [`NodeAgent::handle`]; a deployment stops connecting its workers
    /// as soon as `abort` gives a reason (the coordinator aborted the epoch:
    /// a node of it failed).
    pub fn handle_or_abort(
        &mut self,
        msg: Msg,
        out: &mut Vec<Msg>,
        abort: &mut dyn FnMut() -> Option<String>,
    ) -> Result<Option<Exit>, String> {
        match msg {
            Msg::Deploy(d) if d.join.is_some() => {
                let epoch = d.epoch;
                if let Err(e) = self.deploy_join(d, abort) {
                    out.push(Msg::Failed { epoch, reason: e });
                }
            }
            Msg::Deploy(d) => {
                self.stop_job();
                let epoch = d.epoch;
                if let Err(e) = self.deploy(d, abort) {
                    out.push(Msg::Failed { epoch, reason: e });
                }
            }
            Msg::Recover { epoch, checkpoint, aborted, nodes: _, replicas, moved } => {
                match self.recover(epoch, checkpoint, aborted, replicas, moved) {
                    Ok(()) => out.push(Msg::Recovered { epoch }),
                    Err(reason) => out.push(Msg::Failed { epoch, reason }),
                }
            }
            Msg::Checkpoint { epoch, id } => {
                for s in self.shares.iter_mut().filter(|s| s.epoch == epoch) {
                    s.pending = Some(id);
                }
            }
            Msg::Complete { epoch, id } => {
                if let Some(r) = &self.replica {
                    r.complete(id);
                }
                for s in self.shares.iter().filter(|s| s.epoch == epoch) {
                    if let Some(c) = s.job.checkpoints() {
                        c.complete(id);
                    }
                }
            }
            Msg::Abort { epoch } => {
                self.stop_job();
                out.push(Msg::Aborted { epoch });
            }
            Msg::Release => {
                self.stop_job();
                let dir = self.rc.data_dir.join(&self.query);
                if let Err(e) = std::fs::remove_dir_all(&dir) {
                    if e.kind() != std::io::ErrorKind::NotFound {
                        eprintln!("node {}: cannot remove {}: {e}", self.name, dir.display());
                    }
                }
                return Ok(Some(Exit::Released));
            }
            Msg::Stop { reason } => {
                self.stop_job();
                return Err(reason);
            }
            other => return Err(format!("node `{}`: unexpected control message {other:?}", self.name)),
        }
        Ok(None)
    }

    /// Stops this node's shares of the job, if any run (keeping their
    /// checkpoints).
    fn stop_job(&mut self) {
        for s in self.shares.drain(..) {
            s.job.cancel();
            let _ = s.job.wait();
        }
        self.parts.clear();
        self.recovering = None;
    }

    /// Another node failed and the job recovers live (decision 25): this
    /// node's shares keep running under `epoch`, void the checkpoints up
    /// to `aborted`, stream their checkpoints to `replicas`, and take the
    /// connections of the replacements of `moved` as they come
    /// ([`NodeAgent::poll`]).
    fn recover(
        &mut self,
        epoch: u64,
        checkpoint: u64,
        aborted: u64,
        replicas: Vec<SocketAddr>,
        moved: Vec<usize>,
    ) -> Result<(), String> {
        let name = &self.name;
        if self.shares.is_empty() {
            return Err(format!("node `{name}` runs no share of the job to recover"));
        }
        for s in &mut self.shares {
            if let Some(why) = s.job.metrics().failure() {
                return Err(format!("node `{name}`: its share already failed: {why}"));
            }
            // Epoch 0 is a name without an epoch: replica streams start at 1.
            s.job
                .recover(checkpoint, aborted, replicas.clone(), epoch + 1)
                .map_err(|e| format!("node `{name}`: {e}"))?;
            s.epoch = epoch;
            s.pending = s.pending.filter(|&id| id > aborted);
            // `Recovered` is this share's `Ready` for the new epoch.
            s.ready_sent = true;
        }
        self.parts.retain(|&id, _| id > aborted);
        self.recovering = Some((epoch, moved));
        if !self.quiet {
            eprintln!(
                "node {}: epoch {epoch} goes on live; the replacements restore checkpoint {checkpoint}",
                self.name
            );
        }
        Ok(())
    }

    /// Runs the replacement of a failed node's workers in a running job
    /// (live recovery): fetches their part of the checkpoint, restores it,
    /// and connects to every other worker. On a survivor (it took the
    /// failed slot over) the new share runs beside its own.
    fn deploy_join(
        &mut self,
        d: Deployment,
        abort: &mut dyn FnMut() -> Option<String>,
    ) -> Result<(), String> {
        let slot = d.join.ok_or("not a joining deployment")?;
        if self.shares.iter().any(|s| s.epoch != d.epoch) {
            return Err(format!(
                "node `{}` runs a share of another epoch and cannot join epoch {}",
                self.name, d.epoch
            ));
        }
        if d.nodes.get(slot).is_none_or(|n| n.name != self.name) {
            return Err(format!("node `{}` is not slot {slot} of the deployment it received", self.name));
        }
        if self.rc.checkpoint_interval_ms == 0 {
            return Err(format!("node `{}`: only a job with checkpoints recovers live", self.name));
        }
        self.fetch_parts(&d, abort)?;
        let placement = ClusterPlacement {
            nodes: d.nodes.clone(),
            me: slot,
            epoch: d.epoch,
            join: Some(spate_core::remote::Join { slot, moved: d.moved.clone() }),
            ..self.placement.clone()
        };
        let beside = !self.shares.is_empty();
        let job = self.start_share(&d, placement, slot, abort)?;
        if !self.quiet {
            let from = d.restore.as_ref().map_or("the start".to_string(), |m| format!("checkpoint {}", m.id));
            let how = if beside { " beside its own" } else { "" };
            eprintln!(
                "node {}: joins epoch {} in slot {slot}{how}, restored from {from}",
                self.name, d.epoch
            );
        }
        self.started(d.epoch, job);
        Ok(())
    }

    /// Starts `d`'s share that runs `placement.nodes[slot]` (beside the
    /// shares running here, which take its links to their workers).
    fn start_share(
        &mut self,
        d: &Deployment,
        placement: ClusterPlacement,
        slot: usize,
        abort: &mut dyn FnMut() -> Option<String>,
    ) -> Result<Job, String> {
        let mut rc = self.rc.clone();
        rc.workers = placement.nodes[slot].workers;
        rc.schedule_origin_ns = d.origin_ns;
        let checkpoints = (rc.checkpoint_interval_ms > 0).then(|| ClusterCheckpoints {
            restore: d.restore.clone(),
            replicas: d.replicas.clone(),
            cluster: placement.cluster,
            // Epoch 0 is a name without an epoch: start at 1.
            epoch: d.epoch + 1,
            aborted: d.aborted,
            // (The runtime sets `joining` from the placement.)
            joining: false,
        });
        let build = self.build.clone();
        let moved = d.moved.clone();
        let mut running = Running { shares: &self.shares, moved: &moved };
        let beside: Option<&mut dyn spate_core::remote::Beside> =
            if self.shares.is_empty() { None } else { Some(&mut running) };
        Runtime::new(rc)
            .start_cluster_or_abort(
                &self.query,
                move |df| build(df),
                placement,
                &mut self.listener,
                checkpoints,
                abort,
                beside,
            )
            .map_err(|e| format!("node `{}`: {e}", self.name))
    }

    /// A share of `epoch` started here.
    fn started(&mut self, epoch: u64, job: Job) {
        if self.shares.is_empty() {
            if let Some((_, _, last_out)) = &mut self.metrics_every {
                *last_out = 0;
            }
            self.failed_sent = false;
        }
        self.shares.push(Share { epoch, job, pending: None, ready_sent: false });
    }

    /// Hands the connections of replacements of failed workers to the
    /// shares' workers they link to.
    fn accept_relinks(&mut self) {
        let Some((epoch, moved)) = &self.recovering else { return };
        if self.shares.is_empty() {
            return;
        }
        let mut running = Running { shares: &self.shares, moved };
        loop {
            let mut taken = None;
            let accepted =
                self.listener.poll_accept_with(|peer| {
                    match spate_core::remote::parse_any_link_name(&peer.node) {
                        Some((from, to, e))
                            if e == *epoch && spate_core::remote::Beside::wants(&running, from, to, e) =>
                        {
                            taken = Some((from, to));
                            Ok(())
                        }
                        _ => Err(Rejection::UnknownNode),
                    }
                });
            match accepted {
                Ok(Some(conn)) => {
                    if let Some((from, to)) = taken {
                        spate_core::remote::Beside::take(&mut running, from, to, conn);
                    }
                }
                Ok(None) => break,
                // One bad peer does not stop the others.
                Err(e) => eprintln!("spate: node {}: refused a connection: {e}", self.name),
            }
        }
    }

    /// Before a deployment that restores: fetches the parts this node does
    /// not hold from a backup node, one thread per part, while `abort`
    /// keeps the control connection alive (a fetch of hundreds of MiB
    /// takes longer than the failure timeout) and may give up.
    fn fetch_parts(&self, d: &Deployment, abort: &mut dyn FnMut() -> Option<String>) -> Result<(), String> {
        let Some(m) = &d.restore else { return Ok(()) };
        let fetch_one = |w: usize, addr: SocketAddr| -> Result<(), String> {
            let t = Instant::now();
            let dir = self.rc.data_dir.join(&self.query).join("backup").join(format!("w{w}"));
            let _ = std::fs::remove_dir_all(&dir);
            let mut store = spate_state::BackupStore::open(&dir, spate_state::Durability::PageCache)
                .map_err(|e| format!("cannot open the backup store in {}: {e}", dir.display()))?;
            let got = spate_core::replica::fetch(
                addr,
                self.placement.cluster,
                w,
                m.id,
                &mut store,
                self.placement.connect_timeout,
            )
            .map_err(|e| format!("fetching checkpoint {} of worker {w} from {addr}: {e}", m.id))?;
            if !self.quiet {
                eprintln!(
                    "node {}: fetched checkpoint {} of worker {w} from {addr} ({got:?}) in {} ms",
                    self.name,
                    m.id,
                    t.elapsed().as_millis()
                );
            }
            Ok(())
        };
        std::thread::scope(|scope| {
            let handles: Vec<_> =
                d.fetch.iter().map(|&(w, addr)| scope.spawn(move || fetch_one(w, addr))).collect();
            let mut gave_up = None;
            while !handles.iter().all(|h| h.is_finished()) {
                if gave_up.is_none() {
                    gave_up = abort();
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            for h in handles {
                h.join().map_err(|_| "a fetch thread panicked".to_string())??;
            }
            gave_up.map_or(Ok(()), |why| Err(format!("node `{}`: fetching: {why}", self.name)))
        })
    }

    fn deploy(&mut self, d: Deployment, abort: &mut dyn FnMut() -> Option<String>) -> Result<(), String> {
        let me = d
            .nodes
            .iter()
            .position(|n| n.name == self.name)
            .ok_or_else(|| format!("node `{}` is not in the deployment it received", self.name))?;
        self.fetch_parts(&d, abort)?;
        let placement =
            ClusterPlacement { nodes: d.nodes.clone(), me, epoch: d.epoch, ..self.placement.clone() };
        let job = self.start_share(&d, placement, me, abort)?;
        if let (Some(m), false) = (&d.restore, self.quiet) {
            eprintln!("node {}: epoch {} resumes from checkpoint {}", self.name, d.epoch, m.id);
        }
        self.started(d.epoch, job);
        Ok(())
    }

    /// Moves the job along: hands it requested checkpoints, and queues in
    /// `out` what the coordinator must hear (ready, checkpoint parts, an
    /// end or a failure).
    pub fn poll(&mut self, out: &mut Vec<Msg>) {
        self.accept_relinks();
        let Some(epoch) = self.shares.first().map(|s| s.epoch) else { return };
        if let Some((every, next, last_out)) = &mut self.metrics_every {
            let now = Instant::now();
            if now >= *next {
                *next = now + *every;
                let mut total = 0;
                let mut h = spate_core::metrics::latency_histogram();
                for s in &self.shares {
                    let m = s.job.metrics();
                    total += m.records_out.load(std::sync::atomic::Ordering::Relaxed);
                    let _ = h.add(m.take_interval_latency());
                }
                let p99_us = if h.is_empty() { 0 } else { h.value_at_quantile(0.99) / 1000 };
                let line = MetricsLine {
                    node: self.name.clone(),
                    unix_ms: unix_ms(),
                    epoch,
                    records_out: total.saturating_sub(*last_out),
                    p99_us,
                };
                *last_out = total;
                println!("{}", line.to_json());
            }
        }
        let shares = self.shares.len();
        for s in &mut self.shares {
            if let Some(c) = s.job.checkpoints() {
                if c.ready() {
                    if !s.ready_sent {
                        s.ready_sent = true;
                        out.push(Msg::Ready { epoch: s.epoch });
                    }
                    if let Some(id) = s.pending.take() {
                        c.request(id);
                    }
                }
                for part in c.take_done() {
                    self.parts.entry(part.id).or_default().push(part);
                }
            } else if !s.ready_sent {
                s.ready_sent = true;
                out.push(Msg::Ready { epoch: s.epoch });
            }
        }
        // One part per node: once every share's is in, merged.
        let whole: Vec<u64> =
            self.parts.iter().filter(|(_, p)| p.len() >= shares).map(|(&id, _)| id).collect();
        for id in whole {
            if let Some(mut ps) = self.parts.remove(&id) {
                let mut part = ps.remove(0);
                for p in &ps {
                    part.merge(p);
                }
                out.push(Msg::Done { epoch, part });
            }
        }
        if let Some(m) = self.shares.iter().map(|s| s.job.metrics()).find(|m| m.has_failed()) {
            if !self.failed_sent {
                self.failed_sent = true;
                let reason = m.failure().unwrap_or_else(|| "stopped".into());
                out.push(Msg::Failed { epoch, reason });
            }
            return;
        }
        if self.shares.iter().all(|s| s.job.is_finished()) {
            let mut latency = spate_core::metrics::latency_histogram();
            let mut report =
                NodeReport { node: self.name.clone(), records_in: 0, records_out: 0, seconds: 0.0 };
            for s in self.shares.drain(..) {
                let _ = latency.add(s.job.metrics().latency());
                match s.job.wait() {
                    Ok(r) => {
                        report.records_in += r.records_in;
                        report.records_out += r.records_out;
                        report.seconds = report.seconds.max(r.elapsed.as_secs_f64());
                    }
                    Err(RuntimeError::Cancelled) => return,
                    Err(e) => {
                        out.push(Msg::Failed { epoch, reason: e.to_string() });
                        return;
                    }
                }
            }
            self.parts.clear();
            self.latency = Some(latency);
            self.report = Some(report.clone());
            out.push(Msg::Finished { epoch, report });
        }
    }

    /// The live metrics of this node's own share, while one runs here.
    pub fn metrics(&self) -> Option<&Arc<spate_core::metrics::JobMetrics>> {
        self.shares.first().map(|s| s.job.metrics())
    }
}

/// A member node's connection to the coordinator.
pub struct Member {
    peer: Peer,
    /// The coordinator is declared lost after this much silence.
    timeout: Duration,
}

impl Member {
    /// Connects to the coordinator at `coordinator` as `node` and registers
    /// with `workers` workers and the replica service at `replica`.
    pub fn register(
        coordinator: SocketAddr,
        node: &str,
        workers: usize,
        replica: SocketAddr,
        placement: &ClusterPlacement,
        failure_timeout: Duration,
    ) -> Result<Self, String> {
        let deadline = Instant::now() + placement.connect_timeout;
        let config = net_config(ctl_name(node), placement.cluster);
        let conn = loop {
            let attempt = Connection::connect(coordinator, &config, deadline).and_then(|c| c.wait());
            match attempt {
                Ok(c) => break c,
                Err(e) if matches!(e.kind, NetErrorKind::Connect(_)) && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => return Err(format!("node `{node}`: cannot reach the coordinator: {e}")),
            }
        };
        let mut peer = Peer { node: "coordinator".into(), conn, closed: false, inbox: Vec::new() };
        peer.send(&Msg::Register { workers, replica })?;
        // The coordinator is busy (not polling) while it connects its own
        // workers of a new epoch: allow for that.
        Ok(Self { peer, timeout: failure_timeout + placement.connect_timeout })
    }

    /// Runs `agent` as the coordinator says until it releases this node.
    pub fn run(mut self, agent: &mut NodeAgent, first_deploy_within: Duration) -> Result<(), String> {
        let started = Instant::now();
        let mut deployed = false;
        let mut out = Vec::new();
        loop {
            let now = Instant::now();
            self.peer.poll(now)?;
            while !self.peer.inbox.is_empty() {
                // One at a time: what follows stays visible to `abort`.
                let msg = self.peer.inbox.remove(0);
                deployed |= matches!(msg, Msg::Deploy(_));
                // While a deployment connects its workers, an abort (or the
                // coordinator's end) that arrives stops it.
                let peer = &mut self.peer;
                let mut abort = || {
                    let _ = peer.poll(Instant::now());
                    if peer.closed {
                        return Some("the coordinator closed its control connection".to_string());
                    }
                    peer.inbox
                        .iter()
                        .any(|m| matches!(m, Msg::Abort { .. } | Msg::Stop { .. } | Msg::Release))
                        .then(|| "the coordinator aborted the epoch".to_string())
                };
                if let Some(Exit::Released) = agent.handle_or_abort(msg, &mut out, &mut abort)? {
                    return Ok(());
                }
            }
            agent.poll(&mut out);
            for m in out.drain(..) {
                self.peer.send(&m)?;
            }
            if self.peer.closed {
                agent.stop_job();
                return Err("the coordinator closed its control connection: stopping".into());
            }
            let silent = self.peer.silent(now);
            if silent > self.timeout {
                agent.stop_job();
                return Err(format!(
                    "the coordinator has been silent for {} ms: stopping",
                    silent.as_millis()
                ));
            }
            if !deployed && started.elapsed() > first_deploy_within {
                return Err(format!("no deployment from the coordinator within {first_deploy_within:?}"));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

/// A moment of the job worth reporting (for `bench recovery`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// When, in milliseconds since the Unix epoch.
    pub unix_ms: u64,
    /// What: `failed <node>`, `deployed <epoch>`, `running <epoch>`,
    /// `requested <checkpoint>`, `checkpoint <id>` (complete).
    pub what: String,
}

impl Event {
    /// Parses [`Event::to_json`]'s output (`None` for other lines).
    pub fn parse(line: &str) -> Option<Event> {
        let body = line.trim().strip_prefix("{\"event\":\"")?.strip_suffix('}')?;
        let (what, rest) = body.split_once('"')?;
        let unix_ms = rest.strip_prefix(",\"unix_ms\":")?.parse().ok()?;
        Some(Event { unix_ms, what: what.to_string() })
    }

    /// One JSON line.
    pub fn to_json(&self) -> String {
        format!("{{\"event\":\"{}\",\"unix_ms\":{}}}", self.what, self.unix_ms)
    }
}

/// Milliseconds since the Unix epoch.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// The coordinator's driver: the control connections to the other nodes,
/// its own node's agent, and the [`plan::Plan`] that decides.
pub struct Coordinator {
    plan: plan::Plan,
    peers: HashMap<usize, Peer>,
    me: usize,
    started: Instant,
    events: Vec<Event>,
    quiet: bool,
    /// Print each event as a JSON line on stdout when it happens.
    print_events: bool,
}

/// How the job ended on the coordinator.
pub struct Outcome {
    /// Every node's report of its last epoch.
    pub reports: Vec<NodeReport>,
    /// The events, in order.
    pub events: Vec<Event>,
}

impl Coordinator {
    /// Waits for every other node of `placement` (spares included, as
    /// `spares` says) to register on `listener`.
    pub fn accept_members(
        listener: &mut Listener,
        placement: &ClusterPlacement,
        spares: &[bool],
        config: plan::PlanConfig,
        quiet: bool,
    ) -> Result<Self, String> {
        let started = Instant::now();
        let deadline = started + placement.connect_timeout;
        let me = placement.me;
        let nodes: Vec<(String, SocketAddr, usize, bool)> = placement
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.name.clone(), n.addr, n.workers, spares.get(i).copied().unwrap_or(false)))
            .collect();
        let mut plan = plan::Plan::new(&nodes, me, config);
        let mut peers: HashMap<usize, Peer> = HashMap::new();
        let ms = |t: Instant| t.saturating_duration_since(started).as_millis() as u64;
        loop {
            loop {
                let accepted = listener.poll_accept_with(|peer| {
                    let Some(node) = peer.node.strip_prefix("ctl:") else {
                        return Err(Rejection::UnknownNode);
                    };
                    match plan.index(node) {
                        Some(i) if i == me => Err(Rejection::UnknownNode),
                        Some(i) if peers.contains_key(&i) => Err(Rejection::DuplicateNode),
                        Some(_) => Ok(()),
                        None => Err(Rejection::UnknownNode),
                    }
                });
                match accepted {
                    Ok(Some(conn)) => {
                        let node = conn.peer().node.trim_start_matches("ctl:").to_string();
                        if let Some(i) = plan.index(&node) {
                            peers.insert(i, Peer { node, conn, closed: false, inbox: Vec::new() });
                        }
                    }
                    Ok(None) => break,
                    Err(e) => eprintln!("spate: refused a connection: {e}"),
                }
            }
            let now = Instant::now();
            for (&i, p) in peers.iter_mut() {
                p.poll(now)?;
                for m in std::mem::take(&mut p.inbox) {
                    match m {
                        Msg::Register { workers, replica } if workers > 0 => {
                            plan.register(i, workers, replica, ms(now))
                        }
                        other => return Err(format!("node `{}` sent {other:?} before registering", p.node)),
                    }
                }
            }
            let missing: Vec<&str> =
                plan.missing().into_iter().filter(|n| *n != placement.nodes[me].name).collect();
            if missing.is_empty() {
                break;
            }
            if now >= deadline {
                return Err(format!(
                    "coordinator `{}`: nodes not registered after {:?}: {}",
                    placement.nodes[me].name,
                    placement.connect_timeout,
                    missing.join(", ")
                ));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        Ok(Self { plan, peers, me, started, events: Vec::new(), quiet, print_events: false })
    }

    /// Registers the coordinator's own node: its workers and replica
    /// service.
    pub fn register_self(&mut self, workers: usize, replica: SocketAddr) {
        let now = self.now_ms();
        self.plan.register(self.me, workers, replica, now);
    }

    /// Prints each event as a JSON line on stdout as it happens.
    pub fn print_events(&mut self) {
        self.print_events = true;
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Runs the job to its end: deploys epoch 0, then detects failures,
    /// recovers, takes checkpoints, and finally releases (or, when the job
    /// fails, stops) every node. `agent` runs the coordinator's own share.
    pub fn run(mut self, agent: &mut NodeAgent) -> Result<Outcome, String> {
        let now = self.now_ms();
        self.plan.start(now);
        let mut own: Vec<Msg> = Vec::new();
        let result = loop {
            match self.step(agent, &mut own) {
                Ok(Some(reports)) => break Ok(reports),
                Ok(None) => {}
                Err(e) => break Err(e),
            }
            std::thread::sleep(Duration::from_millis(1));
        };
        let last = match &result {
            Ok(_) => Msg::Release,
            Err(reason) => Msg::Stop { reason: reason.clone() },
        };
        for p in self.peers.values_mut() {
            let _ = p.send(&last);
        }
        let _ = agent.handle(last, &mut Vec::new());
        let reports = result?;
        Ok(Outcome { reports, events: self.events })
    }

    /// One pass: the peers' messages and liveness into the plan, the own
    /// node's too, the plan's timers, then its actions.
    fn step(&mut self, agent: &mut NodeAgent, own: &mut Vec<Msg>) -> Result<Option<Vec<NodeReport>>, String> {
        let now = Instant::now();
        let now_ms = self.now_ms();
        let mut ids: Vec<usize> = self.peers.keys().copied().collect();
        ids.sort_unstable();
        for i in ids {
            let Some(p) = self.peers.get_mut(&i) else { continue };
            let polled = p.poll(now);
            let msgs = std::mem::take(&mut p.inbox);
            let heard = p.conn.last_heard().saturating_duration_since(self.started).as_millis() as u64;
            let closed = p.closed;
            self.plan.heard(i, heard);
            for m in msgs {
                self.plan.message(i, m, now_ms);
            }
            if let Err(e) = polled {
                self.plan.connection_lost(i, &e, now_ms);
            } else if closed {
                self.plan.connection_lost(i, "its control connection closed", now_ms);
            }
        }
        let mut out = Vec::new();
        agent.poll(&mut out);
        for m in out {
            self.plan.message(self.me, m, now_ms);
        }
        self.plan.tick(now_ms);
        let mut done = None;
        // Actions can lead to more (a failed send is a lost connection).
        loop {
            let actions = self.plan.take_actions();
            if actions.is_empty() {
                break;
            }
            for a in actions {
                match a {
                    plan::Action::Send { to, msg } if to == self.me => own.push(msg),
                    plan::Action::Send { to, msg } => {
                        if let Some(p) = self.peers.get_mut(&to) {
                            if let Err(e) = p.send(&msg) {
                                self.plan.connection_lost(to, &e, now_ms);
                            }
                        }
                    }
                    plan::Action::Fence { node, .. } => {
                        // Its control connection goes; it is never deployed
                        // again, and worker links carry the epoch.
                        self.peers.remove(&node);
                    }
                    plan::Action::Event(what) => self.event(what),
                    plan::Action::Note(line) => eprintln!("coordinator: {line}"),
                    plan::Action::Finish(reports) => done = Some(reports),
                    plan::Action::Fail(reason) => return Err(reason),
                }
            }
        }
        // The coordinator's own share last: a deployment blocks while its
        // workers connect, and the others must have theirs by then.
        let mut out = Vec::new();
        for m in std::mem::take(own) {
            // While its deployment connects its workers, a node whose
            // control connection drops will never connect: give up (the
            // plan hears of it at the next step).
            let peers = &mut self.peers;
            let mut abort = || {
                for p in peers.values_mut() {
                    let _ = p.poll(Instant::now());
                    if p.closed {
                        return Some(format!("node `{}` closed its control connection", p.node));
                    }
                }
                None
            };
            agent.handle_or_abort(m, &mut out, &mut abort)?;
        }
        for m in out {
            self.plan.message(self.me, m, now_ms);
        }
        Ok(done)
    }

    fn event(&mut self, what: String) {
        let e = Event { unix_ms: unix_ms(), what };
        if self.print_events {
            println!("{}", e.to_json());
        } else if !self.quiet {
            eprintln!("coordinator: {}", e.what);
        }
        self.events.push(e);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn manifest() -> Manifest {
        let mut offsets = BTreeMap::new();
        offsets.insert(("source".to_string(), 0), 42);
        offsets.insert(("source".to_string(), 2), 7);
        let mut m = Manifest::new(9, 3);
        m.offsets = offsets;
        m.ahead.insert((1, 0, 2), 17);
        m
    }

    #[test]
    fn messages_round_trip() {
        let addr: SocketAddr = "127.0.0.1:7101".parse().unwrap_or_else(|e| panic!("{e}"));
        let report = NodeReport { node: "b".into(), records_in: 5, records_out: 4, seconds: 1.5 };
        let msgs = vec![
            Msg::Register { workers: 2, replica: addr },
            Msg::Deploy(Deployment {
                epoch: 3,
                nodes: vec![
                    NodeSpec { name: "a".into(), addr, workers: 1 },
                    NodeSpec { name: "s".into(), addr, workers: 2 },
                ],
                replicas: vec![addr],
                fetch: vec![(1, addr), (2, addr)],
                restore: Some(manifest()),
                origin_ns: 1_700_000_000_000_000_000,
                join: None,
                moved: vec![],
                aborted: 11,
            }),
            Msg::Deploy(Deployment {
                epoch: 0,
                nodes: vec![NodeSpec { name: "a".into(), addr, workers: 1 }],
                replicas: vec![],
                fetch: vec![],
                restore: None,
                origin_ns: 0,
                join: None,
                moved: vec![],
                aborted: 0,
            }),
            Msg::Deploy(Deployment {
                epoch: 5,
                nodes: vec![
                    NodeSpec { name: "a".into(), addr, workers: 1 },
                    NodeSpec { name: "s".into(), addr, workers: 1 },
                    NodeSpec { name: "s".into(), addr, workers: 1 },
                ],
                replicas: vec![addr],
                fetch: vec![(2, addr)],
                restore: Some(manifest()),
                origin_ns: 3,
                join: Some(2),
                moved: vec![2, 5],
                aborted: 10,
            }),
            Msg::Ready { epoch: 1 },
            Msg::Checkpoint { epoch: 1, id: 12 },
            Msg::Done { epoch: 1, part: manifest() },
            Msg::Complete { epoch: 1, id: 12 },
            Msg::Abort { epoch: 4 },
            Msg::Aborted { epoch: 4 },
            Msg::Failed { epoch: 2, reason: "worker 1: peer closed the connection\nsecond line".into() },
            Msg::Finished { epoch: 2, report },
            Msg::Release,
            Msg::Stop { reason: "node `b` failed and no node is left".into() },
            Msg::Recover {
                epoch: 5,
                checkpoint: 9,
                aborted: 10,
                nodes: vec![
                    NodeSpec { name: "a".into(), addr, workers: 1 },
                    NodeSpec { name: "s".into(), addr, workers: 1 },
                    NodeSpec { name: "a".into(), addr, workers: 1 },
                ],
                replicas: vec![addr],
                moved: vec![1, 2],
            },
            Msg::Recover {
                epoch: 1,
                checkpoint: 0,
                aborted: 0,
                nodes: vec![NodeSpec { name: "a".into(), addr, workers: 2 }],
                replicas: vec![],
                moved: vec![],
            },
            Msg::Recovered { epoch: 5 },
        ];
        for m in msgs {
            let (kind, text) = m.encode();
            assert_eq!(Msg::decode(kind, &text), Ok(m.clone()), "{text}");
        }
    }

    #[test]
    fn malformed_messages_are_errors_that_say_what_is_wrong() {
        let cases = [
            (Kind::Recovery, "checkpoint 1", "an id"),
            (Kind::Recovery, "ready x", "an epoch"),
            (Kind::Recovery, "register 2 not-an-address", "an address"),
            (Kind::Recovery, "dance 1", "unknown verb"),
            (Kind::Recovery, "done 1\nnot a manifest", "manifest"),
            (Kind::Recovery, "finished 1 {\"node\":", "a report"),
            (Kind::Deploy, "node a 127.0.0.1:1 1\n", "no epoch"),
            (Kind::Deploy, "epoch 1\n", "no node"),
            (Kind::Deploy, "epoch 1\nnode a nowhere 1\n", "bad address"),
            (
                Kind::Deploy,
                "epoch 1\nnode a 127.0.0.1:1 1\nrestore\nspate-checkpoint-manifest 1\nid 3\n",
                "truncated",
            ),
            (Kind::Deploy, "epoch 1\naborted x\nnode a 127.0.0.1:1 1\n", "bad aborted"),
            (Kind::Deploy, "epoch 1\njoin 1\nnode a 127.0.0.1:1 1\n", "bad join slot 1"),
            (Kind::Deploy, "epoch 1\njoin -1\nnode a 127.0.0.1:1 1\n", "bad join slot"),
            (Kind::Recovery, "recover 2 1\nnode a 127.0.0.1:1 1\n", "an aborted checkpoint id"),
            (Kind::Recovery, "recover 2 x 1\nnode a 127.0.0.1:1 1\n", "a checkpoint id"),
            (Kind::Recovery, "recover 2 1 1\n", "no node"),
            (Kind::Recovery, "recover 2 1 1\nnode a 127.0.0.1:1 1\nmoved one\n", "bad worker"),
            (Kind::Recovery, "recover 2 1 1\nnode a nowhere 1\n", "bad address"),
            (Kind::Recovery, "recovered", "an epoch"),
            (Kind::Data, "ready 1", "frame kind"),
        ];
        for (kind, text, want) in cases {
            match Msg::decode(kind, text) {
                Ok(m) => panic!("{text:?} decoded as {m:?}"),
                Err(e) => assert!(e.contains(want), "{text:?}: {e:?} does not say {want:?}"),
            }
        }
    }

    #[test]
    fn events_and_metrics_lines_parse_back() {
        let e = Event { unix_ms: 17, what: "failed b".into() };
        let back = Event::parse(&e.to_json()).unwrap_or_else(|| panic!("no event"));
        assert_eq!((back.unix_ms, back.what.as_str()), (17, "failed b"));
        let m = MetricsLine { node: "a".into(), unix_ms: 5, epoch: 1, records_out: 300, p99_us: 2500 };
        assert_eq!(MetricsLine::parse(&m.to_json()), Some(m));
        assert_eq!(Event::parse("{\"node\":\"a\"}"), None);
        assert_eq!(MetricsLine::parse("hello"), None);
    }
}
