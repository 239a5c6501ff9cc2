//! A/B comparison of two benchmark commands, run alternately.
//!
//! [`run_alternating`] runs command A and command B alternately (`A, B, A, B, ...`,
//! `runs` times each) so that slow drift of the machine (thermal, other tenants) hits both
//! sides alike, reads `records_per_s` from the JSON object line each run prints on stdout,
//! and reports per-side median/min/max, the median of the per-pair ratios `a_i / b_i`, and
//! the ratio of the medians.
//!
//! The JSON extraction is a small, dependency-free scanner ([`extract_json_number`]) that
//! finds a top-level numeric field of one JSON object line, correctly skipping strings
//! (with escapes) and nested values.

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::process::{Command, Stdio};

/// The field [`run_alternating`] reads from each run's JSON line.
pub const DEFAULT_FIELD: &str = "records_per_s";

/// How many trailing bytes of stderr/stdout an error message keeps.
const TAIL_BYTES: usize = 2_000;

/// An external command to run: program, arguments, extra environment, working directory,
/// and a label used in reports and errors.
#[derive(Clone, Debug, PartialEq)]
pub struct CommandSpec {
    /// Label for reports and errors (defaults to the program followed by its arguments).
    pub label: String,
    /// Program to run (looked up in `PATH` if not a path).
    pub program: String,
    /// Arguments.
    pub args: Vec<String>,
    /// Extra environment variables (added to the inherited environment).
    pub env: Vec<(String, String)>,
    /// Working directory (inherited if `None`).
    pub current_dir: Option<PathBuf>,
    /// Numeric fields each run's JSON line must hold, with their values:
    /// what makes the two sides' runs the same workload.
    pub expect: Vec<(String, f64)>,
}

impl CommandSpec {
    /// A command running `program` with no arguments.
    pub fn new(program: impl Into<String>) -> Self {
        let program = program.into();
        CommandSpec {
            label: program.clone(),
            program,
            args: Vec::new(),
            env: Vec::new(),
            current_dir: None,
            expect: Vec::new(),
        }
    }

    /// `sh -c script`, labelled with the script.
    pub fn shell(script: impl Into<String>) -> Self {
        let script = script.into();
        CommandSpec {
            label: script.clone(),
            program: "sh".to_owned(),
            args: vec!["-c".to_owned(), script],
            env: Vec::new(),
            current_dir: None,
            expect: Vec::new(),
        }
    }

    /// Appends one argument (also to the default label).
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        let arg = arg.into();
        if self.label_is_default() {
            self.label.push(' ');
            self.label.push_str(&arg);
        }
        self.args.push(arg);
        self
    }

    /// Appends arguments (also to the default label).
    pub fn args<I, S>(self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        args.into_iter().fold(self, |spec, a| spec.arg(a))
    }

    /// Adds an environment variable.
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Sets the working directory.
    pub fn current_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.current_dir = Some(dir.into());
        self
    }

    /// Requires every run's JSON line to hold numeric `field` equal to
    /// `value` (else the comparison fails with [`CompareError::Unexpected`]).
    pub fn expect(mut self, field: impl Into<String>, value: f64) -> Self {
        self.expect.push((field.into(), value));
        self
    }

    /// Sets the label.
    pub fn label(mut self, label: impl Into<String>) -> Self {
        self.label = label.into();
        self
    }

    fn label_is_default(&self) -> bool {
        let mut default = self.program.clone();
        for a in &self.args {
            default.push(' ');
            default.push_str(a);
        }
        self.label == default
    }

    fn command(&self) -> Command {
        let mut c = Command::new(&self.program);
        c.args(&self.args);
        for (k, v) in &self.env {
            c.env(k, v);
        }
        if let Some(d) = &self.current_dir {
            c.current_dir(d);
        }
        c.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        c
    }
}

/// Why a comparison failed.
#[derive(Debug)]
pub enum CompareError {
    /// `runs` was 0.
    NoRuns,
    /// The command could not be started.
    Spawn {
        /// The command's label.
        label: String,
        /// The OS error.
        source: io::Error,
    },
    /// The command exited unsuccessfully.
    Failed {
        /// The command's label.
        label: String,
        /// Which run of this side (0-based).
        run: usize,
        /// The exit status, as printed by the OS (`exit status: 3`, `signal: 9`, ...).
        status: String,
        /// The last part of its stderr.
        stderr_tail: String,
    },
    /// The command succeeded but printed no JSON object line on stdout.
    NoJsonLine {
        /// The command's label.
        label: String,
        /// Which run of this side (0-based).
        run: usize,
        /// The last part of its stdout.
        stdout_tail: String,
    },
    /// The JSON line had no top-level numeric field of that name.
    MissingField {
        /// The command's label.
        label: String,
        /// Which run of this side (0-based).
        run: usize,
        /// The field looked for.
        field: String,
        /// The JSON line.
        line: String,
    },
    /// The JSON line's field is not the value the run was expected to
    /// report (see [`CommandSpec::expect`]): the run was another workload.
    Unexpected {
        /// The command's label.
        label: String,
        /// Which run of this side (0-based).
        run: usize,
        /// The field.
        field: String,
        /// The value expected.
        want: f64,
        /// The value reported (`None`: none).
        got: Option<f64>,
        /// The JSON line.
        line: String,
    },
}

impl fmt::Display for CompareError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CompareError::NoRuns => write!(f, "comparison needs at least one run per side"),
            CompareError::Spawn { label, source } => {
                write!(f, "could not start `{label}`: {source}")
            }
            CompareError::Failed { label, run, status, stderr_tail } => {
                write!(f, "`{label}` (run {run}) failed with {status}; stderr tail:\n{stderr_tail}")
            }
            CompareError::NoJsonLine { label, run, stdout_tail } => write!(
                f,
                "`{label}` (run {run}) printed no JSON object line on stdout; stdout tail:\n{stdout_tail}"
            ),
            CompareError::MissingField { label, run, field, line } => {
                write!(f, "`{label}` (run {run}): JSON line has no numeric field \"{field}\": {line}")
            }
            CompareError::Unexpected { label, run, field, want, got: Some(got), line } => {
                write!(f, "`{label}` (run {run}) reports \"{field}\" {got}, not {want}: {line}")
            }
            CompareError::Unexpected { label, run, field, want, got: None, line } => {
                write!(f, "`{label}` (run {run}) does not report \"{field}\" (expected {want}): {line}")
            }
        }
    }
}

impl std::error::Error for CompareError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            CompareError::Spawn { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// Summary of one side's runs.
#[derive(Clone, Debug, PartialEq)]
pub struct SideStats {
    /// The command's label.
    pub label: String,
    /// The value of each run, in run order.
    pub values: Vec<f64>,
    /// Median of `values` (mean of the middle two for an even count).
    pub median: f64,
    /// Smallest value.
    pub min: f64,
    /// Largest value.
    pub max: f64,
}

impl SideStats {
    /// Summarises `values` (which must be non-empty).
    pub fn from_values(label: impl Into<String>, values: Vec<f64>) -> Self {
        SideStats {
            label: label.into(),
            median: median(&values),
            min: values.iter().copied().fold(f64::INFINITY, f64::min),
            max: values.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            values,
        }
    }
}

/// The result of [`run_alternating`].
#[derive(Clone, Debug, PartialEq)]
pub struct CompareReport {
    /// The field compared (e.g. `records_per_s`).
    pub field: String,
    /// Side A.
    pub a: SideStats,
    /// Side B.
    pub b: SideStats,
    /// `a.values[i] / b.values[i]` for each pair of consecutive runs.
    pub pair_ratios: Vec<f64>,
    /// Median of `pair_ratios`: the robust "A is x times B" figure.
    pub median_pair_ratio: f64,
    /// `a.median / b.median`.
    pub ratio_of_medians: f64,
}

impl fmt::Display for CompareReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (name, s) in [("A", &self.a), ("B", &self.b)] {
            writeln!(
                f,
                "{name} {}: {} median {:.4e} (min {:.4e}, max {:.4e}, {} runs)",
                s.label,
                self.field,
                s.median,
                s.min,
                s.max,
                s.values.len()
            )?;
        }
        write!(
            f,
            "A/B: median of pair ratios {:.3}, ratio of medians {:.3}",
            self.median_pair_ratio, self.ratio_of_medians
        )
    }
}

/// Median of `xs` (mean of the middle two for an even count; NaN for an empty slice).
/// NaNs sort last.
pub fn median(xs: &[f64]) -> f64 {
    if xs.is_empty() {
        return f64::NAN;
    }
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Runs `a` and `b` alternately, `runs` times each (`A, B, A, B, ...`), and compares the
/// [`DEFAULT_FIELD`] (`records_per_s`) each prints in a JSON object line on stdout.
pub fn run_alternating(a: &CommandSpec, b: &CommandSpec, runs: usize) -> Result<CompareReport, CompareError> {
    run_alternating_field(a, b, runs, DEFAULT_FIELD)
}

/// [`run_alternating`] comparing an arbitrary top-level numeric `field`.
pub fn run_alternating_field(
    a: &CommandSpec,
    b: &CommandSpec,
    runs: usize,
    field: &str,
) -> Result<CompareReport, CompareError> {
    if runs == 0 {
        return Err(CompareError::NoRuns);
    }
    let mut av = Vec::with_capacity(runs);
    let mut bv = Vec::with_capacity(runs);
    for run in 0..runs {
        av.push(run_once(a, run, field)?);
        bv.push(run_once(b, run, field)?);
    }
    let pair_ratios: Vec<f64> = av.iter().zip(&bv).map(|(x, y)| x / y).collect();
    let a = SideStats::from_values(a.label.clone(), av);
    let b = SideStats::from_values(b.label.clone(), bv);
    Ok(CompareReport {
        field: field.to_owned(),
        median_pair_ratio: median(&pair_ratios),
        ratio_of_medians: a.median / b.median,
        pair_ratios,
        a,
        b,
    })
}

/// Runs `spec` once (as run number `run`, for error messages) and returns the numeric
/// `field` of the JSON object line it printed on stdout.
pub fn run_once(spec: &CommandSpec, run: usize, field: &str) -> Result<f64, CompareError> {
    let out = spec
        .command()
        .output()
        .map_err(|source| CompareError::Spawn { label: spec.label.clone(), source })?;
    if !out.status.success() {
        return Err(CompareError::Failed {
            label: spec.label.clone(),
            run,
            status: out.status.to_string(),
            stderr_tail: tail(&out.stderr),
        });
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = find_json_line(&stdout).ok_or_else(|| CompareError::NoJsonLine {
        label: spec.label.clone(),
        run,
        stdout_tail: tail(&out.stdout),
    })?;
    for (f, want) in &spec.expect {
        let got = extract_json_number(line, f);
        if got != Some(*want) {
            return Err(CompareError::Unexpected {
                label: spec.label.clone(),
                run,
                field: f.clone(),
                want: *want,
                got,
                line: line.to_owned(),
            });
        }
    }
    extract_json_number(line, field).ok_or_else(|| CompareError::MissingField {
        label: spec.label.clone(),
        run,
        field: field.to_owned(),
        line: line.to_owned(),
    })
}

fn tail(bytes: &[u8]) -> String {
    let s = String::from_utf8_lossy(bytes);
    let s = s.trim_end();
    if s.len() <= TAIL_BYTES {
        return s.to_owned();
    }
    let mut start = s.len() - TAIL_BYTES;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    format!("...{}", &s[start..])
}

/// The last line of `stdout` that looks like a JSON object (after trimming whitespace it
/// starts with `{` and ends with `}`).
pub fn find_json_line(stdout: &str) -> Option<&str> {
    stdout.lines().map(str::trim).rev().find(|l| l.len() >= 2 && l.starts_with('{') && l.ends_with('}'))
}

/// The value of the top-level numeric field `field` of the JSON object in `line`, or
/// `None` if `line` is not an object, has no such top-level field, or its value is not a
/// JSON number. String contents (including escapes) and nested objects/arrays are skipped
/// correctly, so `{"x":{"records_per_s":1},"note":"\"records_per_s\":2","records_per_s":3}`
/// gives 3.
pub fn extract_json_number(line: &str, field: &str) -> Option<f64> {
    let b = line.trim().as_bytes();
    let mut i = skip_ws(b, 0);
    if b.get(i) != Some(&b'{') {
        return None;
    }
    i += 1;
    loop {
        i = skip_ws(b, i);
        match b.get(i)? {
            b'}' => return None,
            b',' => {
                i += 1;
                continue;
            }
            b'"' => {}
            _ => return None,
        }
        let (key, after_key) = parse_string(b, i)?;
        i = skip_ws(b, after_key);
        if b.get(i) != Some(&b':') {
            return None;
        }
        i = skip_ws(b, i + 1);
        if key == field {
            return parse_number(b, i);
        }
        i = skip_value(b, i)?;
    }
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && b[i].is_ascii_whitespace() {
        i += 1;
    }
    i
}

/// Parses a JSON string starting at the opening quote `b[i]`; returns the decoded
/// contents (simple escapes decoded, `\uXXXX` decoded for the BMP) and the index just
/// past the closing quote.
fn parse_string(b: &[u8], i: usize) -> Option<(String, usize)> {
    debug_assert_eq!(b.get(i), Some(&b'"'));
    let mut out = Vec::new();
    let mut j = i + 1;
    loop {
        let c = *b.get(j)?;
        match c {
            b'"' => return Some((String::from_utf8(out).ok()?, j + 1)),
            b'\\' => {
                let e = *b.get(j + 1)?;
                j += 2;
                match e {
                    b'"' => out.push(b'"'),
                    b'\\' => out.push(b'\\'),
                    b'/' => out.push(b'/'),
                    b'b' => out.push(8),
                    b'f' => out.push(12),
                    b'n' => out.push(b'\n'),
                    b'r' => out.push(b'\r'),
                    b't' => out.push(b'\t'),
                    b'u' => {
                        let hex = std::str::from_utf8(b.get(j..j + 4)?).ok()?;
                        let cp = u32::from_str_radix(hex, 16).ok()?;
                        let ch = char::from_u32(cp).unwrap_or('\u{FFFD}');
                        let mut buf = [0u8; 4];
                        out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
                        j += 4;
                    }
                    _ => return None,
                }
            }
            _ => {
                out.push(c);
                j += 1;
            }
        }
    }
}

/// Parses a JSON number at `b[i]` (must be followed by `,`, `}`, or whitespace).
fn parse_number(b: &[u8], i: usize) -> Option<f64> {
    let mut j = i;
    while j < b.len() && matches!(b[j], b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9') {
        j += 1;
    }
    if j == i {
        return None;
    }
    let end = skip_ws(b, j);
    if !matches!(b.get(end), Some(b',') | Some(b'}')) {
        return None;
    }
    let s = std::str::from_utf8(&b[i..j]).ok()?;
    // Rust's float parser accepts a few non-JSON spellings ("inf", "+1"); the character
    // filter above already excludes letters other than e/E.
    s.parse::<f64>().ok().filter(|x| x.is_finite())
}

/// Skips one JSON value starting at `b[i]`; returns the index just past it.
fn skip_value(b: &[u8], i: usize) -> Option<usize> {
    match *b.get(i)? {
        b'"' => parse_string(b, i).map(|(_, j)| j),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut j = i;
            while j < b.len() {
                match b[j] {
                    b'"' => {
                        j = parse_string(b, j)?.1;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(j + 1);
                        }
                    }
                    _ => {}
                }
                j += 1;
            }
            None
        }
        _ => {
            // number, true, false, null
            let mut j = i;
            while j < b.len() && !matches!(b[j], b',' | b'}' | b']') && !b[j].is_ascii_whitespace() {
                j += 1;
            }
            (j > i).then_some(j)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extractor_finds_top_level_numbers() {
        let l = r#"{"system":"timely","records":50000000,"workers":2,"seconds":0.5,"records_per_s":1.0e8}"#;
        assert_eq!(extract_json_number(l, "records_per_s"), Some(1e8));
        assert_eq!(extract_json_number(l, "records"), Some(5e7));
        assert_eq!(extract_json_number(l, "seconds"), Some(0.5));
        assert_eq!(extract_json_number(l, "system"), None, "string value is not a number");
        assert_eq!(extract_json_number(l, "nope"), None);
        assert_eq!(extract_json_number(" { \"x\" : -12.5 } ", "x"), Some(-12.5));
        assert_eq!(extract_json_number("{\"x\":1}", "x"), Some(1.0));
    }

    #[test]
    fn extractor_skips_strings_and_nested_values() {
        let l = r#"{"x":{"records_per_s":1,"y":[1,{"records_per_s":5}]},"note":"\"records_per_s\":2, }","records_per_s":3}"#;
        assert_eq!(extract_json_number(l, "records_per_s"), Some(3.0));
        let l = r#"{"a\"b":1,"flag":true,"n":null,"arr":[],"records_per_s":  7 }"#;
        assert_eq!(extract_json_number(l, "records_per_s"), Some(7.0));
        assert_eq!(extract_json_number(l, "a\"b"), Some(1.0));
        assert_eq!(extract_json_number(r#"{"\u0078":4}"#, "x"), Some(4.0));
    }

    #[test]
    fn extractor_rejects_malformed() {
        assert_eq!(extract_json_number("", "x"), None);
        assert_eq!(extract_json_number("x=1", "x"), None);
        assert_eq!(extract_json_number("{\"x\":}", "x"), None);
        assert_eq!(extract_json_number("{\"x\":1", "x"), None);
        assert_eq!(extract_json_number("{\"x\":\"1\"}", "x"), None);
        assert_eq!(extract_json_number("{\"x\":1abc}", "x"), None);
        assert_eq!(extract_json_number("{\"x\":NaN}", "x"), None);
        assert_eq!(extract_json_number("{\"y\":\"unterminated", "x"), None);
    }

    #[test]
    fn finds_last_json_line() {
        let out = "warming up\n{\"records_per_s\": 1}\nnoise\n  {\"records_per_s\": 2}  \ndone\n";
        assert_eq!(find_json_line(out), Some("{\"records_per_s\": 2}"));
        assert_eq!(find_json_line("no json here\n"), None);
    }

    #[test]
    fn median_math() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(&[5.0]), 5.0);
        assert!(median(&[]).is_nan());
    }

    #[test]
    fn alternates_and_reports() {
        let dir = std::env::temp_dir().join(format!("spate-bench-compare-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("order.log");
        let _ = std::fs::remove_file(&log);
        // A prints 10, 20, 30 on successive runs; B always 10. Both log their turn.
        let counter = dir.join("a.count");
        let _ = std::fs::remove_file(&counter);
        let a = CommandSpec::shell(format!(
            "echo A >> '{log}'; n=$(cat '{c}' 2>/dev/null || echo 0); n=$((n+1)); echo $n > '{c}'; \
             echo starting; echo \"{{\\\"system\\\":\\\"a\\\",\\\"records_per_s\\\": $((n*10))}}\"",
            log = log.display(),
            c = counter.display()
        ))
        .label("A");
        let b = CommandSpec::shell(format!(
            "echo B >> '{log}'; echo '{{\"records_per_s\": 10}}'",
            log = log.display()
        ))
        .label("B");
        let r = run_alternating(&a, &b, 3).unwrap();
        assert_eq!(std::fs::read_to_string(&log).unwrap(), "A\nB\nA\nB\nA\nB\n");
        assert_eq!(r.a.values, vec![10.0, 20.0, 30.0]);
        assert_eq!(r.b.values, vec![10.0, 10.0, 10.0]);
        assert_eq!((r.a.median, r.a.min, r.a.max), (20.0, 10.0, 30.0));
        assert_eq!((r.b.median, r.b.min, r.b.max), (10.0, 10.0, 10.0));
        assert_eq!(r.pair_ratios, vec![1.0, 2.0, 3.0]);
        assert_eq!(r.median_pair_ratio, 2.0);
        assert_eq!(r.ratio_of_medians, 2.0);
        assert_eq!(r.field, "records_per_s");
        let text = r.to_string();
        assert!(text.contains("median of pair ratios 2.000"), "{text}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn simple_echo_command() {
        let s = CommandSpec::new("sh").arg("-c").arg("echo {\\\"records_per_s\\\": 10}");
        assert_eq!(run_once(&s, 0, "records_per_s").unwrap(), 10.0);
        let r = run_alternating(&s, &s, 2).unwrap();
        assert_eq!(r.median_pair_ratio, 1.0);
    }

    #[test]
    fn env_and_dir_are_applied() {
        let s = CommandSpec::shell("echo \"{\\\"records_per_s\\\": $RATE}\"; pwd >&2")
            .env("RATE", "42.5")
            .current_dir(std::env::temp_dir());
        assert_eq!(run_once(&s, 0, "records_per_s").unwrap(), 42.5);
    }

    #[test]
    fn errors_are_clear() {
        let ok = CommandSpec::shell("echo '{\"records_per_s\": 1}'");

        let failing = CommandSpec::shell("echo oops >&2; exit 3").label("bad");
        let e = run_alternating(&ok, &failing, 2).unwrap_err();
        match &e {
            CompareError::Failed { label, run, status, stderr_tail } => {
                assert_eq!(label, "bad");
                assert_eq!(*run, 0);
                assert!(status.contains('3'), "{status}");
                assert_eq!(stderr_tail, "oops");
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(e.to_string().contains("failed with"), "{e}");

        let silent = CommandSpec::shell("echo just text");
        match run_alternating(&silent, &ok, 1).unwrap_err() {
            CompareError::NoJsonLine { stdout_tail, .. } => assert_eq!(stdout_tail, "just text"),
            other => panic!("unexpected {other:?}"),
        }

        let wrong = CommandSpec::shell("echo '{\"throughput\": 1}'");
        match run_alternating(&ok, &wrong, 1).unwrap_err() {
            CompareError::MissingField { field, line, .. } => {
                assert_eq!(field, "records_per_s");
                assert_eq!(line, "{\"throughput\": 1}");
            }
            other => panic!("unexpected {other:?}"),
        }

        let keys = CommandSpec::shell("echo '{\"records_per_s\": 1, \"keys\": 1000}'");
        assert_eq!(run_once(&keys.clone().expect("keys", 1000.0), 0, "records_per_s").unwrap(), 1.0);
        let e = run_alternating(&ok, &keys.clone().expect("keys", 500.0), 1).unwrap_err();
        match &e {
            CompareError::Unexpected { field, want, got, .. } => {
                assert_eq!((field.as_str(), *want, *got), ("keys", 500.0, Some(1000.0)));
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(e.to_string().contains("\"keys\" 1000, not 500"), "{e}");
        let e = run_alternating(&keys.expect("workers", 2.0), &ok, 1).unwrap_err();
        assert!(matches!(&e, CompareError::Unexpected { got: None, .. }), "{e:?}");
        assert!(e.to_string().contains("does not report \"workers\""), "{e}");

        let missing = CommandSpec::new("/nonexistent/spate-bench-no-such-program");
        assert!(matches!(run_alternating(&missing, &ok, 1).unwrap_err(), CompareError::Spawn { .. }));
        assert!(matches!(run_alternating(&ok, &ok, 0).unwrap_err(), CompareError::NoRuns));
    }

    #[test]
    fn long_stderr_is_tailed() {
        let s =
            CommandSpec::shell("i=0; while [ $i -lt 1000 ]; do echo line$i >&2; i=$((i+1)); done; exit 1");
        match run_once(&s, 0, "x").unwrap_err() {
            CompareError::Failed { stderr_tail, .. } => {
                assert!(stderr_tail.len() <= TAIL_BYTES + 3);
                assert!(stderr_tail.starts_with("..."));
                assert!(stderr_tail.ends_with("line999"));
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn default_label_tracks_args() {
        let s = CommandSpec::new("prog").arg("--x").args(["1", "2"]);
        assert_eq!(s.label, "prog --x 1 2");
        let s = s.label("custom").arg("3");
        assert_eq!(s.label, "custom");
    }
}
