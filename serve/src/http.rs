//! `kind = "http"`: components exporting `wasi:http/incoming-handler`.
//!
//! ```text
//!  request (hyper Incoming) ─▶ RequestBody: at most max_body_size bytes,
//!     all of it within body_timeout (else the guest's read fails and the
//!     client gets 413 / 408)
//!  ─▶ wasmlet_runtime::http::handle_http: fresh instance of the pre-linked
//!     ProxyPre, request and response through wasi:http
//!  ─▶ response head mapped (trap 500, timeout 504, other limit 500, no
//!     response 502), its body streamed back to the client
//! ```
//!
//! The component is loaded (compiled, cached, linked once into a `ProxyPre`
//! with its outbound allow-list) by the runtime; this module only adapts
//! the server's request and the runtime's outcome to each other.

use bytes::Bytes;
use hyper::body::{Frame, Incoming};
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use wasmlet_runtime::http::{BodyError, HttpOutcome, handle_http};
use wasmlet_runtime::{Error, Function, Invocation, LoadOptions, Runtime, Status};

/// A loaded wasi:http component.
pub(crate) struct HttpHandler {
    function: Function,
}

/// Loads a wasi:http component with `opts` (its limits and
/// `allowed_outbound_hosts`).
pub(crate) fn load(
    runtime: &Runtime,
    module: &Path,
    opts: &LoadOptions,
) -> Result<HttpHandler, String> {
    if opts.snapshot.is_some() {
        return Err(
            "snapshot = true is for core modules: components (kind = \"http\") are not pre-initialized yet"
                .into(),
        );
    }
    let function = runtime.load_file(module, opts).map_err(|e| e.to_string())?;
    if !function.is_http_component() {
        return Err(
            "kind = \"http\" needs a component exporting wasi:http/incoming-handler; this one does not (a wasi:cli command is not served)"
                .into(),
        );
    }
    Ok(HttpHandler { function })
}

impl HttpHandler {
    /// Handles one request in a fresh instance.
    pub(crate) async fn handle(
        &self,
        req: http::Request<RequestBody>,
        inv: Invocation,
    ) -> HttpOutcome {
        std::pin::pin!(handle_http(
            &self.function,
            req.map(RequestBody::boxed),
            inv
        ))
        .await
    }
}

/// Why a request body was cut short.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BodyFault {
    /// More than `server.max_body_size` bytes.
    TooLarge,
    /// Not all received within `server.body_timeout`.
    Timeout,
}

/// Where a [`RequestBody`] records a fault for the server to see after the
/// guest answered.
#[derive(Debug, Default)]
pub(crate) struct FaultCell(AtomicU8);

impl FaultCell {
    fn set(&self, f: BodyFault) {
        let v = match f {
            BodyFault::TooLarge => 1,
            BodyFault::Timeout => 2,
        };
        let _ = self
            .0
            .compare_exchange(0, v, Ordering::AcqRel, Ordering::Acquire);
    }

    /// The fault, if the body had one.
    pub(crate) fn get(&self) -> Option<BodyFault> {
        match self.0.load(Ordering::Acquire) {
            1 => Some(BodyFault::TooLarge),
            2 => Some(BodyFault::Timeout),
            _ => None,
        }
    }
}

/// The request body as the guest reads it: streamed from the client, at
/// most `remaining` bytes, all of it before the deadline; past either the
/// guest's read fails and the fault is recorded.
pub(crate) struct RequestBody {
    inner: Incoming,
    remaining: u64,
    /// Armed on the first poll of a body that is not empty (a GET costs no
    /// timer).
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    timeout: Duration,
    fault: Arc<FaultCell>,
}

impl RequestBody {
    pub(crate) fn new(inner: Incoming, max: u64, timeout: Duration, fault: Arc<FaultCell>) -> Self {
        RequestBody {
            inner,
            remaining: max,
            deadline: None,
            timeout,
            fault,
        }
    }

    fn boxed(self) -> wasmlet_runtime::http::HttpBody {
        http_body_util::BodyExt::boxed_unsync(self)
    }

    fn fail(&mut self, f: BodyFault) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        self.fault.set(f);
        self.remaining = 0;
        let msg = match f {
            BodyFault::TooLarge => "request body is larger than the server's limit",
            BodyFault::Timeout => "request body not received in time",
        };
        Poll::Ready(Some(Err(msg.into())))
    }
}

impl hyper::body::Body for RequestBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        if self.fault.get().is_some() || self.inner.is_end_stream() {
            return Poll::Ready(None);
        }
        let timeout = self.timeout;
        let deadline = self
            .deadline
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        if deadline.as_mut().poll(cx).is_ready() {
            return self.fail(BodyFault::Timeout);
        }
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                let len = frame.data_ref().map_or(0, |d| d.len() as u64);
                if len > self.remaining {
                    return self.fail(BodyFault::TooLarge);
                }
                self.remaining -= len;
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(Box::new(e)))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// How a request without a response ended, as the WAGI path sees a guest:
/// `Ok` a status for the shared mapping (trap, limits), `Err` a message for
/// a 502 (the guest gave no response) or a 500 (set-up).
pub(crate) fn error_status(e: Error) -> Result<Status, (bool, String)> {
    match e {
        Error::Trap(m) => Ok(Status::Trapped(m)),
        Error::LimitExceeded(l) => Ok(Status::LimitExceeded(l)),
        Error::Sandbox(m) => Ok(Status::SandboxFailed(m)),
        Error::Http(m) => Err((true, m)),
        Error::Exit(code) => Err((
            true,
            format!("the guest exited with code {code} without a response"),
        )),
        e => Err((false, format!("invocation failed: {e}"))),
    }
}
