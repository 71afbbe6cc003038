//! The REST API's resources, with Digdag's field names (`RestProject`, `RestRevision`,
//! `RestWorkflowDefinition`): the server serializes them and clients read them, so the two
//! cannot drift apart. spade's additions are marked.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// A project and its latest revision (Digdag's `RestProject`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RestProject {
    pub id: String,
    pub name: String,
    /// The latest revision's name (empty when it has none).
    pub revision: String,
    pub created_at: String,
    pub updated_at: String,
    pub deleted_at: Option<String>,
    /// Where the archive is kept: `db` (the state database).
    pub archive_type: Option<String>,
    /// spade: the latest revision archive's sha256.
    #[serde(default)]
    pub archive_sha256: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RestProjectCollection {
    pub projects: Vec<RestProject>,
}

/// A revision of a project (Digdag's `RestRevision`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RestRevision {
    pub revision: String,
    pub created_at: String,
    pub archive_type: Option<String>,
    #[serde(default)]
    pub user_info: Map<String, Value>,
    /// spade: the archive's sha256 and size in bytes.
    #[serde(default)]
    pub archive_sha256: Option<String>,
    #[serde(default)]
    pub archive_size: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RestRevisionCollection {
    pub revisions: Vec<RestRevision>,
}

/// A resource named by id and name (Digdag's `IdAndName`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct IdAndName {
    pub id: String,
    pub name: String,
}

/// A workflow of a revision (Digdag's `RestWorkflowDefinition`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RestWorkflowDefinition {
    pub name: String,
    pub project: IdAndName,
    pub revision: String,
    pub timezone: String,
    pub config: Map<String, Value>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RestWorkflowDefinitionCollection {
    pub workflows: Vec<RestWorkflowDefinition>,
}

/// What the server answers when a request fails.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RestError {
    pub message: String,
    #[serde(default)]
    pub status: u16,
}

/// Starting an attempt of a pushed project (`PUT /api/attempts` with `projectId`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RestAttemptRequest {
    pub project_id: Option<String>,
    pub workflow_name: Option<String>,
    /// Digdag's field; here a workflow's id is its name.
    pub workflow_id: Option<String>,
    /// ISO 8601, or a date; none: now.
    pub session_time: Option<String>,
    #[serde(default)]
    pub params: Map<String, Value>,
    /// Digdag's retry name (`retryAttemptName`).
    #[serde(default)]
    pub retry_attempt_name: Option<String>,
}

/// The agent protocol (`/api/agent/...`): a remote agent speaks only this, never to the
/// database.
pub mod agent {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Serialize};
    use spade_api::remote::{CallResult, QueuedCall};

    /// `POST /api/agent/claim`: up to `slots` calls for an agent with `tags`.
    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
    pub struct ClaimRequest {
        pub agent: String,
        #[serde(default)]
        pub tags: Vec<String>,
        pub slots: usize,
        /// When nothing is queued, wait up to this long for a call before answering (a long
        /// poll: the agent hears of new work at once without asking again and again).
        #[serde(default)]
        pub wait_ms: u64,
    }

    /// A claimed call: give `id` and `token` back with heartbeats and the result.
    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
    pub struct ClaimedCall {
        pub id: i64,
        pub token: i64,
        pub attempt_id: i64,
        pub task_name: String,
        /// The revision archive its workspace is extracted from (`GET /api/archives/{digest}`).
        pub archive_digest: Option<String>,
        pub call: QueuedCall,
        /// Only the secrets this call may read.
        #[serde(default)]
        pub secrets: BTreeMap<String, String>,
        /// How often to send heartbeats, in milliseconds (a third of the lease).
        pub heartbeat_ms: u64,
    }

    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
    pub struct ClaimResponse {
        pub calls: Vec<ClaimedCall>,
    }

    #[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
    pub struct HeldCall {
        pub id: i64,
        pub token: i64,
    }

    /// `POST /api/agent/heartbeat`: extend the leases of the calls held.
    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
    pub struct HeartbeatRequest {
        pub agent: String,
        pub held: Vec<HeldCall>,
    }

    #[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
    pub struct HeldState {
        pub id: i64,
        /// The lease ran out and the call went elsewhere: stop it, its result will be refused.
        pub lost: bool,
        /// The attempt was killed: stop the call.
        pub cancel: bool,
    }

    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
    pub struct HeartbeatResponse {
        pub held: Vec<HeldState>,
    }

    /// `POST /api/agent/complete`: the result of a held call.
    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
    pub struct CompleteRequest {
        pub agent: String,
        pub id: i64,
        pub token: i64,
        pub result: CallResult,
    }

    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
    pub struct CompleteResponse {
        /// False: the claim was no longer this agent's (lease lost), the result is dropped.
        pub accepted: bool,
    }
}

/// A workflow named in another resource.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NameRef {
    pub name: String,
}

/// Tasks of an attempt in each state (spade's addition to Digdag's attempt).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestTaskCounts {
    pub running: u64,
    pub polling: u64,
    pub success: u64,
    pub error: u64,
    pub canceled: u64,
}

/// An attempt of a session (Digdag's `RestSessionAttempt`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RestSessionAttempt {
    pub id: String,
    pub project: IdAndName,
    pub workflow: NameRef,
    pub session_id: String,
    pub session_uuid: String,
    pub session_time: String,
    pub timezone: String,
    pub retry_attempt_name: Option<String>,
    pub done: bool,
    pub success: bool,
    /// spade: `running`, `success`, `error` or `killed`.
    pub status: String,
    pub cancel_requested: bool,
    pub params: Map<String, Value>,
    pub created_at: String,
    pub finished_at: Option<String>,
    #[serde(default)]
    pub task_counts: RestTaskCounts,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RestSessionAttemptCollection {
    pub attempts: Vec<RestSessionAttempt>,
}

/// The latest attempt of a session, as a session shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RestSessionLastAttempt {
    pub id: String,
    pub status: Option<String>,
    pub done: bool,
    pub success: bool,
    pub created_at: Option<String>,
}

/// A session (Digdag's `RestSession`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RestSession {
    pub id: String,
    pub project: IdAndName,
    pub workflow: NameRef,
    pub session_uuid: String,
    pub session_time: String,
    /// spade: how many attempts the session has.
    pub attempt_count: u64,
    pub last_attempt: Option<RestSessionLastAttempt>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RestSessionCollection {
    pub sessions: Vec<RestSession>,
}

/// Why a task failed (`{}` when it did not).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RestTaskError {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// What a task used (spade's addition).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RestTaskUsage {
    pub call_seconds: f64,
    pub cpu_seconds: f64,
    pub peak_memory_bytes: u64,
}

/// A task of an attempt (Digdag's `RestTask`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RestTask {
    pub id: String,
    pub full_name: String,
    pub state: String,
    pub retry_count: u32,
    pub is_group: bool,
    pub store_params: Map<String, Value>,
    pub export_params: Map<String, Value>,
    pub error: RestTaskError,
    pub started_at: Option<String>,
    pub updated_at: String,
    pub usage: Option<RestTaskUsage>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RestTaskCollection {
    pub tasks: Vec<RestTask>,
}

/// One task log line (spade serves an attempt's lines directly, not Digdag's log files).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RestLogLine {
    pub task_name: String,
    pub at: Option<String>,
    pub level: String,
    pub message: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RestLogCollection {
    pub logs: Vec<RestLogLine>,
}
