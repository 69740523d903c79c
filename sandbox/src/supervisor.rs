//! The supervisor's side of a sandbox: [`Sandbox`] starts the worker in
//! its cgroups, hands it invocations, enforces a deadline on every call,
//! notices the worker's death, bills what died with it, and replaces it.
//!
//! ```text
//!  caller ── call(req, deadline) ──▶ pending[id] ── frame ──▶ worker
//!     ▲   one caller at a time reads the socket (leader/followers) and hands
//!     │   the others their replies; each caller watches its own deadline:
//!     └── a missed deadline SIGKILLs the worker; EOF → reap (wait4: exit
//!         status and rusage) → every call still pending gets the death.
//! ```
//!
//! A call that never reached a worker (it was already dead) is retried once
//! on the replacement: a death is only ever reported to the invocations
//! that were in flight on that worker.

use crate::Error;
use crate::cgroup::{self, Cgroup, CgroupLimits, Layout, Placement};
use crate::config::SandboxConfig;
use crate::harden;
use crate::jail::{Grant, JailSpec};
use crate::protocol::{
    Envelope, Request, Response, WireInvocation, encode, recv, send_fd, spin_until_readable,
};
use std::collections::HashMap;
use std::io::{self, BufReader, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, mpsc};
use std::time::{Duration, Instant};
use wasmlet_runtime::{
    Function, Invocation, LimitExceeded, Limits, LoadOptions, Outcome, RuntimeConfig, SandboxUsage,
    Status, Usage,
};

/// How long a reply frame may stall half-written before the worker is
/// considered broken (the socket has data, so this is never a wait for the
/// guest, only for the worker to finish writing).
const MID_FRAME_STALL: Duration = Duration::from_secs(5);
/// How long a worker may take to build its jail and say it is ready.
const WORKER_START: Duration = Duration::from_secs(10);
/// How often the sandbox's cgroup totals are re-read for `Usage::sandbox`
/// (at most; and always when a worker dies). Reading them costs a few
/// system calls, too many for every invocation.
const CGROUP_REFRESH: Duration = Duration::from_millis(100);

/// How to start a worker process.
#[derive(Debug, Clone)]
pub struct WorkerCommand {
    /// The program.
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<String>,
    /// The worker's stdin, stdout and stderr (`None`: the supervisor's):
    /// what an invocation with `Input::Inherit`/`Output::Inherit` uses,
    /// such as a container's FIFOs.
    pub stdio: Option<Arc<[std::fs::File; 3]>>,
}

impl WorkerCommand {
    /// `<current exe> sandbox-worker`.
    pub fn current_exe() -> Result<Self, Error> {
        Ok(WorkerCommand {
            program: std::env::current_exe()
                .map_err(|e| Error::Worker(format!("cannot find own executable: {e}")))?,
            args: vec!["sandbox-worker".into()],
            stdio: None,
        })
    }
}

/// What the sandbox was told to load, kept to reload a replacement worker.
struct LoadSpec {
    source: Source,
    trap_unknown_imports: bool,
    limits: Option<Limits>,
}

/// Where a worker's function comes from.
enum Source {
    /// Wasm or WAT: the worker compiles it (it has no cache).
    Module(Vec<u8>),
    /// The supervisor's compiled artifact, opened read-only; every worker
    /// gets the fd and maps it (the same page-cache pages for all).
    Artifact(PathBuf, std::fs::File),
}

impl PartialEq for LoadSpec {
    fn eq(&self, other: &Self) -> bool {
        let same = match (&self.source, &other.source) {
            (Source::Module(a), Source::Module(b)) => a == b,
            (Source::Artifact(a, _), Source::Artifact(b, _)) => a == b,
            _ => false,
        };
        same && self.trap_unknown_imports == other.trap_unknown_imports
            && self.limits == other.limits
    }
}

/// A sandbox: a worker process in its own cgroups. Dropping it (or
/// [`Sandbox::shutdown`]) kills the worker and removes the cgroups.
pub struct Sandbox {
    config: SandboxConfig,
    runtime_config: RuntimeConfig,
    command: WorkerCommand,
    cgroup: Option<Arc<Cgroup>>,
    load: Mutex<Option<Arc<LoadSpec>>>,
    worker: Mutex<Option<Arc<Worker>>>,
    /// Held while a worker is being started, so that callers racing after a
    /// death start one replacement, not several.
    spawning: Mutex<()>,
    /// Set by [`Sandbox::shutdown`]: no worker is started any more.
    shut: AtomicBool,
    /// The cgroup totals last read, and when.
    cgroup_usage: Mutex<(Option<Instant>, SandboxUsage)>,
}

/// Why and how a worker ended.
#[derive(Debug, Clone)]
struct Death {
    /// What the invocations in flight on it are told.
    status: Status,
    /// CPU time the worker process used in all (from `wait4`'s rusage).
    cpu: Duration,
    /// Its largest resident set, bytes (rusage), or the cgroup's peak.
    peak_memory: u64,
}

/// Why a call did not get a reply.
enum CallError {
    /// The request never reached the worker: it was already dead.
    NotSent,
    /// The worker died with the request in flight.
    Died(Death),
    /// The caller's deadline passed: the worker was killed.
    Deadline(Death),
    /// The request could not be sent (too large, or the socket failed).
    Send(String),
}

/// Callers waiting for replies, by request id; `None` once the worker died.
type Pending = Option<HashMap<u64, mpsc::Sender<Result<Response, Death>>>>;

struct Worker {
    pid: i32,
    /// Set once the process has been reaped (its pid may then be reused).
    reaped: Mutex<bool>,
    writer: Mutex<UnixStream>,
    /// Held by the caller currently reading replies (leader/followers: the
    /// reader hands others' replies over and returns with its own, so a lone
    /// invocation never waits on another thread). Buffered: a reply's
    /// length and body (and any replies behind it) come in one read.
    /// (Replies never carry fds, which a buffered read would drop.)
    reader: Mutex<BufReader<UnixStream>>,
    pending: Mutex<Pending>,
    next_id: AtomicU64,
    death: OnceLock<Death>,
    /// Set before the supervisor kills the worker for a missed deadline.
    killed_for_deadline: AtomicBool,
    /// Set when the supervisor kills it (replaced, dropped, shut down):
    /// its broken stream is then expected, not worth a warning.
    killed_by_us: AtomicBool,
    /// The worker's process CPU clock as of its latest reply, in ns: what a
    /// call that dies is not charged for (it was used before it started).
    cpu_seen_ns: AtomicU64,
    cgroup: Option<Arc<Cgroup>>,
    /// The cgroup's totals when this worker started: OOM kills and CPU
    /// counted beyond them are this worker's (and its first process's).
    cgroup_before: Option<SandboxUsage>,
    memory_limit: Option<u64>,
}

impl Sandbox {
    /// Checks the settings, creates the cgroups (cleaning ones left by dead
    /// supervisors) and starts a worker in them.
    pub fn start(
        runtime_config: &RuntimeConfig,
        config: &SandboxConfig,
        command: WorkerCommand,
    ) -> Result<Sandbox, Error> {
        config.validate()?;
        let cgroup = match Layout::detect().and_then(|layout| {
            let exact = config.cgroup_path.as_deref().map(std::path::Path::new);
            let mut placement = if let Some(path) = exact {
                let parent = path.parent().and_then(|p| p.to_str()).unwrap_or("");
                Placement::at_root(parent)
            } else if config.cgroup_delegated {
                let own = std::fs::read_to_string("/proc/self/cgroup").map_err(|e| {
                    cgroup::CgroupError::Unavailable(format!("/proc/self/cgroup: {e}"))
                })?;
                Placement::delegated(&own, &config.cgroup_parent)?
            } else {
                Placement::at_root(&config.cgroup_parent)
            };
            placement.owners = config.cgroup_owners.clone();
            let name = match exact.and_then(|p| p.file_name()).and_then(|n| n.to_str()) {
                Some(name) => name.to_string(),
                None => {
                    cgroup::clean_stale(&layout, &placement);
                    cgroup::new_name()
                }
            };
            let limits = CgroupLimits {
                memory: config.memory,
                cpus: config.cpus,
                pids: config.pids,
            };
            Cgroup::create(&layout, &placement, &name, &limits)
        }) {
            Ok(cg) => Some(Arc::new(cg)),
            Err(e) if config.require_cgroups => return Err(Error::Cgroup(e)),
            Err(e) => {
                tracing::warn!(
                    "running the sandbox without cgroups (no kernel memory, CPU or pids limits): {e}"
                );
                None
            }
        };
        let sandbox = Sandbox {
            config: config.clone(),
            runtime_config: runtime_config.clone(),
            command,
            // Never read yet: the first invocation reads it.
            cgroup_usage: Mutex::new((None, SandboxUsage::default())),
            cgroup,
            load: Mutex::new(None),
            worker: Mutex::new(None),
            spawning: Mutex::new(()),
            shut: AtomicBool::new(false),
        };
        sandbox.spawn_worker()?;
        Ok(sandbox)
    }

    /// Loads the sandbox's function (compiled in the worker, through the
    /// shared cache). A sandbox runs one function: loading the same module
    /// again is a no-op, loading another one is refused.
    pub fn load(&self, module: &[u8], opts: &LoadOptions) -> Result<(), Error> {
        self.load_spec(LoadSpec {
            source: Source::Module(module.to_vec()),
            trap_unknown_imports: opts.trap_unknown_imports,
            limits: opts.limits.clone(),
        })
    }

    /// Loads `function`, already compiled by the supervisor's runtime (the
    /// same `RuntimeConfig` as the sandbox's), from its artifact: each
    /// worker is handed the file read-only and maps it, so no worker
    /// compiles, and none ever writes the cache (it is not in the jail).
    /// A function without an artifact (no cache, not from a `.cwasm`) is
    /// refused: load its module with [`Sandbox::load`].
    pub fn load_function(&self, function: &Function, opts: &LoadOptions) -> Result<(), Error> {
        let path = function.artifact_path().ok_or_else(|| {
            Error::Worker(
                "the function has no compiled artifact on disk (enable the cache, or load its module instead)"
                    .into(),
            )
        })?;
        use std::os::unix::fs::OpenOptionsExt;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(path)
            .map_err(|e| Error::Worker(format!("{}: {e}", path.display())))?;
        self.load_spec(LoadSpec {
            source: Source::Artifact(path.to_path_buf(), file),
            trap_unknown_imports: opts.trap_unknown_imports,
            limits: opts.limits.clone(),
        })
    }

    /// Loads `function` from its artifact when it has one
    /// ([`Sandbox::load_function`]), else the module bytes `read` returns
    /// ([`Sandbox::load`]: the worker compiles them).
    pub fn load_function_or<E: From<Error>>(
        &self,
        function: &Function,
        opts: &LoadOptions,
        read: impl FnOnce() -> Result<Vec<u8>, E>,
    ) -> Result<(), E> {
        if function.artifact_path().is_some() {
            Ok(self.load_function(function, opts)?)
        } else {
            Ok(self.load(&read()?, opts)?)
        }
    }

    fn load_spec(&self, spec: LoadSpec) -> Result<(), Error> {
        let spec = Arc::new(spec);
        if let Some(loaded) = self.load.lock().expect("load lock").as_ref() {
            return if **loaded == *spec {
                Ok(())
            } else {
                Err(Error::Worker(
                    "this sandbox already runs another module (or options); start a new sandbox for it"
                        .into(),
                ))
            };
        }
        let worker = self.current_worker()?;
        self.load_into(&worker, &spec)?;
        *self.load.lock().expect("load lock") = Some(spec);
        Ok(())
    }

    fn load_into(&self, worker: &Worker, spec: &LoadSpec) -> Result<(), Error> {
        let mut config = self.runtime_config.clone();
        // No compile thread pool in the worker: its threads are counted
        // (and limited by `pids`), and a pool that cannot start panics.
        config.parallel_compilation = false;
        // The jail has no cache directory, and a worker must never write
        // code that the supervisor or other sandboxes would run.
        config.cache.enabled = false;
        let (module, fd) = match &spec.source {
            Source::Module(m) => (m.clone(), None),
            Source::Artifact(_, f) => (Vec::new(), Some(f.as_raw_fd())),
        };
        let req = Request::Load {
            config: Box::new(config),
            module,
            artifact: fd.is_some(),
            trap_unknown_imports: spec.trap_unknown_imports,
            limits: spec.limits.clone(),
        };
        let deadline = Instant::now() + self.config.max_call;
        match worker.call_with_fd(&req, fd, deadline) {
            Ok(Response::Loaded) => Ok(()),
            Ok(Response::Error(e)) => Err(Error::Worker(e)),
            Ok(other) => Err(Error::Worker(format!("unexpected reply {other:?}"))),
            Err(CallError::NotSent) => Err(Error::Worker("sandbox worker died at start".into())),
            Err(CallError::Died(d) | CallError::Deadline(d)) => Err(Error::Worker(format!(
                "sandbox worker died while loading: {}",
                describe(&d.status)
            ))),
            Err(CallError::Send(e)) => Err(Error::Worker(e)),
        }
    }

    /// Runs one invocation in the worker. Several may run at once (up to
    /// [`crate::WORKER_THREADS`]). The call has a deadline: the
    /// invocation's timeout plus [`SandboxConfig::deadline_grace`], else
    /// [`SandboxConfig::max_call`]; a worker that misses it is killed and
    /// the invocation ends with [`LimitExceeded::Timeout`] (or
    /// [`LimitExceeded::SandboxMaxCall`] without a timeout). If the worker
    /// dies, the invocation fails with the cause (billed what it used) and
    /// a fresh worker takes over.
    pub fn invoke(&self, inv: Invocation) -> Result<Outcome, Error> {
        let mut wire = WireInvocation::from_invocation(&inv)
            .map_err(|e| Error::Runtime(wasmlet_runtime::Error::Setup(e)))?;
        self.jail_dirs(&mut wire)?;
        let timeout = self.timeout_of(&inv);
        let started = Instant::now();
        let deadline = started
            + match timeout {
                Some(t) => t + self.config.deadline_grace,
                None => self.config.max_call,
            };
        let req = Request::Invoke(wire);
        let mut retried = false;
        loop {
            let worker = self.current_worker()?;
            let cpu_base = worker.cpu_seen_ns.load(Ordering::Acquire);
            let death = match worker.call(&req, deadline) {
                Ok(Response::Outcome(o)) => {
                    let mut outcome = Outcome {
                        status: o.status.into_status(),
                        usage: o.usage,
                        stdout: o.stdout.map(Into::into),
                        stderr: o.stderr.map(Into::into),
                    };
                    outcome.usage.sandbox = self.cgroup.as_ref().map(|_| self.cgroup_usage(false));
                    return Ok(outcome);
                }
                Ok(Response::Error(e)) => return Err(Error::Worker(e)),
                Ok(other) => return Err(Error::Worker(format!("unexpected reply {other:?}"))),
                Err(CallError::Send(e)) => return Err(Error::Worker(e)),
                Err(CallError::NotSent) if !retried => {
                    // It never ran: run it on the replacement.
                    retried = true;
                    self.replace_worker(&worker);
                    continue;
                }
                Err(CallError::NotSent) => {
                    self.replace_worker(&worker);
                    return Err(Error::Worker(
                        "sandbox workers keep dying before they can take an invocation".into(),
                    ));
                }
                Err(CallError::Died(d)) => d,
                Err(CallError::Deadline(mut d)) => {
                    d.status = Status::LimitExceeded(match timeout {
                        Some(t) => LimitExceeded::Timeout(t),
                        None => LimitExceeded::SandboxMaxCall(self.config.max_call),
                    });
                    d
                }
            };
            self.replace_worker(&worker);
            // Billed what it used: wall time, the worker's CPU since the call
            // started (an upper bound when several ran at once), and its peak.
            let cpu = death.cpu.saturating_sub(Duration::from_nanos(cpu_base));
            let mut usage = Usage::new(started.elapsed(), cpu, None, death.peak_memory);
            usage.sandbox = self.cgroup.as_ref().map(|_| self.cgroup_usage(true));
            return Ok(Outcome {
                status: death.status,
                usage,
                stdout: None,
                stderr: None,
            });
        }
    }

    /// The jail every worker of this sandbox builds.
    fn jail_spec(&self) -> Result<JailSpec, Error> {
        let grants = self
            .config
            .dirs
            .iter()
            .map(|d| {
                Ok(Grant {
                    host: d.host.clone(),
                    jail: d.jail_path()?,
                    writable: d.writable,
                })
            })
            .collect::<Result<_, Error>>()?;
        Ok(JailSpec {
            uid: self.config.uid,
            gid: self.config.gid,
            grants,
            nofile: self.config.nofile,
            fsize: self.config.fsize,
        })
    }

    /// Rewrites an invocation's directories to where the jail has them;
    /// a directory the sandbox was not granted is refused.
    fn jail_dirs(&self, wire: &mut WireInvocation) -> Result<(), Error> {
        for (host, guest, read_only) in &mut wire.dirs {
            let canonical = std::fs::canonicalize(&*host).unwrap_or_else(|_| host.clone());
            let grant = self
                .config
                .dirs
                .iter()
                .find(|d| d.host == *host || d.host == canonical)
                .ok_or_else(|| {
                    Error::Runtime(wasmlet_runtime::Error::Setup(format!(
                        "directory {} is not granted to this sandbox",
                        host.display()
                    )))
                })?;
            *host = grant.jail_path()?;
            *read_only |= !grant.writable;
            let _ = guest;
        }
        Ok(())
    }

    /// Makes one escape attempt inside a fresh, fully jailed worker of this
    /// sandbox (test builds only): `Ok` with what the kernel answered, or
    /// `Err` with how the worker died. The worker is replaced either way.
    #[cfg(feature = "escape-tests")]
    pub fn escape_attempt(&self, name: &str) -> Result<String, String> {
        let worker = self.current_worker().map_err(|e| e.to_string())?;
        let result = match worker.call(
            &Request::Escape(name.into()),
            Instant::now() + self.config.max_call,
        ) {
            Ok(Response::Escape(r)) => Ok(r),
            Ok(other) => Ok(format!("unexpected reply {other:?}")),
            Err(CallError::Died(d) | CallError::Deadline(d)) => Err(describe(&d.status)),
            Err(CallError::NotSent) => Err("worker already dead".into()),
            Err(CallError::Send(e)) => Err(e),
        };
        self.replace_worker(&worker);
        result
    }

    /// The wall-clock timeout an invocation runs under.
    fn timeout_of(&self, inv: &Invocation) -> Option<Duration> {
        let load = self.load.lock().expect("load lock");
        inv.limits
            .as_ref()
            .or(load.as_ref().and_then(|l| l.limits.as_ref()))
            .unwrap_or(&self.runtime_config.limits)
            .timeout
    }

    /// The cgroup totals, re-read when older than [`CGROUP_REFRESH`] or
    /// when `fresh`.
    fn cgroup_usage(&self, fresh: bool) -> SandboxUsage {
        let mut cached = self.cgroup_usage.lock().expect("usage lock");
        if let Some(cg) = &self.cgroup
            && (fresh || cached.0.is_none_or(|t| t.elapsed() >= CGROUP_REFRESH))
        {
            *cached = (Some(Instant::now()), cg.usage());
        }
        cached.1
    }

    /// Kills the worker and removes the cgroups now (for a supervisor that
    /// is about to exit on a signal). The sandbox is unusable afterwards.
    pub fn shutdown(&self) {
        self.shut.store(true, Ordering::Release);
        // A worker being started finishes first, then goes with the rest.
        let _spawning = self.spawning.lock().unwrap_or_else(|p| p.into_inner());
        drop(self.worker.lock().expect("worker lock").take());
        if let Some(cg) = &self.cgroup {
            cg.remove();
        }
    }

    /// The worker's pid.
    pub fn worker_pid(&self) -> Option<u32> {
        self.worker
            .lock()
            .expect("worker lock")
            .as_ref()
            .map(|w| w.pid as u32)
    }

    /// The sandbox's cgroup directory for `controller`, if it has cgroups.
    pub fn cgroup_dir(&self, controller: &str) -> Option<PathBuf> {
        self.cgroup.as_ref().map(|c| c.dir(controller))
    }

    /// The sandbox's settings.
    pub fn config(&self) -> &SandboxConfig {
        &self.config
    }

    fn current_worker(&self) -> Result<Arc<Worker>, Error> {
        if let Some(w) = self.worker.lock().expect("worker lock").as_ref() {
            return Ok(w.clone());
        }
        let _spawning = self.spawning.lock().expect("spawning lock");
        if let Some(w) = self.worker.lock().expect("worker lock").as_ref() {
            return Ok(w.clone()); // another caller just started one
        }
        if self.shut.load(Ordering::Acquire) {
            return Err(Error::Worker("the sandbox is shutting down".into()));
        }
        self.spawn_worker()
    }

    /// Forgets `dead` (dropping the last reference kills and reaps it) and
    /// starts a fresh worker, reloading the function.
    fn replace_worker(&self, dead: &Arc<Worker>) {
        {
            let mut slot = self.worker.lock().expect("worker lock");
            if slot.as_ref().is_some_and(|w| Arc::ptr_eq(w, dead)) {
                *slot = None;
            }
        }
        dead.kill();
        if self.shut.load(Ordering::Acquire) {
            return; // (its death is the shutdown's doing)
        }
        if let Err(e) = self.current_worker() {
            tracing::warn!("cannot restart sandbox worker: {e}");
        }
    }

    fn spawn_worker(&self) -> Result<Arc<Worker>, Error> {
        let (ours, theirs) = UnixStream::pair()
            .map_err(|e| Error::Worker(format!("cannot create socket pair: {e}")))?;
        let procs: Vec<std::fs::File> = self
            .cgroup
            .iter()
            .flat_map(|c| c.join_files())
            .map(|p| {
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(&p)
                    .map_err(|e| Error::Worker(format!("{}: {e}", p.display())))
            })
            .collect::<Result<_, _>>()?;
        let mut cmd = Command::new(&self.command.program);
        cmd.args(&self.command.args)
            .env_clear()
            // wasmtime-wasi's tokio runtime: one worker thread, not one per
            // host CPU (the worker's threads are counted against `pids`).
            .env("TOKIO_WORKER_THREADS", "1");
        match &self.command.stdio {
            Some(files) => {
                let dup = |f: &std::fs::File| {
                    f.try_clone()
                        .map(Stdio::from)
                        .map_err(|e| Error::Worker(format!("worker stdio: {e}")))
                };
                cmd.stdin(dup(&files[0])?)
                    .stdout(dup(&files[1])?)
                    .stderr(dup(&files[2])?);
            }
            None => {
                cmd.stdin(Stdio::inherit())
                    .stdout(Stdio::inherit())
                    .stderr(Stdio::inherit());
            }
        }
        if let Ok(log) = std::env::var("WASMLET_LOG") {
            cmd.env("WASMLET_LOG", log);
        }
        let procs_fds: Vec<i32> = procs.iter().map(|f| f.as_raw_fd()).collect();
        let socket_fd = theirs.as_raw_fd();
        // SAFETY: the closure runs in the forked child before exec and only
        // calls harden::in_child, which is async-signal-safe; the fds it uses
        // stay open in the parent (`procs`, `theirs`) until spawn returns.
        unsafe {
            cmd.pre_exec(move || harden::in_child(&procs_fds, socket_fd));
        }
        let pid = spawn_from_long_lived_thread(cmd).map_err(|e| {
            Error::Worker(format!(
                "cannot start sandbox worker {}: {e}",
                self.command.program.display()
            ))
        })?;
        drop((procs, theirs));
        let reader = ours.try_clone().and_then(|r| {
            r.set_read_timeout(Some(MID_FRAME_STALL))?;
            Ok(r)
        });
        let reader = match reader {
            Ok(r) => r,
            Err(e) => {
                // SAFETY: kill(2) on the child just started and not reaped.
                unsafe { libc::kill(pid, libc::SIGKILL) };
                let _ = wait4(pid);
                return Err(Error::Worker(format!("socket: {e}")));
            }
        };
        let worker = Arc::new(Worker {
            pid,
            reaped: Mutex::new(false),
            writer: Mutex::new(ours),
            reader: Mutex::new(BufReader::new(reader)),
            pending: Mutex::new(Some(HashMap::new())),
            next_id: AtomicU64::new(0),
            death: OnceLock::new(),
            killed_for_deadline: AtomicBool::new(false),
            killed_by_us: AtomicBool::new(false),
            cpu_seen_ns: AtomicU64::new(0),
            cgroup_before: self.cgroup.as_ref().map(|c| c.usage()),
            cgroup: self.cgroup.clone(),
            memory_limit: self.config.memory,
        });
        let jail = self.jail_spec()?;
        match worker.call(&Request::Init(jail), Instant::now() + WORKER_START) {
            Ok(Response::Ready) => {}
            Ok(Response::Error(e)) => return Err(Error::Worker(e)),
            Ok(other) => return Err(Error::Worker(format!("unexpected reply {other:?}"))),
            Err(CallError::Send(e)) => return Err(Error::Worker(e)),
            Err(CallError::NotSent | CallError::Died(_) | CallError::Deadline(_)) => {
                let how = worker.die();
                return Err(Error::Worker(format!(
                    "sandbox worker died while starting: {}",
                    describe(&how.status)
                )));
            }
        }
        *self.worker.lock().expect("worker lock") = Some(worker.clone());
        let spec = self.load.lock().expect("load lock").clone();
        if let Some(spec) = spec {
            self.load_into(&worker, &spec)?;
        }
        Ok(worker)
    }
}

fn describe(status: &Status) -> String {
    match status {
        Status::LimitExceeded(l) => l.to_string(),
        Status::Trapped(m) | Status::SandboxFailed(m) => m.clone(),
        other => format!("{other:?}"),
    }
}

/// Spawns from one thread that lives as long as the process, because a
/// worker's parent-death signal fires when the *thread* that forked it
/// exits, and callers' threads (a tokio blocking pool, a test) come and go.
/// Returns the pid; the caller reaps it (with `wait4`, for its rusage).
fn spawn_from_long_lived_thread(cmd: Command) -> io::Result<i32> {
    type Job = (Command, mpsc::Sender<io::Result<i32>>);
    static SPAWNER: OnceLock<Result<Mutex<mpsc::Sender<Job>>, String>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("wasmlet-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    // The Child is dropped without waiting: `Worker` reaps
                    // the pid itself with wait4.
                    let _ = reply.send(cmd.spawn().map(|c| c.id() as i32));
                }
            })
            .map(|_| Mutex::new(tx))
            .map_err(|e| format!("cannot start the process-spawner thread: {e}"))
    });
    let spawner = spawner.as_ref().map_err(|e| io::Error::other(e.clone()))?;
    let (tx, rx) = mpsc::channel();
    spawner
        .lock()
        .expect("spawner lock")
        .send((cmd, tx))
        .map_err(|_| io::Error::other("spawner thread is gone"))?;
    rx.recv()
        .map_err(|_| io::Error::other("spawner thread is gone"))?
}

impl Worker {
    /// Sends a request and waits for its reply, the worker's death, or the
    /// deadline (which kills the worker).
    fn call(&self, req: &Request, deadline: Instant) -> Result<Response, CallError> {
        self.call_with_fd(req, None, deadline)
    }

    /// [`Worker::call`], passing `fd` right after the request.
    fn call_with_fd(
        &self,
        req: &Request,
        fd: Option<std::os::fd::RawFd>,
        deadline: Instant,
    ) -> Result<Response, CallError> {
        if self.death.get().is_some() {
            return Err(CallError::NotSent);
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let frame = encode(&Envelope {
            id,
            cpu_ns: 0,
            body: req,
        })
        .map_err(|e| CallError::Send(format!("cannot send to sandbox worker: {e}")))?;
        let (tx, rx) = mpsc::channel();
        match self.pending.lock().expect("pending lock").as_mut() {
            Some(p) => p.insert(id, tx),
            None => return Err(CallError::NotSent),
        };
        let sent = {
            let mut w = self.writer.lock().expect("writer lock");
            w.write_all(&frame).and_then(|()| match fd {
                Some(fd) => send_fd(&w, fd),
                None => Ok(()),
            })
        };
        if let Err(e) = sent {
            self.forget(id);
            if matches!(
                e.kind(),
                io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
            ) {
                return Err(CallError::NotSent); // the worker had already died
            }
            // A frame may be half-written: the stream is unusable.
            self.kill();
            return Err(CallError::Send(format!(
                "cannot send to sandbox worker: {e}"
            )));
        }
        loop {
            if let Ok(reply) = rx.try_recv() {
                return reply.map_err(CallError::Died);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(self.miss_deadline(id));
            }
            let Ok(mut stream) = self.reader.try_lock() else {
                // Another caller is reading: it hands our reply over, or
                // lets go of the stream, whichever comes first.
                match rx.recv_timeout((deadline - now).min(Duration::from_millis(1))) {
                    Ok(reply) => return reply.map_err(CallError::Died),
                    Err(mpsc::RecvTimeoutError::Timeout) => continue,
                    Err(mpsc::RecvTimeoutError::Disconnected) => {
                        return Err(CallError::Died(self.die()));
                    }
                }
            };
            if let Ok(reply) = rx.try_recv() {
                return reply.map_err(CallError::Died);
            }
            // A reply already buffered needs no wait; else poll briefly,
            // then sleep until data or the deadline.
            if stream.buffer().is_empty()
                && !spin_until_readable(stream.get_ref())
                && !wait_readable(stream.get_ref(), deadline)
            {
                continue; // the deadline check above ends it
            }
            match recv::<Envelope<Response>>(&mut *stream) {
                Ok(Some(reply)) if reply.id == id => {
                    self.cpu_seen_ns.fetch_max(reply.cpu_ns, Ordering::AcqRel);
                    self.forget(id);
                    // Replies read along with ours go to their callers now,
                    // not when one of them next takes the stream.
                    while has_whole_frame(stream.buffer()) {
                        match recv::<Envelope<Response>>(&mut *stream) {
                            Ok(Some(other)) => self.deliver(other),
                            Ok(None) => break, // (not with a whole frame)
                            Err(e) => {
                                // A frame that does not parse: as below.
                                drop(stream);
                                self.broken_stream(&e);
                                self.kill();
                                self.die();
                                break;
                            }
                        }
                    }
                    return Ok(reply.body);
                }
                Ok(Some(other)) => self.deliver(other),
                Ok(None) => {
                    drop(stream);
                    self.die();
                }
                Err(e) => {
                    // A broken or stalled stream: the worker cannot be
                    // trusted to answer anyone any more.
                    drop(stream);
                    self.broken_stream(&e);
                    self.kill();
                    self.die();
                }
            }
        }
    }

    /// Hands a reply read by another caller to the caller waiting for it.
    fn deliver(&self, reply: Envelope<Response>) {
        self.cpu_seen_ns.fetch_max(reply.cpu_ns, Ordering::AcqRel);
        let tx = self
            .pending
            .lock()
            .expect("pending lock")
            .as_mut()
            .and_then(|p| p.remove(&reply.id));
        if let Some(tx) = tx {
            let _ = tx.send(Ok(reply.body));
        }
    }

    fn forget(&self, id: u64) {
        if let Some(p) = self.pending.lock().expect("pending lock").as_mut() {
            p.remove(&id);
        }
    }

    /// The caller `id` missed its deadline: kill the worker (the others in
    /// flight on it learn that from [`Worker::die`]).
    fn miss_deadline(&self, id: u64) -> CallError {
        self.forget(id);
        self.killed_for_deadline.store(true, Ordering::Release);
        self.kill();
        CallError::Deadline(self.die())
    }

    /// Reaps the dead worker, works out why it died, and fails every
    /// waiting call with that.
    fn die(&self) -> Death {
        let death = self
            .death
            .get_or_init(|| {
                let (how, rusage) = self.wait_exit();
                let cg = self.cgroup.as_ref().map(|c| c.usage());
                let oom = matches!(
                    (self.cgroup_before, cg),
                    (Some(before), Some(after)) if after.oom_kills > before.oom_kills
                );
                let status = if oom {
                    Status::LimitExceeded(LimitExceeded::SandboxMemory(
                        self.memory_limit.unwrap_or(0),
                    ))
                } else if self.killed_for_deadline.load(Ordering::Acquire) {
                    Status::SandboxFailed(
                        "sandbox worker killed: an invocation on it missed its deadline".into(),
                    )
                } else {
                    Status::SandboxFailed(format!("sandbox worker died: {how}"))
                };
                let (waited_cpu, max_rss) = rusage;
                // The wait status's rusage has the worker proper's CPU only
                // if the first process reaped it; killed first (a deadline,
                // a signal), it has almost nothing. The cgroup saw it all.
                let cgroup_cpu = match (self.cgroup_before, cg) {
                    (Some(before), Some(u)) => {
                        Duration::from_nanos(u.cpu_ns.saturating_sub(before.cpu_ns))
                    }
                    _ => Duration::ZERO,
                };
                let cpu = waited_cpu.max(cgroup_cpu);
                Death {
                    status,
                    cpu,
                    peak_memory: cg.map_or(max_rss, |u| u.memory_peak_bytes.max(max_rss)),
                }
            })
            .clone();
        let pending = self.pending.lock().expect("pending lock").take();
        for (_, tx) in pending.into_iter().flatten() {
            let _ = tx.send(Err(death.clone()));
        }
        death
    }

    /// Waits for the process; says how it ended, and what it used (CPU
    /// time, largest resident set in bytes).
    fn wait_exit(&self) -> (String, (Duration, u64)) {
        let _ = self
            .writer
            .lock()
            .expect("writer lock")
            .shutdown(std::net::Shutdown::Both);
        let mut reaped = self.reaped.lock().expect("reaped lock");
        if *reaped {
            return ("ended".into(), (Duration::ZERO, 0));
        }
        // It closed its socket, so it is dead or useless. Its first process
        // may still be relaying how the worker ended: give it a moment,
        // then make sure it ends.
        let mut ended = None;
        for _ in 0..EXIT_RELAY_POLLS {
            match wait4_nohang(self.pid) {
                Ok(Some(r)) => {
                    ended = Some(Ok(r));
                    break;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(1)),
                Err(e) => {
                    ended = Some(Err(e));
                    break;
                }
            }
        }
        let ended = ended.unwrap_or_else(|| {
            // SAFETY: kill(2) on our own unreaped child (`reaped` is held).
            unsafe { libc::kill(self.pid, libc::SIGKILL) };
            wait4(self.pid)
        });
        match ended {
            Ok((status, cpu, rss)) => {
                *reaped = true;
                let how = if libc::WIFEXITED(status) {
                    format!("exited with code {}", libc::WEXITSTATUS(status))
                } else {
                    match libc::WTERMSIG(status) {
                        libc::SIGSYS => "killed by its seccomp filter (SIGSYS)".into(),
                        libc::SIGKILL => "killed (SIGKILL)".into(),
                        sig => format!("killed by signal {sig}"),
                    }
                };
                (how, (cpu, rss))
            }
            Err(e) => (format!("cannot be waited for: {e}"), (Duration::ZERO, 0)),
        }
    }

    /// Reports a stream that broke, unless we killed the worker ourselves.
    fn broken_stream(&self, e: &dyn std::fmt::Display) {
        if self.killed_by_us.load(Ordering::Acquire) {
            tracing::debug!(
                "sandbox worker {}: {e} (killed by the supervisor)",
                self.pid
            );
        } else {
            tracing::warn!("sandbox worker {}: {e}; killing it", self.pid);
        }
    }

    /// Sends SIGKILL unless the process has been reaped (its pid may then
    /// belong to someone else).
    fn kill(&self) {
        self.killed_by_us.store(true, Ordering::Release);
        let reaped = self.reaped.lock().expect("reaped lock");
        if !*reaped {
            // SAFETY: kill(2) on our own unreaped child: the pid cannot have
            // been reused while we hold `reaped` unset.
            unsafe { libc::kill(self.pid, libc::SIGKILL) };
        }
    }
}

/// How many 1 ms polls a dead worker's first process gets to end on its
/// own (relaying the worker's exit) before it is killed.
const EXIT_RELAY_POLLS: u32 = 500;

/// Waits for `pid` to end; its wait status, CPU time (user + system) and
/// largest resident set in bytes.
fn wait4(pid: i32) -> io::Result<(i32, Duration, u64)> {
    loop {
        if let Some(r) = wait4_flags(pid, 0)? {
            return Ok(r);
        }
    }
}

/// [`wait4`] if `pid` has ended, else `None`.
fn wait4_nohang(pid: i32) -> io::Result<Option<(i32, Duration, u64)>> {
    wait4_flags(pid, libc::WNOHANG)
}

fn wait4_flags(pid: i32, flags: i32) -> io::Result<Option<(i32, Duration, u64)>> {
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value of this plain C struct.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: wait4 on our own child with valid out-pointers to locals.
    let rc = unsafe { libc::wait4(pid, &mut status, flags, &mut ru) };
    if rc == 0 {
        return Ok(None);
    }
    if rc != pid {
        let e = io::Error::last_os_error();
        return if e.kind() == io::ErrorKind::Interrupted {
            Ok(None)
        } else {
            Err(e)
        };
    }
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    let cpu = tv(ru.ru_utime) + tv(ru.ru_stime);
    Ok(Some((status, cpu, ru.ru_maxrss as u64 * 1024)))
}

/// Whether `buf` starts with a whole frame (length and body).
fn has_whole_frame(buf: &[u8]) -> bool {
    buf.len() >= 4 && buf.len() - 4 >= u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize
}

/// Waits until `stream` has data or is closed, or `deadline` passes.
fn wait_readable(stream: &UnixStream, deadline: Instant) -> bool {
    let mut fd = libc::pollfd {
        fd: stream.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let left = deadline.saturating_duration_since(Instant::now());
    let ms = left.as_millis().min(i32::MAX as u128) as i32 + 1;
    // SAFETY: poll(2) on one valid pollfd that lives across the call.
    let rc = unsafe { libc::poll(&mut fd, 1, ms) };
    rc > 0
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.kill();
        let mut reaped = self.reaped.lock().expect("reaped lock");
        if !*reaped {
            let _ = wait4(self.pid);
            *reaped = true;
        }
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        // The last reference to the worker: dropping it kills and reaps it.
        drop(self.worker.lock().expect("worker lock").take());
        // `self.cgroup` drops next (the worker and its reference are gone):
        // it kills any straggler and removes the directories.
    }
}
