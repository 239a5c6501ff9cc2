//! The keyed state store of one stateful operator instance.
//!
//! # Layout
//!
//! A [`StateStore`] owns a [`BinRange`] and keeps all its state in **one
//! sparse segment file** in its own directory, cut into segments of 512
//! bytes up to `segment_bytes` (default 64 KiB; see `file.rs`) and mapped in 32 MiB
//! chunks that are never remapped:
//! growing the file maps one more chunk. One file per store keeps the number
//! of open files at one per stateful instance however many bins it owns, and
//! fixed chunks keep the number of maps small (one per 32 MiB of state)
//! without ever moving memory that was handed out.
//!
//! Each **bin** owns its own list of segments, allocated lazily on the bin's
//! first write (a bin without state costs a small header entry and no
//! segment), and bump-allocates records into the last one. A bin's first
//! segment is 512 bytes and each next one doubles, up to `segment_bytes`, so
//! the hot records of many small bins share few pages and cache sets. All tables of a
//! bin share its segments, so moving a bin to another store (split, merge)
//! copies its segments whole and never rehashes. A record is a 20-byte
//! header (hash, lengths, table, kind, flags) followed by the key and value
//! bytes (see `record.rs` for the format); a value of unchanged length is
//! overwritten in place, otherwise a new record is appended and the old one
//! flagged dead. When a bin's dead bytes reach half of its segments, the next
//! segment switch **compacts that bin** (copies its live records into fresh
//! segments), so garbage stays bounded without pausing the whole store.
//!
//! Lookups go through a per-bin, per-table open-addressing index of 8-byte
//! `(hash tag, location)` slots (see `index.rs`), all of a store's in one
//! anonymous memory region with huge pages, which grows by rehashing only
//! that bin. The index is derived data: every record carries
//! its hash, so restoring or moving a bin rebuilds it from the segments.
//! A table of fixed-size keys and values is *dense* instead (see
//! `dense.rs`): its bins hold parts whose slots are the keys and values
//! themselves, with no index beside them.
//!
//! Every write marks its 4 KiB pages in a dirty bitmap (one bit per page of
//! the file; a segment of a page or more owns a contiguous run of bits, a
//! smaller one shares its page's bit with other segments): an incremental
//! checkpoint is the dirty pages of the bins' segments plus a manifest (the
//! bins, their segment lists and tails, the tables), and a copy-on-write
//! shadow for asynchronous checkpoints hooks into the single write path.
//!
//! # What is not promised
//!
//! The segment file is not a durable format on its own: it is meaningful only
//! with a checkpoint's header (see [`crate::checkpoint`]), which carries the
//! bins' segment lists and the tables. `create` always starts empty;
//! [`StateStore::restore`] rebuilds a store from a backup.

pub(crate) mod cow;
pub(crate) mod dense;
pub(crate) mod file;
pub(crate) mod index;
pub(crate) mod record;

use std::any::TypeId;
use std::path::PathBuf;

use crate::error::StateError;
use crate::keyspace::{bin_of, BinRange, BINS_LOG2_MAX};

pub(crate) use file::SegmentFile;
pub(crate) use file::SEG_MIN_LOG2;
pub use file::{Backing, CHUNK_BYTES, PAGE_BYTES, SEGMENTS_MAX, SEGMENT_FILE_NAME, SEG_MIN_BYTES};
pub(crate) use index::{slot_loc, tag_matches, BinIndex, SlotArena, EMPTY};
use record::*;

/// Default bytes per segment.
pub const SEGMENT_BYTES_DEFAULT: usize = 64 * 1024;
/// Largest bytes per segment.
pub const SEGMENT_BYTES_MAX: usize = 1 << 30;
/// Most tables (named states) one store can hold.
pub const TABLES_MAX: usize = 256;

/// Where and how a store keeps its state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreConfig {
    /// The store's own directory (created if missing). `create` removes the
    /// store's previous segment file in it, so two stores never share one.
    pub dir: PathBuf,
    /// The key space has `2^bins_log2` bins.
    pub bins_log2: u8,
    /// Bytes of a full segment: a power of two, at least [`PAGE_BYTES`], at
    /// most [`SEGMENT_BYTES_MAX`]. A bin's segments start at a page and
    /// double up to this size. A record (20-byte header, key, value) or a
    /// list item must fit in one full segment.
    pub segment_bytes: usize,
    /// What holds the live segments: a file in `dir` or anonymous memory.
    pub backing: Backing,
}

impl StoreConfig {
    /// A config with the default segment size.
    pub fn new(dir: impl Into<PathBuf>, bins_log2: u8) -> Self {
        Self { dir: dir.into(), bins_log2, segment_bytes: SEGMENT_BYTES_DEFAULT, backing: Backing::default() }
    }

    /// The same config with another backing.
    pub fn with_backing(mut self, backing: Backing) -> Self {
        self.backing = backing;
        self
    }

    /// The same config with another segment size.
    pub fn with_segment_bytes(mut self, segment_bytes: usize) -> Self {
        self.segment_bytes = segment_bytes;
        self
    }

    fn validate(&self, bins: BinRange) -> Result<(), StateError> {
        if self.bins_log2 > BINS_LOG2_MAX {
            return Err(StateError::InvalidConfig {
                field: "bins_log2",
                reason: format!("{} is above the maximum {BINS_LOG2_MAX}", self.bins_log2),
            });
        }
        let s = self.segment_bytes;
        if !s.is_power_of_two() || !(PAGE_BYTES..=SEGMENT_BYTES_MAX).contains(&s) {
            return Err(StateError::InvalidConfig {
                field: "segment_bytes",
                reason: format!("{s} is not a power of two between {PAGE_BYTES} and {SEGMENT_BYTES_MAX}"),
            });
        }
        if u64::from(bins.end) > 1u64 << self.bins_log2 {
            return Err(StateError::InvalidConfig {
                field: "bins",
                reason: format!("{bins} exceeds the {} bins of the key space", 1u64 << self.bins_log2),
            });
        }
        Ok(())
    }
}

/// A table (one named state) of a store. Ids are given in registration
/// order, starting at 0, so the same registrations give the same ids.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TableId(u16);

impl TableId {
    /// The id as an index (registration order).
    pub fn index(self) -> usize {
        usize::from(self.0)
    }

    /// The id of the table at `index` (below [`TABLES_MAX`]).
    pub(crate) fn from_index(index: usize) -> Self {
        debug_assert!(index < TABLES_MAX);
        TableId(index as u16)
    }
}

/// The type of the handle a table was registered with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct TypeSig {
    pub(crate) id: TypeId,
    pub(crate) name: &'static str,
}

pub(crate) struct Table {
    pub(crate) name: String,
    /// `None` for a raw table (or a restored typed table not yet claimed).
    pub(crate) sig: Option<TypeSig>,
    /// For a typed table restored from a checkpoint and not yet registered
    /// again by its handle: the handle's type name. The first registration
    /// with that type name claims the table.
    pub(crate) restored_sig: Option<String>,
    /// The table's records came from a checkpoint and have not been
    /// validated against its handle's types yet: the handle validates them
    /// when it registers (it reads values without validation after that).
    pub(crate) unverified: bool,
    /// One index per owned bin (unused, always empty, in a dense table).
    pub(crate) bins: Vec<BinIndex>,
    /// The dense side of a table of fixed-size values (see `dense.rs`):
    /// its keys and values live in dense parts, not in records.
    pub(crate) dense: Option<dense::DenseTable>,
    pub(crate) len: usize,
}

impl Table {
    /// The type name the table is registered with (`"raw"` for raw tables).
    pub(crate) fn type_name(&self) -> &str {
        match (&self.sig, &self.restored_sig) {
            (Some(s), _) => s.name,
            (None, Some(n)) => n,
            (None, None) => "raw",
        }
    }
}

/// One segment of a bin: its location and log2 of its bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Seg {
    pub(crate) loc: u64,
    pub(crate) log2: u32,
}

/// A bin's segments: none or one inline (most bins: a reservation gives
/// each of 4 096 bins one, which as a shared vector took two allocations
/// to make and two frees to drop: handing out the segments of a
/// 100 000-key reservation took 0.6–0.8 ms, 0.11 ms inline), or
/// several in a vector shared with the snapshot of a checkpoint being
/// streamed (copied on the next change, see
/// [`StateStore::begin_checkpoint`]). Reads as a slice.
#[derive(Clone, Debug, Default)]
pub(crate) enum Segs {
    #[default]
    None,
    One(Seg),
    Many(std::sync::Arc<Vec<Seg>>),
}

impl Segs {
    /// Appends `s`.
    pub(crate) fn push(&mut self, s: Seg) {
        match self {
            Segs::None => *self = Segs::One(s),
            Segs::One(first) => *self = Segs::Many(std::sync::Arc::new(vec![*first, s])),
            Segs::Many(v) => std::sync::Arc::make_mut(v).push(s),
        }
    }
}

impl From<Vec<Seg>> for Segs {
    fn from(v: Vec<Seg>) -> Self {
        match v[..] {
            [] => Segs::None,
            [s] => Segs::One(s),
            _ => Segs::Many(std::sync::Arc::new(v)),
        }
    }
}

impl std::ops::Deref for Segs {
    type Target = [Seg];
    fn deref(&self) -> &[Seg] {
        match self {
            Segs::None => &[],
            Segs::One(s) => std::slice::from_ref(s),
            Segs::Many(v) => v,
        }
    }
}

/// Allocation state of one bin.
#[derive(Default, Clone, Debug)]
pub(crate) struct BinHeap {
    /// The bin's segments, in allocation order; the last is being filled.
    /// Each is twice the size of the previous one, up to the full size.
    pub(crate) segs: Segs,
    /// Bytes of the bin's segments.
    pub(crate) capacity: u64,
    /// Next free byte in the last segment.
    pub(crate) tail: u64,
    /// End of the last segment (0 when the bin has none).
    pub(crate) end: u64,
    /// Bytes handed to records and padding.
    pub(crate) used: u64,
    /// Bytes of dead records and padding.
    pub(crate) dead: u64,
}

/// The items of one key's list, oldest first.
pub struct ListItems<'a> {
    file: &'a SegmentFile,
    /// Next block to read, or `NONE`.
    next_block: u64,
    /// Next item's location and the end of the current block's items.
    pos: u64,
    end: u64,
}

impl<'a> ListItems<'a> {
    fn new(file: &'a SegmentFile, first_block: u64) -> Self {
        Self { file, next_block: first_block, pos: 0, end: 0 }
    }
}

impl<'a> Iterator for ListItems<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        while self.pos >= self.end {
            if self.next_block == NONE {
                return None;
            }
            let body = self.file.bytes(self.next_block + HEADER as u64, BLOCK_HEAD);
            let used = u64::from(u32_at(body, 8));
            self.pos = self.next_block + (HEADER + BLOCK_HEAD) as u64;
            self.end = self.pos + used;
            self.next_block = u64_at(body, 0);
        }
        let len = u32_at(self.file.bytes(self.pos, ITEM_LEN), 0) as usize;
        let item = self.file.bytes(self.pos + ITEM_LEN as u64, len);
        self.pos += (ITEM_LEN + len) as u64;
        Some(item)
    }
}

/// The keyed state of one stateful operator instance: its bins' records in
/// memory-mapped segments, organised as named tables of key -> value or
/// key -> append-only list.
///
/// Keys and values are byte strings; the `hash` passed with a key is the
/// routing hash of the record key: it picks the bin (its top bits) and the
/// probe position. Different keys may share a hash and coexist (keys are
/// compared byte for byte). Operators use the typed handles of
/// [`crate::handles`], never this raw API.
pub struct StateStore {
    pub(crate) config: StoreConfig,
    pub(crate) bins: BinRange,
    pub(crate) file: SegmentFile,
    pub(crate) heaps: Vec<BinHeap>,
    pub(crate) tables: Vec<Table>,
    /// The index slots of every table and bin.
    pub(crate) index: SlotArena,
    /// Scratch for compaction rollback: (table, slot position, old location).
    moved: Vec<(usize, usize, u64)>,
    /// Checkpoint chain state (see `crate::checkpoint`).
    pub(crate) chain: crate::checkpoint::ChainState,
    /// How burst updates of dense tables mark their pages dirty (see
    /// `dense::WholeMarks`).
    pub(crate) marks: dense::WholeMarks,
}

/// Key equality, without a `memcmp` call for the short keys of the hot path.
#[inline(always)]
fn eq_key(a: &[u8], b: &[u8]) -> bool {
    let n = a.len();
    if n != b.len() {
        return false;
    }
    if (8..=16).contains(&n) {
        // Two overlapping 8-byte words cover the key.
        u64_at(a, 0) == u64_at(b, 0) && u64_at(a, n - 8) == u64_at(b, n - 8)
    } else {
        a == b
    }
}

/// Zero if the equal-length keys `a` and `b` are equal, without a branch for
/// the lengths of fixed-layout keys (which are constants where it inlines).
#[inline(always)]
fn key_diff(a: &[u8], b: &[u8]) -> u64 {
    let n = a.len();
    debug_assert_eq!(n, b.len());
    if (8..=16).contains(&n) {
        // Two overlapping 8-byte words cover the key.
        (u64_at(a, 0) ^ u64_at(b, 0)) | (u64_at(a, n - 8) ^ u64_at(b, n - 8))
    } else if (4..8).contains(&n) {
        u64::from((u32_at(a, 0) ^ u32_at(b, 0)) | (u32_at(a, n - 4) ^ u32_at(b, n - 4)))
    } else {
        u64::from(a != b)
    }
}

/// Prefetches the cache line at `p` into all cache levels.
#[inline(always)]
fn prefetch_ptr(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is a hint that never faults, whatever the address;
    // SSE is part of the x86-64 baseline.
    #[allow(unused_unsafe)]
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// Whether the record at `loc` has hash `hash` and key `key`.
#[inline(always)]
fn is_key(file: &SegmentFile, loc: u64, hash: u64, key: &[u8]) -> bool {
    // Header and key in one read; a record too short for it (at the end of
    // a chunk) is another key.
    let Some(r) = file.bytes_within(loc, HEADER + key.len()) else {
        return false;
    };
    u64_at(r, 0) == hash && u32_at(r, 8) as usize == key.len() && eq_key(&r[HEADER..], key)
}

/// What [`StateStore::fixed_value_mut`] found.
pub(crate) enum FixedValue<'a> {
    /// The key holds a value of the asked length: its bytes, marked dirty.
    Found(&'a mut [u8]),
    /// The key holds nothing, or a value of another length (at `loc`, `len`).
    Other(Option<(u64, usize)>),
}

/// The hash of the record at `loc` (for index growth and removal).
#[inline(always)]
pub(crate) fn hash_at(file: &SegmentFile) -> impl Fn(u64) -> u64 + '_ {
    move |loc| u64_at(file.bytes(loc, 8), 0)
}

/// The index could not get memory.
#[cold]
pub(crate) fn index_err(source: std::io::Error) -> StateError {
    StateError::Io { path: PathBuf::from("<anonymous memory>"), op: "map the key index", source }
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

/// Flags the record at `loc` dead and accounts its bytes (and, for a list,
/// its blocks') as garbage of its bin.
pub(crate) fn kill(file: &mut SegmentFile, heap: &mut BinHeap, loc: u64) {
    let h = header(file, loc);
    let mut bytes = h.record_bytes() as u64;
    if h.kind == KIND_LIST {
        let (_, mut block, _) = read_head(file, loc, h.key_len);
        while block != NONE {
            let bh = header(file, block);
            bytes += bh.record_bytes() as u64;
            block = u64_at(file.bytes(block + HEADER as u64, 8), 0);
        }
    }
    file.bytes_mut(loc + FLAGS_AT, 1)[0] = h.flags | FLAG_DEAD;
    heap.dead += bytes;
    debug_assert!(heap.dead <= heap.used);
}

impl StateStore {
    /// Creates an empty store owning `bins`, removing any previous segment
    /// file in `config.dir`.
    pub fn create(config: StoreConfig, bins: BinRange) -> Result<Self, StateError> {
        config.validate(bins)?;
        let file = SegmentFile::create(&config.dir, config.segment_bytes, config.backing)?;
        let heaps = (0..bins.len()).map(|_| BinHeap::default()).collect();
        let index = SlotArena::new().map_err(index_err)?;
        Ok(Self {
            config,
            bins,
            file,
            heaps,
            tables: Vec::new(),
            index,
            moved: Vec::new(),
            chain: crate::checkpoint::ChainState::default(),
            marks: dense::WholeMarks::default(),
        })
    }

    /// The store's configuration.
    pub fn config(&self) -> &StoreConfig {
        &self.config
    }

    /// The bins this store owns.
    pub fn bins(&self) -> BinRange {
        self.bins
    }

    /// Path of the store's segment file (with [`Backing::Memory`], where it
    /// would be: no file is created).
    pub fn segment_file(&self) -> &std::path::Path {
        self.file.path()
    }

    /// The id of the raw table `name`, registering it on first use. Ids are
    /// given in registration order. Fails if `name` is a typed table (one
    /// registered by a handle).
    pub fn table(&mut self, name: &str) -> Result<TableId, StateError> {
        self.register(name, None, None)
    }

    /// The id of table `name` for the handle type `sig`. With `dense`
    /// (the key and value bytes of a handle of fixed-size keys and values),
    /// a new table is a dense one (see `dense.rs`), and so is a restored
    /// one that holds no key yet; a restored record table stays one.
    pub(crate) fn typed_table(
        &mut self,
        name: &str,
        sig: TypeSig,
        dense: Option<(usize, usize)>,
    ) -> Result<TableId, StateError> {
        self.register(name, Some(sig), dense)
    }

    fn register(
        &mut self,
        name: &str,
        sig: Option<TypeSig>,
        dense: Option<(usize, usize)>,
    ) -> Result<TableId, StateError> {
        let nbins = self.bins.len() as usize;
        let sig_name = |s: Option<TypeSig>| s.map_or("raw", |s| s.name);
        if let Some(i) = self.tables.iter().position(|t| t.name == name) {
            let t = &mut self.tables[i];
            if let (Some(want), Some(s)) = (t.restored_sig.as_deref(), sig) {
                if want == s.name {
                    // A restored typed table claimed by its handle type.
                    if let Some(d) = &t.dense {
                        if Some((d.key_len, d.val_len)) != dense {
                            return Err(StateError::TableTypeMismatch {
                                name: name.to_string(),
                                registered: "a dense table of other key or value sizes (restored)",
                                requested: s.name,
                            });
                        }
                    } else if t.len == 0 {
                        t.dense = dense
                            .map(|(k, v)| dense::DenseTable::new(k, v, self.bins, self.config.bins_log2));
                    }
                    t.sig = Some(s);
                    t.restored_sig = None;
                }
            }
            if t.restored_sig.is_some() || t.sig.map(|s| s.id) != sig.map(|s| s.id) {
                return Err(StateError::TableTypeMismatch {
                    name: name.to_string(),
                    registered: if t.restored_sig.is_some() {
                        "a typed handle (restored)"
                    } else {
                        sig_name(t.sig)
                    },
                    requested: sig_name(sig),
                });
            }
            return Ok(TableId(i as u16));
        }
        if self.tables.len() >= TABLES_MAX {
            return Err(StateError::TooManyTables { max: TABLES_MAX });
        }
        let id = TableId(self.tables.len() as u16);
        let bins = (0..nbins).map(|_| BinIndex::default()).collect();
        self.tables.push(Table {
            name: name.to_string(),
            sig,
            restored_sig: None,
            unverified: false,
            bins,
            dense: dense.map(|(k, v)| dense::DenseTable::new(k, v, self.bins, self.config.bins_log2)),
            len: 0,
        });
        Ok(id)
    }

    /// The records of `table`, bin by bin: `(bin index, location, header,
    /// key)`.
    fn records<'a>(&'a self, table: &'a Table) -> impl Iterator<Item = (usize, u64, Header, &'a [u8])> + 'a {
        table.bins.iter().enumerate().flat_map(move |(bi, ix)| {
            ix.slots(&self.index).iter().filter(|&&s| s != EMPTY).map(move |&s| {
                let loc = slot_loc(s);
                let h = header(&self.file, loc);
                (bi, loc, h, self.file.bytes(loc + HEADER as u64, h.key_len as usize))
            })
        })
    }

    /// Calls `f(bin index, entry)` for every entry of `table`'s dense parts
    /// (nothing for a record table), bin by bin.
    fn dense_for_each(&self, table: &Table, mut f: impl FnMut(usize, dense::Entry<'_>)) {
        let Some(d) = &table.dense else {
            return;
        };
        for (bi, db) in d.bins.iter().enumerate() {
            for e in db.entries(&self.file, d.key_len, d.stride()) {
                f(bi, e);
            }
        }
    }

    /// If table `t` came from a checkpoint and was not validated yet, calls
    /// `ok(key, value, items)` for each of its keys (`value` is `None` for a
    /// list, whose items are given) and fails with
    /// [`StateError::CorruptCheckpoint`] at the first `false`.
    pub(crate) fn verify_restored(
        &mut self,
        t: TableId,
        mut ok: impl FnMut(&[u8], Option<&[u8]>, ListItems<'_>) -> bool,
    ) -> Result<(), StateError> {
        let Some(table) = self.tables.get(t.index()) else {
            return Err(self.unknown(t));
        };
        if !table.unverified {
            return Ok(());
        }
        let mut bad_dense = None;
        self.dense_for_each(table, |bi, e| {
            if bad_dense.is_none() && !ok(e.key, Some(e.value), ListItems::new(&self.file, NONE)) {
                bad_dense = Some(bi);
            }
        });
        if let Some(bi) = bad_dense {
            return Err(StateError::CorruptCheckpoint {
                checkpoint: self.chain.last,
                bin: Some(self.bins.start + bi as u32),
                page: None,
                reason: format!(
                    "a slot of dense table {:?} does not validate as its handle's types",
                    table.name
                ),
            });
        }
        for (bi, loc, h, key) in self.records(table) {
            let good = if h.kind == KIND_LIST {
                let (_, first, _) = read_head(&self.file, loc, h.key_len);
                ok(key, None, ListItems::new(&self.file, first))
            } else {
                let value = self.file.bytes(loc + (HEADER + key.len()) as u64, h.val_len as usize);
                ok(key, Some(value), ListItems::new(&self.file, NONE))
            };
            if !good {
                return Err(StateError::CorruptCheckpoint {
                    checkpoint: self.chain.last,
                    bin: Some(self.bins.start + bi as u32),
                    page: Some(loc / PAGE_BYTES as u64),
                    reason: format!(
                        "a record of table {:?} does not validate as its handle's types",
                        table.name
                    ),
                });
            }
        }
        if let Some(table) = self.tables.get_mut(t.index()) {
            table.unverified = false;
        }
        Ok(())
    }

    /// Checks that table `t` exists and was registered by handle type `sig`.
    #[inline(always)]
    pub(crate) fn check_sig(&self, t: TableId, sig: &TypeSig) -> Result<(), StateError> {
        match self.tables.get(t.index()) {
            Some(table) if table.sig.map(|s| s.id) == Some(sig.id) && !table.unverified => Ok(()),
            Some(table) if table.unverified => Err(StateError::CorruptCheckpoint {
                checkpoint: self.chain.last,
                bin: None,
                page: None,
                reason: format!(
                    "table {:?} holds unvalidated records: register its handle again",
                    table.name
                ),
            }),
            Some(table) => {
                debug_assert!(false, "handle {} used with table {:?}", sig.name, table.name);
                Err(StateError::TableTypeMismatch {
                    name: table.name.clone(),
                    registered: table.sig.map_or("raw", |s| s.name),
                    requested: sig.name,
                })
            }
            None => {
                debug_assert!(false, "handle {} used with unknown table {t:?}", sig.name);
                Err(self.unknown(t))
            }
        }
    }

    fn unknown(&self, t: TableId) -> StateError {
        StateError::UnknownTable { table: t.0, tables: self.tables.len() }
    }

    /// Checks that `t` is a raw table, for the raw mutations.
    #[inline(always)]
    fn check_raw(&self, t: TableId) -> Result<(), StateError> {
        match self.tables.get(t.index()) {
            Some(table) if table.restored_sig.is_some() => Err(StateError::TableTypeMismatch {
                name: table.name.clone(),
                registered: "a typed handle (restored)",
                requested: "raw",
            }),
            Some(table) => match table.sig {
                None => Ok(()),
                Some(s) => Err(StateError::TableTypeMismatch {
                    name: table.name.clone(),
                    registered: s.name,
                    requested: "raw",
                }),
            },
            None => Err(self.unknown(t)),
        }
    }

    /// Index of the bin of `hash` among the owned bins.
    #[inline(always)]
    fn bin_index(&self, hash: u64) -> Result<usize, StateError> {
        let bin = bin_of(hash, self.config.bins_log2);
        let i = bin.wrapping_sub(self.bins.start);
        if i < self.bins.len() {
            Ok(i as usize)
        } else {
            Err(self.not_owned(hash))
        }
    }

    /// The error for a hash whose bin this store does not own.
    #[cold]
    fn not_owned(&self, hash: u64) -> StateError {
        let bin = bin_of(hash, self.config.bins_log2);
        debug_assert!(false, "bin {bin} of hash {hash:#x} is not owned ({})", self.bins);
        StateError::BinNotOwned { bin, bins: self.bins }
    }

    /// Slot position of `key` in table `t`, bin index `bi`.
    #[inline(always)]
    fn find(&self, t: usize, bi: usize, hash: u64, key: &[u8]) -> Option<usize> {
        let file = &self.file;
        self.tables[t].bins[bi].find(&self.index, hash, |loc| is_key(file, loc, hash, key))
    }

    /// The index of table `t` in the bin of `hash`, if both exist here.
    #[inline(always)]
    fn bin_ix(&self, t: TableId, hash: u64) -> Option<&BinIndex> {
        let bin = bin_of(hash, self.config.bins_log2).wrapping_sub(self.bins.start);
        self.tables.get(t.index())?.bins.get(bin as usize)
    }

    /// Hints the CPU to fetch the index slot of `hash` in table `t` and the
    /// record that slot points to. The record part works when the slot is
    /// already cached: call [`StateStore::prefetch_index`] for `hash` a few
    /// records earlier still (two-stage prefetch), or rely on this call
    /// alone for the slot. Calling it a few records ahead of the
    /// `get`/`update` of `hash` (an operator walking a batch) overlaps the
    /// cache misses of several lookups. It has no branch on the slot's
    /// contents (a slot of another key prefetches that key's record, which
    /// is harmless). A no-op for a foreign bin or an unknown table, and on
    /// targets without a prefetch instruction.
    #[inline(always)]
    pub fn prefetch(&self, t: TableId, hash: u64) {
        if self.tables.get(t.index()).is_some_and(|t| t.dense.is_some()) {
            // A dense table's lookup reads nothing that needs a first
            // stage: `prefetch_index` fetched it.
            return;
        }
        let Some(ix) = self.bin_ix(t, hash) else {
            return;
        };
        let (p, s) = ix.home_slot(&self.index, hash);
        prefetch_ptr(p.cast());
        prefetch_ptr(self.file.prefetch_addr(slot_loc(s)));
    }

    /// First stage of a two-stage prefetch: hints the CPU to fetch the index
    /// slot of `hash` in table `t`, without reading anything that may miss
    /// the cache. Call it some records before [`StateStore::prefetch`] of
    /// the same hash (for example 16 and 8 records ahead of the update).
    #[inline(always)]
    pub fn prefetch_index(&self, t: TableId, hash: u64) {
        let Some(table) = self.tables.get(t.index()) else {
            return;
        };
        if let Some(d) = &table.dense {
            let bi = bin_of(hash, self.config.bins_log2).wrapping_sub(self.bins.start) as usize;
            dense::prefetch(d, &self.file, bi, self.config.bins_log2, hash);
            return;
        }
        if let Some(ix) = self.bin_ix(t, hash) {
            prefetch_ptr(ix.home_addr(&self.index, hash).cast());
        }
    }

    /// Location and length of the value of `key` (which must be a value, not
    /// a list).
    #[inline(always)]
    pub(crate) fn find_value(
        &self,
        t: TableId,
        hash: u64,
        key: &[u8],
    ) -> Result<Option<(u64, usize)>, StateError> {
        let ti = t.index();
        if ti >= self.tables.len() {
            return Err(self.unknown(t));
        }
        let bi = self.bin_index(hash)?;
        if let Some(d) = &self.tables[ti].dense {
            if key.len() != d.key_len {
                return Ok(None);
            }
            return Ok(dense::find_value(d, &self.file, bi, self.config.bins_log2, hash, key)
                .map(|v| (v, d.val_len)));
        }
        let Some(si) = self.find(ti, bi, hash, key) else {
            return Ok(None);
        };
        let loc = self.tables[ti].bins[bi].loc(&self.index, si);
        let h = header(&self.file, loc);
        if h.kind != KIND_VALUE {
            return Err(StateError::KindMismatch { expected: "value", found: kind_name(h.kind) });
        }
        Ok(Some((loc + (HEADER + key.len()) as u64, h.val_len as usize)))
    }

    /// The value of `key` if it is `len` bytes long, for updating in place
    /// (its pages are marked dirty); else where the value is, if anywhere.
    /// The hot path of a fixed-size `ValueState::update`.
    #[inline(always)]
    pub(crate) fn fixed_value_mut(
        &mut self,
        t: TableId,
        hash: u64,
        key: &[u8],
        len: usize,
    ) -> Result<FixedValue<'_>, StateError> {
        Ok(match self.fixed_value_ptr(t, hash, key, len)? {
            // SAFETY: `p .. p + len` is the value in the mapped file (see
            // `fixed_value_ptr`); the returned borrow holds `&mut self`, so
            // this is the only access to those bytes while it lives.
            Ok(p) => FixedValue::Found(unsafe { std::slice::from_raw_parts_mut(p, len) }),
            Err(other) => FixedValue::Other(other),
        })
    }

    /// As [`StateStore::fixed_value_mut`], giving a pointer to the `len`
    /// value bytes (already marked dirty), derived from the map's base
    /// pointer, valid while the store is not dropped.
    #[inline(always)]
    fn fixed_value_ptr(
        &mut self,
        t: TableId,
        hash: u64,
        key: &[u8],
        len: usize,
    ) -> Result<Result<*mut u8, Option<(u64, usize)>>, StateError> {
        // Every check of this path costs: the CPU overlaps the cache misses
        // of consecutive updates only as far as its reorder window reaches,
        // so the path is kept short and has one data-dependent branch per
        // probed record.
        let Some(table) = self.tables.get(t.index()) else {
            return Err(self.unknown(t));
        };
        // The bins vector's bounds check is the ownership check.
        let bi = bin_of(hash, self.config.bins_log2).wrapping_sub(self.bins.start) as usize;
        if let Some(d) = &table.dense {
            let Some(p) = dense::probe(d, &self.file, bi, self.config.bins_log2, hash) else {
                return Err(self.not_owned(hash));
            };
            if key.len() != d.key_len || len != d.val_len {
                return Ok(Err(None));
            }
            // The stride from the caller's lengths: constants where the
            // typed update inlines this.
            let stride = key.len() + len;
            let Some(j) = dense::find_slot(&p, stride, hash, key) else {
                return Ok(Err(None));
            };
            let (ptr, vloc) = dense::value_ptr(&p, key.len(), stride, j);
            self.file.mark_dirty(vloc, len);
            return Ok(Ok(ptr));
        }
        let Some(ix) = table.bins.get(bi) else {
            return Err(self.not_owned(hash));
        };
        let file = &self.file;
        let klen = key.len();
        // Header bytes 12..20: val_len (bits 0..32) and kind (bits 48..56),
        // not the table or the flags.
        let meta = len as u64 | u64::from(KIND_VALUE) << 48;
        // The probe, written out (a closure here is not reliably inlined).
        let (slots, mask) = ix.probe(&self.index);
        let mut i = hash as usize & mask;
        let (loc, p) = loop {
            let s = slots[i];
            if s == EMPTY {
                // Absent, or the key holds something else (a value of
                // another length, a list), or a record too short for `len`
                // bytes of value (at the very end of a chunk): the general
                // path decides.
                return Ok(Err(self.find_value(t, hash, key)?));
            }
            if tag_matches(s, hash) {
                let loc = slot_loc(s);
                if let Some(p) = file.ptr_within(loc, HEADER + klen + len) {
                    // SAFETY: `p .. p + HEADER + klen + len` is mapped memory
                    // of the file (checked by `ptr_within`), only read here
                    // while `&self` is borrowed.
                    let r = unsafe { std::slice::from_raw_parts(p, HEADER + klen) };
                    let diff = (u64_at(r, 0) ^ hash)
                        | (u64::from(u32_at(r, 8)) ^ klen as u64)
                        | ((u64_at(r, 12) & 0x00ff_0000_ffff_ffff) ^ meta)
                        | key_diff(&r[HEADER..], key);
                    if diff == 0 {
                        break (loc, p);
                    }
                }
            }
            i = (i + 1) & mask;
        };
        let vloc = loc + (HEADER + klen) as u64;
        self.file.mark_dirty(vloc, len);
        // SAFETY: `p .. p + HEADER + klen + len` lies in the mapped file (see
        // above), so the value's `len` bytes do too.
        Ok(Ok(unsafe { p.add(HEADER + klen) }))
    }

    /// The bytes at a value location returned by `find_value`.
    #[inline(always)]
    pub(crate) fn value_at(&self, loc: u64, len: usize) -> &[u8] {
        self.file.bytes(loc, len)
    }

    /// Overwrites the value at a location returned by `find_value` with
    /// bytes of the same length.
    #[inline(always)]
    pub(crate) fn overwrite_value(&mut self, loc: u64, value: &[u8]) {
        self.file.write(loc, value);
    }

    /// The value of `key` in table `t`, if it holds one (a list gives `None`).
    pub fn get(&self, t: TableId, hash: u64, key: &[u8]) -> Option<&[u8]> {
        match self.find_value(t, hash, key) {
            Ok(Some((loc, len))) => Some(self.file.bytes(loc, len)),
            _ => None,
        }
    }

    /// Sets the value of `key` in table `t`: in place when the stored value
    /// has the same length, else by appending a new record.
    pub fn put(&mut self, t: TableId, hash: u64, key: &[u8], value: &[u8]) -> Result<(), StateError> {
        self.check_raw(t)?;
        self.put_impl(t, hash, key, value)
    }

    pub(crate) fn put_impl(
        &mut self,
        t: TableId,
        hash: u64,
        key: &[u8],
        value: &[u8],
    ) -> Result<(), StateError> {
        let ti = t.index();
        if ti >= self.tables.len() {
            return Err(self.unknown(t));
        }
        let bi = self.bin_index(hash)?;
        if let Some(d) = &self.tables[ti].dense {
            if key.len() != d.key_len || value.len() != d.val_len {
                return Err(StateError::ValueSizeMismatch {
                    expected: d.key_len + d.val_len,
                    found: key.len() + value.len(),
                });
            }
            return match dense::find_value(d, &self.file, bi, self.config.bins_log2, hash, key) {
                Some(vloc) => {
                    self.file.write(vloc, value);
                    Ok(())
                }
                None => self.dense_insert(ti, bi, hash, key, value).map(|_| ()),
            };
        }
        let size = HEADER + key.len() + value.len();
        match self.find(ti, bi, hash, key) {
            Some(si) => {
                let loc = self.tables[ti].bins[bi].loc(&self.index, si);
                let h = header(&self.file, loc);
                if h.kind != KIND_VALUE {
                    return Err(StateError::KindMismatch { expected: "value", found: kind_name(h.kind) });
                }
                if h.val_len as usize == value.len() {
                    self.file.write(loc + (HEADER + key.len()) as u64, value);
                    return Ok(());
                }
                // May compact the bin: slot positions stay, locations move.
                let new = self.alloc(bi, size, true)?;
                self.write_record(new, hash, ti, KIND_VALUE, key, value);
                let old = self.tables[ti].bins[bi].loc(&self.index, si);
                kill(&mut self.file, &mut self.heaps[bi], old);
                self.tables[ti].bins[bi].set_loc(&mut self.index, si, new);
            }
            None => {
                let new = self.alloc(bi, size, true)?;
                self.write_record(new, hash, ti, KIND_VALUE, key, value);
                self.tables[ti].bins[bi]
                    .insert_new(&mut self.index, hash, new, hash_at(&self.file))
                    .map_err(index_err)?;
                self.tables[ti].len += 1;
            }
        }
        Ok(())
    }

    /// The fixed-size value of `key`, inserted as `len` zero bytes passed to
    /// `init` if absent; the returned bytes are marked dirty, for updating in
    /// place. Fails with [`StateError::ValueSizeMismatch`] if the key holds a
    /// value of another length.
    pub fn get_or_insert_fixed(
        &mut self,
        t: TableId,
        hash: u64,
        key: &[u8],
        len: usize,
        init: impl FnOnce(&mut [u8]),
    ) -> Result<&mut [u8], StateError> {
        self.check_raw(t)?;
        let found = match self.fixed_value_ptr(t, hash, key, len)? {
            // SAFETY: `p .. p + len` is the value in the mapped file (see
            // `fixed_value_ptr`), already marked dirty; the returned borrow
            // holds `&mut self`, so this is the only access while it lives.
            Ok(p) => return Ok(unsafe { std::slice::from_raw_parts_mut(p, len) }),
            Err(found) => found,
        };
        if let Some((vloc, found)) = found {
            if found == len {
                // Only for a record the fast lookup could not read whole.
                return Ok(self.file.bytes_mut(vloc, len));
            }
            return Err(StateError::ValueSizeMismatch { expected: len, found });
        }
        let ti = t.index();
        let bi = self.bin_index(hash)?;
        let size = HEADER + key.len() + len;
        let new = self.alloc(bi, size, true)?;
        self.write_header(new, hash, ti, KIND_VALUE, key, len);
        let v = self.file.bytes_mut(new + (HEADER + key.len()) as u64, len);
        v.fill(0);
        init(v);
        self.tables[ti].bins[bi]
            .insert_new(&mut self.index, hash, new, hash_at(&self.file))
            .map_err(index_err)?;
        self.tables[ti].len += 1;
        Ok(self.file.bytes_mut(new + (HEADER + key.len()) as u64, len))
    }

    /// Removes `key` (its value, or its whole list) from table `t`; returns
    /// whether it was present.
    pub fn remove(&mut self, t: TableId, hash: u64, key: &[u8]) -> bool {
        let ti = t.index();
        if ti >= self.tables.len() {
            return false;
        }
        let Ok(bi) = self.bin_index(hash) else {
            return false;
        };
        if let Some(d) = &self.tables[ti].dense {
            if key.len() != d.key_len {
                return false;
            }
            let Some((_, at)) = dense::find(d, &self.file, bi, self.config.bins_log2, hash, key) else {
                return false;
            };
            self.dense_remove_at(ti, bi, at);
            return true;
        }
        let Some(si) = self.find(ti, bi, hash, key) else {
            return false;
        };
        let ix = &mut self.tables[ti].bins[bi];
        kill(&mut self.file, &mut self.heaps[bi], ix.loc(&self.index, si));
        ix.remove_at(&mut self.index, si, hash_at(&self.file));
        self.tables[ti].len -= 1;
        true
    }

    /// Appends `item` to the list of `key` in table `t` (creating the list).
    pub fn append(&mut self, t: TableId, hash: u64, key: &[u8], item: &[u8]) -> Result<(), StateError> {
        self.check_raw(t)?;
        self.append_impl(t, hash, key, item)
    }

    pub(crate) fn append_impl(
        &mut self,
        t: TableId,
        hash: u64,
        key: &[u8],
        item: &[u8],
    ) -> Result<(), StateError> {
        let ti = t.index();
        if ti >= self.tables.len() {
            return Err(self.unknown(t));
        }
        if self.tables[ti].dense.is_some() {
            return Err(StateError::KindMismatch { expected: "list", found: "dense value" });
        }
        let bi = self.bin_index(hash)?;
        let seg = self.config.segment_bytes;
        let item_bytes = ITEM_LEN + item.len();
        let block_max = seg - HEADER - BLOCK_HEAD;
        if item_bytes > block_max {
            return Err(StateError::RecordTooLarge {
                record_bytes: HEADER + BLOCK_HEAD + item_bytes,
                max_bytes: seg,
            });
        }
        let key_len = key.len() as u32;
        let si = match self.find(ti, bi, hash, key) {
            Some(si) => {
                let h = header(&self.file, self.tables[ti].bins[bi].loc(&self.index, si));
                if h.kind != KIND_LIST {
                    return Err(StateError::KindMismatch { expected: "list", found: kind_name(h.kind) });
                }
                si
            }
            None => {
                let size = HEADER + key.len() + LIST_HEAD;
                let new = self.alloc(bi, size, true)?;
                self.write_header(new, hash, ti, KIND_LIST, key, LIST_HEAD);
                write_head(&mut self.file, new, key_len, (0, NONE, NONE));
                self.tables[ti].len += 1;
                self.tables[ti].bins[bi]
                    .insert_new(&mut self.index, hash, new, hash_at(&self.file))
                    .map_err(index_err)?
            }
        };
        let head_loc = self.tables[ti].bins[bi].loc(&self.index, si);
        let (count, first, last) = read_head(&self.file, head_loc, key_len);
        let mut prev_cap = 0;
        if last != NONE {
            let body = self.file.bytes(last + HEADER as u64, BLOCK_HEAD);
            let used = u32_at(body, 8) as usize;
            let cap = header(&self.file, last).val_len as usize - BLOCK_HEAD;
            if used + item_bytes <= cap {
                self.write_item(last, used, item);
                write_head(&mut self.file, head_loc, key_len, (count + 1, first, last));
                return Ok(());
            }
            prev_cap = cap;
        }
        // A new block: doubling, up to a quarter segment (bounding the
        // padding a block can waste), or just the item if larger.
        let cap = (prev_cap * 2).clamp(BLOCK_CAP_MIN, (seg / 4).max(BLOCK_CAP_MIN)).max(item_bytes);
        let cap = cap.min(block_max);
        let block = self.alloc(bi, HEADER + BLOCK_HEAD + cap, true)?;
        let h = Header {
            hash,
            key_len: 0,
            val_len: (BLOCK_HEAD + cap) as u32,
            table: ti as u16,
            kind: KIND_BLOCK,
            flags: 0,
        };
        let b = self.file.bytes_mut(block, HEADER + BLOCK_HEAD);
        h.write(b);
        b[HEADER..HEADER + 8].copy_from_slice(&NONE.to_le_bytes());
        b[HEADER + 8..HEADER + 12].copy_from_slice(&0u32.to_le_bytes());
        // The allocation may have compacted the bin: read the head again.
        let head_loc = self.tables[ti].bins[bi].loc(&self.index, si);
        let (count, mut first, last) = read_head(&self.file, head_loc, key_len);
        if last != NONE {
            self.file.write(last + HEADER as u64, &block.to_le_bytes());
        } else {
            first = block;
        }
        self.write_item(block, 0, item);
        write_head(&mut self.file, head_loc, key_len, (count + 1, first, block));
        Ok(())
    }

    /// Writes `item` at offset `used` of block `block`'s items and bumps its
    /// used count.
    fn write_item(&mut self, block: u64, used: usize, item: &[u8]) {
        let at = block + (HEADER + BLOCK_HEAD + used) as u64;
        let b = self.file.bytes_mut(at, ITEM_LEN + item.len());
        b[..ITEM_LEN].copy_from_slice(&(item.len() as u32).to_le_bytes());
        b[ITEM_LEN..].copy_from_slice(item);
        let used = (used + ITEM_LEN + item.len()) as u32;
        self.file.write(block + (HEADER + 8) as u64, &used.to_le_bytes());
    }

    fn list_head(&self, t: TableId, hash: u64, key: &[u8]) -> Option<(u64, u64)> {
        let ti = t.index();
        if ti >= self.tables.len() {
            return None;
        }
        let bi = self.bin_index(hash).ok()?;
        let si = self.find(ti, bi, hash, key)?;
        let loc = self.tables[ti].bins[bi].loc(&self.index, si);
        let h = header(&self.file, loc);
        if h.kind != KIND_LIST {
            return None;
        }
        let (count, first, _) = read_head(&self.file, loc, h.key_len);
        Some((count, first))
    }

    /// Calls `f` with every item of `key`'s list, oldest first (nothing if
    /// the key holds no list).
    pub fn list_for_each(&self, t: TableId, hash: u64, key: &[u8], f: impl FnMut(&[u8])) {
        self.list_items(t, hash, key).for_each(f);
    }

    /// The items of `key`'s list, oldest first (empty if the key holds no
    /// list).
    pub fn list_items(&self, t: TableId, hash: u64, key: &[u8]) -> ListItems<'_> {
        let first = self.list_head(t, hash, key).map_or(NONE, |(_, first)| first);
        ListItems::new(&self.file, first)
    }

    /// Number of items in `key`'s list (0 if the key holds no list).
    pub fn list_len(&self, t: TableId, hash: u64, key: &[u8]) -> u64 {
        self.list_head(t, hash, key).map_or(0, |(count, _)| count)
    }

    /// Calls `f(hash, key, value)` for every key of table `t`, bin by bin. A
    /// key holding a list is given with an empty value; read its items with
    /// [`StateStore::list_items`].
    pub fn for_each(&self, t: TableId, mut f: impl FnMut(u64, &[u8], &[u8])) {
        let Some(table) = self.tables.get(t.index()) else {
            return;
        };
        self.dense_for_each(table, |_, e| f(e.hash, e.key, e.value));
        for (_, loc, h, key) in self.records(table) {
            let value = if h.kind == KIND_VALUE {
                self.file.bytes(loc + (HEADER + key.len()) as u64, h.val_len as usize)
            } else {
                &[]
            };
            f(h.hash, key, value);
        }
    }

    /// Calls `f(key, value)` for every key of table `t` whose hash is `hash`
    /// (for example every entry of one record key's map). Lists are given
    /// with an empty value.
    pub fn for_each_with_hash(&self, t: TableId, hash: u64, mut f: impl FnMut(&[u8], &[u8])) {
        let Some(table) = self.tables.get(t.index()) else {
            return;
        };
        let Ok(bi) = self.bin_index(hash) else {
            return;
        };
        if let Some(d) = &table.dense {
            for (_, e) in
                dense::run_of(&self.file, &d.bins[bi], self.config.bins_log2, d.key_len, d.stride(), hash)
            {
                if e.hash == hash {
                    f(e.key, e.value);
                }
            }
            return;
        }
        table.bins[bi].for_each_in_run(&self.index, hash, |_, loc| {
            if hash_at(&self.file)(loc) == hash {
                let (key, value) = key_value(&self.file, loc);
                f(key, value);
            }
        });
    }

    /// Keeps the keys of table `t` whose hash is `hash` for which
    /// `f(key, value)` returns true and removes the others; returns how many
    /// were removed.
    pub fn retain_with_hash(
        &mut self,
        t: TableId,
        hash: u64,
        mut f: impl FnMut(&[u8], &[u8]) -> bool,
    ) -> usize {
        let Ok(bi) = self.bin_index(hash) else {
            return 0;
        };
        if self.tables.get(t.index()).is_some_and(|t| t.dense.is_some()) {
            return self.dense_retain(t.index(), Some((bi, hash)), |h, k, v, _| h != hash || f(k, v));
        }
        let Self { file, heaps, tables, index, .. } = self;
        let Some(table) = tables.get_mut(t.index()) else {
            return 0;
        };
        let ix = &mut table.bins[bi];
        if ix.len() == 0 {
            return 0;
        }
        let mut removed = 0;
        let mut i = ix.home(hash);
        while let Some(j) = ix.next_in_run(index, hash, i, |loc| hash_at(file)(loc) == hash) {
            let loc = ix.loc(index, j);
            let keep = {
                let (key, value) = key_value(file, loc);
                f(key, value)
            };
            if keep {
                i = j + 1;
            } else {
                kill(file, &mut heaps[bi], loc);
                ix.remove_at(index, j, hash_at(file));
                removed += 1;
                i = j;
            }
        }
        table.len -= removed;
        removed
    }

    /// Keeps the keys of table `t` for which `f(hash, key, value)` returns
    /// true and removes the others; returns how many were removed. Lists are
    /// given with an empty value (see [`StateStore::retain_lists`]).
    pub fn retain(&mut self, t: TableId, mut f: impl FnMut(u64, &[u8], &[u8]) -> bool) -> usize {
        self.retain_entries(t, |hash, key, value, _| f(hash, key, value))
    }

    /// Keeps the keys of table `t` for which `f(hash, key, items)` returns
    /// true and removes the others (with their lists); returns how many were
    /// removed. Keys holding values are given with no items.
    pub fn retain_lists(
        &mut self,
        t: TableId,
        mut f: impl FnMut(u64, &[u8], ListItems<'_>) -> bool,
    ) -> usize {
        self.retain_entries(t, |hash, key, _, items| f(hash, key, items))
    }

    fn retain_entries(
        &mut self,
        t: TableId,
        mut f: impl FnMut(u64, &[u8], &[u8], ListItems<'_>) -> bool,
    ) -> usize {
        if self.tables.get(t.index()).is_some_and(|t| t.dense.is_some()) {
            return self.dense_retain(t.index(), None, f);
        }
        let Self { file, heaps, tables, index, .. } = self;
        let Some(table) = tables.get_mut(t.index()) else {
            return 0;
        };
        let mut removed = 0;
        for (bi, ix) in table.bins.iter_mut().enumerate() {
            if ix.len() == 0 {
                continue;
            }
            let n = ix.capacity();
            let mask = n - 1;
            // Start just after an empty slot: removal shifts slots backwards
            // within a run only, so no slot is visited twice or skipped.
            let Some(start) = ix.slots(index).iter().position(|&s| s == EMPTY) else {
                continue;
            };
            let mut i = (start + 1) & mask;
            let mut steps = 0;
            while steps < n {
                let s = ix.slots(index)[i];
                if s == EMPTY {
                    i = (i + 1) & mask;
                    steps += 1;
                    continue;
                }
                let loc = slot_loc(s);
                let keep = {
                    let h = header(file, loc);
                    let key = file.bytes(loc + HEADER as u64, h.key_len as usize);
                    let vloc = loc + (HEADER + key.len()) as u64;
                    if h.kind == KIND_LIST {
                        let (_, first, _) = read_head(file, loc, h.key_len);
                        f(h.hash, key, &[], ListItems::new(file, first))
                    } else {
                        let value = file.bytes(vloc, h.val_len as usize);
                        f(h.hash, key, value, ListItems::new(file, NONE))
                    }
                };
                if keep {
                    i = (i + 1) & mask;
                    steps += 1;
                } else {
                    kill(file, &mut heaps[bi], loc);
                    ix.remove_at(index, i, hash_at(file));
                    removed += 1;
                }
            }
        }
        table.len -= removed;
        removed
    }

    /// Number of keys in table `t`.
    pub fn len(&self, t: TableId) -> usize {
        self.tables.get(t.index()).map_or(0, |t| t.len)
    }

    /// Whether table `t` holds no key.
    pub fn is_empty(&self, t: TableId) -> bool {
        self.len(t) == 0
    }

    /// Bytes of live records (headers, keys, values, list blocks) in all
    /// bins.
    pub fn bytes_used(&self) -> u64 {
        self.heaps.iter().map(|h| h.used - h.dead).sum()
    }

    /// Bytes of the segments allocated to bins (what a full checkpoint
    /// image holds).
    pub fn segment_bytes_in_use(&self) -> u64 {
        self.heaps.iter().map(|h| h.capacity).sum()
    }

    /// Segments allocated to bins.
    pub fn segment_count(&self) -> usize {
        self.heaps.iter().map(|h| h.segs.len()).sum()
    }

    /// Pages written since the last checkpoint began (or since the last
    /// [`StateStore::clear_dirty`]), with those of a checkpoint whose stream
    /// was dropped before its trailer.
    pub fn dirty_page_count(&self) -> usize {
        match (self.file.cow_phase(), self.file.cow_set()) {
            (Some(cow::Phase::Abandoned), Some(set)) => self.file.dirty_page_count_with(set),
            _ => self.file.dirty_page_count(),
        }
    }

    /// Forgets which pages are dirty, those of a checkpoint whose stream
    /// was dropped before its trailer included.
    pub fn clear_dirty(&mut self) {
        // A stream still producing chunks is not settled: it goes on.
        let _ = self.settle_checkpoint();
        self.file.clear_dirty();
    }

    fn write_header(&mut self, loc: u64, hash: u64, ti: usize, kind: u8, key: &[u8], val_len: usize) {
        let h = Header {
            hash,
            key_len: key.len() as u32,
            val_len: val_len as u32,
            table: ti as u16,
            kind,
            flags: 0,
        };
        let b = self.file.bytes_mut(loc, HEADER + key.len());
        h.write(b);
        b[HEADER..].copy_from_slice(key);
    }

    fn write_record(&mut self, loc: u64, hash: u64, ti: usize, kind: u8, key: &[u8], value: &[u8]) {
        self.write_header(loc, hash, ti, kind, key, value.len());
        self.file.write(loc + (HEADER + key.len()) as u64, value);
    }

    /// Reserves `n` bytes for a record of bin `bi`. With `may_compact`, a
    /// segment switch may first compact the bin, which moves its records
    /// (and rewrites their slots' locations; slot positions do not change).
    #[inline(always)]
    pub(crate) fn alloc(&mut self, bi: usize, n: usize, may_compact: bool) -> Result<u64, StateError> {
        let h = &mut self.heaps[bi];
        let n = n as u64;
        if h.tail + n <= h.end {
            let loc = h.tail;
            h.tail += n;
            h.used += n;
            return Ok(loc);
        }
        self.alloc_slow(bi, n, may_compact)
    }

    #[cold]
    fn alloc_slow(&mut self, bi: usize, n: u64, mut may_compact: bool) -> Result<u64, StateError> {
        let seg = self.file.segment_bytes();
        if n > seg {
            return Err(StateError::RecordTooLarge { record_bytes: n as usize, max_bytes: seg as usize });
        }
        loop {
            let h = &mut self.heaps[bi];
            if h.tail + n <= h.end {
                let loc = h.tail;
                h.tail += n;
                h.used += n;
                return Ok(loc);
            }
            // Close the current segment with padding.
            if !h.segs.is_empty() {
                let rem = h.end - h.tail;
                let at = h.tail;
                h.used += rem;
                h.dead += rem;
                h.tail = h.end;
                if rem >= HEADER as u64 {
                    write_pad(&mut self.file, at, rem);
                }
            }
            let h = &self.heaps[bi];
            if may_compact && h.capacity > 0 && h.dead * 2 >= h.capacity {
                may_compact = false;
                self.compact(bi)?;
                continue;
            }
            let log2 = self.file.next_segment_log2(h.segs.last().map(|s| s.log2), n);
            let loc = self.file.alloc_segment(log2)?;
            let h = &mut self.heaps[bi];
            h.segs.push(Seg { loc, log2 });
            h.capacity += 1 << log2;
            h.tail = loc;
            h.end = loc + (1 << log2);
        }
    }

    /// Copies the live records of bin `bi` into fresh segments and frees the
    /// old ones. On failure (the file cannot grow) the bin is left as it was.
    #[cold]
    fn compact(&mut self, bi: usize) -> Result<(), StateError> {
        let old = std::mem::take(&mut self.heaps[bi]);
        let mut moved = std::mem::take(&mut self.moved);
        moved.clear();
        let mut result = Ok(());
        'tables: for ti in 0..self.tables.len() {
            for pos in 0..self.tables[ti].bins[bi].capacity() {
                let s = self.tables[ti].bins[bi].slots(&self.index)[pos];
                if s == EMPTY {
                    continue;
                }
                let loc = slot_loc(s);
                match self.copy_record(bi, loc) {
                    Ok(new) => {
                        self.tables[ti].bins[bi].set_loc(&mut self.index, pos, new);
                        moved.push((ti, pos, loc));
                    }
                    Err(e) => {
                        result = Err(e);
                        break 'tables;
                    }
                }
            }
        }
        // Dense parts move whole (they hold no locations).
        let mut moved_dense = Vec::new();
        if result.is_ok() {
            'dense: for ti in 0..self.tables.len() {
                let Some(d) = &self.tables[ti].dense else {
                    continue;
                };
                let locs: Vec<u64> = d.bins[bi].parts().map(|p| p.loc).collect();
                for (k, loc) in locs.into_iter().enumerate() {
                    match self.copy_part(bi, k, loc) {
                        Ok(new) => {
                            self.relocate_part(ti, bi, k, new);
                            moved_dense.push((ti, k, loc));
                        }
                        Err(e) => {
                            result = Err(e);
                            break 'dense;
                        }
                    }
                }
            }
        }
        let fresh = std::mem::replace(&mut self.heaps[bi], old);
        match result {
            Ok(()) => {
                let old = std::mem::replace(&mut self.heaps[bi], fresh);
                for s in old.segs.iter() {
                    self.file.free_segment(s.loc, s.log2);
                }
            }
            Err(_) => {
                // Roll back: the old records are untouched.
                for &(ti, pos, loc) in &moved {
                    self.tables[ti].bins[bi].set_loc(&mut self.index, pos, loc);
                }
                for &(ti, k, loc) in &moved_dense {
                    self.relocate_part(ti, bi, k, loc);
                }
                for s in fresh.segs.iter() {
                    self.file.free_segment(s.loc, s.log2);
                }
            }
        }
        moved.clear();
        self.moved = moved;
        result
    }

    /// Copies the record at `loc` (with its list blocks, trimmed to their
    /// used bytes) into bin `bi`'s current segments; returns its new location.
    pub(crate) fn copy_record(&mut self, bi: usize, loc: u64) -> Result<u64, StateError> {
        let h = header(&self.file, loc);
        let size = h.record_bytes();
        let new = self.alloc(bi, size, false)?;
        self.file.copy(loc, new, size);
        if h.kind != KIND_LIST {
            return Ok(new);
        }
        let (count, mut block, _) = read_head(&self.file, loc, h.key_len);
        let (mut first, mut prev) = (NONE, NONE);
        while block != NONE {
            let body = self.file.bytes(block + HEADER as u64, BLOCK_HEAD);
            let (next, used) = (u64_at(body, 0), u32_at(body, 8) as usize);
            let nb = self.alloc(bi, HEADER + BLOCK_HEAD + used, false)?;
            self.file.copy(block, nb, HEADER + BLOCK_HEAD + used);
            self.file.write(nb + 12, &((BLOCK_HEAD + used) as u32).to_le_bytes());
            self.file.write(nb + HEADER as u64, &NONE.to_le_bytes());
            if prev == NONE {
                first = nb;
            } else {
                self.file.write(prev + HEADER as u64, &nb.to_le_bytes());
            }
            prev = nb;
            block = next;
        }
        write_head(&mut self.file, new, h.key_len, (count, first, prev));
        Ok(new)
    }
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

#[cfg(test)]
pub(crate) mod tests;
