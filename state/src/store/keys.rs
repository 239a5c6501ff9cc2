//! Key comparison and prefetch, the primitives of both record and dense
//! lookups.

use super::record::{u32_at, u64_at, HEADER};
use super::SegmentFile;

/// Key equality, without a `memcmp` call for the short keys of the hot path.
#[inline(always)]
fn eq_key(a: &[u8], b: &[u8]) -> bool {
    let n = a.len();
    if n != b.len() {
        return false;
    }
    if (8..=16).contains(&n) {
        // Two overlapping 8-byte words cover the key.
        u64_at(a, 0) == u64_at(b, 0) && u64_at(a, n - 8) == u64_at(b, n - 8)
    } else {
        a == b
    }
}

/// Zero if the equal-length keys `a` and `b` are equal, without a branch for
/// the lengths of fixed-layout keys (which are constants where it inlines).
#[inline(always)]
pub(super) fn key_diff(a: &[u8], b: &[u8]) -> u64 {
    let n = a.len();
    debug_assert_eq!(n, b.len());
    if (8..=16).contains(&n) {
        // Two overlapping 8-byte words cover the key.
        (u64_at(a, 0) ^ u64_at(b, 0)) | (u64_at(a, n - 8) ^ u64_at(b, n - 8))
    } else if (4..8).contains(&n) {
        u64::from((u32_at(a, 0) ^ u32_at(b, 0)) | (u32_at(a, n - 4) ^ u32_at(b, n - 4)))
    } else {
        u64::from(a != b)
    }
}

/// Prefetches the cache line at `p` into all cache levels.
#[inline(always)]
pub(super) fn prefetch_ptr(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is a hint that never faults, whatever the address;
    // SSE is part of the x86-64 baseline.
    #[allow(unused_unsafe)]
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// Whether the record at `loc` has hash `hash` and key `key`.
#[inline(always)]
pub(super) fn is_key(file: &SegmentFile, loc: u64, hash: u64, key: &[u8]) -> bool {
    // Header and key in one read; a record too short for it (at the end of
    // a chunk) is another key.
    let Some(r) = file.bytes_within(loc, HEADER + key.len()) else {
        return false;
    };
    u64_at(r, 0) == hash && u32_at(r, 8) as usize == key.len() && eq_key(&r[HEADER..], key)
}
