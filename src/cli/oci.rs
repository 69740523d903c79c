//! `wasmlet oci build`: a module packed as an OCI image tarball for
//! `ctr image import` (the work is `wasmlet-oci`'s).

use super::output::println;
use anyhow::Context;
use clap::{Args, Subcommand};
use std::collections::BTreeMap;
use std::path::PathBuf;

#[derive(Subcommand, Debug)]
pub enum OciCommand {
    /// Pack a module into an OCI image tarball (`ctr image import` takes it as is).
    Build(BuildArgs),
}

#[derive(Args, Debug)]
pub struct BuildArgs {
    /// The module (.wasm); it becomes `/<its file name>` in the image, the image's entrypoint.
    module: PathBuf,
    /// Where to write the image tarball.
    #[arg(short = 'o', long = "output", value_name = "IMAGE.tar")]
    output: PathBuf,
    /// The image reference, e.g. example.com/hello:v1.
    #[arg(long, value_name = "REF")]
    name: String,
    /// An annotation on the image, e.g. wasmlet.io/snapshot=true (repeatable).
    #[arg(long = "annotation", value_name = "K=V", value_parser = annotation)]
    annotations: Vec<(String, String)>,
}

fn annotation(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.into(), v.into())),
        _ => Err(format!("expected KEY=VALUE, not {s:?}")),
    }
}

pub fn oci(cmd: OciCommand) -> anyhow::Result<()> {
    let OciCommand::Build(args) = cmd;
    let max = wasmlet_oci::image::MAX_MODULE_SIZE;
    let module = super::read_module(&args.module, max)?;
    if !module.starts_with(b"\0asm") {
        anyhow::bail!(
            "{}: not a WebAssembly binary (no \\0asm header); build the .wasm first",
            args.module.display()
        );
    }
    let file_name = args
        .module
        .file_name()
        .and_then(|n| n.to_str())
        .context("the module path has no file name")?
        .to_string();
    let annotations: BTreeMap<String, String> = args.annotations.into_iter().collect();
    let spec = wasmlet_oci::image::ImageSpec {
        name: args.name,
        file_name,
        module,
        annotations,
    };
    let written = wasmlet_oci::image::write_image(&spec, &args.output)?;
    println(&format!("{} {}", spec.name, written.manifest))?;
    Ok(())
}
