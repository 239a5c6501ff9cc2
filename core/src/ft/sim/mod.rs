//! A deterministic, seeded simulator of a small cluster running the
//! fault-tolerance protocols of [`crate::ft`], and a checker of their
//! promise: exactly-once effects.
//!
//! # What runs
//!
//! Node 0 hosts the coordinator ([`FailureDetector`](super::detector::FailureDetector)
//! and [`Recovery`](super::recovery::Recovery)), the sources and the sink, and
//! never fails (as in SEEP, sources, sinks and the query manager are assumed
//! reliable). Worker nodes `1..` (active, then spares) host the keyed
//! operator instances and the backup stores. The pipeline is
//!
//! ```text
//! sources (replayable generators) --key_by--> per-key running sum --> sink (dedup by producer, seq)
//! ```
//!
//! Each source emits one batch per round to every operator instance (empty
//! if no key of the round falls in its range). An instance consumes round
//! `r` once it holds batch `r` of every input channel, in source order: a
//! deterministic merge, which is what makes replay reproduce its output
//! batches exactly (see the [`ft`](super) docs on what breaks this). For
//! every input record it adds the value to the key's sum and emits
//! `(record, key, new sum)`; output batch `r` is the output of round `r`.
//!
//! Every protocol piece is the production state machine: output buffers and
//! input dedup, the checkpoint tracker and backup store (checkpoints are
//! the instance's state, positions and un-trimmed output buffer, streamed
//! in chunks), failure detection with fencing, and the recovery planner.
//!
//! # What goes wrong
//!
//! - Data messages (batches, checkpoint chunks, restore transfers, commands
//!   and reports) travel over per-connection FIFO links with random delay;
//!   a **connection break** loses everything in flight on that link, and
//!   the endpoints find out shortly after (the coordinator may declare the
//!   peer failed right away: a false suspicion).
//! - Control datagrams (heartbeats, checkpoint acks, delivery acks, trims,
//!   command acks, replies) are delayed independently — so reordered — and
//!   randomly **lost or duplicated**.
//! - Worker nodes **crash** at random moments, and on purpose right after a
//!   checkpoint starts or a restore is planned (the instance's node, a
//!   backup, the replacement or the restore source). A crashed node may
//!   restart as a new incarnation, with empty state, and join as a spare.
//! - Worker nodes **pause** (a GC stall, a swapped-out VM) for longer than
//!   the failure timeout: they are declared failed while alive, must be
//!   fenced, and restart once they learn it.
//!
//! Faults stop at a horizon so the run can finish.
//!
//! # What is checked
//!
//! While running: a restored state equals the failure-free state after the
//! restored round (restricted to the restored key range); no output batch,
//! coverage report or restore report from an incarnation already declared
//! failed takes effect at the sink or the coordinator (a trim needs no such
//! check: it was authorised by the coordinator's confirmation, before any
//! fence); every replay finds the batches it needs; no record is
//! routed to an instance that does not own its key. At the end: the sink
//! holds every expected output exactly once with the right running sum,
//! and the final per-key state equals the failure-free computation. A run
//! may instead end [`SimOutcome::Unrecoverable`], which the checker accepts
//! only if it was genuine: no live, unfenced, registered node had a free
//! slot (no replacement), or no live, unfenced node held a checkpoint as
//! new as the covered one (no backup). Everything the sink emitted until
//! then must still be correct and unduplicated.
//!
//! The same seed replays exactly: every random choice comes from generators
//! seeded by it, and all state is kept in ordered maps.
//!
//! ```
//! use spate_core::ft::sim::{run, Scenario};
//!
//! let scenario = Scenario::generate(7);
//! let report = run(7, &scenario).unwrap_or_else(|failure| panic!("{failure}"));
//! assert_eq!(run(7, &scenario), Ok(report)); // the same seed, the same run
//! ```

mod check;
pub(crate) mod rng;
mod world;

use std::fmt;

use super::buffer::BufferLimits;
use super::recovery::Unrecoverable;

pub use world::TraceEvent;

/// Network behaviour.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NetConfig {
    /// Least one-way delay.
    pub delay_min_ms: u64,
    /// Greatest one-way delay.
    pub delay_max_ms: u64,
    /// Chance that a control datagram is lost, per thousand.
    pub datagram_loss_per_mille: u32,
    /// Chance that a control datagram arrives twice, per thousand.
    pub datagram_dup_per_mille: u32,
}

/// Node and link faults. Random faults happen before `horizon_ms` only.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FaultConfig {
    /// Most worker crashes in a run (random and targeted together).
    pub crashes: u32,
    /// Pauses of a worker long enough to be declared failed (usually).
    pub pauses: u32,
    /// Connection breaks.
    pub breaks: u32,
    /// No new fault after this time.
    pub horizon_ms: u64,
    /// Whether crashed workers restart (as new incarnations, joining as
    /// spares). A worker that learns it was fenced always restarts.
    pub restart: bool,
    /// Restart delay range.
    pub restart_delay_ms: (u64, u64),
    /// Pause length range.
    pub pause_ms: (u64, u64),
    /// Chance, per thousand, of crashing the instance's node or a backup
    /// right after a checkpoint starts.
    pub crash_in_checkpoint_per_mille: u32,
    /// Chance, per thousand, of crashing the replacement or the restore
    /// source right after a restore is planned.
    pub crash_in_recovery_per_mille: u32,
}

/// Deliberate protocol bugs, for testing only: each must make the checker
/// fail for some seed, which shows the checker is not vacuous.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sabotage {
    /// The sink consumes duplicates instead of dropping them.
    pub sink_without_dedup: bool,
    /// Instances tell upstreams to trim as soon as a checkpoint starts,
    /// before its backups acknowledged it.
    pub trim_before_cover: bool,
    /// The coordinator and the sink admit messages from fenced incarnations.
    pub no_fencing: bool,
    /// The coordinator declares lost instances unrecoverable without looking
    /// for a replacement.
    pub give_up_without_looking: bool,
}

/// One simulated deployment and its faults.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Scenario {
    /// Active worker nodes at start.
    pub workers: u32,
    /// Spare worker nodes at start.
    pub spares: u32,
    /// Instances a worker node can host.
    pub slots_per_node: u32,
    /// Source instances.
    pub sources: u32,
    /// Keyed operator instances at start.
    pub operators: u32,
    /// The key space has `2^bins_log2` bins.
    pub bins_log2: u8,
    /// Distinct keys.
    pub keys: u32,
    /// Records per source per round.
    pub records_per_round: u32,
    /// Rounds each source produces.
    pub rounds: u64,
    /// A source produces round `r` no earlier than `r * round_interval_ms`.
    pub round_interval_ms: u64,
    /// `R`: backups per instance.
    pub backups: usize,
    /// Split a lost instance over up to this many replacements.
    pub split_ways: u32,
    /// How often an instance checkpoints.
    pub checkpoint_interval_ms: u64,
    /// How often workers heartbeat.
    pub heartbeat_interval_ms: u64,
    /// Silence that declares a node failed.
    pub failure_timeout_ms: u64,
    /// Whether a lost connection declares the peer failed at once.
    pub declare_on_connection_loss: bool,
    /// How long the coordinator waits for capacity before giving up.
    pub capacity_wait_ms: u64,
    /// How long a restore may take before it is re-planned.
    pub restore_timeout_ms: u64,
    /// Retransmission timeout for batches, reports, commands and fetches.
    pub retransmit_ms: u64,
    /// Bounds of every output buffer.
    pub buffer: BufferLimits,
    /// Batches in flight per channel beyond the last acknowledged.
    pub send_window: u64,
    /// The simulation step of every node.
    pub tick_ms: u64,
    /// Network behaviour.
    pub net: NetConfig,
    /// Faults.
    pub faults: FaultConfig,
    /// A run that has not finished by then fails (liveness).
    pub max_time_ms: u64,
    /// Deliberate bugs (testing only).
    pub sabotage: Sabotage,
}

impl Default for Scenario {
    /// Three workers and a spare, two sources, three instances, `R = 1`,
    /// moderate faults.
    fn default() -> Self {
        Self {
            workers: 3,
            spares: 1,
            slots_per_node: 2,
            sources: 2,
            operators: 3,
            bins_log2: 4,
            keys: 24,
            records_per_round: 3,
            rounds: 30,
            round_interval_ms: 5,
            backups: 1,
            split_ways: 1,
            checkpoint_interval_ms: 20,
            heartbeat_interval_ms: 10,
            failure_timeout_ms: 40,
            declare_on_connection_loss: false,
            capacity_wait_ms: 200,
            restore_timeout_ms: 150,
            retransmit_ms: 15,
            buffer: BufferLimits { batches_max: 24, bytes_max: 1 << 20 },
            send_window: 8,
            tick_ms: 2,
            net: NetConfig {
                delay_min_ms: 1,
                delay_max_ms: 4,
                datagram_loss_per_mille: 30,
                datagram_dup_per_mille: 20,
            },
            faults: FaultConfig {
                crashes: 2,
                pauses: 1,
                breaks: 2,
                horizon_ms: 250,
                restart: true,
                restart_delay_ms: (20, 120),
                pause_ms: (30, 120),
                crash_in_checkpoint_per_mille: 30,
                crash_in_recovery_per_mille: 150,
            },
            max_time_ms: 30_000,
            sabotage: Sabotage::default(),
        }
    }
}

impl Scenario {
    /// A scenario varied by `seed`: cluster size, spares, sources,
    /// instances, `R`, splitting, connection-loss policy, restarts, loss
    /// rates and fault counts. Always a valid deployment; not always a
    /// recoverable one.
    pub fn generate(seed: u64) -> Self {
        let mut rng = rng::Rng::new(seed ^ 0x5CE7_A210_0000_0001);
        let mut s = Self::default();
        s.workers = rng.range(2, 5) as u32;
        s.spares = rng.range(0, 2) as u32;
        s.slots_per_node = rng.range(1, 2) as u32;
        s.sources = rng.range(1, 2) as u32;
        s.operators = rng.range(1, u64::from((s.workers * s.slots_per_node).min(4))) as u32;
        s.backups = if s.workers + s.spares >= 3 && rng.chance(600) { 2 } else { 1 };
        s.split_ways = if rng.chance(400) { 2 } else { 1 };
        s.declare_on_connection_loss = rng.chance(400);
        s.rounds = rng.range(15, 35);
        s.records_per_round = rng.range(1, 4) as u32;
        s.checkpoint_interval_ms = rng.range(10, 40);
        s.net.delay_max_ms = rng.range(2, 8);
        s.net.datagram_loss_per_mille = rng.range(0, 100) as u32;
        s.net.datagram_dup_per_mille = rng.range(0, 50) as u32;
        s.faults.crashes = rng.range(0, 3) as u32;
        s.faults.pauses = rng.range(0, 1) as u32;
        s.faults.breaks = rng.range(0, 4) as u32;
        s.faults.restart = rng.chance(800);
        s.faults.horizon_ms = rng.range(80, 300);
        s
    }
}

/// How a run ended.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum SimOutcome {
    /// Everything was produced, processed and emitted, and checked.
    Completed,
    /// An instance could not be recovered, and the checker agreed that it
    /// genuinely could not.
    Unrecoverable(Unrecoverable),
}

/// Counters of one run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SimStats {
    /// Messages sent.
    pub messages: u64,
    /// Datagrams lost.
    pub datagrams_lost: u64,
    /// Datagrams duplicated.
    pub datagrams_duplicated: u64,
    /// Messages lost with a broken connection or a dead receiver.
    pub messages_dropped: u64,
    /// Worker crashes.
    pub crashes: u64,
    /// Worker pauses.
    pub pauses: u64,
    /// Connection breaks.
    pub breaks: u64,
    /// Node incarnations declared failed.
    pub declared: u64,
    /// Of those, declared while actually alive.
    pub false_suspicions: u64,
    /// Restore attempts planned.
    pub restores: u64,
    /// Of those, parts of a split.
    pub split_parts: u64,
    /// Restores completed.
    pub restored: u64,
    /// Checkpoints covered.
    pub checkpoints_covered: u64,
    /// Batches replayed by upstreams after a restore.
    pub batches_replayed: u64,
    /// Duplicate batches dropped by receivers.
    pub duplicates_dropped: u64,
    /// Messages refused because their sender was fenced.
    pub fenced_refusals: u64,
    /// Source ticks spent throttled by a full buffer.
    pub throttled: u64,
}

/// A successful (checked) run.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SimReport {
    /// The seed.
    pub seed: u64,
    /// How it ended.
    pub outcome: SimOutcome,
    /// Simulated time at the end.
    pub end_ms: u64,
    /// Events processed.
    pub events: u64,
    /// A digest of the whole event trace: equal seeds give equal digests.
    pub trace_hash: u64,
    /// Counters.
    pub stats: SimStats,
}

/// A run the checker rejected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimFailure {
    /// The seed, to replay it.
    pub seed: u64,
    /// Simulated time of the failure.
    pub at_ms: u64,
    /// What went wrong.
    pub violation: String,
    /// The last events before it, oldest first.
    pub trace_tail: Vec<String>,
}

impl fmt::Display for SimFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "simulation with seed {} failed at {} ms: {}", self.seed, self.at_ms, self.violation)?;
        writeln!(f, "last {} events:", self.trace_tail.len())?;
        for line in &self.trace_tail {
            writeln!(f, "  {line}")?;
        }
        Ok(())
    }
}

impl std::error::Error for SimFailure {}

/// Runs `scenario` with `seed` to the end and checks it.
pub fn run(seed: u64, scenario: &Scenario) -> Result<SimReport, SimFailure> {
    world::World::new(seed, scenario)?.run()
}
