//! The plan's invariants, checked on everything the production coordinator
//! heard and did, in order (its journal): the simulator's second checker,
//! beside the outputs' closed form.
//!
//! - Nothing is sent to a node after it was fenced (until a new
//!   incarnation of it registers), and no placement names a fenced node;
//!   every placement has every worker of the job.
//! - No node backs up its own checkpoints.
//! - A deployment restores exactly the last checkpoint the plan completed,
//!   and a live recovery's survivors are told that one; every part fetched
//!   comes from a node not fenced.
//! - Checkpoint ids requested only grow, and never one voided; no
//!   checkpoint is requested while survivors re-link; every `aborted` is at
//!   least every id requested before.
//! - A joining deployment goes out only after every survivor told to
//!   recover into its epoch answered `Recovered`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

use crate::control::coordinator::Journal;
use crate::control::msg::{Deployment, Msg};
use crate::control::placement::NodeSpec;

/// The monitor's state (see the module documentation).
pub(crate) struct Monitor {
    names: Vec<String>,
    replicas: Vec<SocketAddr>,
    workers: usize,
    fenced: BTreeSet<usize>,
    last_complete: Option<u64>,
    max_requested: u64,
    max_aborted: u64,
    relinking: Option<u64>,
    /// Per epoch, the survivors told to recover into it, and those that
    /// answered.
    told: BTreeMap<u64, BTreeSet<usize>>,
    recovered: BTreeMap<u64, BTreeSet<usize>>,
    /// Checks made, for the report.
    pub(crate) checked: u64,
}

impl Monitor {
    pub(crate) fn new(names: Vec<String>, replicas: Vec<SocketAddr>, workers: usize) -> Self {
        Self {
            names,
            replicas,
            workers,
            fenced: BTreeSet::new(),
            last_complete: None,
            max_requested: 0,
            max_aborted: 0,
            relinking: None,
            told: BTreeMap::new(),
            recovered: BTreeMap::new(),
            checked: 0,
        }
    }

    fn index(&self, name: &str) -> Option<usize> {
        self.names.iter().position(|n| n == name)
    }

    /// Takes one journal entry; the invariant it breaks, if one.
    pub(crate) fn see(&mut self, j: &Journal) -> Result<(), String> {
        self.checked += 1;
        match j {
            Journal::Fence(i) => {
                self.fenced.insert(*i);
            }
            Journal::Event(e) => self.event(e)?,
            Journal::Received(i, Msg::Recovered { epoch }) => {
                self.recovered.entry(*epoch).or_default().insert(*i);
            }
            Journal::Received(..) => {}
            Journal::Sent(to, msg) => self.sent(*to, msg)?,
        }
        Ok(())
    }

    fn event(&mut self, e: &str) -> Result<(), String> {
        let (verb, arg) = e.split_once(' ').unwrap_or((e, ""));
        let num = || arg.parse::<u64>().map_err(|_| format!("event `{e}`: not a number"));
        match verb {
            "failed" => {
                if let Some(i) = self.index(arg) {
                    self.fenced.insert(i);
                }
            }
            "rejoined" => {
                if let Some(i) = self.index(arg) {
                    self.fenced.remove(&i);
                }
            }
            "requested" => {
                let id = num()?;
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
            "checkpoint" => {
                let id = num()?;
                if id > self.max_requested {
                    return Err(format!(
                        "checkpoint {id} completed, but {} is the last requested",
                        self.max_requested
                    ));
                }
                self.last_complete = Some(id);
            }
            "relinking" => self.relinking = Some(num()?),
            "joining" | "deployed" => self.relinking = None,
            _ => {}
        }
        Ok(())
    }

    fn placement(&self, epoch: u64, nodes: &[NodeSpec]) -> Result<(), String> {
        for n in nodes {
            match self.index(&n.name) {
                Some(i) if self.fenced.contains(&i) => {
                    return Err(format!("epoch {epoch} places fenced node {}", n.name));
                }
                Some(_) => {}
                None => return Err(format!("epoch {epoch} places unknown node {}", n.name)),
            }
        }
        let workers: usize = nodes.iter().map(|n| n.workers).sum();
        if workers != self.workers {
            return Err(format!("epoch {epoch} places {workers} workers, the job has {}", self.workers));
        }
        Ok(())
    }

    fn sent(&mut self, to: usize, msg: &Msg) -> Result<(), String> {
        let name = self.names.get(to).cloned().unwrap_or_default();
        if self.fenced.contains(&to) && !matches!(msg, Msg::Release | Msg::Stop { .. }) {
            return Err(format!("sent {} to fenced node {name}", short(msg)));
        }
        let own = self.replicas.get(to).copied();
        match msg {
            Msg::Deploy(d) => self.deploy(&name, own, d)?,
            Msg::Recover { epoch, checkpoint, aborted, nodes, replicas, .. } => {
                self.placement(*epoch, nodes)?;
                if own.is_some_and(|a| replicas.contains(&a)) {
                    return Err(format!("node {name} backs up its own checkpoints"));
                }
                if *checkpoint != self.last_complete.unwrap_or(0) {
                    return Err(format!(
                        "epoch {epoch} recovers from checkpoint {checkpoint}, the last complete is {:?}",
                        self.last_complete
                    ));
                }
                if *aborted < self.max_requested {
                    return Err(format!(
                        "epoch {epoch} voids checkpoints up to {aborted}, but {} was requested",
                        self.max_requested
                    ));
                }
                self.max_aborted = self.max_aborted.max(*aborted);
                self.told.entry(*epoch).or_default().insert(to);
            }
            _ => {}
        }
        Ok(())
    }

    fn deploy(&mut self, name: &str, own: Option<SocketAddr>, d: &Deployment) -> Result<(), String> {
        self.placement(d.epoch, &d.nodes)?;
        if own.is_some_and(|a| d.replicas.contains(&a)) {
            return Err(format!("node {name} backs up its own checkpoints"));
        }
        let restores = d.restore.as_ref().map(|m| m.id);
        if restores != self.last_complete {
            return Err(format!(
                "epoch {} restores {restores:?}, the last complete checkpoint is {:?}",
                d.epoch, self.last_complete
            ));
        }
        if d.aborted < self.max_requested {
            return Err(format!(
                "epoch {} voids checkpoints up to {}, but {} was requested",
                d.epoch, d.aborted, self.max_requested
            ));
        }
        self.max_aborted = self.max_aborted.max(d.aborted);
        for (w, a) in &d.fetch {
            let holder = self.replicas.iter().position(|r| r == a);
            if holder.is_none_or(|h| self.fenced.contains(&h)) {
                return Err(format!("{name} fetches worker {w}'s part from {a}, not a live node"));
            }
        }
        if d.join.is_some() {
            let told = self.told.get(&d.epoch).cloned().unwrap_or_default();
            let answered = self.recovered.get(&d.epoch).cloned().unwrap_or_default();
            let pending: Vec<&String> =
                told.iter().filter(|j| !answered.contains(j)).filter_map(|&j| self.names.get(j)).collect();
            if told.is_empty() || !pending.is_empty() {
                return Err(format!("{name} joins epoch {} before survivors {pending:?} re-linked", d.epoch));
            }
        }
        Ok(())
    }
}

/// A message, shortly.
fn short(msg: &Msg) -> String {
    let s = format!("{msg:?}");
    s.chars().take(80).collect()
}
