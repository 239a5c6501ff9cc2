//! Live handoff of bins between the workers of one process: the
//! [`HandoffBoard`] every exchange sender, edge receiver and keyed
//! instance of a job shares, and the protocol it carries
//! (docs/ARCHITECTURE.md, *Handoff*).
//!
//! A step moves a run of bins `S` of every keyed operator from worker `A`
//! to worker `B` (one [`Assignment::moved`]):
//!
//! 1. [`Job::move_bins`](crate::Job::move_bins) holds checkpoints back
//!    until none is in flight, then publishes the next assignment version
//!    `v` on the board.
//! 2. Every exchange sender into a keyed operator, at its next burst
//!    boundary, sends what it routed by the old table, then a marker of `v`
//!    to every consumer, and from then on routes by the new table: records
//!    of `S` go to `B`.
//! 3. A keyed instance on `B` holds the records of `S` it receives, in
//!    order, until their state arrives; records of its other bins go on.
//! 4. The edge receiver on `A` that has a marker of `v` from every producer
//!    has received every record of `S` it will ever get, and pushed them
//!    downstream: it tells its keyed instance, which splits `S` off its
//!    store and leaves it on the board (a parcel).
//! 5. The keyed instance on `B` merges the parcel into its store (whole
//!    bins, nothing rehashed), then applies the records it held, in the
//!    order they came.
//! 6. When every keyed instance on `B` merged, the step is done:
//!    checkpoints resume, recording the new assignment.
//!
//! Records of bins that do not move are never held. A key's records from
//! one producer keep their order: before the producer's marker they reach
//! `A` and are in the state before it is split off; after it they reach `B`
//! and are applied after it is merged.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use spate_state::keyspace::BinRange;
use spate_state::StateStore;

use crate::assignment::Assignment;
use crate::routing::RoutingTable;

mod instance;

pub use instance::{Arrival, Merged, Mover};

/// A step in flight (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepInfo {
    /// The assignment version it makes.
    pub version: u64,
    /// The bins that move.
    pub bins: BinRange,
    /// The worker they leave.
    pub from: usize,
    /// The worker they go to.
    pub to: usize,
}

struct Step {
    info: StepInfo,
    /// A staged step's assignment, until senders switch to it.
    next: Option<Assignment>,
    /// Split-off stores by keyed operator, waiting on `to`.
    parcels: Vec<(String, StateStore)>,
    /// Keyed operators that split their parcel off on `from`.
    deposited: usize,
    /// Keyed operators that merged their parcel on `to`.
    merged: usize,
    /// Bytes of state moved (the parcels' live bytes).
    bytes: u64,
    started: Instant,
}

impl Step {
    fn new(info: StepInfo, next: Option<Assignment>) -> Self {
        Self { info, next, parcels: Vec::new(), deposited: 0, merged: 0, bytes: 0, started: Instant::now() }
    }
}

struct State {
    assignment: Assignment,
    step: Option<Step>,
    /// Parcels split off here for a worker of another node, until the
    /// node's agent ships them: (version, operator, store).
    outgoing: Vec<(u64, String, StateStore)>,
    /// Keyed operators of the job, by name, and whether each can hand
    /// bins off.
    keyed: Vec<(String, bool)>,
    /// Steps done, with what they moved.
    done: Vec<StepDone>,
    /// Per worker: it ended for good (see [`HandoffBoard::retire`]); no
    /// step may involve it any more.
    retired: Vec<bool>,
}

/// What a finished step moved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepDone {
    /// The step.
    pub info: StepInfo,
    /// Bytes of state moved.
    pub bytes: u64,
    /// Microseconds from publishing the step to the last merge.
    pub micros: u64,
}

/// What every part of a job shares about its assignment and the handoff
/// in flight (see the module documentation).
pub struct HandoffBoard {
    /// The version senders route by (the assignment's).
    version: AtomicU64,
    /// The version of the step keyed instances look at: published with
    /// `version` in one process; on a cluster a step is staged on every
    /// node (its target holds the moving bins' records from then on)
    /// before any sender switches to it.
    staged: AtomicU64,
    /// Per worker: a parcel waits for it, or a step concerns it (its
    /// worker loop nudges its inputs).
    wake: Vec<AtomicBool>,
    /// Per worker: whether it runs in this process (on a cluster, a
    /// node's share runs some of the job's workers).
    local: Vec<bool>,
    state: Mutex<State>,
}

impl HandoffBoard {
    /// The board of a job starting from `assignment`.
    pub fn new(assignment: Assignment) -> Arc<Self> {
        let workers = assignment.workers();
        Self::with_local(assignment, &(0..workers).collect::<Vec<_>>())
    }

    /// The board of a node's share of a cluster job, which runs the
    /// workers `local` of the job's (see [`HandoffBoard::take_outgoing`]).
    pub fn with_local(assignment: Assignment, local: &[usize]) -> Arc<Self> {
        let workers = assignment.workers();
        Arc::new(Self {
            version: AtomicU64::new(assignment.version()),
            staged: AtomicU64::new(assignment.version()),
            wake: (0..workers).map(|_| AtomicBool::new(false)).collect(),
            local: (0..workers).map(|w| local.contains(&w)).collect(),
            state: Mutex::new(State {
                assignment,
                step: None,
                outgoing: Vec::new(),
                keyed: Vec::new(),
                done: Vec::new(),
                retired: vec![false; workers],
            }),
        })
    }

    /// Whether worker `w` runs in this process.
    pub fn is_local(&self, w: usize) -> bool {
        self.local.get(w).copied().unwrap_or(false)
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // The state is only ever replaced whole under the lock: a panic
        // elsewhere leaves it consistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The version exchange senders must route by: one load, on a burst's
    /// boundary.
    #[inline]
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    /// The version of the step keyed instances look at (see
    /// [`HandoffBoard::stage_move`]): one load, on a burst's boundary.
    #[inline]
    pub fn staged(&self) -> u64 {
        self.staged.load(Ordering::Acquire)
    }

    /// The current assignment.
    pub fn assignment(&self) -> Assignment {
        self.state().assignment.clone()
    }

    /// The routing table of the current assignment, and its version.
    pub(crate) fn routing(&self) -> (u64, RoutingTable) {
        let s = self.state();
        (s.assignment.version(), s.assignment.routing())
    }

    /// The step in flight, if any.
    pub fn step(&self) -> Option<StepInfo> {
        self.state().step.as_ref().map(|s| s.info)
    }

    /// Steps done so far.
    pub fn done(&self) -> Vec<StepDone> {
        self.state().done.clone()
    }

    /// A keyed operator's instance on worker 0 registers (once per
    /// operator): `movable` when it can hand bins off.
    pub fn register_keyed(&self, operator: &str, movable: bool) {
        let mut s = self.state();
        if !s.keyed.iter().any(|(o, _)| o == operator) {
            s.keyed.push((operator.to_string(), movable));
        }
    }

    /// Keyed operators that cannot hand bins off.
    pub(crate) fn unmovable(&self) -> Vec<String> {
        self.state().keyed.iter().filter(|(_, m)| !m).map(|(o, _)| o.clone()).collect()
    }

    /// Stages step `info` of a cluster job, which the coordinator decided
    /// (every node stages the same): the keyed instance of its target
    /// holds the moving bins' records from now on, but senders keep the
    /// current assignment until [`HandoffBoard::switch`] — on a cluster a
    /// sender's records by the new assignment may reach the target before
    /// the target's node heard of the step, so every node stages it before
    /// any switches. Returns the next assignment (the current one with
    /// `info`'s move); fails, changing nothing, if the move does not fit or
    /// is not the next version.
    pub fn stage_move(&self, info: StepInfo) -> Result<Assignment, HandoffError> {
        let mut s = self.state();
        Self::check_live(&s, &info)?;
        let next = s.assignment.moved(info.bins, info.from, info.to).map_err(HandoffError::Assignment)?;
        if next.version() != info.version {
            return Err(HandoffError::Version { expected: next.version(), got: info.version });
        }
        s.step = Some(Step::new(info, Some(next.clone())));
        drop(s);
        self.staged.store(info.version, Ordering::Release);
        self.nudge(info.to);
        Ok(next)
    }

    /// Senders switch to the staged step `version` (see
    /// [`HandoffBoard::stage_move`]); whether it was staged.
    pub fn switch(&self, version: u64) -> bool {
        let mut s = self.state();
        let Some(next) =
            s.step.as_mut().filter(|st| st.info.version == version).and_then(|st| st.next.take())
        else {
            return false;
        };
        s.assignment = next;
        drop(s);
        self.version.store(version, Ordering::Release);
        self.nudge_all();
        true
    }

    /// Publishes a step to `next` (see [`Job::move_bins`](crate::Job::move_bins)).
    /// Fails, changing nothing, if `info`'s giver or taker ended.
    pub(crate) fn publish(&self, info: StepInfo, next: Assignment) -> Result<(), HandoffError> {
        let mut s = self.state();
        Self::check_live(&s, &info)?;
        s.assignment = next;
        s.step = Some(Step::new(info, None));
        drop(s);
        self.staged.store(info.version, Ordering::Release);
        self.version.store(info.version, Ordering::Release);
        self.nudge_all();
        Ok(())
    }

    /// Every worker's senders switch now, not at their next record.
    fn nudge_all(&self) {
        for w in 0..self.wake.len() {
            self.nudge(w);
        }
    }

    /// Asks worker `w`'s loop to nudge its inputs.
    fn nudge(&self, w: usize) {
        if let Some(f) = self.wake.get(w) {
            f.store(true, Ordering::Release);
        }
    }

    /// Whether worker `w` should nudge its inputs (clears the request).
    #[inline]
    pub(crate) fn take_wake(&self, w: usize) -> bool {
        self.wake.get(w).is_some_and(|f| f.load(Ordering::Relaxed) && f.swap(false, Ordering::AcqRel))
    }

    /// Whether the step in flight still needs worker `w` (local to this
    /// board): it gives bins its keyed instances have not all split off,
    /// or takes bins they have not all merged. Such a worker keeps running
    /// after its inputs ended (see `Worker::pass`): it still owes the
    /// split, or the records it held for the state.
    pub(crate) fn involves(&self, w: usize) -> bool {
        Self::needs(&self.state(), w)
    }

    fn needs(s: &State, w: usize) -> bool {
        let keyed = s.keyed.len();
        s.step.as_ref().is_some_and(|st| {
            (st.info.from == w && st.deposited < keyed) || (st.info.to == w && st.merged < keyed)
        })
    }

    /// Worker `w` is about to end for good (its inputs ended): whether it
    /// may. It may not while a step needs it; once it did, no step that
    /// involves it is published or staged (it would wait for a worker
    /// that is gone).
    pub(crate) fn retire(&self, w: usize) -> bool {
        let mut s = self.state();
        if Self::needs(&s, w) {
            return false;
        }
        if let Some(r) = s.retired.get_mut(w) {
            *r = true;
        }
        true
    }

    /// Refuses a step to or from a retired worker.
    fn check_live(s: &State, info: &StepInfo) -> Result<(), HandoffError> {
        let gone = |w: usize| s.retired.get(w).copied().unwrap_or(false);
        if gone(info.from) || gone(info.to) {
            return Err(HandoffError::JobEnded);
        }
        Ok(())
    }

    /// `operator`'s instance on the step's `from` split `store` off: it
    /// waits for `to`.
    pub fn deposit(&self, version: u64, operator: &str, store: StateStore) {
        let mut s = self.state();
        let Some(step) = s.step.as_mut().filter(|st| st.info.version == version) else { return };
        step.bytes += store.segment_bytes_in_use();
        step.deposited += 1;
        let to = step.info.to;
        if self.is_local(to) {
            step.parcels.push((operator.to_string(), store));
        } else {
            s.outgoing.push((version, operator.to_string(), store));
        }
        drop(s);
        self.nudge(to);
    }

    /// Parcels split off here for a worker of another node, to ship there
    /// (a node's agent takes them): `(version, operator, store)`.
    pub fn take_outgoing(&self) -> Vec<(u64, String, StateStore)> {
        std::mem::take(&mut self.state().outgoing)
    }

    /// Ends step `version` on a node that neither gives nor takes its bins
    /// last (its senders switched; the coordinator heard the target merge).
    pub fn close(&self, version: u64) {
        let mut s = self.state();
        if s.step.as_ref().is_some_and(|st| st.info.version == version) {
            s.step = None;
        }
    }

    /// `operator`'s parcel of step `version`, if it was deposited.
    pub fn take_parcel(&self, version: u64, operator: &str) -> Option<StateStore> {
        let mut s = self.state();
        let step = s.step.as_mut().filter(|st| st.info.version == version)?;
        let i = step.parcels.iter().position(|(o, _)| o == operator)?;
        Some(step.parcels.swap_remove(i).1)
    }

    /// `operator`'s instance on `to` merged its parcel; the step is done
    /// once every keyed operator's did (`Some`: what it moved).
    pub fn merged(&self, version: u64) -> Option<StepDone> {
        let mut s = self.state();
        let keyed = s.keyed.len();
        let step = s.step.as_mut().filter(|st| st.info.version == version)?;
        step.merged += 1;
        if step.merged < keyed {
            return None;
        }
        let step = s.step.take()?;
        let done = StepDone {
            info: step.info,
            bytes: step.bytes,
            micros: step.started.elapsed().as_micros() as u64,
        };
        s.done.push(done.clone());
        Some(done)
    }
}

/// What a keyed instance is told about a step (see
/// [`Push::handoff`](crate::push::Push::handoff)).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Handoff {
    /// Every producer's marker of step `info` reached this worker's edge
    /// receiver, which pushed every record before them: on `info.from`,
    /// split `info.bins` off and deposit them.
    Drained(StepInfo),
    /// Look at the board: a step may have begun, or a parcel arrived.
    Poll,
}

/// Why a live handoff was refused or did not complete (nothing moved,
/// unless [`HandoffError::TimedOut`] says otherwise).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum HandoffError {
    /// This job's bins cannot move from here: it runs one worker, or it
    /// is a share of a cluster job (whose coordinator moves them).
    NotLive {
        /// Why.
        why: &'static str,
    },
    /// Keyed operators that cannot hand bins off (windows, joins).
    Unmovable {
        /// Their names.
        operators: Vec<String>,
    },
    /// Another step is in flight.
    Busy {
        /// Its version.
        version: u64,
    },
    /// The move does not fit the assignment.
    Assignment(crate::assignment::AssignmentError),
    /// The checkpoint in flight did not complete within the timeout.
    CheckpointBusy {
        /// The checkpoint.
        checkpoint: u64,
    },
    /// The job ended (or failed) before the step completed.
    JobEnded,
    /// A cluster's step is not the next version of this node's assignment
    /// (the nodes disagree: a bug, or a message of another epoch).
    Version {
        /// The version the move makes here.
        expected: u64,
        /// The step's.
        got: u64,
    },
    /// The step did not complete within the timeout; it stays in flight.
    TimedOut {
        /// The step.
        step: StepInfo,
        /// Milliseconds waited.
        waited_ms: u64,
    },
}

impl std::fmt::Display for HandoffError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HandoffError::NotLive { why } => write!(f, "this job's bins cannot move live: {why}"),
            HandoffError::Unmovable { operators } => {
                write!(f, "keyed operators that cannot hand bins off yet: {}", operators.join(", "))
            }
            HandoffError::Busy { version } => {
                write!(f, "a handoff (to version {version}) is already running")
            }
            HandoffError::Assignment(e) => e.fmt(f),
            HandoffError::CheckpointBusy { checkpoint } => {
                write!(f, "checkpoint {checkpoint} did not complete in time to start the handoff")
            }
            HandoffError::JobEnded => f.write_str("the job ended before the handoff completed"),
            HandoffError::Version { expected, got } => {
                write!(f, "handoff step to version {got} is not this node's next version ({expected})")
            }
            HandoffError::TimedOut { step, waited_ms } => write!(
                f,
                "moving bins {} from worker {} to worker {} did not complete within {waited_ms} ms",
                step.bins, step.from, step.to
            ),
        }
    }
}

impl std::error::Error for HandoffError {}
