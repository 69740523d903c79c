//! Preopened directories: the guest reaches what it was given and nothing
//! else.

use crate::helpers::*;

#[test]
fn read_and_write_through_dir() {
    let dir = tempdir();
    std::fs::write(dir.path().join("in.txt"), "input data").unwrap();
    let spec = format!("{}::/data", dir.path().display());
    let r = run_cli(
        wasmlet()
            .args(["run", "--dir", &spec])
            .arg(c_guest("fileops"))
            .args(["read", "/data/in.txt"]),
    );
    assert_eq!(
        (r.code, r.stdout.as_str()),
        (0, "input data"),
        "{}",
        r.stderr
    );
    let r = run_cli(
        wasmlet()
            .args(["run", "--dir", &spec])
            .arg(c_guest("fileops"))
            .args(["write", "/data/out.txt", "written by wasm"]),
    );
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert_eq!(
        std::fs::read_to_string(dir.path().join("out.txt")).unwrap(),
        "written by wasm"
    );
    // HOST alone maps to the same path in the guest.
    let host = dir.path().to_str().unwrap();
    let r = run_cli(
        wasmlet()
            .args(["run", "--dir", host])
            .arg(c_guest("fileops"))
            .args(["read", &format!("{host}/in.txt")]),
    );
    assert_eq!(r.stdout, "input data", "{}", r.stderr);
}

#[test]
fn escapes_are_refused() {
    let root = tempdir();
    let granted = root.path().join("granted");
    std::fs::create_dir(&granted).unwrap();
    std::fs::write(root.path().join("secret.txt"), "secret").unwrap();
    std::os::unix::fs::symlink("../secret.txt", granted.join("link")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", granted.join("abs-link")).unwrap();
    let spec = format!("{}::/data", granted.display());
    let attempts = [
        "/data/../secret.txt",
        "/data/link",
        "/data/abs-link",
        "/etc/passwd",
        "../secret.txt",
        "secret.txt",
    ];
    for path in attempts {
        let r = run_cli(
            wasmlet()
                .args(["run", "--dir", &spec])
                .arg(c_guest("fileops"))
                .args(["read", path]),
        );
        assert_eq!(r.code, 2, "{path} was readable: {:?}", r.stdout);
        assert!(r.stdout.starts_with("error:"), "{path}: {}", r.stdout);
        assert!(!r.stdout.contains("secret") || r.stdout.contains("secret.txt:"));
    }
    // Writing through an escaping path fails too and creates nothing.
    let r = run_cli(
        wasmlet()
            .args(["run", "--dir", &spec])
            .arg(c_guest("fileops"))
            .args(["write", "/data/../escaped.txt", "x"]),
    );
    assert_eq!(r.code, 2);
    assert!(!root.path().join("escaped.txt").exists());
    // Without --dir there is no file system at all.
    let r = run_cli(
        wasmlet()
            .arg("run")
            .arg(c_guest("fileops"))
            .args(["list", "/"]),
    );
    assert_eq!(r.code, 2, "{}", r.stdout);
}

#[test]
fn missing_dir_is_a_clear_error() {
    let r = run_cli(
        wasmlet()
            .args(["run", "--dir", "/no/such/dir"])
            .arg(c_guest("hello")),
    );
    assert_eq!(r.code, 1);
    r.assert_one_line_error("cannot open directory /no/such/dir");
}
