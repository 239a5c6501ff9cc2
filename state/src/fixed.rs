//! A fast path of the codec for fixed-layout primitive types.
//!
//! With rkyv's `unaligned` and `little_endian` features, the archived form of
//! a primitive integer or float is exactly its little-endian bytes, that of a
//! tuple of them is the fields' bytes back to back (`#[repr(C)]`, alignment 1,
//! so no padding), and that of a `[u8; N]` is its bytes. For those types the
//! codec writes and reads the bytes directly instead of running rkyv's
//! serializer (an arena, a writer, a resolver): the bytes are identical, which
//! `tests::fixed_is_byte_identical_to_rkyv` checks for every type listed here,
//! so a store written through either path reads back through the other.
//!
//! Dispatch is by [`TypeId`] (through `dyn Any` downcasts, which the compiler
//! folds to constants after monomorphization): no `unsafe`, no trait a user
//! type could implement wrongly. Any other type goes through rkyv.

use std::any::{Any, TypeId};

/// Largest encoded size of a fixed-layout type.
pub const FIXED_MAX: usize = 32;

/// The bytes of a fixed-layout value, written at the start of a stack buffer.
pub(crate) type FixedBuf = [u8; FIXED_MAX];

/// Calls `$m!(T)` for every supported primitive (one with `to_le_bytes` and
/// `from_le_bytes`).
macro_rules! primitives {
    ($m:ident) => {
        $m!(u8);
        $m!(i8);
        $m!(u16);
        $m!(i16);
        $m!(u32);
        $m!(i32);
        $m!(u64);
        $m!(i64);
        $m!(u128);
        $m!(i128);
        $m!(f32);
        $m!(f64);
    };
}

/// Pairs of primitives (archived as `ArchivedTuple2`, fields back to back).
macro_rules! pairs {
    ($m:ident) => {
        $m!(u64, u64);
        $m!(u64, u32);
        $m!(u32, u64);
        $m!(u32, u32);
        $m!(i64, i64);
        $m!(u64, i64);
        $m!(i64, u64);
        $m!(u64, f64);
        $m!(i32, i32);
    };
}

/// Byte arrays of these lengths.
macro_rules! arrays {
    ($m:ident) => {
        $m!(1);
        $m!(2);
        $m!(4);
        $m!(6);
        $m!(8);
        $m!(12);
        $m!(16);
        $m!(20);
        $m!(24);
        $m!(32);
    };
}

/// The encoded size of `T` if it is one of the fixed-layout types, else
/// `None`. Folds to a constant.
#[inline(always)]
pub(crate) fn fixed_len<T: 'static>() -> Option<usize> {
    let id = TypeId::of::<T>();
    macro_rules! prim {
        ($t:ty) => {
            if id == TypeId::of::<$t>() {
                return Some(std::mem::size_of::<$t>());
            }
        };
    }
    macro_rules! pair {
        ($a:ty, $b:ty) => {
            if id == TypeId::of::<($a, $b)>() {
                return Some(std::mem::size_of::<$a>() + std::mem::size_of::<$b>());
            }
        };
    }
    macro_rules! array {
        ($n:literal) => {
            if id == TypeId::of::<[u8; $n]>() {
                return Some($n);
            }
        };
    }
    primitives!(prim);
    pairs!(pair);
    arrays!(array);
    None
}

/// Writes the archived bytes of `v` at the start of `out` and returns their
/// length, if `T` is a fixed-layout type; `None` (nothing written) otherwise.
#[inline(always)]
pub(crate) fn fixed_encode<T: 'static>(v: &T, out: &mut FixedBuf) -> Option<usize> {
    let any: &dyn Any = v;
    macro_rules! prim {
        ($t:ty) => {
            if let Some(x) = any.downcast_ref::<$t>() {
                const N: usize = std::mem::size_of::<$t>();
                out[..N].copy_from_slice(&x.to_le_bytes());
                return Some(N);
            }
        };
    }
    macro_rules! pair {
        ($a:ty, $b:ty) => {
            if let Some((x, y)) = any.downcast_ref::<($a, $b)>() {
                const A: usize = std::mem::size_of::<$a>();
                const B: usize = std::mem::size_of::<$b>();
                out[..A].copy_from_slice(&x.to_le_bytes());
                out[A..A + B].copy_from_slice(&y.to_le_bytes());
                return Some(A + B);
            }
        };
    }
    macro_rules! array {
        ($n:literal) => {
            if let Some(x) = any.downcast_ref::<[u8; $n]>() {
                out[..$n].copy_from_slice(x);
                return Some($n);
            }
        };
    }
    primitives!(prim);
    pairs!(pair);
    arrays!(array);
    None
}

/// Moves `v` (of type `U`) into a `T`, which must be the same type.
#[inline(always)]
fn cast<U: 'static, T: 'static>(v: U) -> Option<T> {
    let mut slot = Some(v);
    (&mut slot as &mut dyn Any).downcast_mut::<Option<T>>().and_then(Option::take)
}

/// Reads a `T` from its archived bytes (exactly [`fixed_len`] bytes), if `T`
/// is a fixed-layout type; `None` otherwise or if `b` has another length.
#[inline(always)]
pub(crate) fn fixed_decode<T: 'static>(b: &[u8]) -> Option<T> {
    let id = TypeId::of::<T>();
    macro_rules! prim {
        ($t:ty) => {
            if id == TypeId::of::<$t>() {
                return cast::<$t, T>(<$t>::from_le_bytes(b.try_into().ok()?));
            }
        };
    }
    macro_rules! pair {
        ($a:ty, $b:ty) => {
            if id == TypeId::of::<($a, $b)>() {
                const A: usize = std::mem::size_of::<$a>();
                const B: usize = std::mem::size_of::<$b>();
                if b.len() != A + B {
                    return None;
                }
                let x = <$a>::from_le_bytes(b[..A].try_into().ok()?);
                let y = <$b>::from_le_bytes(b[A..].try_into().ok()?);
                return cast::<($a, $b), T>((x, y));
            }
        };
    }
    macro_rules! array {
        ($n:literal) => {
            if id == TypeId::of::<[u8; $n]>() {
                return cast::<[u8; $n], T>(b.try_into().ok()?);
            }
        };
    }
    primitives!(prim);
    pairs!(pair);
    arrays!(array);
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{self, Record};

    /// `v` encodes to the same bytes through both paths and decodes back.
    fn same<T: Record>(v: T) {
        let mut rk = Vec::new();
        let n = match codec::encode_rkyv(&v, &mut rk) {
            Ok(n) => n,
            Err(e) => panic!("rkyv: {e}"),
        };
        let mut out = [0u8; FIXED_MAX];
        assert_eq!(fixed_encode(&v, &mut out), Some(n), "{}", std::any::type_name::<T>());
        assert_eq!(fixed_len::<T>(), Some(n));
        assert_eq!(&out[..n], &rk[..], "{}", std::any::type_name::<T>());
        // Decoding either way gives back the same bits (compared through
        // rkyv's encoding, so that NaN compares).
        let rkyv_bytes = |x: &T| {
            let mut b = Vec::new();
            assert!(codec::encode_rkyv(x, &mut b).is_ok());
            b
        };
        let back = fixed_decode::<T>(&rk);
        assert!(back.is_some());
        assert_eq!(back.map(|b| rkyv_bytes(&b)), Some(rk.clone()));
        // SAFETY: `out[..n]` equals `rk`, the bytes of one rkyv encoding of a `T`.
        assert_eq!(rkyv_bytes(&unsafe { codec::decode::<T>(&out[..n]) }), rk);
        // The public codec takes the fast path and agrees.
        let mut buf = vec![0xAA];
        assert!(matches!(codec::encode(&v, &mut buf), Ok(m) if m == n));
        assert_eq!(&buf[1..], &rk[..]);
    }

    #[test]
    fn fixed_is_byte_identical_to_rkyv() {
        for x in [0u64, 1, 0xdead_beef_0123_4567, u64::MAX] {
            same(x);
            same(x as i64);
            same(x as u32);
            same(x as i32);
            same(x as u16);
            same(x as i16);
            same(x as u8);
            same(x as i8);
            same(u128::from(x) << 64 | 7);
            same(-(i128::from(x)));
            same(x as f64 * -1.25);
            same(x as f32 * 0.5);
            same((x, x ^ 1));
            same((x, x as u32));
            same((x as u32, x));
            same((x as u32, !x as u32));
            same((x as i64, -(x as i64)));
            same((x, x as i64));
            same((x as i64, x));
            same((x, x as f64));
            same((x as i32, 3i32));
            let b = x.to_le_bytes();
            same([b[0]]);
            same([b[0], b[1]]);
            same([b[0], b[1], b[2], b[3]]);
            same([b[0], b[1], b[2], b[3], b[4], b[5]]);
            same(b);
            same([b[7]; 12]);
            same([b[3]; 16]);
            same([b[1]; 20]);
            same([b[2]; 24]);
            same([b[5]; 32]);
        }
        same(f64::NAN);
        same(-0.0f64);
        same(f32::INFINITY);
    }

    #[test]
    fn other_types_are_not_fixed() {
        let mut out = [0u8; FIXED_MAX];
        assert_eq!(fixed_len::<String>(), None);
        assert_eq!(fixed_encode(&"x".to_string(), &mut out), None);
        assert_eq!(fixed_len::<usize>(), None);
        assert_eq!(fixed_len::<(u64, u64, u64)>(), None);
        assert_eq!(fixed_len::<[u8; 3]>(), None);
        assert_eq!(fixed_decode::<Vec<u8>>(&[0; 8]), None);
        assert_eq!(fixed_decode::<u64>(&[0; 7]), None);
    }
}
