//! Entry points for `wasmlet-fuzz` (hidden from the docs): the parsers of
//! what a guest writes (a WAGI response).

use bytes::Bytes;

/// Parses `out` as a WAGI function's output. On success: the status is a
/// final one (200-999) and the body is exactly the bytes after the header
/// block. Returns whether it parsed. Panics on a finding.
pub fn wagi_output(out: &[u8]) -> bool {
    let bytes = Bytes::copy_from_slice(out);
    match crate::wagi::parse_output(bytes) {
        Ok(r) => {
            assert!(r.status.as_u16() >= 200, "status {}", r.status);
            assert!(out.ends_with(&r.body), "body is not the output's tail");
            assert!(r.body.len() < out.len(), "no header block was consumed");
            true
        }
        Err(e) => {
            assert!(!e.contains('\n'), "multi-line error: {e:?}");
            false
        }
    }
}
