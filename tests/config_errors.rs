//! `spate run` refuses bad configs and bad command lines: it exits non-zero
//! before running anything, and its message names what is wrong.

use std::path::PathBuf;
use std::process::{Command, Output};

fn spate(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_spate"))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run spate: {e}"))
}

/// Runs `spate run CONFIG --quiet` on `text`; asserts it fails, and returns
/// its stderr.
fn rejected(text: &str) -> String {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let cfg = dir.path().join("bad.toml");
    std::fs::write(&cfg, text).unwrap_or_else(|e| panic!("write config: {e}"));
    let out = spate(&["run", &cfg.display().to_string(), "--quiet"]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "accepted:\n{text}\nstderr: {stderr}");
    assert!(stderr.contains("bad.toml"), "the message names the file: {stderr}");
    // Nothing ran: no summary line.
    assert!(!stderr.contains("records in"), "a job ran: {stderr}");
    stderr
}

fn assert_mentions(stderr: &str, words: &[&str]) {
    for w in words {
        assert!(stderr.contains(w), "expected {w:?} in the message:\n{stderr}");
    }
}

const QUERY: &str = "[query]\nname = \"keyed-sum\"\n[query.params]\nrecords = 10\n";

#[test]
fn misspelled_runtime_field() {
    let _watchdog = spate::Watchdog::start("misspelled_runtime_field", std::time::Duration::from_secs(120));
    let e = rejected(&format!("{QUERY}[runtime]\nwrokers = 2\n"));
    assert_mentions(&e, &["unknown field", "wrokers", "workers"]);
}

#[test]
fn misspelled_query_param() {
    let _watchdog = spate::Watchdog::start("misspelled_query_param", std::time::Duration::from_secs(120));
    let e = rejected("[query]\nname = \"keyed-sum\"\n[query.params]\nrecrods = 5\n");
    assert_mentions(&e, &["query.params", "recrods", "records"]);
}

#[test]
fn wrong_type() {
    let _watchdog = spate::Watchdog::start("wrong_type", std::time::Duration::from_secs(120));
    let e = rejected(&format!("{QUERY}[runtime]\nworkers = \"two\"\n"));
    assert_mentions(&e, &["invalid type", "workers", "two"]);
}

#[test]
fn missing_query_section() {
    let _watchdog = spate::Watchdog::start("missing_query_section", std::time::Duration::from_secs(120));
    let e = rejected("[runtime]\nworkers = 2\n");
    assert_mentions(&e, &["missing field", "query"]);
}

#[test]
fn unknown_query_lists_the_known_ones() {
    let _watchdog =
        spate::Watchdog::start("unknown_query_lists_the_known_ones", std::time::Duration::from_secs(120));
    let e = rejected("[query]\nname = \"wordcnt\"\n");
    assert_mentions(&e, &["wordcnt", "keyed-sum", "wordcount"]);
}

#[test]
fn bad_sink_kind() {
    let _watchdog = spate::Watchdog::start("bad_sink_kind", std::time::Duration::from_secs(120));
    let e = rejected(&format!("{QUERY}[sink]\nkind = \"printer\"\n"));
    assert_mentions(&e, &["printer", "count", "stdout", "file"]);
}

#[test]
fn file_sink_without_path() {
    let _watchdog = spate::Watchdog::start("file_sink_without_path", std::time::Duration::from_secs(120));
    let e = rejected(&format!("{QUERY}[sink]\nkind = \"file\"\n"));
    assert_mentions(&e, &["sink.path", "file"]);
}

#[test]
fn invalid_runtime_value() {
    let _watchdog = spate::Watchdog::start("invalid_runtime_value", std::time::Duration::from_secs(120));
    let e = rejected(&format!("{QUERY}[runtime]\nbatch_records = 0\n"));
    assert_mentions(&e, &["batch_records"]);
}

#[test]
fn invalid_query_param_value() {
    let _watchdog = spate::Watchdog::start("invalid_query_param_value", std::time::Duration::from_secs(120));
    let e = rejected("[query]\nname = \"keyed-sum\"\n[query.params]\nkeys = 0\n");
    assert_mentions(&e, &["keys"]);
}

#[test]
fn unknown_cli_option() {
    let _watchdog = spate::Watchdog::start("unknown_cli_option", std::time::Duration::from_secs(120));
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let cfg = dir.path().join("ok.toml");
    std::fs::write(&cfg, QUERY).unwrap_or_else(|e| panic!("write config: {e}"));
    let out = spate(&["run", &cfg.display().to_string(), "--bogus"]);
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "accepted --bogus: {e}");
    assert_mentions(&e, &["--bogus", "--workers"]);

    let out = spate(&["run", &cfg.display().to_string(), "--workers", "many"]);
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "accepted --workers many: {e}");
    assert_mentions(&e, &["--workers", "many"]);
}

#[test]
fn missing_config_file() {
    let _watchdog = spate::Watchdog::start("missing_config_file", std::time::Duration::from_secs(120));
    let missing: PathBuf =
        std::env::temp_dir().join(format!("spate-no-such-config-{}.toml", std::process::id()));
    let out = spate(&["run", &missing.display().to_string()]);
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "accepted a missing file: {e}");
    assert_mentions(&e, &[&missing.display().to_string(), "cannot read"]);
}

#[test]
fn unknown_command_and_missing_argument() {
    let _watchdog =
        spate::Watchdog::start("unknown_command_and_missing_argument", std::time::Duration::from_secs(120));
    let out = spate(&["frob"]);
    assert!(!out.status.success());
    assert_mentions(&String::from_utf8_lossy(&out.stderr), &["frob", "Usage"]);
    let out = spate(&["run"]);
    assert!(!out.status.success());
    assert_mentions(&String::from_utf8_lossy(&out.stderr), &["required", "<CONFIG>"]);
}

#[test]
fn a_good_config_runs() {
    let _watchdog = spate::Watchdog::start("a_good_config_runs", std::time::Duration::from_secs(120));
    // The control: the same harness accepts a valid config and runs it.
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let cfg = dir.path().join("ok.toml");
    let text = format!(
        "{QUERY}[runtime]\nworkers = 1\npin = false\ndata_dir = {:?}\n[sink]\nkind = \"none\"\n",
        dir.path().join("state").display().to_string()
    );
    std::fs::write(&cfg, text).unwrap_or_else(|e| panic!("write config: {e}"));
    let out = spate(&["run", &cfg.display().to_string(), "--quiet"]);
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{e}");
    assert_mentions(&e, &["keyed-sum: 10 records in"]);
}

#[test]
fn every_example_config_is_valid() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let p = e.unwrap_or_else(|e| panic!("{e}")).path();
        if p.extension().is_some_and(|x| x == "toml") {
            spate::config::Config::load(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            n += 1;
        }
    }
    assert!(n >= 5, "only {n} example configs");
}

#[test]
fn cluster_fault_tolerance_fields_are_checked() {
    let base = "[query]\nname = \"keyed-sum\"\n[checkpoint]\ninterval_ms = 100\n[cluster]\n\
                [[cluster.nodes]]\nname = \"a\"\naddress = \"127.0.0.1:0\"\n";
    // One node cannot back up its checkpoints on another.
    assert_mentions(&rejected(base), &["checkpoint.backups"]);
    // A spare cannot coordinate.
    let spare_coordinator =
        format!("{base}[[cluster.nodes]]\nname = \"b\"\naddress = \"127.0.0.1:0\"\nspare = true\n")
            .replace("[cluster]\n", "[cluster]\ncoordinator = \"b\"\n");
    assert_mentions(&rejected(&spare_coordinator), &["cluster.coordinator", "spare"]);
    // Backups without a cluster.
    assert_mentions(
        &rejected("[query]\nname = \"keyed-sum\"\n[checkpoint]\ninterval_ms = 100\nbackups = 1\n"),
        &["checkpoint.backups", "cluster"],
    );
    assert_mentions(&rejected(&base.replace("[cluster]\n", "[cluster]\nspares = 1\n")), &["spares"]);
    // Only the coordinator may run no workers.
    let idle = format!("{base}[[cluster.nodes]]\nname = \"b\"\naddress = \"127.0.0.1:0\"\nworkers = 0\n");
    assert_mentions(&rejected(&idle), &["cluster.nodes[1].workers", "only the coordinator"]);
    // Recovery settings: known values, a cluster, a sane buffer.
    let two = format!("{base}[[cluster.nodes]]\nname = \"b\"\naddress = \"127.0.0.1:0\"\n");
    let with = |line: &str| two.replace("interval_ms = 100\n", &format!("interval_ms = 100\n{line}\n"));
    assert_mentions(&rejected(&with("recovery = \"sometimes\"")), &["recovery", "sometimes"]);
    assert_mentions(&rejected(&with("buffer_mb = 0")), &["checkpoint.buffer_mb", "0"]);
    assert_mentions(
        &rejected("[query]\nname = \"keyed-sum\"\n[checkpoint]\ninterval_ms = 100\nrecovery = \"live\"\n"),
        &["checkpoint.recovery", "cluster"],
    );
    for (line, live) in [("", true), ("recovery = \"live\"", true), ("recovery = \"rollback\"", false)] {
        let cfg = spate::config::Config::parse(&with(line)).unwrap_or_else(|e| panic!("{line}: {e}"));
        assert_eq!(cfg.live_recovery(), live, "{line}");
        assert_eq!(cfg.runtime_config().replay_buffer_bytes > 0, live, "{line}");
    }
}

#[test]
fn query_param_type_errors_name_field_value_and_what_is_allowed() {
    let _watchdog = spate::Watchdog::start(
        "query_param_type_errors_name_field_value_and_what_is_allowed",
        std::time::Duration::from_secs(120),
    );
    let keyed = |line: &str| format!("[query]\nname = \"keyed-sum\"\n[query.params]\n{line}\n");
    let words = |line: &str| format!("[query]\nname = \"wordcount\"\n[query.params]\n{line}\n");
    for (text, expected) in [
        (keyed("records = -5"), "query.params.records: expected a whole number ≥ 0, got -5"),
        (keyed("records = 1.5"), "query.params.records: expected a whole number ≥ 0, got 1.5"),
        (keyed("keys = 0"), "query.params.keys: expected a whole number ≥ 1, got 0"),
        (words("lines = \"many\""), "query.params.lines: expected a whole number ≥ 0, got \"many\""),
        (
            words("words_per_line = 5000000000"),
            "query.params.words_per_line: expected a whole number from 1 to 1048576, got 5000000000",
        ),
        (words("file = 5"), "query.params.file: expected a file path (a string), got 5"),
    ] {
        assert_mentions(&rejected(&text), &[expected]);
    }
}

#[test]
fn io_memory_beyond_what_the_machine_allows_is_refused() {
    let _watchdog = spate::Watchdog::start(
        "io_memory_beyond_what_the_machine_allows_is_refused",
        std::time::Duration::from_secs(120),
    );
    // glommio allocates it in one piece and panicked inside a worker when
    // that failed; the job then hung. It is refused before anything runs,
    // naming the limit it is beyond.
    let limit = match spate::core::config::memlock_limit() {
        Some(memlock) => {
            format!("{memlock} bytes this process may lock in memory (RLIMIT_MEMLOCK, `ulimit -l`)")
        }
        None => {
            let memory = spate::core::config::machine_memory().unwrap_or_else(|| panic!("no memory size"));
            format!("the machine's memory ({memory} bytes)")
        }
    };
    let e = rejected(&format!("{QUERY}[runtime]\nworkers = 1\npin = false\nio_memory_bytes = 32000000000\n"));
    assert_mentions(&e, &["runtime.io_memory_bytes = 32000000000", &limit]);
}

#[test]
fn values_that_would_overflow_the_runtime_are_refused() {
    let _watchdog = spate::Watchdog::start(
        "values_that_would_overflow_the_runtime_are_refused",
        std::time::Duration::from_secs(120),
    );
    let two = "[cluster]\n[[cluster.nodes]]\nname = \"a\"\naddress = \"127.0.0.1:0\"\n\
               [[cluster.nodes]]\nname = \"b\"\naddress = \"127.0.0.1:0\"\n";
    for (text, words) in [
        (format!("{QUERY}[runtime]\nlinger_us = 9000000000000\n"), &["runtime.linger_us", "60000000"][..]),
        (
            format!("{QUERY}[runtime]\npark_when_idle = true\nspin_before_park_us = 9000000000000\n"),
            &["runtime.spin_before_park_us", "60000000"],
        ),
        (
            format!("{QUERY}[runtime]\nchannel_batches = 9000000000000\n"),
            &["runtime.channel_batches", "65536"],
        ),
        (
            format!("{QUERY}[checkpoint]\ninterval_ms = 9000000000000\n"),
            &["checkpoint.interval_ms", "86400000"],
        ),
        (
            format!(
                "{QUERY}{}",
                two.replace("[cluster]\n", "[cluster]\nfailure_timeout_ms = 9000000000000\n")
            ),
            &["cluster.failure_timeout_ms", "86400000"],
        ),
        (
            format!(
                "{QUERY}{}",
                two.replace("[cluster]\n", "[cluster]\nconnect_timeout_ms = 9000000000000\n")
            ),
            &["cluster.connect_timeout_ms", "86400000"],
        ),
    ] {
        assert_mentions(&rejected(&text), words);
    }
}

#[test]
fn contradictory_cluster_settings_are_refused() {
    let _watchdog = spate::Watchdog::start(
        "contradictory_cluster_settings_are_refused",
        std::time::Duration::from_secs(120),
    );
    let node = |name: &str, extra: &str| {
        format!("[[cluster.nodes]]\nname = \"{name}\"\naddress = \"127.0.0.1:0\"\n{extra}")
    };
    let cfg = |checkpoint: &str, nodes: &[String]| {
        format!("{QUERY}[checkpoint]\ninterval_ms = 100\n{checkpoint}[cluster]\n{}", nodes.concat())
    };
    let (a, b, c, s) = (node("a", ""), node("b", ""), node("c", ""), node("s", "spare = true\n"));
    // No backup of a node's checkpoints elsewhere: nothing for live
    // recovery, or a spare, to restore a failed node from.
    assert_mentions(
        &rejected(&cfg("backups = 0\n", &[a.clone(), b.clone()])),
        &["checkpoint.backups: 0", "live recovery", "recovery = \"rollback\""],
    );
    assert_mentions(
        &rejected(&cfg("backups = 0\nrecovery = \"rollback\"\n", &[a.clone(), b.clone(), s.clone()])),
        &["checkpoint.backups: 0", "spare `s`"],
    );
    // More backup nodes than other nodes to hold them (spares count: they
    // back up a job that runs on too few nodes, decision 63).
    assert_mentions(
        &rejected(&cfg("backups = 3\n", &[a.clone(), b.clone(), s.clone()])),
        &["checkpoint.backups: 3", "only 2 other nodes", "1 spares"],
    );
    assert_mentions(
        &rejected(&cfg("backups = 1\n", std::slice::from_ref(&a))),
        &["checkpoint.backups: 1", "only 0 other nodes"],
    );
    assert_mentions(
        &rejected(&cfg("backups = 3\n", &[a.clone(), b.clone(), c.clone()])),
        &["checkpoint.backups: 3", "only 2 other nodes"],
    );
    // A cluster of spares only.
    assert_mentions(
        &rejected(&format!(
            "{QUERY}[cluster]\n{}{}",
            node("x", "spare = true\n"),
            node("y", "spare = true\n")
        )),
        &["cluster.nodes", "every node is a spare (x, y)"],
    );
    // The controls: the same settings made consistent are accepted.
    for ok in [
        cfg("backups = 0\nrecovery = \"rollback\"\n", &[a.clone(), b.clone()]),
        cfg("backups = 1\n", &[a.clone(), b.clone(), s.clone()]),
        cfg("backups = 2\n", &[a.clone(), b.clone(), s.clone()]),
        // One node and the pool that backs it up until it grows onto it.
        cfg("backups = 1\n", &[a.clone(), s]),
        cfg("backups = 2\n", &[a, b, c]),
    ] {
        spate::config::Config::parse(&ok).unwrap_or_else(|e| panic!("{e}:\n{ok}"));
    }
}

#[test]
fn checkpoint_durability_stall_intervals_and_secrets_are_checked() {
    let _watchdog = spate::Watchdog::start("durability and secrets", std::time::Duration::from_secs(120));
    let cluster = "[cluster]\n[[cluster.nodes]]\nname = \"a\"\naddress = \"127.0.0.1:0\"\n\
                   [[cluster.nodes]]\nname = \"b\"\naddress = \"127.0.0.1:0\"\n";
    let e =
        rejected(&format!("{QUERY}[checkpoint]\ninterval_ms = 100\ndurability = \"sometimes\"\n{cluster}"));
    assert_mentions(&e, &["durability", "sometimes", "fsync", "page-cache"]);
    let e = rejected(&format!("{QUERY}[checkpoint]\ninterval_ms = 100\nstall_intervals = 0\n{cluster}"));
    assert_mentions(&e, &["checkpoint.stall_intervals", "0", "between 1"]);
    let e = rejected(&format!("{QUERY}[checkpoint]\ninterval_ms = 100\ndurability = \"fsync\"\n"));
    assert_mentions(&e, &["checkpoint.durability", "only a [cluster]"]);
    // A node beyond loopback without a secret refuses to start; a secret
    // file too short is named.
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let remote =
        format!("{QUERY}[cluster]\n[[cluster.nodes]]\nname = \"a\"\naddress = \"10.255.0.1:7100\"\n");
    let cfg = dir.path().join("remote.toml");
    std::fs::write(&cfg, &remote).unwrap_or_else(|e| panic!("{e}"));
    let out = Command::new(env!("CARGO_BIN_EXE_spate"))
        .args(["node", "--name", "a", "--config", &cfg.display().to_string()])
        .env_remove("SPATE_CLUSTER_SECRET")
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert_mentions(&stderr, &["no secret", "secret_file", "SPATE_CLUSTER_SECRET"]);
    let short = dir.path().join("secret");
    std::fs::write(&short, "hunter2\n").unwrap_or_else(|e| panic!("{e}"));
    let cfg2 = dir.path().join("short.toml");
    let text = remote
        .replace("[cluster]\n", &format!("[cluster]\nsecret_file = {:?}\n", short.display().to_string()));
    std::fs::write(&cfg2, text).unwrap_or_else(|e| panic!("{e}"));
    let out = Command::new(env!("CARGO_BIN_EXE_spate"))
        .args(["node", "--name", "a", "--config", &cfg2.display().to_string()])
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert_mentions(&stderr, &["cluster.secret_file", "7 bytes", "shorter than 16"]);
}

#[test]
fn an_unbuilt_provisioner_is_refused_by_name() {
    let _watchdog = spate::Watchdog::start("provisioner", std::time::Duration::from_secs(60));
    for (p, says) in [
        ("local", "scaling.provisioner: `local` is not built yet"),
        ("command", "scaling.provisioner: `command` is not built yet"),
        ("ec2", "scaling.provisioner: `ec2` is not a provisioner"),
    ] {
        let e = rejected(&format!("{QUERY}[scaling]\nprovisioner = \"{p}\"\n"));
        assert_mentions(&e, &[says]);
    }
    let ok = format!("{QUERY}[runtime]\nworkers = 1\nmax_workers = 2\n[scaling]\nprovisioner = \"static\"\n");
    spate::config::Config::parse(&ok).unwrap_or_else(|e| panic!("{e}:\n{ok}"));
}
