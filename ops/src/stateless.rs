//! Stateless operators: map, filter, flat_map, inspect, union, and
//! watermark assignment.

use std::rc::Rc;

use spate_core::push::{BinaryOperator, BoxPush, Push};
use spate_core::{Data, Meta, Stream, Timestamp};

struct Map<T, U> {
    f: Rc<dyn Fn(T) -> U>,
    out: BoxPush<U>,
}

impl<T, U> Push<T> for Map<T, U> {
    #[inline]
    fn push(&mut self, rec: T, meta: Meta) {
        self.out.push((self.f)(rec), meta);
    }
    fn watermark(&mut self, wm: Timestamp) {
        self.out.watermark(wm);
    }
    fn finish(&mut self) {
        self.out.finish();
    }
    fn barrier(&mut self, id: u64) {
        self.out.barrier(id);
    }
    fn flush(&mut self) {
        self.out.flush();
    }
}

struct Filter<T> {
    f: Rc<dyn Fn(&T) -> bool>,
    out: BoxPush<T>,
}

impl<T> Push<T> for Filter<T> {
    #[inline]
    fn push(&mut self, rec: T, meta: Meta) {
        if (self.f)(&rec) {
            self.out.push(rec, meta);
        }
    }
    fn watermark(&mut self, wm: Timestamp) {
        self.out.watermark(wm);
    }
    fn finish(&mut self) {
        self.out.finish();
    }
    fn barrier(&mut self, id: u64) {
        self.out.barrier(id);
    }
    fn flush(&mut self) {
        self.out.flush();
    }
}

struct FlatMap<T, U, I> {
    f: Rc<dyn Fn(T) -> I>,
    out: BoxPush<U>,
}

impl<T, U, I: IntoIterator<Item = U>> Push<T> for FlatMap<T, U, I> {
    #[inline]
    fn push(&mut self, rec: T, meta: Meta) {
        for u in (self.f)(rec) {
            self.out.push(u, meta);
        }
    }
    fn watermark(&mut self, wm: Timestamp) {
        self.out.watermark(wm);
    }
    fn finish(&mut self) {
        self.out.finish();
    }
    fn barrier(&mut self, id: u64) {
        self.out.barrier(id);
    }
    fn flush(&mut self) {
        self.out.flush();
    }
}

struct AssignWatermarks<T> {
    ts: Rc<dyn Fn(&T) -> Timestamp>,
    lateness: Timestamp,
    max_seen: Timestamp,
    emitted: Timestamp,
    out: BoxPush<T>,
}

impl<T> Push<T> for AssignWatermarks<T> {
    #[inline]
    fn push(&mut self, rec: T, meta: Meta) {
        let t = (self.ts)(&rec);
        if t > self.max_seen {
            self.max_seen = t;
        }
        self.out.push(rec, meta);
        let wm = self.max_seen.saturating_sub(self.lateness);
        if wm > self.emitted {
            self.emitted = wm;
            self.out.watermark(wm);
        }
    }
    fn watermark(&mut self, wm: Timestamp) {
        // Upstream watermarks (the end of the stream) pass through.
        if wm > self.emitted {
            self.emitted = wm;
            self.out.watermark(wm);
        }
    }
    fn finish(&mut self) {
        self.out.finish();
    }
    fn barrier(&mut self, id: u64) {
        self.out.barrier(id);
    }
    fn flush(&mut self) {
        self.out.flush();
    }
}

/// Merges two streams of one type.
struct Union<T> {
    out: BoxPush<T>,
}

impl<T> BinaryOperator<T, T> for Union<T> {
    fn push_first(&mut self, rec: T, meta: Meta) {
        self.out.push(rec, meta);
    }
    fn push_second(&mut self, rec: T, meta: Meta) {
        self.out.push(rec, meta);
    }
    fn watermark(&mut self, wm: Timestamp) {
        self.out.watermark(wm);
    }
    fn finish(&mut self) {
        self.out.finish();
    }
    fn barrier(&mut self, id: u64) {
        self.out.barrier(id);
    }
    fn flush(&mut self) {
        self.out.flush();
    }
}

/// Stateless operators on any stream.
pub trait StreamExt<T: Data> {
    /// Transforms every record.
    fn map<U: Data>(&self, name: &str, f: impl Fn(T) -> U + 'static) -> Stream<U>;
    /// Keeps the records for which `f` is true.
    fn filter(&self, name: &str, f: impl Fn(&T) -> bool + 'static) -> Stream<T>;
    /// Turns every record into zero or more records.
    fn flat_map<U: Data, I: IntoIterator<Item = U> + 'static>(
        &self,
        name: &str,
        f: impl Fn(T) -> I + 'static,
    ) -> Stream<U>;
    /// Both streams' records, in one stream (watermark: the minimum of both).
    fn union(&self, other: &Stream<T>, name: &str) -> Stream<T>;
    /// Derives event-time watermarks from the records: the highest event
    /// time seen, less `lateness`. Records later than that are late for
    /// windows downstream.
    fn assign_watermarks(
        &self,
        name: &str,
        ts: impl Fn(&T) -> Timestamp + 'static,
        lateness: Timestamp,
    ) -> Stream<T>;
}

impl<T: Data> StreamExt<T> for Stream<T> {
    fn map<U: Data>(&self, name: &str, f: impl Fn(T) -> U + 'static) -> Stream<U> {
        let f: Rc<dyn Fn(T) -> U> = Rc::new(f);
        self.unary(name, move |_ctx, out| Box::new(Map { f: f.clone(), out }))
    }

    fn filter(&self, name: &str, f: impl Fn(&T) -> bool + 'static) -> Stream<T> {
        let f: Rc<dyn Fn(&T) -> bool> = Rc::new(f);
        self.unary(name, move |_ctx, out| Box::new(Filter { f: f.clone(), out }))
    }

    fn flat_map<U: Data, I: IntoIterator<Item = U> + 'static>(
        &self,
        name: &str,
        f: impl Fn(T) -> I + 'static,
    ) -> Stream<U> {
        let f: Rc<dyn Fn(T) -> I> = Rc::new(f);
        self.unary(name, move |_ctx, out| Box::new(FlatMap { f: f.clone(), out }))
    }

    fn union(&self, other: &Stream<T>, name: &str) -> Stream<T> {
        self.binary(other, name, |_ctx, out| Union { out })
    }

    fn assign_watermarks(
        &self,
        name: &str,
        ts: impl Fn(&T) -> Timestamp + 'static,
        lateness: Timestamp,
    ) -> Stream<T> {
        let ts: Rc<dyn Fn(&T) -> Timestamp> = Rc::new(ts);
        self.unary(name, move |_ctx, out| {
            Box::new(AssignWatermarks { ts: ts.clone(), lateness, max_seen: 0, emitted: 0, out })
        })
    }
}
