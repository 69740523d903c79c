//! Bounded compiles.
//!
//! Compiling is the one step of loading whose cost a module's author
//! controls beyond its size: a 4 MB module of a million empty functions
//! takes Cranelift 84 s and 5.5 GB. Two layers bound it:
//!
//! 1. **Caps**, checked here before every compilation the runtime does (and
//!    by the snapshotter before it instruments): module size, functions,
//!    function body size, locals, data (the caps of [`CompileLimits`],
//!    counted by a scan of section and body headers). A module over one is
//!    refused with [`Error::TooLarge`], which names the cap and its setting.
//! 2. **A budget**: time and memory of a compilation run in a child process
//!    ([`CompileLimits::timeout`], [`CompileLimits::max_memory`]). A module
//!    under every cap can still be slow to compile, and a compiler that runs
//!    out of memory aborts its process, so this layer needs a process of its
//!    own. See [`limit_own_memory`] for how an embedder sets it up; the
//!    `wasmlet` CLI does exactly that.

use crate::config::CompileLimits;
use crate::error::Error;

pub use wasmlet_snapshotter::prescan::{
    CapExceeded, CompileCaps, DEFAULT_MAX_DATA_SIZE, DEFAULT_MAX_FUNCTION_SIZE,
    DEFAULT_MAX_FUNCTIONS, DEFAULT_MAX_LOCALS, DEFAULT_MAX_WASM_SIZE,
};

/// Refuses `wasm` if it is over one of the caps in `limits`.
pub fn check(wasm: &[u8], limits: &CompileLimits) -> Result<(), Error> {
    Ok(wasmlet_snapshotter::prescan(wasm, &limits.caps())?)
}

/// Caps this process's data (heap and writable private mappings) at
/// `bytes` with `RLIMIT_DATA`: call it first thing in a process that
/// compiles, so a compilation that would use more fails there instead of
/// exhausting the machine.
///
/// `RLIMIT_DATA`, not `RLIMIT_AS`: an engine reserves terabytes of address
/// space for its instance pool up front (inaccessible, so not counted as
/// data), which no address-space limit would admit.
///
/// # Bounding compilation in an embedder
///
/// The caps are checked on every compile; to also bound time and memory,
/// compile where running out of either costs only a child process:
///
/// 1. in the serving process, set `compile.in_process = false`: loading
///    then maps cached or precompiled code and fails with
///    [`Error::NotCompiled`] (after the caps are checked) instead of
///    compiling;
/// 2. on that error, start a child (your own binary with a private
///    argument, as `wasmlet compile-worker` is) that calls
///    `limit_own_memory(limits.max_memory)` first, builds a
///    [`crate::Runtime`] from the *same* [`crate::RuntimeConfig`] but with
///    `in_process = true` (so the code matches the parent's engine),
///    [`crate::Runtime::precompile`]s the module (which also fills the
///    cache, if on) and writes the artifact to a private file the parent
///    names;
/// 3. in the parent, wait at most [`CompileLimits::timeout`] and kill the
///    child if it is still running; a child that died of a failed
///    allocation or `ENOMEM` is over the memory budget;
/// 4. load the child's file in the parent with
///    [`crate::Runtime::load_file`] and
///    [`crate::LoadOptions::allow_precompiled`] (it is mapped, and checked
///    against this engine's fingerprint); the next load of the same module
///    is a cache hit and needs no child.
///
/// `src/cli/bounded.rs` in the `wasmlet` repository is a complete example.
pub fn limit_own_memory(bytes: u64) -> Result<(), Error> {
    let limit = libc::rlimit {
        rlim_cur: bytes as libc::rlim_t,
        rlim_max: bytes as libc::rlim_t,
    };
    // SAFETY: setrlimit reads the struct we pass and touches no other memory.
    if unsafe { libc::setrlimit(libc::RLIMIT_DATA, &limit) } != 0 {
        return Err(Error::Config(format!(
            "cannot limit compile memory: {}",
            std::io::Error::last_os_error()
        )));
    }
    Ok(())
}
