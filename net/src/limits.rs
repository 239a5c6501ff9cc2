//! Every limit of the network layer, named and kept together.
//!
//! Each buffer of a connection has a maximum, so memory stays bounded
//! whatever the peer does: a slow receiver throttles its sender through
//! credits, a full send buffer makes `try_send_*` return `false`, and a
//! reader stops reading (leaving the bytes to TCP's own flow control) once
//! it holds its read-ahead. The `*_DEFAULT` values can be changed per node
//! in [`NetConfig`](crate::conn::NetConfig).
//!
//! Per connection, at most (defaults in parentheses):
//!
//! * send buffer: `max(send_buffer_bytes, one frame)` of queued frames
//!   (1 MiB), plus credit grants (a few per channel, 28 bytes each);
//! * read buffer: `read_ahead_bytes` plus one frame plus one read
//!   (256 KiB + frame + 64 KiB);
//! * batches the peer may have in flight or held per channel: the credit
//!   window (16), on at most `channels_max` channels (4096).

use std::time::Duration;

pub use crate::credit::DEFAULT_CREDIT_WINDOW;
pub use crate::frame::MAX_FRAME_BYTES;
pub use crate::hello::NODE_NAME_BYTES_MAX;

/// Default bound of a connection's send buffer, in bytes of encoded frames
/// not yet written to the socket. A frame that does not fit waits (its
/// `try_send_*` returns `false`); a frame larger than the bound is still
/// accepted into an empty buffer.
pub const SEND_BUFFER_BYTES_DEFAULT: usize = 1 << 20;

/// Default read-ahead: a connection reads from its socket while it holds
/// fewer received, undelivered bytes than this (or no complete frame).
pub const READ_AHEAD_BYTES_DEFAULT: usize = 256 << 10;

/// Bytes asked of the socket per `read` call.
pub const READ_CHUNK_BYTES: usize = 64 << 10;

/// Default number of multiplexed channels one connection may use (each
/// direction counted separately); a peer using more is a protocol error.
pub const CHANNELS_MAX_DEFAULT: usize = 4096;

/// Largest `Hello` frame accepted during a handshake (length field): the
/// fixed fields and the longest name. A peer sending more before its hello
/// is complete is dropped, so a handshake costs at most this much memory
/// (plus one read).
pub const HELLO_FRAME_BYTES_MAX: u32 = (crate::frame::CRC_BYTES
    + crate::frame::HEADER_BYTES
    + crate::hello::HELLO_FIXED_BYTES
    + NODE_NAME_BYTES_MAX
    + crate::hello::HELLO_AUTH_BYTES_MAX) as u32;

/// Default time a peer has to complete its handshake, from the TCP accept
/// (listener) or from `connect` (when no deadline is given explicitly).
pub const HANDSHAKE_TIMEOUT_DEFAULT: Duration = Duration::from_secs(5);

/// Default interval of heartbeats on an otherwise quiet connection.
pub const HEARTBEAT_INTERVAL_DEFAULT: Duration = Duration::from_millis(100);

/// Most handshakes a listener advances at once. A connection accepted
/// beyond it drops the oldest pending handshake (so idle or junk
/// connections never keep a real peer waiting in the kernel's queue).
pub const PENDING_HANDSHAKES_MAX: usize = 64;

/// Most pending handshakes from one IP address; one more drops that
/// address's oldest.
pub const PENDING_PER_ADDR_MAX: usize = 32;

/// Most connections a listener accepts from the kernel per `poll_accept`.
pub const ACCEPTS_PER_POLL: usize = 16;

const _: () = assert!(HELLO_FRAME_BYTES_MAX < MAX_FRAME_BYTES);
const _: () = assert!(READ_CHUNK_BYTES <= READ_AHEAD_BYTES_DEFAULT);
const _: () = assert!(SEND_BUFFER_BYTES_DEFAULT >= 4 * READ_CHUNK_BYTES);
const _: () = assert!(NODE_NAME_BYTES_MAX <= u8::MAX as usize);
const _: () = assert!(DEFAULT_CREDIT_WINDOW >= 1);
const _: () = assert!(PENDING_PER_ADDR_MAX <= PENDING_HANDSHAKES_MAX);
