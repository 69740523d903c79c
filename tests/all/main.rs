//! Integration tests of wasmlet: the `wasmlet` binary and the
//! `wasmlet-runtime` library, with guests written in WAT (inline) and C
//! (`tests/guests/*.c`, built with clang + wasi-libc on first use).

mod adversarial;
mod cache;
mod cli;
mod cli_hardening;
mod coldstart;
mod components;
mod concurrency;
mod containerd;
mod cri;
mod embed;
mod embed_attacks;
mod escape;
mod events_attacks;
mod fs;
mod fuzz_corpus;
mod helpers;
mod library;
mod limits;
mod malformed;
mod sandbox;
mod serve;
mod serve_sandbox;
mod shim;
mod snapshot;
mod triggers;
mod usage;
