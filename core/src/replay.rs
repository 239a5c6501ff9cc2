//! Live recovery's two halves on the data path (SEEP's R+SM, see
//! docs/ARCHITECTURE.md, decision 25): the *buffer state* an upstream keeps
//! per channel to another node, and the count a downstream keeps per
//! channel from another node.
//!
//! - [`ReplayLog`]: every batch sent on a channel to a worker of another
//!   node is kept after it went out (its header, and its records copied
//!   into the worker's [`LogStore`], whose chunks are reused) until the
//!   checkpoint whose barrier follows it is complete
//!   on every node; then it is trimmed. When that worker's node fails, its
//!   replacement restores the last complete checkpoint, and this side
//!   re-sends what followed that checkpoint's barrier. The logs are
//!   bounded per worker: while a worker's logs hold its limit, its sources
//!   produce no records (they still inject barriers, and everything downstream keeps
//!   flowing), so the checkpoint that trims it can complete. A worker
//!   whose logs stay full longer than a grace (no checkpoint is coming: a
//!   node already finished) gives them up: a later failure
//!   downstream of them is then recovered by rolling every node back,
//!   which needs no buffer.
//! - [`ReplayCursor`]: a receiver counts the records it took from each
//!   remote producer and where each checkpoint's barrier fell in that
//!   count. When the producer is replaced, the replacement's stream
//!   starts again at the last complete checkpoint's barrier: the receiver
//!   skips as many records as it had already taken past that barrier.
//!   Records are identified by their position in the producer's stream,
//!   so with deterministic operators (and a deterministic order of their
//!   inputs) every record affects the receiver exactly once.

use std::collections::VecDeque;

use crate::runtime::error::ReplayError;

use crate::batch::Batch;

/// Bytes a buffered batch counts for beyond its records (its header).
const BATCH_OVERHEAD: usize = 64;

/// Size of a chunk of a worker's [`LogStore`].
const CHUNK_BYTES: usize = 1 << 20;

/// Where a logged batch's records lie in a [`LogStore`].
#[derive(Clone, Copy, Debug)]
struct Span {
    chunk: u32,
    off: u32,
    len: u32,
}

/// A chunk of a [`LogStore`]: its bytes (never reallocated while in use)
/// and how many logged batches still lie in it.
#[derive(Debug)]
struct Chunk {
    data: Vec<u8>,
    live: u32,
}

/// The records of every batch a worker's replay logs hold, copied into
/// chunks of [`CHUNK_BYTES`] that are reused once every batch in them is
/// trimmed. *Why:* kept as the batches' own buffers, a second of output
/// lived in fresh allocations that the heap had to grow (and fault in) for
/// every interval; chunks reach the size of the largest backlog once, and
/// the sent batch's buffer goes back to its outbox while it is still in
/// cache. Memory held: the logs' peak, at most the worker's limit plus a
/// chunk.
#[derive(Debug, Default)]
pub(crate) struct LogStore {
    chunks: Vec<Chunk>,
    /// Chunks no batch lies in (not `current`).
    free: Vec<u32>,
    /// The chunk being filled.
    current: Option<u32>,
}

impl LogStore {
    /// Copies `bytes` in; where they lie.
    fn put(&mut self, bytes: &[u8]) -> Span {
        let len = bytes.len();
        let fits = |c: &Chunk| c.data.capacity() - c.data.len() >= len;
        let ci = match self.current {
            Some(ci) if fits(&self.chunks[ci as usize]) => ci,
            old => {
                if let Some(o) = old {
                    if self.chunks[o as usize].live == 0 {
                        self.free.push(o);
                    }
                }
                let ci = match self.free.pop() {
                    Some(ci) => {
                        let c = &mut self.chunks[ci as usize];
                        c.data.clear();
                        c.data.reserve_exact(len.max(CHUNK_BYTES));
                        ci
                    }
                    None => {
                        self.chunks.push(Chunk { data: Vec::with_capacity(len.max(CHUNK_BYTES)), live: 0 });
                        (self.chunks.len() - 1) as u32
                    }
                };
                self.current = Some(ci);
                ci
            }
        };
        let c = &mut self.chunks[ci as usize];
        let off = c.data.len();
        c.data.extend_from_slice(bytes);
        c.live += 1;
        Span { chunk: ci, off: off as u32, len: len as u32 }
    }

    /// The bytes at `s`.
    fn get(&self, s: Span) -> &[u8] {
        let (off, len) = (s.off as usize, s.len as usize);
        self.chunks.get(s.chunk as usize).and_then(|c| c.data.get(off..off + len)).unwrap_or(&[])
    }

    /// The batch at `s` is gone from its log.
    fn release(&mut self, s: Span) {
        if let Some(c) = self.chunks.get_mut(s.chunk as usize) {
            c.live -= 1;
            if c.live == 0 && self.current != Some(s.chunk) {
                self.free.push(s.chunk);
            }
        }
    }

    /// Bytes of the chunks (what the store holds, used or not).
    #[cfg(test)]
    fn capacity(&self) -> usize {
        self.chunks.iter().map(|c| c.data.capacity()).sum()
    }
}

/// A batch in a log: its header, and its records in the [`LogStore`].
#[derive(Debug)]
struct Logged {
    head: Batch,
    span: Span,
}

/// The batches sent on one channel since the last complete checkpoint.
#[derive(Debug)]
pub(crate) struct ReplayLog {
    batches: VecDeque<Logged>,
    bytes: usize,
    overflowed: bool,
}

impl ReplayLog {
    /// An empty log.
    pub(crate) fn new() -> Self {
        Self { batches: VecDeque::new(), bytes: 0, overflowed: false }
    }

    /// Stops buffering (the log stayed full and no checkpoint trimmed it):
    /// the channel can no longer be replayed.
    pub(crate) fn give_up(&mut self, store: &mut LogStore) {
        for l in self.batches.drain(..) {
            store.release(l.span);
        }
        self.bytes = 0;
        self.overflowed = true;
    }

    /// Keeps a copy of `b`, which was just sent.
    pub(crate) fn keep(&mut self, store: &mut LogStore, b: &Batch) {
        if !self.overflowed {
            self.bytes += b.data.len() + BATCH_OVERHEAD;
            self.batches.push_back(Logged { head: b.header(), span: store.put(&b.data) });
        }
    }

    /// Checkpoint `completed` is complete everywhere: drops every batch up
    /// to its barrier (and any earlier barrier's).
    pub(crate) fn trim(&mut self, store: &mut LogStore, completed: u64) {
        let Some(last) = self
            .batches
            .iter()
            .take_while(|l| l.head.barrier().is_none_or(|id| id <= completed))
            .enumerate()
            .filter(|(_, l)| l.head.barrier().is_some())
            .map(|(i, _)| i)
            .last()
        else {
            return;
        };
        for l in self.batches.drain(..=last) {
            self.bytes -= l.span.len as usize + BATCH_OVERHEAD;
            store.release(l.span);
        }
    }

    /// The batches a replacement restored at `checkpoint` (0: none, from
    /// the start) must get again: those after that checkpoint's barrier.
    /// The log is empty afterwards (the caller sends them again, which
    /// logs them again).
    pub(crate) fn take_after(
        &mut self,
        store: &mut LogStore,
        checkpoint: u64,
    ) -> Result<VecDeque<Batch>, ReplayError> {
        if self.overflowed {
            return Err(ReplayError::Overflowed);
        }
        let all = std::mem::take(&mut self.batches);
        self.bytes = 0;
        let from = match all.iter().position(|l| l.head.barrier() == Some(checkpoint)) {
            Some(at) => at + 1,
            None if checkpoint > 0
                && all.iter().any(|l| l.head.barrier().is_some_and(|id| id < checkpoint)) =>
            {
                // Trimming stops at a complete checkpoint's barrier: an older
                // barrier still here means that checkpoint's went missing.
                for l in all {
                    store.release(l.span);
                }
                return Err(ReplayError::TooShort { checkpoint });
            }
            None => 0,
        };
        let mut again = VecDeque::with_capacity(all.len() - from);
        for (i, l) in all.into_iter().enumerate() {
            if i >= from {
                let mut b = l.head;
                b.data = store.get(l.span).to_vec();
                again.push_back(b);
            }
            store.release(l.span);
        }
        Ok(again)
    }

    /// Bytes buffered (what counts against the worker's limit).
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }
}

/// What a worker took from one remote producer on one edge.
#[derive(Debug, Default)]
pub(crate) struct ReplayCursor {
    /// Records of the producer's stream taken (or skipped) so far.
    taken: u64,
    /// Records before this position were taken already: skip them.
    skip_until: u64,
    /// `(checkpoint, position)` of each barrier since the last complete
    /// checkpoint (that one included).
    marks: VecDeque<(u64, u64)>,
}

impl ReplayCursor {
    /// The count of a worker restored from `checkpoint` (0: none, from the
    /// start), whose state held `ahead` records of this producer's stream
    /// beyond its barrier (see `Manifest::ahead`): the stream starts right
    /// after that barrier — position 0 of this count, so the producer can
    /// be restarted at that checkpoint again — and its first `ahead`
    /// records are skipped.
    pub(crate) fn resuming(checkpoint: u64, ahead: u64) -> Self {
        let marks = (checkpoint > 0).then_some((checkpoint, 0)).into_iter().collect();
        Self { taken: 0, skip_until: ahead, marks }
    }

    /// Records this side's state holds beyond what it has taken: those of
    /// a replay it is still skipping. At a barrier, what the receiver's
    /// checkpoint holds beyond it.
    pub(crate) fn ahead(&self) -> u64 {
        self.skip_until.saturating_sub(self.taken)
    }

    /// Batch `b` arrived (`aborted`: the highest void checkpoint); returns
    /// how many of its first records were already taken.
    pub(crate) fn arrive(&mut self, b: &Batch, aborted: u64) -> usize {
        let start = self.taken;
        self.taken += u64::from(b.count);
        if let Some(id) = b.barrier() {
            if id > aborted {
                self.marks.push_back((id, self.taken));
            }
        }
        self.skip_until.saturating_sub(start).min(u64::from(b.count)) as usize
    }

    /// Checkpoint `completed` is complete everywhere: forgets older marks.
    pub(crate) fn trim(&mut self, completed: u64) {
        while self.marks.front().is_some_and(|&(id, _)| id < completed) {
            self.marks.pop_front();
        }
    }

    /// The producer was replaced by one restored at `checkpoint` (0: from
    /// the start), whose stream resumes right after that checkpoint's
    /// barrier. `ended`: this side had taken the producer's last batch.
    pub(crate) fn restart(&mut self, checkpoint: u64, ended: bool) -> Result<(), ReplayError> {
        let at = if checkpoint == 0 {
            0
        } else if let Some(&(_, pos)) = self.marks.iter().find(|&&(id, _)| id == checkpoint) {
            pos
        } else if ended {
            // The stream had ended before the checkpoint: all of it is
            // covered.
            self.taken
        } else {
            return Err(ReplayError::NoBarrier { checkpoint });
        };
        if !crate::sabotage::on(crate::sabotage::Bug::NoSkipOnReplay) {
            self.skip_until = self.skip_until.max(self.taken);
        }
        self.taken = at;
        self.marks.retain(|&(id, _)| id <= checkpoint);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::{Meta, FLAG_BARRIER};

    fn records(n: u64) -> Batch {
        let mut b = Batch::with_capacity(0, 1, 64);
        for i in 0..n {
            assert!(b.push(&i, Meta { ingest_ns: 0 }).is_ok());
        }
        b
    }

    fn barrier(id: u64) -> Batch {
        let mut b = Batch::with_capacity(0, 1, 0);
        b.flags = FLAG_BARRIER;
        b.barrier = id;
        b
    }

    fn counts(q: &VecDeque<Batch>) -> Vec<(u32, Option<u64>)> {
        q.iter().map(|b| (b.count, b.barrier())).collect()
    }

    /// The records of a batch, decoded.
    fn values(b: &Batch) -> Vec<u64> {
        b.records()
            .map(|(bytes, _)| spate_state::codec::decode_checked::<u64>(bytes).unwrap_or(u64::MAX))
            .collect()
    }

    #[test]
    fn the_log_keeps_what_follows_the_last_complete_checkpoint() {
        let mut store = LogStore::default();
        let mut log = ReplayLog::new();
        for b in [records(1), barrier(1), records(2), barrier(2), records(3)] {
            log.keep(&mut store, &b);
        }
        log.trim(&mut store, 1);
        let after = log.take_after(&mut store, 1).unwrap_or_default();
        assert_eq!(counts(&after), vec![(2, None), (0, Some(2)), (3, None)]);
        assert_eq!(values(&after[2]), vec![0, 1, 2], "the records come back as they were sent");
        assert_eq!(log.bytes(), 0);

        // Restored at 2, not yet trimmed there: only what follows 2.
        let mut log = ReplayLog::new();
        for b in [records(1), barrier(1), records(2), barrier(2), records(3)] {
            log.keep(&mut store, &b);
        }
        log.trim(&mut store, 1);
        assert_eq!(counts(&log.take_after(&mut store, 2).unwrap_or_default()), vec![(3, None)]);

        // Nothing complete yet: everything.
        let mut log = ReplayLog::new();
        log.keep(&mut store, &records(4));
        log.keep(&mut store, &barrier(1));
        assert_eq!(counts(&log.take_after(&mut store, 0).unwrap_or_default()), vec![(4, None), (0, Some(1))]);
    }

    #[test]
    fn a_log_counts_its_bytes_until_trimmed_and_can_give_up() {
        let mut store = LogStore::default();
        let mut log = ReplayLog::new();
        log.keep(&mut store, &records(1));
        let one = log.bytes();
        assert!(one > 0);
        log.keep(&mut store, &records(4));
        log.keep(&mut store, &barrier(3));
        assert!(log.bytes() > 2 * one);
        log.trim(&mut store, 3);
        assert_eq!(log.bytes(), 0, "trimmed: room again");
        log.keep(&mut store, &records(9));
        assert!(log.bytes() > 0);
        log.give_up(&mut store);
        assert_eq!(log.bytes(), 0, "a log that gave up holds nothing");
        log.keep(&mut store, &records(9));
        assert_eq!(log.bytes(), 0);
        let e = log.take_after(&mut store, 3).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("overflowed"), "{e}");
    }

    #[test]
    fn trimmed_chunks_are_reused_and_shared_logs_keep_their_records() {
        let mut store = LogStore::default();
        let (mut a, mut b) = (ReplayLog::new(), ReplayLog::new());
        // Two channels of one worker, interleaved, several chunks' worth
        // per checkpoint interval.
        let big = records(20_000);
        let per_interval = 3 * CHUNK_BYTES / big.data.len() + 1;
        for id in 1..=20u64 {
            for _ in 0..per_interval {
                a.keep(&mut store, &big);
                b.keep(&mut store, &records(3));
            }
            a.keep(&mut store, &barrier(id));
            b.keep(&mut store, &barrier(id));
            if id > 1 {
                // The previous checkpoint completes one interval later.
                a.trim(&mut store, id - 1);
                b.trim(&mut store, id - 1);
            }
        }
        assert!(
            store.capacity() <= 10 * CHUNK_BYTES,
            "20 intervals of about 3 chunks each, at most two intervals live: chunks are reused ({} bytes held)",
            store.capacity()
        );
        let again = a.take_after(&mut store, 19).unwrap_or_default();
        assert_eq!(again.len(), per_interval + 1);
        assert!(again.iter().take(per_interval).all(|x| values(x) == values(&big)));
        let again = b.take_after(&mut store, 19).unwrap_or_default();
        assert!(again.iter().take(per_interval).all(|x| values(x) == vec![0, 1, 2]));
        assert!(store.chunks.iter().all(|c| c.live == 0), "every batch released");
    }

    #[test]
    fn a_cursor_skips_exactly_what_was_taken_after_the_checkpoint() {
        let mut c = ReplayCursor::default();
        assert_eq!(c.arrive(&records(5), 0), 0);
        assert_eq!(c.arrive(&barrier(1), 0), 0);
        assert_eq!(c.arrive(&records(4), 0), 0);
        assert_eq!(c.arrive(&barrier(2), 0), 0); // voided below
        assert_eq!(c.arrive(&records(3), 0), 0);
        c.trim(1);
        // The producer is replaced, restored at 1: 7 records followed it.
        assert!(c.restart(1, false).is_ok());
        // Its new stream re-sends them in other batches.
        assert_eq!(c.arrive(&records(2), 2), 2);
        assert_eq!(c.arrive(&barrier(2), 2), 0); // void: no mark
        assert_eq!(c.arrive(&records(4), 2), 4);
        assert_eq!(c.arrive(&records(3), 2), 1, "one old, two new");
        assert_eq!(c.arrive(&records(3), 2), 0);
        // A restart without the checkpoint's mark is an error.
        assert!(c.restart(9, false).is_err());
        assert!(c.restart(9, true).is_ok(), "unless the stream had ended");
    }

    #[test]
    fn a_barrier_inside_the_skipped_replay_says_how_far_ahead_the_state_is() {
        // Taken 10 records past checkpoint 1's barrier, then the producer
        // is replaced (restored at 1).
        let mut c = ReplayCursor::default();
        c.arrive(&records(5), 0);
        c.arrive(&barrier(1), 0);
        c.arrive(&records(10), 0);
        assert_eq!(c.ahead(), 0);
        assert!(c.restart(1, false).is_ok());
        assert_eq!(c.ahead(), 10);
        // The replacement injects checkpoint 2's barrier 4 records into its
        // replay: a checkpoint of this side holds 6 records beyond it.
        assert_eq!(c.arrive(&records(4), 0), 4);
        assert_eq!(c.arrive(&barrier(2), 0), 0);
        assert_eq!(c.ahead(), 6);
        // A worker restored from that checkpoint starts 6 ahead: of the
        // stream replayed from barrier 2, it skips exactly those.
        let mut r = ReplayCursor::resuming(2, 6);
        assert_eq!(r.arrive(&records(4), 0), 4);
        assert_eq!(r.arrive(&records(4), 0), 2, "two already held, two new");
        assert_eq!(r.ahead(), 0);
        // The original side agrees: past the skip, both take the same.
        assert_eq!(c.arrive(&records(8), 0), 6);
        assert_eq!(c.ahead(), 0);
        // The producer is replaced again, at the checkpoint `r` was
        // restored from (no barrier of it arrives: the stream began after
        // it): everything `r` took is skipped.
        assert!(r.restart(2, false).is_ok());
        assert_eq!(r.arrive(&records(10), 0), 8);
    }
}
