//! The escape suite: from inside a real, fully jailed worker (the test
//! build's `escape-tests` worker mode), each attempt in a fresh worker of
//! its own, what a compromised worker would try first. Every attempt must
//! be refused, and each test says how: the seccomp filter kills the worker
//! (SIGSYS), or the kernel answers an errno because the thing is not there.

use crate::helpers::*;
use crate::sandbox::sandbox;
use std::os::unix::fs::chown;
use wasmlet_sandbox::{DirGrant, Sandbox, SandboxConfig};

const KILLED: &str = "killed by its seccomp filter (SIGSYS)";
const ENOENT: &str = "errno 2";
const EROFS: &str = "errno 30";
const ENOSYS: &str = "errno 38";

/// A sandbox with a read-only and a writable grant (owned by the sandbox
/// uid, as a writable grant must be), and a host file it was not granted.
struct Jail {
    sb: Sandbox,
    _dirs: tempfile::TempDir,
    outside: String,
}

fn jail() -> Jail {
    let dirs = tempdir();
    let ro = dirs.path().join("ro");
    let rw = dirs.path().join("rw");
    for d in [&ro, &rw] {
        std::fs::create_dir(d).unwrap();
    }
    std::fs::write(ro.join("file"), "granted").unwrap();
    // Writable by the sandbox uid: only the read-only mount stops writes.
    chown(ro.join("file"), Some(65534), Some(65534)).unwrap();
    chown(&ro, Some(65534), Some(65534)).unwrap();
    std::fs::write(dirs.path().join("secret"), "not granted").unwrap();
    chown(&rw, Some(65534), Some(65534)).unwrap();
    // The sandbox uid must reach the grants (tempdirs are 0700).
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dirs.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    let config = SandboxConfig {
        dirs: vec![
            DirGrant {
                host: ro.clone(),
                guest: "/data-ro".into(),
                writable: false,
            },
            DirGrant {
                host: rw.clone(),
                guest: "/data-rw".into(),
                writable: true,
            },
        ],
        ..Default::default()
    };
    let outside = dirs.path().join("secret").to_string_lossy().into_owned();
    Jail {
        sb: sandbox(config, TOOLS_WAT.as_bytes()),
        _dirs: dirs,
        outside,
    }
}

fn attempt(j: &Jail, name: &str) -> Result<String, String> {
    j.sb.escape_attempt(name)
}

#[test]
fn forbidden_system_calls_kill_the_worker() {
    let j = jail();
    for name in [
        "fork",
        "vfork",
        "clone-newuts",
        "clone-thread-newns",
        "execve",
        "io_uring_setup",
        "ptrace",
        "mount",
        "fsopen",
        "open_tree",
        "pivot_root",
        "unshare",
        "setns",
        "bpf",
        "perf_event_open",
        "keyctl",
        "kill-1",
        "pidfd_getfd",
        "setuid-0",
    ] {
        assert_eq!(
            attempt(&j, name),
            Err(format!("sandbox worker died: {KILLED}")),
            "{name}"
        );
    }
}

#[test]
fn clone3_is_answered_enosys() {
    // Its flags are out of the filter's reach, so it never runs; glibc
    // then uses clone, whose flags the filter checks.
    let j = jail();
    assert_eq!(attempt(&j, "clone3").as_deref(), Ok(ENOSYS));
}

#[test]
fn sockets_of_every_family_kill_the_worker() {
    let j = jail();
    // AF_UNSPEC up to AF_MCTP (45), the last family Linux 6.x knows.
    for family in 0..46 {
        assert_eq!(
            attempt(&j, &format!("socket:{family}")),
            Err(format!("sandbox worker died: {KILLED}")),
            "family {family}"
        );
    }
}

#[test]
fn host_files_are_not_there() {
    let j = jail();
    let cache = scratch().join("cache").to_string_lossy().into_owned();
    for name in [
        "open-read:/etc/passwd".to_string(),
        "open-read:/proc/1/environ".into(),
        "open-read:/proc/self/environ".into(),
        format!("open-write:{cache}/planted"),
        format!("mkdir:{cache}"),
        format!("open-read:{}", j.outside),
        "open-read:/data-ro/../../secret".into(),
    ] {
        assert_eq!(attempt(&j, &name).as_deref(), Ok(ENOENT), "{name}");
    }
    // The root holds the grants and nothing else, and cannot be written.
    assert_eq!(
        attempt(&j, "list-root").as_deref(),
        Ok("ok data-ro,data-rw")
    );
    assert_eq!(attempt(&j, "open-write:/planted").as_deref(), Ok(EROFS));
    assert_eq!(attempt(&j, "mkdir:/etc").as_deref(), Ok(EROFS));
}

#[test]
fn grants_are_read_only_unless_granted_writable() {
    let j = jail();
    assert_eq!(attempt(&j, "open-read:/data-ro/file").as_deref(), Ok("ok"));
    assert_eq!(attempt(&j, "open-write:/data-ro/new").as_deref(), Ok(EROFS));
    assert_eq!(
        attempt(&j, "open-write:/data-ro/file").as_deref(),
        Ok(EROFS)
    );
    assert_eq!(attempt(&j, "open-write:/data-rw/new").as_deref(), Ok("ok"));
}

#[test]
fn a_mount_inside_a_read_only_grant_is_read_only_too() {
    // A file system mounted on the host inside a granted directory comes
    // along with the grant: it must be as read-only, whatever its own
    // flags (this tmpfs is world-writable and mounted rw on the host).
    let dirs = tempdir();
    let ro = dirs.path().join("ro");
    let inner = ro.join("inner");
    std::fs::create_dir_all(&inner).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dirs.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    let target = std::ffi::CString::new(inner.to_str().unwrap()).unwrap();
    // SAFETY: mount(2) with C strings that live across the call.
    let rc = unsafe {
        libc::mount(
            c"tmpfs".as_ptr(),
            target.as_ptr(),
            c"tmpfs".as_ptr(),
            0,
            c"size=1m,mode=1777".as_ptr().cast(),
        )
    };
    assert_eq!(rc, 0, "mount tmpfs: {}", std::io::Error::last_os_error());
    struct Unmount(std::ffi::CString);
    impl Drop for Unmount {
        fn drop(&mut self) {
            // SAFETY: umount2(2) of the tmpfs mounted above.
            unsafe { libc::umount2(self.0.as_ptr(), libc::MNT_DETACH) };
        }
    }
    let _unmount = Unmount(target);
    let config = SandboxConfig {
        dirs: vec![DirGrant {
            host: ro.clone(),
            guest: "/data-ro".into(),
            writable: false,
        }],
        ..Default::default()
    };
    let sb = sandbox(config, TOOLS_WAT.as_bytes());
    assert_eq!(
        sb.escape_attempt("open-write:/data-ro/inner/planted")
            .as_deref(),
        Ok(EROFS)
    );
    assert_eq!(
        sb.escape_attempt("mkdir:/data-ro/inner/d").as_deref(),
        Ok(EROFS)
    );
    drop(sb);
}

#[test]
fn only_its_own_fds_are_open() {
    let j = jail();
    let fds = attempt(&j, "open-fds").unwrap();
    let fds: Vec<i32> = fds
        .strip_prefix("ok ")
        .unwrap()
        .split(',')
        .map(|f| f.parse().unwrap())
        .collect();
    // stdio, the supervisor socket, and what the worker itself opened
    // (pagemap, tokio's epoll and eventfd, memory images): a handful.
    assert_eq!(&fds[..4], &[0, 1, 2, 3], "{fds:?}");
    assert!(fds.len() <= 10, "{fds:?}");
}

#[test]
fn the_network_namespace_is_loopback_only() {
    // Inside the worker no socket can be opened at all (see above); this
    // checks the layer under the filter, from a host thread that joins the
    // jailed worker's network namespace: only `lo`, up; a loopback
    // connection works; nothing else is reachable, not even the host's own
    // listeners.
    use std::io::{Read, Write};
    use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
    use std::os::fd::AsRawFd;
    use std::time::Duration;
    let j = jail();
    let pid = crate::sandbox::jailed_worker(j.sb.worker_pid().unwrap());
    let ns = std::fs::File::open(format!("/proc/{pid}/ns/net")).unwrap();
    let host = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let host_port = host.local_addr().unwrap().port();
    std::thread::spawn(move || {
        // SAFETY: setns(2) on a valid namespace fd; it moves only this
        // thread (a network namespace is per thread), which ends below.
        let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
        let dev = std::fs::read_to_string("/proc/thread-self/net/dev").unwrap();
        let names: Vec<&str> = dev
            .lines()
            .skip(2)
            .filter_map(|l| l.split(':').next())
            .map(str::trim)
            .collect();
        assert_eq!(names, ["lo"], "{dev}");
        // Loopback works (bind and connect fail while lo is down).
        let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let mut c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (mut s, _) = l.accept().unwrap();
        c.write_all(b"ping").unwrap();
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"ping");
        // The host's loopback is another one: its listener is not here.
        let e = TcpStream::connect((Ipv4Addr::LOCALHOST, host_port)).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ECONNREFUSED), "{e}");
        // No route anywhere else.
        for addr in ["10.0.0.1:80", "192.168.1.1:443", "1.1.1.1:53"] {
            let addr: SocketAddr = addr.parse().unwrap();
            let e = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).unwrap_err();
            assert_eq!(e.raw_os_error(), Some(libc::ENETUNREACH), "{addr}: {e}");
            let u = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap();
            let e = u.send_to(b"x", addr).unwrap_err();
            assert_eq!(e.raw_os_error(), Some(libc::ENETUNREACH), "{addr}: {e}");
        }
        let v6: SocketAddr = "[2001:db8::1]:80".parse().unwrap();
        let e = TcpStream::connect_timeout(&v6, Duration::from_secs(2)).unwrap_err();
        // (A kernel without IPv6 has no such socket to begin with.)
        assert!(
            matches!(
                e.raw_os_error(),
                Some(libc::ENETUNREACH | libc::EAFNOSUPPORT)
            ),
            "{v6}: {e}"
        );
    })
    .join()
    .unwrap();
    drop(host);
}
