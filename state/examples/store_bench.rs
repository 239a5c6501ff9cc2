//! Hot-path figure of the state store: a keyed running sum,
//! `ValueState<u64, u64>::update`, over 100 000 distinct keys spread over 2048
//! bins, keys drawn uniformly at random (fixed seed).
//!
//! `cargo run -p spate-state --release --example store_bench [updates_per_run] [runs]`
//!
//! Environment: `KEYS` (distinct keys, default 100 000), `SEGMENT_BYTES`
//! (default 64 KiB), `BINS_LOG2` (default 11). Also runs the update with a
//! prefetch a few records ahead, with a two-stage prefetch (index slot, then
//! record), the raw fixed-size path, and std's `HashMap` as a reference.
//!
//! Prints ns/update per run, then the median, min and max, and a checksum of
//! the final state (so that a change in results shows up; it depends on the
//! number of runs and of variants).

use std::time::Instant;

use spate_state::{hash_u64, BinRange, StateStore, StoreConfig, ValueState};

const KEYS_DEFAULT: u64 = 100_000;
const BINS_LOG2_DEFAULT: u8 = 11;

fn xorshift(s: &mut u64) -> u64 {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    *s
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let updates: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(10_000_000);
    let runs: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(5);
    let key_count: u64 = std::env::var("KEYS").ok().map(|s| s.parse()).transpose()?.unwrap_or(KEYS_DEFAULT);

    let bins_log2: u8 =
        std::env::var("BINS_LOG2").ok().map(|s| s.parse()).transpose()?.unwrap_or(BINS_LOG2_DEFAULT);
    let dir = tempfile::tempdir()?;
    let segment_bytes = std::env::var("SEGMENT_BYTES").ok().map(|s| s.parse()).transpose()?;
    let mut config = StoreConfig::new(dir.path(), bins_log2);
    if let Some(s) = segment_bytes {
        config = config.with_segment_bytes(s);
    }
    let mut store = StateStore::create(config, BinRange::all(bins_log2))?;
    let mut sums = ValueState::<u64, u64>::register(&mut store, "sums")?;

    // The routing hash travels with the record: precompute it, as the
    // key_by operator does before the state is reached.
    let mut seed = 0x5EED_u64;
    let keys: Vec<(u64, u64)> = (0..updates)
        .map(|_| {
            let k = xorshift(&mut seed) % key_count;
            (k, hash_u64(k))
        })
        .collect();

    // Warm up: every key inserted, buffers grown.
    for k in 0..key_count {
        sums.update(&mut store, hash_u64(k), &k, |old| old.unwrap_or(0))?;
    }

    let mut per_run = Vec::with_capacity(runs);
    for run in 0..runs {
        let start = Instant::now();
        for &(k, h) in &keys {
            sums.update(&mut store, h, &k, |old| old.unwrap_or(0).wrapping_add(k))?;
        }
        let ns = start.elapsed().as_nanos() as f64 / updates as f64;
        println!("run {run}: {ns:.1} ns/update (typed ValueState<u64,u64>::update)");
        per_run.push(ns);
    }
    per_run.sort_by(f64::total_cmp);
    println!(
        "ValueState::update: median {:.1} ns, min {:.1} ns, max {:.1} ns over {runs} runs of {updates}; \
         {} keys, {} segments, {} dirty pages",
        per_run[runs / 2],
        per_run[0],
        per_run[runs - 1],
        sums.len(&store),
        store.segment_count(),
        store.dirty_page_count()
    );

    // The same, prefetching a few records ahead as an operator walking a
    // batch does.
    for distance in [4usize, 8, 16] {
        let mut per_run_pf = Vec::with_capacity(runs);
        for _ in 0..runs {
            let start = Instant::now();
            for (i, &(k, h)) in keys.iter().enumerate() {
                if let Some(&(_, ahead)) = keys.get(i + distance) {
                    sums.prefetch(&store, ahead);
                }
                sums.update(&mut store, h, &k, |old| old.unwrap_or(0).wrapping_add(k))?;
            }
            per_run_pf.push(start.elapsed().as_nanos() as f64 / updates as f64);
        }
        per_run_pf.sort_by(f64::total_cmp);
        println!(
            "ValueState::update with prefetch {distance} ahead: median {:.1} ns, min {:.1} ns, max {:.1} ns",
            per_run_pf[runs / 2],
            per_run_pf[0],
            per_run_pf[runs - 1]
        );
    }

    // Two-stage prefetch: the index slot 16 records ahead, then (the slot
    // now cached) the record 8 ahead.
    let mut per_run_pf2 = Vec::with_capacity(runs);
    for _ in 0..runs {
        let start = Instant::now();
        for (i, &(k, h)) in keys.iter().enumerate() {
            if let Some(&(_, ahead)) = keys.get(i + 16) {
                sums.prefetch_index(&store, ahead);
            }
            if let Some(&(_, ahead)) = keys.get(i + 8) {
                sums.prefetch(&store, ahead);
            }
            sums.update(&mut store, h, &k, |old| old.unwrap_or(0).wrapping_add(k))?;
        }
        per_run_pf2.push(start.elapsed().as_nanos() as f64 / updates as f64);
    }
    per_run_pf2.sort_by(f64::total_cmp);
    println!(
        "ValueState::update with two-stage prefetch (index 16, record 8 ahead): median {:.1} ns, min {:.1} ns, \
         max {:.1} ns",
        per_run_pf2[runs / 2],
        per_run_pf2[0],
        per_run_pf2[runs - 1]
    );

    // The raw fixed-size fast path, for comparison.
    let raw = store.table("raw_sums")?;
    let mut per_run_raw = Vec::with_capacity(runs);
    for _ in 0..runs {
        let start = Instant::now();
        for &(k, h) in &keys {
            let v = store.get_or_insert_fixed(raw, h, &k.to_le_bytes(), 8, |_| {})?;
            let mut w = [0u8; 8];
            w.copy_from_slice(v);
            v.copy_from_slice(&u64::from_le_bytes(w).wrapping_add(k).to_le_bytes());
        }
        per_run_raw.push(start.elapsed().as_nanos() as f64 / updates as f64);
    }
    per_run_raw.sort_by(f64::total_cmp);
    println!(
        "raw get_or_insert_fixed: median {:.1} ns, min {:.1} ns, max {:.1} ns",
        per_run_raw[runs / 2],
        per_run_raw[0],
        per_run_raw[runs - 1]
    );

    // Reference: std's HashMap on the heap, same keys, same order.
    let mut map = std::collections::HashMap::<u64, u64>::with_capacity(key_count as usize);
    for k in 0..key_count {
        map.insert(k, 0);
    }
    let mut per_run_map = Vec::with_capacity(runs);
    for _ in 0..runs {
        let start = Instant::now();
        for &(k, _) in &keys {
            let v = map.entry(k).or_insert(0);
            *v = v.wrapping_add(k);
        }
        per_run_map.push(start.elapsed().as_nanos() as f64 / updates as f64);
    }
    per_run_map.sort_by(f64::total_cmp);
    println!(
        "reference std HashMap<u64, u64> entry update: median {:.1} ns, min {:.1} ns, max {:.1} ns",
        per_run_map[runs / 2],
        per_run_map[0],
        per_run_map[runs - 1]
    );

    let mut checksum = 0u64;
    sums.for_each(&store, |h, k, v| checksum = checksum.wrapping_add(h ^ k.wrapping_mul(31) ^ v));
    println!("checksum {checksum:#018x}");
    Ok(())
}
