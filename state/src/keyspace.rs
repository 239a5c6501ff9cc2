//! The key space: a fixed, portable hash from keys to `u64`, and the cut of the
//! hash space into `2^B` bins.
//!
//! The hash must give the same value in every process, on every machine and
//! across releases of Spate, because it decides which instance owns a key and
//! in which bin its state is stored: a checkpoint taken by one process is
//! restored by another. It is therefore written out here rather than taken from
//! `std` (whose `DefaultHasher` is explicitly not stable). It is not
//! DoS-resistant; keys are assumed not to be chosen by an adversary.
//!
//! The bin of a hash is its top `B` bits, so a contiguous run of bins (a
//! [`BinRange`]) is a contiguous range of the hash space.

/// Largest supported `B` (bins = `2^B`).
pub const BINS_LOG2_MAX: u8 = 16;
/// Default `B`: 4096 bins.
pub const BINS_LOG2_DEFAULT: u8 = 12;

const K0: u64 = 0x9E37_79B9_7F4A_7C15;
const K1: u64 = 0xBF58_476D_1CE4_E5B9;
const K2: u64 = 0x94D0_49BB_1331_11EB;

/// Final avalanche of SplitMix64: every input bit affects every output bit.
#[inline(always)]
fn fmix(mut h: u64) -> u64 {
    h = (h ^ (h >> 30)).wrapping_mul(K1);
    h = (h ^ (h >> 27)).wrapping_mul(K2);
    h ^ (h >> 31)
}

/// The portable hash of a `u64` key. Equal to `hash_bytes(&key.to_le_bytes())`.
#[inline(always)]
pub fn hash_u64(key: u64) -> u64 {
    fmix((K0 ^ 8).wrapping_mul(K1) ^ key)
}

/// Appends [`hash_u64`] of each of `keys` to `out`: what
/// `out.extend(keys.iter().map(|&k| hash_u64(k)))` does, compiled for the
/// widest vectors this process may use ([`crate::cpu::vectors`]). The
/// hash's two 64-bit multiplies are one instruction each with AVX-512
/// (`vpmullq`, 8 keys at once) and three with shifts and adds in AVX2 or
/// SSE2, the baseline of x86-64: keyed-sum's
/// hashes took 14.5 instructions a record in SSE2; against SSE2, keyed-sum
/// ran ×1.092 with AVX2 and ×1.145–1.163 with AVX-512 (one worker), and
/// ×1.105 with AVX-512 and two workers (20 M records, 9 rounds each).
/// The hash is the same everywhere: a job's nodes need not share a CPU.
#[inline]
pub fn hash_u64s(keys: &[u64], out: &mut Vec<u64>) {
    #[cfg(target_arch = "x86_64")]
    match crate::cpu::vectors() {
        // SAFETY: this CPU has the features each is compiled for.
        crate::cpu::Vectors::Avx512 => return unsafe { hash_u64s_avx512(keys, out) },
        crate::cpu::Vectors::Avx2 => return unsafe { hash_u64s_avx2(keys, out) },
        crate::cpu::Vectors::Baseline => {}
    }
    hash_u64s_baseline(keys, out)
}

/// [`hash_u64s`] compiled for the target's baseline.
#[inline(always)]
fn hash_u64s_baseline(keys: &[u64], out: &mut Vec<u64>) {
    out.extend(keys.iter().map(|&k| hash_u64(k)));
}

/// [`hash_u64s`] compiled for AVX-512 (F, DQ: `vpmullq`; VL).
///
/// # Safety
///
/// The CPU must have those features.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512dq,avx512vl")]
unsafe fn hash_u64s_avx512(keys: &[u64], out: &mut Vec<u64>) {
    hash_u64s_baseline(keys, out)
}

/// [`hash_u64s`] compiled for AVX2.
///
/// # Safety
///
/// The CPU must have AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn hash_u64s_avx2(keys: &[u64], out: &mut Vec<u64>) {
    hash_u64s_baseline(keys, out)
}

/// The portable hash of a byte string (keys are hashed as their little-endian,
/// archived bytes, so this is defined for every key type).
#[inline]
pub fn hash_bytes(bytes: &[u8]) -> u64 {
    let mut h = (K0 ^ bytes.len() as u64).wrapping_mul(K1);
    let mut chunks = bytes.chunks_exact(8);
    let mut first = true;
    for c in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        let w = u64::from_le_bytes(w);
        if first {
            h ^= w;
            first = false;
        } else {
            h = fmix(h) ^ w;
        }
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        let mut w = [0u8; 8];
        w[..rest.len()].copy_from_slice(rest);
        let w = u64::from_le_bytes(w);
        h = if first { h ^ w } else { fmix(h) ^ w };
    }
    fmix(h)
}

/// A bin index, `0..2^B`.
pub type Bin = u32;

/// The bin of a key hash when the space has `2^bins_log2` bins: its top bits.
#[inline(always)]
pub fn bin_of(hash: u64, bins_log2: u8) -> Bin {
    bin_number(hash, bins_log2) as Bin
}

/// [`bin_of`] as a `u64`, for use as an index without a conversion.
#[inline(always)]
pub fn bin_number(hash: u64, bins_log2: u8) -> u64 {
    debug_assert!(bins_log2 <= BINS_LOG2_MAX);
    // Two shifts instead of a branch for `bins_log2 == 0` (a shift by 64
    // is not defined): on the per-record path of routing and state.
    (hash >> 1) >> (63 - u32::from(bins_log2))
}

/// A contiguous, half-open run of bins `start..end`: a key range.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BinRange {
    /// First bin in the range.
    pub start: Bin,
    /// One past the last bin in the range.
    pub end: Bin,
}

impl BinRange {
    /// The range `start..end`. Panics if `start > end` (a programmer error).
    pub fn new(start: Bin, end: Bin) -> Self {
        assert!(start <= end, "bin range {start}..{end} is reversed");
        Self { start, end }
    }

    /// Every bin of a space with `2^bins_log2` bins.
    pub fn all(bins_log2: u8) -> Self {
        Self::new(0, 1 << bins_log2)
    }

    /// Number of bins in the range.
    pub fn len(&self) -> u32 {
        self.end - self.start
    }

    /// Whether the range holds no bin.
    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }

    /// Whether `bin` lies in the range.
    pub fn contains(&self, bin: Bin) -> bool {
        self.start <= bin && bin < self.end
    }

    /// The `i`-th of `n` near-equal contiguous parts of the range (the default
    /// placement of `n` instances over the key space).
    pub fn part(&self, i: u32, n: u32) -> Self {
        assert!(n > 0 && i < n, "part {i} of {n}");
        let len = u64::from(self.len());
        let start = self.start + (len * u64::from(i) / u64::from(n)) as u32;
        let end = self.start + (len * u64::from(i + 1) / u64::from(n)) as u32;
        Self::new(start, end)
    }
}

impl std::fmt::Display for BinRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "bins {}..{}", self.start, self.end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH_OF_1: u64 = 16016876815135772844;
    const HASH_OF_SPATE: u64 = 2230375484653301231;

    /// Every compiled form of `hash_u64s` this CPU can run gives
    /// `hash_u64` of each key, appended after what `out` held, at lengths
    /// around the vectors' (8 keys for AVX-512, 4 for AVX2, 2 for SSE2) and
    /// with keys whose bits all matter.
    #[test]
    fn bulk_hashes_are_the_hashes_in_every_form() {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let keys: Vec<u64> = (0..1000)
            .map(|i| {
                x = x.rotate_left(17) ^ i;
                if i % 3 == 0 {
                    i
                } else {
                    x
                }
            })
            .collect();
        let forms: Vec<(&str, fn(&[u64], &mut Vec<u64>))> = {
            let mut f: Vec<(&str, fn(&[u64], &mut Vec<u64>))> =
                vec![("dispatched", hash_u64s), ("baseline", hash_u64s_baseline)];
            #[cfg(target_arch = "x86_64")]
            {
                use crate::cpu::{vectors, Vectors};
                if vectors() >= Vectors::Avx2 {
                    // SAFETY: checked just now.
                    f.push(("avx2", |k, o| unsafe { hash_u64s_avx2(k, o) }));
                }
                if vectors() >= Vectors::Avx512 {
                    // SAFETY: as above.
                    f.push(("avx512", |k, o| unsafe { hash_u64s_avx512(k, o) }));
                }
            }
            f
        };
        for (name, form) in forms {
            for n in [0, 1, 2, 3, 4, 7, 8, 9, 15, 16, 17, 31, 64, 1000] {
                let mut out = vec![7u64];
                form(&keys[..n], &mut out);
                let want: Vec<u64> =
                    std::iter::once(7).chain(keys[..n].iter().map(|&k| hash_u64(k))).collect();
                assert_eq!(out, want, "{name}, {n} keys");
            }
        }
    }

    #[test]
    fn hash_is_portable_and_stable() {
        // Fixed vectors: if these change, every stored checkpoint and every
        // routing table of a running cluster becomes wrong.
        assert_eq!(hash_u64(0), hash_bytes(&0u64.to_le_bytes()));
        assert_eq!(hash_u64(42), hash_bytes(&42u64.to_le_bytes()));
        assert_eq!(hash_u64(1), HASH_OF_1);
        assert_eq!(hash_bytes(b"spate"), HASH_OF_SPATE);
        assert_ne!(hash_bytes(b"a"), hash_bytes(b"b"));
        assert_ne!(hash_bytes(b""), hash_bytes(&[0]));
        assert_ne!(hash_bytes(b"abcdefgh1"), hash_bytes(b"abcdefgh2"));
    }

    #[test]
    fn bins_spread_sequential_keys() {
        let b = 8u8;
        let mut counts = vec![0u32; 1 << b];
        for k in 0..256_000u64 {
            counts[bin_of(hash_u64(k), b) as usize] += 1;
        }
        let (min, max) = (counts.iter().min().copied(), counts.iter().max().copied());
        assert!(min.unwrap_or(0) > 800 && max.unwrap_or(u32::MAX) < 1200, "{min:?} {max:?}");
    }

    #[test]
    fn parts_cover_the_range() {
        let all = BinRange::all(12);
        for n in 1..10 {
            let mut next = 0;
            for i in 0..n {
                let p = all.part(i, n);
                assert_eq!(p.start, next);
                next = p.end;
            }
            assert_eq!(next, 4096);
        }
    }
}
