//! The server: listeners, connections, the request path, the admin
//! endpoints, signals and reloads.
//!
//! ```text
//!  accept ─▶ hyper http1 connection (header timeout, head size cap)
//!    request ─▶ x-request-id ─▶ route (404) ─▶ body (413/408)
//!      ─▶ admission (503 + Retry-After) ─▶ handler: WAGI or wasi:http
//!      ─▶ status mapping, stderr to the log, usage record, metrics
//!  SIGHUP / manifest or module changed ─▶ App::load off the request path
//!      ─▶ swapped in (old requests finish on the old functions)
//!  SIGTERM / SIGINT ─▶ stop accepting, readyz 503, drain ≤ drain_timeout, exit
//!  every request (404/413/431/503 too) ─▶ one usage-log line, queued
//!      before the response is sent (see [`crate::usage_log`]);
//!  schedule and file triggers run beside it (see [`crate::trigger`])
//! ```

use crate::app::{App, Func, stamp};
use crate::conn_threads::{ConnThreads, RequestTask};
use crate::error::{LoadError, ServeError};
use crate::handler::Handler;
use crate::http::{BodyFault, FaultCell, Held, HttpHandler, NoteCut, RequestBody};
use crate::manifest::{Manifest, Route};
use crate::metrics::{Cause, Metrics};
use crate::send_timeout::SendTimeout;
use crate::usage_log::{LineHead, LineOutcome, UsageLine, UsageLog, interrupted};
use crate::wagi::{CgiRequest, parse_output};
use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use wasmlet_runtime::{
    Entry, Input, Invocation, LimitExceeded, Output, Runtime, RuntimeBuilder, RuntimeConfig,
    Status, UsageProbe, UsageRecord,
};

/// A response body: streamed, boxed, the runtime's
/// [`wasmlet_runtime::http::HttpBody`] (a wasi:http guest's response body
/// goes to the client as it is).
pub type Body = wasmlet_runtime::http::HttpBody;

/// How often the manifest and its modules are checked for changes.
pub const WATCH_INTERVAL: Duration = Duration::from_secs(1);
/// Smallest head buffer hyper accepts (`max_buf_size`).
const MIN_HEAD_BUFFER: u64 = 8192;
/// Longest `x-request-id` taken from a client.
const MAX_REQUEST_ID: usize = 128;
/// Longest `x-wasmlet-error` value.
const MAX_ERROR_HEADER: usize = 256;

/// How the server makes its runtime: `RuntimeBuilder::new(config)`, passed
/// through the embedder's function, which adds its host functions and host
/// interfaces (`RuntimeBuilder::host_func`, `component_linker`). The
/// function runs again whenever a reload changes the runtime's settings.
/// The `wasmlet` binary uses the default: WASI only.
///
/// ```
/// use wasmlet_runtime::HostCx;
/// use wasmlet_serve::RuntimeSetup;
/// let setup = RuntimeSetup::new(|b| {
///     b.host_func("platform", "answer", |_cx: HostCx<'_>| -> u32 { 42 })
/// });
/// # let _ = setup;
/// ```
#[derive(Clone, Default)]
pub struct RuntimeSetup(Option<Arc<SetupFn>>);

type SetupFn = dyn Fn(RuntimeBuilder) -> RuntimeBuilder + Send + Sync;

impl RuntimeSetup {
    /// A setup that passes each new runtime's builder through `f`.
    pub fn new(f: impl Fn(RuntimeBuilder) -> RuntimeBuilder + Send + Sync + 'static) -> Self {
        RuntimeSetup(Some(Arc::new(f)))
    }

    /// Builds a runtime with `config` and this setup's additions.
    pub(crate) fn build(&self, config: RuntimeConfig) -> Result<Runtime, wasmlet_runtime::Error> {
        let builder = RuntimeBuilder::new(config);
        match &self.0 {
            Some(f) => f(builder).build(),
            None => builder.build(),
        }
    }
}

impl std::fmt::Debug for RuntimeSetup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "RuntimeSetup(embedder's)"
        } else {
            "RuntimeSetup(WASI only)"
        })
    }
}

/// What `wasmlet serve` was asked to do.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// The manifest.
    pub manifest: PathBuf,
    /// Overrides the manifest's `listen`.
    pub listen: Option<String>,
    /// Overrides the manifest's `admin_listen`.
    pub admin_listen: Option<String>,
    /// The runtime configuration to start from (cache settings); the pool
    /// and fuel metering are set from the manifest.
    pub runtime: RuntimeConfig,
    /// Log each invocation's usage record (one JSON object per line).
    pub usage: bool,
    /// Overrides the manifest's `usage_log`.
    pub usage_log: Option<PathBuf>,
    /// The embedder's host functions and interfaces (default: none).
    pub setup: RuntimeSetup,
}

/// What a handler produced for one request.
pub(crate) struct Handled {
    pub response: Response<Body>,
    /// Why it is an error response, if it is one.
    pub cause: Option<Cause>,
    /// The usage record, when an instance ran.
    pub usage: Option<UsageRecord>,
    /// For a response still streaming: the final record, when the guest
    /// ends (then the line is written).
    pub final_usage: Option<FinalUsage>,
}

/// The final usage record of an invocation whose response was still
/// streaming when it was sent (`None` if the guest's task went away).
pub(crate) type FinalUsage =
    std::pin::Pin<Box<dyn std::future::Future<Output = Option<UsageRecord>> + Send>>;

/// Usage lines waiting for a streaming invocation to end, as they stood
/// when its response head went out: the server's exit waits for them (at
/// most until its drain deadline), then writes the rest as they are.
#[derive(Default)]
struct PendingLines {
    lines: std::sync::Mutex<HashMap<u64, Pending>>,
    next: AtomicU64,
    none_left: tokio::sync::Notify,
}

enum Pending {
    /// Waiting for its guest to end; the guest's figures so far.
    Held(Box<UsageLine>, UsageProbe),
    /// Taken by its task, being queued.
    Writing,
}

impl PendingLines {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Pending>> {
        self.lines.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Holds `line` until its guest ends; the key to take it back.
    fn hold(&self, line: UsageLine, probe: UsageProbe) -> u64 {
        let key = self.next.fetch_add(1, Ordering::Relaxed);
        self.lock()
            .insert(key, Pending::Held(Box::new(line), probe));
        key
    }

    /// Takes back a held line to write it (`None` if the exit already
    /// wrote it); [`PendingLines::done`] once it is queued.
    fn take(&self, key: u64) -> Option<UsageLine> {
        // (The lock is released before `done` takes it again.)
        let was = self.lock().insert(key, Pending::Writing);
        match was {
            Some(Pending::Held(line, _)) => Some(*line),
            _ => {
                self.done(key);
                None
            }
        }
    }

    fn done(&self, key: u64) {
        let mut lines = self.lock();
        lines.remove(&key);
        if lines.is_empty() {
            self.none_left.notify_waiters();
        }
    }

    /// Every line still held (their guests still running), with their
    /// guests' figures, for the exit.
    fn take_all(&self) -> Vec<(UsageLine, UsageProbe)> {
        let mut lines = self.lock();
        let held: Vec<u64> = lines
            .iter()
            .filter(|(_, p)| matches!(p, Pending::Held(..)))
            .map(|(k, _)| *k)
            .collect();
        let taken = held
            .into_iter()
            .filter_map(|k| match lines.remove(&k) {
                Some(Pending::Held(line, probe)) => Some((*line, probe)),
                _ => None,
            })
            .collect();
        if lines.is_empty() {
            self.none_left.notify_waiters();
        }
        taken
    }

    async fn wait(&self) {
        loop {
            let notified = self.none_left.notified();
            if self.lock().is_empty() {
                return;
            }
            notified.await;
        }
    }
}

/// Loads and checks the manifest and every function (compiling them), as
/// `serve --check` does; nothing is served.
pub fn check(opts: &ServeOptions) -> Result<App, ServeError> {
    let manifest = Manifest::load(&opts.manifest).map_err(LoadError::from)?;
    preflight(opts, &manifest)?;
    Ok(App::load(
        manifest,
        &opts.runtime,
        &opts.setup,
        None,
        &Metrics::default(),
    )?)
}

/// Whether `a` and `b` name one existing file (see [`preflight`]).
fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let id = |p: &Path| {
        std::fs::metadata(p)
            .or_else(|_| std::fs::metadata(lexical(p)))
            .ok()
            .map(|m| (m.dev(), m.ino()))
    };
    matches!((id(a), id(b)), (Some(x), Some(y)) if x == y)
}

/// `p` with `.` and `..` taken away lexically.
fn lexical(p: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    out.push("..");
                }
            }
            c => out.push(c),
        }
    }
    out
}

/// What the server needs beyond the functions, checked before anything is
/// bound or opened (by `serve` and `serve --check` alike).
struct Preflight {
    listen: String,
    admin_listen: String,
    admin_token: Option<String>,
    usage_path: PathBuf,
}

fn preflight(opts: &ServeOptions, manifest: &Manifest) -> Result<Preflight, ServeError> {
    let at = manifest.path.display();
    let listen = opts.listen.clone().unwrap_or(manifest.listen.clone());
    let admin_listen = opts
        .admin_listen
        .clone()
        .unwrap_or(manifest.admin_listen.clone());
    let resolve = |what: &str, addr: &str| {
        use std::net::ToSocketAddrs;
        addr.to_socket_addrs()
            .map_err(|e| ServeError::Listen {
                addr: addr.to_string(),
                error: format!("{what} is not a HOST:PORT address: {e}"),
            })?
            .collect::<Vec<_>>()
            .first()
            .copied()
            .ok_or_else(|| ServeError::Listen {
                addr: addr.to_string(),
                error: format!("{what} resolves to no address"),
            })
    };
    let (l, a) = (
        resolve("listen", &listen)?,
        resolve("admin_listen", &admin_listen)?,
    );
    // An address of this host? (Bound on port 0, so a running server's own
    // port does not get in the way of `--check`.)
    for (what, addr, at_addr) in [("listen", &listen, l), ("admin_listen", &admin_listen, a)] {
        if let Err(e) = std::net::TcpListener::bind((at_addr.ip(), 0)) {
            return Err(ServeError::Listen {
                addr: addr.clone(),
                error: format!("{what} is not an address of this host: {e}"),
            });
        }
    }
    if l.port() == a.port()
        && l.port() != 0
        && (l.ip() == a.ip() || l.ip().is_unspecified() || a.ip().is_unspecified())
    {
        return Err(ServeError::Listen {
            addr: listen,
            error: "listen and admin_listen are the same address: give the admin listener its own (--admin-listen)".into(),
        });
    }
    let admin_token = match &manifest.server.admin_token_env {
        Some(var) => Some(std::env::var(var).map_err(|_| {
            ServeError::Start(format!(
                "{at}: server.admin_token_env names {var}, which is not set (or not UTF-8)"
            ))
        })?),
        None => None,
    };
    if manifest.server.max_header_size < MIN_HEAD_BUFFER {
        return Err(ServeError::Start(format!(
            "{at}: server.max_header_size must be at least {MIN_HEAD_BUFFER} bytes"
        )));
    }
    let usage_path = opts
        .usage_log
        .clone()
        .unwrap_or_else(|| manifest.usage_log.clone());
    // Appending usage lines to the manifest or a module would corrupt it.
    // The same file by device and inode (so hard links and symlinks too);
    // a path that does not resolve yet (`nodir/..`: the log's directories
    // are created when it is opened) by its lexical form.
    let same = |a: &Path, b: &Path| a == b || same_file(a, b);
    if same(&usage_path, &manifest.path) {
        return Err(ServeError::Start(format!(
            "{at}: the usage log {} is the manifest itself",
            usage_path.display()
        )));
    }
    if let Some(f) = manifest
        .functions
        .iter()
        .find(|f| same(&usage_path, &f.module))
    {
        return Err(ServeError::Start(format!(
            "{at}: the usage log {} is function {}'s module",
            usage_path.display(),
            f.name
        )));
    }
    crate::trigger::file::check_dirs(manifest, &usage_path).map_err(ServeError::Start)?;
    crate::usage_log::check_path(&usage_path)
        .map_err(|e| ServeError::Start(format!("{at}: usage log {}: {e}", usage_path.display())))?;
    Ok(Preflight {
        listen,
        admin_listen,
        admin_token,
        usage_path,
    })
}

/// A server with its listeners bound, ready to [`Server::run`].
pub struct Server {
    shared: Arc<Shared>,
    listener: std::net::TcpListener,
    admin: std::net::TcpListener,
}

pub(crate) struct Shared {
    app: RwLock<Arc<App>>,
    metrics: Arc<Metrics>,
    opts: ServeOptions,
    draining: AtomicBool,
    /// Set when the drain deadline passed and the connections still open
    /// are being ended: the requests dropped then say so in their lines
    /// (not that their clients left).
    drain_cut: AtomicBool,
    admin_token: Option<String>,
    ids: RequestIds,
    local: SocketAddr,
    /// The usage log every trigger appends to.
    pub(crate) usage: UsageLog,
    /// Lines of streaming responses, written when their guests end.
    pending_lines: PendingLines,
    /// The manifest the server started with: what its start-only settings
    /// are (see [`restart_only_changes`]).
    started_with: Manifest,
}

impl Server {
    /// Loads the manifest and binds both listeners.
    pub fn bind(opts: ServeOptions) -> Result<Server, ServeError> {
        let metrics = Arc::new(Metrics::default());
        let manifest = Manifest::load(&opts.manifest).map_err(LoadError::from)?;
        let Preflight {
            listen,
            admin_listen,
            admin_token,
            usage_path,
        } = preflight(&opts, &manifest)?;
        let usage = UsageLog::open(&usage_path, manifest.usage_log_max_size)
            .map_err(|e| ServeError::Start(e.to_string()))?;
        let started_with = manifest.clone();
        let app = App::load(manifest, &opts.runtime, &opts.setup, None, &metrics)?;
        app.start_sandboxes();
        let bind = |addr: &str| {
            std::net::TcpListener::bind(addr)
                .and_then(|l| l.set_nonblocking(true).map(|()| l))
                .map_err(|e| ServeError::Listen {
                    addr: addr.to_string(),
                    error: e.to_string(),
                })
        };
        let listener = bind(&listen)?;
        let admin = bind(&admin_listen)?;
        let local = listener.local_addr().map_err(|e| ServeError::Listen {
            addr: listen.clone(),
            error: e.to_string(),
        })?;
        Ok(Server {
            shared: Arc::new(Shared {
                app: RwLock::new(Arc::new(app)),
                metrics,
                opts,
                draining: AtomicBool::new(false),
                drain_cut: AtomicBool::new(false),
                admin_token,
                ids: RequestIds::new(),
                local,
                usage,
                pending_lines: PendingLines::default(),
                started_with,
            }),
            listener,
            admin,
        })
    }

    /// The request listener's address.
    pub fn local_addr(&self) -> SocketAddr {
        self.shared.local
    }

    /// The admin listener's address.
    pub fn admin_addr(&self) -> std::io::Result<SocketAddr> {
        self.admin.local_addr()
    }

    /// The usage log's path.
    pub fn usage_log(&self) -> &std::path::Path {
        self.shared.usage.path()
    }

    /// The functions served.
    pub fn app(&self) -> Arc<App> {
        self.shared.current()
    }

    /// Serves until SIGTERM or SIGINT, then drains in-flight requests (at
    /// most `server.drain_timeout`) and returns.
    pub fn run(self) -> Result<(), ServeError> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .thread_name("wasmlet-serve")
            .build()
            .map_err(|e| ServeError::Start(e.to_string()))?;
        rt.block_on(self.run_async())
    }

    async fn run_async(self) -> Result<(), ServeError> {
        let mut signals = forward_signals()?;
        let to_tokio = |l: std::net::TcpListener| {
            TcpListener::from_std(l).map_err(|e| ServeError::Start(e.to_string()))
        };
        let listener = to_tokio(self.listener)?;
        let admin = to_tokio(self.admin)?;
        let shared = self.shared;
        let graceful = GracefulShutdown::new();
        let admin_task = tokio::spawn(admin_loop(admin, shared.clone()));
        let reload = Arc::new(tokio::sync::Notify::new());
        let reload_task = tokio::spawn(reload_loop(shared.clone(), reload.clone()));
        let settings = shared.current().manifest.server.clone();
        let triggers = crate::trigger::start(shared.clone());
        let mut builder = http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(settings.header_timeout)
            .max_buf_size(settings.max_header_size.max(MIN_HEAD_BUFFER) as usize)
            .keep_alive(true);
        // The connections, so those still open at the drain deadline can be
        // ended (and their requests' usage lines written) before the log's
        // last flush.
        let mut conns = tokio::task::JoinSet::new();
        let threads = ConnThreads::per_core().map_err(|e| ServeError::Start(e.to_string()))?;
        let signal_name = loop {
            tokio::select! {
                accepted = listener.accept() => {
                    while conns.try_join_next().is_some() {}
                    let (stream, peer) = match accepted {
                        Ok(a) => a,
                        Err(e) => {
                            // Out of descriptors and the like: back off, keep serving.
                            tracing::warn!("accept: {e}");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    let _ = stream.set_nodelay(true);
                    // Off this runtime's epoll, into the connection thread's.
                    let stream = match stream.into_std() {
                        Ok(s) => s,
                        Err(e) => {
                            tracing::warn!(%peer, "connection: {e}");
                            continue;
                        }
                    };
                    let send_timeout = shared.current().manifest.server.send_timeout;
                    let shared = shared.clone();
                    let usage = shared.clone();
                    // Each request a task of its own on the connection's
                    // thread (see `conn_threads`).
                    let svc = service_fn(move |req| {
                        let ended = Arc::new(EndedBy::default());
                        let task = Requested {
                            task: RequestTask::spawn(handle(shared.clone(), peer, req, ended.clone())),
                            ended,
                            shared: shared.clone(),
                            done: false,
                        };
                        async move {
                            match task.await {
                                Ok(Ok(response)) => Ok(response),
                                Ok(Err(never)) => match never {},
                                Err(e) => Err(e),
                            }
                        }
                    });
                    let builder = builder.clone();
                    let watcher = graceful.watcher();
                    let (thread, seat) = threads.pick();
                    conns.spawn_on(async move {
                        let _seat = seat;
                        let stream = match tokio::net::TcpStream::from_std(stream) {
                            Ok(s) => s,
                            Err(e) => {
                                tracing::warn!(%peer, "connection: {e}");
                                return;
                            }
                        };
                        let stream = SendTimeout::new(stream, send_timeout);
                        let conn = builder.serve_connection(TokioIo::new(stream), svc);
                        if let Err(e) = watcher.watch(conn).await {
                            match send_timed_out(&e) {
                                // Said, as the client's response was cut short.
                                Some(why) => tracing::warn!(%peer, "connection closed: {e}: {why}"),
                                None => tracing::debug!(%peer, "connection: {e}"),
                            }
                            if e.is_parse_too_large() {
                                // hyper answered 431 itself: no request, no route.
                                let id = usage.ids.generate();
                                let mut line = http_line(None, &id, chrono::Utc::now())
                                    .rejected("header_too_large");
                                line.http_status = Some(431);
                                usage.usage.record(line).await;
                            }
                        }
                    }, thread);
                }
                sig = signals.recv() => match sig {
                    Some(signal_hook::consts::SIGHUP) => {
                        tracing::info!("SIGHUP: reloading {}", shared.opts.manifest.display());
                        reload.notify_one();
                    }
                    Some(signal_hook::consts::SIGINT) => break "SIGINT",
                    _ => break "SIGTERM",
                },
            }
        };
        drop(listener);
        shared.draining.store(true, Ordering::Release);
        reload_task.abort();
        let in_flight = shared.metrics.in_flight.load(Ordering::Relaxed);
        tracing::info!(
            "{signal_name}: no longer accepting; draining {in_flight} request(s) in flight (at most {})",
            humantime::format_duration(settings.drain_timeout)
        );
        let deadline = tokio::time::Instant::now() + settings.drain_timeout;
        match tokio::time::timeout_at(deadline, graceful.shutdown()).await {
            Ok(()) => tracing::info!("drained; exiting"),
            Err(_) => tracing::warn!(
                "drain timeout of {} passed with requests still in flight; exiting",
                humantime::format_duration(settings.drain_timeout)
            ),
        }
        // Requests still open are ended here: each writes its line as it
        // goes (interrupted, or rejected if it was still queued).
        shared.drain_cut.store(true, Ordering::Release);
        conns.abort_all();
        while conns.join_next().await.is_some() {}
        triggers.stop(settings.drain_timeout).await;
        admin_task.abort();
        // Sandbox workers are processes with cgroups: end them now, not
        // whenever the last reference to their functions goes.
        let app = shared.current();
        tokio::task::spawn_blocking(move || app.shutdown_sandboxes())
            .await
            .ok();
        // Streaming responses whose guests are still running: their lines
        // until the drain deadline, then as they stood at their heads.
        let grace = tokio::time::Instant::now() + Duration::from_millis(100);
        let _ = tokio::time::timeout_at(deadline.max(grace), shared.pending_lines.wait()).await;
        let cut = shared.pending_lines.take_all();
        if !cut.is_empty() {
            tracing::warn!(
                "{} streaming response(s) still running at exit: their guests are stopped, status \"interrupted\"",
                cut.len()
            );
        }
        for (mut line, probe) in cut {
            let wall = (chrono::Utc::now() - line.start_time)
                .to_std()
                .unwrap_or_default();
            if let LineOutcome::Ran(r) = &mut line.outcome {
                *r = interrupted(
                    so_far(&r.usage, wall, &probe),
                    "the server exited while the response was streaming: the guest was stopped",
                );
            }
            shared.usage.record(line).await;
        }
        let _ = tokio::time::timeout(Duration::from_millis(500), shared.pending_lines.wait()).await;
        let synced = shared.usage.flush(settings.drain_timeout).await;
        // Their connections are gone: stop and join the threads (off this
        // runtime's threads, as joining blocks).
        tokio::task::spawn_blocking(move || drop(threads))
            .await
            .ok();
        if !synced {
            let lines = shared.usage.unwritten();
            tracing::error!(
                "the usage log {} could not be written and synced before exiting: {lines} line(s) not written",
                shared.usage.path().display()
            );
            return Err(ServeError::UsageLost {
                path: shared.usage.path().to_owned(),
                lines,
            });
        }
        Ok(())
    }
}

/// SIGTERM, SIGINT and SIGHUP, taken by a thread (signal-hook's self-pipe)
/// and handed to the server's loop.
fn forward_signals() -> Result<tokio::sync::mpsc::UnboundedReceiver<i32>, ServeError> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP])
        .map_err(|e| ServeError::Start(format!("signals: {e}")))?;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    std::thread::Builder::new()
        .name("wasmlet-signals".into())
        .spawn(move || {
            for sig in signals.forever() {
                if tx.send(sig).is_err() {
                    break;
                }
            }
        })
        .map_err(|e| ServeError::Start(format!("signals: {e}")))?;
    Ok(rx)
}

impl Shared {
    /// What ended a request dropped before its end, for its usage line:
    /// the drain deadline, once it has passed, else its client.
    fn who_ended(&self) -> &'static str {
        if self.drain_cut.load(Ordering::Acquire) {
            "the server's drain deadline passed"
        } else {
            "the client left"
        }
    }

    pub(crate) fn current(&self) -> Arc<App> {
        self.app.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// A fresh request or event id.
    pub(crate) fn new_id(&self) -> String {
        self.ids.generate()
    }

    /// The server's figures.
    pub(crate) fn metrics_ref(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Whether the server is shutting down.
    pub(crate) fn draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }
}

/// The `send_timeout` cut-off under a connection's error, if that is what
/// ended it (see [`SendTimeout`]).
fn send_timed_out<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a std::io::Error> {
    let mut cause = Some(e);
    while let Some(c) = cause {
        if let Some(io) = c.downcast_ref::<std::io::Error>() {
            return (io.kind() == std::io::ErrorKind::TimedOut).then_some(io);
        }
        cause = c.source();
    }
    None
}

/// The settings read once, when the server starts, that differ between
/// the manifest it started with and a reloaded one: the running server
/// keeps the old values (said at every reload while they differ).
fn restart_only_changes(old: &Manifest, new: &Manifest) -> Vec<&'static str> {
    let (o, n) = (&old.server, &new.server);
    [
        ("listen", old.listen != new.listen),
        ("admin_listen", old.admin_listen != new.admin_listen),
        ("usage_log", old.usage_log != new.usage_log),
        (
            "usage_log_max_size",
            old.usage_log_max_size != new.usage_log_max_size,
        ),
        (
            "server.max_header_size",
            o.max_header_size != n.max_header_size,
        ),
        (
            "server.header_timeout",
            o.header_timeout != n.header_timeout,
        ),
        ("server.drain_timeout", o.drain_timeout != n.drain_timeout),
        (
            "server.admin_token_env",
            o.admin_token_env != n.admin_token_env,
        ),
        ("server.watch", o.watch != n.watch),
    ]
    .into_iter()
    .filter_map(|(name, changed)| changed.then_some(name))
    .collect()
}

/// Reloads on demand (SIGHUP) and when the manifest or a module changes.
async fn reload_loop(shared: Arc<Shared>, wake: Arc<tokio::sync::Notify>) {
    let mut seen = shared.current().stamps.clone();
    let watch = shared.current().manifest.server.watch;
    loop {
        let forced = tokio::select! {
            _ = wake.notified() => true,
            _ = tokio::time::sleep(WATCH_INTERVAL), if watch => false,
        };
        if !forced {
            let now: Vec<_> = seen.iter().map(|(p, _)| stamp(p)).collect();
            if now == seen {
                continue;
            }
            tracing::info!(
                "{} or a module changed: reloading",
                shared.opts.manifest.display()
            );
        }
        let old = shared.current();
        let s = shared.clone();
        let loaded = tokio::task::spawn_blocking(move || {
            let manifest = Manifest::load(&s.opts.manifest)?;
            App::load(
                manifest,
                &s.opts.runtime,
                &s.opts.setup,
                Some(&old),
                &s.metrics,
            )
        })
        .await;
        match loaded {
            Ok(Ok(app)) => {
                app.start_sandboxes();
                let app = Arc::new(app);
                seen = app.stamps.clone();
                let pending = restart_only_changes(&shared.started_with, &app.manifest);
                if !pending.is_empty() {
                    tracing::warn!(
                        "changed in the manifest, but read only at start (they take a restart; the rest is reloaded): {}",
                        pending.join(", ")
                    );
                }
                *shared.app.write().unwrap_or_else(|e| e.into_inner()) = app.clone();
                shared.metrics.reloads.fetch_add(1, Ordering::Relaxed);
                let names: Vec<_> = app.summary().into_iter().map(|f| f.name).collect();
                tracing::info!("reloaded: serving {}", names.join(", "));
            }
            Ok(Err(e)) => {
                shared
                    .metrics
                    .reload_failures
                    .fetch_add(1, Ordering::Relaxed);
                // Not again until something changes again.
                seen = seen.iter().map(|(p, _)| stamp(p)).collect();
                tracing::error!("reload failed, still serving the previous functions: {e}");
            }
            Err(e) => {
                shared
                    .metrics
                    .reload_failures
                    .fetch_add(1, Ordering::Relaxed);
                tracing::error!("reload failed: {e}");
            }
        }
    }
}

async fn admin_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(admin(&shared, &req)) }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn admin(shared: &Shared, req: &Request<Incoming>) -> Response<Body> {
    match req.uri().path() {
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" if shared.draining.load(Ordering::Acquire) => {
            text(StatusCode::SERVICE_UNAVAILABLE, "draining\n")
        }
        "/readyz" => match shared.usage.error() {
            Some(e) => text(StatusCode::SERVICE_UNAVAILABLE, &format!("{e}\n")),
            None if !shared.current().sandboxes_warmed() => text(
                StatusCode::SERVICE_UNAVAILABLE,
                "starting sandbox workers\n",
            ),
            None => text(StatusCode::OK, "ready\n"),
        },
        "/metrics" => {
            if let Some(token) = &shared.admin_token {
                let given = req
                    .headers()
                    .get(http::header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok())
                    // (The scheme is case-insensitive, RFC 9110 11.1.)
                    .and_then(|v| {
                        v.get(..7)
                            .filter(|s| s.eq_ignore_ascii_case("bearer "))
                            .map(|_| &v[7..])
                    });
                if !given.is_some_and(|g| constant_time_eq(g.as_bytes(), token.as_bytes())) {
                    let mut r = text(StatusCode::UNAUTHORIZED, "a bearer token is required\n");
                    r.headers_mut().insert(
                        http::header::WWW_AUTHENTICATE,
                        HeaderValue::from_static("Bearer"),
                    );
                    return r;
                }
            }
            let mut r = text(
                StatusCode::OK,
                &(shared.metrics.render() + &shared.usage.render()),
            );
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            r
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: try /metrics, /healthz or /readyz\n",
        ),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A WAGI response body larger than this keeps its request's place in
/// `max_concurrency` until it has been sent (see [`Held`]); a smaller
/// one goes into the socket's buffer at once.
const HELD_RESPONSE_SIZE: usize = 64 * 1024;

fn full(bytes: impl Into<Bytes>) -> Body {
    wasmlet_runtime::http::full_body(bytes)
}

fn text(status: StatusCode, body: &str) -> Response<Body> {
    let mut r = Response::new(full(body.to_string()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// An error response: the status, a one-line body, and the cause in
/// `x-wasmlet-error`.
fn failure(status: StatusCode, cause: Cause, detail: &str) -> Handled {
    let mut response = text(status, &format!("{detail}\n"));
    let value: String = detail
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .take(MAX_ERROR_HEADER)
        .collect();
    if let Ok(v) = HeaderValue::from_str(&value) {
        response
            .headers_mut()
            .insert(HeaderName::from_static("x-wasmlet-error"), v);
    }
    Handled {
        response,
        cause: Some(cause),
        usage: None,
        final_usage: None,
    }
}

/// Generates request ids: a per-process random start, then a counter,
/// scrambled so consecutive ids do not look alike.
struct RequestIds {
    seed: u64,
    next: AtomicU64,
}

impl RequestIds {
    fn new() -> Self {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        RequestIds {
            seed: t ^ (u64::from(std::process::id()) << 32),
            next: AtomicU64::new(0),
        }
    }

    fn generate(&self) -> String {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        // splitmix64
        let mut z = self
            .seed
            .wrapping_add(n.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        format!("{:016x}", z ^ (z >> 31))
    }
}

/// The client's `x-request-id` when it is sane (1 to 128 characters of
/// letters, digits and `-_.:+/=`), else a fresh one.
fn request_id(shared: &Shared, req: &Request<Incoming>) -> String {
    req.headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty()
                && v.len() <= MAX_REQUEST_ID
                && v.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.:+/=".contains(c))
        })
        .map(str::to_string)
        .unwrap_or_else(|| shared.ids.generate())
}

async fn handle(
    shared: Arc<Shared>,
    peer: SocketAddr,
    req: Request<Incoming>,
    ended: Arc<EndedBy>,
) -> Result<Response<Body>, Infallible> {
    let started = Instant::now();
    let start_time = chrono::Utc::now();
    let id = request_id(&shared, &req);
    let app = shared.current();
    let path = req.uri().path().to_string();
    let mut response = match app.route(&path) {
        None => {
            shared.metrics.unrouted.fetch_add(1, Ordering::Relaxed);
            let mut line = http_line(None, &id, start_time).rejected("no_route");
            line.http_status = Some(404);
            shared.usage.record(line).await;
            text(StatusCode::NOT_FOUND, &format!("no route matches {path}\n"))
        }
        Some((func, route)) => 'routed: {
            func.metrics.requests.fetch_add(1, Ordering::Relaxed);
            let progress = Progress::default();
            let mut gone = ClientGone {
                shared: &shared,
                ended: &ended,
                func,
                id: &id,
                start_time,
                started,
                progress: &progress,
                armed: true,
            };
            let handled = pin!(call(&shared, &app, func, route, peer, req, &id, &progress)).await;
            if handled.response.extensions().get::<ClientLeft>().is_some() {
                // `gone` (still armed) writes its line; a client that only
                // half-closed still gets this 400, with its id (below).
                break 'routed handled.response;
            }
            gone.armed = false;
            let status = handled.response.status();
            func.metrics.response(status.as_u16(), started.elapsed());
            if let Some(cause) = handled.cause {
                func.metrics.error(cause);
            }
            let head = http_line(Some(func), &id, start_time);
            let mut line = match handled.usage {
                Some(usage) => head.ran(usage),
                None => head.rejected(handled.cause.map_or("none", Cause::label)),
            };
            line.http_status = Some(status.as_u16());
            match handled.final_usage {
                None => {
                    if shared.opts.usage {
                        tracing::info!(target: "wasmlet::usage", "usage {line}");
                    }
                    shared.usage.record(line).await;
                    handled.response
                }
                Some(last) => {
                    // The guest is still writing the body: its line, with
                    // its final figures, is written when it ends. Who cut
                    // the body, if it is cut, is noted when hyper drops it.
                    let (cut_by, note) = (ended.clone(), shared.clone());
                    let response = handled.response.map(|body| {
                        NoteCut::new(body, move || {
                            let _ = cut_by.0.set(note.who_ended());
                        })
                        .boxed_unsync()
                    });
                    let ended = ended.clone();
                    let shared = shared.clone();
                    let probe = progress.probe.clone();
                    let key = shared.pending_lines.hold(line, probe.clone());
                    tokio::spawn(async move {
                        let record = last.await;
                        let Some(mut line) = shared.pending_lines.take(key) else {
                            return; // written by the exit
                        };
                        match (record, &line.outcome) {
                            (Some(record), LineOutcome::Ran(_)) => {
                                line.outcome = LineOutcome::Ran(record);
                            }
                            // The client left, or the drain deadline
                            // passed, before the body's end: the guest was
                            // stopped then (its figures so far, wall time
                            // until now).
                            (None, LineOutcome::Ran(head)) => {
                                line.outcome = LineOutcome::Ran(interrupted(
                                    so_far(&head.usage, started.elapsed(), &probe),
                                    &format!(
                                        "{} before the end of the response body: the guest was stopped",
                                        ended
                                            .0
                                            .get()
                                            .copied()
                                            .unwrap_or_else(|| shared.who_ended())
                                    ),
                                ));
                            }
                            _ => {}
                        }
                        if shared.opts.usage {
                            tracing::info!(target: "wasmlet::usage", "usage {line}");
                        }
                        shared.usage.record(line).await;
                        shared.pending_lines.done(key);
                    });
                    response
                }
            }
        }
    };
    // (`try_insert`: a guest's header map may be full; it is then sent as
    // it is, not a panic.)
    if let Ok(v) = HeaderValue::from_str(&id) {
        let _ = response
            .headers_mut()
            .try_insert(HeaderName::from_static("x-request-id"), v);
    }
    if shared.draining.load(Ordering::Acquire) {
        let _ = response
            .headers_mut()
            .try_insert(http::header::CONNECTION, HeaderValue::from_static("close"));
    }
    Ok(response)
}

/// What ended a request dropped before its end (`Shared::who_ended`),
/// noted when hyper dropped it (its task, by [`Requested`], or its
/// streamed body, by [`NoteCut`]): its client left, or its connection was
/// ended at the drain deadline. Its usage line is written a moment later,
/// when the deadline may have passed for other connections: a client that
/// left just before it is still a client that left.
#[derive(Default)]
struct EndedBy(std::sync::OnceLock<&'static str>);

/// A request's task as hyper holds it: dropped before the task finished,
/// it notes who ended the request, then aborts the task.
struct Requested<T> {
    task: RequestTask<T>,
    ended: Arc<EndedBy>,
    shared: Arc<Shared>,
    done: bool,
}

impl<T> std::future::Future for Requested<T> {
    type Output = Result<T, tokio::task::JoinError>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let out = std::task::ready!(std::pin::Pin::new(&mut self.task).poll(cx));
        self.done = true;
        std::task::Poll::Ready(out)
    }
}

impl<T> Drop for Requested<T> {
    fn drop(&mut self) {
        if !self.done {
            let _ = self.ended.0.set(self.shared.who_ended());
        }
    }
}

/// Writes the usage line of a request ended before its response: its
/// client went away, or the server's drain deadline passed (its future is
/// dropped, and with it the invocation: the guest is stopped). One that
/// had started its guest is `interrupted`, with the wall time until then
/// and the CPU time and memory peak its probe saw (a sandboxed guest's are
/// not known: 0); one still sending its body or waiting for admission is
/// `rejected` (`ended_before_start`).
struct ClientGone<'a> {
    shared: &'a Arc<Shared>,
    ended: &'a EndedBy,
    func: &'a Func,
    id: &'a str,
    start_time: chrono::DateTime<chrono::Utc>,
    started: Instant,
    progress: &'a Progress,
    armed: bool,
}

/// How far a request's invocation got, for its usage line if the request
/// is dropped before its response.
#[derive(Default)]
struct Progress {
    /// Set once the request was admitted and its guest started.
    ran: AtomicBool,
    /// The invocation's figures so far.
    probe: UsageProbe,
}

impl Drop for ClientGone<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let head = http_line(Some(self.func), self.id, self.start_time);
        let line = if self.progress.ran.load(Ordering::Acquire) {
            let probe = &self.progress.probe;
            let who = match self.ended.0.get() {
                Some(who) => who,
                None => self.shared.who_ended(),
            };
            let what = if self.func.sandbox.is_some() {
                "its guest runs on in its sandbox worker until it ends or meets its limits, and what it uses there is not in this line"
            } else {
                "the guest was stopped"
            };
            head.ran(interrupted(
                so_far(&Default::default(), self.started.elapsed(), probe),
                &format!("ended before its response ({who}): {what}"),
            ))
        } else {
            head.rejected("ended_before_start")
        };
        if let Err(line) = self.shared.usage.record_now(line)
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            let shared = self.shared.clone();
            rt.spawn(async move { shared.usage.record(*line).await });
        }
    }
}

/// The usage of a guest stopped before its end: `wall`, and the larger of
/// what its probe saw and what `head` (its figures when its response head
/// went out) says.
fn so_far(
    head: &wasmlet_runtime::Usage,
    wall: Duration,
    probe: &UsageProbe,
) -> wasmlet_runtime::Usage {
    wasmlet_runtime::Usage::new(
        wall.max(head.wall_time),
        probe.cpu_time().max(head.cpu_time),
        head.fuel_consumed,
        probe.peak_memory_bytes().max(head.peak_memory_bytes),
    )
}

/// The head of an HTTP request's usage line.
fn http_line<'a>(
    func: Option<&'a Func>,
    id: &'a str,
    start_time: chrono::DateTime<chrono::Utc>,
) -> LineHead<'a> {
    LineHead {
        function: func.map(|f| f.spec.name.as_str()),
        trigger: "http",
        id,
        start_time,
        memory_limit_bytes: func.map(|f| f.spec.limits.memory),
    }
}

/// Marks the response to a request whose client left while sending its
/// body: nothing reaches the client, and its line is written as for any
/// request ended before its response (see [`ClientGone`]).
#[derive(Clone, Copy)]
struct ClientLeft;

/// Whether a request body's read error says the client closed the
/// connection before the body's end.
fn client_left(e: &(dyn std::error::Error + 'static)) -> bool {
    // hyper's body error says "error reading a body from connection"; the
    // cause under it is the connection's end (an early EOF, a reset).
    let mut cause = Some(e);
    while let Some(e) = cause {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            return matches!(
                io.kind(),
                std::io::ErrorKind::UnexpectedEof
                    | std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::BrokenPipe
            );
        }
        if e.downcast_ref::<hyper::Error>()
            .is_some_and(|h| h.is_incomplete_message() || h.is_closed() || h.is_canceled())
        {
            return true;
        }
        cause = e.source();
    }
    false
}

/// One request to one function: body, admission, the handler, the result.
#[allow(clippy::too_many_arguments)]
async fn call(
    shared: &Shared,
    app: &App,
    func: &Func,
    route: &Route,
    peer: SocketAddr,
    req: Request<Incoming>,
    id: &str,
    progress: &Progress,
) -> Handled {
    let settings = &app.manifest.server;
    let (parts, body) = req.into_parts();
    let max_body = settings.max_body_size;
    let declared = parts
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max_body) {
        return body_too_large(max_body);
    }
    if let Handler::Http(h) = &func.handler {
        // Streamed: the component reads the body as it comes.
        return pin!(call_http(shared, app, func, h, parts, body, id, progress)).await;
    }
    let read = Limited::new(body, max_body as usize).collect();
    let body = match tokio::time::timeout(settings.body_timeout, read).await {
        Ok(Ok(b)) => b.to_bytes(),
        Ok(Err(e))
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            return body_too_large(max_body);
        }
        Ok(Err(e)) if client_left(&*e) => {
            // Ended while still sending its body: its line is that of a
            // request whose client left before it started.
            let mut h = failure(
                StatusCode::BAD_REQUEST,
                Cause::BodyTimeout,
                "the request body ended before its declared end",
            );
            h.cause = None;
            h.response.extensions_mut().insert(ClientLeft);
            h.response
                .headers_mut()
                .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
            return h;
        }
        Ok(Err(e)) => {
            return failure(
                StatusCode::BAD_REQUEST,
                Cause::BodyTimeout,
                &format!("cannot read the request body: {e}"),
            );
        }
        Err(_) => return body_timeout(settings.body_timeout),
    };
    let admitted = match admit(shared, app, func).await {
        Ok(a) => a,
        Err(busy) => return busy,
    };
    progress.ran.store(true, Ordering::Release);
    let Handler::Wagi(function) = &func.handler else {
        unreachable!("http handled above")
    };
    let cgi = CgiRequest {
        parts: &parts,
        body_len: body.len(),
        route,
        peer,
        local: shared.local,
        request_id: id,
    };
    let (args, cgi_env) = cgi.args_env(&func.spec.name);
    let mut env: Vec<(String, String)> = func
        .env
        .iter()
        .filter(|(k, _)| !cgi_env.iter().any(|(c, _)| c == k))
        .cloned()
        .collect();
    env.extend(cgi_env);
    let result =
        pin!(func.invoke_command(function, args, env, body, Some(progress.probe.clone()))).await;
    // Kept by a large response until it is sent (below), else freed now.
    let mut admitted = Some(admitted);
    let outcome = match result {
        Ok(o) => o,
        Err(e) => {
            tracing::error!(function = %func.spec.name, request_id = %id, "invocation failed: {e}");
            return failure(
                StatusCode::INTERNAL_SERVER_ERROR,
                Cause::Setup,
                &format!("invocation failed: {e}"),
            );
        }
    };
    log_stderr(
        &func.spec.name,
        id,
        outcome.stderr.as_deref().unwrap_or_default(),
        settings.max_log_per_invocation as usize,
    );
    let usage = Some(outcome.usage_record());
    let mut handled = match &outcome.status {
        Status::Trapped(_) | Status::LimitExceeded(_) | Status::SandboxFailed(_) => {
            status_failure(&outcome.status)
        }
        Status::Exited(_) | Status::Returned(_) => {
            let code = match outcome.status {
                Status::Exited(c) => c,
                _ => 0,
            };
            let stdout = outcome.stdout.clone().unwrap_or_default();
            if stdout.len() as u64 >= settings.max_response_size {
                failure(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    Cause::Limit,
                    &format!(
                        "response is larger than server.max_response_size ({} bytes)",
                        settings.max_response_size
                    ),
                )
            } else {
                match parse_output(stdout) {
                    Ok(cgi) => {
                        if code != 0 {
                            tracing::warn!(function = %func.spec.name, request_id = %id, "exited with code {code} after writing headers");
                        }
                        let body = if cgi.body.len() > HELD_RESPONSE_SIZE {
                            Held::new(cgi.body, admitted.take()).boxed_unsync()
                        } else {
                            full(cgi.body)
                        };
                        let mut r = Response::new(body);
                        *r.status_mut() = cgi.status;
                        *r.headers_mut() = cgi.headers;
                        Handled {
                            response: r,
                            cause: None,
                            usage: None,
                            final_usage: None,
                        }
                    }
                    Err(why) if code != 0 => failure(
                        StatusCode::BAD_GATEWAY,
                        Cause::BadOutput,
                        &format!("function exited with code {code} without a response ({why})"),
                    ),
                    Err(why) => failure(StatusCode::BAD_GATEWAY, Cause::BadOutput, &why),
                }
            }
        }
    };
    log_failure(func, id, &handled);
    handled.usage = usage;
    handled
}

/// The response for a guest stopped by a trap, a limit or its sandbox:
/// trap 500, wall-clock timeout 504, any other limit 500, sandbox 500.
fn status_failure(status: &Status) -> Handled {
    match status {
        Status::Trapped(msg) => failure(
            StatusCode::INTERNAL_SERVER_ERROR,
            Cause::Trap,
            &format!("guest trapped: {msg}"),
        ),
        Status::LimitExceeded(
            l @ (LimitExceeded::Timeout(_) | LimitExceeded::SandboxMaxCall(_)),
        ) => failure(StatusCode::GATEWAY_TIMEOUT, Cause::Timeout, &l.to_string()),
        Status::LimitExceeded(l) => failure(
            StatusCode::INTERNAL_SERVER_ERROR,
            Cause::Limit,
            &l.to_string(),
        ),
        Status::SandboxFailed(m) => failure(
            StatusCode::INTERNAL_SERVER_ERROR,
            Cause::Setup,
            &format!("sandbox failed: {m}"),
        ),
        Status::Exited(code) => failure(
            StatusCode::BAD_GATEWAY,
            Cause::BadOutput,
            &format!("function exited with code {code} without a response"),
        ),
        Status::Returned(_) => failure(
            StatusCode::BAD_GATEWAY,
            Cause::BadOutput,
            "function returned without a response",
        ),
    }
}

/// Logs why a request failed (its `x-wasmlet-error`), tagged.
fn log_failure(func: &Func, id: &str, handled: &Handled) {
    if let Some(cause) = handled.cause {
        let detail = handled
            .response
            .headers()
            .get("x-wasmlet-error")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        tracing::warn!(function = %func.spec.name, request_id = %id, cause = cause.label(), "{detail}");
    }
}

fn body_too_large(max_body: u64) -> Handled {
    failure(
        StatusCode::PAYLOAD_TOO_LARGE,
        Cause::BodyTooLarge,
        &format!("request body is larger than the limit of {max_body} bytes"),
    )
}

fn body_timeout(limit: Duration) -> Handled {
    let mut h = failure(
        StatusCode::REQUEST_TIMEOUT,
        Cause::BodyTimeout,
        &format!(
            "request body not received within {}",
            humantime::format_duration(limit)
        ),
    );
    h.response
        .headers_mut()
        .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
    h
}

/// One request to a wasi:http component: admission, the body streamed to
/// the guest under the server's limits, the guest's response streamed back.
#[allow(clippy::too_many_arguments)]
async fn call_http(
    shared: &Shared,
    app: &App,
    func: &Func,
    handler: &HttpHandler,
    mut parts: http::request::Parts,
    body: Incoming,
    id: &str,
    progress: &Progress,
) -> Handled {
    let settings = &app.manifest.server;
    let admitted = match admit(shared, app, func).await {
        Ok(a) => a,
        Err(busy) => return busy,
    };
    progress.ran.store(true, Ordering::Release);
    // wasi:http needs an authority; the guest sees the request id.
    if !parts.headers.contains_key(http::header::HOST)
        && let Ok(v) = HeaderValue::from_str(&shared.local.to_string())
    {
        parts.headers.insert(http::header::HOST, v);
    }
    if let Ok(v) = HeaderValue::from_str(id) {
        parts
            .headers
            .insert(HeaderName::from_static("x-request-id"), v);
    }
    let fault = Arc::new(FaultCell::default());
    let body = RequestBody::new(
        body,
        settings.max_body_size,
        settings.body_timeout,
        fault.clone(),
    );
    let inv = Invocation {
        args: vec![func.spec.name.clone()],
        env: func.env.clone(),
        dirs: func.dirs.clone(),
        stdin: Input::Null,
        stdout: Output::Null,
        stderr: Output::Capture,
        entry: Entry::Start,
        limits: None,
        context: Default::default(),
        gate: None,
        probe: Some(progress.probe.clone()),
    };
    func.metrics.invocations.fetch_add(1, Ordering::Relaxed);
    func.metrics.plain_starts.fetch_add(1, Ordering::Relaxed);
    let out = pin!(handler.handle(Request::from_parts(parts, body), inv)).await;
    let max_log = settings.max_log_per_invocation as usize;
    if let Some(stderr) = &out.stderr {
        log_stderr(&func.spec.name, id, stderr, max_log);
    }
    let status_of = |r: &Result<Response<Body>, wasmlet_runtime::Error>| match r {
        Ok(_) => Status::Exited(0),
        Err(wasmlet_runtime::Error::Trap(m)) => Status::Trapped(m.clone()),
        Err(wasmlet_runtime::Error::LimitExceeded(l)) => Status::LimitExceeded(*l),
        Err(_) => Status::Exited(1),
    };
    let final_usage = match out.final_outcome {
        None => {
            drop(admitted);
            None
        }
        Some(rx) => {
            // Still streaming: the guest holds its instance (and its place
            // in max_concurrency) until it ends; its stderr and final
            // figures come then, and how it ended, even after its head.
            let (name, id, metrics) =
                (func.spec.name.clone(), id.to_string(), func.metrics.clone());
            Some(Box::pin(async move {
                let out = rx.await.ok();
                drop(admitted);
                let out = out?;
                log_stderr(
                    &name,
                    &id,
                    out.stderr.as_deref().unwrap_or_default(),
                    max_log,
                );
                if !out.success() {
                    let failed = status_failure(&out.status);
                    if let Some(cause) = failed.cause {
                        metrics.error(cause);
                    }
                    tracing::warn!(function = %name, request_id = %id,
                        "failed after its response head was sent (the body was cut): {}",
                        failed.response.headers().get("x-wasmlet-error")
                            .and_then(|v| v.to_str().ok()).unwrap_or(""));
                }
                Some(out.usage_record())
            }) as FinalUsage)
        }
    };
    let usage = Some(
        wasmlet_runtime::Outcome {
            status: status_of(&out.response),
            usage: out.usage,
            stdout: None,
            stderr: None,
        }
        .usage_record(),
    );
    let mut handled = match (fault.get(), out.response) {
        (Some(BodyFault::TooLarge), _) => body_too_large(settings.max_body_size),
        (Some(BodyFault::Timeout), _) => body_timeout(settings.body_timeout),
        (None, Ok(mut response)) => {
            // The server's own header: a guest cannot set it.
            response.headers_mut().remove("x-wasmlet-error");
            Handled {
                response,
                cause: None,
                usage: None,
                final_usage: None,
            }
        }
        (None, Err(e)) => match crate::http::error_status(e) {
            Ok(status) => status_failure(&status),
            Err((true, why)) => failure(StatusCode::BAD_GATEWAY, Cause::BadOutput, &why),
            Err((false, why)) => failure(StatusCode::INTERNAL_SERVER_ERROR, Cause::Setup, &why),
        },
    };
    log_failure(func, id, &handled);
    handled.usage = usage;
    handled.final_usage = final_usage;
    handled
}

/// A permit to run `func`, or its 503.
async fn admit(
    shared: &Shared,
    app: &App,
    func: &Func,
) -> Result<crate::admission::Admitted, Handled> {
    let admitted = func
        .admission
        .admit(&app.global, &func.metrics, &shared.metrics)
        .await
        .map_err(|cause| overloaded(func, cause))?;
    if shared.drain_cut.load(Ordering::Acquire) {
        // Past the drain deadline every open connection is being ended,
        // this request's too: a place freed by one ended before it starts
        // no guest here (its line says it ended before it started).
        drop(admitted);
        return std::future::pending().await;
    }
    Ok(admitted)
}

fn overloaded(func: &Func, cause: Cause) -> Handled {
    let detail = match cause {
        Cause::QueueFull => format!(
            "function `{}` is at capacity and its queue is full",
            func.spec.name
        ),
        _ => format!(
            "function `{}` is at capacity: no instance free within {}",
            func.spec.name,
            humantime::format_duration(func.spec.limits.queue_timeout)
        ),
    };
    let mut h = failure(StatusCode::SERVICE_UNAVAILABLE, cause, &detail);
    h.response.headers_mut().insert(
        http::header::RETRY_AFTER,
        HeaderValue::from(func.retry_after),
    );
    h
}

/// Copies a guest's stderr into the log, a line per line, tagged with the
/// function and request, at most `max` bytes.
pub(crate) fn log_stderr(function: &str, id: &str, stderr: &[u8], max: usize) {
    if stderr.is_empty() {
        return;
    }
    let shown = &stderr[..stderr.len().min(max)];
    for line in String::from_utf8_lossy(shown).lines() {
        tracing::info!(function, request_id = id, "stderr: {line}");
    }
    if stderr.len() > max {
        tracing::info!(
            function,
            request_id = id,
            "stderr: ... {} more byte(s) not logged (server.max_log_per_invocation)",
            stderr.len() - max
        );
    }
}
