//! Command-line interface: flag definitions and dispatch.

mod cache;
mod compile;
mod parse;
mod progress;
mod run;
mod signals;
mod snapshot;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use wasmlet_runtime::RuntimeConfig;

/// Exit code when wasmlet itself fails (bad flags, unreadable or invalid module).
pub const EXIT_HOST_ERROR: u8 = 1;
/// Exit code when the guest traps (128 + SIGABRT, as wasmtime does).
pub const EXIT_TRAP: u8 = 134;
/// Exit code when the guest is stopped for exceeding a limit (128 + SIGKILL).
pub const EXIT_LIMIT: u8 = 137;

#[derive(Parser)]
#[command(
    name = "wasmlet",
    version,
    about = "A WebAssembly-native serverless runtime"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a WebAssembly module once (.wasm, .wat, or .cwasm from `wasmlet compile`).
    Run(run::RunArgs),
    /// Compile a module ahead of time into a .cwasm for this machine.
    Compile(compile::CompileArgs),
    /// Pre-initialize a module: run its init once and snapshot the result.
    Snapshot(snapshot::SnapshotArgs),
    /// Look after the compilation cache: list, verify, clean, prune.
    #[command(subcommand)]
    Cache(cache::CacheCommand),
    /// (internal) Serve a sandbox's supervisor on fd 3.
    #[command(hide = true)]
    SandboxWorker,
}

/// Flags every command that compiles shares.
#[derive(Args, Debug, Clone)]
pub struct CacheArgs {
    /// Directory of the compilation cache [default: $XDG_CACHE_HOME/wasmlet or ~/.cache/wasmlet]
    #[arg(long, value_name = "DIR", env = "WASMLET_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Do not read or write the compilation cache.
    #[arg(long)]
    pub no_cache: bool,
}

impl CacheArgs {
    /// The runtime configuration these flags describe.
    pub fn runtime_config(&self, fuel_metering: bool) -> RuntimeConfig {
        let mut config = RuntimeConfig {
            fuel_metering,
            ..RuntimeConfig::default()
        };
        config.cache.enabled = !self.no_cache;
        config.cache.dir = self.cache_dir.clone();
        config
    }
}

pub fn main() -> anyhow::Result<ExitCode> {
    match Cli::parse().command {
        Command::Run(args) => run::run(args),
        Command::Compile(args) => compile::compile(args).map(|()| ExitCode::SUCCESS),
        Command::Snapshot(args) => snapshot::snapshot(args).map(|()| ExitCode::SUCCESS),
        Command::Cache(cmd) => cache::cache(cmd),
        Command::SandboxWorker => {
            wasmlet_sandbox::worker_main().map_err(anyhow::Error::msg)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Reads a module file the way the runtime does: a regular file (no FIFO,
/// device or directory, which could block or never end) of at most `max`
/// bytes.
pub fn read_module(path: &std::path::Path, max: u64) -> anyhow::Result<Vec<u8>> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let meta = file
        .metadata()
        .with_context(|| format!("cannot read {}", path.display()))?;
    if !meta.is_file() {
        anyhow::bail!("cannot read {}: not a regular file", path.display());
    }
    if meta.len() > max {
        anyhow::bail!(
            "cannot read {}: {} bytes is more than the largest module accepted ({max} bytes)",
            path.display(),
            meta.len()
        );
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(meta.len())
        .read_to_end(&mut bytes)
        .with_context(|| format!("cannot read {}", path.display()))?;
    Ok(bytes)
}

/// A load error as one line: errors that already name the file stand
/// alone, others get "cannot load FILE: " in front.
pub fn load_error(e: wasmlet_runtime::Error, path: &std::path::Path) -> anyhow::Error {
    match e {
        e @ (wasmlet_runtime::Error::Input(_) | wasmlet_runtime::Error::Io { .. }) => e.into(),
        e => anyhow::Error::from(e).context(format!("cannot load {}", path.display())),
    }
}
