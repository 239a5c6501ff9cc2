//! The scaling policy through the real `spate` binary: `spate run` with
//! `[scaling]` scales its job onto its second worker and prints the
//! decision; and on a cluster on loopback: two node processes of one
//! worker, the second owning nothing at first (`[cluster] start_workers =
//! 1`), or waiting in the pool (`spare = true`, `max_workers = 2`) to
//! join the running job; the workers' load reports reach the coordinator,
//! its policy decides to scale out, the plan moves bins onto `b`'s worker
//! by live handoff, and the decision, the join and the outcome are job
//! events on the coordinator's `--json` output; a node SIGKILLed as it
//! joins loses nothing. Every output line is checked against keyed-sum's
//! closed form. Processes are killed at the end even when the test fails.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use spate::deploy::KillOnDrop;
use spate::Watchdog;

mod common;
use common::{assert_keyed_sum_exact, one_worker_nodes, spawn_node, SPATE};

/// keyed-sum at a rate stepping from 100 000/s to 400 000/s, checkpoints
/// every 200 ms, a threshold policy low enough that any real load is a
/// bottleneck (this test is about the plumbing, not the thresholds:
/// `core/src/control/scaling/tests.rs` checks those).
fn config(dir: &Path, records: u64, keys: u64) -> PathBuf {
    config_of(dir, records, keys, &["a", "b"], "start_workers = 1\n")
}

/// The rate steps of [`config`], then a fall to 3 000/s from 2 s.
const STEP_AND_FALL: &str = "rate_schedule = [[0, 100000], [1, 400000], [2, 3000]]\n";

/// [`config`] on nodes `names` (a name ending in `*` is a spare: a node of
/// the pool), with `cluster` in `[cluster]`.
fn config_of(dir: &Path, records: u64, keys: u64, names: &[&str], cluster: &str) -> PathBuf {
    config_with(dir, records, keys, names, cluster, "rate_schedule = [[0, 100000], [1, 400000]]\n")
}

/// [`config_of`] with the rate schedule line `schedule`.
fn config_with(
    dir: &Path,
    records: u64,
    keys: u64,
    names: &[&str],
    cluster: &str,
    schedule: &str,
) -> PathBuf {
    // Low enough that any real load is a bottleneck, unless the schedule
    // falls: then as high as the fall needs to be spare capacity.
    let thresholds =
        if schedule == STEP_AND_FALL { "high = 0.3\nlow = 0.2\n" } else { "high = 0.02\nlow = 0.01\n" };
    let secret = dir.join("secret");
    std::fs::write(&secret, format!("elastic-test-secret-{:x}", std::process::id()))
        .unwrap_or_else(|e| panic!("write secret: {e}"));
    let mut text = format!(
        "[query]\nname = \"keyed-sum\"\n[query.params]\nrecords = {records}\nkeys = {keys}\n\
         {schedule}\
         [runtime]\npin = false\npark_when_idle = true\ndata_dir = {:?}\n\
         [sink]\nkind = \"file\"\npath = {:?}\nlatency = false\n\
         [checkpoint]\ninterval_ms = 200\nbackups = 1\n\
         [scaling]\npolicy = \"threshold\"\ninterval_ms = 200\n{thresholds}reports = 2\n\
         cooldown_ms = 500\nscale_in_hold_ms = 500\nmax_bins_per_step = 512\n\
         [cluster]\nconnect_timeout_ms = 10000\nfailure_timeout_ms = 2000\n{cluster}\
         secret_file = {:?}\n",
        dir.join("data").display().to_string(),
        dir.join("out.txt").display().to_string(),
        secret.display().to_string(),
    );
    text += &one_worker_nodes(names);
    let p = dir.join("cluster.toml");
    std::fs::write(&p, text).unwrap_or_else(|e| panic!("write config: {e}"));
    p
}

#[test]
fn a_policy_scales_a_cluster_out_by_itself_and_the_output_is_exact() {
    let _watchdog = Watchdog::start("elastic cluster", Duration::from_secs(120));
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let (records, keys) = (600_000, 1000);
    let cfg = config(dir.path(), records, keys);
    let events = dir.path().join("events.jsonl");
    let events_file = std::fs::File::create(&events).unwrap_or_else(|e| panic!("{e}"));
    let mut nodes = [spawn_node(&cfg, "a", Some(events_file)), spawn_node(&cfg, "b", None)];
    for (i, n) in nodes.iter_mut().enumerate() {
        let status = n.wait_for(Duration::from_secs(60)).unwrap_or_else(|| panic!("node {i} did not exit"));
        assert!(status.success(), "node {i} exited with {status}");
    }
    let log = std::fs::read_to_string(&events).unwrap_or_else(|e| panic!("{e}"));
    let decision = log
        .lines()
        .find(|l| l.contains("scale threshold 1 -> 2 workers: worker 0 busy"))
        .unwrap_or_else(|| panic!("no scale-out decision among the events:\n{log}"));
    assert!(decision.contains("split at bin") && decision.contains("bins move"), "{decision}");
    assert!(log.contains("\"scaled scale threshold 1 -> 2 workers: moved"), "no outcome event:\n{log}");
    // Every output line once, in order per key within each file; node b's
    // worker took part.
    let per_worker = assert_keyed_sum_exact(dir.path(), records, keys);
    assert!(per_worker.get(&1).is_some_and(|&n| n > 0), "node b's worker wrote nothing: {per_worker:?}");
}

/// Until the events file holds a line with `what`, at most `limit`.
fn wait_for_event(events: &Path, what: &str, limit: Duration) -> bool {
    let t = std::time::Instant::now();
    while t.elapsed() < limit {
        if std::fs::read_to_string(events).is_ok_and(|l| l.contains(what)) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    false
}

/// The job runs on `a`; `b` waits in the pool (the `static` pool: spares
/// of the config, started beforehand) and joins the running job when the
/// policy scales out onto the job's second worker, parked until then
/// (`[cluster] max_workers = 2`); when the rate falls the policy scales
/// back in, and `b`, emptied, leaves the job for the pool.
#[test]
fn a_policy_scales_out_onto_a_node_of_the_pool_and_the_output_is_exact() {
    let _watchdog = Watchdog::start("elastic cluster with a pool", Duration::from_secs(120));
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    // 100 000 and 400 000 in the first two seconds, then 3 000/s for 8 s.
    let (records, keys) = (524_000, 1000);
    let cfg = config_with(dir.path(), records, keys, &["a", "b*"], "max_workers = 2\n", STEP_AND_FALL);
    let events = dir.path().join("events.jsonl");
    let events_file = std::fs::File::create(&events).unwrap_or_else(|e| panic!("{e}"));
    let mut nodes = [spawn_node(&cfg, "a", Some(events_file)), spawn_node(&cfg, "b", None)];
    for (i, n) in nodes.iter_mut().enumerate() {
        let status = n.wait_for(Duration::from_secs(60)).unwrap_or_else(|| panic!("node {i} did not exit"));
        assert!(status.success(), "node {i} exited with {status}");
    }
    let log = std::fs::read_to_string(&events).unwrap_or_else(|e| panic!("{e}"));
    assert!(log.contains("scale threshold 1 -> 2 workers"), "no scale-out decision:\n{log}");
    assert!(log.contains("\"joined b\""), "node b did not join:\n{log}");
    assert!(log.contains("\"scaled scale threshold 1 -> 2 workers: moved"), "no outcome event:\n{log}");
    assert!(log.contains("scale threshold 2 -> 1 workers"), "no scale-in decision:\n{log}");
    assert!(log.contains("\"left b\""), "node b did not leave for the pool:\n{log}");
    let per_worker = assert_keyed_sum_exact(dir.path(), records, keys);
    assert!(per_worker.get(&1).is_some_and(|&n| n > 0), "node b's worker wrote nothing: {per_worker:?}");
}

/// The node that joins for the policy's scale-out is killed (SIGKILL) as
/// it joins: the scale-out fails as a job event, the job recovers (the
/// slot goes back to its host, or to the next node of the pool), and
/// every output is written once.
#[test]
fn a_node_killed_while_the_policy_scales_out_loses_nothing() {
    let _watchdog = Watchdog::start("SIGKILL while scaling", Duration::from_secs(150));
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let (records, keys) = (800_000, 1000);
    let cfg = config_of(dir.path(), records, keys, &["a", "b*", "c*"], "max_workers = 2\n");
    let events = dir.path().join("events.jsonl");
    let events_file = std::fs::File::create(&events).unwrap_or_else(|e| panic!("{e}"));
    let mut nodes =
        [spawn_node(&cfg, "a", Some(events_file)), spawn_node(&cfg, "b", None), spawn_node(&cfg, "c", None)];
    assert!(wait_for_event(&events, "\"joined b\"", Duration::from_secs(30)), "node b never joined");
    let _ = nodes[1].0.kill();
    for i in [0, 2] {
        let status =
            nodes[i].wait_for(Duration::from_secs(90)).unwrap_or_else(|| panic!("node {i} did not exit"));
        assert!(status.success(), "node {i} exited with {status}");
    }
    let log = std::fs::read_to_string(&events).unwrap_or_else(|e| panic!("{e}"));
    assert!(log.contains("\"failed b\""), "node b's failure is not an event:\n{log}");
    assert_keyed_sum_exact(dir.path(), records, keys);
}

/// `spate run` with `[scaling]` and a free worker (`max_workers = 2`):
/// the policy's decision is printed with its figures, and the job ends
/// with every record in and out.
#[test]
fn spate_run_prints_its_policys_decisions() {
    let _watchdog = Watchdog::start("spate run with [scaling]", Duration::from_secs(90));
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let cfg = dir.path().join("run.toml");
    let text = format!(
        "[query]\nname = \"keyed-sum\"\n[query.params]\nrecords = 600000\nkeys = 1000\n\
         rate_schedule = [[0, 300000]]\n\
         [runtime]\nworkers = 1\nmax_workers = 2\npin = false\ndata_dir = {:?}\n\
         [sink]\nkind = \"count\"\n\
         [scaling]\npolicy = \"threshold\"\ninterval_ms = 200\nhigh = 0.02\nlow = 0.01\n",
        dir.path().join("data").display().to_string()
    );
    std::fs::write(&cfg, text).unwrap_or_else(|e| panic!("write config: {e}"));
    let mut run = KillOnDrop(
        Command::new(SPATE)
            .args(["run", "--quiet"])
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start spate run: {e}")),
    );
    let status = run.wait_for(Duration::from_secs(60)).unwrap_or_else(|| panic!("spate run did not end"));
    let mut err = String::new();
    if let Some(mut e) = run.0.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut e, &mut err);
    }
    assert!(status.success(), "spate run failed: {err}");
    assert!(err.contains("scale threshold 1 -> 2 workers: worker 0 busy"), "no decision printed: {err}");
    assert!(err.contains("600000 records in, 600000 out"), "{err}");
}
