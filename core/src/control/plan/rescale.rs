//! The plan's live handoffs between nodes (docs/ARCHITECTURE.md,
//! *Handoff*): a request of `spate ctl` becomes a list of steps, each a
//! run of bins moving from one worker to a neighbour (or over workers
//! that own nothing), staged on every node (`Handoff`, answered
//! `Staged`: the target holds the moving bins' records from then on),
//! then switched to (`Switch`: every sender routes by the new
//! assignment), one at a time.
//!
//! A step is sent only while the epoch runs on every node with no
//! checkpoint in flight, no recovery and no share finished; no checkpoint
//! is requested while a rescale runs, and one is requested as soon as it
//! ends, which records the new assignment. Until that checkpoint is
//! complete the last complete one holds the assignment before the
//! handoff, so a node failure in between — or during a step — rolls every
//! node back to it (live recovery would restore a worker's old bins
//! beside survivors that run the new assignment). A step that does not
//! complete within [`STEP_TIMEOUT_MS`] rolls back too.

use std::collections::VecDeque;

use spate_state::keyspace::BinRange;

use crate::assignment::{Assignment, StepSizer};
use crate::control::ctl::StepBounds;
use crate::handoff::StepInfo;

use super::{Action, Msg, Phase, Plan};

/// How long one step may take before the job rolls back.
pub(crate) const STEP_TIMEOUT_MS: u64 = 60_000;

/// Bins one step moves at most, unless the request says otherwise.
pub const MAX_BINS_PER_STEP: u32 = 512;

/// A rescale under way.
#[derive(Debug)]
pub(super) struct Rescale {
    /// The `spate ctl` connection that asked (`None`: the scaling
    /// policy decided it; its outcome is an event).
    pub(super) admin: Option<u64>,
    /// What was asked, for the answer.
    pub(super) what: String,
    /// The moves left, each stepped through by its sizer (the front one
    /// is under way).
    pub(super) moves: VecDeque<StepSizer>,
    /// How the steps are paced (see [`StepBounds::gap`]).
    pub(super) bounds: StepBounds,
    /// No step is sent before this (the pace's wait after the last).
    pub(super) not_before_ms: u64,
    /// The step sent, when.
    pub(super) current: Option<(StepInfo, Assignment, u64)>,
    /// Nodes that have not staged the current step yet (senders switch
    /// once none is left).
    pub(super) staging: std::collections::HashSet<usize>,
    /// Steps done: (step, bytes, µs on the target node).
    pub(super) done: Vec<(StepInfo, u64, u64)>,
    pub(super) started_ms: u64,
}

impl Rescale {
    /// A rescale of `moves`, paced by `bounds`, asked for at `now_ms`
    /// (`admin`: by that `spate ctl` connection, else by the policy).
    pub(super) fn new(
        admin: Option<u64>,
        what: String,
        moves: VecDeque<StepSizer>,
        bounds: StepBounds,
        now_ms: u64,
    ) -> Self {
        Self {
            admin,
            what,
            moves,
            bounds,
            not_before_ms: 0,
            current: None,
            staging: Default::default(),
            done: Vec::new(),
            started_ms: now_ms,
        }
    }
}

/// The sizers of `moves`, each in steps bounded by `bounds` from the end
/// next to its target (`Job::move_bins_sized`'s order).
pub(super) fn sizers_of_moves(
    moves: Vec<(BinRange, usize, usize)>,
    bounds: StepBounds,
) -> VecDeque<StepSizer> {
    moves
        .into_iter()
        .filter(|(bins, _, _)| !bins.is_empty())
        .map(|(bins, from, to)| StepSizer::new(bins, from, to, bounds.max_bins, bounds.max_bytes))
        .collect()
}

impl Plan {
    /// The job's assignment of bins now (`None` before the first
    /// deployment).
    pub fn assignment(&self) -> Option<&Assignment> {
        self.assignment.as_ref()
    }

    /// The assignment the epoch being deployed starts from: the last
    /// complete checkpoint's, else the first `start_workers` workers'.
    pub(super) fn reset_assignment(&mut self) {
        let workers = self.slot_workers.iter().sum();
        let start = match self.config.start_workers {
            0 => workers,
            n => n.min(workers),
        };
        let restored = self.last_complete.as_ref().map(|c| &c.manifest);
        self.assignment =
            crate::runtime::assignment_for(restored, workers, start, self.config.bins_log2).ok();
        self.moved_since_checkpoint = false;
    }

    /// A request of `spate ctl` on connection `admin` (see
    /// [`Msg::Control`]): answered at once if it is refused or asks only
    /// for the assignment, else when its last step is done.
    pub fn control(&mut self, admin: u64, request: &str, now_ms: u64) {
        match self.plan_request(request) {
            Ok(None) => {
                let text = self.describe_assignment();
                self.reply(admin, true, text);
            }
            Ok(Some((moves, _))) if moves.is_empty() => {
                self.reply(admin, true, "nothing to move: the assignment is already that".into())
            }
            Ok(Some((moves, bounds))) => {
                self.event(format!("rescale {request}"));
                self.rescale = Some(Rescale::new(Some(admin), request.to_string(), moves, bounds, now_ms));
            }
            Err(why) => self.reply(admin, false, why),
        }
    }

    fn reply(&mut self, admin: u64, ok: bool, text: String) {
        self.actions.push(Action::Reply { admin, ok, text });
    }

    /// The outcome of a rescale: the answer to `spate ctl`'s request, or
    /// (a policy's decision) an event of its first line.
    fn answer(&mut self, admin: Option<u64>, ok: bool, text: String) {
        match admin {
            Some(a) => self.reply(a, ok, text),
            None => {
                let line = text.lines().next().unwrap_or("").to_string();
                self.event(format!("{} {line}", if ok { "scaled" } else { "scale failed:" }));
            }
        }
    }

    /// The moves of `request`, `None` for a question; an error names what
    /// is wrong with it.
    fn plan_request(&self, request: &str) -> Result<Option<(VecDeque<StepSizer>, StepBounds)>, String> {
        let mut words: Vec<&str> = request.split_whitespace().collect();
        let num = |s: &str, what: &str| -> Result<u64, String> {
            s.parse().map_err(|_| format!("`{s}` is not {what}"))
        };
        if words.first() == Some(&"assignment") {
            return Ok(None);
        }
        let now = self.assignment.as_ref().ok_or("the job is not deployed yet")?;
        if self.rescale.is_some() {
            return Err("a rescale is already running".into());
        }
        if !matches!(self.phase, Phase::Running) || !self.joining.is_empty() {
            return Err("the job is recovering from a failure: try again once it runs".into());
        }
        if !self.finished.is_empty() {
            return Err("the job is finishing".into());
        }
        if self.slots.len() != self.active().len() {
            return Err("a node runs two shares since a recovery: its bins cannot move".into());
        }
        let workers = now.workers();
        let bounds = StepBounds::take(&mut words, StepBounds::bins(MAX_BINS_PER_STEP))?;
        let moves: Vec<(BinRange, usize, usize)> = match words.as_slice() {
            ["scale", n] => {
                let n = num(n, "a number of workers")? as usize;
                if n == 0 || n > workers {
                    return Err(format!("cannot scale to {n} workers: the job runs 1 to {workers}"));
                }
                let target =
                    Assignment::uniform_over(now.bins_log2(), workers, n, 0).map_err(|e| e.to_string())?;
                now.moves_to(&target).map_err(|e| e.to_string())?
            }
            ["scale-in", node] => {
                let first = self.first_worker_of(node)?;
                let target = Assignment::uniform_over(now.bins_log2(), workers, first.max(1), 0)
                    .map_err(|e| e.to_string())?;
                if first == 0 {
                    return Err(format!(
                        "node `{node}` runs the job's first workers: no node is left before it"
                    ));
                }
                let last_owner = (0..workers).rev().find(|&w| !now.bins_of(w).is_empty()).unwrap_or(0);
                let (lo, hi) = (first, first + self.workers_of_node(node));
                if (hi..workers).any(|w| !now.bins_of(w).is_empty()) || last_owner < lo {
                    if last_owner < lo {
                        return Err(format!("node `{node}` owns no bins"));
                    }
                    return Err(format!(
                        "node `{node}` is not the last node owning bins: scale in the nodes after it first"
                    ));
                }
                now.moves_to(&target).map_err(|e| e.to_string())?
            }
            ["move", start, end, to] => {
                let (start, end) = (num(start, "a bin")? as u32, num(end, "a bin")? as u32);
                let to = num(to, "a worker")? as usize;
                let bins = BinRange::new(start, end);
                let from = (0..workers)
                    .find(|&w| {
                        let r = now.bins_of(w);
                        !bins.is_empty() && r.start <= start && end <= r.end
                    })
                    .ok_or_else(|| format!("no worker owns all of {bins}"))?;
                now.moved(bins, from, to).map_err(|e| e.to_string())?;
                vec![(bins, from, to)]
            }
            _ => {
                return Err(format!(
                    "unknown request `{request}`: expected `assignment`, `scale <workers>`, \
                     `scale-in <node>` or `move <start> <end> <worker>`"
                ))
            }
        };
        Ok(Some((sizers_of_moves(moves, bounds), bounds)))
    }

    /// The global id of node `name`'s first worker in the placement.
    fn first_worker_of(&self, name: &str) -> Result<usize, String> {
        let i = self.index(name).ok_or_else(|| format!("no node is called `{name}`"))?;
        let p = self
            .slots
            .iter()
            .position(|&j| j == i)
            .ok_or_else(|| format!("node `{name}` runs no workers"))?;
        Ok(self.slot_workers[..p].iter().sum())
    }

    fn workers_of_node(&self, name: &str) -> usize {
        let Some(i) = self.index(name) else { return 0 };
        (0..self.slots.len()).filter(|&p| self.slots[p] == i).map(|p| self.slot_workers[p]).sum()
    }

    fn describe_assignment(&self) -> String {
        let Some(a) = &self.assignment else { return "the job is not deployed yet".into() };
        let mut s = format!("assignment {} of {} bins:", a.version(), 1u64 << a.bins_log2());
        let mut w = 0;
        for (p, &i) in self.slots.iter().enumerate() {
            for _ in 0..self.slot_workers[p] {
                s.push_str(&format!("\n  worker {w} on `{}`: {}", self.nodes[i].name, a.bins_of(w)));
                w += 1;
            }
        }
        s
    }

    /// On a tick: sends the next step when the job is quiet, or rolls back
    /// a step that takes too long.
    pub(super) fn tick_rescale(&mut self, now_ms: u64) {
        let Some(r) = &self.rescale else { return };
        if let Some((info, _, sent)) = &r.current {
            if now_ms.saturating_sub(*sent) > STEP_TIMEOUT_MS {
                let why = format!(
                    "handoff step {} ({} from worker {} to {}) did not complete within {STEP_TIMEOUT_MS} ms",
                    info.version, info.bins, info.from, info.to
                );
                self.interrupt(&why);
                self.roll_back(now_ms);
            }
            return;
        }
        if now_ms < r.not_before_ms {
            return;
        }
        let quiet = self.in_flight.is_none()
            && self.joining.is_empty()
            && self.finished.is_empty()
            && !self.unsettled
            && self.ready.len() == self.active().len();
        if !quiet {
            return;
        }
        let Some(now) = self.assignment.clone() else { return };
        let Some(r) = self.rescale.as_mut() else { return };
        let Some(sizer) = r.moves.front_mut() else { return };
        let (from, to) = (sizer.from, sizer.to);
        let Some(bins) = sizer.next_step() else { return };
        let next = match now.moved(bins, from, to) {
            Ok(n) => n,
            Err(e) => {
                let (admin, text) = (r.admin, format!("step of {bins} from worker {from} to {to}: {e}"));
                self.rescale = None;
                self.next_checkpoint_ms = now_ms;
                return self.answer(admin, false, text);
            }
        };
        let info = StepInfo { version: next.version(), bins, from, to };
        r.current = Some((info, next, now_ms));
        let active = self.active();
        if let Some(r) = self.rescale.as_mut() {
            r.staging = active.iter().copied().collect();
        }
        self.moved_since_checkpoint = true;
        let (start, end) = (bins.start, bins.end);
        for j in self.active() {
            self.send(j, Msg::Handoff { epoch: self.epoch, version: info.version, start, end, from, to });
        }
    }

    /// Node `from` staged step `version` of the epoch: once every node
    /// did, senders switch.
    pub(super) fn staged(&mut self, from: usize, version: u64) {
        let Some(r) = self.rescale.as_mut() else { return };
        if r.current.as_ref().is_none_or(|(i, _, _)| i.version != version) || !r.staging.remove(&from) {
            return;
        }
        if r.staging.is_empty() {
            for j in self.active() {
                self.send(j, Msg::Switch { epoch: self.epoch, version });
            }
        }
    }

    /// Node `from` merged step `version` of the epoch.
    pub(super) fn handed_off(&mut self, version: u64, bytes: u64, micros: u64, now_ms: u64) {
        let Some(r) = self.rescale.as_mut() else { return };
        let Some((info, next, sent)) = r.current.take_if(|(i, _, _)| i.version == version) else { return };
        r.done.push((info, bytes, micros));
        let took = std::time::Duration::from_millis(now_ms.saturating_sub(sent));
        r.not_before_ms = now_ms + r.bounds.gap(took).as_millis() as u64;
        if let Some(sizer) = r.moves.front_mut() {
            sizer.moved(info.bins.len(), bytes);
            if sizer.is_done() {
                r.moves.pop_front();
            }
        }
        self.assignment = Some(next);
        self.event(format!("handoff {version}"));
        let Some(r) = self.rescale.as_ref() else { return };
        if !r.moves.is_empty() {
            return;
        }
        let Some(r) = self.rescale.take() else { return };
        let bins: u32 = r.done.iter().map(|(i, _, _)| i.bins.len()).sum();
        let moved: u64 = r.done.iter().map(|(_, b, _)| b).sum();
        let mut text = format!(
            "{}: moved {bins} bins ({moved} bytes of state) in {} steps, {} ms",
            r.what,
            r.done.len(),
            now_ms.saturating_sub(r.started_ms)
        );
        for (i, b, us) in &r.done {
            text.push_str(&format!(
                "\n  step {}: {} from worker {} to {}: {b} bytes, {:.1} ms",
                i.version,
                i.bins,
                i.from,
                i.to,
                *us as f64 / 1000.0
            ));
        }
        text.push('\n');
        text.push_str(&self.describe_assignment());
        self.answer(r.admin, true, text);
        // The next checkpoint records the new assignment: at once.
        self.next_checkpoint_ms = now_ms;
    }

    /// Whether a failure now must roll every node back: a step is in
    /// flight, or no checkpoint has recorded the assignment since a step.
    pub(super) fn must_roll_back(&self) -> bool {
        let moved = self.moved_since_checkpoint && !crate::sabotage::on(crate::sabotage::Bug::NoRollBack);
        moved || self.rescale.as_ref().is_some_and(|r| r.current.is_some())
    }

    /// A failure (or a timeout) stops the rescale under way: its requester
    /// hears why; the steps done before it stand only if a checkpoint
    /// recorded them.
    pub(super) fn interrupt(&mut self, why: &str) {
        if let Some(r) = self.rescale.take() {
            let text = format!(
                "{}: interrupted after {} of its steps: {why}; the job rolls back to its last complete checkpoint",
                r.what,
                r.done.len()
            );
            self.answer(r.admin, false, text);
        }
    }
}
