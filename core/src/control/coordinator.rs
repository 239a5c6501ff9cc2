//! The coordinator's driver: the control connections to the other nodes,
//! its own node's agent, and the [`Plan`] that decides.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use spate_net::hello::Rejection;
use spate_net::Listener;

use crate::control::agent::NodeAgent;
use crate::control::msg::Msg;
use crate::control::peer::Peer;
use crate::control::placement::ClusterPlacement;
use crate::control::plan;
use crate::control::report::{unix_ms, Event, NodeReport};

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
