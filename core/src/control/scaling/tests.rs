//! The policies against synthetic report streams, with exact expected
//! decisions: a step, a ramp, noise, a hot bin, a dead worker.
//!
//! The model: 16 bins, up to 4 workers, each processing at most
//! [`MU`] records a second; a worker with load `l` is busy `min(1, l /
//! MU)` and processes `min(l, MU)`; the sources offer the load exactly
//! (so the rate policy sees it), and a decision is applied at once.

use spate_state::keyspace::BinRange;

use super::*;

const MU: f64 = 1000.0;

fn config(policy: PolicyKind) -> ScalingConfig {
    ScalingConfig { policy, max_workers: 4, ..ScalingConfig::default() }
}

/// The observation at second `t` of `load` records a second spread over
/// the bins by `weights` (uniform when empty), with the workers in `dead`
/// silent.
fn observe(t: u64, a: &Assignment, load: f64, weights: &[f64], dead: &[usize]) -> Observation {
    let bins = 1usize << a.bins_log2();
    let w: Vec<f64> = if weights.is_empty() { vec![1.0; bins] } else { weights.to_vec() };
    let sum: f64 = w.iter().sum();
    let bin_load: Vec<f64> = w.iter().map(|x| load * x / sum).collect();
    let mut workers = Vec::new();
    for v in 0..a.workers() {
        let r = a.bins_of(v);
        if dead.contains(&v) {
            continue;
        }
        let l: f64 = bin_load[r.start as usize..r.end as usize].iter().sum();
        workers.push(WorkerLoad {
            worker: v,
            busy: (l / MU).min(1.0),
            processed_per_s: l.min(MU),
            seconds: 1.0,
        });
    }
    let produced = workers.iter().map(|w| w.processed_per_s).sum();
    Observation {
        at_ms: t * 1000,
        assignment: a.clone(),
        workers,
        bin_load,
        offered_per_s: Some(load),
        produced_per_s: produced,
        quiet: true,
    }
}

/// Runs `policy` over `loads` (one a second) from `start` workers in use;
/// returns `(second, from, to)` of each decision, applying each at once.
fn run(
    policy: PolicyKind,
    start: usize,
    loads: &[f64],
    weights: &[f64],
    dead: &dyn Fn(u64) -> Vec<usize>,
) -> Vec<(u64, usize, usize)> {
    let mut p = config(policy).build();
    let mut a = Assignment::uniform_over(4, 4, start, 0).unwrap_or_else(|e| panic!("{e}"));
    let mut out = Vec::new();
    for (t, &load) in loads.iter().enumerate() {
        let t = t as u64;
        if let Some(d) = p.observe(&observe(t, &a, load, weights, &dead(t))) {
            assert_eq!(d.from_workers, a.ranges().iter().filter(|r| !r.is_empty()).count());
            let used = d.target.ranges().iter().filter(|r| !r.is_empty()).count();
            assert_eq!(used, d.to_workers, "{d:?}");
            assert!(
                d.target.ranges()[..used].iter().all(|r| !r.is_empty()),
                "used workers are a prefix: {d:?}"
            );
            assert_eq!(bins_moved(&a, &d.target), d.bins_moved);
            a = d.target.clone();
            p.acted(t * 1000, true);
            out.push((t, d.from_workers, d.to_workers));
        }
    }
    out
}

fn alive(_: u64) -> Vec<usize> {
    Vec::new()
}

/// 500/s for 10 s, 1 500/s for 20 s, 300/s for 30 s.
fn step_loads() -> Vec<f64> {
    (0..60)
        .map(|t| {
            if t < 10 {
                500.0
            } else if t < 30 {
                1500.0
            } else {
                300.0
            }
        })
        .collect()
}

#[test]
fn rate_reaches_each_step_in_one_decision() {
    // 1 500/s needs ceil(1500 / (1000 × 0.7)) = 3 workers; 300/s one.
    // Out after two reports asking; in after five and the hold-down.
    assert_eq!(run(PolicyKind::Rate, 1, &step_loads(), &[], &alive), vec![(11, 1, 3), (34, 3, 1)]);
}

#[test]
fn threshold_splits_its_way_up_and_merges_its_way_down() {
    assert_eq!(
        run(PolicyKind::Threshold, 1, &step_loads(), &[], &alive),
        vec![(11, 1, 2), (15, 2, 3), (19, 3, 4), (34, 4, 3), (44, 3, 2), (54, 2, 1)]
    );
}

#[test]
fn rate_follows_a_ramp_and_stays_at_its_top() {
    // 250/s rising by 100/s a second to 2 600/s, then steady to 40 s:
    // 2 workers past 700/s, 3 past 1 400/s, 4 past 2 100/s, each after
    // two reports asking.
    let loads: Vec<f64> = (0..40).map(|t| (250.0 + 100.0 * t as f64).min(2600.0)).collect();
    assert_eq!(run(PolicyKind::Rate, 1, &loads, &[], &alive), vec![(6, 1, 2), (13, 2, 3), (20, 3, 4)]);
    // The threshold rule splits the busiest worker when it passes 0.7
    // twice: at 3 workers one still carries half of the load.
    assert_eq!(run(PolicyKind::Threshold, 1, &loads, &[], &alive), vec![(6, 1, 2), (13, 2, 3), (17, 3, 4)]);
}

#[test]
fn five_minutes_of_noisy_steady_load_take_no_action() {
    // 1 200/s ± 8 %, pseudo-random, on the two workers it needs.
    let mut x = 12345u64;
    let loads: Vec<f64> = (0..300)
        .map(|_| {
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            1200.0 * (1.0 + 0.16 * ((x >> 11) as f64 / (1u64 << 53) as f64 - 0.5))
        })
        .collect();
    for p in [PolicyKind::Rate, PolicyKind::Threshold] {
        assert_eq!(run(p, 2, &loads, &[], &alive), vec![], "{p:?}");
    }
}

#[test]
fn a_hot_bin_moves_the_split_point() {
    // Bin 3 carries half of the load.
    let mut w = vec![1.0 / 15.0; 16];
    w[3] = 1.0;
    let a = Assignment::uniform_over(4, 4, 1, 0).unwrap_or_else(|e| panic!("{e}"));
    for kind in [PolicyKind::Threshold, PolicyKind::Rate] {
        let mut p = config(kind).build();
        assert_eq!(p.observe(&observe(0, &a, 1300.0, &w, &[])), None);
        let d =
            p.observe(&observe(1, &a, 1300.0, &w, &[])).unwrap_or_else(|| panic!("{kind:?}: no decision"));
        // Equal loads put the cut after the hot bin (780 | 520), not at
        // the middle of the bins (953 | 347).
        assert_eq!(&d.target.ranges()[..2], &[BinRange::new(0, 4), BinRange::new(4, 16)], "{kind:?}");
        assert_eq!((d.from_workers, d.to_workers, d.bins_moved), (1, 2, 12), "{kind:?}");
        if kind == PolicyKind::Threshold {
            assert!(d.reason.contains("split at bin 4 into loads of 780 and 520"), "{}", d.reason);
        } else {
            assert!(d.reason.contains("input 1300 records/s (offered), true rate 1000"), "{}", d.reason);
        }
    }
}

#[test]
fn a_silent_worker_or_a_running_handoff_holds_every_decision() {
    // Two workers at 500/s each; from 5 s 1 800/s, and worker 1 silent
    // from 5 s to 9 s: no decision until it reports again.
    let loads: Vec<f64> = (0..14).map(|t| if t < 5 { 1000.0 } else { 1800.0 }).collect();
    let dead = |t: u64| if (5..10).contains(&t) { vec![1] } else { vec![] };
    for p in [PolicyKind::Rate, PolicyKind::Threshold] {
        assert_eq!(run(p, 2, &loads, &[], &dead), vec![(11, 2, 3)], "{p:?}");
    }
    let a = Assignment::uniform_over(4, 4, 1, 0).unwrap_or_else(|e| panic!("{e}"));
    let mut p = config(PolicyKind::Rate).build();
    for t in 0..5 {
        let o = Observation { quiet: false, ..observe(t, &a, 3000.0, &[], &[]) };
        assert_eq!(p.observe(&o), None);
    }
}

#[test]
fn min_and_max_workers_bound_every_decision() {
    let loads = vec![9000.0; 6];
    let d = run(PolicyKind::Rate, 1, &loads, &[], &alive);
    assert_eq!(d, vec![(1, 1, 4)]);
    let mut c = config(PolicyKind::Rate);
    c.min_workers = 2;
    let mut p = c.build();
    let a = Assignment::uniform_over(4, 4, 2, 0).unwrap_or_else(|e| panic!("{e}"));
    for t in 0..30 {
        assert_eq!(p.observe(&observe(t, &a, 100.0, &[], &[])), None, "below min_workers at {t}");
    }
}

#[test]
fn splits_by_load_cover_the_range_with_non_empty_parts() {
    let all = BinRange::new(0, 16);
    assert_eq!(
        split_by_load(&[0.0; 16], all, 4),
        vec![BinRange::new(0, 4), BinRange::new(4, 8), BinRange::new(8, 12), BinRange::new(12, 16)]
    );
    // All the load in the last bin: every part still gets a bin.
    let mut l = vec![0.0; 16];
    l[15] = 100.0;
    let parts = split_by_load(&l, all, 3);
    assert_eq!(parts.len(), 3);
    assert!(parts.iter().all(|p| !p.is_empty()), "{parts:?}");
    assert_eq!((parts[0].start, parts[2].end), (0, 16));
}

#[test]
fn bad_config_values_name_the_key() {
    let bad = [
        (ScalingConfig { high: 1.5, ..Default::default() }, "scaling.high"),
        (ScalingConfig { low: 0.8, ..Default::default() }, "scaling.low"),
        (ScalingConfig { interval_ms: 0, ..Default::default() }, "scaling.interval_ms"),
        (ScalingConfig { reports: 0, ..Default::default() }, "scaling.reports"),
        (ScalingConfig { min_workers: 0, ..Default::default() }, "scaling.min_workers"),
        (ScalingConfig { min_workers: 3, max_workers: 2, ..Default::default() }, "scaling.max_workers"),
        (ScalingConfig { target_utilization: 0.0, ..Default::default() }, "scaling.target_utilization"),
    ];
    for (c, key) in bad {
        let e = c.validate().err().unwrap_or_else(|| panic!("{c:?} accepted"));
        assert!(e.starts_with(key), "{e} does not name {key}");
    }
    assert_eq!(ScalingConfig::default().validate(), Ok(()));
}

#[test]
fn an_observation_sums_the_workers_reports() {
    use crate::load::{InputLoad, SourceLoad};
    let a = Assignment::uniform_over(4, 2, 2, 0).unwrap_or_else(|e| panic!("{e}"));
    let report = |worker: usize, busy_ns: u64, records: u64, bin: usize| {
        let mut bin_counts = vec![0; 16];
        bin_counts[bin] = 10;
        LoadReport {
            worker,
            at_ms: 5_000,
            busy_ns,
            blocked_ns: 0,
            idle_ns: 1_000_000_000 - busy_ns,
            sources: vec![SourceLoad { name: "s".into(), records, offered_per_s: Some(records as f64) }],
            inputs: vec![InputLoad { edge: 0, producer: worker, records, queued: 0, capacity: 8 }],
            bins_log2: 4,
            bin_counts,
        }
    };
    let o = Observation::from_reports(
        5_000,
        a,
        &[report(1, 250_000_000, 300, 9), report(0, 500_000_000, 700, 2)],
        true,
    );
    assert_eq!(o.used(), 2);
    assert_eq!(o.missing(), Vec::<usize>::new());
    assert_eq!(o.workers.iter().map(|w| w.worker).collect::<Vec<_>>(), vec![0, 1]);
    assert!((o.workers[0].busy - 0.5).abs() < 1e-9);
    // Processed: the load of the worker's bins.
    assert_eq!(o.workers[1].processed_per_s, 10.0 * BIN_SAMPLE as f64);
    assert_eq!(o.offered_per_s, Some(1000.0));
    assert_eq!(o.produced_per_s, 1000.0);
    // Sampled counts scaled by the sampling.
    assert_eq!(o.bin_load[2], 10.0 * BIN_SAMPLE as f64);
    assert_eq!(o.load_of_bins(BinRange::new(8, 16)), 10.0 * BIN_SAMPLE as f64);
}
