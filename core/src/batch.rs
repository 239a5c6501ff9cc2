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
    /// With [`FLAG_BARRIER`], the checkpoint id.
    pub barrier: u64,
    /// The batch came from another process: its records are validated
    /// (rkyv's bytecheck) before they are read.
    pub untrusted: bool,
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

    /// Appends one record. No allocation once `data` has grown to its
    /// working size.
    #[inline]
    pub fn push<T: Record>(&mut self, rec: &T, meta: Meta) -> Result<(), CodecError> {
        if let Some(len) = codec::fixed_size::<T>() {
            // A fixed-layout record: its length is known before it is
            // encoded, so the prefix is written first, with no patching.
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
        if let Some(len) = codec::fixed_size::<T>() {
            let size = RECORD_PREFIX_BYTES + len;
            let (start, bytes) = (self.data.len(), recs.len() * size);
            self.data.reserve(bytes);
            let mut framed = true;
            let mut one = [0u8; RECORD_PREFIX_BYTES + codec::FIXED_MAX];
            if let Some(one) = one.get_mut(..size) {
                let spare = &mut self.data.spare_capacity_mut()[..bytes];
                for (out, (rec, meta)) in spare.chunks_exact_mut(size).zip(recs) {
                    let (prefix, body) = one.split_at_mut(RECORD_PREFIX_BYTES);
                    prefix.copy_from_slice(&record_prefix(len, *meta));
                    framed &= codec::encode_fixed_into(rec, body);
                    for (o, &b) in out.iter_mut().zip(one.iter()) {
                        o.write(b);
                    }
                }
                if framed {
                    // SAFETY: the loop wrote all `bytes` bytes after `start`
                    // (`chunks_exact_mut` of `recs.len()` chunks of `size`).
                    unsafe { self.data.set_len(start + bytes) };
                    self.count += recs.len() as u32;
                    return Ok(());
                }
            }
            // Unreachable (a fixed-layout type always encodes to its
            // length); the general path below frames the run.
        }
        for (rec, meta) in recs {
            self.push(rec, *meta)?;
        }
        Ok(())
    }

    /// Empties the batch for reuse, keeping its buffer.
    pub fn clear(&mut self) {
        self.data.clear();
        self.count = 0;
        self.flags = 0;
    }

    /// The records of the batch as (archived bytes, meta), trusting the bytes:
    /// for batches built by this process.
    pub fn records(&self) -> RecordIter<'_> {
        RecordIter { data: &self.data, pos: 0 }
    }

    /// The records after the first `skip`, as [`Batch::records`] gives
    /// them, when they are of fixed-layout type `T` and every record of the
    /// batch is framed at that length (as [`Batch::push`] frames them);
    /// else `None`. Equal-sized chunks, with no length to follow per
    /// record: an `extend` from them takes its capacity once.
    pub fn fixed_records<T: Record>(&self, skip: usize) -> Option<impl Iterator<Item = (&[u8], Meta)>> {
        let size = RECORD_PREFIX_BYTES + codec::fixed_size::<T>()?;
        if self.data.len() != self.count as usize * size {
            return None;
        }
        let chunks = self.data.get(skip.checked_mul(size)?..)?.chunks_exact(size);
        // Each chunk is `size` bytes: its prefix, then the record's.
        Some(chunks.map(|c| (c.get(RECORD_PREFIX_BYTES..).unwrap_or_default(), read_prefix(c).1)))
    }

    /// Checks that the record framing of an untrusted batch is sound: every
    /// length lies within the buffer and the count matches. Record contents
    /// are validated separately, when they are accessed.
    pub fn validate_framing(&self) -> Result<(), BatchError> {
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
}

impl<'a> Iterator for RecordIter<'a> {
    type Item = (&'a [u8], Meta);

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        let rest = self.data.get(self.pos..)?;
        let (len, meta) = read_prefix(rest.get(..RECORD_PREFIX_BYTES)?);
        let bytes = rest.get(RECORD_PREFIX_BYTES..RECORD_PREFIX_BYTES + len)?;
        self.pos += RECORD_PREFIX_BYTES + len;
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
    fn fixed_layout_records_are_framed_as_any_record() {
        // (u64, u64) takes the fixed-layout path of `push`; its bytes must
        // be what the general path writes: length, ingest time, encoding.
        let mut b = Batch::with_capacity(0, 0, 64);
        let mut want = Vec::new();
        for i in 0..5u64 {
            let rec = (i, u64::MAX - i);
            assert!(b.push(&rec, Meta { ingest_ns: 1000 + i }).is_ok());
            let mut enc = Vec::new();
            assert_eq!(codec::encode(&rec, &mut enc).ok(), Some(16));
            want.extend_from_slice(&16u32.to_le_bytes());
            want.extend_from_slice(&(1000 + i).to_le_bytes());
            want.extend_from_slice(&enc);
        }
        assert_eq!(b.data, want);
        assert_eq!(b.count, 5);
        assert!(b.validate_framing().is_ok());
        let got: Vec<((u64, u64), u64)> = b
            .records()
            .map(|(bytes, m)| (codec::decode_checked::<(u64, u64)>(bytes).unwrap_or_default(), m.ingest_ns))
            .collect();
        assert_eq!(got[3], ((3, u64::MAX - 3), 1003));
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
        let mut b = Batch::with_capacity(0, 0, 64);
        b.push(&7u64, Meta::default()).ok();
        b.push(&8u64, Meta::default()).ok();
        let mut t = Batch::with_capacity(0, 0, 0);
        t.count = 2;
        t.data = b.data[..b.data.len() - 1].to_vec();
        assert!(matches!(t.validate_framing(), Err(BatchError::Truncated { record: 1, .. })));
        t.data = b.data.clone();
        t.count = 3;
        assert_eq!(t.validate_framing(), Err(BatchError::CountMismatch { header: 3, found: 2 }));
    }
}
