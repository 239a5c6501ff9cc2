//! The state benchmark, as a library function: what `spate bench state`
//! runs.
//!
//! [`state_bench`] fills a store with a keyed running sum
//! (`ValueState<u64, u64>`, as a `key_by` + sum operator keeps it) until its
//! bins' segments take `state_mb` MiB, then runs a **processing thread**
//! (the caller's) that updates random keys the whole time, at
//! [`BENCH_UPDATES_PER_S`] updates per second (open loop: each update has a
//! scheduled time, and a late thread catches up back to back), while it
//! begins checkpoints on its store: a full image first, then increments,
//! each begun once the previous one is acknowledged and `dirty_percent`
//! percent of the state's pages are dirty. A **streamer thread** pulls each
//! [`CheckpointStream`] into a file-backed
//! [`BackupStore`] with page-cache durability.
//!
//! An increment counts in the medians when the dirty threshold had not been
//! reached yet when the previous checkpoint was acknowledged: it then holds
//! the pages of one checkpoint interval. The first increments after the
//! full image do not count (they hold the pages dirtied while the full image
//! streamed); the run stops after `runs` counted increments (or, failing
//! that, after `4 * runs + 8` increments, the last `runs` being reported).
//! Then the processing stops, a last increment is taken, and the store is
//! restored from the backup (full image plus increments) up to
//! [`BENCH_RESTORES_MAX`] times, each into a fresh directory; the last
//! restore is checked against the live store.
//!
//! Figures, in [`StateBenchReport`]: medians over the runs; the longest gap
//! between two consecutive updates of the processing thread over the whole
//! checkpointing phase, which includes every `begin_checkpoint`, every
//! copy-on-write of a page and whatever else stopped the thread (the
//! operating system's scheduling included), the same less the time the
//! thread waited for a CPU (what the thread itself spent), and the longest
//! single update.
//!
//! The rate is fixed, below what the streamer drains: each update dirties a
//! page of its own (random keys), so the processing thread dirties pages at
//! up to `BENCH_UPDATES_PER_S * 4 KiB` per second (200 MiB/s), and an
//! increment must stream faster than that for the next one to hold only
//! `dirty_percent` of the state; a full-speed processing thread would dirty
//! every page while one increment streams. It measures, it does not assert:
//! a benchmark reports figures.
//!
//! ```no_run
//! # fn main() -> Result<(), spate_state::StateError> {
//! use spate_state::bench::{state_bench, StateBenchParams};
//! let report = state_bench(&StateBenchParams {
//!     state_mb: 256,
//!     dirty_percent: 1.0,
//!     runs: 5,
//!     bins_log2: 12,
//!     dir: std::env::temp_dir(),
//!     backing: Default::default(),
//! })?;
//! println!("{}", report.to_json());
//! # Ok(())
//! # }
//! ```

use std::path::PathBuf;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::backup::{BackupStore, Durability};
use crate::checkpoint::CheckpointStream;
use crate::error::StateError;
use crate::handles::ValueState;
use crate::keyspace::{hash_u64, BinRange, BINS_LOG2_MAX};
use crate::store::{Backing, StateStore, StoreConfig, PAGE_BYTES};

/// Updates per second of the benchmark's processing thread.
pub const BENCH_UPDATES_PER_S: u64 = 50_000;
/// Most restores timed (the median is reported).
pub const BENCH_RESTORES_MAX: usize = 3;
/// Random keys compared between the restored and the live store.
const CHECKED_KEYS: usize = 10_000;
/// The backup's instance id.
const INSTANCE: &str = "bench";

/// What [`state_bench`] runs.
#[derive(Clone, Debug, PartialEq)]
pub struct StateBenchParams {
    /// MiB of state: the store is filled until its bins' segments take this.
    pub state_mb: u64,
    /// Percent of the state's pages dirty when an increment is begun
    /// (above 0, at most 100).
    pub dirty_percent: f64,
    /// Increments timed (at least 1).
    pub runs: usize,
    /// The key space has `2^bins_log2` bins, all owned by the store.
    pub bins_log2: u8,
    /// Directory under which the store, the backup and the restored stores
    /// live (in a fresh subdirectory, removed at the end).
    pub dir: PathBuf,
    /// What holds the live and the restored stores' segments.
    pub backing: Backing,
}

impl StateBenchParams {
    /// The defaults of `spate bench state`: 256 MiB, 1 % dirty, 5 runs,
    /// 4096 bins, under `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            state_mb: 256,
            dirty_percent: 1.0,
            runs: 5,
            bins_log2: 12,
            dir: dir.into(),
            backing: Backing::default(),
        }
    }
}

/// What [`state_bench`] measured.
#[derive(Clone, Debug, PartialEq)]
pub struct StateBenchReport {
    /// Bytes of state (of the full image's pages).
    pub state_bytes: u64,
    /// Distinct keys in the state.
    pub keys: u64,
    /// Median bytes of an increment's chunks.
    pub checkpoint_bytes: u64,
    /// Median time from `begin_checkpoint` of an increment to its
    /// acknowledgement by the backup, in milliseconds.
    pub checkpoint_ms: f64,
    /// Bytes of the full image's chunks.
    pub full_checkpoint_bytes: u64,
    /// Time from `begin_checkpoint` of the full image to its
    /// acknowledgement, in milliseconds.
    pub full_checkpoint_ms: f64,
    /// Longest gap between two consecutive updates of the processing thread
    /// while checkpoints were begun and streamed, in microseconds.
    pub max_pause_us: f64,
    /// `max_pause_us` less the time the processing thread waited for a CPU
    /// within that gap (from the kernel's per-thread run-queue wait, read
    /// every 8 updates; Linux only, else the raw gap): the pause the thread
    /// itself spent, in the store or the kernel on its behalf, rather than
    /// preempted by other work on a busy machine.
    pub max_pause_on_cpu_us: f64,
    /// Longest single update call (with its copy-on-write), in
    /// microseconds (a preemption of the thread inside an update counts).
    pub max_update_us: f64,
    /// Longest `begin_checkpoint` call, in microseconds.
    pub begin_max_us: f64,
    /// Updates the processing thread made while checkpointing.
    pub updates: u64,
    /// Median time to restore the store from the backup, in milliseconds.
    pub restore_ms: f64,
    /// State MiB restored per second (at the median time).
    pub restore_mb_per_s: f64,
}

impl StateBenchReport {
    /// The report as one JSON object.
    pub fn to_json(&self) -> String {
        format!(
            "{{\"state_bytes\": {}, \"keys\": {}, \"checkpoint_bytes\": {}, \"checkpoint_ms\": {:.3}, \
             \"full_checkpoint_bytes\": {}, \"full_checkpoint_ms\": {:.1}, \"max_pause_us\": {:.1}, \
             \"max_pause_on_cpu_us\": {:.1}, \"max_update_us\": {:.1}, \"begin_max_us\": {:.1}, \"updates\": {}, \"updates_per_s\": {}, \
             \"restore_ms\": {:.1}, \"restore_mb_per_s\": {:.0}}}",
            self.state_bytes,
            self.keys,
            self.checkpoint_bytes,
            self.checkpoint_ms,
            self.full_checkpoint_bytes,
            self.full_checkpoint_ms,
            self.max_pause_us,
            self.max_pause_on_cpu_us,
            self.max_update_us,
            self.begin_max_us,
            self.updates,
            BENCH_UPDATES_PER_S,
            self.restore_ms,
            self.restore_mb_per_s,
        )
    }
}

fn invalid(field: &'static str, reason: String) -> StateError {
    StateError::InvalidConfig { field, reason }
}

fn xorshift(s: &mut u64) -> u64 {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    *s
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// A checkpoint handed to the streamer thread.
struct Job {
    stream: CheckpointStream,
    begun: Instant,
    /// Whether it counts in the medians (see [`process`]).
    counted: bool,
}

/// A checkpoint acknowledged by the backup.
struct Acked {
    full: bool,
    counted: bool,
    bytes: u64,
    pages: u64,
    /// From the begin to the acknowledgement.
    elapsed: Duration,
}

/// The streamer thread: pulls each checkpoint into the backup.
fn stream_jobs(
    backup: &mut BackupStore,
    jobs: mpsc::Receiver<Job>,
    acks: mpsc::Sender<Result<Acked, StateError>>,
) {
    for mut job in jobs {
        let mut ack = None;
        let mut result = Ok(());
        while let Some(chunk) = job.stream.next_chunk() {
            match backup.receive(INSTANCE, chunk) {
                Ok(a) => ack = a.or(ack),
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        let result = result.and_then(|()| match ack {
            Some(a) if a.checkpoint == job.stream.id() => Ok(Acked {
                full: job.stream.is_full(),
                counted: job.counted,
                bytes: a.bytes,
                pages: job.stream.page_count(),
                elapsed: job.begun.elapsed(),
            }),
            _ => Err(StateError::CorruptCheckpoint {
                checkpoint: job.stream.id(),
                bin: None,
                page: None,
                reason: "the backup did not acknowledge the checkpoint".into(),
            }),
        });
        let failed = result.is_err();
        if acks.send(result).is_err() || failed {
            return;
        }
    }
}

/// The time this thread has spent runnable but waiting for a CPU, from
/// `/proc/thread-self/schedstat` (Linux; `None` elsewhere).
struct RunqueueWait {
    file: Option<std::fs::File>,
}

impl RunqueueWait {
    fn open() -> Self {
        Self { file: std::fs::File::open("/proc/thread-self/schedstat").ok() }
    }

    /// Nanoseconds waited on a run queue so far (the second field).
    fn ns(&self) -> Option<u64> {
        #[cfg(unix)]
        {
            use std::os::unix::fs::FileExt;
            let mut buf = [0u8; 96];
            let n = self.file.as_ref()?.read_at(&mut buf, 0).ok()?;
            let text = std::str::from_utf8(buf.get(..n)?).ok()?;
            text.split_ascii_whitespace().nth(1)?.parse().ok()
        }
        #[cfg(not(unix))]
        {
            let _ = &self.file;
            None
        }
    }
}

/// Gaps up to this are counted whole in `max_pause_on_cpu_us`.
const SHORT_GAP: Duration = Duration::from_micros(200);

/// The processing thread's figures.
struct Processing {
    max_gap: Duration,
    /// The longest gap less the time the thread waited for a CPU in it.
    max_gap_on_cpu: Duration,
    max_update: Duration,
    begin_max: Duration,
    updates: u64,
    full: Option<Acked>,
    increments: Vec<Acked>,
    last_id: u64,
}

/// Updates random keys at the paced rate while checkpoints are begun and
/// streamed by the streamer thread: the full image, then increments, each
/// begun once the previous one is acknowledged and `want_dirty` pages are
/// dirty. An increment *counts* when the threshold was not yet reached at
/// the previous acknowledgement (so it holds the pages of one interval, not
/// those that piled up while a larger checkpoint streamed, as after the full
/// image); it stops after `runs` counted increments, or after a cap of
/// increments in all.
fn process(
    store: &mut StateStore,
    sums: &mut ValueState<u64, u64>,
    keys: u64,
    want_dirty: usize,
    runs: usize,
    jobs: &mpsc::Sender<Job>,
    acks: &mpsc::Receiver<Result<Acked, StateError>>,
) -> Result<Processing, StateError> {
    let gone = || invalid("dir", "the streamer thread stopped".into());
    let increments_max = runs * 4 + 8;
    let interval = Duration::from_nanos(1_000_000_000 / BENCH_UPDATES_PER_S);
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut p = Processing {
        max_gap: Duration::ZERO,
        max_gap_on_cpu: Duration::ZERO,
        max_update: Duration::ZERO,
        begin_max: Duration::ZERO,
        updates: 0,
        full: None,
        increments: Vec::with_capacity(increments_max),
        last_id: 0,
    };
    let begin = |store: &mut StateStore, p: &mut Processing, counted: bool| -> Result<(), StateError> {
        p.last_id += 1;
        let t = Instant::now();
        let stream = store.begin_checkpoint(p.last_id, b"bench")?;
        p.begin_max = p.begin_max.max(t.elapsed());
        jobs.send(Job { stream, begun: t, counted }).map_err(|_| gone())
    };
    // The run-queue wait is read every 8 updates (about 2 us each) and
    // after a long gap, so a long gap's own wait is known to within 8
    // intervals.
    let runqueue = RunqueueWait::open();
    let mut waited_ns = runqueue.ns();
    let mut last = Instant::now();
    let mut due = last;
    begin(store, &mut p, false)?;
    let mut outstanding = true;
    let mut counts = false;
    loop {
        while Instant::now() < due {
            std::hint::spin_loop();
        }
        due += interval;
        let k = xorshift(&mut rng) % keys;
        let t = Instant::now();
        sums.update(store, hash_u64(k), &k, |v| v.unwrap_or(0) + 1)?;
        let now = Instant::now();
        p.updates += 1;
        p.max_update = p.max_update.max(now - t);
        let gap = now - last;
        p.max_gap = p.max_gap.max(gap);
        if gap > SHORT_GAP || p.updates.is_multiple_of(8) {
            let w = runqueue.ns();
            if gap > SHORT_GAP {
                let waited = match (waited_ns, w) {
                    (Some(a), Some(b)) => Duration::from_nanos(b.saturating_sub(a)),
                    _ => Duration::ZERO,
                };
                p.max_gap_on_cpu = p.max_gap_on_cpu.max(gap.saturating_sub(waited));
            }
            waited_ns = w;
        } else {
            p.max_gap_on_cpu = p.max_gap_on_cpu.max(gap);
        }
        last = Instant::now();
        if !p.updates.is_multiple_of(16) {
            continue;
        }
        if outstanding {
            match acks.try_recv() {
                Ok(acked) => {
                    let acked = acked?;
                    outstanding = false;
                    if acked.full && p.full.is_none() {
                        p.full = Some(acked);
                    } else {
                        p.increments.push(acked);
                        let counted = p.increments.iter().filter(|a| a.counted).count();
                        if counted >= runs || p.increments.len() >= increments_max {
                            return Ok(p);
                        }
                    }
                    counts = store.dirty_page_count() < want_dirty;
                }
                Err(mpsc::TryRecvError::Empty) => {}
                Err(mpsc::TryRecvError::Disconnected) => return Err(gone()),
            }
        }
        // Counting dirty pages reads the whole bitmap: every 64 updates.
        if !outstanding && p.updates.is_multiple_of(64) && store.dirty_page_count() >= want_dirty {
            begin(store, &mut p, counts)?;
            outstanding = true;
        }
    }
}

/// Runs the state benchmark (see the module documentation).
pub fn state_bench(params: &StateBenchParams) -> Result<StateBenchReport, StateError> {
    if params.state_mb == 0 {
        return Err(invalid("state_mb", "must be at least 1".into()));
    }
    if !(params.dirty_percent > 0.0 && params.dirty_percent <= 100.0) {
        return Err(invalid("dirty_percent", format!("{} is not in (0, 100]", params.dirty_percent)));
    }
    if params.runs == 0 {
        return Err(invalid("runs", "must be at least 1".into()));
    }
    if params.bins_log2 > BINS_LOG2_MAX {
        return Err(invalid(
            "bins_log2",
            format!("{} is above the maximum {BINS_LOG2_MAX}", params.bins_log2),
        ));
    }
    let stamp =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let root = params.dir.join(format!("spate-state-bench-{}-{stamp}", std::process::id()));
    let result = run(params, &root);
    let _ = std::fs::remove_dir_all(&root);
    result
}

fn run(params: &StateBenchParams, root: &std::path::Path) -> Result<StateBenchReport, StateError> {
    let bins_log2 = params.bins_log2;
    let mut store = StateStore::create(
        StoreConfig::new(root.join("store"), bins_log2).with_backing(params.backing),
        BinRange::all(bins_log2),
    )?;
    store.set_checkpoint_full_every(u32::MAX);
    let mut sums = ValueState::<u64, u64>::register(&mut store, "sums")?;
    let target = params.state_mb << 20;
    let mut keys = 0u64;
    while store.segment_bytes_in_use() < target {
        for _ in 0..10_000 {
            sums.put(&mut store, hash_u64(keys), &keys, &keys)?;
            keys += 1;
        }
    }
    let state_pages = store.segment_bytes_in_use() / PAGE_BYTES as u64;
    let want_dirty = ((state_pages as f64 * params.dirty_percent / 100.0) as usize).max(1);

    let mut backup = BackupStore::open(root.join("backup"), Durability::PageCache)?;
    let (job_tx, job_rx) = mpsc::channel::<Job>();
    let (ack_tx, ack_rx) = mpsc::channel();
    let processed = std::thread::scope(|s| {
        let streamer = std::thread::Builder::new()
            .name("spate-ckpt-stream".into())
            .spawn_scoped(s, || stream_jobs(&mut backup, job_rx, ack_tx))
            .map_err(|source| StateError::Io {
                path: root.to_path_buf(),
                op: "spawn the streamer thread",
                source,
            })?;
        let r = process(&mut store, &mut sums, keys, want_dirty, params.runs, &job_tx, &ack_rx);
        drop(job_tx);
        // A stream still held by the streamer is dropped when it ends.
        let joined = streamer.join();
        match (r, joined) {
            (Ok(p), Ok(())) => Ok(p),
            (Err(e), _) => Err(e),
            (Ok(_), Err(_)) => Err(invalid("dir", "the streamer thread panicked".into())),
        }
    })?;
    let full = processed.full.ok_or_else(|| invalid("runs", "no full image was acknowledged".into()))?;

    // A last increment with the processing stopped, for the restore check.
    let mut last = store.begin_checkpoint(processed.last_id + 1, b"bench")?;
    while let Some(chunk) = last.next_chunk() {
        backup.receive(INSTANCE, chunk)?;
    }
    drop(last);

    // Each restore into a fresh directory, as a recovery does (the
    // previous one is removed before the clock starts).
    let restores = params.runs.clamp(1, BENCH_RESTORES_MAX);
    let mut restore_ms = Vec::with_capacity(restores);
    let mut restored = None;
    for i in 0..restores {
        drop(restored.take());
        if i > 0 {
            let _ = std::fs::remove_dir_all(root.join(format!("restored-{}", i - 1)));
        }
        let config =
            StoreConfig::new(root.join(format!("restored-{i}")), bins_log2).with_backing(params.backing);
        let t = Instant::now();
        let r = StateStore::restore(config, &backup, INSTANCE)?;
        restore_ms.push(t.elapsed().as_secs_f64() * 1e3);
        restored = Some(r);
    }
    let (mut restored, _, _) = restored.ok_or_else(|| invalid("runs", "no restore".into()))?;
    let mut check = ValueState::<u64, u64>::register(&mut restored, "sums")?;
    let mut rng = 0x5eed_u64;
    for _ in 0..CHECKED_KEYS {
        let k = xorshift(&mut rng) % keys;
        if check.get(&restored, hash_u64(k), &k) != sums.get(&store, hash_u64(k), &k) {
            return Err(StateError::CorruptCheckpoint {
                checkpoint: processed.last_id + 1,
                bin: None,
                page: None,
                reason: format!("the restored state differs from the live state at key {k}"),
            });
        }
    }
    if check.len(&restored) != sums.len(&store) {
        return Err(StateError::CorruptCheckpoint {
            checkpoint: processed.last_id + 1,
            bin: None,
            page: None,
            reason: "the restored state holds another number of keys".into(),
        });
    }

    let state_bytes = full.pages * PAGE_BYTES as u64;
    // The counted increments, or (if the cap came first) the last ones.
    let mut counted: Vec<&Acked> = processed.increments.iter().filter(|a| a.counted).collect();
    if counted.len() < params.runs {
        counted = processed.increments.iter().rev().take(params.runs).collect();
    }
    let mut bytes: Vec<f64> = counted.iter().map(|a| a.bytes as f64).collect();
    let mut ms: Vec<f64> = counted.iter().map(|a| a.elapsed.as_secs_f64() * 1e3).collect();
    let restore_ms = median(&mut restore_ms);
    Ok(StateBenchReport {
        state_bytes,
        keys,
        checkpoint_bytes: median(&mut bytes) as u64,
        checkpoint_ms: median(&mut ms),
        full_checkpoint_bytes: full.bytes,
        full_checkpoint_ms: full.elapsed.as_secs_f64() * 1e3,
        max_pause_us: processed.max_gap.as_secs_f64() * 1e6,
        max_pause_on_cpu_us: processed.max_gap_on_cpu.as_secs_f64() * 1e6,
        max_update_us: processed.max_update.as_secs_f64() * 1e6,
        begin_max_us: processed.begin_max.as_secs_f64() * 1e6,
        updates: processed.updates,
        restore_ms,
        restore_mb_per_s: state_bytes as f64 / f64::from(1u32 << 20) / (restore_ms / 1e3),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The benchmark runs end to end at a small size (its figures are not
    /// checked: a benchmark reports, a test asserts correctness).
    #[test]
    fn small_bench_runs_and_reports() {
        for backing in [Backing::File, Backing::Memory] {
            small_bench(backing);
        }
    }

    fn small_bench(backing: Backing) {
        let dir = tempfile::tempdir().map_err(|e| e.to_string());
        let Ok(dir) = dir else {
            panic!("no temporary directory");
        };
        let params = StateBenchParams {
            state_mb: 2,
            dirty_percent: 5.0,
            runs: 2,
            bins_log2: 4,
            dir: dir.path().to_path_buf(),
            backing,
        };
        let r = state_bench(&params);
        let r = match r {
            Ok(r) => r,
            Err(e) => panic!("bench failed: {e}"),
        };
        assert!(r.state_bytes >= 2 << 20);
        assert!(r.checkpoint_bytes > 0 && r.full_checkpoint_bytes > r.checkpoint_bytes);
        let json = r.to_json();
        for key in [
            "state_bytes",
            "checkpoint_bytes",
            "checkpoint_ms",
            "full_checkpoint_ms",
            "max_pause_us",
            "restore_ms",
            "restore_mb_per_s",
        ] {
            assert!(json.contains(&format!("\"{key}\": ")), "{key} missing from {json}");
        }
        // The run's directory is gone.
        assert_eq!(std::fs::read_dir(dir.path()).map(|d| d.count()).unwrap_or(1), 0);
    }
}
