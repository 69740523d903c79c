//! The epoch ticker: a background thread that advances the engine's epoch
//! so a running guest can be checked against its CPU-time and wall-clock
//! budgets, as rarely as those budgets allow.
//!
//! - While any running invocation's smallest time limit is short (under
//!   [`LONG_LIMIT_TICKS`] ticks) it ticks every tick.
//! - While only invocations whose limits are all long run, and no more of
//!   them than the host has cores, it ticks every [`LONG_LIMIT_TICK_EVERY`]
//!   ticks: each limit is still checked within 1% of itself. More of them
//!   than cores take turns on a thread (each runs until the next tick, then
//!   yields), and a guest whose time is up is only stopped at its turn: a
//!   coarse tick would make that wait ten times as long, so it ticks every
//!   tick then. (With N computing guests on a thread, a limit is checked
//!   up to N ticks late.)
//! - Once none has run for [`IDLE_GRACE_TICKS`] of those coarse ticks it
//!   parks, so an idle runtime costs no CPU.
//!
//! An invocation entering wakes the thread only when it has to: one that
//! needs fine ticks (a short limit, or one long one too many) while the
//! thread sleeps a coarse tick or is parked, any while it is parked. Every
//! wakeup is a context switch on a core that is likely running guests (on
//! the project's 2-core VM, waking the thread on every request cost a
//! wasi:http hello server a fifth of its throughput), so a busy server
//! does not wake it at all.

use crate::error::Error;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering::SeqCst};
use std::thread::{self, JoinHandle};
use std::time::Duration;
use wasmtime::Engine;

/// A time limit this many ticks long or longer is a long one.
pub(crate) const LONG_LIMIT_TICKS: u32 = 1000;
/// While only invocations with long limits run, the epoch advances every
/// this many ticks.
pub(crate) const LONG_LIMIT_TICK_EVERY: u32 = 10;
/// Coarse ticks the thread goes on ticking after the last invocation
/// leaves before it parks (100 ms at the default 1 ms tick): a server
/// between two requests does not pay a wakeup for the second.
pub(crate) const IDLE_GRACE_TICKS: u32 = 10;

/// How the ticker thread is sleeping.
const PARKED: u8 = 0;
const COARSE: u8 = 1;
const FINE: u8 = 2;

pub(crate) struct EpochTicker {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    tick: Duration,
}

struct Shared {
    /// Invocations running whose smallest time limit is short.
    short: AtomicUsize,
    /// And those whose limits are all long.
    long: AtomicUsize,
    /// More long ones than this (the host's cores) running need fine ticks.
    crowd: usize,
    /// `PARKED`, `COARSE` or `FINE`.
    mode: AtomicU8,
    stop: AtomicBool,
    /// Ticks so far (for tests).
    ticks: AtomicUsize,
}

// The thread and `enter` agree through `mode` and the counters, all
// sequentially consistent: the thread stores its mode, then reads the
// counters; `enter` bumps a counter, then reads the mode. So either the
// thread sees the new invocation, or `enter` sees the old mode and unparks
// the thread (an unpark before the park makes the park return at once).
impl EpochTicker {
    pub(crate) fn start(engine: Engine, tick: Duration) -> Result<Self, Error> {
        let shared = Arc::new(Shared {
            short: AtomicUsize::new(0),
            long: AtomicUsize::new(0),
            crowd: thread::available_parallelism().map_or(1, |n| n.get()),
            mode: AtomicU8::new(COARSE),
            stop: AtomicBool::new(false),
            ticks: AtomicUsize::new(0),
        });
        let s = shared.clone();
        let thread = thread::Builder::new()
            .name("wasmlet-epoch".into())
            .spawn(move || s.run(&engine, tick))
            .map_err(|e| Error::Config(format!("cannot start epoch ticker: {e}")))?;
        Ok(EpochTicker {
            shared,
            thread: Some(thread),
            tick,
        })
    }

    /// Marks one invocation, whose smallest time limit (CPU time or wall
    /// clock) is `limit`, as running until the guard drops.
    pub(crate) fn enter(&self, limit: Duration) -> TickGuard<'_> {
        // (A tick so long that a thousand overflow: no limit is long.)
        let long = self
            .tick
            .checked_mul(LONG_LIMIT_TICKS)
            .is_some_and(|long| limit >= long);
        let s = &*self.shared;
        let counter = if long { &s.long } else { &s.short };
        let now = counter.fetch_add(1, SeqCst) + 1;
        let fine = if long {
            s.needs_fine(0, now)
        } else {
            s.needs_fine(now, 0)
        };
        let mode = s.mode.load(SeqCst);
        let wake = if fine { mode != FINE } else { mode == PARKED };
        if wake && let Some(t) = &self.thread {
            t.thread().unpark();
        }
        TickGuard(counter)
    }
}

impl Shared {
    /// Whether `short` and `long` invocations running need a tick every
    /// tick: any short limit, or more long ones than cores.
    fn needs_fine(&self, short: usize, long: usize) -> bool {
        short > 0 || long > self.crowd
    }

    fn run(&self, engine: &Engine, tick: Duration) {
        let coarse = tick.saturating_mul(LONG_LIMIT_TICK_EVERY);
        // Start parked: nothing runs yet.
        let mut idle = IDLE_GRACE_TICKS;
        while !self.stop.load(SeqCst) {
            self.mode.store(COARSE, SeqCst);
            let long = self.long.load(SeqCst);
            let fine = self.needs_fine(self.short.load(SeqCst), long);
            if fine {
                self.mode.store(FINE, SeqCst);
            }
            if fine || long > 0 {
                idle = 0;
            } else if idle >= IDLE_GRACE_TICKS {
                self.mode.store(PARKED, SeqCst);
                if self.short.load(SeqCst) == 0 && self.long.load(SeqCst) == 0 {
                    thread::park();
                }
                idle = 0;
                continue;
            } else {
                idle += 1;
            }
            thread::park_timeout(if fine { tick } else { coarse });
            engine.increment_epoch();
            self.ticks.fetch_add(1, SeqCst);
        }
    }
}

pub(crate) struct TickGuard<'a>(&'a AtomicUsize);

impl Drop for TickGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, SeqCst);
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.shared.stop.store(true, SeqCst);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TICK: Duration = Duration::from_millis(1);
    const WINDOW: Duration = Duration::from_millis(300);
    /// Longer than the idle grace (100 ms) with room for a loaded machine.
    const SETTLE: Duration = Duration::from_millis(250);

    fn ticker() -> EpochTicker {
        EpochTicker::start(Engine::default(), TICK).unwrap()
    }

    fn ticks(t: &EpochTicker) -> usize {
        t.shared.ticks.load(SeqCst)
    }

    /// The ticks while the calling thread sleeps `d`.
    fn ticks_over(t: &EpochTicker, d: Duration) -> usize {
        let before = ticks(t);
        std::thread::sleep(d);
        ticks(t) - before
    }

    #[test]
    fn the_epoch_ticks_a_tenth_as_often_while_only_long_limits_run() {
        let ticker = ticker();
        std::thread::sleep(WINDOW);
        assert_eq!(ticks(&ticker), 0, "idle: parked");
        // A 5 s timeout: every 10 ms, ~30 in the window (a loaded machine
        // only makes fewer); at 1 ms it would be ~300.
        let long = ticker.enter(Duration::from_secs(5));
        let long_ticks = ticks_over(&ticker, WINDOW);
        assert!((1..=45).contains(&long_ticks), "{long_ticks}");
        // A 100 ms CPU limit enters: every 1 ms again.
        let short = ticker.enter(Duration::from_millis(100));
        let short_ticks = ticks_over(&ticker, WINDOW);
        assert!(short_ticks >= 60, "{short_ticks}");
        drop((long, short));
        std::thread::sleep(SETTLE);
        let after = ticks_over(&ticker, WINDOW);
        assert!(after <= 1, "parked again once none runs");
    }

    #[test]
    fn invocations_coming_and_going_do_not_wake_the_ticker_each_time() {
        let ticker = ticker();
        // A server's requests one after another, each alone for a moment,
        // with gaps shorter than the idle grace between them.
        let start = std::time::Instant::now();
        let mut n = 0;
        while start.elapsed() < WINDOW {
            for _ in 0..100 {
                drop(ticker.enter(Duration::from_secs(5)));
            }
            n += 100;
            std::thread::sleep(Duration::from_micros(200));
        }
        let elapsed = start.elapsed();
        // Coarse ticks only: about one per 10 ms, not one per request.
        let most = elapsed.as_millis() as usize / 10 + 3;
        assert!(n > 1000, "{n}");
        assert!(
            ticks(&ticker) <= most,
            "{} ticks for {n} requests in {elapsed:?}",
            ticks(&ticker)
        );
        // A short limit entering while it ticks coarsely: finely from then on.
        let short = ticker.enter(Duration::from_millis(50));
        let fine = ticks_over(&ticker, Duration::from_millis(100));
        assert!(fine >= 20, "{fine}");
        drop(short);
    }

    #[test]
    fn more_long_limits_running_than_cores_tick_finely() {
        let ticker = ticker();
        let crowd = ticker.shared.crowd;
        let mut guards: Vec<_> = (0..crowd)
            .map(|_| ticker.enter(Duration::from_secs(5)))
            .collect();
        let coarse = ticks_over(&ticker, WINDOW);
        assert!(coarse <= 45, "as many as cores: coarse ({coarse})");
        // One more: they take turns on a thread, so every tick again.
        guards.push(ticker.enter(Duration::from_secs(5)));
        let fine = ticks_over(&ticker, WINDOW);
        assert!(fine >= 60, "one more than cores: fine ({fine})");
        // Back to as many as cores: coarse again.
        guards.pop();
        std::thread::sleep(Duration::from_millis(20));
        let again = ticks_over(&ticker, WINDOW);
        assert!(again <= 45, "coarse again ({again})");
    }

    #[test]
    fn an_invocation_entering_a_parked_ticker_wakes_it() {
        let ticker = ticker();
        std::thread::sleep(WINDOW);
        assert_eq!(ticks(&ticker), 0, "parked");
        let long = ticker.enter(Duration::from_secs(5));
        let woken = ticks_over(&ticker, Duration::from_millis(100));
        assert!(woken >= 2, "{woken}");
        drop(long);
    }
}
