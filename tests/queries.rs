//! The named queries end to end through the real `spate` binary: a TOML
//! config written here, `spate run CONFIG`, and the file sink's output
//! checked against results computed independently in the test.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use spate::queries::wordcount_line;

/// A scratch directory with a state dir and an output path.
struct Scratch {
    dir: tempfile::TempDir,
}

impl Scratch {
    fn new() -> Self {
        Self { dir: tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}")) }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes a config with `query` (the `[query]` and `[query.params]`
    /// sections), `workers` and a file sink into `out.txt`; returns its path.
    fn config(&self, query: &str, workers: usize) -> PathBuf {
        let text = format!(
            "{query}\n[runtime]\nworkers = {workers}\npin = false\ndata_dir = {data:?}\n\n\
             [sink]\nkind = \"file\"\npath = {out:?}\nlatency = false\n",
            data = self.path("state").display().to_string(),
            out = self.path("out.txt").display().to_string(),
        );
        let cfg = self.path("query.toml");
        std::fs::write(&cfg, text).unwrap_or_else(|e| panic!("write config: {e}"));
        cfg
    }

    /// Every line the file sink wrote, over all workers' part files.
    fn output_lines(&self, workers: usize) -> Vec<String> {
        let out = self.path("out.txt");
        let parts: Vec<PathBuf> = if workers == 1 {
            vec![out]
        } else {
            (0..workers).map(|w| PathBuf::from(format!("{}.{w}", out.display()))).collect()
        };
        let mut lines = Vec::new();
        for p in parts {
            let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            lines.extend(text.lines().map(str::to_string));
        }
        lines
    }
}

/// Runs `spate run CONFIG --quiet` and checks it succeeded.
fn spate_run(cfg: &Path) {
    spate_run_with(cfg, &[]);
}

/// `spate_run` with variables `env` set in the process's environment.
fn spate_run_with(cfg: &Path, env: &[(&str, &str)]) {
    let out = Command::new(env!("CARGO_BIN_EXE_spate"))
        .envs(env.iter().copied())
        .arg("run")
        .arg(cfg)
        .arg("--quiet")
        .output()
        .unwrap_or_else(|e| panic!("cannot run spate: {e}"));
    assert!(
        out.status.success(),
        "spate run failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn parse_u64(s: &str, line: &str) -> u64 {
    s.parse().unwrap_or_else(|e| panic!("bad number {s:?} in line {line:?}: {e}"))
}

/// `keyed-sum` over `records` records and `keys` keys: the generator's
/// record `i` is `(i % keys, i)`, so key `k`'s `j`-th value is `k + j*keys`.
/// With `keys` a multiple of `workers`, each key's records come from one
/// generator instance, in order, so its emitted running sums are exactly
/// the prefix sums of those values.
fn keyed_sum(records: u64, keys: u64, workers: usize) {
    keyed_sum_with(records, keys, workers, &[]);
}

/// `keyed_sum` with variables `env` set for the run.
fn keyed_sum_with(records: u64, keys: u64, workers: usize, env: &[(&str, &str)]) {
    let s = Scratch::new();
    let cfg = s.config(
        &format!("[query]\nname = \"keyed-sum\"\n[query.params]\nrecords = {records}\nkeys = {keys}\n"),
        workers,
    );
    spate_run_with(&cfg, env);
    let lines = s.output_lines(workers);
    assert_eq!(lines.len() as u64, records, "one running sum per record");

    let mut sums: HashMap<u64, Vec<u64>> = HashMap::new();
    for line in &lines {
        let (k, v) = line.split_once(',').unwrap_or_else(|| panic!("not `key,sum`: {line:?}"));
        sums.entry(parse_u64(k, line)).or_default().push(parse_u64(v, line));
    }
    assert_eq!(sums.len() as u64, keys.min(records), "every key appears");
    let ordered = keys.is_multiple_of(workers as u64);
    for (k, got) in sums.iter_mut() {
        assert!(*k < keys, "key {k} out of range");
        // Values of key k: k, k + keys, k + 2*keys, ... below `records`.
        let n = (records - k).div_ceil(keys);
        let mut expected = Vec::with_capacity(n as usize);
        let mut acc = 0u64;
        for j in 0..n {
            acc += k + j * keys;
            expected.push(acc);
        }
        // Closed form of the final sum: n*k + keys*n(n-1)/2.
        assert_eq!(acc, n * k + keys * n * (n - 1) / 2);
        assert_eq!(got.iter().copied().max(), Some(acc), "final sum of key {k}");
        if ordered {
            got.sort_unstable();
            assert_eq!(*got, expected, "running sums of key {k}");
        } else {
            assert_eq!(got.len(), expected.len(), "running sums of key {k}");
        }
    }
}

#[test]
fn keyed_sum_one_worker() {
    let _watchdog = spate::Watchdog::start("keyed_sum_one_worker", std::time::Duration::from_secs(120));
    keyed_sum(200_000, 1000, 1);
}

#[test]
fn keyed_sum_two_workers() {
    let _watchdog = spate::Watchdog::start("keyed_sum_two_workers", std::time::Duration::from_secs(120));
    keyed_sum(200_000, 1000, 2);
}

/// The loops compiled for wider vectors (the bulk key hash, the keyed
/// operator's burst) in their baseline form, on a CPU that has more: the
/// same results (the other forms run in every other test where the CPU has
/// them).
#[test]
fn keyed_sum_in_the_baseline_form() {
    let _watchdog =
        spate::Watchdog::start("keyed_sum_in_the_baseline_form", std::time::Duration::from_secs(120));
    keyed_sum_with(200_000, 1000, 2, &[("SPATE_SIMD", "baseline")]);
}

#[test]
fn keyed_sum_three_workers() {
    let _watchdog = spate::Watchdog::start("keyed_sum_three_workers", std::time::Duration::from_secs(120));
    // Each worker's bursts go to two other workers and itself: the
    // exchange stages every burst by three destinations.
    keyed_sum(90_000, 999, 3);
}

#[test]
fn keyed_sum_two_workers_odd_keys() {
    let _watchdog =
        spate::Watchdog::start("keyed_sum_two_workers_odd_keys", std::time::Duration::from_secs(120));
    // Keys spread over both generator instances: arrival order per key is
    // not fixed, but counts and final sums are.
    keyed_sum(50_001, 999, 2);
}

#[test]
fn wordcount_generated_windows() {
    let _watchdog =
        spate::Watchdog::start("wordcount_generated_windows", std::time::Duration::from_secs(120));
    let (lines, wpl, vocab, seed, window) = (5000u64, 6u32, 200u32, 7u64, 1000u64);
    let s = Scratch::new();
    let cfg = s.config(
        &format!(
            "[query]\nname = \"wordcount\"\n[query.params]\nlines = {lines}\nwords_per_line = {wpl}\n\
             vocabulary = {vocab}\nseed = {seed}\nwindow_lines = {window}\n"
        ),
        2,
    );
    spate_run(&cfg);

    let mut expected: HashMap<(u64, String), u64> = HashMap::new();
    for i in 0..lines {
        let start = i - i % window;
        for w in wordcount_line(seed, i, wpl, vocab).split_whitespace() {
            *expected.entry((start, w.to_string())).or_default() += 1;
        }
    }
    let mut expected: Vec<(u64, String, u64)> = expected.into_iter().map(|((s, w), c)| (s, w, c)).collect();
    expected.sort();
    assert_eq!(expected.iter().map(|e| e.2).sum::<u64>(), lines * u64::from(wpl));

    let mut got: Vec<(u64, String, u64)> = s
        .output_lines(2)
        .iter()
        .map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            assert_eq!(f.len(), 3, "not `start word count`: {l:?}");
            (parse_u64(f[0], l), f[1].to_string(), parse_u64(f[2], l))
        })
        .collect();
    got.sort();
    assert_eq!(got.len(), expected.len(), "one line per (window, word)");
    assert_eq!(got, expected);
}

#[test]
fn wordcount_from_file() {
    let _watchdog = spate::Watchdog::start("wordcount_from_file", std::time::Duration::from_secs(120));
    let s = Scratch::new();
    let input = s.path("input.txt");
    // Irregular spacing, an empty line and a word on several lines.
    let text = "the quick  brown fox\njumps over the lazy dog\n\n  the end\nfox fox\n";
    std::fs::write(&input, text).unwrap_or_else(|e| panic!("write input: {e}"));
    let cfg = s.config(
        &format!("[query]\nname = \"wordcount\"\n[query.params]\nfile = {:?}\n", input.display().to_string()),
        2,
    );
    spate_run(&cfg);

    let mut expected: HashMap<String, u64> = HashMap::new();
    for w in text.split_whitespace() {
        *expected.entry(w.to_string()).or_default() += 1;
    }
    let mut got: HashMap<String, u64> = HashMap::new();
    for l in s.output_lines(2) {
        let (w, c) = l.split_once(' ').unwrap_or_else(|| panic!("not `word count`: {l:?}"));
        assert!(got.insert(w.to_string(), parse_u64(c, &l)).is_none(), "word {w} emitted twice");
    }
    assert_eq!(got, expected);
    assert_eq!(got.get("fox"), Some(&3));
}

#[test]
fn shipped_example_configs_parse() {
    let _watchdog =
        spate::Watchdog::start("shipped_example_configs_parse", std::time::Duration::from_secs(120));
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let p = e.unwrap_or_else(|e| panic!("{e}")).path();
        if p.extension().is_some_and(|x| x == "toml") {
            let cfg = spate::config::Config::load(&p).unwrap_or_else(|e| panic!("{e}"));
            let queries = spate::registry::Registry::builtin();
            assert!(queries.contains(&cfg.query.name));
            queries.build(&cfg.query, &cfg.sink).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            n += 1;
        }
    }
    assert!(n >= 2, "expected the keyed-sum and wordcount examples, found {n}");
}
