//! Who may have written what the cache maps as native code.
//!
//! A directory or entry is trusted when it is owned by the effective user
//! and writable by nobody else; entries must also be regular files reached
//! without following a symbolic link. These are the same rules ssh applies
//! to `~/.ssh`: anyone who can write there could make us run their code.

use crate::error::Error;
use std::fs::{File, Metadata};
use std::io::ErrorKind;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Mode bits that let someone other than the owner write.
const WRITABLE_BY_OTHERS: u32 = 0o022;

fn euid() -> u32 {
    rustix::process::geteuid().as_raw()
}

/// Why `meta` (of `what` at `path`) is not trusted, if it is not.
fn distrust(path: &Path, meta: &Metadata, what: &str) -> Option<String> {
    let me = euid();
    if meta.uid() != me {
        return Some(format!(
            "{what} {} is owned by uid {}, not by the current user (uid {me}): \
             `chown` it or choose another --cache-dir",
            path.display(),
            meta.uid()
        ));
    }
    let mode = meta.permissions().mode();
    if mode & WRITABLE_BY_OTHERS != 0 {
        return Some(format!(
            "{what} {} is writable by group or others (mode {:o}): run `chmod go-w {}`",
            path.display(),
            mode & 0o7777,
            path.display()
        ));
    }
    None
}

/// Checks a cache directory, if it exists.
pub(super) fn check_dir(path: &Path) -> Result<(), Error> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        // Missing, or under something that is not a directory: nothing
        // will be read from there, and writes will warn.
        Err(e) if e.kind() == ErrorKind::NotFound || e.raw_os_error() == Some(libc::ENOTDIR) => {
            return Ok(());
        }
        Err(e) => return Err(Error::io(path, e)),
    };
    // The root may be a symlink (to another disk) made by this user or by
    // root; what it points to must pass the same checks.
    let meta = if meta.file_type().is_symlink() {
        if meta.uid() != euid() && meta.uid() != 0 {
            return Err(Error::Cache(format!(
                "cache directory {} is a symbolic link owned by uid {}: use a directory of your own as --cache-dir",
                path.display(),
                meta.uid()
            )));
        }
        std::fs::metadata(path).map_err(|e| Error::io(path, e))?
    } else {
        meta
    };
    if !meta.is_dir() {
        // Not a directory: nothing will be read from it, and writes will
        // fail with a warning (an unusable cache slows starts; it is not
        // an error).
        return Ok(());
    }
    match distrust(path, &meta, "cache directory") {
        Some(why) => Err(Error::Cache(why)),
        None => Ok(()),
    }
}

/// Creates `path` and its missing parents with mode 0700.
pub(super) fn create_private_dir(path: &Path) -> Result<(), Error> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(|e| Error::io(path, e))
}

/// Opens a cache file without following symlinks and without blocking
/// (a FIFO planted there must not hang us), then checks what it is.
/// `Ok(None)`: there is none. `Err`: there is one we must not use.
pub(super) fn open_entry(path: &Path) -> Result<Option<(File, Metadata)>, String> {
    let file = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
    {
        Ok(f) => f,
        // Missing, or the cache directory is not a directory: a miss (a
        // write will warn).
        Err(e) if e.kind() == ErrorKind::NotFound || e.raw_os_error() == Some(libc::ENOTDIR) => {
            return Ok(None);
        }
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Err(format!("{} is a symbolic link", path.display()));
        }
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let meta = file
        .metadata()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if !meta.is_file() {
        return Err(format!("{} is not a regular file", path.display()));
    }
    if let Some(why) = distrust(path, &meta, "cache entry") {
        return Err(why);
    }
    Ok(Some((file, meta)))
}
