//! The `spate` command.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use spate::config::{Config, QuerySection, SinkKind, SinkSection};
use spate::control::NodeReport;
use spate::deploy;
use spate::{node, queries};
use spate::{Job, Runtime, RuntimeConfig};
use spate_bench::compare::{run_alternating, CommandSpec};
use spate_bench::latency::LatencyReport;

const USAGE: &str = "\
spate — elastic, fault-tolerant stream processing with explicit operator state

USAGE:
  spate run CONFIG [--workers N] [--quiet] [--fresh]
      Run the query a TOML config names, on all cores of this process.
  spate node --config FILE --name NAME [--first-core C | --no-pin] [--quiet] [--json]
      Run node NAME of the config's [cluster]: its share of the job's workers,
      connected to the other nodes (start every node with the same file).
  spate cluster --config FILE [--quiet] [--json]
      Run every node of the config's [cluster] as a local process (port 0 in
      an address: a free port), print their output prefixed with the node's
      name and their total counts; stops them all on failure or Ctrl-C.
  spate bench throughput --query keyed-sum --records N [--workers W] [--keys K] [--checkpoint-ms C]
                         [--nodes K] [--json]
      Run a query as fast as possible; print records/s.
  spate bench latency --query NAME --rate RECORDS_PER_S --seconds S [--workers W | --nodes K]
                      [--linger-us U] [--json] [--csv FILE]
      Drive a query open-loop at a fixed rate; print latency percentiles from
      each record's intended send time.
  spate bench compare --records N [--workers W] [--runs R] [--keys K] [--peer PATH]
      Run spate and the timely-dataflow peer on keyed-sum (K keys, default
      100000) alternately R times; print medians and the median ratio
      spate/timely.
  spate bench state --state-mb M --dirty-percent P [--runs R] [--bins-log2 B] [--dir DIR]
                    [--backing memory|file] [--json]
      Fill a state store with M MiB, checkpoint it (full, then increments at
      P% dirty pages) into a backup store while a thread keeps updating it;
      print checkpoint size and time, the longest update stall, and restore speed.
  spate bench rescale [--keys K] [--work-ns N] [--phase-s S] [--max-bins B] [--json]
      In one process: a keyed sum whose fold spends about N ns a record, on 1
      worker of 2, then scaled out to 2 by live handoff, then back; print the
      three throughputs and how long each move took.
  spate bench recovery [--state-mb M] [--checkpoint-ms C] [--failure-timeout-ms F] [--rate R]
                       [--steady-s S] [--after-s A] [--csv FILE] [--silent] [--rollback] [--no-spare]
                       [--json]
      Run keyed-sum (about M MiB of state) on 3 local nodes plus a spare (--no-spare:
      none, a survivor takes over) under a steady load, SIGKILL one node (--silent: SIGSTOP, found by the failure
      timeout), recover it live (--rollback: roll every node back), and print
      detect/restore/replay/total ms and
      the lost and duplicated outputs; --csv writes latency over time with the
      failure marked.
  spate bench ft-cost --records N [--nodes K] [--checkpoint-ms C] [--runs R] [--buffer-mb M]
                      [--rollback] [--json]
      keyed-sum on K local nodes with checkpoints every C ms backed up on another
      node (and, unless --rollback, replay buffers of M MiB per worker for live
      recovery), against none, alternately R times; print the median ratio.
  spate queries
      List the known queries.
";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let res = match args.first().map(String::as_str) {
        Some("run") => cmd_run(&args[1..]),
        Some("node") => cmd_node(&args[1..]),
        Some("cluster") => cmd_cluster(&args[1..]),
        Some("ctl") => cmd_ctl(&args[1..]),
        Some("bench") => match args.get(1).map(String::as_str) {
            Some("throughput") => cmd_throughput(&args[2..]),
            Some("latency") => cmd_latency(&args[2..]),
            Some("compare") => cmd_compare(&args[2..]),
            Some("state") => cmd_bench_state(&args[2..]),
            Some("recovery") => cmd_bench_recovery(&args[2..]),
            Some("ft-cost") => cmd_ft_cost(&args[2..]),
            Some("rescale") => cmd_bench_rescale(&args[2..]),
            Some("rescale-node") => cmd_bench_rescale_node(&args[2..]),
            other => Err(format!(
                "unknown bench {:?}; expected throughput, latency, compare, state, recovery, ft-cost or rescale\n\n{USAGE}",
                other
            )),
        },
        Some("queries") => {
            for n in queries::NAMES {
                println!("{n}");
            }
            Ok(())
        }
        Some("-h" | "--help" | "help") | None => {
            print!("{USAGE}");
            Ok(())
        }
        Some(other) => Err(format!("unknown command `{other}`\n\n{USAGE}")),
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("spate: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Parsed `--flag value` options.
struct Opts {
    positional: Vec<String>,
    flags: Vec<(String, Option<String>)>,
}

const BOOL_FLAGS: &[&str] =
    &["--fresh", "--no-pin", "--json", "--quiet", "--silent", "--rollback", "--no-spare"];

impl Opts {
    fn parse(args: &[String], known: &[&str]) -> Result<Self, String> {
        let mut o = Opts { positional: Vec::new(), flags: Vec::new() };
        let mut i = 0;
        while i < args.len() {
            let a = &args[i];
            if a.starts_with("--") {
                if !known.contains(&a.as_str()) {
                    return Err(format!("unknown option `{a}`; expected one of {}", known.join(", ")));
                }
                if BOOL_FLAGS.contains(&a.as_str()) {
                    o.flags.push((a.clone(), None));
                } else {
                    let v = args
                        .get(i + 1)
                        .filter(|v| !v.starts_with("--"))
                        .ok_or_else(|| format!("option `{a}` needs a value"))?;
                    o.flags.push((a.clone(), Some(v.clone())));
                    i += 1;
                }
            } else {
                o.positional.push(a.clone());
            }
            i += 1;
        }
        Ok(o)
    }

    fn has(&self, f: &str) -> bool {
        self.flags.iter().any(|(k, _)| k == f)
    }

    fn get<T: std::str::FromStr>(&self, f: &str) -> Result<Option<T>, String> {
        match self.flags.iter().rev().find(|(k, _)| k == f).and_then(|(_, v)| v.as_ref()) {
            None => Ok(None),
            Some(v) => v.parse().map(Some).map_err(|_| format!("option `{f}`: cannot parse `{v}`")),
        }
    }

    /// keyed-sum's `--keys K` (default 100 000): at least 1, and at most
    /// what a TOML integer holds.
    fn keys(&self) -> Result<u64, String> {
        match self.get::<u64>("--keys")?.unwrap_or(100_000) {
            k @ 1..=0x7fff_ffff_ffff_ffff => Ok(k),
            k => Err(format!("--keys must be at least 1 and at most {}; got {k}", i64::MAX)),
        }
    }
}

fn fmt_rate(r: f64) -> String {
    if r >= 1e6 {
        format!("{:.2} M/s", r / 1e6)
    } else if r >= 1e3 {
        format!("{:.1} k/s", r / 1e3)
    } else {
        format!("{r:.0} /s")
    }
}

/// Waits for a job, printing a live status line to stderr unless `quiet`.
fn watch(job: Job, quiet: bool) -> Result<(spate::JobReport, hdrhistogram::Histogram<u64>), String> {
    watch_with(job, quiet, || Ok(()))
}

/// As [`watch`], calling `tick` every 50 ms (a node's control plane).
fn watch_with(
    job: Job,
    quiet: bool,
    mut tick: impl FnMut() -> Result<(), String>,
) -> Result<(spate::JobReport, hdrhistogram::Histogram<u64>), String> {
    let metrics = job.metrics().clone();
    let started = job.started();
    let (mut last_in, mut last_out, mut last_t) = (0u64, 0u64, Instant::now());
    let mut printed = false;
    while !job.is_finished() {
        std::thread::sleep(Duration::from_millis(50));
        tick()?;
        if quiet || last_t.elapsed() < Duration::from_secs(1) {
            continue;
        }
        let (i, o) =
            (metrics.records_in.load(Ordering::Relaxed), metrics.records_out.load(Ordering::Relaxed));
        let dt = last_t.elapsed().as_secs_f64();
        let h = metrics.take_interval_latency();
        let p99 =
            if h.is_empty() { "-".to_string() } else { format!("{} µs", h.value_at_quantile(0.99) / 1000) };
        eprint!(
            "\r[{:6.1}s] in {:>11}  out {:>11}  p99 {:>10}   ",
            started.elapsed().as_secs_f64(),
            fmt_rate((i - last_in) as f64 / dt),
            fmt_rate((o - last_out) as f64 / dt),
            p99
        );
        printed = true;
        (last_in, last_out, last_t) = (i, o, Instant::now());
    }
    if printed {
        eprintln!();
    }
    let latency = metrics.latency();
    let report = job.wait().map_err(|e| e.to_string())?;
    Ok((report, latency))
}

fn cmd_run(args: &[String]) -> Result<(), String> {
    let o = Opts::parse(args, &["--workers", "--quiet", "--fresh"])?;
    let [path] = o.positional.as_slice() else {
        return Err(format!("`spate run` takes one config file\n\n{USAGE}"));
    };
    let cfg = Config::load(&PathBuf::from(path)).map_err(|e| e.to_string())?;
    let mut rc = cfg.runtime_config();
    if let Some(w) = o.get::<usize>("--workers")? {
        rc.workers = w;
    }
    if o.has("--fresh") {
        rc.restore = false;
    }
    let build = queries::build(&cfg.query, &cfg.sink)?;
    let quiet = o.has("--quiet") || cfg.sink.kind == SinkKind::Stdout;
    let workers = rc.effective_workers();
    let job = Runtime::new(rc).start(&cfg.query.name, move |df| build(df)).map_err(|e| e.to_string())?;
    if let Some(m) = job.checkpoints().and_then(|c| c.restored()) {
        eprintln!("{}: resuming from checkpoint {}", cfg.query.name, m.id);
    }
    let (report, latency) = watch(job, quiet)?;
    let secs = report.elapsed.as_secs_f64();
    let mut summary = format!(
        "{}: {} records in, {} out in {:.3} s on {} workers ({} in)",
        cfg.query.name,
        report.records_in,
        report.records_out,
        secs,
        workers,
        fmt_rate(report.records_in as f64 / secs.max(1e-9))
    );
    if !latency.is_empty() {
        summary += &format!(
            "; latency p50 {} µs, p99 {} µs, p99.9 {} µs, max {} µs",
            latency.value_at_quantile(0.5) / 1000,
            latency.value_at_quantile(0.99) / 1000,
            latency.value_at_quantile(0.999) / 1000,
            latency.max() / 1000
        );
    }
    if report.checkpoints > 0 {
        summary += &format!("; {} checkpoints", report.checkpoints);
    }
    eprintln!("{summary}");
    Ok(())
}

fn cmd_bench_state(args: &[String]) -> Result<(), String> {
    let o = Opts::parse(
        args,
        &["--state-mb", "--dirty-percent", "--runs", "--bins-log2", "--dir", "--backing", "--json"],
    )?;
    let dir: PathBuf = o.get("--dir")?.unwrap_or_else(std::env::temp_dir);
    let backing = match o.get::<String>("--backing")?.as_deref() {
        None => spate::state::Backing::default(),
        Some("memory") => spate::state::Backing::Memory,
        Some("file") => spate::state::Backing::File,
        Some(other) => return Err(format!("option `--backing`: `{other}` is not `memory` or `file`")),
    };
    let params = spate::state::bench::StateBenchParams {
        state_mb: o.get("--state-mb")?.unwrap_or(256),
        dirty_percent: o.get("--dirty-percent")?.unwrap_or(1.0),
        runs: o.get("--runs")?.unwrap_or(5),
        bins_log2: o.get("--bins-log2")?.unwrap_or(12),
        dir,
        backing,
    };
    let r = spate::state::bench::state_bench(&params).map_err(|e| e.to_string())?;
    if o.has("--json") {
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

/// `spate ctl --config FILE (assignment | scale --workers N | scale-in
/// --node NAME | move --bins A..B --to WORKER) [--max-bins K]
/// [--timeout-s S]`: a request to the running cluster's coordinator.
fn cmd_ctl(args: &[String]) -> Result<(), String> {
    use spate::ctl::CtlRequest;
    let verb = args.iter().position(|a| matches!(a.as_str(), "assignment" | "scale" | "scale-in" | "move"));
    let Some(v) = verb else {
        return Err("`spate ctl` needs a request: assignment, scale, scale-in or move".into());
    };
    let mut rest: Vec<String> = args.to_vec();
    let verb = rest.remove(v);
    let o = Opts::parse(
        &rest,
        &["--config", "--workers", "--node", "--bins", "--to", "--max-bins", "--timeout-s"],
    )?;
    let path: PathBuf = o.get("--config")?.ok_or("`spate ctl` needs `--config FILE`")?;
    let cfg = Config::load(&path).map_err(|e| e.to_string())?;
    let req = match verb.as_str() {
        "assignment" => CtlRequest::Assignment,
        "scale" => {
            CtlRequest::Scale { workers: o.get("--workers")?.ok_or("`spate ctl scale` needs `--workers N`")? }
        }
        "scale-in" => {
            CtlRequest::ScaleIn { node: o.get("--node")?.ok_or("`spate ctl scale-in` needs `--node NAME`")? }
        }
        "move" => {
            let bins: String = o.get("--bins")?.ok_or("`spate ctl move` needs `--bins A..B`")?;
            let (a, b) = bins.split_once("..").ok_or_else(|| format!("--bins: `{bins}` is not `A..B`"))?;
            let bin = |s: &str| s.parse::<u32>().map_err(|_| format!("--bins: `{s}` is not a bin number"));
            CtlRequest::Move {
                start: bin(a)?,
                end: bin(b)?,
                to: o.get("--to")?.ok_or("`spate ctl move` needs `--to NODE[/WORKER]`")?,
            }
        }
        other => {
            return Err(format!(
                "unknown `spate ctl` request `{other}`: expected assignment, scale, scale-in or move"
            ))
        }
    };
    let timeout = Duration::from_secs(o.get("--timeout-s")?.unwrap_or(120));
    let answer = spate::ctl::ctl(&cfg, &req, o.get("--max-bins")?, timeout)?;
    // A closed stdout (`| head`) is not the request's failure.
    let _ = std::io::Write::write_all(&mut std::io::stdout(), format!("{answer}\n").as_bytes());
    Ok(())
}

fn cmd_node(args: &[String]) -> Result<(), String> {
    let o = Opts::parse(args, &["--config", "--name", "--quiet", "--json", "--first-core", "--no-pin"])?;
    let path: PathBuf = o.get("--config")?.ok_or("`spate node` needs `--config FILE`")?;
    let name: String = o.get("--name")?.ok_or("`spate node` needs `--name NAME`")?;
    let cfg = Config::load(&path).map_err(|e| e.to_string())?;
    let opts = node::NodeOptions {
        first_core: o.get("--first-core")?,
        pin: !o.has("--no-pin"),
        quiet: o.has("--quiet") || cfg.sink.kind == SinkKind::Stdout,
        events: o.has("--json"),
    };
    let ended = node::run_node(&cfg, &name, &opts)?;
    if let Some(r) = &ended.report {
        eprintln!("node {name}: {} records in, {} out in {:.3} s", r.records_in, r.records_out, r.seconds);
    }
    if let Some(outcome) = &ended.outcome {
        if o.has("--json") {
            for r in &outcome.reports {
                println!("{}", r.to_json());
            }
        }
        let all = &outcome.reports;
        let (i, out): (u64, u64) = all.iter().fold((0, 0), |(i, o), r| (i + r.records_in, o + r.records_out));
        let secs = all.iter().map(|r| r.seconds).fold(0.0, f64::max);
        eprintln!("coordinator {name}: {} nodes, {i} records in, {out} out in {secs:.3} s", all.len());
    }
    Ok(())
}

/// `bench throughput --nodes K`: the query on K local node processes of
/// one worker each, every record crossing a TCP connection (or staying on
/// its node, for the keys that node owns).
fn throughput_on_nodes(
    name: &str,
    records: u64,
    nodes: usize,
    keys: u64,
    checkpoint_ms: u64,
    recovery: &str,
    json: bool,
) -> Result<f64, String> {
    let checkpoints = if checkpoint_ms > 0 {
        format!("[checkpoint]\ninterval_ms = {checkpoint_ms}\nbackups = 1\n{recovery}")
    } else {
        String::new()
    };
    let (_dir, path) = local_nodes_config(
        name,
        &format!("records = {records}\nkeys = {keys}\n"),
        "",
        &format!("kind = \"count\"\nlatency = false\n{checkpoints}"),
        nodes,
    )?;
    let exe = std::env::current_exe().map_err(|e| format!("cannot find the spate binary: {e}"))?;
    let reports = deploy::run_local_cluster(&exe, &path, true)?;
    let rps = print_cluster_totals(&reports, false);
    if json {
        println!(
            "{{\"system\":\"spate\",\"query\":\"{name}\",\"records\":{records},\"nodes\":{nodes},\"checkpoint_ms\":{checkpoint_ms},\"records_per_s\":{rps:.1}}}"
        );
    }
    Ok(rps)
}

/// `bench ft-cost`: keyed-sum on K local nodes with checkpoints every C ms
/// streamed to one backup node, against the same without fault tolerance,
/// alternately R times; prints the medians and the median ratio.
fn cmd_ft_cost(args: &[String]) -> Result<(), String> {
    let o = Opts::parse(
        args,
        &[
            "--records",
            "--nodes",
            "--keys",
            "--checkpoint-ms",
            "--runs",
            "--buffer-mb",
            "--rollback",
            "--json",
        ],
    )?;
    let records: u64 = o.get("--records")?.ok_or("`--records N` is required")?;
    let nodes: usize = o.get("--nodes")?.unwrap_or(3);
    let keys = o.keys()?;
    let c: u64 = o.get("--checkpoint-ms")?.unwrap_or(1000);
    let runs: usize = o.get("--runs")?.unwrap_or(3);
    let recovery = match (o.has("--rollback"), o.get::<u64>("--buffer-mb")?) {
        (true, _) => "recovery = \"rollback\"\n".to_string(),
        (false, Some(mb)) => format!("buffer_mb = {mb}\n"),
        (false, None) => String::new(),
    };
    if nodes < 2 || c == 0 {
        return Err("`bench ft-cost` needs --nodes ≥ 2 (a backup node) and --checkpoint-ms > 0".into());
    }
    let (mut with, mut without, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for run in 0..runs {
        let a = throughput_on_nodes("keyed-sum", records, nodes, keys, 0, "", false)?;
        let b = throughput_on_nodes("keyed-sum", records, nodes, keys, c, &recovery, false)?;
        eprintln!("run {}: without {:.0} records/s, with {:.0} records/s ({:.3})", run + 1, a, b, b / a);
        without.push(a);
        with.push(b);
        ratios.push(b / a);
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (w, wo, r) = (median(with), median(without), median(ratios));
    if o.has("--json") {
        println!(
            "{{\"nodes\":{nodes},\"records\":{records},\"checkpoint_ms\":{c},\"runs\":{runs},\"with_ft_records_per_s\":{w:.1},\"without_ft_records_per_s\":{wo:.1},\"ratio\":{r:.3}}}"
        );
    } else {
        println!("median: without {wo:.0} records/s, with {w:.0} records/s, ratio {r:.3}");
    }
    Ok(())
}

/// `bench recovery`: see `spate::bench_recovery`.
fn cmd_bench_rescale(args: &[String]) -> Result<(), String> {
    let o = Opts::parse(
        args,
        &["--keys", "--work-ns", "--phase-s", "--max-bins", "--json", "--nodes", "--state-mb"],
    )?;
    let p = spate::bench_rescale::RescaleParams {
        keys: o.get("--keys")?.unwrap_or(100_000),
        work_ns: o.get("--work-ns")?.unwrap_or(1000),
        phase_s: o.get("--phase-s")?.unwrap_or(3),
        max_bins: o.get("--max-bins")?.unwrap_or(256),
    };
    let nodes: Option<usize> = o.get("--nodes")?;
    if nodes.is_some_and(|n| n != 2) {
        return Err("`--nodes`: the rescale bench runs 2 node processes (`--nodes 2`)".into());
    }
    let r = if nodes.is_some() {
        let exe = std::env::current_exe().map_err(|e| format!("cannot find this program: {e}"))?;
        spate::bench_rescale::run_nodes(&exe, &p, o.get("--state-mb")?)?
    } else {
        if o.has("--state-mb") {
            return Err("`--state-mb` sizes the state of `--nodes` runs only (use `--keys`)".into());
        }
        let dir = tempfile::tempdir().map_err(|e| format!("cannot make a data directory: {e}"))?;
        spate::bench_rescale::run(dir.path(), &p)?
    };
    if o.has("--json") {
        println!("{}", r.to_json());
    } else {
        eprintln!(
            "rescale: {} records/s on 1 worker, {} on 2 (x{:.2}), {} back on 1; scale-out {} ms in {} steps \
             ({} bytes), scale-in {} ms",
            r.throughput_before,
            r.throughput_after,
            r.throughput_after as f64 / r.throughput_before.max(1) as f64,
            r.throughput_back,
            r.handoff_ms,
            r.steps,
            r.moved_bytes,
            r.scale_in_ms
        );
    }
    Ok(())
}

/// One node process of `spate bench rescale --nodes` (started by it).
fn cmd_bench_rescale_node(args: &[String]) -> Result<(), String> {
    let o = Opts::parse(args, &["--config", "--name", "--keys", "--work-ns"])?;
    let path: PathBuf = o.get("--config")?.ok_or("needs `--config FILE`")?;
    let name: String = o.get("--name")?.ok_or("needs `--name NAME`")?;
    let cfg = Config::load(&path).map_err(|e| e.to_string())?;
    spate::bench_rescale::run_work_node(
        &cfg,
        &name,
        o.get("--keys")?.unwrap_or(100_000),
        o.get("--work-ns")?.unwrap_or(0),
    )
}

fn cmd_bench_recovery(args: &[String]) -> Result<(), String> {
    let o = Opts::parse(
        args,
        &[
            "--state-mb",
            "--checkpoint-ms",
            "--failure-timeout-ms",
            "--rate",
            "--steady-s",
            "--after-s",
            "--csv",
            "--json",
            "--silent",
            "--rollback",
            "--no-spare",
        ],
    )?;
    let p = spate::bench_recovery::RecoveryParams {
        state_mb: o.get("--state-mb")?.unwrap_or(256),
        checkpoint_ms: o.get("--checkpoint-ms")?.unwrap_or(1000),
        failure_timeout_ms: o.get("--failure-timeout-ms")?.unwrap_or(500),
        rate: o.get("--rate")?.unwrap_or(300_000),
        steady_s: o.get("--steady-s")?.unwrap_or(5),
        after_s: o.get("--after-s")?.unwrap_or(8),
        csv: o.get("--csv")?,
        silent: o.has("--silent"),
        rollback: o.has("--rollback"),
        no_spare: o.has("--no-spare"),
    };
    let exe = std::env::current_exe().map_err(|e| format!("cannot find the spate binary: {e}"))?;
    let r = spate::bench_recovery::run(&exe, &p)?;
    if o.has("--json") {
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

fn cmd_cluster(args: &[String]) -> Result<(), String> {
    let o = Opts::parse(args, &["--config", "--quiet", "--json"])?;
    let path: PathBuf = o.get("--config")?.ok_or("`spate cluster` needs `--config FILE`")?;
    let exe = std::env::current_exe().map_err(|e| format!("cannot find the spate binary: {e}"))?;
    let reports = deploy::run_local_cluster(&exe, &path, o.has("--quiet"))?;
    print_cluster_totals(&reports, o.has("--json"));
    Ok(())
}

/// Sums the nodes' counts; the run time is the slowest node's.
fn print_cluster_totals(reports: &[NodeReport], json: bool) -> f64 {
    let records_in: u64 = reports.iter().map(|r| r.records_in).sum();
    let records_out: u64 = reports.iter().map(|r| r.records_out).sum();
    let secs = reports.iter().map(|r| r.seconds).fold(0.0, f64::max);
    let rps = records_in as f64 / secs.max(1e-9);
    if json {
        println!(
            "{{\"nodes\":{},\"records_in\":{records_in},\"records_out\":{records_out},\"seconds\":{secs:.6},\"records_per_s\":{rps:.1}}}",
            reports.len()
        );
    } else {
        eprintln!(
            "cluster: {} nodes, {records_in} records in, {records_out} out in {secs:.3} s ({} in)",
            reports.len(),
            fmt_rate(rps)
        );
    }
    rps
}

fn query_section(name: &str, params: toml::Table) -> QuerySection {
    QuerySection { name: name.to_string(), params }
}

fn bench_runtime(o: &Opts) -> Result<RuntimeConfig, String> {
    let mut rc = RuntimeConfig { workers: o.get("--workers")?.unwrap_or(1), ..Default::default() };
    if let Some(l) = o.get("--linger-us")? {
        rc.linger_us = l;
    }
    if let Some(c) = o.get("--checkpoint-ms")? {
        rc.checkpoint_interval_ms = c;
    }
    rc.data_dir = std::env::temp_dir().join(format!("spate-bench-{}", std::process::id()));
    rc.validate().map_err(|e| e.to_string())?;
    Ok(rc)
}

fn cmd_throughput(args: &[String]) -> Result<(), String> {
    let o = Opts::parse(
        args,
        &[
            "--query",
            "--records",
            "--workers",
            "--keys",
            "--json",
            "--linger-us",
            "--checkpoint-ms",
            "--nodes",
        ],
    )?;
    let name: String = o.get("--query")?.unwrap_or_else(|| "keyed-sum".into());
    let records: u64 = o.get("--records")?.ok_or("`--records N` is required")?;
    if let Some(nodes) = o.get::<usize>("--nodes")? {
        return throughput_on_nodes(
            &name,
            records,
            nodes,
            o.keys()?,
            o.get("--checkpoint-ms")?.unwrap_or(0),
            "",
            o.has("--json"),
        )
        .map(|_| ());
    }
    let mut params = toml::Table::new();
    params.insert("records".into(), toml::Value::Integer(records as i64));
    let mut keys_json = String::new();
    if name == "keyed-sum" {
        let keys = o.keys()?;
        params.insert("keys".into(), toml::Value::Integer(keys as i64));
        keys_json = format!(",\"keys\":{keys}");
    } else {
        params.remove("records");
        params.insert("lines".into(), toml::Value::Integer(records as i64));
    }
    let q = query_section(&name, params);
    let sink = SinkSection { kind: SinkKind::Count, path: None, latency: false };
    let build = queries::build(&q, &sink)?;
    let rc = bench_runtime(&o)?;
    let (workers, dir) = (rc.effective_workers(), rc.data_dir.clone());
    let job = Runtime::new(rc).start(&name, move |df| build(df)).map_err(|e| e.to_string())?;
    let report = job.wait().map_err(|e| e.to_string());
    let _ = std::fs::remove_dir_all(&dir);
    let report = report?;
    let secs = report.elapsed.as_secs_f64();
    let rps = report.records_in as f64 / secs.max(1e-9);
    if o.has("--json") {
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

fn cmd_latency(args: &[String]) -> Result<(), String> {
    let o = Opts::parse(
        args,
        &[
            "--query",
            "--rate",
            "--seconds",
            "--workers",
            "--json",
            "--linger-us",
            "--keys",
            "--csv",
            "--nodes",
        ],
    )?;
    let name: String = o.get("--query")?.unwrap_or_else(|| "keyed-sum".into());
    let rate: u64 = o.get("--rate")?.ok_or("`--rate RECORDS_PER_S` is required")?;
    let seconds: f64 = o.get("--seconds")?.unwrap_or(10.0);
    if rate == 0 || seconds <= 0.0 {
        return Err("--rate and --seconds must be positive".into());
    }
    let records = (rate as f64 * seconds) as u64;
    let mut params = toml::Table::new();
    params.insert("rate".into(), toml::Value::Integer(rate as i64));
    if name == "keyed-sum" {
        params.insert("records".into(), toml::Value::Integer(records as i64));
        params.insert("keys".into(), toml::Value::Integer(o.keys()? as i64));
    } else {
        params.insert("lines".into(), toml::Value::Integer(records as i64));
    }
    if let Some(nodes) = o.get::<usize>("--nodes")? {
        let keys = o.keys()?;
        let linger = o.get::<u64>("--linger-us")?.unwrap_or(0);
        return latency_on_nodes(&name, rate, records, keys, linger, nodes, o.has("--json"));
    }
    let q = query_section(&name, params);
    let sink = SinkSection { kind: SinkKind::Count, path: None, latency: true };
    let build = queries::build(&q, &sink)?;
    let mut rc = bench_runtime(&o)?;
    if o.get::<u64>("--linger-us")?.is_none() {
        rc.linger_us = 0;
    }
    let dir = rc.data_dir.clone();
    let steal_before = spate_bench::latency::steal_ms();
    let job = Runtime::new(rc).start(&name, move |df| build(df)).map_err(|e| e.to_string())?;
    let metrics = job.metrics().clone();
    let started = job.started();
    let start_ns = spate::now_ns();
    let mut over_time = spate_bench::latency::LatencyOverTime::new(start_ns, 100_000_000);
    let csv = o.get::<PathBuf>("--csv")?;
    while !job.is_finished() {
        std::thread::sleep(Duration::from_millis(100));
        // Only for `--csv`: this thread shares the cores with the workers,
        // and every moment it runs delays a worker's records.
        if csv.is_some() {
            let h = metrics.take_interval_latency();
            let now = spate::now_ns();
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
    if let Some(csv) = csv {
        std::fs::write(&csv, over_time.to_csv()).map_err(|e| format!("{}: {e}", csv.display()))?;
    }
    if o.has("--json") {
        println!("{}", r.to_json());
    } else {
        println!("{name} at {} for {seconds} s: {r}", fmt_rate(rate as f64));
    }
    Ok(())
}

/// A keyed-sum config on `nodes` local nodes of one worker each (free
/// ports), written into a new temporary directory (returned with the
/// config's path; `name` must be keyed-sum).
fn local_nodes_config(
    name: &str,
    params: &str,
    runtime: &str,
    sink: &str,
    nodes: usize,
) -> Result<(tempfile::TempDir, PathBuf), String> {
    if name != "keyed-sum" || nodes == 0 {
        return Err("`--nodes K` (K ≥ 1) runs the keyed-sum query".into());
    }
    let tmp = tempfile::tempdir().map_err(|e| format!("cannot create a temporary directory: {e}"))?;
    let dir = tmp.path();
    let mut text = format!(
        "[query]\nname = \"keyed-sum\"\n[query.params]\n{params}[runtime]\ndata_dir = {:?}\n{runtime}[sink]\n{sink}[cluster]\n",
        dir.join("data").display().to_string()
    );
    for n in 0..nodes {
        text += &format!("[[cluster.nodes]]\nname = \"n{n}\"\naddress = \"127.0.0.1:0\"\nworkers = 1\n");
    }
    let path = dir.join("bench.toml");
    std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok((tmp, path))
}

/// `bench latency --nodes K`: keyed-sum at `rate` on K local nodes; the
/// nodes' latency histograms are merged.
fn latency_on_nodes(
    name: &str,
    rate: u64,
    records: u64,
    keys: u64,
    linger_us: u64,
    nodes: usize,
    json: bool,
) -> Result<(), String> {
    let (dir, path) = local_nodes_config(
        name,
        &format!("records = {records}\nkeys = {keys}\nrate = {rate}\n"),
        &format!("linger_us = {linger_us}\n"),
        "kind = \"count\"\nlatency = true\n",
        nodes,
    )?;
    let hist_dir = dir.path().join("histograms");
    std::fs::create_dir_all(&hist_dir).map_err(|e| format!("{}: {e}", hist_dir.display()))?;
    let exe = std::env::current_exe().map_err(|e| format!("cannot find the spate binary: {e}"))?;
    let steal_before = spate_bench::latency::steal_ms();
    let reports = deploy::run_local_cluster_with(
        &exe,
        &path,
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
        println!("{name} at {} on {nodes} nodes: {r}", fmt_rate(rate as f64));
    }
    Ok(())
}

fn cmd_compare(args: &[String]) -> Result<(), String> {
    let o = Opts::parse(args, &["--records", "--workers", "--runs", "--peer", "--query", "--keys"])?;
    if let Some(q) = o.get::<String>("--query")? {
        if q != "keyed-sum" {
            return Err(format!(
                "--query {q}: bench compare runs keyed-sum, the query the timely peer implements"
            ));
        }
    }
    let records: u64 = o.get("--records")?.unwrap_or(20_000_000);
    let workers: usize = o.get("--workers")?.unwrap_or(1);
    let runs: usize = o.get("--runs")?.unwrap_or(5);
    let keys = o.keys()?;
    let me = std::env::current_exe().map_err(|e| format!("cannot find this executable: {e}"))?;
    let peer: PathBuf = match o.get::<PathBuf>("--peer")? {
        Some(p) => p,
        None => me.with_file_name("peer-timely"),
    };
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
