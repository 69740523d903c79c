//! `wasmlet serve`: the manifest's functions behind HTTP routes (the
//! `wasmlet-serve` crate does the work).

use super::CacheArgs;
use clap::Args;
use std::path::PathBuf;
use std::process::ExitCode;
use wasmlet_serve::manifest::DEFAULT_MANIFEST;
use wasmlet_serve::{ServeOptions, Server};

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// The manifest [default: ./wasmlet.toml].
    manifest: Option<PathBuf>,
    /// Address to serve requests on (overrides the manifest's `listen`), e.g. 127.0.0.1:3000.
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
    /// Address of the admin endpoints /metrics, /healthz, /readyz (overrides `admin_listen`).
    #[arg(long, value_name = "ADDR")]
    admin_listen: Option<String>,
    /// Check the manifest and load (compile) every function, then exit without serving.
    #[arg(long)]
    check: bool,
    /// Log each invocation's usage record as JSON.
    #[arg(long)]
    usage: bool,
    /// The usage log, one JSON line per invocation (overrides the manifest's `usage_log`;
    /// default: wasmlet-usage.jsonl beside the manifest).
    #[arg(long, value_name = "FILE")]
    usage_log: Option<PathBuf>,
    #[command(flatten)]
    cache: CacheArgs,
}

pub fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let mut runtime = args.cache.runtime_config(false);
    // The manifest's modules are the operator's: compiled in this process
    // (under the compile caps) when they are not in the cache.
    runtime.compile.in_process = true;
    let opts = ServeOptions {
        manifest: args
            .manifest
            .unwrap_or_else(|| PathBuf::from(DEFAULT_MANIFEST)),
        listen: args.listen,
        admin_listen: args.admin_listen,
        runtime,
        usage: args.usage,
        usage_log: args.usage_log,
        setup: Default::default(),
    };
    if args.check {
        let app = wasmlet_serve::check(&opts)?;
        for f in app.summary() {
            super::output::println(&format!(
                "{}: {} function, routes {}",
                f.name,
                f.kind.name(),
                if f.routes.is_empty() {
                    "(none)".to_string()
                } else {
                    f.routes.join(", ")
                }
            ))?;
        }
        super::output::println(&format!("{}: ok", opts.manifest.display()))?;
        return Ok(ExitCode::SUCCESS);
    }
    let server = Server::bind(opts)?;
    // (Not kept: a reload must be able to drop the functions it replaces,
    // and with them their sandbox workers.)
    for f in server.app().summary() {
        tracing::info!(
            "function {} ({}): {}",
            f.name,
            f.kind.name(),
            f.routes.join(", ")
        );
    }
    tracing::info!("usage log: {}", server.usage_log().display());
    tracing::info!(
        "listening on http://{} (admin on http://{})",
        server.local_addr(),
        server.admin_addr()?
    );
    server.run()?;
    Ok(ExitCode::SUCCESS)
}
