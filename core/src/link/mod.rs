//! Links between workers of different node processes.
//!
//! A job can span several node processes ([`ClusterPlacement`](crate::control::ClusterPlacement)): the job's
//! workers are numbered globally, node by node, and each process runs its
//! own range. Batches between two workers of one process travel on rings;
//! between workers of different processes, on a `spate_net` connection —
//! one per pair of workers, carrying both directions and multiplexing every
//! edge as a channel (`edge * W² + producer * W + consumer`). With one
//! worker per node, as deployments on small VMs run, that is one connection
//! per node pair.
//!
//! The sending side is the same outbox as for a ring (`Tx::Net`, in `route`): a batch
//! that finds no credit or no room in the connection's send buffer stays in
//! the outbox's backlog. The receiving side (`NetLink`, in `netlink`, polled as a work
//! item of the worker loop) decodes each data frame into a [`Batch`](crate::batch::Batch) and
//! queues it for its (edge, producer) input item, which takes it like a
//! ring's and gives the credit back: the queue is bounded by the credit
//! window, and a consumer that stops taking batches stops its producer.
//!
//! Closing: a worker half-closes a connection once it has sent every final
//! batch on it and received every final batch from it (no credit grant is
//! needed after that), and is done with it when the peer's half-close
//! arrives. Neither side waits on the other before that point, so closing
//! cannot deadlock, and no byte is discarded by a reset.
//!
//! Map: [`conn`] (the [`Conn`] trait the links and the control plane run
//! over, implemented by `spate_net::Connection` and by the simulator's
//! connections), `netlink` (one link, polled), `route` (`Tx`/`Rx`:
//! ring or link), [`mesh`] (which links a share opens and accepts, sans-IO),
//! [`error`] (what goes wrong: [`LinkError`], [`MeshError`]).

pub mod conn;
pub mod error;
pub mod mesh;
pub(crate) mod netlink;
pub(crate) mod route;

pub use conn::Conn;
pub use error::{LinkError, MeshError, MissingLink};
pub use mesh::{link_name, parse_link_name, Mesh, Outgoing};

use spate_net::NetConfig;

/// The connection settings of a cluster job's links (and of a node's
/// listener: it announces the credit window of the links it accepts).
pub fn net_config(node: String, cluster: u64) -> NetConfig {
    let mut c = NetConfig::new(node, cluster);
    c.credit_window = crate::limits::NET_CREDIT_WINDOW;
    c
}

/// The channel of `edge` from `producer` to `consumer` among `workers`.
pub(crate) fn channel(edge: usize, producer: usize, consumer: usize, workers: usize) -> u32 {
    (edge * workers * workers + producer * workers + consumer) as u32
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::rc::Rc;
    use std::time::Instant;

    use spate_net::Connection;

    use super::netlink::NetLink;
    use super::route::Tx;
    use super::*;
    use crate::batch::{Batch, FLAG_FINAL};
    use spate_net::conn::{Listener, NetConfig};
    use std::time::Duration;

    /// A connected pair over loopback, both ends polled from this thread.
    fn pair() -> (Connection, Connection) {
        let deadline = Instant::now() + Duration::from_secs(10);
        let addr = "127.0.0.1:0".parse().unwrap_or_else(|e| panic!("{e}"));
        let config = |name: &str| {
            let mut c = NetConfig::new(name, 7);
            c.credit_window = 64;
            c
        };
        let mut listener = Listener::bind(addr, config("y")).unwrap_or_else(|e| panic!("{e}"));
        let local = listener.local_addr();
        let mut connecting =
            Connection::connect(local, &config("x"), deadline).unwrap_or_else(|e| panic!("{e}"));
        let (mut x, mut y) = (None, None);
        while x.is_none() || y.is_none() {
            assert!(Instant::now() < deadline, "handshake timed out");
            if x.is_none() {
                x = connecting.poll().unwrap_or_else(|e| panic!("{e}"));
            }
            if y.is_none() {
                y = listener.poll_accept().unwrap_or_else(|e| panic!("{e}"));
            }
        }
        (x.unwrap_or_else(|| unreachable!()), y.unwrap_or_else(|| unreachable!()))
    }

    /// Batch `seq` of `edge` from `producer` (empty; the final one when
    /// `last`).
    fn batch(edge: u32, producer: u32, seq: u64, last: bool) -> Batch {
        let mut b = Batch::with_capacity(edge, producer, 0);
        b.seq = seq;
        if last {
            b.flags = FLAG_FINAL;
        }
        b
    }

    /// Polls `l` until `done` or 5 s.
    fn poll_until(l: &Rc<RefCell<NetLink<Connection>>>, done: impl Fn(&NetLink<Connection>) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !done(&l.borrow()) {
            assert!(Instant::now() < deadline, "link state not reached");
            let _ = l.borrow_mut().poll(Instant::now());
        }
    }

    #[test]
    fn a_live_link_whose_peer_ends_in_the_same_read_as_its_last_batch_is_through_not_down() {
        // Worker 0 (x) sends worker 1 (y) three edges, y sends x one.
        const EDGES: u32 = 3;
        let (cx, cy) = pair();
        let to_x = channel(0, 1, 0, 2);
        let x = Rc::new(RefCell::new(NetLink::new(cx, 1, 0, 2)));
        let y = Rc::new(RefCell::new(NetLink::new(cy, 0, 1, 2)));
        for (l, me, peer) in [(&x, 0, 1), (&y, 1, 0)] {
            let mut l = l.borrow_mut();
            l.set_live();
            for e in 0..EDGES as usize {
                let (out, inp) = (channel(e, me, peer, 2), channel(e, peer, me, 2));
                if me == 0 {
                    l.sends_on(out);
                } else {
                    let _ = l.queue(inp);
                }
            }
            if me == 1 {
                l.sends_on(to_x);
            } else {
                let _ = l.queue(to_x);
            }
        }
        // y ends its stream first; x takes it in.
        let ty = Tx::Net { link: y.clone(), channel: to_x };
        assert!(matches!(ty.try_push(batch(0, 1, 1, true)), Ok(Some(_))));
        poll_until(&y, |l| l.conn.unsent_bytes() == 0);
        poll_until(&x, |l| l.open_in.is_empty());
        // x sends more frames than y takes in one poll, ends every edge and
        // half-closes: y reads the end of the stream while the last batches
        // are still buffered, and takes them in the same poll as the end.
        for e in 0..EDGES {
            let tx = Tx::Net { link: x.clone(), channel: channel(e as usize, 0, 1, 2) };
            for seq in 1..=30u64 {
                assert!(matches!(tx.try_push(batch(e, 0, seq, seq == 30)), Ok(Some(_))));
            }
        }
        poll_until(&x, |l| l.half_closed);
        std::thread::sleep(Duration::from_millis(50));
        poll_until(&y, |l| l.is_done() || l.down.is_some());
        let yl = y.borrow();
        assert!(yl.down.is_none(), "the link went down: {:?}", yl.down);
        assert!(yl.is_done());
    }
}
