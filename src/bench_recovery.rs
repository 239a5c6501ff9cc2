//! `spate bench recovery`: how long a local cluster takes to recover from a
//! node killed with SIGKILL under a steady load, and whether any output was
//! lost or duplicated.
//!
//! The job is keyed-sum on three nodes of one worker each plus one spare
//! (with `--no-spare` none: a survivor takes the failed worker over),
//! with checkpoints every `checkpoint_ms` streamed to one backup node, and
//! a file sink. Its keys are chosen so that the keyed state totals about
//! `state_mb` MiB; the first record of every key comes in one burst (to
//! build the state), then the generator paces records at `rate` per
//! second on a schedule that recovery does not reset (a restored source
//! catches up). Every node prints its output rate and p99 latency every
//! 100 ms. Once the load has been steady for `steady_s` seconds the bench
//! kills node `b` (or, with `--silent`, stops it with SIGSTOP, so that only
//! the failure timeout can detect it), lets the job finish, and reports:
//!
//! - `detect_ms`: from the kill to the coordinator declaring `b` failed;
//! - `restore_ms`: from then until every node of the next epoch runs (the
//!   state restored, the spare's fetched from its backup);
//! - `replay_ms`: from then until the output is back to normal;
//! - `total_ms`: from the kill until the output is back to normal: the
//!   first 100 ms bucket from which, for half a second, the output rate is
//!   on average at least 80% of its median before the kill and every
//!   bucket's p99 latency at most what 95% of the buckets before the kill
//!   had (plus 1 ms): checkpoints and a shared machine make spikes that
//!   are normal too;
//! - `lost_records`, `duplicated_records`: the sink's lines checked
//!   against keyed-sum's closed form (each key's running sums, in order,
//!   each once).
//!
//! `--csv FILE` writes the latency over time, one row per 100 ms, with the
//! kill and the recovery's events marked.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::deploy::{resolve_ports, LocalNodes};
use spate_core::control::{Event, MetricsLine, METRICS_ENV};

/// Keyed state per key of keyed-sum, bytes (measured: a full checkpoint of
/// 1M keys is about 45 MB).
pub(crate) const STATE_BYTES_PER_KEY: u64 = 45;
/// Workers (one per active node): keys are a multiple of it, so that each
/// key's records come from one source instance, in order.
const WORKERS: u64 = 3;
const BUCKET_MS: u64 = 100;
/// Buckets that must all be normal for the output to count as recovered.
const NORMAL_RUN: usize = 5;

/// What `spate bench recovery` runs.
#[derive(Debug, Clone)]
pub struct RecoveryParams {
    /// Keyed state, MiB (over all nodes).
    pub state_mb: u64,
    /// Checkpoint interval, ms.
    pub checkpoint_ms: u64,
    /// `[cluster] failure_timeout_ms`.
    pub failure_timeout_ms: u64,
    /// Records per second once the state is built.
    pub rate: u64,
    /// Seconds of steady load before the kill.
    pub steady_s: u64,
    /// Seconds of load after the kill.
    pub after_s: u64,
    /// Write the latency over time here.
    pub csv: Option<PathBuf>,
    /// Stop node `b` with SIGSTOP instead of killing it: it goes silent
    /// with its connections open, and only the failure timeout detects it
    /// (it is killed once declared failed).
    pub silent: bool,
    /// Recover by rolling every node back (`[checkpoint] recovery =
    /// "rollback"`) instead of live: the peer to compare with.
    pub rollback: bool,
    /// Run no spare: a survivor takes the failed node's worker over.
    pub no_spare: bool,
}

/// What it measured.
#[derive(Debug, Clone, Default)]
pub struct RecoveryReport {
    /// Keys of the job.
    pub keys: u64,
    /// Records of the job.
    pub records: u64,
    /// See the module documentation.
    pub detect_ms: u64,
    /// See the module documentation.
    pub restore_ms: u64,
    /// See the module documentation.
    pub replay_ms: u64,
    /// See the module documentation; `None` if the output never got back
    /// to normal before the job ended.
    pub total_ms: Option<u64>,
    /// Output records per second before the kill (median of 100 ms buckets).
    pub normal_records_per_s: u64,
    /// p99 latency before the kill (median of 100 ms buckets), µs.
    pub normal_p99_us: u64,
    /// The 95th percentile of the buckets' p99 before the kill, µs.
    pub normal_p99_p95_us: u64,
    /// Highest p99 latency of a bucket after the kill, µs.
    pub peak_p99_us: u64,
    /// Outputs missing from the sink.
    pub lost_records: u64,
    /// Outputs the sink has more than once.
    pub duplicated_records: u64,
}

impl RecoveryReport {
    /// One JSON object.
    pub fn to_json(&self) -> String {
        format!(
            "{{\"keys\":{},\"records\":{},\"detect_ms\":{},\"restore_ms\":{},\"replay_ms\":{},\"total_ms\":{},\
             \"normal_records_per_s\":{},\"normal_p99_us\":{},\"normal_p99_p95_us\":{},\"peak_p99_us\":{},\"lost_records\":{},\"duplicated_records\":{}}}",
            self.keys,
            self.records,
            self.detect_ms,
            self.restore_ms,
            self.replay_ms,
            self.total_ms.map_or("null".to_string(), |t| t.to_string()),
            self.normal_records_per_s,
            self.normal_p99_us,
            self.normal_p99_p95_us,
            self.peak_p99_us,
            self.lost_records,
            self.duplicated_records
        )
    }
}

/// Runs the benchmark with the `spate` binary `exe`.
pub fn run(exe: &Path, p: &RecoveryParams) -> Result<RecoveryReport, String> {
    let tmp = tempfile::tempdir().map_err(|e| format!("cannot create a temporary directory: {e}"))?;
    let dir = tmp.path();
    let keys = ((p.state_mb << 20) / STATE_BYTES_PER_KEY).max(WORKERS) / WORKERS * WORKERS;
    // Enough records for the burst, its backlog, the steady load and the
    // time after the kill.
    let records = keys + p.rate * (p.steady_s + p.after_s + 15);
    let out = dir.join("out.txt");
    let mut text = format!(
        "[query]\nname = \"keyed-sum\"\n[query.params]\nrecords = {records}\nkeys = {keys}\nrate = {}\nburst = {keys}\n\
         [runtime]\npin = false\npark_when_idle = true\ndata_dir = {:?}\n\
         [sink]\nkind = \"file\"\npath = {:?}\nlatency = true\n\
         [checkpoint]\ninterval_ms = {}\nbackups = 1\nrecovery = \"{}\"\n\
         [cluster]\nconnect_timeout_ms = 30000\nfailure_timeout_ms = {}\n",
        p.rate,
        dir.join("data").display().to_string(),
        out.display().to_string(),
        p.checkpoint_ms,
        if p.rollback { "rollback" } else { "live" },
        p.failure_timeout_ms,
    );
    for n in ["a", "b", "c"] {
        text += &format!("[[cluster.nodes]]\nname = \"{n}\"\naddress = \"127.0.0.1:0\"\n");
    }
    if !p.no_spare {
        text += "[[cluster.nodes]]\nname = \"spare\"\naddress = \"127.0.0.1:0\"\nspare = true\n";
    }
    let cfg = dir.join("cluster.toml");
    std::fs::write(&cfg, resolve_ports(&text)?).map_err(|e| format!("{}: {e}", cfg.display()))?;

    let every = BUCKET_MS.to_string();
    let mut nodes = LocalNodes::start(exe, &cfg, &[(METRICS_ENV, every.as_str())])?;
    nodes.wait_event(Duration::from_secs(120), |e| e.what == "running 0")?;
    // The burst builds the state, the schedule's backlog drains, then the
    // load is steady for `steady_s`.
    let deadline = std::time::Instant::now() + Duration::from_secs(300);
    let caught_up = loop {
        let m = nodes.metrics();
        let out: u64 = m.iter().map(|m| m.records_out).sum();
        if out >= keys {
            // The last line of every node shows a p99 below 50 ms.
            let mut last: BTreeMap<&str, &MetricsLine> = BTreeMap::new();
            for l in &m {
                last.insert(l.node.as_str(), l);
            }
            if last.len() as u64 == WORKERS && last.values().all(|l| l.records_out > 0 && l.p99_us < 50_000) {
                break spate_core::control::unix_ms();
            }
        }
        if std::time::Instant::now() > deadline {
            return Err(format!("the load did not become steady within 300 s ({out} records out)"));
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    std::thread::sleep(Duration::from_secs(p.steady_s));
    let killed = if p.silent {
        let at = spate_core::control::unix_ms();
        nodes.signal("b", libc::SIGSTOP)?;
        at
    } else {
        nodes.kill("b")?
    };
    let failed = nodes.wait_event(Duration::from_secs(60), |e| e.what == "failed b")?;
    if p.silent {
        nodes.kill("b")?;
    }
    let running = nodes.wait_event(Duration::from_secs(120), |e| e.what == "running 1")?;
    let mut events = vec![
        Event { unix_ms: killed, what: "kill b".into() },
        failed.clone(),
        Event { unix_ms: running.unix_ms, what: running.what.clone() },
    ];
    nodes.wait(Duration::from_secs(600))?;
    let mut all = nodes.metrics();
    all.sort_by_key(|m| m.unix_ms);

    let mut r = RecoveryReport { keys, records, ..Default::default() };
    r.detect_ms = failed.unix_ms.saturating_sub(killed);
    r.restore_ms = running.unix_ms.saturating_sub(failed.unix_ms);
    let buckets = bucketize(&all);
    let before: Vec<&(u64, u64)> =
        buckets.range((caught_up + 500) / BUCKET_MS..killed / BUCKET_MS).map(|(_, v)| v).collect();
    r.normal_records_per_s = median(before.iter().map(|(n, _)| n * 1000 / BUCKET_MS).collect());
    r.normal_p99_us = median(before.iter().map(|(_, p)| *p).collect());
    // Normal: the window's mean rate at least 80% of the median before,
    // and every bucket's p99 within what 95% of the buckets before had
    // (checkpoints and a shared machine make spikes that are normal too).
    let rate_ok = r.normal_records_per_s * 8 / 10;
    r.normal_p99_p95_us = percentile(before.iter().map(|(_, p)| *p).collect(), 0.95);
    let p99_ok = r.normal_p99_p95_us + 1000;
    let after: Vec<(u64, (u64, u64))> = buckets.range(killed / BUCKET_MS..).map(|(k, v)| (*k, *v)).collect();
    r.peak_p99_us = after.iter().map(|(_, (_, p))| *p).max().unwrap_or(0);
    let normal = |w: &[(u64, (u64, u64))]| {
        let n: u64 = w.iter().map(|(_, (n, _))| n).sum();
        n * 1000 / (BUCKET_MS * w.len() as u64) >= rate_ok && w.iter().all(|(_, (_, p))| *p <= p99_ok)
    };
    r.total_ms = after.windows(NORMAL_RUN).find(|w| normal(w)).map(|w| {
        // The bucket's start, after the kill.
        (w[0].0 * BUCKET_MS).saturating_sub(killed)
    });
    r.replay_ms = r.total_ms.map_or(0, |t| t.saturating_sub(r.detect_ms + r.restore_ms));
    let (lost, dup) = check_keyed_sum(&out, WORKERS as usize, records, keys)?;
    r.lost_records = lost;
    r.duplicated_records = dup;
    if let Some(csv) = &p.csv {
        events.sort_by_key(|e| e.unix_ms);
        write_csv(csv, &buckets, &events, killed)?;
    }
    Ok(r)
}

/// Per 100 ms bucket (by its index since the Unix epoch): records out over
/// all nodes, and the highest p99 of a node.
fn bucketize(lines: &[MetricsLine]) -> BTreeMap<u64, (u64, u64)> {
    let mut b: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
    for m in lines {
        let e = b.entry(m.unix_ms / BUCKET_MS).or_default();
        e.0 += m.records_out;
        e.1 = e.1.max(m.p99_us);
    }
    b
}

fn median(v: Vec<u64>) -> u64 {
    percentile(v, 0.5)
}

fn percentile(mut v: Vec<u64>, q: f64) -> u64 {
    if v.is_empty() {
        return 0;
    }
    v.sort_unstable();
    v[((v.len() - 1) as f64 * q).round() as usize]
}

fn write_csv(
    path: &Path,
    buckets: &BTreeMap<u64, (u64, u64)>,
    events: &[Event],
    killed: u64,
) -> Result<(), String> {
    let mut s = String::from("t_ms,records_per_s,p99_us,event\n");
    for (&k, &(n, p)) in buckets {
        let start = k * BUCKET_MS;
        let marks: Vec<&str> = events
            .iter()
            .filter(|e| e.unix_ms >= start && e.unix_ms < start + BUCKET_MS)
            .map(|e| e.what.as_str())
            .collect();
        s += &format!(
            "{},{},{},{}\n",
            start as i64 - killed as i64,
            n * 1000 / BUCKET_MS,
            p,
            marks.join("; ")
        );
    }
    std::fs::write(path, s).map_err(|e| format!("{}: {e}", path.display()))
}

/// Checks keyed-sum's file sink output against the closed form: key
/// `i % keys` gets value `i`, and each record emits its key's running sum.
/// Each key lives on one worker, whose file has its sums in order. Returns
/// (lost, duplicated) outputs.
pub fn check_keyed_sum(out: &Path, workers: usize, records: u64, keys: u64) -> Result<(u64, u64), String> {
    // Per key: its running sum so far and the records it has seen.
    let mut acc = vec![0u64; keys as usize];
    let mut seen = vec![0u64; keys as usize];
    let (mut lost, mut dup) = (0u64, 0u64);
    for w in 0..workers {
        let path = crate::ops::sinks::part_path(out, w, workers);
        let f = std::fs::File::open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        for (n, line) in BufReader::new(f).lines().enumerate() {
            let line = line.map_err(|e| format!("{}: {e}", path.display()))?;
            let bad = || format!("{}: line {}: not `key,sum`: {line:?}", path.display(), n + 1);
            let (k, v) = line.split_once(',').ok_or_else(bad)?;
            let (k, v): (u64, u64) = (k.parse().map_err(|_| bad())?, v.parse().map_err(|_| bad())?);
            let ku = k as usize;
            if k >= keys {
                return Err(bad());
            }
            let next = |seen: u64| k + seen * keys;
            if seen[ku] > 0 && v <= acc[ku] {
                dup += 1;
                continue;
            }
            // Records of this key the sink never showed: missing.
            while next(seen[ku]) < records && acc[ku] + next(seen[ku]) < v {
                acc[ku] += next(seen[ku]);
                seen[ku] += 1;
                lost += 1;
            }
            if next(seen[ku]) < records && acc[ku] + next(seen[ku]) == v {
                acc[ku] = v;
                seen[ku] += 1;
            } else {
                return Err(format!("{}: line {}: {v} is no running sum of key {k}", path.display(), n + 1));
            }
        }
    }
    for k in 0..keys {
        let total = if k < records { (records - k).div_ceil(keys) } else { 0 };
        lost += total - seen[k as usize].min(total);
    }
    Ok((lost, dup))
}
