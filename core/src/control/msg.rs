//! Control messages between the coordinator and the nodes, and their
//! codec: control frames with small text payloads (`Kind::Deploy` for a
//! deployment, `Kind::Recovery` for the rest), read by [`Msg::decode`],
//! which names what is malformed.

use std::error::Error;
use std::fmt;
use std::net::SocketAddr;
use std::path::Path;

use spate_net::frame::Kind;

use crate::checkpoint::{CheckpointError, Manifest};
use crate::control::placement::NodeSpec;
use crate::control::report::NodeReport;
use crate::load::LoadReport;

/// A control message.
#[derive(Debug, Clone, PartialEq)]
pub enum Msg {
    /// Node → coordinator: this incarnation of it (a greater one after
    /// every restart of its process) runs `workers` workers and its
    /// replica service listens at `replica`.
    Register {
        /// Its process's life: see [`crate::control::detector::Incarnation`].
        incarnation: u64,
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
    /// Coordinator → every node running workers: stage one handoff step
    /// (see `crate::handoff`): bins `start..end` of every keyed operator
    /// move from worker `from` to worker `to`, making assignment
    /// `version`; the target's instances hold those bins' records from now
    /// on, senders switch at [`Msg::Switch`].
    Handoff {
        /// The epoch.
        epoch: u64,
        /// The assignment version the step makes.
        version: u64,
        /// The first bin that moves.
        start: u32,
        /// The bin after the last that moves.
        end: u32,
        /// The worker the bins leave.
        from: usize,
        /// The worker they go to.
        to: usize,
    },
    /// Node → coordinator: step `version` is staged here.
    Staged {
        /// The epoch.
        epoch: u64,
        /// The step's version.
        version: u64,
    },
    /// Coordinator → every node running workers, once every one staged
    /// step `version`: senders switch to it.
    Switch {
        /// The epoch.
        epoch: u64,
        /// The step's version.
        version: u64,
    },
    /// Node of a step's `to` → coordinator: every keyed operator of `to`
    /// merged its bins; `bytes` of state moved in `micros` µs (from the
    /// step's publishing on this node).
    HandedOff {
        /// The epoch.
        epoch: u64,
        /// The step's version.
        version: u64,
        /// Bytes of state moved.
        bytes: u64,
        /// Microseconds it took here.
        micros: u64,
    },
    /// Node → coordinator: one of its workers' load over the last
    /// `[scaling] interval_ms` (for the scaling policy).
    Load {
        /// The epoch.
        epoch: u64,
        /// The worker's report.
        report: LoadReport,
    },
    /// `spate ctl` → coordinator: a request in words (`move <start>
    /// <end> <to>`, `scale <workers>`, `assignment`).
    Control {
        /// The request.
        request: String,
    },
    /// Coordinator → `spate ctl`: the answer to its request.
    Reply {
        /// Whether it was done.
        ok: bool,
        /// What was done, or why not.
        text: String,
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
    /// The epoch the message is about, if it names one.
    pub fn epoch(&self) -> Option<u64> {
        match self {
            Msg::Deploy(d) => Some(d.epoch),
            Msg::Ready { epoch }
            | Msg::Checkpoint { epoch, .. }
            | Msg::Done { epoch, .. }
            | Msg::Complete { epoch, .. }
            | Msg::Abort { epoch }
            | Msg::Aborted { epoch }
            | Msg::Failed { epoch, .. }
            | Msg::Finished { epoch, .. }
            | Msg::Recover { epoch, .. }
            | Msg::Recovered { epoch }
            | Msg::Handoff { epoch, .. }
            | Msg::Staged { epoch, .. }
            | Msg::Switch { epoch, .. }
            | Msg::HandedOff { epoch, .. }
            | Msg::Load { epoch, .. } => Some(*epoch),
            Msg::Register { .. }
            | Msg::Release
            | Msg::Stop { .. }
            | Msg::Control { .. }
            | Msg::Reply { .. } => None,
        }
    }

    /// The frame kind and payload.
    pub fn encode(&self) -> (Kind, String) {
        let r = |s: String| (Kind::Recovery, s);
        match self {
            Msg::Register { incarnation, workers, replica } => {
                r(format!("register {workers} {replica} {incarnation}"))
            }
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
            Msg::Handoff { epoch, version, start, end, from, to } => {
                r(format!("handoff {epoch} {version} {start} {end} {from} {to}"))
            }
            Msg::Staged { epoch, version } => r(format!("staged {epoch} {version}")),
            Msg::Switch { epoch, version } => r(format!("switch {epoch} {version}")),
            Msg::HandedOff { epoch, version, bytes, micros } => {
                r(format!("handedoff {epoch} {version} {bytes} {micros}"))
            }
            Msg::Load { epoch, report } => r(format!("load {epoch} {}", report.encode())),
            Msg::Control { request } => r(format!("control {request}")),
            Msg::Reply { ok, text } => r(format!("reply {} {text}", if *ok { "ok" } else { "refused" })),
        }
    }

    /// Reads a message; the error names what is malformed.
    pub fn decode(kind: Kind, text: &str) -> Result<Msg, MsgError> {
        let bad = |fault: MsgFault| MsgError::Malformed { fault, text: truncate(text).to_string() };
        if kind == Kind::Deploy {
            return decode_deployment(text).map(Msg::Deploy).map_err(bad);
        }
        if kind != Kind::Recovery {
            return Err(bad(MsgFault::FrameKind(kind)));
        }
        let (head, body) = text.split_once('\n').unwrap_or((text, ""));
        let mut words = head.splitn(3, ' ');
        let verb = words.next().unwrap_or("");
        let a = words.next();
        let rest = words.next();
        let num = |s: Option<&str>, what: &'static str| -> Result<u64, MsgError> {
            s.and_then(|s| s.parse().ok()).ok_or_else(|| bad(MsgFault::Expected(what)))
        };
        Ok(match verb {
            "register" => {
                let mut r = rest.unwrap_or("").split(' ');
                Msg::Register {
                    workers: num(a, "a worker count")? as usize,
                    replica: r
                        .next()
                        .and_then(|s| s.parse().ok())
                        .ok_or_else(|| bad(MsgFault::Expected("an address")))?,
                    incarnation: num(r.next(), "an incarnation")?,
                }
            }
            "ready" => Msg::Ready { epoch: num(a, "an epoch")? },
            "checkpoint" => Msg::Checkpoint { epoch: num(a, "an epoch")?, id: num(rest, "an id")? },
            "done" => Msg::Done {
                epoch: num(a, "an epoch")?,
                part: Manifest::parse(Path::new("control message"), body).map_err(MsgError::Part)?,
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
                report: rest
                    .and_then(NodeReport::parse)
                    .ok_or_else(|| bad(MsgFault::Expected("a report")))?,
            },
            "release" => Msg::Release,
            "stop" => Msg::Stop { reason: text.strip_prefix("stop ").unwrap_or("").to_string() },
            "recover" => {
                let mut ids = rest.unwrap_or("").split(' ');
                let (epoch, checkpoint) = (num(a, "an epoch")?, num(ids.next(), "a checkpoint id")?);
                let aborted = num(ids.next(), "an aborted checkpoint id")?;
                if ids.next().is_some() {
                    return Err(bad(MsgFault::TrailingWords));
                }
                let (mut nodes, mut replicas, mut moved) = (Vec::new(), Vec::new(), Vec::new());
                for l in body.lines() {
                    let p: Vec<&str> = l.split(' ').collect();
                    if parse_placement(l, &p, &mut nodes, &mut replicas).map_err(bad)? {
                        continue;
                    }
                    match p.as_slice() {
                        ["moved", w] => moved.push(
                            w.parse()
                                .map_err(|_| bad(MsgFault::Bad { what: "worker", line: l.to_string() }))?,
                        ),
                        _ => return Err(bad(MsgFault::Unreadable { line: l.to_string() })),
                    }
                }
                if nodes.is_empty() {
                    return Err(bad(MsgFault::NoNode));
                }
                Msg::Recover { epoch, checkpoint, aborted, nodes, replicas, moved }
            }
            "recovered" => Msg::Recovered { epoch: num(a, "an epoch")? },
            "handoff" | "handedoff" => {
                let mut f = rest.unwrap_or("").split(' ');
                let epoch = num(a, "an epoch")?;
                let version = num(f.next(), "an assignment version")?;
                let msg = if verb == "handoff" {
                    let bin = |s: Option<&str>| -> Result<u32, MsgError> {
                        s.and_then(|s| s.parse().ok()).ok_or_else(|| bad(MsgFault::Expected("a bin")))
                    };
                    let (start, end) = (bin(f.next())?, bin(f.next())?);
                    let from = num(f.next(), "a worker")? as usize;
                    let to = num(f.next(), "a worker")? as usize;
                    Msg::Handoff { epoch, version, start, end, from, to }
                } else {
                    let bytes = num(f.next(), "a byte count")?;
                    Msg::HandedOff { epoch, version, bytes, micros: num(f.next(), "a duration in µs")? }
                };
                if f.next().is_some() {
                    return Err(bad(MsgFault::TrailingWords));
                }
                msg
            }
            "staged" => {
                Msg::Staged { epoch: num(a, "an epoch")?, version: num(rest, "an assignment version")? }
            }
            "switch" => {
                Msg::Switch { epoch: num(a, "an epoch")?, version: num(rest, "an assignment version")? }
            }
            "load" => Msg::Load {
                epoch: num(a, "an epoch")?,
                report: rest
                    .and_then(LoadReport::decode)
                    .ok_or_else(|| bad(MsgFault::Expected("a load report")))?,
            },
            "control" => Msg::Control { request: text.strip_prefix("control ").unwrap_or("").to_string() },
            "reply" => {
                let (ok, text) = match text.strip_prefix("reply ").and_then(|t| t.split_once(' ')) {
                    Some(("ok", t)) => (true, t),
                    Some(("refused", t)) => (false, t),
                    _ => return Err(bad(MsgFault::Expected("`ok` or `refused`"))),
                };
                Msg::Reply { ok, text: text.to_string() }
            }
            _ => return Err(bad(MsgFault::UnknownVerb)),
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
) -> Result<bool, MsgFault> {
    let bad = |what: &'static str| MsgFault::Bad { what, line: l.to_string() };
    let addr = |s: &str| s.parse::<SocketAddr>().map_err(|_| bad("address"));
    match p {
        ["node", name, a, w] => nodes.push(NodeSpec {
            name: name.to_string(),
            addr: addr(a)?,
            workers: w.parse().map_err(|_| bad("worker count"))?,
        }),
        ["replica", a] => replicas.push(addr(a)?),
        _ => return Ok(false),
    }
    Ok(true)
}

fn decode_deployment(text: &str) -> Result<Deployment, MsgFault> {
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
        let bad = |what: &'static str| MsgFault::Bad { what, line: l.to_string() };
        let addr = |s: &str| s.parse::<SocketAddr>().map_err(|_| bad("address"));
        match p.as_slice() {
            ["epoch", e] => epoch = Some(e.parse().map_err(|_| bad("epoch"))?),
            ["origin", o] => d.origin_ns = o.parse().map_err(|_| bad("origin"))?,
            ["aborted", a] => d.aborted = a.parse().map_err(|_| bad("aborted checkpoint id"))?,
            ["join", j] => d.join = Some(j.parse().map_err(|_| bad("join slot"))?),
            ["moved", ws @ ..] => {
                for w in ws {
                    d.moved.push(w.parse().map_err(|_| bad("moved worker"))?);
                }
            }
            ["fetch", w, a] => d.fetch.push((w.parse().map_err(|_| bad("worker"))?, addr(a)?)),
            ["restore"] => {
                let rest: Vec<&str> = lines.by_ref().collect();
                d.restore = Some(
                    Manifest::parse(Path::new("deployment"), &rest.join("\n")).map_err(MsgFault::Restore)?,
                );
            }
            _ => return Err(MsgFault::Unreadable { line: l.to_string() }),
        }
    }
    d.epoch = epoch.ok_or(MsgFault::NoEpoch)?;
    if d.nodes.is_empty() {
        return Err(MsgFault::NoNode);
    }
    if let Some(slot) = d.join.filter(|&j| j >= d.nodes.len()) {
        return Err(MsgFault::JoinSlot { slot, nodes: d.nodes.len() });
    }
    Ok(d)
}

/// Why a control message does not read ([`Msg::decode`]).
#[derive(Debug)]
#[non_exhaustive]
pub enum MsgError {
    /// The message is malformed.
    Malformed {
        /// What is wrong with it.
        fault: MsgFault,
        /// The start of its text (at most 120 characters).
        text: String,
    },
    /// A `done` message's checkpoint part does not parse.
    Part(CheckpointError),
}

impl fmt::Display for MsgError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MsgError::Malformed { fault, text } => write!(f, "malformed control message ({fault}): {text:?}"),
            MsgError::Part(e) => e.fmt(f),
        }
    }
}

impl Error for MsgError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        match self {
            MsgError::Malformed { fault, .. } => fault.source(),
            MsgError::Part(e) => e.source(),
        }
    }
}

/// What is wrong with a malformed control message ([`MsgError::Malformed`]).
#[derive(Debug)]
#[non_exhaustive]
pub enum MsgFault {
    /// A frame of a kind that carries no control message.
    FrameKind(Kind),
    /// A word is missing or does not read as this (`"an epoch"`, `"an
    /// id"`, `"an address"`, `"a report"`, ...).
    Expected(&'static str),
    /// The message's first word is no message's.
    UnknownVerb,
    /// Words follow the last one a `recover` message has.
    TrailingWords,
    /// A line holds a value that does not read.
    Bad {
        /// The value (`"address"`, `"worker"`, `"epoch"`, `"join slot"`, ...).
        what: &'static str,
        /// The line.
        line: String,
    },
    /// A line that no message has.
    Unreadable {
        /// The line.
        line: String,
    },
    /// A deployment without its epoch.
    NoEpoch,
    /// A placement without a node.
    NoNode,
    /// A deployment joins a slot its placement does not have.
    JoinSlot {
        /// The slot.
        slot: usize,
        /// The placement's nodes.
        nodes: usize,
    },
    /// A deployment's checkpoint to restore does not parse.
    Restore(CheckpointError),
}

impl fmt::Display for MsgFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MsgFault::FrameKind(kind) => write!(f, "unexpected frame kind {kind:?}"),
            MsgFault::Expected(what) => write!(f, "expected {what}"),
            MsgFault::UnknownVerb => f.write_str("unknown verb"),
            MsgFault::TrailingWords => f.write_str("trailing words after the aborted checkpoint id"),
            MsgFault::Bad { what, line } => write!(f, "bad {what} in `{line}`"),
            MsgFault::Unreadable { line } => write!(f, "cannot read `{line}`"),
            MsgFault::NoEpoch => f.write_str("no epoch"),
            MsgFault::NoNode => f.write_str("no node"),
            MsgFault::JoinSlot { slot, nodes } => {
                write!(f, "bad join slot {slot}: the placement has {nodes} nodes")
            }
            MsgFault::Restore(e) => e.fmt(f),
        }
    }
}

impl Error for MsgFault {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        match self {
            MsgFault::Restore(e) => e.source(),
            _ => None,
        }
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
            Msg::Register { incarnation: 1_765_000_000_123, workers: 2, replica: addr },
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
            Msg::Handoff { epoch: 3, version: 7, start: 2048, end: 4096, from: 0, to: 1 },
            Msg::HandedOff { epoch: 3, version: 7, bytes: 1 << 28, micros: 812_000 },
            Msg::Staged { epoch: 3, version: 7 },
            Msg::Switch { epoch: 3, version: 7 },
            Msg::Load {
                epoch: 3,
                report: LoadReport {
                    worker: 1,
                    at_ms: 1_765_000_000_123,
                    busy_ns: 812_000_000,
                    blocked_ns: 3_000_000,
                    idle_ns: 185_000_000,
                    sources: vec![crate::load::SourceLoad {
                        name: "source".into(),
                        records: 1_000_000,
                        offered_per_s: Some(1_500_000.0),
                    }],
                    inputs: vec![crate::load::InputLoad {
                        edge: 0,
                        producer: 0,
                        records: 400_000,
                        queued: 7,
                        capacity: 64,
                    }],
                    bins_log2: 4,
                    bin_counts: vec![0, 0, 3, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 9],
                },
            },
            Msg::Control { request: "move 0 100 3".into() },
            Msg::Reply { ok: true, text: "moved 100 bins\nin 2 steps".into() },
            Msg::Reply { ok: false, text: "no worker 9: the job runs 4".into() },
        ];
        for m in msgs {
            let (kind, text) = m.encode();
            assert_eq!(Msg::decode(kind, &text).ok(), Some(m.clone()), "{text}");
        }
    }

    #[test]
    fn malformed_messages_are_errors_that_say_what_is_wrong() {
        let cases = [
            (Kind::Recovery, "checkpoint 1", "an id"),
            (Kind::Recovery, "ready x", "an epoch"),
            (Kind::Recovery, "register 2 not-an-address 1", "an address"),
            (Kind::Recovery, "register 2 127.0.0.1:1", "an incarnation"),
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
            (Kind::Recovery, "load 3 1 2 3", "a load report"),
            (Kind::Recovery, "load x 1 2 3 4 5 4", "an epoch"),
            (Kind::Data, "ready 1", "frame kind"),
        ];
        for (kind, text, want) in cases {
            match Msg::decode(kind, text) {
                Ok(m) => panic!("{text:?} decoded as {m:?}"),
                Err(e) => assert!(e.to_string().contains(want), "{text:?}: {e} does not say {want:?}"),
            }
        }
    }
}
