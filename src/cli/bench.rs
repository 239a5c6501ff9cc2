//! `spate bench`: throughput, latency, the timely comparison, state,
//! rescaling, recovery and the cost of fault tolerance.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};
use spate_bench::compare::{run_alternating, CommandSpec};
use spate_bench::latency::LatencyReport;
use spate_core::{Runtime, RuntimeConfig};

use super::{fmt_rate, print_cluster_totals, this_exe};
use crate::config::{QuerySection, SinkKind, SinkSection};
use crate::deploy;
use crate::registry::Registry;

#[derive(Debug, Subcommand)]
pub(super) enum Bench {
    /// Run a query as fast as possible; print records/s.
    Throughput(ThroughputArgs),
    /// Drive a query open-loop at a fixed rate; print latency percentiles
    /// from each record's intended send time.
    Latency(LatencyArgs),
    /// Run spate and the timely-dataflow peer on keyed-sum alternately;
    /// print medians and the median ratio spate/timely.
    Compare(CompareArgs),
    /// Fill a state store, checkpoint it (full, then increments) into a
    /// backup store while a thread keeps updating it; print checkpoint size
    /// and time, the longest update stall, and restore speed.
    State(StateArgs),
    /// In one process: a keyed sum on 1 worker of 2, scaled out to 2 by
    /// live handoff, then back; print the three throughputs and the moves.
    Rescale(RescaleArgs),
    /// A scaling policy in the loop: a rate schedule, each decision,
    /// convergence, relief, exactly-once accounting.
    Elastic(ElasticArgs),
    /// One node process of `bench rescale --nodes` (started by it).
    #[command(hide = true)]
    RescaleNode(RescaleNodeArgs),
    /// keyed-sum on 3 local nodes plus a spare under a steady load: SIGKILL
    /// one node, recover it, print detect/restore/replay/total ms and the
    /// lost and duplicated outputs.
    Recovery(RecoveryArgs),
    /// keyed-sum on local nodes with checkpoints backed up on another node,
    /// against none, alternately; print the median ratio.
    FtCost(FtCostArgs),
    /// A NEXMark query (or `--all`) over generated events: events/s,
    /// events per CPU second and, with `--rate`, latency percentiles.
    Nexmark(super::nexmark::BenchArgs),
}

/// keyed-sum's `--keys K`: at least 1, and at most what a TOML integer
/// holds (checked after parsing, so that the message names the limit).
#[derive(Debug, Args)]
struct Keys {
    /// Distinct keys, for a query with a `keys` parameter (keyed-sum;
    /// default 100000).
    #[arg(long, value_name = "K")]
    keys: Option<u64>,
}

impl Keys {
    fn get(&self) -> Result<u64, String> {
        match self.keys.unwrap_or(100_000) {
            k @ 1..=0x7fff_ffff_ffff_ffff => Ok(k),
            k => Err(format!("--keys must be at least 1 and at most {}; got {k}", i64::MAX)),
        }
    }
}

#[derive(Debug, Args)]
#[command(args_override_self = true)]
pub(super) struct ThroughputArgs {
    /// The query.
    #[arg(long, value_name = "NAME", default_value = "keyed-sum")]
    query: String,
    /// Input records in all.
    #[arg(long, value_name = "N")]
    records: u64,
    /// Workers of this process.
    #[arg(long, value_name = "W", default_value_t = 1)]
    workers: usize,
    #[command(flatten)]
    keys: Keys,
    /// Checkpoint every C ms (0: none).
    #[arg(long, value_name = "C")]
    checkpoint_ms: Option<u64>,
    /// Linger of a partly filled batch, µs.
    #[arg(long, value_name = "U")]
    linger_us: Option<u64>,
    /// Run on K local node processes of one worker each instead.
    #[arg(long, value_name = "K")]
    nodes: Option<usize>,
    /// One JSON line on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
#[command(args_override_self = true)]
pub(super) struct LatencyArgs {
    /// The query.
    #[arg(long, value_name = "NAME", default_value = "keyed-sum")]
    query: String,
    /// Records per second.
    #[arg(long, value_name = "RECORDS_PER_S")]
    rate: u64,
    /// How long to drive it.
    #[arg(long, value_name = "S", default_value_t = 10.0)]
    seconds: f64,
    /// Workers of this process.
    #[arg(long, value_name = "W", default_value_t = 1)]
    workers: usize,
    /// Run on K local node processes of one worker each instead.
    #[arg(long, value_name = "K")]
    nodes: Option<usize>,
    /// Linger of a partly filled batch, µs (default 0).
    #[arg(long, value_name = "U")]
    linger_us: Option<u64>,
    #[command(flatten)]
    keys: Keys,
    /// Write latency over time (100 ms buckets) as CSV.
    #[arg(long, value_name = "FILE")]
    csv: Option<PathBuf>,
    /// One JSON line on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
#[command(args_override_self = true)]
pub(super) struct CompareArgs {
    /// Input records of each run.
    #[arg(long, value_name = "N", default_value_t = 20_000_000)]
    records: u64,
    /// Workers of each side.
    #[arg(long, value_name = "W", default_value_t = 1)]
    workers: usize,
    /// Runs of each side.
    #[arg(long, value_name = "R", default_value_t = 5)]
    runs: usize,
    #[command(flatten)]
    keys: Keys,
    /// The timely peer (default: `peer-timely` beside this executable).
    #[arg(long, value_name = "PATH")]
    peer: Option<PathBuf>,
    /// Must be keyed-sum, the query the timely peer implements.
    #[arg(long, value_name = "NAME")]
    query: Option<String>,
}

#[derive(Debug, Args)]
#[command(args_override_self = true)]
pub(super) struct StateArgs {
    /// MiB of state.
    #[arg(long, value_name = "M", default_value_t = 256)]
    state_mb: u64,
    /// Percent of pages dirty between incremental checkpoints.
    #[arg(long, value_name = "P", default_value_t = 1.0)]
    dirty_percent: f64,
    /// Incremental checkpoints.
    #[arg(long, value_name = "R", default_value_t = 5)]
    runs: usize,
    /// `B`: 2^B bins.
    #[arg(long, value_name = "B", default_value_t = 12)]
    bins_log2: u8,
    /// Where the backup store goes (default: the temporary directory).
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// What backs the live state.
    #[arg(long, value_name = "memory|file")]
    backing: Option<String>,
    /// One JSON line on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
#[command(args_override_self = true)]
pub(super) struct RescaleArgs {
    /// Distinct keys.
    #[arg(long, value_name = "K", default_value_t = 100_000)]
    keys: u64,
    /// About how long the fold spends on a record, ns.
    #[arg(long, value_name = "N", default_value_t = 1000)]
    work_ns: u64,
    /// Seconds of each phase.
    #[arg(long, value_name = "S", default_value_t = 3)]
    phase_s: u64,
    /// Most bins a handoff step moves.
    #[arg(long, value_name = "B", default_value_t = 256)]
    max_bins: u32,
    /// Most bytes of state a handoff step moves, about (default: no bound).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    max_bytes: Option<u64>,
    /// After each step, wait F times as long as it took.
    #[arg(long, value_name = "F", default_value_t = 0.0)]
    pace: f64,
    /// The two workers in two node processes of a local cluster (`2`),
    /// rescaled by `spate ctl`'s requests.
    #[arg(long, value_name = "2", value_parser = clap::value_parser!(u64).range(2..=2))]
    nodes: Option<u64>,
    /// Keys for about M MiB of state (instead of `--keys`).
    #[arg(long, value_name = "M")]
    state_mb: Option<u64>,
    /// Records a second, open loop (default: as fast as the workers take
    /// them); adds the latency before and during the moves, and memory.
    #[arg(long, value_name = "R", value_parser = clap::value_parser!(u64).range(1..))]
    rate: Option<u64>,
    /// With `--rate`: the run in windows (50 ms; with `--nodes`, the
    /// nodes' 100 ms metrics lines), as CSV.
    #[arg(long, value_name = "FILE", requires = "rate")]
    csv: Option<PathBuf>,
    /// One JSON line on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
#[command(args_override_self = true)]
pub(super) struct ElasticArgs {
    /// The rate schedule: `[[second, records/s], ...]`.
    #[arg(long, value_name = "POINTS", default_value = "[[0, 300000], [10, 1000000], [30, 300000]]")]
    schedule: String,
    /// The rate goes in a straight line between the points.
    #[arg(long)]
    ramp: bool,
    /// Seconds to run (default: 20 past the last point).
    #[arg(long, value_name = "S")]
    seconds: Option<u64>,
    /// `rate` (DS2) or `threshold` (SEEP).
    #[arg(long, value_name = "P", default_value = "rate")]
    policy: String,
    /// About how long the fold spends on a record, ns.
    #[arg(long, value_name = "N", default_value_t = 1000)]
    work_ns: u64,
    /// Distinct keys.
    #[arg(long, value_name = "K", default_value_t = 100_000)]
    keys: u64,
    /// Workers the process starts (1 in use at first).
    #[arg(long, value_name = "W", default_value_t = 2)]
    max_workers: usize,
    /// Load reports (and policy rounds) this often, ms.
    #[arg(long, value_name = "MS", default_value_t = 1000)]
    interval_ms: u64,
    /// No action for this long after one, ms.
    #[arg(long, value_name = "MS", default_value_t = 3000)]
    cooldown_ms: u64,
    /// No scale-in for this long after any action, ms.
    #[arg(long, value_name = "MS", default_value_t = 10_000)]
    scale_in_hold_ms: u64,
    /// The p99 that `time_to_relief_ms` waits for, µs.
    #[arg(long, value_name = "US", default_value_t = 50_000)]
    target_p99_us: u64,
    /// One JSON line on stdout.
    #[arg(long)]
    json: bool,
    /// Latency and workers over time, decisions marked.
    #[arg(long, value_name = "FILE")]
    csv: Option<PathBuf>,
}

/// `spate bench rescale-node`: one node process of `bench rescale
/// --nodes` (it starts them).
#[derive(Debug, Args)]
#[command(args_override_self = true)]
pub(super) struct RescaleNodeArgs {
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
    #[arg(long, value_name = "NAME")]
    name: String,
    #[arg(long, value_name = "K", default_value_t = 100_000)]
    keys: u64,
    #[arg(long, value_name = "N", default_value_t = 0)]
    work_ns: u64,
    #[arg(long, value_name = "R")]
    rate: Option<u64>,
}

#[derive(Debug, Args)]
#[command(args_override_self = true)]
pub(super) struct RecoveryArgs {
    /// About M MiB of keyed state.
    #[arg(long, value_name = "M", default_value_t = 256)]
    state_mb: u64,
    /// Checkpoint every C ms.
    #[arg(long, value_name = "C", default_value_t = 1000)]
    checkpoint_ms: u64,
    /// A node silent this long is declared failed, ms.
    #[arg(long, value_name = "F", default_value_t = 500)]
    failure_timeout_ms: u64,
    /// Records per second.
    #[arg(long, value_name = "R", default_value_t = 300_000)]
    rate: u64,
    /// Seconds of steady load before the failure.
    #[arg(long, value_name = "S", default_value_t = 5)]
    steady_s: u64,
    /// Seconds of load after it.
    #[arg(long, value_name = "A", default_value_t = 8)]
    after_s: u64,
    /// Write latency over time, the failure marked, as CSV.
    #[arg(long, value_name = "FILE")]
    csv: Option<PathBuf>,
    /// SIGSTOP the node instead (found by the failure timeout).
    #[arg(long)]
    silent: bool,
    /// Roll every node back instead of recovering live.
    #[arg(long)]
    rollback: bool,
    /// No spare: a survivor takes the failed node's workers over.
    #[arg(long)]
    no_spare: bool,
    /// One JSON line on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
#[command(args_override_self = true)]
pub(super) struct FtCostArgs {
    /// Input records of each run.
    #[arg(long, value_name = "N")]
    records: u64,
    /// Local nodes (at least 2: a backup node).
    #[arg(long, value_name = "K", default_value_t = 3)]
    nodes: usize,
    #[command(flatten)]
    keys: Keys,
    /// Checkpoint every C ms.
    #[arg(long, value_name = "C", default_value_t = 1000)]
    checkpoint_ms: u64,
    /// Runs of each side.
    #[arg(long, value_name = "R", default_value_t = 3)]
    runs: usize,
    /// MiB of replay buffers per worker, for live recovery.
    #[arg(long, value_name = "M")]
    buffer_mb: Option<u64>,
    /// Roll every node back on a failure (no replay buffers).
    #[arg(long)]
    rollback: bool,
    /// One JSON line on stdout.
    #[arg(long)]
    json: bool,
}

pub(super) fn run(queries: &Registry, b: Bench) -> Result<(), String> {
    match b {
        Bench::Throughput(a) => throughput(queries, a),
        Bench::Latency(a) => latency(queries, a),
        Bench::Compare(a) => compare(a),
        Bench::State(a) => state(a),
        Bench::Rescale(a) => rescale(a),
        Bench::Elastic(a) => elastic(a),
        Bench::RescaleNode(a) => {
            let cfg = crate::config::Config::load(&a.config).map_err(|e| e.to_string())?;
            crate::bench_rescale::run_work_node(&cfg, &a.name, a.keys, a.work_ns, a.rate)
        }
        Bench::Recovery(a) => recovery(a),
        Bench::FtCost(a) => ft_cost(queries, a),
        Bench::Nexmark(a) => super::nexmark::bench(queries, a),
    }
}

/// The parameters of query `name` for a bench of `records` at `rate`:
/// its `keys` parameter, where it has one, from `--keys`, and its input
/// size set by the query ([`crate::registry::Params::set_load`]). Also
/// returns the keys set, if any.
fn bench_query(
    queries: &Registry,
    name: &str,
    keys: &Keys,
    records: u64,
    rate: Option<u64>,
) -> Result<(QuerySection, Option<u64>), String> {
    let mut params = toml::Table::new();
    let has_keys = queries.params(name)?.iter().any(|p| p.name == "keys");
    let keys = match (has_keys, keys.keys) {
        (true, _) => Some(keys.get()?),
        (false, Some(_)) => return Err(format!("--keys: query `{name}` has no `keys` parameter")),
        (false, None) => None,
    };
    if let Some(k) = keys {
        params.insert("keys".into(), toml::Value::Integer(k as i64));
    }
    let q = QuerySection { name: name.to_string(), params };
    let params = queries.with_load(&q, records, rate)?;
    Ok((QuerySection { name: name.to_string(), params }, keys))
}

pub(super) fn bench_runtime(
    workers: usize,
    linger_us: Option<u64>,
    checkpoint_ms: Option<u64>,
) -> Result<RuntimeConfig, String> {
    let mut rc = RuntimeConfig { workers, ..Default::default() };
    if let Some(l) = linger_us {
        rc.linger_us = l;
    }
    if let Some(c) = checkpoint_ms {
        rc.checkpoint_interval_ms = c;
    }
    rc.data_dir = std::env::temp_dir().join(format!("spate-bench-{}", std::process::id()));
    rc.validate().map_err(|e| e.to_string())?;
    Ok(rc)
}

fn throughput(queries: &Registry, a: ThroughputArgs) -> Result<(), String> {
    let name = a.query.as_str();
    let (q, keys) = bench_query(queries, name, &a.keys, a.records, None)?;
    if let Some(nodes) = a.nodes {
        let checkpoint_ms = a.checkpoint_ms.unwrap_or(0);
        return throughput_on_nodes(queries, &q, a.records, nodes, checkpoint_ms, "", a.json).map(|_| ());
    }
    let keys_json = keys.map_or(String::new(), |k| format!(",\"keys\":{k}"));
    let sink = SinkSection { kind: SinkKind::Count, path: None, latency: false };
    let build = queries.build(&q, &sink)?;
    let rc = bench_runtime(a.workers, a.linger_us, a.checkpoint_ms)?;
    let (workers, dir) = (rc.effective_workers(), rc.data_dir.clone());
    let job = Runtime::new(rc).start(name, move |df| build(df)).map_err(|e| e.to_string())?;
    let report = job.wait().map_err(|e| e.to_string());
    let _ = std::fs::remove_dir_all(&dir);
    let report = report?;
    let secs = report.elapsed.as_secs_f64();
    let rps = report.records_in as f64 / secs.max(1e-9);
    if a.json {
        println!(
            "{{\"system\":\"spate\",\"query\":\"{name}\",\"records\":{},\"records_out\":{},\"workers\":{workers}{keys_json},\"seconds\":{secs:.6},\"records_per_s\":{rps:.1},\"checkpoints\":{}}}",
            report.records_in, report.records_out, report.checkpoints
        );
    } else {
        println!(
            "{name}: {} records in {secs:.3} s on {workers} workers: {}",
            report.records_in,
            fmt_rate(rps)
        );
    }
    Ok(())
}

/// `bench throughput --nodes K`: the query on K local node processes of
/// one worker each, every record crossing a TCP connection (or staying on
/// its node, for the keys that node owns).
fn throughput_on_nodes(
    queries: &Registry,
    q: &QuerySection,
    records: u64,
    nodes: usize,
    checkpoint_ms: u64,
    recovery: &str,
    json: bool,
) -> Result<f64, String> {
    let checkpoints = if checkpoint_ms > 0 {
        format!("[checkpoint]\ninterval_ms = {checkpoint_ms}\nbackups = 1\n{recovery}")
    } else {
        String::new()
    };
    let (_dir, path) =
        local_nodes_config(q, "", &format!("kind = \"count\"\nlatency = false\n{checkpoints}"), nodes)?;
    let reports = deploy::run_local_cluster(&this_exe()?, &path, queries, true)?;
    let rps = print_cluster_totals(&reports, false);
    if json {
        println!(
            "{{\"system\":\"spate\",\"query\":\"{}\",\"records\":{records},\"nodes\":{nodes},\"checkpoint_ms\":{checkpoint_ms},\"records_per_s\":{rps:.1}}}",
            q.name
        );
    }
    Ok(rps)
}

/// A config of query `q` on `nodes` local nodes of one worker each (free
/// ports), written into a new temporary directory (returned with the
/// config's path).
fn local_nodes_config(
    q: &QuerySection,
    runtime: &str,
    sink: &str,
    nodes: usize,
) -> Result<(tempfile::TempDir, PathBuf), String> {
    if nodes == 0 {
        return Err("--nodes: a cluster needs at least 1 node".into());
    }
    let tmp = tempfile::tempdir().map_err(|e| format!("cannot create a temporary directory: {e}"))?;
    let dir = tmp.path();
    let mut query = toml::Table::new();
    query.insert("name".into(), toml::Value::String(q.name.clone()));
    query.insert("params".into(), toml::Value::Table(q.params.clone()));
    let mut doc = toml::Table::new();
    doc.insert("query".into(), toml::Value::Table(query));
    let query = toml::to_string(&doc)
        .map_err(|e| format!("query `{}`: its parameters do not write as TOML: {e}", q.name))?;
    let mut text = format!(
        "{query}\n[runtime]\ndata_dir = {:?}\n{runtime}[sink]\n{sink}[cluster]\n",
        dir.join("data").display().to_string()
    );
    for n in 0..nodes {
        text += &format!("[[cluster.nodes]]\nname = \"n{n}\"\naddress = \"127.0.0.1:0\"\nworkers = 1\n");
    }
    let path = dir.join("bench.toml");
    std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok((tmp, path))
}

fn latency(queries: &Registry, a: LatencyArgs) -> Result<(), String> {
    let name = a.query.as_str();
    if a.rate == 0 || a.seconds.is_nan() || a.seconds <= 0.0 {
        return Err("--rate and --seconds must be positive".into());
    }
    let records = (a.rate as f64 * a.seconds) as u64;
    let (q, _) = bench_query(queries, name, &a.keys, records, Some(a.rate))?;
    if let Some(nodes) = a.nodes {
        return latency_on_nodes(queries, &q, a.rate, a.linger_us.unwrap_or(0), nodes, a.json);
    }
    let sink = SinkSection { kind: SinkKind::Count, path: None, latency: true };
    let build = queries.build(&q, &sink)?;
    let rc = bench_runtime(a.workers, Some(a.linger_us.unwrap_or(0)), None)?;
    let dir = rc.data_dir.clone();
    let steal_before = spate_bench::latency::steal_ms();
    let job = Runtime::new(rc).start(name, move |df| build(df)).map_err(|e| e.to_string())?;
    let metrics = job.metrics().clone();
    let started = job.started();
    let start_ns = crate::now_ns();
    let mut over_time = spate_bench::latency::LatencyOverTime::new(start_ns, 100_000_000);
    while !job.is_finished() {
        std::thread::sleep(Duration::from_millis(100));
        // Only for `--csv`: this thread shares the cores with the workers,
        // and every moment it runs delays a worker's records.
        if a.csv.is_some() {
            let h = metrics.take_interval_latency();
            let now = crate::now_ns();
            for v in h.iter_recorded() {
                for _ in 0..v.count_at_value().min(64) {
                    over_time.record(now, v.value_iterated_to());
                }
            }
        }
    }
    let latency = metrics.latency();
    let report = job.wait().map_err(|e| e.to_string());
    let steal = spate_bench::latency::steal_ms_since(steal_before);
    let _ = std::fs::remove_dir_all(&dir);
    let report = report?;
    let secs = started.elapsed().as_secs_f64();
    let mut r = LatencyReport::from_histogram(&latency, report.records_out, secs);
    r.steal_ms = steal;
    if let Some(csv) = &a.csv {
        std::fs::write(csv, over_time.to_csv()).map_err(|e| format!("{}: {e}", csv.display()))?;
    }
    if a.json {
        println!("{}", r.to_json());
    } else {
        println!("{name} at {} for {} s: {r}", fmt_rate(a.rate as f64), a.seconds);
    }
    Ok(())
}

/// `bench latency --nodes K`: query `q` (its rate set) on K local nodes;
/// the nodes' latency histograms are merged.
fn latency_on_nodes(
    queries: &Registry,
    q: &QuerySection,
    rate: u64,
    linger_us: u64,
    nodes: usize,
    json: bool,
) -> Result<(), String> {
    let (dir, path) = local_nodes_config(
        q,
        &format!("linger_us = {linger_us}\n"),
        "kind = \"count\"\nlatency = true\n",
        nodes,
    )?;
    let hist_dir = dir.path().join("histograms");
    std::fs::create_dir_all(&hist_dir).map_err(|e| format!("{}: {e}", hist_dir.display()))?;
    let steal_before = spate_bench::latency::steal_ms();
    let reports = deploy::run_local_cluster_with(
        &this_exe()?,
        &path,
        queries,
        true,
        &[(deploy::HISTOGRAM_DIR_ENV, hist_dir.as_path())],
    )?;
    let steal = spate_bench::latency::steal_ms_since(steal_before);
    let latency = deploy::merge_histograms(&hist_dir, nodes)?;
    let out: u64 = reports.iter().map(|r| r.records_out).sum();
    let secs = reports.iter().map(|r| r.seconds).fold(0.0, f64::max);
    let mut r = LatencyReport::from_histogram(&latency, out, secs);
    r.steal_ms = steal;
    if json {
        println!("{}", r.to_json());
    } else {
        println!("{} at {} on {nodes} nodes: {r}", q.name, fmt_rate(rate as f64));
    }
    Ok(())
}

fn compare(a: CompareArgs) -> Result<(), String> {
    if let Some(q) = &a.query {
        if q != "keyed-sum" {
            return Err(format!(
                "--query {q}: bench compare runs keyed-sum, the query the timely peer implements"
            ));
        }
    }
    let (records, workers, runs) = (a.records, a.workers, a.runs);
    let keys = a.keys.get()?;
    let me = this_exe()?;
    let peer = a.peer.unwrap_or_else(|| me.with_file_name("peer-timely"));
    if !peer.exists() {
        return Err(format!(
            "timely peer not found at {}; build it with `cargo build --release -p spate-bench --bin peer-timely` or pass --peer",
            peer.display()
        ));
    }
    let (n, w, k) = (records.to_string(), workers.to_string(), keys.to_string());
    let a = CommandSpec::new(me.display().to_string()).label("spate").args([
        "bench",
        "throughput",
        "--query",
        "keyed-sum",
        "--records",
        &n,
        "--workers",
        &w,
        "--keys",
        &k,
        "--json",
    ]);
    // Both sides must report the workload they were given.
    let same = |c: CommandSpec| {
        c.expect("records", records as f64).expect("workers", workers as f64).expect("keys", keys as f64)
    };
    let a = same(a);
    let b = CommandSpec::new(peer.display().to_string()).label("timely").args([
        "--records",
        &n,
        "--workers",
        &w,
        "--keys",
        &k,
        "--json",
    ]);
    let b = same(b);
    let report = run_alternating(&a, &b, runs).map_err(|e| e.to_string())?;
    println!("{report}");
    println!(
        "{{\"records\":{records},\"workers\":{workers},\"keys\":{keys},\"runs\":{runs},\"spate_median\":{:.1},\"timely_median\":{:.1},\"median_ratio\":{:.4}}}",
        report.a.median, report.b.median, report.median_pair_ratio
    );
    Ok(())
}

fn state(a: StateArgs) -> Result<(), String> {
    let backing = match a.backing.as_deref() {
        None => crate::state::Backing::default(),
        Some("memory") => crate::state::Backing::Memory,
        Some("file") => crate::state::Backing::File,
        Some(other) => return Err(format!("option `--backing`: `{other}` is not `memory` or `file`")),
    };
    let params = crate::state::bench::StateBenchParams {
        state_mb: a.state_mb,
        dirty_percent: a.dirty_percent,
        runs: a.runs,
        bins_log2: a.bins_log2,
        dir: a.dir.unwrap_or_else(std::env::temp_dir),
        backing,
    };
    let r = crate::state::bench::state_bench(&params).map_err(|e| e.to_string())?;
    if a.json {
        println!("{}", r.to_json());
    } else {
        println!(
            "state {} MiB, {}% dirty: incremental checkpoint {} bytes in {:.2} ms (full {:.1} ms); \
             longest update stall {:.0} µs; restore {:.1} ms ({:.0} MB/s)",
            r.state_bytes >> 20,
            params.dirty_percent,
            r.checkpoint_bytes,
            r.checkpoint_ms,
            r.full_checkpoint_ms,
            r.max_pause_us,
            r.restore_ms,
            r.restore_mb_per_s
        );
    }
    Ok(())
}

fn elastic(a: ElasticArgs) -> Result<(), String> {
    use crate::bench_elastic::{parse_schedule, policy, ElasticParams};
    let schedule = parse_schedule(&a.schedule)?;
    let last = schedule.last().map_or(0, |p| p[0]);
    let scaling = spate_core::control::scaling::ScalingConfig {
        policy: policy(&a.policy)?,
        interval_ms: a.interval_ms,
        cooldown_ms: a.cooldown_ms,
        scale_in_hold_ms: a.scale_in_hold_ms,
        ..Default::default()
    };
    let p = ElasticParams {
        schedule,
        ramp: a.ramp,
        seconds: a.seconds.unwrap_or(last + 20),
        scaling,
        max_workers: a.max_workers,
        work_ns: a.work_ns,
        keys: a.keys,
        target_p99_us: a.target_p99_us,
    };
    let dir = tempfile::tempdir().map_err(|e| format!("cannot make a data directory: {e}"))?;
    let r = crate::bench_elastic::run(dir.path(), &p)?;
    if let Some(path) = &a.csv {
        std::fs::write(path, r.to_csv()).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    if a.json {
        println!("{}", r.to_json(&p));
    } else {
        eprintln!(
            "elastic ({}): {} decisions, steps to converge {:?}, relief {:?} ms, p99 {} µs,              {} in, {} out, {} lost, {} duplicated, {} wrong sums",
            r.policy,
            r.events.len(),
            r.steps_to_converge,
            r.time_to_relief_ms,
            r.p99_us,
            r.records_in,
            r.records_out,
            r.lost_records(),
            r.duplicated_records(),
            r.wrong_sums
        );
    }
    Ok(())
}

fn rescale(a: RescaleArgs) -> Result<(), String> {
    let p = crate::bench_rescale::RescaleParams {
        keys: a.state_mb.map_or(a.keys, crate::bench_rescale::keys_for_state_mb),
        work_ns: a.work_ns,
        phase_s: a.phase_s,
        max_bins: a.max_bins,
        max_bytes: a.max_bytes,
        pace: a.pace,
        rate: a.rate,
    };
    let r = if a.nodes.is_some() {
        let exe = std::env::current_exe().map_err(|e| format!("cannot find this program: {e}"))?;
        crate::bench_rescale::run_nodes(&exe, &p)?
    } else {
        let dir = tempfile::tempdir().map_err(|e| format!("cannot make a data directory: {e}"))?;
        crate::bench_rescale::run(dir.path(), &p)?
    };
    if let Some(path) = &a.csv {
        std::fs::write(path, r.to_csv()).map_err(|e| format!("--csv {}: {e}", path.display()))?;
    }
    if a.json {
        println!("{}", r.to_json());
    } else {
        eprintln!(
            "rescale: {} records/s on 1 worker, {} on 2 (x{:.2}), {} back on 1; scale-out {} ms in {} steps \
             ({} bytes, the largest {}), scale-in {} ms",
            r.throughput_before,
            r.throughput_after,
            r.throughput_after as f64 / r.throughput_before.max(1) as f64,
            r.throughput_back,
            r.handoff_ms,
            r.steps,
            r.moved_bytes,
            r.largest_step_bytes,
            r.scale_in_ms
        );
        if let Some(l) = &r.latency {
            let opt = |v: Option<u64>| v.map_or("?".to_string(), |v| v.to_string());
            eprintln!(
                "latency ({}): p99 {} us steady; during the moves p99 {} us, max {} us, p99 of unmoved keys {} us; \
                 memory {:.0} MiB steady, {:.0} MiB at most during the moves",
                l.basis,
                l.steady_p99_us,
                l.during_p99_us,
                opt(l.during_max_us),
                opt(l.unmoved_during_p99_us),
                l.steady_rss_mb,
                l.peak_rss_mb
            );
        }
    }
    Ok(())
}

fn recovery(a: RecoveryArgs) -> Result<(), String> {
    let p = crate::bench_recovery::RecoveryParams {
        state_mb: a.state_mb,
        checkpoint_ms: a.checkpoint_ms,
        failure_timeout_ms: a.failure_timeout_ms,
        rate: a.rate,
        steady_s: a.steady_s,
        after_s: a.after_s,
        csv: a.csv,
        silent: a.silent,
        rollback: a.rollback,
        no_spare: a.no_spare,
    };
    let r = crate::bench_recovery::run(&this_exe()?, &p)?;
    if a.json {
        println!("{}", r.to_json());
    } else {
        eprintln!(
            "recovery: detect {} ms, restore {} ms, replay {} ms, total {} ms; {} lost, {} duplicated \
             (normal {} records/s, p99 {} µs; peak p99 {} µs)",
            r.detect_ms,
            r.restore_ms,
            r.replay_ms,
            r.total_ms.map_or("(never back to normal)".to_string(), |t| t.to_string()),
            r.lost_records,
            r.duplicated_records,
            r.normal_records_per_s,
            r.normal_p99_us,
            r.peak_p99_us
        );
    }
    Ok(())
}

/// `bench ft-cost`: keyed-sum on K local nodes with checkpoints every C ms
/// streamed to one backup node, against the same without fault tolerance,
/// alternately R times; prints the medians and the median ratio.
fn ft_cost(queries: &Registry, a: FtCostArgs) -> Result<(), String> {
    let (records, nodes, c, runs) = (a.records, a.nodes, a.checkpoint_ms, a.runs);
    let recovery = match (a.rollback, a.buffer_mb) {
        (true, _) => "recovery = \"rollback\"\n".to_string(),
        (false, Some(mb)) => format!("buffer_mb = {mb}\n"),
        (false, None) => String::new(),
    };
    let (q, _) = bench_query(queries, "keyed-sum", &a.keys, records, None)?;
    if nodes < 2 || c == 0 {
        return Err("`bench ft-cost` needs --nodes ≥ 2 (a backup node) and --checkpoint-ms > 0".into());
    }
    let (mut with, mut without, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for run in 0..runs {
        let a = throughput_on_nodes(queries, &q, records, nodes, 0, "", false)?;
        let b = throughput_on_nodes(queries, &q, records, nodes, c, &recovery, false)?;
        eprintln!("run {}: without {:.0} records/s, with {:.0} records/s ({:.3})", run + 1, a, b, b / a);
        without.push(a);
        with.push(b);
        ratios.push(b / a);
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
    };
    let (w, wo, r) = (median(with), median(without), median(ratios));
    if a.json {
        println!(
            "{{\"nodes\":{nodes},\"records\":{records},\"checkpoint_ms\":{c},\"runs\":{runs},\"with_ft_records_per_s\":{w:.1},\"without_ft_records_per_s\":{wo:.1},\"ratio\":{r:.3}}}"
        );
    } else {
        println!("median: without {wo:.0} records/s, with {w:.0} records/s, ratio {r:.3}");
    }
    Ok(())
}
