//! Reads: lookups of a key (record or dense table), their prefetch, and
//! iteration over a table's keys; with the lookup steps the write paths
//! share (the bin of a hash, a key's index slot, where its value lies).

use super::index::{slot_loc, BinIndex, EMPTY};
use super::keys::{is_key, prefetch_ptr};
use super::record::*;
use super::{dense, StateStore, Table, TableId};
use crate::error::StateError;
use crate::keyspace::bin_of;

impl StateStore {
    /// The records of `table`, bin by bin: `(bin index, location, header,
    /// key)`.
    pub(super) fn records<'a>(
        &'a self,
        table: &'a Table,
    ) -> impl Iterator<Item = (usize, u64, Header, &'a [u8])> + 'a {
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
    pub(super) fn dense_for_each(&self, table: &Table, mut f: impl FnMut(usize, dense::Entry<'_>)) {
        let Some(d) = &table.dense else {
            return;
        };
        for (bi, db) in d.bins.iter().enumerate() {
            for e in db.entries(&self.file, d.key_len, d.stride()) {
                f(bi, e);
            }
        }
    }

    /// Index of the bin of `hash` among the owned bins.
    #[inline(always)]
    pub(super) fn bin_index(&self, hash: u64) -> Result<usize, StateError> {
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
    pub(super) fn not_owned(&self, hash: u64) -> StateError {
        let bin = bin_of(hash, self.config.bins_log2);
        debug_assert!(false, "bin {bin} of hash {hash:#x} is not owned ({})", self.bins);
        StateError::BinNotOwned { bin, bins: self.bins }
    }

    /// Slot position of `key` in table `t`, bin index `bi`.
    #[inline(always)]
    pub(super) fn find(&self, t: usize, bi: usize, hash: u64, key: &[u8]) -> Option<usize> {
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

    /// The bytes at a value location returned by `find_value`.
    #[inline(always)]
    pub(crate) fn value_at(&self, loc: u64, len: usize) -> &[u8] {
        self.file.bytes(loc, len)
    }

    /// The value of `key` in table `t`, if it holds one (a list gives `None`).
    pub fn get(&self, t: TableId, hash: u64, key: &[u8]) -> Option<&[u8]> {
        match self.find_value(t, hash, key) {
            Ok(Some((loc, len))) => Some(self.file.bytes(loc, len)),
            _ => None,
        }
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
}
