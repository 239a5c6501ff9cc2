//! Panics are failures, never hangs (docs/ARCHITECTURE.md, decision 42):
//! a user's operator that panics — on one worker of two, in a `map` fused
//! after a source or in a `fold` after an exchange, or while the dataflow
//! is built — ends the job with an error that names the thread, where it
//! was, and the panic's message, within a bounded time. Each test runs
//! under a watchdog, so a hang fails it instead of stalling the run.

use std::time::{Duration, Instant};

use spate::prelude::*;
use spate::{Job, RuntimeError, Watchdog};

/// The longest a failing job may take to end.
const LIMIT: Duration = Duration::from_secs(20);

/// One job at a time: the tests share two cores with busy-polling workers.
static ONE_JOB: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_job() -> std::sync::MutexGuard<'static, ()> {
    ONE_JOB.lock().unwrap_or_else(|e| e.into_inner())
}

fn start(dir: &tempfile::TempDir, workers: usize, build: impl Fn(&Dataflow) + Send + Sync + 'static) -> Job {
    Runtime::new(RuntimeConfig {
        workers,
        pin: false,
        data_dir: dir.path().to_path_buf(),
        ..Default::default()
    })
    .start("panics", build)
    .unwrap_or_else(|e| panic!("start: {e}"))
}

/// Waits for the job, which must fail within [`LIMIT`]; its message.
fn failure(job: Job) -> String {
    let t = Instant::now();
    while !job.is_finished() {
        assert!(t.elapsed() < LIMIT, "the job did not end within {LIMIT:?} after a panic");
        std::thread::sleep(Duration::from_millis(10));
    }
    match job.wait() {
        Ok(r) => panic!("the job succeeded: {r:?}"),
        Err(e @ RuntimeError::Failed(_)) => {
            eprintln!("the job's failure: {e}");
            e.to_string()
        }
        Err(e) => panic!("the job ended with {e:?}, not a failure"),
    }
}

fn assert_mentions(message: &str, words: &[&str]) {
    for w in words {
        assert!(message.contains(w), "expected {w:?} in: {message}");
    }
}

/// Record `i` of the generator is `i`, made on worker `i % workers`.
fn numbers(df: &Dataflow, records: u64) -> Stream<u64> {
    df.generate("numbers", GeneratorSpec::bounded(records), |i| i, |i| i)
}

#[test]
fn a_map_that_panics_fails_the_job_with_its_message() {
    let _watchdog = Watchdog::start("a_map_that_panics_fails_the_job_with_its_message", LIMIT * 3);
    let _one = one_job();
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    // Record 100 001 is made on worker 1 and panics in the map fused after
    // its source; worker 0 goes on until it hears of the failure.
    let job = start(&dir, 2, |df| {
        numbers(df, 1_000_000)
            .map("poison", |i: u64| {
                if i == 100_001 {
                    panic!("record {i} is poison");
                }
                (i % 100, i)
            })
            .key_by("by-key", |r: &(u64, u64)| r.0)
            .fold("sum", || 0u64, |s, r| *s += r.1)
            .sink_count("sink", false, None);
    });
    let e = failure(job);
    assert_mentions(&e, &["record 100001 is poison", "spate-w1", "panicked", "source `numbers`"]);
}

#[test]
fn a_fold_that_panics_after_an_exchange_fails_the_job() {
    let _watchdog = Watchdog::start("a_fold_that_panics_after_an_exchange_fails_the_job", LIMIT * 3);
    let _one = one_job();
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    // Key 7 is summed on one of the two workers; its state passes 10^9
    // after a few thousand records.
    let job = start(&dir, 2, |df| {
        numbers(df, 1_000_000)
            .map("pairs", |i: u64| (i % 100, i))
            .key_by("by-key", |r: &(u64, u64)| r.0)
            .fold(
                "sum",
                || 0u64,
                |s, r| {
                    *s += r.1;
                    if r.0 == 7 && *s > 1_000_000_000 {
                        panic!("the sum of key 7 passed a billion");
                    }
                },
            )
            .sink_count("sink", false, None);
    });
    let e = failure(job);
    assert_mentions(&e, &["the sum of key 7 passed a billion", "panicked", "exchange `by-key`"]);
}

#[test]
fn a_build_that_panics_on_one_worker_fails_the_job() {
    let _watchdog = Watchdog::start("a_build_that_panics_on_one_worker_fails_the_job", LIMIT * 3);
    let _one = one_job();
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    // The build runs once on the caller's thread to validate the graph,
    // then on every worker: worker 1's panics.
    let built = std::sync::atomic::AtomicUsize::new(0);
    let job = start(&dir, 2, move |df| {
        numbers(df, 1_000_000)
            .map("pairs", |i: u64| (i % 100, i))
            .key_by("by-key", |r: &(u64, u64)| r.0)
            .fold("sum", || 0u64, |s, r| *s += r.1)
            .sink_count("sink", false, None);
        if std::thread::current().name() == Some("spate-w1") {
            panic!(
                "worker 1 cannot build (build {})",
                built.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            );
        }
    });
    let e = failure(job);
    assert_mentions(&e, &["worker 1 cannot build", "spate-w1", "building its share of the dataflow"]);
}
