//! The built-in named queries, registered in [`Registry::builtin`] as a
//! user's are (see [`crate::registry`]):
//!
//! - `keyed-sum`: generated records `(key = i % keys, value = i)`,
//!   repartitioned by key, a running sum per key in keyed state, emitting
//!   `(key, running_sum)` per record.
//! - `wordcount`: generated (or file) lines split into words, repartitioned
//!   by word, counted per event-time tumbling window of `window_lines` lines
//!   (or, from a file, over the whole input).

use std::fmt::Write as _;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use spate_core::{Dataflow, Stream};
use spate_ops::prelude::*;

use crate::registry::{Params, Registry, ResultSink};

/// Adds the built-in queries to `r` (what [`Registry::builtin`] is).
pub fn register(r: Registry) -> Registry {
    r.add("keyed-sum", |df: &Dataflow, p: &KeyedSumParams, sink: &ResultSink| {
        sink.attach(&keyed_sum(df, p), |(k, s), out| {
            let _ = write!(out, "{k},{s}");
        });
    })
    .add("wordcount", |df: &Dataflow, p: &WordcountParams, sink: &ResultSink| {
        let whole_file = p.file.is_some();
        sink.attach(&wordcount(df, p), move |(w, start, _end, c), out| {
            if whole_file {
                let _ = write!(out, "{w} {c}");
            } else {
                let _ = write!(out, "{start} {w} {c}");
            }
        });
    })
}

/// Parameters of `keyed-sum`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct KeyedSumParams {
    /// Records in all.
    pub records: u64,
    /// Distinct keys.
    pub keys: u64,
    /// Records per second; 0 = as fast as possible.
    pub rate: u64,
    /// With a rate: the first `burst` records go as fast as possible (to
    /// build up state), the rate paces the rest.
    pub burst: u64,
    /// A rate that changes over time, in place of `rate`: `[second from
    /// the start, records a second]` points (steps, or ramps with `ramp`).
    pub rate_schedule: Vec<[u64; 2]>,
    /// The schedule's rate goes in a straight line between its points.
    pub ramp: bool,
}

impl Default for KeyedSumParams {
    fn default() -> Self {
        Self { records: 10_000_000, keys: 100_000, rate: 0, burst: 0, rate_schedule: Vec::new(), ramp: false }
    }
}

impl Params for KeyedSumParams {
    const ABOUT: &'static str = "generated records (i % keys, i), a running sum per key in keyed state";
    const DOCS: &'static [(&'static str, &'static str)] = &[
        ("records", "records in all"),
        ("keys", "distinct keys"),
        ("rate", "records per second; 0 = as fast as possible"),
        ("burst", "with a rate: the first `burst` records go as fast as possible"),
        ("rate_schedule", "[[second, records/s], ...]: a rate that changes over time, in place of rate"),
        ("ramp", "the schedule's rate goes in a straight line between its points"),
    ];
    const RANGES: &'static [(&'static str, u64, u64)] = &[("keys", 1, u64::MAX)];

    fn set_load(&mut self, records: u64, rate_per_s: Option<u64>) -> Result<(), String> {
        self.records = records;
        self.rate = rate_per_s.unwrap_or(0);
        Ok(())
    }

    fn check(&self) -> Result<(), String> {
        if !self.rate_schedule.is_empty() {
            RateSchedule::new(&self.rate_schedule, self.ramp)
                .map_err(|e| format!("query.params.rate_schedule: {e}"))?;
            if self.rate > 0 {
                return Err(
                    "query.params.rate_schedule: give either `rate` or `rate_schedule`, not both".into()
                );
            }
        }
        Ok(())
    }
}

/// Parameters of `wordcount`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct WordcountParams {
    /// Generated lines.
    pub lines: u64,
    /// Words per generated line.
    pub words_per_line: u32,
    /// Distinct words of the generator.
    pub vocabulary: u32,
    /// Generator seed.
    pub seed: u64,
    /// Tumbling window length, in lines (event time = line index).
    pub window_lines: u64,
    /// Lines per second; 0 = as fast as possible.
    pub rate: u64,
    /// Read lines from this file instead of generating them; counts are then
    /// over the whole file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
}

impl Default for WordcountParams {
    fn default() -> Self {
        Self {
            lines: 100_000,
            words_per_line: 8,
            vocabulary: 1_000,
            seed: 42,
            window_lines: 10_000,
            rate: 0,
            file: None,
        }
    }
}

impl Params for WordcountParams {
    const ABOUT: &'static str = "lines split into words, counted per tumbling window of lines (or per file)";
    const DOCS: &'static [(&'static str, &'static str)] = &[
        ("lines", "generated lines"),
        ("words_per_line", "words per generated line"),
        ("vocabulary", "distinct words of the generator"),
        ("seed", "generator seed"),
        ("window_lines", "tumbling window length, in lines (event time = line index)"),
        ("rate", "lines per second; 0 = as fast as possible"),
        ("file", "read lines from this file instead; counts are then over the whole file"),
    ];
    const RANGES: &'static [(&'static str, u64, u64)] = &[
        ("window_lines", 1, u64::MAX),
        ("vocabulary", 1, u32::MAX as u64),
        ("words_per_line", 1, WORDS_PER_LINE_MAX as u64),
    ];

    fn set_load(&mut self, records: u64, rate_per_s: Option<u64>) -> Result<(), String> {
        if self.file.is_some() {
            return Err("query.params.file: a file's lines are not a load `spate bench` can size".into());
        }
        self.lines = records;
        self.rate = rate_per_s.unwrap_or(0);
        Ok(())
    }
}

/// Most words a generated wordcount line may have: a line is made in one
/// string, and a larger one would be an allocation the machine refuses.
pub const WORDS_PER_LINE_MAX: u32 = 1 << 20;

/// The `keyed-sum` dataflow up to its sink.
pub fn keyed_sum(df: &Dataflow, p: &KeyedSumParams) -> Stream<(u64, u64)> {
    let keys = p.keys.max(1);
    let spec = GeneratorSpec {
        records: Some(p.records),
        rate_per_s: (p.rate > 0).then_some(p.rate),
        offset: 0,
        burst: p.burst,
    };
    let records = KeyedSumRecords { keys: FastMod::new(keys) };
    // Checked with the params (`Params::check`).
    let schedule =
        (!p.rate_schedule.is_empty()).then(|| RateSchedule::new(&p.rate_schedule, p.ramp).ok()).flatten();
    df.generate_scheduled("source", spec, schedule, records, |i| i)
        .key_by("by-key", |r: &(u64, u64)| r.0)
        // Its state holds a sum for each key it sees (timely's peer sizes
        // its hash map alike).
        .expect_keys(keys.min(p.records))
        .fold("sum", || 0u64, |s, r| *s += r.1)
}

/// The records of `keyed-sum`: record `i` is `(i % keys, i)`. A run of
/// them carries the key from one record to the next (the stride's
/// remainder added, less `keys` when that passes them) instead of working
/// out a remainder for each: 16 instructions a record made 10, and
/// keyed-sum with one worker x1.13 (7 rounds of 40 M records).
pub struct KeyedSumRecords {
    /// The number of keys.
    pub keys: FastMod,
}

impl Records<(u64, u64)> for KeyedSumRecords {
    #[inline(always)]
    fn at(&self, i: u64) -> (u64, u64) {
        (self.keys.rem(i), i)
    }

    #[inline(always)]
    fn run(
        &self,
        first: u64,
        stride: u64,
        n: usize,
        meta: spate_core::Meta,
        out: &mut Vec<((u64, u64), spate_core::Meta)>,
    ) {
        let d = self.keys.d;
        // The key after one of `key`, for `key < d`: never past `u64::MAX`.
        let step = self.keys.rem(stride);
        let wrap = d - step;
        let (mut key, mut i) = (self.keys.rem(first), first);
        out.extend((0..n).map(|_| {
            let r = ((key, i), meta);
            key = if key >= wrap { key - wrap } else { key + step };
            i = i.wrapping_add(stride);
            r
        }));
    }
}

/// `i % d` for a divisor fixed at run time, without a division: a
/// division's latency (tens of cycles) would be the largest cost of
/// generating a `keyed-sum` record.
///
/// With `m = floor((2^64 - 1) / d)`, the estimate `q' = floor(i * m /
/// 2^64)` is the quotient `q` or `q - 1` (since `2^64 - d <= m * d < 2^64`
/// puts `i * m / 2^64` in `(i / d - 1, i / d]`), so `i - q' * d` is the
/// remainder or the remainder plus `d`.
#[derive(Clone, Copy, Debug)]
pub struct FastMod {
    d: u64,
    /// `floor((2^64 - 1) / d)`.
    m: u64,
}

impl FastMod {
    /// The remainder by `d`; `d = 0` is taken as 1.
    pub fn new(d: u64) -> Self {
        let d = d.max(1);
        Self { d, m: u64::MAX / d }
    }

    /// `i % d`.
    #[inline(always)]
    pub fn rem(&self, i: u64) -> u64 {
        let q = ((u128::from(i) * u128::from(self.m)) >> 64) as u64;
        let r = i - q * self.d;
        if r >= self.d {
            r - self.d
        } else {
            r
        }
    }
}

/// SplitMix64: the generator's deterministic mixing function.
pub fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// Line `i` of the wordcount generator: `words_per_line` words `w<n>`, with
/// small `n` more frequent than large (a skewed vocabulary).
pub fn wordcount_line(seed: u64, i: u64, words_per_line: u32, vocabulary: u32) -> String {
    let mut line = String::with_capacity(words_per_line as usize * 6);
    for j in 0..u64::from(words_per_line) {
        let x = splitmix64(seed ^ splitmix64(i.wrapping_mul(1_000_003).wrapping_add(j)));
        let bound = 1 + (x >> 32) % u64::from(vocabulary);
        let n = (x & 0xffff_ffff) % bound;
        if j > 0 {
            line.push(' ');
        }
        let _ = write!(line, "w{n}");
    }
    line
}

/// The `wordcount` dataflow up to its sink: `(word, window start, window
/// end, count)`.
pub fn wordcount(df: &Dataflow, p: &WordcountParams) -> Stream<(String, u64, u64, u64)> {
    // (line index = event time, line)
    let lines: Stream<(u64, String)> = match &p.file {
        Some(path) => df.read_file("lines", path.clone(), 0, |l| Ok((0u64, l.to_string()))),
        None => {
            let (seed, wpl, vocab) = (p.seed, p.words_per_line, p.vocabulary);
            let spec = GeneratorSpec {
                records: Some(p.lines),
                rate_per_s: (p.rate > 0).then_some(p.rate),
                offset: 0,
                burst: 0,
            };
            df.generate("lines", spec, move |i| (i, wordcount_line(seed, i, wpl, vocab)), |i| i)
        }
    };
    let window = if p.file.is_some() { Window::tumbling(u64::MAX) } else { Window::tumbling(p.window_lines) };
    lines
        .flat_map("words", |(t, line): (u64, String)| {
            line.split_whitespace().map(|w| (w.to_string(), t)).collect::<Vec<_>>()
        })
        .key_by("by-word", |w: &(String, u64)| w.0.clone())
        .window(window, |w: &(String, u64)| w.1)
        .aggregate("count", || 0u64, |c, _| *c += 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyed_sum_runs_are_records_one_by_one() {
        let meta = spate_core::Meta { ingest_ns: 7 };
        for keys in [1, 2, 3, 10, 100_000, u64::MAX - 1, u64::MAX] {
            let r = KeyedSumRecords { keys: FastMod::new(keys) };
            for (first, stride) in
                [(0, 1), (1, 2), (5, 3), (99_999, 16), (u64::MAX - 400, 7), (keys - 1, keys)]
            {
                // A generator's indices stay below u64::MAX.
                if stride.checked_mul(39).and_then(|s| s.checked_add(first)).is_none() {
                    continue;
                }
                let mut run = Vec::new();
                r.run(first, stride, 40, meta, &mut run);
                let one_by_one: Vec<_> = (0..40u64).map(|k| (r.at(first + k * stride), meta)).collect();
                assert_eq!(run, one_by_one, "keys {keys}, first {first}, stride {stride}");
                assert!(run.iter().all(|((key, i), _)| key == &(i % keys)), "keys {keys}");
            }
        }
    }

    #[test]
    fn fast_mod_is_the_remainder() {
        let divisors =
            [1, 2, 3, 7, 10, 100_000, 1 << 32, (1 << 32) + 1, u64::MAX / 3, u64::MAX - 1, u64::MAX];
        let mut x = 1u64;
        for &d in &divisors {
            let f = FastMod::new(d);
            let edges = [0, 1, d - 1, d, d.wrapping_add(1), u64::MAX, u64::MAX - 1, u64::MAX - d];
            for i in edges.into_iter().chain((0..20_000).map(|_| {
                x = splitmix64(x);
                x
            })) {
                assert_eq!(f.rem(i), i % d, "{i} % {d}");
            }
            for i in 0..1000 {
                assert_eq!(f.rem(i), i % d, "{i} % {d}");
            }
        }
        assert_eq!(FastMod::new(0).rem(5), 0);
    }
}
