//! Reassembly of chunk parts into whole chunks, on both ends of a
//! replica connection (the service receiving a backup stream, the fetch
//! client receiving a fetch).

use super::error::ReplicaError;
use super::wire::Part;
use super::{REASSEMBLY_KEEP_BYTES, REASSEMBLY_RESERVE_BYTES_MAX};

/// Puts the parts of chunks back together.
#[derive(Default)]
pub(super) struct Reassembly {
    instance: String,
    chunk_len: usize,
    buf: Vec<u8>,
    /// A chunk is partly received.
    pub(super) active: bool,
}

impl Reassembly {
    /// Takes the next part; returns the whole chunk (its instance and
    /// bytes) when this was its last part. A one-part chunk is returned in
    /// place.
    pub(super) fn push<'a>(
        &'a mut self,
        part: Part<'a>,
    ) -> Result<Option<(&'a str, &'a [u8])>, ReplicaError> {
        if !self.active {
            if part.offset != 0 {
                return Err(ReplicaError::PartWithoutStart {
                    instance: part.instance.into(),
                    offset: part.offset,
                    chunk_len: part.chunk_len,
                });
            }
            if part.bytes.len() == part.chunk_len {
                return Ok(Some((part.instance, part.bytes)));
            }
            if self.buf.capacity() > REASSEMBLY_KEEP_BYTES {
                self.buf = Vec::new();
            }
            self.instance.clear();
            self.instance.push_str(part.instance);
            self.chunk_len = part.chunk_len;
            self.buf.clear();
            // Room for the whole chunk up to a bound (the peer announces
            // the length; more grows as parts arrive).
            self.buf.reserve_exact(part.chunk_len.min(REASSEMBLY_RESERVE_BYTES_MAX));
            self.active = true;
        } else if part.instance != self.instance
            || part.chunk_len != self.chunk_len
            || part.offset != self.buf.len()
        {
            return Err(ReplicaError::PartDoesNotContinue {
                instance: part.instance.into(),
                offset: part.offset,
                chunk_len: part.chunk_len,
                current: self.instance.clone(),
                received: self.buf.len(),
                current_len: self.chunk_len,
            });
        }
        self.buf.extend_from_slice(part.bytes);
        if self.buf.len() < self.chunk_len {
            return Ok(None);
        }
        self.active = false;
        Ok(Some((&self.instance, &self.buf)))
    }
}
