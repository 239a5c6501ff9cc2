//! `own-query`: the `spate` command with one more query, `vwap`
//! (see `lib.rs`). `own-query run vwap.toml`, `own-query cluster --config
//! cluster.toml`, `own-query queries`, `own-query bench latency --query
//! vwap --rate 100000 --seconds 5`.

use std::process::ExitCode;

fn main() -> ExitCode {
    // `Registry::builtin().add("vwap", own_query::build)`.
    spate::cli::main(own_query::registry())
}
