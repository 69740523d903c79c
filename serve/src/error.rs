//! Typed errors: a manifest that cannot be read or checked, a function that
//! cannot be loaded, a listener that cannot be bound.

use std::path::PathBuf;

/// A manifest that cannot be read or is invalid. One line, naming the file,
/// the line and the field.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ManifestError {
    /// The file cannot be read.
    #[error("cannot read manifest {}: {error}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        error: String,
    },
    /// The file is not a valid manifest.
    #[error("{}{}: {}{}", path.display(), position(*line, *column), field(context), one_line(message))]
    Invalid {
        /// The file.
        path: PathBuf,
        /// 1-based line, 0 when the error is about the whole file.
        line: usize,
        /// 1-based column.
        column: usize,
        /// The field (`function.limits.memory`), when known.
        context: String,
        /// What is wrong.
        message: String,
    },
}

fn position(line: usize, column: usize) -> String {
    if line == 0 {
        String::new()
    } else {
        format!(":{line}:{column}")
    }
}

fn field(context: &str) -> String {
    if context.is_empty() {
        String::new()
    } else {
        format!("{context}: ")
    }
}

fn one_line(s: &str) -> String {
    s.trim().replace('\n', "; ")
}

/// Why a manifest's functions cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The manifest itself.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// A function cannot be loaded; the message names it and the manifest line.
    #[error("{}:{line}: function `{function}`: {message}", manifest.display())]
    Function {
        /// The manifest.
        manifest: PathBuf,
        /// Line of the function's table.
        line: usize,
        /// The function.
        function: String,
        /// Why.
        message: String,
    },
    /// The functions together need more than the host can give.
    #[error("{}: {message}", manifest.display())]
    Budget {
        /// What is needed and what the budget is.
        message: String,
        /// The manifest.
        manifest: PathBuf,
    },
    /// The runtime could not be built.
    #[error("cannot start the runtime: {0}")]
    Runtime(#[from] wasmlet_runtime::Error),
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Loading failed.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// A listener address is invalid or cannot be bound.
    #[error("cannot listen on {addr}: {error}")]
    Listen {
        /// The address.
        addr: String,
        /// Why.
        error: String,
    },
    /// The async runtime could not start.
    #[error("cannot start the server: {0}")]
    Start(String),
    /// At exit, usage lines could not be written (the disk failed or filled
    /// up, and stayed so through the drain deadline): they are lost.
    #[error("the usage log {} could not be written before exiting: {lines} line(s) lost", path.display())]
    UsageLost {
        /// The log.
        path: std::path::PathBuf,
        /// The lines not written.
        lines: u64,
    },
}
