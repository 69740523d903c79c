//! Why a snapshot was refused.

/// A snapshot that could not be made. Nothing is produced in any case.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The input is not a valid core module.
    #[error("invalid module: {0}")]
    Invalid(String),
    /// The module is over one of the compile caps.
    #[error(transparent)]
    TooLarge(#[from] crate::prescan::CapExceeded),
    /// The module uses something a snapshot cannot reproduce faithfully.
    #[error("cannot snapshot this module: {0}")]
    Unsupported(String),
    /// No init function to run.
    #[error("{0}")]
    NoInitFunc(String),
    /// Init called WASI without `--allow-wasi`.
    #[error(
        "init called the WASI import `{0}`; pass --allow-wasi to let init use WASI (its files and env are then only those given to the snapshot)"
    )]
    WasiDuringInit(String),
    /// The module imports things nobody provides.
    #[error(
        "unknown import{}: {} (pass --trap-unknown-imports to link them as functions that trap)",
        if .0.len() == 1 { "" } else { "s" },
        .0.join(", ")
    )]
    UnknownImports(Vec<String>),
    /// Init trapped.
    #[error("init trapped: {0}")]
    InitTrapped(String),
    /// Init exceeded a limit.
    #[error("init exceeded its {0}")]
    LimitExceeded(String),
    /// A preopened directory could not be opened.
    #[error("cannot set up init: {0}")]
    Setup(String),
    /// A bug: the snapshot came out wrong.
    #[error("internal error: {0}")]
    Internal(String),
}
