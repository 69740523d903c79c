//! The `wasmlet run` and `wasmlet compile` commands, end to end.

use crate::helpers::*;
use std::io::Write;
use std::process::Stdio;

#[test]
fn hello_with_args_env_and_stdin() {
    let mut child = wasmlet()
        .args(["run", "--env", "GREETING=hi there"])
        .arg(c_guest("hello"))
        .args(["one", "--two"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(&[b'x'; 10_000])
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("hello from wasm"));
    assert!(stdout.contains("arg[1]=one\narg[2]=--two\n"), "{stdout}");
    assert!(stdout.contains("GREETING=hi there"));
    // The host's environment is not inherited.
    assert!(stdout.contains("HOME=(unset)"), "{stdout}");
    assert!(stdout.contains("stdin bytes=10000"), "{stdout}");
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "this goes to stderr\n"
    );
}

#[test]
fn exit_code_is_the_guests() {
    for code in [0, 3, 42] {
        let r = run_cli(
            wasmlet()
                .args(["run", "--env", &format!("EXIT_CODE={code}")])
                .arg(c_guest("hello")),
        );
        assert_eq!(r.code, code, "{}", r.stderr);
    }
    let dir = tempdir();
    let m = wat_file(dir.path(), "t.wat", TOOLS_WAT);
    let r = run_cli(wasmlet().args(["run", "--invoke", "exit"]).arg(&m).arg("7"));
    assert_eq!(r.code, 7);
}

#[test]
fn env_passthrough_by_name() {
    let r = run_cli(
        wasmlet()
            .env("GREETING", "from host")
            .args(["run", "--env", "GREETING"])
            .arg(c_guest("hello")),
    );
    assert!(r.stdout.contains("GREETING=from host"), "{}", r.stdout);
}

#[test]
fn invoke_prints_results_and_runs_initialize() {
    let dir = tempdir();
    let m = wat_file(dir.path(), "t.wat", TOOLS_WAT);
    let r = run_cli(
        wasmlet()
            .args(["run", "--invoke", "add"])
            .arg(&m)
            .args(["2", "40"]),
    );
    assert_eq!((r.code, r.stdout.as_str()), (0, "42\n"), "{}", r.stderr);
    let r = run_cli(wasmlet().args(["run", "--invoke", "initialized"]).arg(&m));
    assert_eq!(r.stdout, "1\n");
    let r = run_cli(wasmlet().args(["run", "--invoke", "add"]).arg(&m).arg("2"));
    assert_eq!(r.code, 1);
    r.assert_one_line_error("takes 2 argument(s), 1 given");
    let r = run_cli(wasmlet().args(["run", "--invoke", "nope"]).arg(&m));
    r.assert_one_line_error("no exported function `nope`");
    let r = run_cli(wasmlet().args(["run"]).arg(&m));
    r.assert_one_line_error("no `_start` export");
}

#[test]
fn traps_exit_134_with_one_line() {
    let dir = tempdir();
    let m = wat_file(dir.path(), "t.wat", TOOLS_WAT);
    let r = run_cli(wasmlet().args(["run", "--invoke", "boom"]).arg(&m));
    assert_eq!(r.code, 134);
    r.assert_one_line_error(
        "guest trapped: wasm `unreachable` instruction executed (in function `deep`)",
    );
    let r = run_cli(
        wasmlet()
            .args(["run", "--invoke", "div"])
            .arg(&m)
            .args(["1", "0"]),
    );
    assert_eq!(r.code, 134);
    r.assert_one_line_error("integer divide by zero");
    let r = run_cli(wasmlet().args(["run", "--invoke", "recurse"]).arg(&m));
    assert_eq!(r.code, 134);
    r.assert_one_line_error("call stack exhausted");
}

#[test]
fn usage_is_one_json_line() {
    let r = run_cli(wasmlet().args(["run", "--usage"]).arg(c_guest("hello")));
    assert_eq!(r.code, 0);
    assert_eq!(
        r.stderr.lines().last(),
        r.stderr.lines().find(|l| l.starts_with('{'))
    );
    let v = r.usage();
    assert_eq!(v["status"], "exited");
    assert_eq!(v["exit_code"], 0);
    assert!(v["wall_time_ns"].as_u64().unwrap() > 0);
    assert!(v["cpu_time_ns"].as_u64().unwrap() > 0);
    assert!(v["peak_memory_bytes"].as_u64().unwrap() >= 65536);
    assert!(v["fuel_consumed"].is_null());

    let r = run_cli(
        wasmlet()
            .args(["run", "--usage", "--fuel", "100000000"])
            .arg(c_guest("hello")),
    );
    let v = r.usage();
    assert!(v["fuel_consumed"].as_u64().unwrap() > 100, "{v}");
}

#[test]
fn compile_then_run_cwasm() {
    let dir = tempdir();
    let cwasm = dir.path().join("hello.cwasm");
    let r = run_cli(
        wasmlet()
            .args(["compile", "--no-cache"])
            .arg(c_guest("hello"))
            .arg("-o")
            .arg(&cwasm),
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.stderr, "", "piped output stays quiet");
    let r = run_cli(
        wasmlet()
            .args(["run", "--no-cache", "--allow-precompiled"])
            .arg(&cwasm)
            .arg("x"),
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("arg[1]=x"));

    // WAT compiles too, and the default output name is MODULE.cwasm.
    let wat = wat_file(dir.path(), "hello.wat", HELLO_WAT);
    assert_eq!(run_cli(wasmlet().arg("compile").arg(&wat)).code, 0);
    let r = run_cli(
        wasmlet()
            .args(["run", "--allow-precompiled"])
            .arg(dir.path().join("hello.cwasm")),
    );
    assert_eq!(r.stdout, "hello\n");
}

#[test]
fn cwasm_from_another_engine_is_refused() {
    let dir = tempdir();
    let cwasm = dir.path().join("fuel.cwasm");
    // Compiled for a fuel-metering engine, run on a plain one.
    let r = run_cli(
        wasmlet()
            .args(["compile", "--fuel"])
            .arg(c_guest("hello"))
            .arg("-o")
            .arg(&cwasm),
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let r = run_cli(wasmlet().args(["run", "--allow-precompiled"]).arg(&cwasm));
    assert_eq!(r.code, 1);
    r.assert_one_line_error("compiled for a different engine");
    // And the matching engine runs it.
    let r = run_cli(
        wasmlet()
            .args(["run", "--allow-precompiled", "--fuel", "1000000000"])
            .arg(&cwasm),
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
}

#[test]
fn unknown_imports_are_listed_or_trapped() {
    let dir = tempdir();
    let m = wat_file(
        dir.path(),
        "imports.wat",
        r#"(module
            (import "platform" "log" (func $log (param i32)))
            (import "platform" "kv_get" (func $kv (param i32) (result i32)))
            (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
            (memory (export "memory") 1)
            (func (export "_start") (call $exit (i32.const 5)))
            (func (export "uses_log") (call $log (i32.const 1))))"#,
    );
    let r = run_cli(wasmlet().arg("run").arg(&m));
    assert_eq!(r.code, 1);
    r.assert_one_line_error("unknown imports: platform::log, platform::kv_get");
    // With the flag, the module runs until it calls one.
    let r = run_cli(wasmlet().args(["run", "--trap-unknown-imports"]).arg(&m));
    assert_eq!(r.code, 5, "{}", r.stderr);
    let r = run_cli(
        wasmlet()
            .args(["run", "--trap-unknown-imports", "--invoke", "uses_log"])
            .arg(&m),
    );
    assert_eq!(r.code, 134);
    r.assert_one_line_error("guest trapped");
}

#[test]
fn bad_flags_are_clear() {
    let r = run_cli(wasmlet().args(["run", "--memory-limit", "lots", "x.wasm"]));
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("invalid size"), "{}", r.stderr);
    let r = run_cli(wasmlet().args(["run", "--cpu-time", "soon", "x.wasm"]));
    assert!(r.stderr.contains("invalid duration"), "{}", r.stderr);
    let r = run_cli(
        wasmlet()
            .args(["run", "--memory-limit", "64GiB"])
            .arg(c_guest("hello")),
    );
    assert_eq!(r.code, 1);
    r.assert_one_line_error("above the runtime's pool slot size");
}

#[test]
fn thrown_exceptions_work_in_a_one_slot_pool() {
    // The GC heap that holds exception objects comes from the memory pool;
    // `wasmlet run` has one slot, and this used to say "pool is full".
    let dir = tempdir();
    let wat = wat_file(
        dir.path(),
        "exn.wat",
        r#"(module
          (tag $e (param i32))
          (memory 1)
          (func (export "probe") (param i32) (result i32)
            (block $h (result i32)
              (try_table (catch $e $h) (throw $e (local.get 0)))
              unreachable)))"#,
    );
    let r = run_cli(
        wasmlet()
            .args(["run", "--invoke", "probe"])
            .arg(&wat)
            .arg("5"),
    );
    assert_eq!((r.code, r.stdout.as_str()), (0, "5\n"), "{}", r.stderr);
}

#[test]
fn invoke_passes_arguments_to_argv() {
    // An export without parameters (an interpreter's `run`) gets the
    // arguments as its argv, as with wasmtime.
    let dir = tempdir();
    let wat = wat_file(
        dir.path(),
        "argc.wat",
        r#"(module
          (import "wasi_snapshot_preview1" "args_sizes_get" (func $s (param i32 i32) (result i32)))
          (memory (export "memory") 1)
          (func (export "argc") (result i32)
            (drop (call $s (i32.const 0) (i32.const 4)))
            (i32.load (i32.const 0))))"#,
    );
    let r = run_cli(
        wasmlet()
            .args(["run", "--invoke", "argc"])
            .arg(&wat)
            .args(["-c", "print(1)"]),
    );
    assert_eq!((r.code, r.stdout.as_str()), (0, "3\n"), "{}", r.stderr);
}
