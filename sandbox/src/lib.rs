//! wasmlet sandboxes: microVM-style isolation around the wasm sandbox.
//!
//! A [`Sandbox`] is one worker process in cgroups of its own (memory, CPU
//! bandwidth, pids; v1 or v2), hardened before it runs anything, that
//! loads one function and runs the invocations handed to it over a Unix
//! socket. A worker the kernel kills (OOM, seccomp) fails the invocations
//! it was running, with the cause, and is replaced by a fresh one; other
//! sandboxes never notice.
//!
//! The worker is this same program run as `<exe> sandbox-worker` (the
//! `wasmlet` binary has that hidden command; an embedder calls
//! [`worker_main`] from its own `main` when started that way, or points
//! [`WorkerCommand`] at a `wasmlet` binary).
//!
//! Map of the crate (the executor, `wasmlet-runtime`, sits below it and
//! never imports it):
//! - `config`: [`SandboxConfig`], the serde settings, and their validation;
//! - [`cgroup`]: cgroup v1/v2 detection, limits, usage, owners and cleanup;
//! - `harden`: what the worker's process gets between `fork` and `exec`;
//! - `jail`: what the worker builds around itself after `exec`: user,
//!   mount, pid, net, ipc and uts namespaces, an empty read-only root with
//!   only the granted directories, no capabilities, rlimits;
//! - `seccomp`: the worker's system-call allow-list (one reviewed file);
//! - `escape` (feature `escape-tests`): escape attempts a test asks a real
//!   worker to make;
//! - `protocol`: the length-prefixed JSON messages on the worker socket;
//! - `worker`: the worker process's side ([`worker_main`]);
//! - `supervisor`: [`Sandbox`], the supervisor's side: starting, calling,
//!   deadlines, deaths and replacement;
//! - `error`: [`Error`].

#![warn(missing_docs)]

pub mod cgroup;
mod config;
mod error;
#[cfg(feature = "escape-tests")]
mod escape;
#[doc(hidden)]
pub mod fuzzing;
mod harden;
mod jail;
mod protocol;
mod seccomp;
mod supervisor;
mod worker;

pub use config::{
    DEFAULT_CGROUP_PARENT, DEFAULT_DEADLINE_GRACE, DEFAULT_FSIZE, DEFAULT_MAX_CALL, DEFAULT_NOFILE,
    DEFAULT_SANDBOX_ID, DEFAULT_SANDBOX_PIDS, DirGrant, MIN_MEMORY, SandboxConfig, host_cpus,
};
pub use error::Error;
pub use supervisor::{Sandbox, WorkerCommand};
pub use wasmlet_runtime::SandboxUsage;
pub use worker::{WORKER_TASKS, WORKER_THREADS, worker_main};
