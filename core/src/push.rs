//! The instance side of operators: records are *pushed* through fused chains
//! of operator instances by direct calls.
//!
//! An operator instance is something that accepts records, watermarks and the
//! end of its input ([`Push`]), and holds the [`Push`] of what comes after it.
//! Operators with no repartitioning between them are composed this way on one
//! worker: one virtual call per record per operator, no channel, no copy.

use std::cell::RefCell;
use std::marker::PhantomData;
use std::rc::Rc;

use crate::batch::Meta;
use crate::time::Timestamp;

/// Accepts the records of one stream on one worker.
pub trait Push<T> {
    /// One record.
    fn push(&mut self, rec: T, meta: Meta);
    /// The input's watermark advanced to `wm`: no later record has an event
    /// time below it. Called with non-decreasing values.
    fn watermark(&mut self, wm: Timestamp);
    /// The input ended: no more records or watermarks follow.
    fn finish(&mut self);
}

/// A boxed [`Push`]: the downstream of an operator instance.
pub type BoxPush<T> = Box<dyn Push<T>>;

/// Pushes to nothing: the output of a stream nobody consumes.
pub struct Discard;

impl<T> Push<T> for Discard {
    fn push(&mut self, _rec: T, _meta: Meta) {}
    fn watermark(&mut self, _wm: Timestamp) {}
    fn finish(&mut self) {}
}

/// Pushes every record to several consumers (a stream with fan-out).
pub struct Tee<T: Clone> {
    outs: Vec<BoxPush<T>>,
}

impl<T: Clone> Tee<T> {
    /// A tee over `outs` (at least two).
    pub fn new(outs: Vec<BoxPush<T>>) -> Self {
        debug_assert!(outs.len() >= 2);
        Self { outs }
    }
}

impl<T: Clone> Push<T> for Tee<T> {
    fn push(&mut self, rec: T, meta: Meta) {
        if let Some((last, rest)) = self.outs.split_last_mut() {
            for o in rest {
                o.push(rec.clone(), meta);
            }
            last.push(rec, meta);
        }
    }
    fn watermark(&mut self, wm: Timestamp) {
        for o in &mut self.outs {
            o.watermark(wm);
        }
    }
    fn finish(&mut self) {
        for o in &mut self.outs {
            o.finish();
        }
    }
}

/// Tracks the watermarks and ends of several inputs of one instance: its
/// watermark is the minimum over inputs, and it ends when every input has.
#[derive(Debug, Clone)]
pub struct InputFrontier {
    watermarks: Vec<Timestamp>,
    finished: Vec<bool>,
    current: Timestamp,
}

impl InputFrontier {
    /// A frontier over `inputs` inputs, all at watermark 0.
    pub fn new(inputs: usize) -> Self {
        Self { watermarks: vec![0; inputs], finished: vec![false; inputs], current: 0 }
    }

    /// Input `i` reached `wm`; returns the new combined watermark if it advanced.
    pub fn advance(&mut self, i: usize, wm: Timestamp) -> Option<Timestamp> {
        if wm > self.watermarks[i] {
            self.watermarks[i] = wm;
        }
        let min = self.watermarks.iter().copied().min().unwrap_or(0);
        if min > self.current {
            self.current = min;
            Some(min)
        } else {
            None
        }
    }

    /// Input `i` ended; returns true when every input has.
    pub fn finish(&mut self, i: usize) -> bool {
        self.finished[i] = true;
        self.finished.iter().all(|f| *f)
    }

    /// The combined watermark.
    pub fn watermark(&self) -> Timestamp {
        self.current
    }
}

/// An operator with two inputs (a join, a union), shared by the two pushes
/// that feed it on one worker.
pub trait BinaryOperator<A, B> {
    /// A record on the first input.
    fn push_first(&mut self, rec: A, meta: Meta);
    /// A record on the second input.
    fn push_second(&mut self, rec: B, meta: Meta);
    /// The combined watermark of both inputs advanced.
    fn watermark(&mut self, wm: Timestamp);
    /// Both inputs ended.
    fn finish(&mut self);
}

/// The shared core behind the two input pushes of a [`BinaryOperator`].
pub struct BinaryCore<Op> {
    op: Op,
    frontier: InputFrontier,
}

impl<Op> BinaryCore<Op> {
    /// Wraps `op`.
    pub fn new(op: Op) -> Rc<RefCell<Self>> {
        Rc::new(RefCell::new(Self { op, frontier: InputFrontier::new(2) }))
    }
}

/// The first input of a shared [`BinaryOperator`] (`B` is the type of the
/// other input).
pub struct FirstInput<Op, B> {
    core: Rc<RefCell<BinaryCore<Op>>>,
    _other: PhantomData<fn(B)>,
}

/// The second input of a shared [`BinaryOperator`] (`A` is the type of the
/// other input).
pub struct SecondInput<Op, A> {
    core: Rc<RefCell<BinaryCore<Op>>>,
    _other: PhantomData<fn(A)>,
}

impl<Op, B> FirstInput<Op, B> {
    /// The first input of `core`.
    pub fn new(core: Rc<RefCell<BinaryCore<Op>>>) -> Self {
        Self { core, _other: PhantomData }
    }
}

impl<Op, A> SecondInput<Op, A> {
    /// The second input of `core`.
    pub fn new(core: Rc<RefCell<BinaryCore<Op>>>) -> Self {
        Self { core, _other: PhantomData }
    }
}

fn binary_watermark<A, B, Op: BinaryOperator<A, B>>(
    core: &RefCell<BinaryCore<Op>>,
    side: usize,
    wm: Timestamp,
) {
    let mut c = core.borrow_mut();
    if let Some(w) = c.frontier.advance(side, wm) {
        c.op.watermark(w);
    }
}

fn binary_finish<A, B, Op: BinaryOperator<A, B>>(core: &RefCell<BinaryCore<Op>>, side: usize) {
    let mut c = core.borrow_mut();
    if c.frontier.finish(side) {
        c.op.finish();
    }
}

impl<A, B, Op: BinaryOperator<A, B>> Push<A> for FirstInput<Op, B> {
    fn push(&mut self, rec: A, meta: Meta) {
        self.core.borrow_mut().op.push_first(rec, meta);
    }
    fn watermark(&mut self, wm: Timestamp) {
        binary_watermark::<A, B, Op>(&self.core, 0, wm);
    }
    fn finish(&mut self) {
        binary_finish::<A, B, Op>(&self.core, 0);
    }
}

impl<A, B, Op: BinaryOperator<A, B>> Push<B> for SecondInput<Op, A> {
    fn push(&mut self, rec: B, meta: Meta) {
        self.core.borrow_mut().op.push_second(rec, meta);
    }
    fn watermark(&mut self, wm: Timestamp) {
        binary_watermark::<A, B, Op>(&self.core, 1, wm);
    }
    fn finish(&mut self) {
        binary_finish::<A, B, Op>(&self.core, 1);
    }
}
