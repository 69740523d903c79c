//! `containerd-shim-wasmlet-v1`: the containerd shim (all of it lives in
//! the `wasmlet-shim` crate; this binary sits in the root package so the
//! integration tests can run it).

fn main() {
    wasmlet_shim::main();
}
