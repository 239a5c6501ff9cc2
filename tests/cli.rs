//! The `spate` command's conventions: `--version`, `--help` on every
//! subcommand (each naming its own options), usage errors that name the
//! bad option and list the good ones, and `spate queries` listing every
//! query's parameters with their defaults.

use std::process::Command;

const SPATE: &str = env!("CARGO_BIN_EXE_spate");

fn spate(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(SPATE).args(args).output().unwrap_or_else(|e| panic!("cannot run spate: {e}"));
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn version_is_the_crates() {
    let (code, out, err) = spate(&["--version"]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out.trim(), format!("spate {}", env!("CARGO_PKG_VERSION")));
}

#[test]
fn every_subcommand_has_help_naming_its_options() {
    for (args, options) in [
        (&["run"][..], &["--workers", "--quiet", "--fresh", "<CONFIG>"][..]),
        (&["node"][..], &["--config", "--name", "--first-core", "--no-pin", "--json"][..]),
        (&["cluster"][..], &["--config", "--quiet", "--json"][..]),
        (&["queries"][..], &[][..]),
        (
            &["bench"][..],
            &["throughput", "latency", "compare", "state", "rescale", "recovery", "ft-cost"][..],
        ),
        (&["bench", "throughput"][..], &["--query", "--records", "--workers", "--keys", "--nodes"][..]),
        (&["bench", "latency"][..], &["--rate", "--seconds", "--linger-us", "--csv", "--nodes"][..]),
        (&["bench", "compare"][..], &["--records", "--runs", "--peer"][..]),
        (&["bench", "state"][..], &["--state-mb", "--dirty-percent", "--backing"][..]),
        (&["bench", "rescale"][..], &["--work-ns", "--phase-s", "--max-bins"][..]),
        (&["bench", "recovery"][..], &["--state-mb", "--silent", "--rollback", "--no-spare"][..]),
        (&["bench", "ft-cost"][..], &["--records", "--buffer-mb", "--rollback"][..]),
    ] {
        let mut with_help = args.to_vec();
        with_help.push("--help");
        let (code, out, err) = spate(&with_help);
        assert_eq!(code, Some(0), "spate {with_help:?}: {err}");
        assert!(out.contains(&format!("Usage: spate {}", args.join(" "))), "spate {with_help:?}: {out}");
        for o in options {
            assert!(out.contains(o), "spate {with_help:?} does not mention {o}: {out}");
        }
    }
}

#[test]
fn an_unknown_option_is_named_with_the_known_ones() {
    let (code, _, err) = spate(&["bench", "latency", "--rate", "10", "--rat", "5"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--rat"), "{err}");
    assert!(err.contains("`spate bench latency` takes: --query, --rate, --seconds"), "{err}");
    let (code, _, err) =
        spate(&["node", "--config", "x.toml", "--name", "a", "--first-core", "1", "--no-pin"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--first-core") && err.contains("--no-pin"), "{err}");
}

#[test]
fn queries_lists_parameters_and_defaults() {
    let (code, out, err) = spate(&["queries"]);
    assert_eq!(code, Some(0), "{err}");
    for line in [
        "keyed-sum — ",
        "    records = 10000000",
        "    keys = 100000",
        "wordcount — ",
        "    window_lines = 10000",
        "    file = (unset)",
    ] {
        assert!(out.contains(line), "no {line:?} in {out}");
    }
}

#[test]
fn an_option_given_twice_takes_its_last_value() {
    // As the hand-written parser did: the second --workers wins, and it
    // is the one that is refused.
    let (code, _, err) =
        spate(&["run", "no-such.toml", "--quiet", "--quiet", "--workers", "1", "--workers", "x"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("invalid value 'x' for '--workers <N>'"), "{err}");
    let (code, _, err) =
        spate(&["run", "no-such.toml", "--quiet", "--workers", "2", "--quiet", "--workers", "1"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("no-such.toml") && err.contains("cannot read"), "{err}");
}
