//! What an invocation is given ([`Invocation`]) and what it gives back
//! ([`Outcome`]).

use crate::Limits;
use crate::context::Context;
use crate::error::{Error, LimitExceeded};
use crate::usage::Usage;
use bytes::Bytes;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Poll, Waker};
use wasmtime::Val;

/// One call of a function: its WASI view of the world and what to run.
#[derive(Debug, Default)]
pub struct Invocation {
    /// Arguments, `argv[0]` included (by convention the program name).
    pub args: Vec<String>,
    /// Environment variables: exactly these, nothing inherited.
    pub env: Vec<(String, String)>,
    /// Host directories the guest may reach; nothing else of the file system.
    pub dirs: Vec<Preopen>,
    /// Standard input.
    pub stdin: Input,
    /// Standard output.
    pub stdout: Output,
    /// Standard error.
    pub stderr: Output,
    /// What to call.
    pub entry: Entry,
    /// Limits for this call; `None` uses the function's.
    pub limits: Option<Limits>,
    /// The embedder's values for this call (which tenant, which request),
    /// seen by host functions and by no other invocation. Moved into the
    /// invocation's store; host functions report back through values
    /// shared with the caller (an `Arc`).
    pub context: Context,
    /// Made ready, then held: with a gate, the invocation makes its store,
    /// WASI context and instance as soon as it is polled, then waits until
    /// the gate opens before it calls the entry point (see [`StartGate`]).
    pub gate: Option<StartGate>,
    /// Kept up to date with the CPU time and memory peak used so far, for
    /// a caller that may drop the invocation before its outcome (see
    /// [`UsageProbe`](crate::UsageProbe)).
    pub probe: Option<crate::usage::UsageProbe>,
}

/// Holds an invocation between its instance and its entry point, for
/// callers that create before they start (a containerd task is created,
/// then started): polled before [`StartGate::open`], the invocation
/// instantiates and waits, so the start runs only the guest's own code.
/// One gate may hold several invocations; opening it lets all through.
/// [`Function::invoke`](crate::Function::invoke), `invoke_async` and
/// [`TypedFunction`](crate::TypedFunction)'s calls honour it; `handle_http`
/// and a sandbox's `invoke` refuse an invocation that has one.
///
/// The invocation's clock (its wall time and timeout) runs from its first
/// poll, the wait at the gate included; CPU time counts only what it
/// uses. A module's `start` section, if it has one, runs before the gate
/// (it is part of instantiation). Dropping the waiting invocation frees
/// its instance, as for any invocation.
#[derive(Debug, Clone, Default)]
pub struct StartGate(Arc<GateState>);

#[derive(Debug, Default)]
struct GateState {
    open: AtomicBool,
    /// An invocation has its instance and waits at the gate.
    reached: AtomicBool,
    /// The invocations waiting (a gate may hold several).
    wakers: Mutex<Vec<Waker>>,
}

impl StartGate {
    /// A closed gate.
    pub fn new() -> Self {
        Self::default()
    }

    /// Lets the invocations waiting at the gate call their entry points
    /// now, and any that reach it later at once.
    pub fn open(&self) {
        self.0.open.store(true, Ordering::Release);
        let wakers = std::mem::take(&mut *self.0.wakers.lock().expect("gate lock"));
        for w in wakers {
            w.wake();
        }
    }

    /// Whether [`StartGate::open`] was called.
    pub fn is_open(&self) -> bool {
        self.0.open.load(Ordering::Acquire)
    }

    /// Whether an invocation reached the gate: its instance is made.
    pub fn is_reached(&self) -> bool {
        self.0.reached.load(Ordering::Acquire)
    }

    /// Waits until the gate is open.
    pub(crate) async fn pass(&self) {
        self.0.reached.store(true, Ordering::Release);
        Pass {
            gate: self,
            waiting: None,
        }
        .await
    }

    /// How many wakers the gate holds.
    #[cfg(test)]
    fn waiting(&self) -> usize {
        self.0.wakers.lock().expect("gate lock").len()
    }
}

/// An invocation waiting at a gate; dropped (the invocation ended before
/// the gate opened), it takes its waker back out.
struct Pass<'a> {
    gate: &'a StartGate,
    waiting: Option<Waker>,
}

impl std::future::Future for Pass<'_> {
    type Output = ();

    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<()> {
        if self.gate.is_open() {
            self.waiting = None;
            return Poll::Ready(());
        }
        if !self
            .waiting
            .as_ref()
            .is_some_and(|w| w.will_wake(cx.waker()))
        {
            let mut wakers = self.gate.0.wakers.lock().expect("gate lock");
            if let Some(old) = self.waiting.take()
                && let Some(i) = wakers.iter().position(|w| w.will_wake(&old))
            {
                wakers.swap_remove(i);
            }
            wakers.push(cx.waker().clone());
            drop(wakers);
            self.waiting = Some(cx.waker().clone());
        }
        // Opened between the check and the waker's store: its wake found
        // no waker.
        if self.gate.is_open() {
            self.waiting = None;
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

impl Drop for Pass<'_> {
    fn drop(&mut self) {
        if let Some(w) = self.waiting.take() {
            let mut wakers = self.gate.0.wakers.lock().expect("gate lock");
            if let Some(i) = wakers.iter().position(|x| x.will_wake(&w)) {
                wakers.swap_remove(i);
            }
        }
    }
}

/// A preopened directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Preopen {
    /// Directory on the host.
    pub host: PathBuf,
    /// The name the guest sees it by.
    pub guest: String,
    /// Refuse writes.
    pub read_only: bool,
}

impl Preopen {
    /// Parses wasmtime's `HOST[::GUEST]` syntax.
    pub fn parse(spec: &str) -> Preopen {
        let (host, guest) = match spec.split_once("::") {
            Some((h, g)) => (h, g),
            None => (spec, spec),
        };
        Preopen {
            host: host.into(),
            guest: guest.into(),
            read_only: false,
        }
    }
}

/// Where standard input comes from.
#[derive(Debug, Default)]
pub enum Input {
    /// Empty.
    #[default]
    Null,
    /// These bytes.
    Bytes(Bytes),
    /// This process's stdin.
    Inherit,
    /// An open file.
    File(std::fs::File),
}

/// Where an output stream goes.
#[derive(Debug, Default)]
pub enum Output {
    /// Discarded.
    Null,
    /// Kept in memory and returned in the [`Outcome`] (up to
    /// `Limits::max_captured_output` bytes).
    #[default]
    Capture,
    /// Streamed to this process's stream of the same name.
    Inherit,
    /// Streamed to an open file.
    File(std::fs::File),
}

/// The entry point.
#[derive(Debug, Clone, Default)]
pub enum Entry {
    /// A command's `_start`.
    #[default]
    Start,
    /// A named export, called with these arguments after `_initialize`
    /// (if the module has one).
    Export {
        /// Export name.
        name: String,
        /// Arguments; must match the export's parameter types.
        params: Vec<Val>,
    },
}

/// How an invocation ended.
#[derive(Debug, Clone)]
pub enum Status {
    /// `_start` returned (code 0) or the guest called `proc_exit(code)`.
    Exited(i32),
    /// The export returned these values.
    Returned(Vec<Val>),
    /// The guest trapped; the message names the cause and, where known, the
    /// function it trapped in.
    Trapped(String),
    /// The guest exceeded a limit and was stopped.
    LimitExceeded(LimitExceeded),
    /// The sandbox running the invocation failed under it (its worker
    /// process died, not by a limit): the message says how. Never a guest
    /// trap, and only reported to invocations that were running there.
    SandboxFailed(String),
}

impl Status {
    /// Whether the guest succeeded: exit code 0 or returned values.
    pub fn success(&self) -> bool {
        matches!(self, Status::Exited(0) | Status::Returned(_))
    }
}

/// The result of a finished invocation.
#[derive(Debug)]
pub struct Outcome {
    /// How it ended.
    pub status: Status,
    /// What it used.
    pub usage: Usage,
    /// Captured stdout (when [`Output::Capture`]).
    pub stdout: Option<Bytes>,
    /// Captured stderr (when [`Output::Capture`]).
    pub stderr: Option<Bytes>,
}

impl Outcome {
    /// Whether the guest succeeded: exit code 0 or returned values.
    pub fn success(&self) -> bool {
        self.status.success()
    }

    /// The status as a `Result`: a trap, a limit or a non-zero exit is an
    /// [`Error`].
    pub fn into_result(self) -> Result<Self, Error> {
        match &self.status {
            Status::Exited(0) | Status::Returned(_) => Ok(self),
            Status::Exited(code) => Err(Error::Exit(*code)),
            Status::Trapped(msg) => Err(Error::Trap(msg.clone())),
            Status::LimitExceeded(l) => Err(Error::LimitExceeded(*l)),
            Status::SandboxFailed(m) => Err(Error::Sandbox(m.clone())),
        }
    }

    /// The status and usage as one flat record, for logs and billing.
    pub fn usage_record(&self) -> UsageRecord {
        let (status, exit_code, error) = match &self.status {
            Status::Exited(code) => ("exited", Some(*code), None),
            Status::Returned(_) => ("returned", None, None),
            Status::Trapped(m) => ("trapped", None, Some(m.clone())),
            Status::LimitExceeded(l) => ("limit_exceeded", None, Some(l.to_string())),
            Status::SandboxFailed(m) => ("sandbox_failed", None, Some(m.clone())),
        };
        UsageRecord {
            usage: self.usage.clone(),
            status,
            exit_code,
            error,
        }
    }

    /// The status and usage as one JSON object ([`Outcome::usage_record`]).
    pub fn usage_json(&self) -> serde_json::Value {
        serde_json::to_value(self.usage_record()).expect("usage serializes")
    }
}

/// An invocation's usage and how it ended, as one flat record: the fields
/// of [`Usage`], then `status` (`exited`, `returned`, `trapped`,
/// `limit_exceeded`, `sandbox_failed`) with `exit_code` or `error`. The
/// usage line of `wasmlet serve` and `wasmlet run --usage` print it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct UsageRecord {
    /// What the invocation used.
    #[serde(flatten)]
    pub usage: Usage,
    /// How it ended.
    pub status: &'static str,
    /// The exit code, for `exited`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// The trap, limit or sandbox failure, for those.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl UsageRecord {
    /// Whether the guest succeeded: it returned, or exited with code 0.
    pub fn success(&self) -> bool {
        self.status == "returned" || (self.status == "exited" && self.exit_code == Some(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;

    #[test]
    fn an_invocation_dropped_at_a_closed_gate_leaves_no_waker_in_it() {
        let gate = StartGate::new();
        let mut cx = std::task::Context::from_waker(Waker::noop());
        let mut first = Box::pin(gate.pass());
        assert!(first.as_mut().poll(&mut cx).is_pending());
        // Polled again with the same waker: still one.
        assert!(first.as_mut().poll(&mut cx).is_pending());
        assert_eq!(gate.waiting(), 1);
        let mut second = Box::pin(gate.pass());
        assert!(second.as_mut().poll(&mut cx).is_pending());
        drop(first);
        drop(second);
        assert_eq!(gate.waiting(), 0);
        // The gate still works for the next.
        let mut third = Box::pin(gate.pass());
        assert!(third.as_mut().poll(&mut cx).is_pending());
        gate.open();
        assert!(third.as_mut().poll(&mut cx).is_ready());
    }
}
