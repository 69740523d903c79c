//! The on-disk format of a precompiled module: what `wasmlet compile` writes
//! and what the cache stores.
//!
//! ```text
//! offset           size  field
//!      0              n  payload: wasmtime's serialized module (an ELF file)
//!      n            120  trailer:
//!      n +   0        4    format version (u32 little-endian)
//!      n +   4        4    flags (u32): bit 0 set = a component, clear = a
//!                          core module; other bits reserved, 0
//!      n +   8       32    engine fingerprint (see engine::engine_fingerprint)
//!      n +  40       32    key: what the entry was compiled from (input hash and options)
//!      n +  72        8    payload length n (u64 little-endian)
//!      n +  80       32    sha256 of the payload
//!      n + 112        8    magic "WASMLET\x02"
//! ```
//!
//! wasmtime's ELF stays at offset 0 so that `Module::deserialize_open_file`
//! can map the file itself: code and linear-memory images then come straight
//! from the page cache, copy-on-write, shared by every process that runs the
//! module, and a process touches only the pages its guest touches. (wasmtime
//! maps memory images from a file only when they are page-aligned within
//! it, which its ELF layout guarantees when the ELF starts the file.)
//!
//! What each check protects against (see also `docs/architecture.md`):
//! - magic, version and the exact length (`n + 120` is the file size): a
//!   foreign, older or truncated file is refused in O(1) before anything is
//!   mapped, so no mapping can run past the end of the file;
//! - flags: a component's code is deserialized as a component, a module's
//!   as a module (wasmtime refuses the other), decided before mapping;
//! - engine fingerprint: code compiled by another wasmlet version or with
//!   other engine settings (fuel metering) is refused with a clear message;
//! - key: a valid artifact renamed or copied under another entry's name is a
//!   cache miss, never the wrong module;
//! - the payload's sha256 is written with the entry and checked by
//!   [`verify_payload`] (`wasmlet cache verify`), not on every start: a bit
//!   flipped deep in the payload by the disk is left to that command (entries
//!   are only ever created by write-temp + fsync + rename, so a torn write is
//!   never visible). Trust does not come from these checks, which anyone can
//!   compute, but from where the file is (see [`crate::cache`]) or the
//!   caller's explicit opt-in (`LoadOptions::allow_precompiled`).

use crate::error::ArtifactError;
use sha2::{Digest, Sha256};
use std::fs::File;
use std::os::unix::fs::FileExt;

/// Last bytes of every wasmlet artifact.
pub const MAGIC: &[u8; 8] = b"WASMLET\x02";
/// The format version this build reads and writes.
pub const FORMAT_VERSION: u32 = 2;
/// Size of the trailer that follows the payload.
pub const TRAILER_LEN: usize = 120;
/// Trailer flag: the payload is a serialized component.
pub const FLAG_COMPONENT: u32 = 1;
/// The first bytes of the version-1 format (header in front of the payload).
const V1_MAGIC: &[u8; 8] = b"WASMLET\x01";

/// The fixed-size metadata at the end of an artifact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trailer {
    /// Format version.
    pub version: u32,
    /// What the payload is.
    pub kind: CodeKind,
    /// Fingerprint of the engine that compiled the payload.
    pub engine: [u8; 32],
    /// The cache key the payload was compiled for.
    pub key: [u8; 32],
    /// Length of the payload in bytes.
    pub payload_len: u64,
    /// sha256 of the payload.
    pub payload_sha256: [u8; 32],
}

/// What an artifact's payload is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodeKind {
    /// A core WebAssembly module.
    Module,
    /// A WebAssembly component.
    Component,
}

impl Trailer {
    /// The trailer for `payload`, a `kind` compiled by `engine` for `key`.
    pub(crate) fn new(engine: [u8; 32], key: [u8; 32], kind: CodeKind, payload: &[u8]) -> Self {
        Trailer {
            version: FORMAT_VERSION,
            kind,
            engine,
            key,
            payload_len: payload.len() as u64,
            payload_sha256: Sha256::digest(payload).into(),
        }
    }

    /// The trailer's bytes.
    pub(crate) fn encode(&self) -> [u8; TRAILER_LEN] {
        let mut out = [0; TRAILER_LEN];
        out[0..4].copy_from_slice(&self.version.to_le_bytes());
        if self.kind == CodeKind::Component {
            out[4..8].copy_from_slice(&FLAG_COMPONENT.to_le_bytes());
        }
        out[8..40].copy_from_slice(&self.engine);
        out[40..72].copy_from_slice(&self.key);
        out[72..80].copy_from_slice(&self.payload_len.to_le_bytes());
        out[80..112].copy_from_slice(&self.payload_sha256);
        out[112..120].copy_from_slice(MAGIC);
        out
    }

    /// Parses and checks a trailer read from the end of a file of
    /// `file_len` bytes: magic, version, engine and exact length.
    pub(crate) fn decode(
        bytes: &[u8; TRAILER_LEN],
        file_len: u64,
        engine: &[u8; 32],
    ) -> Result<Trailer, ArtifactError> {
        if &bytes[112..120] != MAGIC {
            return Err(ArtifactError::Foreign(""));
        }
        let version = u32::from_le_bytes(bytes[0..4].try_into().expect("4 bytes"));
        if version != FORMAT_VERSION {
            return Err(ArtifactError::Version(version, FORMAT_VERSION));
        }
        let flags = u32::from_le_bytes(bytes[4..8].try_into().expect("4 bytes"));
        if flags & !FLAG_COMPONENT != 0 {
            return Err(ArtifactError::Flags(flags));
        }
        let t = Trailer {
            version,
            kind: if flags & FLAG_COMPONENT != 0 {
                CodeKind::Component
            } else {
                CodeKind::Module
            },
            engine: bytes[8..40].try_into().expect("32 bytes"),
            key: bytes[40..72].try_into().expect("32 bytes"),
            payload_len: u64::from_le_bytes(bytes[72..80].try_into().expect("8 bytes")),
            payload_sha256: bytes[80..112].try_into().expect("32 bytes"),
        };
        if t.payload_len.checked_add(TRAILER_LEN as u64) != Some(file_len) {
            return Err(ArtifactError::Truncated);
        }
        if &t.engine != engine {
            return Err(ArtifactError::EngineMismatch);
        }
        Ok(t)
    }
}

/// Wraps a serialized module or component into an artifact (payload, then
/// trailer).
pub(crate) fn encode(engine: [u8; 32], key: [u8; 32], kind: CodeKind, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + TRAILER_LEN);
    out.extend_from_slice(payload);
    out.extend_from_slice(&Trailer::new(engine, key, kind, payload).encode());
    out
}

/// What the first bytes of an input say it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sniff {
    /// A precompiled module (an ELF file: a wasmlet artifact, or a wasmtime
    /// `.cwasm`, told apart by the trailer).
    Precompiled,
    /// wasmlet's first artifact format, no longer read.
    OldArtifact,
    /// Anything else: wasm, WAT, or garbage (the compiler decides).
    Source,
}

/// Classifies an input by its first bytes.
pub(crate) fn sniff(head: &[u8]) -> Sniff {
    if head.starts_with(b"\x7fELF") {
        Sniff::Precompiled
    } else if head.starts_with(&V1_MAGIC[..]) {
        Sniff::OldArtifact
    } else {
        Sniff::Source
    }
}

/// The error for an input whose trailer is not wasmlet's.
fn foreign_elf(e: ArtifactError) -> ArtifactError {
    match e {
        ArtifactError::Foreign(_) => ArtifactError::Foreign(
            " (no wasmlet trailer at its end: a wasmtime .cwasm, or a truncated or extended file; only files from `wasmlet compile` are accepted)",
        ),
        e => e,
    }
}

/// Checks an in-memory artifact and returns its trailer and payload.
pub(crate) fn decode<'a>(
    bytes: &'a [u8],
    engine: &[u8; 32],
) -> Result<(Trailer, &'a [u8]), ArtifactError> {
    if sniff(bytes) == Sniff::OldArtifact {
        return Err(ArtifactError::Version(1, FORMAT_VERSION));
    }
    if !bytes.starts_with(b"\x7fELF") {
        return Err(ArtifactError::Foreign(""));
    }
    let Some(split) = bytes.len().checked_sub(TRAILER_LEN) else {
        return Err(ArtifactError::Foreign(""));
    };
    let trailer: &[u8; TRAILER_LEN] = bytes[split..].try_into().expect("trailer length");
    let t = Trailer::decode(trailer, bytes.len() as u64, engine).map_err(foreign_elf)?;
    Ok((t, &bytes[..split]))
}

/// Reads and checks the trailer of an open artifact file of `file_len`
/// bytes, in O(1) (one `pread` of the trailer and the first bytes).
pub(crate) fn read_trailer(
    file: &File,
    file_len: u64,
    engine: &[u8; 32],
) -> Result<Trailer, ArtifactError> {
    let mut head = [0u8; 8];
    let n = read_at_most(file, &mut head, 0);
    match sniff(&head[..n]) {
        Sniff::OldArtifact => return Err(ArtifactError::Version(1, FORMAT_VERSION)),
        Sniff::Source => return Err(ArtifactError::Foreign("")),
        Sniff::Precompiled => {}
    }
    if file_len < TRAILER_LEN as u64 {
        return Err(foreign_elf(ArtifactError::Foreign("")));
    }
    let mut trailer = [0u8; TRAILER_LEN];
    file.read_exact_at(&mut trailer, file_len - TRAILER_LEN as u64)
        .map_err(|_| ArtifactError::Truncated)?;
    Trailer::decode(&trailer, file_len, engine).map_err(foreign_elf)
}

/// Reads up to `buf.len()` bytes at `offset`; returns how many.
fn read_at_most(file: &File, buf: &mut [u8], offset: u64) -> usize {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) | Err(_) => break,
            Ok(n) => done += n,
        }
    }
    done
}

/// Hashes the payload of an open artifact and compares it with the
/// trailer's checksum: the full check `wasmlet cache verify` makes.
pub fn verify_payload(file: &File, trailer: &Trailer) -> Result<(), ArtifactError> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut offset = 0u64;
    while offset < trailer.payload_len {
        let want = (trailer.payload_len - offset).min(buf.len() as u64) as usize;
        match file.read_at(&mut buf[..want], offset) {
            Ok(0) | Err(_) => return Err(ArtifactError::Truncated),
            Ok(n) => {
                h.update(&buf[..n]);
                offset += n as u64;
            }
        }
    }
    if h.finalize().as_slice() != trailer.payload_sha256 {
        return Err(ArtifactError::Checksum);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Seek, Write};

    const FP: [u8; 32] = [7; 32];
    const KEY: [u8; 32] = [9; 32];

    fn elf(len: usize) -> Vec<u8> {
        let mut p = b"\x7fELF".to_vec();
        p.resize(len, 0xAB);
        p
    }

    #[test]
    fn round_trip() {
        let a = encode(FP, KEY, CodeKind::Module, &elf(64));
        let (t, payload) = decode(&a, &FP).unwrap();
        assert_eq!(payload, elf(64));
        assert_eq!(t.key, KEY);
    }

    #[test]
    fn every_truncation_and_header_flip_is_caught_in_o1() {
        let a = encode(FP, KEY, CodeKind::Module, &elf(300));
        for cut in 0..a.len() {
            assert!(decode(&a[..cut], &FP).is_err(), "cut at {cut} accepted");
        }
        // Every trailer byte except the reserved flags, key and checksum
        // (checked elsewhere: key by the cache, checksum by verify) matters.
        let t = a.len() - TRAILER_LEN;
        for i in (0..4)
            .chain(t..t + 4)
            .chain(t + 8..t + 40)
            .chain(t + 72..t + 80)
            .chain(t + 112..a.len())
        {
            let mut b = a.clone();
            b[i] ^= 0x10;
            assert!(decode(&b, &FP).is_err(), "flip at {i} accepted");
        }
    }

    #[test]
    fn verify_finds_a_flip_deep_in_the_payload() {
        let a = encode(FP, KEY, CodeKind::Module, &elf(100_000));
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(&a).unwrap();
        let t = read_trailer(&f, a.len() as u64, &FP).unwrap();
        verify_payload(&f, &t).unwrap();
        f.seek(std::io::SeekFrom::Start(77_777)).unwrap();
        f.write_all(b"\0").unwrap();
        let t = read_trailer(&f, a.len() as u64, &FP).unwrap();
        assert_eq!(verify_payload(&f, &t), Err(ArtifactError::Checksum));
    }

    #[test]
    fn component_flag_round_trips_and_unknown_flags_are_refused() {
        let a = encode(FP, KEY, CodeKind::Component, &elf(64));
        assert_eq!(decode(&a, &FP).unwrap().0.kind, CodeKind::Component);
        let mut b = a.clone();
        let t = a.len() - TRAILER_LEN;
        b[t + 5] = 1;
        assert_eq!(decode(&b, &FP), Err(ArtifactError::Flags(0x101)));
    }

    #[test]
    fn names_the_problem() {
        let a = encode(FP, KEY, CodeKind::Module, &elf(64));
        assert_eq!(decode(&a, &[8; 32]), Err(ArtifactError::EngineMismatch));
        assert!(matches!(
            decode(&elf(500), &FP),
            Err(ArtifactError::Foreign(m)) if m.contains("wasmtime .cwasm")
        ));
        let mut v1 = b"WASMLET\x01".to_vec();
        v1.resize(200, 0);
        assert_eq!(decode(&v1, &FP), Err(ArtifactError::Version(1, 2)));
        let mut v3 = a.clone();
        let t = a.len() - TRAILER_LEN;
        v3[t] = 3;
        assert_eq!(decode(&v3, &FP), Err(ArtifactError::Version(3, 2)));
    }
}
