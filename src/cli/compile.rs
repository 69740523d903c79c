//! `wasmlet compile`: ahead-of-time compilation into a `.cwasm` artifact.

use super::progress::with_spinner;
use super::{CacheArgs, bounded};
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
    // Checked here, so that a file that cannot be a module is refused
    // without starting the compiler process.
    let size = super::read_module(&args.module, config.max_module_size)?.len();
    let message = format!("compiling {} ({size} bytes)", args.module.display());
    // In a child, under the compile budget (`bounded`).
    let artifact = with_spinner(message, || bounded::precompile(&config, &args.module))
        .with_context(|| format!("cannot compile {}", args.module.display()))?;
    let out = args
        .output
        .unwrap_or_else(|| args.module.with_extension("cwasm"));
    super::output::write_output(&out, &artifact)
}
