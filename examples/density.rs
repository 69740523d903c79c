//! Density: how many invocations can be in flight at once, and what each
//! costs in memory while it waits. Starts N invocations (default 10,000) of
//! a guest that sleeps in `poll_oneoff` (so each holds its instance, its
//! fiber stack, its store and WASI context, and its task), measures the
//! process's resident memory once they are all waiting, then checks every
//! one finishes cleanly.
//!
//! Usage: cargo run --release --example density -- [N] [SLEEP_SECS]
//! (`scripts/density` raises `vm.max_map_count` for the run: each waiting
//! instance holds several memory mappings.)
use std::time::{Duration, Instant};
use wasmlet_runtime::{Invocation, LoadOptions, Runtime, RuntimeConfig, Status};

/// Sleeps `SLEEP_NS` with `poll_oneoff` on the monotonic clock; touches
/// one page of its memory (the subscription and event records).
const GUEST: &str = r#"(module
  (import "wasi_snapshot_preview1" "poll_oneoff"
    (func $poll (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "_start")
    (i32.store (i32.const 16) (i32.const 1))
    (i64.store (i32.const 24) (i64.const SLEEP_NS))
    (drop (call $poll (i32.const 0) (i32.const 64) (i32.const 1) (i32.const 128)))))"#;

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let n: usize = args
        .next()
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(10_000);
    let sleep_secs: u64 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(10);
    let mut config = RuntimeConfig::default();
    config.cache.enabled = false;
    config.pool.instances = u32::try_from(n)?;
    config.pool.max_memory = 1 << 20;
    config.limits.max_memory = 1 << 20;
    let rt = Runtime::new(config)?;
    let wat = GUEST.replace("SLEEP_NS", &(sleep_secs * 1_000_000_000).to_string());
    let f = rt.load_bytes(wat.as_bytes(), &LoadOptions::default())?;

    let tokio = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    // One invocation first, so that lazily made state (the pool's first
    // slot, tokio's timer wheel) is not counted per instance.
    let short = rt.load_bytes(
        GUEST.replace("SLEEP_NS", "1").as_bytes(),
        &LoadOptions::default(),
    )?;
    tokio.block_on(short.invoke_async(Invocation::default()))?;
    let before = rss_bytes();

    let started = Instant::now();
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let f = f.clone();
            tokio.spawn(async move { f.invoke_async(Invocation::default()).await })
        })
        .collect();
    // Let every task start its instance and reach its sleep (starting takes
    // microseconds each); measure while they all wait.
    std::thread::sleep(Duration::from_secs(sleep_secs / 3).max(Duration::from_secs(1)));
    let during = rss_bytes();
    let elapsed_at_measure = started.elapsed();

    let mut ok = 0;
    let mut failed = Vec::new();
    for t in tasks {
        match tokio.block_on(t)? {
            Ok(o) if matches!(o.status, Status::Exited(0)) => ok += 1,
            Ok(o) => failed.push(format!("{:?}", o.status)),
            Err(e) => failed.push(e.to_string()),
        }
    }
    let total = started.elapsed();
    // Each finishes at least SLEEP after it started: if all were done by
    // measure + SLEEP, all had started when memory was measured.
    let all_in_flight = total <= elapsed_at_measure + Duration::from_secs(sleep_secs);
    let per = during.saturating_sub(before) as f64 / n as f64;
    println!(
        "in flight: {n} (sleeping {sleep_secs} s each); measured {elapsed_at_measure:.2?} after the first start"
    );
    println!(
        "resident: {:.1} MiB before, {:.1} MiB with all in flight",
        before as f64 / 1048576.0,
        during as f64 / 1048576.0
    );
    println!(
        "per in-flight instance: {:.1} KiB resident (of which the guest's own touched memory: 4 KiB, one page)",
        per / 1024.0
    );
    println!(
        "all {n} were in flight when measured: {}",
        if all_in_flight {
            "yes"
        } else {
            "not shown (the last finished too late): use a longer sleep"
        }
    );
    println!(
        "finished: {ok} ok, {} failed, all done after {total:.2?}",
        failed.len()
    );
    if let Some(first) = failed.first() {
        println!("first failure: {first}");
    }
    if ok != n {
        return Err(format!("{} of {n} invocations failed", n - ok).into());
    }
    Ok(())
}
