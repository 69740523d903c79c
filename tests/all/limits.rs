//! Per-invocation limits: memory, tables, CPU time, wall clock, fuel.

use crate::helpers::*;
use std::time::Duration;
use wasmlet_runtime::{Entry, Invocation, LimitExceeded, Limits, Status, Val};

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
