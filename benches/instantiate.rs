//! Per-invocation cost, side by side:
//! - `naive`: what a typical embedder writes: a pre-compiled `Module` on a
//!   default `Engine` (on-demand allocator), a WASI context and
//!   `Linker::instantiate` per call;
//! - `wasmlet`: `Function::invoke` (pooled slot, `InstancePre`, CoW image);
//! - `native_spawn` (hello only): spawning `/bin/true`, as a reference for
//!   what a process-per-request platform pays.
//!
//! Both wasm strategies run the same module and capture its stdout.
//!
//! The `embed` group (the embedding API): `hello_val` calls a reactor's
//! export `hello(i32, i32) -> i32` (writes "hello\n", returns the sum)
//! through `Function::invoke` with `Val` arguments and results;
//! `hello_typed` the same export through `Function::typed`;
//! `host_calls_10k` a guest loop of 10,000 calls of an embedder's no-op
//! host function, and `empty_loop_10k` the same loop without the call (one
//! host call is the difference over 10,000).
//! `scripts/bench-report` turns the results into the table in BENCHMARKS.md.

use criterion::{Criterion, criterion_group, criterion_main};
use std::hint::black_box;
use wasmlet_runtime::{
    Entry, HostCx, Invocation, LoadOptions, Runtime, RuntimeBuilder, RuntimeConfig, Status, Val,
};
use wasmtime::{Engine, Linker, Module, Store};
use wasmtime_wasi::WasiCtxBuilder;
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;

/// Writes "hello\n" with `fd_write`.
const HELLO: &str = include_str!("../examples/guests/hello.wat");

/// HELLO plus a 16 MiB data segment of non-zero bytes, as a language
/// runtime's initialized heap would be; the guest does not touch it, so the
/// figure is the cost of making that memory available, not of using it.
fn data16m() -> Vec<u8> {
    let payload: String = (0..16 << 20)
        .map(|i| if i % 64 == 0 { "\\2a" } else { "\\01" })
        .collect();
    let text = HELLO
        .replace(
            "(memory (export \"memory\") 1)",
            "(memory (export \"memory\") 258)",
        )
        .replace(
            "(data (i32.const 16) \"hello\\n\")",
            &format!(
                "(data (i32.const 16) \"hello\\n\")\n  (data (i32.const 65536) \"{payload}\")"
            ),
        );
    wat::parse_str(text).unwrap()
}

struct Naive {
    engine: Engine,
    module: Module,
    linker: Linker<WasiP1Ctx>,
}

impl Naive {
    fn new(wasm: &[u8]) -> Self {
        let engine = Engine::default();
        let module = Module::new(&engine, wasm).unwrap();
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p1::add_to_linker_sync(&mut linker, |c| c).unwrap();
        Naive {
            engine,
            module,
            linker,
        }
    }

    fn invoke(&self) -> usize {
        let stdout = MemoryOutputPipe::new(1 << 20);
        let wasi = WasiCtxBuilder::new().stdout(stdout.clone()).build_p1();
        let mut store = Store::new(&self.engine, wasi);
        let instance = self.linker.instantiate(&mut store, &self.module).unwrap();
        let start = instance
            .get_typed_func::<(), ()>(&mut store, "_start")
            .unwrap();
        start.call(&mut store, ()).unwrap();
        drop(store);
        stdout.contents().len()
    }
}

fn bench(c: &mut Criterion) {
    let mut config = RuntimeConfig::default();
    config.cache.enabled = false;
    let rt = Runtime::new(config).unwrap();
    let modules = [
        ("hello", wat::parse_str(HELLO).unwrap()),
        ("data16m", data16m()),
    ];
    for (name, wasm) in modules {
        let naive = Naive::new(&wasm);
        let ours = rt.load_bytes(&wasm, &LoadOptions::default()).unwrap();
        assert_eq!(naive.invoke(), 6);
        assert_eq!(
            ours.invoke(Invocation::default())
                .unwrap()
                .stdout
                .unwrap()
                .len(),
            6
        );
        let mut group = c.benchmark_group(name);
        group.bench_function("naive", |b| b.iter(|| black_box(naive.invoke())));
        group.bench_function("wasmlet", |b| {
            b.iter(|| black_box(ours.invoke(Invocation::default()).unwrap()))
        });
        if name == "hello" {
            group.bench_function("native_spawn", |b| {
                b.iter(|| std::process::Command::new("/bin/true").status().unwrap())
            });
        }
        group.finish();
    }
}

/// HELLO as a reactor export taking and returning values, and the host
/// call loops.
const EMBED: &str = r#"(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "platform" "noop" (func $noop))
  (memory (export "memory") 1)
  (data (i32.const 16) "hello\n")
  (func (export "hello") (param i32 i32) (result i32)
    (i32.store (i32.const 0) (i32.const 16))
    (i32.store (i32.const 4) (i32.const 6))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
    (i32.add (local.get 0) (local.get 1)))
  (func (export "host_calls") (param $n i32)
    (loop $more
      (call $noop)
      (br_if $more (local.tee $n (i32.sub (local.get $n) (i32.const 1))))))
  (func (export "empty_loop") (param $n i32)
    (loop $more
      (br_if $more (local.tee $n (i32.sub (local.get $n) (i32.const 1)))))))"#;

fn bench_embed(c: &mut Criterion) {
    let mut config = RuntimeConfig::default();
    config.cache.enabled = false;
    let rt = RuntimeBuilder::new(config)
        .host_func("platform", "noop", |_cx: HostCx<'_>| {})
        .build()
        .unwrap();
    let f = rt
        .load_bytes(EMBED.as_bytes(), &LoadOptions::default())
        .unwrap();
    let val = || Invocation {
        entry: Entry::Export {
            name: "hello".into(),
            params: vec![Val::I32(1), Val::I32(2)],
        },
        ..Default::default()
    };
    let hello = f.typed::<(i32, i32), i32>("hello").unwrap();
    let host_calls = f.typed::<u32, ()>("host_calls").unwrap();
    let empty_loop = f.typed::<u32, ()>("empty_loop").unwrap();
    assert!(
        matches!(f.invoke(val()).unwrap().status, Status::Returned(v) if v[0].unwrap_i32() == 3)
    );
    assert_eq!(
        hello.invoke((1, 2), Invocation::default()).unwrap().results,
        Some(3)
    );
    assert!(
        host_calls
            .invoke(10_000, Invocation::default())
            .unwrap()
            .results
            .is_some()
    );
    let mut group = c.benchmark_group("embed");
    group.bench_function("hello_val", |b| {
        b.iter(|| black_box(f.invoke(val()).unwrap()))
    });
    group.bench_function("hello_typed", |b| {
        b.iter(|| black_box(hello.invoke((1, 2), Invocation::default()).unwrap()))
    });
    group.bench_function("host_calls_10k", |b| {
        b.iter(|| black_box(host_calls.invoke(10_000, Invocation::default()).unwrap()))
    });
    group.bench_function("empty_loop_10k", |b| {
        b.iter(|| black_box(empty_loop.invoke(10_000, Invocation::default()).unwrap()))
    });
    group.finish();
}

criterion_group!(benches, bench, bench_embed);
criterion_main!(benches);
