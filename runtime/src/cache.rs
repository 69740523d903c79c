//! The content-addressed pre-compilation cache.
//!
//! Key: sha256 of the module's wasm bytes and the engine fingerprint, so a
//! new wasmlet, wasmtime or engine setting never sees an old entry. Entries
//! are artifacts (see [`crate::artifact`]), checked in full before use; a bad
//! one is reported, recompiled and replaced. Writes go to a temporary file
//! in the same directory and are renamed into place, so readers never see a
//! partial entry and several processes may fill the same key at once (the
//! last rename wins; both wrote the same bytes).

use crate::artifact;
use crate::error::{ArtifactError, Error};
use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Subdirectory of the cache root for this artifact format.
const LAYOUT_DIR: &str = "modules-v1";

/// A cache directory.
#[derive(Debug, Clone)]
pub struct Cache {
    dir: PathBuf,
}

/// What a lookup found.
pub(crate) enum Lookup {
    Hit(Vec<u8>),
    Miss,
    /// An entry was there but unusable; it will be overwritten.
    Bad(ArtifactError),
}

impl Cache {
    /// A cache rooted at `root` (created on first write).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Cache {
            dir: root.into().join(LAYOUT_DIR),
        }
    }

    /// The default root: `$WASMLET_CACHE_DIR`, else `$XDG_CACHE_HOME/wasmlet`,
    /// else `$HOME/.cache/wasmlet`.
    pub fn default_root() -> Option<PathBuf> {
        let var = |name| std::env::var_os(name).filter(|v| !v.is_empty());
        if let Some(dir) = var("WASMLET_CACHE_DIR") {
            return Some(dir.into());
        }
        if let Some(dir) = var("XDG_CACHE_HOME") {
            return Some(Path::new(&dir).join("wasmlet"));
        }
        var("HOME").map(|h| Path::new(&h).join(".cache").join("wasmlet"))
    }

    /// Directory holding the entries.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The entry name for `input` under `fingerprint` (the engine's, or a
    /// snapshot's options digest), with `ext` saying what kind of entry it is.
    pub(crate) fn key(input: &[u8], fingerprint: &[u8; 32], ext: &str) -> String {
        let mut h = Sha256::new();
        h.update(fingerprint);
        h.update(input);
        format!("{}.{ext}", hex(&h.finalize()))
    }

    fn path(&self, key: &str) -> PathBuf {
        self.dir.join(key)
    }

    /// Reads and checks the entry for `key`. Returns the payload on a hit.
    pub(crate) fn get(&self, key: &str, fingerprint: &[u8; 32]) -> Lookup {
        let bytes = match std::fs::read(self.path(key)) {
            Ok(b) => b,
            Err(_) => return Lookup::Miss,
        };
        match artifact::decode(&bytes, fingerprint) {
            Ok(payload) => Lookup::Hit(payload.to_vec()),
            Err(e) => Lookup::Bad(e),
        }
    }

    /// Stores an encoded artifact under `key`, atomically.
    pub(crate) fn put(&self, key: &str, artifact: &[u8]) -> Result<(), Error> {
        std::fs::create_dir_all(&self.dir).map_err(|e| Error::io(&self.dir, e))?;
        let mut tmp = tempfile::Builder::new()
            .prefix(".tmp-")
            .tempfile_in(&self.dir)
            .map_err(|e| Error::io(&self.dir, e))?;
        tmp.write_all(artifact)
            .and_then(|_| tmp.as_file().sync_data())
            .map_err(|e| Error::io(tmp.path(), e))?;
        let dest = self.path(key);
        tmp.persist(&dest).map_err(|e| Error::io(&dest, e.error))?;
        Ok(())
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
