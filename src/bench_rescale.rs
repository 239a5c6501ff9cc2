//! `spate bench rescale`: what live handoff costs and what scale-out buys,
//! within one process (ARCHITECTURE.md, *Handoff*).
//!
//! A keyed running sum over `keys` keys whose fold spends about `work_ns`
//! of CPU a record (a deterministic loop, so that the operator and not the
//! exchange is the bottleneck, as in SEEP's experiments), fed as fast as
//! the workers take it — or, with `rate`, at that many records a second
//! (open loop: the generator's schedule does not wait for the job, so a
//! stall shows as latency) — runs with `max_workers = 2` and one worker in
//! use. It measures for `phase_s` seconds, moves the upper half of the
//! bins to the second worker in steps of at most `max_bins` bins and
//! `max_bytes` bytes, `pace` times a step's time apart (scale-out), measures again, moves them back
//! (scale-in), measures a third time, and stops the job. It prints the
//! three throughputs, how long each move took (request to the last bin
//! merged on its new owner) and the bytes moved; with `rate`, the latency
//! before the scale-out (`steady_p99_us`) and during the two moves
//! (`during_p99_us`, `during_max_us`, and `unmoved_during_p99_us` of the
//! keys whose bins do not move), and the process's resident memory before
//! and during them. The output is counted, not checked
//! (`tests/handoff.rs` checks handoffs' outputs record by record).
//!
//! The measurement begins once the state is built and, with a rate, once
//! the backlog of building it is worked off (ten windows in a row with a
//! p99 under 20 ms, or a minute at most). *During* a move means the latencies the sinks published from the
//! request until [`TAIL_MS`] after its last step (a sink publishes every
//! 100 ms, so a record delivered in the last step's final moments is
//! counted). Windows of [`WINDOW_MS`] go to the report's `windows` (the
//! `--csv` file). With `SPATE_BENCH_ANSWER` set, `--nodes` prints the
//! coordinator's answers to the moves on stderr (each step's bins, bytes
//! and time).

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use spate_core::batch::Meta;
use spate_core::handoff::StepDone;
use spate_core::metrics::{JobMetrics, LatencyRecorder};
use spate_core::{now_ns, BoxPush, Dataflow, Push, Runtime, RuntimeConfig, Timestamp};
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
    /// Bytes of state a handoff step moves at most (about: see
    /// `Job::move_bins_sized`); `None`: only `max_bins` bounds a step.
    pub max_bytes: Option<u64>,
    /// After each step, wait this many times as long as it took.
    pub pace: f64,
    /// Records a second offered (open loop); `None`: as fast as the
    /// workers take them, and no latency is measured.
    pub rate: Option<u64>,
}

/// A window of [`WINDOW_MS`] of a run with a rate.
#[derive(Debug, Clone, Default)]
pub struct Window {
    /// Seconds since the measurement began.
    pub t_s: f64,
    /// What the job was doing: `before`, `scale-out`, `after`,
    /// `scale-in`, `back`.
    pub phase: &'static str,
    /// Records a second out.
    pub out_per_s: u64,
    /// p99 and maximum latency of the records published in it, µs (0:
    /// none).
    pub p99_us: u64,
    /// The maximum latency, µs.
    pub max_us: u64,
    /// p99 of the keys whose bins do not move, µs.
    pub unmoved_p99_us: u64,
    /// The process's resident memory, MiB.
    pub rss_mb: f64,
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
    /// With `--nodes`: milliseconds from the scale-out's request until the
    /// joining node ran its slot and a checkpoint of its epoch was
    /// complete (the first step follows); part of `handoff_ms`.
    pub join_ms: Option<u64>,
    /// Milliseconds the scale-in took.
    pub scale_in_ms: u64,
    /// Bytes of state the scale-out moved.
    pub moved_bytes: u64,
    /// Steps of the scale-out.
    pub steps: usize,
    /// The largest step of the scale-out, bytes.
    pub largest_step_bytes: u64,
    /// With a rate: latencies, µs, and resident memory, MiB.
    pub latency: Option<RescaleLatency>,
    /// With a rate: the run in windows.
    pub windows: Vec<Window>,
}

/// The latency and memory figures of a run with a rate.
#[derive(Debug, Clone, Default)]
pub struct RescaleLatency {
    /// p99 over the phase before the scale-out.
    pub steady_p99_us: u64,
    /// p99 over the two moves.
    pub during_p99_us: u64,
    /// The maximum over the two moves (`None`: not known, see `basis`).
    pub during_max_us: Option<u64>,
    /// p99 of the keys whose bins do not move, over the two moves.
    pub unmoved_during_p99_us: Option<u64>,
    /// The most resident memory in the phase before the scale-out.
    pub steady_rss_mb: f64,
    /// The most resident memory during the two moves.
    pub peak_rss_mb: f64,
    /// `records`: the p99s are over every record of a phase (one
    /// process); `windows`: of the nodes' 100 ms metrics lines, the median
    /// window before and the worst window during (node processes).
    pub basis: &'static str,
}

impl RescaleReport {
    /// The report as one JSON object.
    pub fn to_json(&self) -> String {
        let mut s = format!(
            "{{\"throughput_before\":{},\"throughput_after\":{},\"throughput_back\":{},\"scale_out_gain\":{:.3},\
             \"handoff_ms\":{},\"join_ms\":{},\"scale_in_ms\":{},\"moved_bytes\":{},\"steps\":{},\
             \"largest_step_bytes\":{}",
            self.throughput_before,
            self.throughput_after,
            self.throughput_back,
            self.throughput_after as f64 / self.throughput_before.max(1) as f64,
            self.handoff_ms,
            self.join_ms.map_or("null".to_string(), |v| v.to_string()),
            self.scale_in_ms,
            self.moved_bytes,
            self.steps,
            self.largest_step_bytes,
        );
        if let Some(l) = &self.latency {
            let opt = |v: Option<u64>| v.map_or("null".to_string(), |v| v.to_string());
            s += &format!(
                ",\"latency_basis\":\"{}\",\"steady_p99_us\":{},\"during_p99_us\":{},\"during_max_us\":{},\
                 \"unmoved_during_p99_us\":{},\"steady_rss_mb\":{:.1},\"peak_rss_mb\":{:.1}",
                l.basis,
                l.steady_p99_us,
                l.during_p99_us,
                opt(l.during_max_us),
                opt(l.unmoved_during_p99_us),
                l.steady_rss_mb,
                l.peak_rss_mb
            );
        }
        s.push('}');
        s
    }

    /// The windows as CSV, a header line first.
    pub fn to_csv(&self) -> String {
        let mut s = String::from("t_s,phase,out_per_s,p99_us,max_us,unmoved_p99_us,rss_mb\n");
        for w in &self.windows {
            s += &format!(
                "{:.2},{},{},{},{},{},{:.1}\n",
                w.t_s, w.phase, w.out_per_s, w.p99_us, w.max_us, w.unmoved_p99_us, w.rss_mb
            );
        }
        s
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

/// Keys for about `mb` MiB of the running sum's state.
pub fn keys_for_state_mb(mb: u64) -> u64 {
    ((mb << 20) / crate::bench_recovery::STATE_BYTES_PER_KEY).max(1)
}

/// Milliseconds of a window of a run with a rate.
pub const WINDOW_MS: u64 = 50;
/// How long after a move's last step its latencies still count as
/// *during* it (see the module documentation).
pub const TAIL_MS: u64 = 200;

/// With a rate, the measurement begins once the latency's p99 is this low
/// (µs; the backlog of building the state is worked off).
const WARM_P99_US: u64 = 20_000;

/// The bins the scale-out moves.
const UPPER: BinRange = BinRange { start: 2048, end: 4096 };

const PHASES: [&str; 6] = ["warm-up", "before", "scale-out", "after", "scale-in", "back"];

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
    let unmoved = JobMetrics::new();
    let measured = p.rate.is_some();
    let job = rt
        .start("rescale", work_dataflow(keys, iters, p.rate, measured.then(|| unmoved.clone())))
        .map_err(|e| format!("cannot start the job: {e}"))?;
    let phase = Arc::new(AtomicU8::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let last_p99 = Arc::new(AtomicU64::new(u64::MAX));
    let sampler = measured.then(|| {
        let (metrics, unmoved, phase, stop, last) =
            (job.metrics().clone(), unmoved.clone(), phase.clone(), stop.clone(), last_p99.clone());
        std::thread::spawn(move || sample(&metrics, &unmoved, &phase, &stop, &last))
    });
    let out = || job.metrics().records_out.load(Ordering::Relaxed);
    let measure = |secs: u64| {
        let (t0, n0) = (Instant::now(), out());
        std::thread::sleep(Duration::from_secs(secs));
        ((out() - n0) as f64 / t0.elapsed().as_secs_f64()) as u64
    };
    let mut r = RescaleReport::default();
    // Warm up: the state fills (the first `keys` records come at once),
    // the queues reach their steady depth.
    let t = Instant::now();
    while out() < keys && t.elapsed() < Duration::from_secs(600) {
        std::thread::sleep(Duration::from_millis(50));
    }
    // With a rate, until the backlog of the state's building is worked
    // off: ten windows in a row under the bound.
    let (mut calm, since) = (0, Instant::now());
    while measured && calm < 10 && since.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(WINDOW_MS));
        calm = if last_p99.load(Ordering::Relaxed) <= WARM_P99_US { calm + 1 } else { 0 };
    }
    std::thread::sleep(Duration::from_secs(1));
    let mv = |from, to| {
        let timeout = Duration::from_secs(60);
        let bounds = spate_core::assignment::StepBounds {
            max_bins: p.max_bins,
            max_bytes: p.max_bytes.unwrap_or(u64::MAX),
            pace_permille: (p.pace * 1000.0).round() as u32,
        };
        job.move_bins_sized(UPPER, from, to, bounds, timeout)
    };
    phase.store(1, Ordering::Relaxed);
    r.throughput_before = measure(p.phase_s);
    phase.store(2, Ordering::Relaxed);
    let t = Instant::now();
    let steps: Vec<StepDone> = mv(0, 1).map_err(|e| format!("scale-out: {e}"))?;
    r.handoff_ms = t.elapsed().as_millis() as u64;
    r.moved_bytes = steps.iter().map(|s| s.bytes).sum();
    r.largest_step_bytes = steps.iter().map(|s| s.bytes).max().unwrap_or(0);
    r.steps = steps.len();
    std::thread::sleep(Duration::from_millis(TAIL_MS));
    phase.store(3, Ordering::Relaxed);
    std::thread::sleep(Duration::from_millis(500 - TAIL_MS));
    r.throughput_after = measure(p.phase_s);
    phase.store(4, Ordering::Relaxed);
    let t = Instant::now();
    mv(1, 0).map_err(|e| format!("scale-in: {e}"))?;
    r.scale_in_ms = t.elapsed().as_millis() as u64;
    std::thread::sleep(Duration::from_millis(TAIL_MS));
    phase.store(5, Ordering::Relaxed);
    std::thread::sleep(Duration::from_millis(500 - TAIL_MS));
    r.throughput_back = measure(p.phase_s);
    stop.store(true, Ordering::Relaxed);
    if let Some(s) = sampler {
        let (windows, latency) = s.join().map_err(|_| "the sampling thread panicked".to_string())?;
        r.windows = windows;
        r.latency = Some(latency);
    }
    job.cancel();
    // A cancelled job reports that it was cancelled.
    let _ = job.wait();
    Ok(r)
}

/// The sampling thread of a run with a rate: a [`Window`] every
/// [`WINDOW_MS`] until `stop`, and the phases' figures.
fn sample(
    metrics: &JobMetrics,
    unmoved: &JobMetrics,
    phase: &AtomicU8,
    stop: &AtomicBool,
    last_p99: &AtomicU64,
) -> (Vec<Window>, RescaleLatency) {
    let hist = spate_core::metrics::latency_histogram;
    let (mut steady, mut during, mut during_unmoved) = (hist(), hist(), hist());
    let (mut steady_rss, mut peak_rss) = (0f64, 0f64);
    let mut windows = Vec::new();
    let t0 = Instant::now();
    let mut last_out = metrics.records_out.load(Ordering::Relaxed);
    let mut last = Instant::now();
    // Anything before the first window is the warm-up's.
    let _ = (metrics.take_interval_latency(), unmoved.take_interval_latency());
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(WINDOW_MS));
        let (all, still) = (metrics.take_interval_latency(), unmoved.take_interval_latency());
        let out = metrics.records_out.load(Ordering::Relaxed);
        let secs = last.elapsed().as_secs_f64().max(1e-3);
        last = Instant::now();
        let ph = phase.load(Ordering::Relaxed) as usize;
        let rss = rss_mb();
        let q = quantile_us;
        if !all.is_empty() {
            last_p99.store(q(&all, 0.99), Ordering::Relaxed);
        }
        windows.push(Window {
            t_s: t0.elapsed().as_secs_f64(),
            phase: PHASES[ph.min(PHASES.len() - 1)],
            out_per_s: ((out - last_out) as f64 / secs) as u64,
            p99_us: q(&all, 0.99),
            max_us: if all.is_empty() { 0 } else { all.max() / 1000 },
            unmoved_p99_us: q(&still, 0.99),
            rss_mb: rss,
        });
        last_out = out;
        match ph {
            1 => {
                let _ = steady.add(&all);
                steady_rss = steady_rss.max(rss);
            }
            2 | 4 => {
                let _ = during.add(&all);
                let _ = during_unmoved.add(&still);
                peak_rss = peak_rss.max(rss);
            }
            _ => {}
        }
    }
    let q = quantile_us;
    let latency = RescaleLatency {
        steady_p99_us: q(&steady, 0.99),
        during_p99_us: q(&during, 0.99),
        during_max_us: Some(if during.is_empty() { 0 } else { during.max() / 1000 }),
        unmoved_during_p99_us: Some(q(&during_unmoved, 0.99)),
        steady_rss_mb: steady_rss,
        peak_rss_mb: peak_rss,
        basis: "records",
    };
    (windows, latency)
}

/// Quantile `q` of latencies `h` (ns), µs; 0 if there are none.
fn quantile_us(h: &Histogram<u64>, q: f64) -> u64 {
    if h.is_empty() {
        0
    } else {
        h.value_at_quantile(q) / 1000
    }
}

/// The process's resident memory, MiB (0 where `/proc` cannot tell).
fn rss_mb() -> f64 {
    rss_mb_of("self")
}

/// Process `pid`'s resident memory (`self`: this one's), MiB.
fn rss_mb_of(pid: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/statm"))
        .ok()
        .and_then(|s| s.split_whitespace().nth(1).and_then(|n| n.parse::<u64>().ok()))
        .map_or(0.0, |pages| (pages * 4096) as f64 / (1 << 20) as f64)
}

/// The bench's sink with a rate: every record's latency into the job's
/// metrics, and those of keys outside [`UPPER`] into `unmoved` too.
struct SplitLatency {
    all: LatencyRecorder,
    unmoved: LatencyRecorder,
}

impl SplitLatency {
    #[inline]
    fn take(&mut self, key: u64, meta: &Meta, now: u64) {
        self.all.record(meta.ingest_ns, now);
        let bin = spate_state::keyspace::bin_of(spate_state::hash_u64(key), 12);
        if !(UPPER.start..UPPER.end).contains(&bin) {
            self.unmoved.record(meta.ingest_ns, now);
        }
    }
}

impl Push<(u64, u64)> for SplitLatency {
    fn push(&mut self, rec: (u64, u64), meta: Meta) {
        self.take(rec.0, &meta, now_ns());
    }
    fn push_burst(&mut self, recs: &mut Vec<((u64, u64), Meta)>) {
        let now = now_ns();
        for (rec, meta) in recs.iter() {
            self.take(rec.0, meta, now);
        }
        recs.clear();
    }
    fn watermark(&mut self, _wm: Timestamp) {}
    fn barrier(&mut self, _id: u64) {}
    fn flush(&mut self) {}
    fn finish(&mut self) {
        self.all.publish();
        self.unmoved.publish();
    }
}

/// The bench's dataflow: the running sum whose fold spends `iters` loop
/// steps a record (see [`calibrate`]), over `keys` keys, at `rate` records
/// a second (the first `keys` at once) or as fast as the workers take
/// them, its outputs counted — with `unmoved`, their latencies recorded
/// ([`SplitLatency`]).
fn work_dataflow(
    keys: u64,
    iters: u64,
    rate: Option<u64>,
    unmoved: Option<Arc<JobMetrics>>,
) -> impl Fn(&Dataflow) + Send + Sync + 'static {
    move |df: &Dataflow| {
        let spec = GeneratorSpec { records: None, rate_per_s: rate, offset: 0, burst: keys };
        let sums = df
            .generate("gen", spec, move |i| (i % keys, i), |i| i)
            .key_by("by-key", |r: &(u64, u64)| r.0)
            .fold("sum", || 0u64, move |a, r| *a = a.wrapping_add(spin(iters, r.1) & 1));
        match &unmoved {
            Some(u) => {
                let u = u.clone();
                sums.sink("latency", move |ctx| {
                    Box::new(SplitLatency {
                        all: LatencyRecorder::new(ctx.metrics.clone()),
                        unmoved: LatencyRecorder::new(u.clone()),
                    }) as BoxPush<(u64, u64)>
                })
            }
            None => sums.sink_count("count", rate.is_some(), None),
        }
    }
}

/// `spate bench rescale-node`: one node process of `spate bench rescale
/// --nodes`, running `work_dataflow` as node `name` of `cfg`.
pub fn run_work_node(
    cfg: &crate::config::Config,
    name: &str,
    keys: u64,
    work_ns: u64,
    rate: Option<u64>,
) -> Result<(), String> {
    let iters = calibrate(work_ns);
    let opts = crate::node::NodeOptions { first_core: None, pin: false, quiet: true, events: true };
    let build: spate_core::control::Build =
        std::sync::Arc::new(work_dataflow(keys.max(1), iters, rate, None));
    crate::node::run_node_with(cfg, name, &opts, build).map(|_| ())
}

/// What `spate bench rescale --nodes` runs: the measurement of
/// [`RescaleParams`] with the two workers in two node processes of a local
/// cluster: `a` runs the job, `b` waits in the pool (`spare = true`) and
/// joins the running job at the scale-out, for the job's second worker
/// (parked on `a` until then, `[cluster] max_workers = 2`), and leaves it
/// at the scale-in (`scale-in --node b`, back to the pool); driven by
/// `spate ctl`'s requests (without a rate: as fast as the workers take the
/// records).
pub fn run_nodes(exe: &std::path::Path, p: &RescaleParams) -> Result<RescaleReport, String> {
    use crate::deploy::{resolve_ports, LocalNodes};
    use spate_core::control::METRICS_ENV;
    let tmp = tempfile::tempdir().map_err(|e| format!("cannot create a temporary directory: {e}"))?;
    let dir = tmp.path();
    let keys = p.keys.max(1);
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
         [cluster]\nconnect_timeout_ms = 30000\nfailure_timeout_ms = 5000\nmax_workers = 2\nsecret_file = {:?}\n",
        dir.join("data").display().to_string(),
        secret_file.display().to_string(),
    );
    for (n, spare) in [("a", false), ("b", true)] {
        text += &format!("[[cluster.nodes]]\nname = \"{n}\"\naddress = \"127.0.0.1:0\"\nspare = {spare}\n");
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
        if let Some(r) = p.rate {
            c.args(["--rate", &r.to_string()]);
        }
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
    // With a rate, until the backlog of building the state is worked off:
    // ten metrics lines in a row under the bound (at most a minute: a
    // job that never gets there is measured as it is).
    eprintln!("bench rescale: the state of {keys} keys is built ({} s)", t.elapsed().as_secs());
    let calm = Instant::now();
    while p.rate.is_some() && calm.elapsed() < Duration::from_secs(60) {
        let lines = nodes.metrics();
        if lines.len() >= 10 && lines[lines.len() - 10..].iter().all(|m| m.p99_us <= WARM_P99_US) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let measure = |nodes: &LocalNodes, secs: u64| {
        let (t0, n0) = (Instant::now(), out(nodes));
        std::thread::sleep(Duration::from_secs(secs));
        ((out(nodes) - n0) as f64 / t0.elapsed().as_secs_f64()) as u64
    };
    // The nodes' resident memory, summed, every window.
    let stop = Arc::new(AtomicBool::new(false));
    let pids: Vec<String> = nodes.pids().into_iter().map(|(_, pid)| pid.to_string()).collect();
    let rss = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut v = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                v.push((unix_ms(), pids.iter().map(|p| rss_mb_of(p)).sum::<f64>()));
                std::thread::sleep(Duration::from_millis(WINDOW_MS));
            }
            v
        })
    };
    let mut r = RescaleReport::default();
    std::thread::sleep(Duration::from_secs(1));
    let mut marks = vec![unix_ms()];
    r.throughput_before = measure(&nodes, p.phase_s);
    let scale = |req: crate::ctl::CtlRequest| {
        let t = Instant::now();
        let answer = crate::ctl::ctl(
            &cfg,
            &req,
            Some(p.max_bins),
            p.max_bytes,
            (p.pace > 0.0).then_some(p.pace),
            Duration::from_secs(300),
        )?;
        Ok::<_, String>((t.elapsed().as_millis() as u64, answer))
    };
    marks.push(unix_ms());
    eprintln!("bench rescale: scaling out ({} records/s before)", r.throughput_before);
    let out_req = crate::ctl::CtlRequest::Scale { workers: 2 };
    let (ms, answer) = scale(out_req).map_err(|e| format!("scale-out: {e}"))?;
    r.handoff_ms = ms;
    (r.moved_bytes, r.steps) = moved(&answer);
    r.largest_step_bytes = largest_step(&answer);
    r.join_ms = answer
        .split("joined from the pool: ")
        .nth(1)
        .and_then(|t| t.split(" after ").nth(1))
        .and_then(|t| t.split(" ms").next())
        .and_then(|n| n.parse().ok());
    if std::env::var_os("SPATE_BENCH_ANSWER").is_some() {
        eprintln!("{answer}");
    }
    marks.push(unix_ms() + TAIL_MS);
    std::thread::sleep(Duration::from_millis(500));
    marks.push(unix_ms());
    r.throughput_after = measure(&nodes, p.phase_s);
    marks.push(unix_ms());
    eprintln!("bench rescale: scaling in ({} records/s on two nodes)", r.throughput_after);
    let in_req = crate::ctl::CtlRequest::ScaleIn { node: "b".into(), exit: false };
    let (ms, _) = scale(in_req).map_err(|e| format!("scale-in: {e}"))?;
    r.scale_in_ms = ms;
    marks.push(unix_ms() + TAIL_MS);
    std::thread::sleep(Duration::from_millis(500));
    r.throughput_back = measure(&nodes, p.phase_s);
    stop.store(true, Ordering::Relaxed);
    let rss = rss.join().map_err(|_| "the memory sampling thread panicked".to_string())?;
    if p.rate.is_some() {
        (r.windows, r.latency) = node_windows(&nodes.metrics(), &rss, &marks);
    }
    for n in ["b", "a"] {
        nodes.kill(n)?;
    }
    Ok(r)
}

/// The windows and latency figures of a run of node processes with a
/// rate, from the nodes' metrics lines (one a node every 100 ms, each
/// with the p99 of the records since the one before), the memory
/// samples `rss` and the phases' `marks` (Unix ms: the phase before
/// began, the scale-out began and ended (plus its tail), the phase after
/// began, the scale-in began and ended). A node's line is not a
/// histogram, so the figures are of windows: `steady_p99_us` the median
/// window p99 before, `during_p99_us` the worst window p99 during the
/// moves; the maximum and the unmoved keys' p99 are not known.
fn node_windows(
    lines: &[spate_core::control::MetricsLine],
    rss: &[(u64, f64)],
    marks: &[u64],
) -> (Vec<Window>, Option<RescaleLatency>) {
    let [before, out_from, out_to, _after, in_from, in_to] = marks[..] else { return (Vec::new(), None) };
    let phase_at = |ms: u64| match ms {
        m if m < before => 0,
        m if m < out_from => 1,
        m if m < out_to => 2,
        // From the end of the scale-out's tail (`after` is later) on.
        m if m < in_from => 3,
        m if m < in_to => 4,
        _ => 5,
    };
    let rss_at = |ms: u64| rss.iter().rev().find(|(t, _)| *t <= ms).map_or(0.0, |(_, v)| *v);
    let t0 = lines.first().map_or(0, |m| m.unix_ms);
    let windows: Vec<Window> = lines
        .iter()
        .map(|m| Window {
            t_s: m.unix_ms.saturating_sub(t0) as f64 / 1000.0,
            phase: PHASES[phase_at(m.unix_ms)],
            out_per_s: m.records_out * 10,
            p99_us: m.p99_us,
            max_us: 0,
            unmoved_p99_us: 0,
            rss_mb: rss_at(m.unix_ms),
        })
        .collect();
    let mut steady: Vec<u64> =
        lines.iter().filter(|m| phase_at(m.unix_ms) == 1 && m.p99_us > 0).map(|m| m.p99_us).collect();
    steady.sort_unstable();
    let during = |m: &&spate_core::control::MetricsLine| matches!(phase_at(m.unix_ms), 2 | 4);
    let max_rss = |ph: &[usize]| {
        rss.iter().filter(|(t, _)| ph.contains(&phase_at(*t))).map(|(_, v)| *v).fold(0.0, f64::max)
    };
    let latency = RescaleLatency {
        steady_p99_us: steady.get(steady.len() / 2).copied().unwrap_or(0),
        during_p99_us: lines.iter().filter(during).map(|m| m.p99_us).max().unwrap_or(0),
        during_max_us: None,
        unmoved_during_p99_us: None,
        steady_rss_mb: max_rss(&[1]),
        peak_rss_mb: max_rss(&[2, 4]),
        basis: "windows",
    };
    (windows, Some(latency))
}

/// Milliseconds since the Unix epoch (the nodes' metrics lines' clock).
fn unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// The largest step's bytes in a rescale's answer (its `step …: B bytes`
/// lines).
fn largest_step(answer: &str) -> u64 {
    answer
        .lines()
        .filter_map(|l| l.trim().strip_prefix("step ")?.split(": ").nth(2)?.split(' ').next()?.parse().ok())
        .max()
        .unwrap_or(0)
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
