//! `wasmlet snapshot`: pre-initialize a module.

use super::parse;
use super::progress::with_spinner;
use anyhow::Context;
use clap::Args;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;
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
    #[arg(long = "dir", value_name = "HOST[::GUEST]")]
    dirs: Vec<String>,
    /// Environment variable for init (repeatable; needs --allow-wasi).
    #[arg(long = "env", value_name = "NAME=VALUE", value_parser = parse::env_var)]
    env: Vec<(String, String)>,
    /// Link imports nobody provides as functions that trap when called.
    #[arg(long)]
    trap_unknown_imports: bool,
    /// Maximum linear memory of init, e.g. 1GiB.
    #[arg(long, value_name = "SIZE", value_parser = parse::size)]
    memory_limit: Option<u64>,
    /// Maximum wall-clock time of init, e.g. 30s [default: 60s].
    #[arg(long, value_name = "DURATION", value_parser = parse::duration)]
    timeout: Option<Duration>,
}

pub fn snapshot(args: SnapshotArgs) -> anyhow::Result<()> {
    if !args.allow_wasi && (!args.dirs.is_empty() || !args.env.is_empty()) {
        anyhow::bail!("--dir and --env are for init's WASI: add --allow-wasi");
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
        dirs: args
            .dirs
            .iter()
            .map(|d| {
                let p = wasmlet_runtime::Preopen::parse(d);
                (p.host, p.guest)
            })
            .collect(),
        env: args.env,
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
    write_atomically(&out, &out_bytes)
}

fn default_output(module: &Path) -> PathBuf {
    module.with_extension("snapshot.wasm")
}

/// Writes `bytes` to `path` through a temporary file and a rename, so a
/// failure leaves nothing behind and readers never see half a file.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(".".as_ref());
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("cannot write into {}", dir.display()))?;
    tmp.write_all(bytes)
        .with_context(|| format!("cannot write {}", path.display()))?;
    tmp.persist(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}
