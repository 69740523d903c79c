//! A task's first start in a fresh process, as the containerd shim runs an
//! in-shim guest: the runtime built and warmed up with the shim's warm-up
//! module (the WASI calls of a C start-up, stdout a pipe),
//! the task's module loaded from the compiled cache, its stdout a FIFO
//! that another thread reads, `/` a preopened directory, then one
//! `invoke_async` on a two-worker tokio runtime, spawned behind a closed
//! `StartGate` as the shim's create does; once its instance is made, the
//! gate is opened and the run timed from there to its end, as the shim's
//! start; then the same module again, and a second new module.
//! Usage: cargo run --release --example first_start -- MODULE [MODULE2]
use std::io::Read;
use std::time::Instant;
use wasmlet_runtime::{
    Invocation, LoadOptions, Output, Preopen, Runtime, RuntimeConfig, StartGate,
};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let t0 = Instant::now();
    let mut args = std::env::args().skip(1);
    let module = args.next().ok_or("usage: first_start MODULE [MODULE2]")?;
    let module2 = args.next();
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let mut config = RuntimeConfig::default();
    config.pool.instances = 64;
    config.cache.dir = Some(std::env::temp_dir().join("wasmlet-first-start-cache"));
    let rt = Runtime::new(config)?;
    let warm = rt.load_bytes(
        wasmlet_shim::WARM_UP_MODULE.as_bytes(),
        &LoadOptions::default(),
    )?;
    let (reader, writer) = std::io::pipe()?;
    let inv =
        wasmlet_shim::warm_up_invocation(std::fs::File::from(std::os::fd::OwnedFd::from(writer)));
    let o = tokio.block_on(tokio.spawn(async move { warm.invoke_async(inv).await }))??;
    drop(reader);
    assert!(o.success(), "{:?}", o.status);
    eprintln!("runtime built and warm: {:?}", t0.elapsed());
    let dir = tempfile::tempdir()?;
    let fifo = dir.path().join("stdout");
    let cfifo = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes())?;
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(cfifo.as_ptr(), 0o600) }, 0);
    let reader_path = fifo.clone();
    std::thread::spawn(move || {
        loop {
            let mut f = std::fs::File::open(&reader_path).unwrap();
            let mut buf = [0u8; 4096];
            while f.read(&mut buf).is_ok_and(|n| n > 0) {}
        }
    });
    let run = |path: &str, label: &str| -> Result<(), Box<dyn std::error::Error>> {
        let t = Instant::now();
        let f = rt.load_file(path, &LoadOptions::default())?;
        let loaded = t.elapsed();
        let out = std::fs::OpenOptions::new().write(true).open(&fifo)?;
        let gate = StartGate::new();
        let inv = Invocation {
            stdout: Output::File(out),
            dirs: vec![Preopen {
                host: dir.path().to_path_buf(),
                guest: "/".into(),
                read_only: false,
            }],
            args: vec![path.to_string()],
            gate: Some(gate.clone()),
            ..Invocation::default()
        };
        let t = Instant::now();
        let task = tokio.spawn(async move { f.invoke_async(inv).await });
        while !gate.is_reached() {
            std::thread::sleep(std::time::Duration::from_micros(50));
        }
        let prepared = t.elapsed();
        // Let the runtime thread park, as it has between a create and a start.
        std::thread::sleep(std::time::Duration::from_millis(2));
        let faults = minor_faults();
        let t = Instant::now();
        gate.open();
        let o = tokio.block_on(task)??;
        let ran = t.elapsed();
        eprintln!(
            "{label}: load {loaded:?}, instance made in {prepared:?}, gate opened to end {ran:?}, {:?}, {} page faults",
            o.status,
            minor_faults() - faults
        );
        Ok(())
    };
    run(&module, "first start")?;
    run(&module, "second start, same module")?;
    if let Some(m2) = module2 {
        run(&m2, "first start of another module")?;
    }
    Ok(())
}

/// The process's minor page faults so far (`/proc/self/stat`, field 10).
fn minor_faults() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    after_name
        .split_whitespace()
        .nth(7)
        .and_then(|f| f.parse().ok())
        .unwrap_or(0)
}
