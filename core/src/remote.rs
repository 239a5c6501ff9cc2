//! Exchange edges between workers of different node processes.
//!
//! A job can span several node processes ([`ClusterPlacement`]): the job's
//! workers are numbered globally, node by node, and each process runs its
//! own range. Batches between two workers of one process travel on rings;
//! between workers of different processes, on a `spate_net` connection —
//! one per pair of workers, carrying both directions and multiplexing every
//! edge as a channel (`edge * W² + producer * W + consumer`). With one
//! worker per node, as deployments on small VMs run, that is one connection
//! per node pair.
//!
//! The sending side is the same outbox as for a ring ([`Tx::Net`]): a batch
//! that finds no credit or no room in the connection's send buffer stays in
//! the outbox's backlog. The receiving side ([`NetLink`], polled as a work
//! item of the worker loop) decodes each data frame into a [`Batch`] and
//! queues it for its (edge, producer) input item, which takes it like a
//! ring's and gives the credit back: the queue is bounded by the credit
//! window, and a consumer that stops taking batches stops its producer.
//!
//! Closing: a worker half-closes a connection once it has sent every final
//! batch on it and received every final batch from it (no credit grant is
//! needed after that), and is done with it when the peer's half-close
//! arrives. Neither side waits on the other before that point, so closing
//! cannot deadlock, and no byte is discarded by a reset.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet, VecDeque};

use std::rc::Rc;
use std::time::{Duration, Instant};

use spate_net::frame::DataHeader;
use spate_net::{Connecting, Connection, Delivery, Listener, NetConfig, NetErrorKind};

use crate::control::placement::ClusterPlacement;

use crate::batch::{Batch, FLAG_BARRIER, FLAG_COMPACT, FLAG_FINAL};
use crate::ring::{Consumer, Producer};

/// The name a worker-pair connection announces: `"<from>><to>@<epoch>"`.
fn link_name(from: usize, to: usize, epoch: u64) -> String {
    format!("{from}>{to}@{epoch}")
}

/// `(from, to)` of a link name of `epoch` (`None` for another epoch's).
fn parse_link_name(name: &str, epoch: u64) -> Option<(usize, usize)> {
    let (from, to, e) = parse_any_link_name(name)?;
    (e == epoch).then_some((from, to))
}

/// `(from, to, epoch)` of a link name.
pub fn parse_any_link_name(name: &str) -> Option<(usize, usize, u64)> {
    let (link, e) = name.split_once('@')?;
    let (a, b) = link.split_once('>')?;
    Some((a.parse().ok()?, b.parse().ok()?, e.parse().ok()?))
}

/// Connects every local worker with every remote one: the lower global id
/// connects, the higher accepts on `listener`. Returns the connections by
/// (local worker, remote worker), or an error naming what is missing when
/// `connect_timeout` passes.
pub fn connect_mesh(
    p: &ClusterPlacement,
    listener: &mut Listener,
) -> Result<HashMap<(usize, usize), Connection>, String> {
    connect_mesh_or_abort(p, listener, &mut || None)
}

/// As [`connect_mesh`]; gives up as soon as `abort` returns a reason (a
/// node of the deployment failed: its workers will never connect, and the
/// coordinator is already deploying the next epoch).
pub fn connect_mesh_or_abort(
    p: &ClusterPlacement,
    listener: &mut Listener,
    abort: &mut dyn FnMut() -> Option<String>,
) -> Result<HashMap<(usize, usize), Connection>, String> {
    mesh(p, Some(listener), abort, None)
}

/// As [`connect_mesh_or_abort`] for a process that joins a running job
/// (`p.join` is set): it connects to every worker that runs already, and
/// to or from the other replacements by the usual rule (so `listener` is
/// only needed when several workers are replaced at once).
pub fn connect_mesh_joining(
    p: &ClusterPlacement,
    listener: &mut Listener,
    abort: &mut dyn FnMut() -> Option<String>,
    beside: Option<&mut dyn Beside>,
) -> Result<HashMap<(usize, usize), Connection>, String> {
    if p.join.is_none() {
        return Err("only a joining share connects this way".into());
    }
    mesh(p, Some(listener), abort, beside)
}

/// The shares already running in the process of a joining share: a
/// survivor that takes over a failed node's workers runs them as a second
/// share beside its own (live recovery, docs/ARCHITECTURE.md decision 25),
/// and the joining share's links to the survivor's own workers arrive on
/// the listener the joining share is connecting with.
pub trait Beside {
    /// Whether link `from` → `to` of `epoch` is for a share running here.
    fn wants(&self, from: usize, to: usize, epoch: u64) -> bool;
    /// Hands that link's connection over.
    fn take(&mut self, from: usize, to: usize, conn: Connection);
}

fn mesh(
    p: &ClusterPlacement,
    mut listener: Option<&mut Listener>,
    abort: &mut dyn FnMut() -> Option<String>,
    mut beside: Option<&mut dyn Beside>,
) -> Result<HashMap<(usize, usize), Connection>, String> {
    let local = p.local();
    let total = p.total_workers();
    let deadline = Instant::now() + p.connect_timeout;
    // Connections to make: (local worker, remote worker), in progress or
    // to (re)try at the given time (a peer's listener may not be up yet).
    let mut pending: Vec<((usize, usize), Option<Connecting>, Instant)> = Vec::new();
    let mut expected_in: HashSet<(usize, usize)> = HashSet::new();
    for &w in &local {
        for v in 0..total {
            if local.contains(&v) {
                continue;
            }
            // A joining process connects to every worker that runs already
            // (they accept it as the replacement of a failed one).
            let survivor = p.join.as_ref().is_some_and(|j| !j.moved.contains(&v));
            if w < v || survivor {
                pending.push(((w, v), None, Instant::now()));
            } else {
                expected_in.insert((w, v));
            }
        }
    }
    let mut done: HashMap<(usize, usize), Connection> = HashMap::new();
    let mut last_err: HashMap<(usize, usize), String> = HashMap::new();
    loop {
        let now = Instant::now();
        let mut i = 0;
        while i < pending.len() {
            let ((w, v), retry_at) = (pending[i].0, pending[i].2);
            let polled = match pending[i].1.as_mut() {
                Some(c) => c.poll(),
                None if now >= retry_at => {
                    let node = p.node_of(v).ok_or_else(|| format!("worker {v} is on no node"))?;
                    let config = net_config(link_name(w, v, p.epoch), p.cluster);
                    Connection::connect(p.nodes[node].addr, &config, deadline).map(|c| {
                        pending[i].1 = Some(c);
                        None
                    })
                }
                None => Ok(None),
            };
            match polled {
                Ok(Some(c)) => {
                    pending.swap_remove(i);
                    done.insert((w, v), c);
                }
                Ok(None) => i += 1,
                Err(e) if matches!(e.kind, NetErrorKind::Connect(_)) => {
                    // Not listening yet: try again shortly.
                    last_err.insert((w, v), e.to_string());
                    pending[i].1 = None;
                    pending[i].2 = now + Duration::from_millis(20);
                    i += 1;
                }
                Err(e) => return Err(format!("connecting worker {w} to worker {v}: {e}")),
            }
        }
        while let Some(listener) = listener.as_deref_mut() {
            let mut taken = None;
            let mut for_beside = None;
            let accepted = listener.poll_accept_with(|peer| {
                // The peer `from` connects to our worker `to`.
                match parse_link_name(&peer.node, p.epoch) {
                    Some((from, to)) if expected_in.contains(&(to, from)) => {
                        if done.contains_key(&(to, from)) {
                            Err(spate_net::hello::Rejection::DuplicateNode)
                        } else {
                            taken = Some((to, from));
                            Ok(())
                        }
                    }
                    Some((from, to)) if beside.as_deref().is_some_and(|b| b.wants(from, to, p.epoch)) => {
                        for_beside = Some((from, to));
                        Ok(())
                    }
                    _ => Err(spate_net::hello::Rejection::UnknownNode),
                }
            });
            match accepted {
                Ok(Some(c)) => {
                    if let Some(key) = taken {
                        done.insert(key, c);
                    } else if let (Some((from, to)), Some(b)) = (for_beside, beside.as_deref_mut()) {
                        b.take(from, to, c);
                    }
                }
                Ok(None) => break,
                // One bad peer does not stop the others.
                Err(e) => eprintln!("spate: refused a connection: {e}"),
            }
        }
        if pending.is_empty() && expected_in.iter().all(|k| done.contains_key(k)) {
            return Ok(done);
        }
        if let Some(reason) = abort() {
            return Err(format!(
                "node `{}`: connecting epoch {}'s workers: {reason}",
                p.nodes[p.me].name, p.epoch
            ));
        }
        if Instant::now() >= deadline {
            let mut missing: Vec<String> = pending
                .iter()
                .map(|(k, _, _)| match last_err.get(k) {
                    Some(e) => format!("{}->{} ({e})", k.0, k.1),
                    None => format!("{}->{}", k.0, k.1),
                })
                .collect();
            missing.extend(
                expected_in.iter().filter(|k| !done.contains_key(k)).map(|(w, v)| format!("{v}->{w}")),
            );
            missing.sort();
            return Err(format!(
                "node `{}`: workers not connected after {:?}: {}",
                p.nodes[p.me].name,
                p.connect_timeout,
                missing.join(", ")
            ));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// The connection settings of a cluster job's links (and of a node's
/// listener: it announces the credit window of the links it accepts).
pub fn net_config(node: String, cluster: u64) -> NetConfig {
    let mut c = NetConfig::new(node, cluster);
    c.credit_window = crate::limits::NET_CREDIT_WINDOW;
    c
}

/// The channel of `edge` from `producer` to `consumer` among `workers`.
pub(crate) fn channel(edge: usize, producer: usize, consumer: usize, workers: usize) -> u32 {
    (edge * workers * workers + producer * workers + consumer) as u32
}

/// A connection to one remote worker, shared by the routes and inputs that
/// use it, and polled as a work item.
pub(crate) struct NetLink {
    pub(crate) conn: Connection,
    /// Live recovery is on: a peer that vanishes mid-stream takes the link
    /// down (its replacement will re-link it) instead of failing the job.
    live: bool,
    /// Down since then, and why: the peer vanished, no replacement
    /// re-linked yet.
    pub(crate) down: Option<(Instant, String)>,
    /// Per channel received on, the batches waiting for their input item.
    queues: HashMap<u32, Rc<RefCell<VecDeque<Batch>>>>,
    /// Channels this worker sends on / receives on that have not carried
    /// their final batch yet.
    open_out: HashSet<u32>,
    open_in: HashSet<u32>,
    half_closed: bool,
    /// The peer half-closed: nothing more will arrive.
    pub(crate) ended: bool,
    pub(crate) remote: usize,
    /// This worker and the job's workers (to check a frame's channel).
    pub(crate) me: usize,
    workers: usize,
}

impl NetLink {
    pub(crate) fn new(conn: Connection, remote: usize, me: usize, workers: usize) -> Self {
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
    pub(crate) fn relink(&mut self, conn: Connection) {
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
    fn broke(&mut self, why: String) -> Result<bool, String> {
        if self.live {
            if self.down.is_none() {
                eprintln!(
                    "spate: worker {}: {why}: the link is down until a replacement of worker {} re-links it",
                    self.me, self.remote
                );
                self.down = Some((Instant::now(), why));
            }
            Ok(true)
        } else {
            Err(why)
        }
    }

    /// How long the link has been down, and why (`None`: it is up).
    pub(crate) fn down_for(&self) -> Option<(Duration, &str)> {
        self.down.as_ref().map(|(since, why)| (since.elapsed(), why.as_str()))
    }

    /// Moves bytes and received frames; half-closes when both directions
    /// are through. Whether anything moved.
    pub(crate) fn poll(&mut self, now: Instant) -> Result<bool, String> {
        if self.down.is_some() {
            return Ok(false);
        }
        let me = self.remote;
        let fail = |e: spate_net::NetError| format!("connection to worker {me}: {e}");
        let mut moved = match self.conn.poll_io() {
            Ok(m) => m,
            Err(e) if matches!(e.kind, NetErrorKind::PeerClosed) => true,
            Err(e) => return self.broke(fail(e)),
        };
        if !self.ended {
            let (queues, open_in) = (&self.queues, &mut self.open_in);
            let (me, workers) = (self.me, self.workers);
            let mut bad: Option<String> = None;
            let got = self.conn.poll_recv(64, |f| {
                let (Some(dh), Some(q)) = (f.data, queues.get(&f.header.channel)) else {
                    return Delivery::Consumed;
                };
                // The batch must say what its channel says.
                if channel(dh.edge as usize, dh.producer as usize, me, workers) != f.header.channel {
                    bad.get_or_insert_with(|| {
                        format!(
                            "a batch of edge {} from worker {} arrived on channel {}",
                            dh.edge, dh.producer, f.header.channel
                        )
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
                if dh.flags & FLAG_BARRIER != 0 {
                    b.barrier =
                        f.payload.get(..8).and_then(|x| x.try_into().ok()).map_or(0, u64::from_le_bytes);
                } else {
                    b.data.extend_from_slice(f.payload);
                }
                if let Err(e) = b.validate_framing() {
                    bad.get_or_insert_with(|| format!("a batch of edge {} is malformed: {e}", dh.edge));
                    return Delivery::Consumed;
                }
                if dh.flags & FLAG_FINAL != 0 {
                    open_in.remove(&f.header.channel);
                }
                q.borrow_mut().push_back(b);
                Delivery::Held
            });
            if let Some(why) = bad {
                return Err(format!("connection to worker {}: {why}", self.remote));
            }
            match got {
                Ok(n) => moved |= n > 0,
                Err(e) if matches!(e.kind, NetErrorKind::PeerClosed | NetErrorKind::Closed) => {
                    if self.live && !self.open_in.is_empty() {
                        // Gone before ending its streams: it failed.
                        return self.broke(fail(e));
                    }
                    self.ended = true;
                    moved = true;
                }
                Err(e) => return self.broke(fail(e)),
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
            return self.broke(fail(e));
        }
        // Checked after this side's half-close: the peer's last final batch
        // and its end of stream often arrive in one read, and the link is
        // then through, not broken (checked first, a job that ended
        // normally waited 30 s for a re-link and restarted).
        if self.live && self.conn.is_closed() && !self.is_done() {
            return self.broke(format!("connection to worker {me} closed"));
        }
        Ok(moved)
    }

    /// Whether this link is through: both directions closed.
    pub(crate) fn is_done(&self) -> bool {
        self.half_closed && self.ended
    }
}

/// Where an outbox's batches go.
pub(crate) enum Tx {
    Ring(Producer<Batch>),
    Net { link: Rc<RefCell<NetLink>>, channel: u32 },
}

impl Tx {
    /// Sends `b`, or gives it back if there is no room (or credit). A
    /// batch sent to another process comes back too, as `Ok(Some(b))`: it
    /// was copied into the connection, and the caller may keep it for
    /// replay.
    pub(crate) fn try_push(&self, b: Batch) -> Result<Option<Batch>, Batch> {
        match self {
            Tx::Ring(p) => p.try_push(b).map(|()| None),
            Tx::Net { link, channel } => {
                let mut l = link.borrow_mut();
                if l.down.is_some() {
                    return Err(b);
                }
                let h = DataHeader {
                    edge: b.edge,
                    producer: b.producer,
                    watermark: b.watermark,
                    count: b.count,
                    flags: b.flags | if b.compact { FLAG_COMPACT } else { 0 },
                };
                let barrier = b.barrier.to_le_bytes();
                let payload: &[u8] = if b.flags & FLAG_BARRIER != 0 { &barrier } else { &b.data };
                match l.conn.try_send_data(*channel, b.seq, &h, payload) {
                    Ok(true) => {
                        if b.flags & FLAG_FINAL != 0 {
                            l.open_out.remove(channel);
                        }
                        Ok(Some(b))
                    }
                    // A send error closes the connection: `is_closed` says so.
                    Ok(false) | Err(_) => Err(b),
                }
            }
        }
    }

    /// Whether the receiving side is gone.
    pub(crate) fn is_closed(&self) -> bool {
        match self {
            Tx::Ring(p) => p.is_closed(),
            Tx::Net { link, .. } => {
                let l = link.borrow();
                // A live link that broke waits to be re-linked.
                !l.live && l.conn.is_closed()
            }
        }
    }
}

/// Where an input item's batches come from.
pub(crate) enum Rx {
    Ring(Consumer<Batch>),
    Net { link: Rc<RefCell<NetLink>>, channel: u32, queue: Rc<RefCell<VecDeque<Batch>>> },
}

impl Rx {
    pub(crate) fn try_pop(&self) -> Option<Batch> {
        match self {
            Rx::Ring(c) => c.try_pop(),
            Rx::Net { link, channel, queue } => {
                let b = queue.borrow_mut().pop_front()?;
                // The batch is taken: its credit goes back to the producer
                // (unless the stream is over and this side half-closed).
                let mut l = link.borrow_mut();
                if !l.half_closed {
                    let _ = l.conn.release(*channel, 1);
                }
                Some(b)
            }
        }
    }

    /// Whether the producer has gone and every batch was taken.
    pub(crate) fn is_finished(&self) -> bool {
        match self {
            Rx::Ring(c) => c.is_finished(),
            Rx::Net { link, queue, .. } => {
                let l = link.borrow();
                l.down.is_none() && (l.ended || (!l.live && l.conn.is_closed())) && queue.borrow().is_empty()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use spate_net::conn::{Listener, NetConfig};
    use std::time::Duration;

    /// A connected pair over loopback, both ends polled from this thread.
    fn pair() -> (Connection, Connection) {
        let deadline = Instant::now() + Duration::from_secs(10);
        let addr = "127.0.0.1:0".parse().unwrap_or_else(|e| panic!("{e}"));
        let config = |name: &str| {
            let mut c = NetConfig::new(name, 7);
            c.credit_window = 64;
            c
        };
        let mut listener = Listener::bind(addr, config("y")).unwrap_or_else(|e| panic!("{e}"));
        let local = listener.local_addr();
        let mut connecting =
            Connection::connect(local, &config("x"), deadline).unwrap_or_else(|e| panic!("{e}"));
        let (mut x, mut y) = (None, None);
        while x.is_none() || y.is_none() {
            assert!(Instant::now() < deadline, "handshake timed out");
            if x.is_none() {
                x = connecting.poll().unwrap_or_else(|e| panic!("{e}"));
            }
            if y.is_none() {
                y = listener.poll_accept().unwrap_or_else(|e| panic!("{e}"));
            }
        }
        (x.unwrap_or_else(|| unreachable!()), y.unwrap_or_else(|| unreachable!()))
    }

    /// Batch `seq` of `edge` from `producer` (empty; the final one when
    /// `last`).
    fn batch(edge: u32, producer: u32, seq: u64, last: bool) -> Batch {
        let mut b = Batch::with_capacity(edge, producer, 0);
        b.seq = seq;
        if last {
            b.flags = FLAG_FINAL;
        }
        b
    }

    /// Polls `l` until `done` or 5 s.
    fn poll_until(l: &Rc<RefCell<NetLink>>, done: impl Fn(&NetLink) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !done(&l.borrow()) {
            assert!(Instant::now() < deadline, "link state not reached");
            let _ = l.borrow_mut().poll(Instant::now());
        }
    }

    #[test]
    fn a_live_link_whose_peer_ends_in_the_same_read_as_its_last_batch_is_through_not_down() {
        // Worker 0 (x) sends worker 1 (y) three edges, y sends x one.
        const EDGES: u32 = 3;
        let (cx, cy) = pair();
        let to_x = channel(0, 1, 0, 2);
        let x = Rc::new(RefCell::new(NetLink::new(cx, 1, 0, 2)));
        let y = Rc::new(RefCell::new(NetLink::new(cy, 0, 1, 2)));
        for (l, me, peer) in [(&x, 0, 1), (&y, 1, 0)] {
            let mut l = l.borrow_mut();
            l.set_live();
            for e in 0..EDGES as usize {
                let (out, inp) = (channel(e, me, peer, 2), channel(e, peer, me, 2));
                if me == 0 {
                    l.sends_on(out);
                } else {
                    let _ = l.queue(inp);
                }
            }
            if me == 1 {
                l.sends_on(to_x);
            } else {
                let _ = l.queue(to_x);
            }
        }
        // y ends its stream first; x takes it in.
        let ty = Tx::Net { link: y.clone(), channel: to_x };
        assert!(matches!(ty.try_push(batch(0, 1, 1, true)), Ok(Some(_))));
        poll_until(&y, |l| l.conn.unsent_bytes() == 0);
        poll_until(&x, |l| l.open_in.is_empty());
        // x sends more frames than y takes in one poll, ends every edge and
        // half-closes: y reads the end of the stream while the last batches
        // are still buffered, and takes them in the same poll as the end.
        for e in 0..EDGES {
            let tx = Tx::Net { link: x.clone(), channel: channel(e as usize, 0, 1, 2) };
            for seq in 1..=30u64 {
                assert!(matches!(tx.try_push(batch(e, 0, seq, seq == 30)), Ok(Some(_))));
            }
        }
        poll_until(&x, |l| l.half_closed);
        std::thread::sleep(Duration::from_millis(50));
        poll_until(&y, |l| l.is_done() || l.down.is_some());
        let yl = y.borrow();
        assert!(yl.down.is_none(), "the link went down: {:?}", yl.down);
        assert!(yl.is_done());
    }
}
