//! One control connection (coordinator ↔ node): control frames carrying
//! [`Msg`]s, heartbeats, and the messages received and not yet taken.

use std::time::{Duration, Instant};

use spate_net::{Connection, Delivery, NetErrorKind};

use crate::control::msg::Msg;

/// One control connection, with the messages received and not yet taken.
pub(crate) struct Peer {
    pub(crate) node: String,
    pub(crate) conn: Connection,
    /// The peer closed its side.
    pub(crate) closed: bool,
    pub(crate) inbox: Vec<Msg>,
}

pub(crate) fn ctl_name(node: &str) -> String {
    format!("ctl:{node}")
}

impl Peer {
    /// Moves bytes; queues received control messages; heartbeats.
    pub(crate) fn poll(&mut self, now: Instant) -> Result<(), String> {
        if self.closed {
            return Ok(());
        }
        let node = self.node.clone();
        let err = |e: spate_net::NetError| format!("control connection to node `{node}`: {e}");
        let ended =
            |e: &spate_net::NetError| matches!(e.kind, NetErrorKind::PeerClosed | NetErrorKind::Closed);
        match self.conn.poll_io() {
            Ok(_) => {}
            Err(e) if ended(&e) => {}
            Err(e) => return Err(err(e)),
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
            return Err(format!("node `{}`: {e}", self.node));
        }
        match got {
            Ok(_) => self.conn.poll_heartbeat(now).map(|_| ()).map_err(err),
            Err(e) if ended(&e) => {
                self.closed = true;
                Ok(())
            }
            Err(e) => Err(err(e)),
        }
    }

    pub(crate) fn send(&mut self, msg: &Msg) -> Result<(), String> {
        let (kind, text) = msg.encode();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let sent = self
                .conn
                .try_send_control(kind, 0, 0, text.as_bytes())
                .map_err(|e| format!("control connection to node `{}`: {e}", self.node))?;
            if sent {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!("node `{}` does not take control messages", self.node));
            }
            self.poll(Instant::now())?;
            std::thread::sleep(Duration::from_millis(1));
        }
        // Push it out now.
        while self.conn.unsent_bytes() > 0 && Instant::now() < deadline {
            self.poll(Instant::now())?;
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(())
    }

    /// How long the peer has been silent.
    pub(crate) fn silent(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.conn.last_heard())
    }
}
