//! NEXMark: the auction-site benchmark of Flink, RisingWave, Arroyo and
//! Megaphone, on Spate.
//!
//! - [`model`]: `Person`, `Auction`, `Bid` and `Event`, their JSON lines
//!   (nexmark-flink's field names, times in epoch ms).
//! - [`generator`]: the event generator, after nexmark-flink's, every
//!   field a function of the seed and the event number.
//! - [`queries`]: the queries, registered as `nexmark-q0` ... by
//!   [`register`], in event time, with nexmark-flink's SQL semantics;
//!   their results as JSON lines named by the SQL's output columns.
//!
//! Every query reads its events from the generator (each worker makes
//! every W-th event: no overlap, replayable from `offset`) or, with
//! `events_file`, from a file of JSON lines (`spate nexmark generate`
//! writes one), read by worker 0. The watermark is the event time less
//! `watermark_lag_ms` (4 s, nexmark-flink's DDL): for the generator, of
//! the next event's out-of-order group (the least time still to come);
//! for a file, of the latest event read.

pub mod generator;
pub mod model;
pub mod queries;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use spate_core::{Dataflow, Stream};
use spate_ops::prelude::*;

use crate::registry::Params;
use generator::{GeneratorConfig, NexmarkGenerator};
use model::{parse_event, Event};

pub use queries::register;

/// `[query.params]` of every `nexmark-qN` query.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct NexmarkParams {
    /// Events in all (0: unbounded).
    pub events: u64,
    /// Events per second of event time (nexmark-flink's TPS).
    pub tps: u64,
    /// Generator seed.
    pub seed: u64,
    /// Events per second of wall-clock time; 0 = as fast as possible.
    pub rate: u64,
    /// The first event number (a replay from an offset).
    pub offset: u64,
    /// Events are shuffled in event time within groups of this many (1:
    /// in order; nexmark-flink's `outOfOrderGroupSize`).
    pub out_of_order_group: u64,
    /// The event time of event 0, epoch ms.
    pub base_time_ms: u64,
    /// The watermark lags event time by this much, ms.
    pub watermark_lag_ms: u64,
    /// Read the events from this file of JSON lines instead of the
    /// generator.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub events_file: Option<PathBuf>,
}

impl Default for NexmarkParams {
    fn default() -> Self {
        let g = GeneratorConfig::default();
        Self {
            events: 10_000_000,
            tps: g.tps,
            seed: g.seed,
            rate: 0,
            offset: 0,
            out_of_order_group: g.out_of_order_group,
            base_time_ms: g.base_time_ms,
            watermark_lag_ms: 4000,
            events_file: None,
        }
    }
}

impl Params for NexmarkParams {
    const ABOUT: &'static str = "a NEXMark query over generated (or file) events";
    const DOCS: &'static [(&'static str, &'static str)] = &[
        ("events", "events in all (0: unbounded)"),
        ("tps", "events per second of event time (nexmark-flink's TPS)"),
        ("seed", "generator seed"),
        ("rate", "events per second of wall-clock time; 0 = as fast as possible"),
        ("offset", "the first event number"),
        ("out_of_order_group", "events shuffled in event time within groups of this many"),
        ("base_time_ms", "the event time of event 0, epoch ms"),
        ("watermark_lag_ms", "the watermark lags event time by this much, ms"),
        ("events_file", "read the events from this file of JSON lines instead"),
    ];
    const RANGES: &'static [(&'static str, u64, u64)] =
        &[("tps", 1, u64::MAX), ("out_of_order_group", 1, 1 << 40)];

    fn set_load(&mut self, records: u64, rate_per_s: Option<u64>) -> Result<(), String> {
        if self.events_file.is_some() {
            return Err(
                "query.params.events_file: a file's events are not a load `spate bench` can size".into()
            );
        }
        self.events = records;
        self.rate = rate_per_s.unwrap_or(0);
        Ok(())
    }
}

impl NexmarkParams {
    /// The generator's config of these parameters.
    pub fn generator_config(&self) -> GeneratorConfig {
        GeneratorConfig {
            seed: self.seed,
            tps: self.tps.max(1),
            base_time_ms: self.base_time_ms,
            out_of_order_group: self.out_of_order_group.max(1),
            ..Default::default()
        }
    }
}

/// A generator's events as the [`Records`] of a Spate source.
pub struct NexmarkRecords(pub NexmarkGenerator);

impl Records<Event> for NexmarkRecords {
    #[inline]
    fn at(&self, i: u64) -> Event {
        self.0.event(i)
    }
}

/// What spreads a file's events over the workers: their time and a
/// field that differs between events of one millisecond.
fn spread_key(e: &Event) -> (u64, u64) {
    let own = match e {
        Event::Person(p) => p.id,
        Event::Auction(a) => a.id,
        Event::Bid(b) => b.bidder ^ b.price.rotate_left(17) ^ b.auction.rotate_left(34),
    };
    (e.date_time(), own)
}

/// The events of `p`, with their watermarks: generated on every worker,
/// or read from `p.events_file` on worker 0.
pub fn events(df: &Dataflow, p: &NexmarkParams) -> Stream<Event> {
    let lag = p.watermark_lag_ms;
    if let Some(path) = &p.events_file {
        // Read on worker 0, then spread over every worker, as generated
        // events are: the query's operators then run on every worker in
        // both cases (a two-input operator whose inputs come from
        // different sets of workers is not something the runtime builds).
        return df
            .read_file("events", path.clone(), 0, parse_event)
            .assign_watermarks("watermarks", |e: &Event| e.date_time(), lag)
            .key_by("by-spread", spread_key)
            .keyed_unary("spread", |_ctx, _key, out| out);
    }
    let config = p.generator_config();
    let spec = GeneratorSpec {
        records: (p.events > 0).then_some(p.events),
        rate_per_s: (p.rate > 0).then_some(p.rate),
        offset: p.offset,
        burst: 0,
    };
    let records = NexmarkRecords(NexmarkGenerator::new(config.clone()));
    df.generate_runs("events", spec, records, move |next| config.watermark_at(next).saturating_sub(lag))
}
