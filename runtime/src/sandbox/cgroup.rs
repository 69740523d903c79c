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

/// Controllers a sandbox needs.
const CONTROLLERS: [&str; 3] = ["memory", "cpu", "pids"];
/// CFS period for CPU bandwidth: 100 ms, the kernel's default.
pub const CPU_PERIOD_US: u64 = 100_000;

/// Where the cgroup hierarchies are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    /// One unified hierarchy.
    V2 { root: PathBuf },
    /// One hierarchy per controller (`cpu` and `cpuacct` may be the same).
    V1 {
        memory: PathBuf,
        cpu: PathBuf,
        cpuacct: PathBuf,
        pids: PathBuf,
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
        path: PathBuf,
        source: io::Error,
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
            } => {
                let mut v = vec![memory.clone(), cpu.clone(), cpuacct.clone(), pids.clone()];
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

/// What a sandbox's cgroup has used so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CgroupUsage {
    /// CPU time of all its processes, in nanoseconds.
    pub cpu_ns: u64,
    /// Highest memory use, in bytes.
    pub memory_peak_bytes: u64,
    /// Times the kernel's OOM killer killed a process in it.
    pub oom_kills: u64,
    /// Times its CPU bandwidth was throttled.
    pub throttled_periods: u64,
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
}

/// CPU time, memory peak, OOM events, CPU stats (v1: cpuacct.usage,
/// memory.max_usage_in_bytes, memory.oom_control, cpu.stat; v2: cpu.stat,
/// memory.peak, memory.events, and no fourth: cpu.stat has both).
#[derive(Debug)]
struct UsageFiles([Option<fs::File>; 4]);

impl Cgroup {
    /// Creates `<parent>/<name>` with `limits` in every hierarchy.
    pub fn create(
        layout: &Layout,
        parent: &str,
        name: &str,
        limits: &CgroupLimits,
    ) -> Result<Cgroup, CgroupError> {
        let rel = Path::new(parent).join(name);
        let cg = Cgroup {
            layout: layout.clone(),
            rel,
            usage_files: Default::default(),
        };
        if let Layout::V2 { root } = layout {
            // Each level above the sandbox must hand the controllers down.
            let mut dir = root.clone();
            for part in Path::new(parent).components() {
                write(&dir.join("cgroup.subtree_control"), "+memory +cpu +pids")?;
                dir.push(part);
                fs::create_dir_all(&dir).map_err(|e| io_err(&dir, e))?;
            }
            write(&dir.join("cgroup.subtree_control"), "+memory +cpu +pids")?;
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

    /// The `cgroup.procs` files a process must be written to, one per
    /// hierarchy. (Writing "0" to one moves the writer itself.)
    pub fn procs_files(&self) -> Vec<PathBuf> {
        self.layout
            .roots()
            .into_iter()
            .map(|r| r.join(&self.rel).join("cgroup.procs"))
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
            } => match controller {
                "memory" => memory,
                "cpu" => cpu,
                "cpuacct" => cpuacct,
                _ => pids,
            }
            .join(&self.rel),
        }
    }

    /// Reads CPU time, memory peak, OOM kills and throttling.
    pub fn usage(&self) -> CgroupUsage {
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
            Layout::V2 { .. } => CgroupUsage {
                cpu_ns: field(0, "usage_usec") * 1000,
                memory_peak_bytes: num(1),
                oom_kills: field(2, "oom_kill"),
                throttled_periods: field(0, "nr_throttled"),
            },
            Layout::V1 { .. } => CgroupUsage {
                cpu_ns: num(0),
                memory_peak_bytes: num(1),
                oom_kills: field(2, "oom_kill"),
                throttled_periods: field(3, "nr_throttled"),
            },
        }
    }

    /// Kills whatever is still inside and removes the directories.
    pub fn remove(&self) {
        for root in self.layout.roots() {
            remove_dir(&root.join(&self.rel));
        }
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        self.remove();
    }
}

/// Kills the processes of a cgroup directory and removes it, retrying while
/// the kernel finishes reaping them.
fn remove_dir(dir: &Path) {
    if !dir.exists() {
        return;
    }
    for attempt in 0..100 {
        let procs = read(&dir.join("cgroup.procs")).unwrap_or_default();
        for pid in procs
            .split_whitespace()
            .filter_map(|p| p.parse::<i32>().ok())
        {
            // SAFETY: kill(2) with a pid read from the cgroup and SIGKILL; it
            // touches no memory of ours.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        match fs::remove_dir(dir) {
            Ok(()) => return,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return,
            Err(e) => {
                if attempt == 99 {
                    tracing::warn!("cannot remove cgroup {}: {e}", dir.display());
                }
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        }
    }
}

/// Removes sandboxes under `parent` left by supervisors that are gone.
/// Sandbox names start with their supervisor's pid (`<pid>-<n>`), so live
/// supervisors' sandboxes are left alone.
pub fn clean_stale(layout: &Layout, parent: &str) -> usize {
    let mut removed = 0;
    for root in layout.roots() {
        let Ok(entries) = fs::read_dir(root.join(parent)) else {
            continue;
        };
        for e in entries.flatten() {
            let path = e.path();
            if !path.is_dir() {
                continue;
            }
            let name = e.file_name().to_string_lossy().into_owned();
            let owner = name.split('-').next().and_then(|p| p.parse::<i32>().ok());
            let alive = owner.is_some_and(|pid| Path::new(&format!("/proc/{pid}")).exists());
            if !alive {
                remove_dir(&path);
                removed += 1;
            }
        }
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
        let cg = Cgroup::create(&layout, "wasmlet", "1-0", &limits).unwrap();
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
        assert_eq!(cg.procs_files(), vec![dir.join("cgroup.procs")]);
        // Usage comes from the v2 files.
        fs::write(dir.join("cpu.stat"), "usage_usec 1500\nnr_throttled 3\n").unwrap();
        fs::write(dir.join("memory.peak"), "4096\n").unwrap();
        fs::write(dir.join("memory.events"), "low 0\noom 1\noom_kill 1\n").unwrap();
        assert_eq!(
            cg.usage(),
            CgroupUsage {
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
        drop(cg);
        assert!(!dir.exists());
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
