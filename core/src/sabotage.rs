//! Deliberately broken variants of production logic, each behind a switch
//! that only core's own tests can turn on: the simulator's tests turn one
//! on and check that the simulator catches it (a simulator that cannot
//! fail proves nothing). Outside core's tests [`on`] is the constant
//! `false`, and the compiler removes the broken branches.

/// A broken variant (see where each is tested in `crate::sim`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(not(test), allow(dead_code))]
pub(crate) enum Bug {
    /// A receiver's count of a producer's stream does not skip what it
    /// already took when a replacement replays: records applied twice.
    NoSkipOnReplay,
    /// A restored receiver ignores the checkpoint's `ahead` counts.
    IgnoreAhead,
    /// A survivor does not replay its buffered output to a replacement.
    NoReplay,
    /// The replay logs are trimmed one checkpoint early (to the requested
    /// one, not the complete one).
    TrimEarly,
    /// The coordinator's plan completes a checkpoint before the last
    /// node's part of it is in.
    CompleteEarly,
    /// A survivor does not void the checkpoints in flight at a failure.
    NoAbortInFlight,
    /// The coordinator deploys a live recovery's replacements before every
    /// survivor said it re-linked.
    JoinEarly,
    /// A handoff's target applies the moving bins' records at once, before
    /// their state arrived.
    NoHold,
    /// A handoff's target ends its output when its input ends, even while
    /// it holds records for state on its way.
    FinishEarly,
    /// A node failure right after a handoff step (before a checkpoint
    /// recorded the new assignment) is recovered live, not rolled back.
    NoRollBack,
}

#[cfg(test)]
thread_local! {
    static ON: std::cell::Cell<Option<Bug>> = const { std::cell::Cell::new(None) };
}

/// Whether `bug` is switched on for this thread.
#[inline(always)]
pub(crate) fn on(bug: Bug) -> bool {
    #[cfg(test)]
    {
        ON.with(|b| b.get() == Some(bug))
    }
    #[cfg(not(test))]
    {
        let _ = bug;
        false
    }
}

/// Switches `bug` on for this thread (`None`: every variant off).
#[cfg(test)]
pub(crate) fn set(bug: Option<Bug>) {
    ON.with(|b| b.set(bug));
}
