//! Invokes a module N times in a loop: a target for `strace -c` and
//! `perf` when looking at the per-invocation path.
//! Usage: [WASMLET_CONFIG='<toml>'] cargo run --release --example invoke_loop -- MODULE [N]
use wasmlet_runtime::{Invocation, LoadOptions, Runtime, RuntimeConfig};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let module = args.next().ok_or("usage: invoke_loop MODULE [N]")?;
    let n: usize = args
        .next()
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(10_000);
    let config: RuntimeConfig = match std::env::var("WASMLET_CONFIG") {
        Ok(toml_text) => toml::from_str(&toml_text)?,
        Err(_) => RuntimeConfig::default(),
    };
    let rt = Runtime::new(config)?;
    let f = rt.load_file(&module, &LoadOptions::default())?;
    let start = std::time::Instant::now();
    for _ in 0..n {
        let o = f.invoke(Invocation::default())?;
        assert!(o.success(), "{:?}", o.status);
    }
    println!("{:?} per invocation", start.elapsed() / n as u32);
    Ok(())
}
