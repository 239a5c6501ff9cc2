//! Multi-process deployments through the real `spate` binary on loopback:
//! `spate cluster` against `spate run` (same results), and the failures a
//! deployment must name: an unknown node, a port in use, a node that never
//! comes, a peer that sends a corrupt frame (the node refuses it and goes
//! on). Every process a test starts is gone at its end.

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use spate::deploy::KillOnDrop;
use spate::Watchdog;

mod common;
use common::{free_addr, SPATE};

/// A keyed-sum config with a file sink and `nodes` (name, address) of one
/// worker each.
fn config(dir: &Path, nodes: &[(&str, String)], timeout_ms: u64) -> PathBuf {
    let mut text = format!(
        "[query]\nname = \"keyed-sum\"\n[query.params]\nrecords = 30000\nkeys = 300\n\
         [runtime]\npin = false\ndata_dir = {:?}\n\
         [sink]\nkind = \"file\"\npath = {:?}\nlatency = false\n\
         [cluster]\nconnect_timeout_ms = {timeout_ms}\n",
        dir.join("data").display().to_string(),
        dir.join("out.txt").display().to_string(),
    );
    for (name, addr) in nodes {
        text += &format!("[[cluster.nodes]]\nname = \"{name}\"\naddress = \"{addr}\"\nworkers = 1\n");
    }
    let p = dir.join("cluster.toml");
    std::fs::write(&p, text).unwrap_or_else(|e| panic!("write config: {e}"));
    p
}

/// Every line of the file sink's part files `out.txt.0..workers`, sorted.
fn lines(dir: &Path, workers: usize) -> Vec<String> {
    let mut v = Vec::new();
    for w in 0..workers {
        let p = dir.join(format!("out.txt.{w}"));
        let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        v.extend(text.lines().map(str::to_string));
    }
    v.sort();
    v
}

/// Processes whose command line mentions `needle`.
fn processes_mentioning(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else { return found };
    for e in entries.flatten() {
        if let Ok(cmd) = std::fs::read(e.path().join("cmdline")) {
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.contains(needle) && cmd.contains(" node ") {
                found.push(cmd);
            }
        }
    }
    found
}

/// `spate node --name NAME` on `cfg`, its stderr piped.
fn spawn_node(cfg: &Path, name: &str) -> KillOnDrop {
    KillOnDrop(
        Command::new(SPATE)
            .args(["node", "--quiet", "--name", name, "--config"])
            .arg(cfg)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start node {name}: {e}")),
    )
}

/// Waits at most `limit` for `child` to exit (else fails with `what`);
/// returns its status and what it wrote to its piped stderr.
fn wait_exit(child: &mut KillOnDrop, limit: Duration, what: &str) -> (std::process::ExitStatus, String) {
    let status = child.wait_for(limit).unwrap_or_else(|| panic!("{what}"));
    let mut err = String::new();
    if let Some(mut e) = child.0.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut e, &mut err);
    }
    (status, err)
}

fn run(args: &[&str], cfg: &Path) -> Output {
    Command::new(SPATE).args(args).arg(cfg).output().unwrap_or_else(|e| panic!("cannot run spate: {e}"))
}

#[test]
fn a_three_node_cluster_gives_the_results_of_one_process() {
    let _watchdog = Watchdog::start("three-node cluster", Duration::from_secs(180));
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let nodes =
        [("a", "127.0.0.1:0".to_string()), ("b", "127.0.0.1:0".to_string()), ("c", "127.0.0.1:0".into())];
    let cfg = config(dir.path(), &nodes, 20_000);
    let out = run(&["cluster", "--config"], &cfg);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "spate cluster failed: {stderr}");
    assert!(stderr.contains("cluster: 3 nodes, 30000 records in, 30000 out"), "{stderr}");
    // The coordinator (the first node) gathered every node's counts.
    assert!(stderr.contains("[a] coordinator a: 3 nodes, 30000 records in, 30000 out"), "{stderr}");
    let clustered = lines(dir.path(), 3);
    assert!(processes_mentioning(&dir.path().display().to_string()).is_empty(), "node processes left behind");

    // The same query in one process with three workers.
    let single = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let text = std::fs::read_to_string(&cfg).unwrap_or_else(|e| panic!("{e}"));
    let text = text
        .split("[cluster]")
        .next()
        .unwrap_or_default()
        .replace(&dir.path().display().to_string(), &single.path().display().to_string())
        + "";
    let single_cfg = single.path().join("single.toml");
    std::fs::write(&single_cfg, text.replace("[runtime]\n", "[runtime]\nworkers = 3\n"))
        .unwrap_or_else(|e| panic!("{e}"));
    let out = run(&["run", "--quiet"], &single_cfg);
    assert!(out.status.success(), "spate run failed: {}", String::from_utf8_lossy(&out.stderr));
    let one = lines(single.path(), 3);
    assert_eq!(clustered.len(), 30000);
    assert_eq!(clustered, one, "the cluster's results differ from one process's");
}

#[test]
fn an_unknown_node_name_lists_the_known_ones() {
    let _watchdog = Watchdog::start("unknown node", Duration::from_secs(60));
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let cfg = config(dir.path(), &[("a", free_addr()), ("b", free_addr())], 1000);
    let out = run(&["node", "--name", "zz", "--config"], &cfg);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("no node `zz`") && stderr.contains("a, b"), "{stderr}");
}

#[test]
fn a_port_in_use_is_named() {
    let _watchdog = Watchdog::start("port in use", Duration::from_secs(60));
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let taken = TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
    let addr = taken.local_addr().unwrap_or_else(|e| panic!("{e}")).to_string();
    let cfg = config(dir.path(), &[("a", addr.clone()), ("b", free_addr())], 1000);
    let out = run(&["node", "--name", "a", "--config"], &cfg);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains(&format!("cannot listen on {addr}")), "{stderr}");
}

#[test]
fn a_node_that_never_comes_is_named_within_the_timeout() {
    let _watchdog = Watchdog::start("missing node", Duration::from_secs(60));
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let cfg = config(dir.path(), &[("a", free_addr()), ("b", free_addr())], 800);
    let t = Instant::now();
    let out = run(&["node", "--name", "a", "--config"], &cfg);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(t.elapsed() < Duration::from_secs(20), "took {:?}", t.elapsed());
    assert!(stderr.contains("nodes not registered") && stderr.contains(": b"), "{stderr}");
}

#[test]
fn a_corrupt_frame_is_refused_and_the_node_goes_on() {
    let _watchdog = Watchdog::start("corrupt frame", Duration::from_secs(120));
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let (a, b) = (free_addr(), free_addr());
    let cfg = config(dir.path(), &[("a", a.clone()), ("b", b)], 30_000);
    // Node b accepts node a's connection (a has the lower worker id and
    // connects), so b's listener is where a stranger can knock.
    let mut node_b = spawn_node(&cfg, "b");
    let b_addr = {
        let text = std::fs::read_to_string(&cfg).unwrap_or_else(|e| panic!("{e}"));
        let i = text.rfind("address = \"").unwrap_or_else(|| panic!("no address"));
        text[i + 11..].split('"').next().unwrap_or_default().to_string()
    };
    // Knock until b listens, then send a frame whose crc is wrong.
    let t = Instant::now();
    let mut raw = loop {
        match TcpStream::connect(&b_addr) {
            Ok(s) => break s,
            Err(_) if t.elapsed() < Duration::from_secs(20) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => panic!("node b never listened on {b_addr}: {e}"),
        }
    };
    let mut frame = Vec::new();
    frame.extend_from_slice(&20u32.to_le_bytes()); // length of what follows
    frame.extend_from_slice(&0xdead_beefu32.to_le_bytes()); // a wrong crc
    frame.extend_from_slice(&[1u8; 16]);
    raw.write_all(&frame).unwrap_or_else(|e| panic!("{e}"));
    drop(raw);
    let mut node_a = spawn_node(&cfg, "a");
    let status_a = node_a.0.wait().unwrap_or_else(|e| panic!("{e}"));
    let status_b = node_b.0.wait().unwrap_or_else(|e| panic!("{e}"));
    let mut err_b = String::new();
    if let Some(mut e) = node_b.0.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut e, &mut err_b);
    }
    assert!(status_a.success() && status_b.success(), "a: {status_a}, b: {status_b}; b said: {err_b}");
    assert!(err_b.contains("refused a connection") && err_b.contains("127.0.0.1"), "{err_b}");
    assert_eq!(lines(dir.path(), 2).len(), 30000, "the job's results after the corrupt frame");
    let _ = a;
}

#[test]
fn a_killed_node_is_detected_and_its_workers_run_again_on_the_survivor() {
    let _watchdog = Watchdog::start("killed node", Duration::from_secs(120));
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let cfg = config(dir.path(), &[("a", free_addr()), ("b", free_addr())], 20_000);
    // A slow query (rate-limited) with a short failure timeout, no
    // checkpoints and no spare: the survivor runs the job again from the
    // start with b's workers too.
    let (records, keys) = (400_000u64, 300u64);
    let text = std::fs::read_to_string(&cfg)
        .unwrap_or_else(|e| panic!("{e}"))
        .replace("records = 30000\n", &format!("records = {records}\nrate = 200000\n"))
        .replace("[cluster]\n", "[cluster]\nfailure_timeout_ms = 1000\n");
    std::fs::write(&cfg, text).unwrap_or_else(|e| panic!("{e}"));
    let mut a = spawn_node(&cfg, "a");
    let mut b = spawn_node(&cfg, "b");
    std::thread::sleep(Duration::from_millis(1000));
    assert!(a.0.try_wait().ok().flatten().is_none(), "node a ended early");
    b.0.kill().unwrap_or_else(|e| panic!("kill: {e}"));
    let (status, err) = wait_exit(&mut a, Duration::from_secs(60), "node a did not finish without b");
    assert!(status.success(), "node a failed without b: {err}");
    assert!(err.contains("node `b` declared failed"), "node a did not say that b failed: {err}");
    assert!(err.contains("takes over the 1 workers of node `b`"), "a did not take over: {err}");
    // Every key's running sums, each once.
    let mut want = Vec::new();
    for k in 0..keys {
        let mut acc = 0u64;
        let mut i = k;
        while i < records {
            acc += i;
            want.push(format!("{k},{acc}"));
            i += keys;
        }
    }
    want.sort();
    assert!(lines(dir.path(), 2) == want, "the output is not every running sum once");
}

#[test]
fn ctrl_c_on_spate_cluster_stops_every_node() {
    let _watchdog = Watchdog::start("ctrl-c", Duration::from_secs(120));
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let cfg = config(dir.path(), &[("a", "127.0.0.1:0".into()), ("b", "127.0.0.1:0".into())], 20_000);
    // A query that would run for a minute.
    let text = std::fs::read_to_string(&cfg)
        .unwrap_or_else(|e| panic!("{e}"))
        .replace("records = 30000\n", "records = 6000000\nrate = 100000\n");
    std::fs::write(&cfg, text).unwrap_or_else(|e| panic!("{e}"));
    let mut cluster = KillOnDrop(
        Command::new(SPATE)
            .args(["cluster", "--quiet", "--config"])
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start spate cluster: {e}")),
    );
    // `spate cluster` runs its nodes on a copy of the config in its own
    // temporary directory: find them by what they run.
    let nodes = || {
        processes_mentioning("cluster.toml")
            .into_iter()
            .filter(|c| c.contains(" node ") && c.contains("--name"))
            .count()
    };
    let t = Instant::now();
    while nodes() < 2 {
        assert!(t.elapsed() < Duration::from_secs(20), "the nodes did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(500));
    // SAFETY: kill(2) on the pid of a child this test started.
    let rc = unsafe { libc::kill(cluster.0.id() as libc::pid_t, libc::SIGINT) };
    assert_eq!(rc, 0, "cannot send SIGINT");
    let (status, err) =
        wait_exit(&mut cluster, Duration::from_secs(15), "spate cluster did not stop on Ctrl-C");
    assert!(!status.success(), "an interrupted cluster reported success: {err}");
    assert!(err.contains("interrupted"), "{err}");
    let t = Instant::now();
    while nodes() > 0 {
        assert!(t.elapsed() < Duration::from_secs(5), "node processes left behind after Ctrl-C");
        std::thread::sleep(Duration::from_millis(20));
    }
}
