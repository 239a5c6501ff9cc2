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
//! # fn main() -> Result<(), String> {
//! # let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
//! # let e = |e: spate_state::StateError| e.to_string();
//! let t = Duration::from_secs(5);
//! let server = ReplicaServer::start("127.0.0.1:0".parse().unwrap(), dir.path().join("bak"), 7, Durability::PageCache)?;
//! let mut store = StateStore::create(StoreConfig::new(dir.path().join("s"), 4), BinRange::all(4)).map_err(e)?;
//! let mut sums = ValueState::<u64, u64>::register(&mut store, "sums").map_err(e)?;
//! sums.put(&mut store, hash_u64(1), &1, &42).map_err(e)?;
//!
//! // Worker 3 streams checkpoint 1 of instance "op" to the backup node.
//! let mut client = ReplicaClient::connect(server.addr(), 7, 3, t)?;
//! let mut stream = store.begin_checkpoint(1, b"meta").map_err(e)?;
//! while let Some(chunk) = stream.next_chunk() {
//!     client.send_chunk("op", chunk)?;
//! }
//! client.wait_ack("op", 1, t)?;
//!
//! // Recovery: fetch worker 3's checkpoint 1 and restore it.
//! let mut local = BackupStore::open(dir.path().join("local"), Durability::Memory).map_err(e)?;
//! let report = fetch(server.addr(), 7, 3, 1, &mut local, t)?;
//! assert_eq!(report.instances, ["op"]);
//! let (mut restored, meta, _) =
//!     StateStore::restore_id(StoreConfig::new(dir.path().join("r"), 4), &local, "op", 1).map_err(e)?;
//! let mut sums_r = ValueState::<u64, u64>::register(&mut restored, "sums").map_err(e)?;
//! assert_eq!((sums_r.get(&restored, hash_u64(1), &1), meta.as_slice()), (Some(42), &b"meta"[..]));
//! server.stop();
//! # Ok(())
//! # }
//! ```

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::fs::File;
use std::io::{BufReader, Read};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use spate_net::frame::{Kind, FRAME_OVERHEAD, MAX_FRAME_BYTES};
use spate_net::hello::Rejection;
use spate_net::{Connection, Delivery, Listener, NetConfig, NetError};
use spate_state::checkpoint::{decode_chunk, ChunkKind, CHUNK_MAX};
use spate_state::{Ack, BackupStore, Durability, StateError};

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

const _: () = assert!(
    FRAME_OVERHEAD + PART_HEADER_BYTES + INSTANCE_NAME_BYTES_MAX + PART_BYTES_MAX <= MAX_FRAME_BYTES as usize
);
const _: () = assert!(CHUNK_BYTES_MAX <= u32::MAX as usize);
const _: () = assert!(INSTANCE_NAME_BYTES_MAX <= u16::MAX as usize);
const _: () = assert!(PART_BYTES_MAX + INSTANCE_NAME_BYTES_MAX + FRAME_OVERHEAD <= SEND_BUFFER_BYTES / 2);
const _: () = assert!(FLUSH_BYTES < SEND_BUFFER_BYTES);
const _: () = assert!(REASSEMBLY_KEEP_BYTES >= PART_BYTES_MAX);

// ---------------------------------------------------------------------------
// Wire format: encoding and parsing
// ---------------------------------------------------------------------------

/// One part of a chunk, borrowed from a frame.
#[derive(Clone, Copy, Debug)]
struct Part<'a> {
    instance: &'a str,
    chunk_len: usize,
    offset: usize,
    bytes: &'a [u8],
}

/// The totals of a fetch (its end marker).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Totals {
    instances: u64,
    checkpoints: u64,
    chunks: u64,
    bytes: u64,
}

/// Reads the fields of one message, naming the message and the field in
/// its errors.
struct Fields<'a> {
    buf: &'a [u8],
    pos: usize,
    message: &'static str,
}

impl<'a> Fields<'a> {
    fn new(buf: &'a [u8], message: &'static str) -> Self {
        Self { buf, pos: 0, message }
    }

    fn take(&mut self, n: usize, field: &str) -> Result<&'a [u8], String> {
        let have = self.buf.len() - self.pos;
        if have < n {
            return Err(format!(
                "malformed {} message: truncated at `{field}`: {have} of {n} bytes ({} in all)",
                self.message,
                self.buf.len()
            ));
        }
        let b = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(b)
    }

    fn array<const N: usize>(&mut self, field: &str) -> Result<[u8; N], String> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N, field)?);
        Ok(a)
    }

    fn u16(&mut self, field: &str) -> Result<u16, String> {
        self.array(field).map(u16::from_le_bytes)
    }

    fn u32(&mut self, field: &str) -> Result<u32, String> {
        self.array(field).map(u32::from_le_bytes)
    }

    fn u64(&mut self, field: &str) -> Result<u64, String> {
        self.array(field).map(u64::from_le_bytes)
    }

    fn str(&mut self, n: usize, field: &str) -> Result<&'a str, String> {
        let b = self.take(n, field)?;
        std::str::from_utf8(b)
            .map_err(|_| format!("malformed {} message: `{field}` is not UTF-8", self.message))
    }

    /// An instance name of `n` bytes (empty only if `empty_ok`).
    fn name(&mut self, n: usize, empty_ok: bool) -> Result<&'a str, String> {
        if (n == 0 && !empty_ok) || n > INSTANCE_NAME_BYTES_MAX {
            return Err(format!(
                "malformed {} message: instance name of {n} bytes (must be 1 to {INSTANCE_NAME_BYTES_MAX})",
                self.message
            ));
        }
        self.str(n, "name")
    }

    fn rest(&mut self) -> &'a [u8] {
        let b = &self.buf[self.pos..];
        self.pos = self.buf.len();
        b
    }

    fn end(&self) -> Result<(), String> {
        let extra = self.buf.len() - self.pos;
        if extra > 0 {
            return Err(format!("malformed {} message: {extra} bytes after its end", self.message));
        }
        Ok(())
    }
}

fn check_name(instance: &str) -> Result<(), String> {
    let n = instance.len();
    if n == 0 || n > INSTANCE_NAME_BYTES_MAX {
        return Err(format!("instance name of {n} bytes (must be 1 to {INSTANCE_NAME_BYTES_MAX})"));
    }
    Ok(())
}

/// Writes a part into `out` (cleared first). The caller checked the name
/// and the sizes.
fn encode_part(out: &mut Vec<u8>, instance: &str, chunk_len: usize, offset: usize, bytes: &[u8]) {
    debug_assert!(check_name(instance).is_ok());
    debug_assert!(chunk_len <= CHUNK_BYTES_MAX && offset + bytes.len() <= chunk_len);
    debug_assert!(!bytes.is_empty() && bytes.len() <= PART_BYTES_MAX);
    out.clear();
    out.reserve(PART_HEADER_BYTES + instance.len() + bytes.len());
    out.extend_from_slice(&(instance.len() as u16).to_le_bytes());
    out.extend_from_slice(&(chunk_len as u32).to_le_bytes());
    out.extend_from_slice(&(offset as u32).to_le_bytes());
    out.extend_from_slice(instance.as_bytes());
    out.extend_from_slice(bytes);
}

fn parse_part(payload: &[u8]) -> Result<Part<'_>, String> {
    let mut f = Fields::new(payload, "chunk part");
    let name_len = usize::from(f.u16("name_len")?);
    let chunk_len = f.u32("chunk_len")? as usize;
    let offset = f.u32("offset")? as usize;
    let instance = f.name(name_len, false)?;
    let bytes = f.rest();
    if chunk_len == 0 || chunk_len > CHUNK_BYTES_MAX {
        return Err(format!(
            "malformed chunk part message of `{instance}`: chunk of {chunk_len} bytes (must be 1 to {CHUNK_BYTES_MAX})"
        ));
    }
    if bytes.is_empty() || bytes.len() > PART_BYTES_MAX || offset + bytes.len() > chunk_len {
        return Err(format!(
            "malformed chunk part message of `{instance}`: {} bytes at offset {offset} of a chunk of \
             {chunk_len} bytes (parts carry 1 to {PART_BYTES_MAX} bytes within the chunk)",
            bytes.len()
        ));
    }
    Ok(Part { instance, chunk_len, offset, bytes })
}

fn encode_ack(ack: &Ack) -> Vec<u8> {
    let mut out = Vec::with_capacity(18 + ack.instance.len());
    out.extend_from_slice(&(ack.instance.len() as u16).to_le_bytes());
    out.extend_from_slice(&ack.checkpoint.to_le_bytes());
    out.extend_from_slice(&ack.bytes.to_le_bytes());
    out.extend_from_slice(ack.instance.as_bytes());
    out
}

/// (instance, checkpoint, bytes)
fn parse_ack(payload: &[u8]) -> Result<(&str, u64, u64), String> {
    let mut f = Fields::new(payload, "ack");
    let name_len = usize::from(f.u16("name_len")?);
    let checkpoint = f.u64("checkpoint")?;
    let bytes = f.u64("bytes")?;
    let instance = f.name(name_len, false)?;
    f.end()?;
    Ok((instance, checkpoint, bytes))
}

/// An error report for `instance` ("" for the connection); the message is
/// cut to [`ERROR_MESSAGE_BYTES_MAX`] at a character boundary.
fn encode_error(instance: &str, checkpoint: u64, message: &str) -> Vec<u8> {
    let instance = if instance.len() > INSTANCE_NAME_BYTES_MAX { "" } else { instance };
    let mut cut = message.len().min(ERROR_MESSAGE_BYTES_MAX);
    while !message.is_char_boundary(cut) {
        cut -= 1;
    }
    let mut out = Vec::with_capacity(10 + instance.len() + cut);
    out.extend_from_slice(&(instance.len() as u16).to_le_bytes());
    out.extend_from_slice(&checkpoint.to_le_bytes());
    out.extend_from_slice(instance.as_bytes());
    out.extend_from_slice(&message.as_bytes()[..cut]);
    out
}

/// (instance, checkpoint, message)
fn parse_error(payload: &[u8]) -> Result<(&str, u64, &str), String> {
    let mut f = Fields::new(payload, "error report");
    let name_len = usize::from(f.u16("name_len")?);
    let checkpoint = f.u64("checkpoint")?;
    let instance = f.name(name_len, true)?;
    let n = payload.len() - f.pos;
    let message = f.str(n, "message")?;
    Ok((instance, checkpoint, message))
}

fn encode_request(origin: usize, checkpoint: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(16);
    out.extend_from_slice(&(origin as u64).to_le_bytes());
    out.extend_from_slice(&checkpoint.to_le_bytes());
    out
}

/// (origin, checkpoint)
fn parse_request(payload: &[u8]) -> Result<(u64, u64), String> {
    let mut f = Fields::new(payload, "fetch request");
    let origin = f.u64("origin")?;
    let checkpoint = f.u64("checkpoint")?;
    f.end()?;
    Ok((origin, checkpoint))
}

fn encode_done(out: &mut Vec<u8>, t: &Totals) {
    out.clear();
    for v in [t.instances, t.checkpoints, t.chunks, t.bytes] {
        out.extend_from_slice(&v.to_le_bytes());
    }
}

fn parse_done(payload: &[u8]) -> Result<Totals, String> {
    let mut f = Fields::new(payload, "end of fetch");
    let t = Totals {
        instances: f.u64("instances")?,
        checkpoints: f.u64("checkpoints")?,
        chunks: f.u64("chunks")?,
        bytes: f.u64("bytes")?,
    };
    f.end()?;
    Ok(t)
}

/// What a connection is for, from its hello name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Purpose {
    Backup,
    Fetch,
}

fn parse_hello_name(node: &str) -> Option<(Purpose, usize)> {
    parse_hello_name_epoch(node).map(|(p, o, _)| (p, o))
}

/// `(purpose, origin, epoch)` of a hello name (`bak:w{origin}` or
/// `bak:w{origin}@{epoch}`, epoch 0 when absent; `fetch:w{origin}`).
fn parse_hello_name_epoch(node: &str) -> Option<(Purpose, usize, u64)> {
    let (purpose, n) = if let Some(n) = node.strip_prefix("bak:w") {
        (Purpose::Backup, n)
    } else {
        (Purpose::Fetch, node.strip_prefix("fetch:w")?)
    };
    let (n, epoch) = match (purpose, n.split_once('@')) {
        (Purpose::Backup, Some((n, e))) => {
            if e.is_empty() || !e.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            (n, e.parse().ok()?)
        }
        (_, None) => (n, 0),
        (Purpose::Fetch, Some(_)) => return None,
    };
    if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((purpose, n.parse().ok()?, epoch))
}

/// The id of the checkpoint an error is about, where known (0: unknown).
fn checkpoint_of(e: &StateError) -> u64 {
    match e {
        StateError::CorruptCheckpoint { checkpoint, .. } => *checkpoint,
        _ => 0,
    }
}

fn net_config(node: String, cluster: u64) -> NetConfig {
    let mut c = NetConfig::new(node, cluster);
    c.send_buffer_bytes = SEND_BUFFER_BYTES;
    c.read_ahead_bytes = READ_AHEAD_BYTES;
    c
}

fn connect(addr: SocketAddr, node: String, cluster: u64, deadline: Instant) -> Result<Connection, String> {
    Connection::connect(addr, &net_config(node, cluster), deadline)
        .and_then(|c| c.wait())
        .map_err(|e| format!("cannot connect to the backup service: {e}"))
}

/// Puts the parts of chunks back together.
#[derive(Default)]
struct Reassembly {
    instance: String,
    chunk_len: usize,
    buf: Vec<u8>,
    /// A chunk is partly received.
    active: bool,
}

impl Reassembly {
    /// Takes the next part; returns the whole chunk (its instance and
    /// bytes) when this was its last part. A one-part chunk is returned in
    /// place.
    fn push<'a>(&'a mut self, part: Part<'a>) -> Result<Option<(&'a str, &'a [u8])>, String> {
        if !self.active {
            if part.offset != 0 {
                return Err(format!(
                    "chunk part of `{}` at offset {} of {} bytes without the parts before it",
                    part.instance, part.offset, part.chunk_len
                ));
            }
            if part.bytes.len() == part.chunk_len {
                return Ok(Some((part.instance, part.bytes)));
            }
            if self.buf.capacity() > REASSEMBLY_KEEP_BYTES {
                self.buf = Vec::new();
            }
            self.instance.clear();
            self.instance.push_str(part.instance);
            self.chunk_len = part.chunk_len;
            self.buf.clear();
            // Room for the whole chunk up to a bound (the peer announces
            // the length; more grows as parts arrive).
            self.buf.reserve_exact(part.chunk_len.min(REASSEMBLY_RESERVE_BYTES_MAX));
            self.active = true;
        } else if part.instance != self.instance
            || part.chunk_len != self.chunk_len
            || part.offset != self.buf.len()
        {
            return Err(format!(
                "chunk part of `{}` (offset {}, chunk of {} bytes) does not continue the chunk of `{}` \
                 received up to {} of {} bytes",
                part.instance,
                part.offset,
                part.chunk_len,
                self.instance,
                self.buf.len(),
                self.chunk_len
            ));
        }
        self.buf.extend_from_slice(part.bytes);
        if self.buf.len() < self.chunk_len {
            return Ok(None);
        }
        self.active = false;
        Ok(Some((&self.instance, &self.buf)))
    }
}

// ---------------------------------------------------------------------------
// Server
// ---------------------------------------------------------------------------

/// A node's backup service: its own TCP listener (own port), served by its
/// own thread, keeping the checkpoint streams of other nodes' workers and
/// serving them back to recoveries (see the [module documentation](self)).
#[derive(Debug)]
pub struct ReplicaServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    completed: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl ReplicaServer {
    /// Binds `bind` (for example `127.0.0.1:0`, or the node's IP with port
    /// 0: see [`addr`](Self::addr)) and starts the service's thread, which
    /// stores what it receives under `root/w{origin_worker}/` (one
    /// [`BackupStore`] per origin worker, opened at the worker's first
    /// connection: checkpoints already there are served too) with
    /// `durability`. `cluster` is the job id the peers' hellos must carry.
    /// Fails if the address cannot be bound or `root` cannot be created.
    pub fn start(
        bind: SocketAddr,
        root: PathBuf,
        cluster: u64,
        durability: Durability,
    ) -> Result<Self, String> {
        if durability != Durability::Memory {
            std::fs::create_dir_all(&root)
                .map_err(|e| format!("replica server: cannot create {}: {e}", root.display()))?;
        }
        let listener = Listener::bind(bind, net_config(SERVER_NAME.into(), cluster))
            .map_err(|e| format!("replica server: cannot listen on {bind}: {e}"))?;
        let addr = listener.local_addr();
        let stop = Arc::new(AtomicBool::new(false));
        let completed = Arc::new(AtomicU64::new(0));
        let mut server = Server {
            listener,
            root,
            durability,
            stores: HashMap::new(),
            peers: Vec::new(),
            completed: Arc::clone(&completed),
            retained: 0,
            compacted: 0,
            epochs: HashMap::new(),
        };
        let flag = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name(format!("spate-replica-{}", addr.port()))
            .spawn(move || {
                while !flag.load(Ordering::Acquire) {
                    if !server.poll() {
                        std::thread::sleep(SERVER_IDLE_NAP);
                    }
                }
            })
            .map_err(|e| format!("replica server: cannot start its thread: {e}"))?;
        Ok(Self { addr, stop, completed, thread: Some(thread) })
    }

    /// Where the node records the job's last complete checkpoint
    /// ([`CompletionHandle::complete`]). The service then removes every
    /// stored checkpoint that restoring it (or a later one) never reads,
    /// and every [`COMPACT_EVERY`] checkpoints compacts each chain that
    /// ends at it into one image, so that what it stores stays bounded. A
    /// chain that ends at a newer checkpoint (not complete everywhere yet,
    /// and maybe never) is not compacted: the complete one must stay
    /// restorable.
    pub fn completion(&self) -> CompletionHandle {
        CompletionHandle(Arc::clone(&self.completed))
    }

    /// The address the service listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops the thread, closing the listener and every connection (also
    /// done on drop). Returns within a pass of the loop (milliseconds, or
    /// one fsync).
    pub fn stop(self) {
        drop(self);
    }
}

impl Drop for ReplicaServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            // The thread does not panic; if it did, there is nothing left
            // to stop.
            let _ = t.join();
        }
    }
}

/// Compact the stored chains every this many complete checkpoints.
pub const COMPACT_EVERY: u64 = 32;

/// Tells a [`ReplicaServer`] which checkpoint of the job is complete on
/// every node (see [`ReplicaServer::completion`]).
#[derive(Debug, Clone)]
pub struct CompletionHandle(Arc<AtomicU64>);

impl CompletionHandle {
    /// Checkpoint `id` of the job is complete.
    pub fn complete(&self, id: u64) {
        self.0.fetch_max(id, Ordering::AcqRel);
    }
}

/// The state of the service's thread.
struct Server {
    listener: Listener,
    root: PathBuf,
    durability: Durability,
    stores: HashMap<usize, BackupStore>,
    peers: Vec<Peer>,
    /// The job's last complete checkpoint, and the one the chains were
    /// last compacted at.
    completed: Arc<AtomicU64>,
    retained: u64,
    compacted: u64,
    /// Per origin worker, the newest epoch whose stream connected.
    epochs: HashMap<usize, u64>,
}

/// One served connection.
struct Peer {
    conn: Connection,
    origin: usize,
    /// The epoch of the deployment whose worker streams (0: none given).
    epoch: u64,
    role: Role,
    /// Messages waiting for room in the send buffer.
    out: VecDeque<(Kind, Vec<u8>)>,
    seq: u64,
    /// Closing: delivering `out` and the send buffer, then waiting for
    /// the peer to close; the time bytes last moved (the connection is
    /// dropped after [`CLOSE_LINGER`] without any).
    closing: Option<Instant>,
    /// When the connection was accepted.
    accepted: Instant,
    /// Our side is shut down (closing, everything delivered).
    shut: bool,
}

impl Peer {
    fn is_backup(&self) -> bool {
        matches!(self.role, Role::Backup { .. })
    }
}

enum Role {
    Backup {
        asm: Reassembly,
        /// Instances whose current checkpoint was refused: their chunks
        /// are dropped until the next header chunk.
        refused: HashSet<String>,
    },
    /// A fetch: waiting for its request, then streaming.
    Fetch(Option<FetchStream>),
}

impl Server {
    /// One pass over the listener and every connection; whether anything
    /// happened.
    fn poll(&mut self) -> bool {
        let mut progress = self.compact();
        for _ in 0..ACCEPTS_PER_PASS {
            if self.peers.len() >= CONNECTIONS_MAX {
                break;
            }
            // Fencing: a worker's stream of an older epoch than one already
            // seen (a node declared failed that came back) is refused.
            let epochs = &self.epochs;
            let admit = |p: &spate_net::Peer| match parse_hello_name_epoch(&p.node) {
                Some((Purpose::Backup, origin, e)) if epochs.get(&origin).is_some_and(|&seen| e < seen) => {
                    Err(Rejection::UnknownNode)
                }
                Some(_) => Ok(()),
                None => Err(Rejection::UnknownNode),
            };
            match self.listener.poll_accept_with(admit) {
                Ok(Some(conn)) => {
                    progress = true;
                    if let Some((Purpose::Backup, origin, e)) = parse_hello_name_epoch(&conn.peer().node) {
                        let seen = self.epochs.entry(origin).or_insert(0);
                        if e > *seen {
                            *seen = e;
                            // The older epoch's streams of this worker end.
                            self.peers.retain(|p| !(p.origin == origin && p.epoch < e && p.is_backup()));
                        }
                    }
                    self.add(conn);
                }
                Ok(None) => break,
                // One peer's failed or refused handshake (it was told why),
                // or one failed accept: the listener goes on.
                Err(_) => {}
            }
        }
        let mut i = 0;
        while i < self.peers.len() {
            match serve(&mut self.peers[i], &mut self.stores) {
                Ok(p) => {
                    progress |= p;
                    i += 1;
                }
                Err(()) => {
                    self.peers.swap_remove(i);
                    progress = true;
                }
            }
        }
        progress
    }

    /// When the job completed a newer checkpoint: removes what restoring
    /// it never reads, and every [`COMPACT_EVERY`] checkpoints compacts the
    /// chains that end at it into one image.
    fn compact(&mut self) -> bool {
        let done = self.completed.load(Ordering::Acquire);
        if done <= self.retained {
            return false;
        }
        self.retained = done;
        let compact = done >= self.compacted + COMPACT_EVERY;
        if compact {
            self.compacted = done;
        }
        for (origin, store) in self.stores.iter_mut() {
            for instance in store.instances() {
                let ids = store.complete_checkpoints(&instance);
                if !ids.contains(&done) {
                    continue;
                }
                let res = store.retain_from(&instance, done).and_then(|_| {
                    if compact && ids.last() == Some(&done) {
                        store.compact(&instance).map(|_| ())
                    } else {
                        Ok(())
                    }
                });
                if let Err(e) = res {
                    // The chain stays as it was; the next round tries again.
                    eprintln!("spate: replica service: retention of `{instance}` of worker {origin}: {e}");
                }
            }
        }
        true
    }

    fn add(&mut self, conn: Connection) {
        // Admitted, so the name parses.
        let Some((purpose, origin)) = parse_hello_name(&conn.peer().node) else {
            return;
        };
        let role = match purpose {
            Purpose::Backup => Role::Backup { asm: Reassembly::default(), refused: HashSet::new() },
            Purpose::Fetch => Role::Fetch(None),
        };
        let epoch = parse_hello_name_epoch(&conn.peer().node).map_or(0, |(_, _, e)| e);
        let mut peer = Peer {
            conn,
            origin,
            epoch,
            role,
            out: VecDeque::new(),
            seq: 0,
            closing: None,
            accepted: Instant::now(),
            shut: false,
        };
        if let std::collections::hash_map::Entry::Vacant(v) = self.stores.entry(origin) {
            let dir = self.root.join(format!("w{origin}"));
            match BackupStore::open(&dir, self.durability) {
                Ok(s) => {
                    v.insert(s);
                }
                Err(e) => peer.fail(&format!("cannot open the backup store of worker {origin}: {e}")),
            }
        }
        self.peers.push(peer);
    }
}

impl Peer {
    /// Queues a connection error report and starts closing.
    fn fail(&mut self, message: &str) {
        self.out.push_back((Kind::Report, encode_error("", 0, message)));
        self.closing.get_or_insert_with(Instant::now);
    }

    /// Moves queued messages into the send buffer while there is room.
    fn flush_out(&mut self) -> Result<(), NetError> {
        while let Some((kind, payload)) = self.out.front() {
            if !self.conn.try_send_control(*kind, 0, self.seq, payload)? {
                break;
            }
            self.seq += 1;
            self.out.pop_front();
        }
        Ok(())
    }
}

/// Serves one connection for one pass: `Err(())` when it is to be dropped
/// (closed by the peer, failed, or closed by us).
fn serve(peer: &mut Peer, stores: &mut HashMap<usize, BackupStore>) -> Result<bool, ()> {
    if let Some(moved) = peer.closing {
        // Deliver what is queued, close our side, then drain the peer's
        // input until it closes too (closing a socket with unread input
        // would reset the connection and could lose our last message).
        peer.flush_out().map_err(drop)?;
        let mut progress = peer.conn.poll_io().map_err(drop)?;
        if !peer.shut && peer.out.is_empty() && peer.conn.unsent_bytes() == 0 {
            peer.shut = peer.conn.shutdown_write().map_err(drop)?;
        }
        progress |= peer.conn.poll_recv(usize::MAX, |_| Delivery::Consumed).map_err(drop)? > 0;
        if progress {
            peer.closing = Some(Instant::now());
        } else if moved.elapsed() > CLOSE_LINGER {
            return Err(());
        }
        return Ok(progress);
    }
    if matches!(peer.role, Role::Fetch(None)) && peer.accepted.elapsed() > FETCH_REQUEST_TIMEOUT {
        peer.fail(&format!("no fetch request within {FETCH_REQUEST_TIMEOUT:?}"));
        return Ok(true);
    }
    peer.flush_out().map_err(drop)?;
    let mut progress = peer.conn.poll_io().map_err(drop)?;
    // Take input only while the answers to earlier input are out:
    // backpressure on a peer that does not read its answers.
    if !peer.out.is_empty() {
        return Ok(progress);
    }
    let origin = peer.origin;
    let Some(store) = stores.get_mut(&origin) else {
        peer.fail(&format!("no backup store for worker {origin}"));
        return Ok(true);
    };
    let mut fatal: Option<String> = None;
    let Peer { conn, role, out, .. } = peer;
    let frames = match role {
        Role::Backup { asm, refused } => conn.poll_recv(FRAMES_PER_PASS, |f| {
            if fatal.is_some() {
                return Delivery::Consumed;
            }
            if f.header.kind != Kind::CheckpointChunk {
                fatal = Some(format!("unexpected {:?} frame on a backup stream", f.header.kind));
                return Delivery::Consumed;
            }
            match parse_part(f.payload).and_then(|p| asm.push(p)) {
                Err(e) => fatal = Some(e),
                Ok(None) => {}
                Ok(Some((instance, chunk))) => store_chunk(store, refused, out, instance, chunk),
            }
            Delivery::Consumed
        }),
        Role::Fetch(stream) => conn.poll_recv(FRAMES_PER_PASS, |f| {
            if fatal.is_some() {
                return Delivery::Consumed;
            }
            fatal = match (f.header.kind, stream.is_some()) {
                (Kind::Recovery, false) => match parse_request(f.payload) {
                    Ok((o, _)) if o != origin as u64 => {
                        Some(format!("fetch request for worker {o} on a connection for worker {origin}"))
                    }
                    Ok((_, id)) => match FetchStream::plan(store, origin, id) {
                        Ok(s) => {
                            *stream = Some(s);
                            None
                        }
                        Err(e) => Some(e),
                    },
                    Err(e) => Some(e),
                },
                (Kind::Recovery, true) => Some("a second fetch request on one connection".into()),
                (k, _) => Some(format!("unexpected {k:?} frame on a fetch connection")),
            };
            Delivery::Consumed
        }),
    };
    let frames = frames.map_err(drop)?;
    progress |= frames > 0;
    if let Some(e) = fatal {
        peer.fail(&e);
        return Ok(true);
    }
    if let Role::Fetch(Some(stream)) = &mut peer.role {
        match stream.pump(&mut peer.conn, &*store, &mut peer.seq) {
            Ok((p, done)) => {
                progress |= p;
                if done {
                    peer.closing = Some(Instant::now());
                }
            }
            Err(Pumped::Net) => return Err(()),
            Err(Pumped::Store(e)) => peer.fail(&e),
        }
    }
    peer.flush_out().map_err(drop)?;
    if peer.conn.unsent_bytes() > 0 {
        progress |= peer.conn.poll_io().map_err(drop)?;
    }
    Ok(progress)
}

/// Hands one whole chunk of a backup stream to the store and queues the
/// answer (an ack, or the error).
fn store_chunk(
    store: &mut BackupStore,
    refused: &mut HashSet<String>,
    out: &mut VecDeque<(Kind, Vec<u8>)>,
    instance: &str,
    chunk: &[u8],
) {
    if refused.contains(instance) {
        let header = decode_chunk(chunk).is_ok_and(|(c, _)| c.kind == ChunkKind::Header);
        if !header {
            return; // the rest of a refused checkpoint
        }
        refused.remove(instance);
    }
    match store.receive(instance, chunk) {
        Ok(None) => {}
        Ok(Some(ack)) => out.push_back((Kind::Ack, encode_ack(&ack))),
        Err(e) => {
            refused.insert(instance.to_string());
            let message = format!("checkpoint of `{instance}` refused by the backup store: {e}");
            out.push_back((Kind::Report, encode_error(instance, checkpoint_of(&e), &message)));
        }
    }
}

/// Why a fetch stream stopped.
enum Pumped {
    /// The connection failed.
    Net,
    /// The stored data could not be read: the error for the client.
    Store(String),
}

/// Where a stored checkpoint's chunks are read from.
enum Source {
    /// The store's memory (borrowed again for each chunk), from this
    /// offset.
    Memory(usize),
    /// The file, read chunk by chunk.
    File(BufReader<File>, PathBuf),
}

/// The checkpoints a fetch streams, and where it stands.
struct FetchStream {
    /// Instances left, each with the checkpoints of its chain left.
    todo: VecDeque<(String, VecDeque<u64>)>,
    /// The checkpoint being sent: its instance and id, and its chunks.
    current: Option<(String, u64, Source)>,
    /// The chunk being sent, and the bytes of it sent.
    chunk: Vec<u8>,
    chunk_sent: usize,
    /// The next message, built and not yet queued.
    message: Vec<u8>,
    staged: Option<Kind>,
    totals: Totals,
    finished: bool,
}

impl FetchStream {
    /// The fetch of checkpoint `id` of every instance of `store`, or the
    /// error naming what is missing.
    fn plan(store: &BackupStore, origin: usize, id: u64) -> Result<Self, String> {
        let instances = store.instances();
        if instances.is_empty() {
            return Err(format!("no checkpoint of worker {origin} is stored here"));
        }
        let mut todo = VecDeque::new();
        let mut missing = Vec::new();
        for instance in instances {
            let complete = store.complete_checkpoints(&instance);
            if !complete.contains(&id) {
                missing.push(format!(
                    "`{instance}` (latest complete: {})",
                    complete.last().copied().unwrap_or(0)
                ));
                continue;
            }
            match store.chain(&instance, id) {
                Ok(chain) => todo.push_back((instance, chain.into())),
                Err(e) => missing.push(format!("`{instance}` ({e})")),
            }
        }
        if !missing.is_empty() {
            return Err(format!(
                "checkpoint {id} of worker {origin} is not complete here for instance(s) {}",
                missing.join(", ")
            ));
        }
        Ok(Self {
            todo,
            current: None,
            chunk: Vec::new(),
            chunk_sent: 0,
            message: Vec::new(),
            staged: None,
            totals: Totals::default(),
            finished: false,
        })
    }

    /// Queues messages until the send buffer is full or the pass's budget
    /// is spent; whether anything moved, and whether the fetch is all
    /// queued (end marker included).
    fn pump(
        &mut self,
        conn: &mut Connection,
        store: &BackupStore,
        seq: &mut u64,
    ) -> Result<(bool, bool), Pumped> {
        let mut progress = false;
        let mut queued = 0;
        while queued < FETCH_BYTES_PER_PASS {
            let kind = match self.staged {
                Some(k) => k,
                None => match self.next_message(store).map_err(Pumped::Store)? {
                    Some(k) => {
                        self.staged = Some(k);
                        k
                    }
                    None => return Ok((progress, true)),
                },
            };
            if conn.try_send_control(kind, 0, *seq, &self.message).map_err(|_| Pumped::Net)? {
                *seq += 1;
                self.staged = None;
                queued += self.message.len();
                progress = true;
            } else if !conn.poll_io().map_err(|_| Pumped::Net)? {
                break; // the socket takes no more for now
            }
        }
        Ok((progress, false))
    }

    /// Builds the next message into `self.message`: a part, or the end
    /// marker; `None` after the end marker.
    fn next_message(&mut self, store: &BackupStore) -> Result<Option<Kind>, String> {
        loop {
            if let Some((instance, _, _)) = &self.current {
                if self.chunk_sent < self.chunk.len() {
                    let end = (self.chunk_sent + PART_BYTES_MAX).min(self.chunk.len());
                    let bytes = &self.chunk[self.chunk_sent..end];
                    encode_part(&mut self.message, instance, self.chunk.len(), self.chunk_sent, bytes);
                    self.chunk_sent = end;
                    return Ok(Some(Kind::CheckpointChunk));
                }
            }
            if let Some((instance, id, source)) = &mut self.current {
                if next_stored_chunk(store, instance, *id, source, &mut self.chunk)
                    .map_err(|e| format!("stored checkpoint {id} of `{instance}`: {e}"))?
                {
                    self.chunk_sent = 0;
                    self.totals.chunks += 1;
                    self.totals.bytes += self.chunk.len() as u64;
                } else {
                    self.current = None;
                }
                continue;
            }
            let Some((instance, ids)) = self.todo.front_mut() else {
                if self.finished {
                    return Ok(None);
                }
                self.finished = true;
                encode_done(&mut self.message, &self.totals);
                return Ok(Some(Kind::Ack));
            };
            let Some(id) = ids.pop_front() else {
                self.todo.pop_front();
                self.totals.instances += 1;
                continue;
            };
            let instance = instance.clone();
            let source = match store.checkpoint_path(&instance, id) {
                Some(path) => File::open(&path)
                    .map(|f| Source::File(BufReader::with_capacity(1 << 20, f), path.clone()))
                    .map_err(|e| {
                        format!("stored checkpoint {id} of `{instance}`: open {}: {e}", path.display())
                    })?,
                None => Source::Memory(0),
            };
            self.totals.checkpoints += 1;
            self.chunk.clear();
            self.chunk_sent = 0;
            self.current = Some((instance, id, source));
        }
    }
}

/// Reads the next chunk of `instance`'s stored checkpoint `id` into `buf`,
/// checking it with `decode_chunk`; false at the end.
fn next_stored_chunk(
    store: &BackupStore,
    instance: &str,
    id: u64,
    source: &mut Source,
    buf: &mut Vec<u8>,
) -> Result<bool, String> {
    buf.clear();
    match source {
        Source::Memory(pos) => {
            // Borrowed, not copied, for a store in memory.
            let bytes = store.read(instance, id).map_err(|e| e.to_string())?;
            let Some(rest) = bytes.get(*pos..).filter(|r| !r.is_empty()) else {
                return Ok(false);
            };
            let (_, n) = decode_chunk(rest).map_err(|r| format!("corrupt at byte {pos}: {r}"))?;
            buf.extend_from_slice(&rest[..n]);
            *pos += n;
            Ok(true)
        }
        Source::File(reader, path) => {
            let mut prefix = [0u8; 8];
            let mut got = 0;
            while got < prefix.len() {
                match reader.read(&mut prefix[got..]) {
                    Ok(0) if got == 0 => return Ok(false),
                    Ok(0) => return Err(format!("{}: truncated chunk framing: {got} bytes", path.display())),
                    Ok(n) => got += n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(format!("read {}: {e}", path.display())),
                }
            }
            let len = u32::from_le_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]) as usize;
            if len == 0 || len > CHUNK_MAX {
                return Err(format!("{}: chunk length {len} out of range", path.display()));
            }
            buf.extend_from_slice(&prefix);
            buf.resize(8 + len, 0);
            reader.read_exact(&mut buf[8..]).map_err(|e| format!("read {}: {e}", path.display()))?;
            let (_, n) = decode_chunk(buf).map_err(|r| format!("{}: {r}", path.display()))?;
            debug_assert_eq!(n, buf.len());
            Ok(true)
        }
    }
}

// ---------------------------------------------------------------------------
// Client
// ---------------------------------------------------------------------------

/// One worker's replication stream to one backup node, used from the
/// worker's backup-writer thread: every call blocks, with a deadline.
///
/// After a connection error, or a `send_chunk` that failed (the stream may
/// have stopped inside a chunk), every call fails: connect again. A
/// `wait_ack` that times out, or that returns an error the backup reported
/// for a checkpoint, leaves the client usable.
#[derive(Debug)]
pub struct ReplicaClient {
    conn: Connection,
    addr: SocketAddr,
    origin_worker: usize,
    timeout: Duration,
    /// The next part, built here before it is queued.
    message: Vec<u8>,
    seq: u64,
    /// Per instance, the acknowledged checkpoints nobody waited for yet.
    acked: HashMap<String, BTreeSet<u64>>,
    /// Per instance, the errors the backup reported and nobody got yet:
    /// (checkpoint, 0 if unknown; message).
    errors: HashMap<String, Vec<(u64, String)>>,
    /// The error the backup reported for the whole connection.
    server_error: Option<String>,
    /// Why the client is unusable.
    broken: Option<String>,
}

impl ReplicaClient {
    /// Connects to the backup service at `addr` as origin worker
    /// `origin_worker` of job `cluster`, waiting up to `timeout` for the
    /// handshake; `timeout` is also how long
    /// [`send_chunk`](Self::send_chunk) waits for room.
    pub fn connect(
        addr: SocketAddr,
        cluster: u64,
        origin_worker: usize,
        timeout: Duration,
    ) -> Result<Self, String> {
        Self::connect_epoch(addr, cluster, origin_worker, 0, timeout)
    }

    /// As [`connect`](Self::connect), for the deployment of `epoch`: once a
    /// stream of a newer epoch of the same worker connected, the service
    /// refuses (and closes) older ones — a node declared failed that comes
    /// back cannot disturb what its replacement stores.
    pub fn connect_epoch(
        addr: SocketAddr,
        cluster: u64,
        origin_worker: usize,
        epoch: u64,
        timeout: Duration,
    ) -> Result<Self, String> {
        let name = if epoch == 0 {
            format!("bak:w{origin_worker}")
        } else {
            format!("bak:w{origin_worker}@{epoch}")
        };
        let conn = connect(addr, name, cluster, Instant::now() + timeout)?;
        Ok(Self {
            conn,
            addr,
            origin_worker,
            timeout,
            message: Vec::new(),
            seq: 0,
            acked: HashMap::new(),
            errors: HashMap::new(),
            server_error: None,
            broken: None,
        })
    }

    /// The backup service's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Sends the next chunk of `instance`'s checkpoint stream (chunks of
    /// one instance in order; those of several instances may interleave
    /// chunk by chunk). Queues it and returns; blocks while the send buffer
    /// is full, up to the connect timeout. Fails at once if the connection
    /// failed (the backup node is gone), and with an error naming the
    /// problem for an empty or too long name or chunk.
    pub fn send_chunk(&mut self, instance: &str, chunk: &[u8]) -> Result<(), String> {
        self.usable()?;
        check_name(instance).map_err(|e| self.context(&e))?;
        if chunk.is_empty() || chunk.len() > CHUNK_BYTES_MAX {
            return Err(self.context(&format!(
                "chunk of `{instance}` of {} bytes (must be 1 to {CHUNK_BYTES_MAX})",
                chunk.len()
            )));
        }
        let deadline = Instant::now() + self.timeout;
        let mut offset = 0;
        while offset < chunk.len() {
            let end = (offset + PART_BYTES_MAX).min(chunk.len());
            encode_part(&mut self.message, instance, chunk.len(), offset, &chunk[offset..end]);
            self.queue_message(deadline, instance)?;
            offset = end;
        }
        if self.conn.unsent_bytes() >= FLUSH_BYTES {
            self.pump()?;
        }
        Ok(())
    }

    /// Queues `self.message` as a chunk part, waiting for room up to
    /// `deadline`. Any failure breaks the client.
    fn queue_message(&mut self, deadline: Instant, instance: &str) -> Result<(), String> {
        loop {
            match self.conn.try_send_control(Kind::CheckpointChunk, 0, self.seq, &self.message) {
                Ok(true) => {
                    self.seq += 1;
                    return Ok(());
                }
                Ok(false) => {}
                Err(e) => return Err(self.broke_net(&e)),
            }
            let progress = self.pump()?;
            if Instant::now() >= deadline {
                let e = format!(
                    "timed out after {:?} sending a chunk of `{instance}`: the backup takes no more bytes \
                     ({} queued)",
                    self.timeout,
                    self.conn.unsent_bytes()
                );
                return Err(self.broke(e));
            }
            if !progress {
                std::thread::sleep(CLIENT_NAP);
            }
        }
    }

    /// Waits until the backup acknowledged checkpoint `id` of `instance`
    /// (whole and stored with its durability), up to `timeout`, writing
    /// out what is queued meanwhile. Returns the backup's error instead if
    /// it refused a chunk of this instance's checkpoint `id` or of an
    /// earlier one not yet reported (a lost checkpoint breaks the chain of
    /// the increments after it), and fails at once if the connection
    /// fails.
    pub fn wait_ack(&mut self, instance: &str, id: u64, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(e) = self.take_error(instance, id) {
                return Err(e);
            }
            if self.take_ack(instance, id) {
                return Ok(());
            }
            if let Some(e) = &self.broken {
                return Err(e.clone());
            }
            if Instant::now() >= deadline {
                return Err(self.context(&format!(
                    "no acknowledgement of checkpoint {id} of `{instance}` within {timeout:?}"
                )));
            }
            // A failed pump is `broken`, reported at the top of the loop
            // after the acks and errors that arrived before it.
            if let Ok(false) = self.pump() {
                std::thread::sleep(CLIENT_NAP);
            }
        }
    }

    fn take_error(&mut self, instance: &str, id: u64) -> Option<String> {
        let errors = self.errors.get_mut(instance)?;
        let i = errors.iter().position(|(c, _)| *c <= id)?;
        let (c, message) = errors.remove(i);
        let which = if c == 0 { "a checkpoint".to_string() } else { format!("checkpoint {c}") };
        Some(self.context(&format!("the backup refused {which} of `{instance}`: {message}")))
    }

    fn take_ack(&mut self, instance: &str, id: u64) -> bool {
        let Some(acked) = self.acked.get_mut(instance) else {
            return false;
        };
        let found = acked.contains(&id);
        if found {
            *acked = acked.split_off(&(id + 1));
        }
        found
    }

    /// Writes what is queued, reads what arrived and takes in the acks and
    /// errors; whether any byte moved. A failure breaks the client.
    fn pump(&mut self) -> Result<bool, String> {
        self.usable()?;
        let moved = match self.conn.poll_io() {
            Ok(m) => m,
            Err(e) => return Err(self.broke_net(&e)),
        };
        let mut bad = None;
        let (acked, errors, server_error) = (&mut self.acked, &mut self.errors, &mut self.server_error);
        let received = self.conn.poll_recv(usize::MAX, |f| {
            let r = match f.header.kind {
                Kind::Ack => parse_ack(f.payload).map(|(instance, checkpoint, _)| {
                    let set = acked.entry(instance.to_string()).or_default();
                    set.insert(checkpoint);
                    if set.len() > ACKS_KEPT_MAX {
                        set.pop_first();
                    }
                }),
                Kind::Report => parse_error(f.payload).map(|(instance, checkpoint, message)| {
                    if instance.is_empty() {
                        server_error.get_or_insert_with(|| message.to_string());
                    } else {
                        let list = errors.entry(instance.to_string()).or_default();
                        if list.len() < ERRORS_KEPT_MAX {
                            list.push((checkpoint, message.to_string()));
                        }
                    }
                }),
                k => Err(format!("unexpected {k:?} frame from the backup")),
            };
            if let Err(e) = r {
                bad.get_or_insert(e);
            }
            Delivery::Consumed
        });
        if let Some(e) = self.server_error.clone() {
            return Err(self.broke(format!("the backup closed the stream: {e}")));
        }
        if let Some(e) = bad {
            return Err(self.broke(e));
        }
        match received {
            Ok(n) => Ok(moved || n > 0),
            Err(e) => Err(self.broke_net(&e)),
        }
    }

    fn usable(&self) -> Result<(), String> {
        match &self.broken {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }

    fn context(&self, e: &str) -> String {
        format!("replica stream of worker {} to {}: {e}", self.origin_worker, self.addr)
    }

    fn broke(&mut self, e: String) -> String {
        let e = self.context(&e);
        self.broken.get_or_insert(e).clone()
    }

    fn broke_net(&mut self, e: &NetError) -> String {
        self.broke(format!("connection lost: {e}"))
    }
}

// ---------------------------------------------------------------------------
// Fetch
// ---------------------------------------------------------------------------

/// What [`fetch`] brought back.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FetchReport {
    /// The instances fetched, in name order.
    pub instances: Vec<String>,
    /// Checkpoints stored into the local store (full images and
    /// increments, over all instances).
    pub checkpoints: u64,
    /// Bytes of chunks received.
    pub bytes: u64,
}

/// Fetches from the backup service at `addr` every instance's checkpoint
/// `id` stored for `origin_worker` of job `cluster`, with its whole chain
/// (full image, then increments), feeding the chunks into `into` (a local
/// [`BackupStore`]) so that `StateStore::restore_id(.., &into, instance,
/// id)` works afterwards. Checks that `into` acknowledged each instance's
/// chain up to `id` and that the totals agree with the server's.
///
/// Fails, with an error naming them, if an instance of the worker has no
/// complete checkpoint `id` on the server (or no checkpoint of the worker
/// is stored there); if `into` refuses a chunk (for example, it already
/// holds that checkpoint or a later one of the instance); if the connection
/// fails (at once: the backup node is gone); or if the whole fetch takes
/// longer than `timeout`. After a failure `into` may hold some of the
/// checkpoints.
pub fn fetch(
    addr: SocketAddr,
    cluster: u64,
    origin_worker: usize,
    id: u64,
    into: &mut BackupStore,
    timeout: Duration,
) -> Result<FetchReport, String> {
    let context = |e: &str| format!("fetch of checkpoint {id} of worker {origin_worker} from {addr}: {e}");
    let deadline = Instant::now() + timeout;
    let mut conn =
        connect(addr, format!("fetch:w{origin_worker}"), cluster, deadline).map_err(|e| context(&e))?;
    let request = encode_request(origin_worker, id);
    if !conn.try_send_control(Kind::Recovery, 0, 0, &request).map_err(|e| context(&e.to_string()))? {
        return Err(context("no room for the request in a new connection"));
    }
    // Instances with chunks in `into` after their last ack: checkpoints
    // begun there, dropped if the fetch fails.
    let mut open = HashSet::new();
    let result = receive_fetch(&mut conn, id, into, deadline, timeout, &mut open);
    if result.is_err() {
        for instance in &open {
            into.abort(instance);
        }
    }
    result.map_err(|e| context(&e))
}

/// Receives a fetch's stream into `into` until its end marker, and checks
/// it.
fn receive_fetch(
    conn: &mut Connection,
    id: u64,
    into: &mut BackupStore,
    deadline: Instant,
    timeout: Duration,
    open: &mut HashSet<String>,
) -> Result<FetchReport, String> {
    let mut asm = Reassembly::default();
    // Per instance, the checkpoints `into` acknowledged.
    let mut acks: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    let mut got = Totals::default();
    let mut done: Option<Totals> = None;
    let mut failure: Option<String> = None;
    let mut server_error: Option<String> = None;
    loop {
        let moved = conn.poll_io().map_err(|e| format!("connection lost: {e}"))?;
        let received = conn.poll_recv(FRAMES_PER_PASS, |f| {
            if failure.is_some() || done.is_some() || server_error.is_some() {
                return Delivery::Consumed;
            }
            let r = match f.header.kind {
                Kind::CheckpointChunk => parse_part(f.payload).and_then(|p| asm.push(p)).and_then(|whole| {
                    let Some((instance, chunk)) = whole else { return Ok(()) };
                    got.chunks += 1;
                    got.bytes += chunk.len() as u64;
                    match into.receive(instance, chunk) {
                        Ok(None) => {
                            if !open.contains(instance) {
                                open.insert(instance.to_string());
                            }
                            Ok(())
                        }
                        Ok(Some(ack)) => {
                            open.remove(instance);
                            got.checkpoints += 1;
                            acks.entry(ack.instance).or_default().push(ack.checkpoint);
                            Ok(())
                        }
                        Err(e) => {
                            // `receive` dropped the checkpoint.
                            open.remove(instance);
                            Err(format!("the local backup store refused a chunk of `{instance}`: {e}"))
                        }
                    }
                }),
                Kind::Ack => parse_done(f.payload).map(|t| done = Some(t)),
                Kind::Report => parse_error(f.payload).map(|(instance, _, message)| {
                    server_error = Some(if instance.is_empty() {
                        message.to_string()
                    } else {
                        format!("`{instance}`: {message}")
                    });
                }),
                k => Err(format!("unexpected {k:?} frame from the backup")),
            };
            if let Err(e) = r {
                failure = Some(e);
            }
            Delivery::Consumed
        });
        if let Some(e) = server_error {
            return Err(format!("the backup refused: {e}"));
        }
        if let Some(e) = failure {
            return Err(e);
        }
        if let Some(t) = done {
            return finish_fetch(id, t, got, &acks, open, asm.active);
        }
        let frames = received.map_err(|e| format!("connection lost: {e}"))?;
        if Instant::now() >= deadline {
            return Err(format!(
                "not done within {timeout:?} ({} chunks, {} bytes received)",
                got.chunks, got.bytes
            ));
        }
        if !moved && frames == 0 {
            std::thread::sleep(CLIENT_NAP);
        }
    }
}

/// Checks a finished fetch against the server's totals.
fn finish_fetch(
    id: u64,
    sent: Totals,
    mut got: Totals,
    acks: &BTreeMap<String, Vec<u64>>,
    open: &HashSet<String>,
    mid_chunk: bool,
) -> Result<FetchReport, String> {
    if mid_chunk {
        return Err("the fetch ended inside a chunk".into());
    }
    if let Some(i) = open.iter().next() {
        return Err(format!("the fetch ended inside a checkpoint of `{i}`"));
    }
    for (instance, ids) in acks {
        if ids.last() != Some(&id) {
            return Err(format!("the chain of `{instance}` ended at checkpoint {:?}, not {id}", ids.last()));
        }
    }
    got.instances = acks.len() as u64;
    if got != sent {
        return Err(format!("received {got:?} but the backup sent {sent:?}"));
    }
    Ok(FetchReport {
        instances: acks.keys().cloned().collect(),
        checkpoints: got.checkpoints,
        bytes: got.bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ack(instance: &str) -> Ack {
        Ack { instance: instance.into(), checkpoint: 7, bytes: 99 }
    }

    #[test]
    fn messages_round_trip() {
        let mut out = Vec::new();
        encode_part(&mut out, "op-1", 10, 4, b"abc");
        let p = parse_part(&out).unwrap();
        assert_eq!((p.instance, p.chunk_len, p.offset, p.bytes), ("op-1", 10, 4, &b"abc"[..]));
        assert_eq!(parse_ack(&encode_ack(&ack("op"))).unwrap(), ("op", 7, 99));
        assert_eq!(parse_error(&encode_error("op", 3, "bad crc")).unwrap(), ("op", 3, "bad crc"));
        assert_eq!(parse_error(&encode_error("", 0, "")).unwrap(), ("", 0, ""));
        assert_eq!(parse_request(&encode_request(5, 9)).unwrap(), (5, 9));
        let t = Totals { instances: 1, checkpoints: 2, chunks: 3, bytes: 4 };
        encode_done(&mut out, &t);
        assert_eq!(parse_done(&out).unwrap(), t);
    }

    #[test]
    fn every_truncation_is_an_error_naming_the_field() {
        let mut part = Vec::new();
        encode_part(&mut part, "op-1", 3, 0, b"abc");
        let mut done = Vec::new();
        encode_done(&mut done, &Totals::default());
        // A part's bytes run to the end of its frame (whose length the
        // transport checks): a part cut after its first byte of chunk is a
        // shorter part, which the reassembly then finds incomplete.
        let part_fixed = PART_HEADER_BYTES + "op-1".len() + 1;
        type Parse = fn(&[u8]) -> Result<(), String>;
        let cases: Vec<(Vec<u8>, usize, Parse)> = vec![
            (part, part_fixed, |b| parse_part(b).map(drop)),
            (encode_ack(&ack("op")), 20, |b| parse_ack(b).map(drop)),
            (encode_request(1, 2), 16, |b| parse_request(b).map(drop)),
            (done, 32, |b| parse_done(b).map(drop)),
        ];
        for (bytes, fixed, parse) in cases {
            assert!(parse(&bytes).is_ok());
            for cut in 0..fixed {
                let e = parse(&bytes[..cut]).unwrap_err();
                assert!(e.starts_with("malformed"), "{e}");
            }
            if fixed == bytes.len() {
                let mut long = bytes.clone();
                long.push(0);
                assert!(parse(&long).unwrap_err().contains("1 bytes after its end"));
            }
        }
        let e = parse_part(&[1, 0]).unwrap_err();
        assert!(e.contains("`chunk_len`: 0 of 4 bytes (2 in all)"), "{e}");
    }

    #[test]
    fn bad_fields_are_refused() {
        let mut out = Vec::new();
        encode_part(&mut out, "op", 3, 0, b"abc");
        // Bytes beyond the chunk length.
        out[2..6].copy_from_slice(&2u32.to_le_bytes());
        assert!(parse_part(&out).unwrap_err().contains("offset 0 of a chunk of 2 bytes"));
        // Zero chunk length, empty name, name not UTF-8.
        out[2..6].copy_from_slice(&0u32.to_le_bytes());
        assert!(parse_part(&out).unwrap_err().contains("chunk of 0 bytes"));
        let mut empty_name = Vec::new();
        encode_part(&mut empty_name, "op", 3, 0, b"abc");
        empty_name[0..2].copy_from_slice(&0u16.to_le_bytes());
        assert!(parse_part(&empty_name).unwrap_err().contains("name of 0 bytes"));
        let mut bad_utf8 = Vec::new();
        encode_part(&mut bad_utf8, "op", 3, 0, b"abc");
        bad_utf8[10] = 0xff;
        assert!(parse_part(&bad_utf8).unwrap_err().contains("not UTF-8"));
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let len = (x % 48) as usize;
            let bytes: Vec<u8> = (0..len).map(|i| (x >> (i % 8 * 8)) as u8 ^ i as u8).collect();
            let _ = parse_part(&bytes);
            let _ = parse_ack(&bytes);
            let _ = parse_error(&bytes);
            let _ = parse_request(&bytes);
            let _ = parse_done(&bytes);
        }
    }

    #[test]
    fn reassembly_checks_order() {
        let mut asm = Reassembly::default();
        let part = |instance, chunk_len, offset, bytes| Part { instance, chunk_len, offset, bytes };
        // One part: handed back in place.
        assert_eq!(asm.push(part("a", 3, 0, b"xyz")).unwrap(), Some(("a", &b"xyz"[..])));
        // Several parts.
        assert_eq!(asm.push(part("a", 5, 0, b"ab")).unwrap(), None);
        assert_eq!(asm.push(part("a", 5, 2, b"cde")).unwrap(), Some(("a", &b"abcde"[..])));
        // A part without its predecessors, or of another chunk in between.
        assert!(asm.push(part("a", 5, 2, b"cde")).unwrap_err().contains("without the parts before it"));
        assert_eq!(asm.push(part("a", 5, 0, b"ab")).unwrap(), None);
        assert!(asm.push(part("b", 5, 2, b"cde")).unwrap_err().contains("does not continue"));
        assert!(asm.push(part("a", 5, 3, b"de")).unwrap_err().contains("does not continue"));
    }

    #[test]
    fn hello_names() {
        assert_eq!(parse_hello_name("bak:w3"), Some((Purpose::Backup, 3)));
        assert_eq!(parse_hello_name("fetch:w12"), Some((Purpose::Fetch, 12)));
        for bad in ["bak:w", "bak:w+3", "bak:wx", "ctl:a", "fetch:w-1", "3>4", "bak:w99999999999999999999999"]
        {
            assert_eq!(parse_hello_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn error_messages_are_cut_at_a_char_boundary() {
        let long = "é".repeat(ERROR_MESSAGE_BYTES_MAX);
        let e = encode_error("op", 1, &long);
        let (_, _, m) = parse_error(&e).unwrap();
        assert!(m.len() <= ERROR_MESSAGE_BYTES_MAX && m.len() >= ERROR_MESSAGE_BYTES_MAX - 1);
    }
}
