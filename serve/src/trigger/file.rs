//! The file trigger: each complete file that appears in a watched directory
//! is one event.
//!
//! ```text
//!  DIR/           watched (inotify through `notify`, not recursive):
//!                 a file closed after writing, or renamed in, is an event;
//!                 names starting with `.` are ignored
//!  DIR/done/      files whose function exited 0
//!  DIR/failed/    files that failed every attempt, with NAME.error beside
//!  DIR/.wasmlet/  NAME.json per file in progress: attempts so far and the
//!                 last error
//! ```
//!
//! An event: the attempt is counted in `NAME.json` (written atomically)
//! *before* the function runs, with the file's bytes on stdin and
//! `WASMLET_TRIGGER` and `WASMLET_FILE_NAME` in its environment. Exit 0:
//! the file is renamed into `done/`. Anything else (an exit code, a trap, a
//! limit): retried after `backoff`, doubled each time, until `retries`
//! retries have failed; then `failed/NAME.error` is written (the reason,
//! with the tail of stderr) and the file renamed into `failed/`. The state
//! file goes last.
//!
//! **Guarantee.** Execution is at least once, the outcome exactly once: a
//! file stays in `DIR` until its outcome is one rename, so whatever kills
//! the server (SIGKILL included), at the next start the files still in
//! `DIR` are taken again (a scan before watching) and every file ends in
//! `done/` or `failed/` exactly once. A function may therefore run again
//! for a file whose run was cut off: make it idempotent. An attempt cut off
//! by a crash counts as an attempt, so a file that keeps killing the server
//! still ends in `failed/`. Only complete files are taken: write a file in
//! one open-write-close, or write it elsewhere and rename it in (a file
//! still being written when the server starts is taken as it is then).

use super::schedule::write_atomic;
use super::{Ctx, Event, invoke};
use crate::manifest::FileSpec;
use notify::event::{AccessKind, AccessMode, ModifyKind, RenameMode};
use notify::{EventKind, RecursiveMode, Watcher};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;

/// Subdirectory of files done.
pub const DONE_DIR: &str = "done";
/// Subdirectory of files failed.
pub const FAILED_DIR: &str = "failed";
/// Subdirectory of the per-file state.
pub const STATE_DIR: &str = ".wasmlet";
/// Longest wait between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// Files processed at once at most, whatever the function's concurrency.
const MAX_PARALLEL: u32 = 64;

/// A file's progress, in `.wasmlet/NAME.json`.
#[derive(Default, serde::Serialize, serde::Deserialize)]
struct Progress {
    attempts: u32,
    last_error: Option<String>,
}

struct Dirs {
    watched: PathBuf,
    done: PathBuf,
    failed: PathBuf,
    state: PathBuf,
}

impl Dirs {
    fn new(watched: &Path) -> Dirs {
        Dirs {
            watched: watched.to_path_buf(),
            done: watched.join(DONE_DIR),
            failed: watched.join(FAILED_DIR),
            state: watched.join(STATE_DIR),
        }
    }

    fn create(&self) -> std::io::Result<()> {
        for d in [&self.watched, &self.done, &self.failed, &self.state] {
            std::fs::create_dir_all(d)?;
        }
        Ok(())
    }

    fn progress_path(&self, name: &str) -> PathBuf {
        self.state.join(format!("{name}.json"))
    }

    fn progress(&self, name: &str) -> Progress {
        std::fs::read(self.progress_path(name))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    fn save(&self, name: &str, p: &Progress) -> std::io::Result<()> {
        write_atomic(
            &self.progress_path(name),
            &serde_json::to_vec(p).unwrap_or_default(),
        )
    }

    /// The regular files waiting in the watched directory, by name.
    fn waiting(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(&self.watched)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| taken(n))
            .collect();
        names.sort();
        names
    }
}

/// Whether a name in the watched directory is an event's.
fn taken(name: &str) -> bool {
    !name.starts_with('.')
}

/// The trigger task.
pub(crate) async fn run(ctx: Ctx, spec: FileSpec) {
    let label = format!("function `{}` trigger `{}`", ctx.function, ctx.trigger);
    let dirs = Arc::new(Dirs::new(&spec.dir));
    if let Err(e) = dirs.create() {
        tracing::error!("{label}: cannot create {}: {e}", spec.dir.display());
        return;
    }
    let (tx, mut rx) = mpsc::unbounded_channel::<Option<String>>();
    let watched = dirs.watched.clone();
    let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        match res {
            Ok(ev) if ev.need_rescan() => {
                let _ = tx.send(None);
            }
            Ok(ev) => {
                let complete = matches!(
                    ev.kind,
                    EventKind::Access(AccessKind::Close(AccessMode::Write))
                        | EventKind::Modify(ModifyKind::Name(RenameMode::To | RenameMode::Both))
                );
                // A rename within or into the directory: its last path is
                // the new name.
                let path = ev.paths.last();
                if complete
                    && let Some(p) = path
                    && p.parent() == Some(watched.as_path())
                    && let Some(n) = p.file_name().and_then(|n| n.to_str())
                    && taken(n)
                {
                    let _ = tx.send(Some(n.to_string()));
                }
            }
            Err(e) => {
                tracing::warn!("file watcher: {e}; rescanning");
                let _ = tx.send(None);
            }
        }
    });
    let mut watcher = match watcher {
        Ok(w) => w,
        Err(e) => {
            tracing::error!("{label}: cannot watch {}: {e}", spec.dir.display());
            return;
        }
    };
    if let Err(e) = watcher.watch(&dirs.watched, RecursiveMode::NonRecursive) {
        tracing::error!("{label}: cannot watch {}: {e}", spec.dir.display());
        return;
    }
    // Progress of files no longer waiting (their outcome was renamed, then
    // the server stopped) is stale.
    let waiting: HashSet<String> = dirs.waiting().into_iter().collect();
    for e in std::fs::read_dir(&dirs.state)
        .into_iter()
        .flatten()
        .flatten()
    {
        let n = e.file_name().to_string_lossy().into_owned();
        let stale = match n.strip_suffix(".json") {
            Some(f) => !waiting.contains(f),
            None => true,
        };
        if stale {
            let _ = std::fs::remove_file(e.path());
        }
    }
    let parallel = ctx
        .shared
        .current()
        .functions
        .iter()
        .find(|f| f.spec.name == ctx.function)
        .map_or(1, |f| f.spec.limits.max_concurrency)
        .clamp(1, MAX_PARALLEL);
    let permits = Arc::new(Semaphore::new(parallel as usize));
    let active: Arc<Mutex<HashSet<String>>> = Arc::default();
    let spec = Arc::new(spec);
    let mut tasks = JoinSet::new();
    let mut stop = ctx.stop.clone();
    // Files there before the watch started, then every event.
    let mut backlog: Vec<String> = waiting.into_iter().collect();
    backlog.sort();
    tracing::info!(
        "{label}: watching {} ({} file(s) waiting)",
        dirs.watched.display(),
        backlog.len()
    );
    loop {
        for name in backlog.drain(..) {
            if !active
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(name.clone())
            {
                continue;
            }
            let (ctx, dirs, spec, active, permits) = (
                ctx.clone(),
                dirs.clone(),
                spec.clone(),
                active.clone(),
                permits.clone(),
            );
            tasks.spawn(async move {
                if let Ok(_permit) = permits.acquire().await {
                    process(&ctx, &dirs, &spec, &name).await;
                }
                active
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&name);
            });
        }
        while tasks.try_join_next().is_some() {}
        tokio::select! {
            got = rx.recv() => match got {
                Some(Some(name)) => backlog.push(name),
                Some(None) => backlog = dirs.waiting(),
                None => break,
            },
            _ = stop.changed() => break,
        }
    }
    drop(watcher);
    // Events in progress finish their attempt (bounded by the drain
    // timeout of the caller); waiting ones stay in DIR for the next start.
    while tasks.join_next().await.is_some() {}
}

/// Takes one file to its outcome (or leaves it in place when the server
/// stops between attempts).
async fn process(ctx: &Ctx, dirs: &Dirs, spec: &FileSpec, name: &str) {
    let path = dirs.watched.join(name);
    let max_attempts = spec.retries.saturating_add(1);
    loop {
        if ctx.stopping() {
            return;
        }
        let mut progress = dirs.progress(name);
        let meta = match std::fs::metadata(&path) {
            Ok(m) if m.is_file() => m,
            // Already moved (a duplicate event) or not a file.
            _ => return,
        };
        if progress.attempts >= max_attempts {
            let why = progress
                .last_error
                .unwrap_or_else(|| "every attempt failed".into());
            outcome(ctx, dirs, name, Err(&why));
            return;
        }
        if meta.len() > spec.max_size {
            let why = format!(
                "the file is {} bytes, more than the trigger's max_size of {} bytes",
                meta.len(),
                spec.max_size
            );
            outcome(ctx, dirs, name, Err(&why));
            return;
        }
        let reading = path.clone();
        let read = tokio::task::spawn_blocking(move || std::fs::read(reading))
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())));
        let bytes = match read {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(e) => {
                outcome(ctx, dirs, name, Err(&format!("cannot read the file: {e}")));
                return;
            }
        };
        progress.attempts += 1;
        let attempt = progress.attempts;
        progress.last_error = Some(format!(
            "the server stopped during attempt {attempt} (killed or crashed)"
        ));
        if let Err(e) = dirs.save(name, &progress) {
            // Without the count, a crash could retry it forever: wait.
            tracing::error!("file trigger state for {name}: {e}; retrying later");
            tokio::time::sleep(spec.backoff).await;
            continue;
        }
        let mut fields = serde_json::Map::new();
        fields.insert("file".into(), name.into());
        fields.insert("attempt".into(), attempt.into());
        let event = Event {
            env: vec![("WASMLET_FILE_NAME".into(), name.to_string())],
            stdin: bytes.into(),
            fields,
        };
        match invoke(ctx, event).await {
            Ok(()) => {
                outcome(ctx, dirs, name, Ok(()));
                return;
            }
            Err(why) => {
                progress.last_error = Some(format!("attempt {attempt}: {why}"));
                if let Err(e) = dirs.save(name, &progress) {
                    tracing::error!("file trigger state for {name}: {e}");
                }
                if attempt >= max_attempts {
                    outcome(ctx, dirs, name, Err(&format!("attempt {attempt}: {why}")));
                    return;
                }
                let wait = spec
                    .backoff
                    .saturating_mul(1u32 << (attempt - 1).min(20))
                    .min(MAX_BACKOFF);
                let mut stop = ctx.stop.clone();
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = stop.changed() => return,
                }
            }
        }
    }
}

/// Moves a file to its outcome: `done/`, or `failed/` with its `.error`.
fn outcome(ctx: &Ctx, dirs: &Dirs, name: &str, result: Result<(), &str>) {
    let into = match result {
        Ok(()) => &dirs.done,
        Err(_) => &dirs.failed,
    };
    let dest = free_name(into, name);
    let moved = (|| -> std::io::Result<()> {
        if let Err(why) = result {
            let mut error = dest.as_os_str().to_owned();
            error.push(".error");
            write_atomic(Path::new(&error), format!("{why}\n").as_bytes())?;
        }
        std::fs::rename(dirs.watched.join(name), &dest)?;
        std::fs::File::open(into)?.sync_all()
    })();
    match moved {
        Ok(()) => {
            let _ = std::fs::remove_file(dirs.progress_path(name));
            match result {
                Ok(()) => {
                    tracing::debug!(function = %ctx.function, trigger = %ctx.trigger, "{name}: done")
                }
                Err(why) => {
                    tracing::warn!(function = %ctx.function, trigger = %ctx.trigger, "{name}: failed: {why}")
                }
            }
        }
        Err(e) => tracing::error!(
            function = %ctx.function,
            "cannot move {name} into {}: {e}; it stays for the next start",
            into.display()
        ),
    }
}

/// `dir/name`, or `dir/name.N` for the first N free when a file of that
/// name is already there (the same name dropped again later).
fn free_name(dir: &Path, name: &str) -> PathBuf {
    let first = dir.join(name);
    if !first.exists() {
        return first;
    }
    (1u64..)
        .map(|n| dir.join(format!("{name}.{n}")))
        .find(|p| !p.exists())
        .unwrap_or(first)
}
