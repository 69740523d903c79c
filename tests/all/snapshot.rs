//! Pre-initialization: snapshot-then-run must behave exactly like
//! init-then-run (same results, output, final memory and globals), and what
//! cannot be snapshotted faithfully is refused with a clear error and no
//! output file.

use crate::helpers::*;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use wasmlet_runtime::{
    Entry, Invocation, LoadOptions, Runtime, RuntimeConfig, SnapshotOptions, Status, Val,
};
use wasmtime::{Config, Engine, Extern, Linker, Module, Store};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{FsPerms, WasiCtxBuilder};

/// Everything observable after a run.
#[derive(Debug, PartialEq)]
struct Final {
    results: Vec<String>,
    stdout: String,
    memories: Vec<(String, Vec<u8>)>,
    globals: Vec<(String, String)>,
}

/// The WASI world of a run.
#[derive(Default, Clone)]
struct World {
    dirs: Vec<(PathBuf, String)>,
    env: Vec<(String, String)>,
}

/// Instantiates `wasm` with plain wasmtime, runs `init` (after
/// `_initialize`) if given, calls each of `calls`, and reads all state.
fn run_direct(wasm: &[u8], init: Option<&str>, calls: &[&str], world: &World) -> Final {
    let mut config = Config::new();
    config
        .wasm_multi_memory(true)
        .wasm_memory64(true)
        .wasm_exceptions(true)
        .wasm_simd(true);
    let engine = Engine::new(&config).unwrap();
    let module = Module::new(&engine, wasm).unwrap();
    let mut linker: Linker<WasiP1Ctx> = Linker::new(&engine);
    wasmtime_wasi::p1::add_to_linker_sync(&mut linker, |c| c).unwrap();
    let stdout = MemoryOutputPipe::new(1 << 20);
    let mut b = WasiCtxBuilder::new();
    b.stdout(stdout.clone()).envs(&world.env);
    for (host, guest) in &world.dirs {
        b.preopened_dir(host, guest, FsPerms::ReadOnly).unwrap();
    }
    let mut store = Store::new(&engine, b.build_p1());
    let instance = linker.instantiate(&mut store, &module).unwrap();
    let call0 = |store: &mut Store<WasiP1Ctx>, name: &str| -> Vec<String> {
        let f = instance
            .get_func(&mut *store, name)
            .unwrap_or_else(|| panic!("no export {name}"));
        let mut results = vec![Val::I32(0); f.ty(&*store).results().len()];
        f.call(&mut *store, &[], &mut results).unwrap();
        results.iter().map(|v| format!("{v:?}")).collect()
    };
    if let Some(init) = init {
        if instance.get_func(&mut store, "_initialize").is_some() {
            call0(&mut store, "_initialize");
        }
        if init != "_initialize" {
            call0(&mut store, init);
        }
    } else {
        assert!(
            instance.get_func(&mut store, "_initialize").is_none(),
            "snapshot still exports _initialize"
        );
        assert!(
            instance.get_func(&mut store, "wizer.initialize").is_none(),
            "snapshot still exports its init"
        );
    }
    let mut results = Vec::new();
    for c in calls {
        results.extend(call0(&mut store, c));
    }
    let exports: Vec<(String, Extern)> = instance
        .exports(&mut store)
        .map(|e| (e.name().to_string(), e.into_extern()))
        .collect();
    let mut memories = Vec::new();
    let mut globals = Vec::new();
    for (name, ext) in exports {
        match ext {
            Extern::Memory(m) => memories.push((name, m.data(&store).to_vec())),
            Extern::Global(g) => globals.push((name, format!("{:?}", g.get(&mut store)))),
            _ => {}
        }
    }
    drop(store);
    Final {
        results,
        stdout: String::from_utf8_lossy(&stdout.contents()).into_owned(),
        memories,
        globals,
    }
}

fn snapshot_with(wasm: &[u8], opts: &SnapshotOptions) -> Vec<u8> {
    wasmlet_snapshotter::snapshot(wasm, opts).unwrap_or_else(|e| panic!("snapshot failed: {e}"))
}

/// The differential check: init-then-run and snapshot-then-run agree.
fn assert_same(
    wasm: &[u8],
    init: &str,
    calls: &[&str],
    opts: &SnapshotOptions,
    world: &World,
) -> Final {
    let snap = snapshot_with(wasm, opts);
    let original = run_direct(wasm, Some(init), calls, world);
    let snapshotted = run_direct(&snap, None, calls, world);
    assert_eq!(original.results, snapshotted.results);
    assert_eq!(original.stdout, snapshotted.stdout);
    assert_eq!(original.globals, snapshotted.globals);
    assert_eq!(original.memories.len(), snapshotted.memories.len());
    for ((n1, m1), (n2, m2)) in original.memories.iter().zip(&snapshotted.memories) {
        assert_eq!(n1, n2);
        assert!(m1 == m2, "memory `{n1}` differs after the run");
    }
    // Same input and options, same bytes.
    assert_eq!(
        snapshot_with(wasm, opts),
        snap,
        "snapshot is not deterministic"
    );
    snapshotted
}

fn wat(text: &str) -> Vec<u8> {
    wat::parse_str(text).unwrap()
}

const TABLE_WAT: &str = r#"(module
  (memory (export "memory") 2)
  (global $sum (export "sum") (mut i64) (i64.const 0))
  (global $runs (export "runs") (mut i32) (i32.const 0))
  (func (export "wizer.initialize") (local $i i32)
    (loop $l
      (i32.store (i32.shl (local.get $i) (i32.const 2)) (i32.mul (local.get $i) (local.get $i)))
      (global.set $sum (i64.add (global.get $sum) (i64.extend_i32_u (local.get $i))))
      (br_if $l (i32.lt_u (local.tee $i (i32.add (local.get $i) (i32.const 1))) (i32.const 30000))))
    (global.set $runs (i32.add (global.get $runs) (i32.const 1))))
  (func (export "probe") (result i32)
    (global.set $runs (i32.add (global.get $runs) (i32.const 100)))
    (i32.store (i32.const 4) (i32.const 7))
    (i32.add (i32.load (i32.const 400)) (i32.load (i32.const 119996)))))"#;

#[test]
fn wat_modules_match_init_then_run() {
    let opts = SnapshotOptions::default();
    let world = World::default();
    let f = assert_same(
        &wat(TABLE_WAT),
        "wizer.initialize",
        &["probe"],
        &opts,
        &world,
    );
    assert_eq!(f.results, ["I32(899950001)"]);

    // Several memories, memory64, a SIMD global, a passive segment used at
    // run time, exceptions, and a start function (which must not run twice).
    let cases: [(&str, &str); 5] = [
        (
            "multi-memory",
            r#"(module
            (memory $a (export "a") 1) (memory $b (export "b") 1 3)
            (func (export "wizer.initialize")
              (i32.store $a (i32.const 8) (i32.const 11))
              (drop (memory.grow $b (i32.const 2)))
              (i32.store $b (i32.const 70000) (i32.const 22)))
            (func (export "probe") (result i32)
              (i32.add (i32.load $a (i32.const 8)) (i32.load $b (i32.const 70000)))))"#,
        ),
        (
            "memory64",
            r#"(module
            (memory (export "m") i64 1)
            (func (export "wizer.initialize")
              (i64.store (i64.const 1024) (i64.const 0x1122334455667788))
              (drop (memory.grow (i64.const 1))))
            (func (export "probe") (result i64) (i64.add (i64.load (i64.const 1024)) (memory.size))))"#,
        ),
        (
            "simd + passive",
            r#"(module
            (memory (export "memory") 1)
            (global $v (export "v") (mut v128) (v128.const i32x4 0 0 0 0))
            (data $p "passive!")
            (func (export "wizer.initialize")
              (global.set $v (v128.const i32x4 1 2 3 4)))
            (func (export "probe") (result i32)
              (memory.init $p (i32.const 100) (i32.const 0) (i32.const 8))
              (i32.add (i32x4.extract_lane 2 (global.get $v)) (i32.load8_u (i32.const 100)))))"#,
        ),
        (
            "exceptions",
            r#"(module
            (memory (export "memory") 1)
            (tag $e (param i32))
            (func $thrower (param i32) (throw $e (local.get 0)))
            (func $catch (param i32) (result i32)
              (block $h (result i32)
                (try_table (catch $e $h) (call $thrower (local.get 0)))
                (i32.const -1)))
            (func (export "wizer.initialize") (i32.store (i32.const 0) (call $catch (i32.const 5))))
            (func (export "probe") (result i32) (i32.add (i32.load (i32.const 0)) (call $catch (i32.const 37)))))"#,
        ),
        (
            "start function",
            r#"(module
            (memory (export "memory") 1)
            (global $g (export "g") (mut i32) (i32.const 0))
            (func $start (global.set $g (i32.add (global.get $g) (i32.const 1))))
            (start $start)
            (func (export "wizer.initialize") (global.set $g (i32.mul (global.get $g) (i32.const 10))))
            (func (export "probe") (result i32) (global.get $g)))"#,
        ),
    ];
    for (name, text) in cases {
        eprintln!("case: {name}");
        assert_same(&wat(text), "wizer.initialize", &["probe"], &opts, &world);
    }
}

#[test]
fn c_modules_match_init_then_run() {
    let opts = SnapshotOptions::default();
    let world = World::default();
    let table = std::fs::read(c_reactor("snap_table")).unwrap();
    let f = assert_same(
        &table,
        "wizer.initialize",
        &["probe", "init_runs"],
        &opts,
        &world,
    );
    assert_eq!(f.results[1], "I32(1)", "init ran once, before the snapshot");

    let heap = std::fs::read(c_reactor("snap_heap")).unwrap();
    let f = assert_same(&heap, "wizer.initialize", &["show", "sum"], &opts, &world);
    assert!(f.stdout.starts_with("head=node-19999 sum="), "{}", f.stdout);
}

fn config_dir() -> (tempfile::TempDir, World) {
    let dir = tempdir();
    std::fs::write(dir.path().join("app.conf"), "mode=fast").unwrap();
    let world = World {
        dirs: vec![(dir.path().to_path_buf(), "/config".into())],
        env: vec![("CONFIG_SUFFIX".into(), ";v2".into())],
    };
    (dir, world)
}

#[test]
fn init_with_wasi_keeps_results_not_resources() {
    let (_dir, init_world) = config_dir();
    let opts = SnapshotOptions {
        allow_wasi: true,
        dirs: init_world.dirs.clone(),
        env: init_world.env.clone(),
        ..SnapshotOptions::default()
    };
    let wasm = std::fs::read(c_reactor("snap_config")).unwrap();
    let f = assert_same(&wasm, "wizer.initialize", &["show"], &opts, &init_world);
    assert_eq!(f.stdout, "config=mode=fast;v2 name=(unset)\n");

    // At run time the world is the invocation's: its env, and none of init's
    // directories.
    let snap = snapshot_with(&wasm, &opts);
    let run_world = World {
        dirs: vec![],
        env: vec![("NAME".into(), "invocation".into())],
    };
    let f = run_direct(&snap, None, &["show", "can_open_config"], &run_world);
    assert_eq!(f.stdout, "config=mode=fast;v2 name=invocation\n");
    assert_eq!(f.results, ["I32(0)"]);
}

/// Runs `wasmlet snapshot` on a WAT module and returns the run and the
/// output path (which must exist only on success).
fn snapshot_cli(dir: &Path, text: &str, args: &[&str]) -> (Run, PathBuf) {
    let input = wat_file(dir, "in.wat", text);
    let out = dir.join("out.wasm");
    let r = run_cli(
        wasmlet()
            .arg("snapshot")
            .arg(&input)
            .arg("-o")
            .arg(&out)
            .args(args),
    );
    (r, out)
}

#[test]
fn refusals_are_clear_and_leave_nothing() {
    let cases: [(&str, &[&str], &str); 8] = [
        (
            r#"(module
            (import "wasi_snapshot_preview1" "fd_write" (func $w (param i32 i32 i32 i32) (result i32)))
            (memory (export "memory") 1)
            (func (export "wizer.initialize") (drop (call $w (i32.const 1) (i32.const 0) (i32.const 0) (i32.const 0)))))"#,
            &[],
            "init called the WASI import `wasi_snapshot_preview1::fd_write`; pass --allow-wasi",
        ),
        (
            r#"(module (func (export "wizer.initialize") unreachable))"#,
            &[],
            "init trapped",
        ),
        (
            r#"(module (memory 1) (func (export "wizer.initialize") (drop (memory.grow (i32.const 1000)))))"#,
            &["--memory-limit", "16MiB"],
            "init exceeded its memory limit",
        ),
        (
            r#"(module (func (export "wizer.initialize") (loop (br 0))))"#,
            &["--timeout", "200ms"],
            "init exceeded its time limit",
        ),
        (
            r#"(module (func (export "run")))"#,
            &[],
            "exports no init function",
        ),
        (
            r#"(module (func (export "other")))"#,
            &["--init-func", "setup"],
            "no function `setup`",
        ),
        (
            r#"(module (table 2 funcref) (func $f) (func (export "wizer.initialize") (table.set (i32.const 0) (ref.func $f))) (elem declare func $f))"#,
            &[],
            "table.set",
        ),
        (
            r#"(module (import "host" "f" (func)) (func (export "wizer.initialize")))"#,
            &[],
            "unknown import: host::f",
        ),
    ];
    for (text, args, needle) in cases {
        let dir = tempdir();
        let (r, out) = snapshot_cli(dir.path(), text, args);
        // Init's limits exit 137, as every limit does; refusals exit 1.
        let expected = if needle.starts_with("init exceeded") {
            137
        } else {
            1
        };
        assert_eq!(r.code, expected, "{needle}: {}", r.stderr);
        r.assert_one_line_error(needle);
        assert!(!out.exists(), "{needle}: output left behind");
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(
            leftovers,
            ["in.wat"],
            "{needle}: temporary files left behind"
        );
    }
    // A shared memory (threads) is refused too.
    let dir = tempdir();
    let (r, _) = snapshot_cli(
        dir.path(),
        r#"(module (memory 1 1 shared) (func (export "wizer.initialize")))"#,
        &[],
    );
    r.assert_one_line_error("shared memory");
}

#[test]
fn snapshot_then_run_from_cli() {
    let dir = tempdir();
    let (r, out) = snapshot_cli(dir.path(), TABLE_WAT, &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let r = run_cli(wasmlet().args(["run", "--invoke", "probe"]).arg(&out));
    assert_eq!(
        (r.code, r.stdout.as_str()),
        (0, "899950001\n"),
        "{}",
        r.stderr
    );
    // Compact: 2 pages of memory, ~117 KiB of it non-zero; the zero rest is not stored.
    let size = std::fs::metadata(&out).unwrap().len();
    assert!(size < 125_000, "snapshot is {size} bytes");

    // With --allow-wasi, --dir and --env reach init.
    let (_cfg, world) = config_dir();
    let snap = dir.path().join("config.wasm");
    let spec = format!("{}::/config", world.dirs[0].0.display());
    let r = run_cli(
        wasmlet()
            .arg("snapshot")
            .arg(c_reactor("snap_config"))
            .args([
                "--allow-wasi",
                "--dir",
                &spec,
                "--env",
                "CONFIG_SUFFIX=;cli",
                "-o",
            ])
            .arg(&snap),
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let r = run_cli(
        wasmlet()
            .args(["run", "--env", "NAME=n", "--invoke", "show"])
            .arg(&snap),
    );
    assert_eq!(r.stdout, "config=mode=fast;cli name=n\n", "{}", r.stderr);
    let r = run_cli(wasmlet().args(["snapshot", "--dir", "/tmp"]).arg(&snap));
    r.assert_one_line_error("add --allow-wasi");
}

#[test]
fn runtime_snapshots_on_load_and_caches() {
    let cache = tempdir();
    let config = |snapshot| {
        let mut c = RuntimeConfig::default();
        c.pool.instances = 8;
        c.snapshot = snapshot;
        c.cache.dir = Some(cache.path().to_path_buf());
        c
    };
    let rt = Runtime::new(config(true)).unwrap();
    let table = c_reactor("snap_table");
    let f = rt.load_file(&table, &LoadOptions::default()).unwrap();
    let call = |f: &wasmlet_runtime::Function, name: &str| match f
        .invoke(Invocation {
            entry: Entry::Export {
                name: name.into(),
                params: vec![],
            },
            ..Default::default()
        })
        .unwrap()
        .status
    {
        Status::Returned(v) => v[0].unwrap_i32(),
        s => panic!("{s:?}"),
    };
    // The snapshot has no init left to run: init ran once, at load.
    assert_eq!(call(&f, "init_runs"), 1);
    // The compiled snapshot is one cache entry, under a key that includes
    // the snapshot options.
    let snapshots: Vec<_> = std::fs::read_dir(cache.path().join("modules-v2"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "cwasm"))
        .collect();
    assert_eq!(snapshots.len(), 1);
    assert_eq!(f.artifact_path(), Some(snapshots[0].as_path()));
    // A second runtime takes it from the cache; a corrupt entry is redone.
    std::fs::write(&snapshots[0], b"corrupt").unwrap();
    let f = Runtime::new(config(true))
        .unwrap()
        .load_file(&table, &LoadOptions::default())
        .unwrap();
    assert_eq!(call(&f, "init_runs"), 1);
    assert_ne!(std::fs::read(&snapshots[0]).unwrap(), b"corrupt");
    // Without snapshotting, the reactor initializes on every invocation.
    let plain = Runtime::new(config(false)).unwrap();
    let f = plain.load_file(&table, &LoadOptions::default()).unwrap();
    assert_eq!(
        call(&f, "init_runs"),
        0,
        "wizer.initialize is not _initialize"
    );
    // Explicit options per load.
    let f = plain
        .load_file(
            &table,
            &LoadOptions {
                snapshot: Some(SnapshotOptions::default()),
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(call(&f, "init_runs"), 1);
}

#[test]
fn snapshot_init_that_sleeps_stops_at_its_timeout() {
    // Init blocked in WASI (sleeping, forever) is cut off at its timeout.
    let dir = tempdir();
    let out = dir.path().join("out.wasm");
    let child = wasmlet()
        .args(["snapshot", "--allow-wasi", "--timeout", "500ms", "-o"])
        .arg(&out)
        .arg(c_reactor("snap_sleep"))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (code, took, stderr) = wait_at_most(child, Duration::from_secs(15));
    assert_eq!(code, 137, "{stderr}");
    assert!(took < Duration::from_millis(1500), "took {took:?}");
    assert!(stderr.contains("init exceeded its time limit"), "{stderr}");
    assert!(!out.exists());
}

#[test]
fn snapshot_init_that_loops_forever_stops_by_default() {
    // Without --timeout, init still has one.
    assert_eq!(
        SnapshotOptions::default().timeout,
        wasmlet_snapshotter::DEFAULT_TIMEOUT
    );
    assert!(wasmlet_snapshotter::DEFAULT_TIMEOUT <= Duration::from_secs(60));
    // And it holds for init that waits in WASI as for init that computes
    // (the CLI case above): here a library snapshot with a short timeout.
    let wasm = std::fs::read(c_reactor("snap_sleep")).unwrap();
    let opts = SnapshotOptions {
        allow_wasi: true,
        timeout: Duration::from_millis(300),
        ..SnapshotOptions::default()
    };
    let e = within(Duration::from_secs(10), move || {
        wasmlet_snapshotter::snapshot(&wasm, &opts).unwrap_err()
    });
    assert!(e.to_string().contains("time limit"), "{e}");
}
