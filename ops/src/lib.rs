//! # spate-ops
//!
//! The operator library of Spate, built on the primitives of `spate-core`
//! (`unary`, `binary`, `key_by`, `keyed_unary`, `keyed_binary`, sources and
//! sinks). Bring the extension traits into scope with
//! `use spate_ops::prelude::*`.
//!
//! Map of the crate:
//! - [`stateless`]: `map`, `filter`, `flat_map`, `union`, `assign_watermarks`.
//! - [`keyed`]: `fold` (running aggregate per key) and `reduce`, on keyed state.
//! - [`window`]: tumbling and sliding event-time windows, windowed joins.
//! - [`session`]: event-time session windows.
//! - [`distinct`]: the first record of each key per window.
//! - [`join`]: the unbounded keyed join and the interval aggregate.
//! - [`topn`]: the running top N per key.
//! - [`sources`]: generator, file, embedding input.
//! - [`sinks`]: count (with latency), stdout, file, embedding output.
#![forbid(missing_docs)]

pub mod distinct;
pub mod join;
pub mod keyed;
pub mod session;
pub mod sinks;
pub mod sources;
pub mod stateless;
pub mod topn;
pub mod window;

/// The extension traits and common types.
pub mod prelude {
    pub use crate::join::JoinExt;
    pub use crate::keyed::KeyedExt;
    pub use crate::session::{SessionExt, SessionStream};
    pub use crate::sinks::{output, OutputHandle, OutputSink, SinkExt};
    pub use crate::sources::{
        input, FnRecords, GeneratorSpec, InputHandle, InputSource, RateSchedule, Records, SourceExt,
    };
    pub use crate::stateless::StreamExt;
    pub use crate::topn::TopNExt;
    pub use crate::window::{LateExt, Window, WindowExt, WindowResult, WindowedStream};
}
