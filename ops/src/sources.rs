//! Sources: a deterministic generator, newline-delimited files, and the
//! embedding input handle.

use std::fs::File;
use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError};
use std::sync::{Arc, Mutex};

use spate_core::push::Push;
use spate_core::source::{Source, SourceStatus, Step};
use spate_core::{now_ns, Data, Dataflow, Meta, Parallelism, Stream, Timestamp};

/// What a generator produces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GeneratorSpec {
    /// Records in all (over all instances); `None` runs until stopped.
    pub records: Option<u64>,
    /// Records per second over all instances; `None` is as fast as possible.
    pub rate_per_s: Option<u64>,
    /// The first record index: a generator replays from any offset.
    pub offset: u64,
    /// With a rate: this many records (from `offset`) are due at the start,
    /// as fast as possible (to build up state), and the rate paces the
    /// ones after them.
    pub burst: u64,
}

impl GeneratorSpec {
    /// `records` records as fast as possible.
    pub fn bounded(records: u64) -> Self {
        Self { records: Some(records), rate_per_s: None, offset: 0, burst: 0 }
    }
}

/// A rate that changes over time, for elastic workloads: points `(second
/// from the start, records a second)`, in order of time. As steps, each
/// rate holds from its point to the next; as a ramp, the rate goes in a
/// straight line from each point to the next. Before the first point the
/// first rate holds, after the last the last. A [`Generator`] with a
/// schedule gives record `k` (counting from its offset, past its burst)
/// the time at which the schedule's integral reaches `k`.
#[derive(Clone, Debug, PartialEq)]
pub struct RateSchedule {
    /// `(t_s, rate)`: at least one, times increasing.
    points: Vec<(f64, f64)>,
    ramp: bool,
    /// Records due by each point (the integral from 0).
    due: Vec<f64>,
}

impl RateSchedule {
    /// A schedule of `points` (`[second, records a second]`, seconds
    /// strictly increasing, at least one point, some rate above zero);
    /// the error says what is wrong.
    pub fn new(points: &[[u64; 2]], ramp: bool) -> Result<Self, String> {
        if points.is_empty() {
            return Err("a rate schedule needs at least one [second, rate] point".into());
        }
        if let Some(w) = points.windows(2).find(|w| w[1][0] <= w[0][0]) {
            return Err(format!("the schedule's seconds must increase: {} then {}", w[0][0], w[1][0]));
        }
        if points.iter().all(|p| p[1] == 0) {
            return Err("every rate of the schedule is 0".into());
        }
        let points: Vec<(f64, f64)> = points.iter().map(|p| (p[0] as f64, p[1] as f64)).collect();
        let mut s = Self { points, ramp, due: Vec::new() };
        let mut acc = s.points[0].0 * s.points[0].1;
        s.due.push(acc);
        for j in 1..s.points.len() {
            acc += s.segment_records(j - 1, s.points[j].0 - s.points[j - 1].0);
            s.due.push(acc);
        }
        Ok(s)
    }

    /// The points, `(second, rate)`.
    pub fn points(&self) -> &[(f64, f64)] {
        &self.points
    }

    /// Records a second at `t_s` seconds from the start.
    pub fn rate_at(&self, t_s: f64) -> f64 {
        let p = &self.points;
        match p.iter().rposition(|&(t, _)| t <= t_s) {
            None => p[0].1,
            Some(j) if j + 1 == p.len() || !self.ramp => p[j].1,
            Some(j) => {
                let (t0, r0) = p[j];
                let (t1, r1) = p[j + 1];
                r0 + (r1 - r0) * (t_s - t0) / (t1 - t0)
            }
        }
    }

    /// Records due in the first `t_s` seconds (the schedule's integral).
    pub fn records_by(&self, t_s: f64) -> u64 {
        let p = &self.points;
        if t_s <= p[0].0 {
            return (t_s.max(0.0) * p[0].1) as u64;
        }
        let j = p.iter().rposition(|&(t, _)| t <= t_s).unwrap_or(0);
        (self.due[j] + self.segment_records(j, t_s - p[j].0)) as u64
    }

    /// Records due in the first `tau` seconds of segment `j` (from point
    /// `j`).
    fn segment_records(&self, j: usize, tau: f64) -> f64 {
        let (t0, r0) = self.points[j];
        match self.points.get(j + 1) {
            Some(&(t1, r1)) if self.ramp => r0 * tau + (r1 - r0) / (t1 - t0) * tau * tau / 2.0,
            _ => r0 * tau,
        }
    }

    /// Nanoseconds from the start at which record `k` is due.
    pub fn due_ns(&self, k: u64) -> u64 {
        let k = k as f64;
        let p = &self.points;
        let secs = if k < self.due[0] {
            k / p[0].1.max(f64::MIN_POSITIVE)
        } else {
            // The last point whose due count is at most `k`.
            let j = self.due.partition_point(|&d| d <= k).saturating_sub(1);
            let left = k - self.due[j];
            let (t0, r0) = p[j];
            let tau = match p.get(j + 1) {
                _ if left <= 0.0 => 0.0,
                Some(&(t1, r1)) if self.ramp && r1 != r0 => {
                    // r0·τ + b·τ²/2 = left, b the slope.
                    let b = (r1 - r0) / (t1 - t0);
                    let disc = (r0 * r0 + 2.0 * b * left).max(0.0);
                    (disc.sqrt() - r0) / b
                }
                _ if r0 > 0.0 => left / r0,
                // A segment at rate 0 that is the last: never due.
                _ => return u64::MAX,
            };
            t0 + tau
        };
        (secs * 1e9).min(u64::MAX as f64 / 2.0) as u64
    }
}

/// A deterministic, replayable source: record `i` is `make(i)`; instance
/// `w` of `W` generates the indices `i ≡ w (mod W)`. With a rate, record `i`
/// is due at `start + max(0, i - offset - burst) / rate` and carries that
/// *intended* time as its ingest time, so a stalled pipeline shows up in the
/// latency instead of slowing the load (no coordinated omission). `start`
/// is the job's schedule origin when the runtime has one
/// (`RuntimeConfig::schedule_origin_ns`, which a cluster's epochs share):
/// then a generator that seeks back to a checkpoint keeps the original
/// schedule and catches up as fast as it can, as a real feed would have
/// it; otherwise `start` is its first step, and after a seek it paces from
/// the resume point. The watermark after a step is `event_time(next
/// index)`: `event_time` must not decrease with `i`.
///
/// `M` and `E` are the types of `make` (the [`Records`]) and `event_time`:
/// the query's own (shared by the workers' instances, not type-erased, so
/// that a step calls them directly), or trait objects.
pub struct Generator<T, M: ?Sized = dyn Records<T>, E: ?Sized = dyn Fn(u64) -> Timestamp> {
    make: Rc<M>,
    event_time: Rc<E>,
    next: u64,
    end: u64,
    stride: u64,
    offset: u64,
    rate: Option<u64>,
    burst: u64,
    start_ns: u64,
    /// `start_ns` is the job's schedule origin: a seek keeps it.
    fixed_start: bool,
    /// A rate that changes over time (over all instances), in place of
    /// `rate`.
    schedule: Option<Rc<RateSchedule>>,
    /// A step's records, handed downstream as one burst (one call for the
    /// step, not one per record); allocated once.
    out: Vec<(T, Meta)>,
}

impl<T, M: ?Sized, E: ?Sized> Generator<T, M, E> {
    fn intended_ns(&self, i: u64) -> u64 {
        if let Some(s) = &self.schedule {
            let k = (i - self.offset).saturating_sub(self.burst);
            return self.start_ns.saturating_add(s.due_ns(k));
        }
        match self.rate {
            Some(r) if r > 0 => {
                let k = (i - self.offset).saturating_sub(self.burst);
                self.start_ns + ((u128::from(k) * 1_000_000_000) / u128::from(r)) as u64
            }
            _ => 0,
        }
    }
}

/// What a [`Generator`] makes: record `i` of each index `i`. Every
/// closure `Fn(u64) -> T` is one (as [`FnRecords`], see
/// [`SourceExt::generate`]); a type of its own may also make a run of
/// records faster than one index at a time, by carrying from one record to
/// the next what they share (see [`SourceExt::generate_runs`]).
pub trait Records<T> {
    /// Record `i`.
    fn at(&self, i: u64) -> T;

    /// Appends records `at(first)`, `at(first + stride)`, ... (`n` of
    /// them) to `out`, each with `meta`: what `at` gives, in that order.
    #[inline(always)]
    fn run(&self, first: u64, stride: u64, n: usize, meta: Meta, out: &mut Vec<(T, Meta)>) {
        out.extend((0..n as u64).map(|k| (self.at(first + k * stride), meta)));
    }
}

/// A closure `Fn(u64) -> T` as the [`Records`] of a generator.
pub struct FnRecords<F>(pub F);

impl<T, F: Fn(u64) -> T> Records<T> for FnRecords<F> {
    #[inline(always)]
    fn at(&self, i: u64) -> T {
        (self.0)(i)
    }
}

/// Appends records `make.at(first)`, `make.at(first + stride)`, ... (`n`
/// of them) to `out`, all ingested at `now`. Not inlined: as a parameter,
/// `make` is known not to change while `out` is written, so what it
/// captured stays in registers through the loop.
#[inline(never)]
fn fill<T, M: Records<T> + ?Sized>(
    out: &mut Vec<(T, Meta)>,
    make: &M,
    first: u64,
    stride: u64,
    n: usize,
    now: u64,
) {
    make.run(first, stride, n, Meta { ingest_ns: now }, out);
}

impl<T, M: Records<T> + ?Sized, E: Fn(u64) -> Timestamp + ?Sized> Source<T> for Generator<T, M, E> {
    fn step(&mut self, out: &mut dyn Push<T>, max: usize) -> Step {
        let now = now_ns();
        if self.start_ns == 0 {
            self.start_ns = now;
        }
        let mut n = 0;
        let mut burst = std::mem::take(&mut self.out);
        match self.rate.is_some() || self.schedule.is_some() {
            true => {
                while n < max && self.next < self.end {
                    let due = self.intended_ns(self.next);
                    if due > now {
                        break;
                    }
                    burst.push((self.make.at(self.next), Meta { ingest_ns: due }));
                    self.next += self.stride;
                    n += 1;
                }
            }
            false => {
                // As fast as possible: every record of the step is due now.
                let left = self.end.saturating_sub(self.next).div_ceil(self.stride);
                n = max.min(usize::try_from(left).unwrap_or(usize::MAX));
                let (stride, first) = (self.stride, self.next);
                fill(&mut burst, &*self.make, first, stride, n, now);
                self.next = first + n as u64 * stride;
            }
        }
        if n > 0 {
            out.push_burst(&mut burst);
            out.watermark((self.event_time)(self.next));
        }
        burst.clear();
        self.out = burst;
        let status = if self.next >= self.end {
            SourceStatus::Done
        } else if (self.rate.is_some() || self.schedule.is_some()) && n < max {
            SourceStatus::Idle { next_ns: Some(self.intended_ns(self.next)) }
        } else {
            SourceStatus::Busy
        };
        Step { emitted: n, status }
    }

    fn offset(&self) -> Option<u64> {
        Some(self.next)
    }

    fn offered_per_s(&self, now_ns: u64) -> Option<f64> {
        let share = |r: f64| r / self.stride.max(1) as f64;
        if let Some(s) = &self.schedule {
            let t = now_ns.saturating_sub(self.start_ns) as f64 / 1e9;
            return Some(share(s.rate_at(t)));
        }
        self.rate.map(|r| share(r as f64))
    }

    fn seek(&mut self, offset: u64) -> Result<(), String> {
        if offset < self.offset
            || (offset - self.offset) % self.stride != self.next.saturating_sub(self.offset) % self.stride
        {
            return Err(format!("offset {offset} is not one of this generator instance's indices"));
        }
        // Without a schedule origin, pace from the resume point: its record
        // is due at the first step.
        if !self.fixed_start {
            self.offset = offset - (offset - self.offset) % self.stride;
            self.burst = 0;
        }
        self.next = offset;
        Ok(())
    }
}

/// Reads newline-delimited records from a file, once, on worker 0. `parse`
/// turns a line into a record or says what is wrong with it; a bad line
/// fails the job with the file, line number and reason.
pub struct FileSource<T> {
    path: PathBuf,
    reader: Option<BufReader<File>>,
    parse: Rc<dyn Fn(&str) -> Result<T, String>>,
    line: String,
    line_no: u64,
    offset: u64,
    metrics: Arc<spate_core::metrics::JobMetrics>,
}

impl<T> FileSource<T> {
    /// Fails the job naming the file and what went wrong (`what` follows the
    /// path), and ends the
    /// source after the `emitted` records of this step.
    fn fail(&self, what: std::fmt::Arguments<'_>, emitted: usize) -> Step {
        self.metrics.fail(format!("file source {}{what}", self.path.display()));
        Step { emitted, status: SourceStatus::Done }
    }
}

impl<T> Source<T> for FileSource<T> {
    fn step(&mut self, out: &mut dyn Push<T>, max: usize) -> Step {
        if self.reader.is_none() {
            let opened = File::open(&self.path).and_then(|mut f| {
                f.seek(SeekFrom::Start(self.offset))?;
                Ok(f)
            });
            match opened {
                Ok(f) => self.reader = Some(BufReader::with_capacity(256 * 1024, f)),
                Err(e) => return self.fail(format_args!(": {e}"), 0),
            }
        }
        let Some(reader) = self.reader.as_mut() else {
            return Step { emitted: 0, status: SourceStatus::Done };
        };
        let now = now_ns();
        let mut n = 0;
        while n < max {
            self.line.clear();
            match reader.read_line(&mut self.line) {
                Ok(0) => return Step { emitted: n, status: SourceStatus::Done },
                Ok(len) => {
                    self.offset += len as u64;
                    self.line_no += 1;
                    let l = self.line.trim_end_matches(['\n', '\r']);
                    match (self.parse)(l) {
                        Ok(rec) => {
                            out.push(rec, Meta { ingest_ns: now });
                            n += 1;
                        }
                        Err(e) => return self.fail(format_args!(" line {}: {e}", self.line_no), n),
                    }
                }
                Err(e) => return self.fail(format_args!(" after line {}: {e}", self.line_no), n),
            }
        }
        Step { emitted: n, status: SourceStatus::Busy }
    }

    fn offset(&self) -> Option<u64> {
        Some(self.offset)
    }

    fn seek(&mut self, offset: u64) -> Result<(), String> {
        // Lines are counted from the resume point in later error messages.
        self.offset = offset;
        self.reader = None;
        Ok(())
    }
}

enum Input<T> {
    Record(T, u64),
    Watermark(Timestamp),
}

/// The embedding side of an input: push records into a running dataflow
/// from any thread. Sending blocks while the dataflow's input queue is full
/// (backpressure). Dropping the handle ends the stream.
pub struct InputHandle<T> {
    tx: SyncSender<Input<T>>,
}

/// The input's receiving end has gone: the job ended or failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InputClosed;

impl std::fmt::Display for InputClosed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the dataflow's input is closed (the job ended or failed)")
    }
}

impl std::error::Error for InputClosed {}

impl<T> InputHandle<T> {
    /// Sends one record, stamped with the current time as its ingest time.
    pub fn send(&self, rec: T) -> Result<(), InputClosed> {
        self.tx.send(Input::Record(rec, now_ns())).map_err(|_| InputClosed)
    }

    /// Sends one record with a given ingest time (nanoseconds since the Unix
    /// epoch; for latency measurement from an intended send time).
    pub fn send_at(&self, rec: T, ingest_ns: u64) -> Result<(), InputClosed> {
        self.tx.send(Input::Record(rec, ingest_ns)).map_err(|_| InputClosed)
    }

    /// Promises that no later record has an event time below `wm`.
    pub fn advance_watermark(&self, wm: Timestamp) -> Result<(), InputClosed> {
        self.tx.send(Input::Watermark(wm)).map_err(|_| InputClosed)
    }
}

/// The dataflow side of an [`InputHandle`]: pass it to
/// [`SourceExt::input`] inside the build function.
pub struct InputSource<T> {
    rx: Arc<Mutex<Option<Receiver<Input<T>>>>>,
}

impl<T> Clone for InputSource<T> {
    fn clone(&self) -> Self {
        Self { rx: self.rx.clone() }
    }
}

/// A bounded input for an embedded dataflow: `capacity` records may wait.
pub fn input<T: Send>(capacity: usize) -> (InputHandle<T>, InputSource<T>) {
    let (tx, rx) = std::sync::mpsc::sync_channel(capacity.max(1));
    (InputHandle { tx }, InputSource { rx: Arc::new(Mutex::new(Some(rx))) })
}

struct InputReader<T> {
    rx: Option<Receiver<Input<T>>>,
    watermark: Timestamp,
}

impl<T> Source<T> for InputReader<T> {
    fn step(&mut self, out: &mut dyn Push<T>, max: usize) -> Step {
        let Some(rx) = self.rx.as_ref() else {
            return Step { emitted: 0, status: SourceStatus::Done };
        };
        let mut n = 0;
        while n < max {
            match rx.try_recv() {
                Ok(Input::Record(r, t)) => {
                    out.push(r, Meta { ingest_ns: t });
                    n += 1;
                }
                Ok(Input::Watermark(w)) => {
                    if w > self.watermark {
                        self.watermark = w;
                        out.watermark(w);
                    }
                }
                Err(TryRecvError::Empty) => {
                    // Busy-poll: an embedded trading pipeline wants the next
                    // record the moment it is sent.
                    return Step { emitted: n, status: SourceStatus::Idle { next_ns: Some(0) } };
                }
                Err(TryRecvError::Disconnected) => {
                    return Step { emitted: n, status: SourceStatus::Done };
                }
            }
        }
        Step { emitted: n, status: SourceStatus::Busy }
    }
}

/// Sources on a dataflow.
pub trait SourceExt {
    /// A deterministic generator (see [`Generator`]) on every worker:
    /// record `i` is `make(i)`.
    fn generate<T: Data>(
        &self,
        name: &str,
        spec: GeneratorSpec,
        make: impl Fn(u64) -> T + 'static,
        event_time: impl Fn(u64) -> Timestamp + 'static,
    ) -> Stream<T>;

    /// As [`SourceExt::generate`], with the records made by `records`,
    /// which may make a step's run of them at once.
    fn generate_runs<T: Data>(
        &self,
        name: &str,
        spec: GeneratorSpec,
        records: impl Records<T> + 'static,
        event_time: impl Fn(u64) -> Timestamp + 'static,
    ) -> Stream<T>;

    /// As [`SourceExt::generate_runs`], paced by `schedule` (over all
    /// instances) in place of `spec.rate_per_s` when it is given.
    fn generate_scheduled<T: Data>(
        &self,
        name: &str,
        spec: GeneratorSpec,
        schedule: Option<RateSchedule>,
        records: impl Records<T> + 'static,
        event_time: impl Fn(u64) -> Timestamp + 'static,
    ) -> Stream<T>;

    /// A newline-delimited file, read once by worker 0 from byte `offset`.
    fn read_file<T: Data>(
        &self,
        name: &str,
        path: impl Into<PathBuf>,
        offset: u64,
        parse: impl Fn(&str) -> Result<T, String> + 'static,
    ) -> Stream<T>;

    /// Records sent through the [`InputHandle`] paired with `source`, on
    /// worker 0.
    fn input<T: Data + Send>(&self, name: &str, source: &InputSource<T>) -> Stream<T>;
}

impl SourceExt for Dataflow {
    fn generate<T: Data>(
        &self,
        name: &str,
        spec: GeneratorSpec,
        make: impl Fn(u64) -> T + 'static,
        event_time: impl Fn(u64) -> Timestamp + 'static,
    ) -> Stream<T> {
        self.generate_runs(name, spec, FnRecords(make), event_time)
    }

    fn generate_runs<T: Data>(
        &self,
        name: &str,
        spec: GeneratorSpec,
        records: impl Records<T> + 'static,
        event_time: impl Fn(u64) -> Timestamp + 'static,
    ) -> Stream<T> {
        self.generate_scheduled(name, spec, None, records, event_time)
    }

    fn generate_scheduled<T: Data>(
        &self,
        name: &str,
        spec: GeneratorSpec,
        schedule: Option<RateSchedule>,
        records: impl Records<T> + 'static,
        event_time: impl Fn(u64) -> Timestamp + 'static,
    ) -> Stream<T> {
        let (make, event_time) = (Rc::new(records), Rc::new(event_time));
        // Shared by a worker's instances; each worker builds its own.
        let schedule = schedule.map(Rc::new);
        self.source(name, Parallelism::PerWorker, move |ctx| {
            let end = spec.records.map(|r| spec.offset.saturating_add(r)).unwrap_or(u64::MAX);
            Generator {
                make: make.clone(),
                event_time: event_time.clone(),
                next: spec.offset + ctx.partition as u64,
                end,
                stride: ctx.partitions as u64,
                offset: spec.offset,
                rate: spec.rate_per_s,
                burst: spec.burst,
                start_ns: ctx.config.schedule_origin_ns,
                fixed_start: ctx.config.schedule_origin_ns > 0,
                schedule: schedule.clone(),
                out: Vec::new(),
            }
        })
    }

    fn read_file<T: Data>(
        &self,
        name: &str,
        path: impl Into<PathBuf>,
        offset: u64,
        parse: impl Fn(&str) -> Result<T, String> + 'static,
    ) -> Stream<T> {
        let path = path.into();
        let parse: Rc<dyn Fn(&str) -> Result<T, String>> = Rc::new(parse);
        self.source(name, Parallelism::One, move |ctx| FileSource {
            path: path.clone(),
            reader: None,
            parse: parse.clone(),
            line: String::new(),
            line_no: 0,
            offset,
            metrics: ctx.metrics.clone(),
        })
    }

    fn input<T: Data + Send>(&self, name: &str, source: &InputSource<T>) -> Stream<T> {
        let rx = source.rx.clone();
        self.source(name, Parallelism::One, move |_ctx| InputReader {
            rx: rx.lock().ok().and_then(|mut r| r.take()),
            watermark: 0,
        })
    }
}

#[cfg(test)]
mod schedule_tests {
    use super::RateSchedule;

    #[test]
    fn steps_and_ramps_give_each_record_its_time() {
        let s = RateSchedule::new(&[[0, 1000], [2, 3000], [4, 0]], false).unwrap_or_else(|e| panic!("{e}"));
        // 1000/s for 2 s (2000 records), then 3000/s for 2 s (6000 more).
        assert_eq!(s.due_ns(0), 0);
        assert_eq!(s.due_ns(1000), 1_000_000_000);
        assert_eq!(s.due_ns(2000), 2_000_000_000);
        assert_eq!(s.due_ns(5000), 3_000_000_000);
        assert_eq!(s.due_ns(8000), 4_000_000_000);
        assert_eq!(s.due_ns(8001), u64::MAX);
        assert_eq!((s.rate_at(1.0), s.rate_at(2.5), s.rate_at(9.0)), (1000.0, 3000.0, 0.0));
        // A ramp from 0 to 2000/s over 2 s: 2000 records, k due at
        // sqrt(k / 500) s; then 2000/s.
        let r = RateSchedule::new(&[[0, 0], [2, 2000]], true).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.due_ns(500), 1_000_000_000);
        assert_eq!(r.due_ns(2000), 2_000_000_000);
        assert_eq!(r.due_ns(4000), 3_000_000_000);
        assert_eq!(r.rate_at(1.0), 1000.0);
        assert_eq!((s.records_by(3.0), r.records_by(1.0), r.records_by(3.0)), (5000, 500, 4000));
        for bad in [&[][..], &[[1, 5], [1, 6]][..], &[[0, 0]][..]] {
            assert!(RateSchedule::new(bad, false).is_err(), "{bad:?}");
        }
    }
}
