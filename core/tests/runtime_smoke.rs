//! The runtime end to end with hand-written operators: records cross
//! workers by key and every one arrives once.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use spate_core::push::Push;
use spate_core::source::{Source, SourceStatus, Step};
use spate_core::{Dataflow, Meta, Parallelism, Runtime, RuntimeConfig, Timestamp};

struct Count {
    next: u64,
    end: u64,
    step: u64,
}

impl Source<(u64, u64)> for Count {
    fn step(&mut self, out: &mut dyn Push<(u64, u64)>, max: usize) -> Step {
        let mut n = 0;
        while n < max && self.next < self.end {
            out.push((self.next % 100, self.next), Meta { ingest_ns: 1 });
            self.next += self.step;
            n += 1;
        }
        out.watermark(self.next);
        Step {
            emitted: n,
            status: if self.next >= self.end { SourceStatus::Done } else { SourceStatus::Busy },
        }
    }
}

struct Collect {
    worker: usize,
    seen: Arc<Mutex<Vec<(usize, u64, u64)>>>,
    finished: Arc<AtomicU64>,
}

impl Push<(u64, u64)> for Collect {
    fn push(&mut self, rec: (u64, u64), _meta: Meta) {
        if let Ok(mut s) = self.seen.lock() {
            s.push((self.worker, rec.0, rec.1));
        }
    }
    fn watermark(&mut self, _wm: Timestamp) {}
    fn finish(&mut self) {
        self.finished.fetch_add(1, Ordering::SeqCst);
    }
    fn barrier(&mut self, _id: u64) {}
    fn flush(&mut self) {}
}

fn run(workers: usize, linger_us: u64, n: u64) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let finished = Arc::new(AtomicU64::new(0));
    let cfg = RuntimeConfig { workers, linger_us, pin: false, batch_records: 7, ..Default::default() };
    let (s2, f2) = (seen.clone(), finished.clone());
    let job = Runtime::new(cfg)
        .start("smoke", move |df: &Dataflow| {
            let (s3, f3) = (s2.clone(), f2.clone());
            df.source("count", Parallelism::PerWorker, move |ctx| Count {
                next: ctx.worker as u64,
                end: n,
                step: ctx.workers as u64,
            })
            .key_by("by-key", |r: &(u64, u64)| r.0)
            .stream()
            .sink("collect", move |ctx| {
                Box::new(Collect { worker: ctx.worker, seen: s3.clone(), finished: f3.clone() })
            });
        })
        .unwrap_or_else(|e| panic!("start: {e}"));
    let report = job.wait().unwrap_or_else(|e| panic!("wait: {e}"));
    assert_eq!(report.records_in, n);
    assert_eq!(finished.load(Ordering::SeqCst), workers as u64, "every sink instance finished");
    let mut got = seen.lock().map(|s| s.clone()).unwrap_or_default();
    assert_eq!(got.len() as u64, n);
    // every key lands on exactly one worker
    let mut owner = std::collections::HashMap::new();
    for (w, k, _) in &got {
        assert_eq!(*owner.entry(*k).or_insert(*w), *w, "key {k} seen on two workers");
    }
    got.sort_by_key(|x| x.2);
    for (i, (_, k, v)) in got.iter().enumerate() {
        assert_eq!((*v, *k), (i as u64, i as u64 % 100));
    }
}

#[test]
fn one_worker() {
    let _watchdog = spate_core::watchdog::Watchdog::start("one_worker", std::time::Duration::from_secs(120));
    run(1, 0, 10_000);
}

#[test]
fn two_workers_linger_zero() {
    let _watchdog =
        spate_core::watchdog::Watchdog::start("two_workers_linger_zero", std::time::Duration::from_secs(120));
    run(2, 0, 50_000);
}

#[test]
fn three_workers_with_linger() {
    let _watchdog = spate_core::watchdog::Watchdog::start(
        "three_workers_with_linger",
        std::time::Duration::from_secs(120),
    );
    run(3, 500, 30_001);
}
