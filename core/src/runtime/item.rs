//! A worker's work items ([`Item`]): its source instances, the inputs it
//! receives batches on (a ring or a link's channel, with — under live
//! recovery — the count of what it took from each remote producer), and
//! its links; and one *step* of each, where barriers are injected (at a
//! source) and aligned (at an input: a later batch waits while the
//! worker aligns the barrier it passed).

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::Ordering;

use crate::checkpoint::Checkpointer;
use crate::exchange::BatchInput;
use crate::limits::BATCHES_PER_VISIT;
use crate::link::netlink::NetLink;
use crate::link::route::Rx;
use crate::link::Conn;
use crate::metrics::JobMetrics;
use crate::push::BarrierTracker;
use crate::replay::ReplayCursor;
use crate::runtime::error::WorkerError;
use crate::runtime::flusher::Flusher;
use crate::source::{SourceStatus, SourceTask};

/// What a worker runs: a source instance or the receiving end of a ring.
pub(crate) enum Work<C> {
    Source(SourceTask),
    Input {
        edge: usize,
        /// The producing worker.
        producer: usize,
        rx: Rx<C>,
        input: Rc<RefCell<dyn BatchInput>>,
        /// With live recovery, from a worker of another node: what was
        /// taken from it.
        cursor: Option<(usize, ReplayCursor)>,
    },
    /// A connection to a remote worker: moves its bytes and frames.
    Net(Rc<RefCell<NetLink<C>>>),
}

/// One work item and the outboxes its last step could not flush.
pub(crate) struct Item<C> {
    pub(crate) work: Work<C>,
    pub(crate) done: bool,
    pub(crate) waiting: Vec<(u32, u32)>,
    /// The last checkpoint barrier this item passed (a source injected it,
    /// or the producer of this ring sent it).
    pub(crate) passed: u64,
    /// Records it produced (a source) or took (an input) since the last
    /// load report.
    pub(crate) records: u64,
}

/// A worker's checkpointing state.
pub(crate) struct Ckpt {
    pub(crate) checkpointer: Option<Rc<Checkpointer>>,
    pub(crate) barriers: Rc<BarrierTracker>,
    /// When worker 0 requests the next checkpoint.
    pub(crate) next_ns: u64,
}

impl Ckpt {
    /// Voids the alignments of checkpoints the coordinator aborted.
    pub(crate) fn sync_abort(&self) {
        if let Some(c) = &self.checkpointer {
            let a = c.coordinator().aborted();
            if a > self.barriers.aborted() {
                self.barriers.abort_through(a);
            }
        }
    }

    /// Whether an item that passed a barrier must wait: an alignment is in
    /// progress on this worker, and the item's records from after the
    /// barrier could reach an instance that has not aligned it yet.
    pub(crate) fn holds<C>(&self, item: &Item<C>) -> bool {
        self.barriers.holds(item.passed)
    }
}

impl<C: Conn> Item<C> {
    /// Whether an outbox this item wrote to is still backed up.
    pub(crate) fn is_blocked(&mut self, flusher: &Flusher<C>) -> bool {
        if self.waiting.is_empty() {
            return false;
        }
        self.waiting.retain(|&(e, d)| flusher.is_backed_up(e, d));
        !self.waiting.is_empty()
    }

    /// What the item is and where it stands, for `SPATE_DEBUG`.
    pub(crate) fn describe(&self) -> String {
        let what = match &self.work {
            Work::Net(l) => format!("net to worker {}", l.borrow().remote),
            Work::Source(t) => t.name.clone(),
            Work::Input { edge, .. } => format!("edge {edge}"),
        };
        let state = if self.done {
            "done"
        } else if self.waiting.is_empty() {
            "ready"
        } else {
            "blocked"
        };
        format!("{what}: {state}")
    }

    /// Runs one step; whether it did anything.
    pub(crate) fn step(
        &mut self,
        flusher: &mut Flusher<C>,
        metrics: &JobMetrics,
        ckpt: &Ckpt,
        step_records: usize,
    ) -> Result<bool, WorkerError> {
        let (progress, force) = match &mut self.work {
            Work::Net(link) => {
                let mut l = link.borrow_mut();
                let moved = l.poll(crate::time::now())?;
                self.done = l.is_done();
                // Received batches are taken by their input items.
                return Ok(moved);
            }
            Work::Source(t) => {
                if let Some(c) = &ckpt.checkpointer {
                    let requested = c.coordinator().requested();
                    let behind = self.passed.max(c.coordinator().completed()).max(c.coordinator().aborted());
                    if requested > behind {
                        // Inject the next barrier before any later record.
                        // Checkpoints are requested one at a time, so the
                        // source is exactly one behind (a cluster's ids may
                        // skip those of a rolled-back attempt).
                        let id = requested;
                        t.runner.barrier(id);
                        self.passed = id;
                        for p in t.runner.partitions() {
                            let offset = t.runner.offset(p).unwrap_or(0);
                            c.source_reported(id, &t.name, p, offset)?;
                        }
                        flusher.flush_touched(true, &mut self.waiting)?;
                        return Ok(true);
                    }
                }
                if flusher.throttled {
                    // A replay buffer is full: no new records until a
                    // checkpoint trims it (barriers above still go).
                    return Ok(false);
                }
                let step = t.runner.step(step_records);
                metrics.records_in.fetch_add(step.emitted as u64, Ordering::Relaxed);
                self.records += step.emitted as u64;
                let done = step.status == SourceStatus::Done;
                if done {
                    if let Some(c) = &ckpt.checkpointer {
                        c.coordinator().stop();
                    }
                }
                self.done = done;
                (step.emitted > 0 || done, done)
            }
            Work::Input { edge, rx, input, cursor, .. } => {
                let aborted = ckpt.barriers.aborted();
                let mut got = false;
                for _ in 0..BATCHES_PER_VISIT {
                    let Some(batch) = rx.try_pop() else {
                        if !got && rx.is_finished() {
                            return Err(WorkerError::Unended { edge: *edge });
                        }
                        break;
                    };
                    got = true;
                    self.records += u64::from(batch.count);
                    let mut skip = 0;
                    if let Some((producer, c)) = cursor.as_mut() {
                        skip = c.arrive(&batch, aborted);
                        let ahead = c.ahead();
                        if ahead > 0 {
                            // Noted before the barrier goes downstream, so
                            // before any instance there can report it.
                            if let (Some(id), Some(k)) = (batch.barrier(), &ckpt.checkpointer) {
                                if id > aborted {
                                    k.note_ahead(id, *edge, *producer, ahead);
                                }
                            }
                        } else if matches!(rx, Rx::Ring(_)) {
                            // A restored skip on a ring is done (rings are
                            // never re-linked: no count is needed).
                            *cursor = None;
                        }
                    }
                    input.borrow_mut().on_batch(&batch, skip);
                    if batch.is_final() {
                        self.done = true;
                        break;
                    }
                    if let Some(id) = batch.barrier().filter(|&id| id > aborted) {
                        // Later batches from this producer wait for the
                        // alignment (see `Ckpt::holds`).
                        self.passed = id;
                        break;
                    }
                    flusher.recycle_received(*edge as u32, batch.producer, batch);
                    // With linger 0 every batch's results go out at once.
                    if flusher.linger_ns == 0 {
                        break;
                    }
                }
                (got, false)
            }
        };
        if progress {
            flusher.flush_touched(force, &mut self.waiting)?;
        }
        Ok(progress)
    }
}
