//! An OCI runtime bundle as the shim reads it: `config.json` (the fields
//! wasmlet uses; the rest is ignored) and the rootfs beside it.
//!
//! - The module is `process.args[0]`, a path inside the rootfs (resolved
//!   as if the rootfs were `/`: `..` and symlinks never leave it), with an
//!   optional `#export` suffix naming a reactor export to call.
//! - `linux.cgroupsPath` comes in two forms: cgroupfs (`/a/b`, relative to
//!   each hierarchy's root) and systemd's `slice:prefix:name` (what CRI
//!   gives with the systemd cgroup driver), turned here into the cgroupfs
//!   path systemd would use (`a.slice/a-b.slice/prefix-name.scope`).

use crate::Error;
use crate::error::io;
use serde::Deserialize;
use std::collections::HashMap;
use std::fs::File;
use std::path::{Component, Path, PathBuf};

/// The annotation CRI puts on every container of a pod: the pod sandbox's id.
pub const ANNOTATION_SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";
/// The annotation CRI uses to tell the pod's sandbox ("pause") container
/// (`sandbox`) from its workload containers (`container`).
pub const ANNOTATION_CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";

/// The annotation that asks for the module to be pre-initialized once
/// (its init function run, the result snapshotted and cached) and every
/// task started from the snapshot: `true` or `false`.
pub const ANNOTATION_SNAPSHOT: &str = "wasmlet.io/snapshot";
/// Where `wasmlet oci build` records an image's `wasmlet.io/` annotations
/// inside its layer (a JSON object of strings), so the shim finds them in
/// the rootfs: containerd hands a runtime the image's layers, never its
/// config labels or manifest annotations.
pub const IMAGE_ANNOTATIONS_PATH: &str = "/.wasmlet/annotations.json";
/// The prefix of the annotations wasmlet reads.
pub const ANNOTATION_PREFIX: &str = "wasmlet.io/";

/// The parts of a runtime spec (`config.json`) wasmlet reads. Unknown
/// fields are ignored: the format belongs to OCI and grows.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Spec {
    /// The process to run.
    #[serde(default)]
    pub process: Option<Process>,
    /// The root file system.
    #[serde(default)]
    pub root: Option<Root>,
    /// Mounts (bind mounts of directories become preopens).
    #[serde(default)]
    pub mounts: Vec<Mount>,
    /// Annotations (CRI's pod sandbox id and container type, wasmlet's own).
    #[serde(default)]
    pub annotations: HashMap<String, String>,
    /// Linux-specific settings.
    #[serde(default)]
    pub linux: Option<Linux>,
}

/// `process`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Process {
    /// A terminal was asked for (not supported).
    #[serde(default)]
    pub terminal: bool,
    /// `args[0]` is the module.
    #[serde(default)]
    pub args: Vec<String>,
    /// `NAME=VALUE` strings.
    #[serde(default)]
    pub env: Vec<String>,
    /// Working directory inside the rootfs.
    #[serde(default)]
    pub cwd: String,
    /// The OOM score asked for.
    #[serde(default)]
    pub oom_score_adj: Option<i32>,
    /// The user it runs as (`ctr run --user`, the image's `USER`,
    /// Kubernetes' `runAsUser`).
    #[serde(default)]
    pub user: Option<User>,
}

/// `process.user`.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct User {
    /// User id.
    #[serde(default)]
    pub uid: u32,
    /// Group id.
    #[serde(default)]
    pub gid: u32,
}

/// `root`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Root {
    /// The rootfs, absolute or relative to the bundle.
    pub path: PathBuf,
    /// Mounted read-only.
    #[serde(default)]
    pub readonly: bool,
}

/// One entry of `mounts`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Mount {
    /// Where the guest sees it.
    pub destination: String,
    /// File system type (`bind`, `proc`, `tmpfs`, ...).
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    /// Host source.
    #[serde(default)]
    pub source: Option<PathBuf>,
    /// Mount options (`bind`, `rbind`, `ro`, ...).
    #[serde(default)]
    pub options: Vec<String>,
}

/// `linux`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Linux {
    /// The container's cgroup (cgroupfs or systemd form).
    #[serde(default)]
    pub cgroups_path: Option<String>,
    /// Resource limits.
    #[serde(default)]
    pub resources: Option<Resources>,
}

/// `linux.resources` (the parts wasmlet applies); also what `Update`
/// carries, as JSON.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Resources {
    /// Memory.
    #[serde(default)]
    pub memory: Option<MemoryResources>,
    /// CPU.
    #[serde(default)]
    pub cpu: Option<CpuResources>,
    /// Processes.
    #[serde(default)]
    pub pids: Option<PidsResources>,
}

/// `linux.resources.memory`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MemoryResources {
    /// Bytes; absent, 0 or negative: no limit.
    #[serde(default)]
    pub limit: Option<i64>,
}

/// `linux.resources.cpu`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CpuResources {
    /// Relative weight (cgroup v1 `cpu.shares`).
    #[serde(default)]
    pub shares: Option<u64>,
    /// CFS quota in µs per period; absent, 0 or negative: no limit.
    #[serde(default)]
    pub quota: Option<i64>,
    /// CFS period in µs.
    #[serde(default)]
    pub period: Option<u64>,
}

/// `linux.resources.pids`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PidsResources {
    /// Most processes and threads; 0 or negative: no limit.
    #[serde(default)]
    pub limit: i64,
}

/// Default CFS period when a quota comes without one (the kernel's).
pub const DEFAULT_CPU_PERIOD_US: u64 = 100_000;
/// Largest `config.json` read (specs are a few KiB).
const MAX_SPEC_SIZE: u64 = 4 << 20;

impl Resources {
    /// The memory limit in bytes, if one is set.
    pub fn memory_limit(&self) -> Option<u64> {
        self.memory
            .as_ref()
            .and_then(|m| m.limit)
            .filter(|&l| l > 0)
            .map(|l| l as u64)
    }

    /// The CPU bandwidth in CPUs (quota / period), if a quota is set.
    pub fn cpus(&self) -> Option<f64> {
        let cpu = self.cpu.as_ref()?;
        let quota = cpu.quota.filter(|&q| q > 0)?;
        let period = cpu
            .period
            .filter(|&p| p > 0)
            .unwrap_or(DEFAULT_CPU_PERIOD_US);
        Some(quota as f64 / period as f64)
    }

    /// The CPU shares, if set.
    pub fn cpu_shares(&self) -> Option<u64> {
        self.cpu.as_ref().and_then(|c| c.shares).filter(|&s| s > 0)
    }

    /// The pids limit, if one is set.
    pub fn pids_limit(&self) -> Option<u64> {
        self.pids
            .as_ref()
            .map(|p| p.limit)
            .filter(|&l| l > 0)
            .map(|l| l as u64)
    }

    /// Whether a hard limit is set (memory, CPU quota, pids): one the
    /// kernel must enforce in a cgroup. CPU shares alone are a relative
    /// weight, not a limit (`ctr run` always sets 1024, CRI 2 for
    /// best-effort pods).
    pub fn has_limits(&self) -> bool {
        self.memory_limit().is_some() || self.cpus().is_some() || self.pids_limit().is_some()
    }
}

/// What `process.args[0]` names: the module inside the rootfs, and the
/// export to call (`None`: `_start`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entrypoint {
    /// The module's path inside the rootfs (absolute, as the guest sees it).
    pub module: String,
    /// A reactor export to call instead of `_start`.
    pub export: Option<String>,
}

impl Spec {
    /// Reads `<bundle>/config.json`.
    pub fn load(bundle: &Path) -> Result<Spec, Error> {
        let path = bundle.join("config.json");
        let file = File::open(&path).map_err(io(&path))?;
        let mut text = String::new();
        use std::io::Read;
        file.take(MAX_SPEC_SIZE)
            .read_to_string(&mut text)
            .map_err(io(&path))?;
        Self::parse(&text)
    }

    /// Parses a spec's JSON text.
    pub fn parse(text: &str) -> Result<Spec, Error> {
        serde_json::from_str(text).map_err(|e| Error::Spec(e.to_string()))
    }

    /// The rootfs directory of a bundle at `bundle`.
    pub fn rootfs(&self, bundle: &Path) -> PathBuf {
        match &self.root {
            Some(r) if r.path.is_absolute() => r.path.clone(),
            Some(r) => bundle.join(&r.path),
            None => bundle.join("rootfs"),
        }
    }

    /// The module and export `process.args[0]` names.
    pub fn entrypoint(&self) -> Result<Entrypoint, Error> {
        let arg0 = self
            .process
            .as_ref()
            .and_then(|p| p.args.first())
            .filter(|a| !a.is_empty())
            .ok_or_else(|| {
                Error::Invalid(
                    "the container has no command: process.args[0] must name the module".into(),
                )
            })?;
        let (module, export) = match arg0.split_once('#') {
            Some((m, e)) if !e.is_empty() => (m, Some(e.to_string())),
            Some((_, _)) => {
                return Err(Error::Invalid(format!(
                    "process.args[0] {arg0:?}: an empty export name after `#`"
                )));
            }
            None => (arg0.as_str(), None),
        };
        if module.is_empty() {
            return Err(Error::Invalid(format!(
                "process.args[0] {arg0:?} names no module"
            )));
        }
        let module = if module.starts_with('/') {
            module.to_string()
        } else {
            // Relative to the working directory, as exec would take it.
            let cwd = self.cwd();
            if !cwd.starts_with('/') {
                return Err(Error::Invalid(format!(
                    "process.cwd {cwd:?} is not an absolute path (the OCI runtime spec requires one)"
                )));
            }
            format!("{}/{module}", cwd.trim_end_matches('/'))
        };
        Ok(Entrypoint { module, export })
    }

    /// The guest's arguments: the module's path, then `process.args[1..]`.
    pub fn args(&self) -> Vec<String> {
        let args = self
            .process
            .as_ref()
            .map(|p| p.args.as_slice())
            .unwrap_or(&[]);
        let mut out: Vec<String> = args.to_vec();
        if let Some(first) = out.first_mut()
            && let Some((m, _)) = first.split_once('#')
        {
            *first = m.to_string();
        }
        out
    }

    /// The environment as pairs (entries without `=` are skipped).
    pub fn env(&self) -> Vec<(String, String)> {
        self.process
            .iter()
            .flat_map(|p| &p.env)
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// The working directory (`/` when unset).
    pub fn cwd(&self) -> String {
        match self.process.as_ref().map(|p| p.cwd.as_str()) {
            None | Some("") => "/".into(),
            Some(c) => c.into(),
        }
    }

    /// Resource limits (empty when the spec sets none).
    pub fn resources(&self) -> Resources {
        self.linux
            .as_ref()
            .and_then(|l| l.resources.clone())
            .unwrap_or_default()
    }

    /// The container's cgroup as a path relative to each hierarchy's root
    /// (either form of `linux.cgroupsPath` accepted), if it has one.
    pub fn cgroup_path(&self) -> Result<Option<String>, Error> {
        match self.linux.as_ref().and_then(|l| l.cgroups_path.as_deref()) {
            None | Some("") => Ok(None),
            Some(p) => cgroup_path(p).map(Some),
        }
    }

    /// Bind mounts of host directories: (host source, guest destination,
    /// read-only). Other mounts (`proc`, `sysfs`, `tmpfs`, files such as
    /// `/etc/hosts`), and anything at `/dev`, `/proc` or `/sys` (such as
    /// CRI's `/dev/shm`), have no meaning to a wasm guest and are skipped.
    pub fn dir_mounts(&self) -> Vec<(PathBuf, String, bool)> {
        let system = |d: &str| {
            ["/dev", "/proc", "/sys"]
                .iter()
                .any(|p| d == *p || d.strip_prefix(p).is_some_and(|r| r.starts_with('/')))
        };
        self.mounts
            .iter()
            .filter(|m| !system(&m.destination))
            .filter(|m| {
                m.kind.as_deref() == Some("bind")
                    || m.options.iter().any(|o| o == "bind" || o == "rbind")
            })
            .filter_map(|m| {
                let src = m.source.as_ref()?;
                src.is_dir().then(|| {
                    (
                        src.clone(),
                        m.destination.clone(),
                        m.options.iter().any(|o| o == "ro"),
                    )
                })
            })
            .collect()
    }

    /// Whether this is a pod's sandbox ("pause") container.
    pub fn is_pod_sandbox(&self) -> bool {
        self.annotations
            .get(ANNOTATION_CONTAINER_TYPE)
            .is_some_and(|t| t == "sandbox")
    }

    /// Whether the module is to be started from a snapshot
    /// ([`ANNOTATION_SNAPSHOT`]): the spec's annotation if it has one
    /// (`ctr run --annotation`, or a Kubernetes annotation that containerd
    /// passes through), else the image's, from [`IMAGE_ANNOTATIONS_PATH`]
    /// in `rootfs`; neither means no.
    pub fn wants_snapshot(&self, rootfs: &Path) -> Result<bool, Error> {
        let value = match self.annotations.get(ANNOTATION_SNAPSHOT) {
            Some(v) => Some(v.clone()),
            None => image_annotations(rootfs)?.remove(ANNOTATION_SNAPSHOT),
        };
        match value.as_deref() {
            None | Some("false") => Ok(false),
            Some("true") => Ok(true),
            Some(other) => Err(Error::Invalid(format!(
                "annotation {ANNOTATION_SNAPSHOT}={other:?}: expected true or false"
            ))),
        }
    }

    /// The pod this container belongs to (CRI's sandbox id), if any.
    pub fn pod_sandbox_id(&self) -> Option<&str> {
        self.annotations
            .get(ANNOTATION_SANDBOX_ID)
            .map(String::as_str)
            .filter(|s| !s.is_empty())
    }
}

/// The image's `wasmlet.io/` annotations as `wasmlet oci build` recorded
/// them in its layer ([`IMAGE_ANNOTATIONS_PATH`]); none if the file is not
/// there (an image from another tool).
pub fn image_annotations(rootfs: &Path) -> Result<HashMap<String, String>, Error> {
    let file = match open_in_root(rootfs, IMAGE_ANNOTATIONS_PATH) {
        Ok(f) => f,
        Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            return Ok(HashMap::new());
        }
        Err(e) => return Err(e),
    };
    use std::io::Read;
    let mut text = String::new();
    // Small by construction; a larger file is not ours.
    file.take(MAX_ANNOTATIONS_FILE)
        .read_to_string(&mut text)
        .map_err(io(
            rootfs.join(IMAGE_ANNOTATIONS_PATH.trim_start_matches('/'))
        ))?;
    serde_json::from_str(&text).map_err(|e| {
        Error::Invalid(format!(
            "the image's {IMAGE_ANNOTATIONS_PATH}: not a JSON object of strings: {e}"
        ))
    })
}

/// Largest [`IMAGE_ANNOTATIONS_PATH`] read.
const MAX_ANNOTATIONS_FILE: u64 = 64 << 10;

/// Turns either form of `linux.cgroupsPath` into a path relative to each
/// hierarchy's root: `/a/b` gives `a/b`; systemd's `slice:prefix:name`
/// gives `<expanded slice>/<prefix>-<name>.scope`, where a slice `a-b.slice`
/// expands to `a.slice/a-b.slice` (systemd's nesting by dashes).
pub fn cgroup_path(spec: &str) -> Result<String, Error> {
    let bad = |why: &str| Error::Invalid(format!("linux.cgroupsPath {spec:?}: {why}"));
    let rel = if spec.starts_with('/') {
        spec.trim_start_matches('/').to_string()
    } else {
        let parts: Vec<&str> = spec.split(':').collect();
        let [slice, prefix, name] = parts[..] else {
            return Err(bad(
                "neither an absolute path (cgroupfs) nor `slice:prefix:name` (systemd)",
            ));
        };
        if name.is_empty() {
            return Err(bad("the name part is empty"));
        }
        let slice = if slice.is_empty() {
            "system.slice"
        } else {
            slice
        };
        let mut path = expand_slice(slice).map_err(|e| bad(&e))?;
        let unit = if name.ends_with(".slice") {
            name.to_string()
        } else if prefix.is_empty() {
            format!("{name}.scope")
        } else {
            format!("{prefix}-{name}.scope")
        };
        path.push('/');
        path.push_str(&unit);
        path
    };
    let plain = !rel.is_empty()
        && rel
            .split('/')
            .all(|p| !p.is_empty() && p != "." && p != "..")
        && !rel.chars().any(char::is_control);
    if !plain {
        return Err(bad(
            "must be a path of plain names (no `..`, `.`, empty parts or control characters)",
        ));
    }
    Ok(rel)
}

/// `a-b-c.slice` → `a.slice/a-b.slice/a-b-c.slice`; `-.slice` is the root.
fn expand_slice(slice: &str) -> Result<String, String> {
    let Some(stem) = slice.strip_suffix(".slice") else {
        return Err(format!("{slice:?} is not a slice (no `.slice` suffix)"));
    };
    if stem == "-" {
        return Err("the root slice `-.slice` holds no containers".into());
    }
    if stem.is_empty()
        || stem.contains('/')
        || stem.starts_with('-')
        || stem.ends_with('-')
        || stem.contains("--")
    {
        return Err(format!("{slice:?} is not a valid slice name"));
    }
    let mut out = String::new();
    let mut prefix = String::new();
    for part in stem.split('-') {
        if !prefix.is_empty() {
            prefix.push('-');
            out.push('/');
        }
        prefix.push_str(part);
        out.push_str(&prefix);
        out.push_str(".slice");
    }
    Ok(out)
}

/// Opens `path` (absolute as the guest sees it) inside `root` as if `root`
/// were `/`: `..` and symlinks, absolute or relative, never leave it (the
/// kernel's `RESOLVE_IN_ROOT`).
pub fn open_in_root(root: &Path, path: &str) -> Result<File, Error> {
    use std::os::fd::{AsRawFd, FromRawFd};
    let dir = File::open(root).map_err(io(root))?;
    let rel: PathBuf = Path::new(path)
        .components()
        .filter(|c| !matches!(c, Component::RootDir | Component::CurDir))
        .collect();
    let c_path = std::ffi::CString::new(rel.as_os_str().as_encoded_bytes())
        .map_err(|_| Error::Invalid(format!("module path {path:?} contains a NUL byte")))?;
    // SAFETY: an all-zero open_how is valid (no flags); fields set below.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (libc::O_RDONLY | libc::O_CLOEXEC) as u64;
    how.resolve = libc::RESOLVE_IN_ROOT;
    // SAFETY: openat2(2) with a valid directory fd, a NUL-terminated path
    // and a pointer to an initialised open_how of the size passed.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dir.as_raw_fd(),
            c_path.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if fd < 0 {
        return Err(Error::Io {
            path: root.join(&rel),
            source: std::io::Error::last_os_error(),
        });
    }
    // SAFETY: openat2 returned a fresh fd that nothing else owns.
    Ok(unsafe { File::from_raw_fd(fd as i32) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_annotation_from_the_spec_or_the_image() {
        let root = tempfile::tempdir().unwrap();
        let spec = |v: Option<&str>| {
            let mut s = Spec::default();
            if let Some(v) = v {
                s.annotations.insert(ANNOTATION_SNAPSHOT.into(), v.into());
            }
            s
        };
        // Neither: no.
        assert!(!spec(None).wants_snapshot(root.path()).unwrap());
        assert!(spec(Some("true")).wants_snapshot(root.path()).unwrap());
        let err = spec(Some("1")).wants_snapshot(root.path()).unwrap_err();
        assert!(err.to_string().contains("expected true or false"), "{err}");
        // The image's, unless the spec says otherwise.
        std::fs::create_dir(root.path().join(".wasmlet")).unwrap();
        std::fs::write(
            root.path().join(".wasmlet/annotations.json"),
            r#"{"wasmlet.io/snapshot":"true"}"#,
        )
        .unwrap();
        assert!(spec(None).wants_snapshot(root.path()).unwrap());
        assert!(!spec(Some("false")).wants_snapshot(root.path()).unwrap());
        std::fs::write(root.path().join(".wasmlet/annotations.json"), "[1]").unwrap();
        let err = spec(None).wants_snapshot(root.path()).unwrap_err();
        assert!(err.to_string().contains("JSON object"), "{err}");
    }

    #[test]
    fn reads_what_the_shim_needs() {
        let spec = Spec::parse(
            r#"{"ociVersion":"1.0.2","process":{"args":["/app.wasm#run","x"],"env":["A=1","B"],"cwd":"/"},
                "root":{"path":"rootfs"},"annotations":{"io.kubernetes.cri.sandbox-id":"pod1","io.kubernetes.cri.container-type":"sandbox"},
                "mounts":[{"destination":"/proc","type":"proc","source":"proc"}],
                "linux":{"cgroupsPath":"/default/c1","resources":{"memory":{"limit":67108864},"cpu":{"quota":50000,"period":100000,"shares":512},"pids":{"limit":0}},"namespaces":[]}}"#,
        )
        .unwrap();
        assert_eq!(
            spec.entrypoint().unwrap(),
            Entrypoint {
                module: "/app.wasm".into(),
                export: Some("run".into())
            }
        );
        assert_eq!(spec.args(), ["/app.wasm", "x"]);
        assert_eq!(spec.env(), [("A".to_string(), "1".to_string())]);
        assert_eq!(spec.rootfs(Path::new("/b")), Path::new("/b/rootfs"));
        assert_eq!(spec.cgroup_path().unwrap().as_deref(), Some("default/c1"));
        let r = spec.resources();
        assert_eq!(r.memory_limit(), Some(64 << 20));
        assert_eq!(r.cpus(), Some(0.5));
        assert_eq!(r.cpu_shares(), Some(512));
        assert_eq!(r.pids_limit(), None);
        assert!(r.has_limits());
        assert!(spec.is_pod_sandbox());
        assert_eq!(spec.pod_sandbox_id(), Some("pod1"));
        assert!(spec.dir_mounts().is_empty());
        assert!(Spec::parse("{").is_err());
        let shares_only =
            Spec::parse(r#"{"linux":{"resources":{"cpu":{"shares":1024}}}}"#).unwrap();
        assert!(!shares_only.resources().has_limits());
        let none = Spec::parse(r#"{"process":{"args":[]}}"#).unwrap();
        assert!(
            none.entrypoint()
                .unwrap_err()
                .to_string()
                .contains("process.args[0]")
        );
        assert!(!none.resources().has_limits());
        let rel = Spec::parse(r#"{"process":{"args":["m.wasm"],"cwd":"/app"}}"#).unwrap();
        assert_eq!(rel.entrypoint().unwrap().module, "/app/m.wasm");
        let empty = Spec::parse(r#"{"process":{"args":["m.wasm#"]}}"#).unwrap();
        assert!(empty.entrypoint().is_err());
    }

    #[test]
    fn cgroup_paths_in_both_forms() {
        assert_eq!(cgroup_path("/default/abc").unwrap(), "default/abc");
        assert_eq!(
            cgroup_path("kubepods-besteffort-pod12.slice:cri-containerd:abc").unwrap(),
            "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod12.slice/cri-containerd-abc.scope"
        );
        assert_eq!(
            cgroup_path("system.slice:docker:x").unwrap(),
            "system.slice/docker-x.scope"
        );
        assert_eq!(cgroup_path(":p:x").unwrap(), "system.slice/p-x.scope");
        for bad in [
            "/",
            "/a/../b",
            "a/b",
            "x.slice:p",
            "a--b.slice:p:x",
            "-.slice:p:x",
            "s.slice:p:",
            "/a//b",
            "nope:p:x",
        ] {
            assert!(cgroup_path(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn module_resolution_stays_in_the_rootfs() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("rootfs");
        std::fs::create_dir_all(root.join("app")).unwrap();
        std::fs::write(root.join("app/m.wasm"), b"inside").unwrap();
        std::fs::write(dir.path().join("secret"), b"outside").unwrap();
        std::os::unix::fs::symlink("/app/m.wasm", root.join("abs")).unwrap();
        std::os::unix::fs::symlink("../../secret", root.join("app/up")).unwrap();
        let read = |p: &str| {
            open_in_root(&root, p).map(|mut f| {
                let mut s = String::new();
                std::io::Read::read_to_string(&mut f, &mut s).unwrap();
                s
            })
        };
        assert_eq!(read("/app/m.wasm").unwrap(), "inside");
        // An absolute symlink resolves inside the root.
        assert_eq!(read("/abs").unwrap(), "inside");
        // `..` stops at the root: ../secret is <root>/secret, which is absent.
        assert!(read("/../secret").is_err());
        assert!(read("/app/up").is_err());
        assert!(read("/missing.wasm").is_err());
    }
}
