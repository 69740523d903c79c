//! An outside tester's attacks on the events and the bill: manifests that
//! cannot work, hostile files dropped into a watched directory, usage logs
//! that are not files or not the server's own, and logs and flags that
//! would make `wasmlet usage` print a wrong or dangerous bill. Each test
//! does the bad thing and checks the refusal or the safe outcome.

use crate::helpers::{run_cli, tempdir, wait_at_most, wasmlet};
use crate::serve::{Serve, request};
use crate::triggers::{drop_file, manifest, names, until, usage_lines, watching};
use crate::usage::{Tmpfs, metric};
use serde_json::Value;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

/// `wasmlet serve MANIFEST ARGS` that must refuse to start: its exit code
/// and stderr (fails the test if it serves instead).
fn refused(manifest: &Path, args: &[&str]) -> String {
    let child = wasmlet()
        .arg("serve")
        .arg(manifest)
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (code, _, stderr) = wait_at_most(child, Duration::from_secs(20));
    assert_ne!(code, 0, "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    stderr
}

/// A temporary directory with a manifest whose function `ev` has a file
/// trigger on `inbox`, with `settings` (TOML lines) added to it.
fn inbox_manifest(settings: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempdir();
    let m = manifest(
        dir.path(),
        "",
        &format!("[[function.trigger]]\ntype = \"file\"\ndir = \"inbox\"\n{settings}"),
    );
    (dir, m)
}

/// `serve --check` of a manifest with one schedule trigger of `settings`.
fn check_schedule(settings: &str) -> crate::helpers::Run {
    let dir = tempdir();
    let m = manifest(
        dir.path(),
        "",
        &format!("[[function.trigger]]\ntype = \"schedule\"\n{settings}\n"),
    );
    run_cli(wasmlet().arg("serve").arg(&m).arg("--check"))
}

#[test]
fn attack_schedule_manifests_are_refused_in_one_line() {
    for (settings, why) in [
        ("cron = \"bogus\"", "between 5 and 7 fields"),
        ("cron = \"61 * * * *\"", "out of bounds"),
        ("cron = \"\"", "empty"),
        ("every = \"0s\"", "more than zero"),
        ("every = \"-5s\"", "invalid duration"),
        ("every = \"99999999999d\"", "at most"),
        // Shorter than a second: the schedule would fire back to back,
        // starving the server (it did, before this was refused).
        ("every = \"1ns\"", "shorter than 1s"),
        ("every = \"999ms\"", "shorter than 1s"),
        (
            "cron = \"* * * * *\"\nevery = \"5s\"",
            "either `cron` or `every`",
        ),
        ("name = \"x\"", "either `cron` or `every`"),
        (
            "cron = \"* * * * *\"\ntimezone = \"Mars/Olympus\"",
            "not an IANA time zone",
        ),
        ("every = \"5s\"\noverlap = \"sometimes\"", "unknown variant"),
        ("every = \"5s\"\nmissed = \"all\"", "unknown variant"),
    ] {
        let r = check_schedule(settings);
        assert_eq!(r.code, 1, "{settings}: {}", r.stdout);
        r.assert_one_line_error(why);
    }
    assert_eq!(check_schedule("every = \"1s\"").code, 0);
    // From 5 every 15: the step form manifests already use stays valid.
    assert_eq!(check_schedule("cron = \"5/15 * * * * *\"").code, 0);
}

#[test]
fn attack_schedule_that_never_fires_ends_quietly_and_the_server_serves() {
    // February 30th, and a year passed: no time matches, ever.
    for cron in ["0 0 0 30 2 *", "0 0 0 1 1 * 1999"] {
        let dir = tempdir();
        let m = manifest(
            dir.path(),
            "",
            &format!("[[function.trigger]]\ntype = \"schedule\"\ncron = \"{cron}\"\n"),
        );
        let mut server = Serve::start(&m);
        until(Duration::from_secs(10), "the schedule's end", || {
            server.log().contains("no later time matches")
        });
        assert_eq!(
            request(server.admin, "GET", "/readyz", &[], b"").status,
            200
        );
        server.signal(libc::SIGTERM);
        assert_eq!(server.wait(Duration::from_secs(30)), 0);
    }
}

#[test]
fn attack_file_trigger_directories_that_cannot_work_are_refused() {
    let one = "[[function.trigger]]\ntype = \"file\"\n";
    // A file where the directory should be.
    let dir = tempdir();
    let m = manifest(dir.path(), "", &format!("{one}dir = \"afile\"\n"));
    std::fs::write(dir.path().join("afile"), b"x").unwrap();
    let e = refused(&m, &[]);
    assert!(e.contains("afile") && e.contains("File exists"), "{e}");
    // The manifest's own directory: the manifest, the log and the module
    // would be taken as events and moved to done/.
    let dir = tempdir();
    let m = manifest(dir.path(), "", &format!("{one}dir = \".\"\n"));
    let e = refused(&m, &[]);
    assert!(e.contains("holds the manifest"), "{e}");
    assert!(dir.path().join("wasmlet.toml").exists());
    assert!(!dir.path().join("done").exists());
    // The usage log inside the watched directory (set by flag).
    let dir = tempdir();
    let m = manifest(dir.path(), "", &format!("{one}dir = \"inbox\"\n"));
    let log = dir.path().join("inbox/usage.jsonl");
    let e = refused(&m, &["--usage-log", log.to_str().unwrap()]);
    assert!(e.contains("holds the usage log"), "{e}");
    // Two triggers on one directory, the second through a symbolic link:
    // every file would be processed twice (it was).
    let dir = tempdir();
    std::fs::create_dir_all(dir.path().join("inbox")).unwrap();
    std::os::unix::fs::symlink("inbox", dir.path().join("alias")).unwrap();
    let m = manifest(
        dir.path(),
        "",
        &format!("{one}dir = \"inbox\"\n{one}name = \"again\"\ndir = \"alias\"\n"),
    );
    let e = refused(&m, &[]);
    assert!(
        e.contains("trigger `again`") && e.contains("watched by function `ev` trigger `file` too"),
        "{e}"
    );
}

#[test]
fn attack_file_trigger_under_a_relative_manifest_path_takes_events() {
    // `wasmlet serve` (./wasmlet.toml) from the manifest's directory: the
    // watcher's paths and the trigger's must compare equal (they did not,
    // and no event was ever taken).
    let dir = tempdir();
    manifest(
        dir.path(),
        "",
        "[[function.trigger]]\ntype = \"file\"\ndir = \"inbox\"\n",
    );
    let mut cmd = wasmlet();
    cmd.current_dir(dir.path())
        .args(["serve", "wasmlet.toml"])
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .env("WASMLET_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let server = Serve::spawn(cmd);
    until(Duration::from_secs(10), "the watch", || {
        server.log().contains("watching")
    });
    let inbox = dir.path().join("inbox");
    let staging = dir.path().join("staging");
    std::fs::create_dir_all(&staging).unwrap();
    drop_file(&inbox, &staging, "renamed", b"abc");
    std::fs::write(inbox.join("written"), b"abcd").unwrap();
    until(Duration::from_secs(20), "both done", || {
        names(&inbox.join("done")).len() == 2
    });
    drop(server);
}

#[test]
fn attack_file_trigger_symlinks_and_subdirectories_are_never_read() {
    let (dir, m) = inbox_manifest("retries = 0\n");
    let (server, inbox, staging) = watching(dir.path(), &m);
    let secret = dir.path().join("secret");
    std::fs::write(&secret, b"top secret").unwrap();
    // Renamed in (an event), made in place, to a file the server can read.
    std::os::unix::fs::symlink(&secret, staging.join("renamed-link")).unwrap();
    std::fs::rename(staging.join("renamed-link"), inbox.join("renamed-link")).unwrap();
    std::os::unix::fs::symlink("/etc/shadow", inbox.join("shadow")).unwrap();
    std::fs::create_dir(inbox.join("subdir")).unwrap();
    std::fs::write(inbox.join("subdir/inner"), b"x").unwrap();
    drop_file(&inbox, &staging, "zz-last", b"ok");
    let done = inbox.join("done");
    until(Duration::from_secs(20), "the plain file", || {
        names(&done) == ["zz-last"]
    });
    std::thread::sleep(Duration::from_millis(300));
    // Not read: no output, no usage line, left where they are.
    assert_eq!(names(&dir.path().join("out")), ["zz-last"]);
    assert!(names(&inbox.join("failed")).is_empty());
    for n in ["renamed-link", "shadow"] {
        assert!(
            inbox.join(n).symlink_metadata().unwrap().is_symlink(),
            "{n}"
        );
    }
    assert!(inbox.join("subdir/inner").exists());
    // A line is queued before the outcome's rename, written just after.
    until(Duration::from_secs(10), "the usage lines", || {
        !usage_lines(dir.path()).is_empty()
    });
    let lines = usage_lines(dir.path());
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        server.log().contains("not a regular file"),
        "{}",
        server.log()
    );
}

#[test]
fn attack_file_trigger_odd_names() {
    let (dir, m) = inbox_manifest("retries = 1\nbackoff = \"50ms\"\n");
    let (server, inbox, staging) = watching(dir.path(), &m);
    let long = "L".repeat(250);
    let newline = "new\nline";
    drop_file(&inbox, &staging, newline, b"a");
    drop_file(&inbox, &staging, &long, b"long");
    drop_file(&inbox, &staging, "empty", b"");
    drop_file(&inbox, &staging, ".dotfile", b"x");
    // Not UTF-8: cannot be WASMLET_FILE_NAME; left with a warning.
    let raw = std::ffi::OsStr::from_bytes(b"bad\xff");
    std::fs::write(staging.join(raw), b"b").unwrap();
    std::fs::rename(staging.join(raw), inbox.join(raw)).unwrap();
    let done = inbox.join("done");
    until(Duration::from_secs(20), "three done", || {
        names(&done).len() == 3
    });
    let got = names(&done);
    assert!(got.contains(&newline.to_string()) && got.contains(&"empty".to_string()));
    // The long name, shortened for done/ (its state file and any `.N` or
    // `.error` would pass NAME_MAX; it used to retry forever).
    let short = got.iter().find(|n| n.starts_with("LLLL")).unwrap();
    assert!(short.len() < 240 && short.contains('~'), "{short}");
    assert_eq!(std::fs::read(done.join(short)).unwrap(), b"long");
    let out = dir.path().join("out");
    assert_eq!(
        std::fs::read_to_string(out.join(newline)).unwrap(),
        "file 1\n"
    );
    assert_eq!(
        std::fs::read_to_string(out.join(&long)).unwrap(),
        "file 4\n"
    );
    assert_eq!(
        std::fs::read_to_string(out.join("empty")).unwrap(),
        "file 0\n"
    );
    assert!(inbox.join(".dotfile").exists() && inbox.join(raw).exists());
    until(Duration::from_secs(10), "no progress state", || {
        names(&inbox.join(".wasmlet")).is_empty()
    });
    // A line is queued before the outcome's rename, written just after.
    until(Duration::from_secs(10), "the usage lines", || {
        usage_lines(dir.path()).len() >= 3
    });
    let lines = usage_lines(dir.path());
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert!(lines.iter().any(|l| l["file"] == newline));
    assert!(server.log().contains("not UTF-8"), "{}", server.log());
    assert!(!server.log().contains("ERROR"), "{}", server.log());
}

#[test]
fn attack_file_trigger_same_names_never_overwrite() {
    let (dir, m) = inbox_manifest("retries = 0\n");
    let (server, inbox, staging) = watching(dir.path(), &m);
    let (done, failed) = (inbox.join("done"), inbox.join("failed"));
    // Data named like an error file fails first; then a failing `p`, whose
    // `p.error` must not overwrite that data.
    drop_file(&inbox, &staging, "p.error", b"poison data");
    until(Duration::from_secs(20), "p.error failed", || {
        names(&failed).len() == 2
    });
    drop_file(&inbox, &staging, "p", b"poison");
    until(Duration::from_secs(20), "p failed", || {
        names(&failed).len() == 4
    });
    assert_eq!(
        std::fs::read(failed.join("p.error")).unwrap(),
        b"poison data"
    );
    assert_eq!(
        names(&failed),
        ["p.1", "p.1.error", "p.error", "p.error.error"]
    );
    assert_eq!(std::fs::read(failed.join("p.1")).unwrap(), b"poison");
    // The same name done three times: three files, none lost.
    for body in ["one", "two", "three"] {
        drop_file(&inbox, &staging, "same", body.as_bytes());
        let n = names(&done).len();
        until(Duration::from_secs(20), "same done", || {
            names(&done).len() == n + 1
        });
    }
    let bodies: Vec<String> = names(&done)
        .iter()
        .map(|n| std::fs::read_to_string(done.join(n)).unwrap())
        .collect();
    assert_eq!(bodies, ["one", "two", "three"]);
    drop(server);
}

#[test]
fn attack_file_trigger_oversized_file_and_hand_edited_state() {
    let (dir, m) = inbox_manifest("max_size = \"1KiB\"\nretries = 2\n");
    let inbox = dir.path().join("inbox");
    let state = inbox.join(".wasmlet");
    std::fs::create_dir_all(&state).unwrap();
    // Waiting before the start: one with garbage state (taken afresh), one
    // whose state says every attempt was used (goes to failed/ unrun), and
    // state for a file that is not there (removed).
    std::fs::write(inbox.join("garbled"), b"x").unwrap();
    std::fs::write(state.join("garbled.json"), b"{not json").unwrap();
    std::fs::write(inbox.join("spent"), b"x").unwrap();
    std::fs::write(
        state.join("spent.json"),
        br#"{"attempts":99,"last_error":"hand-edited"}"#,
    )
    .unwrap();
    std::fs::write(state.join("ghost.json"), b"{}").unwrap();
    let (server, inbox, staging) = watching(dir.path(), &m);
    drop_file(&inbox, &staging, "big", &vec![b'x'; 2048]);
    let (done, failed) = (inbox.join("done"), inbox.join("failed"));
    until(Duration::from_secs(20), "outcomes", || {
        names(&done).len() == 1 && names(&failed).len() == 4
    });
    assert_eq!(names(&done), ["garbled"]);
    let why = std::fs::read_to_string(failed.join("big.error")).unwrap();
    assert!(
        why.contains("2048 bytes") && why.contains("max_size"),
        "{why}"
    );
    let why = std::fs::read_to_string(failed.join("spent.error")).unwrap();
    assert!(why.contains("hand-edited"), "{why}");
    // Only `garbled` ran.
    // A line is queued before the outcome's rename, written just after.
    until(Duration::from_secs(10), "the usage lines", || {
        !usage_lines(dir.path()).is_empty()
    });
    let lines = usage_lines(dir.path());
    assert_eq!(lines.len(), 1, "{lines:?}");
    until(Duration::from_secs(10), "no progress state", || {
        names(&state).is_empty()
    });
    drop(server);
}

#[test]
fn attack_usage_log_that_is_not_a_regular_file_is_refused() {
    let dir = tempdir();
    let m = manifest(dir.path(), "", "");
    let adir = dir.path().join("adir");
    std::fs::create_dir(&adir).unwrap();
    let e = refused(&m, &["--usage-log", adir.to_str().unwrap()]);
    assert!(e.contains("not a regular file"), "{e}");
    // A FIFO: the open used to block for a reader, a server hung silently.
    let fifo = dir.path().join("fifo");
    crate::helpers::mkfifo(&fifo);
    let e = refused(&m, &["--usage-log", fifo.to_str().unwrap()]);
    assert!(e.contains("not a regular file"), "{e}");
    // A device: rotation would rename /dev/null.
    let e = refused(&m, &["--usage-log", "/dev/null"]);
    assert!(e.contains("not a regular file"), "{e}");
    assert!(Path::new("/dev/null").metadata().is_ok());
    // A read-only file system.
    let ro = dir.path().join("ro");
    if let Some(_fs) = Tmpfs::mount(&ro, "64k") {
        let remount = std::process::Command::new("mount")
            .args(["-o", "remount,ro"])
            .arg(&ro)
            .status()
            .unwrap();
        assert!(remount.success());
        let log = ro.join("u.jsonl");
        let e = refused(&m, &["--usage-log", log.to_str().unwrap()]);
        assert!(e.contains("Read-only file system"), "{e}");
    }
}

#[test]
fn attack_two_servers_on_one_usage_log_the_second_is_refused() {
    let (_dir, m) = inbox_manifest("");
    let first = Serve::start(&m);
    // The same manifest again: same log, same inbox. Two writers would cut
    // each other's lines, two watchers process every file twice.
    let e = refused(&m, &[]);
    assert!(e.contains("in use by another process"), "{e}");
    drop(first);
    // Once the first is gone, the log is free again.
    let second = Serve::start(&m);
    drop(second);
}

#[test]
fn attack_rejected_request_gets_a_line_with_its_id_and_metrics_agree() {
    let dir = tempdir();
    // One instance, no queue: a second request while the first sleeps is a
    // 503, refused before running.
    let m = manifest(dir.path(), "max_concurrency = 1\nqueue_depth = 0", "");
    let server = Serve::start(&m);
    let addr = server.addr;
    let slow = std::thread::spawn(move || {
        request(
            addr,
            "POST",
            "/ev",
            &[("x-request-id", "slow-1")],
            b"sleep 1500",
        )
    });
    std::thread::sleep(Duration::from_millis(500));
    let r = request(addr, "GET", "/ev", &[("x-request-id", "busy-1")], b"");
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.header("x-request-id"), Some("busy-1"));
    let slow = slow.join().unwrap();
    assert_eq!(slow.header("x-request-id"), Some("slow-1"));
    // A generated id is the line's id too.
    let r = request(addr, "GET", "/nowhere", &[], b"");
    let generated = r.header("x-request-id").unwrap().to_string();
    until(Duration::from_secs(10), "three lines", || {
        usage_lines(dir.path()).len() == 3
    });
    let lines = usage_lines(dir.path());
    let by = |id: &str| crate::usage::line_of(&lines, id).clone();
    assert_eq!(by("busy-1")["status"], "rejected");
    assert_eq!(by("busy-1")["http_status"], 503);
    assert!(by("busy-1").get("gb_seconds").is_none());
    assert!(by("slow-1")["wall_time_ns"].as_u64().unwrap() >= 1_000_000_000);
    assert_eq!(by(&generated)["reason"], "no_route");
    // Counted just after each batch is synced: wait for the last.
    until(Duration::from_secs(10), "the counters", || {
        metric(&server.metrics(), "wasmlet_usage_lines_total") == 3.0
    });
    let text = server.metrics();
    assert_eq!(
        metric(&text, "wasmlet_usage_invocations_total{function=\"ev\"}"),
        1.0
    );
    assert_eq!(
        metric(&text, "wasmlet_usage_rejected_total{function=\"ev\"}"),
        1.0
    );
    assert_eq!(metric(&text, "wasmlet_usage_lines_total"), 3.0);
}

#[test]
fn attack_the_bill_with_hostile_logs_and_flags() {
    let dir = tempdir();
    let log = dir.path().join("wasmlet-usage.jsonl");
    let ok = |f: &str, extra: &str| {
        format!(
            r#"{{"function":"{f}","trigger":"http","id":"1","start_time":"2026-11-01T10:00:00Z","wall_time_ns":1000000000,"cpu_time_ns":1000,"gb_seconds":0.5,"status":"exited","exit_code":0,"memory_limit_bytes":134217728{extra}}}"#
        )
    };
    let lines = [
        // A formula as a function name (a hand-made or forged log).
        ok("=HYPERLINK(\\\"http://x\\\")", ""),
        ok("@SUM(A1)", ""),
        // Negative or nonsense figures: not usage records.
        r#"{"function":"neg","trigger":"http","id":"2","start_time":"2026-11-01T10:00:00Z","wall_time_ns":-5,"cpu_time_ns":1,"gb_seconds":0.1,"status":"exited","exit_code":0}"#.to_string(),
        r#"{"function":"neg","trigger":"http","id":"3","start_time":"2026-11-01T10:00:00Z","wall_time_ns":5,"cpu_time_ns":1,"gb_seconds":-1.0,"status":"exited","exit_code":0}"#.to_string(),
        r#"{"function":"neg","trigger":"http","id":"4","start_time":"yesterday","wall_time_ns":5,"status":"exited"}"#.to_string(),
        "garbage".to_string(),
        "[1,2,3]".to_string(),
        format!("{{\"function\":\"{}\"", "x".repeat(1 << 20)),
    ];
    std::fs::write(&log, lines.join("\n") + "\n").unwrap();
    // Rotated files with a gap (.1 and .3): both read by default.
    std::fs::write(
        dir.path().join("wasmlet-usage.jsonl.1"),
        ok("r1", "") + "\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("wasmlet-usage.jsonl.3"),
        ok("r3", "") + "\n",
    )
    .unwrap();
    let usage = |args: &[&str]| run_cli(wasmlet().current_dir(dir.path()).arg("usage").args(args));
    let r = usage(&["--format", "json", "--memory-basis", "peak"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let bill: Value = serde_json::from_str(&r.stdout).unwrap();
    let keys: Vec<&str> = bill["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["=HYPERLINK(\"http://x\")", "@SUM(A1)", "r1", "r3"]);
    assert_eq!(bill["total"]["invocations"], 4);
    assert_eq!(bill["total"]["gb_seconds"], 2.0);
    assert_eq!(bill["skipped_lines"], 6);
    // CSV: a key a spreadsheet would run is text.
    let r = usage(&["--format", "csv"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let csv: Vec<&str> = r.stdout.lines().collect();
    assert!(
        csv[1].starts_with("\"'=HYPERLINK(\"\"http://x\"\")\","),
        "{}",
        r.stdout
    );
    assert!(csv[2].starts_with("'@SUM(A1),"), "{}", r.stdout);
    assert!(
        csv.iter().skip(1).all(|l| !l.starts_with(['=', '+', '@'])),
        "{}",
        r.stdout
    );
    // An empty or reversed period, a time that is not one: one line each.
    let r = usage(&["--since", "2026-12-01", "--until", "2026-11-01"]);
    assert_eq!(r.code, 1);
    r.assert_one_line_error("is not before --until");
    let r = usage(&["--since", "2026-11-01", "--until", "2026-11-01"]);
    r.assert_one_line_error("the period is empty");
    for bad in ["2026-13-45", "2026-11-01T25:00:00Z", "1700000000"] {
        let r = usage(&["--since", bad]);
        assert_ne!(r.code, 0, "{bad}: {}", r.stdout);
        assert!(r.stderr.contains("is not a time"), "{bad}: {}", r.stderr);
    }
    for bad in ["-1", "NaN", "inf", "abc"] {
        let r = usage(&["--price-gb-second", bad]);
        assert_ne!(r.code, 0, "{bad}");
        assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
    }
}

#[test]
fn attack_file_trigger_file_deleted_while_processed() {
    let (dir, m) = inbox_manifest("");
    let (server, inbox, staging) = watching(dir.path(), &m);
    drop_file(&inbox, &staging, "vanishing", b"sleep 1500");
    let state = inbox.join(".wasmlet");
    until(Duration::from_secs(10), "the attempt", || {
        names(&state) == ["vanishing.json"]
    });
    std::fs::remove_file(inbox.join("vanishing")).unwrap();
    until(Duration::from_secs(10), "the run's end", || {
        server.log().contains("before its outcome")
    });
    assert!(names(&state).is_empty());
    assert!(names(&inbox.join("done")).is_empty());
    // Its run is billed all the same.
    until(Duration::from_secs(10), "its line", || {
        usage_lines(dir.path()).len() == 1
    });
    assert!(!server.log().contains("ERROR"), "{}", server.log());
}

#[test]
fn attack_file_trigger_done_dir_read_only_then_restart() {
    let (dir, m) = inbox_manifest("");
    let inbox = dir.path().join("inbox");
    let done = inbox.join("done");
    std::fs::create_dir_all(&done).unwrap();
    // A read-only bind mount over done/ (root ignores file modes).
    let mount = |args: &[&str]| {
        std::process::Command::new("mount")
            .args(args)
            .arg(&done)
            .arg(&done)
            .status()
            .is_ok_and(|s| s.success())
    };
    if !mount(&["--bind"]) {
        eprintln!("skipped: bind mounts take root");
        return;
    }
    let unmount = || {
        std::process::Command::new("umount")
            .arg("-l")
            .arg(&done)
            .status()
            .unwrap()
    };
    let ro = std::process::Command::new("mount")
        .args(["-o", "remount,bind,ro"])
        .arg(&done)
        .status()
        .unwrap();
    if !ro.success() {
        unmount();
        panic!("cannot remount done/ read-only");
    }
    let (server, inbox, staging) = watching(dir.path(), &m);
    drop_file(&inbox, &staging, "stuck", b"abc");
    until(Duration::from_secs(10), "the refused move", || {
        server.log().contains("cannot move stuck")
    });
    drop(server);
    unmount();
    // Not lost: still waiting, taken again at the next start, done once.
    assert_eq!(names(&inbox), ["stuck"]);
    let server = Serve::start(&m);
    until(Duration::from_secs(20), "done", || {
        names(&done) == ["stuck"]
    });
    assert!(names(&inbox).is_empty());
    drop(server);
}

#[test]
fn attack_file_trigger_sigkill_loop_ends_in_failed() {
    let (dir, m) = inbox_manifest("retries = 1\n");
    let inbox = dir.path().join("inbox");
    std::fs::create_dir_all(&inbox).unwrap();
    // A file whose every run is cut off by a SIGKILL of the server.
    std::fs::write(inbox.join("killer"), b"sleep 30000").unwrap();
    let state = inbox.join(".wasmlet/killer.json");
    for attempt in 1..=2 {
        let server = Serve::start(&m);
        until(Duration::from_secs(10), "the attempt", || {
            std::fs::read_to_string(&state)
                .is_ok_and(|s| s.contains(&format!("\"attempts\":{attempt}")))
        });
        drop(server);
    }
    // Every attempt used: the next start moves it to failed/ unrun.
    let server = Serve::start(&m);
    let failed = inbox.join("failed");
    until(Duration::from_secs(10), "failed", || {
        names(&failed) == ["killer", "killer.error"]
    });
    let why = std::fs::read_to_string(failed.join("killer.error")).unwrap();
    assert!(why.contains("stopped during attempt 2"), "{why}");
    // Cut-off runs left no usage lines (their batches were never synced or
    // the runs never ended), and the last start ran nothing.
    assert!(usage_lines(dir.path()).is_empty());
    drop(server);
}
