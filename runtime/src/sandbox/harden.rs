//! Hardening of sandbox workers: what happens between `fork` and `exec`
//! (must be async-signal-safe: raw system calls only), and the seccomp
//! filter a worker installs on itself before it handles any request.

use std::collections::BTreeMap;
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
            // "0" moves the writing process itself.
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

/// System calls a worker never needs, and a compromised one would want:
/// running programs, new processes (threads are allowed), namespaces,
/// mounts, tracing, kernel modules and keys, raw sockets, and changing the
/// clock. A call to one kills the worker (SIGSYS), which the supervisor
/// reports. A deny-list, not an allow-list: wasmtime, cranelift and WASI use
/// a wide and version-dependent set of calls that an allow-list would have
/// to chase; these are the ones with no business in a worker.
const DENIED: &[libc::c_long] = &[
    libc::SYS_execve,
    libc::SYS_execveat,
    libc::SYS_fork,
    libc::SYS_vfork,
    libc::SYS_ptrace,
    libc::SYS_process_vm_readv,
    libc::SYS_process_vm_writev,
    libc::SYS_mount,
    libc::SYS_umount2,
    libc::SYS_pivot_root,
    libc::SYS_chroot,
    libc::SYS_unshare,
    libc::SYS_setns,
    libc::SYS_reboot,
    libc::SYS_kexec_load,
    libc::SYS_kexec_file_load,
    libc::SYS_init_module,
    libc::SYS_finit_module,
    libc::SYS_delete_module,
    libc::SYS_bpf,
    libc::SYS_perf_event_open,
    libc::SYS_keyctl,
    libc::SYS_add_key,
    libc::SYS_request_key,
    libc::SYS_userfaultfd,
    libc::SYS_open_by_handle_at,
    libc::SYS_name_to_handle_at,
    libc::SYS_swapon,
    libc::SYS_swapoff,
    libc::SYS_acct,
    libc::SYS_settimeofday,
    libc::SYS_clock_settime,
    libc::SYS_adjtimex,
    libc::SYS_syslog,
    libc::SYS_iopl,
    libc::SYS_ioperm,
    libc::SYS_socket,
    libc::SYS_connect,
    libc::SYS_bind,
    libc::SYS_listen,
];

/// Installs the filter on the calling process (all its threads).
pub(crate) fn install_seccomp() -> Result<(), String> {
    use seccompiler::{SeccompAction, SeccompFilter, TargetArch};
    let rules: BTreeMap<i64, Vec<seccompiler::SeccompRule>> =
        DENIED.iter().map(|&nr| (nr, vec![])).collect();
    let arch = TargetArch::try_from(std::env::consts::ARCH).map_err(|e| e.to_string())?;
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::KillProcess,
        arch,
    )
    .map_err(|e| e.to_string())?;
    let program: seccompiler::BpfProgram = filter
        .try_into()
        .map_err(|e: seccompiler::BackendError| e.to_string())?;
    seccompiler::apply_filter_all_threads(&program).map_err(|e| e.to_string())
}
