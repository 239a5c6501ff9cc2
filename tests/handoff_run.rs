//! `spate ctl` against a `spate run` process (issue 23, item 6): a
//! keyed-sum started on one of its two workers (`max_workers = 2`) is
//! scaled out to both and back in through its control socket while it
//! runs, with checkpoints; bad requests are refused and change nothing.
//! Its file output is compared line by line with a run of the same job
//! without any handoff.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use spate::deploy::KillOnDrop;
use spate::Watchdog;

const SPATE: &str = env!("CARGO_BIN_EXE_spate");

fn config(dir: &Path, records: u64, rate: u64, max_workers: usize) -> PathBuf {
    let text = format!(
        "[query]\nname = \"keyed-sum\"\n[query.params]\nrecords = {records}\nkeys = 500\nrate = {rate}\n\
         [runtime]\nworkers = 1\nmax_workers = {max_workers}\npin = false\ndata_dir = {:?}\n\
         [sink]\nkind = \"file\"\npath = {:?}\nlatency = false\n\
         [checkpoint]\ninterval_ms = 100\n",
        dir.join("data").display().to_string(),
        dir.join("out.txt").display().to_string(),
    );
    let p = dir.join("job.toml");
    std::fs::write(&p, text).unwrap_or_else(|e| panic!("write config: {e}"));
    p
}

fn run(cfg: &Path) -> KillOnDrop {
    KillOnDrop(
        Command::new(SPATE)
            .args(["run", "--quiet"])
            .arg(cfg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start spate run: {e}")),
    )
}

fn ctl(cfg: &Path, args: &[&str]) -> Output {
    Command::new(SPATE)
        .arg("ctl")
        .args(args)
        .args(["--timeout-s", "30", "--config"])
        .arg(cfg)
        .output()
        .unwrap_or_else(|e| panic!("cannot run spate ctl: {e}"))
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// Every line of the job's output files (one per worker), counted.
fn lines(dir: &Path) -> BTreeMap<String, u32> {
    let mut m = BTreeMap::new();
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{e}")) {
        let p = entry.unwrap_or_else(|e| panic!("{e}")).path();
        // `out.txt` or a worker's `out.txt.<w>`, not the commit logs.
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let part = name.strip_prefix("out.txt").is_some_and(|r| {
            r.is_empty() || r.strip_prefix('.').is_some_and(|w| w.bytes().all(|b| b.is_ascii_digit()))
        });
        if part {
            for l in std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display())).lines() {
                *m.entry(l.to_string()).or_insert(0) += 1;
            }
        }
    }
    m
}

#[test]
fn a_running_job_scales_out_and_in_through_its_control_socket() {
    let _watchdog = Watchdog::start("spate run + spate ctl", Duration::from_secs(120));
    let records = 300_000;
    // The run without handoffs, for comparison.
    let plain = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let mut p = run(&config(plain.path(), records, 0, 1));
    let status = p.wait_for(Duration::from_secs(60)).unwrap_or_else(|| panic!("the plain run did not end"));
    assert!(status.success(), "the plain run exited with {status}");
    let want = lines(plain.path());
    assert_eq!(want.values().sum::<u32>() as u64, records);

    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let cfg = config(dir.path(), records, 100_000, 2);
    let mut job = run(&cfg);
    // Until the socket answers.
    let t = Instant::now();
    let before = loop {
        let o = ctl(&cfg, &["assignment"]);
        if o.status.success() {
            break text(&o);
        }
        assert!(t.elapsed() < Duration::from_secs(20), "no answer from the control socket: {}", text(&o));
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(before.contains("worker 0: bins 0..4096"), "{before}");
    // Bad requests change nothing.
    for bad in [
        vec!["scale", "--workers", "3"],
        vec!["move", "--bins", "0..10", "--to", "1"],
        vec!["scale-in", "--node", "a"],
    ] {
        let o = ctl(&cfg, &bad);
        assert!(!o.status.success(), "{bad:?} was taken: {}", text(&o));
        assert!(
            text(&o).contains("refused") || text(&o).contains("needs a cluster"),
            "{bad:?}: {}",
            text(&o)
        );
    }
    assert_eq!(text(&ctl(&cfg, &["assignment"])), before);
    // Out to two workers, in steps of at most 512 bins, and back.
    let out = ctl(&cfg, &["scale", "--workers", "2", "--max-bins", "512"]);
    assert!(out.status.success(), "scale-out: {}", text(&out));
    assert!(text(&out).contains("moved 2048 bins") && text(&out).contains("in 4 steps"), "{}", text(&out));
    assert!(text(&out).contains("worker 1: bins 2048..4096"), "{}", text(&out));
    let back = ctl(&cfg, &["scale", "--workers", "1"]);
    assert!(back.status.success(), "scale-in: {}", text(&back));
    assert!(text(&back).contains("worker 0: bins 0..4096"), "{}", text(&back));
    let status = job.wait_for(Duration::from_secs(60)).unwrap_or_else(|| panic!("the job did not end"));
    assert!(status.success(), "the job exited with {status}");
    let got = lines(dir.path());
    let missing = want.iter().filter(|(l, n)| got.get(*l) < Some(n)).count();
    let extra = got.iter().filter(|(l, n)| want.get(*l) < Some(n)).count();
    assert!(missing == 0 && extra == 0, "{missing} lines missing, {extra} extra or twice");
    // The socket is gone with the process.
    assert!(!dir.path().join("data").join("keyed-sum.ctl").exists());
}
