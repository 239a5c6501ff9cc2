//! A member node's side of the control connection ([`Member`]): connects
//! to the coordinator (retrying while it does not listen yet), registers
//! this incarnation of the node, then hands the coordinator's messages to
//! the node's agent and the agent's answers back, one turn at a time. A
//! coordinator that closes the connection or stays silent stops the node.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use spate_net::NetErrorKind;

use crate::control::agent::{Exit, NodeAgent};
use crate::control::env::Env;
use crate::control::error::ControlError;
use crate::control::msg::Msg;
use crate::control::peer::{ctl_name, Peer};

/// How long a connection attempt to a coordinator that does not listen
/// yet waits before the next.
const RETRY: Duration = Duration::from_millis(20);

/// Where the member's connection stands.
enum Link<E: Env> {
    /// Not connected; the next attempt at this time.
    Idle(Instant),
    /// Connecting.
    Connecting(E::Connecting),
    /// Connected and registered.
    Up(Peer<E::Conn>),
}

/// A member node's connection to the coordinator (see the module
/// documentation).
pub struct Member<E: Env> {
    node: String,
    coordinator: SocketAddr,
    cluster: u64,
    register: Msg,
    link: Link<E>,
    /// Connecting gives up at this time.
    deadline: Instant,
    /// The coordinator is declared lost after this much silence.
    timeout: Duration,
    /// A node that got no deployment by then stops (`None`: a spare, which
    /// waits as long as the job runs).
    first_deploy_by: Option<Instant>,
    deployed: bool,
}

/// How long a [`Member`] waits.
#[derive(Clone, Copy, Debug)]
pub struct MemberTimeouts {
    /// For the coordinator to listen.
    pub connect: Duration,
    /// The coordinator's failure timeout: silence longer than this (plus
    /// `connect`) means the coordinator is lost.
    pub failure: Duration,
    /// For the first deployment (`None`: a spare, which waits as long as
    /// the job runs).
    pub first_deploy_within: Option<Duration>,
}

impl<E: Env> Member<E> {
    /// A member `node` of job `cluster` that will register with the
    /// coordinator at `coordinator` by `register` (a [`Msg::Register`]),
    /// waiting as [`MemberTimeouts`] say.
    pub fn new(
        node: &str,
        coordinator: SocketAddr,
        cluster: u64,
        register: Msg,
        timeouts: MemberTimeouts,
        now: Instant,
    ) -> Self {
        let MemberTimeouts { connect: connect_timeout, failure: failure_timeout, first_deploy_within } =
            timeouts;
        Self {
            node: node.to_string(),
            coordinator,
            cluster,
            register,
            link: Link::Idle(now),
            deadline: now + connect_timeout,
            // Allow for a coordinator busy with its own share's set-up.
            timeout: failure_timeout + connect_timeout,
            first_deploy_by: first_deploy_within.map(|d| now + d),
            deployed: false,
        }
    }

    /// One turn: connects and registers, or hands the coordinator's
    /// messages to `agent` and sends its answers. `Ok(Some(_))`: released.
    pub fn turn(
        &mut self,
        env: &mut E,
        agent: &mut NodeAgent<E>,
        now: Instant,
    ) -> Result<Option<Exit>, ControlError> {
        let unreachable = |node: &str, e| ControlError::Unreachable {
            node: node.to_string(),
            coordinator: self.coordinator,
            source: e,
        };
        match &mut self.link {
            Link::Idle(at) => {
                if now >= *at {
                    let c = env
                        .connect(self.coordinator, ctl_name(&self.node), self.cluster, self.deadline)
                        .map_err(|e| unreachable(&self.node, e))?;
                    self.link = Link::Connecting(c);
                }
                return Ok(None);
            }
            Link::Connecting(c) => {
                match env.poll_connecting(c) {
                    Ok(Some(conn)) => {
                        let mut peer = Peer::new("coordinator".into(), conn);
                        peer.send(&self.register, now)?;
                        self.link = Link::Up(peer);
                    }
                    Ok(None) => {}
                    Err(e) if matches!(e.kind, NetErrorKind::Connect(_)) && now < self.deadline => {
                        self.link = Link::Idle(now + RETRY);
                    }
                    Err(e) => return Err(unreachable(&self.node, e)),
                }
                return Ok(None);
            }
            Link::Up(_) => {}
        }
        let Link::Up(peer) = &mut self.link else { return Ok(None) };
        peer.poll(now)?;
        let mut out = Vec::new();
        while !peer.inbox.is_empty() {
            let msg = peer.inbox.remove(0);
            self.deployed |= matches!(msg, Msg::Deploy(_));
            match agent.handle(env, msg, &mut out) {
                Ok(Some(Exit::Released)) => return Ok(Some(Exit::Released)),
                Ok(None) => {}
                Err(e) => return Err(e.into()),
            }
        }
        // A node that was stopped (SIGSTOP, a long stall) and finds its
        // coordinator gone or silent starts nothing more: the job it was
        // part of fenced it, and a share it would start now (a sink that
        // opens its file) could only harm the live one.
        if peer.closed {
            agent.stop_job();
            return Err(ControlError::CoordinatorClosed);
        }
        let silent = peer.silent(now);
        if silent > self.timeout {
            agent.stop_job();
            return Err(ControlError::CoordinatorSilent { silent });
        }
        agent.poll(env, &mut out);
        for m in out.drain(..) {
            peer.send(&m, now)?;
        }
        if let Some(by) = self.first_deploy_by {
            if !self.deployed && now > by {
                return Err(ControlError::NoDeployment {
                    within: by.saturating_duration_since(self.deadline),
                });
            }
        }
        Ok(None)
    }
}
