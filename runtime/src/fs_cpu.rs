//! CPU time of WASI filesystem calls, which wasmtime-wasi runs on tokio's
//! blocking pool, off the invocation's thread (so the invocation's thread
//! CPU clock does not see them).
//!
//! The synchronous [`crate::Function::invoke`] drives each invocation on
//! its calling thread's own current-thread runtime, whose blocking pool
//! therefore serves only that thread's invocations, one at a time. A
//! [`PoolCpu`] follows that pool's threads (registered as they start, their
//! final time kept as they stop), so the CPU the pool used between two
//! points of an invocation is that invocation's filesystem work. It is
//! added to the invocation's CPU time and counted against its `cpu_time`
//! budget.
//!
//! A call an invocation leaves running when it is stopped (a timeout cuts
//! a wait for it short) would be charged to the next invocation on the
//! thread: after a stop, the thread's runtime (and pool) is replaced, and
//! the call finishes on the old pool, charged to nobody after the stop.
//! With the pool idle (the usual case: no filesystem calls), reading the
//! total costs one atomic load.

use crate::clock::{clock_time, thread_cpu_time};
use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

thread_local! {
    /// The pool of the runtime this thread is driving an invocation on, set
    /// by [`with_active`] (only the synchronous path sets one).
    static ACTIVE: RefCell<Option<Arc<PoolCpu>>> = const { RefCell::new(None) };
}

/// Runs `f` with `pool` as the calling thread's active pool.
pub(crate) fn with_active<R>(pool: &Arc<PoolCpu>, f: impl FnOnce() -> R) -> R {
    struct Reset(Option<Arc<PoolCpu>>);
    impl Drop for Reset {
        fn drop(&mut self) {
            let previous = self.0.take();
            ACTIVE.with(|a| *a.borrow_mut() = previous);
        }
    }
    let previous = ACTIVE.with(|a| a.borrow_mut().replace(pool.clone()));
    let _reset = Reset(previous);
    f()
}

/// The active pool of the calling thread, if it is driving an invocation
/// synchronously.
pub(crate) fn active() -> Option<Arc<PoolCpu>> {
    ACTIVE.with(|a| a.borrow().clone())
}

/// The blocking-pool threads of one runtime, and the CPU time of those
/// that have ended.
#[derive(Debug, Default)]
pub(crate) struct PoolCpu {
    /// CPU clocks of the live pool threads, with their pthread ids.
    live: Mutex<Vec<(libc::pthread_t, libc::clockid_t)>>,
    /// How many there are (read without the lock on the fast path).
    count: AtomicUsize,
    /// CPU time of pool threads that have ended, in nanoseconds.
    ended_ns: AtomicU64,
}

impl PoolCpu {
    /// Registers the calling thread (a new pool thread).
    pub(crate) fn thread_started(&self) {
        let mut clock: libc::clockid_t = 0;
        // SAFETY: pthread_self always names the calling thread, which is
        // alive; pthread_getcpuclockid writes only to `clock`.
        let rc = unsafe { libc::pthread_getcpuclockid(libc::pthread_self(), &mut clock) };
        if rc != 0 {
            tracing::warn!("cannot read a filesystem thread's CPU clock: error {rc}");
            return;
        }
        // SAFETY: as above.
        let me = unsafe { libc::pthread_self() };
        let mut live = self.lock();
        live.push((me, clock));
        self.count.store(live.len(), Ordering::Release);
    }

    /// Keeps the calling pool thread's final CPU time and forgets its clock
    /// (which ends with it).
    pub(crate) fn thread_stopping(&self) {
        // SAFETY: as in `thread_started`.
        let me = unsafe { libc::pthread_self() };
        let mut live = self.lock();
        if let Some(i) = live.iter().position(|(t, _)| *t == me) {
            live.swap_remove(i);
            let spent = thread_cpu_time();
            self.ended_ns.fetch_add(nanos(spent), Ordering::Relaxed);
        }
        self.count.store(live.len(), Ordering::Release);
    }

    /// CPU time all the pool's threads have used so far.
    pub(crate) fn total(&self) -> Duration {
        if self.count.load(Ordering::Acquire) == 0 {
            return Duration::from_nanos(self.ended_ns.load(Ordering::Relaxed));
        }
        // Under the lock, so that a thread ending now is counted once: in
        // `ended_ns` or by its clock.
        let live = self.lock();
        let mut ns = self.ended_ns.load(Ordering::Relaxed);
        for (_, clock) in live.iter() {
            ns = ns.saturating_add(nanos(clock_time(*clock)));
        }
        Duration::from_nanos(ns)
    }

    /// Whether the pool has ever had a thread.
    pub(crate) fn used(&self) -> bool {
        self.count.load(Ordering::Acquire) > 0 || self.ended_ns.load(Ordering::Relaxed) > 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(libc::pthread_t, libc::clockid_t)>> {
        // Plain data: a panic while holding the lock leaves it usable.
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_the_work_of_live_and_ended_pool_threads() {
        let pool = Arc::new(PoolCpu::default());
        assert!(!pool.used());
        assert_eq!(pool.total(), Duration::ZERO);
        let (p1, p2) = (pool.clone(), pool.clone());
        let rt = tokio::runtime::Builder::new_current_thread()
            .on_thread_start(move || p1.thread_started())
            .on_thread_stop(move || p2.thread_stopping())
            .thread_keep_alive(Duration::from_millis(50))
            .build()
            .unwrap();
        let spin = |d: Duration| {
            let t = thread_cpu_time();
            while thread_cpu_time() - t < d {
                std::hint::black_box(0u64);
            }
        };
        rt.block_on(async {
            tokio::task::spawn_blocking(move || spin(Duration::from_millis(30)))
                .await
                .unwrap()
        });
        assert!(pool.used());
        let live = pool.total();
        assert!(live >= Duration::from_millis(30), "{live:?}");
        // The idle thread ends after its keep-alive; its time is kept.
        let start = std::time::Instant::now();
        while pool.count.load(Ordering::Acquire) > 0 {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "thread never ended"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(pool.total() >= live, "{:?} < {live:?}", pool.total());
    }
}
