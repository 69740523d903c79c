//! What a snapshot run may do.

use crate::prescan::CompileCaps;
use sha2::{Digest, Sha256};
use std::path::PathBuf;
use std::time::Duration;

/// Init functions tried, in order, when none is named: Wizer's convention
/// (used by the language toolchains), its newer spelling, then WASI's
/// reactor initializer.
pub const DEFAULT_INIT_FUNCS: [&str; 3] = ["wizer.initialize", "wizer-initialize", "_initialize"];
/// Memory init may use: 4 GiB (all of wasm32).
pub const DEFAULT_MAX_MEMORY: u64 = 4 << 30;
/// Wall-clock time init may take.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// Options of one snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotOptions {
    /// The init function; `None` tries [`DEFAULT_INIT_FUNCS`].
    pub init_func: Option<String>,
    /// Let init call WASI (with exactly the dirs and env below). Without it,
    /// a WASI call during init is an error naming the import.
    pub allow_wasi: bool,
    /// Directories init may read: `(host, guest)`.
    pub dirs: Vec<(PathBuf, String)>,
    /// Environment init sees.
    pub env: Vec<(String, String)>,
    /// Link imports nobody provides as functions that trap when called.
    pub trap_unknown_imports: bool,
    /// Function imports (`module::name`) that an embedding runtime
    /// provides to invocations but init does not have: linked as functions
    /// that refuse to run, so a module importing them can be
    /// pre-initialized as long as its init does not call them. (Not part
    /// of the digest: they cannot change a snapshot, only refuse one.)
    pub host_imports: Vec<String>,
    /// Linear memory init may grow to, in bytes.
    pub max_memory: u64,
    /// Wall-clock limit on init.
    pub timeout: Duration,
    /// Caps on the module, checked before it is instrumented and compiled.
    /// (They refuse inputs; they do not change a snapshot, so they are not
    /// part of [`SnapshotOptions::digest`].)
    pub caps: CompileCaps,
}

impl Default for SnapshotOptions {
    fn default() -> Self {
        SnapshotOptions {
            init_func: None,
            allow_wasi: false,
            dirs: Vec::new(),
            env: Vec::new(),
            trap_unknown_imports: false,
            host_imports: Vec::new(),
            max_memory: DEFAULT_MAX_MEMORY,
            timeout: DEFAULT_TIMEOUT,
            caps: CompileCaps::default(),
        }
    }
}

impl SnapshotOptions {
    /// A digest of everything that can change a snapshot's bytes, plus this
    /// crate's version: the cache key of a snapshot is the input's hash and
    /// this. (A file init reads through `dirs` is not covered: when init
    /// reads files, snapshot explicitly instead of caching.)
    pub fn digest(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(b"wasmlet-snapshotter ");
        h.update(env!("CARGO_PKG_VERSION"));
        let field = |h: &mut Sha256, s: &[u8]| {
            h.update((s.len() as u64).to_le_bytes());
            h.update(s);
        };
        field(&mut h, self.init_func.as_deref().unwrap_or("").as_bytes());
        h.update([self.allow_wasi as u8, self.trap_unknown_imports as u8]);
        for (host, guest) in &self.dirs {
            field(&mut h, host.as_os_str().as_encoded_bytes());
            field(&mut h, guest.as_bytes());
        }
        h.update(b"|env");
        for (k, v) in &self.env {
            field(&mut h, k.as_bytes());
            field(&mut h, v.as_bytes());
        }
        h.update(self.max_memory.to_le_bytes());
        h.finalize().into()
    }
}
