//! The boundary between the task state machine (`state`) and what runs a
//! task (`wasm`): the state machine only knows these two traits, so its
//! tests drive a fake executor without containerd, a module or a cgroup.

use crate::error::Result;
use std::path::PathBuf;
use wasmlet_oci::bundle::Resources;

/// What containerd's `Create` hands over for one task.
#[derive(Debug, Clone, Default)]
pub struct CreateSpec {
    /// The container id.
    pub id: String,
    /// The bundle directory (`config.json`, `rootfs`).
    pub bundle: PathBuf,
    /// Rootfs mounts to make at `<bundle>/rootfs` (empty: already there).
    pub rootfs: Vec<RootfsMount>,
    /// Standard streams: FIFO or file paths, empty for none.
    pub stdin: String,
    /// See `stdin`.
    pub stdout: String,
    /// See `stdin`.
    pub stderr: String,
}

/// One rootfs mount, as containerd's snapshotter describes it.
#[derive(Debug, Clone, Default)]
pub struct RootfsMount {
    /// `overlay`, `bind`, ...
    pub kind: String,
    /// Source.
    pub source: String,
    /// Options (`lowerdir=...`, `rbind`, `ro`).
    pub options: Vec<String>,
}

/// How a task ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    /// The exit status containerd reports (128 + signal for a kill).
    pub status: u32,
    /// It ended because it ran out of memory (a `TaskOOM` event is sent).
    pub oom: bool,
    /// When it ended, where that is known before the exit is told (an
    /// in-shim guest's end); else the exit is dated when it is told.
    pub at: Option<std::time::SystemTime>,
}

/// Called once when a started task ends: from another thread, never from
/// inside [`Instance::start`] itself (the state machine holds a lock there).
pub type OnExit = Box<dyn FnOnce(Exit) + Send>;

/// Metrics in containerd's form: a protobuf message's type URL and bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metrics {
    /// E.g. `io.containerd.cgroups.v1.Metrics`.
    pub type_url: String,
    /// The encoded message.
    pub value: Vec<u8>,
}

/// Makes tasks ready to start.
pub trait Executor: Send + Sync + 'static {
    /// Prepares a task (reads the bundle, loads the module, opens its
    /// stdio; an in-shim task's instance is made too, so a module's wasm
    /// `start` section runs here); its entry point runs only after
    /// [`Instance::start`].
    fn create(&self, spec: &CreateSpec) -> Result<Box<dyn Instance>>;
}

/// One prepared or running task.
pub trait Instance: Send + Sync {
    /// The task's process id (before start: where it will run).
    fn pid(&self) -> u32;
    /// Starts it; `on_exit` is called once when it ends.
    fn start(&self, on_exit: OnExit) -> Result<u32>;
    /// Ends a started task with `signal` (its exit is reported through
    /// `on_exit`). Signals a wasm guest cannot receive are refused.
    fn kill(&self, signal: u32) -> Result<()>;
    /// Resource usage, from the task's cgroup where it has one.
    fn stats(&self) -> Result<Metrics>;
    /// Applies new resource limits.
    fn update(&self, resources: &Resources) -> Result<()>;
    /// Closes the task's stdin.
    fn close_stdin(&self);
    /// Releases everything the task holds (cgroup, rootfs mount, stdio);
    /// called once, on delete. Must not fail.
    fn cleanup(&self);
}

/// Signals that end a wasm task (a guest cannot catch any); the others
/// (`SIGCHLD`, `SIGCONT`, `SIGURG`, `SIGWINCH`, 0) are ignored, as their
/// default action is. Stop signals cannot be honoured.
pub fn signal_action(signal: u32) -> Result<SignalAction> {
    match signal as i32 {
        0 | libc::SIGCHLD | libc::SIGCONT | libc::SIGURG | libc::SIGWINCH => {
            Ok(SignalAction::Ignore)
        }
        libc::SIGSTOP | libc::SIGTSTP | libc::SIGTTIN | libc::SIGTTOU => {
            Err(crate::Error::Unimplemented(format!(
                "signal {signal}: a wasm task cannot be stopped (pause is not supported)"
            )))
        }
        s if (1..=64).contains(&s) => Ok(SignalAction::Terminate),
        _ => Err(crate::Error::InvalidArgument(format!("no signal {signal}"))),
    }
}

/// What a signal does to a wasm task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignalAction {
    /// Nothing.
    Ignore,
    /// Ends it with status 128 + signal.
    Terminate,
}
