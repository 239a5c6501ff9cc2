//! A worker's side of live recovery (docs/ARCHITECTURE.md, "Recovery"):
//! the mailbox through which the node hands it the links of replacements
//! of failed workers ([`RelinkBoard`]), and what the worker does with them
//! and between them ([`Live`]): re-link, replay its buffered output since
//! the replacement's checkpoint, restart its receive counts, trim buffers
//! and counts as checkpoints complete, throttle its sources while the
//! buffers are full, and fail a link that stays down too long.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::link::netlink::NetLink;
use crate::link::Conn;
use crate::runtime::error::WorkerError;
use crate::runtime::flusher::Flusher;
use crate::runtime::item::{Ckpt, Item, Work};
use crate::sabotage::{self, Bug};

/// How long a link to a vanished worker may stay down before the job
/// fails (the coordinator normally re-links it, or rolls the job back,
/// well before).
pub(crate) const LINK_DOWN_MAX: Duration = Duration::from_secs(30);

/// Live recovery's mailbox (docs/ARCHITECTURE.md, decision 25): the
/// connections from replacements of failed workers, handed by the node to
/// the local workers they link to, which re-link and replay at their next
/// loop turn.
pub(crate) struct RelinkBoard<C> {
    /// Per local worker (its slot in the node's list): `(remote worker,
    /// connection from its replacement)`.
    pub(crate) inbox: Vec<Mutex<Vec<(usize, C)>>>,
    pub(crate) pending: Vec<AtomicBool>,
    /// The checkpoint the replacements restored (0: none).
    pub(crate) checkpoint: AtomicU64,
    /// A replay buffer of this node gave up (stayed full with no checkpoint
    /// to trim it): a replacement could not be replayed what it lost.
    pub(crate) overflowed: Arc<AtomicBool>,
}

/// A worker's side of live recovery.
pub(crate) struct Live<C> {
    pub(crate) board: Arc<RelinkBoard<C>>,
    pub(crate) slot: usize,
    /// Its links to remote workers.
    pub(crate) links: Vec<(usize, Rc<RefCell<NetLink<C>>>)>,
    /// The checkpoint the buffers were last trimmed to.
    pub(crate) trimmed: u64,
    /// Since when a replay buffer has been full, with no trim since.
    pub(crate) full_since: Option<Instant>,
    /// How long buffers may stay full before they are given up.
    pub(crate) grace: Duration,
    /// Bytes the replay buffers may hold.
    pub(crate) limit: usize,
    /// Whether throttling was reported.
    pub(crate) told: bool,
}

impl<C: Conn> Live<C> {
    /// Takes the connections replacements made to this worker: re-links,
    /// replays the buffers and restarts the receivers' counts.
    pub(crate) fn relink(
        &mut self,
        items: &mut [Item<C>],
        flusher: &mut Flusher<C>,
        ckpt: &Ckpt,
    ) -> Result<(), WorkerError> {
        self.board.pending[self.slot].store(false, Ordering::SeqCst);
        let conns = match self.board.inbox[self.slot].lock() {
            Ok(mut q) => std::mem::take(&mut *q),
            Err(_) => return Err(WorkerError::MailboxPoisoned),
        };
        let checkpoint = self.board.checkpoint.load(Ordering::Acquire);
        ckpt.sync_abort();
        for (v, conn) in conns {
            let Some((_, link)) = self.links.iter().find(|(r, _)| *r == v) else {
                return Err(WorkerError::UnknownRelink { worker: v });
            };
            {
                let mut l = link.borrow_mut();
                l.relink(conn);
                flusher.replay_to(v, checkpoint, &mut l)?;
            }
            for item in items.iter_mut() {
                match &mut item.work {
                    Work::Input { cursor: Some((r, c)), edge, .. } if *r == v => {
                        c.restart(checkpoint, item.done).map_err(|source| WorkerError::Relink {
                            edge: *edge,
                            worker: v,
                            source,
                        })?;
                        item.done = false;
                    }
                    Work::Net(l) if l.borrow().remote == v => item.done = false,
                    _ => {}
                }
            }
        }
        Ok(())
    }

    /// Trims the buffers and counts to the last complete checkpoint, and
    /// fails a link that stayed down too long.
    pub(crate) fn maintain(
        &mut self,
        items: &mut [Item<C>],
        flusher: &mut Flusher<C>,
        ckpt: &Ckpt,
        now: Instant,
    ) -> Result<(), WorkerError> {
        let done = ckpt.checkpointer.as_ref().map_or(0, |c| {
            let coord = c.coordinator();
            if sabotage::on(Bug::TrimEarly) {
                coord.requested()
            } else {
                coord.completed()
            }
        });
        if done > self.trimmed {
            self.trimmed = done;
            flusher.trim_logs(done);
            for item in items.iter_mut() {
                if let Work::Input { cursor: Some((_, c)), .. } = &mut item.work {
                    c.trim(done);
                }
            }
            // Checkpoints are trimming: the grace starts again.
            self.full_since = None;
        }
        let bytes = flusher.logged_bytes();
        flusher.throttled = bytes >= self.limit;
        if !flusher.throttled {
            self.full_since = None;
        } else {
            let since = *self.full_since.get_or_insert(now);
            if !std::mem::replace(&mut self.told, true) {
                let me = self.links.first().map_or(0, |(_, l)| l.borrow().me);
                eprintln!(
                    "spate: worker {me}: its replay buffers are full ({bytes} bytes): throttling the sources \
                     until a checkpoint trims them"
                );
            }
            if now.saturating_duration_since(since) > self.grace {
                // No checkpoint is coming to trim them.
                flusher.give_up_logs();
                flusher.throttled = false;
                self.full_since = None;
                self.board.overflowed.store(true, Ordering::Release);
            }
        }
        for (v, link) in &self.links {
            if let Some((_, why)) = link.borrow().down_for(now).filter(|&(t, _)| t > LINK_DOWN_MAX) {
                return Err(WorkerError::LinkDown { worker: *v, why: why.to_string(), after: LINK_DOWN_MAX });
            }
        }
        Ok(())
    }
}
