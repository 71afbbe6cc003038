//! Digdag's Treasure Data operators (digdag-standards `operator/td`), over TD's REST API
//! through the host's `http` capability: `td>`, `td_ddl>`, `td_for_each>`, `td_wait>`,
//! `td_wait_table>`, `td_run>`, `td_partial_delete>`, `td_table_export>`,
//! `td_result_export>`, `td_load>`.
//!
//! Connection, as in Digdag: the `td.apikey` secret (required), `database` (param, or the
//! `td.database` secret), `endpoint` (`api.treasuredata.com`; param or `td.endpoint`
//! secret), `use_ssl` (true; param or `td.use_ssl` secret). Params nested under `td:` are
//! defaults for the task's own (`_export: {td: {database: ...}}`).
//!
//! A job never holds an instance while it runs: each operator issues its job, returns a
//! poll, and later calls check the job (see [`job`]). Jobs are issued with a domain key
//! derived from the task run, so a call repeated after a crash finds its job instead of
//! starting a second one. Transient API failures (timeouts, 5xx, 429) poll again with
//! backoff; other errors fail the task naming it and TD's message, never the API key.
//!
//! Capabilities: `http` (granted TD's public endpoints by default; a project grants
//! others), `secrets` (`td.*` and the AWS keys td_table_export> passes to TD by default),
//! `expressions` (query files are `${...}` templates).

pub mod api;
pub mod job;
mod ops;
pub mod sql;

use serde_json::Value;
use spade_sdk::{Failure, Object, Operator, Outcome, Request, Result, secrets};

use crate::api::Client;
use crate::job::{Halt, State, Step, after_halt};

pub const DEFAULT_ENDPOINT: &str = "api.treasuredata.com";

/// What every TD operator starts from: its params (with `td:` defaults), the API client,
/// and the default database.
pub struct Ctx<'a> {
    pub req: &'a Request,
    pub params: Object,
    pub client: Client,
    pub database: Option<String>,
}

impl Ctx<'_> {
    /// A failure naming the task (the driver adds the location).
    pub fn config(&self, message: impl Into<String>) -> Halt {
        Halt::Fail(Failure::new(message))
    }

    /// The database the operator works in; a config error when none is set.
    pub fn database(&self) -> std::result::Result<&str, Halt> {
        self.database
            .as_deref()
            .ok_or_else(|| self.config("Parameter 'database' is required (set `database:` or the td.database secret)"))
    }

    pub fn string(&self, key: &str) -> std::result::Result<Option<String>, Halt> {
        match self.params.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(v @ (Value::Number(_) | Value::Bool(_))) => Ok(Some(v.to_string())),
            Some(other) => Err(self.config(format!("'{key}' must be a string, got {other}"))),
        }
    }

    pub fn required(&self, key: &str) -> std::result::Result<String, Halt> {
        self.string(key)?.ok_or_else(|| self.config(format!("'{key}' is required")))
    }

    pub fn bool(&self, key: &str, default: bool) -> std::result::Result<bool, Halt> {
        match self.params.get(key) {
            None | Some(Value::Null) => Ok(default),
            Some(Value::Bool(b)) => Ok(*b),
            Some(Value::String(s)) if s.eq_ignore_ascii_case("true") => Ok(true),
            Some(Value::String(s)) if s.eq_ignore_ascii_case("false") => Ok(false),
            Some(other) => Err(self.config(format!("'{key}' must be true or false, got {other}"))),
        }
    }

    pub fn int(&self, key: &str, default: i64) -> std::result::Result<i64, Halt> {
        match self.params.get(key) {
            None | Some(Value::Null) => Ok(default),
            Some(Value::Number(n)) if n.is_i64() => Ok(n.as_i64().unwrap_or(default)),
            Some(Value::String(s)) if s.trim().parse::<i64>().is_ok() => Ok(s.trim().parse().unwrap_or(default)),
            Some(other) => Err(self.config(format!("'{key}' must be an integer, got {other}"))),
        }
    }
}

/// A secret `td.<key>` (trimmed), when set and granted.
fn td_secret(key: &str) -> Option<String> {
    secrets::get(&format!("td.{key}")).map(|s| s.trim().to_string())
}

/// The task's params with its `td:` map as defaults (Digdag's `mergeDefault`).
fn params_with_td_defaults(req: &Request) -> Object {
    spade_sdk::script::params_with_defaults(req, "td")
}

fn connect(req: &Request, database_required: bool) -> std::result::Result<Ctx<'_>, Failure> {
    let params = params_with_td_defaults(req);
    let at = |m: String| Failure::new(format!("{}: {m}", req.location()));
    let apikey = match td_secret("apikey") {
        None => {
            return Err(at(
                "The 'td.apikey' secret is missing (set it with `spade secrets --set td.apikey=...`)".into()
            ));
        }
        Some(k) if k.is_empty() => return Err(at("The 'td.apikey' secret is empty".into())),
        Some(k) => k,
    };
    let param_str = |key: &str| params.get(key).and_then(Value::as_str).map(|s| s.trim().to_string());
    let use_ssl = match td_secret("use_ssl") {
        Some(s) => s.eq_ignore_ascii_case("true"),
        None => match params.get("use_ssl") {
            None | Some(Value::Null) => true,
            Some(Value::Bool(b)) => *b,
            Some(Value::String(s)) => s.eq_ignore_ascii_case("true"),
            Some(other) => return Err(at(format!("'use_ssl' must be true or false, got {other}"))),
        },
    };
    let endpoint = td_secret("endpoint").or_else(|| param_str("endpoint")).unwrap_or_else(|| DEFAULT_ENDPOINT.into());
    let base = if endpoint.contains("://") {
        endpoint.trim_end_matches('/').to_string()
    } else {
        format!("{}://{}", if use_ssl { "https" } else { "http" }, endpoint.trim_end_matches('/'))
    };
    let database = td_secret("database").or_else(|| param_str("database")).filter(|d| !d.is_empty());
    if database_required && database.is_none() {
        return Err(at("Parameter 'database' is required (set `database:` or the td.database secret)".into()));
    }
    Ok(Ctx { req, params, client: Client { base, apikey }, database })
}

/// Runs one call of an operator: `body` advances it, and the driver turns its answer into
/// the outcome (a poll carries the state; failures name the task).
fn drive(
    req: &Request,
    database_required: bool,
    body: impl FnOnce(&Ctx<'_>, &mut State) -> std::result::Result<Step<spade_sdk::Done>, Halt>,
) -> Result<Outcome> {
    let ctx = connect(req, database_required)?;
    let mut state: State = req.state_as()?.unwrap_or_default();
    let step = body(&ctx, &mut state);
    let wait = match step {
        Ok(Step::Ready(done)) => return Ok(done.into()),
        Ok(Step::Later(seconds)) => {
            state.errors = 0;
            seconds
        }
        Err(halt) => after_halt(req, &mut state, halt)?,
    };
    let state = serde_json::to_value(&state).map_err(|e| Failure::new(format!("{}: {e}", req.location())))?;
    Ok(Outcome::poll(wait, state))
}

macro_rules! td_operator {
    ($name:ident, $database_required:expr, $body:path) => {
        pub struct $name;
        impl Operator for $name {
            fn run(req: Request) -> Result<Outcome> {
                drive(&req, $database_required, $body)
            }
        }
    };
}

td_operator!(Td, true, ops::td);
td_operator!(TdForEach, true, ops::td_for_each);
td_operator!(TdWait, true, ops::td_wait);
td_operator!(TdWaitTable, true, ops::td_wait_table);
td_operator!(TdRun, false, ops::td_run);
td_operator!(TdDdl, false, ops::td_ddl);
td_operator!(TdPartialDelete, true, ops::td_partial_delete);
td_operator!(TdTableExport, false, ops::td_table_export);
td_operator!(TdResultExport, false, ops::td_result_export);
td_operator!(TdLoad, false, ops::td_load);

spade_sdk::plugin!(name = "spade-td", operators = {
    "td" => Td,
    "td_for_each" => TdForEach,
    "td_wait" => TdWait,
    "td_wait_table" => TdWaitTable,
    "td_run" => TdRun,
    "td_ddl" => TdDdl,
    "td_partial_delete" => TdPartialDelete,
    "td_table_export" => TdTableExport,
    "td_result_export" => TdResultExport,
    "td_load" => TdLoad,
});

#[cfg(test)]
mod tests {
    use super::*;
    use spade_sdk::http;
    use spade_sdk::json;
    use spade_sdk::testing::{MockHost, request};

    fn reply(status: u16, body: Value) -> std::result::Result<http::Response, http::Error> {
        Ok(http::Response { status, body: body.to_string().into_bytes(), ..http::Response::default() })
    }

    fn host(
        answer: impl FnMut(&http::Request) -> std::result::Result<http::Response, http::Error> + 'static,
    ) -> MockHost {
        let mut host = MockHost { http: Some(Box::new(answer)), ..MockHost::default() };
        host.secrets.insert("td.apikey".into(), "k".into());
        host
    }

    fn td_request(state: Option<Value>) -> Request {
        let b = request("td").local("query", json!("select 1")).param("td", json!({"database": "db"}));
        match state {
            Some(s) => b.state(s).build(),
            None => b.build(),
        }
    }

    /// A domain key TD has seen answers 409 naming its job: that job is followed, none
    /// is started twice; a running job polls; a finished one stores td.last_job.
    #[test]
    fn a_repeated_issue_follows_the_first_job_until_it_is_done() {
        let mut running = true;
        let mut h = host(move |req| {
            assert!(req.headers.iter().any(|(k, v)| k == "Authorization" && v == "TD1 k"));
            match (req.method.as_str(), req.url.as_str()) {
                ("POST", "https://api.treasuredata.com/v3/job/issue/presto/db") => {
                    reply(409, json!({"error": "conflict", "details": {"conflicts_with": "77"}}))
                }
                ("GET", "https://api.treasuredata.com/v3/job/status/77") => {
                    let status = if running { "running" } else { "success" };
                    running = false;
                    reply(200, json!({"status": status}))
                }
                ("GET", "https://api.treasuredata.com/v3/job/show/77") => reply(200, json!({"num_records": 5})),
                other => panic!("unexpected request {other:?}"),
            }
        });
        let first = h.run::<Td>(td_request(None)).unwrap();
        let Outcome::Poll { after_seconds, state } = first else { panic!("{first:?}") };
        assert_eq!(after_seconds, 1);
        assert_eq!(state["job"]["job_id"], "77");
        let done = h.run::<Td>(td_request(Some(state))).unwrap();
        let done = done.as_done().unwrap();
        assert_eq!(done.store_params["td"]["last_job_id"], "77");
        assert_eq!(done.store_params["td"]["last_job"], json!({"id": "77", "num_records": 5}));
        assert_eq!(h.http_requests.iter().filter(|r| r.method == "POST").count(), 1);
    }

    /// 5xx answers poll again with backoff; 4xx fail at once naming the task.
    #[test]
    fn transient_errors_poll_and_client_errors_fail() {
        let mut h = host(|_| reply(503, json!({"error": "busy"})));
        let out = h.run::<Td>(td_request(None)).unwrap();
        let Outcome::Poll { after_seconds, state } = out else { panic!("{out:?}") };
        assert_eq!((after_seconds, state["errors"].clone()), (1, json!(1)));
        let again = h.run::<Td>(td_request(Some(state))).unwrap();
        let Outcome::Poll { after_seconds, .. } = again else { panic!("{again:?}") };
        assert_eq!(after_seconds, 2);

        let mut h = host(|_| reply(400, json!({"message": "bad query"})));
        let err = h.run::<Td>(td_request(None)).unwrap_err();
        assert!(
            err.message.contains("task +test+td (td>)") && err.message.contains("answered 400: bad query"),
            "{err:?}"
        );
    }
}
