//! Connecting a share's workers to every other worker of the job, as a
//! sans-IO state machine ([`Mesh`]): it says which connections to open
//! (the lower global id connects, the higher accepts; a share that joins a
//! running job connects to every worker that runs already), decides about
//! each incoming link by its name, and says when every link is up or what
//! is missing when the connect timeout passes. The node agent drives it
//! with its environment's connections (real sockets in production, the
//! simulator's in tests); [`connect_blocking`] drives it with real sockets
//! for a process that starts a cluster share directly.
//!
//! A link names itself `"<from>><to>@<epoch>"` in its hello: links of
//! another epoch are refused, so nothing of a fenced deployment can join a
//! newer one.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use spate_net::hello::Rejection;
use spate_net::{Connection, Listener, NetError, NetErrorKind};

use crate::control::placement::ClusterPlacement;
use crate::link::error::{MeshError, MissingLink};
use crate::link::net_config;

/// How long a connection attempt to a peer that does not listen yet waits
/// before it is tried again.
const RETRY: Duration = Duration::from_millis(20);

/// The name a worker-pair connection announces: `"<from>><to>@<epoch>"`.
pub fn link_name(from: usize, to: usize, epoch: u64) -> String {
    format!("{from}>{to}@{epoch}")
}

/// `(from, to, epoch)` of a link name.
pub fn parse_link_name(name: &str) -> Option<(usize, usize, u64)> {
    let (link, e) = name.split_once('@')?;
    let (a, b) = link.split_once('>')?;
    Some((a.parse().ok()?, b.parse().ok()?, e.parse().ok()?))
}

/// A connection the mesh wants opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    /// The local worker.
    pub local: usize,
    /// The remote worker.
    pub remote: usize,
    /// Its node's listener.
    pub addr: SocketAddr,
    /// The name to announce (see [`link_name`]).
    pub name: String,
}

/// The links of one share being set up (see the module documentation).
/// `C` is the connection type.
pub struct Mesh<C> {
    node: String,
    epoch: u64,
    /// `(local, remote)` to connect, and when to try next (`None`: in
    /// flight).
    outgoing: BTreeMap<(usize, usize), Option<Instant>>,
    /// `(local, remote)` the remote side opens.
    incoming: BTreeSet<(usize, usize)>,
    done: BTreeMap<(usize, usize), C>,
    last_err: BTreeMap<(usize, usize), String>,
    addrs: BTreeMap<usize, SocketAddr>,
    deadline: Instant,
    timeout: Duration,
}

impl<C> Mesh<C> {
    /// The links of `p`'s local workers (its `join`, if set, says the share
    /// joins a running job), to be up within `p.connect_timeout` of `now`.
    pub fn new(p: &ClusterPlacement, now: Instant) -> Self {
        let local = p.local();
        let total = p.total_workers();
        let mut outgoing = BTreeMap::new();
        let mut incoming = BTreeSet::new();
        let mut addrs = BTreeMap::new();
        for &w in &local {
            for v in 0..total {
                if local.contains(&v) {
                    continue;
                }
                // A joining share connects to every worker that runs
                // already (they accept it as the replacement of a failed
                // one).
                let survivor = p.join.as_ref().is_some_and(|j| !j.moved.contains(&v));
                if w < v || survivor {
                    outgoing.insert((w, v), Some(now));
                    if let Some(n) = p.node_of(v) {
                        addrs.insert(v, p.nodes[n].addr);
                    }
                } else {
                    incoming.insert((w, v));
                }
            }
        }
        Self {
            node: p.nodes.get(p.me).map_or_else(String::new, |n| n.name.clone()),
            epoch: p.epoch,
            outgoing,
            incoming,
            done: BTreeMap::new(),
            last_err: BTreeMap::new(),
            addrs,
            deadline: now + p.connect_timeout,
            timeout: p.connect_timeout,
        }
    }

    /// The deployment's epoch.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The connections to open now; each is in flight until
    /// [`Mesh::connected`] or [`Mesh::connect_failed`].
    pub fn due(&mut self, now: Instant) -> Vec<Outgoing> {
        let mut out = Vec::new();
        for (&(w, v), at) in self.outgoing.iter_mut() {
            if at.is_some_and(|t| now >= t) {
                if let Some(&addr) = self.addrs.get(&v) {
                    *at = None;
                    out.push(Outgoing { local: w, remote: v, addr, name: link_name(w, v, self.epoch) });
                }
            }
        }
        out
    }

    /// The connection from `local` to `remote` is up.
    pub fn connected(&mut self, local: usize, remote: usize, conn: C) {
        if self.outgoing.remove(&(local, remote)).is_some() {
            self.done.insert((local, remote), conn);
        }
    }

    /// The connection from `local` to `remote` failed: a peer that does not
    /// listen yet (`retry`) is tried again shortly; any other failure is
    /// the error of the whole mesh.
    pub fn connect_failed(
        &mut self,
        local: usize,
        remote: usize,
        why: NetError,
        retry: bool,
        now: Instant,
    ) -> Result<(), MeshError> {
        if !retry {
            return Err(MeshError::Connect { local, remote, source: why });
        }
        if let Some(at) = self.outgoing.get_mut(&(local, remote)) {
            *at = Some(now + RETRY);
        }
        self.last_err.insert((local, remote), why.to_string());
        Ok(())
    }

    /// Whether this mesh takes an incoming link named `from>to@epoch`
    /// (`Ok(Some((to, from)))`: as local worker `to`'s link to `from`),
    /// refuses it (a duplicate), or does not know it (`Ok(None)`: someone
    /// else on the node may).
    pub fn admit(&self, from: usize, to: usize, epoch: u64) -> Result<Option<(usize, usize)>, Rejection> {
        if epoch != self.epoch || !self.incoming.contains(&(to, from)) {
            return Ok(None);
        }
        if self.done.contains_key(&(to, from)) {
            return Err(Rejection::DuplicateNode);
        }
        Ok(Some((to, from)))
    }

    /// Local worker `local`'s link from `remote` arrived.
    pub fn accepted(&mut self, local: usize, remote: usize, conn: C) {
        if self.incoming.contains(&(local, remote)) {
            self.done.insert((local, remote), conn);
        }
    }

    /// Whether every link is up.
    pub fn is_complete(&self) -> bool {
        self.outgoing.is_empty() && self.incoming.iter().all(|k| self.done.contains_key(k))
    }

    /// With every link up: the connections by (local worker, remote worker).
    pub fn into_links(self) -> BTreeMap<(usize, usize), C> {
        self.done
    }

    /// The error when the connect timeout has passed at `now` with links
    /// missing (naming them, with the last error of each).
    pub fn timed_out(&self, now: Instant) -> Option<MeshError> {
        if now < self.deadline || self.is_complete() {
            return None;
        }
        let mut missing: Vec<MissingLink> = self
            .outgoing
            .keys()
            .map(|&(from, to)| MissingLink { from, to, last_error: self.last_err.get(&(from, to)).cloned() })
            .collect();
        missing.extend(
            self.incoming.iter().filter(|k| !self.done.contains_key(k)).map(|&(w, v)| MissingLink {
                from: v,
                to: w,
                last_error: None,
            }),
        );
        Some(MeshError::TimedOut { node: self.node.clone(), after: self.timeout, missing })
    }
}

/// Connects every local worker of `p` with every remote one over real
/// sockets, accepting on `listener`, blocking until they are up (or the
/// connect timeout passes: the error names the missing links).
pub fn connect_blocking(
    p: &ClusterPlacement,
    listener: &mut Listener,
) -> Result<BTreeMap<(usize, usize), Connection>, MeshError> {
    let mut mesh: Mesh<Connection> = Mesh::new(p, Instant::now());
    let mut pending: Vec<((usize, usize), spate_net::Connecting)> = Vec::new();
    loop {
        let now = Instant::now();
        for o in mesh.due(now) {
            match Connection::connect(o.addr, &net_config(o.name, p.cluster), now + p.connect_timeout) {
                Ok(c) => pending.push(((o.local, o.remote), c)),
                Err(e) => {
                    let retry = matches!(e.kind, NetErrorKind::Connect(_));
                    mesh.connect_failed(o.local, o.remote, e, retry, now)?;
                }
            }
        }
        let mut i = 0;
        while i < pending.len() {
            let (w, v) = pending[i].0;
            match pending[i].1.poll() {
                Ok(Some(c)) => {
                    pending.swap_remove(i);
                    mesh.connected(w, v, c);
                }
                Ok(None) => i += 1,
                Err(e) => {
                    pending.swap_remove(i);
                    let retry = matches!(e.kind, NetErrorKind::Connect(_));
                    mesh.connect_failed(w, v, e, retry, now)?;
                }
            }
        }
        loop {
            let mut taken = None;
            let accepted = listener.poll_accept_with(|peer| match parse_link_name(&peer.node) {
                Some((from, to, e)) => match mesh.admit(from, to, e)? {
                    Some(k) => {
                        taken = Some(k);
                        Ok(())
                    }
                    None => Err(Rejection::UnknownNode),
                },
                None => Err(Rejection::UnknownNode),
            });
            match accepted {
                Ok(Some(c)) => {
                    if let Some((to, from)) = taken {
                        mesh.accepted(to, from, c);
                    }
                }
                Ok(None) => break,
                // One bad peer does not stop the others.
                Err(e) => eprintln!("spate: refused a connection: {e}"),
            }
        }
        if mesh.is_complete() {
            return Ok(mesh.into_links());
        }
        if let Some(e) = mesh.timed_out(now) {
            return Err(e);
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}
