//! What can go wrong in the control plane: why a node's control plane
//! stopped ([`ControlError`]), why a control message does not read
//! ([`MsgError`], [`MsgFault`]), why a node's agent cannot run what the
//! coordinator asked ([`AgentError`]) or fetch a checkpoint's parts
//! ([`FetchError`]), and why the coordinator fails the job
//! ([`JobFailure`]) or refuses a registration ([`RegisterError`]). Each
//! variant names the node, the address, the epoch, the checkpoint or the
//! worker it concerns.

use std::error::Error;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use spate_net::NetError;
use spate_state::StateError;

use super::detector::Fenced;
use super::msg::Msg;
pub use super::msg::{MsgError, MsgFault};
use crate::link::MeshError;
use crate::panic::ThreadPanic;
use crate::replica::ReplicaError;
use crate::runtime::{RecoverError, RuntimeError};

/// Why a node's control plane stopped (see the module documentation).
#[derive(Debug)]
#[non_exhaustive]
pub enum ControlError {
    /// The control connection to `node` failed.
    Connection {
        /// The peer (`coordinator` on a member node).
        node: String,
        /// What the connection said.
        source: NetError,
    },
    /// `node` sent a control message that cannot be read.
    Malformed {
        /// The peer.
        node: String,
        /// What is wrong with it.
        source: MsgError,
    },
    /// `node` took none of the `queued` control messages for too long.
    Stuck {
        /// The peer.
        node: String,
        /// Messages waiting.
        queued: usize,
    },
    /// A member node could not reach the coordinator.
    Unreachable {
        /// This node.
        node: String,
        /// The coordinator's address.
        coordinator: SocketAddr,
        /// Why.
        source: NetError,
    },
    /// Nodes of the config did not register within the connect timeout.
    NotRegistered {
        /// The coordinator.
        coordinator: String,
        /// The timeout.
        after: Duration,
        /// Those that did not.
        missing: Vec<String>,
    },
    /// `node` sent `what` before it registered.
    NotYetRegistered {
        /// The peer.
        node: String,
        /// The message.
        what: String,
    },
    /// The coordinator closed its control connection.
    CoordinatorClosed,
    /// The coordinator has been silent for this long.
    CoordinatorSilent {
        /// How long.
        silent: Duration,
    },
    /// No deployment came from the coordinator in time.
    NoDeployment {
        /// The time allowed.
        within: Duration,
    },
    /// The job failed (the coordinator's reason).
    Job(String),
    /// This node's agent could not run what the coordinator asked.
    Agent(AgentError),
    /// A thread of this node's control plane, or its replica service,
    /// panicked: the node stops, and the cluster sees it fail.
    Panicked(ThreadPanic),
}

impl fmt::Display for ControlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ControlError::Connection { node, source } => {
                write!(f, "control connection to node `{node}`: {source}")
            }
            ControlError::Malformed { node, source } => write!(f, "node `{node}`: {source}"),
            ControlError::Stuck { node, queued } => {
                write!(f, "node `{node}` does not take control messages ({queued} waiting)")
            }
            ControlError::Unreachable { node, coordinator, source } => {
                write!(f, "node `{node}`: cannot reach the coordinator at {coordinator}: {source}")
            }
            ControlError::NotRegistered { coordinator, after, missing } => write!(
                f,
                "coordinator `{coordinator}`: nodes not registered after {after:?}: {}",
                missing.join(", ")
            ),
            ControlError::NotYetRegistered { node, what } => {
                write!(f, "node `{node}` sent {what} before registering")
            }
            ControlError::CoordinatorClosed => {
                f.write_str("the coordinator closed its control connection: stopping")
            }
            ControlError::CoordinatorSilent { silent } => {
                write!(f, "the coordinator has been silent for {} ms: stopping", silent.as_millis())
            }
            ControlError::NoDeployment { within } => {
                write!(f, "no deployment from the coordinator within {within:?}")
            }
            ControlError::Job(reason) => f.write_str(reason),
            ControlError::Agent(e) => e.fmt(f),
            ControlError::Panicked(p) => p.fmt(f),
        }
    }
}

impl Error for ControlError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        match self {
            ControlError::Connection { source, .. } | ControlError::Unreachable { source, .. } => {
                Some(source)
            }
            ControlError::Malformed { source, .. } => Some(source),
            ControlError::Agent(e) => e.source(),
            ControlError::Panicked(p) => Some(p),
            _ => None,
        }
    }
}

impl From<AgentError> for ControlError {
    /// The coordinator's `Stop` is the job's failure ([`ControlError::Job`]);
    /// anything else the agent's ([`ControlError::Agent`]).
    fn from(e: AgentError) -> Self {
        match e {
            AgentError::Stopped { reason } => ControlError::Job(reason),
            e => ControlError::Agent(e),
        }
    }
}

/// Why a node's agent ([`NodeAgent`](super::NodeAgent)) could not run
/// what the coordinator asked: its share fails (the coordinator is told
/// why), or, for [`AgentError::Stopped`] and
/// [`AgentError::Unexpected`], the node stops.
#[derive(Debug)]
#[non_exhaustive]
pub enum AgentError {
    /// The deployment the node received does not name it.
    NotDeployed {
        /// The node.
        node: String,
    },
    /// A joining deployment came while the node runs a share of another
    /// epoch.
    OtherEpoch {
        /// The node.
        node: String,
        /// The deployment's epoch.
        epoch: u64,
    },
    /// A joining deployment came while the node starts a share of another
    /// epoch.
    StartingOtherEpoch {
        /// The node.
        node: String,
        /// The deployment's epoch.
        epoch: u64,
    },
    /// A joining deployment's slot is not this node's.
    NotTheSlot {
        /// The node.
        node: String,
        /// The slot.
        slot: usize,
    },
    /// A joining deployment came for a job without checkpoints.
    NoCheckpoints {
        /// The node.
        node: String,
    },
    /// A live recovery came while the node runs no share of the job.
    NoShare {
        /// The node.
        node: String,
    },
    /// A live recovery came after a share of the node had failed.
    ShareFailed {
        /// The node.
        node: String,
        /// The share's failure.
        reason: String,
    },
    /// A share could not recover live.
    Recover {
        /// The node.
        node: String,
        /// Why.
        source: RecoverError,
    },
    /// The checkpoint parts a deployment restores could not be fetched.
    Fetch {
        /// The node.
        node: String,
        /// Why.
        source: FetchError,
    },
    /// The share's links could not be set up.
    Mesh(MeshError),
    /// The share's workers could not be started.
    Start {
        /// The node.
        node: String,
        /// Why.
        source: RuntimeError,
    },
    /// The coordinator sent a message a node never gets.
    Unexpected {
        /// The node.
        node: String,
        /// The message.
        message: Box<Msg>,
    },
    /// The coordinator stopped the job (`Stop`), for this reason.
    Stopped {
        /// The coordinator's reason.
        reason: String,
    },
}

impl fmt::Display for AgentError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AgentError::NotDeployed { node } => {
                write!(f, "node `{node}` is not in the deployment it received")
            }
            AgentError::OtherEpoch { node, epoch } => {
                write!(f, "node `{node}` runs a share of another epoch and cannot join epoch {epoch}")
            }
            AgentError::StartingOtherEpoch { node, epoch } => {
                write!(f, "node `{node}` is starting a share of another epoch than {epoch}")
            }
            AgentError::NotTheSlot { node, slot } => {
                write!(f, "node `{node}` is not slot {slot} of the deployment it received")
            }
            AgentError::NoCheckpoints { node } => {
                write!(f, "node `{node}`: only a job with checkpoints recovers live")
            }
            AgentError::NoShare { node } => write!(f, "node `{node}` runs no share of the job to recover"),
            AgentError::ShareFailed { node, reason } => {
                write!(f, "node `{node}`: its share already failed: {reason}")
            }
            AgentError::Recover { node, source } => write!(f, "node `{node}`: {source}"),
            AgentError::Fetch { node, source } => write!(f, "node `{node}`: {source}"),
            AgentError::Mesh(e) => e.fmt(f),
            AgentError::Start { node, source } => write!(f, "node `{node}`: {source}"),
            AgentError::Unexpected { node, message } => {
                write!(f, "node `{node}`: unexpected control message {message:?}")
            }
            AgentError::Stopped { reason } => f.write_str(reason),
        }
    }
}

impl Error for AgentError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        match self {
            AgentError::Recover { source, .. } => Some(source),
            AgentError::Fetch { source, .. } => Some(source),
            AgentError::Mesh(e) => e.source(),
            AgentError::Start { source, .. } => Some(source),
            _ => None,
        }
    }
}

impl From<MeshError> for AgentError {
    fn from(e: MeshError) -> Self {
        AgentError::Mesh(e)
    }
}

/// Why the checkpoint parts a deployment restores could not be fetched
/// from their backup nodes ([`Env::poll_fetch`](super::Env::poll_fetch)).
#[derive(Debug)]
#[non_exhaustive]
pub enum FetchError {
    /// The backup store to fetch a worker's part into could not be opened.
    OpenBackup {
        /// Its directory.
        path: PathBuf,
        /// Why.
        source: StateError,
    },
    /// Fetching a worker's part from a backup node's replica service
    /// failed.
    Part {
        /// The checkpoint.
        checkpoint: u64,
        /// The worker.
        worker: usize,
        /// The replica service.
        addr: SocketAddr,
        /// Why.
        source: ReplicaError,
    },
    /// A fetch thread panicked.
    Panicked,
    /// Another environment's fetch failed (the simulator's); its message
    /// is complete on its own.
    Other(Box<dyn Error + Send + Sync>),
}

impl fmt::Display for FetchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FetchError::OpenBackup { path, source } => {
                write!(f, "cannot open the backup store in {}: {source}", path.display())
            }
            FetchError::Part { checkpoint, worker, addr, source } => {
                write!(f, "fetching checkpoint {checkpoint} of worker {worker} from {addr}: {source}")
            }
            FetchError::Panicked => f.write_str("a fetch thread panicked"),
            FetchError::Other(e) => e.fmt(f),
        }
    }
}

impl Error for FetchError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        match self {
            FetchError::OpenBackup { source, .. } => Some(source),
            FetchError::Part { source, .. } => Some(source),
            FetchError::Panicked => None,
            FetchError::Other(e) => e.source(),
        }
    }
}

/// Why the coordinator's plan fails the job (it stops every node with
/// this error's message: see [`Action::Fail`](super::plan::Action::Fail)).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum JobFailure {
    /// Every node that backed up a worker's part of the last complete
    /// checkpoint is gone: nothing can restore it.
    BackupsGone {
        /// The checkpoint.
        checkpoint: u64,
        /// The worker.
        worker: usize,
        /// The node that took the worker over.
        node: String,
    },
    /// A backup node registered no replica service.
    NoReplicaService {
        /// The backup node.
        node: String,
    },
    /// The coordinator's own node was declared failed.
    CoordinatorFailed,
    /// A node failed and no node is left to take its workers over.
    NoNodeLeft {
        /// The failed node.
        node: String,
        /// Why it was declared failed.
        why: String,
    },
    /// A node failed and the one node left could back nothing up.
    NoBackupNodeLeft {
        /// The failed node.
        node: String,
    },
    /// Nodes did not stop their share of a failed epoch in time.
    NotStopped {
        /// The nodes.
        nodes: Vec<String>,
    },
    /// A node sent a message the coordinator never gets.
    Unexpected {
        /// The node.
        node: String,
        /// The message.
        message: Box<Msg>,
    },
    /// A node's share failed and no node failure explained it (after the
    /// restarts allowed, if any).
    ShareFailed {
        /// The node.
        node: String,
        /// The share's failure.
        reason: String,
        /// Other nodes' share failures heard before the coordinator acted
        /// on this one, in the order heard: (node, reason).
        also: Vec<(String, String)>,
    },
}

impl fmt::Display for JobFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JobFailure::BackupsGone { checkpoint, worker, node } => write!(
                f,
                "the backups of checkpoint {checkpoint} of worker {worker}, which node `{node}` took over, \
                 are all gone"
            ),
            JobFailure::NoReplicaService { .. } => f.write_str("a backup node has no replica service"),
            JobFailure::CoordinatorFailed => f.write_str("the coordinator's own node failed"),
            JobFailure::NoNodeLeft { node, why } => {
                write!(f, "node `{node}` failed ({why}) and no node is left to take over its workers")
            }
            JobFailure::NoBackupNodeLeft { node } => write!(
                f,
                "node `{node}` failed and one node is left: its checkpoints would have no backup node"
            ),
            JobFailure::NotStopped { nodes } => {
                write!(f, "nodes did not stop their share of the job: {}", nodes.join(", "))
            }
            JobFailure::Unexpected { node, message } => {
                write!(f, "node `{node}` sent an unexpected {message:?}")
            }
            JobFailure::ShareFailed { node, reason, also } => {
                write!(f, "node `{node}`: {reason}")?;
                for (node, reason) in also {
                    write!(f, "; node `{node}`: {reason}")?;
                }
                Ok(())
            }
        }
    }
}

impl Error for JobFailure {}

/// Why the coordinator refuses a node's registration
/// ([`Plan::register`](super::plan::Plan::register)).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RegisterError {
    /// The config has no node of this index.
    UnknownNode {
        /// The index.
        index: usize,
    },
    /// A node other than the coordinator's registered no worker.
    NoWorkers {
        /// The node.
        node: String,
    },
    /// The incarnation is not after the one registered last.
    StaleIncarnation {
        /// The node.
        node: String,
        /// The incarnation it registered.
        incarnation: u64,
        /// The one registered last.
        last: u64,
    },
    /// The node restarted and cannot take part again (the coordinator's
    /// own node, or the job is over).
    CannotComeBack {
        /// The node.
        node: String,
    },
    /// The failure detector refused the incarnation.
    Fenced {
        /// The node.
        node: String,
        /// Why.
        source: Fenced,
    },
}

impl fmt::Display for RegisterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RegisterError::UnknownNode { index } => write!(f, "no node {index} in the config"),
            RegisterError::NoWorkers { node } => write!(f, "node `{node}` registered with no worker"),
            RegisterError::StaleIncarnation { node, incarnation, last } => write!(
                f,
                "node `{node}` registered incarnation {incarnation}, not after its incarnation {last}"
            ),
            RegisterError::CannotComeBack { node } => write!(f, "node `{node}` cannot come back"),
            RegisterError::Fenced { node, source } => write!(f, "node `{node}`: {source}"),
        }
    }
}

impl Error for RegisterError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        match self {
            RegisterError::Fenced { source, .. } => Some(source),
            _ => None,
        }
    }
}
