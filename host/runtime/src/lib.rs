//! spade-runtime: the operator runtime. It loads operator plugins (WASI 0.2 components that
//! export the `spade:operator` `plugin` world), checks their imports against what they were
//! granted, caches their compiled code on disk, and runs every operator call in a fresh,
//! sandboxed `Store` ([`Runtime`] implements [`spade_api::OperatorHost`]).
//!
//! Built once per process: the `Engine` (pooling allocator when the address space allows it,
//! epoch interruption, one ticker thread), the `Linker` (WASI 0.2 sync + spade imports), and
//! per plugin an `InstancePre`. Built per call: `WasiCtx` + `Store` + instance.
//!
//! Sandbox of one call: the invocation's workspace is the only preopened directory,
//! read-write, mounted at `/` (also the guest's cwd), so relative and absolute paths both
//! resolve inside it and `..`/symlink escapes are refused by wasmtime-wasi (cap-std). No env
//! vars, no args, empty stdin; stdout/stderr are captured (capped at `log_bytes`) and written
//! to the task log when the call ends (stdout as info, stderr as warn lines). Network:
//! `wasi:sockets` is linked (so components whose libc pulls it in still load) but every use
//! is denied: TCP, UDP and name lookups are disabled and the address check refuses every
//! address. Limits: wall-clock deadline and `spade kill` via epoch callbacks, and for a guest
//! blocked in a sleep, via interruptible clock subscriptions; memory and tables via a
//! `ResourceLimiter`; byte/line caps on everything the guest can make the host buffer (log,
//! output, outcome).

mod cache;
mod capability;
mod contract;
mod decode;
mod disk;
mod host;
mod manifest;
mod sandbox;

pub mod bench;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::time::{Duration, Instant};

use spade_api::{
    CancelToken, DiskQuota, Invocation, InvokeError, Limits, LogLevel, OperatorHost, Outcome, PluginInfo, TaskServices,
    Usage,
};
use wasmtime::component::{Component, Linker};
use wasmtime::{
    Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, Trap, UpdateDeadline,
};
use wasmtime_wasi::{FsPerms, WasiCtxBuilder};

use crate::cache::{Cache, sha256_hex};
use crate::capability::Import;
use crate::capability::command::{CommandCall, Hub};
use crate::capability::http::HttpGuard;
use crate::contract::{AnyPlugin, AnyPre, Detected};
use crate::disk::DiskGuard;
use crate::host::{HostState, Interrupt, PluginCtx, Stop};
use crate::sandbox::{Capture, Limiter, LineBudget};

pub use crate::capability::Capability;
pub use crate::capability::command::{CommandGrant, CommandLimits, ExecutorKind};
pub use crate::capability::http::{
    HTTP_BETWEEN_BYTES_TIMEOUT, HTTP_CONNECT_TIMEOUT, HTTP_FIRST_BYTE_TIMEOUT, HttpAllow, HttpPolicy, HttpPort,
    MAX_HTTP_REQUESTS, MAX_HTTP_RESPONSE_BYTES,
};
pub use crate::capability::tcp::{TcpAllow, TcpPolicy};
pub use crate::contract::{SUPPORTED_WIT_VERSIONS, WIT_VERSION, supports_wit_version};
pub use crate::decode::{MAX_MESSAGE_BYTES, MAX_OUTCOME_BYTES, MAX_RESET_KEYS};
pub use crate::manifest::{
    Linked, MANIFEST_FILE, MANIFEST_SECTION, Manifest, Wants, embed as embed_manifest,
    read_embedded as read_embedded_manifest,
};
pub use crate::sandbox::{MAX_LINE_BYTES, MAX_LINE_CALLS};

/// How often the epoch ticker runs: the resolution of deadlines and of `spade kill`.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Settings of a [`Runtime`].
#[derive(Clone, Debug)]
pub struct RuntimeConfig {
    /// Where precompiled components are kept (`$SPADE_CACHE_DIR`, `$XDG_CACHE_HOME/spade`
    /// or `~/.cache/spade`, chosen by the CLI). `None`: compile on every start.
    pub cache_dir: Option<PathBuf>,
    /// Try the pooling instance allocator (falls back to on-demand if it cannot be created).
    pub pooling: bool,
    /// Most component instances alive at once; further calls wait for a free slot.
    pub max_instances: u32,
    /// Ceiling of any one linear memory (the pool reserves slots of this size). Per-call
    /// [`Limits::memory_bytes`] above it is lowered to it.
    pub max_memory_bytes: usize,
    /// Limits of the `describe` call made at install time.
    pub describe_limits: Limits,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            cache_dir: None,
            pooling: true,
            max_instances: 64,
            max_memory_bytes: 1 << 30,
            describe_limits: Limits { cpu_time: Duration::from_secs(10), memory_bytes: 256 << 20, log_bytes: 64 << 10 },
        }
    }
}

impl RuntimeConfig {
    pub fn with_cache_dir(dir: impl Into<PathBuf>) -> Self {
        RuntimeConfig { cache_dir: Some(dir.into()), ..Self::default() }
    }
}

/// What the host's operator lets a plugin use beyond `log` and `output` (always granted).
/// The plugin is linked with the intersection of this and its manifest's request ([`Linked`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Grants {
    /// Secret keys `secrets.get` may read: exact keys, `prefix*` (e.g. `slack.*`), or `*`
    /// for all. Empty: the `secrets` interface is not granted at all.
    pub secrets: Vec<String>,
    /// `workflows.load` (for `call>`).
    pub workflows: bool,
    /// `expressions.render` (for `param_eval>`).
    pub expressions: bool,
    /// `engine.*` (for `require>`).
    pub engine: bool,
    /// `params.*`: the project's parameter server (for `param_get>`/`param_set>`).
    pub params: bool,
    /// Running commands (for `sh>`, `py>`, `rb>`): which executors, limits and mounts.
    /// `None`: the plugin may not import the `command` interface.
    pub command: Option<CommandGrant>,
    /// Outgoing HTTP through `wasi:http` (for `http>`). `None`: the plugin may not import
    /// `wasi:http` at all. `Some(list)`: it may, and each request must match an entry of
    /// `list` (so `Some(vec![])` links but refuses every request).
    pub http: Option<Vec<HttpAllow>>,
    /// Outgoing TCP connections through `wasi:sockets` (for `pg>`): each connection must go
    /// to an entry of the list. Empty: every socket use is refused.
    pub tcp: Vec<TcpAllow>,
    /// Ceilings for this plugin's calls: each field of the effective limits is the smaller
    /// of this and the invocation's own [`Limits`].
    pub limits: Option<Limits>,
}

impl Grants {
    /// Everything (for spade's own bundled plugins).
    pub fn all() -> Self {
        Grants {
            secrets: vec!["*".into()],
            workflows: true,
            expressions: true,
            engine: true,
            params: true,
            command: Some(CommandGrant::default()),
            http: Some(Vec::new()),
            tcp: Vec::new(),
            limits: None,
        }
    }
}

/// How the code of an installed plugin was obtained.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoadKind {
    /// Compiled now (cache miss, unusable cache entry, or no cache configured).
    Compiled,
    /// Loaded from the precompiled cache: no compilation happened.
    Cached,
}

/// The result of a successful [`Runtime::install`].
#[derive(Clone, Debug)]
pub struct InstallReport {
    pub info: PluginInfo,
    /// sha256 of the component bytes (hex).
    pub digest: String,
    pub load: LoadKind,
    /// Compile or cache-load time plus import resolution (not `describe`).
    pub load_time: Duration,
    /// The component's imports (interface names as the component spells them).
    pub imports: Vec<String>,
    /// The manifest embedded in the component, if it has one.
    pub manifest: Option<Manifest>,
    /// What the plugin is linked with: its manifest's request intersected with its grants.
    pub linked: Linked,
    /// Requests of the manifest the grants do not cover (the plugin loads without them).
    pub warnings: Vec<String>,
}

/// Why a plugin could not be installed (or the runtime could not start).
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("cannot start the wasm engine: {0}")]
    Engine(String),
    #[error("plugin {plugin}: not a valid WebAssembly component: {message}")]
    InvalidComponent { plugin: String, message: String },
    #[error(
        "plugin {plugin}: imports {import}, which spade does not provide; spade offers WASI 0.2 \
         (cli, clocks, filesystem, io, random, sockets refused unless granted tcp, http when granted) and \
         spade:operator@{WIT_VERSION} (log, output, secrets, workflows, expressions, engine, command): {message}"
    )]
    UnsupportedImport { plugin: String, import: String, message: String },
    #[error(
        "plugin {plugin}: imports {} but its manifest ({MANIFEST_FILE}) does not ask for {}; add {} to \
         [wants] in {MANIFEST_FILE} and rebuild it with `spade plugin build`",
        quoted(capabilities),
        them(capabilities),
        them(capabilities)
    )]
    NotAsked { plugin: String, capabilities: Vec<String> },
    #[error(
        "plugin {plugin}: its embedded manifest ({MANIFEST_FILE}) is invalid: {message}; fix it and \
         rebuild the plugin with `spade plugin build`"
    )]
    BadManifest { plugin: String, message: String },
    #[error("plugin {plugin}: {}", not_granted(capabilities))]
    NotGranted { plugin: String, capabilities: Vec<String> },
    #[error(
        "plugin {plugin}: was built against spade:operator@{found}, which this spade does not support; \
         it supports {supported}. Rebuild the plugin against spade:operator@{WIT_VERSION} (or a spade SDK for it), \
         or use a spade release that supports @{found}"
    )]
    UnsupportedContract { plugin: String, found: String, supported: String },
    #[error("plugin {plugin}: does not export the spade:operator `plugin` world: {message}")]
    MissingExports { plugin: String, message: String },
    #[error("plugin {plugin}: `describe` failed: {message}")]
    Describe { plugin: String, message: String },
    #[error("plugin {plugin}: {message}")]
    BadInfo { plugin: String, message: String },
    #[error(
        "plugin {plugin}: operator '{operator}>' is already provided by plugin {existing}; only one plugin may serve an operator, so load only one of them"
    )]
    DuplicateOperator { plugin: String, operator: String, existing: String },
    #[error("plugin {plugin} is already installed (version {existing_version})")]
    DuplicatePlugin { plugin: String, existing_version: String },
}

fn quoted(capabilities: &[String]) -> String {
    capabilities.iter().map(|i| format!("`{i}`")).collect::<Vec<_>>().join(", ")
}

fn them(capabilities: &[String]) -> &'static str {
    if capabilities.len() == 1 { "it" } else { "them" }
}

fn not_granted(capabilities: &[String]) -> String {
    let list = capabilities.iter().map(|i| format!("`{i}`")).collect::<Vec<_>>().join(", ");
    if capabilities.len() == 1 {
        format!(
            "imports the capability {list} but was not granted it; grant it when installing the plugin, or rebuild the plugin without that import"
        )
    } else {
        format!(
            "imports the capabilities {list} but was not granted them; grant them when installing the plugin, or rebuild the plugin without those imports"
        )
    }
}

/// An installed plugin.
struct Loaded {
    info: PluginInfo,
    pre: AnyPre,
    ctx: Arc<PluginCtx>,
    limits: Option<Limits>,
}

#[derive(Default)]
struct Registry {
    plugins: Vec<Arc<Loaded>>,
    operators: HashMap<String, Arc<Loaded>>,
}

/// Counting semaphore for instance slots (the pool fails instantiation when exhausted).
struct Slots {
    free: Mutex<u32>,
    cv: Condvar,
}

struct SlotGuard<'a>(&'a Slots);

impl Drop for SlotGuard<'_> {
    fn drop(&mut self) {
        *self.0.free.lock().unwrap_or_else(|e| e.into_inner()) += 1;
        self.0.cv.notify_one();
    }
}

impl Slots {
    fn acquire(&self, cancel: Option<&CancelToken>) -> Option<SlotGuard<'_>> {
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if cancel.is_some_and(|c| c.is_cancelled()) {
                return None;
            }
            if *free > 0 {
                *free -= 1;
                return Some(SlotGuard(self));
            }
            free = self.cv.wait_timeout(free, Duration::from_millis(50)).unwrap_or_else(|e| e.into_inner()).0;
        }
    }
}

/// The epoch ticker: one thread per runtime, ticking while calls are running and for a
/// short grace period after the last one ends ([`TICKER_GRACE_TICKS`]), so that a run of
/// short calls one after another does not park and wake the thread (two futex calls) per
/// call.
struct Ticker {
    state: Arc<(Mutex<TickerState>, Condvar)>,
}

/// Ticks the ticker goes on for with no call running before it parks.
const TICKER_GRACE_TICKS: u32 = 20;

#[derive(Default)]
struct TickerState {
    active: usize,
    shutdown: bool,
    /// The ticker thread waits for a call to start (it must be woken).
    parked: bool,
}

struct Active<'a>(&'a Ticker);

impl Drop for Active<'_> {
    fn drop(&mut self) {
        self.0.state.0.lock().unwrap_or_else(|e| e.into_inner()).active -= 1;
    }
}

impl Ticker {
    fn start(engine: &Engine) -> Ticker {
        let state: Arc<(Mutex<TickerState>, Condvar)> = Arc::default();
        let weak = engine.weak();
        let st = state.clone();
        let spawned = std::thread::Builder::new().name("spade-epoch".into()).spawn(move || {
            let mut idle_ticks = 0;
            loop {
                {
                    let mut s = st.0.lock().unwrap_or_else(|e| e.into_inner());
                    if s.active > 0 {
                        idle_ticks = 0;
                    } else if idle_ticks < TICKER_GRACE_TICKS {
                        idle_ticks += 1;
                    } else {
                        s.parked = true;
                        while s.active == 0 && !s.shutdown {
                            s = st.1.wait(s).unwrap_or_else(|e| e.into_inner());
                        }
                        s.parked = false;
                        idle_ticks = 0;
                    }
                    if s.shutdown {
                        return;
                    }
                }
                std::thread::sleep(EPOCH_TICK);
                match weak.upgrade() {
                    Some(engine) => engine.increment_epoch(),
                    None => return,
                }
            }
        });
        if let Err(e) = spawned {
            // Without the ticker deadlines and kills cannot fire; say so loudly.
            tracing::error!("cannot start the epoch ticker thread: {e}; CPU limits and kill will not work");
        }
        Ticker { state }
    }

    fn enter(&self) -> Active<'_> {
        let wake = {
            let mut s = self.state.0.lock().unwrap_or_else(|e| e.into_inner());
            s.active += 1;
            s.parked
        };
        if wake {
            self.state.1.notify_all();
        }
        Active(self)
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.state.0.lock().unwrap_or_else(|e| e.into_inner()).shutdown = true;
        self.state.1.notify_all();
    }
}

/// The operator runtime. Cheap to share (`&Runtime` is `Send + Sync`).
pub struct Runtime {
    engine: Engine,
    linker: Linker<HostState>,
    cache: Option<Cache>,
    config: RuntimeConfig,
    pooling: bool,
    registry: RwLock<Registry>,
    slots: Slots,
    ticker: Ticker,
    /// Commands started by plugins, alive across calls.
    commands: Arc<Hub>,
}

/// Bytes of each pooled linear memory kept mapped between calls (see `engine_config`).
const KEEP_RESIDENT: usize = 4 << 20;

fn engine_config(config: &RuntimeConfig, pooling: bool) -> Config {
    let mut c = Config::new();
    c.epoch_interruption(true);
    // We never use component-model-async; concurrency support only slows every call.
    c.concurrency_support(false);
    if pooling {
        let n = config.max_instances.max(1);
        let mut p = PoolingAllocationConfig::default();
        p.total_component_instances(n)
            .total_core_instances(n * 16)
            .total_memories(n * 4)
            .total_tables(n * 16)
            .total_stacks(n)
            .max_core_instances_per_component(64)
            .max_memories_per_component(8)
            .max_tables_per_component(64)
            .max_memory_size(config.max_memory_bytes)
            .table_elements(100_000)
            .max_unused_warm_slots(n.min(16))
            // Reset only the pages a call dirtied, with memset, and keep them mapped: a
            // call then takes no page faults and no madvise (kernel >= 6.7; else ignored).
            .pagemap_scan(Enabled::Auto)
            .linear_memory_keep_resident(KEEP_RESIDENT)
            .table_keep_resident(64 << 10);
        c.allocation_strategy(InstanceAllocationStrategy::Pooling(p));
    }
    c
}

impl Runtime {
    /// Creates the engine (pooling if possible), the linker and the compile cache.
    pub fn new(config: RuntimeConfig) -> Result<Runtime, RuntimeError> {
        let (engine, pooling) = if config.pooling {
            match Engine::new(&engine_config(&config, true)) {
                Ok(e) => (e, true),
                Err(e) => {
                    tracing::warn!("pooling allocator unavailable ({e:#}); using on-demand allocation");
                    (
                        Engine::new(&engine_config(&config, false))
                            .map_err(|e| RuntimeError::Engine(format!("{e:#}")))?,
                        false,
                    )
                }
            }
        } else {
            (Engine::new(&engine_config(&config, false)).map_err(|e| RuntimeError::Engine(format!("{e:#}")))?, false)
        };
        let mut linker: Linker<HostState> = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(|e| RuntimeError::Engine(format!("{e:#}")))?;
        // Linked for every plugin; only those granted http may import it (see `prepare`).
        wasmtime_wasi_http::p2::add_only_http_to_linker_sync(&mut linker)
            .map_err(|e| RuntimeError::Engine(format!("{e:#}")))?;
        contract::add_to_linker(&mut linker).map_err(|e| RuntimeError::Engine(format!("{e:#}")))?;
        disk::link(&mut linker).map_err(|e| RuntimeError::Engine(format!("{e:#}")))?;
        host::shadow_sleeps(&mut linker).map_err(RuntimeError::Engine)?;
        let cache = config.cache_dir.as_deref().and_then(|dir| match Cache::open(dir, &engine) {
            Ok(c) => Some(c),
            Err(why) => {
                tracing::warn!("{why}; plugins will be compiled on every start");
                None
            }
        });
        let ticker = Ticker::start(&engine);
        Ok(Runtime {
            slots: Slots { free: Mutex::new(config.max_instances.max(1)), cv: Condvar::new() },
            engine,
            linker,
            cache,
            config,
            pooling,
            registry: RwLock::default(),
            ticker,
            commands: Arc::default(),
        })
    }

    /// Whether the pooling allocator is in use.
    pub fn pooling(&self) -> bool {
        self.pooling
    }

    /// Whether a usable compile cache is configured.
    pub fn has_cache(&self) -> bool {
        self.cache.is_some()
    }

    /// Installed plugins, in install order.
    pub fn plugins(&self) -> Vec<PluginInfo> {
        self.registry.read().unwrap_or_else(|e| e.into_inner()).plugins.iter().map(|p| p.info.clone()).collect()
    }

    /// The plugin serving `operator`.
    pub fn plugin_for(&self, operator: &str) -> Option<PluginInfo> {
        self.registry.read().unwrap_or_else(|e| e.into_inner()).operators.get(operator).map(|p| p.info.clone())
    }

    /// Compiles (or loads from the cache) and links `bytes`. `label` names the plugin in
    /// errors until `describe` gives its real name (e.g. the file or crate name).
    fn prepare(
        &self,
        label: &str,
        bytes: &[u8],
        digest: Option<&str>,
        grants: &Grants,
    ) -> Result<(AnyPre, InstallReport), RuntimeError> {
        let started = Instant::now();
        let invalid = |message: String| RuntimeError::InvalidComponent { plugin: label.to_string(), message };
        if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
            return Err(invalid("the file does not start with the WebAssembly magic bytes".into()));
        }
        if Engine::detect_precompiled(bytes).is_some() {
            return Err(invalid("it is a precompiled .cwasm file; install the .wasm component instead".into()));
        }
        if bytes[4..8] == [1, 0, 0, 0] {
            return Err(invalid(
                "it is a core WebAssembly module, not a component; build it for the wasm32-wasip2 target \
                 (or wrap it with `wasm-tools component new`)"
                    .into(),
            ));
        }
        // Read before the (slow) compile: a plugin that misstates what it needs is refused
        // whatever it was granted.
        let manifest = match manifest::read_embedded(bytes) {
            Ok(None) => None,
            Ok(Some(text)) => Some(
                Manifest::parse(&text)
                    .map_err(|message| RuntimeError::BadManifest { plugin: label.to_string(), message })?,
            ),
            Err(why) => return Err(invalid(why)),
        };
        let digest = digest.map_or_else(|| sha256_hex(bytes), str::to_string);
        let mut load = LoadKind::Compiled;
        let mut component = None;
        if let Some(cache) = &self.cache {
            match cache.load(&self.engine, &digest) {
                Ok(c) => {
                    component = Some(c);
                    load = LoadKind::Cached;
                }
                Err(why) => tracing::debug!(plugin = label, "compile cache miss: {why}"),
            }
        }
        let component = match component {
            Some(c) => c,
            None => {
                let c = Component::new(&self.engine, bytes).map_err(|e| invalid(format!("{e:#}")))?;
                if let Some(cache) = &self.cache
                    && let Err(why) = cache.store(&digest, &c)
                {
                    tracing::warn!(plugin = label, "cannot cache the compiled plugin: {why}");
                }
                c
            }
        };

        let ty = component.component_type();
        let imports: Vec<String> = ty.imports(&self.engine).map(|(name, _)| name.to_string()).collect();
        let contract = match contract::detect(imports.iter().map(String::as_str)) {
            Detected::Supported(c) => c,
            Detected::Unsupported(found) => {
                return Err(RuntimeError::UnsupportedContract {
                    plugin: label.to_string(),
                    found,
                    supported: contract::supported_versions_text(),
                });
            }
            Detected::Missing => {
                return Err(RuntimeError::MissingExports {
                    plugin: label.to_string(),
                    message: "it imports no spade:operator interface (every plugin imports at least \
                              `spade:operator/types`, which `describe` and `run` use)"
                        .into(),
                });
            }
            Detected::Mixed(versions) => {
                return Err(RuntimeError::UnsupportedContract {
                    plugin: label.to_string(),
                    found: versions.join(" and @"),
                    supported: format!("{}, one version per plugin", contract::supported_versions_text()),
                });
            }
        };
        let (linked, warnings) = Linked::new(manifest.as_ref(), grants);
        let mut capability_imports = Vec::new();
        for name in &imports {
            match Capability::of_import(name) {
                Import::Free => {}
                Import::Capability(c) => capability_imports.push(c),
                Import::Unknown(iface) => {
                    return Err(RuntimeError::UnsupportedImport {
                        plugin: label.to_string(),
                        import: format!("`{name}`"),
                        message: format!("spade:operator has no interface named `{iface}`"),
                    });
                }
            }
        }
        capability_imports.sort_unstable_by_key(|c| c.name());
        capability_imports.dedup();
        if let Some(m) = &manifest {
            let unasked: Vec<String> =
                capability_imports.iter().filter(|c| !m.asks_for(**c)).map(|c| c.to_string()).collect();
            if !unasked.is_empty() {
                return Err(RuntimeError::NotAsked { plugin: label.to_string(), capabilities: unasked });
            }
        }
        let ungranted: Vec<String> =
            capability_imports.iter().filter(|c| !linked.links(**c)).map(|c| c.to_string()).collect();
        if !ungranted.is_empty() {
            return Err(RuntimeError::NotGranted { plugin: label.to_string(), capabilities: ungranted });
        }
        let pre = self.linker.instantiate_pre(&component).map_err(|e| {
            let message = format!("{e:#}");
            let import = imports
                .iter()
                .find(|i| message.contains(i.as_str()))
                .map(|i| format!("`{i}`"))
                .unwrap_or_else(|| "an interface".into());
            RuntimeError::UnsupportedImport { plugin: label.to_string(), import, message }
        })?;
        let pre = AnyPre::new(contract, pre)
            .map_err(|e| RuntimeError::MissingExports { plugin: label.to_string(), message: format!("{e:#}") })?;
        let report = InstallReport {
            info: PluginInfo {
                name: label.to_string(),
                version: String::new(),
                operators: vec![],
                wit_version: String::new(),
            },
            digest,
            load,
            load_time: started.elapsed(),
            imports,
            manifest,
            linked,
            warnings,
        };
        Ok((pre, report))
    }

    /// Loads a plugin component, asks it what it serves (`describe`) and registers its
    /// operators. `label` names it in error messages until its own name is known.
    ///
    /// Refused: bytes that are not a component, imports spade does not provide, capability
    /// imports (`secrets`, `workflows`, `expressions`, `engine`) not in `grants`, a plugin
    /// name that is already installed, or an operator another installed plugin already
    /// serves (the first install keeps it; nothing of the refused plugin is registered).
    pub fn install(&self, label: &str, bytes: &[u8], grants: Grants) -> Result<InstallReport, RuntimeError> {
        self.install_inner(label, bytes, None, grants)
    }

    /// [`Runtime::install`] of bytes whose sha256 (hex) the caller already knows (spade's
    /// bundled plugins, hashed when spade was built): the compile cache is looked up by it
    /// without hashing the bytes again at every start.
    pub fn install_with_digest(
        &self,
        label: &str,
        bytes: &[u8],
        digest: &str,
        grants: Grants,
    ) -> Result<InstallReport, RuntimeError> {
        self.install_inner(label, bytes, Some(digest), grants)
    }

    fn install_inner(
        &self,
        label: &str,
        bytes: &[u8],
        digest: Option<&str>,
        grants: Grants,
    ) -> Result<InstallReport, RuntimeError> {
        let (pre, mut report) = self.prepare(label, bytes, digest, &grants)?;
        let ctx = Arc::new(PluginCtx::new(label, report.linked.clone()));
        let info = self.describe(label, &pre, &ctx)?;
        validate_info(label, &info)?;
        let loaded = Arc::new(Loaded {
            info: info.clone(),
            pre,
            ctx: Arc::new(PluginCtx::new(&info.name, report.linked.clone())),
            limits: report.linked.limits,
        });
        let mut reg = self.registry.write().unwrap_or_else(|e| e.into_inner());
        if let Some(existing) = reg.plugins.iter().find(|p| p.info.name == info.name) {
            return Err(RuntimeError::DuplicatePlugin {
                plugin: info.name,
                existing_version: existing.info.version.clone(),
            });
        }
        for op in &info.operators {
            if let Some(existing) = reg.operators.get(op) {
                return Err(RuntimeError::DuplicateOperator {
                    plugin: info.name.clone(),
                    operator: op.clone(),
                    existing: existing.info.name.clone(),
                });
            }
        }
        for op in &info.operators {
            reg.operators.insert(op.clone(), loaded.clone());
        }
        reg.plugins.push(loaded);
        report.info = info;
        tracing::debug!(plugin = %report.info.name, load = ?report.load, time = ?report.load_time, "plugin installed");
        Ok(report)
    }

    /// Remove the plugin named `name` and its operators (a project replacing a bundled
    /// plugin with its own version of it). Calls already running keep their instance.
    /// Returns what was removed.
    pub fn uninstall(&self, name: &str) -> Option<PluginInfo> {
        let mut reg = self.registry.write().unwrap_or_else(|e| e.into_inner());
        let at = reg.plugins.iter().position(|p| p.info.name == name)?;
        let removed = reg.plugins.remove(at);
        reg.operators.retain(|_, p| !Arc::ptr_eq(p, &removed));
        Some(removed.info.clone())
    }

    fn describe(&self, label: &str, pre: &AnyPre, ctx: &Arc<PluginCtx>) -> Result<PluginInfo, RuntimeError> {
        let limits = self.clamp(self.config.describe_limits);
        let fail = |message: String| RuntimeError::Describe { plugin: label.to_string(), message };
        let _slot = self.slots.acquire(None);
        let _active = self.ticker.enter();
        let command = CommandCall::describing(self.commands.clone());
        let (out, call) =
            self.call(pre, ctx, None, None, command, &limits, None, |plugin, store| plugin.call_describe(store));
        let info = out.map_err(|e| fail(call.explain(e, &limits)))?;
        Ok(PluginInfo {
            name: info.name,
            version: info.version,
            operators: info.operators,
            wit_version: info.wit_version,
        })
    }

    fn clamp(&self, mut limits: Limits) -> Limits {
        limits.memory_bytes = limits.memory_bytes.min(self.config.max_memory_bytes);
        limits
    }

    /// One call in a fresh store. `services` must outlive the call (it does: the store is
    /// created and dropped inside this function).
    #[allow(clippy::too_many_arguments)] // one private function, each argument a different concern
    fn call<R>(
        &self,
        pre: &AnyPre,
        ctx: &Arc<PluginCtx>,
        workspace: Option<(&Path, &DiskQuota)>,
        services: Option<&dyn TaskServices>,
        command: CommandCall,
        limits: &Limits,
        cancel: Option<CancelToken>,
        f: impl FnOnce(&AnyPlugin, &mut Store<HostState>) -> wasmtime::Result<R>,
    ) -> (Result<R, CallError>, CallReport) {
        let stdout = Capture::new(limits.log_bytes);
        let stderr = Capture::new(limits.log_bytes);
        let clock_origin = Instant::now();
        let stop = Stop::new(cancel, clock_origin + limits.cpu_time);
        let mut report = CallReport { stdout: stdout.clone(), stderr: stderr.clone(), ..CallReport::default() };
        let mut b = WasiCtxBuilder::new();
        // Blocking file I/O on this thread instead of hopping through tokio's pool.
        b.allow_blocking_current_thread(true)
            .stdout(stdout)
            .stderr(stderr)
            .allow_udp(false)
            .monotonic_clock(host::Clock(clock_origin));
        // TCP and name lookups: only what the plugin's tcp grant allows (capability::tcp).
        let tcp_notes = ctx.tcp.configure(&mut b);
        let disk = DiskGuard::new(workspace.map_or_else(DiskQuota::unlimited, |(_, q)| q.clone()));
        if let Some((ws, _)) = workspace {
            b.initial_cwd("/");
            if let Err(e) = b.preopened_dir(ws, "/", FsPerms::ReadWrite) {
                return (
                    Err(CallError::Workspace(format!("cannot open the task workspace {}: {e:#}", ws.display()))),
                    report,
                );
            }
        }
        // SAFETY: the reference is stored in the `Store`'s data, and the store is created
        // and dropped within this function, so it never outlives `services`' real lifetime.
        let services: Option<&'static dyn TaskServices> =
            services.map(|s| unsafe { std::mem::transmute::<&dyn TaskServices, &'static dyn TaskServices>(s) });
        let state = HostState {
            wasi: b.build(),
            table: wasmtime::component::ResourceTable::new(),
            limiter: Limiter::new(limits.memory_bytes),
            plugin: ctx.clone(),
            services,
            log: LineBudget::new(limits.log_bytes),
            print: LineBudget::new(limits.log_bytes),
            stop: stop.clone(),
            clock_origin,
            http: wasmtime_wasi_http::WasiHttpCtx::new(),
            http_guard: HttpGuard::new(ctx.http.clone(), stop.clone()),
            disk: disk.clone(),
            command,
        };
        let cpu_start = thread_cpu_time();
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limiter);
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(move |_| match stop.check() {
            None => Ok(UpdateDeadline::Continue(1)),
            Some(why) => Err(wasmtime::format_err!("interrupted: {why:?}")),
        });
        let result = pre.instantiate(&mut store).and_then(|plugin| f(&plugin, &mut store));
        let mut notes = std::mem::take(&mut *store.data().http_guard.notes.lock().unwrap_or_else(|e| e.into_inner()));
        notes.append(&mut tcp_notes.lock().unwrap_or_else(|e| e.into_inner()));
        for line in notes {
            store.data_mut().log_line(LogLevel::Warn, &line);
        }
        let data = store.into_data();
        // A sleep cut short lets the guest finish early: that result does not count.
        report.interrupted = data.stop.fired();
        let result = match (result, report.interrupted) {
            (Ok(_), Some(why)) => Err(wasmtime::format_err!("interrupted: {why:?}")),
            (r, _) => r,
        };
        // A write refused for lack of quota fails the call even if the guest ignored the
        // error: the task did not do what it meant to.
        report.disk_full = disk.exceeded().then(|| disk.quota.limit());
        let result = match (result, report.disk_full) {
            (Ok(_), Some(_)) => Err(wasmtime::format_err!("the workspace's disk quota is used up")),
            (r, _) => r,
        };
        report.denied_memory = data.limiter.denied_memory;
        report.denied_table = data.limiter.denied_table;
        report.print_dropped = (data.print.dropped_lines, data.print.dropped_bytes, data.print.limit());
        report.log = Some(data.log);
        report.usage = Usage {
            wall: clock_origin.elapsed(),
            cpu: thread_cpu_time().saturating_sub(cpu_start),
            peak_memory_bytes: data.limiter.memory_used as u64,
        };
        report.command = Some(data.command);
        (result.map_err(CallError::Wasm), report)
    }
}

enum CallError {
    Workspace(String),
    Wasm(wasmtime::Error),
}

/// What the host learned about one call besides its result.
#[derive(Default)]
struct CallReport {
    stdout: Capture,
    stderr: Capture,
    interrupted: Option<Interrupt>,
    denied_memory: Option<usize>,
    denied_table: Option<usize>,
    /// The attempt's disk quota (bytes), when a write of this call did not fit in it.
    disk_full: Option<u64>,
    print_dropped: (u64, u64, usize),
    log: Option<LineBudget>,
    /// What the call itself used (commands report their own usage when they finish).
    usage: Usage,
    /// The call's commands, to stop those of a task that ended.
    command: Option<CommandCall>,
}

/// CPU time of the calling thread (the wasm call runs on it).
fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime with a valid out-pointer.
    if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) } != 0 {
        return Duration::ZERO;
    }
    Duration::new(ts.tv_sec.max(0) as u64, ts.tv_nsec.clamp(0, 999_999_999) as u32)
}

impl Default for Capture {
    fn default() -> Self {
        Capture::new(0)
    }
}

fn mib(bytes: usize) -> String {
    if bytes.is_multiple_of(1 << 20) {
        format!("{} MiB", bytes >> 20)
    } else {
        format!("{:.1} MiB", bytes as f64 / (1 << 20) as f64)
    }
}

impl CallReport {
    /// A user-facing reason for a failed call.
    fn explain(&self, err: CallError, limits: &Limits) -> String {
        let err = match err {
            CallError::Workspace(m) => return m,
            CallError::Wasm(e) => e,
        };
        let mut msg = match self.interrupted {
            Some(Interrupt::Deadline) => {
                format!("exceeded its time limit of {:?} (cpu_time) and was stopped", limits.cpu_time)
            }
            Some(Interrupt::Cancelled) => "was killed".to_string(),
            None => {
                if let Some(quota) = self.disk_full {
                    format!(
                        "exceeded the attempt's disk quota of {} (disk_quota): a write into the workspace did not fit; \
                         write less, delete what earlier tasks no longer need, or raise the quota \
                         (spade run --disk-quota MiB, or disk_quota_mb in spade.yml)",
                        mib(usize::try_from(quota).unwrap_or(usize::MAX))
                    )
                } else if let Some(asked) = self.denied_memory {
                    format!(
                        "exceeded its memory limit of {} (memory_bytes): it tried to grow its memory to {}",
                        mib(limits.memory_bytes),
                        mib(asked)
                    )
                } else if let Some(asked) = self.denied_table {
                    format!(
                        "exceeded the table limit of {} elements: it tried to grow its tables to {asked}",
                        sandbox::MAX_TABLE_ELEMENTS
                    )
                } else if let Some(exit) = err.downcast_ref::<wasmtime_wasi::I32Exit>() {
                    format!("exited with status {} instead of returning an outcome", exit.0)
                } else if let Some(trap) = err.downcast_ref::<Trap>() {
                    match trap {
                        Trap::StackOverflow => "overflowed its stack (too deep recursion) and was stopped".to_string(),
                        Trap::UnreachableCodeReached => "crashed (panic or abort)".to_string(),
                        other => format!("crashed: {other}"),
                    }
                } else {
                    format!("failed: {err:#}")
                }
            }
        };
        // The last lines of stderr usually say why (a Rust panic message, an allocation failure).
        let (err_bytes, _) = self.stderr.peek_tail(2048);
        let tail = String::from_utf8_lossy(&err_bytes);
        let tail = tail
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with("note: run with `RUST_BACKTRACE=1`"))
            .collect::<Vec<_>>()
            .join(" / ");
        if !tail.is_empty() && self.interrupted.is_none() {
            msg.push_str("; its stderr ends with: ");
            msg.push_str(&tail);
        }
        msg
    }

    /// Writes captured stdout/stderr and the notes about dropped lines to the task log.
    fn flush_logs(&mut self, services: &dyn TaskServices) {
        let mut budget = self.log.take().unwrap_or_else(|| LineBudget::new(0));
        for (capture, level, name) in
            [(&self.stdout, LogLevel::Info, "stdout"), (&self.stderr, LogLevel::Warn, "stderr")]
        {
            let (bytes, dropped) = capture.take();
            let text = String::from_utf8_lossy(&bytes);
            for line in text.lines() {
                if let Some(line) = budget.admit(line) {
                    services.log(level, &line);
                }
            }
            if dropped > 0 {
                services.log(
                    LogLevel::Warn,
                    &format!(
                        "spade: {dropped} bytes of the plugin's {name} were dropped (limit {} bytes per call)",
                        budget.limit()
                    ),
                );
            }
        }
        let (lines, bytes) = (budget.dropped_lines, budget.dropped_bytes);
        if lines > 0 {
            services.log(
                LogLevel::Warn,
                &format!(
                    "spade: {lines} log lines ({bytes} bytes) were dropped: the task log of one call is limited to {} bytes (log_bytes)",
                    budget.limit()
                ),
            );
        }
        let (lines, bytes, limit) = self.print_dropped;
        if lines > 0 {
            services.log(
                LogLevel::Warn,
                &format!("spade: {lines} output lines ({bytes} bytes) were dropped: output of one call is limited to {limit} bytes"),
            );
        }
    }
}

fn valid_operator_name(op: &str) -> bool {
    !op.is_empty() && op.len() <= 64 && op.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

fn parse_version(v: &str) -> Option<(u64, u64, u64)> {
    let core = v.split(['-', '+']).next()?;
    let mut it = core.split('.').map(|p| p.parse::<u64>().ok());
    let r = (it.next()??, it.next()??, it.next()??);
    it.next().is_none().then_some(r)
}

fn validate_info(label: &str, info: &PluginInfo) -> Result<(), RuntimeError> {
    let bad = |message: String| RuntimeError::BadInfo { plugin: label.to_string(), message };
    if info.name.trim().is_empty() || info.name.len() > 128 || info.name.chars().any(|c| c.is_control()) {
        return Err(bad(format!(
            "`describe` returned an invalid plugin name {:?}",
            sandbox::truncate(&info.name, 200)
        )));
    }
    if info.operators.is_empty() {
        return Err(bad(format!("plugin {} serves no operators (`describe` returned an empty list)", info.name)));
    }
    if info.operators.len() > 256 {
        return Err(bad(format!("plugin {} declares {} operators; the limit is 256", info.name, info.operators.len())));
    }
    if let Some(op) = info.operators.iter().find(|op| !valid_operator_name(op)) {
        return Err(bad(format!(
            "plugin {} declares an invalid operator name {:?} (use letters, digits, `_`, `-`, `.`, without `>`)",
            info.name,
            sandbox::truncate(op, 200)
        )));
    }
    let host = parse_version(WIT_VERSION).unwrap_or((0, 1, 0));
    let Some(plugin) = parse_version(&info.wit_version) else {
        return Err(bad(format!(
            "plugin {} reports WIT version {:?}, which is not a semver version",
            info.name,
            sandbox::truncate(&info.wit_version, 200)
        )));
    };
    let compatible = plugin.0 == host.0 && (plugin.1 < host.1 || (plugin.1 == host.1 && plugin.2 <= host.2));
    if !compatible {
        return Err(bad(format!(
            "plugin {} was built against spade:operator@{}, but this spade provides @{WIT_VERSION}; \
             rebuild the plugin against {WIT_VERSION} or upgrade spade",
            info.name, info.wit_version
        )));
    }
    Ok(())
}

impl OperatorHost for Runtime {
    fn end_task(&self, attempt_id: i64, task_name: &str) {
        self.commands
            .cancel_all_of(&crate::capability::command::Owner { attempt_id, task_name: task_name.to_string() });
    }

    fn commands_running(&self, attempt_id: i64, task_name: &str) -> bool {
        self.commands.running_of(&crate::capability::command::Owner { attempt_id, task_name: task_name.to_string() })
            > 0
    }

    fn has_operator(&self, operator: &str) -> bool {
        self.registry.read().unwrap_or_else(|e| e.into_inner()).operators.contains_key(operator)
    }

    fn invoke(&self, inv: Invocation<'_>) -> Result<Outcome, InvokeError> {
        let loaded = self
            .registry
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .operators
            .get(&inv.request.operator)
            .cloned()
            .ok_or_else(|| InvokeError::UnknownOperator(inv.request.operator.clone()))?;
        let mut limits = inv.limits;
        if let Some(cap) = loaded.limits {
            limits.cpu_time = limits.cpu_time.min(cap.cpu_time);
            limits.memory_bytes = limits.memory_bytes.min(cap.memory_bytes);
            limits.log_bytes = limits.log_bytes.min(cap.log_bytes);
        }
        let limits = self.clamp(limits);
        if inv.cancel.is_cancelled() {
            return Err(InvokeError::Cancelled);
        }
        let _slot = self.slots.acquire(Some(inv.cancel)).ok_or(InvokeError::Cancelled)?;
        let _active = self.ticker.enter();
        let request = decode::encode_request(inv.request);
        let plugin_name = loaded.info.name.as_str();
        let command = CommandCall::for_task(
            self.commands.clone(),
            loaded.ctx.command.clone(),
            inv.request,
            inv.workspace,
            inv.cancel,
            inv.disk,
        );
        let (out, mut report) = self.call(
            &loaded.pre,
            &loaded.ctx,
            Some((inv.workspace, inv.disk)),
            Some(inv.services),
            command,
            &limits,
            Some(inv.cancel.clone()),
            |plugin, store| plugin.call_run(store, &request),
        );
        let result = match out {
            Ok(outcome) => decode::decode_outcome(plugin_name, outcome),
            Err(_) if report.interrupted == Some(Interrupt::Cancelled) => Err(InvokeError::Cancelled),
            Err(e) => Err(InvokeError::Plugin { plugin: plugin_name.to_string(), message: report.explain(e, &limits) }),
        };
        report.flush_logs(inv.services);
        inv.services.record_usage(report.usage);
        if let Some(command) = &report.command {
            command.end_of_call(matches!(result, Ok(Outcome::Poll { .. })));
        }
        result
    }
}
