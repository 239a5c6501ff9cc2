//! How the plan recovers: a node failed (fence it; live recovery when it
//! can work, else a global rollback), survivors re-link, replacements
//! join, and the fallbacks — restart after an unexplained share failure,
//! roll every node back, deploy the next epoch.

use super::*;

impl Plan {
    /// Node `i` failed: fence it and, if it ran workers, recover.
    pub(super) fn node_failed(&mut self, i: usize, why: String, now_ms: u64) {
        if self.is_fenced(i) || matches!(self.phase, Phase::Over) {
            return;
        }
        // Whether every node of the placement runs this epoch (before the
        // failure): a live recovery needs every survivor's links up.
        let all_ready = self.ready.len() == self.active().len();
        let was = self.nodes[i].role;
        // A spare may back up the placement's checkpoints (decision 63).
        let held = was == Role::Spare && (0..self.slots.len()).any(|p| self.holders(p).contains(&i));
        self.nodes[i].role = Role::Failed;
        let _ = self.detector.declare_failed(node_id(i), FailureReason::Reported);
        let name = self.nodes[i].name.clone();
        self.actions.push(Action::Fence { node: i, why: why.clone() });
        self.event(format!("failed {name}"));
        self.actions.push(Action::Note(format!("node `{name}` declared failed ({why})")));
        if was == Role::Spare {
            if held && self.config.interval_ms > 0 && !self.slots.is_empty() {
                self.lost_backup_node(&name, all_ready, now_ms);
            }
            return;
        }
        if i == self.me {
            return self.fail(JobFailure::CoordinatorFailed);
        }
        // Bins moved since the last complete checkpoint: only a rollback
        // to it is consistent (see `rescale.rs`).
        let must = self.must_roll_back();
        // (Slots a join or a leave moved may go back to their nodes: then
        // every node rolls back, even if the failed one ran none.)
        let reverted = self.interrupt(&format!("node `{name}` failed ({why})"));
        let roll_back = must || reverted;
        // Split the failed node's slots into one slot per worker (each
        // owns its own bins): their replacements restore in parallel, and
        // survivors share the load.
        let mut p = self.slots.len();
        while p > 0 {
            p -= 1;
            if self.slots[p] == i && self.slot_workers[p] > 1 {
                let k = self.slot_workers[p];
                let parked = self.parked[p];
                self.slots.splice(p..=p, std::iter::repeat_n(i, k));
                self.slot_workers.splice(p..=p, std::iter::repeat_n(1, k));
                self.parked.splice(p..=p, std::iter::repeat_n(parked, k));
            }
        }
        let lost: Vec<usize> = (0..self.slots.len()).filter(|&p| self.slots[p] == i).collect();
        if lost.is_empty() && !reverted {
            return;
        }
        let mut activated = Vec::new();
        for &pos in &lost {
            // A spare first; else the survivor running the fewest workers
            // takes the slot's workers on top of its own.
            let spare = (0..self.nodes.len()).find(|&j| self.nodes[j].role == Role::Spare);
            let replacement = match spare {
                Some(j) => {
                    self.nodes[j].role = Role::Active;
                    activated.push(j);
                    // A parked slot on a node of its own is a node's slot.
                    self.parked[pos] = false;
                    j
                }
                None => {
                    let Some(j) = self.least_loaded(Some(i)) else {
                        return self.fail(JobFailure::NoNodeLeft { node: name.clone(), why: why.clone() });
                    };
                    j
                }
            };
            self.actions.push(Action::Note(format!(
                "node `{}` takes over the {} workers of node `{name}`",
                self.nodes[replacement].name, self.slot_workers[pos]
            )));
            self.slots[pos] = replacement;
        }
        if self.no_backup_node_left() {
            return self.fail(JobFailure::NoBackupNodeLeft { node: name });
        }
        let survivors: Vec<usize> = self.active().into_iter().filter(|j| !activated.contains(j)).collect();
        if self.config.live
            && !roll_back
            && self.config.interval_ms > 0
            && matches!(self.phase, Phase::Running)
            && was == Role::Active
            && self.finished.is_empty()
            && all_ready
            && !survivors.is_empty()
        {
            return self.relink(&lost, survivors, now_ms);
        }
        // Abort the epoch everywhere (again, if a recovery was under way;
        // a live one included: its joiners too).
        let waiting: HashSet<usize> = match &self.phase {
            Phase::Aborting { waiting, .. } => waiting.iter().copied().filter(|&j| j != i).collect(),
            _ => survivors.into_iter().collect(),
        };
        if !matches!(self.phase, Phase::Aborting { .. }) {
            let mut to: Vec<usize> = waiting.iter().copied().collect();
            to.sort_unstable();
            for j in to {
                self.send(j, Msg::Abort { epoch: self.epoch });
            }
        }
        self.phase = Phase::Aborting { waiting, since_ms: now_ms };
        self.in_flight = None;
        self.share_failed = None;
        self.joining.clear();
    }

    /// Checkpoints need backup nodes and none is left: one node runs the
    /// job and no spare can hold its backups.
    fn no_backup_node_left(&self) -> bool {
        self.config.interval_ms > 0
            && self.config.backups > 0
            && self.active().len() < 2
            && self.pool_holders().is_empty()
    }

    /// A spare that backed up the placement's checkpoints failed: every
    /// node streams its checkpoints to new backup nodes from now on, by a
    /// live recovery that moves no slot (the checkpoints in flight are
    /// void), or by rolling back where that cannot run; with no other node
    /// to back them up, the job fails.
    fn lost_backup_node(&mut self, name: &str, all_ready: bool, now_ms: u64) {
        let roll_back = self.must_roll_back();
        let reverted = self.interrupt(&format!("backup node `{name}` failed"));
        if self.no_backup_node_left() {
            return self.fail(JobFailure::NoBackupNodeLeft { node: name.to_string() });
        }
        if self.config.live
            && !roll_back
            && !reverted
            && matches!(self.phase, Phase::Running)
            && self.finished.is_empty()
            && all_ready
        {
            let survivors = self.active();
            return self.relink(&[], survivors, now_ms);
        }
        if !matches!(self.phase, Phase::Aborting { .. }) {
            self.roll_back(now_ms);
        }
    }

    /// Moves the slots of `moves` — `(position, node)` — to their new nodes
    /// while the job runs (decision 63): parked slots to the spares that
    /// join for them, or (`leaving`) every slot of a node that leaves the
    /// job to the nodes that park them. It is a live recovery without a
    /// failure: survivors keep running, a running node whose slot moves
    /// away stops that share, and each new owner restores the slot from the
    /// last complete checkpoint and links to every worker, which replay to
    /// it. Those workers own no bins and run no source, so little is
    /// restored and replayed (what a broadcast gave them). The leaving node
    /// stops its shares and goes back to the pool as a spare, or — with
    /// `exit` — is released, and its process exits.
    pub(super) fn migrate(&mut self, moves: &[(usize, usize)], leaving: Option<(usize, bool)>, now_ms: u64) {
        let mut activated = Vec::new();
        let last = self.last_complete.as_ref().map_or(0, |c| c.manifest.id);
        for &(pos, to) in moves {
            if self.nodes[to].role == Role::Spare {
                self.nodes[to].role = Role::Active;
                activated.push(to);
            }
            if let Some(r) = self.rescale.as_mut() {
                r.migrated.push((pos, self.slots[pos], to, self.parked[pos]));
                r.migrated_after = last;
            }
            self.slots[pos] = to;
            self.parked[pos] = leaving.is_some();
        }
        if let Some((x, exit)) = leaving {
            // It stops its shares and waits as a spare; its replica service
            // still serves the last complete checkpoint's parts it backs up
            // until a checkpoint of the new placement is complete, which
            // `exit` waits for before releasing it (`rescale.rs`).
            let name = self.nodes[x].name.clone();
            self.send(x, Msg::Abort { epoch: self.epoch });
            self.nodes[x].role = Role::Spare;
            self.event(format!("left {name}"));
            self.actions.push(Action::Note(format!(
                "node `{name}` leaves the job; {}",
                if exit {
                    "it is released once a checkpoint no longer needs it"
                } else {
                    "it waits in the pool as a spare"
                }
            )));
        }
        for &j in &activated {
            self.event(format!("joined {}", self.nodes[j].name));
        }
        let survivors: Vec<usize> = self.active().into_iter().filter(|j| !activated.contains(j)).collect();
        let lost: Vec<usize> = moves.iter().map(|&(p, _)| p).collect();
        self.relink(&lost, survivors, now_ms);
    }

    /// Starts a live recovery (see the module documentation): the slots at
    /// `lost` have new owners; `survivors` keep running and are told the
    /// new placement.
    pub(super) fn relink(&mut self, lost: &[usize], survivors: Vec<usize>, now_ms: u64) {
        let moved: Vec<usize> = lost.iter().flat_map(|&p| self.workers_of(p)).collect();
        // Where the new owners will fetch the parts they lack: if some
        // part has no live backup, no recovery can restore it.
        let fetch_for = match self.fetch_plan(moved.iter().copied()) {
            Ok(f) => f,
            Err(e) => return self.fail(e),
        };
        self.epoch += 1;
        let epoch = self.epoch;
        let specs = self.specs();
        let checkpoint = self.last_complete.as_ref().map_or(0, |c| c.manifest.id);
        for &j in &survivors {
            // Its own slots; a moved slot it takes over has its own
            // backup nodes, in its joining deployment.
            let own: Vec<usize> =
                (0..self.slots.len()).filter(|&p| self.slots[p] == j && !lost.contains(&p)).collect();
            let replicas = match self.replicas_of(&own) {
                Ok(r) => r,
                Err(e) => return self.fail(e),
            };
            let msg = Msg::Recover {
                epoch,
                checkpoint,
                aborted: self.last_id,
                nodes: specs.clone(),
                replicas,
                moved: moved.clone(),
            };
            self.send(j, msg);
        }
        let joins = lost
            .iter()
            .map(|&pos| Join {
                pos,
                node: self.slots[pos],
                fetch: self.workers_of(pos).filter_map(|w| fetch_for.get(&w).map(|&h| (w, h))).collect(),
            })
            .collect();
        self.epoch_begins(true);
        self.phase = Phase::Relinking {
            waiting: survivors.iter().copied().collect(),
            survivors,
            joins,
            since_ms: now_ms,
        };
        if crate::sabotage::on(crate::sabotage::Bug::JoinEarly) {
            self.event(format!("relinking {epoch}"));
            return self.join(now_ms);
        }
        self.event(format!("relinking {epoch}"));
        self.actions.push(Action::Note(format!(
            "live recovery: epoch {epoch} keeps the survivors running; workers {moved:?} restore checkpoint \
             {checkpoint} on their new nodes; checkpoints up to {} are void",
            self.last_id
        )));
    }

    /// Every survivor re-linked: the moved slots' new owners join, each
    /// restoring its slot from the last complete checkpoint.
    pub(super) fn join(&mut self, now_ms: u64) {
        let Phase::Relinking { survivors, joins, .. } = std::mem::replace(&mut self.phase, Phase::Running)
        else {
            return;
        };
        let moved: Vec<usize> = joins.iter().flat_map(|j| self.workers_of(j.pos)).collect();
        for j in &joins {
            let fetch_for: HashMap<usize, usize> = j.fetch.iter().copied().collect();
            let d = match self.deployment(&[j.pos], &fetch_for, Some((j.pos, moved.clone()))) {
                Ok(d) => d,
                Err(e) => return self.fail(e),
            };
            self.send(j.node, Msg::Deploy(d));
            *self.joining.entry(j.node).or_insert(0) += 1;
            self.fetched(fetch_for.into_keys());
        }
        for s in survivors {
            if !self.joining.contains_key(&s) {
                self.ready.insert(s);
            }
        }
        self.next_checkpoint_ms = now_ms + self.config.interval_ms;
        self.event(format!("joining {}", self.epoch));
        self.actions.push(Action::Note(format!(
            "every survivor re-linked: {} moved slot(s) join epoch {}",
            joins.len(),
            self.epoch
        )));
        if self.ready.len() == self.active().len() {
            self.event(format!("running {}", self.epoch));
        }
    }

    /// The live recovery under way cannot finish: abort its epoch on every
    /// node of the placement (joiners included) and roll back.
    pub(super) fn fall_back(&mut self, why: String, now_ms: u64) {
        self.actions.push(Action::Note(format!(
            "the live recovery of epoch {} falls back to a global rollback: {why}",
            self.epoch
        )));
        self.roll_back(now_ms);
    }

    /// A share failed and no node failure explains it: every node rolls
    /// back to the last complete checkpoint, while restarts are left;
    /// else the job fails.
    pub(super) fn restart(&mut self, why: JobFailure, now_ms: u64) {
        if self.config.interval_ms == 0 || self.restarted >= self.config.restarts {
            return self.fail(why);
        }
        self.restarted += 1;
        let checkpoint = self.last_complete.as_ref().map_or(0, |c| c.manifest.id);
        self.actions.push(Action::Note(format!(
            "{why}; no node failure explains it: every node rolls back to checkpoint {checkpoint} \
             (restart {} of {})",
            self.restarted, self.config.restarts
        )));
        self.roll_back(now_ms);
    }

    /// Aborts the epoch on every node of the placement (joiners included);
    /// once all stopped, the next epoch restores the last complete
    /// checkpoint.
    pub(super) fn roll_back(&mut self, now_ms: u64) {
        let mut to = self.active();
        to.sort_unstable();
        for &j in &to {
            self.send(j, Msg::Abort { epoch: self.epoch });
        }
        self.phase = Phase::Aborting { waiting: to.into_iter().collect(), since_ms: now_ms };
        self.in_flight = None;
        self.share_failed = None;
        self.joining.clear();
    }

    /// Deploys the next epoch; the new owner of each slot whose node did
    /// not take part in the last complete checkpoint fetches that slot's
    /// part from a live node that backed it up.
    pub(super) fn redeploy(&mut self, now_ms: u64) {
        self.epoch += 1;
        let workers = self.slot_workers.iter().sum();
        let fetch_for = match self.fetch_plan(0..workers) {
            Ok(f) => f,
            Err(e) => return self.fail(e),
        };
        if let Err(e) = self.deploy(&fetch_for, now_ms) {
            return self.fail(e);
        }
        self.fetched(fetch_for.into_keys());
    }
}
