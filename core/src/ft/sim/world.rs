//! The simulated cluster: the network, the edge node (coordinator, sources,
//! sink), the worker nodes (operator instances, backup stores), fault
//! injection, and the checks made while it runs.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};
use std::hash::{Hash, Hasher};
use std::rc::Rc;

use spate_state::keyspace::BinRange;

use super::check::{bin_of_key, round_records, Rec, Reference};
use super::rng::{Fnv, Rng};
use super::{Scenario, SimFailure, SimOutcome, SimReport, SimStats};
use crate::ft::buffer::{InputDedup, Offer, OutputBuffer};
use crate::ft::checkpoint::{
    BackupLimits, BackupStore, CheckpointAck, CheckpointRecord, CheckpointTracker, TrackerAction,
    TrackerConfig,
};
use crate::ft::detector::{Declared, DetectorConfig, FailureDetector, FenceCause, FenceSet};
use crate::ft::recovery::{
    InstanceSpec, NodeRole, Phase, Recovery, RecoveryAction, RecoveryConfig, RecoveryError, RestoreFailure,
    RestorePlan, RestoreSource, Restored, Unrecoverable, UnrecoverableReason,
};
use crate::ft::{ChannelId, CheckpointId, Epoch, Incarnation, InstanceId, NodeId, Seq};

/// The node of the coordinator, the sources and the sink. It never fails.
const EDGE: NodeId = NodeId(0);
const EDGE_INC: Incarnation = Incarnation(1);
/// Events kept for a failure report.
const TRACE_TAIL: usize = 80;
/// Accounting size of a record and of a batch header in output buffers.
const REC_BYTES: usize = 16;
const BATCH_HEADER_BYTES: usize = 32;
/// State entries per checkpoint chunk.
const STATE_ENTRIES_PER_CHUNK: usize = 8;
/// Most chunks per checkpoint a backup accepts.
const CHUNKS_MAX: u32 = 64;
/// Checkpoints in flight per instance.
const PENDING_CHECKPOINTS_MAX: usize = 2;

type Records = Rc<Vec<Rec>>;

fn batch_bytes(records: usize) -> usize {
    BATCH_HEADER_BYTES + records * REC_BYTES
}

/// The kind of a simulated message, for traces.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MsgKind {
    /// A data batch.
    Batch,
    /// A checkpoint chunk.
    Chunk,
    /// A replacement asks a backup for a checkpoint.
    Fetch,
    /// The backup's answer.
    FetchReply,
    /// A coordinator command.
    Command,
    /// A worker's report to the coordinator.
    Report,
    /// A heartbeat.
    Heartbeat,
    /// The coordinator's answer to a heartbeat from a fenced incarnation.
    HeartbeatReply,
    /// A command's acknowledgement.
    CommandAck,
    /// The coordinator's answer to a report.
    ReportReply,
    /// A backup's checkpoint acknowledgement.
    Ack,
    /// A receiver's delivery acknowledgement.
    Consumed,
    /// A trim of an upstream buffer.
    Trim,
}

/// One entry of a simulation trace. Node, instance and incarnation numbers
/// are the raw ids.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TraceEvent {
    /// A message was sent.
    Send {
        /// Sender node.
        from: u32,
        /// Receiver node.
        to: u32,
        /// What.
        kind: MsgKind,
    },
    /// A message arrived and was handled.
    Deliver {
        /// Sender node.
        from: u32,
        /// Receiver node.
        to: u32,
        /// What.
        kind: MsgKind,
    },
    /// A datagram was lost.
    Lost {
        /// Sender node.
        from: u32,
        /// Receiver node.
        to: u32,
        /// What.
        kind: MsgKind,
    },
    /// A message was dropped: broken connection, dead or restarted receiver.
    Dropped {
        /// Sender node.
        from: u32,
        /// Receiver node.
        to: u32,
        /// What.
        kind: MsgKind,
    },
    /// A worker crashed.
    Crash {
        /// The node.
        node: u32,
        /// The incarnation that died.
        incarnation: u64,
    },
    /// A worker restarted.
    Restart {
        /// The node.
        node: u32,
        /// The new incarnation.
        incarnation: u64,
    },
    /// A worker froze.
    Pause {
        /// The node.
        node: u32,
        /// Until when.
        until_ms: u64,
    },
    /// A frozen worker resumed.
    Resume {
        /// The node.
        node: u32,
    },
    /// A connection broke.
    Break {
        /// One end.
        a: u32,
        /// The other end.
        b: u32,
    },
    /// The coordinator declared a node incarnation failed.
    Declared {
        /// The node.
        node: u32,
        /// The incarnation.
        incarnation: u64,
        /// Whether it was in fact alive (a false suspicion).
        alive: bool,
    },
    /// A restore was planned.
    RestorePlanned {
        /// The instance.
        instance: u32,
        /// The epoch.
        epoch: u64,
        /// The replacement node.
        node: u32,
    },
    /// A replacement restored.
    Restored {
        /// The instance.
        instance: u32,
        /// The epoch.
        epoch: u64,
        /// The round the restored state had consumed.
        round: u64,
    },
    /// The coordinator recorded a covered checkpoint.
    Covered {
        /// The instance.
        instance: u32,
        /// The checkpoint's epoch.
        epoch: u64,
        /// The checkpoint's number.
        n: u64,
    },
    /// The coordinator declared an instance unrecoverable.
    Unrecoverable {
        /// The instance.
        instance: u32,
    },
    /// A source produced a round.
    Produced {
        /// The source.
        source: u32,
        /// The round.
        round: u64,
    },
}

/// The pieces of a checkpoint: one `Meta` and the state in `State` chunks.
#[derive(Debug)]
enum Part {
    Meta {
        /// Rounds consumed on every input channel.
        round: Seq,
        /// The output buffer's trim point.
        out_trimmed: Seq,
        /// Output batches `out_trimmed + 1 ..= round`.
        out: Vec<Records>,
    },
    State(Vec<(u32, i64)>),
}

type Snapshot = Rc<Vec<Rc<Part>>>;

#[derive(Clone, Debug)]
enum Command {
    Restore(RestorePlan),
    RecreateBackup { instance: InstanceId, epoch: Epoch, replacing: Option<NodeId>, new_backup: NodeId },
    RemoveBackup { instance: InstanceId, epoch: Epoch, backup: NodeId },
    Stop { instance: InstanceId, epoch: Epoch },
    Fence { node: NodeId, incarnation: Incarnation },
}

#[derive(Clone, Debug)]
enum Report {
    Register { slots: u32 },
    Covered { instance: InstanceId, epoch: Epoch, checkpoint: CheckpointId, holders: Vec<NodeId> },
    Restored(Restored),
    RestoreFailed { instance: InstanceId, epoch: Epoch, backup: NodeId },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reply {
    Ok,
    Refused,
    Fenced,
}

#[derive(Clone, Debug)]
enum Msg {
    Batch {
        channel: ChannelId,
        producer_epoch: Epoch,
        consumer_epoch: Epoch,
        seq: Seq,
        records: Records,
    },
    Chunk {
        instance: InstanceId,
        checkpoint: CheckpointId,
        index: u32,
        count: u32,
        part: Rc<Part>,
    },
    Fetch {
        owner: InstanceId,
        at_least: CheckpointId,
        requester: InstanceId,
        epoch: Epoch,
    },
    FetchReply {
        requester: InstanceId,
        epoch: Epoch,
        found: Option<(CheckpointId, Snapshot)>,
    },
    /// `seq`: the command's place in the order of commands to that node
    /// incarnation, which applies them in order; `None`: apply at once.
    Command {
        id: u64,
        seq: Option<u64>,
        cmd: Command,
    },
    Report {
        id: u64,
        report: Report,
    },
    Heartbeat,
    HeartbeatReply,
    CommandAck {
        id: u64,
    },
    ReportReply {
        id: u64,
        reply: Reply,
    },
    Ack(CheckpointAck),
    Consumed {
        channel: ChannelId,
        epoch: Epoch,
        upto: Seq,
    },
    Trim {
        channel: ChannelId,
        upto: Seq,
    },
}

impl Msg {
    fn kind(&self) -> MsgKind {
        match self {
            Self::Batch { .. } => MsgKind::Batch,
            Self::Chunk { .. } => MsgKind::Chunk,
            Self::Fetch { .. } => MsgKind::Fetch,
            Self::FetchReply { .. } => MsgKind::FetchReply,
            Self::Command { .. } => MsgKind::Command,
            Self::Report { .. } => MsgKind::Report,
            Self::Heartbeat => MsgKind::Heartbeat,
            Self::HeartbeatReply => MsgKind::HeartbeatReply,
            Self::CommandAck { .. } => MsgKind::CommandAck,
            Self::ReportReply { .. } => MsgKind::ReportReply,
            Self::Ack(_) => MsgKind::Ack,
            Self::Consumed { .. } => MsgKind::Consumed,
            Self::Trim { .. } => MsgKind::Trim,
        }
    }

    /// Sent over a FIFO connection (lost only when it breaks), rather than
    /// as a datagram (lost, duplicated and reordered at random).
    fn reliable(&self) -> bool {
        matches!(
            self,
            Self::Batch { .. }
                | Self::Chunk { .. }
                | Self::Fetch { .. }
                | Self::FetchReply { .. }
                | Self::Command { .. }
                | Self::Report { .. }
        )
    }
}

#[derive(Clone, Debug)]
struct Envelope {
    from: NodeId,
    from_inc: Incarnation,
    to: NodeId,
    /// The incarnation addressed; `None`: whichever is alive.
    to_inc: Option<Incarnation>,
    /// The connection generation it was sent on (FIFO messages only).
    generation: Option<u64>,
    msg: Msg,
}

#[derive(Debug)]
enum Event {
    Tick,
    Deliver(Envelope),
    Crash(Option<NodeId>),
    SelfFence(NodeId, Incarnation),
    Pause(u64),
    Resume(NodeId),
    Restart(NodeId),
    Break,
    ConnLost { observer: NodeId, peer: NodeId },
}

struct Scheduled {
    at: u64,
    order: u64,
    event: Event,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.order) == (other.at, other.order)
    }
}

impl Eq for Scheduled {}

impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Scheduled {
    /// Reversed, so that `BinaryHeap` pops the earliest (then first
    /// scheduled) event.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.at, other.order).cmp(&(self.at, self.order))
    }
}

struct Trace {
    hash: Fnv,
    tail: VecDeque<(u64, TraceEvent)>,
}

impl Trace {
    fn record(&mut self, now: u64, event: TraceEvent) {
        (now, event).hash(&mut self.hash);
        if self.tail.len() == TRACE_TAIL {
            self.tail.pop_front();
        }
        self.tail.push_back((now, event));
    }
}

/// Everything handlers share: time, the event queue, the network, the
/// random generators, the trace, counters and the ground truth the checker
/// compares against.
struct Ctx {
    sc: Scenario,
    now: u64,
    queue: BinaryHeap<Scheduled>,
    order: u64,
    net_rng: Rng,
    fault_rng: Rng,
    /// Arrival time of the last FIFO message per directed pair.
    fifo_tail: BTreeMap<(NodeId, NodeId), u64>,
    /// Connection generation per unordered pair; a break bumps it.
    generation: BTreeMap<(NodeId, NodeId), u64>,
    trace: Trace,
    stats: SimStats,
    /// Ground truth: when each node incarnation was declared failed.
    declared_at: BTreeMap<(NodeId, Incarnation), u64>,
    /// Ground truth per node: current incarnation and whether it is up.
    truth: Vec<(Incarnation, bool)>,
    crashes_left: u32,
    violation: Option<String>,
    reference: Reference,
}

impl Ctx {
    fn schedule(&mut self, delay_ms: u64, event: Event) {
        self.schedule_at(self.now + delay_ms, event);
    }

    fn schedule_at(&mut self, at: u64, event: Event) {
        self.order += 1;
        self.queue.push(Scheduled { at, order: self.order, event });
    }

    fn trace(&mut self, event: TraceEvent) {
        self.trace.record(self.now, event);
    }

    fn violate(&mut self, what: String) {
        if self.violation.is_none() {
            self.violation = Some(what);
        }
    }

    fn link(a: NodeId, b: NodeId) -> (NodeId, NodeId) {
        (a.min(b), a.max(b))
    }

    fn generation(&self, a: NodeId, b: NodeId) -> u64 {
        self.generation.get(&Self::link(a, b)).copied().unwrap_or(0)
    }

    fn break_link(&mut self, a: NodeId, b: NodeId) {
        *self.generation.entry(Self::link(a, b)).or_insert(0) += 1;
    }

    fn send(&mut self, from: (NodeId, Incarnation), to: NodeId, to_inc: Option<Incarnation>, msg: Msg) {
        let kind = msg.kind();
        self.stats.messages += 1;
        self.trace(TraceEvent::Send { from: from.0 .0, to: to.0, kind });
        let net = self.sc.net;
        if msg.reliable() {
            let delay = self.net_rng.range(net.delay_min_ms, net.delay_max_ms);
            let tail = self.fifo_tail.entry((from.0, to)).or_insert(0);
            let at = (self.now + delay).max(*tail);
            *tail = at;
            let generation = Some(self.generation(from.0, to));
            self.schedule_at(
                at,
                Event::Deliver(Envelope { from: from.0, from_inc: from.1, to, to_inc, generation, msg }),
            );
            return;
        }
        if self.net_rng.chance(net.datagram_loss_per_mille) {
            self.stats.datagrams_lost += 1;
            self.trace(TraceEvent::Lost { from: from.0 .0, to: to.0, kind });
            return;
        }
        let copies = if self.net_rng.chance(net.datagram_dup_per_mille) { 2 } else { 1 };
        for _ in 0..copies {
            let delay = self.net_rng.range(net.delay_min_ms, net.delay_max_ms);
            let envelope =
                Envelope { from: from.0, from_inc: from.1, to, to_inc, generation: None, msg: msg.clone() };
            self.schedule(delay, Event::Deliver(envelope));
        }
        self.stats.datagrams_duplicated += copies - 1;
    }

    /// Checks that a message from `node`'s `incarnation` may have an
    /// effect: the ground truth says it was not declared failed.
    fn check_not_fenced(&mut self, node: NodeId, incarnation: Incarnation, what: &str) {
        if let Some(at) = self.declared_at.get(&(node, incarnation)) {
            let what = format!("{what} from {node} {incarnation}, declared failed at {at} ms, had an effect");
            self.violate(what);
        }
    }

    fn faults_allowed(&self) -> bool {
        self.now < self.sc.faults.horizon_ms && self.crashes_left > 0
    }
}

/// Go-back-N sending over a buffer: a window of batches beyond the last
/// acknowledged one, rewound after a timeout or a lost connection.
#[derive(Clone, Copy, Debug, Default)]
struct SendState {
    sent_upto: Seq,
    delivered_upto: Seq,
    last_progress_ms: u64,
}

impl SendState {
    fn starting_after(seq: Seq, now: u64) -> Self {
        Self { sent_upto: seq, delivered_upto: seq, last_progress_ms: now }
    }

    fn acked(&mut self, upto: Seq, now: u64) {
        if upto > self.delivered_upto {
            self.delivered_upto = upto;
            self.last_progress_ms = now;
        }
        self.sent_upto = self.sent_upto.max(upto);
    }

    fn rewind(&mut self) {
        self.sent_upto = self.delivered_upto;
    }

    fn pump(
        &mut self,
        buffer: &OutputBuffer<Records>,
        sc: &Scenario,
        now: u64,
        mut emit: impl FnMut(Seq, &Records),
    ) {
        if self.sent_upto > self.delivered_upto
            && now.saturating_sub(self.last_progress_ms) >= sc.retransmit_ms
        {
            self.rewind();
        }
        let start = self.sent_upto.max(buffer.trimmed_upto());
        let end = buffer.last_seq().min(self.delivered_upto + sc.send_window);
        if start >= end {
            return;
        }
        if self.sent_upto <= self.delivered_upto {
            self.last_progress_ms = now;
        }
        for seq in start + 1..=end {
            if let Some(batch) = buffer.get(seq) {
                emit(seq, batch);
            }
        }
        self.sent_upto = end;
    }
}

struct Input {
    dedup: InputDedup,
    queue: VecDeque<(Seq, Records)>,
}

/// A keyed running-sum instance.
struct Op {
    id: InstanceId,
    epoch: Epoch,
    bins: BinRange,
    state: BTreeMap<u32, i64>,
    /// Rounds consumed on every input channel.
    round: Seq,
    inputs: BTreeMap<InstanceId, Input>,
    output: OutputBuffer<Records>,
    send: SendState,
    tracker: Option<CheckpointTracker>,
    snapshots: BTreeMap<CheckpointId, Snapshot>,
    next_checkpoint_ms: u64,
}

impl Op {
    fn snapshot(&self) -> Snapshot {
        let out = self.output.iter().map(|(_, batch)| Rc::clone(batch)).collect();
        let mut parts =
            vec![Rc::new(Part::Meta { round: self.round, out_trimmed: self.output.trimmed_upto(), out })];
        let entries: Vec<(u32, i64)> = self.state.iter().map(|(&k, &v)| (k, v)).collect();
        for chunk in entries.chunks(STATE_ENTRIES_PER_CHUNK) {
            parts.push(Rc::new(Part::State(chunk.to_vec())));
        }
        Rc::new(parts)
    }

    fn record(&self, sink: InstanceId) -> CheckpointRecord {
        CheckpointRecord {
            inputs: self
                .inputs
                .keys()
                .map(|&s| (ChannelId { producer: s, consumer: self.id }, self.round))
                .collect(),
            outputs: vec![(ChannelId { producer: self.id, consumer: sink }, self.output.last_seq())],
        }
    }
}

fn tracker_config(sc: &Scenario) -> TrackerConfig {
    TrackerConfig { resend_after_ms: sc.retransmit_ms * 2, pending_max: PENDING_CHECKPOINTS_MAX }
}

struct PendingRestore {
    plan: RestorePlan,
    last_fetch_ms: u64,
}

struct Worker {
    id: NodeId,
    inc: Incarnation,
    up: bool,
    paused: bool,
    deferred: VecDeque<Envelope>,
    next_heartbeat_ms: u64,
    fences: FenceSet,
    ops: BTreeMap<InstanceId, Op>,
    restoring: BTreeMap<InstanceId, PendingRestore>,
    store: BackupStore<Rc<Part>>,
    outbox: BTreeMap<u64, (Report, u64)>,
    next_report: u64,
    /// Commands are applied in the coordinator's order.
    next_command_seq: u64,
    held_commands: BTreeMap<u64, Command>,
}

/// Where the sources and the sink are, and who the operators are.
#[derive(Clone, Copy)]
struct Layout {
    sources: u32,
    sink: InstanceId,
}

impl Layout {
    fn source_ids(self) -> impl Iterator<Item = InstanceId> {
        (0..self.sources).map(InstanceId)
    }
}

impl Worker {
    fn new(id: NodeId, inc: Incarnation) -> Self {
        Self {
            id,
            inc,
            up: true,
            paused: false,
            deferred: VecDeque::new(),
            next_heartbeat_ms: 0,
            fences: FenceSet::new(),
            ops: BTreeMap::new(),
            restoring: BTreeMap::new(),
            store: BackupStore::new(BackupLimits { chunks_max: CHUNKS_MAX }),
            outbox: BTreeMap::new(),
            next_report: 0,
            next_command_seq: 0,
            held_commands: BTreeMap::new(),
        }
    }

    fn me(&self) -> (NodeId, Incarnation) {
        (self.id, self.inc)
    }

    fn report(&mut self, report: Report, ctx: &mut Ctx) {
        let id = self.next_report;
        self.next_report += 1;
        ctx.send(self.me(), EDGE, None, Msg::Report { id, report: report.clone() });
        self.outbox.insert(id, (report, ctx.now));
    }

    fn tick(&mut self, layout: Layout, ctx: &mut Ctx) {
        let now = ctx.now;
        let me = self.me();
        if now >= self.next_heartbeat_ms {
            self.next_heartbeat_ms = now + ctx.sc.heartbeat_interval_ms;
            ctx.send(me, EDGE, None, Msg::Heartbeat);
        }
        for (&id, (report, last)) in &mut self.outbox {
            if now.saturating_sub(*last) >= ctx.sc.retransmit_ms {
                *last = now;
                ctx.send(me, EDGE, None, Msg::Report { id, report: report.clone() });
            }
        }
        for pending in self.restoring.values_mut() {
            if now.saturating_sub(pending.last_fetch_ms) >= ctx.sc.retransmit_ms {
                pending.last_fetch_ms = now;
                send_fetch(me, &pending.plan, ctx);
            }
        }
        let ids: Vec<InstanceId> = self.ops.keys().copied().collect();
        for id in ids {
            self.tick_op(id, layout, ctx);
        }
    }

    fn tick_op(&mut self, id: InstanceId, layout: Layout, ctx: &mut Ctx) {
        let me = self.me();
        let now = ctx.now;
        let sc = ctx.sc;
        let Some(op) = self.ops.get_mut(&id) else { return };
        // Process every complete round, in source order, while the output
        // buffer has room (otherwise: throttle, never drop).
        let max_bytes = batch_bytes((sc.records_per_round * sc.sources) as usize);
        loop {
            let r = op.round + 1;
            let ready = op.inputs.values().all(|i| i.queue.front().is_some_and(|(seq, _)| *seq == r));
            if !ready || op.inputs.is_empty() || !op.output.has_room(max_bytes) {
                break;
            }
            let mut out = Vec::new();
            for input in op.inputs.values_mut() {
                let Some((_, records)) = input.queue.pop_front() else { continue };
                for rec in records.iter() {
                    if !op.bins.contains(bin_of_key(rec.key, sc.bins_log2)) {
                        ctx.violate(format!(
                            "record {} of key {} routed to {} which owns {}",
                            rec.id, rec.key, id, op.bins
                        ));
                    }
                    let sum = op.state.entry(rec.key).or_insert(0);
                    *sum += rec.value;
                    out.push(Rec { id: rec.id, key: rec.key, value: *sum });
                }
            }
            let bytes = batch_bytes(out.len());
            match op.output.push(Rc::new(out), bytes) {
                Ok(seq) if seq == r => {}
                other => ctx.violate(format!("{id} round {r}: output push gave {other:?}")),
            }
            op.round = r;
            let _ = op.output.trim(op.send.delivered_upto.min(op.output.last_seq()));
        }
        // Send output to the sink.
        let (epoch, sink) = (op.epoch, layout.sink);
        op.send.pump(&op.output, &sc, now, |seq, records| {
            let channel = ChannelId { producer: id, consumer: sink };
            let msg = Msg::Batch {
                channel,
                producer_epoch: epoch,
                consumer_epoch: Epoch(0),
                seq,
                records: Rc::clone(records),
            };
            ctx.send(me, EDGE, None, msg);
        });
        // Checkpoint.
        let mut actions = Vec::new();
        if op.tracker.is_some() && now >= op.next_checkpoint_ms {
            op.next_checkpoint_ms = now + sc.checkpoint_interval_ms;
            let record = op.record(layout.sink);
            let snapshot = op.snapshot();
            let begun = op.tracker.as_mut().map(|t| t.begin(record.clone(), now));
            if let Some(Ok((checkpoint, streams))) = begun {
                op.snapshots.insert(checkpoint, snapshot);
                actions.extend(streams);
                if sc.sabotage.trim_before_cover {
                    for (channel, upto) in record.inputs {
                        ctx.send(me, EDGE, None, Msg::Trim { channel, upto });
                    }
                }
                if ctx.faults_allowed() && ctx.fault_rng.chance(sc.faults.crash_in_checkpoint_per_mille) {
                    let backups = op.tracker.as_ref().map(|t| t.backups().to_vec()).unwrap_or_default();
                    let pick = ctx.fault_rng.below(backups.len() as u64 + 1) as usize;
                    let victim = backups.get(pick).copied().unwrap_or(me.0);
                    let delay = ctx.fault_rng.range(0, 3);
                    ctx.schedule(delay, Event::Crash(Some(victim)));
                }
            }
        }
        if let Some(t) = op.tracker.as_mut() {
            actions.extend(t.tick(now));
        }
        self.tracker_actions(id, actions, ctx);
    }

    fn tracker_actions(&mut self, id: InstanceId, actions: Vec<TrackerAction>, ctx: &mut Ctx) {
        let me = self.me();
        for action in actions {
            let Some(op) = self.ops.get_mut(&id) else { return };
            match action {
                TrackerAction::Stream { backup, checkpoint } => {
                    let Some(parts) = op.snapshots.get(&checkpoint) else { continue };
                    let count = parts.len() as u32;
                    for (index, part) in parts.iter().enumerate() {
                        let msg = Msg::Chunk {
                            instance: id,
                            checkpoint,
                            index: index as u32,
                            count,
                            part: Rc::clone(part),
                        };
                        ctx.send(me, backup, None, msg);
                    }
                }
                TrackerAction::Covered { checkpoint, backups, .. } => {
                    op.snapshots.remove(&checkpoint);
                    let epoch = op.epoch;
                    self.report(Report::Covered { instance: id, epoch, checkpoint, holders: backups }, ctx);
                }
                TrackerAction::Discard { checkpoint } => {
                    op.snapshots.remove(&checkpoint);
                }
                TrackerAction::TrimUpstream { channel, upto } => {
                    ctx.send(me, EDGE, None, Msg::Trim { channel, upto });
                }
            }
        }
    }

    fn on_message(&mut self, env: Envelope, layout: Layout, ctx: &mut Ctx) {
        let me = self.me();
        let (from, from_inc) = (env.from, env.from_inc);
        match env.msg {
            Msg::Command { id, seq, cmd } => {
                ctx.send(me, EDGE, None, Msg::CommandAck { id });
                let Some(seq) = seq else {
                    self.on_command(cmd, layout, ctx);
                    return;
                };
                if seq >= self.next_command_seq {
                    self.held_commands.insert(seq, cmd);
                }
                while let Some(cmd) = self.held_commands.remove(&self.next_command_seq) {
                    self.next_command_seq += 1;
                    self.on_command(cmd, layout, ctx);
                }
            }
            Msg::HeartbeatReply => ctx.schedule(0, Event::SelfFence(self.id, self.inc)),
            Msg::ReportReply { id, reply } => self.on_reply(id, reply, ctx),
            Msg::Batch { channel, consumer_epoch, seq, records, .. } => {
                let Some(op) = self.ops.get_mut(&channel.consumer) else { return };
                if op.epoch != consumer_epoch {
                    return;
                }
                let Some(input) = op.inputs.get_mut(&channel.producer) else { return };
                match input.dedup.offer(seq) {
                    Ok(Offer::Deliver) => input.queue.push_back((seq, records)),
                    Ok(Offer::Duplicate) => ctx.stats.duplicates_dropped += 1,
                    Err(_gap) => {}
                }
                let upto = input.dedup.last_consumed();
                ctx.send(me, EDGE, None, Msg::Consumed { channel, epoch: op.epoch, upto });
            }
            Msg::Consumed { channel, upto, .. } => {
                let Some(op) = self.ops.get_mut(&channel.producer) else { return };
                op.send.acked(upto, ctx.now);
                let _ = op.output.trim(upto.min(op.output.last_seq()));
            }
            Msg::Chunk { instance, checkpoint, index, count, part } => {
                if self.fences.is_fenced(from, from_inc) && !ctx.sc.sabotage.no_fencing {
                    ctx.stats.fenced_refusals += 1;
                    return;
                }
                match self.store.on_chunk(instance, checkpoint, index, count, part) {
                    Ok(outcome) if outcome.should_ack() => {
                        let ack = CheckpointAck { instance, checkpoint, backup: self.id };
                        ctx.send(me, from, Some(from_inc), Msg::Ack(ack));
                    }
                    Ok(_) => {}
                    Err(e) => ctx.violate(format!("{} refused a chunk of {instance}: {e}", self.id)),
                }
            }
            Msg::Ack(ack) => {
                let Some(op) = self.ops.get_mut(&ack.instance) else { return };
                let Some(tracker) = op.tracker.as_mut() else { return };
                if let Ok(actions) = tracker.on_ack(ack) {
                    self.tracker_actions(ack.instance, actions, ctx);
                }
            }
            Msg::Fetch { owner, at_least, requester, epoch } => {
                self.store.promise(owner, epoch);
                let found = self
                    .store
                    .latest(owner)
                    .filter(|(id, _)| *id >= at_least)
                    .map(|(id, parts)| (id, Rc::new(parts.to_vec())));
                ctx.send(me, from, Some(from_inc), Msg::FetchReply { requester, epoch, found });
            }
            Msg::FetchReply { requester, epoch, found } => {
                if self.restoring.get(&requester).is_none_or(|p| p.plan.epoch != epoch) {
                    return;
                }
                let Some(pending) = self.restoring.remove(&requester) else { return };
                match found {
                    Some(found) => self.finish_restore(pending.plan, Some(found), layout, ctx),
                    None => {
                        let report = Report::RestoreFailed { instance: requester, epoch, backup: from };
                        self.report(report, ctx);
                    }
                }
            }
            Msg::Report { .. } | Msg::Heartbeat | Msg::CommandAck { .. } | Msg::Trim { .. } => {
                ctx.violate(format!("{} got a message meant for the coordinator", self.id));
            }
        }
    }

    fn on_reply(&mut self, id: u64, reply: Reply, ctx: &mut Ctx) {
        let Some((report, _)) = self.outbox.remove(&id) else { return };
        let me = self.me();
        match (report, reply) {
            (_, Reply::Fenced) => ctx.schedule(0, Event::SelfFence(self.id, self.inc)),
            (Report::Covered { instance, epoch, checkpoint, .. }, Reply::Ok) => {
                let Some(op) = self.ops.get_mut(&instance).filter(|op| op.epoch == epoch) else { return };
                let Some(tracker) = op.tracker.as_mut().filter(|t| t.epoch() == epoch) else { return };
                for action in tracker.confirm_covered(checkpoint).unwrap_or_default() {
                    if let TrackerAction::TrimUpstream { channel, upto } = action {
                        ctx.send(me, EDGE, None, Msg::Trim { channel, upto });
                    }
                }
            }
            // The placement was abandoned: drop it.
            (Report::Restored(r), Reply::Refused)
                if self.ops.get(&r.instance).is_some_and(|op| op.epoch == r.epoch) =>
            {
                self.ops.remove(&r.instance);
            }
            _ => {}
        }
    }

    fn on_command(&mut self, cmd: Command, layout: Layout, ctx: &mut Ctx) {
        match cmd {
            Command::Fence { node, incarnation } => {
                if node == self.id && incarnation == self.inc {
                    ctx.schedule(0, Event::SelfFence(self.id, self.inc));
                } else {
                    self.fences.fence(node, incarnation);
                }
            }
            Command::Stop { instance, epoch } => {
                if self.ops.get(&instance).is_some_and(|op| op.epoch <= epoch) {
                    self.ops.remove(&instance);
                }
                if self.restoring.get(&instance).is_some_and(|p| p.plan.epoch <= epoch) {
                    self.restoring.remove(&instance);
                }
            }
            Command::RemoveBackup { instance, epoch, backup } => {
                let Some(op) = self.ops.get_mut(&instance).filter(|op| op.epoch == epoch) else { return };
                let Some(tracker) = op.tracker.as_mut() else { return };
                match tracker.remove_backup(backup) {
                    Ok(actions) => self.tracker_actions(instance, actions, ctx),
                    Err(e) => {
                        ctx.violate(format!("{}: cannot remove backup {backup} of {instance}: {e}", self.id))
                    }
                }
            }
            Command::RecreateBackup { instance, epoch, replacing, new_backup } => {
                let own = self.id;
                let sc = ctx.sc;
                let Some(op) = self.ops.get_mut(&instance).filter(|op| op.epoch == epoch) else { return };
                let result = if let Some(t) = op.tracker.as_mut() {
                    t.replace_backup(replacing, new_backup)
                } else {
                    match CheckpointTracker::new(instance, epoch, own, vec![new_backup], tracker_config(&sc))
                    {
                        Ok(t) => {
                            op.tracker = Some(t);
                            Ok(Vec::new())
                        }
                        Err(e) => Err(e),
                    }
                };
                match result {
                    Ok(discards) => {
                        for a in discards {
                            if let TrackerAction::Discard { checkpoint } = a {
                                op.snapshots.remove(&checkpoint);
                            }
                        }
                        op.next_checkpoint_ms = ctx.now;
                    }
                    Err(e) => ctx.violate(format!("{own}: bad backup for {instance}: {e}")),
                }
            }
            Command::Restore(plan) => {
                if self.ops.get(&plan.instance).is_some_and(|op| op.epoch >= plan.epoch)
                    || self.restoring.get(&plan.instance).is_some_and(|p| p.plan.epoch >= plan.epoch)
                {
                    return; // a repeated command
                }
                self.ops.remove(&plan.instance);
                self.restoring.remove(&plan.instance);
                match plan.source {
                    RestoreSource::Initial => self.finish_restore(plan, None, layout, ctx),
                    RestoreSource::Backup { node, owner, at_least } if node == self.id => {
                        self.store.promise(owner, plan.epoch);
                        let found = self
                            .store
                            .latest(owner)
                            .filter(|(id, _)| *id >= at_least)
                            .map(|(id, parts)| (id, Rc::new(parts.to_vec())));
                        match found {
                            Some(found) => self.finish_restore(plan, Some(found), layout, ctx),
                            None => {
                                let report = Report::RestoreFailed {
                                    instance: plan.instance,
                                    epoch: plan.epoch,
                                    backup: node,
                                };
                                self.report(report, ctx);
                            }
                        }
                    }
                    RestoreSource::Backup { .. } => {
                        send_fetch(self.me(), &plan, ctx);
                        self.restoring.insert(plan.instance, PendingRestore { plan, last_fetch_ms: ctx.now });
                    }
                }
            }
        }
    }

    /// Builds the instance from a checkpoint (or the initial state), keeping
    /// only its key range, and reports it restored.
    fn finish_restore(
        &mut self,
        plan: RestorePlan,
        found: Option<(CheckpointId, Snapshot)>,
        layout: Layout,
        ctx: &mut Ctx,
    ) {
        let sc = ctx.sc;
        let in_range = |key: u32| plan.bins.contains(bin_of_key(key, sc.bins_log2));
        let (mut round, mut out_trimmed, mut out, mut state) = (0, 0, Vec::new(), BTreeMap::new());
        let mut metas = 0;
        if let Some((_, parts)) = &found {
            for part in parts.iter() {
                match part.as_ref() {
                    Part::Meta { round: r, out_trimmed: t, out: o } => {
                        metas += 1;
                        (round, out_trimmed) = (*r, *t);
                        out = o.clone();
                    }
                    Part::State(entries) => {
                        state.extend(entries.iter().copied().filter(|(k, _)| in_range(*k)))
                    }
                }
            }
            if metas != 1 {
                ctx.violate(format!("checkpoint of {} has {metas} meta chunks", plan.instance));
                return;
            }
        }
        let expected = ctx.reference.state_after(round, plan.bins);
        if state != expected {
            ctx.violate(format!(
                "{} restored at round {round} with state {state:?}, failure-free state is {expected:?}",
                plan.instance
            ));
        }
        let mut output = OutputBuffer::starting_after(sc.buffer, out_trimmed);
        for (i, batch) in out.iter().enumerate() {
            let kept: Vec<Rec> = batch.iter().copied().filter(|r| in_range(r.key)).collect();
            let bytes = batch_bytes(kept.len());
            match output.push(Rc::new(kept), bytes) {
                Ok(seq) if seq == out_trimmed + 1 + i as Seq => {}
                other => ctx.violate(format!("{}: restoring output batch {i}: {other:?}", plan.instance)),
            }
        }
        if output.last_seq() != round {
            ctx.violate(format!(
                "{}: restored output ends at {} not {round}",
                plan.instance,
                output.last_seq()
            ));
        }
        let tracker = if plan.backups.is_empty() {
            None
        } else {
            match CheckpointTracker::new(
                plan.instance,
                plan.epoch,
                self.id,
                plan.backups.clone(),
                tracker_config(&sc),
            ) {
                Ok(t) => Some(t),
                Err(e) => {
                    ctx.violate(format!("{}: bad restore plan: {e}", plan.instance));
                    None
                }
            }
        };
        let inputs = layout
            .source_ids()
            .map(|s| (s, Input { dedup: InputDedup::starting_after(round), queue: VecDeque::new() }))
            .collect();
        let op = Op {
            id: plan.instance,
            epoch: plan.epoch,
            bins: plan.bins,
            state,
            round,
            inputs,
            output,
            send: SendState::starting_after(out_trimmed, ctx.now),
            tracker,
            snapshots: BTreeMap::new(),
            next_checkpoint_ms: ctx.now,
        };
        self.ops.insert(plan.instance, op);
        ctx.trace(TraceEvent::Restored { instance: plan.instance.0, epoch: plan.epoch.0, round });
        let restored = Restored {
            instance: plan.instance,
            epoch: plan.epoch,
            node: self.id,
            checkpoint: found.map(|(id, _)| id),
            inputs: layout.source_ids().map(|s| (s, round)).collect(),
        };
        self.report(Report::Restored(restored), ctx);
    }

    fn conn_lost(&mut self, peer: NodeId) {
        if peer == EDGE {
            for op in self.ops.values_mut() {
                op.send.rewind();
            }
        }
    }
}

fn send_fetch(me: (NodeId, Incarnation), plan: &RestorePlan, ctx: &mut Ctx) {
    if let RestoreSource::Backup { node, owner, at_least } = plan.source {
        let msg = Msg::Fetch { owner, at_least, requester: plan.instance, epoch: plan.epoch };
        ctx.send(me, node, None, msg);
    }
}

/// One source's output channel.
struct SourceChannel {
    buffer: OutputBuffer<Records>,
    node: NodeId,
    inc: Incarnation,
    epoch: Epoch,
    send: SendState,
}

struct Source {
    id: InstanceId,
    produced: Seq,
    /// Bin → consumer.
    routing: Vec<InstanceId>,
    channels: BTreeMap<InstanceId, SourceChannel>,
}

/// The sink's view of one producer.
struct SinkChannel {
    dedup: InputDedup,
    node: NodeId,
    inc: Incarnation,
    epoch: Epoch,
    accepting: bool,
}

/// A re-route waiting for its replay.
struct Reroute {
    old_consumer: InstanceId,
    bins: BinRange,
    node: NodeId,
    inc: Incarnation,
    epoch: Epoch,
}

struct OutCommand {
    to: NodeId,
    inc: Incarnation,
    seq: u64,
    cmd: Command,
    last_sent_ms: u64,
}

/// Node 0: coordinator, sources and sink.
struct Edge {
    detector: FailureDetector,
    recovery: Recovery,
    outbox: BTreeMap<u64, OutCommand>,
    next_command: u64,
    /// The next command sequence number per node incarnation.
    command_seq: BTreeMap<(NodeId, Incarnation), u64>,
    sources: Vec<Source>,
    sink: BTreeMap<InstanceId, SinkChannel>,
    /// Record id → times emitted by the sink.
    emitted: BTreeMap<u64, u32>,
    reroutes: BTreeMap<(InstanceId, InstanceId), Reroute>,
    unrecoverable: Option<Unrecoverable>,
}

impl Edge {
    fn command(&mut self, to: NodeId, inc: Incarnation, cmd: Command, ctx: &mut Ctx) {
        let id = self.next_command;
        self.next_command += 1;
        let next = self.command_seq.entry((to, inc)).or_insert(0);
        let seq = *next;
        *next += 1;
        ctx.send((EDGE, EDGE_INC), to, Some(inc), Msg::Command { id, seq: Some(seq), cmd: cmd.clone() });
        self.outbox.insert(id, OutCommand { to, inc, seq, cmd, last_sent_ms: ctx.now });
    }

    fn tick(&mut self, ctx: &mut Ctx) {
        let now = ctx.now;
        for declared in self.detector.tick(now) {
            self.on_declared(declared, ctx);
        }
        let actions = self.recovery.tick(now);
        self.apply(actions, ctx);
        let detector = &self.detector;
        self.outbox.retain(|_, c| detector.admit(c.to, c.inc).is_ok());
        for (&id, c) in &mut self.outbox {
            if now.saturating_sub(c.last_sent_ms) >= ctx.sc.retransmit_ms {
                c.last_sent_ms = now;
                let msg = Msg::Command { id, seq: Some(c.seq), cmd: c.cmd.clone() };
                ctx.send((EDGE, EDGE_INC), c.to, Some(c.inc), msg);
            }
        }
        let sc = ctx.sc;
        for source in &mut self.sources {
            while source.produced < sc.rounds && now >= (source.produced + 1) * sc.round_interval_ms {
                let max_bytes = batch_bytes(sc.records_per_round as usize);
                if !source.channels.values().all(|c| c.buffer.has_room(max_bytes)) {
                    ctx.stats.throttled += 1;
                    break;
                }
                let round = source.produced + 1;
                let records = round_records(ctx.reference.seed, &sc, source.id.0, round);
                for (&consumer, channel) in &mut source.channels {
                    let batch: Vec<Rec> = records
                        .iter()
                        .copied()
                        .filter(|r| source.routing[bin_of_key(r.key, sc.bins_log2) as usize] == consumer)
                        .collect();
                    let bytes = batch_bytes(batch.len());
                    if let Err(e) = channel.buffer.push(Rc::new(batch), bytes) {
                        ctx.violate(format!("{} round {round} to {consumer}: {e}", source.id));
                    }
                }
                source.produced = round;
                ctx.trace(TraceEvent::Produced { source: source.id.0, round });
            }
            for (&consumer, channel) in &mut source.channels {
                let (node, inc, epoch) = (channel.node, channel.inc, channel.epoch);
                let producer = source.id;
                channel.send.pump(&channel.buffer, &sc, now, |seq, records| {
                    let msg = Msg::Batch {
                        channel: ChannelId { producer, consumer },
                        producer_epoch: Epoch(1),
                        consumer_epoch: epoch,
                        seq,
                        records: Rc::clone(records),
                    };
                    ctx.send((EDGE, EDGE_INC), node, Some(inc), msg);
                });
            }
        }
    }

    fn on_declared(&mut self, d: Declared, ctx: &mut Ctx) {
        ctx.declared_at.entry((d.node, d.incarnation)).or_insert(ctx.now);
        let (inc, up) = ctx.truth.get(d.node.0 as usize).copied().unwrap_or((Incarnation(0), false));
        let alive = up && inc == d.incarnation;
        ctx.stats.declared += 1;
        ctx.stats.false_suspicions += u64::from(alive);
        ctx.trace(TraceEvent::Declared { node: d.node.0, incarnation: d.incarnation.0, alive });
        let mut actions = self.recovery.node_failed(d.node, d.incarnation, ctx.now);
        if ctx.sc.sabotage.give_up_without_looking {
            for a in &mut actions {
                if let RecoveryAction::Restore(plan) = a {
                    let reason = UnrecoverableReason::NoReplacement { waited_ms: 0 };
                    *a = RecoveryAction::Unrecoverable(Unrecoverable { instance: plan.instance, reason });
                }
            }
        }
        self.apply(actions, ctx);
    }

    fn apply(&mut self, actions: Vec<RecoveryAction>, ctx: &mut Ctx) {
        for action in actions {
            match action {
                RecoveryAction::Fence { node, incarnation } => {
                    if ctx.sc.sabotage.no_fencing {
                        continue;
                    }
                    let alive: Vec<(NodeId, Incarnation)> = self.detector.alive_nodes().collect();
                    for (n, i) in alive {
                        self.command(n, i, Command::Fence { node, incarnation }, ctx);
                    }
                    // Tell the fenced incarnation itself, once: it may be alive.
                    let msg =
                        Msg::Command { id: u64::MAX, seq: None, cmd: Command::Fence { node, incarnation } };
                    ctx.send((EDGE, EDGE_INC), node, Some(incarnation), msg);
                }
                RecoveryAction::Restore(plan) => {
                    ctx.stats.restores += 1;
                    ctx.stats.split_parts += u64::from(plan.parent.is_some());
                    ctx.trace(TraceEvent::RestorePlanned {
                        instance: plan.instance.0,
                        epoch: plan.epoch.0,
                        node: plan.node.0,
                    });
                    if ctx.faults_allowed() && ctx.fault_rng.chance(ctx.sc.faults.crash_in_recovery_per_mille)
                    {
                        let victim = match plan.source {
                            RestoreSource::Backup { node, .. } if ctx.fault_rng.chance(300) => node,
                            _ => plan.node,
                        };
                        let delay = ctx.fault_rng.range(0, 8);
                        ctx.schedule(delay, Event::Crash(Some(victim)));
                    }
                    self.command(plan.node, plan.incarnation, Command::Restore(plan), ctx);
                }
                RecoveryAction::RerouteUpstream {
                    upstream,
                    old_consumer,
                    new_consumer,
                    bins,
                    node,
                    incarnation,
                    epoch,
                } => {
                    let reroute = Reroute { old_consumer, bins, node, inc: incarnation, epoch };
                    self.reroutes.insert((upstream, new_consumer), reroute);
                }
                RecoveryAction::Replay { upstream, channel, after } => {
                    self.replay(upstream, channel, after, ctx)
                }
                RecoveryAction::RerouteDownstream {
                    old_producer,
                    new_producer,
                    node,
                    incarnation,
                    epoch,
                    ..
                } => {
                    let target = SinkChannel {
                        dedup: InputDedup::new(),
                        node,
                        inc: incarnation,
                        epoch,
                        accepting: true,
                    };
                    if let Some(existing) = self.sink.get_mut(&new_producer) {
                        existing.node = node;
                        existing.inc = incarnation;
                        existing.epoch = epoch;
                        existing.accepting = true;
                    } else if let Some(parent) = self.sink.get_mut(&old_producer) {
                        // A split part continues its parent's sequence; the
                        // parent is accepted no more.
                        parent.accepting = false;
                        let last = parent.dedup.last_consumed();
                        self.sink.insert(
                            new_producer,
                            SinkChannel { dedup: InputDedup::starting_after(last), ..target },
                        );
                    } else {
                        ctx.violate(format!("re-route of the sink from unknown {old_producer}"));
                    }
                }
                RecoveryAction::RecreateBackup { instance, epoch, node, replacing, new_backup } => {
                    if let Some(inc) = self.detector.incarnation(node) {
                        self.command(
                            node,
                            inc,
                            Command::RecreateBackup { instance, epoch, replacing, new_backup },
                            ctx,
                        );
                    }
                }
                RecoveryAction::RemoveBackup { instance, epoch, node, backup } => {
                    if let Some(inc) = self.detector.incarnation(node) {
                        self.command(node, inc, Command::RemoveBackup { instance, epoch, backup }, ctx);
                    }
                }
                RecoveryAction::Stop { instance, epoch, node, incarnation } => {
                    if self.detector.admit(node, incarnation).is_ok() {
                        self.command(node, incarnation, Command::Stop { instance, epoch }, ctx);
                    }
                }
                RecoveryAction::Unrecoverable(u) => {
                    ctx.trace(TraceEvent::Unrecoverable { instance: u.instance.0 });
                    if self.unrecoverable.is_none() {
                        self.unrecoverable = Some(u);
                    }
                }
            }
        }
    }

    /// An upstream re-routes a channel (or part of one) and replays its
    /// buffer after the restored position.
    fn replay(&mut self, upstream: InstanceId, channel: ChannelId, after: Seq, ctx: &mut Ctx) {
        let Some(reroute) = self.reroutes.remove(&(upstream, channel.consumer)) else {
            ctx.violate(format!("replay of {channel} without a re-route"));
            return;
        };
        let Some(source) = self.sources.get_mut(upstream.0 as usize) else {
            ctx.violate(format!("replay by unknown upstream {upstream}"));
            return;
        };
        let sc = ctx.sc;
        let Some(old) = source.channels.get_mut(&reroute.old_consumer) else {
            ctx.violate(format!("{upstream} has no channel to {}", reroute.old_consumer));
            return;
        };
        match old.buffer.replay_after(after) {
            Ok(replay) => ctx.stats.batches_replayed += replay.len() as u64,
            Err(e) => {
                ctx.violate(format!("replay of {channel} impossible: {e}"));
                return;
            }
        }
        if reroute.old_consumer == channel.consumer {
            old.node = reroute.node;
            old.inc = reroute.inc;
            old.epoch = reroute.epoch;
            old.send = SendState::starting_after(after, ctx.now);
            return;
        }
        // A split: the part's channel inherits the parent's whole buffer
        // state, numbering included, with the part's records only. Not just
        // the batches after `after`: if the part fails before covering a
        // checkpoint of its own, it is restored again from the parent's
        // covered checkpoint, which may be older than this restore.
        let mut buffer = OutputBuffer::starting_after(sc.buffer, old.buffer.trimmed_upto());
        for (seq, batch) in old.buffer.iter() {
            let kept: Vec<Rec> = batch
                .iter()
                .copied()
                .filter(|r| reroute.bins.contains(bin_of_key(r.key, sc.bins_log2)))
                .collect();
            let bytes = batch_bytes(kept.len());
            match buffer.push(Rc::new(kept), bytes) {
                Ok(s) if s == seq => {}
                other => ctx.violate(format!("split replay of {channel} at {seq}: {other:?}")),
            }
        }
        let new = SourceChannel {
            buffer,
            node: reroute.node,
            inc: reroute.inc,
            epoch: reroute.epoch,
            send: SendState::starting_after(after, ctx.now),
        };
        source.channels.insert(channel.consumer, new);
        for bin in reroute.bins.start..reroute.bins.end {
            if let Some(slot) = source.routing.get_mut(bin as usize) {
                *slot = channel.consumer;
            }
        }
        if !source.routing.contains(&reroute.old_consumer) {
            source.channels.remove(&reroute.old_consumer);
        }
    }

    fn on_message(&mut self, env: Envelope, ctx: &mut Ctx) {
        let (from, inc, now) = (env.from, env.from_inc, ctx.now);
        let admitted = self.detector.heard_from(from, inc, now);
        let no_fencing = ctx.sc.sabotage.no_fencing;
        match env.msg {
            Msg::Heartbeat => {
                if let Err(f) = admitted {
                    if f.cause != FenceCause::Unregistered && !no_fencing {
                        ctx.send((EDGE, EDGE_INC), from, Some(inc), Msg::HeartbeatReply);
                    }
                }
            }
            Msg::Report { id, report: Report::Register { slots } } => {
                let reply = match self.detector.register(from, inc, now) {
                    Ok(declared) => {
                        for d in declared {
                            self.on_declared(d, ctx);
                        }
                        let actions = self.recovery.add_node(from, inc, NodeRole::Spare, slots, now);
                        self.apply(actions, ctx);
                        Reply::Ok
                    }
                    Err(_) => Reply::Fenced,
                };
                ctx.send((EDGE, EDGE_INC), from, Some(inc), Msg::ReportReply { id, reply });
            }
            Msg::Report { id, report } => {
                if let Err(f) = admitted {
                    if !no_fencing {
                        ctx.stats.fenced_refusals += 1;
                        if f.cause != FenceCause::Unregistered {
                            ctx.send(
                                (EDGE, EDGE_INC),
                                from,
                                Some(inc),
                                Msg::ReportReply { id, reply: Reply::Fenced },
                            );
                        }
                        return;
                    }
                }
                if let Some(reply) = self.on_report(from, inc, report, ctx) {
                    ctx.send((EDGE, EDGE_INC), from, Some(inc), Msg::ReportReply { id, reply });
                }
            }
            Msg::CommandAck { id } => {
                if self.outbox.get(&id).is_some_and(|c| c.to == from && c.inc == inc) {
                    self.outbox.remove(&id);
                }
            }
            Msg::Batch { channel, producer_epoch, seq, records, .. } => {
                let Some(chan) = self.sink.get_mut(&channel.producer) else { return };
                if !chan.accepting || chan.epoch != producer_epoch || chan.node != from || chan.inc != inc {
                    return; // not the current placement
                }
                if admitted.is_err() && !no_fencing {
                    ctx.stats.fenced_refusals += 1;
                    return;
                }
                match chan.dedup.offer(seq) {
                    Ok(Offer::Deliver) => {
                        ctx.check_not_fenced(from, inc, "an output batch");
                        emit(&mut self.emitted, &records, ctx);
                    }
                    Ok(Offer::Duplicate) => {
                        ctx.stats.duplicates_dropped += 1;
                        if ctx.sc.sabotage.sink_without_dedup {
                            emit(&mut self.emitted, &records, ctx);
                        }
                    }
                    Err(_gap) => {}
                }
                let upto = chan.dedup.last_consumed();
                ctx.send(
                    (EDGE, EDGE_INC),
                    from,
                    Some(inc),
                    Msg::Consumed { channel, epoch: producer_epoch, upto },
                );
            }
            Msg::Consumed { channel, epoch, upto } => {
                let Some(source) = self.sources.get_mut(channel.producer.0 as usize) else { return };
                let Some(chan) = source.channels.get_mut(&channel.consumer) else { return };
                if chan.node == from && chan.inc == inc && chan.epoch == epoch {
                    chan.send.acked(upto, now);
                }
            }
            Msg::Trim { channel, upto } => {
                let Some(source) = self.sources.get_mut(channel.producer.0 as usize) else { return };
                let Some(chan) = source.channels.get_mut(&channel.consumer) else { return };
                if let Err(e) = chan.buffer.trim(upto) {
                    ctx.violate(format!("trim of {channel}: {e}"));
                }
            }
            other => ctx.violate(format!("the coordinator got a {:?} from {from}", other.kind())),
        }
    }

    /// Handles an admitted report; `None`: no reply (the worker retries).
    fn on_report(&mut self, from: NodeId, inc: Incarnation, report: Report, ctx: &mut Ctx) -> Option<Reply> {
        let now = ctx.now;
        match report {
            Report::Register { .. } => None,
            Report::Covered { instance, epoch, checkpoint, holders } => {
                match self.recovery.on_covered(instance, epoch, from, checkpoint, &holders) {
                    Ok(_) => {
                        ctx.check_not_fenced(from, inc, "a coverage report");
                        ctx.stats.checkpoints_covered += 1;
                        ctx.trace(TraceEvent::Covered {
                            instance: instance.0,
                            epoch: checkpoint.epoch.0,
                            n: checkpoint.n,
                        });
                        Some(Reply::Ok)
                    }
                    Err(RecoveryError::NotRunning { .. }) => None,
                    Err(_) => Some(Reply::Refused),
                }
            }
            Report::Restored(mut restored) => {
                restored.node = from;
                match self.recovery.on_restored(&restored) {
                    Ok(actions) => {
                        if !actions.is_empty() {
                            ctx.check_not_fenced(from, inc, "a restore report");
                            ctx.stats.restored += 1;
                        }
                        self.apply(actions, ctx);
                        Some(Reply::Ok)
                    }
                    Err(_) => Some(Reply::Refused),
                }
            }
            Report::RestoreFailed { instance, epoch, backup } => {
                let failure = RestoreFailure::NoCheckpoint { backup };
                match self.recovery.on_restore_failed(instance, epoch, from, failure, now) {
                    Ok(actions) => {
                        self.apply(actions, ctx);
                        Some(Reply::Ok)
                    }
                    Err(_) => Some(Reply::Refused),
                }
            }
        }
    }

    fn conn_lost(&mut self, peer: NodeId, ctx: &mut Ctx) {
        if let Some(d) = self.detector.connection_lost(peer) {
            self.on_declared(d, ctx);
        }
        for source in &mut self.sources {
            for chan in source.channels.values_mut() {
                if chan.node == peer {
                    chan.send.rewind();
                }
            }
        }
    }
}

/// The sink emits a batch's outputs; each is checked against the
/// failure-free computation at once.
fn emit(emitted: &mut BTreeMap<u64, u32>, records: &[Rec], ctx: &mut Ctx) {
    for rec in records {
        let times = emitted.entry(rec.id).or_insert(0);
        *times += 1;
        if *times > 1 {
            ctx.violate(format!("record {} emitted {} times", rec.id, *times));
        }
        match ctx.reference.expected.get(&rec.id) {
            Some(&(key, sum)) if key == rec.key && sum == rec.value => {}
            expected => ctx.violate(format!(
                "record {} emitted as (key {}, sum {}), failure-free: {expected:?}",
                rec.id, rec.key, rec.value
            )),
        }
    }
}

fn worker_mut(workers: &mut [Worker], node: NodeId) -> Option<&mut Worker> {
    workers.get_mut((node.0 as usize).checked_sub(1)?)
}

/// The whole simulated cluster.
pub(crate) struct World {
    seed: u64,
    ctx: Ctx,
    layout: Layout,
    edge: Edge,
    workers: Vec<Worker>,
    events: u64,
}

impl World {
    pub(crate) fn new(seed: u64, sc: &Scenario) -> Result<Self, SimFailure> {
        let invalid = |what: &str| SimFailure {
            seed,
            at_ms: 0,
            violation: format!("invalid scenario: {what}"),
            trace_tail: Vec::new(),
        };
        let nodes = sc.workers + sc.spares;
        let bins = 1u32 << sc.bins_log2;
        if sc.workers == 0 || sc.sources == 0 || sc.operators == 0 || sc.keys == 0 {
            return Err(invalid("workers, sources, operators and keys must be positive"));
        }
        if sc.operators > sc.workers * sc.slots_per_node || sc.operators > bins {
            return Err(invalid("more operators than slots or bins"));
        }
        if sc.backups == 0 || sc.backups as u32 >= nodes {
            return Err(invalid("backups must be at least 1 and fewer than the worker nodes"));
        }
        if sc.keys as usize / STATE_ENTRIES_PER_CHUNK + 1 >= CHUNKS_MAX as usize {
            return Err(invalid("too many keys for a checkpoint"));
        }
        if sc.tick_ms == 0 || sc.round_interval_ms == 0 || sc.net.delay_min_ms > sc.net.delay_max_ms {
            return Err(invalid("tick, round interval and delays must be sane"));
        }
        let min_batches = (sc.checkpoint_interval_ms / sc.round_interval_ms + 2) as usize;
        if sc.buffer.batches_max < min_batches
            || sc.buffer.bytes_max
                < batch_bytes(sc.records_per_round as usize * sc.sources as usize) * sc.buffer.batches_max
        {
            return Err(invalid("output buffers too small to hold a checkpoint interval"));
        }
        let mut master = Rng::new(seed);
        let net_rng = master.fork();
        let fault_rng = master.fork();
        let mut ctx = Ctx {
            sc: *sc,
            now: 0,
            queue: BinaryHeap::new(),
            order: 0,
            net_rng,
            fault_rng,
            fifo_tail: BTreeMap::new(),
            generation: BTreeMap::new(),
            trace: Trace { hash: Fnv::default(), tail: VecDeque::new() },
            stats: SimStats::default(),
            declared_at: BTreeMap::new(),
            truth: vec![(Incarnation(1), true); nodes as usize + 1],
            crashes_left: sc.faults.crashes,
            violation: None,
            reference: Reference::new(seed, sc),
        };
        let layout = Layout { sources: sc.sources, sink: InstanceId(sc.sources) };
        let mut detector = FailureDetector::new(DetectorConfig {
            failure_timeout_ms: sc.failure_timeout_ms,
            declare_on_connection_loss: sc.declare_on_connection_loss,
        });
        let mut recovery = Recovery::new(RecoveryConfig {
            backups_per_instance: sc.backups,
            split_ways: sc.split_ways,
            restore_timeout_ms: sc.restore_timeout_ms,
            capacity_wait_ms: sc.capacity_wait_ms,
        });
        let mut workers = Vec::new();
        for n in 1..=nodes {
            let id = NodeId(n);
            let mut w = Worker::new(id, Incarnation(1));
            w.next_heartbeat_ms = u64::from(n) % sc.heartbeat_interval_ms.max(1);
            let _ = detector.register(id, Incarnation(1), 0);
            let role = if n <= sc.workers { NodeRole::Active } else { NodeRole::Spare };
            recovery.add_node(id, Incarnation(1), role, sc.slots_per_node, 0);
            workers.push(w);
        }
        let all = BinRange::all(sc.bins_log2);
        let mut routing = vec![InstanceId(0); bins as usize];
        let mut sink = BTreeMap::new();
        let mut placements = Vec::new();
        for i in 0..sc.operators {
            let id = InstanceId(sc.sources + 1 + i);
            let host = NodeId(1 + i % sc.workers);
            let part = all.part(i, sc.operators);
            for b in part.start..part.end {
                routing[b as usize] = id;
            }
            let backups: Vec<NodeId> =
                (1..nodes).map(|k| NodeId(1 + (host.0 - 1 + k) % nodes)).take(sc.backups).collect();
            let spec = InstanceSpec {
                id,
                node: host,
                bins: part,
                backups: backups.clone(),
                upstreams: layout.source_ids().collect(),
                downstreams: vec![layout.sink],
            };
            recovery.add_instance(spec).map_err(|e| invalid(&e.to_string()))?;
            let tracker = CheckpointTracker::new(id, Epoch(1), host, backups, tracker_config(sc))
                .map_err(|e| invalid(&e.to_string()))?;
            let inputs = layout
                .source_ids()
                .map(|s| (s, Input { dedup: InputDedup::new(), queue: VecDeque::new() }))
                .collect();
            let op = Op {
                id,
                epoch: Epoch(1),
                bins: part,
                state: BTreeMap::new(),
                round: 0,
                inputs,
                output: OutputBuffer::new(sc.buffer),
                send: SendState::default(),
                tracker: Some(tracker),
                snapshots: BTreeMap::new(),
                next_checkpoint_ms: sc.checkpoint_interval_ms + u64::from(i) * 3,
            };
            workers[host.0 as usize - 1].ops.insert(id, op);
            sink.insert(
                id,
                SinkChannel {
                    dedup: InputDedup::new(),
                    node: host,
                    inc: Incarnation(1),
                    epoch: Epoch(1),
                    accepting: true,
                },
            );
            placements.push((id, host));
        }
        let sources = layout
            .source_ids()
            .map(|id| Source {
                id,
                produced: 0,
                routing: routing.clone(),
                channels: placements
                    .iter()
                    .map(|&(op, host)| {
                        let channel = SourceChannel {
                            buffer: OutputBuffer::new(sc.buffer),
                            node: host,
                            inc: Incarnation(1),
                            epoch: Epoch(1),
                            send: SendState::default(),
                        };
                        (op, channel)
                    })
                    .collect(),
            })
            .collect();
        let edge = Edge {
            detector,
            recovery,
            outbox: BTreeMap::new(),
            next_command: 0,
            command_seq: BTreeMap::new(),
            sources,
            sink,
            emitted: BTreeMap::new(),
            reroutes: BTreeMap::new(),
            unrecoverable: None,
        };
        let horizon = sc.faults.horizon_ms.max(1);
        for _ in 0..sc.faults.crashes {
            let at = ctx.fault_rng.range(1, horizon);
            ctx.schedule_at(at, Event::Crash(None));
        }
        for _ in 0..sc.faults.pauses {
            let at = ctx.fault_rng.range(1, horizon);
            let ms = ctx.fault_rng.range(sc.faults.pause_ms.0, sc.faults.pause_ms.1);
            ctx.schedule_at(at, Event::Pause(ms));
        }
        for _ in 0..sc.faults.breaks {
            let at = ctx.fault_rng.range(1, horizon);
            ctx.schedule_at(at, Event::Break);
        }
        ctx.schedule_at(0, Event::Tick);
        Ok(Self { seed, ctx, layout, edge, workers, events: 0 })
    }

    pub(crate) fn run(mut self) -> Result<SimReport, SimFailure> {
        while let Some(next) = self.ctx.queue.pop() {
            self.ctx.now = next.at;
            self.events += 1;
            if self.ctx.now > self.ctx.sc.max_time_ms {
                let what = format!("not finished after {} ms: {}", self.ctx.sc.max_time_ms, self.progress());
                return Err(self.failure(what));
            }
            let tick = matches!(next.event, Event::Tick);
            self.handle(next.event);
            if let Some(v) = self.ctx.violation.take() {
                return Err(self.failure(v));
            }
            if let Some(u) = self.edge.unrecoverable.clone() {
                return match self.genuinely_unrecoverable(&u) {
                    Ok(()) => Ok(self.report(SimOutcome::Unrecoverable(u))),
                    Err(why) => Err(self.failure(format!("{u}, but {why}"))),
                };
            }
            if tick && self.finished() {
                return match self.final_check() {
                    Ok(()) => Ok(self.report(SimOutcome::Completed)),
                    Err(why) => Err(self.failure(why)),
                };
            }
        }
        Err(self.failure("the event queue ran dry".to_string()))
    }

    fn worker(&mut self, node: NodeId) -> Option<&mut Worker> {
        worker_mut(&mut self.workers, node)
    }

    fn handle(&mut self, event: Event) {
        let layout = self.layout;
        match event {
            Event::Tick => {
                self.edge.tick(&mut self.ctx);
                for w in &mut self.workers {
                    if w.up && !w.paused {
                        w.tick(layout, &mut self.ctx);
                    }
                }
                self.ctx.schedule(self.ctx.sc.tick_ms, Event::Tick);
            }
            Event::Deliver(env) => self.deliver(env),
            Event::Crash(target) => {
                if self.ctx.crashes_left == 0 {
                    return;
                }
                let victim = match target {
                    Some(n) => Some(n),
                    None => self.random_worker(|w| w.up),
                };
                let Some(victim) = victim else { return };
                if !self.worker(victim).is_some_and(|w| w.up) {
                    return;
                }
                self.ctx.crashes_left -= 1;
                self.ctx.stats.crashes += 1;
                self.crash(victim);
                if self.ctx.sc.faults.restart {
                    let (lo, hi) = self.ctx.sc.faults.restart_delay_ms;
                    let delay = self.ctx.fault_rng.range(lo, hi);
                    self.ctx.schedule(delay, Event::Restart(victim));
                }
            }
            Event::SelfFence(node, inc) => {
                if self.worker(node).is_some_and(|w| w.up && w.inc == inc) {
                    self.crash(node);
                    let (lo, hi) = self.ctx.sc.faults.restart_delay_ms;
                    let delay = self.ctx.fault_rng.range(lo, hi);
                    self.ctx.schedule(delay, Event::Restart(node));
                }
            }
            Event::Pause(ms) => {
                let Some(node) = self.random_worker(|w| w.up && !w.paused) else { return };
                let until_ms = self.ctx.now + ms;
                if let Some(w) = self.worker(node) {
                    w.paused = true;
                }
                self.ctx.stats.pauses += 1;
                self.ctx.trace(TraceEvent::Pause { node: node.0, until_ms });
                self.ctx.schedule(ms, Event::Resume(node));
            }
            Event::Resume(node) => {
                let Some(w) = self.worker(node) else { return };
                if !w.paused {
                    return;
                }
                w.paused = false;
                let deferred = std::mem::take(&mut w.deferred);
                self.ctx.trace(TraceEvent::Resume { node: node.0 });
                for env in deferred {
                    self.deliver(env);
                }
            }
            Event::Restart(node) => {
                let slots = self.ctx.sc.slots_per_node;
                let Some(w) = worker_mut(&mut self.workers, node) else { return };
                if w.up {
                    return;
                }
                let inc = Incarnation(w.inc.0 + 1);
                *w = Worker::new(node, inc);
                w.next_heartbeat_ms = self.ctx.now;
                self.ctx.truth[node.0 as usize] = (inc, true);
                self.ctx.trace(TraceEvent::Restart { node: node.0, incarnation: inc.0 });
                w.report(Report::Register { slots }, &mut self.ctx);
            }
            Event::Break => {
                let nodes = self.workers.len() as u64;
                let a = if self.ctx.fault_rng.chance(600) {
                    EDGE
                } else {
                    NodeId(1 + self.ctx.fault_rng.below(nodes) as u32)
                };
                let mut b = NodeId(1 + self.ctx.fault_rng.below(nodes) as u32);
                if a == b {
                    b = EDGE;
                }
                self.ctx.break_link(a, b);
                self.ctx.stats.breaks += 1;
                self.ctx.trace(TraceEvent::Break { a: a.0, b: b.0 });
                for (observer, peer) in [(a, b), (b, a)] {
                    let delay = self.ctx.fault_rng.range(1, 3);
                    self.ctx.schedule(delay, Event::ConnLost { observer, peer });
                }
            }
            Event::ConnLost { observer, peer } => {
                if observer == EDGE {
                    self.edge.conn_lost(peer, &mut self.ctx);
                } else if let Some(w) = self.worker(observer) {
                    if w.up && !w.paused {
                        w.conn_lost(peer);
                    }
                }
            }
        }
    }

    fn random_worker(&mut self, pred: impl Fn(&Worker) -> bool) -> Option<NodeId> {
        let candidates: Vec<NodeId> = self.workers.iter().filter(|w| pred(w)).map(|w| w.id).collect();
        if candidates.is_empty() {
            return None;
        }
        let i = self.ctx.fault_rng.below(candidates.len() as u64) as usize;
        Some(candidates[i])
    }

    fn crash(&mut self, node: NodeId) {
        let Some(w) = self.worker(node) else { return };
        let inc = w.inc;
        w.up = false;
        w.paused = false;
        w.deferred.clear();
        w.ops.clear();
        w.restoring.clear();
        w.outbox.clear();
        w.store = BackupStore::new(BackupLimits { chunks_max: CHUNKS_MAX });
        self.ctx.truth[node.0 as usize].1 = false;
        self.ctx.trace(TraceEvent::Crash { node: node.0, incarnation: inc.0 });
        let peers: Vec<NodeId> = std::iter::once(EDGE).chain(self.workers.iter().map(|w| w.id)).collect();
        for peer in peers {
            if peer != node {
                self.ctx.break_link(node, peer);
                let delay = self.ctx.fault_rng.range(1, 5);
                self.ctx.schedule(delay, Event::ConnLost { observer: peer, peer: node });
            }
        }
    }

    fn deliver(&mut self, env: Envelope) {
        let kind = env.msg.kind();
        let (from, to) = (env.from.0, env.to.0);
        if env.generation.is_some_and(|g| g != self.ctx.generation(env.from, env.to)) {
            self.ctx.stats.messages_dropped += 1;
            self.ctx.trace(TraceEvent::Dropped { from, to, kind });
            return;
        }
        let layout = self.layout;
        if env.to == EDGE {
            self.ctx.trace(TraceEvent::Deliver { from, to, kind });
            self.edge.on_message(env, &mut self.ctx);
            return;
        }
        let Some(w) = self.workers.get_mut(env.to.0 as usize - 1) else { return };
        if w.paused && w.up {
            w.deferred.push_back(env);
            return;
        }
        if !w.up || env.to_inc.is_some_and(|i| i != w.inc) {
            self.ctx.stats.messages_dropped += 1;
            self.ctx.trace(TraceEvent::Dropped { from, to, kind });
            return;
        }
        self.ctx.trace(TraceEvent::Deliver { from, to, kind });
        w.on_message(env, layout, &mut self.ctx);
    }

    /// Whether everything was produced, emitted, and processed by the
    /// current placement of every instance.
    fn finished(&self) -> bool {
        let rounds = self.ctx.sc.rounds;
        if self.edge.sources.iter().any(|s| s.produced < rounds) {
            return false;
        }
        if self.edge.emitted.len() < self.ctx.reference.expected.len() || !self.edge.recovery.is_settled() {
            return false;
        }
        self.edge
            .recovery
            .instances()
            .all(|(id, inst)| self.hosted_op(id, inst.node, inst.epoch).is_some_and(|op| op.round == rounds))
    }

    fn hosted_op(&self, id: InstanceId, node: NodeId, epoch: Epoch) -> Option<&Op> {
        let w = self.workers.get((node.0 as usize).checked_sub(1)?)?;
        w.ops.get(&id).filter(|op| w.up && op.epoch == epoch)
    }

    fn final_check(&self) -> Result<(), String> {
        for (id, expected) in &self.ctx.reference.expected {
            if self.edge.emitted.get(id) != Some(&1) {
                return Err(format!(
                    "record {id} ({expected:?}) emitted {:?} times",
                    self.edge.emitted.get(id)
                ));
            }
        }
        let mut state = BTreeMap::new();
        for (id, inst) in self.edge.recovery.instances() {
            let Some(op) = self.hosted_op(id, inst.node, inst.epoch) else {
                return Err(format!("{id} is not running where the coordinator placed it"));
            };
            for (&key, &sum) in &op.state {
                if !op.bins.contains(bin_of_key(key, self.ctx.sc.bins_log2)) {
                    return Err(format!("{id} holds key {key} outside {}", op.bins));
                }
                state.insert(key, sum);
            }
        }
        if state != self.ctx.reference.final_state {
            return Err(format!(
                "final state {state:?} differs from the failure-free {:?}",
                self.ctx.reference.final_state
            ));
        }
        Ok(())
    }

    /// The checker's own judgement of an unrecoverable outcome, from ground
    /// truth rather than the coordinator's view.
    fn genuinely_unrecoverable(&self, u: &Unrecoverable) -> Result<(), String> {
        let usable = |w: &Worker| w.up && self.edge.detector.admit(w.id, w.inc).is_ok();
        match &u.reason {
            UnrecoverableReason::NoReplacement { .. } => {
                match self.workers.iter().find(|w| usable(w) && self.edge.recovery.free_slots(w.id) > 0) {
                    Some(w) => Err(format!("{} {} was alive and registered with a free slot", w.id, w.inc)),
                    None => Ok(()),
                }
            }
            UnrecoverableReason::NoBackupNode { .. } => {
                let host = self.edge.recovery.instance(u.instance).map(|i| i.node);
                match self.workers.iter().find(|w| usable(w) && Some(w.id) != host) {
                    Some(w) => Err(format!("{} {} was alive to be a backup", w.id, w.inc)),
                    None => Ok(()),
                }
            }
            UnrecoverableReason::NoBackup { owner, at_least, .. } => {
                let holder = self
                    .workers
                    .iter()
                    .find(|w| usable(w) && w.store.latest(*owner).is_some_and(|(id, _)| id >= *at_least));
                match holder {
                    Some(w) => {
                        Err(format!("{} {} holds a checkpoint of {owner} at least {at_least}", w.id, w.inc))
                    }
                    None => Ok(()),
                }
            }
        }
    }

    fn progress(&self) -> String {
        let produced: Vec<Seq> = self.edge.sources.iter().map(|s| s.produced).collect();
        let instances: Vec<String> = self
            .edge
            .recovery
            .instances()
            .map(|(id, i)| {
                let round = self.hosted_op(id, i.node, i.epoch).map(|op| op.round);
                let phase = match i.phase {
                    Phase::Running => "running",
                    Phase::Restoring { .. } => "restoring",
                    Phase::AwaitingCapacity { .. } => "awaiting capacity",
                    Phase::Lost => "lost",
                };
                format!("{id}@{}/{} {phase} round {round:?}", i.node, i.epoch)
            })
            .collect();
        format!(
            "produced {produced:?}, emitted {}/{}, instances [{}]",
            self.edge.emitted.len(),
            self.ctx.reference.expected.len(),
            instances.join(", ")
        )
    }

    fn report(&self, outcome: SimOutcome) -> SimReport {
        SimReport {
            seed: self.seed,
            outcome,
            end_ms: self.ctx.now,
            events: self.events,
            trace_hash: self.ctx.trace.hash.finish(),
            stats: self.ctx.stats,
        }
    }

    fn failure(&self, violation: String) -> SimFailure {
        SimFailure {
            seed: self.seed,
            at_ms: self.ctx.now,
            violation,
            trace_tail: self.ctx.trace.tail.iter().map(|(at, ev)| format!("{at:>6} ms  {ev:?}")).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ft::buffer::BufferLimits;

    #[test]
    fn send_state_windows_and_rewinds() {
        let sc = Scenario { send_window: 2, retransmit_ms: 10, ..Scenario::default() };
        let mut buffer = OutputBuffer::new(BufferLimits { batches_max: 10, bytes_max: 1000 });
        for _ in 0..5 {
            buffer.push(Rc::new(Vec::new()), 1).unwrap();
        }
        let mut s = SendState::default();
        let mut sent = Vec::new();
        s.pump(&buffer, &sc, 0, |seq, _| sent.push(seq));
        assert_eq!(sent, vec![1, 2]);
        s.pump(&buffer, &sc, 5, |seq, _| sent.push(seq));
        assert_eq!(sent, vec![1, 2], "window full");
        s.acked(1, 6);
        s.pump(&buffer, &sc, 6, |seq, _| sent.push(seq));
        assert_eq!(sent, vec![1, 2, 3]);
        s.pump(&buffer, &sc, 16, |seq, _| sent.push(seq));
        assert_eq!(sent, vec![1, 2, 3, 2, 3], "go back after the timeout");
    }
}
