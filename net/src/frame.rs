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

use std::fmt;

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

/// What a frame carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Kind {
    /// A batch of records; the payload starts with a [`DataHeader`].
    Data = 1,
    /// First frame on a connection: the sender's identity and parameters.
    Hello = 2,
    /// Liveness, both directions.
    Heartbeat = 3,
    /// Flow-control grant for `channel`: payload is a `u32 LE` count.
    Credit = 4,
    /// Coordinator to node: a deployment (placement, query) to install.
    Deploy = 5,
    /// Coordinator to node: start (or stop) the deployed query.
    Start = 6,
    /// A chunk of checkpointed state on its way to a backup.
    CheckpointChunk = 7,
    /// Acknowledgement (of a checkpoint, deployment, ...), by `seq`.
    Ack = 8,
    /// Recovery and scale-out protocol messages.
    Recovery = 9,
    /// Results and metrics gathered by the coordinator.
    Report = 10,
    /// Orderly close of the connection.
    Goodbye = 11,
}

impl Kind {
    /// Every kind, in wire order.
    pub const ALL: [Kind; 11] = [
        Kind::Data,
        Kind::Hello,
        Kind::Heartbeat,
        Kind::Credit,
        Kind::Deploy,
        Kind::Start,
        Kind::CheckpointChunk,
        Kind::Ack,
        Kind::Recovery,
        Kind::Report,
        Kind::Goodbye,
    ];

    /// The kind with wire value `b`, if any.
    pub fn from_u8(b: u8) -> Option<Kind> {
        match b {
            1 => Some(Kind::Data),
            2 => Some(Kind::Hello),
            3 => Some(Kind::Heartbeat),
            4 => Some(Kind::Credit),
            5 => Some(Kind::Deploy),
            6 => Some(Kind::Start),
            7 => Some(Kind::CheckpointChunk),
            8 => Some(Kind::Ack),
            9 => Some(Kind::Recovery),
            10 => Some(Kind::Report),
            11 => Some(Kind::Goodbye),
            _ => None,
        }
    }

    /// Whether frames of this kind carry a [`DataHeader`].
    pub fn is_data(self) -> bool {
        self == Kind::Data
    }
}

/// The fixed header of every frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    /// What the frame carries.
    pub kind: Kind,
    /// Frame flags; no bits are defined yet and all are passed through.
    pub flags: u16,
    /// The multiplexed channel on the connection (for data: one
    /// edge / producer / consumer stream, as the layer above assigns).
    pub channel: u32,
    /// Sequence number; for data frames the batch's sequence number.
    pub seq: u64,
}

/// The batch fields of a data frame (everything of an in-process batch but
/// its `seq`, which is the frame's, and its records).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DataHeader {
    /// The exchange edge of the dataflow.
    pub edge: u32,
    /// The producing instance.
    pub producer: u32,
    /// The producer's watermark when the batch closed.
    pub watermark: u64,
    /// Number of records in the records buffer.
    pub count: u32,
    /// Batch flags (final batch, ...).
    pub flags: u32,
}

/// Why a frame header is malformed (beyond version and kind).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BadHeader {
    /// `len` is below [`MIN_FRAME_LEN`]: no room for crc and header.
    ShortFrame {
        /// The length field.
        len: u32,
    },
    /// A data frame whose payload is shorter than the [`DataHeader`].
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

/// A frame whose header has been written by [`begin_frame`] and whose
/// payload is being appended; close it with [`finish_frame`].
#[derive(Debug)]
#[must_use = "a begun frame must be finished with finish_frame"]
pub struct OpenFrame {
    start: usize,
}

/// Writes the length prefix (placeholder), crc (placeholder), header and,
/// for data frames, the data header at the end of `out`. The caller then
/// appends the payload (records) to `out` and calls [`finish_frame`].
pub fn begin_frame(
    header: &FrameHeader,
    data: Option<&DataHeader>,
    out: &mut Vec<u8>,
) -> Result<OpenFrame, FrameError> {
    if header.kind.is_data() != data.is_some() {
        return Err(FrameError::DataHeaderMismatch(header.kind));
    }
    let start = out.len();
    out.extend_from_slice(&[0u8; LEN_BYTES + CRC_BYTES]);
    out.push(WIRE_VERSION);
    out.push(header.kind as u8);
    out.extend_from_slice(&header.flags.to_le_bytes());
    out.extend_from_slice(&header.channel.to_le_bytes());
    out.extend_from_slice(&header.seq.to_le_bytes());
    if let Some(d) = data {
        out.extend_from_slice(&d.edge.to_le_bytes());
        out.extend_from_slice(&d.producer.to_le_bytes());
        out.extend_from_slice(&d.watermark.to_le_bytes());
        out.extend_from_slice(&d.count.to_le_bytes());
        out.extend_from_slice(&d.flags.to_le_bytes());
    }
    Ok(OpenFrame { start })
}

/// Completes a frame begun by [`begin_frame`]: fills in its length and crc.
/// If the frame exceeds [`MAX_FRAME_BYTES`], removes it from `out` and
/// returns [`FrameError::TooLarge`]. Returns the frame's total size.
pub fn finish_frame(frame: OpenFrame, out: &mut Vec<u8>) -> Result<usize, FrameError> {
    let start = frame.start;
    assert!(out.len() >= start + FRAME_OVERHEAD, "finish_frame: buffer shrank below the frame header");
    let len = (out.len() - start - LEN_BYTES) as u64;
    if len > u64::from(MAX_FRAME_BYTES) {
        out.truncate(start);
        return Err(FrameError::TooLarge { len, max: MAX_FRAME_BYTES });
    }
    let crc = crc32fast::hash(&out[start + LEN_BYTES + CRC_BYTES..]);
    out[start..start + LEN_BYTES].copy_from_slice(&(len as u32).to_le_bytes());
    out[start + LEN_BYTES..start + LEN_BYTES + CRC_BYTES].copy_from_slice(&crc.to_le_bytes());
    Ok(out.len() - start)
}

/// Appends one complete frame to `out` (no allocation once `out` has grown
/// to its working size). `data` must be present exactly for
/// [`Kind::Data`]; for data frames `payload` is the records buffer.
/// Returns the frame's total size in bytes.
pub fn encode_frame(
    header: &FrameHeader,
    data: Option<&DataHeader>,
    payload: &[u8],
    out: &mut Vec<u8>,
) -> Result<usize, FrameError> {
    let overhead = FRAME_OVERHEAD + if data.is_some() { DATA_HEADER_BYTES } else { 0 };
    let len = (overhead - LEN_BYTES) as u64 + payload.len() as u64;
    if len > u64::from(MAX_FRAME_BYTES) {
        return Err(FrameError::TooLarge { len, max: MAX_FRAME_BYTES });
    }
    let open = begin_frame(header, data, out)?;
    out.extend_from_slice(payload);
    finish_frame(open, out)
}

/// Appends a data frame carrying one batch's records.
pub fn encode_data(
    channel: u32,
    seq: u64,
    data: &DataHeader,
    records: &[u8],
    out: &mut Vec<u8>,
) -> Result<usize, FrameError> {
    encode_frame(&FrameHeader { kind: Kind::Data, flags: 0, channel, seq }, Some(data), records, out)
}

/// Appends a control frame (any kind but [`Kind::Data`]).
pub fn encode_control(
    kind: Kind,
    channel: u32,
    seq: u64,
    payload: &[u8],
    out: &mut Vec<u8>,
) -> Result<usize, FrameError> {
    encode_frame(&FrameHeader { kind, flags: 0, channel, seq }, None, payload, out)
}

/// Appends a credit frame granting `credits` more batches on `channel`.
pub fn encode_credit(channel: u32, seq: u64, credits: u32, out: &mut Vec<u8>) -> usize {
    encode_control(Kind::Credit, channel, seq, &credits.to_le_bytes(), out)
        .expect("a credit frame is far below the size limit")
}

/// One complete, crc-verified frame, borrowing the decoder's buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Frame<'a> {
    /// The frame header.
    pub header: FrameHeader,
    /// The batch fields, for data frames.
    pub data: Option<DataHeader>,
    /// The payload after the header (and data header): records for data
    /// frames, the message body for control frames.
    pub payload: &'a [u8],
}

impl Frame<'_> {
    /// The grant of a [`Kind::Credit`] frame (`None` for other kinds).
    pub fn credit_grant(&self) -> Option<Result<u32, FrameError>> {
        if self.header.kind != Kind::Credit {
            return None;
        }
        Some(match <[u8; 4]>::try_from(self.payload) {
            Ok(b) => Ok(u32::from_le_bytes(b)),
            Err(_) => {
                Err(FrameError::BadHeader(BadHeader::BadCreditPayload { payload: self.payload.len() as u32 }))
            }
        })
    }
}

fn le_u16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn le_u32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn le_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// Incremental frame decoder for one connection.
///
/// Feed it bytes as they arrive ([`feed`](Self::feed), or read straight into
/// [`read_buf`](Self::read_buf) and [`commit`](Self::commit)), then call
/// [`next_frame`](Self::next_frame) until it returns `Ok(None)`. The buffer
/// is reused: once it has grown to the largest frame seen plus one read, it
/// does not allocate. After an error the decoder is poisoned and returns
/// the same error forever; the caller closes the connection. At end of
/// stream, [`finish`](Self::finish) reports a partial frame as
/// [`FrameError::Truncated`].
#[derive(Debug)]
pub struct FrameDecoder {
    /// Working area; bytes `start..end` are received and not yet consumed.
    buf: Vec<u8>,
    start: usize,
    end: usize,
    max: u32,
    failed: Option<FrameError>,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl FrameDecoder {
    /// A decoder with the default limit [`MAX_FRAME_BYTES`].
    pub fn new() -> Self {
        Self::with_max_frame_bytes(MAX_FRAME_BYTES)
    }

    /// A decoder rejecting frames whose length field exceeds `max`.
    pub fn with_max_frame_bytes(max: u32) -> Self {
        Self { buf: Vec::new(), start: 0, end: 0, max, failed: None }
    }

    /// The length limit.
    pub fn max_frame_bytes(&self) -> u32 {
        self.max
    }

    /// Received bytes not yet returned as frames.
    pub fn buffered(&self) -> usize {
        self.end - self.start
    }

    /// Bytes the internal buffer holds (for tests and metrics).
    pub fn capacity(&self) -> usize {
        self.buf.capacity()
    }

    /// The error that poisoned the decoder, if any.
    pub fn error(&self) -> Option<FrameError> {
        self.failed
    }

    /// Bytes still missing before [`next_frame`](Self::next_frame) can return
    /// a frame or an error: 0 when it can now, otherwise a lower bound (the
    /// rest of the length prefix, or the rest of the frame it announces).
    /// A reader uses it to read more only when it must, so its buffer holds
    /// at most one frame beyond its read-ahead.
    pub fn needed(&self) -> usize {
        if self.failed.is_some() {
            return 0;
        }
        let avail = self.end - self.start;
        if avail < LEN_BYTES {
            return LEN_BYTES - avail;
        }
        let len = le_u32(&self.buf, self.start);
        if len > self.max || len < MIN_FRAME_LEN {
            return 0;
        }
        (LEN_BYTES + len as usize).saturating_sub(avail)
    }

    /// Makes room for at least `min` bytes after the buffered ones, moving
    /// the buffered bytes to the front when that suffices.
    fn make_room(&mut self, min: usize) {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        if self.buf.len() - self.end >= min {
            return;
        }
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.buf.len() - self.end < min {
            self.buf.resize(self.end + min, 0);
        }
    }

    /// Appends bytes received from the peer (any amount, split anywhere).
    /// Ignored once the decoder has failed.
    pub fn feed(&mut self, bytes: &[u8]) {
        if self.failed.is_some() || bytes.is_empty() {
            return;
        }
        self.make_room(bytes.len());
        self.buf[self.end..self.end + bytes.len()].copy_from_slice(bytes);
        self.end += bytes.len();
    }

    /// A writable region of at least `min` bytes (more if the buffer has
    /// room) after the buffered bytes, for a socket read to fill; then call
    /// [`commit`](Self::commit) with the number of bytes read.
    pub fn read_buf(&mut self, min: usize) -> &mut [u8] {
        self.make_room(min.max(1));
        &mut self.buf[self.end..]
    }

    /// Marks `n` bytes of the region returned by [`read_buf`](Self::read_buf)
    /// as received. Panics if `n` exceeds that region (a caller bug).
    pub fn commit(&mut self, n: usize) {
        assert!(n <= self.buf.len() - self.end, "commit past the read buffer");
        if self.failed.is_none() {
            self.end += n;
        }
    }

    fn fail(&mut self, e: FrameError) -> FrameError {
        self.failed = Some(e);
        self.start = 0;
        self.end = 0;
        e
    }

    /// The next complete frame, `Ok(None)` if more bytes are needed, or the
    /// error that makes the stream invalid.
    pub fn next_frame(&mut self) -> Result<Option<Frame<'_>>, FrameError> {
        if let Some(e) = self.failed {
            return Err(e);
        }
        let avail = self.end - self.start;
        if avail < LEN_BYTES {
            return Ok(None);
        }
        let s = self.start;
        let len = le_u32(&self.buf, s);
        if len > self.max {
            return Err(self.fail(FrameError::TooLarge { len: u64::from(len), max: self.max }));
        }
        if len < MIN_FRAME_LEN {
            return Err(self.fail(FrameError::BadHeader(BadHeader::ShortFrame { len })));
        }
        let total = LEN_BYTES + len as usize;
        if avail < total {
            return Ok(None);
        }
        let expected = le_u32(&self.buf, s + LEN_BYTES);
        let body_at = s + LEN_BYTES + CRC_BYTES;
        let found = crc32fast::hash(&self.buf[body_at..s + total]);
        if found != expected {
            return Err(self.fail(FrameError::BadCrc { expected, found }));
        }
        let version = self.buf[body_at];
        if version != WIRE_VERSION {
            return Err(self.fail(FrameError::BadVersion(version)));
        }
        let kind_byte = self.buf[body_at + 1];
        let Some(kind) = Kind::from_u8(kind_byte) else {
            return Err(self.fail(FrameError::UnknownKind(kind_byte)));
        };
        let header = FrameHeader {
            kind,
            flags: le_u16(&self.buf, body_at + 2),
            channel: le_u32(&self.buf, body_at + 4),
            seq: le_u64(&self.buf, body_at + 8),
        };
        let mut payload_at = body_at + HEADER_BYTES;
        let mut data = None;
        if kind.is_data() {
            let payload = (s + total - payload_at) as u32;
            if (payload as usize) < DATA_HEADER_BYTES {
                return Err(self.fail(FrameError::BadHeader(BadHeader::ShortDataHeader { payload })));
            }
            let b = &self.buf;
            data = Some(DataHeader {
                edge: le_u32(b, payload_at),
                producer: le_u32(b, payload_at + 4),
                watermark: le_u64(b, payload_at + 8),
                count: le_u32(b, payload_at + 16),
                flags: le_u32(b, payload_at + 20),
            });
            payload_at += DATA_HEADER_BYTES;
        } else if kind == Kind::Credit && total - (payload_at - s) != 4 {
            let payload = (total - (payload_at - s)) as u32;
            return Err(self.fail(FrameError::BadHeader(BadHeader::BadCreditPayload { payload })));
        }
        self.start = s + total;
        Ok(Some(Frame { header, data, payload: &self.buf[payload_at..s + total] }))
    }

    /// Call at end of stream: an error if a partial frame is buffered (or
    /// the decoder had failed).
    pub fn finish(&self) -> Result<(), FrameError> {
        if let Some(e) = self.failed {
            return Err(e);
        }
        let have = self.buffered();
        if have == 0 {
            return Ok(());
        }
        let need = (have >= LEN_BYTES).then(|| LEN_BYTES as u64 + u64::from(le_u32(&self.buf, self.start)));
        Err(FrameError::Truncated { have: have as u64, need })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ctl(kind: Kind, channel: u32, seq: u64) -> FrameHeader {
        FrameHeader { kind, flags: 0, channel, seq }
    }

    /// Decodes a whole stream, fed in one piece.
    fn decode_all(bytes: &[u8]) -> Result<Vec<(FrameHeader, Option<DataHeader>, Vec<u8>)>, FrameError> {
        let mut d = FrameDecoder::new();
        d.feed(bytes);
        let mut out = Vec::new();
        while let Some(f) = d.next_frame()? {
            out.push((f.header, f.data, f.payload.to_vec()));
        }
        d.finish()?;
        Ok(out)
    }

    fn sample_stream() -> Vec<u8> {
        let mut out = Vec::new();
        let dh = DataHeader { edge: 3, producer: 7, watermark: 123_456, count: 2, flags: 1 };
        encode_data(9, 42, &dh, b"records-go-here", &mut out).unwrap();
        encode_control(Kind::Hello, 0, 1, b"node-a", &mut out).unwrap();
        encode_credit(9, 2, 16, &mut out);
        encode_control(Kind::Heartbeat, 0, 3, &[], &mut out).unwrap();
        out
    }

    #[test]
    fn round_trip_simple() {
        let frames = decode_all(&sample_stream()).unwrap();
        assert_eq!(frames.len(), 4);
        assert_eq!(frames[0].0, ctl(Kind::Data, 9, 42));
        assert_eq!(
            frames[0].1,
            Some(DataHeader { edge: 3, producer: 7, watermark: 123_456, count: 2, flags: 1 })
        );
        assert_eq!(frames[0].2, b"records-go-here");
        assert_eq!(frames[1].0, ctl(Kind::Hello, 0, 1));
        assert_eq!(frames[1].1, None);
        assert_eq!(frames[1].2, b"node-a");
        assert_eq!(frames[2].2, 16u32.to_le_bytes());
        assert_eq!(frames[3].2, b"");
    }

    #[test]
    fn needed_counts_missing_bytes() {
        let stream = sample_stream();
        let first = LEN_BYTES + le_u32(&stream, 0) as usize;
        let mut d = FrameDecoder::new();
        assert_eq!(d.needed(), LEN_BYTES);
        d.feed(&stream[..2]);
        assert_eq!(d.needed(), 2);
        d.feed(&stream[2..10]);
        assert_eq!(d.needed(), first - 10);
        d.feed(&stream[10..first]);
        assert_eq!(d.needed(), 0);
        assert!(d.next_frame().unwrap().is_some());
        // An oversized or short length is decidable at once: 0 needed.
        let mut d = FrameDecoder::with_max_frame_bytes(64);
        d.feed(&1000u32.to_le_bytes());
        assert_eq!(d.needed(), 0);
        assert!(d.next_frame().is_err());
        assert_eq!(d.needed(), 0);
        let mut d = FrameDecoder::new();
        d.feed(&3u32.to_le_bytes());
        assert_eq!(d.needed(), 0);
    }

    #[test]
    fn credit_grant_accessor() {
        let mut out = Vec::new();
        encode_credit(5, 1, 77, &mut out);
        let mut d = FrameDecoder::new();
        d.feed(&out);
        let f = d.next_frame().unwrap().unwrap();
        assert_eq!(f.credit_grant(), Some(Ok(77)));
        assert_eq!(f.header.channel, 5);
        // A credit frame with the wrong payload size is a header error.
        let mut bad = Vec::new();
        encode_control(Kind::Credit, 5, 1, &[1, 2, 3], &mut bad).unwrap();
        assert_eq!(decode_all(&bad), Err(FrameError::BadHeader(BadHeader::BadCreditPayload { payload: 3 })));
    }

    #[test]
    fn header_mismatch_rejected_by_encoder() {
        let mut out = Vec::new();
        assert_eq!(
            encode_frame(&ctl(Kind::Data, 0, 0), None, b"x", &mut out),
            Err(FrameError::DataHeaderMismatch(Kind::Data))
        );
        assert_eq!(
            encode_frame(&ctl(Kind::Ack, 0, 0), Some(&DataHeader::default()), b"x", &mut out),
            Err(FrameError::DataHeaderMismatch(Kind::Ack))
        );
        assert!(out.is_empty());
    }

    #[test]
    fn encoder_rejects_oversize_and_leaves_buffer_intact() {
        let mut out = vec![1, 2, 3];
        let big = vec![0u8; MAX_FRAME_BYTES as usize];
        let e = encode_control(Kind::Deploy, 0, 0, &big, &mut out).unwrap_err();
        assert!(matches!(e, FrameError::TooLarge { max: MAX_FRAME_BYTES, .. }));
        assert_eq!(out, [1, 2, 3]);
        // begin/finish path truncates back too.
        let open = begin_frame(&ctl(Kind::Deploy, 0, 0), None, &mut out).unwrap();
        out.extend_from_slice(&big);
        assert!(matches!(finish_frame(open, &mut out), Err(FrameError::TooLarge { .. })));
        assert_eq!(out, [1, 2, 3]);
    }

    #[test]
    fn begin_finish_equals_encode() {
        let dh = DataHeader { edge: 1, producer: 2, watermark: 3, count: 4, flags: 5 };
        let mut a = Vec::new();
        encode_data(8, 9, &dh, b"abcdef", &mut a).unwrap();
        let mut b = Vec::new();
        let open = begin_frame(&ctl(Kind::Data, 8, 9), Some(&dh), &mut b).unwrap();
        b.extend_from_slice(b"abc");
        b.extend_from_slice(b"def");
        assert_eq!(finish_frame(open, &mut b).unwrap(), a.len());
        assert_eq!(a, b);
    }

    #[test]
    fn encoder_does_not_allocate_once_warm() {
        let dh = DataHeader::default();
        let mut out = Vec::new();
        encode_data(0, 0, &dh, &[7u8; 1000], &mut out).unwrap();
        let cap = out.capacity();
        let ptr = out.as_ptr();
        for seq in 0..100 {
            out.clear();
            encode_data(0, seq, &dh, &[7u8; 1000], &mut out).unwrap();
        }
        assert_eq!(out.capacity(), cap);
        assert_eq!(out.as_ptr(), ptr);
    }

    #[test]
    fn decoder_does_not_allocate_once_warm() {
        let stream = sample_stream();
        let mut d = FrameDecoder::new();
        let mut n = 0;
        for chunk in stream.chunks(7) {
            d.feed(chunk);
            while d.next_frame().unwrap().is_some() {
                n += 1;
            }
        }
        assert_eq!(n, 4);
        let cap = d.capacity();
        for _ in 0..200 {
            for chunk in stream.chunks(7) {
                d.feed(chunk);
                while d.next_frame().unwrap().is_some() {}
            }
        }
        assert_eq!(d.capacity(), cap);
        assert!(cap <= stream.len() + 64, "decoder buffer {cap} for a {}-byte stream", stream.len());
    }

    #[test]
    fn read_buf_commit_path() {
        let stream = sample_stream();
        let mut d = FrameDecoder::new();
        let mut frames = 0;
        let mut pos = 0;
        while pos < stream.len() {
            let buf = d.read_buf(5);
            let n = buf.len().min(5).min(stream.len() - pos);
            buf[..n].copy_from_slice(&stream[pos..pos + n]);
            d.commit(n);
            pos += n;
            while d.next_frame().unwrap().is_some() {
                frames += 1;
            }
        }
        assert_eq!(frames, 4);
        d.finish().unwrap();
    }

    #[test]
    fn every_single_byte_corruption_is_detected() {
        let stream = sample_stream();
        for i in 0..stream.len() {
            for delta in [0x01u8, 0x80, 0xff, 0x5a] {
                let mut s = stream.clone();
                s[i] ^= delta;
                let r = decode_all(&s);
                assert!(r.is_err(), "corruption of byte {i} by {delta:#x} went undetected: {r:?}");
            }
        }
    }

    #[test]
    fn truncation_is_detected() {
        let stream = sample_stream();
        // Frame boundaries: truncation there is a clean end of stream.
        let mut bounds = vec![0];
        let mut p = 0;
        while p < stream.len() {
            p += 4 + le_u32(&stream, p) as usize;
            bounds.push(p);
        }
        for cut in 0..stream.len() {
            let r = decode_all(&stream[..cut]);
            if bounds.contains(&cut) {
                assert!(r.is_ok(), "cut at boundary {cut}: {r:?}");
            } else {
                assert!(matches!(r, Err(FrameError::Truncated { .. })), "cut at {cut}: {r:?}");
            }
        }
    }

    #[test]
    fn oversize_rejected_without_allocating() {
        for len in [MAX_FRAME_BYTES + 1, u32::MAX] {
            let mut d = FrameDecoder::new();
            d.feed(&len.to_le_bytes());
            assert_eq!(
                d.next_frame(),
                Err(FrameError::TooLarge { len: u64::from(len), max: MAX_FRAME_BYTES })
            );
            assert!(d.capacity() < 1024, "capacity {}", d.capacity());
            // Poisoned: keeps failing, ignores further input.
            d.feed(&[0u8; 100]);
            assert!(d.next_frame().is_err());
            assert!(d.capacity() < 1024);
        }
        // A smaller configured limit applies too.
        let mut d = FrameDecoder::with_max_frame_bytes(100);
        let mut out = Vec::new();
        encode_control(Kind::Deploy, 0, 0, &[0u8; 200], &mut out).unwrap();
        d.feed(&out[..4]);
        assert_eq!(d.next_frame(), Err(FrameError::TooLarge { len: 220, max: 100 }));
    }

    /// A frame with a valid crc over arbitrary header bytes.
    fn raw_frame(version: u8, kind: u8, rest: &[u8]) -> Vec<u8> {
        let mut body = vec![version, kind];
        body.extend_from_slice(&[0u8; HEADER_BYTES - 2]);
        body.extend_from_slice(rest);
        let mut f = ((CRC_BYTES + body.len()) as u32).to_le_bytes().to_vec();
        f.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
        f.extend_from_slice(&body);
        f
    }

    #[test]
    fn unknown_kind_rejected() {
        for k in [0u8, 12, 99, 255] {
            assert_eq!(decode_all(&raw_frame(WIRE_VERSION, k, b"")), Err(FrameError::UnknownKind(k)));
        }
        for k in Kind::ALL {
            assert_eq!(Kind::from_u8(k as u8), Some(k));
        }
    }

    #[test]
    fn bad_version_and_short_frames_rejected() {
        // The version before this one (its batches had no compact layout)
        // and one after it.
        for v in [WIRE_VERSION - 1, WIRE_VERSION + 1] {
            assert_eq!(decode_all(&raw_frame(v, Kind::Hello as u8, b"")), Err(FrameError::BadVersion(v)));
        }
        assert_eq!(
            decode_all(&raw_frame(WIRE_VERSION, Kind::Data as u8, &[0u8; 23])),
            Err(FrameError::BadHeader(BadHeader::ShortDataHeader { payload: 23 }))
        );
        for len in [0u32, 1, MIN_FRAME_LEN - 1] {
            let mut s = len.to_le_bytes().to_vec();
            s.extend_from_slice(&[0u8; 64]);
            assert_eq!(decode_all(&s), Err(FrameError::BadHeader(BadHeader::ShortFrame { len })));
        }
    }

    /// Deterministic xorshift for the no-panic sweep.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    fn drain(d: &mut FrameDecoder) -> usize {
        let mut n = 0;
        loop {
            match d.next_frame() {
                Ok(Some(f)) => {
                    // Touch everything the frame exposes.
                    n += f.payload.len();
                    let _ = f.credit_grant();
                }
                Ok(None) | Err(_) => return n,
            }
        }
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let stream = sample_stream();
        for i in 0..4000 {
            let mut bytes: Vec<u8> = (0..rng.below(300)).map(|_| rng.next() as u8).collect();
            if i % 2 == 0 {
                // Mostly-valid input: a real stream with a few random mutations,
                // so the deeper checks are reached too.
                bytes = stream.clone();
                for _ in 0..=rng.below(3) {
                    let at = rng.below(bytes.len());
                    bytes[at] = rng.next() as u8;
                }
                if i % 4 == 0 {
                    bytes.truncate(rng.below(bytes.len() + 1));
                }
            }
            let mut d = FrameDecoder::with_max_frame_bytes(if i % 3 == 0 { 64 } else { MAX_FRAME_BYTES });
            let mut pos = 0;
            while pos < bytes.len() {
                let n = 1 + rng.below(bytes.len() - pos);
                d.feed(&bytes[pos..pos + n]);
                pos += n;
                drain(&mut d);
            }
            let _ = d.finish();
            assert!(d.capacity() <= bytes.len().max(16) * 2 + 64);
        }
    }

    fn arb_kind() -> impl Strategy<Value = Kind> {
        (0..Kind::ALL.len()).prop_map(|i| Kind::ALL[i])
    }

    type Spec = (Kind, u16, u32, u64, DataHeader, Vec<u8>);

    fn arb_frame() -> impl Strategy<Value = Spec> {
        (
            arb_kind(),
            any::<u16>(),
            any::<u32>(),
            any::<u64>(),
            (any::<u32>(), any::<u32>(), any::<u64>(), any::<u32>(), any::<u32>()),
            proptest::collection::vec(any::<u8>(), 0..200),
        )
            .prop_map(
                |(kind, flags, channel, seq, (edge, producer, watermark, count, bflags), mut payload)| {
                    if kind == Kind::Credit {
                        payload.resize(4, 0);
                    }
                    let dh = DataHeader { edge, producer, watermark, count, flags: bflags };
                    (kind, flags, channel, seq, dh, payload)
                },
            )
    }

    proptest! {
        #[test]
        fn round_trip_split_anywhere(
            frames in proptest::collection::vec(arb_frame(), 0..12),
            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..20),
        ) {
            let mut stream = Vec::new();
            for (kind, flags, channel, seq, dh, payload) in &frames {
                let h = FrameHeader { kind: *kind, flags: *flags, channel: *channel, seq: *seq };
                let data = kind.is_data().then_some(dh);
                encode_frame(&h, data, payload, &mut stream).unwrap();
            }
            let mut cut_at: Vec<usize> = cuts.iter().map(|c| c.index(stream.len() + 1)).collect();
            cut_at.push(0);
            cut_at.push(stream.len());
            cut_at.sort_unstable();
            let mut d = FrameDecoder::new();
            let mut got = Vec::new();
            for w in cut_at.windows(2) {
                d.feed(&stream[w[0]..w[1]]);
                while let Some(f) = d.next_frame().unwrap() {
                    got.push((f.header, f.data, f.payload.to_vec()));
                }
            }
            d.finish().unwrap();
            prop_assert_eq!(got.len(), frames.len());
            for (g, (kind, flags, channel, seq, dh, payload)) in got.iter().zip(&frames) {
                prop_assert_eq!(g.0, FrameHeader { kind: *kind, flags: *flags, channel: *channel, seq: *seq });
                prop_assert_eq!(g.1, kind.is_data().then_some(*dh));
                prop_assert_eq!(&g.2, payload);
            }
        }
    }
}
