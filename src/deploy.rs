//! Multi-process deployments from one config file: what `spate node` and
//! `spate cluster` do.
//!
//! The config's `[cluster]` section lists the nodes in worker order; the
//! same file goes to every machine, and each process is started with its own
//! `--name`. Every node builds the same dataflow, runs its range of the
//! job's workers and connects them to the other nodes' (see
//! `spate_core::control` and `spate_core::link`). `spate cluster` starts every node of a config as a
//! local process (choosing free ports for addresses with port 0), prefixes
//! their output with the node's name, stops them all when one fails or on
//! Ctrl-C, and adds up the counts the nodes report.

use std::io::{BufRead, BufReader};

use hdrhistogram::serialization::Serializer as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use spate_core::control::{ClusterPlacement, NodeReport, NodeSpec};
use spate_core::RuntimeConfig;

use crate::config::{ClusterSection, Config};
use crate::registry::Registry;

/// Where node `name` of `cfg` runs and how: its placement among all nodes,
/// its listening address, and its runtime config.
pub fn node_setup(cfg: &Config, name: &str) -> Result<(ClusterPlacement, SocketAddr, RuntimeConfig), String> {
    let cluster = cfg.cluster.as_ref().ok_or("the config has no [cluster] section")?;
    let me = cluster.node(name)?;
    let nodes = cluster
        .nodes
        .iter()
        .map(|n| {
            let addr =
                n.address.parse().map_err(|_| format!("node `{}`: bad address `{}`", n.name, n.address))?;
            Ok(NodeSpec { name: n.name.clone(), addr, workers: n.workers })
        })
        .collect::<Result<Vec<NodeSpec>, String>>()?;
    if let Some(n) = nodes.iter().find(|n| n.addr.port() == 0) {
        return Err(format!(
            "node `{}` has port 0 in its address: `spate node` needs real ports (`spate cluster` picks them)",
            n.name
        ));
    }
    let addr = nodes[me].addr;
    let mut rc = cfg.runtime_config();
    rc.workers = cluster.nodes[me].workers;
    rc.cluster_start_workers = cluster.effective_start_workers();
    // Nodes on one machine must not share their backup stores.
    rc.data_dir = match &cluster.nodes[me].data_dir {
        Some(d) => d.clone(),
        None => rc.data_dir.join(&cluster.nodes[me].name),
    };
    let placement = ClusterPlacement {
        nodes,
        me,
        cluster: cluster_id(cfg, cluster),
        connect_timeout: Duration::from_millis(cluster.connect_timeout_ms),
        epoch: 0,
        join: None,
    };
    Ok((placement, addr, rc))
}

/// Identifies a deployment on the wire: nodes of another config (another
/// query or other nodes) are refused.
fn cluster_id(cfg: &Config, cluster: &ClusterSection) -> u64 {
    let mut s = cfg.query.name.clone();
    for n in &cluster.nodes {
        s.push('/');
        s.push_str(&n.name);
        s.push('@');
        s.push_str(&n.address);
    }
    spate_state::hash_bytes(s.as_bytes())
}

/// Where ports for `resolve_ports` are looked for: below the machine's
/// ephemeral range (`net.ipv4.ip_local_port_range`), which outgoing
/// connections take their ports from. *Why:* a port the OS handed out
/// for a listener and that was closed again is back in the ephemeral
/// range, and any connection this machine opens before the node binds it
/// (another node's, another test's) may take it (`Address already in
/// use`). Below the range only another listener can.
fn listener_ports() -> std::ops::Range<u16> {
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|t| t.split_whitespace().next().and_then(|v| v.parse::<u16>().ok()))
        .unwrap_or(32768);
    low.saturating_sub(20_000).max(1024)..low
}

/// A port of `ip` nobody listens on now, from `listener_ports`, not one
/// this process handed out before; `None` if none is found quickly.
pub fn free_listener_port(ip: std::net::IpAddr) -> Option<u16> {
    use std::hash::{BuildHasher, Hasher};
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let range = listener_ports();
    let span = u64::from(range.end.checked_sub(range.start).filter(|&n| n > 0)?);
    // Processes starting together look in different places.
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    let mut at = h.finish();
    let mut given = GIVEN.lock().ok()?;
    for _ in 0..256 {
        at = at.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let port = range.start + ((at >> 33) % span) as u16;
        if given.contains(&port) {
            continue;
        }
        if std::net::TcpListener::bind(SocketAddr::new(ip, port)).is_ok() {
            given.push(port);
            return Some(port);
        }
    }
    None
}

/// The config text with every node address of port 0 given a free port of
/// this machine (one no listener holds, below the ephemeral range; see
/// `listener_ports`).
pub fn resolve_ports(text: &str) -> Result<String, String> {
    let mut doc: toml::Table = toml::from_str(text).map_err(|e| e.to_string())?;
    let Some(nodes) = doc
        .get_mut("cluster")
        .and_then(|c| c.as_table_mut())
        .and_then(|c| c.get_mut("nodes"))
        .and_then(|n| n.as_array_mut())
    else {
        return Err("the config has no [[cluster.nodes]]".into());
    };
    for n in nodes.iter_mut() {
        let Some(t) = n.as_table_mut() else { continue };
        let Some(a) = t.get("address").and_then(|a| a.as_str()) else { continue };
        let addr: SocketAddr = a.parse().map_err(|_| format!("bad node address `{a}`"))?;
        if addr.port() == 0 {
            let port = match free_listener_port(addr.ip()) {
                Some(p) => p,
                // None below the ephemeral range: one the OS picks.
                None => std::net::TcpListener::bind(addr)
                    .and_then(|l| l.local_addr())
                    .map_err(|e| format!("cannot find a free port on {a}: {e}"))?
                    .port(),
            };
            t.insert("address".into(), toml::Value::String(SocketAddr::new(addr.ip(), port).to_string()));
        }
    }
    toml::to_string(&doc).map_err(|e| e.to_string())
}

/// With this environment variable set to a directory, `spate node` writes
/// its latency histogram there at its end, as `<node>.hist` (hdrhistogram's
/// V2 format), for the launcher to merge.
pub const HISTOGRAM_DIR_ENV: &str = "SPATE_NODE_HISTOGRAM_DIR";

/// Writes a node's latency histogram into `dir` (see [`HISTOGRAM_DIR_ENV`]).
pub fn write_histogram(dir: &Path, node: &str, h: &hdrhistogram::Histogram<u64>) -> Result<(), String> {
    let mut buf = Vec::new();
    hdrhistogram::serialization::V2Serializer::new()
        .serialize(h, &mut buf)
        .map_err(|e| format!("node `{node}`: cannot encode its latency histogram: {e:?}"))?;
    let p = dir.join(format!("{node}.hist"));
    std::fs::write(&p, buf).map_err(|e| format!("{}: {e}", p.display()))
}

/// Merges the histograms the nodes wrote into `dir`.
pub fn merge_histograms(dir: &Path, nodes: usize) -> Result<hdrhistogram::Histogram<u64>, String> {
    let mut merged = spate_core::metrics::latency_histogram();
    let mut found = 0;
    for e in std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))? {
        let p = e.map_err(|e| e.to_string())?.path();
        if p.extension().is_some_and(|x| x == "hist") {
            let bytes = std::fs::read(&p).map_err(|e| format!("{}: {e}", p.display()))?;
            let h: hdrhistogram::Histogram<u64> = hdrhistogram::serialization::Deserializer::new()
                .deserialize(&mut &bytes[..])
                .map_err(|e| format!("{}: not a latency histogram: {e:?}", p.display()))?;
            merged.add(&h).map_err(|e| format!("{}: {e:?}", p.display()))?;
            found += 1;
        }
    }
    if found != nodes {
        return Err(format!("{found} of {nodes} nodes wrote their latency histogram"));
    }
    Ok(merged)
}

/// `exe node --json --quiet --name NAME --config CONFIG ARGS...` with
/// `env`.
fn node_command(
    exe: &Path,
    config: &Path,
    name: &str,
    args: &[String],
    env: &[(&str, &std::ffi::OsStr)],
) -> Command {
    let mut c = Command::new(exe);
    c.args(["node", "--json", "--quiet", "--name", name, "--config"])
        .arg(config)
        .args(args)
        .envs(env.iter().copied());
    c
}

/// Starts node `name`'s process as `command` says, its stdout and stderr
/// piped.
fn spawn_node(mut command: Command, name: &str) -> Result<Child, String> {
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start node `{name}` ({:?}): {e}", command.get_program()))
}

/// The secret `spate cluster` hands its nodes (in
/// [`SECRET_ENV`](spate_net::auth::SECRET_ENV)) when the config names no
/// `secret_file` and the variable is not set: a fresh random one, so a
/// local cluster is always authenticated (decision 46).
fn generated_secret(cluster: &crate::config::ClusterSection) -> Result<Option<String>, String> {
    if cluster.secret_file.is_some() || std::env::var_os(spate_net::auth::SECRET_ENV).is_some() {
        return Ok(None);
    }
    let (_, text) = spate_net::auth::ClusterSecret::generate().map_err(|e| format!("spate cluster: {e}"))?;
    Ok(Some(text))
}

/// Set by SIGINT/SIGTERM while a cluster runs.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// A child process that is killed (and reaped) when dropped, so that an
/// error or a panic leaves no process behind.
pub struct KillOnDrop(pub Child);

impl KillOnDrop {
    /// Waits at most `limit` for the process to exit, polling every 20 ms:
    /// its exit status, or `None` if it is still running (it is killed
    /// when the guard drops).
    pub fn wait_for(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let t = Instant::now();
        loop {
            if let Ok(Some(s)) = self.0.try_wait() {
                return Some(s);
            }
            if t.elapsed() >= limit {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs every node of the config at `config` as a local process of `exe`
/// (`spate node --config FILE --name N --json`), printing their output with
/// a `[name]` prefix (`quiet`: only errors), until all end, one fails, or
/// Ctrl-C. The config's query must be one of `queries` (those `exe`
/// knows). Returns the nodes' reports.
pub fn run_local_cluster(
    exe: &Path,
    config: &Path,
    queries: &Registry,
    quiet: bool,
) -> Result<Vec<NodeReport>, String> {
    run_local_cluster_with(exe, config, queries, quiet, &[])
}

/// As [`run_local_cluster`], with extra environment variables for the
/// nodes (for example [`HISTOGRAM_DIR_ENV`]).
pub fn run_local_cluster_with(
    exe: &Path,
    config: &Path,
    queries: &Registry,
    quiet: bool,
    env: &[(&str, &Path)],
) -> Result<Vec<NodeReport>, String> {
    let text =
        std::fs::read_to_string(config).map_err(|e| format!("{}: cannot read: {e}", config.display()))?;
    let cfg = Config::parse_with(&text, queries).map_err(|e| format!("{}: {e}", config.display()))?;
    let cluster =
        cfg.cluster.as_ref().ok_or_else(|| format!("{}: no [cluster] section", config.display()))?;
    let resolved = resolve_ports(&text)?;
    let secret = generated_secret(cluster)?;
    let dir = tempfile::tempdir().map_err(|e| format!("cannot create a temporary directory: {e}"))?;
    let resolved_path: PathBuf = dir.path().join("cluster.toml");
    std::fs::write(&resolved_path, resolved).map_err(|e| format!("{}: {e}", resolved_path.display()))?;

    // SAFETY: the handler only stores to an atomic, which is
    // async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    let reports = Arc::new(Mutex::new(Vec::new()));
    // The node processes; dropping them kills those still running.
    let mut children: Vec<(String, KillOnDrop)> = Vec::new();
    let mut pipes = Vec::new();
    // Nodes on one machine share its cores: each pins its workers after the
    // previous nodes' (or, with too few cores, none pins).
    let cores = spate_core::config::available_cores();
    let total: usize = cluster.nodes.iter().map(|n| n.workers).sum();
    let mut first_core = 0;
    for n in &cluster.nodes {
        let pin = if total <= cores {
            vec!["--first-core".to_string(), first_core.to_string()]
        } else {
            vec!["--no-pin".into()]
        };
        first_core += n.workers;
        let env: Vec<(&str, &std::ffi::OsStr)> = env.iter().map(|(k, v)| (*k, v.as_os_str())).collect();
        let mut command = node_command(exe, &resolved_path, &n.name, &pin, &env);
        if let Some(s) = &secret {
            command.env(spate_net::auth::SECRET_ENV, s);
        }
        let mut child = spawn_node(command, &n.name)?;
        let (out, err) = (child.stdout.take(), child.stderr.take());
        let (name, name2, reports) = (n.name.clone(), n.name.clone(), reports.clone());
        if let Some(out) = out {
            pipes.push(std::thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    match NodeReport::parse(&line) {
                        Some(r) => {
                            if let Ok(mut v) = reports.lock() {
                                v.push(r);
                            }
                        }
                        None if !quiet => println!("[{name}] {line}"),
                        None => {}
                    }
                }
            }));
        }
        if let Some(err) = err {
            pipes.push(std::thread::spawn(move || {
                for line in BufReader::new(err).lines().map_while(Result::ok) {
                    eprintln!("[{name2}] {line}");
                }
            }));
        }
        children.push((n.name.clone(), KillOnDrop(child)));
    }
    // The coordinator decides the job's fate: another node that dies is a
    // failure it recovers from (or stops the job for).
    let coordinator = cluster.coordinator_index()?;
    let mut failed: Option<String> = None;
    let mut gone: Vec<bool> = vec![false; children.len()];
    let started = Instant::now();
    loop {
        if INTERRUPTED.load(Ordering::SeqCst) {
            failed = Some("interrupted: stopping every node".into());
            break;
        }
        let mut coordinator_done = false;
        for (i, (name, c)) in children.iter_mut().enumerate() {
            match c.0.try_wait() {
                Ok(Some(status)) => {
                    if i == coordinator {
                        coordinator_done = true;
                        if !status.success() {
                            failed = Some(format!("the coordinator, node `{name}`, failed ({status})"));
                        }
                    } else if !gone[i] && !status.success() && !quiet {
                        eprintln!("[{name}] exited ({status})");
                    }
                    gone[i] = true;
                }
                Ok(None) => {}
                Err(e) => {
                    failed.get_or_insert_with(|| format!("node `{name}`: {e}"));
                    coordinator_done = true;
                }
            }
        }
        if coordinator_done {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // The coordinator released (or stopped) the others: give them a moment
    // to clean up and exit, then kill what is left.
    let grace = Instant::now() + Duration::from_secs(5);
    while failed.is_none() && Instant::now() < grace {
        if children.iter_mut().all(|(_, c)| matches!(c.0.try_wait(), Ok(Some(_)))) {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(children);
    for p in pipes {
        let _ = p.join();
    }
    if let Some(f) = failed {
        return Err(f);
    }
    let reports = reports.lock().map(|v| v.clone()).unwrap_or_default();
    if reports.is_empty() {
        return Err(format!(
            "the coordinator reported no counts after {:.1} s",
            started.elapsed().as_secs_f64()
        ));
    }
    Ok(reports)
}

/// The node processes of a cluster config on this machine, started one by
/// one (`spate node --json`), with the coordinator's events readable as
/// they happen: what the recovery tests and `spate bench recovery` drive.
/// Dropping it kills every node still running.
pub struct LocalNodes {
    children: Vec<(String, KillOnDrop)>,
    coordinator: usize,
    events: std::sync::mpsc::Receiver<spate_core::control::Event>,
    reports: Arc<Mutex<Vec<NodeReport>>>,
    metrics: Arc<Mutex<Vec<spate_core::control::MetricsLine>>>,
    stderr: Arc<Mutex<Vec<String>>>,
    pipes: Vec<std::thread::JoinHandle<()>>,
}

impl LocalNodes {
    /// Starts every node of the config at `config` (its addresses must
    /// have real ports: see [`resolve_ports`]), unpinned, with `env`; its
    /// query is a built-in.
    pub fn start(exe: &Path, config: &Path, env: &[(&str, &str)]) -> Result<Self, String> {
        Self::start_of(exe, config, &Registry::builtin(), env)
    }

    /// As [`LocalNodes::start`], for a config whose query is one of
    /// `queries` (those `exe` knows: a user's binary on `cli::main`).
    pub fn start_of(
        exe: &Path,
        config: &Path,
        queries: &Registry,
        env: &[(&str, &str)],
    ) -> Result<Self, String> {
        let env: Vec<(&str, &std::ffi::OsStr)> =
            env.iter().map(|(k, v)| (*k, std::ffi::OsStr::new(v))).collect();
        Self::start_command(config, queries, |name| {
            node_command(exe, config, name, &["--no-pin".to_string()], &env)
        })
    }

    /// As [`LocalNodes::start`], each node's process started as `command`
    /// (given the node's name) says: a program that runs its own dataflow
    /// as a node ([`crate::node::run_node_with`]), which prints the
    /// coordinator's events on stdout as `spate node --json` does.
    pub fn start_with(config: &Path, command: impl Fn(&str) -> Command) -> Result<Self, String> {
        Self::start_command(config, &Registry::builtin(), command)
    }

    fn start_command(
        config: &Path,
        queries: &Registry,
        command: impl Fn(&str) -> Command,
    ) -> Result<Self, String> {
        let text =
            std::fs::read_to_string(config).map_err(|e| format!("{}: cannot read: {e}", config.display()))?;
        let cfg = Config::parse_with(&text, queries).map_err(|e| format!("{}: {e}", config.display()))?;
        let cluster = cfg.cluster.as_ref().ok_or_else(|| format!("{}: no [cluster]", config.display()))?;
        let coordinator = cluster.coordinator_index()?;
        let (tx, events) = std::sync::mpsc::channel();
        let reports = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let metrics = Arc::new(Mutex::new(Vec::new()));
        let mut nodes = LocalNodes {
            children: Vec::new(),
            coordinator,
            events,
            reports,
            metrics,
            stderr,
            pipes: Vec::new(),
        };
        let secret = generated_secret(cluster)?;
        for n in &cluster.nodes {
            let mut command = command(&n.name);
            if let Some(s) = &secret {
                command.env(spate_net::auth::SECRET_ENV, s);
            }
            let mut child = spawn_node(command, &n.name)?;
            let (out, err) = (child.stdout.take(), child.stderr.take());
            if let Some(out) = out {
                let (tx, reports, metrics) = (tx.clone(), nodes.reports.clone(), nodes.metrics.clone());
                nodes.pipes.push(std::thread::spawn(move || {
                    for line in BufReader::new(out).lines().map_while(Result::ok) {
                        if let Some(e) = spate_core::control::Event::parse(&line) {
                            let _ = tx.send(e);
                        } else if let Some(m) = spate_core::control::MetricsLine::parse(&line) {
                            if let Ok(mut v) = metrics.lock() {
                                v.push(m);
                            }
                        } else if let Some(r) = NodeReport::parse(&line) {
                            if let Ok(mut v) = reports.lock() {
                                v.push(r);
                            }
                        }
                    }
                }));
            }
            if let Some(err) = err {
                let (name, stderr) = (n.name.clone(), nodes.stderr.clone());
                nodes.pipes.push(std::thread::spawn(move || {
                    for line in BufReader::new(err).lines().map_while(Result::ok) {
                        if let Ok(mut v) = stderr.lock() {
                            v.push(format!("[{name}] {line}"));
                        }
                    }
                }));
            }
            nodes.children.push((n.name.clone(), KillOnDrop(child)));
        }
        Ok(nodes)
    }

    /// Waits at most `limit` for an event `matches` accepts (earlier
    /// events are consumed).
    pub fn wait_event(
        &mut self,
        limit: Duration,
        mut matches: impl FnMut(&spate_core::control::Event) -> bool,
    ) -> Result<spate_core::control::Event, String> {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left.min(Duration::from_millis(50))) {
                Ok(e) if matches(&e) => return Ok(e),
                Ok(_) => {}
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) if left > Duration::ZERO => {
                    if let Some((name, status)) = self.exited(self.coordinator) {
                        return Err(format!("the coordinator `{name}` exited ({status}): {}", self.stderr()));
                    }
                }
                Err(_) => {
                    return Err(format!("no such event within {limit:?}; nodes said: {}", self.stderr()))
                }
            }
        }
    }

    fn exited(&mut self, i: usize) -> Option<(String, std::process::ExitStatus)> {
        let (name, c) = self.children.get_mut(i)?;
        c.0.try_wait().ok().flatten().map(|s| (name.clone(), s))
    }

    /// Kills node `name` with SIGKILL; returns when (ms since the Unix
    /// epoch).
    pub fn kill(&mut self, name: &str) -> Result<u64, String> {
        let (_, c) = self
            .children
            .iter_mut()
            .find(|(n, _)| n == name)
            .ok_or_else(|| format!("no node `{name}` was started"))?;
        let at = spate_core::control::unix_ms();
        c.0.kill().map_err(|e| format!("cannot kill node `{name}`: {e}"))?;
        let _ = c.0.wait();
        Ok(at)
    }

    /// Sends `signal` (for example `libc::SIGSTOP`, `libc::SIGCONT`) to
    /// node `name`: a node stopped longer than the failure timeout is
    /// declared failed while its process lives on.
    pub fn signal(&mut self, name: &str, signal: libc::c_int) -> Result<(), String> {
        let (_, c) = self
            .children
            .iter()
            .find(|(n, _)| n == name)
            .ok_or_else(|| format!("no node `{name}` was started"))?;
        let pid = libc::pid_t::try_from(c.0.id()).map_err(|e| format!("node `{name}`: {e}"))?;
        // SAFETY: kill(2) with a pid of a child this process started and
        // has not reaped (it is reaped only on drop or wait).
        if unsafe { libc::kill(pid, signal) } != 0 {
            return Err(format!("cannot signal node `{name}`: {}", std::io::Error::last_os_error()));
        }
        Ok(())
    }

    /// Each node's name and process id.
    pub fn pids(&self) -> Vec<(String, u32)> {
        self.children.iter().map(|(n, c)| (n.clone(), c.0.id())).collect()
    }

    /// The metrics lines the nodes printed so far (see
    /// [`spate_core::control::METRICS_ENV`]).
    pub fn metrics(&self) -> Vec<spate_core::control::MetricsLine> {
        self.metrics.lock().map(|v| v.clone()).unwrap_or_default()
    }

    /// Everything the nodes wrote to stderr so far, one line each,
    /// prefixed with the node's name.
    pub fn stderr(&self) -> String {
        self.stderr.lock().map(|v| v.join("\n")).unwrap_or_default()
    }

    /// Waits at most `limit` for the coordinator to exit, successfully, and
    /// the other nodes after it; returns the coordinator's reports.
    pub fn wait(&mut self, limit: Duration) -> Result<Vec<NodeReport>, String> {
        let deadline = Instant::now() + limit;
        let status = loop {
            if let Some((_, s)) = self.exited(self.coordinator) {
                break s;
            }
            if Instant::now() >= deadline {
                return Err(format!("the job did not end within {limit:?}; nodes said: {}", self.stderr()));
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        // The released nodes exit by themselves.
        let grace = Instant::now() + Duration::from_secs(10);
        while Instant::now() < grace
            && !self.children.iter_mut().all(|(_, c)| matches!(c.0.try_wait(), Ok(Some(_))))
        {
            std::thread::sleep(Duration::from_millis(20));
        }
        let mut running = Vec::new();
        for (n, c) in self.children.iter_mut() {
            if !matches!(c.0.try_wait(), Ok(Some(_))) {
                running.push(n.clone());
            }
        }
        let children = std::mem::take(&mut self.children);
        drop(children);
        for p in self.pipes.drain(..) {
            let _ = p.join();
        }
        if !status.success() {
            return Err(format!("the coordinator failed ({status}): {}", self.stderr()));
        }
        if !running.is_empty() {
            return Err(format!("nodes still running after the job ended: {}", running.join(", ")));
        }
        Ok(self.reports.lock().map(|v| v.clone()).unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_reports_round_trip() {
        let r = NodeReport { node: "a".into(), records_in: 12, records_out: 7, seconds: 1.5 };
        assert_eq!(NodeReport::parse(&r.to_json()), Some(r));
        assert_eq!(NodeReport::parse("hello"), None);
    }

    #[test]
    fn port_zero_gets_a_free_port() {
        let text = "[query]\nname = \"keyed-sum\"\n[cluster]\n[[cluster.nodes]]\nname = \"a\"\naddress = \"127.0.0.1:0\"\n";
        let out = resolve_ports(text).unwrap_or_else(|e| panic!("{e}"));
        let cfg = Config::parse(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
        let c = cfg.cluster.unwrap_or_else(|| panic!("no cluster"));
        let addr: SocketAddr = c.nodes[0].address.parse().unwrap_or_else(|e| panic!("{e}"));
        assert_ne!(addr.port(), 0);
        assert!(listener_ports().contains(&addr.port()), "{addr} is below the ephemeral range");
        // Several at once: all different, none held by a listener.
        let ports: Vec<u16> = (0..20).filter_map(|_| free_listener_port(addr.ip())).collect();
        assert_eq!(ports.len(), 20);
        let mut unique = ports.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), ports.len(), "{ports:?}");
    }
}
