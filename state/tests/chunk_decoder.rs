//! The checkpoint chunk decoder and the backup store's receive path against
//! random and damaged bytes: they never panic, reject every damaged chunk
//! with an error, and never acknowledge or load a damaged checkpoint.
//! (`state/fuzz` runs the same checks under a coverage-guided fuzzer.)

use proptest::prelude::*;
use spate_state::checkpoint::{decode_chunk, ChunkKind, FRAME_BYTES};
use spate_state::{
    hash_u64, BackupStore, BinRange, Durability, ListState, StateError, StateStore, StoreConfig, ValueState,
};

const BINS_LOG2: u8 = 2;

/// The chunks of a full image (checkpoint 1) and of an increment
/// (checkpoint 2) of a small store, and the state each holds.
struct Fixture {
    full: Vec<Vec<u8>>,
    increment: Vec<Vec<u8>>,
    sums: [Vec<(u64, u64)>; 2],
}

fn sums_of(store: &mut StateStore) -> Vec<(u64, u64)> {
    let mut sums = ValueState::<u64, u64>::register(store, "sums").unwrap();
    let mut out: Vec<(u64, u64)> =
        (0..300u64).filter_map(|k| sums.get(store, hash_u64(k), &k).map(|v| (k, v))).collect();
    out.sort();
    out
}

fn fixture(dir: &std::path::Path) -> Fixture {
    let config = StoreConfig::new(dir, BINS_LOG2).with_segment_bytes(8192);
    let mut store = StateStore::create(config, BinRange::all(BINS_LOG2)).unwrap();
    let mut sums = ValueState::<u64, u64>::register(&mut store, "sums").unwrap();
    let mut lists = ListState::<u64, Vec<u8>>::register(&mut store, "lists").unwrap();
    for k in 0..300u64 {
        sums.put(&mut store, hash_u64(k), &k, &k).unwrap();
        if k % 10 == 0 {
            lists.append(&mut store, hash_u64(k), &k, &vec![k as u8; 30]).unwrap();
        }
    }
    let first = sums_of(&mut store);
    let full = store.checkpoint(1, b"one").unwrap().into_chunks();
    for k in (0..300u64).step_by(7) {
        sums.put(&mut store, hash_u64(k), &k, &(k + 1000)).unwrap();
    }
    let second = sums_of(&mut store);
    let increment = store.checkpoint(2, b"two").unwrap().into_chunks();
    Fixture { full, increment, sums: [first, second] }
}

#[derive(Clone, Debug)]
enum Damage {
    /// Flip these bits (bit index modulo the chunk's bits).
    Flip(Vec<prop::sample::Index>),
    /// Keep only this many bytes (fewer than the chunk has).
    Truncate(prop::sample::Index),
    /// Append these bytes.
    Extend(Vec<u8>),
    /// Replace the chunk by these bytes.
    Replace(Vec<u8>),
}

fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        4 => prop::collection::vec(any::<prop::sample::Index>(), 1..4).prop_map(Damage::Flip),
        2 => any::<prop::sample::Index>().prop_map(Damage::Truncate),
        1 => prop::collection::vec(any::<u8>(), 1..16).prop_map(Damage::Extend),
        1 => prop::collection::vec(any::<u8>(), 0..64).prop_map(Damage::Replace),
    ]
}

/// Applies `d` to `chunk`.
fn apply(d: &Damage, chunk: &[u8]) -> Vec<u8> {
    let mut c = chunk.to_vec();
    match d {
        Damage::Flip(bits) => {
            let mut flipped = std::collections::BTreeSet::new();
            for b in bits {
                flipped.insert(b.index(c.len() * 8));
            }
            for b in flipped {
                c[b / 8] ^= 1 << (b % 8);
            }
        }
        Damage::Truncate(at) => c.truncate(at.index(c.len())),
        Damage::Extend(more) => c.extend_from_slice(more),
        Damage::Replace(bytes) => c = bytes.clone(),
    }
    c
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Random bytes: the decoder never panics and never claims bytes it was
    /// not given; the backup store refuses them (or takes only a whole,
    /// valid chunk).
    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        if let Ok((c, n)) = decode_chunk(&bytes) {
            prop_assert!(n <= bytes.len());
            prop_assert_eq!(c.payload.len() + FRAME_BYTES, n);
        }
        let mut backup = BackupStore::open("unused", Durability::Memory).unwrap();
        match backup.receive("x", &bytes) {
            Ok(ack) => prop_assert!(ack.is_none()),
            Err(StateError::CorruptCheckpoint { .. }) => {}
            Err(e) => prop_assert!(false, "unexpected error {e}"),
        }
        prop_assert!(backup.complete_checkpoints("x").is_empty());
    }

    /// One damaged chunk of a full image or of an increment: the decoder
    /// rejects it (or, for bytes appended after a whole chunk, decodes only
    /// the chunk), the backup store refuses it with an error naming the
    /// checkpoint, never acknowledges that checkpoint, and restore gives the
    /// state of the last undamaged one, or no state at all.
    #[test]
    fn damaged_chunks_are_rejected_never_loaded(
        in_increment in any::<bool>(),
        which in any::<prop::sample::Index>(),
        d in damage(),
        durability_file in any::<bool>(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let f = fixture(&dir.path().join("live"));
        let victim_id = if in_increment { 2 } else { 1 };
        let chunks = if in_increment { &f.increment } else { &f.full };
        let which = which.index(chunks.len());
        let original = &chunks[which];
        let damaged = apply(&d, original);
        prop_assume!(damaged != *original);

        // The decoder.
        match (&d, decode_chunk(&damaged)) {
            (Damage::Extend(_), Ok((_, n))) => prop_assert_eq!(n, original.len()),
            (_, Ok(_)) => prop_assert!(false, "a damaged chunk decoded: {d:?}"),
            (_, Err(_)) => {}
        }

        // The backup store: the undamaged checkpoint first, if the damage
        // is in the increment.
        let durability = if durability_file { Durability::PageCache } else { Durability::Memory };
        let mut backup = BackupStore::open(dir.path().join("backup"), durability).unwrap();
        if in_increment {
            for c in &f.full {
                backup.receive("op", c).unwrap();
            }
        }
        let mut refused = false;
        for (i, c) in chunks.iter().enumerate() {
            let bytes = if i == which { &damaged } else { c };
            match backup.receive("op", bytes) {
                Ok(Some(ack)) => prop_assert!(false, "damaged checkpoint {} acknowledged", ack.checkpoint),
                Ok(None) => {}
                Err(StateError::CorruptCheckpoint { checkpoint, .. }) => {
                    // Named once its header is known (0 before it).
                    prop_assert!(checkpoint == victim_id || checkpoint == 0);
                    refused = true;
                }
                Err(e) => prop_assert!(false, "unexpected error {e}"),
            }
            if i == which {
                prop_assert!(refused, "the damaged chunk was taken");
            }
        }
        prop_assert!(!backup.complete_checkpoints("op").contains(&victim_id));

        // Restore loads only what is whole.
        let config = StoreConfig::new(dir.path().join("restored"), BINS_LOG2);
        match StateStore::restore(config, &backup, "op") {
            Ok((mut store, _, id)) => {
                prop_assert!(in_increment);
                prop_assert_eq!(id, 1);
                prop_assert_eq!(sums_of(&mut store), f.sums[0].clone());
            }
            Err(StateError::NoCheckpoint { .. }) => prop_assert!(!in_increment),
            Err(e) => prop_assert!(false, "unexpected error {e}"),
        }
    }
}

/// The whole stream decodes chunk by chunk, header first, trailer last.
#[test]
fn valid_chunks_decode_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let f = fixture(dir.path());
    for chunks in [&f.full, &f.increment] {
        let kinds: Vec<ChunkKind> = chunks.iter().map(|c| decode_chunk(c).unwrap().0.kind).collect();
        assert_eq!(kinds.first(), Some(&ChunkKind::Header));
        assert_eq!(kinds.last(), Some(&ChunkKind::Trailer));
        assert!(kinds[1..kinds.len() - 1].iter().all(|k| *k == ChunkKind::Page));
    }
    let mut backup = BackupStore::open("unused", Durability::Memory).unwrap();
    for c in f.full.iter().chain(&f.increment) {
        backup.receive("op", c).unwrap();
    }
    assert_eq!(backup.complete_checkpoints("op"), vec![1, 2]);
    let (mut store, _, id) =
        StateStore::restore(StoreConfig::new(dir.path().join("r"), BINS_LOG2), &backup, "op").unwrap();
    assert_eq!(id, 2);
    assert_eq!(sums_of(&mut store), f.sums[1]);
}
