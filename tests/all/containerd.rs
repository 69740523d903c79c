//! A private containerd for the shim tests: Debian's `containerd` started
//! as root with its own config, root, state and (short) socket path, with
//! the built shim first in its PATH, containerd's CRI plugin on
//! (host-network pods only: empty CNI directories) and `wasmlet oci
//! wasm-layer` as the stream processor of raw wasm layers. Tests that run at the same time share
//! one daemon; the last one to finish stops it by its PID and removes what
//! it created.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

/// The runtime type the tests ask containerd for.
pub const RUNTIME: &str = "io.containerd.wasmlet.v1";
/// The CRI runtime handler name configured for the shim.
pub const CRI_HANDLER: &str = "wasmlet";
/// The image CRI uses for pod sandboxes (imported into `k8s.io`).
pub const PAUSE_IMAGE: &str = "wasmlet.test/pause:1";

/// A running containerd.
pub struct Containerd {
    child: Mutex<Child>,
    /// Holds config, root, state, logs.
    pub dir: PathBuf,
    /// Short directory of the sockets (unix socket paths are limited to 107 bytes).
    pub run_dir: PathBuf,
    /// The gRPC socket.
    pub socket: PathBuf,
    /// Images imported so far (by reference).
    imported: Mutex<Vec<(String, String)>>,
}

/// Whether the containerd tests can run here: root (they start a daemon,
/// mount, and make cgroups). Says loudly why not.
pub fn can_run(test: &str) -> bool {
    // SAFETY: geteuid(2) has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!(
            "\n!!!!!! SKIPPED {test}: the containerd tests need root (they start containerd, mount rootfs and make cgroups) !!!!!!\n"
        );
        return false;
    }
    true
}

/// The shared daemon, started if none is running.
pub fn containerd() -> Arc<Containerd> {
    static SHARED: Mutex<Weak<Containerd>> = Mutex::new(Weak::new());
    let mut shared = SHARED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(c) = shared.upgrade() {
        return c;
    }
    let c = Arc::new(Containerd::start());
    *shared = Arc::downgrade(&c);
    c
}

/// The directory of the built shim (and `wasmlet`).
pub fn bin_dir() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_containerd-shim-wasmlet-v1"))
        .parent()
        .unwrap()
        .to_path_buf()
}

impl Containerd {
    fn start() -> Containerd {
        let dir = crate::helpers::tempdir().keep();
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let run_dir = PathBuf::from(format!(
            "/run/wlc-{}-{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&run_dir).unwrap();
        let socket = run_dir.join("c.sock");
        let config = format!(
            r#"version = 2
root = "{root}"
state = "{state}"
[grpc]
  address = "{socket}"
[ttrpc]
  address = "{socket}.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "{dir}/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{pause}"
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{dir}/cni-bin"
    conf_dir = "{dir}/cni-conf"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.{handler}]
    runtime_type = "{runtime}"
    container_annotations = ["wasmlet.io/*"]
    pod_annotations = ["wasmlet.io/*"]
[stream_processors]
  [stream_processors."io.containerd.wasmlet.wasm-layer"]
    accepts = ["{wasm_layer}", "{wasm_module_layer}"]
    returns = "application/vnd.oci.image.layer.v1.tar"
    path = "{wasmlet}"
    args = ["oci", "wasm-layer"]
"#,
            root = dir.join("root").display(),
            state = run_dir.join("state").display(),
            socket = socket.display(),
            dir = dir.display(),
            pause = PAUSE_IMAGE,
            handler = CRI_HANDLER,
            runtime = RUNTIME,
            wasm_layer = wasmlet_oci::image::WASM_LAYER_MEDIA_TYPE,
            wasm_module_layer = wasmlet_oci::image::WASM_MODULE_LAYER_MEDIA_TYPE,
            wasmlet = bin_dir().join("wasmlet").display(),
        );
        std::fs::write(dir.join("config.toml"), config).unwrap();
        // Empty: host-network pods only, no CNI plugin.
        std::fs::create_dir_all(dir.join("cni-bin")).unwrap();
        std::fs::create_dir_all(dir.join("cni-conf")).unwrap();
        let log = std::fs::File::create(dir.join("containerd.log")).unwrap();
        let path = format!(
            "{}:{}",
            bin_dir().display(),
            std::env::var("PATH").unwrap_or_else(|_| "/usr/sbin:/usr/bin:/sbin:/bin".into())
        );
        let child = Command::new("containerd")
            .arg("--config")
            .arg(dir.join("config.toml"))
            .env("PATH", path)
            .env("WASMLET_CACHE_DIR", crate::helpers::scratch().join("shim-cache"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start containerd ({e}): install Debian's containerd and runc (scripts/install-deps does)")
            });
        let c = Containerd {
            child: Mutex::new(child),
            dir,
            run_dir,
            socket,
            imported: Mutex::new(Vec::new()),
        };
        let start = Instant::now();
        loop {
            let out = c.ctr(&["version"]);
            if out.status.success() {
                break;
            }
            if let Some(status) = c.child.lock().unwrap().try_wait().unwrap() {
                panic!("containerd exited ({status}) at start:\n{}", c.log());
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "containerd not answering after 30 s:\n{}",
                c.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        c
    }

    /// containerd's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("containerd.log")).unwrap_or_default()
    }

    /// A `ctr` command talking to this daemon.
    pub fn ctr_cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new("ctr");
        c.arg("-a")
            .arg(&self.socket)
            .args(args)
            .stdin(Stdio::null());
        c
    }

    /// Runs `ctr` with these arguments.
    pub fn ctr(&self, args: &[&str]) -> Output {
        self.ctr_cmd(args).output().expect("running ctr")
    }

    /// Runs `ctr`, failing the test if it fails; its stdout.
    pub fn ctr_ok(&self, args: &[&str]) -> String {
        let out = self.ctr(args);
        assert!(
            out.status.success(),
            "ctr {args:?} failed ({}):\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Imports (once) an image made by `wasmlet oci build` from `module`
    /// under `name`, into namespace `ns`.
    pub fn import(&self, ns: &str, module: &Path, name: &str) {
        self.import_with(ns, module, name, &["--annotation", "wasmlet.io/test=1"]);
    }

    /// [`Containerd::import`] with more `wasmlet oci build` arguments.
    pub fn import_with(&self, ns: &str, module: &Path, name: &str, build_args: &[&str]) {
        self.import_once(ns, name, |tar| {
            let out = crate::helpers::wasmlet()
                .args(["oci", "build"])
                .arg(module)
                .arg("-o")
                .arg(tar)
                .args(["--name", name])
                .args(build_args)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "wasmlet oci build: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        });
    }

    /// Imports (once) an image holding the static native program
    /// `tests/guests/<program>.c` as its entrypoint (for runc).
    pub fn import_native(&self, ns: &str, program: &str, name: &str) {
        let exe = crate::helpers::native_program(program);
        self.import_once(ns, name, |tar| {
            let spec = wasmlet_oci::image::ImageSpec {
                name: name.into(),
                file_name: program.into(),
                module: std::fs::read(&exe).unwrap(),
                annotations: Default::default(),
                wasm_layer: false,
                user: None,
            };
            wasmlet_oci::image::write_image(&spec, tar).unwrap();
        });
    }

    fn import_once(&self, ns: &str, name: &str, write: impl FnOnce(&Path)) {
        let mut imported = self.imported.lock().unwrap();
        let key = (ns.to_string(), name.to_string());
        if imported.contains(&key) {
            return;
        }
        let tar = self
            .dir
            .join(format!("{ns}-{}.tar", name.replace(['/', ':'], "_")));
        write(&tar);
        self.ctr_ok(&["-n", ns, "image", "import", tar.to_str().unwrap()]);
        imported.push(key);
    }

    /// Checks that nothing of container `id` is left: no shim serving it,
    /// no cgroup, no mount, no FIFO (polling a few seconds: shims exit
    /// just after containerd's last request).
    pub fn assert_cleaned_up(&self, ns: &str, id: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = self.leftovers(ns, id);
            if left.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "left behind by container {id}: {left:#?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn leftovers(&self, ns: &str, id: &str) -> Vec<String> {
        let mut left = Vec::new();
        let socket = self.socket.to_string_lossy().into_owned();
        for pid in shim_pids(&socket) {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let args: Vec<String> = cmdline
                .split(|&b| b == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            if args.windows(2).any(|w| w[0] == "-id" && w[1] == id) {
                left.push(format!("shim process {pid}: {args:?}"));
            }
        }
        // `ctr` puts a task's cgroup at /<ns>/<id>; CRI (cgroupfs, no pod
        // parent) at /<id> or under a parent: look one level down too.
        for root in ["memory", "cpu", "pids", "cpuacct", "unified"] {
            let root = Path::new("/sys/fs/cgroup").join(root);
            let mut candidates = vec![root.join(id), root.join(ns).join(id)];
            for parent in std::fs::read_dir(&root).into_iter().flatten().flatten() {
                if parent.file_name() != ns {
                    candidates.push(parent.path().join(id));
                }
            }
            for cg in candidates {
                if cg.exists() {
                    left.push(format!("cgroup {}", cg.display()));
                }
            }
        }
        // containerd's state (bundles, CRI's FIFOs and logs) for it.
        let mut dirs = vec![(self.run_dir.join("state"), 0)];
        while let Some((dir, depth)) = dirs.pop() {
            for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                if e.file_name().to_string_lossy().contains(id) {
                    left.push(format!("state {}", e.path().display()));
                } else if depth < 6 && e.file_type().is_ok_and(|t| t.is_dir()) {
                    dirs.push((e.path(), depth + 1));
                }
            }
        }
        // The shim's socket: the shim crate names it after containerd's
        // address, the namespace and the task's id (or its pod's, which is
        // the pod sandbox container's id).
        let named = format!("{}/{ns}/{id}", self.socket.display());
        let hash = <sha2::Sha256 as sha2::Digest>::digest(named.as_bytes());
        let shim_socket = format!("/run/containerd/s/{hash:x}");
        if Path::new(&shim_socket).exists() {
            left.push(format!("shim socket {shim_socket}"));
        }
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        for line in mountinfo.lines().filter(|l| l.contains(id)) {
            left.push(format!("mount {line}"));
        }
        for f in ctr_fifos(id) {
            left.push(format!("fifo {}", f.display()));
        }
        left
    }
}

/// The FIFOs `ctr` made for container `id`'s stdio (under
/// `/run/containerd/fifo/<random>/`).
pub fn ctr_fifos(id: &str) -> Vec<PathBuf> {
    let mut fifos = Vec::new();
    for d in std::fs::read_dir("/run/containerd/fifo")
        .into_iter()
        .flatten()
        .flatten()
    {
        for f in std::fs::read_dir(d.path()).into_iter().flatten().flatten() {
            if f.file_name().to_string_lossy().starts_with(id) {
                fifos.push(f.path());
            }
        }
    }
    fifos
}

/// Pids of wasmlet shims started by the daemon at `socket`.
pub fn shim_pids(socket: &str) -> Vec<u32> {
    let mut pids = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let text = String::from_utf8_lossy(&cmdline);
        if text.contains("containerd-shim-wasmlet-v1")
            && text.contains(socket)
            && !text.contains("sandbox-worker")
        {
            pids.push(pid);
        }
    }
    pids
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let mut child = self.child.lock().unwrap_or_else(|e| e.into_inner());
        let pid = child.id() as i32;
        // SAFETY: kill(2) on our own child, not yet reaped.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let start = Instant::now();
        while child.try_wait().ok().flatten().is_none() {
            if start.elapsed() > Duration::from_secs(10) {
                let _ = child.kill();
                let _ = child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // Shims outlive a stopped containerd: end ours.
        for pid in shim_pids(&self.socket.to_string_lossy()) {
            // SAFETY: kill(2) of a shim this daemon started.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
        // Anything containerd left mounted under its directories.
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut mounts: Vec<&str> = mountinfo
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|m| {
                m.starts_with(self.dir.to_str().unwrap())
                    || m.starts_with(self.run_dir.to_str().unwrap())
            })
            .collect();
        mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in mounts {
            let c = std::ffi::CString::new(m).unwrap();
            // SAFETY: umount2(2) with a NUL-terminated path.
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
        let _ = std::fs::remove_dir_all(&self.run_dir);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
