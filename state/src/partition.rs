//! Split and merge of live stores by bins.
//!
//! A bin's records move whole from one store to another: every live record
//! (with its list blocks) is copied into the receiving store's segments for
//! that bin and indexed under the hash it carries, so no key is rehashed or
//! decoded. Both stores' next checkpoints are full images, since their bins
//! changed.

use std::path::PathBuf;

use crate::error::StateError;
use crate::keyspace::BinRange;
use crate::store::dense::{DenseTable, PartInfo};
use crate::store::record::{u32_at, u64_at, Header, BLOCK_HEAD, HEADER, KIND_LIST, NONE};
use crate::store::{
    hash_at, index_err, key_value, read_head, write_head, BinHeap, SegmentFile, StateStore, StoreConfig,
    Table, TableId, EMPTY,
};

/// A part this large that moves is committed in one call before the copy
/// ([`SegmentFile::populate`]); smaller ones fault their pages in.
const POPULATE_MIN_BYTES: usize = 16 << 10;

impl StateStore {
    /// Moves `bins` (a run of this store's bins at its start or its end)
    /// into a new store, in a directory beside this store's
    /// (`<dir>-bins-<start>-<end>`); see [`StateStore::split_off_into`].
    pub fn split_off(&mut self, bins: BinRange) -> Result<StateStore, StateError> {
        let mut dir = self.config.dir.clone().into_os_string();
        dir.push(format!("-bins-{}-{}", bins.start, bins.end));
        let config = StoreConfig { dir: PathBuf::from(dir), ..self.config.clone() };
        self.split_off_into(bins, config)
    }

    /// Moves `bins` (a run of this store's bins at its start or its end, so
    /// that both stores keep a contiguous range) into a new store created
    /// with `config` (same `bins_log2`), with the same tables. Records move
    /// with their hash; nothing is rehashed. On error (the new store cannot
    /// grow) this store is unchanged.
    pub fn split_off_into(&mut self, bins: BinRange, config: StoreConfig) -> Result<StateStore, StateError> {
        let mine = self.bins;
        let at_start = bins.start == mine.start && bins.end <= mine.end;
        let at_end = bins.end == mine.end && bins.start >= mine.start;
        if !(at_start || at_end) || bins.start > bins.end {
            return Err(StateError::InvalidConfig {
                field: "bins",
                reason: format!("{bins} is not a run of bins at the start or end of {mine}"),
            });
        }
        if config.bins_log2 != self.config.bins_log2 {
            return Err(StateError::InvalidConfig {
                field: "bins_log2",
                reason: format!("{} differs from this store's {}", config.bins_log2, self.config.bins_log2),
            });
        }
        let mut new = StateStore::create(config, bins)?;
        for t in &self.tables {
            new.tables.push(Table {
                name: t.name.clone(),
                sig: t.sig,
                restored_sig: t.restored_sig.clone(),
                unverified: t.unverified,
                bins: (0..bins.len()).map(|_| Default::default()).collect(),
                dense: t
                    .dense
                    .as_ref()
                    .map(|d| DenseTable::new(d.key_len, d.val_len, bins, self.config.bins_log2)),
                len: 0,
            });
        }
        let first = (bins.start - mine.start) as usize;
        for nbi in 0..bins.len() as usize {
            new.import_bin(nbi, self, first + nbi, |ti| ti)?;
        }
        // Drop the moved bins here.
        for bi in (first..first + bins.len() as usize).rev() {
            let heap = self.heaps.remove(bi);
            for s in heap.segs.iter() {
                self.file.release_segment(s.loc, s.log2);
            }
            for t in &mut self.tables {
                let mut ix = t.bins.remove(bi);
                t.len -= ix.len();
                ix.release(&mut self.index);
            }
        }
        let left =
            if at_start { BinRange::new(bins.end, mine.end) } else { BinRange::new(mine.start, bins.start) };
        for t in &mut self.tables {
            if let Some(d) = &mut t.dense {
                t.len -= d.remove_bins(first..first + bins.len() as usize, left.start as usize);
            }
        }
        self.bins = left;
        self.chain.need_full = true;
        new.chain.need_full = true;
        Ok(new)
    }

    /// Takes in the bins of `other`, which must be adjacent to this store's
    /// (before or after them) and use the same `bins_log2`. Tables are
    /// matched by name (and must have the same handle type); tables only
    /// `other` has are added. Records move with their hash; nothing is
    /// rehashed. Fails before changing anything if the stores do not fit;
    /// if this store cannot grow while copying, it is left holding part of
    /// `other`'s records and should be dropped.
    pub fn merge(&mut self, other: StateStore) -> Result<(), StateError> {
        let (mine, theirs) = (self.bins, other.bins);
        let before = theirs.end == mine.start;
        let after = theirs.start == mine.end;
        if self.config.bins_log2 != other.config.bins_log2
            || !(before || after || mine.is_empty() || theirs.is_empty())
        {
            return Err(StateError::InvalidConfig {
                field: "bins",
                reason: format!(
                    "bins {theirs} cannot be merged with {mine}: not adjacent or another key space"
                ),
            });
        }
        // Map the tables, checking types first.
        let mut newly_unverified = Vec::new();
        let mut map = Vec::with_capacity(other.tables.len());
        let mut added = Vec::new();
        for t in &other.tables {
            match self.tables.iter().position(|m| m.name == t.name) {
                Some(i) => {
                    let m = &self.tables[i];
                    let same = match (m.sig, t.sig) {
                        (Some(a), Some(b)) => a.id == b.id,
                        _ => m.type_name() == t.type_name(),
                    };
                    if !same {
                        return Err(StateError::TableTypeMismatch {
                            name: t.name.clone(),
                            registered: "another handle type",
                            requested: "the merged store's type",
                        });
                    }
                    map.push(i);
                    // Records not yet validated against their types keep
                    // the merged table unvalidated: its handles must be
                    // registered again (which validates) before use.
                    if t.unverified {
                        newly_unverified.push(i);
                    }
                }
                None => {
                    map.push(self.tables.len() + added.len());
                    added.push(t);
                }
            }
        }
        if self.tables.len() + added.len() > crate::store::TABLES_MAX {
            return Err(StateError::TooManyTables { max: crate::store::TABLES_MAX });
        }
        for i in newly_unverified {
            self.tables[i].unverified = true;
        }
        for t in added {
            self.tables.push(Table {
                name: t.name.clone(),
                sig: t.sig,
                restored_sig: t.restored_sig.clone(),
                unverified: t.unverified,
                bins: (0..mine.len()).map(|_| Default::default()).collect(),
                dense: t
                    .dense
                    .as_ref()
                    .map(|d| DenseTable::new(d.key_len, d.val_len, mine, self.config.bins_log2)),
                len: 0,
            });
        }
        let n = theirs.len() as usize;
        let (range, offset) = if mine.is_empty() {
            (theirs, 0)
        } else if theirs.is_empty() {
            (mine, 0)
        } else if before {
            (BinRange::new(theirs.start, mine.end), 0)
        } else {
            (BinRange::new(mine.start, theirs.end), mine.len() as usize)
        };
        if mine.is_empty() {
            self.heaps.clear();
        }
        self.heaps.splice(offset..offset, (0..n).map(|_| BinHeap::default()));
        for t in &mut self.tables {
            if mine.is_empty() {
                t.bins.clear();
            }
            t.bins.splice(offset..offset, (0..n).map(|_| Default::default()));
            if let Some(d) = &mut t.dense {
                d.insert_bins(offset, n, mine.is_empty(), range.start as usize);
            }
        }
        self.bins = range;
        for obi in 0..n {
            self.import_bin(offset + obi, &other, obi, |ti| map[ti])?;
        }
        self.chain.need_full = true;
        Ok(())
    }

    /// Copies the live records of `src`'s bin `sbi` into this store's bin
    /// `bi`, table `ti` going to table `table_map(ti)`.
    fn import_bin(
        &mut self,
        bi: usize,
        src: &StateStore,
        sbi: usize,
        table_map: impl Fn(usize) -> usize,
    ) -> Result<(), StateError> {
        for (sti, table) in src.tables.iter().enumerate() {
            let ti = table_map(sti);
            if let Some(sd) = &table.dense {
                self.import_dense_bin(bi, ti, src, sd, sbi)?;
                continue;
            }
            let into_dense = self.tables[ti].dense.is_some();
            for &s in table.bins[sbi].slots(&src.index) {
                if s == EMPTY {
                    continue;
                }
                let loc = crate::store::slot_loc(s);
                if into_dense {
                    // A record table merged into a dense one of the same
                    // handle type: its values go in one by one.
                    let h = Header::read(src.file.bytes(loc, HEADER));
                    if h.kind == KIND_LIST {
                        return Err(StateError::KindMismatch { expected: "dense value", found: "list" });
                    }
                    let (key, value) = key_value(&src.file, loc);
                    self.put_impl(TableId::from_index(ti), h.hash, key, value)?;
                    continue;
                }
                let hash = u64_at(src.file.bytes(loc, 8), 0);
                let new = self.import_record(bi, &src.file, loc, ti as u16)?;
                let Self { file, tables, index, .. } = self;
                tables[ti].bins[bi].insert_new(index, hash, new, hash_at(file)).map_err(index_err)?;
                tables[ti].len += 1;
            }
        }
        Ok(())
    }

    /// Copies bin `sbi` of `src`'s dense table `sd` into this store's bin
    /// `bi` of table `ti`: its parts whole when table `ti` is dense with the
    /// same slots, else entry by entry.
    fn import_dense_bin(
        &mut self,
        bi: usize,
        ti: usize,
        src: &StateStore,
        sd: &DenseTable,
        sbi: usize,
    ) -> Result<(), StateError> {
        let db = &sd.bins[sbi];
        let same = self.tables[ti]
            .dense
            .as_ref()
            .is_some_and(|d| (d.key_len, d.val_len) == (sd.key_len, sd.val_len));
        if same {
            let mut parts = Vec::new();
            for (k, part) in db.parts().enumerate() {
                let loc = self.import_part(bi, k, &src.file, part.loc, ti as u16)?;
                parts.push(PartInfo {
                    table: ti as u16,
                    key_len: sd.key_len,
                    val_len: sd.val_len,
                    depth: db.depth,
                    slots_log2: db.slots_log2,
                    part: k as u32,
                    loc,
                    len: part.len,
                });
            }
            self.install_dense_parts(ti, bi, &parts);
            return Ok(());
        }
        for e in db.entries(&src.file, sd.key_len, sd.stride()) {
            self.put_impl(TableId::from_index(ti), e.hash, e.key, e.value)?;
        }
        Ok(())
    }

    /// Copies the dense part at `loc` of `src` into bin `bi` as its part
    /// number `part`, of table `table` (placed by
    /// [`StateStore::place_part`]); returns its new location.
    fn import_part(
        &mut self,
        bi: usize,
        part: usize,
        src: &SegmentFile,
        loc: u64,
        table: u16,
    ) -> Result<u64, StateError> {
        let size = Header::read(src.bytes(loc, HEADER)).record_bytes();
        let new = self.place_part(bi, part, size)?;
        if size >= POPULATE_MIN_BYTES {
            // Written whole at once: one call commits its pages (huge ones
            // where it covers enough), not a fault a page.
            self.file.populate(new, size);
        }
        self.file.write(new, src.bytes(loc, size));
        self.file.write(new + 16, &table.to_le_bytes());
        Ok(new)
    }

    /// Copies the record at `loc` of `src` (with its list blocks, trimmed to
    /// their used bytes) into bin `bi` as a record of table `table`; returns
    /// its new location.
    fn import_record(
        &mut self,
        bi: usize,
        src: &SegmentFile,
        loc: u64,
        table: u16,
    ) -> Result<u64, StateError> {
        let h = Header::read(src.bytes(loc, HEADER));
        let size = h.record_bytes();
        let new = self.alloc(bi, size, false)?;
        self.file.write(new, src.bytes(loc, size));
        self.file.write(new + 16, &table.to_le_bytes());
        if h.kind != KIND_LIST {
            return Ok(new);
        }
        let (count, mut block, _) = read_head(src, loc, h.key_len);
        let (mut first, mut prev) = (NONE, NONE);
        while block != NONE {
            let body = src.bytes(block + HEADER as u64, BLOCK_HEAD);
            let (next, used) = (u64_at(body, 0), u32_at(body, 8) as usize);
            let nb = self.alloc(bi, HEADER + BLOCK_HEAD + used, false)?;
            self.file.write(nb, src.bytes(block, HEADER + BLOCK_HEAD + used));
            self.file.write(nb + 12, &((BLOCK_HEAD + used) as u32).to_le_bytes());
            self.file.write(nb + 16, &table.to_le_bytes());
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
