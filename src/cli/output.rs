//! Where the CLI's results go: output files (`compile -o`, `snapshot -o`)
//! and lines on stdout and stderr.
//!
//! An output file is written to a temporary file beside it and renamed into
//! place, so readers never see half of it, but only over a regular file (or
//! nothing): a character device or a FIFO (`/dev/stdout`, `/dev/null`, a
//! named pipe) is written through, and anything else (a directory, a block
//! device, a socket) is refused. New files get the usual `0666 & !umask`.
//! Temporary files are removed if a signal ends the command, and ones left
//! by a killed wasmlet (older than [`STALE_AFTER`]) by the next write to the
//! same directory.

use super::signals::TempFileGuard;
use anyhow::{Context, bail};
use std::fs::Permissions;
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

/// Prefix of our temporary files: how stale ones are recognized.
pub const TEMP_PREFIX: &str = ".wasmlet-tmp-";
/// Age after which a temporary file of ours is taken as left behind.
pub const STALE_AFTER: Duration = Duration::from_secs(60 * 60);

/// Writes `bytes` to `path` (see the module doc for what `path` may be).
pub fn write_output(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let display = path.display();
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() => write_atomically(path, bytes),
        Ok(m) if m.file_type().is_char_device() || m.file_type().is_fifo() => {
            std::fs::OpenOptions::new()
                .write(true)
                .open(path)
                .and_then(|mut f| f.write_all(bytes))
                .with_context(|| format!("cannot write {display}"))
        }
        Ok(m) => bail!(
            "refusing to write {display}: it is {}, not a regular file",
            kind(&m.file_type())
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => write_atomically(path, bytes),
        Err(e) => Err(e).with_context(|| format!("cannot write {display}")),
    }
}

fn kind(t: &std::fs::FileType) -> &'static str {
    if t.is_dir() {
        "a directory"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_socket() {
        "a socket"
    } else {
        "a special file"
    }
}

/// Writes `bytes` to `path` through a temporary file and a rename, so a
/// failure leaves nothing behind and readers never see half a file.
fn write_atomically(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(".".as_ref());
    remove_stale_temp_files(dir);
    // The mode is passed to open(2), which applies the umask.
    let mut tmp = tempfile::Builder::new()
        .prefix(TEMP_PREFIX)
        .permissions(Permissions::from_mode(0o666))
        .tempfile_in(dir)
        .with_context(|| format!("cannot write into {}", dir.display()))?;
    let _guard = TempFileGuard::new(tmp.path());
    tmp.write_all(bytes)
        .with_context(|| format!("cannot write {}", path.display()))?;
    tmp.persist(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// Removes our temporary files in `dir` older than [`STALE_AFTER`]: ones a
/// killed wasmlet left. Best effort: errors are ignored.
pub fn remove_stale_temp_files(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let now = SystemTime::now();
    for entry in entries.flatten() {
        if !entry
            .file_name()
            .as_encoded_bytes()
            .starts_with(TEMP_PREFIX.as_bytes())
        {
            continue;
        }
        let Ok(meta) = entry.metadata() else { continue };
        let old = meta
            .modified()
            .ok()
            .and_then(|t| now.duration_since(t).ok())
            .is_some_and(|age| age > STALE_AFTER);
        if meta.is_file() && old {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// Prints a line on stdout. If nobody reads stdout any more (EPIPE), the
/// process ends as Unix tools do: killed by SIGPIPE, quietly.
pub fn println(line: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match writeln!(out, "{line}").and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => die_of_sigpipe(),
        r => r.context("cannot write to stdout"),
    }
}

/// Log lines held back by [`hold_log`], or `None` when they go straight
/// to stderr.
static HELD_LOG: Mutex<Option<Vec<u8>>> = Mutex::new(None);

fn held_log() -> std::sync::MutexGuard<'static, Option<Vec<u8>>> {
    HELD_LOG.lock().unwrap_or_else(|e| e.into_inner())
}

/// Where log lines (tracing's output) go: stderr, unless held back.
pub struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match held_log().as_mut() {
            Some(held) => {
                held.extend_from_slice(buf);
                Ok(buf.len())
            }
            None => std::io::stderr().write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// Holds log lines back until [`release_log`]: for a step whose warnings
/// may be said again by a child doing the same step.
pub fn hold_log() {
    *held_log() = Some(Vec::new());
}

/// Ends [`hold_log`]: the held lines are written to stderr if `emit`, else
/// dropped.
pub fn release_log(emit: bool) {
    let held = held_log().take().unwrap_or_default();
    if emit {
        let _ = std::io::stderr().write_all(&held);
    }
}

/// Prints a line on stderr; if stderr is gone there is nobody to tell.
pub fn eprintln(line: &str) {
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

/// How long a command with a timeout may take to write its last words
/// (results, the error line, the usage record) once the guest has ended.
pub const FINAL_OUTPUT_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

/// Ends the process with `code` if it is still running `grace` from now:
/// a reader that never reads (a full pipe or socket on stdout or stderr)
/// must not keep a command past its timeout with its final writes.
pub fn exit_after(grace: std::time::Duration, code: u8) {
    let spawned = std::thread::Builder::new()
        .name("output-deadline".into())
        .spawn(move || {
            std::thread::sleep(grace);
            // SAFETY: _exit ends the process at once without running
            // anything else (no atexit handlers, no stdio flush that could
            // block again on the same reader).
            unsafe { libc::_exit(code as i32) }
        });
    if let Err(e) = spawned {
        tracing::debug!("no deadline for the final output: {e}");
    }
}

fn die_of_sigpipe() -> ! {
    // SAFETY: resetting SIGPIPE to its default and raising it are plain
    // system calls; Rust set it to SIG_IGN at start-up, and from here on
    // the process is meant to end.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        libc::raise(libc::SIGPIPE);
    }
    // Not reached: the default action of SIGPIPE ends the process.
    std::process::exit(128 + libc::SIGPIPE)
}
