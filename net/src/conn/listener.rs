//! The accepting side: a [`Listener`] accepts peers and runs their
//! handshakes, polled, and hands out each finished [`Connection`].
//!
//! Each pending handshake has its own deadline, and a listener holds at
//! most [`PENDING_HANDSHAKES_MAX`] of them, [`PENDING_PER_ADDR_MAX`] from
//! one IP address: a connection accepted beyond either bound drops the
//! oldest pending one (of that address, or of all), reported as
//! [`Rejection::Busy`]. So idle or junk connections never hold a real
//! peer in the kernel's accept queue, and a peer that does its handshake
//! at once (as every node does) gets through however many idle ones are
//! open. With a cluster secret, a peer is handed out only once it proved
//! it (decision 46); until then nothing it sent reaches the caller but its
//! claimed name, which `admit` may refuse early.

use std::io;
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::time::Instant;

use super::handshake::{configure, fresh_nonce, Handshake};
use super::{Connection, NetConfig, Peer};
use crate::auth::{AuthFailure, Role};
use crate::error::{NetError, NetErrorKind};
use crate::hello::{GoodbyeReason, HelloAuth, Rejection};
use crate::limits::{ACCEPTS_PER_POLL, PENDING_HANDSHAKES_MAX, PENDING_PER_ADDR_MAX};

/// A listening socket that accepts peers and runs their handshakes, polled.
#[derive(Debug)]
pub struct Listener {
    listener: TcpListener,
    local: SocketAddr,
    config: NetConfig,
    pending: Vec<Handshake>,
    /// Peers dropped for newer ones, not reported yet (at most
    /// [`PENDING_HANDSHAKES_MAX`]: a flood beyond is dropped unreported).
    dropped: Vec<SocketAddr>,
}

impl Listener {
    /// Listens on `addr` (port 0: one the OS picks, see
    /// [`local_addr`](Self::local_addr)) as node `config.node`.
    pub fn bind(addr: SocketAddr, config: NetConfig) -> Result<Listener, NetError> {
        config.validate().map_err(|k| NetError::new(addr, None, k))?;
        let err = |e| NetError::new(addr, None, NetErrorKind::Bind(e));
        let listener = TcpListener::bind(addr).map_err(err)?;
        listener.set_nonblocking(true).map_err(err)?;
        let local = listener.local_addr().map_err(err)?;
        Ok(Listener { listener, local, config, pending: Vec::new(), dropped: Vec::new() })
    }

    /// The address the listener is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Handshakes in progress.
    pub fn pending_handshakes(&self) -> usize {
        self.pending.len()
    }

    /// Whether peers must prove the cluster secret.
    pub fn authenticates(&self) -> bool {
        self.config.secret.is_some()
    }

    /// [`poll_accept_with`](Self::poll_accept_with), admitting every node
    /// name.
    pub fn poll_accept(&mut self) -> Result<Option<Connection>, NetError> {
        self.poll_accept_with(|_| Ok(()))
    }

    /// Accepts new connections and advances pending handshakes, without
    /// blocking. Returns the first connection whose handshake completes
    /// (`admit` decides on the peer's name: unknown, duplicate; it is asked
    /// when the hello arrives and, with a secret, again once the peer
    /// proved it, and must change no state), or the error of the first
    /// peer that fails (bad or missing hello, wrong cluster, not
    /// authenticated, refused, timed out, dropped for a newer one: the
    /// error names its address and the reason, and the peer is dropped),
    /// or `Ok(None)` when neither happened. Call it until `Ok(None)` to
    /// serve every peer; errors concern one peer only (or, for
    /// [`NetErrorKind::Accept`], this one call) and the listener stays
    /// usable.
    pub fn poll_accept_with<A>(&mut self, mut admit: A) -> Result<Option<Connection>, NetError>
    where
        A: FnMut(&Peer) -> Result<(), Rejection>,
    {
        let now = Instant::now();
        for _ in 0..ACCEPTS_PER_POLL {
            match self.listener.accept() {
                Ok((stream, addr)) => {
                    if let Err(e) = configure(&stream) {
                        return Err(NetError::new(addr, None, NetErrorKind::Io(e)));
                    }
                    let deadline = now + self.config.handshake_timeout;
                    if let Some(old) = self.make_room(addr.ip()) {
                        // Reported after the pending handshakes are served
                        // (below), so that a flood of new connections never
                        // keeps them from being advanced.
                        let gone = old.addr;
                        old.goodbye(GoodbyeReason::Rejected(Rejection::Busy));
                        if self.dropped.len() < PENDING_HANDSHAKES_MAX {
                            self.dropped.push(gone);
                        }
                    }
                    self.pending.push(Handshake::new(stream, addr, now, deadline));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e)
                    if matches!(e.kind(), io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted) => {}
                Err(e) => return Err(NetError::new(self.local, None, NetErrorKind::Accept(e))),
            }
        }
        let mut i = 0;
        while i < self.pending.len() {
            let hs = &mut self.pending[i];
            let addr = hs.addr;
            if hs.awaiting_proof.is_some() {
                match hs.flush().and_then(|()| hs.read_proof()) {
                    Err(kind) => {
                        let hs = self.pending.swap_remove(i);
                        let node = hs.awaiting_proof.as_ref().map(|w| w.0.node.clone());
                        if matches!(kind, NetErrorKind::Unauthenticated(_)) {
                            hs.goodbye(GoodbyeReason::Rejected(Rejection::Unauthenticated));
                        }
                        return Err(NetError::new(addr, node.as_deref(), kind));
                    }
                    Ok(None) => {
                        if let Some(kind) = hs.timeout(now) {
                            let hs = self.pending.swap_remove(i);
                            let node = hs.awaiting_proof.as_ref().map(|w| w.0.node.clone());
                            return Err(NetError::new(addr, node.as_deref(), kind));
                        }
                        i += 1;
                    }
                    Ok(Some(proof)) => {
                        let mut hs = self.pending.swap_remove(i);
                        let Some(waiting) = hs.awaiting_proof.take() else { continue };
                        let (hello, nc, na) = *waiting;
                        let proved = self.config.secret.as_ref().is_some_and(|k| {
                            k.verify(Role::Connector, self.config.cluster, &nc, &na, &hello.node, &proof)
                        });
                        if !proved {
                            hs.goodbye(GoodbyeReason::Rejected(Rejection::Unauthenticated));
                            let kind = NetErrorKind::Unauthenticated(AuthFailure::BadProof);
                            return Err(NetError::new(addr, Some(&hello.node), kind));
                        }
                        let peer = Peer { node: hello.node, addr, credit_window: hello.credit_window };
                        if let Err(r) = admit(&peer) {
                            hs.goodbye(GoodbyeReason::Rejected(r));
                            return Err(NetError::new(addr, Some(&peer.node), NetErrorKind::Rejected(r)));
                        }
                        return Ok(Some(Connection::from_handshake(hs, peer, &self.config, now)));
                    }
                }
                continue;
            }
            match hs.flush().and_then(|()| hs.read_hello()) {
                Err(kind) => {
                    self.pending.swap_remove(i);
                    return Err(NetError::new(addr, None, kind));
                }
                Ok(None) => {
                    if let Some(kind) = hs.timeout(now) {
                        self.pending.swap_remove(i);
                        return Err(NetError::new(addr, None, kind));
                    }
                    i += 1;
                }
                Ok(Some(hello)) => {
                    let mut hs = self.pending.swap_remove(i);
                    if hello.cluster != self.config.cluster {
                        hs.goodbye(GoodbyeReason::WrongCluster);
                        let kind =
                            NetErrorKind::WrongCluster { ours: self.config.cluster, theirs: hello.cluster };
                        return Err(NetError::new(addr, Some(&hello.node), kind));
                    }
                    let failure = match (&self.config.secret, &hello.auth) {
                        (Some(_), HelloAuth::Nonce(_)) | (None, HelloAuth::None) => None,
                        (Some(_), _) => Some(AuthFailure::PeerOfferedNone),
                        (None, _) => Some(AuthFailure::NoSecretHere),
                    };
                    if let Some(a) = failure {
                        hs.goodbye(GoodbyeReason::Rejected(Rejection::Unauthenticated));
                        return Err(NetError::new(addr, Some(&hello.node), NetErrorKind::Unauthenticated(a)));
                    }
                    let peer = Peer { node: hello.node.clone(), addr, credit_window: hello.credit_window };
                    if let Err(r) = admit(&peer) {
                        hs.goodbye(GoodbyeReason::Rejected(r));
                        return Err(NetError::new(addr, Some(&peer.node), NetErrorKind::Rejected(r)));
                    }
                    let mut ours = self.config.hello();
                    if let (Some(k), HelloAuth::Nonce(nc)) = (&self.config.secret, &hello.auth) {
                        // Our challenge and proof; the peer is handed out
                        // only once its proof arrives.
                        let na = match fresh_nonce() {
                            Ok(n) => n,
                            Err(kind) => return Err(NetError::new(addr, Some(&peer.node), kind)),
                        };
                        let proof = k.prove(Role::Acceptor, self.config.cluster, nc, &na, &hello.node);
                        ours.auth = HelloAuth::Challenge { nonce: na, proof };
                        hs.queue_hello(&ours);
                        hs.awaiting_proof = Some(Box::new((hello.clone(), *nc, na)));
                        if let Err(kind) = hs.flush() {
                            return Err(NetError::new(addr, Some(&peer.node), kind));
                        }
                        // Back to the list (at its end): served again in
                        // this loop, since index `i` now holds another.
                        self.pending.push(hs);
                        continue;
                    }
                    // Answer now (the socket's buffer is empty, so the few
                    // bytes go at once); what remains goes with the first
                    // poll_io.
                    hs.queue_hello(&ours);
                    if let Err(kind) = hs.flush() {
                        return Err(NetError::new(addr, Some(&peer.node), kind));
                    }
                    return Ok(Some(Connection::from_handshake(hs, peer, &self.config, now)));
                }
            }
        }
        match self.dropped.pop() {
            Some(addr) => Err(NetError::new(addr, None, NetErrorKind::Rejected(Rejection::Busy))),
            None => Ok(None),
        }
    }

    /// Makes room for one more handshake from `ip`: removes and returns
    /// the oldest pending one of `ip` if it has [`PENDING_PER_ADDR_MAX`],
    /// else the oldest of all if there are [`PENDING_HANDSHAKES_MAX`].
    fn make_room(&mut self, ip: IpAddr) -> Option<Handshake> {
        let oldest = |hs: &[Handshake], of_ip: bool| {
            hs.iter()
                .enumerate()
                .filter(|(_, h)| !of_ip || h.addr.ip() == ip)
                .min_by_key(|(_, h)| h.started())
                .map(|(i, _)| i)
        };
        let from_ip = self.pending.iter().filter(|h| h.addr.ip() == ip).count();
        let victim = if from_ip >= PENDING_PER_ADDR_MAX {
            oldest(&self.pending, true)
        } else if self.pending.len() >= PENDING_HANDSHAKES_MAX {
            oldest(&self.pending, false)
        } else {
            None
        };
        victim.map(|i| self.pending.remove(i))
    }
}
