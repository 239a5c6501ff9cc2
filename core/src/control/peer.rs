//! One control connection (coordinator ↔ node): control frames carrying
//! [`Msg`]s, heartbeats, the messages received and not yet taken, and the
//! messages not yet written. Nothing here blocks: a message that does not
//! fit in the connection's send buffer waits in the outbox, and a peer
//! that takes nothing for [`STUCK_MAX`] is an error.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use spate_net::frame::Kind;
use spate_net::{Delivery, NetErrorKind};

use crate::control::error::ControlError;
use crate::control::msg::Msg;
use crate::link::Conn;

/// How long a peer may leave control messages unread before the
/// connection counts as lost.
pub(crate) const STUCK_MAX: Duration = Duration::from_secs(10);

/// Messages a peer may leave queued before the connection counts as lost.
const OUTBOX_MAX: usize = 4096;

/// The control connection's hello name of node `node`.
pub(crate) fn ctl_name(node: &str) -> String {
    format!("ctl:{node}")
}

/// One control connection (see the module documentation).
pub(crate) struct Peer<C> {
    /// The peer's node, for messages.
    pub(crate) node: String,
    pub(crate) conn: C,
    /// The peer closed its side.
    pub(crate) closed: bool,
    pub(crate) inbox: Vec<Msg>,
    outbox: VecDeque<(Kind, String)>,
    /// Since when the outbox's first message has waited.
    stuck_since: Option<Instant>,
}

impl<C: Conn> Peer<C> {
    pub(crate) fn new(node: String, conn: C) -> Self {
        Self { node, conn, closed: false, inbox: Vec::new(), outbox: VecDeque::new(), stuck_since: None }
    }

    /// Moves bytes; queues received control messages; writes queued ones;
    /// heartbeats.
    pub(crate) fn poll(&mut self, now: Instant) -> Result<(), ControlError> {
        if self.closed {
            return Ok(());
        }
        self.flush(now)?;
        let node = self.node.clone();
        let lost = |e: spate_net::NetError| ControlError::Connection { node: node.clone(), source: e };
        let ended =
            |e: &spate_net::NetError| matches!(e.kind, NetErrorKind::PeerClosed | NetErrorKind::Closed);
        match self.conn.poll_io() {
            Ok(_) => {}
            Err(e) if ended(&e) => {}
            Err(e) => return Err(lost(e)),
        }
        let mut bad = None;
        let inbox = &mut self.inbox;
        let got = self.conn.poll_recv(16, |f| {
            match Msg::decode(f.header.kind, &String::from_utf8_lossy(f.payload)) {
                Ok(m) => inbox.push(m),
                Err(e) => bad = Some(e),
            }
            Delivery::Consumed
        });
        if let Some(e) = bad {
            return Err(ControlError::Malformed { node: self.node.clone(), source: e });
        }
        match got {
            Ok(_) => self.conn.poll_heartbeat(now).map(|_| ()).map_err(lost),
            Err(e) if ended(&e) => {
                self.closed = true;
                Ok(())
            }
            Err(e) => Err(lost(e)),
        }
    }

    /// Queues `msg` and writes what fits now.
    pub(crate) fn send(&mut self, msg: &Msg, now: Instant) -> Result<(), ControlError> {
        if self.outbox.len() >= OUTBOX_MAX {
            return Err(ControlError::Stuck { node: self.node.clone(), queued: self.outbox.len() });
        }
        let (kind, text) = msg.encode();
        self.outbox.push_back((kind, text));
        self.flush(now)?;
        // Push it out now.
        match self.conn.poll_io() {
            Ok(_) => Ok(()),
            Err(e) if matches!(e.kind, NetErrorKind::PeerClosed) => Ok(()),
            Err(e) => Err(ControlError::Connection { node: self.node.clone(), source: e }),
        }
    }

    /// Moves queued messages into the connection's send buffer.
    fn flush(&mut self, now: Instant) -> Result<(), ControlError> {
        while let Some((kind, text)) = self.outbox.front() {
            let sent = self
                .conn
                .try_send_control(*kind, 0, 0, text.as_bytes())
                .map_err(|e| ControlError::Connection { node: self.node.clone(), source: e })?;
            if !sent {
                let since = *self.stuck_since.get_or_insert(now);
                if now.saturating_duration_since(since) > STUCK_MAX {
                    return Err(ControlError::Stuck { node: self.node.clone(), queued: self.outbox.len() });
                }
                return Ok(());
            }
            self.outbox.pop_front();
            self.stuck_since = None;
        }
        Ok(())
    }

    /// Whether everything queued has been written to the connection.
    pub(crate) fn is_flushed(&self) -> bool {
        self.outbox.is_empty() && self.conn.unsent_bytes() == 0
    }

    /// When the peer was last heard, in ms since `started`.
    pub(crate) fn conn_last_heard_ms(&self, started: Instant) -> u64 {
        self.conn.last_heard().saturating_duration_since(started).as_millis() as u64
    }

    /// How long the peer has been silent.
    pub(crate) fn silent(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.conn.last_heard())
    }
}
