//! Reading frames: the [`FrameDecoder`] takes bytes split anywhere,
//! validates each frame (length, crc, version, kind, header sizes) and
//! yields [`Frame`]s borrowing its buffer.

use super::{
    BadHeader, DataHeader, FrameError, FrameHeader, Kind, CRC_BYTES, DATA_HEADER_BYTES, HEADER_BYTES,
    LEN_BYTES, MAX_FRAME_BYTES, MIN_FRAME_LEN, WIRE_VERSION,
};

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

pub(super) fn le_u32(b: &[u8], at: usize) -> u32 {
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
