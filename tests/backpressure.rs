//! Backpressure end to end: a sink that is read slowly throttles an
//! as-fast-as-possible generator through every bounded queue between them
//! (the output handle, the exchange channels, the source step), instead of
//! letting records pile up in memory.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use spate::prelude::*;

const WORKERS: usize = 2;
const BATCH_RECORDS: usize = 64;
const CHANNEL_BATCHES: usize = 4;
const STEP_RECORDS: usize = 64;
const HANDLE_RECORDS: usize = 16;
const RECORDS: u64 = 400_000;

/// Records that may be in flight between the generator and the reader:
/// per worker a source step, an open and a closed batch per outbox, the
/// channel's batches and the batch a receiver is pushing, plus the output
/// handle's queue; doubled for slack.
const IN_FLIGHT_MAX: u64 = 2
    * (WORKERS * (STEP_RECORDS + 2 * BATCH_RECORDS + CHANNEL_BATCHES * BATCH_RECORDS + BATCH_RECORDS)
        + HANDLE_RECORDS) as u64;

fn rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

#[test]
fn slow_reader_throttles_the_generator() {
    let _watchdog =
        spate::Watchdog::start("slow_reader_throttles_the_generator", std::time::Duration::from_secs(120));
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let (sink, output) = spate::output::<u64>(HANDLE_RECORDS);
    let cfg = RuntimeConfig {
        workers: WORKERS,
        pin: false,
        data_dir: dir.path().to_path_buf(),
        batch_records: BATCH_RECORDS,
        channel_batches: CHANNEL_BATCHES,
        source_step_records: STEP_RECORDS,
        linger_us: 0,
        ..Default::default()
    };
    let job = Runtime::new(cfg)
        .start("backpressure", move |df| {
            df.generate("gen", GeneratorSpec::bounded(RECORDS), |i| i, |i| i)
                .key_by("by-key", |x: &u64| *x % 1024)
                .stream()
                .output("out", &sink);
        })
        .unwrap_or_else(|e| panic!("start: {e}"));
    let metrics = job.metrics().clone();
    let rss_before = rss_bytes();

    // Read one record per millisecond for 200 ms.
    let mut read = 0u64;
    let paused = Instant::now();
    while paused.elapsed() < Duration::from_millis(200) {
        match output.recv_timeout(Duration::from_secs(10)) {
            Ok(Some(_)) => read += 1,
            Ok(None) => panic!("the job ended after {read} records"),
            Err(_) => panic!("no record within 10 s"),
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    // Give the generator time to fill whatever it can.
    std::thread::sleep(Duration::from_millis(50));
    let produced = metrics.records_in.load(Ordering::Relaxed);
    let in_flight = produced - read;
    assert!(
        in_flight <= IN_FLIGHT_MAX,
        "{produced} records produced while {read} were read: {in_flight} in flight, more than {IN_FLIGHT_MAX}"
    );
    if let (Some(before), Some(after)) = (rss_before, rss_bytes()) {
        assert!(
            after.saturating_sub(before) < 200 << 20,
            "RSS grew from {before} to {after} bytes while the reader was slow"
        );
    }

    // Unthrottled, the same job runs far faster than the reader allowed:
    // the bound above is what the slow reader imposed, not the generator's
    // own speed.
    let free = Instant::now();
    drop(output); // results are no longer wanted: the sinks discard them
    let deadline = Instant::now() + Duration::from_secs(30);
    while !job.is_finished() {
        assert!(Instant::now() < deadline, "the job did not finish after the reader left");
        std::thread::sleep(Duration::from_millis(5));
    }
    let free_secs = free.elapsed().as_secs_f64();
    let report = job.wait().unwrap_or_else(|e| panic!("job: {e}"));
    assert_eq!(report.records_in, RECORDS);
    let free_in_200ms = (RECORDS - produced) as f64 / free_secs * 0.2;
    println!(
        "slow reader: {read} read, {in_flight} in flight (max {IN_FLIGHT_MAX}); unthrottled: {free_in_200ms:.0} per 200 ms"
    );
    // Compared with what the generator made while the reader was slow (in
    // about 250 ms), not with a fixed speed: a loaded machine slows both.
    assert!(
        free_in_200ms > 10.0 * produced as f64,
        "unthrottled, the generator made only {free_in_200ms:.0} records per 200 ms against {produced} \
         while throttled: the test shows nothing"
    );
}
