//! [`Runtime`]: one engine, its epoch ticker, the WASI linker and the cache;
//! and loading a module into a ready-to-invoke [`Function`].

use crate::artifact;
use crate::cache::{Cache, Lookup};
use crate::config::{Limits, RuntimeConfig};
use crate::engine::{EpochTicker, build_engine, engine_fingerprint};
use crate::error::{ArtifactError, Error};
use crate::function::{Function, StoreState};
use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use wasmlet_snapshotter::SnapshotOptions;
use wasmtime::{Engine, Linker, Module, Store};

/// Options for [`Runtime::load_file`] and [`Runtime::load_bytes`].
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// Link imports the host does not provide as functions that trap when
    /// called, instead of refusing the module.
    pub trap_unknown_imports: bool,
    /// Limits for this function's invocations; `None` uses the runtime's.
    pub limits: Option<Limits>,
    /// Pre-initialize with these options before compiling; `None` follows
    /// `RuntimeConfig::snapshot` (with default options).
    pub snapshot: Option<SnapshotOptions>,
}

/// The executor: owns the engine configured for serving, and turns modules
/// into [`Function`]s. Cheap to clone; every clone shares one engine.
#[derive(Clone)]
pub struct Runtime {
    pub(crate) inner: Arc<RuntimeInner>,
}

pub(crate) struct RuntimeInner {
    pub(crate) engine: Engine,
    pub(crate) config: RuntimeConfig,
    /// Digest identifying code this engine can run; keys cache entries.
    fingerprint: [u8; 32],
    /// WASI preview 1, linked once; each function clones it.
    linker: Linker<StoreState>,
    /// `module::name` of every import the linker provides.
    provided: HashSet<String>,
    cache: Option<Cache>,
    pub(crate) ticker: EpochTicker,
    /// One permit per pool slot: `invoke_async` waits for a free slot
    /// instead of failing when the pool is full.
    pub(crate) slots: Arc<tokio::sync::Semaphore>,
}

impl Runtime {
    /// Builds a runtime. Starts the (idle until used) epoch ticker thread.
    pub fn new(config: RuntimeConfig) -> Result<Self, Error> {
        let engine = build_engine(&config)?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p1::add_to_linker_sync(&mut linker, |s: &mut StoreState| &mut s.wasi)
            .map_err(|e| Error::Config(format!("cannot link WASI: {e:#}")))?;
        let provided = {
            let mut store = Store::new(&engine, StoreState::empty(&config.limits));
            linker
                .iter(&mut store)
                .map(|(module, name, _)| format!("{module}::{name}"))
                .collect()
        };
        let cache = config.cache.enabled.then(|| {
            config
                .cache
                .dir
                .clone()
                .or_else(Cache::default_root)
                .map(Cache::new)
        });
        let ticker = EpochTicker::start(engine.clone(), config.epoch_tick)?;
        let slots = config.pool.instances as usize;
        Ok(Runtime {
            inner: Arc::new(RuntimeInner {
                fingerprint: engine_fingerprint(&engine),
                engine,
                config,
                linker,
                provided,
                cache: cache.flatten(),
                ticker,
                slots: Arc::new(tokio::sync::Semaphore::new(slots)),
            }),
        })
    }

    /// The wasmtime engine.
    pub fn engine(&self) -> &Engine {
        &self.inner.engine
    }

    /// The configuration this runtime was built with.
    pub fn config(&self) -> &RuntimeConfig {
        &self.inner.config
    }

    /// The pre-compilation cache, if enabled.
    pub fn cache(&self) -> Option<&Cache> {
        self.inner.cache.as_ref()
    }

    /// Loads a `.wasm`, `.wat` or wasmlet `.cwasm` file.
    pub fn load_file(&self, path: impl AsRef<Path>, opts: &LoadOptions) -> Result<Function, Error> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        self.load_bytes(&bytes, opts)
    }

    /// Loads a module from its bytes (wasm, WAT text or a wasmlet artifact):
    /// compiles it (or takes it from the cache) and links it once.
    pub fn load_bytes(&self, bytes: &[u8], opts: &LoadOptions) -> Result<Function, Error> {
        let snapshot = opts
            .snapshot
            .clone()
            .or_else(|| self.inner.config.snapshot.then(SnapshotOptions::default));
        let module = match snapshot {
            Some(snap) if !artifact::is_artifact(bytes) => {
                let wasm = to_wasm(bytes)?;
                if wasmlet_snapshotter::has_init_func(&wasm, &snap) {
                    let snapshot = self.snapshot_cached(&wasm, &snap)?;
                    self.compile_cached(&snapshot)?
                } else {
                    self.compile_cached(&wasm)?
                }
            }
            _ => self.module(bytes)?,
        };
        self.link(module, opts)
    }

    /// Pre-initializes `wasm`, or takes the snapshot from the cache (keyed by
    /// the input and the options; entries are checksummed artifacts).
    fn snapshot_cached(&self, wasm: &[u8], opts: &SnapshotOptions) -> Result<Vec<u8>, Error> {
        let Some(cache) = &self.inner.cache else {
            return Ok(wasmlet_snapshotter::snapshot(wasm, opts)?);
        };
        let digest = opts.digest();
        let key = Cache::key(wasm, &digest, "snapshot");
        match cache.get(&key, &digest) {
            Lookup::Hit(snapshot) => return Ok(snapshot),
            Lookup::Bad(e) => {
                tracing::warn!(key, "unusable cached snapshot ({e}); snapshotting again")
            }
            Lookup::Miss => {}
        }
        let snapshot = wasmlet_snapshotter::snapshot(wasm, opts)?;
        if let Err(e) = cache.put(&key, &artifact::encode(&digest, &snapshot)) {
            tracing::warn!("cannot write snapshot cache: {e}");
        }
        Ok(snapshot)
    }

    /// Compiles a module (wasm or WAT) into a wasmlet artifact, the format of
    /// `wasmlet compile`'s `.cwasm` files.
    pub fn precompile(&self, bytes: &[u8]) -> Result<Vec<u8>, Error> {
        if artifact::is_artifact(bytes) {
            return Err(Error::NotWasm("input is already precompiled".into()));
        }
        let module = self.module(bytes)?;
        Ok(artifact::encode(
            &self.inner.fingerprint,
            &self.serialize(&module)?,
        ))
    }

    fn serialize(&self, module: &Module) -> Result<Vec<u8>, Error> {
        module
            .serialize()
            .map_err(|e| Error::Compile(format!("cannot serialize compiled module: {e:#}")))
    }

    /// Turns input bytes into a compiled module.
    pub(crate) fn module(&self, bytes: &[u8]) -> Result<Module, Error> {
        if artifact::is_artifact(bytes) || bytes.starts_with(b"\x7fELF") {
            let payload = artifact::decode(bytes, &self.inner.fingerprint)?;
            return self.deserialize(payload).map_err(Error::Artifact);
        }
        let wasm = to_wasm(bytes)?;
        self.compile_cached(&wasm)
    }

    fn deserialize(&self, payload: &[u8]) -> Result<Module, ArtifactError> {
        // SAFETY: `payload` comes out of `artifact::decode`, which checked
        // that it was written by `Module::serialize` of an engine with this
        // engine's fingerprint and that its sha256 matches, so it is the
        // trusted wasmtime output that `deserialize` requires.
        unsafe { Module::deserialize(&self.inner.engine, payload) }
            .map_err(|e| ArtifactError::Deserialize(format!("{e:#}")))
    }

    fn compile_cached(&self, wasm: &[u8]) -> Result<Module, Error> {
        let Some(cache) = &self.inner.cache else {
            return self.compile(wasm);
        };
        let key = Cache::key(wasm, &self.inner.fingerprint, "cwasm");
        match cache.get(&key, &self.inner.fingerprint) {
            Lookup::Hit(payload) => match self.deserialize(&payload) {
                Ok(m) => return Ok(m),
                Err(e) => tracing::warn!(key, "unusable cache entry ({e}); recompiling"),
            },
            Lookup::Bad(e) => tracing::warn!(key, "unusable cache entry ({e}); recompiling"),
            Lookup::Miss => {}
        }
        let module = self.compile(wasm)?;
        let encoded = artifact::encode(&self.inner.fingerprint, &self.serialize(&module)?);
        if let Err(e) = cache.put(&key, &encoded) {
            // A read-only or full cache slows the next start; it is not an error.
            tracing::warn!("cannot write compilation cache: {e}");
        }
        Ok(module)
    }

    fn compile(&self, wasm: &[u8]) -> Result<Module, Error> {
        Module::from_binary(&self.inner.engine, wasm).map_err(|e| Error::Compile(format!("{e:#}")))
    }

    /// Links a compiled module into a [`Function`].
    pub(crate) fn link(&self, module: Module, opts: &LoadOptions) -> Result<Function, Error> {
        let mut linker = self.inner.linker.clone();
        if opts.trap_unknown_imports {
            linker
                .define_unknown_imports_as_traps(&module)
                .map_err(|e| Error::Link(format!("{e:#}")))?;
        } else {
            let missing: Vec<String> = module
                .imports()
                .map(|i| format!("{}::{}", i.module(), i.name()))
                .filter(|name| !self.inner.provided.contains(name))
                .collect();
            if !missing.is_empty() {
                return Err(Error::UnknownImports(missing));
            }
        }
        let pre = linker
            .instantiate_pre(&module)
            .map_err(|e| Error::Link(format!("{e:#}")))?;
        let limits = opts
            .limits
            .clone()
            .unwrap_or_else(|| self.inner.config.limits.clone());
        Ok(Function::new(self.clone(), module, pre, limits))
    }
}

/// Accepts wasm binaries and WAT text; refuses anything else clearly.
pub(crate) fn to_wasm(bytes: &[u8]) -> Result<std::borrow::Cow<'_, [u8]>, Error> {
    if bytes.starts_with(b"\0asm") {
        if bytes.len() >= 8 && bytes[4..8] != [1, 0, 0, 0] {
            return Err(Error::NotWasm(
                "this is a WebAssembly component or an unknown binary version; wasmlet runs core modules".into(),
            ));
        }
        return Ok(bytes.into());
    }
    let text = std::str::from_utf8(bytes)
        .map_err(|_| Error::NotWasm("the file is neither wasm binary nor WAT text".into()))?;
    let trimmed = text.trim_start();
    if !(trimmed.starts_with('(') || trimmed.starts_with(";;") || trimmed.starts_with("(;")) {
        return Err(Error::NotWasm(
            "the file is neither wasm binary nor WAT text".into(),
        ));
    }
    wat::parse_str(text)
        .map(Into::into)
        .map_err(|e| Error::Compile(e.to_string().replace('\n', " ")))
}
