//! The coordinator's recovery planner.
//!
//! [`Recovery`] knows the nodes (active and spare, with their slots), where
//! every instance runs, its backups and the newest covered checkpoint the
//! coordinator recorded for it. Events come in — a node failed
//! ([`node_failed`](Recovery::node_failed)), joined
//! ([`add_node`](Recovery::add_node)), a checkpoint was covered
//! ([`on_covered`](Recovery::on_covered)), a replacement restored
//! ([`on_restored`](Recovery::on_restored)) or could not
//! ([`on_restore_failed`](Recovery::on_restore_failed)), time passed
//! ([`tick`](Recovery::tick)) — and [`RecoveryAction`]s come out for the
//! control plane to carry out.
//!
//! # Recovering one instance
//!
//! 1. **Fence** the failed node incarnation ([`RecoveryAction::Fence`]).
//! 2. **Choose where**: a spare node first, else a survivor with a free slot,
//!    preferring nodes that are not the instance's backups. With
//!    `split_ways > 1` and enough candidates, the key range is split over
//!    several replacements, which recover in parallel as new instances.
//!    No candidate: wait up to `capacity_wait_ms` for a node to join, then
//!    give up with [`UnrecoverableReason::NoReplacement`].
//! 3. **Choose the source**: if no checkpoint of the instance was ever
//!    covered, nothing was ever trimmed upstream, so the replacement starts
//!    from the initial state and everything is replayed
//!    ([`RestoreSource::Initial`]). Otherwise a surviving node that
//!    acknowledged the covered checkpoint (else any other current backup)
//!    sends its newest checkpoint that is *at least* the covered one; since
//!    upstreams trim only after the coordinator recorded coverage, that
//!    checkpoint is at least as new as every trim. No such node:
//!    [`UnrecoverableReason::NoBackup`].
//! 4. **Restore** ([`RecoveryAction::Restore`]) with a new epoch, then, when
//!    the replacement reports it restored, **re-route** the upstreams to it
//!    and have them **replay** after the restored checkpoint's input
//!    positions, **re-route** the downstreams to accept it, and **recreate**
//!    backups that lived on failed nodes.
//!
//! A failure during recovery — the replacement or the source backup dies,
//! the backup turns out not to hold the checkpoint, or the restore times
//! out — abandons the attempt ([`RecoveryAction::Stop`]) and re-plans with
//! a greater epoch; reports of the abandoned epoch are refused.
//!
//! Sources and sinks are named as upstreams and downstreams but are not
//! managed here: they are assumed to run on a node that does not fail (the
//! coordinator's own), as in SEEP.
//!
//! ```
//! use spate_core::ft::recovery::*;
//! use spate_core::ft::{CheckpointId, Epoch, Incarnation, InstanceId, NodeId};
//! use spate_state::keyspace::BinRange;
//!
//! let config = RecoveryConfig {
//!     backups_per_instance: 1,
//!     split_ways: 1,
//!     restore_timeout_ms: 500,
//!     capacity_wait_ms: 1000,
//! };
//! let mut r = Recovery::new(config);
//! let i1 = Incarnation(1);
//! r.add_node(NodeId(1), i1, NodeRole::Active, 4, 0);
//! r.add_node(NodeId(2), i1, NodeRole::Active, 4, 0);
//! r.add_node(NodeId(3), i1, NodeRole::Spare, 4, 0);
//! let (source, op, sink) = (InstanceId(0), InstanceId(1), InstanceId(2));
//! r.add_instance(InstanceSpec {
//!     id: op,
//!     node: NodeId(1),
//!     bins: BinRange::new(0, 4096),
//!     backups: vec![NodeId(2)],
//!     upstreams: vec![source],
//!     downstreams: vec![sink],
//! })
//! .unwrap();
//! let covered = CheckpointId { epoch: Epoch(1), n: 9 };
//! r.on_covered(op, Epoch(1), NodeId(1), covered, &[NodeId(2)]).unwrap();
//!
//! // Node 1 dies: fence it, restore on the spare from node 2.
//! let actions = r.node_failed(NodeId(1), i1, 100);
//! let Some(RecoveryAction::Restore(plan)) = actions.get(1) else { panic!("{actions:?}") };
//! assert_eq!(plan.node, NodeId(3));
//! assert_eq!(plan.source, RestoreSource::Backup { node: NodeId(2), owner: op, at_least: covered });
//!
//! // Restored at position 120 of the source: re-route and replay.
//! let restored = Restored {
//!     instance: op,
//!     epoch: plan.epoch,
//!     node: NodeId(3),
//!     checkpoint: Some(covered),
//!     inputs: vec![(source, 120)],
//! };
//! let actions = r.on_restored(&restored).unwrap();
//! assert!(actions.iter().any(|a| matches!(a, RecoveryAction::Replay { after: 120, .. })));
//! ```

use std::collections::BTreeMap;
use std::fmt;

use spate_state::keyspace::BinRange;

use super::{ChannelId, CheckpointId, Epoch, Incarnation, InstanceId, NodeId, Seq};

/// Tunables of the planner.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecoveryConfig {
    /// `R`: backups each instance should have.
    pub backups_per_instance: usize,
    /// Split a lost instance's key range over up to this many replacements
    /// (1: restore it whole on one node).
    pub split_ways: u32,
    /// Abandon and re-plan a restore not reported within this long.
    pub restore_timeout_ms: u64,
    /// Wait this long for capacity before declaring an instance
    /// unrecoverable for want of a replacement (0: give up at once).
    pub capacity_wait_ms: u64,
}

/// What a node is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NodeRole {
    /// Runs instances.
    Active,
    /// Held in reserve for recovery; becomes active when chosen.
    Spare,
}

/// An instance of the initial deployment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InstanceSpec {
    /// The instance.
    pub id: InstanceId,
    /// Where it runs.
    pub node: NodeId,
    /// The key range it owns.
    pub bins: BinRange,
    /// Its backup nodes.
    pub backups: Vec<NodeId>,
    /// Instances that send to it.
    pub upstreams: Vec<InstanceId>,
    /// Instances it sends to.
    pub downstreams: Vec<InstanceId>,
}

/// The newest covered checkpoint the coordinator recorded for an instance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CoveredCheckpoint {
    /// Whose checkpoint it is: the instance itself, or, for a split
    /// replacement that has not covered one of its own yet, its parent.
    pub owner: InstanceId,
    /// The checkpoint.
    pub checkpoint: CheckpointId,
    /// The nodes that acknowledged it (and are not known to have failed).
    pub holders: Vec<NodeId>,
}

/// Where a replacement gets its state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RestoreSource {
    /// No checkpoint was ever covered: start from the initial (empty) state
    /// and have upstreams replay from their first batch.
    Initial,
    /// Fetch from `node` its newest complete checkpoint of `owner`, which
    /// must be at least `at_least`.
    Backup {
        /// The backup node.
        node: NodeId,
        /// Whose checkpoint.
        owner: InstanceId,
        /// The oldest acceptable checkpoint.
        at_least: CheckpointId,
    },
}

/// Instructions for a replacement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RestorePlan {
    /// The instance to create (a new id for a split part).
    pub instance: InstanceId,
    /// For a split part, the instance it was split from.
    pub parent: Option<InstanceId>,
    /// The placement's epoch.
    pub epoch: Epoch,
    /// The replacement node.
    pub node: NodeId,
    /// The replacement node's incarnation the plan is addressed to.
    pub incarnation: Incarnation,
    /// The key range the instance owns: keep only state in it.
    pub bins: BinRange,
    /// Where the state comes from.
    pub source: RestoreSource,
    /// The backups the instance streams checkpoints to (possibly fewer than
    /// `R`, possibly none, until [`RecoveryAction::RecreateBackup`] tops
    /// them up).
    pub backups: Vec<NodeId>,
}

/// Why an instance cannot be recovered.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum UnrecoverableReason {
    /// No alive node had a free slot for `waited_ms`.
    NoReplacement {
        /// How long the planner waited for capacity.
        waited_ms: u64,
    },
    /// A running instance had no alive backup, and no node could become
    /// one, for `waited_ms`: none of its checkpoints can be covered, so its
    /// upstreams can never trim and the job cannot make durable progress.
    NoBackupNode {
        /// How long the planner waited for a node.
        waited_ms: u64,
    },
    /// No surviving node holds a checkpoint at least as new as the covered
    /// one (and upstreams may have trimmed up to it).
    NoBackup {
        /// Whose checkpoint was needed.
        owner: InstanceId,
        /// The covered checkpoint.
        at_least: CheckpointId,
        /// Backups asked that did not have it.
        tried: Vec<NodeId>,
    },
}

/// The explicit outcome for an instance that cannot be recovered.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Unrecoverable {
    /// The lost instance.
    pub instance: InstanceId,
    /// Why.
    pub reason: UnrecoverableReason,
}

impl fmt::Display for Unrecoverable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.reason {
            UnrecoverableReason::NoReplacement { waited_ms } => {
                write!(f, "{} is unrecoverable: no node with a free slot for {waited_ms} ms", self.instance)
            }
            UnrecoverableReason::NoBackupNode { waited_ms } => {
                write!(
                    f,
                    "{} is unrecoverable: no node could hold its checkpoints for {waited_ms} ms",
                    self.instance
                )
            }
            UnrecoverableReason::NoBackup { owner, at_least, tried } => write!(
                f,
                "{} is unrecoverable: no surviving node holds {at_least} of {owner} (asked {tried:?})",
                self.instance
            ),
        }
    }
}

/// What the control plane must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RecoveryAction {
    /// Tell every node to refuse messages from this incarnation.
    Fence {
        /// The node.
        node: NodeId,
        /// The fenced incarnation.
        incarnation: Incarnation,
    },
    /// Create an instance on a replacement node from a checkpoint.
    Restore(RestorePlan),
    /// The upstream must send what it routed to `old_consumer` for `bins`
    /// to `new_consumer` on `node` from now on.
    RerouteUpstream {
        /// The producer to re-route.
        upstream: InstanceId,
        /// The consumer it sends those bins to now.
        old_consumer: InstanceId,
        /// The consumer to send them to.
        new_consumer: InstanceId,
        /// The key range concerned.
        bins: BinRange,
        /// Where `new_consumer` runs.
        node: NodeId,
        /// That node's incarnation.
        incarnation: Incarnation,
        /// `new_consumer`'s epoch.
        epoch: Epoch,
    },
    /// The upstream must resend its buffered batches on `channel` after
    /// `after` (after the matching [`RecoveryAction::RerouteUpstream`]).
    Replay {
        /// The producer.
        upstream: InstanceId,
        /// The (new) channel.
        channel: ChannelId,
        /// The restored checkpoint's position on it.
        after: Seq,
    },
    /// The downstream must accept batches for `new_producer` from `node` at
    /// `epoch`, continuing the sequence of `old_producer` (the same instance,
    /// or the one it was split from).
    RerouteDownstream {
        /// The consumer to re-route.
        downstream: InstanceId,
        /// The producer it accepted so far.
        old_producer: InstanceId,
        /// The producer to accept.
        new_producer: InstanceId,
        /// Where it runs.
        node: NodeId,
        /// That node's incarnation.
        incarnation: Incarnation,
        /// Its epoch.
        epoch: Epoch,
    },
    /// A running instance must stream checkpoints to `new_backup` instead of
    /// `replacing` (or in addition, when `None`), and should take one soon.
    RecreateBackup {
        /// The instance.
        instance: InstanceId,
        /// Its epoch.
        epoch: Epoch,
        /// Where it runs.
        node: NodeId,
        /// The backup that failed, if any.
        replacing: Option<NodeId>,
        /// The new backup.
        new_backup: NodeId,
    },
    /// A running instance must stop waiting for `backup`'s acknowledgements:
    /// it failed and no node can replace it, and other backups remain. It
    /// runs with fewer than `R` backups until a node joins.
    RemoveBackup {
        /// The instance.
        instance: InstanceId,
        /// Its epoch.
        epoch: Epoch,
        /// Where it runs.
        node: NodeId,
        /// The failed backup.
        backup: NodeId,
    },
    /// Abandon a restore attempt: drop the instance at this epoch there.
    Stop {
        /// The instance.
        instance: InstanceId,
        /// The abandoned epoch.
        epoch: Epoch,
        /// The node it was being restored on.
        node: NodeId,
        /// That node's incarnation.
        incarnation: Incarnation,
    },
    /// The instance cannot be recovered.
    Unrecoverable(Unrecoverable),
}

/// A replacement's report that it restored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Restored {
    /// The instance.
    pub instance: InstanceId,
    /// The epoch of the plan it carried out.
    pub epoch: Epoch,
    /// Where it runs.
    pub node: NodeId,
    /// The checkpoint restored (`None`: the initial state).
    pub checkpoint: Option<CheckpointId>,
    /// Per upstream, the last sequence number the restored state consumed.
    pub inputs: Vec<(InstanceId, Seq)>,
}

/// Why a replacement could not restore.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RestoreFailure {
    /// The backup holds no checkpoint of the owner at least as new as asked.
    NoCheckpoint {
        /// The backup asked.
        backup: NodeId,
    },
}

/// How a coverage report was taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CoverOutcome {
    /// Recorded as the instance's newest covered checkpoint.
    Recorded,
    /// Older than the one recorded; nothing changed. Still safe to confirm.
    Older,
}

/// A report or query the planner refuses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecoveryError {
    /// No such instance (never deployed, or split into others).
    UnknownInstance {
        /// The instance.
        instance: InstanceId,
    },
    /// The report is for an abandoned or older placement.
    StaleEpoch {
        /// The instance.
        instance: InstanceId,
        /// Its current epoch.
        current: Epoch,
        /// The report's epoch.
        got: Epoch,
    },
    /// The report comes from a node the instance does not run on.
    WrongNode {
        /// The instance.
        instance: InstanceId,
        /// Where it runs.
        expected: NodeId,
        /// Where the report came from.
        got: NodeId,
    },
    /// The instance is not in a phase where this report applies (yet):
    /// e.g. coverage from a replacement whose restore is not recorded yet.
    NotRunning {
        /// The instance.
        instance: InstanceId,
    },
    /// A node is unknown or dead, or named where it may not be.
    BadNode {
        /// The node.
        node: NodeId,
    },
    /// A restore report lacks the position of an upstream.
    MissingInput {
        /// The instance.
        instance: InstanceId,
        /// The upstream without a position.
        upstream: InstanceId,
    },
}

impl fmt::Display for RecoveryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnknownInstance { instance } => write!(f, "unknown {instance}"),
            Self::StaleEpoch { instance, current, got } => {
                write!(f, "{instance} is at {current}, report for {got}")
            }
            Self::WrongNode { instance, expected, got } => {
                write!(f, "{instance} runs on {expected}, report from {got}")
            }
            Self::NotRunning { instance } => write!(f, "{instance} is not running (yet)"),
            Self::BadNode { node } => write!(f, "{node} is unknown, dead or misplaced"),
            Self::MissingInput { instance, upstream } => {
                write!(f, "restore report of {instance} lacks the position of {upstream}")
            }
        }
    }
}

impl std::error::Error for RecoveryError {}

/// The phase of an instance, as seen by the planner.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Running where the planner placed it.
    Running,
    /// Being restored; the placement (node, epoch) is the attempt's.
    Restoring {
        /// Where the state comes from.
        source: RestoreSource,
        /// When the attempt started.
        started_ms: u64,
        /// Backups that turned out not to hold the checkpoint.
        tried: Vec<NodeId>,
    },
    /// Lost, waiting for a node with a free slot.
    AwaitingCapacity {
        /// Since when.
        since_ms: u64,
        /// Backups that turned out not to hold the checkpoint.
        tried: Vec<NodeId>,
    },
    /// Unrecoverable.
    Lost,
}

/// The planner's record of one instance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InstanceView {
    /// Where it runs (or is being restored).
    pub node: NodeId,
    /// That node's incarnation.
    pub incarnation: Incarnation,
    /// The placement's epoch.
    pub epoch: Epoch,
    /// The key range it owns.
    pub bins: BinRange,
    /// Its backups as the instance knows them (a failed one stays listed
    /// until a replacement is found).
    pub backups: Vec<NodeId>,
    /// The newest covered checkpoint recorded.
    pub covered: Option<CoveredCheckpoint>,
    /// Upstream instances.
    pub upstreams: Vec<InstanceId>,
    /// Downstream instances.
    pub downstreams: Vec<InstanceId>,
    /// The id its upstreams and downstreams still know its key range by (its
    /// own, or its parent's until its first re-route).
    pub routed_as: InstanceId,
    /// Its phase.
    pub phase: Phase,
    /// Since when a running instance has had no alive backup.
    pub unprotected_since_ms: Option<u64>,
}

/// The planner's record of one node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodeView {
    /// The current incarnation.
    pub incarnation: Incarnation,
    /// Active or spare.
    pub role: NodeRole,
    /// Instances it can host.
    pub slots: u32,
    /// Whether the incarnation is alive.
    pub alive: bool,
}

/// The coordinator's recovery state machine. See the module docs.
#[derive(Clone, Debug)]
pub struct Recovery {
    config: RecoveryConfig,
    nodes: BTreeMap<NodeId, NodeView>,
    instances: BTreeMap<InstanceId, InstanceView>,
    next_instance: u32,
}

impl Recovery {
    /// A planner with no node and no instance.
    pub fn new(config: RecoveryConfig) -> Self {
        Self { config, nodes: BTreeMap::new(), instances: BTreeMap::new(), next_instance: 0 }
    }

    /// Registers a node incarnation (at deployment, or when a node joins or
    /// restarts). A still-alive older incarnation is handled as failed
    /// first. Joining capacity resumes instances waiting for it, and tops
    /// up instances short of backups.
    pub fn add_node(
        &mut self,
        node: NodeId,
        incarnation: Incarnation,
        role: NodeRole,
        slots: u32,
        now_ms: u64,
    ) -> Vec<RecoveryAction> {
        let mut actions = Vec::new();
        if let Some(old) = self.nodes.get(&node).copied() {
            if old.incarnation >= incarnation {
                return actions; // a repeated or stale registration
            }
            if old.alive {
                actions.extend(self.node_failed(node, old.incarnation, now_ms));
            }
        }
        self.nodes.insert(node, NodeView { incarnation, role, slots, alive: true });
        let waiting: Vec<InstanceId> = self
            .instances
            .iter()
            .filter(|(_, i)| matches!(i.phase, Phase::AwaitingCapacity { .. }))
            .map(|(&id, _)| id)
            .collect();
        for id in waiting {
            actions.extend(self.plan(id, now_ms));
        }
        let running: Vec<InstanceId> = self.instances.keys().copied().collect();
        for id in running {
            actions.extend(self.top_up_backups(id));
        }
        actions
    }

    /// Registers an instance of the initial deployment at epoch 1.
    pub fn add_instance(&mut self, spec: InstanceSpec) -> Result<(), RecoveryError> {
        let Some(host) = self.nodes.get(&spec.node).copied().filter(|n| n.alive) else {
            return Err(RecoveryError::BadNode { node: spec.node });
        };
        for &b in &spec.backups {
            if b == spec.node || !self.nodes.contains_key(&b) {
                return Err(RecoveryError::BadNode { node: b });
            }
        }
        self.next_instance = self.next_instance.max(spec.id.0 + 1);
        for &other in spec.upstreams.iter().chain(&spec.downstreams) {
            self.next_instance = self.next_instance.max(other.0 + 1);
        }
        self.instances.insert(
            spec.id,
            InstanceView {
                node: spec.node,
                incarnation: host.incarnation,
                epoch: Epoch(1),
                bins: spec.bins,
                backups: spec.backups,
                covered: None,
                upstreams: spec.upstreams,
                downstreams: spec.downstreams,
                routed_as: spec.id,
                phase: Phase::Running,
                unprotected_since_ms: None,
            },
        );
        Ok(())
    }

    /// `incarnation` of `node` was declared failed (by the failure detector).
    /// Stale or repeated declarations yield nothing.
    pub fn node_failed(
        &mut self,
        node: NodeId,
        incarnation: Incarnation,
        now_ms: u64,
    ) -> Vec<RecoveryAction> {
        let Some(entry) = self.nodes.get_mut(&node) else {
            return Vec::new();
        };
        if entry.incarnation != incarnation || !entry.alive {
            return Vec::new();
        }
        entry.alive = false;
        let mut actions = vec![RecoveryAction::Fence { node, incarnation }];
        let ids: Vec<InstanceId> = self.instances.keys().copied().collect();
        for id in ids {
            let Some(inst) = self.instances.get_mut(&id) else { continue };
            if let Some(c) = inst.covered.as_mut() {
                c.holders.retain(|&h| h != node);
            }
            let hosted = inst.node == node;
            match inst.phase.clone() {
                Phase::Running | Phase::Restoring { .. } if hosted => actions.extend(self.plan(id, now_ms)),
                Phase::Restoring { source: RestoreSource::Backup { node: from, .. }, tried, .. }
                    if from == node =>
                {
                    actions.push(RecoveryAction::Stop {
                        instance: id,
                        epoch: inst.epoch,
                        node: inst.node,
                        incarnation: inst.incarnation,
                    });
                    inst.phase = Phase::AwaitingCapacity { since_ms: now_ms, tried };
                    actions.extend(self.plan(id, now_ms));
                }
                Phase::Running => actions.extend(self.top_up_backups(id)),
                _ => {}
            }
        }
        actions
    }

    /// A covered checkpoint reported by `instance` at `epoch` running on
    /// `node` (the caller has already admitted the sender's incarnation).
    /// Only the current placement of a running instance may report.
    pub fn on_covered(
        &mut self,
        instance: InstanceId,
        epoch: Epoch,
        node: NodeId,
        checkpoint: CheckpointId,
        holders: &[NodeId],
    ) -> Result<CoverOutcome, RecoveryError> {
        let inst = self.current(instance, epoch, node)?;
        if inst.phase != Phase::Running {
            return Err(RecoveryError::NotRunning { instance });
        }
        let newer = match &inst.covered {
            None => true,
            Some(c) => c.owner != instance || c.checkpoint < checkpoint,
        };
        if !newer {
            return Ok(CoverOutcome::Older);
        }
        let holders = holders.iter().copied().filter(|h| self.is_alive(*h)).collect();
        if let Some(inst) = self.instances.get_mut(&instance) {
            inst.covered = Some(CoveredCheckpoint { owner: instance, checkpoint, holders });
        }
        Ok(CoverOutcome::Recorded)
    }

    /// A replacement restored: re-route upstreams and downstreams, replay,
    /// recreate backups on failed nodes. A repeated report yields nothing.
    pub fn on_restored(&mut self, report: &Restored) -> Result<Vec<RecoveryAction>, RecoveryError> {
        let id = report.instance;
        let inst = self.current(id, report.epoch, report.node)?;
        match inst.phase {
            Phase::Restoring { .. } => {}
            Phase::Running => return Ok(Vec::new()),
            _ => return Err(RecoveryError::NotRunning { instance: id }),
        }
        let mut actions = Vec::new();
        for &upstream in &inst.upstreams {
            let Some(&(_, after)) = report.inputs.iter().find(|(u, _)| *u == upstream) else {
                return Err(RecoveryError::MissingInput { instance: id, upstream });
            };
            actions.push(RecoveryAction::RerouteUpstream {
                upstream,
                old_consumer: inst.routed_as,
                new_consumer: id,
                bins: inst.bins,
                node: inst.node,
                incarnation: inst.incarnation,
                epoch: inst.epoch,
            });
            actions.push(RecoveryAction::Replay {
                upstream,
                channel: ChannelId { producer: upstream, consumer: id },
                after,
            });
        }
        for &downstream in &inst.downstreams {
            actions.push(RecoveryAction::RerouteDownstream {
                downstream,
                old_producer: inst.routed_as,
                new_producer: id,
                node: inst.node,
                incarnation: inst.incarnation,
                epoch: inst.epoch,
            });
        }
        if let Some(inst) = self.instances.get_mut(&id) {
            inst.routed_as = id;
            inst.phase = Phase::Running;
        }
        actions.extend(self.top_up_backups(id));
        Ok(actions)
    }

    /// A replacement could not restore: re-plan, not asking that backup
    /// again.
    pub fn on_restore_failed(
        &mut self,
        instance: InstanceId,
        epoch: Epoch,
        node: NodeId,
        failure: RestoreFailure,
        now_ms: u64,
    ) -> Result<Vec<RecoveryAction>, RecoveryError> {
        let inst = self.current(instance, epoch, node)?;
        let Phase::Restoring { tried, .. } = &inst.phase else {
            return Err(RecoveryError::NotRunning { instance });
        };
        let RestoreFailure::NoCheckpoint { backup } = failure;
        let mut tried = tried.clone();
        if !tried.contains(&backup) {
            tried.push(backup);
        }
        if let Some(inst) = self.instances.get_mut(&instance) {
            inst.phase = Phase::AwaitingCapacity { since_ms: now_ms, tried };
        }
        Ok(self.plan(instance, now_ms))
    }

    /// Time passed: re-plans restores that timed out, retries instances
    /// waiting for capacity, and gives up on those that waited too long.
    pub fn tick(&mut self, now_ms: u64) -> Vec<RecoveryAction> {
        let mut actions = Vec::new();
        let ids: Vec<InstanceId> = self.instances.keys().copied().collect();
        for id in ids {
            let Some(inst) = self.instances.get_mut(&id) else { continue };
            match inst.phase.clone() {
                Phase::Restoring { started_ms, tried, .. }
                    if now_ms.saturating_sub(started_ms) >= self.config.restore_timeout_ms =>
                {
                    actions.push(RecoveryAction::Stop {
                        instance: id,
                        epoch: inst.epoch,
                        node: inst.node,
                        incarnation: inst.incarnation,
                    });
                    inst.phase = Phase::AwaitingCapacity { since_ms: now_ms, tried };
                    actions.extend(self.plan(id, now_ms));
                }
                Phase::AwaitingCapacity { .. } => actions.extend(self.plan(id, now_ms)),
                Phase::Running => {
                    let nodes = &self.nodes;
                    if inst.backups.iter().any(|b| nodes.get(b).is_some_and(|n| n.alive)) {
                        inst.unprotected_since_ms = None;
                        continue;
                    }
                    let since_ms = *inst.unprotected_since_ms.get_or_insert(now_ms);
                    let waited_ms = now_ms.saturating_sub(since_ms);
                    if waited_ms >= self.config.capacity_wait_ms {
                        inst.phase = Phase::Lost;
                        let reason = UnrecoverableReason::NoBackupNode { waited_ms };
                        actions.push(RecoveryAction::Unrecoverable(Unrecoverable { instance: id, reason }));
                    }
                }
                Phase::Restoring { .. } | Phase::Lost => {}
            }
        }
        actions
    }

    /// The planner's record of an instance.
    pub fn instance(&self, id: InstanceId) -> Option<&InstanceView> {
        self.instances.get(&id)
    }

    /// Every instance, in id order.
    pub fn instances(&self) -> impl Iterator<Item = (InstanceId, &InstanceView)> + '_ {
        self.instances.iter().map(|(&id, i)| (id, i))
    }

    /// The planner's record of a node.
    pub fn node(&self, id: NodeId) -> Option<&NodeView> {
        self.nodes.get(&id)
    }

    /// Every node, in id order.
    pub fn nodes(&self) -> impl Iterator<Item = (NodeId, &NodeView)> + '_ {
        self.nodes.iter().map(|(&id, n)| (id, n))
    }

    /// Free slots of a node, counting instances running or being restored
    /// on it, and lost ones still placed there (a lost instance keeps its
    /// slot while its node lives).
    pub fn free_slots(&self, node: NodeId) -> u32 {
        let Some(n) = self.nodes.get(&node) else { return 0 };
        let used = self
            .instances
            .values()
            .filter(|i| i.node == node && !matches!(i.phase, Phase::AwaitingCapacity { .. }))
            .count() as u32;
        n.slots.saturating_sub(used)
    }

    /// Whether no recovery is in progress (every instance running or lost).
    pub fn is_settled(&self) -> bool {
        self.instances.values().all(|i| matches!(i.phase, Phase::Running | Phase::Lost))
    }

    /// The planner's configuration.
    pub fn config(&self) -> RecoveryConfig {
        self.config
    }

    fn is_alive(&self, node: NodeId) -> bool {
        self.nodes.get(&node).is_some_and(|n| n.alive)
    }

    /// The instance, if `epoch` on `node` is its current placement.
    fn current(
        &self,
        instance: InstanceId,
        epoch: Epoch,
        node: NodeId,
    ) -> Result<&InstanceView, RecoveryError> {
        let inst = self.instances.get(&instance).ok_or(RecoveryError::UnknownInstance { instance })?;
        if inst.epoch != epoch {
            return Err(RecoveryError::StaleEpoch { instance, current: inst.epoch, got: epoch });
        }
        if inst.node != node {
            return Err(RecoveryError::WrongNode { instance, expected: inst.node, got: node });
        }
        Ok(inst)
    }

    /// Alive nodes with a free slot, best first: spares, then nodes that are
    /// not `avoid` (the instance's backups), then most free slots, then id.
    fn replacement_candidates(&self, avoid: &[NodeId]) -> Vec<NodeId> {
        let mut candidates: Vec<(bool, bool, std::cmp::Reverse<u32>, NodeId)> = self
            .nodes
            .iter()
            .filter(|(_, n)| n.alive)
            .map(|(&id, n)| {
                (n.role != NodeRole::Spare, avoid.contains(&id), std::cmp::Reverse(self.free_slots(id)), id)
            })
            .filter(|(_, _, free, _)| free.0 > 0)
            .collect();
        candidates.sort();
        candidates.into_iter().map(|(_, _, _, id)| id).collect()
    }

    /// Backups for an instance hosted on `host`: the alive ones of `keep`
    /// not on `host`, topped up to `R` with the least loaded alive nodes.
    fn choose_backups(&self, host: NodeId, keep: &[NodeId]) -> Vec<NodeId> {
        let mut backups: Vec<NodeId> = Vec::new();
        for &b in keep {
            if b != host && self.is_alive(b) && !backups.contains(&b) {
                backups.push(b);
            }
        }
        while backups.len() < self.config.backups_per_instance {
            match self.new_backup_candidate(host, &backups) {
                Some(b) => backups.push(b),
                None => break,
            }
        }
        backups
    }

    fn new_backup_candidate(&self, host: NodeId, taken: &[NodeId]) -> Option<NodeId> {
        let load = |node: NodeId| self.instances.values().filter(|i| i.backups.contains(&node)).count();
        self.nodes
            .iter()
            .filter(|(&id, n)| n.alive && id != host && !taken.contains(&id))
            .map(|(&id, _)| (load(id), id))
            .min()
            .map(|(_, id)| id)
    }

    /// Replaces failed backups of a running instance and adds missing ones,
    /// as far as candidates allow.
    fn top_up_backups(&mut self, id: InstanceId) -> Vec<RecoveryAction> {
        let Some(inst) = self.instances.get(&id) else { return Vec::new() };
        if inst.phase != Phase::Running {
            return Vec::new();
        }
        let (host, epoch) = (inst.node, inst.epoch);
        let mut backups = inst.backups.clone();
        let dead = backups.iter().copied().filter(|&b| !self.is_alive(b)).map(Some).collect::<Vec<_>>();
        let short = self.config.backups_per_instance.saturating_sub(backups.len());
        let mut actions = Vec::new();
        for old in dead.into_iter().chain(std::iter::repeat_n(None, short)) {
            let taken: Vec<NodeId> = backups.iter().copied().filter(|&b| self.is_alive(b)).collect();
            match (self.new_backup_candidate(host, &taken), old) {
                (Some(new_backup), _) => {
                    backups.retain(|&b| Some(b) != old);
                    backups.push(new_backup);
                    actions.push(RecoveryAction::RecreateBackup {
                        instance: id,
                        epoch,
                        node: host,
                        replacing: old,
                        new_backup,
                    });
                }
                // No replacement: stop waiting for the dead one, unless it
                // is the last (then the instance is unprotected; see tick).
                (None, Some(backup)) if !taken.is_empty() => {
                    backups.retain(|&b| b != backup);
                    actions.push(RecoveryAction::RemoveBackup { instance: id, epoch, node: host, backup });
                }
                (None, _) => {}
            }
        }
        if let Some(inst) = self.instances.get_mut(&id) {
            inst.backups = backups;
        }
        actions
    }

    /// Plans (or re-plans) the recovery of a lost instance.
    fn plan(&mut self, id: InstanceId, now_ms: u64) -> Vec<RecoveryAction> {
        let Some(inst) = self.instances.get(&id).cloned() else { return Vec::new() };
        let (since_ms, tried) = match &inst.phase {
            Phase::AwaitingCapacity { since_ms, tried } => (*since_ms, tried.clone()),
            Phase::Restoring { tried, .. } => (now_ms, tried.clone()),
            Phase::Running => (now_ms, Vec::new()),
            Phase::Lost => return Vec::new(),
        };
        let lost = |reason| vec![RecoveryAction::Unrecoverable(Unrecoverable { instance: id, reason })];
        // Where the state comes from.
        let source = match &inst.covered {
            None => RestoreSource::Initial,
            Some(c) => {
                // Those known to hold it first, then the other backups, then
                // anyone: asking is safe, a node without it says so.
                let holder = c
                    .holders
                    .iter()
                    .chain(&inst.backups)
                    .copied()
                    .chain(self.nodes.keys().copied())
                    .find(|&b| self.is_alive(b) && !tried.contains(&b));
                match holder {
                    Some(node) => RestoreSource::Backup { node, owner: c.owner, at_least: c.checkpoint },
                    None => {
                        self.set_phase(id, Phase::Lost);
                        return lost(UnrecoverableReason::NoBackup {
                            owner: c.owner,
                            at_least: c.checkpoint,
                            tried,
                        });
                    }
                }
            }
        };
        // Where it runs.
        let candidates = self.replacement_candidates(&inst.backups);
        if candidates.is_empty() {
            let waited_ms = now_ms.saturating_sub(since_ms);
            if waited_ms >= self.config.capacity_wait_ms {
                self.set_phase(id, Phase::Lost);
                return lost(UnrecoverableReason::NoReplacement { waited_ms });
            }
            self.set_phase(id, Phase::AwaitingCapacity { since_ms, tried });
            return Vec::new();
        }
        let ways =
            (self.config.split_ways.max(1) as usize).min(candidates.len()).min(inst.bins.len() as usize);
        let mut actions = Vec::new();
        let epoch = Epoch(inst.epoch.0 + 1);
        if ways <= 1 {
            actions.push(self.place(id, None, &inst, inst.bins, candidates[0], epoch, source, tried, now_ms));
            return actions;
        }
        self.instances.remove(&id);
        for (i, &node) in candidates.iter().take(ways).enumerate() {
            let child = InstanceId(self.next_instance);
            self.next_instance += 1;
            let bins = inst.bins.part(i as u32, ways as u32);
            actions.push(self.place(
                child,
                Some(id),
                &inst,
                bins,
                node,
                epoch,
                source,
                tried.clone(),
                now_ms,
            ));
        }
        actions
    }

    /// Records a restore attempt of `id` (a new or the same instance) on
    /// `node` and returns its [`RecoveryAction::Restore`].
    #[allow(clippy::too_many_arguments)]
    fn place(
        &mut self,
        id: InstanceId,
        parent: Option<InstanceId>,
        from: &InstanceView,
        bins: BinRange,
        node: NodeId,
        epoch: Epoch,
        source: RestoreSource,
        tried: Vec<NodeId>,
        now_ms: u64,
    ) -> RecoveryAction {
        let backups = self.choose_backups(node, &from.backups);
        let incarnation = self.nodes.get(&node).map_or(Incarnation(0), |n| n.incarnation);
        if let Some(n) = self.nodes.get_mut(&node) {
            n.role = NodeRole::Active;
        }
        self.instances.insert(
            id,
            InstanceView {
                node,
                incarnation,
                epoch,
                bins,
                backups: backups.clone(),
                covered: from.covered.clone(),
                upstreams: from.upstreams.clone(),
                downstreams: from.downstreams.clone(),
                routed_as: from.routed_as,
                phase: Phase::Restoring { source, started_ms: now_ms, tried },
                unprotected_since_ms: None,
            },
        );
        RecoveryAction::Restore(RestorePlan {
            instance: id,
            parent,
            epoch,
            node,
            incarnation,
            bins,
            source,
            backups,
        })
    }

    fn set_phase(&mut self, id: InstanceId, phase: Phase) {
        if let Some(inst) = self.instances.get_mut(&id) {
            inst.phase = phase;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SRC: InstanceId = InstanceId(0);
    const SINK: InstanceId = InstanceId(1);
    const OP: InstanceId = InstanceId(2);
    const I1: Incarnation = Incarnation(1);

    fn config(split_ways: u32, capacity_wait_ms: u64) -> RecoveryConfig {
        RecoveryConfig { backups_per_instance: 1, split_ways, restore_timeout_ms: 100, capacity_wait_ms }
    }

    /// Nodes 1..=actives active, then `spares` spares; OP on node 1 backed
    /// up on node 2.
    fn cluster(actives: u32, spares: u32, split_ways: u32, capacity_wait_ms: u64) -> Recovery {
        let mut r = Recovery::new(config(split_ways, capacity_wait_ms));
        for n in 1..=actives + spares {
            let role = if n <= actives { NodeRole::Active } else { NodeRole::Spare };
            assert!(r.add_node(NodeId(n), I1, role, 1, 0).is_empty());
        }
        r.add_instance(InstanceSpec {
            id: OP,
            node: NodeId(1),
            bins: BinRange::new(0, 16),
            backups: vec![NodeId(2)],
            upstreams: vec![SRC],
            downstreams: vec![SINK],
        })
        .unwrap();
        r
    }

    fn cp(n: u64) -> CheckpointId {
        CheckpointId { epoch: Epoch(1), n }
    }

    fn restores(actions: &[RecoveryAction]) -> Vec<RestorePlan> {
        actions
            .iter()
            .filter_map(|a| match a {
                RecoveryAction::Restore(p) => Some(p.clone()),
                _ => None,
            })
            .collect()
    }

    fn restored(plan: &RestorePlan, after: Seq) -> Restored {
        Restored {
            instance: plan.instance,
            epoch: plan.epoch,
            node: plan.node,
            checkpoint: None,
            inputs: vec![(SRC, after)],
        }
    }

    #[test]
    fn failure_restores_on_a_spare_from_the_covered_backup() {
        let mut r = cluster(2, 1, 1, 0);
        assert_eq!(r.on_covered(OP, Epoch(1), NodeId(1), cp(3), &[NodeId(2)]), Ok(CoverOutcome::Recorded));
        assert_eq!(r.on_covered(OP, Epoch(1), NodeId(1), cp(2), &[NodeId(2)]), Ok(CoverOutcome::Older));
        let actions = r.node_failed(NodeId(1), I1, 10);
        assert_eq!(actions[0], RecoveryAction::Fence { node: NodeId(1), incarnation: I1 });
        let plans = restores(&actions);
        assert_eq!(plans.len(), 1);
        let plan = &plans[0];
        assert_eq!((plan.instance, plan.node, plan.epoch, plan.parent), (OP, NodeId(3), Epoch(2), None));
        assert_eq!(plan.source, RestoreSource::Backup { node: NodeId(2), owner: OP, at_least: cp(3) });
        assert_eq!(plan.backups, vec![NodeId(2)]);
        assert_eq!(r.node(NodeId(3)).map(|n| n.role), Some(NodeRole::Active));
        assert!(r.node_failed(NodeId(1), I1, 11).is_empty(), "declared once");
        assert!(!r.is_settled());

        let done = r.on_restored(&restored(plan, 30)).unwrap();
        let reroute = RecoveryAction::RerouteUpstream {
            upstream: SRC,
            old_consumer: OP,
            new_consumer: OP,
            bins: BinRange::new(0, 16),
            node: NodeId(3),
            incarnation: I1,
            epoch: Epoch(2),
        };
        let replay = RecoveryAction::Replay {
            upstream: SRC,
            channel: ChannelId { producer: SRC, consumer: OP },
            after: 30,
        };
        let downstream = RecoveryAction::RerouteDownstream {
            downstream: SINK,
            old_producer: OP,
            new_producer: OP,
            node: NodeId(3),
            incarnation: I1,
            epoch: Epoch(2),
        };
        assert_eq!(done, vec![reroute, replay, downstream]);
        assert!(r.is_settled());
        assert!(r.on_restored(&restored(plan, 30)).unwrap().is_empty(), "repeated report");
        // The old placement is gone for good.
        assert!(matches!(
            r.on_covered(OP, Epoch(1), NodeId(1), cp(4), &[NodeId(2)]),
            Err(RecoveryError::StaleEpoch { .. })
        ));
        let next = CheckpointId { epoch: Epoch(2), n: 1 };
        assert_eq!(r.on_covered(OP, Epoch(2), NodeId(3), next, &[NodeId(2)]), Ok(CoverOutcome::Recorded));
    }

    #[test]
    fn without_spares_a_survivor_with_a_free_slot_is_used_and_initial_state_needs_no_backup() {
        let mut r = cluster(3, 0, 1, 0);
        let plans = restores(&r.node_failed(NodeId(1), I1, 0));
        // Node 2 is the backup, so node 3 is preferred.
        assert_eq!(plans[0].node, NodeId(3));
        assert_eq!(plans[0].source, RestoreSource::Initial);
        assert_eq!(plans[0].backups, vec![NodeId(2)]);
    }

    #[test]
    fn backup_failure_of_a_running_instance_recreates_it() {
        let mut r = cluster(3, 0, 1, 0);
        let actions = r.node_failed(NodeId(2), I1, 0);
        assert_eq!(
            actions,
            vec![
                RecoveryAction::Fence { node: NodeId(2), incarnation: I1 },
                RecoveryAction::RecreateBackup {
                    instance: OP,
                    epoch: Epoch(1),
                    node: NodeId(1),
                    replacing: Some(NodeId(2)),
                    new_backup: NodeId(3),
                }
            ]
        );
        assert_eq!(r.instance(OP).map(|i| i.backups.clone()), Some(vec![NodeId(3)]));
    }

    #[test]
    fn replacement_dying_during_recovery_re_plans_with_a_new_epoch() {
        let mut r = cluster(2, 2, 1, 0);
        r.on_covered(OP, Epoch(1), NodeId(1), cp(1), &[NodeId(2)]).unwrap();
        let first = restores(&r.node_failed(NodeId(1), I1, 0)).remove(0);
        assert_eq!(first.node, NodeId(3));
        let second = restores(&r.node_failed(NodeId(3), I1, 5)).remove(0);
        assert_eq!((second.node, second.epoch), (NodeId(4), Epoch(3)));
        assert!(matches!(r.on_restored(&restored(&first, 0)), Err(RecoveryError::StaleEpoch { .. })));
        assert!(r.on_restored(&restored(&second, 0)).is_ok());
    }

    #[test]
    fn backup_dying_during_recovery_stops_the_attempt_and_tries_another_holder() {
        let mut r = Recovery::new(RecoveryConfig { backups_per_instance: 2, ..config(1, 0) });
        for n in 1..=4 {
            r.add_node(NodeId(n), I1, NodeRole::Active, 1, 0);
        }
        r.add_instance(InstanceSpec {
            id: OP,
            node: NodeId(1),
            bins: BinRange::new(0, 4),
            backups: vec![NodeId(2), NodeId(3)],
            upstreams: vec![SRC],
            downstreams: vec![SINK],
        })
        .unwrap();
        r.on_covered(OP, Epoch(1), NodeId(1), cp(1), &[NodeId(2), NodeId(3)]).unwrap();
        let first = restores(&r.node_failed(NodeId(1), I1, 0)).remove(0);
        assert_eq!(first.node, NodeId(4));
        assert!(matches!(first.source, RestoreSource::Backup { node: NodeId(2), .. }));
        let actions = r.node_failed(NodeId(2), I1, 1);
        assert!(actions.contains(&RecoveryAction::Stop {
            instance: OP,
            epoch: Epoch(2),
            node: NodeId(4),
            incarnation: I1
        }));
        let second = restores(&actions).remove(0);
        assert_eq!(second.epoch, Epoch(3));
        assert!(matches!(second.source, RestoreSource::Backup { node: NodeId(3), .. }));
        // Node 3 turns out not to hold it; then anyone alive is asked.
        let failure = RestoreFailure::NoCheckpoint { backup: NodeId(3) };
        let third = restores(&r.on_restore_failed(OP, Epoch(3), NodeId(4), failure, 2).unwrap()).remove(0);
        assert!(matches!(third.source, RestoreSource::Backup { node: NodeId(4), .. }));
        let failure = RestoreFailure::NoCheckpoint { backup: NodeId(4) };
        let actions = r.on_restore_failed(OP, Epoch(4), NodeId(4), failure, 3).unwrap();
        assert_eq!(
            actions,
            vec![RecoveryAction::Unrecoverable(Unrecoverable {
                instance: OP,
                reason: UnrecoverableReason::NoBackup {
                    owner: OP,
                    at_least: cp(1),
                    tried: vec![NodeId(3), NodeId(4)]
                },
            })]
        );
        assert_eq!(r.instance(OP).map(|i| i.phase.clone()), Some(Phase::Lost));
        assert!(r.is_settled());
    }

    #[test]
    fn no_capacity_waits_for_a_node_then_gives_up() {
        // Node 2 is full once it hosts something else.
        let full = || {
            let mut r = cluster(2, 0, 1, 50);
            r.add_instance(InstanceSpec {
                id: InstanceId(5),
                node: NodeId(2),
                bins: BinRange::new(16, 32),
                backups: vec![NodeId(1)],
                upstreams: vec![SRC],
                downstreams: vec![SINK],
            })
            .unwrap();
            r
        };
        let mut r = full();
        let actions = r.node_failed(NodeId(1), I1, 0);
        assert!(restores(&actions).is_empty());
        assert!(matches!(r.instance(OP).map(|i| &i.phase), Some(Phase::AwaitingCapacity { .. })));
        assert!(restores(&r.tick(20)).is_empty());
        // A node joins in time.
        let plans = restores(&r.add_node(NodeId(7), I1, NodeRole::Spare, 1, 30));
        assert_eq!(plans[0].node, NodeId(7));

        let mut r = full();
        r.node_failed(NodeId(1), I1, 0);
        assert!(r.tick(49).is_empty());
        let gave_up = r.tick(50);
        assert_eq!(
            gave_up,
            vec![RecoveryAction::Unrecoverable(Unrecoverable {
                instance: OP,
                reason: UnrecoverableReason::NoReplacement { waited_ms: 50 },
            })]
        );
    }

    #[test]
    fn restore_timeout_abandons_and_re_plans() {
        let mut r = cluster(2, 1, 1, 0);
        let first = restores(&r.node_failed(NodeId(1), I1, 0)).remove(0);
        assert!(r.tick(99).is_empty());
        let actions = r.tick(100);
        assert!(matches!(actions[0], RecoveryAction::Stop { epoch: Epoch(2), .. }));
        let second = restores(&actions).remove(0);
        assert_eq!((second.node, second.epoch), (first.node, Epoch(3)));
    }

    #[test]
    fn split_recovery_creates_parts_that_inherit_the_parent_channels() {
        let mut r = cluster(2, 2, 2, 0);
        r.on_covered(OP, Epoch(1), NodeId(1), cp(2), &[NodeId(2)]).unwrap();
        let plans = restores(&r.node_failed(NodeId(1), I1, 0));
        assert_eq!(plans.len(), 2);
        assert!(r.instance(OP).is_none(), "the parent is retired");
        let (a, b) = (&plans[0], &plans[1]);
        assert_eq!((a.parent, b.parent), (Some(OP), Some(OP)));
        assert_ne!(a.instance, b.instance);
        assert_eq!((a.bins, b.bins), (BinRange::new(0, 8), BinRange::new(8, 16)));
        assert_eq!((a.node, b.node), (NodeId(3), NodeId(4)));
        for p in &plans {
            assert_eq!(p.source, RestoreSource::Backup { node: NodeId(2), owner: OP, at_least: cp(2) });
        }
        let done = r.on_restored(&restored(a, 7)).unwrap();
        assert!(done.contains(&RecoveryAction::RerouteUpstream {
            upstream: SRC,
            old_consumer: OP,
            new_consumer: a.instance,
            bins: a.bins,
            node: a.node,
            incarnation: I1,
            epoch: a.epoch,
        }));
        assert!(done.contains(&RecoveryAction::RerouteDownstream {
            downstream: SINK,
            old_producer: OP,
            new_producer: a.instance,
            node: a.node,
            incarnation: I1,
            epoch: a.epoch,
        }));
        // The part's own coverage replaces the parent's record.
        let own = CheckpointId { epoch: a.epoch, n: 1 };
        assert_eq!(r.on_covered(a.instance, a.epoch, a.node, own, &[NodeId(2)]), Ok(CoverOutcome::Recorded));
        let view = r.instance(a.instance).unwrap();
        assert_eq!(view.covered.as_ref().map(|c| c.owner), Some(a.instance));
        assert_eq!(view.routed_as, a.instance);
    }

    #[test]
    fn reports_from_the_wrong_place_are_refused() {
        let mut r = cluster(2, 1, 1, 0);
        assert!(matches!(
            r.on_covered(InstanceId(9), Epoch(1), NodeId(1), cp(1), &[]),
            Err(RecoveryError::UnknownInstance { .. })
        ));
        assert!(matches!(
            r.on_covered(OP, Epoch(1), NodeId(3), cp(1), &[]),
            Err(RecoveryError::WrongNode { .. })
        ));
        let plan = restores(&r.node_failed(NodeId(1), I1, 0)).remove(0);
        // Coverage before the restore is recorded: retry later.
        let early = CheckpointId { epoch: plan.epoch, n: 1 };
        assert_eq!(
            r.on_covered(OP, plan.epoch, plan.node, early, &[NodeId(2)]),
            Err(RecoveryError::NotRunning { instance: OP })
        );
        let mut missing = restored(&plan, 0);
        missing.inputs.clear();
        assert!(matches!(r.on_restored(&missing), Err(RecoveryError::MissingInput { .. })));
        assert!(r
            .add_instance(InstanceSpec {
                id: InstanceId(8),
                node: NodeId(1),
                bins: BinRange::new(0, 1),
                backups: vec![],
                upstreams: vec![],
                downstreams: vec![],
            })
            .is_err());
    }
}
