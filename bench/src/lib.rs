//! spate-bench
