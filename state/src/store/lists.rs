//! Append-only lists: appending an item to a key's list (in blocks that
//! double, up to a quarter segment), and reading a list's items
//! ([`ListItems`]).

use super::record::*;
use super::{index_err, SegmentFile, StateStore, TableId};
use crate::error::StateError;

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
    pub(super) fn new(file: &'a SegmentFile, first_block: u64) -> Self {
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

impl StateStore {
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
}
