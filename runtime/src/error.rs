//! The typed errors callers branch on.
//!
//! [`Error`] is what loading a module or setting up an invocation can fail
//! with. A guest that traps or exceeds a limit is not a host error: it is an
//! [`crate::Status`] of a finished [`crate::Outcome`], which still carries a
//! usage record; [`crate::Outcome::into_result`] turns it into an [`Error`]
//! for callers that just want `?`.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

/// Everything that can go wrong in the executor.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The engine could not be built from the configuration.
    #[error("invalid runtime configuration: {0}")]
    Config(String),
    /// A file could not be read or written. (The OS error is part of the
    /// message, not a `#[source]`, so `{:#}` chains do not repeat it.)
    #[error("{path}: {error}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        error: std::io::Error,
    },
    /// A module file cannot be read: missing, unreadable, not a regular
    /// file, or larger than `RuntimeConfig::max_module_size`.
    #[error("cannot read {0}")]
    Input(String),
    /// The input is neither WebAssembly, WAT, nor a wasmlet artifact.
    #[error("not a WebAssembly module: {0}")]
    NotWasm(String),
    /// The module failed to parse, validate or compile.
    #[error("invalid module: {0}")]
    Compile(String),
    /// The module is over one of the compile caps (`RuntimeConfig::compile`).
    #[error(transparent)]
    TooLarge(#[from] wasmlet_snapshotter::CapExceeded),
    /// The module needs compiling, and this runtime does not compile in
    /// its own process (`RuntimeConfig::compile.in_process` is false).
    #[error("module is not compiled yet, and this runtime compiles only in a child process")]
    NotCompiled,
    /// A precompiled artifact cannot be used.
    ///
    /// (Not a `#[source]`: the message already includes it, and error
    /// chains printed with `{:#}` would repeat it.)
    #[error("cannot load precompiled module: {0}")]
    Artifact(ArtifactError),
    /// Pre-initialization failed.
    #[error("cannot snapshot module: {0}")]
    Snapshot(wasmlet_snapshotter::SnapshotError),
    /// The compilation cache cannot be trusted or used.
    #[error("{0}")]
    Cache(String),
    /// The module does not fit the instance pool this runtime was built
    /// with; the message names the pool setting that would admit it.
    #[error("module does not fit the instance pool: {0}")]
    Pool(String),
    /// The module imports things the host does not provide.
    #[error(
        "unknown import{}: {} (pass --trap-unknown-imports to link them as functions that trap)",
        if .0.len() == 1 { "" } else { "s" },
        .0.join(", ")
    )]
    UnknownImports(Vec<String>),
    /// Linking failed for another reason (an import of the wrong type).
    #[error("cannot link module: {0}")]
    Link(String),
    /// The requested entry point does not exist or has the wrong type.
    #[error("{0}")]
    Entry(String),
    /// The invocation could not be set up (a preopened directory is missing).
    #[error("cannot set up invocation: {0}")]
    Setup(String),
    /// The guest trapped.
    #[error("guest trapped: {0}")]
    Trap(String),
    /// A wasi:http guest answered with an error code, or without a response.
    #[error("{0}")]
    Http(String),
    /// The guest exceeded one of its limits.
    #[error(transparent)]
    LimitExceeded(#[from] LimitExceeded),
    /// A sandbox could not be set up or its worker failed.
    #[error("sandbox: {0}")]
    Sandbox(String),
    /// The guest exited with a non-zero code (or, from a typed call, with
    /// any code: it exited instead of returning its results).
    #[error("guest exited with code {0}")]
    Exit(i32),
}

impl From<ArtifactError> for Error {
    fn from(e: ArtifactError) -> Self {
        Error::Artifact(e)
    }
}

impl From<wasmlet_snapshotter::SnapshotError> for Error {
    fn from(e: wasmlet_snapshotter::SnapshotError) -> Self {
        match e {
            // Over a cap is the same refusal whichever step checked it.
            wasmlet_snapshotter::SnapshotError::TooLarge(cap) => Error::TooLarge(cap),
            e => Error::Snapshot(e),
        }
    }
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, error: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            error,
        }
    }
}

/// Why a precompiled artifact (a `.cwasm` or a cache entry) was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArtifactError {
    /// Shorter than its header says.
    #[error("file is truncated (its length does not match its trailer)")]
    Truncated,
    /// Not written by wasmlet (no wasmlet trailer at the end).
    #[error("not a wasmlet artifact{0}")]
    Foreign(&'static str),
    /// Written by an incompatible version of the artifact format.
    #[error("artifact format version {0} is not supported (this wasmlet reads version {1})")]
    Version(u32, u32),
    /// Compiled by an engine with other settings or another wasmlet version.
    #[error(
        "compiled for a different engine (other wasmlet version or settings such as fuel metering); recompile it with `wasmlet compile`"
    )]
    EngineMismatch,
    /// The trailer has flags this version does not know.
    #[error(
        "unknown artifact flags {0:#x} (written by a newer wasmlet?); recompile it with `wasmlet compile`"
    )]
    Flags(u32),
    /// The payload does not match its checksum.
    #[error("checksum mismatch: the file is corrupt")]
    Checksum,
    /// wasmtime refused the payload.
    #[error("{0}")]
    Deserialize(String),
    /// A precompiled module was given where only the runtime's own cache
    /// or an explicit opt-in may supply native code.
    #[error(
        "this is a precompiled module (native code, trusted as is); run it only if you trust where it came from, with --allow-precompiled (LoadOptions::allow_precompiled)"
    )]
    NotAllowed,
}

/// A limit that ended an invocation.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize,
)]
pub enum LimitExceeded {
    /// Linear memory.
    #[error("memory limit of {} exceeded", Bytes(*.0))]
    Memory(u64),
    /// Table elements.
    #[error("table limit of {0} elements exceeded")]
    TableElements(u64),
    /// CPU time of the invocation's thread.
    #[error("CPU time limit of {} exceeded", humantime::format_duration(*.0))]
    CpuTime(Duration),
    /// Wall-clock timeout.
    #[error("wall-clock timeout of {} exceeded", humantime::format_duration(*.0))]
    Timeout(Duration),
    /// Fuel.
    #[error("fuel limit of {0} exceeded")]
    Fuel(u64),
    /// An invocation without a timeout of its own ran past its sandbox's
    /// longest call (`SandboxConfig::max_call`): the supervisor killed
    /// its worker.
    #[error(
        "sandbox call deadline of {} exceeded (the invocation had no timeout; the sandbox's max_call)",
        humantime::format_duration(*.0)
    )]
    SandboxMaxCall(Duration),
    /// The sandbox's memory cgroup: the kernel killed its worker.
    #[error("sandbox memory limit of {} exceeded", Bytes(*.0))]
    SandboxMemory(u64),
    /// Compiling the module took longer than its budget
    /// (`RuntimeConfig::compile.timeout`).
    #[error(
        "compile time budget of {} exceeded (compile.timeout, --compile-timeout)",
        humantime::format_duration(*.0)
    )]
    CompileTime(Duration),
    /// Compiling the module needed more memory than its budget
    /// (`RuntimeConfig::compile.max_memory`).
    #[error(
        "compile memory budget of {} exceeded (compile.max_memory, --compile-memory)",
        Bytes(*.0)
    )]
    CompileMemory(u64),
    /// A snapshot (compile, init and rewrite, in the CLI's bounded child)
    /// took longer than its budget: the compile timeout plus init's.
    #[error(
        "snapshot time budget of {} exceeded (--compile-timeout + --timeout)",
        humantime::format_duration(*.0)
    )]
    SnapshotTime(Duration),
    /// A snapshot needed more memory than its budget: the compile memory
    /// plus init's memory limit.
    #[error(
        "snapshot memory budget of {} exceeded (--compile-memory + --memory-limit)",
        Bytes(*.0)
    )]
    SnapshotMemory(u64),
    /// The pooling allocator has no free slot.
    #[error("instance pool of {0} slots is full")]
    PoolFull(u32),
}

/// Formats a byte count the way people write limits: `64 MiB`, `1.5 GiB`.
pub struct Bytes(pub u64);

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [&str; 5] = ["bytes", "KiB", "MiB", "GiB", "TiB"];
        let mut value = self.0 as f64;
        let mut unit = 0;
        while value >= 1024.0 && unit + 1 < UNITS.len() {
            value /= 1024.0;
            unit += 1;
        }
        if unit == 0 {
            write!(f, "{} bytes", self.0)
        } else if value.fract() == 0.0 {
            write!(f, "{value} {}", UNITS[unit])
        } else {
            write!(f, "{value:.1} {}", UNITS[unit])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limit_messages_name_limit_and_value() {
        assert_eq!(
            LimitExceeded::Memory(64 << 20).to_string(),
            "memory limit of 64 MiB exceeded"
        );
        assert_eq!(
            LimitExceeded::CpuTime(Duration::from_millis(250)).to_string(),
            "CPU time limit of 250ms exceeded"
        );
        assert_eq!(Bytes(1536).to_string(), "1.5 KiB");
        assert_eq!(Bytes(10).to_string(), "10 bytes");
    }

    #[test]
    fn unknown_imports_are_listed() {
        let e = Error::UnknownImports(vec!["env::a".into(), "env::b".into()]);
        assert!(e.to_string().starts_with("unknown imports: env::a, env::b"));
    }
}
