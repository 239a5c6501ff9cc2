//! Both backings (`Backing::File` and `Backing::Memory`) do the same:
//! checkpoint and restore (synchronous and streamed while writing, a stream
//! outliving its store), split and merge, growth past a chunk.

mod common;

use common::World;
use spate_state::store::SEGMENT_FILE_NAME;
use spate_state::{
    hash_u64, Backing, BackupStore, BinRange, CheckpointStream, Durability, StateStore, StoreConfig,
};

const BINS_LOG2: u8 = 3;
const BACKINGS: [Backing; 2] = [Backing::File, Backing::Memory];

fn write(w: &mut World, k: u64, v: u64) {
    let s = &mut w.store;
    w.sums.update(s, hash_u64(k), &k, |old| old.unwrap_or(0).wrapping_add(v)).unwrap();
    if k.is_multiple_of(3) {
        w.blobs.put(s, hash_u64(k % 120), &(k % 120), &vec![v as u8; (k % 150) as usize]).unwrap();
        w.lists.append(s, hash_u64(k % 50), &(k % 50), &vec![k as u8; 20]).unwrap();
    }
}

fn pull_all(stream: &mut CheckpointStream) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while let Some(c) = stream.next_chunk() {
        out.push(c.to_vec());
    }
    out
}

fn send(backup: &mut BackupStore, instance: &str, chunks: &[Vec<u8>]) -> u64 {
    let mut ack = None;
    for c in chunks {
        ack = backup.receive(instance, c).unwrap();
    }
    ack.unwrap().checkpoint
}

fn restore(dir: &std::path::Path, backing: Backing, backup: &BackupStore, instance: &str, id: u64) -> World {
    let config = StoreConfig::new(dir, BINS_LOG2).with_backing(backing);
    let (store, _, got) = StateStore::restore_id(config, backup, instance, id).unwrap();
    assert_eq!(got, id);
    assert_eq!(store.config().backing, backing);
    World::handles(store)
}

/// Only the file backing leaves a segment file; the memory backing removes
/// a stale one.
#[test]
fn memory_backing_has_no_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s");
    let mut w = World::create_backed(&path, BINS_LOG2, BinRange::all(BINS_LOG2), Backing::File);
    write(&mut w, 1, 1);
    assert!(path.join(SEGMENT_FILE_NAME).exists());
    drop(w);
    let mut w = World::create_backed(&path, BINS_LOG2, BinRange::all(BINS_LOG2), Backing::Memory);
    write(&mut w, 1, 1);
    assert!(!w.store.segment_file().exists());
    assert_eq!(w.store.segment_file(), path.join(SEGMENT_FILE_NAME));
}

/// Synchronous full and incremental checkpoints restore (into either
/// backing) exactly, and the restored store keeps working.
#[test]
fn checkpoint_restore_round_trip() {
    for backing in BACKINGS {
        let dir = tempfile::tempdir().unwrap();
        let mut w =
            World::create_backed(&dir.path().join("live"), BINS_LOG2, BinRange::all(BINS_LOG2), backing);
        let mut backup = BackupStore::open(dir.path().join("b"), Durability::Memory).unwrap();
        for id in 1..=3u64 {
            for k in 0..4_000 * id {
                write(&mut w, k * 7, id);
            }
            let ck = w.store.checkpoint(id, b"").unwrap();
            assert_eq!(ck.is_full(), id == 1);
            assert_eq!(w.store.dirty_page_count(), 0);
            assert_eq!(send(&mut backup, "op", ck.chunks()), id);
            for into in BACKINGS {
                let r = restore(&dir.path().join(format!("r{id}-{into:?}")), into, &backup, "op", id);
                assert!(r.dump() == w.dump(), "{backing:?} -> {into:?}: checkpoint {id} differs");
            }
        }
        let mut r = restore(&dir.path().join("again"), backing, &backup, "op", 3);
        for k in 0..2_000 {
            write(&mut r, k, 9);
            write(&mut w, k, 9);
        }
        assert!(r.dump() == w.dump(), "{backing:?}: the restored store diverges");
    }
}

/// A stream pulled on another thread while the store is written gives the
/// state at its begin; a stream outlives its store.
#[test]
fn async_checkpoint_round_trip() {
    for backing in BACKINGS {
        let dir = tempfile::tempdir().unwrap();
        let mut w =
            World::create_backed(&dir.path().join("live"), BINS_LOG2, BinRange::all(BINS_LOG2), backing);
        for k in 0..20_000 {
            write(&mut w, k, 1);
        }
        let mut backup = BackupStore::open("unused", Durability::Memory).unwrap();
        for id in 1..=3u64 {
            let at_begin = w.dump();
            let stream = w.store.begin_checkpoint(id, b"").unwrap();
            let streamer = std::thread::spawn(move || {
                let mut stream = stream;
                pull_all(&mut stream)
            });
            let mut k = 0u64;
            while !streamer.is_finished() || k < 2_000 {
                write(&mut w, k % 20_000, id);
                k += 1;
            }
            let chunks = streamer.join().unwrap();
            assert_eq!(send(&mut backup, "op", &chunks), id);
            let r = restore(&dir.path().join(format!("r{id}")), backing, &backup, "op", id);
            assert!(r.dump() == at_begin, "{backing:?}: checkpoint {id} differs from its begin state");
        }
        // A stream outliving its store.
        let at_begin = w.dump();
        let mut stream = w.store.begin_checkpoint(4, b"").unwrap();
        let mut chunks: Vec<Vec<u8>> =
            (0..5).filter_map(|_| stream.next_chunk().map(|c| c.to_vec())).collect();
        write(&mut w, 1, 1);
        drop(w);
        chunks.extend(pull_all(&mut stream));
        assert_eq!(send(&mut backup, "op", &chunks), 4);
        assert!(restore(&dir.path().join("r4"), backing, &backup, "op", 4).dump() == at_begin);
    }
}

/// Split, merge and growth past a chunk, with both backings.
#[test]
fn split_merge_and_growth() {
    for backing in BACKINGS {
        let dir = tempfile::tempdir().unwrap();
        let all = BinRange::all(BINS_LOG2);
        let mut w = World::create_backed(&dir.path().join("a"), BINS_LOG2, all, backing);
        // About 40 MiB: more than one chunk of the segment space.
        let blob = vec![7u8; 4000];
        for k in 0..10_000u64 {
            w.blobs.put(&mut w.store, hash_u64(k + 1_000_000), &(k + 1_000_000), &blob).unwrap();
            write(&mut w, k, 3);
        }
        assert!(w.store.segment_bytes_in_use() > spate_state::store::CHUNK_BYTES as u64);
        let before = w.dump();
        let split = w.store.split_off(BinRange::new(0, 3)).unwrap();
        assert_eq!(split.config().backing, backing);
        let part = World::handles(split);
        let mut union = w.dump();
        union.extend(part.dump());
        union.sort();
        assert!(union == before, "{backing:?}: split lost or changed records");
        w.store.merge(part.store).unwrap();
        assert!(w.dump() == before, "{backing:?}: merge differs");
        let ck = w.store.checkpoint(1, b"").unwrap();
        let mut backup = BackupStore::open("unused", Durability::Memory).unwrap();
        assert_eq!(send(&mut backup, "op", ck.chunks()), 1);
        assert!(restore(&dir.path().join("r"), backing, &backup, "op", 1).dump() == before);
    }
}
