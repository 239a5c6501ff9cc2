//! What a handoff's parcel costs between two threads over loopback, with
//! nothing else running: the phases of a step between nodes without the
//! job around them (docs/ARCHITECTURE.md, *Handoff*).
//!
//! `STATE_MB=256 cargo run -p spate-core --release --example parcel_bench`
//!
//! Fills a store with a keyed running sum (`ValueState<u64, u64>`) until its
//! bins' segments take `STATE_MB` MiB (default 256), then `RUNS` times
//! (default 3): splits off the upper half of the bins (`split_off`, as the
//! giving worker does), sends them with `replica::send_parcel` to a
//! `replica::receive_parcel` on another thread over a loopback connection,
//! and merges the rebuilt store back (as the taking worker does).
//!
//! Prints one JSON object of medians: `moved_bytes`, `split_ms`,
//! `send_ms` (connection to acknowledgement, on the sending thread),
//! `received_ms` and `rebuilt_ms` (the receiver's own figures),
//! `merge_ms`, `total_ms` (split to merge), `mb_per_s` (moved bytes per
//! second of `total_ms`). Environment: also `BINS_LOG2` (default 12),
//! `TMPDIR`.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use spate_core::replica::{parcel_hello_name, receive_parcel, send_parcel};
use spate_core::spate_state::{hash_u64, BinRange, StateStore, StoreConfig, ValueState};
use spate_net::{Listener, NetConfig};

fn env<T: std::str::FromStr>(name: &str, default: T) -> Result<T, Box<dyn std::error::Error>>
where
    T::Err: std::error::Error + 'static,
{
    Ok(std::env::var(name).ok().map(|s| s.parse()).transpose()?.unwrap_or(default))
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let state_mb: u64 = env("STATE_MB", 256)?;
    let runs: usize = env("RUNS", 3)?;
    let bins_log2: u8 = env("BINS_LOG2", 12)?;
    let dir = tempfile::tempdir()?;
    let config = StoreConfig::new(dir.path().join("store"), bins_log2);
    let mut store = StateStore::create(config, BinRange::all(bins_log2))?;
    let mut sums = ValueState::<u64, u64>::register(&mut store, "sums")?;
    let mut keys = 0u64;
    while store.segment_bytes_in_use() < state_mb << 20 {
        for _ in 0..100_000 {
            sums.put(&mut store, hash_u64(keys), &keys, &keys)?;
            keys += 1;
        }
    }
    let cluster = 7;
    let mut listener = Listener::bind("127.0.0.1:0".parse::<SocketAddr>()?, NetConfig::new("b", cluster))?;
    let addr = listener.local_addr();
    let upper = BinRange::new(1 << (bins_log2 - 1), 1 << bins_log2);
    let timeout = Duration::from_secs(60);
    let mut f = [(); 6].map(|_| Vec::new());
    let mut moved = 0;
    for run in 0..runs {
        let t0 = Instant::now();
        let part = store.split_off(upper)?;
        let split = t0.elapsed();
        let hello = parcel_hello_name(run as u64 + 1, 1);
        let sender = std::thread::spawn(move || {
            let t = Instant::now();
            send_parcel(addr, cluster, hello, "sum", part, timeout).map(|b| (b, t.elapsed()))
        });
        let deadline = Instant::now() + timeout;
        let conn = loop {
            if let Some(c) = listener.poll_accept()? {
                break c;
            }
            if Instant::now() > deadline {
                return Err("no parcel connection".into());
            }
            std::thread::sleep(Duration::from_micros(50));
        };
        let into = StoreConfig::new(dir.path().join(format!("in-{run}")), bins_log2);
        let parcel = receive_parcel(conn, into, timeout)?;
        let (bytes, sent) = sender.join().map_err(|_| "the sender panicked")??;
        let t = Instant::now();
        store.merge(parcel.store)?;
        let merge = t.elapsed();
        moved = bytes;
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        for (v, x) in f.iter_mut().zip([
            ms(split),
            ms(sent),
            parcel.received_us as f64 / 1e3,
            parcel.rebuilt_us as f64 / 1e3,
            ms(merge),
            ms(t0.elapsed()),
        ]) {
            v.push(x);
        }
    }
    let [split, send, received, rebuilt, merge, total] = f.map(|mut v| median(&mut v));
    println!(
        "{{\"moved_bytes\":{moved},\"split_ms\":{split:.1},\"send_ms\":{send:.1},\"received_ms\":{received:.1},\
         \"rebuilt_ms\":{rebuilt:.1},\"merge_ms\":{merge:.1},\"total_ms\":{total:.1},\"mb_per_s\":{:.0}}}",
        moved as f64 / (1 << 20) as f64 / (total / 1e3)
    );
    Ok(())
}
