//! The connection threads: one single-threaded tokio runtime per core, each
//! serving the connections handed to it, as thread-per-core servers
//! (nginx's workers, Seastar) do.
//!
//! A connection's requests, and the fresh instance each one runs in, stay on
//! the thread that took the connection: no work stealing, no wake-ups across
//! threads, its socket in that thread's own epoll. Measured against one
//! multi-threaded runtime on this machine's 2 cores (BENCHMARKS.md, eighth
//! session), the wasi:http hello served 6-11% more requests per second at
//! 16 connections.
//!
//! A new connection goes to the thread with the fewest requests in flight,
//! then the fewest open connections: away from a thread whose guest
//! computes for long, and evenly for long-lived connections. Such a guest
//! does not starve the other connections already on its thread either: it
//! yields at every epoch tick in a way that lets its runtime poll sockets
//! and timers first (see `wasmlet_runtime`'s store), and its CPU time
//! limit ends it. What a thread-per-core server gives up is moving a
//! connection once placed: while one guest computes, the other requests of
//! its thread share that core with it, even if another core is idle.

use std::cell::RefCell;
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
    load: Arc<Load>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    join: Option<std::thread::JoinHandle<()>>,
}

/// What a connection thread has on it.
#[derive(Default)]
struct Load {
    /// Requests in flight.
    busy: AtomicUsize,
    /// Connections open.
    open: AtomicUsize,
}

thread_local! {
    /// The load of the connection thread this is, if it is one.
    static LOAD: RefCell<Option<Arc<Load>>> = const { RefCell::new(None) };
}

/// A connection's place on its thread: counted open until dropped.
pub(crate) struct Seat {
    load: Arc<Load>,
}

impl Drop for Seat {
    fn drop(&mut self) {
        self.load.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A request in flight on a connection thread, counted until dropped.
pub(crate) struct Busy {
    load: Arc<Load>,
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.load.busy.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Counts a request in flight on this thread, if it is a connection
/// thread, until the result is dropped.
pub(crate) fn busy() -> Option<Busy> {
    LOAD.with(|l| {
        l.borrow().as_ref().map(|load| {
            load.busy.fetch_add(1, Ordering::Relaxed);
            Busy { load: load.clone() }
        })
    })
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
            let load = Arc::new(Load::default());
            let own = load.clone();
            let join = std::thread::Builder::new()
                .name(format!("wasmlet-conn-{i}"))
                .spawn(move || {
                    LOAD.with(|l| *l.borrow_mut() = Some(own));
                    rt.block_on(async {
                        let _ = stopped.await;
                    });
                    rt.shutdown_timeout(SHUTDOWN_TIMEOUT);
                })?;
            threads.push(ConnThread {
                handle,
                load,
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

    /// The thread with the fewest requests in flight, then the fewest open
    /// connections (the first of equals), and a seat on it for one more.
    pub(crate) fn pick(&self) -> (&tokio::runtime::Handle, Seat) {
        let t = self
            .threads
            .iter()
            .min_by_key(|t| {
                (
                    t.load.busy.load(Ordering::Relaxed),
                    t.load.open.load(Ordering::Relaxed),
                )
            })
            .expect("at least one thread");
        t.load.open.fetch_add(1, Ordering::Relaxed);
        (
            &t.handle,
            Seat {
                load: t.load.clone(),
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
    fn a_thread_with_a_request_in_flight_gets_no_new_connection_while_another_has_none() {
        let threads = ConnThreads::start(2).unwrap();
        // Thread A: one connection, running a long request.
        let (a, seat_a) = threads.pick();
        let (tx, rx) = std::sync::mpsc::channel();
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        a.spawn(async move {
            let _seat = seat_a;
            let busy = busy();
            tx.send(busy.is_some()).unwrap();
            let _ = released.await;
        });
        assert!(rx.recv_timeout(Duration::from_secs(10)).unwrap(), "counted");
        let a = a.id();
        // Thread B: five idle connections. New ones still go to B.
        let idle: Vec<_> = (0..5).map(|_| threads.pick()).collect();
        assert!(idle.iter().all(|(h, _)| h.id() != a));
        let (next, _seat) = threads.pick();
        assert_ne!(next.id(), a);
        // Its request done, A is the lighter: the next goes there.
        release.send(()).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let (h, _s) = threads.pick();
            if h.id() == a {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "A never freed");
            std::thread::sleep(Duration::from_millis(5));
        }
        // Off the connection threads, nothing is counted.
        assert!(busy().is_none());
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
