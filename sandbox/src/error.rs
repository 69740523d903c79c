//! The sandbox crate's errors: each is one line naming what is wrong.

use crate::cgroup::CgroupError;

/// Everything that can go wrong setting up or talking to a sandbox.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The settings are unusable (checked before anything starts).
    #[error("invalid sandbox configuration: {0}")]
    Config(String),
    /// The sandbox's cgroups could not be created.
    #[error("cannot create sandbox cgroups: {0}")]
    Cgroup(#[from] CgroupError),
    /// A worker could not be started, or failed outside an invocation.
    #[error("sandbox: {0}")]
    Worker(String),
    /// The executor refused something (a bad module, a bad invocation).
    #[error(transparent)]
    Runtime(#[from] wasmlet_runtime::Error),
}
