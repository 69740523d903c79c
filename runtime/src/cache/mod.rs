//! The pre-compilation cache: compiled modules kept between processes.
//!
//! ```text
//! <root>/                    0700, owned by the user running wasmlet
//!   modules-v2/<key>.cwasm   artifacts (see crate::artifact), mapped on load
//!   index-v1/<file id>       which content hash a .wasm file had (see index)
//! ```
//!
//! An entry is named after its [`Key`]: a digest of the engine fingerprint,
//! the options that shape the code (plain compile, or snapshot with its
//! options) and the sha256 of the input file's bytes. The key is also
//! recorded inside the entry, so a valid artifact copied or renamed under
//! another key is a miss, never the wrong module.
//!
//! Trust: entries are native code that is mapped executable, so the cache
//! is only used when the directories are owned by the current user and not
//! writable by group or others (otherwise [`Cache::open`] refuses, naming
//! the path and the fix), and each entry is opened with `O_NOFOLLOW` and
//! must be a regular file owned by the current user and writable by nobody
//! else (otherwise it is reported and treated as a miss, then replaced).
//! Entries are only created by writing a temporary file, `fsync`, and
//! `rename`, so readers never see a partial entry and several processes may
//! fill the same key at once (the last rename wins; they wrote the same
//! bytes).
//!
//! Integrity on load is O(1) (magic, version, engine, key, exact length; see
//! [`crate::artifact`]); the payload checksum is checked by [`Cache::verify`]
//! (`wasmlet cache verify`).

mod index;
mod maintain;
mod trust;

pub use maintain::{EntryInfo, VerifyReport};

use crate::artifact::{self, Trailer};
use crate::error::Error;
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// Subdirectory of the cache root holding the entries of this format.
const MODULES_DIR: &str = "modules-v2";
/// Subdirectory of the cache root holding the file index.
const INDEX_DIR: &str = "index-v1";
/// Temporary files start with this; ones older than [`STALE_TEMP_AGE`] are
/// left by killed writers and removed by the next write.
const TEMP_PREFIX: &str = ".tmp-";
/// Age after which a temporary file is taken for a killed writer's.
const STALE_TEMP_AGE: Duration = Duration::from_secs(3600);
/// An entry used again after this long gets its mtime refreshed, so that
/// `prune` removes the least recently used entries first.
const TOUCH_AFTER: Duration = Duration::from_secs(3600);

/// Names a cache entry: what it was compiled from, by which engine, how.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Key(pub(crate) [u8; 32]);

impl Key {
    /// The key of `content` (the sha256 of an input file) compiled by the
    /// engine with `fingerprint`, with `options` (a short tag and digest of
    /// whatever else shapes the code, such as snapshot options).
    pub(crate) fn new(fingerprint: &[u8; 32], options: &[u8], content: &[u8; 32]) -> Key {
        let mut h = Sha256::new();
        h.update(b"wasmlet-cache-key-v2\0");
        h.update(fingerprint);
        h.update((options.len() as u64).to_le_bytes());
        h.update(options);
        h.update(content);
        Key(h.finalize().into())
    }

    fn file_name(&self) -> String {
        format!("{}.cwasm", hex(&self.0))
    }
}

/// sha256 of an input's bytes: the content part of a [`Key`].
pub(crate) fn content_hash(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// A cache directory.
#[derive(Debug, Clone)]
pub struct Cache {
    root: PathBuf,
    dir: PathBuf,
}

/// What a lookup found.
pub(crate) enum Lookup {
    /// A usable entry, open, and its path.
    Hit(File, PathBuf, artifact::CodeKind),
    Miss,
    /// An entry was there but unusable (the message says why); it will be
    /// replaced.
    Bad(String),
}

impl Cache {
    /// Opens the cache rooted at `root`: checks that the directories that
    /// exist are trustworthy (owned by this user, not writable by others).
    /// Missing ones are created, mode 0700, on the first write.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, Error> {
        let root = root.into();
        let dir = root.join(MODULES_DIR);
        for d in [&root, &dir, &root.join(INDEX_DIR)] {
            trust::check_dir(d)?;
        }
        Ok(Cache { root, dir })
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

    /// The cache root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Directory holding the entries.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Path of the entry for `key` (which may not exist).
    pub fn entry_path(&self, key: &Key) -> PathBuf {
        self.dir.join(key.file_name())
    }

    /// Opens and checks the entry for `key`, in O(1): a hit is an open
    /// file ready for `Module::deserialize_open_file`.
    pub(crate) fn get(&self, key: &Key, engine: &[u8; 32]) -> Lookup {
        let path = self.entry_path(key);
        let (file, meta) = match trust::open_entry(&path) {
            Ok(Some(f)) => f,
            Ok(None) => return Lookup::Miss,
            Err(why) => return Lookup::Bad(why),
        };
        let kind = match artifact::read_trailer(&file, meta.len(), engine) {
            Ok(t) if t.key == key.0 => t.kind,
            Ok(_) => return Lookup::Bad("it was written for another key".into()),
            Err(e) => return Lookup::Bad(e.to_string()),
        };
        if let Ok(modified) = meta.modified()
            && modified.elapsed().is_ok_and(|age| age > TOUCH_AFTER)
        {
            let _ = file.set_modified(SystemTime::now());
        }
        Lookup::Hit(file, path, kind)
    }

    /// Stores `payload` (wasmtime's serialized module) compiled by `engine`
    /// under `key`, atomically; returns the entry's path.
    pub(crate) fn put(
        &self,
        key: &Key,
        engine: [u8; 32],
        kind: artifact::CodeKind,
        payload: &[u8],
    ) -> Result<PathBuf, Error> {
        self.create_dirs()?;
        remove_stale_temps(&self.dir);
        let mut tmp = tempfile::Builder::new()
            .prefix(TEMP_PREFIX)
            .tempfile_in(&self.dir)
            .map_err(|e| Error::io(&self.dir, e))?;
        let trailer = Trailer::new(engine, key.0, kind, payload).encode();
        tmp.write_all(payload)
            .and_then(|_| tmp.write_all(&trailer))
            .and_then(|_| tmp.as_file().sync_data())
            .map_err(|e| Error::io(tmp.path(), e))?;
        let dest = self.entry_path(key);
        tmp.persist(&dest).map_err(|e| Error::io(&dest, e.error))?;
        Ok(dest)
    }

    fn create_dirs(&self) -> Result<(), Error> {
        trust::create_private_dir(&self.dir)
    }

    fn index_dir(&self) -> PathBuf {
        self.root.join(INDEX_DIR)
    }

    /// The content hash recorded for the file `meta` describes, if the file
    /// has not changed since (device, inode, size, mtime and ctime match).
    pub(crate) fn indexed_hash(&self, meta: &std::fs::Metadata) -> Option<[u8; 32]> {
        index::lookup(&self.index_dir(), meta)
    }

    /// Records that the file `meta` describes has `content` as its hash.
    pub(crate) fn index(&self, meta: &std::fs::Metadata, content: &[u8; 32]) {
        if trust::create_private_dir(&self.index_dir()).is_ok() {
            index::record(&self.index_dir(), meta, content);
        }
    }
}

/// Removes temporary files older than [`STALE_TEMP_AGE`] from `dir`: what
/// writers killed between create and rename left behind.
pub(crate) fn remove_stale_temps(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let stale = e.file_name().to_string_lossy().starts_with(TEMP_PREFIX)
            && e.metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| t.elapsed().is_ok_and(|age| age > STALE_TEMP_AGE));
        if stale {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
