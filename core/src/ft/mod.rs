//! Fault tolerance: recovery using state management (R+SM), as sans-IO
//! protocol cores and a deterministic simulator that drives them.
//!
//! Every piece here is a plain state machine: events go in (a message, a
//! tick carrying the time as milliseconds), actions come out (send this,
//! trim that, restore there). Nothing in this module opens a socket, reads
//! a clock, spawns a thread or touches a file, so the same code runs under
//! glommio in production and under [`sim`] in tests, where any failing run
//! replays exactly from its seed.
//!
//! # The pieces
//!
//! - [`buffer`]: an output channel's *buffer state* ([`buffer::OutputBuffer`]):
//!   batches numbered `1, 2, 3, …` kept until a downstream checkpoint covers
//!   them, bounded (a full buffer throttles the producer, it never drops);
//!   and the receiver's duplicate filter ([`buffer::InputDedup`]).
//! - [`checkpoint`]: the checkpoint-acknowledgement protocol: the instance's
//!   side ([`checkpoint::CheckpointTracker`]) and the backup's side
//!   ([`checkpoint::BackupStore`]).
//! - [`detector`]: heartbeats, timeouts and fencing of node incarnations
//!   ([`detector::FailureDetector`], [`detector::FenceSet`]).
//! - [`recovery`]: the coordinator's recovery planner
//!   ([`recovery::Recovery`]): replacement choice, optional key-range split,
//!   restore, re-route, replay, new backups, failures during recovery, and an
//!   explicit [`recovery::Unrecoverable`] outcome.
//! - [`sim`]: a seeded, single-threaded cluster simulator with a checker of
//!   exactly-once effects.
//!
//! # The protocol in one page
//!
//! 1. **Buffer state.** Each output channel numbers its batches and keeps them
//!    in an [`OutputBuffer`](buffer::OutputBuffer). Receivers remember, per
//!    input channel, the last sequence number they consumed and drop anything
//!    at or below it ([`InputDedup`](buffer::InputDedup)).
//! 2. **Checkpoints.** An instance periodically snapshots its processing state
//!    together with, per input channel, the last consumed sequence number and
//!    its own un-trimmed output buffer, and streams it to `R` backup nodes
//!    (never its own node). A backup acknowledges a checkpoint once it holds
//!    every chunk of it. When all `R` have acknowledged, the checkpoint is
//!    *covered*.
//! 3. **Write-ahead coverage.** The instance reports the covered checkpoint to
//!    the coordinator, and only once the coordinator has recorded it does the
//!    instance tell its upstreams to trim their buffers up to the recorded
//!    sequence numbers. So the coordinator always knows a covered checkpoint
//!    at least as new as any trim ever made, and since it refuses reports from
//!    fenced incarnations, a node declared failed can never trim anything.
//! 4. **Detection and fencing.** Nodes heartbeat the coordinator; silence past
//!    a timeout (or a lost connection, if so configured) declares the node
//!    failed, and from then on every message of that node *incarnation* is
//!    refused. A restarted process is a new incarnation and joins as a spare.
//! 5. **Recovery.** For each instance of the failed node the coordinator picks
//!    a replacement (a spare first, else a survivor with a free slot;
//!    optionally several, splitting the key range), and tells it to restore
//!    from a surviving backup the newest checkpoint that is *at least* the
//!    covered one it recorded. Asking a backup is also a *promise*: from then
//!    on it refuses checkpoint chunks of older epochs of that instance, so a
//!    zombie cannot slip a checkpoint in after the answer ("I do not have
//!    it" stays true). When the replacement reports the restore, the
//!    coordinator re-routes the upstreams to it and has them replay their
//!    buffers after the checkpoint's input sequence numbers, re-routes the
//!    downstreams to accept the new placement, and replaces backups that
//!    lived on the failed node. A failure during recovery re-plans with a new
//!    epoch; no replacement or no usable backup ends in an explicit
//!    [`Unrecoverable`](recovery::Unrecoverable).
//!
//! # What is promised, and what breaks it
//!
//! For **deterministic** operators, every input record affects state exactly
//! once, and a sink that deduplicates by (producer, sequence number) emits
//! every output exactly once, through any number of failures the cluster can
//! recover from. Determinism is load-bearing in three places: a replacement
//! re-creates, from the checkpoint and the replayed input, the very batches
//! the failed instance had already sent (so dropping the duplicates by
//! sequence number is correct); a fenced zombie that had not yet heard of its
//! fence may still have written a checkpoint to a backup, which is harmless
//! only because its state after batch `n` equals anyone's; and a split
//! replacement's output for batch `n` is exactly its share of the original's.
//!
//! What breaks the promise:
//! - **Non-deterministic operator code**: random numbers, iteration over
//!   hash maps with random seeds, reading the wall clock, calling services.
//! - **Processing-time logic**: windows or timeouts keyed on when a record
//!   happened to be processed; a replay processes it at another time.
//! - **Non-deterministic merging of several inputs**: an instance that
//!   interleaves its input channels in arrival order computes different
//!   output batches on replay. Merge in a deterministic order (by sequence
//!   number across channels, as the simulator does, or by event time with
//!   a deterministic tie-break).
//! - **Sinks that do not deduplicate** (or external side effects in
//!   operators): they see replayed output twice.
//! - **More failures than backups**: when every node holding a covered
//!   checkpoint of an instance is lost, the instance is unrecoverable, and
//!   this is reported, never papered over. A falsely suspected node counts
//!   as lost: once fenced, neither its instances nor its backups are used.
//!
//! # Driving the machines
//!
//! The control plane owns a [`FailureDetector`](detector::FailureDetector)
//! and a [`Recovery`](recovery::Recovery): it feeds every message from a
//! node to `heard_from` (refusing it on [`Fenced`](detector::Fenced)), calls
//! `FailureDetector::tick(now_ms)` and `Recovery::tick(now_ms)` on a timer,
//! hands each [`Declared`](detector::Declared) to `Recovery::node_failed`,
//! and carries out the [`RecoveryAction`](recovery::RecoveryAction)s with
//! retransmission until acknowledged, in order per node. Each instance owns
//! a [`CheckpointTracker`](checkpoint::CheckpointTracker) and its output
//! channels' [`OutputBuffer`](buffer::OutputBuffer)s; each node a
//! [`BackupStore`](checkpoint::BackupStore). The simulator's coordinator
//! node is a complete, single-threaded example of such a driver.

pub mod buffer;
pub mod checkpoint;
pub mod detector;
pub mod recovery;
pub mod sim;

use std::fmt;

/// A node: one process of the cluster, addressed independently of restarts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId(pub u32);

/// One life of a node's process. A restart is a new, greater incarnation;
/// once an incarnation is declared failed it is fenced for good.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Incarnation(pub u64);

/// An operator instance of the deployment (sources and sinks included),
/// unique across the whole job. Distinct from
/// [`routing::InstanceId`](crate::routing::InstanceId), which indexes the
/// instances of one logical operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct InstanceId(pub u32);

/// The placement generation of an instance: it grows by one with every
/// recovery attempt, so messages of an abandoned placement can be told apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Epoch(pub u64);

/// A batch sequence number on one channel. The first batch is 1; 0 means
/// "nothing yet".
pub type Seq = u64;

/// A directed channel from a producer instance to a consumer instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ChannelId {
    /// The instance that sends batches.
    pub producer: InstanceId,
    /// The instance that consumes them.
    pub consumer: InstanceId,
}

/// A checkpoint of one instance: numbered from 1 within each epoch, ordered
/// by epoch first, so any checkpoint of a newer placement supersedes every
/// checkpoint of an older one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CheckpointId {
    /// The epoch of the placement that took it.
    pub epoch: Epoch,
    /// Its number within that epoch, from 1.
    pub n: u64,
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "node {}", self.0)
    }
}

impl fmt::Display for Incarnation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "incarnation {}", self.0)
    }
}

impl fmt::Display for InstanceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "instance {}", self.0)
    }
}

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "epoch {}", self.0)
    }
}

impl fmt::Display for ChannelId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "channel {}->{}", self.producer.0, self.consumer.0)
    }
}

impl fmt::Display for CheckpointId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "checkpoint {}.{}", self.epoch.0, self.n)
    }
}
