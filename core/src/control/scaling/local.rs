//! The in-process driver of a scaling policy: a [`LocalScaler`] takes a
//! job's load reports from its [`crate::load::LoadBoard`], makes one
//! [`Observation`] a round (once every worker in use reported since the
//! last, or two intervals passed), feeds the policy, and applies its
//! decision with `Job::rescale_to` onto the job's free workers (`[runtime]
//! max_workers` above `workers`). Its caller polls it from the thread that
//! watches the job (`spate run`'s status loop, `spate bench elastic`); a
//! decision's handoff runs on that thread, while the workers run on.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::load::LoadReport;
use crate::runtime::Job;

use super::{Decision, Observation, Policy, ScalingConfig};

/// How long one step of a decision's handoff may take.
const STEP_TIMEOUT: Duration = Duration::from_secs(60);

/// A decision and what came of it: a job event.
#[derive(Clone, Debug, PartialEq)]
pub struct ScalingEvent {
    /// The decision.
    pub decision: Decision,
    /// Handoff steps it took.
    pub steps: usize,
    /// Bytes of state it moved.
    pub bytes: u64,
    /// Milliseconds from the decision to its last step's end.
    pub took_ms: u64,
    /// Why it could not be applied (the steps before the failure stand).
    pub error: Option<String>,
}

impl ScalingEvent {
    /// The event as one JSON object.
    pub fn to_json(&self) -> String {
        let d = &self.decision;
        let error = match &self.error {
            Some(e) => format!("\"{}\"", json_escape(e)),
            None => "null".into(),
        };
        format!(
            "{{\"event\":\"scale\",\"at_ms\":{},\"policy\":\"{}\",\"reason\":\"{}\",\"from_workers\":{},\
             \"to_workers\":{},\"bins_moved\":{},\"steps\":{},\"bytes\":{},\"took_ms\":{},\"error\":{}}}",
            d.at_ms,
            d.policy,
            json_escape(&d.reason),
            d.from_workers,
            d.to_workers,
            d.bins_moved,
            self.steps,
            self.bytes,
            self.took_ms,
            error
        )
    }

    /// The event as a line for people.
    pub fn line(&self) -> String {
        let d = &self.decision;
        let outcome = match &self.error {
            Some(e) => format!("failed: {e}"),
            None => format!(
                "{} bins, {} bytes in {} steps, {} ms",
                d.bins_moved, self.bytes, self.steps, self.took_ms
            ),
        };
        format!("scale {} {} -> {} workers: {}; {outcome}", d.policy, d.from_workers, d.to_workers, d.reason)
    }
}

/// `s` with JSON's escapes.
pub fn json_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

/// A policy driven over one process's job (see the module documentation).
pub struct LocalScaler {
    config: ScalingConfig,
    policy: Box<dyn Policy + Send>,
    /// Reports since the last round, by worker.
    fresh: BTreeMap<usize, LoadReport>,
    last_round_ms: u64,
    /// `SPATE_DEBUG` is set: each round's observation goes to stderr.
    debug: bool,
}

impl LocalScaler {
    /// A driver of `config`'s policy (the job must report its load every
    /// `config.interval_ms`: `RuntimeConfig::load_interval_ms`).
    pub fn new(config: ScalingConfig) -> Self {
        let policy = config.build();
        Self {
            config,
            policy,
            fresh: BTreeMap::new(),
            last_round_ms: 0,
            debug: std::env::var_os("SPATE_DEBUG").is_some(),
        }
    }

    /// Takes the job's new reports at `now_ms` (realtime ms); on a round,
    /// feeds the policy and applies its decision, returning it as an
    /// event. Call it often (every few tens of ms): it blocks only while
    /// a decision's handoff runs.
    pub fn poll<C>(&mut self, job: &Job<C>, now_ms: u64) -> Option<ScalingEvent> {
        let board = job.load()?;
        for r in board.take() {
            self.fresh.insert(r.worker, r);
        }
        let assignment = job.assignment()?;
        if self.last_round_ms == 0 {
            self.last_round_ms = now_ms;
        }
        let used = assignment.ranges().iter().rposition(|r| !r.is_empty()).map_or(0, |w| w + 1);
        let complete = (0..used).all(|w| self.fresh.contains_key(&w));
        if !complete && now_ms.saturating_sub(self.last_round_ms) < 2 * self.config.interval_ms {
            return None;
        }
        self.last_round_ms = now_ms;
        let reports: Vec<LoadReport> = std::mem::take(&mut self.fresh).into_values().collect();
        let obs = Observation::from_reports(now_ms, assignment, &reports, !job.handoff_running());
        if self.debug {
            let w: Vec<String> = obs
                .workers
                .iter()
                .map(|w| format!("w{} busy {:.2} {:.0}/s", w.worker, w.busy, w.processed_per_s))
                .collect();
            let bins: f64 = obs.bin_load.iter().sum();
            eprintln!(
                "scaling: used {} [{}] bins {bins:.0}/s offered {:?} produced {:.0}/s",
                obs.used(),
                w.join(", "),
                obs.offered_per_s,
                obs.produced_per_s
            );
        }
        let decision = self.policy.observe(&obs)?;
        job.metrics().scaling_decisions.fetch_add(1, Ordering::Relaxed);
        let t0 = crate::time::now();
        let result = job.rescale_to_sized(&decision.target, self.config.step_bounds(), STEP_TIMEOUT);
        let took_ms = crate::time::now().saturating_duration_since(t0).as_millis() as u64;
        let (steps, bytes, error) = match result {
            Ok(done) => (done.len(), done.iter().map(|d| d.bytes).sum(), None),
            Err(e) => (0, 0, Some(e.to_string())),
        };
        // The cool-down counts from the end of the move: reports of the
        // transition are not taken for the new steady state.
        self.policy.acted(now_ms + took_ms, error.is_none());
        // Reports from before the end of the move describe the old
        // assignment.
        self.fresh.clear();
        let _ = board.take();
        self.last_round_ms = now_ms + took_ms;
        Some(ScalingEvent { decision, steps, bytes, took_ms, error })
    }
}
