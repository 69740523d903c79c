//! First pass: validate the input, refuse what a snapshot cannot reproduce
//! faithfully, and pick the init function. (wizer refuses more itself when
//! instrumenting: instructions that mutate tables or drop segments, and
//! mutable reference-typed globals, whose state it cannot capture.)

use crate::error::SnapshotError;
use crate::options::{DEFAULT_INIT_FUNCS, SnapshotOptions};
use wasmparser::{Encoding, ExternalKind, Parser, Payload, TypeRef, Validator, WasmFeatures};

/// Checks `wasm` and returns the init function to run.
pub(crate) fn check(wasm: &[u8], opts: &SnapshotOptions) -> Result<String, SnapshotError> {
    if !wasm.starts_with(b"\0asm") {
        return Err(SnapshotError::Invalid("not a wasm binary".into()));
    }
    crate::prescan::prescan(wasm, &opts.caps)?;
    Validator::new_with_features(WasmFeatures::all())
        .validate_all(wasm)
        .map_err(|e| SnapshotError::Invalid(e.to_string()))?;
    for payload in Parser::new(0).parse_all(wasm) {
        match payload.map_err(|e| SnapshotError::Invalid(e.to_string()))? {
            Payload::Version {
                encoding: Encoding::Component,
                ..
            } => {
                return Err(SnapshotError::Unsupported(
                    "it is a component; snapshot the core module inside it".into(),
                ));
            }
            Payload::ImportSection(imports) => {
                for imp in imports.into_imports() {
                    let imp = imp.map_err(|e| SnapshotError::Invalid(e.to_string()))?;
                    let what = match imp.ty {
                        TypeRef::Memory(_) => "memory",
                        TypeRef::Table(_) => "table",
                        TypeRef::Global(_) => "global",
                        _ => continue,
                    };
                    return Err(SnapshotError::Unsupported(format!(
                        "it imports a {what} (`{}::{}`), whose state lives outside the module",
                        imp.module, imp.name
                    )));
                }
            }
            Payload::MemorySection(memories) => {
                for m in memories {
                    let m = m.map_err(|e| SnapshotError::Invalid(e.to_string()))?;
                    if m.shared {
                        return Err(SnapshotError::Unsupported(
                            "it has a shared memory (threads), whose state other threads may change".into(),
                        ));
                    }
                }
            }
            _ => {}
        }
    }
    match find_init_func(wasm, opts)? {
        Some(name) => Ok(name),
        None => Err(SnapshotError::NoInitFunc(match &opts.init_func {
            Some(name) => format!("the module exports no function `{name}` to initialize with"),
            None => format!(
                "the module exports no init function (looked for {}); name one with --init-func",
                DEFAULT_INIT_FUNCS.map(|n| format!("`{n}`")).join(", ")
            ),
        })),
    }
}

/// The init function `opts` selects, if the module exports it as a function
/// of type `[] -> []`.
pub(crate) fn find_init_func(
    wasm: &[u8],
    opts: &SnapshotOptions,
) -> Result<Option<String>, SnapshotError> {
    let mut funcs = Vec::new();
    for payload in Parser::new(0).parse_all(wasm) {
        if let Payload::ExportSection(exports) =
            payload.map_err(|e| SnapshotError::Invalid(e.to_string()))?
        {
            for e in exports {
                let e = e.map_err(|e| SnapshotError::Invalid(e.to_string()))?;
                if e.kind == ExternalKind::Func {
                    funcs.push(e.name.to_string());
                }
            }
        }
    }
    let candidates: Vec<&str> = match &opts.init_func {
        Some(name) => vec![name.as_str()],
        None => DEFAULT_INIT_FUNCS.to_vec(),
    };
    Ok(candidates
        .into_iter()
        .find(|c| funcs.iter().any(|f| f == c))
        .map(str::to_string))
}
