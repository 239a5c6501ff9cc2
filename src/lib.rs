//! # Spate
//!
//! An elastic, fault-tolerant stream processor whose operator state is
//! explicit: the system owns keyed state (in memory-mapped segments, per
//! bin of the key space), so it can checkpoint it, back it up, restore it and
//! split it by key range — the SEEP model, on a thread-per-core runtime.
//!
//! This crate is the facade: it re-exports the dataflow API, the operator
//! library and the runtime, and holds the registry of named queries, the
//! deployment config and the `spate` command ([`cli`]) that runs them.
//!
//! ```no_run
//! use spate::prelude::*;
//!
//! // An embedded pipeline: push trades in, get running volumes out.
//! let (input, source) = spate::input::<(u64, u64)>(1024);
//! let (sink, output) = spate::output::<(u64, u64)>(1024);
//! let job = Runtime::new(RuntimeConfig { workers: 2, ..Default::default() })
//!     .start("volumes", move |df: &Dataflow| {
//!         df.input("trades", &source)
//!             .key_by("by-symbol", |t: &(u64, u64)| t.0)
//!             .fold("volume", || 0u64, |v, t| *v += t.1)
//!             .output("out", &sink);
//!     })
//!     .expect("start");
//! input.send((7, 100)).expect("send");
//! drop(input); // ends the stream
//! assert_eq!(output.recv(), Some((7, 100)));
//! job.wait().expect("job");
//! ```
//!
//! ## Your own record types
//!
//! Records travel between workers and nodes as rkyv bytes, and keyed state
//! keeps them so. `#[spate::record]` derives rkyv's `Archive`,
//! `Serialize` and `Deserialize` through Spate's re-export ([`rkyv`]), so
//! a crate that depends on `spate` needs no `rkyv` of its own nor any
//! `#[rkyv(crate = ...)]`; structs with `String`s, enums, vectors and
//! nested records all work, and add `#[derive(Clone)]` to make them
//! [`Data`]:
//!
//! ```
//! #[spate::record]
//! #[derive(Debug, Clone, PartialEq)]
//! enum Side {
//!     Buy,
//!     Sell,
//! }
//!
//! #[spate::record]
//! #[derive(Debug, Clone, PartialEq)]
//! struct Trade {
//!     symbol: String,
//!     side: Side,
//!     price_cents: u64,
//! }
//!
//! fn flows_on_streams<T: spate::Data>() {}
//! flows_on_streams::<Trade>();
//!
//! let t = Trade { symbol: "AAPL".into(), side: Side::Sell, price_cents: 18_950 };
//! let mut bytes = Vec::new();
//! spate::state::codec::encode(&t, &mut bytes).expect("encode");
//! assert_eq!(spate::state::codec::decode_checked::<Trade>(&bytes).expect("decode"), t);
//! ```
//!
//! ## Your own queries on the `spate` command
//!
//! A query registered by name in a [`registry::Registry`] runs under `spate
//! run`, `spate node`, `spate cluster` and `spate bench` like the
//! built-ins, from a program whose `main` is [`cli::main`]; see
//! [`registry`] and `examples/own-query`.
#![forbid(missing_docs)]

// `#[spate::record]` names `::spate`: the crate's own records use it too.
extern crate self as spate;

pub mod bench_elastic;
pub mod bench_recovery;
pub mod bench_rescale;
pub mod cli;
pub mod config;
pub mod ctl;
pub mod ctl_local;
pub use spate_core::control;
pub mod deploy;
mod job_spec;
pub mod nexmark;
pub mod node;
pub mod queries;
pub mod registry;

/// rkyv, as Spate builds it (`unaligned`, `little_endian`): derive
/// `Archive`, `Serialize` and `Deserialize` on record types with it.
pub use rkyv;
pub use spate_core::watchdog::Watchdog;
pub use spate_core::{
    self as core, now_ns, Data, Dataflow, InstanceCtx, Job, JobReport, Key, KeyedStream, Meta, Parallelism,
    Runtime, RuntimeConfig, RuntimeError, Stream, Timestamp, WATERMARK_END,
};
pub use spate_macros::record;
pub use spate_net as net;
pub use spate_ops::prelude::{input, output, InputHandle, OutputHandle};
pub use spate_ops::{self as ops};
pub use spate_state::{self as state};

/// Everything a pipeline needs in scope.
pub mod prelude {
    pub use spate_core::{Data, Dataflow, Key, KeyedStream, Meta, Runtime, RuntimeConfig, Stream, Timestamp};
    pub use spate_ops::prelude::*;
}
