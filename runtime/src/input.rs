//! Reading a module file: only regular files, only up to a size, never
//! blocking on a FIFO or device, and not at all when the cache already
//! knows the file.

use crate::artifact::{self, Sniff};
use crate::error::{Bytes, Error};
use std::fs::{File, Metadata};
use std::io::Read;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// An open, checked module file.
pub(crate) struct InputFile {
    pub(crate) path: PathBuf,
    pub(crate) file: File,
    pub(crate) meta: Metadata,
}

impl InputFile {
    /// Opens `path` without blocking and checks that it is a regular file
    /// of at most `max_size` bytes.
    pub(crate) fn open(path: &Path, max_size: u64) -> Result<Self, Error> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(path)
            .map_err(|e| Error::Input(format!("{}: {e}", path.display())))?;
        Self::from_file(path.to_owned(), file, max_size)
    }

    /// Checks an already open file.
    pub(crate) fn from_file(path: PathBuf, file: File, max_size: u64) -> Result<Self, Error> {
        let meta = file
            .metadata()
            .map_err(|e| Error::Input(format!("{}: {e}", path.display())))?;
        if !meta.is_file() {
            let what = if meta.is_dir() {
                "a directory"
            } else {
                "not a regular file (a FIFO, socket or device)"
            };
            return Err(Error::Input(format!("{}: it is {what}", path.display())));
        }
        if meta.len() > max_size {
            return Err(Error::Input(format!(
                "{}: it is {}, more than the largest module accepted ({}; raise max_module_size)",
                path.display(),
                Bytes(meta.len()),
                Bytes(max_size)
            )));
        }
        Ok(InputFile { path, file, meta })
    }

    /// What the file's first bytes say it is.
    pub(crate) fn sniff(&self) -> Sniff {
        let mut head = [0u8; 8];
        let n = self.file.read_at(&mut head, 0).unwrap_or(0);
        artifact::sniff(&head[..n])
    }

    /// Reads the whole file (its size was checked when it was opened; a
    /// file that grew since is cut there and fails to parse).
    pub(crate) fn read(&self) -> Result<Vec<u8>, Error> {
        let mut bytes = Vec::with_capacity(self.meta.len() as usize);
        (&self.file)
            .take(self.meta.len())
            .read_to_end(&mut bytes)
            .map_err(|e| Error::Input(format!("{}: {e}", self.path.display())))?;
        Ok(bytes)
    }
}
