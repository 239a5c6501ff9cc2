//! Live handoff between the workers of one process (issue 23): while a
//! keyed running sum runs on two workers under a steady load, runs of bins
//! move from one worker to the other and back, several times, with and
//! without checkpoints. Every record's output comes exactly once and every
//! key's running sums are exactly its prefix sums — what they are in a run
//! without any handoff — and the assignment after the moves is the one
//! asked for. Bad requests are refused and change nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use spate::core::handoff::HandoffError;
use spate::prelude::*;
use spate::state::BinRange;
use spate::Job;

const KEYS: u64 = 500;
const WAIT: Duration = Duration::from_secs(20);

fn start(
    dir: &tempfile::TempDir,
    records: u64,
    rate: u64,
    checkpoint_ms: u64,
) -> (Job, OutputHandle<(u64, u64)>) {
    start_on(dir, records, rate, checkpoint_ms, 2, 0)
}

/// A job of `workers` workers from the start, up to `max_workers`.
fn start_on(
    dir: &tempfile::TempDir,
    records: u64,
    rate: u64,
    checkpoint_ms: u64,
    workers: usize,
    max_workers: usize,
) -> (Job, OutputHandle<(u64, u64)>) {
    let (sink, output) = spate::output::<(u64, u64)>(1 << 16);
    let rt = Runtime::new(RuntimeConfig {
        workers,
        max_workers,
        pin: false,
        data_dir: dir.path().to_path_buf(),
        linger_us: 0,
        checkpoint_interval_ms: checkpoint_ms,
        ..Default::default()
    });
    let job = rt
        .start("handoff", move |df| {
            let spec = GeneratorSpec { records: Some(records), rate_per_s: Some(rate), offset: 0, burst: 0 };
            df.generate("gen", spec, |i| (i % KEYS, i), |i| i)
                .key_by("by-key", |r: &(u64, u64)| r.0)
                .fold("sum", || 0u64, |a, r| *a += r.1)
                .output("out", &sink);
        })
        .unwrap_or_else(|e| panic!("start: {e}"));
    (job, output)
}

/// Takes every result on a thread of its own (a handoff waits for the
/// workers, which must not wait for a full output), counting them.
struct Collector {
    count: Arc<AtomicUsize>,
    thread: std::thread::JoinHandle<Vec<(u64, u64)>>,
}

impl Collector {
    fn start(out: OutputHandle<(u64, u64)>) -> Self {
        let count = Arc::new(AtomicUsize::new(0));
        let c = count.clone();
        let thread = std::thread::spawn(move || {
            let mut got = Vec::new();
            loop {
                match out.recv_timeout(WAIT) {
                    Ok(Some(r)) => {
                        got.push(r);
                        c.store(got.len(), Ordering::Relaxed);
                    }
                    Ok(None) => return got,
                    Err(_) => panic!("no result within {WAIT:?} after {}", got.len()),
                }
            }
        });
        Self { count, thread }
    }

    /// Waits until `n` results came (bounded).
    fn until(&self, n: usize) {
        let t = std::time::Instant::now();
        while self.count.load(Ordering::Relaxed) < n {
            assert!(t.elapsed() < WAIT, "only {} of {n} results", self.count.load(Ordering::Relaxed));
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Every result, once the job ended.
    fn all(self) -> Vec<(u64, u64)> {
        self.thread.join().unwrap_or_else(|_| panic!("the collector failed"))
    }
}

/// Every output once, every key's running sums its prefix sums.
fn check(got: &[(u64, u64)], records: u64) {
    assert_eq!(got.len() as u64, records, "one output per record");
    let mut sums: BTreeMap<u64, BTreeSet<u64>> = BTreeMap::new();
    for &(k, v) in got {
        assert!(sums.entry(k).or_default().insert(v), "key {k}'s sum {v} came twice");
    }
    assert_eq!(sums.len() as u64, KEYS);
    for (k, s) in &sums {
        let n = (records - k).div_ceil(KEYS);
        let expected: BTreeSet<u64> = (0..n)
            .scan(0u64, |acc, j| {
                *acc += k + j * KEYS;
                Some(*acc)
            })
            .collect();
        assert_eq!(s, &expected, "running sums of key {k}");
    }
}

fn moves_back_and_forth(checkpoint_ms: u64) {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let records = 300_000;
    let (job, out) = start(&dir, records, 100_000, checkpoint_ms);
    let out = Collector::start(out);
    out.until(20_000);
    let half = job.assignment().map(|a| a.bins_of(0)).unwrap_or_else(|| panic!("no assignment"));
    assert_eq!(half, BinRange::new(0, 2048));
    // Four steps: worker 0 gives 1024 bins to worker 1, takes 512 and then
    // 1024 back, gives 512 again: 0..1024 and 1024..4096 at the end.
    let steps = [((1024, 2048), 0, 1), ((1024, 1536), 1, 0), ((1536, 2560), 1, 0), ((1024, 2560), 0, 1)];
    for (i, &((a, b), from, to)) in steps.iter().enumerate() {
        let done = job
            .move_bins(BinRange::new(a, b), from, to, WAIT)
            .unwrap_or_else(|e| panic!("step {i}: moving {a}..{b} from {from} to {to}: {e}"));
        assert_eq!(done.info.bins, BinRange::new(a, b));
        assert!(done.bytes > 0, "step {i} moved no state");
        eprintln!("step {i}: {a}..{b} {from}->{to}: {} bytes in {} us", done.bytes, done.micros);
        out.until(20_000 * (i + 2));
    }
    let a = job.assignment().unwrap_or_else(|| panic!("no assignment"));
    assert_eq!(a.ranges(), &[BinRange::new(0, 1024), BinRange::new(1024, 4096)]);
    assert_eq!(a.version(), 4);
    if checkpoint_ms > 0 {
        // Checkpoints go on after the moves and record the new assignment.
        let dir = spate::core::checkpoint::checkpoint_dir(dir.path(), "handoff");
        let t = std::time::Instant::now();
        loop {
            let m = spate::core::checkpoint::latest_manifest(&dir).unwrap_or_else(|e| panic!("{e}"));
            if m.as_ref().and_then(|m| m.assignment.as_ref()).is_some_and(|(v, _)| *v == 4) {
                let m = m.unwrap_or_else(|| panic!("no manifest"));
                assert_eq!(m.assignment, Some((4, a.ranges().to_vec())));
                break;
            }
            assert!(t.elapsed() < WAIT, "no checkpoint recorded the assignment after the moves");
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    job.wait().unwrap_or_else(|e| panic!("job: {e}"));
    check(&out.all(), records);
}

#[test]
fn bins_move_between_two_workers_while_the_job_runs() {
    let _watchdog = spate::Watchdog::start("handoff", Duration::from_secs(120));
    moves_back_and_forth(0);
}

#[test]
fn bins_move_between_two_workers_while_checkpoints_run() {
    let _watchdog = spate::Watchdog::start("handoff with checkpoints", Duration::from_secs(120));
    moves_back_and_forth(20);
}

#[test]
fn bad_moves_are_refused_and_change_nothing() {
    let _watchdog = spate::Watchdog::start("bad handoffs", Duration::from_secs(60));
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let (job, out) = start(&dir, 100_000, 50_000, 0);
    let out = Collector::start(out);
    out.until(1000);
    let before = job.assignment();
    for (bins, from, to) in [((0, 10), 0, 1), ((2000, 2100), 0, 1), ((100, 200), 1, 0), ((2040, 2048), 0, 5)]
    {
        let e = job.move_bins(BinRange::new(bins.0, bins.1), from, to, WAIT);
        assert!(matches!(e, Err(HandoffError::Assignment(_))), "{bins:?} {from}->{to}: {e:?}");
    }
    assert_eq!(job.assignment(), before);
    job.wait().unwrap_or_else(|e| panic!("job: {e}"));
    check(&out.all(), 100_000);
}

/// A large move in bounded steps: each step a handoff of its own.
#[test]
fn a_large_move_goes_in_bounded_steps() {
    let _watchdog = spate::Watchdog::start("stepwise handoff", Duration::from_secs(120));
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let records = 200_000;
    let (job, out) = start(&dir, records, 100_000, 20);
    let out = Collector::start(out);
    out.until(20_000);
    let steps = job
        .move_bins_by(BinRange::new(1024, 2048), 0, 1, 100, WAIT)
        .unwrap_or_else(|e| panic!("moving 1024..2048 in steps of 100: {e}"));
    // From the end next to worker 1: 1948..2048, 1848..1948, ..., 1024..1048.
    assert_eq!(steps.len(), 11);
    assert_eq!(steps[0].info.bins, BinRange::new(1948, 2048));
    assert_eq!(steps[10].info.bins, BinRange::new(1024, 1048));
    assert!(steps.iter().all(|s| s.info.bins.len() <= 100));
    let back = job
        .move_bins_by(BinRange::new(1024, 1536), 1, 0, 256, WAIT)
        .unwrap_or_else(|e| panic!("moving 1024..1536 back in steps of 256: {e}"));
    assert_eq!(
        back.iter().map(|s| s.info.bins).collect::<Vec<_>>(),
        [BinRange::new(1024, 1280), BinRange::new(1280, 1536)]
    );
    let a = job.assignment().unwrap_or_else(|| panic!("no assignment"));
    assert_eq!(a.ranges(), &[BinRange::new(0, 1536), BinRange::new(1536, 4096)]);
    assert_eq!(a.version(), 13);
    // A move that does not fit as a whole: no step runs.
    let e = job.move_bins_by(BinRange::new(0, 100), 0, 1, 10, WAIT);
    assert!(matches!(e, Err(HandoffError::Assignment(_))), "{e:?}");
    assert_eq!(job.assignment().map(|a| a.version()), Some(13));
    job.wait().unwrap_or_else(|e| panic!("job: {e}"));
    check(&out.all(), records);
}

/// `Job::move_bins_sized`: a bound in bytes, not bins, sets the steps: a
/// probe first, then as many bins as the bound buys at what the bins held
/// so far, with the output exact.
#[test]
fn a_move_bounded_by_bytes_steps_by_what_the_bins_hold() {
    let _watchdog = spate::Watchdog::start("handoff bounded by bytes", Duration::from_secs(120));
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let records = 200_000;
    let (job, out) = start_on(&dir, records, 100_000, 20, 1, 2);
    let out = Collector::start(out);
    out.until(20_000);
    let bound = 16 << 10;
    let steps = job
        .move_bins_sized(
            BinRange::new(2048, 4096),
            0,
            1,
            spate::core::assignment::StepBounds { max_bins: 4096, max_bytes: bound, pace_permille: 0 },
            WAIT,
        )
        .unwrap_or_else(|e| panic!("scale-out in steps of {bound} bytes: {e}"));
    let bytes: Vec<u64> = steps.iter().map(|s| s.bytes).collect();
    let total: u64 = bytes.iter().sum();
    // Without the bound the 2 048 bins would go in one step.
    assert!(total > 4 * bound, "only {total} bytes moved: {bytes:?}");
    assert!(steps.len() > 4, "{bytes:?}");
    assert_eq!(steps[0].info.bins, BinRange::new(4088, 4096), "the probe");
    assert!(bytes[1..].iter().all(|&b| b <= 2 * bound), "{bytes:?}");
    assert_eq!(steps.iter().map(|s| s.info.bins.len()).sum::<u32>(), 2048);
    let a = job.assignment().unwrap_or_else(|| panic!("no assignment"));
    assert_eq!(a.ranges(), &[BinRange::new(0, 2048), BinRange::new(2048, 4096)]);
    job.wait().unwrap_or_else(|e| panic!("job: {e}"));
    check(&out.all(), records);
}

/// Started with `max_workers = 2` and one worker in use: the second owns
/// no bins and runs no source; the job grows to it (scale-out) and shrinks
/// back (scale-in) while it runs.
#[test]
fn a_job_grows_to_a_worker_it_did_not_use_and_shrinks_back() {
    let _watchdog = spate::Watchdog::start("scale out and in", Duration::from_secs(120));
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let records = 200_000;
    let (job, out) = start_on(&dir, records, 100_000, 20, 1, 2);
    let out = Collector::start(out);
    out.until(20_000);
    let a = job.assignment().unwrap_or_else(|| panic!("no assignment"));
    assert_eq!(a.ranges(), &[BinRange::new(0, 4096), BinRange::new(4096, 4096)]);
    let grown = job
        .move_bins_by(BinRange::new(2048, 4096), 0, 1, 512, WAIT)
        .unwrap_or_else(|e| panic!("scale-out: {e}"));
    assert_eq!(grown.len(), 4);
    let a = job.assignment().unwrap_or_else(|| panic!("no assignment"));
    assert_eq!(a.ranges(), &[BinRange::new(0, 2048), BinRange::new(2048, 4096)]);
    out.until(60_000);
    job.move_bins_by(BinRange::new(2048, 4096), 1, 0, 1024, WAIT).unwrap_or_else(|e| panic!("scale-in: {e}"));
    let a = job.assignment().unwrap_or_else(|| panic!("no assignment"));
    assert_eq!(a.bins_of(0), BinRange::new(0, 4096));
    assert!(a.bins_of(1).is_empty());
    job.wait().unwrap_or_else(|e| panic!("job: {e}"));
    check(&out.all(), records);
}

/// `Job::rescale`: from one used worker of three to three, to two, to
/// one, each reached by bounded handoffs between neighbours.
#[test]
fn a_job_rescales_to_any_number_of_its_workers() {
    let _watchdog = spate::Watchdog::start("rescale", Duration::from_secs(120));
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let records = 200_000;
    let (job, out) = start_on(&dir, records, 100_000, 20, 1, 3);
    let out = Collector::start(out);
    out.until(10_000);
    for (i, used) in [3usize, 2, 1].into_iter().enumerate() {
        let steps = job.rescale(used, 512, WAIT).unwrap_or_else(|e| panic!("rescale to {used}: {e}"));
        assert!(!steps.is_empty(), "rescaling to {used} moved nothing");
        let a = job.assignment().unwrap_or_else(|| panic!("no assignment"));
        let all = BinRange::new(0, 4096);
        for w in 0..3 {
            let want = if w < used { all.part(w as u32, used as u32) } else { BinRange::new(4096, 4096) };
            assert_eq!(
                a.bins_of(w).len(),
                want.len(),
                "worker {w} after rescaling to {used}: {:?}",
                a.ranges()
            );
        }
        out.until(10_000 * (i + 2) + 20_000);
    }
    assert!(matches!(job.rescale(4, 512, WAIT), Err(HandoffError::Assignment(_))));
    job.wait().unwrap_or_else(|e| panic!("job: {e}"));
    check(&out.all(), records);
}

/// Steps back and forth, one after the other, until the input ends: the
/// end reaches the workers in the middle of a step (the taker's input ends
/// while it holds records for the state on its way, or the giver's before
/// it split the bins off). The held records are applied before the end
/// goes downstream, and no worker leaves while a step needs it.
#[test]
fn moves_racing_the_end_of_the_input_lose_nothing() {
    let _watchdog = spate::Watchdog::start("handoff at the end", Duration::from_secs(240));
    let records = 40_000;
    let mut in_flight_at_end = 0;
    for round in 0..8 {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let (job, out) = start(&dir, records, 80_000, if round % 2 == 0 { 0 } else { 10 });
        let out = Collector::start(out);
        out.until(1_000);
        let mut moves = 0;
        loop {
            let (from, to) = if moves % 2 == 0 { (0, 1) } else { (1, 0) };
            match job.move_bins(BinRange::new(1024, 2048), from, to, WAIT) {
                Ok(_) => moves += 1,
                Err(HandoffError::JobEnded) => break,
                Err(e) => panic!("round {round}, move {moves}: {e}"),
            }
        }
        // The input ended during the last step, or after it.
        if out.count.load(Ordering::Relaxed) < records as usize {
            in_flight_at_end += 1;
        }
        job.wait().unwrap_or_else(|e| panic!("round {round}: job: {e}"));
        let got = out.all();
        eprintln!("round {round}: {moves} moves, {} results", got.len());
        assert!(moves > 0, "round {round}: no step went through");
        check(&got, records);
    }
    eprintln!("{in_flight_at_end} of 8 rounds ended with results still to come");
}
