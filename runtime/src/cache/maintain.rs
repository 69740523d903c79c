//! Looking after a cache: what `wasmlet cache list|verify|clean|prune` do.

use super::{Cache, INDEX_DIR, trust};
use crate::artifact::{self, Trailer};
use crate::error::Error;
use std::path::PathBuf;
use std::time::SystemTime;

/// One entry of the cache.
#[derive(Debug, Clone)]
pub struct EntryInfo {
    /// Its path.
    pub path: PathBuf,
    /// Size in bytes.
    pub size: u64,
    /// When it was written or last used (refreshed at most hourly).
    pub modified: SystemTime,
}

/// What [`Cache::verify`] found.
#[derive(Debug, Default)]
pub struct VerifyReport {
    /// Entries whose checksum matched.
    pub good: usize,
    /// Entries that are corrupt or unusable, with the reason; removed when
    /// `verify` was asked to.
    pub bad: Vec<(PathBuf, String)>,
}

impl Cache {
    /// The entries, oldest first.
    pub fn entries(&self) -> Result<Vec<EntryInfo>, Error> {
        let rd = match std::fs::read_dir(&self.dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::io(&self.dir, e)),
        };
        let mut out = Vec::new();
        for e in rd {
            let e = e.map_err(|e| Error::io(&self.dir, e))?;
            if !e.file_name().to_string_lossy().ends_with(".cwasm") {
                continue;
            }
            let Ok(meta) = e.metadata() else { continue };
            out.push(EntryInfo {
                path: e.path(),
                size: meta.len(),
                modified: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            });
        }
        out.sort_by_key(|e| e.modified);
        Ok(out)
    }

    /// Checks every entry in full (trust, trailer and the payload's
    /// sha256), whatever engine wrote it; with `remove`, deletes bad ones.
    pub fn verify(&self, remove: bool) -> Result<VerifyReport, Error> {
        let mut report = VerifyReport::default();
        for entry in self.entries()? {
            let result = match trust::open_entry(&entry.path) {
                Ok(Some((file, meta))) => read_any_trailer(&file, meta.len())
                    .and_then(|t| artifact::verify_payload(&file, &t).map_err(|e| e.to_string())),
                Ok(None) => continue,
                Err(why) => Err(why),
            };
            match result {
                Ok(()) => report.good += 1,
                Err(why) => {
                    if remove {
                        let _ = std::fs::remove_file(&entry.path);
                    }
                    report.bad.push((entry.path, why));
                }
            }
        }
        Ok(report)
    }

    /// Removes every entry and the file index.
    pub fn clean(&self) -> Result<(), Error> {
        for dir in [self.dir.clone(), self.root.join(INDEX_DIR)] {
            match std::fs::remove_dir_all(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io(&dir, e)),
            }
        }
        Ok(())
    }

    /// Removes the least recently used entries until the entries take at
    /// most `max_size` bytes; returns the entries removed.
    pub fn prune(&self, max_size: u64) -> Result<Vec<EntryInfo>, Error> {
        let entries = self.entries()?;
        let mut total: u64 = entries.iter().map(|e| e.size).sum();
        let mut removed = Vec::new();
        for e in entries {
            if total <= max_size {
                break;
            }
            std::fs::remove_file(&e.path).map_err(|err| Error::io(&e.path, err))?;
            total -= e.size;
            removed.push(e);
        }
        super::remove_stale_temps(&self.dir);
        Ok(removed)
    }
}

/// The trailer of an entry, whichever engine wrote it.
fn read_any_trailer(file: &std::fs::File, len: u64) -> Result<Trailer, String> {
    use std::os::unix::fs::FileExt;
    if len < artifact::TRAILER_LEN as u64 {
        return Err("file is truncated".into());
    }
    let mut t = [0u8; artifact::TRAILER_LEN];
    file.read_exact_at(&mut t, len - artifact::TRAILER_LEN as u64)
        .map_err(|e| e.to_string())?;
    let engine: [u8; 32] = t[8..40].try_into().expect("32 bytes");
    artifact::read_trailer(file, len, &engine).map_err(|e| e.to_string())
}
