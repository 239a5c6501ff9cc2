//! The keyed state store of one stateful operator instance.
//!
//! # Where each concern lives
//!
//! [`StateStore`] is one struct whose `impl` blocks are cut by concern,
//! one file for each:
//!
//! - `store.rs` (this file): the struct, its tables' types ([`TableId`],
//!   `Table`, `TypeSig`) and `index_err`, which several files share.
//! - opening and config, `store/open.rs`: [`StoreConfig`] and its checks,
//!   [`StateStore::create`], [`StateStore::config`], [`StateStore::bins`],
//!   [`StateStore::segment_file`].
//! - tables, `store/tables.rs`: [`StateStore::table`], `typed_table`, the
//!   checks that a table is used as it was registered (`check_sig`,
//!   `check_raw`), and the validation of a restored table's entries
//!   against its handle's types (`verify_restored`).
//! - reads, `store/reads.rs`: [`StateStore::get`], [`StateStore::prefetch`],
//!   [`StateStore::prefetch_index`], [`StateStore::for_each`],
//!   [`StateStore::for_each_with_hash`], and the lookup steps the writes
//!   share (`bin_index`, `find`, `find_value`).
//! - writes, `store/writes.rs`: [`StateStore::put`],
//!   [`StateStore::get_or_insert_fixed`], [`StateStore::remove`],
//!   [`StateStore::retain`], [`StateStore::retain_with_hash`],
//!   [`StateStore::retain_lists`], and the in-place update of a fixed-size
//!   value (`fixed_value_mut`, the hot path of a typed update).
//! - lists, `store/lists.rs`: [`StateStore::append`],
//!   [`StateStore::list_items`], [`StateStore::list_for_each`],
//!   [`StateStore::list_len`], [`ListItems`].
//! - bin allocation and compaction, `store/heap.rs`: each bin's segments
//!   (`BinHeap`), `alloc`, `compact`, `copy_record`, `kill`.
//! - stats, `store/stats.rs`: [`StateStore::len`],
//!   [`StateStore::bytes_used`], [`StateStore::segment_bytes_in_use`],
//!   [`StateStore::segment_count`], [`StateStore::dirty_page_count`],
//!   [`StateStore::clear_dirty`].
//! - dense tables, `store/dense.rs` and `store/dense/`: tables of
//!   fixed-size keys and values whose slots are the state (the module's
//!   doc maps its files, each with its own `impl StateStore`).
//! - checkpointing, `checkpoint/take.rs`: [`StateStore::checkpoint`],
//!   [`StateStore::begin_checkpoint`], [`StateStore::last_checkpoint`],
//!   [`StateStore::set_checkpoint_full_every`] and the chain they keep.
//! - restore, `checkpoint/restore.rs`: [`StateStore::restore`],
//!   [`StateStore::restore_id`].
//! - split and merge by bins, `partition.rs`: [`StateStore::split_off`],
//!   [`StateStore::split_off_into`], [`StateStore::merge`].
//!
//! Beside them, with no `impl StateStore`: `store/record.rs` (the record
//! format, and reading and writing records in the file), `store/keys.rs`
//! (key comparison and prefetch, shared by record and dense lookups),
//! `store/index.rs` (the per-bin index), `store/file.rs` (the segment
//! file, its maps and its dirty bitmap) and `store/cow.rs` (the
//! copy-on-write shadow of an asynchronous checkpoint).
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

pub(crate) mod chain;
pub(crate) mod cow;
pub(crate) mod dense;
pub(crate) mod file;
mod heap;
pub(crate) mod index;
mod keys;
mod lists;
mod open;
mod reads;
pub(crate) mod record;
mod stats;
mod tables;
mod writes;

use std::any::TypeId;
use std::path::PathBuf;

use crate::error::StateError;
use crate::keyspace::BinRange;

pub use file::{Backing, CHUNK_BYTES, PAGE_BYTES, SEGMENTS_MAX, SEGMENT_FILE_NAME, SEG_MIN_BYTES};
pub(crate) use file::{SegmentFile, SEG_MIN_LOG2};
pub(crate) use heap::{BinHeap, Seg, Segs};
pub(crate) use index::{slot_loc, BinIndex, SlotArena, EMPTY};
pub use lists::ListItems;
pub use open::{StoreConfig, SEGMENT_BYTES_DEFAULT, SEGMENT_BYTES_MAX};
pub(crate) use record::{hash_at, key_value, read_head, write_head};
pub(crate) use writes::FixedValue;

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
    pub(crate) chain: chain::ChainState,
    /// How burst updates of dense tables mark their pages dirty (see
    /// `dense::WholeMarks`).
    pub(crate) marks: dense::WholeMarks,
}

/// Most tables (named states) one store can hold.
pub const TABLES_MAX: usize = 256;

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

/// The index could not get memory.
#[cold]
pub(crate) fn index_err(source: std::io::Error) -> StateError {
    StateError::Io { path: PathBuf::from("<anonymous memory>"), op: "map the key index", source }
}

#[cfg(test)]
pub(crate) mod tests;
