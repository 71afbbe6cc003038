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

/// One change to a task row, identified by (attempt, full task name).
#[derive(Clone, Debug)]
pub struct TaskChange {
    pub attempt_id: i64,
    pub name: String,
    pub state: TaskState,
    pub retry_count: u32,
    /// The frozen request, written once before the first invocation.
    pub request: Option<TaskRequest>,
    pub result: Option<Done>,
    pub error: Option<String>,
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
}

/// Persistence the engine needs. Implementations commit each `write` atomically.
pub trait Store: Send {
    /// Find or create the session and create a new attempt in it.
    fn begin_attempt(&mut self, new: &NewAttempt) -> Result<AttemptRecord>;
    /// Results of tasks that succeeded in earlier attempts of `session_id` (latest wins),
    /// keyed by full task name: what `spade run` replays instead of running them again.
    fn saved_results(&mut self, session_id: i64, before_attempt: i64) -> Result<HashMap<String, Done>>;
    /// Commit a batch of task changes in one transaction.
    fn write(&mut self, changes: &[TaskChange]) -> Result<()>;
    fn finish_attempt(&mut self, attempt_id: i64, status: AttemptStatus) -> Result<()>;
    fn attempt(&mut self, attempt_id: i64) -> Result<AttemptRecord>;
    /// Attempts of the session (project, workflow, session_time), oldest first; empty when
    /// the session does not exist.
    fn session_attempts(&mut self, project: &str, workflow: &str, session_time: &str) -> Result<Vec<AttemptRecord>>;
    fn tasks(&mut self, attempt_id: i64) -> Result<Vec<TaskRecord>>;
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
        UNIQUE (session_id, name)
    );
    CREATE TABLE tasks (
        id INTEGER PRIMARY KEY,
        attempt_id INTEGER NOT NULL REFERENCES attempts(id),
        name TEXT NOT NULL,
        state TEXT NOT NULL,
        retry_count INTEGER NOT NULL DEFAULT 0,
        request TEXT,
        result TEXT,
        error TEXT,
        updated_at INTEGER NOT NULL,
        UNIQUE (attempt_id, name)
    );
    CREATE TABLE kv (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    "#,
];

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

fn to_json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).expect("serialising plain data cannot fail")
}

fn from_json<T: serde::de::DeserializeOwned>(what: &str, s: &str) -> Result<T> {
    serde_json::from_str(s).map_err(|source| StoreError::Json { what: what.to_string(), source })
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
        // WAL + NORMAL: a commit is durable against a process crash (kill -9); only an OS
        // crash can lose the last commits, never corrupt the file.
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        // Checkpoint less often: a page rewritten by many commits is copied back once.
        conn.pragma_update(None, "wal_autocheckpoint", 10_000)?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        let mut store = SqliteStore { conn };
        store.migrate()?;
        Ok(store)
    }

    fn migrate(&mut self) -> Result<()> {
        let version: i64 = self.conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if version > SCHEMA_VERSION {
            return Err(StoreError::TooNew { found: version, known: SCHEMA_VERSION });
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            let tx = self.conn.transaction()?;
            tx.execute_batch(sql)?;
            tx.pragma_update(None, "user_version", (i + 1) as i64)?;
            tx.commit()?;
        }
        Ok(())
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
                let taken: Option<i64> = tx
                    .query_row(
                        "SELECT id FROM attempts WHERE session_id = ?1 AND name = ?2",
                        params![session_id, n],
                        |r| r.get(0),
                    )
                    .optional()?;
                if taken.is_some() {
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
                    let taken: Option<i64> = tx
                        .query_row(
                            "SELECT id FROM attempts WHERE session_id = ?1 AND name = ?2",
                            params![session_id, candidate],
                            |r| r.get(0),
                        )
                        .optional()?;
                    if taken.is_none() {
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
            "SELECT t.name, t.result FROM tasks t JOIN attempts a ON a.id = t.attempt_id
             WHERE a.session_id = ?1 AND a.id < ?2 AND t.state = 'success' AND t.result IS NOT NULL
             ORDER BY t.attempt_id",
        )?;
        let mut rows = stmt.query(params![session_id, before_attempt])?;
        let mut out = HashMap::new();
        while let Some(row) = rows.next()? {
            let name: String = row.get(0)?;
            let result: String = row.get(1)?;
            let done: Done = from_json(&format!("result of task {name}"), &result)?;
            out.insert(name, done);
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
                "INSERT INTO tasks (attempt_id, name, state, retry_count, request, result, error, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                 ON CONFLICT(attempt_id, name) DO UPDATE SET
                    state = excluded.state,
                    retry_count = excluded.retry_count,
                    request = COALESCE(excluded.request, tasks.request),
                    result = excluded.result,
                    error = excluded.error,
                    updated_at = excluded.updated_at",
            )?;
            for c in changes {
                upsert.execute(params![
                    c.attempt_id,
                    c.name,
                    c.state.as_str(),
                    c.retry_count,
                    c.request.as_ref().map(to_json),
                    c.result.as_ref().map(to_json),
                    c.error,
                    now,
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
            "SELECT name, state, retry_count, request, result, error, updated_at FROM tasks
             WHERE attempt_id = ?1 ORDER BY id",
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
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (name, state, retry_count, request, result, error, updated_at_ms) = row?;
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
            });
        }
        Ok(out)
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
                name: "+wf+a".into(),
                state: TaskState::Success,
                retry_count: 0,
                request: None,
                result: Some(done.clone()),
                error: None,
            },
            TaskChange {
                attempt_id: a.attempt_id,
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
}
