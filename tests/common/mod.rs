//! What the real-process tests share: the `spate` binary, a free loopback
//! address, a cluster's one-worker nodes and their processes, `spate ctl`,
//! and keyed-sum's output checked line by line against its closed form.
//! Each test crate uses a part of it.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use spate::deploy::KillOnDrop;

/// The `spate` binary of this build.
pub const SPATE: &str = env!("CARGO_BIN_EXE_spate");

/// A loopback address the OS just gave out (free when the listener closes).
pub fn free_addr() -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
    l.local_addr().unwrap_or_else(|e| panic!("{e}")).to_string()
}

/// `[[cluster.nodes]]` entries of one worker each on free loopback
/// addresses, one a name of `names`; a name ending in `*` is a spare (a
/// node of the pool).
pub fn one_worker_nodes(names: &[&str]) -> String {
    let mut text = String::new();
    for n in names {
        let (name, spare) = n.strip_suffix('*').map_or((*n, false), |s| (s, true));
        text += &format!(
            "[[cluster.nodes]]\nname = \"{name}\"\naddress = \"{}\"\nworkers = 1\nspare = {spare}\n",
            free_addr()
        );
    }
    text
}

/// `spate node --quiet --name NAME --config CFG`, its output dropped, or
/// with `events` its job events (`--json`) written there.
pub fn spawn_node(cfg: &Path, name: &str, events: Option<std::fs::File>) -> KillOnDrop {
    let mut c = Command::new(SPATE);
    c.args(["node", "--quiet", "--name", name, "--config"]).arg(cfg).stderr(Stdio::null());
    match events {
        Some(f) => c.arg("--json").stdout(f),
        None => c.stdout(Stdio::null()),
    };
    KillOnDrop(c.spawn().unwrap_or_else(|e| panic!("cannot start node {name}: {e}")))
}

/// `spate ctl ARGS --config CFG`, its answer within 30 s.
pub fn ctl(cfg: &Path, args: &[&str]) -> Output {
    Command::new(SPATE)
        .arg("ctl")
        .args(args)
        .args(["--timeout-s", "30", "--config"])
        .arg(cfg)
        .output()
        .unwrap_or_else(|e| panic!("cannot run spate ctl: {e}"))
}

/// A process's stdout and stderr, as text.
pub fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// keyed-sum's output in closed form (key `i % keys` gets value `i`; each
/// record emits `key,running sum`), every line counted.
pub fn keyed_sum_lines(records: u64, keys: u64) -> BTreeMap<String, u32> {
    let mut m = BTreeMap::new();
    for k in 0..keys.min(records) {
        let (mut acc, mut i) = (0u64, k);
        while i < records {
            acc += i;
            *m.entry(format!("{k},{acc}")).or_insert(0) += 1;
            i += keys;
        }
    }
    m
}

/// Every line of the file sink's parts `out.txt` and `out.txt.<w>` in
/// `dir` (not their commit logs), counted; and the lines of each worker's
/// part, by worker. Checks on the way that in each part a keyed-sum key's
/// sums only grow (a key's outputs in order).
pub fn sink_lines(dir: &Path) -> (BTreeMap<String, u32>, BTreeMap<usize, usize>) {
    let (mut m, mut per_worker) = (BTreeMap::new(), BTreeMap::new());
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let p = entry.unwrap_or_else(|e| panic!("{e}")).path();
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let worker = match name.strip_prefix("out.txt") {
            Some("") => 0,
            Some(r) => match r.strip_prefix('.').and_then(|w| w.parse().ok()) {
                Some(w) => w,
                None => continue,
            },
            None => continue,
        };
        let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        let mut last: BTreeMap<u64, u64> = BTreeMap::new();
        for l in text.lines() {
            *m.entry(l.to_string()).or_insert(0) += 1;
            if let Some((k, v)) =
                l.split_once(',').and_then(|(k, v)| Some((k.parse().ok()?, v.parse().ok()?)))
            {
                let prev = last.insert(k, v);
                assert!(prev.is_none_or(|p| p < v), "{}: key {k} went from {prev:?} to {v}", p.display());
            }
        }
        *per_worker.entry(worker).or_insert(0) += text.lines().count();
    }
    (m, per_worker)
}

/// Asserts that `got` has every line of `want` exactly as often.
pub fn assert_same_lines(got: &BTreeMap<String, u32>, want: &BTreeMap<String, u32>) {
    let missing = want.iter().filter(|(k, n)| got.get(*k) < Some(n)).count();
    let extra = got.iter().filter(|(k, n)| want.get(*k) < Some(n)).count();
    assert!(
        missing == 0 && extra == 0,
        "{missing} lines missing, {extra} extra or duplicated; {} lines, {} expected",
        got.values().sum::<u32>(),
        want.values().sum::<u32>()
    );
}

/// Asserts that the file sink in `dir` wrote keyed-sum's output exactly
/// once; the lines of each worker's part, by worker.
pub fn assert_keyed_sum_exact(dir: &Path, records: u64, keys: u64) -> BTreeMap<usize, usize> {
    let (got, per_worker) = sink_lines(dir);
    assert_same_lines(&got, &keyed_sum_lines(records, keys));
    per_worker
}
