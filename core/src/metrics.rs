//! Metrics a job publishes while it runs: counters per worker and the
//! end-to-end latency histogram of its sinks.
//!
//! Workers never take a lock per record: counters are relaxed atomics bumped
//! once per batch or step, and sinks record latency into a worker-local
//! histogram that is merged into the shared one every
//! [`METRICS_PUBLISH_MS`](crate::limits::METRICS_PUBLISH_MS).

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use hdrhistogram::Histogram;

use crate::limits::METRICS_PUBLISH_MS;
use crate::time::now_ns;

/// Highest latency the histograms track, in nanoseconds (60 s); larger values
/// are clamped.
pub const LATENCY_MAX_NS: u64 = 60_000_000_000;

/// A new latency histogram: nanoseconds, 3 significant digits.
pub fn latency_histogram() -> Histogram<u64> {
    match Histogram::new_with_bounds(1, LATENCY_MAX_NS, 3) {
        Ok(h) => h,
        // The bounds are constants that hdrhistogram accepts.
        Err(e) => panic!("latency histogram bounds rejected: {e}"),
    }
}

/// The metrics of one job, shared by its workers and whoever watches it.
#[derive(Debug)]
pub struct JobMetrics {
    /// Records produced by sources.
    pub records_in: AtomicU64,
    /// Records that reached sinks.
    pub records_out: AtomicU64,
    /// Workers that have ended (normally or not).
    pub workers_done: AtomicUsize,
    /// Workers of a share that recovers live which are through — every
    /// stream in and out ended — and wait, links and replay logs kept,
    /// until the job is done everywhere ([`JobMetrics::release`]): a
    /// replacement of a failed worker may still need them to re-link and
    /// replay.
    pub workers_through: AtomicUsize,
    /// Decisions of the job's scaling policy (applied or not).
    pub scaling_decisions: AtomicU64,
    released: AtomicBool,
    /// Latency of records that reached latency-recording sinks since the job
    /// started. Made at the first merge: a histogram's counts are about
    /// 210 KiB, zeroed when made, and a job without latency-recording sinks
    /// needs none (three of them were about a tenth of the start of a job).
    latency: Mutex<Option<Histogram<u64>>>,
    /// Latency since the last call to [`JobMetrics::take_interval_latency`]
    /// (made at the first merge after it).
    interval: Mutex<Option<Histogram<u64>>>,
    failure: Mutex<Option<String>>,
    failed: AtomicBool,
    cancelled: AtomicBool,
}

impl Default for JobMetrics {
    fn default() -> Self {
        Self {
            records_in: AtomicU64::new(0),
            records_out: AtomicU64::new(0),
            workers_done: AtomicUsize::new(0),
            workers_through: AtomicUsize::new(0),
            scaling_decisions: AtomicU64::new(0),
            released: AtomicBool::new(false),
            latency: Mutex::new(None),
            interval: Mutex::new(None),
            failure: Mutex::new(None),
            failed: AtomicBool::new(false),
            cancelled: AtomicBool::new(false),
        }
    }
}

impl JobMetrics {
    /// New, shared.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Marks the job failed with `reason` (the first reason wins). Workers
    /// stop at their next step.
    pub fn fail(&self, reason: impl Into<String>) {
        if let Ok(mut f) = self.failure.lock() {
            if f.is_none() {
                *f = Some(reason.into());
            }
        }
        self.failed.store(true, Ordering::Release);
    }

    /// Stops the job without a failure (its node is told to roll back, see
    /// `Job::cancel`). Workers stop at their next step.
    pub fn cancel(&self) {
        self.cancelled.store(true, Ordering::Release);
        self.failed.store(true, Ordering::Release);
    }

    /// The job is done everywhere: workers that are through end.
    pub fn release(&self) {
        self.released.store(true, Ordering::Release);
    }

    /// Whether [`JobMetrics::release`] was called.
    pub fn is_released(&self) -> bool {
        self.released.load(Ordering::Acquire)
    }

    /// Whether the job was cancelled.
    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Acquire)
    }

    /// Whether the job failed or was cancelled: workers stop.
    pub fn has_failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }

    /// Why the job failed, if it did.
    pub fn failure(&self) -> Option<String> {
        self.failure.lock().ok().and_then(|f| f.clone())
    }

    /// Adds a worker's locally recorded latencies.
    pub fn merge_latency(&self, local: &Histogram<u64>) {
        if let Ok(mut h) = self.latency.lock() {
            add_latency(&mut h, local);
        }
        if let Ok(mut h) = self.interval.lock() {
            add_latency(&mut h, local);
        }
    }

    /// [`JobMetrics::merge_latency`] if neither histogram is locked by
    /// another thread now; returns whether it merged. A worker never waits
    /// here: a thread holding the lock may have been descheduled, and the
    /// worker would wait out its time slice (milliseconds).
    pub fn try_merge_latency(&self, local: &Histogram<u64>) -> bool {
        let (Ok(mut all), Ok(mut interval)) = (self.latency.try_lock(), self.interval.try_lock()) else {
            return false;
        };
        add_latency(&mut all, local);
        add_latency(&mut interval, local);
        true
    }

    /// The latency histogram of the whole run so far.
    pub fn latency(&self) -> Histogram<u64> {
        match self.latency.lock() {
            Ok(h) => h.clone().unwrap_or_else(latency_histogram),
            Err(_) => latency_histogram(),
        }
    }

    /// The latencies recorded since the previous call (for a live status line
    /// or a latency-over-time plot).
    pub fn take_interval_latency(&self) -> Histogram<u64> {
        // Taken under the lock, not copied: a worker publishing meanwhile
        // waits for a swap, and makes the next interval's histogram itself.
        let taken = match self.interval.lock() {
            Ok(mut h) => h.take(),
            Err(_) => None,
        };
        taken.unwrap_or_else(latency_histogram)
    }
}

/// Adds `local` to the job's histogram `h`, making it first if there is
/// none yet.
fn add_latency(h: &mut Option<Histogram<u64>>, local: &Histogram<u64>) {
    // Both histograms share bounds, so adding cannot fail.
    let _ = h.get_or_insert_with(latency_histogram).add(local);
}

/// A sink's worker-local latency recorder, published into [`JobMetrics`]
/// periodically.
pub struct LatencyRecorder {
    /// Made at the first latency recorded (a counting sink that records
    /// none never makes it; see [`JobMetrics`]).
    local: Option<Histogram<u64>>,
    metrics: Arc<JobMetrics>,
    pending_out: u64,
    last_publish_ns: u64,
}

impl LatencyRecorder {
    /// A recorder publishing into `metrics`.
    pub fn new(metrics: Arc<JobMetrics>) -> Self {
        Self { local: None, metrics, pending_out: 0, last_publish_ns: now_ns() }
    }

    /// Counts one output record; if `ingest_ns` is non-zero, records its
    /// latency at `now_ns`.
    #[inline]
    pub fn record(&mut self, ingest_ns: u64, now: u64) {
        self.pending_out += 1;
        if ingest_ns != 0 {
            let lat = now.saturating_sub(ingest_ns).clamp(1, LATENCY_MAX_NS);
            self.local.get_or_insert_with(latency_histogram).saturating_record(lat);
        }
        if self.pending_out & 63 == 0 {
            self.maybe_publish(now);
        }
    }

    /// Counts output records without latency.
    #[inline]
    pub fn count(&mut self, n: u64) {
        self.pending_out += n;
    }

    /// Publishes if the publish interval has passed.
    pub fn maybe_publish(&mut self, now: u64) {
        if now.saturating_sub(self.last_publish_ns) >= METRICS_PUBLISH_MS * 1_000_000 {
            self.publish_count();
            // Without waiting for a lock: if another thread holds one, the
            // latencies stay here and go with a later publish. An empty
            // histogram is not reset (that zeroes all its counts).
            match &mut self.local {
                Some(h) if !h.is_empty() => {
                    if self.metrics.try_merge_latency(h) {
                        h.reset();
                        self.last_publish_ns = now;
                    }
                }
                _ => self.last_publish_ns = now,
            }
        }
    }

    /// Adds the records counted here to the job's count.
    fn publish_count(&mut self) {
        self.metrics.records_out.fetch_add(self.pending_out, Ordering::Relaxed);
        self.pending_out = 0;
    }

    /// Publishes now (waiting for the locks).
    pub fn publish(&mut self) {
        self.publish_count();
        if let Some(h) = self.local.as_mut().filter(|h| !h.is_empty()) {
            self.metrics.merge_latency(h);
            h.reset();
        }
    }
}

impl Drop for LatencyRecorder {
    fn drop(&mut self) {
        self.publish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::{Duration, Instant};

    /// A sink that records no latency makes no histogram, the job's
    /// histograms are made at the first merge, and an interval taken is
    /// made again at the next one.
    #[test]
    fn histograms_are_made_only_for_latencies() {
        let m = JobMetrics::new();
        let mut r = LatencyRecorder::new(m.clone());
        r.count(5);
        // No ingest time: counted, no latency.
        r.record(0, now_ns());
        r.maybe_publish(now_ns() + 2 * METRICS_PUBLISH_MS * 1_000_000);
        assert_eq!(m.records_out.load(Ordering::Relaxed), 6);
        assert!(r.local.is_none());
        assert!(m.latency.lock().is_ok_and(|h| h.is_none()));
        assert!(m.interval.lock().is_ok_and(|h| h.is_none()));
        assert!(m.latency().is_empty());
        let t0 = now_ns();
        r.record(t0, t0 + 500);
        r.publish();
        assert_eq!(m.latency().len(), 1);
        assert_eq!(m.take_interval_latency().len(), 1);
        assert!(m.take_interval_latency().is_empty());
        r.record(t0, t0 + 700);
        r.publish();
        assert_eq!(m.take_interval_latency().len(), 1);
        assert_eq!(m.latency().len(), 2);
    }

    #[test]
    fn a_worker_does_not_wait_for_a_metrics_lock_another_thread_holds() {
        let m = JobMetrics::new();
        let mut r = LatencyRecorder::new(m.clone());
        let t0 = now_ns();
        r.record(t0, t0 + 1_000);
        // Another thread holds the interval histogram's lock for a while.
        let (locked, wait) = (mpsc::channel(), mpsc::channel::<()>());
        let m2 = m.clone();
        let holder = std::thread::spawn(move || {
            let _g = m2.interval.lock();
            let _ = locked.0.send(());
            let _ = wait.1.recv_timeout(Duration::from_secs(10));
        });
        assert!(locked.1.recv_timeout(Duration::from_secs(10)).is_ok());
        let later = t0 + 2 * METRICS_PUBLISH_MS * 1_000_000;
        let started = Instant::now();
        r.maybe_publish(later);
        assert!(started.elapsed() < Duration::from_secs(1), "the publish waited for the lock");
        // The count went out; the latency stays local until a later publish.
        assert_eq!(m.records_out.load(Ordering::Relaxed), 1);
        assert!(m.latency().is_empty());
        let _ = wait.0.send(());
        assert!(holder.join().is_ok());
        r.maybe_publish(later + 1);
        let h = m.latency();
        assert_eq!(h.len(), 1);
        assert!(h.max() >= 999 && h.max() <= 1_001, "{}", h.max());
        assert_eq!(m.take_interval_latency().len(), 1);
    }
}
