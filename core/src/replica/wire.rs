//! The wire format of replica connections: encoding and parsing of every
//! message (chunk parts, acks, error reports, fetch requests, the end of
//! a fetch), the `Fields` reader that names the message and field of
//! each error, the hello names that say what a connection is for, and
//! the transport settings of a connection.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use spate_net::{Connection, NetConfig};
use spate_state::Ack;

use super::error::{Malformation, ReplicaError};
use super::{
    Totals, CHUNK_BYTES_MAX, ERROR_MESSAGE_BYTES_MAX, INSTANCE_NAME_BYTES_MAX, PART_BYTES_MAX,
    PART_HEADER_BYTES, READ_AHEAD_BYTES, SEND_BUFFER_BYTES,
};

/// One part of a chunk, borrowed from a frame.
#[derive(Clone, Copy, Debug)]
pub(super) struct Part<'a> {
    pub(super) instance: &'a str,
    pub(super) chunk_len: usize,
    pub(super) offset: usize,
    pub(super) bytes: &'a [u8],
}

/// Reads the fields of one message, naming the message and the field in
/// its errors.
pub(super) struct Fields<'a> {
    buf: &'a [u8],
    pos: usize,
    message: &'static str,
}

impl<'a> Fields<'a> {
    fn new(buf: &'a [u8], message: &'static str) -> Self {
        Self { buf, pos: 0, message }
    }

    /// The error `fault` of this message.
    fn malformed(&self, fault: Malformation) -> ReplicaError {
        ReplicaError::Malformed { message: self.message, fault }
    }

    fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], ReplicaError> {
        let have = self.buf.len() - self.pos;
        if have < n {
            return Err(self.malformed(Malformation::Truncated {
                field,
                have,
                need: n,
                len: self.buf.len(),
            }));
        }
        let b = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(b)
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], ReplicaError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N, field)?);
        Ok(a)
    }

    fn u16(&mut self, field: &'static str) -> Result<u16, ReplicaError> {
        self.array(field).map(u16::from_le_bytes)
    }

    fn u32(&mut self, field: &'static str) -> Result<u32, ReplicaError> {
        self.array(field).map(u32::from_le_bytes)
    }

    fn u64(&mut self, field: &'static str) -> Result<u64, ReplicaError> {
        self.array(field).map(u64::from_le_bytes)
    }

    fn str(&mut self, n: usize, field: &'static str) -> Result<&'a str, ReplicaError> {
        let b = self.take(n, field)?;
        std::str::from_utf8(b).map_err(|_| self.malformed(Malformation::NotUtf8 { field }))
    }

    /// An instance name of `n` bytes (empty only if `empty_ok`).
    fn name(&mut self, n: usize, empty_ok: bool) -> Result<&'a str, ReplicaError> {
        if (n == 0 && !empty_ok) || n > INSTANCE_NAME_BYTES_MAX {
            return Err(self.malformed(Malformation::NameLength { len: n }));
        }
        self.str(n, "name")
    }

    fn rest(&mut self) -> &'a [u8] {
        let b = &self.buf[self.pos..];
        self.pos = self.buf.len();
        b
    }

    fn end(&self) -> Result<(), ReplicaError> {
        let extra = self.buf.len() - self.pos;
        if extra > 0 {
            return Err(self.malformed(Malformation::TrailingBytes { extra }));
        }
        Ok(())
    }
}

/// Checks an instance name given to a client: 1 to
/// [`INSTANCE_NAME_BYTES_MAX`] bytes.
pub(super) fn check_name(instance: &str) -> Result<(), ReplicaError> {
    let len = instance.len();
    if len == 0 || len > INSTANCE_NAME_BYTES_MAX {
        return Err(ReplicaError::InstanceName { len });
    }
    Ok(())
}

/// Writes a part into `out` (cleared first). The caller checked the name
/// and the sizes.
pub(super) fn encode_part(out: &mut Vec<u8>, instance: &str, chunk_len: usize, offset: usize, bytes: &[u8]) {
    debug_assert!(check_name(instance).is_ok());
    debug_assert!(chunk_len <= CHUNK_BYTES_MAX && offset + bytes.len() <= chunk_len);
    debug_assert!(!bytes.is_empty() && bytes.len() <= PART_BYTES_MAX);
    out.clear();
    out.reserve(PART_HEADER_BYTES + instance.len() + bytes.len());
    out.extend_from_slice(&(instance.len() as u16).to_le_bytes());
    out.extend_from_slice(&(chunk_len as u32).to_le_bytes());
    out.extend_from_slice(&(offset as u32).to_le_bytes());
    out.extend_from_slice(instance.as_bytes());
    out.extend_from_slice(bytes);
}

pub(super) fn parse_part(payload: &[u8]) -> Result<Part<'_>, ReplicaError> {
    let mut f = Fields::new(payload, "chunk part");
    let name_len = usize::from(f.u16("name_len")?);
    let chunk_len = f.u32("chunk_len")? as usize;
    let offset = f.u32("offset")? as usize;
    let instance = f.name(name_len, false)?;
    let bytes = f.rest();
    if chunk_len == 0 || chunk_len > CHUNK_BYTES_MAX {
        return Err(f.malformed(Malformation::ChunkLength { instance: instance.into(), len: chunk_len }));
    }
    if bytes.is_empty() || bytes.len() > PART_BYTES_MAX || offset + bytes.len() > chunk_len {
        return Err(f.malformed(Malformation::PartBounds {
            instance: instance.into(),
            bytes: bytes.len(),
            offset,
            chunk_len,
        }));
    }
    Ok(Part { instance, chunk_len, offset, bytes })
}

pub(super) fn encode_ack(ack: &Ack) -> Vec<u8> {
    let mut out = Vec::with_capacity(18 + ack.instance.len());
    out.extend_from_slice(&(ack.instance.len() as u16).to_le_bytes());
    out.extend_from_slice(&ack.checkpoint.to_le_bytes());
    out.extend_from_slice(&ack.bytes.to_le_bytes());
    out.extend_from_slice(ack.instance.as_bytes());
    out
}

/// (instance, checkpoint, bytes)
pub(super) fn parse_ack(payload: &[u8]) -> Result<(&str, u64, u64), ReplicaError> {
    let mut f = Fields::new(payload, "ack");
    let name_len = usize::from(f.u16("name_len")?);
    let checkpoint = f.u64("checkpoint")?;
    let bytes = f.u64("bytes")?;
    let instance = f.name(name_len, false)?;
    f.end()?;
    Ok((instance, checkpoint, bytes))
}

/// An error report for `instance` ("" for the connection); the message is
/// cut to [`ERROR_MESSAGE_BYTES_MAX`] at a character boundary.
pub(super) fn encode_error(instance: &str, checkpoint: u64, message: &str) -> Vec<u8> {
    let instance = if instance.len() > INSTANCE_NAME_BYTES_MAX { "" } else { instance };
    let mut cut = message.len().min(ERROR_MESSAGE_BYTES_MAX);
    while !message.is_char_boundary(cut) {
        cut -= 1;
    }
    let mut out = Vec::with_capacity(10 + instance.len() + cut);
    out.extend_from_slice(&(instance.len() as u16).to_le_bytes());
    out.extend_from_slice(&checkpoint.to_le_bytes());
    out.extend_from_slice(instance.as_bytes());
    out.extend_from_slice(&message.as_bytes()[..cut]);
    out
}

/// (instance, checkpoint, message)
pub(super) fn parse_error(payload: &[u8]) -> Result<(&str, u64, &str), ReplicaError> {
    let mut f = Fields::new(payload, "error report");
    let name_len = usize::from(f.u16("name_len")?);
    let checkpoint = f.u64("checkpoint")?;
    let instance = f.name(name_len, true)?;
    let n = payload.len() - f.pos;
    let message = f.str(n, "message")?;
    Ok((instance, checkpoint, message))
}

pub(super) fn encode_request(origin: usize, checkpoint: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(16);
    out.extend_from_slice(&(origin as u64).to_le_bytes());
    out.extend_from_slice(&checkpoint.to_le_bytes());
    out
}

/// (origin, checkpoint)
pub(super) fn parse_request(payload: &[u8]) -> Result<(u64, u64), ReplicaError> {
    let mut f = Fields::new(payload, "fetch request");
    let origin = f.u64("origin")?;
    let checkpoint = f.u64("checkpoint")?;
    f.end()?;
    Ok((origin, checkpoint))
}

pub(super) fn encode_done(out: &mut Vec<u8>, t: &Totals) {
    out.clear();
    for v in [t.instances, t.checkpoints, t.chunks, t.bytes] {
        out.extend_from_slice(&v.to_le_bytes());
    }
}

pub(super) fn parse_done(payload: &[u8]) -> Result<Totals, ReplicaError> {
    let mut f = Fields::new(payload, "end of fetch");
    let t = Totals {
        instances: f.u64("instances")?,
        checkpoints: f.u64("checkpoints")?,
        chunks: f.u64("chunks")?,
        bytes: f.u64("bytes")?,
    };
    f.end()?;
    Ok(t)
}

/// The hello name of worker `origin`'s backup stream of the deployment of
/// `epoch` (0: none given).
pub(super) fn backup_hello_name(origin: usize, epoch: u64) -> String {
    if epoch == 0 {
        format!("bak:w{origin}")
    } else {
        format!("bak:w{origin}@{epoch}")
    }
}

/// The hello name of a fetch of worker `origin`'s checkpoints.
pub(super) fn fetch_hello_name(origin: usize) -> String {
    format!("fetch:w{origin}")
}

/// What a connection is for, from its hello name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Purpose {
    Backup,
    Fetch,
}

pub(super) fn parse_hello_name(node: &str) -> Option<(Purpose, usize)> {
    parse_hello_name_epoch(node).map(|(p, o, _)| (p, o))
}

/// `(purpose, origin, epoch)` of a hello name (`bak:w{origin}` or
/// `bak:w{origin}@{epoch}`, epoch 0 when absent; `fetch:w{origin}`).
pub(super) fn parse_hello_name_epoch(node: &str) -> Option<(Purpose, usize, u64)> {
    let (purpose, n) = if let Some(n) = node.strip_prefix("bak:w") {
        (Purpose::Backup, n)
    } else {
        (Purpose::Fetch, node.strip_prefix("fetch:w")?)
    };
    let (n, epoch) = match (purpose, n.split_once('@')) {
        (Purpose::Backup, Some((n, e))) => {
            if e.is_empty() || !e.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            (n, e.parse().ok()?)
        }
        (_, None) => (n, 0),
        (Purpose::Fetch, Some(_)) => return None,
    };
    if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((purpose, n.parse().ok()?, epoch))
}

pub(super) fn net_config(node: String, cluster: u64) -> NetConfig {
    let mut c = NetConfig::new(node, cluster);
    c.send_buffer_bytes = SEND_BUFFER_BYTES;
    c.read_ahead_bytes = READ_AHEAD_BYTES;
    c
}

pub(super) fn connect(
    addr: SocketAddr,
    node: String,
    cluster: u64,
    deadline: Instant,
) -> Result<Connection, ReplicaError> {
    Connection::connect(addr, &net_config(node, cluster), deadline)
        .and_then(|c| c.wait())
        .map_err(|e| ReplicaError::Connect { addr, source: Arc::new(e) })
}
