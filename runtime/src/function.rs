//! [`Function`]: a compiled, linked module or component, and running one
//! invocation of it in a fresh store and instance.
//!
//! An invocation is a future: WASI set-up, the store, instantiation and the
//! call (`instantiate_async`, `call_async`: the guest runs on a fiber stack
//! from the pool), under its time limits, and the usage record. The
//! synchronous [`Function::invoke`] drives that future on the calling
//! thread; [`Function::invoke_async`] returns it to the caller's runtime.

use crate::component::{self, ComponentCode, ComponentCtx, World};
use crate::config::Limits;
use crate::context::Context;
use crate::error::{Error, LimitExceeded};
use crate::executor::{self, Executor};
use crate::host::CatchPanic;
use crate::invocation::{Entry, Invocation, Outcome, StartGate, Status};
use crate::limiter::{CpuWatch, Deadline, StoreLimiter, TimeBudget, deadline};
use crate::store::{StoreState, new_store};
use crate::usage::{CpuMeter, Metered, Usage, UsageProbe};
use crate::wasi;
use bytes::Bytes;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::pin;
use std::sync::Arc;
use std::time::{Duration, Instant};
use wasmtime::{
    ExternType, InstancePre, Module, ModuleExport, PoolConcurrencyLimitError, Store, Trap, Val,
    ValType, WasmBacktrace,
};
use wasmtime_wasi::I32Exit;
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;

/// A module or component ready to run: compiled, its imports resolved once
/// into an `InstancePre` (for a component, a pre-instantiated world). Cheap to clone and safe to invoke from many threads at
/// once; every invocation gets a fresh instance, so none sees another's state.
#[derive(Clone)]
pub struct Function {
    inner: Arc<FunctionInner>,
}

impl std::fmt::Debug for Function {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Function")
            .field("artifact", &self.inner.artifact)
            .field("limits", &self.inner.limits)
            .field("is_command", &self.is_command())
            .field("is_component", &self.is_component())
            .field("is_http_component", &self.is_http_component())
            .finish_non_exhaustive()
    }
}

pub(crate) struct FunctionInner {
    pub(crate) executor: Arc<Executor>,
    pub(crate) code: Code,
    pub(crate) limits: Limits,
    /// The cache entry or `.cwasm` the code is mapped from (or was written
    /// to), if any.
    artifact: Option<PathBuf>,
}

/// What a function runs.
pub(crate) enum Code {
    /// A core module, linked against WASI preview 1.
    Module {
        module: Module,
        pre: InstancePre<StoreState>,
        /// `_start`, when the module exports it as a function (looked up
        /// once here, not by name in every invocation).
        start: Option<ModuleExport>,
        /// `_initialize`, likewise.
        initialize: Option<ModuleExport>,
    },
    /// A component, linked against WASI preview 2 and wasi:http.
    Component(ComponentCode),
}

/// An invocation about to run.
pub(crate) struct Start<'a> {
    pub(crate) limits: &'a Limits,
    pub(crate) wall_start: Instant,
    pub(crate) meter: Option<Arc<CpuMeter>>,
    pub(crate) budget: Option<TimeBudget>,
    /// The invocation's [`UsageProbe`], if it has one.
    pub(crate) probe: Option<UsageProbe>,
}

/// What the metered part of an invocation hands back for the usage record.
pub(crate) struct Finished<W: 'static = WasiP1Ctx> {
    status: Status,
    fuel_consumed: Option<u64>,
    peak_memory: u64,
    stdout: Option<MemoryOutputPipe>,
    stderr: Option<MemoryOutputPipe>,
    /// Dropped after the usage is taken: resetting the slot is the
    /// runtime's cost, not the guest's.
    store: Store<StoreState<W>>,
}

impl<W: 'static> Finished<W> {
    /// How the guest ended (its store still alive).
    pub(crate) fn status(&self) -> &Status {
        &self.status
    }

    /// The outcome, with the usage record (also for an invocation stopped
    /// by a limit).
    pub(crate) fn outcome(self, wall_start: Instant, cpu_time: std::time::Duration) -> Outcome {
        let usage = Usage::new(
            wall_start.elapsed(),
            cpu_time,
            self.fuel_consumed,
            self.peak_memory,
        );
        drop(self.store);
        Outcome {
            status: self.status,
            usage,
            stdout: self.stdout.map(captured),
            stderr: self.stderr.map(captured),
        }
    }
}

/// What a captured stream holds, taken without a copy: called after the
/// store is dropped, and the store (its WASI context and resource table)
/// held every other handle on the pipe.
fn captured(pipe: MemoryOutputPipe) -> Bytes {
    match pipe.try_into_inner() {
        Some(buf) => buf.freeze(),
        None => {
            debug_assert!(false, "a captured pipe outlived its store");
            tracing::error!("captured output lost: the pipe outlived its store");
            Bytes::new()
        }
    }
}

impl Function {
    pub(crate) fn new(
        executor: Arc<Executor>,
        module: Module,
        pre: InstancePre<StoreState>,
        limits: Limits,
        artifact: Option<PathBuf>,
    ) -> Self {
        let func = |name| {
            matches!(module.get_export(name), Some(ExternType::Func(_)))
                .then(|| module.get_export_index(name))
                .flatten()
        };
        let start = func("_start");
        let initialize = func("_initialize");
        Function {
            inner: Arc::new(FunctionInner {
                executor,
                code: Code::Module {
                    pre,
                    start,
                    initialize,
                    module,
                },
                limits,
                artifact,
            }),
        }
    }

    pub(crate) fn new_component(
        executor: Arc<Executor>,
        code: ComponentCode,
        limits: Limits,
        artifact: Option<PathBuf>,
    ) -> Self {
        Function {
            inner: Arc::new(FunctionInner {
                executor,
                code: Code::Component(code),
                limits,
                artifact,
            }),
        }
    }

    pub(crate) fn inner(&self) -> &FunctionInner {
        &self.inner
    }

    /// The precompiled artifact file this function's code comes from (a
    /// cache entry, or the `.cwasm` it was loaded from), if there is one: a
    /// more privileged process can hand it, opened read-only, to a worker
    /// that loads it with `Runtime::load_open_file`.
    pub fn artifact_path(&self) -> Option<&Path> {
        self.inner.artifact.as_deref()
    }

    /// The compiled module; `None` for a component.
    pub fn module(&self) -> Option<&Module> {
        match &self.inner.code {
            Code::Module { module, .. } => Some(module),
            Code::Component(_) => None,
        }
    }

    /// The compiled component; `None` for a core module.
    pub fn component(&self) -> Option<&wasmtime::component::Component> {
        match &self.inner.code {
            Code::Module { .. } => None,
            Code::Component(c) => Some(&c.component),
        }
    }

    /// Whether this is a component (of either world).
    pub fn is_component(&self) -> bool {
        matches!(self.inner.code, Code::Component(_))
    }

    /// Whether this is a component exporting `wasi:http/incoming-handler`,
    /// to be called with [`crate::http::handle_http`].
    pub fn is_http_component(&self) -> bool {
        matches!(
            &self.inner.code,
            Code::Component(ComponentCode {
                world: World::Http(_),
                ..
            })
        )
    }

    /// The limits invocations get unless they bring their own.
    pub fn limits(&self) -> &Limits {
        &self.inner.limits
    }

    /// Whether this is a command: a module exporting `_start`, or a
    /// component exporting `wasi:cli/run`.
    pub fn is_command(&self) -> bool {
        match &self.inner.code {
            Code::Module { start, .. } => start.is_some(),
            Code::Component(c) => matches!(c.world, World::Command(_)),
        }
    }

    /// Runs one invocation on the calling thread and waits for it.
    ///
    /// A guest that traps, exits or exceeds a limit gives `Ok` with that
    /// [`Status`]; `Err` means the invocation could not be set up. When
    /// every pool slot is busy this reports `PoolFull` at once.
    ///
    /// The invocation is the future [`Function::invoke_async`] awaits, driven
    /// here by a current-thread tokio runtime that each calling thread keeps
    /// (so the invocation never leaves the thread). Called from inside a
    /// tokio runtime, it runs on a helper thread instead (tokio forbids
    /// blocking there): use `invoke_async` in async code.
    pub fn invoke(&self, mut inv: Invocation) -> Result<Outcome, Error> {
        let context = std::mem::take(&mut inv.context);
        let start = self.start(&inv)?;
        // Pinned where it is made, never moved (see `metered`).
        let run = pin!(self.metered(&inv, start, context));
        let outcome = executor::block_on(run)??;
        if matches!(outcome.status, Status::LimitExceeded(_)) {
            // A filesystem call it may have left running is not the next
            // invocation's (see `fs_cpu`).
            executor::retire_local_runtime();
        }
        Ok(outcome)
    }

    /// One invocation as a future, for async servers: polled by the
    /// caller's tokio runtime (which must have time and IO enabled, as
    /// `Builder::enable_all` does), it never blocks a thread or parks one
    /// of the blocking pool; a guest waiting on WASI (a sleep, stdin, a full
    /// pipe) is a pending future, and one with a time budget yields every
    /// epoch tick. Dropping the future cancels the invocation. When every
    /// pool slot is busy with async invocations this waits for one to free
    /// up, where [`Function::invoke`] reports `PoolFull`.
    pub async fn invoke_async(&self, mut inv: Invocation) -> Result<Outcome, Error> {
        let _slot = self.async_slot().await?;
        let context = std::mem::take(&mut inv.context);
        let start = self.start(&inv)?;
        pin!(self.metered(&inv, start, context)).await
    }

    /// Waits for a pool slot for an async invocation (held until the
    /// returned permit drops).
    pub(crate) async fn async_slot(&self) -> Result<tokio::sync::SemaphorePermit<'_>, Error> {
        self.inner
            .executor
            .slots
            .acquire()
            .await
            .map_err(|e| Error::Setup(format!("runtime is shutting down: {e}")))
    }

    /// The invocation as a future, metered (its CPU time read around every
    /// poll), for a module or a command component: resolves to its outcome.
    async fn metered(
        &self,
        inv: &Invocation,
        start: Start<'_>,
        context: Context,
    ) -> Result<Outcome, Error> {
        let wall_start = start.wall_start;
        let meter = start.meter.clone();
        let probe = start.probe.clone();
        // Futures are pinned where they are made and awaited through the
        // pin (here and below): awaiting one made in the same statement
        // keeps a moved-from copy of it in this future's state too, so
        // every level doubled the whole invocation's future (it was 5.8 KiB,
        // copied several times per invocation).
        if let Code::Component(c) = &self.inner.code {
            let run = pin!(self.run_command(c, inv, start, context));
            let (finished, cpu_time) = Metered::new(run, meter).with_probe(probe).await;
            return Ok(finished?.outcome(wall_start, cpu_time));
        }
        let run = pin!(self.run(inv, start, context));
        let (finished, cpu_time) = Metered::new(run, meter).with_probe(probe).await;
        Ok(finished?.outcome(wall_start, cpu_time))
    }

    /// Checks the invocation, and starts its clock and (with time limits)
    /// its budget, which reads the CPU used so far from the meter.
    pub(crate) fn start<'a>(&'a self, inv: &'a Invocation) -> Result<Start<'a>, Error> {
        let limits = inv.limits.as_ref().unwrap_or(&self.inner.limits);
        self.check_limits(limits)?;
        self.check_entry(&inv.entry)?;
        Ok(self.start_clock(limits, inv.probe.clone()))
    }

    /// Starts an invocation's clock and (with time limits) its budget;
    /// `probe`, if any, is kept up to date as it runs.
    pub(crate) fn start_clock<'a>(
        &self,
        limits: &'a Limits,
        probe: Option<UsageProbe>,
    ) -> Start<'a> {
        let wall_start = Instant::now();
        let meter = (limits.cpu_time.is_some() || limits.timeout.is_some())
            .then(|| Arc::new(CpuMeter::default()));
        let budget = meter
            .clone()
            .map(|m| TimeBudget::new(limits, wall_start, m));
        Start {
            limits,
            wall_start,
            meter,
            budget,
            probe,
        }
    }

    /// The metered part: WASI, store, instance, the call under the wall-clock
    /// timeout, and the status.
    async fn run(
        &self,
        inv: &Invocation,
        start: Start<'_>,
        context: Context,
    ) -> Result<Finished, Error> {
        let limits = start.limits;
        let run = pin!(start.in_fresh_store(
            &self.inner.executor,
            wasi::build(inv, limits)?,
            context,
            async |store| {
                let call = pin!(self.call(store, &inv.entry, inv.gate.as_ref()));
                call.await
            },
        ));
        Ok(run.await)
    }

    /// The same for a `wasi:cli/run` component.
    async fn run_command(
        &self,
        code: &ComponentCode,
        inv: &Invocation,
        start: Start<'_>,
        context: Context,
    ) -> Result<Finished<ComponentCtx>, Error> {
        let World::Command(pre) = &code.world else {
            return Err(Error::Entry(
                "this is a wasi:http component: it serves requests (`wasmlet serve`, or `handle_http`), it does not run as a command".into(),
            ));
        };
        let wasi = wasi::build_p2(inv, start.limits)?
            .map(|ctx| ComponentCtx::new(ctx, code.outbound.clone()));
        Ok(start
            .in_fresh_store(&self.inner.executor, wasi, context, async |store| {
                component::run_command(pre, store, inv.gate.as_ref())
                    .await
                    .map(Status::Exited)
            })
            .await)
    }

    /// Checks the entry point exists and the arguments match its parameters.
    fn check_entry(&self, entry: &Entry) -> Result<(), Error> {
        let (module, has_start) = match &self.inner.code {
            Code::Module { module, start, .. } => (module, start.is_some()),
            Code::Component(_) => {
                return match entry {
                    Entry::Start => Ok(()),
                    Entry::Export { .. } => Err(Error::Entry(
                        "components run through wasi:cli/run (or serve wasi:http); calling a named export is for core modules".into(),
                    )),
                };
            }
        };
        match entry {
            Entry::Start if has_start => Ok(()),
            Entry::Start => Err(Error::Entry(
                "module has no `_start` export (is it a reactor? name an export to call, e.g. with --invoke)"
                    .into(),
            )),
            Entry::Export { name, params } => {
                let Some(ExternType::Func(ty)) = module.get_export(name) else {
                    let exports: Vec<_> = module
                        .exports()
                        .filter(|e| matches!(e.ty(), ExternType::Func(_)))
                        .map(|e| e.name().to_string())
                        .collect();
                    return Err(Error::Entry(format!(
                        "module has no exported function `{name}` (it exports: {})",
                        if exports.is_empty() { "none".into() } else { exports.join(", ") }
                    )));
                };
                let want: Vec<ValType> = ty.params().collect();
                let ok = want.len() == params.len()
                    && want.iter().zip(params).all(|(t, v)| val_matches(t, v));
                if !ok {
                    return Err(Error::Entry(format!(
                        "export `{name}` takes ({}), got {} argument(s)",
                        want.iter().map(|t| t.to_string()).collect::<Vec<_>>().join(", "),
                        params.len()
                    )));
                }
                Ok(())
            }
        }
    }

    pub(crate) fn check_limits(&self, limits: &Limits) -> Result<(), Error> {
        let config = &self.inner.executor.config;
        if limits.max_memory > config.pool.max_memory {
            return Err(Error::Setup(format!(
                "memory limit {} is above the runtime's pool slot size {}",
                crate::error::Bytes(limits.max_memory),
                crate::error::Bytes(config.pool.max_memory)
            )));
        }
        if limits.fuel.is_some() && !config.fuel_metering {
            return Err(Error::Setup(
                "a fuel limit needs a runtime with fuel_metering enabled".into(),
            ));
        }
        Ok(())
    }

    /// Instantiates into a pooled slot and calls the entry point (once
    /// `gate`, if any, is open).
    async fn call(
        &self,
        store: &mut Store<StoreState>,
        entry: &Entry,
        gate: Option<&StartGate>,
    ) -> wasmtime::Result<Status> {
        let Code::Module {
            pre,
            start,
            initialize,
            ..
        } = &self.inner.code
        else {
            unreachable!("components are called through their world");
        };
        let instance = {
            let instantiate = pin!(pre.instantiate_async(&mut *store));
            instantiate.await?
        };
        if let Some(gate) = gate {
            gate.pass().await;
        }
        match entry {
            Entry::Start => {
                let start = export_func(&instance, store, start.as_ref(), "_start")?;
                let call = pin!(start.call_async(&mut *store, ()));
                call.await?;
                Ok(Status::Exited(0))
            }
            Entry::Export { name, params } => {
                if initialize.is_some() && name != "_initialize" {
                    let init = export_func(&instance, store, initialize.as_ref(), "_initialize")?;
                    let call = pin!(init.call_async(&mut *store, ()));
                    call.await?;
                }
                let func = instance
                    .get_func(&mut *store, name)
                    .expect("export checked before instantiation");
                let mut results = vec![Val::I32(0); func.ty(&*store).results().len()];
                func.call_async(&mut *store, params, &mut results).await?;
                Ok(Status::Returned(results))
            }
        }
    }
}

/// The `() -> ()` export found at load time as `export` (`name`, for the
/// error when it is missing or has another type).
pub(crate) fn export_func<T>(
    instance: &wasmtime::Instance,
    store: &mut Store<T>,
    export: Option<&ModuleExport>,
    name: &str,
) -> wasmtime::Result<wasmtime::TypedFunc<(), ()>> {
    export
        .and_then(|e| instance.get_module_export(&mut *store, e))
        .and_then(wasmtime::Extern::into_func)
        .ok_or_else(|| wasmtime::format_err!("module has no exported function `{name}`"))?
        .typed::<(), ()>(&*store)
}

impl Start<'_> {
    /// Runs `call` (instantiate, then the entry point's own work) in a
    /// fresh store holding `wasi` and the invocation's `context`, under the
    /// time limits (see [`guarded`]); then reads its status, fuel and peak
    /// memory. Every entry point (module, command, wasi:http, typed call)
    /// runs its guest through here.
    pub(crate) async fn in_fresh_store<W, C>(
        self,
        executor: &Executor,
        wasi: wasi::Wasi<W>,
        context: Context,
        call: C,
    ) -> Finished<W>
    where
        W: Send + 'static,
        C: AsyncFnOnce(&mut Store<StoreState<W>>) -> wasmtime::Result<Status>,
    {
        let Start {
            limits,
            wall_start,
            meter,
            budget,
            probe,
        } = self;
        let fuel_start = executor.fuel_start(limits);
        let budgeted = budget.is_some();
        let mut store = new_store(
            &executor.engine,
            wasi.ctx,
            limits,
            fuel_start,
            budget,
            probe,
        );
        store.data_mut().context = context;
        let result = {
            let call = pin!(call(&mut store));
            let guarded = pin!(guarded(executor, limits, wall_start, budgeted, meter, call));
            guarded.await
        };
        let fuel_consumed = fuel_start.map(|f| f - store.get_fuel().unwrap_or(0));
        let status = match result {
            Ok(status) => status,
            Err(e) => classify(
                e,
                &store.data().limiter,
                limits,
                executor.config.pool.instances,
            ),
        };
        Finished {
            status,
            fuel_consumed,
            peak_memory: store.data().limiter.peak_memory,
            stdout: wasi.stdout,
            stderr: wasi.stderr,
            store,
        }
    }
}

/// Runs a guest call under the invocation's time limits: the epoch ticks
/// while it runs with a budget, and the wall-clock timer stops one that
/// waits past the timeout (in a host call); the epoch callback stops one
/// that computes past it. A host function's panic becomes the call's error
/// (see [`CatchPanic`]).
async fn guarded<F>(
    executor: &Executor,
    limits: &Limits,
    wall_start: Instant,
    budgeted: bool,
    meter: Option<Arc<CpuMeter>>,
    call: F,
) -> wasmtime::Result<Status>
where
    F: Future<Output = wasmtime::Result<Status>>,
{
    // Only invocations with a time budget need the epoch to advance; how
    // often depends on the smallest of their limits (see `EpochTicker`).
    let _ticking = budgeted.then(|| {
        let smallest = [limits.cpu_time, limits.timeout]
            .into_iter()
            .flatten()
            .min();
        executor.ticker.enter(smallest.unwrap_or(Duration::MAX))
    });
    // The epoch callback stops a guest that runs past the deadline; the
    // timer also stops one that waits past it (in a host call), and the
    // CPU watch one whose waiting costs CPU elsewhere (filesystem calls).
    let call = CpuWatch::new(CatchPanic::new(call), meter.zip(limits.cpu_time));
    Deadline::new(call, limits.timeout.and_then(|t| deadline(wall_start, t))).await
}

fn val_matches(ty: &ValType, v: &Val) -> bool {
    matches!(
        (ty, v),
        (ValType::I32, Val::I32(_))
            | (ValType::I64, Val::I64(_))
            | (ValType::F32, Val::F32(_))
            | (ValType::F64, Val::F64(_))
            | (ValType::V128, Val::V128(_))
    ) || (matches!(ty, ValType::Ref(_))
        && matches!(
            v,
            Val::FuncRef(_) | Val::ExternRef(_) | Val::AnyRef(_) | Val::ExnRef(_)
        ))
}

/// Turns the error a guest run ended with into its status.
fn classify(
    err: wasmtime::Error,
    limiter: &StoreLimiter,
    limits: &Limits,
    pool_instances: u32,
) -> Status {
    if let Some(exit) = err.downcast_ref::<I32Exit>() {
        return Status::Exited(exit.0);
    }
    if let Some(limit) = err.downcast_ref::<LimitExceeded>() {
        return Status::LimitExceeded(*limit);
    }
    if let Some(Trap::OutOfFuel) = err.downcast_ref::<Trap>() {
        return Status::LimitExceeded(LimitExceeded::Fuel(limits.fuel.unwrap_or(u64::MAX)));
    }
    if let Some(p) = err.downcast_ref::<PoolConcurrencyLimitError>() {
        tracing::debug!("{p}");
        return Status::LimitExceeded(LimitExceeded::PoolFull(pool_instances));
    }
    if let Some(limit) = limiter.refused {
        // The guest failed after being refused memory or table space.
        return Status::LimitExceeded(limit);
    }
    Status::Trapped(trap_message(&err))
}

/// One line naming the trap and where it happened.
fn trap_message(err: &wasmtime::Error) -> String {
    let what = match err.downcast_ref::<Trap>() {
        Some(trap) => {
            let msg = trap.to_string();
            msg.strip_prefix("wasm trap: ").unwrap_or(&msg).to_string()
        }
        None => err.root_cause().to_string(),
    };
    let place = err.downcast_ref::<WasmBacktrace>().and_then(|bt| {
        bt.frames()
            .iter()
            .find_map(|f| f.func_name().map(str::to_string))
    });
    match place {
        Some(func) => format!("{what} (in function `{func}`)"),
        None => what,
    }
}
