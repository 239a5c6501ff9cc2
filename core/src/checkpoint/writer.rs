//! The backup writer of a worker: streams each checkpoint a stateful
//! instance saved into the worker's backup store (compacting now and
//! then) and to its backup nodes, waits for their acknowledgements and
//! reports it — on a thread of its own, or inline (the simulator).

use std::sync::Arc;

use spate_state::checkpoint::CheckpointStream;
use spate_state::BackupStore;

use super::backups::Replicas;
use super::checkpointer::Checkpointer;
use super::coordinator::CheckpointCoordinator;
use super::error::CheckpointError;
use crate::metrics::JobMetrics;

/// Every this many checkpoints, an instance's chain in the backup store is
/// compacted into one image (bounding the backup's size and restore time).
const COMPACT_EVERY: u64 = 32;

/// The backup writer's state when it runs inline.
pub(super) struct Inline {
    pub(super) backup: BackupStore,
    pub(super) replicas: Replicas,
    pub(super) queue: std::collections::VecDeque<SaveJob>,
}

/// A checkpoint being streamed into the backup store.
pub(super) struct SaveJob {
    pub(super) instance: String,
    pub(super) id: u64,
    pub(super) stream: CheckpointStream,
}

impl Checkpointer {
    /// Starts the backup writer (after the dataflow is built and restored).
    pub(crate) fn start_writer(&self, metrics: Arc<JobMetrics>) -> Result<(), CheckpointError> {
        let Some(mut backup) = self.backup.borrow_mut().take() else { return Ok(()) };
        let (tx, rx) = std::sync::mpsc::channel::<SaveJob>();
        let coord = self.coord.clone();
        let worker = self.worker;
        let handle = std::thread::Builder::new()
            .name(format!("spate-backup-w{worker}"))
            .spawn(move || {
                let mut replicas = Replicas::new(&coord, worker);
                for job in rx {
                    match write_checkpoint(&mut backup, &mut replicas, &coord, job) {
                        Ok(()) => {}
                        // A backup node that is gone: the checkpoint does
                        // not complete, and the coordinator, which detects
                        // the failure, recovers the job.
                        Err(e) if e.is_backup_node() => {
                            eprintln!("spate: worker {worker}: {e}");
                            if metrics.has_failed() {
                                break;
                            }
                        }
                        // The local backup store failed: the job fails.
                        Err(e) => metrics.fail(format!("worker {worker}: {e}")),
                    }
                }
            })
            .map_err(|source| CheckpointError::StartWriter { worker, source })?;
        *self.writer.borrow_mut() = Some((tx, handle));
        Ok(())
    }

    /// Runs the backup writer inline: checkpoints saved are queued until
    /// [`Checkpointer::write_inline`] writes them (the simulator).
    pub(crate) fn start_inline_writer(&self) -> Result<(), CheckpointError> {
        let Some(backup) = self.backup.borrow_mut().take() else { return Ok(()) };
        let replicas = Replicas::new(&self.coord, self.worker);
        *self.inline.borrow_mut() =
            Some(Inline { backup, replicas, queue: std::collections::VecDeque::new() });
        Ok(())
    }

    /// Writes the oldest checkpoint queued for the inline writer, as the
    /// writer thread would; whether there was one.
    pub(crate) fn write_inline(&self, metrics: &JobMetrics) -> bool {
        let mut inline = self.inline.borrow_mut();
        let Some(w) = inline.as_mut() else { return false };
        let Some(job) = w.queue.pop_front() else { return false };
        match write_checkpoint(&mut w.backup, &mut w.replicas, &self.coord, job) {
            Ok(()) => {}
            Err(e) if e.is_backup_node() => eprintln!("spate: worker {}: {e}", self.worker),
            Err(e) => metrics.fail(format!("worker {}: {e}", self.worker)),
        }
        true
    }

    /// Waits for the checkpoints handed to the writer to be stored.
    pub(crate) fn stop_writer(&self) {
        if let Some((tx, handle)) = self.writer.borrow_mut().take() {
            drop(tx);
            let _ = handle.join();
        }
    }
}

/// Streams one checkpoint into the local backup store (compacting the
/// instance's chain now and then) and to the backup nodes, waits for their
/// acknowledgements, and reports it.
fn write_checkpoint(
    backup: &mut BackupStore,
    replicas: &mut Replicas,
    coord: &CheckpointCoordinator,
    job: SaveJob,
) -> Result<(), CheckpointError> {
    let SaveJob { instance, id, mut stream } = job;
    if id <= coord.aborted() {
        // Voided while it waited: dropping the stream puts its pages back
        // as dirty (the next checkpoint is a full image anyway).
        return Ok(());
    }
    // Compact only a chain that ends at the last globally complete
    // checkpoint: a newer one may never complete, and the manifest's
    // checkpoint must stay restorable.
    let done = coord.completed();
    // Keep only what restoring the last complete checkpoint (or a later
    // one) reads: every chain starts afresh with a full image now and then.
    if done > 0 && backup.complete_checkpoints(&instance).contains(&done) {
        backup
            .retain_from(&instance, done)
            .map_err(|source| CheckpointError::Retain { instance: instance.clone(), source })?;
    }
    if id % COMPACT_EVERY == 0 && backup.complete_checkpoints(&instance).last() == Some(&done) {
        backup
            .compact(&instance)
            .map_err(|source| CheckpointError::Compact { instance: instance.clone(), source })?;
    }
    replicas.refresh(coord);
    replicas.connect(coord)?;
    let mut acked = false;
    while let Some(chunk) = stream.next_chunk() {
        if backup
            .receive(&instance, chunk)
            .map_err(|source| CheckpointError::Store { instance: instance.clone(), checkpoint: id, source })?
            .is_some()
        {
            acked = true;
        }
        replicas.send_chunk(&instance, id, chunk)?;
    }
    if !acked {
        return Err(CheckpointError::NotAcknowledged { instance, checkpoint: id });
    }
    replicas.wait_acks(&instance, id)?;
    coord.report(id, None)
}
