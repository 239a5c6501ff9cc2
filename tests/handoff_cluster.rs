//! Live handoff between node processes, through the real `spate` binary on
//! loopback: `spate ctl scale` moves bins of a running keyed-sum from one
//! node's worker to another's and back while checkpoints run; a node
//! SIGKILLed in the middle of a handoff is recovered (every node rolls back
//! to the last checkpoint) with every output written once; bad requests are
//! refused and change nothing. Every connection proves the cluster's
//! secret. Every output is checked record by record against keyed-sum's
//! closed form.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use spate::deploy::KillOnDrop;
use spate::Watchdog;

mod common;
use common::{assert_keyed_sum_exact, ctl, one_worker_nodes, spawn_node, text};

/// A keyed-sum config of `records` records over `keys` keys at `rate`
/// records/s, checkpoints every 200 ms, on one-worker nodes `names` (a
/// name ending in `*` is a spare), the first `start` of whose workers own
/// the bins at first.
fn config(dir: &Path, records: u64, keys: u64, rate: u64, names: &[&str], start: usize) -> PathBuf {
    config_with(dir, records, keys, rate, names, start, "")
}

/// [`config`], with more lines of `[cluster]`.
fn config_with(
    dir: &Path,
    records: u64,
    keys: u64,
    rate: u64,
    names: &[&str],
    start: usize,
    cluster: &str,
) -> PathBuf {
    // Every connection — worker links, control, parcels, `spate ctl` —
    // proves this secret (decision 46).
    let secret = dir.join("secret");
    let word = format!("handoff-test-secret-{:x}", std::process::id());
    std::fs::write(&secret, word).unwrap_or_else(|e| panic!("write secret: {e}"));
    let mut text = format!(
        "[query]\nname = \"keyed-sum\"\n[query.params]\nrecords = {records}\nkeys = {keys}\nrate = {rate}\n\
         [runtime]\npin = false\npark_when_idle = true\ndata_dir = {:?}\n\
         [sink]\nkind = \"file\"\npath = {:?}\nlatency = false\n\
         [checkpoint]\ninterval_ms = 200\nbackups = 1\n\
         [cluster]\nconnect_timeout_ms = 10000\nfailure_timeout_ms = 1000\nstart_workers = {start}\n\
         secret_file = {:?}\n{cluster}",
        dir.join("data").display().to_string(),
        dir.join("out.txt").display().to_string(),
        secret.display().to_string(),
    );
    text += &one_worker_nodes(names);
    let p = dir.join("cluster.toml");
    std::fs::write(&p, text).unwrap_or_else(|e| panic!("write config: {e}"));
    p
}

/// Until the coordinator answers (`spate ctl assignment`), at most 20 s.
fn wait_running(cfg: &Path) {
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(20) {
        let o = ctl(cfg, &["assignment"]);
        if o.status.success() && text(&o).contains("worker 0") {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("the coordinator did not answer within 20 s");
}

fn wait_all(nodes: &mut [KillOnDrop], limit: Duration) {
    for (i, n) in nodes.iter_mut().enumerate() {
        let status = n.wait_for(limit).unwrap_or_else(|| panic!("node {i} did not exit within {limit:?}"));
        assert!(status.success(), "node {i} exited with {status}");
    }
}

#[test]
fn bins_move_between_two_nodes_and_back_while_checkpoints_run() {
    let _watchdog = Watchdog::start("handoff between nodes", Duration::from_secs(120));
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let (records, keys) = (2_400_000, 1000);
    let cfg = config(dir.path(), records, keys, 400_000, &["a", "b"], 1);
    let mut nodes = vec![spawn_node(&cfg, "a", None), spawn_node(&cfg, "b", None)];
    wait_running(&cfg);
    // Out to `b` and back, in steps of 512 and 1 024 bins, until the job
    // ends (about 6 s).
    let mut moves = Vec::new();
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(20) {
        // Out with `scale`, back with `scale` or `scale-in` in turn.
        let args: &[&str] = match moves.len() % 4 {
            0 => &["scale", "--workers", "2", "--max-bins", "512"],
            2 => &["scale", "--workers", "2", "--max-bins", "4096", "--max-bytes", "8192"],
            1 => &["scale", "--workers", "1", "--max-bins", "1024"],
            _ => &["scale-in", "--node", "b", "--max-bins", "1024"],
        };
        let o = ctl(&cfg, args);
        if !o.status.success() {
            break;
        }
        moves.push(text(&o));
        std::thread::sleep(Duration::from_millis(150));
    }
    wait_all(&mut nodes, Duration::from_secs(30));
    assert!(moves.len() >= 4, "only {} rescales went through before the job ended: {moves:?}", moves.len());
    // `scale-in` empties `b`, and `b` leaves the job for the pool (its
    // slot parked on `a`), from where the next scale-out brings it back.
    assert!(
        moves[3].starts_with("scale-in b")
            && moves[3].contains("node `b` left the job: back in the pool")
            && moves[3].contains("worker 1 on `a`: bins 4096..4096"),
        "{}",
        moves[3]
    );
    if let Some(m) = moves.get(4) {
        assert!(
            m.contains("joined from the pool: b") && m.contains("worker 1 on `b`: bins 2048..4096"),
            "{m}"
        );
    }
    assert!(moves[0].contains("moved 2048 bins") && moves[0].contains("in 4 steps"), "{}", moves[0]);
    assert!(moves[1].contains("moved 2048 bins") && moves[1].contains("in 2 steps"), "{}", moves[1]);
    assert!(moves[0].contains("worker 1 on `b`: bins 2048..4096"), "{}", moves[0]);
    // Bounded by bytes, not bins: a probe of 8 bins, then steps sized by
    // what the bins held.
    if let Some(m) = moves.get(2) {
        let steps: usize = m
            .split(" steps")
            .next()
            .and_then(|h| h.split_whitespace().last())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no step count in {m}"));
        assert!(m.contains("moved 2048 bins") && steps > 2, "{m}");
        assert!(m.contains("step ") && m.contains(": bins 4088..4096 from worker 0 to 1"), "{m}");
    }
    let per_worker = assert_keyed_sum_exact(dir.path(), records, keys);
    assert!(per_worker.get(&1).is_some_and(|&n| n > 0), "node b's worker wrote nothing: {per_worker:?}");
}

#[test]
fn a_node_of_the_pool_joins_the_running_job_takes_bins_and_leaves_it() {
    let _watchdog = Watchdog::start("join and leave", Duration::from_secs(150));
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let (records, keys) = (3_200_000, 1000);
    // `a` and `b` run the job; `c` waits in the pool. The job may have
    // three workers: the third is parked (on `a`) until a rescale gives it
    // bins, when `c` joins the running job for it.
    let cfg = config_with(dir.path(), records, keys, 400_000, &["a", "b", "c*"], 0, "max_workers = 3\n");
    let mut nodes: Vec<KillOnDrop> = ["a", "b", "c"].iter().map(|n| spawn_node(&cfg, n, None)).collect();
    wait_running(&cfg);
    let o = ctl(&cfg, &["assignment"]);
    assert!(text(&o).contains("worker 2 on `a`: bins 4096..4096"), "not parked on `a`: {}", text(&o));
    let mut answers = Vec::new();
    // Out onto `c` (which joins), back (it leaves for the pool), out again
    // (it joins again), and back with `--exit` (its process exits).
    for args in [
        &["scale", "--workers", "3", "--max-bins", "512"][..],
        &["scale-in", "--node", "c", "--max-bins", "1024"],
        &["scale", "--workers", "3", "--max-bins", "4096"],
        &["scale-in", "--node", "c", "--exit"],
    ] {
        let o = ctl(&cfg, args);
        assert!(o.status.success(), "{args:?} was refused: {}", text(&o));
        answers.push(text(&o));
        std::thread::sleep(Duration::from_millis(300));
    }
    for (i, want) in [
        (0, "joined from the pool: c"),
        (0, "worker 2 on `c`: bins 27"),
        (1, "node `c` left the job: back in the pool"),
        (1, "worker 2 on `a`: bins 4096..4096"),
        (2, "joined from the pool: c"),
        (2, "worker 2 on `c`: bins 27"),
        (3, "node `c` left the job: released; it exits"),
        (3, "worker 1 on `b`: bins 2048..4096"),
    ] {
        assert!(answers[i].contains(want), "answer {i} lacks {want:?}: {}", answers[i]);
    }
    // `c` exits while the job still runs (it has about 8 s of records).
    let status = nodes[2]
        .wait_for(Duration::from_secs(10))
        .unwrap_or_else(|| panic!("node c did not exit once released"));
    assert!(status.success(), "node c exited with {status}");
    assert!(nodes[0].0.try_wait().ok().flatten().is_none(), "node a ended with node c");
    let o = ctl(&cfg, &["scale", "--workers", "3"]);
    assert!(
        !o.status.success() && text(&o).contains("the pool has 0 idle nodes"),
        "a scale-out with the pool empty: {}",
        text(&o)
    );
    wait_all(&mut nodes[..2], Duration::from_secs(60));
    let per_worker = assert_keyed_sum_exact(dir.path(), records, keys);
    assert!(per_worker.get(&2).is_some_and(|&n| n > 0), "node c's worker wrote nothing: {per_worker:?}");
}

#[test]
fn a_node_killed_during_a_handoff_rolls_back_and_the_output_is_exact() {
    let _watchdog = Watchdog::start("kill during handoff", Duration::from_secs(150));
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let (records, keys) = (2_400_000, 1000);
    // `c` owns nothing at first; `s` is a spare.
    let cfg = config(dir.path(), records, keys, 400_000, &["a", "b", "c", "s*"], 2);
    let mut nodes: Vec<KillOnDrop> = ["a", "b", "c", "s"].iter().map(|n| spawn_node(&cfg, n, None)).collect();
    wait_running(&cfg);
    std::thread::sleep(Duration::from_millis(500));
    // Scale out onto `c` in small steps and kill the giver (`b`) or the
    // taker (`c`) a few milliseconds in, at a moment the seed picks.
    let seed =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    let victim = std::env::var("SPATE_HANDOFF_VICTIM")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1 + (seed / 1000) as usize % 2);
    assert!(victim == 1 || victim == 2, "SPATE_HANDOFF_VICTIM: 1 (b) or 2 (c)");
    let delay = Duration::from_millis(100 + u64::from(seed % 300));
    let cfg2 = cfg.clone();
    // 16 bins a step: about 130 steps, longer than the delay.
    let request = std::thread::spawn(move || ctl(&cfg2, &["scale", "--workers", "3", "--max-bins", "16"]));
    std::thread::sleep(delay);
    let _ = nodes[victim].0.kill();
    let answer = request.join().unwrap_or_else(|_| panic!("the ctl thread panicked"));
    eprintln!("killed node {victim} after {delay:?}: {}", text(&answer));
    assert!(
        !answer.status.success() && text(&answer).contains("interrupted after"),
        "the request was not interrupted by the failure: {}",
        text(&answer)
    );
    // After the rollback the job goes on; a later rescale works.
    wait_running(&cfg);
    let t = Instant::now();
    let (mut later, mut refused) = (None, String::new());
    while t.elapsed() < Duration::from_secs(10) {
        let o = ctl(&cfg, &["scale", "--workers", "3", "--max-bins", "512"]);
        if o.status.success() {
            later = Some(text(&o));
            break;
        }
        refused = text(&o);
        std::thread::sleep(Duration::from_millis(200));
    }
    let survivors: Vec<usize> = (0..4).filter(|&i| i != victim).collect();
    for &i in &survivors {
        let status = nodes[i].wait_for(Duration::from_secs(60)).unwrap_or_else(|| panic!("node {i} hangs"));
        assert!(status.success(), "node {i} exited with {status}");
    }
    assert!(later.is_some(), "no rescale went through after the recovery: {refused}");
    assert_keyed_sum_exact(dir.path(), records, keys);
}

#[test]
fn bad_control_requests_are_refused_and_change_nothing() {
    let _watchdog = Watchdog::start("bad ctl requests", Duration::from_secs(90));
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let (records, keys) = (1_600_000, 1000);
    let cfg = config(dir.path(), records, keys, 400_000, &["a", "b"], 1);
    let mut nodes = vec![spawn_node(&cfg, "a", None), spawn_node(&cfg, "b", None)];
    wait_running(&cfg);
    for (args, says) in [
        (&["scale", "--workers", "0"][..], "cannot scale to 0 workers"),
        (&["scale", "--workers", "3"], "cannot scale to 3 workers: the job runs 1 to 2"),
        (&["move", "--bins", "100..5000", "--to", "b"], "no worker owns all of bins 100..5000"),
        (&["move", "--bins", "0..100", "--to", "b"], "they must be a run at the end"),
        (
            &["move", "--bins", "4000..4096", "--to", "x"],
            "no node of the config that runs workers is called `x`",
        ),
        (&["move", "--bins", "4000..4096", "--to", "b/3"], "node `b` runs 1 workers: it has no worker 3"),
        (&["move", "--bins", "4000..4096", "--to", "7"], "worker 7 is not one of the job's 2"),
        (&["scale-in", "--node", "x"], "no node is called `x`"),
        (
            &["scale-in", "--node", "b", "--exit"],
            "node `b` cannot leave the job: the nodes left would have too few backup nodes",
        ),
        (&["scale-in", "--node", "a"], "runs the job's first workers"),
        (&["dance"], "unrecognized subcommand"),
    ] {
        let o = ctl(&cfg, args);
        assert!(!o.status.success(), "{args:?} was accepted: {}", text(&o));
        assert!(text(&o).contains(says), "{args:?}: expected {says:?} in {:?}", text(&o));
    }
    let o = ctl(&cfg, &["assignment"]);
    assert!(text(&o).contains("assignment 0 of 4096 bins"), "{}", text(&o));
    assert!(text(&o).contains("worker 0 on `a`: bins 0..4096"), "{}", text(&o));
    let o = ctl(&cfg, &["move", "--bins", "4000..4096", "--to", "b"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("worker 1 on `b`: bins 4000..4096"), "{}", text(&o));
    wait_all(&mut nodes, Duration::from_secs(30));
    assert_keyed_sum_exact(dir.path(), records, keys);
}
