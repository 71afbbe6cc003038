//! Durable state: projects, sessions, attempts, tasks and their frozen requests and results.
//!
//! [`Store`] is what the engine writes through. [`SqliteStore`] is the embedded default
//! (one file, WAL mode), kept in the project directory for `spade run`; [`PgStore`] keeps
//! the same tables in PostgreSQL, so several processes on several hosts share one state.
//! [`StoreLocation`] names either and opens it. The engine batches
//! its task changes and hands them over with [`Store::write`], which commits them in one
//! transaction, so a task's outcome, its generated children and the next ready set become
//! durable together.
//!
//! This crate knows nothing of `.dig` files, expressions or wasm.

mod location;
pub mod param_server;
mod pool;
mod postgres;
pub mod projects;
pub mod queue;
mod sqlite;

use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

use spade_api::{Done, Object, TaskRequest, Usage};

pub use location::StoreLocation;
pub use pool::{PooledHandle, PooledStore, StorePool};
pub use postgres::PgStore;
pub use projects::{NewRevision, ProjectRecord, Pushed, RevisionRecord};
pub use queue::{CallState, ClaimedCall, GivenUp, Held, NewQueuedCall, Queue};
pub use sqlite::SqliteStore;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state database {path}: {source}")]
    Open { path: String, source: rusqlite::Error },
    #[error("state database: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("state database holds malformed JSON in {what}: {source}")]
    Json { what: String, source: serde_json::Error },
    #[error(
        "session {workflow} at {session_time} already has an attempt named '{name}'; \
         pick another name (--name) or retry the existing attempt"
    )]
    DuplicateAttempt { workflow: String, session_time: String, name: String },
    #[error(
        "state database schema version {found} is newer than this spade understands ({known}); \
         upgrade spade"
    )]
    TooNew { found: i64, known: i64 },
    #[error("no attempt with id {0}")]
    NoSuchAttempt(i64),
    #[error("state database {url}: {message}")]
    Connect { url: String, message: String },
    #[error("state database (PostgreSQL): {0}")]
    Postgres(String),
    #[error("no project {0}")]
    NoSuchProject(String),
    #[error("project {project} has no revision {revision}")]
    NoSuchRevision { project: String, revision: String },
    #[error(
        "project {project} already has a revision named '{revision}' with other files; a revision never \
         changes once pushed: push under a new revision name"
    )]
    RevisionConflict { project: String, revision: String },
    #[error("no archive with digest {0}")]
    NoSuchArchive(String),
    #[error("no queued call with id {0}")]
    NoSuchCall(i64),
    #[error("state database {location}: no connection: {message}")]
    Pool { location: String, message: String },
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// State of a task as persisted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TaskState {
    Running,
    Polling,
    Success,
    Error,
    Canceled,
}

impl TaskState {
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Running => "running",
            TaskState::Polling => "polling",
            TaskState::Success => "success",
            TaskState::Error => "error",
            TaskState::Canceled => "canceled",
        }
    }
    pub(crate) fn parse(s: &str) -> TaskState {
        match s {
            "running" => TaskState::Running,
            "polling" => TaskState::Polling,
            "success" => TaskState::Success,
            "canceled" => TaskState::Canceled,
            _ => TaskState::Error,
        }
    }
}

/// State of an attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttemptStatus {
    Running,
    Success,
    Error,
    Killed,
}

impl AttemptStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            AttemptStatus::Running => "running",
            AttemptStatus::Success => "success",
            AttemptStatus::Error => "error",
            AttemptStatus::Killed => "killed",
        }
    }
    pub(crate) fn parse(s: &str) -> AttemptStatus {
        match s {
            "running" => AttemptStatus::Running,
            "success" => AttemptStatus::Success,
            "killed" => AttemptStatus::Killed,
            _ => AttemptStatus::Error,
        }
    }
}

/// What the engine asks for when an attempt starts.
#[derive(Clone, Debug)]
pub struct NewAttempt {
    pub project: String,
    pub workflow: String,
    /// ISO 8601 with offset; the session key together with project and workflow.
    pub session_time: String,
    pub timezone: String,
    /// None: the store picks a fresh name (`""` for a session's first attempt).
    pub name: Option<String>,
    pub params: Object,
}

#[derive(Clone, Debug, PartialEq)]
pub struct AttemptRecord {
    pub attempt_id: i64,
    pub session_id: i64,
    pub session_uuid: String,
    pub name: String,
    pub status: AttemptStatus,
    pub workflow: String,
    pub session_time: String,
}

/// One change to a task row, identified by (attempt, task index).
#[derive(Clone, Debug)]
pub struct TaskChange {
    pub attempt_id: i64,
    /// The engine's index of the task within the attempt (stable for the attempt's life;
    /// a retried copy of a task gets a new index, so earlier copies stay on record).
    pub index: u32,
    pub name: String,
    pub state: TaskState,
    pub retry_count: u32,
    /// The frozen request, written once before the first invocation (shared with the
    /// engine: it is not copied to be saved).
    pub request: Option<std::sync::Arc<TaskRequest>>,
    /// The operator's result; `None` keeps the one stored (a generator's result is written
    /// when it produced its subtasks, not again when they have all finished).
    pub result: Option<Done>,
    pub error: Option<String>,
    /// What the task has used so far (all its calls and commands); `None` keeps the stored.
    pub usage: Option<Usage>,
}

/// A workflow as stored with a revision.
#[derive(Clone, Debug, PartialEq)]
pub struct WorkflowDefinition {
    pub name: String,
    pub timezone: String,
    pub config: Object,
}

/// One line of a task's log.
#[derive(Clone, Debug, PartialEq)]
pub struct LogLine {
    pub attempt_id: i64,
    pub task_name: String,
    pub at_ms: i64,
    /// `trace`, `debug`, `info`, `warn` or `error`.
    pub level: String,
    pub message: String,
}

/// A task as read back.
#[derive(Clone, Debug)]
pub struct TaskRecord {
    pub name: String,
    pub state: TaskState,
    pub retry_count: u32,
    pub request: Option<TaskRequest>,
    pub result: Option<Done>,
    pub error: Option<String>,
    pub updated_at_ms: i64,
    /// When its operator was first called (none for groups and replayed tasks).
    pub started_at_ms: Option<i64>,
    /// Wall time, CPU time and peak memory of its calls and commands, once it ran.
    pub usage: Option<Usage>,
}

/// The usage columns (`wall_ms`, `cpu_ms`, `peak_memory_bytes`) of a task row.
pub(crate) fn usage_from_columns(wall_ms: Option<i64>, cpu_ms: Option<i64>, peak: Option<i64>) -> Option<Usage> {
    let ms = |v: i64| std::time::Duration::from_millis(u64::try_from(v).unwrap_or(0));
    Some(Usage { wall: ms(wall_ms?), cpu: ms(cpu_ms.unwrap_or(0)), peak_memory_bytes: peak.unwrap_or(0).max(0) as u64 })
}

/// The usage columns of `usage`.
pub(crate) fn usage_columns(usage: Option<&Usage>) -> (Option<i64>, Option<i64>, Option<i64>) {
    match usage {
        None => (None, None, None),
        Some(u) => (
            Some(i64::try_from(u.wall.as_millis()).unwrap_or(i64::MAX)),
            Some(i64::try_from(u.cpu.as_millis()).unwrap_or(i64::MAX)),
            Some(i64::try_from(u.peak_memory_bytes).unwrap_or(i64::MAX)),
        ),
    }
}

/// How many tasks of an attempt are in each state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TaskCounts {
    pub running: u64,
    pub polling: u64,
    pub success: u64,
    pub error: u64,
    pub canceled: u64,
}

impl TaskCounts {
    pub fn total(&self) -> u64 {
        self.running + self.polling + self.success + self.error + self.canceled
    }
    pub(crate) fn add(&mut self, state: TaskState, n: u64) {
        match state {
            TaskState::Running => self.running += n,
            TaskState::Polling => self.polling += n,
            TaskState::Success => self.success += n,
            TaskState::Error => self.error += n,
            TaskState::Canceled => self.canceled += n,
        }
    }
}

/// An attempt with what inspection commands show about it.
#[derive(Clone, Debug, PartialEq)]
pub struct AttemptInfo {
    pub attempt: AttemptRecord,
    pub project: String,
    pub project_id: i64,
    pub timezone: String,
    pub params: Object,
    pub created_at_ms: i64,
    /// None while the attempt runs, or when its process died before finishing it.
    pub finished_at_ms: Option<i64>,
    pub tasks: TaskCounts,
}

/// A session as listed by inspection commands.
#[derive(Clone, Debug, PartialEq)]
pub struct SessionRecord {
    pub session_id: i64,
    pub session_uuid: String,
    pub project: String,
    pub project_id: i64,
    pub workflow: String,
    pub session_time: String,
    pub attempt_count: u64,
    pub last_attempt_id: Option<i64>,
    pub last_status: Option<AttemptStatus>,
    /// When its latest attempt was created.
    pub last_attempt_at_ms: Option<i64>,
}

/// Persistence the engine needs. Implementations commit each `write` atomically.
pub trait Store: Queue + Send {
    /// Whether the database still answers (a pool checks a connection before lending it).
    fn ping(&mut self) -> Result<()>;
    /// Find or create the session and create a new attempt in it.
    fn begin_attempt(&mut self, new: &NewAttempt) -> Result<AttemptRecord>;
    /// Results of tasks that succeeded in earlier attempts of `session_id` (latest wins),
    /// keyed by full task name: what `spade run` replays instead of running them again.
    fn saved_results(&mut self, session_id: i64, before_attempt: i64) -> Result<HashMap<String, Done>>;
    /// Frozen requests of tasks that were still running or polling when an earlier attempt of
    /// `session_id` ended (a crash, a kill): a re-run continues with the same request (and
    /// poll state) instead of evaluating its params again.
    fn unfinished_requests(&mut self, session_id: i64, before_attempt: i64) -> Result<HashMap<String, TaskRequest>>;
    /// Commit a batch of task changes in one transaction.
    fn write(&mut self, changes: &[TaskChange]) -> Result<()>;
    fn finish_attempt(&mut self, attempt_id: i64, status: AttemptStatus) -> Result<()>;
    fn attempt(&mut self, attempt_id: i64) -> Result<AttemptRecord>;
    /// Attempts of the session (project, workflow, session_time), oldest first; empty when
    /// the session does not exist.
    fn session_attempts(&mut self, project: &str, workflow: &str, session_time: &str) -> Result<Vec<AttemptRecord>>;
    /// Attempts of `workflow` that have not ended, with the process recorded as running each
    /// (`skip_on_overtime` asks whether the workflow is still running anywhere).
    fn running_attempts(&mut self, project: &str, workflow: &str) -> Result<Vec<(AttemptRecord, Option<u32>)>>;
    fn tasks(&mut self, attempt_id: i64) -> Result<Vec<TaskRecord>>;
    /// Sessions, newest first; only those of `workflow` when given.
    fn list_sessions(&mut self, workflow: Option<&str>) -> Result<Vec<SessionRecord>>;
    /// Attempts, newest first; only those of `session_id` when given.
    fn list_attempts(&mut self, session_id: Option<i64>) -> Result<Vec<AttemptInfo>>;
    fn attempt_info(&mut self, attempt_id: i64) -> Result<AttemptInfo>;
    /// Append task log lines (one transaction).
    fn append_logs(&mut self, lines: &[LogLine]) -> Result<()>;
    /// Log lines of an attempt, oldest first; only tasks whose name starts with `prefix`.
    fn task_logs(&mut self, attempt_id: i64, prefix: &str) -> Result<Vec<LogLine>>;
    /// Record a revision of the project (idempotent by `name`) with its workflow
    /// definitions (name, time zone, config); returns its id.
    fn put_revision(&mut self, project: &str, name: &str, workflows: &[WorkflowDefinition]) -> Result<i64>;
    /// Record which revision an attempt runs.
    fn link_revision(&mut self, attempt_id: i64, revision_id: i64) -> Result<()>;
    /// Results of the tasks that succeeded in `attempt_id` (for `spade retry --resume`).
    fn attempt_results(&mut self, attempt_id: i64) -> Result<HashMap<String, Done>>;
    /// Record which process runs the attempt.
    fn claim_attempt(&mut self, attempt_id: i64, pid: u32) -> Result<()>;
    /// The process recorded as running the attempt, if any.
    fn attempt_owner(&mut self, attempt_id: i64) -> Result<Option<u32>>;
    /// Ask the process running the attempt to stop it (`spade kill`).
    fn request_cancel(&mut self, attempt_id: i64) -> Result<()>;
    /// Whether someone asked to stop the attempt.
    fn cancel_requested(&mut self, attempt_id: i64) -> Result<bool>;
    /// Attempts still running that someone asked to stop (one query for a whole server).
    fn cancel_requests(&mut self) -> Result<Vec<i64>>;
    /// Small values of a project (e.g. the last session time of `spade run`).
    fn get_value(&mut self, project: &str, key: &str) -> Result<Option<String>>;
    fn set_value(&mut self, project: &str, key: &str, value: &str) -> Result<()>;
    /// Sets `key` to `value` only if it currently holds `expected` (`None`: is unset);
    /// whether it did. Lets processes sharing a store (schedulers on several hosts) agree
    /// on who advances a value.
    fn swap_value(&mut self, project: &str, key: &str, expected: Option<&str>, value: &str) -> Result<bool>;

    /// Store a pushed revision ([`projects`]): its archive (once per digest) and workflow
    /// definitions, in one transaction, creating the project when it is new.
    fn push_revision(&mut self, new: &NewRevision<'_>) -> Result<Pushed>;
    /// Every project, by name.
    fn projects(&mut self) -> Result<Vec<ProjectRecord>>;
    fn project(&mut self, id: i64) -> Result<ProjectRecord>;
    fn project_named(&mut self, name: &str) -> Result<Option<ProjectRecord>>;
    /// Revisions of a project, newest first.
    fn revisions(&mut self, project_id: i64) -> Result<Vec<RevisionRecord>>;
    /// The project's revision called `name`, or its latest one.
    fn revision(&mut self, project_id: i64, name: Option<&str>) -> Result<RevisionRecord>;
    /// The workflows of a revision, by name.
    fn workflow_definitions(&mut self, revision_id: i64) -> Result<Vec<WorkflowDefinition>>;
    /// An archive's bytes by digest.
    fn archive(&mut self, digest: &str) -> Result<Vec<u8>>;
}

/// Row id of a task: its attempt in the high bits, the engine's index in the low 32.
pub(crate) fn task_row_id(attempt_id: i64, index: u32) -> i64 {
    (attempt_id << 32) | index as i64
}

pub(crate) fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

pub(crate) fn to_json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).expect("serialising plain data cannot fail")
}

pub(crate) fn from_json<T: serde::de::DeserializeOwned>(what: &str, s: &str) -> Result<T> {
    serde_json::from_str(s).map_err(|source| StoreError::Json { what: what.to_string(), source })
}

/// The name of a new attempt of a session that has `count` attempts: the one asked for
/// (unless taken), `""` for the first, else a fresh readable `run-N`.
pub(crate) fn attempt_name(
    new: &NewAttempt,
    count: i64,
    mut taken: impl FnMut(&str) -> Result<bool>,
) -> Result<String> {
    match &new.name {
        Some(n) if taken(n)? => Err(StoreError::DuplicateAttempt {
            workflow: new.workflow.clone(),
            session_time: new.session_time.clone(),
            name: n.clone(),
        }),
        Some(n) => Ok(n.clone()),
        None if count == 0 => Ok(String::new()),
        None => {
            let mut k = count + 1;
            loop {
                let candidate = format!("run-{k}");
                if !taken(&candidate)? {
                    return Ok(candidate);
                }
                k += 1;
            }
        }
    }
}

/// A task row, its JSON columns parsed.
#[allow(clippy::too_many_arguments)]
pub(crate) fn task_record(
    name: String,
    state: &str,
    retry_count: u32,
    request: Option<&str>,
    result: Option<&str>,
    error: Option<String>,
    updated_at_ms: i64,
    started_at_ms: Option<i64>,
    usage: Option<Usage>,
) -> Result<TaskRecord> {
    let request = request.map(|s| from_json(&format!("request of task {name}"), s)).transpose()?;
    let result = result.map(|s| from_json(&format!("result of task {name}"), s)).transpose()?;
    Ok(TaskRecord {
        state: TaskState::parse(state),
        retry_count,
        request,
        result,
        error,
        updated_at_ms,
        started_at_ms,
        usage,
        name,
    })
}

/// Frozen requests of the tasks still running or polling at the end of their attempt, from
/// `(name, state, request)` rows in task order (a later row of a name replaces earlier ones).
pub(crate) fn unfinished<'a>(
    rows: impl Iterator<Item = (String, &'a str, Option<&'a str>)>,
) -> Result<HashMap<String, TaskRequest>> {
    let mut out = HashMap::new();
    for (name, state, request) in rows {
        match (TaskState::parse(state), request) {
            (TaskState::Running | TaskState::Polling, Some(r)) => {
                let req: TaskRequest = from_json(&format!("request of task {name}"), r)?;
                out.insert(name, req);
            }
            _ => {
                out.remove(&name);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
