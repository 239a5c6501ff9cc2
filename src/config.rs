//! The deployment config: one TOML file names the query and its parameters,
//! the runtime settings and the sink.
//!
//! ```toml
//! [query]
//! name = "keyed-sum"          # a query of the registry (`spate queries`)
//! [query.params]              # validated by the query
//! records = 10_000_000
//!
//! [runtime]                   # every field optional
//! workers = 0                 # 0 = every core of this process
//! linger_us = 200
//!
//! [sink]
//! kind = "count"              # count | stdout | file | none
//! latency = true
//!
//! [checkpoint]                # optional: aligned checkpoints under data_dir
//! interval_ms = 1000          # 0 = none
//! restore = true              # resume from the last complete one on start
//! backups = 1                 # cluster: backup nodes each checkpoint streams to
//! recovery = "live"           # cluster: "live" restores only a failed node's workers,
//!                             # survivors replay their buffers; "rollback" rolls every
//!                             # node back to the last complete checkpoint
//! buffer_mb = 512             # live: replay buffers per worker (what it sent to other
//!                             # nodes since the last complete checkpoint)
//! durability = "page-cache"   # cluster: how replica services store backups ("fsync")
//! stall_intervals = 3         # cluster: warn when no checkpoint completed for this many
//!                             # intervals
//!
//! [cluster]                   # optional: the job spans these node processes
//! connect_timeout_ms = 10000  # every node must be connected by then
//! coordinator = "a"           # optional (default: the first node); with workers = 0
//!                             # it only coordinates, and every worker node may fail
//! failure_timeout_ms = 5000   # a node silent this long is declared failed
//! secret_file = "/etc/spate/secret"  # the cluster's shared secret (else the variable
//!                             # SPATE_CLUSTER_SECRET; `spate cluster` makes one)
//! start_workers = 0           # workers owning the bins at first (0: every running one)
//! max_workers = 0             # the job's workers at most: those past the running nodes'
//!                             # are parked until a rescale puts them on spares that join
//! [[cluster.nodes]]           # in worker order; `spate node --name a`
//! name = "a"
//! address = "10.0.0.1:7100"   # where its listener is (port 0: `spate cluster` picks one)
//! workers = 1
//! data_dir = "/var/lib/spate" # optional, else [runtime] data_dir/<name>
//! spare = false               # a spare waits idle to replace a failed node
//! replica_port = 7101         # its replica service (default 0: any free port)
//!
//! [scaling]                   # optional: a policy scales the job by live handoff
//! policy = "rate"             # "rate" (DS2) or "threshold" (SEEP)
//! interval_ms = 1000          # workers report their load this often
//! high = 0.7                  # threshold: a worker busier than this is a bottleneck
//! low = 0.3                   # threshold: every worker below this scales one in
//! reports = 2                 # consecutive reports before a scale-out
//! reports_in = 5              # consecutive reports before a scale-in
//! target_utilization = 0.7    # rate: the busy fraction it sizes the job for
//! min_workers = 1
//! max_workers = 0             # 0: every worker started ([runtime] max_workers, or
//!                             # a cluster's workers)
//! cooldown_ms = 3000          # no action for this long after one
//! scale_in_hold_ms = 10000    # no scale-in for this long after any action
//! max_bins_per_step = 256     # bins a handoff step moves at most
//! max_bytes_per_step = 0      # bytes of state a step moves, about (0: no bound)
//! step_pace = 0.0             # after a step, wait this many times its time
//! provisioner = "static"      # where nodes for parked workers come from: the
//!                             # config's spares, started beforehand (the only kind)
//! ```
//!
//! Unknown fields are errors, and every error names the field.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use spate_core::limits::{CHECKPOINT_INTERVAL_MS_MAX, CLUSTER_TIMEOUT_MS_MAX};
use spate_core::RuntimeConfig;

pub use crate::job_spec::{QuerySection, SinkKind, SinkSection};
use crate::registry::Registry;

/// A parsed deployment config.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The query to run.
    pub query: QuerySection,
    /// Runtime settings.
    #[serde(default)]
    pub runtime: RuntimeSection,
    /// Where results go.
    #[serde(default)]
    pub sink: SinkSection,
    /// Periodic checkpoints.
    #[serde(default)]
    pub checkpoint: CheckpointSection,
    /// The nodes of a multi-process deployment.
    pub cluster: Option<ClusterSection>,
    /// A scaling policy.
    pub scaling: Option<ScalingSection>,
}

/// `[scaling]`: every field optional, defaults of
/// [`spate_core::control::scaling::ScalingConfig`].
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScalingSection {
    /// `"rate"` or `"threshold"`.
    pub policy: Option<String>,
    /// Load reports this often, ms.
    pub interval_ms: Option<u64>,
    /// Threshold: bottleneck above this busy fraction.
    pub high: Option<f64>,
    /// Threshold: spare capacity below this.
    pub low: Option<f64>,
    /// Reports above `high` (or asking for more) before a scale-out.
    pub reports: Option<u32>,
    /// Reports of spare capacity before a scale-in.
    pub reports_in: Option<u32>,
    /// Rate: the busy fraction the job is sized for.
    pub target_utilization: Option<f64>,
    /// Fewest workers in use.
    pub min_workers: Option<usize>,
    /// Most workers in use (0: all started).
    pub max_workers: Option<usize>,
    /// No action for this long after one, ms.
    pub cooldown_ms: Option<u64>,
    /// No scale-in for this long after any action, ms.
    pub scale_in_hold_ms: Option<u64>,
    /// Bins a handoff step moves at most.
    pub max_bins_per_step: Option<u32>,
    /// Bytes of state a handoff step moves at most, about (0: no bound).
    pub max_bytes_per_step: Option<u64>,
    /// After each step, wait this many times as long as it took.
    pub step_pace: Option<f64>,
    /// Where the nodes for parked workers come from: `static`, the spares
    /// of `[cluster]`, started beforehand (decision 63). `local` and
    /// `command` are not built, and refused.
    pub provisioner: Option<String>,
}

impl ScalingSection {
    /// The policy's config; the error names the key and why.
    pub fn scaling_config(&self) -> Result<spate_core::control::scaling::ScalingConfig, String> {
        use spate_core::control::scaling::{PolicyKind, ScalingConfig};
        let mut c = ScalingConfig::default();
        match self.provisioner.as_deref() {
            None | Some("static") => {}
            Some(p @ ("local" | "command")) => {
                return Err(format!(
                    "scaling.provisioner: `{p}` is not built yet; the pool is \"static\": the \
                     [cluster] nodes with spare = true, started beforehand"
                ))
            }
            Some(p) => {
                return Err(format!("scaling.provisioner: `{p}` is not a provisioner: expected \"static\""))
            }
        }
        if let Some(p) = &self.policy {
            c.policy = PolicyKind::parse(p).ok_or_else(|| {
                format!("scaling.policy: `{p}` is not a policy: expected \"rate\" or \"threshold\"")
            })?;
        }
        macro_rules! set {
            ($($f:ident),*) => { $( if let Some(v) = self.$f { c.$f = v; } )* };
        }
        set!(
            interval_ms,
            high,
            low,
            reports,
            reports_in,
            target_utilization,
            min_workers,
            max_workers,
            cooldown_ms,
            scale_in_hold_ms,
            max_bins_per_step,
            max_bytes_per_step,
            step_pace
        );
        c.validate()?;
        Ok(c)
    }
}

/// `[cluster]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSection {
    /// How long a node waits for all its connections, ms.
    #[serde(default = "connect_timeout_default")]
    pub connect_timeout_ms: u64,
    /// The node that coordinates (default: the first).
    pub coordinator: Option<String>,
    /// A node silent this long is declared failed, ms.
    #[serde(default = "failure_timeout_default")]
    pub failure_timeout_ms: u64,
    /// The nodes, in worker order.
    pub nodes: Vec<NodeSection>,
    /// The job's first `start_workers` workers (in worker order) own its
    /// bins and run its sources when it first starts; the later ones own
    /// nothing until `spate ctl scale` hands them bins. 0: every worker.
    #[serde(default)]
    pub start_workers: usize,
    /// The job's workers at most, over every node that may run it (0: the
    /// workers of the nodes that are not spares). Those past the running
    /// nodes' workers are *parked*: one-worker slots that own no bins and
    /// run no source, hosted by the running nodes until a rescale hands
    /// them bins, when each moves to a node of the pool (a spare) that
    /// joins the running job (decision 63).
    #[serde(default)]
    pub max_workers: usize,
    /// A file holding the cluster's shared secret (at least 16 bytes;
    /// surrounding whitespace ignored). Without it, the secret comes from
    /// `SPATE_CLUSTER_SECRET`; `spate cluster` generates one for its nodes
    /// when neither is set. Every connection between nodes proves it
    /// (decision 46).
    pub secret_file: Option<PathBuf>,
}

/// Workers a cluster job may have at most (`[cluster] max_workers`).
const MAX_JOB_WORKERS: usize = 1024;

impl ClusterSection {
    /// The workers of the nodes that are not spares.
    pub fn running_workers(&self) -> usize {
        self.nodes.iter().filter(|n| !n.spare).map(|n| n.workers).sum()
    }

    /// The first workers that own the bins and run the sources when the
    /// job first starts (`start_workers`; with parked workers, 0 means the
    /// running nodes' workers, never a parked one).
    pub fn effective_start_workers(&self) -> usize {
        match (self.start_workers, self.max_workers > self.running_workers()) {
            (0, true) => self.running_workers(),
            (n, _) => n,
        }
    }
}

fn connect_timeout_default() -> u64 {
    10_000
}

fn failure_timeout_default() -> u64 {
    5_000
}

impl ClusterSection {
    fn validate(&self) -> Result<(), String> {
        if self.nodes.is_empty() {
            return Err("cluster.nodes: a cluster needs at least one node".into());
        }
        if self.nodes.iter().all(|n| n.spare) {
            let names: Vec<&str> = self.nodes.iter().map(|n| n.name.as_str()).collect();
            return Err(format!(
                "cluster.nodes: every node is a spare ({}); at least one must run the job (spare = false)",
                names.join(", ")
            ));
        }
        let c = self.coordinator_index()?;
        if self.nodes[c].spare {
            return Err(format!(
                "cluster.coordinator: `{}` is a spare node; the coordinator must run workers",
                self.nodes[c].name
            ));
        }
        if self.failure_timeout_ms == 0 {
            return Err("cluster.failure_timeout_ms: must be above 0".into());
        }
        let running: usize = self.nodes.iter().filter(|n| !n.spare).map(|n| n.workers).sum();
        if self.start_workers > running {
            return Err(format!(
                "cluster.start_workers: {} is more than the {running} workers the nodes that are not spares run",
                self.start_workers
            ));
        }
        if self.max_workers != 0 && self.max_workers < running {
            return Err(format!(
                "cluster.max_workers: {} is fewer than the {running} workers the nodes that are not spares run",
                self.max_workers
            ));
        }
        if self.max_workers > MAX_JOB_WORKERS {
            return Err(format!(
                "cluster.max_workers: {} is more than the maximum of {MAX_JOB_WORKERS}",
                self.max_workers
            ));
        }
        for (field, ms) in
            [("failure_timeout_ms", self.failure_timeout_ms), ("connect_timeout_ms", self.connect_timeout_ms)]
        {
            if ms > CLUSTER_TIMEOUT_MS_MAX {
                return Err(format!(
                    "cluster.{field}: {ms} is more than the maximum of {CLUSTER_TIMEOUT_MS_MAX} (a day)"
                ));
            }
        }
        let mut seen = std::collections::HashSet::new();
        for (i, n) in self.nodes.iter().enumerate() {
            if n.name.is_empty() || n.name.contains(char::is_whitespace) {
                return Err(format!("cluster.nodes[{i}].name: {:?} is not a node name", n.name));
            }
            if !seen.insert(n.name.as_str()) {
                return Err(format!("cluster.nodes[{i}].name: `{}` appears twice", n.name));
            }
            if n.workers == 0 && (i != c || n.spare) {
                return Err(format!(
                    "cluster.nodes[{i}].workers: node `{}` needs at least one worker (only the coordinator may run none)",
                    n.name
                ));
            }
            if n.address.parse::<std::net::SocketAddr>().is_err() {
                return Err(format!(
                    "cluster.nodes[{i}].address: `{}` is not an ip:port address (node `{}`)",
                    n.address, n.name
                ));
            }
        }
        Ok(())
    }

    /// The coordinator's index among the nodes.
    pub fn coordinator_index(&self) -> Result<usize, String> {
        match &self.coordinator {
            None => Ok(0),
            Some(c) => self.node(c).map_err(|e| format!("cluster.coordinator: {e}")),
        }
    }

    /// The node called `name`, or an error listing the known names.
    pub fn node(&self, name: &str) -> Result<usize, String> {
        self.nodes.iter().position(|n| n.name == name).ok_or_else(|| {
            let names: Vec<&str> = self.nodes.iter().map(|n| n.name.as_str()).collect();
            format!("no node `{name}` in the cluster; its nodes are: {}", names.join(", "))
        })
    }
}

/// `[[cluster.nodes]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSection {
    /// The node's name (`spate node --name`).
    pub name: String,
    /// `host:port` of its listener.
    pub address: String,
    /// Workers it runs.
    #[serde(default = "one")]
    pub workers: usize,
    /// Its data directory (default: `[runtime] data_dir` / its name).
    pub data_dir: Option<PathBuf>,
    /// A spare node: registers and waits, idle, to replace a node that
    /// fails (it then runs that node's workers).
    #[serde(default)]
    pub spare: bool,
    /// The port of its replica service, where other nodes stream their
    /// checkpoints to it (on the address's host); default 0: one the OS
    /// picks (open it in a firewall by setting it).
    #[serde(default)]
    pub replica_port: u16,
}

fn one() -> usize {
    1
}

/// `[checkpoint]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointSection {
    /// Milliseconds between checkpoints; 0 (the default) takes none.
    #[serde(default)]
    pub interval_ms: u64,
    /// On start, resume from the job's last complete checkpoint if there is
    /// one (default true when checkpoints are on).
    pub restore: Option<bool>,
    /// On a cluster: how many other nodes each checkpoint is streamed to
    /// (default 1).
    pub backups: Option<usize>,
    /// On a cluster: how a failed node is recovered (default live).
    pub recovery: Option<Recovery>,
    /// With live recovery: MiB of replay buffers per worker (default 512;
    /// see docs/ARCHITECTURE.md, decision 25).
    pub buffer_mb: Option<u64>,
    /// On a cluster: how a replica service stores the checkpoints it keeps
    /// before it acknowledges them (default `page-cache`; `fsync`: a
    /// failed fsync stops that node's replica service, decision 47).
    pub durability: Option<DurabilitySetting>,
    /// On a cluster: the coordinator warns (and reports a `stalled` event)
    /// when no checkpoint completed for this many intervals (default 3).
    pub stall_intervals: Option<u32>,
}

/// `[checkpoint] durability`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DurabilitySetting {
    /// Written to the page cache (survives a process crash, not a machine's).
    PageCache,
    /// Fsynced (files and directory) before the acknowledgement.
    Fsync,
}

impl DurabilitySetting {
    /// The backup store's durability.
    pub fn durability(self) -> spate_state::Durability {
        match self {
            DurabilitySetting::PageCache => spate_state::Durability::PageCache,
            DurabilitySetting::Fsync => spate_state::Durability::Fsync,
        }
    }
}

/// `[checkpoint] recovery`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Recovery {
    /// Restore only the failed node's workers, on replacements; the
    /// survivors keep running, re-link to them and replay their buffered
    /// output (SEEP's recovery using state management).
    Live,
    /// Roll every node back to the last complete checkpoint.
    Rollback,
}

/// `[runtime]`: each field overrides the default of [`RuntimeConfig`].
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeSection {
    /// Workers; 0 = one per core.
    pub workers: Option<usize>,
    /// Workers an embedding program may grow the job to by live handoff
    /// (`Job::move_bins`): started, owning nothing at first.
    pub max_workers: Option<usize>,
    /// Pin workers to cores.
    pub pin: Option<bool>,
    /// Records per batch.
    pub batch_records: Option<usize>,
    /// Bytes per batch.
    pub batch_bytes: Option<usize>,
    /// Linger of a partly filled batch, µs.
    pub linger_us: Option<u64>,
    /// Batches in flight per channel.
    pub channel_batches: Option<usize>,
    /// Records per source step.
    pub source_step_records: Option<usize>,
    /// `B`: 2^B bins.
    pub bins_log2: Option<u8>,
    /// State directory.
    pub data_dir: Option<PathBuf>,
    /// glommio I/O memory per worker, bytes.
    pub io_memory_bytes: Option<usize>,
    /// Let idle workers sleep instead of busy-polling.
    pub park_when_idle: Option<bool>,
    /// Spin before parking, µs.
    pub spin_before_park_us: Option<u64>,
}

/// A config that could not be loaded, with the file and what is wrong.
#[derive(Debug)]
pub struct ConfigError {
    /// The file.
    pub path: PathBuf,
    /// What is wrong (names the field).
    pub message: String,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path.display(), self.message)
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Reads and validates a config file that names a built-in query.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Self::load_with(path, &Registry::builtin())
    }

    /// Reads and validates a config file whose query is one of `queries`.
    pub fn load_with(path: &Path, queries: &Registry) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError { path: path.to_path_buf(), message: format!("cannot read: {e}") })?;
        Self::parse_with(&text, queries).map_err(|message| ConfigError { path: path.to_path_buf(), message })
    }

    /// Parses and validates config text that names a built-in query.
    pub fn parse(text: &str) -> Result<Self, String> {
        Self::parse_with(text, &Registry::builtin())
    }

    /// Parses and validates config text whose query is one of `queries`
    /// (its name known, its `[query.params]` read as the query's type).
    pub fn parse_with(text: &str, queries: &Registry) -> Result<Self, String> {
        let cfg: Config = toml::from_str(text).map_err(|e| e.to_string().trim_end().to_string())?;
        cfg.validate(queries)?;
        Ok(cfg)
    }

    fn validate(&self, queries: &Registry) -> Result<(), String> {
        if self.sink.kind == SinkKind::File && self.sink.path.is_none() {
            return Err("sink.path is required when sink.kind = \"file\"".into());
        }
        if self.sink.kind != SinkKind::File && self.sink.path.is_some() {
            return Err(format!(
                "sink.path is only used with sink.kind = \"file\" (kind is {:?})",
                self.sink.kind
            ));
        }
        if self.checkpoint.interval_ms > CHECKPOINT_INTERVAL_MS_MAX {
            return Err(format!(
                "checkpoint.interval_ms: {} is more than the maximum of {CHECKPOINT_INTERVAL_MS_MAX} (a day)",
                self.checkpoint.interval_ms
            ));
        }
        match &self.cluster {
            Some(c) => {
                c.validate()?;
                let active = c.nodes.iter().filter(|n| !n.spare && n.workers > 0).count();
                if active == 0 {
                    return Err("cluster.nodes: no node runs workers (only a coordinator with workers = 0 and spares)".into());
                }
                if let Some(mb) = self.checkpoint.buffer_mb {
                    if !(1..=65_536).contains(&mb) {
                        return Err(format!("checkpoint.buffer_mb: {mb} is not between 1 and 65536"));
                    }
                }
                if self.checkpoint.interval_ms > 0 {
                    self.check_backups(c, active)?;
                }
                if let Some(n) = self.checkpoint.stall_intervals {
                    if !(1..=1_000_000).contains(&n) {
                        return Err(format!("checkpoint.stall_intervals: {n} is not between 1 and 1000000"));
                    }
                }
            }
            None if self.checkpoint.backups.is_some() => {
                return Err("checkpoint.backups: only a [cluster] streams checkpoints to backup nodes".into());
            }
            None if self.checkpoint.durability.is_some() || self.checkpoint.stall_intervals.is_some() => {
                let field =
                    if self.checkpoint.durability.is_some() { "durability" } else { "stall_intervals" };
                return Err(format!(
                    "checkpoint.{field}: only a [cluster] has replica services and a coordinator"
                ));
            }
            None if self.checkpoint.recovery.is_some() || self.checkpoint.buffer_mb.is_some() => {
                let field = if self.checkpoint.recovery.is_some() { "recovery" } else { "buffer_mb" };
                return Err(format!("checkpoint.{field}: only a [cluster] recovers from a node's failure"));
            }
            None => {}
        }
        if let Some(s) = &self.scaling {
            let c = s.scaling_config()?;
            let started = match &self.cluster {
                Some(cl) => cl.nodes.iter().filter(|n| !n.spare).map(|n| n.workers).sum(),
                None => self.runtime_config().threads(),
            };
            if c.min_workers > started {
                return Err(format!(
                    "scaling.min_workers: {} is more than the {started} workers the job starts",
                    c.min_workers
                ));
            }
        }
        queries.validate(&self.query)?;
        // Each error of a field starts with its name: `runtime.<field> ...`.
        self.runtime_config().validate().map_err(|e| match e.field() {
            Some(_) => format!("runtime.{e}"),
            None => format!("runtime: {e}"),
        })?;
        Ok(())
    }

    /// `[checkpoint] backups` against the rest of a cluster's config (with
    /// checkpoints on): none is no copy of a node's checkpoints on another
    /// node, which live recovery and spares restore from; more than the
    /// other nodes that run workers and the spares is more than there are
    /// to stream to (spares back a node up where the running nodes are too
    /// few, decision 63; a coordinator without workers holds no backups).
    fn check_backups(&self, c: &ClusterSection, active: usize) -> Result<(), String> {
        let r = self.backups();
        if r == 0 {
            if self.live_recovery() {
                return Err("checkpoint.backups: 0 keeps no copy of a node's checkpoints on another node, \
                     which live recovery (checkpoint.recovery = \"live\", the default on a cluster) \
                     restores a failed node's workers from: set backups = 1 or more, or recovery = \"rollback\""
                    .into());
            }
            if let Some(s) = c.nodes.iter().find(|n| n.spare) {
                return Err(format!(
                    "checkpoint.backups: 0 keeps no copy of a node's checkpoints on another node, so the \
                     spare `{}` could never restore a failed node's workers: set backups = 1 or more",
                    s.name
                ));
            }
        }
        // Spares back a node up where the running nodes are too few
        // (decision 63).
        let spares = c.nodes.iter().filter(|n| n.spare).count();
        let others = active - 1 + spares;
        if r > others {
            return Err(format!(
                "checkpoint.backups: {r} backup nodes per checkpoint, but a node has only {others} other \
                 node{} to stream to ({active} nodes that are not spares and {spares} spares; a node is \
                 backed up on others, never itself)",
                if others == 1 { "" } else { "s" }
            ));
        }
        Ok(())
    }

    /// Backup nodes per checkpoint on a cluster (`[checkpoint] backups`).
    pub fn backups(&self) -> usize {
        self.checkpoint.backups.unwrap_or(1)
    }

    /// Whether a cluster with checkpoints recovers a failed node live
    /// (`[checkpoint] recovery`, default live).
    pub fn live_recovery(&self) -> bool {
        self.cluster.is_some()
            && self.checkpoint.interval_ms > 0
            && self.checkpoint.recovery.unwrap_or(Recovery::Live) == Recovery::Live
    }

    /// The runtime config: defaults overridden by `[runtime]`.
    pub fn runtime_config(&self) -> RuntimeConfig {
        let mut c = RuntimeConfig {
            checkpoint_interval_ms: self.checkpoint.interval_ms,
            restore: self.checkpoint.restore.unwrap_or(true),
            ..Default::default()
        };
        if self.live_recovery() {
            c.replay_buffer_bytes = (self.checkpoint.buffer_mb.unwrap_or(512) as usize) << 20;
        }
        if let Some(s) = &self.scaling {
            c.load_interval_ms = s.interval_ms.unwrap_or(1_000);
        }
        let r = &self.runtime;
        macro_rules! set {
            ($($f:ident),*) => { $( if let Some(v) = r.$f.clone() { c.$f = v; } )* };
        }
        set!(
            workers,
            max_workers,
            pin,
            batch_records,
            batch_bytes,
            linger_us,
            channel_batches,
            source_step_records,
            bins_log2,
            data_dir,
            io_memory_bytes,
            park_when_idle,
            spin_before_park_us
        );
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        match Config::parse(text) {
            Ok(_) => panic!("accepted: {text}"),
            Err(e) => e,
        }
    }

    #[test]
    fn minimal_config_parses_with_defaults() {
        let c = Config::parse("[query]\nname = \"keyed-sum\"\n").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.sink.kind, SinkKind::Count);
        assert_eq!(c.runtime_config().linger_us, RuntimeConfig::default().linger_us);
    }

    #[test]
    fn errors_name_the_field() {
        assert!(err("[query]\nname = \"keyed-sum\"\n[runtime]\nwrokers = 2\n").contains("wrokers"));
        assert!(err("[query]\nname = \"keyed-sum\"\n[runtime]\nworkers = \"two\"\n").contains("workers"));
        assert!(err("[runtime]\nworkers = 2\n").contains("query"));
        assert!(err("[query]\nname = \"keyed-sum\"\n[sink]\nkind = \"printer\"\n").contains("printer"));
        assert!(err("[query]\nname = \"keyed-sum\"\n[sink]\nkind = \"file\"\n").contains("sink.path"));
        assert!(
            err("[query]\nname = \"keyed-sum\"\n[runtime]\nbatch_records = 0\n").contains("batch_records")
        );
        assert!(err("[query]\nname = \"keyed-sum\"\n[query.params]\nrecrods = 5\n").contains("recrods"));
    }

    #[test]
    fn scaling_errors_name_the_key() {
        let q = "[query]\nname = \"keyed-sum\"\n[runtime]\nworkers = 1\nmax_workers = 2\n[scaling]\n";
        for (body, key) in [
            ("policy = \"magic\"\n", "scaling.policy: `magic` is not a policy"),
            ("high = 2.0\n", "scaling.high"),
            ("low = 0.9\n", "scaling.low"),
            ("interval_ms = 1\n", "scaling.interval_ms"),
            ("min_workers = 3\n", "scaling.min_workers: 3 is more than the 2 workers"),
            ("hgih = 0.5\n", "hgih"),
            ("step_pace = -1.0\n", "scaling.step_pace: -1 is not a wait"),
            ("step_pace = \"slow\"\n", "step_pace"),
            ("[query.params]\nrate_schedule = [[5, 1], [5, 2]]\n", "query.params.rate_schedule"),
        ] {
            let e = err(&format!("{q}{body}"));
            assert!(e.contains(key), "{body:?}: {e} does not say {key:?}");
        }
        let cfg = Config::parse(&format!(
            "{q}policy = \"threshold\"\ninterval_ms = 500\nmax_bytes_per_step = 1048576\nstep_pace = 1.5\n"
        ))
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(cfg.runtime_config().load_interval_ms, 500);
        let s = cfg.scaling.as_ref().map(|s| s.scaling_config());
        assert!(
            matches!(s, Some(Ok(ref c)) if c.policy.name() == "threshold" && c.interval_ms == 500),
            "{s:?}"
        );
        let bounds = s.and_then(Result::ok).map(|c| c.step_bounds());
        assert_eq!(
            bounds,
            Some(spate_core::assignment::StepBounds {
                max_bins: 256,
                max_bytes: 1 << 20,
                pace_permille: 1500
            })
        );
    }

    #[test]
    fn unknown_query_lists_the_known_ones() {
        let e = err("[query]\nname = \"nope\"\n");
        assert!(e.contains("nope"), "{e}");
        for n in Registry::builtin().names() {
            assert!(e.contains(n), "{e}");
        }
    }
}
