//! [`App`]: a manifest made live: the runtime (its pool sized from the
//! manifest), every function loaded and linked with its handler, the
//! router, and the admission state. Built whole, off the request path; a
//! reload builds a new one and swaps it in, so requests see either the old
//! functions or the new ones, never a mix.

use crate::admission::{Admission, Global};
use crate::error::LoadError;
use crate::handler::Handler;
use crate::manifest::{FunctionSpec, Kind, Manifest, Route};
use crate::metrics::{FunctionMetrics, Metrics};
use crate::sandboxed::{Pool, PoolSpec};
use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::SystemTime;
use wasmlet_runtime::{
    Entry, Function, Input, Invocation, Limits, LoadOptions, Outcome, Output, Preopen, Runtime,
    RuntimeConfig, SnapshotOptions,
};
use wasmlet_sandbox::SandboxConfig;

/// A loaded function.
pub(crate) struct Func {
    pub spec: FunctionSpec,
    pub handler: Handler,
    /// The manifest's environment variables.
    pub env: Vec<(String, String)>,
    pub dirs: Vec<Preopen>,
    pub admission: Arc<Admission>,
    pub metrics: Arc<FunctionMetrics>,
    /// Its instances start from a snapshot.
    pub snapshot_start: bool,
    /// `Retry-After` seconds for its 503s.
    pub retry_after: u64,
    /// Its jailed workers, with a `[function.sandbox]` table.
    pub sandbox: Option<Arc<Pool>>,
}

impl Func {
    /// Runs `function` (this function's WASI command) once with `args`,
    /// `env` and `stdin`, its preopened directories, stdout and stderr
    /// captured; counted in its metrics. `probe`, if given, follows its
    /// figures as it runs.
    pub(crate) async fn invoke_command(
        &self,
        function: &Function,
        args: Vec<String>,
        env: Vec<(String, String)>,
        stdin: bytes::Bytes,
        probe: Option<wasmlet_runtime::UsageProbe>,
    ) -> Result<Outcome, wasmlet_runtime::Error> {
        let inv = Invocation {
            args,
            env,
            dirs: self.dirs.clone(),
            stdin: Input::Bytes(stdin),
            stdout: Output::Capture,
            stderr: Output::Capture,
            entry: Entry::Start,
            limits: None,
            context: Default::default(),
            gate: None,
            probe,
        };
        self.metrics.invocations.fetch_add(1, Ordering::Relaxed);
        if self.snapshot_start {
            self.metrics.snapshot_starts.fetch_add(1, Ordering::Relaxed);
        } else {
            self.metrics.plain_starts.fetch_add(1, Ordering::Relaxed);
        }
        match &self.sandbox {
            Some(pool) => pool.invoke(inv).await,
            None => std::pin::pin!(function.invoke_async(inv)).await,
        }
    }
}

/// The serving state built from one manifest.
pub struct App {
    /// The manifest it was built from.
    pub manifest: Manifest,
    pub(crate) runtime: Runtime,
    pub(crate) functions: Vec<Arc<Func>>,
    router: Router,
    pub(crate) global: Arc<Global>,
    /// The manifest's and modules' stamps when read, to notice changes.
    pub(crate) stamps: Vec<Stamp>,
}

/// What a file looked like: its path, size and modification time.
pub(crate) type Stamp = (PathBuf, Option<(u64, SystemTime)>);

pub(crate) fn stamp(path: &Path) -> Stamp {
    let meta = std::fs::metadata(path)
        .ok()
        .and_then(|m| Some((m.len(), m.modified().ok()?)));
    (path.to_path_buf(), meta)
}

/// A summary line per function, for `serve --check` and the start-up log.
pub struct FunctionSummary {
    /// Name.
    pub name: String,
    /// Kind.
    pub kind: Kind,
    /// Routes, as written.
    pub routes: Vec<String>,
}

impl App {
    /// Loads `manifest`'s functions. `base` is the runtime configuration
    /// the server was started with (cache settings); the pool and fuel
    /// metering are set from the manifest; `setup` adds the embedder's host
    /// functions to a new runtime. Functions whose concurrency
    /// settings did not change keep `previous`'s admission state.
    pub fn load(
        manifest: Manifest,
        base: &RuntimeConfig,
        setup: &crate::server::RuntimeSetup,
        previous: Option<&App>,
        metrics: &Metrics,
    ) -> Result<App, LoadError> {
        check_budget(&manifest)?;
        let config = runtime_config(base, &manifest);
        let runtime = match previous {
            Some(p) if p.runtime.config() == &config => p.runtime.clone(),
            _ => setup.build(config)?,
        };
        let global = match previous {
            Some(p) if p.global.max == manifest.server.max_in_flight => p.global.clone(),
            _ => Arc::new(Global::new(manifest.server.max_in_flight)),
        };
        let mut functions = Vec::new();
        for spec in &manifest.functions {
            let err = |message: String| LoadError::Function {
                manifest: manifest.path.clone(),
                line: spec.line,
                function: spec.name.clone(),
                message,
            };
            let func = load_function(&runtime, &manifest, spec, previous, metrics).map_err(err)?;
            functions.push(Arc::new(func));
        }
        let router = Router::new(&functions);
        let mut stamps = vec![stamp(&manifest.path)];
        stamps.extend(manifest.functions.iter().map(|f| stamp(&f.module)));
        Ok(App {
            manifest,
            runtime,
            functions,
            router,
            global,
            stamps,
        })
    }

    /// What is served, function by function.
    pub fn summary(&self) -> Vec<FunctionSummary> {
        self.functions
            .iter()
            .map(|f| FunctionSummary {
                name: f.spec.name.clone(),
                kind: f.handler.kind(),
                routes: f.spec.routes.iter().map(|r| r.to_string()).collect(),
            })
            .collect()
    }

    /// The function serving `path`, and the route that matched.
    pub(crate) fn route(&self, path: &str) -> Option<(&Arc<Func>, &Route)> {
        self.router.find(path).map(|(i, r)| (&self.functions[i], r))
    }

    /// Starts the sandboxed functions' warm workers, in the background
    /// (`serve --check` never calls it: nothing is started).
    pub fn start_sandboxes(&self) {
        for pool in self.functions.iter().filter_map(|f| f.sandbox.as_ref()) {
            pool.start();
        }
    }

    /// Whether every sandboxed function's warm workers are up (or failed
    /// to start, with the reason logged).
    pub fn sandboxes_warmed(&self) -> bool {
        self.functions
            .iter()
            .filter_map(|f| f.sandbox.as_ref())
            .all(|p| p.warmed())
    }

    /// Stops every sandbox worker and removes its cgroups.
    pub fn shutdown_sandboxes(&self) {
        for pool in self.functions.iter().filter_map(|f| f.sandbox.as_ref()) {
            pool.shutdown();
        }
    }

    /// The configuration of the runtime serving these functions.
    pub fn runtime_config(&self) -> &RuntimeConfig {
        self.runtime.config()
    }
}

/// The runtime configuration for `manifest`: the pool holds as many
/// instances as can be in flight (the sum of `max_concurrency`, capped by
/// `server.max_in_flight`), so an admitted request never waits for a slot.
pub fn runtime_config(base: &RuntimeConfig, manifest: &Manifest) -> RuntimeConfig {
    let mut config = base.clone();
    let sum: u64 = manifest
        .functions
        .iter()
        .map(|f| u64::from(f.limits.max_concurrency))
        .sum();
    config.pool.instances = sum.min(u64::from(manifest.server.max_in_flight)).max(1) as u32;
    config.fuel_metering = manifest.functions.iter().any(|f| f.limits.fuel.is_some());
    config.limits.max_memory = config.limits.max_memory.min(config.pool.max_memory);
    config
}

/// The host's memory, from `/proc/meminfo`.
fn host_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The manifest's functions at full concurrency must fit the memory budget.
fn check_budget(manifest: &Manifest) -> Result<(), LoadError> {
    let budget = match manifest.server.memory_budget {
        Some(b) => b,
        None => match host_memory() {
            Some(m) => (m as f64 * crate::manifest::DEFAULT_MEMORY_BUDGET_SHARE) as u64,
            None => return Ok(()),
        },
    };
    // (name, how many, of what size, what they are): instances, or a
    // sandboxed function's workers when their cgroups allow more.
    let need: Vec<(&str, u64, u64, &str)> = manifest
        .functions
        .iter()
        .map(|f| {
            let instances = (
                f.name.as_str(),
                u64::from(f.limits.max_concurrency),
                f.limits.memory,
                "",
            );
            match f.sandbox.as_ref().and_then(|sb| sb.memory) {
                Some(m) => {
                    let workers = u64::from(sandbox_workers(f));
                    if workers.saturating_mul(m) > instances.1.saturating_mul(instances.2) {
                        (f.name.as_str(), workers, m, " sandbox workers")
                    } else {
                        instances
                    }
                }
                None => instances,
            }
        })
        .collect();
    let total: u64 = need
        .iter()
        .map(|(_, n, m, _)| n.saturating_mul(*m))
        .fold(0u64, u64::saturating_add);
    if total <= budget {
        return Ok(());
    }
    let mut parts: Vec<_> = need
        .iter()
        .filter(|(_, n, m, _)| n * m > 0)
        .map(|(name, n, m, what)| {
            (
                n.saturating_mul(*m),
                format!("{name}: {n}{what} x {}", human(*m)),
            )
        })
        .collect();
    parts.sort_by_key(|p| std::cmp::Reverse(p.0));
    Err(LoadError::Budget {
        message: format!(
            "the functions need {} of memory at full concurrency ({}), more than the memory budget of {}: lower max_concurrency, limits.memory or sandbox.memory, or raise server.memory_budget",
            human(total),
            parts
                .into_iter()
                .map(|p| p.1)
                .collect::<Vec<_>>()
                .join(", "),
            human(budget)
        ),
        manifest: manifest.path.clone(),
    })
}

/// The most workers a sandboxed function's pool runs: enough threads for
/// `max_concurrency` invocations, and at least `warm`.
fn sandbox_workers(spec: &FunctionSpec) -> u32 {
    let threads = wasmlet_sandbox::WORKER_THREADS as u32;
    let warm = spec.sandbox.as_ref().map_or(0, |sb| sb.warm);
    spec.limits.max_concurrency.div_ceil(threads).max(warm)
}

/// Why the sandbox's `uid`/`gid` cannot use the granted directory `host`
/// as granted (list it, and for a writable grant create files in it), by
/// its owner, group and mode bits; `None` if they can. A warning, not an
/// error: ACLs and a writable subdirectory under a read-only top can make
/// a grant work that the bits alone refuse.
fn grant_access(host: &Path, writable: bool, uid: u32, gid: u32) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let bits_of = |md: &std::fs::Metadata| {
        let mode = md.mode();
        if md.uid() == uid {
            (mode >> 6, "owner")
        } else if md.gid() == gid {
            (mode >> 3, "group")
        } else {
            (mode, "others")
        }
    };
    // The jail opens the grant by its path as the sandbox's ids: every
    // directory above it must let them through.
    for parent in host.ancestors().skip(1) {
        let Ok(md) = std::fs::metadata(parent) else {
            continue;
        };
        let (bits, whose) = bits_of(&md);
        if bits & 0o1 == 0 {
            return Some(format!(
                "dirs: {} cannot be reached by the sandbox's uid {uid} / gid {gid}: {} above it does not let them through (owner {}, group {}, mode {:03o}: {whose} have no x); the sandbox will fail to start",
                host.display(),
                parent.display(),
                md.uid(),
                md.gid(),
                md.mode() & 0o777,
            ));
        }
    }
    let md = std::fs::metadata(host).ok()?;
    let mode = md.mode();
    let (bits, whose) = bits_of(&md);
    let (need, verb) = if writable {
        (0o3, "write (create files in)")
    } else {
        (0o5, "list")
    };
    (bits & need != need).then(|| {
        format!(
            "dirs: {} is granted {} but the sandbox's uid {uid} / gid {gid} cannot {verb} it (owner {}, group {}, mode {:03o}: {whose} have {}); the guest will be refused there",
            host.display(),
            if writable { "writable" } else { "read-only" },
            md.uid(),
            md.gid(),
            mode & 0o777,
            match bits & 7 {
                0 => "no access".to_string(),
                b => ["r", "w", "x"]
                    .iter()
                    .zip([4, 2, 1])
                    .filter(|(_, bit)| b & bit != 0)
                    .map(|(n, _)| *n)
                    .collect::<String>(),
            }
        )
    })
}

fn human(b: u64) -> String {
    wasmlet_runtime::error::Bytes(b).to_string()
}

/// A module file's kind, from its header: a component, else a module.
fn sniff_kind(path: &Path) -> Result<Kind, String> {
    let mut head = [0u8; 16];
    let n = std::fs::File::open(path)
        .and_then(|mut f| f.read(&mut head))
        .map_err(|e| format!("cannot read module {}: {e}", path.display()))?;
    let head = &head[..n];
    let component = (head.starts_with(b"\0asm") && head.get(4..8) == Some(&[0x0d, 0, 0x01, 0]))
        || String::from_utf8_lossy(head)
            .trim_start()
            .starts_with("(component");
    Ok(if component { Kind::Http } else { Kind::Wagi })
}

fn load_function(
    runtime: &Runtime,
    manifest: &Manifest,
    spec: &FunctionSpec,
    previous: Option<&App>,
    metrics: &Metrics,
) -> Result<Func, String> {
    let sniffed = sniff_kind(&spec.module)?;
    let kind = spec.kind.unwrap_or(sniffed);
    if kind == Kind::Http && !spec.events.is_empty() {
        return Err(
            "schedule and file triggers run WASI commands (kind = \"wagi\"); this function is a wasi:http component"
                .into(),
        );
    }
    if spec.sandbox.is_some() && kind == Kind::Http {
        return Err(
            "[function.sandbox] is for WAGI functions only: a wasi:http component's outbound requests and streamed bodies do not go through the sandbox supervisor yet; remove the table to run it in-process"
                .into(),
        );
    }
    if spec.sandbox.is_some() && spec.snapshot {
        return Err(
            "snapshot = true with [function.sandbox] is not supported yet: sandbox workers start from the plain module"
                .into(),
        );
    }
    let limits = Limits {
        max_memory: spec.limits.memory,
        cpu_time: spec.limits.cpu_time,
        timeout: Some(spec.limits.timeout),
        fuel: spec.limits.fuel,
        max_captured_output: usize::try_from(manifest.server.max_response_size)
            .unwrap_or(usize::MAX),
        ..Limits::default()
    };
    if limits.max_memory > runtime.config().pool.max_memory {
        return Err(format!(
            "limits.memory {} is more than an instance slot holds ({})",
            human(limits.max_memory),
            human(runtime.config().pool.max_memory)
        ));
    }
    let mut dirs = Vec::new();
    for d in &spec.dirs {
        let host = std::fs::canonicalize(&d.host)
            .map_err(|e| format!("dirs: {}: {e}", d.host.display()))?;
        if !host.is_dir() {
            return Err(format!("dirs: {} is not a directory", host.display()));
        }
        if let Some(sb) = &spec.sandbox
            && let Some(why) = grant_access(&host, d.writable, sb.uid, sb.gid)
        {
            tracing::warn!(function = %spec.name, guest = %d.guest, "{why}");
        }
        dirs.push(Preopen {
            host,
            guest: d.guest.clone(),
            read_only: !d.writable,
        });
    }
    let opts = LoadOptions {
        limits: Some(limits),
        snapshot: spec.snapshot.then(SnapshotOptions::default),
        ..LoadOptions::default()
    };
    let handler = match kind {
        Kind::Wagi => {
            if sniffed == Kind::Http {
                return Err(
                    "kind = \"wagi\" but the module is a component: WAGI functions are WASI preview 1 modules"
                        .into(),
                );
            }
            if !spec.allowed_outbound_hosts.is_empty() {
                return Err(
                    "allowed_outbound_hosts is for wasi:http components (kind = \"http\"); a WAGI function cannot make outgoing requests"
                        .into(),
                );
            }
            let function = runtime
                .load_file(&spec.module, &opts)
                .map_err(|e| e.to_string())?;
            if !function.is_command() {
                return Err(
                    "a WAGI function must be a command (export `_start`); this module is a reactor"
                        .into(),
                );
            }
            Handler::Wagi(function)
        }
        Kind::Http => {
            if sniffed == Kind::Wagi {
                return Err(
                    "kind = \"http\" but the module is a core module: wasi:http functions are components exporting wasi:http/incoming-handler"
                        .into(),
                );
            }
            let opts = LoadOptions {
                allowed_outbound_hosts: spec.allowed_outbound_hosts.clone(),
                ..opts.clone()
            };
            Handler::Http(crate::http::load(runtime, &spec.module, &opts)?)
        }
    };
    let metrics = metrics.function(&spec.name);
    let sandbox = match (&spec.sandbox, &handler) {
        (Some(sb), Handler::Wagi(code)) => {
            let config = SandboxConfig {
                uid: sb.uid,
                gid: sb.gid,
                ..SandboxConfig::for_invocations(&dirs, sb.memory, sb.cpus, sb.pids)
            };
            config.validate().map_err(|e| e.to_string())?;
            let spec = PoolSpec {
                function: spec.name.clone(),
                runtime: runtime.config().clone(),
                config,
                code: code.clone(),
                module: spec.module.clone(),
                opts: opts.clone(),
                warm: sb.warm as usize,
                max: sandbox_workers(spec) as usize,
                idle_timeout: sb.idle_timeout,
            };
            Some(Arc::new(Pool::new(spec, metrics.clone())))
        }
        _ => None,
    };
    let snapshot_start = spec.snapshot
        && std::fs::read(&spec.module)
            .map(|bytes| wasmlet_snapshotter::has_init_func(&bytes, &SnapshotOptions::default()))
            .unwrap_or(false);
    let l = &spec.limits;
    let shape = (l.max_concurrency, l.queue_depth, l.queue_timeout);
    let admission = previous
        .and_then(|p| p.functions.iter().find(|f| f.spec.name == spec.name))
        .filter(|f| f.admission.shape == shape)
        .map(|f| f.admission.clone())
        .unwrap_or_else(|| Arc::new(Admission::new(shape.0, shape.1, shape.2)));
    Ok(Func {
        env: spec
            .env
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        dirs,
        admission,
        metrics,
        snapshot_start,
        retry_after: l.queue_timeout.as_secs_f64().ceil().max(1.0) as u64,
        sandbox,
        handler,
        spec: spec.clone(),
    })
}

/// Exact routes by path; prefix routes longest first.
struct Router {
    exact: HashMap<String, (usize, Route)>,
    prefixes: Vec<(Route, usize)>,
}

impl Router {
    fn new(functions: &[Arc<Func>]) -> Router {
        let mut exact = HashMap::new();
        let mut prefixes = Vec::new();
        for (i, f) in functions.iter().enumerate() {
            for r in &f.spec.routes {
                if r.prefix {
                    prefixes.push((r.clone(), i));
                } else {
                    exact.insert(r.path.clone(), (i, r.clone()));
                }
            }
        }
        prefixes.sort_by_key(|p| std::cmp::Reverse(p.0.path.len()));
        Router { exact, prefixes }
    }

    fn find(&self, path: &str) -> Option<(usize, &Route)> {
        if let Some((i, r)) = self.exact.get(path) {
            return Some((*i, r));
        }
        self.prefixes
            .iter()
            .find(|(r, _)| {
                path == r.path
                    || (path.starts_with(&r.path)
                        && path.as_bytes().get(r.path.len()) == Some(&b'/'))
            })
            .map(|(r, i)| (*i, r))
    }
}
