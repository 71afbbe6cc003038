//! A client of Treasure Data's REST API (v3, `Authorization: TD1 <apikey>`), over the
//! host's `http` capability: one blocking request per method, typed answers, and errors
//! that say whether trying again later can help ([`ApiError::deterministic`], Digdag's
//! `isDeterministicClientException`: 4xx other than 408/429 never succeed on retry).
//!
//! Job results are read in TD's `json` format (one JSON array per row, one row per line).

use std::fmt;
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;
use spade_sdk::http;

/// Largest response body read (a job result for `download_file`, a table list).
pub const MAX_RESPONSE_BYTES: usize = 64 << 20;
const TIMEOUT: Duration = Duration::from_secs(60);

/// Where and as whom to call the API.
#[derive(Clone, Debug, PartialEq)]
pub struct Client {
    /// `https://api.treasuredata.com`.
    pub base: String,
    pub apikey: String,
}

#[derive(Clone, Debug, PartialEq)]
pub enum ApiError {
    /// The API answered with an error status.
    Status {
        what: String,
        status: u16,
        message: String,
        /// A 409 on job issue with a domain key names the job that key already started.
        conflicts_with: Option<String>,
    },
    /// No answer (refused by the grant, timeout, connection failure, too large).
    Transport { what: String, error: http::Error },
    /// An answer that is not what the API documents.
    Invalid { what: String, reason: String },
}

impl ApiError {
    /// Whether the same request can never succeed (so the task fails now instead of
    /// polling again).
    pub fn deterministic(&self) -> bool {
        match self {
            ApiError::Status { status, .. } => (400..500).contains(status) && *status != 408 && *status != 429,
            ApiError::Transport { error, .. } => !error.is_transient(),
            ApiError::Invalid { .. } => false,
        }
    }

    pub fn status(&self) -> Option<u16> {
        match self {
            ApiError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ApiError::Status { what, status, message, .. } => {
                write!(f, "{what}: Treasure Data answered {status}")?;
                if !message.is_empty() {
                    write!(f, ": {message}")?;
                }
                if *status == 401 || *status == 403 {
                    write!(f, " (check the td.apikey secret)")?;
                }
                Ok(())
            }
            ApiError::Transport { what, error } => write!(f, "{what}: {error}"),
            ApiError::Invalid { what, reason } => write!(f, "{what}: unexpected answer from Treasure Data: {reason}"),
        }
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

/// `GET /v3/job/status/:id`.
#[derive(Clone, Debug, Deserialize)]
pub struct JobStatus {
    pub status: String,
}

impl JobStatus {
    /// TD's finished states are `success`, `error` and `killed`.
    pub fn finished(&self) -> bool {
        matches!(self.status.as_str(), "success" | "error" | "killed")
    }
}

/// `GET /v3/job/show/:id` (the fields the operators read).
#[derive(Clone, Debug, Default, Deserialize)]
pub struct JobInfo {
    #[serde(default)]
    pub status: String,
    /// `[["name","type"], ...]`, sent as a JSON string (or, by some servers, an array).
    #[serde(default)]
    pub hive_result_schema: Option<Value>,
    #[serde(default)]
    pub num_records: Option<i64>,
    #[serde(default)]
    pub debug: Option<JobDebug>,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct JobDebug {
    #[serde(default)]
    pub cmdout: Option<String>,
    #[serde(default)]
    pub stderr: Option<String>,
}

impl JobInfo {
    /// The result's column names, from `hive_result_schema`.
    pub fn column_names(&self) -> Result<Vec<String>, String> {
        let schema = match &self.hive_result_schema {
            None | Some(Value::Null) => return Ok(Vec::new()),
            Some(Value::String(s)) if s.trim().is_empty() => return Ok(Vec::new()),
            Some(Value::String(s)) => {
                serde_json::from_str::<Value>(s).map_err(|e| format!("hive_result_schema is not JSON: {e}"))?
            }
            Some(other) => other.clone(),
        };
        let Value::Array(columns) = schema else {
            return Err(format!("hive_result_schema is not a list: {schema}"));
        };
        columns
            .iter()
            .map(|c| match c.get(0) {
                Some(Value::String(name)) => Ok(name.clone()),
                _ => Err(format!("unexpected hive_result_schema entry {c}")),
            })
            .collect()
    }

    /// Digdag's failure message: the job's command output and its standard error.
    pub fn failure_output(&self) -> String {
        let debug = self.debug.clone().unwrap_or_default();
        format!("{}\n{}", debug.cmdout.unwrap_or_default(), debug.stderr.unwrap_or_default())
    }
}

/// A job to issue (`POST /v3/job/issue/:type/:database`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct JobRequest {
    /// `presto` or `hive`.
    pub engine: String,
    pub database: String,
    pub query: String,
    pub priority: i64,
    pub retry_limit: i64,
    pub result_url: Option<String>,
    pub pool_name: Option<String>,
    pub scheduled_time: Option<i64>,
    pub domain_key: String,
    pub result_connection_id: Option<i64>,
    pub result_connection_settings: Option<String>,
    pub engine_version: Option<String>,
}

/// A path segment (database, table, saved query names).
pub fn path_encode(s: &str) -> String {
    spade_sdk::encode::form_value(s).replace('+', "%20")
}

impl Client {
    fn send(&self, what: &str, req: http::Request) -> ApiResult<http::Response> {
        let req = req
            .header("Authorization", format!("TD1 {}", self.apikey))
            .header("Accept", "application/json")
            .timeout(TIMEOUT)
            .max_response_bytes(MAX_RESPONSE_BYTES);
        let resp = http::send(&req).map_err(|error| ApiError::Transport { what: what.to_string(), error })?;
        if (200..300).contains(&resp.status) {
            return Ok(resp);
        }
        // TD's errors are `{"error": ..., "message": ..., "text": ..., "details": {...}}`.
        let body: Value = serde_json::from_slice(&resp.body).unwrap_or(Value::Null);
        let text = |k: &str| body.get(k).and_then(Value::as_str).map(str::to_string);
        let message = text("message").or_else(|| text("error")).or_else(|| text("text")).unwrap_or_else(|| {
            let t = resp.text();
            t.chars().take(500).collect()
        });
        let conflicts_with = body.pointer("/details/conflicts_with").and_then(|v| match v {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        });
        Err(ApiError::Status { what: what.to_string(), status: resp.status, message, conflicts_with })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn json<T: for<'de> Deserialize<'de>>(what: &str, resp: &http::Response) -> ApiResult<T> {
        serde_json::from_slice(&resp.body)
            .map_err(|e| ApiError::Invalid { what: what.to_string(), reason: format!("{e} in {}", resp.text()) })
    }

    fn get_json<T: for<'de> Deserialize<'de>>(&self, what: &str, path: &str) -> ApiResult<T> {
        let resp = self.send(what, http::Request::get(self.url(path)))?;
        Self::json(what, &resp)
    }

    fn post_form(&self, what: &str, path: &str, form: &[(&str, String)]) -> ApiResult<http::Response> {
        let body = spade_sdk::encode::form(form.iter().map(|(k, v)| (*k, v.as_str())));
        let req = http::Request::new("POST", self.url(path))
            .header("Content-Type", "application/x-www-form-urlencoded")
            .body(body.into_bytes());
        self.send(what, req)
    }

    /// The `job_id` of a job-starting answer.
    fn job_id(what: &str, resp: &http::Response) -> ApiResult<String> {
        let body: Value = Self::json(what, resp)?;
        match body.get("job_id").or_else(|| body.get("id")) {
            Some(Value::String(s)) => Ok(s.clone()),
            Some(Value::Number(n)) => Ok(n.to_string()),
            _ => Err(ApiError::Invalid { what: what.to_string(), reason: format!("no job_id in {body}") }),
        }
    }

    /// Issues a query job. A domain key already used answers 409 with the job it started:
    /// that job is the answer, so a call that is repeated never starts a second job.
    pub fn issue_job(&self, req: &JobRequest) -> ApiResult<String> {
        let what = format!("issuing a {} job on database {}", req.engine, req.database);
        let mut form = vec![
            ("query", req.query.clone()),
            ("priority", req.priority.to_string()),
            ("retry_limit", req.retry_limit.to_string()),
            ("domain_key", req.domain_key.clone()),
        ];
        let optional = [
            ("result", req.result_url.clone()),
            ("pool_name", req.pool_name.clone()),
            ("scheduled_time", req.scheduled_time.map(|t| t.to_string())),
            ("result_connection_id", req.result_connection_id.map(|t| t.to_string())),
            ("result_connection_settings", req.result_connection_settings.clone()),
            ("engine_version", req.engine_version.clone()),
        ];
        form.extend(optional.into_iter().filter_map(|(k, v)| v.map(|v| (k, v))));
        let path = format!("/v3/job/issue/{}/{}", path_encode(&req.engine), path_encode(&req.database));
        self.started(&what, self.post_form(&what, &path, &form))
    }

    /// A job id from a job-starting answer, or from the 409 its domain key caused.
    fn started(&self, what: &str, resp: ApiResult<http::Response>) -> ApiResult<String> {
        match resp {
            Ok(resp) => Self::job_id(what, &resp),
            Err(ApiError::Status { status: 409, conflicts_with: Some(id), .. }) => Ok(id),
            Err(e) => Err(e),
        }
    }

    pub fn job_status(&self, job_id: &str) -> ApiResult<JobStatus> {
        self.get_json(
            &format!("reading the status of job {job_id}"),
            &format!("/v3/job/status/{}", path_encode(job_id)),
        )
    }

    pub fn job_info(&self, job_id: &str) -> ApiResult<JobInfo> {
        self.get_json(&format!("reading job {job_id}"), &format!("/v3/job/show/{}", path_encode(job_id)))
    }

    /// The job's result rows, at most `max_rows` (all when `None`). A job without a
    /// result (INSERT, CREATE TABLE) answers 404: no rows.
    pub fn job_result(&self, job_id: &str, max_rows: Option<usize>) -> ApiResult<Vec<Vec<Value>>> {
        let what = format!("downloading the result of job {job_id}");
        let path = format!("/v3/job/result/{}?format=json", path_encode(job_id));
        let resp = match self.send(&what, http::Request::get(self.url(&path))) {
            Err(ApiError::Status { status: 404, .. }) => return Ok(Vec::new()),
            other => other?,
        };
        let text = String::from_utf8(resp.body)
            .map_err(|_| ApiError::Invalid { what: what.clone(), reason: "the result is not UTF-8".into() })?;
        let mut rows = Vec::new();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            if max_rows.is_some_and(|m| rows.len() >= m) {
                break;
            }
            match serde_json::from_str::<Value>(line) {
                Ok(Value::Array(row)) => rows.push(row),
                Ok(other) => {
                    return Err(ApiError::Invalid { what, reason: format!("a result row is not a list: {other}") });
                }
                Err(e) => return Err(ApiError::Invalid { what, reason: format!("a result row is not JSON: {e}") }),
            }
        }
        Ok(rows)
    }

    /// Starts a bulk load job with an Embulk-style `config` into `db.table`
    /// (`POST /v3/job/issue/bulkload/:database`).
    pub fn issue_bulk_load(&self, db: &str, table: &str, config: &str, domain_key: &str) -> ApiResult<String> {
        let what = format!("starting a bulk load into {db}.{table}");
        let form = [
            ("table", table.to_string()),
            ("config", config.to_string()),
            ("query", String::new()),
            ("domain_key", domain_key.to_string()),
        ];
        let path = format!("/v3/job/issue/bulkload/{}", path_encode(db));
        self.started(&what, self.post_form(&what, &path, &form))
    }

    /// Runs the saved data connector session `name` (`POST /v3/bulk_loads/:name/jobs`).
    pub fn start_bulk_load_session(&self, name: &str, scheduled_time: i64, domain_key: &str) -> ApiResult<String> {
        let what = format!("starting bulk load session {name}");
        let body = serde_json::json!({ "scheduled_time": scheduled_time, "domain_key": domain_key }).to_string();
        let req = http::Request::new("POST", self.url(&format!("/v3/bulk_loads/{}/jobs", path_encode(name))))
            .header("Content-Type", "application/json")
            .body(body.into_bytes());
        self.started(&what, self.send(&what, req))
    }

    /// `POST /v3/job/kill/:id`.
    pub fn kill_job(&self, job_id: &str) -> ApiResult<()> {
        let what = format!("killing job {job_id}");
        self.post_form(&what, &format!("/v3/job/kill/{}", path_encode(job_id)), &[]).map(drop)
    }

    /// Creates a database; one that exists already is fine.
    pub fn create_database(&self, db: &str) -> ApiResult<()> {
        let what = format!("creating database {db}");
        ignore(self.post_form(&what, &format!("/v3/database/create/{}", path_encode(db)), &[]), 409)
    }

    /// Deletes a database; one that does not exist is fine.
    pub fn delete_database(&self, db: &str) -> ApiResult<()> {
        let what = format!("deleting database {db}");
        ignore(self.post_form(&what, &format!("/v3/database/delete/{}", path_encode(db)), &[]), 404)
    }

    pub fn database_exists(&self, db: &str) -> ApiResult<bool> {
        #[derive(Deserialize)]
        struct List {
            databases: Vec<Named>,
        }
        let list: List = self.get_json(&format!("listing databases to find {db}"), "/v3/database/list")?;
        Ok(list.databases.iter().any(|d| d.name == db))
    }

    /// Creates a (log) table; one that exists already is fine.
    pub fn create_table(&self, db: &str, table: &str) -> ApiResult<()> {
        let what = format!("creating table {db}.{table}");
        let path = format!("/v3/table/create/{}/{}/log", path_encode(db), path_encode(table));
        ignore(self.post_form(&what, &path, &[]), 409)
    }

    /// Deletes a table; one that does not exist is fine.
    pub fn delete_table(&self, db: &str, table: &str) -> ApiResult<()> {
        let what = format!("deleting table {db}.{table}");
        let path = format!("/v3/table/delete/{}/{}", path_encode(db), path_encode(table));
        ignore(self.post_form(&what, &path, &[]), 404)
    }

    pub fn table_exists(&self, db: &str, table: &str) -> ApiResult<bool> {
        #[derive(Deserialize)]
        struct List {
            tables: Vec<Named>,
        }
        let what = format!("listing the tables of {db} to find {table}");
        match self.get_json::<List>(&what, &format!("/v3/table/list/{}", path_encode(db))) {
            Ok(list) => Ok(list.tables.iter().any(|t| t.name == table)),
            // No database, so no table.
            Err(ApiError::Status { status: 404, .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Renames a table, replacing one of the new name; a missing table is fine (the caller
    /// checked it existed before, so it was renamed by an earlier try).
    pub fn rename_table(&self, db: &str, from: &str, to: &str) -> ApiResult<()> {
        let what = format!("renaming table {db}.{from} to {to}");
        let path = format!("/v3/table/rename/{}/{}/{}", path_encode(db), path_encode(from), path_encode(to));
        ignore(self.post_form(&what, &path, &[("overwrite", "true".into())]), 404)
    }

    /// `POST /v3/table/partialdelete/:db/:table` (`from`/`to` in epoch seconds).
    pub fn partial_delete(&self, db: &str, table: &str, from: i64, to: i64, domain_key: &str) -> ApiResult<String> {
        let what = format!("starting a partial delete of {db}.{table}");
        let path = format!("/v3/table/partialdelete/{}/{}", path_encode(db), path_encode(table));
        let form = [("from", from.to_string()), ("to", to.to_string()), ("domain_key", domain_key.to_string())];
        self.started(&what, self.post_form(&what, &path, &form))
    }

    /// `POST /v3/export/run/:db/:table` (to S3).
    pub fn export_table(&self, db: &str, table: &str, form: &[(&str, String)]) -> ApiResult<String> {
        let what = format!("starting an export of {db}.{table}");
        let path = format!("/v3/export/run/{}/{}", path_encode(db), path_encode(table));
        self.started(&what, self.post_form(&what, &path, form))
    }

    /// `POST /v3/job/result_export/:job_id`.
    pub fn export_result(
        &self,
        job_id: &str,
        connection_id: i64,
        settings: &str,
        domain_key: &str,
    ) -> ApiResult<String> {
        let what = format!("starting a result export of job {job_id}");
        let path = format!("/v3/job/result_export/{}", path_encode(job_id));
        let form = [
            ("result_connection_id", connection_id.to_string()),
            ("result_connection_settings", settings.to_string()),
            ("domain_key", domain_key.to_string()),
        ];
        self.started(&what, self.post_form(&what, &path, &form))
    }

    /// Runs a saved query by name (`POST /v3/schedule/run/:name/:time`): the first job.
    pub fn run_saved_query(&self, name: &str, time: &str, domain_key: &str) -> ApiResult<String> {
        let what = format!("running saved query {name}");
        let path = format!("/v3/schedule/run/{}/{}", path_encode(name), path_encode(time));
        let resp = self.post_form(&what, &path, &[("num", "1".into()), ("domain_key", domain_key.to_string())]);
        let resp = match resp {
            Err(ApiError::Status { status: 409, conflicts_with: Some(id), .. }) => return Ok(id),
            other => other?,
        };
        let body: Value = Self::json(&what, &resp)?;
        match body.pointer("/jobs/0/job_id") {
            Some(Value::String(s)) => Ok(s.clone()),
            Some(Value::Number(n)) => Ok(n.to_string()),
            _ => Err(ApiError::Invalid { what, reason: format!("no jobs[0].job_id in {body}") }),
        }
    }

    /// Runs a saved query by id (`POST /v4/queries/:id/jobs`).
    pub fn run_saved_query_by_id(&self, id: i64, time: &str, domain_key: &str) -> ApiResult<String> {
        let what = format!("running saved query id {id}");
        let body = serde_json::json!({ "scheduled_time": time, "domain_key": domain_key }).to_string();
        let req = http::Request::new("POST", self.url(&format!("/v4/queries/{id}/jobs")))
            .header("Content-Type", "application/json")
            .body(body.into_bytes());
        self.started(&what, self.send(&what, req))
    }

    /// The id of the result connection `name` (`GET /v3/connections/lookup?name=`).
    pub fn lookup_connection(&self, name: &str) -> ApiResult<i64> {
        let what = format!("looking up result connection {name}");
        let body: Value =
            self.get_json(&what, &format!("/v3/connections/lookup?name={}", spade_sdk::encode::form_value(name)))?;
        match body.get("id") {
            Some(Value::Number(n)) if n.as_i64().is_some() => Ok(n.as_i64().unwrap_or_default()),
            Some(Value::String(s)) if s.parse::<i64>().is_ok() => Ok(s.parse().unwrap_or_default()),
            _ => Err(ApiError::Invalid { what, reason: format!("no id in {body}") }),
        }
    }
}

#[derive(Deserialize)]
struct Named {
    name: String,
}

/// Success, also when the API answered `status` (a conflict or a missing thing that
/// means the wanted state holds already).
fn ignore(resp: ApiResult<http::Response>, status: u16) -> ApiResult<()> {
    match resp {
        Ok(_) => Ok(()),
        Err(e) if e.status() == Some(status) => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_errors_are_4xx_other_than_408_and_429() {
        let status = |s| ApiError::Status { what: "x".into(), status: s, message: String::new(), conflicts_with: None };
        assert!(status(400).deterministic());
        assert!(status(404).deterministic());
        assert!(!status(408).deterministic());
        assert!(!status(429).deterministic());
        assert!(!status(500).deterministic());
        let t = |error| ApiError::Transport { what: "x".into(), error };
        assert!(!t(http::Error::Timeout { url: "u".into() }).deterministic());
        assert!(t(http::Error::Denied { url: "u".into() }).deterministic());
    }

    #[test]
    fn column_names_come_from_the_schema_string_or_list() {
        let info = JobInfo {
            hive_result_schema: Some(Value::String(r#"[["a","varchar"],["b","bigint"]]"#.into())),
            ..JobInfo::default()
        };
        assert_eq!(info.column_names().unwrap(), ["a", "b"]);
        let info = JobInfo { hive_result_schema: Some(serde_json::json!([["c", "double"]])), ..JobInfo::default() };
        assert_eq!(info.column_names().unwrap(), ["c"]);
        assert!(JobInfo::default().column_names().unwrap().is_empty());
        let bad = JobInfo { hive_result_schema: Some(Value::String("[1]".into())), ..JobInfo::default() };
        assert!(bad.column_names().is_err());
    }

    #[test]
    fn encoding() {
        assert_eq!(path_encode("my table"), "my%20table");
    }
}
