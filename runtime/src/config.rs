//! Public, serializable configuration: what an operator writes in a TOML file.
//!
//! These structs are plain data (`deny_unknown_fields`, every default a named
//! constant). The live objects that enforce them are built from them: the
//! wasmtime `Engine` (see `engine.rs`) and the per-invocation limiter (see
//! `limiter.rs`).

use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;
use wasmlet_snapshotter::CompileCaps;

/// Default ceiling on one invocation's linear memory: 1 GiB.
pub const DEFAULT_MAX_MEMORY: u64 = 1 << 30;
/// Default ceiling on elements in one table: room for the function tables
/// of interpreter-sized modules (CPython, Ruby, SpiderMonkey builds have
/// tens of thousands of entries).
pub const DEFAULT_MAX_TABLE_ELEMENTS: u64 = 1 << 20;
/// Default largest module file (wasm, WAT or precompiled) a runtime reads.
pub const DEFAULT_MAX_MODULE_SIZE: u64 = 1 << 30;
/// Default cap on stdout/stderr captured in memory per invocation: 16 MiB.
pub const DEFAULT_MAX_CAPTURED_OUTPUT: usize = 16 << 20;

/// Default number of instances the pooling allocator can hold at once.
pub const DEFAULT_POOL_INSTANCES: u32 = 128;
/// Default largest linear memory a pool slot can hold: 4 GiB (all of wasm32).
pub const DEFAULT_POOL_MAX_MEMORY: u64 = 4 << 30;
/// Default memories per module a slot can hold.
pub const DEFAULT_POOL_MEMORIES_PER_MODULE: u32 = 1;
/// Default core instances one component instance may be made of: its
/// module, a WASI adapter and the shims wit-component adds take 4.
pub const DEFAULT_POOL_COMPONENT_CORE_INSTANCES: u32 = 8;
/// Default tables per module a slot can hold.
pub const DEFAULT_POOL_TABLES_PER_MODULE: u32 = 1;
/// Default cap on one instance's runtime state (its `VMContext`: function
/// references, globals, pointers to memories and tables), which grows with
/// the number of functions and imports: 32 MiB admits modules with
/// hundreds of thousands of functions. Only a validation cap: the state is
/// allocated at its real size when an instance is made.
pub const DEFAULT_POOL_MAX_CORE_INSTANCE_SIZE: u64 = 32 << 20;
/// Default bytes of a freed memory slot kept resident (zeroed with memset
/// instead of `madvise`): 1 MiB keeps small functions' restarts syscall-free.
pub const DEFAULT_POOL_KEEP_RESIDENT: u64 = 1 << 20;
/// Default size of each fiber stack an invocation runs on: 2 MiB (wasmtime's
/// default). Must be larger than `max_wasm_stack`; the rest is for host calls.
pub const DEFAULT_POOL_STACK_SIZE: usize = 2 << 20;
/// Default bytes of a freed fiber stack reset with `memset` (instead of
/// `madvise`) when `stack_zeroing` is on: 64 KiB, what small functions touch.
pub const DEFAULT_POOL_STACK_KEEP_RESIDENT: u64 = 64 << 10;
/// Default epoch tick: how often a running guest is checked against its
/// CPU-time and wall-clock budgets.
pub const DEFAULT_EPOCH_TICK: Duration = Duration::from_millis(1);
/// Default maximum native stack a guest may use.
pub const DEFAULT_MAX_WASM_STACK: usize = 512 << 10;

/// Default wall-clock budget of one compilation in a child process: 60 s.
pub const DEFAULT_COMPILE_TIMEOUT: Duration = Duration::from_secs(60);
/// Default memory budget (`RLIMIT_DATA`) of a compiling child process: 2 GiB.
pub const DEFAULT_COMPILE_MAX_MEMORY: u64 = 2 << 30;

/// How a [`crate::Runtime`] is set up. Engine-wide: changing any field other
/// than `limits` and `cache` gives differently compiled code.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeConfig {
    /// The pooling instance allocator's shape.
    pub pool: PoolConfig,
    /// Period of the epoch ticker that drives CPU-time and timeout checks
    /// (ten times as long while only invocations whose limits are all at
    /// least 1000 periods run, no more of them than the host has cores:
    /// each limit is checked within 1% of itself; more computing guests
    /// than cores take turns, and a limit is checked up to one period late
    /// for each guest sharing its thread).
    #[serde(with = "humantime_serde")]
    pub epoch_tick: Duration,
    /// Instrument code to count fuel (needed for `Limits::fuel` and for the
    /// `fuel_consumed` usage figure). Costs some speed, so off by default.
    pub fuel_metering: bool,
    /// Largest module file, in bytes, that `load_file` reads; larger files,
    /// and anything that is not a regular file, are refused unread.
    pub max_module_size: u64,
    /// Compile functions of a module on several threads.
    pub parallel_compilation: bool,
    /// Largest native stack a guest may use, in bytes.
    pub max_wasm_stack: usize,
    /// Pre-initialize modules on load: run their init function (Wizer's
    /// `wizer.initialize`, or `_initialize`) once, and start every instance
    /// from the snapshot. Snapshots are cached like compiled code.
    pub snapshot: bool,
    /// Pre-compilation cache.
    pub cache: CacheConfig,
    /// Bounds on compiling a module.
    pub compile: CompileLimits,
    /// Limits applied to invocations that do not bring their own.
    pub limits: Limits,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            pool: PoolConfig::default(),
            epoch_tick: DEFAULT_EPOCH_TICK,
            fuel_metering: false,
            max_module_size: DEFAULT_MAX_MODULE_SIZE,
            parallel_compilation: true,
            max_wasm_stack: DEFAULT_MAX_WASM_STACK,
            snapshot: false,
            cache: CacheConfig::default(),
            compile: CompileLimits::default(),
            limits: Limits::default(),
        }
    }
}

/// Shape of the pooling allocator: every slot is reserved up front, so an
/// instantiation never calls `mmap`, and freed slots keep their
/// copy-on-write memory image mapped for the next instance of the same module.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PoolConfig {
    /// Instances that can be alive at once. One more is an error for
    /// `Function::invoke`; `Function::invoke_async` waits for a free slot.
    /// Each reserves address space (not memory) for its largest linear
    /// memory and tables up front, so a one-shot process such as
    /// `wasmlet run` uses one.
    pub instances: u32,
    /// Largest linear memory one slot holds, in bytes. `Limits::max_memory`
    /// can only lower this.
    pub max_memory: u64,
    /// Memories per module.
    pub memories_per_module: u32,
    /// Tables per module.
    pub tables_per_module: u32,
    /// Core instances one component instance may be made of (a component
    /// takes one slot: `memories_per_module` + 1 memories and
    /// `tables_per_module` + 1 tables across its core instances).
    pub component_core_instances: u32,
    /// Elements per table a slot holds.
    pub table_elements: u64,
    /// Largest runtime state of one instance, in bytes (see
    /// [`DEFAULT_POOL_MAX_CORE_INSTANCE_SIZE`]). Raise it when a module is
    /// refused with "instance state ... exceeds pool.max_core_instance_size".
    pub max_core_instance_size: u64,
    /// Bytes of each freed memory kept resident and reset with `memset`.
    pub keep_resident: u64,
    /// Use Linux's `PAGEMAP_SCAN` (6.7+), where present, to find the pages an
    /// instance dirtied, so a freed slot costs what the guest touched.
    pub pagemap_scan: bool,
    /// Size of the fiber stack each running invocation has (one per pool
    /// slot: guests run as futures, on their own stacks), in bytes.
    pub stack_size: usize,
    /// Zero a fiber stack before it is reused by another invocation. Off by
    /// default, as in wasmtime: compiled wasm never reads a stack slot it
    /// did not write, so this is defence in depth, at a cost per invocation.
    pub stack_zeroing: bool,
    /// With `stack_zeroing`, bytes of each freed stack reset with `memset`
    /// (kept resident) rather than returned to the kernel.
    pub stack_keep_resident: u64,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            instances: DEFAULT_POOL_INSTANCES,
            max_memory: DEFAULT_POOL_MAX_MEMORY,
            memories_per_module: DEFAULT_POOL_MEMORIES_PER_MODULE,
            tables_per_module: DEFAULT_POOL_TABLES_PER_MODULE,
            component_core_instances: DEFAULT_POOL_COMPONENT_CORE_INSTANCES,
            table_elements: DEFAULT_MAX_TABLE_ELEMENTS,
            max_core_instance_size: DEFAULT_POOL_MAX_CORE_INSTANCE_SIZE,
            keep_resident: DEFAULT_POOL_KEEP_RESIDENT,
            pagemap_scan: true,
            stack_size: DEFAULT_POOL_STACK_SIZE,
            stack_zeroing: false,
            stack_keep_resident: DEFAULT_POOL_STACK_KEEP_RESIDENT,
        }
    }
}

/// Where compiled modules are kept between processes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// Use the cache at all.
    pub enabled: bool,
    /// Cache directory; `None` means `$WASMLET_CACHE_DIR`, else
    /// `$XDG_CACHE_HOME/wasmlet`, else `~/.cache/wasmlet`.
    pub dir: Option<PathBuf>,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            enabled: true,
            dir: None,
        }
    }
}

/// Bounds on compiling a module: the `[compile]` table.
///
/// The caps (`max_*` but `max_memory`) are checked by a scan of the module
/// before every compilation (see [`crate::prescan`]); a module over one is
/// refused with [`crate::Error::TooLarge`], naming the cap. `timeout` and
/// `max_memory` are the budget of a compilation run in a child process:
/// the `wasmlet` CLI compiles that way; an embedder that compiles untrusted
/// modules should too (see [`crate::prescan`] for how). In-process
/// compilation ([`crate::Runtime::load_file`] with `in_process`) applies
/// only the caps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CompileLimits {
    /// Size of the wasm binary to compile (WAT already converted), in
    /// bytes. (`max_module_size` bounds the file read, before this.)
    pub max_wasm_size: u64,
    /// Functions the module defines (imports not counted).
    pub max_functions: u32,
    /// Size of one function body, in bytes.
    pub max_function_size: u32,
    /// Locals declared by one function.
    pub max_locals: u32,
    /// Bytes of all data segments together.
    pub max_data_size: u64,
    /// Wall-clock budget of one compilation in a child process.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Memory budget (`RLIMIT_DATA`: heap and writable private mappings,
    /// not address space merely reserved) of a compiling child process, in
    /// bytes.
    pub max_memory: u64,
    /// Compile in this process. When false, loading a module that is
    /// neither in the cache nor precompiled fails with
    /// [`crate::Error::NotCompiled`] (after the caps are checked), so the
    /// caller can compile it in a child under the budget and load the
    /// result (see [`crate::prescan`]).
    pub in_process: bool,
}

impl Default for CompileLimits {
    fn default() -> Self {
        let caps = CompileCaps::default();
        CompileLimits {
            max_wasm_size: caps.max_wasm_size,
            max_functions: caps.max_functions,
            max_function_size: caps.max_function_size,
            max_locals: caps.max_locals,
            max_data_size: caps.max_data_size,
            timeout: DEFAULT_COMPILE_TIMEOUT,
            max_memory: DEFAULT_COMPILE_MAX_MEMORY,
            in_process: true,
        }
    }
}

impl CompileLimits {
    /// The caps the pre-compilation scan checks.
    pub fn caps(&self) -> CompileCaps {
        CompileCaps {
            max_wasm_size: self.max_wasm_size,
            max_functions: self.max_functions,
            max_function_size: self.max_function_size,
            max_locals: self.max_locals,
            max_data_size: self.max_data_size,
        }
    }

    /// Sets the cap named `name` (a field name, as in `--compile-cap
    /// max_functions=N`). `Err` lists the names if there is no such cap or
    /// the value does not fit it.
    pub fn set_cap(&mut self, name: &str, value: u64) -> Result<(), String> {
        let small = |v: u64| {
            u32::try_from(v).map_err(|_| format!("compile cap {name} is at most {}", u32::MAX))
        };
        match name {
            "max_wasm_size" => self.max_wasm_size = value,
            "max_functions" => self.max_functions = small(value)?,
            "max_function_size" => self.max_function_size = small(value)?,
            "max_locals" => self.max_locals = small(value)?,
            "max_data_size" => self.max_data_size = value,
            _ => {
                return Err(format!(
                    "unknown compile cap `{name}` (caps: max_wasm_size, max_functions, \
                     max_function_size, max_locals, max_data_size)"
                ));
            }
        }
        Ok(())
    }
}

/// Per-invocation limits. Exceeding one ends the invocation with
/// [`crate::LimitExceeded`], which names the limit and its value. A stopped
/// invocation still gets its usage record: the wall time, CPU time, fuel and
/// peak memory it used up to the stop.
///
/// The time limits hold whatever the guest is doing. Computing, it is
/// checked every epoch tick (and yields to the executor). Waiting in WASI (a
/// sleep, a read of a stdin that stays open, a write into a full pipe), the
/// invocation is a pending future that its timer drops at the timeout; the
/// guest's wait ends with it.
///
/// What these do *not* limit or charge:
/// - host memory used by WASI (open files, captured output beyond
///   `max_captured_output`);
/// - filesystem calls: wasmtime-wasi runs each on tokio's blocking pool.
///   The invocation waits for it without holding its thread, and a timeout
///   ends the invocation on time, but a call already handed to the pool is
///   not interrupted: it runs to its end (the read or write of the buffer
///   the guest passed, an open, a rename, an unlink, a directory made or
///   removed, so its effects on the granted directories can appear after
///   the [`crate::Outcome`] is returned), and its result is dropped. With
///   [`crate::Function::invoke`], the CPU time these calls take on the pool
///   is charged to the invocation and counted against `cpu_time` (each
///   calling thread has its own pool of at most 4 threads, whose CPU clocks
///   are read; a call left running by a stopped invocation is charged to
///   nobody after the stop). With [`crate::Function::invoke_async`] the
///   calls run on the caller's runtime's pool, shared by all its
///   invocations, and their CPU time is not charged (their wall time is);
///   the caller's runtime bounds them (`max_blocking_threads`);
/// - stdio on a pipe that cannot be reopened non-blocking (no `/proc`):
///   reading or writing it blocks the thread;
/// - anything a whole sandbox does (that is the cgroup layer's job).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Total linear memory of the instance, in bytes. A `memory.grow` past
    /// it returns -1 to the guest; a guest that then fails is reported as
    /// having exceeded this limit.
    pub max_memory: u64,
    /// Elements per table.
    pub max_table_elements: u64,
    /// CPU time spent running the invocation, measured with the thread CPU
    /// clock around every poll of its future (so it is exact even when the
    /// future moves between a runtime's threads). Checked on every epoch
    /// tick, so a spinning guest stops within about one tick of its budget;
    /// time descheduled or waiting is not charged.
    #[serde(with = "humantime_serde")]
    pub cpu_time: Option<Duration>,
    /// Wall-clock time from the start of the invocation, whatever the guest
    /// is doing (computing, or waiting in a host call).
    #[serde(with = "humantime_serde")]
    pub timeout: Option<Duration>,
    /// Fuel budget (roughly, wasm instructions); needs
    /// `RuntimeConfig::fuel_metering`.
    pub fuel: Option<u64>,
    /// Captured stdout and stderr are each cut at this many bytes; further
    /// writes fail in the guest.
    pub max_captured_output: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_memory: DEFAULT_MAX_MEMORY,
            max_table_elements: DEFAULT_MAX_TABLE_ELEMENTS,
            cpu_time: None,
            timeout: None,
            fuel: None,
            max_captured_output: DEFAULT_MAX_CAPTURED_OUTPUT,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_toml_with_defaults_and_durations() {
        let cfg: RuntimeConfig = toml::from_str(
            r#"
            fuel_metering = true
            [limits]
            max_memory = 67108864
            cpu_time = "250ms"
            timeout = "2s"
            "#,
        )
        .unwrap();
        assert!(cfg.fuel_metering);
        assert_eq!(cfg.limits.cpu_time, Some(Duration::from_millis(250)));
        assert_eq!(cfg.limits.timeout, Some(Duration::from_secs(2)));
        assert_eq!(cfg.limits.max_memory, 64 << 20);
        assert_eq!(cfg.pool, PoolConfig::default());
        assert_eq!(cfg.epoch_tick, DEFAULT_EPOCH_TICK);
    }

    #[test]
    fn compile_limits_parse_with_defaults() {
        let cfg: RuntimeConfig =
            toml::from_str("[compile]\nmax_functions = 10\ntimeout = \"5s\"\n").unwrap();
        assert_eq!(cfg.compile.max_functions, 10);
        assert_eq!(cfg.compile.timeout, Duration::from_secs(5));
        assert_eq!(cfg.compile.max_memory, DEFAULT_COMPILE_MAX_MEMORY);
        assert!(toml::from_str::<RuntimeConfig>("[compile]\nfunctions = 1\n").is_err());
    }

    #[test]
    fn rejects_unknown_fields() {
        let err = toml::from_str::<RuntimeConfig>("[limits]\nmax_mem = 1\n").unwrap_err();
        assert!(err.to_string().contains("unknown field"), "{err}");
    }
}
