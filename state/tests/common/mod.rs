//! Shared by the checkpoint tests: a store with a value table, a byte
//! table and a list table, and its contents in a canonical order.

use spate_state::{Backing, BinRange, ListState, StateStore, StoreConfig, TableId, ValueState};

/// Everything a store holds, in a canonical order: (table, hash, key,
/// value, list items).
pub type Dump = Vec<(usize, u64, Vec<u8>, Vec<u8>, Vec<Vec<u8>>)>;

/// The contents of `tables` in `store`, in a canonical order.
pub fn dump(store: &StateStore, tables: &[TableId]) -> Dump {
    let mut out = Vec::new();
    for (ti, &t) in tables.iter().enumerate() {
        store.for_each(t, |hash, key, value| {
            let items = store.list_items(t, hash, key).map(|i| i.to_vec()).collect();
            out.push((ti, hash, key.to_vec(), value.to_vec(), items));
        });
    }
    out.sort();
    out
}

/// A store and the handles of its three tables.
pub struct World {
    pub store: StateStore,
    pub sums: ValueState<u64, u64>,
    pub blobs: ValueState<u64, Vec<u8>>,
    pub lists: ListState<u64, Vec<u8>>,
}

impl World {
    /// A new store in `dir` owning `bins`, with small segments (many
    /// pages, many segment switches and compactions).
    #[allow(dead_code)]
    pub fn create(dir: &std::path::Path, bins_log2: u8, bins: BinRange) -> Self {
        Self::create_backed(dir, bins_log2, bins, Backing::default())
    }

    /// [`World::create`] with the given backing.
    #[allow(dead_code)]
    pub fn create_backed(dir: &std::path::Path, bins_log2: u8, bins: BinRange, backing: Backing) -> Self {
        let config = StoreConfig::new(dir, bins_log2).with_segment_bytes(16 * 1024).with_backing(backing);
        Self::handles(StateStore::create(config, bins).unwrap())
    }

    /// Registers the three tables' handles on `store`.
    pub fn handles(mut store: StateStore) -> Self {
        let sums = ValueState::register(&mut store, "sums").unwrap();
        let blobs = ValueState::register(&mut store, "blobs").unwrap();
        let lists = ListState::register(&mut store, "lists").unwrap();
        Self { store, sums, blobs, lists }
    }

    pub fn tables(&self) -> Vec<TableId> {
        vec![self.sums.table(), self.blobs.table(), self.lists.table()]
    }

    pub fn dump(&self) -> Dump {
        dump(&self.store, &self.tables())
    }
}
