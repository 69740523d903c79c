//! Building the wasmtime `Engine` from a [`RuntimeConfig`].
//!
//! The engine is set up for serving many short invocations:
//! - the pooling instance allocator, so instantiation takes a pre-reserved
//!   slot instead of calling `mmap`;
//! - copy-on-write memory images, so a module's data segments are mapped,
//!   not copied, and a freed slot keeps the image for the next instance;
//! - epoch interruption, driven by the `ticker`, for CPU-time and
//!   wall-clock limits at the cost of one load and compare per loop header;
//! - fiber stacks in the pool, one per slot: an invocation is a future whose
//!   guest runs on its own stack and can be suspended and dropped;
//! - the wasm features current toolchains emit.

use crate::config::RuntimeConfig;
use crate::error::Error;
use sha2::{Digest, Sha256};
use std::hash::{Hash, Hasher};
use wasmtime::{
    Config, Enabled, Engine, InstanceAllocationStrategy, OptLevel, PoolingAllocationConfig,
};

/// Builds the engine for `config`.
pub(crate) fn build_engine(config: &RuntimeConfig) -> Result<Engine, Error> {
    let pool_cfg = &config.pool;
    if pool_cfg.instances == 0 {
        return Err(Error::Config("pool.instances must be at least 1".into()));
    }
    if config.limits.max_memory > pool_cfg.max_memory {
        return Err(Error::Config(format!(
            "limits.max_memory ({}) is larger than pool.max_memory ({})",
            config.limits.max_memory, pool_cfg.max_memory
        )));
    }
    let per_component = pool_cfg.component_core_instances.max(1);
    let mut pool = PoolingAllocationConfig::default();
    // A component instance is made of several core instances (its module,
    // the WASI adapter and the small shims that tie them together); each
    // is counted against the core-instance total, so that total is scaled
    // for `instances` components (only a counter: core instance state is
    // allocated at its real size). Memories and tables are pool slots with
    // address space reserved: a component may use the memories (and GC
    // heap) a module may have, and one table more, for its shims.
    pool.total_core_instances(pool_cfg.instances * per_component)
        .total_component_instances(pool_cfg.instances)
        .max_core_instances_per_component(per_component)
        .max_memories_per_component(pool_cfg.memories_per_module + 1)
        .max_tables_per_component(pool_cfg.tables_per_module + 1)
        // Each instance's GC heap (where thrown exceptions and GC objects
        // live, made on first use) is a memory from the same pool.
        .total_memories(pool_cfg.instances * (pool_cfg.memories_per_module + 1))
        // A component (the C module's table and the table of
        // wit-component's shim) takes `tables_per_module` + 1 table slots,
        // as it takes memories: so every instance slot can hold one.
        // (Each table slot reserves `table_elements` writable entries; a
        // compiling child, which runs under RLIMIT_DATA, builds a one-slot
        // pool, as it instantiates nothing.)
        .total_tables(pool_cfg.instances * (pool_cfg.tables_per_module + 1))
        .max_memories_per_module(pool_cfg.memories_per_module)
        .max_tables_per_module(pool_cfg.tables_per_module)
        .max_memory_size(to_usize(pool_cfg.max_memory, "pool.max_memory")?)
        .table_elements(to_usize(pool_cfg.table_elements, "pool.table_elements")?)
        .max_core_instance_size(to_usize(
            pool_cfg.max_core_instance_size,
            "pool.max_core_instance_size",
        )?)
        .linear_memory_keep_resident(to_usize(pool_cfg.keep_resident, "pool.keep_resident")?)
        .table_keep_resident(to_usize(pool_cfg.keep_resident, "pool.keep_resident")?)
        // Where the kernel has PAGEMAP_SCAN (Linux 6.7+), reset only the
        // pages an instance dirtied, instead of a fixed prefix or the lot.
        .pagemap_scan(if pool_cfg.pagemap_scan {
            Enabled::Auto
        } else {
            Enabled::No
        })
        .total_gc_heaps(pool_cfg.instances)
        // Every invocation runs on a fiber stack (guests are futures): one
        // per slot, taken from the pool like the slot itself.
        .total_stacks(pool_cfg.instances)
        .async_stack_keep_resident(to_usize(
            pool_cfg.stack_keep_resident,
            "pool.stack_keep_resident",
        )?);

    let mut c = Config::new();
    c.allocation_strategy(InstanceAllocationStrategy::Pooling(pool))
        .memory_init_cow(true)
        .epoch_interruption(true)
        .consume_fuel(config.fuel_metering)
        .parallel_compilation(config.parallel_compilation)
        .cranelift_opt_level(OptLevel::Speed)
        .max_wasm_stack(config.max_wasm_stack)
        .async_stack_size(pool_cfg.stack_size)
        .async_stack_zeroing(pool_cfg.stack_zeroing);
    // No `async_support(true)`: in wasmtime 48 it is a deprecated no-op;
    // a store is async because it is driven with `instantiate_async` and
    // `call_async`, and the WASI linker's functions are async.
    wasmlet_snapshotter::enable_wasm_features(&mut c);
    Engine::new(&c).map_err(|e| Error::Config(format!("{e:#}")))
}

fn to_usize(v: u64, what: &str) -> Result<usize, Error> {
    usize::try_from(v).map_err(|_| Error::Config(format!("{what} is too large: {v}")))
}

/// A digest of everything that makes compiled code usable by an engine: the
/// engine's own compatibility hash (wasmtime version, target, settings) and
/// this crate's version. Part of every cache key and artifact header.
pub(crate) fn engine_fingerprint(engine: &Engine) -> [u8; 32] {
    struct ShaHasher(Sha256);
    impl Hasher for ShaHasher {
        fn finish(&self) -> u64 {
            unreachable!("only the full digest is used")
        }
        fn write(&mut self, bytes: &[u8]) {
            self.0.update(bytes);
        }
    }
    let mut h = ShaHasher(Sha256::new());
    h.write(b"wasmlet-runtime ");
    h.write(env!("CARGO_PKG_VERSION").as_bytes());
    engine.precompile_compatibility_hash().hash(&mut h);
    h.0.finalize().into()
}

/// Turns the pooling allocator's refusal of a module (a multi-line message
/// from wasmtime) into one line naming the setting that would admit it.
pub(crate) fn explain_pool_error(err: &wasmtime::Error, config: &RuntimeConfig) -> Option<String> {
    let msg = format!("{err:#}");
    let pool = &config.pool;
    let num_after = |needle: &str| -> Option<u64> {
        let rest = &msg[msg.find(needle)? + needle.len()..];
        let digits: String = rest
            .trim_start()
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        digits.parse().ok()
    };
    if msg.contains("instance allocation for this module requires") {
        let need = num_after("requires")?;
        return Some(format!(
            "its instance state needs {need} bytes, more than pool.max_core_instance_size ({}); raise pool.max_core_instance_size",
            pool.max_core_instance_size
        ));
    }
    if let Some(n) = num_after("defined memories count of") {
        return Some(format!(
            "it defines {n} memories, more than pool.memories_per_module ({}); raise pool.memories_per_module",
            pool.memories_per_module
        ));
    }
    if let Some(n) = num_after("defined tables count of") {
        return Some(format!(
            "it defines {n} tables, more than pool.tables_per_module ({}); raise pool.tables_per_module",
            pool.tables_per_module
        ));
    }
    if let Some(n) = num_after("has a minimum element size of") {
        return Some(format!(
            "a table starts with {n} elements, more than pool.table_elements ({}); raise pool.table_elements",
            pool.table_elements
        ));
    }
    if let Some(n) = num_after("memory has a minimum byte size of") {
        return Some(format!(
            "a memory starts at {n} bytes, more than pool.max_memory ({}); raise pool.max_memory",
            pool.max_memory
        ));
    }
    if msg.contains("memory is shared which is not supported") {
        return Some("shared memories (wasm threads) are not supported".into());
    }
    None
}
