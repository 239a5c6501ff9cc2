//! The workload and its failure-free computation, the checker's reference.

use std::collections::BTreeMap;

use spate_state::keyspace::{bin_of, hash_u64, Bin, BinRange};

use super::rng::splitmix64;
use super::Scenario;
use crate::ft::Seq;

/// One record: an input `(id, key, value)`, or an output `(id, key, running
/// sum after this record)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Rec {
    pub id: u64,
    pub key: u32,
    pub value: i64,
}

/// The bin of a key, through the portable hash of the real key space.
pub(crate) fn bin_of_key(key: u32, bins_log2: u8) -> Bin {
    bin_of(hash_u64(u64::from(key)), bins_log2)
}

/// Record `i` of round `round` of source `source`: a pure function of the
/// seed, so a source is replayable from any offset.
pub(crate) fn record(seed: u64, sc: &Scenario, source: u32, round: Seq, i: u32) -> Rec {
    let id = (u64::from(source) << 48) | (round << 16) | u64::from(i);
    let h = splitmix64(seed ^ splitmix64(id));
    Rec { id, key: (h % u64::from(sc.keys.max(1))) as u32, value: ((h >> 32) % 100) as i64 + 1 }
}

/// Every record of one round of one source.
pub(crate) fn round_records(seed: u64, sc: &Scenario, source: u32, round: Seq) -> Vec<Rec> {
    (0..sc.records_per_round).map(|i| record(seed, sc, source, round, i)).collect()
}

/// The failure-free computation.
pub(crate) struct Reference {
    pub seed: u64,
    sc: Scenario,
    /// Record id → (key, running sum after it).
    pub expected: BTreeMap<u64, (u32, i64)>,
    /// Key → final sum.
    pub final_state: BTreeMap<u32, i64>,
}

impl Reference {
    pub(crate) fn new(seed: u64, sc: &Scenario) -> Self {
        let mut expected = BTreeMap::new();
        let mut state: BTreeMap<u32, i64> = BTreeMap::new();
        for round in 1..=sc.rounds {
            for source in 0..sc.sources {
                for rec in round_records(seed, sc, source, round) {
                    let sum = state.entry(rec.key).or_insert(0);
                    *sum += rec.value;
                    expected.insert(rec.id, (rec.key, *sum));
                }
            }
        }
        Self { seed, sc: *sc, expected, final_state: state }
    }

    /// The state after `round`, restricted to `bins`.
    pub(crate) fn state_after(&self, round: Seq, bins: BinRange) -> BTreeMap<u32, i64> {
        let mut state = BTreeMap::new();
        for r in 1..=round.min(self.sc.rounds) {
            for source in 0..self.sc.sources {
                for rec in round_records(self.seed, &self.sc, source, r) {
                    if bins.contains(bin_of_key(rec.key, self.sc.bins_log2)) {
                        *state.entry(rec.key).or_insert(0) += rec.value;
                    }
                }
            }
        }
        state
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_is_a_running_sum_and_prefix_states_add_up() {
        let sc = Scenario { rounds: 5, ..Scenario::default() };
        let r = Reference::new(3, &sc);
        assert_eq!(r.expected.len() as u64, 5 * u64::from(sc.sources * sc.records_per_round));
        let all = BinRange::all(sc.bins_log2);
        assert_eq!(r.state_after(5, all), r.final_state);
        let (lo, hi) = (all.part(0, 2), all.part(1, 2));
        let mut split = r.state_after(3, lo);
        split.extend(r.state_after(3, hi));
        assert_eq!(split, r.state_after(3, all));
        assert_eq!(record(3, &sc, 1, 2, 0), record(3, &sc, 1, 2, 0), "replayable");
    }
}
