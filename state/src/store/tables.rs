//! A store's tables: registering them (raw, or typed by a handle, record
//! or dense), checking that a table is used with the handle type it was
//! registered with, and validating a restored table's entries against its
//! handle's types.

use super::lists::ListItems;
use super::record::*;
use super::{dense, BinIndex, StateStore, Table, TableId, TypeSig, PAGE_BYTES, TABLES_MAX};
use crate::error::StateError;

impl StateStore {
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

    pub(super) fn unknown(&self, t: TableId) -> StateError {
        StateError::UnknownTable { table: t.0, tables: self.tables.len() }
    }

    /// Checks that `t` is a raw table, for the raw mutations.
    #[inline(always)]
    pub(super) fn check_raw(&self, t: TableId) -> Result<(), StateError> {
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
}
