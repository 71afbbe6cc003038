//! The shared store: the same tables as [`crate::SqliteStore`], in PostgreSQL, so that
//! several spade processes on several hosts (schedulers, runs, the API) share one state.
//!
//! Ids come from sequences; a task's row id is still `attempt_id << 32 | index` (its
//! attempt's rows stay one contiguous key range). Migrations run under a transaction-level
//! advisory lock, so hosts starting at once migrate exactly once.

use std::collections::HashMap;
use std::time::Duration;

use postgres::{Client, GenericClient, NoTls, Row};
use spade_api::{Done, TaskRequest};

use crate::projects::{self, NewRevision, ProjectRecord, Pushed, RevisionRecord};
use crate::queue::{self, CallState, ClaimedCall, GivenUp, Held, NewQueuedCall, Queue};
use crate::{
    AttemptInfo, AttemptRecord, AttemptStatus, LogLine, NewAttempt, Result, SessionRecord, Store, StoreError,
    TaskChange, TaskCounts, TaskRecord, TaskState, WorkflowDefinition, attempt_name, from_json, now_ms, task_record,
    task_row_id, to_json, unfinished, usage_columns, usage_from_columns,
};

const SCHEMA_VERSION: i32 = 4;

/// Any number: the advisory lock that serializes migrations of one database.
const MIGRATION_LOCK: i64 = 0x5350_4144_4501;

/// Migrations, indexed by the version they produce. Never edit a released one: add another.
const MIGRATIONS: &[&str] = &[
    // 1: the schema of SQLite's version 1
    r#"
    CREATE TABLE projects (
        id BIGSERIAL PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        created_at BIGINT NOT NULL
    );
    CREATE TABLE revisions (
        id BIGSERIAL PRIMARY KEY,
        project_id BIGINT NOT NULL REFERENCES projects(id),
        name TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        UNIQUE (project_id, name)
    );
    CREATE TABLE workflow_definitions (
        id BIGSERIAL PRIMARY KEY,
        revision_id BIGINT NOT NULL REFERENCES revisions(id),
        name TEXT NOT NULL,
        timezone TEXT NOT NULL,
        config TEXT NOT NULL,
        UNIQUE (revision_id, name)
    );
    CREATE TABLE sessions (
        id BIGSERIAL PRIMARY KEY,
        project_id BIGINT NOT NULL REFERENCES projects(id),
        workflow TEXT NOT NULL,
        session_time TEXT NOT NULL,
        uuid TEXT NOT NULL,
        last_attempt_id BIGINT,
        UNIQUE (project_id, workflow, session_time)
    );
    CREATE TABLE attempts (
        id BIGSERIAL PRIMARY KEY,
        session_id BIGINT NOT NULL REFERENCES sessions(id),
        name TEXT NOT NULL,
        status TEXT NOT NULL,
        timezone TEXT NOT NULL,
        params TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        finished_at BIGINT,
        cancel_requested BOOLEAN NOT NULL DEFAULT FALSE,
        pid BIGINT,
        revision_id BIGINT REFERENCES revisions(id),
        UNIQUE (session_id, name)
    );
    CREATE TABLE tasks (
        id BIGINT PRIMARY KEY,
        attempt_id BIGINT NOT NULL REFERENCES attempts(id),
        name TEXT NOT NULL,
        state TEXT NOT NULL,
        retry_count BIGINT NOT NULL DEFAULT 0,
        request TEXT,
        result TEXT,
        error TEXT,
        started_at BIGINT,
        updated_at BIGINT NOT NULL
    );
    CREATE TABLE task_logs (
        id BIGSERIAL PRIMARY KEY,
        attempt_id BIGINT NOT NULL REFERENCES attempts(id),
        task_name TEXT NOT NULL,
        at BIGINT NOT NULL,
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
    ALTER TABLE tasks ADD COLUMN wall_ms BIGINT;
    ALTER TABLE tasks ADD COLUMN cpu_ms BIGINT;
    ALTER TABLE tasks ADD COLUMN peak_memory_bytes BIGINT;
    "#,
    // 3: pushed archives, project-scoped values
    projects::MIGRATION_3,
    // 4: the task queue
    queue::MIGRATION_4_POSTGRES,
];

const ATTEMPT_SELECT: &str = "SELECT a.id, a.session_id, s.uuid, a.name, a.status, s.workflow, s.session_time
     FROM attempts a JOIN sessions s ON s.id = a.session_id";

const ATTEMPT_INFO_SELECT: &str = "SELECT a.id, a.session_id, s.uuid, a.name, a.status, s.workflow, s.session_time,
        p.name, a.timezone, a.params, a.created_at, a.finished_at, p.id
     FROM attempts a JOIN sessions s ON s.id = a.session_id JOIN projects p ON p.id = s.project_id";

/// One task row of a [`Store::write`] batch.
struct TaskRow {
    id: i64,
    attempt_id: i64,
    name: String,
    state: &'static str,
    retry_count: i64,
    request: Option<String>,
    result: Option<String>,
    error: Option<String>,
    started: Option<i64>,
    usage: (Option<i64>, Option<i64>, Option<i64>),
}

/// A PostgreSQL-backed store (one connection).
pub struct PgStore {
    client: Client,
    /// The schema this store made for itself ([`PgStore::open_schema`]), dropped by
    /// [`PgStore::drop_schema`].
    own_schema: Option<String>,
}

fn pg_err(what: &str) -> impl Fn(postgres::Error) -> StoreError + '_ {
    move |e| StoreError::Postgres(format!("{what}: {}", describe(&e)))
}

/// The server's message when there is one (`relation ... does not exist`), else the error.
fn describe(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => db.message().to_string(),
        None => e.to_string(),
    }
}

impl From<postgres::Error> for StoreError {
    fn from(e: postgres::Error) -> Self {
        StoreError::Postgres(describe(&e))
    }
}

fn attempt_from_row(r: &Row) -> AttemptRecord {
    AttemptRecord {
        attempt_id: r.get(0),
        session_id: r.get(1),
        session_uuid: r.get(2),
        name: r.get(3),
        status: AttemptStatus::parse(r.get::<_, &str>(4)),
        workflow: r.get(5),
        session_time: r.get(6),
    }
}

fn results_by_name(rows: &[Row]) -> Result<HashMap<String, Done>> {
    let mut out = HashMap::new();
    for row in rows {
        let name: String = row.get(0);
        let result: &str = row.get(1);
        let done: Done = from_json(&format!("result of task {name}"), result)?;
        out.insert(name, done);
    }
    Ok(out)
}

/// A revision from the columns of [`projects::REVISION_SELECT`] starting at `at`.
fn revision_from_row(r: &Row, at: usize) -> RevisionRecord {
    RevisionRecord {
        id: r.get(at),
        project_id: r.get(at + 1),
        name: r.get(at + 2),
        created_at_ms: r.get(at + 3),
        archive_digest: r.get(at + 4),
        archive_size: r.get::<_, Option<i64>>(at + 5).map(|n| n.max(0) as u64),
    }
}

fn project_from_row(r: &Row) -> ProjectRecord {
    let latest = r.get::<_, Option<i64>>(3).map(|_| revision_from_row(r, 3));
    ProjectRecord { id: r.get(0), name: r.get(1), created_at_ms: r.get(2), latest }
}

fn name_taken(tx: &mut impl GenericClient, session_id: i64, name: &str) -> Result<bool> {
    Ok(tx.query_opt("SELECT 1 FROM attempts WHERE session_id = $1 AND name = $2", &[&session_id, &name])?.is_some())
}

impl PgStore {
    /// Connects to `url` (`postgres://user@host:port/db`), creating and migrating the schema
    /// as needed.
    pub fn open(url: &str) -> Result<PgStore> {
        let client =
            Client::connect(url, NoTls).map_err(|e| StoreError::Connect { url: redact(url), message: describe(&e) })?;
        let mut store = PgStore { client, own_schema: None };
        store.migrate()?;
        Ok(store)
    }

    /// Like [`PgStore::open`], in a schema of its own (created now): isolated state, e.g.
    /// for tests; [`PgStore::drop_schema`] removes it.
    pub fn open_schema(url: &str, schema: &str) -> Result<PgStore> {
        if !schema.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(StoreError::Postgres(format!("invalid schema name {schema:?}")));
        }
        let client =
            Client::connect(url, NoTls).map_err(|e| StoreError::Connect { url: redact(url), message: describe(&e) })?;
        let mut store = PgStore { client, own_schema: Some(schema.to_string()) };
        store.client.batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS {schema}; SET search_path TO {schema}"))?;
        store.migrate()?;
        Ok(store)
    }

    /// Drops the schema [`PgStore::open_schema`] created (nothing otherwise).
    pub fn drop_schema(&mut self) -> Result<()> {
        if let Some(schema) = self.own_schema.take() {
            self.client.batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))?;
        }
        Ok(())
    }

    fn migrate(&mut self) -> Result<()> {
        let mut tx = self.client.transaction()?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])?;
        tx.batch_execute("CREATE TABLE IF NOT EXISTS spade_schema (version INTEGER NOT NULL)")?;
        let version: i32 = match tx.query_opt("SELECT version FROM spade_schema", &[])? {
            Some(row) => row.get(0),
            None => {
                tx.execute("INSERT INTO spade_schema (version) VALUES (0)", &[])?;
                0
            }
        };
        if version > SCHEMA_VERSION {
            return Err(StoreError::TooNew { found: version.into(), known: SCHEMA_VERSION.into() });
        }
        for sql in MIGRATIONS.iter().skip(version as usize) {
            tx.batch_execute(sql).map_err(pg_err("migrating the state database"))?;
        }
        tx.execute("UPDATE spade_schema SET version = $1", &[&SCHEMA_VERSION])?;
        tx.commit()?;
        Ok(())
    }

    fn project_id(&mut self, name: &str) -> Result<i64> {
        self.client.execute(
            "INSERT INTO projects (name, created_at) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
            &[&name, &now_ms()],
        )?;
        Ok(self.client.query_one("SELECT id FROM projects WHERE name = $1", &[&name])?.get(0))
    }

    fn complete_attempt_info(&mut self, row: &Row) -> Result<AttemptInfo> {
        let attempt = attempt_from_row(row);
        let params = from_json(&format!("params of attempt {}", attempt.attempt_id), row.get::<_, &str>(9))?;
        let mut tasks = TaskCounts::default();
        let lo = attempt.attempt_id << 32;
        let hi = (attempt.attempt_id + 1) << 32;
        for r in self
            .client
            .query("SELECT state, COUNT(*) FROM tasks WHERE id >= $1 AND id < $2 GROUP BY state", &[&lo, &hi])?
        {
            tasks.add(TaskState::parse(r.get::<_, &str>(0)), r.get::<_, i64>(1) as u64);
        }
        Ok(AttemptInfo {
            attempt,
            project: row.get(7),
            project_id: row.get(12),
            timezone: row.get(8),
            params,
            created_at_ms: row.get(10),
            finished_at_ms: row.get(11),
            tasks,
        })
    }
}

/// `url` without its password, for messages.
pub(crate) fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}{user}{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_string(),
    }
}

impl Store for PgStore {
    fn ping(&mut self) -> Result<()> {
        self.client.batch_execute("SELECT 1")?;
        Ok(())
    }

    fn begin_attempt(&mut self, new: &NewAttempt) -> Result<AttemptRecord> {
        let project_id = self.project_id(&new.project)?;
        let mut tx = self.client.transaction()?;
        tx.execute(
            "INSERT INTO sessions (project_id, workflow, session_time, uuid) VALUES ($1, $2, $3, $4)
             ON CONFLICT (project_id, workflow, session_time) DO NOTHING",
            &[&project_id, &new.workflow, &new.session_time, &uuid::Uuid::new_v4().to_string()],
        )?;
        // Locks the session row: two hosts starting attempts of one session pick names in turn.
        let row = tx.query_one(
            "SELECT id, uuid FROM sessions WHERE project_id = $1 AND workflow = $2 AND session_time = $3 FOR UPDATE",
            &[&project_id, &new.workflow, &new.session_time],
        )?;
        let (session_id, session_uuid): (i64, String) = (row.get(0), row.get(1));
        let count: i64 = tx.query_one("SELECT COUNT(*) FROM attempts WHERE session_id = $1", &[&session_id])?.get(0);
        let name = attempt_name(new, count, |n| name_taken(&mut tx, session_id, n))?;
        let attempt_id: i64 = tx
            .query_one(
                "INSERT INTO attempts (session_id, name, status, timezone, params, created_at)
                 VALUES ($1, $2, 'running', $3, $4, $5) RETURNING id",
                &[&session_id, &name, &new.timezone, &to_json(&new.params), &now_ms()],
            )?
            .get(0);
        tx.execute("UPDATE sessions SET last_attempt_id = $1 WHERE id = $2", &[&attempt_id, &session_id])?;
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
        let rows = self.client.query(
            "SELECT t.name, t.result FROM attempts a JOIN tasks t
                ON t.id >= (a.id << 32) AND t.id < ((a.id + 1) << 32)
             WHERE a.session_id = $1 AND a.id < $2 AND t.state = 'success' AND t.result IS NOT NULL
             ORDER BY t.id",
            &[&session_id, &before_attempt],
        )?;
        results_by_name(&rows)
    }

    fn unfinished_requests(&mut self, session_id: i64, before_attempt: i64) -> Result<HashMap<String, TaskRequest>> {
        let rows = self.client.query(
            "SELECT t.name, t.state, t.request FROM attempts a JOIN tasks t
                ON t.id >= (a.id << 32) AND t.id < ((a.id + 1) << 32)
             WHERE a.session_id = $1 AND a.id < $2 ORDER BY t.id",
            &[&session_id, &before_attempt],
        )?;
        unfinished(rows.iter().map(|r| (r.get::<_, String>(0), r.get::<_, &str>(1), r.get::<_, Option<&str>>(2))))
    }

    fn write(&mut self, changes: &[TaskChange]) -> Result<()> {
        if changes.is_empty() {
            return Ok(());
        }
        // One statement per batch (a round trip per change made a 10,000-task run 4x slower
        // than on SQLite). A batch may change one task twice (running, then done): merge
        // those first, as the per-row upsert would have, since one INSERT cannot touch a
        // row twice.
        let now = now_ms();
        let mut rows: Vec<TaskRow> = Vec::with_capacity(changes.len());
        let mut at: HashMap<i64, usize> = HashMap::with_capacity(changes.len());
        for c in changes {
            let id = task_row_id(c.attempt_id, c.index);
            let row = TaskRow {
                id,
                attempt_id: c.attempt_id,
                name: c.name.clone(),
                state: c.state.as_str(),
                retry_count: i64::from(c.retry_count),
                request: c.request.as_deref().map(to_json),
                result: c.result.as_ref().map(to_json),
                error: c.error.clone(),
                started: (c.state == TaskState::Running).then_some(now),
                usage: usage_columns(c.usage.as_ref()),
            };
            match at.get(&id) {
                Some(&i) => {
                    let earlier = std::mem::replace(&mut rows[i], row);
                    let merged = &mut rows[i];
                    merged.request = merged.request.take().or(earlier.request);
                    merged.started = earlier.started.or(merged.started);
                    if merged.usage.0.is_none() {
                        merged.usage = earlier.usage;
                    }
                }
                None => {
                    at.insert(id, rows.len());
                    rows.push(row);
                }
            }
        }
        let col = |f: fn(&TaskRow) -> i64| rows.iter().map(f).collect::<Vec<i64>>();
        let ids = col(|r| r.id);
        let attempts = col(|r| r.attempt_id);
        let retries = col(|r| r.retry_count);
        let names: Vec<&str> = rows.iter().map(|r| r.name.as_str()).collect();
        let states: Vec<&str> = rows.iter().map(|r| r.state).collect();
        let requests: Vec<Option<&str>> = rows.iter().map(|r| r.request.as_deref()).collect();
        let results: Vec<Option<&str>> = rows.iter().map(|r| r.result.as_deref()).collect();
        let errors: Vec<Option<&str>> = rows.iter().map(|r| r.error.as_deref()).collect();
        let started: Vec<Option<i64>> = rows.iter().map(|r| r.started).collect();
        let walls: Vec<Option<i64>> = rows.iter().map(|r| r.usage.0).collect();
        let cpus: Vec<Option<i64>> = rows.iter().map(|r| r.usage.1).collect();
        let peaks: Vec<Option<i64>> = rows.iter().map(|r| r.usage.2).collect();
        self.client.execute(
            "INSERT INTO tasks (id, attempt_id, name, state, retry_count, request, result, error, updated_at, started_at,
                                wall_ms, cpu_ms, peak_memory_bytes)
             SELECT id, attempt_id, name, state, retry_count, request, result, error, $10, started_at,
                    wall_ms, cpu_ms, peak_memory_bytes
             FROM UNNEST($1::BIGINT[], $2::BIGINT[], $3::TEXT[], $4::TEXT[], $5::BIGINT[], $6::TEXT[], $7::TEXT[],
                         $8::TEXT[], $9::BIGINT[], $11::BIGINT[], $12::BIGINT[], $13::BIGINT[])
                  AS t(id, attempt_id, name, state, retry_count, request, result, error, started_at,
                       wall_ms, cpu_ms, peak_memory_bytes)
             ON CONFLICT (id) DO UPDATE SET
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
            &[
                &ids, &attempts, &names, &states, &retries, &requests, &results, &errors, &started, &now, &walls, &cpus,
                &peaks,
            ],
        )?;
        Ok(())
    }

    fn finish_attempt(&mut self, attempt_id: i64, status: AttemptStatus) -> Result<()> {
        let n = self.client.execute(
            "UPDATE attempts SET status = $1, finished_at = $2 WHERE id = $3",
            &[&status.as_str(), &now_ms(), &attempt_id],
        )?;
        if n == 0 {
            return Err(StoreError::NoSuchAttempt(attempt_id));
        }
        Ok(())
    }

    fn attempt(&mut self, attempt_id: i64) -> Result<AttemptRecord> {
        let row = self.client.query_opt(&format!("{ATTEMPT_SELECT} WHERE a.id = $1"), &[&attempt_id])?;
        row.map(|r| attempt_from_row(&r)).ok_or(StoreError::NoSuchAttempt(attempt_id))
    }

    fn session_attempts(&mut self, project: &str, workflow: &str, session_time: &str) -> Result<Vec<AttemptRecord>> {
        let rows = self.client.query(
            &format!(
                "{ATTEMPT_SELECT} JOIN projects p ON p.id = s.project_id
                 WHERE p.name = $1 AND s.workflow = $2 AND s.session_time = $3 ORDER BY a.id"
            ),
            &[&project, &workflow, &session_time],
        )?;
        Ok(rows.iter().map(attempt_from_row).collect())
    }

    fn running_attempts(&mut self, project: &str, workflow: &str) -> Result<Vec<(AttemptRecord, Option<u32>)>> {
        let rows = self.client.query(
            "SELECT a.id, a.session_id, s.uuid, a.name, a.status, s.workflow, s.session_time, a.pid
             FROM attempts a JOIN sessions s ON s.id = a.session_id JOIN projects p ON p.id = s.project_id
             WHERE p.name = $1 AND s.workflow = $2 AND a.status = 'running' ORDER BY a.id",
            &[&project, &workflow],
        )?;
        Ok(rows
            .iter()
            .map(|r| (attempt_from_row(r), r.get::<_, Option<i64>>(7).and_then(|p| u32::try_from(p).ok())))
            .collect())
    }

    fn tasks(&mut self, attempt_id: i64) -> Result<Vec<TaskRecord>> {
        let (lo, hi) = (attempt_id << 32, (attempt_id + 1) << 32);
        let rows = self.client.query(
            "SELECT name, state, retry_count, request, result, error, updated_at, started_at,
                    wall_ms, cpu_ms, peak_memory_bytes FROM tasks
             WHERE id >= $1 AND id < $2 ORDER BY id",
            &[&lo, &hi],
        )?;
        rows.iter()
            .map(|r| {
                task_record(
                    r.get(0),
                    r.get(1),
                    u32::try_from(r.get::<_, i64>(2)).unwrap_or(u32::MAX),
                    r.get(3),
                    r.get(4),
                    r.get(5),
                    r.get(6),
                    r.get(7),
                    usage_from_columns(r.get(8), r.get(9), r.get(10)),
                )
            })
            .collect()
    }

    fn list_sessions(&mut self, workflow: Option<&str>) -> Result<Vec<SessionRecord>> {
        let rows = self.client.query(
            "SELECT s.id, s.uuid, p.name, s.workflow, s.session_time,
                    (SELECT COUNT(*) FROM attempts c WHERE c.session_id = s.id),
                    s.last_attempt_id, a.status, a.created_at, p.id
             FROM sessions s JOIN projects p ON p.id = s.project_id
             LEFT JOIN attempts a ON a.id = s.last_attempt_id
             WHERE $1::TEXT IS NULL OR s.workflow = $1
             ORDER BY COALESCE(s.last_attempt_id, 0) DESC, s.id DESC",
            &[&workflow],
        )?;
        Ok(rows
            .iter()
            .map(|r| SessionRecord {
                session_id: r.get(0),
                session_uuid: r.get(1),
                project: r.get(2),
                project_id: r.get(9),
                workflow: r.get(3),
                session_time: r.get(4),
                attempt_count: r.get::<_, i64>(5) as u64,
                last_attempt_id: r.get(6),
                last_status: r.get::<_, Option<&str>>(7).map(AttemptStatus::parse),
                last_attempt_at_ms: r.get(8),
            })
            .collect())
    }

    fn list_attempts(&mut self, session_id: Option<i64>) -> Result<Vec<AttemptInfo>> {
        let rows = self.client.query(
            &format!("{ATTEMPT_INFO_SELECT} WHERE $1::BIGINT IS NULL OR a.session_id = $1 ORDER BY a.id DESC"),
            &[&session_id],
        )?;
        rows.iter().map(|r| self.complete_attempt_info(r)).collect()
    }

    fn attempt_info(&mut self, attempt_id: i64) -> Result<AttemptInfo> {
        let row = self
            .client
            .query_opt(&format!("{ATTEMPT_INFO_SELECT} WHERE a.id = $1"), &[&attempt_id])?
            .ok_or(StoreError::NoSuchAttempt(attempt_id))?;
        self.complete_attempt_info(&row)
    }

    fn put_revision(&mut self, project: &str, name: &str, workflows: &[WorkflowDefinition]) -> Result<i64> {
        let project_id = self.project_id(project)?;
        let mut tx = self.client.transaction()?;
        let inserted = tx.query_opt(
            "INSERT INTO revisions (project_id, name, created_at) VALUES ($1, $2, $3)
             ON CONFLICT (project_id, name) DO NOTHING RETURNING id",
            &[&project_id, &name, &now_ms()],
        )?;
        let id = match inserted {
            Some(row) => {
                let id: i64 = row.get(0);
                for w in workflows {
                    tx.execute(
                        "INSERT INTO workflow_definitions (revision_id, name, timezone, config) VALUES ($1, $2, $3, $4)",
                        &[&id, &w.name, &w.timezone, &to_json(&w.config)],
                    )?;
                }
                id
            }
            None => tx
                .query_one("SELECT id FROM revisions WHERE project_id = $1 AND name = $2", &[&project_id, &name])?
                .get(0),
        };
        tx.commit()?;
        Ok(id)
    }

    fn link_revision(&mut self, attempt_id: i64, revision_id: i64) -> Result<()> {
        self.client.execute("UPDATE attempts SET revision_id = $1 WHERE id = $2", &[&revision_id, &attempt_id])?;
        Ok(())
    }

    fn append_logs(&mut self, lines: &[LogLine]) -> Result<()> {
        if lines.is_empty() {
            return Ok(());
        }
        let attempts: Vec<i64> = lines.iter().map(|l| l.attempt_id).collect();
        let tasks: Vec<&str> = lines.iter().map(|l| l.task_name.as_str()).collect();
        let ats: Vec<i64> = lines.iter().map(|l| l.at_ms).collect();
        let levels: Vec<&str> = lines.iter().map(|l| l.level.as_str()).collect();
        let messages: Vec<&str> = lines.iter().map(|l| l.message.as_str()).collect();
        // WITH ORDINALITY keeps the lines' order in their ids.
        self.client.execute(
            "INSERT INTO task_logs (attempt_id, task_name, at, level, message)
             SELECT attempt_id, task_name, at, level, message
             FROM UNNEST($1::BIGINT[], $2::TEXT[], $3::BIGINT[], $4::TEXT[], $5::TEXT[]) WITH ORDINALITY
                  AS l(attempt_id, task_name, at, level, message, n)
             ORDER BY n",
            &[&attempts, &tasks, &ats, &levels, &messages],
        )?;
        Ok(())
    }

    fn task_logs(&mut self, attempt_id: i64, prefix: &str) -> Result<Vec<LogLine>> {
        let rows = self.client.query(
            "SELECT attempt_id, task_name, at, level, message FROM task_logs
             WHERE attempt_id = $1 AND starts_with(task_name, $2) ORDER BY id",
            &[&attempt_id, &prefix],
        )?;
        Ok(rows
            .iter()
            .map(|r| LogLine {
                attempt_id: r.get(0),
                task_name: r.get(1),
                at_ms: r.get(2),
                level: r.get(3),
                message: r.get(4),
            })
            .collect())
    }

    fn attempt_results(&mut self, attempt_id: i64) -> Result<HashMap<String, Done>> {
        let (lo, hi) = (attempt_id << 32, (attempt_id + 1) << 32);
        let rows = self.client.query(
            "SELECT name, result FROM tasks WHERE id >= $1 AND id < $2
               AND state = 'success' AND result IS NOT NULL ORDER BY id",
            &[&lo, &hi],
        )?;
        results_by_name(&rows)
    }

    fn claim_attempt(&mut self, attempt_id: i64, pid: u32) -> Result<()> {
        self.client.execute("UPDATE attempts SET pid = $1 WHERE id = $2", &[&i64::from(pid), &attempt_id])?;
        Ok(())
    }

    fn attempt_owner(&mut self, attempt_id: i64) -> Result<Option<u32>> {
        let row = self
            .client
            .query_opt("SELECT pid FROM attempts WHERE id = $1", &[&attempt_id])?
            .ok_or(StoreError::NoSuchAttempt(attempt_id))?;
        Ok(row.get::<_, Option<i64>>(0).and_then(|p| u32::try_from(p).ok()))
    }

    fn request_cancel(&mut self, attempt_id: i64) -> Result<()> {
        let n = self.client.execute("UPDATE attempts SET cancel_requested = TRUE WHERE id = $1", &[&attempt_id])?;
        if n == 0 {
            return Err(StoreError::NoSuchAttempt(attempt_id));
        }
        Ok(())
    }

    fn cancel_requested(&mut self, attempt_id: i64) -> Result<bool> {
        Ok(self
            .client
            .query_opt("SELECT cancel_requested FROM attempts WHERE id = $1", &[&attempt_id])?
            .is_some_and(|r| r.get::<_, bool>(0)))
    }

    fn cancel_requests(&mut self) -> Result<Vec<i64>> {
        let rows = self
            .client
            .query("SELECT id FROM attempts WHERE cancel_requested AND status = 'running' ORDER BY id", &[])?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    fn get_value(&mut self, project: &str, key: &str) -> Result<Option<String>> {
        Ok(self.client.query_opt(projects::GET_VALUE, &[&project, &key])?.map(|r| r.get(0)))
    }

    fn set_value(&mut self, project: &str, key: &str, value: &str) -> Result<()> {
        self.client.execute(projects::SET_VALUE, &[&project, &key, &value])?;
        Ok(())
    }

    fn swap_value(&mut self, project: &str, key: &str, expected: Option<&str>, value: &str) -> Result<bool> {
        let n = match expected {
            None => self.client.execute(projects::INSERT_VALUE, &[&project, &key, &value])?,
            Some(old) => self.client.execute(projects::SWAP_VALUE, &[&value, &project, &key, &old])?,
        };
        Ok(n == 1)
    }

    fn push_revision(&mut self, new: &NewRevision<'_>) -> Result<Pushed> {
        let now = now_ms();
        let mut tx = self.client.transaction()?;
        tx.execute(projects::INSERT_ARCHIVE, &[&new.digest, &(new.archive.len() as i64), &new.archive, &now])?;
        tx.execute(projects::INSERT_PROJECT, &[&new.project, &now])?;
        let project_id: i64 = tx.query_one("SELECT id FROM projects WHERE name = $1", &[&new.project])?.get(0);
        // Locks the project's revision names against a concurrent push of the same name.
        tx.execute("SELECT id FROM projects WHERE id = $1 FOR UPDATE", &[&project_id])?;
        let existing = tx.query_opt(
            "SELECT archive_digest FROM revisions WHERE project_id = $1 AND name = $2",
            &[&project_id, &new.revision],
        )?;
        let created = match existing.map(|r| r.get::<_, Option<String>>(0)) {
            Some(digest) if digest.as_deref() == Some(new.digest) => false,
            Some(_) => {
                return Err(StoreError::RevisionConflict {
                    project: new.project.to_string(),
                    revision: new.revision.to_string(),
                });
            }
            None => {
                let id: i64 = tx
                    .query_one(
                        &format!("{} RETURNING id", projects::INSERT_REVISION),
                        &[&project_id, &new.revision, &now, &new.digest],
                    )?
                    .get(0);
                for w in new.workflows {
                    tx.execute(projects::INSERT_DEFINITION, &[&id, &w.name, &w.timezone, &to_json(&w.config)])?;
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
        let rows = self.client.query(&format!("{} ORDER BY p.name", projects::PROJECT_SELECT), &[])?;
        Ok(rows.iter().map(project_from_row).collect())
    }

    fn project(&mut self, id: i64) -> Result<ProjectRecord> {
        self.client
            .query_opt(&format!("{} WHERE p.id = $1", projects::PROJECT_SELECT), &[&id])?
            .map(|r| project_from_row(&r))
            .ok_or_else(|| StoreError::NoSuchProject(id.to_string()))
    }

    fn project_named(&mut self, name: &str) -> Result<Option<ProjectRecord>> {
        Ok(self
            .client
            .query_opt(&format!("{} WHERE p.name = $1", projects::PROJECT_SELECT), &[&name])?
            .map(|r| project_from_row(&r)))
    }

    fn revisions(&mut self, project_id: i64) -> Result<Vec<RevisionRecord>> {
        let project = self.project(project_id)?;
        let rows = self.client.query(
            &format!("{} WHERE r.project_id = $1 ORDER BY r.id DESC", projects::REVISION_SELECT),
            &[&project.id],
        )?;
        Ok(rows.iter().map(|r| revision_from_row(r, 0)).collect())
    }

    fn revision(&mut self, project_id: i64, name: Option<&str>) -> Result<RevisionRecord> {
        let project = self.project(project_id)?;
        let found = match name {
            Some(name) => self
                .client
                .query_opt(
                    &format!("{} WHERE r.project_id = $1 AND r.name = $2", projects::REVISION_SELECT),
                    &[&project_id, &name],
                )?
                .map(|r| revision_from_row(&r, 0)),
            None => project.latest.clone(),
        };
        found.ok_or_else(|| StoreError::NoSuchRevision {
            project: project.name,
            revision: name.unwrap_or("(any)").to_string(),
        })
    }

    fn workflow_definitions(&mut self, revision_id: i64) -> Result<Vec<WorkflowDefinition>> {
        let rows = self.client.query(projects::SELECT_DEFINITIONS, &[&revision_id])?;
        rows.iter()
            .map(|row| {
                let name: String = row.get(0);
                let config = from_json(&format!("definition of workflow {name}"), row.get::<_, &str>(2))?;
                Ok(WorkflowDefinition { name, timezone: row.get(1), config })
            })
            .collect()
    }

    fn archive(&mut self, digest: &str) -> Result<Vec<u8>> {
        self.client
            .query_opt(projects::SELECT_ARCHIVE, &[&digest])?
            .map(|r| r.get(0))
            .ok_or_else(|| StoreError::NoSuchArchive(digest.to_string()))
    }
}

impl Queue for PgStore {
    fn enqueue(&mut self, call: &NewQueuedCall<'_>) -> Result<i64> {
        Ok(self
            .client
            .query_one(
                queue::ENQUEUE,
                &[
                    &call.attempt_id,
                    &call.task_name,
                    &call.archive_digest,
                    &call.tag,
                    &call.affinity,
                    &call.request,
                    &now_ms(),
                ],
            )?
            .get(0))
    }

    fn claim(&mut self, agent: &str, tags: &[String], max: usize, lease: Duration) -> Result<Vec<ClaimedCall>> {
        let mut tx = self.client.transaction()?;
        // Rows another claimer holds are skipped, not waited for: claimers never queue up
        // behind each other.
        let own = format!("{} FOR UPDATE SKIP LOCKED", queue::CLAIMABLE_OWN);
        let mut ids: Vec<i64> = tx.query(&own, &[&agent])?.iter().map(|r| r.get(0)).collect();
        let claimable = format!("{} FOR UPDATE SKIP LOCKED", queue::CLAIMABLE);
        let others = tx.query(&claimable, &[&queue::tag_list(tags), &queue::lease_ago(lease), &(max as i64)])?;
        ids.extend(others.iter().map(|r| r.get::<_, i64>(0)));
        let until = queue::lease_end(lease);
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(r) = tx.query_opt(queue::CLAIM, &[&agent, &until, &id])? {
                out.push(ClaimedCall {
                    id: r.get(0),
                    token: r.get(1),
                    attempt_id: r.get(2),
                    task_name: r.get(3),
                    archive_digest: r.get(4),
                    request: r.get(5),
                });
            }
        }
        tx.commit()?;
        Ok(out)
    }

    fn heartbeat(&mut self, agent: &str, held: &[(i64, i64)], lease: Duration) -> Result<Vec<Held>> {
        let until = queue::lease_end(lease);
        let mut tx = self.client.transaction()?;
        let mut out = Vec::with_capacity(held.len());
        for (id, token) in held {
            out.push(match tx.query_opt(queue::EXTEND, &[&until, id, token, &agent])? {
                Some(r) => Held::Kept { cancel_requested: r.get(0) },
                None => Held::Lost,
            });
        }
        tx.commit()?;
        Ok(out)
    }

    fn complete(&mut self, id: i64, token: i64, outcome: &str) -> Result<bool> {
        Ok(self.client.execute(queue::COMPLETE, &[&outcome, &now_ms(), &id, &token])? == 1)
    }

    fn requeue_expired(&mut self, max_claims: i64, give_up: &dyn Fn(i64) -> String) -> Result<Vec<GivenUp>> {
        let now = now_ms();
        let mut tx = self.client.transaction()?;
        let expired: Vec<GivenUp> = tx
            .query(&format!("{} FOR UPDATE SKIP LOCKED", queue::EXPIRED), &[&now])?
            .iter()
            .map(|r| GivenUp { id: r.get(0), task_name: r.get(1), claims: r.get(2) })
            .collect();
        let mut given_up = Vec::new();
        for row in expired {
            if row.claims >= max_claims {
                tx.execute(queue::GIVE_UP, &[&give_up(row.claims), &now, &row.id, &now])?;
                given_up.push(row);
            } else {
                tx.execute(queue::REQUEUE, &[&row.id, &now])?;
            }
        }
        tx.commit()?;
        Ok(given_up)
    }

    fn call_state(&mut self, id: i64) -> Result<CallState> {
        let r = self.client.query_opt(queue::STATE, &[&id])?.ok_or(StoreError::NoSuchCall(id))?;
        Ok(queue::call_state(r.get(0), r.get(1), r.get(2)))
    }

    fn cancel_call(&mut self, id: i64, outcome: &str) -> Result<()> {
        let mut tx = self.client.transaction()?;
        tx.execute(queue::CANCEL, &[&id])?;
        tx.execute(queue::CANCEL_QUEUED, &[&outcome, &now_ms(), &id])?;
        tx.commit()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn passwords_stay_out_of_messages() {
        assert_eq!(redact("postgres://spade:s3cret@db:5432/x"), "postgres://spade@db:5432/x");
        assert_eq!(redact("postgres://db/x"), "postgres://db/x");
    }
}
