//! What can go wrong in the control plane ([`ControlError`]): each variant
//! names the node, the address or the epoch it concerns.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use spate_net::NetError;

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
        reason: String,
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
    /// The job failed (the coordinator's reason, or this node's agent's).
    Job(String),
}

impl fmt::Display for ControlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ControlError::Connection { node, source } => {
                write!(f, "control connection to node `{node}`: {source}")
            }
            ControlError::Malformed { node, reason } => write!(f, "node `{node}`: {reason}"),
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
        }
    }
}

impl std::error::Error for ControlError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ControlError::Connection { source, .. } | ControlError::Unreachable { source, .. } => {
                Some(source)
            }
            _ => None,
        }
    }
}
