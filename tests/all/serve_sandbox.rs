//! `wasmlet serve` with `[function.sandbox]`: WAGI functions in pools of
//! jailed worker processes, on this machine's real cgroups (run as root),
//! over 127.0.0.1.

use crate::helpers::{c_guest, run_cli, tempdir, wasmlet};
use crate::serve::{Resp, Serve, request};
use crate::triggers::{drop_file, until, watching};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use wasmlet_sandbox::cgroup::Layout;

/// A manifest with a sandboxed WAGI function `sb` on `/sb/...` (the serve
/// tests' guest), `[function.limits]` and `[function.sandbox]` extended by
/// the given lines, and `extra` appended.
fn manifest(dir: &Path, limits: &str, sandbox: &str, extra: &str) -> PathBuf {
    let text = format!(
        r#"
[[function]]
name = "sb"
module = "{m}"
env = {{ GREETING = "hi" }}
[function.limits]
timeout = "5s"
{limits}
[function.sandbox]
{sandbox}
[[function.trigger]]
type = "http"
route = "/sb/..."
{extra}
"#,
        m = c_guest("wagi").display()
    );
    let p = dir.join("wasmlet.toml");
    std::fs::write(&p, text).unwrap();
    p
}

/// Gives the manifest's `sb` function the `dirs = [...]` line `dirs`.
fn grant_sb(manifest: &Path, dirs: &str) {
    let text = std::fs::read_to_string(manifest).unwrap().replacen(
        "env = {",
        &format!("{dirs}\nenv = {{"),
        1,
    );
    std::fs::write(manifest, text).unwrap();
}

/// `wasmlet serve` on [`manifest`]'s manifest, once `/readyz` says its
/// warm workers are up.
fn serve_ready(dir: &Path, limits: &str, sandbox: &str) -> Serve {
    let server = Serve::start(&manifest(dir, limits, sandbox, ""));
    wait_ready(&server);
    server
}

/// The server's sandbox cgroup directories (named `<supervisor pid>-...`)
/// in `controller`'s hierarchy.
fn cgroups_of(server: u32, controller: &str) -> Vec<PathBuf> {
    let root = match Layout::detect().unwrap() {
        Layout::V2 { root } => root,
        Layout::V1 {
            memory,
            cpuacct,
            pids,
            ..
        } => match controller {
            "cpuacct" => cpuacct,
            "pids" => pids,
            _ => memory,
        },
    };
    let prefix = format!("{server}-");
    std::fs::read_dir(root.join("wasmlet"))
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| {
                    p.is_dir()
                        && p.file_name()
                            .and_then(|n| n.to_str())
                            .is_some_and(|n| n.starts_with(&prefix))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Waits (at most 60 s) for `/readyz` to answer 200.
fn wait_ready(server: &Serve) {
    until(Duration::from_secs(60), "/readyz", || {
        request(server.admin, "GET", "/readyz", &[], b"").status == 200
    });
}

/// A gauge or counter of function `sb` on `/metrics`.
fn metric(server: &Serve, name: &str) -> i64 {
    let m = server.metrics();
    let key = format!("{name}{{function=\"sb\"}} ");
    m.lines()
        .find_map(|l| l.strip_prefix(&key))
        .unwrap_or_else(|| panic!("{key} not in {m}"))
        .parse()
        .unwrap()
}

/// Function `sb`'s pool on `/metrics`: workers running, worker starts,
/// worker deaths.
fn pool(server: &Serve) -> [i64; 3] {
    [
        "wasmlet_sandbox_workers",
        "wasmlet_sandbox_worker_starts_total",
        "wasmlet_sandbox_worker_deaths_total",
    ]
    .map(|name| metric(server, name))
}

fn cause(r: &Resp) -> String {
    r.header("x-wasmlet-error").unwrap_or("").to_string()
}

/// The usage log's lines for function `sb`, once there are `n` of them.
fn usage_lines(dir: &Path, n: usize) -> Vec<serde_json::Value> {
    let sb = || -> Vec<serde_json::Value> {
        crate::triggers::usage_lines(dir)
            .into_iter()
            .filter(|l| l["function"] == "sb")
            .collect()
    };
    until(Duration::from_secs(10), "the usage lines", || {
        sb().len() >= n
    });
    sb()
}

#[test]
fn serve_sandbox_wagi_hello_end_to_end_with_usage_share() {
    let dir = tempdir();
    let server = serve_ready(dir.path(), "", "memory = \"256MiB\"\nwarm = 1");
    let pid = server.child.id();
    // It runs in a worker in the server's sandbox cgroup, not in-process.
    let cgroups = cgroups_of(pid, "memory");
    assert_eq!(cgroups.len(), 1, "{cgroups:?}");
    let procs = std::fs::read_to_string(cgroups[0].join("cgroup.procs")).unwrap();
    assert!(!procs.trim().is_empty(), "no worker in {cgroups:?}");
    let r = server.get("/sb/hello");
    assert_eq!((r.status, r.text().as_str()), (200, "hello from /hello\n"));
    let r = request(
        server.addr,
        "POST",
        "/sb/echo",
        &[("X-Test", "t")],
        b"body!",
    );
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.text(), "body!");
    assert_eq!(r.header("x-greeting"), Some("hi"));
    assert_eq!(r.header("x-got-header"), Some("t"));
    const N: usize = 30;
    for _ in 2..N {
        assert_eq!(server.get("/sb/hello").status, 200);
    }
    let lines = usage_lines(dir.path(), N);
    let mut shares = 0;
    for l in &lines {
        assert_eq!(l["status"], "exited", "{l}");
        assert_eq!(l["exit_code"], 0, "{l}");
        assert!(l["wall_time_ns"].as_u64().unwrap() > 0, "{l}");
        let sb = &l["sandbox"];
        assert!(sb["memory_peak_bytes"].as_u64().unwrap() > 0, "{l}");
        shares += sb["cpu_ns"].as_u64().unwrap();
    }
    // Shares, not the worker's running totals: they add up to no more than
    // the cgroup's own CPU total (totals repeated on each line would add up
    // to many times it).
    let cpuacct = cgroups_of(pid, "cpuacct");
    let total: u64 = match Layout::detect().unwrap() {
        Layout::V2 { .. } => {
            let stat = std::fs::read_to_string(cpuacct[0].join("cpu.stat")).unwrap();
            let usec: u64 = stat
                .lines()
                .find_map(|l| l.strip_prefix("usage_usec "))
                .unwrap()
                .parse()
                .unwrap();
            usec * 1000
        }
        Layout::V1 { .. } => std::fs::read_to_string(cpuacct[0].join("cpuacct.usage"))
            .unwrap()
            .trim()
            .parse()
            .unwrap(),
    };
    assert!(shares > 0, "no sandbox CPU charged");
    assert!(
        shares <= total,
        "charged {shares} ns of sandbox CPU, the cgroup used {total}"
    );
    assert_eq!(pool(&server), [1, 1, 0]);
}

#[test]
fn serve_sandbox_memory_limit_fails_one_request_then_serves() {
    let dir = tempdir();
    let server = serve_ready(
        dir.path(),
        "memory = \"1GiB\"\nmax_concurrency = 4",
        "memory = \"64MiB\"",
    );
    let r = server.get("/sb/grow");
    assert_eq!(r.status, 500, "{r:?}");
    assert!(
        cause(&r).contains("sandbox memory limit of 64 MiB exceeded"),
        "{r:?}"
    );
    let r = server.get("/sb/hello");
    assert_eq!((r.status, r.text().as_str()), (200, "hello from /hello\n"));
    // One death, its replacement started.
    assert_eq!(pool(&server), [1, 2, 1]);
    // The OOM-killed invocation is billed, and says why.
    let lines = usage_lines(dir.path(), 2);
    assert_eq!(lines[0]["status"], "limit_exceeded", "{}", lines[0]);
    assert!(lines[0]["wall_time_ns"].as_u64().unwrap() > 0);
    assert_eq!(lines[0]["sandbox"]["oom_kills"], 1, "{}", lines[0]);
}

#[test]
fn serve_sandbox_worker_killed_mid_request_fails_only_that_request() {
    let dir = tempdir();
    let server = serve_ready(dir.path(), "", "");
    let addr = server.addr;
    let slow = std::thread::spawn(move || request(addr, "GET", "/sb/sleep?4000", &[], b""));
    std::thread::sleep(Duration::from_millis(500));
    let cgroups = cgroups_of(server.child.id(), "memory");
    assert_eq!(cgroups.len(), 1, "{cgroups:?}");
    let procs = std::fs::read_to_string(cgroups[0].join("cgroup.procs")).unwrap();
    let pids: Vec<i32> = procs.lines().map(|l| l.parse().unwrap()).collect();
    assert!(!pids.is_empty());
    for p in pids {
        // SAFETY: kill(2) with plain integers, on the sandbox's processes.
        unsafe { libc::kill(p, libc::SIGKILL) };
    }
    let r = slow.join().unwrap();
    assert_eq!(r.status, 500, "{r:?}");
    assert!(
        cause(&r).contains("sandbox failed") && cause(&r).contains("SIGKILL"),
        "{r:?}"
    );
    for _ in 0..5 {
        let r = server.get("/sb/hello");
        assert_eq!((r.status, r.text().as_str()), (200, "hello from /hello\n"));
    }
    assert_eq!(pool(&server), [1, 2, 1]);
}

#[test]
fn serve_sandbox_clients_that_leave_early_do_not_use_up_the_workers() {
    let dir = tempdir();
    // One worker of 4 threads at most.
    let server = serve_ready(dir.path(), "max_concurrency = 4", "");
    // Four clients send a request that sleeps 1.5 s in the worker, and
    // leave after 200 ms. Their guests run on in the worker.
    let gone: Vec<_> = (0..4)
        .map(|i| {
            let mut s = std::net::TcpStream::connect(server.addr).unwrap();
            use std::io::Write;
            write!(
                s,
                "GET /sb/sleep?1500 HTTP/1.1\r\nHost: x\r\nX-Request-Id: gone-{i}\r\n\r\n"
            )
            .unwrap();
            s
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    drop(gone);
    // Once their guests are done, the worker's threads are free again:
    // the next requests are served (they waited for ever before).
    std::thread::sleep(Duration::from_millis(2000));
    let addr = server.addr;
    let next = std::thread::spawn(move || {
        (0..4)
            .map(|_| request(addr, "GET", "/sb/hello", &[], b"").status)
            .collect::<Vec<_>>()
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    while !next.is_finished() {
        assert!(
            Instant::now() < deadline,
            "the pool's threads were never given back"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(next.join().unwrap(), vec![200; 4]);
    let lines = usage_lines(dir.path(), 8);
    let gone: Vec<_> = lines
        .iter()
        .filter(|l| l["id"].as_str().is_some_and(|id| id.starts_with("gone-")))
        .collect();
    assert_eq!(gone.len(), 4, "{lines:?}");
    for l in gone {
        assert_eq!(l["status"], "interrupted", "{l}");
    }
}

#[test]
fn serve_sandbox_jail_refuses_what_in_process_allows() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempdir();
    // The sandbox uid must reach the grants (tempdirs are 0700).
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    let secret = dir.path().join("secret");
    let data = dir.path().join("data");
    for d in [&secret, &data] {
        std::fs::create_dir(d).unwrap();
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    // Root's alone: readable by the in-process function (the server runs as
    // root), not by the jailed worker's unprivileged uid.
    std::fs::write(secret.join("root-only"), "secret\n").unwrap();
    std::fs::set_permissions(
        secret.join("root-only"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    let dirs = "dirs = [\"secret::/secret\", \"rw:data::/data\"]";
    let plain = format!(
        "[[function]]\nname = \"plain\"\nmodule = \"{}\"\n{dirs}\n[[function.trigger]]\ntype = \"http\"\nroute = \"/plain/...\"",
        c_guest("wagi").display()
    );
    let m = manifest(dir.path(), "", "", &plain);
    grant_sb(&m, dirs);
    let server = Serve::start(&m);
    wait_ready(&server);
    assert_eq!(
        server.get("/plain/cat?/secret/root-only").text(),
        "secret\n"
    );
    let r = server.get("/sb/cat?/secret/root-only");
    assert_eq!(r.status, 404, "{r:?}");
    assert_eq!(server.get("/plain/write?/data/a").text(), "written\n");
    assert_eq!(server.get("/sb/write?/data/b").text(), "refused\n");
    assert!(!data.join("b").exists());
    assert_eq!(server.get("/sb/cat?/etc/passwd").status, 404);
    assert_eq!(server.get("/sb/cat?/secret/../../etc/passwd").status, 404);
    // Nothing of that took a worker down.
    assert_eq!(metric(&server, "wasmlet_sandbox_worker_deaths_total"), 0);
}

#[test]
fn serve_sandbox_scales_out_under_load_and_back_after_idle() {
    let dir = tempdir();
    let server = serve_ready(
        dir.path(),
        "max_concurrency = 16",
        "warm = 1\nidle_timeout = \"1s\"",
    );
    let pid = server.child.id();
    assert_eq!(metric(&server, "wasmlet_sandbox_workers"), 1);
    // 12 sleeping requests at once: more than one worker's threads.
    let addr = server.addr;
    let load: Vec<_> = (0..12)
        .map(|_| std::thread::spawn(move || request(addr, "GET", "/sb/sleep?1500", &[], b"")))
        .collect();
    let mut most = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !load.iter().all(|h| h.is_finished()) && Instant::now() < deadline {
        most = most.max(metric(&server, "wasmlet_sandbox_workers"));
        std::thread::sleep(Duration::from_millis(50));
    }
    for h in load {
        let r = h.join().unwrap();
        assert_eq!(
            (r.status, r.text().as_str()),
            (200, "slept 1500\n"),
            "{r:?}"
        );
    }
    // 12 in flight need 3 workers of 4 threads; at most 4 for 16.
    assert!((3..=4).contains(&most), "at most {most} workers under load");
    // Idle for `idle_timeout`: back to the warm one, cgroups removed.
    until(Duration::from_secs(20), "the pool back at `warm`", || {
        metric(&server, "wasmlet_sandbox_workers") == 1 && cgroups_of(pid, "memory").len() == 1
    });
    assert_eq!(server.get("/sb/hello").status, 200);
    assert_eq!(metric(&server, "wasmlet_sandbox_worker_deaths_total"), 0);
}

#[test]
fn serve_sandbox_sigterm_leaves_no_cgroups() {
    let dir = tempdir();
    let mut server = serve_ready(dir.path(), "", "warm = 2");
    let pid = server.child.id();
    assert_eq!(cgroups_of(pid, "memory").len(), 2);
    let addr = server.addr;
    let in_flight = std::thread::spawn(move || request(addr, "GET", "/sb/sleep?1000", &[], b""));
    std::thread::sleep(Duration::from_millis(300));
    server.signal(libc::SIGTERM);
    let r = in_flight.join().unwrap();
    assert_eq!((r.status, r.text().as_str()), (200, "slept 1000\n"));
    assert_eq!(server.wait(Duration::from_secs(30)), 0, "{}", server.log());
    for c in ["memory", "cpuacct", "pids"] {
        let left = cgroups_of(pid, c);
        assert!(left.is_empty(), "left behind: {left:?}");
    }
}

#[test]
fn serve_sandbox_http_component_is_refused_with_the_reason() {
    let dir = tempdir();
    let m = crate::serve::http_manifest(dir.path(), "");
    let text = std::fs::read_to_string(&m).unwrap().replacen(
        "[function.limits]",
        "[function.sandbox]\nwarm = 1\n[function.limits]",
        1,
    );
    std::fs::write(&m, text).unwrap();
    let r = run_cli(wasmlet().arg("serve").arg(&m).arg("--check"));
    r.assert_one_line_error("function `web`");
    assert!(
        r.stderr
            .contains("[function.sandbox] is for WAGI functions only")
            && r.stderr.contains("outbound requests"),
        "{}",
        r.stderr
    );
}

#[test]
fn serve_sandbox_file_trigger_runs_in_the_pool() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempdir();
    // The sandbox uid must reach `out/` (tempdirs are 0700) and own it to
    // write there.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    // The triggers tests' function, sandboxed.
    let m = crate::triggers::manifest(
        dir.path(),
        "[function.sandbox]\nwarm = 1",
        "[[function.trigger]]\ntype = \"file\"\ndir = \"inbox\"",
    );
    let out = dir.path().join("out");
    std::os::unix::fs::chown(&out, Some(65534), Some(65534)).unwrap();
    let (server, inbox, staging) = watching(dir.path(), &m);
    wait_ready(&server);
    drop_file(&inbox, &staging, "good.txt", b"twelve bytes");
    until(Duration::from_secs(30), "done/good.txt", || {
        inbox.join("done/good.txt").exists()
    });
    // Written by the jailed worker, as the sandbox uid.
    assert_eq!(
        std::fs::read_to_string(out.join("good.txt")).unwrap(),
        "file 12\n"
    );
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        std::fs::metadata(out.join("good.txt")).unwrap().uid(),
        65534
    );
    let line = || {
        crate::triggers::usage_lines(dir.path())
            .into_iter()
            .find(|l| l["file"] == "good.txt")
    };
    until(Duration::from_secs(10), "the usage line", || {
        line().is_some()
    });
    let line = line().unwrap();
    assert_eq!(line["trigger"], "file", "{line}");
    assert!(
        line["sandbox"]["memory_peak_bytes"].as_u64().unwrap() > 0,
        "{line}"
    );
}

#[test]
fn serve_sandbox_reload_replaces_the_pool_and_stops_the_old_workers() {
    let dir = tempdir();
    let server = serve_ready(dir.path(), "", "warm = 2");
    let pid = server.child.id();
    let before = cgroups_of(pid, "memory");
    assert_eq!(before.len(), 2, "{before:?}");
    server.signal(libc::SIGHUP);
    until(Duration::from_secs(30), "the reload", || {
        server.log().contains("reloaded")
    });
    wait_ready(&server);
    // The new pool's two workers, and none of the old pool's.
    until(Duration::from_secs(20), "the old workers gone", || {
        let now = cgroups_of(pid, "memory");
        now.len() == 2 && now.iter().all(|c| !before.contains(c))
    });
    let r = server.get("/sb/hello");
    assert_eq!((r.status, r.text().as_str()), (200, "hello from /hello\n"));
    assert_eq!(pool(&server), [2, 4, 0]);
}

#[test]
fn serve_sandbox_workers_count_against_the_memory_budget() {
    let dir = tempdir();
    // 64 in flight: up to 16 workers of 1 GiB, more than the 16 instances
    // of 64 MiB and than the budget.
    let m = manifest(
        dir.path(),
        "memory = \"64MiB\"\nmax_concurrency = 64",
        "memory = \"1GiB\"",
        "[server]\nmemory_budget = \"8GiB\"",
    );
    let r = run_cli(wasmlet().arg("serve").arg(&m).arg("--check"));
    r.assert_one_line_error("memory budget of 8 GiB");
    assert!(
        r.stderr.contains("sb: 16 sandbox workers x 1 GiB"),
        "{}",
        r.stderr
    );
    // Within it: accepted, and nothing started by --check.
    let text = std::fs::read_to_string(&m)
        .unwrap()
        .replace("memory = \"1GiB\"", "memory = \"256MiB\"");
    std::fs::write(&m, text).unwrap();
    let r = run_cli(wasmlet().arg("serve").arg(&m).arg("--check"));
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains(": ok"), "{}", r.stdout);
}

#[test]
fn serve_sandbox_functions_of_different_uids_cannot_read_each_others_files() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempdir();
    let mode =
        |p: &Path, m| std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
    mode(dir.path(), 0o711);
    // A directory granted to both functions, with a corner private to 4242.
    let shared = dir.path().join("shared");
    let private = shared.join("private");
    std::fs::create_dir_all(&private).unwrap();
    std::fs::write(private.join("secret"), "4242's\n").unwrap();
    mode(&shared, 0o755);
    mode(&private, 0o700);
    std::os::unix::fs::chown(&private, Some(4242), Some(4242)).unwrap();
    std::os::unix::fs::chown(private.join("secret"), Some(4242), Some(4242)).unwrap();
    let dirs = "dirs = [\"shared::/shared\"]";
    let other = format!(
        "[[function]]\nname = \"other\"\nmodule = \"{}\"\n{dirs}\n[function.sandbox]\nuid = 4343\ngid = 4343\n[[function.trigger]]\ntype = \"http\"\nroute = \"/other/...\"",
        c_guest("wagi").display()
    );
    let m = manifest(dir.path(), "", "uid = 4242\ngid = 4242", &other);
    grant_sb(&m, dirs);
    let server = Serve::start(&m);
    wait_ready(&server);
    assert_eq!(
        server.get("/sb/cat?/shared/private/secret").text(),
        "4242's\n"
    );
    let r = server.get("/other/cat?/shared/private/secret");
    assert_eq!(r.status, 404, "{r:?}");
    assert!(!r.text().contains("4242's"), "{r:?}");
    assert_eq!(metric(&server, "wasmlet_sandbox_worker_deaths_total"), 0);
    drop(server);
    // Root is never a worker's id.
    for (field, value) in [("uid", "0"), ("gid", "0")] {
        let m = manifest(dir.path(), "", &format!("{field} = {value}"), "");
        let r = run_cli(wasmlet().arg("serve").arg(&m).arg("--check"));
        r.assert_one_line_error("function `sb`");
        assert!(r.stderr.contains("unprivileged host id"), "{}", r.stderr);
    }
}

#[test]
fn serve_check_warns_of_a_grant_the_sandbox_uid_cannot_use() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempdir();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let mode = |m| std::fs::set_permissions(&data, std::fs::Permissions::from_mode(m)).unwrap();
    let check = |grant: &str| {
        let m = manifest(dir.path(), "", "uid = 4242\ngid = 4242", "");
        grant_sb(&m, &format!("dirs = [\"{grant}data::/data\"]"));
        let r = run_cli(wasmlet().arg("serve").arg(&m).arg("--check"));
        assert_eq!(r.code, 0, "{}", r.stderr);
        r.stderr
    };
    // The test's own directory above the grant, made root's 0700: the
    // sandbox uid could not even reach the grant.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let err = check("");
    assert!(
        err.contains("cannot be reached by the sandbox's uid 4242")
            && err.contains("mode 700: others have no x"),
        "{err}"
    );
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    // Root's 0755 directory, granted writable to uid 4242: it could not
    // create a file there, and `--check` says so.
    mode(0o755);
    let err = check("rw:");
    assert!(
        err.contains("is granted writable but the sandbox's uid 4242 / gid 4242 cannot write"),
        "{err}"
    );
    assert!(err.contains("mode 755: others have rx"), "{err}");
    // Read-only, it can be listed: no warning.
    assert!(!check("").contains("cannot"), "{}", check(""));
    // The uid's own directory, writable: no warning.
    std::os::unix::fs::chown(&data, Some(4242), Some(4242)).unwrap();
    assert!(!check("rw:").contains("cannot"), "{}", check("rw:"));
    // Another uid's private directory: not even listed.
    std::os::unix::fs::chown(&data, Some(4343), Some(4343)).unwrap();
    mode(0o700);
    let err = check("");
    assert!(err.contains("is granted read-only but"), "{err}");
    assert!(err.contains("cannot list it"), "{err}");
    assert!(err.contains("others have no access"), "{err}");
}
