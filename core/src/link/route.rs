//! Where an outbox's batches go ([`Tx`]) and where an input item's come
//! from ([`Rx`]): a ring to a worker of this process, or a channel of a
//! [`NetLink`] to a worker of another.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;

use spate_net::frame::DataHeader;

use crate::batch::{Batch, FLAG_BARRIER, FLAG_COMPACT, FLAG_FINAL, FLAG_HANDOFF};
use crate::link::conn::Conn;
use crate::link::netlink::NetLink;
use crate::ring::{Consumer, Producer};

/// Where an outbox's batches go.
pub(crate) enum Tx<C> {
    Ring(Producer<Batch>),
    Net { link: Rc<RefCell<NetLink<C>>>, channel: u32 },
}

impl<C: Conn> Tx<C> {
    /// Sends `b`, or gives it back if there is no room (or credit). A
    /// batch sent to another process comes back too, as `Ok(Some(b))`: it
    /// was copied into the connection, and the caller may keep it for
    /// replay.
    pub(crate) fn try_push(&self, b: Batch) -> Result<Option<Batch>, Batch> {
        match self {
            Tx::Ring(p) => p.try_push(b).map(|()| None),
            Tx::Net { link, channel } => {
                let mut l = link.borrow_mut();
                if l.down.is_some() {
                    return Err(b);
                }
                let h = DataHeader {
                    edge: b.edge,
                    producer: b.producer,
                    watermark: b.watermark,
                    count: b.count,
                    flags: b.flags | if b.compact { FLAG_COMPACT } else { 0 },
                };
                let barrier = b.barrier.to_le_bytes();
                // A barrier's id and a handoff marker's version travel as
                // the payload (neither batch has records).
                let payload: &[u8] =
                    if b.flags & (FLAG_BARRIER | FLAG_HANDOFF) != 0 { &barrier } else { &b.data };
                match l.conn.try_send_data(*channel, b.seq, &h, payload) {
                    Ok(true) => {
                        if b.flags & FLAG_FINAL != 0 {
                            l.open_out.remove(channel);
                        }
                        Ok(Some(b))
                    }
                    // A send error closes the connection: `is_closed` says so.
                    Ok(false) | Err(_) => Err(b),
                }
            }
        }
    }

    /// Whether the receiving side is gone.
    pub(crate) fn is_closed(&self) -> bool {
        match self {
            Tx::Ring(p) => p.is_closed(),
            Tx::Net { link, .. } => {
                let l = link.borrow();
                // A live link that broke waits to be re-linked.
                !l.live && l.conn.is_closed()
            }
        }
    }
}

/// Where an input item's batches come from.
pub(crate) enum Rx<C> {
    Ring(Consumer<Batch>),
    Net { link: Rc<RefCell<NetLink<C>>>, channel: u32, queue: Rc<RefCell<VecDeque<Batch>>> },
}

impl<C: Conn> Rx<C> {
    pub(crate) fn try_pop(&self) -> Option<Batch> {
        match self {
            Rx::Ring(c) => c.try_pop(),
            Rx::Net { link, channel, queue } => {
                let b = queue.borrow_mut().pop_front()?;
                // The batch is taken: its credit goes back to the producer
                // (unless the stream is over and this side half-closed).
                let mut l = link.borrow_mut();
                if !l.half_closed {
                    let _ = l.conn.release(*channel, 1);
                }
                Some(b)
            }
        }
    }

    /// `(batches waiting, most it holds)`, for load reports.
    pub(crate) fn fill(&self) -> (usize, usize) {
        match self {
            Rx::Ring(c) => (c.len(), c.capacity()),
            Rx::Net { queue, .. } => (queue.borrow().len(), crate::limits::NET_CREDIT_WINDOW as usize),
        }
    }

    /// Whether the producer has gone and every batch was taken.
    pub(crate) fn is_finished(&self) -> bool {
        match self {
            Rx::Ring(c) => c.is_finished(),
            Rx::Net { link, queue, .. } => {
                let l = link.borrow();
                l.down.is_none() && (l.ended || (!l.live && l.conn.is_closed())) && queue.borrow().is_empty()
            }
        }
    }
}
