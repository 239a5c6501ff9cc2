//! The fetching side of a recovery: [`fetch`] brings one origin worker's
//! stored checkpoint (each instance's chain) back from a backup node into
//! a local [`BackupStore`], and checks that it is all there.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use spate_net::frame::Kind;
use spate_net::{Connection, Delivery};
use spate_state::BackupStore;

use super::error::{Link, ReplicaError};
use super::reassembly::Reassembly;
use super::wire::{connect, encode_request, fetch_hello_name, parse_done, parse_error, parse_part};
use super::{Totals, CLIENT_NAP, FRAMES_PER_PASS};

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
) -> Result<FetchReport, ReplicaError> {
    let context = |e: ReplicaError| ReplicaError::Fetch {
        origin: origin_worker,
        checkpoint: id,
        addr,
        source: Box::new(e),
    };
    let deadline = Instant::now() + timeout;
    let mut conn = connect(addr, fetch_hello_name(origin_worker), cluster, deadline).map_err(context)?;
    let request = encode_request(origin_worker, id);
    if !conn.try_send_control(Kind::Recovery, 0, 0, &request).map_err(|e| context(ReplicaError::lost(e)))? {
        return Err(context(ReplicaError::NoRoomForRequest));
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
    result.map_err(context)
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
) -> Result<FetchReport, ReplicaError> {
    let mut asm = Reassembly::default();
    // Per instance, the checkpoints `into` acknowledged.
    let mut acks: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    let mut got = Totals::default();
    let mut done: Option<Totals> = None;
    let mut failure: Option<ReplicaError> = None;
    let mut server_error: Option<ReplicaError> = None;
    loop {
        let moved = conn.poll_io().map_err(ReplicaError::lost)?;
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
                            Err(ReplicaError::LocalRefused { instance: instance.into(), source: Arc::new(e) })
                        }
                    }
                }),
                Kind::Ack => parse_done(f.payload).map(|t| done = Some(t)),
                Kind::Report => parse_error(f.payload).map(|(instance, _, message)| {
                    server_error = Some(ReplicaError::FetchRefused {
                        instance: (!instance.is_empty()).then(|| instance.to_string()),
                        message: message.to_string(),
                    });
                }),
                kind => Err(ReplicaError::UnexpectedFrame { kind, on: Link::FromBackup }),
            };
            if let Err(e) = r {
                failure = Some(e);
            }
            Delivery::Consumed
        });
        if let Some(e) = server_error {
            return Err(e);
        }
        if let Some(e) = failure {
            return Err(e);
        }
        if let Some(t) = done {
            return finish_fetch(id, t, got, &acks, open, asm.active);
        }
        let frames = received.map_err(ReplicaError::lost)?;
        if Instant::now() >= deadline {
            return Err(ReplicaError::FetchTimeout { timeout, chunks: got.chunks, bytes: got.bytes });
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
) -> Result<FetchReport, ReplicaError> {
    if mid_chunk {
        return Err(ReplicaError::EndedInsideChunk);
    }
    if let Some(i) = open.iter().next() {
        return Err(ReplicaError::EndedInsideCheckpoint { instance: i.clone() });
    }
    for (instance, ids) in acks {
        if ids.last() != Some(&id) {
            let last = ids.last().copied();
            return Err(ReplicaError::ChainEnd { instance: instance.clone(), last, checkpoint: id });
        }
    }
    got.instances = acks.len() as u64;
    if got != sent {
        return Err(ReplicaError::TotalsDiffer { received: got, sent });
    }
    Ok(FetchReport {
        instances: acks.keys().cloned().collect(),
        checkpoints: got.checkpoints,
        bytes: got.bytes,
    })
}
