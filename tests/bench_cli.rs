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
    assert!(status.success(), "spate {args:?} failed ({status}): {err}");
    let lines: Vec<&str> = out.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "spate {args:?} printed {out:?}");
    lines[0].to_string()
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
        &["bench", "throughput", "--query", "keyed-sum", "--records", "300000", "--workers", "2", "--json"],
        Duration::from_secs(120),
    );
    assert_eq!(field(&line, "records"), 300_000.0, "{line}");
    assert_eq!(field(&line, "records_out"), 300_000.0, "{line}");
    let (rate, secs) = (field(&line, "records_per_s"), field(&line, "seconds"));
    assert!(rate > 0.0 && secs > 0.0, "{line}");
    assert!((rate * secs - 300_000.0).abs() < 300.0, "records_per_s is records / seconds: {line}");
}
