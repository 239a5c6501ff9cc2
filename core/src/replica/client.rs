//! The sending side of a backup stream: [`ReplicaClient`], one worker's
//! stream of checkpoint chunks to one backup node, and the acks and
//! errors that come back.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use spate_net::frame::Kind;
use spate_net::{Connection, Delivery, NetError};

use super::error::{Link, ReplicaError};
use super::wire::{backup_hello_name, check_name, connect, encode_part, parse_ack, parse_error};
use super::{ACKS_KEPT_MAX, CHUNK_BYTES_MAX, CLIENT_NAP, ERRORS_KEPT_MAX, FLUSH_BYTES, PART_BYTES_MAX};

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
    /// Why the client is unusable (returned again by every later call).
    broken: Option<ReplicaError>,
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
    ) -> Result<Self, ReplicaError> {
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
    ) -> Result<Self, ReplicaError> {
        let mut c = Self::connect_named(addr, cluster, backup_hello_name(origin_worker, epoch), timeout)?;
        c.origin_worker = origin_worker;
        Ok(c)
    }

    /// As [`connect`](Self::connect), announcing `name` (a handoff's
    /// parcel to a node, `super::parcel`).
    pub fn connect_named(
        addr: SocketAddr,
        cluster: u64,
        name: String,
        timeout: Duration,
    ) -> Result<Self, ReplicaError> {
        let origin_worker = 0;
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
    pub fn send_chunk(&mut self, instance: &str, chunk: &[u8]) -> Result<(), ReplicaError> {
        self.usable()?;
        check_name(instance).map_err(|e| self.context(e))?;
        if chunk.is_empty() || chunk.len() > CHUNK_BYTES_MAX {
            return Err(self.context(ReplicaError::ChunkSize { instance: instance.into(), len: chunk.len() }));
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
    fn queue_message(&mut self, deadline: Instant, instance: &str) -> Result<(), ReplicaError> {
        loop {
            match self.conn.try_send_control(Kind::CheckpointChunk, 0, self.seq, &self.message) {
                Ok(true) => {
                    self.seq += 1;
                    return Ok(());
                }
                Ok(false) => {}
                Err(e) => return Err(self.broke_net(e)),
            }
            let progress = self.pump()?;
            if Instant::now() >= deadline {
                let e = ReplicaError::SendTimeout {
                    instance: instance.into(),
                    timeout: self.timeout,
                    queued: self.conn.unsent_bytes(),
                };
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
    pub fn wait_ack(&mut self, instance: &str, id: u64, timeout: Duration) -> Result<(), ReplicaError> {
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
                let e = ReplicaError::NoAck { instance: instance.into(), checkpoint: id, timeout };
                return Err(self.context(e));
            }
            // A failed pump is `broken`, reported at the top of the loop
            // after the acks and errors that arrived before it.
            if let Ok(false) = self.pump() {
                std::thread::sleep(CLIENT_NAP);
            }
        }
    }

    fn take_error(&mut self, instance: &str, id: u64) -> Option<ReplicaError> {
        let errors = self.errors.get_mut(instance)?;
        let i = errors.iter().position(|(c, _)| *c <= id)?;
        let (c, message) = errors.remove(i);
        let checkpoint = (c != 0).then_some(c);
        Some(self.context(ReplicaError::CheckpointRefused { instance: instance.into(), checkpoint, message }))
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
    fn pump(&mut self) -> Result<bool, ReplicaError> {
        self.usable()?;
        let moved = match self.conn.poll_io() {
            Ok(m) => m,
            Err(e) => return Err(self.broke_net(e)),
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
                kind => Err(ReplicaError::UnexpectedFrame { kind, on: Link::FromBackup }),
            };
            if let Err(e) = r {
                bad.get_or_insert(e);
            }
            Delivery::Consumed
        });
        if let Some(message) = self.server_error.clone() {
            return Err(self.broke(ReplicaError::StreamClosed { message }));
        }
        if let Some(e) = bad {
            return Err(self.broke(e));
        }
        match received {
            Ok(n) => Ok(moved || n > 0),
            Err(e) => Err(self.broke_net(e)),
        }
    }

    fn usable(&self) -> Result<(), ReplicaError> {
        match &self.broken {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }

    /// `e`, on this stream.
    fn context(&self, e: ReplicaError) -> ReplicaError {
        ReplicaError::Stream { origin: self.origin_worker, addr: self.addr, source: Box::new(e) }
    }

    /// Breaks the client with `e` (unless it is broken already); the
    /// error that broke it.
    fn broke(&mut self, e: ReplicaError) -> ReplicaError {
        let e = self.context(e);
        self.broken.get_or_insert(e).clone()
    }

    fn broke_net(&mut self, e: NetError) -> ReplicaError {
        self.broke(ReplicaError::lost(e))
    }
}
