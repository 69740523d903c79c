//! wasmlet's embeddable executor.
//!
//! A [`Runtime`] owns one wasmtime engine set up for serving: a pooling
//! instance allocator, copy-on-write memory images, epoch interruption driven
//! by a background ticker, and a content-addressed pre-compilation cache.
//! [`Runtime::load_file`] turns a module or a component into a [`Function`]: compiled once
//! (or taken from the cache) and linked once against WASI preview 1, so that
//! [`Function::invoke`] only has to instantiate into a pooled slot and call.
//! Every invocation runs in a fresh store and instance with its own WASI
//! context and [`Limits`], and returns an [`Outcome`] with a [`Usage`] record.
//!
//! An embedder extends what guests can call with a [`RuntimeBuilder`]: host
//! functions for core modules ([`RuntimeBuilder::host_func`], given a
//! [`HostCx`] with bounds-checked guest memory and the invocation's
//! [`Context`]), and host interfaces for components
//! ([`RuntimeBuilder::component_linker`], for `wasmtime::component::bindgen!`
//! bindings). [`Function::typed`] calls a reactor's export with Rust values.
//!
//! The API exposes wasmtime types where they are the vocabulary (`Val`,
//! `Engine`, `Module`, `Linker`, `Caller`, the component `Linker`): this
//! crate re-exports the wasmtime it is built with as
//! [`wasmlet_runtime::wasmtime`](crate::wasmtime), so an embedder uses that
//! path (and `bindgen!`'s `wasmtime_crate` option) instead of depending on
//! wasmtime itself, and a wasmtime upgrade of wasmlet is one upgrade for
//! the embedder too. A wasmtime major version is a breaking change of this
//! crate.
//!
//! Map of the crate:
//! - `builder`: [`RuntimeBuilder`]: a runtime with host functions and host
//!   interfaces;
//! - `host`: what host functions are ([`HostFunc`]) and get ([`HostCx`],
//!   [`GuestMemory`]);
//! - `context`: the embedder's per-invocation values ([`Context`]);
//! - `typed`: typed calls ([`Function::typed`], [`TypedFunction`]);
//! - [`config`]: serde configuration ([`RuntimeConfig`], [`Limits`]) with
//!   named defaults;
//! - `engine`: the wasmtime `Engine` built from it;
//! - `ticker`: the epoch ticker, which ticks only as often as the running
//!   invocations' time limits need;
//! - [`prescan`]: bounded compiles: caps checked before compiling, and how
//!   to compile in a child process under a time and memory budget;
//! - `runtime`: [`Runtime`]: loading, compiling, caching and linking;
//! - `component`: components: detection, the WASI preview 2 and wasi:http
//!   linker, the world a component is pre-linked as (`wasi:http/proxy` or
//!   `wasi:cli/command`), and the outbound host allow-list
//!   ([`OutboundHosts`]);
//! - [`http`]: [`http::handle_http`], one request to a wasi:http
//!   component in a fresh instance, with its usage record;
//! - `executor`: what all invocations of a runtime share (engine, ticker,
//!   pool slot permits), and driving an invocation on the calling thread;
//! - `function`: [`Function`] and the invocation, a future: set-up, call
//!   under the time limits, usage record;
//! - `store` and `wasi`: an invocation's store (limits, fuel, epoch
//!   deadline) and its WASI context;
//! - `stdio`: guest stdio on host descriptors, waited on asynchronously;
//! - `invocation`: what an invocation gets ([`Invocation`]) and returns
//!   ([`Outcome`]);
//! - `limiter`: live enforcement of memory, table, CPU-time and wall limits;
//! - `usage`: the [`Usage`] record and `Metered`, which reads the thread
//!   CPU clock (`clock`) around every poll;
//! - `fs_cpu`: the CPU time of WASI filesystem calls, which run on a
//!   blocking pool, charged to the invocation that made them;
//! - [`cache`] and [`artifact`]: the on-disk cache (trust rules, file
//!   index, maintenance) and the `.cwasm` format, mapped on load;
//! - `input`: reading module files (regular files only, size-capped);
//! - [`error`]: typed errors.
//!
//! Process isolation (worker processes in cgroups, jailed, under seccomp)
//! is the `wasmlet-sandbox` crate's, built on this one; this crate never
//! imports it.
//!
//! ```no_run
//! // examples/embed_minimal.rs is the same, runnable.
//! use wasmlet_runtime::{Invocation, LoadOptions, Runtime, RuntimeConfig};
//! let rt = Runtime::new(RuntimeConfig::default())?;
//! let hello = rt.load_file("hello.wasm", &LoadOptions::default())?;
//! let out = hello.invoke(Invocation { args: vec!["hello".into()], ..Default::default() })?;
//! println!("{:?} {:?}", out.status, out.usage);
//! # Ok::<(), wasmlet_runtime::Error>(())
//! ```

#![warn(missing_docs)]

pub mod artifact;
mod builder;
pub mod cache;
mod clock;
mod component;
pub mod config;
mod context;
mod engine;
pub mod error;
mod executor;
mod fs_cpu;
mod function;
mod host;
pub mod http;
mod input;
mod invocation;
mod limiter;
pub mod prescan;
mod runtime;
mod stdio;
mod store;
mod ticker;
mod typed;
mod usage;
mod wasi;

/// The wasmtime this crate is built with (see the crate docs).
pub use wasmtime;

pub use builder::RuntimeBuilder;
pub use component::{ComponentCtx, ComponentState};
pub use context::Context;
pub use host::{GuestMemory, HostCx, HostFunc, MemoryError};
pub use store::StoreState;
pub use typed::{TypedFunction, TypedOutcome, WasmScalar, WasmTypes};

pub use clock::thread_cpu_time;
pub use component::OutboundHosts;
pub use config::{CacheConfig, CompileLimits, Limits, PoolConfig, RuntimeConfig};
pub use error::{ArtifactError, Error, LimitExceeded};
pub use function::Function;
pub use invocation::{
    Entry, Input, Invocation, Outcome, Output, Preopen, StartGate, Status, UsageRecord,
};
pub use runtime::{LoadOptions, Runtime};
pub use usage::{SandboxUsage, Usage, UsageProbe};
pub use wasmlet_snapshotter::{CapExceeded, CompileCaps, SnapshotError, SnapshotOptions};
pub use wasmtime::{Engine, Val};
