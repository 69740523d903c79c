//! [`Executor`]: what every invocation of every function of one runtime
//! shares (the engine, the epoch ticker, the pool's slot permits and the
//! configuration), and [`block_on`], which runs an invocation's future to
//! completion on the calling thread for the synchronous `Function::invoke`.

use crate::config::RuntimeConfig;
use crate::error::Error;
use crate::fs_cpu::{self, PoolCpu};
use crate::ticker::EpochTicker;
use std::cell::RefCell;
use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use tokio::sync::Semaphore;
use wasmtime::Engine;

/// Threads each calling thread's runtime may start for WASI filesystem calls
/// (wasmtime-wasi runs them on tokio's blocking pool). An invocation makes
/// one such call at a time; the rest are for calls an earlier, cancelled
/// invocation left running (see `Limits`). More calls wait for a thread.
pub(crate) const WASI_BLOCKING_THREADS: usize = 4;

/// Shared by a runtime and all its functions.
pub(crate) struct Executor {
    pub(crate) engine: Engine,
    pub(crate) config: RuntimeConfig,
    /// Advances the epoch while invocations with a time budget run.
    pub(crate) ticker: EpochTicker,
    /// One permit per pool slot: `invoke_async` waits for a free slot
    /// instead of failing when the pool is full.
    pub(crate) slots: Arc<Semaphore>,
}

impl Executor {
    /// The fuel an invocation under `limits` starts with, when the engine
    /// meters fuel.
    pub(crate) fn fuel_start(&self, limits: &crate::config::Limits) -> Option<u64> {
        self.config
            .fuel_metering
            .then(|| limits.fuel.unwrap_or(u64::MAX))
    }

    pub(crate) fn new(engine: Engine, config: RuntimeConfig) -> Result<Self, Error> {
        let ticker = EpochTicker::start(engine.clone(), config.epoch_tick)?;
        let slots = Arc::new(Semaphore::new(config.pool.instances as usize));
        Ok(Executor {
            engine,
            config,
            ticker,
            slots,
        })
    }
}

/// A current-thread tokio runtime per calling thread, built on first use:
/// its timer and reactor serve the invocations this thread blocks on, and
/// its blocking pool (at most [`WASI_BLOCKING_THREADS`]) their filesystem
/// calls, whose CPU time its [`PoolCpu`] follows. Shut down without waiting
/// when the thread ends (or the runtime is retired), so a filesystem call
/// that never returns cannot hang the thread's (or process's) exit.
struct LocalRuntime(RefCell<Option<Local>>);

struct Local {
    rt: tokio::runtime::Runtime,
    pool: Arc<PoolCpu>,
}

impl Drop for LocalRuntime {
    fn drop(&mut self) {
        if let Some(local) = self.0.take() {
            local.rt.shutdown_background();
        }
    }
}

thread_local! {
    static LOCAL: LocalRuntime = const { LocalRuntime(RefCell::new(None)) };
}

impl Local {
    fn new() -> Result<Local, Error> {
        let pool = Arc::new(PoolCpu::default());
        let (started, stopping) = (pool.clone(), pool.clone());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .max_blocking_threads(WASI_BLOCKING_THREADS)
            .thread_name("wasmlet-wasi-fs")
            // A current-thread runtime starts no workers: these run on its
            // blocking pool's threads only.
            .on_thread_start(move || started.thread_started())
            .on_thread_stop(move || stopping.thread_stopping())
            .build()
            .map_err(|e| Error::Setup(format!("cannot start an async runtime: {e}")))?;
        Ok(Local { rt, pool })
    }
}

/// Runs `fut` to completion on the calling thread.
///
/// Outside any tokio runtime (the usual case for a synchronous caller) this
/// polls it on the thread's own current-thread runtime, so the invocation
/// never leaves the thread, with that runtime's [`PoolCpu`] active (see
/// [`crate::fs_cpu`]). tokio refuses to block inside a runtime, so a caller
/// that is itself inside one (a task, or a thread of a blocking pool) gets
/// a helper thread for the call, which costs a thread start; such callers
/// should use `Function::invoke_async`.
pub(crate) fn block_on<F>(fut: F) -> Result<F::Output, Error>
where
    F: Future + Send,
    F::Output: Send,
{
    wasmlet_snapshotter::blocking::outside_async_context("wasmlet-invoke", || block_on_here(fut))
        .map_err(|e| Error::Setup(format!("cannot start an invocation thread: {e}")))?
}

/// Replaces the calling thread's runtime if its blocking pool has ever run
/// a call: after a stopped invocation, a filesystem call it left running
/// finishes on the old pool instead of being charged to the next
/// invocation. (Called on the thread `block_on` ran on.)
pub(crate) fn retire_local_runtime() {
    LOCAL.with(|local| {
        let mut slot = local.0.borrow_mut();
        if slot.as_ref().is_some_and(|l| l.pool.used())
            && let Some(old) = slot.take()
        {
            old.rt.shutdown_background();
        }
    });
}

fn block_on_here<F: Future>(fut: F) -> Result<F::Output, Error> {
    let mut fut = std::pin::pin!(fut);
    let (rt, pool) = LOCAL.with(|local| {
        let mut slot = local.0.borrow_mut();
        if slot.is_none() {
            *slot = Some(Local::new()?);
        }
        let l = slot.as_ref().expect("just set");
        Ok::<_, Error>((l.rt.handle().clone(), l.pool.clone()))
    })?;
    fs_cpu::with_active(&pool, || {
        // Most invocations never wait: poll once in the runtime's context
        // (its timer, reactor and blocking pool are then the ones in use),
        // which costs less than entering its scheduler. One that is
        // pending is handed to the scheduler, whose first poll registers its
        // waker (the no-op one here never wakes anything).
        {
            let _context = rt.enter();
            let mut cx = Context::from_waker(Waker::noop());
            if let Poll::Ready(out) = fut.as_mut().poll(&mut cx) {
                drop(_context);
                // Tasks it spawned (wasmtime-wasi's stream writers) were
                // aborted when it dropped them; let the scheduler free them.
                if rt.metrics().num_alive_tasks() > 0 {
                    LOCAL.with(|local| {
                        if let Some(l) = local.0.borrow().as_ref() {
                            l.rt.block_on(tokio::task::yield_now());
                        }
                    });
                }
                return Ok(out);
            }
        }
        LOCAL.with(|local| {
            let slot = local.0.borrow();
            let l = slot
                .as_ref()
                .expect("set above, and only retired by the caller");
            Ok(l.rt.block_on(fut))
        })
    })
}
