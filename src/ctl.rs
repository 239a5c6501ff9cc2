//! `spate ctl`: requests to a running cluster's coordinator — rescale to
//! a number of workers, move a run of bins to a worker, scale a node in,
//! show the assignment — each answered with what moved, how many bytes
//! and how long it took, or with why nothing changed. With a config
//! without `[cluster]`, the same to a `spate run` process of it, on its
//! control socket (`crate::ctl_local`).

use std::time::Duration;

use crate::config::Config;
use crate::deploy;

/// What `spate ctl` asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CtlRequest {
    /// The assignment of bins to workers now.
    Assignment,
    /// Equal runs of bins over the first `workers` workers.
    Scale {
        /// Workers that own bins afterwards.
        workers: usize,
    },
    /// Every bin off node `node` (the last node owning bins), which then
    /// owns none and, on a cluster with checkpoints and live recovery,
    /// leaves the job: back to the pool, or released (`exit`).
    ScaleIn {
        /// The node.
        node: String,
        /// Release the node once it left: its process exits.
        exit: bool,
    },
    /// Bins `start..end` to a worker: a global worker number, `NODE` (its
    /// first worker) or `NODE/K` (its worker `K`).
    Move {
        /// The first bin.
        start: u32,
        /// The bin after the last.
        end: u32,
        /// Where to.
        to: String,
    },
}

/// The worker `to` names in `cfg` (see [`CtlRequest::Move`]).
pub fn worker_named(cfg: &Config, to: &str) -> Result<usize, String> {
    if let Ok(w) = to.parse::<usize>() {
        return Ok(w);
    }
    let cluster = cfg.cluster.as_ref().ok_or("the config has no [cluster] section")?;
    let (node, k) = match to.split_once('/') {
        Some((n, k)) => {
            (n, k.parse::<usize>().map_err(|_| format!("`{k}` in `{to}` is not a worker number"))?)
        }
        None => (to, 0),
    };
    let mut first = 0;
    for n in cluster.nodes.iter().filter(|n| !n.spare) {
        if n.name == node {
            if k >= n.workers {
                return Err(format!("node `{node}` runs {} workers: it has no worker {k}", n.workers));
            }
            return Ok(first + k);
        }
        first += n.workers;
    }
    Err(format!("no node of the config that runs workers is called `{node}`"))
}

/// Sends `req` (steps of at most `max_bins` bins and about `max_bytes`
/// bytes, `pace` times a step's time apart, where given) to the
/// coordinator of `cfg`'s cluster, or to its `spate run` process without
/// a `[cluster]`; the answer, or why there was none or it refused.
pub fn ctl(
    cfg: &Config,
    req: &CtlRequest,
    max_bins: Option<u32>,
    max_bytes: Option<u64>,
    pace: Option<f64>,
    timeout: Duration,
) -> Result<String, String> {
    let mut text = match req {
        CtlRequest::Assignment => "assignment".to_string(),
        CtlRequest::Scale { workers } => format!("scale {workers}"),
        CtlRequest::ScaleIn { node, .. } if cfg.cluster.is_none() => {
            return Err(format!(
                "`scale-in --node {node}` needs a cluster config: a `spate run` job has no nodes"
            ))
        }
        CtlRequest::ScaleIn { node, exit } => {
            format!("scale-in {node}{}", if *exit { " --exit" } else { "" })
        }
        CtlRequest::Move { start, end, to } => format!("move {start} {end} {}", worker_named(cfg, to)?),
    };
    text.push_str(&spate_core::control::ctl::StepBounds::suffix(max_bins, max_bytes, pace));
    let Some(cluster) = cfg.cluster.as_ref() else { return ctl_run(cfg, &text, timeout) };
    let c = cluster.coordinator_index()?;
    let (placement, addr, _) = deploy::node_setup(cfg, &cluster.nodes[c].name)?;
    // The coordinator takes only connections that prove the cluster's
    // secret (decision 46): the same as the nodes'.
    crate::node::install_secret(cluster, "ctl")?;
    match spate_core::control::ctl::request(addr, placement.cluster, &text, timeout) {
        Ok((true, answer)) => Ok(answer),
        Ok((false, why)) => Err(format!("refused: {why}")),
        Err(e) => Err(e.to_string()),
    }
}

/// Request `text` to the `spate run` process of `cfg` (a config without a
/// `[cluster]` section), on its control socket (`crate::ctl_local`).
fn ctl_run(cfg: &Config, text: &str, timeout: Duration) -> Result<String, String> {
    let path = crate::ctl_local::socket_path(&cfg.runtime_config().data_dir, &cfg.query.name);
    crate::ctl_local::request(&path, text, timeout).map_err(|why| format!("refused: {why}"))
}
