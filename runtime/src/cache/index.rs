//! The file index: finds the content hash of an unchanged input file
//! without reading it, as build tools do.
//!
//! One small record per input file, named after its device and inode,
//! holding the size, mtime and ctime it had when it was hashed. A lookup
//! matches all five against `fstat` of the open file; anything different
//! (a rewrite with `write`, even one that puts size and mtime back, changes
//! the ctime) is a miss and the file is hashed again.
//!
//! What the index cannot see: writes through a shared `mmap` to a page that
//! is already dirty do not update mtime or ctime, so a process that can
//! write the file can make a later start run what the file held when it was
//! recorded (as `make` and git would also miss). It can never make code be
//! stored under the wrong key: whenever the input is read to be compiled,
//! its bytes are hashed again and the key follows them (see
//! `Runtime::load_file`). A file whose ctime is within
//! [`RACY_WINDOW`] of the moment it is recorded is not recorded: a second
//! write within the file system's timestamp granularity could otherwise go
//! unnoticed (git's "racy clean" problem).

use super::trust;
use std::fs::Metadata;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const MAGIC: &[u8; 8] = b"WLTIDX\x00\x01";
const RECORD_LEN: usize = 8 + 7 * 8 + 32;
/// Files changed more recently than this are not indexed (see module doc).
const RACY_WINDOW: Duration = Duration::from_secs(1);

fn name(meta: &Metadata) -> String {
    format!("{:x}-{:x}", meta.dev(), meta.ino())
}

fn stamp(meta: &Metadata) -> [u64; 7] {
    [
        meta.dev(),
        meta.ino(),
        meta.size(),
        meta.mtime() as u64,
        meta.mtime_nsec() as u64,
        meta.ctime() as u64,
        meta.ctime_nsec() as u64,
    ]
}

pub(super) fn lookup(dir: &Path, meta: &Metadata) -> Option<[u8; 32]> {
    let (mut file, m) = trust::open_entry(&dir.join(name(meta))).ok()??;
    if m.len() != RECORD_LEN as u64 {
        return None;
    }
    let mut rec = [0u8; RECORD_LEN];
    file.read_exact(&mut rec).ok()?;
    if &rec[..8] != MAGIC {
        return None;
    }
    let want = stamp(meta);
    for (i, w) in want.iter().enumerate() {
        let at = 8 + i * 8;
        if u64::from_le_bytes(rec[at..at + 8].try_into().ok()?) != *w {
            return None;
        }
    }
    rec[8 + 56..].try_into().ok()
}

pub(super) fn record(dir: &Path, meta: &Metadata, content: &[u8; 32]) {
    let changed = UNIX_EPOCH
        + Duration::new(
            meta.ctime().max(0) as u64,
            meta.ctime_nsec().clamp(0, 999_999_999) as u32,
        );
    if SystemTime::now()
        .duration_since(changed)
        .map_or(true, |age| age < RACY_WINDOW)
    {
        return;
    }
    let mut rec = Vec::with_capacity(RECORD_LEN);
    rec.extend_from_slice(MAGIC);
    for v in stamp(meta) {
        rec.extend_from_slice(&v.to_le_bytes());
    }
    rec.extend_from_slice(content);
    super::remove_stale_temps(dir);
    let Ok(mut tmp) = tempfile::Builder::new()
        .prefix(super::TEMP_PREFIX)
        .tempfile_in(dir)
    else {
        return;
    };
    use std::io::Write;
    if tmp.write_all(&rec).is_ok() {
        let _ = tmp.persist(dir.join(name(meta)));
    }
}
