//! The NEXMark event generator, after nexmark-flink's `GeneratorConfig`,
//! `NexmarkGenerator` and model generators (`PersonGenerator`,
//! `AuctionGenerator`, `BidGenerator`, `PriceGenerator`,
//! `StringsGenerator`), rewritten: event `n` is a pure function of the
//! seed and `n`, so any worker makes any event, a replay from an offset
//! makes the same events, and workers that take every W-th event make the
//! stream between them without overlap.
//!
//! What follows nexmark-flink: proportions person : auction : bid =
//! 1 : 3 : 46 of every 50 event ids; ids from 1000; categories 10..14;
//! hot auction / seller / bidder ratios 2 / 4 / 4 (one in 2 bids goes to
//! the hot auction of the last 100, and so on); 100 auctions in flight
//! and 1 000 active people (ids are drawn among the recent ones, plus 10
//! "leads" ahead of the last); prices `round(10^(6u) * 100)`; average
//! sizes 200 / 500 / 100 bytes through `extra`, cut from a random string
//! (64 KiB; nexmark-flink's is 1 MiB); 4 hot channels with their URLs and 10 000 others; auctions
//! last `1 + uniform(2 * horizon)` ms, where the horizon is the time until
//! 100 auctions later; event time `base + n / TPS` (ms, rounded down);
//! out-of-order groups (`outOfOrderGroupSize`, default 1: in order) with
//! the watermark at the group's first event time.
//!
//! Where it differs: nexmark-flink draws from an unseeded
//! `SplittableRandom` (its fields differ from run to run) and its hot URLs
//! and channel cache come from another; here one seed makes them all.
//! nexmark-flink adds `FIRST_PERSON_ID` to a bid's bidder twice (bidders
//! then never match a person's id); here once, as Beam's NEXMark does.

use super::model::{Auction, Bid, Event, Person};

/// The first person id.
pub const FIRST_PERSON_ID: u64 = 1000;
/// The first auction id.
pub const FIRST_AUCTION_ID: u64 = 1000;
/// The first category id.
pub const FIRST_CATEGORY_ID: u64 = 10;

const PERSON_ID_LEAD: u64 = 10;
const AUCTION_ID_LEAD: u64 = 10;
const HOT_SELLER_RATIO: u64 = 100;
const HOT_AUCTION_RATIO: u64 = 100;
const HOT_BIDDER_RATIO: u64 = 100;
const NUM_CATEGORIES: u32 = 5;
const HOT_CHANNELS_RATIO: u32 = 2;
const CHANNELS_NUMBER: usize = 10_000;
const HOT_CHANNELS: [&str; 4] = ["Google", "Facebook", "Baidu", "Apple"];
const US_STATES: [&str; 6] = ["AZ", "CA", "ID", "OR", "WA", "WY"];
const US_CITIES: [&str; 10] = [
    "Phoenix",
    "Los Angeles",
    "San Francisco",
    "Boise",
    "Portland",
    "Bend",
    "Redmond",
    "Seattle",
    "Kent",
    "Cheyenne",
];
const FIRST_NAMES: [&str; 11] =
    ["Peter", "Paul", "Luke", "John", "Saul", "Vicky", "Kate", "Julie", "Sarah", "Deiter", "Walter"];
const LAST_NAMES: [&str; 9] =
    ["Shultz", "Abrams", "Spencer", "White", "Bartels", "Walton", "Smith", "Jones", "Noris"];
/// The random string `extra` is cut from (nexmark-flink's
/// `REUSABLE_EXTRA_STRING`, of 1 MiB there). 64 KiB stays in a core's
/// cache: cutting from 1 MiB missed it on every event (a quarter of the
/// generator's time, `perf`), and an `extra` is as random either way.
const EXTRA_POOL_BYTES: usize = 1 << 16;

/// What the generator makes: nexmark-flink's `NexmarkConfiguration`
/// fields that shape the events, with its defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GeneratorConfig {
    /// Every random choice derives from it.
    pub seed: u64,
    /// Events per second of event time (nexmark-flink's
    /// `firstEventRate`, its `TPS`): event `n` happens at `base_time_ms +
    /// n * 1000 / tps`.
    pub tps: u64,
    /// The event time of event 0, epoch ms.
    pub base_time_ms: u64,
    /// Persons of every `total` events (1).
    pub person_proportion: u64,
    /// Auctions (3).
    pub auction_proportion: u64,
    /// Bids (46).
    pub bid_proportion: u64,
    /// Average size of a person, bytes (200).
    pub avg_person_bytes: usize,
    /// Of an auction (500).
    pub avg_auction_bytes: usize,
    /// Of a bid (100).
    pub avg_bid_bytes: usize,
    /// One in `hot_auction_ratio` bids goes to any recent auction, the
    /// others to the hot one (2).
    pub hot_auction_ratio: u32,
    /// Likewise for an auction's seller (4).
    pub hot_sellers_ratio: u32,
    /// And a bid's bidder (4).
    pub hot_bidders_ratio: u32,
    /// Auctions in flight (100).
    pub num_in_flight_auctions: u64,
    /// Active people (1000).
    pub num_active_people: u64,
    /// Events are shuffled in event time within groups of this many (1:
    /// in order).
    pub out_of_order_group: u64,
}

impl Default for GeneratorConfig {
    fn default() -> Self {
        Self {
            seed: 0,
            tps: 10_000_000,
            base_time_ms: 1_436_918_400_000,
            person_proportion: 1,
            auction_proportion: 3,
            bid_proportion: 46,
            avg_person_bytes: 200,
            avg_auction_bytes: 500,
            avg_bid_bytes: 100,
            hot_auction_ratio: 2,
            hot_sellers_ratio: 4,
            hot_bidders_ratio: 4,
            num_in_flight_auctions: 100,
            num_active_people: 1000,
            out_of_order_group: 1,
        }
    }
}

impl GeneratorConfig {
    fn total(&self) -> u64 {
        self.person_proportion + self.auction_proportion + self.bid_proportion
    }

    /// The event number whose time and id event `n` takes
    /// (`nextAdjustedEventNumber`): `n` itself unless out of order.
    pub fn adjusted(&self, n: u64) -> u64 {
        let g = self.out_of_order_group.max(1);
        if g == 1 {
            return n;
        }
        let base = n / g * g;
        base + (n % g).wrapping_mul(953) % g
    }

    /// The event time of event number `n`, epoch ms.
    pub fn timestamp(&self, n: u64) -> u64 {
        let tps = u128::from(self.tps.max(1));
        self.base_time_ms.saturating_add((u128::from(n) * 1000 / tps).min(u128::from(u64::MAX)) as u64)
    }

    /// The least event time of events `next` and after
    /// (`nextEventNumberForWatermark`).
    pub fn watermark_at(&self, next: u64) -> u64 {
        let g = self.out_of_order_group.max(1);
        self.timestamp(next / g * g)
    }

    fn last_base0_person_id(&self, event_id: u64) -> u64 {
        let (epoch, mut offset) = (event_id / self.total(), event_id % self.total());
        if offset >= self.person_proportion {
            offset = self.person_proportion - 1;
        }
        epoch * self.person_proportion + offset
    }

    fn last_base0_auction_id(&self, event_id: u64) -> u64 {
        let (mut epoch, mut offset) = (event_id / self.total(), event_id % self.total());
        if offset < self.person_proportion {
            // Before this epoch's first auction: the last of the one before
            // (none in epoch 0, which then gives 0, as nexmark-flink's -1 is
            // never used: epoch 0's first events are a person, then auctions).
            if epoch == 0 {
                return 0;
            }
            epoch -= 1;
            offset = self.auction_proportion - 1;
        } else if offset >= self.person_proportion + self.auction_proportion {
            offset = self.auction_proportion - 1;
        } else {
            offset -= self.person_proportion;
        }
        epoch * self.auction_proportion + offset
    }
}

/// A small, fast generator of random numbers (wyrand), seeded per event.
struct Rng(u64);

impl Rng {
    fn for_event(seed: u64, event_id: u64) -> Self {
        Rng(crate::queries::splitmix64(seed ^ crate::queries::splitmix64(event_id)))
    }

    #[inline]
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0xa076_1d64_78bd_642f);
        let t = u128::from(self.0) * u128::from(self.0 ^ 0xe703_7ed1_a0b4_28db);
        ((t >> 64) as u64) ^ (t as u64)
    }

    /// Uniform in `0..n` (`n > 0`).
    #[inline]
    fn next_int(&mut self, n: u32) -> u32 {
        (((self.next_u64() >> 32) * u64::from(n)) >> 32) as u32
    }

    /// nexmark-flink's `LongGenerator.nextLong`: uniform in `0..n`.
    #[inline]
    fn next_long(&mut self, n: u64) -> u64 {
        match u32::try_from(n) {
            Ok(n) if n > 0 => u64::from(self.next_int(n)),
            _ => self.next_u64() % n.max(1),
        }
    }

    #[inline]
    fn next_double(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    fn price(&mut self) -> u64 {
        (10f64.powf(self.next_double() * 6.0) * 100.0).round() as u64
    }

    /// `StringsGenerator.nextString`: 3 to `max_len - 1` characters, one
    /// in 13 `special`, the others lower-case letters, trimmed of spaces.
    fn string(&mut self, max_len: u32, special: u8, out: &mut String) {
        let len = 3 + self.next_int(max_len - 3);
        let start = out.len();
        for _ in 0..len {
            let c = if self.next_int(13) == 0 { special } else { b'a' + self.next_int(26) as u8 };
            out.push(c as char);
        }
        // Java's `trim()`: spaces off both ends (all ASCII here).
        let s = &out[start..];
        let (lead, keep) = (s.len() - s.trim_start().len(), s.trim().len());
        out.drain(start..start + lead);
        out.truncate(start + keep);
    }
}

/// Makes events: the config and the strings every event draws from.
pub struct NexmarkGenerator {
    config: GeneratorConfig,
    pool: String,
    hot_urls: [String; 4],
    channels: Vec<(String, String)>,
}

impl NexmarkGenerator {
    /// A generator of `config`'s events (builds a 64 KiB string and 10 000
    /// channel URLs from the seed: a few milliseconds).
    pub fn new(config: GeneratorConfig) -> Self {
        let mut r = Rng(crate::queries::splitmix64(config.seed ^ 0x4e45_584d_4152_4b21));
        let pool: String = (0..EXTRA_POOL_BYTES).map(|_| (b'a' + r.next_int(26) as u8) as char).collect();
        let base_url = |r: &mut Rng| {
            let mut u = String::from("https://www.nexmark.com/");
            for _ in 0..3 {
                r.string(5, b'_', &mut u);
                u.push('/');
            }
            u.push_str("item.htm?query=1");
            u
        };
        let hot_urls = [base_url(&mut r), base_url(&mut r), base_url(&mut r), base_url(&mut r)];
        let channels = (0..CHANNELS_NUMBER)
            .map(|i| {
                let mut url = base_url(&mut r);
                if r.next_int(10) > 0 {
                    url += &format!("&channel_id={}", (i as i32).reverse_bits().wrapping_abs());
                }
                (format!("channel-{i}"), url)
            })
            .collect();
        Self { config, pool, hot_urls, channels }
    }

    /// The config.
    pub fn config(&self) -> &GeneratorConfig {
        &self.config
    }

    /// Event number `n` (0, 1, ...).
    pub fn event(&self, n: u64) -> Event {
        let c = &self.config;
        let adjusted = c.adjusted(n);
        let (event_id, ts) = (adjusted, c.timestamp(adjusted));
        let mut r = Rng::for_event(c.seed, event_id);
        let rem = event_id % c.total();
        if rem < c.person_proportion {
            Event::Person(self.person(event_id, ts, &mut r))
        } else if rem < c.person_proportion + c.auction_proportion {
            Event::Auction(self.auction(adjusted, event_id, ts, &mut r))
        } else {
            Event::Bid(self.bid(event_id, ts, &mut r))
        }
    }

    fn extra(&self, r: &mut Rng, current: usize, desired_average: usize) -> String {
        if current > desired_average {
            return String::new();
        }
        let desired = desired_average - current;
        let delta = (desired as f64 * 0.2).round() as usize;
        let size = desired - delta + if delta == 0 { 0 } else { r.next_int(2 * delta as u32) as usize };
        let at = r.next_int((self.pool.len() - size) as u32) as usize;
        self.pool[at..at + size].to_string()
    }

    fn next_base0_person_id(&self, event_id: u64, r: &mut Rng) -> u64 {
        let people = self.config.last_base0_person_id(event_id) + 1;
        let active = people.min(self.config.num_active_people);
        people - active + r.next_long(active + PERSON_ID_LEAD)
    }

    fn next_base0_auction_id(&self, event_id: u64, r: &mut Rng) -> u64 {
        let max = self.config.last_base0_auction_id(event_id);
        let min = max.saturating_sub(self.config.num_in_flight_auctions);
        min + r.next_long(max - min + 1 + AUCTION_ID_LEAD)
    }

    fn person(&self, event_id: u64, ts: u64, r: &mut Rng) -> Person {
        let id = self.config.last_base0_person_id(event_id) + FIRST_PERSON_ID;
        let mut name = String::with_capacity(16);
        name.push_str(FIRST_NAMES[r.next_int(FIRST_NAMES.len() as u32) as usize]);
        name.push(' ');
        name.push_str(LAST_NAMES[r.next_int(LAST_NAMES.len() as u32) as usize]);
        let mut email = String::with_capacity(16);
        r.string(7, b' ', &mut email);
        email.push('@');
        r.string(5, b' ', &mut email);
        email.push_str(".com");
        let mut credit_card = String::with_capacity(19);
        for i in 0..4 {
            if i > 0 {
                credit_card.push(' ');
            }
            let n = r.next_int(10_000);
            for d in [1000, 100, 10, 1] {
                credit_card.push((b'0' + (n / d % 10) as u8) as char);
            }
        }
        let city = US_CITIES[r.next_int(US_CITIES.len() as u32) as usize].to_string();
        let state = US_STATES[r.next_int(US_STATES.len() as u32) as usize].to_string();
        let size = 8 + name.len() + email.len() + credit_card.len() + city.len() + state.len();
        let extra = self.extra(r, size, self.config.avg_person_bytes);
        Person { id, name, email_address: email, credit_card, city, state, date_time: ts, extra }
    }

    fn auction(&self, adjusted: u64, event_id: u64, ts: u64, r: &mut Rng) -> Auction {
        let c = &self.config;
        let id = c.last_base0_auction_id(event_id) + FIRST_AUCTION_ID;
        let seller = if r.next_int(c.hot_sellers_ratio) > 0 {
            c.last_base0_person_id(event_id) / HOT_SELLER_RATIO * HOT_SELLER_RATIO
        } else {
            self.next_base0_person_id(event_id, r)
        } + FIRST_PERSON_ID;
        let category = FIRST_CATEGORY_ID + u64::from(r.next_int(NUM_CATEGORIES));
        let initial_bid = r.price();
        // nextAuctionLengthMs: the time until `num_in_flight_auctions`
        // auctions later, twice, as the bound of a uniform length.
        let events_for_auctions = c.num_in_flight_auctions * c.total() / c.auction_proportion;
        let horizon = c.timestamp(adjusted + events_for_auctions).saturating_sub(ts);
        let expires = ts + 1 + r.next_long((horizon * 2).max(1));
        let mut item_name = String::with_capacity(20);
        r.string(20, b' ', &mut item_name);
        let mut description = String::with_capacity(100);
        r.string(100, b' ', &mut description);
        let reserve = initial_bid + r.price();
        let size = 8 + item_name.len() + description.len() + 40;
        let extra = self.extra(r, size, c.avg_auction_bytes);
        Auction {
            id,
            item_name,
            description,
            initial_bid,
            reserve,
            date_time: ts,
            expires,
            seller,
            category,
            extra,
        }
    }

    fn bid(&self, event_id: u64, ts: u64, r: &mut Rng) -> Bid {
        let c = &self.config;
        let auction = if r.next_int(c.hot_auction_ratio) > 0 {
            c.last_base0_auction_id(event_id) / HOT_AUCTION_RATIO * HOT_AUCTION_RATIO
        } else {
            self.next_base0_auction_id(event_id, r)
        } + FIRST_AUCTION_ID;
        let bidder = if r.next_int(c.hot_bidders_ratio) > 0 {
            c.last_base0_person_id(event_id) / HOT_BIDDER_RATIO * HOT_BIDDER_RATIO + 1
        } else {
            self.next_base0_person_id(event_id, r)
        } + FIRST_PERSON_ID;
        let price = r.price();
        let (channel, url) = if r.next_int(HOT_CHANNELS_RATIO) > 0 {
            let i = r.next_int(HOT_CHANNELS.len() as u32) as usize;
            (HOT_CHANNELS[i].to_string(), self.hot_urls[i].clone())
        } else {
            let (ch, url) = &self.channels[r.next_int(CHANNELS_NUMBER as u32) as usize];
            (ch.clone(), url.clone())
        };
        let extra = self.extra(r, 32, c.avg_bid_bytes);
        Bid { auction, bidder, price, channel, url, date_time: ts, extra }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn generator(seed: u64) -> NexmarkGenerator {
        NexmarkGenerator::new(GeneratorConfig { seed, tps: 1000, ..Default::default() })
    }

    #[test]
    fn proportions_ids_and_times_follow_the_spec() {
        let g = generator(7);
        let events: Vec<Event> = (0..50_000).map(|n| g.event(n)).collect();
        let count = |f: fn(&Event) -> bool| events.iter().filter(|e| f(e)).count();
        assert_eq!(count(|e| matches!(e, Event::Person(_))), 1000);
        assert_eq!(count(|e| matches!(e, Event::Auction(_))), 3000);
        assert_eq!(count(|e| matches!(e, Event::Bid(_))), 46_000);
        let (mut people, mut auctions) = (FIRST_PERSON_ID, FIRST_AUCTION_ID);
        let mut sizes = [0usize; 3];
        for (n, e) in events.iter().enumerate() {
            assert_eq!(e.date_time(), 1_436_918_400_000 + n as u64, "1 ms an event at 1000 TPS");
            match e {
                Event::Person(p) => {
                    assert_eq!(p.id, people);
                    people += 1;
                    sizes[0] += 8 + p.name.len() + p.email_address.len() + p.credit_card.len();
                    sizes[0] += p.city.len() + p.state.len() + p.extra.len();
                }
                Event::Auction(a) => {
                    assert_eq!(a.id, auctions);
                    auctions += 1;
                    assert!(a.seller >= FIRST_PERSON_ID && a.seller < people + PERSON_ID_LEAD);
                    assert!((10..15).contains(&a.category) && a.expires > a.date_time);
                    sizes[1] += 48 + a.item_name.len() + a.description.len() + a.extra.len();
                }
                Event::Bid(b) => {
                    assert!(b.auction >= FIRST_AUCTION_ID && b.auction < auctions + AUCTION_ID_LEAD);
                    assert!(b.bidder >= FIRST_PERSON_ID && b.bidder < people + PERSON_ID_LEAD);
                    assert!((100..=100_000_000).contains(&b.price));
                    sizes[2] += 32 + b.extra.len();
                }
            }
        }
        let avg = [sizes[0] / 1000, sizes[1] / 3000, sizes[2] / 46_000];
        assert!(avg.iter().zip([200, 500, 100]).all(|(a, want)| a.abs_diff(want) <= want / 20), "{avg:?}");
    }

    #[test]
    fn every_field_follows_from_the_seed() {
        let (a, b, c) = (generator(1), generator(1), generator(2));
        let same = (0..2000).all(|n| a.event(n) == b.event(n));
        let differ = (0..2000).filter(|&n| a.event(n) != c.event(n)).count();
        assert!(same);
        // Events of other seeds share ids and times, not their fields.
        assert!(differ > 1990, "{differ}");
    }

    #[test]
    fn out_of_order_groups_keep_the_watermark_below_their_events() {
        let g =
            NexmarkGenerator::new(GeneratorConfig { tps: 100, out_of_order_group: 30, ..Default::default() });
        let c = g.config().clone();
        let mut in_order = true;
        for n in 0..3000 {
            let t = g.event(n).date_time();
            assert!(t >= c.watermark_at(n), "event {n}");
            in_order &= n == 0 || t >= g.event(n - 1).date_time();
        }
        assert!(!in_order);
    }
}
