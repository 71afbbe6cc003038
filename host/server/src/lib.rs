//! spade-server: the REST API and the web UI over a state database: `spade scheduler`'s
//! local project ([`Local`]) or `spade server`'s pushed projects.
//!
//! Resources and JSON follow Digdag's REST API where spade has the same concepts (string
//! ids, camelCase fields, list responses wrapped as `{"sessions": [...]}`; the types are in
//! `spade_client::rest`); `GET /` serves a single-page UI built on the same API. What runs
//! attempts is not this crate's business: a local project's go through [`Control`], which
//! the binary implements, pushed projects' through spade-executor.
//!
//! | method and path | what |
//! | --- | --- |
//! | `GET /api/version` | `{"version"}` |
//! | `PUT /api/projects?project=&revision=[&schedule_from=&clear_schedule=&clear_schedule_all=]` | push a revision (`application/gzip`; `src/projects.rs`) |
//! | `GET /api/projects[?name=&last_id=&count=]`, `/api/project?name=`, `/api/projects/{id}` | projects |
//! | `GET /api/projects/{id}/revisions`, `/workflows[?revision=]`, `/archive[?revision=]` | a project's revisions, workflows, archive |
//! | `GET /api/archives/{digest}` | an archive by sha256 (agents) |
//! | `POST /api/agent/claim`, `/heartbeat`, `/complete` | the agent protocol (`src/agents.rs`) |
//! | `GET /api/workflows` | the local project's workflows with their schedules and next runs |
//! | `GET /api/schedules` | the scheduled workflows only (a schedule's id is its workflow's name) |
//! | `POST /api/schedules/{id}/enable`, `/disable` | toggle a schedule |
//! | `POST /api/schedules/{id}/skip` `{"count"}` or `{"nextTime"}` | move a schedule forward |
//! | `GET /api/sessions[?workflow=]`, `GET /api/sessions/{id}` | sessions with their last attempt |
//! | `GET /api/sessions/{id}/attempts` | a session's attempts |
//! | `GET /api/attempts[?session_id=]`, `GET /api/attempts/{id}` | attempts |
//! | `PUT /api/attempts` `{"projectId"?, "workflowName", "sessionTime"?, "params"?}` | start an attempt (of a pushed project with `projectId`) |
//! | `POST /api/attempts/{id}/kill` | stop a running attempt (as `spade kill`) |
//! | `GET /api/attempts/{id}/tasks` | its tasks |
//! | `GET /api/attempts/{id}/logs[?task=prefix]` | its task log lines |
//!
//! Store access is blocking (SQLite or PostgreSQL): each request borrows an open store from
//! a pool on a blocking thread, so a slow query never stalls the event loop and the server
//! holds no lock between requests.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{TimeZone, Utc};
use serde::Deserialize;
use serde_json::{Map, Value, json};
mod agents;
mod projects;

use spade_client::rest::{
    IdAndName, NameRef, RestLogCollection, RestLogLine, RestSession, RestSessionAttempt, RestSessionLastAttempt,
    RestTask, RestTaskCounts, RestTaskError, RestTaskUsage,
};
use spade_store::{AttemptInfo, AttemptStatus, SessionRecord, Store, StoreError, StorePool, TaskRecord};

/// A workflow as the API shows it.
#[derive(Clone, Debug)]
pub struct WorkflowInfo {
    pub name: String,
    pub timezone: String,
    /// The `schedule:` config, if any.
    pub schedule: Option<Value>,
    /// ISO 8601 times of the next scheduled run and its session.
    pub next_run_time: Option<String>,
    pub next_session_time: Option<String>,
    /// The schedule is disabled (`spade disable`).
    pub disabled: bool,
}

/// A change to a schedule through the API.
#[derive(Clone, Debug, PartialEq)]
pub enum ScheduleAction {
    Enable,
    Disable,
    /// Skip this many slots.
    SkipCount(usize),
    /// Skip to the first slot at or after this time (as `spade reschedule --skip-to`).
    SkipTo(String),
}

/// An attempt that [`Control::start`] started.
#[derive(Clone, Debug)]
pub struct Started {
    /// The session time as stored (ISO 8601 with the workflow's offset).
    pub session_time: String,
    pub pid: u32,
}

/// What the API cannot do from the database alone.
pub trait Control: Send + Sync + 'static {
    /// The project's workflows as currently loaded.
    fn workflows(&self) -> Vec<WorkflowInfo>;
    /// Start an attempt of `workflow` for `session_time` (none: now) with `params`. Errors
    /// are messages for the API client (unknown workflow, bad session time).
    fn start(&self, workflow: &str, session_time: Option<&str>, params: &Map<String, Value>)
    -> Result<Started, String>;
    /// Whether the process recorded as running an attempt (`owner`) is known to be gone;
    /// never known for a store shared with other hosts.
    fn owner_gone(&self, owner: Option<u32>) -> bool;
    /// Enable, disable or move the schedule of `workflow`; the workflow as it then stands.
    fn change_schedule(&self, workflow: &str, action: ScheduleAction) -> Result<WorkflowInfo, String>;
}

/// What the server serves.
#[derive(Clone)]
pub struct ApiConfig {
    /// The state database, as open connections that requests borrow.
    pub stores: StorePool,
    /// The local project the API starts attempts of (`spade scheduler`); none for a server
    /// of pushed projects.
    pub local: Option<Local>,
    /// What `PUT /api/projects` accepts.
    pub archive_limits: spade_archive::Limits,
    /// Runs attempts of pushed projects; its agents use `/api/agent/...`.
    pub executor: Option<Arc<spade_executor::Executor>>,
}

/// A local project directory served with its scheduler.
#[derive(Clone)]
pub struct Local {
    pub project: String,
    pub control: Arc<dyn Control>,
}

impl ApiConfig {
    fn local(&self) -> Result<&Local, ApiError> {
        self.local.as_ref().ok_or_else(|| {
            ApiError(
                StatusCode::NOT_IMPLEMENTED,
                "this server runs no local project: workflows, schedules and starts of pushed projects are not \
                 served yet (see GET /api/projects/{id}/workflows)"
                    .into(),
            )
        })
    }
}

/// The API and UI routes.
pub fn router(config: ApiConfig) -> Router {
    Router::new()
        .route("/", get(ui))
        .route("/api/version", get(version))
        .route("/api/projects", get(projects::list_projects).put(projects::put_project))
        .route("/api/project", get(projects::project_by_name))
        .route("/api/projects/{id}", get(projects::project))
        .route("/api/projects/{id}/revisions", get(projects::revisions))
        .route("/api/projects/{id}/workflows", get(projects::workflows))
        .route("/api/projects/{id}/archive", get(projects::archive))
        .route("/api/archives/{digest}", get(agents::archive))
        .route("/api/agent/claim", post(agents::claim))
        .route("/api/agent/heartbeat", post(agents::heartbeat))
        .route("/api/agent/complete", post(agents::complete))
        .route("/api/workflows", get(workflows))
        .route("/api/schedules", get(schedules))
        .route("/api/schedules/{id}/enable", post(enable_schedule))
        .route("/api/schedules/{id}/disable", post(disable_schedule))
        .route("/api/schedules/{id}/skip", post(skip_schedule))
        .route("/api/sessions", get(sessions))
        .route("/api/sessions/{id}", get(session))
        .route("/api/sessions/{id}/attempts", get(session_attempts))
        .route("/api/attempts", get(attempts).put(start_attempt))
        .route("/api/attempts/{id}", get(attempt))
        .route("/api/attempts/{id}/kill", post(kill))
        .route("/api/attempts/{id}/tasks", get(tasks))
        .route("/api/attempts/{id}/logs", get(logs))
        .fallback(not_found)
        .with_state(Arc::new(config))
}

/// Serves `router(config)` on `listener` until the process ends.
pub async fn serve(listener: tokio::net::TcpListener, config: ApiConfig) -> std::io::Result<()> {
    axum::serve(listener, router(config)).await
}

type Shared = State<Arc<ApiConfig>>;

/// An API error: status and message, sent as `{"message": ...}`.
struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "message": self.1, "status": self.0.as_u16() }))).into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        let status = match e {
            StoreError::NoSuchAttempt(_)
            | StoreError::NoSuchProject(_)
            | StoreError::NoSuchRevision { .. }
            | StoreError::NoSuchArchive(_) => StatusCode::NOT_FOUND,
            StoreError::RevisionConflict { .. } => StatusCode::CONFLICT,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError(status, e.to_string())
    }
}

type ApiResult = Result<Json<Value>, ApiError>;

/// Runs `f` with the state database on a blocking thread.
async fn with_store<T: Send + 'static>(
    config: &ApiConfig,
    f: impl FnOnce(&mut dyn Store) -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    let pool = config.stores.clone();
    tokio::task::spawn_blocking(move || {
        let mut store = pool.get()?;
        f(store.as_mut())
    })
    .await
    .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, format!("the request failed: {e}")))?
}

fn parse_id(id: &str, what: &str) -> Result<i64, ApiError> {
    id.parse().map_err(|_| ApiError(StatusCode::BAD_REQUEST, format!("{what} id {id:?} is not a number")))
}

/// `ms` as the API's time text (ISO 8601 in UTC).
fn time_string(ms: i64) -> String {
    Utc.timestamp_millis_opt(ms).single().unwrap_or_default().format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

fn attempt_json(a: &AttemptInfo, cancel_requested: bool) -> Value {
    let r = &a.attempt;
    to_value(&RestSessionAttempt {
        id: r.attempt_id.to_string(),
        project: IdAndName { id: a.project_id.to_string(), name: a.project.clone() },
        workflow: NameRef { name: r.workflow.clone() },
        session_id: r.session_id.to_string(),
        session_uuid: r.session_uuid.clone(),
        session_time: r.session_time.clone(),
        timezone: a.timezone.clone(),
        retry_attempt_name: (!r.name.is_empty()).then(|| r.name.clone()),
        done: r.status != AttemptStatus::Running,
        success: r.status == AttemptStatus::Success,
        status: r.status.as_str().into(),
        cancel_requested,
        params: a.params.clone(),
        created_at: time_string(a.created_at_ms),
        finished_at: a.finished_at_ms.map(time_string),
        task_counts: RestTaskCounts {
            running: a.tasks.running,
            polling: a.tasks.polling,
            success: a.tasks.success,
            error: a.tasks.error,
            canceled: a.tasks.canceled,
        },
    })
}

fn session_json(s: &SessionRecord) -> Value {
    to_value(&RestSession {
        id: s.session_id.to_string(),
        project: IdAndName { id: s.project_id.to_string(), name: s.project.clone() },
        workflow: NameRef { name: s.workflow.clone() },
        session_uuid: s.session_uuid.clone(),
        session_time: s.session_time.clone(),
        attempt_count: s.attempt_count,
        last_attempt: s.last_attempt_id.map(|id| RestSessionLastAttempt {
            id: id.to_string(),
            status: s.last_status.map(|st| st.as_str().into()),
            done: s.last_status.is_some_and(|st| st != AttemptStatus::Running),
            success: s.last_status == Some(AttemptStatus::Success),
            created_at: s.last_attempt_at_ms.map(time_string),
        }),
    })
}

fn task_json(i: usize, t: &TaskRecord) -> Value {
    let (store_params, export_params) = match &t.result {
        Some(d) => (d.store_params.clone(), d.export_params.clone()),
        None => Default::default(),
    };
    to_value(&RestTask {
        id: (i + 1).to_string(),
        full_name: t.name.clone(),
        state: t.state.as_str().into(),
        retry_count: t.retry_count,
        is_group: t.request.is_none() && t.started_at_ms.is_none(),
        store_params,
        export_params,
        error: RestTaskError { message: t.error.clone() },
        started_at: t.started_at_ms.map(time_string),
        updated_at: time_string(t.updated_at_ms),
        usage: t.usage.as_ref().map(|u| RestTaskUsage {
            call_seconds: u.wall.as_secs_f64(),
            cpu_seconds: u.cpu.as_secs_f64(),
            peak_memory_bytes: u.peak_memory_bytes,
        }),
    })
}

fn to_value<T: serde::Serialize>(resource: &T) -> Value {
    serde_json::to_value(resource).expect("API resources serialize")
}

/// The project of a workflow resource (only `spade scheduler`'s local project has them).
fn project_json(name: &str) -> Value {
    json!({ "id": "1", "name": name })
}

fn workflow_json(w: &WorkflowInfo, project: &str) -> Value {
    json!({
        "id": w.name,
        "name": w.name,
        "project": project_json(project),
        "timezone": w.timezone,
        "schedule": w.schedule,
        "nextRunTime": w.next_run_time,
        "nextScheduleTime": w.next_session_time,
        "disabled": w.disabled,
    })
}

async fn change_schedule(c: &ApiConfig, workflow: String, action: ScheduleAction) -> ApiResult {
    let Local { project, control } = c.local()?.clone();
    let changed = tokio::task::spawn_blocking(move || control.change_schedule(&workflow, action))
        .await
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    match changed {
        Ok(w) => Ok(Json(workflow_json(&w, &project))),
        Err(message) => Err(ApiError(StatusCode::BAD_REQUEST, message)),
    }
}

async fn enable_schedule(State(c): Shared, Path(id): Path<String>) -> ApiResult {
    change_schedule(&c, id, ScheduleAction::Enable).await
}

async fn disable_schedule(State(c): Shared, Path(id): Path<String>) -> ApiResult {
    change_schedule(&c, id, ScheduleAction::Disable).await
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct SkipBody {
    count: Option<usize>,
    next_time: Option<String>,
}

async fn skip_schedule(
    State(c): Shared,
    Path(id): Path<String>,
    body: Result<Json<SkipBody>, axum::extract::rejection::JsonRejection>,
) -> ApiResult {
    let Json(body) = body.map_err(|e| ApiError(StatusCode::BAD_REQUEST, e.body_text()))?;
    let action = match (body.count, body.next_time) {
        (Some(n), None) => ScheduleAction::SkipCount(n),
        (None, Some(t)) => ScheduleAction::SkipTo(t),
        _ => return Err(ApiError(StatusCode::BAD_REQUEST, "give either count or nextTime".into())),
    };
    change_schedule(&c, id, action).await
}

async fn ui() -> Html<&'static str> {
    Html(include_str!("ui.html"))
}

async fn not_found() -> ApiError {
    ApiError(StatusCode::NOT_FOUND, "no such resource; the API is under /api (see GET /api/version)".into())
}

async fn version() -> Json<Value> {
    Json(json!({ "version": env!("CARGO_PKG_VERSION") }))
}

async fn workflows(State(c): Shared) -> ApiResult {
    let local = c.local()?;
    let list: Vec<Value> = local.control.workflows().iter().map(|w| workflow_json(w, &local.project)).collect();
    Ok(Json(json!({ "workflows": list })))
}

async fn schedules(State(c): Shared) -> ApiResult {
    let local = c.local()?;
    let list: Vec<Value> = local
        .control
        .workflows()
        .iter()
        .filter(|w| w.schedule.is_some())
        .map(|w| workflow_json(w, &local.project))
        .collect();
    Ok(Json(json!({ "schedules": list })))
}

#[derive(Deserialize)]
struct SessionQuery {
    workflow: Option<String>,
}

async fn sessions(State(c): Shared, Query(q): Query<SessionQuery>) -> ApiResult {
    let list = with_store(&c, move |s| Ok(s.list_sessions(q.workflow.as_deref())?)).await?;
    Ok(Json(json!({ "sessions": list.iter().map(session_json).collect::<Vec<_>>() })))
}

async fn session(State(c): Shared, Path(id): Path<String>) -> ApiResult {
    let id = parse_id(&id, "session")?;
    let list = with_store(&c, |s| Ok(s.list_sessions(None)?)).await?;
    let found = list
        .iter()
        .find(|s| s.session_id == id)
        .ok_or_else(|| ApiError(StatusCode::NOT_FOUND, format!("no session {id}")))?;
    Ok(Json(session_json(found)))
}

async fn attempts_of(c: &ApiConfig, session_id: Option<i64>) -> ApiResult {
    let list = with_store(c, move |s| {
        let attempts = s.list_attempts(session_id)?;
        attempts
            .into_iter()
            .map(|a| Ok(attempt_json(&a, s.cancel_requested(a.attempt.attempt_id)?)))
            .collect::<Result<Vec<_>, ApiError>>()
    })
    .await?;
    Ok(Json(json!({ "attempts": list })))
}

async fn session_attempts(State(c): Shared, Path(id): Path<String>) -> ApiResult {
    attempts_of(&c, Some(parse_id(&id, "session")?)).await
}

#[derive(Deserialize)]
struct AttemptQuery {
    session_id: Option<String>,
}

async fn attempts(State(c): Shared, Query(q): Query<AttemptQuery>) -> ApiResult {
    let session = q.session_id.as_deref().map(|id| parse_id(id, "session")).transpose()?;
    attempts_of(&c, session).await
}

async fn attempt(State(c): Shared, Path(id): Path<String>) -> ApiResult {
    let id = parse_id(&id, "attempt")?;
    let a = with_store(&c, move |s| {
        let info = s.attempt_info(id)?;
        Ok(attempt_json(&info, s.cancel_requested(id)?))
    })
    .await?;
    Ok(Json(a))
}

async fn tasks(State(c): Shared, Path(id): Path<String>) -> ApiResult {
    let id = parse_id(&id, "attempt")?;
    let list = with_store(&c, move |s| {
        s.attempt_info(id)?;
        Ok(s.tasks(id)?)
    })
    .await?;
    Ok(Json(json!({ "tasks": list.iter().enumerate().map(|(i, t)| task_json(i, t)).collect::<Vec<_>>() })))
}

#[derive(Deserialize)]
struct LogQuery {
    task: Option<String>,
}

async fn logs(State(c): Shared, Path(id): Path<String>, Query(q): Query<LogQuery>) -> ApiResult {
    let id = parse_id(&id, "attempt")?;
    let prefix = q.task.unwrap_or_default();
    let lines = with_store(&c, move |s| {
        s.attempt_info(id)?;
        Ok(s.task_logs(id, &prefix)?)
    })
    .await?;
    let logs = lines
        .into_iter()
        .map(|l| RestLogLine {
            at: Some(time_string(l.at_ms)),
            task_name: l.task_name,
            level: l.level,
            message: l.message,
        })
        .collect();
    Ok(Json(to_value(&RestLogCollection { logs })))
}

async fn kill(State(c): Shared, Path(id): Path<String>) -> ApiResult {
    let id = parse_id(&id, "attempt")?;
    let control = c.local.as_ref().map(|l| l.control.clone());
    with_store(&c, move |s| {
        let info = s.attempt_info(id)?;
        if info.attempt.status != AttemptStatus::Running {
            return Err(ApiError(
                StatusCode::CONFLICT,
                format!("attempt {id} already ended ({})", info.attempt.status.as_str()),
            ));
        }
        s.request_cancel(id)?;
        // Nobody left to notice the request (the process crashed or was killed): record it.
        let owner = s.attempt_owner(id)?;
        if control.is_some_and(|c| c.owner_gone(owner)) {
            s.finish_attempt(id, AttemptStatus::Killed)?;
        }
        Ok(())
    })
    .await?;
    Ok(Json(json!({ "id": id.to_string(), "cancelRequested": true })))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct StartBody {
    /// A pushed project: the attempt runs its latest revision through the task queue.
    project_id: Option<String>,
    retry_attempt_name: Option<String>,
    workflow_name: Option<String>,
    /// Digdag's field; here a workflow's id is its name.
    workflow_id: Option<String>,
    session_time: Option<String>,
    #[serde(default)]
    params: Map<String, Value>,
}

/// How long `PUT /api/attempts` waits for the started process to record its attempt.
const START_WAIT: Duration = Duration::from_secs(15);

async fn start_attempt(
    State(c): Shared,
    body: Result<Json<StartBody>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Json(body) = match body {
        Ok(b) => b,
        Err(e) => return ApiError(StatusCode::BAD_REQUEST, e.body_text()).into_response(),
    };
    let Some(workflow) = body.workflow_name.or(body.workflow_id) else {
        return ApiError(StatusCode::BAD_REQUEST, "give workflowName (the workflow to start)".into()).into_response();
    };
    if let Some(project) = &body.project_id {
        let project_id = match parse_id(project, "project") {
            Ok(id) => id,
            Err(e) => return e.into_response(),
        };
        let start = spade_executor::StartAttempt {
            project_id,
            workflow,
            session_time: body.session_time,
            params: body.params,
            retry_attempt_name: body.retry_attempt_name,
        };
        return agents::start_pushed(&c, start).await;
    }
    let Local { project, control } = match c.local() {
        Ok(local) => local.clone(),
        Err(e) => return e.into_response(),
    };
    let wf = workflow.clone();
    let started =
        tokio::task::spawn_blocking(move || control.start(&wf, body.session_time.as_deref(), &body.params)).await;
    let started = match started {
        Ok(Ok(s)) => s,
        Ok(Err(message)) => return ApiError(StatusCode::BAD_REQUEST, message).into_response(),
        Err(e) => return ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    };
    // The started process records its attempt, and itself as its owner, when it begins:
    // answer with that attempt once it is there.
    let deadline = Instant::now() + START_WAIT;
    let (pid, session_time) = (started.pid, started.session_time.clone());
    while Instant::now() < deadline {
        let (project, wf, st) = (project.clone(), workflow.clone(), session_time.clone());
        let found = with_store(&c, move |s| {
            for a in s.session_attempts(&project, &wf, &st)?.into_iter().rev() {
                if s.attempt_owner(a.attempt_id)? == Some(pid) {
                    return Ok(Some(attempt_json(&s.attempt_info(a.attempt_id)?, false)));
                }
            }
            Ok(None)
        })
        .await;
        match found {
            Ok(Some(a)) => return Json(a).into_response(),
            Ok(None) => tokio::time::sleep(Duration::from_millis(50)).await,
            Err(e) => return e.into_response(),
        }
    }
    (
        StatusCode::ACCEPTED,
        Json(json!({
            "message": format!("started {workflow} for {session_time} (pid {}); its attempt is not recorded yet", started.pid),
            "workflow": { "name": workflow },
            "sessionTime": session_time,
        })),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_errors_for_missing_ids_are_404() {
        let mut store = spade_store::SqliteStore::in_memory().unwrap();
        let err = ApiError::from(store.attempt_info(42).unwrap_err());
        assert_eq!(err.0, StatusCode::NOT_FOUND, "{}", err.1);
    }
}
