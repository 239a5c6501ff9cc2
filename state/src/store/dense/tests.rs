//! Tests of dense tables.

use super::group::{Group, Matches};
use super::layout::{ctrl_loc, hash_off, kv_off, HOT_DEEP};
use super::placement::{CTRL_IN_LINE, LINE};
use super::slots::first_empty;
use super::*;
use crate::error::StateError;
use crate::store::record::NONE;
use crate::store::record::{Header, HEADER};
use crate::store::tests::{ok, tmp};
use crate::store::{StateStore, TableId, TypeSig};
use crate::{hash_u64, Backing, BinRange, StoreConfig, ValueState};

fn small_store(dir: &tempfile::TempDir) -> StateStore {
    ok(StateStore::create(StoreConfig::new(dir.path(), 2).with_segment_bytes(4096), BinRange::all(2)))
}

#[test]
fn every_key_stays_found_while_bins_grow_into_several_parts() {
    let dir = tmp();
    let mut s = small_store(&dir);
    let mut sums = ok(ValueState::<u64, u64>::register(&mut s, "sums"));
    for k in 0..600u64 {
        ok(sums.update(&mut s, hash_u64(k), &k, |old| old.unwrap_or(0) + k));
        for j in (0..=k).step_by(7) {
            assert_eq!(sums.get(&s, hash_u64(j), &j), Some(j), "key {j} after inserting {k}");
        }
    }
    // 150 keys a bin need several parts of at most 128 slots.
    let d = s.tables[0].dense.as_ref().map(|d| d.bins.iter().map(|b| b.depth).max());
    assert!(matches!(d, Some(Some(depth)) if depth >= 1), "{d:?}");
    assert_eq!(sums.len(&s), 600);
}

/// Checks every lookup entry of table 0 against its bin: a bin of one
/// part is reached through the entry alone (its address and size),
/// any other through its `DenseBin`; returns how many of each.
fn check_lookup_entries(s: &StateStore) -> (usize, usize) {
    let Some(d) = s.tables[0].dense.as_ref() else {
        panic!("table 0 is not dense");
    };
    assert_eq!(d.hot.len(), 1 << s.config.bins_log2);
    let owned = d.first..d.first + d.bins.len();
    for (b, h) in d.hot.iter().enumerate() {
        assert!(owned.contains(&b) || h.0 == 0, "bin {b} is not owned, yet has a lookup entry {h:?}");
    }
    let (mut one, mut other) = (0, 0);
    for (bi, db) in d.bins.iter().enumerate() {
        let h = d.hot[d.first + bi];
        if !db.exists() {
            assert_eq!(h.0, 0, "bin {bi} has no table");
            continue;
        }
        let loc = db.ctrl_loc();
        if db.depth == 0 {
            assert!(h.one_part(), "bin {bi} of one part: {h:?}");
            assert_eq!(Some(h.ctrl().cast_mut()), s.file.addr(loc), "bin {bi}: its control bytes");
            assert_eq!(h.slots(), db.slots(), "bin {bi}: its slots");
            one += 1;
        } else {
            assert_eq!(h.0, HOT_DEEP, "bin {bi} of several parts");
            other += 1;
        }
    }
    (one, other)
}

#[test]
fn lookup_entries_follow_their_bins_through_growth_and_compaction() {
    let dir = tmp();
    let mut s = small_store(&dir);
    let mut sums = ok(ValueState::<u64, u64>::register(&mut s, "sums"));
    let mut seen = Vec::new();
    for k in 0..600u64 {
        ok(sums.update(&mut s, hash_u64(k), &k, |old| old.unwrap_or(0) + k));
        if k % 25 == 0 {
            seen.push(check_lookup_entries(&s));
        }
    }
    // Bins of one part first, then of several (the entries are checked
    // on both sides of every growth and the compactions after them).
    assert!(seen.iter().any(|&(one, _)| one > 0), "{seen:?}");
    assert!(seen.last().is_some_and(|&(_, other)| other > 0), "{seen:?}");
    // What the entries say is what the lookups find.
    for k in 0..600u64 {
        assert_eq!(sums.get(&s, hash_u64(k), &k), Some(k), "key {k}");
    }
}

#[test]
fn lookup_entries_follow_their_bins_through_split_and_merge() {
    // 8 bins; a store owning all of them gives away its first two and
    // its last two, then takes both back.
    let cfg = |d: &tempfile::TempDir| StoreConfig::new(d.path(), 3).with_segment_bytes(4096);
    let (da, db, dc) = (tmp(), tmp(), tmp());
    let mut s = ok(StateStore::create(cfg(&da), BinRange::all(3)));
    let mut sums = ok(ValueState::<u64, u64>::register(&mut s, "sums"));
    let keys: Vec<u64> = (0..400).collect();
    let hashes: Vec<u64> = keys.iter().map(|&k| hash_u64(k)).collect();
    // Every update of a burst adds the key's number to its sum.
    let burst = |s: &mut StateStore, sums: &mut ValueState<u64, u64>, hashes: &[u64], keys: &[u64]| {
        sums.update_burst(s, hashes, keys, |i, old| old.unwrap_or(0) + keys[i], |_, _| {})
    };
    ok(burst(&mut s, &mut sums, &hashes, &keys));
    check_lookup_entries(&s);
    let head = ok(s.split_off_into(BinRange::new(0, 2), cfg(&db)));
    let mut tail = ok(s.split_off_into(BinRange::new(6, 8), cfg(&dc)));
    for st in [&s, &head, &tail] {
        let (one, other) = check_lookup_entries(st);
        assert!(one + other > 0, "the store has bins with tables");
    }
    // A burst of the remaining store's keys finds each one (a second
    // update each), and one of a key whose bin went away fails rather
    // than being taken for a missing key and inserted.
    let mine: Vec<usize> =
        (0..keys.len()).filter(|&i| (2..6).contains(&crate::bin_of(hashes[i], 3))).collect();
    let (mh, mk): (Vec<u64>, Vec<u64>) = mine.iter().map(|&i| (hashes[i], keys[i])).unzip();
    ok(burst(&mut s, &mut sums, &mh, &mk));
    let gone = (0..keys.len()).find(|&i| crate::bin_of(hashes[i], 3) >= 6).unwrap_or(0);
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        burst(&mut s, &mut sums, &hashes[gone..gone + 1], &keys[gone..gone + 1])
    }));
    // A programmer error: debug builds assert, release builds fail.
    if cfg!(debug_assertions) {
        assert!(r.is_err(), "debug builds assert");
    } else {
        assert!(matches!(r, Ok(Err(StateError::BinNotOwned { bin: 6, .. }))), "{r:?}");
    }
    // The tail comes back: its keys are found through their entries.
    let mut tail_sums = ok(ValueState::<u64, u64>::register(&mut tail, "sums"));
    assert_eq!(tail_sums.get(&tail, hashes[gone], &keys[gone]), Some(keys[gone]));
    // The tail comes back after the store's bins, the head before
    // them (the owned bins start elsewhere then).
    ok(s.merge(tail));
    check_lookup_entries(&s);
    ok(s.merge(head));
    check_lookup_entries(&s);
    // The merged parts are placed as new ones are (`alloc_part`).
    let Some(d) = s.tables[0].dense.as_ref() else { panic!("not dense") };
    for p in d.bins.iter().filter(|db| db.exists()).flat_map(|db| db.parts()) {
        assert_eq!(ctrl_loc(p.loc) % LINE, CTRL_IN_LINE, "a merged part at {}", p.loc);
    }
    let mut sums = ok(ValueState::<u64, u64>::register(&mut s, "sums"));
    ok(burst(&mut s, &mut sums, &hashes, &keys));
    for (&h, &k) in hashes.iter().zip(&keys) {
        let updates = if (2..6).contains(&crate::bin_of(h, 3)) { 3 } else { 2 };
        assert_eq!(sums.get(&s, h, &k), Some(updates * k), "key {k}");
    }
}

#[test]
fn reserve_gives_each_bin_its_share_up_front() {
    let dir = tmp();
    // 8 bins; 160 keys are 20 a bin: 32 slots (28 under the 7/8 load).
    let mut s = ok(StateStore::create(StoreConfig::new(dir.path(), 3), BinRange::all(3)));
    let mut sums = ok(ValueState::<u64, u64>::register(&mut s, "sums"));
    let slots = |s: &StateStore| -> Vec<u8> {
        s.tables[0]
            .dense
            .as_ref()
            .map(|d| d.bins.iter().map(|db| db.slots_log2).collect())
            .unwrap_or_default()
    };
    // Too few keys for more than a first part: nothing is made early.
    ok(sums.reserve(&mut s, 40));
    assert_eq!(slots(&s), vec![0; 8]);
    ok(sums.reserve(&mut s, 160));
    assert_eq!(slots(&s), vec![5; 8]);
    check_lookup_entries(&s);
    // Three times as many keys as reserved: the bins grow past it, and
    // every key is found.
    for k in 0..480u64 {
        ok(sums.update(&mut s, hash_u64(k), &k, |old| old.unwrap_or(0) + k));
    }
    assert!(slots(&s).iter().all(|&l| l >= 6), "{:?}", slots(&s));
    for k in 0..480u64 {
        assert_eq!(sums.get(&s, hash_u64(k), &k), Some(k), "key {k}");
    }
    // Bins that hold keys are left as they are by a later reserve.
    let before = slots(&s);
    ok(sums.reserve(&mut s, 1 << 20));
    assert_eq!(slots(&s), before);
}

/// Every part's control bytes start at byte `CTRL_IN_LINE` of a cache
/// line (a reservation's parts, each at the start of a segment of its
/// own, at one of three lines of it: their colours), and so do those of
/// grown bins and those a compaction moved (checked: with compaction
/// copying parts as records, this fails).
#[test]
fn parts_are_placed_in_their_lines_in_several_colours() {
    let dir = tmp();
    let mut s = ok(StateStore::create(StoreConfig::new(dir.path(), 4), BinRange::all(4)));
    let mut sums = ok(ValueState::<u64, u64>::register(&mut s, "sums"));
    let ctrl_locs = |s: &StateStore| -> Vec<u64> {
        let Some(d) = s.tables[0].dense.as_ref() else { panic!("not dense") };
        d.bins.iter().filter(|db| db.exists()).flat_map(|db| db.parts().map(|p| ctrl_loc(p.loc))).collect()
    };
    // 16 bins of 20 keys: parts of 32 slots (844 bytes, 180 to spare
    // in a segment of 1 KiB).
    ok(sums.reserve(&mut s, 16 * 20));
    let reserved = ctrl_locs(&s);
    assert_eq!(reserved.len(), 16);
    assert!(reserved.iter().all(|l| l % LINE == CTRL_IN_LINE), "{reserved:?}");
    let colours: std::collections::BTreeSet<u64> = reserved.iter().map(|l| l % 1024).collect();
    assert_eq!(colours.len(), 3, "{colours:?}");
    let keys = 4000u64;
    for k in 0..keys {
        ok(sums.update(&mut s, hash_u64(k), &k, |old| old.unwrap_or(0) + k));
    }
    let grown = ctrl_locs(&s);
    assert!(grown.iter().all(|l| !reserved.contains(l)), "every bin grew: {grown:?}");
    assert!(grown.iter().all(|l| l % LINE == CTRL_IN_LINE), "{grown:?}");
    check_lookup_entries(&s);
    for k in 0..keys {
        assert_eq!(sums.get(&s, hash_u64(k), &k), Some(k), "key {k}");
    }
}

/// The maps of this process advised `MADV_HUGEPAGE`: their `VmFlags`
/// in `/proc/self/smaps` say `hg` (whether or not huge pages are
/// enabled).
#[cfg(target_os = "linux")]
fn huge_advised_maps() -> Vec<std::ops::Range<usize>> {
    let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap_or_default();
    let (mut maps, mut range) = (Vec::new(), None);
    for line in smaps.lines() {
        if let Some(flags) = line.strip_prefix("VmFlags:") {
            if flags.split_whitespace().any(|f| f == "hg") {
                maps.extend(range.take());
            }
            continue;
        }
        // A map's first line: `start-end perms offset ...`.
        let bounds = line.split_whitespace().next().and_then(|r| r.split_once('-'));
        if let Some((Ok(lo), Ok(hi))) =
            bounds.map(|(lo, hi)| (usize::from_str_radix(lo, 16), usize::from_str_radix(hi, 16)))
        {
            range = Some(lo..hi);
        }
    }
    maps
}

/// A reservation of megabytes in memory asks for huge pages for its
/// parts; a small one, and one in a file, do not.
#[cfg(target_os = "linux")]
#[test]
fn large_reservations_in_memory_ask_for_huge_pages() {
    let part_addrs = |s: &StateStore| -> Vec<usize> {
        let Some(d) = s.tables[0].dense.as_ref() else { panic!("not dense") };
        let locs = d.bins.iter().filter(|db| db.exists()).map(|db| db.first.loc);
        locs.filter_map(|loc| s.file.addr(loc)).map(|p| p as usize).collect()
    };
    let reserve = |backing: Backing, bins_log2: u8, keys: u64| {
        let dir = tmp();
        let cfg = StoreConfig::new(dir.path(), bins_log2).with_backing(backing);
        let mut s = ok(StateStore::create(cfg, BinRange::all(bins_log2)));
        let sums = ok(ValueState::<u64, u64>::register(&mut s, "sums"));
        ok(sums.reserve(&mut s, keys));
        let addrs = part_addrs(&s);
        assert_eq!(addrs.len(), 1 << bins_log2);
        let maps = huge_advised_maps();
        let advised = addrs.iter().filter(|&&a| maps.iter().any(|m| m.contains(&a))).count();
        (advised, addrs.len())
    };
    // 4 096 parts of 32 slots: over 4 MiB. All but those at the ends of
    // the span lie in 2 MiB ranges it covers whole.
    let (advised, parts) = reserve(Backing::Memory, 12, 100_000);
    assert!(advised * 2 > parts, "{advised} of {parts} parts in advised maps");
    // 16 such parts (16 KiB), and the same 4 MiB in a file: none.
    assert_eq!(reserve(Backing::Memory, 4, 16 * 24).0, 0);
    assert_eq!(reserve(Backing::File, 12, 100_000).0, 0);
}

/// A burst's new keys that go into their bins in place (one part with
/// room) mark what they write dirty, so the next incremental checkpoint
/// carries them: each slot's key and value, hash and control byte, on
/// pages of their own in parts of 2048 slots, in an epoch that marks
/// page by page.
#[test]
fn keys_inserted_in_place_mark_their_slots_dirty() {
    let dir = tmp();
    let mut s = ok(StateStore::create(StoreConfig::new(dir.path(), 2), BinRange::all(2)));
    let mut sums = ok(ValueState::<u64, u64>::register(&mut s, "sums"));
    ok(sums.reserve(&mut s, 4 * 1500));
    assert!(s.tables[0].dense.as_ref().is_some_and(|d| d.bins.iter().all(|db| db.slots_log2 == 11)));
    s.clear_dirty();
    s.marks.allowed = false;
    let keys: Vec<u64> = (0..400).collect();
    let hashes: Vec<u64> = keys.iter().map(|&k| hash_u64(k)).collect();
    ok(sums.update_burst(&mut s, &hashes, &keys, |i, old| old.unwrap_or(0) + i as u64, |_, _| {}));
    let Some(d) = s.tables[0].dense.as_ref() else { panic!("not dense") };
    // Still one part per bin: every key went in in place.
    assert!(d.bins.iter().all(|db| db.depth == 0 && db.slots_log2 == 11));
    for (&k, &h) in keys.iter().zip(&hashes) {
        assert_slot_dirty(&s, k, &format!("key {k}"));
        assert_eq!(sums.get(&s, h, &k), Some(k));
    }
}

/// Asserts that the pages of `u64` key `k`'s slot in table 0 of `s`
/// (a store of 4 bins) are dirty: its control byte, key and value, and
/// hash.
fn assert_slot_dirty(s: &StateStore, k: u64, name: &str) {
    let Some(d) = s.tables[0].dense.as_ref() else { panic!("not dense") };
    let h = hash_u64(k);
    let bi = ok(s.bin_index(h));
    let Some((p, at)) = find(d, &s.file, bi, 2, h, &k.to_le_bytes()) else { panic!("{name} not found") };
    let (slots, stride, j) = (p.slots, d.stride(), at.slot);
    let page = |loc: u64| (loc >> super::super::file::PAGE_LOG2) as usize;
    for (what, loc) in [
        ("control byte", p.ctrl_loc + j as u64),
        ("key and value", p.ctrl_loc + (kv_off(slots) + j * stride) as u64),
        ("hash", p.ctrl_loc + (hash_off(slots, stride) + j * 8) as u64),
    ] {
        assert!(s.file.is_dirty(page(loc)), "{name}: the page of its {what} is not dirty");
    }
}

/// With every dense page marked at once (the default), a burst's runs
/// insert new keys in place without marking their control bytes, keys
/// and values again: those pages are among the marked. Their hashes
/// are not, and the inserts mark them. Checked over bursts of
/// new keys in a row (inserted by the runs) between more than
/// `SETTLED_AFTER` keys found in a row (so runs switch back and forth),
/// in parts large enough that their hashes lie on pages of their own,
/// until bins grow.
#[test]
fn keys_inserted_in_place_under_whole_marks_leave_every_page_they_wrote_dirty() {
    let dir = tmp();
    let mut s = ok(StateStore::create(StoreConfig::new(dir.path(), 2), BinRange::all(2)));
    let mut sums = ok(ValueState::<u64, u64>::register(&mut s, "sums"));
    ok(sums.reserve(&mut s, 4 * 1500));
    let mut want = std::collections::HashMap::new();
    for round in 0..6u64 {
        s.clear_dirty();
        s.marks.allowed = true;
        // Blocks of 50 new keys, each after 40 keys already there.
        let new = round * 1200..(round + 1) * 1200;
        let mut keys = Vec::new();
        for k in new.clone().step_by(50) {
            keys.extend((0..40).map(|x| (k * 7 + x) % k.max(1)));
            keys.extend(k..k + 50);
        }
        let hashes: Vec<u64> = keys.iter().map(|&k| hash_u64(k)).collect();
        ok(sums.update_burst(&mut s, &hashes, &keys, |_, old| old.unwrap_or(0) + 1, |_, _| {}));
        for &k in &keys {
            *want.entry(k).or_insert(0u64) += 1;
        }
        assert!(s.marks.marked == s.file.dirty_epoch(), "round {round}: the epoch was marked whole");
        for k in new {
            assert_slot_dirty(&s, k, &format!("round {round}, key {k}"));
        }
    }
    for (&k, &n) in &want {
        assert_eq!(sums.get(&s, hash_u64(k), &k), Some(n), "key {k}");
    }
    assert_eq!(sums.len(&s), want.len());
    // Bins grew past their reservation on the way.
    assert!(s.tables[0]
        .dense
        .as_ref()
        .is_some_and(|d| d.bins.iter().any(|db| db.slots_log2 > 11 || db.depth > 0)));
}

/// Marking every dense page at once covers the parts' control bytes
/// as well as their keys and values (the inserts of a run under whole
/// marks mark only their hashes), here in parts whose control bytes
/// take pages of their own.
#[test]
fn whole_marks_cover_the_control_bytes() {
    let dir = tmp();
    let config = StoreConfig::new(dir.path(), 2).with_segment_bytes(1 << 20);
    let mut s = ok(StateStore::create(config, BinRange::all(2)));
    let sums = ok(ValueState::<u64, u64>::register(&mut s, "sums"));
    ok(sums.reserve(&mut s, 4 * 8000));
    s.clear_dirty();
    s.marks.allowed = true;
    assert!(s.dense_all_marked());
    let Some(d) = s.tables[0].dense.as_ref() else { panic!("not dense") };
    let page = |loc: u64| (loc >> super::super::file::PAGE_LOG2) as usize;
    assert!(d.bins.iter().all(|db| db.slots() + GROUP > 2 * super::super::file::PAGE_BYTES));
    for db in &d.bins {
        for p in db.parts() {
            let cl = ctrl_loc(p.loc);
            for loc in [cl, cl + (db.slots() + GROUP) as u64 - 1] {
                assert!(s.file.is_dirty(page(loc)), "the page of control bytes at {loc} is not dirty");
            }
        }
    }
}

/// A reservation's parts may reuse space that held other records:
/// they start empty all the same (every byte of a part is written), and
/// take keys as any part does.
#[test]
fn reserved_parts_in_reused_space_start_empty() {
    let dir = tmp();
    let mut s = ok(StateStore::create(StoreConfig::new(dir.path(), 2), BinRange::all(2)));
    // Records of 0xff bytes in every bin, then none: compaction gives
    // their segments back to the file.
    let junk = ok(s.table("junk"));
    let keys: Vec<u64> = (0..4000).collect();
    for &k in &keys {
        ok(s.put(junk, hash_u64(k), &k.to_le_bytes(), &[0xff; 40]));
    }
    let written: Vec<(u64, u64)> =
        s.heaps.iter().flat_map(|h| h.segs.iter().map(|g| (g.loc, g.loc + (1 << g.log2)))).collect();
    for &k in &keys {
        assert!(s.remove(junk, hash_u64(k), &k.to_le_bytes()));
    }
    for bi in 0..4 {
        ok(s.compact(bi));
    }
    let mut sums = ok(ValueState::<u64, u64>::register(&mut s, "sums"));
    ok(sums.reserve(&mut s, 4 * 1500));
    let Some(d) = s.tables[sums.table().index()].dense.as_ref() else { panic!("not dense") };
    let reused =
        d.bins.iter().filter(|db| written.iter().any(|&(a, b)| (a..b).contains(&db.first.loc))).count();
    assert!(reused > 0, "no reserved part reused the junk's space");
    assert!(d.bins.iter().all(|db| db.exists() && db.len() == 0));
    assert_eq!(sums.len(&s), 0);
    let mut n = 0;
    sums.for_each(&s, |_, _, _| n += 1);
    assert_eq!(n, 0, "a reserved part held entries");
    let hashes: Vec<u64> = keys.iter().map(|&k| hash_u64(k)).collect();
    ok(sums.update_burst(&mut s, &hashes, &keys, |i, old| old.unwrap_or(0) + i as u64, |_, _| {}));
    for (&k, &h) in keys.iter().zip(&hashes) {
        assert_eq!(sums.get(&s, h, &k), Some(k), "key {k}");
    }
    assert_eq!(sums.len(&s), keys.len());
}

/// A reservation that runs out of space fails with the error, leaves
/// every bin without a table as it was (the space it took is dead
/// padding, counted as garbage), and the store goes on: its keys go in
/// as they would have without the reservation.
#[test]
fn a_reservation_out_of_space_leaves_the_bins_as_they_were() {
    let dir = tmp();
    let mut s = ok(StateStore::create(StoreConfig::new(dir.path(), 4), BinRange::all(4)));
    let mut sums = ok(ValueState::<u64, u64>::register(&mut s, "sums"));
    // 16 bins of 2048-slot parts (about 48 KiB each, one 64 KiB
    // segment): room for 10 of them.
    s.file.segments_max_for_tests = Some(10);
    let r = sums.reserve(&mut s, 16 * 1500);
    assert!(matches!(r, Err(StateError::StoreFull { .. })), "{r:?}");
    let Some(d) = s.tables[sums.table().index()].dense.as_ref() else { panic!("not dense") };
    assert!(d.bins.iter().all(|db| !db.exists()));
    check_lookup_entries(&s);
    for h in &s.heaps {
        assert_eq!(h.dead, h.used, "space taken by the failed reservation is not all garbage");
    }
    s.file.segments_max_for_tests = None;
    let keys: Vec<u64> = (0..3000).collect();
    let hashes: Vec<u64> = keys.iter().map(|&k| hash_u64(k)).collect();
    ok(sums.update_burst(&mut s, &hashes, &keys, |_, old| old.unwrap_or(0) + 1, |_, _| {}));
    for (&k, &h) in keys.iter().zip(&hashes) {
        assert_eq!(sums.get(&s, h, &k), Some(1), "key {k}");
    }
}

/// The bytes of part 0 of bin 0 of table 0 (record header included).
fn part_record(s: &StateStore) -> (Vec<u8>, Header, u64) {
    let d = s.tables[0].dense.as_ref().map(|d| d.bins[0].first.loc);
    let loc = d.unwrap_or(NONE);
    let h = Header::read(s.file.bytes(loc, HEADER));
    (s.file.bytes(loc, h.record_bytes()).to_vec(), h, loc)
}

#[test]
fn a_restored_part_is_checked_slot_by_slot() {
    let dir = tmp();
    let mut s = ok(StateStore::create(StoreConfig::new(dir.path(), 0), BinRange::all(0)));
    let mut sums = ok(ValueState::<u64, u64>::register(&mut s, "sums"));
    for k in 0..5u64 {
        ok(sums.update(&mut s, hash_u64(k), &k, |_| k));
    }
    let (r, h, loc) = part_record(&s);
    let info = check_part(&r, &h, loc, 0, 0).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((info.len, info.key_len, info.val_len, info.slots_log2), (5, 8, 8, SLOTS_LOG2_MIN));
    let ctrl = HEADER + PART_HEAD;
    let slots = 1usize << SLOTS_LOG2_MIN;
    let full = (0..slots).find(|&j| r[ctrl + j] != 0).unwrap_or(0);
    let empty = (0..slots).find(|&j| r[ctrl + j] == 0).unwrap_or(0);
    let damaged = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut b = r.clone();
        f(&mut b);
        check_part(&b, &h, loc, 0, 0).err()
    };
    // A tag that does not match the slot's hash.
    let e = damaged(&|b| b[ctrl + full] ^= 0x01);
    assert!(e.as_deref().is_some_and(|e| e.contains("tag") || e.contains("mirror")), "{e:?}");
    // A mirror byte that differs.
    assert!(damaged(&|b| b[ctrl + slots] ^= 0x40).is_some_and(|e| e.contains("mirror")));
    // Too many keys for the part, and a size that does not fit.
    assert!(damaged(&|b| b[HEADER + 5] = 2).is_some());
    assert!(damaged(&|b| b[HEADER + 4] = 40).is_some());
    // An occupied byte where a slot was empty (its hash is zeros, whose
    // tag is 0x80).
    let e = damaged(&|b| {
        b[ctrl + empty] = 0x81;
        if empty < GROUP {
            b[ctrl + slots + empty] = 0x81;
        }
    });
    assert!(e.is_some_and(|e| e.contains("tag")), "a slot whose tag is not its hash's is refused");
}

#[test]
fn a_record_table_merges_into_a_dense_one_and_back() {
    let sig = TypeSig { id: std::any::TypeId::of::<ValueState<u64, u64>>(), name: "ValueState<u64, u64>" };
    let (da, db) = (tmp(), tmp());
    let mut a = ok(StateStore::create(StoreConfig::new(da.path(), 2), BinRange::new(0, 2)));
    let mut b = ok(StateStore::create(StoreConfig::new(db.path(), 2), BinRange::new(2, 4)));
    let ta = ok(a.typed_table("sums", sig, Some((8, 8))));
    // A record table of the same handle type (as a restore of an
    // older checkpoint gives).
    let tb = ok(b.typed_table("sums", sig, None));
    let mut want = Vec::new();
    for k in 0..400u64 {
        let h = hash_u64(k);
        let (s, t) = if crate::bin_of(h, 2) < 2 { (&mut a, ta) } else { (&mut b, tb) };
        ok(s.put_impl(t, h, &k.to_le_bytes(), &(k * 3).to_le_bytes()));
        want.push((h, k.to_le_bytes().to_vec(), (k * 3).to_le_bytes().to_vec()));
    }
    want.sort();
    let dump = |s: &StateStore, t: TableId| {
        let mut v = Vec::new();
        s.for_each(t, |h, k, val| v.push((h, k.to_vec(), val.to_vec())));
        v.sort();
        v
    };
    ok(a.merge(b));
    assert!(a.tables[0].dense.is_some());
    assert_eq!(dump(&a, ta), want);
    // And a dense table into a record one.
    let dc = tmp();
    let mut c = ok(StateStore::create(StoreConfig::new(dc.path(), 2), BinRange::new(0, 2)));
    let tc = ok(c.typed_table("sums", sig, None));
    let moved = ok(a.split_off(BinRange::new(2, 4)));
    ok(c.merge(moved));
    assert!(c.tables[0].dense.is_none());
    let mut rest = dump(&c, tc);
    rest.extend(dump(&a, ta));
    rest.sort();
    assert_eq!(rest, want);
}

/// The bytes of `m`, lowest first.
fn all(mut m: Matches) -> Vec<usize> {
    let mut v = Vec::new();
    while !m.none() {
        v.push(m.lowest());
        m = m.rest();
    }
    v
}

#[test]
fn tag_and_empty_matching_are_exact_where_it_matters() {
    // Control bytes: empty, tag 0x85, tag 0x84 (differs in the lowest
    // bit), empty, tag 0x85, ...
    let bytes = [0x00u8, 0x85, 0x84, 0x00, 0x85, 0xff, 0x80, 0x00];
    let g = Group::at(&bytes, 0);
    let hits = all(g.match_tag(0x85));
    // Every true match is found; no empty byte is a candidate.
    assert!(hits.contains(&1) && hits.contains(&4), "{hits:?}");
    assert!(!hits.contains(&0) && !hits.contains(&3) && !hits.contains(&7), "{hits:?}");
    assert_eq!(all(g.match_empty()), vec![0, 3, 7]);
    // A full group has no empty byte; a tag found nowhere, no match.
    let full = [0x81u8; GROUP];
    assert!(Group::at(&full, 0).match_empty().none());
    assert!(Group::at(&full, 0).match_tag(0x82).none());
    assert_eq!(all(Group::at(&full, 0).match_tag(0x81)), (0..GROUP).collect::<Vec<_>>());
}

#[test]
fn first_empty_wraps_through_the_mirror() {
    // 8 slots: all full but slot 2; the mirror repeats the first 8.
    let mut ctrl = [0x81u8; 16];
    ctrl[2] = 0;
    ctrl[10] = 0;
    // Home 6: slots 6, 7, then 0, 1 are full, 2 is empty.
    assert_eq!(first_empty(&ctrl, 6, 8), 2);
    assert_eq!(first_empty(&ctrl, 2, 8), 2);
}
