//! `wasmlet compile`: ahead-of-time compilation into a `.cwasm` artifact.

use super::CacheArgs;
use super::progress::with_spinner;
use anyhow::Context;
use clap::Args;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct CompileArgs {
    /// Module to compile (.wasm or .wat).
    module: PathBuf,
    /// Output file [default: MODULE with the extension .cwasm].
    #[arg(short, long, value_name = "OUT")]
    output: Option<PathBuf>,
    /// Compile for a runtime that meters fuel (what `run --fuel` needs).
    #[arg(long)]
    fuel: bool,
    #[command(flatten)]
    cache: CacheArgs,
}

pub fn compile(args: CompileArgs) -> anyhow::Result<()> {
    let mut config = args.cache.runtime_config(args.fuel);
    config.pool.instances = 1;
    let max = config.max_module_size;
    let runtime = wasmlet_runtime::Runtime::new(config)?;
    let bytes = super::read_module(&args.module, max)?;
    let message = format!(
        "compiling {} ({} bytes)",
        args.module.display(),
        bytes.len()
    );
    let artifact = with_spinner(message, || runtime.precompile(&bytes))
        .with_context(|| format!("cannot compile {}", args.module.display()))?;
    let out = args
        .output
        .unwrap_or_else(|| args.module.with_extension("cwasm"));
    super::snapshot::write_atomically(&out, &artifact)
}
