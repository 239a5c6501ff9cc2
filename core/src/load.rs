//! Load reports: what each worker measures of its own load, cheaply, for
//! the scaling policies ([`crate::control::scaling`]).
//!
//! A worker classifies each *turn* of its poll loop (decision 6) by what it
//! did — work (some item made progress), blocked (nothing moved and an
//! item waits on a full outbox: backpressure), or idle — and charges the
//! time until the next turn to that class: one subtraction a turn, with
//! the clock the loop reads anyway. Items count the records they took or
//! made (one add a step). Exchange senders count one record in
//! [`BIN_SAMPLE`] of each burst by bin, from the hashes they routed by
//! ([`BinCounts`]; the first sampled position turns with each burst): a
//! load per bin for an eighth of an increment a record, no atomic and no
//! lock. Every `interval_ms` the worker folds this into a
//! [`LoadReport`] and leaves it on the job's [`LoadBoard`] (a lock tried
//! once an interval, never waited for); the process's policy driver, or on
//! a cluster the node's agent, takes the reports from there.
//!
//! What is *not* promised: a turn that made progress counts whole as work
//! (its polling of idle items included), bins are estimated from a sample
//! of bursts (an unbiased one: bursts do not follow keys), and a report
//! can be lost if the board's lock is held when it is due (the next one
//! comes an interval later).

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Mutex;

/// An exchange sender counts the bin of one record in this many.
pub const BIN_SAMPLE: u64 = 8;

/// A worker's per-bin record counts of the sampled bursts (see the module
/// documentation), shared by its exchange senders; `None` when the job
/// takes no load reports.
pub(crate) type BinCounts = Option<Rc<RefCell<Vec<u32>>>>;

/// Counts the bins of every [`BIN_SAMPLE`]th of `hashes`, from position
/// `from`, into `counts` (`2^bins_log2` of them).
#[inline]
pub(crate) fn count_bins(counts: &RefCell<Vec<u32>>, hashes: &[u64], from: usize, bins_log2: u8) {
    let mut c = counts.borrow_mut();
    for &h in hashes.iter().skip(from).step_by(BIN_SAMPLE as usize) {
        let b = spate_state::keyspace::bin_of(h, bins_log2) as usize;
        if let Some(n) = c.get_mut(b) {
            *n = n.wrapping_add(1);
        }
    }
}

/// One input of a worker (an exchange edge from one producer) over an
/// interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InputLoad {
    /// The exchange edge.
    pub edge: usize,
    /// The producing worker.
    pub producer: usize,
    /// Records taken.
    pub records: u64,
    /// Batches waiting in its queue when the report was made.
    pub queued: usize,
    /// Batches its queue holds at most.
    pub capacity: usize,
}

/// One source instance of a worker over an interval.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceLoad {
    /// The source's name.
    pub name: String,
    /// Records it produced.
    pub records: u64,
    /// Records a second it was asked to produce at the end of the
    /// interval (its rate schedule), if it has one: the offered load,
    /// whatever the job kept up with.
    pub offered_per_s: Option<f64>,
}

/// What one worker measured over one interval.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadReport {
    /// The worker (global id).
    pub worker: usize,
    /// When the interval ended (realtime ms since the Unix epoch; virtual
    /// time in core's tests).
    pub at_ms: u64,
    /// Nanoseconds of turns that made progress (operator work).
    pub busy_ns: u64,
    /// Nanoseconds of turns in which nothing moved and an item waited on
    /// a full outbox (backpressure).
    pub blocked_ns: u64,
    /// Nanoseconds of turns with nothing to do.
    pub idle_ns: u64,
    /// Its source instances.
    pub sources: Vec<SourceLoad>,
    /// Its inputs.
    pub inputs: Vec<InputLoad>,
    /// `B` of the bin counts.
    pub bins_log2: u8,
    /// Records of each bin its exchange senders routed and sampled (one
    /// in [`BIN_SAMPLE`]); empty when it has no keyed exchange.
    pub bin_counts: Vec<u32>,
}

impl LoadReport {
    /// The interval in nanoseconds.
    pub fn interval_ns(&self) -> u64 {
        self.busy_ns + self.blocked_ns + self.idle_ns
    }

    /// The fraction of the interval spent in operator work (0 to 1).
    pub fn busy(&self) -> f64 {
        self.busy_ns as f64 / self.interval_ns().max(1) as f64
    }

    /// The fraction blocked by backpressure.
    pub fn blocked(&self) -> f64 {
        self.blocked_ns as f64 / self.interval_ns().max(1) as f64
    }

    /// Records taken from exchange inputs.
    pub fn records_in(&self) -> u64 {
        self.inputs.iter().map(|i| i.records).sum()
    }

    /// The fullest input queue, as a fraction of its capacity.
    pub fn queue_fill(&self) -> f64 {
        self.inputs.iter().map(|i| i.queued as f64 / i.capacity.max(1) as f64).fold(0.0, f64::max)
    }

    /// The report as one line of words (a control message's payload):
    /// `worker at busy blocked idle bins_log2`, then `s <name> <records>
    /// <offered|->` per source, `i <edge> <producer> <records> <queued>
    /// <capacity>` per input, `b <first> <count>...` runs of non-zero bin
    /// counts. Names must hold no space (source names are identifiers).
    pub fn encode(&self) -> String {
        use std::fmt::Write;
        let mut s = format!(
            "{} {} {} {} {} {}",
            self.worker, self.at_ms, self.busy_ns, self.blocked_ns, self.idle_ns, self.bins_log2
        );
        for src in &self.sources {
            let name: String = src.name.chars().map(|c| if c.is_whitespace() { '_' } else { c }).collect();
            let _ = match src.offered_per_s {
                Some(o) => write!(s, " s {name} {} {o:.0}", src.records),
                None => write!(s, " s {name} {} -", src.records),
            };
        }
        for i in &self.inputs {
            let _ = write!(s, " i {} {} {} {} {}", i.edge, i.producer, i.records, i.queued, i.capacity);
        }
        let mut b = 0;
        while b < self.bin_counts.len() {
            if self.bin_counts[b] == 0 {
                b += 1;
                continue;
            }
            let _ = write!(s, " b {b}");
            while b < self.bin_counts.len() && self.bin_counts[b] != 0 {
                let _ = write!(s, " {}", self.bin_counts[b]);
                b += 1;
            }
        }
        s
    }

    /// Reads [`LoadReport::encode`]'s line; `None` if it is malformed.
    pub fn decode(text: &str) -> Option<LoadReport> {
        let mut w = text.split_ascii_whitespace().peekable();
        let next = |w: &mut std::iter::Peekable<std::str::SplitAsciiWhitespace<'_>>| -> Option<u64> {
            w.next()?.parse().ok()
        };
        let worker = next(&mut w)? as usize;
        let at_ms = next(&mut w)?;
        let (busy_ns, blocked_ns, idle_ns) = (next(&mut w)?, next(&mut w)?, next(&mut w)?);
        let bins_log2 = u8::try_from(next(&mut w)?).ok().filter(|&b| b <= 24)?;
        let mut r = LoadReport {
            worker,
            at_ms,
            busy_ns,
            blocked_ns,
            idle_ns,
            sources: Vec::new(),
            inputs: Vec::new(),
            bins_log2,
            bin_counts: Vec::new(),
        };
        while let Some(tag) = w.next() {
            match tag {
                "s" => {
                    let name = w.next()?.to_string();
                    let records = next(&mut w)?;
                    let offered_per_s = match w.next()? {
                        "-" => None,
                        o => Some(o.parse::<f64>().ok().filter(|o| o.is_finite() && *o >= 0.0)?),
                    };
                    r.sources.push(SourceLoad { name, records, offered_per_s });
                }
                "i" => r.inputs.push(InputLoad {
                    edge: next(&mut w)? as usize,
                    producer: next(&mut w)? as usize,
                    records: next(&mut w)?,
                    queued: next(&mut w)? as usize,
                    capacity: next(&mut w)? as usize,
                }),
                "b" => {
                    let bins = 1usize << bins_log2;
                    let mut b = next(&mut w)? as usize;
                    if r.bin_counts.is_empty() {
                        r.bin_counts = vec![0; bins];
                    }
                    while let Some(c) = w.peek().and_then(|t| t.parse::<u32>().ok()) {
                        w.next();
                        *r.bin_counts.get_mut(b)? = c;
                        b += 1;
                    }
                }
                _ => return None,
            }
        }
        Some(r)
    }
}

/// Where a job's workers leave their latest reports (see the module
/// documentation): one slot per local worker.
#[derive(Debug)]
pub struct LoadBoard {
    /// The interval, ms.
    pub interval_ms: u64,
    slots: Vec<Mutex<Option<LoadReport>>>,
}

impl LoadBoard {
    /// A board for `workers` local workers reporting every `interval_ms`.
    pub fn new(workers: usize, interval_ms: u64) -> Self {
        Self { interval_ms, slots: (0..workers).map(|_| Mutex::new(None)).collect() }
    }

    /// Leaves `report` in slot `slot` without waiting; whether it did (a
    /// reader holding the lock loses the report, not the worker's time).
    pub(crate) fn publish(&self, slot: usize, report: LoadReport) -> bool {
        match self.slots.get(slot).map(Mutex::try_lock) {
            Some(Ok(mut s)) => {
                *s = Some(report);
                true
            }
            _ => false,
        }
    }

    /// Takes the reports left since the last call, in slot order.
    pub fn take(&self) -> Vec<LoadReport> {
        self.slots.iter().filter_map(|s| s.lock().ok().and_then(|mut s| s.take())).collect()
    }
}

/// What a worker's turn was, for the time until the next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TurnKind {
    Busy,
    Blocked,
    Idle,
}

/// A worker's side of load reports (see the module documentation).
pub(crate) struct LoadMeter {
    pub(crate) slot: usize,
    pub(crate) board: std::sync::Arc<LoadBoard>,
    interval_ns: u64,
    last_ns: u64,
    last: TurnKind,
    busy_ns: u64,
    blocked_ns: u64,
    idle_ns: u64,
    pub(crate) next_report_ns: u64,
    pub(crate) bins: BinCounts,
    pub(crate) bins_log2: u8,
}

impl LoadMeter {
    /// A meter for local worker `slot`, reporting to `board` from `now_ns`.
    pub(crate) fn new(
        slot: usize,
        board: std::sync::Arc<LoadBoard>,
        bins: BinCounts,
        bins_log2: u8,
        now_ns: u64,
    ) -> Self {
        let interval_ns = board.interval_ms.max(1) * 1_000_000;
        Self {
            slot,
            board,
            interval_ns,
            last_ns: now_ns,
            last: TurnKind::Idle,
            busy_ns: 0,
            blocked_ns: 0,
            idle_ns: 0,
            next_report_ns: now_ns + interval_ns,
            bins,
            bins_log2,
        }
    }

    /// A turn begins at `now_ns`: the time since the last one is charged
    /// to what that one was.
    #[inline]
    pub(crate) fn begin(&mut self, now_ns: u64) {
        let dt = now_ns.saturating_sub(self.last_ns);
        self.last_ns = now_ns;
        match self.last {
            TurnKind::Busy => self.busy_ns += dt,
            TurnKind::Blocked => self.blocked_ns += dt,
            TurnKind::Idle => self.idle_ns += dt,
        }
    }

    /// What the turn that began last was.
    #[inline]
    pub(crate) fn end(&mut self, kind: TurnKind) {
        self.last = kind;
    }

    /// The report of the interval that ends at `now_ns` (the meter starts
    /// the next), with `sources` and `inputs` filled in by the worker.
    pub(crate) fn report(
        &mut self,
        worker: usize,
        now_ns: u64,
        sources: Vec<SourceLoad>,
        inputs: Vec<InputLoad>,
    ) -> LoadReport {
        self.next_report_ns = now_ns + self.interval_ns;
        let bin_counts = match &self.bins {
            Some(b) => {
                let mut b = b.borrow_mut();
                let c = b.clone();
                b.iter_mut().for_each(|n| *n = 0);
                c
            }
            None => Vec::new(),
        };
        LoadReport {
            worker,
            at_ms: now_ns / 1_000_000,
            busy_ns: std::mem::take(&mut self.busy_ns),
            blocked_ns: std::mem::take(&mut self.blocked_ns),
            idle_ns: std::mem::take(&mut self.idle_ns),
            sources,
            inputs,
            bins_log2: self.bins_log2,
            bin_counts,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> LoadReport {
        let mut bin_counts = vec![0; 16];
        bin_counts[2] = 5;
        bin_counts[3] = 1;
        bin_counts[15] = 9;
        LoadReport {
            worker: 3,
            at_ms: 1_700_000_000_123,
            busy_ns: 700_000_000,
            blocked_ns: 100_000_000,
            idle_ns: 200_000_000,
            sources: vec![
                SourceLoad { name: "source".into(), records: 1_000, offered_per_s: Some(2_000.0) },
                SourceLoad { name: "other".into(), records: 7, offered_per_s: None },
            ],
            inputs: vec![InputLoad { edge: 0, producer: 1, records: 900, queued: 3, capacity: 64 }],
            bins_log2: 4,
            bin_counts,
        }
    }

    #[test]
    fn a_report_round_trips_through_its_line() {
        let r = report();
        assert_eq!(LoadReport::decode(&r.encode()), Some(r.clone()));
        let quiet = LoadReport { sources: vec![], inputs: vec![], bin_counts: vec![], ..r };
        assert_eq!(LoadReport::decode(&quiet.encode()), Some(quiet));
        for bad in ["", "1 2 3", "1 2 3 4 5 30", "1 2 3 4 5 4 x", "1 2 3 4 5 4 b 15 1 2", "1 2 3 4 5 4 s a 1"]
        {
            assert_eq!(LoadReport::decode(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn fractions_and_sums() {
        let r = report();
        assert!((r.busy() - 0.7).abs() < 1e-9);
        assert!((r.blocked() - 0.1).abs() < 1e-9);
        assert_eq!(r.records_in(), 900);
        assert!((r.queue_fill() - 3.0 / 64.0).abs() < 1e-9);
    }

    #[test]
    fn a_meter_charges_each_turn_to_what_it_was() {
        let board = std::sync::Arc::new(LoadBoard::new(1, 1));
        let bins = Some(Rc::new(RefCell::new(vec![0u32; 16])));
        let mut m = LoadMeter::new(0, board.clone(), bins.clone(), 4, 0);
        m.begin(0);
        m.end(TurnKind::Busy);
        m.begin(300);
        m.end(TurnKind::Blocked);
        m.begin(400);
        m.end(TurnKind::Idle);
        m.begin(1_000);
        if let Some(b) = &bins {
            count_bins(b, &[0, 1, 2, 3, 4, 5, 6, 7, u64::MAX], 0, 4);
        }
        let r = m.report(0, 1_000, vec![], vec![]);
        assert_eq!((r.busy_ns, r.blocked_ns, r.idle_ns), (300, 100, 600));
        assert_eq!(r.bin_counts.iter().sum::<u32>(), 2);
        assert_eq!((r.bin_counts[0], r.bin_counts[15]), (1, 1));
        assert!(board.publish(0, r));
        assert_eq!(board.take().len(), 1);
        assert!(board.take().is_empty());
        // Counts start again at zero.
        assert_eq!(m.report(0, 2_000, vec![], vec![]).bin_counts.iter().sum::<u32>(), 0);
    }
}
