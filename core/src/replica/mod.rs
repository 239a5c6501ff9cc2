//! Checkpoint replication to backup nodes, over TCP, and fetching
//! checkpoints back for recovery.
//!
//! Design brief §4–§5: every stateful instance's checkpoints stream to R
//! backup nodes, never the instance's own, which acknowledge a checkpoint
//! once it is whole and stored with the configured durability; recovery
//! restores the last checkpoint from a backup. This module is the transport
//! and the backup side of that:
//!
//! * [`ReplicaServer`]: a node's backup service. Its own listener (own
//!   port) and its own thread, which polls every connection (several
//!   workers of several nodes stream at once) and keeps what arrives in one
//!   [`BackupStore`] per origin worker, under `root/w{origin_worker}/`.
//!   `BackupStore::receive` checks every chunk and says when a checkpoint
//!   is whole and stored; only then does the server send the ack.
//! * [`ReplicaClient`]: one worker's stream to one backup node, driven
//!   from the worker's backup-writer thread: [`ReplicaClient::send_chunk`]
//!   for each chunk of a [`CheckpointStream`](spate_state::CheckpointStream)
//!   in order, then [`ReplicaClient::wait_ack`].
//! * [`fetch`]: brings back every instance's checkpoint `id` of one origin
//!   worker (each with its chain: full image, then increments) into a local
//!   [`BackupStore`], from which `StateStore::restore_id` rebuilds the state.
//!
//! The module's files: `wire` (the messages, the hello names), `reassembly`
//! (chunk parts back into chunks), `server` (the service's thread and its
//! connections), `fetch_stream` (the service side of a fetch), `client`
//! ([`ReplicaClient`]), `fetch` ([`fetch`]) and `error` ([`ReplicaError`]).
//! Every call that fails returns a [`ReplicaError`] naming what went wrong
//! and with which peer, worker, instance, checkpoint or message field; its
//! message is complete on its own (it includes its source's). The
//! service's errors reach its peers as the text of an error report.
//!
//! Connections are `spate_net` [`Connection`]s: plain non-blocking sockets,
//! polled (no async); every loop here has a deadline. Liveness is
//! connection loss (a backup node that dies closes its sockets: the client's
//! next call fails with "peer closed the connection" at once) plus the
//! callers' timeouts (a silent, unreachable peer); no heartbeats are sent.
//!
//! # Wire format
//!
//! Every message is one `spate_net` control frame (crc32-checked by the
//! transport) on channel 0; the frame's `seq` is the sender's message
//! counter (informational, not checked). All integers are little endian.
//! The hello's node name says what a connection is for, and the cluster id
//! must be the job's (a listener refuses other clusters):
//!
//! * `bak:w{origin}`: worker `origin` streams its checkpoints to be kept;
//! * `fetch:w{origin}`: a recovery fetches worker `origin`'s checkpoints.
//!
//! Any other name is refused (`unknown node name`). The server's own hello
//! name is `replica`. Messages:
//!
//! ```text
//! CheckpointChunk  part of one checkpoint chunk of an instance's stream
//!                  (bak: client -> server; fetch: server -> client)
//!     | name_len u16 | chunk_len u32 | offset u32 | name (UTF-8) | bytes |
//! Ack (bak)        server -> client: the checkpoint is whole and stored
//!     | name_len u16 | checkpoint u64 | bytes u64 | name |
//! Report           server -> client: an error; for an instance (a chunk the
//!                  backup store refused, which drops that checkpoint) or,
//!                  with an empty name, for the connection (then closed)
//!     | name_len u16 | checkpoint u64 (0: unknown) | name | message (UTF-8) |
//! Recovery         fetch client -> server: the request, once
//!     | origin u64 | checkpoint u64 |
//! Ack (fetch)      server -> client: the end of a fetch, with its totals
//!     | instances u64 | checkpoints u64 | chunks u64 | bytes u64 |
//! ```
//!
//! A chunk (the checkpoint format's `len | crc32 | kind | payload`, up to
//! [`CHUNK_BYTES_MAX`] bytes) travels as one or more parts of at most
//! [`PART_BYTES_MAX`] bytes, since a frame is at most
//! [`MAX_FRAME_BYTES`]: the first at offset 0, each
//! next one at the end of the previous one, with no other message between
//! them, until `offset + len(bytes) == chunk_len`. The receiver reassembles
//! them (a one-part chunk is handed on in place, without a copy) and checks
//! every field: a malformed or truncated message is an error that names the
//! message, the field and the numbers, never a panic. On a backup stream a
//! malformed message makes the server answer with a connection `Report`
//! and close that connection; a chunk the [`BackupStore`] refuses (bad
//! crc, out of order, ...) gets an instance `Report`, and the server drops
//! the rest of that checkpoint silently, until the instance's next header
//! chunk, and goes on serving.
//!
//! A fetch streams, for each instance of the origin worker (in name order),
//! the stored chunks of each checkpoint of the chain of `id` (full image
//! first), each read back and split with `decode_chunk`, which checks its
//! crc again; then the end marker. The server checks up front that every
//! instance has `id` complete, and refuses the fetch naming those that do
//! not. The client checks that each instance's chain ended with an ack of
//! `id` by its local store and that the totals agree with the end marker.
//!
//! # Costs and limits
//!
//! The checkpoint path, not the record path: per part one copy into a
//! reused message buffer and one into the connection's send buffer on the
//! client; on the server, the transport's buffer is handed to
//! `BackupStore::receive` in place (one-part chunks). The client writes to
//! the socket once [`FLUSH_BYTES`] are queued, so a stream of 4 KiB page
//! chunks costs about one `write` per 256 KiB. One server thread serves
//! every connection: a `Fsync` backup's fsync delays the other streams for
//! its duration. Memory per connection is bounded by the transport's
//! buffers ([`SEND_BUFFER_BYTES`], [`READ_AHEAD_BYTES`]) plus one chunk
//! being reassembled; the server takes at most [`CONNECTIONS_MAX`]
//! connections (further ones wait in the kernel's accept queue).
//!
//! The server drops what the job's last complete checkpoint no longer
//! needs and compacts each stored chain into one image every
//! [`COMPACT_EVERY`] checkpoints that the job completed (the node tells it,
//! [`ReplicaServer::completion`]), so what it keeps stays bounded. Not
//! promised: a checkpoint left half-received by a client that died is dropped
//! only when the instance's next checkpoint starts (or the store is
//! reopened).
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use spate_core::replica::{fetch, ReplicaClient, ReplicaServer};
//! use spate_state::{hash_u64, BackupStore, BinRange, Durability, StateStore, StoreConfig, ValueState};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let dir = tempfile::tempdir()?;
//! let t = Duration::from_secs(5);
//! let server = ReplicaServer::start("127.0.0.1:0".parse().unwrap(), dir.path().join("bak"), 7, Durability::PageCache)?;
//! let mut store = StateStore::create(StoreConfig::new(dir.path().join("s"), 4), BinRange::all(4))?;
//! let mut sums = ValueState::<u64, u64>::register(&mut store, "sums")?;
//! sums.put(&mut store, hash_u64(1), &1, &42)?;
//!
//! // Worker 3 streams checkpoint 1 of instance "op" to the backup node.
//! let mut client = ReplicaClient::connect(server.addr(), 7, 3, t)?;
//! let mut stream = store.begin_checkpoint(1, b"meta")?;
//! while let Some(chunk) = stream.next_chunk() {
//!     client.send_chunk("op", chunk)?;
//! }
//! client.wait_ack("op", 1, t)?;
//!
//! // Recovery: fetch worker 3's checkpoint 1 and restore it.
//! let mut local = BackupStore::open(dir.path().join("local"), Durability::Memory)?;
//! let report = fetch(server.addr(), 7, 3, 1, &mut local, t)?;
//! assert_eq!(report.instances, ["op"]);
//! let (mut restored, meta, _) =
//!     StateStore::restore_id(StoreConfig::new(dir.path().join("r"), 4), &local, "op", 1)?;
//! let mut sums_r = ValueState::<u64, u64>::register(&mut restored, "sums")?;
//! assert_eq!((sums_r.get(&restored, hash_u64(1), &1), meta.as_slice()), (Some(42), &b"meta"[..]));
//! server.stop();
//! # Ok(())
//! # }
//! ```
//!
//! [`BackupStore`]: spate_state::BackupStore
//! [`Connection`]: spate_net::Connection

mod client;
mod error;
mod fetch;
mod fetch_stream;
mod parcel;
mod reassembly;
mod server;
#[cfg(test)]
mod tests;
mod wire;

use std::time::Duration;

use spate_net::frame::{FRAME_OVERHEAD, MAX_FRAME_BYTES};
use spate_state::checkpoint::CHUNK_MAX;

pub use client::ReplicaClient;
pub use error::{Link, Malformation, Missing, ReplicaError, StoredFault};
pub use fetch::{fetch, FetchReport};
pub use parcel::{
    parcel_hello_name, parse_parcel_hello_name, receive_parcel, send_parcel, Parcel, ParcelError,
    ParcelReceiver, ParcelSender,
};
pub use server::{CompletionHandle, ReplicaServer};

// ---------------------------------------------------------------------------
// Limits
// ---------------------------------------------------------------------------

/// Most bytes of a chunk one frame carries; larger chunks travel as several
/// parts.
pub const PART_BYTES_MAX: usize = 1 << 20;

/// Longest instance name on the wire, in bytes of UTF-8.
pub const INSTANCE_NAME_BYTES_MAX: usize = 1024;

/// Largest chunk: the checkpoint format's 8 bytes of `len` and `crc32`,
/// then at most `CHUNK_MAX` bytes of kind and payload.
pub const CHUNK_BYTES_MAX: usize = 8 + CHUNK_MAX;

/// Longest error message a server sends (longer ones are cut).
pub const ERROR_MESSAGE_BYTES_MAX: usize = 4096;

/// Send buffer of a replica connection (either side), in bytes of frames
/// queued and not yet written to the socket.
pub const SEND_BUFFER_BYTES: usize = 4 << 20;

/// Read-ahead of a replica connection (either side).
pub const READ_AHEAD_BYTES: usize = 4 << 20;

/// Bytes a client queues before it writes them to the socket (and reads
/// what the server sent): few syscalls for a stream of small chunks.
pub const FLUSH_BYTES: usize = 256 << 10;

/// Most connections a server serves at once.
pub const CONNECTIONS_MAX: usize = 1024;

/// Frames a server takes from one connection per pass before it visits the
/// next, so that no stream starves the others.
const FRAMES_PER_PASS: usize = 256;

/// Bytes a server queues on one fetch per pass.
const FETCH_BYTES_PER_PASS: usize = 8 << 20;

/// Handshakes a server finishes (or fails) per pass at most.
const ACCEPTS_PER_PASS: usize = 64;

/// How long a server sleeps after a pass with nothing to do.
const SERVER_IDLE_NAP: Duration = Duration::from_millis(1);

/// How long a client sleeps when the socket neither takes nor gives bytes.
const CLIENT_NAP: Duration = Duration::from_micros(50);

/// How long a server waits, without any byte moving, for a connection it
/// closes to take its last messages (an error, the end of a fetch) and to
/// close its side.
const CLOSE_LINGER: Duration = Duration::from_secs(1);

/// How long a fetch connection has to send its request.
const FETCH_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// A reassembly buffer that grew past this (a huge chunk) is given back
/// before the next chunk.
const REASSEMBLY_KEEP_BYTES: usize = 16 << 20;

/// Most bytes reserved at once for a chunk being reassembled.
const REASSEMBLY_RESERVE_BYTES_MAX: usize = 64 << 20;

/// Acknowledged checkpoint ids a client remembers per instance that nobody
/// waited for yet; the oldest are forgotten.
const ACKS_KEPT_MAX: usize = 4096;

/// Errors a client remembers per instance that nobody waited for yet; the
/// first ones are kept.
const ERRORS_KEPT_MAX: usize = 64;

/// Bytes of a part's fixed header (`name_len`, `chunk_len`, `offset`).
const PART_HEADER_BYTES: usize = 2 + 4 + 4;

/// The server's hello name.
const SERVER_NAME: &str = "replica";

/// Compact the stored chains every this many complete checkpoints.
pub const COMPACT_EVERY: u64 = 32;

const _: () = assert!(
    FRAME_OVERHEAD + PART_HEADER_BYTES + INSTANCE_NAME_BYTES_MAX + PART_BYTES_MAX <= MAX_FRAME_BYTES as usize
);
const _: () = assert!(CHUNK_BYTES_MAX <= u32::MAX as usize);
const _: () = assert!(INSTANCE_NAME_BYTES_MAX <= u16::MAX as usize);
const _: () = assert!(PART_BYTES_MAX + INSTANCE_NAME_BYTES_MAX + FRAME_OVERHEAD <= SEND_BUFFER_BYTES / 2);
const _: () = assert!(FLUSH_BYTES < SEND_BUFFER_BYTES);
const _: () = assert!(REASSEMBLY_KEEP_BYTES >= PART_BYTES_MAX);

/// The totals of a fetch: what its end marker says was sent, or what the
/// client received ([`ReplicaError::TotalsDiffer`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    /// Instances.
    pub instances: u64,
    /// Checkpoints (full images and increments, over all instances).
    pub checkpoints: u64,
    /// Chunks.
    pub chunks: u64,
    /// Bytes of chunks.
    pub bytes: u64,
}
