//! The seam between the engine and the operator runtime.
//!
//! This crate owns the Rust mirror of the `spade:operator` WIT contract (`wit/operator.wit`):
//! the frozen [`TaskRequest`] a task receives and the [`Outcome`] it returns, plus the two
//! traits that connect the layers without either knowing the other:
//!
//! * [`OperatorHost`] is implemented by the wasm runtime and called by the engine;
//! * [`TaskServices`] is implemented by the engine (or the CLI) and called by the runtime
//!   when a plugin uses a host capability (print, secrets, load a workflow, start an attempt).
//!
//! It must never depend on wasmtime, the store or the `.dig` parser.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// A JSON object with its key order preserved (Digdag configs are ordered).
pub type Object = Map<String, Value>;

/// The version of the WIT package the host implements.
pub const WIT_VERSION: &str = "0.3.0";

/// What a task receives. Built once per task run, persisted, and re-used for every poll.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskRequest {
    /// Operator name without `>`.
    pub operator: String,
    pub task_name: String,
    pub project_name: String,
    pub workflow_name: String,
    pub attempt_id: i64,
    pub session_id: i64,
    pub session_uuid: String,
    /// ISO 8601 with offset, in `timezone`.
    pub session_time: String,
    pub timezone: String,
    pub retry_attempt_name: Option<String>,
    /// The `op>` argument; `Value::Null` when absent.
    pub command: Value,
    /// Every param the task sees, evaluated.
    pub params: Object,
    /// Only the task's own keys, evaluated.
    pub local_params: Object,
    /// Unevaluated subtrees (`_do`, `_else_do`) that are present.
    pub raw: Object,
    /// State handed back by the previous poll of this task run.
    pub state: Option<Value>,
    pub retry_count: u32,
}

/// A successful call.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Done {
    pub store_params: Object,
    pub reset_store_params: Vec<String>,
    pub export_params: Object,
    /// Generated subtasks as a Digdag task config (becomes the `^sub` child).
    pub subtasks: Option<Subtasks>,
}

/// Subtasks an operator generated: a Digdag task config (`+name` keys and group options
/// such as `_parallel`), kept as the JSON text it came in. A `for_each>` over 100,000
/// items returns about 8 MB of text that would take over 100 MB parsed; the engine parses
/// the top level, and each child only when it is due. Serialized as the JSON object itself.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Subtasks(Box<serde_json::value::RawValue>);

/// One top-level entry of [`Subtasks`]: a key and its value, still as JSON text.
pub type SubtaskEntry = (String, Box<serde_json::value::RawValue>);

impl Subtasks {
    /// Check that `text` is a JSON object and keep it as it is.
    pub fn from_json(text: String) -> Result<Subtasks, String> {
        if !text.trim_start().starts_with('{') {
            return Err("it must be a JSON object".into());
        }
        serde_json::value::RawValue::from_string(text).map(Subtasks).map_err(|e| e.to_string())
    }

    /// The config of an object built in memory.
    pub fn from_object(config: &Object) -> Subtasks {
        // A map of JSON values always serializes.
        Subtasks(serde_json::value::to_raw_value(config).expect("JSON values serialize"))
    }

    /// The JSON text.
    pub fn json(&self) -> &str {
        self.0.get()
    }

    /// Parse it whole.
    pub fn to_object(&self) -> Result<Object, String> {
        serde_json::from_str(self.0.get()).map_err(|e| e.to_string())
    }

    /// Its top-level entries in order, each value still as text.
    pub fn entries(&self) -> Result<Vec<SubtaskEntry>, String> {
        let map: indexmap::IndexMap<String, Box<serde_json::value::RawValue>> =
            serde_json::from_str(self.0.get()).map_err(|e| e.to_string())?;
        Ok(map.into_iter().collect())
    }
}

impl PartialEq for Subtasks {
    /// Same config, whatever the spacing.
    fn eq(&self, other: &Self) -> bool {
        self.json() == other.json() || self.to_object().ok() == other.to_object().ok()
    }
}

/// What one call of an operator produced.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Outcome {
    Done(Done),
    Poll { after_seconds: u32, state: Value },
    Error { message: String, retryable: bool },
}

impl Outcome {
    pub fn error(message: impl Into<String>) -> Self {
        Outcome::Error { message: message.into(), retryable: false }
    }
}

/// What a plugin says about itself (`describe`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginInfo {
    pub name: String,
    pub version: String,
    pub operators: Vec<String>,
    pub wit_version: String,
}

/// Resources one task used: wall time, CPU time (user + system) and peak memory (of the
/// wasm instance, or the largest process of a command). [`Usage::add`] sums two of them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Usage {
    pub wall: Duration,
    pub cpu: Duration,
    pub peak_memory_bytes: u64,
}

impl Usage {
    /// Times add up; the peak is the larger one.
    pub fn add(&mut self, other: Usage) {
        self.wall += other.wall;
        self.cpu += other.cpu;
        self.peak_memory_bytes = self.peak_memory_bytes.max(other.peak_memory_bytes);
    }
}

/// Resource limits of one task invocation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Wall-clock budget of one call (enforced by epoch interruption).
    pub cpu_time: Duration,
    /// Maximum linear memory (and tables) the instance may grow to.
    pub memory_bytes: usize,
    /// Maximum bytes of log and stdout/stderr kept per call; the rest is dropped with a note.
    pub log_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { cpu_time: Duration::from_secs(60), memory_bytes: 256 << 20, log_bytes: 1 << 20 }
    }
}

/// Set from outside (e.g. `spade kill`) to interrupt a running call at its next epoch tick.
#[derive(Clone, Debug, Default)]
pub struct CancelToken(Arc<AtomicBool>);

impl CancelToken {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst)
    }
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// How many bytes the tasks of one attempt may add to its workspace, shared by every call
/// of the attempt (calls run in parallel). The runtime charges each write that grows a file
/// and refunds truncations and deletions; a write past the limit fails with "no space" in
/// the guest and fails the task that made it, naming the quota.
///
/// It counts what the attempt adds, not the files the workspace starts with: a project's
/// own data never makes its first task fail.
#[derive(Clone, Debug)]
pub struct DiskQuota(Arc<QuotaState>);

#[derive(Debug)]
struct QuotaState {
    limit: u64,
    used: AtomicU64,
}

impl DiskQuota {
    /// A quota of `limit` bytes.
    pub fn new(limit: u64) -> Self {
        DiskQuota(Arc::new(QuotaState { limit, used: AtomicU64::new(0) }))
    }

    /// No limit (tests, benches, calls without a workspace).
    pub fn unlimited() -> Self {
        Self::new(u64::MAX)
    }

    pub fn limit(&self) -> u64 {
        self.0.limit
    }

    /// Bytes added so far.
    pub fn used(&self) -> u64 {
        self.0.used.load(Ordering::SeqCst)
    }

    /// Take `bytes` from the quota; `false` (and nothing taken) when they do not fit.
    pub fn charge(&self, bytes: u64) -> bool {
        if bytes == 0 {
            return true;
        }
        self.0
            .used
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |used| {
                used.checked_add(bytes).filter(|total| *total <= self.0.limit)
            })
            .is_ok()
    }

    /// Give `bytes` back (a file shrank or was deleted). Never below zero: deleting files
    /// the workspace started with does not make room beyond the limit.
    pub fn refund(&self, bytes: u64) {
        let _ = self.0.used.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |used| Some(used.saturating_sub(bytes)));
    }
}

/// Severity of a task log line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum LogLevel {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
}

/// Where a required attempt stands (the `engine` capability).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AttemptState {
    Running,
    Success,
    Failure,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptRef {
    pub attempt_id: i64,
    pub session_id: i64,
    pub state: AttemptState,
}

/// `require>`'s request to the engine.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StartRequest {
    pub project_name: Option<String>,
    pub workflow_name: String,
    pub session_time: String,
    pub attempt_name: Option<String>,
    pub params: Object,
    /// `none`, `failed` or `all`.
    pub rerun_on: String,
}

/// Host capabilities a running task may call. Implemented by the engine side; the runtime
/// only forwards calls of granted imports.
pub trait TaskServices: Send + Sync {
    /// User-facing output (`echo>`): stdout in local mode.
    fn print(&self, line: &str);
    /// A task log line (already capped by the runtime).
    fn log(&self, level: LogLevel, message: &str);
    /// A granted secret.
    fn secret(&self, key: &str) -> Option<String>;
    /// `call>`: load a workflow file of the project as a task config.
    fn load_workflow(&self, path: &str) -> Result<Object, String>;
    /// `param_eval>`: render a `${...}` template with `scope` as the variables.
    fn render_template(&self, template: &str, scope: &Object) -> Result<String, String>;
    /// `require>`: find or start an attempt.
    fn start_or_find(&self, req: &StartRequest) -> Result<AttemptRef, String>;
    /// `require>`: poll an attempt.
    fn attempt_status(&self, attempt_id: i64) -> Result<AttemptRef, String>;
    /// `param_get>`: the project's parameter server value of `key` (none: unset or expired).
    fn param_get(&self, _key: &str) -> Result<Option<String>, String> {
        Err("the parameter server is not available where this task runs".into())
    }
    /// `param_set>`: set `key` in the project's parameter server.
    fn param_set(&self, _key: &str, _value: &str) -> Result<(), String> {
        Err("the parameter server is not available where this task runs".into())
    }
    /// A line a command of the task wrote (capability `command`); stderr lines are warnings.
    /// Local mode also shows them on spade's stderr, prefixed by the task name.
    fn command_output(&self, stderr: bool, line: &str) {
        self.log(if stderr { LogLevel::Warn } else { LogLevel::Info }, line);
    }
    /// Resources the task used: called after each operator call (the wasm side) and when a
    /// command of the task finishes. Added up per task.
    fn record_usage(&self, _usage: Usage) {}
    /// Directory (relative to the project) of the workflow file the task came from, where
    /// `call>` resolves relative paths.
    fn workdir(&self) -> Option<String> {
        None
    }
}

/// What travels between the server's executor and an agent through the task queue: the
/// call to make and what came of it.
pub mod remote {
    use serde::{Deserialize, Serialize};

    use crate::{Limits, LogLevel, Outcome, TaskRequest, Usage};

    /// One operator call for an agent.
    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
    pub struct QueuedCall {
        pub request: TaskRequest,
        /// See [`crate::TaskServices::workdir`].
        pub workdir: Option<String>,
        pub limits: Limits,
        /// Bytes the call may add to its workspace.
        pub disk_quota: u64,
        /// The agent where commands of the task's previous call still run: this call polls
        /// them. Another agent taking it means that agent was lost, and the task starts over.
        #[serde(default)]
        pub runs_on: Option<String>,
        /// Not a call: the task ended (its attempt was killed) and the agent in `runs_on`
        /// stops its commands and drops its workspace.
        #[serde(default)]
        pub abandon: bool,
    }

    /// What an agent reports for a call.
    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
    pub struct CallResult {
        /// The outcome, or why the call produced none (the task fails with it).
        pub outcome: Result<Outcome, String>,
        /// Log lines and command output of the call, in order.
        pub logs: Vec<(LogLevel, String)>,
        /// `echo>`-style output.
        pub prints: Vec<String>,
        pub usage: Usage,
        /// The call polls and left commands running on its agent.
        #[serde(default)]
        pub holds_commands: bool,
    }
}

/// One call of an operator.
pub struct Invocation<'a> {
    pub request: &'a TaskRequest,
    /// The only directory the plugin can see (read-write).
    pub workspace: &'a Path,
    /// What the attempt may still add to the workspace.
    pub disk: &'a DiskQuota,
    pub limits: Limits,
    pub services: &'a dyn TaskServices,
    pub cancel: &'a CancelToken,
}

/// Why an invocation produced no outcome. The engine fails the task with this message.
#[derive(Debug, thiserror::Error)]
pub enum InvokeError {
    #[error("unknown operator '{0}>': no installed plugin provides it")]
    UnknownOperator(String),
    #[error("plugin {plugin}: {message}")]
    Plugin { plugin: String, message: String },
    #[error("task was killed")]
    Cancelled,
}

/// The engine's view of the operator runtime.
pub trait OperatorHost: Send + Sync {
    /// Whether some installed plugin provides `operator`.
    fn has_operator(&self, operator: &str) -> bool;
    /// Run one call. Plugin faults (trap, limit, malformed outcome) are `Err`, never panics.
    fn invoke(&self, inv: Invocation<'_>) -> Result<Outcome, InvokeError>;
    /// Whether commands a call of this task started are still running here (its next poll
    /// must come back to this host).
    fn commands_running(&self, _attempt_id: i64, _task_name: &str) -> bool {
        false
    }
    /// The task ended elsewhere (its attempt was killed) while commands it started still
    /// run here: stop them.
    fn end_task(&self, _attempt_id: i64, _task_name: &str) {}
}
