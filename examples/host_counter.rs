//! Host functions with a per-tenant context: the platform gives guests a
//! counter (`platform.count`) and a logger (`platform.log`); each
//! invocation carries, in its `Context`, the tenant it runs for, whose
//! counter lives on between invocations (an `Arc` the embedder keeps).
//!
//! `cargo run --release --example host_counter`. Run by `cargo test` too.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use wasmlet_runtime::wasmtime;
use wasmlet_runtime::{Context, HostCx, Invocation, LoadOptions, RuntimeBuilder, RuntimeConfig};

/// The guest: counts three times, logs a line, returns the last count.
const GUEST: &str = r#"(module
  (import "platform" "count" (func $count (param i32) (result i64)))
  (import "platform" "log" (func $log (param i32 i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "counted three")
  (func (export "run") (result i64)
    (drop (call $count (i32.const 1)))
    (drop (call $count (i32.const 1)))
    (call $log (i32.const 0) (i32.const 13))
    (call $count (i32.const 1))))"#;

/// What an invocation knows of its tenant.
struct Tenant {
    name: String,
    counter: Arc<AtomicU64>,
}

/// Runs the guest for each tenant in turn; returns (tenant, count) pairs.
fn run(tenants: &[&str]) -> Result<Vec<(String, u64)>, Box<dyn std::error::Error>> {
    let rt = RuntimeBuilder::new(RuntimeConfig::default())
        .host_func(
            "platform",
            "count",
            |cx: HostCx<'_>, n: u32| -> wasmtime::Result<u64> {
                let tenant = cx
                    .context()
                    .get::<Tenant>()
                    .ok_or_else(|| wasmtime::Error::msg("no tenant"))?;
                Ok(tenant.counter.fetch_add(n.into(), Ordering::Relaxed) + u64::from(n))
            },
        )
        .host_func(
            "platform",
            "log",
            |mut cx: HostCx<'_>, ptr: u32, len: u32| -> wasmtime::Result<()> {
                // Bounds-checked: a bad pointer traps the guest, naming it.
                let (memory, context) = cx.memory_and_context()?;
                let name = context.get::<Tenant>().map_or("?", |t| &t.name);
                println!("[{name}] {}", memory.str(ptr, len)?);
                Ok(())
            },
        )
        .build()?;
    let guest = rt.load_bytes(GUEST.as_bytes(), &LoadOptions::default())?;
    // Checked once here; each call then passes and returns plain values.
    let run = guest.typed::<(), u64>("run")?;
    let mut counters: HashMap<&str, Arc<AtomicU64>> = HashMap::new();
    let mut counts = Vec::new();
    for &name in tenants {
        let counter = counters.entry(name).or_default().clone();
        let context = Context::new().with(Tenant {
            name: name.into(),
            counter,
        });
        let out = run.invoke(
            (),
            Invocation {
                context,
                ..Default::default()
            },
        )?;
        println!(
            "{name}: count {:?}, {} µs, {} bytes of memory",
            out.results,
            out.usage.wall_time.as_micros(),
            out.usage.peak_memory_bytes
        );
        counts.push((name.to_string(), out.into_result()?));
    }
    Ok(counts)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    run(&["acme", "globex", "acme"])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn each_tenant_counts_on_its_own() {
        let counts = super::run(&["acme", "globex", "acme"]).unwrap();
        let counts: Vec<(&str, u64)> = counts.iter().map(|(n, c)| (n.as_str(), *c)).collect();
        assert_eq!(counts, [("acme", 3), ("globex", 3), ("acme", 6)]);
    }
}
