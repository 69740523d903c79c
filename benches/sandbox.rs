//! What a sandbox costs, side by side:
//! - `sandbox/start`: create the cgroups, start a hardened worker, load the
//!   hello module in it (from the warm compile cache), until it is ready;
//! - `invoke/in_process` vs `invoke/sandbox`: one hello invocation run by
//!   `Function::invoke` in this process, and the same handed to a sandbox
//!   worker over its socket (the difference is the per-invocation overhead).
//!
//! Needs root and a writable cgroup hierarchy, like the sandbox itself.

use criterion::{Criterion, criterion_group, criterion_main};
use std::hint::black_box;
use wasmlet_runtime::{Invocation, LoadOptions, Runtime, RuntimeConfig};
use wasmlet_sandbox::{Sandbox, SandboxConfig, WorkerCommand};

const HELLO: &str = include_str!("../examples/guests/hello.wat");

fn bench(c: &mut Criterion) {
    let mut config = RuntimeConfig::default();
    config.pool.instances = 16;
    config.cache.dir = Some(concat!(env!("CARGO_MANIFEST_DIR"), "/target/bench-cache").into());
    let worker = WorkerCommand {
        program: env!("CARGO_BIN_EXE_wasmlet").into(),
        args: vec!["sandbox-worker".into()],
    };
    let sandbox_config = SandboxConfig {
        memory: Some(256 << 20),
        cpus: Some(1.0),
        ..SandboxConfig::default()
    };
    let start = || {
        let sb = Sandbox::start(&config, &sandbox_config, worker.clone()).unwrap();
        sb.load(HELLO.as_bytes(), &LoadOptions::default()).unwrap();
        sb
    };
    drop(start()); // warms the cache

    let mut group = c.benchmark_group("sandbox");
    group.sample_size(20);
    group.bench_function("start", |b| b.iter(|| drop(black_box(start()))));
    group.finish();

    let rt = Runtime::new(config.clone()).unwrap();
    let f = rt
        .load_bytes(HELLO.as_bytes(), &LoadOptions::default())
        .unwrap();
    let sb = start();
    assert_eq!(
        sb.invoke(Invocation::default()).unwrap().stdout.unwrap(),
        "hello\n"
    );
    let mut group = c.benchmark_group("invoke");
    group.bench_function("in_process", |b| {
        b.iter(|| black_box(f.invoke(Invocation::default()).unwrap()))
    });
    group.bench_function("sandbox", |b| {
        b.iter(|| black_box(sb.invoke(Invocation::default()).unwrap()))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
