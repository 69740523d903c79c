//! Components: `wasi:cli/run` commands (library and `wasmlet run`) and
//! `wasi:http/incoming-handler` guests through `handle_http`, built from C
//! (`tests/guests/hello.c`, `tests/guests/http_hello.c`) with
//! `tests/guests/components.rs`.

use crate::helpers::*;
use bytes::Bytes;
use http_body_util::BodyExt;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::time::Duration;
use wasmlet_runtime::http::{HttpBody, HttpOutcome, full_body, handle_http};
use wasmlet_runtime::{
    Error, Function, Input, Invocation, LimitExceeded, Limits, LoadOptions, Runtime, Status,
};

#[path = "../guests/components.rs"]
pub(crate) mod build;

/// `tests/guests/<name>.c` built as a component of `kind` (once per run).
pub(crate) fn component(name: &str, kind: build::Kind) -> PathBuf {
    build::build_component(name, kind, &scratch().join("components"))
}

fn http_guest(rt: &Runtime, opts: &LoadOptions) -> Function {
    let f = rt
        .load_file(component("http_hello", build::Kind::Http), opts)
        .unwrap();
    assert!(f.is_http_component() && f.is_component() && !f.is_command());
    f
}

fn request(method: &str, path: &str, body: &'static [u8]) -> hyper::Request<HttpBody> {
    hyper::Request::builder()
        .method(method)
        .uri(format!("http://localhost{path}"))
        .header("x-echo", "echoed")
        .body(full_body(Bytes::from_static(body)))
        .unwrap()
}

/// Runs one request and reads the whole response body.
fn call(f: &Function, req: hyper::Request<HttpBody>, inv: Invocation) -> (HttpOutcome, Bytes) {
    let rt = tokio_rt();
    rt.block_on(async {
        let mut out = handle_http(f, req, inv).await;
        let body = match out.response.as_mut() {
            Ok(resp) => {
                let body = std::mem::replace(resp.body_mut(), full_body(Bytes::new()));
                body.collect().await.unwrap().to_bytes()
            }
            Err(_) => Bytes::new(),
        };
        (out, body)
    })
}

#[test]
fn cli_component_runs_through_the_library() {
    let rt = runtime();
    let hello = rt
        .load_file(
            component("hello", build::Kind::Command),
            &LoadOptions::default(),
        )
        .unwrap();
    assert!(hello.is_component() && hello.is_command() && !hello.is_http_component());
    assert!(hello.module().is_none() && hello.component().is_some());
    let o = hello
        .invoke(Invocation {
            args: vec!["hello".into(), "a".into()],
            env: vec![("GREETING".into(), "hey".into())],
            stdin: Input::Bytes(vec![7u8; 1234].into()),
            ..Default::default()
        })
        .unwrap();
    assert!(o.success(), "{:?}", o.status);
    let out = stdout_of(&o);
    assert!(out.contains("arg[1]=a\nGREETING=hey\n"), "{out}");
    assert!(out.contains("stdin bytes=1234"), "{out}");
    assert_eq!(o.stderr.as_deref(), Some(&b"this goes to stderr\n"[..]));
    assert!(o.usage.wall_time > Duration::ZERO && o.usage.peak_memory_bytes > 0);

    // A non-zero exit is an error exit (wasi:cli/exit 0.2 carries ok or err).
    let o = hello
        .invoke(Invocation {
            env: vec![("EXIT_CODE".into(), "3".into())],
            ..Default::default()
        })
        .unwrap();
    assert!(matches!(o.status, Status::Exited(1)), "{:?}", o.status);

    // Named exports are for core modules.
    let e = hello
        .invoke(Invocation {
            entry: wasmlet_runtime::Entry::Export {
                name: "run".into(),
                params: vec![],
            },
            ..Default::default()
        })
        .unwrap_err();
    assert!(matches!(e, Error::Entry(_)), "{e}");
}

#[test]
fn cli_component_runs_with_wasmlet_run() {
    let path = component("hello", build::Kind::Command);
    let r = run_cli(
        wasmlet()
            .arg("run")
            .arg("--env")
            .arg("GREETING=yo")
            .arg("--usage")
            .arg(&path)
            .arg("x"),
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("arg[1]=x\nGREETING=yo\n"), "{}", r.stdout);
    assert_eq!(r.usage()["status"], "exited");
    // Cached now: the second run maps the compiled component.
    let r = run_cli(wasmlet().arg("run").arg(&path));
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.starts_with("hello from wasm\n"), "{}", r.stdout);
}

#[test]
fn http_hello_status_headers_and_body() {
    let rt = runtime();
    let f = http_guest(&rt, &LoadOptions::default());
    let (out, body) = call(&f, request("GET", "/hello", b""), Invocation::default());
    let resp = out.response.as_ref().unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/plain");
    assert_eq!(resp.headers()["x-guest"], "wasmlet");
    assert_eq!(&body[..], b"hello from wasi:http\n");
    assert!(out.final_outcome.is_none());
    assert!(out.usage.wall_time > Duration::ZERO && out.usage.peak_memory_bytes > 0);

    // Both ways: the request's method, header and body reach the guest.
    let (out, body) = call(
        &f,
        request("POST", "/echo", b"some request body"),
        Invocation::default(),
    );
    let resp = out.response.as_ref().unwrap();
    assert_eq!(resp.status(), 201);
    assert_eq!(resp.headers()["x-echo"], "echoed");
    assert_eq!(&body[..], b"POST some request body");

    // A fresh instance each time: the guest's counter never goes past 1.
    for _ in 0..3 {
        let (_, body) = call(&f, request("GET", "/count", b""), Invocation::default());
        assert_eq!(&body[..], b"count=1");
    }
}

#[test]
fn http_large_body_streams_and_usage_follows() {
    let rt = runtime();
    let f = http_guest(&rt, &LoadOptions::default());
    let rt2 = tokio_rt();
    rt2.block_on(async {
        let out = handle_http(&f, request("GET", "/big", b""), Invocation::default()).await;
        let body = out.response.unwrap().into_body().collect().await.unwrap();
        assert_eq!(body.to_bytes().len(), 4 << 20);
        let last = out.final_outcome.expect("streamed").await.unwrap();
        assert!(
            matches!(last.status, Status::Exited(0)),
            "{:?}",
            last.status
        );
        let usage = last.usage;
        assert!(usage.peak_memory_bytes > 0 && usage.cpu_time > Duration::ZERO);
    });
}

#[test]
fn http_trap_after_the_head_is_in_the_final_outcome() {
    let rt = runtime();
    let f = http_guest(&rt, &LoadOptions::default());
    tokio_rt().block_on(async {
        let out = handle_http(&f, request("GET", "/partial", b""), Invocation::default()).await;
        let response = out.response.expect("the head went out before the trap");
        assert_eq!(response.status(), 200);
        // The body ends with an error where the guest trapped.
        assert!(response.into_body().collect().await.is_err());
        let last = out.final_outcome.expect("streamed").await.unwrap();
        assert!(
            matches!(&last.status, Status::Trapped(m) if m.contains("unreachable")),
            "{:?}",
            last.status
        );
        assert!(last.usage.peak_memory_bytes > 0);
        assert!(last.usage.cpu_time > Duration::ZERO);
    });
}

#[test]
fn http_trap_is_an_error_with_usage() {
    let rt = runtime();
    let f = http_guest(&rt, &LoadOptions::default());
    let (out, _) = call(&f, request("GET", "/trap", b""), Invocation::default());
    match out.response {
        Err(Error::Trap(msg)) => assert!(msg.contains("unreachable"), "{msg}"),
        other => panic!("{other:?}"),
    }
    assert!(out.usage.wall_time > Duration::ZERO);
    // No response at all is an error too, not a hang.
    let (out, _) = call(&f, request("GET", "/none", b""), Invocation::default());
    assert!(
        matches!(out.response, Err(Error::Http(_))),
        "{:?}",
        out.response
    );
}

#[test]
fn http_loop_and_sleep_are_stopped_by_the_timeout() {
    let rt = runtime();
    let limits = Limits {
        timeout: Some(Duration::from_millis(300)),
        ..Limits::default()
    };
    let f = http_guest(
        &rt,
        &LoadOptions {
            limits: Some(limits),
            ..Default::default()
        },
    );
    let out = within(Duration::from_secs(20), move || {
        let (spin, _) = call(&f, request("GET", "/loop", b""), Invocation::default());
        let (sleep, _) = call(&f, request("GET", "/sleep", b""), Invocation::default());
        (spin, sleep)
    });
    let (spin, sleep) = out;
    let timeout = LimitExceeded::Timeout(Duration::from_millis(300));
    assert!(
        matches!(spin.response, Err(Error::LimitExceeded(l)) if l == timeout),
        "{:?}",
        spin.response
    );
    assert!(spin.usage.wall_time >= Duration::from_millis(300));
    // The spinning guest is charged the CPU it got (a loaded machine gives
    // it well under the 300 ms; the sleeping one gets almost none).
    assert!(
        spin.usage.cpu_time >= Duration::from_millis(30),
        "{:?}",
        spin.usage
    );
    assert!(
        matches!(sleep.response, Err(Error::LimitExceeded(l)) if l == timeout),
        "{:?}",
        sleep.response
    );
    assert!(sleep.usage.wall_time >= Duration::from_millis(300));
    assert!(
        sleep.usage.cpu_time < Duration::from_millis(30),
        "{:?}",
        sleep.usage
    );

    // CPU time too.
    let f = http_guest(
        &rt,
        &LoadOptions {
            limits: Some(Limits {
                cpu_time: Some(Duration::from_millis(50)),
                ..Limits::default()
            }),
            ..Default::default()
        },
    );
    let (out, _) = call(&f, request("GET", "/loop", b""), Invocation::default());
    assert!(
        matches!(
            out.response,
            Err(Error::LimitExceeded(LimitExceeded::CpuTime(_)))
        ),
        "{:?}",
        out.response
    );
}

/// A one-shot HTTP server on 127.0.0.1 answering "204 No Content".
fn tiny_server() -> (u16, std::thread::JoinHandle<usize>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let h = std::thread::spawn(move || {
        listener.set_nonblocking(false).unwrap();
        let mut served = 0;
        // Serve until a request arrives or 10 s pass.
        let (mut s, _) = listener.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 4096];
        let _ = s.read(&mut buf);
        s.write_all(b"HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n")
            .unwrap();
        served += 1;
        served
    });
    (port, h)
}

#[test]
fn http_outbound_only_to_allowed_hosts() {
    let rt = runtime();
    let (port, server) = tiny_server();
    let target = format!("127.0.0.1:{port}");
    let outbound = |f: &Function| {
        let req = hyper::Request::builder()
            .uri("http://localhost/outbound")
            .header("x-target", &target)
            .body(full_body(Bytes::new()))
            .unwrap();
        let (out, body) = call(f, req, Invocation::default());
        assert_eq!(out.response.as_ref().unwrap().status(), 200);
        String::from_utf8(body.to_vec()).unwrap()
    };
    // Default: nothing allowed.
    let denied = http_guest(&rt, &LoadOptions::default());
    assert_eq!(outbound(&denied), "error=HTTP-request-denied");
    let other = http_guest(
        &rt,
        &LoadOptions {
            allowed_outbound_hosts: vec!["http://127.0.0.1:1".into(), "example.com".into()],
            ..Default::default()
        },
    );
    assert_eq!(outbound(&other), "error=HTTP-request-denied");
    let allowed = http_guest(
        &rt,
        &LoadOptions {
            allowed_outbound_hosts: vec![format!("http://{target}")],
            ..Default::default()
        },
    );
    assert_eq!(outbound(&allowed), "status=204");
    assert_eq!(server.join().unwrap(), 1);

    // A bad entry is refused at load.
    let e = rt
        .load_file(
            component("http_hello", build::Kind::Http),
            &LoadOptions {
                allowed_outbound_hosts: vec!["http://".into()],
                ..Default::default()
            },
        )
        .unwrap_err();
    assert!(e.to_string().contains("allowed outbound host"), "{e}");
}

#[test]
fn malformed_components_are_clear_errors() {
    let rt = runtime();
    let good = std::fs::read(component("http_hello", build::Kind::Http)).unwrap();
    // Truncated: one line naming the problem, no panic.
    let e = rt
        .load_bytes(&good[..good.len() / 2], &LoadOptions::default())
        .unwrap_err();
    assert!(matches!(e, Error::Compile(_)), "{e}");
    assert!(!e.to_string().contains('\n'), "{e}");
    // A valid component that exports neither world.
    let e = rt
        .load_bytes(b"(component)", &LoadOptions::default())
        .unwrap_err();
    assert!(e.to_string().contains("exports neither"), "{e}");
    // An import the host does not provide.
    let wat = r#"(component (import "acme:thing/api" (instance (export "f" (func)))))"#;
    let e = rt
        .load_bytes(wat.as_bytes(), &LoadOptions::default())
        .unwrap_err();
    assert!(matches!(e, Error::Link(_)), "{e}");
    assert!(e.to_string().contains("acme:thing/api"), "{e}");
    // An unknown binary layer/version.
    let e = rt
        .load_bytes(b"\0asm\x0d\0\x02\0", &LoadOptions::default())
        .unwrap_err();
    assert!(matches!(e, Error::NotWasm(_)), "{e}");
    // Snapshots of components are refused, saying so.
    let e = rt
        .load_bytes(
            &good,
            &LoadOptions {
                snapshot: Some(Default::default()),
                ..Default::default()
            },
        )
        .unwrap_err();
    assert!(e.to_string().contains("components"), "{e}");
    // A core module is not a wasi:http handler.
    let m = load_wat(&rt, HELLO_WAT);
    let (out, _) = call(&m, request("GET", "/", b""), Invocation::default());
    assert!(matches!(out.response, Err(Error::Entry(_))));
}

#[test]
fn components_are_cached_and_precompiled() {
    let dir = tempdir();
    let rt = runtime_with(|c| {
        c.cache.enabled = true;
        c.cache.dir = Some(dir.path().join("cache"));
    });
    let path = component("http_hello", build::Kind::Http);
    let first = http_guest(&rt, &LoadOptions::default());
    let entry = first.artifact_path().expect("cached").to_path_buf();
    // A hit maps the entry, and the function works.
    let again = rt.load_file(&path, &LoadOptions::default()).unwrap();
    assert_eq!(again.artifact_path(), Some(entry.as_path()));
    let (out, body) = call(&again, request("GET", "/hello", b""), Invocation::default());
    assert_eq!(out.response.unwrap().status(), 200);
    assert_eq!(&body[..], b"hello from wasi:http\n");

    // `wasmlet compile` output: a component artifact loads as one.
    let artifact = rt.precompile(&std::fs::read(&path).unwrap()).unwrap();
    let plain = runtime();
    let f = plain
        .load_bytes(
            &artifact,
            &LoadOptions {
                allow_precompiled: true,
                ..Default::default()
            },
        )
        .unwrap();
    assert!(f.is_http_component());
    let file = dir.path().join("hello.cwasm");
    std::fs::write(&file, &artifact).unwrap();
    let f = plain
        .load_open_file(
            std::fs::File::open(&file).unwrap(),
            "hello.cwasm",
            &LoadOptions {
                allow_precompiled: true,
                ..Default::default()
            },
        )
        .unwrap();
    let (out, _) = call(&f, request("GET", "/hello", b""), Invocation::default());
    assert_eq!(out.response.unwrap().status(), 200);
}

#[test]
fn many_requests_in_flight_share_the_pool() {
    let rt = runtime_with(|c| c.pool.instances = 4);
    let f = http_guest(&rt, &LoadOptions::default());
    let trt = tokio_rt();
    trt.block_on(async {
        let mut tasks = Vec::new();
        for _ in 0..32 {
            let f = f.clone();
            tasks.push(tokio::spawn(async move {
                let out =
                    handle_http(&f, request("GET", "/hello", b""), Invocation::default()).await;
                let body = out.response.unwrap().into_body().collect().await.unwrap();
                body.to_bytes()
            }));
        }
        for t in tasks {
            assert_eq!(&t.await.unwrap()[..], b"hello from wasi:http\n");
        }
    });
}

#[test]
fn a_gated_command_component_waits_for_its_gate_too() {
    let rt = runtime();
    let f = rt
        .load_file(
            component("hello", build::Kind::Command),
            &LoadOptions::default(),
        )
        .unwrap();
    let tokio = tokio_rt();
    let inv = Invocation {
        args: vec!["hello".into()],
        ..Default::default()
    };
    let (gate, task) = spawn_gated(&tokio, &f, inv);
    std::thread::sleep(Duration::from_millis(50));
    assert!(!task.is_finished(), "it ran before its gate opened");
    gate.open();
    let o = tokio.block_on(task).unwrap().unwrap();
    assert!(o.success(), "{:?}", o.status);
    assert!(stdout_of(&o).contains("hello"), "{}", stdout_of(&o));
}

#[test]
fn an_http_request_with_a_start_gate_is_refused() {
    let rt = runtime();
    let f = http_guest(&rt, &LoadOptions::default());
    let (out, _) = call(
        &f,
        request("GET", "/", b""),
        Invocation {
            gate: Some(wasmlet_runtime::StartGate::new()),
            ..Default::default()
        },
    );
    let err = out.response.expect_err("a gated request ran");
    assert!(err.to_string().contains("start gate"), "{err}");
}
