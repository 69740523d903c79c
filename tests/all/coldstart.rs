//! Cold start from disk: artifacts are mapped, not read; unchanged inputs
//! are not re-hashed; big modules fit the pool; a process running a 64 MiB
//! snapshot touches only what its guest touches.

use crate::helpers::*;
use std::path::Path;
use std::process::Command;
use wasm_encoder::{
    CodeSection, ConstExpr, DataSection, ElementSection, Elements, ExportKind, ExportSection,
    Function as Func, FunctionSection, Instruction, MemorySection, MemoryType, Module, RefType,
    TableSection, TableType, TypeSection, ValType,
};
use wasmlet_runtime::{Error, Invocation, LoadOptions};

/// Bytes this thread has read with read(2)-like calls (`rchar`).
fn thread_rchar() -> u64 {
    let io = std::fs::read_to_string("/proc/thread-self/io").unwrap();
    io.lines()
        .find_map(|l| l.strip_prefix("rchar: "))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// A module with `funcs` functions (all in one table), a data segment of
/// `data` bytes (a repeating non-zero pattern, with `mark` as its last
/// byte) and an export `check` returning the last byte plus the sum of
/// calling the first and the last function through the table.
fn big_module(funcs: u32, data: usize, mark: u8) -> Vec<u8> {
    let mut types = TypeSection::new();
    types.ty().function([], [ValType::I32]);
    let mut functions = FunctionSection::new();
    for _ in 0..=funcs {
        functions.function(0);
    }
    let mut tables = TableSection::new();
    tables.table(TableType {
        element_type: RefType::FUNCREF,
        table64: false,
        minimum: u64::from(funcs),
        maximum: None,
        shared: false,
    });
    let pages = (data as u64).div_ceil(65536).max(1);
    let mut memories = MemorySection::new();
    memories.memory(MemoryType {
        minimum: pages,
        maximum: None,
        memory64: false,
        shared: false,
        page_size_log2: None,
    });
    let mut exports = ExportSection::new();
    exports.export("check", ExportKind::Func, funcs);
    exports.export("memory", ExportKind::Memory, 0);
    let mut elements = ElementSection::new();
    let all: Vec<u32> = (0..funcs).collect();
    elements.active(
        Some(0),
        &ConstExpr::i32_const(0),
        Elements::Functions(all.into()),
    );
    let mut code = CodeSection::new();
    for i in 0..funcs {
        let mut f = Func::new([]);
        f.instruction(&Instruction::I32Const(i as i32));
        f.instruction(&Instruction::End);
        code.function(&f);
    }
    let mut check = Func::new([]);
    for ins in [
        Instruction::I32Const(data as i32 - 1),
        Instruction::I32Load8U(wasm_encoder::MemArg {
            offset: 0,
            align: 0,
            memory_index: 0,
        }),
        Instruction::I32Const(0),
        Instruction::CallIndirect {
            type_index: 0,
            table_index: 0,
        },
        Instruction::I32Add,
        Instruction::I32Const(funcs as i32 - 1),
        Instruction::CallIndirect {
            type_index: 0,
            table_index: 0,
        },
        Instruction::I32Add,
        Instruction::End,
    ] {
        check.instruction(&ins);
    }
    code.function(&check);
    let mut bytes: Vec<u8> = (0..data).map(|i| (i % 251) as u8 + 1).collect();
    *bytes.last_mut().unwrap() = mark;
    let mut datas = DataSection::new();
    datas.active(0, &ConstExpr::i32_const(0), bytes);
    let mut m = Module::new();
    m.section(&types)
        .section(&functions)
        .section(&tables)
        .section(&memories)
        .section(&exports)
        .section(&elements)
        .section(&code)
        .section(&datas);
    m.finish()
}

fn check_result(f: &wasmlet_runtime::Function) -> i32 {
    match call(f, "check", vec![]).status {
        wasmlet_runtime::Status::Returned(v) => v[0].unwrap_i32(),
        s => panic!("{s:?}"),
    }
}

#[test]
fn interpreter_sized_module_loads_and_runs() {
    // 50,000 functions, all in a table of 50,000 entries, and a 64 MiB
    // data segment: the shape of a CPython or Ruby build. With the old
    // 1 MiB instance-size cap this was refused.
    let funcs = 50_000;
    let wasm = big_module(funcs, 64 << 20, 7);
    let rt = runtime_with(|c| c.pool.instances = 2);
    let f = rt.load_bytes(&wasm, &LoadOptions::default()).unwrap();
    assert_eq!(check_result(&f), 7 + (funcs as i32 - 1));

    // A pool too small for it says which setting to raise, on one line.
    let small = runtime_with(|c| {
        c.pool.instances = 1;
        c.pool.max_core_instance_size = 64 << 10;
    });
    let err = small
        .load_bytes(&wasm, &LoadOptions::default())
        .unwrap_err();
    assert!(matches!(err, Error::Pool(_)), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("pool.max_core_instance_size"), "{msg}");
    assert!(!msg.contains('\n'), "{msg}");
    let tiny_tables = runtime_with(|c| {
        c.pool.instances = 1;
        c.pool.table_elements = 1000;
    });
    let msg = tiny_tables
        .load_bytes(&wasm, &LoadOptions::default())
        .unwrap_err()
        .to_string();
    assert!(msg.contains("raise pool.table_elements"), "{msg}");
}

#[test]
fn cache_hits_are_mapped_and_unchanged_inputs_not_reread() {
    let dir = tempdir();
    let cache = dir.path().join("cache");
    let module = dir.path().join("m.wasm");
    std::fs::write(&module, big_module(10, 4 << 20, 1)).unwrap();
    // The file index only records files whose ctime is a moment old.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let rt = runtime_with(|c| {
        c.cache.enabled = true;
        c.cache.dir = Some(cache.clone());
    });
    let opts = LoadOptions::default();
    let first = rt.load_file(&module, &opts).unwrap();
    assert_eq!(check_result(&first), 1 + 9);
    let entry = first.artifact_path().unwrap().to_owned();
    assert!(entry.starts_with(&cache), "{}", entry.display());

    // Second load: the index knows the file, the entry is mapped.
    let before = thread_rchar();
    let second = rt.load_file(&module, &opts).unwrap();
    let read = thread_rchar() - before;
    assert!(
        read < 64 << 10,
        "read {read} bytes to load a cached 4 MiB module"
    );
    assert_eq!(second.artifact_path(), Some(entry.as_path()));
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    assert!(
        maps.contains(entry.to_str().unwrap()),
        "the artifact is mapped from its file"
    );
    assert_eq!(check_result(&second), 1 + 9);

    // Rewritten in place: same size, mtime put back (as `cp -p`, `touch -r`
    // or rsync do). The ctime changed, so the content is hashed again.
    let mtime = std::fs::metadata(&module).unwrap().modified().unwrap();
    std::fs::write(&module, big_module(10, 4 << 20, 2)).unwrap();
    let f = std::fs::File::options().write(true).open(&module).unwrap();
    f.set_modified(mtime).unwrap();
    drop(f);
    let third = rt.load_file(&module, &opts).unwrap();
    assert_eq!(check_result(&third), 2 + 9, "the new content runs");
    assert_ne!(third.artifact_path(), Some(entry.as_path()));
}

#[test]
fn fifo_device_and_directory_inputs_are_refused_without_blocking() {
    let dir = tempdir();
    let fifo = dir.path().join("module.wasm");
    mkfifo(&fifo);
    for (path, needle) in [
        (fifo.as_path(), "not a regular file"),
        (Path::new("/dev/zero"), "not a regular file"),
        (dir.path(), "is a directory"),
    ] {
        let r = run_cli(wasmlet().arg("run").arg(path));
        assert_eq!(r.code, 1, "{}", r.stderr);
        r.assert_one_line_error(needle);
        let r = run_cli(wasmlet().arg("compile").arg(path));
        assert_eq!(r.code, 1, "{}", r.stderr);
    }
}

/// Peak RSS in KiB, exit code and stdout of a command, measured by GNU
/// time. (Not with `wait4` from this process: a child started with
/// `vfork`/`posix_spawn` inherits the spawner's high-water RSS at `exec`,
/// and this test process is large. `time` forks from a small process.)
fn run_measured(cmd: &mut Command) -> (i64, i32, String) {
    let time = Path::new("/usr/bin/time");
    assert!(
        time.exists(),
        "GNU time is needed: scripts/install-deps installs it"
    );
    let rss_file = tempfile::NamedTempFile::new().unwrap();
    let mut timed = Command::new(time);
    timed
        .arg("-f")
        .arg("%M")
        .arg("-o")
        .arg(rss_file.path())
        .arg(cmd.get_program())
        .args(cmd.get_args())
        .envs(cmd.get_envs().filter_map(|(k, v)| v.map(|v| (k, v))))
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    for (k, v) in cmd.get_envs() {
        if v.is_none() {
            timed.env_remove(k);
        }
    }
    let out = timed.output().unwrap();
    let rss = std::fs::read_to_string(rss_file.path()).unwrap();
    let rss = rss.lines().last().unwrap().trim().parse().unwrap();
    (
        rss,
        out.status.code().unwrap(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// An init that fills 64 MiB of memory with non-zero bytes, and a `get`
/// export that reads one of them (shared with the cold-start benchmark).
const FILL_64M: &str = include_str!("../../examples/guests/fill64m.wat");

#[test]
fn a_process_running_a_64mib_snapshot_touches_little_memory() {
    let dir = tempdir();
    let src = wat_file(dir.path(), "fill.wat", FILL_64M);
    let snap = dir.path().join("fill.snapshot.wasm");
    let r = run_cli(wasmlet().arg("snapshot").arg(&src).arg("-o").arg(&snap));
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(std::fs::metadata(&snap).unwrap().len() > 64 << 20);
    // Let the file age past the index's racy window, so that the second run
    // finds it in the index instead of reading and hashing 64 MiB.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let cache = dir.path().join("cache");
    let run = |extra: &[&str], path: &Path| {
        let mut c = wasmlet();
        c.env("WASMLET_CACHE_DIR", &cache)
            .arg("run")
            .args(extra)
            .args(["--invoke", "get"])
            .arg(path);
        run_measured(&mut c)
    };
    // First run compiles and fills the cache; the next ones map it.
    let (first_rss, code, out) = run(&[], &snap);
    assert_eq!((code, out.as_str()), (0, "1\n"));
    let (rss_kib, code, out) = run(&[], &snap);
    assert_eq!((code, out.as_str()), (0, "1\n"));
    assert!(
        rss_kib < 32 << 10,
        "peak RSS {rss_kib} KiB running a 64 MiB snapshot from the cache (first run: {first_rss} KiB)"
    );
    // The same from a precompiled file.
    let cwasm = dir.path().join("fill.cwasm");
    let r = run_cli(wasmlet().arg("compile").arg(&snap).arg("-o").arg(&cwasm));
    assert_eq!(r.code, 0, "{}", r.stderr);
    let (rss_kib, code, out) = run(&["--allow-precompiled"], &cwasm);
    assert_eq!((code, out.as_str()), (0, "1\n"));
    assert!(rss_kib < 32 << 10, "peak RSS {rss_kib} KiB from a .cwasm");
}

#[test]
fn library_loads_a_precompiled_artifact_from_an_open_file() {
    let dir = tempdir();
    let rt = runtime();
    let artifact = rt.precompile(HELLO_WAT.as_bytes()).unwrap();
    let path = dir.path().join("hello.cwasm");
    std::fs::write(&path, &artifact).unwrap();
    let file = std::fs::File::open(&path).unwrap();
    let refused = rt.load_open_file(file, &path, &LoadOptions::default());
    assert!(matches!(
        refused,
        Err(Error::Artifact(wasmlet_runtime::ArtifactError::NotAllowed))
    ));
    let file = std::fs::File::open(&path).unwrap();
    let opts = LoadOptions {
        allow_precompiled: true,
        ..LoadOptions::default()
    };
    let f = rt.load_open_file(file, &path, &opts).unwrap();
    let out = f.invoke(Invocation::default()).unwrap();
    assert_eq!(stdout_of(&out), "hello\n");
}

/// Calls the export `v` and returns its i32.
fn value(f: &wasmlet_runtime::Function) -> i32 {
    match call(f, "v", vec![]).status {
        wasmlet_runtime::Status::Returned(v) => v[0].unwrap_i32(),
        s => panic!("{s:?}"),
    }
}

#[test]
fn code_is_never_cached_under_a_hash_its_source_was_not_checked_against() {
    // A write through a shared mapping to a page that is already dirty
    // changes neither mtime nor ctime, so the file index can be stale. A
    // later miss (here: another engine, with fuel) must compile and store
    // what the file holds under *its* hash, not under the indexed one;
    // otherwise every file holding the old content would run the new code.
    let dir = tempdir();
    let cache = dir.path().join("cache");
    let module = dir.path().join("t.wat");
    let source = "(module (func (export \"v\") (result i32) (i32.const 65)))";
    std::fs::write(&module, source).unwrap();
    let file = std::fs::File::options()
        .read(true)
        .write(true)
        .open(&module)
        .unwrap();
    let len = source.len();
    use std::os::fd::AsRawFd;
    // SAFETY: a fresh shared mapping of `len` bytes of a file we hold open;
    // it is only accessed within `len` and unmapped below.
    let map = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            file.as_raw_fd(),
            0,
        )
    } as *mut u8;
    assert_ne!(map as *mut libc::c_void, libc::MAP_FAILED);
    let digit = source.find("65").unwrap() + 1;
    // SAFETY: `digit` < `len`, within the mapping.
    unsafe { map.add(digit).write_volatile(b'5') }; // dirty the page (sets ctime)
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let cached = |fuel: bool| {
        runtime_with(|c| {
            c.cache.enabled = true;
            c.cache.dir = Some(cache.clone());
            c.fuel_metering = fuel;
        })
    };
    let opts = LoadOptions::default();
    assert_eq!(value(&cached(false).load_file(&module, &opts).unwrap()), 65);
    // SAFETY: as above.
    unsafe { map.add(digit).write_volatile(b'6') }; // now 66, same ctime
    // SAFETY: the mapping made above, of `len` bytes, no longer used.
    unsafe { libc::munmap(map.cast(), len) };
    let fuel = cached(true);
    assert_eq!(value(&fuel.load_file(&module, &opts).unwrap()), 66);
    // A file that holds the old content runs the old content.
    let copy = dir.path().join("copy.wat");
    std::fs::write(&copy, source).unwrap();
    assert_eq!(value(&fuel.load_file(&copy, &opts).unwrap()), 65);
}
