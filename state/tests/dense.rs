//! Dense tables (a `ValueState` of fixed-size keys and values) under many
//! keys per bin: parts that grow, split into several parts per bin, move
//! when their bin compacts, and go through checkpoints (streamed while
//! written), restores, splits and merges — checked against a `HashMap`.

use std::collections::HashMap;

use proptest::prelude::*;
use spate_state::{
    bin_of, hash_u64, BackupStore, BinRange, CheckpointStream, Durability, StateStore, StoreConfig,
    ValueState,
};

/// Two bins, so each holds many keys.
const BINS_LOG2: u8 = 1;
/// Small segments: a part of 128 slots is the largest that fits, so a bin of
/// more than 112 keys has several parts.
const SEGMENT_BYTES: usize = 4096;

#[derive(Clone, Debug)]
enum Op {
    Add(u64, u64),
    Remove(u64),
    /// Removes every key `k` with `k % m == r`.
    Drain(u64, u64),
    /// Adds to each key through one `update_burst` (a key may come more
    /// than once).
    Burst(Vec<(u64, u64)>),
    /// Begins a checkpoint, applies the next ops while it streams.
    Checkpoint,
}

fn op(keys: u64) -> impl Strategy<Value = Op> {
    prop_oneof![
        12 => (0..keys, any::<u64>()).prop_map(|(k, v)| Op::Add(k, v)),
        2 => (0..keys).prop_map(Op::Remove),
        1 => (2..9u64, 0..9u64).prop_map(|(m, r)| Op::Drain(m, r % m)),
        2 => prop::collection::vec((0..keys, any::<u64>()), 1..64).prop_map(Op::Burst),
        1 => Just(Op::Checkpoint),
    ]
}

fn store(dir: &std::path::Path, bins: BinRange) -> StateStore {
    let config = StoreConfig::new(dir, BINS_LOG2).with_segment_bytes(SEGMENT_BYTES);
    StateStore::create(config, bins).unwrap()
}

fn contents(s: &StateStore, h: &ValueState<u64, u64>) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    h.for_each(s, |hash, k, v| {
        assert_eq!(hash, hash_u64(k), "an entry keeps its hash");
        out.push((k, v));
    });
    out.sort_unstable();
    out
}

fn sorted(m: &HashMap<u64, u64>) -> Vec<(u64, u64)> {
    let mut v: Vec<_> = m.iter().map(|(&k, &v)| (k, v)).collect();
    v.sort_unstable();
    v
}

fn apply(s: &mut StateStore, h: &mut ValueState<u64, u64>, model: &mut HashMap<u64, u64>, op: &Op) {
    match *op {
        Op::Add(k, v) => {
            let new = h.update(s, hash_u64(k), &k, |old| old.unwrap_or(0).wrapping_add(v)).unwrap();
            let m = model.entry(k).or_insert(0);
            *m = m.wrapping_add(v);
            assert_eq!(new, *m);
        }
        Op::Remove(k) => assert_eq!(h.remove(s, hash_u64(k), &k), model.remove(&k).is_some()),
        Op::Burst(ref adds) => {
            let keys: Vec<u64> = adds.iter().map(|&(k, _)| k).collect();
            let hashes: Vec<u64> = keys.iter().map(|&k| hash_u64(k)).collect();
            let mut got = Vec::new();
            h.update_burst(
                s,
                &hashes,
                &keys,
                |i, old| old.unwrap_or(0).wrapping_add(adds[i].1),
                |i, v| got.push((i, v)),
            )
            .unwrap();
            for (i, &(k, v)) in adds.iter().enumerate() {
                let m = model.entry(k).or_insert(0);
                *m = m.wrapping_add(v);
                assert_eq!(got.get(i), Some(&(i, *m)));
            }
        }
        Op::Drain(m, r) => {
            let mut out = Vec::new();
            let n = h.drain_filter(s, |k, _| k % m == r, |_, k, v| out.push((k, v))).unwrap();
            let before = model.len();
            model.retain(|k, _| k % m != r);
            assert_eq!(n, before - model.len());
            assert_eq!(out.len(), n);
        }
        Op::Checkpoint => {}
    }
}

fn pull_all(stream: &mut CheckpointStream) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while let Some(c) = stream.next_chunk() {
        out.push(c.to_vec());
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]

    #[test]
    fn dense_tables_match_a_map_through_growth_checkpoints_restore_split_and_merge(
        ops in prop::collection::vec(op(1500), 1..3000),
        cut_at_start in any::<bool>(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let all = BinRange::all(BINS_LOG2);
        let mut s = store(&dir.path().join("live"), all);
        let mut h = ValueState::<u64, u64>::register(&mut s, "sums").unwrap();
        let mut model = HashMap::new();
        let mut backup = BackupStore::open(dir.path().join("backup"), Durability::Memory).unwrap();
        // (checkpoint id, contents at its begin)
        let mut taken: Vec<(u64, Vec<(u64, u64)>)> = Vec::new();
        let mut streaming: Option<(CheckpointStream, u64, Vec<(u64, u64)>)> = None;
        let mut id = 0;
        for op in &ops {
            if let Op::Checkpoint = op {
                if let Some((mut st, cid, at)) = streaming.take() {
                    for c in pull_all(&mut st) {
                        backup.receive("d", &c).unwrap();
                    }
                    taken.push((cid, at));
                }
                id += 1;
                let at = sorted(&model);
                streaming = Some((s.begin_checkpoint(id, b"").unwrap(), id, at));
                continue;
            }
            apply(&mut s, &mut h, &mut model, op);
            // The stream reads a few chunks while the store is written.
            if let Some((st, _, _)) = streaming.as_mut() {
                for _ in 0..2 {
                    if let Some(c) = st.next_chunk() {
                        backup.receive("d", c).unwrap();
                    }
                }
            }
        }
        if let Some((mut st, cid, at)) = streaming.take() {
            for c in pull_all(&mut st) {
                backup.receive("d", &c).unwrap();
            }
            taken.push((cid, at));
        }
        prop_assert_eq!(contents(&s, &h), sorted(&model));
        prop_assert_eq!(h.len(&s), model.len());
        // Every checkpoint restores exactly the state at its begin.
        for (cid, at) in &taken {
            let (mut r, _, _) =
                StateStore::restore_id(StoreConfig::new(dir.path().join(format!("r{cid}")), BINS_LOG2), &backup, "d", *cid)
                    .unwrap();
            let rh = ValueState::<u64, u64>::register(&mut r, "sums").unwrap();
            prop_assert_eq!(&contents(&r, &rh), at);
        }
        // Split off one bin and merge it back; both sides keep working.
        let moved = if cut_at_start { BinRange::new(0, 1) } else { BinRange::new(1, 2) };
        let mut part = s.split_off(moved).unwrap();
        let mut ph = ValueState::<u64, u64>::register(&mut part, "sums").unwrap();
        let (in_part, in_rest): (Vec<_>, Vec<_>) =
            sorted(&model).into_iter().partition(|(k, _)| moved.contains(bin_of(hash_u64(*k), BINS_LOG2)));
        prop_assert_eq!(contents(&part, &ph), in_part);
        prop_assert_eq!(contents(&s, &h), in_rest);
        for k in 0..1500u64 {
            let (st, hh) = if moved.contains(bin_of(hash_u64(k), BINS_LOG2)) { (&mut part, &mut ph) } else { (&mut s, &mut h) };
            apply(st, hh, &mut model, &Op::Add(k, k));
        }
        s.merge(part).unwrap();
        prop_assert_eq!(contents(&s, &h), sorted(&model));
        for k in (0..1500u64).step_by(3) {
            apply(&mut s, &mut h, &mut model, &Op::Remove(k));
        }
        prop_assert_eq!(contents(&s, &h), sorted(&model));
    }
}

/// A checkpoint begun before a burst of updates restores the state at its
/// begin: the burst path writes values through pointers into the live map,
/// after marking their pages (the copy-on-write hook), never before.
#[test]
fn update_burst_while_a_checkpoint_streams_keeps_the_checkpoint_exact() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = store(&dir.path().join("live"), BinRange::all(BINS_LOG2));
    let mut h = ValueState::<u64, u64>::register(&mut s, "sums").unwrap();
    let keys: Vec<u64> = (0..3000).collect();
    let hashes: Vec<u64> = keys.iter().map(|&k| hash_u64(k)).collect();
    h.update_burst(&mut s, &hashes, &keys, |i, _| keys[i] * 10, |_, _| {}).unwrap();
    let before = contents(&s, &h);
    let mut backup = BackupStore::open(dir.path().join("backup"), Durability::Memory).unwrap();
    let mut stream = s.begin_checkpoint(1, b"").unwrap();
    // A few chunks out, then every value rewritten by bursts, then the rest.
    for _ in 0..3 {
        if let Some(c) = stream.next_chunk() {
            backup.receive("d", c).unwrap();
        }
    }
    for round in 0..3u64 {
        h.update_burst(&mut s, &hashes, &keys, |_, old| old.unwrap_or(0) + round + 1, |_, _| {}).unwrap();
    }
    for c in pull_all(&mut stream) {
        backup.receive("d", &c).unwrap();
    }
    let after = contents(&s, &h);
    assert!(after.iter().zip(&before).all(|(a, b)| a.1 == b.1 + 6));
    let (mut r, _, _) =
        StateStore::restore_id(StoreConfig::new(dir.path().join("r"), BINS_LOG2), &backup, "d", 1).unwrap();
    let rh = ValueState::<u64, u64>::register(&mut r, "sums").unwrap();
    assert_eq!(contents(&r, &rh), before);
}

/// Burst updates mark every dense page at once only in dirty epochs after
/// ones that wrote most of them (or marked them whole, for a few epochs in
/// a row): updates of one hot key among many keep the increments small
/// after a few checkpoints, and for good; every checkpoint restores
/// exactly.
#[test]
fn burst_updates_of_a_few_keys_keep_increments_small() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = StateStore::create(StoreConfig::new(dir.path().join("live"), 4), BinRange::all(4)).unwrap();
    let mut h = ValueState::<u64, u64>::register(&mut s, "sums").unwrap();
    let keys: Vec<u64> = (0..20_000).collect();
    let hashes: Vec<u64> = keys.iter().map(|&k| hash_u64(k)).collect();
    let mut backup = BackupStore::open(dir.path().join("backup"), Durability::Memory).unwrap();
    let add = |s: &mut StateStore, h: &mut ValueState<u64, u64>, n: usize, by: u64| {
        h.update_burst(s, &hashes[..n], &keys[..n], |_, old| old.unwrap_or(0) + by, |_, _| {}).unwrap();
    };
    add(&mut s, &mut h, keys.len(), 1);
    let mut pages = Vec::new();
    let mut want = Vec::new();
    for id in 1..=16u64 {
        let mut st = s.begin_checkpoint(id, b"").unwrap();
        pages.push(st.page_count());
        for c in pull_all(&mut st) {
            backup.receive("d", &c).unwrap();
        }
        want.push(contents(&s, &h));
        // Epochs 1-6 and 10-16 update one key, 7-9 every key; three bursts
        // each (the first ends the checkpoint's copy-on-write).
        let n = if (7..=9).contains(&id) { keys.len() } else { 1 };
        for _ in 0..3 {
            add(&mut s, &mut h, n, id);
        }
    }
    // Checkpoint 1 is a full image. Epoch 1 may mark whole (the first
    // epoch did, inserting): its increment is every dense page.
    let whole = pages[1];
    assert!(whole > 100, "{pages:?}");
    // No more than WHOLE_EPOCHS_MAX (4) whole epochs in a row, then one
    // measured: one key's page (and the store's own) from then on.
    for (i, &p) in pages.iter().enumerate().skip(5).take(2).chain(pages.iter().enumerate().skip(13)) {
        assert!(p < 10, "checkpoint {}: {pages:?}", i + 1);
    }
    // Epochs of every key: whole increments.
    assert!(pages[8] >= whole && pages[9] >= whole, "{pages:?}");
    for (id, at) in (1..=16u64).zip(&want) {
        let (mut r, _, _) =
            StateStore::restore_id(StoreConfig::new(dir.path().join(format!("r{id}")), 4), &backup, "d", id)
                .unwrap();
        let rh = ValueState::<u64, u64>::register(&mut r, "sums").unwrap();
        assert_eq!(&contents(&r, &rh), at, "checkpoint {id}");
    }
}
