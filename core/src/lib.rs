//! # spate-core
//!
//! The dataflow model and the thread-per-core runtime of Spate.
//!
//! Map of the crate:
//! - [`dataflow`]: the builder of a DAG of logical operators ([`Dataflow`],
//!   [`Stream`], [`KeyedStream`]).
//! - [`push`]: the instance side: operators as fused chains of [`Push`]es.
//! - [`source`]: the [`Source`] trait, polled in bounded steps.
//! - [`batch`]: batches of rkyv-archived records between workers.
//! - [`routing`]: key hash → bin → instance.
//! - [`exchange`]: repartitioning edges (batch per destination, receivers
//!   merging watermarks).
//! - [`ring`]: the bounded SPSC ring between two workers, polled.
//! - [`runtime`]: one pinned glommio executor per worker running a poll
//!   loop: steps, flushing and backpressure.
//! - [`assignment`]: which worker owns each bin of the keyed operators.
//! - [`checkpoint`]: aligned checkpoints of a job and restore.
//! - `replay`: live recovery's upstream buffers and receiver counts.
//! - [`panic`]: panics caught at thread boundaries, as job failures.
//! - [`refusals`]: refused connections, logged once each, rate-limited.
//! - [`metrics`], [`config`], [`limits`], [`time`], [`watchdog`].
#![forbid(missing_docs)]

pub mod assignment;
pub mod batch;
pub mod checkpoint;
pub mod config;
pub mod control;
mod data;
pub mod dataflow;
pub mod exchange;
pub mod handoff;
pub mod limits;
pub mod link;
pub mod load;
pub mod metrics;
pub mod panic;
pub mod push;
pub mod refusals;
mod replay;
pub mod replica;
pub mod ring;
pub mod routing;
pub mod runtime;
mod sabotage;
#[cfg(test)]
mod sim;
pub mod source;
pub mod time;
pub mod watchdog;

pub use batch::Meta;
pub use config::RuntimeConfig;
pub use data::{Data, Key};
pub use dataflow::{Dataflow, InstanceCtx, KeyFn, KeyedStream, Parallelism, Stream};
pub use push::{BinaryOperator, BoxPush, Push};
pub use runtime::{Job, JobReport, Runtime, RuntimeError};
pub use source::{Source, SourceStatus, Step};
pub use spate_state;
pub use time::{now_ns, Timestamp, WATERMARK_END};
