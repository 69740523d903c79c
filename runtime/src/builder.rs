//! [`RuntimeBuilder`]: a [`Runtime`] with the embedder's host functions
//! (for core modules) and host interfaces (for components).
//!
//! Everything registered here is defined once, when the runtime is built,
//! in the linkers every function of the runtime is linked with at load:
//! next to WASI preview 1 for core modules, next to WASI preview 2 and
//! wasi:http for components. A definition that clashes with another (or
//! with WASI) is an error of [`RuntimeBuilder::build`].

use crate::component::ComponentState;
use crate::config::RuntimeConfig;
use crate::error::Error;
use crate::host::{self, HostCx, HostFunc};
use crate::runtime::Runtime;
use crate::store::StoreState;
use wasmtime::{Linker, WasmRet, WasmTyList};

/// A definition in the core modules' linker, run at build.
pub(crate) type ModuleHook =
    Box<dyn FnOnce(&mut Linker<StoreState>) -> wasmtime::Result<()> + Send>;

/// A definition in the components' linker, run at build.
pub(crate) type ComponentHook = Box<
    dyn FnOnce(&mut wasmtime::component::Linker<ComponentState>) -> wasmtime::Result<()> + Send,
>;

/// Builds a [`Runtime`] with host functions and host interfaces.
/// `Runtime::new(config)` is `RuntimeBuilder::new(config).build()`.
///
/// ```
/// use wasmlet_runtime::{Context, HostCx, Invocation, LoadOptions, RuntimeBuilder, RuntimeConfig};
/// struct Tenant(u32);
/// let rt = RuntimeBuilder::new(RuntimeConfig::default())
///     .host_func("platform", "tenant", |cx: HostCx<'_>| -> u32 {
///         cx.context().get::<Tenant>().map_or(0, |t| t.0)
///     })
///     .build()?;
/// let f = rt.load_bytes(
///     br#"(module (import "platform" "tenant" (func $t (result i32)))
///                 (func (export "run") (result i32) call $t))"#,
///     &LoadOptions::default(),
/// )?;
/// let tenant = f.typed::<(), u32>("run")?;
/// let out = tenant.invoke((), Invocation { context: Context::new().with(Tenant(42)), ..Default::default() })?;
/// assert_eq!(out.results, Some(42));
/// # Ok::<(), wasmlet_runtime::Error>(())
/// ```
pub struct RuntimeBuilder {
    config: RuntimeConfig,
    module_hooks: Vec<(String, ModuleHook)>,
    component_hooks: Vec<ComponentHook>,
}

impl RuntimeBuilder {
    /// A builder for a runtime with `config` and, so far, only WASI.
    pub fn new(config: RuntimeConfig) -> Self {
        RuntimeBuilder {
            config,
            module_hooks: Vec::new(),
            component_hooks: Vec::new(),
        }
    }

    /// Adds a synchronous host function that core modules import as
    /// `module`.`name`: a closure taking a [`HostCx`] and the wasm
    /// arguments (see [`HostFunc`]).
    ///
    /// A synchronous host function runs on the invocation's thread and
    /// cannot be interrupted: keep it short, and make one that waits (on
    /// the network, a lock, a disk) async with
    /// [`RuntimeBuilder::host_func_async`].
    pub fn host_func<P, R>(mut self, module: &str, name: &str, func: impl HostFunc<P, R>) -> Self {
        let (m, n) = (module.to_string(), name.to_string());
        self.module_hooks.push((
            format!("{module}::{name}"),
            Box::new(move |linker: &mut Linker<StoreState>| func.define(linker, &m, &n)),
        ));
        self
    }

    /// Adds an async host function that core modules import as
    /// `module`.`name`: a closure taking a [`HostCx`] and the arguments as
    /// a tuple, returning a boxed future of the results, as wasmtime's
    /// `Linker::func_wrap_async`. While its future waits, the invocation
    /// waits without holding a thread; past the invocation's timeout the
    /// future is dropped and the invocation ends with
    /// `LimitExceeded::Timeout`.
    ///
    /// ```
    /// use wasmlet_runtime::{HostCx, RuntimeBuilder, RuntimeConfig};
    /// let builder = RuntimeBuilder::new(RuntimeConfig::default()).host_func_async(
    ///     "platform",
    ///     "sleep_ms",
    ///     |_cx: HostCx<'_>, (ms,): (u32,)| {
    ///         Box::new(async move {
    ///             tokio::time::sleep(std::time::Duration::from_millis(ms.into())).await;
    ///         })
    ///     },
    /// );
    /// # let _ = builder;
    /// ```
    pub fn host_func_async<P, R, F>(mut self, module: &str, name: &str, func: F) -> Self
    where
        F: for<'a> Fn(HostCx<'a>, P) -> Box<dyn Future<Output = R> + Send + 'a>
            + Send
            + Sync
            + 'static,
        P: WasmTyList,
        R: WasmRet + 'static,
    {
        let (m, n) = (module.to_string(), name.to_string());
        self.module_hooks.push((
            format!("{module}::{name}"),
            Box::new(move |linker: &mut Linker<StoreState>| {
                host::define_async(linker, &m, &n, func)
            }),
        ));
        self
    }

    /// Defines anything else in the core modules' linker with wasmtime's
    /// own API (`func_new` with a dynamic signature, globals, whole
    /// instances). The store's data is the invocation's [`StoreState`],
    /// whose context is [`StoreState::context_mut`]. `what` names the
    /// definitions in a build error.
    pub fn linker(
        mut self,
        what: &str,
        define: impl FnOnce(&mut Linker<StoreState>) -> wasmtime::Result<()> + Send + 'static,
    ) -> Self {
        self.module_hooks.push((what.to_string(), Box::new(define)));
        self
    }

    /// Adds host interfaces for components: `define` gets the components'
    /// linker (WASI preview 2 and wasi:http already in it), typically to
    /// call the `add_to_linker` of bindings generated by
    /// `wasmtime::component::bindgen!` (see `examples/component_wit.rs`).
    /// The store's data is [`ComponentState`]; the invocation's context is
    /// [`StoreState::context_mut`].
    pub fn component_linker(
        mut self,
        define: impl FnOnce(&mut wasmtime::component::Linker<ComponentState>) -> wasmtime::Result<()>
        + Send
        + 'static,
    ) -> Self {
        self.component_hooks.push(Box::new(define));
        self
    }

    /// Builds the runtime: its engine, and its linkers with WASI and
    /// everything added here. Fails with [`Error::Config`] naming a host
    /// definition that cannot be made (a duplicate, or one that clashes
    /// with WASI), besides the errors of a plain `Runtime::new`.
    pub fn build(self) -> Result<Runtime, Error> {
        Runtime::with_hosts(self.config, self.module_hooks, self.component_hooks)
    }
}
