//! The connection a worker link or a control connection runs over: what
//! the runtime and the control plane need of [`spate_net::Connection`],
//! as a trait, so that the simulator (`crate::sim`) can run the same code
//! over a simulated network. Production uses `spate_net::Connection`
//! itself (the impl below forwards every call); nothing here allocates or
//! adds a call on the data path beyond the monomorphised forward.

use std::time::Instant;

use spate_net::frame::{DataHeader, Frame, Kind};
use spate_net::{Delivery, NetError};

/// A framed, multiplexed, credit-controlled connection to one peer,
/// driven by non-blocking calls (see [`spate_net::Connection`] for the
/// contract of each method: the simulator's connections keep it).
pub trait Conn {
    /// The peer's node name (from its hello).
    fn peer_node(&self) -> &str;
    /// Writes queued frames and reads what arrived; whether anything moved.
    fn poll_io(&mut self) -> Result<bool, NetError>;
    /// Hands out up to `budget` received frames.
    fn poll_recv<F>(&mut self, budget: usize, on_frame: F) -> Result<usize, NetError>
    where
        F: FnMut(Frame<'_>) -> Delivery;
    /// Queues a data frame if `channel` has credit and the send buffer room.
    fn try_send_data(
        &mut self,
        channel: u32,
        seq: u64,
        data: &DataHeader,
        records: &[u8],
    ) -> Result<bool, NetError>;
    /// Queues a control frame if the send buffer has room.
    fn try_send_control(
        &mut self,
        kind: Kind,
        channel: u32,
        seq: u64,
        payload: &[u8],
    ) -> Result<bool, NetError>;
    /// Gives back the credit of `n` held frames of `channel`.
    fn release(&mut self, channel: u32, n: u32) -> Result<(), NetError>;
    /// Sends a heartbeat if nothing was sent for a while (`now` is the
    /// caller's clock).
    fn poll_heartbeat(&mut self, now: Instant) -> Result<bool, NetError>;
    /// Closes the sending direction once everything queued is written.
    fn shutdown_write(&mut self) -> Result<bool, NetError>;
    /// Whether an error has closed the connection.
    fn is_closed(&self) -> bool;
    /// Bytes queued and not yet written.
    fn unsent_bytes(&self) -> usize;
    /// When bytes last arrived from the peer.
    fn last_heard(&self) -> Instant;
}

impl Conn for spate_net::Connection {
    #[inline]
    fn peer_node(&self) -> &str {
        &self.peer().node
    }
    #[inline]
    fn poll_io(&mut self) -> Result<bool, NetError> {
        spate_net::Connection::poll_io(self)
    }
    #[inline]
    fn poll_recv<F>(&mut self, budget: usize, on_frame: F) -> Result<usize, NetError>
    where
        F: FnMut(Frame<'_>) -> Delivery,
    {
        spate_net::Connection::poll_recv(self, budget, on_frame)
    }
    #[inline]
    fn try_send_data(
        &mut self,
        channel: u32,
        seq: u64,
        data: &DataHeader,
        records: &[u8],
    ) -> Result<bool, NetError> {
        spate_net::Connection::try_send_data(self, channel, seq, data, records)
    }
    #[inline]
    fn try_send_control(
        &mut self,
        kind: Kind,
        channel: u32,
        seq: u64,
        payload: &[u8],
    ) -> Result<bool, NetError> {
        spate_net::Connection::try_send_control(self, kind, channel, seq, payload)
    }
    #[inline]
    fn release(&mut self, channel: u32, n: u32) -> Result<(), NetError> {
        spate_net::Connection::release(self, channel, n)
    }
    #[inline]
    fn poll_heartbeat(&mut self, now: Instant) -> Result<bool, NetError> {
        spate_net::Connection::poll_heartbeat(self, now)
    }
    #[inline]
    fn shutdown_write(&mut self) -> Result<bool, NetError> {
        spate_net::Connection::shutdown_write(self)
    }
    #[inline]
    fn is_closed(&self) -> bool {
        spate_net::Connection::is_closed(self)
    }
    #[inline]
    fn unsent_bytes(&self) -> usize {
        spate_net::Connection::unsent_bytes(self)
    }
    #[inline]
    fn last_heard(&self) -> Instant {
        spate_net::Connection::last_heard(self)
    }
}
