//! A user's own query, as a crate of its own would write it: its record
//! types (a struct with a `String` and an enum, made Spate records with
//! `#[spate::record]`), its typed parameters, and its dataflow, registered
//! by name beside the built-ins (`src/main.rs`), so that this crate's
//! binary is the `spate` command for it: `own-query run`, `own-query
//! cluster`, `own-query bench latency --query vwap ...`.
//!
//! `vwap`: generated trades, keyed by symbol, a volume-weighted average
//! price per symbol for each tumbling window of `window_trades` trades
//! (event time = the trade's sequence number), with the bought and sold
//! volume; one line per (window, symbol): `start symbol vwap buys sells`.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};
use spate::prelude::*;
use spate::registry::{Params, Registry, ResultSink};

/// The symbols trades are generated for.
pub const SYMBOLS: &[&str] = &["AAPL", "MSFT", "NVDA", "AMZN", "GOOG", "META", "TSLA", "ORCL"];

/// Which side of the book took liquidity.
#[spate::record]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// A buyer took an offer.
    Buy,
    /// A seller hit a bid.
    Sell,
}

/// One trade.
#[spate::record]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trade {
    /// Its sequence number: its event time.
    pub seq: u64,
    /// The instrument.
    pub symbol: String,
    /// Who took liquidity.
    pub side: Side,
    /// Price, in cents.
    pub price_cents: u64,
    /// Shares.
    pub qty: u64,
}

/// What a window keeps per symbol: kept in Spate's window state (so it is
/// checkpointed and restored with it).
#[spate::record]
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Volume {
    /// Sum of price × quantity, in cent-shares.
    pub notional: u64,
    /// Shares bought.
    pub bought: u64,
    /// Shares sold.
    pub sold: u64,
}

impl Volume {
    /// Adds a trade.
    pub fn add(&mut self, t: &Trade) {
        self.notional += t.price_cents * t.qty;
        match t.side {
            Side::Buy => self.bought += t.qty,
            Side::Sell => self.sold += t.qty,
        }
    }

    /// The volume-weighted average price, in cents, rounded down.
    pub fn vwap_cents(&self) -> u64 {
        self.notional / (self.bought + self.sold).max(1)
    }
}

/// `[query.params]` of `vwap`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct VwapParams {
    /// Trades in all.
    pub trades: u64,
    /// How many of [`SYMBOLS`] trade.
    pub symbols: u64,
    /// Window length, in trades of all symbols.
    pub window_trades: u64,
    /// Trades per second; 0 = as fast as possible.
    pub rate: u64,
}

impl Default for VwapParams {
    fn default() -> Self {
        Self { trades: 100_000, symbols: 4, window_trades: 10_000, rate: 0 }
    }
}

impl Params for VwapParams {
    const ABOUT: &'static str = "generated trades, a VWAP and volumes per symbol per window of trades";
    const DOCS: &'static [(&'static str, &'static str)] = &[
        ("trades", "trades in all"),
        ("symbols", "how many symbols trade"),
        ("window_trades", "window length, in trades of all symbols"),
        ("rate", "trades per second; 0 = as fast as possible"),
    ];
    const RANGES: &'static [(&'static str, u64, u64)] =
        &[("symbols", 1, SYMBOLS.len() as u64), ("window_trades", 1, u64::MAX)];

    fn set_load(&mut self, records: u64, rate_per_s: Option<u64>) -> Result<(), String> {
        self.trades = records;
        self.rate = rate_per_s.unwrap_or(0);
        Ok(())
    }
}

/// Trade `i` of the generator (deterministic: a checkpointed source
/// replays from an index).
pub fn trade(i: u64, symbols: u64) -> Trade {
    let x = mix(i);
    Trade {
        seq: i,
        symbol: SYMBOLS[(x % symbols) as usize].to_string(),
        side: if (x >> 8) & 1 == 0 { Side::Buy } else { Side::Sell },
        price_cents: 10_000 + (x >> 16) % 1_000,
        qty: 1 + (x >> 32) % 100,
    }
}

/// SplitMix64.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// A result line: `start symbol vwap_cents bought sold`.
pub fn line(start: u64, symbol: &str, v: &Volume, out: &mut String) {
    let _ = write!(out, "{start} {symbol} {} {} {}", v.vwap_cents(), v.bought, v.sold);
}

/// The built-in queries and `vwap`: what this crate's binary runs.
pub fn registry() -> Registry {
    Registry::builtin().add("vwap", build)
}

/// The `vwap` query: what `Registry::add` is given.
pub fn build(df: &Dataflow, p: &VwapParams, sink: &ResultSink) {
    let symbols = p.symbols;
    let spec = GeneratorSpec {
        records: Some(p.trades),
        rate_per_s: (p.rate > 0).then_some(p.rate),
        offset: 0,
        burst: 0,
    };
    let volumes = df
        .generate("trades", spec, move |i| trade(i, symbols), |i| i)
        .key_by("by-symbol", |t: &Trade| t.symbol.clone())
        .window(Window::tumbling(p.window_trades), |t: &Trade| t.seq)
        .aggregate("volume", Volume::default, |v, t| v.add(t));
    sink.attach(&volumes, |(symbol, start, _end, v), out| line(*start, symbol, v, out));
}
