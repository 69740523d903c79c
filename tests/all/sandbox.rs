//! Sandboxes on this machine's real cgroups (run as root): kernel-enforced
//! memory, CPU and pids limits, hardening, crash reporting and cleanup.

use crate::helpers::*;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use wasmlet_runtime::{
    Entry, Invocation, LimitExceeded, Limits, LoadOptions, RuntimeConfig, Status,
};
use wasmlet_sandbox::cgroup::Layout;
use wasmlet_sandbox::{Sandbox, SandboxConfig, WORKER_TASKS, WorkerCommand};

pub fn worker() -> WorkerCommand {
    WorkerCommand {
        program: env!("CARGO_BIN_EXE_wasmlet").into(),
        args: vec!["sandbox-worker".into()],
        stdio: None,
    }
}

pub fn runtime_config() -> RuntimeConfig {
    let mut c = RuntimeConfig::default();
    c.pool.instances = 8;
    c.cache.dir = Some(scratch().join("cache"));
    c
}

pub fn sandbox(config: SandboxConfig, module: &[u8]) -> Sandbox {
    let sb = Sandbox::start(&runtime_config(), &config, worker()).unwrap();
    sb.load(module, &LoadOptions::default()).unwrap();
    sb
}

pub fn export(name: &str, limits: Option<Limits>) -> Invocation {
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
            matches!(&o.status, Status::SandboxFailed(m) if m == "sandbox worker died: killed by its seccomp filter (SIGSYS)"),
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

/// The sandbox's CPU time so far and how many periods it was throttled in,
/// read from its cgroup files directly (not the supervisor's cached totals).
fn cpu_and_throttling(sb: &Sandbox) -> (Duration, u64) {
    let field = |text: &str, key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key)?.trim().parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no {key} in {text}"))
    };
    if Layout::detect().unwrap().is_v2() {
        let stat = read(sb.cgroup_dir("cpu").unwrap().join("cpu.stat"));
        (
            Duration::from_micros(field(&stat, "usage_usec ")),
            field(&stat, "nr_throttled "),
        )
    } else {
        let used = read(sb.cgroup_dir("cpuacct").unwrap().join("cpuacct.usage"));
        let stat = read(sb.cgroup_dir("cpu").unwrap().join("cpu.stat"));
        (
            Duration::from_nanos(used.parse().unwrap()),
            field(&stat, "nr_throttled "),
        )
    }
}

#[test]
fn cpu_quota_throttles_several_spinning_invocations() {
    // A tenth of a CPU: three spinners want up to two CPUs' worth, and even
    // on a loaded two-core machine (the whole suite runs at once) they get
    // far more than a tenth of one, so the quota binds in every period.
    const CPUS: f64 = 0.1;
    let sb = sandbox(
        SandboxConfig {
            cpus: Some(CPUS),
            ..Default::default()
        },
        TOOLS_WAT.as_bytes(),
    );
    assert!(sb.invoke(export("initialized", None)).unwrap().success());
    let (cpu_before, throttled_before) = cpu_and_throttling(&sb);
    let start = Instant::now();
    std::thread::scope(|s| {
        let runs: Vec<_> = (0..3)
            .map(|_| s.spawn(|| sb.invoke(spin_for(Duration::from_secs(1))).unwrap()))
            .collect();
        for r in runs {
            let o = r.join().unwrap();
            assert!(
                matches!(o.status, Status::LimitExceeded(LimitExceeded::Timeout(_))),
                "{:?}",
                o.status
            );
        }
    });
    let wall = start.elapsed();
    let (cpu_after, throttled_after) = cpu_and_throttling(&sb);
    let cpu = cpu_after - cpu_before;
    // The quota holds whatever the load: at most a tenth of the wall time,
    // plus slack for the period in progress and the kernel's per-CPU
    // slices (runtime a CPU overdraws is paid back in the next period).
    let bound = wall.mul_f64(CPUS) + Duration::from_millis(50);
    assert!(cpu <= bound, "used {cpu:?} in {wall:?} (at most {bound:?})");
    assert!(cpu > Duration::ZERO);
    // And the kernel throttled it: about ten periods of 100 ms passed, in
    // each of which the spinners wanted more than the quota.
    assert!(
        throttled_after >= throttled_before + 3,
        "throttled in {} periods of {:?}",
        throttled_after - throttled_before,
        wall
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
    // The pid the supervisor holds waits outside the worker's pid
    // namespace; the worker proper is its only child. Both are confined.
    let waiter = sb.worker_pid().unwrap();
    let pid = jailed_worker(waiter);
    for p in [waiter, pid] {
        let status = std::fs::read_to_string(format!("/proc/{p}/status")).unwrap();
        assert!(status.contains("NoNewPrivs:\t1"), "{status}");
        assert!(status.contains("Seccomp:\t2"), "{status}");
        // Not root on the host: nobody, with no capabilities at all.
        assert!(
            status.contains("Uid:\t65534\t65534\t65534\t65534"),
            "{status}"
        );
        assert!(
            status.contains("Gid:\t65534\t65534\t65534\t65534"),
            "{status}"
        );
        for set in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
            assert!(
                status.contains(&format!("{set}:\t0000000000000000")),
                "{set}: {status}"
            );
        }
    }
    // Its own user, mount, pid, net, ipc and uts namespaces.
    for ns in ["user", "mnt", "pid", "net", "ipc", "uts"] {
        let ours = std::fs::read_link(format!("/proc/self/ns/{ns}")).unwrap();
        let its = std::fs::read_link(format!("/proc/{pid}/ns/{ns}")).unwrap();
        assert_ne!(ours, its, "worker shares the {ns} namespace");
    }
    // Its root holds nothing (no grants were given).
    let root: Vec<_> = std::fs::read_dir(format!("/proc/{pid}/root"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(root.is_empty(), "{root:?}");
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    assert!(
        limits
            .lines()
            .any(|l| l.starts_with("Max core file size") && l.contains(" 0 ")),
        "{limits}"
    );
    // Only stdio (inherited as given), the socket, pagemap, and its own
    // anonymous files. Pagemap is its own (wasmtime reopens it after the
    // jail's fork; /dev/null there would mean PAGEMAP_SCAN is off).
    let mut pagemap = false;
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap() {
        let entry = entry.unwrap();
        let fd: i32 = entry.file_name().to_str().unwrap().parse().unwrap();
        let target = std::fs::read_link(entry.path()).unwrap_or_default();
        if fd <= 2 {
            continue;
        }
        assert_ne!(target, secret, "worker inherited the supervisor's fd");
        let t = target.to_string_lossy();
        pagemap |= t.ends_with("/pagemap");
        assert!(
            !t.starts_with('/')
                || t.starts_with("/dev/")
                || t.ends_with("/pagemap")
                || t.starts_with("/memfd:"),
            "worker holds {t}"
        );
    }
    assert!(pagemap, "the jailed worker has no pagemap open");
    // SAFETY: closing the fd opened above.
    unsafe { libc::close(fd) };
}

/// The jailed worker: the only child of the process the supervisor started.
pub fn jailed_worker(waiter: u32) -> u32 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let children =
            std::fs::read_to_string(format!("/proc/{waiter}/task/{waiter}/children")).unwrap();
        if let Some(c) = children.split_whitespace().next() {
            return c.parse().unwrap();
        }
        assert!(Instant::now() < deadline, "no jailed worker under {waiter}");
        std::thread::sleep(Duration::from_millis(10));
    }
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
    let name = format!("{}-0-", supervisor.id());
    let deadline = Instant::now() + Duration::from_secs(20);
    let has_ours = || {
        stale_dirs("wasmlet")
            .iter()
            .any(|p| p.file_name().unwrap().to_str().unwrap().starts_with(&name))
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
    // (Another supervisor starting at the same time, such as a parallel
    // test's, may be the one that holds the dead owner's lock and removes
    // it: give it a moment.)
    let deadline = Instant::now() + Duration::from_secs(5);
    while has_ours() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
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

#[test]
fn a_call_past_its_deadline_kills_and_replaces_the_worker() {
    let sleeper = std::fs::read(c_guest("sleeper")).unwrap();
    // No timeout of its own: the call's deadline is max_call. The guest
    // sleeps in a host call far longer, so only the supervisor ends it.
    let sb = sandbox(
        SandboxConfig {
            max_call: Duration::from_millis(500),
            ..Default::default()
        },
        &sleeper,
    );
    let pid = sb.worker_pid().unwrap();
    let start = Instant::now();
    let o = sb
        .invoke(Invocation {
            args: vec!["sleeper".into(), "60000".into()],
            ..Default::default()
        })
        .unwrap();
    let took = start.elapsed();
    assert!(
        matches!(o.status, Status::LimitExceeded(LimitExceeded::SandboxMaxCall(t)) if t == Duration::from_millis(500)),
        "{:?}",
        o.status
    );
    // The message names the deadline that stopped it, not a timeout that
    // was never set.
    let Status::LimitExceeded(l) = &o.status else {
        unreachable!()
    };
    assert_eq!(
        l.to_string(),
        "sandbox call deadline of 500ms exceeded (the invocation had no timeout; the sandbox's max_call)"
    );
    assert!(took < Duration::from_secs(5), "took {took:?}");
    assert!(
        o.usage.wall_time >= Duration::from_millis(500),
        "{:?}",
        o.usage
    );
    assert_ne!(sb.worker_pid().unwrap(), pid, "worker not replaced");
    // With a timeout, the invocation ends as that timeout, however it is
    // enforced (by the worker, or by the supervisor a grace period later).
    let o = sb
        .invoke(Invocation {
            args: vec!["sleeper".into(), "60000".into()],
            limits: Some(Limits {
                timeout: Some(Duration::from_millis(200)),
                ..Limits::default()
            }),
            ..Default::default()
        })
        .unwrap();
    assert!(
        matches!(o.status, Status::LimitExceeded(LimitExceeded::Timeout(t)) if t == Duration::from_millis(200)),
        "{:?}",
        o.status
    );
    let o = sb
        .invoke(Invocation {
            args: vec!["sleeper".into(), "10".into()],
            ..Default::default()
        })
        .unwrap();
    assert!(o.success(), "{:?}", o.status);
}

#[test]
fn a_death_is_reported_only_to_the_invocations_running_on_it() {
    let sb = sandbox(SandboxConfig::default(), TOOLS_WAT.as_bytes());
    // Several in flight when the worker dies: each is told, with the cause.
    let pid = sb.worker_pid().unwrap();
    std::thread::scope(|s| {
        let running: Vec<_> = (0..3)
            .map(|_| s.spawn(|| sb.invoke(spin_for(Duration::from_secs(20))).unwrap()))
            .collect();
        std::thread::sleep(Duration::from_millis(300));
        // SAFETY: kill(2) on our own sandbox worker.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        for r in running {
            let o = r.join().unwrap();
            assert!(
                matches!(&o.status, Status::SandboxFailed(m) if m == "sandbox worker died: killed (SIGKILL)"),
                "{:?}",
                o.status
            );
            assert!(o.usage.wall_time > Duration::ZERO);
        }
    });
    // A worker that dies while idle: the next caller runs on its
    // replacement and never hears of the death.
    let pid = sb.worker_pid().unwrap();
    // SAFETY: kill(2) on our own sandbox worker.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    std::thread::sleep(Duration::from_millis(100));
    let o = sb.invoke(export("initialized", None)).unwrap();
    assert!(o.success(), "{:?}", o.status);
}

#[test]
fn a_worker_killed_from_outside_is_billed_its_cpu() {
    // Killing the process the supervisor started (the jail's first
    // process) takes the worker proper with it, unreaped by anyone who
    // could report its CPU: the bill comes from the cgroup.
    let sb = sandbox(SandboxConfig::default(), TOOLS_WAT.as_bytes());
    let pid = sb.worker_pid().unwrap();
    std::thread::scope(|s| {
        let running = s.spawn(|| sb.invoke(spin_for(Duration::from_secs(20))).unwrap());
        let worker = jailed_worker(pid);
        let spun = cpu_of(worker);
        let deadline = Instant::now() + Duration::from_secs(10);
        // (400 ms spun, 300 ms asserted: the cgroup's count of a running
        // task may trail /proc's by a tick.)
        while cpu_of(worker) < spun + Duration::from_millis(400) {
            assert!(Instant::now() < deadline, "the guest never spun");
            std::thread::sleep(Duration::from_millis(20));
        }
        // SAFETY: kill(2) on our own sandbox worker.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        let o = running.join().unwrap();
        assert!(
            matches!(o.status, Status::SandboxFailed(_)),
            "{:?}",
            o.status
        );
        assert!(
            o.usage.cpu_time >= Duration::from_millis(300),
            "billed {:?} of CPU for at least 300 ms of spinning",
            o.usage.cpu_time
        );
    });
}

/// User + system CPU of a process so far (from /proc/PID/stat).
fn cpu_of(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after_comm = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    // Fields 14 and 15 of stat(5) are the 12th and 13th after the name.
    let ticks: u64 = fields
        .get(11..13)
        .map_or(0, |f| f.iter().map(|t| t.parse::<u64>().unwrap_or(0)).sum());
    // SAFETY: sysconf(3) with a valid name.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    Duration::from_millis(ticks * 1000 / hz.max(1))
}

#[test]
fn killed_work_is_billed() {
    let grow = std::fs::read(c_guest("grow")).unwrap();
    let sb = sandbox(
        SandboxConfig {
            memory: Some(64 << 20),
            ..Default::default()
        },
        &grow,
    );
    let o = sb.invoke(Invocation::default()).unwrap();
    assert!(matches!(
        o.status,
        Status::LimitExceeded(LimitExceeded::SandboxMemory(_))
    ));
    let u = &o.usage;
    assert!(u.wall_time > Duration::ZERO, "{u:?}");
    assert!(u.cpu_time > Duration::ZERO, "{u:?}");
    assert!(u.peak_memory_bytes > 32 << 20, "{u:?}");
    assert!(u.gb_seconds > 0.0, "{u:?}");
}

#[test]
fn a_second_module_is_refused() {
    let sb = sandbox(SandboxConfig::default(), TOOLS_WAT.as_bytes());
    sb.load(TOOLS_WAT.as_bytes(), &LoadOptions::default())
        .unwrap();
    let err = sb
        .load(b"(module)", &LoadOptions::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("already runs another module"), "{err}");
    assert!(sb.invoke(export("initialized", None)).unwrap().success());
}

#[test]
fn bad_limits_are_usage_errors() {
    let hello = c_guest("hello");
    for (flag, value, says) in [
        ("--sandbox-cpus", "0", "cpus must be"),
        ("--sandbox-cpus", "-1", "cpus must be"),
        ("--sandbox-cpus", "nan", "cpus must be"),
        ("--sandbox-cpus", "inf", "cpus must be"),
        ("--sandbox-cpus", "1e9", "cpus must be"),
        ("--sandbox-memory", "1KiB", "memory must be at least"),
    ]
    .into_iter()
    .chain((0..WORKER_TASKS).map(|p| {
        let v: &'static str = Box::leak(p.to_string().into_boxed_str());
        ("--sandbox-pids", v, "pids must be at least")
    })) {
        let r = run_cli(
            wasmlet()
                .args(["run", "--sandbox", &format!("{flag}={value}")])
                .arg(&hello),
        );
        assert_eq!(r.code, 1, "{flag} {value}: {}", r.stderr);
        assert!(r.stderr.contains(says), "{flag} {value}: {}", r.stderr);
    }
    // The smallest pids limit accepted is enough for a worker.
    let r = run_cli(
        wasmlet()
            .args(["run", "--sandbox", "--sandbox-pids"])
            .arg(WORKER_TASKS.to_string())
            .arg(&hello),
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
}

#[test]
fn sigterm_ends_the_sandbox_and_removes_its_cgroups() {
    // Three rounds of each: the supervisor must not race its own cleanup
    // (starting a replacement for the worker it is killing, and warning).
    for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP].repeat(3) {
        let dir = tempdir();
        let m = wat_file(dir.path(), "t.wat", TOOLS_WAT);
        let supervisor = wasmlet()
            .args(["run", "--sandbox", "--timeout", "60s", "--invoke", "spin"])
            .arg(&m)
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let prefix = format!("{}-0-", supervisor.id());
        let ours = || {
            stale_dirs("wasmlet").into_iter().find(|p| {
                p.file_name()
                    .unwrap()
                    .to_str()
                    .unwrap()
                    .starts_with(&prefix)
            })
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        let cg = loop {
            if let Some(p) = ours() {
                break p;
            }
            assert!(Instant::now() < deadline, "sandbox cgroup never appeared");
            std::thread::sleep(Duration::from_millis(20));
        };
        std::thread::sleep(Duration::from_millis(200));
        // SAFETY: kill(2) on the child we started.
        unsafe { libc::kill(supervisor.id() as i32, sig) };
        let out = supervisor.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(128 + sig),
            "{:?}: {stderr}",
            out.status
        );
        assert!(
            !stderr.contains("WARN") && !stderr.contains("panicked"),
            "signal {sig}: {stderr}"
        );
        assert!(!cg.exists(), "{} left behind", cg.display());
        let name = cg.file_name().unwrap().to_str().unwrap().to_string();
        assert!(!PathBuf::from(format!("/run/wasmlet/cgroups/{name}.lock")).exists());
    }
}

#[test]
fn a_live_owner_in_another_pid_namespace_keeps_its_cgroup() {
    use std::os::fd::AsRawFd;
    let layout = Layout::detect().unwrap();
    let root = match &layout {
        Layout::V2 { root } => root.clone(),
        Layout::V1 { memory, .. } => memory.clone(),
    };
    // As another supervisor would leave it: a pid that means nothing here,
    // and its owner lock, held.
    let name = format!("4194000-0-{:08x}", std::process::id());
    let dir = root.join("wasmlet").join(&name);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::create_dir_all("/run/wasmlet/cgroups").unwrap();
    let lock_path = format!("/run/wasmlet/cgroups/{name}.lock");
    let lock = std::fs::File::create(&lock_path).unwrap();
    // SAFETY: flock(2) on a file we own.
    assert_eq!(unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) }, 0);
    drop(sandbox(SandboxConfig::default(), TOOLS_WAT.as_bytes()));
    assert!(dir.exists(), "a live owner's cgroup was removed");
    // Once its owner is gone, the next supervisor removes it.
    drop(lock);
    drop(sandbox(SandboxConfig::default(), TOOLS_WAT.as_bytes()));
    assert!(!dir.exists(), "a dead owner's cgroup was kept");
    assert!(!PathBuf::from(&lock_path).exists());
}

#[test]
fn workers_map_the_supervisors_artifact() {
    // Compiled (or taken from the cache) by the supervisor's runtime; the
    // worker is handed the file read-only and maps it: it compiles nothing
    // and never sees the cache.
    let rt = wasmlet_runtime::Runtime::new(runtime_config()).unwrap();
    let f = rt
        .load_bytes(TOOLS_WAT.as_bytes(), &LoadOptions::default())
        .unwrap();
    let artifact = f.artifact_path().expect("cached artifact").to_path_buf();
    let sb = Sandbox::start(&runtime_config(), &SandboxConfig::default(), worker()).unwrap();
    sb.load_function(&f, &LoadOptions::default()).unwrap();
    let o = sb
        .invoke(Invocation {
            entry: Entry::Export {
                name: "add".into(),
                params: vec![wasmlet_runtime::Val::I32(2), wasmlet_runtime::Val::I32(3)],
            },
            ..Default::default()
        })
        .unwrap();
    assert!(
        matches!(&o.status, Status::Returned(v) if v.len() == 1 && v[0].unwrap_i32() == 5),
        "{:?}",
        o.status
    );
    let pid = jailed_worker(sb.worker_pid().unwrap());
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let name = artifact.file_name().unwrap().to_str().unwrap();
    let mapped: Vec<&str> = maps.lines().filter(|l| l.contains(name)).collect();
    assert!(!mapped.is_empty(), "artifact not mapped:\n{maps}");
    assert!(
        mapped
            .iter()
            .all(|l| !l.split_whitespace().nth(1).unwrap().contains('w')),
        "{mapped:?}"
    );
    // A replacement worker gets it too.
    // SAFETY: kill(2) on our own sandbox worker.
    unsafe { libc::kill(sb.worker_pid().unwrap() as i32, libc::SIGKILL) };
    std::thread::sleep(Duration::from_millis(100));
    assert!(sb.invoke(export("initialized", None)).unwrap().success());
}

#[test]
fn a_grant_of_the_host_root_shows_none_of_its_kernel_interfaces() {
    let run = |sandbox: bool, args: &[&str]| {
        let mut cmd = wasmlet();
        cmd.arg("run");
        if sandbox {
            cmd.arg("--sandbox");
        }
        run_cli(
            cmd.args(["--dir", "/::/"])
                .arg(c_guest("fileops"))
                .args(args),
        )
    };
    // In process (no jail), the grant holds the host's /proc as it is...
    let r = run(false, &["list", "/proc"]);
    assert!(
        r.stdout.lines().any(|l| l == "1"),
        "{}{}",
        r.stdout,
        r.stderr
    );
    // ...in a sandbox, its kernel interfaces are empty and read-only.
    for dir in ["/proc", "/sys", "/sys/fs/cgroup", "/dev/pts"] {
        let r = run(true, &["count", dir]);
        if r.code == 2 {
            continue; // not there at all
        }
        assert_eq!(
            (r.code, r.stdout.as_str()),
            (0, "2\n"),
            "{dir}: {}",
            r.stderr
        );
    }
    for file in [
        "/proc/1/cmdline",
        "/proc/self/status",
        "/sys/kernel/osrelease",
    ] {
        let r = run(true, &["read", file]);
        assert_eq!(r.code, 2, "{file}: {}{}", r.stdout, r.stderr);
        assert!(
            r.stdout.starts_with(&format!("error: {file}")),
            "{}",
            r.stdout
        );
    }
    let r = run(true, &["write", "/proc/x", "y"]);
    assert_eq!(r.code, 2, "{}{}", r.stdout, r.stderr);
    // The rest of the grant is still there.
    let r = run(true, &["read", "/etc/hostname"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
}

#[test]
fn kernel_file_systems_granted_or_mounted_in_grants_stay_hidden_and_others_do_not_matter() {
    let fileops = c_guest("fileops");
    let run = |dir: &str, args: &[&str]| {
        run_cli(
            wasmlet()
                .args(["run", "--sandbox", "--dir", dir])
                .arg(&fileops)
                .args(args),
        )
    };
    // A grant that is itself a kernel interface is refused, by what it is
    // (a symlink to /proc is /proc).
    let link = tempdir();
    std::os::unix::fs::symlink("/proc", link.path().join("p")).unwrap();
    let via_link = format!("{}::/k", link.path().join("p").display());
    for dir in [
        "/proc::/k",
        "/proc/sys::/k",
        "/sys::/k",
        "/sys/fs/cgroup/memory::/k",
        &via_link,
    ] {
        let r = run(dir, &["list", "/k"]);
        assert_eq!(r.code, 1, "{dir}: {}{}", r.stdout, r.stderr);
        assert!(
            r.stderr.contains("which a sandbox never shows"),
            "{dir}: {}",
            r.stderr
        );
        assert!(!r.stdout.lines().any(|l| l == "1"), "{dir}: {}", r.stdout);
    }
    let mount = |args: &[&str]| {
        let ok = std::process::Command::new("mount")
            .args(args)
            .status()
            .unwrap()
            .success();
        assert!(ok, "mount {args:?}");
    };
    let umount = |p: &std::path::Path| {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(p)
            .status();
    };
    // Inside a grant: a proc mount (covered) and a namespace handle mounted
    // on a file (as `ip netns` makes; left alone, the jail still starts).
    let d = tempdir();
    let data = d.path().join("data");
    std::fs::create_dir_all(data.join("proc")).unwrap();
    std::fs::write(data.join("netns"), "").unwrap();
    mount(&["--bind", "/proc", data.join("proc").to_str().unwrap()]);
    mount(&[
        "--bind",
        "/proc/self/ns/net",
        data.join("netns").to_str().unwrap(),
    ]);
    // A host mount at the path the jail's staging would give another grant:
    // not in that grant, so not its business.
    let name = format!("wlt-{}", std::process::id());
    let hidden = std::path::Path::new("/tmp").join(&name);
    std::fs::create_dir_all(hidden.join("p")).unwrap();
    mount(&["--bind", "/proc", hidden.join("p").to_str().unwrap()]);
    let r1 = run(
        &format!("{}::/data", data.display()),
        &["count", "/data/proc"],
    );
    let r2 = run(
        &format!("{}::/{name}", d.path().display()),
        &["list", &format!("/{name}")],
    );
    umount(&data.join("proc"));
    umount(&data.join("netns"));
    umount(&hidden.join("p"));
    let _ = std::fs::remove_dir_all(&hidden);
    assert_eq!((r1.code, r1.stdout.as_str()), (0, "2\n"), "{}", r1.stderr);
    assert_eq!(r2.code, 0, "{}{}", r2.stdout, r2.stderr);
    assert!(r2.stdout.lines().any(|l| l == "data"), "{}", r2.stdout);
}
