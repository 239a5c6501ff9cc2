//! The user-registered `vwap` query through this crate's binary, the
//! `spate` command with one more query: under `run` on two workers with
//! checkpoints, and on a local cluster of three node processes (127.0.0.1,
//! ports the OS picks) with checkpoints backed up on another node. Both
//! must write exactly the lines a plain loop over the same trades gives —
//! also when a node of the cluster is killed with SIGKILL and a spare
//! takes its place (live recovery: its window state restored from a
//! checkpoint on another node, the survivors replaying to it).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use own_query::{trade, Side};

const BIN: &str = env!("CARGO_BIN_EXE_own-query");
const TRADES: u64 = 30_000;
/// Trades, and trades a second, of the run a node is killed in.
const PACED: (u64, u64) = (120_000, 30_000);
const SYMBOLS: u64 = 5;
const WINDOW: u64 = 4_000;

/// What the query must write: one line per (window, symbol), worked out
/// one trade at a time.
fn expected() -> Vec<String> {
    expected_of(TRADES)
}

fn expected_of(trades: u64) -> Vec<String> {
    // (start, symbol) -> (notional, bought, sold)
    let mut w: BTreeMap<(u64, String), (u64, u64, u64)> = BTreeMap::new();
    for i in 0..trades {
        let t = trade(i, SYMBOLS);
        let e = w.entry((i / WINDOW * WINDOW, t.symbol.clone())).or_default();
        e.0 += t.price_cents * t.qty;
        match t.side {
            Side::Buy => e.1 += t.qty,
            Side::Sell => e.2 += t.qty,
        }
    }
    let mut v: Vec<String> = w
        .into_iter()
        .map(|((start, s), (n, b, sold))| format!("{start} {s} {} {b} {sold}", n / (b + sold)))
        .collect();
    v.sort();
    v
}

/// A `vwap` config writing to `dir/out.txt`, with `tail` appended.
fn config(dir: &Path, tail: &str) -> PathBuf {
    let text = format!(
        "[query]\nname = \"vwap\"\n[query.params]\ntrades = {TRADES}\nsymbols = {SYMBOLS}\nwindow_trades = {WINDOW}\n\
         [runtime]\npin = false\ndata_dir = {:?}\n\
         [sink]\nkind = \"file\"\npath = {:?}\nlatency = false\n\
         [checkpoint]\ninterval_ms = 20\n{tail}",
        dir.join("data").display().to_string(),
        dir.join("out.txt").display().to_string(),
    );
    let p = dir.join("vwap.toml");
    std::fs::write(&p, text).unwrap_or_else(|e| panic!("write config: {e}"));
    p
}

/// Every line of every part `out.txt.<w>` of the file sink, sorted.
fn all_lines(dir: &Path) -> Vec<String> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let p = e.unwrap_or_else(|e| panic!("{e}")).path();
        let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        if name.strip_prefix("out.txt.").is_some_and(|w| w.parse::<usize>().is_ok()) {
            let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            v.extend(text.lines().map(str::to_string));
        }
    }
    v.sort();
    v
}

/// Every line of the file sink's parts `out.txt.0..workers`, sorted.
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

fn own_query(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(BIN).args(args).output().unwrap_or_else(|e| panic!("cannot run {BIN}: {e}"));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn vwap_under_run_writes_exactly_its_windows() {
    let _watchdog = spate::Watchdog::start("vwap under run", std::time::Duration::from_secs(180));
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let cfg = config(dir.path(), "").display().to_string();
    let (ok, _, err) = own_query(&["run", &cfg, "--quiet", "--workers", "2"]);
    assert!(ok, "own-query run failed: {err}");
    let want = expected();
    assert_eq!(want.len() as u64, TRADES.div_ceil(WINDOW) * SYMBOLS);
    assert_eq!(lines(dir.path(), 2), want);
    assert!(err.contains(&format!("vwap: {TRADES} records in")), "{err}");
    // Its window state (a String key, a struct of its own) was
    // checkpointed on the way.
    assert!(err.contains(" checkpoints"), "no checkpoint taken: {err}");
}

#[test]
fn vwap_on_a_local_cluster_writes_exactly_its_windows() {
    let _watchdog = spate::Watchdog::start("vwap on a cluster", std::time::Duration::from_secs(240));
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let mut nodes = String::from("backups = 1\n[cluster]\n");
    for name in ["a", "b", "c"] {
        nodes += &format!("[[cluster.nodes]]\nname = \"{name}\"\naddress = \"127.0.0.1:0\"\nworkers = 1\n");
    }
    let cfg = config(dir.path(), &nodes).display().to_string();
    let (ok, _, err) = own_query(&["cluster", "--quiet", "--json", "--config", &cfg]);
    assert!(ok, "own-query cluster failed: {err}");
    assert_eq!(lines(dir.path(), 3), expected());
}

#[test]
fn vwap_parameters_are_checked_and_listed() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let p = dir.path().join("bad.toml");
    std::fs::write(&p, "[query]\nname = \"vwap\"\n[query.params]\nsymbols = 9\n")
        .unwrap_or_else(|e| panic!("{e}"));
    let (ok, _, err) = own_query(&["run", &p.display().to_string()]);
    assert!(!ok && err.contains("query.params.symbols: expected a whole number from 1 to 8, got 9"), "{err}");
    std::fs::write(&p, "[query]\nname = \"vwap\"\n[query.params]\ntrades = \"many\"\n")
        .unwrap_or_else(|e| panic!("{e}"));
    let (ok, _, err) = own_query(&["run", &p.display().to_string()]);
    assert!(!ok && err.contains("query.params.trades: expected a whole number ≥ 0, got \"many\""), "{err}");

    let (ok, out, err) = own_query(&["queries"]);
    assert!(ok, "{err}");
    assert!(out.contains("keyed-sum") && out.contains("wordcount"), "the built-ins are there too: {out}");
    assert!(out.contains("vwap — ") && out.contains("    window_trades = 10000"), "{out}");

    let (ok, out, err) =
        own_query(&["bench", "throughput", "--query", "vwap", "--records", "20000", "--json"]);
    assert!(ok, "{err}");
    assert!(out.contains("\"query\":\"vwap\",\"records\":20000,"), "{out}");
}

#[test]
fn vwap_survives_a_node_killed_and_replaced_by_a_spare() {
    let _watchdog = spate::Watchdog::start("vwap with a node killed", std::time::Duration::from_secs(240));
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let mut nodes =
        String::from("backups = 1\n[cluster]\nconnect_timeout_ms = 20000\nfailure_timeout_ms = 500\n");
    for (name, spare) in [("a", false), ("b", false), ("c", false), ("s1", true)] {
        nodes +=
            &format!("[[cluster.nodes]]\nname = \"{name}\"\naddress = \"127.0.0.1:0\"\nspare = {spare}\n");
    }
    let cfg = config(dir.path(), &nodes);
    let (trades, rate) = PACED;
    let text = std::fs::read_to_string(&cfg).unwrap_or_else(|e| panic!("{e}"));
    let text = text.replace(&format!("trades = {TRADES}\n"), &format!("trades = {trades}\nrate = {rate}\n"));
    let text = spate::deploy::resolve_ports(&text).unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(&cfg, text).unwrap_or_else(|e| panic!("{e}"));

    let mut nodes = spate::deploy::LocalNodes::start_of(Path::new(BIN), &cfg, &own_query::registry(), &[])
        .unwrap_or_else(|e| panic!("{e}"));
    let wait = |nodes: &mut spate::deploy::LocalNodes, what: &str| {
        nodes
            .wait_event(std::time::Duration::from_secs(60), |e| e.what == what)
            .unwrap_or_else(|e| panic!("{what}: {e}\nnodes said:\n{}", nodes.stderr()));
    };
    // Once checkpoints hold windows in progress (the schedule starts
    // 200 ms after the coordinator; one every 20 ms).
    wait(&mut nodes, "running 0");
    wait(&mut nodes, "checkpoint 20");
    nodes.kill("b").unwrap_or_else(|e| panic!("{e}"));
    wait(&mut nodes, "failed b");
    wait(&mut nodes, "running 1");
    let reports = nodes.wait(std::time::Duration::from_secs(120)).unwrap_or_else(|e| panic!("{e}"));
    let stderr = nodes.stderr();
    assert!(stderr.contains("keeps the survivors running"), "no live recovery:\n{stderr}");
    let spare =
        reports.iter().find(|r| r.node == "s1").unwrap_or_else(|| panic!("no report of s1: {reports:?}"));
    assert!(spare.records_in < trades / 3, "the spare did not resume from a checkpoint: {reports:?}");
    assert_eq!(all_lines(dir.path()), expected_of(trades), "nodes said:\n{stderr}");
}
