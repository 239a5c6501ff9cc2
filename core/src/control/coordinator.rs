//! The coordinator's driver ([`Coordinator`]): the control connections to
//! the other nodes, its own node's agent, and the [`Plan`] that decides.
//!
//! Each turn feeds the plan what arrived (messages, what was heard from
//! whom, lost connections, the time) and carries out the plan's actions
//! (send, fence, report, finish, fail). First every node of the config
//! must register (or the connect timeout passes: the error names the
//! missing nodes); later a node whose earlier incarnation failed may
//! register again, as a spare. Nothing here blocks.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Instant;

use spate_net::hello::Rejection;

use crate::control::agent::NodeAgent;
use crate::control::env::Env;
use crate::control::error::ControlError;
use crate::control::msg::Msg;
use crate::control::peer::Peer;
use crate::control::placement::ClusterPlacement;
use crate::control::plan::{Action, Plan, PlanConfig};
use crate::control::report::{Event, NodeReport};
use crate::time::unix_ms;

/// Connections a node may have open to the coordinator before it
/// registers on one of them (its restarts are a few at a time at most).
const CANDIDATES_PER_NODE: usize = 4;

/// `spate ctl` connections open at once.
const ADMINS_MAX: usize = 8;

/// What the coordinator heard and did, in order, for the simulator's
/// monitor of the plan (core's tests only).
#[cfg(test)]
#[derive(Debug, Clone)]
pub(crate) enum Journal {
    /// A message from node `.0` went into the plan.
    Received(usize, Msg),
    /// The plan sent a message to node `.0`.
    Sent(usize, Msg),
    /// An event of the plan.
    Event(String),
    /// The plan fenced node `.0`.
    Fence(usize),
}

/// How the job ended on the coordinator.
#[derive(Debug)]
pub struct Outcome {
    /// Every node's report of its last epoch.
    pub reports: Vec<NodeReport>,
    /// The events, in order.
    pub events: Vec<Event>,
}

/// The coordinator's driver (see the module documentation).
pub struct Coordinator<E: Env> {
    plan: Plan,
    names: Vec<String>,
    /// Registered nodes' control connections.
    peers: BTreeMap<usize, Peer<E::Conn>>,
    /// Connections not registered on yet.
    candidates: Vec<(usize, Peer<E::Conn>)>,
    me: usize,
    started: Instant,
    /// Registration ends by then (`None`: the job was deployed).
    registering: Option<Instant>,
    connect_timeout: std::time::Duration,
    /// Messages for the coordinator's own node.
    own: Vec<Msg>,
    /// The plan's actions taken early (while a registration was handled),
    /// carried out at the next step.
    deferred: Vec<Action>,
    events: Vec<Event>,
    quiet: bool,
    /// Print each event as a JSON line on stdout when it happens.
    print_events: bool,
    /// The job ended: the last message went to every node.
    ended: bool,
    /// `spate ctl` connections (`adm:<n>`), by id.
    admins: BTreeMap<u64, Peer<E::Conn>>,
    next_admin: u64,
    #[cfg(test)]
    pub(crate) journal: Vec<Journal>,
}

impl<E: Env> Coordinator<E> {
    /// The coordinator of `placement` (node `placement.me`), whose nodes
    /// are spares as `spares` says, before any node registered.
    pub fn new(
        placement: &ClusterPlacement,
        spares: &[bool],
        config: PlanConfig,
        quiet: bool,
        now: Instant,
    ) -> Self {
        let nodes: Vec<(String, SocketAddr, usize, bool)> = placement
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.name.clone(), n.addr, n.workers, spares.get(i).copied().unwrap_or(false)))
            .collect();
        Self {
            plan: Plan::new(&nodes, placement.me, config),
            names: placement.nodes.iter().map(|n| n.name.clone()).collect(),
            peers: BTreeMap::new(),
            candidates: Vec::new(),
            me: placement.me,
            started: now,
            registering: Some(now + placement.connect_timeout),
            connect_timeout: placement.connect_timeout,
            own: Vec::new(),
            deferred: Vec::new(),
            events: Vec::new(),
            quiet,
            print_events: false,
            ended: false,
            admins: BTreeMap::new(),
            next_admin: 0,
            #[cfg(test)]
            journal: Vec::new(),
        }
    }

    /// Registers the coordinator's own node: its incarnation, workers and
    /// replica service.
    pub fn register_self(&mut self, incarnation: u64, workers: usize, replica: SocketAddr, now: Instant) {
        let t = self.ms(now);
        if let Err(e) = self.plan.register(self.me, incarnation, workers, replica, t) {
            eprintln!("coordinator: {e}");
        }
    }

    /// Prints each event as a JSON line on stdout as it happens.
    pub fn print_events(&mut self) {
        self.print_events = true;
    }

    /// The plan (for tests and the simulator's checks).
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// The events so far.
    pub fn events(&self) -> &[Event] {
        &self.events
    }

    /// Takes what the journal recorded since the last call.
    #[cfg(test)]
    pub(crate) fn take_journal(&mut self) -> Vec<Journal> {
        std::mem::take(&mut self.journal)
    }

    fn ms(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.started).as_millis() as u64
    }

    /// Drives `config`'s scaling policy from the nodes' load reports
    /// (see [`Plan::set_scaling`]).
    pub fn set_scaling(&mut self, config: crate::control::scaling::ScalingConfig) {
        self.plan.set_scaling(config);
    }

    /// Whether a control connection announcing `name` (`ctl:<node>`) is
    /// taken.
    pub fn admit(&self, name: &str) -> Result<(), Rejection> {
        if name.starts_with("adm:") {
            return if self.ended || self.admins.len() >= ADMINS_MAX {
                Err(Rejection::DuplicateNode)
            } else {
                Ok(())
            };
        }
        let Some(node) = name.strip_prefix("ctl:") else { return Err(Rejection::UnknownNode) };
        match self.plan.index(node) {
            Some(i) if i == self.me => Err(Rejection::UnknownNode),
            Some(i) if self.candidates.iter().filter(|(j, _)| *j == i).count() >= CANDIDATES_PER_NODE => {
                Err(Rejection::DuplicateNode)
            }
            Some(_) if self.ended => Err(Rejection::UnknownNode),
            Some(_) => Ok(()),
            None => Err(Rejection::UnknownNode),
        }
    }

    /// The control connection announcing `name`, which [`Coordinator::admit`]
    /// took, is up: it waits for its node's registration.
    pub fn take(&mut self, name: &str, conn: E::Conn) {
        if name.starts_with("adm:") {
            self.next_admin += 1;
            self.admins.insert(self.next_admin, Peer::new(name.to_string(), conn));
            return;
        }
        let node = name.trim_start_matches("ctl:").to_string();
        if let Some(i) = self.plan.index(&node) {
            self.candidates.push((i, Peer::new(node, conn)));
        }
    }

    /// One turn (see the module documentation). `Ok(Some(_))`: the job is
    /// done; `Err`: it failed (every node was told to stop).
    pub fn turn(
        &mut self,
        env: &mut E,
        agent: &mut NodeAgent<E>,
        now: Instant,
    ) -> Result<Option<Outcome>, ControlError> {
        if self.ended {
            return Ok(None);
        }
        let t = self.ms(now);
        self.poll_candidates(now, t);
        if let Some(deadline) = self.registering {
            let missing: Vec<String> = self
                .plan
                .missing()
                .into_iter()
                .filter(|n| *n != self.names[self.me])
                .map(str::to_string)
                .collect();
            if !missing.is_empty() {
                if now >= deadline {
                    let e = ControlError::NotRegistered {
                        coordinator: self.names[self.me].clone(),
                        after: self.connect_timeout,
                        missing,
                    };
                    self.end(env, agent, Msg::Stop { reason: e.to_string() }, now);
                    return Err(e);
                }
                return Ok(None);
            }
            self.registering = None;
            self.plan.start(t);
        }
        match self.step(env, agent, now, t) {
            Ok(None) => Ok(None),
            Ok(Some(reports)) => {
                self.end(env, agent, Msg::Release, now);
                Ok(Some(Outcome { reports, events: std::mem::take(&mut self.events) }))
            }
            Err(e) => {
                self.end(env, agent, Msg::Stop { reason: e.to_string() }, now);
                Err(e)
            }
        }
    }

    /// Connections waiting for their node's registration.
    fn poll_candidates(&mut self, now: Instant, t: u64) {
        let mut i = 0;
        while i < self.candidates.len() {
            let (node, p) = &mut self.candidates[i];
            let node = *node;
            if p.poll(now).is_err() || p.closed {
                self.candidates.swap_remove(i);
                continue;
            }
            let Some(pos) = p.inbox.iter().position(|m| matches!(m, Msg::Register { .. })) else {
                if let Some(m) = p.inbox.first() {
                    eprintln!(
                        "coordinator: {}",
                        ControlError::NotYetRegistered { node: p.node.clone(), what: format!("{m:?}") }
                    );
                    self.candidates.swap_remove(i);
                    continue;
                }
                i += 1;
                continue;
            };
            let (_, mut p) = self.candidates.swap_remove(i);
            let msg = p.inbox.remove(pos);
            #[cfg(test)]
            self.journal.push(Journal::Received(node, msg.clone()));
            let Msg::Register { incarnation, workers, replica } = msg else { continue };
            match self.plan.register(node, incarnation, workers, replica, t) {
                Ok(()) => {
                    // A restarted node's old incarnation is fenced first:
                    // its connection goes before the new one takes its
                    // place.
                    for a in self.plan.take_actions() {
                        if matches!(a, Action::Fence { node: n, .. } if n == node) {
                            self.peers.remove(&node);
                            continue;
                        }
                        self.deferred.push(a);
                    }
                    self.peers.insert(node, p);
                }
                Err(e) => eprintln!("coordinator: refused a registration: {e}"),
            }
        }
    }

    /// One pass of the running job: the peers' messages and liveness into
    /// the plan, the own node's too, the plan's timers, then its actions.
    fn step(
        &mut self,
        env: &mut E,
        agent: &mut NodeAgent<E>,
        now: Instant,
        t: u64,
    ) -> Result<Option<Vec<NodeReport>>, ControlError> {
        let ids: Vec<usize> = self.peers.keys().copied().collect();
        for i in ids {
            let Some(p) = self.peers.get_mut(&i) else { continue };
            let polled = p.poll(now);
            let msgs = std::mem::take(&mut p.inbox);
            let heard = p.conn_last_heard_ms(self.started);
            let closed = p.closed;
            self.plan.heard(i, heard);
            for m in msgs {
                #[cfg(test)]
                self.journal.push(Journal::Received(i, m.clone()));
                self.plan.message(i, m, t);
            }
            if let Err(e) = polled {
                self.plan.connection_lost(i, &e.to_string(), t);
            } else if closed {
                self.plan.connection_lost(i, "its control connection closed", t);
            }
        }
        self.poll_admins(now, t);
        let mut out = Vec::new();
        agent.poll(env, &mut out);
        for m in out {
            #[cfg(test)]
            self.journal.push(Journal::Received(self.me, m.clone()));
            self.plan.message(self.me, m, t);
        }
        self.plan.tick(t);
        let mut done = None;
        // Actions can lead to more (a failed send is a lost connection), and
        // the own node's answers go back into the plan.
        let mut first = std::mem::take(&mut self.deferred);
        loop {
            let mut actions = std::mem::take(&mut first);
            actions.extend(self.plan.take_actions());
            if actions.is_empty() && self.own.is_empty() {
                break;
            }
            for a in actions {
                #[cfg(test)]
                self.journal.push(match &a {
                    Action::Send { to, msg } => Journal::Sent(*to, (**msg).clone()),
                    Action::Fence { node, .. } => Journal::Fence(*node),
                    Action::Event(e) => Journal::Event(e.clone()),
                    other => Journal::Event(format!("{other:?}")),
                });
                match a {
                    Action::Send { to, msg } if to == self.me => self.own.push(*msg),
                    Action::Send { to, msg } => {
                        if let Some(p) = self.peers.get_mut(&to) {
                            if let Err(e) = p.send(&msg, now) {
                                self.plan.connection_lost(to, &e.to_string(), t);
                            }
                        }
                    }
                    Action::Fence { node, .. } => {
                        // Its control connection goes; it is never deployed
                        // again, and worker links carry the epoch.
                        self.peers.remove(&node);
                    }
                    Action::Event(what) => self.event(what),
                    Action::Note(line) => env.log(&format!("coordinator: {line}")),
                    Action::Finish(reports) => done = Some(reports),
                    Action::Reply { admin, ok, text } => {
                        if let Some(p) = self.admins.get_mut(&admin) {
                            if p.send(&Msg::Reply { ok, text }, now).is_err() {
                                self.admins.remove(&admin);
                            }
                        }
                    }
                    Action::Fail(reason) => return Err(ControlError::Job(reason)),
                }
            }
            let mut out = Vec::new();
            for m in std::mem::take(&mut self.own) {
                agent.handle(env, m, &mut out)?;
            }
            for m in out {
                #[cfg(test)]
                self.journal.push(Journal::Received(self.me, m.clone()));
                self.plan.message(self.me, m, t);
            }
        }
        Ok(done)
    }

    /// `spate ctl` connections: their requests into the plan; a closed or
    /// broken one, or one that sends anything but a request, goes.
    fn poll_admins(&mut self, now: Instant, t: u64) {
        let ids: Vec<u64> = self.admins.keys().copied().collect();
        for id in ids {
            let Some(p) = self.admins.get_mut(&id) else { continue };
            let polled = p.poll(now);
            let msgs = std::mem::take(&mut p.inbox);
            let gone = polled.is_err() || p.closed;
            for m in msgs {
                match m {
                    Msg::Control { request } => self.plan.control(id, &request, t),
                    other => {
                        eprintln!("coordinator: a `spate ctl` connection sent {other:?}: dropped");
                        self.admins.remove(&id);
                        break;
                    }
                }
            }
            if gone {
                self.admins.remove(&id);
            }
        }
    }

    /// The job ended: `last` goes to every node, the own one included.
    fn end(&mut self, env: &mut E, agent: &mut NodeAgent<E>, last: Msg, now: Instant) {
        self.ended = true;
        for p in self.peers.values_mut() {
            let _ = p.send(&last, now);
        }
        let _ = agent.handle(env, last, &mut Vec::new());
    }

    /// After the end: pushes the last messages out; whether all are out
    /// (or their peers gone).
    pub fn flush(&mut self, now: Instant) -> bool {
        let mut all = true;
        for p in self.peers.values_mut() {
            if p.poll(now).is_err() || p.closed {
                continue;
            }
            all &= p.is_flushed();
        }
        all
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
