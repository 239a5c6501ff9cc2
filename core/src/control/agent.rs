//! A node's agent: runs the node's share of the job, epoch after epoch, as
//! the coordinator's messages say.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use spate_net::hello::Rejection;
use spate_net::{Connection, Listener};

use crate::checkpoint::{ClusterCheckpoints, Manifest};
use crate::control::msg::{Deployment, Msg};
use crate::control::placement::ClusterPlacement;
use crate::control::report::{unix_ms, MetricsLine, NodeReport, METRICS_ENV};
use crate::{Dataflow, Job, Runtime, RuntimeConfig, RuntimeError};

/// What a node's agent wants after handling a message.
#[derive(Debug)]
pub enum Exit {
    /// The job is done (`Release`).
    Released,
}

/// A share of the job running on this node: its own slot's workers, or
/// (a survivor that took over a failed node's workers in a live recovery)
/// a failed slot's workers, joined beside its own.
struct Share {
    epoch: u64,
    job: Job,
    /// The checkpoint requested and not yet handed to the job (its
    /// workers were still being built).
    pending: Option<u64>,
    /// Its `Ready` (or, for a share that went on live, `Recovered`) was
    /// sent.
    ready_sent: bool,
}

/// Runs one node's share of the job, epoch after epoch, as the
/// coordinator's messages say; the same on the coordinator's node and on
/// the others. A node runs one share, plus one per failed slot it took
/// over during a live recovery (decision 25); to the coordinator it is one
/// node: one checkpoint part (the shares' parts merged), one end.
pub struct NodeAgent {
    name: String,
    query: String,
    build: Arc<dyn Fn(&Dataflow) + Send + Sync>,
    rc: RuntimeConfig,
    placement: ClusterPlacement,
    listener: Listener,
    /// Told which checkpoints are complete (it compacts what it stores).
    replica: Option<crate::replica::CompletionHandle>,
    /// The shares running here (the first is the node's own).
    shares: Vec<Share>,
    /// A live recovery under way: its epoch, and the workers whose
    /// replacements will connect here.
    recovering: Option<(u64, Vec<usize>)>,
    /// Checkpoint parts of some of the shares, by id, until every share's
    /// is in.
    parts: std::collections::BTreeMap<u64, Vec<Manifest>>,
    failed_sent: bool,
    /// With [`METRICS_ENV`]: print the job's output rate and latency this
    /// often, and when next.
    metrics_every: Option<(Duration, Instant, u64)>,
    /// The latency histogram and the report of the last epoch that
    /// finished.
    latency: Option<hdrhistogram::Histogram<u64>>,
    report: Option<NodeReport>,
    quiet: bool,
}

/// The shares of a node, taking the links a joining share's mesh setup
/// accepts for them (see [`crate::remote::Beside`]).
struct Running<'a> {
    shares: &'a [Share],
    moved: &'a [usize],
}

impl crate::remote::Beside for Running<'_> {
    fn wants(&self, from: usize, to: usize, epoch: u64) -> bool {
        self.moved.contains(&from)
            && self.shares.iter().any(|s| s.epoch == epoch && s.job.local_workers().contains(&to))
    }

    fn take(&mut self, from: usize, to: usize, conn: Connection) {
        if let Some(s) = self.shares.iter().find(|s| s.job.local_workers().contains(&to)) {
            if let Err(e) = s.job.relink(to, from, conn) {
                s.job.metrics().fail(format!("re-linking worker {from}: {e}"));
            }
        }
    }
}

impl NodeAgent {
    /// The agent of node `placement.me`, listening on `listener`.
    pub fn new(
        query: &str,
        build: Arc<dyn Fn(&Dataflow) + Send + Sync>,
        rc: RuntimeConfig,
        placement: ClusterPlacement,
        listener: Listener,
        quiet: bool,
    ) -> Self {
        Self {
            name: placement.nodes[placement.me].name.clone(),
            query: query.to_string(),
            build,
            rc,
            placement,
            listener,
            replica: None,
            shares: Vec::new(),
            recovering: None,
            parts: std::collections::BTreeMap::new(),
            failed_sent: false,
            latency: None,
            report: None,
            metrics_every: std::env::var(METRICS_ENV)
                .ok()
                .and_then(|v| v.parse::<u64>().ok())
                .filter(|&ms| ms > 0)
                .map(|ms| (Duration::from_millis(ms), Instant::now(), 0)),
            quiet,
        }
    }

    /// Tells this node's replica service which checkpoints are complete.
    pub fn set_replica(&mut self, replica: crate::replica::CompletionHandle) {
        self.replica = Some(replica);
    }

    /// This node's report of the last epoch that finished here.
    pub fn report(&self) -> Option<&NodeReport> {
        self.report.as_ref()
    }

    /// The latency histogram of the last epoch that finished here.
    pub fn latency(&self) -> Option<&hdrhistogram::Histogram<u64>> {
        self.latency.as_ref()
    }

    /// The listener (the coordinator refuses connections on it between
    /// deployments).
    pub fn listener(&mut self) -> &mut Listener {
        &mut self.listener
    }

    /// Handles a message from the coordinator, queueing answers in `out`.
    pub fn handle(&mut self, msg: Msg, out: &mut Vec<Msg>) -> Result<Option<Exit>, String> {
        self.handle_or_abort(msg, out, &mut || None)
    }

    /// As [`NodeAgent::handle`]; a deployment stops connecting its workers
    /// as soon as `abort` gives a reason (the coordinator aborted the epoch:
    /// a node of it failed).
    pub fn handle_or_abort(
        &mut self,
        msg: Msg,
        out: &mut Vec<Msg>,
        abort: &mut dyn FnMut() -> Option<String>,
    ) -> Result<Option<Exit>, String> {
        match msg {
            Msg::Deploy(d) if d.join.is_some() => {
                let epoch = d.epoch;
                if let Err(e) = self.deploy_join(d, abort) {
                    out.push(Msg::Failed { epoch, reason: e });
                }
            }
            Msg::Deploy(d) => {
                self.stop_job();
                let epoch = d.epoch;
                if let Err(e) = self.deploy(d, abort) {
                    out.push(Msg::Failed { epoch, reason: e });
                }
            }
            Msg::Recover { epoch, checkpoint, aborted, nodes: _, replicas, moved } => {
                match self.recover(epoch, checkpoint, aborted, replicas, moved) {
                    Ok(()) => out.push(Msg::Recovered { epoch }),
                    Err(reason) => out.push(Msg::Failed { epoch, reason }),
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
            Msg::Abort { epoch } => {
                self.stop_job();
                out.push(Msg::Aborted { epoch });
            }
            Msg::Release => {
                self.stop_job();
                let dir = self.rc.data_dir.join(&self.query);
                if let Err(e) = std::fs::remove_dir_all(&dir) {
                    if e.kind() != std::io::ErrorKind::NotFound {
                        eprintln!("node {}: cannot remove {}: {e}", self.name, dir.display());
                    }
                }
                return Ok(Some(Exit::Released));
            }
            Msg::Stop { reason } => {
                self.stop_job();
                return Err(reason);
            }
            other => return Err(format!("node `{}`: unexpected control message {other:?}", self.name)),
        }
        Ok(None)
    }

    /// Stops this node's shares of the job, if any run (keeping their
    /// checkpoints).
    pub(crate) fn stop_job(&mut self) {
        for s in self.shares.drain(..) {
            s.job.cancel();
            let _ = s.job.wait();
        }
        self.parts.clear();
        self.recovering = None;
    }

    /// Another node failed and the job recovers live (decision 25): this
    /// node's shares keep running under `epoch`, void the checkpoints up
    /// to `aborted`, stream their checkpoints to `replicas`, and take the
    /// connections of the replacements of `moved` as they come
    /// ([`NodeAgent::poll`]).
    fn recover(
        &mut self,
        epoch: u64,
        checkpoint: u64,
        aborted: u64,
        replicas: Vec<SocketAddr>,
        moved: Vec<usize>,
    ) -> Result<(), String> {
        let name = &self.name;
        if self.shares.is_empty() {
            return Err(format!("node `{name}` runs no share of the job to recover"));
        }
        for s in &mut self.shares {
            if let Some(why) = s.job.metrics().failure() {
                return Err(format!("node `{name}`: its share already failed: {why}"));
            }
            // Epoch 0 is a name without an epoch: replica streams start at 1.
            s.job
                .recover(checkpoint, aborted, replicas.clone(), epoch + 1)
                .map_err(|e| format!("node `{name}`: {e}"))?;
            s.epoch = epoch;
            s.pending = s.pending.filter(|&id| id > aborted);
            // `Recovered` is this share's `Ready` for the new epoch.
            s.ready_sent = true;
        }
        self.parts.retain(|&id, _| id > aborted);
        self.recovering = Some((epoch, moved));
        if !self.quiet {
            eprintln!(
                "node {}: epoch {epoch} goes on live; the replacements restore checkpoint {checkpoint}",
                self.name
            );
        }
        Ok(())
    }

    /// Runs the replacement of a failed node's workers in a running job
    /// (live recovery): fetches their part of the checkpoint, restores it,
    /// and connects to every other worker. On a survivor (it took the
    /// failed slot over) the new share runs beside its own.
    fn deploy_join(
        &mut self,
        d: Deployment,
        abort: &mut dyn FnMut() -> Option<String>,
    ) -> Result<(), String> {
        let slot = d.join.ok_or("not a joining deployment")?;
        if self.shares.iter().any(|s| s.epoch != d.epoch) {
            return Err(format!(
                "node `{}` runs a share of another epoch and cannot join epoch {}",
                self.name, d.epoch
            ));
        }
        if d.nodes.get(slot).is_none_or(|n| n.name != self.name) {
            return Err(format!("node `{}` is not slot {slot} of the deployment it received", self.name));
        }
        if self.rc.checkpoint_interval_ms == 0 {
            return Err(format!("node `{}`: only a job with checkpoints recovers live", self.name));
        }
        self.fetch_parts(&d, abort)?;
        let placement = ClusterPlacement {
            nodes: d.nodes.clone(),
            me: slot,
            epoch: d.epoch,
            join: Some(crate::control::placement::Join { slot, moved: d.moved.clone() }),
            ..self.placement.clone()
        };
        let beside = !self.shares.is_empty();
        let job = self.start_share(&d, placement, slot, abort)?;
        if !self.quiet {
            let from = d.restore.as_ref().map_or("the start".to_string(), |m| format!("checkpoint {}", m.id));
            let how = if beside { " beside its own" } else { "" };
            eprintln!(
                "node {}: joins epoch {} in slot {slot}{how}, restored from {from}",
                self.name, d.epoch
            );
        }
        self.started(d.epoch, job);
        Ok(())
    }

    /// Starts `d`'s share that runs `placement.nodes[slot]` (beside the
    /// shares running here, which take its links to their workers).
    fn start_share(
        &mut self,
        d: &Deployment,
        placement: ClusterPlacement,
        slot: usize,
        abort: &mut dyn FnMut() -> Option<String>,
    ) -> Result<Job, String> {
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
        });
        let build = self.build.clone();
        let moved = d.moved.clone();
        let mut running = Running { shares: &self.shares, moved: &moved };
        let beside: Option<&mut dyn crate::remote::Beside> =
            if self.shares.is_empty() { None } else { Some(&mut running) };
        Runtime::new(rc)
            .start_cluster_or_abort(
                &self.query,
                move |df| build(df),
                placement,
                &mut self.listener,
                checkpoints,
                abort,
                beside,
            )
            .map_err(|e| format!("node `{}`: {e}", self.name))
    }

    /// A share of `epoch` started here.
    fn started(&mut self, epoch: u64, job: Job) {
        if self.shares.is_empty() {
            if let Some((_, _, last_out)) = &mut self.metrics_every {
                *last_out = 0;
            }
            self.failed_sent = false;
        }
        self.shares.push(Share { epoch, job, pending: None, ready_sent: false });
    }

    /// Hands the connections of replacements of failed workers to the
    /// shares' workers they link to.
    fn accept_relinks(&mut self) {
        let Some((epoch, moved)) = &self.recovering else { return };
        if self.shares.is_empty() {
            return;
        }
        let mut running = Running { shares: &self.shares, moved };
        loop {
            let mut taken = None;
            let accepted =
                self.listener.poll_accept_with(|peer| match crate::remote::parse_any_link_name(&peer.node) {
                    Some((from, to, e))
                        if e == *epoch && crate::remote::Beside::wants(&running, from, to, e) =>
                    {
                        taken = Some((from, to));
                        Ok(())
                    }
                    _ => Err(Rejection::UnknownNode),
                });
            match accepted {
                Ok(Some(conn)) => {
                    if let Some((from, to)) = taken {
                        crate::remote::Beside::take(&mut running, from, to, conn);
                    }
                }
                Ok(None) => break,
                // One bad peer does not stop the others.
                Err(e) => eprintln!("spate: node {}: refused a connection: {e}", self.name),
            }
        }
    }

    /// Before a deployment that restores: fetches the parts this node does
    /// not hold from a backup node, one thread per part, while `abort`
    /// keeps the control connection alive (a fetch of hundreds of MiB
    /// takes longer than the failure timeout) and may give up.
    fn fetch_parts(&self, d: &Deployment, abort: &mut dyn FnMut() -> Option<String>) -> Result<(), String> {
        let Some(m) = &d.restore else { return Ok(()) };
        let fetch_one = |w: usize, addr: SocketAddr| -> Result<(), String> {
            let t = Instant::now();
            let dir = self.rc.data_dir.join(&self.query).join("backup").join(format!("w{w}"));
            let _ = std::fs::remove_dir_all(&dir);
            let mut store = spate_state::BackupStore::open(&dir, spate_state::Durability::PageCache)
                .map_err(|e| format!("cannot open the backup store in {}: {e}", dir.display()))?;
            let got = crate::replica::fetch(
                addr,
                self.placement.cluster,
                w,
                m.id,
                &mut store,
                self.placement.connect_timeout,
            )
            .map_err(|e| format!("fetching checkpoint {} of worker {w} from {addr}: {e}", m.id))?;
            if !self.quiet {
                eprintln!(
                    "node {}: fetched checkpoint {} of worker {w} from {addr} ({got:?}) in {} ms",
                    self.name,
                    m.id,
                    t.elapsed().as_millis()
                );
            }
            Ok(())
        };
        std::thread::scope(|scope| {
            let handles: Vec<_> =
                d.fetch.iter().map(|&(w, addr)| scope.spawn(move || fetch_one(w, addr))).collect();
            let mut gave_up = None;
            while !handles.iter().all(|h| h.is_finished()) {
                if gave_up.is_none() {
                    gave_up = abort();
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            for h in handles {
                h.join().map_err(|_| "a fetch thread panicked".to_string())??;
            }
            gave_up.map_or(Ok(()), |why| Err(format!("node `{}`: fetching: {why}", self.name)))
        })
    }

    fn deploy(&mut self, d: Deployment, abort: &mut dyn FnMut() -> Option<String>) -> Result<(), String> {
        let me = d
            .nodes
            .iter()
            .position(|n| n.name == self.name)
            .ok_or_else(|| format!("node `{}` is not in the deployment it received", self.name))?;
        self.fetch_parts(&d, abort)?;
        let placement =
            ClusterPlacement { nodes: d.nodes.clone(), me, epoch: d.epoch, ..self.placement.clone() };
        let job = self.start_share(&d, placement, me, abort)?;
        if let (Some(m), false) = (&d.restore, self.quiet) {
            eprintln!("node {}: epoch {} resumes from checkpoint {}", self.name, d.epoch, m.id);
        }
        self.started(d.epoch, job);
        Ok(())
    }

    /// Moves the job along: hands it requested checkpoints, and queues in
    /// `out` what the coordinator must hear (ready, checkpoint parts, an
    /// end or a failure).
    pub fn poll(&mut self, out: &mut Vec<Msg>) {
        self.accept_relinks();
        let Some(epoch) = self.shares.first().map(|s| s.epoch) else { return };
        if let Some((every, next, last_out)) = &mut self.metrics_every {
            let now = Instant::now();
            if now >= *next {
                *next = now + *every;
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
        if self.shares.iter().all(|s| s.job.is_finished()) {
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

    /// The live metrics of this node's own share, while one runs here.
    pub fn metrics(&self) -> Option<&Arc<crate::metrics::JobMetrics>> {
        self.shares.first().map(|s| s.job.metrics())
    }
}
