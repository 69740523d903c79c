//! Sandboxes on this machine's real cgroups (run as root): kernel-enforced
//! memory, CPU and pids limits, hardening, crash reporting and cleanup.

use crate::helpers::*;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use wasmlet_runtime::sandbox::cgroup::Layout;
use wasmlet_runtime::{
    Entry, Invocation, LimitExceeded, Limits, LoadOptions, RuntimeConfig, Sandbox, SandboxConfig,
    Status, WorkerCommand,
};

fn worker() -> WorkerCommand {
    WorkerCommand {
        program: env!("CARGO_BIN_EXE_wasmlet").into(),
        args: vec!["sandbox-worker".into()],
    }
}

fn runtime_config() -> RuntimeConfig {
    let mut c = RuntimeConfig::default();
    c.pool.instances = 8;
    c.cache.dir = Some(scratch().join("cache"));
    c
}

fn sandbox(config: SandboxConfig, module: &[u8]) -> Sandbox {
    let sb = Sandbox::start(&runtime_config(), &config, worker()).unwrap();
    sb.load(module, &LoadOptions::default()).unwrap();
    sb
}

fn export(name: &str, limits: Option<Limits>) -> Invocation {
    Invocation {
        entry: Entry::Export {
            name: name.into(),
            params: vec![],
        },
        limits,
        ..Default::default()
    }
}

fn spin_for(d: Duration) -> Invocation {
    export(
        "spin",
        Some(Limits {
            timeout: Some(d),
            ..Limits::default()
        }),
    )
}

fn read(p: PathBuf) -> String {
    std::fs::read_to_string(&p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .trim()
        .to_string()
}

#[test]
fn oom_kill_is_reported_and_the_worker_replaced() {
    let grow = std::fs::read(c_guest("grow")).unwrap();
    let sb = sandbox(
        SandboxConfig {
            memory: Some(64 << 20),
            ..Default::default()
        },
        &grow,
    );
    let other = sandbox(SandboxConfig::default(), TOOLS_WAT.as_bytes());
    let pid = sb.worker_pid().unwrap();
    let o = sb.invoke(Invocation::default()).unwrap();
    assert!(
        matches!(o.status, Status::LimitExceeded(LimitExceeded::SandboxMemory(m)) if m == 64 << 20),
        "{:?}",
        o.status
    );
    let cg = o.usage.sandbox.unwrap();
    assert_eq!(cg.oom_kills, 1);
    assert!(cg.memory_peak_bytes <= 64 << 20);
    // A fresh worker took over, with the function loaded again.
    let new_pid = sb.worker_pid().unwrap();
    assert_ne!(pid, new_pid);
    let o = sb.invoke(Invocation::default()).unwrap();
    assert!(matches!(
        o.status,
        Status::LimitExceeded(LimitExceeded::SandboxMemory(_))
    ));
    // The other sandbox never noticed.
    let o = other.invoke(export("initialized", None)).unwrap();
    assert!(o.success(), "{:?}", o.status);
}

#[test]
fn a_worker_killed_mid_invocation_is_reported_and_replaced() {
    let sb = sandbox(SandboxConfig::default(), TOOLS_WAT.as_bytes());
    let pid = sb.worker_pid().unwrap();
    std::thread::scope(|s| {
        let running = s.spawn(|| sb.invoke(spin_for(Duration::from_secs(20))).unwrap());
        std::thread::sleep(Duration::from_millis(200));
        // What the kernel does to a worker that makes a forbidden system call.
        // SAFETY: kill(2) on our own sandbox worker.
        unsafe { libc::kill(pid as i32, libc::SIGSYS) };
        let o = running.join().unwrap();
        assert!(
            matches!(&o.status, Status::Trapped(m) if m == "sandbox worker died: killed by its seccomp filter (SIGSYS)"),
            "{:?}",
            o.status
        );
    });
    assert_ne!(sb.worker_pid().unwrap(), pid);
    assert!(sb.invoke(export("initialized", None)).unwrap().success());
}

#[test]
fn oom_from_the_cli() {
    let r = run_cli(
        wasmlet()
            .args(["run", "--sandbox", "--sandbox-memory", "64MiB"])
            .arg(c_guest("grow")),
    );
    assert_eq!(r.code, 137, "{}", r.stderr);
    r.assert_one_line_error("sandbox memory limit of 64 MiB exceeded");
    let r = run_cli(
        wasmlet()
            .args(["run", "--sandbox", "--usage"])
            .arg(c_guest("hello"))
            .arg("x"),
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("arg[1]=x"), "{}", r.stdout);
    let usage = r.usage();
    assert!(usage["sandbox"]["cpu_ns"].as_u64().unwrap() > 0, "{usage}");
}

#[test]
fn cgroup_has_the_limits_while_running_and_is_gone_after() {
    let layout = Layout::detect().unwrap();
    let config = SandboxConfig {
        memory: Some(128 << 20),
        cpus: Some(1.5),
        pids: Some(32),
        ..Default::default()
    };
    let sb = sandbox(config, TOOLS_WAT.as_bytes());
    let dirs: Vec<PathBuf> = ["memory", "cpu", "pids"]
        .iter()
        .map(|c| sb.cgroup_dir(c).unwrap())
        .collect();
    std::thread::scope(|s| {
        let running = s.spawn(|| sb.invoke(spin_for(Duration::from_millis(400))).unwrap());
        std::thread::sleep(Duration::from_millis(100));
        let pid = sb.worker_pid().unwrap().to_string();
        if layout.is_v2() {
            let d = &dirs[0];
            assert_eq!(read(d.join("memory.max")), "134217728");
            assert_eq!(read(d.join("cpu.max")), "150000 100000");
            assert_eq!(read(d.join("pids.max")), "32");
            assert!(read(d.join("cgroup.procs")).lines().any(|l| l == pid));
        } else {
            assert_eq!(read(dirs[0].join("memory.limit_in_bytes")), "134217728");
            assert_eq!(read(dirs[1].join("cpu.cfs_quota_us")), "150000");
            assert_eq!(read(dirs[1].join("cpu.cfs_period_us")), "100000");
            assert_eq!(read(dirs[2].join("pids.max")), "32");
            for d in &dirs {
                assert!(
                    read(d.join("cgroup.procs")).lines().any(|l| l == pid),
                    "{}",
                    d.display()
                );
            }
        }
        assert!(matches!(
            running.join().unwrap().status,
            Status::LimitExceeded(LimitExceeded::Timeout(_))
        ));
    });
    drop(sb);
    for d in dirs {
        assert!(!d.exists(), "{} left behind", d.display());
    }
}

#[test]
fn cpu_quota_throttles_several_spinning_invocations() {
    let sb = sandbox(
        SandboxConfig {
            cpus: Some(0.5),
            ..Default::default()
        },
        TOOLS_WAT.as_bytes(),
    );
    let before = sb
        .invoke(export("initialized", None))
        .unwrap()
        .usage
        .sandbox
        .unwrap();
    let start = Instant::now();
    let outcomes: Vec<_> = std::thread::scope(|s| {
        let runs: Vec<_> = (0..3)
            .map(|_| s.spawn(|| sb.invoke(spin_for(Duration::from_secs(1))).unwrap()))
            .collect();
        runs.into_iter().map(|r| r.join().unwrap()).collect()
    });
    let wall = start.elapsed();
    let after = outcomes
        .iter()
        .map(|o| o.usage.sandbox.unwrap())
        .max_by_key(|u| u.cpu_ns)
        .unwrap();
    let cpu = Duration::from_nanos(after.cpu_ns - before.cpu_ns);
    // Three spinners for about a second would use ~2 CPUs' worth here; the
    // quota holds them to half a CPU (with slack for the last period).
    assert!(
        cpu < wall.mul_f64(0.5) + Duration::from_millis(300),
        "used {cpu:?} in {wall:?}"
    );
    assert!(
        after.throttled_periods > before.throttled_periods,
        "{after:?}"
    );
}

#[test]
fn worker_is_hardened() {
    // An fd the supervisor holds without O_CLOEXEC must not reach the worker.
    let dir = tempdir();
    let secret = dir.path().join("supervisor-secret");
    std::fs::write(&secret, "x").unwrap();
    let path = std::ffi::CString::new(secret.to_str().unwrap()).unwrap();
    // SAFETY: open(2) with a valid C string; the fd is closed below.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDONLY) };
    assert!(fd >= 0);
    let sb = sandbox(SandboxConfig::default(), TOOLS_WAT.as_bytes());
    let pid = sb.worker_pid().unwrap();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    assert!(status.contains("NoNewPrivs:\t1"), "{status}");
    assert!(status.contains("Seccomp:\t2"), "{status}");
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    assert!(
        limits
            .lines()
            .any(|l| l.starts_with("Max core file size") && l.contains(" 0 ")),
        "{limits}"
    );
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap() {
        let target = std::fs::read_link(entry.unwrap().path()).unwrap_or_default();
        assert_ne!(target, secret, "worker inherited the supervisor's fd");
    }
    // SAFETY: closing the fd opened above.
    unsafe { libc::close(fd) };
}

fn stale_dirs(parent: &str) -> Vec<PathBuf> {
    let layout = Layout::detect().unwrap();
    let root = match &layout {
        Layout::V2 { root } => root.clone(),
        Layout::V1 { memory, .. } => memory.clone(),
    };
    std::fs::read_dir(root.join(parent))
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| p.is_dir())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn killed_supervisor_leaves_nothing_after_restart() {
    let dir = tempdir();
    let m = wat_file(dir.path(), "t.wat", TOOLS_WAT);
    let mut supervisor = wasmlet()
        .args(["run", "--sandbox", "--timeout", "60s", "--invoke", "spin"])
        .arg(&m)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let name = format!("{}-0", supervisor.id());
    let deadline = Instant::now() + Duration::from_secs(20);
    let has_ours = || {
        stale_dirs("wasmlet")
            .iter()
            .any(|p| p.file_name().unwrap() == name.as_str())
    };
    while !has_ours() {
        assert!(Instant::now() < deadline, "sandbox cgroup never appeared");
        std::thread::sleep(Duration::from_millis(20));
    }
    supervisor.kill().unwrap();
    supervisor.wait().unwrap();
    // The worker dies with its supervisor; its cgroup is left behind...
    assert!(has_ours());
    // ...until the next supervisor starts, which cleans it up.
    let r = run_cli(wasmlet().args(["run", "--sandbox"]).arg(c_guest("hello")));
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(!has_ours(), "stale cgroup {name} survived a restart");
}

#[test]
fn without_root_the_error_says_what_is_missing() {
    use std::os::unix::process::CommandExt;
    let hello = c_guest("hello");
    let nobody = |extra: &[&str]| {
        run_cli(
            wasmlet()
                .env("WASMLET_CACHE_DIR", "/nonexistent/cache")
                .args(["run", "--sandbox"])
                .args(extra)
                .arg(&hello)
                .uid(65534)
                .gid(65534),
        )
    };
    let r = nobody(&[]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr
            .contains("sandboxes need root or a delegated, writable cgroup hierarchy"),
        "{}",
        r.stderr
    );
    let r = nobody(&["--sandbox-without-cgroups"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("hello from wasm"));
    assert!(r.stderr.contains("without cgroups"), "{}", r.stderr);
}
