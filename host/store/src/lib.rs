//! Durable state: projects, sessions, attempts, tasks and their frozen requests and results.
//!
//! [`Store`] is what the engine writes through; [`SqliteStore`] is the embedded default
//! (one file, WAL mode), kept in the project directory for `spade run`. The engine batches
//! its task changes and hands them over with [`Store::write`], which commits them in one
//! transaction, so a task's outcome, its generated children and the next ready set become
//! durable together.
//!
//! This crate knows nothing of `.dig` files, expressions or wasm.

use std::collections::HashMap;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OptionalExtension, params};
use spade_api::{Done, Object, TaskRequest};

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
    fn parse(s: &str) -> TaskState {
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
    fn parse(s: &str) -> AttemptStatus {
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
    pub result: Option<Done>,
    pub error: Option<String>,
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
    fn add(&mut self, state: TaskState, n: u64) {
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
    pub workflow: String,
    pub session_time: String,
    pub attempt_count: u64,
    pub last_attempt_id: Option<i64>,
    pub last_status: Option<AttemptStatus>,
    /// When its latest attempt was created.
    pub last_attempt_at_ms: Option<i64>,
}

/// Persistence the engine needs. Implementations commit each `write` atomically.
pub trait Store: Send {
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
    /// Small project-level values (e.g. the last session time of `spade run`).
    fn get_value(&mut self, key: &str) -> Result<Option<String>>;
    fn set_value(&mut self, key: &str, value: &str) -> Result<()>;
}

const SCHEMA_VERSION: i64 = 1;

/// Migrations, indexed by the version they produce. Never edit a released one: add another.
const MIGRATIONS: &[&str] = &[
    // 1: initial schema
    r#"
    CREATE TABLE projects (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        created_at INTEGER NOT NULL
    );
    -- A revision is one version of the project's workflow files (local mode: named by the
    -- digest of their definitions); attempts point at the revision they ran.
    CREATE TABLE revisions (
        id INTEGER PRIMARY KEY,
        project_id INTEGER NOT NULL REFERENCES projects(id),
        name TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        UNIQUE (project_id, name)
    );
    CREATE TABLE workflow_definitions (
        id INTEGER PRIMARY KEY,
        revision_id INTEGER NOT NULL REFERENCES revisions(id),
        name TEXT NOT NULL,
        timezone TEXT NOT NULL,
        config TEXT NOT NULL,
        UNIQUE (revision_id, name)
    );
    CREATE TABLE sessions (
        id INTEGER PRIMARY KEY,
        project_id INTEGER NOT NULL REFERENCES projects(id),
        workflow TEXT NOT NULL,
        session_time TEXT NOT NULL,
        uuid TEXT NOT NULL,
        last_attempt_id INTEGER,
        UNIQUE (project_id, workflow, session_time)
    );
    CREATE TABLE attempts (
        id INTEGER PRIMARY KEY,
        session_id INTEGER NOT NULL REFERENCES sessions(id),
        name TEXT NOT NULL,
        status TEXT NOT NULL,
        timezone TEXT NOT NULL,
        params TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        finished_at INTEGER,
        -- `spade kill` sets it; the process running the attempt polls it.
        cancel_requested INTEGER NOT NULL DEFAULT 0,
        -- The process running the attempt (local mode), to tell a live run from a dead one.
        pid INTEGER,
        revision_id INTEGER REFERENCES revisions(id),
        UNIQUE (session_id, name)
    );
    -- id = attempt_id << 32 | the engine's task index: rows of an attempt are one
    -- contiguous, append-mostly range of the table b-tree, and no secondary index has to
    -- be updated on every state change (each change is a commit on the hot path).
    CREATE TABLE tasks (
        id INTEGER PRIMARY KEY,
        attempt_id INTEGER NOT NULL REFERENCES attempts(id),
        name TEXT NOT NULL,
        state TEXT NOT NULL,
        retry_count INTEGER NOT NULL DEFAULT 0,
        request TEXT,
        result TEXT,
        error TEXT,
        -- First time the task started running (its operator was first called), if ever.
        started_at INTEGER,
        updated_at INTEGER NOT NULL
    );
    -- Task log lines (plugin logs, captured stdout/stderr), capped per task by the engine.
    CREATE TABLE task_logs (
        id INTEGER PRIMARY KEY,
        attempt_id INTEGER NOT NULL REFERENCES attempts(id),
        task_name TEXT NOT NULL,
        at INTEGER NOT NULL,
        level TEXT NOT NULL,
        message TEXT NOT NULL
    );
    CREATE INDEX task_logs_by_attempt ON task_logs (attempt_id, id);
    CREATE TABLE kv (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    "#,
];

/// Row id of a task: its attempt in the high bits, the engine's index in the low 32.
fn task_row_id(attempt_id: i64, index: u32) -> i64 {
    (attempt_id << 32) | index as i64
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

fn to_json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).expect("serialising plain data cannot fail")
}

fn from_json<T: serde::de::DeserializeOwned>(what: &str, s: &str) -> Result<T> {
    serde_json::from_str(s).map_err(|source| StoreError::Json { what: what.to_string(), source })
}

/// Rows of `(name, result JSON)` as a map; a later row of the same name wins.
fn results_by_name(mut rows: rusqlite::Rows<'_>) -> Result<HashMap<String, Done>> {
    let mut out = HashMap::new();
    while let Some(row) = rows.next()? {
        let name: String = row.get(0)?;
        let result: String = row.get(1)?;
        let done: Done = from_json(&format!("result of task {name}"), &result)?;
        out.insert(name, done);
    }
    Ok(out)
}

fn name_taken(conn: &Connection, session_id: i64, name: &str) -> Result<bool> {
    Ok(conn
        .query_row("SELECT 1 FROM attempts WHERE session_id = ?1 AND name = ?2", params![session_id, name], |_| Ok(()))
        .optional()?
        .is_some())
}

/// Maps `SELECT a.id, a.session_id, s.uuid, a.name, a.status, s.workflow, s.session_time`.
fn attempt_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<AttemptRecord> {
    Ok(AttemptRecord {
        attempt_id: r.get(0)?,
        session_id: r.get(1)?,
        session_uuid: r.get(2)?,
        name: r.get(3)?,
        status: AttemptStatus::parse(&r.get::<_, String>(4)?),
        workflow: r.get(5)?,
        session_time: r.get(6)?,
    })
}

const ATTEMPT_INFO_SELECT: &str = "SELECT a.id, a.session_id, s.uuid, a.name, a.status, s.workflow, s.session_time,
        p.name, a.timezone, a.params, a.created_at, a.finished_at
     FROM attempts a JOIN sessions s ON s.id = a.session_id JOIN projects p ON p.id = s.project_id";

/// A row of [`ATTEMPT_INFO_SELECT`], before its params are parsed and its tasks counted.
struct RawAttemptInfo {
    attempt: AttemptRecord,
    project: String,
    timezone: String,
    params: String,
    created_at_ms: i64,
    finished_at_ms: Option<i64>,
}

fn attempt_info_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<RawAttemptInfo> {
    Ok(RawAttemptInfo {
        attempt: attempt_from_row(r)?,
        project: r.get(7)?,
        timezone: r.get(8)?,
        params: r.get(9)?,
        created_at_ms: r.get(10)?,
        finished_at_ms: r.get(11)?,
    })
}

/// The embedded default store: one SQLite file in WAL mode.
pub struct SqliteStore {
    conn: Connection,
}

impl SqliteStore {
    /// Open (creating and migrating as needed) the database at `path`.
    pub fn open(path: &Path) -> Result<Self> {
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let conn = Connection::open(path)
            .map_err(|source| StoreError::Open { path: path.display().to_string(), source })?;
        Self::init(conn)
    }

    /// A private in-memory database (tests).
    pub fn in_memory() -> Result<Self> {
        Self::init(Connection::open_in_memory()?)
    }

    /// A scratch database for runs that keep nothing (`--no-save`): a file, so attempts
    /// started by `require>` can open it too, but without durability (no fsync, no WAL).
    pub fn open_scratch(path: &Path) -> Result<Self> {
        let conn = Connection::open(path)
            .map_err(|source| StoreError::Open { path: path.display().to_string(), source })?;
        let store = Self::init(conn)?;
        store.conn.pragma_update(None, "synchronous", "OFF")?;
        Ok(store)
    }

    fn init(conn: Connection) -> Result<Self> {
        // First, so that everything below waits for another process's lock, not fails.
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        // WAL + NORMAL: a commit is durable against a process crash (kill -9); only an OS
        // crash can lose the last commits, never corrupt the file.
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        // Checkpoint less often: a page rewritten by many commits is copied back once.
        conn.pragma_update(None, "wal_autocheckpoint", 10_000)?;
        let mut store = SqliteStore { conn };
        store.migrate()?;
        Ok(store)
    }

    fn migrate(&mut self) -> Result<()> {
        let version: i64 = self.conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if version == SCHEMA_VERSION {
            return Ok(());
        }
        // Two processes may open a new database at once (`spade run` and `spade attempts`):
        // take the write lock first and look again, so only one of them migrates.
        let tx = self.conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let version: i64 = tx.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if version > SCHEMA_VERSION {
            return Err(StoreError::TooNew { found: version, known: SCHEMA_VERSION });
        }
        for sql in MIGRATIONS.iter().skip(version as usize) {
            tx.execute_batch(sql)?;
        }
        tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
        tx.commit()?;
        Ok(())
    }

    /// Parses the params of an attempt row and counts its tasks.
    fn complete_attempt_info(&self, raw: RawAttemptInfo) -> Result<AttemptInfo> {
        let RawAttemptInfo { attempt, project, timezone, params, created_at_ms, finished_at_ms } = raw;
        let params = from_json(&format!("params of attempt {}", attempt.attempt_id), &params)?;
        let mut tasks = TaskCounts::default();
        // The row-id range of the attempt (see `task_row_id`): no index on attempt_id.
        let mut stmt = self.conn.prepare_cached(
            "SELECT state, COUNT(*) FROM tasks WHERE id >= (?1 << 32) AND id < ((?1 + 1) << 32) GROUP BY state",
        )?;
        let mut rows = stmt.query([attempt.attempt_id])?;
        while let Some(row) = rows.next()? {
            tasks.add(TaskState::parse(&row.get::<_, String>(0)?), row.get::<_, i64>(1)? as u64);
        }
        Ok(AttemptInfo { attempt, project, timezone, params, created_at_ms, finished_at_ms, tasks })
    }

    fn project_id(&self, name: &str) -> Result<i64> {
        self.conn.execute(
            "INSERT INTO projects (name, created_at) VALUES (?1, ?2) ON CONFLICT(name) DO NOTHING",
            params![name, now_ms()],
        )?;
        Ok(self.conn.query_row("SELECT id FROM projects WHERE name = ?1", [name], |r| r.get(0))?)
    }
}

impl Store for SqliteStore {
    fn begin_attempt(&mut self, new: &NewAttempt) -> Result<AttemptRecord> {
        let project_id = self.project_id(&new.project)?;
        let tx = self.conn.transaction()?;
        tx.execute(
            "INSERT INTO sessions (project_id, workflow, session_time, uuid) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT(project_id, workflow, session_time) DO NOTHING",
            params![project_id, new.workflow, new.session_time, uuid::Uuid::new_v4().to_string()],
        )?;
        let (session_id, session_uuid): (i64, String) = tx.query_row(
            "SELECT id, uuid FROM sessions WHERE project_id = ?1 AND workflow = ?2 AND session_time = ?3",
            params![project_id, new.workflow, new.session_time],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        let count: i64 =
            tx.query_row("SELECT COUNT(*) FROM attempts WHERE session_id = ?1", [session_id], |r| r.get(0))?;
        let name = match &new.name {
            Some(n) => {
                if name_taken(&tx, session_id, n)? {
                    return Err(StoreError::DuplicateAttempt {
                        workflow: new.workflow.clone(),
                        session_time: new.session_time.clone(),
                        name: n.clone(),
                    });
                }
                n.clone()
            }
            None if count == 0 => String::new(),
            None => {
                // Local re-runs of a session get a fresh, readable name.
                let mut k = count + 1;
                loop {
                    let candidate = format!("run-{k}");
                    if !name_taken(&tx, session_id, &candidate)? {
                        break candidate;
                    }
                    k += 1;
                }
            }
        };
        tx.execute(
            "INSERT INTO attempts (session_id, name, status, timezone, params, created_at)
             VALUES (?1, ?2, 'running', ?3, ?4, ?5)",
            params![session_id, name, new.timezone, to_json(&new.params), now_ms()],
        )?;
        let attempt_id = tx.last_insert_rowid();
        tx.execute("UPDATE sessions SET last_attempt_id = ?1 WHERE id = ?2", params![attempt_id, session_id])?;
        tx.commit()?;
        Ok(AttemptRecord {
            attempt_id,
            session_id,
            session_uuid,
            name,
            status: AttemptStatus::Running,
            workflow: new.workflow.clone(),
            session_time: new.session_time.clone(),
        })
    }

    fn saved_results(&mut self, session_id: i64, before_attempt: i64) -> Result<HashMap<String, Done>> {
        let mut stmt = self.conn.prepare(
            "SELECT t.name, t.result FROM attempts a JOIN tasks t
                ON t.id >= (a.id << 32) AND t.id < ((a.id + 1) << 32)
             WHERE a.session_id = ?1 AND a.id < ?2 AND t.state = 'success' AND t.result IS NOT NULL
             ORDER BY t.id",
        )?;
        results_by_name(stmt.query(params![session_id, before_attempt])?)
    }

    fn unfinished_requests(&mut self, session_id: i64, before_attempt: i64) -> Result<HashMap<String, TaskRequest>> {
        let mut stmt = self.conn.prepare(
            "SELECT t.name, t.state, t.request FROM attempts a JOIN tasks t
                ON t.id >= (a.id << 32) AND t.id < ((a.id + 1) << 32)
             WHERE a.session_id = ?1 AND a.id < ?2 ORDER BY t.id",
        )?;
        let mut rows = stmt.query(params![session_id, before_attempt])?;
        let mut out = HashMap::new();
        while let Some(row) = rows.next()? {
            let name: String = row.get(0)?;
            let state = TaskState::parse(&row.get::<_, String>(1)?);
            let request: Option<String> = row.get(2)?;
            match (state, request) {
                (TaskState::Running | TaskState::Polling, Some(r)) => {
                    let req: TaskRequest = from_json(&format!("request of task {name}"), &r)?;
                    out.insert(name, req);
                }
                _ => {
                    out.remove(&name);
                }
            }
        }
        Ok(out)
    }

    fn write(&mut self, changes: &[TaskChange]) -> Result<()> {
        if changes.is_empty() {
            return Ok(());
        }
        let now = now_ms();
        let tx = self.conn.transaction()?;
        {
            let mut upsert = tx.prepare_cached(
                "INSERT INTO tasks (id, attempt_id, name, state, retry_count, request, result, error, updated_at, started_at)
                 VALUES (?9, ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?10)
                 ON CONFLICT(id) DO UPDATE SET
                    state = excluded.state,
                    retry_count = excluded.retry_count,
                    request = COALESCE(excluded.request, tasks.request),
                    result = excluded.result,
                    error = excluded.error,
                    updated_at = excluded.updated_at,
                    started_at = COALESCE(tasks.started_at, excluded.started_at)",
            )?;
            for c in changes {
                upsert.execute(params![
                    c.attempt_id,
                    c.name,
                    c.state.as_str(),
                    c.retry_count,
                    c.request.as_deref().map(to_json),
                    c.result.as_ref().map(to_json),
                    c.error,
                    now,
                    task_row_id(c.attempt_id, c.index),
                    (c.state == TaskState::Running).then_some(now),
                ])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn finish_attempt(&mut self, attempt_id: i64, status: AttemptStatus) -> Result<()> {
        let n = self.conn.execute(
            "UPDATE attempts SET status = ?1, finished_at = ?2 WHERE id = ?3",
            params![status.as_str(), now_ms(), attempt_id],
        )?;
        if n == 0 {
            return Err(StoreError::NoSuchAttempt(attempt_id));
        }
        Ok(())
    }

    fn attempt(&mut self, attempt_id: i64) -> Result<AttemptRecord> {
        self.conn
            .query_row(
                "SELECT a.id, a.session_id, s.uuid, a.name, a.status, s.workflow, s.session_time
                 FROM attempts a JOIN sessions s ON s.id = a.session_id WHERE a.id = ?1",
                [attempt_id],
                attempt_from_row,
            )
            .optional()?
            .ok_or(StoreError::NoSuchAttempt(attempt_id))
    }

    fn session_attempts(&mut self, project: &str, workflow: &str, session_time: &str) -> Result<Vec<AttemptRecord>> {
        let mut stmt = self.conn.prepare(
            "SELECT a.id, a.session_id, s.uuid, a.name, a.status, s.workflow, s.session_time
             FROM attempts a JOIN sessions s ON s.id = a.session_id JOIN projects p ON p.id = s.project_id
             WHERE p.name = ?1 AND s.workflow = ?2 AND s.session_time = ?3 ORDER BY a.id",
        )?;
        let rows = stmt.query_map(params![project, workflow, session_time], attempt_from_row)?;
        Ok(rows.collect::<std::result::Result<Vec<_>, _>>()?)
    }

    fn tasks(&mut self, attempt_id: i64) -> Result<Vec<TaskRecord>> {
        let mut stmt = self.conn.prepare(
            "SELECT name, state, retry_count, request, result, error, updated_at, started_at FROM tasks
             WHERE id >= (?1 << 32) AND id < ((?1 + 1) << 32) ORDER BY id",
        )?;
        let rows = stmt.query_map([attempt_id], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, u32>(2)?,
                r.get::<_, Option<String>>(3)?,
                r.get::<_, Option<String>>(4)?,
                r.get::<_, Option<String>>(5)?,
                r.get::<_, i64>(6)?,
                r.get::<_, Option<i64>>(7)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (name, state, retry_count, request, result, error, updated_at_ms, started_at_ms) = row?;
            let request = match request {
                Some(s) => Some(from_json(&format!("request of task {name}"), &s)?),
                None => None,
            };
            let result = match result {
                Some(s) => Some(from_json(&format!("result of task {name}"), &s)?),
                None => None,
            };
            out.push(TaskRecord {
                name,
                state: TaskState::parse(&state),
                retry_count,
                request,
                result,
                error,
                updated_at_ms,
                started_at_ms,
            });
        }
        Ok(out)
    }

    fn list_sessions(&mut self, workflow: Option<&str>) -> Result<Vec<SessionRecord>> {
        let mut stmt = self.conn.prepare(
            "SELECT s.id, s.uuid, p.name, s.workflow, s.session_time,
                    (SELECT COUNT(*) FROM attempts c WHERE c.session_id = s.id),
                    s.last_attempt_id, a.status, a.created_at
             FROM sessions s JOIN projects p ON p.id = s.project_id
             LEFT JOIN attempts a ON a.id = s.last_attempt_id
             WHERE ?1 IS NULL OR s.workflow = ?1
             ORDER BY COALESCE(s.last_attempt_id, 0) DESC, s.id DESC",
        )?;
        let rows = stmt.query_map([workflow], |r| {
            Ok(SessionRecord {
                session_id: r.get(0)?,
                session_uuid: r.get(1)?,
                project: r.get(2)?,
                workflow: r.get(3)?,
                session_time: r.get(4)?,
                attempt_count: r.get::<_, i64>(5)? as u64,
                last_attempt_id: r.get(6)?,
                last_status: r.get::<_, Option<String>>(7)?.map(|s| AttemptStatus::parse(&s)),
                last_attempt_at_ms: r.get(8)?,
            })
        })?;
        Ok(rows.collect::<std::result::Result<Vec<_>, _>>()?)
    }

    fn list_attempts(&mut self, session_id: Option<i64>) -> Result<Vec<AttemptInfo>> {
        let rows = {
            let mut stmt = self
                .conn
                .prepare(&format!("{ATTEMPT_INFO_SELECT} WHERE ?1 IS NULL OR a.session_id = ?1 ORDER BY a.id DESC"))?;
            stmt.query_map([session_id], attempt_info_from_row)?.collect::<std::result::Result<Vec<_>, _>>()?
        };
        rows.into_iter().map(|row| self.complete_attempt_info(row)).collect()
    }

    fn attempt_info(&mut self, attempt_id: i64) -> Result<AttemptInfo> {
        let row = self
            .conn
            .query_row(&format!("{ATTEMPT_INFO_SELECT} WHERE a.id = ?1"), [attempt_id], attempt_info_from_row)
            .optional()?
            .ok_or(StoreError::NoSuchAttempt(attempt_id))?;
        self.complete_attempt_info(row)
    }

    fn put_revision(&mut self, project: &str, name: &str, workflows: &[WorkflowDefinition]) -> Result<i64> {
        let project_id = self.project_id(project)?;
        let tx = self.conn.transaction()?;
        let existing: Option<i64> = tx
            .query_row("SELECT id FROM revisions WHERE project_id = ?1 AND name = ?2", params![project_id, name], |r| r.get(0))
            .optional()?;
        let id = match existing {
            Some(id) => id,
            None => {
                tx.execute(
                    "INSERT INTO revisions (project_id, name, created_at) VALUES (?1, ?2, ?3)",
                    params![project_id, name, now_ms()],
                )?;
                let id = tx.last_insert_rowid();
                for w in workflows {
                    tx.execute(
                        "INSERT INTO workflow_definitions (revision_id, name, timezone, config) VALUES (?1, ?2, ?3, ?4)",
                        params![id, w.name, w.timezone, to_json(&w.config)],
                    )?;
                }
                id
            }
        };
        tx.commit()?;
        Ok(id)
    }

    fn link_revision(&mut self, attempt_id: i64, revision_id: i64) -> Result<()> {
        self.conn.execute("UPDATE attempts SET revision_id = ?1 WHERE id = ?2", params![revision_id, attempt_id])?;
        Ok(())
    }

    fn append_logs(&mut self, lines: &[LogLine]) -> Result<()> {
        if lines.is_empty() {
            return Ok(());
        }
        let tx = self.conn.transaction()?;
        {
            let mut insert = tx.prepare_cached(
                "INSERT INTO task_logs (attempt_id, task_name, at, level, message) VALUES (?1, ?2, ?3, ?4, ?5)",
            )?;
            for l in lines {
                insert.execute(params![l.attempt_id, l.task_name, l.at_ms, l.level, l.message])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn task_logs(&mut self, attempt_id: i64, prefix: &str) -> Result<Vec<LogLine>> {
        let mut stmt = self.conn.prepare(
            "SELECT attempt_id, task_name, at, level, message FROM task_logs
             WHERE attempt_id = ?1 AND substr(task_name, 1, length(?2)) = ?2 ORDER BY id",
        )?;
        let rows = stmt.query_map(params![attempt_id, prefix], |r| {
            Ok(LogLine { attempt_id: r.get(0)?, task_name: r.get(1)?, at_ms: r.get(2)?, level: r.get(3)?, message: r.get(4)? })
        })?;
        Ok(rows.collect::<std::result::Result<Vec<_>, _>>()?)
    }

    fn attempt_results(&mut self, attempt_id: i64) -> Result<HashMap<String, Done>> {
        let mut stmt = self.conn.prepare(
            "SELECT name, result FROM tasks WHERE id >= (?1 << 32) AND id < ((?1 + 1) << 32)
               AND state = 'success' AND result IS NOT NULL ORDER BY id",
        )?;
        results_by_name(stmt.query([attempt_id])?)
    }

    fn claim_attempt(&mut self, attempt_id: i64, pid: u32) -> Result<()> {
        self.conn.execute("UPDATE attempts SET pid = ?1 WHERE id = ?2", params![pid, attempt_id])?;
        Ok(())
    }

    fn attempt_owner(&mut self, attempt_id: i64) -> Result<Option<u32>> {
        self.conn
            .query_row("SELECT pid FROM attempts WHERE id = ?1", [attempt_id], |r| r.get::<_, Option<u32>>(0))
            .optional()?
            .ok_or(StoreError::NoSuchAttempt(attempt_id))
    }

    fn request_cancel(&mut self, attempt_id: i64) -> Result<()> {
        let n = self.conn.execute("UPDATE attempts SET cancel_requested = 1 WHERE id = ?1", [attempt_id])?;
        if n == 0 {
            return Err(StoreError::NoSuchAttempt(attempt_id));
        }
        Ok(())
    }

    fn cancel_requested(&mut self, attempt_id: i64) -> Result<bool> {
        Ok(self
            .conn
            .query_row("SELECT cancel_requested FROM attempts WHERE id = ?1", [attempt_id], |r| r.get::<_, i64>(0))
            .optional()?
            .unwrap_or(0)
            != 0)
    }

    fn get_value(&mut self, key: &str) -> Result<Option<String>> {
        Ok(self.conn.query_row("SELECT value FROM kv WHERE key = ?1", [key], |r| r.get(0)).optional()?)
    }

    fn set_value(&mut self, key: &str, value: &str) -> Result<()> {
        self.conn.execute(
            "INSERT INTO kv (key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            params![key, value],
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new_attempt(name: Option<&str>) -> NewAttempt {
        NewAttempt {
            project: "p".into(),
            workflow: "wf".into(),
            session_time: "2024-01-01T00:00:00+00:00".into(),
            timezone: "UTC".into(),
            name: name.map(str::to_string),
            params: Object::new(),
        }
    }

    #[test]
    fn sessions_are_unique_and_attempt_names_too() {
        let mut s = SqliteStore::in_memory().unwrap();
        let a = s.begin_attempt(&new_attempt(None)).unwrap();
        let b = s.begin_attempt(&new_attempt(None)).unwrap();
        assert_eq!(a.session_id, b.session_id);
        assert_eq!(a.name, "");
        assert_ne!(a.attempt_id, b.attempt_id);
        assert_ne!(b.name, "");
        s.begin_attempt(&new_attempt(Some("x"))).unwrap();
        let err = s.begin_attempt(&new_attempt(Some("x"))).unwrap_err();
        assert!(err.to_string().contains("already has an attempt named 'x'"), "{err}");
    }

    #[test]
    fn saved_results_replay_latest_success_of_earlier_attempts() {
        let mut s = SqliteStore::in_memory().unwrap();
        let a = s.begin_attempt(&new_attempt(None)).unwrap();
        let mut done = Done::default();
        done.store_params.insert("k".into(), "v".into());
        s.write(&[
            TaskChange {
                attempt_id: a.attempt_id,
                index: 0,
                name: "+wf+a".into(),
                state: TaskState::Success,
                retry_count: 0,
                request: None,
                result: Some(done.clone()),
                error: None,
            },
            TaskChange {
                attempt_id: a.attempt_id,
                index: 1,
                name: "+wf+b".into(),
                state: TaskState::Error,
                retry_count: 0,
                request: None,
                result: None,
                error: Some("boom".into()),
            },
        ])
        .unwrap();
        let b = s.begin_attempt(&new_attempt(None)).unwrap();
        let saved = s.saved_results(b.session_id, b.attempt_id).unwrap();
        assert_eq!(saved.len(), 1);
        assert_eq!(saved["+wf+a"], done);
        // The running attempt's own rows are not "earlier".
        assert!(s.saved_results(a.session_id, a.attempt_id).unwrap().is_empty());
    }

    #[test]
    fn task_logs_are_kept_per_attempt_and_filtered_by_prefix() {
        let mut s = SqliteStore::in_memory().unwrap();
        let a = s.begin_attempt(&new_attempt(None)).unwrap();
        let line = |task: &str, msg: &str| LogLine {
            attempt_id: a.attempt_id,
            task_name: task.into(),
            at_ms: 1,
            level: "info".into(),
            message: msg.into(),
        };
        s.append_logs(&[line("+wf+a", "one"), line("+wf+b", "two"), line("+wf+a", "three")]).unwrap();
        let all = s.task_logs(a.attempt_id, "").unwrap();
        assert_eq!(all.iter().map(|l| l.message.as_str()).collect::<Vec<_>>(), ["one", "two", "three"]);
        let a_only = s.task_logs(a.attempt_id, "+wf+a").unwrap();
        assert_eq!(a_only.len(), 2);
        assert!(s.task_logs(a.attempt_id + 1, "").unwrap().is_empty());
    }

    #[test]
    fn revisions_are_recorded_once_per_name() {
        let mut s = SqliteStore::in_memory().unwrap();
        let wf = WorkflowDefinition { name: "wf".into(), timezone: "UTC".into(), config: Object::new() };
        let r1 = s.put_revision("p", "abc", std::slice::from_ref(&wf)).unwrap();
        assert_eq!(s.put_revision("p", "abc", &[wf.clone()]).unwrap(), r1);
        assert_ne!(s.put_revision("p", "def", &[wf]).unwrap(), r1);
        let a = s.begin_attempt(&new_attempt(None)).unwrap();
        s.link_revision(a.attempt_id, r1).unwrap();
        let n: i64 = s.conn.query_row("SELECT COUNT(*) FROM workflow_definitions", [], |r| r.get(0)).unwrap();
        assert_eq!(n, 2);
    }

    #[test]
    fn kill_requests_and_owners_are_recorded() {
        let mut s = SqliteStore::in_memory().unwrap();
        let a = s.begin_attempt(&new_attempt(None)).unwrap();
        assert_eq!(s.attempt_owner(a.attempt_id).unwrap(), None);
        s.claim_attempt(a.attempt_id, 4242).unwrap();
        assert_eq!(s.attempt_owner(a.attempt_id).unwrap(), Some(4242));
        assert!(!s.cancel_requested(a.attempt_id).unwrap());
        s.request_cancel(a.attempt_id).unwrap();
        assert!(s.cancel_requested(a.attempt_id).unwrap());
        assert!(matches!(s.request_cancel(999), Err(StoreError::NoSuchAttempt(999))));
    }

    #[test]
    fn attempt_results_are_that_attempts_successes() {
        let mut s = SqliteStore::in_memory().unwrap();
        let a = s.begin_attempt(&new_attempt(None)).unwrap();
        s.write(&[change(a.attempt_id, 0, "+wf+ok", TaskState::Success), change(a.attempt_id, 1, "+wf+bad", TaskState::Error)])
            .unwrap();
        let r = s.attempt_results(a.attempt_id).unwrap();
        assert_eq!(r.keys().collect::<Vec<_>>(), vec!["+wf+ok"]);
    }

    #[test]
    fn a_task_keeps_the_time_it_first_started() {
        let mut s = SqliteStore::in_memory().unwrap();
        let a = s.begin_attempt(&new_attempt(None)).unwrap();
        s.write(&[change(a.attempt_id, 0, "+wf+t", TaskState::Running), change(a.attempt_id, 1, "+wf+g", TaskState::Success)])
            .unwrap();
        let started = s.tasks(a.attempt_id).unwrap()[0].started_at_ms;
        assert!(started.is_some());
        s.write(&[change(a.attempt_id, 0, "+wf+t", TaskState::Success)]).unwrap();
        let tasks = s.tasks(a.attempt_id).unwrap();
        assert_eq!(tasks[0].started_at_ms, started, "a later change keeps the start time");
        assert_eq!(tasks[1].started_at_ms, None, "a task that never ran has none");
    }

    #[test]
    fn concurrent_first_opens_migrate_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let path = path.clone();
                std::thread::spawn(move || SqliteStore::open(&path).map(|_| ()))
            })
            .collect();
        for h in handles {
            h.join().unwrap().unwrap();
        }
    }

    #[test]
    fn reopening_keeps_state_and_schema_version() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        {
            let mut s = SqliteStore::open(&path).unwrap();
            s.set_value("last_session", "x").unwrap();
        }
        let mut s = SqliteStore::open(&path).unwrap();
        assert_eq!(s.get_value("last_session").unwrap().as_deref(), Some("x"));
    }

    fn change(attempt_id: i64, index: u32, name: &str, state: TaskState) -> TaskChange {
        TaskChange {
            attempt_id,
            index,
            name: name.into(),
            state,
            retry_count: 0,
            request: None,
            result: (state == TaskState::Success).then(Done::default),
            error: (state == TaskState::Error).then(|| "boom".to_string()),
        }
    }

    #[test]
    fn list_sessions_filters_by_workflow_and_shows_the_latest_attempt() {
        let mut s = SqliteStore::in_memory().unwrap();
        assert!(s.list_sessions(None).unwrap().is_empty());
        let a = s.begin_attempt(&new_attempt(None)).unwrap();
        s.finish_attempt(a.attempt_id, AttemptStatus::Error).unwrap();
        let b = s.begin_attempt(&new_attempt(None)).unwrap();
        let other = s
            .begin_attempt(&NewAttempt { workflow: "other".into(), ..new_attempt(None) })
            .unwrap();

        let all = s.list_sessions(None).unwrap();
        assert_eq!(all.len(), 2);
        // Newest activity first.
        assert_eq!(all[0].workflow, "other");
        assert_eq!(all[0].session_id, other.session_id);

        let wf = s.list_sessions(Some("wf")).unwrap();
        assert_eq!(wf.len(), 1);
        let session = &wf[0];
        assert_eq!(session.session_id, a.session_id);
        assert_eq!(session.session_uuid, a.session_uuid);
        assert_eq!(session.project, "p");
        assert_eq!(session.session_time, "2024-01-01T00:00:00+00:00");
        assert_eq!(session.attempt_count, 2);
        assert_eq!(session.last_attempt_id, Some(b.attempt_id));
        assert_eq!(session.last_status, Some(AttemptStatus::Running));
        assert!(session.last_attempt_at_ms.is_some());
        assert!(s.list_sessions(Some("missing")).unwrap().is_empty());
    }

    #[test]
    fn list_attempts_counts_tasks_per_state_and_filters_by_session() {
        let mut s = SqliteStore::in_memory().unwrap();
        let mut with_params = new_attempt(None);
        with_params.params.insert("k".into(), "v".into());
        let a = s.begin_attempt(&with_params).unwrap();
        s.write(&[
            change(a.attempt_id, 0, "+wf+a", TaskState::Success),
            change(a.attempt_id, 1, "+wf+b", TaskState::Success),
            change(a.attempt_id, 2, "+wf+c", TaskState::Error),
            change(a.attempt_id, 3, "+wf+d", TaskState::Running),
        ])
        .unwrap();
        s.finish_attempt(a.attempt_id, AttemptStatus::Error).unwrap();
        let b = s.begin_attempt(&new_attempt(None)).unwrap();
        let other = s
            .begin_attempt(&NewAttempt { workflow: "other".into(), ..new_attempt(None) })
            .unwrap();

        let all = s.list_attempts(None).unwrap();
        let ids: Vec<i64> = all.iter().map(|i| i.attempt.attempt_id).collect();
        assert_eq!(ids, vec![other.attempt_id, b.attempt_id, a.attempt_id]);

        let session = s.list_attempts(Some(a.session_id)).unwrap();
        assert_eq!(session.len(), 2);
        let first = &session[1];
        assert_eq!(first.attempt, AttemptRecord { status: AttemptStatus::Error, ..a.clone() });
        assert_eq!(first.project, "p");
        assert_eq!(first.timezone, "UTC");
        assert_eq!(first.params.get("k"), Some(&serde_json::Value::String("v".into())));
        assert!(first.finished_at_ms.is_some());
        assert_eq!(
            first.tasks,
            TaskCounts { running: 1, polling: 0, success: 2, error: 1, canceled: 0 }
        );
        assert_eq!(first.tasks.total(), 4);
        assert_eq!(session[0].finished_at_ms, None);
        assert_eq!(session[0].tasks.total(), 0);
        assert!(s.list_attempts(Some(9999)).unwrap().is_empty());
    }

    #[test]
    fn attempt_info_reads_one_attempt_or_names_the_missing_id() {
        let mut s = SqliteStore::in_memory().unwrap();
        let a = s.begin_attempt(&new_attempt(None)).unwrap();
        s.write(&[change(a.attempt_id, 0, "+wf+a", TaskState::Canceled)]).unwrap();
        let info = s.attempt_info(a.attempt_id).unwrap();
        assert_eq!(info.attempt, a);
        assert_eq!(info.tasks.canceled, 1);
        assert_eq!(info.tasks.total(), 1);
        let err = s.attempt_info(a.attempt_id + 100).unwrap_err();
        assert!(matches!(err, StoreError::NoSuchAttempt(id) if id == a.attempt_id + 100), "{err}");
    }
}
