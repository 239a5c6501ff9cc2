//! The sending side's batching: an [`Outbox`] holds the batches one worker
//! has for one destination on one edge, closing the open batch on size
//! (`batch_records`, `batch_bytes`), on linger, on a watermark advance, on a
//! barrier and at the end of the stream, and recycling sent buffers.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;

use spate_state::codec;

use crate::batch::{Batch, Meta, FLAG_BARRIER, FLAG_FINAL};
use crate::data::Data;
use crate::time::{now_ns, Timestamp, WATERMARK_END};

/// The batches one worker has for one destination on one edge.
pub struct Outbox {
    touched: bool,
    touch_list: TouchList,
    edge: u32,
    dest: u32,
    producer: u32,
    pub(super) current: Batch,
    opened_ns: u64,
    pub(super) ready: VecDeque<Batch>,
    next_seq: u64,
    watermark: Timestamp,
    watermark_pending: bool,
    final_pending: bool,
    final_sent: bool,
    batch_records: u32,
    batch_bytes: usize,
    /// The buffer of a batch that was sent (copied out), for the next one.
    spare: Option<Vec<u8>>,
}

impl Outbox {
    pub(crate) fn new(
        edge: u32,
        producer: u32,
        dest: u32,
        touch_list: TouchList,
        batch_records: usize,
        batch_bytes: usize,
    ) -> Self {
        Self {
            touched: false,
            touch_list,
            edge,
            dest,
            producer,
            current: Batch::with_capacity(edge, producer, 0),
            opened_ns: 0,
            ready: VecDeque::new(),
            next_seq: 1,
            watermark: 0,
            watermark_pending: false,
            final_pending: false,
            final_sent: false,
            batch_records: batch_records.max(1) as u32,
            batch_bytes,
            spare: None,
        }
    }

    /// Puts this outbox on the worker's list of outboxes with work to send,
    /// once: the task whose step touched it flushes it.
    #[inline]
    fn touch(&mut self) {
        if !self.touched {
            self.touched = true;
            self.touch_list.borrow_mut().push((self.edge, self.dest));
        }
    }

    /// Takes the outbox off the touched list (its flusher is about to run).
    pub(crate) fn untouch(&mut self) {
        self.touched = false;
    }

    #[inline(always)]
    pub(super) fn push<T: Data>(&mut self, rec: &T, meta: Meta) -> Result<(), codec::CodecError> {
        self.open();
        self.current.push(rec, meta)?;
        self.close_if_full();
        Ok(())
    }

    /// Before a record goes into the open batch: an empty one opens now
    /// (its linger starts) and is put on the list to flush.
    #[inline(always)]
    fn open(&mut self) {
        if self.current.count == 0 {
            self.opened_ns = now_ns();
            self.touch();
        }
    }

    /// After records went into the open batch: it closes once it holds
    /// `batch_records` records, or `batch_bytes` bytes or more.
    #[inline(always)]
    fn close_if_full(&mut self) {
        if self.current.count >= self.batch_records || self.current.data.len() >= self.batch_bytes {
            self.close(0);
        }
    }

    /// Appends `recs`, closing batches where [`Outbox::push`] of one after
    /// the other would: each batch's share of the run is framed in one
    /// [`Batch::push_run`].
    pub(super) fn push_run<T: Data>(&mut self, mut recs: &[(T, Meta)]) -> Result<(), codec::CodecError> {
        let Some(len) = codec::fixed_size::<T>() else {
            for (rec, meta) in recs {
                self.push(rec, *meta)?;
            }
            return Ok(());
        };
        while !recs.is_empty() {
            self.open();
            // How many more records the open batch takes before
            // `close_if_full` closes it.
            let by_count = self.batch_records.saturating_sub(self.current.count).max(1) as usize;
            let by_bytes = self.current.fixed_records_until(len, self.batch_bytes);
            let (now, rest) = recs.split_at(recs.len().min(by_count).min(by_bytes));
            self.current.push_run(now)?;
            recs = rest;
            self.close_if_full();
        }
        Ok(())
    }

    /// Closes the open batch during a step: the step's flush sends it.
    fn close(&mut self, flags: u32) {
        self.seal(flags);
        self.touch();
    }

    /// Closes the open batch onto the queue of batches to send.
    pub(super) fn seal(&mut self, flags: u32) {
        // The next batch starts in the buffer of one already sent to
        // another process (`recycle`: still in cache), else in a new one
        // half again the size the last batch reached, so a steady stream
        // allocates one buffer per batch that batches of about the same
        // size never outgrow (growing one copies it: batches closed per
        // source step vary in size from step to step), and tiny
        // low-latency batches stay small.
        let len = self.current.data.len();
        let hint = (len + len / 2).min(self.batch_bytes + 256);
        let mut next = Batch::with_capacity(self.edge, self.producer, 0);
        match self.spare.take() {
            // One too small would be grown by `realloc`, which copies it
            // whole: it is dropped instead (keeping such buffers, ×0.989).
            Some(data) if data.capacity() >= hint => next.data = data,
            _ => next.data.reserve_exact(hint),
        }
        let mut b = std::mem::replace(&mut self.current, next);
        b.seq = self.next_seq;
        self.next_seq += 1;
        b.watermark = self.watermark;
        b.flags = flags;
        self.watermark_pending = false;
        self.ready.push_back(b);
    }

    /// The next batch to send, if any: closed batches first, then a partly
    /// filled batch whose linger (`linger_ns`) has passed at `now` (linger 0
    /// closes any), then the end of the stream; a batch that carries only a
    /// watermark advance goes only when `watermark_only` (the ticker's
    /// flush), so a fast source stepping a record at a time does not send an
    /// empty batch per step.
    pub(crate) fn take_next(&mut self, linger_ns: u64, now: u64, watermark_only: bool) -> Option<Batch> {
        if let Some(b) = self.ready.pop_front() {
            return Some(b);
        }
        if self.final_sent {
            return None;
        }
        // The caller is sending: what closes here needs no touch.
        if self.final_pending {
            self.seal(FLAG_FINAL);
            self.final_sent = true;
        } else if self.current.count > 0 {
            if now.saturating_sub(self.opened_ns) >= linger_ns {
                self.seal(0);
            }
        } else if self.watermark_pending && watermark_only {
            self.seal(0);
        }
        self.ready.pop_front()
    }

    /// Returns a batch that could not be sent to the front of the queue.
    pub(crate) fn put_back(&mut self, b: Batch) {
        self.ready.push_front(b);
    }

    /// `b` was sent (copied out), or came in from the worker this outbox
    /// sends to and was read: its buffer serves the next batch, unless the
    /// spare kept is larger.
    pub(crate) fn recycle(&mut self, b: Batch) {
        let mut data = b.data;
        data.clear();
        if data.capacity() > 0 && self.spare.as_ref().is_none_or(|s| s.capacity() < data.capacity()) {
            self.spare = Some(data);
        }
    }

    /// Queues `replay` (batches sent before, in order) ahead of every
    /// batch not sent yet: a re-linked receiver gets them again.
    pub(crate) fn replay(&mut self, replay: impl DoubleEndedIterator<Item = Batch>) {
        for b in replay.rev() {
            self.ready.push_front(b);
        }
    }

    /// Whether a partly filled batch is waiting for its linger.
    pub(crate) fn has_open(&self) -> bool {
        self.current.count > 0 || (self.final_pending && !self.final_sent) || self.watermark_pending
    }

    pub(super) fn set_watermark(&mut self, wm: Timestamp) {
        if wm > self.watermark {
            // Records already in the open batch were sent under the old
            // watermark: close it, so every batch's records were all pushed
            // under the watermark its header carries, and the receiver can
            // apply that watermark *before* the records — exactly what the
            // local (unencoded) path does. Late records are then late the
            // same way whichever worker owns their key.
            if self.current.count > 0 {
                self.close(0);
            }
            self.watermark = wm;
            self.watermark_pending = true;
            self.touch();
        }
    }

    /// Checkpoint barrier `id`: closes the open batch, then queues an
    /// empty barrier batch behind it.
    pub(super) fn set_barrier(&mut self, id: u64) {
        if self.final_sent {
            return;
        }
        if self.current.count > 0 {
            self.close(0);
        }
        self.current.barrier = id;
        self.close(FLAG_BARRIER);
    }

    /// A handoff marker of assignment `version` after the records so far
    /// (see `crate::handoff`).
    pub(super) fn set_handoff(&mut self, version: u64) {
        if self.final_sent {
            return;
        }
        if self.current.count > 0 {
            self.close(0);
        }
        self.current.barrier = version;
        self.close(crate::batch::FLAG_HANDOFF);
    }

    pub(super) fn set_final(&mut self) {
        self.set_watermark(WATERMARK_END);
        self.final_pending = true;
        self.touch();
    }
}

/// The (edge, destination) outboxes of a worker that steps have given work
/// since their last flush.
pub(crate) type TouchList = Rc<RefCell<Vec<(u32, u32)>>>;
