//! The `spate` command, as a function of the queries it knows: the `spate`
//! binary is `spate::cli::main(Registry::builtin())`, and a program that
//! registers its own queries is the same command for them.
//!
//! ```no_run
//! use std::process::ExitCode;
//! use spate::registry::Registry;
//!
//! fn main() -> ExitCode {
//!     // `add("vwap", vwap::build)` for a query of one's own (see
//!     // `spate::registry`).
//!     spate::cli::main(Registry::builtin())
//! }
//! ```
//!
//! Subcommands: `run`, `node`, `cluster`, `bench` (`throughput`, `latency`,
//! `compare`, `state`, `rescale`, `recovery`, `ft-cost`) and `queries`; each
//! takes `--help`. `spate cluster` and the benches that start nodes run
//! this same executable as the nodes (`std::env::current_exe`), so a
//! user's binary runs its own queries on every node.

mod bench;
mod nexmark;

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use clap::{Args, CommandFactory, Parser, Subcommand};
use spate_core::{Job, Runtime};

use crate::config::{Config, SinkKind};
use crate::control::NodeReport;
use crate::registry::Registry;
use crate::{deploy, node};

/// Elastic, fault-tolerant stream processing with explicit operator state.
#[derive(Debug, Parser)]
#[command(name = "spate", version, propagate_version = true, arg_required_else_help = true)]
// An option given twice takes its last value, as the hand-written parser
// did (`args_override_self`, on every subcommand).
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the query a TOML config names, on all cores of this process.
    Run(RunArgs),
    /// Run node NAME of the config's [cluster]: its share of the job's
    /// workers, connected to the other nodes (start every node with the
    /// same file).
    Node(NodeArgs),
    /// Run every node of the config's [cluster] as a local process (port 0
    /// in an address: a free port); print their output prefixed with the
    /// node's name and their total counts; stop them all on failure or
    /// Ctrl-C.
    Cluster(ClusterArgs),
    /// Ask a running cluster's coordinator to move bins between workers
    /// (live handoff) or show where they are; prints what moved, how many
    /// bytes and how long it took.
    Ctl(CtlArgs),
    /// Measure throughput, latency, checkpoints, recovery and rescaling.
    #[command(subcommand)]
    Bench(bench::Bench),
    /// List the known queries with their parameters and defaults.
    Queries,
    /// NEXMark's events as JSON lines.
    #[command(subcommand)]
    Nexmark(nexmark::Nexmark),
}

#[derive(Debug, Args)]
#[command(args_override_self = true)]
struct RunArgs {
    /// The TOML config ([query], [runtime], [sink], [checkpoint]).
    #[arg(value_name = "CONFIG")]
    config: PathBuf,
    /// Workers, instead of the config's [runtime] workers (0 = one per core).
    #[arg(long, value_name = "N")]
    workers: Option<usize>,
    /// No live status line.
    #[arg(long)]
    quiet: bool,
    /// Start over instead of resuming from the last complete checkpoint.
    #[arg(long)]
    fresh: bool,
}

#[derive(Debug, Args)]
#[command(args_override_self = true)]
struct NodeArgs {
    /// The cluster's TOML config (the same file on every node).
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
    /// This node's name among [[cluster.nodes]].
    #[arg(long, value_name = "NAME")]
    name: String,
    /// Pin the workers from this core on.
    #[arg(long, value_name = "C", conflicts_with = "no_pin")]
    first_core: Option<usize>,
    /// Do not pin the workers to cores.
    #[arg(long)]
    no_pin: bool,
    /// No progress output.
    #[arg(long)]
    quiet: bool,
    /// On the coordinator: print the job's events and the nodes' reports
    /// as JSON lines on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
#[command(args_override_self = true)]
struct ClusterArgs {
    /// The cluster's TOML config.
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
    /// Only the nodes' errors.
    #[arg(long)]
    quiet: bool,
    /// The totals as one JSON line on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
#[command(args_override_self = true)]
struct CtlArgs {
    /// The job's TOML config: a cluster's (it names the coordinator's
    /// address), or a `spate run` job's (its control socket is
    /// `<data_dir>/<query>.ctl`).
    #[arg(long, value_name = "FILE", global = true)]
    config: Option<PathBuf>,
    /// Most bins one handoff step moves (default 512).
    #[arg(long, value_name = "B", global = true)]
    max_bins: Option<u32>,
    /// Most bytes of state one handoff step moves, about (default: no
    /// bound): the first step is a probe, later ones are sized from the
    /// bytes a bin held in the steps before.
    #[arg(long, value_name = "N", global = true)]
    max_bytes: Option<u64>,
    /// After each step, wait F times as long as it took (default 0): the
    /// worker that gives the bins catches up on its load in between.
    #[arg(long, value_name = "F", global = true)]
    pace: Option<f64>,
    /// How long to wait for the answer, s.
    #[arg(long, value_name = "S", default_value_t = 120, global = true)]
    timeout_s: u64,
    #[command(subcommand)]
    request: CtlCommand,
}

#[derive(Debug, Subcommand)]
enum CtlCommand {
    /// Which bins each worker owns now.
    Assignment,
    /// Equal runs of bins over the first N workers (scale out or in).
    Scale {
        /// Workers that own bins afterwards.
        #[arg(long, value_name = "N")]
        workers: usize,
    },
    /// Move every bin off node NAME (the last node owning bins); with
    /// checkpoints and live recovery, NAME then leaves the job and waits in
    /// the pool as a spare.
    ScaleIn {
        /// The node.
        #[arg(long, value_name = "NAME")]
        node: String,
        /// The node, once it left, is released: its process exits.
        #[arg(long)]
        exit: bool,
    },
    /// Move bins A..B (a run at the end of one worker's) to a neighbour.
    Move {
        /// The bins, `A..B`.
        #[arg(long, value_name = "A..B")]
        bins: String,
        /// The worker: a number, `NODE` (its first) or `NODE/K`.
        #[arg(long, value_name = "NODE[/WORKER]")]
        to: String,
    },
}

fn cmd_ctl(queries: &Registry, a: CtlArgs) -> Result<(), String> {
    use crate::ctl::CtlRequest;
    let path = a.config.ok_or("`spate ctl` needs `--config FILE`")?;
    let cfg = Config::load_with(&path, queries).map_err(|e| e.to_string())?;
    let req = match a.request {
        CtlCommand::Assignment => CtlRequest::Assignment,
        CtlCommand::Scale { workers } => CtlRequest::Scale { workers },
        CtlCommand::ScaleIn { node, exit } => CtlRequest::ScaleIn { node, exit },
        CtlCommand::Move { bins, to } => {
            let (x, y) = bins.split_once("..").ok_or_else(|| format!("--bins: `{bins}` is not `A..B`"))?;
            let bin = |s: &str| s.parse::<u32>().map_err(|_| format!("--bins: `{s}` is not a bin number"));
            CtlRequest::Move { start: bin(x)?, end: bin(y)?, to }
        }
    };
    let answer =
        crate::ctl::ctl(&cfg, &req, a.max_bins, a.max_bytes, a.pace, Duration::from_secs(a.timeout_s))?;
    // A closed stdout (`| head`) is not the request's failure.
    let _ = std::io::Write::write_all(&mut std::io::stdout(), format!("{answer}\n").as_bytes());
    Ok(())
}

/// Runs the `spate` command on this process's arguments with the queries
/// of `queries`; returns its exit status (0, 1 for a failure, 2 for
/// arguments it does not take).
pub fn main(queries: Registry) -> ExitCode {
    main_from(queries, std::env::args_os())
}

/// As [`main`], with the arguments given (the first is the program's name).
pub fn main_from(queries: Registry, args: impl IntoIterator<Item = impl Into<OsString> + Clone>) -> ExitCode {
    let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
    let cli = match Cli::try_parse_from(&args) {
        Ok(cli) => cli,
        Err(e) => return usage_error(e, &args),
    };
    let res = match cli.command {
        Command::Run(a) => cmd_run(&queries, a),
        Command::Node(a) => cmd_node(&queries, a),
        Command::Cluster(a) => cmd_cluster(&queries, a),
        Command::Ctl(a) => cmd_ctl(&queries, a),
        Command::Bench(b) => bench::run(&queries, b),
        Command::Nexmark(n) => nexmark::run(n),
        Command::Queries => {
            print!("{}", list_queries(&queries));
            Ok(())
        }
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("spate: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Prints clap's message (help and version on stdout, exit 0); an unknown
/// option also lists the options the subcommand takes.
fn usage_error(e: clap::Error, args: &[OsString]) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
        let _ = e.print();
        return ExitCode::SUCCESS;
    }
    let mut message = e.render().to_string();
    if e.kind() == ErrorKind::UnknownArgument {
        let root = Cli::command();
        let (mut at, mut path) = (&root, String::from("spate"));
        for a in args.iter().skip(1).filter_map(|a| a.to_str()) {
            if let Some(sub) = at.find_subcommand(a) {
                at = sub;
                path = format!("{path} {a}");
            }
        }
        let options: Vec<String> = at
            .get_arguments()
            .filter_map(|a| a.get_long())
            .filter(|l| *l != "help" && *l != "version")
            .map(|l| format!("--{l}"))
            .collect();
        if !options.is_empty() {
            message = format!("{}\n`{path}` takes: {}\n", message.trim_end(), options.join(", "));
        }
    }
    eprint!("{message}");
    ExitCode::from(2)
}

/// `spate queries`: each query, what it does, and its parameters with
/// their defaults.
fn list_queries(queries: &Registry) -> String {
    let mut out = String::new();
    for name in queries.names() {
        out += name;
        match queries.about(name) {
            Ok(about) if !about.is_empty() => out += &format!(" — {about}\n"),
            _ => out += "\n",
        }
        for p in queries.params(name).unwrap_or_default() {
            let default = p.default.unwrap_or_else(|| "(unset)".into());
            let left = format!("    {} = {default}", p.name);
            if p.doc.is_empty() {
                out += &format!("{left}\n");
            } else {
                out += &format!("{left:<32}  {}\n", p.doc);
            }
        }
    }
    out
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

/// Waits for a job, printing a live status line to stderr unless `quiet`,
/// and driving `scaler`'s policy over it (each decision printed).
fn watch(job: &Job, quiet: bool, mut scaler: Option<spate_core::control::scaling::local::LocalScaler>) {
    let metrics = job.metrics().clone();
    let started = job.started();
    let (mut last_in, mut last_out, mut last_t) = (0u64, 0u64, Instant::now());
    let mut printed = false;
    while !job.is_finished() {
        std::thread::sleep(Duration::from_millis(50));
        if let Some(e) = scaler.as_mut().and_then(|s| s.poll(job, spate_core::now_ns() / 1_000_000)) {
            if printed {
                eprintln!();
            }
            eprintln!("[{:6.1}s] {}", started.elapsed().as_secs_f64(), e.line());
        }
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
}

fn cmd_run(queries: &Registry, a: RunArgs) -> Result<(), String> {
    let cfg = Config::load_with(&a.config, queries).map_err(|e| e.to_string())?;
    let mut rc = cfg.runtime_config();
    if let Some(w) = a.workers {
        rc.workers = w;
    }
    if a.fresh {
        rc.restore = false;
    }
    let build = queries.build(&cfg.query, &cfg.sink)?;
    let quiet = a.quiet || cfg.sink.kind == SinkKind::Stdout;
    let workers = rc.effective_workers();
    let data_dir = rc.data_dir.clone();
    let scaler = match &cfg.scaling {
        Some(s) => Some(spate_core::control::scaling::local::LocalScaler::new(s.scaling_config()?)),
        None => None,
    };
    let job = Runtime::new(rc).start(&cfg.query.name, move |df| build(df)).map_err(|e| e.to_string())?;
    if let Some(m) = job.checkpoints().and_then(|c| c.restored()) {
        eprintln!("{}: resuming from checkpoint {}", cfg.query.name, m.id);
    }
    // A job that can move bins takes `spate ctl` requests on its control
    // socket while it runs.
    let path = crate::ctl_local::socket_path(&data_dir, &cfg.query.name);
    let control = match job.assignment() {
        Some(_) => match crate::ctl_local::bind(&path) {
            Ok(l) => Some(l),
            Err(e) => {
                eprintln!("{}: no control socket: {e}", cfg.query.name);
                None
            }
        },
        None => None,
    };
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        if let Some(l) = &control {
            s.spawn(|| crate::ctl_local::serve(&job, l, &path, &stop));
        }
        watch(&job, quiet, scaler);
        stop.store(true, Ordering::Release);
    });
    let latency = job.metrics().latency();
    let report = job.wait().map_err(|e| e.to_string())?;
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

fn cmd_node(queries: &Registry, a: NodeArgs) -> Result<(), String> {
    let cfg = Config::load_with(&a.config, queries).map_err(|e| e.to_string())?;
    let opts = node::NodeOptions {
        first_core: a.first_core,
        pin: !a.no_pin,
        quiet: a.quiet || cfg.sink.kind == SinkKind::Stdout,
        events: a.json,
    };
    let name = a.name;
    let ended = node::run_node(&cfg, queries, &name, &opts)?;
    if let Some(r) = &ended.report {
        eprintln!("node {name}: {} records in, {} out in {:.3} s", r.records_in, r.records_out, r.seconds);
    }
    if let Some(outcome) = &ended.outcome {
        if a.json {
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

fn cmd_cluster(queries: &Registry, a: ClusterArgs) -> Result<(), String> {
    let reports = deploy::run_local_cluster(&this_exe()?, &a.config, queries, a.quiet)?;
    print_cluster_totals(&reports, a.json);
    Ok(())
}

/// This executable, which `spate cluster` starts as every node: the same
/// registry of queries on each.
fn this_exe() -> Result<PathBuf, String> {
    std::env::current_exe().map_err(|e| format!("cannot find this executable: {e}"))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_arguments_are_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn queries_lists_parameters_with_defaults() {
        let out = list_queries(&Registry::builtin());
        assert!(out.contains("keyed-sum — "), "{out}");
        assert!(out.contains("    keys = 100000"), "{out}");
        assert!(out.contains("    records = 10000000"), "{out}");
        assert!(out.contains("    file = (unset)"), "{out}");
    }
}
