//! `containerd-shim-wasmlet-v1`: the containerd shim (all of it lives in
//! the `wasmlet-shim` crate; this binary sits in the root package so the
//! integration tests can run it).

/// mimalloc, not glibc's malloc: an invocation (in-shim tasks) makes about 46 small
/// allocations, and with glibc they cost 15% more instructions per
/// invocation (callgrind; see BENCHMARKS.md, "Per-invocation cost").
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    wasmlet_shim::main();
}
