//! [`Executor`]: what every invocation of every function of one runtime
//! shares (the engine, the epoch ticker, the pool's slot permits and the
//! configuration), and [`block_on`], which runs an invocation's future to
//! completion on the calling thread for the synchronous `Function::invoke`.

use crate::config::RuntimeConfig;
use crate::engine::EpochTicker;
use crate::error::Error;
use std::cell::OnceCell;
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
/// calls. Shut down without waiting when the thread ends, so a filesystem
/// call that never returns cannot hang the thread's (or process's) exit.
struct LocalRuntime(OnceCell<tokio::runtime::Runtime>);

impl Drop for LocalRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

thread_local! {
    static LOCAL: LocalRuntime = const { LocalRuntime(OnceCell::new()) };
}

/// Runs `fut` to completion on the calling thread.
///
/// Outside any tokio runtime (the usual case for a synchronous caller) this
/// polls it on the thread's own current-thread runtime, so the invocation
/// never leaves the thread. tokio refuses to block inside a runtime, so a
/// caller that is itself inside one (a task, or a thread of a blocking pool)
/// gets a helper thread for the call, which costs a thread start; such
/// callers should use `Function::invoke_async`.
pub(crate) fn block_on<F>(fut: F) -> Result<F::Output, Error>
where
    F: Future + Send,
    F::Output: Send,
{
    if tokio::runtime::Handle::try_current().is_ok() {
        return std::thread::scope(|s| {
            std::thread::Builder::new()
                .name("wasmlet-invoke".into())
                .spawn_scoped(s, || block_on_here(fut))
                .map_err(|e| Error::Setup(format!("cannot start an invocation thread: {e}")))?
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        });
    }
    block_on_here(fut)
}

fn block_on_here<F: Future>(fut: F) -> Result<F::Output, Error> {
    let mut fut = std::pin::pin!(fut);
    LOCAL.with(|local| {
        let rt = match local.0.get() {
            Some(rt) => rt,
            None => {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .max_blocking_threads(WASI_BLOCKING_THREADS)
                    .thread_name("wasmlet-wasi-fs")
                    .build()
                    .map_err(|e| Error::Setup(format!("cannot start an async runtime: {e}")))?;
                local.0.get_or_init(|| rt)
            }
        };
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
                    rt.block_on(tokio::task::yield_now());
                }
                return Ok(out);
            }
        }
        Ok(rt.block_on(fut))
    })
}
