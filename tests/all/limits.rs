//! Per-invocation limits: memory, tables, CPU time, wall clock, fuel.

use crate::helpers::*;
use std::fs::File;
use std::os::fd::OwnedFd;
use std::process::Stdio;
use std::time::{Duration, Instant};
use wasmlet_runtime::{
    Entry, Function, Input, Invocation, LimitExceeded, Limits, LoadOptions, Outcome, Output,
    Status, Val,
};

fn invoke_with(
    f: &wasmlet_runtime::Function,
    name: &str,
    limits: Limits,
) -> wasmlet_runtime::Outcome {
    f.invoke(Invocation {
        entry: Entry::Export {
            name: name.into(),
            params: vec![],
        },
        limits: Some(limits),
        ..Default::default()
    })
    .unwrap()
}

#[test]
fn memory_limit_stops_c_guest_that_grows_without_bound() {
    let r = run_cli(
        wasmlet()
            .args([
                "run",
                "--memory-limit",
                "16MiB",
                "--timeout",
                "20s",
                "--usage",
            ])
            .arg(c_guest("grow")),
    );
    assert_eq!(r.code, 137, "{}", r.stderr);
    assert!(
        r.stderr.contains("allocated"),
        "guest saw malloc fail: {}",
        r.stderr
    );
    assert!(
        r.stderr.contains("error: memory limit of 16 MiB exceeded"),
        "{}",
        r.stderr
    );
    let usage = r.usage();
    let peak = usage["peak_memory_bytes"].as_u64().unwrap();
    assert!(peak <= 16 << 20 && peak > 8 << 20, "peak {peak}");
}

#[test]
fn memory_limit_in_library() {
    for (mode, rt) in runtimes() {
        eprintln!("mode: {mode}");
        let f = load_wat(&rt, TOOLS_WAT);
        let limits = Limits {
            max_memory: 4 << 20,
            ..Limits::default()
        };
        // A guest that handles memory.grow failing keeps running.
        let o = invoke_with(&f, "grow_soft", limits.clone());
        match o.status {
            Status::Returned(v) => {
                assert!(matches!(v[0], Val::I32(pages) if pages * 65536 <= 4 << 20))
            }
            s => panic!("{s:?}"),
        }
        // One that traps afterwards is reported as over its limit.
        let o = invoke_with(&f, "grow", limits);
        assert!(
            matches!(o.status, Status::LimitExceeded(LimitExceeded::Memory(m)) if m == 4 << 20)
        );
        assert!(o.usage.peak_memory_bytes <= 4 << 20);

        // A module whose initial memory is above the limit never starts.
        let big = load_wat(&rt, r#"(module (memory 300) (func (export "f")))"#);
        let o = invoke_with(
            &big,
            "f",
            Limits {
                max_memory: 16 << 20,
                ..Limits::default()
            },
        );
        assert!(
            matches!(o.status, Status::LimitExceeded(LimitExceeded::Memory(_))),
            "{:?}",
            o.status
        );
    }
}

#[test]
fn table_limit() {
    let rt = runtime();
    let f = load_wat(
        &rt,
        r#"(module (table 1 funcref)
             (func (export "grow") (result i32) (table.grow (ref.null func) (i32.const 5000)))
             (func (export "grow_trap") (if (i32.eq (table.grow (ref.null func) (i32.const 5000)) (i32.const -1)) (then unreachable))))"#,
    );
    let limits = Limits {
        max_table_elements: 1000,
        ..Limits::default()
    };
    let o = invoke_with(&f, "grow", limits.clone());
    assert!(
        matches!(&o.status, Status::Returned(v) if matches!(v[0], Val::I32(-1))),
        "{:?}",
        o.status
    );
    let o = invoke_with(&f, "grow_trap", limits);
    assert!(matches!(
        o.status,
        Status::LimitExceeded(LimitExceeded::TableElements(1000))
    ));
}

#[test]
fn cpu_time_limit_stops_a_spinning_guest_near_its_budget() {
    for (mode, rt) in runtimes() {
        eprintln!("mode: {mode}");
        let f = load_wat(&rt, TOOLS_WAT);
        let budget = Duration::from_millis(100);
        let o = invoke_with(
            &f,
            "spin",
            Limits {
                cpu_time: Some(budget),
                ..Limits::default()
            },
        );
        assert!(
            matches!(o.status, Status::LimitExceeded(LimitExceeded::CpuTime(b)) if b == budget)
        );
        // Charged at least the budget, and stopped within a few epoch ticks of it
        // (the bound is loose so a loaded machine does not fail the test).
        assert!(o.usage.cpu_time >= budget, "{:?}", o.usage);
        assert!(
            o.usage.cpu_time < budget + Duration::from_millis(60),
            "{:?}",
            o.usage
        );
    }
}

#[test]
fn cpu_time_is_not_charged_while_blocked() {
    // Sleeping 300 ms with a 50 ms CPU budget succeeds: blocked time is not CPU time.
    let r = run_cli(
        wasmlet()
            .args(["run", "--cpu-time", "50ms", "--usage"])
            .arg(c_guest("sleeper"))
            .arg("300"),
    );
    assert_eq!((r.code, r.stdout.as_str()), (0, "slept\n"), "{}", r.stderr);
    assert_eq!(
        r.stderr.lines().count(),
        1,
        "only the usage line: {}",
        r.stderr
    );
    let usage = r.usage();
    assert!(usage["wall_time_ns"].as_u64().unwrap() >= 300_000_000);
    assert!(usage["cpu_time_ns"].as_u64().unwrap() < 50_000_000);
}

#[test]
fn cpu_time_limit_from_cli() {
    let dir = tempdir();
    let m = wat_file(dir.path(), "t.wat", TOOLS_WAT);
    let r = run_cli(
        wasmlet()
            .args(["run", "--cpu-time", "50ms", "--invoke", "spin"])
            .arg(&m),
    );
    assert_eq!(r.code, 137);
    r.assert_one_line_error("CPU time limit of 50ms exceeded");
}

#[test]
fn wall_clock_timeout() {
    let dir = tempdir();
    let m = wat_file(dir.path(), "t.wat", TOOLS_WAT);
    let r = run_cli(
        wasmlet()
            .args(["run", "--timeout", "100ms", "--invoke", "spin"])
            .arg(&m),
    );
    assert_eq!(r.code, 137);
    r.assert_one_line_error("wall-clock timeout of 100ms exceeded");
}

#[test]
fn fuel_limit() {
    let rt = runtime_with(|c| c.fuel_metering = true);
    let f = load_wat(&rt, TOOLS_WAT);
    let o = invoke_with(
        &f,
        "spin",
        Limits {
            fuel: Some(50_000),
            ..Limits::default()
        },
    );
    assert!(matches!(
        o.status,
        Status::LimitExceeded(LimitExceeded::Fuel(50_000))
    ));
    assert_eq!(o.usage.fuel_consumed, Some(50_000));
    let o = call(&f, "add", vec![Val::I32(1), Val::I32(2)]);
    assert!(o.usage.fuel_consumed.unwrap() > 0);

    let dir = tempdir();
    let m = wat_file(dir.path(), "t.wat", TOOLS_WAT);
    let r = run_cli(
        wasmlet()
            .args(["run", "--fuel", "1000", "--invoke", "spin"])
            .arg(&m),
    );
    assert_eq!(r.code, 137);
    r.assert_one_line_error("fuel limit of 1000 exceeded");

    // A fuel limit on a runtime that does not meter fuel is refused up front.
    let plain = load_wat(&runtime(), TOOLS_WAT);
    let e = plain
        .invoke(Invocation {
            entry: Entry::Export {
                name: "spin".into(),
                params: vec![],
            },
            limits: Some(Limits {
                fuel: Some(1),
                ..Limits::default()
            }),
            ..Default::default()
        })
        .unwrap_err();
    assert!(e.to_string().contains("fuel_metering"), "{e}");
}

// Timeouts that hold whatever the guest is doing: blocked in a host call
// (a sleep, a read of a stdin that stays open, a write into a full pipe)
// the invocation is a pending future, cut off by its timer.

const SHORT: Duration = Duration::from_millis(300);

/// The C guest `blocker`, compiled into the CLI's cache (so that timing a
/// run does not time the compilation).
fn blocker_cli() -> std::path::PathBuf {
    let m = c_guest("blocker");
    let r = run_cli(wasmlet().arg("run").arg(&m));
    assert_eq!(r.code, 2, "{}", r.stderr);
    m
}

fn blocker(mode: &str, stdin: Input, stdout: Output) -> (Function, Invocation) {
    let f = runtime()
        .load_file(c_guest("blocker"), &LoadOptions::default())
        .unwrap();
    let inv = Invocation {
        args: vec!["blocker".into(), mode.into()],
        stdin,
        stdout,
        limits: Some(Limits {
            timeout: Some(SHORT),
            ..Limits::default()
        }),
        ..Default::default()
    };
    (f, inv)
}

fn assert_timed_out(o: &Outcome) {
    assert!(
        matches!(o.status, Status::LimitExceeded(LimitExceeded::Timeout(t)) if t == SHORT),
        "{:?}",
        o.status
    );
    assert!(
        o.usage.wall_time >= SHORT && o.usage.wall_time < SHORT + Duration::from_millis(700),
        "{:?}",
        o.usage
    );
}

#[test]
fn timeout_stops_a_guest_sleeping_in_a_loop() {
    let m = blocker_cli();
    let child = wasmlet()
        .args(["run", "--timeout", "300ms"])
        .arg(&m)
        .arg("sleep-loop")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (code, took, stderr) = wait_at_most(child, Duration::from_secs(10));
    assert_eq!(code, 137, "{stderr}");
    assert!(took < Duration::from_secs(1), "took {took:?}");
    assert_eq!(stderr.trim(), "error: wall-clock timeout of 300ms exceeded");
}

#[test]
fn a_sleep_cut_off_by_the_timeout_is_billed_for_the_timeout() {
    // sleep(3) under a 300 ms timeout: stopped, and billed ~0.3 s, not 3 s.
    let r = within(Duration::from_secs(20), || {
        run_cli(
            wasmlet()
                .args(["run", "--timeout", "300ms", "--usage"])
                .arg(c_guest("sleeper"))
                .arg("3000"),
        )
    });
    assert_eq!(r.code, 137, "{}", r.stderr);
    let wall = r.usage()["wall_time_ns"].as_u64().unwrap();
    assert!(
        (300_000_000..1_000_000_000).contains(&wall),
        "billed {wall} ns of wall time"
    );
}

#[test]
fn timeout_stops_a_guest_reading_a_stdin_that_stays_open() {
    let m = blocker_cli();
    let mut child = wasmlet()
        .args(["run", "--timeout", "300ms"])
        .arg(&m)
        .arg("read-stdin")
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The write end stays open (and silent) until the end of the test.
    let _stdin = child.stdin.take().unwrap();
    let (code, took, stderr) = wait_at_most(child, Duration::from_secs(10));
    assert_eq!(code, 137, "{stderr}");
    assert!(took < Duration::from_secs(1), "took {took:?}");

    // The same through the library, with the pipe as an `Input::File`.
    let (reader, writer) = std::io::pipe().unwrap();
    let (f, inv) = blocker(
        "read-stdin",
        Input::File(File::from(OwnedFd::from(reader))),
        Output::Capture,
    );
    let o = within(Duration::from_secs(10), move || f.invoke(inv).unwrap());
    assert_timed_out(&o);
    drop(writer);
}

#[test]
fn a_guest_reads_what_a_pipe_gives_it_until_the_end() {
    // The asynchronous stdin still delivers everything, then the end.
    let (reader, mut writer) = std::io::pipe().unwrap();
    let feeder = std::thread::spawn(move || {
        use std::io::Write;
        for _ in 0..64 {
            writer.write_all(&[7u8; 10_000]).unwrap();
        }
    });
    let (f, mut inv) = blocker(
        "read-stdin",
        Input::File(File::from(OwnedFd::from(reader))),
        Output::Capture,
    );
    inv.limits = None;
    let o = within(Duration::from_secs(20), move || f.invoke(inv).unwrap());
    feeder.join().unwrap();
    assert!(matches!(o.status, Status::Exited(0)), "{:?}", o.status);
    assert_eq!(stdout_of(&o), "read 640000 bytes\n");
}

#[test]
fn timeout_stops_a_guest_writing_into_a_pipe_nobody_reads() {
    let m = blocker_cli();
    let child = wasmlet()
        .args(["run", "--timeout", "300ms"])
        .arg(&m)
        .arg("write-out")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Nobody reads the child's stdout until it has ended.
    let (code, took, stderr) = wait_at_most(child, Duration::from_secs(10));
    assert_eq!(code, 137, "{stderr}");
    assert!(took < Duration::from_secs(1), "took {took:?}");

    // The same through the library, with the pipe as an `Output::File`.
    let (reader, writer) = std::io::pipe().unwrap();
    let (f, inv) = blocker(
        "write-out",
        Input::Null,
        Output::File(File::from(OwnedFd::from(writer))),
    );
    let o = within(Duration::from_secs(10), move || f.invoke(inv).unwrap());
    assert_timed_out(&o);
    drop(reader);
}

#[test]
fn usage_of_a_timed_out_invocation_is_billed_not_zero() {
    let f = runtime()
        .load_file(c_guest("sleeper"), &LoadOptions::default())
        .unwrap();
    let inv = Invocation {
        args: vec!["sleeper".into(), "3000".into()],
        limits: Some(Limits {
            timeout: Some(SHORT),
            ..Limits::default()
        }),
        ..Default::default()
    };
    let o = within(Duration::from_secs(20), move || f.invoke(inv).unwrap());
    assert_timed_out(&o);
    let u = &o.usage;
    assert!(u.cpu_time > Duration::ZERO, "{u:?}");
    assert!(u.peak_memory_bytes > 0, "{u:?}");
    let expected = u.peak_memory_bytes as f64 / (1u64 << 30) as f64 * u.wall_time.as_secs_f64();
    assert!(
        u.gb_seconds > 0.0 && (u.gb_seconds - expected).abs() < 1e-12,
        "{u:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_an_async_invocation_cancels_it_and_frees_its_slot() {
    let rt = runtime_with(|c| c.pool.instances = 1);
    let f = rt
        .load_file(c_guest("blocker"), &LoadOptions::default())
        .unwrap();
    let inv = || Invocation {
        args: vec!["blocker".into(), "sleep-loop".into()],
        ..Default::default()
    };
    // No limits: only the caller's own timeout ends it.
    let start = Instant::now();
    let r = tokio::time::timeout(SHORT, f.invoke_async(inv())).await;
    assert!(r.is_err(), "a guest sleeping forever finished");
    assert!(start.elapsed() < Duration::from_secs(1));
    // Its one pool slot is free again.
    let hello = load_wat(&rt, HELLO_WAT);
    let o = hello.invoke_async(Invocation::default()).await.unwrap();
    assert_eq!(stdout_of(&o), "hello\n");
    // And the synchronous API works from inside a runtime too.
    let o = hello.invoke(Invocation::default()).unwrap();
    assert_eq!(stdout_of(&o), "hello\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cpu_time_of_async_invocations_is_their_own() {
    // Spinning invocations on a shared multi-threaded runtime, each with a CPU
    // budget, move between workers when they yield: each is still charged its
    // own CPU time (per poll), stopping near its budget.
    let rt = runtime();
    let f = load_wat(&rt, TOOLS_WAT);
    let budget = Duration::from_millis(100);
    let tasks: Vec<_> = (0..4)
        .map(|_| {
            let f = f.clone();
            tokio::spawn(async move {
                f.invoke_async(Invocation {
                    entry: Entry::Export {
                        name: "spin".into(),
                        params: vec![],
                    },
                    limits: Some(Limits {
                        cpu_time: Some(budget),
                        ..Limits::default()
                    }),
                    ..Default::default()
                })
                .await
                .unwrap()
            })
        })
        .collect();
    for t in tasks {
        let o = t.await.unwrap();
        assert!(
            matches!(o.status, Status::LimitExceeded(LimitExceeded::CpuTime(b)) if b == budget),
            "{:?}",
            o.status
        );
        assert!(
            o.usage.cpu_time >= budget && o.usage.cpu_time < budget + Duration::from_millis(60),
            "{:?}",
            o.usage
        );
    }
}
