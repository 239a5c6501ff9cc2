//! The worker's side of one connection to a remote worker ([`NetLink`]):
//! polled as a work item, it turns received data frames into batches for
//! their input items, half-closes when both directions are through, and —
//! with live recovery — goes down instead of failing when the peer
//! vanishes, until the peer's replacement re-links it.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet, VecDeque};
use std::rc::Rc;
use std::time::{Duration, Instant};

use spate_net::{Delivery, NetErrorKind};

use crate::batch::{Batch, FLAG_BARRIER, FLAG_COMPACT, FLAG_FINAL, FLAG_HANDOFF};
use crate::link::channel;
use crate::link::conn::Conn;
use crate::link::error::LinkError;

/// A connection to one remote worker, shared by the routes and inputs that
/// use it, and polled as a work item.
pub(crate) struct NetLink<C> {
    pub(crate) conn: C,
    /// Live recovery is on: a peer that vanishes mid-stream takes the link
    /// down (its replacement will re-link it) instead of failing the job.
    pub(crate) live: bool,
    /// Down since then, and why: the peer vanished, no replacement
    /// re-linked yet.
    pub(crate) down: Option<(Instant, LinkError)>,
    /// Per channel received on, the batches waiting for their input item.
    queues: HashMap<u32, Rc<RefCell<VecDeque<Batch>>>>,
    /// Channels this worker sends on / receives on that have not carried
    /// their final batch yet.
    pub(crate) open_out: HashSet<u32>,
    pub(crate) open_in: HashSet<u32>,
    pub(crate) half_closed: bool,
    /// The peer half-closed: nothing more will arrive.
    pub(crate) ended: bool,
    pub(crate) remote: usize,
    /// This worker and the job's workers (to check a frame's channel).
    pub(crate) me: usize,
    workers: usize,
}

impl<C: Conn> NetLink<C> {
    pub(crate) fn new(conn: C, remote: usize, me: usize, workers: usize) -> Self {
        Self {
            me,
            workers,
            conn,
            live: false,
            down: None,
            queues: HashMap::new(),
            open_out: HashSet::new(),
            open_in: HashSet::new(),
            half_closed: false,
            ended: false,
            remote,
        }
    }

    /// The queue of batches received on `channel`.
    pub(crate) fn queue(&mut self, channel: u32) -> Rc<RefCell<VecDeque<Batch>>> {
        self.open_in.insert(channel);
        self.queues.entry(channel).or_default().clone()
    }

    pub(crate) fn sends_on(&mut self, channel: u32) {
        self.open_out.insert(channel);
    }

    /// Turns live recovery on for this link (see [`NetLink::down`]).
    pub(crate) fn set_live(&mut self) {
        self.live = true;
    }

    /// The peer's replacement connected: carry on over `conn` as if the
    /// link were new. Every channel is open again in both directions (the
    /// replacement replays from its checkpoint, this side re-sends what it
    /// buffered), and batches still queued from the old peer are dropped:
    /// the replacement produces them again, and the receivers' counts
    /// (see the worker loop) tell which records were already taken.
    pub(crate) fn relink(&mut self, conn: C) {
        self.conn = conn;
        self.down = None;
        self.ended = false;
        self.half_closed = false;
        for (ch, q) in &self.queues {
            q.borrow_mut().clear();
            self.open_in.insert(*ch);
        }
    }

    /// Re-opens `channel` for sending (a re-link replays its batches).
    pub(crate) fn reopen_out(&mut self, channel: u32) {
        self.open_out.insert(channel);
    }

    /// The link broke: with live recovery it goes down until re-linked,
    /// else the error fails the job.
    fn broke(&mut self, why: LinkError, now: Instant) -> Result<bool, LinkError> {
        if self.live {
            if self.down.is_none() {
                eprintln!(
                    "spate: worker {}: {why}: the link is down until a replacement of worker {} re-links it",
                    self.me, self.remote
                );
                self.down = Some((now, why));
            }
            Ok(true)
        } else {
            Err(why)
        }
    }

    /// How long the link has been down, and why (`None`: it is up).
    pub(crate) fn down_for(&self, now: Instant) -> Option<(Duration, &LinkError)> {
        self.down.as_ref().map(|(since, why)| (now.saturating_duration_since(*since), why))
    }

    /// Moves bytes and received frames; half-closes when both directions
    /// are through. Whether anything moved.
    pub(crate) fn poll(&mut self, now: Instant) -> Result<bool, LinkError> {
        if self.down.is_some() {
            return Ok(false);
        }
        let me = self.remote;
        let fail = |source: spate_net::NetError| LinkError::Connection { worker: me, source };
        let mut moved = match self.conn.poll_io() {
            Ok(m) => m,
            Err(e) if matches!(e.kind, NetErrorKind::PeerClosed) => true,
            Err(e) => return self.broke(fail(e), now),
        };
        if !self.ended {
            let (queues, open_in) = (&self.queues, &mut self.open_in);
            let (me, workers, remote) = (self.me, self.workers, self.remote);
            let mut bad: Option<LinkError> = None;
            let got = self.conn.poll_recv(64, |f| {
                let (Some(dh), Some(q)) = (f.data, queues.get(&f.header.channel)) else {
                    return Delivery::Consumed;
                };
                // The batch must say what its channel says.
                if channel(dh.edge as usize, dh.producer as usize, me, workers) != f.header.channel {
                    bad.get_or_insert(LinkError::Misrouted {
                        worker: remote,
                        edge: dh.edge,
                        producer: dh.producer,
                        channel: f.header.channel,
                    });
                    return Delivery::Consumed;
                }
                let mut b = Batch::with_capacity(dh.edge, dh.producer, 0);
                b.untrusted = true;
                b.seq = f.header.seq;
                b.watermark = dh.watermark;
                b.count = dh.count;
                b.flags = dh.flags & !FLAG_COMPACT;
                b.compact = dh.flags & FLAG_COMPACT != 0;
                if dh.flags & (FLAG_BARRIER | FLAG_HANDOFF) != 0 {
                    b.barrier =
                        f.payload.get(..8).and_then(|x| x.try_into().ok()).map_or(0, u64::from_le_bytes);
                } else {
                    b.data.extend_from_slice(f.payload);
                }
                if let Err(source) = b.validate_framing() {
                    bad.get_or_insert(LinkError::Malformed { worker: remote, edge: dh.edge, source });
                    return Delivery::Consumed;
                }
                if dh.flags & FLAG_FINAL != 0 {
                    open_in.remove(&f.header.channel);
                }
                q.borrow_mut().push_back(b);
                Delivery::Held
            });
            if let Some(why) = bad {
                return Err(why);
            }
            match got {
                Ok(n) => moved |= n > 0,
                Err(e) if matches!(e.kind, NetErrorKind::PeerClosed | NetErrorKind::Closed) => {
                    if self.live && !self.open_in.is_empty() {
                        // Gone before ending its streams: it failed.
                        return self.broke(fail(e), now);
                    }
                    self.ended = true;
                    moved = true;
                }
                Err(e) => return self.broke(fail(e), now),
            }
        }
        let io = if !self.half_closed && self.open_out.is_empty() && self.open_in.is_empty() {
            self.conn.shutdown_write().map(|h| self.half_closed = h)
        } else if !self.half_closed {
            self.conn.poll_heartbeat(now).map(|_| ())
        } else {
            Ok(())
        };
        if let Err(e) = io {
            return self.broke(fail(e), now);
        }
        // Checked after this side's half-close: the peer's last final batch
        // and its end of stream often arrive in one read, and the link is
        // then through, not broken (checked first, a job that ended
        // normally waited 30 s for a re-link and restarted).
        if self.live && self.conn.is_closed() && !self.is_done() {
            return self.broke(LinkError::Closed { worker: me }, now);
        }
        Ok(moved)
    }

    /// Whether this link is through: both directions closed.
    pub(crate) fn is_done(&self) -> bool {
        self.half_closed && self.ended
    }
}
