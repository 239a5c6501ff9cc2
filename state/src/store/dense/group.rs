//! [`Group`]: [`GROUP`] control bytes of a dense part read at once and
//! compared all together, in SSE2 on x86-64 and in one word elsewhere.

use super::GROUP;

/// [`GROUP`] control bytes, read at once and compared all together: in
/// the low half of an SSE2 register on x86-64 (a compare and a move-mask
/// find the matching bytes, exactly), elsewhere in one `u64` (SWAR).
#[derive(Clone, Copy)]
pub(super) struct Group(
    #[cfg(target_arch = "x86_64")] std::arch::x86_64::__m128i,
    #[cfg(not(target_arch = "x86_64"))] u64,
);

/// The bytes of a [`Group`] that matched, lowest first: one bit per byte
/// on x86-64, the high bit of each byte elsewhere.
#[derive(Clone, Copy)]
pub(super) struct Matches(#[cfg(target_arch = "x86_64")] u32, #[cfg(not(target_arch = "x86_64"))] u64);

impl Matches {
    /// Whether no byte matched.
    #[inline(always)]
    pub(super) fn none(self) -> bool {
        self.0 == 0
    }

    /// The lowest byte that matched (there must be one).
    #[inline(always)]
    pub(super) fn lowest(self) -> usize {
        #[cfg(target_arch = "x86_64")]
        return self.0.trailing_zeros() as usize;
        #[cfg(not(target_arch = "x86_64"))]
        return (self.0.trailing_zeros() / 8) as usize;
    }

    /// Without the lowest byte that matched.
    #[inline(always)]
    pub(super) fn rest(self) -> Matches {
        Matches(self.0 & self.0.wrapping_sub(1))
    }
}

impl Group {
    /// The [`GROUP`] bytes at `p`.
    ///
    /// # Safety
    ///
    /// `p .. p + GROUP` must be readable.
    #[inline(always)]
    pub(super) unsafe fn load(p: *const u8) -> Group {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the caller's; SSE2 is part of x86-64, and the load is
        // unaligned and of 8 bytes (the upper 8 of the register are 0).
        return unsafe { Group(std::arch::x86_64::_mm_loadl_epi64(p.cast())) };
        #[cfg(not(target_arch = "x86_64"))]
        // SAFETY: the caller's.
        return unsafe { Group(p.cast::<u64>().read_unaligned()) };
    }

    /// The [`GROUP`] bytes of `ctrl` from `i` on (panics past its end).
    #[inline(always)]
    pub(super) fn at(ctrl: &[u8], i: usize) -> Group {
        let b = &ctrl[i..i + GROUP];
        // SAFETY: `b` is GROUP bytes long.
        unsafe { Group::load(b.as_ptr()) }
    }

    /// The bytes equal to `tag`, an occupied slot's control byte (its high
    /// bit set). Exact on x86-64; elsewhere possibly also bytes above a
    /// match that differ from `tag` in the lowest bit. Empty bytes are
    /// never among them, so a candidate is confirmed by comparing keys.
    #[inline(always)]
    pub(super) fn match_tag(self, tag: u8) -> Matches {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::x86_64::{_mm_cmpeq_epi8, _mm_movemask_epi8, _mm_set1_epi8};
            // SAFETY: SSE2 is part of x86-64. The upper 8 bytes of the
            // group are 0 and `tag` has its high bit set: they never match.
            unsafe { Matches(_mm_movemask_epi8(_mm_cmpeq_epi8(self.0, _mm_set1_epi8(tag as i8))) as u32) }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let x = self.0 ^ (LO * u64::from(tag));
            Matches(x.wrapping_sub(LO) & !x & HI)
        }
    }

    /// The empty bytes (0), exactly (an occupied byte has its high bit
    /// set, an empty one not; with SWAR, a false positive of the zero-byte
    /// test would need a byte of 0x01, which no control byte is).
    #[inline(always)]
    pub(super) fn match_empty(self) -> Matches {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: SSE2 is part of x86-64. The move-mask takes each byte's
        // high bit: set for the occupied among the low 8, clear for the
        // upper 8 (zeros), which the complement's mask drops.
        return unsafe { Matches(!(std::arch::x86_64::_mm_movemask_epi8(self.0) as u32) & 0xff) };
        #[cfg(not(target_arch = "x86_64"))]
        return Matches(self.0.wrapping_sub(LO) & !self.0 & HI);
    }
}

#[cfg(not(target_arch = "x86_64"))]
const LO: u64 = 0x0101_0101_0101_0101;

#[cfg(not(target_arch = "x86_64"))]
const HI: u64 = 0x8080_8080_8080_8080;
