//! The on-disk compilation cache: corruption and concurrent writers.

use crate::helpers::*;
use std::path::{Path, PathBuf};

fn entries(cache: &Path) -> Vec<PathBuf> {
    let dir = cache.join("modules-v2");
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
            // The engine fingerprint in the trailer.
            let mut b = good.clone();
            let i = b.len() - 120 + 20;
            b[i] ^= 1;
            b
        },
        {
            // The trailer's magic.
            let mut b = good.clone();
            let i = b.len() - 3;
            b[i] ^= 1;
            b
        },
        {
            // One byte appended: the length no longer matches.
            let mut b = good.clone();
            b.push(0);
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
    // The cause is said once (it used to be repeated: "...: X: X").
    assert_eq!(r.stderr.matches("os error").count(), 1, "{}", r.stderr);
}

fn run_wat(cache: &Path, wat: &Path) -> Run {
    run_cli(
        wasmlet()
            .env("WASMLET_CACHE_DIR", cache)
            .arg("run")
            .arg(wat),
    )
}

const SAYS_A: &str = r#"(module
  (import "wasi_snapshot_preview1" "fd_write" (func $w (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 8) "\10\00\00\00\02\00\00\00")
  (data (i32.const 16) "A\n")
  (func (export "_start") (drop (call $w (i32.const 1) (i32.const 8) (i32.const 1) (i32.const 32)))))"#;

/// Two modules, A and B, each run once so the cache holds both; returns
/// the entry paths of A and B.
fn two_entries(cache: &Path, dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let a = wat_file(dir, "a.wat", SAYS_A);
    assert_eq!(run_wat(cache, &a).stdout, "A\n");
    let only_a = entries(cache);
    let b = wat_file(dir, "b.wat", &SAYS_A.replace("\"A\\n\"", "\"B\\n\""));
    assert_eq!(run_wat(cache, &b).stdout, "B\n");
    let all = entries(cache);
    let entry_b = all.iter().find(|e| !only_a.contains(e)).unwrap().clone();
    (a, only_a[0].clone(), entry_b)
}

#[test]
fn a_valid_artifact_swapped_in_under_another_key_never_runs() {
    let cache = tempdir();
    let dir = tempdir();
    let (a, entry_a, entry_b) = two_entries(cache.path(), dir.path());
    std::fs::copy(&entry_b, &entry_a).unwrap();
    let r = run_wat(cache.path(), &a);
    assert_eq!(r.stdout, "A\n", "A's code runs, not B's");
    assert!(r.stderr.contains("written for another key"), "{}", r.stderr);
    assert_eq!(r.stderr.lines().count(), 1, "{}", r.stderr);
}

#[test]
fn a_symlinked_entry_is_not_followed() {
    let cache = tempdir();
    let dir = tempdir();
    let (a, entry_a, entry_b) = two_entries(cache.path(), dir.path());
    for target in [entry_b.as_path(), Path::new("/dev/zero")] {
        std::fs::remove_file(&entry_a).unwrap();
        std::os::unix::fs::symlink(target, &entry_a).unwrap();
        let r = run_wat(cache.path(), &a);
        assert_eq!(r.stdout, "A\n");
        assert!(r.stderr.contains("is a symbolic link"), "{}", r.stderr);
        assert!(!std::fs::symlink_metadata(&entry_a).unwrap().is_symlink());
    }
}

#[test]
fn a_fifo_as_cache_entry_does_not_block() {
    let cache = tempdir();
    let dir = tempdir();
    let (a, entry_a, _) = two_entries(cache.path(), dir.path());
    std::fs::remove_file(&entry_a).unwrap();
    mkfifo(&entry_a);
    let r = run_wat(cache.path(), &a);
    assert_eq!(r.stdout, "A\n");
    assert!(r.stderr.contains("not a regular file"), "{}", r.stderr);
}

#[test]
fn entries_others_could_write_are_not_used() {
    use std::os::unix::fs::PermissionsExt;
    let cache = tempdir();
    let dir = tempdir();
    let (a, entry_a, _) = two_entries(cache.path(), dir.path());
    std::fs::set_permissions(&entry_a, std::fs::Permissions::from_mode(0o666)).unwrap();
    let r = run_wat(cache.path(), &a);
    assert_eq!(r.stdout, "A\n");
    assert!(
        r.stderr.contains("writable by group or others"),
        "{}",
        r.stderr
    );
    assert_eq!(r.stderr.lines().count(), 1, "{}", r.stderr);
    // Replaced by a private entry: the next run is quiet.
    assert_eq!(run_wat(cache.path(), &a).stderr, "");
    if is_root() {
        std::os::unix::fs::chown(&entry_a, Some(65534), Some(65534)).unwrap();
        let r = run_wat(cache.path(), &a);
        assert_eq!(r.stdout, "A\n");
        assert!(r.stderr.contains("owned by uid 65534"), "{}", r.stderr);
    }
}

#[test]
fn an_untrusted_cache_directory_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let cache = tempdir();
    let dir = tempdir();
    let a = wat_file(dir.path(), "a.wat", SAYS_A);
    // Created private.
    assert_eq!(run_wat(cache.path(), &a).code, 0);
    let mode = std::fs::metadata(cache.path().join("modules-v2"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o700);
    for d in [cache.path().to_owned(), cache.path().join("modules-v2")] {
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o777)).unwrap();
        let r = run_wat(cache.path(), &a);
        assert_eq!(r.code, 1);
        r.assert_one_line_error("chmod go-w");
        assert!(r.stderr.contains(d.to_str().unwrap()), "{}", r.stderr);
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700)).unwrap();
    }
    if is_root() {
        std::os::unix::fs::chown(cache.path(), Some(65534), None).unwrap();
        let r = run_wat(cache.path(), &a);
        assert_eq!(r.code, 1);
        r.assert_one_line_error("owned by uid 65534");
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

#[test]
fn cache_verify_list_prune_and_clean() {
    let cache = tempdir();
    let dir = tempdir();
    let (_, entry_a, _) = two_entries(cache.path(), dir.path());
    let cmd = |args: &[&str]| {
        run_cli(
            wasmlet()
                .arg("cache")
                .args(args)
                .arg("--cache-dir")
                .arg(cache.path()),
        )
    };
    let r = cmd(&["verify"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("2 entries good, 0 bad"), "{}", r.stdout);
    // A bit flipped deep in a payload: loads do not notice (they check the
    // trailer in O(1)), verify does.
    let mut bytes = std::fs::read(&entry_a).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::write(&entry_a, &bytes).unwrap();
    let r = cmd(&["verify"]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("checksum mismatch"), "{}", r.stderr);
    assert!(r.stderr.contains(entry_a.to_str().unwrap()), "{}", r.stderr);
    let r = cmd(&["verify", "--remove"]);
    assert_eq!(r.code, 1);
    assert!(!entry_a.exists());
    assert_eq!(cmd(&["verify"]).code, 0);
    let r = cmd(&["list"]);
    assert!(r.stdout.contains("1 entries"), "{}", r.stdout);
    let r = cmd(&["prune", "--max-size", "0"]);
    assert!(r.stdout.contains("removed 1 entries"), "{}", r.stdout);
    assert!(entries(cache.path()).is_empty());
    let r = cmd(&["clean"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
}
