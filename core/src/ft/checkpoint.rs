//! The checkpoint-acknowledgement protocol: when may an upstream forget its
//! buffered batches?
//!
//! An instance takes checkpoint `id`, recording per input channel the last
//! consumed sequence number and per output channel the last produced one
//! ([`CheckpointRecord`]), and streams it to its `R` backup nodes (never its
//! own node). Each backup acknowledges once it holds the checkpoint whole
//! ([`BackupStore`] assembles chunks and says when). When every backup has
//! acknowledged, the checkpoint is **covered**
//! ([`TrackerAction::Covered`]): the instance reports it to the coordinator,
//! and once the coordinator has recorded it
//! ([`CheckpointTracker::confirm_covered`]) the tracker tells each upstream
//! to trim its buffer for that channel up to the recorded sequence number
//! ([`TrackerAction::TrimUpstream`]).
//!
//! Why the round trip to the coordinator before trimming (write-ahead
//! coverage)? Recovery restores a checkpoint at least as new as the newest
//! one the coordinator recorded, so every trim must be known there first:
//! otherwise a covered-but-unreported checkpoint could be trimmed past and
//! then lost with its backups' reports. It also makes fencing complete for
//! trims: the coordinator refuses reports from fenced incarnations, so a
//! node declared failed can never make an upstream forget anything.
//!
//! Acknowledgements may be lost, duplicated or reordered. Everything is
//! idempotent: a second ack changes nothing, an ack for a checkpoint older
//! than the newest covered one is ignored (a newer covered checkpoint
//! supersedes older ones, pending or not), and a lost ack or a lost stream
//! is repaired by [`CheckpointTracker::tick`] re-streaming to the backups
//! that have not acknowledged (the backup re-acknowledges what it holds).
//!
//! A backup that fails is replaced
//! ([`replace_backup`](CheckpointTracker::replace_backup)) or, when no node
//! can replace it, dropped
//! ([`remove_backup`](CheckpointTracker::remove_backup)) so the others can
//! still cover; the last backup is never dropped. On the backup's side,
//! [`BackupStore::promise`] is how recovery makes a backup's answer final.
//!
//! ```
//! use spate_core::ft::checkpoint::*;
//! use spate_core::ft::{ChannelId, Epoch, InstanceId, NodeId};
//!
//! let me = InstanceId(7);
//! let input = ChannelId { producer: InstanceId(1), consumer: me };
//! let config = TrackerConfig { resend_after_ms: 50, pending_max: 2 };
//! let mut tracker =
//!     CheckpointTracker::new(me, Epoch(1), NodeId(0), vec![NodeId(1), NodeId(2)], config).unwrap();
//! let record = CheckpointRecord { inputs: vec![(input, 40)], outputs: vec![] };
//! let (id, streams) = tracker.begin(record, 0).unwrap();
//! assert_eq!(streams.len(), 2); // one stream per backup
//! assert!(tracker.on_ack(CheckpointAck { instance: me, checkpoint: id, backup: NodeId(1) }).unwrap().is_empty());
//! let covered = tracker.on_ack(CheckpointAck { instance: me, checkpoint: id, backup: NodeId(2) }).unwrap();
//! assert!(matches!(covered[0], TrackerAction::Covered { .. }));
//! // The coordinator recorded it: now, and only now, upstreams may trim.
//! let trims = tracker.confirm_covered(id).unwrap();
//! assert_eq!(trims, vec![TrackerAction::TrimUpstream { channel: input, upto: 40 }]);
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use super::{ChannelId, CheckpointId, Epoch, InstanceId, NodeId, Seq};

/// What a checkpoint records besides the state itself: the positions on the
/// instance's channels at the moment it was taken.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CheckpointRecord {
    /// Per input channel, the last sequence number consumed.
    pub inputs: Vec<(ChannelId, Seq)>,
    /// Per output channel, the last sequence number produced.
    pub outputs: Vec<(ChannelId, Seq)>,
}

/// Tunables of a [`CheckpointTracker`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TrackerConfig {
    /// Re-stream a checkpoint to a backup that has not acknowledged it after
    /// this long.
    pub resend_after_ms: u64,
    /// Most checkpoints in flight (taken, not yet covered or superseded).
    pub pending_max: usize,
}

/// What the instance's driver must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TrackerAction {
    /// Send (or send again, from its first chunk) the checkpoint to a backup.
    Stream {
        /// The backup node.
        backup: NodeId,
        /// The checkpoint to send.
        checkpoint: CheckpointId,
    },
    /// Every backup acknowledged: report this to the coordinator (again
    /// until it answers), then call
    /// [`confirm_covered`](CheckpointTracker::confirm_covered). The
    /// checkpoint's data may be freed locally.
    Covered {
        /// The covered checkpoint.
        checkpoint: CheckpointId,
        /// Its positions, for the coordinator's record.
        record: CheckpointRecord,
        /// The backups that hold it.
        backups: Vec<NodeId>,
    },
    /// Tell the channel's producer it may trim its buffer up to `upto`.
    TrimUpstream {
        /// The input channel.
        channel: ChannelId,
        /// The last sequence number the covered checkpoint consumed.
        upto: Seq,
    },
    /// A pending checkpoint was superseded or abandoned: free its data.
    Discard {
        /// The checkpoint.
        checkpoint: CheckpointId,
    },
}

/// A backup's acknowledgement: it holds the whole checkpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CheckpointAck {
    /// Whose checkpoint.
    pub instance: InstanceId,
    /// Which checkpoint.
    pub checkpoint: CheckpointId,
    /// The backup that holds it.
    pub backup: NodeId,
}

/// Errors configuring a tracker or starting a checkpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CheckpointError {
    /// A checkpoint needs at least one backup.
    NoBackups,
    /// Backups never live on the instance's own node.
    BackupOnOwnNode {
        /// The offending node.
        node: NodeId,
    },
    /// The same node was named twice as a backup.
    DuplicateBackup {
        /// The offending node.
        node: NodeId,
    },
    /// Too many checkpoints in flight; try again after one is covered.
    TooManyPending {
        /// In flight now.
        pending: usize,
        /// The limit.
        max: usize,
    },
}

impl fmt::Display for CheckpointError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoBackups => write!(f, "a checkpoint needs at least one backup"),
            Self::BackupOnOwnNode { node } => write!(f, "{node} is the instance's own node, not a backup"),
            Self::DuplicateBackup { node } => write!(f, "{node} named twice as a backup"),
            Self::TooManyPending { pending, max } => {
                write!(f, "{pending} checkpoints in flight, at most {max}")
            }
        }
    }
}

impl std::error::Error for CheckpointError {}

/// An acknowledgement that cannot belong to this tracker. Duplicates and
/// stale acks are not errors (they are ignored); these are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AckError {
    /// The ack is for another instance.
    WrongInstance {
        /// This tracker's instance.
        expected: InstanceId,
        /// The ack's.
        got: InstanceId,
    },
    /// The ack is for a checkpoint of another placement of the instance.
    WrongEpoch {
        /// This tracker's epoch.
        current: Epoch,
        /// The ack's.
        got: Epoch,
    },
    /// The ack comes from a node that is not (or no longer) a backup.
    UnknownBackup {
        /// The node.
        backup: NodeId,
    },
    /// The ack names a checkpoint that was never taken.
    NotTaken {
        /// The checkpoint.
        checkpoint: CheckpointId,
    },
}

impl fmt::Display for AckError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::WrongInstance { expected, got } => write!(f, "ack for {got}, tracker of {expected}"),
            Self::WrongEpoch { current, got } => write!(f, "ack for {got}, tracker at {current}"),
            Self::UnknownBackup { backup } => write!(f, "ack from {backup}, which is not a backup"),
            Self::NotTaken { checkpoint } => write!(f, "ack for {checkpoint}, which was never taken"),
        }
    }
}

impl std::error::Error for AckError {}

/// A confirmation for a checkpoint that was never covered here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NotCovered {
    /// The checkpoint named by the confirmation.
    pub checkpoint: CheckpointId,
}

impl fmt::Display for NotCovered {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} was confirmed but never covered", self.checkpoint)
    }
}

impl std::error::Error for NotCovered {}

#[derive(Clone, Debug)]
struct Pending {
    record: CheckpointRecord,
    acked: BTreeSet<NodeId>,
    /// When it was last streamed to each backup.
    streamed_ms: BTreeMap<NodeId, u64>,
}

/// The instance's side of the protocol: checkpoints in flight, their
/// acknowledgements, coverage and trims. One per instance placement
/// (instance and epoch).
#[derive(Clone, Debug)]
pub struct CheckpointTracker {
    instance: InstanceId,
    epoch: Epoch,
    own_node: NodeId,
    backups: Vec<NodeId>,
    config: TrackerConfig,
    next_n: u64,
    pending: BTreeMap<u64, Pending>,
    /// Covered, waiting for the coordinator to record them.
    unconfirmed: BTreeMap<u64, CheckpointRecord>,
    covered: Option<CheckpointId>,
    confirmed: Option<CheckpointId>,
}

fn check_backups(own_node: NodeId, backups: &[NodeId]) -> Result<(), CheckpointError> {
    if backups.is_empty() {
        return Err(CheckpointError::NoBackups);
    }
    for (i, &b) in backups.iter().enumerate() {
        if b == own_node {
            return Err(CheckpointError::BackupOnOwnNode { node: b });
        }
        if backups[..i].contains(&b) {
            return Err(CheckpointError::DuplicateBackup { node: b });
        }
    }
    Ok(())
}

impl CheckpointTracker {
    /// A tracker for `instance` at `epoch`, running on `own_node`, with its
    /// backups. Checkpoints are numbered from 1 within the epoch.
    pub fn new(
        instance: InstanceId,
        epoch: Epoch,
        own_node: NodeId,
        backups: Vec<NodeId>,
        config: TrackerConfig,
    ) -> Result<Self, CheckpointError> {
        check_backups(own_node, &backups)?;
        Ok(Self {
            instance,
            epoch,
            own_node,
            backups,
            config,
            next_n: 1,
            pending: BTreeMap::new(),
            unconfirmed: BTreeMap::new(),
            covered: None,
            confirmed: None,
        })
    }

    /// The id the next [`begin`](Self::begin) will use.
    pub fn next_id(&self) -> CheckpointId {
        CheckpointId { epoch: self.epoch, n: self.next_n }
    }

    /// Takes a checkpoint: the caller has snapshotted its state and positions
    /// (`record`) under [`next_id`](Self::next_id). Returns the id and a
    /// [`TrackerAction::Stream`] per backup.
    pub fn begin(
        &mut self,
        record: CheckpointRecord,
        now_ms: u64,
    ) -> Result<(CheckpointId, Vec<TrackerAction>), CheckpointError> {
        if self.pending.len() >= self.config.pending_max {
            return Err(CheckpointError::TooManyPending {
                pending: self.pending.len(),
                max: self.config.pending_max,
            });
        }
        let id = self.next_id();
        self.next_n += 1;
        let streamed_ms = self.backups.iter().map(|&b| (b, now_ms)).collect();
        self.pending.insert(id.n, Pending { record, acked: BTreeSet::new(), streamed_ms });
        let actions =
            self.backups.iter().map(|&backup| TrackerAction::Stream { backup, checkpoint: id }).collect();
        Ok((id, actions))
    }

    /// A backup's acknowledgement. Duplicates, acks for superseded
    /// checkpoints and acks after coverage yield no action.
    pub fn on_ack(&mut self, ack: CheckpointAck) -> Result<Vec<TrackerAction>, AckError> {
        if ack.instance != self.instance {
            return Err(AckError::WrongInstance { expected: self.instance, got: ack.instance });
        }
        if ack.checkpoint.epoch != self.epoch {
            return Err(AckError::WrongEpoch { current: self.epoch, got: ack.checkpoint.epoch });
        }
        if ack.checkpoint.n >= self.next_n || ack.checkpoint.n == 0 {
            return Err(AckError::NotTaken { checkpoint: ack.checkpoint });
        }
        if !self.backups.contains(&ack.backup) {
            return Err(AckError::UnknownBackup { backup: ack.backup });
        }
        let Some(pending) = self.pending.get_mut(&ack.checkpoint.n) else {
            return Ok(Vec::new()); // covered, superseded or abandoned
        };
        pending.acked.insert(ack.backup);
        Ok(self.cover_if_complete(ack.checkpoint.n))
    }

    /// If every backup acknowledged pending checkpoint `n`, covers it: it and
    /// every older pending checkpoint leave.
    fn cover_if_complete(&mut self, n: u64) -> Vec<TrackerAction> {
        let Some(pending) = self.pending.get(&n) else { return Vec::new() };
        if !self.backups.iter().all(|b| pending.acked.contains(b)) {
            return Vec::new();
        }
        let newer = self.pending.split_off(&(n + 1));
        let done = std::mem::replace(&mut self.pending, newer);
        let mut actions = Vec::new();
        let mut record = CheckpointRecord::default();
        for (m, p) in done {
            if m == n {
                record = p.record;
            } else {
                actions.push(TrackerAction::Discard { checkpoint: CheckpointId { epoch: self.epoch, n: m } });
            }
        }
        let checkpoint = CheckpointId { epoch: self.epoch, n };
        debug_assert!(self.covered < Some(checkpoint));
        self.covered = Some(checkpoint);
        self.unconfirmed.insert(n, record.clone());
        actions.push(TrackerAction::Covered { checkpoint, record, backups: self.backups.clone() });
        actions
    }

    /// The coordinator recorded `checkpoint` as covered: emits the trims for
    /// its input channels. Idempotent; confirming an older checkpoint than
    /// one already confirmed yields nothing.
    pub fn confirm_covered(&mut self, checkpoint: CheckpointId) -> Result<Vec<TrackerAction>, NotCovered> {
        if checkpoint.epoch != self.epoch {
            return Err(NotCovered { checkpoint });
        }
        if self.confirmed >= Some(checkpoint) {
            return Ok(Vec::new());
        }
        let Some(record) = self.unconfirmed.get(&checkpoint.n) else {
            return Err(NotCovered { checkpoint });
        };
        let actions = record
            .inputs
            .iter()
            .map(|&(channel, upto)| TrackerAction::TrimUpstream { channel, upto })
            .collect();
        self.unconfirmed = self.unconfirmed.split_off(&(checkpoint.n + 1));
        self.confirmed = Some(checkpoint);
        Ok(actions)
    }

    /// Re-streams pending checkpoints to backups that have not acknowledged
    /// them within `resend_after_ms` (a lost stream or a lost ack).
    pub fn tick(&mut self, now_ms: u64) -> Vec<TrackerAction> {
        let mut actions = Vec::new();
        for (&n, pending) in &mut self.pending {
            for &backup in &self.backups {
                if pending.acked.contains(&backup) {
                    continue;
                }
                let last = pending.streamed_ms.entry(backup).or_insert(now_ms);
                if now_ms.saturating_sub(*last) >= self.config.resend_after_ms {
                    *last = now_ms;
                    actions.push(TrackerAction::Stream {
                        backup,
                        checkpoint: CheckpointId { epoch: self.epoch, n },
                    });
                }
            }
        }
        actions
    }

    /// Replaces backup `old` (failed) by `new`, or adds `new` when `old` is
    /// `None`. Checkpoints in flight were not streamed to `new`, so they are
    /// abandoned ([`TrackerAction::Discard`]); take a new one soon. Repeating
    /// the same replacement is a no-op.
    pub fn replace_backup(
        &mut self,
        old: Option<NodeId>,
        new: NodeId,
    ) -> Result<Vec<TrackerAction>, CheckpointError> {
        let mut backups: Vec<NodeId> = self.backups.iter().copied().filter(|&b| Some(b) != old).collect();
        if backups.contains(&new) && backups.len() == self.backups.len() {
            return Ok(Vec::new()); // already applied
        }
        if !backups.contains(&new) {
            backups.push(new);
        }
        check_backups(self.own_node, &backups)?;
        self.backups = backups;
        let abandoned = std::mem::take(&mut self.pending);
        Ok(abandoned
            .into_keys()
            .map(|n| TrackerAction::Discard { checkpoint: CheckpointId { epoch: self.epoch, n } })
            .collect())
    }

    /// Stops waiting for `backup` (failed, and no node can replace it): the
    /// instance runs with fewer backups until one is added. Checkpoints in
    /// flight stay; they may now be covered by the remaining backups. The
    /// last backup cannot be removed. Removing an absent one is a no-op.
    pub fn remove_backup(&mut self, backup: NodeId) -> Result<Vec<TrackerAction>, CheckpointError> {
        if !self.backups.contains(&backup) {
            return Ok(Vec::new());
        }
        if self.backups.len() == 1 {
            return Err(CheckpointError::NoBackups);
        }
        self.backups.retain(|&b| b != backup);
        // The newest pending checkpoint the remaining backups all hold is
        // covered now.
        let newest = self
            .pending
            .iter()
            .rev()
            .find(|(_, p)| self.backups.iter().all(|b| p.acked.contains(b)))
            .map(|(&n, _)| n);
        Ok(newest.map(|n| self.cover_if_complete(n)).unwrap_or_default())
    }

    /// The instance this tracker belongs to.
    pub fn instance(&self) -> InstanceId {
        self.instance
    }

    /// The placement epoch.
    pub fn epoch(&self) -> Epoch {
        self.epoch
    }

    /// The current backups.
    pub fn backups(&self) -> &[NodeId] {
        &self.backups
    }

    /// The newest covered checkpoint, confirmed or not.
    pub fn latest_covered(&self) -> Option<CheckpointId> {
        self.covered
    }

    /// The newest checkpoint the coordinator confirmed.
    pub fn latest_confirmed(&self) -> Option<CheckpointId> {
        self.confirmed
    }

    /// Checkpoints in flight.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }
}

/// Limits of a [`BackupStore`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackupLimits {
    /// Most chunks in one checkpoint.
    pub chunks_max: u32,
}

/// What became of a chunk. [`Complete`](ChunkOutcome::Complete) and
/// [`AlreadyHeld`](ChunkOutcome::AlreadyHeld) both call for an
/// acknowledgement (see [`ChunkOutcome::should_ack`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChunkOutcome {
    /// Stored; the checkpoint is not whole yet.
    Partial {
        /// Distinct chunks held.
        received: u32,
        /// Chunks in the checkpoint.
        count: u32,
    },
    /// This chunk completed the checkpoint; it replaced any older one.
    Complete,
    /// The checkpoint was already whole (a re-stream): acknowledge again.
    AlreadyHeld,
    /// Older than what is held: ignored.
    Stale,
}

impl ChunkOutcome {
    /// Whether the backup should acknowledge the checkpoint now.
    pub fn should_ack(self) -> bool {
        matches!(self, Self::Complete | Self::AlreadyHeld)
    }
}

/// A malformed chunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChunkError {
    /// A checkpoint of zero chunks.
    ZeroCount,
    /// More chunks than the store allows.
    TooManyChunks {
        /// The chunk's count.
        count: u32,
        /// The limit.
        max: u32,
    },
    /// An index at or past the count.
    IndexOutOfRange {
        /// The chunk's index.
        index: u32,
        /// The chunk's count.
        count: u32,
    },
    /// Two chunks of one checkpoint disagree on the count.
    CountChanged {
        /// The count seen first.
        was: u32,
        /// The count of this chunk.
        now: u32,
    },
}

impl fmt::Display for ChunkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ZeroCount => write!(f, "checkpoint of zero chunks"),
            Self::TooManyChunks { count, max } => write!(f, "checkpoint of {count} chunks, at most {max}"),
            Self::IndexOutOfRange { index, count } => write!(f, "chunk {index} of {count}"),
            Self::CountChanged { was, now } => write!(f, "chunk count changed from {was} to {now}"),
        }
    }
}

impl std::error::Error for ChunkError {}

#[derive(Clone, Debug)]
struct Partial<C> {
    checkpoint: CheckpointId,
    parts: Vec<Option<C>>,
    received: u32,
}

#[derive(Clone, Debug)]
struct Held<C> {
    complete: Option<(CheckpointId, Vec<C>)>,
    partial: Option<Partial<C>>,
    /// Chunks from epochs before this one are refused.
    promised: Epoch,
}

/// The backup's side: assembles checkpoint chunks per instance and keeps the
/// newest complete checkpoint of each. A partial checkpoint never replaces a
/// complete one, so a crash mid-stream leaves the previous one intact.
#[derive(Clone, Debug)]
pub struct BackupStore<C> {
    limits: BackupLimits,
    held: BTreeMap<InstanceId, Held<C>>,
}

impl<C> BackupStore<C> {
    /// An empty store.
    pub fn new(limits: BackupLimits) -> Self {
        Self { limits, held: BTreeMap::new() }
    }

    /// Stores chunk `index` of `count` of `instance`'s `checkpoint`.
    pub fn on_chunk(
        &mut self,
        instance: InstanceId,
        checkpoint: CheckpointId,
        index: u32,
        count: u32,
        chunk: C,
    ) -> Result<ChunkOutcome, ChunkError> {
        if count == 0 {
            return Err(ChunkError::ZeroCount);
        }
        if count > self.limits.chunks_max {
            return Err(ChunkError::TooManyChunks { count, max: self.limits.chunks_max });
        }
        if index >= count {
            return Err(ChunkError::IndexOutOfRange { index, count });
        }
        let held =
            self.held.entry(instance).or_insert(Held { complete: None, partial: None, promised: Epoch(0) });
        if checkpoint.epoch < held.promised {
            return Ok(ChunkOutcome::Stale);
        }
        if let Some((have, _)) = &held.complete {
            if *have == checkpoint {
                return Ok(ChunkOutcome::AlreadyHeld);
            }
            if *have > checkpoint {
                return Ok(ChunkOutcome::Stale);
            }
        }
        let restart = match &held.partial {
            Some(p) if p.checkpoint > checkpoint => return Ok(ChunkOutcome::Stale),
            Some(p) if p.checkpoint == checkpoint => {
                if p.parts.len() != count as usize {
                    return Err(ChunkError::CountChanged { was: p.parts.len() as u32, now: count });
                }
                false
            }
            _ => true,
        };
        if restart {
            held.partial = None;
        }
        let partial = held.partial.get_or_insert_with(|| Partial {
            checkpoint,
            parts: (0..count).map(|_| None).collect(),
            received: 0,
        });
        let slot = &mut partial.parts[index as usize];
        if slot.is_none() {
            partial.received += 1;
        }
        *slot = Some(chunk);
        if partial.received < count {
            return Ok(ChunkOutcome::Partial { received: partial.received, count });
        }
        let parts = std::mem::take(&mut partial.parts).into_iter().flatten().collect::<Vec<C>>();
        debug_assert_eq!(parts.len(), count as usize);
        held.partial = None;
        held.complete = Some((checkpoint, parts));
        Ok(ChunkOutcome::Complete)
    }

    /// Refuses from now on every chunk of `instance` from an epoch before
    /// `epoch` (they become [`ChunkOutcome::Stale`]) and drops such a
    /// partial checkpoint. Called when a replacement at `epoch` asks this
    /// backup for the checkpoint, so that a fenced zombie of an older
    /// placement cannot slip a checkpoint in after the answer: the answer
    /// stays true.
    pub fn promise(&mut self, instance: InstanceId, epoch: Epoch) {
        let held =
            self.held.entry(instance).or_insert(Held { complete: None, partial: None, promised: epoch });
        held.promised = held.promised.max(epoch);
        if held.partial.as_ref().is_some_and(|p| p.checkpoint.epoch < epoch) {
            held.partial = None;
        }
    }

    /// The newest complete checkpoint of `instance`, with its chunks in order.
    pub fn latest(&self, instance: InstanceId) -> Option<(CheckpointId, &[C])> {
        let (id, parts) = self.held.get(&instance)?.complete.as_ref()?;
        Some((*id, parts.as_slice()))
    }

    /// Drops everything held for `instance`.
    pub fn forget(&mut self, instance: InstanceId) {
        self.held.remove(&instance);
    }

    /// Instances with a complete checkpoint here.
    pub fn instances(&self) -> impl Iterator<Item = InstanceId> + '_ {
        self.held.iter().filter(|(_, h)| h.complete.is_some()).map(|(&i, _)| i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ME: InstanceId = InstanceId(9);
    const UP: InstanceId = InstanceId(1);

    fn ch() -> ChannelId {
        ChannelId { producer: UP, consumer: ME }
    }

    fn tracker(backups: &[u32]) -> CheckpointTracker {
        let config = TrackerConfig { resend_after_ms: 10, pending_max: 3 };
        CheckpointTracker::new(ME, Epoch(2), NodeId(0), backups.iter().map(|&b| NodeId(b)).collect(), config)
            .unwrap()
    }

    fn record(upto: Seq) -> CheckpointRecord {
        CheckpointRecord { inputs: vec![(ch(), upto)], outputs: vec![] }
    }

    fn ack(id: CheckpointId, backup: u32) -> CheckpointAck {
        CheckpointAck { instance: ME, checkpoint: id, backup: NodeId(backup) }
    }

    fn covered(actions: &[TrackerAction]) -> Option<CheckpointId> {
        actions.iter().find_map(|a| match a {
            TrackerAction::Covered { checkpoint, .. } => Some(*checkpoint),
            _ => None,
        })
    }

    #[test]
    fn backups_are_validated() {
        let config = TrackerConfig { resend_after_ms: 10, pending_max: 3 };
        let new = |b: Vec<u32>| {
            CheckpointTracker::new(ME, Epoch(1), NodeId(0), b.into_iter().map(NodeId).collect(), config).err()
        };
        assert_eq!(new(vec![]), Some(CheckpointError::NoBackups));
        assert_eq!(new(vec![1, 0]), Some(CheckpointError::BackupOnOwnNode { node: NodeId(0) }));
        assert_eq!(new(vec![1, 1]), Some(CheckpointError::DuplicateBackup { node: NodeId(1) }));
        assert_eq!(new(vec![1, 2]), None);
    }

    #[test]
    fn covered_only_when_every_backup_acked_and_trims_only_after_confirm() {
        let mut t = tracker(&[1, 2]);
        let (id, streams) = t.begin(record(5), 0).unwrap();
        assert_eq!(id, CheckpointId { epoch: Epoch(2), n: 1 });
        assert_eq!(streams.len(), 2);
        assert!(t.on_ack(ack(id, 1)).unwrap().is_empty());
        assert!(t.on_ack(ack(id, 1)).unwrap().is_empty(), "duplicate ack");
        let actions = t.on_ack(ack(id, 2)).unwrap();
        assert_eq!(covered(&actions), Some(id));
        assert!(!actions.iter().any(|a| matches!(a, TrackerAction::TrimUpstream { .. })));
        assert!(t.on_ack(ack(id, 2)).unwrap().is_empty(), "ack after coverage");
        assert_eq!(
            t.confirm_covered(id).unwrap(),
            vec![TrackerAction::TrimUpstream { channel: ch(), upto: 5 }]
        );
        assert!(t.confirm_covered(id).unwrap().is_empty(), "confirm is idempotent");
    }

    #[test]
    fn newer_coverage_supersedes_older_pending() {
        let mut t = tracker(&[1]);
        let (a, _) = t.begin(record(5), 0).unwrap();
        let (b, _) = t.begin(record(8), 0).unwrap();
        // Acks reordered: b's arrives first.
        let actions = t.on_ack(ack(b, 1)).unwrap();
        assert_eq!(covered(&actions), Some(b));
        assert!(actions.contains(&TrackerAction::Discard { checkpoint: a }));
        assert!(t.on_ack(ack(a, 1)).unwrap().is_empty(), "late ack of a superseded checkpoint");
        assert_eq!(t.latest_covered(), Some(b));
        assert_eq!(t.pending(), 0);
        // Confirms may also be reordered; an older one after a newer one is a no-op.
        assert_eq!(t.confirm_covered(b).unwrap().len(), 1);
        assert!(t.confirm_covered(a).unwrap().is_empty());
    }

    #[test]
    fn foreign_acks_are_errors() {
        let mut t = tracker(&[1]);
        let (id, _) = t.begin(record(1), 0).unwrap();
        let mut wrong = ack(id, 1);
        wrong.instance = UP;
        assert!(matches!(t.on_ack(wrong), Err(AckError::WrongInstance { .. })));
        let old = CheckpointId { epoch: Epoch(1), n: 1 };
        assert!(matches!(t.on_ack(ack(old, 1)), Err(AckError::WrongEpoch { .. })));
        assert!(matches!(t.on_ack(ack(id, 3)), Err(AckError::UnknownBackup { .. })));
        let future = CheckpointId { epoch: Epoch(2), n: 7 };
        assert!(matches!(t.on_ack(ack(future, 1)), Err(AckError::NotTaken { .. })));
        assert_eq!(t.confirm_covered(future), Err(NotCovered { checkpoint: future }));
    }

    #[test]
    fn pending_is_bounded_and_tick_restreams_unacked() {
        let mut t = tracker(&[1, 2]);
        let (id, _) = t.begin(record(1), 100).unwrap();
        t.begin(record(2), 100).unwrap();
        t.begin(record(3), 100).unwrap();
        assert!(matches!(
            t.begin(record(4), 100),
            Err(CheckpointError::TooManyPending { pending: 3, max: 3 })
        ));
        t.on_ack(ack(id, 1)).unwrap();
        assert!(t.tick(105).is_empty());
        let resent = t.tick(110);
        assert_eq!(resent.len(), 5, "three checkpoints to node 2, two to node 1");
        assert!(resent.contains(&TrackerAction::Stream { backup: NodeId(2), checkpoint: id }));
        assert!(!resent.contains(&TrackerAction::Stream { backup: NodeId(1), checkpoint: id }));
        assert!(t.tick(111).is_empty());
    }

    #[test]
    fn replacing_a_backup_abandons_pending_and_is_idempotent() {
        let mut t = tracker(&[1, 2]);
        let (id, _) = t.begin(record(1), 0).unwrap();
        let actions = t.replace_backup(Some(NodeId(2)), NodeId(3)).unwrap();
        assert_eq!(actions, vec![TrackerAction::Discard { checkpoint: id }]);
        assert_eq!(t.backups(), &[NodeId(1), NodeId(3)]);
        assert!(t.replace_backup(Some(NodeId(2)), NodeId(3)).unwrap().is_empty());
        assert!(matches!(t.on_ack(ack(id, 2)), Err(AckError::UnknownBackup { .. })));
        assert!(t.on_ack(ack(id, 1)).unwrap().is_empty(), "abandoned");
        assert_eq!(
            t.replace_backup(None, NodeId(0)),
            Err(CheckpointError::BackupOnOwnNode { node: NodeId(0) })
        );
        let (next, _) = t.begin(record(2), 0).unwrap();
        t.on_ack(ack(next, 1)).unwrap();
        assert_eq!(covered(&t.on_ack(ack(next, 3)).unwrap()), Some(next));
    }

    #[test]
    fn removing_a_failed_backup_lets_the_others_cover() {
        let mut t = tracker(&[1, 2]);
        let (id, _) = t.begin(record(4), 0).unwrap();
        t.on_ack(ack(id, 1)).unwrap();
        let actions = t.remove_backup(NodeId(2)).unwrap();
        assert_eq!(covered(&actions), Some(id));
        assert!(t.remove_backup(NodeId(2)).unwrap().is_empty());
        assert_eq!(t.remove_backup(NodeId(1)), Err(CheckpointError::NoBackups));
        assert_eq!(t.backups(), &[NodeId(1)]);
    }

    fn cp(n: u64) -> CheckpointId {
        CheckpointId { epoch: Epoch(1), n }
    }

    #[test]
    fn backup_store_assembles_chunks_in_any_order() {
        let mut s = BackupStore::new(BackupLimits { chunks_max: 8 });
        assert_eq!(s.on_chunk(ME, cp(1), 2, 3, 'c'), Ok(ChunkOutcome::Partial { received: 1, count: 3 }));
        assert_eq!(s.on_chunk(ME, cp(1), 0, 3, 'a'), Ok(ChunkOutcome::Partial { received: 2, count: 3 }));
        assert_eq!(s.on_chunk(ME, cp(1), 0, 3, 'a'), Ok(ChunkOutcome::Partial { received: 2, count: 3 }));
        assert!(s.latest(ME).is_none());
        assert_eq!(s.on_chunk(ME, cp(1), 1, 3, 'b'), Ok(ChunkOutcome::Complete));
        assert_eq!(s.latest(ME), Some((cp(1), &['a', 'b', 'c'][..])));
        assert!(s.on_chunk(ME, cp(1), 1, 3, 'b').unwrap().should_ack());
        assert_eq!(s.instances().collect::<Vec<_>>(), vec![ME]);
    }

    #[test]
    fn partial_never_replaces_complete_and_old_is_stale() {
        let mut s = BackupStore::new(BackupLimits { chunks_max: 8 });
        s.on_chunk(ME, cp(2), 0, 1, 'x').unwrap();
        assert_eq!(s.on_chunk(ME, cp(1), 0, 1, 'o'), Ok(ChunkOutcome::Stale));
        assert!(matches!(s.on_chunk(ME, cp(3), 0, 2, 'y'), Ok(ChunkOutcome::Partial { .. })));
        assert_eq!(s.latest(ME).map(|(id, _)| id), Some(cp(2)), "crash mid-stream keeps the old one");
        // A newer checkpoint restarts assembly; the older partial is dropped.
        assert!(matches!(s.on_chunk(ME, cp(4), 0, 2, 'p'), Ok(ChunkOutcome::Partial { .. })));
        assert_eq!(s.on_chunk(ME, cp(3), 1, 2, 'z'), Ok(ChunkOutcome::Stale));
        assert_eq!(s.on_chunk(ME, cp(4), 1, 2, 'q'), Ok(ChunkOutcome::Complete));
        assert_eq!(s.latest(ME), Some((cp(4), &['p', 'q'][..])));
        // A new epoch supersedes any checkpoint of an older one.
        let next_epoch = CheckpointId { epoch: Epoch(2), n: 1 };
        assert_eq!(s.on_chunk(ME, next_epoch, 0, 1, 'e'), Ok(ChunkOutcome::Complete));
        s.forget(ME);
        assert!(s.latest(ME).is_none());
    }

    #[test]
    fn a_promise_refuses_older_epochs_for_good() {
        let mut s = BackupStore::new(BackupLimits { chunks_max: 8 });
        s.on_chunk(ME, cp(1), 0, 2, 'a').unwrap();
        s.promise(ME, Epoch(2));
        assert_eq!(s.on_chunk(ME, cp(1), 1, 2, 'b'), Ok(ChunkOutcome::Stale), "the partial was dropped");
        assert_eq!(s.on_chunk(ME, cp(5), 0, 1, 'z'), Ok(ChunkOutcome::Stale), "a zombie's checkpoint");
        assert!(s.latest(ME).is_none());
        let next = CheckpointId { epoch: Epoch(2), n: 1 };
        assert_eq!(s.on_chunk(ME, next, 0, 1, 'n'), Ok(ChunkOutcome::Complete));
    }

    #[test]
    fn malformed_chunks_are_refused() {
        let mut s = BackupStore::new(BackupLimits { chunks_max: 4 });
        assert_eq!(s.on_chunk(ME, cp(1), 0, 0, ()), Err(ChunkError::ZeroCount));
        assert_eq!(s.on_chunk(ME, cp(1), 0, 5, ()), Err(ChunkError::TooManyChunks { count: 5, max: 4 }));
        assert_eq!(s.on_chunk(ME, cp(1), 3, 3, ()), Err(ChunkError::IndexOutOfRange { index: 3, count: 3 }));
        s.on_chunk(ME, cp(1), 0, 3, ()).unwrap();
        assert_eq!(s.on_chunk(ME, cp(1), 1, 2, ()), Err(ChunkError::CountChanged { was: 3, now: 2 }));
    }
}
