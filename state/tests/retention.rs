//! Retention in the backup store: `retain_from(id)` removes what restoring
//! `id` or a later checkpoint never reads, and nothing else.

mod common;

use common::World;
use spate_state::{hash_u64, BackupStore, BinRange, Durability, StateStore, StoreConfig};

const BINS_LOG2: u8 = 3;

#[test]
fn retain_from_keeps_the_chain_of_id_and_everything_after() {
    let dir = tempfile::tempdir().unwrap();
    let mut backup = BackupStore::open(dir.path().join("backup"), Durability::PageCache).unwrap();
    let mut w = World::create(&dir.path().join("live"), BINS_LOG2, BinRange::all(BINS_LOG2));
    // A full image every 4 checkpoints: chains 1-5, 6-10, 11-15, 16-20.
    w.store.set_checkpoint_full_every(4);
    let mut dumps = Vec::new();
    for id in 1..=20u64 {
        for k in id * 5..id * 5 + 10 {
            w.sums.put(&mut w.store, hash_u64(k), &k, &(k + id)).unwrap();
        }
        for chunk in w.store.checkpoint(id, b"").unwrap().chunks() {
            backup.receive("op", chunk).unwrap();
        }
        dumps.push(w.dump());
    }
    assert_eq!(backup.chain("op", 13).unwrap(), [11, 12, 13]);
    let removed = backup.retain_from("op", 13).unwrap();
    // 1..=10 go; 11 and 12 (13's chain), 13 and everything after stay.
    assert_eq!(removed, 10);
    assert_eq!(backup.complete_checkpoints("op"), (11..=20).collect::<Vec<_>>());
    let files = std::fs::read_dir(dir.path().join("backup"))
        .unwrap()
        .flatten()
        .flat_map(|d| std::fs::read_dir(d.path()).unwrap().flatten())
        .filter(|f| f.path().extension().is_some_and(|e| e == "ckpt"))
        .count();
    assert_eq!(files, 10, "the removed checkpoints' files are gone");
    for id in [13u64, 20] {
        let (s, _, got) = StateStore::restore_id(
            StoreConfig::new(dir.path().join(format!("r{id}")), BINS_LOG2),
            &backup,
            "op",
            id,
        )
        .unwrap();
        assert_eq!(got, id);
        assert!(World::handles(s).dump() == dumps[id as usize - 1], "checkpoint {id} restores its state");
    }
    // A store reopened from the directory sees the same.
    let reopened = BackupStore::open(dir.path().join("backup"), Durability::PageCache).unwrap();
    assert_eq!(reopened.complete_checkpoints("op"), (11..=20).collect::<Vec<_>>());
    // An id without a complete chain is an error, and removes nothing.
    assert!(backup.retain_from("op", 99).is_err());
    assert_eq!(backup.complete_checkpoints("op").len(), 10);
}
