//! Tests of the raw store: unit tests and a property test against a
//! `HashMap` model.

use std::collections::HashMap;

use proptest::prelude::*;

use super::record::HEADER;
use super::*;
use crate::keyspace::{hash_bytes, hash_u64};

fn store(dir: &std::path::Path, bins_log2: u8, segment_bytes: usize) -> StateStore {
    let config = StoreConfig::new(dir, bins_log2).with_segment_bytes(segment_bytes);
    match StateStore::create(config, BinRange::all(bins_log2)) {
        Ok(s) => s,
        Err(e) => panic!("create: {e}"),
    }
}

pub(crate) fn tmp() -> tempfile::TempDir {
    match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => panic!("tempdir: {e}"),
    }
}

pub(crate) fn ok<T>(r: Result<T, StateError>) -> T {
    match r {
        Ok(v) => v,
        Err(e) => panic!("unexpected error: {e}"),
    }
}

/// Contents of a table, as a sorted list of (hash, key, value or list).
/// One entry of a table: hash, key, value, list items.
type Row = (u64, Vec<u8>, Vec<u8>, Vec<Vec<u8>>);

fn contents(s: &StateStore, t: TableId) -> Vec<Row> {
    let mut out = Vec::new();
    s.for_each(t, |h, k, v| {
        let items: Vec<Vec<u8>> = s.list_items(t, h, k).map(<[u8]>::to_vec).collect();
        out.push((h, k.to_vec(), v.to_vec(), items));
    });
    out.sort();
    out
}

#[test]
fn put_get_overwrite_remove() {
    let dir = tmp();
    let mut s = store(dir.path(), 4, SEGMENT_BYTES_DEFAULT);
    let t = ok(s.table("t"));
    let h = hash_bytes(b"k");
    assert_eq!(s.get(t, h, b"k"), None);
    ok(s.put(t, h, b"k", b"one"));
    assert_eq!(s.get(t, h, b"k"), Some(&b"one"[..]));
    ok(s.put(t, h, b"k", b"two")); // same length: in place
    assert_eq!(s.get(t, h, b"k"), Some(&b"two"[..]));
    let used = s.bytes_used();
    ok(s.put(t, h, b"k", b"three!")); // longer: new record
    assert_eq!(s.get(t, h, b"k"), Some(&b"three!"[..]));
    assert_eq!(s.bytes_used(), used + 3);
    assert_eq!(s.len(t), 1);
    assert!(s.remove(t, h, b"k"));
    assert!(!s.remove(t, h, b"k"));
    assert_eq!(s.get(t, h, b"k"), None);
    assert_eq!(s.len(t), 0);
    assert_eq!(s.bytes_used(), 0);
}

#[test]
fn tables_are_named_and_deterministic() {
    let dir = tmp();
    let mut s = store(dir.path(), 2, 4096);
    let a = ok(s.table("a"));
    let b = ok(s.table("b"));
    assert_eq!((a.index(), b.index()), (0, 1));
    assert_eq!(ok(s.table("a")), a);
    let h = hash_u64(1);
    ok(s.put(a, h, b"k", b"in a"));
    assert_eq!(s.get(b, h, b"k"), None);
    ok(s.put(b, h, b"k", b"in b"));
    assert_eq!(s.get(a, h, b"k"), Some(&b"in a"[..]));
    assert_eq!(s.get(b, h, b"k"), Some(&b"in b"[..]));
}

#[test]
fn equal_hashes_coexist() {
    let dir = tmp();
    let mut s = store(dir.path(), 3, 4096);
    let t = ok(s.table("windows"));
    let h = hash_u64(42);
    // Composite keys (record key, window end) all stored under the key's hash.
    for w in 0..300u64 {
        let mut key = 42u64.to_le_bytes().to_vec();
        key.extend_from_slice(&w.to_le_bytes());
        ok(s.put(t, h, &key, &(w * 10).to_le_bytes()));
    }
    assert_eq!(s.len(t), 300);
    for w in 0..300u64 {
        let mut key = 42u64.to_le_bytes().to_vec();
        key.extend_from_slice(&w.to_le_bytes());
        assert_eq!(s.get(t, h, &key), Some(&(w * 10).to_le_bytes()[..]));
    }
    let mut n = 0;
    s.for_each_with_hash(t, h, |_, _| n += 1);
    assert_eq!(n, 300);
    // Drop the even windows.
    let removed = s.retain_with_hash(t, h, |k, _| k[8] % 2 == 1);
    assert_eq!(removed, 150);
    for w in 0..300u64 {
        let mut key = 42u64.to_le_bytes().to_vec();
        key.extend_from_slice(&w.to_le_bytes());
        assert_eq!(s.get(t, h, &key).is_some(), w % 2 == 1, "window {w}");
    }
}

#[test]
fn bins_grow_past_many_segments_and_compact() {
    let dir = tmp();
    // One bin, 4 KiB segments: everything lands in the same bin.
    let mut s = store(dir.path(), 0, 4096);
    let t = ok(s.table("big"));
    let value = |k: u64, len: usize| vec![(k % 251) as u8; len];
    for k in 0..2000u64 {
        ok(s.put(t, hash_u64(k), &k.to_le_bytes(), &value(k, 100)));
    }
    assert!(s.segment_count() >= 50, "{} segments", s.segment_count());
    for round in 0..4usize {
        for k in 0..2000u64 {
            ok(s.put(t, hash_u64(k), &k.to_le_bytes(), &value(k + round as u64, 90 + 7 * round)));
        }
    }
    for k in 0..2000u64 {
        assert_eq!(s.get(t, hash_u64(k), &k.to_le_bytes()), Some(&value(k + 3, 111)[..]));
    }
    // Garbage is bounded: at most about twice the live bytes.
    let live = s.bytes_used();
    let cap = s.segment_bytes_in_use();
    assert!(cap <= 2 * live + 2 * 4096, "{cap} bytes of segments for {live} live bytes");
    assert_eq!(s.file.segments_in_use(), s.segment_count());
}

#[test]
fn segments_start_small_and_double() {
    let dir = tmp();
    // Two bins, 64 KiB full segments.
    let mut s = store(dir.path(), 1, SEGMENT_BYTES_DEFAULT);
    let t = ok(s.table("t"));
    let value = |k: u64, len: usize| vec![(k % 251) as u8; len];
    let keys: Vec<u64> = (0..3000u64).collect();
    for &k in &keys {
        ok(s.put(t, hash_u64(k), &k.to_le_bytes(), &value(k, 100)));
    }
    for h in &s.heaps {
        let sizes: Vec<u32> = h.segs.iter().map(|g| g.log2).collect();
        assert_eq!(sizes[..8], [9, 10, 11, 12, 13, 14, 15, 16], "{sizes:?}");
        assert!(sizes[8..].iter().all(|&l| l == 16), "{sizes:?}");
        assert_eq!(h.capacity, h.segs.iter().map(|g| 1u64 << g.log2).sum::<u64>());
        // Segments are naturally aligned and do not overlap.
        assert!(h.segs.iter().all(|g| g.loc % (1 << g.log2) == 0));
    }
    let mut spans: Vec<(u64, u64)> =
        s.heaps.iter().flat_map(|h| h.segs.iter().map(|g| (g.loc, g.loc + (1 << g.log2)))).collect();
    spans.sort();
    assert!(spans.windows(2).all(|w| w[0].1 <= w[1].0), "{spans:?}");
    // Rewrites with other lengths: compaction frees segments of every size
    // and takes them again.
    for round in 0..6usize {
        for &k in &keys {
            ok(s.put(t, hash_u64(k), &k.to_le_bytes(), &value(k + round as u64, 60 + 17 * round)));
        }
        assert_eq!(s.file.segments_in_use(), s.segment_count());
    }
    for &k in &keys {
        assert_eq!(s.get(t, hash_u64(k), &k.to_le_bytes()), Some(&value(k + 5, 60 + 17 * 5)[..]));
    }
    let live = s.bytes_used();
    let cap: u64 = s.heaps.iter().map(|h| h.capacity).sum();
    assert!(cap <= 2 * live + 4 * 65536, "{cap} bytes of segments for {live} live bytes");
    // A record larger than the next segment size gets a segment that fits.
    let t2 = ok(s.table("big"));
    ok(s.put(t2, hash_u64(1), b"k", &[7u8; 40_000]));
    assert_eq!(s.get(t2, hash_u64(1), b"k").map(<[u8]>::len), Some(40_000));
}

#[test]
fn many_bins() {
    let dir = tmp();
    let mut s = store(dir.path(), 12, SEGMENT_BYTES_DEFAULT);
    let t = ok(s.table("sums"));
    for k in 0..30_000u64 {
        let v = ok(s.get_or_insert_fixed(t, hash_u64(k), &k.to_le_bytes(), 8, |v| {
            v.copy_from_slice(&k.to_le_bytes())
        }));
        assert_eq!(v, &k.to_le_bytes()[..]);
    }
    for k in 0..30_000u64 {
        let v = ok(s.get_or_insert_fixed(t, hash_u64(k), &k.to_le_bytes(), 8, |_| unreachable!("present")));
        v[0] ^= 0xff;
    }
    assert_eq!(s.len(t), 30_000);
    let bins_used = s.heaps.iter().filter(|h| !h.segs.is_empty()).count();
    assert!(bins_used > 4000 && bins_used <= 4096, "{bins_used}");
    // Small bins share pages: about 7 keys of 36 bytes fit a bin's first
    // segment, an eighth of a page.
    let pages = crate::checkpoint::layout_pages(
        &s.heaps
            .iter()
            .map(|h| crate::checkpoint::BinLayout { segs: h.segs.to_vec(), ..Default::default() })
            .collect::<Vec<_>>(),
    );
    assert!(pages.len() < 1000, "{} pages for 4096 small bins", pages.len());
    let mut n = 0;
    s.for_each(t, |h, k, v| {
        let mut w = [0u8; 8];
        w.copy_from_slice(k);
        let k = u64::from_le_bytes(w);
        assert_eq!(h, hash_u64(k));
        assert_eq!(v[0], (k as u8) ^ 0xff);
        n += 1;
    });
    assert_eq!(n, 30_000);
    let removed = s.retain(t, |_, k, _| k[0] % 3 != 0);
    assert_eq!(removed, (0..30_000u64).filter(|k| k % 256 % 3 == 0).count());
    assert_eq!(s.len(t), 30_000 - removed);
}

#[test]
fn empty_bins_cost_no_segment() {
    let dir = tmp();
    let mut s = store(dir.path(), 16, SEGMENT_BYTES_DEFAULT);
    let t = ok(s.table("t"));
    assert_eq!(s.segment_count(), 0);
    ok(s.put(t, hash_u64(5), b"k", b"v"));
    assert_eq!(s.segment_count(), 1);
}

#[test]
fn dirty_pages_are_tracked() {
    let dir = tmp();
    let mut s = store(dir.path(), 4, SEGMENT_BYTES_DEFAULT);
    let t = ok(s.table("t"));
    for k in 0..100u64 {
        ok(s.put(t, hash_u64(k), &k.to_le_bytes(), &k.to_le_bytes()));
    }
    // Every page a segment lies in was written.
    let mut pages: Vec<u64> =
        s.heaps.iter().flat_map(|h| h.segs.iter().map(|g| g.loc / PAGE_BYTES as u64)).collect();
    pages.sort_unstable();
    pages.dedup();
    assert!(!pages.is_empty());
    assert_eq!(s.dirty_page_count(), pages.len());
    s.clear_dirty();
    assert_eq!(s.dirty_page_count(), 0);
    ok(s.put(t, hash_u64(7), &7u64.to_le_bytes(), &8u64.to_le_bytes()));
    assert_eq!(s.dirty_page_count(), 1);
    let bi = ok(s.bin_index(hash_u64(7)));
    let seg = s.heaps[bi].segs[0];
    assert!(s.file.is_dirty((seg.loc / PAGE_BYTES as u64) as usize));
    s.clear_dirty();
    let v = ok(s.get_or_insert_fixed(t, hash_u64(9), &9u64.to_le_bytes(), 8, |_| {}));
    v[0] = 1;
    assert_eq!(s.dirty_page_count(), 1);
    s.clear_dirty();
    assert!(s.get(t, hash_u64(9), &9u64.to_le_bytes()).is_some());
    assert_eq!(s.dirty_page_count(), 0, "reads dirty nothing");
    assert!(s.remove(t, hash_u64(9), &9u64.to_le_bytes()));
    assert_eq!(s.dirty_page_count(), 1, "a removal flags the record dead");
}

#[test]
fn lists_append_iterate_remove() {
    let dir = tmp();
    let mut s = store(dir.path(), 2, 4096);
    let t = ok(s.table("windows"));
    let h = hash_u64(3);
    for i in 0..1000u32 {
        let item = vec![i as u8; (i % 37) as usize];
        ok(s.append(t, h, b"w1", &item));
    }
    assert_eq!(s.list_len(t, h, b"w1"), 1000);
    let mut i = 0u32;
    s.list_for_each(t, h, b"w1", |item| {
        assert_eq!(item, &vec![i as u8; (i % 37) as usize][..]);
        i += 1;
    });
    assert_eq!(i, 1000);
    assert!(matches!(s.put(t, h, b"w1", b"x"), Err(StateError::KindMismatch { .. })));
    ok(s.put(t, h, b"v", b"x"));
    assert!(matches!(s.append(t, h, b"v", b"x"), Err(StateError::KindMismatch { .. })));
    assert_eq!(s.get(t, h, b"w1"), None);
    assert!(s.remove(t, h, b"w1"));
    assert_eq!(s.list_len(t, h, b"w1"), 0);
    assert_eq!(s.bytes_used(), (HEADER + 2) as u64);
}

#[test]
fn errors_carry_their_values() {
    let dir = tmp();
    let mut s = store(dir.path(), 2, 4096);
    let t = ok(s.table("t"));
    let big = vec![0u8; 5000];
    match s.put(t, 0, b"k", &big) {
        Err(StateError::RecordTooLarge { record_bytes, max_bytes }) => {
            assert_eq!((record_bytes, max_bytes), (5000 + 1 + HEADER, 4096));
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(s.append(t, 0, b"k", &big), Err(StateError::RecordTooLarge { .. })));
    ok(s.put(t, 0, b"k", b"12345678"));
    match s.get_or_insert_fixed(t, 0, b"k", 4, |_| {}) {
        Err(StateError::ValueSizeMismatch { expected: 4, found: 8 }) => {}
        other => panic!("{other:?}"),
    }
    let bad = StoreConfig::new(dir.path(), 2).with_segment_bytes(3000);
    assert!(matches!(
        StateStore::create(bad, BinRange::all(2)),
        Err(StateError::InvalidConfig { field: "segment_bytes", .. })
    ));
    let bad = StoreConfig::new(dir.path(), 2);
    assert!(matches!(
        StateStore::create(bad, BinRange::new(0, 5)),
        Err(StateError::InvalidConfig { field: "bins", .. })
    ));
    let e = StateError::BinNotOwned { bin: 7, bins: BinRange::new(0, 4) };
    assert_eq!(e.to_string(), "bin 7 is not owned by this state store (it owns bins 0..4)");
}

#[test]
fn bin_not_owned_is_a_programmer_error() {
    let dir = tmp();
    let config = StoreConfig::new(dir.path(), 1);
    let mut s = ok(StateStore::create(config, BinRange::new(0, 1)));
    let t = ok(s.table("t"));
    let foreign = u64::MAX; // bin 1
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| s.put(t, foreign, b"k", b"v")));
    if cfg!(debug_assertions) {
        assert!(r.is_err(), "debug builds assert");
    } else {
        assert!(matches!(r, Ok(Err(StateError::BinNotOwned { bin: 1, .. }))));
    }
}

#[test]
fn create_starts_empty() {
    let dir = tmp();
    let path = dir.path().join("nested/store");
    let store = |path: &std::path::Path, bins_log2, segment_bytes| {
        let config =
            StoreConfig::new(path, bins_log2).with_segment_bytes(segment_bytes).with_backing(Backing::File);
        ok(StateStore::create(config, BinRange::all(bins_log2)))
    };
    {
        let mut s = store(&path, 2, 4096);
        let t = ok(s.table("t"));
        ok(s.put(t, 1, b"k", b"v"));
        assert!(s.segment_file().exists());
    }
    let mut s = store(&path, 2, 4096);
    let t = ok(s.table("t"));
    assert_eq!(s.get(t, 1, b"k"), None);
    assert_eq!(std::fs::metadata(s.segment_file()).map(|m| m.len()).ok(), Some(0));
}

#[derive(Clone, Debug)]
enum Op {
    Put { table: u8, key: u8, len: usize },
    Fixed { table: u8, key: u8 },
    Remove { table: u8, key: u8 },
    Append { table: u8, key: u8, len: usize },
    Retain { table: u8, modulo: u8 },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..2u8, 0..40u8, 0..300usize).prop_map(|(table, key, len)| Op::Put { table, key, len }),
        2 => (0..2u8, 0..40u8).prop_map(|(table, key)| Op::Fixed { table, key }),
        2 => (0..2u8, 0..40u8).prop_map(|(table, key)| Op::Remove { table, key }),
        3 => (0..2u8, 40..60u8, 0..200usize).prop_map(|(table, key, len)| Op::Append { table, key, len }),
        1 => (0..2u8, 2..5u8).prop_map(|(table, modulo)| Op::Retain { table, modulo }),
    ]
}

#[derive(Clone, Debug, PartialEq)]
enum Model {
    Value(Vec<u8>),
    List(Vec<Vec<u8>>),
}

/// Keys 0..60; hashes from a set of 7 so that many keys share a hash, spread
/// over 4 bins.
fn key_of(k: u8) -> (u64, Vec<u8>) {
    (hash_u64(u64::from(k % 7)), vec![k; 1 + (k as usize % 5)])
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn store_matches_a_hashmap(ops in proptest::collection::vec(op(), 1..400)) {
        let dir = tmp();
        let mut s = store(dir.path(), 2, 4096);
        let tables = [ok(s.table("a")), ok(s.table("b"))];
        let mut model: [HashMap<Vec<u8>, (u64, Model)>; 2] = [HashMap::new(), HashMap::new()];
        for (n, op) in ops.iter().enumerate() {
            let fill = n as u8;
            match *op {
                Op::Put { table, key, len } => {
                    let (h, k) = key_of(key);
                    let v = vec![fill; len];
                    let m = &mut model[table as usize];
                    let r = s.put(tables[table as usize], h, &k, &v);
                    if matches!(m.get(&k), Some((_, Model::List(_)))) {
                        prop_assert!(matches!(r, Err(StateError::KindMismatch { .. })), "{:?}", r);
                    } else {
                        prop_assert!(r.is_ok());
                        m.insert(k, (h, Model::Value(v)));
                    }
                }
                Op::Fixed { table, key } => {
                    let (h, k) = key_of(key);
                    let m = &mut model[table as usize];
                    let r = s.get_or_insert_fixed(tables[table as usize], h, &k, 8, |v| v[0] = 1);
                    match (m.get_mut(&k), r) {
                        (Some((_, Model::Value(v))), Ok(got)) if v.len() == 8 => {
                            prop_assert_eq!(&v[..], &got[..]);
                            got[7] = got[7].wrapping_add(1);
                            v[7] = v[7].wrapping_add(1);
                        }
                        (Some((_, Model::Value(_))), r) => {
                            prop_assert!(matches!(r, Err(StateError::ValueSizeMismatch { .. })), "{:?}", r)
                        }
                        (Some((_, Model::List(_))), r) => {
                            prop_assert!(matches!(r, Err(StateError::KindMismatch { .. })), "{:?}", r)
                        }
                        (None, r) => {
                            let got = ok(r);
                            let mut v = vec![0u8; 8];
                            v[0] = 1;
                            prop_assert_eq!(&v[..], &got[..]);
                            m.insert(k, (h, Model::Value(v)));
                        }
                    }
                }
                Op::Remove { table, key } => {
                    let (h, k) = key_of(key);
                    let removed = s.remove(tables[table as usize], h, &k);
                    prop_assert_eq!(removed, model[table as usize].remove(&k).is_some());
                }
                Op::Append { table, key, len } => {
                    let (h, k) = key_of(key);
                    let item = vec![fill; len];
                    ok(s.append(tables[table as usize], h, &k, &item));
                    let e = model[table as usize].entry(k).or_insert((h, Model::List(Vec::new())));
                    if let Model::List(items) = &mut e.1 {
                        items.push(item);
                    }
                }
                Op::Retain { table, modulo } => {
                    let keep = |k: &[u8]| !k[0].is_multiple_of(modulo);
                    let removed = s.retain(tables[table as usize], |_, k, _| keep(k));
                    let m = &mut model[table as usize];
                    let before = m.len();
                    m.retain(|k, _| keep(k));
                    prop_assert_eq!(removed, before - m.len());
                }
            }
        }
        for (t, m) in tables.iter().zip(&model) {
            let mut expected: Vec<_> = m
                .iter()
                .map(|(k, (h, e))| match e {
                    Model::Value(v) => (*h, k.clone(), v.clone(), Vec::new()),
                    Model::List(items) => (*h, k.clone(), Vec::new(), items.clone()),
                })
                .collect();
            expected.sort();
            prop_assert_eq!(contents(&s, *t), expected);
            prop_assert_eq!(s.len(*t), m.len());
            for (k, (h, e)) in m {
                match e {
                    Model::Value(v) => prop_assert_eq!(s.get(*t, *h, k), Some(&v[..])),
                    Model::List(items) => {
                        prop_assert_eq!(s.list_len(*t, *h, k), items.len() as u64)
                    }
                }
            }
        }
        // Garbage stays bounded by compaction (per bin: live + one segment of
        // slack, doubled).
        let cap = s.segment_bytes_in_use();
        prop_assert!(cap <= 2 * s.bytes_used() + 4 * 2 * 4096, "{} > 2 * {}", cap, s.bytes_used());
    }
}

/// A bin's segment list reads as a slice whether it holds none, one
/// (inline) or several, and a clone (a checkpoint's snapshot) keeps the
/// segments it had when the bin's list grows.
#[test]
fn segment_lists_read_as_slices_and_clones_keep_their_segments() {
    let (a, b, c) = (Seg { loc: 0, log2: 9 }, Seg { loc: 4096, log2: 10 }, Seg { loc: 8192, log2: 11 });
    let mut s = Segs::default();
    assert!(s.is_empty());
    s.push(a);
    assert!(matches!(s, Segs::One(_)), "one segment is kept inline");
    let one = s.clone();
    s.push(b);
    let two = s.clone();
    s.push(c);
    assert_eq!((&one[..], &two[..], &s[..]), (&[a][..], &[a, b][..], &[a, b, c][..]));
    assert!(matches!(Segs::from(vec![a]), Segs::One(x) if x == a));
    assert_eq!(&Segs::from(vec![a, b, c])[..], &[a, b, c][..]);
    assert!(Segs::from(Vec::new()).is_empty());
}
