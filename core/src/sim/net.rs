//! The simulated network: listeners by address, connections with a
//! handshake, frames delivered in order per direction after a delay,
//! per-channel credit like `spate_net`'s, half-closes, and the faults the
//! world injects — a connection cut, a node's process dying (its
//! connections end after the frames already on the wire, some of the last
//! ones lost). [`SimConn`] implements [`Conn`], so the production links and
//! control connections run over it unchanged.

use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Instant;

use spate_net::frame::{DataHeader, Frame, FrameHeader, Kind};
use spate_net::hello::Rejection;
use spate_net::{Delivery, NetError, NetErrorKind};

use crate::link::Conn;
use crate::sim::rng::Rng;
use crate::time::virtual_clock;

/// The heartbeat interval of a simulated connection.
const HEARTBEAT_NS: u64 = 50_000_000;

/// A frame on its way.
struct Wire {
    at: u64,
    kind: Kind,
    channel: u32,
    seq: u64,
    data: Option<DataHeader>,
    payload: Vec<u8>,
}

/// What a direction of a connection carries after its frames.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Tail {
    /// More may come.
    Open,
    /// The sender half-closed (or its process ended): the end of the
    /// stream, at this time.
    End(u64),
    /// The connection was reset at this time.
    Reset(u64),
}

/// One direction of a connection: what `from` sends to the other end.
struct Direction {
    frames: VecDeque<Wire>,
    tail: Tail,
    /// When the last frame arrives (frames keep their order).
    last_at: u64,
}

impl Direction {
    fn new() -> Self {
        Self { frames: VecDeque::new(), tail: Tail::Open, last_at: 0 }
    }
}

/// One end's own state.
struct End {
    /// The node of this end.
    node: usize,
    /// Credits left per channel for sending data.
    credits: BTreeMap<u32, u32>,
    /// Data frames held per channel, not yet released.
    held: BTreeMap<u32, u32>,
    last_heard: u64,
    last_sent: u64,
    /// This end failed (an error, or its process died).
    failed: bool,
    /// This end shut its sending direction.
    shut: bool,
    /// Nothing holds this end any more (its connection was dropped, or it
    /// never came to be).
    dropped: bool,
}

/// A connection: the two ends (0 connected, 1 accepted) and the two
/// directions (`dirs[i]`: from end `i`).
struct Link {
    ends: [End; 2],
    dirs: [Direction; 2],
    /// The connecting end's name (from its hello), and the listener's.
    names: [String; 2],
    addrs: [SocketAddr; 2],
    window: u32,
    /// Established, at this time (the listener took it at `accept_at`).
    accept_at: u64,
    up_at: Option<u64>,
    /// The listener refused it, at this time.
    refused: Option<(Rejection, u64)>,
    /// Accepted by the listener.
    accepted: bool,
}

/// The whole network (see the module documentation).
pub(crate) struct Net {
    rng: Rng,
    /// Listening addresses and their node.
    listeners: BTreeMap<SocketAddr, usize>,
    links: BTreeMap<u64, Link>,
    next_id: u64,
    /// Delays of a frame, in ns: at least `min`, plus up to `jitter`.
    pub(crate) min_delay_ns: u64,
    pub(crate) jitter_ns: u64,
    /// Frames sent and delivered (for the report).
    pub(crate) frames: u64,
}

/// A handle on the network, shared by every node's environment.
pub(crate) type NetRef = Rc<RefCell<Net>>;

fn now_ns() -> u64 {
    virtual_clock::ns().unwrap_or(0)
}

fn instant(ns: u64) -> Instant {
    virtual_clock::at(ns)
}

fn err(addr: SocketAddr, node: Option<&str>, kind: NetErrorKind) -> NetError {
    NetError { addr, node: node.map(str::to_string), kind }
}

impl Net {
    pub(crate) fn new(seed: u64) -> Self {
        Self {
            rng: Rng::new(seed),
            listeners: BTreeMap::new(),
            links: BTreeMap::new(),
            next_id: 1,
            min_delay_ns: 20_000,
            jitter_ns: 200_000,
            frames: 0,
        }
    }

    fn delay(&mut self) -> u64 {
        self.min_delay_ns + self.rng.below(self.jitter_ns.max(1))
    }

    /// Node `node` listens at `addr`.
    pub(crate) fn listen(&mut self, addr: SocketAddr, node: usize) {
        self.listeners.insert(addr, node);
    }

    /// Node `node`'s process died at `at`: its listener is gone, and every
    /// connection of it ends after the frames already on the wire, with
    /// a few of the last ones lost (its send buffers died with it).
    pub(crate) fn crash(&mut self, node: usize, at: u64) {
        self.listeners.retain(|_, n| *n != node);
        let ids: Vec<u64> = self.links.keys().copied().collect();
        for id in ids {
            let lose = self.rng.below(3) as usize;
            let Some(l) = self.links.get_mut(&id) else { continue };
            for side in 0..2 {
                if l.ends[side].node != node {
                    continue;
                }
                l.ends[side].failed = true;
                let d = &mut l.dirs[side];
                for _ in 0..lose {
                    if d.frames.back().is_some_and(|w| w.at > at) {
                        d.frames.pop_back();
                    }
                }
                if d.tail == Tail::Open {
                    d.tail = Tail::End(d.last_at.max(at) + 1);
                }
                // What it was sent is never read.
                let other = &mut l.dirs[1 - side];
                other.frames.clear();
            }
        }
    }

    /// Node `node`'s process exited: its listener is gone (its
    /// connections close as they are dropped).
    pub(crate) fn listeners_of_node_gone(&mut self, node: usize) {
        self.listeners.retain(|_, n| *n != node);
    }

    /// Cuts the connection between the two ends at `at` (a network
    /// fault): both ends see it reset after a delay; frames on the wire
    /// may be lost.
    pub(crate) fn cut(&mut self, id: u64, at: u64) {
        let d = self.delay();
        if let Some(l) = self.links.get_mut(&id) {
            for dir in &mut l.dirs {
                dir.frames.retain(|w| w.at <= at);
                if dir.tail == Tail::Open {
                    dir.tail = Tail::Reset(at + d);
                }
            }
        }
    }

    /// Connections between two different live nodes, for the world to cut.
    pub(crate) fn cuttable(&self) -> Vec<u64> {
        self.links
            .iter()
            .filter(|(_, l)| l.up_at.is_some() && l.dirs.iter().all(|d| d.tail == Tail::Open))
            .map(|(&id, _)| id)
            .collect()
    }

    /// Forgets connections nothing holds any more.
    pub(crate) fn collect(&mut self) {
        self.links.retain(|_, l| !(l.ends[0].dropped && l.ends[1].dropped));
    }

    fn send(&mut self, id: u64, side: usize, w: Wire) {
        let d = self.delay();
        let Some(l) = self.links.get_mut(&id) else { return };
        if l.ends[1 - side].failed {
            // Nobody reads it.
            return;
        }
        let dir = &mut l.dirs[side];
        if dir.tail != Tail::Open {
            return;
        }
        let at = (w.at + d).max(dir.last_at);
        dir.last_at = at;
        self.frames += 1;
        dir.frames.push_back(Wire { at, ..w });
        l.ends[side].last_sent = w.at;
    }
}

/// An outgoing connection being set up.
pub(crate) struct SimConnecting {
    net: NetRef,
    id: u64,
    addr: SocketAddr,
}

impl Drop for SimConnecting {
    fn drop(&mut self) {
        // An attempt given up before it was established: the listener
        // never sees it.
        if let Ok(mut n) = self.net.try_borrow_mut() {
            if let Some(l) = n.links.get_mut(&self.id) {
                if l.up_at.is_none() {
                    l.ends[0].failed = true;
                    l.ends[0].dropped = true;
                }
            }
        }
    }
}

/// Starts connecting from `node` (listening at `from`) to `addr` as
/// `name`; a missing listener is a refused connection when the attempt
/// is polled.
pub(crate) fn connect(
    net: &NetRef,
    node: usize,
    from: SocketAddr,
    addr: SocketAddr,
    name: String,
    window: u32,
) -> SimConnecting {
    let mut n = net.borrow_mut();
    let t = now_ns();
    let delay = n.delay();
    let id = n.next_id;
    n.next_id += 1;
    let end = |node| End {
        node,
        credits: BTreeMap::new(),
        held: BTreeMap::new(),
        last_heard: t,
        last_sent: t,
        failed: false,
        shut: false,
        dropped: false,
    };
    let to = n.listeners.get(&addr).copied();
    let mut link = Link {
        ends: [end(node), end(to.unwrap_or(usize::MAX))],
        dirs: [Direction::new(), Direction::new()],
        names: [name, String::new()],
        addrs: [from, addr],
        window,
        accept_at: t + delay,
        up_at: None,
        refused: None,
        accepted: false,
    };
    if to.is_none() {
        link.ends[1].failed = true;
        link.ends[1].dropped = true;
    }
    n.links.insert(id, link);
    SimConnecting { net: net.clone(), id, addr }
}

impl SimConnecting {
    /// The connection, once the listener took it and its answer arrived.
    pub(crate) fn poll(&mut self) -> Result<Option<SimConn>, NetError> {
        let t = now_ns();
        let mut n = self.net.borrow_mut();
        let Some(l) = n.links.get_mut(&self.id) else {
            return Err(err(
                self.addr,
                None,
                NetErrorKind::Connect(std::io::ErrorKind::ConnectionRefused.into()),
            ));
        };
        if l.ends[1].failed && !l.accepted {
            if t < l.accept_at {
                return Ok(None);
            }
            n.links.remove(&self.id);
            return Err(err(
                self.addr,
                None,
                NetErrorKind::Connect(std::io::ErrorKind::ConnectionRefused.into()),
            ));
        }
        if let Some((r, at)) = l.refused {
            if t < at {
                return Ok(None);
            }
            n.links.remove(&self.id);
            return Err(err(self.addr, None, NetErrorKind::Rejected(r)));
        }
        match l.up_at {
            Some(up) if t >= up => {
                let peer = l.names[1].clone();
                Ok(Some(SimConn { net: self.net.clone(), id: self.id, side: 0, peer, addr: self.addr }))
            }
            _ => Ok(None),
        }
    }
}

/// Takes the next connection to node `node`'s listener at `addr` whose
/// handshake is due, if `admit` takes its name (a refusal goes back to the
/// connecting side).
pub(crate) fn accept(
    net: &NetRef,
    addr: SocketAddr,
    my_name: &str,
    admit: &mut dyn FnMut(&str) -> Result<(), Rejection>,
) -> Option<SimConn> {
    let t = now_ns();
    let mut n = net.borrow_mut();
    let node = *n.listeners.get(&addr)?;
    let delay = n.delay();
    let id = n
        .links
        .iter()
        .find(|(_, l)| {
            l.addrs[1] == addr && !l.accepted && l.refused.is_none() && !l.ends[1].failed && l.accept_at <= t
        })
        .map(|(&id, _)| id)?;
    let l = n.links.get_mut(&id)?;
    l.ends[1].node = node;
    if l.ends[0].failed {
        // The connecting process died meanwhile.
        l.accepted = true;
        l.ends[1].failed = true;
        l.ends[1].dropped = true;
        n.collect();
        return None;
    }
    match admit(&l.names[0]) {
        Ok(()) => {
            l.accepted = true;
            l.names[1] = my_name.to_string();
            l.up_at = Some(t + delay);
            l.ends[0].last_heard = t + delay;
            l.ends[1].last_heard = t;
            let peer = l.names[0].clone();
            Some(SimConn { net: net.clone(), id, side: 1, peer, addr: l.addrs[0] })
        }
        Err(r) => {
            l.refused = Some((r, t + delay));
            None
        }
    }
}

/// One end of a simulated connection (see the module documentation).
pub(crate) struct SimConn {
    net: NetRef,
    id: u64,
    side: usize,
    peer: String,
    addr: SocketAddr,
}

impl SimConn {
    fn error(&self, kind: NetErrorKind) -> NetError {
        err(self.addr, Some(&self.peer), kind)
    }

    fn with<R>(&self, f: impl FnOnce(&mut Net, &mut Link) -> R) -> Option<R> {
        let mut n = self.net.borrow_mut();
        let mut l = n.links.remove(&self.id)?;
        let r = f(&mut n, &mut l);
        n.links.insert(self.id, l);
        Some(r)
    }
}

impl Drop for SimConn {
    fn drop(&mut self) {
        // Like closing a socket: the peer reads the end of the stream.
        let t = now_ns();
        let side = self.side;
        self.with(|_, l| {
            l.ends[side].shut = true;
            l.ends[side].failed = true;
            l.ends[side].dropped = true;
            let d = &mut l.dirs[side];
            if d.tail == Tail::Open {
                d.tail = Tail::End(d.last_at.max(t) + 1);
            }
        });
        self.net.borrow_mut().collect();
    }
}

impl Conn for SimConn {
    fn peer_node(&self) -> &str {
        &self.peer
    }

    fn poll_io(&mut self) -> Result<bool, NetError> {
        let t = now_ns();
        let side = self.side;
        let r = self.with(|_, l| {
            if l.ends[side].failed {
                return Err(NetErrorKind::Closed);
            }
            let inbound = &l.dirs[1 - side];
            if let Tail::Reset(at) = inbound.tail {
                if t >= at {
                    l.ends[side].failed = true;
                    return Err(NetErrorKind::Io(std::io::ErrorKind::ConnectionReset.into()));
                }
            }
            Ok(inbound.frames.front().is_some_and(|w| w.at <= t))
        });
        match r {
            Some(Ok(b)) => Ok(b),
            Some(Err(k)) => Err(self.error(k)),
            None => Err(self.error(NetErrorKind::Closed)),
        }
    }

    fn poll_recv<F>(&mut self, budget: usize, mut on_frame: F) -> Result<usize, NetError>
    where
        F: FnMut(Frame<'_>) -> Delivery,
    {
        let t = now_ns();
        let side = self.side;
        let mut delivered = 0;
        loop {
            // One frame at a time, the network unborrowed while the
            // callback runs.
            let next = self.with(|_, l| {
                if l.ends[side].failed {
                    return Err(NetErrorKind::Closed);
                }
                let dir = &mut l.dirs[1 - side];
                match dir.frames.front() {
                    Some(w) if w.at <= t => {
                        l.ends[side].last_heard = w.at;
                        Ok(dir.frames.pop_front())
                    }
                    Some(_) => Ok(None),
                    None => match dir.tail {
                        Tail::End(at) if t >= at => Err(NetErrorKind::PeerClosed),
                        Tail::Reset(at) if t >= at => {
                            l.ends[side].failed = true;
                            Err(NetErrorKind::Io(std::io::ErrorKind::ConnectionReset.into()))
                        }
                        _ => Ok(None),
                    },
                }
            });
            let w = match next {
                None => return Err(self.error(NetErrorKind::Closed)),
                Some(Err(k)) => {
                    if delivered > 0 {
                        return Ok(delivered);
                    }
                    return Err(self.error(k));
                }
                Some(Ok(None)) => return Ok(delivered),
                Some(Ok(Some(w))) => w,
            };
            match w.kind {
                Kind::Credit => {
                    let n = w.payload.get(..4).and_then(|b| b.try_into().ok()).map_or(0, u32::from_le_bytes);
                    let ch = w.channel;
                    self.with(|_, l| {
                        let window = l.window;
                        *l.ends[side].credits.entry(ch).or_insert(window) += n;
                    });
                }
                Kind::Heartbeat => {}
                kind => {
                    delivered += 1;
                    let header = FrameHeader { kind, flags: 0, channel: w.channel, seq: w.seq };
                    let d = on_frame(Frame { header, data: w.data, payload: &w.payload });
                    if kind == Kind::Data && d == Delivery::Held {
                        let ch = w.channel;
                        self.with(|_, l| *l.ends[side].held.entry(ch).or_insert(0) += 1);
                    } else if kind == Kind::Data {
                        self.grant(w.channel, 1);
                    }
                    if delivered >= budget {
                        return Ok(delivered);
                    }
                }
            }
        }
    }

    fn try_send_data(
        &mut self,
        channel: u32,
        seq: u64,
        data: &DataHeader,
        records: &[u8],
    ) -> Result<bool, NetError> {
        let t = now_ns();
        let side = self.side;
        let r = self.with(|n, l| {
            if l.ends[side].failed || l.ends[side].shut {
                return Err(NetErrorKind::Closed);
            }
            let window = l.window;
            let c = l.ends[side].credits.entry(channel).or_insert(window);
            if *c == 0 {
                return Ok(false);
            }
            *c -= 1;
            let _ = n;
            Ok(true)
        });
        match r {
            Some(Ok(true)) => {
                let w = Wire {
                    at: t,
                    kind: Kind::Data,
                    channel,
                    seq,
                    data: Some(*data),
                    payload: records.to_vec(),
                };
                self.net.borrow_mut().send(self.id, side, w);
                Ok(true)
            }
            Some(Ok(false)) => Ok(false),
            Some(Err(k)) => Err(self.error(k)),
            None => Err(self.error(NetErrorKind::Closed)),
        }
    }

    fn try_send_control(
        &mut self,
        kind: Kind,
        channel: u32,
        seq: u64,
        payload: &[u8],
    ) -> Result<bool, NetError> {
        let t = now_ns();
        let side = self.side;
        let open = self.with(|_, l| !(l.ends[side].failed || l.ends[side].shut)).unwrap_or(false);
        if !open {
            return Err(self.error(NetErrorKind::Closed));
        }
        let w = Wire { at: t, kind, channel, seq, data: None, payload: payload.to_vec() };
        self.net.borrow_mut().send(self.id, side, w);
        Ok(true)
    }

    fn release(&mut self, channel: u32, n: u32) -> Result<(), NetError> {
        let side = self.side;
        let ok = self.with(|_, l| {
            let h = l.ends[side].held.entry(channel).or_insert(0);
            if *h < n {
                return false;
            }
            *h -= n;
            true
        });
        if ok != Some(true) {
            return Err(self.error(NetErrorKind::Closed));
        }
        self.grant(channel, n);
        Ok(())
    }

    fn poll_heartbeat(&mut self, _now: Instant) -> Result<bool, NetError> {
        let t = now_ns();
        let side = self.side;
        let due = self.with(|_, l| {
            !l.ends[side].failed && !l.ends[side].shut && t >= l.ends[side].last_sent + HEARTBEAT_NS
        });
        if due == Some(true) {
            let w =
                Wire { at: t, kind: Kind::Heartbeat, channel: 0, seq: 0, data: None, payload: Vec::new() };
            self.net.borrow_mut().send(self.id, side, w);
            return Ok(true);
        }
        Ok(false)
    }

    fn shutdown_write(&mut self) -> Result<bool, NetError> {
        let t = now_ns();
        let side = self.side;
        self.with(|_, l| {
            l.ends[side].shut = true;
            let d = &mut l.dirs[side];
            if d.tail == Tail::Open {
                d.tail = Tail::End(d.last_at.max(t) + 1);
            }
        });
        Ok(true)
    }

    fn is_closed(&self) -> bool {
        let side = self.side;
        self.with(|_, l| l.ends[side].failed).unwrap_or(true)
    }

    fn unsent_bytes(&self) -> usize {
        0
    }

    fn last_heard(&self) -> Instant {
        let side = self.side;
        instant(self.with(|_, l| l.ends[side].last_heard).unwrap_or(0))
    }
}

impl SimConn {
    /// Gives `n` credits of `channel` back to the sender.
    fn grant(&mut self, channel: u32, n: u32) {
        let t = now_ns();
        let w = Wire {
            at: t,
            kind: Kind::Credit,
            channel,
            seq: 0,
            data: None,
            payload: n.to_le_bytes().to_vec(),
        };
        self.net.borrow_mut().send(self.id, self.side, w);
    }
}
