//! The benchmark commands through the real `spate` binary: `bench latency`
//! and `bench throughput` print the one JSON object issue 2 names, with
//! figures that agree with the run they describe. Every process a test
//! starts is gone at its end.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::Duration;

use spate::deploy::KillOnDrop;
use spate_bench::compare::extract_json_number;

const SPATE: &str = env!("CARGO_BIN_EXE_spate");

/// Runs `spate ARGS` (at most `limit`) and returns the one line it printed
/// to stdout.
fn json_line(args: &[&str], limit: Duration) -> String {
    let (ok, out, err) = run(args, limit);
    assert!(ok, "spate {args:?} failed: {err}");
    let lines: Vec<&str> = out.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "spate {args:?} printed {out:?}");
    lines[0].to_string()
}

/// Runs `spate ARGS` (at most `limit`): whether it succeeded, its stdout
/// and its stderr.
fn run(args: &[&str], limit: Duration) -> (bool, String, String) {
    let mut child = KillOnDrop(
        Command::new(SPATE)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start spate {args:?}: {e}")),
    );
    let status =
        child.wait_for(limit).unwrap_or_else(|| panic!("spate {args:?} still running after {limit:?}"));
    let (mut out, mut err) = (String::new(), String::new());
    if let Some(mut o) = child.0.stdout.take() {
        let _ = o.read_to_string(&mut out);
    }
    if let Some(mut e) = child.0.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    (status.success(), out, err)
}

fn field(line: &str, name: &str) -> f64 {
    extract_json_number(line, name).unwrap_or_else(|| panic!("no number `{name}` in {line}"))
}

#[test]
fn bench_latency_reports_the_run_it_drove() {
    let line = json_line(
        &[
            "bench",
            "latency",
            "--query",
            "keyed-sum",
            "--rate",
            "200000",
            "--seconds",
            "1",
            "--workers",
            "2",
            "--json",
        ],
        Duration::from_secs(120),
    );
    assert!(line.starts_with('{') && line.ends_with('}'), "{line}");
    // Every record of rate × seconds went through the sink.
    assert_eq!(field(&line, "count"), 200_000.0, "{line}");
    let (p50, p99, p999, max) =
        (field(&line, "p50_us"), field(&line, "p99_us"), field(&line, "p999_us"), field(&line, "max_us"));
    assert!(0.0 < p50 && p50 <= p99 && p99 <= p999 && p999 <= max, "{line}");
    // Open loop at 200 000 records/s for about a second: the achieved rate
    // is the offered one, give or take start-up and a slow CI machine.
    let rate = field(&line, "records_per_s");
    assert!((50_000.0..=250_000.0).contains(&rate), "{line}");
    assert!(field(&line, "seconds") >= 0.99, "{line}");
    // The steal time is a count of milliseconds where `/proc/stat` has it.
    if std::path::Path::new("/proc/stat").exists() {
        assert!(field(&line, "steal_ms") >= 0.0, "{line}");
    } else {
        assert!(line.contains("\"steal_ms\":null"), "{line}");
    }
}

#[test]
fn bench_throughput_counts_every_record() {
    let line = json_line(
        &[
            "bench",
            "throughput",
            "--query",
            "keyed-sum",
            "--records",
            "300000",
            "--workers",
            "2",
            "--keys",
            "5000",
            "--json",
        ],
        Duration::from_secs(120),
    );
    assert_eq!(field(&line, "records"), 300_000.0, "{line}");
    assert_eq!(field(&line, "keys"), 5_000.0, "{line}");
    assert_eq!(field(&line, "records_out"), 300_000.0, "{line}");
    let (rate, secs) = (field(&line, "records_per_s"), field(&line, "seconds"));
    assert!(rate > 0.0 && secs > 0.0, "{line}");
    assert!((rate * secs - 300_000.0).abs() < 300.0, "records_per_s is records / seconds: {line}");
}

/// The timely peer beside this `spate` binary: `cargo test --workspace`
/// builds it (the `spate-bench` package's tests run it).
fn peer() -> std::path::PathBuf {
    let p = std::path::Path::new(SPATE).with_file_name("peer-timely");
    assert!(
        p.exists(),
        "no peer at {} (build it: cargo build -p spate-bench --bin peer-timely)",
        p.display()
    );
    p
}

#[test]
fn bench_compare_runs_both_sides_alternately_on_the_same_keys() {
    let peer = peer();
    let peer = peer.to_string_lossy();
    let args = [
        "bench",
        "compare",
        "--records",
        "200000",
        "--workers",
        "1",
        "--runs",
        "2",
        "--keys",
        "1000",
        "--peer",
        &peer,
    ];
    let (ok, out, err) = run(&args, Duration::from_secs(300));
    assert!(ok, "spate {args:?} failed: {err}");
    let line =
        out.lines().rev().find(|l| l.starts_with('{')).unwrap_or_else(|| panic!("no JSON line in {out:?}"));
    assert_eq!(field(line, "records"), 200_000.0, "{line}");
    assert_eq!(field(line, "keys"), 1_000.0, "{line}");
    assert_eq!(field(line, "runs"), 2.0, "{line}");
    let (spate, timely, ratio) =
        (field(line, "spate_median"), field(line, "timely_median"), field(line, "median_ratio"));
    assert!(spate > 0.0 && timely > 0.0, "{line}");
    // The median of the pair ratios spate/timely (not timely/spate): near
    // the ratio of the medians, within what two noisy runs a side allow.
    let of_medians = spate / timely;
    assert!(ratio > of_medians / 4.0 && ratio < of_medians * 4.0, "{line}");
    assert!(out.contains("spate") && out.contains("timely"), "the report names both sides: {out}");
}

#[test]
fn bench_compare_refuses_what_it_cannot_compare() {
    for (args, want) in [
        (&["bench", "compare", "--query", "wordcount"][..], "keyed-sum"),
        (&["bench", "compare", "--keys", "0"][..], "--keys"),
        (&["bench", "compare", "--runs", "two"][..], "--runs"),
    ] {
        let (ok, _, err) = run(args, Duration::from_secs(60));
        assert!(!ok, "spate {args:?} succeeded");
        assert!(err.contains(want), "spate {args:?}: {err}");
    }
    // Every bench that takes keyed-sum's `--keys` refuses 0 the same way.
    for args in [
        &["bench", "throughput", "--query", "keyed-sum", "--records", "1000", "--keys", "0", "--json"][..],
        &["bench", "latency", "--rate", "1000", "--seconds", "1", "--keys", "0"][..],
        &["bench", "ft-cost", "--records", "1000", "--keys", "0"][..],
    ] {
        let (ok, _, err) = run(args, Duration::from_secs(60));
        assert!(!ok && err.contains("--keys must be at least 1"), "spate {args:?}: {err}");
    }
}

/// `bench rescale` scales a running job out to a second worker and back
/// by live handoff, and reports the three phases and the moves.
#[test]
fn bench_rescale_reports_both_moves_and_three_phases() {
    let line = json_line(
        &[
            "bench",
            "rescale",
            "--keys",
            "2000",
            "--work-ns",
            "200",
            "--phase-s",
            "1",
            "--max-bins",
            "512",
            "--json",
        ],
        Duration::from_secs(60),
    );
    let n = |k: &str| extract_json_number(&line, k).unwrap_or_else(|| panic!("no {k} in {line}"));
    for k in ["throughput_before", "throughput_after", "throughput_back", "moved_bytes"] {
        assert!(n(k) > 0.0, "{k} is 0 in {line}");
    }
    // 2048 bins in steps of at most 512.
    assert_eq!(n("steps"), 4.0, "{line}");
    assert!(n("handoff_ms") >= 0.0 && n("scale_in_ms") >= 0.0, "{line}");
}

/// `bench rescale --rate` measures an open-loop load: latency before and
/// during the moves (all keys and those that stay), memory, and the run
/// in windows as CSV; `--max-bytes` bounds the steps by bytes.
#[test]
fn bench_rescale_with_a_rate_reports_latency_memory_and_windows() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let csv = dir.path().join("rescale.csv");
    let csv_arg = csv.display().to_string();
    let line = json_line(
        &[
            "bench",
            "rescale",
            "--keys",
            "20000",
            "--work-ns",
            "0",
            "--rate",
            "100000",
            "--phase-s",
            "1",
            "--max-bins",
            "4096",
            "--max-bytes",
            "65536",
            "--pace",
            "0.5",
            "--csv",
            &csv_arg,
            "--json",
        ],
        Duration::from_secs(150),
    );
    let n = |k: &str| extract_json_number(&line, k).unwrap_or_else(|| panic!("no {k} in {line}"));
    for k in ["steady_p99_us", "during_p99_us", "during_max_us", "unmoved_during_p99_us", "peak_rss_mb"] {
        assert!(n(k) > 0.0, "{k} is 0 in {line}");
    }
    assert!(n("during_max_us") >= n("during_p99_us"), "{line}");
    assert!(line.contains("\"latency_basis\":\"records\""), "{line}");
    // Bounded by bytes, not by the 4096 bins: a probe, then several steps.
    assert!(n("steps") > 2.0, "{line}");
    assert!(n("largest_step_bytes") < n("moved_bytes"), "{line}");
    let text = std::fs::read_to_string(&csv).unwrap_or_else(|e| panic!("{}: {e}", csv.display()));
    let mut rows = text.lines();
    assert_eq!(rows.next(), Some("t_s,phase,out_per_s,p99_us,max_us,unmoved_p99_us,rss_mb"));
    let phases: std::collections::BTreeSet<&str> = rows.filter_map(|r| r.split(',').nth(1)).collect();
    for p in ["before", "after", "back"] {
        assert!(phases.contains(p), "no window of phase {p}: {phases:?}");
    }
}

/// `bench rescale --nodes 2` does the same across two node processes,
/// driven by `spate ctl`'s requests to their coordinator: the second node
/// waits in the pool and joins the running job at the scale-out.
#[test]
fn bench_rescale_across_two_node_processes_reports_the_moves() {
    let line = json_line(
        &[
            "bench",
            "rescale",
            "--nodes",
            "2",
            "--keys",
            "2000",
            "--work-ns",
            "200",
            "--phase-s",
            "1",
            "--max-bins",
            "1024",
            "--json",
        ],
        Duration::from_secs(120),
    );
    let n = |k: &str| extract_json_number(&line, k).unwrap_or_else(|| panic!("no {k} in {line}"));
    for k in ["throughput_before", "throughput_after", "throughput_back", "moved_bytes"] {
        assert!(n(k) > 0.0, "{k} is 0 in {line}");
    }
    assert_eq!(n("steps"), 2.0, "{line}");
    // The join came first, and is part of the handoff's time.
    assert!(n("join_ms") > 0.0 && n("join_ms") < n("handoff_ms"), "{line}");
}

/// `bench elastic` runs a rate schedule with the rate policy in the loop:
/// a step past one worker's capacity is met by one decision to scale out,
/// every output checks against its key's closed form, and the JSON says
/// so.
#[test]
fn bench_elastic_scales_out_on_a_rate_step_and_loses_nothing() {
    let line = json_line(
        &[
            "bench",
            "elastic",
            "--schedule",
            "[[0, 5000], [1, 60000]]",
            "--seconds",
            "3",
            "--work-ns",
            "20000",
            "--keys",
            "1000",
            "--interval-ms",
            "250",
            "--cooldown-ms",
            "500",
            "--json",
        ],
        Duration::from_secs(120),
    );
    let n = |k: &str| extract_json_number(&line, k).unwrap_or_else(|| panic!("no {k} in {line}"));
    assert!(line.starts_with("{\"policy\":\"rate\""), "{line}");
    for k in ["lost_records", "duplicated_records", "wrong_sums"] {
        assert_eq!(n(k), 0.0, "{k} in {line}");
    }
    assert_eq!(n("records_in"), n("records_out"), "{line}");
    // 5 000 for 1 s and 60 000/s for 2 s.
    assert_eq!(n("records_in"), 125_000.0, "{line}");
    // One worker spins 20 µs a record: about 50 000/s at most, so the
    // step asks for the second worker, in one decision.
    assert!(line.contains("\"from_workers\":1,\"to_workers\":2"), "{line}");
    assert!(line.contains("\"steps_to_converge\":[1]"), "{line}");
    for k in ["\"time_to_relief_ms\":[", "\"p99_over_time\":[[", "\"reason\":\"input "] {
        assert!(line.contains(k), "no {k} in {line}");
    }
}

#[test]
fn nexmark_generate_writes_the_mix_and_bench_nexmark_reports_a_run() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let file = dir.path().join("events.json");
    let path = file.to_string_lossy().to_string();
    let (ok, _, err) = run(
        &["nexmark", "generate", "--events", "5000", "--seed", "7", "--out", &path],
        Duration::from_secs(60),
    );
    assert!(ok, "spate nexmark generate failed: {err}");
    let text = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{path}: {e}"));
    let mut kinds = [0u64; 3];
    let mut q2 = 0;
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        let kind = v["event_type"].as_u64().unwrap_or_else(|| panic!("no event_type: {line}"));
        let key = ["person", "auction", "bid"][kind as usize];
        assert!(v[key].is_object(), "event_type {kind} without {key}: {line}");
        kinds[kind as usize] += 1;
        // q2 keeps the bids of auctions whose id is a multiple of 123.
        q2 += usize::from(v["bid"]["auction"].as_u64().is_some_and(|a| a.is_multiple_of(123)));
    }
    // 1 : 3 : 46 of every 50 event numbers.
    assert_eq!(kinds, [100, 300, 4600], "persons, auctions, bids");

    let line = json_line(
        &["bench", "nexmark", "--query", "q2", "--events", "5000", "--seed", "7", "--json"],
        Duration::from_secs(120),
    );
    let n = |k: &str| extract_json_number(&line, k).unwrap_or_else(|| panic!("no {k} in {line}"));
    assert!(line.contains("\"system\":\"spate\""), "{line}");
    assert_eq!(n("events"), 5000.0, "{line}");
    // The same seed's events, counted from the file.
    assert!(q2 > 0, "no bid for q2 in the file");
    assert_eq!(n("results"), q2 as f64, "{line}");
    assert!(n("events_per_s") > 0.0 && n("events_per_cpu_s") > 0.0, "{line}");

    let line = json_line(
        &["bench", "nexmark", "--query", "q1", "--events", "20000", "--rate", "20000", "--json"],
        Duration::from_secs(120),
    );
    assert!(line.contains("\"p99_us\":"), "no latency percentiles with --rate: {line}");
}
