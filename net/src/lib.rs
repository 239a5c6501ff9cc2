//! spate-net: how Spate nodes talk to each other.
//!
//! This crate knows nothing of dataflows (it does not depend on
//! `spate-core`; `spate-core` uses it). It moves bytes between nodes:
//!
//! * [`frame`]: the wire format. Every message on a node-to-node TCP
//!   connection is one frame, `len | crc32 | header | payload`, with a
//!   version, a [`Kind`](frame::Kind), flags, a multiplexed channel and a
//!   sequence number; data frames carry one batch (its fields in a fixed
//!   [`DataHeader`](frame::DataHeader), then the records buffer exactly as
//!   in process). [`encode_frame`](frame::encode_frame) writes into a reused
//!   buffer; [`FrameDecoder`](frame::FrameDecoder) takes bytes split anywhere
//!   and yields crc-verified frames or a typed [`FrameError`](frame::FrameError).
//! * [`credit`]: credit-based flow control per channel, as plain state
//!   ([`SendCredits`](credit::SendCredits) on the sender,
//!   [`RecvCredits`](credit::RecvCredits) on the receiver), so a slow
//!   receiver slows its sender instead of growing memory.
//! * [`hello`]: the handshake's messages, sans IO: a node's
//!   [`Hello`](hello::Hello) (name, cluster id, credit window) and the
//!   [`GoodbyeReason`](hello::GoodbyeReason) of a refusal or close.
//! * [`auth`]: cluster authentication, sans IO: the shared
//!   [`ClusterSecret`](auth::ClusterSecret) and the HMAC-SHA256
//!   challenge-response every handshake runs when one is configured.
//! * [`conn`]: the transport. [`Listener`] and
//!   [`Connection`] over plain non-blocking `std::net`
//!   sockets with `TCP_NODELAY`, every method polled and returning at once,
//!   so a worker's poll loop drives them next to its rings (not glommio
//!   networking: a worker never awaits, docs/ARCHITECTURE.md decision 15).
//!   One connection per node pair and direction multiplexes channels;
//!   frames arrive zero-copy (borrowing the read buffer), credits flow back
//!   automatically, heartbeats and [`last_heard`](conn::Connection::last_heard)
//!   let the caller detect a silent peer.
//! * [`error`]: [`NetError`], which names the peer (node
//!   and address) and the reason: corrupt, truncated or oversized frame,
//!   peer closed, I/O error, handshake timeout, refused name, credit
//!   violation. An error closes one connection, never the listener.
//! * [`limits`]: every buffer bound and default, in one place.
//!
//! `examples/loopback_bench.rs` measures frames/s and MB/s over loopback.
//! The decoder is fuzzed by `net/fuzz` (a separate cargo-fuzz crate:
//! `cd net/fuzz && cargo +nightly fuzz run frame_decoder`).

#![forbid(missing_docs)]
#![forbid(unsafe_code)]

pub mod auth;
pub mod conn;
pub mod credit;
pub mod error;
pub mod frame;
pub mod hello;
pub mod limits;

pub use conn::{Connecting, Connection, Delivery, Listener, NetConfig, Peer};
pub use error::{NetError, NetErrorKind};
