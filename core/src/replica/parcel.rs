//! A handoff's parcel between nodes: the bins one keyed instance split off
//! (`crate::handoff`), sent to the node of the worker that takes them in.
//!
//! The parcel travels as a checkpoint: the split store's full image
//! (`StateStore::begin_checkpoint`, copy-on-write, encoded on the sending
//! thread), in the replica service's chunk parts ([`super::ReplicaClient`]
//! on the sending side), over a connection to the target node's listener
//! announcing `hand:v<version>@<epoch>`. The receiving side checks every
//! chunk into an in-memory [`BackupStore`] (the same checks as a backup
//! node's: lengths, crc, order), acknowledges the whole image, and rebuilds
//! the store from it (`StateStore::restore_id`, which verifies it again
//! bin by bin). Nothing touches a disk. Both ends run on threads of their
//! own (`control::Os`), not on a worker or the node's control loop.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use spate_net::frame::Kind;
use spate_net::{Connection, Delivery};
use spate_state::{BackupStore, Durability, StateError, StateStore, StoreConfig};

use super::error::ReplicaError;
use super::reassembly::Reassembly;
use super::wire::{check_name, encode_ack, encode_part, parse_ack, parse_error, parse_part};
use super::ReplicaClient;
use crate::link::Conn;

/// The hello name of the connection carrying a parcel of step `version`
/// of the deployment of `epoch`.
pub fn parcel_hello_name(version: u64, epoch: u64) -> String {
    format!("hand:v{version}@{epoch}")
}

/// `(version, epoch)` of a parcel connection's hello name.
pub fn parse_parcel_hello_name(name: &str) -> Option<(u64, u64)> {
    let (v, e) = name.strip_prefix("hand:v")?.split_once('@')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(v) || !digits(e) {
        return None;
    }
    Some((v.parse().ok()?, e.parse().ok()?))
}

/// Why a parcel did not arrive.
#[derive(Debug)]
#[non_exhaustive]
pub enum ParcelError {
    /// The connection, a chunk part or the acknowledgement failed.
    Replica(ReplicaError),
    /// The store could not be streamed or rebuilt.
    State {
        /// What was being done.
        what: &'static str,
        /// The operator whose parcel it is ("" before the first chunk).
        operator: String,
        /// Why.
        source: StateError,
    },
    /// The parcel was not whole within the timeout.
    Timeout {
        /// How long it waited.
        waited: Duration,
        /// Bytes of chunks received by then.
        received: u64,
    },
    /// The sender closed the connection before the parcel was whole.
    Closed {
        /// Bytes of chunks received by then.
        received: u64,
    },
    /// The thread sending or receiving it panicked.
    Panicked,
}

impl std::fmt::Display for ParcelError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ParcelError::Replica(e) => write!(f, "handoff parcel: {e}"),
            ParcelError::State { what, operator, source } => {
                write!(f, "handoff parcel of operator `{operator}`: cannot {what}: {source}")
            }
            ParcelError::Timeout { waited, received } => write!(
                f,
                "handoff parcel not whole after {} ms ({received} bytes received)",
                waited.as_millis()
            ),
            ParcelError::Closed { received } => {
                write!(f, "handoff parcel: the sender closed after {received} bytes, before the end")
            }
            ParcelError::Panicked => f.write_str("handoff parcel: its thread panicked"),
        }
    }
}

impl std::error::Error for ParcelError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ParcelError::Replica(e) => Some(e),
            ParcelError::State { source, .. } => Some(source),
            _ => None,
        }
    }
}

impl From<ReplicaError> for ParcelError {
    fn from(e: ReplicaError) -> Self {
        ParcelError::Replica(e)
    }
}

/// Sends `store`, `operator`'s split-off bins, to the node listening at
/// `addr` on a connection announcing `hello` (see
/// [`parcel_hello_name`]); returns once the receiver acknowledged the
/// whole image, with its bytes. Blocks (a thread of its own).
pub fn send_parcel(
    addr: SocketAddr,
    cluster: u64,
    hello: String,
    operator: &str,
    mut store: StateStore,
    timeout: Duration,
) -> Result<u64, ParcelError> {
    let state = |what, source| ParcelError::State { what, operator: operator.to_string(), source };
    let mut client = ReplicaClient::connect_named(addr, cluster, hello, timeout)?;
    store.require_full_checkpoint();
    let id = store.last_checkpoint() + 1;
    let mut stream = store.begin_checkpoint(id, &[]).map_err(|e| state("stream its image", e))?;
    while let Some(chunk) = stream.next_chunk() {
        client.send_chunk(operator, chunk)?;
    }
    let bytes = stream.bytes_streamed();
    drop(stream);
    client.wait_ack(operator, id, timeout)?;
    Ok(bytes)
}

/// A parcel received (see [`receive_parcel`]).
pub struct Parcel {
    /// The keyed operator whose bins these are.
    pub operator: String,
    /// Its store, rebuilt.
    pub store: StateStore,
    /// Bytes of chunks received.
    pub bytes: u64,
    /// Microseconds from the connection to the last chunk, and to the
    /// store rebuilt.
    pub received_us: u64,
    /// Microseconds the rebuild took.
    pub rebuilt_us: u64,
}

/// Receives one parcel on `conn` (a connection announcing
/// [`parcel_hello_name`]), acknowledges it, and rebuilds its store with
/// `config` (its bins come from the image). Blocks (a thread of its own),
/// at most `timeout`: a [`ParcelReceiver`] polled until done.
pub fn receive_parcel(
    conn: Connection,
    config: StoreConfig,
    timeout: Duration,
) -> Result<Parcel, ParcelError> {
    let mut r = ParcelReceiver::new(conn, config, timeout);
    loop {
        if let Some(done) = r.poll() {
            return done;
        }
        if !r.moved {
            std::thread::sleep(Duration::from_micros(50));
        }
    }
}

/// How long the acknowledgement may take to go out once the parcel is
/// whole.
const ACK_FLUSH: Duration = Duration::from_secs(1);

/// The receiving side of a parcel, sans IO: polled on its connection
/// until the parcel is whole, acknowledged and rebuilt (see
/// [`receive_parcel`], which polls it on a thread; the simulator polls it
/// on its node's turns).
pub struct ParcelReceiver<C: Conn> {
    conn: C,
    config: StoreConfig,
    backup: Option<BackupStore>,
    reassembly: Reassembly,
    received: u64,
    started: Instant,
    timeout: Duration,
    /// The parcel, rebuilt, while its acknowledgement goes out (until
    /// when).
    flushing: Option<(Parcel, Instant)>,
    /// Whether the last poll moved anything.
    moved: bool,
}

impl<C: Conn> ParcelReceiver<C> {
    /// Receives on `conn` into a store made with `config`, at most
    /// `timeout` from now.
    pub fn new(conn: C, config: StoreConfig, timeout: Duration) -> Self {
        Self {
            conn,
            config,
            backup: None,
            reassembly: Reassembly::default(),
            received: 0,
            started: crate::time::now(),
            timeout,
            flushing: None,
            moved: false,
        }
    }

    /// One step, without blocking: the parcel once whole and rebuilt, or
    /// why it will not be.
    pub fn poll(&mut self) -> Option<Result<Parcel, ParcelError>> {
        let now = crate::time::now();
        if let Some((_, until)) = &self.flushing {
            let until = *until;
            self.moved = self.conn.poll_io().unwrap_or(false);
            if self.conn.unsent_bytes() == 0 || self.conn.is_closed() || now >= until {
                return self.flushing.take().map(|(p, _)| Ok(p));
            }
            return None;
        }
        let waited = now.saturating_duration_since(self.started);
        if waited > self.timeout {
            return Some(Err(ParcelError::Timeout { waited, received: self.received }));
        }
        match self.step() {
            Ok(None) => None,
            Ok(Some((operator, id))) => match self.rebuild(operator, id) {
                Ok(p) => {
                    self.flushing = Some((p, now + ACK_FLUSH));
                    self.poll()
                }
                Err(e) => Some(Err(e)),
            },
            Err(e) => Some(Err(e)),
        }
    }

    /// Takes what arrived: `(operator, checkpoint)` once the image is
    /// whole.
    fn step(&mut self) -> Result<Option<(String, u64)>, ParcelError> {
        let backup = match &mut self.backup {
            Some(b) => b,
            None => self.backup.insert(BackupStore::open(&self.config.dir, Durability::Memory).map_err(
                |source| ParcelError::State { what: "hold its chunks", operator: String::new(), source },
            )?),
        };
        self.moved = self.conn.poll_io().map_err(|e| ParcelError::Replica(ReplicaError::lost(e)))?;
        let (reassembly, received) = (&mut self.reassembly, &mut self.received);
        let mut bad: Option<ParcelError> = None;
        let mut acked: Option<(String, u64)> = None;
        let got = self.conn.poll_recv(64, |f| {
            if bad.is_some() || acked.is_some() {
                return Delivery::Consumed;
            }
            if f.header.kind != Kind::CheckpointChunk {
                bad = Some(ParcelError::Replica(ReplicaError::UnexpectedFrame {
                    kind: f.header.kind,
                    on: super::Link::Backup,
                }));
                return Delivery::Consumed;
            }
            match parse_part(f.payload).and_then(|p| reassembly.push(p)) {
                Ok(Some((operator, chunk))) => {
                    *received += chunk.len() as u64;
                    match backup.receive(operator, chunk) {
                        Ok(Some(ack)) => acked = Some((operator.to_string(), ack.checkpoint)),
                        Ok(None) => {}
                        Err(source) => {
                            bad = Some(ParcelError::State {
                                what: "take a chunk",
                                operator: operator.to_string(),
                                source,
                            })
                        }
                    }
                }
                Ok(None) => {}
                Err(e) => bad = Some(ParcelError::Replica(e)),
            }
            Delivery::Consumed
        });
        if let Some(e) = bad {
            return Err(e);
        }
        match got {
            Ok(n) => self.moved |= n > 0,
            Err(e) if acked.is_none() => {
                return Err(match e.kind {
                    spate_net::NetErrorKind::PeerClosed | spate_net::NetErrorKind::Closed => {
                        ParcelError::Closed { received: self.received }
                    }
                    _ => ParcelError::Replica(ReplicaError::lost(e)),
                })
            }
            Err(_) => {}
        }
        Ok(acked)
    }

    /// The image is whole: acknowledged (it goes out while the store is
    /// rebuilt; the sender only waits for it), then rebuilt.
    fn rebuild(&mut self, operator: String, id: u64) -> Result<Parcel, ParcelError> {
        let ack =
            spate_state::backup::Ack { instance: operator.clone(), checkpoint: id, bytes: self.received };
        let _ = self.conn.try_send_control(Kind::Ack, 0, 0, &encode_ack(&ack));
        let _ = self.conn.poll_io();
        let received_us = crate::time::now().saturating_duration_since(self.started).as_micros() as u64;
        let t1 = crate::time::now();
        let backup = self.backup.take().ok_or(ParcelError::Closed { received: self.received })?;
        let config = StoreConfig::new(&self.config.dir, self.config.bins_log2);
        let (store, _, _) = StateStore::restore_id(config, &backup, &operator, id).map_err(|source| {
            ParcelError::State { what: "rebuild its store", operator: operator.clone(), source }
        })?;
        let rebuilt_us = crate::time::now().saturating_duration_since(t1).as_micros() as u64;
        Ok(Parcel { operator, store, bytes: self.received, received_us, rebuilt_us })
    }
}

/// A parcel's image as chunk-part frames, ready to send over a connection
/// that is not a [`ReplicaClient`]'s (see [`ParcelSender`]):
/// `(checkpoint id, frames' payloads, bytes of chunks)`.
fn parcel_frames(operator: &str, store: &mut StateStore) -> Result<(u64, Vec<Vec<u8>>, u64), ParcelError> {
    let state = |what, source| ParcelError::State { what, operator: operator.to_string(), source };
    check_name(operator)?;
    store.require_full_checkpoint();
    let id = store.last_checkpoint() + 1;
    let mut stream = store.begin_checkpoint(id, &[]).map_err(|e| state("stream its image", e))?;
    let mut frames = Vec::new();
    while let Some(chunk) = stream.next_chunk() {
        let mut offset = 0;
        while offset < chunk.len() {
            let end = (offset + super::PART_BYTES_MAX).min(chunk.len());
            let mut part = Vec::new();
            encode_part(&mut part, operator, chunk.len(), offset, &chunk[offset..end]);
            frames.push(part);
            offset = end;
        }
    }
    let bytes = stream.bytes_streamed();
    Ok((id, frames, bytes))
}

/// The sending side of a parcel, sans IO, for an environment that polls
/// instead of giving it a thread (the simulator): the image is encoded
/// whole up front, sent as the connection takes it, and done when the
/// receiver acknowledges it. On real nodes [`send_parcel`] streams it
/// through a [`ReplicaClient`] instead, a chunk at a time.
pub struct ParcelSender<C: Conn> {
    conn: C,
    operator: String,
    id: u64,
    frames: Vec<Vec<u8>>,
    next: usize,
    bytes: u64,
    started: Instant,
    timeout: Duration,
}

impl<C: Conn> ParcelSender<C> {
    /// Sends `store`, `operator`'s split-off bins, on `conn` (a connection
    /// announcing [`parcel_hello_name`]), at most `timeout` from now.
    pub fn new(
        conn: C,
        operator: &str,
        mut store: StateStore,
        timeout: Duration,
    ) -> Result<Self, ParcelError> {
        let (id, frames, bytes) = parcel_frames(operator, &mut store)?;
        Ok(Self {
            conn,
            operator: operator.to_string(),
            id,
            frames,
            next: 0,
            bytes,
            started: crate::time::now(),
            timeout,
        })
    }

    /// One step, without blocking: the bytes sent once acknowledged, or why
    /// the parcel did not arrive.
    pub fn poll(&mut self) -> Option<Result<u64, ParcelError>> {
        let waited = crate::time::now().saturating_duration_since(self.started);
        if waited > self.timeout {
            let e = ReplicaError::NoAck {
                instance: self.operator.clone(),
                checkpoint: self.id,
                timeout: self.timeout,
            };
            return Some(Err(ParcelError::Replica(e)));
        }
        let lost = |e| Some(Err(ParcelError::Replica(ReplicaError::lost(e))));
        while let Some(f) = self.frames.get(self.next) {
            match self.conn.try_send_control(Kind::CheckpointChunk, 0, self.next as u64, f) {
                Ok(true) => self.next += 1,
                Ok(false) => break,
                Err(e) => return lost(e),
            }
        }
        if let Err(e) = self.conn.poll_io() {
            return lost(e);
        }
        let (operator, id) = (&self.operator, self.id);
        let mut done: Option<Result<(), ParcelError>> = None;
        let got = self.conn.poll_recv(16, |f| {
            let r = match f.header.kind {
                Kind::Ack => parse_ack(f.payload).map(|(i, c, _)| i == operator && c == id),
                Kind::Report => parse_error(f.payload)
                    .and_then(|(_, _, m)| Err(ReplicaError::StreamClosed { message: m.to_string() })),
                kind => Err(ReplicaError::UnexpectedFrame { kind, on: super::Link::FromBackup }),
            };
            match r {
                Ok(true) => {
                    done.get_or_insert(Ok(()));
                }
                Ok(false) => {}
                Err(e) => {
                    done.get_or_insert(Err(ParcelError::Replica(e)));
                }
            }
            Delivery::Consumed
        });
        match done {
            Some(Ok(())) => return Some(Ok(self.bytes)),
            Some(Err(e)) => return Some(Err(e)),
            None => {}
        }
        match got {
            Ok(_) => None,
            Err(e) => lost(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parcel_hello_names_round_trip_and_junk_is_refused() {
        assert_eq!(parse_parcel_hello_name(&parcel_hello_name(7, 3)), Some((7, 3)));
        for junk in ["hand:v@3", "hand:v7@", "hand:7@3", "hand:v7", "hand:v7@3x", "bak:w0@9", ""] {
            assert_eq!(parse_parcel_hello_name(junk), None, "{junk}");
        }
    }
}
