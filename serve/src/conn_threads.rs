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
//! A new connection goes to the least loaded thread: each thread measures
//! its own CPU use every 10 ms (in quarters: idle, a quarter busy, ...,
//! fully busy), and every four connections placed on it since count as one
//! more quarter; equals are split by open connections. So new connections go
//! away from a thread whose guest computes for long (even when another
//! thread holds many idle keep-alive connections), and a burst of them
//! spreads over the threads. Such a guest
//! does not starve the other connections already on its thread either: it
//! yields at every epoch tick in a way that lets its runtime poll sockets
//! and timers first (see `wasmlet_runtime`'s store), and its CPU time
//! limit ends it. What a thread-per-core server gives up is moving a
//! connection once placed: while one guest computes, the other requests of
//! its thread share that core with it, even if another core is idle.
//!
//! Each request is handled as a task of its own on its connection's thread
//! ([`RequestTask`]), not inside the connection's task: the connection task
//! then waits, and the thread goes on to the other connections' requests
//! that are ready. So a thread under load works in phases (read and parse
//! the requests that came, run their guests one after the other, write the
//! answers) instead of one request's whole path after another's: measured
//! on this project's 2-core VM (BENCHMARKS.md, tenth session), the
//! wasi:http hello took 20% less CPU a request at 16 connections, with
//! fewer context switches, the code of each phase staying hot in the caches.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// How often a connection thread measures its CPU use.
const SAMPLE_EVERY: Duration = Duration::from_millis(10);
/// How often it does when it has no connection.
const SAMPLE_IDLE: Duration = Duration::from_millis(100);

/// How many connections placed on a thread since its last sample weigh as
/// much as a quarter of its CPU busy.
const PLACED_PER_QUARTER: u32 = 4;

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
    /// Its CPU use over the last samples, in quarters (0 idle, 4 busy).
    quarters: AtomicU32,
    /// Connections placed on it since its last sample.
    placed: AtomicU32,
    /// Connections open.
    open: AtomicUsize,
}

impl Load {
    /// Lower is lighter.
    fn weight(&self) -> (u32, usize) {
        (
            self.quarters.load(Ordering::Relaxed) * PLACED_PER_QUARTER
                + self.placed.load(Ordering::Relaxed),
            self.open.load(Ordering::Relaxed),
        )
    }
}

/// Measures the thread's CPU use (run on the thread itself), smoothed over
/// a few samples, into `load`.
async fn sample(load: Arc<Load>) {
    let mut cpu = wasmlet_runtime::thread_cpu_time();
    let mut at = Instant::now();
    let mut smooth = 0.0f64;
    loop {
        let idle = load.open.load(Ordering::Relaxed) == 0;
        tokio::time::sleep(if idle { SAMPLE_IDLE } else { SAMPLE_EVERY }).await;
        let (now_cpu, now) = (wasmlet_runtime::thread_cpu_time(), Instant::now());
        let wall = now.duration_since(at).as_secs_f64().max(1e-6);
        let used = (now_cpu.saturating_sub(cpu).as_secs_f64() / wall).min(1.0);
        smooth = 0.6 * smooth + 0.4 * used;
        load.quarters
            .store((smooth * 4.0).round() as u32, Ordering::Relaxed);
        load.placed.store(0, Ordering::Relaxed);
        (cpu, at) = (now_cpu, now);
    }
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

/// A request's handling, spawned as a task of its own on the current
/// (connection) thread's runtime; dropping it (hyper drops a request whose
/// client left, or whose connection the drain deadline ended) aborts the
/// task, so the request's future is dropped as it would be inline.
pub(crate) struct RequestTask<T>(tokio::task::JoinHandle<T>);

impl<T: Send + 'static> RequestTask<T> {
    /// Spawns `handling` on the current runtime.
    pub(crate) fn spawn<F>(handling: F) -> Self
    where
        F: Future<Output = T> + Send + 'static,
    {
        RequestTask(tokio::spawn(handling))
    }
}

impl<T> Future for RequestTask<T> {
    /// A panic in the handling is the join error (hyper then closes the
    /// connection).
    type Output = Result<T, tokio::task::JoinError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0).poll(cx)
    }
}

impl<T> Drop for RequestTask<T> {
    fn drop(&mut self) {
        // A no-op once the task has finished.
        self.0.abort();
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
            let load = Arc::new(Load::default());
            let own = load.clone();
            let join = std::thread::Builder::new()
                .name(format!("wasmlet-conn-{i}"))
                .spawn(move || {
                    rt.block_on(async {
                        let sampler = tokio::spawn(sample(own));
                        let _ = stopped.await;
                        sampler.abort();
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

    /// The least loaded thread (the first of equals; see the module's doc),
    /// and a seat on it for one more connection.
    pub(crate) fn pick(&self) -> (&tokio::runtime::Handle, Seat) {
        let t = self
            .threads
            .iter()
            .min_by_key(|t| t.load.weight())
            .expect("at least one thread");
        t.load.open.fetch_add(1, Ordering::Relaxed);
        t.load.placed.fetch_add(1, Ordering::Relaxed);
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
    fn a_burst_of_connections_spreads_over_the_threads() {
        let threads = ConnThreads::start(3).unwrap();
        assert_eq!(threads.len(), 3);
        let seats: Vec<_> = (0..6).map(|_| threads.pick()).collect();
        let mut per = std::collections::HashMap::new();
        for (h, _) in &seats {
            *per.entry(h.id()).or_insert(0) += 1;
        }
        assert_eq!(per.len(), 3, "three threads");
        assert!(per.values().all(|n| *n == 2), "{per:?}");
    }

    #[test]
    fn new_connections_go_away_from_a_thread_that_computes() {
        let threads = ConnThreads::start(2).unwrap();
        // Thread A: one connection whose task computes without end (as a
        // guest does, yielding now and then).
        let (a, seat_a) = threads.pick();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let spinning = stop.clone();
        a.spawn(async move {
            let _seat = seat_a;
            while !spinning.load(Ordering::Relaxed) {
                let t = Instant::now();
                while t.elapsed() < Duration::from_millis(1) {}
                tokio::task::yield_now().await;
            }
        });
        let a = a.id();
        // Twenty idle connections, over both threads.
        let idle: Vec<_> = (0..20).map(|_| threads.pick()).collect();
        // Once A has measured itself busy, new connections go to B only.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            std::thread::sleep(Duration::from_millis(50));
            let picks: Vec<_> = (0..3).map(|_| threads.pick()).collect();
            if picks.iter().all(|(h, _)| h.id() != a) {
                break;
            }
            assert!(Instant::now() < deadline, "A never looked busy");
        }
        stop.store(true, Ordering::Relaxed);
        drop(idle);
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
    fn a_dropped_request_task_is_aborted_and_its_future_dropped() {
        let threads = ConnThreads::start(1).unwrap();
        let (h, _seat) = threads.pick();
        struct Dropped(std::sync::mpsc::Sender<()>);
        impl Drop for Dropped {
            fn drop(&mut self) {
                let _ = self.0.send(());
            }
        }
        let (tx, rx) = std::sync::mpsc::channel();
        let (ran_tx, ran_rx) = std::sync::mpsc::channel();
        h.spawn(async move {
            let task = RequestTask::spawn(async move {
                let _guard = Dropped(tx);
                ran_tx.send(()).unwrap();
                std::future::pending::<()>().await;
            });
            // Let it start, then drop it, as hyper drops a request.
            tokio::task::yield_now().await;
            tokio::task::yield_now().await;
            drop(task);
            std::future::pending::<()>().await;
        });
        ran_rx.recv_timeout(Duration::from_secs(10)).unwrap();
        rx.recv_timeout(Duration::from_secs(10))
            .expect("the request's future was dropped");
        // A task that finishes gives its output.
        let (out_tx, out_rx) = std::sync::mpsc::channel();
        h.spawn(async move {
            let out = RequestTask::spawn(async { 7 }).await.unwrap();
            out_tx.send(out).unwrap();
        });
        assert_eq!(out_rx.recv_timeout(Duration::from_secs(10)).unwrap(), 7);
    }

    #[test]
    fn zero_threads_means_one() {
        let threads = ConnThreads::start(0).unwrap();
        assert_eq!(threads.len(), 1);
        let _ = threads.pick();
    }
}
