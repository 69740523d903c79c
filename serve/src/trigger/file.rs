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
//!
//! **What is not an event.** Only regular files are read: a symbolic link
//! (whatever it points to), a subdirectory or a device dropped into `DIR` is
//! never read, never moved, and a warning is logged. A name longer than
//! 224 bytes is shortened (a prefix, `~`, a hash) in `done/` and `failed/`. A file whose name is not
//! UTF-8 cannot be named in `WASMLET_FILE_NAME`: it is left in place with a
//! warning. A hard link made in `DIR` (`link(2)`, no write, no rename) is
//! not seen until the next start's scan: rename files in.
//!
//! **Where `DIR` may be.** [`check_dirs`] refuses, at start, a `DIR` that is
//! not a directory, that holds the manifest, a module or the usage log (they
//! would be taken as events and moved away), or that another file trigger
//! watches too (each file would be processed twice).

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
        self.state.join(progress_name(name))
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
            .filter_map(|e| {
                let n = e.file_name().into_string();
                if let Err(n) = &n {
                    tracing::warn!("{:?}: the file name is not UTF-8; it is left in place", n);
                }
                n.ok()
            })
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

/// Longest name kept as it is where a suffix (`.json`, `.N`, `.error`)
/// is added; a longer one becomes a prefix of it and a hash of the whole.
const MAX_KEPT_NAME: usize = 224;

/// `name`, or for a long one, its first 200 bytes (or fewer, on a UTF-8
/// boundary), `~` and a hash of the whole: short enough for the suffixes
/// added to it.
fn short_name(name: &str) -> std::borrow::Cow<'_, str> {
    if name.len() <= MAX_KEPT_NAME {
        return name.into();
    }
    let mut cut = 200;
    while !name.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}~{:016x}", &name[..cut], fnv1a(name.as_bytes())).into()
}

/// The state file's name for the file `name`.
fn progress_name(name: &str) -> String {
    format!("{}.json", short_name(name))
}

/// FNV-1a, 64 bits: a hash that stays the same across builds (state files
/// outlive the binary that wrote them).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Refuses file-trigger directories that cannot work (see the module's
/// "Where `DIR` may be"): each is created and compared, symbolic links
/// resolved, with the directories of the manifest, the modules, the usage
/// log `usage_log` and the other file triggers; then its `done/`,
/// `failed/` and `.wasmlet/` are created.
pub(crate) fn check_dirs(
    manifest: &crate::manifest::Manifest,
    usage_log: &Path,
) -> Result<(), String> {
    let parent = |p: &Path| {
        p.parent()
            .filter(|d| !d.as_os_str().is_empty())
            .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
    };
    let mut watched: Vec<(PathBuf, String, &FileSpec)> = Vec::new();
    for f in &manifest.functions {
        for t in &f.events {
            if let crate::manifest::EventTrigger::File(spec) = t {
                let label = format!("function `{}` trigger `{}`", f.name, spec.name);
                let real = std::fs::create_dir_all(&spec.dir)
                    .and_then(|()| std::fs::canonicalize(&spec.dir))
                    .map_err(|e| format!("{label}: directory {}: {e}", spec.dir.display()))?;
                watched.push((real, label, spec));
            }
        }
    }
    let mut held = vec![
        (parent(&manifest.path), "the manifest".to_string()),
        (parent(usage_log), "the usage log".into()),
    ];
    for f in &manifest.functions {
        held.push((
            parent(&f.module),
            format!("the module of function `{}`", f.name),
        ));
    }
    for (i, (dir, label, spec)) in watched.iter().enumerate() {
        let holds = |d: &PathBuf| std::fs::canonicalize(d).is_ok_and(|d| d == *dir);
        if let Some((_, what)) = held.iter().find(|(d, _)| holds(d)) {
            return Err(format!(
                "{label}: directory {} holds {what}, which would be taken as an event: watch a directory of its own",
                spec.dir.display()
            ));
        }
        if let Some((_, other, _)) = watched[..i].iter().find(|(d, _, _)| d == dir) {
            return Err(format!(
                "{label}: directory {} is watched by {other} too: each file would be processed twice",
                spec.dir.display()
            ));
        }
        Dirs::new(dir)
            .create()
            .map_err(|e| format!("{label}: directory {}: {e}", spec.dir.display()))?;
    }
    Ok(())
}

/// The trigger task.
pub(crate) async fn run(ctx: Ctx, spec: FileSpec) {
    let label = format!("function `{}` trigger `{}`", ctx.function, ctx.trigger);
    // The watcher names files under the path it watches: a canonical one
    // (absolute, no `.`, no symbolic link) so that names compare equal.
    let created = Dirs::new(&spec.dir)
        .create()
        .and_then(|()| std::fs::canonicalize(&spec.dir));
    let dirs = match created {
        Ok(real) => Arc::new(Dirs::new(&real)),
        Err(e) => {
            tracing::error!("{label}: cannot create {}: {e}", spec.dir.display());
            return;
        }
    };
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
                    && let Some(n) = p.file_name()
                {
                    match n.to_str() {
                        Some(n) if taken(n) => {
                            let _ = tx.send(Some(n.to_string()));
                        }
                        Some(_) => {}
                        None => tracing::warn!(
                            "{}: the file name is not UTF-8; it is left in place",
                            p.display()
                        ),
                    }
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
    let progress_names: HashSet<String> = waiting.iter().map(|n| progress_name(n)).collect();
    for e in std::fs::read_dir(&dirs.state)
        .into_iter()
        .flatten()
        .flatten()
    {
        let n = e.file_name().to_string_lossy().into_owned();
        if !progress_names.contains(&n) {
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
        let meta = match std::fs::symlink_metadata(&path) {
            Ok(m) if m.is_file() => m,
            Ok(_) => {
                tracing::warn!(function = %ctx.function, trigger = %ctx.trigger,
                    "{name}: not a regular file (a symbolic link?): not read, left in place");
                return;
            }
            // Already moved (a duplicate event).
            Err(_) => return,
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
        let read = tokio::task::spawn_blocking(move || read_regular(&reading))
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

/// The bytes of the regular file at `path`, never through a symbolic link
/// (swapped in after the check, say).
fn read_regular(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)?;
    if !f.metadata()?.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    let mut bytes = Vec::new();
    f.read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// Moves a file to its outcome: `done/`, or `failed/` with its `.error`.
fn outcome(ctx: &Ctx, dirs: &Dirs, name: &str, result: Result<(), &str>) {
    let into = match result {
        Ok(()) => &dirs.done,
        Err(_) => &dirs.failed,
    };
    let dest = free_name(into, name, result.is_err());
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
        Err(e) if !dirs.watched.join(name).exists() => {
            // Deleted or renamed away while it was processed: nothing
            // left to move.
            let _ = std::fs::remove_file(dirs.progress_path(name));
            tracing::warn!(function = %ctx.function, trigger = %ctx.trigger,
                "{name}: gone from {} before its outcome ({e}); nothing moved",
                dirs.watched.display());
        }
        Err(e) => tracing::error!(
            function = %ctx.function,
            "cannot move {name} into {}: {e}; it stays for the next start",
            into.display()
        ),
    }
}

/// `dir/name`, or `dir/name.N` for the first N free when a file of that
/// name is already there (the same name dropped again later); with
/// `error`, `NAME.error` beside it must be free too (it may be an earlier
/// file's data, not to be overwritten).
fn free_name(dir: &Path, name: &str, error: bool) -> PathBuf {
    let free = |p: &PathBuf| {
        let mut e = p.as_os_str().to_owned();
        e.push(".error");
        p.symlink_metadata().is_err() && (!error || Path::new(&e).symlink_metadata().is_err())
    };
    let name = short_name(name);
    let first = dir.join(&*name);
    if free(&first) {
        return first;
    }
    (1u64..)
        .map(|n| dir.join(format!("{name}.{n}")))
        .find(free)
        .unwrap_or(first)
}
