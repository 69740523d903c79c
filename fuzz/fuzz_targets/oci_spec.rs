//! Fuzz target: see `wasmlet_fuzz::oci_spec`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| wasmlet_fuzz::oci_spec(data));
