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
use super::wire::{encode_ack, parse_part};
use super::ReplicaClient;

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
    /// This environment cannot move parcels between nodes.
    Unsupported,
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
            ParcelError::Unsupported => {
                f.write_str("handoff parcel: this environment cannot move bins between nodes")
            }
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
/// at most `timeout`.
pub fn receive_parcel(
    mut conn: Connection,
    config: StoreConfig,
    timeout: Duration,
) -> Result<Parcel, ParcelError> {
    let t0 = Instant::now();
    let mut backup = BackupStore::open(&config.dir, Durability::Memory)
        .map_err(|source| ParcelError::State { what: "hold its chunks", operator: String::new(), source })?;
    let mut reassembly = Reassembly::default();
    let mut received = 0u64;
    let mut acked: Option<(String, u64)> = None;
    while acked.is_none() {
        if t0.elapsed() > timeout {
            return Err(ParcelError::Timeout { waited: t0.elapsed(), received });
        }
        let moved = conn.poll_io().map_err(|e| ParcelError::Replica(ReplicaError::lost(e)))?;
        let mut bad: Option<ParcelError> = None;
        let got = conn.poll_recv(64, |f| {
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
            let whole = parse_part(f.payload).and_then(|p| reassembly.push(p));
            match whole {
                Ok(Some((operator, chunk))) => {
                    received += chunk.len() as u64;
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
            Ok(n) => {
                if n == 0 && !moved {
                    std::thread::sleep(Duration::from_micros(50));
                }
            }
            Err(e) if acked.is_none() => {
                return Err(match e.kind {
                    spate_net::NetErrorKind::PeerClosed | spate_net::NetErrorKind::Closed => {
                        ParcelError::Closed { received }
                    }
                    _ => ParcelError::Replica(ReplicaError::lost(e)),
                })
            }
            Err(_) => {}
        }
    }
    let Some((operator, id)) = acked else { return Err(ParcelError::Closed { received }) };
    // The acknowledgement goes out while the store is rebuilt; the sender
    // only waits for it.
    let ack = spate_state::backup::Ack { instance: operator.clone(), checkpoint: id, bytes: received };
    let _ = conn.try_send_control(Kind::Ack, 0, 0, &encode_ack(&ack));
    let _ = conn.poll_io();
    let received_us = t0.elapsed().as_micros() as u64;
    let t1 = Instant::now();
    let (store, _, _) = StateStore::restore_id(config, &backup, &operator, id).map_err(|source| {
        ParcelError::State { what: "rebuild its store", operator: operator.clone(), source }
    })?;
    let deadline = Instant::now() + Duration::from_secs(1);
    while conn.unsent_bytes() > 0 && Instant::now() < deadline {
        if conn.poll_io().is_err() {
            break;
        }
        std::thread::sleep(Duration::from_micros(100));
    }
    Ok(Parcel { operator, store, bytes: received, received_us, rebuilt_us: t1.elapsed().as_micros() as u64 })
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
