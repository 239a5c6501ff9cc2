//! A regression test for the runtime stall of decision 15
//! (docs/ARCHITECTURE.md): several small two-worker jobs running at once in
//! one process oversubscribe a 2-core machine. While workers were glommio
//! tasks, one job in about fifteen stopped making progress for minutes —
//! glommio's executor loop can enter its idle spin with runnable tasks
//! queued, after an OS preemption lands between its timer set-up and its
//! first preemption check — and windows closed by the watermark did not fire.
//! Workers are now one poll loop that never yields to glommio's scheduler.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use spate::prelude::*;

type Rec = (u64, u64, u64);

/// One job: four keys in window [0, 10), then watermark 15. Returns a
/// description of the stall, if any.
fn once(run: usize) -> Option<String> {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let (input, source) = spate::input::<Rec>(64);
    let (sink, output) = spate::output::<(u64, u64, u64, u64)>(64);
    let cfg = RuntimeConfig {
        workers: 2,
        pin: false,
        data_dir: dir.path().to_path_buf(),
        linger_us: 0,
        ..Default::default()
    };
    let job = Runtime::new(cfg)
        .start(&format!("stall-{run}"), move |df| {
            df.input("in", &source)
                .key_by("by-key", |r: &Rec| r.0)
                .window(Window::tumbling(10), |r: &Rec| r.1)
                .aggregate("sum", || 0u64, |a, r| *a += r.2)
                .output("out", &sink);
        })
        .unwrap_or_else(|e| panic!("start: {e}"));
    for k in 1..=4 {
        input.send((k, 2, 1)).unwrap_or_else(|e| panic!("{e}"));
    }
    std::thread::sleep(Duration::from_millis(50));
    input.advance_watermark(15).unwrap_or_else(|e| panic!("{e}"));
    let t = Instant::now();
    let mut got = 0;
    while got < 4 && t.elapsed() < Duration::from_secs(3) {
        if let Ok(Some(_)) = output.recv_timeout(Duration::from_millis(100)) {
            got += 1;
        }
    }
    let stall = (got < 4).then(|| {
        format!(
            "run {run}: {got} of 4 windows after 3 s; records_in = {}",
            job.metrics().records_in.load(Ordering::Relaxed)
        )
    });
    drop(input);
    // The job ends once its input does.
    let t = Instant::now();
    while !job.is_finished() {
        if t.elapsed() > Duration::from_secs(10) {
            return Some(format!("run {run}: the job did not end within 10 s of its input's end"));
        }
        let _ = output.recv_timeout(Duration::from_millis(20));
    }
    if let Err(e) = job.wait() {
        return Some(format!("run {run}: {e}"));
    }
    stall
}

#[test]
fn concurrent_small_jobs_do_not_stall() {
    let _watchdog =
        spate::Watchdog::start("concurrent_small_jobs_do_not_stall", std::time::Duration::from_secs(120));
    let threads: Vec<_> = (0..3)
        .map(|t| std::thread::spawn(move || (0..15).filter_map(|i| once(t * 100 + i)).collect::<Vec<_>>()))
        .collect();
    let stalls: Vec<String> =
        threads.into_iter().flat_map(|h| h.join().unwrap_or_else(|_| panic!("thread panicked"))).collect();
    assert!(stalls.is_empty(), "{} stalls:\n{}", stalls.len(), stalls.join("\n"));
}
