//! SIGINT and SIGTERM: whatever a command is doing, it ends cleanly: the
//! temporary files it has registered are removed, the child processes it
//! has registered are killed, and it exits 130 (SIGINT) or 143 (SIGTERM),
//! as a shell reports a command killed by those signals.
//!
//! A thread waits for the signals (signal-hook's self-pipe; nothing runs in
//! the handler itself), so the cleanup is ordinary code. Dispositions are
//! reset by `exec`, so worker and compile processes start with the default
//! ones.

use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// What to undo if a signal ends the process.
struct Pending {
    files: Vec<PathBuf>,
    children: Vec<u32>,
}

static PENDING: Mutex<Pending> = Mutex::new(Pending {
    files: Vec::new(),
    children: Vec::new(),
});

fn pending() -> std::sync::MutexGuard<'static, Pending> {
    // A panic while holding the lock leaves plain data; keep using it.
    PENDING.lock().unwrap_or_else(|e| e.into_inner())
}

/// Starts the thread that ends the process on SIGINT or SIGTERM.
pub fn install() -> anyhow::Result<()> {
    let mut signals = Signals::new([SIGINT, SIGTERM])?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            if let Some(signal) = signals.forever().next() {
                cleanup();
                std::process::exit(128 + signal);
            }
        })?;
    Ok(())
}

fn cleanup() {
    let p = pending();
    for &pid in &p.children {
        // SAFETY: kill takes plain integers. The pid is a child of ours that
        // has not been reaped (it is unregistered before it is waited for),
        // so it names that child and no other process.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
    }
    for f in &p.files {
        let _ = std::fs::remove_file(f);
    }
}

/// A temporary file removed if a signal ends the process while this lives.
pub struct TempFileGuard(PathBuf);

impl TempFileGuard {
    pub fn new(path: &Path) -> Self {
        pending().files.push(path.to_path_buf());
        TempFileGuard(path.to_path_buf())
    }
}

impl Drop for TempFileGuard {
    fn drop(&mut self) {
        let mut p = pending();
        if let Some(i) = p.files.iter().position(|f| *f == self.0) {
            p.files.swap_remove(i);
        }
    }
}

/// A child process killed if a signal ends the process while this lives.
/// Drop it before reaping the child.
pub struct ChildGuard(u32);

impl ChildGuard {
    pub fn new(pid: u32) -> Self {
        pending().children.push(pid);
        ChildGuard(pid)
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let mut p = pending();
        if let Some(i) = p.children.iter().position(|c| *c == self.0) {
            p.children.swap_remove(i);
        }
    }
}
