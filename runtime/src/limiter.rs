//! Live enforcement of [`Limits`] inside one store.
//!
//! [`StoreLimiter`] is the wasmtime `ResourceLimiter`: it refuses memory and
//! table growth past the limits, remembers that it did (so a guest that fails
//! afterwards is reported as out of memory, not as a mystery trap), and keeps
//! the peak memory for the usage record. [`TimeBudget`] is checked from the
//! epoch-deadline callback on every tick, and [`CpuWatch`] checks the CPU
//! budget while the guest waits.

use crate::config::Limits;
use crate::error::LimitExceeded;
use crate::usage::{CpuMeter, UsageProbe};
use pin_project_lite::pin_project;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::task::coop::{Unconstrained, unconstrained};

/// The per-store resource limiter.
pub(crate) struct StoreLimiter {
    max_memory: u64,
    max_table_elements: u64,
    /// Sum of all linear memories' current sizes.
    current_memory: u64,
    pub(crate) peak_memory: u64,
    /// The first limit refused, if any.
    pub(crate) refused: Option<LimitExceeded>,
    /// Told of every new peak.
    probe: Option<UsageProbe>,
}

impl StoreLimiter {
    pub(crate) fn new(limits: &Limits, probe: Option<UsageProbe>) -> Self {
        StoreLimiter {
            max_memory: limits.max_memory,
            max_table_elements: limits.max_table_elements,
            current_memory: 0,
            peak_memory: 0,
            refused: None,
            probe,
        }
    }
}

impl wasmtime::ResourceLimiter for StoreLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let total = self
            .current_memory
            .saturating_sub(current as u64)
            .saturating_add(desired as u64);
        if total > self.max_memory {
            self.refused
                .get_or_insert(LimitExceeded::Memory(self.max_memory));
            return Ok(false);
        }
        self.current_memory = total;
        if total > self.peak_memory {
            self.peak_memory = total;
            if let Some(probe) = &self.probe {
                probe.memory_grew_to(total);
            }
        }
        Ok(true)
    }

    fn memory_grow_failed(&mut self, _error: wasmtime::Error) -> wasmtime::Result<()> {
        // Growth we allowed but the allocator could not back (the pool slot
        // is smaller): the guest sees -1, as for a refused growth.
        Ok(())
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired as u64 > self.max_table_elements {
            self.refused
                .get_or_insert(LimitExceeded::TableElements(self.max_table_elements));
            return Ok(false);
        }
        Ok(true)
    }
}

/// CPU-time and wall-clock budget of one invocation.
pub(crate) struct TimeBudget {
    /// CPU time used so far, added up over the polls of the invocation.
    cpu: Arc<CpuMeter>,
    cpu_limit: Option<Duration>,
    wall_deadline: Option<(Instant, Duration)>,
}

impl TimeBudget {
    /// The budget of `limits`, or `None` when they limit no time.
    pub(crate) fn new(limits: &Limits, wall_start: Instant, cpu: Arc<CpuMeter>) -> Self {
        TimeBudget {
            cpu,
            cpu_limit: limits.cpu_time,
            wall_deadline: limits.timeout.and_then(|t| deadline(wall_start, t)),
        }
    }

    /// Whether the budget allows more running; called on every epoch tick
    /// on the thread running the guest.
    pub(crate) fn check(&self) -> Result<(), LimitExceeded> {
        within(self.cpu_limit.map(|l| (&*self.cpu, l)), self.wall_deadline)
    }

    /// The budget a host function checks when it returns (read before it
    /// runs: it takes the caller, and with it the store). The guest may
    /// return without another epoch check, so an overrun inside the host
    /// function would otherwise go unreported. Clones the CPU meter only
    /// when there is a CPU limit.
    pub(crate) fn at_host_return(&self) -> HostReturnCheck {
        HostReturnCheck {
            cpu: self.cpu_limit.map(|l| (self.cpu.clone(), l)),
            wall_deadline: self.wall_deadline,
        }
    }
}

/// See [`TimeBudget::at_host_return`].
pub(crate) struct HostReturnCheck {
    cpu: Option<(Arc<CpuMeter>, Duration)>,
    wall_deadline: Option<(Instant, Duration)>,
}

impl HostReturnCheck {
    /// Whether the budget still allows running; called when the host
    /// function returns, inside the invocation's poll, on its thread.
    pub(crate) fn check(&self) -> Result<(), LimitExceeded> {
        within(
            self.cpu.as_ref().map(|(m, l)| (&**m, *l)),
            self.wall_deadline,
        )
    }
}

/// `Ok` when the CPU used is under its limit and the wall-clock deadline
/// has not passed.
fn within(
    cpu: Option<(&CpuMeter, Duration)>,
    wall_deadline: Option<(Instant, Duration)>,
) -> Result<(), LimitExceeded> {
    if let Some((meter, limit)) = cpu
        && meter.used() >= limit
    {
        return Err(LimitExceeded::CpuTime(limit));
    }
    if let Some((deadline, timeout)) = wall_deadline
        && Instant::now() >= deadline
    {
        return Err(LimitExceeded::Timeout(timeout));
    }
    Ok(())
}

/// How often a waiting invocation's CPU budget is checked.
pub(crate) const CPU_WATCH_INTERVAL: Duration = Duration::from_millis(5);

pin_project! {
    /// An invocation's call, and while it waits (is pending), a check of
    /// its CPU budget every [`CPU_WATCH_INTERVAL`]. The epoch callback
    /// checks the budget only while wasm runs; CPU used off the guest's
    /// thread for it (filesystem calls on the blocking pool, charged by
    /// `fs_cpu`) accrues while it waits, and one long call (a `readdir` of
    /// a huge directory) would otherwise run far past the budget. Costs
    /// nothing for a call that never waits: the timer is made (on the
    /// heap, so the invocation's future stays small) only when it does.
    pub(crate) struct CpuWatch<F> {
        #[pin]
        call: F,
        budget: Option<(Arc<CpuMeter>, Duration)>,
        tick: Option<Pin<Box<tokio::time::Sleep>>>,
    }
}

impl<F> CpuWatch<F> {
    pub(crate) fn new(call: F, budget: Option<(Arc<CpuMeter>, Duration)>) -> Self {
        CpuWatch {
            call,
            budget,
            tick: None,
        }
    }
}

impl<F, T> Future for CpuWatch<F>
where
    F: Future<Output = wasmtime::Result<T>>,
{
    type Output = wasmtime::Result<T>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(out) = this.call.poll(cx) {
            return Poll::Ready(out);
        }
        let Some((meter, limit)) = this.budget else {
            return Poll::Pending;
        };
        loop {
            let tick = this
                .tick
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(CPU_WATCH_INTERVAL)));
            match tick.as_mut().poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(()) => {
                    // Inside a poll of the metered invocation, on its
                    // thread: what `CpuMeter::used` needs.
                    if meter.used() >= *limit {
                        return Poll::Ready(Err(LimitExceeded::CpuTime(*limit).into()));
                    }
                    let next = tokio::time::Instant::now() + CPU_WATCH_INTERVAL;
                    tick.as_mut().reset(next);
                }
            }
        }
    }
}

pin_project! {
    /// An invocation's call under its wall-clock timeout: a call still
    /// waiting at the deadline ends with [`LimitExceeded::Timeout`] (and is
    /// dropped with this future). What `tokio::time::timeout_at` does, but
    /// the timer is made (on the heap) only when the call first waits, so
    /// a call that finishes in its first poll never touches the timer, and
    /// the invocation's future stays small.
    pub(crate) struct Deadline<F> {
        #[pin]
        call: F,
        at: Option<(Instant, Duration)>,
        // Outside tokio's cooperative budget, as `timeout_at` polls its
        // timer once the call has used the budget up: a call that spends
        // it on every poll must not keep the deadline from firing.
        timer: Option<Pin<Box<Unconstrained<tokio::time::Sleep>>>>,
    }
}

impl<F> Deadline<F> {
    /// `call`, stopped at `at` (the instant and the timeout it came from);
    /// `None`: never.
    pub(crate) fn new(call: F, at: Option<(Instant, Duration)>) -> Self {
        Deadline {
            call,
            at,
            timer: None,
        }
    }
}

impl<F, T> Future for Deadline<F>
where
    F: Future<Output = wasmtime::Result<T>>,
{
    type Output = wasmtime::Result<T>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(out) = this.call.poll(cx) {
            return Poll::Ready(out);
        }
        let Some((at, timeout)) = *this.at else {
            return Poll::Pending;
        };
        let timer = this
            .timer
            .get_or_insert_with(|| Box::pin(unconstrained(tokio::time::sleep_until(at.into()))));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(LimitExceeded::Timeout(timeout).into())),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// When a timeout that started at `start` expires, with the timeout; `None`
/// when that instant is beyond what the clock can represent (no deadline).
pub(crate) fn deadline(start: Instant, timeout: Duration) -> Option<(Instant, Duration)> {
    start.checked_add(timeout).map(|d| (d, timeout))
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmtime::ResourceLimiter;

    #[test]
    fn memory_limit_counts_all_memories_and_tracks_peak() {
        let limits = Limits {
            max_memory: 100,
            ..Limits::default()
        };
        let mut l = StoreLimiter::new(&limits, None);
        assert!(l.memory_growing(0, 60, None).unwrap());
        assert!(!l.memory_growing(0, 50, None).unwrap());
        assert_eq!(l.refused, Some(LimitExceeded::Memory(100)));
        assert!(l.memory_growing(0, 40, None).unwrap());
        assert_eq!(l.peak_memory, 100);
    }

    #[test]
    fn wall_budget_expires() {
        let limits = Limits {
            timeout: Some(Duration::from_millis(1)),
            ..Limits::default()
        };
        let b = TimeBudget::new(&limits, Instant::now(), Arc::default());
        std::thread::sleep(Duration::from_millis(3));
        assert_eq!(
            b.check(),
            Err(LimitExceeded::Timeout(Duration::from_millis(1)))
        );
    }

    #[test]
    fn a_timeout_beyond_the_clock_is_no_deadline() {
        let limits = Limits {
            timeout: Some(Duration::MAX),
            ..Limits::default()
        };
        let b = TimeBudget::new(&limits, Instant::now(), Arc::default());
        assert_eq!(b.check(), Ok(()));
    }

    fn current_thread() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap()
    }

    fn timeout_of(r: &wasmtime::Result<u32>) -> Option<LimitExceeded> {
        r.as_ref().err()?.downcast_ref::<LimitExceeded>().copied()
    }

    #[test]
    fn a_deadline_stops_a_waiting_call_and_not_a_finished_one() {
        let rt = current_thread();
        let soon = Some((
            Instant::now() + Duration::from_millis(30),
            Duration::from_millis(30),
        ));
        let waited = rt.block_on(Deadline::new(std::future::pending(), soon));
        assert_eq!(
            timeout_of(&waited),
            Some(LimitExceeded::Timeout(Duration::from_millis(30)))
        );
        let past = Some((
            Instant::now() - Duration::from_secs(1),
            Duration::from_secs(1),
        ));
        let done = rt.block_on(Deadline::new(async { Ok(7) }, past));
        assert_eq!(done.unwrap(), 7, "a call that is ready is never timed out");
        let no_deadline = rt.block_on(Deadline::new(
            async {
                tokio::time::sleep(Duration::from_millis(20)).await;
                Ok(1)
            },
            None,
        ));
        assert_eq!(no_deadline.unwrap(), 1);
    }

    /// A call that spends tokio's cooperative budget on every poll (as a
    /// guest streaming through tokio pipes can) still meets its deadline.
    #[test]
    fn a_deadline_fires_for_a_call_that_uses_up_the_coop_budget() {
        let rt = current_thread();
        let began = Instant::now();
        let greedy = std::future::poll_fn(move |cx| -> Poll<wasmtime::Result<u32>> {
            if began.elapsed() > Duration::from_secs(5) {
                return Poll::Ready(Ok(0));
            }
            loop {
                let mut spend = std::pin::pin!(tokio::task::consume_budget());
                if spend.as_mut().poll(cx).is_pending() {
                    // Out of budget: tokio has asked to be polled again.
                    return Poll::Pending;
                }
            }
        });
        let soon = Some((began + Duration::from_millis(50), Duration::from_millis(50)));
        let out = rt.block_on(Deadline::new(greedy, soon));
        assert_eq!(
            timeout_of(&out),
            Some(LimitExceeded::Timeout(Duration::from_millis(50))),
            "starved of budget, the deadline did not fire"
        );
    }
}
