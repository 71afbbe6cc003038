//! Projects and revisions: `PUT /api/projects` (what `spade push` sends) and the resources
//! to read them back, with Digdag's contract.
//!
//! A push is checked completely before anything is stored: the body must be as long as its
//! `Content-Length` says and within the configured limits, it is unpacked into a scratch
//! directory through [`spade_archive::unpack`] (which refuses traversal, links out and
//! oversized content), and every workflow and schedule of it must compile. Only then are
//! the archive (kept once per sha256) and the revision stored, in one transaction.

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Query, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use spade_archive::ArchiveError;
use spade_client::rest::{
    IdAndName, RestProject, RestProjectCollection, RestRevision, RestRevisionCollection, RestWorkflowDefinition,
    RestWorkflowDefinitionCollection,
};
use spade_store::{NewRevision, ProjectRecord, RevisionRecord};

use crate::{ApiError, Shared, parse_id, time_string, with_store};

/// `archiveType` of every revision: archives are kept in the state database.
const ARCHIVE_TYPE: &str = "db";

fn project_rest(p: &ProjectRecord) -> RestProject {
    RestProject {
        id: p.id.to_string(),
        name: p.name.clone(),
        revision: p.latest.as_ref().map(|r| r.name.clone()).unwrap_or_default(),
        created_at: time_string(p.created_at_ms),
        updated_at: time_string(p.updated_at_ms()),
        deleted_at: None,
        archive_type: p.latest.as_ref().and_then(|r| r.archive_digest.as_ref()).map(|_| ARCHIVE_TYPE.to_string()),
        archive_sha256: p.latest.as_ref().and_then(|r| r.archive_digest.clone()),
    }
}

fn revision_rest(r: &RevisionRecord) -> RestRevision {
    RestRevision {
        revision: r.name.clone(),
        created_at: time_string(r.created_at_ms),
        archive_type: r.archive_digest.as_ref().map(|_| ARCHIVE_TYPE.to_string()),
        user_info: Default::default(),
        archive_sha256: r.archive_digest.clone(),
        archive_size: r.archive_size,
    }
}

/// The query of `PUT /api/projects`: `clear_schedule` may repeat, which a typed query
/// extractor cannot take, so it is read by hand.
#[derive(Default)]
pub(crate) struct PutQuery {
    project: Option<String>,
    revision: Option<String>,
    /// Start schedules of workflows new to the project from this time instead of now.
    schedule_from: Option<chrono::DateTime<chrono::Utc>>,
    /// Workflows whose schedules start over (from `schedule_from` or now).
    clear_schedule: Vec<String>,
    clear_schedule_all: bool,
}

impl PutQuery {
    fn parse(raw: Option<&str>) -> Result<PutQuery, ApiError> {
        let mut q = PutQuery::default();
        for (k, v) in form_urlencoded::parse(raw.unwrap_or("").as_bytes()) {
            match &*k {
                "project" => q.project = Some(v.into_owned()),
                "revision" => q.revision = Some(v.into_owned()),
                "schedule_from" => {
                    let t = chrono::DateTime::parse_from_rfc3339(&v).map_err(|_| {
                        ApiError(
                            StatusCode::BAD_REQUEST,
                            format!("schedule_from= {v:?} is not an ISO 8601 time such as 2024-03-01T00:00:00Z"),
                        )
                    })?;
                    q.schedule_from = Some(t.with_timezone(&chrono::Utc));
                }
                "clear_schedule" => q.clear_schedule.push(v.into_owned()),
                "clear_schedule_all" => q.clear_schedule_all = v == "true",
                _ => {}
            }
        }
        Ok(q)
    }
}

/// Whether `name` may name a project or revision: printable, no `/`, at most 255 bytes.
fn check_name(what: &str, name: Option<&str>) -> Result<String, ApiError> {
    let bad = |m: &str| ApiError(StatusCode::BAD_REQUEST, format!("{what}= {m}"));
    let name = name.filter(|n| !n.is_empty()).ok_or_else(|| bad("is required"))?;
    if name.len() > 255 || name.chars().any(|c| c.is_control() || c == '/') || name.trim() != name {
        return Err(bad(&format!(
            "{name:?} is not a valid name: at most 255 bytes, no '/', control characters or surrounding spaces"
        )));
    }
    Ok(name.to_string())
}

/// `PUT /api/projects?project=&revision=` with the archive as `application/gzip`.
pub(crate) async fn put_project(
    State(c): Shared,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<RestProject>, ApiError> {
    let q = PutQuery::parse(raw.as_deref())?;
    let project = check_name("project", q.project.as_deref())?;
    let revision = check_name("revision", q.revision.as_deref())?;
    let limit = c.archive_limits.max_archive_bytes;
    let length: u64 = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| ApiError(StatusCode::LENGTH_REQUIRED, "Content-Length is required".into()))?;
    if length > limit {
        return Err(too_large(format!("{length} bytes, the server's limit is {limit} (--max-archive-size)")));
    }
    let bytes = axum::body::to_bytes(body, limit as usize + 1)
        .await
        .map_err(|e| ApiError(StatusCode::BAD_REQUEST, format!("reading the archive: {e}")))?;
    if bytes.len() as u64 != length {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            format!("Content-Length header ({length}) doesn't match the uploaded data size ({})", bytes.len()),
        ));
    }
    let limits = c.archive_limits;
    let compiled = tokio::task::spawn_blocking({
        let bytes = bytes.clone();
        move || compile(&bytes, &limits)
    })
    .await
    .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, format!("checking the archive failed: {e}")))??;
    if let Some(unknown) = q.clear_schedule.iter().find(|w| compiled.workflow(w).is_none()) {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            format!("clear_schedule= {unknown:?}: the pushed project has no such workflow; nothing was stored"),
        ));
    }
    let digest = spade_archive::digest(&bytes);
    let pushed = with_store(&c, move |s| {
        let workflows = spade_engine::workflow_definitions(&compiled);
        let pushed = s.push_revision(&NewRevision {
            project: &project,
            revision: &revision,
            archive: &bytes,
            digest: &digest,
            workflows: &workflows,
        })?;
        if pushed.created {
            spade_executor::apply_push_schedules(
                s,
                &project,
                &compiled.workflows,
                q.schedule_from,
                &q.clear_schedule,
                q.clear_schedule_all,
            )?;
        }
        Ok(pushed)
    })
    .await?;
    if pushed.created {
        tracing::info!(project = pushed.project.name, revision = pushed.revision.name, "pushed");
    }
    Ok(Json(project_rest(&pushed.project)))
}

fn too_large(message: String) -> ApiError {
    ApiError(StatusCode::PAYLOAD_TOO_LARGE, format!("the archive is too large: {message}"))
}

/// Unpacks the archive into a scratch directory and compiles every workflow of it.
fn compile(bytes: &[u8], limits: &spade_archive::Limits) -> Result<spade_dig::Project, ApiError> {
    let scratch = tempfile::tempdir()
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, format!("creating a scratch directory: {e}")))?;
    spade_archive::unpack_to(bytes, scratch.path(), limits).map_err(|e| match e {
        ArchiveError::TooLarge(m) => too_large(m),
        e => ApiError(StatusCode::BAD_REQUEST, format!("invalid project archive: {e}")),
    })?;
    spade_dig::load_project(scratch.path()).map_err(|errors| {
        ApiError(StatusCode::BAD_REQUEST, format!("the project has errors; nothing was stored:\n{errors}"))
    })
}

#[derive(Deserialize)]
pub(crate) struct ListQuery {
    name: Option<String>,
    last_id: Option<i64>,
    count: Option<usize>,
}

/// Most projects in one page of `GET /api/projects`.
const MAX_PAGE: usize = 1000;

/// `GET /api/projects[?name=&last_id=&count=]`: projects by id, a page at a time.
pub(crate) async fn list_projects(
    State(c): Shared,
    Query(q): Query<ListQuery>,
) -> Result<Json<RestProjectCollection>, ApiError> {
    let mut projects = with_store(&c, |s| Ok(s.projects()?)).await?;
    // The scheduler's own project, before its first attempt is recorded.
    if let Some(local) = &c.local
        && !projects.iter().any(|p| p.name == local.project)
    {
        projects.push(ProjectRecord { id: 0, name: local.project.clone(), created_at_ms: 0, latest: None });
    }
    projects.sort_by_key(|p| p.id);
    let count = q.count.unwrap_or(100).min(MAX_PAGE);
    let projects = projects
        .iter()
        .filter(|p| q.name.as_ref().is_none_or(|n| &p.name == n))
        .filter(|p| q.last_id.is_none_or(|last| p.id > last))
        .take(count)
        .map(project_rest)
        .collect();
    Ok(Json(RestProjectCollection { projects }))
}

#[derive(Deserialize)]
pub(crate) struct NameQuery {
    name: Option<String>,
}

/// `GET /api/project?name=`: one project by name.
pub(crate) async fn project_by_name(
    State(c): Shared,
    Query(q): Query<NameQuery>,
) -> Result<Json<RestProject>, ApiError> {
    let name = q.name.ok_or_else(|| ApiError(StatusCode::BAD_REQUEST, "name= is required".into()))?;
    let found = with_store(&c, {
        let name = name.clone();
        move |s| Ok(s.project_named(&name)?)
    })
    .await?;
    found
        .map(|p| Json(project_rest(&p)))
        .ok_or_else(|| ApiError(StatusCode::NOT_FOUND, format!("no project named {name:?}")))
}

pub(crate) async fn project(State(c): Shared, Path(id): Path<String>) -> Result<Json<RestProject>, ApiError> {
    let id = parse_id(&id, "project")?;
    Ok(Json(project_rest(&with_store(&c, move |s| Ok(s.project(id)?)).await?)))
}

pub(crate) async fn revisions(
    State(c): Shared,
    Path(id): Path<String>,
) -> Result<Json<RestRevisionCollection>, ApiError> {
    let id = parse_id(&id, "project")?;
    let list = with_store(&c, move |s| Ok(s.revisions(id)?)).await?;
    Ok(Json(RestRevisionCollection { revisions: list.iter().map(revision_rest).collect() }))
}

#[derive(Deserialize)]
pub(crate) struct RevisionQuery {
    revision: Option<String>,
}

/// `GET /api/projects/{id}/workflows[?revision=]`: the workflows of a revision (the latest by default).
pub(crate) async fn workflows(
    State(c): Shared,
    Path(id): Path<String>,
    Query(q): Query<RevisionQuery>,
) -> Result<Json<RestWorkflowDefinitionCollection>, ApiError> {
    let id = parse_id(&id, "project")?;
    let (project, revision, defs) = with_store(&c, move |s| {
        let project = s.project(id)?;
        let revision = s.revision(id, q.revision.as_deref())?;
        let defs = s.workflow_definitions(revision.id)?;
        Ok((project, revision, defs))
    })
    .await?;
    let project_ref = IdAndName { id: project.id.to_string(), name: project.name.clone() };
    let workflows = defs
        .into_iter()
        .map(|d| RestWorkflowDefinition {
            name: d.name,
            project: project_ref.clone(),
            revision: revision.name.clone(),
            timezone: d.timezone,
            config: d.config,
        })
        .collect();
    Ok(Json(RestWorkflowDefinitionCollection { workflows }))
}

/// `GET /api/projects/{id}/archive[?revision=]`: the archive, byte for byte as pushed.
pub(crate) async fn archive(
    State(c): Shared,
    Path(id): Path<String>,
    Query(q): Query<RevisionQuery>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id, "project")?;
    let (revision, bytes) = with_store(&c, move |s| {
        let revision = s.revision(id, q.revision.as_deref())?;
        let digest = revision.archive_digest.clone().ok_or_else(|| {
            ApiError(
                StatusCode::NOT_FOUND,
                format!("revision {} was recorded by a local run and has no archive", revision.name),
            )
        })?;
        let bytes = s.archive(&digest)?;
        Ok((revision, bytes))
    })
    .await?;
    let disposition = format!("attachment; filename=\"{}.tar.gz\"", revision.name.replace(['"', '\\'], "_"));
    Ok(([(header::CONTENT_TYPE, "application/gzip".to_string()), (header::CONTENT_DISPOSITION, disposition)], bytes)
        .into_response())
}
