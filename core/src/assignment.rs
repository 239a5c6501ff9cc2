//! A job's [`Assignment`]: which worker owns each bin of its keyed
//! operators — the routing state every exchange sender routes by, every
//! keyed instance opens its store over, and every checkpoint manifest
//! records.
//!
//! A worker owns one contiguous range of bins (possibly empty), the ranges
//! in worker order covering the key space, so that a worker's store stays
//! one range and a move is a split of one store and a merge into its
//! neighbour's ([`Assignment::moved`]). The assignment is versioned: each
//! change makes the next version. A job starts from the uniform
//! assignment, or from the one its restored checkpoint recorded.

use std::fmt;

use spate_state::keyspace::BinRange;

use crate::routing::{InstanceId, RoutingTable};

/// Which worker owns each bin of a job's keyed operators (see the module
/// documentation).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Assignment {
    version: u64,
    bins_log2: u8,
    /// Per worker, its bins; in worker order, adjacent, covering the space.
    ranges: Vec<BinRange>,
}

/// Why an assignment cannot be built or changed as asked.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum AssignmentError {
    /// The ranges, in worker order, do not cover `0..2^bins_log2` end to
    /// end.
    NotAPartition {
        /// The ranges given.
        ranges: Vec<BinRange>,
        /// Bins of the space.
        bins: u32,
    },
    /// A worker index is not one of the job's.
    NoSuchWorker {
        /// The index.
        worker: usize,
        /// Workers of the job.
        workers: usize,
    },
    /// The bins to move are not a run at the edge of `from`'s range next
    /// to `to`'s (the two must be neighbours, or `to` must own nothing).
    NotMovable {
        /// The bins.
        bins: BinRange,
        /// The worker that owns them.
        from: usize,
        /// Its range.
        owned: BinRange,
        /// The worker they would move to.
        to: usize,
    },
}

impl fmt::Display for AssignmentError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AssignmentError::NotAPartition { ranges, bins } => {
                let r: Vec<String> = ranges.iter().map(ToString::to_string).collect();
                write!(f, "the worker ranges [{}] do not cover the {bins} bins end to end", r.join(", "))
            }
            AssignmentError::NoSuchWorker { worker, workers } => {
                write!(f, "worker {worker} is not one of the job's {workers}")
            }
            AssignmentError::NotMovable { bins, from, owned, to } => write!(
                f,
                "bins {bins} cannot move from worker {from} (which owns {owned}) to worker {to}: \
                 they must be a run at the end of {owned} next to worker {to}'s bins"
            ),
        }
    }
}

impl std::error::Error for AssignmentError {}

/// A move of `bins` from worker `from` to worker `to` as steps of at most
/// `max_bins` bins each (at least 1), in order, each from the end of what
/// is left next to `to`: every step is a run at the end of `from`'s range
/// when it runs ([`Assignment::moved`]).
pub fn steps_of(bins: BinRange, from: usize, to: usize, max_bins: u32) -> Vec<BinRange> {
    let mut s = StepSizer::new(bins, from, to, max_bins, u64::MAX);
    std::iter::from_fn(|| s.next_step()).collect()
}

/// Bins the first step of a move bounded by bytes takes at most: the
/// probe that tells the bytes a bin holds.
pub const PROBE_BINS: u32 = 8;

/// How much larger than the one before a step bounded by bytes may be.
pub const STEP_GROWTH: u32 = 4;

/// The steps of one move of `bins` from worker `from` to worker `to`, each
/// at most `max_bins` bins and about `max_bytes` bytes of state, each from
/// the end of what is left next to `to` (as [`steps_of`]) — sized as the
/// move goes, since only the giving worker's store knows what a bin holds:
/// with a byte bound, the first step is a probe of at most
/// [`PROBE_BINS`] bins, and each later one takes as many bins as
/// `max_bytes` buys at the larger of the bytes a bin held in the last step
/// and on average so far in this move (at least 1, at most
/// [`STEP_GROWTH`] times the step before). A step that reaches bins much
/// larger than those before it exceeds the bound (by the bins it takes
/// times the difference), and so may the one after it, sized by a mix of
/// both; from then on steps fit the large bins. The job's (`Job::move_bins_sized`)
/// and the coordinator's (`plan/rescale.rs`) moves both step through it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepSizer {
    /// What is left to move.
    left: BinRange,
    /// The giving and the taking worker.
    pub from: usize,
    /// The worker that takes the bins.
    pub to: usize,
    max_bins: u32,
    max_bytes: u64,
    /// Bins and bytes moved so far (steps reported done).
    moved_bins: u64,
    moved_bytes: u64,
    /// Bins of the last step handed out, and the bytes a bin of the last
    /// step reported held.
    last: u32,
    last_per_bin: u64,
}

impl StepSizer {
    /// The steps of moving `bins` from `from` to `to`, bounded by
    /// `max_bins` (at least 1) and `max_bytes` (`u64::MAX`: none).
    pub fn new(bins: BinRange, from: usize, to: usize, max_bins: u32, max_bytes: u64) -> Self {
        Self {
            left: bins,
            from,
            to,
            max_bins: max_bins.max(1),
            max_bytes,
            moved_bins: 0,
            moved_bytes: 0,
            last: 0,
            last_per_bin: 0,
        }
    }

    /// Whether every bin has been handed out as a step.
    pub fn is_done(&self) -> bool {
        self.left.is_empty()
    }

    /// The next step's bins (`None`: the move is done); each step must be
    /// run — and, for a byte bound to apply, reported with
    /// [`StepSizer::moved`] — before the next is asked for.
    pub fn next_step(&mut self) -> Option<BinRange> {
        if self.left.is_empty() {
            return None;
        }
        let k = if self.max_bytes == u64::MAX {
            self.max_bins
        } else if self.moved_bins == 0 || self.moved_bytes == 0 {
            // Nothing known yet (or the bins so far were empty): a probe,
            // or steps growing from the last one.
            if self.last == 0 {
                PROBE_BINS
            } else {
                self.last.saturating_mul(STEP_GROWTH)
            }
        } else {
            let per_bin = self.moved_bytes.div_ceil(self.moved_bins).max(self.last_per_bin).max(1);
            let fits = (self.max_bytes / per_bin).clamp(1, u32::MAX as u64) as u32;
            fits.min(self.last.max(1).saturating_mul(STEP_GROWTH))
        }
        .clamp(1, self.max_bins);
        let (lo, hi) = (self.left.start, self.left.end);
        let step = if self.to > self.from {
            BinRange::new(hi.saturating_sub(k).max(lo), hi)
        } else {
            BinRange::new(lo, lo.saturating_add(k).min(hi))
        };
        self.left =
            if self.to > self.from { BinRange::new(lo, step.start) } else { BinRange::new(step.end, hi) };
        self.last = step.len();
        Some(step)
    }

    /// A step of `bins` bins moved `bytes` bytes of state.
    pub fn moved(&mut self, bins: u32, bytes: u64) {
        self.moved_bins += u64::from(bins);
        self.moved_bytes += bytes;
        self.last_per_bin = bytes.div_ceil(u64::from(bins.max(1)));
    }
}

/// How a move bounds and paces its steps: `--max-bins B` (bins a step
/// moves at most), `--max-bytes N` (bytes of state a step moves, about:
/// [`StepSizer`]) and `--pace F` (after each step, wait F times as long
/// as it took before the next: the giving worker, which splits each step
/// off beside its load, catches up in between), as `spate ctl` writes
/// them after a request's words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepBounds {
    /// Bins a step moves at most.
    pub max_bins: u32,
    /// Bytes a step moves at most, about (`u64::MAX`: no bound).
    pub max_bytes: u64,
    /// The wait after a step, in thousandths of the time it took.
    pub pace_permille: u32,
}

/// `--pace` at most.
pub const PACE_MAX: f64 = 100.0;

impl StepBounds {
    /// Steps of at most `max_bins` bins, no byte bound, back to back.
    pub fn bins(max_bins: u32) -> Self {
        Self { max_bins, max_bytes: u64::MAX, pace_permille: 0 }
    }

    /// How long to wait after a step that took `took`.
    pub fn gap(&self, took: std::time::Duration) -> std::time::Duration {
        took * self.pace_permille / 1000
    }

    /// Takes `--max-bins`, `--max-bytes` and `--pace` (each with its
    /// value) out of `words`; what is not given is `default`'s. The error
    /// names the option and what is wrong with its value.
    pub fn take(words: &mut Vec<&str>, default: StepBounds) -> Result<StepBounds, String> {
        let mut b = default;
        for flag in ["--max-bins", "--max-bytes", "--pace"] {
            let Some(i) = words.iter().position(|w| *w == flag) else { continue };
            let v = words.get(i + 1).ok_or_else(|| format!("`{flag}` needs a number"))?;
            if flag == "--pace" {
                let f: f64 = v.parse().map_err(|_| format!("`--pace {v}`: `{v}` is not a number"))?;
                if !(0.0..=PACE_MAX).contains(&f) {
                    return Err(format!("`--pace {v}`: the wait is 0 to {PACE_MAX} times a step's time"));
                }
                b.pace_permille = (f * 1000.0).round() as u32;
            } else {
                let n: u64 = v.parse().map_err(|_| format!("`{flag} {v}`: `{v}` is not a whole number"))?;
                if n == 0 {
                    return Err(format!("`{flag} 0`: a step moves at least one bin"));
                }
                match flag {
                    "--max-bins" => b.max_bins = n.min(u32::MAX as u64) as u32,
                    _ => b.max_bytes = n,
                }
            }
            words.drain(i..=i + 1);
        }
        Ok(b)
    }

    /// The options as `spate ctl` appends them to a request (`None`: not
    /// given).
    pub fn suffix(max_bins: Option<u32>, max_bytes: Option<u64>, pace: Option<f64>) -> String {
        let mut s = String::new();
        if let Some(k) = max_bins {
            s.push_str(&format!(" --max-bins {k}"));
        }
        if let Some(n) = max_bytes {
            s.push_str(&format!(" --max-bytes {n}"));
        }
        if let Some(f) = pace {
            s.push_str(&format!(" --pace {f}"));
        }
        s
    }
}

impl Assignment {
    /// `workers` workers owning equal contiguous ranges, version 0.
    pub fn uniform(bins_log2: u8, workers: usize) -> Self {
        let all = BinRange::all(bins_log2);
        let ranges = (0..workers).map(|w| all.part(w as u32, workers as u32)).collect();
        Self { version: 0, bins_log2, ranges }
    }

    /// The assignment of `ranges` (one per worker), as `version`.
    pub fn from_ranges(version: u64, bins_log2: u8, ranges: Vec<BinRange>) -> Result<Self, AssignmentError> {
        let bins = 1u32 << bins_log2;
        let mut at = 0;
        for r in &ranges {
            if r.start != at || r.end < r.start {
                return Err(AssignmentError::NotAPartition { ranges, bins });
            }
            at = r.end;
        }
        if at != bins || ranges.is_empty() {
            return Err(AssignmentError::NotAPartition { ranges, bins });
        }
        Ok(Self { version, bins_log2, ranges })
    }

    /// Its version: 0 for a job's first, one more for each change.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// `B`: the space has `2^B` bins.
    pub fn bins_log2(&self) -> u8 {
        self.bins_log2
    }

    /// Workers it assigns bins to (some may own none).
    pub fn workers(&self) -> usize {
        self.ranges.len()
    }

    /// The bins `worker` owns (empty for a worker beyond the job's).
    pub fn bins_of(&self, worker: usize) -> BinRange {
        self.ranges.get(worker).copied().unwrap_or(BinRange::new(0, 0))
    }

    /// Every worker's bins, in worker order.
    pub fn ranges(&self) -> &[BinRange] {
        &self.ranges
    }

    /// Whether it is the uniform assignment of its workers (whatever its
    /// version).
    pub fn is_uniform(&self) -> bool {
        self.ranges == Assignment::uniform(self.bins_log2, self.ranges.len()).ranges
    }

    /// The routing table of an exchange edge into the keyed operators.
    pub fn routing(&self) -> RoutingTable {
        let mut t = RoutingTable::uniform(self.bins_log2, 1);
        for (w, r) in self.ranges.iter().enumerate() {
            if !r.is_empty() {
                t.assign(*r, w as InstanceId);
            }
        }
        t
    }

    /// The next version, with `bins` moved from worker `from` to worker
    /// `to`: a run at the end of `from`'s range next to `to`'s (its
    /// neighbour), or any end run of `from`'s when `to` owns nothing and
    /// every worker between them owns nothing either, so that ranges stay
    /// contiguous and in worker order.
    pub fn moved(&self, bins: BinRange, from: usize, to: usize) -> Result<Assignment, AssignmentError> {
        let workers = self.ranges.len();
        for w in [from, to] {
            if w >= workers {
                return Err(AssignmentError::NoSuchWorker { worker: w, workers });
            }
        }
        let owned = self.ranges[from];
        let refuse = || AssignmentError::NotMovable { bins, from, owned, to };
        if bins.is_empty() || from == to || bins.start < owned.start || bins.end > owned.end {
            return Err(refuse());
        }
        let mut ranges = self.ranges.clone();
        let between = |a: usize, b: usize| (a + 1..b).all(|w| self.ranges[w].is_empty());
        if to > from && bins.end == owned.end && between(from, to) {
            // From the top of `from` to the bottom of `to`.
            ranges[from] = BinRange::new(owned.start, bins.start);
            ranges[to] = BinRange::new(bins.start, self.ranges[to].end.max(bins.end));
            for r in &mut ranges[from + 1..to] {
                *r = BinRange::new(bins.start, bins.start);
            }
        } else if to < from && bins.start == owned.start && between(to, from) {
            ranges[from] = BinRange::new(bins.end, owned.end);
            let start = if self.ranges[to].is_empty() { bins.start } else { self.ranges[to].start };
            ranges[to] = BinRange::new(start, bins.end);
            for r in &mut ranges[to + 1..from] {
                *r = BinRange::new(bins.end, bins.end);
            }
        } else {
            return Err(refuse());
        }
        // An empty range sits where it keeps the ranges in order.
        let mut at = 0;
        for r in &mut ranges {
            if r.is_empty() {
                *r = BinRange::new(at, at);
            }
            at = r.end;
        }
        Assignment::from_ranges(self.version + 1, self.bins_log2, ranges)
    }
}

impl Assignment {
    /// The moves, each a legal [`Assignment::moved`] in turn, that take
    /// this assignment to `target` (of as many workers and bins): a sweep
    /// over the boundaries, left to right, each worker's end brought to
    /// its target's by taking the start run of the next worker that owns
    /// bins, or by giving its top run to its right neighbour.
    pub fn moves_to(&self, target: &Assignment) -> Result<Vec<(BinRange, usize, usize)>, AssignmentError> {
        let n = self.ranges.len();
        if target.ranges.len() != n || target.bins_log2 != self.bins_log2 {
            return Err(AssignmentError::NotAPartition {
                ranges: target.ranges.clone(),
                bins: 1 << self.bins_log2,
            });
        }
        let mut at = self.clone();
        let mut moves = Vec::new();
        for i in 0..n.saturating_sub(1) {
            let want = target.ranges[i].end;
            loop {
                let end = at.ranges[i].end;
                if end < want {
                    // The next worker that owns bins gives its start run.
                    let Some(j) = (i + 1..n).find(|&j| !at.ranges[j].is_empty()) else { break };
                    let r = at.ranges[j];
                    let bins = BinRange::new(r.start, r.end.min(want));
                    at = at.moved(bins, j, i)?;
                    moves.push((bins, j, i));
                } else if end > want {
                    let bins = BinRange::new(want.max(at.ranges[i].start), end);
                    at = at.moved(bins, i, i + 1)?;
                    moves.push((bins, i, i + 1));
                } else {
                    break;
                }
            }
        }
        Ok(moves)
    }

    /// The first `used` workers of `workers` owning equal ranges, the
    /// others none, as `version`.
    pub fn uniform_over(
        bins_log2: u8,
        workers: usize,
        used: usize,
        version: u64,
    ) -> Result<Self, AssignmentError> {
        let used = used.clamp(1, workers.max(1));
        let mut ranges = Assignment::uniform(bins_log2, used).ranges;
        let end = ranges.last().map_or(0, |r| r.end);
        ranges.resize(workers.max(1), BinRange::new(end, end));
        Assignment::from_ranges(version, bins_log2, ranges)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs a sizer over bins of `bytes(bin)` bytes each: the steps.
    fn sized(
        bins: BinRange,
        from: usize,
        to: usize,
        max_bins: u32,
        max_bytes: u64,
        bytes: impl Fn(u32) -> u64,
    ) -> Vec<BinRange> {
        let mut s = StepSizer::new(bins, from, to, max_bins, max_bytes);
        let mut out = Vec::new();
        while let Some(step) = s.next_step() {
            s.moved(step.len(), (step.start..step.end).map(&bytes).sum());
            out.push(step);
        }
        assert!(s.is_done());
        out
    }

    #[test]
    fn steps_bounded_by_bytes_probe_then_fit_the_bound() {
        // 1 KiB a bin, 16 KiB a step: a probe of 8, then 16 a step (at
        // most 4 times the step before), from the end next to the target.
        let steps = sized(BinRange::new(0, 64), 0, 1, 512, 16 << 10, |_| 1 << 10);
        let lens: Vec<u32> = steps.iter().map(|s| s.len()).collect();
        assert_eq!(lens, [8, 16, 16, 16, 8]);
        assert_eq!(steps[0], BinRange::new(56, 64));
        assert_eq!(steps[4], BinRange::new(0, 8));
        // Towards a lower worker, from the start; `max_bins` still bounds.
        let steps = sized(BinRange::new(0, 64), 1, 0, 10, 1 << 30, |_| 1);
        assert_eq!(steps[0], BinRange::new(0, 8));
        assert!(steps.iter().all(|s| s.len() <= 10));
        assert_eq!(steps.iter().map(|s| s.len()).sum::<u32>(), 64);
        // No byte bound: `steps_of`'s steps of `max_bins`.
        assert_eq!(sized(BinRange::new(0, 64), 0, 1, 20, u64::MAX, |_| 1 << 20).len(), 4);
        // Empty bins tell nothing: steps grow by `STEP_GROWTH`.
        let lens: Vec<u32> =
            sized(BinRange::new(0, 200), 0, 1, 512, 1 << 10, |_| 0).iter().map(|s| s.len()).collect();
        assert_eq!(lens, [8, 32, 128, 32]);
    }

    #[test]
    fn a_run_of_larger_bins_shrinks_the_steps_again() {
        // Bins 0..32 hold 64 KiB each, the rest 1 KiB; moved from the top.
        let bytes = |b: u32| if b < 32 { 64 << 10 } else { 1 << 10 };
        let bound = 64 << 10;
        let steps = sized(BinRange::new(0, 256), 0, 1, 4096, bound, bytes);
        let step_bytes: Vec<u64> = steps.iter().map(|s| (s.start..s.end).map(bytes).sum()).collect();
        // The step that reaches them exceeds the bound, and the one after
        // it (sized by a mix of both); every step after those, in the
        // large bins, is back within it.
        let over = step_bytes.iter().position(|&b| b > bound).unwrap_or_else(|| panic!("{step_bytes:?}"));
        assert!(steps[over].start < 32, "{steps:?}");
        assert!(step_bytes[over + 2..].iter().all(|&b| b <= bound), "{step_bytes:?}");
        assert!(step_bytes[over + 2..].len() >= 16, "{step_bytes:?}");
        assert_eq!(steps.iter().map(|s| s.len()).sum::<u32>(), 256);
    }

    #[test]
    fn uniform_routes_as_the_uniform_table() {
        let a = Assignment::uniform(6, 3);
        assert_eq!(a.routing(), RoutingTable::uniform(6, 3));
        assert!(a.is_uniform());
        assert_eq!(a.bins_of(1), BinRange::new(21, 42));
        assert_eq!(a.bins_of(7), BinRange::new(0, 0));
    }

    #[test]
    fn moves_keep_ranges_contiguous_and_in_order() {
        let a = Assignment::uniform(4, 2); // 0..8, 8..16
        let b = a.moved(BinRange::new(6, 8), 0, 1).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(b.ranges(), &[BinRange::new(0, 6), BinRange::new(6, 16)]);
        assert_eq!(b.version(), 1);
        assert!(!b.is_uniform());
        assert_eq!(b.routing().ranges_of(1), vec![BinRange::new(6, 16)]);
        let c = b.moved(BinRange::new(6, 10), 1, 0).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.ranges(), &[BinRange::new(0, 10), BinRange::new(10, 16)]);
        // Not an end run, not a neighbour's side, not owned: refused.
        for (bins, from, to) in
            [((2, 4), 0, 1), ((0, 2), 0, 1), ((8, 9), 0, 1), ((12, 14), 1, 0), ((10, 12), 0, 1)]
        {
            let e = c.moved(BinRange::new(bins.0, bins.1), from, to);
            assert!(matches!(e, Err(AssignmentError::NotMovable { .. })), "{bins:?} {from}->{to}: {e:?}");
        }
        assert!(matches!(c.moved(BinRange::new(0, 1), 0, 5), Err(AssignmentError::NoSuchWorker { .. })));
    }

    #[test]
    fn a_worker_that_owns_nothing_takes_bins_over_empty_ones() {
        // Three workers, the last two empty (a job grown to three).
        let a = Assignment::from_ranges(
            0,
            4,
            vec![BinRange::new(0, 16), BinRange::new(16, 16), BinRange::new(16, 16)],
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let b = a.moved(BinRange::new(12, 16), 0, 2).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(b.ranges(), &[BinRange::new(0, 12), BinRange::new(12, 12), BinRange::new(12, 16)]);
        let c = b.moved(BinRange::new(8, 12), 0, 1).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.ranges(), &[BinRange::new(0, 8), BinRange::new(8, 12), BinRange::new(12, 16)]);
        // Everything back to worker 0, one neighbour at a time.
        let d = c.moved(BinRange::new(12, 16), 2, 1).unwrap_or_else(|e| panic!("{e}"));
        let e = d.moved(BinRange::new(8, 16), 1, 0).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(e.bins_of(0), BinRange::new(0, 16));
        assert!(e.bins_of(1).is_empty() && e.bins_of(2).is_empty());
    }

    #[test]
    fn ranges_that_do_not_cover_the_space_are_refused() {
        for ranges in [vec![BinRange::new(0, 8)], vec![BinRange::new(0, 8), BinRange::new(9, 16)], vec![]] {
            assert!(Assignment::from_ranges(0, 4, ranges).is_err());
        }
    }

    #[test]
    fn moves_reach_any_target_one_legal_step_at_a_time() {
        let ok = |r: Result<Assignment, AssignmentError>| r.unwrap_or_else(|e| panic!("{e}"));
        let one = ok(Assignment::uniform_over(6, 4, 1, 0));
        for used in [1, 2, 3, 4, 2, 1, 3] {
            let target = ok(Assignment::uniform_over(6, 4, used, 0));
            for from in [
                one.clone(),
                ok(Assignment::uniform_over(6, 4, 4, 0)),
                ok(Assignment::uniform_over(6, 4, 2, 0)),
            ] {
                let moves = from.moves_to(&target).unwrap_or_else(|e| panic!("{e}"));
                let mut at = from.clone();
                for (bins, f, t) in moves {
                    at = ok(at.moved(bins, f, t));
                }
                assert_eq!(at.ranges(), target.ranges(), "from {:?} to {used} used", from.ranges());
            }
        }
    }

    #[test]
    fn step_bounds_are_taken_out_of_a_request() {
        let d = StepBounds::bins(512);
        let mut w: Vec<&str> =
            "scale 2 --max-bytes 1048576 --pace 0.5 --max-bins 64".split_whitespace().collect();
        assert_eq!(
            StepBounds::take(&mut w, d),
            Ok(StepBounds { max_bins: 64, max_bytes: 1 << 20, pace_permille: 500 })
        );
        assert_eq!(w, ["scale", "2"]);
        let mut w: Vec<&str> = vec!["scale", "2"];
        assert_eq!(StepBounds::take(&mut w, d), Ok(d));
        for bad in [
            "scale 2 --max-bytes",
            "scale 2 --max-bytes 1.5",
            "scale 2 --max-bins 0",
            "scale 2 --max-bytes -3",
        ] {
            let mut w: Vec<&str> = bad.split_whitespace().collect();
            let e = StepBounds::take(&mut w, d).err().unwrap_or_else(|| panic!("{bad} taken"));
            assert!(e.contains("--max-b") || e.contains("--pace"), "{bad}: {e}");
        }
        assert_eq!(
            StepBounds::suffix(Some(8), Some(100), Some(1.0)),
            " --max-bins 8 --max-bytes 100 --pace 1"
        );
        let b = StepBounds { pace_permille: 1500, ..d };
        assert_eq!(b.gap(std::time::Duration::from_millis(10)), std::time::Duration::from_millis(15));
    }
}
