//! DS2's rate policy (see [`super`]): the *true* processing rate of a
//! worker is what it processed per second of busy time (what it would
//! process if it never waited); the input rate is what the sources are
//! asked for (their rate or schedule, scaled by the records the keyed
//! operators see per source record), or, when a source cannot say, what
//! the keyed operators took. The workers needed are
//! `ceil(input / (true rate × target_utilization))`, clamped to
//! `min_workers..=max_workers`, and the policy goes there in one decision,
//! cutting the key space into that many ranges of equal load.
//!
//! A scale-out is taken once `reports` consecutive reports ask for more
//! workers (after the cool-down), to the count the last one asks for; a
//! scale-in only when `reports_in` consecutive reports ask
//! for fewer workers even with [`SCALE_IN_MARGIN`] more load, and the
//! hold-down since the last action has passed: a steady load near a
//! boundary does not make the count go up and down.

use super::{assignment_of, bins_moved, split_by_load, Decision, Observation, Policy, ScalingConfig};

/// A scale-in must still fit with this much more load (a fraction).
pub const SCALE_IN_MARGIN: f64 = 0.15;

/// Busy seconds (over the workers in use) below which the true rate is
/// not known well enough to decide on.
const MIN_BUSY_S: f64 = 0.02;

/// The rate policy's state.
#[derive(Debug)]
pub struct Rate {
    config: ScalingConfig,
    /// Consecutive rounds asking for fewer workers.
    fewer: u32,
    /// Consecutive rounds asking for more workers.
    more: u32,
    last_action_ms: Option<u64>,
}

impl Rate {
    /// The policy with `config`'s tunables.
    pub fn new(config: ScalingConfig) -> Self {
        Self { config, fewer: 0, more: 0, last_action_ms: None }
    }

    /// `(workers needed, input records/s, true records/s of a worker)` for
    /// `obs`, with `extra` more load (a fraction), if it can be known.
    pub fn needed(&self, obs: &Observation, extra: f64) -> Option<(usize, f64, f64)> {
        let used = obs.used();
        let mine: Vec<_> = (0..used).filter_map(|w| obs.load_of(w)).collect();
        let processed: f64 = mine.iter().map(|l| l.processed_per_s * l.seconds).sum();
        let busy_s: f64 = mine.iter().map(|l| l.busy * l.seconds).sum();
        if busy_s < MIN_BUSY_S || processed <= 0.0 {
            return None;
        }
        let true_rate = processed / busy_s;
        let seconds = mine.iter().map(|l| l.seconds).fold(0.0, f64::max);
        let observed = processed / seconds.max(1e-9);
        let input = match obs.offered_per_s {
            // Records the keyed operators see per source record (1 for
            // keyed-sum, the words of a line for wordcount).
            Some(o) if obs.produced_per_s > 0.0 => o * observed / obs.produced_per_s,
            _ => observed,
        };
        let want = input * (1.0 + extra) / (true_rate * self.config.target_utilization);
        let n = (want.ceil() as usize)
            .clamp(self.config.min_workers, self.config.max_of(obs.assignment.workers()));
        Some((n.max(1), input, true_rate))
    }
}

impl Policy for Rate {
    fn name(&self) -> &'static str {
        "rate"
    }

    fn acted(&mut self, at_ms: u64, _applied: bool) {
        self.last_action_ms = Some(at_ms);
        self.fewer = 0;
        self.more = 0;
    }

    fn observe(&mut self, obs: &Observation) -> Option<Decision> {
        let c = &self.config;
        let since = self.last_action_ms.map_or(u64::MAX, |t| obs.at_ms.saturating_sub(t));
        if !obs.quiet || since < c.cooldown_ms || !obs.missing().is_empty() {
            self.fewer = 0;
            self.more = 0;
            return None;
        }
        let used = obs.used();
        let (n, input, true_rate) = self.needed(obs, 0.0)?;
        let target_n = if n > used {
            self.fewer = 0;
            self.more += 1;
            if self.more < c.reports {
                return None;
            }
            n
        } else {
            self.more = 0;
            let (n_in, _, _) = self.needed(obs, SCALE_IN_MARGIN)?;
            if n_in < used {
                self.fewer += 1;
            } else {
                self.fewer = 0;
            }
            if self.fewer < c.reports_in || since < c.scale_in_hold_ms {
                return None;
            }
            n_in
        };
        let ranges = split_by_load(
            &obs.bin_load,
            spate_state::keyspace::BinRange::all(obs.assignment.bins_log2()),
            target_n,
        );
        let target = assignment_of(&obs.assignment, &ranges)?;
        let busy: Vec<String> =
            (0..used).filter_map(|w| obs.load_of(w)).map(|l| format!("{:.2}", l.busy)).collect();
        let source = if obs.offered_per_s.is_some() { "offered" } else { "observed" };
        Some(Decision {
            at_ms: obs.at_ms,
            policy: self.name(),
            reason: format!(
                "input {input:.0} records/s ({source}), true rate {true_rate:.0} records/s a worker, busy [{}]: \
                 {target_n} workers at utilization {:.2}",
                busy.join(", "),
                c.target_utilization
            ),
            from_workers: used,
            to_workers: target_n,
            bins_moved: bins_moved(&obs.assignment, &target),
            target,
        })
    }
}
