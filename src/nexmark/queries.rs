//! The NEXMark queries as Spate dataflows, after nexmark-flink's
//! `queries/qN.sql`, in event time: each `qN` builds the query up to its
//! results, [`register`] adds them to a registry as `nexmark-qN`, with
//! their results written as JSON lines named by the SQL's output columns.
//!
//! Updating queries (q3's and q20's joins are append-only; q4, q9, q18
//! and q19 are not) emit what Spate can say without retractions: q4 the
//! category's new average each time an auction closes, q9 an auction's
//! winning bid when it closes, q18 and q19 each row as it enters its
//! key's top 1 or top 10; the last row per key is the SQL's final
//! result. The per-day aggregates (q15, q16, q17) are event-time windows
//! of a day, emitted when the day ends (its final values). Ties that the
//! SQL leaves to chance (`ORDER BY price DESC` with equal prices) are
//! broken by the rest of the row, so every run gives the same rows.
//!
//! Left out: q6 (nexmark-flink leaves it out too: `OVER` rows in a join),
//! q12 (a processing-time window), q13 (a side table looked up at
//! processing time), q23 (not in NEXMark's original set).

use std::cmp::Ordering;
use std::fmt::Write as _;

use spate_core::{Dataflow, Stream};
use spate_ops::prelude::*;

use super::model::{write_bid_fields, Auction, Bid, Event, JsonObject, Person};
use super::{events, NexmarkParams};
use crate::registry::{Registry, ResultSink};

/// 10 s, q5's window and q7's, q8's, q11's gap.
const TEN_S: u64 = 10_000;
/// A day, in ms.
pub const DAY_MS: u64 = 86_400_000;

/// q1's and q14's conversion of a price to euros, in thousandths: `0.908 *
/// price` as SQL's `DECIMAL(23, 3)`.
pub fn euro_milli(price: u64) -> u64 {
    price * 908
}

/// The bids of `p`'s events.
pub fn bids(df: &Dataflow, p: &NexmarkParams) -> Stream<Bid> {
    events(df, p).flat_map("bids", Event::into_bid)
}

fn auctions(events: &Stream<Event>) -> Stream<Auction> {
    events.flat_map("auctions", Event::into_auction)
}

fn persons(events: &Stream<Event>) -> Stream<Person> {
    events.flat_map("persons", Event::into_person)
}

/// q0, pass-through: every bid.
pub fn q0(df: &Dataflow, p: &NexmarkParams) -> Stream<Bid> {
    bids(df, p)
}

/// A row of q1: a bid with its price in euros.
#[spate::record]
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Q1 {
    /// The auction.
    pub auction: u64,
    /// The bidder.
    pub bidder: u64,
    /// `0.908 * price`, in thousandths.
    pub price_milli: u64,
    /// The bid's time.
    pub date_time: u64,
    /// The bid's padding.
    pub extra: String,
}

/// q1, currency conversion: `0.908 * price`.
pub fn q1(df: &Dataflow, p: &NexmarkParams) -> Stream<Q1> {
    bids(df, p).map("euros", |b: Bid| Q1 {
        auction: b.auction,
        bidder: b.bidder,
        price_milli: euro_milli(b.price),
        date_time: b.date_time,
        extra: b.extra,
    })
}

/// q2, selection: `(auction, price)` of the bids with `auction % 123 = 0`.
pub fn q2(df: &Dataflow, p: &NexmarkParams) -> Stream<(u64, u64)> {
    bids(df, p)
        .filter("auction%123", |b: &Bid| b.auction.is_multiple_of(123))
        .map("project", |b: Bid| (b.auction, b.price))
}

/// A row of q3.
#[spate::record]
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Q3 {
    /// The seller's name.
    pub name: String,
    /// Its city.
    pub city: String,
    /// Its state.
    pub state: String,
    /// The auction's id.
    pub id: u64,
}

/// q3, local item suggestion: sellers in OR, ID or CA joined with their
/// auctions of category 10 (an unbounded join).
pub fn q3(df: &Dataflow, p: &NexmarkParams) -> Stream<Q3> {
    let events = events(df, p);
    let sellers = persons(&events)
        .filter("or-id-ca", |p: &Person| matches!(p.state.as_str(), "OR" | "ID" | "CA"))
        .key_by("by-person", |p: &Person| p.id);
    auctions(&events)
        .filter("category-10", |a: &Auction| a.category == 10)
        .key_by("by-seller", |a: &Auction| a.seller)
        .join(&sellers, "join", |_, a: &Auction, p: &Person| Q3 {
            name: p.name.clone(),
            city: p.city.clone(),
            state: p.state.clone(),
            id: a.id,
        })
}

/// The auctions of `p` joined with their bids in their lifetime
/// (`B.dateTime BETWEEN A.dateTime AND A.expires`), folded by `fold` from
/// `None`; emitted when the auction closes (q4, q9).
fn auction_bids<Acc: spate_core::Data>(
    df: &Dataflow,
    p: &NexmarkParams,
    fold: fn(&mut Option<Acc>, &Bid),
) -> Stream<(Auction, Option<Acc>)> {
    let events = events(df, p);
    let bids = events.flat_map("bids", Event::into_bid).key_by("by-auction", |b: &Bid| b.auction);
    auctions(&events).key_by("by-id", |a: &Auction| a.id).interval_aggregate(
        &bids,
        "auction-bids",
        |a: &Auction| (a.date_time, a.expires),
        |b: &Bid| b.date_time,
        |_| None,
        fold,
    )
}

/// q4, average price per category: the mean (rounded down, SQL's `AVG`
/// of `BIGINT`) of the closing prices of the category's auctions that had
/// bids, emitted as `(category, average)` each time one closes.
pub fn q4(df: &Dataflow, p: &NexmarkParams) -> Stream<(u64, u64)> {
    auction_bids(df, p, |max: &mut Option<u64>, b| *max = Some(max.map_or(b.price, |m| m.max(b.price))))
        .flat_map("closed", |(a, max): (Auction, Option<u64>)| max.map(|m| (a.category, m)))
        .key_by("by-category", |c: &(u64, u64)| c.0)
        .fold(
            "average",
            || (0u64, 0u64),
            |(sum, n), c| {
                *sum += c.1;
                *n += 1;
            },
        )
        .map("mean", |(c, (sum, n)): (u64, (u64, u64))| (c, sum / n.max(1)))
}

/// How q9 ranks an auction's bids: price descending, then time
/// ascending (the SQL), then the rest of the bid (a fixed order for ties).
pub fn q9_order(a: &Bid, b: &Bid) -> Ordering {
    b.price.cmp(&a.price).then(a.date_time.cmp(&b.date_time)).then_with(|| a.cmp(b))
}

/// q9, winning bids: each auction with its best bid in its lifetime,
/// when it closes (auctions without bids give no row).
pub fn q9(df: &Dataflow, p: &NexmarkParams) -> Stream<(Auction, Bid)> {
    auction_bids(df, p, |best: &mut Option<Bid>, b| {
        if best.as_ref().is_none_or(|x| q9_order(b, x) == Ordering::Less) {
            *best = Some(b.clone());
        }
    })
    .flat_map("won", |(a, b): (Auction, Option<Bid>)| b.map(|b| (a, b)))
}

/// The auctions with the most bids in a window, and that number (ties
/// all kept).
#[spate::record]
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct MaxCount {
    num: u64,
    auctions: Vec<u64>,
}

/// q5, hot items: for each sliding window of 10 s every 2 s, the auctions
/// with the most bids in it: `(window start, window end, auction, num)`.
pub fn q5(df: &Dataflow, p: &NexmarkParams) -> Stream<(u64, u64, u64, u64)> {
    bids(df, p)
        .key_by("by-auction", |b: &Bid| b.auction)
        .window(Window::sliding(TEN_S, 2000), |b: &Bid| b.date_time)
        .aggregate("count", || 0u64, |n, _| *n += 1)
        // Each window's counts, gathered by window: a count carries its
        // window's last instant, so it falls in the 2 s window that ends
        // with its own and fires at the same watermark.
        .key_by("by-window", |c: &(u64, u64, u64, u64)| c.1)
        .window(Window::tumbling(2000), |c: &(u64, u64, u64, u64)| c.2 - 1)
        .aggregate("max", MaxCount::default, |m, &(auction, _, _, n)| match n.cmp(&m.num) {
            Ordering::Greater => {
                m.num = n;
                m.auctions.clear();
                m.auctions.push(auction);
            }
            Ordering::Equal => m.auctions.push(auction),
            Ordering::Less => {}
        })
        .flat_map("hot", |(start, _, _, m): (u64, u64, u64, MaxCount)| {
            let mut a = m.auctions;
            a.sort_unstable();
            a.into_iter().map(move |auction| (start, start + TEN_S, auction, m.num))
        })
}

/// A window's highest bids: those at its highest price, and those at
/// exactly its end (which SQL's `BETWEEN` also takes if their price is
/// the window's highest).
#[spate::record]
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Highest {
    max: Option<u64>,
    best: Vec<Bid>,
    at_end: Vec<Bid>,
}

impl Highest {
    fn add(&mut self, b: &Bid) {
        match self.max.map_or(Ordering::Greater, |m| b.price.cmp(&m)) {
            Ordering::Greater => {
                self.max = Some(b.price);
                self.best.clear();
                self.best.push(b.clone());
                // Below this part's maximum, below the window's.
                self.at_end.retain(|e| e.price >= b.price);
            }
            Ordering::Equal => self.best.push(b.clone()),
            Ordering::Less => {}
        }
    }

    /// A bid at the window's end instant, kept while it may be at the
    /// window's highest price (not below this part's maximum).
    fn add_at_end(&mut self, b: &Bid) {
        if self.max.is_none_or(|m| b.price >= m) {
            self.at_end.push(b.clone());
        }
    }

    fn merge(&mut self, other: &Highest) {
        for b in &other.best {
            self.add(b);
        }
        for b in &other.at_end {
            self.add_at_end(b);
        }
        let max = self.max;
        self.at_end.retain(|e| max.is_none_or(|m| e.price >= m));
    }
}

/// q7, highest bid: the bids at the highest price of each 10 s tumbling
/// window, with those made at its end instant at that price.
pub fn q7(df: &Dataflow, p: &NexmarkParams) -> Stream<Bid> {
    // (bid, the time it counts at, whether it sets the window's maximum):
    // a bid at a window's end instant also goes into the window before —
    // except at the generator's first instant: no generated bid precedes
    // it, so the window before has no maximum (at 10 M events a second
    // its first millisecond alone is thousands of bids of the hot auction).
    let first = p.events_file.is_none().then_some(p.base_time_ms);
    bids(df, p)
        .flat_map("edges", move |b: Bid| {
            let edge =
                (b.date_time.is_multiple_of(TEN_S) && b.date_time >= TEN_S && Some(b.date_time) != first)
                    .then(|| (b.clone(), b.date_time - 1, false));
            let t = b.date_time;
            std::iter::once((b, t, true)).chain(edge)
        })
        .key_by("by-auction", |r: &(Bid, u64, bool)| r.0.auction)
        .window(Window::tumbling(TEN_S), |r: &(Bid, u64, bool)| r.1)
        .aggregate(
            "auction-max",
            Highest::default,
            |h, (b, _, sets)| {
                if *sets {
                    h.add(b)
                } else {
                    h.add_at_end(b)
                }
            },
        )
        .key_by("by-window", |r: &(u64, u64, u64, Highest)| r.1)
        .window(Window::tumbling(TEN_S), |r: &(u64, u64, u64, Highest)| r.2 - 1)
        .aggregate("window-max", Highest::default, |h, (_, _, _, part)| h.merge(part))
        .flat_map("highest", |(_, _, _, h): (u64, u64, u64, Highest)| {
            let max = h.max;
            let mut rows: Vec<Bid> =
                h.best.into_iter().chain(h.at_end.into_iter().filter(|b| Some(b.price) == max)).collect();
            rows.sort();
            rows
        })
}

/// q8's input: a person or an auction's seller, keyed by the person.
#[spate::record]
#[derive(Debug, Clone, PartialEq, Eq)]
enum NewUser {
    Person { id: u64, name: String, date_time: u64 },
    Seller { id: u64, date_time: u64 },
}

impl NewUser {
    fn id(&self) -> u64 {
        match self {
            NewUser::Person { id, .. } | NewUser::Seller { id, .. } => *id,
        }
    }

    fn date_time(&self) -> u64 {
        match self {
            NewUser::Person { date_time, .. } | NewUser::Seller { date_time, .. } => *date_time,
        }
    }
}

/// q8, monitor new users: `(id, name, window start)` of the people who
/// opened an auction in the 10 s tumbling window they registered in.
pub fn q8(df: &Dataflow, p: &NexmarkParams) -> Stream<(u64, String, u64)> {
    let events = events(df, p);
    let people = persons(&events).map("person", |p: Person| NewUser::Person {
        id: p.id,
        name: p.name,
        date_time: p.date_time,
    });
    let sellers = auctions(&events)
        .map("seller", |a: Auction| NewUser::Seller { id: a.seller, date_time: a.date_time });
    people
        .union(&sellers, "new-users")
        .key_by("by-person", NewUser::id)
        .window(Window::tumbling(TEN_S), NewUser::date_time)
        .aggregate(
            "joined",
            || (None::<String>, false),
            |(name, sold), u| match u {
                NewUser::Person { name: n, .. } => *name = Some(n.clone()),
                NewUser::Seller { .. } => *sold = true,
            },
        )
        .flat_map("both", |(id, start, _, (name, sold)): (u64, u64, u64, (Option<String>, bool))| {
            name.filter(|_| sold).map(|n| (id, n, start))
        })
}

/// q10, log to file system: each bid with its day and `HH:mm` (UTC).
pub fn q10(df: &Dataflow, p: &NexmarkParams) -> Stream<(Bid, String, String)> {
    bids(df, p).map("partitions", |b: Bid| {
        let (dt, hm) = (day_string(b.date_time), hour_minute(b.date_time));
        (b, dt, hm)
    })
}

/// q11, user sessions: `(bidder, bid_count, start, end)` for each
/// bidder's session of bids less than 10 s apart (its end 10 s after its
/// last bid).
pub fn q11(df: &Dataflow, p: &NexmarkParams) -> Stream<(u64, u64, u64, u64)> {
    bids(df, p)
        .key_by("by-bidder", |b: &Bid| b.bidder)
        .session(TEN_S, |b: &Bid| b.date_time)
        .aggregate("count", || 0u64, |n, _| *n += 1, |n, m| *n += m)
        .map("row", |(bidder, start, end, n): (u64, u64, u64, u64)| (bidder, n, start, end))
}

/// A row of q14.
#[spate::record]
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Q14 {
    /// The auction.
    pub auction: u64,
    /// The bidder.
    pub bidder: u64,
    /// `0.908 * price`, in thousandths.
    pub price_milli: u64,
    /// 0 `dayTime` (8 to 18 h), 1 `nightTime` (up to 6 h, from 20 h), 2
    /// `otherTime`.
    pub bid_time_type: u8,
    /// The bid's time.
    pub date_time: u64,
    /// The bid's padding.
    pub extra: String,
    /// How many `c` in `extra`.
    pub c_counts: u64,
}

/// q14's names of [`Q14::bid_time_type`].
pub const BID_TIME_TYPES: [&str; 3] = ["dayTime", "nightTime", "otherTime"];

/// q14, calculation: bids of 1 000 000 to 50 000 000 euros (exclusive),
/// with their time of day and the `c`s in their padding.
pub fn q14(df: &Dataflow, p: &NexmarkParams) -> Stream<Q14> {
    bids(df, p).flat_map("calculate", |b: Bid| {
        let milli = euro_milli(b.price);
        (milli > 1_000_000_000 && milli < 50_000_000_000).then(|| {
            let hour = b.date_time / 3_600_000 % 24;
            let bid_time_type = match hour {
                8..=18 => 0,
                0..=6 | 20.. => 1,
                _ => 2,
            };
            let c_counts = b.extra.bytes().filter(|&c| c == b'c').count() as u64;
            Q14 {
                auction: b.auction,
                bidder: b.bidder,
                price_milli: milli,
                bid_time_type,
                date_time: b.date_time,
                extra: b.extra,
                c_counts,
            }
        })
    })
}

/// A bid's price rank in q15-q17: 0 below 10 000, 1 below 1 000 000, 2
/// from there.
pub fn price_rank(price: u64) -> usize {
    match price {
        0..10_000 => 0,
        10_000..1_000_000 => 1,
        _ => 2,
    }
}

/// q15's and q16's counts: bids (all, rank 1, 2, 3), distinct bidders
/// (likewise), distinct auctions (likewise).
pub type BidStats = [u64; 12];

/// What a q15/q16 bid counts for: `(channel, time, slot, value)` with
/// slot 0-3 a bid count, 4-7 a bidder and 8-11 an auction to count once.
type StatItem = (String, u64, u8, u64);

/// q15 and q16: per day (and channel, if `by_channel`), `(channel or "",
/// day start, the day's latest bid time, stats)`.
fn bid_stats(df: &Dataflow, p: &NexmarkParams, by_channel: bool) -> Stream<(String, u64, u64, BidStats)> {
    let bids = bids(df, p).drop_late("drop-late", Window::tumbling(DAY_MS), |b: &Bid| b.date_time);
    let items = bids.flat_map("items", move |b: Bid| {
        let rank = price_rank(b.price) as u8;
        let channel = if by_channel { b.channel } else { String::new() };
        let t = b.date_time;
        [
            (channel.clone(), t, 0, 0),
            (channel.clone(), t, 1 + rank, 0),
            (channel.clone(), t, 4, b.bidder),
            (channel.clone(), t, 5 + rank, b.bidder),
            (channel.clone(), t, 8, b.auction),
            (channel, t, 9 + rank, b.auction),
        ]
    });
    let counted = items.filter("counts", |i: &StatItem| i.2 < 4);
    let distinct = items
        .filter("to-count-once", |i: &StatItem| i.2 >= 4)
        .key_by("by-value", |i: &StatItem| (i.0.clone(), i.2, i.3))
        .window(Window::tumbling(DAY_MS), |i: &StatItem| i.1)
        .distinct("distinct");
    counted
        .union(&distinct, "all-items")
        .key_by("by-channel", |i: &StatItem| i.0.clone())
        .window(Window::tumbling(DAY_MS), |i: &StatItem| i.1)
        .aggregate(
            "stats",
            || (BidStats::default(), 0u64),
            |(s, latest), i| {
                s[usize::from(i.2)] += 1;
                *latest = (*latest).max(i.1);
            },
        )
        .map("row", |(channel, day, _, (s, latest)): (String, u64, u64, (BidStats, u64))| {
            (channel, day, latest, s)
        })
}

/// q15, bidding statistics per day: `(day start, stats)`.
pub fn q15(df: &Dataflow, p: &NexmarkParams) -> Stream<(u64, BidStats)> {
    bid_stats(df, p, false).map("day", |(_, day, _, s): (String, u64, u64, BidStats)| (day, s))
}

/// q16, channel statistics per day: `(channel, day start, the day's
/// latest bid time, stats)` (its `HH:mm` is q16's `minute`).
pub fn q16(df: &Dataflow, p: &NexmarkParams) -> Stream<(String, u64, u64, BidStats)> {
    bid_stats(df, p, true)
}

/// An auction's day in q17.
#[spate::record]
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct AuctionDay {
    /// Bids.
    pub total_bids: u64,
    /// Bids by price rank.
    pub rank_bids: [u64; 3],
    /// Least price.
    pub min_price: u64,
    /// Highest price.
    pub max_price: u64,
    /// Sum of prices.
    pub sum_price: u64,
}

impl Default for AuctionDay {
    fn default() -> Self {
        Self { total_bids: 0, rank_bids: [0; 3], min_price: u64::MAX, max_price: 0, sum_price: 0 }
    }
}

/// q17, auction statistics per day: `(auction, day start, stats)`.
pub fn q17(df: &Dataflow, p: &NexmarkParams) -> Stream<(u64, u64, AuctionDay)> {
    bids(df, p)
        .key_by("by-auction", |b: &Bid| b.auction)
        .window(Window::tumbling(DAY_MS), |b: &Bid| b.date_time)
        .aggregate("stats", AuctionDay::default, |s, b| {
            s.total_bids += 1;
            s.rank_bids[price_rank(b.price)] += 1;
            s.min_price = s.min_price.min(b.price);
            s.max_price = s.max_price.max(b.price);
            s.sum_price += b.price;
        })
        .map("row", |(auction, day, _, s): (u64, u64, u64, AuctionDay)| (auction, day, s))
}

/// q18's order: latest first, then the rest of the bid.
pub fn q18_order(a: &Bid, b: &Bid) -> Ordering {
    b.date_time.cmp(&a.date_time).then_with(|| a.cmp(b))
}

/// q18, find last bid: each (bidder, auction)'s latest bid, emitted when
/// it becomes the latest.
pub fn q18(df: &Dataflow, p: &NexmarkParams) -> Stream<Bid> {
    bids(df, p)
        .key_by("by-bidder-auction", |b: &Bid| (b.bidder, b.auction))
        .top_n("last", 1, q18_order)
        .map("bid", |(b, _): (Bid, u64)| b)
}

/// q19's order: highest price first, then the rest of the bid.
pub fn q19_order(a: &Bid, b: &Bid) -> Ordering {
    b.price.cmp(&a.price).then_with(|| a.cmp(b))
}

/// q19, auction top-10 price: each bid that enters its auction's 10
/// highest, with the rank it took.
pub fn q19(df: &Dataflow, p: &NexmarkParams) -> Stream<(Bid, u64)> {
    bids(df, p).key_by("by-auction", |b: &Bid| b.auction).top_n("top-10", 10, q19_order)
}

/// q20, expand bid with auction: every bid joined with its auction, for
/// auctions of category 10 (an unbounded join).
pub fn q20(df: &Dataflow, p: &NexmarkParams) -> Stream<(Bid, Auction)> {
    let events = events(df, p);
    let auctions = auctions(&events)
        .filter("category-10", |a: &Auction| a.category == 10)
        .key_by("by-id", |a: &Auction| a.id);
    events.flat_map("bids", Event::into_bid).key_by("by-auction", |b: &Bid| b.auction).join(
        &auctions,
        "join",
        |_, b: &Bid, a: &Auction| (b.clone(), a.clone()),
    )
}

/// `REGEXP_EXTRACT(url, '(&|^)channel_id=([^&]*)', 2)`: the value of the
/// first `channel_id=` at the start or after a `&`.
pub fn channel_id_of(url: &str) -> Option<&str> {
    const KEY: &str = "channel_id=";
    let mut from = 0;
    while let Some(i) = url[from..].find(KEY).map(|i| i + from) {
        if i == 0 || url.as_bytes()[i - 1] == b'&' {
            let v = &url[i + KEY.len()..];
            return Some(v.split('&').next().unwrap_or(""));
        }
        from = i + 1;
    }
    None
}

/// q21, add channel id: `(auction, bidder, price, channel, channel_id)`
/// for the bids of the four hot channels (ids 0 to 3) and of URLs with a
/// `channel_id`.
pub fn q21(df: &Dataflow, p: &NexmarkParams) -> Stream<(u64, u64, u64, String, String)> {
    bids(df, p).flat_map("channel-id", |b: Bid| {
        let lower = b.channel.to_ascii_lowercase();
        let id = match lower.as_str() {
            "apple" => Some("0"),
            "google" => Some("1"),
            "facebook" => Some("2"),
            "baidu" => Some("3"),
            _ => channel_id_of(&b.url),
        };
        id.map(|id| (b.auction, b.bidder, b.price, b.channel.clone(), id.to_string()))
    })
}

/// `SPLIT_INDEX(s, '/', i)`.
pub fn split_index(s: &str, i: usize) -> Option<&str> {
    s.split('/').nth(i)
}

/// A row of q22.
pub type Q22 = (u64, u64, u64, String, Option<String>, Option<String>, Option<String>);

/// q22, get URL directories: a bid's `(auction, bidder, price, channel,
/// dir1, dir2, dir3)`, the directories the 4th to 6th parts of its URL.
pub fn q22(df: &Dataflow, p: &NexmarkParams) -> Stream<Q22> {
    bids(df, p).map("dirs", |b: Bid| {
        let dir = |i| split_index(&b.url, i).map(str::to_string);
        (b.auction, b.bidder, b.price, b.channel.clone(), dir(3), dir(4), dir(5))
    })
}

/// The civil date of day `days` after 1970-01-01 (Howard Hinnant's
/// `civil_from_days`).
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// `DATE_FORMAT(t, 'yyyy-MM-dd')` in UTC.
pub fn day_string(t_ms: u64) -> String {
    let (y, m, d) = civil_from_days((t_ms / DAY_MS) as i64);
    format!("{y:04}-{m:02}-{d:02}")
}

/// `DATE_FORMAT(t, 'HH:mm')` in UTC.
pub fn hour_minute(t_ms: u64) -> String {
    let min = t_ms / 60_000 % 1440;
    format!("{:02}:{:02}", min / 60, min % 60)
}

fn stats_fields(o: &mut JsonObject<'_>, s: &BidStats) {
    const NAMES: [&str; 12] = [
        "total_bids",
        "rank1_bids",
        "rank2_bids",
        "rank3_bids",
        "total_bidders",
        "rank1_bidders",
        "rank2_bidders",
        "rank3_bidders",
        "total_auctions",
        "rank1_auctions",
        "rank2_auctions",
        "rank3_auctions",
    ];
    for (n, v) in NAMES.iter().zip(s) {
        o.u64(n, *v);
    }
}

fn auction_fields(o: &mut JsonObject<'_>, a: &Auction) {
    o.u64("id", a.id);
    o.str("itemName", &a.item_name);
    o.str("description", &a.description);
    o.u64("initialBid", a.initial_bid);
    o.u64("reserve", a.reserve);
    o.u64("dateTime", a.date_time);
    o.u64("expires", a.expires);
    o.u64("seller", a.seller);
    o.u64("category", a.category);
}

/// Adds the NEXMark queries to `r` as `nexmark-q0` ... (see the module
/// docs for those left out), and `nexmark-events`, the events alone.
pub fn register(r: Registry) -> Registry {
    r.add("nexmark-events", |df: &Dataflow, p: &NexmarkParams, sink: &ResultSink| {
        // The source alone: every event, to the sink (its speed is the
        // generator's, with `[sink] kind = "none"`).
        sink.attach(&events(df, p), |e, out| e.write_json(out))
    })
    .add("nexmark-q0", |df: &Dataflow, p: &NexmarkParams, sink: &ResultSink| {
        sink.attach(&q0(df, p), |b, out| {
            let mut o = JsonObject::new(out);
            write_bid_fields(&mut o, b);
            o.end();
        })
    })
    .add("nexmark-q1", |df: &Dataflow, p: &NexmarkParams, sink: &ResultSink| {
        sink.attach(&q1(df, p), |r, out| {
            let mut o = JsonObject::new(out);
            o.u64("auction", r.auction);
            o.u64("bidder", r.bidder);
            o.milli("price", u128::from(r.price_milli));
            o.u64("dateTime", r.date_time);
            o.str("extra", &r.extra);
            o.end();
        })
    })
    .add("nexmark-q2", |df: &Dataflow, p: &NexmarkParams, sink: &ResultSink| {
        sink.attach(&q2(df, p), |(auction, price), out| {
            let _ = write!(out, "{{\"auction\":{auction},\"price\":{price}}}");
        })
    })
    .add("nexmark-q3", |df: &Dataflow, p: &NexmarkParams, sink: &ResultSink| {
        sink.attach(&q3(df, p), |r, out| {
            let mut o = JsonObject::new(out);
            o.str("name", &r.name);
            o.str("city", &r.city);
            o.str("state", &r.state);
            o.u64("id", r.id);
            o.end();
        })
    })
    .add("nexmark-q4", |df: &Dataflow, p: &NexmarkParams, sink: &ResultSink| {
        sink.attach(&q4(df, p), |(category, avg), out| {
            let _ = write!(out, "{{\"id\":{category},\"final\":{avg}}}");
        })
    })
    .add("nexmark-q5", |df: &Dataflow, p: &NexmarkParams, sink: &ResultSink| {
        sink.attach(&q5(df, p), |(_, _, auction, num), out| {
            let _ = write!(out, "{{\"auction\":{auction},\"num\":{num}}}");
        })
    })
    .add("nexmark-q7", |df: &Dataflow, p: &NexmarkParams, sink: &ResultSink| {
        sink.attach(&q7(df, p), |b, out| {
            let mut o = JsonObject::new(out);
            o.u64("auction", b.auction);
            o.u64("price", b.price);
            o.u64("bidder", b.bidder);
            o.u64("dateTime", b.date_time);
            o.str("extra", &b.extra);
            o.end();
        })
    })
    .add("nexmark-q8", |df: &Dataflow, p: &NexmarkParams, sink: &ResultSink| {
        sink.attach(&q8(df, p), |(id, name, start), out| {
            let mut o = JsonObject::new(out);
            o.u64("id", *id);
            o.str("name", name);
            o.u64("stime", *start);
            o.end();
        })
    })
    .add("nexmark-q9", |df: &Dataflow, p: &NexmarkParams, sink: &ResultSink| {
        sink.attach(&q9(df, p), |(a, b), out| {
            let mut o = JsonObject::new(out);
            auction_fields(&mut o, a);
            o.str("extra", &a.extra);
            o.u64("auction", b.auction);
            o.u64("bidder", b.bidder);
            o.u64("price", b.price);
            o.u64("bid_dateTime", b.date_time);
            o.str("bid_extra", &b.extra);
            o.end();
        })
    })
    .add("nexmark-q10", |df: &Dataflow, p: &NexmarkParams, sink: &ResultSink| {
        sink.attach(&q10(df, p), |(b, dt, hm), out| {
            let mut o = JsonObject::new(out);
            o.u64("auction", b.auction);
            o.u64("bidder", b.bidder);
            o.u64("price", b.price);
            o.u64("dateTime", b.date_time);
            o.str("extra", &b.extra);
            o.str("dt", dt);
            o.str("hm", hm);
            o.end();
        })
    })
    .add("nexmark-q11", |df: &Dataflow, p: &NexmarkParams, sink: &ResultSink| {
        sink.attach(&q11(df, p), |(bidder, n, start, end), out| {
            let _ = write!(
                out,
                "{{\"bidder\":{bidder},\"bid_count\":{n},\"starttime\":{start},\"endtime\":{end}}}"
            );
        })
    })
    .add("nexmark-q14", |df: &Dataflow, p: &NexmarkParams, sink: &ResultSink| {
        sink.attach(&q14(df, p), |r, out| {
            let mut o = JsonObject::new(out);
            o.u64("auction", r.auction);
            o.u64("bidder", r.bidder);
            o.milli("price", u128::from(r.price_milli));
            o.str("bidTimeType", BID_TIME_TYPES[usize::from(r.bid_time_type)]);
            o.u64("dateTime", r.date_time);
            o.str("extra", &r.extra);
            o.u64("c_counts", r.c_counts);
            o.end();
        })
    })
    .add("nexmark-q15", |df: &Dataflow, p: &NexmarkParams, sink: &ResultSink| {
        sink.attach(&q15(df, p), |(day, s), out| {
            let mut o = JsonObject::new(out);
            o.str("day", &day_string(*day));
            stats_fields(&mut o, s);
            o.end();
        })
    })
    .add("nexmark-q16", |df: &Dataflow, p: &NexmarkParams, sink: &ResultSink| {
        sink.attach(&q16(df, p), |(channel, day, latest, s), out| {
            let mut o = JsonObject::new(out);
            o.str("channel", channel);
            o.str("day", &day_string(*day));
            o.str("minute", &hour_minute(*latest));
            stats_fields(&mut o, s);
            o.end();
        })
    })
    .add("nexmark-q17", |df: &Dataflow, p: &NexmarkParams, sink: &ResultSink| {
        sink.attach(&q17(df, p), |(auction, day, s), out| {
            let mut o = JsonObject::new(out);
            o.u64("auction", *auction);
            o.str("day", &day_string(*day));
            o.u64("total_bids", s.total_bids);
            o.u64("rank1_bids", s.rank_bids[0]);
            o.u64("rank2_bids", s.rank_bids[1]);
            o.u64("rank3_bids", s.rank_bids[2]);
            o.u64("min_price", s.min_price);
            o.u64("max_price", s.max_price);
            o.u64("avg_price", s.sum_price / s.total_bids.max(1));
            o.u64("sum_price", s.sum_price);
            o.end();
        })
    })
    .add("nexmark-q18", |df: &Dataflow, p: &NexmarkParams, sink: &ResultSink| {
        sink.attach(&q18(df, p), |b, out| {
            let mut o = JsonObject::new(out);
            write_bid_fields(&mut o, b);
            o.end();
        })
    })
    .add("nexmark-q19", |df: &Dataflow, p: &NexmarkParams, sink: &ResultSink| {
        sink.attach(&q19(df, p), |(b, rank), out| {
            let mut o = JsonObject::new(out);
            write_bid_fields(&mut o, b);
            o.u64("rank_number", *rank);
            o.end();
        })
    })
    .add("nexmark-q20", |df: &Dataflow, p: &NexmarkParams, sink: &ResultSink| {
        sink.attach(&q20(df, p), |(b, a), out| {
            let mut o = JsonObject::new(out);
            write_bid_fields(&mut o, b);
            o.u64("id", a.id);
            o.str("itemName", &a.item_name);
            o.str("description", &a.description);
            o.u64("initialBid", a.initial_bid);
            o.u64("reserve", a.reserve);
            o.u64("auction_dateTime", a.date_time);
            o.u64("expires", a.expires);
            o.u64("seller", a.seller);
            o.u64("category", a.category);
            o.str("auction_extra", &a.extra);
            o.end();
        })
    })
    .add("nexmark-q21", |df: &Dataflow, p: &NexmarkParams, sink: &ResultSink| {
        sink.attach(&q21(df, p), |(auction, bidder, price, channel, id), out| {
            let mut o = JsonObject::new(out);
            o.u64("auction", *auction);
            o.u64("bidder", *bidder);
            o.u64("price", *price);
            o.str("channel", channel);
            o.str("channel_id", id);
            o.end();
        })
    })
    .add("nexmark-q22", |df: &Dataflow, p: &NexmarkParams, sink: &ResultSink| {
        sink.attach(&q22(df, p), |(auction, bidder, price, channel, d1, d2, d3), out| {
            let mut o = JsonObject::new(out);
            o.u64("auction", *auction);
            o.u64("bidder", *bidder);
            o.u64("price", *price);
            o.str("channel", channel);
            o.opt_str("dir1", d1.as_deref());
            o.opt_str("dir2", d2.as_deref());
            o.opt_str("dir3", d3.as_deref());
            o.end();
        })
    })
}

/// The names of the registered NEXMark queries, in order.
pub const QUERIES: &[&str] = &[
    "q0", "q1", "q2", "q3", "q4", "q5", "q7", "q8", "q9", "q10", "q11", "q14", "q15", "q16", "q17", "q18",
    "q19", "q20", "q21", "q22",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_utc_civil_dates() {
        assert_eq!(day_string(0), "1970-01-01");
        assert_eq!(day_string(1_436_918_400_000), "2015-07-15");
        assert_eq!(day_string(951_782_400_000), "2000-02-29");
        assert_eq!(hour_minute(1_436_918_400_000 + 3_600_000 * 13 + 60_000 * 7 + 59_999), "13:07");
    }

    #[test]
    fn channel_ids_and_directories_follow_the_sql() {
        assert_eq!(channel_id_of("https://x/a/b/c/item.htm?query=1&channel_id=123"), Some("123"));
        assert_eq!(channel_id_of("channel_id=7&x=1"), Some("7"));
        assert_eq!(channel_id_of("https://x/?xchannel_id=1"), None);
        assert_eq!(channel_id_of("a&channel_id=&b"), Some(""));
        let url = "https://www.nexmark.com/abc/def/ghi/item.htm?query=1";
        assert_eq!(
            (split_index(url, 3), split_index(url, 5), split_index(url, 9)),
            (Some("abc"), Some("ghi"), None)
        );
    }
}
