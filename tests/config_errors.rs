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
    assert_mentions(&String::from_utf8_lossy(&out.stderr), &["frob", "USAGE"]);
    let out = spate(&["run"]);
    assert!(!out.status.success());
    assert_mentions(&String::from_utf8_lossy(&out.stderr), &["config file"]);
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
