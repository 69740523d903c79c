//! The store of one invocation: what it holds ([`StoreState`]) and how it is
//! set up for the invocation's limits (memory and tables through the
//! limiter, fuel, and the epoch deadline that checks the time budget).
//!
//! `W` is the WASI state: a preview-1 context for core modules, a
//! [`crate::component::ComponentCtx`] (WASI preview 2, its resource table and
//! wasi:http) for components. Everything else is the same for both.

use crate::config::Limits;
use crate::context::Context;
use crate::limiter::{StoreLimiter, TimeBudget};
use wasmtime::{Engine, Store, UpdateDeadline};
use wasmtime_wasi::WasiCtxBuilder;
use wasmtime_wasi::p1::WasiP1Ctx;

/// What the store of one invocation holds: its WASI state (`W`: WASI
/// preview 1 for a core module, [`crate::ComponentCtx`] for a component),
/// its limiter and time budget, and the embedder's [`Context`].
///
/// Opaque but for the context: it is public so that an embedder can name
/// it where wasmtime asks for the store's data type (a
/// `wasmtime::Linker<StoreState>` in [`crate::RuntimeBuilder::linker`], a
/// `wasmtime::component::Linker<ComponentState>` in
/// [`crate::RuntimeBuilder::component_linker`], a `Caller`).
pub struct StoreState<W = WasiP1Ctx> {
    pub(crate) wasi: W,
    pub(crate) limiter: StoreLimiter,
    pub(crate) budget: Option<TimeBudget>,
    pub(crate) context: Context,
}

impl<W> StoreState<W> {
    /// The invocation's context.
    pub fn context(&self) -> &Context {
        &self.context
    }

    /// The invocation's context, mutably.
    pub fn context_mut(&mut self) -> &mut Context {
        &mut self.context
    }
}

impl StoreState {
    /// A state with an empty WASI context (for introspecting the linker).
    pub(crate) fn empty(limits: &Limits) -> Self {
        StoreState {
            wasi: WasiCtxBuilder::new().build_p1(),
            limiter: StoreLimiter::new(limits, None),
            budget: None,
            context: Context::new(),
        }
    }
}

/// A store for one invocation under `limits`. `fuel` is the fuel to start
/// with when the engine meters it.
///
/// With a time budget, the epoch deadline is one tick away and the callback
/// checks the budget on every tick: over it, the guest stops with the limit
/// as its error; within it, the guest yields to the executor (so other
/// tasks, the executor's I/O and timers run, and the wall-clock `Deadline`
/// around the invocation can fire) and goes on for another tick. Without one, the guest is never
/// interrupted (and the ticker does not run for it).
pub(crate) fn new_store<W: Send + 'static>(
    engine: &Engine,
    wasi: W,
    limits: &Limits,
    fuel: Option<u64>,
    budget: Option<TimeBudget>,
    probe: Option<crate::usage::UsageProbe>,
) -> Store<StoreState<W>> {
    let budgeted = budget.is_some();
    let mut store = Store::new(
        engine,
        StoreState {
            wasi,
            limiter: StoreLimiter::new(limits, probe),
            budget,
            context: Context::new(),
        },
    );
    store.limiter(|s| &mut s.limiter);
    if let Some(fuel) = fuel {
        store.set_fuel(fuel).expect("fuel metering is enabled");
    }
    if budgeted {
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(|ctx| {
            let budget = ctx.data().budget.as_ref().expect("budget set");
            match budget.check() {
                // Yields through tokio's `yield_now`, which wakes the task
                // only after the runtime has polled its I/O and timers: a
                // plain self-wake puts it straight back on the run queue,
                // and a single-threaded runtime then reads its sockets only
                // every 61 polls (its `event_interval`), 61 ticks for the
                // other connections on its thread.
                Ok(()) => Ok(UpdateDeadline::YieldCustom(
                    1,
                    Box::pin(tokio::task::yield_now()),
                )),
                Err(limit) => Err(limit.into()),
            }
        });
    } else {
        store.set_epoch_deadline(u64::MAX / 2);
    }
    store
}
