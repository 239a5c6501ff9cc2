//! One node process of a multi-process job (`spate node`): its listener,
//! its replica service, and its agent, driven by the coordinator (which
//! may be this node; see [`crate::control`]).

use std::net::SocketAddr;

use spate_core::replica::ReplicaServer;
use spate_state::Durability;

use crate::config::Config;
use crate::deploy;
use crate::registry::Registry;
use spate_core::control::plan::PlanConfig;
pub use spate_core::control::NodeEnd;
use spate_core::control::{Node, NodeAgent, NodeSetup, Os};

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

/// Runs node `name` of `cfg`, building the query it names from `queries`,
/// until the coordinator releases it (or the job fails).
pub fn run_node(cfg: &Config, queries: &Registry, name: &str, opts: &NodeOptions) -> Result<NodeEnd, String> {
    let build = queries.build(&cfg.query, &cfg.sink)?;
    run_node_with(cfg, name, opts, build)
}

/// As [`run_node`], building the dataflow with `build` instead of the
/// query the config names (which still names the job: its state
/// directories and the cluster's id): how a program that embeds Spate
/// runs its own dataflow, closures and all, as node `name` of a cluster.
/// Every node of the cluster must run the same `build`.
pub fn run_node_with(
    cfg: &Config,
    name: &str,
    opts: &NodeOptions,
    build: spate_core::control::Build,
) -> Result<NodeEnd, String> {
    let (placement, addr, mut rc) = deploy::node_setup(cfg, name)?;
    let cluster = cfg.cluster.as_ref().ok_or("the config has no [cluster] section")?;
    let coordinator = cluster.coordinator_index()?;
    if let Some(c) = opts.first_core {
        rc.first_core = c;
    }
    if !opts.pin {
        rc.pin = false;
    }
    install_secret(cluster, name)?;
    let listener =
        spate_net::Listener::bind(addr, spate_core::link::net_config(name.to_string(), placement.cluster))
            .map_err(|e| format!("node `{name}`: cannot listen on {addr}: {e}"))?;
    let replica_root = rc.data_dir.join(&cfg.query.name).join("replica");
    let _ = std::fs::remove_dir_all(&replica_root);
    let replica = ReplicaServer::start(
        SocketAddr::new(addr.ip(), cluster.nodes[placement.me].replica_port),
        replica_root,
        placement.cluster,
        cfg.checkpoint.durability.map_or(Durability::PageCache, |d| d.durability()),
    )
    .map_err(|e| format!("node `{name}`: cannot start its replica service: {e}"))?;
    let plan = PlanConfig {
        failure_timeout_ms: cluster.failure_timeout_ms,
        connect_timeout_ms: cluster.connect_timeout_ms,
        interval_ms: cfg.checkpoint.interval_ms,
        backups: cfg.backups(),
        // The sources start as the first deployment's workers connect.
        origin_ns: spate_core::time::now_ns() + 200_000_000,
        live: cfg.live_recovery(),
        restarts: spate_core::control::RESTARTS,
        bins_log2: rc.bins_log2,
        start_workers: rc.cluster_start_workers,
        max_workers: cluster.max_workers,
        stall_intervals: cfg.checkpoint.stall_intervals.unwrap_or(3),
    };
    let setup = NodeSetup {
        query: cfg.query.name.clone(),
        build,
        rc,
        spares: cluster.nodes.iter().map(|n| n.spare).collect(),
        coordinator,
        plan,
        incarnation: incarnation(),
        replica: replica.addr(),
        quiet: opts.quiet,
        events: opts.events,
        placement,
    };
    let mut node = Node::new(Os::new(listener), setup, spate_core::time::now());
    if let (Some(s), Some(c)) = (&cfg.scaling, node.coordinator_mut()) {
        c.set_scaling(s.scaling_config()?);
    }
    node.agent_mut().set_replica(replica.completion());
    let end = node.run();
    write_histogram(name, node.agent())?;
    replica.stop();
    end.map_err(|e| format!("node `{name}`: {e}"))
}

/// The cluster's secret for node `name`: from `[cluster] secret_file`,
/// else from [`SECRET_ENV`](spate_net::auth::SECRET_ENV). Without one, a
/// cluster whose nodes are all on loopback runs with a loud warning (any
/// local user can then join it); any other is refused (decision 46).
pub fn cluster_secret(
    cluster: &crate::config::ClusterSection,
    name: &str,
) -> Result<Option<spate_net::auth::ClusterSecret>, String> {
    use spate_net::auth::{ClusterSecret, SECRET_BYTES_MAX, SECRET_ENV};
    let bytes = if let Some(path) = &cluster.secret_file {
        let mut buf = Vec::new();
        let f = std::fs::File::open(path)
            .map_err(|e| format!("cluster.secret_file: cannot read {}: {e}", path.display()))?;
        std::io::Read::read_to_end(&mut std::io::Read::take(f, SECRET_BYTES_MAX as u64 + 1), &mut buf)
            .map_err(|e| format!("cluster.secret_file: cannot read {}: {e}", path.display()))?;
        Some((buf, format!("cluster.secret_file ({})", path.display())))
    } else {
        std::env::var_os(SECRET_ENV).map(|v| (v.into_encoded_bytes(), SECRET_ENV.to_string()))
    };
    match bytes {
        Some((b, from)) => ClusterSecret::from_bytes(&b).map(Some).map_err(|e| format!("{from}: {e}")),
        None => {
            let local = cluster.nodes.iter().all(|n| is_loopback(&n.address));
            if !local {
                return Err(format!(
                    "node `{name}`: the cluster has nodes beyond this machine and no secret: set \
                     [cluster] secret_file or {SECRET_ENV} (the same on every node), so that only \
                     its nodes can connect to it"
                ));
            }
            eprintln!(
                "spate: WARNING: node `{name}` runs without a cluster secret: anyone who can reach \
                 127.0.0.1 and knows the config can join, forge backups and fetch checkpoints; set \
                 [cluster] secret_file or {SECRET_ENV} (`spate cluster` sets one itself)"
            );
            Ok(None)
        }
    }
}

/// Whether a node's `host:port` is on loopback (`localhost` included).
fn is_loopback(address: &str) -> bool {
    let host = address.rsplit_once(':').map_or(address, |(h, _)| h);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Makes the cluster's secret this process's, for every connection it
/// makes or takes.
pub(crate) fn install_secret(cluster: &crate::config::ClusterSection, name: &str) -> Result<(), String> {
    let secret = cluster_secret(cluster, name)?;
    if !spate_net::auth::install(secret.clone()) && spate_net::auth::installed() != secret {
        return Err(format!("node `{name}`: this process already runs a node of another cluster secret"));
    }
    Ok(())
}

/// This process's incarnation: its start time in ns since the Unix epoch,
/// so that a restarted node registers a greater one.
fn incarnation() -> u64 {
    spate_core::time::now_ns()
}

/// With [`deploy::HISTOGRAM_DIR_ENV`] set, writes the node's latency
/// histogram there (an empty one for a node that ran no epoch to its end).
fn write_histogram(name: &str, agent: &NodeAgent<Os>) -> Result<(), String> {
    if let Some(dir) = std::env::var_os(deploy::HISTOGRAM_DIR_ENV) {
        let empty = spate_core::metrics::latency_histogram();
        let h = agent.latency().unwrap_or(&empty);
        deploy::write_histogram(std::path::Path::new(&dir), name, h)?;
    }
    Ok(())
}
