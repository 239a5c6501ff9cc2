//! Checkpoints and restore through the real `spate` binary: a keyed-sum job
//! with checkpoints every 50 ms is killed with SIGKILL mid-run, then
//! `spate run` on the same config resumes from the last complete checkpoint.
//! The file sink's output is checked against the closed-form running sums:
//! every key's sums must be exactly its prefix sums, each once: every input
//! affects the state exactly once (a lost or double-counted record would
//! produce a sum that is not a prefix sum), and the file sink, which rolls
//! its file back to the length committed with the checkpoint, writes every
//! output exactly once (a duplicate would make more lines than records).
//!
//! The same holds when the job is restored onto more or fewer workers than
//! took the checkpoint (ARCHITECTURE.md, decision 42).

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use spate::deploy::KillOnDrop;
use spate::Watchdog;

const WORKERS: usize = 2;
const RECORDS: u64 = 600_000;
const KEYS: u64 = 1000;
const RATE: u64 = 200_000;

fn config(dir: &Path) -> PathBuf {
    let text = format!(
        "[query]\nname = \"keyed-sum\"\n[query.params]\nrecords = {RECORDS}\nkeys = {KEYS}\nrate = {RATE}\n\
         [runtime]\nworkers = {WORKERS}\npin = false\ndata_dir = {data:?}\n\
         [sink]\nkind = \"file\"\npath = {out:?}\nlatency = false\n\
         [checkpoint]\ninterval_ms = 50\n",
        data = dir.join("state").display().to_string(),
        out = dir.join("out.txt").display().to_string(),
    );
    let cfg = dir.join("query.toml");
    std::fs::write(&cfg, text).unwrap_or_else(|e| panic!("write config: {e}"));
    cfg
}

/// The ids of the job's complete checkpoints on disk.
fn manifest_ids(dir: &Path) -> Vec<u64> {
    std::fs::read_dir(dir.join("state/keyed-sum/checkpoints"))
        .map(|d| {
            d.filter_map(Result::ok)
                .filter_map(|e| e.file_name().to_str()?.strip_prefix("manifest-")?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

fn manifests(dir: &Path) -> usize {
    std::fs::read_dir(dir.join("state/keyed-sum/checkpoints"))
        .map(|d| {
            d.filter_map(Result::ok).filter(|e| !e.file_name().to_string_lossy().ends_with(".tmp")).count()
        })
        .unwrap_or(0)
}

/// Runs the job (with `--workers workers`) until a checkpoint above
/// `above` completed, lets it run a little more, then SIGKILLs it; the
/// highest complete checkpoint id then.
fn run_and_kill(cfg: &Path, dir: &Path, workers: usize, above: u64) -> u64 {
    let mut run = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_spate"))
            .args(["run", "--quiet", "--workers", &workers.to_string()])
            .arg(cfg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start spate: {e}")),
    );
    let t = Instant::now();
    while manifest_ids(dir).into_iter().max().unwrap_or(0) <= above {
        assert!(t.elapsed() < Duration::from_secs(60), "no checkpoint above {above} completed within 60 s");
        if let Ok(Some(status)) = run.0.try_wait() {
            panic!("the run on {workers} workers ended ({status}) before a checkpoint above {above}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(300));
    assert!(run.0.try_wait().ok().flatten().is_none(), "the run ended before it could be killed");
    run.0.kill().unwrap_or_else(|e| panic!("kill: {e}"));
    let _ = run.0.wait();
    let last = manifest_ids(dir).into_iter().max().unwrap_or(0);
    assert!(last > above, "the killed run left no checkpoint above {above}");
    last
}

/// Runs the job (with `--workers workers`) to its end: it must resume
/// from a checkpoint and take in fewer than all records.
fn finish(cfg: &Path, dir: &Path, workers: usize) {
    let out = Command::new(env!("CARGO_BIN_EXE_spate"))
        .args(["run", "--quiet", "--workers", &workers.to_string()])
        .arg(cfg)
        .output()
        .unwrap_or_else(|e| panic!("cannot run spate: {e}"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the last run failed ({}): {stderr}", out.status);
    assert!(stderr.contains("resuming from checkpoint"), "the last run did not resume: {stderr}");
    let records_in: u64 = stderr
        .lines()
        .find_map(|l| l.strip_prefix("keyed-sum: ")?.split_once(" records in")?.0.parse().ok())
        .unwrap_or_else(|| panic!("no summary in: {stderr}"));
    assert!(records_in < RECORDS, "the last run replayed everything ({records_in} records)");
    assert_eq!(manifests(dir), 0, "a finished job leaves its checkpoints behind");
}

/// Every output line in the sink's files (`out.txt`, `out.txt.<w>`: a job
/// restored onto another worker count leaves a key's earlier outputs in
/// its old worker's file): each record's output exactly once, and every
/// key's running sums exactly its prefix sums.
fn check_output(dir: &Path) {
    let mut sums: HashMap<u64, BTreeSet<u64>> = HashMap::new();
    let mut lines = 0u64;
    let mut files = 0;
    for e in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let p = e.unwrap_or_else(|e| panic!("{e}")).path();
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("").to_string();
        let part =
            name.strip_prefix("out.txt").is_some_and(|r| r.is_empty() || r[1..].parse::<u32>().is_ok());
        if !part {
            continue;
        }
        files += 1;
        let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        for line in text.lines() {
            lines += 1;
            let (k, v) = line.split_once(',').unwrap_or_else(|| panic!("{name}: not `key,sum`: {line:?}"));
            let k: u64 = k.parse().unwrap_or_else(|e| panic!("{line:?}: {e}"));
            let v: u64 = v.parse().unwrap_or_else(|e| panic!("{line:?}: {e}"));
            assert!(sums.entry(k).or_default().insert(v), "{name}: key {k}'s sum {v} written twice");
        }
    }
    assert!(files > 0, "no output file");
    assert_eq!(lines, RECORDS, "output lines for {RECORDS} records: each output exactly once");
    assert_eq!(sums.len() as u64, KEYS, "every key appears");
    for (k, got) in &sums {
        let n = (RECORDS - k).div_ceil(KEYS);
        let expected: BTreeSet<u64> = (0..n)
            .scan(0u64, |acc, j| {
                *acc += k + j * KEYS;
                Some(*acc)
            })
            .collect();
        assert_eq!(got, &expected, "running sums of key {k}");
    }
}

#[test]
fn a_killed_job_resumes_from_its_last_checkpoint_with_exact_state() {
    let _watchdog = Watchdog::start("checkpoint restore", Duration::from_secs(180));
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let cfg = config(dir.path());
    run_and_kill(&cfg, dir.path(), WORKERS, 0);
    finish(&cfg, dir.path(), WORKERS);
    check_output(dir.path());
}

/// Restored onto more workers, then onto fewer: each restore gathers every
/// instance's bins from the old workers' parts, the sources resume each of
/// their 2 partitions, and the output is still exact.
#[test]
fn a_killed_job_restores_onto_more_then_fewer_workers_with_exact_state() {
    let _watchdog = Watchdog::start("rescaled restore", Duration::from_secs(240));
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let cfg = config(dir.path());
    let first = run_and_kill(&cfg, dir.path(), WORKERS, 0);
    let second = run_and_kill(&cfg, dir.path(), 3, first);
    let text = std::fs::read_to_string(
        dir.path().join(format!("state/keyed-sum/checkpoints/manifest-{second:020}")),
    )
    .unwrap_or_else(|e| panic!("manifest {second}: {e}"));
    assert!(
        text.contains("workers 3\npartitions 2\n"),
        "a checkpoint on 3 workers keeps 2 partitions: {text}"
    );
    finish(&cfg, dir.path(), 1);
    check_output(dir.path());
}
