//! A keyed instance's part in the job's live handoffs ([`Mover`]): the
//! one implementation of steps 3 to 5 of the protocol (see the module
//! above), which every movable keyed operator embeds — `ops`' running
//! aggregates and the simulator's workload alike.
//!
//! On the worker a step's bins leave, the instance splits them off its
//! store once its edge drained them ([`Mover::drained`]). On the worker
//! they go to, it holds their records, in order, from the moment it sees
//! the step staged until their state is merged ([`Mover::turn`]), then
//! applies them; if its input ends meanwhile, the end goes downstream only
//! after them ([`Mover::defer_finish`]). Records of other bins are never
//! held.

use std::sync::Arc;

use spate_state::StateStore;

use super::{HandoffBoard, StepInfo};
use crate::batch::Meta;

/// A keyed instance's handoff state (see the module documentation).
pub struct Mover<T> {
    board: Arc<HandoffBoard>,
    worker: usize,
    bins_log2: u8,
    /// The board version last looked at.
    seen: u64,
    /// The step whose bins come here, until their state is merged.
    incoming: Option<StepInfo>,
    /// Records of `incoming`'s bins that came before their state.
    held: Vec<(T, Meta)>,
    /// The input ended while `incoming`'s state was on its way.
    finish_due: bool,
}

/// What [`Mover::turn`] found.
pub enum Arrival<T> {
    /// No step brings bins here: apply every record.
    Clear,
    /// A step's bins come here and their state has not: records of those
    /// bins must be held ([`Mover::holds`], [`Mover::hold`]).
    Holding,
    /// The step's state was merged into the store (or failed to be): the
    /// instance re-registers its state handles, applies `held` in order,
    /// then calls [`Mover::merged`] — and ends its output if `finish`.
    Merged(Merged<T>),
}

/// A step's state arrived (see [`Arrival::Merged`]).
pub struct Merged<T> {
    /// The step.
    pub step: StepInfo,
    /// Whether the merge worked (else why not: the job must fail).
    pub result: Result<(), String>,
    /// The records held for it, in the order they came.
    pub held: Vec<(T, Meta)>,
    /// Whether the input ended meanwhile: the end goes downstream after
    /// `held`.
    pub finish: bool,
}

impl<T> Mover<T> {
    /// The part of a keyed instance on `worker` (whose keys fall into
    /// `1 << bins_log2` bins) in the handoffs on `board`.
    pub fn new(board: &Arc<HandoffBoard>, worker: usize, bins_log2: u8) -> Self {
        Self {
            board: board.clone(),
            worker,
            bins_log2,
            seen: board.staged(),
            incoming: None,
            held: Vec::new(),
            finish_due: false,
        }
    }

    /// Looks at the board when its version changed (one load otherwise),
    /// and merges an incoming step's parcel for `operator` into `store`
    /// once it is there.
    #[inline]
    pub fn turn(&mut self, operator: &str, store: &mut StateStore) -> Arrival<T> {
        if self.board.staged() != self.seen {
            self.look();
        }
        match self.incoming {
            None => Arrival::Clear,
            Some(step) => self.try_merge(step, operator, store),
        }
    }

    #[cold]
    fn look(&mut self) {
        self.seen = self.board.staged();
        if let Some(step) = self.board.step() {
            if step.version == self.seen && step.to == self.worker {
                self.incoming = Some(step);
            }
        }
    }

    #[cold]
    fn try_merge(&mut self, step: StepInfo, operator: &str, store: &mut StateStore) -> Arrival<T> {
        let Some(parcel) = self.board.take_parcel(step.version, operator) else { return Arrival::Holding };
        let result = store
            .merge(parcel)
            .map_err(|e| format!("operator `{operator}`: taking bins {} in failed: {e}", step.bins));
        self.incoming = None;
        Arrival::Merged(Merged {
            step,
            result,
            held: std::mem::take(&mut self.held),
            finish: std::mem::take(&mut self.finish_due),
        })
    }

    /// Whether a record of hash `hash` must wait for its bin's state
    /// (only while [`Arrival::Holding`]).
    #[inline]
    pub fn holds(&self, hash: u64) -> bool {
        if crate::sabotage::on(crate::sabotage::Bug::NoHold) {
            return false;
        }
        self.incoming.is_some_and(|s| {
            let bin = spate_state::bin_of(hash, self.bins_log2);
            bin >= s.bins.start && bin < s.bins.end
        })
    }

    /// Holds a record that [`Mover::holds`].
    pub fn hold(&mut self, rec: T, meta: Meta) {
        self.held.push((rec, meta));
    }

    /// The instance's input ended: whether its end must wait for an
    /// incoming step's state (then [`Merged::finish`] says so later).
    pub fn defer_finish(&mut self) -> bool {
        if self.incoming.is_some() && !crate::sabotage::on(crate::sabotage::Bug::FinishEarly) {
            self.finish_due = true;
        }
        self.finish_due
    }

    /// The instance applied what it held for `step`: the board hears that
    /// its bins are served here.
    pub fn merged(&self, step: StepInfo) {
        self.board.merged(step.version);
    }

    /// Every producer's marker of `step` reached this worker's edge: on
    /// the worker the bins leave, splits them off `store` and leaves them
    /// on the board for `operator`'s instance on the target. An error says
    /// why not (the job must fail).
    #[cold]
    pub fn drained(&self, step: StepInfo, operator: &str, store: &mut StateStore) -> Result<(), String> {
        if step.from != self.worker {
            return Ok(());
        }
        let part = store.split_off(step.bins).map_err(|e| {
            format!(
                "operator `{operator}` on worker {}: handing bins {} off failed: {e}",
                step.from, step.bins
            )
        })?;
        self.board.deposit(step.version, operator, part);
        Ok(())
    }
}
