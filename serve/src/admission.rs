//! Backpressure: how many instances of a function run at once, how many
//! requests may wait for one and for how long, and the host-wide cap on
//! instances in flight.
//!
//! ```text
//!  request ─▶ function permit free? ──yes──▶ global permit ─▶ run
//!                  │ no                          (waits within the same
//!                  ▼                              queue_timeout)
//!            queue full? ──yes──▶ 503 Retry-After
//!                  │ no
//!                  ▼
//!            wait ≤ queue_timeout ──timeout──▶ 503 Retry-After
//! ```
//!
//! Both semaphores are FIFO, so waiting requests are served in order. A
//! function's permits live across reloads while its `max_concurrency` and
//! queue settings stay the same, so old and new instances together still
//! respect them.

use crate::metrics::{Cause, FunctionMetrics, Metrics};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// A function's concurrency limit and queue.
#[derive(Debug)]
pub struct Admission {
    permits: Arc<Semaphore>,
    /// `max_concurrency`, `queue_depth`, `queue_timeout`: what it was made for.
    pub(crate) shape: (u32, u32, Duration),
}

/// The host-wide cap on instances in flight.
#[derive(Debug)]
pub struct Global {
    permits: Arc<Semaphore>,
    pub(crate) max: u32,
}

impl Global {
    /// A cap of `max` instances.
    pub fn new(max: u32) -> Self {
        Global {
            permits: Arc::new(Semaphore::new(max as usize)),
            max,
        }
    }
}

/// Permission to run one instance; dropping it frees the places.
pub struct Admitted {
    _function: OwnedSemaphorePermit,
    _global: OwnedSemaphorePermit,
    metrics: Arc<FunctionMetrics>,
    all: Arc<Metrics>,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.metrics.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.all.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Counts a request in the queue while it waits (also if it is cancelled).
struct Queued<'a>(&'a FunctionMetrics);

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.0.queued.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Admission {
    /// `max_concurrency` instances, `queue_depth` waiting requests, each
    /// for at most `queue_timeout`.
    pub fn new(max_concurrency: u32, queue_depth: u32, queue_timeout: Duration) -> Self {
        Admission {
            permits: Arc::new(Semaphore::new(max_concurrency as usize)),
            shape: (max_concurrency, queue_depth, queue_timeout),
        }
    }

    /// Waits for a place to run, or says why there is none (a
    /// [`Cause::QueueFull`] or [`Cause::QueueTimeout`] for a 503).
    pub async fn admit(
        &self,
        global: &Global,
        metrics: &Arc<FunctionMetrics>,
        all: &Arc<Metrics>,
    ) -> Result<Admitted, Cause> {
        let (_, depth, timeout) = self.shape;
        let deadline = Instant::now() + timeout;
        let (function, global) = match (
            self.permits.clone().try_acquire_owned(),
            global.permits.clone().try_acquire_owned(),
        ) {
            (Ok(f), Ok(g)) => (f, g),
            (f, g) => {
                // Wait in the queue, if there is room in it.
                let before = metrics.queued.fetch_add(1, Ordering::Relaxed);
                let _queued = Queued(metrics);
                if before >= i64::from(depth) {
                    return Err(Cause::QueueFull);
                }
                let wait = async {
                    let f = match f {
                        Ok(f) => f,
                        Err(_) => self.permits.clone().acquire_owned().await.ok()?,
                    };
                    let g = match g {
                        Ok(g) => g,
                        Err(_) => global.permits.clone().acquire_owned().await.ok()?,
                    };
                    Some((f, g))
                };
                match tokio::time::timeout_at(deadline, wait).await {
                    Ok(Some(p)) => p,
                    Ok(None) | Err(_) => return Err(Cause::QueueTimeout),
                }
            }
        };
        metrics.in_flight.fetch_add(1, Ordering::Relaxed);
        all.in_flight.fetch_add(1, Ordering::Relaxed);
        Ok(Admitted {
            _function: function,
            _global: global,
            metrics: metrics.clone(),
            all: all.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn queues_then_refuses() {
        let all = Arc::new(Metrics::default());
        let m = all.function("f");
        let global = Global::new(100);
        let adm = Arc::new(Admission::new(1, 1, Duration::from_millis(100)));
        let first = adm.admit(&global, &m, &all).await.ok().unwrap();
        // One waits in the queue; a third finds it full.
        let waiter = {
            let (adm, m, all) = (adm.clone(), m.clone(), all.clone());
            tokio::spawn(async move {
                let g = Global::new(100);
                adm.admit(&g, &m, &all).await.map(|_| ())
            })
        };
        tokio::task::yield_now().await;
        assert_eq!(m.queued.load(Ordering::Relaxed), 1);
        assert_eq!(
            adm.admit(&global, &m, &all).await.err(),
            Some(Cause::QueueFull)
        );
        // The waiter times out after queue_timeout.
        assert_eq!(waiter.await.unwrap(), Err(Cause::QueueTimeout));
        drop(first);
        assert!(adm.admit(&global, &m, &all).await.is_ok());
        assert_eq!(m.queued.load(Ordering::Relaxed), 0);
        assert_eq!(m.in_flight.load(Ordering::Relaxed), 0);
    }
}
