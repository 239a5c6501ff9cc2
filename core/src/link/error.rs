//! What can go wrong on the links between workers of different nodes:
//! on one link ([`LinkError`]), and while a share's links are set up
//! ([`MeshError`]). Each names the workers, the edge or the node involved.

use std::error::Error;
use std::fmt;
use std::time::Duration;

use spate_net::NetError;

use crate::batch::BatchError;

/// Why a link to a remote worker failed (or, with live recovery, went
/// down).
#[derive(Debug)]
#[non_exhaustive]
pub enum LinkError {
    /// The connection failed.
    Connection {
        /// The remote worker.
        worker: usize,
        /// What the connection said.
        source: NetError,
    },
    /// The connection closed before the link was through (live recovery:
    /// the remote worker vanished).
    Closed {
        /// The remote worker.
        worker: usize,
    },
    /// A batch arrived on a channel that is not its own.
    Misrouted {
        /// The remote worker.
        worker: usize,
        /// The batch's edge.
        edge: u32,
        /// The batch's producing worker.
        producer: u32,
        /// The channel it arrived on.
        channel: u32,
    },
    /// A batch that does not read.
    Malformed {
        /// The remote worker.
        worker: usize,
        /// The batch's edge.
        edge: u32,
        /// What is wrong with it.
        source: BatchError,
    },
}

impl fmt::Display for LinkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LinkError::Connection { worker, source } => write!(f, "connection to worker {worker}: {source}"),
            LinkError::Closed { worker } => write!(f, "connection to worker {worker} closed"),
            LinkError::Misrouted { worker, edge, producer, channel } => write!(
                f,
                "connection to worker {worker}: a batch of edge {edge} from worker {producer} arrived on \
                 channel {channel}"
            ),
            LinkError::Malformed { worker, edge, source } => {
                write!(f, "connection to worker {worker}: a batch of edge {edge} is malformed: {source}")
            }
        }
    }
}

impl Error for LinkError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        match self {
            LinkError::Connection { source, .. } => Some(source),
            LinkError::Malformed { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// A link of a share that is not up (see [`MeshError::TimedOut`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MissingLink {
    /// The worker that connects.
    pub from: usize,
    /// The worker that accepts.
    pub to: usize,
    /// The last error of the connection attempts, if any.
    pub last_error: Option<String>,
}

impl fmt::Display for MissingLink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.last_error {
            Some(e) => write!(f, "{}->{} ({e})", self.from, self.to),
            None => write!(f, "{}->{}", self.from, self.to),
        }
    }
}

/// Why a share's links could not be set up ([`crate::link::Mesh`]).
#[derive(Debug)]
#[non_exhaustive]
pub enum MeshError {
    /// Connecting a local worker to a remote one failed for a reason that
    /// retrying cannot mend.
    Connect {
        /// The local worker.
        local: usize,
        /// The remote worker.
        remote: usize,
        /// Why.
        source: NetError,
    },
    /// The connect timeout passed with links missing.
    TimedOut {
        /// This node.
        node: String,
        /// The connect timeout.
        after: Duration,
        /// The links not up.
        missing: Vec<MissingLink>,
    },
}

impl fmt::Display for MeshError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MeshError::Connect { local, remote, source } => {
                write!(f, "connecting worker {local} to worker {remote}: {source}")
            }
            MeshError::TimedOut { node, after, missing } => {
                write!(f, "node `{node}`: workers not connected after {after:?}: ")?;
                for (i, m) in missing.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{m}")?;
                }
                Ok(())
            }
        }
    }
}

impl Error for MeshError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        match self {
            MeshError::Connect { source, .. } => Some(source),
            MeshError::TimedOut { .. } => None,
        }
    }
}
