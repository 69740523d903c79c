//! The jail a worker enters after `exec` and before any tenant code, in the
//! manner of Firecracker's jailer. Every step is checked; a failure is an
//! error naming the step, never a silent downgrade.
//!
//! ```text
//!  host root (or the sandbox uid)   one thread, right after exec
//!   │ open /proc/self/pagemap (wasmtime's PAGEMAP_SCAN; its fork
//!   │ handler reopens it in the child below, so the process stays
//!   │ dumpable until after the fork)
//!   │ setgroups([]), setresgid(gid), setresuid(uid)    no host capabilities
//!   │ unshare(user, mount, pid, net, ipc, uts)          uid_map "0 <uid> 1"
//!   ├─ fork ──▶ pid 1 of the new pid namespace (the worker proper)
//!   │            lo up (the only interface of its net namespace); open
//!   │            the granted directories; tmpfs root with each one
//!   │            bind-mounted at its guest path (read-only unless granted
//!   │            writable); root remounted read-only; pivot_root, old root
//!   │            detached; hostname; rlimits (core 0, nofile, fsize);
//!   │            capabilities and bounding set emptied, securebits locked;
//!   │            then the seccomp allow-list, then threads.
//!   └─ the first process stays outside the pid namespace only to wait:
//!      capabilities dropped, a tiny seccomp filter, it ends the way the
//!      worker ended (same exit code or signal), so the supervisor sees
//!      the worker's fate in its own child's status.
//! ```
//!
//! Grants are opened after the user namespace exists, so the sandbox uid
//! must be able to reach them (and own a writable one): the jail never
//! uses the supervisor's privileges on the tenant's behalf.

use serde::{Deserialize, Serialize};
use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

/// Hostname inside the jail's UTS namespace.
const HOSTNAME: &str = "wasmlet";
/// Where the new root is assembled before `pivot_root` (in the worker's
/// private mount namespace, so the host never sees it).
const STAGING: &str = "/tmp";

/// What the worker is told to build (sent by the supervisor before
/// anything else).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct JailSpec {
    /// Host uid and gid the worker runs as (root inside its namespace).
    pub uid: u32,
    pub gid: u32,
    /// Directories the guest may see.
    pub grants: Vec<Grant>,
    /// RLIMIT_NOFILE.
    pub nofile: u64,
    /// RLIMIT_FSIZE, bytes.
    pub fsize: u64,
}

/// One granted directory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Grant {
    /// On the host.
    pub host: PathBuf,
    /// Inside the jail (absolute, plain names only).
    pub jail: PathBuf,
    pub writable: bool,
}

fn os(step: &str) -> String {
    format!("{step}: {}", io::Error::last_os_error())
}

fn check(rc: libc::c_long, step: &str) -> Result<(), String> {
    if rc < 0 { Err(os(step)) } else { Ok(()) }
}

fn cstr(p: &Path) -> Result<CString, String> {
    CString::new(p.as_os_str().as_encoded_bytes())
        .map_err(|_| format!("{}: path contains a NUL byte", p.display()))
}

/// What [`enter`] returns in the process that goes on as the worker.
pub(crate) struct Jailed;

/// Builds the jail around the calling process, which must be
/// single-threaded. Returns in the worker (pid 1 of its namespace); the
/// first process never returns from here: it waits for the worker and
/// ends the same way.
pub(crate) fn enter(spec: &JailSpec) -> Result<Jailed, String> {
    // wasmtime opens this lazily; after pivot_root there is no /proc.
    let pagemap = wasmtime::PoolingAllocationConfig::is_pagemap_scan_available();
    if !pagemap {
        tracing::debug!("PAGEMAP_SCAN unavailable: pool slots are reset without it");
    }
    drop_to_sandbox_user(spec.uid, spec.gid)?;
    // SAFETY: prctl(2) with integer arguments only.
    let rc = unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) };
    check(rc as _, "re-arm the parent-death signal")?;
    let flags = libc::CLONE_NEWUSER
        | libc::CLONE_NEWNS
        | libc::CLONE_NEWPID
        | libc::CLONE_NEWNET
        | libc::CLONE_NEWIPC
        | libc::CLONE_NEWUTS;
    // SAFETY: unshare(2) with flags only; the process is single-threaded,
    // as CLONE_NEWUSER requires.
    let rc = unsafe { libc::unshare(flags) };
    check(
        rc as _,
        "create user, mount, pid, net, ipc and uts namespaces",
    )?;
    // Changing uid made the process non-dumpable, which makes its /proc
    // files root's: dumpable for as long as it takes to write its maps.
    // SAFETY: prctl(2) with integer arguments only.
    let rc = unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 1, 0, 0, 0) };
    check(rc as _, "make /proc/self writable to the sandbox uid")?;
    std::fs::write("/proc/self/setgroups", "deny")
        .map_err(|e| format!("/proc/self/setgroups: {e}"))?;
    std::fs::write("/proc/self/uid_map", format!("0 {} 1", spec.uid))
        .map_err(|e| format!("map uid 0 to host uid {}: {e}", spec.uid))?;
    std::fs::write("/proc/self/gid_map", format!("0 {} 1", spec.gid))
        .map_err(|e| format!("map gid 0 to host gid {}: {e}", spec.gid))?;
    // Still dumpable across the fork: wasmtime's fork handler reopens
    // /proc/self/pagemap in the child, which only works while the child's
    // /proc files are its own (else it silently swaps in /dev/null, and
    // PAGEMAP_SCAN is off for every pool slot reset). Both sides turn
    // non-dumpable right after, before anything else.
    // SAFETY: fork(2) in a single-threaded process; both sides go on with
    // their own copy of this one thread.
    let child = unsafe { libc::fork() };
    if child < 0 {
        return Err(os("fork into the pid namespace"));
    }
    // SAFETY: prctl(2) with integer arguments only.
    let rc = unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
    if child > 0 {
        if rc < 0 {
            // SAFETY: kill(2) on our own child, then _exit(2).
            unsafe {
                libc::kill(child, libc::SIGKILL);
                libc::_exit(1);
            }
        }
        wait_and_mirror(child);
    }
    check(rc as _, "make the worker non-dumpable")?;
    if pagemap && !wasmtime::PoolingAllocationConfig::is_pagemap_scan_available() {
        return Err(
            "/proc/self/pagemap could not be reopened after the fork (PAGEMAP_SCAN would be off)"
                .into(),
        );
    }
    // SAFETY: prctl(2) with integer arguments only.
    let rc = unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) };
    check(rc as _, "set the parent-death signal")?;
    loopback_up()?;
    build_root(&spec.grants)?;
    // SAFETY: sethostname(2) reading a valid buffer of the given length.
    let rc = unsafe { libc::sethostname(HOSTNAME.as_ptr().cast(), HOSTNAME.len()) };
    check(rc as _, "set hostname")?;
    set_rlimit(libc::RLIMIT_CORE, 0, "RLIMIT_CORE")?;
    set_rlimit(libc::RLIMIT_NOFILE, spec.nofile, "RLIMIT_NOFILE")?;
    set_rlimit(libc::RLIMIT_FSIZE, spec.fsize, "RLIMIT_FSIZE")?;
    drop_capabilities()?;
    Ok(Jailed)
}

/// Brings up `lo`, the only interface of the jail's new network namespace
/// (it starts down). Nothing in the worker can open a socket (the seccomp
/// allow-list has no `socket`), so this grants the guest nothing today;
/// it makes the namespace the usual "loopback only" one, where a local
/// connection works and every other address is unreachable (no route),
/// rather than one where even 127.0.0.1 fails, so that a later, reviewed
/// socket grant starts from loopback and never from the host's network.
fn loopback_up() -> Result<(), String> {
    use std::os::fd::FromRawFd;
    // SAFETY: socket(2) with integer arguments; the fd is owned below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(os("open a socket to configure lo"));
    }
    // SAFETY: `fd` was just opened and nothing else owns it.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: an all-zero ifreq is a valid value of this plain C struct.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *d = *s as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS reads the interface named in `req` and writes
    // its flags into `req`, a valid ifreq that lives across the call.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) };
    check(rc as _, "read lo's flags")?;
    // SAFETY: SIOCGIFFLAGS filled the `ifru_flags` member of the union.
    unsafe { req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
    // SAFETY: SIOCSIFFLAGS reads the name and flags from `req`, a valid
    // ifreq that lives across the call.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) };
    check(rc as _, "bring lo up")
}

/// Leaves host root behind: no supplementary groups, the sandbox gid and
/// uid (which clears every capability). A supervisor that is not root can
/// only run sandboxes as its own uid.
fn drop_to_sandbox_user(uid: u32, gid: u32) -> Result<(), String> {
    // SAFETY: getters without arguments.
    let (euid, egid) = unsafe { (libc::geteuid(), libc::getegid()) };
    if euid != 0 {
        if euid != uid || egid != gid {
            return Err(format!(
                "the sandbox runs as uid {uid} gid {gid}, which needs a root supervisor (this one is uid {euid} gid {egid})"
            ));
        }
        return Ok(());
    }
    // SAFETY: plain credential system calls with integer arguments.
    unsafe {
        check(
            libc::setgroups(0, std::ptr::null()) as _,
            "drop supplementary groups",
        )?;
        check(
            libc::setresgid(gid, gid, gid) as _,
            "switch to the sandbox gid",
        )?;
        check(
            libc::setresuid(uid, uid, uid) as _,
            "switch to the sandbox uid",
        )?;
        if libc::geteuid() != uid || libc::getegid() != gid {
            return Err("switching to the sandbox uid/gid did not take".into());
        }
    }
    Ok(())
}

/// Waits for the worker and ends this process the same way (code or
/// signal). Runs with no capabilities under a filter that allows only that.
fn wait_and_mirror(child: libc::pid_t) -> ! {
    // SAFETY: closing our copy of the supervisor socket (the worker keeps
    // its own), so the supervisor sees end-of-stream when the worker dies.
    unsafe { libc::close(crate::harden::WORKER_SOCKET_FD) };
    let _ = drop_capabilities();
    if let Err(e) = crate::seccomp::install_waiter() {
        eprintln!("wasmlet sandbox: {e}");
        // SAFETY: kill(2) on our own child, then _exit(2).
        unsafe {
            libc::kill(child, libc::SIGKILL);
            libc::_exit(1);
        }
    }
    let mut status = 0;
    loop {
        // SAFETY: waitpid(2) on our own child into a local.
        let rc = unsafe { libc::waitpid(child, &mut status, 0) };
        if rc == child {
            break;
        }
        if io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            // SAFETY: _exit(2) never returns.
            unsafe { libc::_exit(1) };
        }
    }
    // SAFETY: signal(2), kill(2) on ourselves and _exit(2): ending this
    // process with the worker's signal (default action), else its code.
    unsafe {
        if libc::WIFSIGNALED(status) {
            let sig = libc::WTERMSIG(status);
            libc::signal(sig, libc::SIG_DFL);
            libc::kill(libc::getpid(), sig);
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
        libc::_exit(libc::WEXITSTATUS(status));
    }
}

/// The new root: a tmpfs holding only the grants, read-only, made `/`.
fn build_root(grants: &[Grant]) -> Result<(), String> {
    // Open the grants first, as the sandbox uid, before anything is
    // mounted over their paths.
    let sources: Vec<OwnedFd> = grants
        .iter()
        .map(|g| {
            let p = cstr(&g.host)?;
            // SAFETY: open(2) of a valid C string; the fd is owned below.
            let fd = unsafe {
                libc::open(
                    p.as_ptr(),
                    libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
                )
            };
            if fd < 0 {
                return Err(format!(
                    "granted directory {}: {} (the sandbox uid must be able to reach it)",
                    g.host.display(),
                    io::Error::last_os_error()
                ));
            }
            // SAFETY: `fd` was just opened and nothing else owns it.
            let fd = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
            // SAFETY: statfs is plain integers; all-zero is a valid value.
            let mut st: libc::statfs = unsafe { std::mem::zeroed() };
            // SAFETY: fstatfs(2) on an open fd, writing a local struct.
            let rc = unsafe { libc::fstatfs(fd.as_raw_fd(), &mut st) };
            if rc == 0
                && let Some(name) = kernel_magic_name(st.f_type as i64)
            {
                return Err(format!(
                    "granted directory {} is the host kernel's {name} file system, which a sandbox never shows: grant a directory of data",
                    g.host.display()
                ));
            }
            Ok(fd)
        })
        .collect::<Result<_, String>>()?;
    let mount = |src: Option<&str>,
                 target: &str,
                 fstype: Option<&str>,
                 flags: u64,
                 data: Option<&str>,
                 step: &str| {
        let c = |s: Option<&str>| s.map(|s| CString::new(s).expect("no NUL"));
        let (src, target_c, fstype, data) = (c(src), c(Some(target)), c(fstype), c(data));
        let p = |s: &Option<CString>| s.as_ref().map_or(std::ptr::null(), |s| s.as_ptr());
        // SAFETY: mount(2) with C strings (or NULL) that live across the call.
        let rc = unsafe { libc::mount(p(&src), p(&target_c), p(&fstype), flags, p(&data).cast()) };
        check(rc as _, &format!("{step} ({target})"))
    };
    let locked = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    mount(
        None,
        "/",
        None,
        libc::MS_REC | libc::MS_PRIVATE,
        None,
        "make mounts private",
    )?;
    mount(
        Some("tmpfs"),
        STAGING,
        Some("tmpfs"),
        locked,
        Some("size=64k,nr_inodes=256,mode=0755"),
        "mount the jail's root",
    )?;
    for (g, fd) in grants.iter().zip(&sources) {
        let target = Path::new(STAGING).join(g.jail.strip_prefix("/").unwrap_or(&g.jail));
        std::fs::create_dir_all(&target)
            .map_err(|e| format!("jail mount point {}: {e}", target.display()))?;
        let target = target.to_string_lossy().into_owned();
        let src = format!("/proc/self/fd/{}", fd.as_raw_fd());
        mount(
            Some(&src),
            &target,
            None,
            libc::MS_BIND | libc::MS_REC,
            None,
            "bind the granted directory",
        )?;
        restrict_tree(&target, !g.writable)?;
        // A grant that holds the host's kernel interfaces (granting `/`
        // brings its /proc, /sys, cgroupfs...) gets them covered by an
        // empty read-only file system: they show the host's processes and
        // settings, which the jail's own namespaces do not hide. (Locked
        // into the grant by the user namespace, they cannot be unmounted;
        // the worker can never mount or unmount to uncover them.)
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
            .map_err(|e| format!("/proc/self/mountinfo: {e}"))?;
        for point in kernel_mounts_under(&target, &mountinfo) {
            // A mount on a file (nsfs handles under /run/netns): nothing to
            // list, and the worker can never setns (seccomp).
            if !Path::new(&point).is_dir() {
                continue;
            }
            mount(
                Some("tmpfs"),
                &point,
                Some("tmpfs"),
                locked | libc::MS_RDONLY,
                Some("size=4k,nr_inodes=1,mode=0555"),
                "cover a kernel interface inside the granted directory",
            )?;
        }
    }
    drop(sources);
    mount(
        None,
        STAGING,
        None,
        libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | locked,
        None,
        "make the jail's root read-only",
    )?;
    std::env::set_current_dir(STAGING).map_err(|e| format!("chdir {STAGING}: {e}"))?;
    // pivot_root(".", "."): the old root ends up on top of the new one, and
    // is detached right after.
    // SAFETY: pivot_root(2) and umount2(2) with static C strings.
    unsafe {
        check(
            libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr()),
            "pivot_root into the jail",
        )?;
        check(
            libc::umount2(c".".as_ptr(), libc::MNT_DETACH) as _,
            "detach the host's root",
        )?;
    }
    std::env::set_current_dir("/").map_err(|e| format!("chdir /: {e}"))?;
    Ok(())
}

/// File systems that are the kernel's interfaces rather than data: never
/// shown inside a jail, even when a grant holds a mount of one.
const KERNEL_FILE_SYSTEMS: &[&str] = &[
    "proc",
    "sysfs",
    "cgroup",
    "cgroup2",
    "debugfs",
    "tracefs",
    "securityfs",
    "bpf",
    "configfs",
    "fusectl",
    "pstore",
    "efivarfs",
    "binfmt_misc",
    "mqueue",
    "devpts",
    "devtmpfs",
    "hugetlbfs",
    "autofs",
    "rpc_pipefs",
    "nsfs",
];

/// The kernel file systems a grant itself may not be, by `statfs` magic.
fn kernel_magic_name(magic: i64) -> Option<&'static str> {
    Some(match magic {
        0x9fa0 => "proc",
        0x6265_6572 => "sysfs",
        0x0027_e0eb => "cgroup",
        0x6367_7270 => "cgroup2",
        0x6462_6720 => "debugfs",
        0x7472_6163 => "tracefs",
        0x7363_6673 => "securityfs",
        0xcafe_4a11 => "bpf",
        0x6265_6570 => "configfs",
        0x6573_5543 => "fusectl",
        0x6165_676c => "pstore",
        0xde5e_81e4 => "efivarfs",
        0x4249_4e4d => "binfmt_misc",
        0x1980_0202 => "mqueue",
        0x1cd1 => "devpts",
        0x6e73_6673 => "nsfs",
        _ => return None,
    })
}

/// The mount points (in `mountinfo`'s format) of [`KERNEL_FILE_SYSTEMS`]
/// in the tree of the mount most recently made at `target`: found by
/// parent mount id, so mounts hidden under other paths are never matched;
/// outermost only (covering one hides what is inside it).
fn kernel_mounts_under(target: &str, mountinfo: &str) -> Vec<String> {
    struct Entry {
        id: u64,
        parent: u64,
        point: String,
        kernel: bool,
    }
    let entries: Vec<Entry> = mountinfo
        .lines()
        .filter_map(|line| {
            let (head, tail) = line.split_once(" - ")?;
            let mut f = head.split(' ');
            let id = f.next()?.parse().ok()?;
            let parent = f.next()?.parse().ok()?;
            let point = unescape_mountinfo(f.nth(2)?);
            let fstype = tail.split(' ').next()?;
            Some(Entry {
                id,
                parent,
                point,
                kernel: KERNEL_FILE_SYSTEMS.contains(&fstype),
            })
        })
        .collect();
    let Some(root) = entries.iter().rev().find(|e| e.point == target) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut walk = vec![root.id];
    while let Some(id) = walk.pop() {
        for child in entries.iter().filter(|e| e.parent == id && e.id != id) {
            if child.kernel {
                out.push(child.point.clone());
            } else {
                walk.push(child.id);
            }
        }
    }
    out.sort_by_key(|p| p.matches('/').count());
    out.dedup();
    out
}

/// mountinfo's octal escapes (`\040` for a space, and tab, newline, `\`).
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match (b[i], octal) {
            (b'\\', Some(d)) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Makes a bind mount and every mount beneath it nosuid, nodev and noexec,
/// and read-only unless `writable`. (A remount would change only the top
/// mount: a file system mounted inside a read-only grant on the host would
/// stay writable in the jail.) Only adds restrictions, so the flags the
/// kernel locked on mounts from the host's namespace are kept.
fn restrict_tree(target: &str, read_only: bool) -> Result<(), String> {
    // SAFETY: mount_attr is plain integers; all-zero is "change nothing".
    let mut attr: libc::mount_attr = unsafe { std::mem::zeroed() };
    attr.attr_set = libc::MOUNT_ATTR_NOSUID | libc::MOUNT_ATTR_NODEV | libc::MOUNT_ATTR_NOEXEC;
    if read_only {
        attr.attr_set |= libc::MOUNT_ATTR_RDONLY;
    }
    let c = CString::new(target).map_err(|_| format!("{target}: path contains a NUL byte"))?;
    // SAFETY: mount_setattr(2) with a C string and a mount_attr that live
    // across the call, and the struct's size.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            libc::AT_FDCWD,
            c.as_ptr(),
            (libc::AT_RECURSIVE | libc::AT_SYMLINK_NOFOLLOW) as libc::c_uint,
            &attr as *const libc::mount_attr,
            std::mem::size_of::<libc::mount_attr>(),
        )
    };
    check(rc, &format!("restrict the granted directory ({target})"))
}

fn set_rlimit(resource: libc::__rlimit_resource_t, value: u64, name: &str) -> Result<(), String> {
    let lim = libc::rlimit {
        rlim_cur: value,
        rlim_max: value,
    };
    // SAFETY: setrlimit(2) reading a valid local rlimit.
    check(unsafe { libc::setrlimit(resource, &lim) } as _, name)
}

/// Capability sets as capset(2) takes them (version 3: two 32-bit words).
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}
#[repr(C)]
#[derive(Default, Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}
const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// Empties the bounding and ambient sets, locks the securebits (root
/// inside the namespace gets nothing back), then clears every capability
/// set; checks they are empty.
pub(crate) fn drop_capabilities() -> Result<(), String> {
    // SAFETY: prctl(2) and capset/capget(2) with integer arguments and
    // pointers to locals of the layout the kernel expects.
    unsafe {
        let mut cap = 0;
        while libc::prctl(libc::PR_CAPBSET_READ, cap, 0, 0, 0) >= 0 {
            if libc::prctl(libc::PR_CAPBSET_READ, cap, 0, 0, 0) == 1 {
                check(
                    libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) as _,
                    "drop a bounding capability",
                )?;
            }
            cap += 1;
        }
        check(
            libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_CLEAR_ALL,
                0,
                0,
                0,
            ) as _,
            "clear ambient capabilities",
        )?;
        let bits = libc::SECBIT_NOROOT
            | libc::SECBIT_NOROOT_LOCKED
            | libc::SECBIT_NO_SETUID_FIXUP
            | libc::SECBIT_NO_SETUID_FIXUP_LOCKED
            | libc::SECBIT_KEEP_CAPS_LOCKED
            | libc::SECBIT_NO_CAP_AMBIENT_RAISE
            | libc::SECBIT_NO_CAP_AMBIENT_RAISE_LOCKED;
        // Needs CAP_SETPCAP, which a process without capabilities lacks
        // (and then has nothing to lock in).
        let have_caps = {
            let mut hdr = CapHeader {
                version: LINUX_CAPABILITY_VERSION_3,
                pid: 0,
            };
            let mut data = [CapData::default(); 2];
            check(
                libc::syscall(libc::SYS_capget, &mut hdr, data.as_mut_ptr()),
                "read capabilities",
            )?;
            data.iter().any(|d| d.permitted != 0)
        };
        if have_caps {
            check(
                libc::prctl(libc::PR_SET_SECUREBITS, bits, 0, 0, 0) as _,
                "lock securebits",
            )?;
        }
        let mut hdr = CapHeader {
            version: LINUX_CAPABILITY_VERSION_3,
            pid: 0,
        };
        let data = [CapData::default(); 2];
        check(
            libc::syscall(libc::SYS_capset, &mut hdr, data.as_ptr()),
            "drop capabilities",
        )?;
        let mut now = [CapData::default(); 2];
        check(
            libc::syscall(libc::SYS_capget, &mut hdr, now.as_mut_ptr()),
            "read capabilities",
        )?;
        if now
            .iter()
            .any(|d| d.effective | d.permitted | d.inheritable != 0)
        {
            return Err("capabilities are still set after dropping them".into());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_mounts_in_a_grants_tree_outermost_first() {
        // 40 is the grant bound at /tmp; 22 a host mount hidden under the
        // jail's staging tmpfs (41), with a proc of its own beneath.
        let info = "\
1 0 8:1 / / rw - ext4 /dev/sda1 rw
22 1 8:1 / /tmp/x rw - ext4 /dev/sda1 rw
23 22 0:5 / /tmp/x/p rw - proc proc rw
41 1 0:30 / /tmp rw - tmpfs tmpfs rw
40 41 8:1 / /tmp rw - ext4 /dev/sda1 rw
42 40 0:5 / /tmp/proc rw - proc proc rw
43 42 0:6 / /tmp/proc/sys/fs/binfmt_misc rw - binfmt_misc binfmt_misc rw
44 40 0:7 / /tmp/sys rw - sysfs sysfs rw
45 44 0:8 / /tmp/sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
46 40 8:2 / /tmp/data rw - ext4 /dev/sda2 rw
47 46 0:9 / /tmp/data/my\\040dir/proc rw - proc proc rw
";
        assert_eq!(
            kernel_mounts_under("/tmp", info),
            ["/tmp/proc", "/tmp/sys", "/tmp/data/my dir/proc"]
        );
        assert_eq!(
            kernel_mounts_under("/tmp/data", info),
            ["/tmp/data/my dir/proc"]
        );
        assert!(kernel_mounts_under("/tmp/none", info).is_empty());
    }
}
