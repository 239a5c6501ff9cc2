//! Checkpoint and restore figures of the state store.
//!
//! `STATE_MB=256 DIRTY_PERCENT=1 cargo run -p spate-state --release --example checkpoint_bench`
//!
//! Fills a store with a keyed running sum (`ValueState<u64, u64>`) until its
//! bins' segments take `STATE_MB` MiB (default 256; the full image's size), takes a full checkpoint into a
//! file-backed [`BackupStore`] (page cache durability) in a temporary
//! directory, then `RUNS` times (default 5) updates random keys until
//! `DIRTY_PERCENT` percent (default 1) of the state's pages are dirty and
//! takes an incremental checkpoint, streaming its chunks into the backup.
//! Finally restores the store from the backup (full image plus increments).
//!
//! Prints one JSON object: `state_bytes`, `checkpoint_bytes` (median
//! increment), `checkpoint_ms` (median time of `StateStore::checkpoint`: the
//! pause of the processing thread, which copies the dirty pages out),
//! `backup_ms` (median time to receive the chunks into the backup),
//! `full_checkpoint_ms`, `restore_ms` (median of `RESTORES`, default 3),
//! `restore_mb_per_s` (state bytes per second of restore). Environment: also `BINS_LOG2` (default 12),
//! `TMPDIR` for where the store and the backup live.

use std::time::Instant;

use spate_state::{hash_u64, BackupStore, BinRange, Durability, StateStore, StoreConfig, ValueState};

fn env<T: std::str::FromStr>(name: &str, default: T) -> Result<T, Box<dyn std::error::Error>>
where
    T::Err: std::error::Error + 'static,
{
    Ok(std::env::var(name).ok().map(|s| s.parse()).transpose()?.unwrap_or(default))
}

fn xorshift(s: &mut u64) -> u64 {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    *s
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let state_mb: u64 = env("STATE_MB", 256)?;
    let dirty_percent: f64 = env("DIRTY_PERCENT", 1.0)?;
    let runs: usize = env("RUNS", 5)?;
    let bins_log2: u8 = env("BINS_LOG2", 12)?;
    let restores: usize = env("RESTORES", 3)?;
    let dir = tempfile::tempdir()?;
    let config = StoreConfig::new(dir.path().join("store"), bins_log2);
    let mut store = StateStore::create(config.clone(), BinRange::all(bins_log2))?;
    store.set_checkpoint_full_every(u32::MAX);
    let mut sums = ValueState::<u64, u64>::register(&mut store, "sums")?;

    // Fill until the bins' segments take `STATE_MB`.
    let target = state_mb << 20;
    let mut keys = 0u64;
    while store.segment_bytes_in_use() < target {
        for _ in 0..100_000 {
            sums.put(&mut store, hash_u64(keys), &keys, &keys)?;
            keys += 1;
        }
    }
    let mut backup = BackupStore::open(dir.path().join("backup"), Durability::PageCache)?;
    let t = Instant::now();
    let full = store.checkpoint(1, b"meta")?;
    let full_checkpoint_ms = t.elapsed().as_secs_f64() * 1e3;
    let state_bytes = full.page_count() * 4096;
    for c in full.chunks() {
        backup.receive("bench", c)?;
    }
    drop(full);

    let pages = state_bytes / 4096;
    let want_dirty = ((pages as f64 * dirty_percent / 100.0) as usize).max(1);
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let (mut ck_ms, mut backup_ms, mut ck_bytes) = (Vec::new(), Vec::new(), Vec::new());
    for run in 0..runs {
        while store.dirty_page_count() < want_dirty {
            let k = xorshift(&mut rng) % keys;
            sums.update(&mut store, hash_u64(k), &k, |v| v.unwrap_or(0) + 1)?;
        }
        let t = Instant::now();
        let ck = store.checkpoint(run as u64 + 2, b"meta")?;
        ck_ms.push(t.elapsed().as_secs_f64() * 1e3);
        ck_bytes.push(ck.bytes() as f64);
        let t = Instant::now();
        let mut ack = None;
        for c in ck.chunks() {
            ack = backup.receive("bench", c)?;
        }
        backup_ms.push(t.elapsed().as_secs_f64() * 1e3);
        if ack.is_none() {
            return Err("checkpoint not acknowledged".into());
        }
    }
    let mut restore_times = Vec::new();
    let mut last = None;
    for _ in 0..restores {
        drop(last.take());
        let t = Instant::now();
        let restore_config = StoreConfig::new(dir.path().join("restored"), bins_log2);
        let r = StateStore::restore(restore_config, &backup, "bench")?;
        restore_times.push(t.elapsed().as_secs_f64() * 1e3);
        last = Some(r);
    }
    let restore_ms = median(&mut restore_times);
    let (restored, _, id) = last.ok_or("no restore")?;
    // Spot-check the restored state against the live one.
    let mut restored = restored;
    let mut check = ValueState::<u64, u64>::register(&mut restored, "sums")?;
    for _ in 0..10_000 {
        let k = xorshift(&mut rng) % keys;
        if check.get(&restored, hash_u64(k), &k) != sums.get(&store, hash_u64(k), &k) {
            return Err(format!("restored state differs at key {k}").into());
        }
    }
    if check.len(&restored) != sums.len(&store) {
        return Err("restored state has another number of keys".into());
    }
    println!(
        "{{\"state_mb\": {state_mb}, \"dirty_percent\": {dirty_percent}, \"keys\": {keys}, \"state_bytes\": {state_bytes}, \
         \"checkpoint_bytes\": {:.0}, \"checkpoint_bytes_percent_of_state\": {:.3}, \"checkpoint_ms\": {:.3}, \
         \"backup_ms\": {:.3}, \"full_checkpoint_ms\": {full_checkpoint_ms:.1}, \"restore_ms\": {restore_ms:.1}, \
         \"restore_mb_per_s\": {:.0}, \"restored_checkpoint\": {id}, \"runs\": {runs}}}",
        median(&mut ck_bytes),
        median(&mut ck_bytes.clone()) * 100.0 / state_bytes as f64,
        median(&mut ck_ms),
        median(&mut backup_ms),
        state_bytes as f64 / (1 << 20) as f64 / (restore_ms / 1e3),
    );
    Ok(())
}
