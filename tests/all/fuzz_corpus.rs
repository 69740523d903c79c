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

#[test]
fn fuzz_corpus_usage_bill() {
    replay("usage_bill", wasmlet_fuzz::usage_bill);
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

/// A mutation smoke run on stable Rust, for when cargo-fuzz (nightly) is not
/// at hand: each parser target's corpus entries, mutated at random (bit
/// flips, byte insertions and deletions, splices of two entries), through
/// its oracle for `WASMLET_FUZZ_SMOKE_SECS` seconds (default 10) per
/// target. Not coverage-guided: it finds shallow panics only. Ignored in CI;
/// `cargo test --release --test all -- --ignored fuzz_smoke`.
#[test]
#[ignore]
fn fuzz_smoke_parsers() {
    let secs: u64 = std::env::var("WASMLET_FUZZ_SMOKE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    type Oracle = fn(&[u8]);
    let targets: [(&str, Oracle); 6] = [
        ("protocol", wasmlet_fuzz::protocol),
        ("cli_parsers", wasmlet_fuzz::cli_parsers),
        ("manifest", wasmlet_fuzz::manifest),
        ("wagi", wasmlet_fuzz::wagi),
        ("oci_spec", wasmlet_fuzz::oci_spec),
        ("usage_bill", wasmlet_fuzz::usage_bill),
    ];
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for (target, oracle) in targets {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fuzz/corpus")
            .join(target);
        let corpus: Vec<Vec<u8>> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| std::fs::read(e.unwrap().path()).unwrap())
            .collect();
        let end = std::time::Instant::now() + std::time::Duration::from_secs(secs);
        let mut runs = 0u64;
        while std::time::Instant::now() < end {
            let mut input = corpus[next() as usize % corpus.len()].clone();
            for _ in 0..1 + next() % 4 {
                let at = |n: u64, len: usize| (n as usize) % (len + 1);
                match next() % 5 {
                    0 if !input.is_empty() => {
                        let i = at(next(), input.len() - 1);
                        input[i] ^= 1 << (next() % 8);
                    }
                    1 => {
                        let i = at(next(), input.len());
                        input.insert(i, next() as u8);
                    }
                    2 if !input.is_empty() => {
                        let i = at(next(), input.len() - 1);
                        input.remove(i);
                    }
                    3 => {
                        let other = &corpus[next() as usize % corpus.len()];
                        let i = at(next(), input.len());
                        let j = at(next(), other.len());
                        input.truncate(i);
                        input.extend_from_slice(&other[j..]);
                    }
                    _ => {
                        // Interesting bytes for text formats.
                        let i = at(next(), input.len());
                        let special = b"\"\\:=\n\r\0/.-[]{}#9";
                        let b = special[next() as usize % special.len()];
                        input.insert(i, b);
                    }
                }
            }
            let result = std::panic::catch_unwind(|| oracle(&input));
            assert!(
                result.is_ok(),
                "{target}: finding on input {:?}",
                String::from_utf8_lossy(&input)
            );
            runs += 1;
        }
        eprintln!("{target}: {runs} inputs, no finding");
    }
}
