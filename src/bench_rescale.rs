//! `spate bench rescale`: what live handoff costs and what scale-out buys,
//! within one process (ARCHITECTURE.md, *Handoff*).
//!
//! A keyed running sum over `keys` keys whose fold spends about `work_ns`
//! of CPU a record (a deterministic loop, so that the operator and not the
//! exchange is the bottleneck, as in SEEP's experiments), fed as fast as
//! the workers take it, runs with `max_workers = 2` and one worker in use.
//! It measures the throughput for `phase_s` seconds, moves the upper half
//! of the bins to the second worker in steps of `max_bins` (scale-out),
//! measures again, moves them back (scale-in), measures a third time, and
//! stops the job. It prints the three throughputs, how long each move
//! took (request to the last bin merged on its new owner), and the bytes
//! moved. The output is counted, not checked (`tests/handoff.rs` checks
//! handoffs' outputs record by record).

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use spate_core::handoff::StepDone;
use spate_core::{Dataflow, Runtime, RuntimeConfig};
use spate_ops::prelude::*;
use spate_state::BinRange;

/// What to measure.
#[derive(Debug, Clone)]
pub struct RescaleParams {
    /// Keys of the running sum (its state).
    pub keys: u64,
    /// CPU nanoseconds the fold spends a record (about).
    pub work_ns: u64,
    /// Seconds of each measured phase.
    pub phase_s: u64,
    /// Bins a handoff step moves at most.
    pub max_bins: u32,
}

/// What was measured.
#[derive(Debug, Clone, Default)]
pub struct RescaleReport {
    /// Records a second on one worker, before the scale-out.
    pub throughput_before: u64,
    /// Records a second on two workers.
    pub throughput_after: u64,
    /// Records a second on one worker again, after the scale-in.
    pub throughput_back: u64,
    /// Milliseconds the scale-out took (all its steps).
    pub handoff_ms: u64,
    /// Milliseconds the scale-in took.
    pub scale_in_ms: u64,
    /// Bytes of state the scale-out moved.
    pub moved_bytes: u64,
    /// Steps of the scale-out.
    pub steps: usize,
}

impl RescaleReport {
    /// The report as one JSON object.
    pub fn to_json(&self) -> String {
        format!(
            "{{\"throughput_before\":{},\"throughput_after\":{},\"throughput_back\":{},\"scale_out_gain\":{:.3},\
             \"handoff_ms\":{},\"scale_in_ms\":{},\"moved_bytes\":{},\"steps\":{}}}",
            self.throughput_before,
            self.throughput_after,
            self.throughput_back,
            self.throughput_after as f64 / self.throughput_before.max(1) as f64,
            self.handoff_ms,
            self.scale_in_ms,
            self.moved_bytes,
            self.steps
        )
    }
}

/// Iterations of [`spin`] that take about `ns` nanoseconds here.
pub(crate) fn calibrate(ns: u64) -> u64 {
    if ns == 0 {
        return 0;
    }
    let n = 1_000_000;
    let t = Instant::now();
    std::hint::black_box(spin(n, 1));
    let per = t.elapsed().as_nanos().max(1) as f64 / n as f64;
    ((ns as f64 / per) as u64).max(1)
}

/// A deterministic loop of `n` steps (the fold's work).
#[inline(never)]
pub(crate) fn spin(n: u64, seed: u64) -> u64 {
    let mut x = seed;
    for _ in 0..n {
        x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
    }
    x
}

/// Runs the measurement (see the module documentation).
pub fn run(dir: &std::path::Path, p: &RescaleParams) -> Result<RescaleReport, String> {
    let iters = calibrate(p.work_ns);
    let keys = p.keys.max(1);
    let rt = Runtime::new(RuntimeConfig {
        workers: 1,
        max_workers: 2,
        pin: false,
        data_dir: dir.to_path_buf(),
        ..Default::default()
    });
    let job =
        rt.start("rescale", work_dataflow(keys, iters)).map_err(|e| format!("cannot start the job: {e}"))?;
    let out = || job.metrics().records_out.load(Ordering::Relaxed);
    let phase = |secs: u64| {
        let (t0, n0) = (Instant::now(), out());
        std::thread::sleep(Duration::from_secs(secs));
        ((out() - n0) as f64 / t0.elapsed().as_secs_f64()) as u64
    };
    let mut r = RescaleReport::default();
    // Warm up: the state fills, the queues reach their steady depth.
    std::thread::sleep(Duration::from_secs(1));
    r.throughput_before = phase(p.phase_s);
    let upper = BinRange::new(2048, 4096);
    let t = Instant::now();
    let steps: Vec<StepDone> = job
        .move_bins_by(upper, 0, 1, p.max_bins, Duration::from_secs(30))
        .map_err(|e| format!("scale-out: {e}"))?;
    r.handoff_ms = t.elapsed().as_millis() as u64;
    r.moved_bytes = steps.iter().map(|s| s.bytes).sum();
    r.steps = steps.len();
    std::thread::sleep(Duration::from_millis(500));
    r.throughput_after = phase(p.phase_s);
    let t = Instant::now();
    job.move_bins_by(upper, 1, 0, p.max_bins, Duration::from_secs(30))
        .map_err(|e| format!("scale-in: {e}"))?;
    r.scale_in_ms = t.elapsed().as_millis() as u64;
    std::thread::sleep(Duration::from_millis(500));
    r.throughput_back = phase(p.phase_s);
    job.cancel();
    // A cancelled job reports that it was cancelled.
    let _ = job.wait();
    Ok(r)
}

/// The bench's dataflow: the running sum whose fold spends `iters` loop
/// steps a record (see [`calibrate`]), over `keys` keys, as fast as the
/// workers take it, its outputs counted.
fn work_dataflow(keys: u64, iters: u64) -> impl Fn(&Dataflow) + Send + Sync + 'static {
    move |df: &Dataflow| {
        let spec = GeneratorSpec { records: None, rate_per_s: None, offset: 0, burst: 0 };
        df.generate("gen", spec, move |i| (i % keys, i), |i| i)
            .key_by("by-key", |r: &(u64, u64)| r.0)
            .fold("sum", || 0u64, move |a, r| *a = a.wrapping_add(spin(iters, r.1) & 1))
            .sink_count("count", false, None);
    }
}

/// `spate bench rescale-node`: one node process of `spate bench rescale
/// --nodes`, running `work_dataflow` as node `name` of `cfg`.
pub fn run_work_node(cfg: &crate::config::Config, name: &str, keys: u64, work_ns: u64) -> Result<(), String> {
    let iters = calibrate(work_ns);
    let opts = crate::node::NodeOptions { first_core: None, pin: false, quiet: true, events: true };
    let build: spate_core::control::Build = std::sync::Arc::new(work_dataflow(keys.max(1), iters));
    crate::node::run_node_with(cfg, name, &opts, build).map(|_| ())
}

/// What `spate bench rescale --nodes` runs: the measurement of
/// [`RescaleParams`] with the two workers in two node processes of a local
/// cluster (`b` owns nothing until the scale-out, `[cluster]
/// start_workers = 1`), driven by `spate ctl`'s requests; `state_mb`, if
/// given, sizes the keys so that the state totals about that.
pub fn run_nodes(
    exe: &std::path::Path,
    p: &RescaleParams,
    state_mb: Option<u64>,
) -> Result<RescaleReport, String> {
    use crate::deploy::{resolve_ports, LocalNodes};
    use spate_core::control::METRICS_ENV;
    let tmp = tempfile::tempdir().map_err(|e| format!("cannot create a temporary directory: {e}"))?;
    let dir = tmp.path();
    let keys = state_mb.map_or(p.keys, |mb| ((mb << 20) / crate::bench_recovery::STATE_BYTES_PER_KEY).max(1));
    // The nodes and this process's `spate ctl` requests share a secret.
    let (_, secret) =
        spate_net::auth::ClusterSecret::generate().map_err(|e| format!("bench rescale: {e}"))?;
    let secret_file = dir.join("secret");
    std::fs::write(&secret_file, secret).map_err(|e| format!("{}: {e}", secret_file.display()))?;
    let mut text = format!(
        "[query]\nname = \"keyed-sum\"\n\
         [runtime]\npin = false\ndata_dir = {:?}\n\
         [sink]\nkind = \"count\"\n\
         [checkpoint]\ninterval_ms = 1000\nbackups = 1\n\
         [cluster]\nconnect_timeout_ms = 30000\nfailure_timeout_ms = 5000\nstart_workers = 1\nsecret_file = {:?}\n",
        dir.join("data").display().to_string(),
        secret_file.display().to_string(),
    );
    for n in ["a", "b"] {
        text += &format!("[[cluster.nodes]]\nname = \"{n}\"\naddress = \"127.0.0.1:0\"\n");
    }
    let path = dir.join("cluster.toml");
    std::fs::write(&path, resolve_ports(&text)?).map_err(|e| format!("{}: {e}", path.display()))?;
    let cfg = crate::config::Config::load(&path).map_err(|e| e.to_string())?;
    let (keys_s, work_s) = (keys.to_string(), p.work_ns.to_string());
    let mut nodes = LocalNodes::start_with(&path, |name| {
        let mut c = std::process::Command::new(exe);
        c.args([
            "bench",
            "rescale-node",
            "--name",
            name,
            "--keys",
            &keys_s,
            "--work-ns",
            &work_s,
            "--config",
        ])
        .arg(&path)
        .env(METRICS_ENV, "100");
        c
    })?;
    nodes.wait_event(Duration::from_secs(120), |e| e.what == "running 0")?;
    let out = |nodes: &LocalNodes| nodes.metrics().iter().map(|m| m.records_out).sum::<u64>();
    // The first record of every key builds the state.
    let t = Instant::now();
    while out(&nodes) < keys + keys / 10 {
        if t.elapsed() > Duration::from_secs(600) {
            return Err(format!("the state of {keys} keys was not built within 600 s"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let phase = |nodes: &LocalNodes, secs: u64| {
        let (t0, n0) = (Instant::now(), out(nodes));
        std::thread::sleep(Duration::from_secs(secs));
        ((out(nodes) - n0) as f64 / t0.elapsed().as_secs_f64()) as u64
    };
    let mut r = RescaleReport::default();
    std::thread::sleep(Duration::from_secs(1));
    r.throughput_before = phase(&nodes, p.phase_s);
    let scale = |workers| {
        let t = Instant::now();
        let answer = crate::ctl::ctl(
            &cfg,
            &crate::ctl::CtlRequest::Scale { workers },
            Some(p.max_bins),
            Duration::from_secs(300),
        )?;
        Ok::<_, String>((t.elapsed().as_millis() as u64, answer))
    };
    let (ms, answer) = scale(2).map_err(|e| format!("scale-out: {e}"))?;
    r.handoff_ms = ms;
    (r.moved_bytes, r.steps) = moved(&answer);
    std::thread::sleep(Duration::from_millis(500));
    r.throughput_after = phase(&nodes, p.phase_s);
    let (ms, _) = scale(1).map_err(|e| format!("scale-in: {e}"))?;
    r.scale_in_ms = ms;
    std::thread::sleep(Duration::from_millis(500));
    r.throughput_back = phase(&nodes, p.phase_s);
    for n in ["b", "a"] {
        nodes.kill(n)?;
    }
    Ok(r)
}

/// `(bytes, steps)` of a rescale's answer (`… moved N bins (B bytes of
/// state) in K steps, …`).
fn moved(answer: &str) -> (u64, usize) {
    let num_before = |s: &str, word: &str| {
        s.split(word)
            .next()
            .and_then(|h| h.split_whitespace().last())
            .and_then(|n| n.trim_start_matches('(').parse().ok())
    };
    (num_before(answer, " bytes of state").unwrap_or(0), num_before(answer, " steps").unwrap_or(0) as usize)
}
