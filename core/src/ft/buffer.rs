//! Buffer state: an output channel's batches kept until a downstream
//! checkpoint covers them, and the receiver's duplicate filter.
//!
//! The producer side, [`OutputBuffer`], numbers batches `1, 2, 3, …` and keeps
//! each until [`trim`](OutputBuffer::trim) says the downstream instance's
//! checkpoint that covers it has been acknowledged by all its backups (and
//! recorded by the coordinator). After a failure downstream,
//! [`replay_after`](OutputBuffer::replay_after) hands the replacement
//! everything after the sequence number its checkpoint recorded. The buffer
//! is bounded in batches and in bytes; a full buffer refuses
//! [`push`](OutputBuffer::push) with [`PushError::Full`] and the producer must
//! throttle (stop consuming its own input) until a trim makes room: dropping
//! would break exactly-once.
//!
//! The receiver side, [`InputDedup`], keeps the last consumed sequence number
//! of one input channel. A batch at or below it is a duplicate (a replay or a
//! retransmission) and is dropped; the next one is delivered.
//!
//! **Gaps are refused, not held.** A batch beyond the next expected one is
//! answered with [`SeqGap`] and not consumed; the caller drops it and lets
//! the sender go back to `last_consumed + 1`. Holding out-of-order batches
//! would need memory without a bound, and over per-connection FIFO transport
//! (TCP) a gap only happens after a connection was lost, when the sender
//! rewinds and retransmits anyway.
//!
//! ```
//! use spate_core::ft::buffer::{BufferLimits, InputDedup, Offer, OutputBuffer};
//!
//! let mut out = OutputBuffer::new(BufferLimits { batches_max: 4, bytes_max: 1 << 20 });
//! for word in ["a", "b", "c"] {
//!     out.push(word, word.len()).unwrap();
//! }
//! // The downstream checkpoint covering batch 1 is acknowledged: trim.
//! out.trim(1).unwrap();
//! // A replacement restored that checkpoint: replay what follows it.
//! let replay: Vec<_> = out.replay_after(1).unwrap().map(|(seq, w)| (seq, *w)).collect();
//! assert_eq!(replay, vec![(2, "b"), (3, "c")]);
//!
//! let mut input = InputDedup::starting_after(1);
//! assert_eq!(input.offer(2), Ok(Offer::Deliver));
//! assert_eq!(input.offer(2), Ok(Offer::Duplicate));
//! assert!(input.offer(4).is_err()); // a gap: batch 3 is missing
//! ```

use std::collections::VecDeque;
use std::fmt;

use super::Seq;

/// The bounds of one output buffer. Both are hard limits: a push that would
/// exceed either is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BufferLimits {
    /// Most batches held (pushed and not yet trimmed).
    pub batches_max: usize,
    /// Most bytes held, as reported by the caller for each batch.
    pub bytes_max: usize,
}

/// Why a batch was not buffered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PushError {
    /// The buffer is at its limit; the producer must wait for a trim.
    Full {
        /// Batches held now.
        batches: usize,
        /// Bytes held now.
        bytes: usize,
        /// The limits that would be exceeded.
        limits: BufferLimits,
    },
    /// The batch alone is larger than `bytes_max`, so it can never be
    /// buffered: a configuration error.
    TooLarge {
        /// Size of the batch.
        bytes: usize,
        /// The buffer's byte limit.
        bytes_max: usize,
    },
}

impl fmt::Display for PushError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Full { batches, bytes, limits } => write!(
                f,
                "output buffer full: {batches}/{} batches, {bytes}/{} bytes",
                limits.batches_max, limits.bytes_max
            ),
            Self::TooLarge { bytes, bytes_max } => {
                write!(f, "batch of {bytes} bytes exceeds the buffer's {bytes_max} bytes")
            }
        }
    }
}

impl std::error::Error for PushError {}

/// A trim past the last pushed batch: a downstream claims to have
/// checkpointed a batch that was never produced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TrimBeyondEnd {
    /// The requested trim point.
    pub upto: Seq,
    /// The last sequence number pushed.
    pub last: Seq,
}

impl fmt::Display for TrimBeyondEnd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "trim up to {} but the last batch pushed is {}", self.upto, self.last)
    }
}

impl std::error::Error for TrimBeyondEnd {}

/// A replay that asks for batches already trimmed: the protocol promised
/// they would never be needed again, so this is a violation upstream of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplayTrimmed {
    /// The replay was asked for batches after this one.
    pub after: Seq,
    /// Batches up to this one are gone.
    pub trimmed_upto: Seq,
}

impl fmt::Display for ReplayTrimmed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "replay after {} asked, but batches up to {} are trimmed", self.after, self.trimmed_upto)
    }
}

impl std::error::Error for ReplayTrimmed {}

#[derive(Clone, Debug)]
struct Entry<T> {
    batch: T,
    bytes: usize,
}

/// One output channel's buffer state: batches with consecutive sequence
/// numbers, kept until trimmed. Every operation is O(1) amortized except
/// `trim`, which is linear in the batches it drops.
#[derive(Clone, Debug)]
pub struct OutputBuffer<T> {
    limits: BufferLimits,
    /// Held batches; `entries[i]` has sequence number `trimmed_upto + 1 + i`.
    entries: VecDeque<Entry<T>>,
    trimmed_upto: Seq,
    bytes: usize,
}

impl<T> OutputBuffer<T> {
    /// An empty buffer whose first batch will be number 1.
    pub fn new(limits: BufferLimits) -> Self {
        Self::starting_after(limits, 0)
    }

    /// An empty buffer that continues a sequence: its first batch will be
    /// `seq + 1`, and everything up to `seq` counts as trimmed. Used when a
    /// restored instance rebuilds its buffer from a checkpoint, or when a
    /// channel inherits the numbering of the one it replaces.
    pub fn starting_after(limits: BufferLimits, seq: Seq) -> Self {
        Self { limits, entries: VecDeque::new(), trimmed_upto: seq, bytes: 0 }
    }

    /// Buffers `batch` (of `bytes` bytes) and returns its sequence number, or
    /// refuses it when a limit would be exceeded.
    pub fn push(&mut self, batch: T, bytes: usize) -> Result<Seq, PushError> {
        if bytes > self.limits.bytes_max {
            return Err(PushError::TooLarge { bytes, bytes_max: self.limits.bytes_max });
        }
        if !self.has_room(bytes) {
            return Err(PushError::Full {
                batches: self.entries.len(),
                bytes: self.bytes,
                limits: self.limits,
            });
        }
        self.entries.push_back(Entry { batch, bytes });
        self.bytes += bytes;
        Ok(self.last_seq())
    }

    /// Whether a batch of `bytes` bytes would be accepted now.
    pub fn has_room(&self, bytes: usize) -> bool {
        self.entries.len() < self.limits.batches_max && self.bytes + bytes <= self.limits.bytes_max
    }

    /// Drops every batch up to and including `upto`; returns how many were
    /// dropped. Trimming is monotone and idempotent: a trim at or below the
    /// current trim point does nothing.
    pub fn trim(&mut self, upto: Seq) -> Result<usize, TrimBeyondEnd> {
        if upto > self.last_seq() {
            return Err(TrimBeyondEnd { upto, last: self.last_seq() });
        }
        let mut dropped = 0;
        while self.trimmed_upto < upto {
            match self.entries.pop_front() {
                Some(entry) => {
                    self.bytes -= entry.bytes;
                    self.trimmed_upto += 1;
                    dropped += 1;
                }
                None => break,
            }
        }
        debug_assert!(self.trimmed_upto >= upto);
        Ok(dropped)
    }

    /// The batches after `after`, in order, with their sequence numbers.
    /// Asking past the last batch yields nothing; asking for trimmed batches
    /// is an error.
    pub fn replay_after(&self, after: Seq) -> Result<Replay<'_, T>, ReplayTrimmed> {
        if after < self.trimmed_upto {
            return Err(ReplayTrimmed { after, trimmed_upto: self.trimmed_upto });
        }
        let skip = usize::try_from(after - self.trimmed_upto).unwrap_or(usize::MAX).min(self.entries.len());
        Ok(Replay { next_seq: after.max(self.trimmed_upto) + 1, inner: self.entries.range(skip..) })
    }

    /// The batch numbered `seq`, if it is held.
    pub fn get(&self, seq: Seq) -> Option<&T> {
        let index = seq.checked_sub(self.trimmed_upto + 1)?;
        self.entries.get(usize::try_from(index).ok()?).map(|e| &e.batch)
    }

    /// Every held batch, oldest first.
    pub fn iter(&self) -> Replay<'_, T> {
        Replay { next_seq: self.trimmed_upto + 1, inner: self.entries.range(..) }
    }

    /// The sequence number the next pushed batch will get.
    pub fn next_seq(&self) -> Seq {
        self.last_seq() + 1
    }

    /// The sequence number of the last pushed batch (0 if none ever).
    pub fn last_seq(&self) -> Seq {
        self.trimmed_upto + self.entries.len() as Seq
    }

    /// Batches up to this one have been trimmed.
    pub fn trimmed_upto(&self) -> Seq {
        self.trimmed_upto
    }

    /// Batches held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no batch is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The buffer's limits.
    pub fn limits(&self) -> BufferLimits {
        self.limits
    }
}

/// Iterator over buffered batches with their sequence numbers, from
/// [`OutputBuffer::replay_after`] or [`OutputBuffer::iter`].
pub struct Replay<'a, T> {
    next_seq: Seq,
    inner: std::collections::vec_deque::Iter<'a, Entry<T>>,
}

impl<'a, T> Iterator for Replay<'a, T> {
    type Item = (Seq, &'a T);

    fn next(&mut self) -> Option<Self::Item> {
        let entry = self.inner.next()?;
        let seq = self.next_seq;
        self.next_seq += 1;
        Some((seq, &entry.batch))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.inner.size_hint()
    }
}

impl<T> ExactSizeIterator for Replay<'_, T> {}

/// What to do with an offered batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Offer {
    /// The next batch in order: consume it (it is now counted as consumed).
    Deliver,
    /// Already consumed: drop it.
    Duplicate,
}

/// A batch beyond the next expected one: some batch in between was lost.
/// It is not consumed; the sender must go back to `expected`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SeqGap {
    /// The sequence number the receiver needs next.
    pub expected: Seq,
    /// The sequence number that arrived.
    pub got: Seq,
}

impl fmt::Display for SeqGap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "expected batch {} but got {}", self.expected, self.got)
    }
}

impl std::error::Error for SeqGap {}

/// The receiver's side of one input channel: the last consumed sequence
/// number, and the rule that drops duplicates and refuses gaps.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InputDedup {
    last_consumed: Seq,
}

impl InputDedup {
    /// A channel on which nothing has been consumed.
    pub fn new() -> Self {
        Self::default()
    }

    /// A channel on which everything up to `seq` counts as consumed (as
    /// recorded by a restored checkpoint, or inherited from the channel this
    /// one replaces).
    pub fn starting_after(seq: Seq) -> Self {
        Self { last_consumed: seq }
    }

    /// Classifies an arriving batch; a delivered one counts as consumed.
    pub fn offer(&mut self, seq: Seq) -> Result<Offer, SeqGap> {
        if seq <= self.last_consumed {
            Ok(Offer::Duplicate)
        } else if seq == self.last_consumed + 1 {
            self.last_consumed = seq;
            Ok(Offer::Deliver)
        } else {
            Err(SeqGap { expected: self.last_consumed + 1, got: seq })
        }
    }

    /// The last consumed sequence number (0 if none).
    pub fn last_consumed(&self) -> Seq {
        self.last_consumed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(batches_max: usize, bytes_max: usize) -> BufferLimits {
        BufferLimits { batches_max, bytes_max }
    }

    fn seqs<T>(replay: Replay<'_, T>) -> Vec<Seq> {
        replay.map(|(s, _)| s).collect()
    }

    #[test]
    fn push_numbers_batches_from_one() {
        let mut b = OutputBuffer::new(limits(10, 100));
        assert_eq!(b.push('a', 1), Ok(1));
        assert_eq!(b.push('b', 1), Ok(2));
        assert_eq!(b.next_seq(), 3);
        assert_eq!(b.get(2), Some(&'b'));
        assert_eq!(b.get(0), None);
        assert_eq!(b.get(3), None);
    }

    #[test]
    fn full_in_batches_or_bytes_refuses_and_trim_makes_room() {
        let mut b = OutputBuffer::new(limits(2, 10));
        b.push(1, 4).unwrap();
        b.push(2, 4).unwrap();
        assert!(matches!(b.push(3, 1), Err(PushError::Full { batches: 2, bytes: 8, .. })));
        b.trim(1).unwrap();
        assert!(matches!(b.push(3, 7), Err(PushError::Full { .. })));
        assert_eq!(b.push(3, 6), Ok(3));
        assert_eq!(b.push(4, 11), Err(PushError::TooLarge { bytes: 11, bytes_max: 10 }));
        assert_eq!(b.bytes(), 10);
    }

    #[test]
    fn trim_is_monotone_idempotent_and_bounded() {
        let mut b = OutputBuffer::new(limits(10, 100));
        for i in 0..5 {
            b.push(i, 1).unwrap();
        }
        assert_eq!(b.trim(3), Ok(3));
        assert_eq!(b.trim(3), Ok(0));
        assert_eq!(b.trim(2), Ok(0));
        assert_eq!(b.trimmed_upto(), 3);
        assert_eq!(b.trim(6), Err(TrimBeyondEnd { upto: 6, last: 5 }));
        assert_eq!(b.trim(5), Ok(2));
        assert!(b.is_empty());
        assert_eq!(b.next_seq(), 6);
    }

    #[test]
    fn replay_after_yields_the_suffix_or_refuses_trimmed() {
        let mut b = OutputBuffer::new(limits(10, 100));
        for i in 0..5 {
            b.push(i, 1).unwrap();
        }
        b.trim(2).unwrap();
        assert_eq!(seqs(b.replay_after(2).unwrap()), vec![3, 4, 5]);
        assert_eq!(seqs(b.replay_after(4).unwrap()), vec![5]);
        assert_eq!(seqs(b.replay_after(9).unwrap()), Vec::<Seq>::new());
        assert_eq!(b.replay_after(1).err(), Some(ReplayTrimmed { after: 1, trimmed_upto: 2 }));
        let values: Vec<_> = b.replay_after(3).unwrap().map(|(_, v)| *v).collect();
        assert_eq!(values, vec![3, 4]);
    }

    #[test]
    fn starting_after_continues_a_sequence() {
        let mut b = OutputBuffer::starting_after(limits(4, 100), 41);
        assert_eq!(b.push("x", 1), Ok(42));
        assert_eq!(seqs(b.iter()), vec![42]);
        assert!(b.replay_after(40).is_err());
        assert_eq!(b.trim(41), Ok(0));
    }

    #[test]
    fn dedup_delivers_in_order_drops_duplicates_refuses_gaps() {
        let mut d = InputDedup::new();
        assert_eq!(d.offer(1), Ok(Offer::Deliver));
        assert_eq!(d.offer(1), Ok(Offer::Duplicate));
        assert_eq!(d.offer(3), Err(SeqGap { expected: 2, got: 3 }));
        assert_eq!(d.last_consumed(), 1);
        assert_eq!(d.offer(2), Ok(Offer::Deliver));
        assert_eq!(d.offer(0), Ok(Offer::Duplicate));
        let mut r = InputDedup::starting_after(10);
        assert_eq!(r.offer(10), Ok(Offer::Duplicate));
        assert_eq!(r.offer(11), Ok(Offer::Deliver));
    }
}
