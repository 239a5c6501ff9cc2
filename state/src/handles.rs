//! Typed state handles: the only way operators reach keyed state.
//!
//! SEEP's premise is that the system, not the operator, owns processing
//! state, so that it can checkpoint it, back it up, restore it and split it
//! by key range without the operator's help. Operators therefore keep no keyed
//! state in their own fields: the runtime registers a handle per named state
//! and passes the [`StateStore`] into each call, and the operator reads and
//! writes through the handle:
//!
//! - [`ValueState<K, V>`]: one value per key (running sums, last-seen values).
//! - [`MapState<K, MK, V>`]: a map per key (per-key sub-entries, such as
//!   per-window aggregates keyed by window end).
//! - [`ListState<K, V>`]: an append-only list per key (window contents,
//!   join buffers), drained when it is complete.
//!
//! Keys and values are [`Record`]s. A handle encodes them with
//! [`codec::encode`] into scratch buffers it keeps, so a call allocates
//! nothing once the buffers are warm, and reads values in place from the
//! store's segments. Fixed-layout keys and values (integers, floats, pairs of
//! them, short byte arrays) skip rkyv: their archived form is their
//! little-endian bytes, so they are written and read directly (the same
//! bytes), keys from a stack buffer, and a fixed-size value is updated in
//! place by [`ValueState::update`] with no encode or decode call. The `hash`
//! passed with every key is the routing hash of
//! the record key (the one that picked this instance): it picks the bin, and
//! keys that share it coexist.
//!
//! A table registered by a handle is *typed*: only handles of the same type
//! can write it (the raw [`StateStore`] mutations refuse it), which is what
//! lets a handle read its values without validating them again.
//!
//! ```
//! use spate_state::{hash_u64, BinRange, StateStore, StoreConfig, ValueState};
//! # let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
//! let mut store = StateStore::create(StoreConfig::new(dir.path(), 4), BinRange::all(4))
//!     .map_err(|e| e.to_string())?;
//! let mut sums = ValueState::<u64, u64>::register(&mut store, "sums").map_err(|e| e.to_string())?;
//! for k in [7u64, 7, 9] {
//!     sums.update(&mut store, hash_u64(k), &k, |old| old.unwrap_or(0) + 10)
//!         .map_err(|e| e.to_string())?;
//! }
//! assert_eq!(sums.get(&store, hash_u64(7), &7), Some(20));
//! assert_eq!(sums.len(&store), 2);
//! # Ok::<(), String>(())
//! ```

use std::any::TypeId;
use std::marker::PhantomData;

use rkyv::Archived;

use crate::codec::{self, Record};
use crate::error::StateError;
use crate::fixed::{fixed_decode, fixed_encode, fixed_len, FixedBuf, FIXED_MAX};
use crate::store::dense::PREFETCH_AHEAD;
use crate::store::{FixedValue, StateStore, TableId, TypeSig};

/// Whether `bytes` are a valid encoding of a `T` (what [`codec::decode`]
/// may then read without validation).
fn valid<T: Record>(bytes: &[u8]) -> bool {
    if fixed_len::<T>().is_some() && fixed_decode::<T>(bytes).is_some() {
        return true;
    }
    codec::access_checked::<T>(bytes).is_ok()
}

fn sig<H: 'static>() -> TypeSig {
    TypeSig { id: TypeId::of::<H>(), name: std::any::type_name::<H>() }
}

/// Encodes `v` into the cleared `buf`.
#[inline(always)]
fn encode_into<T: Record>(v: &T, buf: &mut Vec<u8>) -> Result<(), StateError> {
    buf.clear();
    codec::encode(v, buf)?;
    Ok(())
}

/// The encoded bytes of `key`: written to the stack buffer `fixed` for a
/// fixed-layout type (no rkyv serializer, no heap), else to `buf`.
#[inline(always)]
fn key_bytes<'a, K: Record>(
    key: &K,
    fixed: &'a mut FixedBuf,
    buf: &'a mut Vec<u8>,
) -> Result<&'a [u8], StateError> {
    if let Some(n) = fixed_encode(key, fixed) {
        return Ok(&fixed[..n]);
    }
    encode_into(key, buf)?;
    Ok(buf)
}

/// Encodes a key for a call that cannot return an error: a key that cannot be
/// encoded is a programmer error (a broken `Serialize`).
#[inline(always)]
fn encode_key<T: Record>(v: &T, buf: &mut Vec<u8>) -> bool {
    match encode_into(v, buf) {
        Ok(()) => true,
        Err(e) => {
            debug_assert!(false, "cannot encode a key: {e}");
            false
        }
    }
}

/// One value per key.
pub struct ValueState<K, V> {
    table: TableId,
    key_buf: Vec<u8>,
    val_buf: Vec<u8>,
    _types: PhantomData<fn() -> (K, V)>,
}

impl<K: Record, V: Record> ValueState<K, V> {
    /// Registers (or finds) the table `name` in `store` for this handle type.
    pub fn register(store: &mut StateStore, name: &str) -> Result<Self, StateError> {
        // Fixed-layout keys and values go in a dense table (see the store).
        let dense = fixed_len::<K>().zip(fixed_len::<V>());
        let table = store.typed_table(name, sig::<Self>(), dense)?;
        store.verify_restored(table, |k, v, _| valid::<K>(k) && v.is_none_or(valid::<V>))?;
        Ok(Self { table, key_buf: Vec::new(), val_buf: Vec::new(), _types: PhantomData })
    }

    /// The handle's table.
    pub fn table(&self) -> TableId {
        self.table
    }

    /// Makes room for about `keys` keys over the whole key space (this
    /// store's share of them, by its bins), as a hash map's capacity does:
    /// a hint, so that a table whose size is known up front does not grow
    /// into it one rebuild after another. Only a dense table (fixed-layout
    /// keys and values) takes it; bins that hold state already are left as
    /// they are.
    pub fn reserve(&self, store: &mut StateStore, keys: u64) -> Result<(), StateError> {
        store.dense_reserve(self.table.index(), keys)
    }

    /// Calls `f` with the archived value of `key`, read in place.
    pub fn with<R>(
        &mut self,
        store: &StateStore,
        hash: u64,
        key: &K,
        f: impl FnOnce(&Archived<V>) -> R,
    ) -> Option<R> {
        store.check_sig(self.table, &sig::<Self>()).ok()?;
        if !encode_key(key, &mut self.key_buf) {
            return None;
        }
        let (loc, len) = store.find_value(self.table, hash, &self.key_buf).ok()??;
        // SAFETY: the table is typed for this handle type (checked above), so
        // only handles of this type wrote it, and each value is exactly the
        // bytes of one `codec::encode::<V>`.
        let archived = unsafe { codec::access::<V>(store.value_at(loc, len)) };
        Some(f(archived))
    }

    /// Hints the CPU to fetch what an access to `hash` will touch: call it a
    /// few records ahead (see [`StateStore::prefetch`]).
    #[inline(always)]
    pub fn prefetch(&self, store: &StateStore, hash: u64) {
        store.prefetch(self.table, hash);
    }

    /// First stage of a two-stage prefetch: hints the CPU to fetch the index
    /// slot of `hash` only; call it a few records before
    /// [`ValueState::prefetch`] of the same hash (see
    /// [`StateStore::prefetch_index`]).
    #[inline(always)]
    pub fn prefetch_index(&self, store: &StateStore, hash: u64) {
        store.prefetch_index(self.table, hash);
    }

    /// The value of `key`.
    pub fn get(&mut self, store: &StateStore, hash: u64, key: &K) -> Option<V> {
        self.with(store, hash, key, codec::to_owned::<V>)
    }

    /// Sets the value of `key`.
    pub fn put(&mut self, store: &mut StateStore, hash: u64, key: &K, value: &V) -> Result<(), StateError> {
        store.check_sig(self.table, &sig::<Self>())?;
        encode_into(key, &mut self.key_buf)?;
        encode_into(value, &mut self.val_buf)?;
        store.put_impl(self.table, hash, &self.key_buf, &self.val_buf)
    }

    /// Replaces the value of `key` by `f(old value)` and returns the new
    /// value. A new value of the same encoded length (any fixed-size type)
    /// is written in place.
    #[inline(always)]
    pub fn update(
        &mut self,
        store: &mut StateStore,
        hash: u64,
        key: &K,
        f: impl FnOnce(Option<V>) -> V,
    ) -> Result<V, StateError> {
        store.check_sig(self.table, &sig::<Self>())?;
        if let Some(vlen) = fixed_len::<V>() {
            // Fixed-layout value: read, update and write it in place, with
            // the key on the stack when it is fixed-layout too.
            let mut kb = [0u8; FIXED_MAX];
            let key_bytes = key_bytes(key, &mut kb, &mut self.key_buf)?;
            let found = match store.fixed_value_mut(self.table, hash, key_bytes, vlen)? {
                FixedValue::Found(b) => {
                    if let Some(old) = fixed_decode::<V>(b) {
                        let new = f(Some(old));
                        let mut vb = [0u8; FIXED_MAX];
                        let n = fixed_encode(&new, &mut vb);
                        debug_assert_eq!(n, Some(vlen));
                        b.copy_from_slice(&vb[..vlen]);
                        return Ok(new);
                    }
                    // Unreachable: `b` has the length of a `V`.
                    store.find_value(self.table, hash, key_bytes)?
                }
                FixedValue::Other(found) => found,
            };
            return self.update_slow(store, hash, key, found, f);
        }
        encode_into(key, &mut self.key_buf)?;
        let found = store.find_value(self.table, hash, &self.key_buf)?;
        self.update_slow(store, hash, key, found, f)
    }

    /// Updates a burst of keys in order: the value of `keys[i]` (of hash
    /// `hashes[i]`) becomes `f(i, old value)`, then `done(i, new value)` is
    /// called, for `i` from 0 on, with the same effects as one
    /// [`ValueState::update`] after the other. For fixed-layout keys and
    /// values (a dense table) the state of later keys is fetched while
    /// earlier ones are updated, and the table is looked up once per burst.
    #[inline(always)]
    pub fn update_burst(
        &mut self,
        store: &mut StateStore,
        hashes: &[u64],
        keys: &[K],
        mut f: impl FnMut(usize, Option<V>) -> V,
        mut done: impl FnMut(usize, V),
    ) -> Result<(), StateError> {
        debug_assert_eq!(hashes.len(), keys.len());
        // One length for both: the loops index by `hashes`' positions, and
        // so need no bounds check on `keys`.
        let keys = &keys[..hashes.len()];
        store.check_sig(self.table, &sig::<Self>())?;
        if let (Some(kl), Some(vl)) = (fixed_len::<K>(), fixed_len::<V>()) {
            let dense = store.dense_update_burst(
                self.table.index(),
                hashes,
                kl,
                vl,
                |i, kb| {
                    let n = fixed_encode(&keys[i], kb);
                    debug_assert_eq!(n, Some(kl));
                },
                |i, old, nb| {
                    let v = f(i, old.and_then(fixed_decode::<V>));
                    let n = fixed_encode(&v, nb);
                    debug_assert_eq!(n, Some(vl));
                    // The store writes `nb` as the key's value next (a
                    // failed insert fails the whole call).
                    done(i, v);
                },
            );
            if dense? {
                return Ok(());
            }
        }
        for (i, (&hash, key)) in hashes.iter().zip(keys).enumerate() {
            if let Some(&h) = hashes.get(i + PREFETCH_AHEAD) {
                self.prefetch_index(store, h);
            }
            let v = self.update(store, hash, key, |old| f(i, old))?;
            done(i, v);
        }
        Ok(())
    }

    /// The general `update`: decode, call `f`, encode, write in place if the
    /// length is unchanged, else append. `found` is the value's location.
    #[inline]
    fn update_slow(
        &mut self,
        store: &mut StateStore,
        hash: u64,
        key: &K,
        found: Option<(u64, usize)>,
        f: impl FnOnce(Option<V>) -> V,
    ) -> Result<V, StateError> {
        encode_into(key, &mut self.key_buf)?;
        // SAFETY: as in `with`: the typed table holds only encoded `V`s.
        let old = found.map(|(loc, len)| unsafe { codec::decode::<V>(store.value_at(loc, len)) });
        let new = f(old);
        encode_into(&new, &mut self.val_buf)?;
        match found {
            Some((loc, len)) if len == self.val_buf.len() => store.overwrite_value(loc, &self.val_buf),
            _ => store.put_impl(self.table, hash, &self.key_buf, &self.val_buf)?,
        }
        Ok(new)
    }

    /// Removes `key`; returns whether it was present.
    pub fn remove(&mut self, store: &mut StateStore, hash: u64, key: &K) -> bool {
        store.check_sig(self.table, &sig::<Self>()).is_ok()
            && encode_key(key, &mut self.key_buf)
            && store.remove(self.table, hash, &self.key_buf)
    }

    /// Removes every entry for which `pred(key, value)` is true and passes it
    /// to `out(hash, key, value)`; returns how many were removed.
    pub fn drain_filter(
        &mut self,
        store: &mut StateStore,
        mut pred: impl FnMut(&K, &V) -> bool,
        mut out: impl FnMut(u64, K, V),
    ) -> Result<usize, StateError> {
        store.check_sig(self.table, &sig::<Self>())?;
        Ok(store.retain(self.table, |hash, k, v| {
            // SAFETY: the typed table holds only encoded `K`s and `V`s.
            let (key, value) = unsafe { (codec::decode::<K>(k), codec::decode::<V>(v)) };
            if pred(&key, &value) {
                out(hash, key, value);
                false
            } else {
                true
            }
        }))
    }

    /// Calls `f(hash, key, value)` for every entry.
    pub fn for_each(&self, store: &StateStore, mut f: impl FnMut(u64, K, V)) {
        if store.check_sig(self.table, &sig::<Self>()).is_err() {
            return;
        }
        store.for_each(self.table, |hash, k, v| {
            // SAFETY: the typed table holds only encoded `K`s and `V`s.
            let (key, value) = unsafe { (codec::decode::<K>(k), codec::decode::<V>(v)) };
            f(hash, key, value)
        });
    }

    /// Number of keys.
    pub fn len(&self, store: &StateStore) -> usize {
        store.len(self.table)
    }

    /// Whether no key holds a value.
    pub fn is_empty(&self, store: &StateStore) -> bool {
        self.len(store) == 0
    }
}

/// The types a map handle stands for (a `fn` type: no ownership, `Send`).
type MapTypes<K, MK, V> = fn() -> (K, MK, V);

/// A map per key: entries `(key, map key) -> value`, all stored under the
/// key's hash, so one key's entries are found together.
pub struct MapState<K, MK, V> {
    table: TableId,
    key_buf: Vec<u8>,
    val_buf: Vec<u8>,
    _types: PhantomData<MapTypes<K, MK, V>>,
}

/// Bytes of the key-length suffix of a map entry's composite key.
const KEY_LEN_SUFFIX: usize = 4;

/// Splits a composite key `enc(K) enc(MK) len(enc(K)) u32` into its parts.
fn split_composite(ck: &[u8]) -> Option<(&[u8], &[u8])> {
    let n = ck.len().checked_sub(KEY_LEN_SUFFIX)?;
    let mut w = [0u8; 4];
    w.copy_from_slice(&ck[n..]);
    let klen = u32::from_le_bytes(w) as usize;
    (klen <= n).then(|| (&ck[..klen], &ck[klen..n]))
}

impl<K: Record, MK: Record, V: Record> MapState<K, MK, V> {
    /// Registers (or finds) the table `name` in `store` for this handle type.
    pub fn register(store: &mut StateStore, name: &str) -> Result<Self, StateError> {
        let table = store.typed_table(name, sig::<Self>(), None)?;
        store.verify_restored(table, |ck, v, _| {
            split_composite(ck).is_some_and(|(k, mk)| valid::<K>(k) && valid::<MK>(mk))
                && v.is_none_or(valid::<V>)
        })?;
        Ok(Self { table, key_buf: Vec::new(), val_buf: Vec::new(), _types: PhantomData })
    }

    /// The handle's table.
    pub fn table(&self) -> TableId {
        self.table
    }

    /// Encodes the composite key of `(key, mkey)` into `key_buf`.
    fn composite(&mut self, key: &K, mkey: &MK) -> Result<(), StateError> {
        encode_into(key, &mut self.key_buf)?;
        let klen = self.key_buf.len() as u32;
        codec::encode(mkey, &mut self.key_buf)?;
        self.key_buf.extend_from_slice(&klen.to_le_bytes());
        Ok(())
    }

    /// The value of entry `mkey` of `key`'s map.
    pub fn get(&mut self, store: &StateStore, hash: u64, key: &K, mkey: &MK) -> Option<V> {
        store.check_sig(self.table, &sig::<Self>()).ok()?;
        if let Err(e) = self.composite(key, mkey) {
            debug_assert!(false, "cannot encode a key: {e}");
            return None;
        }
        let (loc, len) = store.find_value(self.table, hash, &self.key_buf).ok()??;
        // SAFETY: the table is typed for this handle type (checked above): its
        // values are exactly the bytes of one `codec::encode::<V>` each.
        Some(unsafe { codec::decode::<V>(store.value_at(loc, len)) })
    }

    /// Sets entry `mkey` of `key`'s map.
    pub fn put(
        &mut self,
        store: &mut StateStore,
        hash: u64,
        key: &K,
        mkey: &MK,
        value: &V,
    ) -> Result<(), StateError> {
        store.check_sig(self.table, &sig::<Self>())?;
        self.composite(key, mkey)?;
        encode_into(value, &mut self.val_buf)?;
        store.put_impl(self.table, hash, &self.key_buf, &self.val_buf)
    }

    /// Removes entry `mkey` of `key`'s map; returns whether it was present.
    pub fn remove(&mut self, store: &mut StateStore, hash: u64, key: &K, mkey: &MK) -> bool {
        store.check_sig(self.table, &sig::<Self>()).is_ok()
            && self.composite(key, mkey).is_ok()
            && store.remove(self.table, hash, &self.key_buf)
    }

    /// Calls `f(map key, value)` for every entry of `key`'s map.
    pub fn for_each(&mut self, store: &StateStore, hash: u64, key: &K, mut f: impl FnMut(MK, V)) {
        if store.check_sig(self.table, &sig::<Self>()).is_err() || !encode_key(key, &mut self.key_buf) {
            return;
        }
        let kb = &self.key_buf;
        store.for_each_with_hash(self.table, hash, |ck, v| {
            if let Some((k, mk)) = split_composite(ck) {
                if k == kb.as_slice() {
                    // SAFETY: the typed table's keys are composites of one
                    // encoded `K` and one encoded `MK`, its values encoded `V`s.
                    let (mk, v) = unsafe { (codec::decode::<MK>(mk), codec::decode::<V>(v)) };
                    f(mk, v);
                }
            }
        });
    }

    /// Removes every entry of `key`'s map; returns how many there were.
    pub fn clear(&mut self, store: &mut StateStore, hash: u64, key: &K) -> usize {
        if store.check_sig(self.table, &sig::<Self>()).is_err() || !encode_key(key, &mut self.key_buf) {
            return 0;
        }
        let kb = &self.key_buf;
        store.retain_with_hash(self.table, hash, |ck, _| {
            split_composite(ck).is_none_or(|(k, _)| k != kb.as_slice())
        })
    }

    /// Number of entries in all maps.
    pub fn len(&self, store: &StateStore) -> usize {
        store.len(self.table)
    }

    /// Whether every map is empty.
    pub fn is_empty(&self, store: &StateStore) -> bool {
        self.len(store) == 0
    }
}

/// An append-only list per key.
pub struct ListState<K, V> {
    table: TableId,
    key_buf: Vec<u8>,
    val_buf: Vec<u8>,
    _types: PhantomData<fn() -> (K, V)>,
}

impl<K: Record, V: Record> ListState<K, V> {
    /// Registers (or finds) the table `name` in `store` for this handle type.
    pub fn register(store: &mut StateStore, name: &str) -> Result<Self, StateError> {
        let table = store.typed_table(name, sig::<Self>(), None)?;
        store.verify_restored(table, |k, _, mut items| valid::<K>(k) && items.all(valid::<V>))?;
        Ok(Self { table, key_buf: Vec::new(), val_buf: Vec::new(), _types: PhantomData })
    }

    /// The handle's table.
    pub fn table(&self) -> TableId {
        self.table
    }

    /// Appends `item` to `key`'s list.
    pub fn append(&mut self, store: &mut StateStore, hash: u64, key: &K, item: &V) -> Result<(), StateError> {
        store.check_sig(self.table, &sig::<Self>())?;
        encode_into(key, &mut self.key_buf)?;
        encode_into(item, &mut self.val_buf)?;
        store.append_impl(self.table, hash, &self.key_buf, &self.val_buf)
    }

    /// Calls `f` with every item of `key`'s list, oldest first.
    pub fn for_each(&mut self, store: &StateStore, hash: u64, key: &K, mut f: impl FnMut(V)) {
        if store.check_sig(self.table, &sig::<Self>()).is_err() || !encode_key(key, &mut self.key_buf) {
            return;
        }
        for item in store.list_items(self.table, hash, &self.key_buf) {
            // SAFETY: the typed table's list items are encoded `V`s.
            f(unsafe { codec::decode::<V>(item) });
        }
    }

    /// Number of items in `key`'s list.
    pub fn len_of(&mut self, store: &StateStore, hash: u64, key: &K) -> u64 {
        if store.check_sig(self.table, &sig::<Self>()).is_err() || !encode_key(key, &mut self.key_buf) {
            return 0;
        }
        store.list_len(self.table, hash, &self.key_buf)
    }

    /// Removes `key`'s list; returns whether it existed.
    pub fn remove(&mut self, store: &mut StateStore, hash: u64, key: &K) -> bool {
        store.check_sig(self.table, &sig::<Self>()).is_ok()
            && encode_key(key, &mut self.key_buf)
            && store.remove(self.table, hash, &self.key_buf)
    }

    /// Removes every list whose key satisfies `pred` and passes it to
    /// `out(hash, key, items)`; returns how many lists were removed.
    pub fn drain_filter(
        &mut self,
        store: &mut StateStore,
        mut pred: impl FnMut(&K) -> bool,
        mut out: impl FnMut(u64, K, Vec<V>),
    ) -> Result<usize, StateError> {
        store.check_sig(self.table, &sig::<Self>())?;
        Ok(store.retain_lists(self.table, |hash, k, items| {
            // SAFETY: the typed table's keys are encoded `K`s and its list
            // items encoded `V`s.
            let key = unsafe { codec::decode::<K>(k) };
            if !pred(&key) {
                return true;
            }
            // SAFETY: as above.
            let items = items.map(|item| unsafe { codec::decode::<V>(item) }).collect();
            out(hash, key, items);
            false
        }))
    }

    /// Number of keys holding a list.
    pub fn len(&self, store: &StateStore) -> usize {
        store.len(self.table)
    }

    /// Whether no key holds a list.
    pub fn is_empty(&self, store: &StateStore) -> bool {
        self.len(store) == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keyspace::{hash_bytes, hash_u64, BinRange};
    use crate::store::{Backing, StoreConfig};

    fn ok<T>(r: Result<T, StateError>) -> T {
        match r {
            Ok(v) => v,
            Err(e) => panic!("unexpected error: {e}"),
        }
    }

    fn store(dir: &tempfile::TempDir) -> StateStore {
        // File-backed: a test compares the segment files' bytes.
        let config = StoreConfig::new(dir.path(), 6).with_segment_bytes(4096).with_backing(Backing::File);
        ok(StateStore::create(config, BinRange::all(6)))
    }

    fn tmp() -> tempfile::TempDir {
        match tempfile::tempdir() {
            Ok(d) => d,
            Err(e) => panic!("tempdir: {e}"),
        }
    }

    #[test]
    fn value_state_update_get_remove_drain() {
        let dir = tmp();
        let mut s = store(&dir);
        let mut sums = ok(ValueState::<u64, u64>::register(&mut s, "sums"));
        for i in 0..10_000u64 {
            let k = i % 500;
            ok(sums.update(&mut s, hash_u64(k), &k, |old| old.unwrap_or(0) + i));
        }
        assert_eq!(sums.len(&s), 500);
        for k in 0..500u64 {
            let expected: u64 = (0..20).map(|j| k + 500 * j).sum();
            assert_eq!(sums.get(&s, hash_u64(k), &k), Some(expected));
            assert_eq!(sums.with(&s, hash_u64(k), &k, |a| a.to_native()), Some(expected));
        }
        assert!(sums.remove(&mut s, hash_u64(3), &3));
        assert!(!sums.remove(&mut s, hash_u64(3), &3));
        assert_eq!(sums.get(&s, hash_u64(3), &3), None);
        let mut drained = Vec::new();
        let n = ok(sums.drain_filter(&mut s, |k, _| k % 2 == 0, |h, k, v| drained.push((h, k, v))));
        assert_eq!(n, 250);
        assert_eq!(drained.len(), 250);
        assert!(drained.iter().all(|&(h, k, _)| k % 2 == 0 && h == hash_u64(k)));
        assert_eq!(sums.len(&s), 249);
        let mut seen = 0;
        sums.for_each(&s, |_, k, _| {
            assert!(k % 2 == 1);
            seen += 1;
        });
        assert_eq!(seen, 249);
    }

    /// Runs `ops` (key, addend) through `ValueState<K, V>::update` (the
    /// fixed-layout fast path, into a dense table) in one store and through
    /// rkyv-encoded raw puts in another: every key's stored value must be
    /// byte for byte the same.
    fn fast_path_matches_rkyv<K, V>(key: impl Fn(u64) -> K, add: impl Fn(Option<V>, u64) -> V)
    where
        K: Record + Clone,
        V: Record + Clone,
    {
        let (da, db) = (tmp(), tmp());
        let (mut a, mut b) = (store(&da), store(&db));
        let mut typed = ok(ValueState::<K, V>::register(&mut a, "t"));
        let raw = ok(b.table("t"));
        let (mut kb, mut vb) = (Vec::new(), Vec::new());
        for i in 0..3000u64 {
            let k = key(i % 257);
            kb.clear();
            assert!(codec::encode_rkyv(&k, &mut kb).is_ok());
            let h = hash_bytes(&kb);
            let new = ok(typed.update(&mut a, h, &k, |old| add(old, i)));
            // SAFETY: the raw table holds only rkyv-encoded `V`s.
            let old = b.get(raw, h, &kb).map(|v| unsafe { codec::decode::<V>(v) });
            let expected = add(old, i);
            vb.clear();
            assert!(codec::encode_rkyv(&expected, &mut vb).is_ok());
            ok(b.put(raw, h, &kb, &vb));
            let mut nb = Vec::new();
            assert!(codec::encode_rkyv(&new, &mut nb).is_ok());
            assert_eq!(nb, vb);
        }
        let fixed = fixed_len::<K>().is_some() && fixed_len::<V>().is_some();
        assert_eq!(
            a.tables[typed.table().index()].dense.is_some(),
            fixed,
            "fixed-layout types make a dense table"
        );
        assert_eq!(a.len(typed.table()), b.len(raw));
        for i in 0..257u64 {
            kb.clear();
            assert!(codec::encode_rkyv(&key(i), &mut kb).is_ok());
            let h = hash_bytes(&kb);
            assert_eq!(a.get(typed.table(), h, &kb), b.get(raw, h, &kb), "stored bytes of key {i}");
        }
    }

    #[test]
    fn fixed_fast_path_writes_the_same_bytes_as_rkyv() {
        fast_path_matches_rkyv::<u64, u64>(|k| k, |o, i| o.unwrap_or(0).wrapping_add(i));
        fast_path_matches_rkyv::<i32, f64>(|k| -(k as i32), |o, i| o.unwrap_or(0.5) * 1.5 - i as f64);
        fast_path_matches_rkyv::<(u64, u64), (u32, u64)>(
            |k| (k, !k),
            |o, i| o.map_or((1, 2), |(a, b)| (a.wrapping_mul(3), b ^ i)),
        );
        fast_path_matches_rkyv::<[u8; 16], i128>(|k| [k as u8; 16], |o, i| o.unwrap_or(-7) - i128::from(i));
        // Not fixed-layout: the general path, for comparison.
        fast_path_matches_rkyv::<String, u64>(|k| format!("k{k}"), |o, i| o.unwrap_or(0) + i);
    }

    /// `update_burst` has the effects of one `update` after the other, in
    /// a dense table growing while the burst runs (inserts move parts
    /// under the prefetched probes) and in a record table.
    fn burst_matches_single_updates<K: Record + Clone + PartialEq + std::fmt::Debug>(key: impl Fn(u64) -> K) {
        let (da, db) = (tmp(), tmp());
        let (mut a, mut b) = (store(&da), store(&db));
        let mut burst = ok(ValueState::<K, u64>::register(&mut a, "s"));
        let mut single = ok(ValueState::<K, u64>::register(&mut b, "s"));
        let mut seed = 7u64;
        for round in 0..40u64 {
            let n = (round * 37 % 300) as usize;
            let mut keys = Vec::with_capacity(n);
            let mut hashes = Vec::with_capacity(n);
            for _ in 0..n {
                seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                // A key space that keeps growing, with repeats within a burst.
                let k = key((seed >> 33) % (50 + round * 40));
                let mut kb = Vec::new();
                assert!(codec::encode_rkyv(&k, &mut kb).is_ok());
                hashes.push(hash_bytes(&kb));
                keys.push(k);
            }
            let mut got = Vec::new();
            ok(burst.update_burst(
                &mut a,
                &hashes,
                &keys,
                |i, old| old.unwrap_or(1) * 3 + i as u64,
                |i, v| got.push((i, v)),
            ));
            let want: Vec<(usize, u64)> = (0..n)
                .map(|i| {
                    (i, ok(single.update(&mut b, hashes[i], &keys[i], |old| old.unwrap_or(1) * 3 + i as u64)))
                })
                .collect();
            assert_eq!(got, want, "round {round}");
        }
        let dump = |s: &StateStore, h: &ValueState<K, u64>| {
            let mut v = Vec::new();
            h.for_each(s, |hash, _, val| v.push((hash, val)));
            v.sort_unstable();
            v
        };
        assert_eq!(dump(&a, &burst), dump(&b, &single));
        assert_eq!(burst.len(&a), single.len(&b), "entries counted");
    }

    #[test]
    fn update_burst_is_one_update_after_the_other() {
        burst_matches_single_updates::<u64>(|k| k);
        burst_matches_single_updates::<String>(|k| format!("k{k}"));
    }

    /// A burst that reaches a key of a bin the store does not own fails
    /// there, whether the updates before it found their keys or inserted
    /// them: they take effect, it and the rest do not (debug builds assert,
    /// as for a single update).
    #[test]
    fn a_burst_fails_at_a_key_of_a_bin_not_owned() {
        let dir = tmp();
        // Two bins; this store owns bin 0 (hashes below 2^63).
        let config = StoreConfig::new(dir.path(), 1);
        let mut s = ok(StateStore::create(config, BinRange::new(0, 1)));
        let mut sums = ok(ValueState::<u64, u64>::register(&mut s, "sums"));
        let owned = |k: u64| k << 8; // bin 0
        let keys: Vec<u64> = (1..=20).collect();
        let hashes: Vec<u64> = keys.iter().map(|&k| owned(k)).collect();
        ok(sums.update_burst(&mut s, &hashes, &keys, |_, old| old.unwrap_or(0) + 1, |_, _| {}));
        // Found (keys 1..=5), then a foreign hash, then more found keys; a
        // new key (99) first, then the foreign one; and three new keys
        // (the last two inserted by the inserting run after the first),
        // then the foreign one.
        for (prefix, name) in [
            (vec![1u64, 2, 3, 4, 5], "after found keys"),
            (vec![99], "after an insert"),
            (vec![96, 97, 98], "after keys inserted by an inserting run"),
        ] {
            let mut keys = prefix.clone();
            keys.extend([7u64, 6, 8]);
            let mut hashes: Vec<u64> = keys.iter().map(|&k| owned(k)).collect();
            hashes[prefix.len()] = u64::MAX; // bin 1
            let mut done = Vec::new();
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                sums.update_burst(
                    &mut s,
                    &hashes,
                    &keys,
                    |_, old| old.unwrap_or(0) + 10,
                    |i, v| done.push((i, v)),
                )
            }));
            if cfg!(debug_assertions) {
                assert!(r.is_err(), "{name}: debug builds assert");
            } else {
                assert!(matches!(r, Ok(Err(StateError::BinNotOwned { bin: 1, .. }))), "{name}");
            }
            let want: Vec<(usize, u64)> =
                prefix.iter().enumerate().map(|(i, &k)| (i, if k > 20 { 10 } else { 11 })).collect();
            assert_eq!(done, want, "{name}: the updates before the foreign key, and only they");
            for k in [6u64, 8] {
                assert_eq!(sums.get(&s, owned(k), &k), Some(1), "{name}: key {k} after the foreign one");
            }
        }
    }

    #[test]
    fn value_state_variable_size_values() {
        let dir = tmp();
        let mut s = store(&dir);
        let mut names = ok(ValueState::<String, String>::register(&mut s, "names"));
        for round in 0..20usize {
            for k in 0..200u32 {
                let key = format!("key-{k}");
                let h = hash_bytes(key.as_bytes());
                let value = "x".repeat((k as usize * 7 + round * 13) % 300);
                ok(names.put(&mut s, h, &key, &value));
            }
        }
        for k in 0..200u32 {
            let key = format!("key-{k}");
            let h = hash_bytes(key.as_bytes());
            assert_eq!(names.get(&s, h, &key), Some("x".repeat((k as usize * 7 + 19 * 13) % 300)));
        }
        let grown = ok(names
            .update(&mut s, hash_bytes(b"key-1"), &"key-1".to_string(), |v| v.unwrap_or_default() + "tail"));
        assert!(grown.ends_with("tail"));
        assert_eq!(names.get(&s, hash_bytes(b"key-1"), &"key-1".to_string()), Some(grown));
    }

    #[test]
    fn tables_are_typed() {
        let dir = tmp();
        let mut s = store(&dir);
        let mut a = ok(ValueState::<u64, u64>::register(&mut s, "a"));
        assert!(matches!(
            ValueState::<u64, String>::register(&mut s, "a"),
            Err(StateError::TableTypeMismatch { .. })
        ));
        assert!(ListState::<u64, u64>::register(&mut s, "a").is_err());
        assert!(matches!(s.table("a"), Err(StateError::TableTypeMismatch { .. })));
        let again = ok(ValueState::<u64, u64>::register(&mut s, "a"));
        assert_eq!(again.table(), a.table());
        ok(a.put(&mut s, hash_u64(1), &1, &2));
        // The raw mutations refuse a typed table.
        let t = a.table();
        assert!(matches!(s.put(t, hash_u64(1), b"k", b"v"), Err(StateError::TableTypeMismatch { .. })));
        assert!(s.append(t, hash_u64(1), b"k", b"v").is_err());
        assert!(s.get_or_insert_fixed(t, hash_u64(1), b"k", 1, |_| {}).is_err());
        assert_eq!(a.get(&s, hash_u64(1), &1), Some(2));
    }

    #[test]
    fn map_state_per_key_maps() {
        let dir = tmp();
        let mut s = store(&dir);
        let mut m = ok(MapState::<u64, u64, String>::register(&mut s, "per_window"));
        // Two keys with the same hash (a collision) must stay apart.
        let h = hash_u64(77);
        for w in 0..50u64 {
            ok(m.put(&mut s, h, &77, &w, &format!("a{w}")));
            ok(m.put(&mut s, h, &78, &w, &format!("b{w}")));
        }
        assert_eq!(m.len(&s), 100);
        assert_eq!(m.get(&s, h, &77, &5), Some("a5".to_string()));
        assert_eq!(m.get(&s, h, &78, &5), Some("b5".to_string()));
        let mut got = Vec::new();
        m.for_each(&s, h, &77, |w, v| got.push((w, v)));
        got.sort();
        assert_eq!(got, (0..50).map(|w| (w, format!("a{w}"))).collect::<Vec<_>>());
        assert!(m.remove(&mut s, h, &77, &5));
        assert_eq!(m.get(&s, h, &77, &5), None);
        assert_eq!(m.clear(&mut s, h, &77), 49);
        assert_eq!(m.len(&s), 50);
        let mut n = 0;
        m.for_each(&s, h, &78, |_, _| n += 1);
        assert_eq!(n, 50);
    }

    #[test]
    fn list_state_append_and_drain() {
        let dir = tmp();
        let mut s = store(&dir);
        let mut windows = ok(ListState::<(u64, u64), String>::register(&mut s, "windows"));
        for i in 0..3000u64 {
            let key = (i % 10, i % 3 * 100); // (record key, window end)
            ok(windows.append(&mut s, hash_u64(key.0), &key, &format!("item-{i}")));
        }
        assert_eq!(windows.len(&s), 30);
        assert_eq!(windows.len_of(&s, hash_u64(4), &(4, 100)), 100);
        let mut items = Vec::new();
        windows.for_each(&s, hash_u64(4), &(4, 100), |v| items.push(v));
        let expected: Vec<String> =
            (0..3000u64).filter(|i| i % 10 == 4 && i % 3 == 1).map(|i| format!("item-{i}")).collect();
        assert_eq!(items, expected);
        // Fire the windows ending at 100.
        let mut fired = Vec::new();
        let n = ok(windows.drain_filter(&mut s, |k| k.1 == 100, |h, k, v| fired.push((h, k, v))));
        assert_eq!(n, 10);
        fired.sort();
        assert!(fired.iter().all(|(h, k, v)| *h == hash_u64(k.0) && v.len() == 100));
        assert_eq!(windows.len(&s), 20);
        assert_eq!(windows.len_of(&s, hash_u64(4), &(4, 100)), 0);
        assert!(windows.remove(&mut s, hash_u64(4), &(4, 0)));
        assert_eq!(windows.len(&s), 19);
    }
}
