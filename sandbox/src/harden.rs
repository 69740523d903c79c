//! What a sandbox worker's process gets between `fork` and `exec` (must be
//! async-signal-safe: raw system calls only). The rest of its confinement
//! it builds itself after `exec`: see `jail.rs` and `seccomp.rs`.

use std::io;
use std::os::fd::RawFd;

/// The fd the worker finds its supervisor socket on.
pub(crate) const WORKER_SOCKET_FD: RawFd = 3;
/// Largest core dump a worker may write: none.
const RLIMIT_CORE_BYTES: u64 = 0;

/// Runs in the child between fork and exec: joins the sandbox's cgroups
/// (so nothing the worker runs is ever outside them), drops the ability to
/// gain privileges, dies with its supervisor, and keeps only stdio and the
/// socket.
///
/// # Safety
/// Must only be called in a freshly forked child, before exec. It makes only
/// async-signal-safe system calls and touches no heap memory besides reading
/// `cgroup_procs`, which was allocated before the fork.
pub(crate) unsafe fn in_child(cgroup_procs: &[RawFd], socket: RawFd) -> io::Result<()> {
    let check = |rc: libc::c_long| {
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    };
    // SAFETY: plain system calls on fds and values owned by this child; none
    // of them allocates or takes a lock.
    unsafe {
        for &fd in cgroup_procs {
            // "0" moves the writer itself: this thread (v1 `tasks`), which
            // is the whole process, as a forked child has one thread.
            if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                return Err(io::Error::last_os_error());
            }
        }
        check(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) as _)?;
        check(libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) as _)?;
        let core = libc::rlimit {
            rlim_cur: RLIMIT_CORE_BYTES,
            rlim_max: RLIMIT_CORE_BYTES,
        };
        check(libc::setrlimit(libc::RLIMIT_CORE, &core) as _)?;
        check(libc::dup2(socket, WORKER_SOCKET_FD) as _)?;
        // Close everything else; where close_range is missing (Linux < 5.9),
        // O_CLOEXEC (the std default) still closes our own fds at exec.
        libc::syscall(libc::SYS_close_range, WORKER_SOCKET_FD + 1, u32::MAX, 0);
    }
    Ok(())
}
