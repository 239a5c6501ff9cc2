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
//!
//! The order of what an instance does around its mover — check the
//! arrived state against its handles' types, merge it, register its
//! handles again, apply the held records, tell the board, then end if the
//! input ended — is [`Movable`]'s provided methods: an instance says how
//! to check a store, apply a record and reach its own store, and calls
//! them. A parcel is checked alone before the merge, so a step costs its
//! own bins' records, not the store's (a check after the merge scanned
//! every bin the instance owns, every step).

use std::sync::Arc;

use spate_state::StateStore;

use super::{Handoff, HandoffBoard, StepInfo};
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
pub enum Arrival {
    /// No step brings bins here: apply every record.
    Clear,
    /// A step's bins come here and their state has not: records of those
    /// bins must be held ([`Mover::holds`], [`Mover::hold`]).
    Holding,
    /// The step's state is here: the instance checks it
    /// ([`Movable::check_parcel`]) and takes it in ([`Mover::take_in`]).
    Arrived(StepInfo, Box<StateStore>),
}

/// A step's state was merged into the store (or failed to be): the
/// instance registers its state handles again, applies `held` in order,
/// then calls [`Mover::merged`] — and ends its output if `finish`.
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
    /// and takes an incoming step's parcel for `operator` off it once it
    /// is there.
    #[inline]
    pub fn turn(&mut self, operator: &str) -> Arrival {
        if self.board.staged() != self.seen {
            self.look();
        }
        match self.incoming {
            None => Arrival::Clear,
            Some(step) => match self.board.take_parcel(step.version, operator) {
                None => Arrival::Holding,
                Some(parcel) => Arrival::Arrived(step, Box::new(parcel)),
            },
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

    /// Merges `step`'s `parcel` (once checked: `checked`) for `operator`
    /// into `store`; what was held for it comes back with the outcome.
    #[cold]
    pub fn take_in(
        &mut self,
        step: StepInfo,
        operator: &str,
        store: &mut StateStore,
        parcel: StateStore,
        checked: Result<(), String>,
    ) -> Merged<T> {
        let result = checked.and_then(|()| {
            store
                .merge(parcel)
                .map_err(|e| format!("operator `{operator}`: taking bins {} in failed: {e}", step.bins))
        });
        self.incoming = None;
        Merged {
            step,
            result,
            held: std::mem::take(&mut self.held),
            finish: std::mem::take(&mut self.finish_due),
        }
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

/// A keyed instance that takes part in live handoffs through a [`Mover`]:
/// it says how to reach its parts and apply a record; the provided methods
/// are the one sequence of the protocol's instance side, which every
/// movable operator (and the simulator's workload) runs.
pub trait Movable<T> {
    /// The operator's name, the instance's store and its mover (none
    /// without live handoffs), borrowed together.
    fn parts(&mut self) -> (&str, &mut StateStore, Option<&mut Mover<T>>);
    /// A step's state arrived (`parcel`, rebuilt from another process's
    /// image or split off a worker of this one): the instance's state
    /// handles are registered on it, which checks its records against
    /// their types, so that it merges as checked.
    fn check_parcel(&self, parcel: &mut StateStore) -> Result<(), String>;
    /// The store's contents changed under the instance (a checked step's
    /// state was merged): its state handles are registered again.
    fn revalidate(&mut self) -> Result<(), String>;
    /// Applies one record now (its bin's state is here).
    fn apply_held(&mut self, rec: T, meta: Meta);
    /// Sends what the instance buffered downstream.
    fn flush_out(&mut self) {}
    /// Ends the instance's output.
    fn finish_out(&mut self);
    /// The job fails with `reason`.
    fn fail(&mut self, reason: String);

    /// One look at the handoffs (one load when nothing changed): merges an
    /// incoming step's state once it is there and applies what was held
    /// for it. Whether records of an incoming step's bins must be held now
    /// ([`Mover::holds`]).
    #[inline]
    fn handoff_turn(&mut self) -> bool {
        let (operator, _, mover) = self.parts();
        let Some(m) = mover else { return false };
        match m.turn(operator) {
            Arrival::Clear => false,
            Arrival::Holding => true,
            Arrival::Arrived(step, mut parcel) => {
                let checked = self.check_parcel(&mut parcel);
                let (operator, store, mover) = self.parts();
                let Some(m) = mover else { return false };
                let done = m.take_in(step, operator, store, *parcel, checked);
                self.took_in(done);
                false
            }
        }
    }

    /// An incoming step's state was merged (or failed to be): handles
    /// revalidated, held records applied in order, the board told, then
    /// the end if the input ended meanwhile.
    #[cold]
    fn took_in(&mut self, done: Merged<T>) {
        if let Err(e) = done.result.and_then(|()| self.revalidate()) {
            self.fail(e);
        }
        for (rec, meta) in done.held {
            self.apply_held(rec, meta);
        }
        self.flush_out();
        if let (_, _, Some(m)) = self.parts() {
            m.merged(done.step);
        }
        if done.finish {
            self.finish_out();
        }
    }

    /// A handoff event on the instance's edge: the bins of a drained step
    /// leave, or a poll (see [`Movable::handoff_turn`]).
    fn on_handoff(&mut self, h: &Handoff) {
        match *h {
            Handoff::Drained(step) => {
                let (operator, store, mover) = self.parts();
                if let Some(Err(e)) = mover.map(|m| m.drained(step, operator, store)) {
                    self.fail(e);
                }
            }
            Handoff::Poll => {
                self.handoff_turn();
            }
        }
        self.flush_out();
    }

    /// The input ended: the output ends now, or after an incoming step's
    /// held records ([`Mover::defer_finish`]).
    fn on_finish(&mut self) {
        if self.handoff_turn() {
            if let (_, _, Some(m)) = self.parts() {
                if m.defer_finish() {
                    return;
                }
            }
        }
        self.finish_out();
    }
}

#[cfg(test)]
mod tests {
    use spate_state::{BackupStore, BinRange, Durability, StoreConfig, ValueState};

    use super::*;
    use crate::assignment::Assignment;

    /// A keyed instance of worker 1 of two over 16 bins, its sums in
    /// `ValueState<u64, u64>` "acc".
    struct Inst {
        store: StateStore,
        acc: ValueState<u64, u64>,
        mover: Mover<(u64, u64)>,
        failed: Option<String>,
    }

    impl Movable<(u64, u64)> for Inst {
        fn parts(&mut self) -> (&str, &mut StateStore, Option<&mut Mover<(u64, u64)>>) {
            ("op", &mut self.store, Some(&mut self.mover))
        }
        fn check_parcel(&self, parcel: &mut StateStore) -> Result<(), String> {
            ValueState::<u64, u64>::register(parcel, "acc").map(|_| ()).map_err(|e| e.to_string())
        }
        fn revalidate(&mut self) -> Result<(), String> {
            self.acc = ValueState::register(&mut self.store, "acc").map_err(|e| e.to_string())?;
            Ok(())
        }
        fn apply_held(&mut self, _rec: (u64, u64), _meta: Meta) {}
        fn finish_out(&mut self) {}
        fn fail(&mut self, reason: String) {
            self.failed.get_or_insert(reason);
        }
    }

    /// A store over `bins` whose table "acc" holds `key → value` as
    /// `register` makes it, passed through a checkpoint image as a parcel
    /// from another node is (its tables unvalidated).
    fn parcel_via_image<H>(
        dir: &std::path::Path,
        bins: BinRange,
        put: impl FnOnce(&mut StateStore) -> H,
    ) -> StateStore {
        let config = StoreConfig::new(dir.join("giver"), 4);
        let mut s = StateStore::create(config, bins).unwrap_or_else(|e| panic!("{e}"));
        let _handle = put(&mut s);
        let ck = s.checkpoint(1, b"").unwrap_or_else(|e| panic!("{e}"));
        let mut backup =
            BackupStore::open(dir.join("backup"), Durability::Memory).unwrap_or_else(|e| panic!("{e}"));
        for c in ck.chunks() {
            backup.receive("op", c).unwrap_or_else(|e| panic!("{e}"));
        }
        let (store, _, _) = StateStore::restore_id(StoreConfig::new(dir.join("in"), 4), &backup, "op", 1)
            .unwrap_or_else(|e| panic!("{e}"));
        store
    }

    fn instance(dir: &std::path::Path, board: &Arc<HandoffBoard>) -> Inst {
        let mut store = StateStore::create(StoreConfig::new(dir.join("own"), 4), BinRange::new(8, 16))
            .unwrap_or_else(|e| panic!("{e}"));
        let acc = ValueState::register(&mut store, "acc").unwrap_or_else(|e| panic!("{e}"));
        Inst { store, acc, mover: Mover::new(board, 1, 4), failed: None }
    }

    #[test]
    fn a_parcel_is_checked_before_it_is_merged() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let step = StepInfo { version: 1, bins: BinRange::new(6, 8), from: 0, to: 1 };
        let key =
            (0..).find(|&k| (6..8).contains(&spate_state::bin_of(spate_state::hash_u64(k), 4))).unwrap_or(0);
        let hash = spate_state::hash_u64(key);

        // A parcel of another type under the same name: refused, nothing
        // merged.
        let board = HandoffBoard::new(Assignment::uniform(4, 2));
        let mut inst = instance(dir.path(), &board);
        board.stage_move(step).unwrap_or_else(|e| panic!("{e}"));
        assert!(inst.handoff_turn(), "the step's records are held until its state comes");
        let bad = parcel_via_image(&dir.path().join("bad"), step.bins, |s| {
            let mut h = ValueState::<u64, String>::register(s, "acc").unwrap_or_else(|e| panic!("{e}"));
            h.put(s, hash, &key, &"not a sum".to_string()).unwrap_or_else(|e| panic!("{e}"));
            h
        });
        board.deposit(1, "op", bad);
        assert!(!inst.handoff_turn());
        let why = inst.failed.clone().unwrap_or_else(|| panic!("a parcel of another type was merged"));
        assert!(why.contains("acc"), "{why}");
        assert_eq!(inst.store.bins(), BinRange::new(8, 16), "nothing merged");

        // The right type: merged, the sum readable through the handle.
        let board = HandoffBoard::new(Assignment::uniform(4, 2));
        let mut inst = instance(&dir.path().join("good-own"), &board);
        board.stage_move(step).unwrap_or_else(|e| panic!("{e}"));
        assert!(inst.handoff_turn());
        let good = parcel_via_image(&dir.path().join("good"), step.bins, |s| {
            let mut h = ValueState::<u64, u64>::register(s, "acc").unwrap_or_else(|e| panic!("{e}"));
            h.put(s, hash, &key, &41).unwrap_or_else(|e| panic!("{e}"));
            h
        });
        board.deposit(1, "op", good);
        assert!(!inst.handoff_turn());
        assert_eq!(inst.failed, None);
        assert_eq!(inst.store.bins(), BinRange::new(6, 16));
        assert_eq!(inst.acc.get(&inst.store, hash, &key), Some(41));
    }
}
