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
use protocol::{Envelope, Request, Response, WireInvocation, recv, send, spin_until_readable};
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
    allow_precompiled: bool,
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
    /// Held while a worker is being started, so that callers racing after a
    /// death start one replacement, not several.
    spawning: Mutex<()>,
}

/// Why a worker ended.
#[derive(Debug, Clone)]
struct Death(Status);

/// Callers waiting for replies, by request id; `None` once the worker died.
type Pending = Option<HashMap<u64, mpsc::Sender<Result<Response, Death>>>>;

struct Worker {
    pid: u32,
    child: Mutex<Child>,
    /// Set once the process has been reaped (its pid may then be reused).
    reaped: std::sync::atomic::AtomicBool,
    writer: Mutex<UnixStream>,
    /// Held by the caller currently reading replies (leader/followers: the
    /// reader hands others' replies over and returns with its own, so a lone
    /// invocation never waits on another thread).
    reader: Mutex<UnixStream>,
    pending: Mutex<Pending>,
    next_id: AtomicU64,
    death: OnceLock<Death>,
    cgroup: Option<Arc<Cgroup>>,
    oom_before: Option<u64>,
    memory_limit: Option<u64>,
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
            spawning: Mutex::new(()),
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
            allow_precompiled: opts.allow_precompiled,
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
            allow_precompiled: spec.allow_precompiled,
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
        let _spawning = self.spawning.lock().expect("spawning lock");
        if let Some(w) = self.worker.lock().expect("worker lock").as_ref() {
            return Ok(w.clone()); // another caller just started one
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
            writer: Mutex::new(
                ours.try_clone()
                    .map_err(|e| Error::Sandbox(format!("socket: {e}")))?,
            ),
            reader: Mutex::new(ours),
            pending: Mutex::new(Some(HashMap::new())),
            next_id: AtomicU64::new(0),
            death: OnceLock::new(),
            oom_before: self.cgroup.as_ref().map(|c| c.usage().oom_kills),
            cgroup: self.cgroup.clone(),
            memory_limit: self.config.memory,
        });
        *self.worker.lock().expect("worker lock") = Some(worker.clone());
        if let Some(spec) = self.load.lock().expect("load lock").clone() {
            self.load_into(&worker, &spec)?;
        }
        Ok(worker)
    }
}

fn gone() -> Death {
    Death(Status::Trapped("sandbox worker is gone".into()))
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
        if let Some(death) = self.death.get() {
            return Err(death.clone());
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel();
        match self.pending.lock().expect("pending lock").as_mut() {
            Some(p) => p.insert(id, tx),
            None => return Err(self.death.get().cloned().unwrap_or_else(gone)),
        };
        // A failed send shows up as the end of the stream below.
        let _ = send(
            &mut *self.writer.lock().expect("writer lock"),
            &Envelope { id, body: req },
        );
        loop {
            if let Ok(reply) = rx.try_recv() {
                return reply;
            }
            let Ok(mut stream) = self.reader.try_lock() else {
                // Another caller is reading: it hands our reply over, or
                // lets go of the stream, whichever comes first.
                match rx.recv_timeout(std::time::Duration::from_millis(1)) {
                    Ok(reply) => return reply,
                    Err(mpsc::RecvTimeoutError::Timeout) => continue,
                    Err(mpsc::RecvTimeoutError::Disconnected) => return Err(gone()),
                }
            };
            if let Ok(reply) = rx.try_recv() {
                return reply;
            }
            spin_until_readable(&stream);
            match recv::<Envelope<Response>>(&mut *stream) {
                Ok(Some(Envelope { id: got, body })) => {
                    let tx = self
                        .pending
                        .lock()
                        .expect("pending lock")
                        .as_mut()
                        .and_then(|p| p.remove(&got));
                    if got == id {
                        return Ok(body);
                    }
                    if let Some(tx) = tx {
                        let _ = tx.send(Ok(body));
                    }
                }
                // End of stream: the worker is gone.
                _ => {
                    drop(stream);
                    self.die();
                }
            }
        }
    }

    /// Reaps the dead worker, works out why it died, and fails every
    /// waiting call with that.
    fn die(&self) {
        let death = self
            .death
            .get_or_init(|| {
                let how = self.wait_exit();
                let oom_after = self.cgroup.as_ref().map(|c| c.usage().oom_kills);
                Death(match (self.oom_before, oom_after) {
                    (Some(before), Some(after)) if after > before => Status::LimitExceeded(
                        LimitExceeded::SandboxMemory(self.memory_limit.unwrap_or(0)),
                    ),
                    _ => Status::Trapped(format!("sandbox worker died: {how}")),
                })
            })
            .clone();
        let pending = self.pending.lock().expect("pending lock").take();
        for (_, tx) in pending.into_iter().flatten() {
            let _ = tx.send(Err(death.clone()));
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

    /// Kills the process and reaps it.
    fn kill_and_reap(&self) {
        let mut child = self.child.lock().expect("child lock");
        if !self.reaped.load(Ordering::Acquire) {
            let _ = child.kill();
            let _ = child.wait();
            self.reaped.store(true, Ordering::Release);
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.kill_and_reap();
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
