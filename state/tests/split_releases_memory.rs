//! Bins split off a store give their memory back to the system: after a
//! handoff's split the giving worker holds its remaining bins, not a copy
//! of what left (issue 23: "moving bins costs at most about one step's
//! bytes extra on each side"). Alone in its binary, so that the process's
//! resident memory is this test's.

use spate_state::{hash_u64, BinRange, StateStore, StoreConfig, ValueState};

fn rss_bytes() -> u64 {
    let statm =
        std::fs::read_to_string("/proc/self/statm").unwrap_or_else(|e| panic!("/proc/self/statm: {e}"));
    let pages: u64 =
        statm.split_whitespace().nth(1).and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("{statm}"));
    pages * 4096
}

#[test]
fn splitting_bins_off_returns_their_memory() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let mut store = StateStore::create(StoreConfig::new(dir.path().join("s"), 8), BinRange::all(8))
        .unwrap_or_else(|e| panic!("{e}"));
    let mut sums = ValueState::<u64, u64>::register(&mut store, "sums").unwrap_or_else(|e| panic!("{e}"));
    let mut k = 0u64;
    while store.segment_bytes_in_use() < 96 << 20 {
        sums.put(&mut store, hash_u64(k), &k, &k).unwrap_or_else(|e| panic!("{e}"));
        k += 1;
    }
    let full = rss_bytes();
    let upper = store.split_off(BinRange::new(128, 256)).unwrap_or_else(|e| panic!("{e}"));
    let moved = upper.segment_bytes_in_use();
    drop(upper);
    let after = rss_bytes();
    assert!(moved > 32 << 20, "only {moved} bytes moved");
    // Without the release the split's source keeps every page resident
    // and the copy's are gone again: the RSS would not fall.
    assert!(
        after + moved / 2 < full,
        "resident memory {} MiB before the split, {} MiB after it and dropping the {} MiB that left",
        full >> 20,
        after >> 20,
        moved >> 20
    );
    // The bins that stay are intact.
    for key in (0..k).step_by(997) {
        let bin = spate_state::bin_of(hash_u64(key), 8);
        if bin < 128 {
            assert_eq!(sums.get(&store, hash_u64(key), &key), Some(key));
        }
    }
}
