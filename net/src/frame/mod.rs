//! Wire framing: how batches and control messages travel over one TCP
//! connection between two nodes.
//!
//! Every frame is
//!
//! ```text
//! | len: u32 LE | crc32: u32 LE | header (16 bytes) | payload |
//!   len   = bytes after the len field (4 + 16 + payload length), at most MAX_FRAME_BYTES
//!   crc32 = CRC-32 (IEEE, crc32fast) over header and payload
//!
//! header  = | version: u8 | kind: u8 | flags: u16 LE | channel: u32 LE | seq: u64 LE |
//! ```
//!
//! A [`Kind::Data`] frame carries one batch: its payload starts with a fixed
//! 24-byte [`DataHeader`]
//!
//! ```text
//! | edge: u32 LE | producer: u32 LE | watermark: u64 LE | count: u32 LE | batch flags: u32 LE | records... |
//! ```
//!
//! and the records buffer follows unchanged, in the in-process batch layout
//! (`len u32 | ingest_ns u64 | rkyv bytes` per record, or, when the batch
//! flags have bit 4 set, the compact layout of fixed-layout records:
//! `base_ns u64 | len u32` once, then `ingest_ns - base_ns: u32 | bytes` per
//! record; see `spate_core::batch`). The frame `seq` is the
//! batch sequence number for data frames. Control kinds carry an opaque
//! payload whose meaning belongs to the layer above, except [`Kind::Credit`]
//! whose payload is one `u32 LE` grant (see [`encode_credit`] and
//! [`Frame::credit_grant`]).
//!
//! Senders build frames with [`encode_frame`] (or [`begin_frame`] /
//! [`finish_frame`] to write the payload in place) into a reused `Vec<u8>`;
//! receivers feed whatever the socket returned into a [`FrameDecoder`] and
//! pull complete, crc-verified [`Frame`]s that borrow the decoder's buffer.
//! Any error is final for the connection: the decoder keeps returning it and
//! the caller closes the socket. Corrupt input never panics and never makes
//! the decoder allocate more than [`MAX_FRAME_BYTES`] plus what was fed.
//!
//! One job per file, every item re-exported here (`spate_net::frame::X`
//! names them all): `header.rs` the frame's kinds and header types,
//! `error.rs` why a stream is invalid, `encode.rs` writing frames,
//! `decode.rs` reading and validating them, `tests.rs` their tests.

mod decode;
mod encode;
mod error;
mod header;
#[cfg(test)]
mod tests;

pub use decode::{Frame, FrameDecoder};
pub use encode::{
    begin_frame, encode_control, encode_credit, encode_data, encode_frame, finish_frame, OpenFrame,
};
pub use error::{BadHeader, FrameError};
pub use header::{DataHeader, FrameHeader, Kind};

/// Largest accepted value of the `len` field (bytes after the length
/// prefix): 16 MiB. A decoder rejects a larger frame as soon as it has read
/// the length, before buffering or allocating for it.
pub const MAX_FRAME_BYTES: u32 = 16 << 20;

/// The wire-format version this crate writes and accepts (2: batches may
/// come in the compact layout).
pub const WIRE_VERSION: u8 = 2;

/// Bytes of the length prefix.
pub const LEN_BYTES: usize = 4;

/// Bytes of the crc field.
pub const CRC_BYTES: usize = 4;

/// Bytes of the frame header (version, kind, flags, channel, seq).
pub const HEADER_BYTES: usize = 16;

/// Bytes of the fixed data header at the start of a data frame's payload.
pub const DATA_HEADER_BYTES: usize = 24;

/// Smallest legal `len` value: crc and header, empty payload.
pub const MIN_FRAME_LEN: u32 = (CRC_BYTES + HEADER_BYTES) as u32;

/// Bytes of a frame before its payload (length prefix, crc, header).
pub const FRAME_OVERHEAD: usize = LEN_BYTES + CRC_BYTES + HEADER_BYTES;
