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
