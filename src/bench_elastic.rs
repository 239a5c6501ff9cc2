//! `spate bench elastic`: a scaling policy in the loop (ARCHITECTURE.md,
//! *Elasticity*).
//!
//! A keyed running count and sum over `keys` keys, whose fold spends about
//! `work_ns` of CPU a record (as in `spate bench rescale`), is fed by a
//! generator paced by a rate schedule, in one process started with
//! `max_workers` workers of which one is in use at first. A
//! [`LocalScaler`] runs the policy every `interval_ms` and applies its
//! decisions by live handoff. The bench prints each decision; per step of
//! the schedule the decisions it took (`steps_to_converge`) and, for a
//! step up, the time from the step to the first half second whose p99 is
//! back under the target (`time_to_relief_ms`); p99 and workers in use
//! over time; and the exactly-once accounting: every output is checked
//! against the closed form of its key's sum (one source partition, so a
//! key's records arrive in index order), and inputs are counted against
//! outputs (`lost_records`, `duplicated_records`, `wrong_sums`).
//!
//! Not done: the fixed-size calibration runs that would give
//! `overprovision`, and a pool of nodes (the in-process job grows onto
//! its own free workers only).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use spate_core::control::scaling::local::{json_escape, LocalScaler, ScalingEvent};
use spate_core::control::scaling::{PolicyKind, ScalingConfig};
use spate_core::{Dataflow, Runtime, RuntimeConfig};
use spate_ops::prelude::*;

use crate::bench_rescale::{calibrate, spin};

/// What to run.
#[derive(Debug, Clone)]
pub struct ElasticParams {
    /// `[second, records a second]` points.
    pub schedule: Vec<[u64; 2]>,
    /// Ramps between the points instead of steps.
    pub ramp: bool,
    /// Seconds to run (the generator stops at the schedule's count by
    /// then; the job then drains).
    pub seconds: u64,
    /// The policy and its tunables.
    pub scaling: ScalingConfig,
    /// Workers the process starts (1 in use at first).
    pub max_workers: usize,
    /// CPU nanoseconds the fold spends a record (about).
    pub work_ns: u64,
    /// Distinct keys.
    pub keys: u64,
    /// The latency target of `time_to_relief_ms`, µs.
    pub target_p99_us: u64,
}

/// One half second of the run.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// Seconds from the start.
    pub t_s: f64,
    /// Records a second in and out.
    pub in_per_s: f64,
    /// Records a second out.
    pub out_per_s: f64,
    /// p99 of the latencies recorded in it, µs (0: none).
    pub p99_us: u64,
    /// Workers owning bins at its end.
    pub workers: usize,
}

/// What was measured.
#[derive(Debug, Clone, Default)]
pub struct ElasticReport {
    /// The policy's name.
    pub policy: String,
    /// Every decision.
    pub events: Vec<(f64, ScalingEvent)>,
    /// Per schedule point after the first: decisions until the next.
    pub steps_to_converge: Vec<usize>,
    /// Per schedule point after the first where the rate rises: ms to
    /// relief (`None`: p99 never came back under the target).
    pub time_to_relief_ms: Vec<Option<u64>>,
    /// The run, half a second at a time.
    pub samples: Vec<Sample>,
    /// Records the source produced.
    pub records_in: u64,
    /// Records that reached the sink.
    pub records_out: u64,
    /// Outputs whose sum was not its key's closed form.
    pub wrong_sums: u64,
    /// Overall p99, µs.
    pub p99_us: u64,
}

impl ElasticReport {
    /// Inputs with no output.
    pub fn lost_records(&self) -> u64 {
        self.records_in.saturating_sub(self.records_out)
    }

    /// Outputs beyond the inputs.
    pub fn duplicated_records(&self) -> u64 {
        self.records_out.saturating_sub(self.records_in)
    }

    /// The report as one JSON object.
    pub fn to_json(&self, p: &ElasticParams) -> String {
        let schedule: Vec<String> = p.schedule.iter().map(|[t, r]| format!("[{t},{r}]")).collect();
        let decisions: Vec<String> = self
            .events
            .iter()
            .map(|(t, e)| {
                let j = e.to_json();
                format!("{{\"t_s\":{t:.2},{}", &j[1..])
            })
            .collect();
        let relief: Vec<String> =
            self.time_to_relief_ms.iter().map(|r| r.map_or("null".into(), |v| v.to_string())).collect();
        let steps: Vec<String> = self.steps_to_converge.iter().map(ToString::to_string).collect();
        let over: Vec<String> =
            self.samples.iter().map(|s| format!("[{:.1},{},{}]", s.t_s, s.p99_us, s.workers)).collect();
        format!(
            "{{\"policy\":\"{}\",\"schedule\":[{}],\"ramp\":{},\"work_ns\":{},\"max_workers\":{},\
             \"decisions\":[{}],\"steps_to_converge\":[{}],\"time_to_relief_ms\":[{}],\"target_p99_us\":{},\
             \"p99_us\":{},\"p99_over_time\":[{}],\"records_in\":{},\"records_out\":{},\"lost_records\":{},\
             \"duplicated_records\":{},\"wrong_sums\":{}}}",
            json_escape(&self.policy),
            schedule.join(","),
            p.ramp,
            p.work_ns,
            p.max_workers,
            decisions.join(","),
            steps.join(","),
            relief.join(","),
            p.target_p99_us,
            self.p99_us,
            over.join(","),
            self.records_in,
            self.records_out,
            self.lost_records(),
            self.duplicated_records(),
            self.wrong_sums
        )
    }

    /// Latency and workers over time, with each decision marked: CSV.
    pub fn to_csv(&self) -> String {
        let mut s = String::from("t_s,in_per_s,out_per_s,p99_us,workers,decision\n");
        let mut events = self.events.iter().peekable();
        for x in &self.samples {
            let mut mark = String::new();
            while let Some((t, e)) = events.peek() {
                if *t > x.t_s {
                    break;
                }
                mark = format!("{} -> {}", e.decision.from_workers, e.decision.to_workers);
                events.next();
            }
            s += &format!(
                "{:.1},{:.0},{:.0},{},{},{mark}\n",
                x.t_s, x.in_per_s, x.out_per_s, x.p99_us, x.workers
            );
        }
        s
    }
}

/// Runs the bench (see the module documentation).
pub fn run(dir: &std::path::Path, p: &ElasticParams) -> Result<ElasticReport, String> {
    let schedule = RateSchedule::new(&p.schedule, p.ramp).map_err(|e| format!("--schedule: {e}"))?;
    p.scaling.validate()?;
    let records = schedule.records_by(p.seconds as f64).max(1);
    let iters = calibrate(p.work_ns);
    let keys = p.keys.max(1);
    let wrong = Arc::new(AtomicU64::new(0));
    let rt = Runtime::new(RuntimeConfig {
        workers: 1,
        max_workers: p.max_workers.max(1),
        pin: false,
        data_dir: dir.to_path_buf(),
        load_interval_ms: p.scaling.interval_ms,
        ..Default::default()
    });
    let build = {
        let (wrong, schedule) = (wrong.clone(), schedule.clone());
        move |df: &Dataflow| {
            let spec = GeneratorSpec { records: Some(records), rate_per_s: None, offset: 0, burst: 0 };
            let wrong = wrong.clone();
            df.generate_scheduled(
                "gen",
                spec,
                Some(schedule.clone()),
                FnRecords(move |i| (i % keys, i)),
                |i| i,
            )
            .key_by("by-key", |r: &(u64, u64)| r.0)
            .fold(
                "sum",
                || (0u64, 0u64),
                move |a, r| {
                    a.0 += 1;
                    a.1 = a.1.wrapping_add(r.1);
                    std::hint::black_box(spin(iters, r.1));
                },
            )
            .map("check", move |(k, (m, s)): (u64, (u64, u64))| {
                // The first m records of key k: k, k + keys, ...
                let want =
                    m.wrapping_mul(k).wrapping_add(keys.wrapping_mul(m.wrapping_mul(m.wrapping_sub(1)) / 2));
                if s != want {
                    wrong.fetch_add(1, Ordering::Relaxed);
                }
                (k, s)
            })
            .sink_count("count", true, None);
        }
    };
    let job = rt.start("elastic", build).map_err(|e| format!("cannot start the job: {e}"))?;
    let mut scaler = LocalScaler::new(p.scaling.clone());
    let metrics = job.metrics().clone();
    let started = Instant::now();
    let mut r = ElasticReport { policy: p.scaling.policy.name().to_string(), ..Default::default() };
    let limit = Duration::from_secs(p.seconds + 120);
    // Samples are taken on a thread of their own, so that a decision's
    // handoff (which runs on this one) shows in them.
    let timed_out = std::thread::scope(|scope| {
        let sampler = scope.spawn(|| {
            let mut samples = Vec::new();
            let (mut last_in, mut last_out, mut last_t) = (0u64, 0u64, 0.0f64);
            let mut next = 0.5;
            while !job.is_finished() && started.elapsed() <= limit {
                std::thread::sleep(Duration::from_millis(10));
                let t = started.elapsed().as_secs_f64();
                if t < next {
                    continue;
                }
                next += 0.5;
                let (i, o) =
                    (metrics.records_in.load(Ordering::Relaxed), metrics.records_out.load(Ordering::Relaxed));
                let dt = (t - last_t).max(1e-6);
                let h = metrics.take_interval_latency();
                let used =
                    job.assignment().map_or(1, |a| a.ranges().iter().filter(|r| !r.is_empty()).count());
                samples.push(Sample {
                    t_s: t,
                    in_per_s: (i - last_in) as f64 / dt,
                    out_per_s: (o - last_out) as f64 / dt,
                    p99_us: if h.is_empty() { 0 } else { h.value_at_quantile(0.99) / 1000 },
                    workers: used,
                });
                (last_in, last_out, last_t) = (i, o, t);
            }
            samples
        });
        while !job.is_finished() && started.elapsed() <= limit {
            std::thread::sleep(Duration::from_millis(20));
            if let Some(e) = scaler.poll(&job, spate_core::now_ns() / 1_000_000) {
                let t = started.elapsed().as_secs_f64();
                eprintln!("[{t:6.1}s] {}", e.line());
                r.events.push((t, e));
            }
        }
        r.samples = sampler.join().unwrap_or_default();
        started.elapsed() > limit
    });
    if timed_out {
        job.cancel();
        let _ = job.wait();
        return Err(format!("the job did not end within {} s", limit.as_secs()));
    }
    let latency = metrics.latency();
    let report = job.wait().map_err(|e| format!("the job failed: {e}"))?;
    r.records_in = report.records_in;
    r.records_out = report.records_out;
    r.wrong_sums = wrong.load(Ordering::Relaxed);
    r.p99_us = if latency.is_empty() { 0 } else { latency.value_at_quantile(0.99) / 1000 };
    for (j, w) in p.schedule.windows(2).enumerate() {
        let (t0, t1) = (w[1][0] as f64, p.schedule.get(j + 2).map_or(f64::MAX, |n| n[0] as f64));
        r.steps_to_converge.push(r.events.iter().filter(|(t, _)| *t >= t0 && *t < t1).count());
        if w[1][1] > w[0][1] {
            // From the step to the first half second back under the target
            // after one over it (0: it never went over).
            let after: Vec<&Sample> = r.samples.iter().filter(|s| s.t_s > t0 && s.t_s < t1).collect();
            let relief = match after.iter().position(|s| s.p99_us > p.target_p99_us) {
                None => Some(0),
                Some(i) => after[i..]
                    .iter()
                    .find(|s| s.p99_us > 0 && s.p99_us <= p.target_p99_us)
                    .map(|s| ((s.t_s - t0) * 1000.0) as u64),
            };
            r.time_to_relief_ms.push(relief);
        }
    }
    Ok(r)
}

/// The policy named `name`.
pub fn policy(name: &str) -> Result<PolicyKind, String> {
    PolicyKind::parse(name)
        .ok_or_else(|| format!("--policy: `{name}` is not a policy: expected rate or threshold"))
}

/// `--schedule "[[0, 200000], [20, 1500000]]"` as points.
pub fn parse_schedule(text: &str) -> Result<Vec<[u64; 2]>, String> {
    #[derive(serde::Deserialize)]
    struct S {
        s: Vec<[u64; 2]>,
    }
    toml::from_str::<S>(&format!("s = {text}"))
        .map(|s| s.s)
        .map_err(|e| format!("--schedule: `{text}` is not a list of [second, rate] pairs: {}", e.message()))
}
