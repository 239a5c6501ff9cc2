//! One node process of a multi-process job (`spate node`): its listener,
//! its replica service, and its agent, driven by the coordinator (which
//! may be this node; see [`crate::control`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use spate_core::replica::ReplicaServer;
use spate_state::Durability;

use crate::config::Config;
use crate::deploy;
use spate_core::control::NodeReport;
use spate_core::control::{Coordinator, Member, NodeAgent, Outcome};

/// How `spate node` runs this node.
#[derive(Debug, Clone, Default)]
pub struct NodeOptions {
    /// Pin the workers from this core on (else the config's).
    pub first_core: Option<usize>,
    /// Pin workers at all.
    pub pin: bool,
    /// No progress output.
    pub quiet: bool,
    /// On the coordinator: print the job's events as JSON lines on stdout
    /// as they happen.
    pub events: bool,
}

/// How a node's run ended.
pub struct NodeEnd {
    /// Its report of the last epoch it ran to the end, if any.
    pub report: Option<NodeReport>,
    /// On the coordinator: every node's report and the job's events.
    pub outcome: Option<Outcome>,
}

/// Runs node `name` of `cfg` until the coordinator releases it (or the
/// job fails).
pub fn run_node(cfg: &Config, name: &str, opts: &NodeOptions) -> Result<NodeEnd, String> {
    let (placement, addr, mut rc) = deploy::node_setup(cfg, name)?;
    let cluster = cfg.cluster.as_ref().ok_or("the config has no [cluster] section")?;
    let coordinator = cluster.coordinator_index()?;
    let failure_timeout = Duration::from_millis(cluster.failure_timeout_ms);
    if let Some(c) = opts.first_core {
        rc.first_core = c;
    }
    if !opts.pin {
        rc.pin = false;
    }
    let mut listener =
        spate_net::Listener::bind(addr, spate_core::remote::net_config(name.to_string(), placement.cluster))
            .map_err(|e| format!("node `{name}`: cannot listen on {addr}: {e}"))?;
    let replica_root = rc.data_dir.join(&cfg.query.name).join("replica");
    let _ = std::fs::remove_dir_all(&replica_root);
    let replica = ReplicaServer::start(
        SocketAddr::new(addr.ip(), cluster.nodes[placement.me].replica_port),
        replica_root,
        placement.cluster,
        Durability::PageCache,
    )
    .map_err(|e| format!("node `{name}`: cannot start its replica service: {e}"))?;
    let build = crate::queries::build(&cfg.query, &cfg.sink)?;
    let build: Arc<dyn Fn(&spate_core::Dataflow) + Send + Sync> = build;
    let me = placement.me;
    let spare = cluster.nodes[me].spare;
    if me == coordinator {
        let spares: Vec<bool> = cluster.nodes.iter().map(|n| n.spare).collect();
        let config = spate_core::control::plan::PlanConfig {
            failure_timeout_ms: cluster.failure_timeout_ms,
            connect_timeout_ms: cluster.connect_timeout_ms,
            interval_ms: cfg.checkpoint.interval_ms,
            backups: cfg.backups(),
            // The sources start as the first deployment's workers connect.
            origin_ns: spate_core::control::unix_ms() * 1_000_000 + 200_000_000,
            live: cfg.live_recovery(),
            restarts: spate_core::control::RESTARTS,
        };
        let mut coord = Coordinator::accept_members(&mut listener, &placement, &spares, config, opts.quiet)?;
        coord.register_self(placement.nodes[me].workers, replica.addr());
        if opts.events {
            coord.print_events();
        }
        let mut agent = NodeAgent::new(&cfg.query.name, build, rc, placement, listener, opts.quiet);
        agent.set_replica(replica.completion());
        let outcome = coord.run(&mut agent);
        write_histogram(name, &agent)?;
        replica.stop();
        let outcome = outcome?;
        Ok(NodeEnd { report: agent.report().cloned(), outcome: Some(outcome) })
    } else {
        let at = placement.nodes[coordinator].addr;
        let workers = placement.nodes[me].workers;
        let connect_timeout = placement.connect_timeout;
        let member = Member::register(at, name, workers, replica.addr(), &placement, failure_timeout)?;
        let mut agent = NodeAgent::new(&cfg.query.name, build, rc, placement, listener, opts.quiet);
        agent.set_replica(replica.completion());
        // A spare waits as long as the job runs.
        let first = if spare { Duration::from_secs(u32::MAX as u64) } else { connect_timeout * 2 };
        let ran = member.run(&mut agent, first);
        write_histogram(name, &agent)?;
        replica.stop();
        ran.map_err(|e| format!("node `{name}`: {e}"))?;
        Ok(NodeEnd { report: agent.report().cloned(), outcome: None })
    }
}

/// With [`deploy::HISTOGRAM_DIR_ENV`] set, writes the node's latency
/// histogram there (an empty one for a node that ran no epoch to its end).
fn write_histogram(name: &str, agent: &NodeAgent) -> Result<(), String> {
    if let Some(dir) = std::env::var_os(deploy::HISTOGRAM_DIR_ENV) {
        let empty = spate_core::metrics::latency_histogram();
        let h = agent.latency().unwrap_or(&empty);
        deploy::write_histogram(std::path::Path::new(&dir), name, h)?;
    }
    Ok(())
}
