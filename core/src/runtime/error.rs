//! Why a job could not start or did not finish.

/// Why a job could not start or did not finish.
#[derive(Debug)]
pub enum RuntimeError {
    /// The configuration is invalid.
    Config(String),
    /// The dataflow is invalid (duplicate names, ...).
    Dataflow(Vec<String>),
    /// A worker thread could not be started.
    Spawn {
        /// The worker.
        worker: usize,
        /// glommio's error.
        reason: String,
    },
    /// A worker panicked.
    WorkerPanicked {
        /// The worker.
        worker: usize,
    },
    /// An operator failed while running.
    Failed(String),
    /// The job was cancelled ([`Job::cancel`]).
    Cancelled,
}

impl std::fmt::Display for RuntimeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RuntimeError::Config(e) => write!(f, "invalid runtime configuration: {e}"),
            RuntimeError::Dataflow(es) => write!(f, "invalid dataflow: {}", es.join("; ")),
            RuntimeError::Spawn { worker, reason } => write!(f, "cannot start worker {worker}: {reason}"),
            RuntimeError::WorkerPanicked { worker } => write!(f, "worker {worker} panicked"),
            RuntimeError::Failed(e) => write!(f, "job failed: {e}"),
            RuntimeError::Cancelled => write!(f, "job cancelled"),
        }
    }
}

impl std::error::Error for RuntimeError {}
