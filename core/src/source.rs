//! Sources: where records enter a dataflow.
//!
//! A source is polled in steps by its worker: each step pushes at most a
//! bounded number of records downstream, after which the runtime flushes the
//! batches the step produced (waiting if a channel is full: backpressure)
//! and lets the worker's other tasks run.

use crate::push::{BoxPush, Push};
use crate::time::{Timestamp, WATERMARK_END};

/// What a source step did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourceStatus {
    /// More records are ready: step again soon.
    Busy,
    /// Nothing is ready; the next record is due at `next_ns` (realtime
    /// nanoseconds) if known.
    Idle {
        /// When to step again, if known.
        next_ns: Option<u64>,
    },
    /// The source is exhausted.
    Done,
}

/// One step's outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Step {
    /// Records pushed in this step.
    pub emitted: usize,
    /// What to do next.
    pub status: SourceStatus,
}

/// A source of `T` records.
pub trait Source<T> {
    /// Pushes at most `max_records` records (and any watermarks) into `out`.
    fn step(&mut self, out: &mut dyn Push<T>, max_records: usize) -> Step;

    /// Where the source stands, for a checkpoint: an offset that
    /// [`Source::seek`] resumes from, producing exactly the records that
    /// follow. `None` (the default): the source cannot replay, so a job
    /// with checkpoints refuses it.
    fn offset(&self) -> Option<u64> {
        None
    }

    /// Resumes from `offset` (see [`Source::offset`]), before the first step.
    fn seek(&mut self, offset: u64) -> Result<(), String> {
        Err(format!("this source cannot resume from offset {offset}"))
    }

    /// The records a second this instance is asked to produce at
    /// `now_ns` (a rate or a rate schedule), for load reports
    /// ([`crate::load::SourceLoad::offered_per_s`]); `None` (the default):
    /// as fast as it can, or unknown.
    fn offered_per_s(&self, now_ns: u64) -> Option<f64> {
        let _ = now_ns;
        None
    }
}

/// Type-erased source instance bound to its downstream: the partitions of
/// one source that a worker runs (see [`SourceRunner`]).
pub(crate) trait RunSource {
    fn step(&mut self, max_records: usize) -> Step;
    /// The partitions run here, in order.
    fn partitions(&self) -> Vec<usize>;
    /// Where partition `partition` stands (see [`Source::offset`]).
    fn offset(&self, partition: usize) -> Option<u64>;
    /// Resumes partition `partition` from `offset` (see [`Source::seek`]).
    fn seek(&mut self, partition: usize, offset: u64) -> Result<(), String>;
    /// Pushes checkpoint barrier `id` downstream.
    fn barrier(&mut self, id: u64);
    /// Flushes the chain (a live handoff began: its exchange senders
    /// switch their routing at once, not at the next record).
    fn poke(&mut self);
    /// The records a second its partitions are asked for at `now_ns`
    /// (see [`Source::offered_per_s`]).
    fn offered_per_s(&self, now_ns: u64) -> Option<f64>;
}

/// One partition of a source, run by a [`SourceRunner`].
struct Part<S> {
    partition: usize,
    src: S,
    done: bool,
}

/// The partitions of one source that a worker runs, bound to their
/// downstream chain.
///
/// A source has a fixed number of partitions, chosen when the job first
/// starts (its worker count then) and kept by its checkpoints, so that a
/// job restored onto another number of workers resumes every partition
/// from its own offset: worker `w` of `W` runs partitions `p ≡ w (mod W)`.
/// Usually that is one partition per worker, stepped directly. A worker
/// running several steps them in turn into its one chain; their
/// watermarks are merged (the chain sees the least of the partitions'
/// watermarks, so it never goes back), and the chain ends once every
/// partition ended.
pub(crate) struct SourceRunner<T, S> {
    parts: Vec<Part<S>>,
    out: BoxPush<T>,
    /// With several: the part stepped next, each part's last watermark
    /// (the end for one that ended), and the watermark pushed downstream.
    next: usize,
    watermarks: Vec<Timestamp>,
    watermark: Timestamp,
    done: bool,
}

impl<T, S: Source<T>> SourceRunner<T, S> {
    /// The partitions `parts` (partition number and instance, at least
    /// one) feeding `out`.
    pub(crate) fn new(parts: Vec<(usize, S)>, out: BoxPush<T>) -> Self {
        let parts: Vec<Part<S>> =
            parts.into_iter().map(|(partition, src)| Part { partition, src, done: false }).collect();
        let watermarks = vec![0; parts.len()];
        Self { parts, out, next: 0, watermarks, watermark: 0, done: false }
    }

    fn part(&self, partition: usize) -> Option<&Part<S>> {
        self.parts.iter().find(|p| p.partition == partition)
    }
}

/// What one of several partitions pushes: records go through, its
/// watermarks and end are merged with the other partitions'.
struct Merge<'a, T> {
    out: &'a mut dyn Push<T>,
    parts_watermarks: &'a mut [Timestamp],
    me: usize,
    watermark: &'a mut Timestamp,
}

impl<T> Merge<'_, T> {
    fn advance(&mut self, wm: Timestamp) {
        self.parts_watermarks[self.me] = self.parts_watermarks[self.me].max(wm);
        let least = self.parts_watermarks.iter().copied().min().unwrap_or(wm);
        if least > *self.watermark {
            *self.watermark = least;
            self.out.watermark(least);
        }
    }
}

impl<T> Push<T> for Merge<'_, T> {
    fn push(&mut self, rec: T, meta: crate::batch::Meta) {
        self.out.push(rec, meta);
    }
    fn watermark(&mut self, wm: Timestamp) {
        self.advance(wm);
    }
    fn finish(&mut self) {
        // The runner ends the chain once every partition ended.
    }
    fn barrier(&mut self, _id: u64) {
        // Barriers come from the runner, once for all partitions.
    }
    fn flush(&mut self) {
        self.out.flush();
    }
    fn push_burst(&mut self, recs: &mut Vec<(T, crate::batch::Meta)>) {
        self.out.push_burst(recs);
    }
}

impl<T, S: Source<T>> RunSource for SourceRunner<T, S> {
    fn step(&mut self, max_records: usize) -> Step {
        if self.done {
            return Step { emitted: 0, status: SourceStatus::Done };
        }
        let step = if let [only] = &mut self.parts[..] {
            let step = only.src.step(self.out.as_mut(), max_records);
            only.done = step.status == SourceStatus::Done;
            step
        } else {
            self.step_one_of_several(max_records)
        };
        if step.emitted > 0 {
            self.out.flush();
        }
        if self.parts.iter().all(|p| p.done) {
            self.done = true;
            // With several, the merge pushed the end already.
            if self.parts.len() == 1 || self.watermark < WATERMARK_END {
                self.out.watermark(WATERMARK_END);
            }
            self.out.finish();
            return Step { emitted: step.emitted, status: SourceStatus::Done };
        }
        step
    }

    fn partitions(&self) -> Vec<usize> {
        self.parts.iter().map(|p| p.partition).collect()
    }

    fn offset(&self, partition: usize) -> Option<u64> {
        self.part(partition).and_then(|p| p.src.offset())
    }

    fn seek(&mut self, partition: usize, offset: u64) -> Result<(), String> {
        match self.parts.iter_mut().find(|p| p.partition == partition) {
            Some(p) => p.src.seek(offset),
            None => Err(format!("partition {partition} does not run here")),
        }
    }

    fn barrier(&mut self, id: u64) {
        if !self.done {
            self.out.barrier(id);
        }
    }

    fn poke(&mut self) {
        if !self.done {
            self.out.flush();
        }
    }

    fn offered_per_s(&self, now_ns: u64) -> Option<f64> {
        let rates: Vec<Option<f64>> =
            self.parts.iter().filter(|p| !p.done).map(|p| p.src.offered_per_s(now_ns)).collect();
        if rates.is_empty() {
            return (!self.parts.is_empty()).then_some(0.0);
        }
        rates.into_iter().sum()
    }
}

impl<T, S: Source<T>> SourceRunner<T, S> {
    /// Steps the partitions in turn, from the one after the last stepped,
    /// until one pushes records or ends (then busy: step again soon);
    /// idle only when every one is idle (then due at the earliest time).
    fn step_one_of_several(&mut self, max_records: usize) -> Step {
        let n = self.parts.len();
        let mut due: Option<u64> = None;
        let mut unknown = false;
        for _ in 0..n {
            let i = self.next;
            self.next = (self.next + 1) % n;
            if self.parts[i].done {
                continue;
            }
            let mut m = Merge {
                out: self.out.as_mut(),
                parts_watermarks: &mut self.watermarks,
                me: i,
                watermark: &mut self.watermark,
            };
            let step = self.parts[i].src.step(&mut m, max_records);
            if step.status == SourceStatus::Done {
                // An ended partition holds no one back.
                m.advance(WATERMARK_END);
                self.parts[i].done = true;
            }
            match step.status {
                _ if step.emitted > 0 => return Step { emitted: step.emitted, status: SourceStatus::Busy },
                SourceStatus::Done | SourceStatus::Busy => {
                    return Step { emitted: 0, status: SourceStatus::Busy }
                }
                SourceStatus::Idle { next_ns: Some(t) } => due = Some(due.map_or(t, |d| d.min(t))),
                SourceStatus::Idle { next_ns: None } => unknown = true,
            }
        }
        Step { emitted: 0, status: SourceStatus::Idle { next_ns: if unknown { None } else { due } } }
    }
}

/// A source instance ready to be driven by a worker task.
pub(crate) struct SourceTask {
    pub(crate) name: String,
    pub(crate) runner: Box<dyn RunSource>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::Meta;
    use std::cell::RefCell;
    use std::rc::Rc;

    /// Records `start, start + stride, ...` below `end`, two a step, each
    /// step followed by the watermark of its last record; its offset is
    /// the next record.
    struct Counting {
        next: u64,
        end: u64,
        stride: u64,
    }

    impl Source<u64> for Counting {
        fn step(&mut self, out: &mut dyn Push<u64>, _max: usize) -> Step {
            let mut emitted = 0;
            while emitted < 2 && self.next < self.end {
                out.push(self.next, Meta::default());
                out.watermark(self.next);
                self.next += self.stride;
                emitted += 1;
            }
            let status = if self.next >= self.end { SourceStatus::Done } else { SourceStatus::Busy };
            Step { emitted, status }
        }
        fn offset(&self) -> Option<u64> {
            Some(self.next)
        }
        fn seek(&mut self, offset: u64) -> Result<(), String> {
            self.next = offset;
            Ok(())
        }
    }

    #[derive(Default)]
    struct Seen {
        records: Vec<u64>,
        watermarks: Vec<Timestamp>,
        finished: usize,
    }

    struct Record(Rc<RefCell<Seen>>);

    impl Push<u64> for Record {
        fn push(&mut self, rec: u64, _meta: Meta) {
            self.0.borrow_mut().records.push(rec);
        }
        fn watermark(&mut self, wm: Timestamp) {
            self.0.borrow_mut().watermarks.push(wm);
        }
        fn finish(&mut self) {
            self.0.borrow_mut().finished += 1;
        }
        fn barrier(&mut self, _id: u64) {}
        fn flush(&mut self) {}
    }

    #[test]
    fn several_partitions_merge_into_one_chain() {
        let seen = Rc::new(RefCell::new(Seen::default()));
        // Partitions 1 and 3 of 4, the first shorter: 1, 5, 9 and 3, 7,
        // 11, 15, 19.
        let parts = vec![
            (1, Counting { next: 1, end: 10, stride: 4 }),
            (3, Counting { next: 3, end: 20, stride: 4 }),
        ];
        let mut r = SourceRunner::new(parts, Box::new(Record(seen.clone())));
        assert_eq!(r.partitions(), vec![1, 3]);
        r.seek(3, 7).unwrap_or_else(|e| panic!("{e}"));
        assert!(r.seek(2, 0).is_err(), "partition 2 does not run here");
        let mut steps = 0;
        while r.step(2).status != SourceStatus::Done {
            steps += 1;
            assert!(steps < 100, "never done");
            assert_eq!(seen.borrow().finished, 0, "the chain ended before every partition did");
        }
        let s = seen.borrow();
        let mut got = s.records.clone();
        got.sort_unstable();
        assert_eq!(got, vec![1, 5, 7, 9, 11, 15, 19]);
        assert_eq!(s.finished, 1);
        // The chain's watermark is the least of the partitions': 5 once
        // both pushed (1, 5 and 7, 11), 9 and then 11 as partition 1 ends,
        // then partition 3's own, then the end, once.
        assert_eq!(s.watermarks, vec![5, 9, 11, 15, 19, WATERMARK_END]);
        assert_eq!(r.offset(1), Some(13));
        assert_eq!(r.offset(3), Some(23));
    }

    #[test]
    fn one_partition_is_stepped_directly() {
        let seen = Rc::new(RefCell::new(Seen::default()));
        let mut r = SourceRunner::new(
            vec![(0, Counting { next: 0, end: 3, stride: 1 })],
            Box::new(Record(seen.clone())),
        );
        while r.step(2).status != SourceStatus::Done {}
        let s = seen.borrow();
        assert_eq!(s.records, vec![0, 1, 2]);
        // Its own watermarks, then the end.
        assert_eq!(s.watermarks, vec![0, 1, 2, WATERMARK_END]);
        assert_eq!(s.finished, 1);
    }
}
