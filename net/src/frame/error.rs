//! Why a byte stream is not a valid sequence of frames: [`FrameError`]
//! and the malformed-header reasons of [`BadHeader`], with their messages.

use std::fmt;

use super::{Kind, DATA_HEADER_BYTES, MIN_FRAME_LEN, WIRE_VERSION};

/// Why a frame header is malformed (beyond version and kind).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BadHeader {
    /// `len` is below [`MIN_FRAME_LEN`]: no room for crc and header.
    ShortFrame {
        /// The length field.
        len: u32,
    },
    /// A data frame whose payload is shorter than the [`DataHeader`](super::DataHeader).
    ShortDataHeader {
        /// Payload bytes present.
        payload: u32,
    },
    /// A credit frame whose payload is not exactly 4 bytes.
    BadCreditPayload {
        /// Payload bytes present.
        payload: u32,
    },
}

/// Why a byte stream is not a valid sequence of frames. Every error is final
/// for the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameError {
    /// The length field exceeds the limit.
    TooLarge {
        /// The length field (bytes after it).
        len: u64,
        /// The limit.
        max: u32,
    },
    /// The crc in the frame disagrees with the crc of its bytes.
    BadCrc {
        /// The crc written in the frame.
        expected: u32,
        /// The crc computed over the received header and payload.
        found: u32,
    },
    /// The stream ended inside a frame.
    Truncated {
        /// Bytes of the partial frame that were received.
        have: u64,
        /// Bytes it needs (length prefix included), when known.
        need: Option<u64>,
    },
    /// Unknown frame kind.
    UnknownKind(u8),
    /// Unsupported wire version.
    BadVersion(u8),
    /// A malformed header.
    BadHeader(BadHeader),
    /// (Encoder only) a data frame without a data header, or a control
    /// frame with one.
    DataHeaderMismatch(Kind),
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::TooLarge { len, max } => write!(f, "frame of {len} bytes exceeds the limit of {max}"),
            FrameError::BadCrc { expected, found } => {
                write!(f, "frame crc mismatch: frame says {expected:#010x}, bytes give {found:#010x}")
            }
            FrameError::Truncated { have, need: Some(need) } => {
                write!(f, "stream ended inside a frame: {have} of {need} bytes")
            }
            FrameError::Truncated { have, need: None } => {
                write!(f, "stream ended inside a frame's length prefix: {have} bytes")
            }
            FrameError::UnknownKind(k) => write!(f, "unknown frame kind {k}"),
            FrameError::BadVersion(v) => {
                write!(f, "unsupported wire version {v} (this build speaks {WIRE_VERSION})")
            }
            FrameError::BadHeader(BadHeader::ShortFrame { len }) => {
                write!(f, "frame length {len} is below the minimum of {MIN_FRAME_LEN}")
            }
            FrameError::BadHeader(BadHeader::ShortDataHeader { payload }) => {
                write!(f, "data frame payload of {payload} bytes has no room for the {DATA_HEADER_BYTES}-byte data header")
            }
            FrameError::BadHeader(BadHeader::BadCreditPayload { payload }) => {
                write!(f, "credit frame payload is {payload} bytes, expected 4")
            }
            FrameError::DataHeaderMismatch(k) => {
                write!(f, "frame kind {k:?} and presence of a data header disagree")
            }
        }
    }
}

impl std::error::Error for FrameError {}
