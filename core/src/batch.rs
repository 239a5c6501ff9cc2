//! Batches: the unit of transfer between workers (and, framed by the `net`
//! crate, between nodes).
//!
//! A batch is a small header (edge, producer, sequence number, watermark,
//! record count, flags) and one buffer of records. Each record in the buffer
//! is
//!
//! ```text
//! | len: u32 LE | ingest_ns: u64 LE | archived record: len bytes (rkyv, root last) |
//! ```
//!
//! except in a *compact* batch ([`Batch::compact`]), which records of a
//! fixed-layout type (integers, floats, tuples and arrays of them: see
//! `spate_state::codec::fixed_size`) travel in: all its records have one
//! length, given once, and ingest times within 2^32 ns (4.3 s) after the
//! first record's, so each record is prefixed by 4 bytes instead of 12:
//!
//! ```text
//! | base_ns: u64 LE | len: u32 LE | then per record: | ingest_ns - base_ns: u32 LE | len bytes |
//! ```
//!
//! (20 bytes a `(u64, u64)` record instead of 28: with two workers, moving a
//! record's bytes between cores is much of what an exchange costs.) A record
//! that does not fit (an ingest time outside the window, another length)
//! turns the batch back into the general framing first.
//!
//! rkyv runs with the `unaligned` feature, so no record needs padding and a
//! receiver reads `&Archived<T>` in place from the buffer it was handed: the
//! bytes are written once, by the producer, and never copied in process.

use spate_state::codec::{self, CodecError, Record};

use crate::time::Timestamp;

/// Per-record metadata carried beside the record through the dataflow.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Meta {
    /// When the record entered the system (for an open-loop benchmark: when
    /// it was *meant* to enter), nanoseconds since the Unix epoch.
    pub ingest_ns: u64,
}

/// Bytes before each record's archived bytes: its length and ingest time.
pub const RECORD_PREFIX_BYTES: usize = 12;

/// The prefix of a record of `len` encoded bytes: its length and ingest time.
#[inline(always)]
fn record_prefix(len: usize, meta: Meta) -> [u8; RECORD_PREFIX_BYTES] {
    let mut p = [0u8; RECORD_PREFIX_BYTES];
    p[..4].copy_from_slice(&(len as u32).to_le_bytes());
    p[4..].copy_from_slice(&meta.ingest_ns.to_le_bytes());
    p
}

/// A record's encoded length and metadata, from the first
/// [`RECORD_PREFIX_BYTES`] of `p` (zero for bytes it lacks).
#[inline(always)]
fn read_prefix(p: &[u8]) -> (usize, Meta) {
    let len = p.get(..4).and_then(|b| b.try_into().ok()).map_or(0, u32::from_le_bytes) as usize;
    let ingest_ns =
        p.get(4..RECORD_PREFIX_BYTES).and_then(|b| b.try_into().ok()).map_or(0, u64::from_le_bytes);
    (len, Meta { ingest_ns })
}

/// The batch is the producer's last one on this edge.
pub const FLAG_FINAL: u32 = 1;
/// The batch is a checkpoint barrier (empty; its id in `barrier`): every
/// record the producer sent before it belongs to checkpoint `barrier`.
pub const FLAG_BARRIER: u32 = 2;
/// In a frame between processes: the batch's records are framed compactly
/// ([`Batch::compact`]; see the module docs).
pub const FLAG_COMPACT: u32 = 4;
/// The batch is a handoff marker (empty; the assignment version in
/// `barrier`): the producer routes every record after it by that version
/// (see `crate::handoff`).
pub const FLAG_HANDOFF: u32 = 8;

/// Bytes before the first record of a compact batch: the base ingest time
/// and the records' length.
pub const COMPACT_HEAD_BYTES: usize = 12;
/// Bytes before each record of a compact batch: its ingest time less the
/// base.
pub const COMPACT_PREFIX_BYTES: usize = 4;

/// How far ahead of the record being framed a run prefetches the batch's
/// buffer for writing.
const PREFETCH_WRITE_AHEAD: usize = 512;

/// Asks for the cache line at `p` with intent to write. A batch's buffer
/// was last read by the worker that received it (and freed it back to this
/// one's allocator): without this, framing a run into it waits on each
/// line's transfer from the other core.
#[inline(always)]
fn prefetch_write(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch reads and writes nothing and faults on no address;
    // a CPU without PRFCHW executes `prefetchw` as a no-op.
    unsafe {
        std::arch::asm!("prefetchw [{0}]", in(reg) p, options(nostack, preserves_flags, readonly));
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// The head of a compact batch's buffer: (base ingest time, record length).
#[inline(always)]
fn read_compact_head(data: &[u8]) -> Option<(u64, usize)> {
    let base = u64::from_le_bytes(data.get(..8)?.try_into().ok()?);
    let len = u32::from_le_bytes(data.get(8..COMPACT_HEAD_BYTES)?.try_into().ok()?);
    Some((base, len as usize))
}

/// The ingest time of a record in a compact batch whose base is `base`,
/// from its prefix `p` (its first [`COMPACT_PREFIX_BYTES`]; 0 for bytes it
/// lacks).
#[inline(always)]
fn compact_meta(base: u64, p: &[u8]) -> Meta {
    let delta = p.get(..COMPACT_PREFIX_BYTES).and_then(|b| b.try_into().ok()).map_or(0, u32::from_le_bytes);
    Meta { ingest_ns: base.wrapping_add(u64::from(delta)) }
}

/// A batch of records travelling on one edge from one producer instance.
#[derive(Debug)]
pub struct Batch {
    /// The exchange edge of the dataflow.
    pub edge: u32,
    /// The producing instance (its worker index within the job).
    pub producer: u32,
    /// Per (edge, producer, consumer) sequence number, from 1.
    pub seq: u64,
    /// The producer's watermark when the batch closed: no later record from
    /// this producer will carry an event time below it.
    pub watermark: Timestamp,
    /// Number of records in `data`.
    pub count: u32,
    /// [`FLAG_FINAL`], [`FLAG_BARRIER`].
    pub flags: u32,
    /// With [`FLAG_BARRIER`], the checkpoint id; with [`FLAG_HANDOFF`],
    /// the assignment version.
    pub barrier: u64,
    /// The batch came from another process: its records are validated
    /// (rkyv's bytecheck) before they are read.
    pub untrusted: bool,
    /// The records are framed compactly (see the module docs). Set by the
    /// pushes that frame them; between processes it travels as
    /// [`FLAG_COMPACT`] in a frame's flags, never in [`Batch::flags`].
    pub compact: bool,
    /// The records.
    pub data: Vec<u8>,
}

impl Batch {
    /// An empty batch with room for `bytes` of record data.
    pub fn with_capacity(edge: u32, producer: u32, bytes: usize) -> Self {
        Self {
            edge,
            producer,
            seq: 0,
            watermark: 0,
            count: 0,
            flags: 0,
            barrier: 0,
            untrusted: false,
            compact: false,
            data: Vec::with_capacity(bytes),
        }
    }

    /// A copy of the batch without its records (`data` empty, unallocated).
    pub(crate) fn header(&self) -> Batch {
        Batch { data: Vec::new(), ..*self }
    }

    /// Whether this is the producer's last batch on the edge.
    pub fn is_final(&self) -> bool {
        self.flags & FLAG_FINAL != 0
    }

    /// The checkpoint id if this batch is a barrier.
    pub fn barrier(&self) -> Option<u64> {
        (self.flags & FLAG_BARRIER != 0).then_some(self.barrier)
    }

    /// The assignment version if this batch is a handoff marker.
    pub fn handoff(&self) -> Option<u64> {
        (self.flags & FLAG_HANDOFF != 0).then_some(self.barrier)
    }

    /// Appends one record. No allocation once `data` has grown to its
    /// working size.
    #[inline]
    pub fn push<T: Record>(&mut self, rec: &T, meta: Meta) -> Result<(), CodecError> {
        if let Some(len) = codec::fixed_size::<T>() {
            // A fixed-layout record: an empty batch starts compact, and its
            // length is known before it is encoded, so the prefix is
            // written first, with no patching.
            self.start_compact(len, meta);
            if let Some(delta) = self.compact_delta(len, meta) {
                if let Some(n) = codec::encode_prefixed(rec, delta.to_le_bytes(), &mut self.data) {
                    debug_assert_eq!(n, len, "a fixed-layout encoding of another length than its type's");
                    self.count += 1;
                    return Ok(());
                }
            }
        }
        // A record the compact framing does not fit: the general one, for
        // the whole batch.
        if self.compact {
            self.uncompact();
        }
        if let Some(len) = codec::fixed_size::<T>() {
            if let Some(n) = codec::encode_prefixed(rec, record_prefix(len, meta), &mut self.data) {
                debug_assert_eq!(n, len, "a fixed-layout encoding of another length than its type's");
                self.count += 1;
                return Ok(());
            }
        }
        let start = self.data.len();
        self.data.extend_from_slice(&[0u8; RECORD_PREFIX_BYTES]);
        let len = codec::encode(rec, &mut self.data)?;
        self.data[start..start + RECORD_PREFIX_BYTES].copy_from_slice(&record_prefix(len, meta));
        self.count += 1;
        Ok(())
    }

    /// Appends `recs`, each with its metadata: the bytes and count that
    /// [`Batch::push`] of one after the other gives. Records of a
    /// fixed-layout type are framed in one pass over a buffer grown once,
    /// with no capacity check or length update per record.
    pub fn push_run<T: Record>(&mut self, recs: &[(T, Meta)]) -> Result<(), CodecError> {
        if let (Some(len), Some((_, first))) = (codec::fixed_size::<T>(), recs.first()) {
            self.start_compact(len, *first);
            if let Some((base, _)) = self.compact_head().filter(|&(_, l)| l == len) {
                let size = COMPACT_PREFIX_BYTES + len;
                let (start, bytes) = (self.data.len(), recs.len() * size);
                self.data.reserve(bytes);
                // Every record must encode to its length and have its ingest
                // time in the batch's window: checked for the run as a
                // whole, so the loop has no branch on them.
                let mut framed = true;
                let mut one = [0u8; COMPACT_PREFIX_BYTES + codec::FIXED_MAX];
                if let Some(one) = one.get_mut(..size) {
                    let spare = &mut self.data.spare_capacity_mut()[..bytes];
                    for (out, (rec, meta)) in spare.chunks_exact_mut(size).zip(recs) {
                        prefetch_write(out.as_ptr().wrapping_add(PREFETCH_WRITE_AHEAD).cast());
                        let (prefix, body) = one.split_at_mut(COMPACT_PREFIX_BYTES);
                        let delta = meta.ingest_ns.wrapping_sub(base);
                        framed &= delta <= u64::from(u32::MAX);
                        prefix.copy_from_slice(&(delta as u32).to_le_bytes());
                        framed &= codec::encode_fixed_into(rec, body);
                        for (o, &b) in out.iter_mut().zip(one.iter()) {
                            o.write(b);
                        }
                    }
                    if framed {
                        // SAFETY: the loop wrote all `bytes` bytes after
                        // `start` (`chunks_exact_mut` of `recs.len()` chunks
                        // of `size`).
                        unsafe { self.data.set_len(start + bytes) };
                        self.count += recs.len() as u32;
                        return Ok(());
                    }
                }
            }
            // A record out of the window (or, unreachable, one that does not
            // encode to its type's length): nothing was committed; one by
            // one, `push` turns the batch back into the general framing
            // where it must.
        }
        for (rec, meta) in recs {
            self.push(rec, *meta)?;
        }
        Ok(())
    }

    /// How many more records of a fixed-layout type of `len` bytes the
    /// batch takes, framed as [`Batch::push`] frames them, before its
    /// buffer holds `limit` bytes or more (at least 1). An empty batch
    /// starts compact, with the compact head; a run whose records turn the
    /// batch back into the general framing midway (an ingest time outside
    /// its window) may take it that run's share past `limit`.
    pub fn fixed_records_until(&self, len: usize, limit: usize) -> usize {
        let (used, size) = match (self.data.len(), self.compact) {
            (0, _) => (COMPACT_HEAD_BYTES, COMPACT_PREFIX_BYTES + len),
            (n, true) => (n, COMPACT_PREFIX_BYTES + len),
            (n, false) => (n, RECORD_PREFIX_BYTES + len),
        };
        limit.saturating_sub(used).div_ceil(size).max(1)
    }

    /// (Base ingest time, record length) of a compact batch.
    #[inline(always)]
    fn compact_head(&self) -> Option<(u64, usize)> {
        if self.compact {
            read_compact_head(&self.data)
        } else {
            None
        }
    }

    /// An empty batch about to take a fixed-layout record of `len` bytes
    /// ingested at `first`: it starts compact, with `first` as its base.
    #[inline(always)]
    fn start_compact(&mut self, len: usize, first: Meta) {
        if self.count == 0 && self.data.is_empty() {
            if let Ok(len) = u32::try_from(len) {
                self.data.extend_from_slice(&first.ingest_ns.to_le_bytes());
                self.data.extend_from_slice(&len.to_le_bytes());
                self.compact = true;
            }
        }
    }

    /// The prefix of a record of `len` bytes ingested at `meta` in this
    /// batch, if it is compact and the record fits it.
    #[inline(always)]
    fn compact_delta(&self, len: usize, meta: Meta) -> Option<u32> {
        let (base, l) = self.compact_head()?;
        if l != len {
            return None;
        }
        u32::try_from(meta.ingest_ns.checked_sub(base)?).ok()
    }

    /// Turns a compact batch into the general framing (a record that does
    /// not fit it is next).
    #[cold]
    #[inline(never)]
    fn uncompact(&mut self) {
        let old = std::mem::take(&mut self.data);
        self.data.reserve(old.len() + self.count as usize * (RECORD_PREFIX_BYTES - COMPACT_PREFIX_BYTES));
        for (bytes, meta) in RecordIter::over(&old, true) {
            self.data.extend_from_slice(&record_prefix(bytes.len(), meta));
            self.data.extend_from_slice(bytes);
        }
        self.compact = false;
    }

    /// Empties the batch for reuse, keeping its buffer.
    pub fn clear(&mut self) {
        self.data.clear();
        self.count = 0;
        self.flags = 0;
        self.compact = false;
    }

    /// The records of the batch as (archived bytes, meta), trusting the bytes:
    /// for batches built by this process.
    pub fn records(&self) -> RecordIter<'_> {
        RecordIter::over(&self.data, self.compact)
    }

    /// The records after the first `skip`, as [`Batch::records`] gives
    /// them, when the batch is compact and its records are of fixed-layout
    /// type `T` (as [`Batch::push`] frames them); else `None`. Equal-sized
    /// chunks, with no length to follow per record: an `extend` from them
    /// takes its capacity once.
    pub fn fixed_records<T: Record>(&self, skip: usize) -> Option<impl Iterator<Item = (&[u8], Meta)>> {
        let (base, len) = self.compact_head()?;
        if codec::fixed_size::<T>()? != len {
            return None;
        }
        let size = COMPACT_PREFIX_BYTES + len;
        let body = self.data.get(COMPACT_HEAD_BYTES..)?;
        if body.len() != self.count as usize * size {
            return None;
        }
        let chunks = body.get(skip.checked_mul(size)?..)?.chunks_exact(size);
        // Each chunk is `size` bytes: its prefix, then the record's.
        Some(chunks.map(move |c| (c.get(COMPACT_PREFIX_BYTES..).unwrap_or_default(), compact_meta(base, c))))
    }

    /// Checks that the record framing of an untrusted batch is sound: every
    /// length lies within the buffer and the count matches. Record contents
    /// are validated separately, when they are accessed.
    pub fn validate_framing(&self) -> Result<(), BatchError> {
        if self.compact {
            return self.validate_compact();
        }
        let mut pos = 0usize;
        let mut n = 0u32;
        while pos < self.data.len() {
            if self.data.len() - pos < RECORD_PREFIX_BYTES {
                return Err(BatchError::Truncated { record: n, offset: pos });
            }
            let mut l = [0u8; 4];
            l.copy_from_slice(&self.data[pos..pos + 4]);
            let len = u32::from_le_bytes(l) as usize;
            pos += RECORD_PREFIX_BYTES;
            if self.data.len() - pos < len {
                return Err(BatchError::Truncated { record: n, offset: pos });
            }
            pos += len;
            n += 1;
        }
        if n != self.count {
            return Err(BatchError::CountMismatch { header: self.count, found: n });
        }
        Ok(())
    }

    /// [`Batch::validate_framing`] of a compact batch: its head is whole,
    /// and its buffer holds `count` records of the length the head gives.
    fn validate_compact(&self) -> Result<(), BatchError> {
        if self.data.is_empty() && self.count == 0 {
            return Ok(());
        }
        let Some((_, len)) = read_compact_head(&self.data) else {
            return Err(BatchError::Truncated { record: 0, offset: self.data.len() });
        };
        let size = COMPACT_PREFIX_BYTES + len;
        let body = self.data.len() - COMPACT_HEAD_BYTES;
        let found = u32::try_from(body / size).unwrap_or(u32::MAX);
        if !body.is_multiple_of(size) {
            return Err(BatchError::Truncated { record: found, offset: self.data.len() });
        }
        if found != self.count {
            return Err(BatchError::CountMismatch { header: self.count, found });
        }
        Ok(())
    }
}

/// What is wrong with an untrusted batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchError {
    /// A record's prefix or bytes run past the end of the buffer.
    Truncated {
        /// Index of the record.
        record: u32,
        /// Byte offset where it was cut.
        offset: usize,
    },
    /// The header's record count disagrees with the buffer.
    CountMismatch {
        /// Count in the header.
        header: u32,
        /// Records found.
        found: u32,
    },
}

impl std::fmt::Display for BatchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BatchError::Truncated { record, offset } => {
                write!(f, "batch truncated in record {record} at byte {offset}")
            }
            BatchError::CountMismatch { header, found } => {
                write!(f, "batch header says {header} records, buffer holds {found}")
            }
        }
    }
}

impl std::error::Error for BatchError {}

/// Iterator over the records of a batch.
pub struct RecordIter<'a> {
    data: &'a [u8],
    pos: usize,
    /// A compact batch's (base ingest time, record length).
    compact: Option<(u64, usize)>,
}

impl<'a> RecordIter<'a> {
    /// The records of a batch's buffer `data`, framed compactly or not.
    fn over(data: &'a [u8], compact: bool) -> Self {
        match read_compact_head(data).filter(|_| compact) {
            Some(head) => RecordIter { data, pos: COMPACT_HEAD_BYTES, compact: Some(head) },
            None => RecordIter { data, pos: 0, compact: None },
        }
    }
}

impl<'a> Iterator for RecordIter<'a> {
    type Item = (&'a [u8], Meta);

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        let rest = self.data.get(self.pos..)?;
        let (prefix, len, meta) = match self.compact {
            Some((base, len)) => {
                (COMPACT_PREFIX_BYTES, len, compact_meta(base, rest.get(..COMPACT_PREFIX_BYTES)?))
            }
            None => {
                let (len, meta) = read_prefix(rest.get(..RECORD_PREFIX_BYTES)?);
                (RECORD_PREFIX_BYTES, len, meta)
            }
        };
        let bytes = rest.get(prefix..prefix.checked_add(len)?)?;
        self.pos += prefix + len;
        Some((bytes, meta))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip() {
        let mut b = Batch::with_capacity(3, 1, 64);
        for i in 0..10u64 {
            b.push(&(i, format!("r{i}")), Meta { ingest_ns: 100 + i }).ok();
        }
        assert_eq!(b.count, 10);
        assert!(b.validate_framing().is_ok());
        let got: Vec<(u64, String, u64)> = b
            .records()
            .map(|(bytes, m)| {
                let (i, s): (u64, String) = codec::decode_checked(bytes).unwrap_or_default();
                (i, s, m.ingest_ns)
            })
            .collect();
        assert_eq!(got.len(), 10);
        assert_eq!(got[7], (7, "r7".to_string(), 107));
    }

    #[test]
    fn fixed_layout_records_are_framed_compactly() {
        // (u64, u64) has a fixed layout: the batch gives the base ingest
        // time and the length once, then each record's ingest time less the
        // base, then its encoding (what the general path encodes).
        let mut b = Batch::with_capacity(0, 0, 64);
        let mut want = Vec::new();
        want.extend_from_slice(&1000u64.to_le_bytes());
        want.extend_from_slice(&16u32.to_le_bytes());
        for i in 0..5u64 {
            let rec = (i, u64::MAX - i);
            assert!(b.push(&rec, Meta { ingest_ns: 1000 + 3 * i }).is_ok());
            let mut enc = Vec::new();
            assert_eq!(codec::encode(&rec, &mut enc).ok(), Some(16));
            want.extend_from_slice(&(3 * i as u32).to_le_bytes());
            want.extend_from_slice(&enc);
        }
        assert!(b.compact);
        assert_eq!(b.data, want);
        assert_eq!(b.count, 5);
        assert!(b.validate_framing().is_ok());
        let got: Vec<((u64, u64), u64)> = b
            .records()
            .map(|(bytes, m)| (codec::decode_checked::<(u64, u64)>(bytes).unwrap_or_default(), m.ingest_ns))
            .collect();
        assert_eq!(got.len(), 5);
        assert_eq!(got[3], ((3, u64::MAX - 3), 1009));
        // Cleared, the batch starts over (a new base).
        b.clear();
        assert!(!b.compact);
        assert!(b.push(&(1u64, 2u64), Meta { ingest_ns: 7 }).is_ok());
        assert_eq!(b.data[..8], 7u64.to_le_bytes());
    }

    /// The general framing of `recs` (length, ingest time, encoding each).
    fn general(recs: &[((u64, u64), Meta)]) -> Vec<u8> {
        let mut want = Vec::new();
        for (rec, meta) in recs {
            want.extend_from_slice(&16u32.to_le_bytes());
            want.extend_from_slice(&meta.ingest_ns.to_le_bytes());
            let mut enc = Vec::new();
            assert_eq!(codec::encode(rec, &mut enc).ok(), Some(16));
            want.extend_from_slice(&enc);
        }
        want
    }

    #[test]
    fn a_record_outside_the_window_turns_the_batch_general() {
        let base = 1_000_000u64;
        // Before the base; 2^32 ns after it; then ones that would fit.
        for odd in [base - 1, base + (1 << 32)] {
            let recs: Vec<((u64, u64), Meta)> = [base, base + 5, odd, base + 9, base + 1]
                .iter()
                .enumerate()
                .map(|(i, &t)| ((i as u64, 10 * i as u64), Meta { ingest_ns: t }))
                .collect();
            let mut one = Batch::with_capacity(0, 0, 0);
            for (rec, meta) in &recs {
                assert!(one.push(rec, *meta).is_ok());
            }
            let mut run = Batch::with_capacity(0, 0, 0);
            assert!(run.push_run(&recs[..2]).is_ok());
            assert!(run.compact, "compact while every record fits");
            assert!(run.push_run(&recs[2..]).is_ok());
            for b in [&one, &run] {
                assert!(!b.compact, "ingest time {odd}");
                assert_eq!(b.count, 5);
                assert_eq!(b.data, general(&recs), "ingest time {odd}");
                assert!(b.validate_framing().is_ok());
                let metas: Vec<Meta> = b.records().map(|(_, m)| m).collect();
                assert_eq!(metas, recs.iter().map(|r| r.1).collect::<Vec<_>>());
                assert!(b.fixed_records::<(u64, u64)>(0).is_none(), "not compact");
            }
        }
        // The last ingest time that fits: 2^32 - 1 ns after the base.
        let mut b = Batch::with_capacity(0, 0, 0);
        let recs = [
            ((1u64, 1u64), Meta { ingest_ns: base }),
            ((2, 2), Meta { ingest_ns: base + u64::from(u32::MAX) }),
        ];
        assert!(b.push_run(&recs).is_ok());
        assert!(b.compact);
        assert_eq!(b.records().map(|(_, m)| m).collect::<Vec<_>>(), vec![recs[0].1, recs[1].1]);
    }

    #[test]
    fn a_run_is_framed_as_its_records_pushed_one_by_one() {
        let recs: Vec<((u64, u64), Meta)> =
            (0..50u64).map(|i| ((i, u64::MAX - i), Meta { ingest_ns: 7 * i })).collect();
        let mut one = Batch::with_capacity(0, 0, 0);
        for (rec, meta) in &recs {
            assert!(one.push(rec, *meta).is_ok());
        }
        let mut run = Batch::with_capacity(0, 0, 0);
        assert!(run.push_run(&recs[..20]).is_ok());
        assert!(run.push_run(&recs[20..]).is_ok());
        assert_eq!(run.count, 50);
        assert_eq!(run.data, one.data);
        // A type without a fixed layout goes record by record.
        let strings: Vec<(String, Meta)> = (0..9).map(|i| ("s".repeat(i), Meta { ingest_ns: 1 })).collect();
        let mut one = Batch::with_capacity(0, 0, 0);
        for (rec, meta) in &strings {
            assert!(one.push(rec, *meta).is_ok());
        }
        let mut run = Batch::with_capacity(0, 0, 0);
        assert!(run.push_run(&strings).is_ok());
        assert_eq!((run.count, &run.data), (9, &one.data));
        assert!(run.validate_framing().is_ok());
    }

    #[test]
    fn fixed_records_are_the_records_of_a_fixed_layout_batch() {
        let recs: Vec<((u64, u64), Meta)> =
            (0..9u64).map(|i| ((i, 3 * i), Meta { ingest_ns: 5 + i })).collect();
        let mut b = Batch::with_capacity(0, 0, 0);
        assert!(b.push_run(&recs).is_ok());
        let fixed: Vec<(&[u8], Meta)> =
            b.fixed_records::<(u64, u64)>(2).map(Iterator::collect).unwrap_or_default();
        let framed: Vec<(&[u8], Meta)> = b.records().skip(2).collect();
        assert_eq!(fixed.len(), 7);
        assert_eq!(fixed, framed);
        assert_eq!(fixed[0].1, Meta { ingest_ns: 7 });
        assert!(b.fixed_records::<(u64, u64)>(10).is_none(), "past the end");
        assert!(b.fixed_records::<String>(0).is_none(), "no fixed layout");
        assert!(b.fixed_records::<u64>(0).is_none(), "framed at another length");
    }

    #[test]
    fn bad_framing_is_detected() {
        // Both framings: general (strings) and compact (fixed-layout u64s).
        let mut general = Batch::with_capacity(0, 0, 64);
        general.push(&"seven".to_string(), Meta::default()).ok();
        general.push(&"eight".to_string(), Meta::default()).ok();
        let mut compact = Batch::with_capacity(0, 0, 64);
        compact.push(&7u64, Meta::default()).ok();
        compact.push(&8u64, Meta::default()).ok();
        assert!(!general.compact && compact.compact);
        for b in [&general, &compact] {
            let mut t = Batch::with_capacity(0, 0, 0);
            t.compact = b.compact;
            t.count = 2;
            t.data = b.data[..b.data.len() - 1].to_vec();
            assert!(matches!(t.validate_framing(), Err(BatchError::Truncated { record: 1, .. })));
            t.data = b.data.clone();
            t.count = 3;
            assert_eq!(t.validate_framing(), Err(BatchError::CountMismatch { header: 3, found: 2 }));
            t.count = 2;
            assert!(t.validate_framing().is_ok());
        }
        // A compact head cut short, or one claiming records too long for
        // the buffer (any length: no arithmetic overflows).
        let mut t = Batch::with_capacity(0, 0, 0);
        t.compact = true;
        t.count = 1;
        t.data = compact.data[..COMPACT_HEAD_BYTES - 1].to_vec();
        assert!(matches!(t.validate_framing(), Err(BatchError::Truncated { record: 0, .. })));
        for (len, whole) in [(9u32, 1), (u32::MAX, 0)] {
            t.data = compact.data.clone();
            t.data[8..COMPACT_HEAD_BYTES].copy_from_slice(&len.to_le_bytes());
            assert!(t.validate_framing().is_err(), "length {len}");
            // Reading it anyway stops at the last record within the buffer.
            assert_eq!(t.records().count(), whole, "length {len}");
        }
        // An empty compact batch (no head) is sound.
        let mut e = Batch::with_capacity(0, 0, 0);
        e.compact = true;
        assert!(e.validate_framing().is_ok());
        assert_eq!(e.records().count(), 0);
    }
}
