//! [`handle_http`]: one request to a wasi:http component, in a fresh
//! instance, under the invocation's limits, with its usage record.
//!
//! ```text
//!  handle_http                              guest future (polled here)
//!  pool slot permit ─────────────────────▶  store, request + outparam resources,
//!                                           instantiate (pre-linked), call `handle`
//!  wait for the response head  ◀── outparam.set ──
//!  read the body while the guest runs  ◀── body frames ──
//!  guest done: exact usage, body = what was read
//!  or HTTP_BODY_BUFFER read first, or HTTP_BODY_WAIT passed: the guest
//!     moves to a task of its own, the rest streams, usage so far,
//!     `final_outcome` when it ends
//! ```
//!
//! The guest's future is polled by the caller's task, beside the response
//! head and body it produces: no task spawn and no cross-thread wake-up
//! for the usual handler, which writes a small body and returns; its whole
//! body is read while the guest finishes, so the usage record in
//! [`HttpOutcome`] is final. A guest that writes more than
//! [`HTTP_BODY_BUFFER`] bytes, or is still running [`HTTP_BODY_WAIT`] after
//! its head (a slow stream, server-sent events), is streamed: the guest's
//! future is moved to a
//! task of its own (a body is a stream the guest may still be writing),
//! its usage so far is in `usage`, and the final record arrives on
//! `final_outcome` when it ends. Either way the time limits hold: past the
//! timeout the guest is stopped and its body ends with an error. A
//! streaming guest whose body is dropped unfinished (the client went away)
//! is stopped then too: its `final_outcome` sender is dropped unsent.

use crate::component::{ComponentCode, ComponentCtx, World};
use crate::error::Error;
use crate::function::{Code, Finished, Function, Start};
use crate::invocation::{Invocation, Outcome, Status};
use crate::usage::{Metered, Usage};
use crate::wasi;
use bytes::Bytes;
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::Frame;
use std::collections::VecDeque;
use std::pin::Pin;
use std::pin::pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, ready};
use std::time::Instant;
use tokio::sync::oneshot;
use wasmtime_wasi_http::WasiHttpView;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;

/// The error type of an [`HttpBody`].
pub type BodyError = Box<dyn std::error::Error + Send + Sync>;

/// A request or response body: any `http_body::Body` of `Bytes`, boxed
/// (`hyper::body::Incoming` becomes one with
/// `body.map_err(Into::into).boxed_unsync()`). Not `Sync`: the guest's body
/// is a stream read by one task, as hyper needs.
pub type HttpBody = UnsyncBoxBody<Bytes, BodyError>;

/// Bytes of a response body read while the guest finishes, before the
/// response is returned with the rest streaming.
pub const HTTP_BODY_BUFFER: usize = 256 << 10;
/// How long after the response head the body is held back while the guest
/// finishes; past it, what was written goes out and the rest streams.
pub const HTTP_BODY_WAIT: std::time::Duration = std::time::Duration::from_millis(5);

/// The result of one request.
#[derive(Debug)]
pub struct HttpOutcome {
    /// The guest's response, or why there is none: [`Error::Trap`] (the
    /// guest trapped), [`Error::LimitExceeded`] (stopped by a limit; a
    /// timeout is `LimitExceeded::Timeout`), [`Error::Http`] (the guest
    /// answered with a wasi:http error code, or returned without a
    /// response), [`Error::Exit`], or a set-up error.
    pub response: Result<hyper::Response<HttpBody>, Error>,
    /// What the invocation used: final unless `final_outcome` is set, in
    /// which case it is the use up to the response.
    pub usage: Usage,
    /// The guest's captured stderr (with [`crate::Output::Capture`]), when
    /// the guest has finished.
    pub stderr: Option<Bytes>,
    /// For a response still streaming when returned: the final outcome
    /// when the guest ends (how it ended, even after its head went out: a
    /// trap or a limit mid-body; its usage; its captured stderr). If the
    /// response body is dropped before its end (the client went away), the
    /// guest is stopped and this resolves to an error: nothing it did
    /// after that reaches anyone.
    pub final_outcome: Option<oneshot::Receiver<Outcome>>,
}

impl HttpOutcome {
    fn failed(error: Error) -> Self {
        HttpOutcome {
            response: Err(error),
            usage: Usage::default(),
            stderr: None,
            final_outcome: None,
        }
    }
}

type GuestResult = (Result<Finished<ComponentCtx>, Error>, std::time::Duration);

/// Calls `func`'s `wasi:http/incoming-handler` with `req` in a fresh
/// instance. `inv` gives the environment, directories, stdio and limits
/// (`args` and `entry` are not used); it must be called inside a tokio
/// runtime with time and IO enabled. When every pool slot is busy this
/// waits for one. Dropping the future before the response stops the guest.
pub async fn handle_http(
    func: &Function,
    req: hyper::Request<HttpBody>,
    inv: Invocation,
) -> HttpOutcome {
    let inner = func.inner();
    let Code::Component(ComponentCode {
        world: World::Http(_),
        ..
    }) = &inner.code
    else {
        return HttpOutcome::failed(Error::Entry(
            "not a wasi:http component (it does not export wasi:http/incoming-handler)".into(),
        ));
    };
    if inv.gate.is_some() {
        return HttpOutcome::failed(Error::Setup(
            "a request is handled when it comes: a start gate is for `Function::invoke` and `invoke_async`"
                .into(),
        ));
    }
    let limits = inv.limits.clone().unwrap_or_else(|| inner.limits.clone());
    if let Err(e) = func.check_limits(&limits) {
        return HttpOutcome::failed(e);
    }
    let permit = match inner.executor.slots.clone().acquire_owned().await {
        Ok(p) => p,
        Err(e) => {
            return HttpOutcome::failed(Error::Setup(format!("runtime is shutting down: {e}")));
        }
    };
    let mut inv = inv;
    let context = std::mem::take(&mut inv.context);
    let wall_start = Instant::now();
    let (head_tx, head_rx) = oneshot::channel();
    let func2 = func.clone();
    let mut task = {
        let start = func.start_clock(&limits, inv.probe.clone());
        let meter = start.meter.clone();
        let probe = start.probe;
        let metered_probe = probe.clone();
        let watch = start.meter.clone();
        let budget = start.budget;
        let limits = limits.clone();
        // Futures pinned where they are made (see `Function::metered`).
        Box::pin(async move {
            let _permit = permit;
            let run = pin!(async {
                let inner = func2.inner();
                let Code::Component(ComponentCode {
                    world: World::Http(pre),
                    outbound,
                    ..
                }) = &inner.code
                else {
                    unreachable!("checked before spawning");
                };
                let scheme = match req.uri().scheme_str() {
                    Some("https") => Scheme::Https,
                    _ => Scheme::Http,
                };
                let req = req.map(|b| b.map_err(to_wasi_error));
                let start = Start {
                    limits: &limits,
                    wall_start,
                    meter: watch,
                    budget,
                    probe,
                };
                let finished = pin!(
                    start.in_fresh_store(
                        &inner.executor,
                        wasi::build_p2(&inv, &limits)?
                            .map(|ctx| ComponentCtx::new(ctx, outbound.clone())),
                        context,
                        async |store| {
                            let req = store.data_mut().http().new_incoming_request(scheme, req)?;
                            let out = store.data_mut().http().new_response_outparam(head_tx)?;
                            let proxy = {
                                let instantiate = pin!(pre.instantiate_async(&mut *store));
                                instantiate.await?
                            };
                            let handle = pin!(proxy.wasi_http_incoming_handler().call_handle(
                                &mut *store,
                                req,
                                out
                            ));
                            handle.await?;
                            Ok(Status::Exited(0))
                        },
                    )
                );
                Ok(finished.await)
            });
            Metered::new(run, meter).with_probe(metered_probe).await
        })
    };
    let mut head_rx = head_rx;
    // The guest's store holds the outparam (the head's sender) until its
    // outcome is taken: wait for either, and look for a head left behind
    // by a guest that already ended.
    let mut ended = None;
    let head = tokio::select! {
        biased;
        h = &mut head_rx => h.ok(),
        r = &mut task => {
            match done(r, wall_start) {
                Ok(out) => ended = Some(out),
                Err(e) => return HttpOutcome::failed(e),
            }
            head_rx.try_recv().ok()
        }
    };
    let resp = match head {
        Some(Ok(resp)) => resp,
        head => {
            // No response: an error code, or the guest ended (or was
            // stopped) without one.
            let out = match ended {
                Some(out) => out,
                None => match done((&mut task).await, wall_start) {
                    Ok(out) => out,
                    Err(e) => return HttpOutcome::failed(e),
                },
            };
            let error = match (&out.status, head) {
                (Status::Exited(0) | Status::Returned(_), Some(Err(code))) => {
                    Error::Http(format!("the guest answered with an error: {code:?}"))
                }
                (Status::Exited(0) | Status::Returned(_), _) => {
                    Error::Http("the guest returned without setting a response".into())
                }
                (status, _) => status_error(status),
            };
            return HttpOutcome {
                response: Err(error),
                usage: out.usage,
                stderr: out.stderr,
                final_outcome: None,
            };
        }
    };
    if let Some(out) = ended {
        // The guest ended after answering: its body is all buffered.
        let (parts, mut body) = resp.into_parts();
        let mut frames = VecDeque::new();
        let mut body_done = false;
        if out.success() {
            body_done = take_ready(&mut body, &mut frames, &mut 0);
        } else {
            frames.push_back(Err(Box::new(status_error(&out.status)) as BodyError));
        }
        let rest = body.map_err(|e| Box::new(e) as BodyError).boxed_unsync();
        let body = Chain {
            frames,
            rest: (out.success() && !body_done).then_some(rest),
            cut: None,
            gone: None,
        };
        return HttpOutcome {
            response: Ok(hyper::Response::from_parts(parts, body.boxed_unsync())),
            usage: out.usage,
            stderr: out.stderr,
            final_outcome: None,
        };
    }
    // The head is here: read the body while the guest finishes, up to the
    // buffer's size.
    let (parts, mut body) = resp.into_parts();
    let mut frames = VecDeque::new();
    let mut buffered = 0usize;
    let mut body_done = false;
    let mut waited = pin!(tokio::time::sleep(HTTP_BODY_WAIT));
    let finished = loop {
        tokio::select! {
            biased;
            frame = body.frame(), if !body_done => match frame {
                Some(Ok(f)) => {
                    buffered += f.data_ref().map_or(0, Bytes::len);
                    frames.push_back(Ok(f));
                    if buffered >= HTTP_BODY_BUFFER {
                        break None;
                    }
                }
                Some(Err(e)) => {
                    frames.push_back(Err(Box::new(e) as BodyError));
                    body_done = true;
                }
                None => body_done = true,
            },
            r = &mut task => break Some(r),
            () = &mut waited => break None,
        }
    };
    match finished {
        Some(r) => {
            let out = match done(r, wall_start) {
                Ok(out) => out,
                Err(e) => return HttpOutcome::failed(e),
            };
            // The guest's store is gone: what it wrote is ready, and the
            // body's end with it (hyper then sends a `content-length`).
            if out.success() && !body_done {
                body_done = take_ready(&mut body, &mut frames, &mut buffered);
            }
            let rest = body.map_err(|e| Box::new(e) as BodyError).boxed_unsync();
            // A guest stopped mid-body (a limit, a trap) leaves the body
            // unfinished: it ends with that error.
            if !out.success() && !body_done {
                frames.push_back(Err(Box::new(status_error(&out.status)) as BodyError));
            }
            let body = Chain {
                frames,
                rest: (out.success() && !body_done).then_some(rest),
                cut: None,
                gone: None,
            };
            HttpOutcome {
                response: Ok(hyper::Response::from_parts(parts, body.boxed_unsync())),
                usage: out.usage,
                stderr: out.stderr,
                final_outcome: None,
            }
        }
        None => {
            // Still writing (or still running): stream the rest; the usage
            // follows.
            let rest = body.map_err(|e| Box::new(e) as BodyError).boxed_unsync();
            let (tx, rx) = oneshot::channel();
            let usage = Usage::new(wall_start.elapsed(), Default::default(), None, 0);
            let cut = Arc::new(OnceLock::new());
            let cut_by = cut.clone();
            let (gone_tx, gone_rx) = oneshot::channel::<()>();
            tokio::spawn(async move {
                let mut task = pin!(task);
                let (result, cpu) = tokio::select! {
                    done = &mut task => done,
                    // The body was dropped unfinished: the guest is
                    // stopped here (its future dropped), and `tx` with it.
                    Ok(()) = gone_rx => return,
                };
                let out = match result {
                    Ok(f) => {
                        // Before the store goes: a body it never finished
                        // ends when the store is dropped, and must then
                        // end with this error, not as if complete.
                        if !f.status().success() {
                            let _ = cut_by.set(f.status().clone());
                        }
                        f.outcome(wall_start, cpu)
                    }
                    // Not a guest's status (those are in `Finished`): the
                    // invocation itself failed, after its response head.
                    Err(e) => Outcome {
                        status: match e {
                            Error::Trap(m) => Status::Trapped(m),
                            Error::LimitExceeded(l) => Status::LimitExceeded(l),
                            Error::Exit(c) => Status::Exited(c),
                            Error::Sandbox(m) => Status::SandboxFailed(m),
                            e => Status::Trapped(e.to_string()),
                        },
                        usage: Usage::new(wall_start.elapsed(), cpu, None, 0),
                        stdout: None,
                        stderr: None,
                    },
                };
                let _ = tx.send(out);
            });
            // A body already ended while the guest runs on was finished
            // (an unfinished one ends only when the store goes): complete.
            let body = Chain {
                frames,
                rest: (!body_done).then_some(rest),
                cut: (!body_done).then_some(cut),
                gone: Some(gone_tx),
            };
            HttpOutcome {
                response: Ok(hyper::Response::from_parts(parts, body.boxed_unsync())),
                usage,
                stderr: None,
                final_outcome: Some(rx),
            }
        }
    }
}

/// Moves the frames `body` has ready now (the guest has ended, so nothing
/// more is coming but its end) into `frames`, up to [`HTTP_BODY_BUFFER`]
/// bytes in all; true when the body's end was reached.
fn take_ready<B>(
    body: &mut B,
    frames: &mut VecDeque<Result<Frame<Bytes>, BodyError>>,
    buffered: &mut usize,
) -> bool
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let mut cx = Context::from_waker(std::task::Waker::noop());
    while *buffered < HTTP_BODY_BUFFER {
        match Pin::new(&mut *body).poll_frame(&mut cx) {
            Poll::Ready(Some(Ok(f))) => {
                *buffered += f.data_ref().map_or(0, Bytes::len);
                frames.push_back(Ok(f));
            }
            Poll::Ready(Some(Err(e))) => {
                frames.push_back(Err(Box::new(e)));
                return true;
            }
            Poll::Ready(None) => return true,
            Poll::Pending => return false,
        }
    }
    false
}

/// The outcome of the guest's future.
fn done(r: GuestResult, wall_start: Instant) -> Result<Outcome, Error> {
    match r {
        (Ok(f), cpu) => Ok(f.outcome(wall_start, cpu)),
        (Err(e), _) => Err(e),
    }
}

/// The error for a guest that did not end well.
fn status_error(status: &Status) -> Error {
    match status {
        Status::Trapped(m) => Error::Trap(m.clone()),
        Status::LimitExceeded(l) => Error::LimitExceeded(*l),
        Status::Exited(code) => Error::Exit(*code),
        Status::SandboxFailed(m) => Error::Sandbox(m.clone()),
        Status::Returned(_) => Error::Trap("unexpected return".into()),
    }
}

/// A request body error, as wasi:http reports it to the guest.
fn to_wasi_error(e: BodyError) -> wasmtime_wasi_http::Error {
    match e.downcast::<hyper::Error>() {
        Ok(h) => wasmtime_wasi_http::Error::Hyper(*h),
        Err(e) => wasmtime_wasi_http::Error::InternalError(Some(e.to_string())),
    }
}

/// The frames read while the guest finished, then the rest of the body
/// (if any).
struct Chain {
    frames: VecDeque<Result<Frame<Bytes>, BodyError>>,
    rest: Option<HttpBody>,
    /// For a body streamed while the guest runs: how the guest failed, set
    /// before its store (and with it the body's sender) is dropped.
    /// wasmtime-wasi-http ends a body whose sender is dropped unfinished
    /// (a trap, a limit) as if it were complete; an end seen once this is
    /// set is such a cut, and ends with the guest's error instead. (A
    /// guest that finished its body and failed only afterwards, before
    /// the client had read the body's end, is reported the same way.)
    cut: Option<Arc<OnceLock<Status>>>,
    /// For a body streamed while the guest runs: told when the body is
    /// dropped before its end, which stops the guest.
    gone: Option<oneshot::Sender<()>>,
}

impl Drop for Chain {
    fn drop(&mut self) {
        if self
            .rest
            .as_ref()
            .is_some_and(|r| !hyper::body::Body::is_end_stream(r))
            && let Some(gone) = self.gone.take()
        {
            let _ = gone.send(());
        }
    }
}

impl hyper::body::Body for Chain {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        if let Some(f) = self.frames.pop_front() {
            return Poll::Ready(Some(f));
        }
        let Some(rest) = &mut self.rest else {
            return Poll::Ready(None);
        };
        match ready!(Pin::new(rest).poll_frame(cx)) {
            None => {
                self.rest = None;
                match self.cut.as_ref().and_then(|c| c.get()) {
                    Some(status) => Poll::Ready(Some(Err(Box::new(status_error(status))))),
                    None => Poll::Ready(None),
                }
            }
            frame => Poll::Ready(frame),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.frames.is_empty() && self.rest.as_ref().is_none_or(|r| r.is_end_stream())
    }

    /// Exact when the whole body is buffered (hyper then sends a
    /// `content-length` instead of chunks).
    fn size_hint(&self) -> hyper::body::SizeHint {
        let buffered: u64 = self
            .frames
            .iter()
            .map(|f| {
                f.as_ref()
                    .ok()
                    .and_then(Frame::data_ref)
                    .map_or(0, |d| d.len() as u64)
            })
            .sum();
        match &self.rest {
            None if self.frames.iter().all(Result::is_ok) => {
                hyper::body::SizeHint::with_exact(buffered)
            }
            None => hyper::body::SizeHint::default(),
            Some(rest) => {
                let r = rest.size_hint();
                let mut h = hyper::body::SizeHint::new();
                h.set_lower(r.lower() + buffered);
                if let Some(u) = r.upper() {
                    h.set_upper(u + buffered);
                }
                h
            }
        }
    }
}

/// A request body from bytes (for tests, benchmarks and small callers).
pub fn full_body(bytes: impl Into<Bytes>) -> HttpBody {
    http_body_util::Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}
