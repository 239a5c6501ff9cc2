//! Panics are failures, never hangs (docs/ARCHITECTURE.md, decision 44):
//! a user's operator that panics — on one worker of two, in a `map` fused
//! after a source or in a `fold` after an exchange, or while the dataflow
//! is built — ends the job with an error that names the thread, where it
//! was, and the panic's message, within a bounded time; on a cluster of
//! real node processes a panic that recurs after every restart ends the
//! job with it. Each test runs under a watchdog, so a hang fails it
//! instead of stalling the run.

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use spate::deploy::LocalNodes;
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

/// A running sum per key of `records` numbers, whose map (fused after the
/// source) panics at record `poison`, in every run of the job.
fn poisoned(df: &Dataflow, records: u64, poison: u64) {
    numbers(df, records)
        .map("poison", move |i: u64| {
            if i == poison {
                panic!("record {i} is poison");
            }
            (i % 1000, i)
        })
        .key_by("by-key", |r: &(u64, u64)| r.0)
        .fold("sum", || 0u64, |s, r| *s += r.1)
        .sink_count("sink", false, None);
}

#[test]
fn a_map_that_panics_fails_the_job_with_its_message() {
    let _watchdog = Watchdog::start("a_map_that_panics_fails_the_job_with_its_message", LIMIT * 3);
    let _one = one_job();
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    // Record 100 001 is made on worker 1 and panics in the map fused after
    // its source; worker 0 goes on until it hears of the failure.
    let job = start(&dir, 2, |df| poisoned(df, 1_000_000, 100_001));
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

/// The node a process of this binary runs as, and its config (see
/// [`node_process`]).
const NODE_ENV: &str = "SPATE_PANICS_TEST_NODE";
const CONFIG_ENV: &str = "SPATE_PANICS_TEST_CONFIG";

/// A node process of [`a_panic_on_one_node_fails_the_cluster_job_after_its_restarts`]:
/// this binary, started by it with the node's name and the config in its
/// environment, runs [`poisoned`] as that node through the library
/// (`spate::node::run_node_with`), printing the coordinator's events as
/// `spate node --json` does, and exits 1 with the node's error. Record
/// 200 001, made on worker 1 (node `b`'s), panics in every run of the job:
/// a rollback replays it from a checkpoint taken before it.
#[test]
#[ignore = "a node process that a_panic_on_one_node_fails_the_cluster_job_after_its_restarts starts"]
fn node_process() {
    let (Ok(name), Ok(config)) = (std::env::var(NODE_ENV), std::env::var(CONFIG_ENV)) else {
        panic!("a node process needs {NODE_ENV} and {CONFIG_ENV}");
    };
    let cfg = spate::config::Config::load(std::path::Path::new(&config)).unwrap_or_else(|e| panic!("{e}"));
    let opts = spate::node::NodeOptions { first_core: None, pin: false, quiet: true, events: true };
    if let Err(e) = spate::node::run_node_with(
        &cfg,
        &name,
        &opts,
        Arc::new(|df: &Dataflow| poisoned(df, 50_000_000, 200_001)),
    ) {
        eprintln!("spate: {e}");
        std::process::exit(1);
    }
}

#[test]
fn a_panic_on_one_node_fails_the_cluster_job_after_its_restarts() {
    let _watchdog =
        Watchdog::start("a_panic_on_one_node_fails_the_cluster_job_after_its_restarts", LIMIT * 9);
    let _one = one_job();
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let text = format!(
        "[query]\nname = \"keyed-sum\"\n[runtime]\npin = false\npark_when_idle = true\ndata_dir = {:?}\n\
         [checkpoint]\ninterval_ms = 100\n\
         [cluster]\nfailure_timeout_ms = 1000\n\
         [[cluster.nodes]]\nname = \"a\"\naddress = \"127.0.0.1:0\"\n\
         [[cluster.nodes]]\nname = \"b\"\naddress = \"127.0.0.1:0\"\n",
        dir.path().join("data").display().to_string()
    );
    let text = spate::deploy::resolve_ports(&text).unwrap_or_else(|e| panic!("{e}"));
    let config = dir.path().join("cluster.toml");
    std::fs::write(&config, text).unwrap_or_else(|e| panic!("write config: {e}"));
    let exe = std::env::current_exe().unwrap_or_else(|e| panic!("this test's binary: {e}"));
    let mut nodes = LocalNodes::start_with(&config, |name| {
        let mut c = Command::new(&exe);
        c.args(["node_process", "--exact", "--ignored", "--nocapture", "--test-threads", "1"])
            .env(NODE_ENV, name)
            .env(CONFIG_ENV, &config);
        c
    })
    .unwrap_or_else(|e| panic!("start the nodes: {e}"));
    let e = match nodes.wait(LIMIT * 6) {
        Ok(reports) => panic!("the job succeeded: {reports:?}"),
        Err(e) => e,
    };
    eprintln!("{e}");
    // Rolled back as for any share failure, every time the panic came
    // back, then failed with it: the coordinator's error names it.
    assert_mentions(&e, &["the coordinator failed", "restart 3 of 3"]);
    let failure = e
        .lines()
        .find(|l| l.starts_with("[a] spate: node `a`:"))
        .unwrap_or_else(|| panic!("no error of the coordinator's node in: {e}"));
    assert_mentions(failure, &["thread `spate-w1` panicked", "record 200001 is poison"]);
}
