//! The embedding API: host functions (sync and async) with guest memory
//! and the per-invocation context, their time and errors, typed calls, and
//! a component host interface from `wasmtime::component::bindgen!`.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use wasmlet_runtime::wasmtime;
use wasmlet_runtime::{
    Context, Error, Function, HostCx, Invocation, LimitExceeded, Limits, LoadOptions, Runtime,
    RuntimeBuilder, RuntimeConfig, Status,
};

/// Which tenant an invocation runs for.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Tenant(u32);

/// Lines the guest logged, shared with the test.
#[derive(Debug, Clone, Default)]
struct Log(Arc<Mutex<Vec<String>>>);

/// Set when an async host function's future is dropped.
#[derive(Debug, Clone, Default)]
struct Dropped(Arc<AtomicBool>);

struct SetOnDrop(Arc<AtomicBool>);

impl Drop for SetOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

pub(crate) fn config() -> RuntimeConfig {
    let mut config = RuntimeConfig::default();
    config.pool.instances = 64;
    config.cache.enabled = false;
    config
}

/// A runtime with the test platform's host functions.
fn platform() -> Runtime {
    builder().build().unwrap()
}

fn builder() -> RuntimeBuilder {
    RuntimeBuilder::new(config())
        .host_func(
            "platform",
            "upper",
            |mut cx: HostCx<'_>, ptr: u32, len: u32| -> wasmtime::Result<u32> {
                cx.memory()?.slice_mut(ptr, len)?.make_ascii_uppercase();
                Ok(len)
            },
        )
        .host_func(
            "platform",
            "log",
            |mut cx: HostCx<'_>, ptr: u32, len: u32| -> wasmtime::Result<()> {
                let (mem, context) = cx.memory_and_context()?;
                let line = mem.str(ptr, len)?.to_string();
                let log = context
                    .get::<Log>()
                    .ok_or_else(|| wasmtime::Error::msg("no log in the invocation's context"))?;
                log.0.lock().unwrap().push(line);
                Ok(())
            },
        )
        .host_func(
            "platform",
            "write",
            |mut cx: HostCx<'_>, ptr: u32| -> wasmtime::Result<u32> {
                cx.write(ptr, b"from host")?;
                Ok(9)
            },
        )
        .host_func(
            "platform",
            "tenant",
            |cx: HostCx<'_>| -> wasmtime::Result<u32> {
                cx.context()
                    .get::<Tenant>()
                    .map(|t| t.0)
                    .ok_or_else(|| wasmtime::Error::msg("no tenant in the invocation's context"))
            },
        )
        .host_func(
            "platform",
            "fail",
            |_cx: HostCx<'_>| -> wasmtime::Result<()> {
                Err(wasmtime::Error::msg("kv store unavailable"))
            },
        )
        .host_func("platform", "block", |_cx: HostCx<'_>, ms: u32| {
            std::thread::sleep(Duration::from_millis(ms.into()))
        })
        .host_func("platform", "noop", |_cx: HostCx<'_>| {})
        .host_func_async("platform", "wait", |_cx: HostCx<'_>, (ms,): (u32,)| {
            Box::new(async move {
                tokio::time::sleep(Duration::from_millis(ms.into())).await;
                ms
            })
        })
        .host_func_async("platform", "hang", |cx: HostCx<'_>, ()| {
            let dropped = cx.context().get::<Dropped>().cloned();
            Box::new(async move {
                let _guard = dropped.map(|d| SetOnDrop(d.0));
                std::future::pending::<()>().await
            })
        })
        .host_func_async("platform", "tenant_async", |cx: HostCx<'_>, ()| {
            Box::new(async move {
                // Let other invocations run in between.
                for _ in 0..3 {
                    tokio::task::yield_now().await;
                }
                cx.context().get::<Tenant>().map_or(u32::MAX, |t| t.0)
            })
        })
}

pub(crate) fn load(rt: &Runtime, wat: &str) -> Function {
    rt.load_bytes(wat.as_bytes(), &LoadOptions::default())
        .unwrap()
}

fn with_context(context: Context) -> Invocation {
    Invocation {
        context,
        ..Default::default()
    }
}

pub(crate) fn trapped(status: &Status) -> &str {
    match status {
        Status::Trapped(msg) => msg,
        other => panic!("expected a trap, got {other:?}"),
    }
}

#[test]
fn host_functions_read_and_write_guest_memory() {
    let rt = platform();
    let f = load(
        &rt,
        r#"(module
          (import "platform" "upper" (func $upper (param i32 i32) (result i32)))
          (import "platform" "log" (func $log (param i32 i32)))
          (import "platform" "write" (func $write (param i32) (result i32)))
          (memory (export "memory") 1)
          (data (i32.const 16) "hello, host")
          (func (export "run") (result i32)
            (drop (call $upper (i32.const 16) (i32.const 11)))
            (call $log (i32.const 16) (i32.const 11))
            (call $log (i32.const 64) (call $write (i32.const 64)))
            (i32.load8_u (i32.const 16))))"#,
    );
    let log = Log::default();
    let run = f.typed::<(), u32>("run").unwrap();
    let out = run
        .invoke((), with_context(Context::new().with(log.clone())))
        .unwrap();
    assert_eq!(out.results, Some(u32::from(b'H')), "{:?}", out.status);
    assert_eq!(*log.0.lock().unwrap(), ["HELLO, HOST", "from host"]);
}

#[test]
fn guest_pointers_out_of_bounds_trap_with_the_reason() {
    let rt = platform();
    let f = load(
        &rt,
        r#"(module
          (import "platform" "log" (func $log (param i32 i32)))
          (import "platform" "write" (func $write (param i32) (result i32)))
          (memory (export "memory") 1)
          (func (export "read_past_end") (call $log (i32.const 65530) (i32.const 100)))
          (func (export "read_wrapping") (call $log (i32.const -1) (i32.const -1)))
          (func (export "write_past_end") (drop (call $write (i32.const 65530)))))"#,
    );
    for export in ["read_past_end", "read_wrapping", "write_past_end"] {
        let out = f
            .typed::<(), ()>(export)
            .unwrap()
            .invoke((), with_context(Context::new().with(Log::default())))
            .unwrap();
        let msg = trapped(&out.status);
        assert!(
            msg.contains("guest memory access out of bounds") && msg.contains("65536 bytes"),
            "{export}: {msg}"
        );
        assert!(out.results.is_none());
    }
    // A module without a memory export gets a clear error too.
    let f = load(
        &rt,
        r#"(module (import "platform" "log" (func $log (param i32 i32)))
                   (func (export "run") (call $log (i32.const 0) (i32.const 1))))"#,
    );
    let out = f
        .typed::<(), ()>("run")
        .unwrap()
        .invoke((), Invocation::default());
    assert!(trapped(&out.unwrap().status).contains("no memory named `memory`"));
}

#[test]
fn host_function_errors_are_traps_with_their_message() {
    let rt = platform();
    let f = load(
        &rt,
        r#"(module (import "platform" "fail" (func $fail))
                   (func (export "run") (call $fail)))"#,
    );
    let out = f
        .invoke(Invocation {
            entry: wasmlet_runtime::Entry::Export {
                name: "run".into(),
                params: vec![],
            },
            ..Default::default()
        })
        .unwrap();
    let msg = trapped(&out.status);
    assert!(msg.contains("kv store unavailable"), "{msg}");
    // The embedder decides what a missing context is: here a trap.
    let f = load(
        &rt,
        r#"(module (import "platform" "tenant" (func $t (result i32)))
                   (func (export "run") (result i32) (call $t)))"#,
    );
    let out = f
        .typed::<(), i32>("run")
        .unwrap()
        .invoke((), Invocation::default());
    assert!(trapped(&out.unwrap().status).contains("no tenant in the invocation's context"));
}

const WAIT: &str = r#"(module
  (import "platform" "wait" (func $wait (param i32) (result i32)))
  (func (export "run") (param i32) (result i32) (call $wait (local.get 0))))"#;

#[test]
fn async_host_functions_run_from_invoke_and_invoke_async() {
    let rt = platform();
    let f = load(&rt, WAIT);
    let run = f.typed::<u32, u32>("run").unwrap();
    let out = run.invoke(30, Invocation::default()).unwrap();
    assert_eq!(out.results, Some(30));
    assert!(out.usage.wall_time >= Duration::from_millis(30));
    // Waiting in the host is wall time, not CPU time.
    assert!(
        out.usage.cpu_time < Duration::from_millis(30),
        "{:?}",
        out.usage
    );

    let tokio = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let out = tokio
        .block_on(run.invoke_async(20, Invocation::default()))
        .unwrap();
    assert_eq!(out.results, Some(20));
    assert!(out.usage.wall_time >= Duration::from_millis(20));
}

/// A guest whose `run` calls the host function `hang`, which never returns.
pub(crate) const HANG: &str = r#"(module (import "platform" "hang" (func $hang))
  (func (export "run") (call $hang)) (func (export "ok")))"#;

#[test]
fn an_async_host_function_waiting_past_the_timeout_is_cancelled() {
    let rt = platform();
    let f = load(&rt, HANG);
    let run = f.typed::<(), ()>("run").unwrap();
    let dropped = Dropped::default();
    let started = Instant::now();
    let out = run
        .invoke(
            (),
            Invocation {
                limits: Some(Limits {
                    timeout: Some(Duration::from_millis(100)),
                    ..Limits::default()
                }),
                context: Context::new().with(dropped.clone()),
                ..Default::default()
            },
        )
        .unwrap();
    assert!(
        matches!(
            out.status,
            Status::LimitExceeded(LimitExceeded::Timeout(t)) if t == Duration::from_millis(100)
        ),
        "{:?}",
        out.status
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(out.usage.wall_time >= Duration::from_millis(100));
    assert!(
        dropped.0.load(Ordering::SeqCst),
        "the host future was not dropped"
    );
}

#[test]
fn a_sync_host_function_blocking_past_the_timeout_ends_as_the_timeout() {
    let rt = platform();
    let f = load(
        &rt,
        r#"(module (import "platform" "block" (func $block (param i32)))
                   (func (export "run") (param i32) (call $block (local.get 0))))"#,
    );
    let run = f.typed::<u32, ()>("run").unwrap();
    let limits = Limits {
        timeout: Some(Duration::from_millis(50)),
        ..Limits::default()
    };
    let inv = || Invocation {
        limits: Some(limits.clone()),
        ..Default::default()
    };
    // The guest returns right after the call: only the check on the host
    // function's return sees the timeout.
    let out = run.invoke(300, inv()).unwrap();
    assert!(
        matches!(out.status, Status::LimitExceeded(LimitExceeded::Timeout(_))),
        "{:?}",
        out.status
    );
    assert!(out.usage.wall_time >= Duration::from_millis(300));
    // Within the timeout it returns normally.
    let out = run.invoke(1, inv()).unwrap();
    assert!(out.results.is_some(), "{:?}", out.status);
}

#[test]
fn contexts_are_isolated_across_64_concurrent_invocations() {
    let rt = platform();
    let f = load(
        &rt,
        r#"(module
          (import "platform" "tenant" (func $tenant (result i32)))
          (import "platform" "tenant_async" (func $tenant_async (result i32)))
          (func (export "run") (result i32) (local $i i32) (local $t i32)
            (local.set $t (call $tenant))
            (loop $again
              (if (i32.ne (call $tenant_async) (local.get $t)) (then unreachable))
              (if (i32.ne (call $tenant) (local.get $t)) (then unreachable))
              (local.set $i (i32.add (local.get $i) (i32.const 1)))
              (br_if $again (i32.lt_u (local.get $i) (i32.const 20))))
            (local.get $t)))"#,
    );
    let run = f.typed::<(), u32>("run").unwrap();
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap();
    let results = tokio.block_on(async {
        let tasks: Vec<_> = (0..64u32)
            .map(|i| {
                let run = run.clone();
                tokio::spawn(async move {
                    let out = run
                        .invoke_async((), with_context(Context::new().with(Tenant(i))))
                        .await
                        .unwrap();
                    (i, out)
                })
            })
            .collect();
        let mut results = Vec::new();
        for t in tasks {
            results.push(t.await.unwrap());
        }
        results
    });
    for (i, out) in results {
        assert_eq!(out.results, Some(i), "invocation {i}: {:?}", out.status);
    }
}

#[test]
fn imports_nobody_provides_are_still_refused() {
    let rt = platform();
    let wat = r#"(module
      (import "platform" "noop" (func $noop))
      (import "platform" "nope" (func $nope))
      (func (export "run") (call $noop)))"#;
    match rt.load_bytes(wat.as_bytes(), &LoadOptions::default()) {
        Err(Error::UnknownImports(missing)) => assert_eq!(missing, ["platform::nope"]),
        other => panic!("expected UnknownImports, got {other:?}"),
    }
    // With trap_unknown_imports the provided one is still the host's.
    let f = rt
        .load_bytes(
            wat.as_bytes(),
            &LoadOptions {
                trap_unknown_imports: true,
                ..LoadOptions::default()
            },
        )
        .unwrap();
    let out = f
        .typed::<(), ()>("run")
        .unwrap()
        .invoke((), Invocation::default());
    assert!(out.unwrap().results.is_some());
    // A runtime without host functions refuses the host's import.
    let plain = Runtime::new(config()).unwrap();
    assert!(matches!(
        plain.load_bytes(wat.as_bytes(), &LoadOptions::default()),
        Err(Error::UnknownImports(m)) if m == ["platform::noop", "platform::nope"]
    ));
}

#[test]
fn clashing_host_definitions_are_build_errors() {
    let noop = |_cx: HostCx<'_>| {};
    let err = builder()
        .host_func("platform", "noop", noop)
        .build()
        .err()
        .expect("a duplicate must not build");
    let msg = err.to_string();
    assert!(
        matches!(err, Error::Config(_)) && msg.contains("platform::noop"),
        "{msg}"
    );
    assert!(!msg.contains('\n'));
    let err = RuntimeBuilder::new(config())
        .host_func("wasi_snapshot_preview1", "fd_write", noop)
        .build()
        .err()
        .expect("shadowing WASI must not build");
    assert!(
        err.to_string().contains("wasi_snapshot_preview1::fd_write"),
        "{err}"
    );
}

#[test]
fn typed_calls_check_the_signature_at_load() {
    let rt = platform();
    let f = load(
        &rt,
        r#"(module
          (global $g (mut i32) (i32.const 0))
          (func (export "_initialize") (global.set $g (i32.const 100)))
          (func (export "add") (param i32 i64) (result i64)
            (i64.add (i64.extend_i32_s (i32.add (local.get 0) (global.get $g))) (local.get 1)))
          (func (export "boom") (result f32) unreachable))"#,
    );
    let add = f.typed::<(i32, i64), i64>("add").unwrap();
    let out = add.invoke((1, 2), Invocation::default()).unwrap();
    assert_eq!(out.results, Some(103), "_initialize runs first");
    assert!(matches!(&out.status, Status::Returned(v) if v.is_empty()));
    assert_eq!(
        add.invoke((-1, 0), Invocation::default())
            .unwrap()
            .into_result()
            .unwrap(),
        99
    );

    let err = f.typed::<(i32, i32), i64>("add").unwrap_err();
    assert!(matches!(err, Error::Entry(_)));
    let msg = err.to_string();
    assert!(
        msg.contains("`add`")
            && msg.contains("(i32, i64) -> (i64)")
            && msg.contains("(i32, i32) -> (i64)"),
        "{msg}"
    );
    let msg = f.typed::<(i32, i64), ()>("add").unwrap_err().to_string();
    assert!(msg.contains("(i32, i64) -> ()"), "{msg}");
    let msg = f.typed::<(), ()>("missing").unwrap_err().to_string();
    assert!(msg.contains("no exported function `missing`"), "{msg}");

    let boom = f.typed::<(), f32>("boom").unwrap();
    let out = boom.invoke((), Invocation::default()).unwrap();
    assert!(out.results.is_none());
    assert!(trapped(&out.status).contains("unreachable"));
    assert!(matches!(
        boom.invoke((), Invocation::default())
            .unwrap()
            .into_result(),
        Err(Error::Trap(_))
    ));
}

/// Host interfaces for components: bindings generated from
/// `tests/guests/counter/counter.wit`, implemented on the invocation's
/// context, added with `RuntimeBuilder::component_linker`.
mod counter {
    wasmlet_runtime::wasmtime::component::bindgen!({
        path: "tests/guests/counter",
        world: "guest",
        imports: { default: trappable },
        wasmtime_crate: wasmlet_runtime::wasmtime,
    });
}

/// A tenant's counter, shared by its invocations.
struct Counter(Arc<AtomicU32>);

/// In a context, makes the counter's host implementation panic (the
/// `embed_attacks` tests).
pub(crate) struct PanicInHost;

impl counter::example::counter::counter::Host for Context {
    fn add(&mut self, n: u32) -> wasmtime::Result<u32> {
        if self.get::<PanicInHost>().is_some() {
            panic!("component host panicked on purpose ({n})");
        }
        let counter = self
            .get::<Counter>()
            .ok_or_else(|| wasmtime::Error::msg("no counter in the invocation's context"))?;
        Ok(counter.0.fetch_add(n, Ordering::SeqCst) + n)
    }
}

/// A runtime whose components may import `example:counter/counter`.
pub(crate) fn counter_runtime() -> Runtime {
    RuntimeBuilder::new(config())
        .component_linker(|linker| {
            counter::example::counter::counter::add_to_linker::<
                _,
                wasmtime::component::HasSelf<Context>,
            >(linker, |state| state.context_mut())
        })
        .build()
        .unwrap()
}

/// The counter guest (`tests/guests/counter.c`) as a component.
pub(crate) fn counter_component() -> std::path::PathBuf {
    crate::components::build::build_component(
        "counter",
        crate::components::build::Kind::CustomCommand("counter", "guest"),
        &crate::helpers::scratch().join("components"),
    )
}

#[test]
fn component_host_interface_round_trip() {
    let rt = counter_runtime();
    let path = counter_component();
    let f = rt.load_file(&path, &LoadOptions::default()).unwrap();
    assert!(f.is_component() && f.is_command());
    let count = Arc::new(AtomicU32::new(10));
    let out = f
        .invoke(with_context(Context::new().with(Counter(count.clone()))))
        .unwrap();
    assert!(out.success(), "{:?} {:?}", out.status, out.stderr);
    let stdout = String::from_utf8_lossy(out.stdout.as_deref().unwrap_or_default()).to_string();
    assert_eq!(stdout, "counter: 12 15\n");
    assert_eq!(count.load(Ordering::SeqCst), 15);
    // Without the context the host interface traps, with its message.
    let out = f.invoke(Invocation::default()).unwrap();
    assert!(trapped(&out.status).contains("no counter in the invocation's context"));
    // A runtime without the interface refuses the component.
    let plain = Runtime::new(config()).unwrap();
    let err = plain.load_file(&path, &LoadOptions::default()).unwrap_err();
    assert!(err.to_string().contains("example:counter/counter"), "{err}");
}

/// A WAGI guest that asks the platform for its greeting and serves it.
const GREETER_WAT: &str = r#"(module
  (import "platform" "greeting" (func $greeting (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "Content-Type: text/plain\n\n")
  (func (export "_start")
    (i32.store (i32.const 512) (i32.const 0))
    (i32.store (i32.const 516) (i32.const 26))
    (drop (call $write (i32.const 1) (i32.const 512) (i32.const 1) (i32.const 600)))
    (i32.store (i32.const 512) (i32.const 1024))
    (i32.store (i32.const 516) (call $greeting (i32.const 1024) (i32.const 256)))
    (drop (call $write (i32.const 1) (i32.const 512) (i32.const 1) (i32.const 600)))))"#;

/// `wasmlet serve` embedded with the platform's host function
/// (`examples/serve_embed.rs`): a guest importing it is served; the plain
/// `wasmlet serve` refuses the same manifest (nobody provides the import).
#[test]
fn serve_embedded_with_a_host_function() {
    use crate::helpers::{run_cli, tempdir, wasmlet, wat_file, within};
    let dir = tempdir();
    let module = wat_file(dir.path(), "greeter.wat", GREETER_WAT);
    let manifest = dir.path().join("wasmlet.toml");
    std::fs::write(
        &manifest,
        format!(
            "listen = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n\
             [[function]]\nname = \"greeter\"\nmodule = \"{}\"\nkind = \"wagi\"\n\
             [[function.trigger]]\ntype = \"http\"\nroute = \"/greet\"\n",
            module.display()
        ),
    )
    .unwrap();
    let plain = run_cli(wasmlet().args(["serve", "--check"]).arg(&manifest));
    assert_ne!(plain.code, 0, "the plain server accepted an unknown import");
    assert!(plain.stdout.contains("platform") || plain.stderr.contains("platform"));

    let exe = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target/release/examples/serve_embed");
    assert!(
        exe.exists(),
        "build the example first: cargo build --release --examples"
    );
    let mut child = std::process::Command::new(&exe)
        .arg(&manifest)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let addr: std::net::SocketAddr = line.trim().parse().expect("the example prints its address");
    let got = within(Duration::from_secs(20), move || {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.write_all(b"GET /greet HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    });
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    assert!(got.ends_with("hello from the platform\n"), "{got}");
    assert!(status.success(), "{status:?}");
}
