//! A floor for the serve benchmark: the least an HTTP server built on
//! wasmtime 48 can do per request with a fresh instance of a wasi:http
//! component, so `wasmlet serve`'s figures can be told apart from
//! wasmtime's own cost.
//!
//! Each request gets a fresh store and instance of the pre-linked
//! `ProxyPre` (pooling allocator, copy-on-write images, as `wasmlet serve`
//! uses), `handle` is called and the response streamed back. Nothing else:
//! no limits, no epoch interruption, no usage record, no stderr capture, no
//! queue, no metrics, no request id, errors become a bare 500. One
//! current-thread tokio runtime per core, each with its own `SO_REUSEPORT`
//! listener, so connections never move between threads.
//!
//! `WASMLET_FLOOR=engine` runs the same bare path on the engine
//! `wasmlet_runtime` builds (its pool layout, epoch interruption);
//! `WASMLET_FLOOR=runtime` serves through `wasmlet_runtime::http::handle_http`
//! instead (limits, usage, stderr capture), still without `wasmlet serve`'s
//! layer (routing, admission, metrics, request ids, the usage log).
//!
//! `FLOOR_N` sets the pool's instance count (default 256): a few (such as
//! 4) reserve little enough address space to run under valgrind.
//!
//! `cargo run --release -p wasmlet-serve --example floor_serve -- COMPONENT.wasm 127.0.0.1:3105`

use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::sync::Arc;
use wasmtime::component::Component;
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store};
use wasmtime_wasi_http::WasiHttpView;
use wasmtime_wasi_http::p2::bindings::http::types::{ErrorCode, Scheme};

#[path = "floor/ctx.rs"]
mod floor_ctx;
use floor_ctx::{Ctx, Floor, prelinked};

type Body = UnsyncBoxBody<bytes::Bytes, wasmlet_runtime::http::BodyError>;

enum Mode {
    Floor(Arc<Floor>),
    Runtime(wasmlet_runtime::Function),
}

impl Mode {
    async fn handle(
        &self,
        req: Request<hyper::body::Incoming>,
    ) -> wasmtime::Result<Response<Body>> {
        match self {
            Mode::Floor(f) => handle(f.clone(), req).await,
            Mode::Runtime(f) => handle_runtime(f, req).await,
        }
    }
}

fn runtime(path: &str) -> Result<wasmlet_runtime::Function, wasmlet_runtime::Error> {
    let mut config = wasmlet_runtime::RuntimeConfig::default();
    config.pool.instances = 256;
    let rt = wasmlet_runtime::Runtime::new(config)?;
    rt.load_file(
        std::path::Path::new(path),
        &wasmlet_runtime::LoadOptions::default(),
    )
}

/// The floor on wasmlet's engine (`WASMLET_FLOOR=engine`): its pool
/// layout and epoch interruption, the bare path above.
fn floor_on_runtime_engine(path: &str) -> Result<Floor, Box<dyn std::error::Error>> {
    let f = runtime(path)?;
    let component = f.component().ok_or("not a component")?;
    let floor = prelinked(component).map_err(|e| format!("{e:#}"))?;
    // Keep the runtime (its epoch ticker, its engine) alive.
    std::mem::forget(f);
    Ok(floor)
}

fn floor(path: &str) -> wasmtime::Result<Floor> {
    let mut pool = PoolingAllocationConfig::default();
    let n: u32 = std::env::var("FLOOR_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    pool.total_component_instances(n)
        .total_core_instances(n * 8)
        .total_memories(n * 2)
        .total_tables(n * 2)
        .total_stacks(n)
        .max_memory_size(64 << 20)
        // Reset freed slots as `wasmlet serve` does: only the pages the
        // instance dirtied (PAGEMAP_SCAN), with `memset`, kept resident.
        .linear_memory_keep_resident(1 << 20)
        .table_keep_resident(1 << 20)
        .pagemap_scan(wasmtime::Enabled::Auto);
    let mut config = Config::new();
    config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    let engine = Engine::new(&config)?;
    prelinked(&Component::from_file(&engine, path)?)
}

async fn handle(
    floor: Arc<Floor>,
    req: Request<hyper::body::Incoming>,
) -> wasmtime::Result<Response<Body>> {
    let mut store = Store::new(&floor.engine, Ctx::new());
    store.set_epoch_deadline(u64::MAX / 2);
    let req = req.map(|b| b.map_err(|_| ErrorCode::InternalError(None)).boxed());
    let req = store
        .data_mut()
        .http()
        .new_incoming_request(Scheme::Http, req)?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    let out = store.data_mut().http().new_response_outparam(tx)?;
    // The guest runs as its own task (as `wasmtime serve` runs it), so a
    // streamed body flows while it runs; the store goes with the task.
    let task = tokio::task::spawn_local(async move {
        let proxy = floor.pre.instantiate_async(&mut store).await?;
        proxy
            .wasi_http_incoming_handler()
            .call_handle(&mut store, req, out)
            .await
    });
    match rx.await {
        Ok(Ok(resp)) => Ok(resp.map(|b| {
            b.map_err(|e| wasmlet_runtime::http::BodyError::from(format!("{e:#}")))
                .boxed_unsync()
        })),
        _ => {
            let e = task.await?;
            Err(e
                .err()
                .unwrap_or_else(|| wasmtime::format_err!("no response")))
        }
    }
}

/// The same request through `wasmlet_runtime`'s wasi:http path instead
/// (`WASMLET_FLOOR=runtime`): limits, usage, stderr capture, no server
/// layer around it.
async fn handle_runtime(
    f: &wasmlet_runtime::Function,
    req: Request<hyper::body::Incoming>,
) -> wasmtime::Result<Response<Body>> {
    let req = req.map(|b| {
        b.map_err(|e| Box::new(e) as wasmlet_runtime::http::BodyError)
            .boxed_unsync()
    });
    let inv = wasmlet_runtime::Invocation {
        stderr: wasmlet_runtime::Output::Capture,
        ..Default::default()
    };
    let out = wasmlet_runtime::http::handle_http(f, req, inv).await;
    let resp = out.response.map_err(|e| wasmtime::format_err!("{e}"))?;
    Ok(resp)
}

fn serve_thread(floor: Arc<Mode>, addr: SocketAddr) -> std::io::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.set_reuseport(true)?;
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        let listener = socket.listen(1024)?;
        loop {
            let (stream, _) = listener.accept().await?;
            let _ = stream.set_nodelay(true);
            let floor = floor.clone();
            tokio::task::spawn_local(async move {
                let service = service_fn(move |req| {
                    let floor = floor.clone();
                    async move {
                        Ok::<_, std::convert::Infallible>(match floor.handle(req).await {
                            Ok(resp) => resp,
                            Err(e) => {
                                eprintln!("request failed: {e:#}");
                                let mut resp = Response::new(
                                    http_body_util::Empty::new()
                                        .map_err(|never| match never {})
                                        .boxed_unsync(),
                                );
                                *resp.status_mut() = hyper::StatusCode::INTERNAL_SERVER_ERROR;
                                resp
                            }
                        })
                    }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    })
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let path = args
        .next()
        .ok_or("usage: floor_serve COMPONENT.wasm [ADDR]")?;
    let addr: SocketAddr = args
        .next()
        .unwrap_or_else(|| "127.0.0.1:3105".into())
        .parse()?;
    let floor = Arc::new(match std::env::var("WASMLET_FLOOR").as_deref() {
        Ok("runtime") => Mode::Runtime(runtime(&path)?),
        Ok("engine") => Mode::Floor(Arc::new(floor_on_runtime_engine(&path)?)),
        _ => Mode::Floor(Arc::new(floor(&path).map_err(|e| format!("{e:#}"))?)),
    });
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let floor = floor.clone();
            std::thread::spawn(move || serve_thread(floor, addr))
        })
        .collect();
    eprintln!("listening on http://{addr} ({threads} threads)");
    for h in handles {
        h.join().map_err(|_| "a server thread panicked")??;
    }
    Ok(())
}
