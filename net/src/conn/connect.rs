//! The connecting side: [`Connection::connect`] starts a non-blocking
//! TCP connect, and the [`Connecting`] it returns is polled through the
//! connect and the handshake until it yields the [`Connection`].

use std::io;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};

use super::handshake::{configure, fresh_nonce, Handshake};
use super::{Connection, NetConfig, Peer};
use crate::auth::{AuthFailure, Role};
use crate::error::{HandshakeStage, NetError, NetErrorKind};
use crate::hello::HelloAuth;

/// How long [`Connecting::wait`] sleeps between polls.
const WAIT_NAP: Duration = Duration::from_micros(100);

/// `EINPROGRESS`: a non-blocking connect under way (std's `ErrorKind` for
/// it is not stable yet).
#[cfg(target_os = "linux")]
const EINPROGRESS: i32 = 115;
/// `EINPROGRESS` on macOS and the BSDs.
#[cfg(not(target_os = "linux"))]
const EINPROGRESS: i32 = 36;

enum ConnectState {
    Tcp(Socket),
    Hello(Handshake),
    Done,
}

impl std::fmt::Debug for ConnectState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectState::Tcp(_) => f.write_str("Tcp"),
            ConnectState::Hello(h) => f.debug_tuple("Hello").field(h).finish(),
            ConnectState::Done => f.write_str("Done"),
        }
    }
}

/// A connection being set up by [`Connection::connect`]: poll it until it
/// yields the [`Connection`] or an error. Dropping it abandons the attempt.
#[derive(Debug)]
pub struct Connecting {
    addr: SocketAddr,
    config: NetConfig,
    started: Instant,
    deadline: Instant,
    state: ConnectState,
}

impl Connecting {
    /// The address being connected to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn error(&mut self, node: Option<&str>, kind: NetErrorKind) -> NetError {
        self.state = ConnectState::Done;
        NetError::new(self.addr, node, kind)
    }

    fn start_handshake(&mut self, socket: Socket) -> Result<Handshake, NetError> {
        let stream: TcpStream = socket.into();
        if let Err(e) = configure(&stream) {
            return Err(self.error(None, NetErrorKind::Io(e)));
        }
        let mut hs = Handshake::new(stream, self.addr, self.started, self.deadline);
        let mut hello = self.config.hello();
        if self.config.secret.is_some() {
            let nc = fresh_nonce().map_err(|k| self.error(None, k))?;
            hs.nonce = Some(nc);
            hello.auth = HelloAuth::Nonce(nc);
        }
        hs.queue_hello(&hello);
        Ok(hs)
    }

    /// Advances the connect and the handshake without blocking:
    /// `Ok(Some(connection))` once done, `Ok(None)` while in progress, or
    /// the error (connection refused, handshake timeout, refused by the
    /// peer, wrong cluster, ...), after which the attempt is over and later
    /// polls return [`NetErrorKind::Closed`].
    pub fn poll(&mut self) -> Result<Option<Connection>, NetError> {
        let now = Instant::now();
        // The state is taken out and put back only while in progress, so an
        // error leaves it `Done`.
        match std::mem::replace(&mut self.state, ConnectState::Done) {
            ConnectState::Done => Err(NetError::new(self.addr, None, NetErrorKind::Closed)),
            ConnectState::Tcp(socket) => {
                let failed = match socket.take_error() {
                    Ok(Some(e)) | Err(e) => Some(e),
                    Ok(None) => None,
                };
                if let Some(e) = failed {
                    return Err(self.error(None, NetErrorKind::Connect(e)));
                }
                match socket.peer_addr() {
                    Ok(_) => {
                        let hs = self.start_handshake(socket)?;
                        self.poll_hello(hs, now)
                    }
                    Err(e) if e.kind() == io::ErrorKind::NotConnected => {
                        if now >= self.deadline {
                            let waited = now - self.started;
                            let stage = HandshakeStage::Connecting;
                            return Err(self.error(None, NetErrorKind::HandshakeTimeout { waited, stage }));
                        }
                        self.state = ConnectState::Tcp(socket);
                        Ok(None)
                    }
                    Err(e) => Err(self.error(None, NetErrorKind::Connect(e))),
                }
            }
            ConnectState::Hello(hs) => self.poll_hello(hs, now),
        }
    }

    /// Advances the hello exchange; keeps `hs` while it is in progress.
    fn poll_hello(&mut self, mut hs: Handshake, now: Instant) -> Result<Option<Connection>, NetError> {
        match hs.flush().and_then(|()| hs.read_hello()) {
            Err(kind) => Err(self.error(None, kind)),
            Ok(None) => match hs.timeout(now) {
                Some(kind) => Err(self.error(None, kind)),
                None => {
                    self.state = ConnectState::Hello(hs);
                    Ok(None)
                }
            },
            Ok(Some(hello)) => {
                if hello.cluster != self.config.cluster {
                    let kind =
                        NetErrorKind::WrongCluster { ours: self.config.cluster, theirs: hello.cluster };
                    return Err(self.error(Some(&hello.node), kind));
                }
                // With a secret: check the acceptor's proof over our nonce,
                // then prove ours over its nonce (the frame after our hello).
                match (&self.config.secret, &hello.auth, hs.nonce) {
                    (Some(k), HelloAuth::Challenge { nonce: na, proof }, Some(nc)) => {
                        let (cluster, name) = (self.config.cluster, &self.config.node);
                        if !k.verify(Role::Acceptor, cluster, &nc, na, name, proof) {
                            let kind = NetErrorKind::Unauthenticated(AuthFailure::BadProof);
                            return Err(self.error(Some(&hello.node), kind));
                        }
                        hs.queue_proof(&k.prove(Role::Connector, cluster, &nc, na, name));
                        // Out now, so the acceptor completes even before
                        // this side's first poll_io.
                        if let Err(kind) = hs.flush() {
                            return Err(self.error(Some(&hello.node), kind));
                        }
                    }
                    (Some(_), _, _) => {
                        let kind = NetErrorKind::Unauthenticated(AuthFailure::PeerOfferedNone);
                        return Err(self.error(Some(&hello.node), kind));
                    }
                    (None, HelloAuth::None, _) => {}
                    (None, _, _) => {
                        let kind = NetErrorKind::Unauthenticated(AuthFailure::NoSecretHere);
                        return Err(self.error(Some(&hello.node), kind));
                    }
                }
                let peer = Peer { node: hello.node, addr: self.addr, credit_window: hello.credit_window };
                Ok(Some(Connection::from_handshake(hs, peer, &self.config, now)))
            }
        }
    }

    /// Polls until done, sleeping briefly between polls. This blocks the
    /// calling thread (up to the deadline): for setup code, tests and
    /// tools, never for a worker's poll loop.
    pub fn wait(mut self) -> Result<Connection, NetError> {
        loop {
            if let Some(c) = self.poll()? {
                return Ok(c);
            }
            std::thread::sleep(WAIT_NAP);
        }
    }
}

impl Connection {
    /// Starts connecting to `addr` as `config.node`, without blocking: the
    /// TCP connect and the handshake complete in [`Connecting::poll`], or
    /// fail with [`NetErrorKind::HandshakeTimeout`] once `deadline` has
    /// passed.
    pub fn connect(addr: SocketAddr, config: &NetConfig, deadline: Instant) -> Result<Connecting, NetError> {
        config.validate().map_err(|k| NetError::new(addr, None, k))?;
        let err = |e| NetError::new(addr, None, NetErrorKind::Connect(e));
        let socket =
            Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP)).map_err(err)?;
        socket.set_nonblocking(true).map_err(err)?;
        socket.set_nodelay(true).map_err(err)?;
        let mut connecting = Connecting {
            addr,
            config: config.clone(),
            started: Instant::now(),
            deadline,
            state: ConnectState::Done,
        };
        match socket.connect(&addr.into()) {
            Ok(()) => connecting.state = ConnectState::Hello(connecting.start_handshake(socket)?),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock || e.raw_os_error() == Some(EINPROGRESS) => {
                connecting.state = ConnectState::Tcp(socket);
            }
            Err(e) => return Err(err(e)),
        }
        Ok(connecting)
    }
}
