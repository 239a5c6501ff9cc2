//! Routing state: which instance of a keyed operator owns each bin.
//!
//! A key's `u64` hash picks its bin (the top `B` bits); the routing table maps
//! bins to instances. Instances own contiguous key ranges by default, so the
//! table is a few ranges; it is stored flat (one entry per bin) because a
//! lookup is on the per-record path and a flat array is one load.

use spate_state::keyspace::{bin_of, Bin, BinRange};

use crate::batch::Meta;

/// Index of an operator instance within its logical operator.
pub type InstanceId = u16;

/// A [`RoutingTable`], borrowed (see [`RoutingTable::view`]).
#[derive(Clone, Copy, Debug)]
pub struct RouteView<'a> {
    bins_log2: u8,
    route: &'a [InstanceId],
}

impl RouteView<'_> {
    /// The instance owning a key hash.
    #[inline(always)]
    pub fn route(self, hash: u64) -> InstanceId {
        // bin_of is < 2^bins_log2 == route.len() by construction.
        self.route[bin_of(hash, self.bins_log2) as usize]
    }
}

/// Bin → instance for one exchange edge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoutingTable {
    bins_log2: u8,
    route: Vec<InstanceId>,
}

impl RoutingTable {
    /// `instances` instances owning equal contiguous key ranges.
    pub fn uniform(bins_log2: u8, instances: usize) -> Self {
        assert!(instances > 0 && instances <= usize::from(InstanceId::MAX));
        let all = BinRange::all(bins_log2);
        let mut route = vec![0; all.len() as usize];
        for i in 0..instances {
            let part = all.part(i as u32, instances as u32);
            for b in part.start..part.end {
                route[b as usize] = i as InstanceId;
            }
        }
        Self { bins_log2, route }
    }

    /// `B`: the table has `2^B` bins.
    pub fn bins_log2(&self) -> u8 {
        self.bins_log2
    }

    /// The instance owning a key hash.
    #[inline(always)]
    pub fn route(&self, hash: u64) -> InstanceId {
        self.view().route(hash)
    }

    /// The table, borrowed: a loop that routes through a view holds its
    /// bins and its array in registers, where one through `&self` may
    /// load them again after each store it cannot prove apart.
    #[inline(always)]
    pub fn view(&self) -> RouteView<'_> {
        RouteView { bins_log2: self.bins_log2, route: &self.route }
    }

    /// The bins an instance owns, as contiguous ranges.
    pub fn ranges_of(&self, instance: InstanceId) -> Vec<BinRange> {
        let mut out = Vec::new();
        let mut start: Option<Bin> = None;
        for (b, &i) in self.route.iter().enumerate() {
            match (i == instance, start) {
                (true, None) => start = Some(b as Bin),
                (false, Some(s)) => {
                    out.push(BinRange::new(s, b as Bin));
                    start = None;
                }
                _ => {}
            }
        }
        if let Some(s) = start {
            out.push(BinRange::new(s, self.route.len() as Bin));
        }
        out
    }

    /// Moves `bins` to `instance` (a key-range handoff).
    pub fn assign(&mut self, bins: BinRange, instance: InstanceId) {
        for b in bins.start..bins.end {
            self.route[b as usize] = instance;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uniform_ranges_partition_the_space() {
        let t = RoutingTable::uniform(4, 3);
        let r: Vec<_> = (0..3).map(|i| t.ranges_of(i)).collect();
        assert_eq!(r[0], vec![BinRange::new(0, 5)]);
        assert_eq!(r[1], vec![BinRange::new(5, 10)]);
        assert_eq!(r[2], vec![BinRange::new(10, 16)]);
        assert_eq!(t.route(0), 0);
        assert_eq!(t.route(u64::MAX), 2);
    }

    #[test]
    fn assign_moves_a_range() {
        let mut t = RoutingTable::uniform(4, 2);
        t.assign(BinRange::new(6, 8), 1);
        assert_eq!(t.ranges_of(0), vec![BinRange::new(0, 6)]);
        assert_eq!(t.ranges_of(1), vec![BinRange::new(6, 16)]);
    }
}

/// The portable hash of a key: the hash of its archived (little-endian) bytes.
/// `u64` keys take a shortcut with the same result.
#[inline]
pub fn key_hash<K: spate_state::codec::Record>(key: &K, scratch: &mut Vec<u8>) -> u64 {
    use std::any::Any;
    if let Some(k) = (key as &dyn Any).downcast_ref::<u64>() {
        return spate_state::keyspace::hash_u64(*k);
    }
    scratch.clear();
    match spate_state::codec::encode(key, scratch) {
        Ok(_) => spate_state::keyspace::hash_bytes(scratch),
        // Encoding into a Vec only fails if rkyv's serializer does; keys
        // are plain data, so route such a key to bin 0 rather than panic.
        Err(_) => 0,
    }
}

/// Appends the key of each of `recs` to `keys`, then the hash of each key
/// appended to `hashes` (`scratch` as for [`key_hash`]): two passes of
/// `extend` over slices, with no capacity check per record, and the hashes
/// of `u64` keys in one loop compiled for the widest vectors the CPU has
/// ([`spate_state::keyspace::hash_u64s`]).
#[inline(always)]
pub fn keys_and_hashes<T, K: spate_state::codec::Record>(
    recs: &[(T, Meta)],
    key: &(impl Fn(&T) -> K + ?Sized),
    scratch: &mut Vec<u8>,
    keys: &mut Vec<K>,
    hashes: &mut Vec<u64>,
) {
    let start = keys.len();
    keys.extend(recs.iter().map(|(rec, _)| key(rec)));
    if let Some(k64) = (&*keys as &dyn std::any::Any).downcast_ref::<Vec<u64>>() {
        spate_state::keyspace::hash_u64s(&k64[start..], hashes);
        return;
    }
    hashes.extend(keys[start..].iter().map(|k| key_hash(k, scratch)));
}

#[cfg(test)]
mod key_tests {
    use super::*;

    #[test]
    fn u64_shortcut_matches_bytes() {
        let mut s = Vec::new();
        for k in [0u64, 1, 42, u64::MAX] {
            assert_eq!(key_hash(&k, &mut s), spate_state::keyspace::hash_bytes(&k.to_le_bytes()));
        }
        assert_eq!(key_hash(&"abc".to_string(), &mut s), key_hash(&"abc".to_string(), &mut Vec::new()));
        assert_ne!(key_hash(&"abc".to_string(), &mut s), key_hash(&"abd".to_string(), &mut s));
    }
}
