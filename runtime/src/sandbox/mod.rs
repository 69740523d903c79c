//! Sandboxes: microVM-style isolation around the wasm sandbox.
//!
//! A [`Sandbox`] is one worker process in cgroups of its own (memory, CPU
//! bandwidth, pids; v1 or v2, see [`cgroup`]), hardened before it runs
//! anything (no new privileges, dies with its supervisor, no inherited fds,
//! no core dumps, a seccomp filter), that loads one function and runs the
//! invocations handed to it over a Unix socket. A worker the kernel kills
//! (OOM, seccomp) fails the invocations it was running, with the cause, and
//! is replaced by a fresh one; other sandboxes never notice.
//!
//! The worker is this same program run as `<exe> sandbox-worker` (the
//! `wasmlet` binary has that hidden command; an embedder calls
//! [`worker_main`] from its own `main` when started that way, or points
//! [`WorkerCommand`] at a `wasmlet` binary).

pub mod cgroup;
mod harden;
mod protocol;
mod worker;

pub use worker::{WORKER_THREADS, worker_main};

use crate::config::RuntimeConfig;
use crate::error::{Error, LimitExceeded};
use crate::invocation::{Invocation, Outcome, Status};
use crate::runtime::LoadOptions;
use crate::usage::Usage;
use cgroup::{Cgroup, CgroupLimits, Layout};
use protocol::{Envelope, Request, Response, WireInvocation, recv, send};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, mpsc};
use std::time::Instant;

/// Default parent of sandbox cgroups in each hierarchy.
pub const DEFAULT_CGROUP_PARENT: &str = "wasmlet";
/// Default pids limit: the worker's threads with room to spare, no forks.
pub const DEFAULT_SANDBOX_PIDS: u64 = 64;

/// Settings of a sandbox (serde; `RuntimeConfig::sandbox` for `serve` and
/// the shim, `--sandbox-*` flags for `wasmlet run`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SandboxConfig {
    /// Memory of the whole worker (code, runtime, all instances), bytes.
    pub memory: Option<u64>,
    /// CPU bandwidth, in CPUs.
    pub cpus: Option<f64>,
    /// Processes and threads.
    pub pids: Option<u64>,
    /// Parent cgroup, relative to each hierarchy's root.
    pub cgroup_parent: String,
    /// Refuse to run without cgroups (otherwise warn and run the worker
    /// without kernel limits).
    pub require_cgroups: bool,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        SandboxConfig {
            memory: None,
            cpus: None,
            pids: Some(DEFAULT_SANDBOX_PIDS),
            cgroup_parent: DEFAULT_CGROUP_PARENT.into(),
            require_cgroups: true,
        }
    }
}

/// How to start a worker process.
#[derive(Debug, Clone)]
pub struct WorkerCommand {
    /// The program.
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<String>,
}

impl WorkerCommand {
    /// `<current exe> sandbox-worker`.
    pub fn current_exe() -> Result<Self, Error> {
        Ok(WorkerCommand {
            program: std::env::current_exe()
                .map_err(|e| Error::Sandbox(format!("cannot find own executable: {e}")))?,
            args: vec!["sandbox-worker".into()],
        })
    }
}

/// What the sandbox is told to load, kept to reload a replacement worker.
struct LoadSpec {
    module: Vec<u8>,
    trap_unknown_imports: bool,
    limits: Option<crate::Limits>,
}

/// A sandbox: a worker process in its own cgroups. Dropping it kills the
/// worker and removes the cgroups.
pub struct Sandbox {
    config: SandboxConfig,
    runtime_config: RuntimeConfig,
    command: WorkerCommand,
    cgroup: Option<Arc<Cgroup>>,
    load: Mutex<Option<Arc<LoadSpec>>>,
    worker: Mutex<Option<Arc<Worker>>>,
}

/// Why a worker ended.
#[derive(Debug, Clone)]
struct Death(Status);

/// Callers waiting for replies, by request id; `None` once the worker died.
type Pending = Option<HashMap<u64, mpsc::Sender<Result<Response, Death>>>>;

struct Worker {
    pid: u32,
    child: Mutex<Child>,
    /// Set once the reader thread has reaped the process (its pid may then
    /// belong to someone else).
    reaped: std::sync::atomic::AtomicBool,
    reader: Mutex<Option<std::thread::JoinHandle<()>>>,
    writer: Mutex<UnixStream>,
    pending: Mutex<Pending>,
    next_id: AtomicU64,
}

/// Sandboxes created by this process, for unique cgroup names.
static SANDBOX_COUNTER: AtomicU64 = AtomicU64::new(0);

impl Sandbox {
    /// Creates the cgroups (cleaning ones left by dead supervisors) and
    /// starts a worker in them.
    pub fn start(
        runtime_config: &RuntimeConfig,
        config: &SandboxConfig,
        command: WorkerCommand,
    ) -> Result<Sandbox, Error> {
        let cgroup = match Layout::detect().and_then(|layout| {
            cgroup::clean_stale(&layout, &config.cgroup_parent);
            let name = format!(
                "{}-{}",
                std::process::id(),
                SANDBOX_COUNTER.fetch_add(1, Ordering::Relaxed)
            );
            let limits = CgroupLimits {
                memory: config.memory,
                cpus: config.cpus,
                pids: config.pids,
            };
            Cgroup::create(&layout, &config.cgroup_parent, &name, &limits)
        }) {
            Ok(cg) => Some(Arc::new(cg)),
            Err(e) if config.require_cgroups => {
                return Err(Error::Sandbox(format!(
                    "cannot create sandbox cgroups: {e}"
                )));
            }
            Err(e) => {
                tracing::warn!("running the sandbox without cgroups (no kernel limits): {e}");
                None
            }
        };
        let sandbox = Sandbox {
            config: config.clone(),
            runtime_config: runtime_config.clone(),
            command,
            cgroup,
            load: Mutex::new(None),
            worker: Mutex::new(None),
        };
        sandbox.spawn_worker()?;
        Ok(sandbox)
    }

    /// Loads the sandbox's function (compiled in the worker, through the
    /// shared cache).
    pub fn load(&self, module: &[u8], opts: &LoadOptions) -> Result<(), Error> {
        let spec = Arc::new(LoadSpec {
            module: module.to_vec(),
            trap_unknown_imports: opts.trap_unknown_imports,
            limits: opts.limits.clone(),
        });
        let worker = self.current_worker()?;
        self.load_into(&worker, &spec)?;
        *self.load.lock().expect("load lock") = Some(spec);
        Ok(())
    }

    fn load_into(&self, worker: &Worker, spec: &LoadSpec) -> Result<(), Error> {
        let req = Request::Load {
            config: Box::new(self.runtime_config.clone()),
            module: spec.module.clone(),
            trap_unknown_imports: spec.trap_unknown_imports,
            limits: spec.limits.clone(),
        };
        match worker.call(req) {
            Ok(Response::Loaded) => Ok(()),
            Ok(Response::Error(e)) => Err(Error::Sandbox(e)),
            Ok(other) => Err(Error::Sandbox(format!("unexpected reply {other:?}"))),
            Err(Death(status)) => Err(Error::Sandbox(format!(
                "sandbox worker died while loading: {}",
                describe(&status)
            ))),
        }
    }

    /// Runs one invocation in the worker. Several may run at once (up to
    /// [`WORKER_THREADS`]). If the kernel kills the worker, the invocation
    /// fails with the cause and a fresh worker takes over.
    pub fn invoke(&self, inv: Invocation) -> Result<Outcome, Error> {
        let wire = WireInvocation::from_invocation(&inv).map_err(Error::Setup)?;
        let started = Instant::now();
        let worker = self.current_worker()?;
        let mut outcome = match worker.call(Request::Invoke(wire)) {
            Ok(Response::Outcome(o)) => Outcome {
                status: o.status.into_status(),
                usage: o.usage,
                stdout: o.stdout.map(Into::into),
                stderr: o.stderr.map(Into::into),
            },
            Ok(Response::Error(e)) => return Err(Error::Sandbox(e)),
            Ok(other) => return Err(Error::Sandbox(format!("unexpected reply {other:?}"))),
            Err(Death(status)) => {
                self.replace_worker(&worker);
                Outcome {
                    status,
                    usage: Usage::new(started.elapsed(), Default::default(), None, 0),
                    stdout: None,
                    stderr: None,
                }
            }
        };
        outcome.usage.sandbox = self.cgroup.as_deref().map(Cgroup::usage);
        Ok(outcome)
    }

    /// The worker's pid.
    pub fn worker_pid(&self) -> Option<u32> {
        self.worker
            .lock()
            .expect("worker lock")
            .as_ref()
            .map(|w| w.pid)
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
        self.spawn_worker()
    }

    /// Starts a fresh worker after `dead` died, reloading the function.
    fn replace_worker(&self, dead: &Arc<Worker>) {
        {
            let mut slot = self.worker.lock().expect("worker lock");
            if slot.as_ref().is_some_and(|w| Arc::ptr_eq(w, dead)) {
                *slot = None;
            }
        }
        if let Err(e) = self.current_worker() {
            tracing::warn!("cannot restart sandbox worker: {e}");
        }
    }

    fn spawn_worker(&self) -> Result<Arc<Worker>, Error> {
        let (ours, theirs) = UnixStream::pair()
            .map_err(|e| Error::Sandbox(format!("cannot create socket pair: {e}")))?;
        let procs: Vec<std::fs::File> = self
            .cgroup
            .iter()
            .flat_map(|c| c.procs_files())
            .map(|p| {
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(&p)
                    .map_err(|e| Error::Sandbox(format!("{}: {e}", p.display())))
            })
            .collect::<Result<_, _>>()?;
        let mut cmd = Command::new(&self.command.program);
        cmd.args(&self.command.args)
            .env_clear()
            .stdin(Stdio::inherit())
            .stdout(Stdio::inherit())
            .stderr(Stdio::inherit());
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
        let child = spawn_from_long_lived_thread(cmd).map_err(|e| {
            Error::Sandbox(format!(
                "cannot start sandbox worker {}: {e}",
                self.command.program.display()
            ))
        })?;
        drop((procs, theirs));
        let worker = Arc::new(Worker {
            pid: child.id(),
            child: Mutex::new(child),
            reaped: Default::default(),
            reader: Mutex::new(None),
            writer: Mutex::new(
                ours.try_clone()
                    .map_err(|e| Error::Sandbox(format!("socket: {e}")))?,
            ),
            pending: Mutex::new(Some(HashMap::new())),
            next_id: AtomicU64::new(0),
        });
        let reader_worker = worker.clone();
        let cgroup = self.cgroup.clone();
        let memory_limit = self.config.memory;
        let oom_before = cgroup.as_ref().map(|c| c.usage().oom_kills);
        let reader = std::thread::Builder::new()
            .name("wasmlet-sandbox-reader".into())
            .spawn(move || {
                reader_worker.read_replies(ours);
                let how = reader_worker.wait_exit();
                let oom_after = cgroup.as_ref().map(|c| c.usage().oom_kills);
                let cause = match (oom_before, oom_after) {
                    (Some(before), Some(after)) if after > before => Status::LimitExceeded(
                        LimitExceeded::SandboxMemory(memory_limit.unwrap_or(0)),
                    ),
                    _ => Status::Trapped(format!("sandbox worker died: {how}")),
                };
                reader_worker.fail_pending(Death(cause));
            })
            .map_err(|e| Error::Sandbox(format!("cannot start reader thread: {e}")))?;
        *worker.reader.lock().expect("reader lock") = Some(reader);
        *self.worker.lock().expect("worker lock") = Some(worker.clone());
        if let Some(spec) = self.load.lock().expect("load lock").clone() {
            self.load_into(&worker, &spec)?;
        }
        Ok(worker)
    }
}

fn describe(status: &Status) -> String {
    match status {
        Status::LimitExceeded(l) => l.to_string(),
        Status::Trapped(m) => m.clone(),
        other => format!("{other:?}"),
    }
}

/// Spawns from one thread that lives as long as the process, because a
/// worker's parent-death signal fires when the *thread* that forked it
/// exits, and callers' threads (a tokio blocking pool, a test) come and go.
fn spawn_from_long_lived_thread(cmd: Command) -> std::io::Result<Child> {
    type Job = (Command, mpsc::Sender<std::io::Result<Child>>);
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<Job>>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("wasmlet-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            })
            .expect("spawn the process-spawner thread");
        Mutex::new(tx)
    });
    let (tx, rx) = mpsc::channel();
    spawner
        .lock()
        .expect("spawner lock")
        .send((cmd, tx))
        .map_err(|_| std::io::Error::other("spawner thread is gone"))?;
    rx.recv()
        .map_err(|_| std::io::Error::other("spawner thread is gone"))?
}

impl Worker {
    /// Sends a request and waits for its reply (or the worker's death).
    fn call(&self, req: Request) -> Result<Response, Death> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel();
        {
            let mut pending = self.pending.lock().expect("pending lock");
            match pending.as_mut() {
                Some(p) => p.insert(id, tx),
                None => return Err(Death(Status::Trapped("sandbox worker is gone".into()))),
            };
        }
        let sent = send(
            &mut *self.writer.lock().expect("writer lock"),
            &Envelope { id, body: req },
        );
        if sent.is_err() {
            // The reader sees the same broken socket and reports the death.
        }
        rx.recv()
            .unwrap_or_else(|_| Err(Death(Status::Trapped("sandbox worker is gone".into()))))
    }

    fn read_replies(&self, mut stream: UnixStream) {
        while let Ok(Some(Envelope { id, body })) = recv::<Envelope<Response>>(&mut stream) {
            let tx = self
                .pending
                .lock()
                .expect("pending lock")
                .as_mut()
                .and_then(|p| p.remove(&id));
            if let Some(tx) = tx {
                let _ = tx.send(Ok(body));
            }
        }
    }

    /// Waits for the process and says how it ended.
    fn wait_exit(&self) -> String {
        let _ = self
            .writer
            .lock()
            .expect("writer lock")
            .shutdown(std::net::Shutdown::Both);
        let status = self.child.lock().expect("child lock").wait();
        self.reaped.store(true, Ordering::Release);
        match status {
            Ok(s) => match (s.code(), s.signal()) {
                (Some(c), _) => format!("exited with code {c}"),
                (_, Some(libc::SIGSYS)) => "killed by its seccomp filter (SIGSYS)".into(),
                (_, Some(libc::SIGKILL)) => "killed (SIGKILL)".into(),
                (_, Some(sig)) => format!("killed by signal {sig}"),
                _ => "ended".into(),
            },
            Err(e) => format!("cannot be waited for: {e}"),
        }
    }

    fn fail_pending(&self, death: Death) {
        let pending = self.pending.lock().expect("pending lock").take();
        for (_, tx) in pending.into_iter().flatten() {
            let _ = tx.send(Err(death.clone()));
        }
    }

    /// Kills the process and waits until the reader thread has reaped it.
    fn kill_and_reap(&self) {
        if !self.reaped.load(Ordering::Acquire) {
            // SAFETY: kill(2) on our own, not yet reaped child (the reader
            // thread holds the child until it is waited for).
            unsafe { libc::kill(self.pid as i32, libc::SIGKILL) };
        }
        if let Some(reader) = self.reader.lock().expect("reader lock").take() {
            let _ = reader.join();
        }
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if let Some(w) = self.worker.lock().expect("worker lock").take() {
            w.kill_and_reap();
        }
        // `self.cgroup` drops next (the reader's reference is gone): it
        // kills any straggler and removes the directories.
    }
}
