//! [`ReplicaError`]: what went wrong in the replica service, on a backup
//! stream or in a fetch, naming the peer, worker, instance, checkpoint or
//! message field involved.
//!
//! Every error's message (its `Display`) is complete on its own: it
//! includes the message of its source (a [`NetError`], a [`StateError`],
//! an I/O error, or the error that a stream's or a fetch's context wraps),
//! which `source()` also gives to callers that look further. Sources are
//! shared (`Arc`) so that errors can be cloned: a broken
//! [`ReplicaClient`](super::ReplicaClient) returns its first error again
//! at every later call.
//!
//! The service's own errors (a refused stream or fetch) travel to the
//! peer as the message of an error report; the peer's error holds that
//! message as text.

use std::error::Error;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use spate_net::frame::Kind;
use spate_net::NetError;
use spate_state::StateError;

use super::{Totals, CHUNK_BYTES_MAX, INSTANCE_NAME_BYTES_MAX, PART_BYTES_MAX};

/// Why a replica service, a backup stream or a fetch failed.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum ReplicaError {
    // --- Starting the service ([`ReplicaServer::start`](super::ReplicaServer::start)).
    /// The service's root directory could not be created.
    CreateRoot {
        /// The directory.
        path: PathBuf,
        /// The error from the operating system.
        source: Arc<io::Error>,
    },
    /// The service could not listen on its address.
    Listen {
        /// The address to bind.
        addr: SocketAddr,
        /// Why.
        source: Arc<NetError>,
    },
    /// The service's thread could not be started.
    SpawnThread {
        /// The error from the operating system.
        source: Arc<io::Error>,
    },

    // --- Connections.
    /// No connection to the replica service at `addr` could be made:
    /// nothing listens there, the handshake timed out, or the service
    /// refused the connection (another cluster, a stream of an older
    /// epoch).
    Connect {
        /// The service's address.
        addr: SocketAddr,
        /// Why.
        source: Arc<NetError>,
    },
    /// An established connection failed: the peer closed it (a backup
    /// node that died), a socket error, a corrupt frame.
    ConnectionLost {
        /// Why.
        source: Arc<NetError>,
    },
    /// A fetch request did not fit into a new connection's send buffer.
    NoRoomForRequest,

    // --- Messages.
    /// A message that does not parse.
    Malformed {
        /// The message (`"chunk part"`, `"ack"`, `"error report"`,
        /// `"fetch request"`, `"end of fetch"`).
        message: &'static str,
        /// What is wrong with it.
        fault: Malformation,
    },
    /// A frame of a kind that has no place where it arrived.
    UnexpectedFrame {
        /// Its kind.
        kind: Kind,
        /// Where it arrived.
        on: Link,
    },
    /// A chunk part past a chunk's start arrived without the parts before
    /// it.
    PartWithoutStart {
        /// The part's instance.
        instance: String,
        /// Its offset in its chunk.
        offset: usize,
        /// Its chunk's length.
        chunk_len: usize,
    },
    /// A chunk part does not continue the chunk being put back together
    /// (another instance, another chunk length, or not at the offset
    /// where the received parts end).
    PartDoesNotContinue {
        /// The part's instance.
        instance: String,
        /// Its offset in its chunk.
        offset: usize,
        /// Its chunk's length.
        chunk_len: usize,
        /// The instance of the chunk being put back together.
        current: String,
        /// Bytes of that chunk received.
        received: usize,
        /// That chunk's length.
        current_len: usize,
    },

    // --- The arguments of a backup stream's calls.
    /// An instance name that is empty or longer than
    /// [`INSTANCE_NAME_BYTES_MAX`](super::INSTANCE_NAME_BYTES_MAX).
    InstanceName {
        /// Its length in bytes.
        len: usize,
    },
    /// A chunk that is empty or larger than
    /// [`CHUNK_BYTES_MAX`](super::CHUNK_BYTES_MAX).
    ChunkSize {
        /// The instance it was sent for.
        instance: String,
        /// Its length in bytes.
        len: usize,
    },

    // --- A backup stream ([`ReplicaClient`](super::ReplicaClient)).
    /// The backup took no more bytes for as long as the client waits for
    /// room (the stream is broken).
    SendTimeout {
        /// The instance whose chunk was being sent.
        instance: String,
        /// How long the client waited.
        timeout: Duration,
        /// Bytes queued and not written.
        queued: usize,
    },
    /// The backup did not acknowledge a checkpoint in time.
    NoAck {
        /// The instance.
        instance: String,
        /// The checkpoint id waited for.
        checkpoint: u64,
        /// How long the client waited.
        timeout: Duration,
    },
    /// The backup refused a chunk of a checkpoint (and dropped that
    /// checkpoint).
    CheckpointRefused {
        /// The instance.
        instance: String,
        /// The checkpoint, where the backup knew it.
        checkpoint: Option<u64>,
        /// The backup's message.
        message: String,
    },
    /// The backup reported an error for the whole connection and closed
    /// it.
    StreamClosed {
        /// The backup's message.
        message: String,
    },
    /// An error on the backup stream of worker `origin` to the service at
    /// `addr`.
    Stream {
        /// The worker whose checkpoints the stream carries.
        origin: usize,
        /// The backup service's address.
        addr: SocketAddr,
        /// What went wrong.
        source: Box<ReplicaError>,
    },

    // --- A fetch ([`fetch`](super::fetch())).
    /// The backup refused the fetch (an instance's checkpoint missing,
    /// a stored chunk that does not read back, ...).
    FetchRefused {
        /// The instance the backup named, if any.
        instance: Option<String>,
        /// The backup's message.
        message: String,
    },
    /// The local backup store refused a fetched chunk (for example, it
    /// already holds that checkpoint or a later one of the instance).
    LocalRefused {
        /// The instance.
        instance: String,
        /// Why.
        source: Arc<StateError>,
    },
    /// The fetch was not done in time.
    FetchTimeout {
        /// The fetch's timeout.
        timeout: Duration,
        /// Chunks received by then.
        chunks: u64,
        /// Bytes of chunks received by then.
        bytes: u64,
    },
    /// The end of the fetch came inside a chunk.
    EndedInsideChunk,
    /// The end of the fetch came inside a checkpoint.
    EndedInsideCheckpoint {
        /// The instance of that checkpoint.
        instance: String,
    },
    /// An instance's fetched chain does not end at the fetched checkpoint.
    ChainEnd {
        /// The instance.
        instance: String,
        /// The last checkpoint the local store acknowledged.
        last: Option<u64>,
        /// The checkpoint fetched.
        checkpoint: u64,
    },
    /// What arrived is not what the backup says it sent.
    TotalsDiffer {
        /// What arrived.
        received: Totals,
        /// What the backup's end marker says.
        sent: Totals,
    },
    /// An error in the fetch of checkpoint `checkpoint` of worker `origin`
    /// from the service at `addr`.
    Fetch {
        /// The worker whose checkpoint is fetched.
        origin: usize,
        /// The checkpoint.
        checkpoint: u64,
        /// The backup service's address.
        addr: SocketAddr,
        /// What went wrong.
        source: Box<ReplicaError>,
    },

    // --- The service's side, reported to its peers.
    /// The backup store of a worker could not be opened.
    OpenStore {
        /// The worker.
        origin: usize,
        /// Why.
        source: Arc<StateError>,
    },
    /// No backup store is open for a worker.
    NoStore {
        /// The worker.
        origin: usize,
    },
    /// A fetch connection sent no request in time.
    NoFetchRequest {
        /// How long the service waits for one.
        timeout: Duration,
    },
    /// A fetch request for another worker than its connection's.
    WrongOrigin {
        /// The worker requested.
        requested: u64,
        /// The connection's worker.
        origin: usize,
    },
    /// A second fetch request on one connection.
    SecondRequest,
    /// The backup store refused a chunk of a backup stream.
    StoreRefused {
        /// The instance.
        instance: String,
        /// The checkpoint, where known.
        checkpoint: Option<u64>,
        /// Why.
        source: Arc<StateError>,
    },
    /// An fsync of a backup failed (`durability = "fsync"`): fatal to the
    /// replica service, which stops serving, so its node fails (decision
    /// 47: never retried, since the page cache may have dropped the data).
    FsyncFailed {
        /// The origin worker of the backup.
        origin: usize,
        /// The instance.
        instance: String,
        /// The checkpoint, where known.
        checkpoint: Option<u64>,
        /// The store's error.
        source: Arc<StateError>,
    },
    /// A fetch of a worker with nothing stored.
    NothingStored {
        /// The worker.
        origin: usize,
    },
    /// A fetch of a checkpoint that is not complete for every instance of
    /// the worker.
    Incomplete {
        /// The worker.
        origin: usize,
        /// The checkpoint.
        checkpoint: u64,
        /// The instances that lack it.
        missing: Vec<Missing>,
    },
    /// A stored checkpoint could not be read back for a fetch.
    Stored {
        /// The instance.
        instance: String,
        /// The checkpoint.
        checkpoint: u64,
        /// What went wrong.
        fault: StoredFault,
    },
}

/// What is wrong with a malformed message.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Malformation {
    /// It ends inside a field.
    Truncated {
        /// The field.
        field: &'static str,
        /// Bytes of it present.
        have: usize,
        /// Bytes it takes.
        need: usize,
        /// The message's length.
        len: usize,
    },
    /// A text field is not UTF-8.
    NotUtf8 {
        /// The field.
        field: &'static str,
    },
    /// The instance name is empty (where it must not be) or too long.
    NameLength {
        /// Its length in bytes.
        len: usize,
    },
    /// Bytes follow its last field.
    TrailingBytes {
        /// How many.
        extra: usize,
    },
    /// A chunk part announces a chunk that is empty or too large.
    ChunkLength {
        /// The part's instance.
        instance: String,
        /// The chunk length announced.
        len: usize,
    },
    /// A chunk part's bytes are empty, too many, or beyond its chunk.
    PartBounds {
        /// The part's instance.
        instance: String,
        /// Its bytes.
        bytes: usize,
        /// Its offset in the chunk.
        offset: usize,
        /// The chunk's length.
        chunk_len: usize,
    },
}

/// Where an unexpected frame arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    /// At the service, on a backup stream.
    Backup,
    /// At the service, on a fetch connection.
    Fetch,
    /// At a client (a backup stream or a fetch), from the service.
    FromBackup,
}

/// An instance that lacks the checkpoint a fetch asks for.
#[derive(Debug, Clone)]
pub struct Missing {
    /// The instance.
    pub instance: String,
    /// Its latest complete checkpoint (0: none).
    pub latest_complete: u64,
    /// Why its chain could not be found, if the checkpoint is complete.
    pub chain: Option<Arc<StateError>>,
}

/// Why a stored checkpoint could not be read back.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum StoredFault {
    /// The store in memory could not give it.
    Read(Arc<StateError>),
    /// A chunk in the store's memory does not decode.
    CorruptAt {
        /// Its offset in the checkpoint.
        pos: usize,
        /// Why.
        reason: String,
    },
    /// Its file could not be opened.
    Open {
        /// The file.
        path: PathBuf,
        /// The error from the operating system.
        source: Arc<io::Error>,
    },
    /// Reading its file failed (or ended inside a chunk).
    ReadFile {
        /// The file.
        path: PathBuf,
        /// The error from the operating system.
        source: Arc<io::Error>,
    },
    /// Its file ends inside a chunk's framing.
    TruncatedFraming {
        /// The file.
        path: PathBuf,
        /// Bytes of the framing present.
        got: usize,
    },
    /// A chunk's length in its file is out of range.
    ChunkLength {
        /// The file.
        path: PathBuf,
        /// The length.
        len: usize,
    },
    /// A chunk of its file does not decode (a bad crc, ...).
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

impl ReplicaError {
    /// The error without the context of its stream or fetch
    /// ([`Stream`](Self::Stream), [`Fetch`](Self::Fetch)).
    pub fn inner(&self) -> &ReplicaError {
        match self {
            ReplicaError::Stream { source, .. } | ReplicaError::Fetch { source, .. } => source.inner(),
            e => e,
        }
    }

    /// An established connection failed.
    pub(crate) fn lost(e: NetError) -> Self {
        ReplicaError::ConnectionLost { source: Arc::new(e) }
    }
}

impl fmt::Display for ReplicaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use ReplicaError as E;
        match self {
            E::CreateRoot { path, source } => {
                write!(f, "replica server: cannot create {}: {source}", path.display())
            }
            E::Listen { addr, source } => write!(f, "replica server: cannot listen on {addr}: {source}"),
            E::SpawnThread { source } => write!(f, "replica server: cannot start its thread: {source}"),
            E::Connect { source, .. } => write!(f, "cannot connect to the backup service: {source}"),
            E::ConnectionLost { source } => write!(f, "connection lost: {source}"),
            E::NoRoomForRequest => write!(f, "no room for the request in a new connection"),
            E::Malformed { message, fault } => {
                write!(f, "malformed {message} message")?;
                if let Malformation::ChunkLength { instance, .. } | Malformation::PartBounds { instance, .. } =
                    fault
                {
                    write!(f, " of `{instance}`")?;
                }
                write!(f, ": {fault}")
            }
            E::UnexpectedFrame { kind, on } => write!(f, "unexpected {kind:?} frame {on}"),
            E::PartWithoutStart { instance, offset, chunk_len } => write!(
                f,
                "chunk part of `{instance}` at offset {offset} of {chunk_len} bytes without the parts before it"
            ),
            E::PartDoesNotContinue { instance, offset, chunk_len, current, received, current_len } => write!(
                f,
                "chunk part of `{instance}` (offset {offset}, chunk of {chunk_len} bytes) does not continue the \
                 chunk of `{current}` received up to {received} of {current_len} bytes"
            ),
            E::InstanceName { len } => {
                write!(f, "instance name of {len} bytes (must be 1 to {INSTANCE_NAME_BYTES_MAX})")
            }
            E::ChunkSize { instance, len } => {
                write!(f, "chunk of `{instance}` of {len} bytes (must be 1 to {CHUNK_BYTES_MAX})")
            }
            E::SendTimeout { instance, timeout, queued } => write!(
                f,
                "timed out after {timeout:?} sending a chunk of `{instance}`: the backup takes no more bytes \
                 ({queued} queued)"
            ),
            E::NoAck { instance, checkpoint, timeout } => {
                write!(f, "no acknowledgement of checkpoint {checkpoint} of `{instance}` within {timeout:?}")
            }
            E::CheckpointRefused { instance, checkpoint, message } => match checkpoint {
                Some(c) => write!(f, "the backup refused checkpoint {c} of `{instance}`: {message}"),
                None => write!(f, "the backup refused a checkpoint of `{instance}`: {message}"),
            },
            E::StreamClosed { message } => write!(f, "the backup closed the stream: {message}"),
            E::Stream { origin, addr, source } => {
                write!(f, "replica stream of worker {origin} to {addr}: {source}")
            }
            E::FetchRefused { instance, message } => match instance {
                Some(i) => write!(f, "the backup refused: `{i}`: {message}"),
                None => write!(f, "the backup refused: {message}"),
            },
            E::LocalRefused { instance, source } => {
                write!(f, "the local backup store refused a chunk of `{instance}`: {source}")
            }
            E::FetchTimeout { timeout, chunks, bytes } => {
                write!(f, "not done within {timeout:?} ({chunks} chunks, {bytes} bytes received)")
            }
            E::EndedInsideChunk => write!(f, "the fetch ended inside a chunk"),
            E::EndedInsideCheckpoint { instance } => {
                write!(f, "the fetch ended inside a checkpoint of `{instance}`")
            }
            E::ChainEnd { instance, last: Some(last), checkpoint } => {
                write!(f, "the chain of `{instance}` ended at checkpoint {last}, not {checkpoint}")
            }
            E::ChainEnd { instance, last: None, checkpoint } => {
                write!(f, "the chain of `{instance}` ended without a checkpoint, not at {checkpoint}")
            }
            E::TotalsDiffer { received, sent } => {
                write!(f, "received {received:?} but the backup sent {sent:?}")
            }
            E::Fetch { origin, checkpoint, addr, source } => {
                write!(f, "fetch of checkpoint {checkpoint} of worker {origin} from {addr}: {source}")
            }
            E::OpenStore { origin, source } => {
                write!(f, "cannot open the backup store of worker {origin}: {source}")
            }
            E::NoStore { origin } => write!(f, "no backup store for worker {origin}"),
            E::NoFetchRequest { timeout } => write!(f, "no fetch request within {timeout:?}"),
            E::WrongOrigin { requested, origin } => {
                write!(f, "fetch request for worker {requested} on a connection for worker {origin}")
            }
            E::SecondRequest => write!(f, "a second fetch request on one connection"),
            E::StoreRefused { instance, source, .. } => {
                write!(f, "checkpoint of `{instance}` refused by the backup store: {source}")
            }
            E::FsyncFailed { origin, instance, checkpoint, source } => {
                write!(f, "fsync failed storing ")?;
                match checkpoint {
                    Some(c) => write!(f, "checkpoint {c} ")?,
                    None => write!(f, "a checkpoint ")?,
                }
                write!(f, "of `{instance}` of worker {origin}: {source}; the replica service stops (fatal)")
            }
            E::NothingStored { origin } => write!(f, "no checkpoint of worker {origin} is stored here"),
            E::Incomplete { origin, checkpoint, missing } => {
                write!(f, "checkpoint {checkpoint} of worker {origin} is not complete here for instance(s) ")?;
                for (i, m) in missing.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{m}")?;
                }
                Ok(())
            }
            E::Stored { instance, checkpoint, fault } => {
                write!(f, "stored checkpoint {checkpoint} of `{instance}`: {fault}")
            }
        }
    }
}

impl Error for ReplicaError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        use ReplicaError as E;
        match self {
            E::CreateRoot { source, .. } | E::SpawnThread { source } => Some(&**source),
            E::Listen { source, .. } | E::Connect { source, .. } | E::ConnectionLost { source } => {
                Some(&**source)
            }
            E::LocalRefused { source, .. }
            | E::OpenStore { source, .. }
            | E::StoreRefused { source, .. }
            | E::FsyncFailed { source, .. } => Some(&**source),
            E::Stream { source, .. } | E::Fetch { source, .. } => Some(&**source),
            E::Stored { fault, .. } => fault.source(),
            _ => None,
        }
    }
}

impl fmt::Display for Malformation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Malformation::Truncated { field, have, need, len } => {
                write!(f, "truncated at `{field}`: {have} of {need} bytes ({len} in all)")
            }
            Malformation::NotUtf8 { field } => write!(f, "`{field}` is not UTF-8"),
            Malformation::NameLength { len } => {
                write!(f, "instance name of {len} bytes (must be 1 to {INSTANCE_NAME_BYTES_MAX})")
            }
            Malformation::TrailingBytes { extra } => write!(f, "{extra} bytes after its end"),
            Malformation::ChunkLength { len, .. } => {
                write!(f, "chunk of {len} bytes (must be 1 to {CHUNK_BYTES_MAX})")
            }
            Malformation::PartBounds { bytes, offset, chunk_len, .. } => write!(
                f,
                "{bytes} bytes at offset {offset} of a chunk of {chunk_len} bytes (parts carry 1 to \
                 {PART_BYTES_MAX} bytes within the chunk)"
            ),
        }
    }
}

impl fmt::Display for Link {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Link::Backup => "on a backup stream",
            Link::Fetch => "on a fetch connection",
            Link::FromBackup => "from the backup",
        })
    }
}

impl fmt::Display for Missing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.chain {
            Some(e) => write!(f, "`{}` ({e})", self.instance),
            None => write!(f, "`{}` (latest complete: {})", self.instance, self.latest_complete),
        }
    }
}

impl StoredFault {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        match self {
            StoredFault::Read(e) => Some(&**e),
            StoredFault::Open { source, .. } | StoredFault::ReadFile { source, .. } => Some(&**source),
            _ => None,
        }
    }
}

impl fmt::Display for StoredFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoredFault::Read(e) => write!(f, "{e}"),
            StoredFault::CorruptAt { pos, reason } => write!(f, "corrupt at byte {pos}: {reason}"),
            StoredFault::Open { path, source } => write!(f, "open {}: {source}", path.display()),
            StoredFault::ReadFile { path, source } => write!(f, "read {}: {source}", path.display()),
            StoredFault::TruncatedFraming { path, got } => {
                write!(f, "{}: truncated chunk framing: {got} bytes", path.display())
            }
            StoredFault::ChunkLength { path, len } => {
                write!(f, "{}: chunk length {len} out of range", path.display())
            }
            StoredFault::Corrupt { path, reason } => write!(f, "{}: {reason}", path.display()),
        }
    }
}
