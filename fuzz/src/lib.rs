//! wasmlet's fuzz oracles: the logic behind the thin targets in
//! `fuzz_targets/` (as wasmtime's `crates/fuzzing` does), also replayed
//! over the committed corpora as ordinary tests (`tests/all/fuzz_corpus.rs`).
//!
//! Map:
//! - [`load_invoke`]: arbitrary bytes as a module: loaded, and every export
//!   invoked under fuel, memory and time limits; every outcome classified,
//!   every error one line, no panic, nothing past its limits;
//! - [`smith_invoke`]: the same on valid modules made by `wasm-smith`;
//! - [`snapshot_diff`]: the snapshot differential: init-then-run against
//!   snapshot-then-run on `wasm-smith` modules (exported globals and
//!   memories must match);
//! - [`artifact`]: the precompiled-artifact reader (trailer fields,
//!   lengths, truncation and extension) on a valid artifact with fuzzed
//!   edits: only a semantically unchanged trailer may load;
//! - [`parsers`]: the parsers of untrusted text and bytes: the sandbox
//!   wire protocol ([`protocol`]), the CLI's flag values ([`cli_parsers`]),
//!   the serve manifest ([`manifest`]), a WAGI function's output ([`wagi`])
//!   and an OCI runtime spec ([`oci_spec`]).
//!
//! Each oracle panics on a finding (that is what the fuzzer looks for) and
//! returns quietly on anything else.

pub mod parsers;

pub use parsers::{cli_parsers, manifest, oci_spec, protocol, usage_bill, wagi};

use arbitrary::{Arbitrary, Unstructured};
use std::sync::OnceLock;
use std::time::Duration;
use wasmlet_runtime::{
    Entry, Error, Invocation, Limits, LoadOptions, Runtime, RuntimeConfig, SnapshotOptions, Status,
    Val,
};
use wasmtime::{ExternType, ValType};

/// Limits every fuzzed invocation runs under.
pub fn limits() -> Limits {
    Limits {
        max_memory: 64 << 20,
        fuel: Some(100_000),
        timeout: Some(Duration::from_secs(2)),
        cpu_time: Some(Duration::from_secs(1)),
        ..Limits::default()
    }
}

/// One runtime for the whole fuzzing process: fuel metered, no disk
/// cache, small caps (a fuzzer must not spend minutes in Cranelift).
pub fn runtime() -> &'static Runtime {
    static RT: OnceLock<Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        let mut config = RuntimeConfig {
            fuel_metering: true,
            ..RuntimeConfig::default()
        };
        config.cache.enabled = false;
        config.pool.instances = 8;
        config.pool.max_memory = 64 << 20;
        config.limits.max_memory = 64 << 20;
        for (cap, value) in [
            ("max_wasm_size", 1 << 20),
            ("max_functions", 1000),
            ("max_function_size", 64 << 10),
            ("max_locals", 1000),
            ("max_data_size", 1 << 20),
        ] {
            config.compile.set_cap(cap, value).expect("known cap names");
        }
        Runtime::new(config).expect("the fuzzing runtime starts")
    })
}

/// An error as users see it: one line.
fn assert_one_line(e: &Error) {
    let text = e.to_string();
    assert!(!text.contains('\n'), "multi-line error: {text:?}");
    assert!(!text.is_empty(), "empty error: {e:?}");
}

/// Loads `bytes` as a module; if it loads, invokes each exported function
/// whose parameters are numbers (with zeros), under [`limits`].
pub fn load_invoke(bytes: &[u8]) {
    let function = match runtime().load_bytes(bytes, &LoadOptions::default()) {
        Ok(f) => f,
        Err(e) => return assert_one_line(&e),
    };
    // Components are loaded too; their exports are not invoked here.
    let Some(module) = function.module() else {
        return;
    };
    let exports: Vec<(String, Vec<Val>)> = module
        .exports()
        .filter_map(|e| match e.ty() {
            ExternType::Func(ty) => {
                let params: Option<Vec<Val>> = ty.params().map(|t| zero(&t)).collect();
                params.map(|p| (e.name().to_string(), p))
            }
            _ => None,
        })
        .take(8)
        .collect();
    for (name, params) in exports {
        let start = std::time::Instant::now();
        let outcome = function.invoke(Invocation {
            entry: Entry::Export { name, params },
            limits: Some(limits()),
            ..Invocation::default()
        });
        // The timeout holds, whatever the guest does (generous slack for a
        // loaded machine and a sanitized build).
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "invocation ran {:?}",
            start.elapsed()
        );
        match outcome {
            Ok(o) => {
                if let Status::Trapped(msg) = &o.status {
                    assert!(!msg.contains('\n'), "multi-line trap: {msg:?}");
                }
                if let Some(fuel) = o.usage.fuel_consumed {
                    assert!(fuel <= 100_000 + 1, "fuel {fuel} past the limit");
                }
                assert!(o.usage.peak_memory_bytes <= 64 << 20, "{:?}", o.usage);
            }
            Err(e) => assert_one_line(&e),
        }
    }
}

fn zero(t: &ValType) -> Option<Val> {
    Some(match t {
        ValType::I32 => Val::I32(0),
        ValType::I64 => Val::I64(0),
        ValType::F32 => Val::F32(0),
        ValType::F64 => Val::F64(0),
        ValType::V128 => Val::V128(0u128.into()),
        ValType::Ref(_) => return None,
    })
}

/// A `wasm-smith` configuration for the features wasmlet accepts, with no
/// imports (a generated import would only be refused at load).
fn smith_config(u: &mut Unstructured<'_>) -> arbitrary::Result<wasm_smith::Config> {
    let mut config = wasm_smith::Config::arbitrary(u)?;
    config.max_imports = 0;
    config.max_funcs = config.max_funcs.min(50);
    config.max_memory32_bytes = config.max_memory32_bytes.min(64 << 20);
    config.max_memory64_bytes = config.max_memory64_bytes.min(64 << 20);
    config.threads_enabled = false;
    config.shared_everything_threads_enabled = false;
    config.gc_enabled = false;
    config.custom_page_sizes_enabled = false;
    config.wide_arithmetic_enabled = false;
    config.max_table_elements = config.max_table_elements.min(10_000);
    config.export_everything = true;
    Ok(config)
}

/// [`load_invoke`] on a valid module generated from `data`.
pub fn smith_invoke(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let Ok(config) = smith_config(&mut u) else {
        return;
    };
    let Ok(module) = wasm_smith::Module::new(config, &mut u) else {
        return;
    };
    load_invoke(&module.to_bytes());
}

/// Everything observable of an instance after init: its exported globals
/// and memories (NaNs compared by being NaN).
#[derive(Debug, PartialEq)]
struct State {
    globals: Vec<(String, String)>,
    memories: Vec<(String, Vec<u8>)>,
}

/// Instantiates `wasm` in plain wasmtime (with fuel), runs `init` if given,
/// and reads its state; `None` when it does not run to the end (traps, runs
/// out of fuel, or is refused), which the differential then ignores.
fn run_plain(wasm: &[u8], init: Option<&str>) -> Option<State> {
    use wasmtime::{Config, Engine, Extern, Instance, Module, Store};
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    let engine = ENGINE.get_or_init(|| {
        let mut c = Config::new();
        wasmlet_snapshotter::enable_wasm_features(&mut c).consume_fuel(true);
        Engine::new(&c).expect("engine")
    });
    let module = Module::new(engine, wasm).ok()?;
    let mut store = Store::new(engine, ());
    store.set_fuel(1_000_000).ok()?;
    let instance = Instance::new(&mut store, &module, &[]).ok()?;
    if let Some(init) = init {
        let f = instance.get_typed_func::<(), ()>(&mut store, init).ok()?;
        f.call(&mut store, ()).ok()?;
    }
    let exports: Vec<(String, Extern)> = instance
        .exports(&mut store)
        .map(|e| (e.name().to_string(), e.into_extern()))
        .collect();
    let mut state = State {
        globals: Vec::new(),
        memories: Vec::new(),
    };
    for (name, ext) in exports {
        match ext {
            Extern::Global(g) => {
                let v = match g.get(&mut store) {
                    Val::F32(b) if f32::from_bits(b).is_nan() => "f32 NaN".to_string(),
                    Val::F64(b) if f64::from_bits(b).is_nan() => "f64 NaN".to_string(),
                    Val::I32(v) => format!("i32 {v}"),
                    Val::I64(v) => format!("i64 {v}"),
                    Val::F32(b) => format!("f32 {b:#x}"),
                    Val::F64(b) => format!("f64 {b:#x}"),
                    Val::V128(v) => format!("v128 {:#x}", v.as_u128()),
                    // References are not snapshotted by value.
                    _ => continue,
                };
                state.globals.push((name, v));
            }
            Extern::Memory(m) => state.memories.push((name, m.data(&store).to_vec())),
            _ => {}
        }
    }
    Some(state)
}

/// The snapshot differential on a `wasm-smith` module whose exported
/// `() -> ()` function is taken as init: if the original runs init to its
/// end and the snapshotter accepts it, the snapshot's exported globals and
/// memories must equal the original's after init.
pub fn snapshot_diff(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let Ok(config) = smith_config(&mut u) else {
        return;
    };
    let Ok(module) = wasm_smith::Module::new(config, &mut u) else {
        return;
    };
    let wasm = module.to_bytes();
    let Ok(parsed) = wasmtime::Module::new(runtime().engine(), &wasm) else {
        return;
    };
    let Some(init) = parsed
        .exports()
        .find(|e| matches!(e.ty(), ExternType::Func(f) if f.params().len() == 0 && f.results().len() == 0))
        .map(|e| e.name().to_string())
    else {
        return;
    };
    let Some(original) = run_plain(&wasm, Some(&init)) else {
        return;
    };
    let opts = SnapshotOptions {
        init_func: Some(init.clone()),
        timeout: Duration::from_secs(2),
        max_memory: 64 << 20,
        ..SnapshotOptions::default()
    };
    // A refusal (a table mutated by init, a start function's effects, an
    // init that loops past its timeout) is a clean error; only a snapshot
    // that is produced must be faithful.
    let Ok(snapshot) = wasmlet_snapshotter::snapshot(&wasm, &opts) else {
        return;
    };
    let restored = run_plain(&snapshot, None).expect("the snapshot instantiates");
    // The init export is removed from the snapshot; compare the rest.
    assert_eq!(
        original, restored,
        "snapshot differs from init-then-run (init `{init}`)"
    );
}

/// What the fuzzer does to a valid artifact.
#[derive(Debug, Arbitrary)]
pub struct ArtifactEdit {
    /// (position in the trailer, new byte)
    trailer: Vec<(u8, u8)>,
    /// Bytes cut off the end.
    truncate: u16,
    /// Bytes added at the end.
    extend: Vec<u8>,
}

/// Loads a valid artifact after fuzzed edits of its trailer and length:
/// it may load only if its magic, version, engine fingerprint and length
/// are unchanged (the key, the reserved flags and the payload hash are not
/// checked on an explicit precompiled load); otherwise the error is one
/// line.
pub fn artifact(data: &[u8]) {
    use wasmlet_runtime::artifact::TRAILER_LEN;
    static SEED: OnceLock<Vec<u8>> = OnceLock::new();
    let seed = SEED.get_or_init(|| {
        runtime()
            .precompile(br#"(module (func (export "f") (result i32) (i32.const 7)))"#)
            .expect("the seed compiles")
    });
    let Ok(edit) = ArtifactEdit::arbitrary(&mut Unstructured::new(data)) else {
        return;
    };
    let mut bytes = seed.clone();
    let trailer_at = bytes.len() - TRAILER_LEN;
    for (pos, value) in &edit.trailer {
        bytes[trailer_at + (*pos as usize % TRAILER_LEN)] = *value;
    }
    bytes.truncate(bytes.len().saturating_sub(edit.truncate as usize));
    bytes.extend_from_slice(&edit.extend);
    let opts = LoadOptions {
        allow_precompiled: true,
        ..LoadOptions::default()
    };
    match runtime().load_bytes(&bytes, &opts) {
        Ok(f) => {
            assert_eq!(bytes.len(), seed.len(), "a resized artifact loaded");
            let checked = (0..4).chain(8..40).chain(72..80).chain(112..120);
            for i in checked {
                assert_eq!(
                    bytes[trailer_at + i],
                    seed[trailer_at + i],
                    "trailer byte {i} changed and the artifact still loaded"
                );
            }
            let out = f
                .invoke(Invocation {
                    entry: Entry::Export {
                        name: "f".into(),
                        params: vec![],
                    },
                    ..Invocation::default()
                })
                .expect("invokes");
            assert!(matches!(out.status, Status::Returned(ref r) if r.len() == 1));
        }
        Err(e) => assert_one_line(&e),
    }
}
