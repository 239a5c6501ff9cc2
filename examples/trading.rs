//! An embedded trading-style pipeline: orders are pushed in from another
//! thread, partitioned by symbol, folded into a running VWAP (volume-weighted
//! average price) per symbol in keyed state, and an order that trades more
//! than 2% away from its symbol's VWAP so far is reported as a signal.
//!
//! ```text
//! cargo run --release --example trading
//! ```
//!
//! Prices are in cents; all arithmetic is integer, so the output is the same
//! on every run (the generator is seeded).

use std::time::Duration;

use spate::prelude::*;
use spate::queries::splitmix64;

/// An order: (symbol, price in cents, quantity).
type Order = (u64, u64, u64);
/// Per symbol: (notional in cent-shares, volume, last price).
type Vwap = (u64, u64, u64);
/// A signal: (symbol, last price, VWAP), both in cents.
type Signal = (u64, u64, u64);

const SYMBOLS: u64 = 16;
const ORDERS: u64 = 200_000;
/// Orders per second the feed thread sends (open loop).
const RATE_PER_S: u64 = 100_000;

fn main() {
    let data_dir = std::env::temp_dir().join(format!("spate-trading-{}", std::process::id()));
    let (orders, source) = spate::input::<Order>(4096);
    let (sink, signals) = spate::output::<Signal>(4096);
    let config = RuntimeConfig { workers: 2, pin: false, data_dir: data_dir.clone(), ..Default::default() };
    let job = Runtime::new(config)
        .start("trading", move |df: &Dataflow| {
            df.input("orders", &source)
                .key_by("by-symbol", |o: &Order| o.0)
                .fold(
                    "vwap",
                    || (0u64, 0u64, 0u64),
                    |v: &mut Vwap, o: &Order| {
                        v.0 += o.1 * o.2;
                        v.1 += o.2;
                        v.2 = o.1;
                    },
                )
                .map("to-signal", |(symbol, v): (u64, Vwap)| (symbol, v.2, v.0 / v.1.max(1)))
                // More than 2% away from the VWAP: 50 * |last - vwap| > vwap.
                .filter("signals", |s: &Signal| 50 * s.1.abs_diff(s.2) > s.2)
                .output("out", &sink);
        })
        .unwrap_or_else(|e| panic!("cannot start the job: {e}"));
    let metrics = job.metrics().clone();

    // The feed: a random walk per symbol around $100, sent at a fixed rate
    // and stamped with each order's *intended* send time, so that a stall
    // shows in the latency instead of slowing the feed.
    let feed = std::thread::spawn(move || {
        let start = spate::now_ns();
        let mut price = [10_000u64; SYMBOLS as usize];
        for i in 0..ORDERS {
            let x = splitmix64(i);
            let symbol = x % SYMBOLS;
            let p = &mut price[symbol as usize];
            *p = (*p + (x >> 8) % 61).saturating_sub(30).max(100);
            let due = start + i * 1_000_000_000 / RATE_PER_S;
            // Sleep rather than spin until the order is due: on a small
            // machine a spinning feed thread takes a core from the workers.
            let now = spate::now_ns();
            if due > now {
                std::thread::sleep(Duration::from_nanos(due - now));
            }
            if orders.send_at((symbol, *p, 1 + (x >> 20) % 100), due).is_err() {
                return; // the job has gone
            }
        }
        // Dropping `orders` ends the stream.
    });

    let mut count = 0u64;
    loop {
        match signals.recv_timeout(Duration::from_secs(10)) {
            Ok(Some((symbol, last, vwap))) => {
                if count < 5 {
                    let (last, vwap) = (last as f64 / 100.0, vwap as f64 / 100.0);
                    println!("signal: symbol {symbol:2} at ${last:.2}, VWAP ${vwap:.2}");
                }
                count += 1;
            }
            Ok(None) => break, // the job has ended
            Err(_) => {
                // Never hang: the feed may be blocked on a full input.
                let done = metrics.records_in.load(std::sync::atomic::Ordering::Relaxed);
                eprintln!("no signal for 10 s and the job has not ended ({done} orders in): giving up");
                std::process::exit(1);
            }
        }
    }
    let _ = feed.join();
    let report = job.wait().unwrap_or_else(|e| panic!("the job failed: {e}"));
    let _ = std::fs::remove_dir_all(&data_dir);

    let h = metrics.latency();
    println!(
        "{} orders, {count} signals in {:.2} s; signal latency from intended send: \
         p50 {} µs, p99 {} µs, p99.9 {} µs, max {} µs",
        report.records_in,
        report.elapsed.as_secs_f64(),
        h.value_at_quantile(0.5) / 1000,
        h.value_at_quantile(0.99) / 1000,
        h.value_at_quantile(0.999) / 1000,
        h.max() / 1000
    );
}
