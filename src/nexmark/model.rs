//! NEXMark's three record types and the event that carries one of them,
//! as nexmark-flink's model classes (`Person`, `Auction`, `Bid`, `Event`)
//! define them. Times are epoch milliseconds.

use std::fmt::Write as _;

/// A new user of the auction site.
#[spate::record]
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Person {
    /// Its id (from [`super::generator::FIRST_PERSON_ID`]).
    pub id: u64,
    /// First and last name.
    pub name: String,
    /// E-mail address (`emailAddress`).
    pub email_address: String,
    /// Credit card number (`creditCard`).
    pub credit_card: String,
    /// City.
    pub city: String,
    /// US state.
    pub state: String,
    /// When it registered, epoch ms (`dateTime`).
    pub date_time: u64,
    /// Padding to the average size.
    pub extra: String,
}

/// A new auction.
#[spate::record]
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Auction {
    /// Its id (from [`super::generator::FIRST_AUCTION_ID`]).
    pub id: u64,
    /// Item name (`itemName`).
    pub item_name: String,
    /// Description.
    pub description: String,
    /// Initial bid (`initialBid`).
    pub initial_bid: u64,
    /// Reserve price.
    pub reserve: u64,
    /// When it opened, epoch ms (`dateTime`).
    pub date_time: u64,
    /// When it closes, epoch ms.
    pub expires: u64,
    /// The selling person's id.
    pub seller: u64,
    /// Its category (from 10).
    pub category: u64,
    /// Padding to the average size.
    pub extra: String,
}

/// A bid on an auction.
#[spate::record]
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Bid {
    /// The auction's id.
    pub auction: u64,
    /// The bidding person's id.
    pub bidder: u64,
    /// Price, in cents.
    pub price: u64,
    /// Where it came from (`Google`, ..., `channel-N`).
    pub channel: String,
    /// The bid's URL.
    pub url: String,
    /// When it was made, epoch ms (`dateTime`).
    pub date_time: u64,
    /// Padding to the average size.
    pub extra: String,
}

/// One NEXMark event: `event_type` 0, 1 or 2 in the JSON form.
#[spate::record]
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Event {
    /// `event_type` 0.
    Person(Person),
    /// `event_type` 1.
    Auction(Auction),
    /// `event_type` 2.
    Bid(Bid),
}

impl Event {
    /// Its event time, epoch ms.
    pub fn date_time(&self) -> u64 {
        match self {
            Event::Person(p) => p.date_time,
            Event::Auction(a) => a.date_time,
            Event::Bid(b) => b.date_time,
        }
    }

    /// The bid, if it is one.
    pub fn into_bid(self) -> Option<Bid> {
        match self {
            Event::Bid(b) => Some(b),
            _ => None,
        }
    }

    /// The auction, if it is one.
    pub fn into_auction(self) -> Option<Auction> {
        match self {
            Event::Auction(a) => Some(a),
            _ => None,
        }
    }

    /// The person, if it is one.
    pub fn into_person(self) -> Option<Person> {
        match self {
            Event::Person(p) => Some(p),
            _ => None,
        }
    }

    /// Appends the event as one JSON line (no newline) with nexmark-flink's
    /// field names: `{"event_type":2,"bid":{"auction":...}}`.
    pub fn write_json(&self, out: &mut String) {
        let mut o = JsonObject::new(out);
        match self {
            Event::Person(p) => {
                o.u64("event_type", 0);
                o.key("person");
                let mut q = JsonObject::new(&mut *o.out);
                q.u64("id", p.id);
                q.str("name", &p.name);
                q.str("emailAddress", &p.email_address);
                q.str("creditCard", &p.credit_card);
                q.str("city", &p.city);
                q.str("state", &p.state);
                q.u64("dateTime", p.date_time);
                q.str("extra", &p.extra);
                q.end();
            }
            Event::Auction(a) => {
                o.u64("event_type", 1);
                o.key("auction");
                let mut q = JsonObject::new(&mut *o.out);
                q.u64("id", a.id);
                q.str("itemName", &a.item_name);
                q.str("description", &a.description);
                q.u64("initialBid", a.initial_bid);
                q.u64("reserve", a.reserve);
                q.u64("dateTime", a.date_time);
                q.u64("expires", a.expires);
                q.u64("seller", a.seller);
                q.u64("category", a.category);
                q.str("extra", &a.extra);
                q.end();
            }
            Event::Bid(b) => {
                o.u64("event_type", 2);
                o.key("bid");
                let mut q = JsonObject::new(&mut *o.out);
                write_bid_fields(&mut q, b);
                q.end();
            }
        }
        o.end();
    }
}

/// A bid's seven fields, with nexmark-flink's names, into `o`.
pub fn write_bid_fields(o: &mut JsonObject<'_>, b: &Bid) {
    o.u64("auction", b.auction);
    o.u64("bidder", b.bidder);
    o.u64("price", b.price);
    o.str("channel", &b.channel);
    o.str("url", &b.url);
    o.u64("dateTime", b.date_time);
    o.str("extra", &b.extra);
}

/// Writes one JSON object into a string, field by field, with no
/// allocation (query results use it for their SQL column names).
pub struct JsonObject<'a> {
    out: &'a mut String,
    first: bool,
}

impl<'a> JsonObject<'a> {
    /// Opens an object at the end of `out`.
    pub fn new(out: &'a mut String) -> Self {
        out.push('{');
        Self { out, first: true }
    }

    /// A field's name and colon; its value is written next.
    pub fn key(&mut self, name: &str) {
        if !self.first {
            self.out.push(',');
        }
        self.first = false;
        self.out.push('"');
        self.out.push_str(name);
        self.out.push_str("\":");
    }

    /// A whole-number field.
    pub fn u64(&mut self, name: &str, v: u64) {
        self.key(name);
        let _ = write!(self.out, "{v}");
    }

    /// A signed whole-number field.
    pub fn i64(&mut self, name: &str, v: i64) {
        self.key(name);
        let _ = write!(self.out, "{v}");
    }

    /// A decimal field with three places (SQL's `DECIMAL(23, 3)`), given
    /// in thousandths.
    pub fn milli(&mut self, name: &str, thousandths: u128) {
        self.key(name);
        let _ = write!(self.out, "{}.{:03}", thousandths / 1000, thousandths % 1000);
    }

    /// A string field, escaped.
    pub fn str(&mut self, name: &str, v: &str) {
        self.key(name);
        write_json_str(self.out, v);
    }

    /// A string field or `null`.
    pub fn opt_str(&mut self, name: &str, v: Option<&str>) {
        self.key(name);
        match v {
            Some(s) => write_json_str(self.out, s),
            None => self.out.push_str("null"),
        }
    }

    /// Closes the object.
    pub fn end(self) {
        self.out.push('}');
    }
}

/// `s` as a JSON string, quoted and escaped.
pub fn write_json_str(out: &mut String, s: &str) {
    out.push('"');
    let mut rest = s;
    while let Some(i) = rest.find(|c: char| c == '"' || c == '\\' || c < ' ') {
        out.push_str(&rest[..i]);
        let c = rest[i..].chars().next().unwrap_or(' ');
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
        }
        rest = &rest[i + c.len_utf8()..];
    }
    out.push_str(rest);
    out.push('"');
}

/// The JSON form of a person, as read.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PersonJson {
    id: u64,
    name: String,
    #[serde(rename = "emailAddress")]
    email_address: String,
    #[serde(rename = "creditCard")]
    credit_card: String,
    city: String,
    state: String,
    #[serde(rename = "dateTime")]
    date_time: u64,
    extra: String,
}

/// The JSON form of an auction, as read.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct AuctionJson {
    id: u64,
    #[serde(rename = "itemName")]
    item_name: String,
    description: String,
    #[serde(rename = "initialBid")]
    initial_bid: u64,
    reserve: u64,
    #[serde(rename = "dateTime")]
    date_time: u64,
    expires: u64,
    seller: u64,
    category: u64,
    extra: String,
}

/// The JSON form of a bid, as read.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct BidJson {
    auction: u64,
    bidder: u64,
    price: u64,
    channel: String,
    url: String,
    #[serde(rename = "dateTime")]
    date_time: u64,
    extra: String,
}

/// The JSON form of an event, as read: nexmark-flink's `Event` (the two
/// members that are not its type may be absent or `null`).
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct EventJson {
    event_type: u8,
    #[serde(default)]
    person: Option<PersonJson>,
    #[serde(default)]
    auction: Option<AuctionJson>,
    #[serde(default)]
    bid: Option<BidJson>,
}

/// Reads one JSON line of [`Event::write_json`]'s form. The error names
/// the field that is wrong (`bid.price: invalid type: ...`); a file
/// source puts the file and line number in front of it.
pub fn parse_event(line: &str) -> Result<Event, String> {
    let de = &mut serde_json::Deserializer::from_str(line);
    let e: EventJson = serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        if path == "." || path.is_empty() {
            e.inner().to_string()
        } else {
            format!("{path}: {}", e.inner())
        }
    })?;
    let missing = |what: &str| format!("event_type {}: no `{what}` member", e.event_type);
    Ok(match e.event_type {
        0 => {
            let p = e.person.ok_or_else(|| missing("person"))?;
            Event::Person(Person {
                id: p.id,
                name: p.name,
                email_address: p.email_address,
                credit_card: p.credit_card,
                city: p.city,
                state: p.state,
                date_time: p.date_time,
                extra: p.extra,
            })
        }
        1 => {
            let a = e.auction.ok_or_else(|| missing("auction"))?;
            Event::Auction(Auction {
                id: a.id,
                item_name: a.item_name,
                description: a.description,
                initial_bid: a.initial_bid,
                reserve: a.reserve,
                date_time: a.date_time,
                expires: a.expires,
                seller: a.seller,
                category: a.category,
                extra: a.extra,
            })
        }
        2 => {
            let b = e.bid.ok_or_else(|| missing("bid"))?;
            Event::Bid(Bid {
                auction: b.auction,
                bidder: b.bidder,
                price: b.price,
                channel: b.channel,
                url: b.url,
                date_time: b.date_time,
                extra: b.extra,
            })
        }
        t => return Err(format!("event_type: expected 0 (person), 1 (auction) or 2 (bid), got {t}")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_reads_back_as_written() {
        let b = Event::Bid(Bid {
            auction: 1001,
            bidder: 2002,
            price: 3003,
            channel: "Go\"og\\le\n".into(),
            url: "https://x/y".into(),
            date_time: 1_436_918_400_123,
            extra: "é\u{1}".into(),
        });
        let mut line = String::new();
        b.write_json(&mut line);
        assert!(line.starts_with("{\"event_type\":2,\"bid\":{\"auction\":1001,"), "{line}");
        assert_eq!(parse_event(&line), Ok(b));
    }

    #[test]
    fn a_wrong_field_is_named() {
        let e = parse_event(r#"{"event_type":2,"bid":{"auction":1,"bidder":2,"price":"x"}}"#);
        assert!(e.as_ref().is_err_and(|e| e.starts_with("bid.price: invalid type")), "{e:?}");
        let e = parse_event(r#"{"event_type":7}"#);
        assert!(e.as_ref().is_err_and(|e| e.starts_with("event_type: expected 0")), "{e:?}");
        let e = parse_event(r#"{"event_type":1}"#);
        assert_eq!(e, Err("event_type 1: no `auction` member".into()));
    }
}
