//! Sources: where records enter a dataflow.
//!
//! A source is polled in steps by its worker: each step pushes at most a
//! bounded number of records downstream, after which the runtime flushes the
//! batches the step produced (waiting if a channel is full: backpressure)
//! and lets the worker's other tasks run.

use crate::push::{BoxPush, Push};
use crate::time::WATERMARK_END;

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
}

/// Type-erased source instance bound to its downstream.
pub(crate) trait RunSource {
    fn step(&mut self, max_records: usize) -> Step;
    fn offset(&self) -> Option<u64>;
    fn seek(&mut self, offset: u64) -> Result<(), String>;
    /// Pushes checkpoint barrier `id` downstream.
    fn barrier(&mut self, id: u64);
}

pub(crate) struct SourceRunner<T, S> {
    src: S,
    out: BoxPush<T>,
    done: bool,
}

impl<T, S: Source<T>> SourceRunner<T, S> {
    pub(crate) fn new(src: S, out: BoxPush<T>) -> Self {
        Self { src, out, done: false }
    }
}

impl<T, S: Source<T>> RunSource for SourceRunner<T, S> {
    fn step(&mut self, max_records: usize) -> Step {
        if self.done {
            return Step { emitted: 0, status: SourceStatus::Done };
        }
        let step = self.src.step(self.out.as_mut(), max_records);
        if step.emitted > 0 {
            self.out.flush();
        }
        if step.status == SourceStatus::Done {
            self.done = true;
            self.out.watermark(WATERMARK_END);
            self.out.finish();
        }
        step
    }

    fn offset(&self) -> Option<u64> {
        self.src.offset()
    }

    fn seek(&mut self, offset: u64) -> Result<(), String> {
        self.src.seek(offset)
    }

    fn barrier(&mut self, id: u64) {
        if !self.done {
            self.out.barrier(id);
        }
    }
}

/// A source instance ready to be driven by a worker task.
pub(crate) struct SourceTask {
    pub(crate) name: String,
    pub(crate) runner: Box<dyn RunSource>,
}
