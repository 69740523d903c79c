//! The executor that runs wasm tasks: reads the bundle, mounts the rootfs,
//! loads the module through the runtime's pre-compiled cache, opens the
//! task's stdio, and runs the guest in one of three ways:
//!
//! - a pod's sandbox ("pause") container runs nothing: it lives until it
//!   is killed;
//! - a container with resource limits (`linux.resources`: memory, CPU,
//!   pids) runs in a jailed `wasmlet-sandbox` worker placed in the
//!   container's cgroup (`linux.cgroupsPath`), so the kernel enforces its
//!   limits and an OOM kill takes the worker, never the shim. The worker is
//!   this same binary run as `<shim> sandbox-worker`;
//! - a container without limits (plain `ctr run`) runs as an instance in
//!   the shim process itself, on the shim's tokio runtime: no process to
//!   start, and the guest is still bounded by the runtime's own limits.
//!   The cgroup path containerd always sets is left alone then (it would
//!   be empty: nothing runs in it).

use crate::error::{Error, Result};
use crate::executor::{
    CreateSpec, Executor, Exit, Instance, Metrics, OnExit, RootfsMount, SignalAction, signal_action,
};
use crate::stats;
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use wasmlet_oci::bundle::{Resources, Spec, open_in_root};
use wasmlet_runtime::{
    Entry, Input, Invocation, LimitExceeded, Limits, LoadOptions, Outcome, Output, Preopen,
    Runtime, RuntimeConfig, SnapshotOptions, StartGate, Status,
};
use wasmlet_sandbox::{DirGrant, Sandbox, SandboxConfig, WORKER_TASKS, WorkerCommand};

/// Where compiled modules are cached when `WASMLET_CACHE_DIR` is unset
/// (the shim runs as root, usually without a `HOME`).
pub const DEFAULT_SHIM_CACHE_DIR: &str = "/var/cache/wasmlet";
/// Pool slots of one shim's runtime: the containers of one pod run in one
/// shim, each invocation holds a slot while it runs.
pub const SHIM_POOL_INSTANCES: u32 = 64;
/// Exit status of a guest that trapped (as for SIGABRT, like `wasmlet run`).
pub const EXIT_TRAP: u32 = 134;
/// Exit status of a guest stopped by a limit (as for SIGKILL).
pub const EXIT_LIMIT: u32 = 137;
/// Exit status when the module could not be run at all.
pub const EXIT_HOST_ERROR: u32 = 1;

/// What the shim runs once at start to warm its task runtime (see
/// [`WasmExecutor::warm_up`]): a command that makes the WASI calls a C
/// program's start-up and `printf` make (arguments, environment, the
/// preopened directories, stdout's kind, one write, one read of stdin), so
/// the host code behind them is paged in before a task needs it (in a
/// fresh process, each first call of one of them took page faults in the
/// first task's start).
pub const WARM_UP_MODULE: &str = r#"(module
  (import "wasi_snapshot_preview1" "args_sizes_get" (func $args_sizes (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "args_get" (func $args (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "environ_sizes_get" (func $env_sizes (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "environ_get" (func $env (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_prestat_get" (func $prestat (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_prestat_dir_name" (func $prestat_name (param i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_fdstat_get" (func $fdstat (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_read" (func $read (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 256) "warm\n")
  (func (export "_start")
    (drop (call $args_sizes (i32.const 0) (i32.const 4)))
    (drop (call $args (i32.const 1024) (i32.const 2048)))
    (drop (call $env_sizes (i32.const 0) (i32.const 4)))
    (drop (call $env (i32.const 1024) (i32.const 2048)))
    (drop (call $prestat (i32.const 3) (i32.const 8)))
    (drop (call $prestat_name (i32.const 3) (i32.const 2048) (i32.const 16)))
    (drop (call $prestat (i32.const 4) (i32.const 8)))
    (drop (call $fdstat (i32.const 1) (i32.const 16)))
    (i32.store (i32.const 32) (i32.const 256))
    (i32.store (i32.const 36) (i32.const 5))
    (drop (call $write (i32.const 1) (i32.const 32) (i32.const 1) (i32.const 40)))
    (i32.store (i32.const 48) (i32.const 3072))
    (i32.store (i32.const 52) (i32.const 64))
    (drop (call $read (i32.const 0) (i32.const 48) (i32.const 1) (i32.const 56)))))"#;

/// The invocation the warm-up module runs with: an argument, an
/// environment variable, a read-only preopen (the temporary directory, of
/// which it reads only the name) and `stdout`, as a task's are given.
pub fn warm_up_invocation(stdout: File) -> Invocation {
    Invocation {
        args: vec!["warm-up".into()],
        env: vec![("PATH".into(), "/".into())],
        dirs: vec![Preopen {
            host: std::env::temp_dir(),
            guest: "/".into(),
            read_only: true,
        }],
        stdin: Input::Null,
        stdout: Output::File(stdout),
        ..Invocation::default()
    }
}

/// Runs wasm tasks.
pub struct WasmExecutor {
    runtime: Mutex<Option<Runtime>>,
    /// Runs the in-shim guests (their invocations are futures).
    tokio: tokio::runtime::Runtime,
    v2_host: bool,
}

impl WasmExecutor {
    /// A new executor (the wasm engine is built on the first task).
    pub fn new() -> Result<WasmExecutor> {
        let tokio = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .max_blocking_threads(8)
            .thread_name("wasmlet-task")
            .enable_all()
            .build()
            .map_err(|e| Error::Other(format!("cannot start the task runtime: {e}")))?;
        let v2_host = wasmlet_sandbox::cgroup::Layout::detect().is_ok_and(|l| l.is_v2());
        Ok(WasmExecutor {
            runtime: Mutex::new(None),
            tokio,
            v2_host,
        })
    }

    /// Builds the engine and its instance pool on a thread of its own, so
    /// the first task does not wait for all of it (a failure is reported
    /// by that task's create, which tries again). Then runs one
    /// invocation of an empty WASI module the way a task's guest runs, so the
    /// first task's start does not pay for what every process does once
    /// (the task runtime's threads, the first fiber stack, WASI's set-up):
    /// about 0.1 ms of a hello task's start, measured in process.
    pub fn warm_up(self: &Arc<Self>) {
        let me = self.clone();
        let _ = std::thread::Builder::new()
            .name("wasmlet-warm-up".into())
            .spawn(move || {
                let Ok(runtime) = me.runtime() else { return };
                crate::timing("runtime built");
                if let Err(e) = me.warm_invocation(&runtime) {
                    log::debug!("warm-up invocation: {e}");
                }
                crate::timing("warm-up invocation");
            });
    }

    fn warm_invocation(&self, runtime: &Runtime) -> Result<()> {
        let function = runtime.load_bytes(WARM_UP_MODULE.as_bytes(), &LoadOptions::default())?;
        // Stdout a pipe, as a task's is a FIFO (the reactor's path, not the
        // inline one of /dev/null); its five bytes fit the pipe's buffer.
        let (reader, writer) =
            std::io::pipe().map_err(|e| Error::Other(format!("warm-up pipe: {e}")))?;
        let inv = warm_up_invocation(File::from(std::os::fd::OwnedFd::from(writer)));
        let outcome = self
            .tokio
            .block_on(
                self.tokio
                    .spawn(async move { function.invoke_async(inv).await }),
            )
            .map_err(|e| Error::Other(format!("warm-up task: {e}")))??;
        drop(reader);
        if !outcome.success() {
            return Err(Error::Other(format!("warm-up guest: {:?}", outcome.status)));
        }
        Ok(())
    }

    fn runtime(&self) -> Result<Runtime> {
        let mut slot = self.runtime.lock().expect("runtime lock");
        if let Some(rt) = &*slot {
            return Ok(rt.clone());
        }
        let mut config = RuntimeConfig::default();
        config.pool.instances = SHIM_POOL_INSTANCES;
        config.cache.dir = Some(
            std::env::var_os("WASMLET_CACHE_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| DEFAULT_SHIM_CACHE_DIR.into()),
        );
        let rt = Runtime::new(config)?;
        *slot = Some(rt.clone());
        Ok(rt)
    }
}

impl Executor for WasmExecutor {
    fn create(&self, req: &CreateSpec) -> Result<Box<dyn Instance>> {
        let spec = Spec::load(&req.bundle)?;
        if spec.process.as_ref().is_some_and(|p| p.terminal) {
            return Err(Error::InvalidArgument(
                "a terminal (tty) is not supported by wasmlet: run without -t".into(),
            ));
        }
        if spec.is_pod_sandbox() {
            return Ok(Box::new(Pause {
                on_exit: Mutex::new(None),
                v2_host: self.v2_host,
            }));
        }
        let rootfs = spec.rootfs(&req.bundle);
        crate::timing("spec read");
        let mounted = mount_rootfs(req, &rootfs)?;
        crate::timing("rootfs mounted");
        let stdio = Stdio::open(req)?;
        crate::timing("stdio open");
        let prepared = (|| {
            let entry = spec.entrypoint()?;
            let module = open_in_root(&rootfs, &entry.module)?;
            let resources = spec.resources();
            let mut limits = Limits::default();
            if let Some(m) = resources.memory_limit() {
                limits.max_memory = limits.max_memory.min(m);
            }
            let runtime = self.runtime()?;
            crate::timing("runtime ready");
            // Snapshotted once (and cached like compiled code), if asked.
            let snapshot = spec.wants_snapshot(&rootfs)?.then(|| SnapshotOptions {
                caps: runtime.config().compile.caps(),
                ..SnapshotOptions::default()
            });
            let opts = LoadOptions {
                limits: Some(limits.clone()),
                snapshot,
                ..LoadOptions::default()
            };
            let function = runtime.load_open_file(
                module,
                rootfs.join(entry.module.trim_start_matches('/')),
                &opts,
            )?;
            crate::timing("module loaded");
            let mut dirs = vec![Preopen {
                host: rootfs.clone(),
                guest: "/".into(),
                read_only: spec.root.as_ref().is_some_and(|r| r.readonly),
            }];
            for (host, guest, read_only) in spec.dir_mounts() {
                dirs.push(Preopen {
                    host,
                    guest,
                    read_only,
                });
            }
            let entry = match entry.export {
                None => Entry::Start,
                Some(name) => Entry::Export {
                    name,
                    params: Vec::new(),
                },
            };
            let mut env = spec.env();
            if !env.iter().any(|(k, _)| k == "PWD") {
                env.push(("PWD".into(), spec.cwd()));
            }
            let inv = Invocation {
                args: spec.args(),
                env,
                dirs,
                stdin: Input::Null,
                stdout: Output::Null,
                stderr: Output::Null,
                entry,
                limits: None,
                context: Default::default(),
                gate: None,
                probe: None,
            };
            Ok::<_, Error>((runtime, function, opts, inv, resources))
        })();
        let (runtime, function, opts, inv, resources) = match prepared {
            Ok(p) => p,
            Err(e) => {
                // Said where the container's log shows it, too.
                stdio.message(&format!("wasmlet: cannot create the task: {e}"));
                drop(mounted);
                return Err(e);
            }
        };
        log::info!(
            "task {}: {} ({:?})",
            req.id,
            if resources.has_limits() {
                "in a sandbox worker"
            } else {
                "in the shim"
            },
            resources
        );
        if resources.has_limits() {
            // The worker runs as the container's user (root as `nobody`):
            // it must be able to pass through the bundle directory to the
            // rootfs (containerd makes it 0700; its parents are 0711).
            use std::os::unix::fs::PermissionsExt;
            if let Err(e) =
                std::fs::set_permissions(&req.bundle, std::fs::Permissions::from_mode(0o711))
            {
                log::warn!("{}: {e}", req.bundle.display());
            }
            let cgroup_path = spec.cgroup_path()?;
            let oom_score_adj = spec.process.as_ref().and_then(|p| p.oom_score_adj);
            let user = spec
                .process
                .as_ref()
                .and_then(|p| p.user)
                .unwrap_or_default();
            let sandboxed = SandboxTask::create(
                &runtime,
                &function,
                &opts,
                inv,
                &resources,
                cgroup_path,
                oom_score_adj,
                worker_ids(user.uid, user.gid),
                stdio,
                mounted,
                self.v2_host,
            );
            return sandboxed.map(|t| Box::new(t) as Box<dyn Instance>);
        }
        let mut inv = inv;
        // A time budget makes a spinning guest yield every epoch tick, so
        // a kill (dropping its future) ends it promptly; this one never
        // runs out.
        let mut limits = opts.limits.clone().unwrap_or_default();
        limits.timeout = Some(Duration::MAX);
        inv.limits = Some(limits);
        stdio.attach(&mut inv)?;
        Ok(Box::new(InShim::create(
            function,
            inv,
            self.tokio.handle().clone(),
            stdio,
            mounted,
            self.v2_host,
        )))
    }
}

/// The task's standard streams, opened once at create.
struct Stdio {
    files: [Option<File>; 3],
    /// The write end of the guest's stdin pipe (see [`stdin_pipe`]):
    /// dropping it is the guest's EOF.
    stdin_writer: StdinWriter,
    /// Where the shim writes its own messages about the task (a trap, a
    /// limit): a second handle on its stderr.
    errors: Option<File>,
}

impl Stdio {
    fn open(req: &CreateSpec) -> Result<Stdio> {
        let (stdin, stdin_writer) = match open_stdio(&req.stdin, false)? {
            Some(fifo) => {
                let (reader, writer) = stdin_pipe(fifo)?;
                (Some(reader), writer)
            }
            None => (None, Arc::new(Mutex::new(None))),
        };
        let stdout = open_stdio(&req.stdout, true)?;
        let stderr = open_stdio(&req.stderr, true)?;
        let errors = stderr.as_ref().and_then(|f| f.try_clone().ok());
        Ok(Stdio {
            files: [stdin, stdout, stderr],
            stdin_writer,
            errors,
        })
    }

    /// Hands the streams to an in-shim invocation.
    fn attach(&self, inv: &mut Invocation) -> Result<()> {
        let dup = |f: &Option<File>| -> Result<Option<File>> {
            f.as_ref()
                .map(|f| f.try_clone())
                .transpose()
                .map_err(|e| Error::Other(format!("task stdio: {e}")))
        };
        inv.stdin = dup(&self.files[0])?.map_or(Input::Null, Input::File);
        inv.stdout = dup(&self.files[1])?.map_or(Output::Null, Output::File);
        inv.stderr = dup(&self.files[2])?.map_or(Output::Null, Output::File);
        Ok(())
    }

    /// The streams for a sandbox worker (`/dev/null` where there is none).
    fn worker_files(&self) -> Result<[File; 3]> {
        let one = |f: &Option<File>, write: bool| -> Result<File> {
            match f {
                Some(f) => f.try_clone(),
                None => std::fs::OpenOptions::new()
                    .read(!write)
                    .write(write)
                    .open("/dev/null"),
            }
            .map_err(|e| Error::Other(format!("task stdio: {e}")))
        };
        Ok([
            one(&self.files[0], false)?,
            one(&self.files[1], true)?,
            one(&self.files[2], true)?,
        ])
    }

    /// Writes one line of the shim's own on the task's stderr.
    fn message(&self, text: &str) {
        if let Some(mut f) = self.errors.as_ref() {
            let _ = writeln!(f, "{text}");
        }
    }
}

/// The write end of a task's stdin pipe, shared with its copier thread.
type StdinWriter = Arc<Mutex<Option<File>>>;

/// The guest's stdin: a pipe fed from containerd's stdin FIFO by a copier
/// thread. `ctr` keeps its end of the FIFO open after its own stdin ends
/// and sends `CloseIO` instead, so the guest's EOF has to come from the
/// shim: `close_stdin` drops the pipe's write end.
fn stdin_pipe(fifo: File) -> Result<(File, StdinWriter)> {
    use std::io::Read;
    use std::os::fd::FromRawFd;
    let mut fds = [0; 2];
    // SAFETY: pipe2(2) filling a two-element array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(Error::Other(format!(
            "task stdin pipe: {}",
            std::io::Error::last_os_error()
        )));
    }
    // SAFETY: pipe2 just returned these two fds; nothing else owns them.
    let (reader, writer) = unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) };
    let writer: StdinWriter = Arc::new(Mutex::new(Some(writer)));
    let shared = writer.clone();
    std::thread::Builder::new()
        .name("wasmlet-stdin".into())
        .spawn(move || {
            let mut fifo = fifo;
            let mut buf = vec![0u8; 64 << 10];
            loop {
                let n = match fifo.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                let mut w = shared.lock().expect("stdin lock");
                let written = w.as_mut().map(|out| out.write_all(&buf[..n]));
                if !matches!(written, Some(Ok(()))) {
                    break;
                }
            }
            // The FIFO's writers are gone: the guest's EOF too.
            drop(shared.lock().expect("stdin lock").take());
        })
        .map_err(|e| Error::Other(format!("cannot start the stdin thread: {e}")))?;
    Ok((reader, writer))
}

/// Opens one of containerd's stdio paths: a FIFO (opened read-write, so
/// the open never waits for the other end), a file (`file://` URI or a
/// plain path: appended to), or nothing.
fn open_stdio(path: &str, write: bool) -> Result<Option<File>> {
    if path.is_empty() {
        return Ok(None);
    }
    if let Some(scheme) = path.split_once("://").map(|(s, _)| s)
        && scheme != "file"
    {
        return Err(Error::Unimplemented(format!(
            "stdio {path:?}: only FIFOs and files are supported, not {scheme}://"
        )));
    }
    let path = path.strip_prefix("file://").unwrap_or(path);
    let fifo = std::fs::metadata(path).is_ok_and(|m| m.file_type().is_fifo());
    let mut opts = std::fs::OpenOptions::new();
    if fifo && !write {
        // Non-blocking, so the open does not wait for a writer; then
        // blocking again (the guest sees EOF once the writers are gone).
        let file = opts
            .read(true)
            .custom_flags(libc::O_CLOEXEC | libc::O_NONBLOCK)
            .open(path)
            .map_err(|e| Error::Other(format!("task stdio {path}: {e}")))?;
        use std::os::fd::AsRawFd;
        // SAFETY: fcntl(2) on an fd we own, clearing O_NONBLOCK.
        unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETFL, 0) };
        return Ok(Some(file));
    }
    if fifo {
        return open_fifo_for_writing(path).map(Some);
    } else if write {
        opts.append(true).create(true);
    } else {
        opts.read(true);
    }
    opts.custom_flags(libc::O_CLOEXEC)
        .open(path)
        .map(Some)
        .map_err(|e| Error::Other(format!("task stdio {path}: {e}")))
}

/// How long an output FIFO is waited on for its reader (containerd's
/// client opens it at the same time as it creates the task).
const FIFO_READER_WAIT: Duration = Duration::from_secs(10);

/// Opens an output FIFO once its reader is there, as runc's shim does: a
/// guest that wrote and ended before the reader came would leave its
/// output in a pipe that nobody holds any more (and containerd, seeing
/// the task gone, stops waiting for the FIFO). Without a reader after
/// [`FIFO_READER_WAIT`], opened read-write (which never waits).
fn open_fifo_for_writing(path: &str) -> Result<File> {
    use std::os::fd::AsRawFd;
    let deadline = std::time::Instant::now() + FIFO_READER_WAIT;
    loop {
        match std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_CLOEXEC | libc::O_NONBLOCK)
            .open(path)
        {
            Ok(file) => {
                // SAFETY: fcntl(2) on an fd we own, clearing O_NONBLOCK
                // (a sandbox worker inherits it and writes blocking).
                unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETFL, 0) };
                return Ok(file);
            }
            Err(e) if e.raw_os_error() == Some(libc::ENXIO) => {
                if std::time::Instant::now() >= deadline {
                    log::warn!("{path}: no reader after {FIFO_READER_WAIT:?}; output may be lost");
                    return std::fs::OpenOptions::new()
                        .read(true)
                        .write(true)
                        .custom_flags(libc::O_CLOEXEC)
                        .open(path)
                        .map_err(|e| Error::Other(format!("task stdio {path}: {e}")));
                }
                std::thread::sleep(Duration::from_micros(200));
            }
            Err(e) => return Err(Error::Other(format!("task stdio {path}: {e}"))),
        }
    }
}

/// The rootfs, mounted by the shim from containerd's snapshot mounts;
/// unmounted on drop.
struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let Ok(c) = std::ffi::CString::new(self.0.as_os_str().as_encoded_bytes()) else {
            return;
        };
        // SAFETY: umount2(2) with a NUL-terminated path that lives across the call.
        let rc = unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        if rc != 0 {
            log::warn!(
                "unmounting {}: {}",
                self.0.display(),
                std::io::Error::last_os_error()
            );
        }
    }
}

fn mount_rootfs(req: &CreateSpec, rootfs: &Path) -> Result<Option<Mounted>> {
    if req.rootfs.is_empty() {
        return Ok(None);
    }
    std::fs::create_dir_all(rootfs)
        .map_err(|e| Error::Other(format!("{}: {e}", rootfs.display())))?;
    let mut mounted = None;
    for m in &req.rootfs {
        mount_one(m, rootfs).map_err(|e| {
            Error::Other(format!(
                "mounting the rootfs ({} {}) at {}: {e}",
                m.kind,
                m.source,
                rootfs.display()
            ))
        })?;
        mounted = Some(Mounted(rootfs.to_path_buf()));
    }
    Ok(mounted)
}

/// One snapshot mount (`overlay` with its layer options, or a bind
/// mount), made with mount(2) directly. (The `containerd-shim` crate's
/// helper forks and waits through its child reaper, which this shim turns
/// off: sandbox workers are reaped by their supervisor.) Option strings
/// longer than a page (very many layers) are refused by the kernel.
fn mount_one(m: &RootfsMount, target: &Path) -> std::io::Result<()> {
    use std::ffi::CString;
    let mut flags: libc::c_ulong = 0;
    let mut data = Vec::new();
    for o in &m.options {
        match o.as_str() {
            "ro" => flags |= libc::MS_RDONLY,
            "rw" | "defaults" => {}
            "bind" => flags |= libc::MS_BIND,
            "rbind" => flags |= libc::MS_BIND | libc::MS_REC,
            "nosuid" => flags |= libc::MS_NOSUID,
            "nodev" => flags |= libc::MS_NODEV,
            "noexec" => flags |= libc::MS_NOEXEC,
            "noatime" => flags |= libc::MS_NOATIME,
            other => data.push(other),
        }
    }
    let cstr =
        |s: &str| CString::new(s).map_err(|_| std::io::Error::other("NUL in a mount option"));
    let source = cstr(&m.source)?;
    let target = CString::new(target.as_os_str().as_encoded_bytes())
        .map_err(|_| std::io::Error::other("NUL in the rootfs path"))?;
    let kind = cstr(if m.kind.is_empty() { "none" } else { &m.kind })?;
    let data = cstr(&data.join(","))?;
    // SAFETY: mount(2) with NUL-terminated strings that live across the call.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            kind.as_ptr(),
            flags,
            data.as_ptr().cast(),
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if flags & libc::MS_BIND != 0 && flags & libc::MS_RDONLY != 0 {
        // A bind mount only becomes read-only on a remount.
        // SAFETY: as above; remounting the mount just made.
        let rc = unsafe {
            libc::mount(
                std::ptr::null(),
                target.as_ptr(),
                std::ptr::null(),
                flags | libc::MS_REMOUNT,
                std::ptr::null(),
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// How an invocation's outcome becomes an exit status (with a line on the
/// task's stderr saying why, where it was not the guest's own exit).
fn exit_of(result: std::result::Result<Outcome, String>, stdio: &Stdio) -> Exit {
    let outcome = match result {
        Ok(o) => o,
        Err(e) => {
            stdio.message(&format!("wasmlet: {e}"));
            return Exit {
                status: EXIT_HOST_ERROR,
                oom: false,
                at: None,
            };
        }
    };
    match outcome.status {
        Status::Exited(code) => Exit {
            status: code as u32,
            oom: false,
            at: None,
        },
        Status::Returned(_) => Exit {
            status: 0,
            oom: false,
            at: None,
        },
        Status::Trapped(msg) => {
            stdio.message(&format!("wasmlet: guest trapped: {msg}"));
            Exit {
                status: EXIT_TRAP,
                oom: false,
                at: None,
            }
        }
        Status::LimitExceeded(limit) => {
            stdio.message(&format!("wasmlet: {limit}"));
            Exit {
                status: EXIT_LIMIT,
                oom: matches!(
                    limit,
                    LimitExceeded::Memory(_) | LimitExceeded::SandboxMemory(_)
                ),
                at: None,
            }
        }
        Status::SandboxFailed(msg) => {
            stdio.message(&format!("wasmlet: sandbox failed: {msg}"));
            Exit {
                status: EXIT_LIMIT,
                oom: false,
                at: None,
            }
        }
    }
}

/// The sandbox's deadline for a task's one call: none in practice (100
/// years; a container runs until it ends or is killed), where `serve`'s
/// and `run`'s sandboxes stop a call without a timeout after 5 minutes.
const TASK_MAX_CALL: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// The host ids a container's sandbox worker runs as: the OCI process's
/// user (`ctr run --user`, the image's `USER`, Kubernetes' `runAsUser`),
/// so containers of different users cannot reach each other's files where
/// their mounts meet; root (and the ids setresuid reads as "unchanged") as
/// `nobody`/`nogroup`, as the worker never holds host privileges.
fn worker_ids(uid: u32, gid: u32) -> (u32, u32) {
    let unprivileged = |id: u32| {
        if id == 0 || id == u32::MAX {
            wasmlet_sandbox::DEFAULT_SANDBOX_ID
        } else {
            id
        }
    };
    (unprivileged(uid), unprivileged(gid))
}

fn shim_pid() -> u32 {
    std::process::id()
}

/// A guest run as an instance inside the shim.
///
/// Its invocation is spawned at create, with a closed [`StartGate`]: it
/// makes its store, WASI context and instance then, on a runtime thread,
/// while containerd answers the create and ctr asks for the start; the
/// start opens the gate, so it runs only the guest's own code.
struct InShim {
    handle: tokio::runtime::Handle,
    gate: StartGate,
    run: Arc<Mutex<Run>>,
    /// Sends the signal that ends the guest; dropped (which ends it too)
    /// at cleanup, so a task deleted unstarted frees its instance.
    kill: Mutex<Option<tokio::sync::oneshot::Sender<u32>>>,
    /// Closed when the guest ends: containerd waits for EOF on the FIFOs
    /// before it deletes the task.
    stdio: SharedStdio,
    stdin_writer: StdinWriter,
    mounted: Mutex<Option<Mounted>>,
    v2_host: bool,
}

/// Where an in-shim task's run is, between its spawn (at create), its
/// start and its end, which may come in either order: an invocation that
/// fails to set up, or is killed, ends before its start.
enum Run {
    /// Waiting at its gate (or still making its instance).
    Created,
    /// Started: whom to tell of its exit.
    Started(OnExit),
    /// Ended before its start (and when): the exit is told at the start.
    Ended(TaskEnd, SystemTime),
    /// Its exit was told.
    Told,
}

/// How a task's guest ended: its invocation's result, or the signal that
/// stopped it.
type TaskEnd = std::result::Result<std::result::Result<Outcome, String>, u32>;

/// A task's stdio, dropped (closed) at its exit.
type SharedStdio = Arc<Mutex<Option<Stdio>>>;

/// Writes the exit's message, then closes the task's streams.
fn finish(result: std::result::Result<Outcome, String>, stdio: &SharedStdio) -> Exit {
    let taken = stdio.lock().expect("stdio lock").take();
    let none = Stdio {
        files: [None, None, None],
        stdin_writer: Arc::new(Mutex::new(None)),
        errors: None,
    };
    exit_of(result, taken.as_ref().unwrap_or(&none))
}

/// The exit of a task that ended so at `at`: its message written, its
/// streams closed.
fn exit_after(end: TaskEnd, stdio: &SharedStdio, at: SystemTime) -> Exit {
    let exit = match end {
        Ok(r) => finish(r, stdio),
        Err(signal) => {
            drop(stdio.lock().expect("stdio lock").take());
            Exit {
                status: 128 + signal,
                oom: false,
                at: None,
            }
        }
    };
    Exit {
        at: Some(at),
        ..exit
    }
}

impl InShim {
    /// Spawns `inv` (which holds the task's stdio) behind a closed gate.
    fn create(
        function: wasmlet_runtime::Function,
        mut inv: Invocation,
        handle: tokio::runtime::Handle,
        stdio: Stdio,
        mounted: Option<Mounted>,
        v2_host: bool,
    ) -> InShim {
        let gate = StartGate::new();
        inv.gate = Some(gate.clone());
        let (kill, killed) = tokio::sync::oneshot::channel::<u32>();
        let run = Arc::new(Mutex::new(Run::Created));
        let stdin_writer = stdio.stdin_writer.clone();
        let stdio: SharedStdio = Arc::new(Mutex::new(Some(stdio)));
        {
            let run = run.clone();
            let stdio = stdio.clone();
            handle.spawn(async move {
                let end = tokio::select! {
                    r = function.invoke_async(inv) => Ok(r.map_err(|e| e.to_string())),
                    // Killed, or the sender dropped at cleanup.
                    sig = killed => Err(sig.unwrap_or(libc::SIGKILL as u32)),
                };
                // The invocation (with its handles on the streams) is gone
                // here: its exit is dated now, before its streams close.
                let at = SystemTime::now();
                crate::timing("guest ended");
                let mut state = run.lock().expect("run lock");
                match std::mem::replace(&mut *state, Run::Told) {
                    Run::Started(on_exit) => {
                        drop(state);
                        on_exit(exit_after(end, &stdio, at));
                    }
                    Run::Created => *state = Run::Ended(end, at),
                    other => *state = other,
                }
            });
        }
        InShim {
            handle,
            gate,
            run,
            kill: Mutex::new(Some(kill)),
            stdio,
            stdin_writer,
            mounted: Mutex::new(mounted),
            v2_host,
        }
    }
}

impl Instance for InShim {
    fn pid(&self) -> u32 {
        shim_pid()
    }

    fn start(&self, on_exit: OnExit) -> Result<u32> {
        let mut state = self.run.lock().expect("run lock");
        match std::mem::replace(&mut *state, Run::Told) {
            Run::Created => {
                *state = Run::Started(on_exit);
                drop(state);
                self.gate.open();
                crate::timing("gate opened");
            }
            Run::Ended(end, at) => {
                // Told from a runtime thread: the exit waits for the
                // start's own event, which the caller sends after this.
                // Not dated before its start (containerd would show it
                // finished before it started).
                let at = at.max(SystemTime::now());
                drop(state);
                let stdio = self.stdio.clone();
                self.handle
                    .spawn(async move { on_exit(exit_after(end, &stdio, at)) });
            }
            other => {
                *state = other;
                return Err(Error::FailedPrecondition(
                    "the task was already started".into(),
                ));
            }
        }
        Ok(shim_pid())
    }

    fn kill(&self, signal: u32) -> Result<()> {
        if signal_action(signal)? == SignalAction::Terminate {
            // Not started yet: it ends now, whatever its task is doing.
            let mut state = self.run.lock().expect("run lock");
            if matches!(*state, Run::Created) {
                *state = Run::Ended(Err(signal), SystemTime::now());
            }
            drop(state);
            if let Some(tx) = self.kill.lock().expect("kill lock").take() {
                let _ = tx.send(signal);
            }
        }
        Ok(())
    }

    fn stats(&self) -> Result<Metrics> {
        Ok(stats::without_cgroup(self.v2_host))
    }

    fn update(&self, resources: &Resources) -> Result<()> {
        if resources.has_limits() {
            return Err(Error::FailedPrecondition(
                "this task runs inside the shim without a cgroup (it was created without limits); \
                 recreate it with limits to run it in a sandbox"
                    .into(),
            ));
        }
        Ok(())
    }

    fn close_stdin(&self) {
        drop(self.stdin_writer.lock().expect("stdin lock").take());
    }

    fn cleanup(&self) {
        self.close_stdin();
        // Ends a guest still running or waiting at its gate (a task
        // deleted unstarted), freeing its instance.
        drop(self.kill.lock().expect("kill lock").take());
        drop(self.stdio.lock().expect("stdio lock").take());
        drop(self.mounted.lock().expect("mount lock").take());
    }
}

/// A guest run in a jailed sandbox worker in the container's cgroup.
struct SandboxTask {
    /// Dropped when the guest ends (the sandbox holds the worker's stdio).
    sandbox: Arc<Mutex<Option<Arc<Sandbox>>>>,
    invocation: Mutex<Option<Invocation>>,
    /// The signal it was killed with (0: not killed).
    killed: Arc<AtomicU32>,
    pid: u32,
    stdio: SharedStdio,
    stdin_writer: StdinWriter,
    mounted: Mutex<Option<Mounted>>,
    v2_host: bool,
}

impl SandboxTask {
    #[allow(clippy::too_many_arguments)]
    fn create(
        runtime: &Runtime,
        function: &wasmlet_runtime::Function,
        opts: &LoadOptions,
        mut inv: Invocation,
        resources: &Resources,
        cgroup_path: Option<String>,
        oom_score_adj: Option<i32>,
        (uid, gid): (u32, u32),
        stdio: Stdio,
        mounted: Option<Mounted>,
        v2_host: bool,
    ) -> Result<SandboxTask> {
        let memory = resources.memory_limit();
        if let Some(m) = memory
            && m < wasmlet_sandbox::MIN_MEMORY
        {
            return Err(Error::InvalidArgument(format!(
                "memory limit {m} is below the {} bytes a wasm task's worker needs",
                wasmlet_sandbox::MIN_MEMORY
            )));
        }
        let host_cpus = wasmlet_sandbox::host_cpus() as f64;
        let config = SandboxConfig {
            memory,
            cpus: resources.cpus().map(|c| c.clamp(0.01, host_cpus)),
            pids: Some(
                resources
                    .pids_limit()
                    .map_or(wasmlet_sandbox::DEFAULT_SANDBOX_PIDS, |p| {
                        p.max(WORKER_TASKS)
                    }),
            ),
            cgroup_path,
            dirs: inv.dirs.iter().map(DirGrant::from).collect(),
            uid,
            gid,
            // A task runs until it ends or is killed, as in the shim itself.
            max_call: TASK_MAX_CALL,
            ..SandboxConfig::default()
        };
        let mut worker = WorkerCommand::current_exe()?;
        worker.stdio = Some(Arc::new(stdio.worker_files()?));
        let sandbox = Sandbox::start(runtime.config(), &config, worker)?;
        if function.artifact_path().is_some() {
            sandbox.load_function(function, opts)?;
        } else {
            return Err(Error::Other(
                "the module has no compiled artifact to hand to the sandbox (is the cache directory writable?)"
                    .into(),
            ));
        }
        if let Some(shares) = resources.cpu_shares() {
            write_shares(&sandbox, shares, v2_host);
        }
        let pid = sandbox.worker_pid().unwrap_or_else(shim_pid);
        if let Some(adj) = oom_score_adj {
            // Where allowed; a host that refuses it never fails the task.
            if let Err(e) = std::fs::write(format!("/proc/{pid}/oom_score_adj"), adj.to_string()) {
                log::debug!("oom_score_adj {adj} for {pid}: {e}");
            }
        }
        inv.stdin = Input::Inherit;
        inv.stdout = Output::Inherit;
        inv.stderr = Output::Inherit;
        Ok(SandboxTask {
            sandbox: Arc::new(Mutex::new(Some(Arc::new(sandbox)))),
            invocation: Mutex::new(Some(inv)),
            killed: Arc::new(AtomicU32::new(0)),
            pid,
            stdin_writer: stdio.stdin_writer.clone(),
            stdio: Arc::new(Mutex::new(Some(stdio))),
            mounted: Mutex::new(mounted),
            v2_host,
        })
    }
}

/// CPU shares as cgroup v1 `cpu.shares` or v2 `cpu.weight` (the mapping
/// runc uses: 2..262144 onto 1..10000).
fn write_shares(sandbox: &Sandbox, shares: u64, v2_host: bool) {
    let Some(dir) = sandbox.cgroup_dir("cpu") else {
        return;
    };
    let (file, value) = if v2_host {
        let s = shares.clamp(2, 262_144);
        ("cpu.weight", 1 + ((s - 2) * 9999) / 262_142)
    } else {
        ("cpu.shares", shares)
    };
    if let Err(e) = std::fs::write(dir.join(file), value.to_string()) {
        log::warn!("{}: {e}", dir.join(file).display());
    }
}

impl SandboxTask {
    fn sandbox(&self) -> Option<Arc<Sandbox>> {
        self.sandbox.lock().expect("sandbox lock").clone()
    }
}

impl Instance for SandboxTask {
    fn pid(&self) -> u32 {
        self.pid
    }

    fn start(&self, on_exit: OnExit) -> Result<u32> {
        let inv = self
            .invocation
            .lock()
            .expect("invocation lock")
            .take()
            .ok_or_else(|| Error::FailedPrecondition("the task was already started".into()))?;
        let sandbox = self
            .sandbox()
            .ok_or_else(|| Error::FailedPrecondition("the task has ended".into()))?;
        let slot = self.sandbox.clone();
        let killed = self.killed.clone();
        let stdio = self.stdio.clone();
        std::thread::Builder::new()
            .name("wasmlet-sandbox-task".into())
            .spawn(move || {
                let result = sandbox.invoke(inv);
                // One invocation per task: its worker (or a replacement the
                // sandbox started after a death) goes now, with the cgroup,
                // and the sandbox with its handles on the task's streams.
                sandbox.shutdown();
                drop(slot.lock().expect("sandbox lock").take());
                drop(sandbox);
                let signal = killed.load(Ordering::Acquire);
                let exit = if signal != 0 {
                    drop(stdio.lock().expect("stdio lock").take());
                    Exit {
                        status: 128 + signal,
                        oom: false,
                        at: None,
                    }
                } else {
                    finish(result.map_err(|e| e.to_string()), &stdio)
                };
                on_exit(exit);
            })
            .map_err(|e| Error::Other(format!("cannot start a task thread: {e}")))?;
        Ok(self.pid)
    }

    fn kill(&self, signal: u32) -> Result<()> {
        if signal_action(signal)? == SignalAction::Terminate {
            let _ = self
                .killed
                .compare_exchange(0, signal, Ordering::AcqRel, Ordering::Acquire);
            // Kills the worker (and everything in its cgroup).
            if let Some(sb) = self.sandbox() {
                sb.shutdown();
            }
        }
        Ok(())
    }

    fn stats(&self) -> Result<Metrics> {
        let sandbox = self
            .sandbox()
            .ok_or_else(|| Error::FailedPrecondition("the task has ended".into()))?;
        if self.v2_host {
            let dir = sandbox
                .cgroup_dir("memory")
                .ok_or_else(|| Error::FailedPrecondition("the task has no cgroup".into()))?;
            Ok(stats::v2_metrics(&dir))
        } else {
            if sandbox.cgroup_dir("memory").is_none() {
                return Err(Error::FailedPrecondition("the task has no cgroup".into()));
            }
            Ok(stats::v1_metrics(|c| {
                sandbox.cgroup_dir(c).unwrap_or_default()
            }))
        }
    }

    fn update(&self, resources: &Resources) -> Result<()> {
        let sb = self
            .sandbox()
            .ok_or_else(|| Error::FailedPrecondition("the task has ended".into()))?;
        let sb = &*sb;
        let write = |controller: &str, file: &str, value: String| -> Result<()> {
            let dir = sb
                .cgroup_dir(controller)
                .ok_or_else(|| Error::FailedPrecondition("the task has no cgroup".into()))?;
            std::fs::write(dir.join(file), &value)
                .map_err(|e| Error::Other(format!("{}: {e}", dir.join(file).display())))
        };
        if let Some(m) = resources.memory_limit() {
            if self.v2_host {
                write("memory", "memory.max", m.to_string())?;
            } else {
                write("memory", "memory.limit_in_bytes", m.to_string())?;
            }
        }
        if let Some(cpus) = resources.cpus() {
            let period = wasmlet_oci::bundle::DEFAULT_CPU_PERIOD_US;
            let quota = (cpus * period as f64).round() as u64;
            if self.v2_host {
                write("cpu", "cpu.max", format!("{quota} {period}"))?;
            } else {
                write("cpu", "cpu.cfs_period_us", period.to_string())?;
                write("cpu", "cpu.cfs_quota_us", quota.to_string())?;
            }
        }
        if let Some(shares) = resources.cpu_shares() {
            write_shares(sb, shares, self.v2_host);
        }
        if let Some(p) = resources.pids_limit() {
            write("pids", "pids.max", p.max(WORKER_TASKS).to_string())?;
        }
        Ok(())
    }

    fn close_stdin(&self) {
        drop(self.stdin_writer.lock().expect("stdin lock").take());
    }

    fn cleanup(&self) {
        self.close_stdin();
        if let Some(sb) = self.sandbox.lock().expect("sandbox lock").take() {
            sb.shutdown();
        }
        drop(self.stdio.lock().expect("stdio lock").take());
        drop(self.mounted.lock().expect("mount lock").take());
    }
}

/// A pod's sandbox container: runs nothing, ends when killed.
struct Pause {
    on_exit: Mutex<Option<OnExit>>,
    v2_host: bool,
}

impl Instance for Pause {
    fn pid(&self) -> u32 {
        shim_pid()
    }

    fn start(&self, on_exit: OnExit) -> Result<u32> {
        *self.on_exit.lock().expect("pause lock") = Some(on_exit);
        Ok(shim_pid())
    }

    fn kill(&self, signal: u32) -> Result<()> {
        if signal_action(signal)? == SignalAction::Terminate
            && let Some(on_exit) = self.on_exit.lock().expect("pause lock").take()
        {
            // From another thread, never inside the request (see `OnExit`).
            std::thread::spawn(move || {
                on_exit(Exit {
                    status: 128 + signal,
                    oom: false,
                    at: None,
                })
            });
        }
        Ok(())
    }

    fn stats(&self) -> Result<Metrics> {
        Ok(stats::without_cgroup(self.v2_host))
    }

    fn update(&self, _: &Resources) -> Result<()> {
        Ok(())
    }

    fn close_stdin(&self) {}

    fn cleanup(&self) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::executor::{CreateSpec, Executor};
    use std::sync::mpsc;

    /// Writes "hello\n" to stdout.
    const HELLO: &str = r#"(module
      (import "wasi_snapshot_preview1" "fd_write" (func $w (param i32 i32 i32 i32) (result i32)))
      (memory (export "memory") 1)
      (data (i32.const 16) "hello\n")
      (func (export "_start")
        (i32.store (i32.const 0) (i32.const 16))
        (i32.store (i32.const 4) (i32.const 6))
        (drop (call $w (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))"#;

    /// Traps in its start function, while it is instantiated.
    const TRAPS_WHEN_MADE: &str = r#"(module
      (memory (export "memory") 1)
      (func $init unreachable)
      (start $init)
      (func (export "_start")))"#;

    /// An executor whose runtime has `slots` pool slots and a cache in `dir`.
    fn executor(dir: &Path, slots: u32) -> WasmExecutor {
        let e = WasmExecutor::new().unwrap();
        let mut config = RuntimeConfig::default();
        config.pool.instances = slots;
        config.cache.dir = Some(dir.join("cache"));
        *e.runtime.lock().unwrap() = Some(Runtime::new(config).unwrap());
        e
    }

    /// A bundle in `dir/name` running `wat`, its stdout and stderr files.
    fn bundle(dir: &Path, name: &str, wat: &str) -> CreateSpec {
        let b = dir.join(name);
        std::fs::create_dir_all(b.join("rootfs")).unwrap();
        std::fs::write(b.join("rootfs/m.wasm"), wat::parse_str(wat).unwrap()).unwrap();
        std::fs::write(
            b.join("config.json"),
            r#"{"ociVersion":"1.0.2","process":{"args":["/m.wasm"],"cwd":"/","env":[],"user":{"uid":0,"gid":0}},"root":{"path":"rootfs"}}"#,
        )
        .unwrap();
        for f in ["out", "err"] {
            std::fs::write(b.join(f), "").unwrap();
        }
        CreateSpec {
            id: name.into(),
            stdout: b.join("out").display().to_string(),
            stderr: b.join("err").display().to_string(),
            bundle: b,
            ..CreateSpec::default()
        }
    }

    fn read(spec: &CreateSpec, stream: &str) -> String {
        std::fs::read_to_string(spec.bundle.join(stream)).unwrap()
    }

    /// Starts `task`; its exit, within 10 s.
    fn start_and_wait(task: &dyn Instance) -> Exit {
        let (tx, rx) = mpsc::channel();
        task.start(Box::new(move |exit| tx.send(exit).unwrap()))
            .unwrap();
        rx.recv_timeout(Duration::from_secs(10))
            .expect("the task did not end")
    }

    #[test]
    fn an_in_shim_task_runs_only_once_started_and_one_deleted_unstarted_frees_its_slot() {
        let dir = tempfile::tempdir().unwrap();
        // One slot: the second task runs only if the first one's instance,
        // made at its create, was freed by its cleanup.
        let e = executor(dir.path(), 1);
        let unstarted = bundle(dir.path(), "unstarted", HELLO);
        let unstarted_task = e.create(&unstarted).unwrap();
        std::thread::sleep(Duration::from_millis(200));
        // Its cleanup frees the instance (the task itself is kept, as the
        // state machine keeps a task until containerd deletes it).
        unstarted_task.cleanup();
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(
            read(&unstarted, "out"),
            "",
            "a task that was never started ran"
        );

        let started = bundle(dir.path(), "started", HELLO);
        let task = e.create(&started).unwrap();
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(read(&started, "out"), "", "it ran at its create");
        let exit = start_and_wait(&*task);
        assert_eq!(exit.status, 0);
        assert_eq!(read(&started, "out"), "hello\n");
        assert!(task.start(Box::new(|_| {})).is_err(), "started twice");
        task.cleanup();
        drop(unstarted_task);
    }

    #[test]
    fn a_task_started_at_once_after_its_create_runs_whole() {
        // Its start may come while its instance is still being made.
        let dir = tempfile::tempdir().unwrap();
        let e = executor(dir.path(), 4);
        for i in 0..8 {
            let spec = bundle(dir.path(), &format!("quick{i}"), HELLO);
            let task = e.create(&spec).unwrap();
            let exit = start_and_wait(&*task);
            assert_eq!(exit.status, 0);
            assert!(
                exit.at.is_some(),
                "an in-shim exit is dated when the guest ended"
            );
            assert_eq!(read(&spec, "out"), "hello\n");
            task.cleanup();
        }
    }

    struct NoEvents;
    impl crate::state::EventSink for NoEvents {
        fn publish(&self, _: crate::state::Event) {}
    }

    #[test]
    fn a_created_task_killed_through_the_state_machine_frees_its_instance() {
        let dir = tempfile::tempdir().unwrap();
        // One slot: the next task runs only if the killed one's instance
        // (made at its create, and kept until containerd deletes the
        // task) was let go at the kill.
        let tasks = crate::state::Tasks::new(Arc::new(executor(dir.path(), 1)), Arc::new(NoEvents));
        let killed = bundle(dir.path(), "killed", HELLO);
        tasks.create(killed.clone()).unwrap();
        std::thread::sleep(Duration::from_millis(100));
        tasks.kill("killed", libc::SIGKILL as u32, false).unwrap();
        assert_eq!(tasks.wait("killed").unwrap().0, 137);
        let next = bundle(dir.path(), "next", HELLO);
        tasks.create(next.clone()).unwrap();
        tasks.start("next").unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || tx.send(tasks.wait("next").map(|w| w.0)));
        let waited = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the killed task kept its slot");
        assert_eq!(waited.unwrap(), 0);
        assert_eq!(read(&next, "out"), "hello\n");
        assert_eq!(read(&killed, "out"), "");
    }

    #[test]
    fn a_guest_that_fails_before_its_start_reports_it_at_its_start() {
        let dir = tempfile::tempdir().unwrap();
        let e = executor(dir.path(), 2);
        let spec = bundle(dir.path(), "traps", TRAPS_WHEN_MADE);
        let task = e.create(&spec).unwrap();
        // Its instantiation trapped at the create; nothing is said until
        // it is started.
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(read(&spec, "err"), "");
        let started = SystemTime::now();
        let exit = start_and_wait(&*task);
        assert_eq!(exit.status, EXIT_TRAP);
        assert!(exit.at.unwrap() >= started, "dated before its start");
        assert!(
            read(&spec, "err").contains("trapped"),
            "{}",
            read(&spec, "err")
        );
        task.cleanup();
    }

    #[test]
    fn a_created_task_killed_before_its_start_never_runs() {
        let dir = tempfile::tempdir().unwrap();
        let e = executor(dir.path(), 2);
        let spec = bundle(dir.path(), "killed", HELLO);
        let task = e.create(&spec).unwrap();
        task.kill(libc::SIGKILL as u32).unwrap();
        let exit = start_and_wait(&*task);
        assert_eq!(exit.status, 128 + libc::SIGKILL as u32);
        assert_eq!(read(&spec, "out"), "");
        task.cleanup();
    }
}
