//! `wasmlet serve` embedded in a platform's own binary, with the platform's
//! host functions: guests served from the manifest can import
//! `platform.greeting(ptr, len) -> len`, which writes a greeting into
//! their memory. Everything else (routes, limits, queues, metrics, the
//! usage log, reloads, SIGTERM draining) is the plain server's.
//!
//! Usage: serve_embed MANIFEST   (prints the address it listens on, then
//! serves until SIGTERM or SIGINT)
use std::io::Write;
use wasmlet_runtime::{HostCx, RuntimeConfig, wasmtime};
use wasmlet_serve::{RuntimeSetup, ServeOptions, Server};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let manifest = std::env::args()
        .nth(1)
        .ok_or("usage: serve_embed MANIFEST")?;
    let mut runtime = RuntimeConfig::default();
    // The manifest's modules are the operator's: compiled in this process.
    runtime.compile.in_process = true;
    let setup = RuntimeSetup::new(|builder| {
        builder.host_func(
            "platform",
            "greeting",
            |mut cx: HostCx<'_>, ptr: u32, len: u32| -> wasmtime::Result<u32> {
                let greeting = b"hello from the platform\n";
                let n = greeting.len().min(len as usize);
                cx.write(ptr, &greeting[..n])?;
                Ok(n as u32)
            },
        )
    });
    let server = Server::bind(ServeOptions {
        manifest: manifest.into(),
        listen: None,
        admin_listen: None,
        runtime,
        usage: false,
        usage_log: None,
        setup,
    })?;
    println!("{}", server.local_addr());
    std::io::stdout().flush()?;
    server.run()?;
    Ok(())
}
