//! [`NetError`]: what went wrong on a connection, and with whom.
//!
//! Every error names the peer: its address always, and its node name once
//! the handshake has told it. Errors on a [`Connection`](crate::conn::Connection)
//! are final for that connection (the caller drops it and, for a node of
//! the deployment, reports the node as failed) unless
//! [`NetError::is_fatal`] says otherwise; they never affect other
//! connections or the [`Listener`](crate::conn::Listener).

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use crate::auth::AuthFailure;
use crate::credit::CreditError;
use crate::frame::{FrameError, Kind};
use crate::hello::{GoodbyeReason, HelloError, Rejection};

/// A network error, naming the peer and the reason.
#[derive(Debug)]
pub struct NetError {
    /// The peer's address (for [`NetErrorKind::Bind`] and
    /// [`NetErrorKind::Config`], the local address).
    pub addr: SocketAddr,
    /// The peer's node name, once its hello has been read.
    pub node: Option<String>,
    /// What went wrong.
    pub kind: NetErrorKind,
}

/// Where a handshake stood when its deadline passed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HandshakeStage {
    /// The TCP connection was not yet established.
    Connecting,
    /// Our hello was not yet fully written.
    SendingHello,
    /// The peer's hello had not (completely) arrived.
    AwaitingHello,
    /// The peer's proof of the cluster secret had not arrived.
    AwaitingProof,
}

impl fmt::Display for HandshakeStage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HandshakeStage::Connecting => "establishing the TCP connection",
            HandshakeStage::SendingHello => "sending our hello",
            HandshakeStage::AwaitingHello => "waiting for the peer's hello",
            HandshakeStage::AwaitingProof => "waiting for the peer's proof of the cluster secret",
        })
    }
}

/// Why a network operation failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum NetErrorKind {
    /// A configuration value is invalid (nothing was started).
    Config {
        /// The [`NetConfig`](crate::conn::NetConfig) field.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The listening socket could not be created.
    Bind(io::Error),
    /// Accepting from the listening socket failed (for example, out of file
    /// descriptors); the listener itself stays usable.
    Accept(io::Error),
    /// The TCP connection could not be established (refused, unreachable).
    Connect(io::Error),
    /// The handshake did not complete before its deadline.
    HandshakeTimeout {
        /// Time since the connection attempt or accept.
        waited: Duration,
        /// What was still missing.
        stage: HandshakeStage,
    },
    /// The peer's first frame was not a hello.
    NotHello(Kind),
    /// The peer's hello is malformed.
    BadHello(HelloError),
    /// The peer's first frame is larger than any valid hello.
    OversizedHello {
        /// The frame's size (length prefix included), as announced.
        len: usize,
        /// The limit ([`HELLO_FRAME_BYTES_MAX`](crate::limits::HELLO_FRAME_BYTES_MAX)
        /// plus the length prefix).
        max: usize,
    },
    /// The peer belongs to another cluster (job).
    WrongCluster {
        /// Our cluster id.
        ours: u64,
        /// The peer's.
        theirs: u64,
    },
    /// This node refused the peer (its admit callback said so, or it had
    /// too many handshakes pending: [`Rejection::Busy`]).
    Rejected(Rejection),
    /// The handshake's challenge-response failed (see [`crate::auth`]):
    /// the peer holds no or another cluster secret, or this node has none.
    Unauthenticated(AuthFailure),
    /// The peer refused this node, or said goodbye during the handshake.
    RejectedByPeer(GoodbyeReason),
    /// The byte stream is not valid frames: a crc mismatch (corruption), a
    /// frame over the size limit, a bad header or version, or the stream
    /// ended inside a frame ([`FrameError::Truncated`]).
    Frame(FrameError),
    /// The peer closed the connection (at a frame boundary).
    PeerClosed,
    /// A socket read or write failed (connection reset, ...).
    Io(io::Error),
    /// The peer broke the credit protocol on a channel.
    Credit {
        /// The channel.
        channel: u32,
        /// How.
        error: CreditError,
    },
    /// The peer used more channels than allowed.
    TooManyChannels {
        /// The limit.
        max: usize,
    },
    /// A frame of this kind is not allowed now (a hello after the
    /// handshake).
    UnexpectedFrame(Kind),
    /// (Local misuse, the connection stays usable.) Frames of this kind are
    /// sent with another method or by the connection itself.
    InvalidSend(Kind),
    /// (Local misuse, the connection stays usable.) A frame over
    /// [`MAX_FRAME_BYTES`](crate::frame::MAX_FRAME_BYTES).
    FrameTooLarge {
        /// The frame's length field.
        len: u64,
        /// The limit.
        max: u32,
    },
    /// (Local misuse, the connection stays usable.) More buffers released
    /// on a channel than frames received and held.
    OverRelease {
        /// The channel.
        channel: u32,
        /// The error.
        error: CreditError,
    },
    /// The connection had already failed (or its handshake had finished);
    /// the first error said why.
    Closed,
}

impl NetError {
    pub(crate) fn new(addr: SocketAddr, node: Option<&str>, kind: NetErrorKind) -> Self {
        NetError { addr, node: node.map(str::to_owned), kind }
    }

    /// Whether the connection is unusable after this error. Misuse errors
    /// ([`InvalidSend`](NetErrorKind::InvalidSend),
    /// [`FrameTooLarge`](NetErrorKind::FrameTooLarge),
    /// [`OverRelease`](NetErrorKind::OverRelease)) and
    /// [`Accept`](NetErrorKind::Accept) leave it (or the listener) as it was.
    pub fn is_fatal(&self) -> bool {
        !matches!(
            self.kind,
            NetErrorKind::InvalidSend(_)
                | NetErrorKind::FrameTooLarge { .. }
                | NetErrorKind::OverRelease { .. }
                | NetErrorKind::Accept(_)
        )
    }
}

impl fmt::Display for NetErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NetErrorKind::Config { field, reason } => {
                write!(f, "invalid net config field `{field}`: {reason}")
            }
            NetErrorKind::Bind(e) => write!(f, "cannot listen on this address: {e}"),
            NetErrorKind::Accept(e) => write!(f, "accept failed: {e}"),
            NetErrorKind::Connect(e) => write!(f, "cannot connect: {e}"),
            NetErrorKind::HandshakeTimeout { waited, stage } => {
                write!(f, "handshake timed out after {} ms while {stage}", waited.as_millis())
            }
            NetErrorKind::NotHello(k) => write!(f, "handshake: first frame is {k:?}, expected Hello"),
            NetErrorKind::BadHello(e) => write!(f, "handshake: {e}"),
            NetErrorKind::OversizedHello { len, max } => {
                write!(f, "handshake: first frame of {len} bytes is larger than a hello (at most {max})")
            }
            NetErrorKind::WrongCluster { ours, theirs } => {
                write!(f, "handshake: peer is in cluster {theirs:#x}, this node in {ours:#x}")
            }
            NetErrorKind::Rejected(r) => write!(f, "handshake refused: {r}"),
            NetErrorKind::Unauthenticated(a) => write!(f, "handshake refused: {a}"),
            NetErrorKind::RejectedByPeer(r) => write!(f, "peer refused the handshake: {r}"),
            NetErrorKind::Frame(FrameError::BadCrc { expected, found }) => write!(
                f,
                "corrupt frame: crc mismatch (frame says {expected:#010x}, bytes give {found:#010x})"
            ),
            NetErrorKind::Frame(e @ FrameError::Truncated { .. }) => write!(f, "truncated frame: {e}"),
            NetErrorKind::Frame(e @ FrameError::TooLarge { .. }) => write!(f, "oversized frame: {e}"),
            NetErrorKind::Frame(e) => write!(f, "bad frame: {e}"),
            NetErrorKind::PeerClosed => write!(f, "peer closed the connection"),
            NetErrorKind::Io(e) => write!(f, "I/O error: {e}"),
            NetErrorKind::Credit { channel, error } => {
                write!(f, "flow-control violation on channel {channel}: {error}")
            }
            NetErrorKind::TooManyChannels { max } => write!(f, "peer uses more than {max} channels"),
            NetErrorKind::UnexpectedFrame(k) => write!(f, "unexpected {k:?} frame"),
            NetErrorKind::InvalidSend(k) => write!(f, "{k:?} frames cannot be sent with this method"),
            NetErrorKind::FrameTooLarge { len, max } => {
                write!(f, "refused to send a frame of {len} bytes (limit {max})")
            }
            NetErrorKind::OverRelease { channel, error } => write!(f, "channel {channel}: {error}"),
            NetErrorKind::Closed => write!(f, "connection already closed after an earlier error"),
        }
    }
}

impl fmt::Display for NetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.node {
            Some(node) => write!(f, "node {node:?} at {}: {}", self.addr, self.kind),
            None => write!(f, "peer at {}: {}", self.addr, self.kind),
        }
    }
}

impl std::error::Error for NetError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.kind {
            NetErrorKind::Bind(e)
            | NetErrorKind::Accept(e)
            | NetErrorKind::Connect(e)
            | NetErrorKind::Io(e) => Some(e),
            NetErrorKind::Frame(e) => Some(e),
            NetErrorKind::BadHello(e) => Some(e),
            NetErrorKind::Credit { error, .. } | NetErrorKind::OverRelease { error, .. } => Some(error),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_peer_and_reason() {
        let addr: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        let e = NetError::new(
            addr,
            Some("node-b"),
            NetErrorKind::Frame(FrameError::BadCrc { expected: 1, found: 2 }),
        );
        let s = e.to_string();
        assert!(s.contains("\"node-b\"") && s.contains("127.0.0.1:4000") && s.contains("crc"), "{s}");
        let e =
            NetError::new(addr, None, NetErrorKind::Frame(FrameError::Truncated { have: 3, need: Some(40) }));
        let s = e.to_string();
        assert!(s.starts_with("peer at 127.0.0.1:4000: truncated frame"), "{s}");
        assert!(s.contains("3 of 40"), "{s}");
        assert!(e.is_fatal());
        let e = NetError::new(addr, None, NetErrorKind::InvalidSend(Kind::Credit));
        assert!(!e.is_fatal());
    }
}
