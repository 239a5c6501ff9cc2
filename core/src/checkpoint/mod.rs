//! Periodic, aligned checkpoints of a whole job on one machine, and restore
//! after a restart (docs/ARCHITECTURE.md, decision 18).
//!
//! Every `interval` worker 0 requests checkpoint `n + 1` once checkpoint `n`
//! is complete. Each source instance, at its next step, records its offset
//! and pushes barrier `n + 1` downstream; barriers travel in band (through
//! fused chains, and as empty batches with [`crate::batch::FLAG_BARRIER`]
//! over rings) and are aligned wherever inputs meet (exchange receivers,
//! binary operators; see [`crate::push::InputFrontier`]). A stateful
//! instance saves its store when the aligned barrier reaches it, so every
//! instance's checkpoint `n` reflects exactly the records its sources
//! produced before their offsets of checkpoint `n`. Checkpoint `n` is
//! complete when every source and stateful instance has reported it; then a
//! manifest naming `n`, the worker count and every source's offset is
//! written atomically (temporary file, fsync, rename). Restore loads the
//! highest complete manifest: stateful instances rebuild their stores from
//! the per-worker [`BackupStore`]s and sources seek to their offsets.
//!
//! Map: `manifest` (the [`Manifest`] and a job's checkpoint files on disk),
//! `coordinator` (the job-wide [`CheckpointCoordinator`] and what a cluster
//! node is given, [`ClusterCheckpoints`]), `checkpointer` (a worker's side,
//! [`Checkpointer`]: what stateful instances and sources call), `writer`
//! (the backup writer, on its thread or inline), `backups` (the streams to
//! backup nodes: [`Backups`], [`BackupLink`]), `error` (what goes wrong:
//! [`CheckpointError`]).
//!
//! [`BackupStore`]: spate_state::BackupStore

mod backups;
mod checkpointer;
mod coordinator;
mod error;
mod manifest;
mod writer;

pub use backups::{BackupLink, BackupNet, Backups};
pub use checkpointer::{instance_name, Checkpointer};
pub use coordinator::{CheckpointCoordinator, ClusterCheckpoints};
pub use error::{BackupLinkError, CheckpointError};
pub use manifest::{checkpoint_dir, highest_stored_id, latest_manifest, remove_checkpoints, Manifest};
