//! Fuzz target: see `wasmlet_fuzz::snapshot_diff`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| wasmlet_fuzz::snapshot_diff(data));
