//! Fuzz target: see `wasmlet_fuzz::cli_parsers`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| wasmlet_fuzz::cli_parsers(data));
