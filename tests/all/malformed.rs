//! Bad input: a clear one-line error and a non-zero exit, never a panic.

use crate::helpers::*;

fn run_file(bytes: &[u8], name: &str) -> Run {
    let dir = tempdir();
    let p = dir.path().join(name);
    std::fs::write(&p, bytes).unwrap();
    let mut cmd = wasmlet();
    cmd.arg("run");
    if name.ends_with(".cwasm") {
        cmd.arg("--allow-precompiled");
    }
    run_cli(cmd.arg(&p))
}

#[test]
fn garbage_truncated_and_foreign_inputs() {
    let hello = std::fs::read(c_guest("hello")).unwrap();
    let cases: Vec<(Vec<u8>, &str, &str)> = vec![
        (b"".to_vec(), "empty.wasm", "not a WebAssembly module"),
        (
            vec![0xde, 0xad, 0xbe, 0xef, 0, 1, 2],
            "junk.wasm",
            "not a WebAssembly module",
        ),
        (
            b"hello, I am text".to_vec(),
            "text.wasm",
            "not a WebAssembly module",
        ),
        (
            hello[..hello.len() / 2].to_vec(),
            "half.wasm",
            "invalid module",
        ),
        (hello[..9].to_vec(), "nine.wasm", "invalid module"),
        (
            b"(module (func (export \"f\") (i32.add)))".to_vec(),
            "bad.wat",
            "invalid module",
        ),
        (b"(module (func".to_vec(), "unclosed.wat", "invalid module"),
        (b"\0asm\x0d\0\x01\0".to_vec(), "component.wasm", "component"),
        (
            std::fs::read("/bin/true").unwrap(),
            "wasmtime.cwasm",
            "wasmtime .cwasm",
        ),
        (
            b"WASMLET\x01\x01\0\0\0".to_vec(),
            "short.cwasm",
            "format version 1 is not supported",
        ),
    ];
    for (bytes, name, needle) in cases {
        let r = run_file(&bytes, name);
        assert_eq!(r.code, 1, "{name}: {}", r.stderr);
        r.assert_one_line_error(needle);
    }
}

#[test]
fn corrupt_cwasm_is_detected() {
    let dir = tempdir();
    let cwasm = dir.path().join("hello.cwasm");
    let r = run_cli(
        wasmlet()
            .arg("compile")
            .arg(c_guest("hello"))
            .arg("-o")
            .arg(&cwasm),
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let good = std::fs::read(&cwasm).unwrap();
    // Checked on every load, in O(1): the trailer and the exact length.
    let r = run_file(&good[..good.len() - 100], "cut.cwasm");
    r.assert_one_line_error("wasmtime .cwasm");
    let r = run_file(&[&good[..], b"x"].concat(), "long.cwasm");
    r.assert_one_line_error("truncated or extended");
    let mut engine = good.clone();
    let at = good.len() - 100;
    engine[at] ^= 0xff;
    let r = run_file(&engine, "engine.cwasm");
    r.assert_one_line_error("compiled for a different engine");
    let mut magic = good.clone();
    *magic.last_mut().unwrap() ^= 0xff;
    let r = run_file(&magic, "magic.cwasm");
    r.assert_one_line_error("wasmtime .cwasm");
    // Precompiled code is refused without the opt-in.
    let r = run_cli(wasmlet().arg("run").arg(&cwasm));
    assert_eq!(r.code, 1);
    r.assert_one_line_error("--allow-precompiled");
}

#[test]
fn missing_file_and_directory() {
    let r = run_cli(wasmlet().args(["run", "/no/such/module.wasm"]));
    assert_eq!(r.code, 1);
    r.assert_one_line_error("cannot read /no/such/module.wasm");
    let dir = tempdir();
    let r = run_cli(wasmlet().arg("run").arg(dir.path()));
    assert_eq!(r.code, 1);
    r.assert_one_line_error("is a directory");
    let r = run_cli(wasmlet().args(["compile", "/no/such/module.wasm"]));
    assert_eq!(r.code, 1);
    r.assert_one_line_error("cannot read");
}

#[test]
fn wrong_import_type_is_a_link_error() {
    let r = run_file(
        br#"(module (import "wasi_snapshot_preview1" "proc_exit" (func (param i64))) (func (export "_start")))"#,
        "badtype.wat",
    );
    assert_eq!(r.code, 1);
    r.assert_one_line_error("cannot link module");
}
