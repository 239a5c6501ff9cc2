//! The deterministic fault-tolerance simulator over many seeds, and proof
//! that its checker is not vacuous.
//!
//! - `SPATE_SIM_SEEDS=<n>`: how many seeds the main test runs (default 3000).
//! - `SPATE_SIM_SEED=<n>`: run only that seed, printing its report or its
//!   failure with the trace tail.
//!
//! A failing seed is printed as
//! `failing seed: N (replay: SPATE_SIM_SEED=N cargo test -p spate-core --test ft_simulator)`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use spate_core::ft::recovery::UnrecoverableReason;
use spate_core::ft::sim::{self, Sabotage, Scenario, SimFailure, SimOutcome, SimReport, SimStats};

const SEEDS_DEFAULT: u64 = 3000;

fn env_u64(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    match value.trim().parse() {
        Ok(n) => Some(n),
        Err(_) => panic!("{name}={value:?} is not a number"),
    }
}

fn replay_hint(seed: u64) -> String {
    format!(
        "failing seed: {seed} (replay: SPATE_SIM_SEED={seed} cargo test -p spate-core --test ft_simulator)"
    )
}

#[derive(Default)]
struct Tally {
    completed: u64,
    no_replacement: u64,
    no_backup: u64,
    no_backup_node: u64,
    stats: SimStats,
}

impl Tally {
    fn add(&mut self, report: &SimReport) {
        match &report.outcome {
            SimOutcome::Completed => self.completed += 1,
            SimOutcome::Unrecoverable(u) => match u.reason {
                UnrecoverableReason::NoReplacement { .. } => self.no_replacement += 1,
                UnrecoverableReason::NoBackup { .. } => self.no_backup += 1,
                UnrecoverableReason::NoBackupNode { .. } => self.no_backup_node += 1,
            },
        }
        let (t, s) = (&mut self.stats, report.stats);
        t.messages += s.messages;
        t.datagrams_lost += s.datagrams_lost;
        t.datagrams_duplicated += s.datagrams_duplicated;
        t.messages_dropped += s.messages_dropped;
        t.crashes += s.crashes;
        t.pauses += s.pauses;
        t.breaks += s.breaks;
        t.declared += s.declared;
        t.false_suspicions += s.false_suspicions;
        t.restores += s.restores;
        t.split_parts += s.split_parts;
        t.restored += s.restored;
        t.checkpoints_covered += s.checkpoints_covered;
        t.batches_replayed += s.batches_replayed;
        t.duplicates_dropped += s.duplicates_dropped;
        t.fenced_refusals += s.fenced_refusals;
        t.throttled += s.throttled;
    }
}

/// Runs `seeds` over all cores; returns the tally and the failures, by seed.
fn run_many(seeds: u64, scenario_of: impl Fn(u64) -> Scenario + Sync) -> (Tally, Vec<SimFailure>) {
    let next = AtomicU64::new(0);
    let tally = Mutex::new(Tally::default());
    let failures = Mutex::new(Vec::new());
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get()).min(8);
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| loop {
                let seed = next.fetch_add(1, Ordering::Relaxed);
                if seed >= seeds {
                    break;
                }
                match sim::run(seed, &scenario_of(seed)) {
                    Ok(report) => tally.lock().unwrap().add(&report),
                    Err(failure) => failures.lock().unwrap().push(failure),
                }
            });
        }
    });
    let mut failures = failures.into_inner().unwrap();
    failures.sort_by_key(|f| f.seed);
    (tally.into_inner().unwrap(), failures)
}

#[test]
fn every_seed_keeps_exactly_once() {
    if let Some(seed) = env_u64("SPATE_SIM_SEED") {
        let scenario = Scenario::generate(seed);
        println!("{scenario:#?}");
        match sim::run(seed, &scenario) {
            Ok(report) => println!("{report:#?}"),
            Err(failure) => panic!("{failure}\n{}", replay_hint(seed)),
        }
        return;
    }
    let seeds = env_u64("SPATE_SIM_SEEDS").unwrap_or(SEEDS_DEFAULT);
    let started = Instant::now();
    let (tally, failures) = run_many(seeds, Scenario::generate);
    let t = &tally.stats;
    println!(
        "{seeds} seeds in {:.1} s: {} completed; unrecoverable: {} no replacement, {} no backup, {} no backup node",
        started.elapsed().as_secs_f64(),
        tally.completed,
        tally.no_replacement,
        tally.no_backup,
        tally.no_backup_node
    );
    println!(
        "faults: {} crashes, {} pauses, {} breaks, {} datagrams lost, {} duplicated; {} declared ({} falsely), \
         {} restores planned ({} split parts), {} restored, {} batches replayed, {} duplicates dropped, \
         {} fenced refusals, {} checkpoints covered",
        t.crashes,
        t.pauses,
        t.breaks,
        t.datagrams_lost,
        t.datagrams_duplicated,
        t.declared,
        t.false_suspicions,
        t.restores,
        t.split_parts,
        t.restored,
        t.batches_replayed,
        t.duplicates_dropped,
        t.fenced_refusals,
        t.checkpoints_covered
    );
    if let Some(first) = failures.first() {
        for f in &failures {
            println!("{}", replay_hint(f.seed));
        }
        panic!(
            "{} of {seeds} seeds failed; the first:\n{first}\n{}",
            failures.len(),
            replay_hint(first.seed)
        );
    }
    if seeds >= 500 {
        // The simulator must actually exercise what it claims to.
        assert!(tally.completed > seeds / 2, "most runs should recover");
        assert!(t.restored > seeds / 4 && t.split_parts > 0, "recoveries, split ones included");
        assert!(t.false_suspicions > 0 && t.fenced_refusals > 0, "false suspicions, fenced");
        assert!(t.batches_replayed > 0 && t.duplicates_dropped > 0, "replays and dedup");
        assert!(tally.no_replacement > 0 && tally.no_backup > 0, "genuinely unrecoverable runs");
    }
}

#[test]
fn the_same_seed_replays_exactly() {
    let mut hashes = Vec::new();
    for seed in 0..40 {
        let scenario = Scenario::generate(seed);
        let first = sim::run(seed, &scenario);
        let second = sim::run(seed, &scenario);
        assert_eq!(first, second, "seed {seed} did not replay exactly");
        if let Ok(report) = first {
            hashes.push(report.trace_hash);
        }
    }
    hashes.sort_unstable();
    hashes.dedup();
    assert!(hashes.len() > 30, "different seeds should give different traces");
}

/// Finds a seed among the first `limit` for which the checker rejects the
/// sabotaged protocol; returns its failure.
fn first_caught(sabotage: Sabotage, limit: u64) -> Option<SimFailure> {
    let (_, failures) = run_many(limit, |seed| Scenario { sabotage, ..Scenario::generate(seed) });
    failures.into_iter().next()
}

#[test]
fn the_checker_catches_a_sink_without_dedup() {
    let sabotage = Sabotage { sink_without_dedup: true, ..Sabotage::default() };
    let failure = first_caught(sabotage, 300).expect("some seed must catch a sink that does not deduplicate");
    println!("caught by seed {}: {}", failure.seed, failure.violation);
    assert!(failure.violation.contains("emitted 2 times"), "{failure}");
}

#[test]
fn the_checker_catches_trimming_before_coverage() {
    let sabotage = Sabotage { trim_before_cover: true, ..Sabotage::default() };
    let failure =
        first_caught(sabotage, 300).expect("some seed must catch trimming before backups acknowledged");
    println!("caught by seed {}: {}", failure.seed, failure.violation);
}

#[test]
fn the_checker_catches_missing_fencing() {
    let sabotage = Sabotage { no_fencing: true, ..Sabotage::default() };
    let failure =
        first_caught(sabotage, 1000).expect("some seed must catch a fenced incarnation having an effect");
    println!("caught by seed {}: {}", failure.seed, failure.violation);
}

#[test]
fn the_checker_refuses_to_give_up_needlessly() {
    let sabotage = Sabotage { give_up_without_looking: true, ..Sabotage::default() };
    let failure =
        first_caught(sabotage, 300).expect("some seed must catch a coordinator that gives up early");
    println!("caught by seed {}: {}", failure.seed, failure.violation);
    assert!(failure.violation.contains("but"), "{failure}");
}

/// Two workers, one slot each, both used, no spare, no restart: a crash
/// leaves nowhere to go. Every seed must end unrecoverable, and be accepted.
#[test]
fn a_full_cluster_without_spares_is_reported_unrecoverable() {
    let mut scenario = Scenario {
        workers: 2,
        spares: 0,
        slots_per_node: 1,
        operators: 2,
        backups: 1,
        ..Scenario::default()
    };
    scenario.faults.crashes = 1;
    scenario.faults.pauses = 0;
    scenario.faults.breaks = 0;
    scenario.faults.restart = false;
    scenario.faults.horizon_ms = 100;
    for seed in 0..50 {
        match sim::run(seed, &scenario) {
            Ok(SimReport { outcome: SimOutcome::Unrecoverable(u), .. }) => {
                assert!(!matches!(u.reason, UnrecoverableReason::NoBackup { .. }), "seed {seed}: {u}");
            }
            other => panic!("seed {seed}: expected an unrecoverable outcome, got {other:?}"),
        }
    }
    // The same cluster with a spare recovers from the same crash (unless
    // the crash hits the spare itself).
    scenario.spares = 1;
    let mut recovered = 0;
    for seed in 0..50 {
        let report = sim::run(seed, &scenario).unwrap_or_else(|f| panic!("{f}\n{}", replay_hint(seed)));
        assert_eq!(report.outcome, SimOutcome::Completed, "seed {seed}");
        recovered += u32::from(report.stats.restored > 0);
    }
    assert!(recovered > 25, "only {recovered} of 50 runs needed and made a recovery");
}
