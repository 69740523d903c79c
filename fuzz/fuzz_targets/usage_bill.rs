//! Fuzz target: see `wasmlet_fuzz::usage_bill`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| wasmlet_fuzz::usage_bill(data));
