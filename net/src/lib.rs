//! spate-net
