//! Taking checkpoints: where a store stands in its checkpoint chain
//! ([`ChainState`]), and the `impl StateStore` that takes a checkpoint
//! synchronously or begins an asynchronous one, settles it when its stream
//! ends, and snapshots the header it streams.

use super::header::{BinSnapshot, HeaderSnapshot, TableEntry};
use super::{Checkpoint, CheckpointStream};
use crate::error::StateError;
use crate::store::chain::Inflight;
use crate::store::cow::Phase;
use crate::store::StateStore;

impl StateStore {
    /// Sets after how many increments the next checkpoint is a full image
    /// (default [`FULL_EVERY_DEFAULT`](crate::checkpoint::FULL_EVERY_DEFAULT); 0: every checkpoint is full).
    pub fn set_checkpoint_full_every(&mut self, increments: u32) {
        self.chain.full_every = increments;
    }

    /// Makes the next checkpoint a full image (its chain's earlier links
    /// may be missing where it will be restored: a new backup node, or a
    /// checkpoint that was voided).
    pub fn require_full_checkpoint(&mut self) {
        self.chain.need_full = true;
    }

    /// The id of the last checkpoint taken, begun (or restored), 0 if none.
    /// A checkpoint whose stream was dropped before its trailer does not
    /// count.
    pub fn last_checkpoint(&self) -> u64 {
        match (&self.chain.inflight, self.file.cow_phase()) {
            (Some(prev), Some(Phase::Abandoned)) => prev.last,
            _ => self.chain.last,
        }
    }

    /// Takes checkpoint `id` (greater than the last one's) with the
    /// runtime's opaque `meta` bytes, synchronously: a full image if it is
    /// the store's first (or the first after a restore, split or merge, or
    /// after the configured number of increments), else the pages written
    /// since the last checkpoint. [`StateStore::begin_checkpoint`] and a
    /// drain of its stream on this thread: the result is a consistent image
    /// at the call. Clears the dirty bits. Prefer `begin_checkpoint` for a
    /// large state: this call holds the processing thread for the copy.
    pub fn checkpoint(&mut self, id: u64, meta: &[u8]) -> Result<Checkpoint, StateError> {
        let ckpt = self.begin_checkpoint(id, meta)?.into_checkpoint();
        self.settle_checkpoint()?;
        Ok(ckpt)
    }

    /// Begins checkpoint `id` (greater than the last one's) with the
    /// runtime's opaque `meta` bytes and returns its [`CheckpointStream`],
    /// which produces the chunks on any thread while this store goes on
    /// being written: the image is the store exactly as it is at this call
    /// (a copy-on-write shadow keeps the pages the store overwrites before
    /// the stream reads them). A full image if it is the store's first (or
    /// the first after a restore, split or merge, or after the configured
    /// number of increments), else the pages written since the last
    /// checkpoint. Clears the dirty bits.
    ///
    /// The call copies no page and encodes nothing: it takes the dirty
    /// bitmap, snapshots the layout (each bin's segment list is shared, not
    /// copied) and the tables, sets up the page bitmaps of the copy-on-write
    /// and maps the shadow's address space. Its pause grows with the number
    /// of bins and with a word per 64 pages of the file, not with the bytes
    /// of state; the stream encodes the header and, for a full image, finds
    /// the pages of the bins' segments. While the stream reads pages, each
    /// first write to a page of the checkpoint (for a full image, to any
    /// page of the file) copies that page (4 KiB) into the shadow.
    ///
    /// One checkpoint streams at a time: fails with
    /// [`StateError::CheckpointInFlight`] while the previous stream has not
    /// handed out its trailer and is not dropped. A stream dropped before
    /// its trailer is forgotten: its pages are dirty again and the chain is
    /// as before it began (the next checkpoint has the same base, or is a
    /// full image if this one was), so no page is ever lost.
    pub fn begin_checkpoint(&mut self, id: u64, meta: &[u8]) -> Result<CheckpointStream, StateError> {
        self.settle_checkpoint().map_err(|e| match e {
            StateError::CheckpointInFlight { checkpoint, .. } => {
                StateError::CheckpointInFlight { checkpoint, requested: id }
            }
            e => e,
        })?;
        if id == 0 || id <= self.chain.last {
            return Err(StateError::InvalidConfig {
                field: "checkpoint id",
                reason: format!("{id} is not above the last checkpoint {}", self.chain.last),
            });
        }
        let full = self.chain.need_full || self.chain.increments >= self.chain.full_every;
        let base = if full { 0 } else { self.chain.last };
        // The one step that can fail, before anything changes.
        let mut shadow = self.file.map_shadow()?;
        let snapshot = self.header_snapshot(id, base, meta);
        // How the next dirty epoch's burst updates mark pages, from how
        // this one's did.
        self.plan_whole_marks();
        // A full image: every page of the file is copied before it is first
        // written (the stream reads those of the bins' segments, from the
        // snapshot); an increment: the dirty pages.
        let set = (!full).then(|| self.file.take_dirty());
        let (shared, live) = self.file.begin_cow(set, &mut shadow);
        let pages = if full {
            self.file.clear_dirty();
            let words = shared.set.len();
            snapshot.layout_page_set(words).iter().map(|w| u64::from(w.count_ones())).sum()
        } else {
            shared.page_count()
        };
        self.chain.inflight = Some(Inflight {
            id,
            last: self.chain.last,
            increments: self.chain.increments,
            need_full: self.chain.need_full,
        });
        self.chain.last = id;
        self.chain.need_full = false;
        self.chain.increments = if full { 0 } else { self.chain.increments + 1 };
        Ok(CheckpointStream::new(snapshot, pages, shared, shadow.take(), live))
    }

    /// Whether a checkpoint's stream is still producing chunks (begun, its
    /// trailer not handed out, not dropped).
    pub fn checkpoint_in_flight(&self) -> bool {
        matches!(self.file.cow_phase(), Some(Phase::Pages | Phase::PagesDone))
    }

    /// Settles the checkpoint whose stream ended: forgets a complete one;
    /// for one dropped before its trailer, marks its pages dirty again and
    /// puts the chain back as it was before it began (keeping a full image
    /// asked for since). Fails if its stream is still producing chunks.
    pub(crate) fn settle_checkpoint(&mut self) -> Result<(), StateError> {
        let Some(phase) = self.file.cow_phase() else {
            return Ok(());
        };
        match phase {
            Phase::Pages | Phase::PagesDone => {
                return Err(StateError::CheckpointInFlight { checkpoint: self.chain.last, requested: 0 });
            }
            Phase::Complete => {
                self.file.end_cow();
            }
            Phase::Abandoned => {
                if let Some(shared) = self.file.end_cow() {
                    self.file.redirty(&shared.set);
                }
                if let Some(prev) = self.chain.inflight.take() {
                    debug_assert_eq!(prev.id, self.chain.last);
                    self.chain.last = prev.last;
                    self.chain.increments = prev.increments;
                    self.chain.need_full |= prev.need_full;
                }
            }
        }
        self.chain.inflight = None;
        Ok(())
    }

    /// What the header of checkpoint `id` on `base` (0: a full image)
    /// holds, without copying any bin's segment list (they are shared until
    /// the bin next changes): the work is per bin and per table, not per
    /// segment.
    fn header_snapshot(&self, id: u64, base: u64, meta: &[u8]) -> HeaderSnapshot {
        HeaderSnapshot {
            id,
            base,
            bins: self.bins,
            bins_log2: self.config.bins_log2,
            segment_log2: self.file.segment_log2() as u8,
            next_segment: self.file.next_segment(),
            free: self.file.free_lists().to_vec(),
            layout: self
                .heaps
                .iter()
                .map(|h| BinSnapshot { segs: h.segs.clone(), tail: h.tail, used: h.used, dead: h.dead })
                .collect(),
            tables: self
                .tables
                .iter()
                .map(|t| {
                    let typed =
                        (t.sig.is_some() || t.restored_sig.is_some()).then(|| t.type_name().to_string());
                    TableEntry { name: t.name.clone(), typed }
                })
                .collect(),
            meta: meta.to_vec(),
        }
    }
}
