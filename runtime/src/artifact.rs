//! The on-disk format of a precompiled module: what `wasmlet compile` writes
//! and what the cache stores.
//!
//! ```text
//! offset  size  field
//!      0     8  magic  "WASMLET\x01"
//!      8     4  format version (u32 little-endian)
//!     12    32  engine fingerprint (see engine::engine_fingerprint)
//!     44     8  payload length (u64 little-endian)
//!     52    32  sha256 of the payload
//!     84     -  payload: wasmtime's serialized module
//! ```
//!
//! wasmtime's deserialization trusts its input (it maps machine code), so a
//! file is only handed to it after the magic, version, engine fingerprint,
//! length and checksum all match. A corrupt, truncated or foreign file is an
//! [`ArtifactError`], never undefined behaviour.

use crate::error::ArtifactError;
use sha2::{Digest, Sha256};

/// First bytes of every wasmlet artifact.
pub const MAGIC: &[u8; 8] = b"WASMLET\x01";
/// The format version this build reads and writes.
pub const FORMAT_VERSION: u32 = 1;
const HEADER_LEN: usize = 84;

/// Wraps a serialized module in an artifact header.
pub(crate) fn encode(engine_fingerprint: &[u8; 32], payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(engine_fingerprint);
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(&Sha256::digest(payload));
    out.extend_from_slice(payload);
    out
}

/// Whether `bytes` look like a wasmlet artifact (by magic only).
pub(crate) fn is_artifact(bytes: &[u8]) -> bool {
    bytes.starts_with(&MAGIC[..7])
}

/// Checks an artifact and returns its payload.
pub(crate) fn decode<'a>(
    bytes: &'a [u8],
    engine_fingerprint: &[u8; 32],
) -> Result<&'a [u8], ArtifactError> {
    if !is_artifact(bytes) {
        return Err(ArtifactError::Foreign(if bytes.starts_with(b"\x7fELF") {
            " (it looks like a wasmtime .cwasm; only files from `wasmlet compile` are accepted)"
        } else {
            ""
        }));
    }
    if bytes.len() < HEADER_LEN {
        return Err(ArtifactError::Truncated);
    }
    if bytes[7] != MAGIC[7] {
        return Err(ArtifactError::Foreign(" (unknown magic)"));
    }
    let version = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
    if version != FORMAT_VERSION {
        return Err(ArtifactError::Version(version, FORMAT_VERSION));
    }
    if &bytes[12..44] != engine_fingerprint {
        return Err(ArtifactError::EngineMismatch);
    }
    let len = u64::from_le_bytes(bytes[44..52].try_into().expect("8 bytes"));
    let payload = &bytes[HEADER_LEN..];
    if (payload.len() as u64) < len {
        return Err(ArtifactError::Truncated);
    }
    if payload.len() as u64 != len {
        return Err(ArtifactError::Checksum);
    }
    if Sha256::digest(payload).as_slice() != &bytes[52..84] {
        return Err(ArtifactError::Checksum);
    }
    Ok(payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FP: [u8; 32] = [7; 32];

    #[test]
    fn round_trip() {
        let a = encode(&FP, b"payload");
        assert_eq!(decode(&a, &FP).unwrap(), b"payload");
    }

    #[test]
    fn every_truncation_and_bit_flip_is_caught() {
        let a = encode(&FP, &[0xAB; 300]);
        for cut in 0..a.len() {
            assert!(decode(&a[..cut], &FP).is_err(), "cut at {cut} accepted");
        }
        for i in 0..a.len() {
            let mut b = a.clone();
            b[i] ^= 0x10;
            assert!(decode(&b, &FP).is_err(), "flip at {i} accepted");
        }
    }

    #[test]
    fn names_the_problem() {
        let a = encode(&FP, b"x");
        assert_eq!(decode(&a, &[8; 32]), Err(ArtifactError::EngineMismatch));
        assert!(matches!(
            decode(b"\x7fELF....", &FP),
            Err(ArtifactError::Foreign(m)) if m.contains("wasmtime")
        ));
        let mut v2 = a.clone();
        v2[8] = 2;
        assert_eq!(decode(&v2, &FP), Err(ArtifactError::Version(2, 1)));
    }
}
