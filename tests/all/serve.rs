//! `wasmlet serve` end to end: the binary on 127.0.0.1 with real clients
//! (a raw HTTP/1.1 client over `TcpStream`, `curl`, `wrk`).

use crate::helpers::{c_example, c_guest, run_cli, tempdir, wasmlet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A running `wasmlet serve`, killed when dropped.
pub(crate) struct Serve {
    pub(crate) child: Child,
    pub(crate) addr: SocketAddr,
    pub(crate) admin: SocketAddr,
    log: Arc<Mutex<String>>,
}

impl Serve {
    pub(crate) fn start(manifest: &Path) -> Serve {
        Serve::start_with(manifest, &[], &[])
    }

    pub(crate) fn start_with(manifest: &Path, args: &[&str], env: &[(&str, &str)]) -> Serve {
        let mut cmd = wasmlet();
        cmd.arg("serve")
            .arg(manifest)
            .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
            .args(args)
            .env("WASMLET_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        Serve::spawn(cmd)
    }

    /// Starts the server `cmd` runs (`wasmlet serve ...` with stderr piped
    /// and `WASMLET_LOG=info`), once it listens.
    pub(crate) fn spawn(mut cmd: Command) -> Serve {
        let mut child = cmd.spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        {
            let log = log.clone();
            std::thread::spawn(move || {
                let mut tx = Some(tx);
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    if let Some(rest) = line.split("listening on http://").nth(1)
                        && let Some(tx) = tx.take()
                    {
                        let addr = rest.split_whitespace().next().unwrap().to_string();
                        let admin = rest
                            .split("admin on http://")
                            .nth(1)
                            .unwrap()
                            .trim_end_matches(')')
                            .to_string();
                        let _ = tx.send((addr, admin));
                    }
                    let mut l = log.lock().unwrap();
                    l.push_str(&line);
                    l.push('\n');
                }
            });
        }
        let (addr, admin) = match rx.recv_timeout(Duration::from_secs(120)) {
            Ok(a) => a,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("server did not start: {}", log.lock().unwrap());
            }
        };
        Serve {
            child,
            addr: addr.parse().unwrap(),
            admin: admin.parse().unwrap(),
            log,
        }
    }

    pub(crate) fn get(&self, path: &str) -> Resp {
        request(self.addr, "GET", path, &[], b"")
    }

    pub(crate) fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    pub(crate) fn metrics(&self) -> String {
        let r = request(self.admin, "GET", "/metrics", &[], b"");
        assert_eq!(r.status, 200, "{}", r.text());
        r.text()
    }

    pub(crate) fn signal(&self, sig: i32) {
        // SAFETY: kill takes plain integers; the child has not been reaped.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    /// Waits for the server to exit, at most `limit`; its exit code.
    pub(crate) fn wait(&mut self, limit: Duration) -> i32 {
        let start = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s.code().unwrap_or(-1);
            }
            assert!(
                start.elapsed() < limit,
                "server still running: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A response read by [`request`].
#[derive(Debug)]
pub(crate) struct Resp {
    pub(crate) status: u16,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: Vec<u8>,
}

impl Resp {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub(crate) fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// One HTTP/1.1 request on a fresh connection (`Connection: close`).
pub(crate) fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Resp {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if !body.is_empty() || method == "POST" {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    read_response(&mut s)
}

/// A POST of `chunks` chunks of 4 KiB of `b` with chunked transfer
/// encoding (no length declared); write errors are ignored (the server may
/// answer and close before the end).
fn post_chunked(addr: SocketAddr, path: &str, chunks: usize) -> Resp {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    );
    s.write_all(head.as_bytes()).unwrap();
    for _ in 0..chunks {
        let _ = s.write_all(b"1000\r\n");
        let _ = s.write_all(&[b'b'; 0x1000]);
        let _ = s.write_all(b"\r\n");
    }
    let _ = s.write_all(b"0\r\n\r\n");
    read_response(&mut s)
}

fn read_response(s: &mut TcpStream) -> Resp {
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    parse_response(&raw)
}

fn parse_response(raw: &[u8]) -> Resp {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no response head in {:?}", String::from_utf8_lossy(raw)));
    let head = String::from_utf8_lossy(&raw[..end]).into_owned();
    let mut lines = head.lines();
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let mut body = raw[end + 4..].to_vec();
    let chunked = headers.iter().any(|(k, v): &(String, String)| {
        k.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked")
    });
    if chunked {
        body = dechunk(&body);
    }
    Resp {
        status,
        headers,
        body,
    }
}

/// The data of a chunked body.
fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = raw.windows(2).position(|w| w == b"\r\n") else {
            panic!("unterminated chunk size line");
        };
        let size = usize::from_str_radix(std::str::from_utf8(&raw[..eol]).unwrap().trim(), 16)
            .expect("a chunk size");
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&raw[eol + 2..eol + 2 + size]);
        raw = &raw[eol + 2 + size + 2..];
    }
}

/// The guest module of these tests, and a manifest around it.
pub(crate) fn wagi_manifest(dir: &Path, extra: &str) -> PathBuf {
    let module = c_guest("wagi");
    let text = format!(
        r#"
[server]
max_body_size = "64KiB"
max_header_size = "8KiB"
body_timeout = "1s"
header_timeout = "1s"
max_response_size = "1MiB"
max_log_per_invocation = 200

[[function]]
name = "t"
module = "{m}"
env = {{ GREETING = "hi" }}
[function.limits]
memory = "8MiB"
cpu_time = "300ms"
timeout = "2s"
max_concurrency = 8
[[function.trigger]]
type = "http"
route = "/t/..."

[[function]]
name = "slow"
module = "{m}"
[function.limits]
memory = "8MiB"
timeout = "500ms"
[[function.trigger]]
type = "http"
route = "/slow/..."

[[function]]
name = "exact"
module = "{m}"
[[function.trigger]]
type = "http"
route = "/exact"
[[function.trigger]]
type = "http"
route = "/t/deeper/..."
{extra}
"#,
        m = module.display()
    );
    let p = dir.join("wasmlet.toml");
    std::fs::write(&p, text).unwrap();
    p
}

/// The example manifest, with its modules built beside a copy of it.
fn example_manifest(dir: &Path) -> PathBuf {
    for name in ["hello", "echo"] {
        std::fs::copy(
            c_example(&format!("serve/{name}")),
            dir.join(format!("{name}.wasm")),
        )
        .unwrap();
    }
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/serve/wasmlet.toml");
    let p = dir.join("wasmlet.toml");
    std::fs::copy(src, &p).unwrap();
    p
}

#[test]
fn serve_example_hello_and_echo_with_curl() {
    let dir = tempdir();
    let manifest = example_manifest(dir.path());
    let server = Serve::start(&manifest);
    let out = Command::new("curl")
        .args(["-sS", "-i", &format!("http://{}/hello", server.addr)])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(
        text.contains("Hi from a wasmlet function! (GET request)"),
        "{text}"
    );
    assert!(
        text.to_ascii_lowercase().contains("x-request-id: "),
        "{text}"
    );
    let out = Command::new("curl")
        .args([
            "-sS",
            "--data-binary",
            "some body",
            "-A",
            "tester/1",
            &format!("http://{}/echo/a/b?x=1&y=2", server.addr),
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for want in [
        "method: POST",
        "path: /a/b",
        "query: x=1&y=2",
        "arg: x=1",
        "arg: y=2",
        "user-agent: tester/1",
        "body (9 bytes): some body",
    ] {
        assert!(text.contains(want), "{want:?} not in {text}");
    }
    // Guest stderr goes to the log, tagged with function and request id.
    let r = server.get("/echo/logged");
    let id = r.header("x-request-id").unwrap().to_string();
    std::thread::sleep(Duration::from_millis(200));
    let log = server.log();
    assert!(
        log.lines().any(|l| l.contains("stderr: echoed /logged")
            && l.contains("function=\"echo\"")
            && l.contains(&format!("request_id=\"{id}\""))),
        "{log}"
    );
}

#[test]
fn serve_routes_exact_and_prefix() {
    let dir = tempdir();
    let server = Serve::start(&wagi_manifest(dir.path(), ""));
    let r = server.get("/t/hello");
    assert_eq!((r.status, r.text().as_str()), (200, "hello from /hello\n"));
    // The bare prefix matches, with an empty PATH_INFO.
    assert_eq!(server.get("/t").text(), "hello from /\n");
    // Longest prefix wins: /t/deeper/... belongs to `exact`.
    // (Under `t`, PATH_INFO would be /deeper/x.)
    let r = server.get("/t/deeper/x");
    assert_eq!(r.text(), "hello from /x\n");
    assert_eq!(server.get("/exact").status, 200);
    // An exact route does not match below itself; a prefix needs a `/`.
    for path in ["/exact/more", "/tt", "/nothing", "/"] {
        let r = server.get(path);
        assert_eq!(r.status, 404, "{path}");
        assert!(r.header("x-request-id").is_some());
    }
}

#[test]
fn serve_headers_and_bodies_both_ways() {
    let dir = tempdir();
    let server = Serve::start(&wagi_manifest(dir.path(), ""));
    let body: Vec<u8> = (0..40_000u32).map(|i| (i % 251) as u8).collect();
    let r = request(
        server.addr,
        "POST",
        "/t/echo?q=1",
        &[("X-Test", "value 1"), ("X-Request-Id", "client-id-42")],
        &body,
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.body, body, "binary body round trip");
    assert_eq!(r.header("x-got-header"), Some("value 1"));
    assert_eq!(r.header("x-method"), Some("POST"));
    assert_eq!(r.header("x-query"), Some("q=1"));
    assert_eq!(r.header("x-script"), Some("/t"));
    assert_eq!(r.header("x-greeting"), Some("hi"));
    assert_eq!(r.header("content-type"), Some("application/octet-stream"));
    assert_eq!(r.header("x-request-id"), Some("client-id-42"));
    // An id that is not sane is replaced.
    let r = request(
        server.addr,
        "GET",
        "/t/hello",
        &[("X-Request-Id", "bad id\"<>")],
        b"",
    );
    let id = r.header("x-request-id").unwrap();
    assert!(
        id.len() == 16 && id.chars().all(|c| c.is_ascii_hexdigit()),
        "{id}"
    );
    // Status and headers written by the guest.
    let r = server.get("/t/status");
    assert_eq!(r.status, 418);
    assert_eq!(r.header("x-custom"), Some("yes"));
    assert_eq!(r.text(), "teapot\n");
    // Keep-alive: two requests on one connection.
    let mut s = TcpStream::connect(server.addr).unwrap();
    s.write_all(b"GET /t/a HTTP/1.1\r\nHost: x\r\n\r\nGET /t/b HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    assert!(
        raw.contains("hello from /a") && raw.contains("hello from /b"),
        "{raw}"
    );
}

#[test]
fn serve_maps_each_limit_to_its_status() {
    let dir = tempdir();
    let server = Serve::start(&wagi_manifest(dir.path(), ""));
    let cause = |r: &Resp| r.header("x-wasmlet-error").unwrap_or("").to_string();
    // Guest trap: 500.
    let r = server.get("/t/trap");
    assert_eq!(r.status, 500);
    assert!(cause(&r).contains("trap"), "{r:?}");
    // Wall-clock timeout: 504 (sleeping, so not CPU).
    let r = server.get("/slow/sleep?3000");
    assert_eq!(r.status, 504, "{r:?}");
    assert!(cause(&r).contains("timeout"), "{r:?}");
    // CPU time: 500 naming the limit.
    let r = server.get("/t/spin");
    assert_eq!(r.status, 500);
    assert!(cause(&r).contains("CPU time limit of 300ms"), "{r:?}");
    // Memory: 500 naming the limit.
    let r = server.get("/t/grow");
    assert_eq!(r.status, 500);
    assert!(cause(&r).contains("memory limit of 8 MiB"), "{r:?}");
    // Non-zero exit without headers: 502; no header block at all: 502.
    let r = server.get("/t/exit3");
    assert_eq!(r.status, 502);
    assert!(cause(&r).contains("code 3"), "{r:?}");
    assert_eq!(server.get("/t/noheaders").status, 502);
    // A flood of header lines: 502 (once a panic past 24k lines).
    assert_eq!(server.get("/t/headers?1000").status, 200);
    for n in [1001, 30_000] {
        let r = server.get(&format!("/t/headers?{n}"));
        assert_eq!(r.status, 502, "{n}");
        assert!(cause(&r).contains("header"), "{r:?}");
    }
    // A response over max_response_size: 500.
    let r = server.get("/t/big?2000000");
    assert_eq!(r.status, 500);
    assert!(cause(&r).contains("max_response_size"), "{r:?}");
    assert_eq!(server.get("/t/big?1000").body.len(), 1000);
    // Bodies over max_body_size: 413, declared or streamed (chunked).
    let big = vec![b'a'; 70 * 1024];
    assert_eq!(
        request(server.addr, "POST", "/t/echo", &[], &big).status,
        413
    );
    assert_eq!(post_chunked(server.addr, "/t/echo", 20).status, 413);
    // Headers over max_header_size: 431.
    let long = "v".repeat(10 * 1024);
    let r = request(server.addr, "GET", "/t/hello", &[("X-Long", &long)], b"");
    assert_eq!(r.status, 431);
    // A client that sends half its body, then stalls: 408 after body_timeout.
    let mut s = TcpStream::connect(server.addr).unwrap();
    s.write_all(b"POST /t/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nonly some")
        .unwrap();
    let start = Instant::now();
    let r = read_response(&mut s);
    assert_eq!(r.status, 408);
    assert!(start.elapsed() < Duration::from_secs(10));
    // A client that never finishes its head is cut off after header_timeout.
    let mut s = TcpStream::connect(server.addr).unwrap();
    s.write_all(b"GET /t/hello HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut buf = Vec::new();
    let start = Instant::now();
    let _ = s.read_to_end(&mut buf);
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "slow head not cut off"
    );
    // No failure took the server down.
    assert_eq!(server.get("/t/hello").status, 200);
    let m = server.metrics();
    for (cause, n) in [
        ("trap", 1),
        ("timeout", 1),
        ("limit", 3),
        ("bad_output", 4),
        ("body_too_large", 2),
        ("body_timeout", 1),
    ] {
        let fname = if cause == "timeout" { "slow" } else { "t" };
        let line = format!("wasmlet_errors_total{{function=\"{fname}\",cause=\"{cause}\"}} {n}\n");
        assert!(m.contains(&line), "{line} not in {m}");
    }
}

#[test]
fn serve_guest_stderr_is_logged_and_bounded() {
    let dir = tempdir();
    let server = Serve::start(&wagi_manifest(dir.path(), ""));
    let r = request(
        server.addr,
        "GET",
        "/t/stderr?1000",
        &[("X-Request-Id", "stderr-req")],
        b"",
    );
    assert_eq!(r.status, 200);
    std::thread::sleep(Duration::from_millis(300));
    let log = server.log();
    let tagged: Vec<_> = log
        .lines()
        .filter(|l| l.contains("stderr-req") && l.contains("of guest stderr"))
        .collect();
    assert!(!tagged.is_empty(), "{log}");
    assert!(
        tagged
            .iter()
            .all(|l| l.contains("function=\"t\"") || l.contains("function=t")),
        "{tagged:?}"
    );
    // 200 bytes of a 26-byte line: 7 lines, then a note of the rest.
    assert!(tagged.len() <= 8, "{}", tagged.len());
    assert!(log.contains("more byte(s) not logged"), "{log}");
}

#[test]
fn serve_overload_gives_503_with_retry_after() {
    let dir = tempdir();
    let manifest = wagi_manifest(
        dir.path(),
        r#"
[[function]]
name = "one"
module = "MODULE"
[function.limits]
max_concurrency = 1
queue_depth = 1
queue_timeout = "2s"
[[function.trigger]]
type = "http"
route = "/one/...""#
            .replace("MODULE", &c_guest("wagi").display().to_string())
            .as_str(),
    );
    let server = Serve::start(&manifest);
    let addr = server.addr;
    let handles: Vec<_> = (0..6)
        .map(|_| std::thread::spawn(move || request(addr, "GET", "/one/sleep?700", &[], b"")))
        .collect();
    let results: Vec<Resp> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let ok = results.iter().filter(|r| r.status == 200).count();
    let busy: Vec<_> = results.iter().filter(|r| r.status == 503).collect();
    assert!(ok >= 2, "one runs, one waits: {results:?}");
    assert_eq!(ok + busy.len(), 6, "{results:?}");
    assert!(!busy.is_empty());
    for r in &busy {
        assert_eq!(r.header("retry-after"), Some("2"));
        assert!(r.header("x-wasmlet-error").unwrap().contains("at capacity"));
    }
    // A queue timeout: one running 2.5 s, one waiting past queue_timeout.
    let slow = std::thread::spawn(move || request(addr, "GET", "/one/sleep?1900", &[], b""));
    std::thread::sleep(Duration::from_millis(200));
    let waited = request(addr, "GET", "/one/sleep?10", &[], b"");
    assert!(waited.status == 200 || waited.status == 503, "{waited:?}");
    assert_eq!(slow.join().unwrap().status, 200);
    assert_eq!(server.get("/one/hello").status, 200, "still serving");
    let m = server.metrics();
    let rejected = busy.len() + usize::from(waited.status == 503);
    assert!(
        m.contains(&format!(
            "wasmlet_rejected_total{{function=\"one\"}} {rejected}\n"
        )),
        "{rejected} {m}"
    );
}

/// Runs wrk against `url` for `secs`; its summary.
pub(crate) fn wrk(url: &str, connections: u32, secs: u32) -> String {
    let out = Command::new("wrk")
        .args([
            "-t1",
            &format!("-c{connections}"),
            &format!("-d{secs}s"),
            "--timeout",
            "10s",
            url,
        ])
        .output()
        .expect("wrk runs (scripts/install-deps installs it)");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub(crate) fn wrk_requests(summary: &str) -> u64 {
    summary
        .lines()
        .find(|l| l.contains("requests in"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no request count in {summary}"))
}

#[test]
fn serve_reloads_under_load_without_failing_a_request() {
    let dir = tempdir();
    let manifest = wagi_manifest(dir.path(), "");
    let server = Serve::start(&manifest);
    let url = format!("http://{}/t/echo", server.addr);
    let load = std::thread::spawn(move || wrk(&url, 8, 4));
    std::thread::sleep(Duration::from_millis(1000));
    // A new version: another greeting, picked up by the watcher.
    let text = std::fs::read_to_string(&manifest).unwrap();
    std::fs::write(
        &manifest,
        text.replace("GREETING = \"hi\"", "GREETING = \"v2\""),
    )
    .unwrap();
    let start = Instant::now();
    loop {
        let r = server.get("/t/echo");
        assert_eq!(r.status, 200);
        if r.header("x-greeting") == Some("v2") {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // A broken manifest keeps the new version serving, and SIGHUP reloads.
    std::fs::write(&manifest, "this is = not [valid").unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    server.signal(libc::SIGHUP);
    let summary = load.join().unwrap();
    assert!(wrk_requests(&summary) > 100, "{summary}");
    assert!(!summary.contains("Non-2xx"), "{summary}");
    assert!(!summary.contains("Socket errors"), "{summary}");
    assert_eq!(server.get("/t/echo").header("x-greeting"), Some("v2"));
    let log = server.log();
    assert!(
        log.contains("reload failed, still serving the previous functions"),
        "{log}"
    );
    assert!(log.contains("wasmlet.toml:1:"), "{log}");
    let m = server.metrics();
    assert!(m.contains("wasmlet_reloads_total 1\n"), "{m}");
    assert!(!m.contains("wasmlet_reload_failures_total 0\n"), "{m}");
}

#[test]
fn serve_sigterm_drains_in_flight_requests_then_exits_0() {
    let dir = tempdir();
    let mut server = Serve::start(&wagi_manifest(dir.path(), ""));
    let addr = server.addr;
    let handles: Vec<_> = (0..4)
        .map(|_| std::thread::spawn(move || request(addr, "GET", "/t/sleep?1000", &[], b"")))
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    // Not ready any more once draining; still healthy.
    server.signal(libc::SIGTERM);
    std::thread::sleep(Duration::from_millis(200));
    let ready = request(server.admin, "GET", "/readyz", &[], b"");
    assert_eq!(ready.status, 503);
    for h in handles {
        let r = h.join().unwrap();
        assert_eq!((r.status, r.text().as_str()), (200, "slept 1000\n"));
    }
    assert_eq!(server.wait(Duration::from_secs(20)), 0, "{}", server.log());
    assert!(TcpStream::connect(addr).is_err(), "still accepting");
    assert!(server.log().contains("drained"), "{}", server.log());
}

#[test]
fn serve_metrics_match_the_requests_sent() {
    let dir = tempdir();
    let manifest = wagi_manifest(dir.path(), "");
    let text = std::fs::read_to_string(&manifest).unwrap().replace(
        "[server]",
        "[server]\nadmin_token_env = \"TEST_ADMIN_TOKEN\"",
    );
    std::fs::write(&manifest, text).unwrap();
    let server = Serve::start_with(&manifest, &[], &[("TEST_ADMIN_TOKEN", "s3cret")]);
    for _ in 0..7 {
        assert_eq!(server.get("/t/hello").status, 200);
    }
    assert_eq!(server.get("/t/trap").status, 500);
    assert_eq!(server.get("/missing").status, 404);
    // The token is required for /metrics, not for the probes.
    assert_eq!(
        request(server.admin, "GET", "/metrics", &[], b"").status,
        401
    );
    let wrong = request(
        server.admin,
        "GET",
        "/metrics",
        &[("Authorization", "Bearer nope")],
        b"",
    );
    assert_eq!(wrong.status, 401);
    // The scheme's case does not matter; the token's does; other schemes
    // do not pass.
    for (auth, status) in [
        ("bearer s3cret", 200),
        ("BEARER s3cret", 200),
        ("Bearer S3CRET", 401),
        ("Basic s3cret", 401),
        ("Bearers3cret", 401),
    ] {
        let r = request(
            server.admin,
            "GET",
            "/healthz",
            &[("Authorization", auth)],
            b"",
        );
        assert_eq!(r.status, 200);
        let r = request(
            server.admin,
            "GET",
            "/metrics",
            &[("Authorization", auth)],
            b"",
        );
        assert_eq!(r.status, status, "{auth}");
    }
    assert_eq!(
        request(server.admin, "GET", "/healthz", &[], b"").status,
        200
    );
    assert_eq!(
        request(server.admin, "GET", "/readyz", &[], b"").status,
        200
    );
    let r = request(
        server.admin,
        "GET",
        "/metrics",
        &[("Authorization", "Bearer s3cret")],
        b"",
    );
    assert_eq!(r.status, 200);
    let m = r.text();
    for line in [
        "wasmlet_requests_total{function=\"t\"} 8",
        "wasmlet_invocations_total{function=\"t\"} 8",
        "wasmlet_responses_total{function=\"t\",code=\"2xx\"} 7",
        "wasmlet_responses_total{function=\"t\",code=\"5xx\"} 1",
        "wasmlet_errors_total{function=\"t\",cause=\"trap\"} 1",
        "wasmlet_request_duration_seconds_count{function=\"t\"} 8",
        "wasmlet_request_duration_seconds_bucket{function=\"t\",le=\"+Inf\"} 8",
        "wasmlet_instance_starts_total{function=\"t\",start=\"plain\"} 8",
        "wasmlet_instances_in_flight{function=\"t\"} 0",
        "wasmlet_queue_depth{function=\"t\"} 0",
        "wasmlet_unrouted_requests_total 1",
        "wasmlet_in_flight 0",
        "wasmlet_requests_total{function=\"exact\"} 0",
    ] {
        assert!(m.contains(&format!("{line}\n")), "{line} not in {m}");
    }
}

#[test]
fn serve_check_and_manifest_errors() {
    let dir = tempdir();
    let manifest = example_manifest(dir.path());
    let r = run_cli(wasmlet().arg("serve").arg(&manifest).arg("--check"));
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stdout.contains("hello: wagi function, routes /hello"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains("echo: wagi function, routes /echo/..."),
        "{}",
        r.stdout
    );
    // MANIFEST defaults to ./wasmlet.toml.
    let r = run_cli(wasmlet().current_dir(dir.path()).args(["serve", "--check"]));
    assert_eq!(r.code, 0, "{}", r.stderr);
    let text = std::fs::read_to_string(&manifest).unwrap();
    let bad = |from: &str, to: &str| {
        let p = dir.path().join("bad.toml");
        std::fs::write(&p, text.replacen(from, to, 1)).unwrap();
        run_cli(wasmlet().arg("serve").arg(&p).arg("--check"))
    };
    let r = bad("memory = \"16MiB\"", "memory = \"16 lightyears\"");
    r.assert_one_line_error("bad.toml:12:10: function.limits.memory");
    assert!(
        r.stderr.contains("function.limits.memory") && r.stderr.contains("invalid size"),
        "{}",
        r.stderr
    );
    let r = bad("queue_depth = 128", "queue_size = 128");
    r.assert_one_line_error("unknown field `queue_size`");
    let r = bad("kind = \"wagi\"", "kind = \"http\"");
    r.assert_one_line_error("the module is a core module");
    assert!(r.stderr.contains("function `hello`"), "{}", r.stderr);
    let r = bad(
        "[[function.trigger]]",
        "[function.sandbox]\npids = 2\n[[function.trigger]]",
    );
    r.assert_one_line_error("pids must be at least");
    assert!(r.stderr.contains("function `hello`"), "{}", r.stderr);
    let r = bad("module = \"hello.wasm\"", "module = \"missing.wasm\"");
    r.assert_one_line_error("missing.wasm");
    let r = bad("route = \"/echo/...\"", "route = \"/hello\"");
    r.assert_one_line_error("already the route of function `hello`");
    // The memory budget names the functions that claim it.
    let r = bad(
        "admin_listen = \"127.0.0.1:9090\"",
        "admin_listen = \"127.0.0.1:9090\"\n[server]\nmemory_budget = \"512MiB\"",
    );
    r.assert_one_line_error("more than the memory budget of 512 MiB");
    assert!(
        r.stderr.contains("hello: 64 x 16 MiB") && r.stderr.contains("echo: 16 x 16 MiB"),
        "{}",
        r.stderr
    );
    let r = run_cli(wasmlet().args(["serve", "--check", "/nonexistent/wasmlet.toml"]));
    r.assert_one_line_error("cannot read manifest /nonexistent/wasmlet.toml");
    // What `serve` itself would refuse, `--check` refuses too.
    let r = bad(
        "listen = \"127.0.0.1:3000\"",
        "listen = \"127.0.0.1:99999\"",
    );
    r.assert_one_line_error("listen is not a HOST:PORT address");
    let r = bad("listen = \"127.0.0.1:3000\"", "listen = \"127.0.0.1:9090\"");
    r.assert_one_line_error("listen and admin_listen are the same address");
    let r = bad(
        "admin_listen = \"127.0.0.1:9090\"",
        "admin_listen = \"127.0.0.1:9090\"\n[server]\nmax_header_size = \"1KiB\"",
    );
    r.assert_one_line_error("bad.toml: server.max_header_size must be at least 8192 bytes");
    let r = bad(
        "admin_listen = \"127.0.0.1:9090\"",
        "admin_listen = \"127.0.0.1:9090\"\n[server]\nadmin_token_env = \"WASMLET_TEST_NO_SUCH_VAR\"",
    );
    r.assert_one_line_error("WASMLET_TEST_NO_SUCH_VAR, which is not set");
    // A usage log that is a module or the manifest would corrupt it.
    let r = bad(
        "admin_listen = \"127.0.0.1:9090\"",
        "admin_listen = \"127.0.0.1:9090\"\nusage_log = \"echo.wasm\"",
    );
    r.assert_one_line_error("is function echo's module");
    let r = bad(
        "admin_listen = \"127.0.0.1:9090\"",
        "admin_listen = \"127.0.0.1:9090\"\nusage_log = \"bad.toml\"",
    );
    r.assert_one_line_error("is the manifest itself");
    // The same file by another name: through a directory not made yet, or
    // a hard link. (Neither is touched: a module never gets a line.)
    let module = dir.path().join("echo.wasm");
    let before = std::fs::read(&module).unwrap();
    std::fs::hard_link(&module, dir.path().join("hard.wasm")).unwrap();
    for path in ["nodir/../echo.wasm", "hard.wasm"] {
        let r = bad(
            "admin_listen = \"127.0.0.1:9090\"",
            &format!("admin_listen = \"127.0.0.1:9090\"\nusage_log = \"{path}\""),
        );
        r.assert_one_line_error("is function echo's module");
        let r = run_cli(
            wasmlet()
                .arg("serve")
                .arg(dir.path().join("bad.toml"))
                .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"]),
        );
        r.assert_one_line_error("is function echo's module");
    }
    assert_eq!(std::fs::read(&module).unwrap(), before);
    // Not a file; not a log.
    let r = bad(
        "admin_listen = \"127.0.0.1:9090\"",
        "admin_listen = \"127.0.0.1:9090\"\nusage_log = \".\"",
    );
    r.assert_one_line_error("not a regular file");
    std::fs::write(dir.path().join("notes.txt"), "my notes\n").unwrap();
    let r = bad(
        "admin_listen = \"127.0.0.1:9090\"",
        "admin_listen = \"127.0.0.1:9090\"\nusage_log = \"notes.txt\"",
    );
    r.assert_one_line_error("not a usage log");
    // The admin listener on every address at the request listener's port;
    // an address this host does not have.
    let r = bad(
        "admin_listen = \"127.0.0.1:9090\"",
        "admin_listen = \"0.0.0.0:3000\"",
    );
    r.assert_one_line_error("listen and admin_listen are the same address");
    let r = bad("listen = \"127.0.0.1:3000\"", "listen = \"192.0.2.1:3000\"");
    r.assert_one_line_error("listen is not an address of this host");
    // A bare number is bytes: a memory limit under one page is refused.
    let r = bad("memory = \"16MiB\"", "memory = 64");
    r.assert_one_line_error("less than one wasm page");
    // A NUL in an env value would end it early in the guest.
    let r = bad(
        "env = { GREETING = \"Hi\" }",
        "env = { GREETING = \"Hi\\u0000there\" }",
    );
    r.assert_one_line_error("holds a NUL byte");
}

#[test]
fn serve_global_in_flight_cap_spans_functions() {
    let dir = tempdir();
    let manifest = wagi_manifest(dir.path(), "");
    let text = std::fs::read_to_string(&manifest)
        .unwrap()
        .replace("[server]", "[server]\nmax_in_flight = 1");
    std::fs::write(&manifest, text).unwrap();
    let server = Serve::start(&manifest);
    let addr = server.addr;
    // `t` holds the only place for 1.8 s; `exact` (its own concurrency is
    // free) waits its queue_timeout (1 s) for the global cap, then gets a 503.
    let busy = std::thread::spawn(move || request(addr, "GET", "/t/sleep?1800", &[], b""));
    std::thread::sleep(Duration::from_millis(300));
    let start = Instant::now();
    let r = server.get("/exact");
    assert_eq!(r.status, 503, "{r:?}");
    assert!(
        start.elapsed() >= Duration::from_millis(900),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!(busy.join().unwrap().status, 200);
    assert_eq!(server.get("/exact").status, 200);
    let m = server.metrics();
    assert!(
        m.contains("wasmlet_errors_total{function=\"exact\",cause=\"queue_timeout\"} 1\n"),
        "{m}"
    );
}

#[test]
fn serve_grants_directories_read_only_unless_rw() {
    let dir = tempdir();
    std::fs::create_dir(dir.path().join("static")).unwrap();
    std::fs::create_dir(dir.path().join("data")).unwrap();
    std::fs::write(dir.path().join("static/hello.txt"), "static file\n").unwrap();
    let extra = r#"
[[function]]
name = "files"
module = "MODULE"
dirs = ["static::/static", "rw:data::/data"]
[[function.trigger]]
type = "http"
route = "/files/...""#
        .replace("MODULE", &c_guest("wagi").display().to_string());
    let server = Serve::start(&wagi_manifest(dir.path(), &extra));
    let r = server.get("/files/cat?/static/hello.txt");
    assert_eq!((r.status, r.text().as_str()), (200, "static file\n"));
    assert_eq!(
        server.get("/files/write?/static/new.txt").text(),
        "refused\n"
    );
    assert_eq!(server.get("/files/write?/data/new.txt").text(), "written\n");
    assert!(dir.path().join("data/new.txt").exists());
    // Nothing else of the host is there; other functions get no directories.
    assert_eq!(server.get("/files/cat?/etc/passwd").status, 404);
    assert_eq!(server.get("/t/cat?/static/hello.txt").status, 404);
}

#[test]
fn serve_reloads_when_a_module_changes() {
    let dir = tempdir();
    let module = dir.path().join("fn.wasm");
    std::fs::copy(c_guest("wagi"), &module).unwrap();
    let manifest = dir.path().join("wasmlet.toml");
    std::fs::write(
        &manifest,
        "[[function]]\nname = \"f\"\nmodule = \"fn.wasm\"\n[[function.trigger]]\ntype = \"http\"\nroute = \"/f\"\n",
    )
    .unwrap();
    let server = Serve::start(&manifest);
    assert_eq!(server.get("/f").text(), "hello from /\n");
    // A new module, renamed into place (as deployments do).
    let next = dir.path().join("fn.wasm.new");
    std::fs::copy(c_example("serve/hello"), &next).unwrap();
    std::fs::rename(&next, &module).unwrap();
    let start = Instant::now();
    while !server.get("/f").text().contains("from a wasmlet function") {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Settings read only at start: the reload says they take a restart,
    // and serves on with the old ones.
    std::fs::write(
        &manifest,
        "[server]\nmax_header_size = \"9KiB\"\ndrain_timeout = \"3s\"\n[[function]]\nname = \"f\"\nmodule = \"fn.wasm\"\n[[function.trigger]]\ntype = \"http\"\nroute = \"/g\"\n",
    )
    .unwrap();
    let start = Instant::now();
    while server.get("/g").status != 200 {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = server.log();
    assert!(
        log.contains("take a restart")
            && log.contains("server.max_header_size, server.drain_timeout"),
        "{log}"
    );
}

/// The wasi:http guest (`tests/guests/http_hello.c`) as a component, and a
/// manifest serving its routes as function `web` (kind left out: inferred).
pub(crate) fn http_manifest(dir: &Path, allowed: &str) -> PathBuf {
    let module = crate::components::component("http_hello", crate::components::build::Kind::Http);
    let mut text = format!(
        r#"
[server]
max_body_size = "64KiB"
max_header_size = "8KiB"
body_timeout = "2s"
max_log_per_invocation = 200

[[function]]
name = "web"
module = "{m}"
allowed_outbound_hosts = [{allowed}]
[function.limits]
memory = "16MiB"
cpu_time = "300ms"
timeout = "3s"
max_concurrency = 8
"#,
        m = module.display()
    );
    for route in [
        "/hello",
        "/echo",
        "/trap",
        "/loop",
        "/sleep",
        "/none",
        "/log",
        "/outbound",
        "/big",
        "/partial",
    ] {
        text.push_str(&format!(
            "[[function.trigger]]\ntype = \"http\"\nroute = \"{route}\"\n"
        ));
    }
    let p = dir.join("wasmlet.toml");
    std::fs::write(&p, text).unwrap();
    p
}

/// A one-shot HTTP server on 127.0.0.1: answers every request `200 ok`.
fn upstream() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { break };
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let _ =
                s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok");
        }
    });
    addr
}

#[test]
fn serve_http_component_end_to_end() {
    let dir = tempdir();
    let up = upstream();
    let server = Serve::start(&http_manifest(dir.path(), &format!("\"http://{up}\"")));
    let cause = |r: &Resp| r.header("x-wasmlet-error").unwrap_or("").to_string();
    // Hello: the guest's status, headers and body; a request id.
    let r = server.get("/hello");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.text(), "hello from wasi:http\n");
    assert_eq!(r.header("x-guest"), Some("wasmlet"));
    assert_eq!(r.header("content-type"), Some("text/plain"));
    assert_eq!(r.header("x-request-id").map(str::len), Some(16), "{r:?}");
    let id = |r: &Resp| r.header("x-request-id").unwrap().to_string();
    let hello_id = id(&r);
    // A body the guest finished writing goes out whole, with its length.
    assert_eq!(r.header("content-length"), Some("21"), "{r:?}");
    assert_eq!(r.header("transfer-encoding"), None, "{r:?}");
    // Headers and body both ways; the client's sane request id is kept.
    let r = request(
        server.addr,
        "POST",
        "/echo",
        &[("X-Echo", "there and back"), ("X-Request-Id", "req-42")],
        b"ping",
    );
    assert_eq!(r.status, 201, "{r:?}");
    assert_eq!(r.text(), "POST ping");
    assert_eq!(r.header("x-echo"), Some("there and back"));
    assert_eq!(r.header("x-request-id"), Some("req-42"));
    // A chunked body within the limit is streamed to the guest.
    let r = post_chunked(server.addr, "/echo", 4);
    assert_eq!(r.status, 201);
    assert_eq!(r.text(), format!("POST {}", "b".repeat(0x4000)));
    // A streamed (4 MiB) response body arrives whole.
    let r = server.get("/big");
    assert_eq!(r.body.len(), 4 << 20);
    let big_id = id(&r);
    // A guest that traps after its head and 1 MiB of body: the client gets
    // the 200 and a body cut short; the usage line says how it ended.
    let mut s = send_get(server.addr, "/partial", "partial-1");
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    assert!(
        raw.starts_with(b"HTTP/1.1 200"),
        "{:?}",
        &raw[..raw.len().min(200)]
    );
    assert!(
        !raw.ends_with(b"0\r\n\r\n"),
        "the body ended as if complete"
    );
    // Trap 500, CPU limit 500, wall-clock timeout 504, no response 502.
    let r = server.get("/trap");
    assert_eq!(r.status, 500, "{r:?}");
    assert!(cause(&r).contains("trap"), "{r:?}");
    let trap_id = id(&r);
    let r = server.get("/loop");
    assert_eq!(r.status, 500, "{r:?}");
    assert!(cause(&r).contains("CPU time limit of 300ms"), "{r:?}");
    let r = server.get("/sleep");
    assert_eq!(r.status, 504, "{r:?}");
    assert!(cause(&r).contains("timeout"), "{r:?}");
    let sleep_id = id(&r);
    let r = server.get("/none");
    assert_eq!(r.status, 502, "{r:?}");
    assert!(cause(&r).contains("without setting a response"), "{r:?}");
    // Bodies over max_body_size: 413, declared or streamed (chunked).
    let big = vec![b'a'; 70 * 1024];
    assert_eq!(request(server.addr, "POST", "/echo", &[], &big).status, 413);
    let r = post_chunked(server.addr, "/echo", 20);
    assert_eq!(r.status, 413, "{r:?}");
    // Headers over max_header_size: 431.
    let long = "v".repeat(20 * 1024);
    let r = request(server.addr, "GET", "/hello", &[("X-Long", &long)], b"");
    assert_eq!(r.status, 431);
    // A body that stalls: 408 after body_timeout.
    let mut s = TcpStream::connect(server.addr).unwrap();
    s.write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nonly some")
        .unwrap();
    let start = Instant::now();
    let r = read_response(&mut s);
    assert_eq!(r.status, 408, "{r:?}");
    assert!(start.elapsed() < Duration::from_secs(10));
    // Outbound: the allowed host answers; any other is refused.
    let r = request(
        server.addr,
        "GET",
        "/outbound",
        &[("X-Target", &up.to_string())],
        b"",
    );
    assert_eq!(r.text(), "status=200", "{r:?}");
    let other = format!("localhost:{}", up.port());
    let r = request(
        server.addr,
        "GET",
        "/outbound",
        &[("X-Target", &other)],
        b"",
    );
    assert_eq!(r.text(), "error=HTTP-request-denied", "{r:?}");
    // Guest stderr: in the log, line by line, tagged.
    let r = request(
        server.addr,
        "GET",
        "/log",
        &[("X-Request-Id", "log-req")],
        b"",
    );
    assert_eq!(r.text(), "logged");
    std::thread::sleep(Duration::from_millis(300));
    let log = server.log();
    let tagged: Vec<_> = log
        .lines()
        .filter(|l| l.contains("log-req") && l.contains("stderr:"))
        .collect();
    assert_eq!(tagged.len(), 2, "{log}");
    assert!(tagged[0].contains("guest says hello") && tagged[0].contains("web"));
    // No failure took the server down; the metrics saw each cause.
    assert_eq!(server.get("/hello").status, 200);
    let m = server.metrics();
    // (Two traps: /trap, and /partial after its head.)
    for (cause, n) in [
        ("trap", 2),
        ("timeout", 1),
        ("limit", 1),
        ("bad_output", 1),
        ("body_too_large", 2),
        ("body_timeout", 1),
    ] {
        let line = format!("wasmlet_errors_total{{function=\"web\",cause=\"{cause}\"}} {n}\n");
        assert!(m.contains(&line), "{line} not in {m}");
    }
    assert!(
        m.contains("wasmlet_instances_in_flight{function=\"web\"} 0\n"),
        "{m}"
    );
    // Every invocation of the component is in the usage log with what it
    // used and how it ended; a streamed body's line is written when its
    // guest ends. (17 requests; refused before an instance started: the
    // declared oversized body, 413, and the oversized head, 431.)
    let lines = crate::usage::wait_lines(&dir.path().join("wasmlet-usage.jsonl"), 17);
    assert_eq!(lines.len(), 17, "{lines:?}");
    let by_id = |id: &str| crate::usage::line_of(&lines, id);
    for (id, status, http) in [
        (&hello_id, "exited", 200),
        (&big_id, "exited", 200),
        (&trap_id, "trapped", 500),
        (&sleep_id, "limit_exceeded", 504),
        (&"partial-1".to_string(), "trapped", 200),
    ] {
        let l = by_id(id);
        assert_eq!(l["function"], "web", "{l}");
        assert_eq!(l["status"], status, "{l}");
        assert_eq!(l["http_status"], http, "{l}");
        assert_eq!(l["memory_limit_bytes"], 16 << 20, "{l}");
        assert!(l["wall_time_ns"].as_u64().unwrap() > 0, "{l}");
        assert!(l["cpu_time_ns"].as_u64().unwrap() > 0, "{l}");
        assert!(l["peak_memory_bytes"].as_u64().unwrap() > 0, "{l}");
        assert!(l["gb_seconds"].as_f64().unwrap() > 0.0, "{l}");
    }
    assert_eq!(by_id(&hello_id)["exit_code"], 0);
    assert!(
        by_id(&trap_id)["error"]
            .as_str()
            .unwrap()
            .contains("unreachable")
    );
    assert!(by_id(&sleep_id)["wall_time_ns"].as_u64().unwrap() >= 3_000_000_000);
    let mut rejected: Vec<_> = lines
        .iter()
        .filter(|l| l["status"] == "rejected")
        .map(|l| {
            (
                l["reason"].as_str().unwrap(),
                l["http_status"].as_u64().unwrap(),
            )
        })
        .collect();
    rejected.sort();
    assert_eq!(
        rejected,
        [("body_too_large", 413), ("header_too_large", 431)],
        "{lines:?}"
    );
}

/// A manifest serving the wasi:http test component as `web` on `routes`,
/// with `limits` (TOML lines) and `server` settings.
fn component_manifest(dir: &Path, server: &str, limits: &str, routes: &[&str]) -> PathBuf {
    let module = crate::components::component("http_hello", crate::components::build::Kind::Http);
    let mut text = format!(
        "[server]\n{server}\n[[function]]\nname = \"web\"\nmodule = \"{}\"\n[function.limits]\nmemory = \"16MiB\"\n{limits}\n",
        module.display()
    );
    for route in routes {
        text.push_str(&format!(
            "[[function.trigger]]\ntype = \"http\"\nroute = \"{route}\"\n"
        ));
    }
    let p = dir.join("wasmlet.toml");
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn serve_http_component_runs_max_concurrency_instances_at_once() {
    // 40 at once: more than the pool's table slots held for components
    // before (48 of a 64-slot pool; 36 of a 40-slot one), each waiting out
    // its timeout: every one is admitted and runs (504), none is refused
    // for want of a pool slot (500).
    let dir = tempdir();
    let m = component_manifest(
        dir.path(),
        "",
        "timeout = \"1s\"\nmax_concurrency = 40\nqueue_depth = 40",
        &["/sleep"],
    );
    let server = Serve::start(&m);
    let addr = server.addr;
    let statuses: Vec<u16> = (0..40)
        .map(|_| std::thread::spawn(move || request(addr, "GET", "/sleep", &[], b"").status))
        .collect::<Vec<_>>()
        .into_iter()
        .map(|t| t.join().unwrap())
        .collect();
    assert!(statuses.iter().all(|s| *s == 504), "{statuses:?}");
}

/// Opens a connection and sends `GET path` with `X-Request-Id: id`; the
/// answer is left unread.
fn send_get(addr: SocketAddr, path: &str, id: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nX-Request-Id: {id}\r\n\r\n"
    )
    .unwrap();
    s
}

/// Reads from `s` until `want` has arrived (or 10 s pass); what arrived.
fn read_until(s: &mut TcpStream, want: &[u8]) -> Vec<u8> {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.windows(want.len()).any(|w| w == want) {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    got
}

#[test]
fn serve_http_component_stream_keeps_its_place_and_its_line() {
    let dir = tempdir();
    let m = component_manifest(
        dir.path(),
        "drain_timeout = \"1s\"",
        "timeout = \"2s\"\nmax_concurrency = 1\nqueue_depth = 1\nqueue_timeout = \"200ms\"",
        &["/drip", "/hello", "/sleep"],
    );
    let mut server = Serve::start(&m);
    // A client that leaves before its response: the guest is stopped, and
    // the request still has its line.
    let s = send_get(server.addr, "/sleep", "gone-1");
    std::thread::sleep(Duration::from_millis(300));
    drop(s);
    let log = dir.path().join("wasmlet-usage.jsonl");
    let lines = crate::usage::wait_lines(&log, 1);
    let l = crate::usage::line_of(&lines, "gone-1");
    assert_eq!(l["status"], "interrupted", "{l}");
    assert!(crate::usage::error_of(l).contains("the client left"), "{l}");
    assert!(l.get("http_status").is_none(), "{l}");
    assert!(l["wall_time_ns"].as_u64().unwrap() >= 250_000_000, "{l}");
    // What the guest used until it was stopped: its instantiation and
    // first slice took CPU time, its instance had memory.
    assert!(l["cpu_time_ns"].as_u64().unwrap() > 0, "{l}");
    assert!(l["peak_memory_bytes"].as_u64().unwrap() >= 65536, "{l}");
    let drip = |id: &str| send_get(server.addr, "/drip", id);
    // The head and first chunk go out while the guest still runs (it
    // waits a minute before the rest).
    let start = Instant::now();
    let mut s = drip("drip-1");
    let got = read_until(&mut s, b"first\n");
    assert!(
        got.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    assert!(
        got.windows(6).any(|w| w == b"first\n"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "{:?}",
        start.elapsed()
    );
    // It keeps its instance and its place in max_concurrency: another
    // request waits, then gets 503.
    assert_eq!(server.get("/hello").status, 503);
    assert!(server.metrics().contains("wasmlet_in_flight 1\n"));
    // One whose client leaves while it waits in the queue ran nothing.
    let q = send_get(server.addr, "/hello", "left-queued");
    std::thread::sleep(Duration::from_millis(100));
    drop(q);
    // At its timeout the guest is stopped: the body is cut, not ended.
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    assert!(
        !rest.ends_with(b"0\r\n\r\n"),
        "{}",
        String::from_utf8_lossy(&rest)
    );
    assert_eq!(server.get("/hello").status, 200);
    let lines = crate::usage::wait_lines(&log, 5);
    let l = crate::usage::line_of(&lines, "left-queued");
    assert_eq!(l["status"], "rejected", "{l}");
    assert_eq!(l["reason"], "ended_before_start", "{l}");
    assert!(l.get("gb_seconds").is_none(), "{l}");
    let l = crate::usage::line_of(&lines, "drip-1");
    assert_eq!(l["status"], "limit_exceeded", "{l}");
    assert_eq!(l["http_status"], 200, "{l}");
    assert!(l["wall_time_ns"].as_u64().unwrap() >= 2_000_000_000, "{l}");
    assert!(
        server
            .metrics()
            .contains("wasmlet_errors_total{function=\"web\",cause=\"timeout\"} 1\n")
    );
    // SIGTERM while a stream outlasts the drain: the server exits after
    // drain_timeout (not twice it), and the line has the guest's figures
    // until it was stopped there.
    let mut s = drip("drip-2");
    read_until(&mut s, b"first\n");
    let start = Instant::now();
    server.signal(libc::SIGTERM);
    assert_eq!(server.wait(Duration::from_secs(10)), 0);
    assert!(
        start.elapsed() < Duration::from_millis(1900),
        "{:?}",
        start.elapsed()
    );
    let lines = crate::usage::lines(&log);
    let l = crate::usage::line_of(&lines, "drip-2");
    assert_eq!(l["status"], "interrupted", "{l}");
    // Cut by the drain deadline, and said so (its client never left).
    let why = crate::usage::error_of(l);
    assert!(
        why.contains("drain deadline") && !why.contains("client left"),
        "{l}"
    );
    assert!(l["cpu_time_ns"].as_u64().unwrap() > 0, "{l}");
    assert!(l["wall_time_ns"].as_u64().unwrap() >= 1_000_000_000, "{l}");
    assert_eq!(lines.iter().filter(|l| l["id"] == "drip-2").count(), 1);
}

#[test]
fn serve_http_component_stream_whose_client_leaves_is_stopped() {
    let dir = tempdir();
    let m = component_manifest(
        dir.path(),
        "",
        "timeout = \"30s\"\nmax_concurrency = 1\nqueue_depth = 1\nqueue_timeout = \"5s\"",
        &["/drip", "/hello"],
    );
    let server = Serve::start(&m);
    // The guest sends its head and a first chunk, then waits a minute.
    let mut s = send_get(server.addr, "/drip", "left-mid-body");
    let got = read_until(&mut s, b"first\n");
    assert!(
        got.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    let left = Instant::now();
    drop(s);
    // Its client gone, the guest is stopped at once (not at its 30 s
    // timeout): its place is free for the next request, which waits for it
    // in the queue.
    assert_eq!(server.get("/hello").status, 200);
    assert!(
        left.elapsed() < Duration::from_secs(5),
        "{:?}",
        left.elapsed()
    );
    let log = dir.path().join("wasmlet-usage.jsonl");
    let lines = crate::usage::wait_lines(&log, 2);
    let l = crate::usage::line_of(&lines, "left-mid-body");
    assert_eq!(l["status"], "interrupted", "{l}");
    assert!(crate::usage::error_of(l).contains("the client left"), "{l}");
    assert_eq!(l["http_status"], 200, "{l}");
    assert!(l["wall_time_ns"].as_u64().unwrap() < 5_000_000_000, "{l}");
    // What the guest used until it was stopped, not 0 (its head's).
    assert!(l["cpu_time_ns"].as_u64().unwrap() > 0, "{l}");
    assert!(l["peak_memory_bytes"].as_u64().unwrap() >= 65536, "{l}");
    assert!(server.metrics().contains("wasmlet_in_flight 0\n"));
}

#[test]
fn serve_client_leaving_mid_body_is_ended_before_start_not_a_body_timeout() {
    let dir = tempdir();
    let server = Serve::start(&wagi_manifest(dir.path(), ""));
    // Ten of a thousand declared bytes, then the client closes its side:
    // well within body_timeout (1s).
    let mut s = TcpStream::connect(server.addr).unwrap();
    s.write_all(
        b"POST /t/echo HTTP/1.1\r\nHost: x\r\nX-Request-Id: left-1\r\nContent-Length: 1000\r\n\r\n0123456789",
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    drop(s);
    // The same, with a reset instead of a close.
    let s = TcpStream::connect(server.addr).unwrap();
    (&s).write_all(
        b"POST /t/echo HTTP/1.1\r\nHost: x\r\nX-Request-Id: left-2\r\nContent-Length: 1000\r\n\r\n0123456789",
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: `s` owns an open socket for the whole call, and `linger` is
    // a valid `struct linger` of the size passed.
    let rc = unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&s),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0);
    drop(s); // a reset: linger on, zero seconds
    // A client that only half-closes is answered, with its id.
    let mut s = TcpStream::connect(server.addr).unwrap();
    s.write_all(
        b"POST /t/echo HTTP/1.1\r\nHost: x\r\nX-Request-Id: left-3\r\nContent-Length: 1000\r\n\r\n0123456789",
    )
    .unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let r = read_response(&mut s);
    assert_eq!(r.status, 400);
    assert_eq!(r.header("x-request-id"), Some("left-3"));
    // A later request on the same server is answered.
    assert_eq!(server.get("/t/hello").status, 200);
    let path = dir.path().join("wasmlet-usage.jsonl");
    let deadline = Instant::now() + Duration::from_secs(10);
    let lines = loop {
        let lines = crate::usage::lines(&path);
        if lines.len() >= 4 || Instant::now() > deadline {
            break lines;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    for id in ["left-1", "left-2", "left-3"] {
        let l = crate::usage::line_of(&lines, id);
        assert_eq!(l["status"], "rejected", "{l}");
        assert_eq!(l["reason"], "ended_before_start", "{l}");
        assert!(l.get("http_status").is_none(), "{l}");
    }
    let metrics = server.metrics();
    assert!(
        !metrics.contains("cause=\"body_timeout\"} 1")
            && !metrics.contains("cause=\"body_timeout\"} 2"),
        "a client that left is not a body timeout:\n{metrics}"
    );
}

#[test]
fn serve_sigterm_writes_a_line_for_every_request_still_open() {
    let dir = tempdir();
    let m = component_manifest(
        dir.path(),
        "drain_timeout = \"1s\"",
        "timeout = \"10s\"\nmax_concurrency = 1\nqueue_depth = 4\nqueue_timeout = \"10s\"",
        &["/sleep", "/hello"],
    );
    let mut server = Serve::start(&m);
    // One running (its guest waits a minute), one queued behind it.
    let _running = send_get(server.addr, "/sleep", "run-1");
    std::thread::sleep(Duration::from_millis(200));
    let _queued = send_get(server.addr, "/hello", "queued-1");
    std::thread::sleep(Duration::from_millis(200));
    let start = Instant::now();
    server.signal(libc::SIGTERM);
    assert_eq!(server.wait(Duration::from_secs(10)), 0);
    assert!(
        start.elapsed() < Duration::from_millis(1900),
        "{:?}",
        start.elapsed()
    );
    let lines = crate::usage::lines(&dir.path().join("wasmlet-usage.jsonl"));
    assert_eq!(lines.len(), 2, "{lines:?}");
    let by_id = |id: &str| crate::usage::line_of(&lines, id);
    assert_eq!(by_id("run-1")["status"], "interrupted");
    assert!(by_id("run-1")["wall_time_ns"].as_u64().unwrap() >= 1_000_000_000);
    // The queued one was ended while it waited, or ran in the moment the
    // running one's place came free: either way, one line.
    let q = by_id("queued-1");
    assert!(
        (q["status"] == "rejected" && q["reason"] == "ended_before_start")
            || q["status"] == "exited",
        "{q}"
    );
}

#[test]
fn serve_http_component_kind_checks() {
    let dir = tempdir();
    let manifest = http_manifest(dir.path(), "");
    let r = run_cli(wasmlet().arg("serve").arg(&manifest).arg("--check"));
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("web: http function"), "{}", r.stdout);
    let text = std::fs::read_to_string(&manifest).unwrap();
    let bad = |from: &str, to: &str| {
        let p = dir.path().join("bad.toml");
        std::fs::write(&p, text.replacen(from, to, 1)).unwrap();
        run_cli(wasmlet().arg("serve").arg(&p).arg("--check"))
    };
    bad("name = \"web\"", "name = \"web\"\nkind = \"wagi\"")
        .assert_one_line_error("the module is a component");
    bad(
        "allowed_outbound_hosts = []",
        "allowed_outbound_hosts = [\"a b\"]",
    )
    .assert_one_line_error("allowed outbound host `a b`");
    bad("name = \"web\"", "name = \"web\"\nsnapshot = true")
        .assert_one_line_error("not pre-initialized");
    bad(
        "[function.limits]",
        "[function.sandbox]\nmemory = \"64MiB\"\n[function.limits]",
    )
    .assert_one_line_error("[function.sandbox]");
}

#[test]
fn serve_http_component_overload_gives_503_with_retry_after() {
    let dir = tempdir();
    let manifest = http_manifest(dir.path(), "");
    let text = std::fs::read_to_string(&manifest).unwrap().replace(
        "max_concurrency = 8",
        "max_concurrency = 1\nqueue_depth = 0\nqueue_timeout = \"100ms\"",
    );
    std::fs::write(&manifest, text).unwrap();
    let server = Serve::start(&manifest);
    // One request holds the only instance (until its 3 s timeout)...
    let addr = server.addr;
    let busy = std::thread::spawn(move || request(addr, "GET", "/sleep", &[], b""));
    let start = Instant::now();
    while !server
        .metrics()
        .contains("wasmlet_instances_in_flight{function=\"web\"} 1\n")
    {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the sleeper never ran"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let r = server.get("/hello");
    // ...so the next is turned away at once, with Retry-After.
    assert_eq!(r.status, 503, "{r:?}");
    assert_eq!(r.header("retry-after"), Some("1"), "{r:?}");
    assert!(r.header("x-request-id").is_some());
    assert_eq!(busy.join().unwrap().status, 504);
    // Then it serves again, and nothing was left in flight.
    assert_eq!(server.get("/hello").status, 200);
    let m = server.metrics();
    assert!(
        m.contains("wasmlet_instances_in_flight{function=\"web\"} 0\n"),
        "{m}"
    );
    let rejected: u64 = m
        .lines()
        .find_map(|l| {
            l.strip_prefix("wasmlet_errors_total{function=\"web\",cause=\"queue_full\"} ")
        })
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(rejected >= 1, "{m}");
}

#[test]
fn serve_cuts_off_a_client_that_does_not_read_its_response() {
    let dir = tempdir();
    let m = dir.path().join("wasmlet.toml");
    std::fs::write(
        &m,
        format!(
            r#"
[server]
send_timeout = "1s"
[[function]]
name = "big"
module = "{}"
[function.limits]
max_concurrency = 1
queue_depth = 1
queue_timeout = "100ms"
[[function.trigger]]
type = "http"
route = "/b/..."
"#,
            crate::helpers::c_guest("wagi").display()
        ),
    )
    .unwrap();
    let server = Serve::start(&m);
    // 12 MB the client never reads: more than loopback's socket buffers
    // take, so the server's write stalls.
    let s = send_get(server.addr, "/b/big?12000000", "never-read");
    std::thread::sleep(Duration::from_millis(300));
    // The buffered response keeps its place in max_concurrency (a
    // function's held responses are at most that): the next one is
    // refused at its queue timeout.
    let r = server.get("/b/hello");
    assert_eq!(r.status, 503, "{r:?}");
    // After send_timeout without progress the connection is cut off, the
    // response dropped, its place free.
    let start = Instant::now();
    loop {
        let r = server.get("/b/hello");
        if r.status == 200 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "still held: {r:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(server.metrics().contains("wasmlet_in_flight 0\n"));
    // Its connection is closed: what arrived is short of the response.
    let mut got = Vec::new();
    let mut s = s;
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = s.read_to_end(&mut got);
    assert!(got.starts_with(b"HTTP/1.1 200"));
    assert!(got.len() < 12_000_000, "{}", got.len());
    assert!(server.log().contains("send_timeout"), "{}", server.log());
}
