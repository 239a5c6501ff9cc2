//! Which of this CPU's vector instructions the loops compiled more than once
//! may use: the bulk key hash ([`crate::keyspace::hash_u64s`]) and a keyed
//! operator's burst of state updates (`spate-ops`). Each is compiled for the
//! target's baseline (SSE2 on x86-64) and for the wider forms here, and picks
//! at run time, so one binary runs everywhere and uses what it finds.
//!
//! `SPATE_SIMD=baseline` (or `avx2`) in the environment caps the choice, for
//! comparing the forms and for testing the baseline on a CPU that has more.

use std::sync::OnceLock;

/// The widest form a loop compiled several times may use, narrowest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Vectors {
    /// The target's baseline (SSE2 on x86-64).
    Baseline,
    /// AVX2 with BMI1, BMI2, LZCNT and POPCNT (what x86-64-v3 CPUs have).
    Avx2,
    /// That and AVX-512 F, DQ and VL (`vpmullq`: a 64-bit multiply).
    Avx512,
}

/// What this process may use: what the CPU has, capped by `SPATE_SIMD`.
/// Worked out once.
#[inline]
pub fn vectors() -> Vectors {
    static V: OnceLock<Vectors> = OnceLock::new();
    *V.get_or_init(|| detected().min(cap(std::env::var("SPATE_SIMD").ok().as_deref())))
}

/// The cap that a value of `SPATE_SIMD` sets (none, for anything else).
fn cap(v: Option<&str>) -> Vectors {
    match v {
        Some("baseline") => Vectors::Baseline,
        Some("avx2") => Vectors::Avx2,
        _ => Vectors::Avx512,
    }
}

/// What this CPU has.
fn detected() -> Vectors {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        let v3 = has!("avx2") && has!("bmi1") && has!("bmi2") && has!("lzcnt") && has!("popcnt");
        if v3 && has!("avx512f") && has!("avx512dq") && has!("avx512vl") {
            return Vectors::Avx512;
        }
        if v3 {
            return Vectors::Avx2;
        }
    }
    Vectors::Baseline
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_environment_caps_what_the_cpu_has() {
        assert_eq!(cap(Some("baseline")), Vectors::Baseline);
        assert_eq!(cap(Some("avx2")), Vectors::Avx2);
        assert_eq!(cap(None), Vectors::Avx512);
        assert_eq!(cap(Some("anything")), Vectors::Avx512);
        assert!(vectors() <= detected());
    }
}
