//! The embedding API attacked as an outside platform builder would: hostile
//! guest pointers and odd memories, host functions that panic, hang, spin
//! or call back into the guest, clashing and mismatched definitions, limits
//! and usage records through host calls, context leaks between
//! invocations, typed-call misuse, and components importing what the
//! embedder did not provide. Each test tries the bad thing and checks the
//! refusal (or the documented behaviour).

use crate::embed::{HANG, PanicInHost, config, counter_component, counter_runtime, load, trapped};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};
use wasmlet_runtime::wasmtime;
use wasmlet_runtime::{
    Context, Entry, Error, HostCx, Invocation, LimitExceeded, Limits, LoadOptions, Runtime,
    RuntimeBuilder, Status, Val,
};

/// The calling thread's CPU time.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec, which `ts` is.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0);
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Spins on the calling thread until it has used `ms` milliseconds of CPU
/// time (whatever the machine's load).
fn spin(ms: u32) {
    let until = thread_cpu() + Duration::from_millis(ms.into());
    let mut x = 0u64;
    while thread_cpu() < until {
        x = std::hint::black_box(x.wrapping_add(1));
    }
}

/// A marker whose drop the test can observe (a context value must be
/// dropped with its invocation, whatever way it ended).
#[derive(Clone, Default)]
struct Alive(Arc<()>);

/// `builder` with `platform.panic` and `platform.panic_async`, which
/// panic when given anything but 0.
fn with_panics(builder: RuntimeBuilder) -> RuntimeBuilder {
    builder
        .host_func("platform", "panic", |_cx: HostCx<'_>, n: u32| -> u32 {
            panic!("host function panicked on purpose ({n})")
        })
        .host_func_async(
            "platform",
            "panic_async",
            |_cx: HostCx<'_>, (n,): (u32,)| {
                Box::new(async move {
                    tokio::task::yield_now().await;
                    if n > 0 {
                        panic!("async host function panicked on purpose ({n})");
                    }
                    n
                })
            },
        )
}

/// The platform under attack.
fn platform() -> Runtime {
    with_panics(RuntimeBuilder::new(config()))
        .host_func(
            "platform",
            "probe",
            |mut cx: HostCx<'_>, ptr: u32, len: u32| -> wasmtime::Result<u32> {
                Ok(cx.read(ptr, len)?.len() as u32)
            },
        )
        .host_func(
            "platform",
            "poke",
            |mut cx: HostCx<'_>, ptr: u32, byte: u32| -> wasmtime::Result<()> {
                cx.write(ptr, &[byte as u8])?;
                Ok(())
            },
        )
        .host_func("platform", "spin", |_cx: HostCx<'_>, ms: u32| spin(ms))
        .host_func_async(
            "platform",
            "spin_async",
            |_cx: HostCx<'_>, (ms,): (u32,)| Box::new(async move { spin(ms) }),
        )
        .host_func_async("platform", "hang", |_cx: HostCx<'_>, ()| {
            Box::new(std::future::pending::<()>())
        })
        .host_func("platform", "noop", |_cx: HostCx<'_>| {})
        .host_func("platform", "stash", |mut cx: HostCx<'_>, v: u32| -> u32 {
            // Returns what an earlier call of this invocation stashed.
            cx.context_mut().insert(v).unwrap_or(u32::MAX)
        })
        .host_func_async(
            "platform",
            "call_back",
            |mut cx: HostCx<'_>, (x,): (i32,)| {
                Box::new(async move {
                    let caller = cx.caller();
                    let cb = caller
                        .get_export("cb")
                        .and_then(wasmtime::Extern::into_func)
                        .ok_or_else(|| wasmtime::Error::msg("the guest exports no `cb`"))?;
                    let cb = cb.typed::<i32, i32>(&*caller)?;
                    cb.call_async(&mut *caller, x).await
                })
            },
        )
        .host_func(
            "platform",
            "call_back_sync",
            |mut cx: HostCx<'_>, x: i32| -> wasmtime::Result<i32> {
                let caller = cx.caller();
                let cb = caller
                    .get_export("cb")
                    .and_then(wasmtime::Extern::into_func)
                    .ok_or_else(|| wasmtime::Error::msg("the guest exports no `cb`"))?;
                cb.typed::<i32, i32>(&*caller)?.call(&mut *caller, x)
            },
        )
        .build()
        .unwrap()
}

/// An invocation with the default limits changed by `set`.
fn limited(set: impl FnOnce(&mut Limits)) -> Invocation {
    let mut limits = Limits::default();
    set(&mut limits);
    Invocation {
        limits: Some(limits),
        ..Default::default()
    }
}

const PROBE: &str = r#"(module
  (import "platform" "probe" (func $probe (param i32 i32) (result i32)))
  (import "platform" "poke" (func $poke (param i32 i32)))
  (memory (export "memory") 1 3)
  (func (export "probe") (param i32 i32) (result i32) (call $probe (local.get 0) (local.get 1)))
  (func (export "grow_and_poke") (param i32) (result i32)
    (drop (memory.grow (i32.const 1)))
    (call $poke (local.get 0) (i32.const 42))
    (i32.load8_u (local.get 0))))"#;

#[test]
fn attack_pointer_and_length_edges_are_bounds_checked() {
    let rt = platform();
    let f = load(&rt, PROBE);
    let probe = f.typed::<(u32, u32), u32>("probe").unwrap();
    // In bounds, up to the last byte; an empty read at the very end.
    for (ptr, len) in [(0, 65536), (65535, 1), (65536, 0), (0, 0)] {
        let out = probe.invoke((ptr, len), Invocation::default()).unwrap();
        assert_eq!(out.results, Some(len), "({ptr}, {len}): {:?}", out.status);
    }
    // Past the end, and sums that wrap around in 32 bits (a u32 addition
    // would see 1 + 0xffffffff as 0).
    for (ptr, len) in [
        (65537, 0),
        (0, 65537),
        (65536, 1),
        (1, u32::MAX),
        (u32::MAX, 1),
        (0x8000_0000, 0x8000_0000),
        (u32::MAX, u32::MAX),
        (0x10, u32::MAX - 0x0f),
    ] {
        let out = probe.invoke((ptr, len), Invocation::default()).unwrap();
        let msg = trapped(&out.status);
        assert!(
            msg.contains("guest memory access out of bounds")
                && msg.contains(&format!("{ptr:#x}"))
                && msg.contains("65536 bytes"),
            "({ptr:#x}, {len}): {msg}"
        );
        assert!(out.results.is_none());
    }
}

#[test]
fn attack_memory_grown_by_the_guest_is_seen_by_the_next_host_call() {
    let rt = platform();
    let f = load(&rt, PROBE);
    // Before growing, the second page is out of bounds for the host...
    let probe = f.typed::<(u32, u32), u32>("probe").unwrap();
    let out = probe
        .invoke((65536 + 100, 1), Invocation::default())
        .unwrap();
    assert!(trapped(&out.status).contains("out of bounds"));
    // ...after `memory.grow` in the same invocation, it is in bounds.
    let grow = f.typed::<u32, u32>("grow_and_poke").unwrap();
    let out = grow.invoke(65536 + 100, Invocation::default()).unwrap();
    assert_eq!(out.results, Some(42), "{:?}", out.status);
    // A growth refused by the memory limit leaves it out of bounds: the
    // failure is reported as the memory limit that caused it.
    let out = grow
        .invoke(65536 + 100, limited(|l| l.max_memory = 65536))
        .unwrap();
    assert!(
        matches!(
            out.status,
            Status::LimitExceeded(LimitExceeded::Memory(65536))
        ),
        "{:?}",
        out.status
    );
    // Each invocation starts from the module's own memory size again.
    let out = probe
        .invoke((65536 + 100, 1), Invocation::default())
        .unwrap();
    assert!(trapped(&out.status).contains("out of bounds"));
}

#[test]
fn attack_memory_missing_renamed_or_not_a_memory_is_a_clear_trap() {
    let rt = platform();
    for (what, exports) in [
        ("no memory at all", ""),
        ("memory exported as `mem`", r#"(memory (export "mem") 1)"#),
        ("unexported memory", "(memory 1)"),
        (
            "a global exported as `memory`",
            r#"(global (export "memory") i32 (i32.const 0))"#,
        ),
        (
            "a function exported as `memory`",
            r#"(func (export "memory"))"#,
        ),
    ] {
        let wat = format!(
            r#"(module (import "platform" "probe" (func $probe (param i32 i32) (result i32)))
                 {exports}
                 (func (export "run") (result i32) (call $probe (i32.const 0) (i32.const 1))))"#
        );
        let f = load(&rt, &wat);
        let out = f
            .typed::<(), u32>("run")
            .unwrap()
            .invoke((), Invocation::default())
            .unwrap();
        assert!(
            trapped(&out.status).contains("the guest exports no memory named `memory`"),
            "{what}: {:?}",
            out.status
        );
    }
}

#[test]
fn attack_with_two_memories_the_host_uses_the_one_exported_as_memory() {
    let mut cfg = config();
    cfg.pool.memories_per_module = 2;
    let rt = RuntimeBuilder::new(cfg)
        .host_func(
            "platform",
            "probe",
            |mut cx: HostCx<'_>, ptr: u32, len: u32| -> wasmtime::Result<u32> {
                Ok(cx.read(ptr, len)?.iter().map(|&b| u32::from(b)).sum())
            },
        )
        .build()
        .unwrap();
    let f = load(
        &rt,
        r#"(module (import "platform" "probe" (func $probe (param i32 i32) (result i32)))
             (memory $a 4)
             (memory $b (export "memory") 1)
             (data (memory $a) (i32.const 0) "\01\01")
             (data (memory $b) (i32.const 0) "\07\07")
             (func (export "run") (param i32) (result i32)
               (call $probe (local.get 0) (i32.const 2))))"#,
    );
    let run = f.typed::<u32, u32>("run").unwrap();
    assert_eq!(
        run.invoke(0, Invocation::default()).unwrap().results,
        Some(14)
    );
    // The bounds are those of `memory` (one page), not of the larger one.
    let out = run.invoke(65536, Invocation::default()).unwrap();
    assert!(trapped(&out.status).contains("65536 bytes"));
}

const PANICS: &str = r#"(module
  (import "platform" "panic" (func $panic (param i32) (result i32)))
  (import "platform" "panic_async" (func $panic_async (param i32) (result i32)))
  (func (export "run") (param i32) (result i32) (call $panic (local.get 0)))
  (func (export "run_async") (param i32) (result i32) (call $panic_async (local.get 0))))"#;

fn assert_panic_trap(status: &Status, what: &str) {
    let msg = trapped(status);
    assert!(
        msg.contains("panicked") && msg.contains("on purpose"),
        "{what}: {msg}"
    );
}

#[test]
fn attack_a_panicking_host_function_is_a_trap_and_the_runtime_lives_on() {
    let rt = platform();
    let f = load(&rt, PANICS);
    let alive = Alive::default();
    for export in ["run", "run_async"] {
        let typed = f.typed::<u32, u32>(export).unwrap();
        // On the calling thread, twice: the thread's executor is not
        // poisoned by the first.
        for _ in 0..2 {
            let out = typed
                .invoke(
                    1,
                    Invocation {
                        context: Context::new().with(alive.clone()),
                        ..Default::default()
                    },
                )
                .unwrap();
            assert_panic_trap(&out.status, export);
            assert!(out.results.is_none());
        }
        // Through the untyped call too.
        let out = f
            .invoke(Invocation {
                entry: Entry::Export {
                    name: export.into(),
                    params: vec![Val::I32(2)],
                },
                ..Default::default()
            })
            .unwrap();
        assert_panic_trap(&out.status, export);
        // The same runtime and thread go on serving.
        let out = typed.invoke(0, Invocation::default()).unwrap();
        if export == "run_async" {
            assert_eq!(out.results, Some(0), "{:?}", out.status);
        }
    }
    // The panicking invocations' contexts were dropped with them.
    assert_eq!(Arc::strong_count(&alive.0), 1);

    // From async code, concurrently with well-behaved invocations.
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let typed = f.typed::<u32, u32>("run_async").unwrap();
    let results = tokio.block_on(async {
        let tasks: Vec<_> = (0..16u32)
            .map(|i| {
                let typed = typed.clone();
                tokio::spawn(async move {
                    typed
                        .invoke_async(i % 2, Invocation::default())
                        .await
                        .unwrap()
                })
            })
            .collect();
        let mut results = Vec::new();
        for t in tasks {
            results.push(t.await.expect("the task did not panic"));
        }
        results
    });
    for (i, out) in results.iter().enumerate() {
        if i % 2 == 0 {
            assert_eq!(out.results, Some(0), "{:?}", out.status);
        } else {
            assert_panic_trap(&out.status, "invoke_async");
        }
    }
    // A synchronous invoke from inside a tokio runtime (on a helper thread).
    let sync = f.typed::<u32, u32>("run").unwrap();
    let out = tokio.block_on(async { sync.invoke(3, Invocation::default()).unwrap() });
    assert_panic_trap(&out.status, "invoke inside tokio");
}

#[test]
fn attack_panics_do_not_leak_pool_slots() {
    let mut cfg = config();
    cfg.pool.instances = 2;
    let rt = with_panics(RuntimeBuilder::new(cfg)).build().unwrap();
    let f = load(&rt, PANICS);
    // Ten times the pool's size: a slot or stack kept by a panicking
    // invocation would soon make every invocation `PoolFull`.
    for export in ["run", "run_async"] {
        let typed = f.typed::<u32, u32>(export).unwrap();
        for i in 1..=20 {
            let out = typed.invoke(i, Invocation::default()).unwrap();
            assert_panic_trap(&out.status, export);
        }
    }
    let out = f
        .typed::<u32, u32>("run_async")
        .unwrap()
        .invoke(0, Invocation::default())
        .unwrap();
    assert_eq!(out.results, Some(0), "{:?}", out.status);
}

#[test]
fn attack_async_host_functions_hanging_past_the_timeout_under_invoke_async() {
    let rt = platform();
    let f = load(&rt, HANG);
    let run = f.typed::<(), ()>("run").unwrap();
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let alive = Alive::default();
    let started = Instant::now();
    let outs = tokio.block_on(async {
        let tasks: Vec<_> = (0..32)
            .map(|_| {
                let (run, alive) = (run.clone(), alive.clone());
                tokio::spawn(async move {
                    run.invoke_async(
                        (),
                        Invocation {
                            limits: Some(Limits {
                                timeout: Some(Duration::from_millis(100)),
                                ..Limits::default()
                            }),
                            context: Context::new().with(alive),
                            ..Default::default()
                        },
                    )
                    .await
                    .unwrap()
                })
            })
            .collect();
        let mut outs = Vec::new();
        for t in tasks {
            outs.push(t.await.unwrap());
        }
        outs
    });
    assert!(started.elapsed() < Duration::from_secs(20));
    for out in outs {
        assert!(
            matches!(out.status, Status::LimitExceeded(LimitExceeded::Timeout(_))),
            "{:?}",
            out.status
        );
        assert!(out.usage.wall_time >= Duration::from_millis(100));
    }
    assert_eq!(Arc::strong_count(&alive.0), 1, "a hung context leaked");
    // With a CPU-time limit only, a waiting host function costs no CPU: it
    // is not stopped by that limit (only a wall-clock timeout stops it).
    let out = tokio
        .block_on(async {
            tokio::time::timeout(
                Duration::from_millis(300),
                run.invoke_async(
                    (),
                    limited(|l| l.cpu_time = Some(Duration::from_millis(20))),
                ),
            )
            .await
        })
        .err();
    assert!(out.is_some(), "a waiting host call was charged CPU time");
}

#[test]
fn attack_dropping_an_invocation_inside_a_host_call_frees_everything() {
    let mut cfg = config();
    cfg.pool.instances = 2;
    let rt = RuntimeBuilder::new(cfg)
        .host_func_async("platform", "hang", |_cx: HostCx<'_>, ()| {
            Box::new(std::future::pending::<()>())
        })
        .build()
        .unwrap();
    let f = load(&rt, HANG);
    let run = f.typed::<(), ()>("run").unwrap();
    let tokio = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let alive = Alive::default();
    // The embedder gives up on invocations (no limits of their own) ten
    // times the pool's size: each drop must free its slot, stack, permit
    // and context.
    for _ in 0..20 {
        let inv = Invocation {
            context: Context::new().with(alive.clone()),
            ..Default::default()
        };
        let waited = tokio.block_on(async {
            tokio::time::timeout(Duration::from_millis(5), run.invoke_async((), inv)).await
        });
        assert!(waited.is_err(), "the hanging invocation finished");
    }
    assert_eq!(Arc::strong_count(&alive.0), 1, "a dropped context leaked");
    let ok = f.typed::<(), ()>("ok").unwrap();
    let out = tokio.block_on(ok.invoke_async((), Invocation::default()));
    assert!(out.unwrap().results.is_some());
    assert!(
        ok.invoke((), Invocation::default())
            .unwrap()
            .results
            .is_some()
    );
}

/// The callee of a host function that runs another function (function
/// composition by the platform).
struct Callee(wasmlet_runtime::TypedFunction<u32, u32>);

#[test]
fn attack_host_functions_invoking_other_functions() {
    let rt = RuntimeBuilder::new(config())
        .host_func(
            "platform",
            "nested",
            |cx: HostCx<'_>, x: u32| -> wasmtime::Result<u32> {
                let callee = cx
                    .context()
                    .get::<Callee>()
                    .ok_or_else(|| wasmtime::Error::msg("no callee"))?;
                let out = callee.0.invoke(x, Invocation::default())?;
                Ok(out.into_result()?)
            },
        )
        .host_func_async(
            "platform",
            "nested_async",
            |cx: HostCx<'_>, (x,): (u32,)| {
                Box::new(async move {
                    let callee = cx
                        .context()
                        .get::<Callee>()
                        .ok_or_else(|| wasmtime::Error::msg("no callee"))?;
                    let out = callee.0.invoke_async(x, Invocation::default()).await?;
                    Ok(out.into_result()?)
                })
            },
        )
        .build()
        .unwrap();
    let callee = load(
        &rt,
        r#"(module (func (export "double") (param i32) (result i32)
             (if (i32.eqz (local.get 0)) (then unreachable))
             (i32.mul (local.get 0) (i32.const 2))))"#,
    );
    let callee = callee.typed::<u32, u32>("double").unwrap();
    let caller = load(
        &rt,
        r#"(module (import "platform" "nested" (func $n (param i32) (result i32)))
                   (import "platform" "nested_async" (func $na (param i32) (result i32)))
             (func (export "sync") (param i32) (result i32) (call $n (local.get 0)))
             (func (export "async") (param i32) (result i32) (call $na (local.get 0))))"#,
    );
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    for export in ["sync", "async"] {
        let outer = caller.typed::<u32, u32>(export).unwrap();
        let inv = || Invocation {
            context: Context::new().with(Callee(callee.clone())),
            ..Default::default()
        };
        let out = outer.invoke(21, inv()).unwrap();
        assert_eq!(out.results, Some(42), "{export}: {:?}", out.status);
        let out = tokio.block_on(outer.invoke_async(21, inv())).unwrap();
        assert_eq!(out.results, Some(42), "{export}: {:?}", out.status);
        // The inner trap reaches the outer invocation as the host's error.
        let out = outer.invoke(0, inv()).unwrap();
        assert!(trapped(&out.status).contains("unreachable"), "{export}");
    }
}

#[test]
fn attack_host_functions_calling_back_into_the_guest() {
    let rt = platform();
    let f = load(
        &rt,
        r#"(module
          (import "platform" "call_back" (func $call_back (param i32) (result i32)))
          (import "platform" "call_back_sync" (func $call_back_sync (param i32) (result i32)))
          (global $depth (mut i32) (i32.const 0))
          ;; cb(x): x + 1, recursing through the host while x < 0.
          (func (export "cb") (param i32) (result i32)
            (if (i32.eq (local.get 0) (i32.const 7777)) (then (loop $forever (br $forever))))
            (global.set $depth (i32.add (global.get $depth) (i32.const 1)))
            (if (result i32) (i32.lt_s (local.get 0) (i32.const 0))
              (then (call $call_back (i32.add (local.get 0) (i32.const 1))))
              (else (i32.add (local.get 0) (i32.const 1)))))
          (func (export "run") (param i32) (result i32) (call $call_back (local.get 0)))
          (func (export "depth") (param i32) (result i32)
            (drop (call $call_back (local.get 0))) (global.get $depth))
          (func (export "run_sync") (param i32) (result i32) (call $call_back_sync (local.get 0))))"#,
    );
    // One level: the async host function calls the guest back.
    let run = f.typed::<i32, i32>("run").unwrap();
    assert_eq!(
        run.invoke(41, Invocation::default()).unwrap().results,
        Some(42)
    );
    // Twenty levels of guest -> host -> guest (each nested call runs on a
    // fiber stack of its own, from the pool).
    let depth = f.typed::<i32, i32>("depth").unwrap();
    let out = depth.invoke(-20, Invocation::default()).unwrap();
    assert_eq!(out.results, Some(21), "{:?}", out.status);
    // Unbounded recursion through the host runs out of the pool's stacks:
    // the documented limit, not a crash of the process...
    let out = run.invoke(i32::MIN, Invocation::default()).unwrap();
    assert!(
        matches!(
            out.status,
            Status::LimitExceeded(LimitExceeded::PoolFull(_))
        ),
        "{:?}",
        out.status
    );
    // ...and the stacks are all back afterwards.
    for _ in 0..3 {
        let out = depth.invoke(-20, Invocation::default()).unwrap();
        assert_eq!(out.results, Some(21), "{:?}", out.status);
    }
    // A guest called back that never returns is stopped by the timeout.
    let out = run
        .invoke(
            7777,
            limited(|l| l.timeout = Some(Duration::from_millis(100))),
        )
        .unwrap();
    assert!(
        matches!(out.status, Status::LimitExceeded(LimitExceeded::Timeout(_))),
        "{:?}",
        out.status
    );
    // A synchronous host function cannot call the guest synchronously (the
    // store is async): a trap saying so.
    let out = f
        .typed::<i32, i32>("run_sync")
        .unwrap()
        .invoke(1, Invocation::default())
        .unwrap();
    let msg = trapped(&out.status);
    assert!(msg.contains("async"), "{msg}");
    // And the runtime is fine afterwards.
    assert_eq!(
        run.invoke(1, Invocation::default()).unwrap().results,
        Some(2)
    );
}

#[test]
fn attack_import_signature_mismatch_is_a_load_error_naming_both() {
    let rt = platform();
    for (import, host) in [
        ("(func (param i64 i32) (result i32))", "(i32, i32) -> (i32)"),
        ("(func (param i32 i32))", "(i32, i32) -> (i32)"),
        (
            "(func (param i32 i32) (result i32 i32))",
            "(i32, i32) -> (i32)",
        ),
    ] {
        let wat = format!(r#"(module (import "platform" "probe" {import}))"#);
        let err = rt
            .load_bytes(wat.as_bytes(), &LoadOptions::default())
            .unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, Error::Link(_)), "{msg}");
        assert!(
            msg.contains("platform") && msg.contains("probe") && !msg.contains('\n'),
            "{msg}"
        );
        let _ = host;
        assert!(msg.contains("expected") && msg.contains("found"), "{msg}");
    }
    // Importing a host function as something else (a global, a memory).
    for import in ["(global i32)", "(memory 1)", "(table 1 funcref)"] {
        let wat = format!(r#"(module (import "platform" "noop" {import}))"#);
        let err = rt
            .load_bytes(wat.as_bytes(), &LoadOptions::default())
            .unwrap_err();
        assert!(err.to_string().contains("platform"), "{import}: {err}");
        assert!(!err.to_string().contains('\n'), "{err}");
    }
}

#[test]
fn attack_clashing_registrations_are_build_errors() {
    // The same name, once sync and once async.
    let err = RuntimeBuilder::new(config())
        .host_func("platform", "x", |_cx: HostCx<'_>| {})
        .host_func_async("platform", "x", |_cx: HostCx<'_>, ()| Box::new(async {}))
        .build()
        .err()
        .expect("a duplicate must not build");
    assert!(
        matches!(&err, Error::Config(m) if m.contains("platform::x")),
        "{err}"
    );
    // An async one shadowing WASI.
    let err = RuntimeBuilder::new(config())
        .host_func_async(
            "wasi_snapshot_preview1",
            "proc_exit",
            |_cx: HostCx<'_>, (_code,): (i32,)| Box::new(async {}),
        )
        .build()
        .err()
        .expect("shadowing WASI must not build");
    assert!(
        err.to_string()
            .contains("wasi_snapshot_preview1::proc_exit"),
        "{err}"
    );
    // A raw linker definition clashing with a host function names itself.
    let err = RuntimeBuilder::new(config())
        .host_func("platform", "x", |_cx: HostCx<'_>| {})
        .linker("the platform's globals", |linker| {
            linker.func_wrap("platform", "x", || {})?;
            Ok(())
        })
        .build()
        .err()
        .expect("a duplicate must not build");
    assert!(
        err.to_string().contains("the platform's globals") && !err.to_string().contains('\n'),
        "{err}"
    );
}

#[test]
fn attack_fuel_is_spent_by_the_guest_between_host_calls() {
    let mut cfg = config();
    cfg.fuel_metering = true;
    let rt = RuntimeBuilder::new(cfg)
        .host_func("platform", "noop", |_cx: HostCx<'_>| {})
        .build()
        .unwrap();
    let f = load(
        &rt,
        r#"(module (import "platform" "noop" (func $noop))
             (func (export "run") (param i32) (local $i i32)
               (loop $l
                 (call $noop)
                 (local.set $i (i32.add (local.get $i) (i32.const 1)))
                 (br_if $l (i32.lt_u (local.get $i) (local.get 0))))))"#,
    );
    let run = f.typed::<u32, ()>("run").unwrap();
    let out = run.invoke(1000, Invocation::default()).unwrap();
    assert!(out.results.is_some(), "{:?}", out.status);
    let per_1000 = out.usage.fuel_consumed.unwrap();
    assert!(per_1000 >= 1000, "{per_1000}");
    // A loop of host calls cannot escape a fuel limit.
    let out = run
        .invoke(u32::MAX, limited(|l| l.fuel = Some(per_1000 * 10)))
        .unwrap();
    assert!(
        matches!(out.status, Status::LimitExceeded(LimitExceeded::Fuel(_))),
        "{:?}",
        out.status
    );
    assert!(out.results.is_none());
}

const SPINS: &str = r#"(module
  (import "platform" "spin" (func $spin (param i32)))
  (import "platform" "spin_async" (func $spin_async (param i32)))
  (func (export "spin") (param i32) (call $spin (local.get 0)))
  (func (export "spin_async") (param i32) (call $spin_async (local.get 0))))"#;

#[test]
fn attack_cpu_spent_in_host_functions_is_charged_to_the_invocation() {
    let rt = platform();
    let f = load(&rt, SPINS);
    for export in ["spin", "spin_async"] {
        let out = f
            .typed::<u32, ()>(export)
            .unwrap()
            .invoke(60, Invocation::default())
            .unwrap();
        assert!(out.results.is_some(), "{:?}", out.status);
        // Spinning is CPU time, and so wall time.
        assert!(
            out.usage.cpu_time >= Duration::from_millis(60)
                && out.usage.wall_time >= out.usage.cpu_time,
            "{export}: {:?}",
            out.usage
        );
    }
}

#[test]
fn attack_a_cpu_limit_overrun_inside_a_host_function_is_reported() {
    let rt = platform();
    let f = load(&rt, SPINS);
    for export in ["spin", "spin_async"] {
        let spin = f.typed::<u32, ()>(export).unwrap();
        // The guest returns right after the host call: no epoch check in
        // the guest sees the overrun, only the host call's own return.
        let out = spin
            .invoke(
                200,
                limited(|l| l.cpu_time = Some(Duration::from_millis(30))),
            )
            .unwrap();
        assert!(out.usage.cpu_time >= Duration::from_millis(200));
        assert!(
            matches!(out.status, Status::LimitExceeded(LimitExceeded::CpuTime(_))),
            "{export}: {:?} after {:?}",
            out.status,
            out.usage
        );
        assert!(out.results.is_none());
    }
}

#[test]
fn attack_contexts_do_not_outlive_or_leak_between_invocations() {
    let rt = platform();
    let f = load(
        &rt,
        r#"(module (import "platform" "stash" (func $stash (param i32) (result i32)))
             (func (export "run") (param i32) (result i32)
               (drop (call $stash (local.get 0)))
               (call $stash (local.get 0))))"#,
    );
    let run = f.typed::<u32, u32>("run").unwrap();
    // What a host function put in one invocation's context is gone in the
    // next: the first `stash` of each invocation finds nothing...
    let first = f
        .typed::<u32, u32>("run")
        .unwrap()
        .invoke(7, Invocation::default())
        .unwrap();
    assert_eq!(first.results, Some(7));
    let f2 = load(
        &rt,
        r#"(module (import "platform" "stash" (func $stash (param i32) (result i32)))
             (func (export "run") (param i32) (result i32) (call $stash (local.get 0))))"#,
    );
    let once = f2.typed::<u32, u32>("run").unwrap();
    for v in 0..3 {
        let out = once.invoke(v, Invocation::default()).unwrap();
        assert_eq!(out.results, Some(u32::MAX), "invocation {v} saw a stash");
    }
    // ...and, from 64 threads at once, each invocation sees only its own.
    let threads: Vec<_> = (0..64u32)
        .map(|i| {
            let run = run.clone();
            std::thread::spawn(move || {
                for _ in 0..10 {
                    let out = run
                        .invoke(
                            i,
                            Invocation {
                                context: Context::new().with(i),
                                ..Default::default()
                            },
                        )
                        .unwrap();
                    assert_eq!(out.results, Some(i), "{:?}", out.status);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

#[test]
fn attack_typed_calls_on_what_is_not_a_function() {
    let rt = platform();
    let f = load(
        &rt,
        r#"(module (memory (export "mem") 1) (global (export "g") i32 (i32.const 1))
             (table (export "t") 1 funcref)
             (func (export "simd") (param v128))
             (func (export "refs") (param externref) (result funcref) (ref.null func))
             (func (export "pair") (result i32 i64) (i32.const 1) (i64.const 2)))"#,
    );
    for name in ["mem", "g", "t", "missing", ""] {
        let err = f.typed::<(), ()>(name).unwrap_err();
        assert!(
            matches!(&err, Error::Entry(m) if m.contains(&format!("no exported function `{name}`"))),
            "{name}: {err}"
        );
    }
    // Types a typed call cannot carry are refused at `typed`, naming them.
    let msg = f.typed::<i32, ()>("simd").unwrap_err().to_string();
    assert!(
        msg.contains("(v128) -> ()") && msg.contains("(i32) -> ()"),
        "{msg}"
    );
    let msg = f.typed::<i64, i32>("refs").unwrap_err().to_string();
    assert!(
        msg.contains("((ref null extern)) -> ((ref null func))") && msg.contains("(i64) -> (i32)"),
        "{msg}"
    );
    // Results of the wrong arity or order.
    for err in [
        f.typed::<(), i32>("pair").unwrap_err(),
        f.typed::<(), (i64, i32)>("pair").unwrap_err(),
        f.typed::<(), (i32, i64, i32)>("pair").unwrap_err(),
    ] {
        assert!(err.to_string().contains("() -> (i32, i64)"), "{err}");
    }
    let pair = f.typed::<(), (i32, i64)>("pair").unwrap();
    assert_eq!(
        pair.invoke((), Invocation::default()).unwrap().results,
        Some((1, 2))
    );
}

#[test]
fn attack_typed_calls_carry_every_scalar_exactly() {
    let rt = platform();
    let f = load(
        &rt,
        r#"(module (func (export "swap") (param i32 i64 f32 f64) (result f64 f32 i64 i32)
             (local.get 3) (local.get 2) (local.get 1) (local.get 0)))"#,
    );
    let swap = f
        .typed::<(u32, u64, f32, f64), (f64, f32, u64, u32)>("swap")
        .unwrap();
    let nan = f32::from_bits(0x7fc0_0001);
    let out = swap
        .invoke((u32::MAX, u64::MAX, nan, -0.0), Invocation::default())
        .unwrap();
    let (d, s, l, i) = out.results.unwrap();
    assert_eq!((i, l), (u32::MAX, u64::MAX));
    assert_eq!(s.to_bits(), nan.to_bits(), "a NaN payload changed");
    assert_eq!(d.to_bits(), (-0.0f64).to_bits());
    // Signed and unsigned views of one wasm type are both accepted.
    let signed = f
        .typed::<(i32, i64, f32, f64), (f64, f32, i64, i32)>("swap")
        .unwrap();
    let (_, _, l, i) = signed
        .invoke((-1, -1, 0.0, 0.0), Invocation::default())
        .unwrap()
        .results
        .unwrap();
    assert_eq!((i, l), (-1, -1));
}

#[test]
fn attack_limits_and_exits_through_typed_calls() {
    let mut cfg = config();
    cfg.fuel_metering = true;
    let rt = Runtime::new(cfg).unwrap();
    let f = load(
        &rt,
        r#"(module
          (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
          (memory (export "memory") 1)
          (func (export "forever") (result i32) (loop $l (br $l)) (i32.const 0))
          (func (export "grow") (result i32) (memory.grow (i32.const 100)))
          (func (export "exit") (param i32) (result i32) (call $exit (local.get 0)) (i32.const 0))
          (func (export "recurse") (result i32) (call 4)))"#,
    );
    let forever = f.typed::<(), i32>("forever").unwrap();
    for (limits, want) in [
        (
            Limits {
                fuel: Some(100_000),
                ..Limits::default()
            },
            "fuel",
        ),
        (
            Limits {
                timeout: Some(Duration::from_millis(50)),
                ..Limits::default()
            },
            "timeout",
        ),
        (
            Limits {
                cpu_time: Some(Duration::from_millis(50)),
                ..Limits::default()
            },
            "cpu",
        ),
    ] {
        let out = forever.invoke((), limited(|l| *l = limits)).unwrap();
        let ok = matches!(
            (&out.status, want),
            (Status::LimitExceeded(LimitExceeded::Fuel(100_000)), "fuel")
                | (Status::LimitExceeded(LimitExceeded::Timeout(_)), "timeout")
                | (Status::LimitExceeded(LimitExceeded::CpuTime(_)), "cpu")
        );
        assert!(ok, "{want}: {:?}", out.status);
        assert!(out.results.is_none());
        assert!(matches!(out.into_result(), Err(Error::LimitExceeded(_))));
    }
    // A refused growth is the guest's -1, not an error.
    let out = f
        .typed::<(), i32>("grow")
        .unwrap()
        .invoke((), limited(|l| l.max_memory = 1 << 20))
        .unwrap();
    assert_eq!(out.results, Some(-1));
    // proc_exit from a typed call is an exit, with no results.
    let out = f
        .typed::<i32, i32>("exit")
        .unwrap()
        .invoke(7, Invocation::default())
        .unwrap();
    assert!(matches!(out.status, Status::Exited(7)), "{:?}", out.status);
    assert!(out.results.is_none());
    assert!(matches!(out.into_result(), Err(Error::Exit(7))));
    // Exiting with 0 is no result either: an exit, not "no results".
    let out = f
        .typed::<i32, i32>("exit")
        .unwrap()
        .invoke(0, Invocation::default())
        .unwrap();
    assert!(matches!(out.status, Status::Exited(0)), "{:?}", out.status);
    assert!(matches!(out.into_result(), Err(Error::Exit(0))));
    let out = f
        .typed::<(), i32>("recurse")
        .unwrap()
        .invoke((), Invocation::default())
        .unwrap();
    assert!(trapped(&out.status).contains("stack"), "{:?}", out.status);
}

#[test]
fn attack_typed_calls_on_a_component_are_refused() {
    let rt = Runtime::new(config()).unwrap();
    let path = crate::components::build::build_component(
        "hello",
        crate::components::build::Kind::Command,
        &crate::helpers::scratch().join("components"),
    );
    let f = rt.load_file(&path, &LoadOptions::default()).unwrap();
    let err = f.typed::<(), ()>("wasi:cli/run@0.2.0#run").unwrap_err();
    assert!(
        matches!(&err, Error::Entry(m) if m.contains("typed calls are for core modules")),
        "{err}"
    );
}

/// A component importing `import` and exporting nothing (linking fails or
/// passes before the world is looked at).
fn component_importing(import: &str, funcs: &str) -> String {
    format!(r#"(component (import "{import}" (instance {funcs})))"#)
}

#[test]
fn attack_components_importing_what_the_embedder_did_not_provide() {
    let rt = counter_runtime();
    let add = r#"(export "add" (func (param "n" u32) (result u32)))"#;
    // The interface as the embedder defined it links (and is then refused
    // for exporting no world wasmlet runs).
    let err = rt
        .load_bytes(
            component_importing("example:counter/counter", add).as_bytes(),
            &LoadOptions::default(),
        )
        .unwrap_err();
    assert!(
        matches!(&err, Error::Entry(m) if m.contains("exports neither")),
        "{err}"
    );
    // Other versions, other signatures, extra functions, other interfaces.
    for (import, funcs, needle) in [
        (
            "example:counter/counter@0.2.0",
            add,
            "example:counter/counter@0.2.0",
        ),
        (
            "example:counter/counter@1.0.0",
            add,
            "example:counter/counter@1.0.0",
        ),
        (
            "example:counter/counter",
            r#"(export "add" (func (param "n" u64) (result u32)))"#,
            "add",
        ),
        (
            "example:counter/counter",
            r#"(export "sub" (func (param "n" u32) (result u32)))"#,
            "sub",
        ),
        ("example:kv/store", add, "example:kv/store"),
        (
            "wasi:cli/environment@0.3.0",
            r#"(export "get-arguments" (func (result (list string))))"#,
            "wasi:cli/environment@0.3.0",
        ),
    ] {
        let err = rt
            .load_bytes(
                component_importing(import, funcs).as_bytes(),
                &LoadOptions::default(),
            )
            .unwrap_err();
        let msg = err.to_string();
        assert!(
            matches!(err, Error::Link(_)) && msg.contains(needle) && !msg.contains('\n'),
            "{import} {funcs}: {msg}"
        );
    }
    // A component host interface that panics: a trap, as for a module's
    // host function, and the runtime goes on.
    let f = rt
        .load_file(counter_component(), &LoadOptions::default())
        .unwrap();
    let out = f
        .invoke(Invocation {
            context: Context::new().with(PanicInHost),
            ..Default::default()
        })
        .unwrap();
    assert_panic_trap(&out.status, "component");
    // The next invocation gets the interface's ordinary error.
    let out = f.invoke(Invocation::default()).unwrap();
    assert!(trapped(&out.status).contains("no counter in the invocation's context"));
}

#[test]
fn attack_host_function_registered_with_more_params_than_supported_is_typed() {
    // Eight parameters is the most `host_func` takes; all of them arrive.
    let seen = Arc::new(AtomicU32::new(0));
    let s = seen.clone();
    let rt = RuntimeBuilder::new(config())
        .host_func(
            "platform",
            "eight",
            move |_cx: HostCx<'_>,
                  a: u32,
                  b: u32,
                  c: u32,
                  d: u32,
                  e: u32,
                  f: u32,
                  g: u32,
                  h: u32| {
                s.store(a + b + c + d + e + f + g + h, Ordering::SeqCst);
            },
        )
        .build()
        .unwrap();
    let f = load(
        &rt,
        r#"(module (import "platform" "eight" (func $e (param i32 i32 i32 i32 i32 i32 i32 i32)))
             (func (export "run") (call $e (i32.const 1) (i32.const 2) (i32.const 3) (i32.const 4)
                                          (i32.const 5) (i32.const 6) (i32.const 7) (i32.const 8))))"#,
    );
    let out = f
        .typed::<(), ()>("run")
        .unwrap()
        .invoke((), Invocation::default())
        .unwrap();
    assert!(out.results.is_some(), "{:?}", out.status);
    assert_eq!(seen.load(Ordering::SeqCst), 36);
}

#[test]
fn attack_snapshots_of_modules_importing_host_functions() {
    let mut cfg = config();
    cfg.snapshot = true;
    let rt = RuntimeBuilder::new(cfg)
        .host_func("platform", "answer", |_cx: HostCx<'_>| -> u32 { 42 })
        .build()
        .unwrap();
    // Init that does not call the host: the module is pre-initialized and
    // its exports call the host function as usual.
    let f = load(
        &rt,
        r#"(module (import "platform" "answer" (func $answer (result i32)))
             (global $g (mut i32) (i32.const 0))
             (func (export "_initialize") (global.set $g (i32.const 5)))
             (func (export "run") (result i32) (i32.add (global.get $g) (call $answer))))"#,
    );
    let out = f
        .typed::<(), u32>("run")
        .unwrap()
        .invoke((), Invocation::default())
        .unwrap();
    assert_eq!(out.results, Some(47), "{:?}", out.status);
    // Init that calls the host: refused at load, naming the import (host
    // functions are the invocations', not pre-initialization's).
    let err = rt
        .load_bytes(
            br#"(module (import "platform" "answer" (func $answer (result i32)))
                 (global $g (mut i32) (i32.const 0))
                 (func (export "_initialize") (global.set $g (call $answer))))"#,
            &LoadOptions::default(),
        )
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("platform::answer") && !msg.contains('\n'),
        "{msg}"
    );
    // An import nobody provides is still refused, as without snapshots.
    let err = rt
        .load_bytes(
            br#"(module (import "platform" "nope" (func))
                 (func (export "_initialize")))"#,
            &LoadOptions::default(),
        )
        .unwrap_err();
    assert!(err.to_string().contains("platform::nope"), "{err}");
}
