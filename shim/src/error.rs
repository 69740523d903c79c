//! The shim's errors, and the one place they become ttrpc status codes
//! (containerd turns those codes back into its own error kinds: a
//! `NotFound` from `Kill` on a finished task is how it learns the task
//! already ended).

use containerd_shim_protos::ttrpc;
use ttrpc::{Code, Status};

/// Everything a task request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No such task (or exec process), or the process already finished.
    #[error("{0}")]
    NotFound(String),
    /// A task with that id already exists.
    #[error("{0}")]
    AlreadyExists(String),
    /// The task is not in a state that allows the request.
    #[error("{0}")]
    FailedPrecondition(String),
    /// The request asks for something malformed.
    #[error("{0}")]
    InvalidArgument(String),
    /// wasmlet does not do this (exec, a terminal, pause, checkpoint).
    #[error("{0}")]
    Unimplemented(String),
    /// The bundle could not be read or used.
    #[error(transparent)]
    Bundle(#[from] wasmlet_oci::Error),
    /// Loading or running the module failed on the host side.
    #[error(transparent)]
    Runtime(#[from] wasmlet_runtime::Error),
    /// The sandbox (worker process, cgroup) failed.
    #[error(transparent)]
    Sandbox(#[from] wasmlet_sandbox::Error),
    /// Anything else.
    #[error("{0}")]
    Other(String),
}

/// Result of a task request.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The ttrpc code containerd expects for this error.
    pub fn code(&self) -> Code {
        match self {
            Error::NotFound(_) => Code::NOT_FOUND,
            Error::AlreadyExists(_) => Code::ALREADY_EXISTS,
            Error::FailedPrecondition(_) => Code::FAILED_PRECONDITION,
            Error::InvalidArgument(_) | Error::Bundle(wasmlet_oci::Error::Invalid(_)) => {
                Code::INVALID_ARGUMENT
            }
            Error::Unimplemented(_) => Code::UNIMPLEMENTED,
            Error::Bundle(_) | Error::Runtime(_) | Error::Sandbox(_) | Error::Other(_) => {
                Code::INTERNAL
            }
        }
    }
}

impl From<Error> for ttrpc::Error {
    fn from(e: Error) -> Self {
        let mut status = Status::new();
        status.set_code(e.code());
        status.set_message(format!("wasmlet: {e}"));
        ttrpc::Error::RpcStatus(status)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes() {
        let code = |e: Error| match ttrpc::Error::from(e) {
            ttrpc::Error::RpcStatus(s) => (s.code(), s.message().to_string()),
            other => panic!("{other:?}"),
        };
        assert_eq!(
            code(Error::NotFound("process already finished".into())),
            (Code::NOT_FOUND, "wasmlet: process already finished".into())
        );
        assert_eq!(
            code(Error::Unimplemented("x".into())).0,
            Code::UNIMPLEMENTED
        );
        assert_eq!(
            code(Error::Bundle(wasmlet_oci::Error::Invalid("x".into()))).0,
            Code::INVALID_ARGUMENT
        );
        assert_eq!(code(Error::Other("x".into())).0, Code::INTERNAL);
    }
}
