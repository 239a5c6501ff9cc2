//! `spate nexmark generate` (events as JSON lines) and `spate bench
//! nexmark` (a NEXMark query's events/s, CPU time and, at a fixed rate,
//! latency).

use std::io::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};
use spate_bench::latency::LatencyReport;
use spate_core::Runtime;

use super::bench::bench_runtime;
use super::fmt_rate;
use crate::config::{QuerySection, SinkKind, SinkSection};
use crate::nexmark::generator::NexmarkGenerator;
use crate::nexmark::queries::QUERIES;
use crate::nexmark::NexmarkParams;
use crate::registry::Registry;

#[derive(Debug, Subcommand)]
pub(super) enum Nexmark {
    /// Write generated NEXMark events as JSON lines (nexmark-flink's field
    /// names, times in epoch ms).
    Generate(GenerateArgs),
}

#[derive(Debug, Args)]
#[command(args_override_self = true)]
pub(super) struct GenerateArgs {
    /// Events in all.
    #[arg(long, value_name = "N")]
    events: u64,
    /// Generator seed.
    #[arg(long, value_name = "S", default_value_t = 0)]
    seed: u64,
    /// Events per second of event time.
    #[arg(long, value_name = "T", default_value_t = 10_000_000)]
    tps: u64,
    /// The first event number.
    #[arg(long, value_name = "N", default_value_t = 0)]
    offset: u64,
    /// Shuffle event times within groups of this many events.
    #[arg(long, value_name = "G", default_value_t = 1)]
    out_of_order_group: u64,
    /// The file to write.
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
}

pub(super) fn run(n: Nexmark) -> Result<(), String> {
    match n {
        Nexmark::Generate(a) => generate(&a),
    }
}

fn generate(a: &GenerateArgs) -> Result<(), String> {
    if a.tps == 0 || a.out_of_order_group == 0 {
        return Err("--tps and --out-of-order-group must be at least 1".into());
    }
    let p = NexmarkParams {
        seed: a.seed,
        tps: a.tps,
        out_of_order_group: a.out_of_order_group,
        ..Default::default()
    };
    let g = NexmarkGenerator::new(p.generator_config());
    let file = std::fs::File::create(&a.out).map_err(|e| format!("{}: {e}", a.out.display()))?;
    let mut w = std::io::BufWriter::with_capacity(1 << 20, file);
    let mut line = String::with_capacity(1024);
    for n in a.offset..a.offset.saturating_add(a.events) {
        line.clear();
        g.event(n).write_json(&mut line);
        line.push('\n');
        w.write_all(line.as_bytes()).map_err(|e| format!("{}: {e}", a.out.display()))?;
    }
    w.flush().map_err(|e| format!("{}: {e}", a.out.display()))
}

#[derive(Debug, Args)]
#[command(args_override_self = true)]
pub(super) struct BenchArgs {
    /// The query (`q5` or `nexmark-q5`).
    #[arg(long, value_name = "QN", required_unless_present = "all")]
    query: Option<String>,
    /// Every NEXMark query in turn; a table (or one JSON line each).
    #[arg(long)]
    all: bool,
    /// Events in all.
    #[arg(long, value_name = "N", default_value_t = 10_000_000)]
    events: u64,
    /// Events per second of event time.
    #[arg(long, value_name = "T", default_value_t = 10_000_000)]
    tps: u64,
    /// Generator seed.
    #[arg(long, value_name = "S", default_value_t = 0)]
    seed: u64,
    /// Workers of this process.
    #[arg(long, value_name = "W", default_value_t = 1)]
    workers: usize,
    /// Drive the events at this many a second and report latency
    /// percentiles (from each event's intended time).
    #[arg(long, value_name = "EVENTS_PER_S")]
    rate: Option<u64>,
    /// One JSON line a query on stdout.
    #[arg(long)]
    json: bool,
}

/// What one run measured.
struct Measured {
    query: String,
    events: u64,
    results: u64,
    seconds: f64,
    cpu_seconds: f64,
    latency: Option<LatencyReport>,
}

impl Measured {
    fn events_per_s(&self) -> f64 {
        self.events as f64 / self.seconds.max(1e-9)
    }

    fn events_per_cpu_s(&self) -> f64 {
        self.events as f64 / self.cpu_seconds.max(1e-9)
    }

    fn json(&self, a: &BenchArgs, workers: usize) -> String {
        let mut s = format!(
            "{{\"system\":\"spate\",\"query\":\"{}\",\"events\":{},\"tps\":{},\"workers\":{workers},\"results\":{},\"seconds\":{:.6},\"cpu_seconds\":{:.6},\"events_per_s\":{:.1},\"events_per_cpu_s\":{:.1}",
            self.query,
            self.events,
            a.tps,
            self.results,
            self.seconds,
            self.cpu_seconds,
            self.events_per_s(),
            self.events_per_cpu_s()
        );
        if let (None, Some(rate)) = (&self.latency, a.rate) {
            s += &format!(",\"rate\":{rate},\"latency\":\"none: every result is fired by a watermark\"");
        }
        if let (Some(l), Some(rate)) = (&self.latency, a.rate) {
            s += &format!(
                ",\"rate\":{rate},\"p50_us\":{:.1},\"p99_us\":{:.1},\"p999_us\":{:.1},\"max_us\":{:.1}",
                l.p50_us, l.p99_us, l.p999_us, l.max_us
            );
        }
        s + "}"
    }
}

/// This process's user and system CPU time so far, in seconds.
pub fn cpu_seconds() -> f64 {
    // SAFETY: `getrusage` writes the struct it is given, which is plain
    // data and zeroed first.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above; RUSAGE_SELF is a valid `who`.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) } != 0 {
        return 0.0;
    }
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(u.ru_utime) + tv(u.ru_stime)
}

fn bench_one(queries: &Registry, a: &BenchArgs, q: &str) -> Result<(Measured, usize), String> {
    let name = if q.starts_with("nexmark-") { q.to_string() } else { format!("nexmark-{q}") };
    let p = NexmarkParams {
        events: a.events,
        tps: a.tps.max(1),
        seed: a.seed,
        rate: a.rate.unwrap_or(0),
        ..Default::default()
    };
    let params = toml::Table::try_from(&p).map_err(|e| format!("parameters: {e}"))?;
    let section = QuerySection { name: name.clone(), params };
    let sink = SinkSection { kind: SinkKind::Count, path: None, latency: a.rate.is_some() };
    let build = queries.build(&section, &sink)?;
    let rc = bench_runtime(a.workers, a.rate.map(|_| 0), None)?;
    let (workers, dir) = (rc.effective_workers(), rc.data_dir.clone());
    let cpu_before = cpu_seconds();
    let job = Runtime::new(rc).start(&name, move |df| build(df)).map_err(|e| e.to_string())?;
    let metrics = job.metrics().clone();
    while !job.is_finished() {
        std::thread::sleep(Duration::from_millis(20));
    }
    let report = job.wait().map_err(|e| e.to_string());
    let cpu = cpu_seconds() - cpu_before;
    let _ = std::fs::remove_dir_all(&dir);
    let report = report?;
    let seconds = report.elapsed.as_secs_f64();
    // Results that carry no ingest time (a window's, fired by a
    // watermark) are not in the histogram: a query made only of those
    // has no latency to report.
    let latency = a.rate.and_then(|_| {
        let hist = metrics.latency();
        (!hist.is_empty()).then(|| LatencyReport::from_histogram(&hist, report.records_out, seconds))
    });
    let query = name.trim_start_matches("nexmark-").to_string();
    Ok((
        Measured { query, events: a.events, results: report.records_out, seconds, cpu_seconds: cpu, latency },
        workers,
    ))
}

pub(super) fn bench(queries: &Registry, a: BenchArgs) -> Result<(), String> {
    let list: Vec<String> = match (&a.query, a.all) {
        (_, true) => QUERIES.iter().map(|q| q.to_string()).collect(),
        (Some(q), false) => vec![q.clone()],
        (None, false) => return Err("--query or --all".into()),
    };
    if a.events == 0 {
        return Err("--events must be at least 1".into());
    }
    let mut rows = Vec::new();
    for q in &list {
        let (m, workers) = bench_one(queries, &a, q)?;
        if a.json {
            println!("{}", m.json(&a, workers));
        } else if !a.all {
            println!(
                "nexmark {}: {} events in {:.3} s on {workers} workers: {} ({} a CPU second), {} results",
                m.query,
                m.events,
                m.seconds,
                fmt_rate(m.events_per_s()),
                fmt_rate(m.events_per_cpu_s()),
                m.results
            );
            if let Some(l) = &m.latency {
                println!("latency: {l}");
            }
        }
        rows.push(m);
    }
    if a.all && !a.json {
        println!(
            "{:<6} {:>12} {:>16} {:>16} {:>12}",
            "query", "events", "events/s", "events/cpu-s", "results"
        );
        for m in &rows {
            println!(
                "{:<6} {:>12} {:>16.0} {:>16.0} {:>12}",
                m.query,
                m.events,
                m.events_per_s(),
                m.events_per_cpu_s(),
                m.results
            );
        }
    }
    Ok(())
}
