//! The crate's error type.

use std::path::PathBuf;

/// What can go wrong reading a bundle or writing an image.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// `config.json` is not a runtime spec we can use.
    #[error("bundle config.json: {0}")]
    Spec(String),
    /// The spec names something invalid (module path, cgroup path, ...).
    #[error("{0}")]
    Invalid(String),
}

pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.into();
    move |source| Error::Io { path, source }
}
