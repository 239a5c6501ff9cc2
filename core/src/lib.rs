//! spate-core
