//! The simulator's seeds, its replay, and the broken variants it catches.

use super::*;
use crate::sabotage::{self, Bug};

fn env(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// Runs `seeds` from `first` on every core; the failures.
fn run_seeds(first: u64, seeds: u64, bug: Option<Bug>, stop_at_first: bool) -> (Vec<String>, Counts) {
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get()) as u64;
    let failed = std::sync::Mutex::new(Vec::new());
    let steps = std::sync::atomic::AtomicU64::new(0);
    let ahead = std::sync::atomic::AtomicU64::new(0);
    let handoffs = std::sync::atomic::AtomicU64::new(0);
    let handoff_seeds = std::sync::atomic::AtomicU64::new(0);
    let joins = std::sync::atomic::AtomicU64::new(0);
    let leaves = std::sync::atomic::AtomicU64::new(0);
    let scaled = std::sync::atomic::AtomicU64::new(0);
    let next = std::sync::atomic::AtomicU64::new(first);
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                sabotage::set(bug);
                loop {
                    let seed = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if seed >= first + seeds {
                        break;
                    }
                    if stop_at_first && !failed.lock().map(|f| f.is_empty()).unwrap_or(true) {
                        break;
                    }
                    // A broken variant may trip a production assertion (a
                    // debug build's `debug_assert!`) instead of a checker: that
                    // is a catch too, and it must not take the other seeds down.
                    let outcome = std::panic::catch_unwind(|| run(seed, false))
                        .unwrap_or_else(|p| Err(format!("seed {seed}: panicked: {}", panic_text(&*p))));
                    match outcome {
                        Ok(r) => {
                            steps.fetch_add(r.steps, std::sync::atomic::Ordering::Relaxed);
                            ahead.fetch_add(u64::from(r.ahead > 0), std::sync::atomic::Ordering::Relaxed);
                            handoffs.fetch_add(r.handoffs, std::sync::atomic::Ordering::Relaxed);
                            handoff_seeds
                                .fetch_add(u64::from(r.handoffs > 0), std::sync::atomic::Ordering::Relaxed);
                            joins.fetch_add(r.joins, std::sync::atomic::Ordering::Relaxed);
                            leaves.fetch_add(r.leaves, std::sync::atomic::Ordering::Relaxed);
                            scaled.fetch_add(r.scaled, std::sync::atomic::Ordering::Relaxed);
                        }
                        Err(e) => {
                            if let Ok(mut f) = failed.lock() {
                                f.push(e);
                            }
                        }
                    }
                }
                sabotage::set(None);
            });
        }
    });
    let counts = Counts {
        steps: steps.into_inner(),
        ahead: ahead.into_inner(),
        handoffs: handoffs.into_inner(),
        handoff_seeds: handoff_seeds.into_inner(),
        joins: joins.into_inner(),
        leaves: leaves.into_inner(),
        scaled: scaled.into_inner(),
    };
    (failed.into_inner().unwrap_or_default(), counts)
}

/// The message of a caught panic.
fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| (*s).to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_string())
}

/// What a set of seeds did.
struct Counts {
    steps: u64,
    /// Seeds that completed a checkpoint with `ahead` counts.
    ahead: u64,
    /// Handoff steps completed, and seeds in which at least one did.
    handoffs: u64,
    handoff_seeds: u64,
    /// Nodes that joined a running job, and that left one (decision 63).
    joins: u64,
    leaves: u64,
    /// Rescales a scaling policy decided and completed.
    scaled: u64,
}

#[test]
fn every_seed_ends_exactly_once() {
    if env("SPATE_SIM_SEED").is_some() {
        return;
    }
    let seeds = env("SPATE_SIM_SEEDS").unwrap_or(SEEDS_DEFAULT);
    let first = env("SPATE_SIM_FIRST").unwrap_or(0);
    let t = std::time::Instant::now();
    let (failed, counts) = run_seeds(first, seeds, None, false);
    let secs = t.elapsed().as_secs_f64();
    eprintln!(
        "simulator: {seeds} seeds in {secs:.1} s ({:.0} seeds/s, {:.0} steps/s), {} completed a checkpoint \
         with `ahead` counts, {} moved bins live ({} handoff steps), {} nodes joined and {} left running \
         jobs, {} policy rescales, {} failed",
        seeds as f64 / secs,
        counts.steps as f64 / secs,
        counts.ahead,
        counts.handoff_seeds,
        counts.handoffs,
        counts.joins,
        counts.leaves,
        counts.scaled,
        failed.len()
    );
    for f in &failed {
        eprintln!("{}", f.lines().next().unwrap_or(""));
    }
    assert!(failed.is_empty(), "{} of {seeds} seeds failed; the first:\n{}", failed.len(), failed[0]);
    // The handoff protocol runs in the seeds, not only beside them.
    if seeds >= 200 {
        assert!(counts.handoff_seeds > 0, "no seed of {seeds} completed a handoff step");
        assert!(
            counts.joins > 0 && counts.leaves > 0,
            "no node of {seeds} seeds joined or left a running job"
        );
    }
}

#[test]
fn one_seed() {
    let Some(seed) = env("SPATE_SIM_SEED") else { return };
    let verbose = env("SPATE_SIM_VERBOSE").is_some_and(|v| v > 0);
    match run(seed, verbose) {
        Ok(r) => {
            eprintln!("seed {seed}: ok in {} virtual ms, {} steps; events {:?}", r.ms, r.steps, r.events);
            for (request, ok, text) in &r.answers {
                eprintln!("  ctl `{request}`: {} {text}", if *ok { "done:" } else { "refused:" });
            }
        }
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn a_seed_replays_exactly() {
    for seed in [3, 17, 29] {
        let a = run(seed, false).map(|r| (r.trace, r.steps, r.events));
        let b = run(seed, false).map(|r| (r.trace, r.steps, r.events));
        assert_eq!(a, b, "seed {seed} ran two ways");
    }
}

/// The broken variants and how many seeds each may take to be caught.
const BROKEN: [(Bug, u64); 10] = [
    (Bug::NoSkipOnReplay, 300),
    (Bug::IgnoreAhead, 300),
    (Bug::NoReplay, 300),
    (Bug::TrimEarly, 300),
    (Bug::CompleteEarly, 300),
    (Bug::NoAbortInFlight, 300),
    (Bug::JoinEarly, 300),
    (Bug::NoHold, 300),
    (Bug::FinishEarly, 1000),
    (Bug::NoRollBack, 1500),
];

#[test]
fn each_broken_variant_is_caught() {
    if env("SPATE_SIM_SEED").is_some() {
        return;
    }
    let mut missed = Vec::new();
    for (bug, seeds) in BROKEN {
        let t = std::time::Instant::now();
        let (failed, _) = run_seeds(0, seeds, Some(bug), true);
        match failed.first() {
            Some(f) => eprintln!(
                "simulator: {bug:?} caught in {:.1} s: {}",
                t.elapsed().as_secs_f64(),
                f.lines().next().unwrap_or("")
            ),
            None => missed.push(format!("{bug:?} (in {seeds} seeds)")),
        }
    }
    assert!(missed.is_empty(), "broken variants not caught: {}", missed.join(", "));
}
