//! Fuzz target: see `wasmlet_fuzz::artifact`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| wasmlet_fuzz::artifact(data));
