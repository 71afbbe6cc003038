//! The agent protocol (`/api/agent/...`) and starting attempts of pushed projects.
//!
//! Agents speak only HTTP to the server: they claim operator calls from the task queue
//! (never more than their free slots), send heartbeats that keep their leases, and report
//! results, which count only with the claim's current fencing token. They fetch revision
//! archives by content address. They never see the database or anything of another call.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use spade_api::remote::QueuedCall;
use spade_client::rest::agent::{
    ClaimRequest, ClaimResponse, ClaimedCall, CompleteRequest, CompleteResponse, HeartbeatRequest, HeartbeatResponse,
    HeldState,
};
use spade_executor::{Executor, StartAttempt};
use spade_store::{Held, queue::valid_tag};

use crate::{ApiError, Shared, attempt_json, with_store};

/// Most calls one claim may take.
const MAX_SLOTS: usize = 256;

/// Longest a claim waits for work.
const MAX_WAIT_MS: u64 = 30_000;

fn executor(c: &crate::ApiConfig) -> Result<Arc<Executor>, ApiError> {
    c.executor.clone().ok_or_else(|| {
        ApiError(StatusCode::NOT_IMPLEMENTED, "this server runs no executor (it serves a local project)".into())
    })
}

fn bad(message: String) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, message)
}

fn check_agent(name: &str) -> Result<(), ApiError> {
    if name.is_empty() || name.len() > 200 || name.chars().any(char::is_control) {
        return Err(bad(format!("agent {name:?}: give a printable name of at most 200 bytes")));
    }
    Ok(())
}

pub(crate) async fn claim(State(c): Shared, Json(req): Json<ClaimRequest>) -> Result<Json<ClaimResponse>, ApiError> {
    check_agent(&req.agent)?;
    if let Some(t) = req.tags.iter().find(|t| !valid_tag(t)) {
        return Err(bad(format!("tag {t:?}: tags are letters, digits, '-' and '.'")));
    }
    let executor = executor(&c)?;
    let lease = executor.config().lease;
    let slots = req.slots.min(MAX_SLOTS);
    let wait = std::time::Duration::from_millis(req.wait_ms.min(MAX_WAIT_MS));
    let deadline = tokio::time::Instant::now() + wait;
    let claimed = loop {
        // Listening before looking: a call queued between the two is not missed.
        let queued = executor.enqueued().notified();
        tokio::pin!(queued);
        queued.as_mut().enable();
        let (agent, tags) = (req.agent.clone(), req.tags.clone());
        let claimed = with_store(&c, move |s| Ok(s.claim(&agent, &tags, slots, lease)?)).await?;
        if !claimed.is_empty() || tokio::time::Instant::now() >= deadline {
            break claimed;
        }
        // Calls queued by another server process are found when the wait runs out.
        let _ = tokio::time::timeout_at(deadline, queued).await;
    };
    let heartbeat_ms = (lease.as_millis() / 3).max(100) as u64;
    let mut calls = Vec::with_capacity(claimed.len());
    for row in claimed {
        let call: QueuedCall = serde_json::from_str(&row.request).map_err(|e| {
            ApiError(StatusCode::INTERNAL_SERVER_ERROR, format!("queued call {} is malformed: {e}", row.id))
        })?;
        calls.push(ClaimedCall {
            id: row.id,
            token: row.token,
            attempt_id: row.attempt_id,
            task_name: row.task_name,
            archive_digest: row.archive_digest,
            call,
            // Secrets kept by the server come with the tenants work; until then none travel.
            secrets: Default::default(),
            heartbeat_ms,
        });
    }
    Ok(Json(ClaimResponse { calls }))
}

pub(crate) async fn heartbeat(
    State(c): Shared,
    Json(req): Json<HeartbeatRequest>,
) -> Result<Json<HeartbeatResponse>, ApiError> {
    check_agent(&req.agent)?;
    let lease = executor(&c)?.config().lease;
    let pairs: Vec<(i64, i64)> = req.held.iter().map(|h| (h.id, h.token)).collect();
    let states = with_store(&c, {
        let pairs = pairs.clone();
        move |s| Ok(s.heartbeat(&req.agent, &pairs, lease)?)
    })
    .await?;
    let held = pairs
        .iter()
        .zip(states)
        .map(|((id, _), state)| match state {
            Held::Kept { cancel_requested } => HeldState { id: *id, lost: false, cancel: cancel_requested },
            Held::Lost => HeldState { id: *id, lost: true, cancel: true },
        })
        .collect();
    Ok(Json(HeartbeatResponse { held }))
}

pub(crate) async fn complete(
    State(c): Shared,
    Json(req): Json<CompleteRequest>,
) -> Result<Json<CompleteResponse>, ApiError> {
    check_agent(&req.agent)?;
    let executor = executor(&c)?;
    let result = serde_json::to_string(&req.result).expect("plain data serializes");
    let (id, token) = (req.id, req.token);
    let accepted = with_store(&c, move |s| Ok(s.complete(id, token, &result)?)).await?;
    if accepted {
        executor.notify_completed(id);
    } else {
        tracing::info!(call = id, agent = req.agent, "refused a result from an agent that no longer holds the call");
    }
    Ok(Json(CompleteResponse { accepted }))
}

/// `GET /api/archives/{digest}`: a revision archive by content address (agents cache them).
pub(crate) async fn archive(State(c): Shared, Path(digest): Path<String>) -> Result<Response, ApiError> {
    if digest.len() != 64 || !digest.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(bad(format!("{digest:?} is not a sha256 digest")));
    }
    let bytes = with_store(&c, move |s| Ok(s.archive(&digest)?)).await?;
    Ok(([(header::CONTENT_TYPE, "application/gzip")], bytes).into_response())
}

/// `PUT /api/attempts` with `projectId`: an attempt of the project's latest revision.
pub(crate) async fn start_pushed(c: &crate::ApiConfig, start: StartAttempt) -> Response {
    let executor = match executor(c) {
        Ok(e) => e,
        Err(e) => return e.into_response(),
    };
    let started = tokio::task::spawn_blocking(move || executor.start(&start)).await;
    let attempt = match started {
        Ok(Ok(a)) => a,
        Ok(Err(spade_executor::ExecutorError::Store(e))) => return ApiError::from(e).into_response(),
        Ok(Err(e)) => return bad(e.to_string()).into_response(),
        Err(e) => return ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    };
    let id = attempt.attempt_id;
    match with_store(c, move |s| Ok(attempt_json(&s.attempt_info(id)?, false))).await {
        Ok(json) => Json(json).into_response(),
        Err(e) => e.into_response(),
    }
}
