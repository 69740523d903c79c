//! `[function.sandbox]`: a function whose invocations run in jailed worker
//! processes (`wasmlet-sandbox`), a pool of them per function.
//!
//! ```text
//!  App::load ─▶ Pool::new (nothing started yet; `serve --check` stops here)
//!  Pool::start ─▶ scaler thread: `warm` workers started (/readyz waits for
//!     them, or for their start to fail with a logged reason), then every
//!     tick: workers beyond `warm` idle for `idle_timeout` stopped, the
//!     pool topped up to `warm`
//!  invoke ─▶ the least busy worker with a free thread, else one more
//!     started in the background (at most enough for `max_concurrency`)
//!     while waiting for whichever frees first
//!     ─▶ Sandbox::invoke on tokio's blocking pool (it blocks)
//!     ─▶ a worker that died (OOM, seccomp, signal, deadline) failed only
//!        the invocations on it and was replaced by the sandbox: counted
//!     ─▶ usage: the invocation's share of its sandbox's cgroup totals
//!  SIGTERM ─▶ after the drain, Pool::shutdown: workers killed, cgroups gone
//! ```
//!
//! Each worker is a [`Sandbox`] of its own: its own cgroups with the
//! table's `memory`, `cpus` and `pids`, its own jail with the function's
//! directories. It runs [`WORKER_THREADS`] invocations at once, each under
//! the function's `[function.limits]` (the worker enforces them).
//!
//! The usage share: a sandbox's cgroup totals (CPU, OOM kills, throttled
//! periods) only grow; each invocation is charged what they grew since the
//! previous invocation on that sandbox was charged, so the lines of a
//! sandbox add up to its totals, never counting a nanosecond twice (the
//! totals are re-read at most every 100 ms, so one invocation may carry
//! its neighbours' CPU and they none). `memory_peak_bytes` is the
//! sandbox's high-water mark, a level, not a share.

use crate::metrics::FunctionMetrics;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};
use wasmlet_runtime::{Function, Invocation, LoadOptions, Outcome, RuntimeConfig, SandboxUsage};
use wasmlet_sandbox::{Sandbox, SandboxConfig, WORKER_THREADS, WorkerCommand};

/// Shortest and longest pause of the scaler thread between two looks.
const SCALER_TICK: (Duration, Duration) = (Duration::from_millis(10), Duration::from_secs(1));

/// What a pool is made of: everything but the workers.
pub(crate) struct PoolSpec {
    /// The function's name, for logs.
    pub function: String,
    /// The supervisor's runtime settings (the workers map its artifacts).
    pub runtime: RuntimeConfig,
    /// Each worker's sandbox.
    pub config: SandboxConfig,
    /// The function as compiled here: its artifact is what workers map.
    pub code: Function,
    /// The module, read when there is no artifact (no cache).
    pub module: PathBuf,
    /// The function's limits, enforced by the worker per invocation.
    pub opts: LoadOptions,
    /// Workers kept started.
    pub warm: usize,
    /// Workers at most: enough threads for `max_concurrency`.
    pub max: usize,
    /// Idle time after which a worker beyond `warm` is stopped.
    pub idle_timeout: Duration,
}

/// A function's workers.
pub(crate) struct Pool {
    spec: PoolSpec,
    state: Mutex<State>,
    /// Woken when a worker frees a thread, joins, or fails to start.
    changed: tokio::sync::Notify,
    /// The warm workers have started, or failed to with a logged reason.
    warmed: AtomicBool,
    /// Shut down: no more invocations or workers.
    closed: AtomicBool,
    metrics: Arc<FunctionMetrics>,
}

#[derive(Default)]
struct State {
    workers: Vec<Entry>,
    /// Workers being started.
    starting: usize,
}

struct Entry {
    slot: Arc<Slot>,
    in_flight: usize,
    last_used: Instant,
}

/// One worker's sandbox.
struct Slot {
    sandbox: Arc<Sandbox>,
    /// The worker process last seen: a different one after an invocation
    /// means the previous one died (and was replaced).
    pid: AtomicU32,
    /// The cgroup totals already charged to invocations.
    charged: Mutex<SandboxUsage>,
}

/// Where a start this caller asked for stands.
enum Growing {
    No,
    Running(tokio::task::JoinHandle<Result<(), String>>),
    Done,
}

impl Pool {
    pub(crate) fn new(spec: PoolSpec, metrics: Arc<FunctionMetrics>) -> Pool {
        Pool {
            spec,
            state: Mutex::new(State::default()),
            changed: tokio::sync::Notify::new(),
            warmed: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            metrics,
        }
    }

    /// Starts the scaler thread: the warm workers first, then scaling in
    /// and topping up. It ends when the pool is shut down or dropped.
    pub(crate) fn start(self: &Arc<Self>) {
        let pool = Arc::downgrade(self);
        let spawned = std::thread::Builder::new()
            .name(format!("wasmlet-scaler-{}", self.spec.function))
            .spawn(move || scaler(pool));
        if let Err(e) = spawned {
            tracing::error!(function = %self.spec.function, "cannot start the sandbox scaler thread: {e}");
            self.warmed.store(true, Ordering::Release);
        }
    }

    /// Whether the warm workers are up (or failed to start, logged).
    pub(crate) fn warmed(&self) -> bool {
        self.warmed.load(Ordering::Acquire)
    }

    /// Runs `inv` in one of the workers.
    pub(crate) async fn invoke(
        self: &Arc<Self>,
        inv: Invocation,
    ) -> Result<Outcome, wasmlet_runtime::Error> {
        let slot = self
            .acquire()
            .await
            .map_err(wasmlet_runtime::Error::Setup)?;
        let seen = slot.pid.load(Ordering::Acquire);
        // The worker's thread is given back when its call ends, in the
        // blocking task: a request dropped meanwhile (its client left)
        // stops awaiting it, but the guest runs on in the worker until its
        // own limits, and its thread stays taken until then.
        let (pool, taken) = (self.clone(), slot.clone());
        let result = tokio::task::spawn_blocking(move || {
            let r = taken.sandbox.invoke(inv);
            pool.release(&taken);
            pool.notice_death(&taken, seen);
            r
        })
        .await;
        let mut outcome = match result {
            Ok(Ok(o)) => o,
            Ok(Err(wasmlet_sandbox::Error::Runtime(e))) => return Err(e),
            Ok(Err(e)) => return Err(wasmlet_runtime::Error::Setup(e.to_string())),
            Err(e) => {
                return Err(wasmlet_runtime::Error::Setup(format!(
                    "sandboxed invocation: {e}"
                )));
            }
        };
        if let Some(totals) = outcome.usage.sandbox {
            outcome.usage.sandbox = Some(slot.charge(totals));
        }
        Ok(outcome)
    }

    /// A worker with a free thread, reserved; starts one more when all are
    /// busy and the pool may grow.
    async fn acquire(self: &Arc<Self>) -> Result<Arc<Slot>, String> {
        let mut growing = Growing::No;
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut st = self.state.lock().expect("pool lock");
                if self.closed.load(Ordering::Acquire) {
                    return Err("the server is shutting down".into());
                }
                if let Some(e) = st
                    .workers
                    .iter_mut()
                    .filter(|e| e.in_flight < WORKER_THREADS)
                    .min_by_key(|e| e.in_flight)
                {
                    e.in_flight += 1;
                    return Ok(e.slot.clone());
                }
                if matches!(growing, Growing::No) && st.workers.len() + st.starting < self.spec.max
                {
                    st.starting += 1;
                    let pool = self.clone();
                    growing = Growing::Running(tokio::task::spawn(async move {
                        let p = pool.clone();
                        tokio::task::spawn_blocking(move || p.add_worker())
                            .await
                            .unwrap_or_else(|e| Err(format!("starting a sandbox worker: {e}")))
                    }));
                }
            }
            match &mut growing {
                Growing::Running(handle) => tokio::select! {
                    started = handle => {
                        growing = Growing::Done;
                        match started {
                            Ok(Ok(())) => {}
                            Ok(Err(e)) => return Err(e),
                            Err(e) => return Err(format!("starting a sandbox worker: {e}")),
                        }
                    }
                    () = &mut notified => {}
                },
                Growing::No | Growing::Done => notified.await,
            }
        }
    }

    fn release(&self, slot: &Arc<Slot>) {
        let mut st = self.state.lock().expect("pool lock");
        if let Some(e) = st.workers.iter_mut().find(|e| Arc::ptr_eq(&e.slot, slot)) {
            e.in_flight -= 1;
            e.last_used = Instant::now();
        }
        drop(st);
        self.changed.notify_waiters();
    }

    /// Counts a worker death seen by an invocation that started on worker
    /// `seen` (once, however many invocations were on it); a sandbox that
    /// could not replace its worker leaves the pool.
    fn notice_death(&self, slot: &Arc<Slot>, seen: u32) {
        let now = slot.sandbox.worker_pid().unwrap_or(0);
        if now == seen
            || slot
                .pid
                .compare_exchange(seen, now, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
        {
            return;
        }
        self.metrics
            .sandbox_worker_deaths
            .fetch_add(1, Ordering::Relaxed);
        if now != 0 {
            self.metrics
                .sandbox_worker_starts
                .fetch_add(1, Ordering::Relaxed);
            tracing::warn!(function = %self.spec.function, "sandbox worker {seen} died; replaced by {now}");
            return;
        }
        tracing::warn!(function = %self.spec.function, "sandbox worker {seen} died and could not be replaced; its sandbox leaves the pool");
        let mut st = self.state.lock().expect("pool lock");
        let before = st.workers.len();
        st.workers.retain(|e| !Arc::ptr_eq(&e.slot, slot));
        let removed = before - st.workers.len();
        drop(st);
        if removed > 0 {
            self.metrics.sandbox_workers.fetch_sub(1, Ordering::Relaxed);
            slot.sandbox.shutdown();
        }
        self.changed.notify_waiters();
    }

    /// Starts one worker (blocking) and adds it to the pool; the caller
    /// counted it in `starting`.
    fn add_worker(&self) -> Result<(), String> {
        let started = if self.closed.load(Ordering::Acquire) {
            Err("the server is shutting down".to_string())
        } else {
            self.start_sandbox()
        };
        let mut st = self.state.lock().expect("pool lock");
        st.starting -= 1;
        let result = match started {
            Ok(sandbox) if !self.closed.load(Ordering::Acquire) => {
                self.metrics.sandbox_workers.fetch_add(1, Ordering::Relaxed);
                self.metrics
                    .sandbox_worker_starts
                    .fetch_add(1, Ordering::Relaxed);
                st.workers.push(Entry {
                    slot: Arc::new(Slot {
                        pid: AtomicU32::new(sandbox.worker_pid().unwrap_or(0)),
                        sandbox: Arc::new(sandbox),
                        charged: Mutex::new(SandboxUsage::default()),
                    }),
                    in_flight: 0,
                    last_used: Instant::now(),
                });
                Ok(())
            }
            Ok(sandbox) => {
                sandbox.shutdown();
                Err("the server is shutting down".into())
            }
            Err(e) => {
                tracing::error!(function = %self.spec.function, "cannot start a sandbox worker: {e}");
                Err(e)
            }
        };
        drop(st);
        self.changed.notify_waiters();
        result
    }

    fn start_sandbox(&self) -> Result<Sandbox, String> {
        let s = &self.spec;
        let sandbox = Sandbox::start(
            &s.runtime,
            &s.config,
            WorkerCommand::current_exe().map_err(|e| e.to_string())?,
        )
        .map_err(|e| e.to_string())?;
        sandbox
            .load_function_or(&s.code, &s.opts, || {
                std::fs::read(&s.module).map_err(|e| {
                    wasmlet_sandbox::Error::Worker(format!("{}: {e}", s.module.display()))
                })
            })
            .map_err(|e| e.to_string())?;
        Ok(sandbox)
    }

    /// Stops the workers beyond `warm` idle for `idle_timeout` (the least
    /// recently used first); starts workers up to `warm`.
    fn scale(&self) {
        let mut idle = Vec::new();
        let mut st = self.state.lock().expect("pool lock");
        while st.workers.len() > self.spec.warm {
            let oldest = st
                .workers
                .iter()
                .enumerate()
                .filter(|(_, e)| {
                    e.in_flight == 0 && e.last_used.elapsed() >= self.spec.idle_timeout
                })
                .min_by_key(|(_, e)| e.last_used)
                .map(|(i, _)| i);
            match oldest {
                Some(i) => idle.push(st.workers.swap_remove(i).slot),
                None => break,
            }
        }
        let missing = self
            .spec
            .warm
            .saturating_sub(st.workers.len() + st.starting);
        st.starting += missing;
        drop(st);
        for slot in idle {
            self.metrics.sandbox_workers.fetch_sub(1, Ordering::Relaxed);
            tracing::debug!(function = %self.spec.function, "stopping an idle sandbox worker");
            slot.sandbox.shutdown();
        }
        for _ in 0..missing {
            let _ = self.add_worker();
        }
    }

    /// Refuses new invocations, kills every worker and removes their
    /// cgroups (invocations still running on them fail).
    pub(crate) fn shutdown(&self) {
        self.closed.store(true, Ordering::Release);
        let workers = std::mem::take(&mut self.state.lock().expect("pool lock").workers);
        for e in workers {
            self.metrics.sandbox_workers.fetch_sub(1, Ordering::Relaxed);
            e.slot.sandbox.shutdown();
        }
        self.changed.notify_waiters();
    }
}

impl Slot {
    /// This invocation's share of the sandbox's `totals` (see [`share`]).
    fn charge(&self, totals: SandboxUsage) -> SandboxUsage {
        share(&mut self.charged.lock().expect("charge lock"), totals)
    }
}

/// What `totals` grew since `charged` (then moved up to them): the share of
/// the invocation that read them (see the module's doc). The peak memory is
/// a level: passed on as it is.
fn share(charged: &mut SandboxUsage, totals: SandboxUsage) -> SandboxUsage {
    let share = SandboxUsage {
        cpu_ns: totals.cpu_ns.saturating_sub(charged.cpu_ns),
        memory_peak_bytes: totals.memory_peak_bytes,
        oom_kills: totals.oom_kills.saturating_sub(charged.oom_kills),
        throttled_periods: totals
            .throttled_periods
            .saturating_sub(charged.throttled_periods),
    };
    charged.cpu_ns = charged.cpu_ns.max(totals.cpu_ns);
    charged.oom_kills = charged.oom_kills.max(totals.oom_kills);
    charged.throttled_periods = charged.throttled_periods.max(totals.throttled_periods);
    share
}

impl Drop for Pool {
    fn drop(&mut self) {
        // A pool replaced by a reload: its workers go with it, killed and
        // reaped on a thread of their own (the last reference may be
        // dropped on one of tokio's worker threads).
        self.closed.store(true, Ordering::Release);
        let workers = std::mem::take(&mut self.state.lock().expect("pool lock").workers);
        if workers.is_empty() {
            return;
        }
        self.metrics
            .sandbox_workers
            .fetch_sub(workers.len() as i64, Ordering::Relaxed);
        let spawned = std::thread::Builder::new()
            .name("wasmlet-pool-stop".into())
            .spawn(move || {
                for e in workers {
                    e.slot.sandbox.shutdown();
                }
            });
        if let Err(e) = spawned {
            // The workers went with the closure: each Sandbox dropped kills
            // its worker and removes its cgroups, here.
            tracing::warn!("sandbox workers stopped inline: {e}");
        }
    }
}

/// The scaler thread's loop.
fn scaler(pool: Weak<Pool>) {
    let tick = match pool.upgrade() {
        Some(p) => {
            p.scale();
            p.warmed.store(true, Ordering::Release);
            (p.spec.idle_timeout / 4).clamp(SCALER_TICK.0, SCALER_TICK.1)
        }
        None => return,
    };
    loop {
        std::thread::sleep(tick);
        match pool.upgrade() {
            Some(p) if !p.closed.load(Ordering::Acquire) => p.scale(),
            _ => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_add_up_to_the_totals_and_never_count_twice() {
        let mut charged = SandboxUsage::default();
        let at = |cpu_ns, oom_kills, throttled_periods| SandboxUsage {
            cpu_ns,
            memory_peak_bytes: 7,
            oom_kills,
            throttled_periods,
        };
        // Totals read by consecutive invocations; one re-reads a cached
        // (equal) value, one sees an older value than the previous one (a
        // cached read taken before a concurrent fresh one).
        let reads = [at(100, 0, 1), at(100, 0, 1), at(250, 1, 3), at(200, 1, 2)];
        let shares: Vec<_> = reads.iter().map(|t| share(&mut charged, *t)).collect();
        assert_eq!(
            shares.iter().map(|s| s.cpu_ns).collect::<Vec<_>>(),
            [100, 0, 150, 0]
        );
        assert_eq!(shares.iter().map(|s| s.cpu_ns).sum::<u64>(), 250);
        assert_eq!(shares.iter().map(|s| s.oom_kills).sum::<u64>(), 1);
        assert_eq!(shares.iter().map(|s| s.throttled_periods).sum::<u64>(), 3);
        assert!(shares.iter().all(|s| s.memory_peak_bytes == 7));
        // (The peak is never charged: it is not a running total.)
        assert_eq!(
            charged,
            SandboxUsage {
                memory_peak_bytes: 0,
                ..at(250, 1, 3)
            }
        );
    }
}
