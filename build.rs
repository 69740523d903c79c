//! Link the `wasmlet` and `containerd-shim-wasmlet-v1` executables as
//! position-dependent (non-PIE) executables.
//!
//! Every process start pays for the dynamic loader's relocations: a PIE
//! build of `wasmlet` carries about 92,000 relative relocations, and
//! applying them writes (and so copies) every page of its 2 MB
//! `.data.rel.ro`. That is about 480 page faults and 2 ms of CPU before
//! `main`, paid by each `wasmlet run`, each sandbox worker and each shim
//! process. Linked at a fixed address, the image needs no relocations and
//! its read-only data stays shared with the page cache (`perf stat` of
//! `wasmlet run hello.cwasm`: 732 -> 285 page faults; BENCHMARKS.md has the
//! figures).
//!
//! The cost is that the executable's own image is no longer randomized;
//! the heap, stacks, shared libraries, JIT code and wasm memories still are
//! (`docs/architecture.md`, "Process start"). A build that wants the image
//! randomized too sets `WASMLET_PIE=1`.

fn main() {
    println!("cargo:rerun-if-env-changed=WASMLET_PIE");
    let pie = std::env::var_os("WASMLET_PIE").is_some_and(|v| v == "1");
    let linux = std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux");
    if linux && !pie {
        // Later than rustc's own `-pie`, so this one wins.
        println!("cargo:rustc-link-arg-bins=-no-pie");
    }
}
