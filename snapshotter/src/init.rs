//! Running init: the instrumented module is instantiated in wasmtime under
//! limits, `_initialize` and the init function run, and wizer reads the
//! resulting state through [`InitState`].
//!
//! Init runs as a future (async WASI, `instantiate_async`, `call_async`) on a
//! current-thread tokio runtime, under `tokio::time::timeout`: an init that
//! waits in WASI (a sleep, a read) is dropped at its timeout, and one that
//! computes is interrupted by the epoch, which a watchdog advances at the
//! timeout.

use crate::error::SnapshotError;
use crate::options::SnapshotOptions;
use std::future::Future;
use std::sync::mpsc;
use std::task::{Context, Poll, Waker};
use wasmtime::{
    Config, Engine, Extern, Instance, Linker, Module, Store, StoreLimits, StoreLimitsBuilder, Trap,
    Val,
};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::{FsPerms, WasiCtxBuilder};
use wasmtime_wizer::{InstanceState, ModuleContext, SnapshotVal, ValType, Wizer};

/// WASI module names whose imports `allow_wasi` governs.
const WASI_MODULES: [&str; 2] = ["wasi_snapshot_preview1", "wasi_unstable"];

struct Host {
    wasi: WasiP1Ctx,
    limits: StoreLimits,
}

/// The error of an import init may not call: WASI when init is not
/// allowed WASI, or an embedder's host function (see
/// `SnapshotOptions::host_imports`).
#[derive(Debug)]
enum Refused {
    Wasi(String),
    Host(String),
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refused::Wasi(name) => write!(f, "WASI call `{name}` during init"),
            Refused::Host(name) => write!(f, "host function `{name}` called during init"),
        }
    }
}

impl std::error::Error for Refused {}

fn engine() -> Result<Engine, SnapshotError> {
    let mut c = Config::new();
    crate::enable_wasm_features(&mut c).epoch_interruption(true);
    Engine::new(&c).map_err(|e| SnapshotError::Internal(format!("engine: {e:#}")))
}

/// Instantiates `instrumented`, runs init, and returns the snapshot.
pub(crate) fn run_and_snapshot(
    wizer: &Wizer,
    cx: &ModuleContext<'_>,
    instrumented: &[u8],
    init_func: &str,
    opts: &SnapshotOptions,
) -> Result<Vec<u8>, SnapshotError> {
    let engine = engine()?;
    let module =
        Module::new(&engine, instrumented).map_err(|e| SnapshotError::Invalid(format!("{e:#}")))?;
    let linker = linker(&engine, &module, opts)?;

    let mut wasi = WasiCtxBuilder::new();
    // Not blocking the thread: WASI's sleep then waits on tokio's timer,
    // which the timeout can cut short.
    wasi.allow_blocking_current_thread(false).envs(&opts.env);
    for (host, guest) in &opts.dirs {
        wasi.preopened_dir(host, guest, FsPerms::ReadWrite)
            .map_err(|e| SnapshotError::Setup(format!("cannot open {}: {e:#}", host.display())))?;
    }
    let limits = StoreLimitsBuilder::new()
        .memory_size(usize::try_from(opts.max_memory).unwrap_or(usize::MAX))
        .trap_on_grow_failure(true)
        .build();
    let mut store = Store::new(
        &engine,
        Host {
            wasi: wasi.build_p1(),
            limits,
        },
    );
    store.limiter(|h| &mut h.limits);
    store.set_epoch_deadline(1);

    // The watchdog ends init at the timeout; dropping `_stop` releases it.
    let (_stop, stopped) = mpsc::channel::<()>();
    let watchdog_engine = engine.clone();
    let timeout = opts.timeout;
    std::thread::spawn(move || {
        if stopped.recv_timeout(timeout) == Err(mpsc::RecvTimeoutError::Timeout) {
            watchdog_engine.increment_epoch();
        }
    });

    let init = async {
        let instance = linker
            .instantiate_async(&mut store, &module)
            .await
            .map_err(|e| init_error(e, opts, "instantiation"))?;
        call_init(&mut store, &instance, init_func)
            .await
            .map_err(|e| init_error(e, opts, init_func))?;
        Ok::<_, SnapshotError>(instance)
    };
    // (The timer is made inside the runtime, which it needs.)
    let instance = run_async(async { tokio::time::timeout(timeout, init).await })?
        .map_err(|_elapsed| time_limit(opts))??;

    let mut state = InitState {
        store: &mut store,
        instance,
    };
    block_on(wizer.snapshot(cx, &mut state)).map_err(|e| SnapshotError::Internal(format!("{e:#}")))
}

/// WASI (real or refusing), and what to do with other imports.
fn linker(
    engine: &Engine,
    module: &Module,
    opts: &SnapshotOptions,
) -> Result<Linker<Host>, SnapshotError> {
    let mut linker: Linker<Host> = Linker::new(engine);
    if opts.allow_wasi {
        wasmtime_wasi::p1::add_to_linker_async(&mut linker, |h: &mut Host| &mut h.wasi)
            .map_err(|e| SnapshotError::Internal(format!("{e:#}")))?;
    }
    let mut unknown = Vec::new();
    for import in module.imports() {
        let name = format!("{}::{}", import.module(), import.name());
        let wasi = WASI_MODULES.contains(&import.module());
        if opts.allow_wasi && wasi {
            continue;
        }
        match import.ty() {
            wasmtime::ExternType::Func(ty) if wasi => {
                linker
                    .func_new(import.module(), import.name(), ty, move |_, _, _| {
                        Err(Refused::Wasi(name.clone()).into())
                    })
                    .map_err(|e| SnapshotError::Internal(format!("{e:#}")))?;
            }
            wasmtime::ExternType::Func(ty) if opts.host_imports.contains(&name) => {
                linker
                    .func_new(import.module(), import.name(), ty, move |_, _, _| {
                        Err(Refused::Host(name.clone()).into())
                    })
                    .map_err(|e| SnapshotError::Internal(format!("{e:#}")))?;
            }
            _ if opts.trap_unknown_imports => {}
            _ => unknown.push(name),
        }
    }
    if !unknown.is_empty() {
        return Err(SnapshotError::UnknownImports(unknown));
    }
    if opts.trap_unknown_imports {
        linker
            .define_unknown_imports_as_traps(module)
            .map_err(|e| SnapshotError::Internal(format!("{e:#}")))?;
    }
    Ok(linker)
}

/// `_initialize` (if exported), then the init function, as wizer does.
async fn call_init(
    store: &mut Store<Host>,
    instance: &Instance,
    init_func: &str,
) -> wasmtime::Result<()> {
    if let Some(Extern::Func(f)) = instance.get_export(&mut *store, "_initialize") {
        f.typed::<(), ()>(&*store)?
            .call_async(&mut *store, ())
            .await?;
        if init_func == "_initialize" {
            return Ok(());
        }
    }
    let f = instance.get_typed_func::<(), ()>(&mut *store, init_func)?;
    f.call_async(&mut *store, ()).await
}

fn time_limit(opts: &SnapshotOptions) -> SnapshotError {
    SnapshotError::LimitExceeded(format!("time limit of {:?}", opts.timeout))
}

/// Runs `fut` to completion on a current-thread tokio runtime (WASI's timers
/// and streams need one). tokio refuses to block inside a runtime, so a
/// caller inside one (an async server snapshotting on load) gets a helper
/// thread for it.
fn run_async<F>(fut: F) -> Result<F::Output, SnapshotError>
where
    F: Future + Send,
    F::Output: Send,
{
    crate::blocking::outside_async_context("wasmlet-snapshot", || run_async_here(fut))
        .map_err(|e| SnapshotError::Internal(format!("cannot start a thread: {e}")))?
}

fn run_async_here<F: Future>(fut: F) -> Result<F::Output, SnapshotError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| SnapshotError::Internal(format!("cannot start an async runtime: {e}")))?;
    let out = rt.block_on(fut);
    // A filesystem call init left running (cut off by the timeout) is not
    // waited for.
    rt.shutdown_background();
    Ok(out)
}

fn init_error(e: wasmtime::Error, opts: &SnapshotOptions, during: &str) -> SnapshotError {
    match e.downcast_ref::<Refused>() {
        Some(Refused::Wasi(name)) => return SnapshotError::WasiDuringInit(name.clone()),
        Some(Refused::Host(name)) => {
            return SnapshotError::InitTrapped(format!(
                "init called the host function `{name}`, which pre-initialization does not have (the embedder's host functions are only the invocations')"
            ));
        }
        None => {}
    }
    if let Some(exit) = e.downcast_ref::<wasmtime_wasi::I32Exit>() {
        return SnapshotError::InitTrapped(format!("init called proc_exit({})", exit.0));
    }
    match e.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => time_limit(opts),
        Some(trap) => SnapshotError::InitTrapped(format!("{trap} (in {during})")),
        None => {
            let msg = format!("{}", e.root_cause());
            // wasmtime's StoreLimits words: "forcing trap when growing
            // memory" (trap_on_grow_failure) and "exceeds memory limits"
            // (an initial size above the limit).
            if msg.contains("growing memory") || msg.contains("exceeds memory limits") {
                SnapshotError::LimitExceeded(format!("memory limit of {} bytes", opts.max_memory))
            } else {
                SnapshotError::InitTrapped(format!("{msg} (in {during})"))
            }
        }
    }
}

/// Gives wizer the instance's globals and memories.
struct InitState<'a> {
    store: &'a mut Store<Host>,
    instance: Instance,
}

impl InstanceState for InitState<'_> {
    async fn global_get(&mut self, name: &str, _: ValType) -> SnapshotVal {
        let global = self
            .instance
            .get_global(&mut *self.store, name)
            .expect("wizer exports every global it reads");
        match global.get(&mut *self.store) {
            Val::I32(x) => SnapshotVal::I32(x),
            Val::I64(x) => SnapshotVal::I64(x),
            Val::F32(x) => SnapshotVal::F32(x),
            Val::F64(x) => SnapshotVal::F64(x),
            Val::V128(x) => SnapshotVal::V128(x.as_u128()),
            other => unreachable!("wizer refuses reference-typed mutable globals, got {other:?}"),
        }
    }

    async fn memory_contents(&mut self, name: &str, contents: impl FnOnce(&[u8]) + Send) {
        let memory = self
            .instance
            .get_memory(&mut *self.store, name)
            .expect("wizer exports every memory it reads");
        contents(memory.data(&*self.store))
    }
}

/// Drives a future that never waits (wizer's snapshot over in-memory
/// state) to completion on this thread.
fn block_on<F: std::future::Future>(fut: F) -> F::Output {
    let mut fut = std::pin::pin!(fut);
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::yield_now();
    }
}
