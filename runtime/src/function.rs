//! [`Function`]: a compiled, linked module, and running one invocation of it
//! in a fresh store and instance.

use crate::config::Limits;
use crate::error::{Error, LimitExceeded};
use crate::invocation::{Entry, Input, Invocation, Outcome, Output, Status};
use crate::limiter::{StoreLimiter, TimeBudget};
use crate::runtime::Runtime;
use crate::usage::{Usage, thread_cpu_time};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;
use wasmtime::{
    ExternType, InstancePre, Module, PoolConcurrencyLimitError, Store, Trap, UpdateDeadline, Val,
    ValType, WasmBacktrace,
};
use wasmtime_wasi::cli::{InputFile, OutputFile};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::p2::pipe::{MemoryInputPipe, MemoryOutputPipe};
use wasmtime_wasi::{FsPerms, I32Exit, WasiCtxBuilder};

/// What a store holds for one invocation.
pub(crate) struct StoreState {
    pub(crate) wasi: WasiP1Ctx,
    limiter: StoreLimiter,
    budget: Option<TimeBudget>,
}

impl StoreState {
    /// A state with an empty WASI context (for introspecting the linker).
    pub(crate) fn empty(limits: &Limits) -> Self {
        StoreState {
            wasi: WasiCtxBuilder::new().build_p1(),
            limiter: StoreLimiter::new(limits),
            budget: None,
        }
    }
}

/// A module ready to run: compiled, its imports resolved once into an
/// `InstancePre`. Cheap to clone and safe to invoke from many threads at
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
            .field("is_command", &self.inner.has_start)
            .finish_non_exhaustive()
    }
}

struct FunctionInner {
    runtime: Runtime,
    module: Module,
    pre: InstancePre<StoreState>,
    limits: Limits,
    has_start: bool,
    has_initialize: bool,
    /// The cache entry or `.cwasm` the code is mapped from (or was written
    /// to), if any.
    artifact: Option<PathBuf>,
}

impl Function {
    pub(crate) fn new(
        runtime: Runtime,
        module: Module,
        pre: InstancePre<StoreState>,
        limits: Limits,
        artifact: Option<PathBuf>,
    ) -> Self {
        let is_func = |name| matches!(module.get_export(name), Some(ExternType::Func(_)));
        let has_start = is_func("_start");
        let has_initialize = is_func("_initialize");
        Function {
            inner: Arc::new(FunctionInner {
                runtime,
                pre,
                limits,
                has_start,
                has_initialize,
                module,
                artifact,
            }),
        }
    }

    /// The precompiled artifact file this function's code comes from (a
    /// cache entry, or the `.cwasm` it was loaded from), if there is one: a
    /// more privileged process can hand it, opened read-only, to a worker
    /// that loads it with `Runtime::load_open_file`.
    pub fn artifact_path(&self) -> Option<&Path> {
        self.inner.artifact.as_deref()
    }

    /// The compiled module.
    pub fn module(&self) -> &Module {
        &self.inner.module
    }

    /// The limits invocations get unless they bring their own.
    pub fn limits(&self) -> &Limits {
        &self.inner.limits
    }

    /// Whether this is a command (exports `_start`).
    pub fn is_command(&self) -> bool {
        self.inner.has_start
    }

    /// Runs one invocation on the calling thread and waits for it.
    ///
    /// A guest that traps, exits or exceeds a limit gives `Ok` with that
    /// [`Status`]; `Err` means the invocation could not be set up.
    pub fn invoke(&self, inv: Invocation) -> Result<Outcome, Error> {
        let inner = &*self.inner;
        let limits = inv.limits.as_ref().unwrap_or(&inner.limits);
        self.check_limits(limits)?;
        self.check_entry(&inv.entry)?;

        let wall_start = Instant::now();
        let cpu_start = thread_cpu_time();
        let (wasi, stdout, stderr) = build_wasi(&inv, limits)?;
        let budget = TimeBudget::start(limits, wall_start, cpu_start);
        let engine = inner.runtime.engine();
        let mut store = Store::new(
            engine,
            StoreState {
                wasi,
                limiter: StoreLimiter::new(limits),
                budget: (!budget.is_unlimited()).then_some(budget),
            },
        );
        store.limiter(|s| &mut s.limiter);
        let fuel_start = inner
            .runtime
            .config()
            .fuel_metering
            .then(|| limits.fuel.unwrap_or(u64::MAX));
        if let Some(fuel) = fuel_start {
            store.set_fuel(fuel).expect("fuel metering is enabled");
        }
        if store.data().budget.is_some() {
            store.set_epoch_deadline(1);
            store.epoch_deadline_callback(|ctx| {
                let budget = ctx.data().budget.expect("budget set");
                match budget.check() {
                    Ok(()) => Ok(UpdateDeadline::Continue(1)),
                    Err(limit) => Err(limit.into()),
                }
            });
        } else {
            // No time limit: never interrupt.
            store.set_epoch_deadline(u64::MAX / 2);
        }

        let result = {
            // Only invocations with a time budget need the epoch to advance.
            let _ticking = store
                .data()
                .budget
                .is_some()
                .then(|| inner.runtime.inner.ticker.enter());
            self.run(&mut store, &inv.entry)
        };
        let fuel_consumed = fuel_start.map(|f| f - store.get_fuel().unwrap_or(0));
        let usage = Usage::new(
            wall_start.elapsed(),
            thread_cpu_time().saturating_sub(cpu_start),
            fuel_consumed,
            store.data().limiter.peak_memory,
        );
        let status = match result {
            Ok(status) => status,
            Err(e) => classify(
                e,
                &store.data().limiter,
                limits,
                inner.runtime.config().pool.instances,
            ),
        };
        drop(store);
        Ok(Outcome {
            status,
            usage,
            stdout: stdout.map(|p| p.contents()),
            stderr: stderr.map(|p| p.contents()),
        })
    }

    /// Runs [`Function::invoke`] on tokio's blocking pool, so async servers
    /// can await invocations without stalling their reactor. The invocation
    /// keeps one thread for its whole run, so its CPU clock is exact. When
    /// every pool slot is busy with async invocations this waits for one to
    /// free up, where [`Function::invoke`] reports `PoolFull`.
    pub async fn invoke_async(&self, inv: Invocation) -> Result<Outcome, Error> {
        let slot = (self.inner.runtime.inner.slots.clone())
            .acquire_owned()
            .await
            .map_err(|e| Error::Setup(format!("runtime is shutting down: {e}")))?;
        let f = self.clone();
        tokio::task::spawn_blocking(move || {
            let _slot = slot;
            f.invoke(inv)
        })
        .await
        .map_err(|e| Error::Setup(format!("invocation task failed: {e}")))?
    }

    /// Checks the entry point exists and the arguments match its parameters.
    fn check_entry(&self, entry: &Entry) -> Result<(), Error> {
        match entry {
            Entry::Start if self.inner.has_start => Ok(()),
            Entry::Start => Err(Error::Entry(
                "module has no `_start` export (is it a reactor? name an export to call, e.g. with --invoke)"
                    .into(),
            )),
            Entry::Export { name, params } => {
                let Some(ExternType::Func(ty)) = self.inner.module.get_export(name) else {
                    let exports: Vec<_> = self
                        .inner
                        .module
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

    fn check_limits(&self, limits: &Limits) -> Result<(), Error> {
        let config = self.inner.runtime.config();
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

    fn run(&self, store: &mut Store<StoreState>, entry: &Entry) -> wasmtime::Result<Status> {
        let instance = self.inner.pre.instantiate(&mut *store)?;
        match entry {
            Entry::Start => {
                let start = instance.get_typed_func::<(), ()>(&mut *store, "_start")?;
                start.call(&mut *store, ())?;
                Ok(Status::Exited(0))
            }
            Entry::Export { name, params } => {
                if self.inner.has_initialize && name != "_initialize" {
                    let init = instance.get_typed_func::<(), ()>(&mut *store, "_initialize")?;
                    init.call(&mut *store, ())?;
                }
                let func = instance
                    .get_func(&mut *store, name)
                    .expect("export checked before instantiation");
                let mut results = vec![Val::I32(0); func.ty(&*store).results().len()];
                func.call(&mut *store, params, &mut results)?;
                Ok(Status::Returned(results))
            }
        }
    }
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

type Pipes = (
    WasiP1Ctx,
    Option<MemoryOutputPipe>,
    Option<MemoryOutputPipe>,
);

/// The WASI context of one invocation: exactly what it was given.
fn build_wasi(inv: &Invocation, limits: &Limits) -> Result<Pipes, Error> {
    let mut b = WasiCtxBuilder::new();
    b.allow_blocking_current_thread(true)
        .args(&inv.args)
        .envs(&inv.env);
    for dir in &inv.dirs {
        let perms = if dir.read_only {
            FsPerms::ReadOnly
        } else {
            FsPerms::ReadWrite
        };
        b.preopened_dir(&dir.host, &dir.guest, perms).map_err(|e| {
            Error::Setup(format!(
                "cannot open directory {}: {e:#}",
                dir.host.display()
            ))
        })?;
    }
    match &inv.stdin {
        Input::Null => {}
        Input::Bytes(bytes) => {
            b.stdin(MemoryInputPipe::new(bytes.clone()));
        }
        Input::Inherit => {
            b.inherit_stdin();
        }
        Input::File(f) => {
            let f = f
                .try_clone()
                .map_err(|e| Error::Setup(format!("stdin: {e}")))?;
            b.stdin(InputFile::new(f));
        }
    }
    let capture = |out: &Output| {
        matches!(out, Output::Capture).then(|| MemoryOutputPipe::new(limits.max_captured_output))
    };
    let stdout = capture(&inv.stdout);
    let stderr = capture(&inv.stderr);
    match (&inv.stdout, &stdout) {
        (_, Some(pipe)) => {
            b.stdout(pipe.clone());
        }
        (Output::Inherit, _) => {
            b.inherit_stdout();
        }
        (Output::File(f), _) => {
            let f = f
                .try_clone()
                .map_err(|e| Error::Setup(format!("stdout: {e}")))?;
            b.stdout(OutputFile::new(f));
        }
        _ => {}
    }
    match (&inv.stderr, &stderr) {
        (_, Some(pipe)) => {
            b.stderr(pipe.clone());
        }
        (Output::Inherit, _) => {
            b.inherit_stderr();
        }
        (Output::File(f), _) => {
            let f = f
                .try_clone()
                .map_err(|e| Error::Setup(format!("stderr: {e}")))?;
            b.stderr(OutputFile::new(f));
        }
        _ => {}
    }
    Ok((b.build_p1(), stdout, stderr))
}
