//! The usage log of `wasmlet serve` and the bill of `wasmlet usage`: one
//! line per request (refused ones too), the same ids as the responses,
//! counters that agree, rotation, an unwritable log reported, and a bill
//! matching figures computed by hand.

use crate::helpers::{run_cli, tempdir, wasmlet};
use crate::serve::{Serve, request, wagi_manifest, wrk, wrk_requests};
use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Every line of the log at `path` and its rotated files, parsed (each must
/// be a whole JSON object). A server may rotate the log while it is read
/// (a file renamed between the listing and its read): read again then.
pub(crate) fn lines(path: &Path) -> Vec<Value> {
    for _ in 0..50 {
        if let Some(out) = lines_once(path) {
            return out;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("{path:?} kept rotating while it was read");
}

/// The log's files (the rotated ones first, oldest first), with their
/// inode numbers.
fn log_files(path: &Path) -> Vec<(u64, PathBuf, u64)> {
    use std::os::unix::fs::MetadataExt;
    let mut files: Vec<(u64, PathBuf, u64)> = std::fs::read_dir(path.parent().unwrap())
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let n = e.file_name().into_string().ok()?;
            let base = path.file_name()?.to_str()?;
            let num = if n == base {
                u64::MAX
            } else {
                n.strip_prefix(base)?.strip_prefix('.')?.parse().ok()?
            };
            Some((num, e.path(), e.metadata().ok()?.ino()))
        })
        .collect();
    files.sort();
    files
}

/// [`lines`], or `None` if the log rotated while they were read (the files
/// listed before and after differ).
fn lines_once(path: &Path) -> Option<Vec<Value>> {
    let files = log_files(path);
    let mut out = Vec::new();
    for (_, f, _) in &files {
        let text = match std::fs::read_to_string(f) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => panic!("{f:?}: {e}"),
        };
        assert!(
            text.is_empty() || text.ends_with('\n'),
            "{f:?} ends mid-line"
        );
        for l in text.lines() {
            out.push(serde_json::from_str(l).unwrap_or_else(|e| panic!("{f:?}: {e}: line {l:?}")));
        }
    }
    (log_files(path) == files).then_some(out)
}

/// Waits (at most 20 s) until the log holds `n` lines; returns them.
pub(crate) fn wait_lines(path: &Path, n: usize) -> Vec<Value> {
    let start = Instant::now();
    loop {
        let l = lines(path);
        if l.len() >= n || start.elapsed() > Duration::from_secs(20) {
            return l;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The line of request or event `id` among `lines` (a panic naming it and
/// showing them all if there is none).
pub(crate) fn line_of<'a>(lines: &'a [Value], id: &str) -> &'a Value {
    lines
        .iter()
        .find(|l| l["id"] == id)
        .unwrap_or_else(|| panic!("no usage line for {id}: {lines:?}"))
}

/// A line's `error` (empty when it has none).
pub(crate) fn error_of(line: &Value) -> &str {
    line["error"].as_str().unwrap_or_default()
}

/// The value of the metric line `name` (with its labels) in `text`.
pub(crate) fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

#[test]
fn usage_log_one_line_per_request_with_its_id_and_metrics_agree() {
    let dir = tempdir();
    let manifest = wagi_manifest(dir.path(), "");
    let log = dir.path().join("logs/usage.jsonl");
    let mut server = Serve::start_with(&manifest, &["--usage-log", log.to_str().unwrap()], &[]);
    let mut ids = HashMap::new();
    let mut send = |path: &str, body: &[u8], id: Option<&str>| {
        let headers: Vec<(&str, &str)> = id.map(|i| ("x-request-id", i)).into_iter().collect();
        let method = if body.is_empty() { "GET" } else { "POST" };
        let r = request(server.addr, method, path, &headers, body);
        let got = r.header("x-request-id").unwrap().to_string();
        if let Some(i) = id {
            assert_eq!(got, i);
        }
        ids.insert(got, r.status);
        r.status
    };
    for _ in 0..10 {
        assert_eq!(send("/t/hello", b"", None), 200);
    }
    assert_eq!(send("/t/exit3", b"", Some("exit-three")), 502);
    assert_eq!(send("/t/trap", b"", None), 500);
    assert_eq!(send("/nowhere", b"", Some("lost-1")), 404);
    assert_eq!(send("/t/echo", &vec![b'x'; 100 << 10], None), 413);
    assert_eq!(send("/exact", b"", None), 200);
    // A head over max_header_size: hyper answers 431 itself, and the log
    // still has its line.
    let big = "x".repeat(10 << 10);
    let r = request(server.addr, "GET", "/t/hello", &[("x-big", &big)], b"");
    assert_eq!(r.status, 431);
    let all = wait_lines(&log, ids.len() + 1);
    assert_eq!(all.len(), ids.len() + 1, "{all:?}");
    let too_large: Vec<_> = all
        .iter()
        .filter(|l| l["reason"] == "header_too_large")
        .collect();
    assert_eq!(too_large.len(), 1, "{all:?}");
    assert_eq!(too_large[0]["http_status"], 431);
    assert_eq!(too_large[0]["status"], "rejected");
    for l in all.iter().filter(|l| l["reason"] != "header_too_large") {
        let id = l["id"].as_str().unwrap();
        let status = ids[id];
        assert_eq!(l["http_status"], status);
        assert_eq!(l["trigger"], "http");
        let t = l["start_time"].as_str().unwrap();
        assert!(t.ends_with('Z') && t.contains('T'), "{t}");
        match status {
            404 | 413 => {
                assert_eq!(l["status"], "rejected", "{l}");
                assert!(l.get("gb_seconds").is_none(), "{l}");
                assert!(l.get("wall_time_ns").is_none(), "{l}");
            }
            _ => {
                for k in [
                    "wall_time_ns",
                    "cpu_time_ns",
                    "fuel_consumed",
                    "peak_memory_bytes",
                    "gb_seconds",
                ] {
                    assert!(l.get(k).is_some(), "{k} missing: {l}");
                }
                assert!(l["wall_time_ns"].as_u64().unwrap() > 0);
                // The configured limit: t's 8 MiB, exact's default 128 MiB.
                let limit: u64 = if l["function"] == "t" {
                    8 << 20
                } else {
                    128 << 20
                };
                assert_eq!(l["memory_limit_bytes"], limit, "{l}");
            }
        }
    }
    let by_id = |id: &str| line_of(&all, id).clone();
    assert_eq!(by_id("exit-three")["status"], "exited");
    assert_eq!(by_id("exit-three")["exit_code"], 3);
    assert_eq!(by_id("lost-1")["function"], Value::Null);
    assert_eq!(by_id("lost-1")["reason"], "no_route");
    // The counters add up what the log holds (counted just after each
    // batch is synced: wait for the last one).
    let start = Instant::now();
    let m = loop {
        let m = server.metrics();
        if metric(&m, "wasmlet_usage_lines_total") >= all.len() as f64
            || start.elapsed() > Duration::from_secs(10)
        {
            break m;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(
        metric(&m, "wasmlet_usage_invocations_total{function=\"t\"}"),
        12.0,
        "{m}"
    );
    assert_eq!(
        metric(&m, "wasmlet_usage_errors_total{function=\"t\"}"),
        2.0
    );
    assert_eq!(
        metric(&m, "wasmlet_usage_rejected_total{function=\"t\"}"),
        1.0
    );
    assert_eq!(metric(&m, "wasmlet_usage_lines_total"), all.len() as f64);
    assert_eq!(
        metric(&m, "wasmlet_usage_rejected_total{function=\"-\"}"),
        2.0
    );
    let gb: f64 = all
        .iter()
        .filter(|l| l["function"] == "t")
        .filter_map(|l| l["gb_seconds"].as_f64())
        .sum();
    let counted = metric(&m, "wasmlet_usage_gb_seconds_total{function=\"t\"}");
    assert!((gb - counted).abs() <= gb * 1e-9, "{gb} vs {counted}");
    assert_eq!(metric(&m, "wasmlet_usage_log_healthy"), 1.0);
    // The bill of that log: 13 billed invocations (t: 12, exact: 1).
    let r = run_cli(
        wasmlet()
            .args(["usage", "--format", "json", "--log"])
            .arg(&log),
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let bill: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(bill["total"]["invocations"], 13, "{bill}");
    assert_eq!(bill["total"]["errors"], 2);
    assert_eq!(bill["total"]["rejected"], 3);
    server.signal(libc::SIGTERM);
    assert_eq!(server.wait(Duration::from_secs(30)), 0);
}

#[test]
fn usage_log_holds_exactly_the_requests_served_under_load() {
    let dir = tempdir();
    let manifest = wagi_manifest(dir.path(), "");
    let log = dir.path().join("wasmlet-usage.jsonl");
    // Default place: beside the manifest.
    let mut server = Serve::start(&manifest);
    let summary = wrk(&format!("http://{}/t/hello", server.addr), 8, 3);
    let sent = wrk_requests(&summary);
    assert!(sent > 100, "{summary}");
    // SIGTERM: drained, then the log synced before exit.
    server.signal(libc::SIGTERM);
    assert_eq!(server.wait(Duration::from_secs(30)), 0);
    let all = lines(&log);
    // wrk counts the responses it read; the server may have answered a few
    // more as wrk stopped. Never fewer, and every line distinct.
    assert!(all.len() as u64 >= sent, "{} lines, {sent} sent", all.len());
    assert!(
        all.len() as u64 <= sent + 8,
        "{} lines, {sent} sent",
        all.len()
    );
    let ids: std::collections::HashSet<&str> =
        all.iter().map(|l| l["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), all.len());
    // A request wrk had in flight when it closed its connections may have
    // been stopped: then its line says the client left (one a connection
    // at most), never the drain deadline, which did not pass.
    let cut: Vec<_> = all.iter().filter(|l| l["status"] != "exited").collect();
    assert!(cut.len() <= 8, "{cut:#?}");
    for l in &cut {
        assert_eq!(l["status"], "interrupted", "{l}");
        let error = error_of(l);
        assert!(error.contains("(the client left)"), "{l}");
    }
}

#[test]
fn usage_log_rotates_by_size_without_splitting_a_line() {
    let dir = tempdir();
    let manifest = wagi_manifest(dir.path(), "");
    let text = std::fs::read_to_string(&manifest).unwrap();
    std::fs::write(
        &manifest,
        format!("usage_log = \"u.jsonl\"\nusage_log_max_size = \"4KiB\"\n{text}"),
    )
    .unwrap();
    let log = dir.path().join("u.jsonl");
    let server = Serve::start(&manifest);
    for i in 0..60 {
        let path = if i % 3 == 0 { "/none" } else { "/t/hello" };
        request(server.addr, "GET", path, &[], b"");
    }
    let all = wait_lines(&log, 60);
    assert_eq!(all.len(), 60);
    let rotated: Vec<_> = (1..)
        .map(|n| dir.path().join(format!("u.jsonl.{n}")))
        .take_while(|p| p.exists())
        .collect();
    assert!(rotated.len() >= 2, "{rotated:?}");
    for f in &rotated {
        let len = std::fs::metadata(f).unwrap().len();
        assert!(len <= 4096, "{f:?} is {len} bytes");
    }
    let m = server.metrics();
    assert!(metric(&m, "wasmlet_usage_rotations_total") >= rotated.len() as f64);
}

/// A small tmpfs mounted on a directory, unmounted when dropped.
pub(crate) struct Tmpfs(PathBuf);

impl Tmpfs {
    pub(crate) fn mount(dir: &Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(dir).unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Tmpfs(dir.to_path_buf()))
    }

    /// [`Tmpfs::mount`], which must work as root; elsewhere `None`, said.
    pub(crate) fn mount_or_skip(dir: &Path, size: &str) -> Option<Tmpfs> {
        let fs = Tmpfs::mount(dir, size);
        if fs.is_none() {
            // SAFETY: geteuid takes nothing and cannot fail.
            let euid = unsafe { libc::geteuid() };
            assert_ne!(euid, 0, "root but cannot mount a tmpfs");
            eprintln!("skipped: mounting a tmpfs takes root");
        }
        fs
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// Fills the filesystem of `dir` with one file, which it returns.
fn fill_disk(dir: &Path) -> PathBuf {
    use std::io::Write;
    let filler = dir.join("filler");
    let mut f = std::fs::File::create(&filler).unwrap();
    let chunk = vec![0u8; 4096];
    while f.write_all(&chunk).is_ok() {}
    let _ = f.sync_all();
    filler
}

#[test]
fn usage_log_on_a_full_disk_is_reported_and_loses_nothing() {
    let dir = tempdir();
    let manifest = wagi_manifest(dir.path(), "");
    let logs = dir.path().join("logs");
    // A real full filesystem: a 256 KiB tmpfs (root, as CI runs).
    let Some(_fs) = Tmpfs::mount_or_skip(&logs, "256k") else {
        return;
    };
    let log = logs.join("usage.jsonl");
    let server = Serve::start_with(&manifest, &["--usage-log", log.to_str().unwrap()], &[]);
    assert_eq!(
        request(server.admin, "GET", "/readyz", &[], b"").status,
        200
    );
    // Fill the disk.
    let filler = fill_disk(&logs);
    for _ in 0..20 {
        assert_eq!(server.get("/t/hello").status, 200);
    }
    // Reported: /readyz says why, the log says it loudly.
    let start = Instant::now();
    let ready = loop {
        let r = request(server.admin, "GET", "/readyz", &[], b"");
        if r.status == 503 || start.elapsed() > Duration::from_secs(10) {
            break r;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(ready.status, 503, "{}", ready.text());
    assert!(ready.text().contains("No space left"), "{}", ready.text());
    assert!(server.log().contains("ERROR"), "{}", server.log());
    assert_eq!(metric(&server.metrics(), "wasmlet_usage_log_healthy"), 0.0);
    // Space again: every held line is written, and the server is ready.
    std::fs::remove_file(&filler).unwrap();
    let all = wait_lines(&log, 20);
    assert_eq!(all.len(), 20);
    let start = Instant::now();
    while request(server.admin, "GET", "/readyz", &[], b"").status != 200 {
        assert!(start.elapsed() < Duration::from_secs(10), "still unready");
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(server);
}

#[test]
fn usage_lines_that_cannot_be_written_by_exit_make_it_fail_and_are_counted() {
    let dir = tempdir();
    let manifest = wagi_manifest(dir.path(), "");
    let text = std::fs::read_to_string(&manifest).unwrap();
    std::fs::write(
        &manifest,
        text.replacen("[server]\n", "[server]\ndrain_timeout = \"1s\"\n", 1),
    )
    .unwrap();
    let logs = dir.path().join("logs");
    let Some(_fs) = Tmpfs::mount_or_skip(&logs, "256k") else {
        return;
    };
    let log = logs.join("usage.jsonl");
    let mut server = Serve::start_with(&manifest, &["--usage-log", log.to_str().unwrap()], &[]);
    fill_disk(&logs);
    for _ in 0..7 {
        assert_eq!(server.get("/t/hello").status, 200);
    }
    // The disk stays full through the drain deadline: the server says how
    // many lines it lost, and exits 1, not 0.
    server.signal(libc::SIGTERM);
    assert_eq!(server.wait(Duration::from_secs(20)), 1, "{}", server.log());
    assert!(server.log().contains("7 line(s) lost"), "{}", server.log());
    assert_eq!(std::fs::metadata(&log).unwrap().len(), 0);
}

#[test]
fn usage_bill_of_a_known_log_matches_hand_computed_figures() {
    let dir = tempdir();
    let log = dir.path().join("known.jsonl");
    // a: 2 s at 256 MiB configured (peak 64 MiB), exit 0;
    //    1 s at 64 MiB configured (billed as 128 MiB; peak 32 MiB), exit 1.
    // b: 0.5 s at 1 GiB configured (peak 512 MiB), returned, the next day.
    // A rejected request, a torn line, and a line before --since.
    let lines = [
        r#"{"function":"a","trigger":"http","id":"1","start_time":"2026-11-01T10:00:00Z","wall_time_ns":2000000000,"cpu_time_ns":1500000000,"fuel_consumed":null,"peak_memory_bytes":67108864,"gb_seconds":0.125,"status":"exited","exit_code":0,"memory_limit_bytes":268435456}"#,
        r#"{"function":"a","trigger":"nightly","id":"2","start_time":"2026-11-01T23:59:59Z","wall_time_ns":1000000000,"cpu_time_ns":250000000,"fuel_consumed":null,"peak_memory_bytes":33554432,"gb_seconds":0.03125,"status":"exited","exit_code":1,"memory_limit_bytes":67108864}"#,
        r#"{"function":"b","trigger":"http","id":"3","start_time":"2026-11-02T00:00:01Z","wall_time_ns":500000000,"cpu_time_ns":500000000,"fuel_consumed":7,"peak_memory_bytes":536870912,"gb_seconds":0.25,"status":"returned","memory_limit_bytes":1073741824}"#,
        r#"{"function":"b","trigger":"http","id":"4","start_time":"2026-11-02T00:00:02Z","status":"rejected","reason":"queue_full","http_status":503}"#,
        r#"{"function":"a","trigger":"http","id":"5","start_time":"2026-10-01T00:00:00Z","wall_time_ns":9000000000,"cpu_time_ns":1,"peak_memory_bytes":1,"gb_seconds":1.0,"status":"exited","exit_code":0,"memory_limit_bytes":1}"#,
        r#"{"function":"a","trig"#,
    ];
    std::fs::write(&log, lines.join("\n") + "\n").unwrap();
    let bill = |extra: &[&str]| -> Value {
        let r = run_cli(
            wasmlet()
                .args([
                    "usage",
                    "--since",
                    "2026-11-01",
                    "--format",
                    "json",
                    "--log",
                ])
                .arg(&log)
                .args(extra),
        );
        assert_eq!(r.code, 0, "{}", r.stderr);
        serde_json::from_str(&r.stdout).unwrap()
    };
    let close = |got: &Value, want: f64| {
        let g = got.as_f64().unwrap();
        assert!((g - want).abs() < 1e-12, "got {g}, want {want}");
    };
    // Configured basis: a = 0.25 GB x 2 s + 0.125 GB x 1 s = 0.625 GB-s;
    // b = 1 GB x 0.5 s = 0.5 GB-s. Requests: 3.
    let b = bill(&[]);
    assert_eq!(b["skipped_lines"], 1);
    let rows = b["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0]["key"], "a");
    assert_eq!(rows[0]["invocations"], 2);
    assert_eq!(rows[0]["errors"], 1);
    close(&rows[0]["gb_seconds"], 0.625);
    close(&rows[0]["cpu_seconds"], 1.75);
    assert_eq!(rows[1]["rejected"], 1);
    close(&rows[1]["gb_seconds"], 0.5);
    let t = &b["total"];
    assert_eq!(t["invocations"], 3);
    close(&t["gb_seconds"], 1.125);
    // 1.125 x 0.0000166667 + 3 x 0.20 / 10^6
    close(&t["compute_cost"], 1.125 * 0.000_016_666_7);
    close(&t["request_cost"], 0.000_000_6);
    close(&t["cost"], 1.125 * 0.000_016_666_7 + 0.000_000_6);
    // Peak basis and other prices: 0.125 + 0.03125 + 0.25 = 0.40625 GB-s.
    let b = bill(&[
        "--memory-basis",
        "peak",
        "--price-gb-second",
        "2",
        "--price-per-million-requests",
        "1000000",
    ]);
    close(&b["total"]["gb_seconds"], 0.40625);
    close(&b["total"]["cost"], 0.40625 * 2.0 + 3.0);
    // By day and by trigger.
    let b = bill(&["--by", "day"]);
    let days: Vec<_> = b["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["key"].as_str().unwrap().to_string(),
                r["invocations"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(days, [("2026-11-01".into(), 2), ("2026-11-02".into(), 1)]);
    let b = bill(&["--by", "trigger", "--until", "2026-11-02T00:00:00Z"]);
    let keys: Vec<_> = b["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["key"].clone())
        .collect();
    assert_eq!(keys, ["a/http", "a/nightly"]);
    // Table and CSV carry the same total.
    let r = run_cli(
        wasmlet()
            .args(["usage", "--since", "2026-11-01", "--log"])
            .arg(&log),
    );
    let last_row = r.stdout.lines().find(|l| l.starts_with("TOTAL")).unwrap();
    assert!(
        last_row.contains(" 3 ") && last_row.contains("1.125000"),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("per GB-second"), "{}", r.stdout);
    let r = run_cli(
        wasmlet()
            .args(["usage", "--since", "2026-11-01", "--format", "csv", "--log"])
            .arg(&log),
    );
    let total = r.stdout.lines().last().unwrap();
    assert!(total.starts_with("TOTAL,3,1,1,1.125,"), "{}", r.stdout);
    // Bad input: one line, no panic.
    let r = run_cli(
        wasmlet()
            .args(["usage", "--since", "yesterday", "--log"])
            .arg(&log),
    );
    r.assert_one_line_error("yesterday");
    let r = run_cli(wasmlet().args(["usage", "--log", "/nonexistent/usage.jsonl"]));
    r.assert_one_line_error("/nonexistent/usage.jsonl");
}
