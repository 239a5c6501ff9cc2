//! The write path: the reused send buffer ([`OutBuf`]), queueing data and
//! control frames into it under credit and the buffer bound, and closing
//! the sending direction.

use std::io::{self, Write};
use std::net::TcpStream;

use super::{Connection, CREDIT_FRAME_BYTES};
use crate::credit::SendCredits;
use crate::error::{NetError, NetErrorKind};
use crate::frame::{
    encode_control, encode_credit, encode_data, DataHeader, Kind, DATA_HEADER_BYTES, FRAME_OVERHEAD,
    LEN_BYTES, MAX_FRAME_BYTES,
};

/// Outgoing bytes: `buf[pos..]` is not yet written. Reused; compacted only
/// when a frame does not fit behind the unsent bytes.
#[derive(Debug, Default)]
pub(super) struct OutBuf {
    pub(super) buf: Vec<u8>,
    pos: usize,
}

impl OutBuf {
    pub(super) fn unsent(&self) -> usize {
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
    pub(super) fn prepare(&mut self, frame_bytes: usize) -> &mut Vec<u8> {
        if self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        } else if self.pos > 0 && self.buf.capacity() - self.buf.len() < frame_bytes {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        &mut self.buf
    }

    pub(super) fn push_credit(&mut self, channel: u32, credits: u32) {
        encode_credit(channel, 0, credits, self.prepare(CREDIT_FRAME_BYTES));
    }

    /// Writes until the socket would block or nothing is left; the bytes
    /// written.
    pub(super) fn write_to(&mut self, stream: &mut TcpStream) -> io::Result<usize> {
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

impl Connection {
    /// Bytes queued and not yet written to the socket.
    pub fn unsent_bytes(&self) -> usize {
        self.out.unsent()
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
}
