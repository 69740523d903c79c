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
    /// containerd stream processor: a raw wasm layer on stdin, a tar holding
    /// it as /module.wasm on stdout (see docs/kubernetes.md).
    WasmLayer,
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
    /// Store the module as a raw wasm layer (runwasi's media type
    /// application/vnd.bytecodealliance.wasm.component.layer.v0+wasm) as
    /// /module.wasm; containerd needs `wasmlet oci wasm-layer` as its
    /// stream processor to unpack it.
    #[arg(long)]
    wasm_layer: bool,
    /// The user its tasks run as, numeric UID:GID (the image's `User`, as
    /// Dockerfile's USER): a sandboxed task's worker runs as that host user
    /// (root's as nobody).
    #[arg(long, value_name = "UID:GID", value_parser = user)]
    user: Option<String>,
}

/// `UID:GID`, written back in canonical form (`+1000:01000` is `1000:1000`).
/// Root (0) is allowed, as in a Dockerfile: the shim runs root's tasks as
/// `nobody`, never as the host's root.
fn user(s: &str) -> Result<String, String> {
    let id = |x: &str| {
        x.bytes()
            .all(|b| b.is_ascii_digit())
            .then(|| x.parse::<u32>().ok())
            .flatten()
            .filter(|&n| n != u32::MAX)
    };
    match s.split_once(':').map(|(u, g)| (id(u), id(g))) {
        Some((Some(u), Some(g))) => Ok(format!("{u}:{g}")),
        _ => Err(format!(
            "expected numeric UID:GID below 4294967295, e.g. 1000:1000, not {s:?}"
        )),
    }
}

fn annotation(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.into(), v.into())),
        _ => Err(format!("expected KEY=VALUE, not {s:?}")),
    }
}

pub fn oci(cmd: OciCommand) -> anyhow::Result<()> {
    let args = match cmd {
        OciCommand::Build(args) => args,
        OciCommand::WasmLayer => return wasm_layer(),
    };
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
        wasm_layer: args.wasm_layer,
        user: args.user,
    };
    let written = wasmlet_oci::image::write_image(&spec, &args.output)?;
    println(&format!("{} {}", spec.name, written.manifest))?;
    Ok(())
}

/// `wasmlet oci wasm-layer`: what containerd runs to unpack a raw wasm
/// layer (its `stream_processors` config): the layer on stdin, the tar
/// [`wasmlet_oci::image::wasm_layer_tar`] makes of it on stdout.
fn wasm_layer() -> anyhow::Result<()> {
    use std::io::{Read, Write};
    let max = wasmlet_oci::image::MAX_MODULE_SIZE;
    let mut module = Vec::new();
    std::io::stdin()
        .lock()
        .take(max + 1)
        .read_to_end(&mut module)
        .context("reading the wasm layer from stdin")?;
    if module.len() as u64 > max {
        anyhow::bail!("the wasm layer is larger than {max} bytes");
    }
    if !module.starts_with(b"\0asm") {
        anyhow::bail!("the layer on stdin is not a WebAssembly binary (no \\0asm header)");
    }
    let tar = wasmlet_oci::image::wasm_layer_tar(&module)?;
    let mut out = std::io::stdout().lock();
    out.write_all(&tar)
        .and_then(|()| out.flush())
        .context("writing the layer tar to stdout")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn user_is_numeric_and_canonical() {
        assert_eq!(super::user("01000:+1000").ok(), None);
        assert_eq!(super::user("01000:1000").unwrap(), "1000:1000");
        assert_eq!(super::user("0:0").unwrap(), "0:0");
        for bad in [
            "1000",
            "1000:",
            ":1",
            "a:b",
            "4294967295:1",
            "1:2:3",
            "-1:-1",
        ] {
            assert!(super::user(bad).is_err(), "{bad}");
        }
    }
}
