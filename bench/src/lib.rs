//! # spate-bench
//!
//! Benchmark harness for Spate: peer baselines, latency measurement and A/B comparison.
//! This crate deliberately does not depend on `spate-core`/`spate-ops`; it only shares
//! Spate's key hash ([`spate_state::hash_u64`]) so that peer systems route and store keys
//! with the same hash function class.
//!
//! ## Map
//!
//! * [`latency`] — latency measurement:
//!   [`LatencyReport`](latency::LatencyReport) (p50/p99/p99.9/max in µs plus throughput,
//!   from an `hdrhistogram` of nanoseconds built by [`new_histogram`](latency::new_histogram);
//!   one JSON line via `to_json`, or a human line via `Display`),
//!   [`Pacer`](latency::Pacer) (open-loop schedule `start + i·1e9/rate`, exact, no drift),
//!   and [`LatencyOverTime`](latency::LatencyOverTime) (per-interval p50/p99/max series with
//!   marked events, as CSV).
//! * [`compare`] — [`run_alternating`](compare::run_alternating) runs two benchmark
//!   commands alternately (A, B, A, B, …), reads `records_per_s` from the JSON object line
//!   each prints, and reports per-side median/min/max, the median of per-pair ratios and
//!   the ratio of medians; includes a dependency-free JSON number extractor.
//! * [`hashing`] — [`BuildHashU64`](hashing::BuildHashU64), a `BuildHasher` applying
//!   `hash_u64`, for peer systems' keyed state.
//!
//! ## Binaries
//!
//! * `peer-timely` — the keyed-sum workload on timely-dataflow:
//!   `peer-timely --records N --workers W [--keys K] [--json]`. `N` records
//!   `(i % K, i)` are generated in parallel (worker `w` makes `i ≡ w mod W`, in batches),
//!   exchanged by `hash_u64(key)`, summed per key (hash map keyed with `hash_u64`), and each
//!   `(key, running_sum)` is counted by a sink; the total must equal `N` (else exit 1).
//!   With `--json` it prints one line
//!   `{"system":"timely","records":N,"workers":W,"seconds":S,"records_per_s":R}`, where
//!   the time runs from just before the dataflow starts until all workers have finished.
//!
//! ## JSON line convention
//!
//! Every benchmark binary prints, with `--json`, exactly one JSON object line on stdout
//! with at least a numeric `records_per_s`; [`compare`] relies on this.
#![forbid(missing_docs)]

pub mod compare;
pub mod hashing;
pub mod latency;
