//! spate-ops
