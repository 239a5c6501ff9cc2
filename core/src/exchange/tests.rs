//! Tests of the exchange: outboxes' batching, the spreading of bursts
//! between workers, and the checking of records from another process.

use std::any::Any;
use std::cell::RefCell;
use std::rc::Rc;

use spate_state::codec;

use super::sender::{pair_of, Stage};
use super::*;
use crate::batch::{Batch, Meta};
use crate::data::Data;
use crate::metrics::JobMetrics;
use crate::push::Push;
use crate::routing::RoutingTable;
use crate::time::Timestamp;

type Rec = (u64, String);

struct Collect(Rc<RefCell<Vec<Rec>>>);

impl Push<Rec> for Collect {
    fn push(&mut self, rec: Rec, _meta: Meta) {
        self.0.borrow_mut().push(rec);
    }
    fn watermark(&mut self, _wm: Timestamp) {}
    fn finish(&mut self) {}
    fn barrier(&mut self, _id: u64) {}
    fn flush(&mut self) {}
}

/// The batches `o` closed (and its open one), as (count, bytes).
fn batches(o: &mut Outbox) -> Vec<(u32, Vec<u8>)> {
    o.seal(0);
    o.ready.drain(..).map(|b| (b.count, b.data)).collect()
}

/// `recs` through `push_run` in runs of `run` records, and one by one
/// through `push`, into outboxes of `records` records and `bytes`
/// bytes a batch: the batches must be the same.
fn run_matches_one_by_one<T: Data>(recs: &[(T, Meta)], run: usize, records: usize, bytes: usize) {
    let outbox = || Outbox::new(0, 0, 1, Rc::new(RefCell::new(Vec::new())), records, bytes);
    let (mut by_run, mut by_one) = (outbox(), outbox());
    for chunk in recs.chunks(run) {
        assert!(by_run.push_run(chunk).is_ok());
    }
    for (rec, meta) in recs {
        assert!(by_one.push(rec, *meta).is_ok());
    }
    let (a, b) = (batches(&mut by_run), batches(&mut by_one));
    assert!(a.len() > 2, "the limits must close batches");
    assert_eq!(a, b, "run {run}, {records} records, {bytes} bytes a batch");
}

/// A recycled buffer serves the next batch when it holds what that
/// batch is sized for (the same allocation, emptied), and not when it
/// is smaller (it would be grown by copying).
#[test]
fn a_recycled_buffer_serves_the_next_batch_if_large_enough() {
    let mut o = Outbox::new(0, 0, 1, Rc::new(RefCell::new(Vec::new())), 4, 1 << 20);
    let rec = |i: u64| ((i, i), Meta { ingest_ns: 7 });
    let fill = |o: &mut Outbox| {
        for i in 0..4 {
            assert!(o.push(&rec(i).0, rec(i).1).is_ok());
        }
    };
    fill(&mut o);
    // A full batch closed; the one open now was sized by it.
    let hint = o.ready.back().map_or(0, |b| b.data.len() * 3 / 2);
    assert!(hint > 0);
    let mut big = Batch::with_capacity(0, 0, 0);
    big.data = Vec::with_capacity(hint * 4);
    big.data.extend_from_slice(b"stale");
    let big_ptr = big.data.as_ptr();
    o.recycle(big);
    fill(&mut o);
    assert_eq!(o.current.data.as_ptr(), big_ptr, "the recycled buffer is the open batch's");
    assert!(o.current.data.is_empty(), "emptied");
    let mut small = Batch::with_capacity(0, 0, 0);
    small.data = Vec::with_capacity(1);
    let small_ptr = small.data.as_ptr();
    o.recycle(small);
    fill(&mut o);
    assert_ne!(o.current.data.as_ptr(), small_ptr, "a buffer too small is not grown");
    assert!(o.current.data.capacity() >= hint);
    // Every batch still frames its records.
    let got = batches(&mut o);
    assert!(got.iter().filter(|(count, _)| *count == 4).count() >= 3, "{:?}", got.len());
}

#[test]
fn a_run_of_records_closes_and_frames_batches_as_one_by_one() {
    let fixed: Vec<((u64, u64), Meta)> =
        (0..3000u64).map(|i| ((i % 7, i * 3), Meta { ingest_ns: 1_000 + i })).collect();
    let other: Vec<(Rec, Meta)> =
        (0..700u64).map(|i| ((i, "x".repeat(i as usize % 13)), Meta { ingest_ns: i })).collect();
    for run in [1, 5, 512, 1024, 5000] {
        // Closed on the record count, on the byte size (28 bytes a
        // record: 100 is passed mid-record), and on both.
        run_matches_one_by_one(&fixed, run, 1024, 1 << 20);
        run_matches_one_by_one(&fixed, run, 1 << 20, 100);
        run_matches_one_by_one(&fixed, run, 300, 64 * 28);
        run_matches_one_by_one(&other, run, 100, 1 << 20);
        run_matches_one_by_one(&other, run, 1 << 20, 500);
    }
}

/// Collects a burst with the keys and hashes handed over with it.
struct CollectKeyed(Rc<RefCell<Vec<(Rec, u64, u64)>>>);

impl Push<Rec> for CollectKeyed {
    fn push(&mut self, _rec: Rec, _meta: Meta) {
        panic!("a spread burst's own records go downstream as a burst");
    }
    fn watermark(&mut self, _wm: Timestamp) {}
    fn finish(&mut self) {}
    fn barrier(&mut self, _id: u64) {}
    fn flush(&mut self) {}
    fn push_burst_keyed(&mut self, recs: &mut Vec<(Rec, Meta)>, hashes: &[u64], keys: &mut dyn Any) {
        let keys = keys.downcast_mut::<Vec<u64>>().map(std::mem::take).unwrap_or_default();
        assert!(keys.len() == recs.len() && hashes.len() == recs.len(), "keys and hashes for every record");
        let mut got = self.0.borrow_mut();
        for (((rec, _), k), &h) in recs.drain(..).zip(keys).zip(hashes) {
            got.push((rec, k, h));
        }
    }
}

#[test]
fn a_spread_burst_stages_every_record_for_its_worker_in_order() {
    // Worker 1 of 3, through a cursor per worker.
    spread_burst_reaches_every_worker_in_order(1, 3, false);
}

#[test]
fn a_burst_between_two_workers_reaches_each_in_order() {
    // Either worker of 2, split in one pass (`push_burst_pair`), and
    // through the cursors for comparison.
    for me in [0, 1] {
        spread_burst_reaches_every_worker_in_order(me, 2, true);
        spread_burst_reaches_every_worker_in_order(me, 2, false);
    }
}

/// Worker `me` of `workers` exchanges records of heap-owning type, in
/// bursts small and large (the staging vectors start empty and grow
/// mid-burst): every record reaches the worker that owns its key, in
/// order, this worker's own with their keys and hashes. With `pair`,
/// through `push_burst_pair`.
fn spread_burst_reaches_every_worker_in_order(me: usize, workers: usize, pair: bool) {
    let metrics = JobMetrics::new();
    let touch: TouchList = Rc::new(RefCell::new(Vec::new()));
    let edge = EdgeRuntime::new(0, me, workers, &touch, 1 << 20, 1 << 26);
    let local = Rc::new(RefCell::new(EdgeReceiver::<Rec>::new(
        0,
        workers,
        Rc::new(BarrierTracker::default()),
        metrics.clone(),
    )));
    let kept = Rc::new(RefCell::new(Vec::new()));
    local.borrow_mut().out = Some(Box::new(CollectKeyed(kept.clone())));
    let routing = RoutingTable::uniform(6, workers);
    let mut sender = ExchangeSender {
        key: Rc::new(|r: &Rec| r.0),
        scratch: Vec::new(),
        routing: routing.clone(),
        me,
        outboxes: edge.outboxes.clone(),
        local,
        metrics: metrics.clone(),
        burst: Vec::new(),
        burst_keys: Vec::new(),
        burst_hashes: Vec::new(),
        burst_max: 1024,
        alone: false,
        pair: if pair { pair_of(&edge.outboxes, me) } else { None },
        stage: (0..workers)
            .map(|_| Stage { recs: Vec::new(), keys: Vec::new(), hashes: Vec::new() })
            .collect(),
        cursors: Vec::new(),
        board: None,
        version: 0,
        bin_counts: None,
        bins_log2: 6,
        bursts: 0,
    };
    assert_eq!(sender.pair.is_some(), pair, "a pair of workers takes push_burst_pair");
    let mut want: Vec<Vec<Rec>> = vec![Vec::new(); workers];
    let mut i = 0u64;
    for size in [1usize, 700, 3000, 5, 2048] {
        let mut burst: Vec<(Rec, Meta)> = (i..i + size as u64)
            .map(|j| ((j.wrapping_mul(0x9E37_79B9), "r".repeat(j as usize % 17)), Meta { ingest_ns: j }))
            .collect();
        i += size as u64;
        for (rec, _) in &burst {
            want[routing.route(spate_state::keyspace::hash_u64(rec.0)) as usize].push(rec.clone());
        }
        sender.push_burst(&mut burst);
        assert!(burst.is_empty(), "the burst is taken");
    }
    assert!(!metrics.has_failed());
    for (d, want) in want.iter().enumerate() {
        let got: Vec<Rec> = match &edge.outboxes[d] {
            Some(o) => {
                let mut o = o.borrow_mut();
                o.seal(0);
                o.ready
                    .drain(..)
                    .flat_map(|b| {
                        b.records()
                            .map(|(bytes, _)| {
                                codec::decode_checked::<Rec>(bytes).unwrap_or_else(|e| panic!("{e}"))
                            })
                            .collect::<Vec<_>>()
                    })
                    .collect()
            }
            None => kept
                .borrow()
                .iter()
                .map(|(rec, k, h)| {
                    assert_eq!(
                        (*k, *h),
                        (rec.0, spate_state::keyspace::hash_u64(rec.0)),
                        "handed key and hash"
                    );
                    rec.clone()
                })
                .collect(),
        };
        assert!(want.len() > 1000, "worker {d} gets its share");
        assert_eq!(&got, want, "worker {d}'s records, in order (worker {me} of {workers}, pair {pair})");
    }
}

#[test]
fn records_from_another_process_are_validated_before_they_are_read() {
    let metrics = JobMetrics::new();
    let mut r = EdgeReceiver::<Rec>::new(3, 2, Rc::new(BarrierTracker::default()), metrics.clone());
    let got = Rc::new(RefCell::new(Vec::new()));
    r.out = Some(Box::new(Collect(got.clone())));

    let mut good = Batch::with_capacity(3, 1, 64);
    assert!(good.push(&(7u64, "seven".to_string()), Meta { ingest_ns: 0 }).is_ok());
    good.untrusted = true;
    r.on_batch(&good, 0);
    assert_eq!(*got.borrow(), vec![(7, "seven".to_string())]);
    assert!(!metrics.has_failed());

    // Sound framing, but the record's 3 bytes cannot hold a `Rec`.
    let mut bad = Batch::with_capacity(3, 1, 64);
    bad.data.extend_from_slice(&3u32.to_le_bytes());
    bad.data.extend_from_slice(&0u64.to_le_bytes());
    bad.data.extend_from_slice(&[0xff; 3]);
    bad.count = 1;
    assert!(bad.validate_framing().is_ok());
    bad.untrusted = true;
    r.on_batch(&bad, 0);
    assert_eq!(got.borrow().len(), 1, "a garbage record was read");
    let failure = metrics.failure().unwrap_or_default();
    assert!(failure.contains("edge 3") && failure.contains("not a valid record"), "{failure}");
}
