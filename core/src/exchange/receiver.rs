//! The receiving side of an edge on one worker: an [`EdgeReceiver`] decodes
//! batches from every producer (checking those from another process),
//! merges the producers' watermarks, aligns their barriers and pushes the
//! records downstream.

use std::any::Any;
use std::rc::Rc;

use spate_state::codec;

use crate::batch::{Batch, Meta};
use crate::data::Data;
use crate::handoff::{Handoff, HandoffBoard};
use crate::push::{BarrierTracker, BoxPush, InputFrontier};
use crate::time::{Timestamp, WATERMARK_END};

/// Type-erased receiving side of an edge on one worker.
pub(crate) trait BatchInput {
    /// A batch from another worker, but for its first `skip` records (a
    /// replacement's replay re-sends records this worker already took).
    fn on_batch(&mut self, batch: &Batch, skip: usize);
    /// A live handoff concerns this worker: the downstream keyed instance
    /// looks at the board (see `crate::handoff`).
    fn poke(&mut self);
}

/// The receiving side of an edge on one worker.
pub(crate) struct EdgeReceiver<T> {
    edge: u32,
    metrics: std::sync::Arc<crate::metrics::JobMetrics>,
    pub(super) out: Option<BoxPush<T>>,
    frontier: InputFrontier,
    finished: bool,
    /// A batch's records, decoded, handed downstream as one burst (see
    /// [`crate::push::Push::push_burst`]); allocated once.
    burst: Vec<(T, Meta)>,
    /// With live handoffs: the board, this worker, each producer's last
    /// marker (or the end, for one that finished) and the last step this
    /// edge drained.
    handoff: Option<Follow>,
}

struct Follow {
    board: std::sync::Arc<HandoffBoard>,
    worker: usize,
    markers: Vec<u64>,
    drained: u64,
}

impl<T: Data> EdgeReceiver<T> {
    pub(super) fn new(
        edge: u32,
        producers: usize,
        tracker: Rc<BarrierTracker>,
        metrics: std::sync::Arc<crate::metrics::JobMetrics>,
    ) -> Self {
        let mut frontier = InputFrontier::new(producers);
        frontier.set_tracker(tracker);
        Self { edge, metrics, out: None, frontier, finished: false, burst: Vec::new(), handoff: None }
    }

    /// Takes part in the live handoffs on `board`, as worker `worker`.
    pub(crate) fn follow(&mut self, board: std::sync::Arc<HandoffBoard>, worker: usize, producers: usize) {
        if self.handoff.is_none() {
            let v = board.version();
            self.handoff = Some(Follow { board, worker, markers: vec![v; producers], drained: v });
        }
    }

    /// `producer` routes by assignment `version` from now on.
    pub(super) fn handoff_from(&mut self, producer: usize, version: u64) {
        if let Some(f) = self.handoff.as_mut() {
            if let Some(m) = f.markers.get_mut(producer) {
                *m = (*m).max(version);
            }
        }
        self.check_drained();
    }

    /// On the worker a step's bins leave: once every producer's marker of
    /// the step came (or the producer ended), every record of those bins
    /// this edge will ever get is downstream, which hands them off.
    fn check_drained(&mut self) {
        let Some(f) = self.handoff.as_mut() else { return };
        let Some(step) = f.board.step() else { return };
        if step.from != f.worker || f.drained >= step.version || f.markers.iter().any(|&m| m < step.version) {
            return;
        }
        f.drained = step.version;
        if let Some(o) = self.out.as_mut() {
            o.handoff(&Handoff::Drained(step));
        }
    }

    pub(super) fn barrier_from(&mut self, producer: usize, id: u64) {
        if let Some(id) = self.frontier.barrier(producer, id) {
            if let Some(o) = self.out.as_mut() {
                o.barrier(id);
            }
            self.frontier.aligned_done();
        }
    }

    pub(super) fn flush_local(&mut self) {
        if let Some(o) = self.out.as_mut() {
            o.flush();
        }
    }

    /// Records of this worker for this worker, as one burst (ends it),
    /// with the keys they were routed by (a `Vec` of the key type, which
    /// the downstream operator may take) and their hashes.
    pub(super) fn push_local_burst(&mut self, recs: &mut Vec<(T, Meta)>, hashes: &[u64], keys: &mut dyn Any) {
        match self.out.as_mut() {
            Some(o) => o.push_burst_keyed(recs, hashes, keys),
            None => recs.clear(),
        }
    }

    pub(super) fn watermark_from(&mut self, producer: usize, wm: Timestamp) {
        if let Some(w) = self.frontier.advance(producer, wm) {
            if let Some(o) = self.out.as_mut() {
                o.watermark(w);
            }
        }
    }

    pub(super) fn finish_from(&mut self, producer: usize) {
        // An ended producer sends nothing more, by any assignment.
        if let Some(m) = self.handoff.as_mut().and_then(|f| f.markers.get_mut(producer)) {
            *m = u64::MAX;
        }
        self.watermark_from(producer, WATERMARK_END);
        let all = self.frontier.finish(producer);
        if let Some(id) = self.frontier.barrier_after_finish() {
            if let Some(o) = self.out.as_mut() {
                o.barrier(id);
            }
            self.frontier.aligned_done();
        }
        if all && !self.finished {
            self.finished = true;
            if let Some(o) = self.out.as_mut() {
                o.finish();
            }
        }
        self.check_drained();
    }
}

impl<T: Data> BatchInput for EdgeReceiver<T> {
    fn poke(&mut self) {
        self.check_drained();
        if let Some(o) = self.out.as_mut() {
            o.handoff(&Handoff::Poll);
        }
    }

    fn on_batch(&mut self, batch: &Batch, skip: usize) {
        let producer = batch.producer as usize;
        // The header's watermark was in force when every record of the batch
        // was pushed (see `Outbox::set_watermark`).
        self.watermark_from(producer, batch.watermark);
        if let Some(o) = self.out.as_mut() {
            let burst = &mut self.burst;
            burst.clear();
            burst.reserve(batch.count as usize);
            if batch.untrusted {
                // From another process: check every record before reading it.
                for (bytes, meta) in batch.records().skip(skip) {
                    match codec::decode_checked::<T>(bytes) {
                        Ok(rec) => burst.push((rec, meta)),
                        Err(e) => {
                            // None of the batch goes downstream.
                            burst.clear();
                            self.metrics.fail(format!(
                                "edge {}: a record from worker {producer} (batch {}) is not a valid record: {e}",
                                self.edge, batch.seq
                            ));
                            return;
                        }
                    }
                }
            } else if let Some(fixed) = batch.fixed_records::<T>(skip) {
                // Records of a fixed-layout type, all framed alike: read in
                // one pass, with no length to follow per record.
                // SAFETY: batches that are not `untrusted` were built by
                // `Batch::push::<T>` (or `push_run`) on this edge in this
                // process, so each record's bytes are one `T`'s.
                burst.extend(fixed.map(|(bytes, meta)| (unsafe { codec::decode::<T>(bytes) }, meta)));
            } else {
                for (bytes, meta) in batch.records().skip(skip) {
                    // SAFETY: batches that are not `untrusted` were built by
                    // `Batch::push::<T>` on this edge in this process, so
                    // each record's bytes are one archived `T`.
                    burst.push((unsafe { codec::decode::<T>(bytes) }, meta));
                }
            }
            o.push_burst(burst);
        }
        if let Some(id) = batch.barrier() {
            self.barrier_from(producer, id);
        }
        if let Some(version) = batch.handoff() {
            self.handoff_from(producer, version);
        }
        if batch.is_final() {
            self.finish_from(producer);
        }
    }
}
