//! The containerd shim against a real containerd (see `containerd`):
//! images from `wasmlet oci build`, `ctr run` with the wasmlet runtime,
//! kill/delete, memory limits, metrics, many tasks at once, and nothing
//! left behind.

use crate::containerd::{RUNTIME, can_run, containerd};
use crate::helpers::c_guest;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

const NS: &str = "default";

/// A container id unique to this test run.
fn id(name: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "wl-{}-{}-{name}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

fn hello_image(c: &crate::containerd::Containerd) -> &'static str {
    let name = "wasmlet.test/hello:1";
    c.import(NS, &c_guest("hello"), name);
    name
}

#[test]
fn ctr_run_prints_the_guests_output_and_returns_its_exit_code() {
    if !can_run("ctr_run_prints_the_guests_output_and_returns_its_exit_code") {
        return;
    }
    let c = containerd();
    let image = hello_image(&c);
    let name = id("hello");
    let out = c.ctr(&[
        "run",
        "--rm",
        "--runtime",
        RUNTIME,
        "--env",
        "GREETING=hi",
        image,
        &name,
        "/hello.wasm",
        "a1",
        "b2",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{}: {stdout}\n{stderr}\n{}",
        out.status,
        c.log()
    );
    assert!(stdout.contains("hello from wasm"), "{stdout}");
    assert!(
        stdout.contains("arg[1]=a1") && stdout.contains("arg[2]=b2"),
        "{stdout}"
    );
    assert!(stdout.contains("GREETING=hi"), "{stdout}");
    assert!(stderr.contains("this goes to stderr"), "{stderr}");
    c.assert_cleaned_up(NS, &name);

    let name = id("exit7");
    let out = c.ctr(&[
        "run",
        "--rm",
        "--runtime",
        RUNTIME,
        "--env",
        "EXIT_CODE=7",
        image,
        &name,
    ]);
    assert_eq!(
        out.status.code(),
        Some(7),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    c.assert_cleaned_up(NS, &name);
}

/// Waits until `ctr task ls` shows `id` with `status`.
fn wait_status(c: &crate::containerd::Containerd, id: &str, status: &str) -> String {
    let start = Instant::now();
    loop {
        let ls = c.ctr_ok(&["task", "ls"]);
        if let Some(line) = ls.lines().find(|l| l.starts_with(id))
            && line.contains(status)
        {
            return line.to_string();
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{id} never {status}:\n{ls}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Starts the blocker guest's endless sleep as task `name` (detached) and
/// waits until it runs: its pid and its `ctr task ls` line.
fn run_sleeper(c: &crate::containerd::Containerd, image: &str, name: &str) -> (u32, String) {
    c.ctr_ok(&[
        "run",
        "-d",
        "--runtime",
        RUNTIME,
        image,
        name,
        "/blocker.wasm",
        "sleep-loop",
    ]);
    let line = wait_status(c, name, "RUNNING");
    let pid = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    (pid, line)
}

#[test]
fn a_long_running_task_is_listed_killed_and_deleted() {
    if !can_run("a_long_running_task_is_listed_killed_and_deleted") {
        return;
    }
    let c = containerd();
    let image = "wasmlet.test/blocker:1";
    c.import(NS, &c_guest("blocker"), image);
    for (signal, status) in [("SIGTERM", 143), ("SIGKILL", 137)] {
        let name = id("sleeper");
        let (pid, line) = run_sleeper(&c, image, &name);
        // The pid column is a real pid.
        assert!(
            std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "{line}"
        );
        // Still running a moment later.
        std::thread::sleep(Duration::from_millis(200));
        wait_status(&c, &name, "RUNNING");
        c.ctr_ok(&["task", "kill", "--signal", signal, &name]);
        wait_status(&c, &name, "STOPPED");
        // `ctr task delete` reports the task's exit status.
        let out = c.ctr(&["task", "delete", &name]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{stderr}");
        assert!(stderr.contains(&format!("exit code {status}")), "{stderr}");
        c.ctr_ok(&["container", "delete", &name]);
        assert!(!c.ctr_ok(&["task", "ls"]).contains(&name));
        c.assert_cleaned_up(NS, &name);
    }
}

#[test]
fn a_killed_shim_leaves_nothing_once_its_container_is_deleted() {
    if !can_run("a_killed_shim_leaves_nothing_once_its_container_is_deleted") {
        return;
    }
    let c = containerd();
    let image = "wasmlet.test/blocker:1";
    c.import(NS, &c_guest("blocker"), image);
    let name = id("shimkill");
    // A task without limits runs in the shim: its pid is the shim's.
    let (pid, _) = run_sleeper(&c, image, &name);
    // SAFETY: kill(2) of the shim process this test's task runs in.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGKILL) }, 0);
    // containerd notices the dead shim and runs its `delete` (rootfs
    // unmounted, socket removed).
    let start = Instant::now();
    while c
        .ctr_ok(&["task", "ls"])
        .lines()
        .any(|l| l.starts_with(&name) && l.contains("RUNNING"))
    {
        assert!(start.elapsed() < Duration::from_secs(20), "still running");
        std::thread::sleep(Duration::from_millis(20));
    }
    // The task may be gone already (containerd drops a dead shim's task).
    let _ = c.ctr(&["task", "delete", &name]);
    c.ctr_ok(&["container", "delete", &name]);
    // `ctr run -d`'s own FIFOs stay when containerd has dropped the task
    // before `ctr task delete` (runc's tasks leave the same): ctr's, not
    // the shim's, so not checked.
    for f in crate::containerd::ctr_fifos(&name) {
        let _ = std::fs::remove_file(&f);
        let _ = std::fs::remove_dir(f.parent().unwrap());
    }
    c.assert_cleaned_up(NS, &name);
}

#[test]
fn memory_limit_is_enforced_and_reported() {
    if !can_run("memory_limit_is_enforced_and_reported") {
        return;
    }
    let c = containerd();
    let image = "wasmlet.test/grow:1";
    c.import(NS, &c_guest("grow"), image);
    let name = id("grow");
    let out = c.ctr(&[
        "run",
        "--rm",
        "--runtime",
        RUNTIME,
        "--memory-limit",
        &(64u64 << 20).to_string(),
        image,
        &name,
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(137), "{stderr}\n{}", c.log());
    // Either the instance's own limit stopped it (the guest reports its
    // failed allocations) or the kernel's, in the container's cgroup: the
    // shim says which on the task's stderr.
    assert!(
        stderr.contains("wasmlet:") && stderr.contains("memory limit"),
        "{stderr}"
    );
    if let Some(mib) = stderr
        .split("allocated ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|n| n.parse::<u64>().ok())
    {
        assert!(
            mib < 64,
            "allocated {mib} MiB under a 64 MiB limit: {stderr}"
        );
    }
    c.assert_cleaned_up(NS, &name);
}

#[test]
fn task_metrics_come_from_the_tasks_cgroup() {
    if !can_run("task_metrics_come_from_the_tasks_cgroup") {
        return;
    }
    let c = containerd();
    let image = "wasmlet.test/blocker:1";
    c.import(NS, &c_guest("blocker"), image);
    let name = id("metrics");
    let limit = (96u64 << 20).to_string();
    c.ctr_ok(&[
        "run",
        "-d",
        "--runtime",
        RUNTIME,
        "--memory-limit",
        &limit,
        image,
        &name,
        "/blocker.wasm",
        "sleep-loop",
    ]);
    wait_status(&c, &name, "RUNNING");
    // The guest runs in a sandbox worker inside the container's cgroup,
    // never the shim.
    let pid: u32 = wait_status(&c, &name, "RUNNING")
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    assert!(cgroups.contains(&format!("/{NS}/{name}")), "{cgroups}");
    for shim in crate::containerd::shim_pids(&c.socket.to_string_lossy()) {
        let own = std::fs::read_to_string(format!("/proc/{shim}/cgroup")).unwrap_or_default();
        assert!(
            !own.contains(&name),
            "shim {shim} is in the task's cgroup: {own}"
        );
    }
    let metrics = c.ctr_ok(&["task", "metrics", &name]);
    assert!(
        metrics.contains("memory.limit_in_bytes") || metrics.contains("memory.usage_limit"),
        "{metrics}"
    );
    assert!(metrics.contains(&limit), "{metrics}");
    c.ctr_ok(&["task", "kill", "--signal", "SIGKILL", &name]);
    wait_status(&c, &name, "STOPPED");
    c.ctr_ok(&["task", "delete", &name]);
    c.ctr_ok(&["container", "delete", &name]);
    c.assert_cleaned_up(NS, &name);
}

#[test]
fn fifty_tasks_started_at_once_all_complete() {
    if !can_run("fifty_tasks_started_at_once_all_complete") {
        return;
    }
    let c = containerd();
    let image = hello_image(&c);
    let names: Vec<String> = (0..50).map(|i| id(&format!("many{i}"))).collect();
    let children: Vec<_> = names
        .iter()
        .map(|n| {
            c.ctr_cmd(&["run", "--rm", "--runtime", RUNTIME, image, n])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for (child, name) in children.into_iter().zip(&names) {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success()
                && String::from_utf8_lossy(&out.stdout).contains("hello from wasm"),
            "{name}: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    for name in &names {
        c.assert_cleaned_up(NS, name);
    }
}

#[test]
fn snapshot_annotation_starts_tasks_from_the_snapshot() {
    if !can_run("snapshot_annotation_starts_tasks_from_the_snapshot") {
        return;
    }
    let c = containerd();
    let module = c_guest("snap_init");
    // The same module: one image asks for a snapshot, one does not.
    let snap = "wasmlet.test/snap-init-snapshot:1";
    c.import_with(
        NS,
        &module,
        snap,
        &["--annotation", "wasmlet.io/snapshot=true"],
    );
    let plain = "wasmlet.test/snap-init-plain:1";
    c.import(NS, &module, plain);
    let run = |image: &str, extra: &[&str]| {
        let name = id("snap");
        let mut args = vec!["run", "--rm", "--runtime", RUNTIME];
        args.extend_from_slice(extra);
        args.extend_from_slice(&[image, &name]);
        let out = c.ctr(&args);
        c.assert_cleaned_up(NS, &name);
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // Twice: the second start maps the cached snapshot; init ran once,
    // before it was taken, never in a task.
    for _ in 0..2 {
        let (code, stdout, stderr) = run(snap, &[]);
        assert_eq!(code, Some(0), "{stdout}\n{stderr}\n{}", c.log());
        assert!(
            stdout.contains("initialized=1 runs=1"),
            "{stdout}\n{stderr}"
        );
    }
    let (code, stdout, stderr) = run(plain, &[]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stdout.contains("initialized=0 runs=0"),
        "{stdout}\n{stderr}"
    );
    // The spec's annotation (`ctr run --annotation`) asks too, and
    // overrides the image's.
    let (code, stdout, stderr) = run(plain, &["--annotation", "wasmlet.io/snapshot=true"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stdout.contains("initialized=1 runs=1"),
        "{stdout}\n{stderr}"
    );
    let (code, stdout, stderr) = run(snap, &["--annotation", "wasmlet.io/snapshot=false"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stdout.contains("initialized=0 runs=0"),
        "{stdout}\n{stderr}"
    );
    // A value that is neither is refused, saying why.
    let (code, _, stderr) = run(plain, &["--annotation", "wasmlet.io/snapshot=yes"]);
    assert_ne!(code, Some(0));
    assert!(stderr.contains("expected true or false"), "{stderr}");
}

#[test]
fn an_image_with_a_raw_wasm_layer_runs_through_the_stream_processor() {
    if !can_run("an_image_with_a_raw_wasm_layer_runs_through_the_stream_processor") {
        return;
    }
    let c = containerd();
    // runwasi's layer media type; containerd unpacks it with `wasmlet oci
    // wasm-layer` (its stream_processors config, see `containerd`).
    let image = "wasmlet.test/hello-wasm-layer:1";
    c.import_with(NS, &c_guest("hello"), image, &["--wasm-layer"]);
    let name = id("wasm-layer");
    let out = c.ctr(&["run", "--rm", "--runtime", RUNTIME, image, &name]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}: {stdout}\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        c.log()
    );
    assert!(stdout.contains("hello from wasm"), "{stdout}");
    c.assert_cleaned_up(NS, &name);
}

/// Runs `wasmlet oci wasm-layer` with `input` on stdin: its exit code,
/// stdout bytes and stderr.
fn wasm_layer_processor(input: &[u8]) -> (i32, Vec<u8>, String) {
    use std::io::Write;
    let mut child = crate::helpers::wasmlet()
        .args(["oci", "wasm-layer"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap(),
        out.stdout,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_wasm_layer_processor_writes_a_deterministic_tar_and_refuses_other_input() {
    let module = std::fs::read(c_guest("hello")).unwrap();
    let (code, tar, stderr) = wasm_layer_processor(&module);
    assert_eq!(code, 0, "{stderr}");
    // The same tar `wasmlet oci build --wasm-layer` names as the diff id.
    assert_eq!(tar, wasmlet_oci::image::wasm_layer_tar(&module).unwrap());
    assert_eq!(wasm_layer_processor(&module).1, tar, "not deterministic");
    // Its one file is the module, as module.wasm (a ustar header: name at
    // 0, octal size at 124, data from 512).
    let name = &tar[..100];
    assert_eq!(
        &name[..name.iter().position(|&b| b == 0).unwrap()],
        b"module.wasm"
    );
    let size = std::str::from_utf8(&tar[124..135]).unwrap();
    let size = usize::from_str_radix(size.trim_matches(|c| c == '\0' || c == ' '), 8).unwrap();
    assert_eq!(&tar[512..512 + size], &module[..]);
    // Anything but wasm: one clear line, nothing on stdout.
    let (code, out, stderr) = wasm_layer_processor(b"#!/bin/sh\necho hi\n");
    assert_eq!(code, 1, "{stderr}");
    assert!(out.is_empty());
    let run = crate::helpers::Run {
        code,
        stdout: String::new(),
        stderr,
    };
    run.assert_one_line_error("not a WebAssembly binary");
}

#[test]
fn a_sandboxed_task_runs_as_its_containers_user_and_cannot_read_anothers_files() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    if !can_run("a_sandboxed_task_runs_as_its_containers_user_and_cannot_read_anothers_files") {
        return;
    }
    let c = containerd();
    // The image's `User` (`wasmlet oci build --user`) is the task's user:
    // Debian's ctr 1.6 has no `--user`.
    let image = |user: Option<&str>| {
        let name = format!(
            "wasmlet.test/fileops-{}:1",
            user.unwrap_or("root").replace(':', "-")
        );
        let args: Vec<&str> = user.map(|u| vec!["--user", u]).unwrap_or_default();
        c.import_with(NS, &c_guest("fileops"), &name, &args);
        name
    };
    // One directory mounted into every task: user 4242's private corner
    // (0700), and a corner anyone may write.
    let dir = crate::helpers::tempdir();
    let mode = |p: &std::path::Path, m| {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap()
    };
    mode(dir.path(), 0o755);
    let private = dir.path().join("private");
    let open = dir.path().join("open");
    std::fs::create_dir(&private).unwrap();
    std::fs::create_dir(&open).unwrap();
    std::fs::write(private.join("secret"), "4242's\n").unwrap();
    mode(&private, 0o700);
    mode(&open, 0o777);
    std::os::unix::fs::chown(&private, Some(4242), Some(4242)).unwrap();
    std::os::unix::fs::chown(private.join("secret"), Some(4242), Some(4242)).unwrap();
    let mount = format!(
        "type=bind,src={},dst=/data,options=rbind:rw",
        dir.path().display()
    );
    // A memory limit: the guest runs in a jailed worker, not in the shim.
    let run = |user: Option<&str>, args: &[&str]| {
        let name = id("user");
        let mem = (64u64 << 20).to_string();
        let mut a = vec!["run", "--rm", "--runtime", RUNTIME, "--memory-limit", &mem];
        a.extend_from_slice(&["--mount", &mount]);
        let image = image(user);
        a.extend_from_slice(&[&image, &name, "/fileops.wasm"]);
        a.extend_from_slice(args);
        let out = c.ctr(&a);
        c.assert_cleaned_up(NS, &name);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        (
            out.status.code(),
            text,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, err) = run(Some("4242:4242"), &["read", "/data/private/secret"]);
    assert_eq!(
        (code, out.as_str()),
        (Some(0), "4242's\n"),
        "{err}\n{}",
        c.log()
    );
    // Another user, and root (which runs as nobody), are refused.
    for user in [Some("4343:4343"), None] {
        let (code, out, err) = run(user, &["read", "/data/private/secret"]);
        assert_eq!(code, Some(2), "{user:?}: {out}{err}");
        assert!(
            out.starts_with("error: /data/private/secret"),
            "{user:?}: {out}"
        );
        assert!(!out.contains("4242's"), "{user:?}: {out}");
    }
    // What a task writes is its user's on the host.
    for (user, file, owner) in [
        (Some("4343:4344"), "a", (4343, 4344)),
        (None, "b", (65534, 65534)),
    ] {
        let path = format!("/data/open/{file}");
        let (code, out, err) = run(user, &["write", &path, "x"]);
        assert_eq!(code, Some(0), "{user:?}: {out}{err}");
        let meta = std::fs::metadata(open.join(file)).unwrap();
        assert_eq!((meta.uid(), meta.gid()), owner, "{user:?}");
    }
}
