//! Incremental checkpoints of a [`StateStore`] as a stream of
//! self-describing chunks, and restore from a [`BackupStore`](crate::BackupStore).
//!
//! # Chunks
//!
//! A checkpoint is an ordered sequence of chunks, each framed as
//!
//! ```text
//! len u32 | crc32 u32 | kind u8 | payload
//! ```
//!
//! (little endian; `len` counts `kind` and `payload`, `crc32` covers them).
//! The kinds, in stream order:
//!
//! - **header** (one): magic `SPATECKP`, format version, checkpoint id, base
//!   checkpoint id (0 for a full image), the bins range and `bins_log2`, the
//!   segment file's layout (full segment size, high-water mark, free
//!   segments) and every bin's segments (location and size) with its
//!   allocation state, the table registry (names and handle type names) and
//!   the runtime's opaque `meta` bytes;
//! - **page** (one per page): page index, crc32 of the page, its 4096 bytes;
//! - **trailer** (one): number of page chunks and the crc32 of the header
//!   chunk's payload.
//!
//! A full image holds every page of every segment in use by a bin; an
//! increment holds the pages written since the previous checkpoint. The
//! first checkpoint of a store, the first after a restore, split or merge,
//! and the first after `full_every` increments
//! ([`StateStore::set_checkpoint_full_every`]) are full images.
//!
//! # Consistency: asynchronous checkpoints
//!
//! [`StateStore::begin_checkpoint`] returns a [`CheckpointStream`] that
//! produces the chunks on any thread, while the store's thread goes on
//! writing: the checkpoint is exactly the store as it was at the call (which
//! the runtime makes between two batches). The call copies no page; it takes
//! the dirty bitmap, snapshots the layout (sharing each bin's segment list,
//! so the work is per bin, not per segment) and starts a **copy-on-write
//! shadow**: until the stream has read every page, the first write to a page
//! of the checkpoint copies that page (4 KiB, once) aside, and the stream
//! reads that copy instead of the live page. Each page is claimed atomically
//! by whichever side comes first, so the stream never reads a page while it
//! is written (see `store/cow.rs` for the protocol and its ordering
//! argument). The header is encoded, and a full image's page list built, by
//! the stream. Without a checkpoint in flight the write path pays one
//! predictable branch.
//!
//! One checkpoint streams at a time ([`StateError::CheckpointInFlight`]). A
//! stream dropped before its trailer is forgotten: its pages are dirty again
//! and the chain is as it was, so the next checkpoint holds them.
//! [`StateStore::checkpoint`] is a begin and a drain on the calling thread.
//!
//! # Restore
//!
//! [`StateStore::restore`] loads the chain (full image, then increments) of
//! the latest complete checkpoint in a [`BackupStore`](crate::BackupStore),
//! checking every chunk's and page's crc32 (one pass over each page: the
//! chunk's crc is derived from the page's). Bin by bin, on several threads
//! for a large store, it verifies and copies the latest version of each
//! page straight from the mapped backup files into the new store, then
//! rebuilds the bin's index by scanning its segments while they are in
//! cache (records carry their hash) and validating the record framing (see
//! `checkpoint/restore.rs`). Any fault gives
//! [`StateError::CorruptCheckpoint`] naming the checkpoint and, where known,
//! the bin and page, and restore falls back to the previous complete
//! checkpoint; nothing corrupt is loaded.
//!
//! # Files
//!
//! - `checkpoint.rs` (this file): the format's constants and a taken
//!   [`Checkpoint`].
//! - `checkpoint/chunk.rs`: chunk framing: encoding a checkpoint's chunks,
//!   decoding and checking them ([`decode_chunk`]), walking a stored
//!   checkpoint's bytes, and compacting a chain into one full image.
//! - `checkpoint/header.rs`: the header chunk: what it holds (a store's
//!   snapshot at a begin, or a decoded header), its encoding and decoding,
//!   and the pages of a layout.
//! - `checkpoint/take.rs`: taking checkpoints: a store's place in its chain
//!   and the `impl StateStore` of [`StateStore::checkpoint`],
//!   [`StateStore::begin_checkpoint`] and their kin.
//! - `checkpoint/stream.rs`: [`CheckpointStream`], which produces a begun
//!   checkpoint's chunks on any thread.
//! - `checkpoint/restore.rs`: [`StateStore::restore`] and its kin.

mod chunk;
mod header;
mod restore;
mod stream;
mod take;

pub use chunk::{decode_chunk, Chunk, ChunkKind};
pub use restore::{restore_threads, RESTORE_PAGES_PER_THREAD_MIN, RESTORE_THREADS_MAX};
pub use stream::CheckpointStream;

pub(crate) use chunk::{
    check_trailer, compact_chain, decode_page, page_chunk_fast, parse, Framed, PageChunk, PAGE_CHUNK,
};
pub(crate) use header::{seg_pages, CkptHeader, HeaderSnapshot};
// For the tests of other modules.
#[cfg(test)]
pub(crate) use chunk::encode;
#[cfg(test)]
pub(crate) use header::{layout_pages, BinLayout};
// Named by `stream.rs` and `restore.rs` as `super::…`.
use chunk::{corrupt, frame, walk};

use crate::store::PAGE_BYTES;

#[cfg(doc)]
use crate::{error::StateError, store::StateStore};

/// Magic bytes opening a header chunk's payload.
pub const MAGIC: [u8; 8] = *b"SPATECKP";

/// Version of the chunk format (2: segments from [`SEG_MIN_BYTES`], less
/// than a page, and dense table parts).
///
/// [`SEG_MIN_BYTES`]: crate::store::SEG_MIN_BYTES
pub const FORMAT_VERSION: u16 = 2;

/// Bytes of a chunk's framing before the payload (`len`, `crc32`, `kind`).
pub const FRAME_BYTES: usize = 9;

/// Largest chunk payload accepted by the decoder (a header of a store with
/// many segments is the largest chunk).
pub const CHUNK_MAX: usize = 1 << 30;

pub use crate::store::chain::FULL_EVERY_DEFAULT;

const PAGE_PAYLOAD: usize = 12 + PAGE_BYTES;

/// A checkpoint: its chunks, in stream order.
#[derive(Debug)]
pub struct Checkpoint {
    id: u64,
    base: u64,
    pages: u64,
    chunks: Vec<Vec<u8>>,
}

impl Checkpoint {
    /// The checkpoint's id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The id of the checkpoint this one is an increment on (0 for a full
    /// image).
    pub fn base(&self) -> u64 {
        self.base
    }

    /// Whether this is a full image.
    pub fn is_full(&self) -> bool {
        self.base == 0
    }

    /// Number of page chunks.
    pub fn page_count(&self) -> u64 {
        self.pages
    }

    /// The chunks, in the order they must be sent.
    pub fn chunks(&self) -> &[Vec<u8>] {
        &self.chunks
    }

    /// The chunks, in the order they must be sent.
    pub fn into_chunks(self) -> Vec<Vec<u8>> {
        self.chunks
    }

    /// Total bytes of the chunks.
    pub fn bytes(&self) -> u64 {
        self.chunks.iter().map(|c| c.len() as u64).sum()
    }
}
