//! The bounds on what flows on streams: [`Data`] for records, [`Key`] for
//! the keys they are partitioned by.

use spate_state::codec::Record;

/// Types that flow on streams: rkyv records that can be cloned (for fan-out).
pub trait Data: Record + Clone {}
impl<T: Record + Clone> Data for T {}

/// Types that can be keys: data that compares for equality.
pub trait Key: Data + Eq {}
impl<T: Data + Eq> Key for T {}
