//! Cgroups for sandboxes, on cgroup v2 (unified) and v1 hierarchies alike.
//!
//! The layout is detected at run time from `/proc/self/mountinfo`: a v2
//! mount whose `cgroup.controllers` offers memory, cpu and pids is used as
//! is; otherwise the v1 `memory`, `cpu`, `cpuacct` and `pids` hierarchies are
//! used (a controller-less v2 mount next to them, as on hybrid hosts, is
//! ignored). A sandbox's cgroup is `<hierarchy>/<parent>/<name>` in each.
//!
//! Written against the files directly (no crate): the dozen files we touch
//! are stable kernel ABI, and `cgroups-rs` would bring its own v1/v2 model and
//! dependencies for no gain here.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use wasmlet_runtime::SandboxUsage;

/// Controllers a sandbox needs.
const CONTROLLERS: [&str; 3] = ["memory", "cpu", "pids"];
/// CFS period for CPU bandwidth: 100 ms, the kernel's default.
pub const CPU_PERIOD_US: u64 = 100_000;

/// Where the cgroup hierarchies are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    /// One unified hierarchy.
    V2 {
        /// The hierarchy's mount point.
        root: PathBuf,
    },
    /// One hierarchy per controller (`cpu` and `cpuacct` may be the same).
    V1 {
        /// The `memory` controller's hierarchy.
        memory: PathBuf,
        /// The `cpu` controller's hierarchy.
        cpu: PathBuf,
        /// The `cpuacct` controller's hierarchy.
        cpuacct: PathBuf,
        /// The `pids` controller's hierarchy.
        pids: PathBuf,
        /// Used (when mounted) to stop a sandbox's processes before killing
        /// them, so none can fork or escape the kill.
        freezer: Option<PathBuf>,
    },
}

/// A problem with the host's cgroups, worded for the person who has to fix it.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// No usable hierarchy.
    #[error("no usable cgroup hierarchy: {0}")]
    Unavailable(String),
    /// A cgroup file could not be written or read.
    #[error("{path}: {source}{hint}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the system said.
        source: io::Error,
        /// A suffix saying what to do about it, or empty.
        hint: &'static str,
    },
}

fn io_err(path: &Path, source: io::Error) -> CgroupError {
    let hint = match source.kind() {
        io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem => {
            " (sandboxes need root or a delegated, writable cgroup hierarchy)"
        }
        _ => "",
    };
    CgroupError::Io {
        path: path.to_path_buf(),
        source,
        hint,
    }
}

fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    fs::write(path, value).map_err(|e| io_err(path, e))
}

/// One-off reads (usage, read after every invocation, uses `UsageFiles`).
fn read(path: &Path) -> Option<String> {
    fs::read_to_string(path).ok()
}

impl Layout {
    /// Detects this host's layout.
    pub fn detect() -> Result<Layout, CgroupError> {
        let mountinfo = fs::read_to_string("/proc/self/mountinfo")
            .map_err(|e| CgroupError::Unavailable(format!("/proc/self/mountinfo: {e}")))?;
        Layout::from_mountinfo(&mountinfo)
    }

    /// Picks the layout from mountinfo text (the paths it names are read to
    /// see which v2 controllers exist).
    pub fn from_mountinfo(mountinfo: &str) -> Result<Layout, CgroupError> {
        let mut v1: Vec<(PathBuf, Vec<String>)> = Vec::new();
        for line in mountinfo.lines() {
            let Some((left, right)) = line.split_once(" - ") else {
                continue;
            };
            let mount_point = left.split(' ').nth(4).unwrap_or_default();
            let mut r = right.split(' ');
            let fstype = r.next().unwrap_or_default();
            let super_opts = r.nth(1).unwrap_or_default();
            match fstype {
                "cgroup2" => {
                    let root = PathBuf::from(mount_point);
                    let controllers = read(&root.join("cgroup.controllers")).unwrap_or_default();
                    let have: Vec<&str> = controllers.split_whitespace().collect();
                    if CONTROLLERS.iter().all(|c| have.contains(c)) {
                        return Ok(Layout::V2 { root });
                    }
                }
                "cgroup" => v1.push((
                    PathBuf::from(mount_point),
                    super_opts.split(',').map(str::to_string).collect(),
                )),
                _ => {}
            }
        }
        let find = |name: &str| {
            v1.iter()
                .find(|(_, opts)| opts.iter().any(|o| o == name))
                .map(|(p, _)| p.clone())
                .ok_or_else(|| {
                    CgroupError::Unavailable(format!(
                        "no cgroup v2 hierarchy with memory, cpu and pids, and no v1 `{name}` hierarchy"
                    ))
                })
        };
        Ok(Layout::V1 {
            memory: find("memory")?,
            cpu: find("cpu")?,
            cpuacct: find("cpuacct")?,
            pids: find("pids")?,
            freezer: find("freezer").ok(),
        })
    }

    /// The distinct hierarchy roots.
    fn roots(&self) -> Vec<PathBuf> {
        match self {
            Layout::V2 { root } => vec![root.clone()],
            Layout::V1 {
                memory,
                cpu,
                cpuacct,
                pids,
                freezer,
            } => {
                let mut v = vec![memory.clone(), cpu.clone(), cpuacct.clone(), pids.clone()];
                v.extend(freezer.clone());
                v.dedup();
                v.sort();
                v.dedup();
                v
            }
        }
    }

    /// Whether this is cgroup v2.
    pub fn is_v2(&self) -> bool {
        matches!(self, Layout::V2 { .. })
    }
}

/// Hard limits of one sandbox.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CgroupLimits {
    /// Memory in bytes.
    pub memory: Option<u64>,
    /// CPU bandwidth in CPUs (0.5 = half of one CPU).
    pub cpus: Option<f64>,
    /// Processes and threads.
    pub pids: Option<u64>,
}

/// Where a supervisor puts its sandboxes' cgroups, and where it records
/// that it owns them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// The parent of every sandbox cgroup, relative to each hierarchy's
    /// root (`wasmlet`, or `<own cgroup>/wasmlet` in a delegated subtree).
    pub parent: PathBuf,
    /// Directory of owner lock files (`/run/wasmlet/cgroups`): a sandbox's
    /// `<name>.lock` is held (flock) by its supervisor for as long as the
    /// sandbox lives, so a lock that can be taken proves the owner gone,
    /// whatever pid namespace it ran in.
    pub owners: PathBuf,
}

/// Default directory of owner lock files.
pub const DEFAULT_OWNERS_DIR: &str = "/run/wasmlet/cgroups";

impl Placement {
    /// `parent` under each hierarchy's root.
    pub fn at_root(parent: &str) -> Placement {
        Placement {
            parent: PathBuf::from(parent),
            owners: PathBuf::from(DEFAULT_OWNERS_DIR),
        }
    }

    /// `parent` under the cgroup this process is in, on cgroup v2 (a
    /// subtree delegated to the supervisor: systemd's `Delegate=yes`, or a
    /// cgroup namespace). `proc_self_cgroup` is `/proc/self/cgroup`'s text.
    pub fn delegated(proc_self_cgroup: &str, parent: &str) -> Result<Placement, CgroupError> {
        let own = proc_self_cgroup
            .lines()
            .find_map(|l| l.strip_prefix("0::"))
            .ok_or_else(|| {
                CgroupError::Unavailable(
                    "a delegated cgroup needs cgroup v2 (no `0::` line in /proc/self/cgroup)"
                        .into(),
                )
            })?;
        Ok(Placement {
            parent: Path::new(own.trim().trim_start_matches('/')).join(parent),
            owners: PathBuf::from(DEFAULT_OWNERS_DIR),
        })
    }
}

/// A fresh sandbox name: `<supervisor pid>-<counter>-<random>`. The random
/// part keeps names unique across pid namespaces (two supervisors may both
/// be pid 1 in their own); ownership is decided by the lock file, never by
/// the pid.
pub fn new_name() -> String {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut r = [0u8; 4];
    // SAFETY: getrandom(2) filling a valid local buffer of its length.
    let n = unsafe { libc::getrandom(r.as_mut_ptr().cast(), r.len(), 0) };
    if n != r.len() as isize {
        // (Never on Linux >= 3.17; the time still makes clashes unlikely.)
        r = (std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .subsec_nanos())
        .to_le_bytes();
    }
    format!(
        "{}-{}-{:08x}",
        std::process::id(),
        COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        u32::from_le_bytes(r)
    )
}

/// One sandbox's cgroup (a directory per hierarchy), removed on drop.
#[derive(Debug)]
pub struct Cgroup {
    layout: Layout,
    /// `<parent>/<name>` below each root.
    rel: PathBuf,
    /// The usage files, opened once: usage is read after every invocation,
    /// and `pread` on an open file is one system call instead of three.
    usage_files: std::sync::OnceLock<UsageFiles>,
    /// The owner lock, held while this sandbox lives.
    owner: Option<(PathBuf, fs::File)>,
}

/// CPU time, memory peak, OOM events, CPU stats (v1: cpuacct.usage,
/// memory.max_usage_in_bytes, memory.oom_control, cpu.stat; v2: cpu.stat,
/// memory.peak, memory.events, and no fourth: cpu.stat has both).
#[derive(Debug)]
struct UsageFiles([Option<fs::File>; 4]);

/// Takes the owner lock `path` (creating it): `Ok(Some(file))` holds it,
/// `Ok(None)` means another live process holds it.
fn try_lock(path: &Path, create: bool) -> io::Result<Option<fs::File>> {
    use std::os::fd::AsRawFd;
    let file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(create)
        .truncate(false)
        .open(path)?;
    // SAFETY: flock(2) on a valid fd we own.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        return Ok(Some(file));
    }
    let e = io::Error::last_os_error();
    if e.kind() == io::ErrorKind::WouldBlock {
        Ok(None)
    } else {
        Err(e)
    }
}

impl Cgroup {
    /// Creates `<parent>/<name>` with `limits` in every hierarchy, owned
    /// (locked) by this process.
    pub fn create(
        layout: &Layout,
        placement: &Placement,
        name: &str,
        limits: &CgroupLimits,
    ) -> Result<Cgroup, CgroupError> {
        fs::create_dir_all(&placement.owners).map_err(|e| io_err(&placement.owners, e))?;
        let lock_path = placement.owners.join(format!("{name}.lock"));
        let lock = try_lock(&lock_path, true)
            .map_err(|e| io_err(&lock_path, e))?
            .ok_or_else(|| {
                CgroupError::Unavailable(format!(
                    "{} is held by another process",
                    lock_path.display()
                ))
            })?;
        let rel = placement.parent.join(name);
        let cg = Cgroup {
            layout: layout.clone(),
            rel,
            usage_files: Default::default(),
            owner: Some((lock_path, lock)),
        };
        if let Layout::V2 { root } = layout {
            enable_controllers_v2(root, &placement.parent)?;
        }
        for root in layout.roots() {
            let dir = root.join(&cg.rel);
            fs::create_dir_all(&dir).map_err(|e| io_err(&dir, e))?;
        }
        // From here on, `cg` removes what was made if a limit fails.
        cg.apply(limits)?;
        Ok(cg)
    }

    fn apply(&self, limits: &CgroupLimits) -> Result<(), CgroupError> {
        match &self.layout {
            Layout::V2 { root } => {
                let dir = root.join(&self.rel);
                if let Some(m) = limits.memory {
                    write(&dir.join("memory.max"), &m.to_string())?;
                    // No swap: the limit is the limit. (Absent without swap accounting.)
                    let _ = fs::write(dir.join("memory.swap.max"), "0");
                }
                if let Some(c) = limits.cpus {
                    let quota = (c * CPU_PERIOD_US as f64).round() as u64;
                    write(&dir.join("cpu.max"), &format!("{quota} {CPU_PERIOD_US}"))?;
                }
                if let Some(p) = limits.pids {
                    write(&dir.join("pids.max"), &p.to_string())?;
                }
            }
            Layout::V1 {
                memory, cpu, pids, ..
            } => {
                if let Some(m) = limits.memory {
                    let dir = memory.join(&self.rel);
                    write(&dir.join("memory.limit_in_bytes"), &m.to_string())?;
                    // Also cap memory+swap where swap accounting exists.
                    let _ = fs::write(dir.join("memory.memsw.limit_in_bytes"), m.to_string());
                }
                if let Some(c) = limits.cpus {
                    let dir = cpu.join(&self.rel);
                    let quota = (c * CPU_PERIOD_US as f64).round() as u64;
                    write(&dir.join("cpu.cfs_period_us"), &CPU_PERIOD_US.to_string())?;
                    write(&dir.join("cpu.cfs_quota_us"), &quota.to_string())?;
                }
                if let Some(p) = limits.pids {
                    write(&pids.join(&self.rel).join("pids.max"), &p.to_string())?;
                }
            }
        }
        Ok(())
    }

    /// The files a new, still single-threaded process writes "0" to, one
    /// per hierarchy, to move itself into the sandbox before `exec`.
    ///
    /// On v1 that is `tasks`, not `cgroup.procs`: moving a whole thread
    /// group takes the kernel's global `cgroup_threadgroup_rwsem` for
    /// writing, which waits for an RCU grace period (8-13 ms measured
    /// here, most of a sandbox's start), while moving the calling thread
    /// alone skips that lock. For a process with one thread (a forked
    /// child before `exec`) the two are the same move. v2 has no `tasks`
    /// file (and `cgroup.threads` needs threaded mode): `cgroup.procs`.
    pub fn join_files(&self) -> Vec<PathBuf> {
        let file = if self.layout.is_v2() {
            "cgroup.procs"
        } else {
            "tasks"
        };
        self.layout
            .roots()
            .into_iter()
            .map(|r| r.join(&self.rel).join(file))
            .collect()
    }

    /// The sandbox's directory in the hierarchy holding `controller`.
    pub fn dir(&self, controller: &str) -> PathBuf {
        match &self.layout {
            Layout::V2 { root } => root.join(&self.rel),
            Layout::V1 {
                memory,
                cpu,
                cpuacct,
                pids,
                freezer,
            } => match controller {
                "memory" => memory,
                "cpu" => cpu,
                "cpuacct" => cpuacct,
                "freezer" => freezer.as_ref().unwrap_or(pids),
                _ => pids,
            }
            .join(&self.rel),
        }
    }

    /// Reads CPU time, memory peak, OOM kills and throttling.
    pub fn usage(&self) -> SandboxUsage {
        let files = self.usage_files.get_or_init(|| {
            let paths = match &self.layout {
                Layout::V2 { .. } => {
                    // cpu.stat holds both CPU usage and throttling: read once.
                    let d = self.dir("memory");
                    [
                        Some(d.join("cpu.stat")),
                        Some(d.join("memory.peak")),
                        Some(d.join("memory.events")),
                        None,
                    ]
                }
                Layout::V1 { .. } => [
                    Some(self.dir("cpuacct").join("cpuacct.usage")),
                    Some(self.dir("memory").join("memory.max_usage_in_bytes")),
                    Some(self.dir("memory").join("memory.oom_control")),
                    Some(self.dir("cpu").join("cpu.stat")),
                ],
            };
            UsageFiles(paths.map(|p| p.and_then(|p| fs::File::open(p).ok())))
        });
        let texts: [String; 4] = std::array::from_fn(|i| {
            use std::os::unix::fs::FileExt;
            let Some(f) = &files.0[i] else {
                return String::new();
            };
            let mut buf = [0u8; 4096];
            let n = f.read_at(&mut buf, 0).unwrap_or(0);
            String::from_utf8_lossy(&buf[..n]).into_owned()
        });
        let num = |i: usize| texts[i].trim().parse::<u64>().unwrap_or(0);
        let field = |i: usize, key: &str| {
            texts[i]
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(' ')?;
                    (k == key).then(|| v.trim().parse::<u64>().ok()).flatten()
                })
                .unwrap_or(0)
        };
        match &self.layout {
            Layout::V2 { .. } => SandboxUsage {
                cpu_ns: field(0, "usage_usec") * 1000,
                memory_peak_bytes: num(1),
                oom_kills: field(2, "oom_kill"),
                throttled_periods: field(0, "nr_throttled"),
            },
            Layout::V1 { .. } => SandboxUsage {
                cpu_ns: num(0),
                memory_peak_bytes: num(1),
                oom_kills: field(2, "oom_kill"),
                throttled_periods: field(3, "nr_throttled"),
            },
        }
    }

    /// Kills whatever is still inside and removes the directories (then
    /// the owner lock). Idempotent.
    pub fn remove(&self) {
        // Only our own workers are in it, and none can start a process
        // (their seccomp filter allows threads only): no freeze needed.
        remove_sandbox(&self.layout, &self.rel, false);
        if let Some((path, _)) = &self.owner {
            let _ = fs::remove_file(path);
        }
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        self.remove();
    }
}

/// Hands the sandbox controllers down from the root to `parent` (on v2 a
/// controller is only available in a cgroup whose parent enables it). In a
/// delegated subtree, the supervisor may sit in the cgroup it must enable
/// controllers on, which v2 forbids ("no internal processes"): it then
/// moves itself into a `supervisor` leaf first.
fn enable_controllers_v2(root: &Path, parent: &Path) -> Result<(), CgroupError> {
    let mut dir = root.to_path_buf();
    let mut parts = parent.components().peekable();
    loop {
        let file = dir.join("cgroup.subtree_control");
        if let Err(e) = fs::write(&file, "+memory +cpu +pids") {
            // EBUSY: processes (ours) live here; move to a leaf and retry.
            if e.raw_os_error() == Some(libc::EBUSY) {
                let leaf = dir.join("supervisor");
                fs::create_dir_all(&leaf).map_err(|e| io_err(&leaf, e))?;
                write(&leaf.join("cgroup.procs"), "0")?;
                write(&file, "+memory +cpu +pids")?;
            } else if parts.peek().is_some() && dir == root {
                // Above a delegated subtree the root may not be ours to
                // write; it already hands the controllers down if usable.
            } else {
                return Err(io_err(&file, e));
            }
        }
        let Some(part) = parts.next() else {
            return Ok(());
        };
        dir.push(part);
        fs::create_dir_all(&dir).map_err(|e| io_err(&dir, e))?;
    }
}

/// Stops and kills every process of a sandbox, then removes its directory
/// in every hierarchy: v2 writes `cgroup.kill`; v1 freezes the cgroup
/// (when the freezer is mounted), kills what is in it, and thaws it so the
/// kills land. A process cannot fork its way out of either. Without
/// `may_fork` (the caller knows nothing in it can create a process) v1
/// skips the freeze, which waits for dying processes: it kills, and the
/// removal retries (killing again) until the last one is gone.
fn remove_sandbox(layout: &Layout, rel: &Path, may_fork: bool) {
    match layout {
        Layout::V2 { root } => {
            // (Opened without O_CREAT: kernels before 5.14 have no
            // cgroup.kill, and then the processes are killed one by one.)
            let kill = root.join(rel).join("cgroup.kill");
            let written = fs::OpenOptions::new()
                .write(true)
                .open(&kill)
                .and_then(|mut f| std::io::Write::write_all(&mut f, b"1"));
            if written.is_err() {
                kill_procs(&root.join(rel));
            }
        }
        Layout::V1 { freezer, .. } => {
            if !may_fork {
                // (Every process is in every hierarchy: one list is all.)
                if let Some(root) = layout.roots().first() {
                    kill_procs(&root.join(rel));
                }
            } else {
                let freezer = freezer.as_ref().map(|f| f.join(rel)).filter(|d| d.exists());
                if let Some(f) = &freezer {
                    freeze_v1(f, true);
                }
                for root in layout.roots() {
                    kill_procs(&root.join(rel));
                }
                if let Some(f) = &freezer {
                    freeze_v1(f, false);
                }
            }
        }
    }
    for root in layout.roots() {
        remove_dir(&root.join(rel));
    }
}

/// Waits between polls of something the kernel finishes soon (a freeze,
/// the last exit in a cgroup): 20 µs at first, doubling up to 5 ms, about
/// 1 s in all. (A fixed millisecond or more per poll made a sandbox's
/// teardown cost more than its start.)
struct Backoff {
    next: std::time::Duration,
    waited: std::time::Duration,
}

impl Backoff {
    const FIRST: std::time::Duration = std::time::Duration::from_micros(20);
    const MAX: std::time::Duration = std::time::Duration::from_millis(5);
    const BUDGET: std::time::Duration = std::time::Duration::from_secs(1);

    fn new() -> Backoff {
        Backoff {
            next: Self::FIRST,
            waited: std::time::Duration::ZERO,
        }
    }

    /// Sleeps and returns true, or returns false once the budget is spent.
    fn wait(&mut self) -> bool {
        if self.waited >= Self::BUDGET {
            return false;
        }
        std::thread::sleep(self.next);
        self.waited += self.next;
        self.next = (self.next * 2).min(Self::MAX);
        true
    }
}

/// Sets a v1 freezer cgroup FROZEN (waiting until it is) or THAWED.
fn freeze_v1(dir: &Path, frozen: bool) {
    let state = if frozen { "FROZEN" } else { "THAWED" };
    if fs::write(dir.join("freezer.state"), state).is_err() {
        return;
    }
    let mut backoff = Backoff::new();
    while read(&dir.join("freezer.state")).is_none_or(|s| s.trim() != state) {
        if !backoff.wait() {
            return;
        }
    }
}

fn kill_procs(dir: &Path) {
    let procs = read(&dir.join("cgroup.procs")).unwrap_or_default();
    for pid in procs
        .split_whitespace()
        .filter_map(|p| p.parse::<i32>().ok())
    {
        // SAFETY: kill(2) with a pid read from the sandbox's cgroup and
        // SIGKILL; it touches no memory of ours.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
}

/// Removes a cgroup directory, killing stragglers and retrying while the
/// kernel finishes their exit.
fn remove_dir(dir: &Path) {
    let mut backoff = Backoff::new();
    loop {
        match fs::remove_dir(dir) {
            Ok(()) => return,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return,
            // Child cgroups (or, on a fake tree, files): waiting won't help.
            Err(e) if e.raw_os_error() == Some(libc::ENOTEMPTY) => {
                tracing::warn!("cannot remove cgroup {}: {e}", dir.display());
                return;
            }
            Err(e) => {
                kill_procs(dir);
                if !backoff.wait() {
                    tracing::warn!("cannot remove cgroup {}: {e}", dir.display());
                    return;
                }
            }
        }
    }
}

/// Removes sandboxes under the placement's parent whose owner is provably
/// gone: their lock file exists and can be taken. A sandbox without a lock
/// file here (another host path for `/run`, another version, another
/// supervisor's own layout) is left alone. Returns how many were removed.
pub fn clean_stale(layout: &Layout, placement: &Placement) -> usize {
    let mut removed = 0;
    let mut seen = std::collections::BTreeSet::new();
    for root in layout.roots() {
        let Ok(entries) = fs::read_dir(root.join(&placement.parent)) else {
            continue;
        };
        for e in entries.flatten() {
            // (The type from the directory listing: no stat per control file.)
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                seen.insert(e.file_name().to_string_lossy().into_owned());
            }
        }
    }
    for name in seen {
        let lock_path = placement.owners.join(format!("{name}.lock"));
        // No lock file: the owner cannot be proven gone.
        let Ok(Some(_lock)) = try_lock(&lock_path, false) else {
            continue;
        };
        remove_sandbox(layout, &placement.parent.join(&name), true);
        let _ = fs::remove_file(&lock_path);
        removed += 1;
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake cgroupfs tree: directories and the files a kernel would show.
    fn fake_v2() -> (tempfile::TempDir, String) {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("cgroup");
        fs::create_dir_all(&root).unwrap();
        fs::write(
            root.join("cgroup.controllers"),
            "cpuset cpu io memory pids\n",
        )
        .unwrap();
        fs::write(root.join("cgroup.subtree_control"), "").unwrap();
        let mountinfo = format!(
            "30 23 0:26 / /proc rw - proc proc rw\n\
             31 23 0:27 / {} rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n",
            root.display()
        );
        (t, mountinfo)
    }

    #[test]
    fn detects_v2_and_writes_v2_files() {
        let (t, mountinfo) = fake_v2();
        let layout = Layout::from_mountinfo(&mountinfo).unwrap();
        assert!(layout.is_v2());
        let limits = CgroupLimits {
            memory: Some(64 << 20),
            cpus: Some(0.5),
            pids: Some(16),
        };
        let placement = Placement {
            parent: "wasmlet".into(),
            owners: t.path().join("owners"),
        };
        let cg = Cgroup::create(&layout, &placement, "1-0", &limits).unwrap();
        assert!(t.path().join("owners/1-0.lock").exists());
        let dir = t.path().join("cgroup/wasmlet/1-0");
        assert_eq!(
            fs::read_to_string(dir.join("memory.max")).unwrap(),
            "67108864"
        );
        assert_eq!(
            fs::read_to_string(dir.join("cpu.max")).unwrap(),
            "50000 100000"
        );
        assert_eq!(fs::read_to_string(dir.join("pids.max")).unwrap(), "16");
        assert_eq!(
            fs::read_to_string(t.path().join("cgroup/cgroup.subtree_control")).unwrap(),
            "+memory +cpu +pids"
        );
        assert_eq!(cg.join_files(), vec![dir.join("cgroup.procs")]);
        // Usage comes from the v2 files.
        fs::write(dir.join("cpu.stat"), "usage_usec 1500\nnr_throttled 3\n").unwrap();
        fs::write(dir.join("memory.peak"), "4096\n").unwrap();
        fs::write(dir.join("memory.events"), "low 0\noom 1\noom_kill 1\n").unwrap();
        assert_eq!(
            cg.usage(),
            SandboxUsage {
                cpu_ns: 1_500_000,
                memory_peak_bytes: 4096,
                oom_kills: 1,
                throttled_periods: 3
            }
        );
        // (A real cgroupfs drops these files with the directory.)
        for f in [
            "memory.max",
            "memory.swap.max",
            "cpu.max",
            "pids.max",
            "cpu.stat",
            "memory.peak",
            "memory.events",
        ] {
            let _ = fs::remove_file(dir.join(f));
        }
        // Ending it kills everything in it at once (cgroup.kill).
        fs::write(dir.join("cgroup.kill"), "").unwrap();
        cg.remove();
        assert_eq!(fs::read_to_string(dir.join("cgroup.kill")).unwrap(), "1");
        assert!(!t.path().join("owners/1-0.lock").exists());
        fs::remove_file(dir.join("cgroup.kill")).unwrap();
        drop(cg);
        assert!(!dir.exists());
    }

    #[test]
    fn delegated_subtree_on_v2() {
        let (t, mountinfo) = fake_v2();
        let layout = Layout::from_mountinfo(&mountinfo).unwrap();
        let placement =
            Placement::delegated("0::/system.slice/wasmlet.service\n", "wasmlet").unwrap();
        assert_eq!(
            placement.parent,
            Path::new("system.slice/wasmlet.service/wasmlet")
        );
        assert!(Placement::delegated("4:memory:/x\n", "wasmlet").is_err());
        let placement = Placement {
            owners: t.path().join("owners"),
            ..placement
        };
        let cg = Cgroup::create(&layout, &placement, "1-0-ab", &CgroupLimits::default()).unwrap();
        // Controllers handed down every level to the sandboxes' parent.
        let root = t.path().join("cgroup");
        for level in [
            "system.slice",
            "system.slice/wasmlet.service",
            "system.slice/wasmlet.service/wasmlet",
        ] {
            assert_eq!(
                fs::read_to_string(root.join(level).join("cgroup.subtree_control")).unwrap(),
                "+memory +cpu +pids",
                "{level}"
            );
        }
        assert!(
            root.join("system.slice/wasmlet.service/wasmlet/1-0-ab")
                .is_dir()
        );
        drop(cg);
        assert!(
            !root
                .join("system.slice/wasmlet.service/wasmlet/1-0-ab")
                .exists()
        );
    }

    #[test]
    fn stale_cleanup_needs_proof_the_owner_is_gone() {
        let (t, mountinfo) = fake_v2();
        let layout = Layout::from_mountinfo(&mountinfo).unwrap();
        let placement = Placement {
            parent: "wasmlet".into(),
            owners: t.path().join("owners"),
        };
        let parent = t.path().join("cgroup/wasmlet");
        fs::create_dir_all(&placement.owners).unwrap();
        // gone: its owner's lock file is there and free (the owner died).
        fs::create_dir_all(parent.join("11-0-gone")).unwrap();
        fs::write(placement.owners.join("11-0-gone.lock"), "").unwrap();
        // live: a supervisor, perhaps in another pid namespace (its pid
        // means nothing here), holds its lock.
        fs::create_dir_all(parent.join("1-0-live")).unwrap();
        let held = try_lock(&placement.owners.join("1-0-live.lock"), true)
            .unwrap()
            .unwrap();
        // unknown: no lock file here at all.
        fs::create_dir_all(parent.join("99999999-0-unknown")).unwrap();
        assert_eq!(clean_stale(&layout, &placement), 1);
        assert!(!parent.join("11-0-gone").exists());
        assert!(!placement.owners.join("11-0-gone.lock").exists());
        assert!(parent.join("1-0-live").exists());
        assert!(parent.join("99999999-0-unknown").exists());
        drop(held);
        assert_eq!(clean_stale(&layout, &placement), 1);
        assert!(!parent.join("1-0-live").exists());
    }

    #[test]
    fn names_are_unique() {
        let (a, b) = (new_name(), new_name());
        assert_ne!(a, b);
        assert!(a.starts_with(&format!("{}-", std::process::id())), "{a}");
    }

    #[test]
    fn controllerless_v2_falls_back_to_v1() {
        let t = tempfile::tempdir().unwrap();
        let unified = t.path().join("unified");
        fs::create_dir_all(&unified).unwrap();
        fs::write(unified.join("cgroup.controllers"), "").unwrap();
        let m = |id, dir: &str, opts: &str| {
            format!(
                "{id} 31 0:{id} / {}/{dir} rw - cgroup cgroup rw,{opts}\n",
                t.path().display()
            )
        };
        let mountinfo = format!(
            "{}{}{}{}41 31 0:38 / {} rw - cgroup2 cgroup2 rw\n",
            m(32, "cpu,cpuacct", "cpu,cpuacct"),
            m(35, "memory", "memory"),
            m(39, "pids", "pids"),
            m(40, "systemd", "name=systemd"),
            unified.display()
        );
        let layout = Layout::from_mountinfo(&mountinfo).unwrap();
        let cpu = t.path().join("cpu,cpuacct");
        assert_eq!(
            layout,
            Layout::V1 {
                memory: t.path().join("memory"),
                cpu: cpu.clone(),
                cpuacct: cpu,
                pids: t.path().join("pids"),
                freezer: None,
            }
        );
        assert_eq!(
            layout.roots().len(),
            3,
            "a co-mounted hierarchy counts once"
        );
    }

    #[test]
    fn missing_controllers_are_named() {
        let err = Layout::from_mountinfo(
            "1 2 0:1 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n",
        )
        .unwrap_err();
        assert!(err.to_string().contains("no v1 `cpu` hierarchy"), "{err}");
    }

    #[test]
    fn permission_errors_say_what_is_missing() {
        let e = io_err(
            Path::new("/sys/fs/cgroup/x"),
            io::Error::from(io::ErrorKind::PermissionDenied),
        );
        assert!(e.to_string().contains("need root"), "{e}");
    }
}
