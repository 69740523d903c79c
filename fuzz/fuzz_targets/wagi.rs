//! Fuzz target: see `wasmlet_fuzz::wagi`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| wasmlet_fuzz::wagi(data));
