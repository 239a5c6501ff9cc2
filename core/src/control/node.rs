//! One node of a cluster job ([`Node`]): its listener, its agent, and its
//! role — the coordinator, or a member connected to it — turned one step
//! at a time. The listener is served on every turn: a control connection
//! (`ctl:<node>`) or a request of `spate ctl` (`adm:<n>`) goes to the
//! coordinator, a worker link (`<from>><to>@<epoch>`) or a handoff's parcel
//! (`hand:v<version>@<epoch>`) to the agent, anything else is refused. The
//! same code runs in production ([`Node::run`], on [`Os`]) and in the
//! simulator (on its own [`Env`]).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::config::RuntimeConfig;
use crate::control::agent::{Exit, NodeAgent};
use crate::control::coordinator::{Coordinator, Outcome};
use crate::control::env::{Build, Env, Os};
use crate::control::error::ControlError;
use crate::control::member::{Member, MemberTimeouts};
use crate::control::msg::Msg;
use crate::control::placement::ClusterPlacement;
use crate::control::plan::PlanConfig;
use crate::control::report::NodeReport;
use crate::time::now;

/// Connections a node takes from its listener in one turn.
const ACCEPTS_PER_TURN: usize = 16;

/// How long a coordinator that ended the job keeps pushing its last
/// messages out.
const FLUSH_MAX: Duration = Duration::from_secs(2);

/// What a node is started with.
pub struct NodeSetup {
    /// The query (the dataflow's name) and its build function.
    pub query: String,
    /// The dataflow's build function.
    pub build: Build,
    /// The runtime config of this node's workers.
    pub rc: RuntimeConfig,
    /// Every node of the config and which one this is.
    pub placement: ClusterPlacement,
    /// Which nodes are spares (config order).
    pub spares: Vec<bool>,
    /// The coordinator's node.
    pub coordinator: usize,
    /// The coordinator's plan settings (used on the coordinator's node).
    pub plan: PlanConfig,
    /// This process's life (see [`Msg::Register`]).
    pub incarnation: u64,
    /// This node's replica service.
    pub replica: SocketAddr,
    /// No progress lines.
    pub quiet: bool,
    /// On the coordinator: print the job's events as JSON lines on stdout.
    pub events: bool,
}

/// How a node's run ended.
#[derive(Debug)]
pub struct NodeEnd {
    /// Its report of the last epoch it ran to the end, if any.
    pub report: Option<NodeReport>,
    /// On the coordinator: every node's report and the job's events.
    pub outcome: Option<Outcome>,
}

enum Role<E: Env> {
    Coordinator(Box<Coordinator<E>>),
    Member(Box<Member<E>>),
}

/// One node (see the module documentation).
pub struct Node<E: Env> {
    env: E,
    agent: NodeAgent<E>,
    role: Role<E>,
    /// Refused connections, logged rate-limited (decision 47).
    refusals: crate::refusals::RefusalLog,
}

impl<E: Env> Node<E> {
    /// Node `setup.placement.me` in `env`, at `now`.
    pub fn new(env: E, setup: NodeSetup, now: Instant) -> Self {
        let p = &setup.placement;
        let me = p.me;
        let name = p.nodes[me].name.clone();
        let role = if me == setup.coordinator {
            let mut c = Coordinator::new(p, &setup.spares, setup.plan, setup.quiet, now);
            c.register_self(setup.incarnation, p.nodes[me].workers, setup.replica, now);
            if setup.events {
                c.print_events();
            }
            Role::Coordinator(Box::new(c))
        } else {
            let spare = setup.spares.get(me).copied().unwrap_or(false);
            let register = Msg::Register {
                incarnation: setup.incarnation,
                workers: p.nodes[me].workers,
                replica: setup.replica,
            };
            Role::Member(Box::new(Member::new(
                &name,
                p.nodes[setup.coordinator].addr,
                p.cluster,
                register,
                MemberTimeouts {
                    connect: p.connect_timeout,
                    failure: Duration::from_millis(setup.plan.failure_timeout_ms),
                    // A spare waits as long as the job runs.
                    first_deploy_within: (!spare).then_some(p.connect_timeout * 2),
                },
                now,
            )))
        };
        let agent = NodeAgent::new(&setup.query, setup.build, setup.rc, setup.placement, setup.quiet);
        Self { env, agent, role, refusals: crate::refusals::RefusalLog::new() }
    }

    /// The node's agent.
    pub fn agent(&self) -> &NodeAgent<E> {
        &self.agent
    }

    /// The node's agent, to configure.
    pub fn agent_mut(&mut self) -> &mut NodeAgent<E> {
        &mut self.agent
    }

    /// The node's environment.
    pub fn env(&mut self) -> &mut E {
        &mut self.env
    }

    /// The coordinator, on its node.
    pub fn coordinator(&self) -> Option<&Coordinator<E>> {
        match &self.role {
            Role::Coordinator(c) => Some(c),
            Role::Member(_) => None,
        }
    }

    /// The coordinator, on its node (to set its scaling policy; core's
    /// tests take its journal).
    pub fn coordinator_mut(&mut self) -> Option<&mut Coordinator<E>> {
        match &mut self.role {
            Role::Coordinator(c) => Some(c),
            Role::Member(_) => None,
        }
    }

    /// One turn at `now`: the listener, then the coordinator's or the
    /// member's turn (which moves the agent). `Ok(Some(_))`: the node is
    /// through (the job ended); `Err`: it stops with that error.
    pub fn turn(&mut self, now: Instant) -> Result<Option<NodeEnd>, ControlError> {
        // A replica service that died serves nobody's backups: this node
        // fails, as a node the cluster lost (decision 44).
        if let Some(p) = self.agent.replica_panicked() {
            return Err(ControlError::Panicked(p.clone()));
        }
        self.accept();
        match &mut self.role {
            Role::Coordinator(c) => match c.turn(&mut self.env, &mut self.agent, now)? {
                Some(outcome) => {
                    Ok(Some(NodeEnd { report: self.agent.report().cloned(), outcome: Some(outcome) }))
                }
                None => Ok(None),
            },
            Role::Member(m) => match m.turn(&mut self.env, &mut self.agent, now)? {
                Some(Exit::Released) => {
                    Ok(Some(NodeEnd { report: self.agent.report().cloned(), outcome: None }))
                }
                None => Ok(None),
            },
        }
    }

    /// After the end, on the coordinator: pushes the last messages out;
    /// whether all are out.
    pub fn flush(&mut self, now: Instant) -> bool {
        match &mut self.role {
            Role::Coordinator(c) => c.flush(now),
            Role::Member(_) => true,
        }
    }

    /// Serves the listener (see the module documentation).
    fn accept(&mut self) {
        for _ in 0..ACCEPTS_PER_TURN {
            let (agent, role) = (&self.agent, &self.role);
            let mut admit = |name: &str| {
                if name.starts_with("ctl:") || name.starts_with("adm:") {
                    match role {
                        Role::Coordinator(c) => c.admit(name),
                        Role::Member(_) => Err(spate_net::hello::Rejection::UnknownNode),
                    }
                } else if name.starts_with("hand:") {
                    agent.admit_parcel(name)
                } else {
                    agent.admit_link(name)
                }
            };
            match self.env.poll_accept(&mut admit) {
                Ok(Some(conn)) => {
                    let name = crate::link::Conn::peer_node(&conn).to_string();
                    if name.starts_with("ctl:") || name.starts_with("adm:") {
                        if let Role::Coordinator(c) = &mut self.role {
                            c.take(&name, conn);
                        }
                    } else if name.starts_with("hand:") {
                        self.agent.take_parcel(&mut self.env, &name, conn);
                    } else {
                        self.agent.take_link(&name, conn);
                    }
                }
                Ok(None) => break,
                // One bad peer does not stop the others.
                Err(e) => {
                    let name = self.agent.name();
                    if let Some(line) = self
                        .refusals
                        .refused(now(), || format!("spate: node {name}: refused a connection: {e}"))
                    {
                        self.env.log(&line);
                    }
                }
            }
        }
    }
}

impl Node<Os> {
    /// Runs the node until the job ends (or it fails), a turn every
    /// millisecond.
    ///
    /// A panic of the control plane (the coordinator, the member, the
    /// agent) is caught here, once around the loop, and ends the node with
    /// [`ControlError::Panicked`]: its process exits with an error, and
    /// the cluster sees a failed node (decision 44).
    pub fn run(&mut self) -> Result<NodeEnd, ControlError> {
        let end = crate::panic::catch(Some("running the node's control plane"), || loop {
            match self.turn(now()) {
                Ok(Some(end)) => break Ok(end),
                Ok(None) => {}
                Err(e) => break Err(e),
            }
            std::thread::sleep(Duration::from_millis(1));
        });
        let end = match end {
            Ok(end) => end,
            // Its state is not to be trusted: nothing more is flushed.
            Err(p) => return Err(ControlError::Panicked(p)),
        };
        let t = now();
        while !self.flush(now()) && now().saturating_duration_since(t) < FLUSH_MAX {
            std::thread::sleep(Duration::from_millis(1));
        }
        end
    }
}
