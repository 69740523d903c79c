//! Sandbox settings: plain serde data an operator writes (`[sandbox]` in
//! `serve`'s or the shim's own configuration) or the CLI builds from its
//! `--sandbox-*` flags. [`SandboxConfig::validate`] checks them before any
//! cgroup or process exists.

use crate::Error;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Default parent of sandbox cgroups in each hierarchy (as Docker uses `docker/`).
pub const DEFAULT_CGROUP_PARENT: &str = "wasmlet";
/// Default pids limit: the worker's threads with room to spare, no forks.
pub const DEFAULT_SANDBOX_PIDS: u64 = 64;
/// Default grace after an invocation's timeout before the supervisor kills
/// the worker (the worker stops a guest running wasm itself, within an
/// epoch tick; this catches a guest stuck in a host call).
pub const DEFAULT_DEADLINE_GRACE: Duration = Duration::from_secs(1);
/// Default host uid and gid of a sandbox worker: `nobody`/`nogroup`.
pub const DEFAULT_SANDBOX_ID: u32 = 65534;
/// Default open-files limit of a worker (RLIMIT_NOFILE).
pub const DEFAULT_NOFILE: u64 = 1024;
/// Default largest file a worker may write (RLIMIT_FSIZE): 1 GiB.
pub const DEFAULT_FSIZE: u64 = 1 << 30;
/// Default longest call of a sandbox without a timeout of its own
/// (an invocation without a timeout, or loading the function).
pub const DEFAULT_MAX_CALL: Duration = Duration::from_secs(300);

/// Settings of a sandbox.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SandboxConfig {
    /// Memory of the whole worker (code, runtime, all instances), bytes.
    pub memory: Option<u64>,
    /// CPU bandwidth, in CPUs: more than 0, at most the host's CPUs.
    pub cpus: Option<f64>,
    /// Processes and threads; at least what a worker needs.
    pub pids: Option<u64>,
    /// Parent cgroup, relative to each hierarchy's root.
    pub cgroup_parent: String,
    /// The sandbox's exact cgroup, relative to each hierarchy's root (an
    /// orchestrator's choice, such as a container's `linux.cgroupsPath`),
    /// instead of a fresh one under `cgroup_parent`. Created if missing and
    /// removed with the sandbox; its siblings are never touched (no
    /// stale-cgroup cleaning there).
    pub cgroup_path: Option<String>,
    /// Put sandbox cgroups under the supervisor's own cgroup (a subtree
    /// delegated to it on cgroup v2: systemd's `Delegate=yes`, a cgroup
    /// namespace) instead of under each hierarchy's root.
    pub cgroup_delegated: bool,
    /// Where supervisors record (by holding a lock file) which sandbox
    /// cgroups are theirs.
    pub cgroup_owners: PathBuf,
    /// Refuse to run without cgroups (otherwise warn and run the worker
    /// without kernel limits).
    pub require_cgroups: bool,
    /// Added to an invocation's timeout to make its deadline: a worker
    /// that has not answered by then is killed.
    #[serde(with = "humantime_serde")]
    pub deadline_grace: Duration,
    /// Deadline of a call that has no timeout.
    #[serde(with = "humantime_serde")]
    pub max_call: Duration,
    /// Host uid the worker runs as (root only inside its user namespace).
    /// A root supervisor can pick any; another one only its own.
    pub uid: u32,
    /// Host gid the worker runs as.
    pub gid: u32,
    /// Directories the sandbox's invocations may be given; nothing else of
    /// the host's file system exists in the jail.
    pub dirs: Vec<DirGrant>,
    /// Open-files limit of the worker.
    pub nofile: u64,
    /// Largest file the worker may write, bytes.
    pub fsize: u64,
}

/// A host directory a sandbox may use, at the path its guests see.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirGrant {
    /// On the host; the sandbox uid must be able to reach it (and own it,
    /// or be granted write permission, to write).
    pub host: PathBuf,
    /// The name guests see it by (wasmtime's `HOST::GUEST`); it is mounted
    /// at this path in the jail (`.` at `/cwd`).
    pub guest: String,
    /// Writable (else mounted read-only).
    #[serde(default)]
    pub writable: bool,
}

/// The grant for an invocation's preopened directory: the same host
/// directory at the same guest path, writable unless read-only.
impl From<&wasmlet_runtime::Preopen> for DirGrant {
    fn from(d: &wasmlet_runtime::Preopen) -> Self {
        DirGrant {
            host: d.host.clone(),
            guest: d.guest.clone(),
            writable: !d.read_only,
        }
    }
}

impl DirGrant {
    /// Where the grant is mounted inside the jail.
    pub fn jail_path(&self) -> Result<PathBuf, Error> {
        let mut p = PathBuf::from("/");
        for part in self.guest.split('/') {
            match part {
                "" | "." => {}
                ".." => {
                    return Err(Error::Config(format!(
                        "granted directory {:?}: `..` in its guest path",
                        self.guest
                    )));
                }
                name => p.push(name),
            }
        }
        if p == Path::new("/") {
            p.push("cwd");
        }
        Ok(p)
    }
}

impl Default for SandboxConfig {
    fn default() -> Self {
        SandboxConfig {
            memory: None,
            cpus: None,
            pids: Some(DEFAULT_SANDBOX_PIDS),
            cgroup_parent: DEFAULT_CGROUP_PARENT.into(),
            cgroup_path: None,
            cgroup_delegated: false,
            cgroup_owners: crate::cgroup::DEFAULT_OWNERS_DIR.into(),
            require_cgroups: true,
            deadline_grace: DEFAULT_DEADLINE_GRACE,
            max_call: DEFAULT_MAX_CALL,
            uid: DEFAULT_SANDBOX_ID,
            gid: DEFAULT_SANDBOX_ID,
            dirs: Vec::new(),
            nofile: DEFAULT_NOFILE,
            fsize: DEFAULT_FSIZE,
        }
    }
}

impl SandboxConfig {
    /// The settings of a sandbox whose invocations use `dirs` (each granted
    /// at its guest path, writable unless read-only), with these kernel
    /// limits (`pids` unset: [`DEFAULT_SANDBOX_PIDS`]); everything else
    /// default. What `wasmlet run --sandbox` and `wasmlet serve`'s
    /// `[function.sandbox]` both start from.
    pub fn for_invocations(
        dirs: &[wasmlet_runtime::Preopen],
        memory: Option<u64>,
        cpus: Option<f64>,
        pids: Option<u64>,
    ) -> SandboxConfig {
        let default = SandboxConfig::default();
        SandboxConfig {
            dirs: dirs.iter().map(DirGrant::from).collect(),
            memory,
            cpus,
            pids: pids.or(default.pids),
            ..default
        }
    }

    /// Checks every setting; the error names the setting and why.
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |m: String| Err(Error::Config(m));
        if let Some(c) = self.cpus {
            let host = host_cpus();
            if !c.is_finite() || c <= 0.0 || c > host as f64 {
                return bad(format!(
                    "cpus must be more than 0 and at most this host's {host} CPUs, not {c}"
                ));
            }
            // The kernel's smallest CFS quota is 1 ms per 100 ms period.
            if c * (crate::cgroup::CPU_PERIOD_US as f64) < 1000.0 {
                return bad(format!("cpus must be at least 0.01, not {c}"));
            }
        }
        if let Some(p) = self.pids
            && p < crate::WORKER_TASKS
        {
            return bad(format!(
                "pids must be at least {} (the threads a sandbox worker runs), not {p}",
                crate::WORKER_TASKS
            ));
        }
        if let Some(m) = self.memory
            && m < MIN_MEMORY
        {
            return bad(format!(
                "memory must be at least {} bytes (a worker's own footprint), not {m}",
                MIN_MEMORY
            ));
        }
        validate_cgroup_parent(&self.cgroup_parent)?;
        if let Some(path) = &self.cgroup_path
            && validate_cgroup_parent(path).is_err()
        {
            return bad(format!(
                "cgroup_path must be a relative path of plain names (like `default/c1`), not {path:?}"
            ));
        }
        // Root in the worker's user namespace is this host id: 0 would be
        // the host's root (with every capability the supervisor has), and
        // -1 means "unchanged" to setresuid.
        for (name, id) in [("uid", self.uid), ("gid", self.gid)] {
            if id == 0 || id == u32::MAX {
                return bad(format!(
                    "{name} must be an unprivileged host id (not 0 or {}), not {id}",
                    u32::MAX
                ));
            }
        }
        if self.max_call.is_zero() {
            return bad("max_call must be more than 0".into());
        }
        if self.nofile < MIN_NOFILE {
            return bad(format!(
                "nofile must be at least {MIN_NOFILE}, not {}",
                self.nofile
            ));
        }
        let mut paths = Vec::new();
        for d in &self.dirs {
            if !d.host.is_absolute() {
                return bad(format!(
                    "granted directory {}: the host path must be absolute",
                    d.host.display()
                ));
            }
            let p = d.jail_path()?;
            if let Some(other) = paths
                .iter()
                .find(|o: &&PathBuf| o.starts_with(&p) || p.starts_with(o))
            {
                return bad(format!(
                    "granted directories {} and {} overlap inside the jail",
                    p.display(),
                    other.display()
                ));
            }
            paths.push(p);
        }
        Ok(())
    }
}

/// Smallest open-files limit accepted: the worker's own files need a few.
pub const MIN_NOFILE: u64 = 32;
/// Smallest memory limit accepted: below this the worker cannot even start.
pub const MIN_MEMORY: u64 = 16 << 20;

/// CPUs online on this host.
pub fn host_cpus() -> u64 {
    // SAFETY: sysconf(3) with a valid name; no memory is passed.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    n.max(1) as u64
}

/// A cgroup parent is a relative path of plain names: not empty, not `/`,
/// no `..` or `.`.
fn validate_cgroup_parent(parent: &str) -> Result<(), Error> {
    let plain = !parent.is_empty()
        && parent
            .split('/')
            .all(|part| !part.is_empty() && part != "." && part != "..");
    if plain {
        Ok(())
    } else {
        Err(Error::Config(format!(
            "cgroup_parent must be a relative path of plain names (like `wasmlet` or `a/b`), not {parent:?}"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_with_defaults_and_rejects_unknown_fields() {
        let sb: SandboxConfig = toml::from_str("memory = 67108864\ncpus = 0.5\n").unwrap();
        assert_eq!((sb.memory, sb.cpus), (Some(64 << 20), Some(0.5)));
        assert_eq!(sb.pids, Some(DEFAULT_SANDBOX_PIDS));
        assert_eq!(sb.cgroup_parent, DEFAULT_CGROUP_PARENT);
        assert!(toml::from_str::<SandboxConfig>("mem = 1\n").is_err());
        let sb: SandboxConfig = toml::from_str("max_call = \"30s\"\n").unwrap();
        assert_eq!(sb.max_call, Duration::from_secs(30));
    }

    #[test]
    fn validation_names_the_setting() {
        let check = |c: SandboxConfig| c.validate().err().map(|e| e.to_string());
        assert_eq!(check(SandboxConfig::default()), None);
        let host = host_cpus() as f64;
        for cpus in [0.0, -1.0, f64::NAN, f64::INFINITY, host + 1.0, 1e9, 0.001] {
            let e = check(SandboxConfig {
                cpus: Some(cpus),
                ..Default::default()
            })
            .unwrap_or_else(|| panic!("cpus {cpus} accepted"));
            assert!(e.contains("cpus must be"), "{e}");
        }
        assert_eq!(
            check(SandboxConfig {
                cpus: Some(host),
                ..Default::default()
            }),
            None
        );
        for pids in 0..crate::WORKER_TASKS {
            let e = check(SandboxConfig {
                pids: Some(pids),
                ..Default::default()
            })
            .unwrap();
            assert!(e.contains("pids must be at least"), "{e}");
        }
        for parent in ["", "/", "..", "a/../b", "/abs", "./a", "a/.", "a//b", "a/"] {
            let e = check(SandboxConfig {
                cgroup_parent: parent.into(),
                ..Default::default()
            })
            .unwrap_or_else(|| panic!("{parent:?} accepted"));
            assert!(e.contains("cgroup_parent"), "{e}");
        }
        assert_eq!(
            check(SandboxConfig {
                cgroup_parent: "system.slice/wasmlet".into(),
                ..Default::default()
            }),
            None
        );
        for (uid, gid) in [(0, 1000), (1000, 0), (u32::MAX, 1000), (1000, u32::MAX)] {
            let e = check(SandboxConfig {
                uid,
                gid,
                ..Default::default()
            })
            .unwrap_or_else(|| panic!("uid {uid} gid {gid} accepted"));
            assert!(e.contains("unprivileged host id"), "{e}");
        }
    }
}
