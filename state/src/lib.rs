//! # spate-state
//!
//! SEEP's state management primitives for Spate: the system, not the operator,
//! owns keyed state, so it can checkpoint it, back it up, restore it and split
//! it by key range.
//!
//! Map of the crate:
//! - [`keyspace`]: the portable key hash and the cut of the hash space into bins.
//! - [`codec`]: rkyv encoding of records, keys and values into reused buffers.
//! - [`store`]: the memory-mapped segment store, one per stateful operator
//!   instance, holding that instance's bins.
//! - [`handles`]: typed state handles (value, map, append-list) over the store.
//!
//! This crate knows nothing of dataflows: it stores bytes per bin and produces
//! and consumes checkpoint chunks as bytes.
#![forbid(missing_docs)]

pub mod codec;
pub mod keyspace;

pub use codec::Record;
pub use keyspace::{bin_of, hash_bytes, hash_u64, Bin, BinRange};
