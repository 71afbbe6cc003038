//! A blocking client of spade's REST API (what `spade push`, `download` and `projects`
//! use), and the API's resource types ([`rest`]), which the server serializes.

pub mod rest;

use std::time::Duration;

use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use rest::{RestError, RestProject, RestProjectCollection, RestRevisionCollection, RestWorkflowDefinitionCollection};

/// Where `-e/--endpoint` points when not given (Digdag's default port).
pub const DEFAULT_ENDPOINT: &str = "http://127.0.0.1:65432";

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server answered with an error status.
    #[error("{endpoint}: {message} (HTTP {status})")]
    Api { endpoint: String, status: u16, message: String },
    #[error("{endpoint}: {message}; is `spade server` running there? (-e/--endpoint)")]
    Transport { endpoint: String, message: String },
    #[error("{endpoint}: the answer is not what the API returns: {message}")]
    Decode { endpoint: String, message: String },
}

pub type Result<T> = std::result::Result<T, ClientError>;

/// A pushed revision to upload.
#[derive(Clone, Debug)]
pub struct Push<'a> {
    pub project: &'a str,
    pub revision: &'a str,
    /// The project archive (tar.gz).
    pub archive: &'a [u8],
    /// Schedules of workflows new to the project start from this time (ISO 8601).
    pub schedule_from: Option<&'a str>,
    /// Workflows whose schedules start over.
    pub clear_schedule: &'a [String],
    pub clear_schedule_all: bool,
}

/// A client of one server.
pub struct Client {
    endpoint: String,
    agent: ureq::Agent,
}

/// Percent-encodes a query or path value.
fn enc(s: &str) -> String {
    utf8_percent_encode(s, NON_ALPHANUMERIC).to_string()
}

/// Largest answer read into memory (an archive download is the largest).
const MAX_RESPONSE: u64 = 1 << 30;

impl Client {
    pub fn new(endpoint: &str) -> Client {
        let config = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(300)))
            .http_status_as_error(false)
            .user_agent(concat!("spade/", env!("CARGO_PKG_VERSION")))
            .build();
        Client { endpoint: endpoint.trim_end_matches('/').to_string(), agent: ureq::Agent::new_with_config(config) }
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    fn transport(&self, e: ureq::Error) -> ClientError {
        ClientError::Transport { endpoint: self.endpoint.clone(), message: e.to_string() }
    }

    /// The body of a successful answer, or the server's error.
    fn body(&self, mut response: ureq::http::Response<ureq::Body>) -> Result<Vec<u8>> {
        let status = response.status().as_u16();
        let bytes =
            response.body_mut().with_config().limit(MAX_RESPONSE).read_to_vec().map_err(|e| self.transport(e))?;
        if (200..300).contains(&status) {
            return Ok(bytes);
        }
        let message = serde_json::from_slice::<RestError>(&bytes)
            .map(|e| e.message)
            .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).chars().take(500).collect());
        Err(ClientError::Api { endpoint: self.endpoint.clone(), status, message })
    }

    fn json<T: serde::de::DeserializeOwned>(&self, bytes: &[u8]) -> Result<T> {
        serde_json::from_slice(bytes)
            .map_err(|e| ClientError::Decode { endpoint: self.endpoint.clone(), message: e.to_string() })
    }

    fn get(&self, path: &str) -> Result<Vec<u8>> {
        let response = self.agent.get(format!("{}{path}", self.endpoint)).call().map_err(|e| self.transport(e))?;
        self.body(response)
    }

    /// `PUT /api/projects?project=&revision=`: upload a revision.
    pub fn push(&self, push: &Push<'_>) -> Result<RestProject> {
        let mut url =
            format!("{}/api/projects?project={}&revision={}", self.endpoint, enc(push.project), enc(push.revision));
        if let Some(from) = push.schedule_from {
            url.push_str(&format!("&schedule_from={}", enc(from)));
        }
        for wf in push.clear_schedule {
            url.push_str(&format!("&clear_schedule={}", enc(wf)));
        }
        if push.clear_schedule_all {
            url.push_str("&clear_schedule_all=true");
        }
        let response = self
            .agent
            .put(url)
            .header("Content-Type", "application/gzip")
            // The server answers at once when it refuses the archive (too large): without
            // this, it would close the connection while the client still sends.
            .header("Expect", "100-continue")
            .send(push.archive)
            .map_err(|e| self.transport(e))?;
        let bytes = self.body(response)?;
        self.json(&bytes)
    }

    pub fn projects(&self) -> Result<Vec<RestProject>> {
        let bytes = self.get("/api/projects")?;
        Ok(self.json::<RestProjectCollection>(&bytes)?.projects)
    }

    /// `GET /api/project?name=`: a project by name.
    pub fn project(&self, name: &str) -> Result<RestProject> {
        let bytes = self.get(&format!("/api/project?name={}", enc(name)))?;
        self.json(&bytes)
    }

    pub fn revisions(&self, project_id: &str) -> Result<RestRevisionCollection> {
        let bytes = self.get(&format!("/api/projects/{}/revisions", enc(project_id)))?;
        self.json(&bytes)
    }

    pub fn workflows(&self, project_id: &str, revision: Option<&str>) -> Result<RestWorkflowDefinitionCollection> {
        let query = revision.map(|r| format!("?revision={}", enc(r))).unwrap_or_default();
        let bytes = self.get(&format!("/api/projects/{}/workflows{query}", enc(project_id)))?;
        self.json(&bytes)
    }

    fn post<T: serde::Serialize, R: serde::de::DeserializeOwned>(&self, path: &str, body: &T) -> Result<R> {
        let body = serde_json::to_vec(body).expect("API types serialize");
        let response = self
            .agent
            .post(format!("{}{path}", self.endpoint))
            .header("Content-Type", "application/json")
            .send(&body[..])
            .map_err(|e| self.transport(e))?;
        let bytes = self.body(response)?;
        self.json(&bytes)
    }

    /// `PUT /api/attempts`: start an attempt; the attempt as the server answers it.
    pub fn start(&self, request: &rest::RestAttemptRequest) -> Result<rest::RestSessionAttempt> {
        let body = serde_json::to_vec(request).expect("API types serialize");
        let response = self
            .agent
            .put(format!("{}/api/attempts", self.endpoint))
            .header("Content-Type", "application/json")
            .send(&body[..])
            .map_err(|e| self.transport(e))?;
        let bytes = self.body(response)?;
        self.json(&bytes)
    }

    /// `GET /api/attempts/{id}`.
    pub fn attempt(&self, id: &str) -> Result<rest::RestSessionAttempt> {
        let bytes = self.get(&format!("/api/attempts/{}", enc(id)))?;
        self.json(&bytes)
    }

    /// `GET /api/attempts[?session_id=]`, newest first.
    pub fn attempts(&self, session_id: Option<i64>) -> Result<Vec<rest::RestSessionAttempt>> {
        let query = session_id.map(|id| format!("?session_id={id}")).unwrap_or_default();
        let bytes = self.get(&format!("/api/attempts{query}"))?;
        Ok(self.json::<rest::RestSessionAttemptCollection>(&bytes)?.attempts)
    }

    /// `GET /api/sessions[?workflow=]`, newest first.
    pub fn sessions(&self, workflow: Option<&str>) -> Result<Vec<rest::RestSession>> {
        let query = workflow.map(|w| format!("?workflow={}", enc(w))).unwrap_or_default();
        let bytes = self.get(&format!("/api/sessions{query}"))?;
        Ok(self.json::<rest::RestSessionCollection>(&bytes)?.sessions)
    }

    /// `GET /api/attempts/{id}/tasks`.
    pub fn tasks(&self, attempt_id: i64) -> Result<Vec<rest::RestTask>> {
        let bytes = self.get(&format!("/api/attempts/{attempt_id}/tasks"))?;
        Ok(self.json::<rest::RestTaskCollection>(&bytes)?.tasks)
    }

    /// `GET /api/attempts/{id}/logs[?task=prefix]`.
    pub fn logs(&self, attempt_id: i64, task_prefix: &str) -> Result<Vec<rest::RestLogLine>> {
        let query = if task_prefix.is_empty() { String::new() } else { format!("?task={}", enc(task_prefix)) };
        let bytes = self.get(&format!("/api/attempts/{attempt_id}/logs{query}"))?;
        Ok(self.json::<rest::RestLogCollection>(&bytes)?.logs)
    }

    /// `POST /api/attempts/{id}/kill`.
    pub fn kill(&self, attempt_id: i64) -> Result<()> {
        let response = self
            .agent
            .post(format!("{}/api/attempts/{attempt_id}/kill", self.endpoint))
            .send_empty()
            .map_err(|e| self.transport(e))?;
        self.body(response).map(|_| ())
    }

    pub fn claim(&self, request: &rest::agent::ClaimRequest) -> Result<rest::agent::ClaimResponse> {
        self.post("/api/agent/claim", request)
    }

    pub fn heartbeat(&self, request: &rest::agent::HeartbeatRequest) -> Result<rest::agent::HeartbeatResponse> {
        self.post("/api/agent/heartbeat", request)
    }

    pub fn complete(&self, request: &rest::agent::CompleteRequest) -> Result<rest::agent::CompleteResponse> {
        self.post("/api/agent/complete", request)
    }

    /// `GET /api/archives/{digest}`: an archive by content address.
    pub fn archive_by_digest(&self, digest: &str) -> Result<Vec<u8>> {
        self.get(&format!("/api/archives/{}", enc(digest)))
    }

    /// `GET /api/projects/{id}/archive[?revision=]`: a revision's archive (the latest one
    /// by default), byte for byte as pushed.
    pub fn archive(&self, project_id: &str, revision: Option<&str>) -> Result<Vec<u8>> {
        let query = revision.map(|r| format!("?revision={}", enc(r))).unwrap_or_default();
        self.get(&format!("/api/projects/{}/archive{query}", enc(project_id)))
    }
}
