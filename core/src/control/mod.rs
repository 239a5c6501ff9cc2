//! The control plane of a multi-process job: one node is the coordinator
//! (docs/ARCHITECTURE.md, *Recovery* and decisions 30–32 and 37–40).
//!
//! 1. Every other node — spares included — opens a control connection to
//!    the coordinator (its `Hello` names it `ctl:<node>`; unknown or
//!    duplicate nodes are refused) and registers with its worker count and
//!    the address of its replica service (where other nodes stream their
//!    checkpoints to it).
//! 2. Once every node of the config has registered (or the connect timeout
//!    passes: the error names the missing nodes), the coordinator deploys
//!    epoch 0: the placement of the nodes that are not spares, in config
//!    order, and for each node the backup nodes it streams its checkpoints
//!    to (the next `[checkpoint] backups` nodes of the placement, in a
//!    ring: never itself).
//! 3. While the job runs, control connections carry heartbeats both ways.
//!    Every `[checkpoint] interval_ms` the coordinator requests a checkpoint
//!    from every node; each node answers with its part (its sources'
//!    offsets) once its instances have stored it locally and its backup
//!    nodes acknowledged it; when every part is in, the checkpoint is
//!    complete and the nodes are told.
//! 4. A node silent for `failure_timeout_ms`, or whose control connection
//!    closes before the job ends, is declared failed and its incarnation
//!    fenced: that process is never deployed again, its control connection
//!    is dropped, and worker links carry the epoch in their names, so
//!    nothing of it can join a later deployment (a restarted process
//!    registers as a new incarnation, a spare). The coordinator recovers:
//!    live, where only the failed node's workers restore on new owners and
//!    survivors re-link to them and replay, or by rolling every node back
//!    to the last complete checkpoint ([`plan`] says when each is taken
//!    and how). Every input then affects the state exactly once and every
//!    output is written once.
//! 5. When every node's share has ended, the coordinator releases every
//!    node (spares included), which removes its checkpoints and exits,
//!    and prints the totals.
//!
//! A node process is one [`Node`], turned without blocking, over an
//! [`Env`] that brings the sockets, threads and clock — [`Os`] in
//! production, the whole-cluster simulator's in core's tests
//! (`core/src/sim`). The coordinator's decisions are the sans-IO
//! [`plan::Plan`]; [`Coordinator`] drives it from the control connections.
//! The coordinator does not survive its own failure (the job fails on
//! every node).
//!
//! Messages are control frames with small text payloads (`Kind::Deploy`
//! for a deployment, `Kind::Recovery` for the rest), read by
//! [`Msg::decode`], which names what is malformed.

pub mod agent;
pub mod coordinator;
pub mod ctl;
pub mod detector;
pub mod env;
pub mod error;
mod handoff;
pub mod member;
pub mod msg;
pub mod node;
pub(crate) mod peer;
pub mod placement;
pub mod plan;
pub mod report;
pub mod scaling;

pub use crate::time::unix_ms;
pub use agent::{Exit, NodeAgent};
pub use coordinator::{Coordinator, Outcome};
pub use env::{Build, Env, FetchRequest, Os, OsParcel, ShipRequest};
pub use error::{AgentError, ControlError, FetchError, JobFailure, MsgError, MsgFault, RegisterError};
pub use member::{Member, MemberTimeouts};
pub use msg::{Deployment, Msg};
pub use node::{Node, NodeEnd, NodeSetup};
pub use placement::{ClusterPlacement, Join, NodeSpec};
pub use report::{Event, MetricsLine, NodeReport, METRICS_ENV, RESTARTS};
