//! Entry points for `wasmlet-fuzz` (hidden from the docs): the wire
//! protocol's decoders, as the worker and the supervisor run them on what
//! the other side sent. The supervisor's side matters most: it must survive
//! anything a compromised worker writes.

use crate::protocol::{Envelope, Request, Response, encode, recv};

/// Decodes `bytes` as the frames the worker reads (requests) and, separately,
/// as those the supervisor reads (replies); each message that decodes is
/// converted as its receiver converts it, then re-encoded, decoded and
/// encoded again, and the two encodings must be equal. Returns how many
/// frames decoded (requests, replies). Panics on a finding.
pub fn wire_roundtrip(bytes: &[u8]) -> (usize, usize) {
    let mut requests = 0;
    let mut r = bytes;
    while let Ok(Some(msg)) = recv::<Envelope<Request>>(&mut r) {
        requests += 1;
        let first = encode(&msg).expect("a decoded request encodes");
        let again: Envelope<Request> = recv(&mut first.as_slice())
            .expect("a re-encoded request decodes")
            .expect("a re-encoded request is a frame");
        assert_same(&encode(&again).expect("encodes"), &first, "request");
        if let Request::Invoke(wire) = again.body {
            let _ = wire.into_invocation();
        }
    }
    let mut replies = 0;
    let mut r = bytes;
    while let Ok(Some(msg)) = recv::<Envelope<Response>>(&mut r) {
        replies += 1;
        let first = encode(&msg).expect("a decoded reply encodes");
        let again: Envelope<Response> = recv(&mut first.as_slice())
            .expect("a re-encoded reply decodes")
            .expect("a re-encoded reply is a frame");
        assert_same(&encode(&again).expect("encodes"), &first, "reply");
        if let Response::Outcome(o) = again.body {
            let _ = o.status.into_status();
        }
    }
    (requests, replies)
}

/// Two encodings of one message carry the same JSON. Floats (a usage
/// record's GB-seconds) may differ in their last bit: serde_json's default
/// float parser is not exactly round-trip.
fn assert_same(a: &[u8], b: &[u8], what: &str) {
    let a: serde_json::Value = serde_json::from_slice(&a[4..]).expect("valid JSON");
    let b: serde_json::Value = serde_json::from_slice(&b[4..]).expect("valid JSON");
    assert!(same(&a, &b), "{what} round trip changed it: {a} != {b}");
}

fn same(a: &serde_json::Value, b: &serde_json::Value) -> bool {
    use serde_json::Value;
    match (a, b) {
        (Value::Number(x), Value::Number(y)) if x.is_f64() || y.is_f64() => {
            let (x, y) = (
                x.as_f64().unwrap_or(f64::NAN),
                y.as_f64().unwrap_or(f64::NAN),
            );
            x == y || (x - y).abs() <= f64::EPSILON * x.abs().max(y.abs()) * 4.0
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
        }
        _ => a == b,
    }
}

/// One frame holding `json` as its body, as `send` writes it.
pub fn frame(json: &str) -> Vec<u8> {
    let mut out = (json.len() as u32).to_le_bytes().to_vec();
    out.extend_from_slice(json.as_bytes());
    out
}
