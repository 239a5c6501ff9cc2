//! A node's agent ([`NodeAgent`]): runs the node's share of the job, epoch
//! after epoch, as the coordinator's messages say — the same on the
//! coordinator's node and on the others.
//!
//! A node runs one share per slot of the placement it holds: its own, one
//! per failed slot it took over during a live recovery, a parked slot it
//! hosts (docs/ARCHITECTURE.md, "Recovery", "Handoff", decision 63); to
//! the coordinator it is one node: one checkpoint part per checkpoint (the
//! shares' parts merged once every share's is in), one end (the reports
//! summed). Every share stages and switches every handoff step; a share
//! whose slot moves to another node stops when `Recover` says so.
//!
//! Nothing here blocks. A deployment goes through stages, moved on by
//! [`NodeAgent::poll`]: fetching the checkpoint parts this node lacks from
//! their backup nodes, then connecting its workers to every other worker
//! (a [`Mesh`]; incoming links are offered by the node's listener through
//! [`NodeAgent::admit_link`] and [`NodeAgent::take_link`]), then starting
//! the workers. An `Abort` that arrives meanwhile drops the deployment. A
//! link that arrives before this node knows its epoch is parked until the
//! deployment (or the live recovery) that expects it; links of epochs
//! before the node's current one are refused (fencing).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use spate_net::hello::Rejection;
use spate_net::NetErrorKind;

use crate::checkpoint::{ClusterCheckpoints, Manifest};
use crate::config::RuntimeConfig;
use crate::control::env::{Build, Env, FetchRequest};
use crate::control::error::AgentError;
use crate::control::handoff::{self, NodeHandoffs};
use crate::control::msg::{Deployment, Msg};
use crate::control::placement::{ClusterPlacement, Join};
use crate::control::report::{MetricsLine, NodeReport, METRICS_ENV};
use crate::link::{parse_link_name, Mesh};
use crate::runtime::{Job, RuntimeError, ShareLinks};
use crate::time::{now, unix_ms};

/// Most links a node parks for a deployment it has not heard of yet.
const PARKED_MAX: usize = 1024;

/// What a node's agent wants after handling a message.
#[derive(Debug, PartialEq, Eq)]
pub enum Exit {
    /// The job is done (`Release`).
    Released,
}

/// A share of the job running on this node: its own slot's workers, or
/// (a survivor that took over a failed node's workers in a live recovery)
/// a failed slot's workers, joined beside its own.
struct Share<C> {
    epoch: u64,
    job: Job<C>,
    /// The checkpoint requested and not yet handed to the job (its
    /// workers were still being built).
    pending: Option<u64>,
    /// Its `Ready` (or, for a share that went on live, `Recovered`) was
    /// sent.
    ready_sent: bool,
}

/// A deployment on its way to running.
struct Starting<E: Env> {
    d: Deployment,
    placement: ClusterPlacement,
    /// The slot of `placement.nodes` this share runs.
    slot: usize,
    stage: Stage<E>,
}

enum Stage<E: Env> {
    /// Fetching the parts this node lacks (a deployment that restores).
    Fetching(E::Fetch),
    /// Connecting the workers: the mesh, and its connections in progress.
    Linking { mesh: Box<Mesh<E::Conn>>, connecting: Vec<((usize, usize), E::Connecting)> },
}

/// A live recovery, as a survivor sees it.
struct Recovering {
    epoch: u64,
    moved: Vec<usize>,
    /// Links from replacements to this node's workers: expected, handed.
    expected: usize,
    relinked: usize,
}

/// A link that arrived before anyone here expected it.
struct Parked<C> {
    from: usize,
    to: usize,
    epoch: u64,
    conn: C,
    since: Instant,
}

/// Runs one node's share of the job (see the module documentation).
pub struct NodeAgent<E: Env> {
    name: String,
    query: String,
    build: Build,
    rc: RuntimeConfig,
    /// The node's placement as configured (the job's id, the connect
    /// timeout); each deployment brings its own nodes and epoch.
    placement: ClusterPlacement,
    /// Told which checkpoints are complete (it compacts what it stores).
    replica: Option<crate::replica::CompletionHandle>,
    /// The shares running here (the first is the node's own).
    shares: Vec<Share<E::Conn>>,
    /// Deployments being started (several: the joining shares of one
    /// recovery, one per moved slot this node takes).
    starting: Vec<Starting<E>>,
    /// Links for a deployment or recovery not known yet.
    parked: Vec<Parked<E::Conn>>,
    /// The highest epoch this node was told of: links of earlier epochs are
    /// refused.
    epoch: u64,
    /// A live recovery under way: its epoch, the workers whose
    /// replacements will connect here, and how many of their links this
    /// node's workers wait for and have been handed.
    recovering: Option<Recovering>,
    /// Checkpoint parts of some of the shares, by id, until every share's
    /// is in.
    parts: BTreeMap<u64, Vec<Manifest>>,
    failed_sent: bool,
    /// With [`METRICS_ENV`]: print the job's output rate and latency this
    /// often, and when next.
    metrics_every: Option<(Duration, Instant, u64)>,
    /// The latency histogram and the report of the last epoch that
    /// finished.
    latency: Option<hdrhistogram::Histogram<u64>>,
    report: Option<NodeReport>,
    quiet: bool,
    /// The placement of the epoch running here (nodes in worker order).
    nodes: Vec<crate::control::placement::NodeSpec>,
    /// Handoff steps' parcels on their way.
    handoffs: NodeHandoffs<E>,
}

impl<E: Env> NodeAgent<E> {
    /// The agent of node `placement.me`, running `query` built by `build`
    /// with `rc`.
    pub fn new(
        query: &str,
        build: Build,
        rc: RuntimeConfig,
        placement: ClusterPlacement,
        quiet: bool,
    ) -> Self {
        Self {
            name: placement.nodes[placement.me].name.clone(),
            query: query.to_string(),
            build,
            rc,
            placement,
            replica: None,
            shares: Vec::new(),
            starting: Vec::new(),
            parked: Vec::new(),
            epoch: 0,
            recovering: None,
            parts: BTreeMap::new(),
            failed_sent: false,
            latency: None,
            report: None,
            metrics_every: std::env::var(METRICS_ENV)
                .ok()
                .and_then(|v| v.parse::<u64>().ok())
                .filter(|&ms| ms > 0)
                .map(|ms| (Duration::from_millis(ms), now(), 0)),
            quiet,
            nodes: Vec::new(),
            handoffs: NodeHandoffs::default(),
        }
    }

    /// The node's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Tells this node's replica service which checkpoints are complete.
    pub fn set_replica(&mut self, replica: crate::replica::CompletionHandle) {
        self.replica = Some(replica);
    }

    /// The panic of this node's replica service, if its thread panicked.
    pub fn replica_panicked(&self) -> Option<&crate::panic::ThreadPanic> {
        self.replica.as_ref().and_then(|r| r.panicked())
    }

    /// This node's report of the last epoch that finished here.
    pub fn report(&self) -> Option<&NodeReport> {
        self.report.as_ref()
    }

    /// The latency histogram of the last epoch that finished here.
    pub fn latency(&self) -> Option<&hdrhistogram::Histogram<u64>> {
        self.latency.as_ref()
    }

    /// The live metrics of this node's own share, while one runs here.
    pub fn metrics(&self) -> Option<&Arc<crate::metrics::JobMetrics>> {
        self.shares.first().map(|s| s.job.metrics())
    }

    /// Whether a share of the job runs (or is being started) here.
    pub fn is_busy(&self) -> bool {
        !self.shares.is_empty() || !self.starting.is_empty()
    }

    /// Handles a message from the coordinator, queueing answers in `out`.
    pub fn handle(&mut self, env: &mut E, msg: Msg, out: &mut Vec<Msg>) -> Result<Option<Exit>, AgentError> {
        if let Some(e) = msg.epoch() {
            if matches!(msg, Msg::Deploy(_) | Msg::Recover { .. }) {
                self.epoch = self.epoch.max(e);
            }
        }
        match msg {
            Msg::Deploy(d) => {
                let epoch = d.epoch;
                // The epoch's placement, joining or not: parcels go by it.
                self.nodes = d.nodes.clone();
                let started = match d.join {
                    Some(slot) => self.deploy_join(env, d, slot),
                    None => {
                        self.stop_job();
                        self.handoffs.clear();
                        self.deploy(env, d)
                    }
                };
                if let Err(e) = started {
                    out.push(Msg::Failed { epoch, reason: e.to_string() });
                }
            }
            Msg::Recover { epoch, checkpoint, aborted, nodes, replicas, moved } => {
                self.nodes = nodes;
                match self.recover(epoch, checkpoint, aborted, replicas, moved) {
                    Ok(()) => out.push(Msg::Recovered { epoch }),
                    Err(e) => out.push(Msg::Failed { epoch, reason: e.to_string() }),
                }
            }
            Msg::Checkpoint { epoch, id } => {
                for s in self.shares.iter_mut().filter(|s| s.epoch == epoch) {
                    s.pending = Some(id);
                }
            }
            Msg::Complete { epoch, id } => {
                if let Some(r) = &self.replica {
                    r.complete(id);
                }
                for s in self.shares.iter().filter(|s| s.epoch == epoch) {
                    if let Some(c) = s.job.checkpoints() {
                        c.complete(id);
                    }
                }
            }
            Msg::Handoff { epoch, version, start, end, from, to } => {
                // Every share of the epoch stages the step: each runs
                // senders that switch, and one of them may give or take
                // the bins.
                let info = handoff::step_of(version, start, end, from, to);
                let mut staged = Err("no share of the epoch runs here".to_string());
                for s in self.shares.iter().filter(|s| s.epoch == epoch) {
                    staged = self.handoffs.stage(s.job.share_board(), s.job.checkpoints(), info);
                    if staged.is_err() {
                        break;
                    }
                }
                match staged {
                    Ok(()) => out.push(Msg::Staged { epoch, version }),
                    Err(why) => {
                        let reason = format!("node {}: handoff step {version}: {why}", self.name);
                        out.push(Msg::Failed { epoch, reason });
                    }
                }
            }
            Msg::Switch { epoch, version } => {
                let mut shares = self.shares.iter().filter(|s| s.epoch == epoch).peekable();
                let mut switched = shares.peek().is_some();
                for s in shares {
                    switched &= s.job.share_board().is_some_and(|b| b.switch(version));
                }
                if !switched {
                    let reason = format!("node {}: handoff step {version} was not staged here", self.name);
                    out.push(Msg::Failed { epoch, reason });
                }
            }
            Msg::Abort { epoch } => {
                self.stop_job();
                out.push(Msg::Aborted { epoch });
            }
            Msg::Release => {
                self.stop_job();
                let dir = self.rc.data_dir.join(&self.query);
                if let Err(e) = std::fs::remove_dir_all(&dir) {
                    if e.kind() != std::io::ErrorKind::NotFound {
                        env.log(&format!("node {}: cannot remove {}: {e}", self.name, dir.display()));
                    }
                }
                return Ok(Some(Exit::Released));
            }
            Msg::Stop { reason } => {
                self.stop_job();
                return Err(AgentError::Stopped { reason });
            }
            other => {
                return Err(AgentError::Unexpected { node: self.name.clone(), message: Box::new(other) })
            }
        }
        Ok(None)
    }

    /// Stops this node's shares of the job, if any run or start (keeping
    /// their checkpoints).
    pub fn stop_job(&mut self) {
        for s in self.shares.drain(..) {
            s.job.cancel();
            let _ = s.job.wait();
        }
        self.starting.clear();
        self.parts.clear();
        self.recovering = None;
    }

    /// Another node failed and the job recovers live: this node's shares
    /// keep running under `epoch`, void the checkpoints up to `aborted`,
    /// stream their checkpoints to `replicas`, and take the links of the
    /// replacements of `moved` as they come.
    fn recover(
        &mut self,
        epoch: u64,
        checkpoint: u64,
        aborted: u64,
        replicas: Vec<SocketAddr>,
        moved: Vec<usize>,
    ) -> Result<(), AgentError> {
        let name = &self.name;
        // A share whose slot moves to another node (a parked slot joining
        // a node of the pool, decision 63) stops here: its new owner
        // restores it and links to every worker, these included.
        let mut k = 0;
        while k < self.shares.len() {
            let local = self.shares[k].job.local_workers().to_vec();
            if !local.is_empty() && local.iter().all(|w| moved.contains(w)) {
                let s = self.shares.remove(k);
                s.job.cancel();
                let _ = s.job.wait();
                if !self.quiet {
                    eprintln!("node {name}: workers {local:?} move to another node in epoch {epoch}");
                }
            } else {
                k += 1;
            }
        }
        if self.shares.is_empty() {
            return Err(AgentError::NoShare { node: name.clone() });
        }
        for s in &mut self.shares {
            if let Some(reason) = s.job.metrics().failure() {
                return Err(AgentError::ShareFailed { node: name.clone(), reason });
            }
            // Epoch 0 is a name without an epoch: replica streams start at 1.
            s.job
                .recover(checkpoint, aborted, replicas.clone(), epoch + 1)
                .map_err(|source| AgentError::Recover { node: name.clone(), source })?;
            s.epoch = epoch;
            s.pending = s.pending.filter(|&id| id > aborted);
            // `Recovered` is this share's `Ready` for the new epoch.
            s.ready_sent = true;
        }
        self.parts.retain(|&id, _| id > aborted);
        // Every worker here links to every replacement: until each link
        // came, this node's share is not through, even if its workers are
        // (a replacement will replay to them, and they to it).
        let locals: usize = self.shares.iter().map(|s| s.job.local_workers().len()).sum();
        self.recovering = Some(Recovering { epoch, expected: locals * moved.len(), relinked: 0, moved });
        if !self.quiet {
            eprintln!(
                "node {}: epoch {epoch} goes on live; the replacements restore checkpoint {checkpoint}",
                self.name
            );
        }
        self.unpark();
        Ok(())
    }

    /// Starts epoch `d.epoch`'s shares of this node's name: one a slot of
    /// its name in the placement (decision 63), each fetching only its own
    /// workers' parts.
    fn deploy(&mut self, env: &mut E, d: Deployment) -> Result<(), AgentError> {
        let slots = ClusterPlacement::slots_of(&d.nodes, &self.name);
        if slots.is_empty() {
            return Err(AgentError::NotDeployed { node: self.name.clone() });
        }
        for me in slots {
            let placement = ClusterPlacement {
                nodes: d.nodes.clone(),
                me,
                epoch: d.epoch,
                join: None,
                ..self.placement.clone()
            };
            let mine = placement.local();
            let mut share = d.clone();
            share.fetch.retain(|(w, _)| mine.contains(w));
            self.begin(env, share, placement, me);
        }
        Ok(())
    }

    /// Starts the replacement of a failed node's workers in a running job
    /// (live recovery): it fetches their part of the checkpoint, restores
    /// it, and connects to every other worker. On a survivor (it took the
    /// failed slot over) the new share runs beside its own. `slot` is the
    /// deployment's `join`.
    fn deploy_join(&mut self, env: &mut E, d: Deployment, slot: usize) -> Result<(), AgentError> {
        let node = || self.name.clone();
        if self.shares.iter().any(|s| s.epoch != d.epoch) {
            return Err(AgentError::OtherEpoch { node: node(), epoch: d.epoch });
        }
        if self.starting.iter().any(|s| s.d.epoch != d.epoch) {
            return Err(AgentError::StartingOtherEpoch { node: node(), epoch: d.epoch });
        }
        if d.nodes.get(slot).is_none_or(|n| n.name != self.name) {
            return Err(AgentError::NotTheSlot { node: node(), slot });
        }
        if self.rc.checkpoint_interval_ms == 0 {
            return Err(AgentError::NoCheckpoints { node: node() });
        }
        let placement = ClusterPlacement {
            nodes: d.nodes.clone(),
            me: slot,
            epoch: d.epoch,
            join: Some(Join { slot, moved: d.moved.clone() }),
            ..self.placement.clone()
        };
        self.begin(env, d, placement, slot);
        Ok(())
    }

    /// The first stage of a deployment: fetching what it restores and this
    /// node lacks, or linking at once.
    fn begin(&mut self, env: &mut E, d: Deployment, placement: ClusterPlacement, slot: usize) {
        let stage = match (&d.restore, d.fetch.is_empty()) {
            (Some(m), false) => Stage::Fetching(env.begin_fetch(FetchRequest {
                data_dir: self.rc.data_dir.clone(),
                query: self.query.clone(),
                cluster: self.placement.cluster,
                checkpoint: m.id,
                parts: d.fetch.clone(),
                timeout: self.placement.connect_timeout,
                quiet: self.quiet,
                node: self.name.clone(),
            })),
            _ => self.linking(&placement),
        };
        self.starting.push(Starting { d, placement, slot, stage });
        self.unpark();
    }

    fn linking(&self, placement: &ClusterPlacement) -> Stage<E> {
        Stage::Linking { mesh: Box::new(Mesh::new(placement, now())), connecting: Vec::new() }
    }

    /// Whether the link named `name` is for this node (`Ok`), to be handed
    /// over by [`NodeAgent::take_link`] once accepted.
    pub fn admit_link(&self, name: &str) -> Result<(), Rejection> {
        let Some((from, to, epoch)) = parse_link_name(name) else { return Err(Rejection::UnknownNode) };
        if epoch < self.epoch {
            // A link of a deployment that was aborted or replaced.
            return Err(Rejection::UnknownNode);
        }
        for st in &self.starting {
            if let Stage::Linking { mesh, .. } = &st.stage {
                if mesh.admit(from, to, epoch)?.is_some() {
                    return Ok(());
                }
            }
        }
        if self.parked.len() >= PARKED_MAX {
            return Err(Rejection::UnknownNode);
        }
        Ok(())
    }

    /// Whether a handoff's parcel connection announcing `name` is taken.
    pub fn admit_parcel(&self, name: &str) -> Result<(), Rejection> {
        if self.handoffs.admit(name, self.epoch) {
            Ok(())
        } else {
            Err(Rejection::UnknownNode)
        }
    }

    /// A parcel connection, which [`NodeAgent::admit_parcel`] took, is up.
    pub fn take_parcel(&mut self, env: &mut E, name: &str, conn: E::Conn) {
        let dir = self.rc.data_dir.join(&self.query).join("handoff");
        self.handoffs.take(env, name, conn, &dir, self.rc.bins_log2);
    }

    /// The link named `name`, which [`NodeAgent::admit_link`] took, is up.
    pub fn take_link(&mut self, name: &str, conn: E::Conn) {
        let Some((from, to, epoch)) = parse_link_name(name) else { return };
        self.parked.push(Parked { from, to, epoch, conn, since: now() });
        self.unpark();
    }

    /// Hands parked links to whoever expects them now: the deployment
    /// being linked, or a running share that re-links a replacement.
    /// Links of earlier epochs, or parked longer than the connect timeout,
    /// are dropped.
    fn unpark(&mut self) {
        let t = now();
        let timeout = self.placement.connect_timeout;
        let epoch = self.epoch;
        let mut i = 0;
        while i < self.parked.len() {
            let p = &self.parked[i];
            let (from, to, e) = (p.from, p.to, p.epoch);
            if e < epoch || t.saturating_duration_since(p.since) > timeout {
                self.parked.swap_remove(i);
                continue;
            }
            let mesh = self.starting.iter_mut().find_map(|st| match &mut st.stage {
                Stage::Linking { mesh, .. } => match mesh.admit(from, to, e) {
                    Ok(Some(k)) => Some((mesh, k)),
                    _ => None,
                },
                Stage::Fetching(_) => None,
            });
            if let Some((mesh, (local, remote))) = mesh {
                let p = self.parked.swap_remove(i);
                mesh.accepted(local, remote, p.conn);
                continue;
            }
            let relink = self.recovering.as_ref().is_some_and(|r| r.epoch == e && r.moved.contains(&from));
            if relink {
                if let Some(s) =
                    self.shares.iter().find(|s| s.epoch == e && s.job.local_workers().contains(&to))
                {
                    let p = self.parked.swap_remove(i);
                    if let Err(err) = s.job.relink(to, from, p.conn) {
                        s.job.metrics().fail(format!("re-linking worker {from}: {err}"));
                    }
                    if let Some(r) = self.recovering.as_mut() {
                        r.relinked += 1;
                    }
                    continue;
                }
            }
            i += 1;
        }
    }

    /// Moves the deployments being started along; each that fails says so
    /// in `out`.
    fn advance_all(&mut self, env: &mut E, out: &mut Vec<Msg>) {
        let mut k = 0;
        while k < self.starting.len() {
            let before = self.starting.len();
            if let Err(e) = self.advance(env, k) {
                let st = self.starting.remove(k);
                out.push(Msg::Failed { epoch: st.d.epoch, reason: e.to_string() });
                continue;
            }
            if self.starting.len() == before {
                k += 1;
            }
        }
    }

    /// Moves deployment `k` being started along (it leaves the list when
    /// its share starts); `Err` fails it.
    fn advance(&mut self, env: &mut E, k: usize) -> Result<(), AgentError> {
        let Some(st) = self.starting.get_mut(k) else { return Ok(()) };
        let t = now();
        match &mut st.stage {
            Stage::Fetching(f) => match env.poll_fetch(f) {
                None => return Ok(()),
                Some(Err(source)) => return Err(AgentError::Fetch { node: self.name.clone(), source }),
                Some(Ok(())) => {
                    st.stage = Stage::Linking {
                        mesh: Box::new(Mesh::new(&st.placement, t)),
                        connecting: Vec::new(),
                    };
                    self.unpark();
                    return Ok(());
                }
            },
            Stage::Linking { mesh, connecting } => {
                for o in mesh.due(t) {
                    match env.connect(
                        o.addr,
                        o.name,
                        self.placement.cluster,
                        t + self.placement.connect_timeout,
                    ) {
                        Ok(c) => connecting.push(((o.local, o.remote), c)),
                        Err(e) => {
                            let retry = matches!(e.kind, NetErrorKind::Connect(_));
                            mesh.connect_failed(o.local, o.remote, e, retry, t)?;
                        }
                    }
                }
                let mut i = 0;
                while i < connecting.len() {
                    let (w, v) = connecting[i].0;
                    match env.poll_connecting(&mut connecting[i].1) {
                        Ok(Some(c)) => {
                            connecting.swap_remove(i);
                            mesh.connected(w, v, c);
                        }
                        Ok(None) => i += 1,
                        Err(e) => {
                            connecting.swap_remove(i);
                            let retry = matches!(e.kind, NetErrorKind::Connect(_));
                            mesh.connect_failed(w, v, e, retry, t)?;
                        }
                    }
                }
                if let Some(e) = mesh.timed_out(t) {
                    return Err(e.into());
                }
                if !mesh.is_complete() {
                    return Ok(());
                }
            }
        }
        // Every link is up: start the workers.
        let Starting { d, placement, slot, stage } = self.starting.remove(k);
        let Stage::Linking { mesh, .. } = stage else { return Ok(()) };
        let mut rc = self.rc.clone();
        rc.workers = placement.nodes[slot].workers;
        rc.schedule_origin_ns = d.origin_ns;
        let checkpoints = (rc.checkpoint_interval_ms > 0).then(|| ClusterCheckpoints {
            restore: d.restore.clone(),
            replicas: d.replicas.clone(),
            cluster: placement.cluster,
            // Epoch 0 is a name without an epoch: start at 1.
            epoch: d.epoch + 1,
            aborted: d.aborted,
            // (The runtime sets `joining` from the placement.)
            joining: false,
            backups: env.backups(),
        });
        let joining = placement.join.is_some();
        let beside = !self.shares.is_empty();
        let share = ShareLinks { placement, links: mesh.into_links(), checkpoints };
        let job = env
            .start_share(&self.query, self.build.clone(), rc, share)
            .map_err(|source| AgentError::Start { node: self.name.clone(), source })?;
        if !self.quiet {
            let from = d.restore.as_ref().map_or("the start".to_string(), |m| format!("checkpoint {}", m.id));
            if joining {
                let how = if beside { " beside its own" } else { "" };
                eprintln!(
                    "node {}: joins epoch {} in slot {slot}{how}, restored from {from}",
                    self.name, d.epoch
                );
            } else if d.restore.is_some() {
                eprintln!("node {}: epoch {} resumes from {from}", self.name, d.epoch);
            }
        }
        self.started(d.epoch, job);
        Ok(())
    }

    /// A share of `epoch` started here.
    fn started(&mut self, epoch: u64, job: Job<E::Conn>) {
        if self.shares.is_empty() {
            if let Some((_, _, last_out)) = &mut self.metrics_every {
                *last_out = 0;
            }
            self.failed_sent = false;
        }
        self.shares.push(Share { epoch, job, pending: None, ready_sent: false });
        self.unpark();
    }

    /// Moves the job along: the deployment being started, requested
    /// checkpoints; queues in `out` what the coordinator must hear (ready,
    /// checkpoint parts, an end or a failure).
    pub fn poll(&mut self, env: &mut E, out: &mut Vec<Msg>) {
        self.advance_all(env, out);
        if !self.parked.is_empty() {
            self.unpark();
        }
        let Some(epoch) = self.shares.first().map(|s| s.epoch) else { return };
        self.print_metrics(epoch);
        let shares = self.shares.len();
        for s in &mut self.shares {
            if let Some(c) = s.job.checkpoints() {
                if c.ready() {
                    if !s.ready_sent {
                        s.ready_sent = true;
                        out.push(Msg::Ready { epoch: s.epoch });
                    }
                    if let Some(id) = s.pending.take() {
                        c.request(id);
                    }
                }
                for part in c.take_done() {
                    self.parts.entry(part.id).or_default().push(part);
                }
            } else if !s.ready_sent {
                s.ready_sent = true;
                out.push(Msg::Ready { epoch: s.epoch });
            }
        }
        for s in &self.shares {
            if let Some(board) = s.job.load() {
                out.extend(board.take().into_iter().map(|report| Msg::Load { epoch: s.epoch, report }));
            }
        }
        let boards: Vec<(Arc<crate::handoff::HandoffBoard>, Vec<usize>)> = self
            .shares
            .iter()
            .filter_map(|s| s.job.share_board().map(|b| (b.clone(), s.job.local_workers().to_vec())))
            .collect();
        if !boards.is_empty() {
            let (cluster, quiet) = (self.placement.cluster, self.quiet);
            self.handoffs.poll(env, &boards, &self.nodes, cluster, epoch, &self.name, quiet, out);
        }
        // One part per node: once every share's is in, merged.
        let whole: Vec<u64> =
            self.parts.iter().filter(|(_, p)| p.len() >= shares).map(|(&id, _)| id).collect();
        for id in whole {
            if let Some(mut ps) = self.parts.remove(&id) {
                let mut part = ps.remove(0);
                for p in &ps {
                    part.merge(p);
                }
                out.push(Msg::Done { epoch, part });
            }
        }
        if let Some(m) = self.shares.iter().map(|s| s.job.metrics()).find(|m| m.has_failed()) {
            if !self.failed_sent {
                self.failed_sent = true;
                let reason = m.failure().unwrap_or_else(|| "stopped".into());
                out.push(Msg::Failed { epoch, reason });
            }
            return;
        }
        let relinked = self.recovering.as_ref().is_none_or(|r| r.relinked >= r.expected);
        if self.starting.is_empty() && relinked && self.shares.iter().all(|s| s.job.is_finished()) {
            let mut latency = crate::metrics::latency_histogram();
            let mut report =
                NodeReport { node: self.name.clone(), records_in: 0, records_out: 0, seconds: 0.0 };
            for s in self.shares.drain(..) {
                let _ = latency.add(s.job.metrics().latency());
                match s.job.wait() {
                    Ok(r) => {
                        report.records_in += r.records_in;
                        report.records_out += r.records_out;
                        report.seconds = report.seconds.max(r.elapsed.as_secs_f64());
                    }
                    Err(RuntimeError::Cancelled) => return,
                    Err(e) => {
                        out.push(Msg::Failed { epoch, reason: e.to_string() });
                        return;
                    }
                }
            }
            self.parts.clear();
            self.latency = Some(latency);
            self.report = Some(report.clone());
            out.push(Msg::Finished { epoch, report });
        }
    }

    /// With [`METRICS_ENV`]: a line of the output rate and latency, when due.
    fn print_metrics(&mut self, epoch: u64) {
        let Some((every, next, last_out)) = &mut self.metrics_every else { return };
        let t = now();
        if t < *next {
            return;
        }
        *next = t + *every;
        let mut total = 0;
        let mut h = crate::metrics::latency_histogram();
        for s in &self.shares {
            let m = s.job.metrics();
            total += m.records_out.load(std::sync::atomic::Ordering::Relaxed);
            let _ = h.add(m.take_interval_latency());
        }
        let p99_us = if h.is_empty() { 0 } else { h.value_at_quantile(0.99) / 1000 };
        let line = MetricsLine {
            node: self.name.clone(),
            unix_ms: unix_ms(),
            epoch,
            records_out: total.saturating_sub(*last_out),
            p99_us,
        };
        *last_out = total;
        println!("{}", line.to_json());
    }
}
