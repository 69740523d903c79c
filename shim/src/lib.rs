//! `containerd-shim-wasmlet-v1`: a containerd shim v2 (runtime type
//! `io.containerd.wasmlet.v1`) that runs wasm modules as tasks, for `ctr`
//! and, through containerd's CRI, for Kubernetes.
//!
//! It speaks the task API v2 of containerd 1.6 (the `containerd-shim`
//! crates 0.11). One shim process serves one container, or all containers
//! of one pod (grouped by CRI's `io.kubernetes.cri.sandbox-id`).
//!
//! Map of the crate:
//! - `service`: containerd's side: the shim's `start`/`delete` commands
//!   and the ttrpc task service, events sent to containerd;
//! - `state`: the task state machine (created, running, stopped,
//!   deleted) and the events each step sends; tested with a fake executor;
//! - `executor`: the trait boundary between the two ([`Executor`] makes
//!   an [`Instance`] from a bundle);
//! - `wasm`: the executor that runs guests: in the shim for containers
//!   without limits, in a jailed `wasmlet-sandbox` worker in the
//!   container's cgroup for containers with them, nothing for a pod's
//!   pause container;
//! - `stats`: a cgroup read into containerd's v1/v2 metrics types;
//! - `error`: [`Error`] and its mapping to ttrpc codes (one place).
//!
//! The binary's `main` is [`main`]: it also serves as the sandbox worker
//! (`containerd-shim-wasmlet-v1 sandbox-worker`), so a shim needs no other
//! wasmlet binary installed.

mod error;
pub mod executor;
mod service;
pub mod state;
mod stats;
mod wasm;

pub use error::{Error, Result};
pub use executor::{Executor, Instance};
pub use service::{RUNTIME_TYPE, TaskService, WasmletShim};
pub use wasm::{DEFAULT_SHIM_CACHE_DIR, WARM_UP_MODULE, WasmExecutor, warm_up_invocation};

/// When this process started (its `main`), for the debug-level timing
/// lines of the start path (`containerd --log-level debug` shows them).
static STARTED: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();

/// Logs, at debug level, how far into this process a step of the start
/// path is.
pub(crate) fn timing(step: &str) {
    if log::log_enabled!(log::Level::Debug) {
        let ms = STARTED
            .get()
            .map_or(0.0, |t| t.elapsed().as_secs_f64() * 1e3);
        log::debug!("timing: {step} at {ms:.2} ms");
    }
}

/// The shim binary's entry point.
pub fn main() {
    STARTED.get_or_init(std::time::Instant::now);
    if std::env::args_os()
        .nth(1)
        .is_some_and(|a| a == "sandbox-worker")
    {
        // A sandbox worker started by this shim (see `wasm`).
        if let Err(e) = wasmlet_sandbox::worker_main() {
            eprintln!("wasmlet sandbox worker: {e}");
            std::process::exit(1);
        }
        return;
    }
    let config = containerd_shim::Config {
        // Sandbox workers are reaped by their supervisor (with their
        // rusage); a reaper thread taking any child would steal them.
        no_reaper: true,
        no_sub_reaper: true,
        ..Default::default()
    };
    containerd_shim::run::<WasmletShim>(RUNTIME_TYPE, Some(config));
}
