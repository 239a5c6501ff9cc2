//! The client side of `spate ctl` ([`request`]): one request to a running
//! cluster's coordinator, on a control connection of its own (`adm:<n>`),
//! answered once it is done or refused (see [`Msg::Control`]).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use spate_net::Connection;

use crate::control::error::ControlError;
use crate::control::msg::Msg;
use crate::control::peer::Peer;

/// Sends `request` to the coordinator listening at `addr` (job `cluster`)
/// and waits for its answer, at most `timeout`: `(done, text)`.
pub fn request(
    addr: SocketAddr,
    cluster: u64,
    request: &str,
    timeout: Duration,
) -> Result<(bool, String), ControlError> {
    let name = format!("adm:{}", std::process::id());
    let deadline = Instant::now() + timeout;
    let conn = Connection::connect(addr, &crate::link::net_config(name.clone(), cluster), deadline)
        .and_then(|c| c.wait())
        .map_err(|source| ControlError::Connection { node: format!("coordinator at {addr}"), source })?;
    let mut peer = Peer::new(format!("coordinator at {addr}"), conn);
    peer.send(&Msg::Control { request: request.to_string() }, Instant::now())?;
    loop {
        peer.poll(Instant::now())?;
        if let Some(i) = peer.inbox.iter().position(|m| matches!(m, Msg::Reply { .. })) {
            if let Msg::Reply { ok, text } = peer.inbox.remove(i) {
                return Ok((ok, text));
            }
        }
        if peer.closed {
            return Err(ControlError::Job(format!(
                "the coordinator at {addr} closed the connection before answering `{request}`"
            )));
        }
        if Instant::now() >= deadline {
            return Err(ControlError::Job(format!(
                "no answer to `{request}` from the coordinator at {addr} within {} s",
                timeout.as_secs()
            )));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

pub use crate::assignment::StepBounds;
