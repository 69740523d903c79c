//! Cold start with and without a snapshot, side by side:
//! - `init64/init_every_time`: instantiate the original module and run its
//!   init (which builds a 64 MiB table) on every invocation;
//! - `init64/snapshot`: invoke the wasmlet snapshot of the same module
//!   (pooled slot, copy-on-write image);
//! - `init64/wizer`: the same, from Wizer's snapshot of the module, when
//!   `target/bench-snapshot/init64.wizer.wasm` exists (`scripts/bench-wizer`
//!   makes it with the npm `@bytecodealliance/wizer`);
//! - `restore/<N>MiB`: invoking snapshots whose heaps are 1, 16, 64 and
//!   256 MiB, to show that restoring does not grow with the heap.
//!
//! Every invocation calls `probe`, which reads one word of the structure.
//! The input modules are written to `target/bench-snapshot/` for Wizer.

use criterion::{Criterion, criterion_group, criterion_main};
use std::hint::black_box;
use std::path::PathBuf;
use std::time::Duration;
use wasmlet_runtime::{Entry, Function, Invocation, LoadOptions, Runtime, RuntimeConfig, Status};

/// A module whose `wizer.initialize` fills `mib` MiB of memory with a
/// pseudo-random table (so no page is zero), and whose `probe` reads one
/// word of it; with `init_in_probe`, `probe` runs the init first, which is
/// what a cold start without a snapshot costs.
fn init_module(mib: u32, init_in_probe: bool) -> Vec<u8> {
    let pages = mib * 16 + 1;
    let words = mib * (1 << 18);
    let call_init = if init_in_probe { "(call $init)" } else { "" };
    wat::parse_str(format!(
        r#"(module
          (memory (export "memory") {pages})
          (func $init (export "wizer.initialize") (local $i i32)
            (loop $l
              (i32.store offset=65536 (i32.shl (local.get $i) (i32.const 2))
                (i32.or (i32.mul (local.get $i) (i32.const -1640531535)) (i32.const 1)))
              (br_if $l (i32.lt_u (local.tee $i (i32.add (local.get $i) (i32.const 1))) (i32.const {words})))))
          (func (export "probe") (result i32)
            {call_init}
            (i32.load offset=65536 (i32.const {probe}))))"#,
        probe = (words / 2) * 4
    ))
    .unwrap()
}

fn bench_dir() -> PathBuf {
    let d = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench-snapshot");
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn call(f: &Function) -> i32 {
    let probe = Invocation {
        entry: Entry::Export {
            name: "probe".into(),
            params: vec![],
        },
        ..Default::default()
    };
    match f.invoke(probe).unwrap().status {
        Status::Returned(v) => v[0].unwrap_i32(),
        s => panic!("{s:?}"),
    }
}

fn bench(c: &mut Criterion) {
    let mut config = RuntimeConfig::default();
    config.cache.enabled = false;
    config.pool.instances = 8;
    // The 256 MiB restore's snapshot is a wasm binary a little over the
    // default 256 MiB compile cap (its data segments are the heap).
    config.compile.max_wasm_size = 1 << 30;
    let rt = Runtime::new(config).unwrap();
    let load = |wasm: &[u8]| rt.load_bytes(wasm, &LoadOptions::default()).unwrap();

    let original = init_module(64, false);
    std::fs::write(bench_dir().join("init64.wasm"), &original).unwrap();
    if std::env::var_os("WASMLET_BENCH_PREPARE").is_some() {
        return; // only writing the input for Wizer (scripts/bench-wizer)
    }
    let snapshot = wasmlet_snapshotter::snapshot(&original, &Default::default()).unwrap();
    std::fs::write(bench_dir().join("init64.wasmlet.wasm"), &snapshot).unwrap();

    let with_init = load(&init_module(64, true));
    let from_snapshot = load(&snapshot);
    assert_eq!(call(&with_init), call(&from_snapshot));

    let mut group = c.benchmark_group("init64");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(10));
    group.bench_function("init_every_time", |b| {
        b.iter(|| black_box(call(&with_init)))
    });
    group.finish();
    let mut group = c.benchmark_group("init64");
    group.bench_function("snapshot", |b| b.iter(|| black_box(call(&from_snapshot))));
    let wizer_path = bench_dir().join("init64.wizer.wasm");
    if let Ok(wizer) = std::fs::read(&wizer_path) {
        let from_wizer = load(&wizer);
        assert_eq!(call(&from_wizer), call(&from_snapshot));
        group.bench_function("wizer", |b| b.iter(|| black_box(call(&from_wizer))));
        eprintln!(
            "snapshot sizes: wasmlet {} bytes, wizer {} bytes",
            snapshot.len(),
            wizer.len()
        );
    } else {
        eprintln!(
            "{} not found: run scripts/bench-wizer to compare with Wizer",
            wizer_path.display()
        );
    }
    group.finish();

    let mut group = c.benchmark_group("restore");
    for mib in [1, 16, 64, 256] {
        let snap =
            wasmlet_snapshotter::snapshot(&init_module(mib, false), &Default::default()).unwrap();
        let f = load(&snap);
        group.bench_function(format!("{mib}MiB"), |b| b.iter(|| black_box(call(&f))));
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
