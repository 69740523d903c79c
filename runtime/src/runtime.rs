//! [`Runtime`]: one engine, its epoch ticker, the WASI linker and the cache;
//! and loading a module into a ready-to-invoke [`Function`].
//!
//! Loading a `.wasm` file that is in the cache reads neither the file (the
//! cache's file index knows its hash while it is unchanged) nor the entry
//! (wasmtime maps it): see `docs/architecture.md`.

use crate::artifact::{self, CodeKind, Sniff};
use crate::cache::{Cache, Key, Lookup, content_hash};
use crate::component::{self, ComponentState, OutboundHosts};
use crate::config::{Limits, RuntimeConfig};
use crate::engine::{build_engine, engine_fingerprint, explain_pool_error};
use crate::error::{ArtifactError, Error};
use crate::executor::Executor;
use crate::function::Function;
use crate::input::InputFile;
use crate::store::StoreState;
use std::collections::HashSet;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use wasmlet_snapshotter::SnapshotOptions;
use wasmtime::component::Component;
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
    /// Accept a precompiled module (a `.cwasm` from `wasmlet compile`).
    /// Precompiled code is native code that runs as is, unchecked: set this
    /// only for files from a source you trust. Without it, only wasm and WAT
    /// are accepted (the runtime's own cache is trusted by its location).
    /// A mapped file must not be modified in place while the function lives.
    pub allow_precompiled: bool,
    /// For components: the hosts `wasi:http/outgoing-handler` requests may
    /// go to (Spin's `allowed_outbound_hosts`; see [`OutboundHosts`] for
    /// the forms). Empty, the default: none. Core modules have no
    /// outgoing HTTP.
    pub allowed_outbound_hosts: Vec<String>,
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
    /// WASI preview 2 and wasi:http for components, linked on first use
    /// (a runtime that only runs modules never builds it).
    component_linker: OnceLock<wasmtime::component::Linker<ComponentState>>,
    cache: Option<Cache>,
    /// What invocations share (engine, epoch ticker, pool slot permits);
    /// every function holds it.
    executor: Arc<Executor>,
}

/// What code is built from an input: a plain compile, or a compile of its
/// snapshot. Part of the cache key.
enum Build {
    Compile,
    Snapshot(SnapshotOptions),
}

impl Build {
    fn key_tag(&self) -> Vec<u8> {
        match self {
            Build::Compile => b"compile".to_vec(),
            Build::Snapshot(opts) => [&b"snapshot:"[..], &opts.digest()].concat(),
        }
    }
}

/// Compiled code: a core module or a component.
enum Code {
    Module(Module),
    Component(Component),
}

impl Code {
    fn kind(&self) -> CodeKind {
        match self {
            Code::Module(_) => CodeKind::Module,
            Code::Component(_) => CodeKind::Component,
        }
    }
}

/// Compiled code and the cache entry it lives in, if any.
struct Compiled {
    module: Code,
    artifact: Option<PathBuf>,
}

impl Runtime {
    /// Builds a runtime. Starts the (idle until used) epoch ticker thread.
    /// Fails if the cache directory exists but cannot be trusted (owned by
    /// another user, or writable by group or others).
    pub fn new(config: RuntimeConfig) -> Result<Self, Error> {
        let engine = build_engine(&config)?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p1::add_to_linker_async(&mut linker, |s: &mut StoreState| &mut s.wasi)
            .map_err(|e| Error::Config(format!("cannot link WASI: {e:#}")))?;
        let provided = {
            let mut store = Store::new(&engine, StoreState::empty(&config.limits));
            linker
                .iter(&mut store)
                .map(|(module, name, _)| format!("{module}::{name}"))
                .collect()
        };
        let cache = match (config.cache.enabled, config.cache.dir.clone()) {
            (false, _) => None,
            (true, Some(dir)) => Some(Cache::open(dir)?),
            (true, None) => Cache::default_root().map(Cache::open).transpose()?,
        };
        let executor = Arc::new(Executor::new(engine.clone(), config.clone())?);
        Ok(Runtime {
            inner: Arc::new(RuntimeInner {
                fingerprint: engine_fingerprint(&engine),
                engine,
                config,
                linker,
                provided,
                component_linker: OnceLock::new(),
                cache,
                executor,
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

    /// Loads a `.wasm` or `.wat` file (or, with
    /// [`LoadOptions::allow_precompiled`], a `.cwasm` from `wasmlet
    /// compile`). The file must be a regular file of at most
    /// `RuntimeConfig::max_module_size` bytes.
    ///
    /// On a cache hit the module's code and memory images are mapped from
    /// the cache entry, not read; and a file that has not changed since it
    /// was last loaded is not read either.
    pub fn load_file(&self, path: impl AsRef<Path>, opts: &LoadOptions) -> Result<Function, Error> {
        let input = InputFile::open(path.as_ref(), self.inner.config.max_module_size)?;
        self.load_input(input, opts)
    }

    /// Loads a module from an open file: a precompiled artifact handed over
    /// by a more privileged process (with [`LoadOptions::allow_precompiled`]),
    /// or wasm/WAT. `name` is only used in messages.
    pub fn load_open_file(
        &self,
        file: File,
        name: impl Into<PathBuf>,
        opts: &LoadOptions,
    ) -> Result<Function, Error> {
        let input = InputFile::from_file(name.into(), file, self.inner.config.max_module_size)?;
        self.load_input(input, opts)
    }

    fn load_input(&self, input: InputFile, opts: &LoadOptions) -> Result<Function, Error> {
        if is_precompiled(input.sniff(), opts)? {
            let len = input.meta.len();
            let trailer = artifact::read_trailer(&input.file, len, &self.inner.fingerprint)?;
            let module = self.map_artifact(input.file, None, trailer.kind)?;
            return self.link(
                Compiled {
                    module,
                    artifact: Some(input.path),
                },
                opts,
            );
        }
        let build = self.build_for(opts);
        let Some(cache) = &self.inner.cache else {
            let module = self.build(&input.read()?, &build)?;
            return self.link(
                Compiled {
                    module,
                    artifact: None,
                },
                opts,
            );
        };
        let (content, mut bytes) = match cache.indexed_hash(&input.meta) {
            Some(hash) => {
                tracing::debug!(path = %input.path.display(), "file index hit");
                (hash, None)
            }
            None => {
                tracing::debug!(path = %input.path.display(), "file index miss: hashing");
                let bytes = input.read()?;
                let hash = content_hash(&bytes);
                cache.index(&input.meta, &hash);
                (hash, Some(bytes))
            }
        };
        let key = Key::new(&self.inner.fingerprint, &build.key_tag(), &content);
        if let Some(hit) = self.cache_hit(cache, &key) {
            return self.link(hit, opts);
        }
        // A miss: compile what the file holds now, stored under the hash of
        // exactly these bytes. (After an index hit the bytes are hashed
        // again: the index only says what the file held when it was
        // recorded, and code must never be stored under a hash its source
        // was not checked against.)
        let (bytes, key) = match bytes.take() {
            Some(b) => (b, key),
            None => {
                let b = input.read()?;
                let hash = content_hash(&b);
                if hash == content {
                    (b, key)
                } else {
                    tracing::debug!(path = %input.path.display(), "file changed behind the index");
                    cache.index(&input.meta, &hash);
                    let key = Key::new(&self.inner.fingerprint, &build.key_tag(), &hash);
                    if let Some(hit) = self.cache_hit(cache, &key) {
                        return self.link(hit, opts);
                    }
                    (b, key)
                }
            }
        };
        let compiled = self.build_and_store(cache, &key, &bytes, &build)?;
        self.link(compiled, opts)
    }

    /// Loads a module from its bytes (wasm, WAT text, or with
    /// [`LoadOptions::allow_precompiled`] a wasmlet artifact): compiles it
    /// (or takes it from the cache) and links it once.
    pub fn load_bytes(&self, bytes: &[u8], opts: &LoadOptions) -> Result<Function, Error> {
        if is_precompiled(artifact::sniff(bytes), opts)? {
            let (trailer, payload) = artifact::decode(bytes, &self.inner.fingerprint)?;
            let module = match trailer.kind {
                CodeKind::Module => {
                    // SAFETY: the caller opted in to running this
                    // precompiled code (`allow_precompiled`), vouching that
                    // it is the output of `Module::serialize`; its trailer
                    // names this engine and says it is a module.
                    let m = unsafe { Module::deserialize(&self.inner.engine, payload) };
                    m.map(Code::Module)
                }
                CodeKind::Component => {
                    // SAFETY: as above, the output of
                    // `Component::serialize` (the trailer says it is a
                    // component).
                    let c = unsafe { Component::deserialize(&self.inner.engine, payload) };
                    c.map(Code::Component)
                }
            }
            .map_err(|e| self.deserialize_error(e))?;
            return self.link(
                Compiled {
                    module,
                    artifact: None,
                },
                opts,
            );
        }
        let build = self.build_for(opts);
        let Some(cache) = &self.inner.cache else {
            let module = self.build(bytes, &build)?;
            return self.link(
                Compiled {
                    module,
                    artifact: None,
                },
                opts,
            );
        };
        let key = Key::new(
            &self.inner.fingerprint,
            &build.key_tag(),
            &content_hash(bytes),
        );
        let compiled = match self.cache_hit(cache, &key) {
            Some(hit) => hit,
            None => self.build_and_store(cache, &key, bytes, &build)?,
        };
        self.link(compiled, opts)
    }

    /// Compiles a module (wasm or WAT) into a wasmlet artifact, the format of
    /// `wasmlet compile`'s `.cwasm` files (taken from the cache when there).
    pub fn precompile(&self, bytes: &[u8]) -> Result<Vec<u8>, Error> {
        if artifact::sniff(bytes) != Sniff::Source {
            return Err(Error::NotWasm("input is already precompiled".into()));
        }
        let key = Key::new(
            &self.inner.fingerprint,
            &Build::Compile.key_tag(),
            &content_hash(bytes),
        );
        if let Some(cache) = &self.inner.cache {
            let path = match self.cache_hit(cache, &key) {
                Some(Compiled {
                    artifact: Some(path),
                    ..
                }) => path,
                _ => match self.build_and_store(cache, &key, bytes, &Build::Compile)? {
                    Compiled {
                        artifact: Some(path),
                        ..
                    } => path,
                    Compiled { module, .. } => return self.encode(&key, &module),
                },
            };
            return std::fs::read(&path).map_err(|e| Error::io(&path, e));
        }
        let module = self.build(bytes, &Build::Compile)?;
        self.encode(&key, &module)
    }

    fn encode(&self, key: &Key, code: &Code) -> Result<Vec<u8>, Error> {
        Ok(artifact::encode(
            self.inner.fingerprint,
            key.0,
            code.kind(),
            &self.serialize(code)?,
        ))
    }

    fn build_for(&self, opts: &LoadOptions) -> Build {
        match opts
            .snapshot
            .clone()
            .or_else(|| self.inner.config.snapshot.then(SnapshotOptions::default))
        {
            Some(snap) => Build::Snapshot(snap),
            None => Build::Compile,
        }
    }

    /// The cache entry for `key`, mapped, if there is a usable one.
    fn cache_hit(&self, cache: &Cache, key: &Key) -> Option<Compiled> {
        match cache.get(key, &self.inner.fingerprint) {
            Lookup::Hit(file, path, kind) => {
                match self.map_artifact(file, Some(&path), kind).inspect(|_| {
                    tracing::debug!(entry = %path.display(), "cache hit: mapped");
                }) {
                    Ok(module) => Some(Compiled {
                        module,
                        artifact: Some(path),
                    }),
                    Err(e) => {
                        tracing::warn!("unusable cache entry {}: {e}; recompiling", path.display());
                        None
                    }
                }
            }
            Lookup::Bad(why) => {
                tracing::warn!("unusable cache entry: {why}; recompiling");
                None
            }
            Lookup::Miss => {
                tracing::debug!("cache miss");
                None
            }
        }
    }

    /// Builds the code for `bytes` and stores it under `key`. A cache that
    /// cannot be written slows the next start; it is not an error.
    fn build_and_store(
        &self,
        cache: &Cache,
        key: &Key,
        bytes: &[u8],
        build: &Build,
    ) -> Result<Compiled, Error> {
        let module = self.build(bytes, build)?;
        let payload = self.serialize(&module)?;
        let artifact = match cache.put(key, self.inner.fingerprint, module.kind(), &payload) {
            Ok(path) => Some(path),
            Err(e) => {
                tracing::warn!("cannot write compilation cache: {e}");
                None
            }
        };
        Ok(Compiled { module, artifact })
    }

    /// Compiles `bytes` (wasm, WAT, or a component), after pre-initializing
    /// it if asked and it has an init function.
    fn build(&self, bytes: &[u8], build: &Build) -> Result<Code, Error> {
        let wasm = to_wasm(bytes)?;
        if component::is_component_binary(&wasm) {
            if let Build::Snapshot(_) = build {
                return Err(Error::Snapshot(
                    wasmlet_snapshotter::SnapshotError::Unsupported(
                        "snapshots of components are not supported yet; load it without a snapshot"
                            .into(),
                    ),
                ));
            }
            return self.compile_component(&wasm).map(Code::Component);
        }
        match build {
            Build::Snapshot(opts) if wasmlet_snapshotter::has_init_func(&wasm, opts) => {
                let snapshot = wasmlet_snapshotter::snapshot(&wasm, opts)?;
                self.compile(&snapshot).map(Code::Module)
            }
            _ => self.compile(&wasm).map(Code::Module),
        }
    }

    fn serialize(&self, code: &Code) -> Result<Vec<u8>, Error> {
        match code {
            Code::Module(m) => m.serialize(),
            Code::Component(c) => c.serialize(),
        }
        .map_err(|e| Error::Compile(format!("cannot serialize compiled code: {e:#}")))
    }

    /// Maps an artifact file whose trailer was checked (`path`, when known,
    /// is where it is: components are mapped by path).
    fn map_artifact(&self, file: File, path: Option<&Path>, kind: CodeKind) -> Result<Code, Error> {
        match (kind, path) {
            (CodeKind::Module, _) => {
                // SAFETY: `file` is an artifact for this engine (its trailer
                // was checked) that is trusted: either an entry of our own
                // cache (owned by us, writable by nobody else, recorded for
                // the key we asked for; entries are replaced by rename,
                // never changed in place, so the mapped inode stays as
                // written) or a file the caller opted in to with
                // `allow_precompiled`, whose documented contract is that it
                // is wasmtime output and is not modified while mapped.
                let m = unsafe { Module::deserialize_open_file(&self.inner.engine, file) };
                m.map(Code::Module)
            }
            (CodeKind::Component, Some(path)) => {
                // SAFETY: only cache hits come with a path: a trusted cache
                // entry (see above), mapped by its path. Entries are only
                // ever replaced by rename with an entry of the same key, so
                // whichever inode the path names now is this component's
                // code for this engine (the trailer says it is a component,
                // and wasmtime checks its own header again).
                let c = unsafe { Component::deserialize_file(&self.inner.engine, path) };
                c.map(Code::Component)
            }
            (CodeKind::Component, None) => {
                let len = file
                    .metadata()
                    .map_err(|e| Error::Input(e.to_string()))?
                    .len();
                let mut bytes = Vec::new();
                std::io::Read::read_to_end(&mut &file, &mut bytes)
                    .map_err(|e| Error::Input(e.to_string()))?;
                let payload_len = len.saturating_sub(artifact::TRAILER_LEN as u64) as usize;
                bytes.truncate(payload_len);
                // SAFETY: a file the caller opted in to with
                // `allow_precompiled` (see above); read into memory, so a
                // later change to the file cannot reach the code.
                unsafe { Component::deserialize(&self.inner.engine, &bytes) }.map(Code::Component)
            }
        }
        .map_err(|e| self.deserialize_error(e))
    }

    fn deserialize_error(&self, e: wasmtime::Error) -> Error {
        match explain_pool_error(&e, &self.inner.config) {
            Some(msg) => Error::Pool(msg),
            None => ArtifactError::Deserialize(one_line(&format!("{e:#}"))).into(),
        }
    }

    /// Compiles wasm, after checking it against the compile caps (see
    /// [`crate::prescan`]): the one place the runtime compiles.
    fn compile(&self, wasm: &[u8]) -> Result<Module, Error> {
        crate::prescan::check(wasm, &self.inner.config.compile)?;
        if !self.inner.config.compile.in_process {
            return Err(Error::NotCompiled);
        }
        Module::from_binary(&self.inner.engine, wasm).map_err(|e| {
            match explain_pool_error(&e, &self.inner.config) {
                Some(msg) => Error::Pool(msg),
                None => Error::Compile(one_line(&format!("{e:#}"))),
            }
        })
    }

    /// Compiles a component, after checking its core modules against the
    /// compile caps.
    fn compile_component(&self, wasm: &[u8]) -> Result<Component, Error> {
        crate::prescan::check(wasm, &self.inner.config.compile)?;
        if !self.inner.config.compile.in_process {
            return Err(Error::NotCompiled);
        }
        Component::from_binary(&self.inner.engine, wasm).map_err(|e| {
            match explain_pool_error(&e, &self.inner.config) {
                Some(msg) => Error::Pool(msg),
                None => Error::Compile(one_line(&format!("{e:#}"))),
            }
        })
    }

    /// Links compiled code into a [`Function`].
    fn link(&self, compiled: Compiled, opts: &LoadOptions) -> Result<Function, Error> {
        let limits = opts
            .limits
            .clone()
            .unwrap_or_else(|| self.inner.config.limits.clone());
        let Compiled { module, artifact } = compiled;
        let module = match module {
            Code::Module(m) => m,
            Code::Component(c) => {
                let linker = match self.inner.component_linker.get() {
                    Some(l) => l,
                    None => {
                        let l = component::linker(&self.inner.engine)?;
                        self.inner.component_linker.get_or_init(|| l)
                    }
                };
                let outbound = Arc::new(OutboundHosts::parse(&opts.allowed_outbound_hosts)?);
                let code = component::link(linker, c, opts.trap_unknown_imports, outbound)?;
                return Ok(Function::new_component(
                    self.inner.executor.clone(),
                    code,
                    limits,
                    artifact,
                ));
            }
        };
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
        Ok(Function::new(
            self.inner.executor.clone(),
            module,
            pre,
            limits,
            artifact,
        ))
    }
}

/// Whether an input is a precompiled artifact that may be loaded; an error
/// for one the caller did not opt in to, and for the old artifact format.
fn is_precompiled(sniff: Sniff, opts: &LoadOptions) -> Result<bool, Error> {
    match sniff {
        Sniff::Precompiled if opts.allow_precompiled => Ok(true),
        Sniff::Precompiled => Err(ArtifactError::NotAllowed.into()),
        Sniff::OldArtifact => Err(ArtifactError::Version(1, artifact::FORMAT_VERSION).into()),
        Sniff::Source => Ok(false),
    }
}

/// Joins a multi-line message into one line.
fn one_line(msg: &str) -> String {
    msg.split('\n')
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Accepts wasm binaries and WAT text; refuses anything else clearly.
pub(crate) fn to_wasm(bytes: &[u8]) -> Result<std::borrow::Cow<'_, [u8]>, Error> {
    if bytes.starts_with(b"\0asm") {
        if bytes.len() >= 8 && bytes[4..8] != [1, 0, 0, 0] && !component::is_component_binary(bytes)
        {
            return Err(Error::NotWasm(
                "unknown WebAssembly binary version (neither a core module nor a component)".into(),
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
