//! What can go wrong with a job's checkpoints ([`CheckpointError`]): each
//! variant names the file, the instance, the checkpoint, the worker or the
//! backup node it concerns, and carries the error underneath it (a
//! [`StateError`], an I/O error, or what a backup node's stream said),
//! which `source()` also gives.

use std::error::Error;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;

use spate_state::StateError;

/// What a stream to a backup node says went wrong (see
/// [`BackupLink`](super::BackupLink)): its message is complete on its own.
pub type BackupLinkError = Box<dyn Error + Send + Sync>;

/// Why a checkpoint could not be taken, stored, backed up or restored.
#[derive(Debug)]
#[non_exhaustive]
pub enum CheckpointError {
    // --- A job's checkpoint files.
    /// A file or directory operation failed.
    Io {
        /// What was being done (`"read checkpoint directory"`, `"create"`,
        /// `"rename"`, `"remove"`, ...).
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The error from the operating system.
        source: io::Error,
    },
    /// A manifest that does not parse.
    Malformed {
        /// The file, or where the text came from (a control message, a
        /// deployment).
        path: PathBuf,
        /// The line at fault (0: the end of the text).
        line: usize,
        /// What is wrong with it.
        what: String,
    },
    /// A worker's backup store could not be opened.
    OpenBackup {
        /// Its directory.
        path: PathBuf,
        /// Why.
        source: StateError,
    },

    // --- Saving and restoring, on a worker.
    /// Checkpoint `checkpoint` of `instance` could not begin (its store's
    /// snapshot).
    Save {
        /// The instance.
        instance: String,
        /// The checkpoint.
        checkpoint: u64,
        /// The worker.
        worker: usize,
        /// Why.
        source: StateError,
    },
    /// A checkpoint was saved while the worker's backup writer was not
    /// running.
    WriterNotRunning {
        /// The instance.
        instance: String,
        /// The checkpoint.
        checkpoint: u64,
    },
    /// The worker's backup writer stopped before it took a checkpoint.
    WriterStopped {
        /// The instance.
        instance: String,
        /// The checkpoint.
        checkpoint: u64,
        /// The worker.
        worker: usize,
    },
    /// The worker's backup writer thread could not be started.
    StartWriter {
        /// The worker.
        worker: usize,
        /// The error from the operating system.
        source: io::Error,
    },
    /// An instance was restored after the backup writer took the backup
    /// store.
    BackupInUse {
        /// The instance.
        instance: String,
    },
    /// An instance's store could not be rebuilt from a checkpoint.
    Restore {
        /// The instance.
        instance: String,
        /// The checkpoint.
        checkpoint: u64,
        /// Why.
        source: StateError,
    },
    /// The checkpoint being restored has no offset for a source instance.
    NoOffset {
        /// The checkpoint.
        checkpoint: u64,
        /// The source's name.
        name: String,
        /// The worker the instance runs on.
        worker: usize,
    },
    /// A lock the workers share was poisoned (a thread panicked holding
    /// it).
    Poisoned {
        /// The lock (`"checkpoint progress"`, `"checkpoint"`).
        lock: &'static str,
    },

    // --- The backup writer, into the worker's backup store.
    /// Older checkpoints of `instance` could not be dropped from the
    /// backup store.
    Retain {
        /// The instance.
        instance: String,
        /// Why.
        source: StateError,
    },
    /// The checkpoints of `instance` could not be compacted in the backup
    /// store.
    Compact {
        /// The instance.
        instance: String,
        /// Why.
        source: StateError,
    },
    /// The backup store refused a chunk of a checkpoint.
    Store {
        /// The instance.
        instance: String,
        /// The checkpoint.
        checkpoint: u64,
        /// Why.
        source: StateError,
    },
    /// The backup store took every chunk of a checkpoint and did not
    /// acknowledge it whole.
    NotAcknowledged {
        /// The instance.
        instance: String,
        /// The checkpoint.
        checkpoint: u64,
    },

    // --- Backup nodes (see [`CheckpointError::is_backup_node`]).
    /// No stream to the backup node at `addr` could be opened.
    BackupConnect {
        /// The backup node's replica service.
        addr: SocketAddr,
        /// Why.
        source: BackupLinkError,
    },
    /// The backup node at `addr` did not take a checkpoint, or did not
    /// acknowledge it.
    BackupStream {
        /// The instance.
        instance: String,
        /// The checkpoint.
        checkpoint: u64,
        /// The backup node's replica service.
        addr: SocketAddr,
        /// Why.
        source: BackupLinkError,
    },
}

impl CheckpointError {
    /// Whether a backup node failed (the checkpoint does not complete, and
    /// the coordinator, which detects the failure, recovers the job) rather
    /// than this node's own files or store (the job fails).
    pub fn is_backup_node(&self) -> bool {
        matches!(self, CheckpointError::BackupConnect { .. } | CheckpointError::BackupStream { .. })
    }
}

impl fmt::Display for CheckpointError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CheckpointError::Io { op, path, source } => write!(f, "cannot {op} {}: {source}", path.display()),
            CheckpointError::Malformed { path, line, what } => {
                write!(f, "checkpoint manifest {}: line {line}: {what}", path.display())
            }
            CheckpointError::OpenBackup { path, source } => {
                write!(f, "cannot open the backup store in {}: {source}", path.display())
            }
            CheckpointError::Save { instance, checkpoint, worker, source } => {
                write!(f, "checkpoint {checkpoint} of `{instance}` on worker {worker}: {source}")
            }
            CheckpointError::WriterNotRunning { instance, checkpoint } => {
                write!(f, "checkpoint {checkpoint} of `{instance}`: the backup writer is not running")
            }
            CheckpointError::WriterStopped { instance, checkpoint, worker } => write!(
                f,
                "checkpoint {checkpoint} of `{instance}`: the backup writer of worker {worker} stopped"
            ),
            CheckpointError::StartWriter { worker, source } => {
                write!(f, "cannot start the backup writer of worker {worker}: {source}")
            }
            CheckpointError::BackupInUse { instance } => {
                write!(f, "restoring `{instance}`: the backup store is in use by its writer")
            }
            CheckpointError::Restore { instance, checkpoint, source } => {
                write!(f, "restoring `{instance}` from checkpoint {checkpoint}: {source}")
            }
            CheckpointError::NoOffset { checkpoint, name, worker } => {
                write!(f, "checkpoint {checkpoint} has no offset for source `{name}` on worker {worker}")
            }
            CheckpointError::Poisoned { lock } => write!(f, "{lock} lock poisoned"),
            CheckpointError::Retain { instance, source } => {
                write!(f, "retention of `{instance}` in the backup store: {source}")
            }
            CheckpointError::Compact { instance, source } => {
                write!(f, "compacting the checkpoints of `{instance}` in the backup store: {source}")
            }
            CheckpointError::Store { instance, checkpoint, source } => {
                write!(f, "checkpoint {checkpoint} of `{instance}` into the backup store: {source}")
            }
            CheckpointError::NotAcknowledged { instance, checkpoint } => {
                write!(f, "checkpoint {checkpoint} of `{instance}`: the backup store did not acknowledge it")
            }
            CheckpointError::BackupConnect { addr, source } => write!(f, "backup node {addr}: {source}"),
            CheckpointError::BackupStream { instance, checkpoint, addr, source } => {
                write!(f, "checkpoint {checkpoint} of `{instance}`: backup node {addr}: {source}")
            }
        }
    }
}

impl Error for CheckpointError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        match self {
            CheckpointError::Io { source, .. } | CheckpointError::StartWriter { source, .. } => Some(source),
            CheckpointError::OpenBackup { source, .. }
            | CheckpointError::Save { source, .. }
            | CheckpointError::Restore { source, .. }
            | CheckpointError::Retain { source, .. }
            | CheckpointError::Compact { source, .. }
            | CheckpointError::Store { source, .. } => Some(source),
            CheckpointError::BackupConnect { source, .. } | CheckpointError::BackupStream { source, .. } => {
                Some(source.as_ref())
            }
            _ => None,
        }
    }
}
