//! What a query is built from: the `[query]` and `[sink]` sections of a
//! deployment config (see [`crate::config`]), which the query registry
//! ([`crate::queries`]) reads.

use std::path::PathBuf;

use serde::Deserialize;

/// `[query]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuerySection {
    /// The query's name in the registry.
    pub name: String,
    /// The query's parameters (validated by the query).
    #[serde(default)]
    pub params: toml::Table,
}

/// `[sink]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkSection {
    /// What to do with results.
    #[serde(default)]
    pub kind: SinkKind,
    /// Output file for `kind = "file"` (with several workers, worker `w`
    /// writes `path.w`).
    pub path: Option<PathBuf>,
    /// Record end-to-end latency (for the status line and summary).
    #[serde(default = "yes")]
    pub latency: bool,
}

fn yes() -> bool {
    true
}

impl Default for SinkSection {
    fn default() -> Self {
        Self { kind: SinkKind::Count, path: None, latency: true }
    }
}

/// Sink kinds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SinkKind {
    /// Count results (and measure latency).
    #[default]
    Count,
    /// One line per result on stdout.
    Stdout,
    /// One line per result in a file.
    File,
    /// Discard results.
    None,
}
