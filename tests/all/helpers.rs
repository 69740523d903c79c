//! Shared helpers: building guests, running the CLI, making runtimes.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};
use wasmlet_runtime::{Function, Invocation, LoadOptions, Outcome, Runtime, RuntimeConfig};

/// Scratch space shared by the tests of this run.
pub fn scratch() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("wasmlet-tests")
}

/// A fresh, empty temporary directory.
pub fn tempdir() -> tempfile::TempDir {
    std::fs::create_dir_all(scratch()).unwrap();
    tempfile::tempdir_in(scratch()).unwrap()
}

/// Builds `tests/guests/<name>.c` into a wasm32-wasi command module (once
/// per test run) and returns its path.
pub fn c_guest(name: &str) -> PathBuf {
    build_c(name, &[])
}

/// Builds `tests/guests/<name>.c` as a reactor (no `_start`; exports called
/// after `_initialize`).
pub fn c_reactor(name: &str) -> PathBuf {
    build_c(name, &["-mexec-model=reactor"])
}

/// Builds `tests/guests/<name>.c` as a static native program (for runc,
/// the containerd benchmarks' and CRI tests' reference runtime).
pub fn native_program(name: &str) -> PathBuf {
    static BUILT: OnceLock<Mutex<HashMap<String, PathBuf>>> = OnceLock::new();
    let mut built = BUILT.get_or_init(Default::default).lock().unwrap();
    if let Some(p) = built.get(name) {
        return p.clone();
    }
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/guests")
        .join(format!("{name}.c"));
    let dir = scratch().join("native");
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join(name);
    let result = Command::new("cc")
        .args(["-static", "-O2", "-o"])
        .arg(&out)
        .arg(&src)
        .output()
        .unwrap_or_else(|e| panic!("cannot run cc ({e}): install gcc and libc6-dev"));
    assert!(
        result.status.success(),
        "building {} (static): {}",
        src.display(),
        String::from_utf8_lossy(&result.stderr)
    );
    built.insert(name.to_string(), out.clone());
    out
}

/// Builds `examples/<rel>.c` (e.g. `serve/hello`) into a command module.
pub fn c_example(rel: &str) -> PathBuf {
    build_c_in("examples", rel, &[])
}

fn build_c(name: &str, flags: &[&str]) -> PathBuf {
    build_c_in("tests/guests", name, flags)
}

fn build_c_in(root: &str, name: &str, flags: &[&str]) -> PathBuf {
    static BUILT: OnceLock<Mutex<HashMap<String, PathBuf>>> = OnceLock::new();
    let mut built = BUILT.get_or_init(Default::default).lock().unwrap();
    let key = format!("{root}/{name}");
    if let Some(p) = built.get(&key) {
        return p.clone();
    }
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(root)
        .join(format!("{name}.c"));
    let dir = scratch().join("guests").join(root);
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join(format!("{}.wasm", name.replace('/', "-")));
    let clang = std::env::var("WASI_CC").unwrap_or_else(|_| "clang".into());
    let result = Command::new(&clang)
        .args(["--target=wasm32-wasi", "-O2"])
        .args(flags)
        .arg("-o")
        .arg(&out)
        .arg(&src)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run {clang} to build test guests ({e}); install clang lld wasi-libc libclang-rt-dev-wasm32 (scripts/setup does)")
        });
    assert!(
        result.status.success(),
        "building {}: {}",
        src.display(),
        String::from_utf8_lossy(&result.stderr)
    );
    built.insert(key, out.clone());
    out
}

/// Writes WAT text to a file in `dir`.
pub fn wat_file(dir: &Path, name: &str, wat: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, wat).unwrap();
    p
}

/// The `wasmlet` binary, with a cache shared by the tests of this run.
pub fn wasmlet() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_wasmlet"));
    c.env("WASMLET_CACHE_DIR", scratch().join("cache"))
        .env_remove("WASMLET_LOG")
        .stdin(std::process::Stdio::null());
    c
}

/// Runs `f` on a thread; fails the test (instead of hanging it) if it has
/// not finished within `limit`.
pub fn within<T: Send + 'static>(limit: Duration, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(f()).unwrap());
    rx.recv_timeout(limit)
        .unwrap_or_else(|_| panic!("still running after {limit:?}"))
}

/// Waits for `child`, killing it and failing the test if it outlives `limit`;
/// gives its exit code, how long it ran, and its stderr.
pub fn wait_at_most(mut child: Child, limit: Duration) -> (i32, Duration, String) {
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > limit {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!("wasmlet still running after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        e.read_to_string(&mut stderr).unwrap();
    }
    (status.code().expect("exited"), start.elapsed(), stderr)
}

/// Result of a CLI run, with decoded streams.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

pub fn run_cli(cmd: &mut Command) -> Run {
    let Output {
        status,
        stdout,
        stderr,
    } = cmd.output().expect("wasmlet runs");
    Run {
        code: status.code().expect("exited, not killed"),
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    }
}

impl Run {
    /// The usage record `--usage` printed: the one JSON line on stderr.
    pub fn usage(&self) -> serde_json::Value {
        let line = self
            .stderr
            .lines()
            .find(|l| l.starts_with('{'))
            .unwrap_or_else(|| panic!("no usage line in {:?}", self.stderr));
        serde_json::from_str(line).unwrap()
    }

    /// Asserts stderr is exactly one line (plus optional usage JSON) that
    /// contains `needle`, and no panic or backtrace.
    pub fn assert_one_line_error(&self, needle: &str) {
        assert!(
            !self.stderr.contains("panicked") && !self.stderr.contains("backtrace"),
            "{}",
            self.stderr
        );
        let lines: Vec<_> = self
            .stderr
            .lines()
            .filter(|l| !l.starts_with('{'))
            .collect();
        assert_eq!(lines.len(), 1, "expected one line, got: {:?}", self.stderr);
        assert!(
            lines[0].contains(needle),
            "{:?} does not mention {needle:?}",
            lines[0]
        );
    }
}

/// A runtime for library tests: a small pool and no disk cache.
pub fn runtime() -> Runtime {
    runtime_with(|_| {})
}

/// The runtimes executor tests run against when they can: a plain one, and
/// one that pre-initializes modules on load (the same behaviour must result).
pub fn runtimes() -> [(&'static str, Runtime); 2] {
    [
        ("plain", runtime()),
        ("snapshot", runtime_with(|c| c.snapshot = true)),
    ]
}

pub fn runtime_with(f: impl FnOnce(&mut RuntimeConfig)) -> Runtime {
    let mut config = RuntimeConfig::default();
    config.pool.instances = 32;
    config.cache.enabled = false;
    f(&mut config);
    Runtime::new(config).unwrap()
}

pub fn load_wat(rt: &Runtime, wat: &str) -> Function {
    rt.load_bytes(wat.as_bytes(), &LoadOptions::default())
        .unwrap()
}

/// Invokes an export with arguments and default (captured) stdio.
pub fn call(f: &Function, name: &str, params: Vec<wasmlet_runtime::Val>) -> Outcome {
    f.invoke(Invocation {
        entry: wasmlet_runtime::Entry::Export {
            name: name.into(),
            params,
        },
        ..Default::default()
    })
    .unwrap()
}

pub fn stdout_of(o: &Outcome) -> String {
    String::from_utf8_lossy(o.stdout.as_deref().unwrap_or_default()).into_owned()
}

/// A command module that writes "hello\n" to stdout with `fd_write`.
pub const HELLO_WAT: &str = include_str!("../../examples/guests/hello.wat");

/// A reactor with exports for exercising traps and limits.
pub const TOOLS_WAT: &str = r#"
(module
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1)
  (global $counter (mut i32) (i32.const 0))
  (global $initialized (mut i32) (i32.const 0))
  (func (export "_initialize") (global.set $initialized (i32.const 1)))
  (func (export "initialized") (result i32) (global.get $initialized))
  (func (export "add") (param i32 i32) (result i32) (i32.add (local.get 0) (local.get 1)))
  (func (export "bump") (result i32)
    (global.set $counter (i32.add (global.get $counter) (i32.const 1)))
    (i32.store (i32.const 0) (i32.add (i32.load (i32.const 0)) (i32.const 1)))
    (i32.add (global.get $counter) (i32.load (i32.const 0))))
  (func $deep (export "boom") unreachable)
  (func (export "div") (param i32 i32) (result i32) (i32.div_s (local.get 0) (local.get 1)))
  (func (export "exit") (param i32) (call $exit (local.get 0)))
  (func (export "spin") (loop br 0))
  (func (export "recurse") (call 9))
  (func (export "grow") (result i32)
    (loop (br_if 0 (i32.ne (memory.grow (i32.const 16)) (i32.const -1))))
    unreachable)
  (func (export "grow_soft") (result i32)
    (loop (br_if 0 (i32.ne (memory.grow (i32.const 16)) (i32.const -1))))
    (memory.size)))
"#;

/// Waits until the invocation behind `gate` the invocation has its instance (10 s at most).
pub fn wait_until_reached(gate: &wasmlet_runtime::StartGate) {
    let until = std::time::Instant::now() + Duration::from_secs(10);
    while !gate.is_reached() {
        assert!(
            std::time::Instant::now() < until,
            "the gate was never reached"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Makes a FIFO at `path` (mode 0600).
pub fn mkfifo(path: &Path) {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: `c` is a valid NUL-terminated path that lives across the call.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
}

/// A two-worker tokio runtime with time and IO, for async invocations.
pub fn tokio_rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Spawns `inv` on `rt` behind a new closed gate and waits until it has
/// its instance; the gate and the invocation's task.
pub fn spawn_gated(
    rt: &tokio::runtime::Runtime,
    f: &Function,
    mut inv: Invocation,
) -> (
    wasmlet_runtime::StartGate,
    tokio::task::JoinHandle<Result<Outcome, wasmlet_runtime::Error>>,
) {
    let gate = wasmlet_runtime::StartGate::new();
    inv.gate = Some(gate.clone());
    let f = f.clone();
    let task = rt.spawn(async move { f.invoke_async(inv).await });
    wait_until_reached(&gate);
    (gate, task)
}
