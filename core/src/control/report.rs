//! What nodes report: their counts at the end ([`NodeReport`]), their
//! metrics over time ([`MetricsLine`]) and the job's events ([`Event`]), as
//! JSON lines that `spate cluster` and the benchmarks read back.

/// What one node reported at its end (`spate node --json`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NodeReport {
    /// The node.
    pub node: String,
    /// Records its sources produced.
    pub records_in: u64,
    /// Records its sinks took.
    pub records_out: u64,
    /// Its run time.
    pub seconds: f64,
}

impl NodeReport {
    /// One JSON line.
    pub fn to_json(&self) -> String {
        format!(
            "{{\"node\":\"{}\",\"records_in\":{},\"records_out\":{},\"seconds\":{:.6}}}",
            self.node, self.records_in, self.records_out, self.seconds
        )
    }

    /// Parses [`NodeReport::to_json`]'s output (`None` for other lines).
    pub fn parse(line: &str) -> Option<NodeReport> {
        let body = line.trim().strip_prefix("{\"node\":\"")?.strip_suffix('}')?;
        let (node, rest) = body.split_once('"')?;
        let field = |k: &str| -> Option<&str> {
            let i = rest.find(&format!("\"{k}\":"))? + k.len() + 3;
            rest[i..].split([',', '}']).next()
        };
        Some(NodeReport {
            node: node.to_string(),
            records_in: field("records_in")?.parse().ok()?,
            records_out: field("records_out")?.parse().ok()?,
            seconds: field("seconds")?.parse().ok()?,
        })
    }
}

/// With this environment variable set to a number of milliseconds, a node
/// prints its output rate and latency that often on stdout, as JSON lines
/// (`{"metrics":"<node>","unix_ms":..,"epoch":..,"records_out":..,"p99_us":..}`,
/// `records_out` since the previous line, `p99_us` of the records since
/// then, 0 if none): the latency-over-time view of `spate bench recovery`.
pub const METRICS_ENV: &str = "SPATE_NODE_METRICS_MS";

/// How many times a cluster job rolls every node back after a share
/// failure that no node failure explains, before it fails (see
/// [`crate::control::plan::PlanConfig::restarts`]).
pub const RESTARTS: u32 = 3;

/// One line of a node's metrics over time (see [`METRICS_ENV`]).
#[derive(Debug, Clone, PartialEq)]
pub struct MetricsLine {
    /// The node.
    pub node: String,
    /// When, in ms since the Unix epoch.
    pub unix_ms: u64,
    /// The epoch that ran.
    pub epoch: u64,
    /// Records that reached its sinks since the previous line.
    pub records_out: u64,
    /// p99 latency of those, microseconds.
    pub p99_us: u64,
}

impl MetricsLine {
    /// One JSON line.
    pub fn to_json(&self) -> String {
        format!(
            "{{\"metrics\":\"{}\",\"unix_ms\":{},\"epoch\":{},\"records_out\":{},\"p99_us\":{}}}",
            self.node, self.unix_ms, self.epoch, self.records_out, self.p99_us
        )
    }

    /// Parses [`MetricsLine::to_json`]'s output (`None` for other lines).
    pub fn parse(line: &str) -> Option<MetricsLine> {
        let body = line.trim().strip_prefix("{\"metrics\":\"")?.strip_suffix('}')?;
        let (node, rest) = body.split_once('"')?;
        let field = |k: &str| -> Option<u64> {
            let i = rest.find(&format!("\"{k}\":"))? + k.len() + 3;
            rest[i..].split([',', '}']).next()?.parse().ok()
        };
        Some(MetricsLine {
            node: node.to_string(),
            unix_ms: field("unix_ms")?,
            epoch: field("epoch")?,
            records_out: field("records_out")?,
            p99_us: field("p99_us")?,
        })
    }
}

/// A moment of the job worth reporting (for `bench recovery`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// When, in milliseconds since the Unix epoch.
    pub unix_ms: u64,
    /// What: `failed <node>`, `deployed <epoch>`, `running <epoch>`,
    /// `requested <checkpoint>`, `checkpoint <id>` (complete).
    pub what: String,
}

impl Event {
    /// Parses [`Event::to_json`]'s output (`None` for other lines).
    pub fn parse(line: &str) -> Option<Event> {
        let body = line.trim().strip_prefix("{\"event\":\"")?.strip_suffix('}')?;
        let (what, rest) = body.split_once('"')?;
        let unix_ms = rest.strip_prefix(",\"unix_ms\":")?.parse().ok()?;
        Some(Event { unix_ms, what: what.to_string() })
    }

    /// One JSON line.
    pub fn to_json(&self) -> String {
        format!("{{\"event\":\"{}\",\"unix_ms\":{}}}", self.what, self.unix_ms)
    }
}

/// Milliseconds since the Unix epoch.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_and_metrics_lines_parse_back() {
        let e = Event { unix_ms: 17, what: "failed b".into() };
        let back = Event::parse(&e.to_json()).unwrap_or_else(|| panic!("no event"));
        assert_eq!((back.unix_ms, back.what.as_str()), (17, "failed b"));
        let m = MetricsLine { node: "a".into(), unix_ms: 5, epoch: 1, records_out: 300, p99_us: 2500 };
        assert_eq!(MetricsLine::parse(&m.to_json()), Some(m));
        assert_eq!(Event::parse("{\"node\":\"a\"}"), None);
        assert_eq!(MetricsLine::parse("hello"), None);
    }
}
