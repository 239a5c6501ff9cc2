//! Asynchronous checkpoints (`begin_checkpoint` and its `CheckpointStream`):
//! the image is exactly the state at the begin, whatever the store does
//! while the stream is pulled, on this thread or another; a stream dropped
//! unfinished loses no page.

mod common;

use common::World;
use proptest::prelude::*;
use spate_state::{
    hash_u64, BackupStore, BinRange, CheckpointStream, Durability, StateError, StateStore, StoreConfig,
};

const BINS_LOG2: u8 = 3;

#[derive(Clone, Debug)]
enum Op {
    /// An in-place update of a fixed-size value (rewrites a page of the
    /// image).
    Add(u64, u64),
    /// A value whose length changes: appends a record, kills the old one,
    /// compacts bins now and then (moves records between segments).
    PutBytes(u64, Vec<u8>),
    Remove(u64),
    Append(u64, Vec<u8>),
    RemoveList(u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..400u64, any::<u64>()).prop_map(|(k, v)| Op::Add(k, v)),
        3 => (0..120u64, prop::collection::vec(any::<u8>(), 0..200)).prop_map(|(k, v)| Op::PutBytes(k, v)),
        1 => (0..400u64).prop_map(Op::Remove),
        2 => (0..50u64, prop::collection::vec(any::<u8>(), 0..80)).prop_map(|(k, v)| Op::Append(k, v)),
        1 => (0..50u64).prop_map(Op::RemoveList),
    ]
}

/// Updates of a few keys only, so that the pages written before a dropped
/// stream are not all written again after it.
fn hot_op() -> impl Strategy<Value = Op> {
    (0..8u64, any::<u64>()).prop_map(|(k, v)| Op::Add(k, v))
}

impl World {
    fn new(dir: &std::path::Path) -> Self {
        Self::create(dir, BINS_LOG2, BinRange::all(BINS_LOG2))
    }

    fn apply(&mut self, op: &Op) {
        let s = &mut self.store;
        match op {
            Op::Add(k, v) => {
                self.sums.update(s, hash_u64(*k), k, |old| old.unwrap_or(0).wrapping_add(*v)).unwrap();
            }
            Op::PutBytes(k, v) => self.blobs.put(s, hash_u64(*k), k, v).unwrap(),
            Op::Remove(k) => {
                self.sums.remove(s, hash_u64(*k), k);
            }
            Op::Append(k, v) => self.lists.append(s, hash_u64(*k), k, v).unwrap(),
            Op::RemoveList(k) => {
                self.lists.remove(s, hash_u64(*k), k);
            }
        }
    }

    /// Fills `n` keys of every kind (a state of many pages).
    fn fill(&mut self, n: u64) {
        for k in 0..n {
            self.apply(&Op::Add(k, k));
            if k % 3 == 0 {
                self.apply(&Op::PutBytes(k % 120, vec![k as u8; (k % 150) as usize]));
                self.apply(&Op::Append(k % 50, vec![k as u8; 20]));
            }
        }
    }
}

fn memory_backup() -> BackupStore {
    BackupStore::open("unused", Durability::Memory).unwrap()
}

/// Pulls up to `n` chunks of `stream` into `out`; returns whether the
/// trailer came.
fn pull(stream: &mut CheckpointStream, n: usize, out: &mut Vec<Vec<u8>>) -> bool {
    for _ in 0..n {
        match stream.next_chunk() {
            Some(c) => out.push(c.to_vec()),
            None => return true,
        }
    }
    stream.is_finished()
}

/// Sends `chunks` to `backup`; returns the acknowledged checkpoint id.
fn send(backup: &mut BackupStore, instance: &str, chunks: &[Vec<u8>]) -> Option<u64> {
    let mut ack = None;
    for c in chunks {
        ack = backup.receive(instance, c).unwrap();
    }
    ack.map(|a| a.checkpoint)
}

fn restore(dir: &std::path::Path, backup: &BackupStore, instance: &str, id: u64) -> World {
    let (store, _, got) =
        StateStore::restore_id(StoreConfig::new(dir, BINS_LOG2), backup, instance, id).unwrap();
    assert_eq!(got, id);
    World::handles(store)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    /// Checkpoints begun between random writes and pulled in random pieces
    /// while the writes go on restore to exactly the state at their begin:
    /// a full image first, then increments (and full images again every
    /// `full_every`).
    #[test]
    fn streamed_while_writing_restores_the_begin_state(
        fill in 0..600u64,
        rounds in prop::collection::vec(
            (prop::collection::vec(op(), 0..60), prop::collection::vec((1..40usize, prop::collection::vec(op(), 0..8)), 1..30)),
            1..5,
        ),
        full_every in 0..3u32,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let mut w = World::new(&dir.path().join("live"));
        w.store.set_checkpoint_full_every(full_every);
        w.fill(fill);
        let mut backup = memory_backup();
        let mut dumps = Vec::new();
        for (id, (before, pieces)) in (1u64..).zip(&rounds) {
            for op in before {
                w.apply(op);
            }
            let at_begin = w.dump();
            let mut stream = w.store.begin_checkpoint(id, &id.to_le_bytes()).unwrap();
            prop_assert!(w.store.checkpoint_in_flight());
            prop_assert_eq!(stream.is_full(), id == 1 || full_every == 0 || (id - 1) % (u64::from(full_every) + 1) == 0);
            let mut chunks = Vec::new();
            let mut done = false;
            for (n, ops) in pieces {
                done = pull(&mut stream, *n, &mut chunks);
                for op in ops {
                    w.apply(op);
                }
                if done {
                    break;
                }
            }
            if !done {
                pull(&mut stream, usize::MAX, &mut chunks);
            }
            prop_assert_eq!(stream.pages_streamed(), stream.page_count());
            prop_assert_eq!(chunks.len() as u64, stream.page_count() + 2);
            prop_assert_eq!(send(&mut backup, "op", &chunks), Some(id));
            prop_assert!(!w.store.checkpoint_in_flight());
            dumps.push((id, at_begin));
        }
        for (id, at_begin) in &dumps {
            let r = restore(&dir.path().join(format!("r{id}")), &backup, "op", *id);
            prop_assert_eq!(&r.dump(), at_begin);
        }
        // The next checkpoint (synchronous) holds the writes made while the
        // last one streamed.
        let next = dumps.len() as u64 + 1;
        let ck = w.store.checkpoint(next, b"").unwrap();
        prop_assert_eq!(send(&mut backup, "op", ck.chunks()), Some(next));
        let r = restore(&dir.path().join("last"), &backup, "op", next);
        prop_assert_eq!(r.dump(), w.dump());
    }

    /// A stream dropped unfinished (at any point) loses no dirty page: the
    /// next checkpoint, on the same base (or a full image if the dropped
    /// one was), restores to the live state.
    #[test]
    fn dropped_stream_loses_no_dirty_page(
        fill in 1..3000u64,
        before in prop::collection::vec(op(), 0..80),
        pulled in 0..200usize,
        during in prop::collection::vec(hot_op(), 0..20),
        after in prop::collection::vec(hot_op(), 0..20),
        drop_full in any::<bool>(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let mut w = World::new(&dir.path().join("live"));
        w.fill(fill);
        let mut backup = memory_backup();
        let mut base = 0;
        if !drop_full {
            let ck = w.store.checkpoint(1, b"").unwrap();
            prop_assert_eq!(send(&mut backup, "op", ck.chunks()), Some(1));
            base = 1;
        }
        for op in &before {
            w.apply(op);
        }
        let dirty_before = w.store.dirty_page_count();
        let mut stream = w.store.begin_checkpoint(base + 1, b"dropped").unwrap();
        prop_assert_eq!(stream.is_full(), drop_full);
        let mut chunks = Vec::new();
        pull(&mut stream, pulled, &mut chunks);
        for op in &during {
            w.apply(op);
        }
        // The backup got what was pulled: part of it, or all of it.
        let finished = stream.is_finished();
        let acked = send(&mut backup, "op", &chunks);
        prop_assert_eq!(acked, finished.then_some(base + 1));
        drop(stream);
        prop_assert!(!w.store.checkpoint_in_flight());
        if !finished {
            // Forgotten: its pages are dirty again, the chain as before.
            prop_assert!(w.store.dirty_page_count() >= dirty_before);
            prop_assert_eq!(w.store.last_checkpoint(), base);
        }
        for op in &after {
            w.apply(op);
        }
        let next = base + 2;
        let ck = w.store.checkpoint(next, b"next").unwrap();
        if !finished {
            prop_assert_eq!(ck.is_full(), drop_full);
            prop_assert_eq!(ck.base(), base);
        }
        prop_assert_eq!(send(&mut backup, "op", ck.chunks()), Some(next));
        let r = restore(&dir.path().join("r"), &backup, "op", next);
        prop_assert_eq!(r.dump(), w.dump());
    }
}

/// A full image begun on a large state and pulled by another thread while
/// this one rewrites every key restores exactly the state at its begin; so
/// do the increments that follow.
#[test]
fn full_image_streamed_by_another_thread_restores_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = World::new(&dir.path().join("live"));
    w.fill(30_000);
    let mut backup = memory_backup();
    for id in 1..=4u64 {
        let at_begin = w.dump();
        let stream = w.store.begin_checkpoint(id, b"").unwrap();
        assert_eq!(stream.is_full(), id == 1);
        let streamer = std::thread::spawn(move || {
            let mut stream = stream;
            let mut chunks = Vec::new();
            while let Some(c) = stream.next_chunk() {
                chunks.push(c.to_vec());
            }
            chunks
        });
        // Rewrite keys (in place, and by appends that compact) until the
        // stream is done, then a little more.
        let mut k = 0u64;
        while !streamer.is_finished() || k < 2_000 {
            w.apply(&Op::Add(k % 30_000, id));
            if k.is_multiple_of(7) {
                w.apply(&Op::PutBytes(k % 120, vec![id as u8; (k % 90) as usize]));
            }
            k += 1;
        }
        let chunks = streamer.join().unwrap();
        assert_eq!(send(&mut backup, "op", &chunks), Some(id));
        let r = restore(&dir.path().join(format!("r{id}")), &backup, "op", id);
        assert!(r.dump() == at_begin, "checkpoint {id} does not restore its begin state");
    }
}

/// One checkpoint streams at a time; the error names both.
#[test]
fn one_checkpoint_in_flight() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = World::new(dir.path());
    w.fill(100);
    let mut stream = w.store.begin_checkpoint(1, b"").unwrap();
    match w.store.begin_checkpoint(2, b"") {
        Err(StateError::CheckpointInFlight { checkpoint: 1, requested: 2 }) => {}
        other => panic!("expected CheckpointInFlight, got {other:?}"),
    }
    assert!(matches!(w.store.checkpoint(2, b""), Err(StateError::CheckpointInFlight { .. })));
    // Every page read, the trailer not handed out: still in flight.
    let mut chunks = Vec::new();
    let n = stream.page_count() as usize + 1;
    pull(&mut stream, n, &mut chunks);
    assert!(w.store.checkpoint_in_flight());
    assert!(pull(&mut stream, 1, &mut chunks));
    assert!(!w.store.checkpoint_in_flight());
    assert_eq!(w.store.last_checkpoint(), 1);
    let inc = w.store.begin_checkpoint(2, b"").unwrap();
    assert!(!inc.is_full());
    assert_eq!(inc.base(), 1);
}

/// A stream outlives its store (it keeps the maps it reads).
#[test]
fn stream_outlives_its_store() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = World::new(&dir.path().join("live"));
    w.fill(5_000);
    let at_begin = w.dump();
    let mut stream = w.store.begin_checkpoint(1, b"").unwrap();
    let mut chunks = Vec::new();
    pull(&mut stream, 10, &mut chunks);
    w.apply(&Op::Add(1, 1));
    drop(w);
    pull(&mut stream, usize::MAX, &mut chunks);
    let mut backup = memory_backup();
    assert_eq!(send(&mut backup, "op", &chunks), Some(1));
    assert_eq!(restore(&dir.path().join("r"), &backup, "op", 1).dump(), at_begin);
}

/// The synchronous `checkpoint` and the stream give the same chunks.
#[test]
fn stream_chunks_match_the_synchronous_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = World::new(&dir.path().join("a"));
    let mut b = World::new(&dir.path().join("b"));
    a.fill(3_000);
    b.fill(3_000);
    for id in 1..=3u64 {
        let sync = a.store.checkpoint(id, b"m").unwrap();
        let mut stream = b.store.begin_checkpoint(id, b"m").unwrap();
        let mut chunks = Vec::new();
        pull(&mut stream, usize::MAX, &mut chunks);
        assert_eq!(sync.chunks(), &chunks[..]);
        assert_eq!(sync.bytes(), stream.bytes_streamed());
        for k in 0..200 * id {
            a.apply(&Op::Add(k * 13, id));
            b.apply(&Op::Add(k * 13, id));
        }
    }
}
