//! The usage record of one invocation: the basis of billing.
//!
//! Every figure is measured, not estimated: wall time with the monotonic
//! clock, CPU time with the polling thread's own CPU clock
//! (`CLOCK_THREAD_CPUTIME_ID`, so time a thread spends descheduled is not
//! charged), fuel from the store's meter, and peak memory from the resource
//! limiter that sees every allocation and `memory.grow`.
//!
//! An invocation is a future, and on a multi-threaded runtime a future can
//! move between worker threads whenever it waits, so one thread's clock read
//! at the start and at the end would charge whatever that thread did for
//! other tasks meanwhile. [`Metered`] therefore reads the clock at the start
//! and the end of every poll and adds up the differences: the CPU time spent
//! running this invocation, on whichever threads ran it. An invocation that
//! never waits is one poll: two clock reads, as before it was a future.

use crate::clock::thread_cpu_time;
use crate::fs_cpu::{self, PoolCpu};
use pin_project_lite::pin_project;
use serde::{Deserialize, Serialize};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

/// What one invocation used.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    /// Wall-clock time from the start of instantiation to the end of the call.
    #[serde(
        rename = "wall_time_ns",
        serialize_with = "nanos",
        deserialize_with = "from_nanos"
    )]
    pub wall_time: Duration,
    /// CPU time spent running the invocation over the same span: the thread
    /// CPU clock around each poll of its future, added up. (Filesystem calls
    /// run on tokio's blocking pool and are not in it; see `Limits`.)
    #[serde(
        rename = "cpu_time_ns",
        serialize_with = "nanos",
        deserialize_with = "from_nanos"
    )]
    pub cpu_time: Duration,
    /// Fuel consumed, when the runtime meters fuel.
    ///
    /// Exact for a guest that returns, exits, traps or runs out of fuel.
    /// For one stopped by a time limit (wall clock or CPU time) while it
    /// computes, it is a lower bound: it leaves out what the innermost
    /// function burned since its last call or return. wasmtime keeps that
    /// function's running count in a register and writes it to the store
    /// only at calls and returns, not at the epoch check that stops it, so
    /// a loop without calls that is stopped reports 0.
    pub fuel_consumed: Option<u64>,
    /// Largest total linear memory the instance had, in bytes.
    pub peak_memory_bytes: u64,
    /// Peak memory times wall time, the unit of memory billing.
    pub gb_seconds: f64,
    /// For a sandboxed invocation: the sandbox's totals so far (CPU of the
    /// whole worker, its memory peak, OOM kills, throttling), filled in by
    /// the sandbox crate; `None` in-process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<SandboxUsage>,
}

/// What a whole sandbox (all its worker processes) has used so far, as its
/// cgroups count it. Plain data: the executor never reads cgroups itself.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxUsage {
    /// CPU time of all its processes, in nanoseconds.
    pub cpu_ns: u64,
    /// Highest memory use, in bytes.
    pub memory_peak_bytes: u64,
    /// Times the kernel's OOM killer killed a process in it.
    pub oom_kills: u64,
    /// Times its CPU bandwidth was throttled.
    pub throttled_periods: u64,
}

impl Usage {
    /// A record from measured figures; `gb_seconds` is derived from peak
    /// memory and wall time.
    pub fn new(
        wall_time: Duration,
        cpu_time: Duration,
        fuel_consumed: Option<u64>,
        peak_memory_bytes: u64,
    ) -> Self {
        let gb = peak_memory_bytes as f64 / (1u64 << 30) as f64;
        Usage {
            wall_time,
            cpu_time,
            fuel_consumed,
            peak_memory_bytes,
            gb_seconds: gb * wall_time.as_secs_f64(),
            sandbox: None,
        }
    }
}

fn nanos<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

fn from_nanos<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    u64::deserialize(d).map(Duration::from_nanos)
}

/// What an invocation has used so far, kept up to date while it runs and
/// readable after it is gone: for a caller that may drop the invocation
/// before its outcome (an HTTP server whose client left), so the usage
/// record of the stopped invocation still has its figures. Set it as
/// [`Invocation::probe`](crate::Invocation::probe); clones share the
/// figures.
///
/// The CPU time is that of the invocation's finished polls (as its
/// [`Usage::cpu_time`] counts it, less the filesystem calls of a
/// synchronously driven invocation); the memory peak is its instance's
/// largest total linear memory. A sandboxed invocation (run in a worker
/// process) does not update it.
#[derive(Debug, Clone, Default)]
pub struct UsageProbe(Arc<ProbeFigures>);

#[derive(Debug, Default)]
struct ProbeFigures {
    cpu_ns: AtomicU64,
    peak_memory: AtomicU64,
}

impl UsageProbe {
    /// A probe with nothing used yet.
    pub fn new() -> Self {
        UsageProbe::default()
    }

    /// CPU time used so far, up to the end of its last poll.
    pub fn cpu_time(&self) -> Duration {
        Duration::from_nanos(self.0.cpu_ns.load(Ordering::Relaxed))
    }

    /// Largest total linear memory so far, in bytes.
    pub fn peak_memory_bytes(&self) -> u64 {
        self.0.peak_memory.load(Ordering::Relaxed)
    }

    pub(crate) fn set_cpu_time(&self, spent: Duration) {
        self.0.cpu_ns.store(nanos_of(spent), Ordering::Relaxed);
    }

    pub(crate) fn memory_grew_to(&self, total: u64) {
        self.0.peak_memory.fetch_max(total, Ordering::Relaxed);
    }
}

/// The CPU time an invocation has used so far, for its time budget: shared
/// by [`Metered`] (which updates it at the start and end of every poll) and
/// the epoch callback (which reads it, from inside a poll, on the polling
/// thread).
#[derive(Debug, Default)]
pub(crate) struct CpuMeter {
    /// CPU time of the finished polls, in nanoseconds.
    spent: AtomicU64,
    /// The polling thread's clock when the current poll started, in ns.
    poll_start: AtomicU64,
    /// The blocking pool the invocation's filesystem calls run on, when it
    /// is driven synchronously, and that pool's CPU time when it started.
    pool: OnceLock<(Arc<PoolCpu>, Duration)>,
}

impl CpuMeter {
    /// CPU time used so far. Only meaningful inside a poll of the metered
    /// future, on the thread polling it (where the epoch callback runs).
    pub(crate) fn used(&self) -> Duration {
        let now = nanos_of(thread_cpu_time());
        let spent = self.spent.load(Ordering::Relaxed);
        let start = self.poll_start.load(Ordering::Relaxed);
        let own = Duration::from_nanos(spent.saturating_add(now.saturating_sub(start)));
        match self.pool.get() {
            Some((pool, base)) if pool.used() => own + pool.total().saturating_sub(*base),
            _ => own,
        }
    }
}

fn nanos_of(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

pin_project! {
    /// Runs a future and adds up the CPU time its polls take on the threads
    /// that poll it, plus, when it is driven synchronously, the CPU time of
    /// the blocking pool its filesystem calls run on (see
    /// [`crate::fs_cpu`]). Resolves to the future's output and that time.
    pub(crate) struct Metered<F> {
        #[pin]
        inner: F,
        spent: Duration,
        shared: Option<Arc<CpuMeter>>,
        pool: Option<(Arc<PoolCpu>, Duration)>,
        first: bool,
        probe: Option<UsageProbe>,
    }
}

impl<F> Metered<F> {
    /// Meters `inner`; `shared`, if given, is kept up to date for a time
    /// budget to read.
    pub(crate) fn new(inner: F, shared: Option<Arc<CpuMeter>>) -> Self {
        Metered {
            inner,
            spent: Duration::ZERO,
            shared,
            pool: None,
            first: true,
            probe: None,
        }
    }

    /// Also keeps `probe`'s CPU time up to date, after every poll.
    pub(crate) fn with_probe(mut self, probe: Option<UsageProbe>) -> Self {
        self.probe = probe;
        self
    }
}

impl<F: Future> Future for Metered<F> {
    type Output = (F::Output, Duration);

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if std::mem::take(this.first)
            && let Some(pool) = fs_cpu::active()
        {
            let base = pool.total();
            if let Some(shared) = this.shared {
                let _ = shared.pool.set((pool.clone(), base));
            }
            *this.pool = Some((pool, base));
        }
        let start = thread_cpu_time();
        if let Some(shared) = this.shared {
            shared.spent.store(nanos_of(*this.spent), Ordering::Relaxed);
            shared.poll_start.store(nanos_of(start), Ordering::Relaxed);
        }
        let poll = this.inner.poll(cx);
        *this.spent += thread_cpu_time().saturating_sub(start);
        if let Some(probe) = this.probe {
            probe.set_cpu_time(*this.spent);
        }
        match poll {
            Poll::Ready(out) => {
                let fs = match this.pool {
                    Some((pool, base)) if pool.used() => pool.total().saturating_sub(*base),
                    _ => Duration::ZERO,
                };
                Poll::Ready((out, *this.spent + fs))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thread_clock_counts_work_not_sleep() {
        let t0 = thread_cpu_time();
        std::thread::sleep(Duration::from_millis(30));
        let slept = thread_cpu_time() - t0;
        assert!(slept < Duration::from_millis(10), "sleep charged {slept:?}");
        // Work advances it (however loaded the machine: spin until it has,
        // within a generous wall-clock bound), and never faster than wall time.
        let t1 = thread_cpu_time();
        let start = std::time::Instant::now();
        while thread_cpu_time() - t1 < Duration::from_millis(20) {
            assert!(start.elapsed() < Duration::from_secs(10), "CPU clock stuck");
            std::hint::black_box(0u64);
        }
        assert!(thread_cpu_time() - t1 <= start.elapsed() + Duration::from_millis(1));
    }

    #[test]
    fn serializes_as_one_json_object() {
        let u = Usage::new(
            Duration::from_secs(2),
            Duration::from_millis(1),
            Some(5),
            1 << 30,
        );
        let j = serde_json::to_value(&u).unwrap();
        assert_eq!(j["wall_time_ns"], 2_000_000_000u64);
        assert_eq!(j["cpu_time_ns"], 1_000_000u64);
        assert_eq!(j["gb_seconds"], 2.0);
    }
}
