//! The plan's scaling policy (docs/ARCHITECTURE.md, *Elasticity*): nodes
//! send their workers' load reports (`Msg::Load`); once every worker in
//! use has reported since the last round (or two intervals passed), the
//! plan makes an [`Observation`], feeds the policy, and turns its decision
//! into a rescale — the same steps a `spate ctl scale` request takes
//! (`rescale.rs`), with the outcome as an event instead of an answer.
//!
//! The job is quiet for the policy only while its epoch runs on every
//! node, with no rescale, no recovery, no joining share and no share
//! finished; reports of any other time count for nothing. New workers are
//! the next ones in worker order: a free worker of a node that runs from
//! the start (`[cluster] start_workers` below the cluster's workers), or
//! a parked worker (`[cluster] max_workers`), for which a spare of the
//! pool joins the running job first (decision 63); a node that a
//! scale-in empties goes back to the pool. Provisioners, which would start
//! new node processes, are not built.

use std::collections::BTreeMap;

use crate::control::scaling::{Observation, Policy, ScalingConfig};
use crate::load::LoadReport;

use super::rescale::{sizers_of_moves, Rescale};
use super::{Phase, Plan};

/// A scaling policy in the plan.
pub(super) struct Scaler {
    config: ScalingConfig,
    policy: Box<dyn Policy + Send>,
    /// Reports since the last round, by worker.
    fresh: BTreeMap<usize, LoadReport>,
    last_round_ms: u64,
    /// A decision's rescale runs: the cool-down starts when it ends.
    acting: bool,
    /// Decisions so far.
    decisions: u64,
}

impl std::fmt::Debug for Scaler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scaler")
            .field("policy", &self.policy.name())
            .field("reports", &self.fresh.len())
            .field("decisions", &self.decisions)
            .finish()
    }
}

impl Plan {
    /// Drives `config`'s policy from the nodes' load reports from now on.
    pub fn set_scaling(&mut self, config: ScalingConfig) {
        let policy = config.build();
        self.scaling = Some(Scaler {
            config,
            policy,
            fresh: BTreeMap::new(),
            last_round_ms: 0,
            acting: false,
            decisions: 0,
        });
    }

    /// The scaling policy's decisions so far.
    pub fn scaling_decisions(&self) -> u64 {
        self.scaling.as_ref().map_or(0, |s| s.decisions)
    }

    /// A worker's load report of the running epoch.
    pub(super) fn load_report(&mut self, report: LoadReport) {
        if let Some(s) = &mut self.scaling {
            s.fresh.insert(report.worker, report);
        }
    }

    /// On a tick: a round of the policy when it is due, and its decision
    /// started as a rescale.
    pub(super) fn tick_scaling(&mut self, now_ms: u64) {
        let quiet = matches!(self.phase, Phase::Running)
            && self.rescale.is_none()
            && self.joining.is_empty()
            && self.finished.is_empty()
            && !self.unsettled
            && self.ready.len() == self.active().len();
        let Some(assignment) = self.assignment.clone() else { return };
        let Some(s) = self.scaling.as_mut() else { return };
        if s.acting && self.rescale.is_none() {
            s.acting = false;
            s.policy.acted(now_ms, true);
            s.fresh.clear();
            s.last_round_ms = now_ms;
        }
        if s.last_round_ms == 0 {
            s.last_round_ms = now_ms;
        }
        let used = assignment.ranges().iter().rposition(|r| !r.is_empty()).map_or(0, |w| w + 1);
        let complete = (0..used).all(|w| s.fresh.contains_key(&w));
        if !complete && now_ms.saturating_sub(s.last_round_ms) < 2 * s.config.interval_ms {
            return;
        }
        s.last_round_ms = now_ms;
        let reports: Vec<LoadReport> = std::mem::take(&mut s.fresh).into_values().collect();
        let obs = Observation::from_reports(now_ms, assignment.clone(), &reports, quiet);
        let Some(d) = s.policy.observe(&obs) else { return };
        s.decisions += 1;
        let bounds = s.config.step_bounds();
        let moves = match assignment.moves_to(&d.target) {
            Ok(m) if m.is_empty() => return s.policy.acted(now_ms, true),
            Ok(m) => m,
            Err(e) => {
                s.policy.acted(now_ms, false);
                return self.event(format!("scale failed: {e}"));
            }
        };
        // Workers past the running nodes' are parked: spares of the pool
        // join for those that take bins (decision 63).
        let join_for = match self.joins_for(&d.target) {
            Ok(j) => (!j.is_empty()).then(|| d.target.clone()),
            Err(e) => {
                if let Some(s) = self.scaling.as_mut() {
                    s.policy.acted(now_ms, false);
                }
                return self.event(format!("scale failed: {e}"));
            }
        };
        let Some(s) = self.scaling.as_mut() else { return };
        s.acting = true;
        let what = format!("scale {} {} -> {} workers", d.policy, d.from_workers, d.to_workers);
        self.event(format!("{what}: {}; {} bins move", d.reason, d.bins_moved));
        let mut r = Rescale::new(None, what, sizers_of_moves(moves, bounds), bounds, now_ms);
        r.join_for = join_for;
        // A node the scale-in empties goes back to the pool (decision 63),
        // where it can.
        r.leave = self
            .emptied_by(&assignment, &d.target)
            .filter(|_| self.cannot_leave(false).is_none())
            .map(|x| (x, false));
        self.rescale = Some(r);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::msg::Msg;
    use crate::control::plan::{Action, PlanConfig};
    use crate::control::scaling::PolicyKind;
    use crate::load::SourceLoad;

    fn report(at_ms: u64) -> LoadReport {
        LoadReport {
            worker: 0,
            at_ms,
            busy_ns: 950_000_000,
            blocked_ns: 0,
            idle_ns: 50_000_000,
            sources: vec![SourceLoad { name: "source".into(), records: 1000, offered_per_s: Some(3000.0) }],
            inputs: vec![],
            bins_log2: 4,
            bin_counts: vec![10; 16],
        }
    }

    fn events(actions: &[Action]) -> Vec<String> {
        actions.iter().filter_map(|a| if let Action::Event(e) = a { Some(e.clone()) } else { None }).collect()
    }

    /// Two nodes of one worker, the second owning nothing at first: two
    /// reports of worker 0 past its capacity make the rate policy scale
    /// to 2 workers by the plan's handoff steps, and the outcome is an
    /// event; a report of another epoch counts for nothing.
    #[test]
    fn a_decision_becomes_the_plans_rescale_and_an_event() {
        let addr = "127.0.0.1:1".parse().unwrap_or_else(|e| panic!("{e}"));
        let nodes = vec![("a".to_string(), addr, 1, false), ("b".to_string(), addr, 1, false)];
        let config = PlanConfig {
            failure_timeout_ms: 60_000,
            connect_timeout_ms: 60_000,
            interval_ms: 0,
            backups: 1,
            origin_ns: 0,
            live: false,
            restarts: 0,
            bins_log2: 4,
            start_workers: 1,
            max_workers: 0,
            stall_intervals: 0,
        };
        let mut plan = Plan::new(&nodes, 0, config);
        plan.set_scaling(ScalingConfig { policy: PolicyKind::Rate, cooldown_ms: 0, ..Default::default() });
        for i in 0..2 {
            plan.register(i, 1, 1, addr, 0).unwrap_or_else(|e| panic!("{e}"));
        }
        plan.start(0);
        let epoch = plan.epoch();
        for i in 0..2 {
            plan.message(i, Msg::Ready { epoch }, 1);
        }
        plan.tick(10);
        let _ = plan.take_actions();
        // Another epoch's report, then one round asking for more: no
        // decision yet.
        plan.message(0, Msg::Load { epoch: epoch + 7, report: report(1_000) }, 1_000);
        plan.tick(1_000);
        plan.message(0, Msg::Load { epoch, report: report(1_000) }, 1_000);
        plan.tick(1_001);
        assert_eq!(events(&plan.take_actions()), Vec::<String>::new());
        plan.message(0, Msg::Load { epoch, report: report(2_000) }, 2_000);
        plan.tick(2_001);
        let e = events(&plan.take_actions());
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(e[0].starts_with("scale rate 1 -> 2 workers: input 3840 records/s (offered)"), "{e:?}");
        assert_eq!(plan.scaling_decisions(), 1);
        // Its steps go out as `spate ctl`'s do, one at a time.
        plan.tick(2_002);
        let sent: Vec<(usize, Msg)> = plan
            .take_actions()
            .into_iter()
            .filter_map(|a| if let Action::Send { to, msg } = a { Some((to, *msg)) } else { None })
            .collect();
        assert_eq!(sent.len(), 2, "{sent:?}");
        let Msg::Handoff { version, from: 0, to: 1, .. } = sent[0].1 else { panic!("{sent:?}") };
        for i in 0..2 {
            plan.message(i, Msg::Staged { epoch, version }, 2_003);
        }
        plan.message(1, Msg::HandedOff { epoch, version, bytes: 100, micros: 5 }, 2_004);
        let mut last = Vec::new();
        for t in 0..20 {
            plan.tick(2_005 + t);
            for a in plan.take_actions() {
                match a {
                    Action::Send { msg, .. } => {
                        if let Msg::Handoff { version, .. } = *msg {
                            for i in 0..2 {
                                plan.message(i, Msg::Staged { epoch, version }, 2_010 + t);
                            }
                            plan.message(
                                1,
                                Msg::HandedOff { epoch, version, bytes: 100, micros: 5 },
                                2_010 + t,
                            );
                        }
                    }
                    Action::Event(e) => last.push(e),
                    _ => {}
                }
            }
        }
        assert!(last.iter().any(|e| e.starts_with("scaled scale rate 1 -> 2 workers: moved")), "{last:?}");
        let a = plan.assignment().unwrap_or_else(|| panic!("no assignment"));
        assert!(!a.bins_of(0).is_empty() && !a.bins_of(1).is_empty(), "{a:?}");
    }
}
