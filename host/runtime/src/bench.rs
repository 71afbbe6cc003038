//! `spade bench`'s measurements of the runtime: the warm per-call cost (fresh `Store` +
//! instantiate + call + outcome decode, the path every task takes) and the cost of loading
//! a plugin from the precompiled cache (deserialize + link), on a component given as bytes.
//!
//! Everything runs in private temporary directories (cache, workspace) removed afterwards.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;
use spade_api::{
    AttemptRef, CancelToken, Invocation, InvokeError, Limits, LogLevel, Object, OperatorHost, StartRequest,
    TaskRequest, TaskServices,
};

use crate::{Grants, LoadKind, Runtime, RuntimeConfig, RuntimeError};

/// How much to measure.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    /// Calls measured (after `warmup` unmeasured ones).
    pub iterations: usize,
    pub warmup: usize,
    /// Cache loads measured.
    pub cache_loads: usize,
    /// The workspace the calls see (none: an empty temporary directory).
    pub workspace: Option<PathBuf>,
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions { iterations: 2000, warmup: 200, cache_loads: 30, workspace: None }
    }
}

/// Measured figures (all medians/percentiles are wall-clock on this machine).
#[derive(Clone, Debug)]
pub struct BenchReport {
    pub component_bytes: usize,
    pub pooling: bool,
    /// First load: compile + write to the cache + link.
    pub compile: Duration,
    /// Load from the precompiled cache (read + verify + deserialize + link), median.
    pub cache_load_median: Duration,
    /// One warm call (new Store + WasiCtx with workspace + instantiate + call + decode).
    pub invoke_median: Duration,
    pub invoke_p90: Duration,
    pub invoke_p99: Duration,
    pub iterations: usize,
}

impl std::fmt::Display for BenchReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "component:          {} bytes ({} allocator)",
            self.component_bytes,
            if self.pooling { "pooling" } else { "on-demand" }
        )?;
        writeln!(f, "compile + cache:    {:.2} ms", ms(self.compile))?;
        writeln!(f, "cache load median:  {:.3} ms", ms(self.cache_load_median))?;
        write!(
            f,
            "warm call median:   {:.1} us (p90 {:.1} us, p99 {:.1} us, {} calls)",
            us(self.invoke_median),
            us(self.invoke_p90),
            us(self.invoke_p99),
            self.iterations
        )
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// Why a benchmark could not run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error("the benchmarked call failed: {0}")]
    Invoke(#[from] InvokeError),
    #[error("benchmark setup: {0}")]
    Setup(String),
}

/// Services that accept everything and keep nothing.
struct NullServices;

impl TaskServices for NullServices {
    fn print(&self, _line: &str) {}
    fn log(&self, _level: LogLevel, _message: &str) {}
    fn secret(&self, _key: &str) -> Option<String> {
        None
    }
    fn load_workflow(&self, path: &str) -> Result<Object, String> {
        Err(format!("no workflow {path} in a benchmark"))
    }
    fn render_template(&self, template: &str, _scope: &Object) -> Result<String, String> {
        Ok(template.to_string())
    }
    fn start_or_find(&self, _req: &StartRequest) -> Result<AttemptRef, String> {
        Err("no engine in a benchmark".into())
    }
    fn attempt_status(&self, _attempt_id: i64) -> Result<AttemptRef, String> {
        Err("no engine in a benchmark".into())
    }
}

/// A private directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Result<TempDir, BenchError> {
        use std::os::unix::fs::DirBuilderExt;
        let nanos =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        let p = std::env::temp_dir().join(format!("spade-bench-{tag}-{}-{nanos}", std::process::id()));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&p)
            .map_err(|e| BenchError::Setup(format!("cannot create {}: {e}", p.display())))?;
        Ok(TempDir(p))
    }
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A request for `operator` with empty params, like a task `operator>: bench` would get.
pub fn sample_request(operator: &str) -> TaskRequest {
    TaskRequest {
        operator: operator.to_string(),
        task_name: "+bench+call".into(),
        project_name: "bench".into(),
        workflow_name: "bench".into(),
        attempt_id: 1,
        session_id: 1,
        session_uuid: "00000000-0000-0000-0000-000000000000".into(),
        session_time: "2024-01-01T00:00:00+00:00".into(),
        timezone: "UTC".into(),
        retry_attempt_name: None,
        command: Value::String("noop".into()),
        params: Object::new(),
        local_params: Object::new(),
        raw: Object::new(),
        state: None,
        retry_count: 0,
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Measures `bytes` (a plugin component serving `operator`) called with `request`
/// (default: [`sample_request`]). The plugin is installed with [`Grants::all`].
pub fn measure(
    bytes: &[u8],
    operator: &str,
    request: Option<&TaskRequest>,
    opts: &BenchOptions,
) -> Result<BenchReport, BenchError> {
    let cache = TempDir::new("cache")?;
    let temp_workspace = TempDir::new("ws")?;
    let workspace = opts.workspace.as_deref().unwrap_or(temp_workspace.path());
    if !workspace.is_dir() {
        return Err(BenchError::Setup(format!("the workspace {} is not a directory", workspace.display())));
    }

    // First runtime: compiles and fills the cache.
    let rt = Runtime::new(RuntimeConfig::with_cache_dir(cache.path()))?;
    if !rt.has_cache() {
        return Err(BenchError::Setup(format!("the cache directory {} is unusable", cache.path().display())));
    }
    let t = Instant::now();
    let first = rt.install("bench", bytes, Grants::all())?;
    let compile = t.elapsed();
    if first.load != LoadKind::Compiled {
        return Err(BenchError::Setup("a fresh cache unexpectedly had the plugin".into()));
    }

    // Cache loads: the same engine configuration reads what the first install wrote.
    let mut loads = Vec::with_capacity(opts.cache_loads);
    for _ in 0..opts.cache_loads.max(1) {
        let t = Instant::now();
        let (_pre, report) = rt.prepare("bench", bytes, None, &Grants::all())?;
        loads.push(t.elapsed());
        if report.load != LoadKind::Cached {
            return Err(BenchError::Setup("the cache did not serve the plugin back".into()));
        }
    }
    loads.sort();

    let default_request;
    let request = match request {
        Some(r) => r,
        None => {
            default_request = sample_request(operator);
            &default_request
        }
    };
    let mut request = request.clone();
    request.operator = operator.to_string();
    let cancel = CancelToken::new();
    let services = NullServices;
    let limits = Limits::default();
    let disk = spade_api::DiskQuota::unlimited();
    let call = || {
        rt.invoke(Invocation {
            request: &request,
            workspace,
            disk: &disk,
            limits,
            services: &services,
            cancel: &cancel,
        })
    };
    for _ in 0..opts.warmup {
        call()?;
    }
    let mut times = Vec::with_capacity(opts.iterations);
    for _ in 0..opts.iterations.max(1) {
        let t = Instant::now();
        let out = call();
        times.push(t.elapsed());
        out?;
    }
    times.sort();
    Ok(BenchReport {
        component_bytes: bytes.len(),
        pooling: rt.pooling(),
        compile,
        cache_load_median: percentile(&loads, 0.5),
        invoke_median: percentile(&times, 0.5),
        invoke_p90: percentile(&times, 0.9),
        invoke_p99: percentile(&times, 0.99),
        iterations: times.len(),
    })
}
