//! A component importing the embedder's own WIT interface: the platform
//! defines `example:counter/counter` (`tests/guests/counter/counter.wit`),
//! generates its host bindings with `wasmtime::component::bindgen!`
//! (through wasmlet's re-export of wasmtime), implements them on the
//! invocation's `Context`, and adds them with
//! `RuntimeBuilder::component_linker`. The guest is a C command
//! (`tests/guests/counter.c`), built into a component here with clang,
//! wasi-libc and `wit-component`, as the tests build theirs.
//!
//! `cargo run --release --example component_wit`. Run by `cargo test` too.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use wasmlet_runtime::wasmtime;
use wasmlet_runtime::{
    ComponentState, Context, Invocation, LoadOptions, RuntimeBuilder, RuntimeConfig,
};

#[path = "../tests/guests/components.rs"]
#[allow(dead_code)]
mod build;

mod bindings {
    wasmlet_runtime::wasmtime::component::bindgen!({
        path: "tests/guests/counter",
        world: "guest",
        // Host functions may fail (trap the guest) with a wasmtime::Error.
        imports: { default: trappable },
        wasmtime_crate: wasmlet_runtime::wasmtime,
    });
}

use bindings::example::counter::counter;

/// A tenant's counter, kept by the platform between invocations.
#[derive(Clone, Default)]
struct TenantCounter(Arc<AtomicU32>);

/// The interface, implemented on the invocation's context: each invocation
/// counts on the counter of the tenant it runs for.
impl counter::Host for Context {
    fn add(&mut self, n: u32) -> wasmtime::Result<u32> {
        let counter = self
            .get::<TenantCounter>()
            .ok_or_else(|| wasmtime::Error::msg("no tenant counter in the context"))?;
        Ok(counter.0.fetch_add(n, Ordering::Relaxed) + n)
    }
}

/// Runs the component twice for one tenant and once for another; returns
/// what it printed each time.
fn run() -> Result<Vec<String>, Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let component = build::build_component(
        "counter",
        build::Kind::CustomCommand("counter", "guest"),
        dir.path(),
    );
    let rt = RuntimeBuilder::new(RuntimeConfig::default())
        .component_linker(|linker| {
            counter::add_to_linker::<ComponentState, wasmtime::component::HasSelf<Context>>(
                linker,
                |state| state.context_mut(),
            )
        })
        .build()?;
    let guest = rt.load_file(&component, &LoadOptions::default())?;
    let (acme, globex) = (TenantCounter::default(), TenantCounter::default());
    let mut printed = Vec::new();
    for (name, tenant) in [("acme", &acme), ("acme", &acme), ("globex", &globex)] {
        let out = guest.invoke(Invocation {
            context: Context::new().with(tenant.clone()),
            ..Default::default()
        })?;
        let out = out.into_result()?;
        let stdout =
            String::from_utf8_lossy(out.stdout.as_deref().unwrap_or_default()).into_owned();
        print!("{name}: {stdout}");
        printed.push(stdout);
    }
    Ok(printed)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    run()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn each_tenant_counts_through_the_wit_interface() {
        assert_eq!(
            super::run().unwrap(),
            ["counter: 2 5\n", "counter: 7 10\n", "counter: 2 5\n"]
        );
    }
}
