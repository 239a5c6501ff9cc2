//! The backup writer of a worker: streams each checkpoint a stateful
//! instance saved into the worker's backup store (compacting now and
//! then) and to its backup nodes, waits for their acknowledgements and
//! reports it — on a thread of its own, or inline (the simulator); the
//! [`Checkpointer`](super::Checkpointer) starts and stops it.

use spate_state::checkpoint::CheckpointStream;
use spate_state::BackupStore;

use super::backups::Replicas;
use super::coordinator::CheckpointCoordinator;
use super::error::CheckpointError;

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

/// Streams one checkpoint into the local backup store (compacting the
/// instance's chain now and then) and to the backup nodes, waits for their
/// acknowledgements, and reports it.
pub(super) fn write_checkpoint(
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
    replicas.refresh(coord.backup_targets());
    replicas.connect(coord.backup_targets())?;
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
