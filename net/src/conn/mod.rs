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
//! [`Hello`]: crate::hello::Hello
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
//!
//! # Layout
//!
//! One job per file: `config.rs` the [`NetConfig`], `handshake.rs` the
//! hello exchange both sides run, `connect.rs` the connecting side
//! ([`Connecting`]), `listener.rs` the accepting side ([`Listener`]),
//! `write.rs` the send buffer and queueing frames, `io.rs` moving bytes
//! through the socket, `read.rs` handing received frames out,
//! `credits.rs` the application's side of credit accounting,
//! `heartbeat.rs` liveness. This file holds the [`Connection`] itself:
//! its state, its accessors and how an error closes it.

mod config;
mod connect;
mod credits;
mod handshake;
mod heartbeat;
mod io;
mod listener;
mod read;
mod write;

pub use config::NetConfig;
pub use connect::Connecting;
pub use listener::Listener;

use std::collections::HashMap;
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::credit::{RecvCredits, SendCredits};
use crate::error::{NetError, NetErrorKind};
use crate::frame::{FrameDecoder, FRAME_OVERHEAD};
use handshake::Handshake;
use write::OutBuf;

/// Bytes of a credit frame on the wire.
const CREDIT_FRAME_BYTES: usize = FRAME_OVERHEAD + 4;

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
}
