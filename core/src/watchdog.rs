//! A deadline for a whole piece of work: if it is still running when the
//! deadline passes, the process prints what overran and exits with status
//! 124 (as `timeout(1)` does). Tests hold one so that a hang fails the run
//! loudly instead of stalling CI until its own limit; long-running tools can
//! use one as a last-resort bound.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Exits the process if not dropped within its limit.
#[must_use = "the watchdog disarms when dropped"]
pub struct Watchdog {
    done: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Watchdog {
    /// Arms a watchdog for `what`, firing after `limit`.
    pub fn start(what: &str, limit: Duration) -> Self {
        let done = Arc::new(AtomicBool::new(false));
        let flag = done.clone();
        let what = what.to_string();
        let deadline = Instant::now() + limit;
        let thread = std::thread::Builder::new().name("spate-watchdog".into()).spawn(move || {
            while !flag.load(Ordering::Acquire) {
                if Instant::now() >= deadline {
                    eprintln!("watchdog: {what} still running after {limit:?}; exiting with status 124");
                    std::process::exit(124);
                }
                std::thread::park_timeout(Duration::from_millis(50));
            }
        });
        // Without a thread there is no deadline, but the work still runs.
        Self { done, thread: thread.ok() }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.done.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}
