//! Pre-initialization ("wizening") for wasmlet.
//!
//! A module's initialization (a language runtime booting, tables being built,
//! config being parsed) runs once here, ahead of time; its resulting linear
//! memory and mutable globals are written back into a new module as data
//! segments and global initializers. Every later instance starts from that
//! state, which the runtime maps copy-on-write, so start-up cost no longer
//! grows with the work init did.
//!
//! The pipeline, one pass per module (the heavy lifting of instrumenting,
//! reading state and rewriting is `wasmtime-wizer`'s, at the same version as
//! our wasmtime):
//! 0. [`mod@prescan`]: refuse modules over the [`CompileCaps`] before anything
//!    expensive reads them;
//! 1. `check`: validate, refuse what cannot be snapshotted faithfully, and
//!    pick the init function;
//! 2. instrument (wizer): export every memory and global so they can be read;
//! 3. `init`: instantiate in wasmtime under limits, with WASI only if
//!    allowed, and run `_initialize` and the init function;
//! 4. snapshot + rewrite (wizer): non-zero memory as merged data segments,
//!    globals as constants, the init exports removed;
//! 5. verify: the output must validate, or nothing is returned.
//!
//! Also [`blocking`]: running a future to completion from code that may be
//! inside a tokio runtime (init here, `Function::invoke` in the runtime).

#![warn(missing_docs)]

pub mod blocking;
mod check;
mod error;
mod init;
mod options;
pub mod prescan;

pub use error::SnapshotError;
pub use options::{DEFAULT_INIT_FUNCS, DEFAULT_MAX_MEMORY, DEFAULT_TIMEOUT, SnapshotOptions};
pub use prescan::{CapExceeded, CompileCaps, prescan};

/// Runs `wasm`'s initialization and returns the pre-initialized module.
///
/// The output is deterministic: the same input and options give the same
/// bytes.
pub fn snapshot(wasm: &[u8], opts: &SnapshotOptions) -> Result<Vec<u8>, SnapshotError> {
    let init_func = check::check(wasm, opts)?;
    let mut wizer = wasmtime_wizer::Wizer::new();
    wizer.init_func(init_func.clone());
    let (cx, instrumented) = wizer
        .instrument(wasm)
        .map_err(|e| SnapshotError::Unsupported(format!("{e:#}")))?;
    let out = init::run_and_snapshot(&wizer, &cx, &instrumented, &init_func, opts)?;
    wasmparser::Validator::new_with_features(wasmparser::WasmFeatures::all())
        .validate_all(&out)
        .map_err(|e| SnapshotError::Internal(format!("snapshot does not validate: {e}")))?;
    Ok(out)
}

/// Turns on the wasm features wasmlet accepts (those current toolchains
/// emit). Shared by the runtime's engine and the engine init runs in, so
/// that whatever can be snapshotted can also run, and the reverse.
pub fn enable_wasm_features(config: &mut wasmtime::Config) -> &mut wasmtime::Config {
    config
        .wasm_bulk_memory(true)
        .wasm_simd(true)
        .wasm_relaxed_simd(true)
        // Relaxed-SIMD results baked into a snapshot must match what the
        // same code computes at run time, on any host.
        .relaxed_simd_deterministic(true)
        .wasm_reference_types(true)
        .wasm_multi_value(true)
        .wasm_multi_memory(true)
        .wasm_tail_call(true)
        .wasm_extended_const(true)
        .wasm_exceptions(true)
        .wasm_memory64(true)
}

/// Whether `wasm` has an init function that [`snapshot`] would run with
/// `opts` (so a runtime can snapshot on load only what has something to run).
pub fn has_init_func(wasm: &[u8], opts: &SnapshotOptions) -> bool {
    check::find_init_func(wasm, opts).ok().flatten().is_some()
}
