//! The control plane of a multi-process job: one node is the coordinator.
//!
//! 1. Every other node opens a control connection to the coordinator (its
//!    `Hello` names it `ctl:<node>`; unknown or duplicate nodes are
//!    refused) and registers with the number of workers it runs.
//! 2. Once every node of the config has registered (or the connect timeout
//!    passes: the error names the missing nodes), the coordinator computes
//!    the placement — the nodes in config order with their registered
//!    workers — and deploys it to every node (`Deploy`).
//! 3. Each node starts its share of the job on that placement (the job
//!    begins when its worker links are connected).
//! 4. While the job runs, control connections carry heartbeats both ways;
//!    a node silent for `failure_timeout_ms` is declared failed (recovery
//!    comes with issue 5: today the job stops with an error naming it).
//! 5. Each node reports its counts (`Report`); the coordinator prints the
//!    totals.
//!
//! Messages are control frames with small text payloads.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use spate_core::remote::{net_config, ClusterPlacement, NodeSpec};
use spate_net::frame::Kind;
use spate_net::hello::Rejection;
use spate_net::{Connection, Delivery, Listener, NetErrorKind};

use crate::deploy::NodeReport;

/// A node's control connections: to the coordinator, or (on the
/// coordinator) to every other node.
pub struct ControlPlane {
    peers: Vec<Peer>,
    failure_timeout: Duration,
    coordinator: bool,
}

struct Peer {
    node: String,
    conn: Connection,
    /// The peer closed its side.
    closed: bool,
    /// Messages received and not yet taken, in order.
    inbox: Vec<(Kind, String)>,
    report: Option<NodeReport>,
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
        let inbox = &mut self.inbox;
        let got = self.conn.poll_recv(16, |f| {
            inbox.push((f.header.kind, String::from_utf8_lossy(f.payload).into_owned()));
            Delivery::Consumed
        });
        match got {
            Ok(_) => self.conn.poll_heartbeat(now).map(|_| ()).map_err(err),
            Err(e) if ended(&e) => {
                self.closed = true;
                Ok(())
            }
            Err(e) => Err(err(e)),
        }
    }

    fn send(&mut self, kind: Kind, text: &str) -> Result<(), String> {
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

    /// Takes the first message of `kind`, if one arrived.
    fn take(&mut self, kind: Kind) -> Option<String> {
        let i = self.inbox.iter().position(|(k, _)| *k == kind)?;
        Some(self.inbox.remove(i).1)
    }
}

fn encode_placement(nodes: &[NodeSpec]) -> String {
    nodes.iter().map(|n| format!("node {} {} {}\n", n.name, n.addr, n.workers)).collect()
}

fn decode_placement(text: &str) -> Result<Vec<NodeSpec>, String> {
    text.lines()
        .map(|l| {
            let mut p = l.split(' ');
            match (p.next(), p.next(), p.next(), p.next()) {
                (Some("node"), Some(name), Some(addr), Some(workers)) => Ok(NodeSpec {
                    name: name.to_string(),
                    addr: addr.parse().map_err(|_| format!("deployment: bad address in `{l}`"))?,
                    workers: workers.parse().map_err(|_| format!("deployment: bad worker count in `{l}`"))?,
                }),
                _ => Err(format!("deployment: cannot read `{l}`")),
            }
        })
        .collect()
}

/// The coordinator: waits for every other node of `placement` to register,
/// then deploys the placement (with the registered worker counts) to them.
/// Returns the control plane and the placement to run.
pub fn coordinate(
    listener: &mut Listener,
    mut placement: ClusterPlacement,
    failure_timeout: Duration,
) -> Result<(ControlPlane, ClusterPlacement), String> {
    let deadline = Instant::now() + placement.connect_timeout;
    let me = placement.me;
    let expected: Vec<String> =
        placement.nodes.iter().enumerate().filter(|(i, _)| *i != me).map(|(_, n)| n.name.clone()).collect();
    let mut peers: Vec<Peer> = Vec::new();
    let mut registered: Vec<Option<usize>> = vec![None; placement.nodes.len()];
    loop {
        loop {
            let accepted = listener.poll_accept_with(|peer| {
                let Some(node) = peer.node.strip_prefix("ctl:") else { return Err(Rejection::UnknownNode) };
                if !expected.iter().any(|n| n == node) {
                    Err(Rejection::UnknownNode)
                } else if peers.iter().any(|p| p.node == node) {
                    Err(Rejection::DuplicateNode)
                } else {
                    Ok(())
                }
            });
            match accepted {
                Ok(Some(conn)) => {
                    let node = conn.peer().node.trim_start_matches("ctl:").to_string();
                    peers.push(Peer { node, conn, closed: false, inbox: Vec::new(), report: None });
                }
                Ok(None) => break,
                Err(e) => eprintln!("spate: refused a connection: {e}"),
            }
        }
        let now = Instant::now();
        for p in &mut peers {
            p.poll(now)?;
            if let Some(msg) = p.take(Kind::Report) {
                let workers = msg
                    .strip_prefix("register ")
                    .and_then(|w| w.parse::<usize>().ok())
                    .filter(|w| *w > 0)
                    .ok_or_else(|| format!("node `{}` registered with `{msg}`", p.node))?;
                if let Some(i) = placement.nodes.iter().position(|n| n.name == p.node) {
                    registered[i] = Some(workers);
                }
            }
        }
        let missing: Vec<&str> = placement
            .nodes
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != me && registered[*i].is_none())
            .map(|(_, n)| n.name.as_str())
            .collect();
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
    for (i, n) in placement.nodes.iter_mut().enumerate() {
        if let Some(w) = registered[i] {
            n.workers = w;
        }
    }
    let text = encode_placement(&placement.nodes);
    for p in &mut peers {
        p.send(Kind::Deploy, &text)?;
    }
    Ok((ControlPlane { peers, failure_timeout, coordinator: true }, placement))
}

/// A member: registers with the coordinator at `coordinator` as `node`
/// with `workers` workers and waits for the deployment.
pub fn register(
    coordinator: SocketAddr,
    node: &str,
    workers: usize,
    placement: &ClusterPlacement,
    failure_timeout: Duration,
) -> Result<(ControlPlane, ClusterPlacement), String> {
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
    let mut peer = Peer { node: "coordinator".into(), conn, closed: false, inbox: Vec::new(), report: None };
    peer.send(Kind::Report, &format!("register {workers}"))?;
    loop {
        peer.poll(Instant::now())?;
        if let Some(text) = peer.take(Kind::Deploy) {
            let nodes = decode_placement(&text)?;
            let me = nodes
                .iter()
                .position(|n| n.name == node)
                .ok_or_else(|| format!("node `{node}` is not in the deployment it received"))?;
            let placement = ClusterPlacement { nodes, me, ..placement.clone() };
            return Ok((ControlPlane { peers: vec![peer], failure_timeout, coordinator: false }, placement));
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "node `{node}`: no deployment from the coordinator within {:?}",
                placement.connect_timeout
            ));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

impl ControlPlane {
    /// Heartbeats and messages, while the job runs: an error names a node
    /// silent for longer than the failure timeout.
    pub fn poll(&mut self) -> Result<(), String> {
        let now = Instant::now();
        for p in &mut self.peers {
            p.poll(now)?;
            if let Some(text) = p.take(Kind::Report) {
                p.report = NodeReport::parse(&text);
            }
            if p.report.is_some() {
                continue;
            }
            if p.closed {
                return Err(format!("node `{}` closed its control connection without reporting", p.node));
            }
            let silent = now.saturating_duration_since(p.conn.last_heard());
            if silent > self.failure_timeout {
                return Err(format!(
                    "node `{}` silent for {} ms: declared failed",
                    p.node,
                    silent.as_millis()
                ));
            }
        }
        Ok(())
    }

    /// At the end of this node's job: a member reports `mine` to the
    /// coordinator; the coordinator waits for every member's report and
    /// returns them all (its own first).
    pub fn finish(mut self, mine: NodeReport) -> Result<Vec<NodeReport>, String> {
        if !self.coordinator {
            if let Some(p) = self.peers.first_mut() {
                p.send(Kind::Report, &mine.to_json())?;
            }
            return Ok(vec![mine]);
        }
        let mut all = vec![mine];
        while self.peers.iter().any(|p| p.report.is_none()) {
            self.poll()?;
            std::thread::sleep(Duration::from_millis(2));
        }
        all.extend(self.peers.iter_mut().filter_map(|p| p.report.take()));
        Ok(all)
    }
}
