//! The CLI under hostile or careless input (issue 8): bounded compiles, no
//! panics, output paths, signals, and the details of flags and errors. Each
//! test is named after what used to go wrong.

use crate::helpers::*;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};
use wasmlet_runtime::{Error, LoadOptions};

/// A module of `n` empty functions, written directly in the binary format
/// (4 MB for a million: 1 byte each in the function section, 3 in code).
fn many_functions(n: u32) -> Vec<u8> {
    many_functions_exporting(n, None)
}

/// As [`many_functions`], with function 0 exported as `export`.
fn many_functions_exporting(n: u32, export: Option<&str>) -> Vec<u8> {
    fn leb(mut v: u32, out: &mut Vec<u8>) {
        loop {
            let byte = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }
    fn section(id: u8, body: &[u8], out: &mut Vec<u8>) {
        out.push(id);
        leb(body.len() as u32, out);
        out.extend_from_slice(body);
    }
    let mut m = b"\0asm\x01\0\0\0".to_vec();
    section(1, &[1, 0x60, 0, 0], &mut m); // one type: [] -> []
    let mut funcs = Vec::new();
    leb(n, &mut funcs);
    funcs.resize(funcs.len() + n as usize, 0); // every function has type 0
    section(3, &funcs, &mut m);
    if let Some(name) = export {
        let mut exports = vec![1];
        leb(name.len() as u32, &mut exports);
        exports.extend_from_slice(name.as_bytes());
        exports.extend_from_slice(&[0, 0]); // a function, index 0
        section(7, &exports, &mut m);
    }
    let mut code = Vec::new();
    leb(n, &mut code);
    for _ in 0..n {
        code.extend_from_slice(&[2, 0, 0x0b]); // size 2: no locals, `end`
    }
    section(10, &code, &mut m);
    m
}

fn million_function_module(dir: &Path) -> PathBuf {
    let p = dir.join("million.wasm");
    std::fs::write(&p, many_functions(1_000_000)).unwrap();
    p
}

#[test]
fn million_function_module_is_refused_by_the_compile_caps() {
    let dir = tempdir();
    let m = million_function_module(dir.path());
    let start = Instant::now();
    let r = run_cli(wasmlet().args(["run", "--no-cache"]).arg(&m));
    assert_eq!(r.code, 1, "{}", r.stderr);
    r.assert_one_line_error("compile.max_functions");
    let r = run_cli(wasmlet().args(["compile", "--no-cache"]).arg(&m));
    r.assert_one_line_error("compile.max_functions");
    let r = run_cli(wasmlet().arg("snapshot").arg(&m));
    r.assert_one_line_error("compile.max_functions");
    assert!(
        start.elapsed() < Duration::from_secs(20),
        "{:?}",
        start.elapsed()
    );

    // The library refuses it the same way, with a typed error.
    let wasm = std::fs::read(&m).unwrap();
    match runtime().load_bytes(&wasm, &LoadOptions::default()) {
        Err(Error::TooLarge(e)) => assert_eq!(e.cap, "max_functions"),
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("compiled"),
    }
    // Modules the size of real interpreters pass the default caps.
    let interpreter_sized = many_functions(50_000);
    runtime()
        .load_bytes(&interpreter_sized, &LoadOptions::default())
        .unwrap();
}

#[test]
fn million_function_module_is_stopped_by_the_compile_budget() {
    let dir = tempdir();
    let m = million_function_module(dir.path());
    let raised = ["--compile-cap", "max_functions=2000000"];
    let start = Instant::now();
    let r = run_cli(
        wasmlet()
            .args(["run", "--no-cache", "--compile-timeout", "2s"])
            .args(raised)
            .arg(&m),
    );
    assert_eq!(r.code, 137, "{}", r.stderr);
    r.assert_one_line_error("compile time budget of 2s exceeded");
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "{:?}",
        start.elapsed()
    );

    let r = run_cli(
        wasmlet()
            .args(["compile", "--no-cache", "--compile-memory", "300MiB"])
            .args(raised)
            .arg(&m)
            .arg("-o")
            .arg(dir.path().join("out.cwasm")),
    );
    assert_eq!(r.code, 137, "{}", r.stderr);
    r.assert_one_line_error("compile memory budget of 300 MiB exceeded");
    assert!(!dir.path().join("out.cwasm").exists());
}

/// `wasmlet snapshot` compiles the module to run its init: that compile
/// used to be bounded only by the caps, in process. Now the whole snapshot
/// runs in a child under the compile budget plus init's own limits.
#[test]
fn snapshot_of_a_million_function_module_is_stopped_by_its_budget() {
    let dir = tempdir();
    let m = dir.path().join("million-init.wasm");
    std::fs::write(
        &m,
        many_functions_exporting(1_000_000, Some("wizer.initialize")),
    )
    .unwrap();
    let out = dir.path().join("out.wasm");
    let start = Instant::now();
    let r = run_cli(
        wasmlet()
            .args(["snapshot", "--compile-timeout", "2s", "--timeout", "1s"])
            .args(["--compile-cap", "max_functions=2000000"])
            .arg(&m)
            .arg("-o")
            .arg(&out),
    );
    assert_eq!(r.code, 137, "{}", r.stderr);
    r.assert_one_line_error("snapshot time budget of 3s exceeded");
    assert!(
        start.elapsed() < Duration::from_secs(15),
        "{:?}",
        start.elapsed()
    );
    assert!(!out.exists());
    assert!(wasmlet_temp_files(dir.path()).is_empty());

    let r = run_cli(
        wasmlet()
            .args([
                "snapshot",
                "--compile-memory",
                "300MiB",
                "--memory-limit",
                "1MiB",
            ])
            .args(["--compile-cap", "max_functions=2000000"])
            .arg(&m)
            .arg("-o")
            .arg(&out),
    );
    assert_eq!(r.code, 137, "{}", r.stderr);
    r.assert_one_line_error("snapshot memory budget of 301 MiB exceeded");
    assert!(!out.exists());
}

/// A snapshot in its child still says what went wrong in one line, and a
/// good one still works.
#[test]
fn snapshot_in_a_child_reports_errors_and_writes_output() {
    let dir = tempdir();
    let r = run_cli(
        wasmlet()
            .arg("snapshot")
            .arg(dir.path().join("missing.wasm")),
    );
    assert_eq!(r.code, 1, "{}", r.stderr);
    r.assert_one_line_error("missing.wasm");
    let m = wat_file(
        dir.path(),
        "init.wat",
        r#"(module (memory (export "memory") 1) (global $g (mut i32) (i32.const 0))
            (func (export "wizer.initialize") (global.set $g (i32.const 42)))
            (func (export "get") (result i32) (global.get $g)))"#,
    );
    let out = dir.path().join("init.snapshot.wasm");
    let r = run_cli(wasmlet().arg("snapshot").arg(&m));
    assert_eq!(r.code, 0, "{}", r.stderr);
    let r = run_cli(wasmlet().args(["run", "--invoke", "get"]).arg(&out));
    assert_eq!((r.code, r.stdout.trim()), (0, "42"), "{}", r.stderr);
}

#[test]
fn sigterm_during_snapshot_removes_temp_files_and_exits_143() {
    let dir = tempdir();
    let tmp = tempdir();
    let m = dir.path().join("million-init.wasm");
    std::fs::write(
        &m,
        many_functions_exporting(1_000_000, Some("wizer.initialize")),
    )
    .unwrap();
    let status = signal_when(
        wasmlet()
            .env("TMPDIR", tmp.path())
            .args(["snapshot", "--compile-cap", "max_functions=2000000"])
            .arg(&m)
            .arg("-o")
            .arg(dir.path().join("out.wasm")),
        || !wasmlet_temp_files(tmp.path()).is_empty(),
        libc::SIGTERM,
    );
    assert_eq!(status.code(), Some(143), "{status:?}");
    assert!(wasmlet_temp_files(tmp.path()).is_empty());
    assert!(wasmlet_temp_files(dir.path()).is_empty());
    assert!(!dir.path().join("out.wasm").exists());
}

#[test]
fn huge_timeout_is_a_usage_error_not_a_panic() {
    for flag in ["--timeout", "--cpu-time", "--compile-timeout"] {
        let r = run_cli(
            wasmlet()
                .args(["run", flag, "18446744073709551615s"])
                .arg(c_guest("hello")),
        );
        assert_eq!(r.code, 1, "{flag}: {}", r.stderr);
        r.assert_one_line_error("invalid duration");
    }
}

#[test]
fn invoke_output_into_a_closed_pipe_ends_quietly() {
    let dir = tempdir();
    let m = wat_file(dir.path(), "t.wat", TOOLS_WAT);
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = wasmlet()
        .args(["run", "--invoke", "add"])
        .arg(&m)
        .args(["1", "2"])
        .stdout(writer)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.is_empty(), "{stderr}");
    // As `yes | head -c0`: ended by SIGPIPE.
    assert_eq!(out.status.signal(), Some(libc::SIGPIPE), "{:?}", out.status);
}

#[test]
fn output_onto_a_fifo_or_device_writes_through() {
    let dir = tempdir();
    let m = wat_file(dir.path(), "t.wat", TOOLS_WAT);
    let fifo = dir.path().join("fifo");
    mkfifo(&fifo);
    let reader = {
        let fifo = fifo.clone();
        std::thread::spawn(move || std::fs::read(fifo).unwrap())
    };
    let r = run_cli(wasmlet().arg("compile").arg(&m).arg("-o").arg(&fifo));
    assert_eq!(r.code, 0, "{}", r.stderr);
    // A .cwasm is an ELF file (wasmtime's serialized module) with a trailer.
    assert!(reader.join().unwrap().starts_with(b"\x7fELF"));
    assert!(std::fs::metadata(&fifo).unwrap().file_type().is_fifo());

    // A character device (a private /dev/null) is written through, not replaced.
    let null = dir.path().join("null");
    let c = std::ffi::CString::new(null.as_os_str().as_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path; makedev takes plain integers.
    if unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR | 0o666, libc::makedev(1, 3)) } == 0 {
        let r = run_cli(wasmlet().arg("compile").arg(&m).arg("-o").arg(&null));
        assert_eq!(r.code, 0, "{}", r.stderr);
        let r = run_cli(wasmlet().arg("snapshot").arg(&m).arg("-o").arg(&null));
        assert_eq!(r.code, 0, "{}", r.stderr);
        assert!(
            std::fs::metadata(&null)
                .unwrap()
                .file_type()
                .is_char_device()
        );
    }

    // A directory is refused in one line.
    let r = run_cli(wasmlet().arg("compile").arg(&m).arg("-o").arg(dir.path()));
    assert_eq!(r.code, 1);
    r.assert_one_line_error("not a regular file");
}

#[test]
fn output_files_respect_the_umask() {
    use std::os::unix::process::CommandExt;
    let dir = tempdir();
    let m = wat_file(dir.path(), "t.wat", TOOLS_WAT);
    for (umask, mode) in [(0o022, 0o644), (0o077, 0o600)] {
        for command in ["compile", "snapshot"] {
            let out = dir.path().join(format!("{command}-{umask:o}.out"));
            let mut cmd = wasmlet();
            cmd.arg(command).arg(&m).arg("-o").arg(&out);
            // SAFETY: umask is async-signal-safe and touches no memory.
            unsafe {
                cmd.pre_exec(move || {
                    libc::umask(umask);
                    Ok(())
                })
            };
            let r = run_cli(&mut cmd);
            assert_eq!(r.code, 0, "{}", r.stderr);
            let got = std::fs::metadata(&out).unwrap().permissions().mode() & 0o777;
            assert_eq!(got, mode, "{command} under umask {umask:o}");
        }
    }
}

#[test]
fn stale_temp_files_are_removed_by_the_next_write() {
    let dir = tempdir();
    let m = wat_file(dir.path(), "t.wat", TOOLS_WAT);
    let old = dir.path().join(".wasmlet-tmp-left-by-a-kill");
    let fresh = dir.path().join(".wasmlet-tmp-being-written");
    let other = dir.path().join(".tmp-not-ours");
    for f in [&old, &fresh, &other] {
        std::fs::write(f, b"x").unwrap();
    }
    let two_hours_ago = SystemTime::now() - Duration::from_secs(2 * 60 * 60);
    for f in [&old, &other] {
        std::fs::File::options()
            .write(true)
            .open(f)
            .unwrap()
            .set_modified(two_hours_ago)
            .unwrap();
    }
    let r = run_cli(
        wasmlet()
            .arg("compile")
            .arg(&m)
            .arg("-o")
            .arg(dir.path().join("t.cwasm")),
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(!old.exists());
    assert!(fresh.exists() && other.exists());
}

#[test]
fn stale_temp_artifacts_are_removed_by_the_next_compile() {
    // A compile's artifact is written in TMPDIR; a SIGKILLed wasmlet
    // leaves it there, and the next compile (or run that compiles) sweeps
    // the ones older than an hour.
    let dir = tempdir();
    let tmp = tempdir();
    let m = wat_file(dir.path(), "t.wat", TOOLS_WAT);
    let old = tmp.path().join(".wasmlet-tmp-KmbiHQ");
    let fresh = tmp.path().join(".wasmlet-tmp-being-written");
    for f in [&old, &fresh] {
        std::fs::write(f, b"x").unwrap();
    }
    std::fs::File::options()
        .write(true)
        .open(&old)
        .unwrap()
        .set_modified(SystemTime::now() - Duration::from_secs(2 * 60 * 60))
        .unwrap();
    let r = run_cli(
        wasmlet()
            .env("TMPDIR", tmp.path())
            .arg("compile")
            .arg("--no-cache")
            .arg(&m)
            .arg("-o")
            .arg(dir.path().join("t.cwasm")),
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(!old.exists(), "a stale artifact is left in TMPDIR");
    assert!(fresh.exists());
}

/// Starts `wasmlet` with `args`, waits until `ready` holds, sends `signal`
/// and returns the exit status.
fn signal_when(
    cmd: &mut Command,
    ready: impl Fn() -> bool,
    signal: i32,
) -> std::process::ExitStatus {
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ready() {
        assert!(Instant::now() < deadline, "never became ready");
        std::thread::sleep(Duration::from_millis(20));
    }
    // What made it ready (a temporary file) is registered for cleanup a
    // moment after it appears.
    std::thread::sleep(Duration::from_millis(100));
    // SAFETY: kill takes plain integers; the child is ours and not reaped.
    unsafe { libc::kill(child.id() as i32, signal) };
    child.wait().unwrap()
}

fn wasmlet_temp_files(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .as_bytes()
                .starts_with(b".wasmlet-tmp-")
        })
        .collect()
}

/// Compiles the million-function module to `dir/out.cwasm` (temp files
/// under `tmp`) and sends `signal` once the compile has a temp file.
fn interrupted_compile(
    signal: i32,
) -> (
    std::process::ExitStatus,
    tempfile::TempDir,
    tempfile::TempDir,
) {
    let dir = tempdir();
    let tmp = tempdir();
    let m = million_function_module(dir.path());
    let status = signal_when(
        wasmlet()
            .env("TMPDIR", tmp.path())
            .args([
                "compile",
                "--no-cache",
                "--compile-cap",
                "max_functions=2000000",
            ])
            .arg(&m)
            .arg("-o")
            .arg(dir.path().join("out.cwasm")),
        || !wasmlet_temp_files(tmp.path()).is_empty(),
        signal,
    );
    (status, dir, tmp)
}

#[test]
fn sigterm_during_compile_removes_temp_files_and_exits_143() {
    let (status, dir, tmp) = interrupted_compile(libc::SIGTERM);
    assert_eq!(status.code(), Some(143), "{status:?}");
    assert!(wasmlet_temp_files(tmp.path()).is_empty());
    assert!(wasmlet_temp_files(dir.path()).is_empty());
    assert!(!dir.path().join("out.cwasm").exists());
}

/// `kill -9` cannot be caught: the compile child dies with its parent
/// (PDEATHSIG), temp files may stay behind for the next write to remove,
/// but nothing half-written is ever at the output path.
#[test]
fn sigkill_during_compile_leaves_no_output_and_the_next_compile_works() {
    let (status, dir, _tmp) = interrupted_compile(libc::SIGKILL);
    let out = dir.path().join("out.cwasm");
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{status:?}");
    assert!(!out.exists(), "a killed compile left {}", out.display());
    let hello = wat_file(dir.path(), "hello.wat", TOOLS_WAT);
    let r = run_cli(wasmlet().arg("compile").arg(&hello).arg("-o").arg(&out));
    assert_eq!(r.code, 0, "{}", r.stderr);
    let r = run_cli(
        wasmlet()
            .args(["run", "--allow-precompiled", "--invoke", "add"])
            .arg(&out)
            .args(["2", "3"]),
    );
    assert_eq!((r.code, r.stdout.as_str()), (0, "5\n"), "{}", r.stderr);
}

#[test]
fn sigint_during_run_exits_130() {
    let dir = tempdir();
    let m = wat_file(dir.path(), "t.wat", TOOLS_WAT);
    // The guest spins forever; half a second in, it is spinning (or, on a
    // slow machine, still compiling: the signal must end either cleanly).
    let start = Instant::now();
    let status = signal_when(
        wasmlet().args(["run", "--invoke", "spin"]).arg(&m),
        || start.elapsed() > Duration::from_millis(500),
        libc::SIGINT,
    );
    assert_eq!(status.code(), Some(130), "{status:?}");
}

#[test]
fn warn_lines_have_no_colours_in_a_file() {
    let dir = tempdir();
    // A cache directory that cannot be created: a warning, not an error.
    let not_a_dir = dir.path().join("file");
    std::fs::write(&not_a_dir, b"").unwrap();
    let r = run_cli(
        wasmlet()
            .args(["run", "--cache-dir"])
            .arg(&not_a_dir)
            .arg(c_guest("hello")),
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stderr.contains("WARN"), "{}", r.stderr);
    assert!(!r.stderr.contains('\x1b'), "{:?}", r.stderr);
}

#[test]
fn non_utf8_argument_is_a_one_line_usage_error() {
    use std::ffi::OsStr;
    let r = run_cli(
        wasmlet()
            .args(["run", "--invoke"])
            .arg(OsStr::from_bytes(b"\xff"))
            .arg(c_guest("hello")),
    );
    assert_eq!(r.code, 1, "{}", r.stderr);
    r.assert_one_line_error("UTF-8");
    let r = run_cli(wasmlet().arg("run"));
    assert_eq!(r.code, 1, "{}", r.stderr);
    r.assert_one_line_error("<MODULE>");
    let r = run_cli(&mut wasmlet());
    assert_eq!(r.code, 1, "{}", r.stderr);
    r.assert_one_line_error("no command given");
    // --help is not an error.
    assert_eq!(run_cli(wasmlet().args(["run", "--help"])).code, 0);
}

#[test]
fn a_non_utf8_cache_dir_is_named_in_the_error() {
    // It used to be blamed on the module ("cannot load MODULE: path
    // contains invalid UTF-8 characters").
    use std::ffi::OsStr;
    let dir = tempdir();
    let m = wat_file(dir.path(), "t.wat", TOOLS_WAT);
    let mut bad = dir.path().as_os_str().as_bytes().to_vec();
    bad.extend_from_slice(b"/\xff");
    let bad = OsStr::from_bytes(&bad);
    for cmd in [
        wasmlet().env("WASMLET_CACHE_DIR", bad).arg("compile"),
        wasmlet().arg("compile").arg("--cache-dir").arg(bad),
    ] {
        let r = run_cli(cmd.arg(&m).arg("-o").arg(dir.path().join("t.cwasm")));
        assert_eq!(r.code, 1, "{}", r.stderr);
        r.assert_one_line_error("the cache directory");
        assert!(!r.stderr.contains("t.wat"), "{}", r.stderr);
    }
}

#[test]
fn env_passthrough_of_a_non_utf8_value_says_so() {
    use std::ffi::OsStr;
    let r = run_cli(
        wasmlet()
            .env("WASMLET_TEST_BYTES", OsStr::from_bytes(b"\xff\xfe"))
            .args(["run", "--env", "WASMLET_TEST_BYTES"])
            .arg(c_guest("hello")),
    );
    assert_eq!(r.code, 1, "{}", r.stderr);
    r.assert_one_line_error("not valid UTF-8");
    assert!(!r.stderr.contains("not set"), "{}", r.stderr);
}

/// Exports `env`: how many variables the guest has, times 1000, plus the
/// first byte of the first variable's value (after `A=`).
const ENV_WAT: &str = r#"
(module
  (import "wasi_snapshot_preview1" "environ_sizes_get" (func $sizes (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "environ_get" (func $get (param i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "env") (result i32)
    (drop (call $sizes (i32.const 0) (i32.const 4)))
    (drop (call $get (i32.const 100) (i32.const 1000)))
    (i32.add (i32.mul (i32.load (i32.const 0)) (i32.const 1000))
             (i32.load8_u (i32.const 1002)))))
"#;

#[test]
fn repeated_env_name_last_wins() {
    let dir = tempdir();
    let m = wat_file(dir.path(), "env.wat", ENV_WAT);
    let r = run_cli(
        wasmlet()
            .args(["run", "--env", "A=1", "--env", "A=2", "--invoke", "env"])
            .arg(&m),
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.stdout.trim(), (1000 + b'2' as i32).to_string());
}

#[test]
fn memory_limit_zero_is_a_usage_error() {
    let r = run_cli(
        wasmlet()
            .args(["run", "--memory-limit", "0"])
            .arg(c_guest("hello")),
    );
    assert_eq!(r.code, 1, "{}", r.stderr);
    r.assert_one_line_error("more than zero");
}

#[test]
fn dir_with_empty_guest_path_is_refused() {
    let dir = tempdir();
    let spec = format!("{}::", dir.path().display());
    let r = run_cli(
        wasmlet()
            .args(["run", "--dir", &spec])
            .arg(c_guest("hello")),
    );
    assert_eq!(r.code, 1, "{}", r.stderr);
    r.assert_one_line_error("empty guest path");
}

#[test]
fn two_dirs_with_one_guest_path_are_refused() {
    let a = tempdir();
    let b = tempdir();
    let r = run_cli(
        wasmlet()
            .arg("run")
            .arg("--dir")
            .arg(format!("{}::/data", a.path().display()))
            .arg("--dir")
            .arg(format!("{}::/data/", b.path().display()))
            .arg(c_guest("hello")),
    );
    assert_eq!(r.code, 1, "{}", r.stderr);
    r.assert_one_line_error("two directories for the guest path");
}

/// A runtime that snapshots on load used the snapshotter's default caps
/// for the input, not its own `compile` caps: a module over them had its
/// init run (here: forever, until init's 60 s timeout) before the compile
/// of the snapshot refused it. Now it is refused before init runs.
#[test]
fn snapshot_on_load_checks_the_runtimes_caps_before_init() {
    let funcs = "(func)".repeat(20);
    let wat = format!(r#"(module (func (export "wizer.initialize") (loop (br 0))) {funcs})"#);
    let r = within(Duration::from_secs(30), move || {
        let rt = runtime_with(|c| {
            c.snapshot = true;
            c.compile.set_cap("max_functions", 10).unwrap();
        });
        rt.load_bytes(wat.as_bytes(), &LoadOptions::default())
            .map(|_| ())
    });
    match r {
        Err(Error::TooLarge(e)) => assert_eq!(e.cap, "max_functions"),
        Err(e) => panic!("wrong error: {e}"),
        Ok(()) => panic!("loaded"),
    }
}

/// With a timeout, the command ends on time even when nobody reads its
/// output: the guest filled stdout (a pipe never read) and returned, and
/// `wasmlet`'s own printing of the result then blocked forever.
#[test]
fn final_output_into_an_unread_pipe_does_not_outlive_the_timeout() {
    let dir = tempdir();
    // Writes exactly a pipe's capacity (64 KiB) to stdout, then returns 7.
    let m = wat_file(
        dir.path(),
        "fill.wat",
        r#"(module
            (import "wasi_snapshot_preview1" "fd_write"
              (func $w (param i32 i32 i32 i32) (result i32)))
            (memory (export "memory") 2)
            (func (export "f") (result i32)
              (i32.store (i32.const 65536) (i32.const 0))
              (i32.store (i32.const 65540) (i32.const 65536))
              (drop (call $w (i32.const 1) (i32.const 65536) (i32.const 1) (i32.const 65544)))
              (i32.const 7)))"#,
    );
    let child = wasmlet()
        .args(["run", "--timeout", "500ms", "--invoke", "f"])
        .arg(&m)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // The pipe is kept open and never read.
    let (code, took, _) = wait_at_most(child, Duration::from_secs(30));
    assert_eq!(code, 0);
    assert!(took < Duration::from_secs(15), "{took:?}");
}

#[test]
fn the_module_size_cap_is_a_compile_cap() {
    // The error names `max_module_size`; the CLI sets it like the other caps.
    let dir = tempdir();
    let m = wat_file(dir.path(), "t.wat", TOOLS_WAT);
    let small = run_cli(
        wasmlet()
            .args(["compile", "--compile-cap", "max_module_size=10"])
            .arg(&m)
            .arg("-o")
            .arg(dir.path().join("t.cwasm")),
    );
    small.assert_one_line_error("max_module_size");
    let raised = run_cli(
        wasmlet()
            .args(["compile", "--compile-cap", "max_module_size=1MiB"])
            .arg(&m)
            .arg("-o")
            .arg(dir.path().join("t.cwasm")),
    );
    assert_eq!(raised.code, 0, "{}", raised.stderr);
}
