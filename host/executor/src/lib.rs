//! spade-executor: runs attempts of pushed projects on a server.
//!
//! [`Executor::start`] begins an attempt of a project's latest revision and drives it with
//! the engine on a thread of its own; the engine's operator host is a [`QueuedHost`], so
//! every operator call becomes a row of the task queue that an agent (`spade agent`)
//! claims, runs in a fresh workspace extracted from the revision, and reports. A waiting
//! task (`wait>`, a running script's poll) holds no agent, thread or wasm instance between
//! its polls: each poll is a new call that any agent may take.
//!
//! [`Executor::reap`] puts calls whose agent stopped sending heartbeats back in the queue
//! (and gives up on one that keeps losing its agent), so an attempt survives the death or
//! partition of an agent.
//!
//! Not yet: the attempt's own progress is held in this process while it runs (a server
//! that dies leaves its attempts to be retried, not taken over by another server).

mod queued;
mod schedules;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Timelike, Utc};
use serde_json::{Map, Value};
use spade_api::remote::CallResult;
use spade_api::{CancelToken, LogLevel, Usage};
use spade_dig::{Project, Zone};
use spade_engine::{AttemptInput, Console, EngineOptions, run_attempt};
use spade_store::{
    AttemptRecord, AttemptStatus, NewAttempt, PooledHandle, Store, StoreError, StoreLocation, StorePool,
};

pub use queued::{AGENT_TAG_PARAM, CHECK_EVERY, Completions, QueuedHost};
pub use schedules::apply_push_schedules;

#[derive(Debug, thiserror::Error)]
pub enum ExecutorError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("project {project} has no workflow {workflow:?} (workflows: {known})")]
    NoSuchWorkflow { project: String, workflow: String, known: String },
    #[error("project {0} has no pushed revision to run")]
    NoArchive(String),
    #[error("sessionTime: {0}")]
    SessionTime(String),
    #[error("revision {revision} of project {project}: {message}")]
    Revision { project: String, revision: String, message: String },
}

/// How the executor runs attempts.
#[derive(Clone, Debug)]
pub struct ExecutorConfig {
    /// Where revisions are unpacked for the engine to read their workflows.
    pub data_dir: PathBuf,
    pub engine: EngineOptions,
    /// How long an agent holds a call without a heartbeat.
    pub lease: Duration,
    /// Claims of one call before the queue gives up on it.
    pub max_claims: i64,
}

/// An attempt to start.
#[derive(Clone, Debug, Default)]
pub struct StartAttempt {
    pub project_id: i64,
    pub workflow: String,
    /// Digdag's session time forms; none: now.
    pub session_time: Option<String>,
    pub params: Map<String, Value>,
    pub retry_attempt_name: Option<String>,
}

/// Runs attempts of pushed projects (see the crate docs).
pub struct Executor {
    stores: StorePool,
    config: ExecutorConfig,
    completions: Arc<Completions>,
    /// Notified whenever a call is queued (agents waiting in a claim wake up).
    enqueued: Arc<tokio::sync::Notify>,
    /// Unpacked revisions by archive digest.
    revisions: Mutex<HashMap<String, Arc<Project>>>,
    /// The attempts this process drives, to cancel when someone kills one.
    running: Mutex<HashMap<i64, CancelToken>>,
}

impl Executor {
    pub fn new(stores: StorePool, config: ExecutorConfig) -> Arc<Executor> {
        Arc::new(Executor {
            stores,
            config,
            completions: Arc::default(),
            enqueued: Arc::default(),
            revisions: Mutex::default(),
            running: Mutex::default(),
        })
    }

    pub fn config(&self) -> &ExecutorConfig {
        &self.config
    }

    /// Notified when this process queues a call: a claim that found nothing waits on it
    /// (calls queued by another server process are found when the wait times out).
    pub fn enqueued(&self) -> &Arc<tokio::sync::Notify> {
        &self.enqueued
    }

    /// The result of call `id` was accepted: wake the worker waiting on it.
    pub fn notify_completed(&self, id: i64) {
        self.completions.notify(id);
    }

    /// Begin an attempt of the project's latest revision and run it on a thread of its own.
    pub fn start(self: &Arc<Self>, start: &StartAttempt) -> Result<AttemptRecord, ExecutorError> {
        let mut store = self.stores.get()?;
        let project = store.project(start.project_id)?;
        let revision = store.revision(start.project_id, None)?;
        let digest = revision.archive_digest.clone().ok_or_else(|| ExecutorError::NoArchive(project.name.clone()))?;
        let (root, files) = self.unpacked(store.as_mut(), &project.name, &revision.name, &digest)?;
        let index = files.workflows.iter().position(|w| w.name == start.workflow).ok_or_else(|| {
            let known: Vec<&str> = files.workflows.iter().map(|w| w.name.as_str()).collect();
            ExecutorError::NoSuchWorkflow {
                project: project.name.clone(),
                workflow: start.workflow.clone(),
                known: known.join(", "),
            }
        })?;
        let workflow = &files.workflows[index];
        let tz: Zone = workflow.timezone;
        let now = Utc::now();
        let session: DateTime<Zone> = match &start.session_time {
            Some(text) => {
                spade_dig::parse_session_time(text, tz, now).map_err(|e| ExecutorError::SessionTime(e.to_string()))?
            }
            None => now.with_nanosecond(0).unwrap_or(now).with_timezone(&tz),
        };
        let mut params = start.params.clone();
        spade_engine::params::schedule_params(workflow, session, &mut params);
        let attempt = store.begin_attempt(&NewAttempt {
            project: project.name.clone(),
            workflow: workflow.name.clone(),
            session_time: session.format("%Y-%m-%dT%H:%M:%S%:z").to_string(),
            timezone: tz.name().to_string(),
            name: start.retry_attempt_name.clone(),
            params: params.clone(),
        })?;
        store.link_revision(attempt.attempt_id, revision.id)?;
        drop(store);
        let host = Arc::new(QueuedHost {
            stores: self.stores.clone(),
            completions: self.completions.clone(),
            enqueued: self.enqueued.clone(),
            archive_digest: digest,
            disk_quota: self.config.engine.disk_quota,
            polling_on: Mutex::default(),
        });
        let run = AttemptRun {
            executor: Arc::clone(self),
            project_name: project.name,
            project_id: project.id,
            root,
            files,
            index,
            session,
            attempt: attempt.clone(),
            params,
            retry_attempt_name: start.retry_attempt_name.clone(),
            host,
        };
        std::thread::Builder::new()
            .name(format!("attempt-{}", attempt.attempt_id))
            .spawn(move || run.run())
            .map_err(|e| StoreError::Postgres(format!("starting the attempt's thread: {e}")))?;
        Ok(attempt)
    }

    /// The revision's files, unpacked once per digest under the data directory.
    fn unpacked(
        &self,
        store: &mut dyn spade_store::Store,
        project: &str,
        revision: &str,
        digest: &str,
    ) -> Result<(PathBuf, Arc<Project>), ExecutorError> {
        let dir = self.config.data_dir.join("revisions").join(digest);
        if let Some(p) = self.revisions.lock().unwrap_or_else(|e| e.into_inner()).get(digest) {
            return Ok((dir, p.clone()));
        }
        let fail =
            |message: String| ExecutorError::Revision { project: project.into(), revision: revision.into(), message };
        if !dir.is_dir() {
            let bytes = store.archive(digest)?;
            let scratch = self.config.data_dir.join("revisions").join(format!(".{digest}.{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&scratch);
            // The server checked this archive when it was pushed; unpacking stays careful.
            let limits = spade_archive::Limits {
                max_archive_bytes: u64::MAX,
                max_unpacked_bytes: 1 << 34,
                max_entries: 1_000_000,
            };
            spade_archive::unpack_to(&bytes, &scratch, &limits).map_err(|e| fail(e.to_string()))?;
            // Another server process may have unpacked it meanwhile: theirs is as good.
            if std::fs::rename(&scratch, &dir).is_err() {
                let _ = std::fs::remove_dir_all(&scratch);
            }
        }
        let project = Arc::new(spade_dig::load_project(&dir).map_err(|e| fail(e.to_string()))?);
        self.revisions.lock().unwrap_or_else(|e| e.into_inner()).insert(digest.to_string(), project.clone());
        Ok((dir, project))
    }

    /// Put calls whose lease expired back in the queue; a call that lost its agent
    /// `max_claims` times fails. Returns how many were given up.
    pub fn reap(&self) -> Result<usize, StoreError> {
        let max = self.config.max_claims;
        let give_up = |claims: i64| {
            queued::result_json(&CallResult {
                outcome: Err(format!(
                    "the agent running this task stopped answering {claims} times (killed, out of memory, or cut \
                     off); spade does not try it again: look at what the task does to its agent"
                )),
                logs: Vec::new(),
                prints: Vec::new(),
                usage: Usage::default(),
                holds_commands: false,
            })
        };
        let mut store = self.stores.get()?;
        let given_up = store.requeue_expired(max, &give_up)?;
        for call in &given_up {
            tracing::warn!(
                task = call.task_name,
                claims = call.claims,
                "gave up on a call that keeps losing its agent"
            );
        }
        for call in &given_up {
            self.completions.notify(call.id);
        }
        Ok(given_up.len())
    }

    /// Cancel the attempts driven here that someone asked to kill (from any server
    /// process): one query for all of them.
    pub fn notice_kills(&self) -> Result<(), StoreError> {
        if self.running.lock().unwrap_or_else(|e| e.into_inner()).is_empty() {
            return Ok(());
        }
        let killed = self.stores.get()?.cancel_requests()?;
        let running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        for id in killed {
            if let Some(cancel) = running.get(&id) {
                cancel.cancel();
            }
        }
        Ok(())
    }

    /// For the process's life, on threads of their own: [`Executor::reap`] every third of a
    /// lease, [`Executor::notice_kills`] four times a second and, unless `schedules` is
    /// false, [`Executor::schedule_tick`] every second.
    pub fn spawn_background(self: &Arc<Self>, schedules: bool) {
        if schedules {
            let executor = Arc::clone(self);
            let _ = std::thread::Builder::new().name("schedules".into()).spawn(move || {
                loop {
                    std::thread::sleep(Duration::from_secs(1));
                    if let Err(e) = executor.schedule_tick(Utc::now()) {
                        tracing::warn!("scheduling: {e}");
                    }
                }
            });
        }
        let executor = Arc::clone(self);
        let every = (self.config.lease / 3).max(Duration::from_millis(200));
        let _ = std::thread::Builder::new().name("reaper".into()).spawn(move || {
            loop {
                std::thread::sleep(every);
                if let Err(e) = executor.reap() {
                    tracing::warn!("re-queueing calls of lost agents: {e}");
                }
            }
        });
        let executor = Arc::clone(self);
        let _ = std::thread::Builder::new().name("kills".into()).spawn(move || {
            loop {
                std::thread::sleep(Duration::from_millis(250));
                if let Err(e) = executor.notice_kills() {
                    tracing::warn!("looking for killed attempts: {e}");
                }
            }
        });
    }
}

/// One attempt running on its thread.
struct AttemptRun {
    executor: Arc<Executor>,
    project_name: String,
    project_id: i64,
    root: PathBuf,
    files: Arc<Project>,
    index: usize,
    session: DateTime<Zone>,
    attempt: AttemptRecord,
    params: Map<String, Value>,
    retry_attempt_name: Option<String>,
    host: Arc<QueuedHost>,
}

impl AttemptRun {
    fn run(self) {
        let id = self.attempt.attempt_id;
        // The engine holds its store for the attempt's life: a handle that borrows a pooled
        // connection per write, not a connection of its own.
        let mut store = PooledHandle(self.executor.stores.clone());
        let cancel = CancelToken::new();
        self.executor.running.lock().unwrap_or_else(|e| e.into_inner()).insert(id, cancel.clone());
        let input = AttemptInput {
            project_name: self.project_name,
            project_id: self.project_id,
            project_root: self.root.clone(),
            // Calls run in the agents' workspaces; the engine itself writes nothing here.
            workspace: self.root,
            workflow: &self.files.workflows[self.index],
            session_time: self.session,
            attempt: self.attempt,
            params: self.params,
            retry_attempt_name: self.retry_attempt_name,
            saved: HashMap::new(),
            frozen: HashMap::new(),
            cancel,
            run_time: None,
        };
        let console: Arc<dyn Console> = Arc::new(TracingConsole);
        let result = run_attempt(input, self.host.clone(), &mut store, console, None, &self.executor.config.engine);
        self.executor.running.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
        // Commands of tasks that were between polls when the attempt ended stop too.
        let tasks = store.tasks(id).unwrap_or_default();
        self.host
            .abandon_polling(id, |name| tasks.iter().rev().find(|t| t.name == name).and_then(|t| t.request.clone()));
        match result {
            Ok(summary) => tracing::info!(attempt = id, success = summary.success, "attempt finished"),
            Err(e) => {
                tracing::error!(attempt = id, "attempt failed to run: {e}");
                let _ = store.finish_attempt(id, AttemptStatus::Error);
            }
        }
    }
}

/// Server attempts have no terminal: what the engine shows goes to the server's log (the
/// task logs are in the database).
struct TracingConsole;

impl Console for TracingConsole {
    fn print(&self, line: &str) {
        tracing::debug!("{line}");
    }
    fn log(&self, task: &str, level: LogLevel, message: &str) {
        if level >= LogLevel::Warn {
            tracing::debug!(task, "{message}");
        }
    }
    fn task_failed(&self, task: &str, message: &str) {
        tracing::info!(task, "failed: {message}");
    }
    fn flush(&self) {}
}

/// Where [`ExecutorConfig::data_dir`] defaults to: beside a SQLite state file, else under
/// the system's temporary directory.
pub fn default_data_dir(location: &StoreLocation) -> PathBuf {
    match location {
        StoreLocation::Sqlite(path) => {
            path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".")).join("spade-server-data")
        }
        StoreLocation::Postgres(_) => std::env::temp_dir().join(format!("spade-server-{}", std::process::id())),
    }
}
