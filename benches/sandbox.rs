//! What a sandbox costs, side by side:
//! - `sandbox/start`: create the cgroups, start a worker, let it build its
//!   full jail (namespaces, empty root, no capabilities, seccomp), and load
//!   the hello function the supervisor compiled once (the worker is handed
//!   the artifact's fd and maps it), until it is ready. Workers never see a
//!   cache.
//!   Then it is torn down (worker killed and reaped, cgroups removed): the
//!   figure is a sandbox's whole life.
//! - `sandbox/ready`: the same, timed only until the sandbox is ready for
//!   its first invocation (the teardown is not timed).
//! - `sandbox/start_compiling`: the same, but the worker is given the
//!   module and compiles it itself.
//! - `invoke/in_process` vs `invoke/sandbox`: one hello invocation run by
//!   `Function::invoke` in this process, and the same handed to a sandbox
//!   worker over its socket (the difference is the per-invocation overhead).
//! - `invoke/sandbox_16_callers_4_workers`: 16 threads invoking at once,
//!   spread over 4 sandboxes (one worker each); time per invocation.
//!
//! Needs root and a writable cgroup hierarchy, like the sandbox itself.
//! `WASMLET_BENCH_CGROUP_PARENT` puts the sandboxes under another parent
//! than `wasmlet` (BENCHMARKS.md uses one with a large `cpu.shares` to
//! shield the workers from other builds on a shared machine).

use criterion::{Criterion, criterion_group, criterion_main};
use std::hint::black_box;
use std::time::{Duration, Instant};
use wasmlet_runtime::{Invocation, LoadOptions, Runtime, RuntimeConfig};
use wasmlet_sandbox::{Sandbox, SandboxConfig, WorkerCommand};

const HELLO: &str = include_str!("../examples/guests/hello.wat");
const CALLERS: usize = 16;
const WORKERS: usize = 4;

fn bench(c: &mut Criterion) {
    let mut config = RuntimeConfig::default();
    config.pool.instances = 16;
    let worker = WorkerCommand {
        program: env!("CARGO_BIN_EXE_wasmlet").into(),
        args: vec!["sandbox-worker".into()],
        stdio: None,
    };
    let mut sandbox_config = SandboxConfig {
        memory: Some(256 << 20),
        cpus: Some(1.0),
        ..SandboxConfig::default()
    };
    if let Ok(parent) = std::env::var("WASMLET_BENCH_CGROUP_PARENT") {
        sandbox_config.cgroup_parent = parent;
    }
    // The supervisor's runtime and its own cache (a fresh directory, never
    // a worker's): it compiles hello once, as a server would.
    let cache = tempfile::tempdir().unwrap();
    let mut supervisor = config.clone();
    supervisor.cache.dir = Some(cache.path().to_path_buf());
    let supervisor_rt = Runtime::new(supervisor).unwrap();
    let compiled = supervisor_rt
        .load_bytes(HELLO.as_bytes(), &LoadOptions::default())
        .unwrap();
    assert!(compiled.artifact_path().is_some());
    let start = || {
        let sb = Sandbox::start(&config, &sandbox_config, worker.clone()).unwrap();
        sb.load_function(&compiled, &LoadOptions::default())
            .unwrap();
        sb
    };
    let start_compiling = || {
        let sb = Sandbox::start(&config, &sandbox_config, worker.clone()).unwrap();
        sb.load(HELLO.as_bytes(), &LoadOptions::default()).unwrap();
        sb
    };

    let mut group = c.benchmark_group("sandbox");
    group.sample_size(20);
    group.bench_function("start", |b| b.iter(|| drop(black_box(start()))));
    // The same start, timed until the sandbox is ready for its first
    // invocation; tearing it down (kill, reap, remove the cgroups) follows
    // outside the timed part.
    group.bench_function("ready", |b| {
        b.iter_custom(|iters| {
            let mut timed = Duration::ZERO;
            for _ in 0..iters {
                let t = Instant::now();
                let sb = black_box(start());
                timed += t.elapsed();
                drop(sb);
            }
            timed
        })
    });
    group.bench_function("start_compiling", |b| {
        b.iter(|| drop(black_box(start_compiling())))
    });
    group.finish();

    let mut in_process = config.clone();
    in_process.cache.enabled = false;
    let rt = Runtime::new(in_process).unwrap();
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
    drop(sb);
    let sandboxes: Vec<Sandbox> = (0..WORKERS).map(|_| start()).collect();
    group.bench_function("sandbox_16_callers_4_workers", |b| {
        b.iter_custom(|iters| {
            let per_caller = iters.div_ceil(CALLERS as u64);
            let begin = Instant::now();
            std::thread::scope(|s| {
                for i in 0..CALLERS {
                    let sb = &sandboxes[i % WORKERS];
                    s.spawn(move || {
                        for _ in 0..per_caller {
                            black_box(sb.invoke(Invocation::default()).unwrap());
                        }
                    });
                }
            });
            // Time per invocation, as the other two report it.
            let total = begin.elapsed();
            Duration::from_secs_f64(
                total.as_secs_f64() * iters as f64 / (per_caller * CALLERS as u64) as f64,
            )
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
