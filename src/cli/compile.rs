//! `wasmlet compile`: ahead-of-time compilation into a `.cwasm` artifact.

use super::CacheArgs;
use super::progress::with_spinner;
use anyhow::Context;
use clap::Args;
use std::io::Write;
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
    let runtime = args.cache.runtime(args.fuel)?;
    let bytes = std::fs::read(&args.module)
        .with_context(|| format!("cannot read {}", args.module.display()))?;
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
    // Write atomically so a reader never sees half an artifact.
    let dir = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(".".as_ref());
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("cannot write into {}", dir.display()))?;
    tmp.write_all(&artifact)
        .with_context(|| format!("cannot write {}", out.display()))?;
    tmp.persist(&out)
        .with_context(|| format!("cannot write {}", out.display()))?;
    Ok(())
}
