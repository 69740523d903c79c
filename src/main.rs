//! The `wasmlet` command: run, compile and (later) serve WebAssembly
//! functions. The work is done by the `wasmlet-runtime` crate; this binary
//! parses flags (first into raw clap structs, then into validated runtime
//! types, before any work starts) and reports results.

mod alloc;
mod cli;

/// See `alloc`: glibc's malloc, mimalloc once `serve` switches to it.
#[global_allocator]
static GLOBAL: alloc::Switching = alloc::Switching;

use std::io::IsTerminal;
use std::process::ExitCode;

fn main() -> ExitCode {
    // A guest writing past the file-size limit (`ulimit -f`) gets EFBIG
    // from its write, as a guest whose pipe reader left gets EPIPE (Rust
    // ignores SIGPIPE): the signal's default would kill wasmlet, and with
    // it the invocation's outcome and usage record.
    // SAFETY: setting a signal's disposition to "ignore" installs no
    // handler; nothing else in this process sets SIGXFSZ.
    unsafe { libc::signal(libc::SIGXFSZ, libc::SIG_IGN) };
    // A server logs what it does (start-up, reloads, guest stderr) with
    // timestamps; one-shot commands only warn.
    let serving = std::env::args_os().nth(1).is_some_and(|a| a == "serve");
    if serving {
        alloc::use_mimalloc();
    }
    let filter = tracing_subscriber::EnvFilter::try_from_env("WASMLET_LOG")
        .unwrap_or_else(|_| if serving { "info" } else { "warn" }.into());
    let log = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| cli::LogWriter)
        // Colours only for a person at a terminal, never into files or pipes.
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false);
    if serving {
        log.init();
    } else {
        log.without_time().init();
    }
    match cli::main() {
        Ok(code) => code,
        Err(e) => {
            // One line, no backtrace: the chain of causes joined by ": ".
            cli::eprintln(&format!("error: {e:#}"));
            // A limit the command itself exceeded (the compile budget, a
            // snapshot's init limits, also from a worker) is reported like
            // a guest's.
            let limit = e.downcast_ref::<wasmlet_runtime::LimitExceeded>().is_some()
                || e.downcast_ref::<cli::ChildLimit>().is_some()
                || matches!(
                    e.downcast_ref::<wasmlet_runtime::SnapshotError>(),
                    Some(wasmlet_runtime::SnapshotError::LimitExceeded(_))
                );
            if limit {
                ExitCode::from(cli::EXIT_LIMIT)
            } else {
                ExitCode::from(cli::EXIT_HOST_ERROR)
            }
        }
    }
}
