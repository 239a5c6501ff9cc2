//! Latency measurement: histogram summaries, open-loop pacing, and latency over time.
//!
//! * [`LatencyReport`] summarises an `hdrhistogram::Histogram<u64>` of **nanoseconds**
//!   (build it with [`new_histogram`], record with [`record_ns`]) into p50/p99/p99.9/max
//!   in microseconds plus throughput, printable as one JSON object line
//!   ([`LatencyReport::to_json`]) or as a human line (`Display`).
//! * [`Pacer`] schedules open-loop load: record `i` is *intended* to be sent at
//!   `start + i * 1e9 / rate` ns (exact integer math, so no drift however long the run);
//!   latency should be measured from the intended time, not the actual send time, so that
//!   a stalled sender does not hide queueing delay (coordinated omission).
//! * [`LatencyOverTime`] buckets latencies by completion time into fixed intervals
//!   (e.g. 100 ms) and reports a p50/p99/max series with marked events
//!   (e.g. `"failure"`), writable as CSV.

use std::fmt;
use std::io;

use hdrhistogram::Histogram;

/// Highest latency a histogram from [`new_histogram`] can hold: 60 s, in nanoseconds.
/// Larger values are clamped to it by [`record_ns`].
pub const HISTOGRAM_MAX_NS: u64 = 60_000_000_000;

/// Significant decimal digits kept by [`new_histogram`].
pub const HISTOGRAM_SIGFIG: u8 = 3;

/// A nanosecond latency histogram: 1 ns ..= [`HISTOGRAM_MAX_NS`], 3 significant digits,
/// auto-resize off (so recording never allocates).
pub fn new_histogram() -> Histogram<u64> {
    histogram_with_sigfig(HISTOGRAM_SIGFIG)
}

fn histogram_with_sigfig(sigfig: u8) -> Histogram<u64> {
    let mut h =
        Histogram::<u64>::new_with_bounds(1, HISTOGRAM_MAX_NS, sigfig).expect("valid histogram bounds");
    h.auto(false);
    h
}

/// Records one latency in nanoseconds, clamping it into the histogram's range
/// (0 becomes the lowest trackable value's bucket, above-max becomes max).
#[inline]
pub fn record_ns(h: &mut Histogram<u64>, ns: u64) {
    h.saturating_record(ns.max(1));
}

fn ns_to_us(ns: u64) -> f64 {
    ns as f64 / 1_000.0
}

/// Formats a float for JSON: finite values with 3 decimals (always with a decimal point),
/// non-finite ones as `null`.
fn json_f64(x: f64) -> String {
    if x.is_finite() {
        format!("{x:.3}")
    } else {
        "null".to_owned()
    }
}

/// A latency and throughput summary of one run.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LatencyReport {
    /// Median latency, microseconds.
    pub p50_us: f64,
    /// 99th percentile latency, microseconds.
    pub p99_us: f64,
    /// 99.9th percentile latency, microseconds.
    pub p999_us: f64,
    /// Largest latency recorded, microseconds.
    pub max_us: f64,
    /// Throughput: `count / seconds` (0 when `seconds` is not positive).
    pub records_per_s: f64,
    /// Number of records the run processed (not necessarily all recorded in the histogram,
    /// e.g. when latency is sampled).
    pub count: u64,
    /// Wall time of the run, seconds.
    pub seconds: f64,
    /// CPU time the hypervisor gave to other work while the run went on,
    /// all of this machine's CPUs together, milliseconds (see
    /// [`steal_ms`]); `None` where it cannot be read. A worker that loses
    /// its CPU for milliseconds delays every record behind it, so a tail
    /// beside nonzero steal is the VM's, not the engine's.
    pub steal_ms: Option<u64>,
}

/// Ticks per second of `/proc/stat`'s counters (`USER_HZ`: 100 on every
/// architecture Linux exports it for).
const USER_HZ: u64 = 100;

/// The CPU steal time since boot, milliseconds: the `steal` column of the
/// `cpu` line of `/proc/stat`. `None` where there is no such file (not
/// Linux) or it cannot be parsed. Difference two readings for a run.
pub fn steal_ms() -> Option<u64> {
    parse_steal_ms(&std::fs::read_to_string("/proc/stat").ok()?)
}

/// The steal time since `before` (a [`steal_ms`] reading), milliseconds;
/// `None` if either reading is missing.
pub fn steal_ms_since(before: Option<u64>) -> Option<u64> {
    before.zip(steal_ms()).map(|(a, b)| b.saturating_sub(a))
}

/// The steal time, milliseconds, in the text of `/proc/stat`: the eighth
/// counter of its `cpu` line (after user, nice, system, idle, iowait, irq
/// and softirq).
pub fn parse_steal_ms(stat: &str) -> Option<u64> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let ticks: u64 = line.split_whitespace().nth(8)?.parse().ok()?;
    Some(ticks.saturating_mul(1000) / USER_HZ)
}

impl LatencyReport {
    /// Summarises a histogram of nanosecond latencies; `count` records in `seconds`.
    /// An empty histogram gives zero latencies.
    pub fn from_histogram(hist: &Histogram<u64>, count: u64, seconds: f64) -> Self {
        let q = |quantile: f64| {
            if hist.is_empty() {
                0.0
            } else {
                ns_to_us(hist.value_at_quantile(quantile))
            }
        };
        let records_per_s = if seconds > 0.0 { count as f64 / seconds } else { 0.0 };
        LatencyReport {
            p50_us: q(0.50),
            p99_us: q(0.99),
            p999_us: q(0.999),
            max_us: if hist.is_empty() { 0.0 } else { ns_to_us(hist.max()) },
            records_per_s,
            count,
            seconds,
            steal_ms: None,
        }
    }

    /// One JSON object on one line (no trailing newline), e.g.
    /// `{"p50_us":12.345,"p99_us":...,"p999_us":...,"max_us":...,"records_per_s":...,"count":N,"seconds":...,"steal_ms":...}`
    /// (`steal_ms` is `null` when unknown).
    pub fn to_json(&self) -> String {
        format!(
            "{{\"p50_us\":{},\"p99_us\":{},\"p999_us\":{},\"max_us\":{},\"records_per_s\":{},\"count\":{},\"seconds\":{},\"steal_ms\":{}}}",
            json_f64(self.p50_us),
            json_f64(self.p99_us),
            json_f64(self.p999_us),
            json_f64(self.max_us),
            json_f64(self.records_per_s),
            self.count,
            json_f64(self.seconds),
            self.steal_ms.map_or_else(|| "null".to_owned(), |ms| ms.to_string()),
        )
    }
}

impl fmt::Display for LatencyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} records in {:.3} s ({:.3} M records/s); latency p50 {:.1} us, p99 {:.1} us, p99.9 {:.1} us, max {:.1} us",
            self.count,
            self.seconds,
            self.records_per_s / 1e6,
            self.p50_us,
            self.p99_us,
            self.p999_us,
            self.max_us
        )?;
        match self.steal_ms {
            Some(ms) => write!(f, "; CPU steal {ms} ms"),
            None => Ok(()),
        }
    }
}

/// Open-loop pacing at a fixed rate with no drift.
///
/// Record `i` (0-based) is intended to be sent at
/// `intended_ns(i) = start_ns + floor(i * 1e9 / rate)`, computed in 128-bit integers
/// from `start_ns` every time (never accumulated), so the schedule is exact however many
/// records are sent. A sender loop looks like:
///
/// ```
/// # use spate_bench::latency::Pacer;
/// let pacer = Pacer::new(1_000_000, 0); // 1 M records/s from t = 0
/// let mut sent = 0u64;
/// let now_ns = 2_500; // e.g. from a monotonic clock, in the same time base as start_ns
/// let due = pacer.due(now_ns);
/// while sent < due {
///     let _intended = pacer.intended_ns(sent); // stamp the record with this, send it
///     sent += 1;
/// }
/// assert_eq!(sent, 3); // records 0, 1, 2 were due at 0, 1000, 2000 ns
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pacer {
    rate: u64,
    start_ns: u64,
}

impl Pacer {
    /// A pacer sending `rate_per_s` records per second starting at `start_ns`
    /// (any monotonic nanosecond time base).
    ///
    /// # Panics
    /// If `rate_per_s` is 0.
    pub fn new(rate_per_s: u64, start_ns: u64) -> Self {
        assert!(rate_per_s > 0, "Pacer rate must be positive");
        Pacer { rate: rate_per_s, start_ns }
    }

    /// The configured rate, records per second.
    pub fn rate(&self) -> u64 {
        self.rate
    }

    /// The start time, nanoseconds.
    pub fn start_ns(&self) -> u64 {
        self.start_ns
    }

    /// The intended send time of record `i`: `start_ns + floor(i * 1e9 / rate)`
    /// (saturating at `u64::MAX`).
    #[inline]
    pub fn intended_ns(&self, i: u64) -> u64 {
        let offset = (i as u128 * 1_000_000_000u128) / self.rate as u128;
        (self.start_ns as u128 + offset).min(u64::MAX as u128) as u64
    }

    /// How many records are due at `now_ns`: the number of `i` with
    /// `intended_ns(i) <= now_ns` (0 before the start).
    #[inline]
    pub fn due(&self, now_ns: u64) -> u64 {
        if now_ns < self.start_ns {
            return 0;
        }
        // floor(i*1e9/rate) <= d  <=>  i*1e9 < (d+1)*rate  <=>  i < (d+1)*rate/1e9,
        // so the count of such i >= 0 is ceil((d+1)*rate / 1e9).
        let d = (now_ns - self.start_ns) as u128;
        let due = ((d + 1) * self.rate as u128).div_ceil(1_000_000_000u128);
        due.min(u64::MAX as u128) as u64
    }
}

/// Latency statistics of one interval of a [`LatencyOverTime`] series.
#[derive(Clone, Debug, PartialEq)]
pub struct IntervalStats {
    /// Start of the interval relative to the series start, seconds.
    pub t_s: f64,
    /// Number of latencies recorded in the interval.
    pub count: u64,
    /// Median latency, microseconds (0 if `count == 0`).
    pub p50_us: f64,
    /// 99th percentile latency, microseconds (0 if `count == 0`).
    pub p99_us: f64,
    /// Largest latency (exact), microseconds (0 if `count == 0`).
    pub max_us: f64,
    /// Labels of events marked in this interval, in the order marked.
    pub events: Vec<String>,
}

struct Interval {
    hist: Histogram<u64>,
    max_ns: u64,
}

/// Latency over time: latencies bucketed by the time they were observed into fixed
/// intervals, with marked events, summarised as a p50/p99/max series.
///
/// Each non-empty interval holds its own histogram with 2 significant digits
/// (about 30 KiB), so a 60 s run at 100 ms intervals costs about 18 MiB. Empty intervals
/// cost nothing and appear in the series with `count == 0`. The per-interval maximum is
/// tracked exactly.
pub struct LatencyOverTime {
    start_ns: u64,
    interval_ns: u64,
    intervals: Vec<Option<Interval>>,
    events: Vec<(u64, String)>,
}

impl LatencyOverTime {
    /// A series starting at `start_ns` with intervals of `interval_ns` (e.g. 100 ms =
    /// `100_000_000`).
    ///
    /// # Panics
    /// If `interval_ns` is 0.
    pub fn new(start_ns: u64, interval_ns: u64) -> Self {
        assert!(interval_ns > 0, "interval must be positive");
        LatencyOverTime { start_ns, interval_ns, intervals: Vec::new(), events: Vec::new() }
    }

    fn index(&self, at_ns: u64) -> usize {
        (at_ns.saturating_sub(self.start_ns) / self.interval_ns) as usize
    }

    /// Records a latency of `latency_ns` observed at `at_ns` (e.g. the completion time).
    /// Times before the start count in the first interval.
    pub fn record(&mut self, at_ns: u64, latency_ns: u64) {
        let idx = self.index(at_ns);
        if self.intervals.len() <= idx {
            self.intervals.resize_with(idx + 1, || None);
        }
        let slot =
            self.intervals[idx].get_or_insert_with(|| Interval { hist: histogram_with_sigfig(2), max_ns: 0 });
        record_ns(&mut slot.hist, latency_ns);
        slot.max_ns = slot.max_ns.max(latency_ns);
    }

    /// Marks an event (e.g. `"failure"`, `"scale-out"`) at `at_ns`.
    pub fn mark(&mut self, at_ns: u64, label: impl Into<String>) {
        self.events.push((at_ns, label.into()));
    }

    /// The marked events as `(seconds since start, label)`, in the order marked.
    pub fn events(&self) -> Vec<(f64, String)> {
        self.events.iter().map(|(at, l)| (at.saturating_sub(self.start_ns) as f64 / 1e9, l.clone())).collect()
    }

    /// The series, one entry per interval from the start to the last interval holding a
    /// latency or an event.
    pub fn intervals(&self) -> Vec<IntervalStats> {
        let last_event = self.events.iter().map(|(at, _)| self.index(*at) + 1).max();
        let len = self.intervals.len().max(last_event.unwrap_or(0));
        let mut out: Vec<IntervalStats> = (0..len)
            .map(|i| {
                let t_s = (i as u128 * self.interval_ns as u128) as f64 / 1e9;
                match self.intervals.get(i).and_then(Option::as_ref) {
                    Some(iv) => IntervalStats {
                        t_s,
                        count: iv.hist.len(),
                        p50_us: ns_to_us(iv.hist.value_at_quantile(0.5)),
                        p99_us: ns_to_us(iv.hist.value_at_quantile(0.99)),
                        max_us: ns_to_us(iv.max_ns),
                        events: Vec::new(),
                    },
                    None => IntervalStats {
                        t_s,
                        count: 0,
                        p50_us: 0.0,
                        p99_us: 0.0,
                        max_us: 0.0,
                        events: Vec::new(),
                    },
                }
            })
            .collect();
        for (at, label) in &self.events {
            out[self.index(*at)].events.push(label.clone());
        }
        out
    }

    /// Writes the series as CSV: a header `t_s,count,p50_us,p99_us,max_us,event` and one
    /// row per interval; `event` holds the interval's event labels joined with `;`
    /// (quoted if they contain `,`, `"` or a newline).
    pub fn write_csv<W: io::Write>(&self, mut w: W) -> io::Result<()> {
        writeln!(w, "t_s,count,p50_us,p99_us,max_us,event")?;
        for iv in self.intervals() {
            writeln!(
                w,
                "{:.3},{},{:.3},{:.3},{:.3},{}",
                iv.t_s,
                iv.count,
                iv.p50_us,
                iv.p99_us,
                iv.max_us,
                csv_field(&iv.events.join(";"))
            )?;
        }
        Ok(())
    }

    /// The CSV of [`write_csv`](Self::write_csv) as a string.
    pub fn to_csv(&self) -> String {
        let mut buf = Vec::new();
        self.write_csv(&mut buf).expect("writing to a Vec cannot fail");
        String::from_utf8(buf).expect("CSV is UTF-8")
    }
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, rel: f64) -> bool {
        (a - b).abs() <= rel * b.abs().max(1e-9)
    }

    #[test]
    fn percentiles_of_uniform_1_to_1000_us() {
        let mut h = new_histogram();
        for us in 1..=1000u64 {
            record_ns(&mut h, us * 1_000);
        }
        let r = LatencyReport::from_histogram(&h, 1000, 2.0);
        assert!(close(r.p50_us, 500.0, 1e-3), "p50 {}", r.p50_us);
        assert!(close(r.p99_us, 990.0, 1e-3), "p99 {}", r.p99_us);
        assert!(close(r.p999_us, 999.0, 1e-3), "p999 {}", r.p999_us);
        assert!(close(r.max_us, 1000.0, 1e-3), "max {}", r.max_us);
        assert_eq!(r.count, 1000);
        assert!(close(r.records_per_s, 500.0, 1e-12));
    }

    #[test]
    fn percentiles_with_an_outlier_tail() {
        // 999 fast records at 10 us, one slow at 50 ms.
        let mut h = new_histogram();
        for _ in 0..999 {
            record_ns(&mut h, 10_000);
        }
        record_ns(&mut h, 50_000_000);
        let r = LatencyReport::from_histogram(&h, 1000, 1.0);
        assert!(close(r.p50_us, 10.0, 1e-3));
        assert!(close(r.p99_us, 10.0, 1e-3));
        assert!(close(r.p999_us, 10.0, 1e-3));
        assert!(close(r.max_us, 50_000.0, 1e-3));
    }

    #[test]
    fn histogram_clamps_and_does_not_resize() {
        let mut h = new_histogram();
        record_ns(&mut h, 0);
        record_ns(&mut h, u64::MAX);
        assert_eq!(h.len(), 2);
        assert!(h.max() >= HISTOGRAM_MAX_NS && h.max() <= HISTOGRAM_MAX_NS + HISTOGRAM_MAX_NS / 1000);
        assert!(h.record(HISTOGRAM_MAX_NS * 2).is_err(), "auto-resize must be off");
    }

    #[test]
    fn empty_histogram_report_is_zero() {
        let r = LatencyReport::from_histogram(&new_histogram(), 0, 0.0);
        assert_eq!(r.p50_us, 0.0);
        assert_eq!(r.max_us, 0.0);
        assert_eq!(r.records_per_s, 0.0);
    }

    #[test]
    fn json_shape() {
        let r = LatencyReport {
            p50_us: 1.0,
            p99_us: 2.5,
            p999_us: 3.0,
            max_us: 4.0,
            records_per_s: 1e6,
            count: 7,
            seconds: 7e-6,
            steal_ms: None,
        };
        let j = r.to_json();
        assert_eq!(
            j,
            "{\"p50_us\":1.000,\"p99_us\":2.500,\"p999_us\":3.000,\"max_us\":4.000,\"records_per_s\":1000000.000,\"count\":7,\"seconds\":0.000,\"steal_ms\":null}"
        );
        let stolen = LatencyReport { steal_ms: Some(40), ..r };
        assert!(stolen.to_json().ends_with(",\"steal_ms\":40}"), "{}", stolen.to_json());
        assert!(stolen.to_string().ends_with("; CPU steal 40 ms"), "{stolen}");
        assert!(!j.contains('\n'));
        assert!(j.starts_with('{') && j.ends_with('}'));
        for key in ["p50_us", "p99_us", "p999_us", "max_us", "records_per_s", "count", "seconds"] {
            assert!(j.contains(&format!("\"{key}\":")), "missing {key}");
        }
        // Round-trips through the compare module's extractor.
        assert_eq!(crate::compare::extract_json_number(&j, "records_per_s"), Some(1e6));
        assert_eq!(crate::compare::extract_json_number(&j, "p99_us"), Some(2.5));
        // Non-finite values become null (still valid JSON).
        let bad = LatencyReport { p50_us: f64::NAN, ..r };
        assert!(bad.to_json().starts_with("{\"p50_us\":null,"));
        // Display is one human line.
        let s = r.to_string();
        assert!(s.contains("p99 2.5 us") && !s.contains('\n'), "{s}");
    }

    #[test]
    fn steal_is_the_eighth_counter_of_the_cpu_line() {
        let stat =
            "cpu  4705 150 1120 16250 520 0 74 37 0 0\ncpu0 2000 75 560 8000 260 0 37 20 0 0\nintr 1\n";
        assert_eq!(parse_steal_ms(stat), Some(370));
        // Old kernels without the steal column, and garbage.
        assert_eq!(parse_steal_ms("cpu  4705 150 1120 16250 520 0 74\n"), None);
        assert_eq!(parse_steal_ms("cpu  a b c d e f g h\n"), None);
        assert_eq!(parse_steal_ms(""), None);
        if std::path::Path::new("/proc/stat").exists() {
            assert!(steal_ms().is_some(), "this Linux's /proc/stat has a steal column");
        }
    }

    #[test]
    fn pacer_basic() {
        let p = Pacer::new(1_000, 5_000);
        assert_eq!(p.due(0), 0);
        assert_eq!(p.due(4_999), 0);
        assert_eq!(p.due(5_000), 1);
        assert_eq!(p.due(5_000 + 999_999), 1);
        assert_eq!(p.due(5_000 + 1_000_000), 2);
        assert_eq!(p.intended_ns(0), 5_000);
        assert_eq!(p.intended_ns(3), 5_000 + 3_000_000);
    }

    #[test]
    fn pacer_has_no_drift_over_a_billion_records() {
        // Rates that do and do not divide 1e9.
        for &rate in &[1_000_000u64, 3, 7_000_003, 999_999_937, 2_000_000_000] {
            let start = 123_456_789u64;
            let p = Pacer::new(rate, start);
            let n = 1_000_000_000u64;
            // Exact closed form at the end of the run.
            let expect = start + ((n as u128 * 1_000_000_000) / rate as u128) as u64;
            assert_eq!(p.intended_ns(n), expect, "rate {rate}");
            // `due` inverts `intended_ns` exactly, at sampled points along the run.
            let mut i = 0u64;
            while i <= n {
                let t = p.intended_ns(i);
                // Record i is due at its intended time; the count includes every record
                // intended at the same nanosecond.
                let due = p.due(t);
                assert!(due > i, "rate {rate} i {i}");
                assert!(p.intended_ns(due - 1) <= t && p.intended_ns(due) > t);
                if t > start {
                    assert!(p.due(t - 1) <= i, "rate {rate} i {i}");
                }
                i = i * 3 + 1 + (i % 7);
            }
        }
        // A long run at 1 M/s: after exactly 1000 s, exactly 1e9 + 1 records are due
        // (records 0 ..= 1e9), and the next is due 1 us later.
        let p = Pacer::new(1_000_000, 0);
        assert_eq!(p.due(1_000_000_000_000), 1_000_000_001);
        assert_eq!(p.due(1_000_000_000_999), 1_000_000_001);
        assert_eq!(p.due(1_000_000_001_000), 1_000_000_002);
    }

    #[test]
    fn pacer_due_is_monotone_and_matches_brute_force() {
        let p = Pacer::new(7, 10);
        let mut last = 0;
        for now in 0..3_000_000_000u64 / 104_729 {
            let now = now * 104_729;
            let due = p.due(now);
            assert!(due >= last);
            last = due;
            let brute = (0..100).filter(|&i| p.intended_ns(i) <= now).count() as u64;
            assert_eq!(due, brute, "now {now}");
        }
    }

    #[test]
    fn latency_over_time_series_and_csv() {
        let ms = 1_000_000u64;
        let mut s = LatencyOverTime::new(1_000 * ms, 100 * ms);
        // Interval 0: latencies 1..=100 us.
        for us in 1..=100u64 {
            s.record(1_000 * ms + us * 1_000, us * 1_000);
        }
        // Interval 1 empty; interval 2 has a failure and slow records.
        s.mark(1_250 * ms, "failure at t=0.25s");
        s.record(1_260 * ms, 40 * ms);
        s.record(1_270 * ms, 20 * ms);
        // An event past the last latency extends the series.
        s.mark(1_450 * ms, "recovered");
        let iv = s.intervals();
        assert_eq!(iv.len(), 5);
        assert_eq!(iv[0].count, 100);
        assert!(close(iv[0].p50_us, 50.0, 1e-2), "{}", iv[0].p50_us);
        assert!(close(iv[0].p99_us, 99.0, 1e-2), "{}", iv[0].p99_us);
        assert_eq!(iv[0].max_us, 100.0);
        assert_eq!(iv[1].count, 0);
        assert_eq!(iv[2].count, 2);
        assert_eq!(iv[2].max_us, 40_000.0);
        assert_eq!(iv[2].events, vec!["failure at t=0.25s".to_owned()]);
        assert!(close(iv[2].t_s, 0.2, 1e-9));
        assert_eq!(iv[4].events, vec!["recovered".to_owned()]);
        assert_eq!(s.events()[0].0, 0.25);

        let csv = s.to_csv();
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(lines[0], "t_s,count,p50_us,p99_us,max_us,event");
        assert_eq!(lines.len(), 6);
        assert!(lines[1].starts_with("0.000,100,"));
        assert_eq!(lines[2], "0.100,0,0.000,0.000,0.000,");
        assert!(lines[3].starts_with("0.200,2,") && lines[3].ends_with(",40000.000,failure at t=0.25s"));
        assert!(lines[5].ends_with(",recovered"));
    }

    #[test]
    fn csv_quotes_awkward_labels() {
        let mut s = LatencyOverTime::new(0, 10);
        s.mark(0, "a,b");
        s.mark(1, "say \"hi\"");
        let csv = s.to_csv();
        assert!(csv.lines().nth(1).unwrap().ends_with(",\"a,b;say \"\"hi\"\"\""), "{csv}");
    }
}
