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
    match std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        Ok(d) => d.as_nanos() as u64,
        Err(_) => 0,
    }
}
