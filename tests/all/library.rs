//! The embedding API of `wasmlet-runtime`.

use crate::helpers::*;
use std::time::Duration;
use wasmlet_runtime::{
    Entry, Error, Input, Invocation, LimitExceeded, Limits, LoadOptions, Output, Runtime,
    RuntimeConfig, Status, Val,
};

#[test]
fn stdio_is_captured_or_given() {
    let rt = runtime();
    let hello = rt
        .load_file(c_guest("hello"), &LoadOptions::default())
        .unwrap();
    let o = hello
        .invoke(Invocation {
            args: vec!["hello".into(), "a".into()],
            env: vec![("GREETING".into(), "hey".into())],
            stdin: Input::Bytes(vec![7u8; 1234].into()),
            ..Default::default()
        })
        .unwrap();
    assert!(o.success());
    let out = stdout_of(&o);
    assert!(out.contains("arg[1]=a\nGREETING=hey\n"), "{out}");
    assert!(out.contains("stdin bytes=1234"));
    assert_eq!(o.stderr.as_deref(), Some(&b"this goes to stderr\n"[..]));

    // Streams to files, or discarded.
    let dir = tempdir();
    let path = dir.path().join("out.txt");
    let o = hello
        .invoke(Invocation {
            stdout: Output::File(std::fs::File::create(&path).unwrap()),
            stderr: Output::Null,
            ..Default::default()
        })
        .unwrap();
    assert!(o.stdout.is_none() && o.stderr.is_none());
    assert!(
        std::fs::read_to_string(&path)
            .unwrap()
            .contains("hello from wasm")
    );
}

#[test]
fn captured_output_is_capped() {
    let rt = runtime();
    let f = load_wat(&rt, HELLO_WAT);
    let o = f
        .invoke(Invocation {
            limits: Some(Limits {
                max_captured_output: 3,
                ..Limits::default()
            }),
            ..Default::default()
        })
        .unwrap();
    assert!(o.stdout.unwrap().len() <= 3);
}

#[test]
fn reactor_exports_run_after_initialize() {
    for (mode, rt) in runtimes() {
        eprintln!("mode: {mode}");
        let f = load_wat(&rt, TOOLS_WAT);
        assert!(!f.is_command());
        // A snapshot has already run `_initialize`, so no longer exports it.
        assert_eq!(
            f.module().unwrap().get_export("_initialize").is_some(),
            mode == "plain"
        );
        let o = call(&f, "initialized", vec![]);
        assert!(matches!(&o.status, Status::Returned(v) if matches!(v[..], [Val::I32(1)])));
        let o = call(&f, "add", vec![Val::I32(20), Val::I32(22)]);
        assert!(matches!(&o.status, Status::Returned(v) if matches!(v[..], [Val::I32(42)])));
        // Wrong argument types are refused before anything runs.
        let e = f
            .invoke(Invocation {
                entry: Entry::Export {
                    name: "add".into(),
                    params: vec![Val::I64(1), Val::I32(2)],
                },
                ..Default::default()
            })
            .unwrap_err();
        assert!(matches!(e, Error::Entry(_)), "{e}");
    }
}

#[test]
fn outcome_into_result_is_typed() {
    for (mode, rt) in runtimes() {
        eprintln!("mode: {mode}");
        let f = load_wat(&rt, TOOLS_WAT);
        assert!(
            matches!(call(&f, "boom", vec![]).into_result(), Err(Error::Trap(m)) if m.contains("unreachable"))
        );
        assert!(matches!(
            call(&f, "exit", vec![Val::I32(9)]).into_result(),
            Err(Error::Exit(9))
        ));
        let o = f
            .invoke(Invocation {
                entry: Entry::Export {
                    name: "grow".into(),
                    params: vec![],
                },
                limits: Some(Limits {
                    max_memory: 1 << 20,
                    ..Limits::default()
                }),
                ..Default::default()
            })
            .unwrap();
        assert!(matches!(
            o.into_result(),
            Err(Error::LimitExceeded(LimitExceeded::Memory(_)))
        ));
        assert!(
            call(&f, "add", vec![Val::I32(1), Val::I32(2)])
                .into_result()
                .is_ok()
        );
    }
}

#[test]
fn load_errors_are_typed() {
    let rt = runtime();
    let opts = LoadOptions::default();
    assert!(matches!(
        rt.load_bytes(b"junk", &opts),
        Err(Error::NotWasm(_))
    ));
    assert!(matches!(
        rt.load_bytes(b"(module (func (i32.add)))", &opts),
        Err(Error::Compile(_))
    ));
    assert!(matches!(
        rt.load_bytes(br#"(module (import "x" "y" (func)))"#, &opts),
        Err(Error::UnknownImports(v)) if v == ["x::y"]
    ));
    // Artifacts from this runtime load; from a differently configured one, not.
    let artifact = rt.precompile(HELLO_WAT.as_bytes()).unwrap();
    assert!(matches!(
        rt.load_bytes(&artifact, &opts),
        Err(Error::Artifact(wasmlet_runtime::ArtifactError::NotAllowed))
    ));
    let opts = LoadOptions {
        allow_precompiled: true,
        ..LoadOptions::default()
    };
    let f = rt.load_bytes(&artifact, &opts).unwrap();
    assert_eq!(
        stdout_of(&f.invoke(Invocation::default()).unwrap()),
        "hello\n"
    );
    let fuel_rt = runtime_with(|c| c.fuel_metering = true);
    assert!(matches!(
        fuel_rt.load_bytes(&artifact, &opts),
        Err(Error::Artifact(
            wasmlet_runtime::ArtifactError::EngineMismatch
        ))
    ));
}

#[test]
fn runtime_from_toml_config() {
    let config: RuntimeConfig = toml::from_str(
        r#"
        epoch_tick = "2ms"
        [pool]
        instances = 4
        [cache]
        enabled = false
        [limits]
        max_memory = 1048576
        cpu_time = "20ms"
        "#,
    )
    .unwrap();
    let rt = Runtime::new(config).unwrap();
    let f = load_wat(&rt, TOOLS_WAT);
    assert_eq!(f.limits().max_memory, 1 << 20);
    let o = call(&f, "spin", vec![]);
    assert!(matches!(
        o.status,
        Status::LimitExceeded(LimitExceeded::CpuTime(_))
    ));

    let bad = RuntimeConfig {
        limits: Limits {
            max_memory: 8 << 30,
            ..Limits::default()
        },
        ..RuntimeConfig::default()
    };
    assert!(matches!(Runtime::new(bad), Err(Error::Config(_))));
}

/// Writes 16 chunks of 64 KiB to stdout, chunk `k` all bytes `k`, each
/// with as many `fd_write` calls as it takes; traps if a write fails.
const CHUNKS_OUT: &str = r#"(module
  (import "wasi_snapshot_preview1" "fd_write" (func $w (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 2)
  (func (export "_start") (local $k i32) (local $off i32) (local $left i32)
    (loop $chunks
      (memory.fill (i32.const 1024) (local.get $k) (i32.const 65536))
      (local.set $off (i32.const 1024))
      (local.set $left (i32.const 65536))
      (block $done (loop $part
        (br_if $done (i32.eqz (local.get $left)))
        (i32.store (i32.const 0) (local.get $off))
        (i32.store (i32.const 4) (local.get $left))
        (if (call $w (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)) (then unreachable))
        (local.set $off (i32.add (local.get $off) (i32.load (i32.const 8))))
        (local.set $left (i32.sub (local.get $left) (i32.load (i32.const 8))))
        (br $part)))
      (local.set $k (i32.add (local.get $k) (i32.const 1)))
      (br_if $chunks (i32.lt_u (local.get $k) (i32.const 16))))))"#;

/// Reads `reader` to its end a little at a time, sleeping between reads
/// (a reader slower than the guest).
fn read_slowly(mut reader: impl std::io::Read) -> Vec<u8> {
    let mut all = Vec::new();
    let mut buf = [0u8; 16 << 10];
    loop {
        match reader.read(&mut buf) {
            Ok(0) | Err(_) => return all,
            Ok(n) => all.extend_from_slice(&buf[..n]),
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Checks that `all` is [`CHUNKS_OUT`]'s output, whole and in order.
fn assert_chunks_in_order(all: &[u8]) {
    assert_eq!(all.len(), 16 << 16);
    for (k, chunk) in all.chunks(1 << 16).enumerate() {
        assert!(
            chunk.iter().all(|&b| b as usize == k),
            "chunk {k} out of order"
        );
    }
}

#[test]
fn output_to_a_slow_pipe_arrives_whole_and_in_order() {
    let f = runtime()
        .load_bytes(CHUNKS_OUT.as_bytes(), &LoadOptions::default())
        .unwrap();
    let (reader, writer) = std::io::pipe().unwrap();
    // A reader slower than the guest: the pipe fills, and what the
    // descriptor does not take at once waits for it.
    let slow = std::thread::spawn(move || read_slowly(reader));
    let inv = Invocation {
        stdout: Output::File(std::fs::File::from(std::os::fd::OwnedFd::from(writer))),
        ..Default::default()
    };
    let o = within(Duration::from_secs(30), move || f.invoke(inv).unwrap());
    assert!(o.success(), "{:?}", o.status);
    assert_chunks_in_order(&slow.join().unwrap());
}

#[test]
fn output_to_a_pipe_whose_reader_is_gone_fails_the_write() {
    let f = runtime()
        .load_bytes(CHUNKS_OUT.as_bytes(), &LoadOptions::default())
        .unwrap();
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let inv = Invocation {
        stdout: Output::File(std::fs::File::from(std::os::fd::OwnedFd::from(writer))),
        ..Default::default()
    };
    // The guest's first write fails (its module then traps): no hang, no
    // SIGPIPE, no panic.
    let o = within(Duration::from_secs(10), move || f.invoke(inv).unwrap());
    assert!(matches!(o.status, Status::Trapped(_)), "{:?}", o.status);
}

#[test]
fn output_to_a_fifo_that_cannot_be_reopened_still_waits_without_blocking() {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    // A FIFO whose reader has gone when the invocation starts cannot be
    // reopened for writing (ENXIO), so the caller's own (non-blocking)
    // description is used, polled; a reader comes later and reads slowly.
    let dir = tempdir();
    let path = dir.path().join("out");
    mkfifo(&path);
    let first_reader = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&path)
        .unwrap();
    let writer = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&path)
        .unwrap();
    drop(first_reader);
    // The same guest, which first waits for a byte on stdin: it writes
    // only once the reader has come.
    let wat = CHUNKS_OUT
        .replace(
            r#"(module"#,
            r#"(module (import "wasi_snapshot_preview1" "fd_read" (func $r (param i32 i32 i32 i32) (result i32)))"#,
        )
        .replace(
            "(loop $chunks",
            "(i32.store (i32.const 0) (i32.const 16)) (i32.store (i32.const 4) (i32.const 1))
             (drop (call $r (i32.const 0) (i32.const 0) (i32.const 1) (i32.const 8)))
             (loop $chunks",
        );
    let f = runtime()
        .load_bytes(wat.as_bytes(), &LoadOptions::default())
        .unwrap();
    let (go_reader, mut go) = std::io::pipe().unwrap();
    let later = path.clone();
    let slow = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(200));
        let reader = std::fs::File::open(later).unwrap();
        go.write_all(b"!").unwrap();
        read_slowly(reader)
    });
    let inv = Invocation {
        stdin: Input::File(std::fs::File::from(std::os::fd::OwnedFd::from(go_reader))),
        stdout: Output::File(writer),
        ..Default::default()
    };
    let o = within(Duration::from_secs(30), move || f.invoke(inv).unwrap());
    assert!(o.success(), "{:?}", o.status);
    assert_chunks_in_order(&slow.join().unwrap());
}

#[test]
fn stdout_given_as_a_pipes_read_end_is_not_turned_into_its_write_end() {
    use std::io::{Read, Write};
    let (reader, mut writer) = std::io::pipe().unwrap();
    writer.write_all(b"hi\n").unwrap();
    drop(writer);
    let reader_fd = std::os::fd::OwnedFd::from(reader);
    let ours = reader_fd.try_clone().unwrap();
    let f = runtime()
        .load_bytes(CHUNKS_OUT.as_bytes(), &LoadOptions::default())
        .unwrap();
    let inv = Invocation {
        stdout: Output::File(std::fs::File::from(reader_fd)),
        ..Default::default()
    };
    // The guest's write fails (EBADF; the module then traps) and nothing
    // reaches the pipe: its reader finds only what was in it.
    let o = within(Duration::from_secs(10), move || f.invoke(inv).unwrap());
    assert!(matches!(o.status, Status::Trapped(_)), "{:?}", o.status);
    let mut rest = Vec::new();
    std::fs::File::from(ours).read_to_end(&mut rest).unwrap();
    assert_eq!(rest, b"hi\n");
}

#[test]
fn stdin_is_not_read_ahead_of_what_the_guest_asks_for() {
    use std::io::{Read, Write};
    // Reads 6 bytes of stdin with one fd_read, and exits.
    const READ6: &str = r#"(module
      (import "wasi_snapshot_preview1" "fd_read" (func $r (param i32 i32 i32 i32) (result i32)))
      (memory (export "memory") 1)
      (func (export "_start")
        (i32.store (i32.const 0) (i32.const 64))
        (i32.store (i32.const 4) (i32.const 6))
        (if (call $r (i32.const 0) (i32.const 0) (i32.const 1) (i32.const 8)) (then unreachable))
        (if (i32.ne (i32.load (i32.const 8)) (i32.const 6)) (then unreachable))))"#;
    let (reader, mut writer) = std::io::pipe().unwrap();
    let reader_fd = std::os::fd::OwnedFd::from(reader);
    let ours = reader_fd.try_clone().unwrap();
    let f = runtime()
        .load_bytes(READ6.as_bytes(), &LoadOptions::default())
        .unwrap();
    let inv = Invocation {
        stdin: Input::File(std::fs::File::from(reader_fd)),
        ..Default::default()
    };
    let feeder = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(100));
        writer.write_all(b"line1\nline2\nline3\n").unwrap();
    });
    let o = within(Duration::from_secs(10), move || f.invoke(inv).unwrap());
    assert!(o.success(), "{:?}", o.status);
    feeder.join().unwrap();
    // The rest is still in the pipe for whoever reads it next.
    let mut rest = Vec::new();
    std::fs::File::from(ours).read_to_end(&mut rest).unwrap();
    assert_eq!(rest, b"line2\nline3\n");
}

#[test]
fn a_gated_invocation_makes_its_instance_and_runs_only_once_opened() {
    let rt = runtime_with(|c| c.pool.instances = 1);
    let f = load_wat(&rt, HELLO_WAT);
    let dir = tempdir();
    let out = dir.path().join("out");
    let tokio = tokio_rt();
    let inv = Invocation {
        stdout: Output::File(std::fs::File::create(&out).unwrap()),
        ..Default::default()
    };
    let (gate, task) = spawn_gated(&tokio, &f, inv);
    std::thread::sleep(Duration::from_millis(100));
    assert!(!task.is_finished(), "it ran before its gate opened");
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "");
    // Its instance holds the only slot: the next async invocation waits.
    let guest = f.clone();
    let next = tokio.spawn(async move { guest.invoke_async(Invocation::default()).await });
    std::thread::sleep(Duration::from_millis(100));
    assert!(!next.is_finished(), "the slot was not held");
    gate.open();
    let o = tokio.block_on(task).unwrap().unwrap();
    assert!(o.success(), "{:?}", o.status);
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "hello\n");
    let o = tokio.block_on(next).unwrap().unwrap();
    assert_eq!(stdout_of(&o), "hello\n");
    // An open gate lets an invocation through without waiting.
    let o = f
        .invoke(Invocation {
            gate: Some(gate),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(stdout_of(&o), "hello\n");
}

#[test]
fn a_gated_invocation_dropped_unopened_frees_its_instance_and_never_runs() {
    let rt = runtime_with(|c| c.pool.instances = 1);
    let f = load_wat(&rt, HELLO_WAT);
    let dir = tempdir();
    let out = dir.path().join("out");
    let tokio = tokio_rt();
    let inv = Invocation {
        stdout: Output::File(std::fs::File::create(&out).unwrap()),
        ..Default::default()
    };
    let (gate, task) = spawn_gated(&tokio, &f, inv);
    task.abort();
    assert!(tokio.block_on(task).unwrap_err().is_cancelled());
    // Opening it now reaches nothing: the invocation is gone.
    gate.open();
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "");
    // Its slot is free again.
    let guest = f.clone();
    let o = tokio
        .block_on(async move {
            tokio::time::timeout(
                Duration::from_secs(10),
                guest.invoke_async(Invocation::default()),
            )
            .await
        })
        .expect("the slot was not freed")
        .unwrap();
    assert_eq!(stdout_of(&o), "hello\n");
}

#[test]
fn one_gate_holds_several_invocations_and_typed_calls_wait_at_it_too() {
    let rt = runtime_with(|c| c.pool.instances = 4);
    let f = load_wat(&rt, HELLO_WAT);
    let add = load_wat(
        &rt,
        r#"(module (func (export "add") (param i32 i32) (result i32)
             (i32.add (local.get 0) (local.get 1))))"#,
    )
    .typed::<(i32, i32), i32>("add")
    .unwrap();
    let gate = wasmlet_runtime::StartGate::new();
    let tokio = tokio_rt();
    let runs: Vec<_> = (0..3)
        .map(|_| {
            let (f, gate) = (f.clone(), gate.clone());
            tokio.spawn(async move {
                f.invoke_async(Invocation {
                    gate: Some(gate),
                    ..Default::default()
                })
                .await
            })
        })
        .collect();
    let typed = {
        let (add, gate) = (add.clone(), gate.clone());
        tokio.spawn(async move {
            add.invoke_async(
                (2, 3),
                Invocation {
                    gate: Some(gate),
                    ..Default::default()
                },
            )
            .await
        })
    };
    wait_until_reached(&gate);
    std::thread::sleep(Duration::from_millis(100));
    assert!(
        runs.iter().all(|r| !r.is_finished()) && !typed.is_finished(),
        "one ran before the gate opened"
    );
    gate.open();
    for r in runs {
        let o = tokio.block_on(r).unwrap().unwrap();
        assert_eq!(stdout_of(&o), "hello\n");
    }
    let o = tokio.block_on(typed).unwrap().unwrap();
    assert_eq!(o.results, Some(5), "{:?}", o.status);
}

#[test]
fn a_dropped_invocation_leaves_what_it_used_in_its_probe() {
    let rt = runtime_with(|c| c.pool.instances = 2);
    // Three pages, grown to five, then computes forever.
    let f = load_wat(
        &rt,
        r#"(module (memory 3)
             (func (export "_start")
               (drop (memory.grow (i32.const 2)))
               (loop (br 0))))"#,
    );
    let probe = wasmlet_runtime::UsageProbe::new();
    let inv = Invocation {
        limits: Some(wasmlet_runtime::Limits {
            timeout: Some(Duration::from_secs(30)),
            ..Default::default()
        }),
        probe: Some(probe.clone()),
        ..Default::default()
    };
    // Dropped after 300 ms, as an HTTP server drops a request whose client
    // left: no outcome, but the probe has the figures.
    let left = tokio_rt().block_on(async {
        tokio::time::timeout(Duration::from_millis(300), f.invoke_async(inv)).await
    });
    assert!(left.is_err(), "the guest computes forever");
    assert!(
        probe.cpu_time() >= Duration::from_millis(100),
        "{:?}",
        probe.cpu_time()
    );
    assert_eq!(probe.peak_memory_bytes(), 5 * 65536);
}

#[test]
fn a_computing_guest_lets_the_other_tasks_of_its_thread_run_at_every_tick() {
    let rt = runtime();
    let f = load_wat(&rt, r#"(module (func (export "_start") (loop (br 0))))"#);
    let inv = Invocation {
        limits: Some(Limits {
            timeout: Some(Duration::from_secs(30)),
            ..Default::default()
        }),
        ..Default::default()
    };
    // One thread, as each of `wasmlet serve`'s connection threads is: the
    // guest computes while another task sleeps 1 ms twenty times. The
    // guest yields at every epoch tick; if its yield skipped the runtime's
    // timers and I/O, each sleep would last until the runtime polls them
    // anyway (every 61st poll: about 61 ms, 1.2 s for all twenty).
    let one = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let slept = one.block_on(async move {
        let guest = tokio::spawn(async move { f.invoke_async(inv).await });
        tokio::task::yield_now().await;
        let started = std::time::Instant::now();
        for _ in 0..20 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let slept = started.elapsed();
        guest.abort();
        slept
    });
    assert!(slept < Duration::from_millis(600), "{slept:?}");
}
