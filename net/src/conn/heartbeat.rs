//! Liveness: heartbeats out when nothing else was sent for a while, and
//! when the peer was last heard from.

use std::time::Instant;

use super::Connection;
use crate::error::{NetError, NetErrorKind};
use crate::frame::{encode_control, Kind, FRAME_OVERHEAD};

impl Connection {
    /// When bytes last arrived from the peer (or the handshake finished).
    /// A peer silent for longer than the failure timeout is failed: every
    /// live peer sends heartbeats when it has nothing else to send.
    pub fn last_heard(&self) -> Instant {
        self.last_heard
    }

    /// Queues a heartbeat if nothing has been written for the heartbeat
    /// interval and nothing is waiting to be (then the peer hears from us
    /// anyway). Call it from the loop's tick; returns whether one was
    /// queued.
    pub fn poll_heartbeat(&mut self, now: Instant) -> Result<bool, NetError> {
        self.check_open()?;
        if self.out.unsent() > 0 || now.saturating_duration_since(self.last_sent) < self.heartbeat_interval {
            return Ok(false);
        }
        self.heartbeat_seq += 1;
        let out = self.out.prepare(FRAME_OVERHEAD);
        encode_control(Kind::Heartbeat, 0, self.heartbeat_seq, &[], out)
            .map_err(|e| self.error(NetErrorKind::Frame(e)))?;
        self.last_sent = now;
        Ok(true)
    }
}
