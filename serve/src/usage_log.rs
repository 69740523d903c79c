//! The usage log: one JSON line per invocation of any trigger, appended to
//! a file by one writer thread, the basis of `wasmlet usage` (the bill).
//!
//! ```text
//!  request / schedule / file event ─▶ UsageLog::record(line).await
//!      (bounded channel: a full one makes the caller wait; the response
//!       is sent only after its line is queued)
//!  writer thread: take every queued line ─▶ write the batch ─▶ fdatasync
//!      ─▶ count it (the /metrics `wasmlet_usage_*` figures) ─▶ next batch
//! ```
//!
//! Group commit: each batch is written and `fdatasync`ed before the next is
//! taken, and batches start at least [`MIN_BATCH_INTERVAL`] apart, so a line
//! is on disk at most that interval plus two writes and syncs (the batch
//! before its own, and its own) after it was queued: under
//! [`SYNC_INTERVAL`] on a disk that syncs in a few milliseconds. A SIGKILL
//! loses the lines queued but not yet synced: those of requests whose
//! responses were sent in about that last window.
//!
//! A batch never straddles two files: when the file would pass its size
//! limit the writer renames it to `NAME.N` (N one more than the highest
//! already there) and starts a new one, so no line is split. A failed write
//! (disk full, read-only) truncates the file back to the last whole line,
//! keeps the batch, marks the log unhealthy (`/readyz` answers 503 and the
//! error is logged at error level) and retries; lines are never dropped, and
//! while the disk stays full the queue fills and requests wait.
//!
//! The log must be a regular file, and one server's: it is locked
//! (`flock`) while open, and a second server given the same file refuses
//! to start (two writers would interleave rotations and cut each other's
//! lines when a write fails).

use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};
use wasmlet_runtime::UsageRecord;

/// The log's file name when the manifest and flags name none (beside the
/// manifest).
pub const DEFAULT_USAGE_LOG: &str = "wasmlet-usage.jsonl";
/// Size past which the log is rotated.
pub const DEFAULT_USAGE_LOG_MAX_SIZE: u64 = 64 << 20;
/// Lines queued for the writer before callers wait.
pub const QUEUE_CAPACITY: usize = 16 * 1024;
/// The longest a queued line waits to be synced on a working disk.
pub const SYNC_INTERVAL: Duration = Duration::from_millis(100);
/// Shortest time between two batches: lines queued meanwhile share one
/// write and one `fdatasync` (at most ~20 syncs a second under load). Each
/// batch wakes the writer and the filesystem's journal, context switches on
/// cores that are serving: at 10 ms, measured on the project's 2-core VM,
/// they cost a wasi:http hello server ~10% of its throughput.
pub const MIN_BATCH_INTERVAL: Duration = Duration::from_millis(50);
/// How often a failed write is retried.
const RETRY_INTERVAL: Duration = Duration::from_millis(500);
/// Lines written as one batch at most.
const MAX_BATCH: usize = 4096;

/// Why the log cannot be opened.
#[derive(Debug, thiserror::Error)]
#[error("usage log {}: {error}", path.display())]
pub struct UsageLogError {
    /// The file.
    pub path: PathBuf,
    /// Why.
    pub error: std::io::Error,
}

enum Msg {
    Line(Box<Line>),
    Flush(oneshot::Sender<()>),
}

/// One line, typed: serialized once, by the writer.
type Line = UsageLine;

/// The log: cheap to clone, shared by every trigger.
#[derive(Clone)]
pub struct UsageLog {
    tx: mpsc::Sender<Msg>,
    state: Arc<Mutex<State>>,
    path: PathBuf,
    /// `Flush` messages in the queue, not lines (for [`UsageLog::unwritten`]).
    flushes_queued: Arc<AtomicUsize>,
    /// Lines waiting for room in the queue (see [`UsageLog::record`]).
    waiting: Arc<AtomicUsize>,
}

#[derive(Default)]
struct State {
    /// The last write or sync error, while it lasts.
    error: Option<String>,
    /// Per function (`-` for a request no function took): the figures of
    /// the lines written.
    totals: BTreeMap<String, Totals>,
    lines: u64,
    /// Lines taken from the queue whose write failed, being retried.
    held: usize,
    write_errors: u64,
    rotations: u64,
}

/// What the written lines of one function add up to.
#[derive(Default, Clone)]
struct Totals {
    invocations: u64,
    errors: u64,
    rejected: u64,
    gb_seconds: f64,
    cpu_ns: u64,
    wall_ns: u64,
}

impl UsageLog {
    /// Opens (creating) the log at `path` for appending, rotating it past
    /// `max_size` bytes, and starts its writer thread.
    pub fn open(path: &Path, max_size: u64) -> Result<UsageLog, UsageLogError> {
        let err = |error| UsageLogError {
            path: path.to_owned(),
            error,
        };
        if let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(err)?;
        }
        let file = open_append(path).map_err(err)?;
        let len = mend_torn_tail(path, &file).map_err(err)?;
        let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
        let state = Arc::new(Mutex::new(State::default()));
        let flushes_queued = Arc::new(AtomicUsize::new(0));
        let writer = Writer {
            flushes_queued: flushes_queued.clone(),
            path: path.to_owned(),
            file,
            len,
            max_size,
            state: state.clone(),
            out: Vec::new(),
            ends: Vec::new(),
        };
        std::thread::Builder::new()
            .name("wasmlet-usage".into())
            .spawn(move || writer.run(rx))
            .map_err(err)?;
        Ok(UsageLog {
            tx,
            state,
            path: path.to_owned(),
            flushes_queued,
            waiting: Arc::default(),
        })
    }

    /// The file written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Queues `line`; waits while the queue is full.
    /// The line is queued even if the caller's future is dropped while it
    /// waits (a request whose client leaves then): the wait is a task of
    /// its own.
    pub async fn record(&self, line: UsageLine) {
        let msg = match self.tx.try_send(Msg::Line(Box::new(line))) {
            Ok(()) => return,
            Err(mpsc::error::TrySendError::Full(msg)) => msg,
            Err(mpsc::error::TrySendError::Closed(_)) => {
                tracing::error!(target: "wasmlet::usage", "usage log writer is gone; a line is lost");
                return;
            }
        };
        let tx = self.tx.clone();
        // Counted until queued: a task dropped with its runtime at exit
        // leaves its line counted as unwritten.
        let waiting = self.waiting.clone();
        waiting.fetch_add(1, Ordering::SeqCst);
        // (Dropping the handle does not stop the task.)
        let _ = tokio::spawn(async move {
            if tx.send(msg).await.is_err() {
                tracing::error!(target: "wasmlet::usage", "usage log writer is gone; a line is lost");
            }
            waiting.fetch_sub(1, Ordering::SeqCst);
        })
        .await;
    }

    /// Queues `line` without waiting (from a `Drop`, or with no runtime):
    /// the line back if the queue is full.
    pub fn record_now(&self, line: UsageLine) -> Result<(), Box<UsageLine>> {
        match self.tx.try_send(Msg::Line(Box::new(line))) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(Msg::Line(l))) => Err(l),
            Err(_) => {
                tracing::error!(target: "wasmlet::usage", "usage log writer is gone; a line is lost");
                Ok(())
            }
        }
    }

    /// Waits until every line queued before this call is written and synced
    /// (or, when the disk fails, until `limit` passes).
    pub async fn flush(&self, limit: Duration) -> bool {
        let (tx, rx) = oneshot::channel();
        // The limit covers the wait for room in the queue too (a full
        // queue behind a failing disk).
        let Ok(Ok(permit)) = tokio::time::timeout(limit, self.tx.reserve()).await else {
            return false;
        };
        self.flushes_queued.fetch_add(1, Ordering::SeqCst);
        permit.send(Msg::Flush(tx));
        tokio::time::timeout(limit, rx)
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// The lines not written yet: held by the writer (retrying a failed
    /// write), queued, or waiting for room in the queue. Exact once nothing
    /// more is recorded.
    pub fn unwritten(&self) -> u64 {
        let in_queue = self.tx.max_capacity() - self.tx.capacity();
        let flushes = self.flushes_queued.load(Ordering::SeqCst);
        let waiting = self.waiting.load(Ordering::SeqCst);
        (self.lock().held + in_queue.saturating_sub(flushes) + waiting) as u64
    }

    /// The write error that makes the server unready, while it lasts.
    pub fn error(&self) -> Option<String> {
        self.lock().error.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The `wasmlet_usage_*` figures, in the Prometheus text format: what
    /// the lines written so far add up to.
    pub fn render(&self) -> String {
        let s = self.lock();
        let mut out = String::new();
        let mut family = |name: &str, kind: &str, help: &str, get: &dyn Fn(&Totals) -> String| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (f, t) in &s.totals {
                let _ = writeln!(out, "{name}{{function=\"{f}\"}} {}", get(t));
            }
        };
        family(
            "wasmlet_usage_invocations_total",
            "counter",
            "Usage-log lines written for invocations that ran (billed).",
            &|t| t.invocations.to_string(),
        );
        family(
            "wasmlet_usage_errors_total",
            "counter",
            "Of those, invocations that did not end with exit code 0.",
            &|t| t.errors.to_string(),
        );
        family(
            "wasmlet_usage_rejected_total",
            "counter",
            "Usage-log lines written for requests refused before running (not billed).",
            &|t| t.rejected.to_string(),
        );
        family(
            "wasmlet_usage_gb_seconds_total",
            "counter",
            "Sum of the written lines' gb_seconds (peak memory x wall time).",
            &|t| format!("{}", t.gb_seconds),
        );
        family(
            "wasmlet_usage_cpu_seconds_total",
            "counter",
            "Sum of the written lines' cpu_time_ns, in seconds.",
            &|t| format!("{}", t.cpu_ns as f64 / 1e9),
        );
        family(
            "wasmlet_usage_wall_seconds_total",
            "counter",
            "Sum of the written lines' wall_time_ns, in seconds.",
            &|t| format!("{}", t.wall_ns as f64 / 1e9),
        );
        let _ = writeln!(
            out,
            "# HELP wasmlet_usage_lines_total Lines written to the usage log.\n# TYPE wasmlet_usage_lines_total counter\nwasmlet_usage_lines_total {}",
            s.lines
        );
        let _ = writeln!(
            out,
            "# HELP wasmlet_usage_write_errors_total Failed writes or syncs of the usage log (each retried).\n# TYPE wasmlet_usage_write_errors_total counter\nwasmlet_usage_write_errors_total {}",
            s.write_errors
        );
        let _ = writeln!(
            out,
            "# HELP wasmlet_usage_rotations_total Times the usage log was rotated.\n# TYPE wasmlet_usage_rotations_total counter\nwasmlet_usage_rotations_total {}",
            s.rotations
        );
        let _ = writeln!(
            out,
            "# HELP wasmlet_usage_log_healthy 1 while the usage log is written, 0 while writes fail.\n# TYPE wasmlet_usage_log_healthy gauge\nwasmlet_usage_log_healthy {}",
            u8::from(s.error.is_none())
        );
        out
    }
}

const NOT_REGULAR: &str = "not a regular file (a usage log is rotated by renaming it)";

/// A non-empty usage log starts with a JSON object (its first line): what
/// does not is no usage log, and is neither appended to nor cut.
fn starts_as_a_log(f: &mut File) -> std::io::Result<()> {
    use std::io::Read;
    let mut first = [0u8; 1];
    f.read_exact(&mut first)?;
    if first[0] != b'{' {
        return Err(std::io::Error::other(
            "not a usage log (it does not start with a JSON line); give the server a log of its own",
        ));
    }
    Ok(())
}

/// What [`UsageLog::open`] would refuse at `path`, found without creating
/// or changing anything (for `serve --check`): not a regular file, not a
/// usage log, a parent that is not a directory.
pub(crate) fn check_path(path: &Path) -> std::io::Result<()> {
    match std::fs::metadata(path) {
        Ok(m) if !m.is_file() => Err(std::io::Error::other(NOT_REGULAR)),
        Ok(m) if m.len() > 0 => starts_as_a_log(&mut File::open(path)?),
        Ok(_) => Ok(()),
        Err(_) => {
            // Its nearest existing ancestor must be a directory.
            let mut up = path.parent();
            while let Some(p) = up.filter(|p| !p.as_os_str().is_empty()) {
                if let Ok(m) = std::fs::metadata(p) {
                    if !m.is_dir() {
                        return Err(std::io::Error::other(format!(
                            "{} is not a directory",
                            p.display()
                        )));
                    }
                    break;
                }
                up = p.parent();
            }
            Ok(())
        }
    }
}

/// Cuts a torn last line (the writer cut short by a crash or a power loss
/// mid-write) off the log, so the next line starts on a line of its own,
/// and says so; the file's length after.
fn mend_torn_tail(path: &Path, file: &File) -> std::io::Result<u64> {
    use std::io::{Read, Seek, SeekFrom};
    let len = file.metadata()?.len();
    if len == 0 {
        return Ok(0);
    }
    let mut r = File::open(path)?;
    // Never cut what is not a usage log (a module or a manifest named as
    // the log by mistake).
    starts_as_a_log(&mut r)?;
    let mut end = len;
    let mut buf = vec![0u8; 64 * 1024];
    // Back from the end, a block at a time, to the last newline.
    let whole = loop {
        let start = end.saturating_sub(buf.len() as u64);
        let block = &mut buf[..(end - start) as usize];
        r.seek(SeekFrom::Start(start))?;
        r.read_exact(block)?;
        if let Some(i) = block.iter().rposition(|&b| b == b'\n') {
            break start + i as u64 + 1;
        }
        if start == 0 {
            break 0;
        }
        end = start;
    };
    if whole < len {
        file.set_len(whole)?;
        file.sync_data()?;
        tracing::warn!(target: "wasmlet::usage",
            "usage log {}: its last line was torn (a crash mid-write?): {} byte(s) cut off",
            path.display(), len - whole);
    }
    Ok(whole)
}

/// Opens the log for appending: a regular file only (a FIFO would block
/// the open, and rotation renames the file: never a device), locked
/// against a second server appending to it.
fn open_append(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    use std::os::unix::io::AsRawFd;
    let not_regular = || std::io::Error::other(NOT_REGULAR);
    if std::fs::metadata(path).is_ok_and(|m| !m.is_file()) {
        return Err(not_regular());
    }
    // Non-blocking: a FIFO swapped in after that check fails the open
    // rather than blocking it until a reader comes.
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    if !file.metadata()?.is_file() {
        return Err(not_regular());
    }
    // SAFETY: flock takes the descriptor of `file`, open for this call.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let e = std::io::Error::last_os_error();
        if e.kind() == std::io::ErrorKind::WouldBlock {
            return Err(std::io::Error::other(
                "in use by another process (another `wasmlet serve`?): give each server a log of its own",
            ));
        }
        return Err(e);
    }
    Ok(file)
}

struct Writer {
    path: PathBuf,
    file: File,
    /// Bytes in the file: whole lines only.
    len: u64,
    max_size: u64,
    state: Arc<Mutex<State>>,
    /// The batch being written, encoded: its lines back to back.
    out: Vec<u8>,
    /// Where each of its lines ends in `out`.
    ends: Vec<usize>,
    /// `UsageLog::flushes_queued`: taken off as they are.
    flushes_queued: Arc<AtomicUsize>,
}

impl Writer {
    fn run(mut self, mut rx: mpsc::Receiver<Msg>) {
        let mut batch: Vec<Line> = Vec::new();
        let mut waiters: Vec<oneshot::Sender<()>> = Vec::new();
        // Whether `State::held` says lines are held.
        let mut held = false;
        loop {
            if batch.is_empty() {
                match rx.blocking_recv() {
                    Some(m) => take(m, &mut batch, &mut waiters, &self.flushes_queued),
                    None => return,
                }
            }
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(m) => take(m, &mut batch, &mut waiters, &self.flushes_queued),
                    Err(_) => break,
                }
            }
            // One buffer for the batch, kept from batch to batch: a fresh
            // one each time would be freed and its pages purged by the
            // allocator, then faulted in again by the next batch.
            self.out.clear();
            self.ends.clear();
            for l in &batch {
                l.write_json(&mut self.out);
                self.out.push(b'\n');
                self.ends.push(self.out.len());
            }
            let started = Instant::now();
            let (written, failed) = self.append();
            self.count(&batch[..written], failed.is_none());
            batch.drain(..written);
            match failed {
                None => {
                    if held {
                        self.state.lock().unwrap_or_else(|e| e.into_inner()).held = 0;
                        held = false;
                    }
                    for w in waiters.drain(..) {
                        let _ = w.send(());
                    }
                    let took = started.elapsed();
                    if took > SYNC_INTERVAL {
                        tracing::warn!(target: "wasmlet::usage",
                            "usage log: a batch took {took:?} to write and sync (more than {SYNC_INTERVAL:?})");
                    }
                    if let Some(rest) = MIN_BATCH_INTERVAL.checked_sub(took) {
                        std::thread::sleep(rest);
                    }
                }
                Some(e) => {
                    let msg = format!(
                        "cannot write the usage log {}: {e}; {} line(s) held, retrying; the server reports unready until it can write",
                        self.path.display(),
                        batch.len()
                    );
                    let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
                    s.write_errors += 1;
                    s.held = batch.len();
                    held = true;
                    if s.error.is_none() || s.write_errors.is_multiple_of(20) {
                        tracing::error!(target: "wasmlet::usage", "{msg}");
                    }
                    s.error = Some(msg);
                    drop(s);
                    std::thread::sleep(RETRY_INTERVAL);
                }
            }
        }
    }

    /// Writes the encoded lines (`out`, each ending at its `ends`) whole
    /// and syncs them, rotating between lines when the next would pass the
    /// size limit; on failure the file is cut back to its last whole line.
    /// The lines written (synced), and the error.
    fn append(&mut self) -> (usize, Option<std::io::Error>) {
        let end_of = |ends: &[usize], k: usize| if k == 0 { 0 } else { ends[k - 1] };
        let n = self.ends.len();
        let mut i = 0;
        while i < n {
            let start = end_of(&self.ends, i);
            if self.len > 0
                && self.len + (self.ends[i] - start) as u64 > self.max_size
                && let Err(e) = self.rotate()
            {
                return (i, Some(e));
            }
            // As many whole lines as fit (at least one).
            let mut j = i + 1;
            while j < n && self.len + (self.ends[j] - start) as u64 <= self.max_size {
                j += 1;
            }
            let chunk = &self.out[start..self.ends[j - 1]];
            let res = self
                .file
                .write_all(chunk)
                .and_then(|()| self.file.sync_data());
            if let Err(e) = res {
                let _ = self.file.set_len(self.len);
                return (i, Some(e));
            }
            self.len += chunk.len() as u64;
            i = j;
        }
        (i, None)
    }

    /// Renames the full file to `NAME.N` and opens a fresh one.
    fn rotate(&mut self) -> std::io::Result<()> {
        let n = rotated_files(&self.path).last().map_or(1, |(n, _)| n + 1);
        let mut to = self.path.clone().into_os_string();
        to.push(format!(".{n}"));
        std::fs::rename(&self.path, &to)?;
        self.file = open_append(&self.path)?;
        self.len = 0;
        if let Some(dir) = self.path.parent().filter(|p| !p.as_os_str().is_empty()) {
            let _ = File::open(dir).and_then(|d| d.sync_all());
        }
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .rotations += 1;
        tracing::info!(target: "wasmlet::usage", "usage log rotated to {}", Path::new(&to).display());
        Ok(())
    }

    fn count(&self, batch: &[Line], healthy: bool) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if healthy && s.error.take().is_some() {
            tracing::info!(target: "wasmlet::usage", "usage log {} is written again", self.path.display());
        }
        s.lines += batch.len() as u64;
        for l in batch {
            let f = l.function.as_deref().unwrap_or("-");
            let t = match s.totals.get_mut(f) {
                Some(t) => t,
                None => s.totals.entry(f.to_string()).or_default(),
            };
            let r = match &l.outcome {
                LineOutcome::Rejected(_) => {
                    t.rejected += 1;
                    continue;
                }
                LineOutcome::Ran(r) => r,
            };
            t.invocations += 1;
            if !r.success() {
                t.errors += 1;
            }
            t.gb_seconds += r.usage.gb_seconds;
            t.cpu_ns += nanos(r.usage.cpu_time);
            t.wall_ns += nanos(r.usage.wall_time);
        }
    }
}

fn take(
    m: Msg,
    batch: &mut Vec<Line>,
    waiters: &mut Vec<oneshot::Sender<()>>,
    flushes: &AtomicUsize,
) {
    match m {
        Msg::Line(l) => batch.push(*l),
        Msg::Flush(w) => {
            flushes.fetch_sub(1, Ordering::SeqCst);
            waiters.push(w);
        }
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Whether a line (read back from the log) records a successful
/// invocation: it ran and ended with exit code 0 (or returned).
pub fn is_success(line: &Value) -> bool {
    match line["status"].as_str() {
        Some("returned") => true,
        Some("exited") => line["exit_code"].as_i64() == Some(0),
        _ => false,
    }
}

/// The rotated files of the log at `path` (`NAME.1`, `NAME.2`, ...), oldest
/// first, with their numbers.
pub fn rotated_files(path: &Path) -> Vec<(u64, PathBuf)> {
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return Vec::new();
    };
    let dir = match path.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(d) => d.to_path_buf(),
        None => PathBuf::from("."),
    };
    let mut found: Vec<(u64, PathBuf)> = std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let n = e.file_name();
            let n = n.to_str()?;
            let num = n.strip_prefix(name)?.strip_prefix('.')?.parse().ok()?;
            Some((num, dir.join(n)))
        })
        .collect();
    found.sort();
    found
}

/// A usage line's fixed fields: what ran, for which trigger, when.
pub struct LineHead<'a> {
    /// The function, `None` for a request no function took (404).
    pub function: Option<&'a str>,
    /// The trigger's name.
    pub trigger: &'a str,
    /// The request or event id.
    pub id: &'a str,
    /// When the request arrived or the event was taken.
    pub start_time: chrono::DateTime<chrono::Utc>,
    /// The function's configured memory limit, the basis of the
    /// `configured` billing.
    pub memory_limit_bytes: Option<u64>,
}

impl LineHead<'_> {
    /// The line of an invocation that ran: the head, then the fields of
    /// its usage record, with the same names as `wasmlet run --usage`
    /// prints.
    pub fn ran(&self, record: UsageRecord) -> UsageLine {
        self.line(LineOutcome::Ran(record))
    }

    /// The line of a request refused before it ran: `status = "rejected"`,
    /// no resource figures.
    pub fn rejected(&self, reason: &'static str) -> UsageLine {
        let mut line = self.line(LineOutcome::Rejected(Rejected {
            status: "rejected",
            reason,
        }));
        line.memory_limit_bytes = None;
        line
    }

    fn line(&self, outcome: LineOutcome) -> UsageLine {
        UsageLine {
            function: self.function.map(str::to_string),
            trigger: self.trigger.to_string(),
            id: self.id.to_string(),
            start_time: self.start_time,
            memory_limit_bytes: self.memory_limit_bytes,
            outcome,
            http_status: None,
            fields: serde_json::Map::new(),
        }
    }
}

/// One line of the usage log, in the order its fields are written:
/// `function` (null for a request no function took), `trigger`, `id`,
/// `start_time` (RFC 3339, microseconds, UTC), `memory_limit_bytes` (for an
/// invocation that ran), then the usage record's fields (or `status =
/// "rejected"` and `reason`), `http_status` for an HTTP request, and the
/// trigger's own fields (`file`, `scheduled_time`).
#[derive(Debug, Clone, Serialize)]
pub struct UsageLine {
    /// The function, `None` for a request no function took (404).
    pub function: Option<String>,
    /// The trigger's name.
    pub trigger: String,
    /// The request or event id.
    pub id: String,
    /// When the request arrived or the event was taken.
    #[serde(serialize_with = "rfc3339_micros")]
    pub start_time: chrono::DateTime<chrono::Utc>,
    /// The function's configured memory limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_limit_bytes: Option<u64>,
    /// What it used and how it ended, or why it did not run.
    #[serde(flatten)]
    pub outcome: LineOutcome,
    /// The HTTP status answered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_status: Option<u16>,
    /// The trigger's own fields.
    #[serde(flatten)]
    pub fields: serde_json::Map<String, Value>,
}

/// What a usage line records: an invocation that ran, or a refusal.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum LineOutcome {
    /// It ran: its usage and how it ended.
    Ran(UsageRecord),
    /// It was refused before it ran.
    Rejected(Rejected),
}

/// Why a request or event did not run.
#[derive(Debug, Clone, Serialize)]
pub struct Rejected {
    /// Always `rejected`.
    status: &'static str,
    /// The cause (`no_route`, `queue_full`, `setup`, ...).
    pub reason: &'static str,
}

/// The record of an invocation ended before it finished (its client
/// left, or the server exited): `status = "interrupted"`, `why` as its
/// error, and the figures known then.
pub fn interrupted(usage: wasmlet_runtime::Usage, why: &str) -> UsageRecord {
    UsageRecord {
        usage,
        status: "interrupted",
        exit_code: None,
        error: Some(why.into()),
    }
}

impl UsageLine {
    /// Whether it records an invocation that ran and succeeded.
    pub fn is_success(&self) -> bool {
        matches!(&self.outcome, LineOutcome::Ran(r) if r.success())
    }

    /// The line as one JSON object, without its newline.
    pub fn to_json(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(384);
        self.write_json(&mut b);
        b
    }

    /// Appends the line as one JSON object, without its newline, to `out`.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        // Strings, numbers and maps of JSON values: nothing here fails to
        // serialize.
        let _ = serde_json::to_writer(out, self);
    }
}

impl std::fmt::Display for UsageLine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&String::from_utf8_lossy(&self.to_json()))
    }
}

/// `start_time` as RFC 3339 in UTC with microseconds
/// (`2026-12-06T16:55:45.035319Z`), written digit by digit: chrono's
/// general formatter took half the time of writing a whole line.
fn rfc3339_micros<S: serde::Serializer>(
    t: &chrono::DateTime<chrono::Utc>,
    s: S,
) -> Result<S::Ok, S::Error> {
    use chrono::{Datelike, Timelike};
    let mut b = *b"0000-00-00T00:00:00.000000Z";
    let mut put = |at: usize, width: usize, mut n: u32| {
        for i in (at..at + width).rev() {
            b[i] = b'0' + (n % 10) as u8;
            n /= 10;
        }
    };
    let year = t.year();
    if !(0..=9999).contains(&year) {
        return s.collect_str(&t.format("%Y-%m-%dT%H:%M:%S%.6fZ"));
    }
    put(0, 4, year as u32);
    put(5, 2, t.month());
    put(8, 2, t.day());
    put(11, 2, t.hour());
    put(14, 2, t.minute());
    // A leap second's nanoseconds run past 10^9: it shows as :60, as
    // chrono writes it.
    let (sec, micros) = match t.nanosecond() / 1000 {
        m if m >= 1_000_000 => (t.second() + 1, m - 1_000_000),
        m => (t.second(), m),
    };
    put(17, 2, sec);
    put(20, 6, micros);
    // Only ASCII digits and separators were written.
    s.serialize_str(std::str::from_utf8(&b).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(function: Option<&str>) -> LineHead<'_> {
        LineHead {
            function,
            trigger: "http",
            id: "x1",
            start_time: chrono::DateTime::from_timestamp(0, 0).unwrap(),
            memory_limit_bytes: Some(1 << 20),
        }
    }

    fn exited(code: i32, gb: f64) -> UsageRecord {
        let mut usage = wasmlet_runtime::Usage::new(
            Duration::from_nanos(7),
            Duration::from_nanos(5),
            Some(9),
            1 << 20,
        );
        usage.gb_seconds = gb;
        UsageRecord {
            usage,
            status: "exited",
            exit_code: Some(code),
            error: None,
        }
    }

    fn line(f: &str, gb: f64) -> UsageLine {
        head(Some(f)).ran(exited(0, gb))
    }

    #[test]
    fn writes_whole_lines_rotates_and_counts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("u.jsonl");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let log = UsageLog::open(&path, 300).unwrap();
            for i in 0..20 {
                log.record(line("a", i as f64)).await;
            }
            log.record(head(None).rejected("no_route")).await;
            assert!(log.flush(Duration::from_secs(10)).await);
            let text = log.render();
            assert!(text.contains("wasmlet_usage_invocations_total{function=\"a\"} 20\n"));
            assert!(text.contains("wasmlet_usage_gb_seconds_total{function=\"a\"} 190\n"));
            assert!(text.contains("wasmlet_usage_rejected_total{function=\"-\"} 1\n"));
            assert!(text.contains("wasmlet_usage_log_healthy 1\n"));
        });
        let mut all = Vec::new();
        let mut files: Vec<PathBuf> = rotated_files(&path).into_iter().map(|f| f.1).collect();
        assert!(!files.is_empty(), "no rotation at 300 bytes");
        files.push(path.clone());
        for f in files {
            let text = std::fs::read_to_string(&f).unwrap();
            assert!(text.ends_with('\n'));
            for l in text.lines() {
                all.push(serde_json::from_str::<Value>(l).unwrap());
            }
        }
        assert_eq!(all.len(), 21);
    }

    #[test]
    fn start_time_is_rfc3339_micros_utc() {
        for (secs, nanos) in [
            (0, 0),
            (1_796_575_745, 35_319_999),
            (951_782_400, 999_999_999),
            (4_102_444_799, 1_000_000),
            (253_402_300_799, 5),
        ] {
            let t = chrono::DateTime::from_timestamp(secs, nanos).unwrap();
            let want = t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
            let mut line = head(None).ran(exited(0, 0.0));
            line.start_time = t;
            let got = serde_json::to_value(&line).unwrap();
            assert_eq!(got["start_time"], want);
        }
    }

    #[test]
    fn lines_are_written_in_order_and_read_back_alike() {
        let mut ran = head(Some("f")).ran(exited(0, 1.5));
        ran.http_status = Some(200);
        assert_eq!(
            String::from_utf8(ran.to_json()).unwrap(),
            r#"{"function":"f","trigger":"http","id":"x1","start_time":"1970-01-01T00:00:00.000000Z","memory_limit_bytes":1048576,"wall_time_ns":7,"cpu_time_ns":5,"fuel_consumed":9,"peak_memory_bytes":1048576,"gb_seconds":1.5,"status":"exited","exit_code":0,"http_status":200}"#
        );
        assert!(ran.is_success());
        assert!(is_success(&serde_json::from_slice(&ran.to_json()).unwrap()));
        let failed = head(Some("f")).ran(exited(3, 0.0));
        assert!(!failed.is_success());
        assert!(!is_success(
            &serde_json::from_slice(&failed.to_json()).unwrap()
        ));
        let mut rejected = head(None).rejected("no_route");
        rejected.fields.insert("file".into(), "a.txt".into());
        assert_eq!(
            rejected.to_string(),
            r#"{"function":null,"trigger":"http","id":"x1","start_time":"1970-01-01T00:00:00.000000Z","status":"rejected","reason":"no_route","file":"a.txt"}"#
        );
        assert!(!rejected.is_success());
        let trapped = head(Some("f")).ran(UsageRecord {
            status: "trapped",
            exit_code: None,
            error: Some("unreachable".into()),
            ..exited(0, 0.0)
        });
        let v: Value = serde_json::from_slice(&trapped.to_json()).unwrap();
        assert_eq!(v["error"], "unreachable");
        assert!(v.get("exit_code").is_none());
    }

    /// A log whose writer is not running: its queue, of `capacity`.
    fn stalled(capacity: usize) -> (UsageLog, mpsc::Receiver<Msg>) {
        let (tx, rx) = mpsc::channel(capacity);
        let log = UsageLog {
            tx,
            state: Arc::default(),
            path: PathBuf::from("stalled.jsonl"),
            flushes_queued: Arc::default(),
            waiting: Arc::default(),
        };
        (log, rx)
    }

    #[test]
    fn a_line_waiting_for_room_is_kept_when_its_caller_leaves() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let (log, mut rx) = stalled(1);
            log.record(line("a", 1.0)).await;
            assert_eq!(log.unwritten(), 1);
            // The queue is full: the caller waits, and is dropped (as a
            // request whose client leaves is).
            let waited =
                tokio::time::timeout(Duration::from_millis(20), log.record(line("b", 2.0))).await;
            assert!(waited.is_err(), "the queue had room");
            assert_eq!(log.unwritten(), 2);
            // A flush gives up at its limit, even with no room to queue.
            assert!(!log.flush(Duration::from_millis(20)).await);
            assert_eq!(log.unwritten(), 2);
            // Both lines reach the writer.
            let mut got = Vec::new();
            while got.len() < 2 {
                match rx.recv().await.unwrap() {
                    Msg::Line(l) => got.push(l.function.unwrap_or_default().to_string()),
                    Msg::Flush(_) => {
                        log.flushes_queued.fetch_sub(1, Ordering::SeqCst);
                    }
                }
            }
            assert_eq!(got, ["a", "b"]);
            tokio::task::yield_now().await;
            assert_eq!(log.unwritten(), 0);
        });
    }

    #[test]
    fn a_torn_last_line_is_cut_off_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("u.jsonl");
        let whole = "{\"function\":\"a\"}\n";
        std::fs::write(&path, format!("{whole}{{\"function\":\"a\",\"trig")).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let log = UsageLog::open(&path, 1 << 20).unwrap();
            log.record(line("b", 1.0)).await;
            assert!(log.flush(Duration::from_secs(10)).await);
        });
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert_eq!(lines[0], whole.trim_end());
        let v: Value = serde_json::from_str(lines[1]).unwrap();
        assert_eq!(v["function"], "b");
        // Nothing but a fragment: cut to nothing; a whole log: untouched.
        // (Each its own file: a log stays locked until its writer ends.)
        let path = dir.path().join("fragment.jsonl");
        std::fs::write(&path, "{\"fun").unwrap();
        drop(UsageLog::open(&path, 1 << 20).unwrap());
        assert_eq!(std::fs::read(&path).unwrap().len(), 0);
        let path = dir.path().join("whole.jsonl");
        std::fs::write(&path, whole).unwrap();
        drop(UsageLog::open(&path, 1 << 20).unwrap());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), whole);
    }
}
