//! Repartitioning edges: the sending side routes each record by key hash
//! through the routing table into a batch per destination worker (an
//! [`Outbox`]); the receiving side decodes batches from every producer,
//! merges their watermarks and pushes records downstream.
//!
//! Records whose owner is the sending worker itself skip serialization: they
//! are pushed straight into the local receiver (fusion across the edge).
//!
//! - `outbox`: the batches per destination ([`Outbox`]), closed on size
//!   or linger;
//! - `receiver`: the receiving side (`EdgeReceiver`), merging the
//!   producers' watermarks and barriers;
//! - `sender`: the sending side (`ExchangeSender`), routing records and
//!   bursts by key;
//! - here: one edge's endpoints on one worker (`EdgeRuntime`), which the
//!   dataflow builder wires into a worker's build.

use std::any::Any;
use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;

use crate::data::Data;
use crate::metrics::JobMetrics;
use crate::push::{BarrierTracker, BoxPush};

mod outbox;
mod receiver;
mod sender;
#[cfg(test)]
mod tests;

pub use outbox::Outbox;
pub(crate) use outbox::TouchList;
pub(crate) use receiver::{BatchInput, EdgeReceiver};
pub(crate) use sender::ExchangeSender;

/// One edge's endpoints on one worker.
pub(crate) struct EdgeRuntime {
    /// Per destination worker; `None` for this worker.
    pub(crate) outboxes: Vec<Option<Rc<RefCell<Outbox>>>>,
    /// `Rc<RefCell<EdgeReceiver<T>>>`, created by whichever side asks first.
    local: Option<Box<dyn Any>>,
    pub(crate) input: Option<Rc<RefCell<dyn BatchInput>>>,
    pub(crate) sender_installed: bool,
}

impl EdgeRuntime {
    pub(crate) fn new(
        edge: u32,
        me: usize,
        workers: usize,
        touch_list: &TouchList,
        batch_records: usize,
        batch_bytes: usize,
    ) -> Self {
        let outboxes = (0..workers)
            .map(|d| {
                (d != me).then(|| {
                    Rc::new(RefCell::new(Outbox::new(
                        edge,
                        me as u32,
                        d as u32,
                        touch_list.clone(),
                        batch_records,
                        batch_bytes,
                    )))
                })
            })
            .collect();
        Self { outboxes, local: None, input: None, sender_installed: false }
    }

    /// Marks every outbox final: this worker hosts no sender on the edge.
    pub(crate) fn finish_without_sender(&mut self, me: usize) {
        for o in self.outboxes.iter().flatten() {
            o.borrow_mut().set_final();
        }
        if let Some(l) = self.local.as_ref() {
            // The receiver's type is known only to the typed side; it
            // registered a finisher closure instead.
            if let Some(f) = l.downcast_ref::<LocalFinisher>() {
                (f.0)(me);
            }
        }
    }

    /// The receiving side of `edge` on this worker, from `workers`
    /// producers: created by whichever side (receiver or sender) asks
    /// first, the same one after.
    pub(crate) fn local_receiver<T: Data>(
        &mut self,
        edge: u32,
        workers: usize,
        barriers: &Rc<BarrierTracker>,
        metrics: &Arc<JobMetrics>,
    ) -> Rc<RefCell<EdgeReceiver<T>>> {
        if let Some(l) = self.local.as_ref().and_then(|l| l.downcast_ref::<LocalFinisher>()) {
            if let Some(r) = l.1.downcast_ref::<Rc<RefCell<EdgeReceiver<T>>>>() {
                return r.clone();
            }
        }
        let r =
            Rc::new(RefCell::new(EdgeReceiver::<T>::new(edge, workers, barriers.clone(), metrics.clone())));
        let r2 = r.clone();
        self.local = Some(Box::new(LocalFinisher(
            Box::new(move |me| r2.borrow_mut().finish_from(me)),
            Box::new(r.clone()),
        )));
        r
    }

    /// Installs `r` (see [`EdgeRuntime::local_receiver`]) as the receiving
    /// side of the edge on this worker, feeding `out`.
    pub(crate) fn install_receiver<T: Data>(&mut self, r: Rc<RefCell<EdgeReceiver<T>>>, out: BoxPush<T>) {
        r.borrow_mut().out = Some(out);
        self.input = Some(r as Rc<RefCell<dyn BatchInput>>);
    }
}

struct LocalFinisher(Box<dyn Fn(usize)>, Box<dyn Any>);
