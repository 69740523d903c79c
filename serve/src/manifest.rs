//! The manifest, `wasmlet.toml`: plain serde data (`deny_unknown_fields`,
//! every default a named constant), parsed in two stages like the CLI's
//! flags: TOML into these structs (sizes and durations checked as they are
//! read), then checks across values (unique names and routes). Every error
//! names the file, the line and the field.
//!
//! ```toml
//! listen = "127.0.0.1:3000"            # optional; --listen wins
//! [[function]]
//! name = "hello"
//! module = "hello.wasm"                # relative to the manifest's directory
//! kind = "wagi"                        # or "http"; inferred when left out
//! [function.limits]
//! memory = "64MiB"
//! timeout = "5s"
//! [[function.trigger]]
//! type = "http"
//! route = "/hello"                     # "/api/..." is a prefix route
//! [[function.trigger]]
//! type = "schedule"                    # cron = "0 */5 * * * *" or every = "30s"
//! every = "30s"
//! [[function.trigger]]
//! type = "file"                        # each complete file in `dir` is one event
//! dir = "inbox"
//! ```

use crate::error::ManifestError;
use serde::{Deserialize, Deserializer};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;
use toml::Spanned;

/// Where requests are served unless the manifest or `--listen` says otherwise.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:3000";
/// Where the admin endpoints (`/metrics`, `/healthz`, `/readyz`) are served.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9090";
/// Default linear-memory limit of one instance. (The runtime's own default,
/// 1 GiB, would make a server's memory budget meaningless.)
pub const DEFAULT_MEMORY: u64 = 128 << 20;
/// Default wall-clock limit of one request's invocation.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Default instances of one function in flight.
pub const DEFAULT_MAX_CONCURRENCY: u32 = 64;
/// Default requests waiting for one function beyond its concurrency.
pub const DEFAULT_QUEUE_DEPTH: u32 = 128;
/// Default longest wait in a function's queue before a 503.
pub const DEFAULT_QUEUE_TIMEOUT: Duration = Duration::from_secs(1);
/// Default cap on instances in flight across all functions.
pub const DEFAULT_MAX_IN_FLIGHT: u32 = 1024;
/// Default share of the host's memory the manifest's functions may claim at
/// full concurrency (`memory_budget` when left out).
pub const DEFAULT_MEMORY_BUDGET_SHARE: f64 = 0.8;
/// Default largest request head (request line and headers): 16 KiB.
pub const DEFAULT_MAX_HEADER_SIZE: u64 = 16 << 10;
/// Default largest request body: 1 MiB (WAGI bodies are buffered).
pub const DEFAULT_MAX_BODY_SIZE: u64 = 1 << 20;
/// Default largest response a WAGI function may write: 16 MiB.
pub const DEFAULT_MAX_RESPONSE_SIZE: u64 = 16 << 20;
/// Default time a client has to send the request head.
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Default time a client has to send the whole body.
pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(30);
/// Default time a client may go without reading any of its response.
pub const DEFAULT_SEND_TIMEOUT: Duration = Duration::from_secs(60);
/// Default bound on draining in-flight requests at shutdown.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// Default bytes of one invocation's stderr copied into the log.
pub const DEFAULT_MAX_LOG_PER_INVOCATION: u64 = 8 << 10;
/// Default number of pre-started sandbox workers per function.
pub const DEFAULT_SANDBOX_WARM: u32 = 1;
/// Default time a sandbox worker beyond the warm ones may sit idle before
/// it is stopped.
pub const DEFAULT_SANDBOX_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Name of the manifest `wasmlet serve` reads when given none.
pub const DEFAULT_MANIFEST: &str = "wasmlet.toml";

/// A parsed and checked manifest.
#[derive(Debug, Clone, PartialEq)]
pub struct Manifest {
    /// The file it was read from.
    pub path: PathBuf,
    /// Where its relative paths are resolved.
    pub dir: PathBuf,
    /// The request listener.
    pub listen: String,
    /// The admin listener.
    pub admin_listen: String,
    /// Server-wide settings.
    pub server: ServerSettings,
    /// The functions, in manifest order.
    pub functions: Vec<FunctionSpec>,
    /// The usage log (`usage_log`, resolved against the manifest's
    /// directory; default [`crate::usage_log::DEFAULT_USAGE_LOG`] there).
    pub usage_log: PathBuf,
    /// Size past which the usage log is rotated.
    pub usage_log_max_size: u64,
    /// Where triggers keep their state (`state_dir`; default
    /// [`DEFAULT_STATE_DIR`] beside the manifest).
    pub state_dir: PathBuf,
}

/// Directory, beside the manifest, where triggers keep their state (a
/// schedule's last run) unless `state_dir` says otherwise.
pub const DEFAULT_STATE_DIR: &str = ".wasmlet-state";
/// Shortest `every` of a schedule trigger (cron's step is a second too).
pub const MIN_EVERY: Duration = Duration::from_secs(1);
/// Default attempts of a file event beyond the first.
pub const DEFAULT_FILE_RETRIES: u32 = 3;
/// Default wait before the first retry of a file event (doubled each time).
pub const DEFAULT_FILE_BACKOFF: Duration = Duration::from_secs(1);
/// Default largest file a file trigger hands to its function.
pub const DEFAULT_FILE_MAX_SIZE: u64 = 64 << 20;

/// The raw file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    listen: Option<String>,
    admin_listen: Option<String>,
    #[serde(default)]
    server: ServerSettings,
    #[serde(default)]
    function: Vec<Spanned<RawFunction>>,
    usage_log: Option<PathBuf>,
    #[serde(default, deserialize_with = "opt_size")]
    usage_log_max_size: Option<u64>,
    state_dir: Option<PathBuf>,
}

/// The `[server]` table: what applies to every function.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSettings {
    /// Instances in flight across all functions; more wait in their
    /// function's queue.
    pub max_in_flight: u32,
    /// Memory the functions may claim at full concurrency (sum of
    /// `max_concurrency` x `limits.memory`), checked at load. Default: 80%
    /// of the host's memory.
    #[serde(deserialize_with = "opt_size")]
    pub memory_budget: Option<u64>,
    /// Largest request head (request line and headers); more is a 431.
    #[serde(deserialize_with = "size")]
    pub max_header_size: u64,
    /// Largest request body; more is a 413.
    #[serde(deserialize_with = "size")]
    pub max_body_size: u64,
    /// Largest response body a WAGI function may write; more is a 500.
    #[serde(deserialize_with = "size")]
    pub max_response_size: u64,
    /// Time a client has to send a request head; a slower one is cut off.
    #[serde(deserialize_with = "duration")]
    pub header_timeout: Duration,
    /// Time a client has to send a request body; a slower one gets a 408.
    #[serde(deserialize_with = "duration")]
    pub body_timeout: Duration,
    /// Time a client may go without reading any of its response (the
    /// socket's buffer full): its connection is then closed, and what the
    /// response held freed.
    #[serde(deserialize_with = "duration")]
    pub send_timeout: Duration,
    /// Longest wait for in-flight requests at shutdown.
    #[serde(deserialize_with = "duration")]
    pub drain_timeout: Duration,
    /// Bytes of one invocation's stderr copied into the server log.
    #[serde(deserialize_with = "size")]
    pub max_log_per_invocation: u64,
    /// Environment variable holding a bearer token the admin listener's
    /// `/metrics` requires (none required when unset).
    pub admin_token_env: Option<String>,
    /// Watch the manifest and its modules and reload when they change.
    pub watch: bool,
}

impl Default for ServerSettings {
    fn default() -> Self {
        ServerSettings {
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            memory_budget: None,
            max_header_size: DEFAULT_MAX_HEADER_SIZE,
            max_body_size: DEFAULT_MAX_BODY_SIZE,
            max_response_size: DEFAULT_MAX_RESPONSE_SIZE,
            header_timeout: DEFAULT_HEADER_TIMEOUT,
            body_timeout: DEFAULT_BODY_TIMEOUT,
            send_timeout: DEFAULT_SEND_TIMEOUT,
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            max_log_per_invocation: DEFAULT_MAX_LOG_PER_INVOCATION,
            admin_token_env: None,
            watch: true,
        }
    }
}

/// How a function handles a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A WASI preview 1 command in the WAGI (CGI) convention.
    Wagi,
    /// A component exporting `wasi:http/incoming-handler`.
    Http,
}

impl Kind {
    /// The manifest's name for it.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Wagi => "wagi",
            Kind::Http => "http",
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFunction {
    name: Spanned<String>,
    module: Spanned<PathBuf>,
    kind: Option<Kind>,
    #[serde(default)]
    snapshot: bool,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    dirs: Vec<Spanned<String>>,
    #[serde(default)]
    allowed_outbound_hosts: Vec<String>,
    #[serde(default)]
    limits: FunctionLimits,
    sandbox: Option<SandboxSettings>,
    #[serde(default)]
    trigger: Vec<Spanned<Trigger>>,
}

/// One function of the manifest, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct FunctionSpec {
    /// Its name: in logs, metrics and `x-wasmlet-error`s.
    pub name: String,
    /// The module, resolved against the manifest's directory.
    pub module: PathBuf,
    /// The kind; `None` is inferred from the module when it is loaded.
    pub kind: Option<Kind>,
    /// Start every instance from a pre-initialized snapshot.
    pub snapshot: bool,
    /// Environment variables every invocation gets.
    pub env: BTreeMap<String, String>,
    /// Preopened directories.
    pub dirs: Vec<DirSpec>,
    /// Hosts outgoing HTTP requests may go to.
    pub allowed_outbound_hosts: Vec<String>,
    /// Limits and scaling.
    pub limits: FunctionLimits,
    /// Run in jailed workers with these settings.
    pub sandbox: Option<SandboxSettings>,
    /// Routes.
    pub routes: Vec<Route>,
    /// Schedule and file triggers.
    pub events: Vec<EventTrigger>,
    /// Line of its `[[function]]` table, for later messages.
    pub line: usize,
}

/// A preopened directory: `HOST[::GUEST]`, writable with a `rw:` prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirSpec {
    /// The host directory, resolved against the manifest's directory.
    pub host: PathBuf,
    /// The path the guest sees.
    pub guest: String,
    /// Whether the guest may write.
    pub writable: bool,
}

/// `[function.limits]`: the executor's limits in human units, and scaling.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FunctionLimits {
    /// Linear memory of one instance: at least one wasm page (64 KiB).
    #[serde(deserialize_with = "memory_size")]
    pub memory: u64,
    /// CPU time of one invocation.
    #[serde(deserialize_with = "opt_duration")]
    pub cpu_time: Option<Duration>,
    /// Wall-clock time of one invocation; past it the client gets a 504.
    #[serde(deserialize_with = "duration")]
    pub timeout: Duration,
    /// Fuel of one invocation (turns fuel metering on for the server).
    #[serde(deserialize_with = "opt_positive")]
    pub fuel: Option<u64>,
    /// Instances in flight.
    #[serde(deserialize_with = "positive_u32")]
    pub max_concurrency: u32,
    /// Requests waiting beyond `max_concurrency`; more get a 503.
    pub queue_depth: u32,
    /// Longest wait in the queue; then a 503.
    #[serde(deserialize_with = "duration")]
    pub queue_timeout: Duration,
}

impl Default for FunctionLimits {
    fn default() -> Self {
        FunctionLimits {
            memory: DEFAULT_MEMORY,
            cpu_time: None,
            timeout: DEFAULT_TIMEOUT,
            fuel: None,
            max_concurrency: DEFAULT_MAX_CONCURRENCY,
            queue_depth: DEFAULT_QUEUE_DEPTH,
            queue_timeout: DEFAULT_QUEUE_TIMEOUT,
        }
    }
}

/// `[function.sandbox]`: run the function in jailed worker processes.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SandboxSettings {
    /// Memory of each worker's cgroup.
    #[serde(deserialize_with = "opt_size")]
    pub memory: Option<u64>,
    /// CPU bandwidth of each worker, in CPUs.
    pub cpus: Option<f64>,
    /// Processes and threads of each worker.
    pub pids: Option<u64>,
    /// Workers kept started.
    pub warm: u32,
    /// How long a worker beyond the warm ones may sit idle before it is
    /// stopped.
    #[serde(deserialize_with = "duration")]
    pub idle_timeout: Duration,
    /// Host uid the workers run as (default `nobody`, 65534). Give each
    /// tenant its own, so one tenant's workers cannot read another's
    /// files where their grants meet.
    pub uid: u32,
    /// Host gid the workers run as (default `nogroup`, 65534).
    pub gid: u32,
}

impl Default for SandboxSettings {
    fn default() -> Self {
        SandboxSettings {
            memory: None,
            cpus: None,
            pids: None,
            warm: DEFAULT_SANDBOX_WARM,
            idle_timeout: DEFAULT_SANDBOX_IDLE_TIMEOUT,
            uid: wasmlet_sandbox::DEFAULT_SANDBOX_ID,
            gid: wasmlet_sandbox::DEFAULT_SANDBOX_ID,
        }
    }
}

/// `[[function.trigger]]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum Trigger {
    /// An HTTP route.
    Http {
        /// `/exact` or `/prefix/...`.
        route: String,
    },
    /// A cron expression or a fixed interval.
    Schedule {
        /// The trigger's name (`WASMLET_TRIGGER`); default `schedule`.
        name: Option<String>,
        /// `[sec] min hour day-of-month month day-of-week [year]`.
        cron: Option<String>,
        /// A fixed interval instead: `"30s"`, `"5m"`.
        #[serde(default, deserialize_with = "opt_duration")]
        every: Option<Duration>,
        /// An IANA time zone for `cron` (default `UTC`).
        timezone: Option<String>,
        /// When a run is due while the previous one still runs.
        #[serde(default)]
        overlap: Overlap,
        /// Runs that fell due while the server was down.
        #[serde(default)]
        missed: Missed,
    },
    /// Each complete file that appears in a directory.
    File {
        /// The trigger's name (`WASMLET_TRIGGER`); default `file`.
        name: Option<String>,
        /// The watched directory, relative to the manifest's.
        dir: PathBuf,
        /// Attempts after the first failed one.
        retries: Option<u32>,
        /// Wait before the first retry; doubled for each next one.
        #[serde(default, deserialize_with = "opt_duration")]
        backoff: Option<Duration>,
        /// Largest file taken; a larger one goes to `failed/`.
        #[serde(default, deserialize_with = "opt_size")]
        max_size: Option<u64>,
    },
}

/// A schedule's policy for a run that falls due while the previous one runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Overlap {
    /// Do not start it (default).
    #[default]
    Skip,
    /// Start it when the running one ends; at most one waits.
    QueueOne,
    /// Start it anyway.
    Allow,
}

/// A schedule's policy for the runs that fell due while the server was down.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Missed {
    /// Forget them (default).
    #[default]
    Skip,
    /// Run once at start-up, for the latest of them.
    RunOnce,
}

/// A checked schedule or file trigger.
#[derive(Debug, Clone, PartialEq)]
pub enum EventTrigger {
    /// A schedule.
    Schedule(ScheduleSpec),
    /// A watched directory.
    File(FileSpec),
}

impl EventTrigger {
    /// The trigger's name.
    pub fn name(&self) -> &str {
        match self {
            EventTrigger::Schedule(s) => &s.name,
            EventTrigger::File(f) => &f.name,
        }
    }
}

/// When a schedule fires.
#[derive(Debug, Clone, PartialEq)]
pub enum When {
    /// A cron expression (checked), in `timezone`.
    Cron(String),
    /// Every so often, counted from the previous run.
    Every(Duration),
}

/// A checked schedule trigger.
#[derive(Debug, Clone, PartialEq)]
pub struct ScheduleSpec {
    /// Its name.
    pub name: String,
    /// When it fires.
    pub when: When,
    /// The time zone of `when`.
    pub timezone: chrono_tz::Tz,
    /// Overlapping runs.
    pub overlap: Overlap,
    /// Runs missed while down.
    pub missed: Missed,
}

/// A checked file trigger.
#[derive(Debug, Clone, PartialEq)]
pub struct FileSpec {
    /// Its name.
    pub name: String,
    /// The watched directory, resolved against the manifest's.
    pub dir: PathBuf,
    /// Attempts after the first.
    pub retries: u32,
    /// First retry's wait.
    pub backoff: Duration,
    /// Largest file.
    pub max_size: u64,
}

/// A checked HTTP route.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Route {
    /// The path, without the `/...` of a prefix route.
    pub path: String,
    /// Whether every path under `path` matches too.
    pub prefix: bool,
}

impl Route {
    /// Parses `/exact` or `/prefix/...`.
    pub fn parse(s: &str) -> Result<Route, String> {
        if !s.starts_with('/') {
            return Err(format!("route `{s}` must start with `/`"));
        }
        if s.contains(['?', '#', ' ']) || s.chars().any(|c| c.is_control()) {
            return Err(format!(
                "route `{s}` may not hold `?`, `#`, spaces or control characters"
            ));
        }
        let (path, prefix) = match s.strip_suffix("/...") {
            Some(p) => (p, true),
            None => (s, false),
        };
        if path.contains("...") {
            return Err(format!(
                "route `{s}`: `...` is allowed only as the last segment (`/api/...`)"
            ));
        }
        let path = if path.len() > 1 {
            path.trim_end_matches('/')
        } else {
            path
        };
        Ok(Route {
            path: path.to_string(),
            prefix,
        })
    }
}

impl std::fmt::Display for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.prefix, self.path.as_str()) {
            (true, "") => write!(f, "/..."),
            (true, p) => write!(f, "{p}/..."),
            (false, p) => write!(f, "{p}"),
        }
    }
}

impl Manifest {
    /// Reads and checks the manifest at `path`.
    pub fn load(path: &Path) -> Result<Manifest, ManifestError> {
        let text = std::fs::read_to_string(path).map_err(|e| ManifestError::Read {
            path: path.to_owned(),
            error: e.to_string(),
        })?;
        Manifest::parse(path, &text)
    }

    /// Checks manifest `text`, read from `path` (relative paths in it are
    /// resolved against `path`'s directory).
    pub fn parse(path: &Path, text: &str) -> Result<Manifest, ManifestError> {
        let at = |span: Option<std::ops::Range<usize>>, message: String| {
            let (line, column, context) = match span {
                Some(span) => locate(text, span.start),
                None => (0, 0, String::new()),
            };
            ManifestError::Invalid {
                path: path.to_owned(),
                line,
                column,
                context,
                message,
            }
        };
        let raw: RawManifest =
            toml::from_str(text).map_err(|e| at(e.span(), e.message().into()))?;
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_path_buf();
        let mut names: HashMap<String, ()> = HashMap::new();
        let mut routes: HashMap<Route, String> = HashMap::new();
        let mut functions = Vec::new();
        if let Some(env) = &raw.server.admin_token_env
            && (env.is_empty() || env.contains(['=', '\0']))
        {
            return Err(at(
                None,
                format!("server.admin_token_env `{env}` is not an environment variable name"),
            ));
        }
        if raw.server.max_in_flight == 0 {
            return Err(at(None, "server.max_in_flight must be at least 1".into()));
        }
        for f in raw.function {
            let fspan = f.span();
            let f = f.into_inner();
            let name = f.name.get_ref().clone();
            let valid = !name.is_empty()
                && name.len() <= 64
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
            if !valid {
                return Err(at(
                    Some(f.name.span()),
                    format!(
                        "function name `{name}`: use 1 to 64 letters, digits, `-` or `_` (it appears in logs and metric labels)"
                    ),
                ));
            }
            if names.insert(name.clone(), ()).is_some() {
                return Err(at(
                    Some(f.name.span()),
                    format!("function name `{name}` is used twice"),
                ));
            }
            let module = dir.join(f.module.get_ref());
            for (k, v) in f.env.iter() {
                if k.is_empty() || k.contains(['=', '\0']) {
                    return Err(at(
                        Some(fspan.clone()),
                        format!("function `{name}`: env name `{k}` is not valid"),
                    ));
                }
                if v.contains('\0') {
                    return Err(at(
                        Some(fspan.clone()),
                        format!(
                            "function `{name}`: env `{k}` holds a NUL byte, which the guest would see as its end"
                        ),
                    ));
                }
            }
            let mut dirs = Vec::new();
            for d in &f.dirs {
                let spec = d.get_ref();
                let (writable, rest) = match spec.strip_prefix("rw:") {
                    Some(r) => (true, r),
                    None => (false, spec.as_str()),
                };
                let (host, guest) = rest.split_once("::").unwrap_or((rest, rest));
                if host.is_empty() || guest.is_empty() {
                    return Err(at(
                        Some(d.span()),
                        format!(
                            "function `{name}`: dirs entry `{spec}`: give HOST or HOST::GUEST (prefix `rw:` for writable)"
                        ),
                    ));
                }
                if dirs.iter().any(|x: &DirSpec| x.guest == guest) {
                    return Err(at(
                        Some(d.span()),
                        format!("function `{name}`: guest path `{guest}` is granted twice"),
                    ));
                }
                dirs.push(DirSpec {
                    host: dir.join(host),
                    guest: guest.to_string(),
                    writable,
                });
            }
            if let Some(sb) = &f.sandbox {
                if let Some(c) = sb.cpus
                    && !(c > 0.0 && c.is_finite())
                {
                    return Err(at(
                        Some(fspan.clone()),
                        format!("function `{name}`: sandbox.cpus must be more than 0"),
                    ));
                }
                if sb.warm == 0 {
                    return Err(at(
                        Some(fspan.clone()),
                        format!("function `{name}`: sandbox.warm must be at least 1"),
                    ));
                }
            }
            let mut froutes = Vec::new();
            let mut events: Vec<EventTrigger> = Vec::new();
            for t in &f.trigger {
                let bad = |m: String| at(Some(t.span()), format!("function `{name}`: {m}"));
                if let Some(e) = event_trigger(t.get_ref(), &dir, &events).map_err(bad)? {
                    events.push(e);
                    continue;
                }
                match t.get_ref() {
                    Trigger::Http { route } => {
                        let r = Route::parse(route)
                            .map_err(|m| at(Some(t.span()), format!("function `{name}`: {m}")))?;
                        if let Some(other) = routes.insert(r.clone(), name.clone()) {
                            return Err(at(
                                Some(t.span()),
                                format!(
                                    "route `{r}` of function `{name}` is already the route of function `{other}`"
                                ),
                            ));
                        }
                        froutes.push(r);
                    }
                    Trigger::Schedule { .. } | Trigger::File { .. } => {}
                }
            }
            let (line, _, _) = locate(text, fspan.start);
            functions.push(FunctionSpec {
                name,
                module,
                kind: f.kind,
                snapshot: f.snapshot,
                env: f.env,
                dirs,
                allowed_outbound_hosts: f.allowed_outbound_hosts,
                limits: f.limits,
                sandbox: f.sandbox,
                routes: froutes,
                events,
                line,
            });
        }
        if functions.is_empty() {
            return Err(at(
                None,
                "no functions: add a [[function]] table with a name, a module and a trigger".into(),
            ));
        }
        Ok(Manifest {
            path: path.to_owned(),
            listen: raw.listen.unwrap_or_else(|| DEFAULT_LISTEN.into()),
            admin_listen: raw
                .admin_listen
                .unwrap_or_else(|| DEFAULT_ADMIN_LISTEN.into()),
            server: raw.server,
            functions,
            usage_log: dir.join(
                raw.usage_log
                    .unwrap_or_else(|| crate::usage_log::DEFAULT_USAGE_LOG.into()),
            ),
            usage_log_max_size: raw
                .usage_log_max_size
                .unwrap_or(crate::usage_log::DEFAULT_USAGE_LOG_MAX_SIZE),
            state_dir: dir.join(raw.state_dir.unwrap_or_else(|| DEFAULT_STATE_DIR.into())),
            dir,
        })
    }
}

/// A schedule or file trigger checked (`None` for an HTTP one); `before`
/// are the function's event triggers checked so far (names are unique).
fn event_trigger(
    t: &Trigger,
    dir: &Path,
    before: &[EventTrigger],
) -> Result<Option<EventTrigger>, String> {
    let name = |given: &Option<String>, kind: &str| -> Result<String, String> {
        let n = match given {
            Some(n) => n.clone(),
            None => {
                let same = before.iter().filter(|e| e.name().starts_with(kind)).count();
                if same == 0 {
                    kind.to_string()
                } else {
                    format!("{kind}-{}", same + 1)
                }
            }
        };
        let valid = !n.is_empty()
            && n.len() <= 64
            && n.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !valid {
            return Err(format!(
                "trigger name `{n}`: use 1 to 64 letters, digits, `-` or `_`"
            ));
        }
        if before.iter().any(|e| e.name() == n) {
            return Err(format!("trigger name `{n}` is used twice"));
        }
        Ok(n)
    };
    Ok(Some(match t {
        Trigger::Http { .. } => return Ok(None),
        Trigger::Schedule {
            name: given,
            cron,
            every,
            timezone,
            overlap,
            missed,
        } => {
            let when = match (cron, every) {
                (Some(c), None) => {
                    crate::trigger::schedule::parse_cron(c)
                        .map_err(|e| format!("cron `{c}`: {e}"))?;
                    When::Cron(c.clone())
                }
                (None, Some(d)) if *d < MIN_EVERY => {
                    return Err(format!(
                        "every = {:?} is shorter than {}s, a schedule's finest step",
                        humantime::format_duration(*d).to_string(),
                        MIN_EVERY.as_secs()
                    ));
                }
                (None, Some(d)) => When::Every(*d),
                _ => {
                    return Err(
                        "a schedule trigger takes either `cron` or `every` (e.g. every = \"30s\")"
                            .into(),
                    );
                }
            };
            let timezone = match timezone {
                None => chrono_tz::UTC,
                Some(z) => z.parse().map_err(|_| {
                    format!("timezone `{z}` is not an IANA time zone name (e.g. \"Europe/Paris\")")
                })?,
            };
            EventTrigger::Schedule(ScheduleSpec {
                name: name(given, "schedule")?,
                when,
                timezone,
                overlap: *overlap,
                missed: *missed,
            })
        }
        Trigger::File {
            name: given,
            dir: watched,
            retries,
            backoff,
            max_size,
        } => EventTrigger::File(FileSpec {
            name: name(given, "file")?,
            dir: dir.join(watched),
            retries: retries.unwrap_or(DEFAULT_FILE_RETRIES),
            backoff: backoff.unwrap_or(DEFAULT_FILE_BACKOFF),
            max_size: max_size.unwrap_or(DEFAULT_FILE_MAX_SIZE),
        }),
    }))
}

/// The 1-based line and column of byte `offset` in `text`, and the field
/// there: the key of that line, under the table header above it.
fn locate(text: &str, offset: usize) -> (usize, usize, String) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    // A line without its comment (a `#` outside a string, roughly).
    let bare = |l: &str| -> String {
        let mut in_str = false;
        let mut out = String::new();
        for c in l.chars() {
            match c {
                '"' => in_str = !in_str,
                '#' if !in_str => break,
                _ => {}
            }
            out.push(c);
        }
        out.trim().to_string()
    };
    let header = |l: &str| l.trim_matches(|c| c == '[' || c == ']').trim().to_string();
    let this_line = bare(text[line_start..].lines().next().unwrap_or(""));
    let key = this_line
        .split_once('=')
        .map(|(k, _)| k.trim().to_string())
        .filter(|k| !k.starts_with('[') && !k.is_empty());
    let table = text[..line_start]
        .lines()
        .rev()
        .map(bare)
        .find(|l| l.starts_with('['))
        .map(|l| header(&l));
    let context = match (table, key) {
        (Some(t), Some(k)) => format!("{t}.{k}"),
        (None, Some(k)) => k,
        (_, None) if this_line.starts_with('[') => header(&this_line),
        (Some(t), None) => t,
        (None, None) => String::new(),
    };
    (line, column, context)
}

/// Parses a human size (`64MiB`, `1G`, `65536`; binary units) with the
/// `parse-size` crate, the one parser of sizes for the manifest and the
/// CLI's flags. A number of more than 20 significant digits, or of 20 that
/// passes `u64::MAX`, is refused first: parse-size 1.1 rounds such a
/// mantissa up with an unchecked `+ 1`, which wraps to 0 in a release
/// build (a fuzz finding, `fuzz/corpus/cli_parsers/overflow-*`).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let mantissa: String = s
        .trim_start()
        .chars()
        .take_while(|c| c.is_ascii_digit() || matches!(c, '_' | ' ' | '.'))
        .filter(char::is_ascii_digit)
        .collect();
    let significant = mantissa.trim_start_matches('0');
    if significant.len() > 20 || (significant.len() == 20 && significant > "18446744073709551615") {
        return Err("number too large to fit in target type".into());
    }
    parse_size::Config::new()
        .with_binary()
        .parse_size(s)
        .map_err(|e| e.to_string())
}

/// A size: `"64MiB"`, `"1G"`, or a number of bytes; more than zero.
fn size<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Bytes(u64),
        Text(String),
    }
    let n = match Raw::deserialize(d)? {
        Raw::Bytes(n) => n,
        Raw::Text(s) => parse_size(&s).map_err(|e| {
            serde::de::Error::custom(format!("invalid size `{s}`: {e} (try e.g. \"64MiB\")"))
        })?,
    };
    if n == 0 {
        return Err(serde::de::Error::custom(
            "a size here must be more than zero",
        ));
    }
    Ok(n)
}

/// A linear-memory limit: a size of at least one wasm page (a bare number
/// is bytes: `memory = 64` would fail every request).
fn memory_size<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let n = size(d)?;
    if n < 65536 {
        return Err(serde::de::Error::custom(format!(
            "a memory limit of {n} bytes is less than one wasm page (64KiB): a bare number is bytes (try e.g. \"64MiB\")"
        )));
    }
    Ok(n)
}

fn opt_size<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    size(d).map(Some)
}

/// Longest duration accepted (ten years), so deadlines never overflow.
const MAX_DURATION: Duration = Duration::from_secs(10 * 365 * 24 * 60 * 60);

/// A duration: `"250ms"`, `"5s"`, `"1m 30s"`; more than zero.
fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    let v = humantime::parse_duration(&s).map_err(|e| {
        serde::de::Error::custom(format!("invalid duration `{s}`: {e} (try e.g. \"250ms\")"))
    })?;
    if v.is_zero() || v > MAX_DURATION {
        return Err(serde::de::Error::custom(format!(
            "duration `{s}` must be more than zero and at most 3650days"
        )));
    }
    Ok(v)
}

fn opt_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    duration(d).map(Some)
}

fn opt_positive<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    match u64::deserialize(d)? {
        0 => Err(serde::de::Error::custom("must be more than zero")),
        n => Ok(Some(n)),
    }
}

fn positive_u32<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    match u32::deserialize(d)? {
        0 => Err(serde::de::Error::custom("must be at least 1")),
        n => Ok(n),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ISSUE_SHAPE: &str = r#"
listen = "127.0.0.1:3000"            # optional; --listen wins
[[function]]
name = "hello"
module = "hello.wasm"                # relative to the manifest's directory
kind = "wagi"                        # or "http" (a wasi:http component); inferred when left out
env = { GREETING = "hi" }
dirs = ["static::/static"]           # HOST[::GUEST], read-only unless "rw:" is prefixed
allowed_outbound_hosts = []          # wasi:http outgoing requests: none unless listed (Spin's name)
[function.limits]                    # human sizes and durations; mapped onto the executor's Limits
memory = "64MiB"
cpu_time = "100ms"
timeout = "5s"
fuel = 1000000                       # optional
max_concurrency = 64                 # instances in flight
queue_depth = 128                    # waiting requests beyond that; then 503
queue_timeout = "1s"
[function.sandbox]                   # optional: present = run in jailed workers
memory = "256MiB"
cpus = 0.5
pids = 64
warm = 1                             # pre-started workers
[[function.trigger]]
type = "http"
route = "/hello"                     # "/api/..." is a prefix route
"#;

    fn parse(text: &str) -> Result<Manifest, ManifestError> {
        Manifest::parse(Path::new("/srv/app/wasmlet.toml"), text)
    }

    #[test]
    fn accepts_the_documented_shape() {
        let m = parse(ISSUE_SHAPE).unwrap();
        assert_eq!(m.listen, "127.0.0.1:3000");
        let f = &m.functions[0];
        assert_eq!(f.module, Path::new("/srv/app/hello.wasm"));
        assert_eq!(f.kind, Some(Kind::Wagi));
        assert_eq!(f.limits.memory, 64 << 20);
        assert_eq!(f.limits.cpu_time, Some(Duration::from_millis(100)));
        assert_eq!(f.limits.fuel, Some(1_000_000));
        assert_eq!(f.limits.queue_timeout, Duration::from_secs(1));
        assert_eq!(f.sandbox.as_ref().unwrap().memory, Some(256 << 20));
        assert_eq!(
            f.dirs,
            vec![DirSpec {
                host: "/srv/app/static".into(),
                guest: "/static".into(),
                writable: false
            }]
        );
        assert_eq!(
            f.routes,
            vec![Route {
                path: "/hello".into(),
                prefix: false
            }]
        );
        assert_eq!(f.line, 3);
    }

    #[test]
    fn errors_name_file_line_and_field() {
        let bad = ISSUE_SHAPE.replace("\"64MiB\"", "\"64 parsecs\"");
        let e = parse(&bad).unwrap_err().to_string();
        assert!(
            e.starts_with("/srv/app/wasmlet.toml:11:") && e.contains("function.limits.memory"),
            "{e}"
        );
        assert!(e.contains("invalid size `64 parsecs`"), "{e}");
        let bad = ISSUE_SHAPE.replace("queue_depth", "queue_length");
        let e = parse(&bad).unwrap_err().to_string();
        assert!(
            e.contains(":16:") && e.contains("unknown field `queue_length`"),
            "{e}"
        );
        let bad = ISSUE_SHAPE.replace("type = \"http\"", "type = \"cron\"");
        let e = parse(&bad).unwrap_err().to_string();
        assert!(e.contains("cron"), "{e}");
        assert!(!e.contains('\n'), "{e}");
    }

    #[test]
    fn routes_parse_and_clash() {
        assert_eq!(
            Route::parse("/api/...").unwrap(),
            Route {
                path: "/api".into(),
                prefix: true
            }
        );
        assert_eq!(Route::parse("/...").unwrap().to_string(), "/...");
        assert!(Route::parse("api").is_err());
        assert!(Route::parse("/a/.../b").is_err());
        let two = format!(
            "{ISSUE_SHAPE}\n[[function]]\nname = \"b\"\nmodule = \"b.wasm\"\n[[function.trigger]]\ntype = \"http\"\nroute = \"/hello\"\n"
        );
        let e = parse(&two).unwrap_err().to_string();
        assert!(e.contains("already the route of function `hello`"), "{e}");
        assert!(e.contains(":30:1: function.trigger: "), "{e}");
    }

    #[test]
    fn zero_limits_and_bad_names_are_refused() {
        let e = parse(&ISSUE_SHAPE.replace("max_concurrency = 64", "max_concurrency = 0"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("max_concurrency") && e.contains("at least 1"),
            "{e}"
        );
        let e = parse(&ISSUE_SHAPE.replace("name = \"hello\"", "name = \"he llo\""))
            .unwrap_err()
            .to_string();
        assert!(e.contains(":4:") && e.contains("function name"), "{e}");
    }

    #[test]
    fn sizes_beyond_u64_are_refused_not_wrapped() {
        // parse-size 1.1 alone wraps these to 0 (or panics in debug).
        for s in [
            "1844674407370955161567B",
            "18446744073709551616",
            "1.8446744073709551615 9",
            "0001844674407370955161 6",
        ] {
            let e = parse_size(s).unwrap_err();
            assert!(e.contains("too large"), "{s}: {e}");
        }
        assert_eq!(parse_size("18446744073709551615"), Ok(u64::MAX));
        assert_eq!(parse_size("00064MiB"), Ok(64 << 20));
        assert_eq!(parse_size("1.5 KiB"), Ok(1536));
    }
}
