//! What a store holds, counted: keys per table, bytes of records and of
//! segments, segments, and dirty pages (with forgetting them).

use super::{cow, StateStore, TableId};

impl StateStore {
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
}
