//! NEXMark's queries on Spate against expectations worked out here, in
//! plain Rust over the same events (no Spate operator in them): generated
//! events, shuffled within out-of-order groups, on two workers; and a file
//! of events with some moved far behind their time, so that windows drop
//! them as late, on one worker (whose order of arrival, and so lateness,
//! is the file's). Every query also reads the generator's events from a
//! file of JSON lines and gives the same results.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::time::{Duration, Instant};

use spate::nexmark::generator::NexmarkGenerator;
use spate::nexmark::model::{Auction, Bid, Event, Person};
use spate::nexmark::queries::{self as q, AuctionDay, BidStats, DAY_MS};
use spate::nexmark::NexmarkParams;
use spate::prelude::*;

const WAIT: Duration = Duration::from_secs(60);
/// Events of each run: a minute of event time at 50 events a second.
const EVENTS: u64 = 3000;
const TPS: u64 = 50;
/// Event 0 is 30 s before a midnight: the per-day queries see two days.
const BASE_MS: u64 = 1_436_918_400_000 - 30_000;
const LAG_MS: u64 = 4000;

static ONE_JOB: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn params(seed: u64) -> NexmarkParams {
    NexmarkParams {
        events: EVENTS,
        tps: TPS,
        seed,
        base_time_ms: BASE_MS,
        // Up to 3 s out of order: never later than the 4 s watermark lag.
        out_of_order_group: 150,
        ..Default::default()
    }
}

/// The generator's events of `p`, in event-number order.
fn generated(p: &NexmarkParams) -> Vec<Event> {
    let g = NexmarkGenerator::new(p.generator_config());
    (p.offset..p.offset + p.events).map(|n| g.event(n)).collect()
}

/// Writes `events` as JSON lines into `path`.
fn write_file(path: &Path, events: &[Event]) {
    let mut text = String::new();
    for e in events {
        e.write_json(&mut text);
        text.push('\n');
    }
    std::fs::write(path, text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

/// Runs query `build` over `p`'s events on `workers` workers; every result.
fn run<T: Data + Send>(
    build: fn(&Dataflow, &NexmarkParams) -> Stream<T>,
    p: &NexmarkParams,
    workers: usize,
) -> Vec<T> {
    let _one = ONE_JOB.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let rt = Runtime::new(RuntimeConfig {
        workers,
        pin: false,
        data_dir: dir.path().to_path_buf(),
        linger_us: 0,
        ..Default::default()
    });
    let (sink, out) = output::<T>(1 << 16);
    let p2 = p.clone();
    let job = rt
        .start("nexmark", move |df| build(df, &p2).output("out", &sink))
        .unwrap_or_else(|e| panic!("start: {e}"));
    let deadline = Instant::now() + WAIT;
    let mut got = Vec::new();
    loop {
        assert!(Instant::now() < deadline, "the job did not end");
        match out.recv_timeout(WAIT) {
            Ok(Some(r)) => got.push(r),
            Ok(None) => break,
            Err(_) => panic!("no result within {WAIT:?} ({} so far)", got.len()),
        }
    }
    job.wait().unwrap_or_else(|e| panic!("job: {e}"));
    got
}

fn sorted<T: Ord>(mut v: Vec<T>) -> Vec<T> {
    v.sort();
    v
}

fn bids_of(events: &[Event]) -> Vec<Bid> {
    events.iter().filter_map(|e| e.clone().into_bid()).collect()
}

/// The watermark each event meets, reading them in order: the latest
/// event time before it, less the lag (what a file source sets).
fn watermarks(events: &[Event]) -> Vec<u64> {
    let mut max = 0;
    events
        .iter()
        .map(|e| {
            let wm = max;
            max = max.max(e.date_time().saturating_sub(LAG_MS));
            wm
        })
        .collect()
}

/// The events of `p` in an order with late ones: every 37th moved 600
/// events (12 s) on, behind the watermark; the rest shuffled within
/// groups as generated.
fn with_late(p: &NexmarkParams) -> Vec<Event> {
    let mut events = generated(p);
    let mut moved = Vec::new();
    let mut i = 0;
    events.retain(|e| {
        i += 1;
        let keep = i % 37 != 0 || i + 600 >= EVENTS as usize;
        if !keep {
            moved.push((i + 600, e.clone()));
        }
        keep
    });
    for (at, e) in moved.into_iter().rev() {
        let at = at.min(events.len());
        events.insert(at, e);
    }
    events
}

/// The late-events run of `p`: the file, the params that read it.
fn late_run(p: &NexmarkParams, dir: &Path) -> (Vec<Event>, NexmarkParams) {
    let events = with_late(p);
    let late = watermarks(&events).iter().zip(&events).filter(|(w, e)| e.date_time() + 10_000 <= **w).count();
    assert!(late > 20, "{late} events late by a 10 s window");
    let path = dir.join("late.jsonl");
    write_file(&path, &events);
    (events, NexmarkParams { events_file: Some(path), ..p.clone() })
}

// ---- expectations ----

fn expect_q5(events: &[Event], wms: &[u64]) -> Vec<(u64, u64, u64, u64)> {
    let mut counts: BTreeMap<u64, BTreeMap<u64, u64>> = BTreeMap::new();
    for (e, &wm) in events.iter().zip(wms) {
        let Event::Bid(b) = e else { continue };
        // The 10 s windows every 2 s that hold t.
        let t = b.date_time;
        let first = (t + 1).saturating_sub(10_000).div_ceil(2000) * 2000;
        for s in (first..=t / 2000 * 2000).step_by(2000) {
            if s + 10_000 > wm {
                *counts.entry(s).or_default().entry(b.auction).or_default() += 1;
            }
        }
    }
    let mut out = Vec::new();
    for (s, by_auction) in counts {
        let max = by_auction.values().copied().max().unwrap_or(0);
        for (a, n) in by_auction {
            if n == max {
                out.push((s, s + 10_000, a, n));
            }
        }
    }
    out
}

fn expect_q7(events: &[Event], wms: &[u64]) -> Vec<Bid> {
    let mut windows: BTreeMap<u64, Vec<Bid>> = BTreeMap::new();
    for (e, &wm) in events.iter().zip(wms) {
        if let Event::Bid(b) = e {
            let s = b.date_time / 10_000 * 10_000;
            if s + 10_000 > wm {
                windows.entry(s).or_default().push(b.clone());
            }
        }
    }
    let mut out = Vec::new();
    for (s, bids) in &windows {
        let max = bids.iter().map(|b| b.price).max().unwrap_or(0);
        out.extend(bids.iter().filter(|b| b.price == max).cloned());
        // BETWEEN end - 10 s AND end: bids at the end instant, not late
        // for this window, at its highest price.
        let end = s + 10_000;
        for (e, &wm) in events.iter().zip(wms) {
            if let Event::Bid(b) = e {
                if b.date_time == end && end > wm && b.price == max {
                    out.push(b.clone());
                }
            }
        }
    }
    sorted(out)
}

fn expect_q8(events: &[Event], wms: &[u64]) -> Vec<(u64, String, u64)> {
    let mut people: BTreeMap<(u64, u64), String> = BTreeMap::new();
    let mut sellers: BTreeSet<(u64, u64)> = BTreeSet::new();
    for (e, &wm) in events.iter().zip(wms) {
        let s = e.date_time() / 10_000 * 10_000;
        if s + 10_000 <= wm {
            continue;
        }
        match e {
            Event::Person(p) => {
                people.insert((p.id, s), p.name.clone());
            }
            Event::Auction(a) => {
                sellers.insert((a.seller, s));
            }
            Event::Bid(_) => {}
        }
    }
    let out = people.into_iter().filter(|(k, _)| sellers.contains(k)).map(|((id, s), n)| (id, n, s));
    sorted(out.collect())
}

fn expect_q11(events: &[Event], wms: &[u64]) -> Vec<(u64, u64, u64, u64)> {
    // bidder → open sessions (start, end, count), fired as the
    // watermarks pass them, in the order of the events.
    let mut open: HashMap<u64, Vec<(u64, u64, u64)>> = HashMap::new();
    let mut out = Vec::new();
    for (e, &wm) in events.iter().zip(wms) {
        for (bidder, sessions) in open.iter_mut() {
            sessions.retain(|&(s, end, n)| {
                if end <= wm {
                    out.push((*bidder, n, s, end));
                }
                end > wm
            });
        }
        let Event::Bid(b) = e else { continue };
        let (mut s, mut end, mut n) = (b.date_time, b.date_time + 10_000, 1);
        if end <= wm {
            continue;
        }
        let sessions = open.entry(b.bidder).or_default();
        while let Some(i) = sessions.iter().position(|&(s2, e2, _)| s2 <= end && e2 >= s) {
            let (s2, e2, n2) = sessions.remove(i);
            (s, end, n) = (s.min(s2), end.max(e2), n + n2);
        }
        sessions.push((s, end, n));
    }
    for (bidder, sessions) in open {
        out.extend(sessions.into_iter().map(|(s, e, n)| (bidder, n, s, e)));
    }
    sorted(out)
}

fn expect_stats(events: &[Event], wms: &[u64], by_channel: bool) -> Vec<(String, u64, u64, BidStats)> {
    type Sets = [BTreeSet<u64>; 8];
    let mut days: BTreeMap<(String, u64), (BidStats, u64, Sets)> = BTreeMap::new();
    for (e, &wm) in events.iter().zip(wms) {
        let Event::Bid(b) = e else { continue };
        let day = b.date_time / DAY_MS * DAY_MS;
        if day + DAY_MS <= wm {
            continue;
        }
        let channel = if by_channel { b.channel.clone() } else { String::new() };
        let (s, latest, sets) = days.entry((channel, day)).or_default();
        let rank = q::price_rank(b.price);
        s[0] += 1;
        s[1 + rank] += 1;
        *latest = (*latest).max(b.date_time);
        for (i, v) in [(0, b.bidder), (1 + rank, b.bidder), (4, b.auction), (5 + rank, b.auction)] {
            sets[i].insert(v);
        }
    }
    let out = days.into_iter().map(|((c, day), (mut s, latest, sets))| {
        for (i, set) in sets.iter().enumerate() {
            s[4 + i] = set.len() as u64;
        }
        (c, day, latest, s)
    });
    sorted(out.collect())
}

fn expect_q17(events: &[Event], wms: &[u64]) -> Vec<(u64, u64, AuctionDay)> {
    let mut days: BTreeMap<(u64, u64), AuctionDay> = BTreeMap::new();
    for (e, &wm) in events.iter().zip(wms) {
        let Event::Bid(b) = e else { continue };
        let day = b.date_time / DAY_MS * DAY_MS;
        if day + DAY_MS <= wm {
            continue;
        }
        let s = days.entry((b.auction, day)).or_default();
        s.total_bids += 1;
        s.rank_bids[q::price_rank(b.price)] += 1;
        s.min_price = s.min_price.min(b.price);
        s.max_price = s.max_price.max(b.price);
        s.sum_price += b.price;
    }
    days.into_iter().map(|((a, d), s)| (a, d, s)).collect()
}

/// Each auction with its bids in its lifetime.
fn auction_bids(events: &[Event]) -> Vec<(Auction, Vec<Bid>)> {
    let bids = bids_of(events);
    let auctions = events.iter().filter_map(|e| e.clone().into_auction());
    auctions
        .map(|a| {
            let mine =
                bids.iter().filter(|b| b.auction == a.id && (a.date_time..=a.expires).contains(&b.date_time));
            let mine = mine.cloned().collect();
            (a, mine)
        })
        .collect()
}

fn expect_q4(events: &[Event]) -> BTreeMap<u64, (u64, usize)> {
    let mut by_category: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    for (a, bids) in auction_bids(events) {
        if let Some(max) = bids.iter().map(|b| b.price).max() {
            by_category.entry(a.category).or_default().push(max);
        }
    }
    by_category.into_iter().map(|(c, v)| (c, (v.iter().sum::<u64>() / v.len() as u64, v.len()))).collect()
}

fn expect_q9(events: &[Event]) -> Vec<(Auction, Bid)> {
    let out = auction_bids(events).into_iter().filter_map(|(a, mut bids)| {
        bids.sort_by(q::q9_order);
        bids.into_iter().next().map(|b| (a, b))
    });
    sorted(out.collect())
}

/// The final top `n` of each key of `bids` by `order`.
fn expect_top<K: Ord>(
    bids: &[Bid],
    key: fn(&Bid) -> K,
    n: usize,
    order: fn(&Bid, &Bid) -> std::cmp::Ordering,
) -> BTreeMap<K, Vec<Bid>> {
    let mut by: BTreeMap<K, Vec<Bid>> = BTreeMap::new();
    for b in bids {
        by.entry(key(b)).or_default().push(b.clone());
    }
    for v in by.values_mut() {
        v.sort_by(order);
        v.truncate(n);
    }
    by
}

/// The tops that `(bid, rank)` inserts make, replayed in order.
fn replay_top<K: Ord>(rows: &[(Bid, u64)], key: fn(&Bid) -> K, n: usize) -> BTreeMap<K, Vec<Bid>> {
    let mut by: BTreeMap<K, Vec<Bid>> = BTreeMap::new();
    for (b, rank) in rows {
        let v = by.entry(key(b)).or_default();
        assert!(*rank >= 1 && *rank as usize <= v.len() + 1, "rank {rank} of {} rows", v.len());
        v.insert(*rank as usize - 1, b.clone());
        v.truncate(n);
    }
    by
}

// ---- tests ----

#[test]
fn stateless_queries_are_their_rows() {
    let p = params(1);
    let events = generated(&p);
    let bids = bids_of(&events);
    assert_eq!(sorted(run(q::q0, &p, 2)), sorted(bids.clone()));
    let q1: Vec<_> = bids
        .iter()
        .map(|b| q::Q1 {
            auction: b.auction,
            bidder: b.bidder,
            price_milli: b.price * 908,
            date_time: b.date_time,
            extra: b.extra.clone(),
        })
        .collect();
    assert_eq!(sorted(run(q::q1, &p, 2)), sorted(q1));
    let q2: Vec<_> = bids.iter().filter(|b| b.auction % 123 == 0).map(|b| (b.auction, b.price)).collect();
    assert!(!q2.is_empty());
    assert_eq!(sorted(run(q::q2, &p, 2)), sorted(q2));
    let q10: Vec<_> =
        bids.iter().map(|b| (b.clone(), q::day_string(b.date_time), q::hour_minute(b.date_time))).collect();
    assert_eq!(sorted(run(q::q10, &p, 2)), sorted(q10));
    let q14: Vec<_> = bids
        .iter()
        .filter(|b| b.price * 908 > 1_000_000_000 && b.price * 908 < 50_000_000_000)
        .map(|b| {
            let h = (b.date_time / 3_600_000) % 24;
            q::Q14 {
                auction: b.auction,
                bidder: b.bidder,
                price_milli: b.price * 908,
                bid_time_type: if (8..=18).contains(&h) {
                    0
                } else if h <= 6 || h >= 20 {
                    1
                } else {
                    2
                },
                date_time: b.date_time,
                extra: b.extra.clone(),
                c_counts: b.extra.matches('c').count() as u64,
            }
        })
        .collect();
    assert!(!q14.is_empty());
    assert_eq!(sorted(run(q::q14, &p, 2)), sorted(q14));
    let hot = ["apple", "google", "facebook", "baidu"];
    let q21: Vec<_> = bids
        .iter()
        .filter_map(|b| {
            let lower = b.channel.to_lowercase();
            let id = match hot.iter().position(|h| *h == lower) {
                Some(i) => Some(["0", "1", "2", "3"][i].to_string()),
                None => b.url.split('&').find_map(|kv| kv.strip_prefix("channel_id=")).map(str::to_string),
            };
            id.map(|id| (b.auction, b.bidder, b.price, b.channel.clone(), id))
        })
        .collect();
    assert!(q21.iter().any(|r| r.4.len() > 1), "some channel ids come from URLs");
    assert_eq!(sorted(run(q::q21, &p, 2)), sorted(q21));
    let q22: Vec<_> = bids
        .iter()
        .map(|b| {
            let parts: Vec<&str> = b.url.split('/').collect();
            let dir = |i: usize| parts.get(i).map(|s| s.to_string());
            (b.auction, b.bidder, b.price, b.channel.clone(), dir(3), dir(4), dir(5))
        })
        .collect();
    assert_eq!(sorted(run(q::q22, &p, 2)), sorted(q22));
}

#[test]
fn joins_are_every_matching_pair() {
    // More people (400) than the other tests: few are sellers in OR, ID or CA.
    let p = NexmarkParams { events: 20_000, ..params(2) };
    let events = generated(&p);
    let persons: Vec<Person> = events.iter().filter_map(|e| e.clone().into_person()).collect();
    let auctions: Vec<Auction> = events.iter().filter_map(|e| e.clone().into_auction()).collect();
    let bids = bids_of(&events);
    let mut q3 = Vec::new();
    for a in auctions.iter().filter(|a| a.category == 10) {
        for pe in
            persons.iter().filter(|pe| pe.id == a.seller && ["OR", "ID", "CA"].contains(&pe.state.as_str()))
        {
            q3.push(q::Q3 {
                name: pe.name.clone(),
                city: pe.city.clone(),
                state: pe.state.clone(),
                id: a.id,
            });
        }
    }
    assert!(q3.len() > 5, "{}", q3.len());
    assert_eq!(sorted(run(q::q3, &p, 2)), sorted(q3));
    let mut q20 = Vec::new();
    for b in &bids {
        for a in auctions.iter().filter(|a| a.category == 10 && a.id == b.auction) {
            q20.push((b.clone(), a.clone()));
        }
    }
    assert!(q20.len() > 50, "{}", q20.len());
    assert_eq!(sorted(run(q::q20, &p, 2)), sorted(q20));
}

#[test]
fn auctions_close_with_their_bids() {
    let p = params(3);
    let events = generated(&p);
    let q9 = expect_q9(&events);
    assert!(q9.len() > 20, "{}", q9.len());
    assert_eq!(sorted(run(q::q9, &p, 2)), q9);
    let want = expect_q4(&events);
    let got = run(q::q4, &p, 2);
    let mut last: BTreeMap<u64, (u64, usize)> = BTreeMap::new();
    for (c, avg) in got {
        let e = last.entry(c).or_default();
        *e = (avg, e.1 + 1);
    }
    assert_eq!(last, want, "(category, (final average, auctions closed))");
}

#[test]
fn windows_on_generated_events() {
    let p = params(4);
    let events = generated(&p);
    let no_late = vec![0; events.len()];
    let q5 = expect_q5(&events, &no_late);
    assert!(q5.len() >= 25, "{}", q5.len());
    assert_eq!(sorted(run(q::q5, &p, 2)), q5);
    assert_eq!(sorted(run(q::q7, &p, 2)), expect_q7(&events, &no_late));
    let q8 = expect_q8(&events, &no_late);
    assert!(q8.len() > 3, "{}", q8.len());
    assert_eq!(sorted(run(q::q8, &p, 2)), q8);
    assert_eq!(sorted(run(q::q11, &p, 2)), expect_q11(&events, &no_late));
    let q15: Vec<_> = expect_stats(&events, &no_late, false).into_iter().map(|(_, d, _, s)| (d, s)).collect();
    assert_eq!(q15.len(), 2, "two days");
    assert_eq!(sorted(run(q::q15, &p, 2)), q15);
    assert_eq!(sorted(run(q::q16, &p, 2)), expect_stats(&events, &no_late, true));
    assert_eq!(sorted(run(q::q17, &p, 2)), expect_q17(&events, &no_late));
}

/// At nexmark-flink's 10 M events a second, thousands of bids share each
/// millisecond, the first (a window's end instant) included: q7 keeps
/// only the end-instant bids that can still be at their window's highest
/// price, and its results are still every one of them.
#[test]
fn q7_at_ten_million_events_a_second() {
    let p = NexmarkParams { events: 60_000, tps: 10_000_000, out_of_order_group: 1, ..params(6) };
    let events = generated(&p);
    let no_late = vec![0; events.len()];
    let want = expect_q7(&events, &no_late);
    assert!(!want.is_empty());
    assert_eq!(sorted(run(q::q7, &p, 2)), want);
}

#[test]
fn windows_drop_late_events() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let (events, p) = late_run(&params(5), dir.path());
    let wms = watermarks(&events);
    let late_q5 = expect_q5(&events, &wms);
    assert_ne!(late_q5, expect_q5(&events, &vec![0; events.len()]), "lateness changes q5");
    assert_eq!(sorted(run(q::q5, &p, 1)), late_q5);
    assert_eq!(sorted(run(q::q7, &p, 1)), expect_q7(&events, &wms));
    assert_eq!(sorted(run(q::q8, &p, 1)), expect_q8(&events, &wms));
    let q11 = expect_q11(&events, &wms);
    assert_ne!(q11, expect_q11(&events, &vec![0; events.len()]), "lateness changes q11");
    assert_eq!(sorted(run(q::q11, &p, 1)), q11);
    let q16 = expect_stats(&events, &wms, true);
    assert_ne!(q16, expect_stats(&events, &vec![0; events.len()], true), "lateness changes q16");
    assert_eq!(sorted(run(q::q16, &p, 1)), q16);
    let q15: Vec<_> = expect_stats(&events, &wms, false).into_iter().map(|(_, d, _, s)| (d, s)).collect();
    assert_eq!(sorted(run(q::q15, &p, 1)), q15);
    assert_eq!(sorted(run(q::q17, &p, 1)), expect_q17(&events, &wms));
}

#[test]
fn tops_end_as_each_keys_best() {
    let p = params(6);
    let bids = bids_of(&generated(&p));
    let last: Vec<Bid> = run(q::q18, &p, 2);
    let mut got: BTreeMap<(u64, u64), Bid> = BTreeMap::new();
    for b in last {
        got.insert((b.bidder, b.auction), b);
    }
    let want = expect_top(&bids, |b| (b.bidder, b.auction), 1, q::q18_order);
    assert_eq!(got, want.into_iter().map(|(k, mut v)| (k, v.remove(0))).collect());
    let rows = run(q::q19, &p, 2);
    let want = expect_top(&bids, |b| b.auction, 10, q::q19_order);
    assert!(want.values().any(|v| v.len() == 10));
    assert_eq!(replay_top(&rows, |b| b.auction, 10), want);
}

#[test]
fn a_file_of_the_events_gives_the_same_results() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let p = params(7);
    let path = dir.path().join("events.jsonl");
    write_file(&path, &generated(&p));
    let f = NexmarkParams { events_file: Some(path), ..p.clone() };
    fn same<T: Data + Send + Ord + std::fmt::Debug>(
        name: &str,
        build: fn(&Dataflow, &NexmarkParams) -> Stream<T>,
        p: &NexmarkParams,
        f: &NexmarkParams,
    ) {
        let (a, b) = (sorted(run(build, p, 2)), sorted(run(build, f, 2)));
        assert!(!a.is_empty(), "{name}: no results");
        assert!(a == b, "{name}: {} results generated, {} from the file", a.len(), b.len());
    }
    same("q0", q::q0, &p, &f);
    same("q1", q::q1, &p, &f);
    same("q2", q::q2, &p, &f);
    same("q3", q::q3, &p, &f);
    same("q5", q::q5, &p, &f);
    same("q7", q::q7, &p, &f);
    same("q8", q::q8, &p, &f);
    same("q9", q::q9, &p, &f);
    same("q10", q::q10, &p, &f);
    same("q11", q::q11, &p, &f);
    same("q14", q::q14, &p, &f);
    same("q15", q::q15, &p, &f);
    same("q16", q::q16, &p, &f);
    same("q17", q::q17, &p, &f);
    same("q20", q::q20, &p, &f);
    same("q21", q::q21, &p, &f);
    same("q22", q::q22, &p, &f);
    // The updating queries: their final rows.
    let finals = |rows: Vec<(u64, u64)>| rows.into_iter().collect::<BTreeMap<u64, u64>>();
    assert_eq!(finals(run(q::q4, &p, 2)), finals(run(q::q4, &f, 2)));
    let last = |rows: Vec<Bid>| {
        let mut m = BTreeMap::new();
        for b in rows {
            m.insert((b.bidder, b.auction), b);
        }
        m
    };
    assert_eq!(last(run(q::q18, &p, 2)), last(run(q::q18, &f, 2)));
    let (a, b) = (run(q::q19, &p, 2), run(q::q19, &f, 2));
    assert_eq!(replay_top(&a, |b| b.auction, 10), replay_top(&b, |b| b.auction, 10));
}

#[test]
fn a_generator_replays_from_an_offset_and_splits_without_overlap() {
    let p = NexmarkParams { events: 600, offset: 400, ..params(8) };
    let all = generated(&NexmarkParams { events: 1000, offset: 0, ..params(8) });
    // From offset 400 on two workers: events 400..1000, each once.
    let got = sorted(run(q::q0, &p, 2));
    assert_eq!(got, sorted(bids_of(&all[400..])));
}
