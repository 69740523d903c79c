//! Command-line interface: flag definitions and dispatch.

mod bounded;
mod cache;
mod compile;
mod oci;
mod output;
mod parse;
mod progress;
mod run;
mod serve;
mod signals;
mod snapshot;
mod usage;

use anyhow::Context;
use clap::builder::TypedValueParser as _;
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use wasmlet_runtime::{CompileLimits, RuntimeConfig};

pub use bounded::ChildLimit;
pub use output::{LogWriter, eprintln};

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
    /// Serve the functions of a manifest (wasmlet.toml) over HTTP, a fresh instance per request.
    Serve(serve::ServeArgs),
    /// The bill: per-function invocations, errors, GB-seconds, CPU seconds and cost, from
    /// `wasmlet serve`'s usage log (default prices: AWS Lambda x86 list prices,
    /// $0.0000166667 per GB-second and $0.20 per million requests).
    Usage(usage::UsageArgs),
    /// Look after the compilation cache: list, verify, clean, prune.
    #[command(subcommand)]
    Cache(cache::CacheCommand),
    /// OCI images for containerd and Kubernetes.
    #[command(subcommand)]
    Oci(oci::OciCommand),
    /// (internal) Serve a sandbox's supervisor on fd 3.
    #[command(hide = true)]
    SandboxWorker,
    /// (internal) Compile a module under a budget (see `bounded`).
    #[command(hide = true, name = bounded::WORKER_SUBCOMMAND)]
    CompileWorker {
        /// The runtime configuration, as JSON.
        config: String,
        /// The module.
        module: PathBuf,
        /// Where to write the artifact.
        output: PathBuf,
    },
    /// (internal) Snapshot a module under a budget (see `snapshot`).
    #[command(hide = true, name = snapshot::WORKER_SUBCOMMAND)]
    SnapshotWorker {
        /// Where to write the snapshot.
        tmp: PathBuf,
        #[command(flatten)]
        args: snapshot::SnapshotArgs,
    },
}

/// Flags every command that compiles shares.
#[derive(Args, Debug, Clone)]
pub struct CacheArgs {
    /// Directory of the compilation cache [default: $XDG_CACHE_HOME/wasmlet or ~/.cache/wasmlet]
    #[arg(long, value_name = "DIR", env = "WASMLET_CACHE_DIR",
          value_parser = clap::builder::OsStringValueParser::new().try_map(parse::cache_dir))]
    pub cache_dir: Option<PathBuf>,
    /// Do not read or write the compilation cache.
    #[arg(long)]
    pub no_cache: bool,
    #[command(flatten)]
    pub compile: CompileLimitArgs,
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
        config.compile = self.compile.limits();
        if let Some(max) = self.compile.max_module_size() {
            config.max_module_size = max;
        }
        config
    }
}

/// Bounds on compiling (`RuntimeConfig::compile`).
#[derive(Args, Debug, Clone)]
pub struct CompileLimitArgs {
    /// Wall-clock budget of compiling the module [default: 60s].
    #[arg(long, value_name = "DURATION", value_parser = parse::duration)]
    pub compile_timeout: Option<Duration>,
    /// Memory budget of compiling the module [default: 2GiB].
    #[arg(long, value_name = "SIZE", value_parser = parse::limit_size)]
    pub compile_memory: Option<u64>,
    /// Raise or lower a cap checked before compiling, e.g. max_functions=500000
    /// (caps: max_module_size, the file read, 1GiB; max_wasm_size, max_functions,
    /// max_function_size, max_locals, max_data_size).
    #[arg(long, value_name = "CAP=N", value_parser = parse::compile_cap)]
    pub compile_cap: Vec<(String, u64)>,
}

impl CompileLimitArgs {
    /// `--compile-cap max_module_size=N`, the last one given.
    pub fn max_module_size(&self) -> Option<u64> {
        self.compile_cap
            .iter()
            .rev()
            .find(|(name, _)| name == parse::MAX_MODULE_SIZE)
            .map(|&(_, v)| v)
    }

    /// The limits these flags describe (caps already checked by the parser).
    pub fn limits(&self) -> CompileLimits {
        let mut limits = CompileLimits::default();
        if let Some(t) = self.compile_timeout {
            limits.timeout = t;
        }
        if let Some(m) = self.compile_memory {
            limits.max_memory = m;
        }
        for (name, value) in &self.compile_cap {
            if name == parse::MAX_MODULE_SIZE {
                continue;
            }
            limits
                .set_cap(name, *value)
                .expect("checked by parse::compile_cap");
        }
        limits
    }
}

pub fn main() -> anyhow::Result<ExitCode> {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return Ok(usage_error(e)),
    };
    // Workers keep the default dispositions: their parent cleans up. The
    // server takes SIGINT and SIGTERM itself, to drain before exiting 0.
    if !matches!(
        cli.command,
        Command::SandboxWorker
            | Command::CompileWorker { .. }
            | Command::SnapshotWorker { .. }
            | Command::Serve(_)
    ) {
        signals::install()?;
    }
    match cli.command {
        Command::Run(args) => run::run(args),
        Command::Compile(args) => compile::compile(args).map(|()| ExitCode::SUCCESS),
        Command::Snapshot(args) => snapshot::snapshot(args).map(|()| ExitCode::SUCCESS),
        Command::Serve(args) => serve::serve(args),
        Command::Usage(args) => usage::usage(args),
        Command::Cache(cmd) => cache::cache(cmd),
        Command::Oci(cmd) => oci::oci(cmd).map(|()| ExitCode::SUCCESS),
        Command::SandboxWorker => {
            wasmlet_sandbox::worker_main().map_err(anyhow::Error::msg)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::CompileWorker {
            config,
            module,
            output,
        } => {
            bounded::worker_main(&config, &module, &output)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::SnapshotWorker { tmp, args } => {
            snapshot::worker_main(&tmp, args)?;
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
            "cannot read {}: {} bytes is more than the largest module accepted ({max} bytes; raise it with --compile-cap max_module_size=SIZE)",
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

/// Reports a flag error as every other failure is reported: one line on
/// stderr, exit 1. (`--help` and `--version` print as usual and exit 0.)
fn usage_error(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
        let _ = e.print();
        return ExitCode::SUCCESS;
    }
    let message = if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
        "no command given: wasmlet run, serve, usage, compile or snapshot (see --help)".to_string()
    } else {
        one_line(&e.render().to_string())
    };
    eprintln(&format!("error: {message}"));
    ExitCode::from(EXIT_HOST_ERROR)
}

/// clap's message without the usage block, on one line: `error: X:\n  A\n`
/// becomes `X: A (see --help)`, and `error: X\n\n  tip: Y\n\nUsage: ...`
/// becomes `X (tip: Y; see --help)`.
fn one_line(rendered: &str) -> String {
    let mut parts = rendered
        .lines()
        .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
        .map(str::trim)
        .filter(|l| !l.is_empty());
    let first = parts.next().unwrap_or("invalid arguments");
    let first = first.strip_prefix("error: ").unwrap_or(first);
    let rest: Vec<&str> = parts.collect();
    if rest.is_empty() {
        format!("{first} (see --help)")
    } else if first.ends_with(':') {
        format!("{first} {} (see --help)", rest.join(", "))
    } else {
        format!("{first} ({}; see --help)", rest.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_errors_are_one_line() {
        let e = Cli::try_parse_from(["wasmlet", "run"]).err().unwrap();
        let line = one_line(&e.render().to_string());
        assert!(!line.contains('\n') && line.contains("<MODULE>"), "{line}");
        let e = Cli::try_parse_from(["wasmlet", "run", "--bogus", "m.wasm"])
            .err()
            .unwrap();
        let line = one_line(&e.render().to_string());
        assert!(!line.contains('\n') && line.contains("--bogus"), "{line}");
    }
}
