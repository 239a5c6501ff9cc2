//! Where the plan puts things: the nodes of the placement, who holds which
//! checkpoint part, which replica services back a share up, which parts a
//! new owner fetches and from whom, and the deployments of an epoch.

use super::*;

impl Plan {
    /// The nodes of the placement, each once, in order.
    pub(super) fn active(&self) -> Vec<usize> {
        let mut out: Vec<usize> = Vec::new();
        for &i in &self.slots {
            if !out.contains(&i) {
                out.push(i);
            }
        }
        out
    }

    /// Workers node `j` runs, over its slots.
    pub(super) fn load_of(&self, j: usize) -> usize {
        (0..self.slots.len()).filter(|&p| self.slots[p] == j).map(|p| self.slot_workers[p]).sum()
    }

    /// The node of the placement, other than `except`, that runs the
    /// fewest workers (the first of them), if any.
    pub(super) fn least_loaded(&self, except: Option<usize>) -> Option<usize> {
        self.active().into_iter().filter(|&j| Some(j) != except).min_by_key(|&j| self.load_of(j))
    }

    /// The nodes that back up slot `pos`'s checkpoints in this placement:
    /// the next `backups` other nodes after it, in a ring; where the
    /// placement has too few, spares of the pool (decision 63: a job on
    /// one node grows onto the pool and is backed up there meanwhile).
    pub(super) fn holders(&self, pos: usize) -> Vec<usize> {
        let n = self.slots.len();
        let own = self.slots[pos];
        let mut out = Vec::new();
        for k in 1..n {
            let j = self.slots[(pos + k) % n];
            if j != own && !out.contains(&j) && out.len() < self.config.backups {
                out.push(j);
            }
        }
        for j in self.pool_holders() {
            if out.len() < self.config.backups && j != own && !out.contains(&j) {
                out.push(j);
            }
        }
        out
    }

    /// The spares whose replica services can back up checkpoints.
    pub(super) fn pool_holders(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&j| self.nodes[j].role == Role::Spare && self.nodes[j].replica.is_some())
            .collect()
    }

    /// The slot of each worker, in order.
    pub(super) fn slot_of_workers(&self) -> Vec<usize> {
        let mut out = Vec::new();
        for (pos, &w) in self.slot_workers.iter().enumerate() {
            out.extend(std::iter::repeat_n(pos, w));
        }
        out
    }

    /// The placement as deployed: each slot's node and workers.
    pub(super) fn specs(&self) -> Vec<NodeSpec> {
        self.slots
            .iter()
            .zip(&self.slot_workers)
            .map(|(&i, &w)| NodeSpec {
                name: self.nodes[i].name.clone(),
                addr: self.nodes[i].addr,
                workers: w,
            })
            .collect()
    }

    /// The workers of slot `pos` (global ids).
    pub(super) fn workers_of(&self, pos: usize) -> std::ops::Range<usize> {
        let base: usize = self.slot_workers[..pos].iter().sum();
        base..base + self.slot_workers[pos]
    }

    /// The replica services that the slots at `positions` stream their
    /// checkpoints to: their backup nodes', without repeats.
    pub(super) fn replicas_of(&self, positions: &[usize]) -> Result<Vec<SocketAddr>, JobFailure> {
        let mut replicas = Vec::new();
        if self.config.interval_ms == 0 {
            return Ok(replicas);
        }
        for &pos in positions {
            for h in self.holders(pos) {
                let r = self.replica_of(h)?;
                if !replicas.contains(&r) {
                    replicas.push(r);
                }
            }
        }
        Ok(replicas)
    }

    /// The replica service of backup node `h`.
    pub(super) fn replica_of(&self, h: usize) -> Result<SocketAddr, JobFailure> {
        self.nodes[h].replica.ok_or_else(|| JobFailure::NoReplicaService { node: self.nodes[h].name.clone() })
    }

    /// `(worker, replica service)` for the workers among `workers` that
    /// `fetch_for` sends to a backup node.
    pub(super) fn fetches(
        &self,
        workers: impl Iterator<Item = usize>,
        fetch_for: &HashMap<usize, usize>,
    ) -> Result<Vec<(usize, SocketAddr)>, JobFailure> {
        let mut fetch = Vec::new();
        for w in workers {
            if let Some(&holder) = fetch_for.get(&w) {
                fetch.push((w, self.replica_of(holder)?));
            }
        }
        Ok(fetch)
    }

    /// For each of `workers` whose current owner did not take part in the
    /// last complete checkpoint, nor fetched its part since: a live node
    /// that backed its part up, to fetch it from. An error when every such
    /// node is gone.
    pub(super) fn fetch_plan(
        &self,
        workers: impl Iterator<Item = usize>,
    ) -> Result<HashMap<usize, usize>, JobFailure> {
        let mut fetch_for = HashMap::new();
        let Some(c) = &self.last_complete else { return Ok(fetch_for) };
        let slot_of = self.slot_of_workers();
        for w in workers {
            let i = self.slots[slot_of[w]];
            // A node that took its part, or fetched it, has it locally.
            if c.local.get(w).is_some_and(|l| l.contains(&i)) {
                continue;
            }
            // A spare that backed the part up (a node that left the job
            // for the pool) still serves it.
            let live = c.holders.get(w).and_then(|h| {
                h.iter().copied().find(|&h| matches!(self.nodes[h].role, Role::Active | Role::Spare))
            });
            let Some(h) = live else {
                return Err(JobFailure::BackupsGone {
                    checkpoint: c.manifest.id,
                    worker: w,
                    node: self.nodes[i].name.clone(),
                });
            };
            fetch_for.insert(w, h);
        }
        Ok(fetch_for)
    }

    /// The owners of `workers` were told to fetch their parts of the last
    /// complete checkpoint: once each says it runs the epoch (the fetch
    /// worked), it has them locally (see [`Plan::fetch_done`]).
    pub(super) fn fetched(&mut self, workers: impl Iterator<Item = usize>) {
        let slot_of = self.slot_of_workers();
        let owners: Vec<(usize, usize)> = workers.map(|w| (w, self.slots[slot_of[w]])).collect();
        self.fetching.extend(owners);
    }

    /// Node `i` runs the epoch: the parts it was told to fetch are stored
    /// there now.
    pub(super) fn fetch_done(&mut self, i: usize) {
        let done: Vec<usize> = self.fetching.iter().filter(|&&(_, n)| n == i).map(|&(w, _)| w).collect();
        self.fetching.retain(|&(_, n)| n != i);
        if let Some(c) = &mut self.last_complete {
            for w in done {
                if let Some(l) = c.local.get_mut(w) {
                    if !l.contains(&i) {
                        l.push(i);
                    }
                }
            }
        }
    }

    /// This epoch's deployment of the slots at `positions` to their node:
    /// the placement, the slots' backup nodes, the last complete
    /// checkpoint and the parts to fetch for it (`fetch_for`: worker →
    /// holder); with `join`, `(slot, every moved worker)`: the slot joins
    /// the running job alone.
    pub(super) fn deployment(
        &self,
        positions: &[usize],
        fetch_for: &HashMap<usize, usize>,
        join: Option<(usize, Vec<usize>)>,
    ) -> Result<Deployment, JobFailure> {
        let mut fetch = Vec::new();
        for &pos in positions {
            fetch.extend(self.fetches(self.workers_of(pos), fetch_for)?);
        }
        let (join, moved) = match join {
            Some((slot, moved)) => (Some(slot), moved),
            None => (None, Vec::new()),
        };
        Ok(Deployment {
            epoch: self.epoch,
            nodes: self.specs(),
            replicas: self.replicas_of(positions)?,
            fetch,
            restore: self.last_complete.as_ref().map(|c| c.manifest.clone()),
            origin_ns: self.config.origin_ns,
            join,
            moved,
            // Every id requested so far belongs to an earlier epoch.
            aborted: self.last_id,
        })
    }

    /// The epoch's deployment for every node of the placement; `fetch_for`
    /// maps a worker to the node its new owner fetches its part from.
    pub(super) fn deploy(
        &mut self,
        fetch_for: &HashMap<usize, usize>,
        now_ms: u64,
    ) -> Result<(), JobFailure> {
        self.reset_assignment();
        for i in self.active() {
            let positions: Vec<usize> = (0..self.slots.len()).filter(|&p| self.slots[p] == i).collect();
            let d = self.deployment(&positions, fetch_for, None)?;
            self.send(i, Msg::Deploy(d));
        }
        self.epoch_begins(false);
        self.phase = Phase::Running;
        self.next_checkpoint_ms = now_ms + self.config.interval_ms;
        self.event(format!("deployed {}", self.epoch));
        Ok(())
    }

    /// A new epoch begins (deployed, or recovering live when `live`): no
    /// node is ready, joining or finished in it, no checkpoint or share
    /// failure is pending.
    pub(super) fn epoch_begins(&mut self, live: bool) {
        self.fetching.clear();
        self.ready.clear();
        self.joining.clear();
        self.finished.clear();
        self.in_flight = None;
        self.share_failed = None;
        self.unsettled = live;
        self.checkpointed = false;
    }
}
