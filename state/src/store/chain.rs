//! Where a store stands in its chain of checkpoints: the last one, the
//! increments since a full image, and the one begun and not yet settled.
//! Taking a checkpoint (`crate::checkpoint`) reads and moves it; the store
//! only holds it.

/// Default number of increments after which the next checkpoint is a full
/// image.
pub const FULL_EVERY_DEFAULT: u32 = 16;

/// Where a store stands in its checkpoint chain.
#[derive(Debug)]
pub(crate) struct ChainState {
    /// The last checkpoint's id (0: none yet).
    pub(crate) last: u64,
    /// Increments since the last full image.
    pub(crate) increments: u32,
    /// The next checkpoint must be a full image.
    pub(crate) need_full: bool,
    /// Increments after which a full image is taken.
    pub(crate) full_every: u32,
    /// The checkpoint begun last, with the chain as it was before, until it
    /// is settled (see `StateStore::settle_checkpoint`).
    pub(crate) inflight: Option<Inflight>,
}

/// A begun checkpoint and the chain state it replaced.
#[derive(Debug)]
pub(crate) struct Inflight {
    pub(crate) id: u64,
    pub(crate) last: u64,
    pub(crate) increments: u32,
    pub(crate) need_full: bool,
}

impl Default for ChainState {
    fn default() -> Self {
        Self { last: 0, increments: 0, need_full: true, full_every: FULL_EVERY_DEFAULT, inflight: None }
    }
}
