//! The `spate` command: Spate's CLI with the built-in queries (see
//! `spate::cli`; a program with queries of its own registers them and
//! calls the same function).

use std::process::ExitCode;

fn main() -> ExitCode {
    spate::cli::main(spate::registry::Registry::builtin())
}
