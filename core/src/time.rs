//! Clocks and timestamps.
//!
//! Ingestion times are nanoseconds of the realtime clock since the Unix
//! epoch, so that they compare across processes and (NTP-synchronised)
//! machines. Event times are whatever unit the query's timestamp functions
//! return (the operator library uses milliseconds); watermarks are in the
//! same unit as event times.

/// An event time or watermark, in the query's unit.
pub type Timestamp = u64;

/// The watermark that closes every window: the end of a finite stream.
pub const WATERMARK_END: Timestamp = u64::MAX;

/// Nanoseconds since the Unix epoch (realtime clock).
#[inline]
pub fn now_ns() -> u64 {
    #[cfg(test)]
    if let Some(t) = virtual_clock::ns() {
        return virtual_clock::UNIX_NS_AT_ZERO + t;
    }
    match std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        Ok(d) => d.as_nanos() as u64,
        Err(_) => 0,
    }
}

/// The monotonic clock the runtime and the control plane time their
/// deadlines, heartbeats and timeouts by. In core's own tests the
/// simulator may set a virtual clock for the thread ([`virtual_clock`]);
/// otherwise this is `Instant::now()`.
#[inline]
pub fn now() -> std::time::Instant {
    #[cfg(test)]
    if let Some(t) = virtual_clock::instant() {
        return t;
    }
    std::time::Instant::now()
}

/// Milliseconds since the Unix epoch (realtime clock).
pub fn unix_ms() -> u64 {
    now_ns() / 1_000_000
}

/// The simulator's clock for this thread (core's tests only): while set,
/// [`now`] and [`now_ns`] read it instead of the machine's clocks, so that
/// production code run by the simulator sees simulated time and a seed
/// replays exactly.
#[cfg(test)]
pub(crate) mod virtual_clock {
    use std::cell::Cell;
    use std::time::{Duration, Instant};

    thread_local! {
        /// `(the instant at virtual time 0, virtual ns since then)`.
        static CLOCK: Cell<Option<(Instant, u64)>> = const { Cell::new(None) };
    }

    /// Realtime nanoseconds at virtual time 0 (an arbitrary, fixed date:
    /// 2026-01-01).
    pub(crate) const UNIX_NS_AT_ZERO: u64 = 1_767_225_600_000_000_000;

    /// Starts the virtual clock at 0 for this thread.
    pub(crate) fn start() {
        CLOCK.with(|c| c.set(Some((Instant::now(), 0))));
    }

    /// Stops it: the machine's clocks again.
    pub(crate) fn stop() {
        CLOCK.with(|c| c.set(None));
    }

    /// Sets virtual time to `ns` (never backwards).
    pub(crate) fn set(ns: u64) {
        CLOCK.with(|c| {
            if let Some((base, t)) = c.get() {
                c.set(Some((base, t.max(ns))));
            }
        });
    }

    /// Virtual nanoseconds since the start, if the clock runs.
    pub(crate) fn ns() -> Option<u64> {
        CLOCK.with(|c| c.get().map(|(_, t)| t))
    }

    /// The instant of virtual time `ns` (the clock must run).
    pub(crate) fn at(ns: u64) -> Instant {
        CLOCK.with(|c| c.get().map_or_else(Instant::now, |(base, _)| base + Duration::from_nanos(ns)))
    }

    pub(super) fn instant() -> Option<Instant> {
        CLOCK.with(|c| c.get().map(|(base, t)| base + Duration::from_nanos(t)))
    }
}
