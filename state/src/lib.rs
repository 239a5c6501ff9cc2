//! # spate-state
//!
//! SEEP's state management primitives for Spate: the system, not the operator,
//! owns keyed state, so it can checkpoint it, back it up, restore it and split
//! it by key range.
//!
//! Map of the crate:
//! - [`keyspace`]: the portable key hash and the cut of the hash space into bins.
//! - [`codec`]: rkyv encoding of records, keys and values into reused buffers.
//! - [`cpu`]: which vector instructions the loops compiled more than once use.
//! - [`store`]: the memory-mapped segment store, one per stateful operator
//!   instance, holding that instance's bins: records with a per-bin index,
//!   or, for fixed-size keys and values, dense tables whose slots are the
//!   state.
//! - [`handles`]: typed state handles (value, map, append-list) over the store:
//!   the only way operators reach keyed state.
//! - [`checkpoint`]: incremental checkpoints as chunk streams, taken
//!   asynchronously ([`StateStore::begin_checkpoint`] returns a
//!   [`CheckpointStream`] any thread can pull while the store is written;
//!   a copy-on-write shadow keeps the image exact), and restore.
//! - [`backup`]: the backup store that receives checkpoint chunks.
//! - [`bench`](mod@bench): the state benchmark (`spate bench state`) as a function.
//! - [`error`]: [`StateError`], what a store operation can fail with.
//!
//! This crate knows nothing of dataflows: it stores bytes per bin and produces
//! and consumes checkpoint chunks as bytes.
#![forbid(missing_docs)]

pub mod backup;
pub mod bench;
pub mod checkpoint;
pub mod codec;
pub mod cpu;
pub mod error;
mod fixed;
pub mod handles;
pub mod keyspace;
mod partition;
pub mod store;

pub use backup::{Ack, BackupStore, Durability};
pub use checkpoint::{Checkpoint, CheckpointStream};
pub use codec::Record;
pub use error::StateError;
pub use handles::{ListState, MapState, ValueState};
pub use keyspace::{bin_of, hash_bytes, hash_u64, Bin, BinRange};
pub use store::{Backing, StateStore, StoreConfig, TableId};
