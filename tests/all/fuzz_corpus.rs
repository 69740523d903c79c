//! The fuzz targets' committed corpora (`fuzz/corpus/<target>/`), replayed
//! through the same oracles as ordinary tests, so every input a campaign
//! kept (and every crash it found, once fixed) is checked on every run.
//! Campaigns themselves run from `scripts/fuzz` (see docs/fuzzing.md).

use std::path::Path;

fn replay(target: &str, oracle: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut inputs: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    inputs.sort();
    assert!(!inputs.is_empty(), "empty corpus {}", dir.display());
    for input in inputs {
        let bytes = std::fs::read(&input).unwrap();
        let result = std::panic::catch_unwind(|| oracle(&bytes));
        assert!(result.is_ok(), "finding on {}", input.display());
    }
}

#[test]
fn fuzz_corpus_load_invoke() {
    replay("load_invoke", wasmlet_fuzz::load_invoke);
}

#[test]
fn fuzz_corpus_smith_invoke() {
    replay("smith_invoke", wasmlet_fuzz::smith_invoke);
}

#[test]
fn fuzz_corpus_snapshot_diff() {
    replay("snapshot_diff", wasmlet_fuzz::snapshot_diff);
}

#[test]
fn fuzz_corpus_artifact() {
    replay("artifact", wasmlet_fuzz::artifact);
}

#[test]
fn fuzz_corpus_protocol() {
    replay("protocol", wasmlet_fuzz::protocol);
}

#[test]
fn fuzz_corpus_cli_parsers() {
    replay("cli_parsers", wasmlet_fuzz::cli_parsers);
}

#[test]
fn fuzz_corpus_manifest() {
    replay("manifest", wasmlet_fuzz::manifest);
}

#[test]
fn fuzz_corpus_wagi() {
    replay("wagi", wasmlet_fuzz::wagi);
}

#[test]
fn fuzz_corpus_oci_spec() {
    replay("oci_spec", wasmlet_fuzz::oci_spec);
}

/// The protocol seeds are frames both sides really decode (so the replay
/// above exercises the decoders, not only their refusals).
#[test]
fn fuzz_protocol_seeds_decode() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/protocol");
    let read = |name: &str| std::fs::read(dir.join(name)).unwrap();
    let roundtrip = wasmlet_sandbox::fuzzing::wire_roundtrip;
    assert_eq!(roundtrip(&read("reply-outcome")).1, 1);
    assert_eq!(roundtrip(&read("reply-error")).1, 3);
    assert_eq!(roundtrip(&read("request-invoke")).0, 1);
    assert_eq!(roundtrip(&read("huge-length")), (0, 0));
}
