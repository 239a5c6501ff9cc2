//! rkyv encoding of records, keys and values, in place, into reused buffers.
//!
//! Spate enables rkyv's `unaligned` and `little_endian` features: archived
//! data has alignment 1 and one byte order on every machine, so archived bytes
//! can sit at any offset of a batch, a segment or a frame, and a checkpoint
//! written on one machine reads on another. Unaligned loads cost nothing on the
//! CPUs Spate targets (x86-64, AArch64).
//!
//! Encoding appends to a caller-owned `Vec<u8>` (no allocation once the
//! buffer has grown); the archived root sits at the end of the appended bytes,
//! so a record is read back from exactly the slice that was appended.

use rkyv::api::high::{HighSerializer, HighValidator};
use rkyv::rancor;
use rkyv::ser::allocator::ArenaHandle;
use rkyv::{Archive, Archived, Deserialize, Serialize};

/// The most bytes of a fixed-layout encoding (see [`fixed_size`]).
pub use crate::fixed::FIXED_MAX;
use crate::fixed::{fixed_decode, fixed_encode, fixed_len};

/// A type Spate can move and store: it derives rkyv's `Archive`,
/// `Serialize` and `Deserialize`, and its archived form can be validated.
///
/// Blanket-implemented; users never implement it by hand.
pub trait Record:
    'static
    + Sized
    + Archive<
        Archived: Deserialize<Self, rkyv::api::high::HighDeserializer<rancor::Error>>
                      + for<'c> rkyv::bytecheck::CheckBytes<HighValidator<'c, rancor::Error>>,
    >
    + for<'a, 'b> Serialize<HighSerializer<&'a mut Vec<u8>, ArenaHandle<'b>, rancor::Error>>
{
}

impl<T> Record for T where
    T: 'static
        + Sized
        + Archive<
            Archived: Deserialize<T, rkyv::api::high::HighDeserializer<rancor::Error>>
                          + for<'c> rkyv::bytecheck::CheckBytes<HighValidator<'c, rancor::Error>>,
        >
        + for<'a, 'b> Serialize<HighSerializer<&'a mut Vec<u8>, ArenaHandle<'b>, rancor::Error>>
{
}

/// Why bytes could not be encoded or decoded.
#[derive(Debug)]
pub enum CodecError {
    /// rkyv refused to serialize the value.
    Encode(String),
    /// The bytes are not a valid archive of the expected type.
    Invalid {
        /// The Rust type that was expected.
        type_name: &'static str,
        /// What the validator found.
        reason: String,
    },
}

impl std::fmt::Display for CodecError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CodecError::Encode(e) => write!(f, "cannot encode value: {e}"),
            CodecError::Invalid { type_name, reason } => {
                write!(f, "bytes are not a valid archived {type_name}: {reason}")
            }
        }
    }
}

impl std::error::Error for CodecError {}

/// Appends the archived form of `value` to `buf` and returns how many bytes
/// were appended. The root is at the end of the appended bytes.
///
/// Fixed-layout primitives (integers, floats, pairs of them, short byte
/// arrays) skip rkyv's serializer and append their little-endian bytes, which
/// are exactly their archived form.
#[inline(always)]
pub fn encode<T: Record>(value: &T, buf: &mut Vec<u8>) -> Result<usize, CodecError> {
    let mut fixed = [0u8; FIXED_MAX];
    if let Some(n) = fixed_encode(value, &mut fixed) {
        buf.extend_from_slice(&fixed[..n]);
        return Ok(n);
    }
    encode_rkyv(value, buf)
}

/// The length of every encoding of a `T`, when `T` has a fixed layout
/// (integers and their pairs, byte arrays): known before encoding.
#[inline(always)]
pub fn fixed_size<T: Record>() -> Option<usize> {
    fixed_len::<T>()
}

/// Writes the encoding of `value` into `out`, when `T` has a fixed layout
/// (see [`fixed_size`]) of exactly `out.len()` bytes; returns whether it
/// did (for any other type or length it writes nothing).
#[inline(always)]
pub fn encode_fixed_into<T: Record>(value: &T, out: &mut [u8]) -> bool {
    let mut fixed = [0u8; FIXED_MAX];
    match fixed_encode(value, &mut fixed) {
        Some(n) if n == out.len() => {
            out.copy_from_slice(&fixed[..n]);
            true
        }
        _ => false,
    }
}

/// Appends `prefix` then the encoding of `value` to `buf`, with one
/// capacity check and no serializer, when `T` has a fixed layout (see
/// [`fixed_size`]): the bytes [`encode`] would append after `prefix`.
/// Returns the encoding's length; for any other type, `None`, and it
/// appends nothing.
#[inline(always)]
pub fn encode_prefixed<T: Record, const P: usize>(
    value: &T,
    prefix: [u8; P],
    buf: &mut Vec<u8>,
) -> Option<usize> {
    let mut out = [0u8; FIXED_MAX];
    let n = fixed_encode(value, &mut out)?;
    buf.reserve(P + n);
    buf.extend_from_slice(&prefix);
    buf.extend_from_slice(&out[..n]);
    Some(n)
}

/// [`encode`] through rkyv's serializer, whatever the type.
#[inline]
pub(crate) fn encode_rkyv<T: Record>(value: &T, buf: &mut Vec<u8>) -> Result<usize, CodecError> {
    let start = buf.len();
    rkyv::util::with_arena(|arena| {
        rkyv::api::high::to_bytes_in_with_alloc::<_, _, rancor::Error>(value, &mut *buf, arena.acquire())
            .map(|_| ())
    })
    .map_err(|e| CodecError::Encode(e.to_string()))?;
    Ok(buf.len() - start)
}

/// The archived value whose root is at the end of `bytes`, without
/// validation.
///
/// # Safety
/// `bytes` must be exactly the bytes appended by one [`encode`] of a `T` (or a
/// copy of them), in this process or one built from the same type
/// definitions. Bytes that crossed a trust boundary go through
/// [`access_checked`] instead.
#[inline(always)]
pub unsafe fn access<T: Record>(bytes: &[u8]) -> &Archived<T> {
    // SAFETY: forwarded to the caller: `bytes` holds one archived `T` whose
    // root ends the slice; with the `unaligned` feature no alignment is needed.
    unsafe { rkyv::api::access_unchecked::<Archived<T>>(bytes) }
}

/// The archived value at the end of `bytes`, after validating every byte of
/// it: for bytes read from a file or the network.
pub fn access_checked<T: Record>(bytes: &[u8]) -> Result<&Archived<T>, CodecError> {
    rkyv::access::<Archived<T>, rancor::Error>(bytes)
        .map_err(|e| CodecError::Invalid { type_name: std::any::type_name::<T>(), reason: e.to_string() })
}

/// Deserializes an archived value into an owned one.
#[inline]
pub fn to_owned<T: Record>(archived: &Archived<T>) -> T {
    match rkyv::deserialize::<T, rancor::Error>(archived) {
        Ok(v) => v,
        // Deserializing a validated (or self-written) archive only fails on
        // allocation failure, which aborts anyway; a failure here is a bug.
        Err(e) => panic!("deserializing a valid archived {} failed: {e}", std::any::type_name::<T>()),
    }
}

/// Decodes bytes written by [`encode`] in this process.
///
/// # Safety
/// As for [`access`].
#[inline(always)]
pub unsafe fn decode<T: Record>(bytes: &[u8]) -> T {
    if fixed_len::<T>().is_some() {
        if let Some(v) = fixed_decode::<T>(bytes) {
            return v;
        }
    }
    // SAFETY: forwarded to the caller.
    to_owned::<T>(unsafe { access::<T>(bytes) })
}

/// Decodes bytes from an untrusted source, validating them first.
pub fn decode_checked<T: Record>(bytes: &[u8]) -> Result<T, CodecError> {
    access_checked::<T>(bytes).map(to_owned::<T>)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Archive, Serialize, Deserialize, Debug, PartialEq, Clone)]
    #[rkyv(crate = rkyv)]
    struct Trade {
        symbol: String,
        qty: u64,
        px: f64,
    }

    #[test]
    fn round_trip_appended_records() {
        let mut buf = Vec::new();
        let a = Trade { symbol: "ABC".into(), qty: 7, px: 1.5 };
        let b = Trade { symbol: "LONGER-SYMBOL".into(), qty: 9, px: -2.0 };
        buf.extend_from_slice(b"junk");
        let la = encode(&a, &mut buf).unwrap_or(0);
        let lb = encode(&b, &mut buf).unwrap_or(0);
        let ra = &buf[4..4 + la];
        let rb = &buf[4 + la..4 + la + lb];
        assert_eq!(decode_checked::<Trade>(ra).ok(), Some(a.clone()));
        assert_eq!(unsafe { decode::<Trade>(rb) }, b);
        let x: u64 = 0xdead_beef;
        let mut kb = Vec::new();
        assert_eq!(encode(&x, &mut kb).ok(), Some(8));
        assert_eq!(kb, x.to_le_bytes());
    }

    #[test]
    fn corrupt_bytes_are_rejected() {
        let mut buf = Vec::new();
        let a = Trade { symbol: "A SYMBOL LONGER THAN INLINE".into(), qty: 7, px: 1.5 };
        let n = encode(&a, &mut buf).unwrap_or(0);
        assert!(decode_checked::<Trade>(&buf[..n - 1]).is_err());
        let mut bad = buf.clone();
        // The root (24 bytes) ends the archive; its first field is the string's
        // length (4 bytes) and relative offset (4 bytes): point it outside.
        bad[n - 20..n - 16].copy_from_slice(&0x7fff_0000_i32.to_le_bytes());
        assert!(decode_checked::<Trade>(&bad).is_err());
    }
}
