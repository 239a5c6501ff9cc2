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

use super::{Action, Msg, Phase, Plan, Role};

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
    /// The assignment the moves lead to, while its parked workers that
    /// take bins are still to move to spares before the first step
    /// (decision 63; the spares are chosen when the joins start).
    pub(super) join_for: Option<Assignment>,
    /// The nodes that joined, for the answer, and when their slots ran
    /// and a checkpoint of their epoch was complete (ms after the start).
    pub(super) joined: Vec<String>,
    pub(super) joined_ms: u64,
    /// The joins were started: no step goes until they run and a
    /// checkpoint of the new epoch is complete.
    pub(super) settling: bool,
    /// After the last step, this node leaves the job (`scale-in`): its
    /// slots are parked on the others, and it goes back to the pool, or
    /// exits (`true`).
    pub(super) leave: Option<(usize, bool)>,
    /// The leave was started: answered once the parked slots run.
    pub(super) leaving: bool,
    /// The slots its joins and leave moved — `(slot, from, to, parked
    /// before)` — and the last complete checkpoint then: until a later one
    /// completes, a failure puts them back where that checkpoint has them.
    pub(super) migrated: Vec<(usize, usize, usize, bool)>,
    pub(super) migrated_after: u64,
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
            join_for: None,
            joined: Vec::new(),
            joined_ms: 0,
            settling: false,
            leave: None,
            leaving: false,
            migrated: Vec::new(),
            migrated_after: 0,
        }
    }

    /// Whether checkpoints may be requested now: between its phases (the
    /// joins settling, the steps done before a leave), not between steps.
    pub(super) fn takes_checkpoints(&self) -> bool {
        self.current.is_none()
            && (self.join_for.is_some() || self.settling || (self.moves.is_empty() && self.leave.is_some()))
    }
}

/// What a request asks for.
pub(super) struct Request {
    moves: VecDeque<StepSizer>,
    bounds: StepBounds,
    join_for: Option<Assignment>,
    leave: Option<(usize, bool)>,
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
            Ok(Some(q)) if q.moves.is_empty() && q.join_for.is_none() && q.leave.is_none() => {
                self.reply(admin, true, "nothing to move: the assignment is already that".into())
            }
            Ok(Some(q)) => {
                self.event(format!("rescale {request}"));
                let mut r = Rescale::new(Some(admin), request.to_string(), q.moves, q.bounds, now_ms);
                r.join_for = q.join_for;
                r.leave = q.leave;
                self.rescale = Some(r);
            }
            Err(why) => self.reply(admin, false, why),
        }
    }

    /// For the workers that `target` gives bins and that are parked, the
    /// spares that take them: `(slot, node)`, each spare as many slots as
    /// it has workers; an error when the pool is short, or when a node
    /// cannot join (no checkpoints or no live recovery to join by).
    pub(super) fn joins_for(&self, target: &Assignment) -> Result<Vec<(usize, usize)>, String> {
        let slot_of = self.slot_of_workers();
        let mut need = Vec::new();
        for (w, r) in target.ranges().iter().enumerate() {
            let Some(&pos) = slot_of.get(w) else { continue };
            if !r.is_empty() && self.parked[pos] && !need.contains(&pos) {
                need.push(pos);
            }
        }
        if need.is_empty() {
            return Ok(Vec::new());
        }
        if self.config.interval_ms == 0 || !self.config.live {
            return Err(format!(
                "worker {} is parked on `{}` and a node of the pool would join for it, but a node joins a \
                 running job only by live recovery: it needs checkpoints ([checkpoint] interval_ms) and \
                 recovery = \"live\"",
                self.workers_of(need[0]).start,
                self.nodes[self.slots[need[0]]].name
            ));
        }
        let mut joins = Vec::new();
        let mut pool = (0..self.nodes.len())
            .filter(|&j| self.nodes[j].role == Role::Spare && self.nodes[j].incarnation.is_some())
            .flat_map(|j| std::iter::repeat_n(j, self.nodes[j].workers.max(1)));
        for &pos in &need {
            let Some(j) = pool.next() else {
                let idle = (0..self.nodes.len())
                    .filter(|&j| self.nodes[j].role == Role::Spare && self.nodes[j].incarnation.is_some())
                    .count();
                return Err(format!(
                    "worker {} is parked on `{}` and no node of the pool is left to put it on: {} parked \
                     workers would take bins, and the pool has {idle} idle nodes",
                    self.workers_of(pos).start,
                    self.nodes[self.slots[pos]].name,
                    need.len()
                ));
            };
            joins.push((pos, j));
        }
        Ok(joins)
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
    fn plan_request(&self, request: &str) -> Result<Option<Request>, String> {
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
        if self.unsettled {
            return Err("the job is recovering from a failure: try again after its next checkpoint".into());
        }
        let workers = now.workers();
        let exit = match words.iter().position(|w| *w == "--exit") {
            Some(i) => {
                words.remove(i);
                true
            }
            None => false,
        };
        let bounds = StepBounds::take(&mut words, StepBounds::bins(MAX_BINS_PER_STEP))?;
        let mut leave = None;
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
                if first == 0 {
                    return Err(format!(
                        "node `{node}` runs the job's first workers: no node is left before it"
                    ));
                }
                let i = self.index(node).ok_or_else(|| format!("no node is called `{node}`"))?;
                let mine: Vec<usize> = (0..self.slots.len())
                    .filter(|&p| self.slots[p] == i)
                    .flat_map(|p| self.workers_of(p))
                    .collect();
                let (lo, hi) = match (mine.iter().min(), mine.iter().max()) {
                    (Some(&lo), Some(&hi)) => (lo, hi + 1),
                    _ => return Err(format!("node `{node}` runs no workers")),
                };
                let owns = mine.iter().any(|&w| !now.bins_of(w).is_empty());
                if (hi..workers).any(|w| !now.bins_of(w).is_empty()) {
                    return Err(format!(
                        "node `{node}` is not the last node owning bins: scale in the nodes after it first"
                    ));
                }
                // Its bins go to the workers before its first; then it
                // leaves the job (decision 63) if it can: its slots are
                // parked on the others by a live recovery, which needs
                // checkpoints, and a backup node for each node left.
                let cannot_leave = self.cannot_leave(exit);
                match cannot_leave {
                    None => leave = Some((i, exit)),
                    Some(why) if exit => return Err(format!("node `{node}` cannot leave the job: {why}")),
                    Some(_) if !owns => return Err(format!("node `{node}` owns no bins")),
                    Some(_) => {}
                }
                if owns {
                    let target = Assignment::uniform_over(now.bins_log2(), workers, lo, 0)
                        .map_err(|e| e.to_string())?;
                    now.moves_to(&target).map_err(|e| e.to_string())?
                } else {
                    Vec::new()
                }
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
        if exit && leave.is_none() {
            return Err("--exit goes with `scale-in <node>` only".into());
        }
        let mut target = now.clone();
        for &(bins, from, to) in &moves {
            target = target.moved(bins, from, to).map_err(|e| e.to_string())?;
        }
        // Refused now if the pool is short; the spares are chosen when the
        // joins start.
        let join_for = (!self.joins_for(&target)?.is_empty()).then_some(target);
        Ok(Some(Request { moves: sizers_of_moves(moves, bounds), bounds, join_for, leave }))
    }

    /// Why a node cannot leave the job now (`exit`: for good), if it
    /// cannot: its slots move by a live recovery, which needs checkpoints,
    /// and the nodes left need their backup nodes (the leaving one counts,
    /// as a spare, unless it exits).
    pub(super) fn cannot_leave(&self, exit: bool) -> Option<String> {
        if self.config.interval_ms == 0 || !self.config.live {
            return Some("leaving a running job needs checkpoints and live recovery".to_string());
        }
        let holders = self.active().len().saturating_sub(2) + self.pool_holders().len() + usize::from(!exit);
        (holders < self.config.backups).then(|| {
            format!(
                "the nodes left would have too few backup nodes ([checkpoint] backups = {})",
                self.config.backups
            )
        })
    }

    /// The last node (in worker order) other than the coordinator's whose
    /// workers own bins in `now` and none in `target`: a scale-in to
    /// `target` empties it, and it may leave the job.
    pub(super) fn emptied_by(&self, now: &Assignment, target: &Assignment) -> Option<usize> {
        let slot_of = self.slot_of_workers();
        let node_of: Vec<usize> = slot_of.iter().map(|&p| self.slots[p]).collect();
        let workers_of = |j: usize| {
            let node_of = &node_of;
            (0..node_of.len()).filter(move |&w| node_of[w] == j)
        };
        self.active()
            .into_iter()
            .filter(|&j| j != self.me)
            .filter(|&j| workers_of(j).any(|w| !now.bins_of(w).is_empty()))
            .filter(|&j| workers_of(j).all(|w| target.bins_of(w).is_empty()))
            .max_by_key(|&j| workers_of(j).max())
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
        // Between its phases a rescale waits for a checkpoint (of the
        // joiners' epoch, of the last step): at once, not at the interval.
        if r.takes_checkpoints() {
            self.next_checkpoint_ms = self.next_checkpoint_ms.min(now_ms);
        }
        let quiet = self.in_flight.is_none()
            && self.joining.is_empty()
            && self.finished.is_empty()
            && !self.unsettled
            && self.ready.len() == self.active().len();
        if !quiet {
            return;
        }
        let Some(r) = &self.rescale else { return };
        let (join_for, settling, leaving, moves_done, leave) =
            (r.join_for.clone(), r.settling, r.leaving, r.moves.is_empty(), r.leave);
        // Parked slots move to the spares that take them first, by a live
        // recovery without a failure (decision 63); the steps wait until
        // those run and a checkpoint of their epoch is complete.
        // A slot moves only once a checkpoint of this epoch is complete:
        // its new owner restores that one, which a node of this placement
        // holds (one of an earlier epoch may be backed up only by nodes
        // that are gone since).
        if let Some(target) = join_for {
            if self.must_roll_back() || !self.checkpointed {
                return;
            }
            let joins = match self.joins_for(&target) {
                Ok(j) => j,
                Err(e) => {
                    let admin = self.rescale.take().and_then(|r| r.admin);
                    self.next_checkpoint_ms = now_ms;
                    return self.answer(admin, false, e);
                }
            };
            if let Some(r) = self.rescale.as_mut() {
                r.join_for = None;
            }
            if joins.is_empty() {
                return;
            }
            let names: Vec<String> = joins.iter().map(|&(_, j)| self.nodes[j].name.clone()).collect();
            if let Some(r) = self.rescale.as_mut() {
                r.settling = true;
                r.joined = names;
            }
            return self.migrate(&joins, None, now_ms);
        }
        if settling {
            if let Some(r) = self.rescale.as_mut() {
                r.settling = false;
                r.joined_ms = now_ms.saturating_sub(r.started_ms);
            }
        }
        if leaving {
            // The leaving node's slots run on the nodes that park them.
            return self.finish_rescale(now_ms);
        }
        if moves_done {
            let Some((x, exit)) = leave else { return self.finish_rescale(now_ms) };
            // The last step is recorded by a complete checkpoint first.
            if self.must_roll_back() || !self.checkpointed {
                return;
            }
            let mut moves = Vec::new();
            let mut placed: Vec<usize> = Vec::new();
            for pos in (0..self.slots.len()).filter(|&p| self.slots[p] == x) {
                // Each on the node that runs the fewest workers, counting
                // the slots placed so far.
                let host = self
                    .active()
                    .into_iter()
                    .filter(|&j| j != x)
                    .min_by_key(|&j| self.load_of(j) + placed.iter().filter(|&&h| h == j).count());
                let Some(host) = host else { return };
                placed.push(host);
                moves.push((pos, host));
            }
            if let Some(r) = self.rescale.as_mut() {
                r.leaving = true;
            }
            return self.migrate(&moves, Some((x, exit)), now_ms);
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
        if r.leave.is_some() {
            // The leave follows once a checkpoint recorded the steps: at
            // once.
            self.next_checkpoint_ms = now_ms;
            return;
        }
        self.finish_rescale(now_ms);
    }

    /// The rescale is through: its answer says what moved. A node that
    /// left with `--exit` is released now (a checkpoint of the placement
    /// without it is complete: nothing it stores is needed).
    fn finish_rescale(&mut self, now_ms: u64) {
        let Some(r) = self.rescale.take() else { return };
        // (Unless a failure made it a replacement meanwhile.)
        if let Some((x, true)) = r.leave.filter(|&(x, _)| self.nodes[x].role == Role::Spare) {
            self.send(x, Msg::Release);
            self.nodes[x].role = Role::Failed;
            if let Some(c) = &mut self.last_complete {
                for l in c.local.iter_mut().chain(c.holders.iter_mut()) {
                    l.retain(|&j| j != x);
                }
            }
            self.actions.push(Action::Note(format!("node `{}` is released", self.nodes[x].name)));
        }
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
        if !r.joined.is_empty() {
            text.push_str(&format!(
                "\n  joined from the pool: {} (running, and a checkpoint of theirs complete, after {} ms)",
                r.joined.join(", "),
                r.joined_ms
            ));
        }
        if let Some((x, exit)) = r.leave {
            let how = if exit { "released; it exits" } else { "back in the pool" };
            text.push_str(&format!("\n  node `{}` left the job: {how}", self.nodes[x].name));
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
    /// recorded them. Slots its joins or leave moved since the last
    /// complete checkpoint go back to the nodes that checkpoint has them on,
    /// where those are alive (they restore them from their own backups;
    /// the new owners might find no live copy to fetch): whether any did,
    /// and the job must roll back.
    pub(super) fn interrupt(&mut self, why: &str) -> bool {
        let reverted = self.revert_migrations();
        if let Some(r) = self.rescale.take() {
            let text = format!(
                "{}: interrupted after {} of its steps: {why}; the job rolls back to its last complete checkpoint",
                r.what,
                r.done.len()
            );
            self.answer(r.admin, false, text);
        }
        reverted
    }

    /// See [`Plan::interrupt`].
    fn revert_migrations(&mut self) -> bool {
        let last = self.last_complete.as_ref().map_or(0, |c| c.manifest.id);
        let Some(r) = self.rescale.as_mut() else { return false };
        if r.migrated.is_empty() || last != r.migrated_after {
            return false;
        }
        let migrated = std::mem::take(&mut r.migrated);
        let mut reverted = false;
        for &(pos, from, to, parked) in migrated.iter().rev() {
            if !matches!(self.nodes[from].role, Role::Active | Role::Spare) || self.slots[pos] != to {
                continue;
            }
            self.slots[pos] = from;
            self.parked[pos] = parked;
            self.nodes[from].role = Role::Active;
            reverted = true;
        }
        // A joiner left with no slot goes back to the pool.
        for &(_, _, to, _) in &migrated {
            if self.nodes[to].role == Role::Active && !self.slots.contains(&to) {
                self.nodes[to].role = Role::Spare;
            }
        }
        if reverted {
            self.actions.push(Action::Note(
                "the slots that moved since the last complete checkpoint go back to their nodes".into(),
            ));
        }
        reverted
    }
}
