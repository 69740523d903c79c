//! One `handle_http` request to the C wasi:http hello component
//! (`tests/guests/http_hello.c`, built by `tests/guests/components.rs`), in
//! process: a fresh instance from the pool, the request and response
//! through wasi:http, the body read to its end, and the usage record.
//! - `hello_sequential`: one request at a time on a current-thread runtime
//!   (the latency of the per-request path);
//! - `hello_x16`: 16 requests in flight on a 2-thread runtime, the figure
//!   per request (throughput of the path without an HTTP server around it).
//!
//! - `wasmtime_floor`: the same request through wasmtime and
//!   wasmtime-wasi-http alone, on the same engine (pooling allocator,
//!   copy-on-write images): a fresh store, the pre-linked `ProxyPre`
//!   instantiated, `handle` called, the body read, the store dropped; no
//!   limits, no usage record, no guest output capture. What wasmtime itself
//!   costs per request, below which wasmlet's path cannot go without
//!   changing wasmtime (BENCHMARKS.md, "tenth session").
//!
//! The end-to-end comparison with `wasmtime serve` over loopback is the
//! serve benchmark's.

use criterion::{Criterion, criterion_group, criterion_main};
use http_body_util::BodyExt;
use std::path::PathBuf;
use wasmlet_runtime::http::{HttpBody, full_body, handle_http};
use wasmlet_runtime::{Function, Invocation, LoadOptions, Runtime, RuntimeConfig};
use wasmtime_wasi_http::WasiHttpView;
use wasmtime_wasi_http::p2::bindings::http::types::{ErrorCode, Scheme};

// The floor's store data and pre-linking, shared with `floor_serve`.
#[path = "../serve/examples/floor/ctx.rs"]
mod floor_ctx;
use floor_ctx::{Ctx, Floor, prelinked};

// Only the wasi:http guest is benchmarked here.
#[allow(dead_code)]
#[path = "../tests/guests/components.rs"]
mod build;

fn request() -> hyper::Request<HttpBody> {
    hyper::Request::builder()
        .uri("http://localhost/hello")
        .body(full_body(bytes::Bytes::new()))
        .unwrap()
}

async fn one(f: &Function) {
    let out = handle_http(f, request(), Invocation::default()).await;
    let body = out.response.unwrap().into_body().collect().await.unwrap();
    assert_eq!(body.to_bytes().len(), 21);
}

fn bench(c: &mut Criterion) {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("wasmlet-bench-components");
    let path = build::build_component("http_hello", build::Kind::Http, &dir);
    let mut config = RuntimeConfig::default();
    config.cache.enabled = false;
    config.pool.instances = 64;
    let rt = Runtime::new(config).unwrap();
    let f = rt.load_file(&path, &LoadOptions::default()).unwrap();

    let mut g = c.benchmark_group("http_component");
    let current = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    g.bench_function("hello_sequential", |b| {
        b.to_async(&current).iter(|| one(&f))
    });
    let multi = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    g.throughput(criterion::Throughput::Elements(16));
    g.bench_function("hello_x16", |b| {
        b.to_async(&multi).iter(|| async {
            let mut tasks = Vec::with_capacity(16);
            for _ in 0..16 {
                let f = f.clone();
                tasks.push(tokio::spawn(async move { one(&f).await }));
            }
            for t in tasks {
                t.await.unwrap();
            }
        })
    });
    let floor = prelinked(f.component().expect("a component")).unwrap();
    g.bench_function("wasmtime_floor", |b| {
        b.to_async(&current).iter(|| floor_one(&floor))
    });
    g.finish();
}

/// One request through wasmtime and wasmtime-wasi-http alone.
async fn floor_one(floor: &Floor) {
    let mut store = wasmtime::Store::new(&floor.engine, Ctx::new());
    // The engine interrupts on epochs; this loop never advances them.
    store.set_epoch_deadline(u64::MAX / 2);
    let req = request().map(|b| b.map_err(|_| ErrorCode::InternalError(None)));
    let req = store
        .data_mut()
        .http()
        .new_incoming_request(Scheme::Http, req)
        .unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let out = store.data_mut().http().new_response_outparam(tx).unwrap();
    let proxy = floor.pre.instantiate_async(&mut store).await.unwrap();
    proxy
        .wasi_http_incoming_handler()
        .call_handle(&mut store, req, out)
        .await
        .unwrap();
    let resp = rx.await.unwrap().unwrap();
    let body = resp.into_body().collect().await.unwrap();
    assert_eq!(body.to_bytes().len(), 21);
    drop(store);
}

criterion_group!(benches, bench);
criterion_main!(benches);
