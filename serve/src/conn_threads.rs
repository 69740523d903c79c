//! The connection threads: one single-threaded tokio runtime per core, each
//! serving the connections handed to it, as thread-per-core servers
//! (nginx's workers, Seastar) do.
//!
//! A connection's requests, and the fresh instance each one runs in, stay on
//! the thread that took the connection: no work stealing, no wake-ups across
//! threads, its socket in that thread's own epoll. Measured against one
//! multi-threaded runtime on this machine's 2 cores (BENCHMARKS.md, eighth
//! session), the wasi:http hello served about 11% more requests per second
//! at 16 connections. A new connection goes to the thread with the fewest
//! open connections, so long-lived connections spread evenly.
//!
//! A guest that computes for long does not starve the others on its thread:
//! the executor's epoch ticks make every guest yield to its runtime at each
//! tick, and its CPU time limit ends it.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// How long dropping the threads waits for each one's blocking tasks (a
/// sandboxed function's call in flight) before leaving them.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(1);

/// The connection threads; dropping this stops them (their connections
/// end) and joins them.
pub(crate) struct ConnThreads {
    threads: Vec<ConnThread>,
}

struct ConnThread {
    handle: tokio::runtime::Handle,
    /// Connections open on this thread.
    open: Arc<AtomicUsize>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    join: Option<std::thread::JoinHandle<()>>,
}

/// A connection's place on its thread: counted open until dropped.
pub(crate) struct Seat {
    open: Arc<AtomicUsize>,
}

impl Drop for Seat {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
    }
}

impl ConnThreads {
    /// Starts `n` threads (at least one), named `wasmlet-conn-<i>`.
    pub(crate) fn start(n: usize) -> io::Result<ConnThreads> {
        let mut threads = Vec::with_capacity(n.max(1));
        for i in 0..n.max(1) {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let handle = rt.handle().clone();
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let join = std::thread::Builder::new()
                .name(format!("wasmlet-conn-{i}"))
                .spawn(move || {
                    rt.block_on(async {
                        let _ = stopped.await;
                    });
                    rt.shutdown_timeout(SHUTDOWN_TIMEOUT);
                })?;
            threads.push(ConnThread {
                handle,
                open: Arc::new(AtomicUsize::new(0)),
                stop: Some(stop),
                join: Some(join),
            });
        }
        Ok(ConnThreads { threads })
    }

    /// As many threads as this process may use cores
    /// ([`std::thread::available_parallelism`], which reads the cgroup's
    /// CPU quota).
    pub(crate) fn per_core() -> io::Result<ConnThreads> {
        ConnThreads::start(std::thread::available_parallelism().map_or(1, |n| n.get()))
    }

    /// The thread with the fewest open connections (the first of equals),
    /// and a seat on it for one more.
    pub(crate) fn pick(&self) -> (&tokio::runtime::Handle, Seat) {
        let t = self
            .threads
            .iter()
            .min_by_key(|t| t.open.load(Ordering::Relaxed))
            .expect("at least one thread");
        t.open.fetch_add(1, Ordering::Relaxed);
        (
            &t.handle,
            Seat {
                open: t.open.clone(),
            },
        )
    }

    /// How many threads there are.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.threads.len()
    }
}

impl Drop for ConnThreads {
    fn drop(&mut self) {
        for t in &mut self.threads {
            if let Some(stop) = t.stop.take() {
                let _ = stop.send(());
            }
        }
        for t in &mut self.threads {
            if let Some(join) = t.join.take() {
                let _ = join.join();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_connection_goes_to_the_thread_with_the_fewest() {
        let threads = ConnThreads::start(3).unwrap();
        assert_eq!(threads.len(), 3);
        let ids = |threads: &ConnThreads| {
            let (h, seat) = threads.pick();
            (h.id(), seat)
        };
        let (a, seat_a) = ids(&threads);
        let (b, _seat_b) = ids(&threads);
        let (c, _seat_c) = ids(&threads);
        assert!(a != b && b != c && a != c, "three seats on three threads");
        // The first thread's connection ends: the next goes there.
        drop(seat_a);
        let (d, _seat_d) = ids(&threads);
        assert_eq!(d, a);
    }

    #[test]
    fn tasks_run_on_their_own_thread_and_dropping_ends_them() {
        let threads = ConnThreads::start(2).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let (h, _seat) = threads.pick();
        h.spawn(async move {
            tx.send(std::thread::current().name().map(String::from))
                .unwrap();
            // A connection that never ends by itself.
            std::future::pending::<()>().await;
        });
        let name = rx.recv_timeout(Duration::from_secs(10)).unwrap();
        assert!(name.unwrap().starts_with("wasmlet-conn-"));
        let started = std::time::Instant::now();
        drop(threads);
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "drop joined the threads"
        );
    }

    #[test]
    fn zero_threads_means_one() {
        let threads = ConnThreads::start(0).unwrap();
        assert_eq!(threads.len(), 1);
        let _ = threads.pick();
    }
}
