//! A worker's streams of checkpoints to its backup nodes: how they are
//! reached ([`Backups`], [`BackupLink`]; over TCP to their replica services
//! in production), and the streams themselves (`Replicas`), made at the
//! first checkpoint and again after one failed.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::error::{BackupLinkError, CheckpointError};

/// Where a node's checkpoints are streamed: the backup nodes' replica
/// services and the epoch to stream under — a live recovery may change
/// both, and `generation` counts the changes — and how to reach them.
pub(super) struct BackupTargets {
    pub(super) backups: Arc<dyn Backups>,
    pub(super) replicas: Mutex<(Vec<std::net::SocketAddr>, u64)>,
    pub(super) generation: AtomicU64,
    pub(super) cluster: u64,
}

/// How a worker's backup writer reaches its backup nodes.
pub trait Backups: Send + Sync {
    /// Opens a stream of worker `worker`'s checkpoints (under `epoch`) to
    /// the backup node whose replica service is at `target`.
    fn connect(
        &self,
        target: std::net::SocketAddr,
        cluster: u64,
        worker: usize,
        epoch: u64,
    ) -> Result<Box<dyn BackupLink>, BackupLinkError>;
}

/// One stream of checkpoints to one backup node.
pub trait BackupLink: Send {
    /// Sends one chunk of `instance`'s checkpoint.
    fn send_chunk(&mut self, instance: &str, chunk: &[u8]) -> Result<(), BackupLinkError>;
    /// Waits until the backup node has stored checkpoint `id` of
    /// `instance` whole.
    fn wait_ack(&mut self, instance: &str, id: u64) -> Result<(), BackupLinkError>;
}

/// A [`Backups`] to hand around (cloned into every worker's writer).
#[derive(Clone)]
pub struct BackupNet(pub Arc<dyn Backups>);

impl std::fmt::Debug for BackupNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BackupNet")
    }
}

/// Checkpoints over TCP to the backup nodes' replica services
/// ([`crate::replica`]).
pub(super) struct TcpBackups;

impl Backups for TcpBackups {
    fn connect(
        &self,
        target: std::net::SocketAddr,
        cluster: u64,
        worker: usize,
        epoch: u64,
    ) -> Result<Box<dyn BackupLink>, BackupLinkError> {
        let client =
            crate::replica::ReplicaClient::connect_epoch(target, cluster, worker, epoch, REPLICA_TIMEOUT)?;
        Ok(Box::new(client))
    }
}

impl BackupLink for crate::replica::ReplicaClient {
    fn send_chunk(&mut self, instance: &str, chunk: &[u8]) -> Result<(), BackupLinkError> {
        Ok(crate::replica::ReplicaClient::send_chunk(self, instance, chunk)?)
    }
    fn wait_ack(&mut self, instance: &str, id: u64) -> Result<(), BackupLinkError> {
        Ok(crate::replica::ReplicaClient::wait_ack(self, instance, id, REPLICA_TIMEOUT)?)
    }
}

/// How long a backup node may take to acknowledge a checkpoint, and to
/// accept a connection.
const REPLICA_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// A worker's streams to its backup nodes, made at its first checkpoint;
/// one that failed is made again at the next.
pub(super) struct Replicas {
    targets: Vec<std::net::SocketAddr>,
    cluster: u64,
    epoch: u64,
    worker: usize,
    clients: Vec<Option<Box<dyn BackupLink>>>,
    /// The coordinator's replica generation these targets are of.
    generation: u64,
}

impl Replicas {
    pub(super) fn new(to: Option<&BackupTargets>, worker: usize) -> Self {
        let mut r = Self {
            targets: Vec::new(),
            cluster: to.map_or(0, |c| c.cluster),
            epoch: 0,
            worker,
            clients: Vec::new(),
            generation: u64::MAX,
        };
        r.refresh(to);
        r
    }

    /// Takes the coordinator's current backup nodes, if they changed.
    pub(super) fn refresh(&mut self, to: Option<&BackupTargets>) {
        let Some(c) = to else { return };
        let generation = c.generation.load(Ordering::Acquire);
        if generation == self.generation {
            return;
        }
        if let Ok(r) = c.replicas.lock() {
            (self.targets, self.epoch) = (r.0.clone(), r.1);
        }
        self.clients = self.targets.iter().map(|_| None).collect();
        self.generation = generation;
    }

    pub(super) fn connect(&mut self, to: Option<&BackupTargets>) -> Result<(), CheckpointError> {
        let Some(c) = to else { return Ok(()) };
        for (t, client) in self.targets.iter().zip(self.clients.iter_mut()) {
            if client.is_none() {
                *client = Some(
                    c.backups
                        .connect(*t, self.cluster, self.worker, self.epoch)
                        .map_err(|source| CheckpointError::BackupConnect { addr: *t, source })?,
                );
            }
        }
        Ok(())
    }

    /// Sends one chunk of checkpoint `id` of `instance` to every backup
    /// node.
    pub(super) fn send_chunk(
        &mut self,
        instance: &str,
        id: u64,
        chunk: &[u8],
    ) -> Result<(), CheckpointError> {
        for (t, c) in self.targets.iter().zip(self.clients.iter_mut()) {
            if let Some(client) = c {
                if let Err(source) = client.send_chunk(instance, chunk) {
                    *c = None;
                    return Err(stream_error(instance, id, *t, source));
                }
            }
        }
        Ok(())
    }

    pub(super) fn wait_acks(&mut self, instance: &str, id: u64) -> Result<(), CheckpointError> {
        for (t, c) in self.targets.iter().zip(self.clients.iter_mut()) {
            if let Some(client) = c {
                if let Err(source) = client.wait_ack(instance, id) {
                    *c = None;
                    return Err(stream_error(instance, id, *t, source));
                }
            }
        }
        Ok(())
    }
}

fn stream_error(
    instance: &str,
    checkpoint: u64,
    addr: std::net::SocketAddr,
    source: BackupLinkError,
) -> CheckpointError {
    CheckpointError::BackupStream { instance: instance.to_string(), checkpoint, addr, source }
}
