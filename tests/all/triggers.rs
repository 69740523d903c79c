//! Schedule and file triggers of `wasmlet serve`, end to end: the binary,
//! a C guest (`tests/guests/event.c`) writing what it saw into a granted
//! directory, the usage log. (The cron arithmetic, overlap policies and
//! missed-run state on a paused clock are unit tests in
//! `serve/src/trigger/schedule.rs`.)

use crate::helpers::{c_guest, tempdir};
use crate::serve::Serve;
use serde_json::Value;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A manifest with one function, `ev`, granted `out/` as `/out`, with
/// `triggers` (TOML of `[[function.trigger]]` tables) and an HTTP route.
pub(crate) fn manifest(dir: &Path, limits: &str, triggers: &str) -> PathBuf {
    std::fs::create_dir_all(dir.join("out")).unwrap();
    let text = format!(
        r#"
[[function]]
name = "ev"
module = "{m}"
dirs = ["rw:out::/out"]
[function.limits]
memory = "8MiB"
timeout = "10s"
{limits}
[[function.trigger]]
type = "http"
route = "/ev"
{triggers}
"#,
        m = c_guest("event").display()
    );
    let p = dir.join("wasmlet.toml");
    std::fs::write(&p, text).unwrap();
    p
}

pub(crate) fn usage_lines(dir: &Path) -> Vec<Value> {
    std::fs::read_to_string(dir.join("wasmlet-usage.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Waits until `cond` holds, at most `limit`.
pub(crate) fn until(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|r| {
            r.flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
                .filter_map(|e| e.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[test]
fn schedule_every_second_runs_with_its_environment() {
    let dir = tempdir();
    let m = manifest(
        dir.path(),
        "",
        r#"[[function.trigger]]
type = "schedule"
name = "tick"
cron = "* * * * * *"
"#,
    );
    let mut server = Serve::start(&m);
    let out = dir.path().join("out");
    until(Duration::from_secs(15), "two scheduled runs", || {
        names(&out).len() >= 2
    });
    server.signal(libc::SIGTERM);
    assert_eq!(server.wait(Duration::from_secs(30)), 0);
    for n in names(&out) {
        let t = n.strip_prefix("sched-").unwrap();
        // WASMLET_SCHEDULED_TIME: RFC 3339 on a whole second, in UTC.
        let parsed = chrono::DateTime::parse_from_rfc3339(t).unwrap();
        assert_eq!(parsed.timestamp_subsec_nanos(), 0, "{t}");
        assert!(t.ends_with('Z'), "{t}");
        // WASMLET_TRIGGER: the trigger's name; no stdin.
        assert_eq!(std::fs::read_to_string(out.join(&n)).unwrap(), "tick 0\n");
    }
    let lines = usage_lines(dir.path());
    let runs: Vec<_> = lines.iter().filter(|l| l["trigger"] == "tick").collect();
    assert_eq!(runs.len(), names(&out).len(), "{lines:?}");
    for l in runs {
        assert_eq!(l["function"], "ev");
        assert_eq!(l["exit_code"], 0);
        assert!(l["scheduled_time"].is_string());
    }
}

#[test]
fn schedule_missed_runs_run_once_after_a_restart() {
    let dir = tempdir();
    let m = manifest(
        dir.path(),
        "",
        r#"[[function.trigger]]
type = "schedule"
name = "hourly"
cron = "0 0 * * * *"
missed = "run_once"
timezone = "Asia/Kolkata"
"#,
    );
    // Its state says it last ran five hours ago: the server was down since.
    let last = chrono::Utc::now() - chrono::Duration::hours(5);
    let state = dir.path().join(".wasmlet-state");
    std::fs::create_dir_all(&state).unwrap();
    std::fs::write(
        state.join("schedule-ev-hourly.json"),
        format!("{{\"last\":\"{}\"}}", last.to_rfc3339()),
    )
    .unwrap();
    let mut server = Serve::start(&m);
    let out = dir.path().join("out");
    until(Duration::from_secs(15), "the missed run", || {
        !names(&out).is_empty()
    });
    // Only one, however many hours were missed.
    std::thread::sleep(Duration::from_millis(1500));
    let ran = names(&out);
    assert_eq!(ran.len(), 1, "{ran:?}");
    // For the latest hour passed (Kolkata is UTC+5:30, so its hours fall
    // on half hours in UTC), in the trigger's zone.
    let t = ran[0].strip_prefix("sched-").unwrap();
    assert!(t.ends_with(":00:00+05:30"), "{t}");
    let at = chrono::DateTime::parse_from_rfc3339(t).unwrap();
    let now = chrono::Utc::now();
    assert!(at <= now && now - at.with_timezone(&chrono::Utc) < chrono::Duration::hours(1));
    server.signal(libc::SIGTERM);
    assert_eq!(server.wait(Duration::from_secs(30)), 0);
    // Restarted at once: nothing missed this time.
    std::fs::remove_file(out.join(&ran[0])).unwrap();
    let server = Serve::start(&m);
    std::thread::sleep(Duration::from_millis(1500));
    assert!(names(&out).is_empty(), "{:?}", names(&out));
    drop(server);
}

/// Starts the server on `m` and waits until its file trigger on `inbox`
/// watches (and its start-up scan is done: from then on only complete
/// files are taken); the server, the inbox and a staging directory.
pub(crate) fn watching(dir: &Path, m: &Path) -> (Serve, PathBuf, PathBuf) {
    let staging = dir.join("staging");
    std::fs::create_dir_all(&staging).unwrap();
    let server = Serve::start(m);
    until(Duration::from_secs(10), "the watch", || {
        server.log().contains("watching")
    });
    (server, dir.join("inbox"), staging)
}

/// Writes `name` into `dir` the safe way: elsewhere, then renamed in.
pub(crate) fn drop_file(dir: &Path, staging: &Path, name: &str, body: &[u8]) {
    let tmp = staging.join(name);
    std::fs::write(&tmp, body).unwrap();
    std::fs::rename(&tmp, dir.join(name)).unwrap();
}

#[test]
fn file_events_done_failed_with_reason_and_partial_writes() {
    let dir = tempdir();
    let m = manifest(
        dir.path(),
        "",
        r#"[[function.trigger]]
type = "file"
dir = "inbox"
retries = 2
backoff = "50ms"
"#,
    );
    let (server, inbox, staging) = watching(dir.path(), &m);
    drop_file(&inbox, &staging, "good.txt", b"twelve bytes");
    drop_file(&inbox, &staging, "bad.txt", b"poison!");
    // A partial write: half now, the rest a moment later, then closed. The
    // function must see the whole file, once.
    {
        use std::io::Write;
        let mut f = std::fs::File::create(inbox.join("slow.txt")).unwrap();
        f.write_all(&[b'a'; 5000]).unwrap();
        f.flush().unwrap();
        std::thread::sleep(Duration::from_millis(700));
        f.write_all(&[b'b'; 5000]).unwrap();
    }
    // A dot file is not an event.
    std::fs::write(inbox.join(".hidden"), b"x").unwrap();
    let (done, failed) = (inbox.join("done"), inbox.join("failed"));
    until(Duration::from_secs(30), "all outcomes", || {
        names(&done).len() == 2 && names(&failed).len() == 2
    });
    assert_eq!(names(&done), ["good.txt", "slow.txt"]);
    assert_eq!(names(&failed), ["bad.txt", "bad.txt.error"]);
    let why = std::fs::read_to_string(failed.join("bad.txt.error")).unwrap();
    assert!(
        why.contains("attempt 3")
            && why.contains("exited with code 2")
            && why.contains("poisoned input"),
        "{why}"
    );
    let out = dir.path().join("out");
    assert_eq!(
        std::fs::read_to_string(out.join("good.txt")).unwrap(),
        "file 12\n"
    );
    assert_eq!(
        std::fs::read_to_string(out.join("slow.txt")).unwrap(),
        "file 10000\n"
    );
    assert_eq!(std::fs::read(done.join("slow.txt")).unwrap().len(), 10_000);
    assert!(inbox.join(".hidden").exists());
    // One usage line per attempt: good 1, slow 1, bad 3 (1 + 2 retries).
    let lines = usage_lines(dir.path());
    let count = |f: &str| lines.iter().filter(|l| l["file"] == f).count();
    assert_eq!(
        (count("good.txt"), count("slow.txt"), count("bad.txt")),
        (1, 1, 3)
    );
    assert!(lines.iter().all(|l| l["trigger"] == "file"));
    // No progress state left behind (dropped just after the rename the
    // wait above saw).
    until(
        Duration::from_secs(10),
        "the progress state dropped",
        || names(&inbox.join(".wasmlet")).is_empty(),
    );
    drop(server);
}

#[test]
fn file_events_a_thousand_at_once() {
    let dir = tempdir();
    let m = manifest(
        dir.path(),
        "max_concurrency = 8",
        "[[function.trigger]]\ntype = \"file\"\ndir = \"inbox\"\n",
    );
    let (mut server, inbox, staging) = watching(dir.path(), &m);
    for i in 0..1000 {
        drop_file(
            &inbox,
            &staging,
            &format!("f{i:04}"),
            format!("{i}").as_bytes(),
        );
    }
    let done = inbox.join("done");
    until(Duration::from_secs(180), "1000 files done", || {
        names(&done).len() >= 1000
    });
    server.signal(libc::SIGTERM);
    assert_eq!(server.wait(Duration::from_secs(30)), 0);
    let want: Vec<String> = (0..1000).map(|i| format!("f{i:04}")).collect();
    assert_eq!(names(&done), want);
    assert!(names(&inbox).is_empty());
    assert!(names(&inbox.join("failed")).is_empty());
    // Exactly one usage line per event.
    let lines = usage_lines(dir.path());
    let files: HashSet<&str> = lines.iter().filter_map(|l| l["file"].as_str()).collect();
    assert_eq!(files.len(), 1000);
    assert_eq!(
        lines.iter().filter(|l| l["trigger"] == "file").count(),
        1000
    );
}

#[test]
fn file_events_survive_a_sigkill_mid_stream_exactly_once() {
    let dir = tempdir();
    let m = manifest(
        dir.path(),
        "max_concurrency = 4",
        "[[function.trigger]]\ntype = \"file\"\ndir = \"inbox\"\nretries = 1\nbackoff = \"50ms\"\n",
    );
    let (server, inbox, staging) = watching(dir.path(), &m);
    // 200 events of 20 ms each, every tenth poisoned.
    for i in 0..200 {
        let body = if i % 10 == 0 { "poison" } else { "sleep 20" };
        drop_file(&inbox, &staging, &format!("e{i:03}"), body.as_bytes());
    }
    let done = inbox.join("done");
    until(Duration::from_secs(60), "some progress", || {
        names(&done).len() >= 40
    });
    // SIGKILL: no drain, no flush, events cut off mid-run.
    drop(server);
    let left = names(&inbox).len();
    assert!(left > 0, "all done before the kill; make events slower");
    let server = Serve::start(&m);
    let failed = inbox.join("failed");
    until(Duration::from_secs(120), "every outcome", || {
        names(&done).len() + names(&failed).len() / 2 >= 200
    });
    // Every file exactly once: no `NAME.1` from a second outcome.
    let d = names(&done);
    let f: Vec<String> = names(&failed)
        .into_iter()
        .filter(|n| !n.ends_with(".error"))
        .collect();
    let want_failed: Vec<String> = (0..200).step_by(10).map(|i| format!("e{i:03}")).collect();
    assert_eq!(f, want_failed);
    let want_done: Vec<String> = (0..200)
        .filter(|i| i % 10 != 0)
        .map(|i| format!("e{i:03}"))
        .collect();
    assert_eq!(d, want_done);
    assert!(names(&inbox).is_empty(), "{:?}", names(&inbox));
    drop(server);
}
