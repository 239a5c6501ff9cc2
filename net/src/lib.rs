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
//!
//! To come (issue 4): connections over glommio TCP (one per node pair and
//! direction), control messages and heartbeats.
//!
//! The decoder is fuzzed by `net/fuzz` (a separate cargo-fuzz crate:
//! `cd net/fuzz && cargo +nightly fuzz run frame_decoder`).

#![forbid(missing_docs)]
#![forbid(unsafe_code)]

pub mod credit;
pub mod frame;
