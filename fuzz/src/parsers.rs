//! Oracles for wasmlet's parsers of untrusted text and bytes: the sandbox
//! wire protocol (both directions), the CLI's flag values, the serve
//! manifest, a WAGI function's output, an OCI runtime spec (what
//! containerd hands the shim) and a usage log read back as a bill. Each
//! panics on a finding.

use std::path::{Component, Path};

/// The CLI's flag parsers (`src/cli/parse.rs`, a module of the `wasmlet`
/// binary, compiled here as it is there).
#[allow(dead_code)]
#[path = "../../src/cli/parse.rs"]
mod cli_parse;

/// Text of a fuzz input, if it is UTF-8.
fn text(data: &[u8]) -> Option<&str> {
    std::str::from_utf8(data).ok()
}

/// The sandbox protocol: frames as the worker and as the supervisor read
/// them (see `wasmlet_sandbox::fuzzing::wire_roundtrip`).
pub fn protocol(data: &[u8]) {
    wasmlet_sandbox::fuzzing::wire_roundtrip(data);
}

/// A flag value for one of the CLI's parsers (the first byte picks it):
/// refused with a one-line message, or accepted with a value that keeps the
/// parser's promises.
pub fn cli_parsers(data: &[u8]) {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    let Some(s) = text(rest) else {
        return;
    };
    // One line, but for line breaks of the value itself, which the message
    // quotes.
    let one_line = |r: Result<(), String>| {
        if let Err(e) = r {
            let breaks = |t: &str| t.matches('\n').count();
            assert!(breaks(&e) <= breaks(s) && !e.is_empty(), "error {e:?}");
        }
    };
    match which % 9 {
        0 => one_line(cli_parse::size(s).map(|n| {
            assert_eq!(cli_parse::size(&n.to_string()), Ok(n), "{s:?}");
        })),
        1 => one_line(cli_parse::limit_size(s).map(|n| assert!(n > 0))),
        2 => one_line(cli_parse::duration(s).map(|d| {
            assert!(
                !d.is_zero() && d <= cli_parse::MAX_DURATION,
                "{s:?} gave {d:?}"
            );
            let shown = humantime::format_duration(d).to_string();
            assert_eq!(
                cli_parse::duration(&shown),
                Ok(d),
                "{s:?} shown as {shown:?}"
            );
        })),
        3 => one_line(cli_parse::compile_cap(s).map(|_| ())),
        4 => one_line(cli_parse::sandbox_cpus(s).map(|c| {
            assert!(c.is_finite() && c > 0.0, "{s:?} gave {c}");
        })),
        5 => one_line(cli_parse::sandbox_pids(s).map(|_| ())),
        6 => one_line(cli_parse::sandbox_memory(s).map(|_| ())),
        7 => one_line(cli_parse::dir(s).map(|p| {
            assert!(!p.host.as_os_str().is_empty() && !p.guest.is_empty());
        })),
        _ => {
            // `--invoke` arguments against a signature the input picks.
            use wasmtime::ValType;
            let mut words = s.split(' ');
            let sig = words.next().unwrap_or("");
            let types: Vec<ValType> = sig
                .bytes()
                .map(|b| match b % 4 {
                    0 => ValType::I32,
                    1 => ValType::I64,
                    2 => ValType::F32,
                    _ => ValType::F64,
                })
                .collect();
            let args: Vec<String> = words.map(str::to_string).collect();
            match cli_parse::invoke_args("f", &types, &args) {
                Ok(vals) => {
                    assert_eq!(vals.len(), types.len());
                    for (v, t) in vals.iter().zip(&types) {
                        let ok = matches!(
                            (v, t),
                            (wasmtime::Val::I32(_), ValType::I32)
                                | (wasmtime::Val::I64(_), ValType::I64)
                                | (wasmtime::Val::F32(_), ValType::F32)
                                | (wasmtime::Val::F64(_), ValType::F64)
                        );
                        assert!(ok, "{v:?} for {t}");
                    }
                }
                Err(e) => {
                    let e = format!("{e:#}");
                    assert!(e.matches('\n').count() <= s.matches('\n').count(), "{e}");
                }
            }
        }
    }
}

/// A `wasmlet.toml`: refused with one line naming the file, or accepted.
pub fn manifest(data: &[u8]) {
    let Some(s) = text(data) else {
        return;
    };
    let path = Path::new("/nonexistent-wasmlet-fuzz/wasmlet.toml");
    if let Err(e) = wasmlet_serve::Manifest::parse(path, s) {
        let shown = e.to_string();
        assert!(!shown.contains('\n'), "multi-line error: {shown:?}");
        assert!(
            shown.contains("wasmlet.toml"),
            "error names no file: {shown:?}"
        );
    }
}

/// A WAGI function's output (see `wasmlet_serve::fuzzing::wagi_output`).
pub fn wagi(data: &[u8]) {
    wasmlet_serve::fuzzing::wagi_output(data);
}

/// A usage log (see `wasmlet_serve::fuzzing::usage_bill`).
pub fn usage_bill(data: &[u8]) {
    wasmlet_serve::fuzzing::usage_bill(data);
}

/// An OCI runtime spec (`config.json`, written by containerd or CRI from
/// an image the user chose): every accessor the shim calls answers, and a
/// cgroup path, whatever the spec says, stays below the hierarchy root.
pub fn oci_spec(data: &[u8]) {
    let Some(s) = text(data) else {
        return;
    };
    check_cgroup_path(s);
    let Ok(spec) = wasmlet_oci::bundle::Spec::parse(s) else {
        return;
    };
    if let Ok(e) = spec.entrypoint() {
        assert!(e.module.starts_with('/'), "{e:?}");
        assert!(e.export.as_ref().is_none_or(|x| !x.is_empty()));
    }
    let _ = (spec.args(), spec.env(), spec.cwd(), spec.is_pod_sandbox());
    let _ = spec.pod_sandbox_id();
    let r = spec.resources();
    if let Some(c) = r.cpus() {
        assert!(c.is_finite() && c > 0.0, "cpus {c}");
    }
    let _ = (
        r.memory_limit(),
        r.cpu_shares(),
        r.pids_limit(),
        r.has_limits(),
    );
    if let Ok(Some(p)) = spec.cgroup_path() {
        assert_plain(&p);
    }
}

fn check_cgroup_path(s: &str) {
    if let Ok(p) = wasmlet_oci::bundle::cgroup_path(s) {
        assert_plain(&p);
    }
}

/// A relative path of plain names: joined to a hierarchy root, it stays
/// inside it.
fn assert_plain(p: &str) {
    assert!(!p.is_empty() && !p.starts_with('/'), "{p:?}");
    assert!(
        Path::new(p)
            .components()
            .all(|c| matches!(c, Component::Normal(_))),
        "cgroup path {p:?} leaves its root"
    );
    assert!(!p.contains('\0'), "{p:?}");
}
