//! Hostile guests and host faults (issue 13) not covered by the topic
//! modules: a start section that never returns, `proc_exit` deep in a call
//! chain, growth storms, gigabytes of output (captured and streamed),
//! renames and links out of a preopen, a full cache disk, and `kill -9` of a
//! compile mid-write. Each attempts the bad thing and checks what happens.

use crate::helpers::*;
use std::path::Path;
use std::time::{Duration, Instant};
use wasmlet_runtime::{Entry, Invocation, LimitExceeded, Limits, Output, Preopen, Status, Val};

fn export(name: &str) -> Entry {
    Entry::Export {
        name: name.into(),
        params: vec![],
    }
}

#[test]
fn an_infinite_loop_in_the_start_section_is_stopped_by_the_timeout() {
    let rt = runtime();
    // The start section runs while the instance is made, before any export.
    let f = load_wat(
        &rt,
        r#"(module (func $forever (loop br 0)) (start $forever)
             (func (export "never") (result i32) i32.const 1))"#,
    );
    let started = Instant::now();
    let o = f
        .invoke(Invocation {
            entry: export("never"),
            limits: Some(Limits {
                timeout: Some(Duration::from_millis(200)),
                ..Limits::default()
            }),
            ..Invocation::default()
        })
        .unwrap();
    assert!(
        matches!(o.status, Status::LimitExceeded(LimitExceeded::Timeout(_))),
        "{:?}",
        o.status
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(
        o.usage.wall_time >= Duration::from_millis(200),
        "{:?}",
        o.usage
    );
}

#[test]
fn proc_exit_deep_in_a_call_chain_ends_the_invocation_with_its_code() {
    let rt = runtime();
    let f = load_wat(
        &rt,
        r#"(module
             (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
             (memory (export "memory") 1)
             (func $c (param i32) (call $exit (local.get 0)) unreachable)
             (func $b (param i32) (if (local.get 0)
                 (then (call $b (i32.sub (local.get 0) (i32.const 1))))
                 (else (call $c (i32.const 7)))))
             (func (export "_start") (call $b (i32.const 500)) unreachable))"#,
    );
    for _ in 0..3 {
        let o = f.invoke(Invocation::default()).unwrap();
        assert!(matches!(o.status, Status::Exited(7)), "{:?}", o.status);
    }
}

#[test]
fn memory_and_table_growth_storms_stop_at_their_limits() {
    let rt = runtime();
    let f = load_wat(
        &rt,
        r#"(module
             (memory (export "memory") 1)
             (table 1 funcref)
             (func (export "memory_storm") (result i32)
               (local $n i32)
               (block $done (loop $more
                 (br_if $done (i32.eq (memory.grow (i32.const 1)) (i32.const -1)))
                 (local.set $n (i32.add (local.get $n) (i32.const 1)))
                 (br $more)))
               (local.get $n))
             (func (export "table_storm") (result i32)
               (local $n i32)
               (block $done (loop $more
                 (br_if $done (i32.eq (table.grow (ref.null func) (i32.const 1000)) (i32.const -1)))
                 (local.set $n (i32.add (local.get $n) (i32.const 1)))
                 (br $more)))
               (local.get $n)))"#,
    );
    let limits = Limits {
        max_memory: 8 << 20,
        max_table_elements: 10_000,
        ..Limits::default()
    };
    let run = |name: &str| {
        f.invoke(Invocation {
            entry: export(name),
            limits: Some(limits.clone()),
            ..Invocation::default()
        })
        .unwrap()
    };
    let o = run("memory_storm");
    // 8 MiB = 128 pages, one of which it started with.
    assert!(
        matches!(&o.status, Status::Returned(v) if matches!(v[..], [Val::I32(127)])),
        "{:?}",
        o.status
    );
    assert!(o.usage.peak_memory_bytes <= 8 << 20, "{:?}", o.usage);
    let o = run("table_storm");
    assert!(
        matches!(&o.status, Status::Returned(v) if matches!(v[..], [Val::I32(9)])),
        "{:?}",
        o.status
    );
}

/// Writes `chunks` MiB to stdout, one `fd_write` of 1 MiB at a time
/// (ignoring errors, as a careless guest would), then exits 0.
fn flood_wat(chunks: u32) -> String {
    format!(
        r#"(module
             (import "wasi_snapshot_preview1" "fd_write"
               (func $write (param i32 i32 i32 i32) (result i32)))
             (memory (export "memory") 17)
             (func (export "_start")
               (local $i i32)
               (i32.store (i32.const 0) (i32.const 65536))
               (i32.store (i32.const 4) (i32.const 1048576))
               (loop $more
                 (drop (call $write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
                 (local.set $i (i32.add (local.get $i) (i32.const 1)))
                 (br_if $more (i32.lt_u (local.get $i) (i32.const {chunks}))))))"#
    )
}

#[test]
fn a_gigabyte_to_captured_stdout_is_capped() {
    let rt = runtime();
    let f = load_wat(&rt, &flood_wat(1024));
    let o = f
        .invoke(Invocation {
            stdout: Output::Capture,
            limits: Some(Limits {
                max_captured_output: 4 << 20,
                ..Limits::default()
            }),
            ..Invocation::default()
        })
        .unwrap();
    assert!(matches!(o.status, Status::Exited(0)), "{:?}", o.status);
    let captured = o.stdout.as_deref().unwrap_or_default().len();
    assert!(captured <= 4 << 20, "captured {captured} bytes");
    assert!(captured >= 1 << 20, "captured only {captured} bytes");
}

#[test]
fn two_gigabytes_streamed_to_stdout_do_not_grow_memory() {
    let dir = tempdir();
    let m = wat_file(dir.path(), "flood.wat", &flood_wat(2048));
    // GNU time reports the command's peak resident set (KiB).
    let out = std::process::Command::new("/usr/bin/time")
        .args(["-f", "%M"])
        .arg(env!("CARGO_BIN_EXE_wasmlet"))
        .arg("run")
        .arg(&m)
        .stdout(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let peak_kib: u64 = stderr
        .trim()
        .lines()
        .last()
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // The guest's own 17 pages plus the runtime: far below what was written.
    assert!(
        peak_kib < 256 << 10,
        "peak RSS {peak_kib} KiB for 2 GiB of output"
    );
}

/// Calls `path_rename` or `path_link` on the first preopen (fd 3) and
/// returns the WASI errno (0 = done).
fn path_op_wat(op: &str, from: &str, to: &str) -> String {
    let call = match op {
        "rename" => format!(
            "(call $rename (i32.const 3) (i32.const 0) (i32.const {}) (i32.const 3) (i32.const 512) (i32.const {}))",
            from.len(),
            to.len()
        ),
        _ => format!(
            "(call $link (i32.const 3) (i32.const 0) (i32.const 0) (i32.const {}) (i32.const 3) (i32.const 512) (i32.const {}))",
            from.len(),
            to.len()
        ),
    };
    format!(
        r#"(module
             (import "wasi_snapshot_preview1" "path_rename"
               (func $rename (param i32 i32 i32 i32 i32 i32) (result i32)))
             (import "wasi_snapshot_preview1" "path_link"
               (func $link (param i32 i32 i32 i32 i32 i32 i32) (result i32)))
             (memory (export "memory") 1)
             (data (i32.const 0) "{from}")
             (data (i32.const 512) "{to}")
             (func (export "op") (result i32) {call}))"#
    )
}

fn path_op(granted: &Path, op: &str, from: &str, to: &str) -> i32 {
    let rt = runtime();
    let f = load_wat(&rt, &path_op_wat(op, from, to));
    let o = f
        .invoke(Invocation {
            entry: export("op"),
            dirs: vec![Preopen {
                host: granted.into(),
                guest: "/data".into(),
                read_only: false,
            }],
            ..Invocation::default()
        })
        .unwrap();
    match o.status {
        Status::Returned(v) => match v[..] {
            [Val::I32(errno)] => errno,
            _ => panic!("{v:?}"),
        },
        other => panic!("{other:?}"),
    }
}

#[test]
fn renames_and_links_out_of_a_preopen_are_refused() {
    let root = tempdir();
    let granted = root.path().join("granted");
    std::fs::create_dir(&granted).unwrap();
    std::fs::write(granted.join("in.txt"), "inside").unwrap();
    std::fs::write(root.path().join("secret.txt"), "secret").unwrap();

    // Moving a file out, or pulling one in, fails and changes nothing.
    assert_ne!(path_op(&granted, "rename", "in.txt", "../moved.txt"), 0);
    assert!(!root.path().join("moved.txt").exists());
    assert!(granted.join("in.txt").exists());
    assert_ne!(
        path_op(&granted, "rename", "../secret.txt", "stolen.txt"),
        0
    );
    assert!(root.path().join("secret.txt").exists());
    assert!(!granted.join("stolen.txt").exists());
    assert_ne!(path_op(&granted, "rename", "/etc/hostname", "h"), 0);
    // A hard link to an outside file, or from inside to outside, is refused.
    assert_ne!(path_op(&granted, "link", "../secret.txt", "l"), 0);
    assert!(!granted.join("l").exists());
    assert_ne!(path_op(&granted, "link", "in.txt", "../l2"), 0);
    assert!(!root.path().join("l2").exists());
    // Inside the preopen both work (so the refusals above are not a broken
    // call).
    assert_eq!(path_op(&granted, "link", "in.txt", "l3"), 0);
    assert_eq!(path_op(&granted, "rename", "in.txt", "in2.txt"), 0);
    assert!(granted.join("in2.txt").exists() && granted.join("l3").exists());
}

/// Runs `f` with a 64 KiB tmpfs mounted at a fresh directory (root only;
/// skipped with a message elsewhere).
fn with_tiny_tmpfs(f: impl FnOnce(&Path)) {
    let dir = tempdir();
    let ok = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=64k,mode=0700", "tmpfs"])
        .arg(dir.path())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!("skipped: cannot mount a tmpfs here (needs root)");
        return;
    }
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(self.0).status();
        }
    }
    let _unmount = Unmount(dir.path());
    f(dir.path());
}

#[test]
fn a_full_cache_disk_still_runs_the_module() {
    with_tiny_tmpfs(|cache| {
        let dir = tempdir();
        let m = wat_file(dir.path(), "hello.wat", HELLO_WAT);
        // Fill the disk.
        let _ = std::fs::write(cache.join("filler"), vec![1u8; 64 << 10]);
        let run = || run_cli(wasmlet().arg("run").arg("--cache-dir").arg(cache).arg(&m));
        let r = run();
        assert_eq!((r.code, r.stdout.as_str()), (0, "hello\n"), "{}", r.stderr);
        // Nothing half-written is left to be loaded later.
        let r = run();
        assert_eq!((r.code, r.stdout.as_str()), (0, "hello\n"), "{}", r.stderr);
    });
}
