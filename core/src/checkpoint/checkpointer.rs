//! A worker's side of checkpointing ([`Checkpointer`]): its backup store,
//! and what stateful instances and sources call — save, commit, restore,
//! the offsets to resume from.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::thread::JoinHandle;

use spate_state::{BackupStore, BinRange, Durability, StateError, StateStore, StoreConfig};

use super::backups::Replicas;
use super::coordinator::CheckpointCoordinator;
use super::error::CheckpointError;
use super::writer::{write_checkpoint, Inline, SaveJob};
use crate::metrics::JobMetrics;

/// A worker's side of checkpointing: its backup store, and what stateful
/// instances and sources call.
///
/// Saving is asynchronous: `save` only begins the checkpoint (a
/// copy-on-write snapshot of the store, see `StateStore::begin_checkpoint`)
/// and hands the stream to the worker's *backup writer* thread, which
/// streams the chunks into the backup store and reports the checkpoint. The
/// worker's pause does not grow with the state. Restores read the backup
/// store on the worker thread while the dataflow is built, before the
/// writer starts.
pub struct Checkpointer {
    pub(super) worker: usize,
    /// Where every worker's backup store of the job lives (`w<worker>`
    /// under it).
    backups_dir: std::path::PathBuf,
    pub(super) backup: std::cell::RefCell<Option<BackupStore>>,
    pub(super) writer: std::cell::RefCell<Option<(Sender<SaveJob>, JoinHandle<()>)>>,
    /// The backup writer run inline (the simulator): its store, its
    /// streams and the checkpoints saved and not yet written.
    pub(super) inline: std::cell::RefCell<Option<Inline>>,
    pub(super) coord: Arc<CheckpointCoordinator>,
    participants: std::cell::Cell<usize>,
    /// Per instance, the full-image generation its last checkpoint met
    /// (see [`CheckpointCoordinator::abort_through`]).
    full_seen: std::cell::RefCell<std::collections::HashMap<String, u64>>,
}

/// The name of `operator`'s stateful instance on `worker` in the backup
/// stores: a rescaled restore finds the parts of the old workers by it.
pub fn instance_name(operator: &str, worker: usize) -> String {
    format!("{operator}-{worker}")
}

impl Checkpointer {
    pub(crate) fn open(
        data_dir: &Path,
        dataflow: &str,
        worker: usize,
        coord: Arc<CheckpointCoordinator>,
    ) -> Result<Self, CheckpointError> {
        let backups_dir = data_dir.join(dataflow).join("backup");
        let dir = backups_dir.join(format!("w{worker}"));
        let backup = BackupStore::open(&dir, Durability::PageCache)
            .map_err(|source| CheckpointError::OpenBackup { path: dir.clone(), source })?;
        Ok(Self {
            worker,
            backups_dir,
            backup: std::cell::RefCell::new(Some(backup)),
            writer: std::cell::RefCell::new(None),
            inline: std::cell::RefCell::new(None),
            coord,
            participants: std::cell::Cell::new(0),
            full_seen: std::cell::RefCell::new(std::collections::HashMap::new()),
        })
    }

    /// Registers one more participant (a stateful instance or a source).
    pub fn register(&self) {
        self.participants.set(self.participants.get() + 1);
    }

    pub(crate) fn participants(&self) -> usize {
        self.participants.get()
    }

    /// The checkpoint being restored, if any.
    pub fn restoring(&self) -> Option<u64> {
        self.coord.restored().map(|m| m.id)
    }

    /// Workers of the job that took the checkpoint being restored, if any
    /// (another number than this job's when it is restored rescaled).
    pub fn restored_workers(&self) -> Option<usize> {
        self.coord.restored().map(|m| m.workers)
    }

    /// Begins checkpoint `id` of `instance` (with the operator's `meta`
    /// bytes) and hands it to the backup writer, which stores and reports
    /// it.
    pub fn save(
        &self,
        instance: &str,
        store: &mut StateStore,
        id: u64,
        meta: &[u8],
    ) -> Result<(), CheckpointError> {
        let generation = self.coord.full_generation.load(Ordering::Acquire);
        if generation > 0 {
            let mut seen = self.full_seen.borrow_mut();
            if seen.get(instance).copied().unwrap_or(0) < generation {
                store.require_full_checkpoint();
                seen.insert(instance.to_string(), generation);
            }
        }
        let stream = store.begin_checkpoint(id, meta).map_err(|source| CheckpointError::Save {
            instance: instance.to_string(),
            checkpoint: id,
            worker: self.worker,
            source,
        })?;
        if let Some(w) = self.inline.borrow_mut().as_mut() {
            w.queue.push_back(SaveJob { instance: instance.to_string(), id, stream });
            return Ok(());
        }
        let writer = self.writer.borrow();
        let Some((tx, _)) = writer.as_ref() else {
            return Err(CheckpointError::WriterNotRunning { instance: instance.to_string(), checkpoint: id });
        };
        tx.send(SaveJob { instance: instance.to_string(), id, stream }).map_err(|_| {
            CheckpointError::WriterStopped {
                instance: instance.to_string(),
                checkpoint: id,
                worker: self.worker,
            }
        })
    }

    /// A participant without state reached barrier `id` and made what
    /// precedes it durable (a sink wrote its output): checkpoint `id` can
    /// only complete after every such participant said so.
    pub fn commit(&self, id: u64) -> Result<(), CheckpointError> {
        self.coord.report(id, None)
    }

    /// Rebuilds `instance`'s store from the checkpoint being restored, into
    /// `config.dir`; returns it with its `meta` bytes. `None` when not
    /// restoring.
    pub fn restore(
        &self,
        instance: &str,
        config: StoreConfig,
    ) -> Result<Option<(StateStore, Vec<u8>)>, CheckpointError> {
        let Some(id) = self.restoring() else { return Ok(None) };
        let backup = self.backup.borrow();
        let Some(backup) = backup.as_ref() else {
            return Err(CheckpointError::BackupInUse { instance: instance.to_string() });
        };
        let (store, meta, _) = StateStore::restore_id(config, backup, instance, id).map_err(|source| {
            CheckpointError::Restore { instance: instance.to_string(), checkpoint: id, source }
        })?;
        Ok(Some((store, meta)))
    }

    /// Rebuilds the store of `operator`'s instance on this worker, which
    /// owns `bins`, from the checkpoint being restored, into `config.dir`;
    /// returns it with the `meta` bytes of each part it came from (one,
    /// unless rescaled). `None` when not restoring.
    ///
    /// A checkpoint of as many workers restores this worker's own part. One
    /// that another number of workers took (a job restored onto more or
    /// fewer workers) is gathered: the part of every old worker whose bins
    /// overlap `bins` is restored, cut down to the overlap, and the pieces
    /// are merged in bin order — whole bins move, nothing is rehashed. The
    /// next checkpoint of the store is a full image.
    pub fn restore_instance(
        &self,
        operator: &str,
        bins: BinRange,
        config: StoreConfig,
    ) -> Result<Option<(StateStore, Vec<Vec<u8>>)>, CheckpointError> {
        let Some(m) = self.coord.restored() else { return Ok(None) };
        if !self.coord.rescaled() {
            let instance = instance_name(operator, self.worker);
            return Ok(self.restore(&instance, config)?.map(|(store, meta)| (store, vec![meta])));
        }
        let id = m.id;
        // The old workers' bins: as recorded, else the uniform assignment.
        let old_bins = match &m.assignment {
            Some((_, ranges)) => ranges.clone(),
            None => crate::assignment::Assignment::uniform(config.bins_log2, m.workers).ranges().to_vec(),
        };
        let mut gathered: Option<StateStore> = None;
        let mut metas = Vec::new();
        for old in 0..m.workers {
            let theirs = old_bins.get(old).copied().unwrap_or(BinRange::new(0, 0));
            let (start, end) = (theirs.start.max(bins.start), theirs.end.min(bins.end));
            if start >= end {
                continue;
            }
            let instance = instance_name(operator, old);
            let failed =
                |source| CheckpointError::Restore { instance: instance.clone(), checkpoint: id, source };
            let piece_config = match &gathered {
                None => config.clone(),
                Some(_) => StoreConfig { dir: config.dir.join(format!("from-w{old}")), ..config.clone() },
            };
            let (mut piece, meta, _) = if old == self.worker {
                let backup = self.backup.borrow();
                let Some(backup) = backup.as_ref() else {
                    return Err(CheckpointError::BackupInUse { instance });
                };
                StateStore::restore_id(piece_config, backup, &instance, id).map_err(failed)?
            } else {
                let dir = self.backups_dir.join(format!("w{old}"));
                let backup = BackupStore::open_existing(&dir)
                    .map_err(|source| CheckpointError::OpenBackup { path: dir.clone(), source })?;
                StateStore::restore_id(piece_config, &backup, &instance, id).map_err(failed)?
            };
            // Keep only the overlap: the bins past it, then those before it,
            // are split off and dropped.
            if piece.bins().end > end {
                drop(piece.split_off(BinRange::new(end, piece.bins().end)).map_err(failed)?);
            }
            if piece.bins().start < start {
                drop(piece.split_off(BinRange::new(piece.bins().start, start)).map_err(failed)?);
            }
            metas.push(meta);
            match &mut gathered {
                None => gathered = Some(piece),
                Some(g) => g.merge(piece).map_err(failed)?,
            }
        }
        let Some(mut store) = gathered else {
            return Err(CheckpointError::Restore {
                instance: instance_name(operator, self.worker),
                checkpoint: id,
                source: StateError::NoCheckpoint { instance: format!("{operator}, bins {bins}") },
            });
        };
        store.require_full_checkpoint();
        Ok(Some((store, metas)))
    }

    /// The offset partition `partition` of source `name` resumes from,
    /// when restoring.
    pub(crate) fn source_offset(&self, name: &str, partition: usize) -> Result<Option<u64>, CheckpointError> {
        let Some(m) = self.coord.restored() else { return Ok(None) };
        m.offsets.get(&(name.to_string(), partition)).copied().map(Some).ok_or_else(|| {
            CheckpointError::NoOffset { checkpoint: m.id, name: name.to_string(), worker: partition }
        })
    }

    /// A receiver of `producer`'s stream on `edge` reached checkpoint
    /// `id`'s barrier with `records` of that stream beyond it already in
    /// its state (see [`Manifest::ahead`](super::Manifest::ahead)).
    pub(crate) fn note_ahead(&self, id: u64, edge: usize, producer: usize, records: u64) {
        self.coord.note_ahead(id, (edge, producer, self.worker), records);
    }

    /// Records of `producer`'s stream on `edge` that this worker's
    /// restored state holds beyond the checkpoint's barrier.
    pub(crate) fn restored_ahead(&self, edge: usize, producer: usize) -> u64 {
        self.coord.restored().map_or(0, |m| m.ahead_of(edge, producer, self.worker))
    }

    pub(crate) fn source_reported(
        &self,
        id: u64,
        name: &str,
        partition: usize,
        offset: u64,
    ) -> Result<(), CheckpointError> {
        self.coord.report(id, Some((name, partition, offset)))
    }

    pub(crate) fn coordinator(&self) -> &Arc<CheckpointCoordinator> {
        &self.coord
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.stop_writer();
    }
}

/// The backup writer: started once the dataflow is built and restored.
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
                // A panic fails the job instead of leaving its checkpoints
                // never complete (decision 44).
                let wrote = crate::panic::catch(Some("writing a checkpoint"), || {
                    let mut replicas = Replicas::new(coord.backup_targets(), worker);
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
                });
                if let Err(p) = wrote {
                    metrics.fail(format!("worker {worker}: {p}"));
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
        let replicas = Replicas::new(self.coord.backup_targets(), self.worker);
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
