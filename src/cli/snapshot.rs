//! `wasmlet snapshot`: pre-initialize a module.
//!
//! The work (compile, run init, rewrite) happens in a child, this binary
//! re-run as `wasmlet snapshot-worker` with the same arguments, under the
//! compile budget plus init's own limits: `RLIMIT_DATA` of
//! `--compile-memory` + `--memory-limit`, and a wall-clock budget of
//! `--compile-timeout` + `--timeout`. Init's own timeout and memory limit
//! are enforced inside the child with their usual messages; the budget
//! catches what they cannot (Cranelift compiling a huge module). The child
//! writes the snapshot into a private temporary file the parent made (and
//! removes on signals); the parent then writes the output atomically, so a
//! killed child leaves nothing behind.

use super::progress::with_spinner;
use super::{CompileLimitArgs, bounded, parse};
use anyhow::Context;
use clap::Args;
use std::path::{Path, PathBuf};
use std::time::Duration;
use wasmlet_runtime::{LimitExceeded, Preopen};
use wasmlet_snapshotter::SnapshotOptions;

/// The hidden subcommand the child runs.
pub const WORKER_SUBCOMMAND: &str = "snapshot-worker";

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
    #[command(flatten)]
    compile: CompileLimitArgs,
}

/// `wasmlet snapshot ARGS`: checks the arguments, then runs
/// `wasmlet snapshot-worker ARGS` under the budget (see the module doc).
pub fn snapshot(args: SnapshotArgs) -> anyhow::Result<()> {
    let opts = options(&args)?;
    let limits = args.compile.limits();
    let tmp = bounded::Artifact::new()?;
    let mut cmd = bounded::own_command()?;
    cmd.arg(WORKER_SUBCOMMAND)
        .arg(tmp.path())
        .args(std::env::args_os().skip_while(|a| a != "snapshot").skip(1));
    let message = format!("initializing {}", args.module.display());
    with_spinner(message, || {
        bounded::run_budgeted(
            cmd,
            "snapshot",
            limits.timeout.saturating_add(opts.timeout),
            LimitExceeded::SnapshotTime(limits.timeout.saturating_add(opts.timeout)),
            LimitExceeded::SnapshotMemory(limits.max_memory.saturating_add(opts.max_memory)),
        )
    })
    .with_context(|| format!("cannot snapshot {}", args.module.display()))?;
    let out_bytes = std::fs::read(tmp.path()).context("cannot read the snapshot back")?;
    if out_bytes.is_empty() {
        anyhow::bail!("the snapshot process wrote no output");
    }
    let out = args.output.unwrap_or_else(|| default_output(&args.module));
    super::output::write_output(&out, &out_bytes)
}

/// The child (`wasmlet snapshot-worker TMP ARGS`): reads and snapshots the
/// module under its own memory cap, and writes the result to `tmp`.
pub fn worker_main(tmp: &Path, args: SnapshotArgs) -> anyhow::Result<()> {
    let opts = options(&args)?;
    let limits = args.compile.limits();
    wasmlet_runtime::prescan::limit_own_memory(limits.max_memory.saturating_add(opts.max_memory))?;
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
    let out_bytes = wasmlet_snapshotter::snapshot(&wasm, &opts)?;
    std::fs::write(tmp, out_bytes).with_context(|| format!("cannot write {}", tmp.display()))
}

/// The snapshot options the flags describe, after checking them.
fn options(args: &SnapshotArgs) -> anyhow::Result<SnapshotOptions> {
    if !args.allow_wasi && (!args.dirs.is_empty() || !args.env.is_empty()) {
        anyhow::bail!("--dir and --env are for init's WASI: add --allow-wasi");
    }
    parse::unique_guest_paths(&args.dirs)?;
    let mut opts = SnapshotOptions {
        init_func: args.init_func.clone(),
        allow_wasi: args.allow_wasi,
        dirs: args
            .dirs
            .iter()
            .map(|p| (p.host.clone(), p.guest.clone()))
            .collect(),
        env: parse::env_list(args.env.clone()),
        caps: args.compile.limits().caps(),
        trap_unknown_imports: args.trap_unknown_imports,
        ..SnapshotOptions::default()
    };
    if let Some(m) = args.memory_limit {
        opts.max_memory = m;
    }
    if let Some(t) = args.timeout {
        opts.timeout = t;
    }
    Ok(opts)
}

fn default_output(module: &Path) -> PathBuf {
    module.with_extension("snapshot.wasm")
}
