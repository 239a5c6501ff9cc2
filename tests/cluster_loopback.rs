//! A job across two "nodes" over real TCP on loopback: two runtimes in this
//! process, one worker each, every record routed to the other worker
//! crossing a `spate_net` connection. Its results must equal the same job in
//! one runtime with two workers (rings only).

use std::net::SocketAddr;
use std::time::Duration;

use spate::core::control::{ClusterPlacement, NodeSpec};
use spate::core::link::net_config;
use spate::net::Listener;
use spate::prelude::*;
use spate::Watchdog;

const RECORDS: u64 = 200_000;
const KEYS: u64 = 1000;

fn build(df: &Dataflow, sink: &spate::ops::prelude::OutputSink<(u64, u64)>) {
    df.generate("gen", GeneratorSpec::bounded(RECORDS), |i| (i % KEYS, i), |i| i)
        .key_by("by-key", |r: &(u64, u64)| r.0)
        .fold("sum", || 0u64, |a, r| *a += r.1)
        .output("out", sink);
}

fn collect(output: spate::OutputHandle<(u64, u64)>) -> Vec<(u64, u64)> {
    let mut got = Vec::new();
    loop {
        match output.recv_timeout(Duration::from_secs(60)) {
            Ok(Some(r)) => got.push(r),
            Ok(None) => break,
            Err(_) => panic!("no result within 60 s ({} so far)", got.len()),
        }
    }
    got.sort_unstable();
    got
}

fn config(dir: &std::path::Path) -> RuntimeConfig {
    RuntimeConfig { workers: 2, pin: false, data_dir: dir.to_path_buf(), linger_us: 50, ..Default::default() }
}

#[test]
fn two_nodes_over_tcp_match_one_process() {
    let _watchdog = Watchdog::start("two nodes over tcp", Duration::from_secs(120));
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));

    // One process, two workers.
    let (sink, output) = spate::output::<(u64, u64)>(1024);
    let job = Runtime::new(config(&dir.path().join("single")))
        .start("sum", move |df| build(df, &sink))
        .unwrap_or_else(|e| panic!("start: {e}"));
    let single = collect(output);
    job.wait().unwrap_or_else(|e| panic!("single: {e}"));
    assert_eq!(single.len() as u64, RECORDS);

    // Two nodes of one worker each, in two threads.
    let cluster = 7;
    let mut listeners: Vec<Listener> = (0..2)
        .map(|n| {
            let addr: SocketAddr = "127.0.0.1:0".parse().unwrap_or_else(|e| panic!("{e}"));
            Listener::bind(addr, net_config(format!("n{n}"), cluster)).unwrap_or_else(|e| panic!("bind: {e}"))
        })
        .collect();
    let nodes: Vec<NodeSpec> = listeners
        .iter()
        .enumerate()
        .map(|(n, l)| NodeSpec { name: format!("n{n}"), addr: l.local_addr(), workers: 1 })
        .collect();
    let (sink, output) = spate::output::<(u64, u64)>(1024);
    let threads: Vec<_> = (0..2)
        .rev()
        .map(|me| {
            let mut listener = listeners.remove(me);
            let placement = ClusterPlacement {
                nodes: nodes.clone(),
                me,
                cluster,
                connect_timeout: Duration::from_secs(20),
                epoch: 0,
                join: None,
            };
            let sink = sink.clone();
            let dir = dir.path().join(format!("node{me}"));
            std::thread::spawn(move || {
                let mut cfg = config(&dir);
                cfg.workers = 1;
                let job = Runtime::new(cfg)
                    .start_cluster("sum", move |df| build(df, &sink), placement, &mut listener)
                    .map_err(|e| e.to_string())?;
                job.wait().map_err(|e| e.to_string())
            })
        })
        .collect();
    drop(sink);
    let distributed = collect(output);
    let mut records_in = 0;
    for t in threads {
        let report =
            t.join().unwrap_or_else(|_| panic!("node thread panicked")).unwrap_or_else(|e| panic!("{e}"));
        records_in += report.records_in;
    }
    assert_eq!(records_in, RECORDS);
    assert_eq!(distributed.len(), single.len(), "results over TCP");
    assert_eq!(distributed, single, "the two-node job's results differ from one process's");
}

#[test]
fn a_missing_node_is_named_after_the_timeout() {
    let _watchdog = Watchdog::start("missing node", Duration::from_secs(60));
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let addr: SocketAddr = "127.0.0.1:0".parse().unwrap_or_else(|e| panic!("{e}"));
    let mut listener =
        Listener::bind(addr, net_config("n0".into(), 9)).unwrap_or_else(|e| panic!("bind: {e}"));
    // A port nobody listens on: bind one, note it, close it.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
    let silent_addr = silent.local_addr().unwrap_or_else(|e| panic!("{e}"));
    drop(silent);
    let nodes = vec![
        NodeSpec { name: "n0".into(), addr: listener.local_addr(), workers: 1 },
        NodeSpec { name: "n1".into(), addr: silent_addr, workers: 1 },
    ];
    let placement = ClusterPlacement {
        nodes,
        me: 0,
        cluster: 9,
        connect_timeout: Duration::from_millis(500),
        epoch: 0,
        join: None,
    };
    let mut cfg = config(dir.path());
    cfg.workers = 1;
    let (sink, _output) = spate::output::<(u64, u64)>(16);
    let t = std::time::Instant::now();
    let err =
        match Runtime::new(cfg).start_cluster("sum", move |df| build(df, &sink), placement, &mut listener) {
            Ok(_) => panic!("started without its peer"),
            Err(e) => e.to_string(),
        };
    assert!(t.elapsed() < Duration::from_secs(10), "took {:?}", t.elapsed());
    assert!(err.contains("not connected") && err.contains("0->1"), "{err}");
}
