//! The accepting side: a [`Listener`] accepts peers and runs their
//! handshakes, polled, and hands out each finished [`Connection`].

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::time::Instant;

use super::handshake::{configure, Handshake};
use super::{Connection, NetConfig, Peer};
use crate::error::{NetError, NetErrorKind};
use crate::hello::{GoodbyeReason, Rejection};
use crate::limits::{ACCEPTS_PER_POLL, PENDING_HANDSHAKES_MAX};

/// A listening socket that accepts peers and runs their handshakes, polled.
#[derive(Debug)]
pub struct Listener {
    listener: TcpListener,
    local: SocketAddr,
    config: NetConfig,
    pending: Vec<Handshake>,
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
        Ok(Listener { listener, local, config, pending: Vec::new() })
    }

    /// The address the listener is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Handshakes in progress.
    pub fn pending_handshakes(&self) -> usize {
        self.pending.len()
    }

    /// [`poll_accept_with`](Self::poll_accept_with), admitting every node
    /// name.
    pub fn poll_accept(&mut self) -> Result<Option<Connection>, NetError> {
        self.poll_accept_with(|_| Ok(()))
    }

    /// Accepts new connections and advances pending handshakes, without
    /// blocking. Returns the first connection whose handshake completes
    /// (`admit` decides on the peer's name first: unknown, duplicate), or
    /// the error of the first peer that fails (bad or missing hello, wrong
    /// cluster, refused, timed out: the error names its address and the
    /// reason, and the peer is dropped), or `Ok(None)` when neither
    /// happened. Call it until `Ok(None)` to serve every peer; errors
    /// concern one peer only (or, for [`NetErrorKind::Accept`], this one
    /// call) and the listener stays usable.
    pub fn poll_accept_with<A>(&mut self, mut admit: A) -> Result<Option<Connection>, NetError>
    where
        A: FnMut(&Peer) -> Result<(), Rejection>,
    {
        let now = Instant::now();
        for _ in 0..ACCEPTS_PER_POLL {
            if self.pending.len() >= PENDING_HANDSHAKES_MAX {
                break;
            }
            match self.listener.accept() {
                Ok((stream, addr)) => {
                    if let Err(e) = configure(&stream) {
                        return Err(NetError::new(addr, None, NetErrorKind::Io(e)));
                    }
                    let deadline = now + self.config.handshake_timeout;
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
                    let peer = Peer { node: hello.node, addr, credit_window: hello.credit_window };
                    if let Err(r) = admit(&peer) {
                        hs.goodbye(GoodbyeReason::Rejected(r));
                        return Err(NetError::new(addr, Some(&peer.node), NetErrorKind::Rejected(r)));
                    }
                    // Answer now (the socket's buffer is empty, so the few
                    // bytes go at once); what remains goes with the first
                    // poll_io.
                    hs.queue_hello(&self.config.hello());
                    if let Err(kind) = hs.flush() {
                        return Err(NetError::new(addr, Some(&peer.node), kind));
                    }
                    return Ok(Some(Connection::from_handshake(hs, peer, &self.config, now)));
                }
            }
        }
        Ok(None)
    }
}
