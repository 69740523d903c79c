//! Bounded compiles: the CLI compiles wasm in a child process (this binary,
//! `wasmlet compile-worker`) under a memory limit and a time budget, so a
//! module built to make Cranelift take minutes and gigabytes costs at most
//! the budget (`compile.timeout`, `compile.max_memory`; `--compile-timeout`,
//! `--compile-memory`), and exceeding it is a limit error (exit 137).
//!
//! ```text
//!  parent (compile.in_process = false)       child: wasmlet compile-worker
//!  load_file: cached? mapped, done.
//!  Error::NotCompiled (caps checked) ──▶     RLIMIT_DATA = compile.max_memory
//!    spawn (PDEATHSIG), wait ≤ timeout,      Runtime::new(same config, in-process)
//!    else SIGKILL                            precompile: fills the cache (if on)
//!  ◀─ exit 0 / one-line error on stderr ─    and writes the artifact file
//!  load_file(artifact, allow_precompiled): mapped, checked against the engine
//! ```
//!
//! The artifact goes to a private temporary file (0600, removed on signals);
//! the next run of the same module is a cache hit and starts no child.

use super::signals::{ChildGuard, TempFileGuard};
use anyhow::{Context, anyhow, bail};
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use tempfile::NamedTempFile;
use wasmlet_runtime::{Error, Function, LimitExceeded, LoadOptions, Runtime, RuntimeConfig};

/// The hidden subcommand the child runs.
pub const WORKER_SUBCOMMAND: &str = "compile-worker";

/// A compiled artifact in a private temporary file, removed when dropped
/// (or when a signal ends the process).
pub struct Artifact {
    file: NamedTempFile,
    _guard: TempFileGuard,
}

impl Artifact {
    /// A new, empty private temporary file.
    pub fn new() -> anyhow::Result<Artifact> {
        // Ones a SIGKILLed wasmlet left there (no handler can remove them).
        super::output::remove_stale_temp_files(&std::env::temp_dir());
        let file = tempfile::Builder::new()
            .prefix(super::output::TEMP_PREFIX)
            .tempfile()
            .context("cannot create a temporary file")?;
        Ok(Artifact {
            _guard: TempFileGuard::new(file.path()),
            file,
        })
    }

    pub fn path(&self) -> &Path {
        self.file.path()
    }
}

/// A function loaded through [`load`], with the artifact file it maps when
/// it was compiled just now (kept, so that `Function::artifact_path` names
/// a file that exists while the function does).
pub struct Loaded {
    pub function: Function,
    _artifact: Option<Artifact>,
}

/// Loads `module` with `runtime`, whose config must have
/// `compile.in_process = false`: cached or precompiled code is mapped as
/// is; a module that needs compiling is compiled in a child under the
/// budget, and the child's artifact is mapped.
pub fn load(runtime: &Runtime, module: &Path, opts: &LoadOptions) -> anyhow::Result<Loaded> {
    // A cache lookup's warnings (an unusable entry) are held back: when the
    // module needs compiling, the child looks the same entry up and says
    // the same, and each should be said once.
    super::output::hold_log();
    let first = runtime.load_file(module, opts);
    super::output::release_log(!matches!(first, Err(Error::NotCompiled)));
    match first {
        Err(Error::NotCompiled) => {}
        r => {
            return r
                .map(|function| Loaded {
                    function,
                    _artifact: None,
                })
                .map_err(|e| super::load_error(e, module));
        }
    }
    let artifact = compile(runtime.config(), module)
        .with_context(|| format!("cannot load {}", module.display()))?;
    let precompiled = LoadOptions {
        allow_precompiled: true,
        ..opts.clone()
    };
    let function = runtime
        .load_file(artifact.path(), &precompiled)
        .map_err(|e| super::load_error(e, module))?;
    Ok(Loaded {
        function,
        _artifact: Some(artifact),
    })
}

/// Compiles `module` in a child process under `config.compile`'s budget;
/// returns the artifact (a `.cwasm`) in a private temporary file.
pub fn compile(config: &RuntimeConfig, module: &Path) -> anyhow::Result<Artifact> {
    let artifact = Artifact::new()?;
    run_child(config, module, artifact.path())?;
    Ok(artifact)
}

/// Compiles `module` in a child process and returns the artifact's bytes.
pub fn precompile(config: &RuntimeConfig, module: &Path) -> anyhow::Result<Vec<u8>> {
    let artifact = compile(config, module)?;
    let mut bytes = Vec::new();
    artifact
        .file
        .as_file()
        .read_to_end(&mut bytes)
        .context("cannot read the compiled module back")?;
    Ok(bytes)
}

fn run_child(config: &RuntimeConfig, module: &Path, out: &Path) -> anyhow::Result<()> {
    let mut cmd = own_command()?;
    cmd.arg(WORKER_SUBCOMMAND)
        .arg(serde_json::to_string(config)?)
        .arg(module)
        .arg(out);
    run_budgeted(
        cmd,
        "compiler",
        config.compile.timeout,
        LimitExceeded::CompileTime(config.compile.timeout),
        LimitExceeded::CompileMemory(config.compile.max_memory),
    )?;
    if std::fs::metadata(out).map(|m| m.len()).unwrap_or(0) == 0 {
        bail!("the compiler process wrote no output");
    }
    Ok(())
}

/// A limit a worker process reported (it exited 137 with this message):
/// the command exits 137 too.
#[derive(Debug)]
pub struct ChildLimit(pub String);

impl std::fmt::Display for ChildLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ChildLimit {}

/// This binary, to be started as one of its hidden worker subcommands.
pub fn own_command() -> anyhow::Result<Command> {
    let exe = std::env::current_exe().context("cannot find own executable")?;
    Ok(Command::new(exe))
}

/// Runs `cmd` (a worker that caps its own memory) as a child that dies with
/// this process, waits at most `timeout` for it (then kills it and fails
/// with `over_time`), and turns its failure into one error: `over_memory`
/// when it died of a failed allocation, else its last stderr line. Its
/// other stderr lines (warnings) are passed on.
pub fn run_budgeted(
    mut cmd: Command,
    what: &str,
    timeout: std::time::Duration,
    over_time: LimitExceeded,
    over_memory: LimitExceeded,
) -> anyhow::Result<()> {
    // (Both are limits: the command exits 137 when either is exceeded.)
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    // SAFETY: the closure runs in the forked child before exec and only
    // calls prctl, which is async-signal-safe and allocates nothing.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot start the {what} process"))?;
    let guard = ChildGuard::new(child.id());
    let pid = child.id() as libc::pid_t;

    let mut stderr = child.stderr.take().expect("piped");
    let (exited_tx, exited_rx) = mpsc::channel();
    std::thread::scope(|s| -> anyhow::Result<()> {
        let messages = s.spawn(move || {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text);
            text
        });
        s.spawn(move || {
            let _ = exited_tx.send(wait_without_reaping(pid));
        });
        let timed_out = match exited_rx.recv_timeout(timeout) {
            Ok(_) => false,
            Err(_) => {
                // SAFETY: kill takes plain integers; the child has not been
                // reaped (the waiter uses WNOWAIT), so the pid is still ours.
                unsafe { libc::kill(pid, libc::SIGKILL) };
                true
            }
        };
        // The pid stays registered until it no longer needs killing.
        drop(guard);
        let status = child
            .wait()
            .with_context(|| format!("cannot wait for the {what} process"))?;
        let messages = messages.join().unwrap_or_default();
        if timed_out {
            return Err(over_time.into());
        }
        let out_of_memory = [
            "memory allocation of",
            "Cannot allocate memory",
            "out of memory",
        ]
        .iter()
        .any(|m| messages.contains(m));
        if !status.success() && out_of_memory {
            return Err(over_memory.into());
        }
        // The child's own warnings (an unwritable cache) are the user's too.
        let mut lines: Vec<&str> = messages.lines().filter(|l| !l.trim().is_empty()).collect();
        let last = if status.success() { None } else { lines.pop() };
        for line in lines {
            super::output::eprintln(line);
        }
        if status.success() {
            return Ok(());
        }
        match (status.code(), last) {
            // The child stopped at one of its own limits (exit 137, as the
            // CLI reports limits): so does this command.
            (Some(code), Some(line)) if code == i32::from(super::EXIT_LIMIT) => {
                Err(ChildLimit(line.strip_prefix("error: ").unwrap_or(line).to_string()).into())
            }
            (Some(_), Some(line)) => {
                Err(anyhow!("{}", line.strip_prefix("error: ").unwrap_or(line)))
            }
            _ => bail!(
                "the {what} process failed ({status}){}",
                last.map(|l| format!(": {l}")).unwrap_or_default()
            ),
        }
    })
}

/// Blocks until child `pid` has ended, leaving it to be reaped (so its pid
/// cannot be reused while it may still be killed).
fn wait_without_reaping(pid: libc::pid_t) -> std::io::Result<()> {
    loop {
        // SAFETY: an all-zero siginfo_t is a valid value for waitid to fill.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: waitid writes only to `info`, which lives on this stack.
        let r = unsafe {
            libc::waitid(
                libc::P_PID,
                pid as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOWAIT,
            )
        };
        if r == 0 {
            return Ok(());
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// The child: `wasmlet compile-worker CONFIG_JSON MODULE OUT`.
pub fn worker_main(config_json: &str, module: &Path, out: &Path) -> anyhow::Result<()> {
    let mut config: RuntimeConfig =
        serde_json::from_str(config_json).context("bad compile-worker configuration")?;
    wasmlet_runtime::prescan::limit_own_memory(config.compile.max_memory)?;
    config.compile.in_process = true;
    // Compiling instantiates nothing: a one-slot pool keeps the engine's
    // reserved table slots (writable memory, counted by RLIMIT_DATA) out
    // of the compile budget. Pool sizes are not part of what an artifact
    // is checked against.
    config.pool.instances = 1;
    let bytes = super::read_module(module, config.max_module_size)?;
    let runtime = Runtime::new(config)?;
    let artifact = runtime.precompile(&bytes)?;
    std::fs::write(out, artifact).with_context(|| format!("cannot write {}", out.display()))?;
    Ok(())
}
