//! The record format inside a bin's segments.
//!
//! A bin's records are laid out back to back from the start of each of its
//! segments, in the order the segments were given to the bin; a segment's
//! records end at a `PAD` record, at the segment's end, or (for the bin's
//! last segment) at the bin's tail. Every record starts with a 20-byte
//! little-endian header:
//!
//! ```text
//! 0  hash     u64   routing hash of the record key (the probe hash)
//! 8  key_len  u32
//! 12 val_len  u32
//! 16 table    u16   table id
//! 18 kind     u8    VALUE, LIST (head), BLOCK (list items), PAD, DENSE
//! 19 flags    u8    DEAD: superseded or removed
//! 20 key bytes, then value bytes
//! ```
//!
//! A `LIST` record's value is a 24-byte head `count u64, first u64, last u64`
//! (locations of its first and last `BLOCK`, `NONE` if none). A `BLOCK`
//! record has no key; its value is `next u64, used u32` then `used` bytes of
//! items, each `len u32` then the item's bytes, then unused capacity. Blocks
//! are reached only from their list's head, so a scan that rebuilds the index
//! takes the live `VALUE` and `LIST` records and skips the rest. A `DENSE`
//! record is one part of a dense table (`dense.rs`): its slots hold keys and
//! values themselves, and the restore scan checks them and installs the
//! part instead of indexing it. Since every
//! record carries its hash, rebuilding never rehashes keys.
//!
//! The functions at the end read and write records in the segment file: a
//! record's header, hash, key and value, a list's head, and padding.

use super::file::SegmentFile;

/// Bytes of a record header.
pub(crate) const HEADER: usize = 20;
/// A plain key -> value record.
pub(crate) const KIND_VALUE: u8 = 1;
/// The head of a key's append-only list.
pub(crate) const KIND_LIST: u8 = 2;
/// A block of list items.
pub(crate) const KIND_BLOCK: u8 = 3;
/// Padding: bytes no record uses, up to the end of a segment or before a
/// dense part (placed for its control bytes to lie where they should in
/// a cache line).
pub(crate) const KIND_PAD: u8 = 4;
/// A part of a dense table (see `dense.rs`): slots holding keys and values.
pub(crate) const KIND_DENSE: u8 = 5;
/// Flag: the record is garbage.
pub(crate) const FLAG_DEAD: u8 = 1;
/// Offset of the flags byte in the header.
pub(crate) const FLAGS_AT: u64 = 19;
/// Bytes of a list head (the value of a `LIST` record).
pub(crate) const LIST_HEAD: usize = 24;
/// Bytes of a block's own header (before its items).
pub(crate) const BLOCK_HEAD: usize = 12;
/// Bytes of an item's length prefix.
pub(crate) const ITEM_LEN: usize = 4;
/// "No block" in list heads and block links.
pub(crate) const NONE: u64 = u64::MAX;
/// Smallest capacity of a list block's items area.
pub(crate) const BLOCK_CAP_MIN: usize = 64;

/// A decoded record header.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Header {
    pub(crate) hash: u64,
    pub(crate) key_len: u32,
    pub(crate) val_len: u32,
    pub(crate) table: u16,
    pub(crate) kind: u8,
    pub(crate) flags: u8,
}

#[inline(always)]
pub(crate) fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(w)
}

#[inline(always)]
pub(crate) fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(w)
}

impl Header {
    /// Total bytes of the record.
    #[inline(always)]
    pub(crate) fn record_bytes(&self) -> usize {
        HEADER + self.key_len as usize + self.val_len as usize
    }

    /// Reads a header from the first [`HEADER`] bytes of `b`.
    #[inline(always)]
    pub(crate) fn read(b: &[u8]) -> Self {
        Header {
            hash: u64_at(b, 0),
            key_len: u32_at(b, 8),
            val_len: u32_at(b, 12),
            table: u16::from_le_bytes([b[16], b[17]]),
            kind: b[18],
            flags: b[19],
        }
    }

    /// Writes the header into the first [`HEADER`] bytes of `b`.
    #[inline(always)]
    pub(crate) fn write(&self, b: &mut [u8]) {
        b[0..8].copy_from_slice(&self.hash.to_le_bytes());
        b[8..12].copy_from_slice(&self.key_len.to_le_bytes());
        b[12..16].copy_from_slice(&self.val_len.to_le_bytes());
        b[16..18].copy_from_slice(&self.table.to_le_bytes());
        b[18] = self.kind;
        b[19] = self.flags;
    }
}

/// Name of a record kind, for errors.
pub(crate) fn kind_name(kind: u8) -> &'static str {
    match kind {
        KIND_VALUE => "value",
        KIND_LIST => "list",
        KIND_BLOCK => "list block",
        KIND_PAD => "padding",
        KIND_DENSE => "dense table part",
        _ => "corrupt record",
    }
}

/// The hash of the record at `loc` (for index growth and removal).
#[inline(always)]
pub(crate) fn hash_at(file: &SegmentFile) -> impl Fn(u64) -> u64 + '_ {
    move |loc| u64_at(file.bytes(loc, 8), 0)
}

#[inline(always)]
pub(crate) fn header(file: &SegmentFile, loc: u64) -> Header {
    Header::read(file.bytes(loc, HEADER))
}

pub(crate) fn read_head(file: &SegmentFile, head_loc: u64, key_len: u32) -> (u64, u64, u64) {
    let b = file.bytes(head_loc + (HEADER + key_len as usize) as u64, LIST_HEAD);
    (u64_at(b, 0), u64_at(b, 8), u64_at(b, 16))
}

pub(crate) fn write_head(file: &mut SegmentFile, head_loc: u64, key_len: u32, head: (u64, u64, u64)) {
    let b = file.bytes_mut(head_loc + (HEADER + key_len as usize) as u64, LIST_HEAD);
    b[0..8].copy_from_slice(&head.0.to_le_bytes());
    b[8..16].copy_from_slice(&head.1.to_le_bytes());
    b[16..24].copy_from_slice(&head.2.to_le_bytes());
}

/// Writes at `at` the header of `bytes` (a header's or more) of dead
/// padding: garbage that compaction drops and a restore skips. The caller
/// accounts the bytes.
pub(crate) fn write_pad(file: &mut SegmentFile, at: u64, bytes: u64) {
    let pad = Header {
        hash: 0,
        key_len: 0,
        val_len: (bytes - HEADER as u64) as u32,
        table: 0,
        kind: KIND_PAD,
        flags: FLAG_DEAD,
    };
    pad.write(file.bytes_mut(at, HEADER));
}

/// The key and value of the record at `loc` (lists give an empty value).
pub(crate) fn key_value(file: &SegmentFile, loc: u64) -> (&[u8], &[u8]) {
    let h = header(file, loc);
    let key = file.bytes(loc + HEADER as u64, h.key_len as usize);
    let value = if h.kind == KIND_VALUE {
        file.bytes(loc + (HEADER + key.len()) as u64, h.val_len as usize)
    } else {
        &[]
    };
    (key, value)
}
