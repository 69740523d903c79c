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

/// A streamed response body as hyper holds it. Dropped before its end (its
/// client left, or the drain deadline closed its connection), it calls
/// `note` there and then, on hyper's thread; the usage line, written a
/// moment later once the guest has stopped, reads what was noted. (Decided
/// only when the line is written, a client that left just before a SIGTERM
/// would read as cut by the drain deadline.)
pub(crate) struct NoteCut<B: hyper::body::Body> {
    body: B,
    note: Option<Box<dyn FnOnce() + Send>>,
}

impl<B: hyper::body::Body> NoteCut<B> {
    pub(crate) fn new(body: B, note: impl FnOnce() + Send + 'static) -> Self {
        NoteCut {
            body,
            note: Some(Box::new(note)),
        }
    }
}

impl<B: hyper::body::Body + Unpin> hyper::body::Body for NoteCut<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let frame = std::task::ready!(Pin::new(&mut self.body).poll_frame(cx));
        if frame.is_none() {
            // Its end (an error frame is not: the body was cut).
            self.note = None;
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

impl<B: hyper::body::Body> Drop for NoteCut<B> {
    fn drop(&mut self) {
        if !self.body.is_end_stream()
            && let Some(note) = self.note.take()
        {
            note();
        }
    }
}

/// A buffered response body handed to hyper a chunk at a time, keeping
/// `held` (its request's place in `max_concurrency`) until hyper drops it:
/// sent, or its connection ended (its client left, or read nothing within
/// `send_timeout`). hyper takes a whole one-frame body into its write
/// buffer at once and drops the body, so the body itself could not tell;
/// in chunks, hyper asks for the next as its buffer drains. So a function's
/// large buffered responses held for slow readers are at most its
/// `max_concurrency`.
pub(crate) struct Held<T> {
    rest: Bytes,
    _held: T,
}

/// The size of [`Held`]'s chunks.
const HELD_CHUNK: usize = 64 * 1024;

impl<T> Held<T> {
    pub(crate) fn new(body: Bytes, held: T) -> Self {
        Held {
            rest: body,
            _held: held,
        }
    }
}

impl<T: Unpin> hyper::body::Body for Held<T> {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        if self.rest.is_empty() {
            return Poll::Ready(None);
        }
        let n = self.rest.len().min(HELD_CHUNK);
        Poll::Ready(Some(Ok(Frame::data(self.rest.split_to(n)))))
    }

    fn is_end_stream(&self) -> bool {
        self.rest.is_empty()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        hyper::body::SizeHint::with_exact(self.rest.len() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::NoteCut;
    use bytes::Bytes;
    use http_body_util::BodyExt;
    use hyper::body::{Body, Frame};
    use std::collections::VecDeque;
    use std::convert::Infallible;
    use std::pin::Pin;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::{Context, Poll};

    /// Two chunks; `knows_end`: says it is at its end once they are read
    /// (else only its `None` frame says so, as a stream's does).
    struct Chunks {
        left: VecDeque<Bytes>,
        knows_end: bool,
    }

    impl Body for Chunks {
        type Data = Bytes;
        type Error = Infallible;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            Poll::Ready(self.left.pop_front().map(|b| Ok(Frame::data(b))))
        }
        fn is_end_stream(&self) -> bool {
            self.knows_end && self.left.is_empty()
        }
    }

    fn noted(knows_end: bool) -> (NoteCut<Chunks>, Arc<AtomicUsize>) {
        let notes = Arc::new(AtomicUsize::new(0));
        let n = notes.clone();
        let chunks = Chunks {
            left: VecDeque::from([Bytes::from_static(b"first"), Bytes::from_static(b"rest")]),
            knows_end,
        };
        let body = NoteCut::new(chunks, move || {
            n.fetch_add(1, Ordering::SeqCst);
        });
        (body, notes)
    }

    #[tokio::test]
    async fn a_body_dropped_before_its_end_notes_it_once() {
        for knows_end in [false, true] {
            let (mut body, notes) = noted(knows_end);
            let first = body.frame().await.unwrap().unwrap();
            assert_eq!(first.into_data().unwrap(), "first");
            assert_eq!(notes.load(Ordering::SeqCst), 0);
            drop(body);
            assert_eq!(notes.load(Ordering::SeqCst), 1);
        }
    }

    #[tokio::test]
    async fn a_body_read_to_its_end_notes_nothing() {
        // Polled to its `None`.
        let (body, notes) = noted(false);
        assert_eq!(body.collect().await.unwrap().to_bytes(), "firstrest");
        assert_eq!(notes.load(Ordering::SeqCst), 0);
        // At its end by `is_end_stream` after its last chunk (hyper then
        // stops polling): not cut either.
        let (mut body, notes) = noted(true);
        body.frame().await.unwrap().unwrap();
        body.frame().await.unwrap().unwrap();
        assert!(body.is_end_stream());
        drop(body);
        assert_eq!(notes.load(Ordering::SeqCst), 0);
    }
}
