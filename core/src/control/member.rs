//! A member node's side of the control connection: registers with the
//! coordinator, then runs the node's agent as the coordinator says.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use spate_net::{Connection, NetErrorKind};

use crate::control::agent::{Exit, NodeAgent};
use crate::control::msg::Msg;
use crate::control::peer::{ctl_name, Peer};
use crate::control::placement::ClusterPlacement;
use crate::remote::net_config;

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
