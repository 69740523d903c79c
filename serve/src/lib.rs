//! wasmlet-serve: `wasmlet serve`, a manifest of WebAssembly functions
//! bound to HTTP routes, served from one process with a fresh instance per
//! request.
//!
//! Map of the crate (it builds on `wasmlet-runtime`, which never imports it):
//! - [`manifest`]: `wasmlet.toml`, parsed and checked (errors name the
//!   file, line and field), with every default a named constant;
//! - [`app`]: a manifest made live: the runtime with its pool sized from
//!   the manifest, the functions loaded, the router, the memory budget;
//! - `handler`: how a function handles a request: WAGI or wasi:http;
//! - `wagi`: the WAGI (CGI) convention: request to environment and stdin,
//!   stdout to response;
//! - `http`: `kind = "http"` (wasi:http components): loading, the request
//!   body under the server's limits, outcomes to statuses;
//! - [`admission`]: per-function concurrency, bounded queues with a wait
//!   timeout, and the host-wide cap on instances in flight;
//! - [`metrics`]: the Prometheus figures of the admin listener;
//! - `sandboxed`: `[function.sandbox]`: a function's pool of jailed worker
//!   processes (`wasmlet-sandbox`), warm, scaled out and back, replaced
//!   when they die;
//! - [`usage_log`]: the durable usage log, one JSON line per invocation,
//!   written by one thread (batched, fdatasynced, rotated);
//! - [`bill`]: `wasmlet usage`, the usage log read back as a bill;
//! - `trigger`: schedule (cron or interval) and file (watched directory)
//!   triggers;
//! - `conn_threads`: one single-threaded runtime per core; each
//!   connection, its requests and their instances stay on one of them;
//! - `send_timeout`: a connection whose client stops reading its response
//!   is cut off;
//! - [`server`]: listeners, the request path and its status mapping, the
//!   admin endpoints, signals, reloads and graceful shutdown;
//! - [`error`]: typed errors.

#![warn(missing_docs)]

pub mod admission;
pub mod app;
pub mod bill;
mod conn_threads;
pub mod error;
#[doc(hidden)]
pub mod fuzzing;
mod handler;
mod http;
pub mod manifest;
pub mod metrics;
mod sandboxed;
mod send_timeout;
pub mod server;
mod trigger;
pub mod usage_log;
mod wagi;

pub use app::App;
pub use error::{LoadError, ManifestError, ServeError};
pub use manifest::{Kind, Manifest};
pub use server::{RuntimeSetup, ServeOptions, Server, check};
