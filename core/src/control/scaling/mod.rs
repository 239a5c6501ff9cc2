//! Scaling policies, sans-IO: load reports and the time go in, decisions
//! come out (docs/ARCHITECTURE.md, *Elasticity*, decisions 55–57).
//!
//! A [`Policy`] is fed one [`Observation`] an interval — the job's
//! assignment, each worker's busy fraction and processing, the load of
//! every bin, the offered input rate, and whether the job is quiet (no
//! handoff, no recovery) — and answers with at most one [`Decision`]: the
//! assignment to move to, why (with the figures that triggered it), and
//! how many workers that uses. There is no clock, socket or thread here:
//! the in-process driver ([`local::LocalScaler`]) feeds a policy from a
//! job's [`crate::load::LoadBoard`] and applies its decisions with
//! `Job::rescale_to`; the coordinator's plan feeds it the reports nodes
//! send (`Msg::Load`) and applies decisions with its rescale steps; a
//! simulator can feed it either way, in virtual time.
//!
//! Two policies:
//! - [`threshold::Threshold`], SEEP's: a worker busy above `high` for
//!   `reports` consecutive reports is split — its bins cut where the two
//!   halves carry equal *load*, one half going to a new worker; every
//!   worker below `low` for `reports_in` reports scales the least loaded
//!   one in.
//! - [`rate::Rate`], DS2's: from the true processing rate (records per
//!   busy second) and the offered input rate, the number of workers the
//!   load needs at `target_utilization`, reached in one decision, bins
//!   assigned by load.
//!
//! Both keep `min_workers..=max_workers`, wait `cooldown_ms` after each
//! action, wait `scale_in_hold_ms` after any action before scaling in, act
//! only on a quiet job with a report from every worker that owns bins, and
//! (scale-in needing a margin and several reports) do not oscillate on a
//! steady load.
//!
//! Workers own contiguous bin ranges in worker order (decision 4), and the
//! workers in use are always a prefix `0..used` (a scale-out takes worker
//! `used`, a scale-in frees the last): a target assignment is a list of
//! `used` ranges, reached by neighbour moves (`Assignment::moves_to`).

use spate_state::keyspace::BinRange;

use crate::assignment::Assignment;
use crate::load::{LoadReport, BIN_SAMPLE};

pub mod local;
pub mod rate;
pub mod threshold;

/// Which policy (`[scaling] policy`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PolicyKind {
    /// SEEP's threshold rule ([`threshold::Threshold`]).
    Threshold,
    /// DS2's rate rule ([`rate::Rate`]).
    Rate,
}

impl PolicyKind {
    /// Its name in configs and events.
    pub fn name(self) -> &'static str {
        match self {
            PolicyKind::Threshold => "threshold",
            PolicyKind::Rate => "rate",
        }
    }

    /// The kind called `name`.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "threshold" => Some(PolicyKind::Threshold),
            "rate" => Some(PolicyKind::Rate),
            _ => None,
        }
    }
}

/// `[scaling]`: the policy and its tunables.
#[derive(Clone, Debug, PartialEq)]
pub struct ScalingConfig {
    /// The policy.
    pub policy: PolicyKind,
    /// Workers report their load this often, ms.
    pub interval_ms: u64,
    /// Threshold: a worker busier than this is a bottleneck.
    pub high: f64,
    /// Threshold: every worker below this is spare capacity.
    pub low: f64,
    /// Threshold: consecutive reports above `high` before a split.
    pub reports: u32,
    /// Consecutive reports of spare capacity before a scale-in (both
    /// policies).
    pub reports_in: u32,
    /// Rate: the busy fraction the chosen number of workers runs at.
    pub target_utilization: f64,
    /// Fewest workers in use.
    pub min_workers: usize,
    /// Most workers in use (0: every worker the job started).
    pub max_workers: usize,
    /// No action for this long after one, ms.
    pub cooldown_ms: u64,
    /// No scale-in for this long after any action, ms.
    pub scale_in_hold_ms: u64,
    /// Bins a handoff step moves at most.
    pub max_bins_per_step: u32,
    /// Bytes of state a handoff step moves at most, about (0: no bound;
    /// see [`crate::assignment::StepSizer`]).
    pub max_bytes_per_step: u64,
    /// After each step, wait this many times as long as it took (see
    /// [`crate::assignment::StepBounds`]; 0: back to back).
    pub step_pace: f64,
}

impl Default for ScalingConfig {
    fn default() -> Self {
        Self {
            policy: PolicyKind::Rate,
            interval_ms: 1_000,
            high: 0.7,
            low: 0.3,
            reports: 2,
            reports_in: 5,
            target_utilization: 0.7,
            min_workers: 1,
            max_workers: 0,
            cooldown_ms: 3_000,
            scale_in_hold_ms: 10_000,
            max_bins_per_step: 256,
            max_bytes_per_step: 0,
            step_pace: 0.0,
        }
    }
}

impl ScalingConfig {
    /// Checks the values; the error names the key and why.
    pub fn validate(&self) -> Result<(), String> {
        let frac = |v: f64, key: &str| {
            if v > 0.0 && v < 1.0 {
                Ok(())
            } else {
                Err(format!("scaling.{key}: {v} is not a fraction between 0 and 1 (exclusive)"))
            }
        };
        frac(self.high, "high")?;
        frac(self.low, "low")?;
        frac(self.target_utilization, "target_utilization")?;
        if self.low >= self.high {
            return Err(format!("scaling.low: {} must be below scaling.high ({})", self.low, self.high));
        }
        if !(10..=3_600_000).contains(&self.interval_ms) {
            return Err(format!("scaling.interval_ms: {} is not between 10 and 3600000", self.interval_ms));
        }
        if self.reports == 0 || self.reports_in == 0 {
            let key = if self.reports == 0 { "reports" } else { "reports_in" };
            return Err(format!("scaling.{key}: at least 1 report is needed"));
        }
        if self.min_workers == 0 {
            return Err("scaling.min_workers: at least 1 worker must run the job".into());
        }
        if self.max_workers != 0 && self.max_workers < self.min_workers {
            return Err(format!(
                "scaling.max_workers: {} is fewer than scaling.min_workers ({})",
                self.max_workers, self.min_workers
            ));
        }
        if self.max_bins_per_step == 0 {
            return Err("scaling.max_bins_per_step: a step moves at least 1 bin".into());
        }
        let pace_max = crate::assignment::PACE_MAX;
        if !(0.0..=pace_max).contains(&self.step_pace) {
            return Err(format!(
                "scaling.step_pace: {} is not a wait of 0 to {pace_max} times a step's time",
                self.step_pace
            ));
        }
        Ok(())
    }

    /// How a decision's steps are bounded and paced
    /// (`max_bins_per_step`, `max_bytes_per_step`, `step_pace`).
    pub fn step_bounds(&self) -> crate::assignment::StepBounds {
        let max_bytes = match self.max_bytes_per_step {
            0 => u64::MAX,
            n => n,
        };
        crate::assignment::StepBounds {
            max_bins: self.max_bins_per_step,
            max_bytes,
            pace_permille: (self.step_pace * 1000.0).round() as u32,
        }
    }

    /// The policy it names, ready to be fed.
    pub fn build(&self) -> Box<dyn Policy + Send> {
        match self.policy {
            PolicyKind::Threshold => Box::new(threshold::Threshold::new(self.clone())),
            PolicyKind::Rate => Box::new(rate::Rate::new(self.clone())),
        }
    }

    /// The most workers in use for a job of `workers`.
    pub fn max_of(&self, workers: usize) -> usize {
        if self.max_workers == 0 {
            workers
        } else {
            self.max_workers.min(workers)
        }
    }
}

/// One worker's load over the last interval, as a policy sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct WorkerLoad {
    /// The worker.
    pub worker: usize,
    /// Its busy fraction (0 to 1).
    pub busy: f64,
    /// Records its exchange inputs took a second (what its keyed
    /// operators processed).
    pub processed_per_s: f64,
    /// Seconds the interval lasted.
    pub seconds: f64,
}

/// What a policy is fed each interval (see the module documentation).
#[derive(Clone, Debug, PartialEq)]
pub struct Observation {
    /// Now, ms.
    pub at_ms: u64,
    /// The job's assignment.
    pub assignment: Assignment,
    /// The workers that reported, in worker order.
    pub workers: Vec<WorkerLoad>,
    /// Records a second of each bin (estimated from the sampled counts).
    pub bin_load: Vec<f64>,
    /// Records a second the sources are asked for, if every source knows
    /// (a rate or a schedule).
    pub offered_per_s: Option<f64>,
    /// Records a second the sources produced.
    pub produced_per_s: f64,
    /// No handoff and no recovery is running: a policy may act.
    pub quiet: bool,
}

impl Observation {
    /// The observation of `reports` (one round, at most one per worker)
    /// at `at_ms`.
    pub fn from_reports(at_ms: u64, assignment: Assignment, reports: &[LoadReport], quiet: bool) -> Self {
        let bins = 1usize << assignment.bins_log2();
        let mut bin_load = vec![0.0; bins];
        let mut workers = Vec::new();
        let (mut offered, mut all_offered, mut produced) = (0.0, true, 0.0);
        for r in reports {
            let seconds = r.interval_ns() as f64 / 1e9;
            if seconds <= 0.0 {
                continue;
            }
            workers.push(WorkerLoad {
                worker: r.worker,
                busy: r.busy(),
                processed_per_s: r.records_in() as f64 / seconds,
                seconds,
            });
            if r.bin_counts.len() == bins {
                for (l, &c) in bin_load.iter_mut().zip(&r.bin_counts) {
                    *l += f64::from(c) * BIN_SAMPLE as f64 / seconds;
                }
            }
            for s in &r.sources {
                produced += s.records as f64 / seconds;
                match s.offered_per_s {
                    Some(o) => offered += o,
                    None => all_offered = false,
                }
            }
        }
        workers.sort_by_key(|w| w.worker);
        workers.dedup_by_key(|w| w.worker);
        // What a worker's keyed operators processed is the load of its
        // bins (records a worker keeps for itself never cross an input).
        if reports.iter().any(|r| r.bin_counts.len() == bins) {
            for w in &mut workers {
                let own = assignment.bins_of(w.worker);
                w.processed_per_s =
                    bin_load.get(own.start as usize..own.end as usize).map_or(0.0, |s| s.iter().sum());
            }
        }
        let any_source = reports.iter().any(|r| !r.sources.is_empty());
        Observation {
            at_ms,
            assignment,
            workers,
            bin_load,
            offered_per_s: (all_offered && any_source).then_some(offered),
            produced_per_s: produced,
            quiet,
        }
    }

    /// The workers that own bins (a prefix `0..used`).
    pub fn used(&self) -> usize {
        self.assignment.ranges().iter().rposition(|r| !r.is_empty()).map_or(0, |w| w + 1)
    }

    /// Worker `w`'s load, if it reported.
    pub fn load_of(&self, w: usize) -> Option<&WorkerLoad> {
        self.workers.iter().find(|l| l.worker == w)
    }

    /// The workers that own bins and sent no report: no decision is made
    /// on part of the job (a worker that died, or a report lost).
    pub fn missing(&self) -> Vec<usize> {
        (0..self.used()).filter(|&w| self.load_of(w).is_none()).collect()
    }

    /// The load of `bins`, records a second.
    pub fn load_of_bins(&self, bins: BinRange) -> f64 {
        self.bin_load.get(bins.start as usize..bins.end as usize).map_or(0.0, |s| s.iter().sum())
    }
}

/// What a policy decided.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    /// When, ms.
    pub at_ms: u64,
    /// The policy's name.
    pub policy: &'static str,
    /// Why, with the figures that triggered it.
    pub reason: String,
    /// Workers in use before.
    pub from_workers: usize,
    /// Workers in use after.
    pub to_workers: usize,
    /// The assignment to move to (its version is the current one's: the
    /// moves make the versions).
    pub target: Assignment,
    /// Bins that change owner.
    pub bins_moved: u32,
}

/// A scaling policy (see the module documentation).
pub trait Policy {
    /// Its name.
    fn name(&self) -> &'static str;
    /// The decision for `obs`, if any.
    fn observe(&mut self, obs: &Observation) -> Option<Decision>;
    /// A decision was applied at `at_ms` (or failed: then `applied` is
    /// false and the cool-down still runs, so that a failing move is not
    /// retried at once).
    fn acted(&mut self, at_ms: u64, applied: bool);
}

/// `ranges` (one per worker in use, contiguous, in order) as the
/// assignment of `workers` workers, the others owning nothing.
pub fn assignment_of(current: &Assignment, ranges: &[BinRange]) -> Option<Assignment> {
    let mut all = ranges.to_vec();
    let end = all.last().map_or(0, |r| r.end);
    all.resize(current.workers().max(ranges.len()), BinRange::new(end, end));
    Assignment::from_ranges(current.version(), current.bins_log2(), all).ok()
}

/// Bins whose owner differs between `a` and `b`.
pub fn bins_moved(a: &Assignment, b: &Assignment) -> u32 {
    let bins = 1u32 << a.bins_log2();
    let owner = |x: &Assignment, bin: u32| x.ranges().iter().position(|r| r.start <= bin && bin < r.end);
    (0..bins).filter(|&bin| owner(a, bin) != owner(b, bin)).count() as u32
}

/// `range` cut in `parts` contiguous ranges of about equal load (by
/// `bin_load`), each at least one bin (`parts` at most the range's bins);
/// with no load at all, equal bin counts.
pub fn split_by_load(bin_load: &[f64], range: BinRange, parts: usize) -> Vec<BinRange> {
    let n = range.len() as usize;
    let parts = parts.clamp(1, n.max(1));
    let loads: Vec<f64> =
        (range.start..range.end).map(|b| bin_load.get(b as usize).copied().unwrap_or(0.0)).collect();
    let total: f64 = loads.iter().sum();
    let mut cuts = Vec::with_capacity(parts + 1);
    cuts.push(range.start);
    if total <= 0.0 {
        for k in 1..parts {
            cuts.push(range.start + (n * k / parts) as u32);
        }
    } else {
        let mut acc = 0.0;
        let mut b = 0usize;
        for k in 1..parts {
            let want = total * k as f64 / parts as f64;
            // The cut nearest the k-th quantile, leaving at least one bin
            // to each part before and after it.
            let lo = (*cuts.last().unwrap_or(&range.start) - range.start) as usize + 1;
            let hi = n - (parts - k);
            while b < lo || (b < hi && acc + loads[b] / 2.0 < want) {
                acc += loads[b];
                b += 1;
            }
            cuts.push(range.start + b as u32);
        }
    }
    cuts.push(range.end);
    cuts.windows(2).map(|w| BinRange::new(w[0], w[1])).collect()
}

#[cfg(test)]
pub(crate) mod tests;
