//! The on-disk compilation cache: corruption and concurrent writers.

use crate::helpers::*;
use std::path::{Path, PathBuf};

fn entries(cache: &Path) -> Vec<PathBuf> {
    let dir = cache.join("modules-v1");
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .map(|d| d.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

fn run_hello(cache: &Path) -> Run {
    run_cli(
        wasmlet()
            .env("WASMLET_CACHE_DIR", cache)
            .arg("run")
            .arg(c_guest("hello")),
    )
}

#[test]
fn corrupt_entries_are_recompiled_and_replaced() {
    let cache = tempdir();
    assert_eq!(run_hello(cache.path()).code, 0);
    let files = entries(cache.path());
    assert_eq!(files.len(), 1, "{files:?}");
    let entry = &files[0];
    assert!(entry.extension().unwrap() == "cwasm");
    let good = std::fs::read(entry).unwrap();

    let corruptions: Vec<Vec<u8>> = vec![
        Vec::new(),
        good[..good.len() / 3].to_vec(),
        {
            let mut b = good.clone();
            let i = b.len() - 10;
            b[i] ^= 1;
            b
        },
        b"garbage".to_vec(),
        std::fs::read("/bin/true").unwrap(),
    ];
    for bad in corruptions {
        std::fs::write(entry, &bad).unwrap();
        let r = run_hello(cache.path());
        assert_eq!(r.code, 0, "{}", r.stderr);
        assert!(r.stdout.contains("hello from wasm"));
        assert!(r.stderr.contains("recompiling"), "{}", r.stderr);
        assert_eq!(std::fs::read(entry).unwrap(), good, "entry was rewritten");
    }
    // A clean hit says nothing.
    let r = run_hello(cache.path());
    assert_eq!(r.stderr, "this goes to stderr\n");
}

#[test]
fn concurrent_writers_agree() {
    let cache = tempdir();
    let out = tempdir();
    let children: Vec<_> = (0..6)
        .map(|i| {
            wasmlet()
                .env("WASMLET_CACHE_DIR", cache.path())
                .arg("compile")
                .arg(c_guest("fileops"))
                .arg("-o")
                .arg(out.path().join(format!("{i}.cwasm")))
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for c in children {
        let o = c.wait_with_output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let files = entries(cache.path());
    assert_eq!(files.len(), 1, "one entry, no temp files left: {files:?}");
    // Every output is a whole, identical artifact; the entry holds the same module.
    let first = std::fs::read(out.path().join("0.cwasm")).unwrap();
    for i in 1..6 {
        assert_eq!(
            std::fs::read(out.path().join(format!("{i}.cwasm"))).unwrap(),
            first
        );
    }
    let r = run_cli(
        wasmlet()
            .env("WASMLET_CACHE_DIR", cache.path())
            .arg("run")
            .arg(c_guest("fileops"))
            .args(["list", "."]),
    );
    assert_eq!(r.code, 2, "runs from the shared entry: {}", r.stderr);
    assert!(!r.stderr.contains("recompiling"));
}

#[test]
fn engine_settings_are_part_of_the_key() {
    let cache = tempdir();
    assert_eq!(run_hello(cache.path()).code, 0);
    let r = run_cli(
        wasmlet()
            .env("WASMLET_CACHE_DIR", cache.path())
            .args(["run", "--fuel", "100000000"])
            .arg(c_guest("hello")),
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(entries(cache.path()).len(), 2);
}

#[test]
fn cache_dir_flag_and_unwritable_cache() {
    let cache = tempdir();
    let r = run_cli(
        wasmlet()
            .arg("run")
            .arg("--cache-dir")
            .arg(cache.path())
            .arg(c_guest("hello")),
    );
    assert_eq!(r.code, 0);
    assert_eq!(entries(cache.path()).len(), 1);
    // A cache that cannot be written slows things down but is not an error.
    let file = cache.path().join("not-a-dir");
    std::fs::write(&file, "").unwrap();
    let r = run_cli(
        wasmlet()
            .arg("run")
            .arg("--cache-dir")
            .arg(&file)
            .arg(c_guest("hello")),
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stderr.contains("cannot write compilation cache"),
        "{}",
        r.stderr
    );
}
