//! Checkpoints and restore through the real `spate` binary: a keyed-sum job
//! with checkpoints every 50 ms is killed with SIGKILL mid-run, then
//! `spate run` on the same config resumes from the last complete checkpoint.
//! The file sink's output is checked against the closed-form running sums:
//! every key's sums must be exactly its prefix sums, each once: every input
//! affects the state exactly once (a lost or double-counted record would
//! produce a sum that is not a prefix sum), and the file sink, which rolls
//! its file back to the length committed with the checkpoint, writes every
//! output exactly once (a duplicate would make more lines than records).

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

fn manifests(dir: &Path) -> usize {
    std::fs::read_dir(dir.join("state/keyed-sum/checkpoints"))
        .map(|d| {
            d.filter_map(Result::ok).filter(|e| !e.file_name().to_string_lossy().ends_with(".tmp")).count()
        })
        .unwrap_or(0)
}

#[test]
fn a_killed_job_resumes_from_its_last_checkpoint_with_exact_state() {
    let _watchdog = Watchdog::start("checkpoint restore", Duration::from_secs(180));
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let cfg = config(dir.path());

    // First run: wait for a complete checkpoint, let it run a little more,
    // then SIGKILL it.
    let mut first = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_spate"))
            .args(["run", "--quiet"])
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start spate: {e}")),
    );
    let t = Instant::now();
    while manifests(dir.path()) == 0 {
        assert!(t.elapsed() < Duration::from_secs(60), "no checkpoint completed within 60 s");
        if let Ok(Some(status)) = first.0.try_wait() {
            panic!("the first run ended ({status}) before any checkpoint");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(300));
    assert!(first.0.try_wait().ok().flatten().is_none(), "the first run ended before it could be killed");
    first.0.kill().unwrap_or_else(|e| panic!("kill: {e}"));
    let _ = first.0.wait();
    assert!(manifests(dir.path()) > 0, "the killed run left no checkpoint");

    // Second run: resumes and finishes.
    let out = Command::new(env!("CARGO_BIN_EXE_spate"))
        .args(["run", "--quiet"])
        .arg(&cfg)
        .output()
        .unwrap_or_else(|e| panic!("cannot run spate: {e}"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "second run failed ({}): {stderr}", out.status);
    assert!(stderr.contains("resuming from checkpoint"), "the second run did not resume: {stderr}");
    let records_in: u64 = stderr
        .lines()
        .find_map(|l| l.strip_prefix("keyed-sum: ")?.split_once(" records in")?.0.parse().ok())
        .unwrap_or_else(|| panic!("no summary in: {stderr}"));
    assert!(records_in < RECORDS, "the second run replayed everything ({records_in} records)");
    assert_eq!(manifests(dir.path()), 0, "a finished job leaves its checkpoints behind");

    // Every key's distinct running sums are exactly its prefix sums.
    let mut sums: HashMap<u64, BTreeSet<u64>> = HashMap::new();
    let mut lines = 0u64;
    for w in 0..WORKERS {
        let p = dir.path().join(format!("out.txt.{w}"));
        let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        for line in text.lines() {
            lines += 1;
            let (k, v) = line.split_once(',').unwrap_or_else(|| panic!("not `key,sum`: {line:?}"));
            let k: u64 = k.parse().unwrap_or_else(|e| panic!("{line:?}: {e}"));
            let v: u64 = v.parse().unwrap_or_else(|e| panic!("{line:?}: {e}"));
            sums.entry(k).or_default().insert(v);
        }
    }
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
