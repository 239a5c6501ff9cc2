//! Opening a store: its configuration ([`StoreConfig`]), checked, and
//! [`StateStore::create`], with the accessors of what it was opened with.

use std::path::PathBuf;

use super::file::{Backing, SegmentFile, PAGE_BYTES};
use super::heap::BinHeap;
use super::index::SlotArena;
use super::{dense, index_err, StateStore};
use crate::error::StateError;
use crate::keyspace::{BinRange, BINS_LOG2_MAX};

/// Default bytes per segment.
pub const SEGMENT_BYTES_DEFAULT: usize = 64 * 1024;

/// Largest bytes per segment.
pub const SEGMENT_BYTES_MAX: usize = 1 << 30;

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
            chain: super::chain::ChainState::default(),
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
}
