//! Writes of values: put, the in-place update of a fixed-size value (the
//! hot path of a typed update), insert-if-absent, remove and retain; with
//! the writing of a record's header and bytes.

use super::heap::kill;
use super::index::{slot_loc, tag_matches, EMPTY};
use super::keys::key_diff;
use super::lists::ListItems;
use super::record::*;
use super::{dense, index_err, StateStore, TableId};
use crate::error::StateError;
use crate::keyspace::bin_of;

/// What [`StateStore::fixed_value_mut`] found.
pub(crate) enum FixedValue<'a> {
    /// The key holds a value of the asked length: its bytes, marked dirty.
    Found(&'a mut [u8]),
    /// The key holds nothing, or a value of another length (at `loc`, `len`).
    Other(Option<(u64, usize)>),
}

impl StateStore {
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

    /// Overwrites the value at a location returned by `find_value` with
    /// bytes of the same length.
    #[inline(always)]
    pub(crate) fn overwrite_value(&mut self, loc: u64, value: &[u8]) {
        self.file.write(loc, value);
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

    pub(super) fn write_header(
        &mut self,
        loc: u64,
        hash: u64,
        ti: usize,
        kind: u8,
        key: &[u8],
        val_len: usize,
    ) {
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
}
