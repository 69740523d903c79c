//! `wasmlet snapshot`: pre-initialize a module.

use super::parse;
use super::progress::with_spinner;
use anyhow::Context;
use clap::Args;
use std::path::{Path, PathBuf};
use std::time::Duration;
use wasmlet_runtime::{CompileLimits, Preopen};
use wasmlet_snapshotter::SnapshotOptions;

#[derive(Args, Debug)]
pub struct SnapshotArgs {
    /// Module to pre-initialize (.wasm or .wat).
    module: PathBuf,
    /// Output module [default: MODULE with the extension .snapshot.wasm].
    #[arg(short, long, value_name = "OUT.wasm")]
    output: Option<PathBuf>,
    /// Init function [default: `wizer.initialize`, else `wizer-initialize`, else `_initialize`].
    #[arg(long, value_name = "NAME")]
    init_func: Option<String>,
    /// Let init use WASI, seeing only the --dir and --env given here.
    #[arg(long)]
    allow_wasi: bool,
    /// Grant init a host directory, seen as GUEST (repeatable; needs --allow-wasi).
    #[arg(long = "dir", value_name = "HOST[::GUEST]", value_parser = parse::dir)]
    dirs: Vec<Preopen>,
    /// Environment variable for init (repeatable; needs --allow-wasi).
    #[arg(long = "env", value_name = "NAME=VALUE", value_parser = parse::env_var)]
    env: Vec<(String, String)>,
    /// Link imports nobody provides as functions that trap when called.
    #[arg(long)]
    trap_unknown_imports: bool,
    /// Maximum linear memory of init, e.g. 1GiB.
    #[arg(long, value_name = "SIZE", value_parser = parse::limit_size)]
    memory_limit: Option<u64>,
    /// Maximum wall-clock time of init, e.g. 30s [default: 60s].
    #[arg(long, value_name = "DURATION", value_parser = parse::duration)]
    timeout: Option<Duration>,
    /// Raise or lower a cap checked before instrumenting, e.g. max_functions=500000.
    #[arg(long, value_name = "CAP=N", value_parser = parse::compile_cap)]
    compile_cap: Vec<(String, u64)>,
}

pub fn snapshot(args: SnapshotArgs) -> anyhow::Result<()> {
    if !args.allow_wasi && (!args.dirs.is_empty() || !args.env.is_empty()) {
        anyhow::bail!("--dir and --env are for init's WASI: add --allow-wasi");
    }
    parse::unique_guest_paths(&args.dirs)?;
    let mut limits = CompileLimits::default();
    for (name, value) in &args.compile_cap {
        limits.set_cap(name, *value).map_err(anyhow::Error::msg)?;
    }
    let bytes = super::read_module(
        &args.module,
        wasmlet_runtime::config::DEFAULT_MAX_MODULE_SIZE,
    )?;
    let wasm = if bytes.starts_with(b"\0asm") {
        bytes
    } else {
        wat::parse_bytes(&bytes)
            .map(|w| w.into_owned())
            .map_err(|e| anyhow::anyhow!("invalid module: {}", e.to_string().replace('\n', " ")))
            .with_context(|| format!("cannot read {}", args.module.display()))?
    };
    let mut opts = SnapshotOptions {
        init_func: args.init_func,
        allow_wasi: args.allow_wasi,
        dirs: args.dirs.into_iter().map(|p| (p.host, p.guest)).collect(),
        env: parse::env_list(args.env),
        caps: limits.caps(),
        trap_unknown_imports: args.trap_unknown_imports,
        ..SnapshotOptions::default()
    };
    if let Some(m) = args.memory_limit {
        opts.max_memory = m;
    }
    if let Some(t) = args.timeout {
        opts.timeout = t;
    }
    let message = format!("initializing {}", args.module.display());
    let out_bytes = with_spinner(message, || wasmlet_snapshotter::snapshot(&wasm, &opts))
        .with_context(|| format!("cannot snapshot {}", args.module.display()))?;
    let out = args.output.unwrap_or_else(|| default_output(&args.module));
    super::output::write_output(&out, &out_bytes)
}

fn default_output(module: &Path) -> PathBuf {
    module.with_extension("snapshot.wasm")
}
