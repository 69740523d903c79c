//! SIGINT and SIGTERM for a sandboxed `wasmlet run`: taken by one thread,
//! which ends the sandbox (kills its worker, removes its cgroups) and then
//! exits the way a shell expects (128 + the signal).

use anyhow::Context;
use std::sync::atomic::{AtomicBool, Ordering};

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

/// SIGINT and SIGTERM, blocked in every thread started after [`Signals::block`].
pub struct Signals {
    set: libc::sigset_t,
}

impl Signals {
    /// Blocks SIGINT and SIGTERM in the calling thread, and so in every
    /// thread it starts later. Call before any other thread exists.
    pub fn block() -> anyhow::Result<Signals> {
        // SAFETY: an all-zero sigset_t is a valid value to initialise with
        // sigemptyset; the pointers passed are to this local.
        let set = unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGINT);
            libc::sigaddset(&mut set, libc::SIGTERM);
            let rc = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
            if rc != 0 {
                anyhow::bail!(
                    "cannot block SIGINT/SIGTERM: {}",
                    std::io::Error::from_raw_os_error(rc)
                );
            }
            set
        };
        Ok(Signals { set })
    }

    /// Starts the thread that waits for either signal, runs `cleanup`, and
    /// exits with 128 + the signal's number.
    pub fn on_signal(self, cleanup: impl FnOnce() + Send + 'static) -> anyhow::Result<()> {
        std::thread::Builder::new()
            .name("wasmlet-signals".into())
            .spawn(move || {
                let mut sig = 0;
                // SAFETY: sigwait(3) on a sigset initialised in `block`,
                // writing the signal number into a local.
                let rc = unsafe { libc::sigwait(&self.set, &mut sig) };
                if rc == 0 {
                    EXITING.store(true, Ordering::Release);
                    cleanup();
                    std::process::exit(128 + sig);
                }
            })
            .map(drop)
            .context("cannot start the signal-handling thread")
    }
}
