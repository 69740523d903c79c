//! Preopened directories: the guest reaches what it was given and nothing
//! else.

use crate::helpers::*;
use std::time::Duration;
use wasmlet_runtime::{Invocation, LimitExceeded, Limits, LoadOptions, Preopen, Status};

#[test]
fn read_and_write_through_dir() {
    let dir = tempdir();
    std::fs::write(dir.path().join("in.txt"), "input data").unwrap();
    let spec = format!("{}::/data", dir.path().display());
    let r = run_cli(
        wasmlet()
            .args(["run", "--dir", &spec])
            .arg(c_guest("fileops"))
            .args(["read", "/data/in.txt"]),
    );
    assert_eq!(
        (r.code, r.stdout.as_str()),
        (0, "input data"),
        "{}",
        r.stderr
    );
    let r = run_cli(
        wasmlet()
            .args(["run", "--dir", &spec])
            .arg(c_guest("fileops"))
            .args(["write", "/data/out.txt", "written by wasm"]),
    );
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert_eq!(
        std::fs::read_to_string(dir.path().join("out.txt")).unwrap(),
        "written by wasm"
    );
    // HOST alone maps to the same path in the guest.
    let host = dir.path().to_str().unwrap();
    let r = run_cli(
        wasmlet()
            .args(["run", "--dir", host])
            .arg(c_guest("fileops"))
            .args(["read", &format!("{host}/in.txt")]),
    );
    assert_eq!(r.stdout, "input data", "{}", r.stderr);
}

#[test]
fn escapes_are_refused() {
    let root = tempdir();
    let granted = root.path().join("granted");
    std::fs::create_dir(&granted).unwrap();
    std::fs::write(root.path().join("secret.txt"), "secret").unwrap();
    std::os::unix::fs::symlink("../secret.txt", granted.join("link")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", granted.join("abs-link")).unwrap();
    let spec = format!("{}::/data", granted.display());
    let attempts = [
        "/data/../secret.txt",
        "/data/link",
        "/data/abs-link",
        "/etc/passwd",
        "../secret.txt",
        "secret.txt",
    ];
    for path in attempts {
        let r = run_cli(
            wasmlet()
                .args(["run", "--dir", &spec])
                .arg(c_guest("fileops"))
                .args(["read", path]),
        );
        assert_eq!(r.code, 2, "{path} was readable: {:?}", r.stdout);
        assert!(r.stdout.starts_with("error:"), "{path}: {}", r.stdout);
        assert!(!r.stdout.contains("secret") || r.stdout.contains("secret.txt:"));
    }
    // Writing through an escaping path fails too and creates nothing.
    let r = run_cli(
        wasmlet()
            .args(["run", "--dir", &spec])
            .arg(c_guest("fileops"))
            .args(["write", "/data/../escaped.txt", "x"]),
    );
    assert_eq!(r.code, 2);
    assert!(!root.path().join("escaped.txt").exists());
    // Without --dir there is no file system at all.
    let r = run_cli(
        wasmlet()
            .arg("run")
            .arg(c_guest("fileops"))
            .args(["list", "/"]),
    );
    assert_eq!(r.code, 2, "{}", r.stdout);
}

#[test]
fn missing_dir_is_a_clear_error() {
    let r = run_cli(
        wasmlet()
            .args(["run", "--dir", "/no/such/dir"])
            .arg(c_guest("hello")),
    );
    assert_eq!(r.code, 1);
    r.assert_one_line_error("cannot open directory /no/such/dir");
}

/// Filesystem calls run on a blocking pool, off the invocation's thread,
/// so their CPU time used to be missing from the usage record (issue 8):
/// a guest that only reads files reported about half the CPU its process
/// used. Now the pool's CPU is charged: the record accounts for most of
/// the process's CPU time (the rest is start-up: loading from the cache).
#[test]
fn filesystem_cpu_time_is_charged_to_the_invocation() {
    let dir = tempdir();
    std::fs::write(dir.path().join("data"), vec![7u8; 16 << 20]).unwrap();
    let out = tempdir();
    let guest = c_guest("fileops");
    // Compiled (and cached) first, so the measured run only maps it.
    let warm = run_cli(
        wasmlet()
            .arg("compile")
            .arg(&guest)
            .arg("-o")
            .arg(out.path().join("f.cwasm")),
    );
    assert_eq!(warm.code, 0, "{}", warm.stderr);
    let stderr_path = out.path().join("stderr");
    // Reaped with wait4 below, which gives its resource usage.
    #[allow(clippy::zombie_processes)]
    let child = wasmlet()
        .args(["run", "--usage", "--dir"])
        .arg(format!("{}::/d", dir.path().display()))
        .arg(&guest)
        .args(["reread", "/d/data", "40"])
        .stdout(std::fs::File::create(out.path().join("stdout")).unwrap())
        .stderr(std::fs::File::create(&stderr_path).unwrap())
        .spawn()
        .unwrap();
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value for wait4 to fill.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: wait4 writes only to `status` and `ru`, both on this stack;
    // the pid is our unreaped child.
    let pid = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut ru) };
    assert_eq!(pid, child.id() as i32);
    assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
    let stdout = std::fs::read_to_string(out.path().join("stdout")).unwrap();
    assert_eq!(stdout.trim(), (40u64 << 24).to_string());
    let stderr = std::fs::read_to_string(&stderr_path).unwrap();
    let usage = Run {
        code: 0,
        stdout,
        stderr,
    }
    .usage();
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    let process = tv(ru.ru_utime) + tv(ru.ru_stime);
    let charged = Duration::from_nanos(usage["cpu_time_ns"].as_u64().unwrap());
    assert!(
        charged.as_secs_f64() >= 0.75 * process.as_secs_f64(),
        "charged {charged:?} of the process's {process:?}"
    );
    assert!(
        charged <= process,
        "charged {charged:?} > process {process:?}"
    );
}

/// The same work under a CPU budget: the pool's CPU counts against it.
#[test]
fn filesystem_cpu_time_counts_against_the_cpu_budget() {
    let dir = tempdir();
    std::fs::write(dir.path().join("data"), vec![7u8; 16 << 20]).unwrap();
    let rt = runtime();
    let f = rt
        .load_file(c_guest("fileops"), &LoadOptions::default())
        .unwrap();
    let limits = Limits {
        cpu_time: Some(Duration::from_millis(50)),
        ..Limits::default()
    };
    let out = f
        .invoke(Invocation {
            args: ["fileops", "reread", "/d/data", "1000000"]
                .map(String::from)
                .to_vec(),
            dirs: vec![read_only(dir.path(), "/d")],
            limits: Some(limits),
            ..Default::default()
        })
        .unwrap();
    assert!(
        matches!(
            out.status,
            Status::LimitExceeded(LimitExceeded::CpuTime(t)) if t == Duration::from_millis(50)
        ),
        "{:?}",
        out.status
    );
    assert!(
        out.usage.cpu_time >= Duration::from_millis(50),
        "{:?}",
        out.usage
    );
    // The next invocation on this thread is charged only its own work.
    let small = f
        .invoke(Invocation {
            args: ["fileops", "reread", "/d/data", "1"]
                .map(String::from)
                .to_vec(),
            dirs: vec![read_only(dir.path(), "/d")],
            ..Default::default()
        })
        .unwrap();
    assert!(
        matches!(small.status, Status::Exited(0)),
        "{:?}",
        small.status
    );
    assert!(
        small.usage.cpu_time < Duration::from_millis(50),
        "{:?}",
        small.usage
    );
}

fn read_only(host: &std::path::Path, guest: &str) -> Preopen {
    Preopen {
        host: host.into(),
        guest: guest.into(),
        read_only: true,
    }
}

/// One filesystem call can take far longer than a CPU budget (a
/// `readdir` of a huge directory): the budget used to be checked only
/// while wasm ran, so the guest was charged the whole call and, if it then
/// exited, was not even stopped. It is now also checked while the guest
/// waits for the call (the call itself finishes in the background).
#[test]
fn cpu_budget_holds_during_one_long_filesystem_call() {
    let dir = tempdir();
    let many = dir.path().join("many");
    std::fs::create_dir(&many).unwrap();
    // wasmtime-wasi's `fd_readdir` re-reads the directory up to its cookie on
    // every call: 2,000 entries cost about a second of CPU.
    for i in 0..2_000 {
        std::fs::File::create(many.join(format!("f{i:07}"))).unwrap();
    }
    let f = runtime()
        .load_file(c_guest("fileops"), &LoadOptions::default())
        .unwrap();
    let invocation = |cpu_time| Invocation {
        args: ["fileops", "count", "/d/many"].map(String::from).to_vec(),
        dirs: vec![read_only(dir.path(), "/d")],
        limits: Some(Limits {
            cpu_time,
            ..Limits::default()
        }),
        ..Default::default()
    };
    let full = f.invoke(invocation(None)).unwrap();
    assert!(
        matches!(full.status, Status::Exited(0)),
        "{:?}",
        full.status
    );
    let budget = Duration::from_millis(10);
    // Only meaningful when the call costs well over the budget.
    assert!(full.usage.cpu_time > 10 * budget, "{:?}", full.usage);
    let stopped = f.invoke(invocation(Some(budget))).unwrap();
    assert!(
        matches!(
            stopped.status,
            Status::LimitExceeded(LimitExceeded::CpuTime(_))
        ),
        "{:?}",
        stopped.status
    );
    assert!(
        stopped.usage.cpu_time < full.usage.cpu_time / 2,
        "stopped at {:?} of a {:?} call",
        stopped.usage.cpu_time,
        full.usage.cpu_time
    );
}
