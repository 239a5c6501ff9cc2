//! A `BuildHasher` built on [`spate_state::hash_u64`], so that peer systems' keyed state
//! uses the same hash function class Spate uses to route and store keys.

use std::hash::{BuildHasher, Hasher};

use spate_state::{hash_bytes, hash_u64};

/// Builds [`HashU64Hasher`]s; use as `HashMap<u64, V, BuildHashU64>`.
#[derive(Clone, Copy, Debug, Default)]
pub struct BuildHashU64;

impl BuildHasher for BuildHashU64 {
    type Hasher = HashU64Hasher;

    #[inline]
    fn build_hasher(&self) -> HashU64Hasher {
        HashU64Hasher { state: 0 }
    }
}

/// A hasher that applies [`hash_u64`] to each `u64` written (folding it into the running
/// state); byte strings go through [`hash_bytes`]. For a single `u64` key the result is
/// exactly `hash_u64(key)`.
#[derive(Clone, Copy, Debug, Default)]
pub struct HashU64Hasher {
    state: u64,
}

impl Hasher for HashU64Hasher {
    #[inline]
    fn finish(&self) -> u64 {
        self.state
    }

    #[inline]
    fn write_u64(&mut self, i: u64) {
        self.state = hash_u64(self.state.rotate_left(5) ^ i);
    }

    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        self.write_u64(hash_bytes(bytes));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn single_u64_key_hashes_to_hash_u64() {
        for k in [0u64, 1, 42, u64::MAX, 1 << 40] {
            assert_eq!(BuildHashU64.hash_one(k), hash_u64(k));
        }
    }

    #[test]
    fn works_as_map_hasher() {
        let mut m: HashMap<u64, u64, BuildHashU64> = HashMap::with_hasher(BuildHashU64);
        for i in 0..10_000u64 {
            *m.entry(i % 100).or_insert(0) += i;
        }
        assert_eq!(m.len(), 100);
        assert_eq!(m[&0], (0..10_000u64).step_by(100).sum::<u64>());
    }
}
