//! [`NetConfig`]: a node's network identity and the limits of its
//! connections, with their defaults and validation.

use std::time::Duration;

use super::CREDIT_FRAME_BYTES;
use crate::auth::ClusterSecret;
use crate::error::NetErrorKind;
use crate::hello::Hello;
use crate::limits::{
    CHANNELS_MAX_DEFAULT, DEFAULT_CREDIT_WINDOW, HANDSHAKE_TIMEOUT_DEFAULT, HEARTBEAT_INTERVAL_DEFAULT,
    NODE_NAME_BYTES_MAX, READ_AHEAD_BYTES_DEFAULT, SEND_BUFFER_BYTES_DEFAULT,
};

/// A node's network identity and the limits of its connections.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetConfig {
    /// This node's name, sent in its hello (1 to
    /// [`NODE_NAME_BYTES_MAX`] bytes of UTF-8).
    pub node: String,
    /// The cluster (job) id; a peer with another is refused.
    pub cluster: u64,
    /// Data frames per channel this node buffers for a peer, granted to
    /// the peer's senders in the hello (at least 1).
    pub credit_window: u32,
    /// Freed buffers batched into one credit grant; 0 means a quarter of
    /// the window (at least 1).
    pub grant_threshold: u32,
    /// Bound of a connection's send buffer in bytes
    /// ([`SEND_BUFFER_BYTES_DEFAULT`]).
    pub send_buffer_bytes: usize,
    /// Read-ahead of a connection in bytes ([`READ_AHEAD_BYTES_DEFAULT`]).
    pub read_ahead_bytes: usize,
    /// Most channels a peer may send data on ([`CHANNELS_MAX_DEFAULT`]).
    pub channels_max: usize,
    /// Time an accepted peer has to complete its handshake
    /// ([`HANDSHAKE_TIMEOUT_DEFAULT`]).
    pub handshake_timeout: Duration,
    /// Quiet time after which [`Connection::poll_heartbeat`] sends a
    /// heartbeat ([`HEARTBEAT_INTERVAL_DEFAULT`]).
    ///
    /// [`Connection::poll_heartbeat`]: super::Connection::poll_heartbeat
    pub heartbeat_interval: Duration,
    /// The cluster's shared secret: with one, every handshake runs the
    /// challenge-response of [`crate::auth`] and a peer without it is
    /// refused; without, peers are taken on their cluster id alone. The
    /// default is the process's ([`crate::auth::install`]).
    pub secret: Option<ClusterSecret>,
}

impl NetConfig {
    /// The defaults of [`crate::limits`] for node `node` of cluster
    /// `cluster`.
    pub fn new(node: impl Into<String>, cluster: u64) -> Self {
        NetConfig {
            node: node.into(),
            cluster,
            credit_window: DEFAULT_CREDIT_WINDOW,
            grant_threshold: 0,
            send_buffer_bytes: SEND_BUFFER_BYTES_DEFAULT,
            read_ahead_bytes: READ_AHEAD_BYTES_DEFAULT,
            channels_max: CHANNELS_MAX_DEFAULT,
            handshake_timeout: HANDSHAKE_TIMEOUT_DEFAULT,
            heartbeat_interval: HEARTBEAT_INTERVAL_DEFAULT,
            secret: crate::auth::installed(),
        }
    }

    /// Checks every field; the error names the first bad one.
    pub fn validate(&self) -> Result<(), NetErrorKind> {
        let bad = |field: &'static str, reason: String| Err(NetErrorKind::Config { field, reason });
        let name = self.node.len();
        if name == 0 || name > NODE_NAME_BYTES_MAX {
            return bad("node", format!("{name} bytes, must be 1 to {NODE_NAME_BYTES_MAX}"));
        }
        if self.credit_window == 0 {
            return bad("credit_window", "must be at least 1".into());
        }
        if self.grant_threshold > self.credit_window {
            return bad(
                "grant_threshold",
                format!("{} exceeds the credit window of {}", self.grant_threshold, self.credit_window),
            );
        }
        if self.send_buffer_bytes < CREDIT_FRAME_BYTES {
            return bad("send_buffer_bytes", format!("must be at least {CREDIT_FRAME_BYTES}"));
        }
        if self.read_ahead_bytes == 0 {
            return bad("read_ahead_bytes", "must be at least 1".into());
        }
        if self.channels_max == 0 {
            return bad("channels_max", "must be at least 1".into());
        }
        if self.handshake_timeout.is_zero() {
            return bad("handshake_timeout", "must be positive".into());
        }
        Ok(())
    }

    pub(super) fn threshold(&self) -> u32 {
        if self.grant_threshold == 0 {
            (self.credit_window / 4).max(1)
        } else {
            self.grant_threshold
        }
    }

    pub(super) fn hello(&self) -> Hello {
        Hello {
            node: self.node.clone(),
            cluster: self.cluster,
            credit_window: self.credit_window,
            auth: crate::hello::HelloAuth::None,
        }
    }
}
