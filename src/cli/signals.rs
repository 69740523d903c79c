//! SIGINT, SIGTERM and SIGHUP (a closed terminal): whatever a command is
//! doing, it ends cleanly: the temporary files it has registered are
//! removed, the child processes it has registered are killed, and it exits
//! 130 (SIGINT), 143 (SIGTERM) or 129 (SIGHUP), as a shell reports a
//! command killed by those signals.
//!
//! A thread waits for the signals (signal-hook's self-pipe; nothing runs in
//! the handler itself), so the cleanup is ordinary code. Dispositions are
//! reset by `exec`, so worker and compile processes start with the default
//! ones.

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals as HookSignals;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

/// What to undo if a signal ends the process.
struct Pending {
    files: Vec<PathBuf>,
    children: Vec<u32>,
}

/// Run first when a signal ends the process (a sandbox's shutdown).
type OnExit = Box<dyn FnOnce() + Send>;
static ON_EXIT: Mutex<Option<OnExit>> = Mutex::new(None);

static PENDING: Mutex<Pending> = Mutex::new(Pending {
    files: Vec::new(),
    children: Vec::new(),
});

fn pending() -> std::sync::MutexGuard<'static, Pending> {
    // A panic while holding the lock leaves plain data; keep using it.
    PENDING.lock().unwrap_or_else(|e| e.into_inner())
}

/// Starts the thread that ends the process on SIGINT, SIGTERM or SIGHUP.
pub fn install() -> anyhow::Result<()> {
    let mut signals = HookSignals::new([SIGINT, SIGTERM, SIGHUP])?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            if let Some(signal) = signals.forever().next() {
                EXITING.store(true, Ordering::Release);
                let shutdown = ON_EXIT.lock().unwrap_or_else(|e| e.into_inner()).take();
                if let Some(shutdown) = shutdown {
                    shutdown();
                }
                cleanup();
                std::process::exit(128 + signal);
            }
        })?;
    Ok(())
}

/// Removes the registered temporary files and kills the registered
/// children (also run by the sandbox's signal thread).
pub fn cleanup() {
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

// A sandboxed `wasmlet run` blocks SIGINT and SIGTERM in every thread it
// starts (so no worker-facing thread is interrupted) and registers the
// sandbox's shutdown (kill its worker, remove its cgroups), which the signal
// thread runs before the cleanup above.

/// Set once a signal is being handled: the process is about to exit.
static EXITING: AtomicBool = AtomicBool::new(false);

/// Whether a signal is ending the process. The main thread then must not
/// report the failure the cleanup causes: it waits to be ended.
pub fn wait_if_exiting() {
    if EXITING.load(Ordering::Acquire) {
        loop {
            std::thread::park();
        }
    }
}

/// SIGINT, SIGTERM and SIGHUP, blocked in every thread started after [`Signals::block`].
pub struct Signals(());

impl Signals {
    /// Blocks SIGINT, SIGTERM and SIGHUP in the calling thread, and so in every
    /// thread it starts later. Call before any other thread exists.
    pub fn block() -> anyhow::Result<Signals> {
        // SAFETY: an all-zero sigset_t is a valid value to initialise with
        // sigemptyset; the pointers passed are to this local.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGINT);
            libc::sigaddset(&mut set, libc::SIGTERM);
            libc::sigaddset(&mut set, libc::SIGHUP);
            let rc = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
            if rc != 0 {
                anyhow::bail!(
                    "cannot block SIGINT/SIGTERM/SIGHUP: {}",
                    std::io::Error::from_raw_os_error(rc)
                );
            }
        }
        Ok(Signals(()))
    }

    /// Registers `cleanup` to run when either signal arrives, before the
    /// process exits with 128 + the signal's number.
    pub fn on_signal(self, cleanup: impl FnOnce() + Send + 'static) -> anyhow::Result<()> {
        // The signal thread `install` started (before the mask, so it
        // still receives both signals) runs this before its own cleanup.
        *ON_EXIT.lock().unwrap_or_else(|e| e.into_inner()) = Some(Box::new(cleanup));
        Ok(())
    }
}
