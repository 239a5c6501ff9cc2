//! What can go wrong in the runtime: why a job could not start or did not
//! finish ([`RuntimeError`]), why a worker fails its job while it runs
//! ([`WorkerError`], with [`ReplayError`] for a stream that cannot be
//! replayed), and why a share cannot recover live or re-link a replacement
//! ([`RecoverError`], [`RelinkError`]). Each names the worker, the edge, the
//! checkpoint or the values involved.

use std::error::Error;
use std::fmt;
use std::time::Duration;

use crate::checkpoint::CheckpointError;
use crate::config::ConfigError;
use crate::link::error::{LinkError, MeshError};

/// Why a job could not start or did not finish.
#[derive(Debug)]
#[non_exhaustive]
pub enum RuntimeError {
    /// The configuration is invalid, or the checkpoints it would restore
    /// cannot be used.
    Config(ConfigError),
    /// The dataflow is invalid (duplicate names, ...).
    Dataflow(Vec<String>),
    /// A worker thread could not be started.
    Spawn {
        /// The worker.
        worker: usize,
        /// glommio's error.
        reason: String,
    },
    /// A worker's thread died of a panic it could not report as the job's
    /// failure (one while it reported another: a panic is otherwise
    /// [`RuntimeError::Failed`] with its message, decision 44).
    WorkerPanicked {
        /// The worker.
        worker: usize,
    },
    /// The links of a share started directly
    /// ([`Runtime::start_cluster`](super::Runtime::start_cluster)) could not
    /// be set up.
    Links(MeshError),
    /// The checkpoints of a job that ended could not be removed.
    Cleanup(CheckpointError),
    /// An operator failed while running.
    Failed(String),
    /// The job was cancelled ([`Job::cancel`](super::Job::cancel)).
    Cancelled,
}

impl fmt::Display for RuntimeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RuntimeError::Config(e) => write!(f, "invalid runtime configuration: {e}"),
            RuntimeError::Dataflow(es) => write!(f, "invalid dataflow: {}", es.join("; ")),
            RuntimeError::Spawn { worker, reason } => write!(f, "cannot start worker {worker}: {reason}"),
            RuntimeError::WorkerPanicked { worker } => write!(f, "worker {worker} panicked"),
            RuntimeError::Links(e) => write!(f, "job failed: {e}"),
            RuntimeError::Cleanup(e) => write!(f, "job failed: {e}"),
            RuntimeError::Failed(e) => write!(f, "job failed: {e}"),
            RuntimeError::Cancelled => write!(f, "job cancelled"),
        }
    }
}

impl Error for RuntimeError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        match self {
            RuntimeError::Config(e) => Some(e),
            RuntimeError::Links(e) => Some(e),
            RuntimeError::Cleanup(e) => Some(e),
            _ => None,
        }
    }
}

/// Why a worker fails its job while it runs (the job's failure is this
/// error's message: see [`crate::metrics::JobMetrics::fail`]).
#[derive(Debug)]
#[non_exhaustive]
pub enum WorkerError {
    /// The worker at the other end of an edge's ring or link stopped
    /// taking batches.
    StoppedTaking {
        /// The edge.
        edge: usize,
        /// The receiving worker.
        worker: usize,
    },
    /// A producing worker's ring or link finished without its final batch.
    Unended {
        /// The edge.
        edge: usize,
    },
    /// A link to a remote worker failed.
    Link(LinkError),
    /// A checkpoint could not be reported.
    Checkpoint(CheckpointError),
    /// What was sent to a replaced worker since its checkpoint cannot be
    /// sent again.
    Replay {
        /// The edge.
        edge: usize,
        /// The replaced (remote) worker.
        worker: usize,
        /// Why.
        source: ReplayError,
    },
    /// A receiver's count of what it took from a replaced worker cannot
    /// restart at the replacement's checkpoint.
    Relink {
        /// The edge.
        edge: usize,
        /// The replaced (remote) worker.
        worker: usize,
        /// Why.
        source: ReplayError,
    },
    /// A replacement's link came for a worker this worker has no link to.
    UnknownRelink {
        /// The remote worker.
        worker: usize,
    },
    /// The re-link mailbox's lock was poisoned (a thread panicked holding
    /// it).
    MailboxPoisoned,
    /// A link stayed down (its remote worker vanished) and no replacement
    /// re-linked it in time.
    LinkDown {
        /// The remote worker.
        worker: usize,
        /// Why it went down.
        why: String,
        /// How long a link may stay down.
        after: Duration,
    },
}

impl fmt::Display for WorkerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WorkerError::StoppedTaking { edge, worker } => {
                write!(f, "edge {edge}: worker {worker} stopped taking batches")
            }
            WorkerError::Unended { edge } => {
                write!(f, "edge {edge}: a producing worker stopped without ending its stream")
            }
            WorkerError::Link(e) => e.fmt(f),
            WorkerError::Checkpoint(e) => e.fmt(f),
            WorkerError::Replay { edge, worker, source } => {
                write!(f, "edge {edge}: cannot replay to worker {worker}: {source}")
            }
            WorkerError::Relink { edge, worker, source } => {
                write!(f, "edge {edge}: re-linking worker {worker}: {source}")
            }
            WorkerError::UnknownRelink { worker } => {
                write!(f, "a re-link from worker {worker}, which this worker has no link to")
            }
            WorkerError::MailboxPoisoned => f.write_str("the re-link mailbox lock is poisoned"),
            WorkerError::LinkDown { worker, why, after } => write!(
                f,
                "the link to worker {worker} broke ({why}) and no replacement re-linked it within {after:?}"
            ),
        }
    }
}

impl Error for WorkerError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        match self {
            WorkerError::Link(e) => e.source(),
            WorkerError::Checkpoint(e) => e.source(),
            WorkerError::Replay { source, .. } | WorkerError::Relink { source, .. } => Some(source),
            _ => None,
        }
    }
}

impl From<LinkError> for WorkerError {
    fn from(e: LinkError) -> Self {
        WorkerError::Link(e)
    }
}

impl From<CheckpointError> for WorkerError {
    fn from(e: CheckpointError) -> Self {
        WorkerError::Checkpoint(e)
    }
}

/// Why a stream cannot be replayed to a replaced worker, or its receive
/// count cannot restart (live recovery's upstream buffers).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReplayError {
    /// The replay buffer was given up: it stayed full while no checkpoint
    /// trimmed it.
    Overflowed,
    /// The replay buffer no longer holds what followed the checkpoint.
    TooShort {
        /// The replacement's checkpoint.
        checkpoint: u64,
    },
    /// The receiver never took the checkpoint's barrier from the producer.
    NoBarrier {
        /// The replacement's checkpoint.
        checkpoint: u64,
    },
}

impl fmt::Display for ReplayError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReplayError::Overflowed => {
                f.write_str("its replay buffer overflowed while no checkpoint trimmed it")
            }
            ReplayError::TooShort { checkpoint } => {
                write!(f, "its replay buffer does not reach back to checkpoint {checkpoint}")
            }
            ReplayError::NoBarrier { checkpoint } => {
                write!(f, "no barrier of checkpoint {checkpoint} was received from it")
            }
        }
    }
}

impl Error for ReplayError {}

/// Why a share cannot recover live from another node's failure
/// ([`Job::recover`](super::Job::recover)).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RecoverError {
    /// The share keeps no replay buffers.
    NotLive,
    /// A replay buffer was given up: it stayed full while no checkpoint
    /// trimmed it.
    Overflowed {
        /// Bytes of each worker's replay buffers.
        bytes: usize,
    },
    /// The checkpoint to restore was never requested from this share.
    NeverRequested {
        /// The checkpoint.
        checkpoint: u64,
    },
    /// Workers of the share ended: they dropped their links and replay
    /// buffers.
    WorkersEnded {
        /// Workers that ended.
        ended: usize,
        /// The share's workers.
        workers: usize,
    },
}

impl fmt::Display for RecoverError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecoverError::NotLive => {
                f.write_str("this share of the job keeps no replay buffers: it cannot recover live")
            }
            RecoverError::Overflowed { bytes } => write!(
                f,
                "its replay buffers overflowed ({bytes} bytes per worker) while no checkpoint trimmed them"
            ),
            RecoverError::NeverRequested { checkpoint } => {
                write!(f, "checkpoint {checkpoint} was never requested here")
            }
            RecoverError::WorkersEnded { ended, workers } => write!(
                f,
                "{ended} of its {workers} workers already ended: they cannot replay to a replacement"
            ),
        }
    }
}

impl Error for RecoverError {}

/// Why a replacement's connection cannot be handed to a local worker
/// ([`Job::relink`](super::Job::relink)).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RelinkError {
    /// The share keeps no replay buffers.
    NotLive,
    /// The worker does not run on this node.
    NotHere {
        /// The worker.
        worker: usize,
    },
    /// The re-link mailbox's lock was poisoned (a thread panicked holding
    /// it).
    Poisoned,
}

impl fmt::Display for RelinkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RelinkError::NotLive => {
                f.write_str("this share of the job keeps no replay buffers: it cannot re-link")
            }
            RelinkError::NotHere { worker } => write!(f, "worker {worker} is not on this node"),
            RelinkError::Poisoned => f.write_str("the re-link mailbox lock is poisoned"),
        }
    }
}

impl Error for RelinkError {}
