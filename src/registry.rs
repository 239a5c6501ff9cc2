//! The registry of named queries: what `spate run`, `spate node`, `spate
//! cluster` and `spate bench` build by name from a config's `[query]`.
//!
//! A query is a name, a parameter type and a build function. The built-in
//! queries ([`crate::queries`]) are registered the same way as a user's
//! ([`Registry::builtin`]); a program that registers its own hands the
//! registry to [`crate::cli::main`] and is then the `spate` command for
//! them, with everything a built-in gets: its `[query.params]` validated
//! with errors that name the field, checkpoints, backup nodes, live
//! recovery and the `[sink]` of the config.
//!
//! ```no_run
//! use std::fmt::Write as _;
//! use std::process::ExitCode;
//!
//! use spate::prelude::*;
//! use spate::registry::{Params, Registry, ResultSink};
//!
//! /// `[query.params]` of `squares`.
//! #[derive(Clone, Default, serde::Deserialize, serde::Serialize)]
//! #[serde(deny_unknown_fields, default)]
//! struct SquaresParams {
//!     /// Numbers in all.
//!     numbers: u64,
//! }
//!
//! impl Params for SquaresParams {
//!     const ABOUT: &'static str = "the squares of 0..numbers";
//!     const DOCS: &'static [(&'static str, &'static str)] = &[("numbers", "numbers in all")];
//! }
//!
//! fn squares(df: &Dataflow, p: &SquaresParams, sink: &ResultSink) {
//!     let spec = GeneratorSpec { records: Some(p.numbers), rate_per_s: None, offset: 0, burst: 0 };
//!     let squares = df.generate("numbers", spec, |i| i * i, |i| i);
//!     sink.attach(&squares, |n, line| {
//!         let _ = write!(line, "{n}");
//!     });
//! }
//!
//! fn main() -> ExitCode {
//!     spate::cli::main(Registry::builtin().add("squares", squares))
//! }
//! ```
//!
//! Reading a query's parameters costs nothing at run time: they are read
//! and checked once, before the job starts, and each worker's build gets
//! them typed.

use std::cell::Cell;
use std::path::PathBuf;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;
use spate_core::{Data, Dataflow, Stream};
use spate_ops::prelude::SinkExt;

use crate::job_spec::{QuerySection, SinkKind, SinkSection};

/// A query's parameters: its `[query.params]`, read with serde.
///
/// Derive `Deserialize` with `#[serde(deny_unknown_fields, default)]`
/// (a misspelt field is then an error naming it, and every field may be
/// left out), `Serialize` (`spate queries` prints the defaults, and `spate
/// bench` writes the parameters it sets into the nodes' config) and
/// `Default`. The associated items are all optional.
pub trait Params: DeserializeOwned + Serialize + Default + Clone + Send + Sync + 'static {
    /// What the query does, in a line, for `spate queries`.
    const ABOUT: &'static str = "";
    /// One line about each field, in the order `spate queries` lists them:
    /// (field, what it is).
    const DOCS: &'static [(&'static str, &'static str)] = &[];
    /// Whole-number fields whose allowed range is narrower than their
    /// type's: (field, least, most). A value outside is refused before the
    /// job starts, as `query.params.<field>: expected a whole number from
    /// <least> to <most>, got <value>`.
    const RANGES: &'static [(&'static str, u64, u64)] = &[];

    /// Checks beyond the types and [`Params::RANGES`]; an error should
    /// start with the field (`query.params.<field>: ...`).
    fn check(&self) -> Result<(), String> {
        Ok(())
    }

    /// How `spate bench throughput` and `spate bench latency` size the
    /// query's input: `records` in all, at `rate_per_s` records a second
    /// (`None`: as fast as it goes). A query that cannot be driven so
    /// keeps the default, which refuses.
    fn set_load(&mut self, records: u64, rate_per_s: Option<u64>) -> Result<(), String> {
        let _ = (records, rate_per_s);
        Err("its parameters have no input size to set (Params::set_load)".into())
    }
}

/// Where a query's results go: the config's `[sink]`. A build function
/// attaches its result stream to it once, with how a result is written as
/// a line (for the `stdout` and `file` sinks; the `count` and `none` sinks
/// do not call it).
pub struct ResultSink {
    section: SinkSection,
    attached: Cell<bool>,
}

impl ResultSink {
    /// Sends `results` to the config's sink; `line` writes one result (no
    /// newline) into the string it is given.
    ///
    /// # Panics
    ///
    /// On a second call in one build: a query has one result stream (a
    /// programmer error, which fails the job naming the worker).
    pub fn attach<T: Data>(&self, results: &Stream<T>, line: impl Fn(&T, &mut String) + 'static) {
        assert!(!self.attached.replace(true), "a query attaches one result stream to its sink");
        let sink = &self.section;
        match sink.kind {
            SinkKind::Count => results.sink_count("sink", sink.latency, None),
            SinkKind::None => results.sink_count("sink", false, None),
            SinkKind::Stdout => results.sink_stdout("sink", line),
            SinkKind::File => {
                let path = sink.path.clone().unwrap_or_else(|| PathBuf::from("spate-output.txt"));
                results.sink_file("sink", path, line)
            }
        }
    }
}

/// A build function for the runtime: the whole dataflow, its sink
/// attached.
pub type BuildFn = Arc<dyn Fn(&Dataflow) + Send + Sync>;

/// A parameter as `spate queries` lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamInfo {
    /// The field of `[query.params]`.
    pub name: String,
    /// Its default, as TOML (`None`: unset by default).
    pub default: Option<String>,
    /// What it is ([`Params::DOCS`]; empty if not given).
    pub doc: String,
}

/// What a registered query is, type-erased: its parameters are read in
/// these functions, each instantiated for the query's [`Params`] type.
struct Entry {
    name: String,
    about: &'static str,
    params: fn() -> Vec<ParamInfo>,
    validate: fn(&QuerySection) -> Result<(), String>,
    with_load: fn(&QuerySection, u64, Option<u64>) -> Result<toml::Table, String>,
    build: Box<dyn Fn(&QuerySection, &SinkSection) -> Result<BuildFn, String> + Send + Sync>,
}

/// Named queries, in the order they were added.
#[derive(Default)]
pub struct Registry {
    entries: Vec<Entry>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.names()).finish()
    }
}

impl Registry {
    /// A registry with no query.
    pub fn new() -> Self {
        Self::default()
    }

    /// The built-in queries, `keyed-sum` and `wordcount` (see
    /// [`crate::queries`]), and NEXMark's `nexmark-q0` ... (see
    /// [`crate::nexmark`]).
    pub fn builtin() -> Self {
        crate::nexmark::register(crate::queries::register(Self::new()))
    }

    /// Adds query `name`: `build` makes its dataflow on each worker from
    /// its typed parameters and attaches the results to the sink.
    ///
    /// # Panics
    ///
    /// If `name` is already registered, or is empty or has whitespace (a
    /// programmer error: a config could not name it, or would name two).
    pub fn add<P, F>(mut self, name: &str, build: F) -> Self
    where
        P: Params,
        F: Fn(&Dataflow, &P, &ResultSink) + Send + Sync + 'static,
    {
        assert!(
            !name.is_empty() && !name.contains(char::is_whitespace),
            "query name {name:?} is empty or has whitespace"
        );
        assert!(self.get(name).is_none(), "query `{name}` is registered twice");
        let build = Arc::new(build);
        self.entries.push(Entry {
            name: name.to_string(),
            about: P::ABOUT,
            params: param_info::<P>,
            validate: |q| read::<P>(q).map(drop),
            with_load: with_load::<P>,
            build: Box::new(move |q, sink| {
                let p: P = read(q)?;
                let (build, sink) = (build.clone(), sink.clone());
                Ok(Arc::new(move |df: &Dataflow| {
                    let results = ResultSink { section: sink.clone(), attached: Cell::new(false) };
                    build(df, &p, &results);
                }))
            }),
        });
        self
    }

    /// The registered names, in order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|e| e.name.as_str())
    }

    /// Whether query `name` is registered.
    pub fn contains(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// Query `name`'s line for `spate queries` ([`Params::ABOUT`]).
    pub fn about(&self, name: &str) -> Result<&'static str, String> {
        Ok(self.entry(name)?.about)
    }

    /// Query `name`'s parameters with their defaults.
    pub fn params(&self, name: &str) -> Result<Vec<ParamInfo>, String> {
        Ok((self.entry(name)?.params)())
    }

    /// Checks the query's name and its parameters (types, ranges,
    /// [`Params::check`]); errors name the field.
    pub fn validate(&self, q: &QuerySection) -> Result<(), String> {
        (self.entry(&q.name)?.validate)(q)
    }

    /// `q`'s parameters with the input size `spate bench` sets
    /// ([`Params::set_load`]), as a complete `[query.params]` table.
    pub fn with_load(
        &self,
        q: &QuerySection,
        records: u64,
        rate_per_s: Option<u64>,
    ) -> Result<toml::Table, String> {
        (self.entry(&q.name)?.with_load)(q, records, rate_per_s)
            .map_err(|e| format!("query `{}`: {e}", q.name))
    }

    /// The build function of query `q` writing to `sink`, its parameters
    /// validated.
    pub fn build(&self, q: &QuerySection, sink: &SinkSection) -> Result<BuildFn, String> {
        (self.entry(&q.name)?.build)(q, sink)
    }

    fn get(&self, name: &str) -> Option<&Entry> {
        self.entries.iter().find(|e| e.name == name)
    }

    fn entry(&self, name: &str) -> Result<&Entry, String> {
        self.get(name).ok_or_else(|| {
            let known: Vec<&str> = self.names().collect();
            format!("unknown query `{name}`; known queries: {}", known.join(", "))
        })
    }
}

/// `q`'s parameters as `P`, checked.
fn read<P: Params>(q: &QuerySection) -> Result<P, String> {
    let p: P = serde_path_to_error::deserialize(toml::Value::Table(q.params.clone()))
        .map_err(|e| param_error(q, P::RANGES, &e))?;
    check_ranges(&q.params, P::RANGES)?;
    p.check()?;
    Ok(p)
}

fn with_load<P: Params>(
    q: &QuerySection,
    records: u64,
    rate_per_s: Option<u64>,
) -> Result<toml::Table, String> {
    let mut p: P = read(q)?;
    p.set_load(records, rate_per_s)?;
    p.check()?;
    toml::Table::try_from(&p).map_err(|e| format!("its parameters do not write as TOML: {e}"))
}

fn param_info<P: Params>() -> Vec<ParamInfo> {
    let defaults = toml::Table::try_from(P::default()).unwrap_or_default();
    let doc = |name: &str| P::DOCS.iter().find(|(f, _)| *f == name).map_or("", |(_, d)| *d).to_string();
    let mut out: Vec<ParamInfo> = P::DOCS
        .iter()
        .map(|(name, d)| ParamInfo {
            name: name.to_string(),
            default: defaults.get(*name).map(toml::Value::to_string),
            doc: d.to_string(),
        })
        .collect();
    for (name, v) in &defaults {
        if !out.iter().any(|p| &p.name == name) {
            out.push(ParamInfo { name: name.clone(), default: Some(v.to_string()), doc: doc(name) });
        }
    }
    out
}

/// Why `q`'s parameters do not read: `query.params.<field>: expected
/// <what is allowed>, got <value>` for a value of the wrong type or out of
/// its type's range; serde's message, with the query's name, for anything
/// else (an unknown field, with the known ones).
fn param_error(
    q: &QuerySection,
    ranges: &[(&str, u64, u64)],
    e: &serde_path_to_error::Error<toml::de::Error>,
) -> String {
    let message = e.inner().message();
    // serde's `invalid type: <unexpected>, expected <type>` and
    // `invalid value: ...`.
    let expected = message
        .strip_prefix("invalid type: ")
        .or_else(|| message.strip_prefix("invalid value: "))
        .and_then(|m| m.rsplit_once(", expected "))
        .map(|(_, exp)| exp);
    let field = e.path().to_string();
    let allowed = match ranges.iter().find(|(f, _, _)| *f == field) {
        Some(&(_, min, max)) => Some(whole_number(min, max)),
        None => expected.map(type_allows),
    };
    match (allowed, param_at(&q.params, e.path())) {
        (Some(allowed), Some(value)) => format!("query.params.{field}: expected {allowed}, got {value}"),
        _ => format!("query.params of `{}`: {message}", q.name),
    }
}

/// Checks `ranges` on parameters that read as their types.
fn check_ranges(params: &toml::Table, ranges: &[(&str, u64, u64)]) -> Result<(), String> {
    for &(field, min, max) in ranges {
        // Read as its (unsigned) type just before: never negative.
        let Some(Ok(value)) = params.get(field).and_then(toml::Value::as_integer).map(u64::try_from) else {
            continue;
        };
        if !(min..=max).contains(&value) {
            return Err(format!("query.params.{field}: expected {}, got {value}", whole_number(min, max)));
        }
    }
    Ok(())
}

/// "a whole number ≥ min" or "a whole number from min to max".
fn whole_number(min: u64, max: u64) -> String {
    if max == u64::MAX {
        format!("a whole number ≥ {min}")
    } else {
        format!("a whole number from {min} to {max}")
    }
}

/// The value at `path` in `params`, if the path leads to one.
fn param_at<'a>(params: &'a toml::Table, path: &serde_path_to_error::Path) -> Option<&'a toml::Value> {
    use serde_path_to_error::Segment;
    let mut segments = path.iter();
    let Some(Segment::Map { key }) = segments.next() else { return None };
    let mut at = params.get(key)?;
    for s in segments {
        at = match s {
            Segment::Map { key } => at.as_table()?.get(key)?,
            Segment::Seq { index } => at.as_array()?.get(*index)?,
            _ => return None,
        };
    }
    Some(at)
}

/// What a parameter of the type serde names allows, in words.
fn type_allows(serde_expected: &str) -> String {
    match serde_expected {
        "u64" => whole_number(0, u64::MAX),
        "u32" => whole_number(0, u32::MAX.into()),
        "a boolean" => "true or false".into(),
        "path string" => "a file path (a string)".into(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queries::KeyedSumParams;

    fn query(name: &str, params: &str) -> QuerySection {
        let params = toml::from_str(params).unwrap_or_else(|e| panic!("{e}"));
        QuerySection { name: name.to_string(), params }
    }

    fn nothing(_: &Dataflow, _: &KeyedSumParams, _: &ResultSink) {}

    #[test]
    fn an_unknown_query_is_named_with_the_known_ones() {
        let r = Registry::builtin().add("mine", nothing);
        let e = r.validate(&query("nope", "")).err().unwrap_or_default();
        assert!(
            e.starts_with(
                "unknown query `nope`; known queries: keyed-sum, wordcount, nexmark-events, nexmark-q0, "
            ),
            "{e}"
        );
        assert!(e.ends_with(", nexmark-q22, mine"), "{e}");
        assert!(r.validate(&query("mine", "keys = 3")).is_ok());
    }

    #[test]
    #[should_panic(expected = "query `keyed-sum` is registered twice")]
    fn a_name_is_registered_once() {
        let _ = Registry::builtin().add("keyed-sum", nothing);
    }

    #[test]
    fn a_query_of_ones_own_is_checked_as_the_builtins_are() {
        let r = Registry::new().add("mine", nothing);
        let e = r.validate(&query("mine", "keys = 0")).err().unwrap_or_default();
        assert_eq!(e, "query.params.keys: expected a whole number ≥ 1, got 0");
        let e = r.validate(&query("mine", "records = -5")).err().unwrap_or_default();
        assert_eq!(e, "query.params.records: expected a whole number ≥ 0, got -5");
        let e = r.validate(&query("mine", "recrods = 5")).err().unwrap_or_default();
        assert!(e.starts_with("query.params of `mine`: unknown field `recrods`"), "{e}");
    }

    #[test]
    fn a_bench_load_is_set_by_the_query() {
        let r = Registry::builtin();
        let t =
            r.with_load(&query("keyed-sum", "keys = 7"), 1000, Some(50)).unwrap_or_else(|e| panic!("{e}"));
        let get = |f: &str| t.get(f).and_then(toml::Value::as_integer);
        assert_eq!((get("records"), get("rate"), get("keys")), (Some(1000), Some(50), Some(7)));
        let e = r.with_load(&query("wordcount", "file = \"x.txt\""), 10, None).err().unwrap_or_default();
        assert!(e.contains("query.params.file"), "{e}");
    }
}
