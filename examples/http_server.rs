//! A plain hyper HTTP server embedding wasmlet (not `wasmlet serve`): each
//! request is one invocation, in a fresh instance, under per-request
//! limits; the response is the guest's stdout, with the invocation's usage
//! record in the `x-wasmlet-usage` header (what a platform would bill).
//!
//! Routes: `POST /echo` runs `examples/guests/echo.wat` with the request
//! body as stdin; `GET /spin` runs a guest that never stops, which the
//! timeout ends (504).
//!
//! `cargo run --release --example http_server -- 127.0.0.1:8080` serves
//! until killed; without an address it starts on a free port, sends a few
//! requests to itself, prints the answers and exits (what `cargo test`
//! runs).

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use wasmlet_runtime::{
    Function, Input, Invocation, LimitExceeded, Limits, LoadOptions, Runtime, RuntimeConfig, Status,
};

const ECHO: &str = include_str!("guests/echo.wat");
const SPIN: &str = r#"(module (memory (export "memory") 1)
                              (func (export "_start") (loop br 0)))"#;

/// Largest request body passed to a guest.
const MAX_BODY: usize = 64 << 10;

struct App {
    echo: Function,
    spin: Function,
    /// Every request's limits.
    limits: Limits,
}

impl App {
    fn new() -> Result<App, wasmlet_runtime::Error> {
        let rt = Runtime::new(RuntimeConfig::default())?;
        let opts = LoadOptions::default();
        Ok(App {
            echo: rt.load_bytes(ECHO.as_bytes(), &opts)?,
            spin: rt.load_bytes(SPIN.as_bytes(), &opts)?,
            limits: Limits {
                timeout: Some(Duration::from_millis(200)),
                max_memory: 16 << 20,
                ..Limits::default()
            },
        })
    }

    async fn handle(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let func = match (req.method().as_str(), req.uri().path()) {
            ("POST", "/echo") => &self.echo,
            ("GET", "/spin") => &self.spin,
            _ => return reply(StatusCode::NOT_FOUND, "no such route\n".into(), None),
        };
        let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) => return reply(StatusCode::PAYLOAD_TOO_LARGE, format!("{e}\n").into(), None),
        };
        let inv = Invocation {
            stdin: Input::Bytes(body),
            limits: Some(self.limits.clone()),
            ..Default::default()
        };
        // Waits without a thread while the guest waits; when every pool
        // slot is busy, waits for one.
        let out = match func.invoke_async(inv).await {
            Ok(out) => out,
            Err(e) => {
                return reply(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("{e}\n").into(),
                    None,
                );
            }
        };
        let usage = out.usage_json().to_string();
        let status = match &out.status {
            Status::Exited(0) => StatusCode::OK,
            Status::LimitExceeded(LimitExceeded::Timeout(_)) => StatusCode::GATEWAY_TIMEOUT,
            Status::LimitExceeded(_) => StatusCode::TOO_MANY_REQUESTS,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        reply(status, out.stdout.unwrap_or_default(), Some(usage))
    }
}

fn reply(status: StatusCode, body: Bytes, usage: Option<String>) -> Response<Full<Bytes>> {
    let mut resp = Response::builder().status(status);
    if let Some(usage) = usage {
        resp = resp.header("x-wasmlet-usage", usage);
    }
    resp.body(Full::new(body)).expect("a valid response")
}

/// Serves connections on `listener` until `stop` resolves.
async fn serve(listener: TcpListener, app: Arc<App>, stop: impl Future<Output = ()>) {
    let mut stop = std::pin::pin!(stop);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    eprintln!("accept: {e}");
                    continue;
                }
            },
            () = &mut stop => return,
        };
        let app = app.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let app = app.clone();
                async move { Ok::<_, std::convert::Infallible>(app.handle(req).await) }
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                eprintln!("connection: {e}");
            }
        });
    }
}

/// One request to `addr`: the status, the usage header and the body.
async fn request(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    body: &'static str,
) -> Result<(StatusCode, Option<serde_json::Value>, Bytes), Box<dyn std::error::Error>> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string())
        .body(Full::new(Bytes::from_static(body.as_bytes())))?;
    let resp = sender.send_request(req).await?;
    let status = resp.status();
    let usage = match resp.headers().get("x-wasmlet-usage") {
        Some(v) => Some(serde_json::from_slice(v.as_bytes())?),
        None => None,
    };
    Ok((status, usage, resp.into_body().collect().await?.to_bytes()))
}

/// Starts the server on a free port, sends it requests, prints and returns
/// what came back.
#[allow(clippy::type_complexity)]
fn demo() -> Result<Vec<(StatusCode, Option<serde_json::Value>, Bytes)>, Box<dyn std::error::Error>>
{
    let app = Arc::new(App::new()?);
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    tokio.block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, app, async {
            let _ = stop_rx.await;
        }));
        let mut answers = Vec::new();
        for (method, path, body) in [
            ("POST", "/echo", "wasmlet"),
            ("GET", "/spin", ""),
            ("GET", "/nowhere", ""),
        ] {
            let answer = request(addr, method, path, body).await?;
            println!(
                "{method} {path}: {} {:?}\n  usage: {}",
                answer.0,
                String::from_utf8_lossy(&answer.2),
                answer.1.as_ref().map_or("-".into(), |u| u.to_string())
            );
            answers.push(answer);
        }
        let _ = stop_tx.send(());
        server.await?;
        Ok(answers)
    })
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let Some(addr) = std::env::args().nth(1) else {
        demo()?;
        return Ok(());
    };
    let app = Arc::new(App::new()?);
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    tokio.block_on(async {
        let listener = TcpListener::bind(&addr).await?;
        println!("serving on http://{}", listener.local_addr()?);
        serve(listener, app, std::future::pending()).await;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serves_with_limits_and_usage_per_request() {
        let answers = demo().unwrap();
        let (status, usage, body) = &answers[0];
        assert_eq!(*status, StatusCode::OK);
        assert_eq!(&body[..], b"hello, wasmlet");
        let usage = usage.as_ref().unwrap();
        assert_eq!(usage["status"], "exited");
        assert!(usage["wall_time_ns"].as_u64().unwrap() > 0);

        let (status, usage, _) = &answers[1];
        assert_eq!(*status, StatusCode::GATEWAY_TIMEOUT);
        let usage = usage.as_ref().unwrap();
        assert_eq!(usage["status"], "limit_exceeded");
        assert!(usage["wall_time_ns"].as_u64().unwrap() >= 200_000_000);

        assert_eq!(answers[2].0, StatusCode::NOT_FOUND);
    }
}
