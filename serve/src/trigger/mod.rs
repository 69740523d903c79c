//! Triggers beyond HTTP: [`schedule`] (cron or fixed interval) and
//! [`file`] (complete files appearing in a directory).
//!
//! They are started once, from the manifest the server started with, and
//! find their function by name in the *current* functions at each event, so
//! a reload that changes a module is taken at the next event; a change to
//! a trigger's own settings takes a restart (a reload does not restart
//! triggers, and does not warn about it yet).
//! An event goes through the function's admission like a request (its
//! concurrency and the server-wide cap), runs the function as a WASI
//! command (stdin, environment, preopened directories of the manifest) and
//! appends one line to the usage log.

pub(crate) mod file;
pub(crate) mod schedule;

use crate::handler::Handler;
use crate::manifest::EventTrigger;
use crate::server::{Shared, log_stderr};
use crate::usage_log::LineHead;
use bytes::Bytes;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use wasmlet_runtime::Status;

/// Longest wait between two tries to get an instance of a busy function.
const MAX_ADMISSION_BACKOFF: Duration = Duration::from_secs(1);
/// Bytes of a failed event's stderr kept in its reason.
const MAX_REASON_STDERR: usize = 2048;

/// The running triggers.
pub(crate) struct Triggers {
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

/// Starts every schedule and file trigger of the current manifest.
pub(crate) fn start(shared: Arc<Shared>) -> Triggers {
    let app = shared.current();
    let (stop, rx) = watch::channel(false);
    let mut tasks = Vec::new();
    for f in &app.manifest.functions {
        for t in &f.events {
            let ctx = Ctx {
                shared: shared.clone(),
                function: f.name.clone(),
                trigger: t.name().to_string(),
                stop: rx.clone(),
            };
            let state_dir = app.manifest.state_dir.clone();
            tasks.push(match t.clone() {
                EventTrigger::Schedule(s) => tokio::spawn(schedule::run(ctx, s, state_dir)),
                EventTrigger::File(s) => tokio::spawn(file::run(ctx, s)),
            });
        }
    }
    Triggers { stop, tasks }
}

impl Triggers {
    /// Stops taking events and waits, at most `limit`, for the running ones.
    pub(crate) async fn stop(self, limit: Duration) {
        let _ = self.stop.send(true);
        let deadline = tokio::time::Instant::now() + limit;
        for t in self.tasks {
            if tokio::time::timeout_at(deadline, t).await.is_err() {
                tracing::warn!("a trigger did not stop within the drain timeout");
            }
        }
    }
}

/// What a trigger task holds: the server, its function and name, and the
/// stop signal.
#[derive(Clone)]
pub(crate) struct Ctx {
    pub shared: Arc<Shared>,
    pub function: String,
    pub trigger: String,
    pub stop: watch::Receiver<bool>,
}

impl Ctx {
    /// Whether the server is stopping.
    pub(crate) fn stopping(&self) -> bool {
        *self.stop.borrow() || self.shared.draining()
    }
}

/// One event for a function.
pub(crate) struct Event {
    /// Environment variables beyond the manifest's (`WASMLET_TRIGGER` is
    /// added).
    pub env: Vec<(String, String)>,
    /// The function's stdin.
    pub stdin: Bytes,
    /// Extra fields of its usage line (`file`, `scheduled_time`).
    pub fields: serde_json::Map<String, serde_json::Value>,
}

/// Runs `event` through the function: `Ok` when it exited 0, else why not
/// (exit code, trap, limit, with the tail of its stderr). Appends the usage
/// line before returning.
pub(crate) async fn invoke(ctx: &Ctx, event: Event) -> Result<(), String> {
    let start_time = chrono::Utc::now();
    let id = ctx.shared.new_id();
    let app = ctx.shared.current();
    let Some(func) = app.functions.iter().find(|f| f.spec.name == ctx.function) else {
        return Err(format!(
            "function `{}` is no longer in the manifest",
            ctx.function
        ));
    };
    let head = LineHead {
        function: Some(&func.spec.name),
        trigger: &ctx.trigger,
        id: &id,
        start_time,
        memory_limit_bytes: Some(func.spec.limits.memory),
    };
    let Handler::Wagi(function) = &func.handler else {
        return Err("schedule and file triggers need a WASI command (kind = \"wagi\")".into());
    };
    // A busy function: wait for an instance like a queued request, retrying
    // past its queue timeout rather than dropping the event.
    let mut backoff = Duration::from_millis(10);
    let admitted = loop {
        match func
            .admission
            .admit(&app.global, &func.metrics, ctx.shared.metrics_ref())
            .await
        {
            Ok(a) => break a,
            Err(_) => {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_ADMISSION_BACKOFF);
            }
        }
    };
    let mut env: Vec<(String, String)> = func
        .env
        .iter()
        .filter(|(k, _)| k != "WASMLET_TRIGGER" && !event.env.iter().any(|(e, _)| e == k))
        .cloned()
        .collect();
    env.push(("WASMLET_TRIGGER".into(), ctx.trigger.clone()));
    env.extend(event.env);
    let args = vec![func.spec.name.clone()];
    let result = func
        .invoke_command(function, args, env, event.stdin, None)
        .await;
    drop(admitted);
    let outcome = match result {
        Ok(o) => o,
        Err(e) => {
            let why = format!("invocation failed: {e}");
            let mut line = head.rejected("setup");
            line.fields = event.fields;
            ctx.shared.usage.record(line).await;
            return Err(why);
        }
    };
    let max_log = app.manifest.server.max_log_per_invocation as usize;
    let stderr = outcome.stderr.as_deref().unwrap_or_default();
    log_stderr(&func.spec.name, &id, stderr, max_log);
    let stdout = outcome.stdout.as_deref().unwrap_or_default();
    for line in String::from_utf8_lossy(&stdout[..stdout.len().min(max_log)]).lines() {
        tracing::info!(function = %func.spec.name, trigger = %ctx.trigger, id = %id, "stdout: {line}");
    }
    let mut line = head.ran(outcome.usage_record());
    line.fields = event.fields;
    let ok = line.is_success();
    ctx.shared.usage.record(line).await;
    if ok {
        return Ok(());
    }
    let mut why = match &outcome.status {
        Status::Exited(c) => format!("exited with code {c}"),
        Status::Returned(_) => "returned".into(),
        Status::Trapped(m) => format!("trapped: {m}"),
        Status::LimitExceeded(l) => l.to_string(),
        Status::SandboxFailed(m) => format!("sandbox failed: {m}"),
    };
    if !stderr.is_empty() {
        let tail = &stderr[stderr.len().saturating_sub(MAX_REASON_STDERR)..];
        why.push_str("; stderr: ");
        why.push_str(String::from_utf8_lossy(tail).trim_end());
    }
    tracing::warn!(function = %func.spec.name, trigger = %ctx.trigger, id = %id, "{why}");
    Err(why)
}
