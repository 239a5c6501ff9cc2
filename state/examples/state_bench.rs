//! Runs [`spate_state::bench::state_bench`] and prints its JSON report: what
//! `spate bench state --state-mb M --dirty-percent P --json` prints.
//!
//! `STATE_MB=256 DIRTY_PERCENT=1 cargo run -p spate-state --release --example state_bench`
//!
//! Environment: `STATE_MB` (default 256), `DIRTY_PERCENT` (default 1),
//! `RUNS` (default 5), `BINS_LOG2` (default 12), `BACKING` (`file` or
//! `memory`; default the store's), `TMPDIR` (where the store and the backup
//! live).

use spate_state::bench::{state_bench, StateBenchParams};
use spate_state::Backing;

fn env<T: std::str::FromStr>(name: &str, default: T) -> Result<T, Box<dyn std::error::Error>>
where
    T::Err: std::error::Error + 'static,
{
    Ok(std::env::var(name).ok().map(|s| s.parse()).transpose()?.unwrap_or(default))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let params = StateBenchParams {
        state_mb: env("STATE_MB", 256)?,
        dirty_percent: env("DIRTY_PERCENT", 1.0)?,
        runs: env("RUNS", 5)?,
        bins_log2: env("BINS_LOG2", 12)?,
        dir: std::env::temp_dir(),
        backing: match std::env::var("BACKING").ok().as_deref() {
            None | Some("") => Backing::default(),
            Some("file") => Backing::File,
            Some("memory") => Backing::Memory,
            Some(other) => return Err(format!("BACKING={other}: not file or memory").into()),
        },
    };
    println!("{}", state_bench(&params)?.to_json());
    Ok(())
}
