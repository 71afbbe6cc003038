//! The embedded default store: one SQLite file in WAL mode.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, params};
use spade_api::{Done, TaskRequest};

use crate::projects::{self, NewRevision, ProjectRecord, Pushed, RevisionRecord};
use crate::queue::{self, CallState, ClaimedCall, GivenUp, Held, NewQueuedCall, Queue};
use crate::{
    AttemptInfo, AttemptRecord, AttemptStatus, LogLine, NewAttempt, Result, SessionRecord, Store, StoreError,
    TaskChange, TaskCounts, TaskRecord, TaskState, WorkflowDefinition, attempt_name, from_json, now_ms, task_record,
    task_row_id, to_json, unfinished, usage_columns, usage_from_columns,
};

const SCHEMA_VERSION: i64 = 4;

/// Migrations, indexed by the version they produce. Never edit a released one: add another.
pub(crate) const MIGRATIONS: &[&str] = &[
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
    // 2: what each task used (wall and CPU time, peak memory)
    r#"
    ALTER TABLE tasks ADD COLUMN wall_ms INTEGER;
    ALTER TABLE tasks ADD COLUMN cpu_ms INTEGER;
    ALTER TABLE tasks ADD COLUMN peak_memory_bytes INTEGER;
    "#,
    // 3: pushed archives, project-scoped values
    projects::MIGRATION_3,
    // 4: the task queue
    queue::MIGRATION_4_SQLITE,
];

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

/// A revision from the columns of [`projects::REVISION_SELECT`] starting at `at`.
fn revision_from_row(r: &rusqlite::Row<'_>, at: usize) -> rusqlite::Result<RevisionRecord> {
    Ok(RevisionRecord {
        id: r.get(at)?,
        project_id: r.get(at + 1)?,
        name: r.get(at + 2)?,
        created_at_ms: r.get(at + 3)?,
        archive_digest: r.get(at + 4)?,
        archive_size: r.get::<_, Option<i64>>(at + 5)?.map(|n| n.max(0) as u64),
    })
}

fn project_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ProjectRecord> {
    let latest = match r.get::<_, Option<i64>>(3)? {
        Some(_) => Some(revision_from_row(r, 3)?),
        None => None,
    };
    Ok(ProjectRecord { id: r.get(0)?, name: r.get(1)?, created_at_ms: r.get(2)?, latest })
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
        p.name, a.timezone, a.params, a.created_at, a.finished_at, p.id
     FROM attempts a JOIN sessions s ON s.id = a.session_id JOIN projects p ON p.id = s.project_id";

/// A row of [`ATTEMPT_INFO_SELECT`], before its params are parsed and its tasks counted.
struct RawAttemptInfo {
    attempt: AttemptRecord,
    project: String,
    project_id: i64,
    timezone: String,
    params: String,
    created_at_ms: i64,
    finished_at_ms: Option<i64>,
}

fn attempt_info_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<RawAttemptInfo> {
    Ok(RawAttemptInfo {
        attempt: attempt_from_row(r)?,
        project: r.get(7)?,
        project_id: r.get(12)?,
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
        let conn =
            Connection::open(path).map_err(|source| StoreError::Open { path: path.display().to_string(), source })?;
        Self::init(conn)
    }

    /// A private in-memory database (tests).
    pub fn in_memory() -> Result<Self> {
        Self::init(Connection::open_in_memory()?)
    }

    /// A scratch database for runs that keep nothing (`--no-save`): a file, so attempts
    /// started by `require>` can open it too, but without durability (no fsync, no WAL).
    pub fn open_scratch(path: &Path) -> Result<Self> {
        let conn =
            Connection::open(path).map_err(|source| StoreError::Open { path: path.display().to_string(), source })?;
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
        let RawAttemptInfo { attempt, project, project_id, timezone, params, created_at_ms, finished_at_ms } = raw;
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
        Ok(AttemptInfo { attempt, project, project_id, timezone, params, created_at_ms, finished_at_ms, tasks })
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
    fn ping(&mut self) -> Result<()> {
        self.conn.query_row("SELECT 1", [], |_| Ok(()))?;
        Ok(())
    }

    fn begin_attempt(&mut self, new: &NewAttempt) -> Result<AttemptRecord> {
        let project_id = self.project_id(&new.project)?;
        // Every write transaction takes the write lock when it begins (IMMEDIATE): one that
        // read first and wrote later could fail at once with SQLITE_BUSY in WAL mode, when
        // another process committed in between, without waiting for the busy timeout.
        let tx = self.conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
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
        let name = attempt_name(new, count, |n| name_taken(&tx, session_id, n))?;
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
        let rows = stmt
            .query_map(params![session_id, before_attempt], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, Option<String>>(2)?))
            })?
            .collect::<std::result::Result<Vec<_>, _>>()?;
        unfinished(rows.iter().map(|(n, s, r)| (n.clone(), s.as_str(), r.as_deref())))
    }

    fn write(&mut self, changes: &[TaskChange]) -> Result<()> {
        if changes.is_empty() {
            return Ok(());
        }
        let now = now_ms();
        let tx = self.conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        {
            let mut upsert = tx.prepare_cached(
                "INSERT INTO tasks (id, attempt_id, name, state, retry_count, request, result, error, updated_at, started_at,
                                    wall_ms, cpu_ms, peak_memory_bytes)
                 VALUES (?9, ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?10, ?11, ?12, ?13)
                 ON CONFLICT(id) DO UPDATE SET
                    state = excluded.state,
                    retry_count = excluded.retry_count,
                    request = COALESCE(excluded.request, tasks.request),
                    result = COALESCE(excluded.result, tasks.result),
                    error = excluded.error,
                    updated_at = excluded.updated_at,
                    started_at = COALESCE(tasks.started_at, excluded.started_at),
                    wall_ms = COALESCE(excluded.wall_ms, tasks.wall_ms),
                    cpu_ms = COALESCE(excluded.cpu_ms, tasks.cpu_ms),
                    peak_memory_bytes = COALESCE(excluded.peak_memory_bytes, tasks.peak_memory_bytes)",
            )?;
            for c in changes {
                let (wall, cpu, peak) = usage_columns(c.usage.as_ref());
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
                    wall,
                    cpu,
                    peak,
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

    fn running_attempts(&mut self, project: &str, workflow: &str) -> Result<Vec<(AttemptRecord, Option<u32>)>> {
        let mut stmt = self.conn.prepare(
            "SELECT a.id, a.session_id, s.uuid, a.name, a.status, s.workflow, s.session_time, a.pid
             FROM attempts a JOIN sessions s ON s.id = a.session_id JOIN projects p ON p.id = s.project_id
             WHERE p.name = ?1 AND s.workflow = ?2 AND a.status = 'running' ORDER BY a.id",
        )?;
        let rows =
            stmt.query_map(params![project, workflow], |r| Ok((attempt_from_row(r)?, r.get::<_, Option<u32>>(7)?)))?;
        Ok(rows.collect::<std::result::Result<Vec<_>, _>>()?)
    }

    fn tasks(&mut self, attempt_id: i64) -> Result<Vec<TaskRecord>> {
        let mut stmt = self.conn.prepare(
            "SELECT name, state, retry_count, request, result, error, updated_at, started_at,
                    wall_ms, cpu_ms, peak_memory_bytes FROM tasks
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
                usage_from_columns(r.get(8)?, r.get(9)?, r.get(10)?),
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (name, state, retry_count, request, result, error, updated_at_ms, started_at_ms, usage) = row?;
            out.push(task_record(
                name,
                &state,
                retry_count,
                request.as_deref(),
                result.as_deref(),
                error,
                updated_at_ms,
                started_at_ms,
                usage,
            )?);
        }
        Ok(out)
    }

    fn list_sessions(&mut self, workflow: Option<&str>) -> Result<Vec<SessionRecord>> {
        let mut stmt = self.conn.prepare(
            "SELECT s.id, s.uuid, p.name, s.workflow, s.session_time,
                    (SELECT COUNT(*) FROM attempts c WHERE c.session_id = s.id),
                    s.last_attempt_id, a.status, a.created_at, p.id
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
                project_id: r.get(9)?,
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
        let tx = self.conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let existing: Option<i64> = tx
            .query_row("SELECT id FROM revisions WHERE project_id = ?1 AND name = ?2", params![project_id, name], |r| {
                r.get(0)
            })
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
        let tx = self.conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
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
            Ok(LogLine {
                attempt_id: r.get(0)?,
                task_name: r.get(1)?,
                at_ms: r.get(2)?,
                level: r.get(3)?,
                message: r.get(4)?,
            })
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

    fn cancel_requests(&mut self) -> Result<Vec<i64>> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT id FROM attempts WHERE cancel_requested <> 0 AND status = 'running' ORDER BY id")?;
        let ids = stmt.query_map([], |r| r.get(0))?.collect::<rusqlite::Result<_>>()?;
        Ok(ids)
    }

    fn get_value(&mut self, project: &str, key: &str) -> Result<Option<String>> {
        Ok(self.conn.query_row(projects::GET_VALUE, params![project, key], |r| r.get(0)).optional()?)
    }

    fn set_value(&mut self, project: &str, key: &str, value: &str) -> Result<()> {
        self.conn.execute(projects::SET_VALUE, params![project, key, value])?;
        Ok(())
    }

    fn swap_value(&mut self, project: &str, key: &str, expected: Option<&str>, value: &str) -> Result<bool> {
        let n = match expected {
            None => self.conn.execute(projects::INSERT_VALUE, params![project, key, value])?,
            Some(old) => self.conn.execute(projects::SWAP_VALUE, params![value, project, key, old])?,
        };
        Ok(n == 1)
    }

    fn push_revision(&mut self, new: &NewRevision<'_>) -> Result<Pushed> {
        let now = now_ms();
        let tx = self.conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        tx.execute(projects::INSERT_ARCHIVE, params![new.digest, new.archive.len() as i64, new.archive, now])?;
        tx.execute(projects::INSERT_PROJECT, params![new.project, now])?;
        let project_id: i64 = tx.query_row("SELECT id FROM projects WHERE name = $1", [new.project], |r| r.get(0))?;
        let existing: Option<Option<String>> = tx
            .query_row(
                "SELECT archive_digest FROM revisions WHERE project_id = $1 AND name = $2",
                params![project_id, new.revision],
                |r| r.get(0),
            )
            .optional()?;
        let created = match existing {
            Some(digest) if digest.as_deref() == Some(new.digest) => false,
            Some(_) => {
                return Err(StoreError::RevisionConflict {
                    project: new.project.to_string(),
                    revision: new.revision.to_string(),
                });
            }
            None => {
                tx.execute(projects::INSERT_REVISION, params![project_id, new.revision, now, new.digest])?;
                let id = tx.last_insert_rowid();
                for w in new.workflows {
                    tx.execute(projects::INSERT_DEFINITION, params![id, w.name, w.timezone, to_json(&w.config)])?;
                }
                true
            }
        };
        tx.commit()?;
        let project = self.project(project_id)?;
        let revision = self.revision(project_id, Some(new.revision))?;
        Ok(Pushed { project, revision, created })
    }

    fn projects(&mut self) -> Result<Vec<ProjectRecord>> {
        let mut stmt = self.conn.prepare_cached(&format!("{} ORDER BY p.name", projects::PROJECT_SELECT))?;
        let rows = stmt.query_map([], project_from_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn project(&mut self, id: i64) -> Result<ProjectRecord> {
        self.conn
            .query_row(&format!("{} WHERE p.id = $1", projects::PROJECT_SELECT), [id], project_from_row)
            .optional()?
            .ok_or_else(|| StoreError::NoSuchProject(id.to_string()))
    }

    fn project_named(&mut self, name: &str) -> Result<Option<ProjectRecord>> {
        Ok(self
            .conn
            .query_row(&format!("{} WHERE p.name = $1", projects::PROJECT_SELECT), [name], project_from_row)
            .optional()?)
    }

    fn revisions(&mut self, project_id: i64) -> Result<Vec<RevisionRecord>> {
        let project = self.project(project_id)?;
        let mut stmt = self
            .conn
            .prepare_cached(&format!("{} WHERE r.project_id = $1 ORDER BY r.id DESC", projects::REVISION_SELECT))?;
        let rows = stmt.query_map([project.id], |r| revision_from_row(r, 0))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn revision(&mut self, project_id: i64, name: Option<&str>) -> Result<RevisionRecord> {
        let project = self.project(project_id)?;
        let found = match name {
            Some(name) => self
                .conn
                .query_row(
                    &format!("{} WHERE r.project_id = $1 AND r.name = $2", projects::REVISION_SELECT),
                    params![project_id, name],
                    |r| revision_from_row(r, 0),
                )
                .optional()?,
            None => project.latest.clone(),
        };
        found.ok_or_else(|| StoreError::NoSuchRevision {
            project: project.name,
            revision: name.unwrap_or("(any)").to_string(),
        })
    }

    fn workflow_definitions(&mut self, revision_id: i64) -> Result<Vec<WorkflowDefinition>> {
        let mut stmt = self.conn.prepare_cached(projects::SELECT_DEFINITIONS)?;
        let mut rows = stmt.query([revision_id])?;
        let mut out = Vec::new();
        while let Some(row) = rows.next()? {
            let name: String = row.get(0)?;
            let config: String = row.get(2)?;
            let config = from_json(&format!("definition of workflow {name}"), &config)?;
            out.push(WorkflowDefinition { name, timezone: row.get(1)?, config });
        }
        Ok(out)
    }

    fn archive(&mut self, digest: &str) -> Result<Vec<u8>> {
        self.conn
            .query_row(projects::SELECT_ARCHIVE, [digest], |r| r.get(0))
            .optional()?
            .ok_or_else(|| StoreError::NoSuchArchive(digest.to_string()))
    }
}

impl Queue for SqliteStore {
    fn enqueue(&mut self, call: &NewQueuedCall<'_>) -> Result<i64> {
        Ok(self.conn.query_row(
            queue::ENQUEUE,
            params![
                call.attempt_id,
                call.task_name,
                call.archive_digest,
                call.tag,
                call.affinity,
                call.request,
                now_ms()
            ],
            |r| r.get(0),
        )?)
    }

    fn claim(&mut self, agent: &str, tags: &[String], max: usize, lease: Duration) -> Result<Vec<ClaimedCall>> {
        // IMMEDIATE: one claimer at a time (SQLite's stand-in for SKIP LOCKED).
        let tx = self.conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let mut ids: Vec<i64> = {
            let mut stmt = tx.prepare_cached(queue::CLAIMABLE_OWN)?;
            stmt.query_map([agent], |r| r.get(0))?.collect::<rusqlite::Result<_>>()?
        };
        {
            let mut stmt = tx.prepare_cached(queue::CLAIMABLE)?;
            let others =
                stmt.query_map(params![queue::tag_list(tags), queue::lease_ago(lease), max as i64], |r| r.get(0))?;
            for id in others {
                ids.push(id?);
            }
        }
        let until = queue::lease_end(lease);
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            let claimed = tx
                .query_row(queue::CLAIM, params![agent, until, id], |r| {
                    Ok(ClaimedCall {
                        id: r.get(0)?,
                        token: r.get(1)?,
                        attempt_id: r.get(2)?,
                        task_name: r.get(3)?,
                        archive_digest: r.get(4)?,
                        request: r.get(5)?,
                    })
                })
                .optional()?;
            out.extend(claimed);
        }
        tx.commit()?;
        Ok(out)
    }

    fn heartbeat(&mut self, agent: &str, held: &[(i64, i64)], lease: Duration) -> Result<Vec<Held>> {
        let until = queue::lease_end(lease);
        let tx = self.conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let mut out = Vec::with_capacity(held.len());
        for (id, token) in held {
            let kept: Option<bool> =
                tx.query_row(queue::EXTEND, params![until, id, token, agent], |r| r.get(0)).optional()?;
            out.push(match kept {
                Some(cancel_requested) => Held::Kept { cancel_requested },
                None => Held::Lost,
            });
        }
        tx.commit()?;
        Ok(out)
    }

    fn complete(&mut self, id: i64, token: i64, outcome: &str) -> Result<bool> {
        Ok(self.conn.execute(queue::COMPLETE, params![outcome, now_ms(), id, token])? == 1)
    }

    fn requeue_expired(&mut self, max_claims: i64, give_up: &dyn Fn(i64) -> String) -> Result<Vec<GivenUp>> {
        let now = now_ms();
        let tx = self.conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let expired: Vec<GivenUp> = {
            let mut stmt = tx.prepare_cached(queue::EXPIRED)?;
            stmt.query_map([now], |r| Ok(GivenUp { id: r.get(0)?, task_name: r.get(1)?, claims: r.get(2)? }))?
                .collect::<rusqlite::Result<_>>()?
        };
        let mut given_up = Vec::new();
        for row in expired {
            if row.claims >= max_claims {
                tx.execute(queue::GIVE_UP, params![give_up(row.claims), now, row.id, now])?;
                given_up.push(row);
            } else {
                tx.execute(queue::REQUEUE, params![row.id, now])?;
            }
        }
        tx.commit()?;
        Ok(given_up)
    }

    fn call_state(&mut self, id: i64) -> Result<CallState> {
        let (state, agent, outcome): (String, Option<String>, Option<String>) = self
            .conn
            .query_row(queue::STATE, [id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .optional()?
            .ok_or(StoreError::NoSuchCall(id))?;
        Ok(queue::call_state(&state, agent, outcome))
    }

    fn cancel_call(&mut self, id: i64, outcome: &str) -> Result<()> {
        let tx = self.conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        tx.execute(queue::CANCEL, [id])?;
        tx.execute(queue::CANCEL_QUEUED, params![outcome, now_ms(), id])?;
        tx.commit()?;
        Ok(())
    }
}
