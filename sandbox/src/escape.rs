//! Escape attempts, made from inside a real, fully jailed worker (only with
//! the `escape-tests` feature, which the test build turns on): what a
//! compromised worker would try first. Each attempt returns what the
//! kernel answered (`ok ...` or `errno N`), if the worker survives it; the
//! seccomp filter kills the worker for most of them.

use std::ffi::CString;
use std::io;

fn errno_or(rc: libc::c_long, ok: impl FnOnce(libc::c_long) -> String) -> String {
    if rc < 0 {
        format!(
            "errno {}",
            io::Error::last_os_error().raw_os_error().unwrap_or(0)
        )
    } else {
        ok(rc)
    }
}

/// In a child that a forbidden call created after all: leave at once.
fn child_exit(rc: libc::c_long) {
    if rc == 0 {
        // SAFETY: _exit(2) in the new child, touching nothing.
        unsafe { libc::_exit(0) };
    }
}

fn open(path: &str, flags: libc::c_int) -> String {
    let p = CString::new(path).expect("no NUL");
    // SAFETY: open(2) of a valid C string; the fd is closed right after.
    let fd = unsafe { libc::open(p.as_ptr(), flags | libc::O_CLOEXEC, 0o600) };
    errno_or(fd as _, |fd| {
        // SAFETY: closing the fd just opened.
        unsafe { libc::close(fd as i32) };
        "ok".into()
    })
}

/// Runs the attempt `name` (`socket:FAMILY`, `open-read:PATH`,
/// `open-write:PATH`, `mkdir:PATH`, or one of the calls below).
pub(crate) fn attempt(name: &str) -> String {
    if let Some(family) = name.strip_prefix("socket:") {
        let family: i32 = family.parse().unwrap_or(-1);
        // SAFETY: socket(2) with integer arguments.
        let fd = unsafe { libc::socket(family, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
        return errno_or(fd as _, |_| "ok".into());
    }
    if let Some(path) = name.strip_prefix("open-read:") {
        return open(path, libc::O_RDONLY);
    }
    if let Some(path) = name.strip_prefix("open-write:") {
        return open(path, libc::O_WRONLY | libc::O_CREAT);
    }
    if let Some(path) = name.strip_prefix("mkdir:") {
        let p = CString::new(path).expect("no NUL");
        // SAFETY: mkdirat(2) of a valid C string.
        return errno_or(
            unsafe { libc::mkdirat(libc::AT_FDCWD, p.as_ptr(), 0o700) } as _,
            |_| "ok".into(),
        );
    }
    // SAFETY: raw system calls with integer arguments or pointers to
    // locals and static C strings; a child that one of them creates after
    // all exits at once without touching our state.
    unsafe {
        let sys = |nr: libc::c_long, a: [libc::c_long; 5]| {
            libc::syscall(nr, a[0], a[1], a[2], a[3], a[4])
        };
        match name {
            "fork" => {
                let rc = libc::fork() as libc::c_long;
                child_exit(rc);
                errno_or(rc, |_| "ok".into())
            }
            "vfork" => {
                let rc = sys(libc::SYS_vfork, [0; 5]);
                child_exit(rc);
                errno_or(rc, |_| "ok".into())
            }
            "clone-newuts" => {
                let rc = sys(
                    libc::SYS_clone,
                    [(libc::CLONE_NEWUTS | libc::SIGCHLD) as _, 0, 0, 0, 0],
                );
                child_exit(rc);
                errno_or(rc, |_| "ok".into())
            }
            "clone-thread-newns" => {
                // Thread flags plus a namespace: still refused.
                let flags =
                    libc::CLONE_VM | libc::CLONE_SIGHAND | libc::CLONE_THREAD | libc::CLONE_NEWNS;
                errno_or(sys(libc::SYS_clone, [flags as _, 0, 0, 0, 0]), |_| {
                    "ok".into()
                })
            }
            "clone3" => {
                // struct clone_args { flags, pidfd, child_tid, parent_tid,
                // exit_signal, ... }: a plain fork.
                let mut args = [0u64; 11];
                args[4] = libc::SIGCHLD as u64;
                let rc = sys(
                    libc::SYS_clone3,
                    [
                        args.as_mut_ptr() as _,
                        std::mem::size_of_val(&args) as _,
                        0,
                        0,
                        0,
                    ],
                );
                child_exit(rc);
                errno_or(rc, |_| "ok".into())
            }
            "execve" => {
                let argv = [c"/bin/true".as_ptr(), std::ptr::null()];
                let envp = [std::ptr::null()];
                let rc = libc::execve(c"/bin/true".as_ptr(), argv.as_ptr(), envp.as_ptr());
                errno_or(rc as _, |_| "ok".into())
            }
            "io_uring_setup" => {
                let mut params = [0u8; 120];
                errno_or(
                    sys(
                        libc::SYS_io_uring_setup,
                        [8, params.as_mut_ptr() as _, 0, 0, 0],
                    ),
                    |_| "ok".into(),
                )
            }
            "ptrace" => errno_or(
                sys(libc::SYS_ptrace, [libc::PTRACE_TRACEME as _, 0, 0, 0, 0]),
                |_| "ok".into(),
            ),
            "mount" => errno_or(
                libc::mount(
                    c"none".as_ptr(),
                    c"/".as_ptr(),
                    c"tmpfs".as_ptr(),
                    0,
                    std::ptr::null(),
                ) as _,
                |_| "ok".into(),
            ),
            "fsopen" => errno_or(
                sys(libc::SYS_fsopen, [c"tmpfs".as_ptr() as _, 0, 0, 0, 0]),
                |_| "ok".into(),
            ),
            "open_tree" => errno_or(
                sys(
                    libc::SYS_open_tree,
                    [
                        libc::AT_FDCWD as _,
                        c"/".as_ptr() as _,
                        1, /* OPEN_TREE_CLONE */
                        0,
                        0,
                    ],
                ),
                |_| "ok".into(),
            ),
            "pivot_root" => errno_or(
                sys(
                    libc::SYS_pivot_root,
                    [c".".as_ptr() as _, c".".as_ptr() as _, 0, 0, 0],
                ),
                |_| "ok".into(),
            ),
            "unshare" => errno_or(libc::unshare(libc::CLONE_NEWUSER) as _, |_| "ok".into()),
            "setns" => errno_or(libc::setns(0, 0) as _, |_| "ok".into()),
            "bpf" => errno_or(sys(libc::SYS_bpf, [0, 0, 0, 0, 0]), |_| "ok".into()),
            "perf_event_open" => {
                let mut attr = [0u8; 128];
                errno_or(
                    sys(
                        libc::SYS_perf_event_open,
                        [attr.as_mut_ptr() as _, 0, -1, -1, 0],
                    ),
                    |_| "ok".into(),
                )
            }
            "keyctl" => errno_or(
                sys(
                    libc::SYS_keyctl,
                    [0 /* KEYCTL_GET_KEYRING_ID */, -3, 0, 0, 0],
                ),
                |_| "ok".into(),
            ),
            "kill-1" => errno_or(libc::kill(1, libc::SIGTERM) as _, |_| "ok".into()),
            "pidfd_getfd" => errno_or(sys(libc::SYS_pidfd_getfd, [0, 0, 0, 0, 0]), |_| "ok".into()),
            "setuid-0" => errno_or(libc::setuid(0) as _, |_| "ok".into()),
            "list-root" => match std::fs::read_dir("/") {
                Ok(d) => {
                    let mut names: Vec<String> = d
                        .flatten()
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .collect();
                    names.sort();
                    format!("ok {}", names.join(","))
                }
                Err(e) => format!("errno {}", e.raw_os_error().unwrap_or(0)),
            },
            "open-fds" => {
                let open: Vec<String> = (0..1024)
                    .filter(|&fd| libc::fcntl(fd, libc::F_GETFD) >= 0)
                    .map(|fd| fd.to_string())
                    .collect();
                format!("ok {}", open.join(","))
            }
            "capabilities" => {
                let hdr = [0x2008_0522u32, 0];
                let mut data = [0u32; 6];
                let rc = sys(
                    libc::SYS_capget,
                    [hdr.as_ptr() as _, data.as_mut_ptr() as _, 0, 0, 0],
                );
                errno_or(rc, |_| format!("ok {data:?}"))
            }
            _ => format!("unknown attempt {name}"),
        }
    }
}
