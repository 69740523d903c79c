//! The worker's system-call allow-list, in the manner of Firecracker's:
//! only the calls a worker was recorded making (with `strace -f` over the
//! sandbox tests: the main thread, the invocation threads, the epoch ticker
//! and wasmtime-wasi's tokio threads) are allowed, some only with the
//! arguments it uses; any other call kills the whole worker
//! (`SECCOMP_RET_KILL_PROCESS`, seen by the supervisor as SIGSYS). A few
//! calls a library probes and then does without are answered with an
//! error instead.
//!
//! The filter is installed after the jail is built and before any thread
//! starts or tenant code exists, so every thread runs under it. This is the
//! one file to review when the worker's needs change; each entry says why
//! it is here. (x86_64 and aarch64 numbers come from `libc`; a call that
//! does not exist on an architecture is simply absent there.)

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen as Len, SeccompCmpOp as Op, SeccompCondition,
    SeccompFilter, SeccompRule, TargetArch,
};
use std::collections::BTreeMap;

/// `PAGEMAP_SCAN` on `/proc/self/pagemap`: `_IOWR('f', 16, struct
/// pm_scan_arg)` (96 bytes), which wasmtime's pooling allocator uses to
/// find the pages an instance dirtied.
const PAGEMAP_SCAN: u64 = 0xc060_6610;

/// Namespace-creating and process-creating `clone` flags: none may be set.
const CLONE_FORBIDDEN: u64 = (libc::CLONE_NEWNS
    | libc::CLONE_NEWCGROUP
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUSER
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET
    | libc::CLONE_VFORK
    | libc::CLONE_PARENT
    | libc::CLONE_PTRACE
    | libc::CLONE_UNTRACED
    | libc::CLONE_PIDFD
    | 0x80/* CLONE_NEWTIME */) as u64;
/// What makes a `clone` a thread: same address space, signal handlers and
/// thread group.
const CLONE_THREAD_FLAGS: u64 = (libc::CLONE_VM | libc::CLONE_SIGHAND | libc::CLONE_THREAD) as u64;

/// How a listed call is treated.
enum Rule {
    /// Allowed with any arguments.
    Any,
    /// Allowed when one of these argument conditions holds (each inner list
    /// is ANDed); otherwise the worker is killed.
    Only(Vec<Vec<(u8, Op, u64)>>),
    /// Answered with this errno, never run (a library probes and falls back).
    Errno(i32),
}

/// The allow-list: `(system call, rule, why)`.
fn allowed() -> Vec<(libc::c_long, Rule, &'static str)> {
    use Rule::*;
    let masked = |mask: u64| Op::MaskedEq(mask);
    let mut v = vec![
        // --- memory ---
        (libc::SYS_brk, Any, "malloc's heap"),
        (
            libc::SYS_mmap,
            // Never writable and executable at once: wasmtime maps code
            // RW, fills it, then mprotects it RX (W^X).
            Only(vec![
                vec![(2, masked(3 << 1), 0)],
                vec![(2, masked(3 << 1), 1 << 1)],
                vec![(2, masked(3 << 1), 1 << 2)],
            ]),
            "allocations, the instance pool, memory images; never PROT_WRITE|PROT_EXEC",
        ),
        (
            libc::SYS_mprotect,
            Only(vec![
                vec![(2, masked(3 << 1), 0)],
                vec![(2, masked(3 << 1), 1 << 1)],
                vec![(2, masked(3 << 1), 1 << 2)],
            ]),
            "guard pages, growing linear memory, making compiled code executable (W^X as mmap)",
        ),
        (libc::SYS_munmap, Any, "freeing mappings"),
        (libc::SYS_mremap, Any, "realloc of large blocks"),
        (
            libc::SYS_madvise,
            Any,
            "resetting pool slots (MADV_DONTNEED), malloc trimming",
        ),
        (
            libc::SYS_memfd_create,
            Any,
            "wasmtime's copy-on-write memory images",
        ),
        (
            libc::SYS_ftruncate,
            Any,
            "sizing memory images; WASI fd_filestat_set_size",
        ),
        // --- threads and synchronisation ---
        (
            libc::SYS_clone,
            // Threads only: never a new process or namespace.
            Only(vec![vec![(
                0,
                masked(CLONE_FORBIDDEN | CLONE_THREAD_FLAGS),
                CLONE_THREAD_FLAGS,
            )]]),
            "pthread_create's fallback after clone3 answers ENOSYS",
        ),
        (
            libc::SYS_clone3,
            // Its flags are in a struct the filter cannot read: refused, and
            // glibc falls back to clone, whose flags it can.
            Errno(libc::ENOSYS),
            "answered ENOSYS so that glibc uses clone",
        ),
        (
            libc::SYS_futex,
            Any,
            "mutexes, condition variables, thread joins",
        ),
        (libc::SYS_set_robust_list, Any, "glibc thread start"),
        (
            libc::SYS_rseq,
            Any,
            "glibc thread start (restartable sequences)",
        ),
        (libc::SYS_sched_yield, Any, "spin loops backing off"),
        (
            libc::SYS_sched_getaffinity,
            Any,
            "counting CPUs (tokio, std)",
        ),
        (libc::SYS_gettid, Any, "thread ids"),
        (libc::SYS_getpid, Any, "process id (glibc, tracing)"),
        (libc::SYS_exit, Any, "a thread ends"),
        (libc::SYS_exit_group, Any, "the worker ends"),
        (
            libc::SYS_membarrier,
            Any,
            "wasmtime's cross-thread code publication",
        ),
        // --- signals (wasmtime turns traps into signals) ---
        (libc::SYS_rt_sigaction, Any, "wasmtime's trap handlers"),
        (
            libc::SYS_rt_sigprocmask,
            Any,
            "signal masks around thread creation",
        ),
        (libc::SYS_rt_sigreturn, Any, "returning from a trap handler"),
        (
            libc::SYS_sigaltstack,
            Any,
            "per-thread stacks for trap handlers",
        ),
        (
            libc::SYS_tgkill,
            // Only to this process's own threads: abort(), raise().
            Only(vec![vec![(0, Op::Eq, own_pid())]]),
            "raise() and abort() within the worker",
        ),
        // --- time ---
        (
            libc::SYS_clock_gettime,
            Any,
            "clocks (when the vDSO is not used), thread CPU time",
        ),
        (libc::SYS_clock_getres, Any, "WASI clock_res_get"),
        (libc::SYS_gettimeofday, Any, "wall clock fallback"),
        (
            libc::SYS_clock_nanosleep,
            Any,
            "the epoch ticker; WASI poll_oneoff sleeps",
        ),
        (libc::SYS_nanosleep, Any, "sleeps"),
        (libc::SYS_getrandom, Any, "WASI random_get, hash map seeds"),
        // --- the supervisor socket and event loops ---
        (libc::SYS_read, Any, "the supervisor socket; WASI fd_read"),
        (
            libc::SYS_write,
            Any,
            "replies; WASI fd_write (inherited stdout/stderr)",
        ),
        (libc::SYS_readv, Any, "WASI fd_read"),
        (libc::SYS_writev, Any, "WASI fd_write"),
        (
            libc::SYS_pread64,
            Any,
            "WASI fd_pread; reading the module artifact",
        ),
        (libc::SYS_pwrite64, Any, "WASI fd_pwrite"),
        (libc::SYS_preadv, Any, "WASI fd_pread"),
        (libc::SYS_pwritev, Any, "WASI fd_pwrite"),
        (
            libc::SYS_recvfrom,
            Any,
            "peeking at the supervisor socket (MSG_PEEK)",
        ),
        (
            libc::SYS_recvmsg,
            Any,
            "receiving the compiled artifact's fd (SCM_RIGHTS)",
        ),
        (
            libc::SYS_sendto,
            // std writes to sockets with send(MSG_NOSIGNAL): no address.
            Only(vec![vec![(4, Op::Eq, 0)]]),
            "replies on the supervisor socket (connected: no address)",
        ),
        (
            libc::SYS_ppoll,
            Any,
            "waiting for the socket; WASI poll_oneoff",
        ),
        (libc::SYS_epoll_create1, Any, "tokio's event loop"),
        (libc::SYS_epoll_ctl, Any, "tokio's event loop"),
        (libc::SYS_epoll_pwait, Any, "tokio's event loop"),
        (libc::SYS_eventfd2, Any, "tokio's wakeups"),
        (libc::SYS_close, Any, "closing files"),
        (
            libc::SYS_fcntl,
            Any,
            "fd flags (O_NONBLOCK, FD_CLOEXEC), WASI fd_fdstat_set_flags",
        ),
        (libc::SYS_dup, Any, "duplicating stdio for WASI"),
        (
            libc::SYS_ioctl,
            Only(vec![
                vec![(1, Op::Eq, PAGEMAP_SCAN)],
                vec![(1, Op::Eq, libc::TCGETS)],
                vec![(1, Op::Eq, libc::FIONBIO)],
            ]),
            "PAGEMAP_SCAN (pool slot reset), TCGETS (isatty on stdio), FIONBIO (tokio)",
        ),
        // --- files (inside the jail: only the granted directories) ---
        (libc::SYS_openat, Any, "WASI path_open below a preopen"),
        (
            libc::SYS_newfstatat,
            Any,
            "WASI path_filestat_get, fd_filestat_get",
        ),
        (libc::SYS_fstat, Any, "fd_filestat_get"),
        (libc::SYS_statx, Any, "std's metadata()"),
        (libc::SYS_lseek, Any, "WASI fd_seek, fd_tell"),
        (libc::SYS_getdents64, Any, "WASI fd_readdir"),
        (libc::SYS_mkdirat, Any, "WASI path_create_directory"),
        (
            libc::SYS_unlinkat,
            Any,
            "WASI path_unlink_file, path_remove_directory",
        ),
        (libc::SYS_renameat2, Any, "WASI path_rename"),
        (libc::SYS_renameat, Any, "WASI path_rename"),
        (libc::SYS_linkat, Any, "WASI path_link"),
        (libc::SYS_symlinkat, Any, "WASI path_symlink"),
        (
            libc::SYS_readlinkat,
            Any,
            "WASI path_readlink; cap-std's path resolution",
        ),
        (libc::SYS_utimensat, Any, "WASI fd_filestat_set_times"),
        (libc::SYS_fsync, Any, "WASI fd_sync"),
        (libc::SYS_fdatasync, Any, "WASI fd_datasync"),
        (libc::SYS_fadvise64, Any, "WASI fd_advise"),
        (libc::SYS_fallocate, Any, "WASI fd_allocate"),
        (libc::SYS_faccessat2, Any, "cap-std access checks"),
        (
            libc::SYS_openat2,
            Any,
            "cap-std's RESOLVE_BENEATH opens (falls back without)",
        ),
        (
            libc::SYS_fchmod,
            Any,
            "WASI has no chmod; cap-std may set modes on create",
        ),
        (libc::SYS_statfs, Any, "cap-std probes"),
        (libc::SYS_fstatfs, Any, "cap-std probes"),
        // --- process information ---
        (libc::SYS_getrlimit, Any, "stack size for new threads"),
        (
            libc::SYS_prlimit64,
            Only(vec![vec![(0, Op::Eq, 0)]]),
            "getrlimit (own process only: pid 0)",
        ),
        (libc::SYS_uname, Any, "glibc and std version checks"),
        (libc::SYS_sysinfo, Any, "memory size probes"),
        (
            libc::SYS_prctl,
            Only(vec![
                vec![(0, Op::Eq, libc::PR_SET_NAME as u64)],
                vec![(0, Op::Eq, libc::PR_GET_NAME as u64)],
                vec![(0, Op::Eq, libc::PR_SET_VMA as u64)],
            ]),
            "naming threads and anonymous mappings",
        ),
        (
            libc::SYS_sched_getparam,
            Any,
            "thread priorities (read only)",
        ),
    ];
    #[cfg(target_arch = "x86_64")]
    v.extend([(
        libc::SYS_epoll_wait,
        Any,
        "tokio's event loop (x86_64 has the old call)",
    )]);
    v
}

fn own_pid() -> u64 {
    std::process::id() as u64
}

/// Compiles the allow-list into BPF programs: the allow-list proper (kill
/// the process on anything else) and the errno answers. The kernel runs
/// both and takes the stricter verdict, so an errno entry must also pass
/// the first filter.
fn programs() -> Result<Vec<BpfProgram>, String> {
    let arch = TargetArch::try_from(std::env::consts::ARCH).map_err(|e| e.to_string())?;
    let cond = |(arg, op, value): (u8, Op, u64)| {
        SeccompCondition::new(arg, Len::Qword, op, value).map_err(|e| e.to_string())
    };
    let mut allow: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    let mut errno: BTreeMap<i32, BTreeMap<i64, Vec<SeccompRule>>> = BTreeMap::new();
    for (nr, rule, _why) in allowed() {
        match rule {
            Rule::Any => {
                allow.insert(nr, vec![]);
            }
            Rule::Only(alternatives) => {
                let rules = alternatives
                    .into_iter()
                    .map(|conds| {
                        let conds = conds.into_iter().map(cond).collect::<Result<_, _>>()?;
                        SeccompRule::new(conds).map_err(|e| e.to_string())
                    })
                    .collect::<Result<_, String>>()?;
                allow.insert(nr, rules);
            }
            Rule::Errno(e) => {
                allow.insert(nr, vec![]);
                errno.entry(e).or_default().insert(nr, vec![]);
            }
        }
    }
    let compile = |f: SeccompFilter| -> Result<BpfProgram, String> {
        f.try_into()
            .map_err(|e: seccompiler::BackendError| e.to_string())
    };
    // The errno answers go in first: their default is to allow, so the
    // allow-list (which permits neither prctl nor seccomp) can still be
    // installed after them, and it must be the last.
    let mut out = Vec::new();
    for (e, calls) in errno {
        out.push(compile(
            SeccompFilter::new(
                calls,
                SeccompAction::Allow,
                SeccompAction::Errno(e as u32),
                arch,
            )
            .map_err(|e| e.to_string())?,
        )?);
    }
    out.push(compile(
        SeccompFilter::new(
            allow,
            SeccompAction::KillProcess,
            SeccompAction::Allow,
            arch,
        )
        .map_err(|e| e.to_string())?,
    )?);
    Ok(out)
}

/// Installs the filters on the calling thread, and every thread it starts
/// later. Call while the process has one thread (or use TSYNC).
pub(crate) fn install() -> Result<(), String> {
    for p in programs()? {
        seccompiler::apply_filter_all_threads(&p).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// The filter of the jail's first process, which only waits for the
/// worker and then ends the same way (see `jail.rs`).
pub(crate) fn install_waiter() -> Result<(), String> {
    let arch = TargetArch::try_from(std::env::consts::ARCH).map_err(|e| e.to_string())?;
    let own = SeccompCondition::new(0, Len::Qword, Op::Eq, own_pid()).map_err(|e| e.to_string())?;
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = [
        libc::SYS_wait4,           // waiting for the worker
        libc::SYS_exit_group,      // ending with its exit code
        libc::SYS_exit,            // (the same, from a thread's view)
        libc::SYS_rt_sigaction,    // restoring the default action of its signal
        libc::SYS_rt_sigprocmask,  // (glibc's signal())
        libc::SYS_rt_sigreturn,    // returning from a handler
        libc::SYS_restart_syscall, // wait4 interrupted and restarted
        libc::SYS_getpid,          // finding itself to re-raise the signal
    ]
    .into_iter()
    .map(|nr| (nr, vec![]))
    .collect();
    // Re-raising the worker's signal on itself, and nothing else.
    rules.insert(
        libc::SYS_kill,
        vec![SeccompRule::new(vec![own]).map_err(|e| e.to_string())?],
    );
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::KillProcess,
        SeccompAction::Allow,
        arch,
    )
    .map_err(|e| e.to_string())?;
    let program: BpfProgram = filter
        .try_into()
        .map_err(|e: seccompiler::BackendError| e.to_string())?;
    seccompiler::apply_filter(&program).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compiles_and_every_entry_says_why() {
        assert!(programs().unwrap().len() >= 2);
        let list = allowed();
        for (nr, _, why) in &list {
            assert!(!why.is_empty(), "{nr}");
        }
        let mut nrs: Vec<_> = list.iter().map(|e| e.0).collect();
        nrs.sort();
        let before = nrs.len();
        nrs.dedup();
        assert_eq!(before, nrs.len(), "a call is listed twice");
        // Never on the list.
        for nr in [
            libc::SYS_execve,
            libc::SYS_execveat,
            libc::SYS_fork,
            libc::SYS_vfork,
            libc::SYS_ptrace,
            libc::SYS_socket,
            libc::SYS_io_uring_setup,
            libc::SYS_mount,
            libc::SYS_unshare,
            libc::SYS_setns,
            libc::SYS_bpf,
            libc::SYS_kill,
            libc::SYS_pidfd_getfd,
            libc::SYS_fsopen,
            libc::SYS_open_tree,
        ] {
            assert!(!nrs.contains(&nr), "{nr} is allowed");
        }
    }
}
