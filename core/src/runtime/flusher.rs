//! Moving a worker's closed batches from its outboxes into rings and links
//! without ever waiting ([`Flusher`]): the touch list of the last step, the
//! backlog of outboxes whose ring or link was full, the linger tick, and —
//! with live recovery — the replay logs of what went to other nodes.

use std::cell::RefCell;
use std::rc::Rc;

use crate::batch::Batch;
use crate::exchange::{Outbox, TouchList};
use crate::link::netlink::NetLink;
use crate::link::route::Tx;
use crate::link::Conn;
use crate::replay::{LogStore, ReplayLog};
use crate::runtime::error::WorkerError;
use crate::sabotage::{self, Bug};
use crate::time::now_ns;

/// One outbox with the ring its batches go to.
pub(crate) struct Route<C> {
    pub(crate) outbox: Rc<RefCell<Outbox>>,
    pub(crate) tx: Tx<C>,
    /// Whether the outbox is on the backlog list.
    pub(crate) backlogged: bool,
    /// With live recovery, on a channel to another node: what was sent
    /// since the last complete checkpoint.
    pub(crate) log: Option<ReplayLog>,
}

/// Moves closed batches from outboxes into rings, never waiting.
///
/// Batches go out in order per outbox: every path below takes them from the
/// front of the outbox's queue and puts one that does not fit back there,
/// and nothing runs concurrently on a worker.
pub(crate) struct Flusher<C> {
    /// `routes[edge][dest]`.
    pub(crate) routes: Vec<Vec<Option<Route<C>>>>,
    pub(crate) touched: TouchList,
    pub(crate) spare: Vec<(u32, u32)>,
    /// Outboxes holding closed batches that did not fit in their ring.
    pub(crate) backlog: Vec<(u32, u32)>,
    pub(crate) linger_ns: u64,
    /// A replay buffer is full: sources wait (see `crate::replay`).
    pub(crate) throttled: bool,
    /// The records of the replay buffers.
    pub(crate) store: LogStore,
}

/// What sending one outbox's batches did.
#[derive(PartialEq, Eq)]
pub(crate) enum Sent {
    /// Everything that was due went out.
    All,
    /// The ring filled up; batches wait in the outbox.
    Full,
    /// The receiving worker is gone.
    Closed,
}

impl<C: Conn> Flusher<C> {
    /// `b` came in on edge `e` from worker `p` and was read: its buffer
    /// serves this worker's next batch to `p` on that edge. Its lines are
    /// in this worker's cache, having just been read; a buffer from the
    /// allocator was last read by the other worker (the one that freed it),
    /// and writing it took each line back from that worker's cache first:
    /// with two workers, `Outbox::push_run`'s stores into fresh buffers
    /// took 24–31 % of keyed-sum's samples on a contended VM (6 % on a quiet
    /// one). With this, ×1.045–1.059 (9 rounds of 20 M records, contended).
    /// (Giving the buffer back to the worker that wrote it, tried in
    /// session 15, moved the lines across the other way and ran slower.)
    pub(crate) fn recycle_received(&mut self, e: u32, p: u32, b: Batch) {
        if let Some(r) = Self::route(&mut self.routes, e, p) {
            r.outbox.borrow_mut().recycle(b);
        }
    }

    fn route(routes: &mut [Vec<Option<Route<C>>>], e: u32, d: u32) -> Option<&mut Route<C>> {
        routes.get_mut(e as usize).and_then(|r| r.get_mut(d as usize)).and_then(Option::as_mut)
    }

    /// Sends what is due on one outbox: closed batches, then (with
    /// `linger_ns` passed at `now`) the open one; `watermark_only` also
    /// sends a batch that only advances the watermark.
    fn send(
        r: &mut Route<C>,
        store: &mut LogStore,
        linger_ns: u64,
        now: u64,
        watermark_only: bool,
        moved: &mut usize,
    ) -> Sent {
        loop {
            let next = r.outbox.borrow_mut().take_next(linger_ns, now, watermark_only);
            let Some(b) = next else { return Sent::All };
            match r.tx.try_push(b) {
                Ok(Some(b)) => {
                    // Copied into the connection (and the log): its buffer
                    // goes back to the outbox.
                    if let Some(log) = &mut r.log {
                        log.keep(store, &b);
                    }
                    r.outbox.borrow_mut().recycle(b);
                }
                Ok(None) => {}
                Err(b) => {
                    r.outbox.borrow_mut().put_back(b);
                    return if r.tx.is_closed() { Sent::Closed } else { Sent::Full };
                }
            }
            *moved += 1;
        }
    }

    /// Bytes in the replay buffers.
    pub(crate) fn logged_bytes(&self) -> usize {
        self.routes.iter().flatten().flatten().filter_map(|r| r.log.as_ref()).map(ReplayLog::bytes).sum()
    }

    /// Gives up every replay buffer.
    pub(crate) fn give_up_logs(&mut self) {
        for r in self.routes.iter_mut().flatten().flatten() {
            if let Some(log) = r.log.as_mut() {
                log.give_up(&mut self.store);
            }
        }
    }

    /// Checkpoint `completed` is complete everywhere: trims the replay
    /// buffers.
    pub(crate) fn trim_logs(&mut self, completed: u64) {
        for r in self.routes.iter_mut().flatten().flatten() {
            if let Some(log) = &mut r.log {
                log.trim(&mut self.store, completed);
            }
        }
    }

    /// Worker `remote` was replaced by one restored at `checkpoint`: queues
    /// again, ahead of anything not sent yet, every batch sent to it since
    /// that checkpoint's barrier.
    pub(crate) fn replay_to(
        &mut self,
        remote: usize,
        checkpoint: u64,
        link: &mut NetLink<C>,
    ) -> Result<(), WorkerError> {
        if sabotage::on(Bug::NoReplay) {
            return Ok(());
        }
        for (e, by_dest) in self.routes.iter_mut().enumerate() {
            let Some(Some(r)) = by_dest.get_mut(remote) else { continue };
            let Some(log) = &mut r.log else { continue };
            let again = log
                .take_after(&mut self.store, checkpoint)
                .map_err(|source| WorkerError::Replay { edge: e, worker: remote, source })?;
            if again.iter().any(Batch::is_final) {
                if let Tx::Net { channel, .. } = &r.tx {
                    link.reopen_out(*channel);
                }
            }
            let any = !again.is_empty();
            r.outbox.borrow_mut().replay(again.into_iter());
            if any && !r.backlogged {
                r.backlogged = true;
                self.backlog.push((e as u32, remote as u32));
            }
        }
        Ok(())
    }

    /// Sends the batches of the outboxes the last step touched (partly
    /// filled ones too once their linger has passed: at once with linger 0,
    /// or with `force`). Outboxes whose ring is full go on the backlog and
    /// into `waiting`: the step's item must wait for them.
    pub(crate) fn flush_touched(
        &mut self,
        force: bool,
        waiting: &mut Vec<(u32, u32)>,
    ) -> Result<(), WorkerError> {
        // Swap the list with a spare so that steady state allocates nothing.
        let mut touched = std::mem::take(&mut self.spare);
        std::mem::swap(&mut touched, &mut *self.touched.borrow_mut());
        let linger = if force { 0 } else { self.linger_ns };
        let now = if linger > 0 { now_ns() } else { 0 };
        let mut result = Ok(());
        for &(e, d) in &touched {
            let Some(r) = Self::route(&mut self.routes, e, d) else { continue };
            r.outbox.borrow_mut().untouch();
            let sent = Self::send(r, &mut self.store, linger, now, force, &mut 0);
            match sent {
                Sent::All => {}
                Sent::Full => {
                    waiting.push((e, d));
                    if !r.backlogged {
                        r.backlogged = true;
                        self.backlog.push((e, d));
                    }
                }
                Sent::Closed => result = Err(stopped(e, d)),
            }
        }
        touched.clear();
        self.spare = touched;
        result
    }

    /// Retries the backlog; whether anything went out.
    pub(crate) fn drain_backlog(&mut self) -> Result<bool, WorkerError> {
        if self.backlog.is_empty() {
            return Ok(false);
        }
        let mut backlog = std::mem::take(&mut self.backlog);
        let mut moved = 0;
        let mut result = Ok(());
        backlog.retain(|&(e, d)| {
            let Some(r) = self.routes.get_mut(e as usize).and_then(|r| r.get_mut(d as usize)) else {
                return false;
            };
            let Some(r) = r.as_mut() else { return false };
            let sent = Self::send(r, &mut self.store, u64::MAX, 0, false, &mut moved);
            if sent == Sent::Closed {
                result = Err(stopped(e, d));
            }
            r.backlogged = sent != Sent::All;
            r.backlogged
        });
        self.backlog = backlog;
        result.map(|()| moved > 0)
    }

    /// Whether an outbox still holds closed batches.
    pub(crate) fn is_backed_up(&self, e: u32, d: u32) -> bool {
        self.routes
            .get(e as usize)
            .and_then(|r| r.get(d as usize))
            .and_then(Option::as_ref)
            .is_some_and(|r| r.backlogged)
    }

    /// The linger tick: sends every outbox's due partly filled batch and
    /// watermark advance (`force`: everything, for the end of the job).
    pub(crate) fn flush_idle(&mut self, force: bool) -> Result<(), WorkerError> {
        let linger = if force { 0 } else { self.linger_ns };
        let now = if linger > 0 { now_ns() } else { 0 };
        let mut result = Ok(());
        for (e, by_dest) in self.routes.iter_mut().enumerate() {
            for (d, r) in by_dest.iter_mut().enumerate() {
                let Some(r) = r.as_mut() else { continue };
                if r.backlogged || !r.outbox.borrow().has_open() {
                    continue;
                }
                match Self::send(r, &mut self.store, linger, now, true, &mut 0) {
                    Sent::All => {}
                    Sent::Full => {
                        r.backlogged = true;
                        self.backlog.push((e as u32, d as u32));
                    }
                    Sent::Closed => result = Err(stopped(e as u32, d as u32)),
                }
            }
        }
        result
    }

    /// Whether every outbox has sent everything, its final batch included.
    pub(crate) fn all_sent(&self) -> bool {
        self.backlog.is_empty()
            && self.routes.iter().flatten().flatten().all(|r| !r.outbox.borrow().has_open())
    }
}

/// Worker `d` stopped taking the batches of edge `e`.
fn stopped(e: u32, d: u32) -> WorkerError {
    WorkerError::StoppedTaking { edge: e as usize, worker: d as usize }
}
