//! Fuzz target: see `wasmlet_fuzz::load_invoke`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| wasmlet_fuzz::load_invoke(data));
