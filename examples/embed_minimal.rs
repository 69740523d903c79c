//! The smallest embedding of wasmlet: build a runtime, load a module once,
//! invoke it, print what it wrote and its usage record.
//!
//! `cargo run --release --example embed_minimal [MODULE]` (default: the
//! hello module, `examples/guests/hello.wat`). Run by `cargo test` too.

use wasmlet_runtime::{Invocation, LoadOptions, Runtime, RuntimeConfig};

const HELLO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/guests/hello.wat");

/// Loads `module`, invokes it once, and returns its stdout and usage record
/// (as JSON).
fn run(module: &str) -> Result<(String, serde_json::Value), wasmlet_runtime::Error> {
    // One runtime per process: it owns the engine, the instance pool and
    // the compilation cache.
    let rt = Runtime::new(RuntimeConfig::default())?;
    // Compiled (or taken from the cache) and linked once...
    let hello = rt.load_file(module, &LoadOptions::default())?;
    // ...then every invocation is a fresh instance in a pooled slot.
    let out = hello.invoke(Invocation {
        args: vec!["hello".into()],
        ..Default::default()
    })?;
    let out = out.into_result()?;
    let stdout = String::from_utf8_lossy(out.stdout.as_deref().unwrap_or_default()).into_owned();
    Ok((stdout, out.usage_json()))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let module = std::env::args().nth(1).unwrap_or_else(|| HELLO.into());
    let (stdout, usage) = run(&module)?;
    print!("{stdout}");
    println!("usage: {usage}");
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn prints_hello_and_its_usage() {
        let (stdout, usage) = super::run(super::HELLO).unwrap();
        assert_eq!(stdout, "hello\n");
        assert_eq!(usage["status"], "exited");
        assert_eq!(usage["exit_code"], 0);
        assert!(usage["wall_time_ns"].as_u64().unwrap() > 0);
        assert!(usage["peak_memory_bytes"].as_u64().unwrap() >= 65536);
    }
}
