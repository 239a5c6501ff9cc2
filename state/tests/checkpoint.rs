//! Checkpoint, backup, restore, split and merge: property tests.

mod common;

use common::{Dump, World};
use proptest::prelude::*;
use spate_state::checkpoint::decode_chunk;
use spate_state::{
    hash_u64, BackupStore, BinRange, Durability, StateError, StateStore, StoreConfig, ValueState,
};

const BINS_LOG2: u8 = 4;

#[derive(Clone, Debug)]
enum Op {
    Put(u64, u64),
    PutBytes(u64, Vec<u8>),
    Remove(u64),
    Append(u64, Vec<u8>),
    RemoveList(u64),
    Checkpoint,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..300u64, any::<u64>()).prop_map(|(k, v)| Op::Put(k, v)),
        3 => (0..100u64, prop::collection::vec(any::<u8>(), 0..300)).prop_map(|(k, v)| Op::PutBytes(k, v)),
        1 => (0..300u64).prop_map(Op::Remove),
        3 => (0..60u64, prop::collection::vec(any::<u8>(), 0..120)).prop_map(|(k, v)| Op::Append(k, v)),
        1 => (0..60u64).prop_map(Op::RemoveList),
        1 => Just(Op::Checkpoint),
    ]
}

impl World {
    fn new(dir: &std::path::Path, bins: BinRange) -> Self {
        Self::create(dir, BINS_LOG2, bins)
    }

    /// Applies `op` if its key's bin is owned; returns whether it was a
    /// checkpoint request.
    fn apply(&mut self, op: &Op) -> bool {
        let bins = self.store.bins();
        let owned = |k: u64| bins.contains(spate_state::bin_of(hash_u64(k), BINS_LOG2));
        let s = &mut self.store;
        match op {
            Op::Put(k, v) if owned(*k) => self.sums.put(s, hash_u64(*k), k, v).unwrap(),
            Op::PutBytes(k, v) if owned(*k) => self.blobs.put(s, hash_u64(*k), k, v).unwrap(),
            Op::Remove(k) if owned(*k) => {
                self.sums.remove(s, hash_u64(*k), k);
            }
            Op::Append(k, v) if owned(*k) => self.lists.append(s, hash_u64(*k), k, v).unwrap(),
            Op::RemoveList(k) if owned(*k) => {
                self.lists.remove(s, hash_u64(*k), k);
            }
            Op::Checkpoint => return true,
            _ => {}
        }
        false
    }
}

fn send(backup: &mut BackupStore, instance: &str, ckpt: &spate_state::Checkpoint) -> u64 {
    let mut ack = None;
    for c in ckpt.chunks() {
        ack = backup.receive(instance, c).unwrap();
    }
    let ack = ack.expect("trailer acknowledged");
    assert_eq!(ack.checkpoint, ckpt.id());
    ack.checkpoint
}

fn restored(
    dir: &std::path::Path,
    backup: &BackupStore,
    instance: &str,
) -> Result<(World, Vec<u8>, u64), StateError> {
    let config = StoreConfig::new(dir, BINS_LOG2);
    let (store, meta, id) = StateStore::restore(config, backup, instance)?;
    Ok((World::handles(store), meta, id))
}

/// Runs `ops`, checkpointing into `backup` at each `Checkpoint` and at the
/// end; returns the world and the dump at each checkpoint id.
fn run(
    dir: &std::path::Path,
    ops: &[Op],
    full_every: u32,
    backup: &mut BackupStore,
) -> (World, Vec<(u64, Dump)>) {
    let mut w = World::new(&dir.join("live"), BinRange::all(BINS_LOG2));
    w.store.set_checkpoint_full_every(full_every);
    let mut dumps = Vec::new();
    let mut id = 0;
    let mut take = |w: &mut World, dumps: &mut Vec<(u64, Dump)>| {
        id += 1;
        let ck = w.store.checkpoint(id, &id.to_le_bytes()).unwrap();
        assert_eq!(w.store.dirty_page_count(), 0);
        send(backup, "op-1", &ck);
        dumps.push((id, w.dump()));
    };
    for op in ops {
        if w.apply(op) {
            take(&mut w, &mut dumps);
        }
    }
    take(&mut w, &mut dumps);
    (w, dumps)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn checkpoint_restore_is_identical(ops in prop::collection::vec(op(), 1..400), full_every in 0..4u32) {
        let dir = tempfile::tempdir().unwrap();
        let mut backup = BackupStore::open(dir.path().join("backup"), Durability::Memory).unwrap();
        let (w, dumps) = run(dir.path(), &ops, full_every, &mut backup);
        let (r, meta, id) = restored(&dir.path().join("restored"), &backup, "op-1").unwrap();
        let (last_id, last_dump) = dumps.last().unwrap();
        prop_assert_eq!(id, *last_id);
        prop_assert_eq!(meta, last_id.to_le_bytes().to_vec());
        prop_assert_eq!(&r.dump(), last_dump);
        prop_assert_eq!(&w.dump(), last_dump);
        // Every earlier checkpoint restores to its own state too.
        for (cid, d) in &dumps {
            let (s, _, got) = StateStore::restore_id(StoreConfig::new(dir.path().join(format!("r{cid}")), BINS_LOG2), &backup, "op-1", *cid).unwrap();
            prop_assert_eq!(got, *cid);
            let rw = World::handles(s);
            prop_assert_eq!(&rw.dump(), d);
        }
        // Compaction keeps the latest state.
        backup.compact("op-1").unwrap();
        let (c, _, cid) = restored(&dir.path().join("compacted"), &backup, "op-1").unwrap();
        prop_assert_eq!(cid, *last_id);
        prop_assert_eq!(&c.dump(), last_dump);
    }

    #[test]
    fn restored_store_keeps_working(ops in prop::collection::vec(op(), 1..200), more in prop::collection::vec(op(), 1..200)) {
        let dir = tempfile::tempdir().unwrap();
        let mut backup = BackupStore::open(dir.path().join("backup"), Durability::Memory).unwrap();
        let (mut w, dumps) = run(dir.path(), &ops, 2, &mut backup);
        let (mut r, _, id) = restored(&dir.path().join("restored"), &backup, "op-1").unwrap();
        for op in &more {
            w.apply(op);
            r.apply(op);
        }
        prop_assert_eq!(r.dump(), w.dump());
        // The restored store's next checkpoint is a full image on its chain.
        let ck = r.store.checkpoint(id + 1, b"").unwrap();
        prop_assert!(ck.is_full());
        send(&mut backup, "op-1", &ck);
        let (r2, _, _) = restored(&dir.path().join("restored2"), &backup, "op-1").unwrap();
        prop_assert_eq!(r2.dump(), w.dump());
        prop_assert!(!dumps.is_empty());
    }

    #[test]
    fn corruption_is_detected_never_loaded(
        ops in prop::collection::vec(op(), 1..300),
        victim in any::<prop::sample::Index>(),
        at in any::<prop::sample::Index>(),
        flip in 1..=255u8,
        truncate in any::<bool>(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let mut backup = BackupStore::open(dir.path().join("backup"), Durability::Memory).unwrap();
        let (_, dumps) = run(dir.path(), &ops, 2, &mut backup);
        let ids = backup.complete_checkpoints("op-1");
        let victim = ids[victim.index(ids.len())];
        let bytes = backup.stored_bytes_mut("op-1", victim).unwrap();
        let at = at.index(bytes.len());
        if truncate {
            bytes.truncate(at);
        } else {
            bytes[at] ^= flip;
        }
        match restored(&dir.path().join("restored"), &backup, "op-1") {
            Ok((r, _, id)) => {
                // Whatever loads is exactly the state of a checkpoint whose
                // chain does not hold the damaged one.
                let chain = backup.chain("op-1", id).unwrap();
                prop_assert!(!chain.contains(&victim));
                let d = &dumps.iter().find(|(i, _)| *i == id).unwrap().1;
                prop_assert_eq!(&r.dump(), d);
            }
            Err(StateError::CorruptCheckpoint { checkpoint, .. }) => {
                prop_assert_eq!(checkpoint, victim);
            }
            Err(e) => prop_assert!(false, "unexpected error {e}"),
        }
        // Restoring the damaged checkpoint itself always fails.
        let r = StateStore::restore_id(StoreConfig::new(dir.path().join("exact"), BINS_LOG2), &backup, "op-1", victim);
        let damaged = matches!(r, Err(StateError::CorruptCheckpoint { checkpoint, .. }) if checkpoint == victim);
        prop_assert!(damaged);
    }

    #[test]
    fn corrupt_chunks_are_refused_on_receipt(ops in prop::collection::vec(op(), 1..100), which in any::<prop::sample::Index>(), at in any::<prop::sample::Index>(), flip in 1..=255u8) {
        let dir = tempfile::tempdir().unwrap();
        let mut w = World::new(&dir.path().join("live"), BinRange::all(BINS_LOG2));
        for op in &ops {
            w.apply(op);
        }
        let ck = w.store.checkpoint(1, b"m").unwrap();
        let mut chunks = ck.into_chunks();
        let which = which.index(chunks.len());
        let at = at.index(chunks[which].len());
        chunks[which][at] ^= flip;
        let mut backup = BackupStore::open(dir.path().join("backup"), Durability::PageCache).unwrap();
        let mut failed = false;
        for c in &chunks {
            match backup.receive("x", c) {
                Ok(ack) => prop_assert!(ack.is_none() || failed),
                Err(StateError::CorruptCheckpoint { .. }) => failed = true,
                Err(e) => prop_assert!(false, "unexpected error {e}"),
            }
        }
        prop_assert!(failed);
        prop_assert!(backup.complete_checkpoints("x").is_empty());
        let reopened = BackupStore::open(dir.path().join("backup"), Durability::PageCache).unwrap();
        prop_assert!(reopened.complete_checkpoints("x").is_empty());
    }
}

#[test]
fn file_backup_survives_reopen_and_names_the_page() {
    let dir = tempfile::tempdir().unwrap();
    let mut backup = BackupStore::open(dir.path().join("backup"), Durability::Fsync).unwrap();
    let ops: Vec<Op> = (0..2000u64)
        .map(|i| match i % 5 {
            0 => Op::Append(i % 40, vec![i as u8; (i % 50) as usize]),
            1 => Op::PutBytes(i % 70, vec![1; (i % 200) as usize]),
            2 if i % 400 == 2 => Op::Checkpoint,
            _ => Op::Put(i % 250, i),
        })
        .collect();
    let (_, dumps) = run(dir.path(), &ops, 16, &mut backup);
    drop(backup);
    // A stray partial checkpoint (a crash while receiving) is dropped.
    let inst_dir = std::fs::read_dir(dir.path().join("backup")).unwrap().next().unwrap().unwrap().path();
    std::fs::write(inst_dir.join("00000000000000000099.part"), b"junk").unwrap();
    let backup = BackupStore::open(dir.path().join("backup"), Durability::PageCache).unwrap();
    assert_eq!(backup.complete_checkpoints("op-1"), dumps.iter().map(|d| d.0).collect::<Vec<_>>());
    assert!(!inst_dir.join("00000000000000000099.part").exists());
    let (r, _, id) = restored(&dir.path().join("r"), &backup, "op-1").unwrap();
    assert_eq!(id, dumps.last().unwrap().0);
    assert_eq!(r.dump(), dumps.last().unwrap().1);

    // Damage one page of the latest checkpoint: the error names it, and
    // restore falls back to the previous one.
    let path = backup.checkpoint_path("op-1", id).unwrap();
    let mut bytes = std::fs::read(&path).unwrap();
    let (h, n) = decode_chunk(&bytes).unwrap();
    assert_eq!(h.kind, spate_state::checkpoint::ChunkKind::Header);
    let page_at = n + 9;
    let page = u64::from_le_bytes(bytes[page_at..page_at + 8].try_into().unwrap());
    bytes[page_at + 12 + 100] ^= 0x40;
    std::fs::write(&path, &bytes).unwrap();
    match StateStore::restore_id(StoreConfig::new(dir.path().join("x"), BINS_LOG2), &backup, "op-1", id) {
        Err(StateError::CorruptCheckpoint { checkpoint, page: Some(p), .. }) => {
            assert_eq!((checkpoint, p), (id, page));
        }
        other => panic!("expected a corrupt page error, got {:?}", other.map(|r| r.2)),
    }
    let (r, _, prev) = restored(&dir.path().join("r2"), &backup, "op-1").unwrap();
    assert_eq!(prev, id - 1);
    assert_eq!(r.dump(), dumps[dumps.len() - 2].1);
}

#[test]
fn incremental_checkpoint_holds_only_dirty_pages() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = World::new(dir.path(), BinRange::all(BINS_LOG2));
    for k in 0..20_000u64 {
        w.sums.put(&mut w.store, hash_u64(k), &k, &k).unwrap();
    }
    let full = w.store.checkpoint(1, b"").unwrap();
    assert!(full.is_full());
    w.sums.put(&mut w.store, hash_u64(5), &5, &6).unwrap();
    let inc = w.store.checkpoint(2, b"").unwrap();
    assert!(!inc.is_full());
    assert_eq!(inc.base(), 1);
    assert_eq!(inc.page_count(), 1);
    assert!(inc.bytes() < full.bytes() / 10);
    assert!(w.store.checkpoint(2, b"").is_err());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn split_then_merge_is_identical(
        ops in prop::collection::vec(op(), 1..400),
        more in prop::collection::vec(op(), 0..100),
        cut in 0..=(1u32 << BINS_LOG2),
        take_start in any::<bool>(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let all = BinRange::all(BINS_LOG2);
        let mut w = World::new(&dir.path().join("a"), all);
        let mut reference = World::new(&dir.path().join("ref"), all);
        for op in &ops {
            w.apply(op);
            reference.apply(op);
        }
        let before = w.dump();
        let moved = if take_start { BinRange::new(0, cut) } else { BinRange::new(cut, all.end) };
        let split = w.store.split_off(moved).unwrap();
        let mut part = World::handles(split);
        prop_assert_eq!(part.store.bins(), moved);
        let rest = if take_start { BinRange::new(cut, all.end) } else { BinRange::new(0, cut) };
        prop_assert!(w.store.bins() == rest || (rest.is_empty() && w.store.bins().is_empty()));
        // Each side holds exactly the keys of its bins.
        let (a, b) = (w.dump(), part.dump());
        let in_bins = |d: &Dump, r: BinRange| d.iter().all(|e| r.contains(spate_state::bin_of(e.1, BINS_LOG2)));
        prop_assert!(in_bins(&a, rest) && in_bins(&b, moved));
        let mut union = a.clone();
        union.extend(b.iter().cloned());
        union.sort();
        prop_assert_eq!(&union, &before);
        // Both sides keep working on their own keys.
        for op in &more {
            w.apply(op);
            part.apply(op);
            reference.apply(op);
        }
        // A split-off store checkpoints and restores on its own.
        let ck = part.store.checkpoint(1, b"").unwrap();
        prop_assert!(ck.is_full());
        let mut backup = BackupStore::open(dir.path().join("backup"), Durability::Memory).unwrap();
        send(&mut backup, "part", &ck);
        let (rp, _, _) = restored(&dir.path().join("rp"), &backup, "part").unwrap();
        prop_assert_eq!(rp.dump(), part.dump());
        // Merging back gives the unsplit state.
        w.store.merge(part.store).unwrap();
        prop_assert_eq!(w.store.bins(), all);
        prop_assert_eq!(w.dump(), reference.dump());
        for op in &more {
            w.apply(op);
            reference.apply(op);
        }
        prop_assert_eq!(w.dump(), reference.dump());
    }
}

#[test]
fn merge_refuses_overlapping_or_distant_bins() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = World::new(&dir.path().join("a"), BinRange::new(0, 4));
    let b = World::new(&dir.path().join("b"), BinRange::new(2, 6));
    assert!(a.store.merge(b.store).is_err());
    let c = World::new(&dir.path().join("c"), BinRange::new(8, 10));
    assert!(a.store.merge(c.store).is_err());
    assert!(a.store.split_off(BinRange::new(1, 2)).is_err());
    assert_eq!(a.store.bins(), BinRange::new(0, 4));
}

#[test]
fn restored_typed_tables_are_validated_and_typed() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = World::new(&dir.path().join("a"), BinRange::all(BINS_LOG2));
    for k in 0..50u64 {
        w.blobs.put(&mut w.store, hash_u64(k), &k, &vec![k as u8; 40]).unwrap();
    }
    let mut backup = BackupStore::open(dir.path().join("b"), Durability::Memory).unwrap();
    send(&mut backup, "i", &w.store.checkpoint(1, b"").unwrap());
    let config = StoreConfig::new(dir.path().join("r"), BINS_LOG2);
    let (mut s, _, _) = StateStore::restore(config, &backup, "i").unwrap();
    // A handle of another type, or the raw API, cannot claim the table.
    assert!(ValueState::<u64, u64>::register(&mut s, "blobs").is_err());
    let raw = s.table("blobs");
    assert!(raw.is_err());
    let mut blobs = ValueState::<u64, Vec<u8>>::register(&mut s, "blobs").unwrap();
    assert_eq!(blobs.get(&s, hash_u64(7), &7), Some(vec![7u8; 40]));
}

/// Deterministic state for the kill test.
fn kill_world(dir: &std::path::Path) -> World {
    let mut w = World::new(dir, BinRange::all(BINS_LOG2));
    for k in 0..3000u64 {
        w.sums.put(&mut w.store, hash_u64(k), &k, &(k * 3)).unwrap();
        if k % 3 == 0 {
            w.lists.append(&mut w.store, hash_u64(k % 97), &(k % 97), &vec![k as u8; 10]).unwrap();
        }
    }
    w
}

/// A process killed (`SIGKILL`) in the middle of writing a checkpoint into
/// the backup store leaves the previous complete one for restore.
#[cfg(unix)]
#[test]
fn sigkill_while_writing_a_checkpoint_keeps_the_last_complete() {
    use std::io::BufRead;
    const CHILD: &str = "SPATE_KILL_TEST_DIR";
    if let Some(dir) = std::env::var_os(CHILD) {
        // The child: checkpoint 1 complete, then checkpoint 2 written
        // slowly until it is killed.
        let dir = std::path::PathBuf::from(dir);
        let mut w = kill_world(&dir.join("live"));
        let mut backup = BackupStore::open(dir.join("backup"), Durability::Fsync).unwrap();
        send(&mut backup, "i", &w.store.checkpoint(1, b"one").unwrap());
        for k in 0..3000u64 {
            w.sums.put(&mut w.store, hash_u64(k), &k, &0).unwrap();
        }
        let ck = w.store.checkpoint(2, b"two").unwrap();
        for (i, c) in ck.chunks().iter().enumerate() {
            backup.receive("i", c).unwrap();
            if i == 1 {
                println!("writing");
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        println!("finished");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "sigkill_while_writing_a_checkpoint_keeps_the_last_complete",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD, dir.path())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = std::io::BufReader::new(stdout).lines();
    loop {
        let line = lines.next().expect("child output").unwrap();
        assert!(!line.contains("finished"), "child finished before the kill");
        if line.contains("writing") {
            break;
        }
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let backup = BackupStore::open(dir.path().join("backup"), Durability::PageCache).unwrap();
    assert_eq!(backup.complete_checkpoints("i"), vec![1]);
    let (r, meta, id) = restored(&dir.path().join("r"), &backup, "i").unwrap();
    assert_eq!((id, meta), (1, b"one".to_vec()));
    let expected = kill_world(&dir.path().join("expected"));
    assert_eq!(r.dump(), expected.dump());
}
