//! SEEP's threshold policy (see [`super`]): a worker busy above `high`
//! for `reports` consecutive reports is a bottleneck and is split where
//! its two halves carry equal load; the half above the cut goes to the
//! next worker, and every worker after it shifts one on (ranges stay in
//! worker order), so a split takes one new worker. Every worker in use
//! below `low` for `reports_in` consecutive reports (and the hold-down
//! past) scales the least loaded one in: its bins join its less loaded
//! neighbour and the ranges close up.

use super::{assignment_of, bins_moved, split_by_load, Decision, Observation, Policy, ScalingConfig};

/// The threshold policy's state.
#[derive(Debug)]
pub struct Threshold {
    config: ScalingConfig,
    /// Per worker, consecutive reports above `high`.
    high: Vec<u32>,
    /// Consecutive rounds with every worker in use below `low`.
    low: u32,
    last_action_ms: Option<u64>,
}

impl Threshold {
    /// The policy with `config`'s tunables.
    pub fn new(config: ScalingConfig) -> Self {
        Self { config, high: Vec::new(), low: 0, last_action_ms: None }
    }
}

impl Policy for Threshold {
    fn name(&self) -> &'static str {
        "threshold"
    }

    fn acted(&mut self, at_ms: u64, _applied: bool) {
        self.last_action_ms = Some(at_ms);
        self.high.clear();
        self.low = 0;
    }

    fn observe(&mut self, obs: &Observation) -> Option<Decision> {
        let c = &self.config;
        let since = |t: Option<u64>| t.map_or(u64::MAX, |t| obs.at_ms.saturating_sub(t));
        // Reports during a handoff, a recovery or the cool-down describe a
        // job in transition: they count for nothing.
        if !obs.quiet || since(self.last_action_ms) < c.cooldown_ms || !obs.missing().is_empty() {
            self.high.clear();
            self.low = 0;
            return None;
        }
        let used = obs.used();
        let workers = obs.assignment.workers();
        self.high.resize(workers, 0);
        for w in 0..workers {
            let busy = obs.load_of(w).map_or(0.0, |l| l.busy);
            self.high[w] = if w < used && busy > c.high { self.high[w] + 1 } else { 0 };
        }
        let all_low = (0..used).all(|w| obs.load_of(w).is_some_and(|l| l.busy < c.low));
        self.low = if all_low { self.low + 1 } else { 0 };
        let max = c.max_of(workers);
        // The busiest bottleneck.
        let bottleneck = (0..used).filter(|&w| self.high[w] >= c.reports).max_by(|&a, &b| {
            let busy = |w| obs.load_of(w).map_or(0.0, |l| l.busy);
            busy(a).total_cmp(&busy(b))
        });
        if let Some(w) = bottleneck {
            let own = obs.assignment.bins_of(w);
            if used >= max || own.len() < 2 {
                return None;
            }
            let halves = split_by_load(&obs.bin_load, own, 2);
            let mut ranges: Vec<_> = (0..used).map(|v| obs.assignment.bins_of(v)).collect();
            ranges.splice(w..=w, halves.iter().copied());
            let target = assignment_of(&obs.assignment, &ranges)?;
            let busy = obs.load_of(w).map_or(0.0, |l| l.busy);
            let (lo, hi) = (obs.load_of_bins(halves[0]), obs.load_of_bins(halves[1]));
            return Some(Decision {
                at_ms: obs.at_ms,
                policy: self.name(),
                reason: format!(
                    "worker {w} busy {busy:.2} > high {:.2} for {} reports: {own} split at bin {} \
                     into loads of {lo:.0} and {hi:.0} records/s",
                    c.high, self.high[w], halves[1].start
                ),
                from_workers: used,
                to_workers: used + 1,
                bins_moved: bins_moved(&obs.assignment, &target),
                target,
            });
        }
        let hold = since(self.last_action_ms) < c.scale_in_hold_ms;
        if self.low >= c.reports_in && used > c.min_workers && !hold {
            let load = |w: usize| obs.load_of_bins(obs.assignment.bins_of(w));
            let least = (0..used).min_by(|&a, &b| load(a).total_cmp(&load(b)))?;
            let mut ranges: Vec<_> = (0..used).map(|v| obs.assignment.bins_of(v)).collect();
            let freed = ranges.remove(least);
            // Its bins join the less loaded of its neighbours.
            let left = least.checked_sub(1);
            let right = (least < ranges.len()).then_some(least);
            let into = match (left, right) {
                (Some(l), Some(r)) if load(l) <= load(r + 1) => l,
                (Some(l), None) => l,
                (_, Some(r)) => r,
                (None, None) => return None,
            };
            let r = ranges[into];
            ranges[into] =
                spate_state::keyspace::BinRange::new(r.start.min(freed.start), r.end.max(freed.end));
            let target = assignment_of(&obs.assignment, &ranges)?;
            let busiest = (0..used).filter_map(|w| obs.load_of(w)).map(|l| l.busy).fold(0.0, f64::max);
            return Some(Decision {
                at_ms: obs.at_ms,
                policy: self.name(),
                reason: format!(
                    "every worker busy below low {:.2} (at most {busiest:.2}) for {} reports: \
                     worker {least} (load {:.0} records/s) scaled in",
                    c.low,
                    self.low,
                    load(least)
                ),
                from_workers: used,
                to_workers: used - 1,
                bins_moved: bins_moved(&obs.assignment, &target),
                target,
            });
        }
        None
    }
}
