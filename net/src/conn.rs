//! Node-to-node connections over TCP, driven by polling.
//!
//! A worker of Spate is one synchronous poll loop that never awaits
//! (docs/ARCHITECTURE.md, decision 15: glommio 0.9's executor can spin
//! forever with runnable tasks, so nothing on a worker may be a glommio task,
//! waker or timer). Connections are therefore plain `std::net` sockets in
//! non-blocking mode with `TCP_NODELAY`, not glommio's networking, and every
//! method here returns at once: the loop calls them on each pass, next to
//! its rings.
//!
//! * [`Listener::bind`] opens a non-blocking listening socket;
//!   [`Listener::poll_accept`] accepts connections and advances their
//!   handshakes (half-done ones are kept for later polls), returning each
//!   finished [`Connection`], or an error naming the failed peer while it
//!   keeps serving the others.
//! * [`Connection::connect`] starts a non-blocking connect and returns a
//!   [`Connecting`] to poll until the handshake is done.
//! * A [`Connection`] multiplexes channels (`u32`, assigned by the layer
//!   above). [`try_send_data`](Connection::try_send_data) and
//!   [`try_send_control`](Connection::try_send_control) queue one frame or
//!   return `false` when the channel has no credit or the send buffer is
//!   full; [`poll_io`](Connection::poll_io) writes what the socket takes and
//!   reads what it has; [`poll_recv`](Connection::poll_recv) hands out
//!   crc-verified frames borrowed from the read buffer (the payload is a
//!   slice of it: no copy), processing credit grants and heartbeats itself.
//!
//! # Handshake
//!
//! The connecting side sends a [`Hello`] (node name, cluster id, the credit
//! window it grants per channel); the accepting side checks the cluster id,
//! asks its admit callback about the name (unknown, duplicate), and answers
//! with its own hello, or with a goodbye naming the reason and closes. Both
//! sides give the handshake a deadline. Frames may follow a hello at once.
//!
//! # Flow control
//!
//! One credit is one data frame the receiver has a buffer for, per channel
//! ([`crate::credit`]). A sender starts each channel with the window of
//! the peer's hello, spends one credit per data frame and cannot send with
//! none. The receiver counts each data frame it hands out as held until the
//! application frees it: at once, by returning [`Delivery::Consumed`] from
//! the `poll_recv` callback, or later, with [`Connection::release`]. Freed
//! buffers go back to the sender as credit frames, batched to a quarter
//! window. So a receiver that stops consuming stops its sender after one
//! window per channel, and memory stays bounded on both sides
//! ([`crate::limits`]). Control frames take no credit; they are bounded by
//! the send buffer and, at the receiver, by the read-ahead (a receiver that
//! does not poll leaves bytes in TCP, whose window then stops the sender).
//!
//! # Errors and liveness
//!
//! A corrupt (crc), oversized, malformed or truncated frame, a credit
//! violation or a socket error closes that connection only: the call
//! returns a [`NetError`] naming the peer (node and address) and the
//! reason, and later calls return [`NetErrorKind::Closed`]. Frames decoded
//! before the bad one are still handed out. The connection sends a
//! heartbeat when it has sent nothing for a while
//! ([`poll_heartbeat`](Connection::poll_heartbeat)), and
//! [`last_heard`](Connection::last_heard) tells when bytes last arrived, so
//! the caller can declare a silent peer failed.
//!
//! Nothing allocates per frame once the buffers have grown to their
//! working size.
//!
//! # Example
//!
//! Both ends polled from one thread (a worker would poll its side from its
//! loop):
//!
//! ```
//! use std::time::{Duration, Instant};
//! use spate_net::conn::{Connection, Delivery, Listener, NetConfig};
//! use spate_net::frame::DataHeader;
//!
//! let deadline = Instant::now() + Duration::from_secs(10);
//! let mut listener = Listener::bind("127.0.0.1:0".parse()?, NetConfig::new("node-b", 7))?;
//! let mut connecting = Connection::connect(listener.local_addr(), &NetConfig::new("node-a", 7), deadline)?;
//! let (mut a, mut b) = (None, None);
//! while a.is_none() || b.is_none() {
//!     assert!(Instant::now() < deadline);
//!     if a.is_none() {
//!         a = connecting.poll()?;
//!     }
//!     if b.is_none() {
//!         b = listener.poll_accept()?;
//!     }
//! }
//! let (mut a, mut b) = (a.unwrap(), b.unwrap());
//! assert_eq!(b.peer().node, "node-a");
//!
//! let header = DataHeader { edge: 1, producer: 0, watermark: 10, count: 1, flags: 0 };
//! assert!(a.try_send_data(3, 0, &header, b"record bytes")?);
//! let mut got = Vec::new();
//! while got.is_empty() {
//!     assert!(Instant::now() < deadline);
//!     a.poll_io()?;
//!     b.poll_io()?;
//!     b.poll_recv(16, |frame| {
//!         got.extend_from_slice(frame.payload);
//!         Delivery::Consumed
//!     })?;
//! }
//! assert_eq!(got, b"record bytes");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};

use crate::credit::{CreditError, RecvCredits, SendCredits};
use crate::error::{HandshakeStage, NetError, NetErrorKind};
use crate::frame::{
    encode_control, encode_credit, encode_data, DataHeader, Frame, FrameDecoder, FrameError, Kind,
    DATA_HEADER_BYTES, FRAME_OVERHEAD, LEN_BYTES, MAX_FRAME_BYTES,
};
use crate::hello::{GoodbyeReason, Hello, Rejection};
use crate::limits::{
    ACCEPTS_PER_POLL, CHANNELS_MAX_DEFAULT, DEFAULT_CREDIT_WINDOW, HANDSHAKE_TIMEOUT_DEFAULT,
    HEARTBEAT_INTERVAL_DEFAULT, HELLO_FRAME_BYTES_MAX, NODE_NAME_BYTES_MAX, PENDING_HANDSHAKES_MAX,
    READ_AHEAD_BYTES_DEFAULT, READ_CHUNK_BYTES, SEND_BUFFER_BYTES_DEFAULT,
};

/// Bytes of a credit frame on the wire.
const CREDIT_FRAME_BYTES: usize = FRAME_OVERHEAD + 4;

/// How long [`Connecting::wait`] sleeps between polls.
const WAIT_NAP: Duration = Duration::from_micros(100);

/// A node's network identity and the limits of its connections.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetConfig {
    /// This node's name, sent in its hello (1 to
    /// [`NODE_NAME_BYTES_MAX`] bytes of UTF-8).
    pub node: String,
    /// The cluster (job) id; a peer with another is refused.
    pub cluster: u64,
    /// Data frames per channel this node buffers for a peer, granted to
    /// the peer's senders in the hello (at least 1).
    pub credit_window: u32,
    /// Freed buffers batched into one credit grant; 0 means a quarter of
    /// the window (at least 1).
    pub grant_threshold: u32,
    /// Bound of a connection's send buffer in bytes
    /// ([`SEND_BUFFER_BYTES_DEFAULT`]).
    pub send_buffer_bytes: usize,
    /// Read-ahead of a connection in bytes ([`READ_AHEAD_BYTES_DEFAULT`]).
    pub read_ahead_bytes: usize,
    /// Most channels a peer may send data on ([`CHANNELS_MAX_DEFAULT`]).
    pub channels_max: usize,
    /// Time an accepted peer has to complete its handshake
    /// ([`HANDSHAKE_TIMEOUT_DEFAULT`]).
    pub handshake_timeout: Duration,
    /// Quiet time after which [`Connection::poll_heartbeat`] sends a
    /// heartbeat ([`HEARTBEAT_INTERVAL_DEFAULT`]).
    pub heartbeat_interval: Duration,
}

impl NetConfig {
    /// The defaults of [`crate::limits`] for node `node` of cluster
    /// `cluster`.
    pub fn new(node: impl Into<String>, cluster: u64) -> Self {
        NetConfig {
            node: node.into(),
            cluster,
            credit_window: DEFAULT_CREDIT_WINDOW,
            grant_threshold: 0,
            send_buffer_bytes: SEND_BUFFER_BYTES_DEFAULT,
            read_ahead_bytes: READ_AHEAD_BYTES_DEFAULT,
            channels_max: CHANNELS_MAX_DEFAULT,
            handshake_timeout: HANDSHAKE_TIMEOUT_DEFAULT,
            heartbeat_interval: HEARTBEAT_INTERVAL_DEFAULT,
        }
    }

    /// Checks every field; the error names the first bad one.
    pub fn validate(&self) -> Result<(), NetErrorKind> {
        let bad = |field: &'static str, reason: String| Err(NetErrorKind::Config { field, reason });
        let name = self.node.len();
        if name == 0 || name > NODE_NAME_BYTES_MAX {
            return bad("node", format!("{name} bytes, must be 1 to {NODE_NAME_BYTES_MAX}"));
        }
        if self.credit_window == 0 {
            return bad("credit_window", "must be at least 1".into());
        }
        if self.grant_threshold > self.credit_window {
            return bad(
                "grant_threshold",
                format!("{} exceeds the credit window of {}", self.grant_threshold, self.credit_window),
            );
        }
        if self.send_buffer_bytes < CREDIT_FRAME_BYTES {
            return bad("send_buffer_bytes", format!("must be at least {CREDIT_FRAME_BYTES}"));
        }
        if self.read_ahead_bytes == 0 {
            return bad("read_ahead_bytes", "must be at least 1".into());
        }
        if self.channels_max == 0 {
            return bad("channels_max", "must be at least 1".into());
        }
        if self.handshake_timeout.is_zero() {
            return bad("handshake_timeout", "must be positive".into());
        }
        Ok(())
    }

    fn threshold(&self) -> u32 {
        if self.grant_threshold == 0 {
            (self.credit_window / 4).max(1)
        } else {
            self.grant_threshold
        }
    }

    fn hello(&self) -> Hello {
        Hello { node: self.node.clone(), cluster: self.cluster, credit_window: self.credit_window }
    }
}

/// The node at the other end of a connection, as its hello introduced it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    /// The peer's node name.
    pub node: String,
    /// The peer's socket address.
    pub addr: SocketAddr,
    /// Credits per channel the peer granted (the window of our senders).
    pub credit_window: u32,
}

/// What the application did with a data frame that
/// [`Connection::poll_recv`] handed it (ignored for control frames).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// Done with: processed in place or copied to memory the credit does
    /// not cover. Its credit goes back to the sender.
    Consumed,
    /// The batch was kept (copied into a buffer the credit covers); the
    /// application calls [`Connection::release`] when that buffer is free.
    Held,
}

/// Outgoing bytes: `buf[pos..]` is not yet written. Reused; compacted only
/// when a frame does not fit behind the unsent bytes.
#[derive(Debug, Default)]
struct OutBuf {
    buf: Vec<u8>,
    pos: usize,
}

impl OutBuf {
    fn unsent(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Whether a frame of `frame_bytes` may be queued under `bound` (an
    /// empty buffer takes any frame, so a frame larger than the bound is
    /// not refused forever).
    fn has_room(&self, frame_bytes: usize, bound: usize) -> bool {
        let unsent = self.unsent();
        unsent == 0 || unsent + frame_bytes <= bound
    }

    /// The buffer, ready to append a frame of `frame_bytes`.
    fn prepare(&mut self, frame_bytes: usize) -> &mut Vec<u8> {
        if self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        } else if self.pos > 0 && self.buf.capacity() - self.buf.len() < frame_bytes {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        &mut self.buf
    }

    fn push_credit(&mut self, channel: u32, credits: u32) {
        encode_credit(channel, 0, credits, self.prepare(CREDIT_FRAME_BYTES));
    }

    /// Writes until the socket would block or nothing is left; the bytes
    /// written.
    fn write_to(&mut self, stream: &mut TcpStream) -> io::Result<usize> {
        let mut written = 0;
        while self.pos < self.buf.len() {
            match stream.write(&self.buf[self.pos..]) {
                Ok(0) => return Err(io::Error::new(io::ErrorKind::WriteZero, "socket accepted no bytes")),
                Ok(n) => {
                    self.pos += n;
                    written += n;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(written)
    }
}

/// Sets the options every connection socket gets.
fn configure(stream: &TcpStream) -> io::Result<()> {
    stream.set_nonblocking(true)?;
    stream.set_nodelay(true)
}

/// One side of a handshake in progress: our hello (or goodbye) going out,
/// the peer's hello coming in.
#[derive(Debug)]
struct Handshake {
    stream: TcpStream,
    addr: SocketAddr,
    out: OutBuf,
    decoder: FrameDecoder,
    started: Instant,
    deadline: Instant,
}

impl Handshake {
    fn new(stream: TcpStream, addr: SocketAddr, started: Instant, deadline: Instant) -> Self {
        Handshake { stream, addr, out: OutBuf::default(), decoder: FrameDecoder::new(), started, deadline }
    }

    fn queue_hello(&mut self, hello: &Hello) {
        let mut payload = Vec::with_capacity(crate::hello::HELLO_FIXED_BYTES + hello.node.len());
        hello.encode(&mut payload);
        let out = self.out.prepare(FRAME_OVERHEAD + payload.len());
        // A hello is far below the frame limit (HELLO_FRAME_BYTES_MAX).
        let _ = encode_control(Kind::Hello, 0, 0, &payload, out);
    }

    /// Best effort: tells the peer why it is refused, then closes.
    fn goodbye(mut self, reason: GoodbyeReason) {
        let out = self.out.prepare(FRAME_OVERHEAD + 1);
        let _ = encode_control(Kind::Goodbye, 0, 0, &[reason.code()], out);
        let _ = self.out.write_to(&mut self.stream);
        let _ = self.stream.shutdown(Shutdown::Write);
    }

    fn flush(&mut self) -> Result<(), NetErrorKind> {
        self.out.write_to(&mut self.stream).map(|_| ()).map_err(NetErrorKind::Io)
    }

    /// Reads what has arrived; the peer's hello once it is complete.
    fn read_hello(&mut self) -> Result<Option<Hello>, NetErrorKind> {
        let max = LEN_BYTES + HELLO_FRAME_BYTES_MAX as usize;
        while self.decoder.needed() > 0 {
            let announced = self.decoder.buffered() + self.decoder.needed();
            if announced > max {
                return Err(NetErrorKind::OversizedHello { len: announced, max });
            }
            let buf = self.decoder.read_buf(max);
            match self.stream.read(buf) {
                Ok(0) => {
                    return Err(match self.decoder.finish() {
                        Ok(()) => NetErrorKind::PeerClosed,
                        Err(e) => NetErrorKind::Frame(e),
                    })
                }
                Ok(n) => self.decoder.commit(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(NetErrorKind::Io(e)),
            }
        }
        match self.decoder.next_frame() {
            Ok(None) => Ok(None),
            Ok(Some(f)) => match f.header.kind {
                Kind::Hello => Hello::decode(f.payload).map(Some).map_err(NetErrorKind::BadHello),
                Kind::Goodbye => Err(NetErrorKind::RejectedByPeer(GoodbyeReason::decode(f.payload))),
                k => Err(NetErrorKind::NotHello(k)),
            },
            Err(FrameError::TooLarge { len, .. }) => {
                Err(NetErrorKind::OversizedHello { len: (len as usize).saturating_add(LEN_BYTES), max })
            }
            Err(e) => Err(NetErrorKind::Frame(e)),
        }
    }

    fn timeout(&self, now: Instant) -> Option<NetErrorKind> {
        if now < self.deadline {
            return None;
        }
        let stage =
            if self.out.unsent() > 0 { HandshakeStage::SendingHello } else { HandshakeStage::AwaitingHello };
        Some(NetErrorKind::HandshakeTimeout { waited: now - self.started, stage })
    }
}

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
        hs.queue_hello(&self.config.hello());
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

/// A connection to one peer node, after a successful handshake. See the
/// [module documentation](self) for the model.
#[derive(Debug)]
pub struct Connection {
    stream: TcpStream,
    peer: Peer,
    out: OutBuf,
    decoder: FrameDecoder,
    /// Per channel we send data on, the credits the peer granted.
    send: HashMap<u32, SendCredits>,
    /// Per channel the peer sends data on, our buffers and grants.
    recv: HashMap<u32, RecvCredits>,
    credit_window: u32,
    grant_threshold: u32,
    send_buffer_bytes: usize,
    read_ahead_bytes: usize,
    channels_max: usize,
    heartbeat_interval: Duration,
    last_heard: Instant,
    last_sent: Instant,
    heartbeat_seq: u64,
    /// The peer closed its side; frames still buffered are handed out
    /// before the end is reported.
    eof: bool,
    failed: bool,
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

    fn from_handshake(hs: Handshake, peer: Peer, config: &NetConfig, now: Instant) -> Connection {
        Connection {
            stream: hs.stream,
            peer,
            out: hs.out,
            decoder: hs.decoder,
            send: HashMap::new(),
            recv: HashMap::new(),
            credit_window: config.credit_window,
            grant_threshold: config.threshold(),
            send_buffer_bytes: config.send_buffer_bytes,
            read_ahead_bytes: config.read_ahead_bytes,
            channels_max: config.channels_max,
            heartbeat_interval: config.heartbeat_interval,
            last_heard: now,
            last_sent: now,
            heartbeat_seq: 0,
            eof: false,
            failed: false,
        }
    }

    /// The peer: node name, address, and the window it granted.
    pub fn peer(&self) -> &Peer {
        &self.peer
    }

    /// This end's socket address.
    pub fn local_addr(&self) -> Result<SocketAddr, NetError> {
        self.stream.local_addr().map_err(|e| self.error(NetErrorKind::Io(e)))
    }

    /// Whether an error has closed the connection.
    pub fn is_closed(&self) -> bool {
        self.failed
    }

    /// When bytes last arrived from the peer (or the handshake finished).
    /// A peer silent for longer than the failure timeout is failed: every
    /// live peer sends heartbeats when it has nothing else to send.
    pub fn last_heard(&self) -> Instant {
        self.last_heard
    }

    /// Closes the sending direction once everything queued is written:
    /// the peer reads the end of the stream after the last frame, while
    /// this side keeps receiving. Returns whether the close happened (false
    /// while bytes are still queued: call again after
    /// [`poll_io`](Self::poll_io)). Nothing can be sent afterwards, credit
    /// grants included, so call it only once nothing more will be received
    /// that needs credit.
    pub fn shutdown_write(&mut self) -> Result<bool, NetError> {
        if self.out.unsent() > 0 {
            return Ok(false);
        }
        match self.stream.shutdown(std::net::Shutdown::Write) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(true),
            Err(e) => Err(self.error(NetErrorKind::Io(e))),
        }
    }

    /// Bytes queued and not yet written to the socket.
    pub fn unsent_bytes(&self) -> usize {
        self.out.unsent()
    }

    /// Bytes received and not yet handed out as frames.
    pub fn buffered_bytes(&self) -> usize {
        self.decoder.buffered()
    }

    /// Bytes the connection's send and receive buffers hold allocated (for
    /// tests and metrics).
    pub fn buffer_capacity(&self) -> usize {
        self.out.buf.capacity() + self.decoder.capacity()
    }

    /// Credits available to send data on `channel` (the peer's window on a
    /// channel not used yet).
    pub fn send_credits(&self, channel: u32) -> u32 {
        self.send.get(&channel).map_or(self.peer.credit_window, SendCredits::available)
    }

    /// Data frames received on `channel` and held (not yet released).
    pub fn held(&self, channel: u32) -> u32 {
        self.recv.get(&channel).map_or(0, RecvCredits::held)
    }

    fn error(&self, kind: NetErrorKind) -> NetError {
        NetError::new(self.peer.addr, Some(&self.peer.node), kind)
    }

    /// Closes the connection for good and returns the error saying why.
    fn fail(&mut self, kind: NetErrorKind) -> NetError {
        self.failed = true;
        let _ = self.stream.shutdown(Shutdown::Both);
        self.error(kind)
    }

    fn check_open(&self) -> Result<(), NetError> {
        if self.failed {
            Err(self.error(NetErrorKind::Closed))
        } else {
            Ok(())
        }
    }

    /// Queues a data frame (one batch: its header fields and records) on
    /// `channel` with batch sequence number `seq`. `Ok(false)`, with
    /// nothing queued and no credit spent, when the channel has no credit or
    /// the send buffer is full: retry after [`poll_io`](Self::poll_io) and
    /// [`poll_recv`](Self::poll_recv) (which takes in the credit grants).
    /// A frame over [`MAX_FRAME_BYTES`] is refused with
    /// [`NetErrorKind::FrameTooLarge`] (the connection stays usable).
    /// The frame is written by a later `poll_io`.
    pub fn try_send_data(
        &mut self,
        channel: u32,
        seq: u64,
        data: &DataHeader,
        records: &[u8],
    ) -> Result<bool, NetError> {
        self.check_open()?;
        let frame_bytes = FRAME_OVERHEAD + DATA_HEADER_BYTES + records.len();
        let len = (frame_bytes - LEN_BYTES) as u64;
        if len > u64::from(MAX_FRAME_BYTES) {
            return Err(self.error(NetErrorKind::FrameTooLarge { len, max: MAX_FRAME_BYTES }));
        }
        if !self.out.has_room(frame_bytes, self.send_buffer_bytes) {
            return Ok(false);
        }
        let window = self.peer.credit_window;
        let credits = self.send.entry(channel).or_insert_with(|| SendCredits::new(window));
        if !credits.try_consume() {
            return Ok(false);
        }
        if let Err(e) = encode_data(channel, seq, data, records, self.out.prepare(frame_bytes)) {
            // Unreachable: the size was checked and the header is a data
            // header. Give the credit back and report it.
            let _ = self.send.get_mut(&channel).map(|c| c.on_grant(1));
            return Err(self.error(NetErrorKind::Frame(e)));
        }
        Ok(true)
    }

    /// Queues a control frame of `kind` (`Deploy`, `Start`,
    /// `CheckpointChunk`, `Ack`, `Recovery`, `Report`, `Heartbeat`,
    /// `Goodbye`). Control frames take no credit; `Ok(false)` when the send
    /// buffer is full. `Data`, `Hello` and `Credit` frames are refused with
    /// [`NetErrorKind::InvalidSend`]: the connection sends those itself or
    /// through [`try_send_data`](Self::try_send_data).
    pub fn try_send_control(
        &mut self,
        kind: Kind,
        channel: u32,
        seq: u64,
        payload: &[u8],
    ) -> Result<bool, NetError> {
        self.check_open()?;
        if matches!(kind, Kind::Data | Kind::Hello | Kind::Credit) {
            return Err(self.error(NetErrorKind::InvalidSend(kind)));
        }
        let frame_bytes = FRAME_OVERHEAD + payload.len();
        let len = (frame_bytes - LEN_BYTES) as u64;
        if len > u64::from(MAX_FRAME_BYTES) {
            return Err(self.error(NetErrorKind::FrameTooLarge { len, max: MAX_FRAME_BYTES }));
        }
        if !self.out.has_room(frame_bytes, self.send_buffer_bytes) {
            return Ok(false);
        }
        encode_control(kind, channel, seq, payload, self.out.prepare(frame_bytes))
            .map_err(|e| self.error(NetErrorKind::Frame(e)))?;
        Ok(true)
    }

    /// Writes queued frames until the socket would block, then reads until
    /// it would block or the read-ahead is full (and a complete frame is
    /// buffered). Returns whether any byte moved. Never blocks.
    pub fn poll_io(&mut self) -> Result<bool, NetError> {
        self.check_open()?;
        let mut progress = false;
        if self.out.unsent() > 0 {
            match self.out.write_to(&mut self.stream) {
                Ok(0) => {}
                Ok(_) => {
                    self.last_sent = Instant::now();
                    progress = true;
                }
                Err(e) => return Err(self.fail(NetErrorKind::Io(e))),
            }
        }
        let mut read_any = false;
        while !self.eof && self.decoder.error().is_none() {
            if self.decoder.needed() == 0 && self.decoder.buffered() >= self.read_ahead_bytes {
                break;
            }
            let buf = self.decoder.read_buf(READ_CHUNK_BYTES);
            let asked = buf.len();
            match self.stream.read(buf) {
                Ok(0) => self.eof = true,
                Ok(n) => {
                    self.decoder.commit(n);
                    read_any = true;
                    if n < asked {
                        break; // the socket is (very likely) drained
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.fail(NetErrorKind::Io(e))),
            }
        }
        if read_any {
            self.last_heard = Instant::now();
            progress = true;
        }
        self.check_end()?;
        Ok(progress)
    }

    /// After the peer closed: once no complete frame is left, the end of
    /// the stream is the error (a partial frame makes it a truncation).
    fn check_end(&mut self) -> Result<(), NetError> {
        if self.eof && self.decoder.error().is_none() && self.decoder.needed() > 0 {
            let kind = match self.decoder.finish() {
                Ok(()) => NetErrorKind::PeerClosed,
                Err(e) => NetErrorKind::Frame(e),
            };
            return Err(self.fail(kind));
        }
        Ok(())
    }

    /// Hands out up to `budget` received frames (data and control) to
    /// `on_frame`, in order, each borrowing the read buffer; returns how
    /// many. Credit and heartbeat frames are processed here and not handed
    /// out. For each data frame `on_frame` says whether its buffer is free
    /// ([`Delivery::Consumed`]: the credit goes back) or held
    /// ([`Delivery::Held`]: call [`release`](Self::release) later).
    /// Decodes only what [`poll_io`](Self::poll_io) has read; never blocks.
    /// A corrupt, truncated, oversized or malformed frame, or a peer
    /// breaking the credit protocol, closes the connection with an error,
    /// after the frames before it were handed out.
    pub fn poll_recv<F>(&mut self, budget: usize, mut on_frame: F) -> Result<usize, NetError>
    where
        F: FnMut(Frame<'_>) -> Delivery,
    {
        self.check_open()?;
        let mut delivered = 0;
        while delivered < budget {
            let frame = match self.decoder.next_frame() {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(e) => {
                    let kind = NetErrorKind::Frame(e);
                    return Err(self.fail(kind));
                }
            };
            let channel = frame.header.channel;
            match frame.header.kind {
                Kind::Data => {
                    let full = self.recv.len() >= self.channels_max;
                    let credits = match self.recv.get_mut(&channel) {
                        Some(c) => c,
                        None if full => {
                            let max = self.channels_max;
                            return Err(self.fail(NetErrorKind::TooManyChannels { max }));
                        }
                        None => self.recv.entry(channel).or_insert_with(|| {
                            RecvCredits::with_threshold(self.credit_window, self.grant_threshold)
                        }),
                    };
                    if let Err(error) = credits.on_receive() {
                        return Err(self.fail(NetErrorKind::Credit { channel, error }));
                    }
                    delivered += 1;
                    if on_frame(frame) == Delivery::Consumed {
                        // Cannot fail: on_receive just counted the frame as held.
                        let _ = credits.release(1);
                        if let Some(g) = credits.take_grant() {
                            self.out.push_credit(channel, g);
                        }
                    }
                }
                Kind::Credit => {
                    // The decoder has checked the payload size of credit frames.
                    let granted = match frame.credit_grant() {
                        Some(Ok(g)) => g,
                        Some(Err(e)) => return Err(self.fail(NetErrorKind::Frame(e))),
                        None => return Err(self.fail(NetErrorKind::UnexpectedFrame(Kind::Credit))),
                    };
                    let result = match self.send.get_mut(&channel) {
                        Some(c) => c.on_grant(granted),
                        // Nothing was ever sent on this channel: its window is full.
                        None => SendCredits::new(self.peer.credit_window).on_grant(granted),
                    };
                    if let Err(error) = result {
                        return Err(self.fail(NetErrorKind::Credit { channel, error }));
                    }
                }
                Kind::Heartbeat => {}
                Kind::Hello => return Err(self.fail(NetErrorKind::UnexpectedFrame(Kind::Hello))),
                _ => {
                    delivered += 1;
                    let _ = on_frame(frame);
                }
            }
        }
        if delivered < budget {
            self.check_end()?;
        }
        Ok(delivered)
    }

    /// The application freed the buffers of `n` data frames it held
    /// ([`Delivery::Held`]) on `channel`; their credit goes back to the
    /// sender (batched, see [`NetConfig::grant_threshold`]). Releasing more
    /// than is held is refused with [`NetErrorKind::OverRelease`].
    pub fn release(&mut self, channel: u32, n: u32) -> Result<(), NetError> {
        self.check_open()?;
        let result = match self.recv.get_mut(&channel) {
            Some(c) => c.release(n).map(|()| c.take_grant()),
            None => Err(CreditError::OverRelease { held: 0, released: n }),
        };
        match result {
            Ok(Some(g)) => self.out.push_credit(channel, g),
            Ok(None) => {}
            Err(error) => return Err(self.error(NetErrorKind::OverRelease { channel, error })),
        }
        Ok(())
    }

    /// Grants every released buffer not yet granted, however few (for a
    /// receiver going idle). Returns whether any grant was queued.
    pub fn flush_grants(&mut self) -> Result<bool, NetError> {
        self.check_open()?;
        let mut any = false;
        for (&channel, credits) in self.recv.iter_mut() {
            if let Some(g) = credits.flush_grant() {
                self.out.push_credit(channel, g);
                any = true;
            }
        }
        Ok(any)
    }

    /// Queues a heartbeat if nothing has been written for the heartbeat
    /// interval and nothing is waiting to be (then the peer hears from us
    /// anyway). Call it from the loop's tick; returns whether one was
    /// queued.
    pub fn poll_heartbeat(&mut self, now: Instant) -> Result<bool, NetError> {
        self.check_open()?;
        if self.out.unsent() > 0 || now.saturating_duration_since(self.last_sent) < self.heartbeat_interval {
            return Ok(false);
        }
        self.heartbeat_seq += 1;
        let out = self.out.prepare(FRAME_OVERHEAD);
        encode_control(Kind::Heartbeat, 0, self.heartbeat_seq, &[], out)
            .map_err(|e| self.error(NetErrorKind::Frame(e)))?;
        self.last_sent = now;
        Ok(true)
    }
}

/// `EINPROGRESS`: a non-blocking connect under way (std's `ErrorKind` for
/// it is not stable yet).
#[cfg(target_os = "linux")]
const EINPROGRESS: i32 = 115;
/// `EINPROGRESS` on macOS and the BSDs.
#[cfg(not(target_os = "linux"))]
const EINPROGRESS: i32 = 36;

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
