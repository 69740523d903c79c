//! Pass zero: a cheap walk over a module's sections that refuses inputs too
//! large to compile safely, before anything expensive (validation,
//! instrumenting, Cranelift) sees them.
//!
//! Compiling is the one step of loading a module whose cost grows faster
//! than the module: a 4 MB module of a million empty functions takes
//! Cranelift 84 s and 5.5 GB. The caps here are counted from section headers
//! and function-body headers only, so the scan itself costs a read of the
//! code section's outline, milliseconds for a 100 MB module.
//!
//! The defaults admit real interpreters (CPython and Ruby builds of about
//! 100 MB with around 50,000 functions) with room to spare; the per-function
//! caps are the limits browsers apply (the JS API's implementation limits).
//! What this does *not* bound: a module under every cap can still take long
//! to compile (one function of several megabytes); for that, compile in a
//! child process under a time and memory budget, as the `wasmlet` CLI does.
//!
//! The caps live here, in the lowest crate that compiles, because both the
//! runtime (before compiling) and the snapshotter (before instrumenting and
//! running init) apply them. The runtime re-exports them.

use serde::{Deserialize, Serialize};
use wasmparser::{Parser, Payload};

/// Default largest wasm binary to compile: 256 MiB.
pub const DEFAULT_MAX_WASM_SIZE: u64 = 256 << 20;
/// Default most functions defined by one module. Interpreters have about
/// 50,000; a million empty ones is the denial of service this stops.
pub const DEFAULT_MAX_FUNCTIONS: u32 = 250_000;
/// Default largest function body, in bytes (the JS API's limit).
pub const DEFAULT_MAX_FUNCTION_SIZE: u32 = 7_654_321;
/// Default most locals of one function (the JS API's limit).
pub const DEFAULT_MAX_LOCALS: u32 = 50_000;
/// Default most bytes in all data segments together: 256 MiB.
pub const DEFAULT_MAX_DATA_SIZE: u64 = 256 << 20;

/// Caps on what a module may contain before it is compiled. Each field's
/// name is the name of the setting in the runtime's `[compile]` table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CompileCaps {
    /// Size of the wasm binary, in bytes.
    pub max_wasm_size: u64,
    /// Functions the module defines (imports not counted).
    pub max_functions: u32,
    /// Size of one function body, in bytes.
    pub max_function_size: u32,
    /// Locals declared by one function (parameters not counted).
    pub max_locals: u32,
    /// Bytes of all data segments together.
    pub max_data_size: u64,
}

impl Default for CompileCaps {
    fn default() -> Self {
        CompileCaps {
            max_wasm_size: DEFAULT_MAX_WASM_SIZE,
            max_functions: DEFAULT_MAX_FUNCTIONS,
            max_function_size: DEFAULT_MAX_FUNCTION_SIZE,
            max_locals: DEFAULT_MAX_LOCALS,
            max_data_size: DEFAULT_MAX_DATA_SIZE,
        }
    }
}

/// A module over one of the [`CompileCaps`]: names the cap (its setting,
/// `compile.<field>`), what the module has and what is allowed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "module has {actual} {what}, over the compile cap compile.{cap} of {limit} \
     (raise it in the runtime config, or with `--compile-cap {cap}=N`)"
)]
pub struct CapExceeded {
    /// The field of [`CompileCaps`] (and of the `[compile]` config table).
    pub cap: &'static str,
    /// What was counted, e.g. "functions" or "locals in function 3".
    pub what: String,
    /// The module's figure.
    pub actual: u64,
    /// The cap.
    pub limit: u64,
}

/// Walks `wasm` and refuses it if it is over any of `caps`. Malformed input
/// is left for the validator to describe: the scan stops at the first
/// section it cannot read and reports nothing.
pub fn prescan(wasm: &[u8], caps: &CompileCaps) -> Result<(), CapExceeded> {
    let over = |cap, what: String, actual: u64, limit: u64| {
        if actual > limit {
            Err(CapExceeded {
                cap,
                what,
                actual,
                limit,
            })
        } else {
            Ok(())
        }
    };
    over(
        "max_wasm_size",
        "bytes".into(),
        wasm.len() as u64,
        caps.max_wasm_size,
    )?;
    let mut function_index = 0u64;
    let mut data_size = 0u64;
    for payload in Parser::new(0).parse_all(wasm) {
        let Ok(payload) = payload else {
            return Ok(());
        };
        match payload {
            Payload::FunctionSection(reader) => over(
                "max_functions",
                "functions".into(),
                reader.count().into(),
                caps.max_functions.into(),
            )?,
            Payload::CodeSectionStart { count, .. } => over(
                "max_functions",
                "functions".into(),
                count.into(),
                caps.max_functions.into(),
            )?,
            Payload::CodeSectionEntry(body) => {
                let n = function_index;
                function_index += 1;
                over(
                    "max_function_size",
                    format!("bytes in the body of defined function {n}"),
                    body.range().len() as u64,
                    caps.max_function_size.into(),
                )?;
                let Ok(locals) = body.get_locals_reader() else {
                    return Ok(());
                };
                let mut declared = 0u64;
                for group in locals {
                    let Ok((count, _)) = group else {
                        return Ok(());
                    };
                    declared += u64::from(count);
                    over(
                        "max_locals",
                        format!("locals in defined function {n}"),
                        declared,
                        caps.max_locals.into(),
                    )?;
                }
            }
            Payload::DataSection(reader) => {
                for data in reader {
                    let Ok(data) = data else {
                        return Ok(());
                    };
                    data_size += data.data.len() as u64;
                    over(
                        "max_data_size",
                        "bytes of data segments".into(),
                        data_size,
                        caps.max_data_size,
                    )?;
                }
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wasm(wat: &str) -> Vec<u8> {
        wat::parse_str(wat).unwrap()
    }

    #[test]
    fn defaults_admit_ordinary_modules() {
        let m = wasm(
            r#"(module (memory 1) (data (i32.const 0) "hello")
                 (func (local i32 i64) nop) (func (export "f") (result i32) i32.const 1))"#,
        );
        prescan(&m, &CompileCaps::default()).unwrap();
    }

    #[test]
    fn each_cap_is_named() {
        let m = wasm(
            r#"(module (memory 1) (data (i32.const 0) "0123456789")
                 (func (local i32 i32 i32) nop) (func) (func))"#,
        );
        let tight = |f: fn(&mut CompileCaps)| {
            let mut caps = CompileCaps::default();
            f(&mut caps);
            prescan(&m, &caps).unwrap_err()
        };
        assert_eq!(tight(|c| c.max_wasm_size = 10).cap, "max_wasm_size");
        let e = tight(|c| c.max_functions = 2);
        assert_eq!((e.cap, e.actual, e.limit), ("max_functions", 3, 2));
        assert!(
            e.to_string().contains("compile.max_functions") && !e.to_string().contains('\n'),
            "{e}"
        );
        assert_eq!(tight(|c| c.max_locals = 2).cap, "max_locals");
        assert_eq!(tight(|c| c.max_function_size = 1).cap, "max_function_size");
        assert_eq!(tight(|c| c.max_data_size = 9).cap, "max_data_size");
    }

    #[test]
    fn malformed_input_is_left_to_the_validator() {
        prescan(b"\0asm\x01\0\0\0\x03\xff", &CompileCaps::default()).unwrap();
    }
}
