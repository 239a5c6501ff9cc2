//! The scaling policy through the real `spate` binary: `spate run` with
//! `[scaling]` scales its job onto its second worker and prints the
//! decision; and on a cluster on loopback: two node processes of one worker, the second owning nothing
//! at first (`[cluster] start_workers = 1`); the workers' load reports
//! reach the coordinator, its policy decides to scale out, the plan moves
//! bins onto `b`'s free worker by live handoff, and the decision and its
//! outcome are job events on the coordinator's `--json` output. Every
//! output line is checked against keyed-sum's closed form. Processes are
//! killed at the end even when the test fails.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use spate::deploy::KillOnDrop;
use spate::Watchdog;

const SPATE: &str = env!("CARGO_BIN_EXE_spate");

fn free_addr() -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
    l.local_addr().unwrap_or_else(|e| panic!("{e}")).to_string()
}

/// keyed-sum at a rate stepping from 100 000/s to 400 000/s, checkpoints
/// every 200 ms, a threshold policy low enough that any real load is a
/// bottleneck (this test is about the plumbing, not the thresholds:
/// `core/src/control/scaling/tests.rs` checks those).
fn config(dir: &Path, records: u64, keys: u64) -> PathBuf {
    let secret = dir.join("secret");
    std::fs::write(&secret, format!("elastic-test-secret-{:x}", std::process::id()))
        .unwrap_or_else(|e| panic!("write secret: {e}"));
    let mut text = format!(
        "[query]\nname = \"keyed-sum\"\n[query.params]\nrecords = {records}\nkeys = {keys}\n\
         rate_schedule = [[0, 100000], [1, 400000]]\n\
         [runtime]\npin = false\npark_when_idle = true\ndata_dir = {:?}\n\
         [sink]\nkind = \"file\"\npath = {:?}\nlatency = false\n\
         [checkpoint]\ninterval_ms = 200\nbackups = 1\n\
         [scaling]\npolicy = \"threshold\"\ninterval_ms = 200\nhigh = 0.02\nlow = 0.01\nreports = 2\n\
         cooldown_ms = 500\nmax_bins_per_step = 512\n\
         [cluster]\nconnect_timeout_ms = 10000\nfailure_timeout_ms = 2000\nstart_workers = 1\n\
         secret_file = {:?}\n",
        dir.join("data").display().to_string(),
        dir.join("out.txt").display().to_string(),
        secret.display().to_string(),
    );
    for name in ["a", "b"] {
        text +=
            &format!("[[cluster.nodes]]\nname = \"{name}\"\naddress = \"{}\"\nworkers = 1\n", free_addr());
    }
    let p = dir.join("cluster.toml");
    std::fs::write(&p, text).unwrap_or_else(|e| panic!("write config: {e}"));
    p
}

/// keyed-sum's output in closed form, every line counted.
fn expected(records: u64, keys: u64) -> BTreeMap<String, u32> {
    let mut m = BTreeMap::new();
    for k in 0..keys.min(records) {
        let (mut acc, mut i) = (0u64, k);
        while i < records {
            acc += i;
            *m.entry(format!("{k},{acc}")).or_insert(0) += 1;
            i += keys;
        }
    }
    m
}

#[test]
fn a_policy_scales_a_cluster_out_by_itself_and_the_output_is_exact() {
    let _watchdog = Watchdog::start("elastic cluster", Duration::from_secs(120));
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let (records, keys) = (600_000, 1000);
    let cfg = config(dir.path(), records, keys);
    let events = dir.path().join("events.jsonl");
    let events_file = std::fs::File::create(&events).unwrap_or_else(|e| panic!("{e}"));
    let a = KillOnDrop(
        Command::new(SPATE)
            .args(["node", "--quiet", "--json", "--name", "a", "--config"])
            .arg(&cfg)
            .stdout(events_file)
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start node a: {e}")),
    );
    let b = KillOnDrop(
        Command::new(SPATE)
            .args(["node", "--quiet", "--name", "b", "--config"])
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start node b: {e}")),
    );
    let mut nodes = [a, b];
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
    let (mut got, mut per_file) = (BTreeMap::new(), Vec::new());
    for w in 0..2 {
        let p = dir.path().join(format!("out.txt.{w}"));
        let text = std::fs::read_to_string(&p).unwrap_or_default();
        for l in text.lines() {
            *got.entry(l.to_string()).or_insert(0u32) += 1;
        }
        per_file.push(text.lines().count());
    }
    let want = expected(records, keys);
    let missing = want.iter().filter(|(k, n)| got.get(*k) < Some(n)).count();
    let extra = got.iter().filter(|(k, n)| want.get(*k) < Some(n)).count();
    assert!(missing == 0 && extra == 0, "{missing} lines missing, {extra} extra or duplicated");
    assert!(per_file[1] > 0, "node b's worker wrote nothing: {per_file:?}");
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
