//! Fuzz target: see `wasmlet_fuzz::smith_invoke`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| wasmlet_fuzz::smith_invoke(data));
