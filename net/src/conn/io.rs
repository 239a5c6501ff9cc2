//! The socket pump: [`Connection::poll_io`] writes what the send buffer
//! holds and reads into the decoder up to the read-ahead.

use std::io::{self, Read};
use std::time::Instant;

use super::Connection;
use crate::error::{NetError, NetErrorKind};
use crate::limits::READ_CHUNK_BYTES;

impl Connection {
    /// Writes queued frames until the socket would block, then reads until
    /// it would block or the read-ahead is full (and a complete frame is
    /// buffered). Returns whether any byte moved. Never blocks.
    pub fn poll_io(&mut self) -> Result<bool, NetError> {
        self.check_open()?;
        let mut progress = false;
        if self.out.unsent() > 0 {
            match self.out.write_to(&mut self.stream) {
                Ok(0) => {}
                Ok(_) => {
                    self.last_sent = Instant::now();
                    progress = true;
                }
                Err(e) => return Err(self.fail(NetErrorKind::Io(e))),
            }
        }
        let mut read_any = false;
        while !self.eof && self.decoder.error().is_none() {
            if self.decoder.needed() == 0 && self.decoder.buffered() >= self.read_ahead_bytes {
                break;
            }
            let buf = self.decoder.read_buf(READ_CHUNK_BYTES);
            let asked = buf.len();
            match self.stream.read(buf) {
                Ok(0) => self.eof = true,
                Ok(n) => {
                    self.decoder.commit(n);
                    read_any = true;
                    if n < asked {
                        break; // the socket is (very likely) drained
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.fail(NetErrorKind::Io(e))),
            }
        }
        if read_any {
            self.last_heard = Instant::now();
            progress = true;
        }
        self.check_end()?;
        Ok(progress)
    }
}
