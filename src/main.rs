//! The `wasmlet` command: run, compile and (later) serve WebAssembly
//! functions. The work is done by the `wasmlet-runtime` crate; this binary
//! parses flags (first into raw clap structs, then into validated runtime
//! types, before any work starts) and reports results.

mod cli;

use std::process::ExitCode;

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("WASMLET_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .without_time()
        .with_target(false)
        .init();
    match cli::main() {
        Ok(code) => code,
        Err(e) => {
            // One line, no backtrace: the chain of causes joined by ": ".
            eprintln!("error: {e:#}");
            ExitCode::from(cli::EXIT_HOST_ERROR)
        }
    }
}
