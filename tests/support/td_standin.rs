//! A STAND-IN for Treasure Data's REST API (v3), written for spade's tests from TD's public
//! API documentation: Treasure Data's service cannot run here. It is not TD: it runs no
//! SQL. It keeps databases and tables, issues jobs that report `queued`, then `running`,
//! then finish on later status checks, and answers each query job with the rows a test
//! scripted for a text the query contains. Every request is recorded, so tests check what
//! the operators sent.
//!
//! Documented behaviour it follows: `Authorization: TD1 <apikey>` (401 otherwise); job
//! issue answers `{"job": id, "job_id": id, "database": db}` and a repeated `domain_key`
//! answers 409 with `details.conflicts_with`; `job/show` carries `hive_result_schema` (a
//! JSON string) and `debug.cmdout`/`debug.stderr`; `job/result?format=json` is one JSON
//! array per line; creating what exists answers 409 and deleting what does not 404.
//!
//! Each test file that includes it uses only some of it, hence the `dead_code` allowance.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};

/// One request as received.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub form: BTreeMap<String, String>,
    pub authorization: Option<String>,
}

#[derive(Clone, Debug)]
struct Job {
    kind: String,
    database: String,
    query: String,
    status_checks: u32,
    failed: bool,
    schema: Vec<(String, String)>,
    rows: Option<Vec<Value>>,
    params: BTreeMap<String, String>,
}

/// Rows for query jobs whose text contains `needle`: one answer per job, the last repeated.
#[derive(Clone)]
struct Answer {
    needle: String,
    schema: Vec<(String, String)>,
    rows: Vec<Vec<Value>>,
}

#[derive(Default)]
struct Inner {
    apikey: String,
    databases: BTreeMap<String, BTreeSet<String>>,
    jobs: Vec<Job>,
    domain_keys: HashMap<String, usize>,
    answers: Vec<Answer>,
    answered: HashMap<String, usize>,
    connections: BTreeMap<String, i64>,
    saved_queries: BTreeMap<String, String>,
    bulk_load_sessions: BTreeSet<String>,
    requests: Vec<Recorded>,
}

#[derive(Clone)]
pub struct TdStandIn {
    pub port: u16,
    inner: Arc<Mutex<Inner>>,
}

impl TdStandIn {
    /// Listens on a loopback port; accepts the given API key.
    pub fn start(apikey: &str) -> TdStandIn {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let inner = Arc::new(Mutex::new(Inner { apikey: apikey.to_string(), ..Inner::default() }));
        let shared = inner.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let shared = shared.clone();
                std::thread::spawn(move || serve(stream, &shared));
            }
        });
        TdStandIn { port, inner }
    }

    pub fn create_database(&self, name: &str) {
        self.inner.lock().unwrap().databases.entry(name.to_string()).or_default();
    }

    pub fn create_table(&self, db: &str, table: &str) {
        self.inner.lock().unwrap().databases.entry(db.to_string()).or_default().insert(table.to_string());
    }

    pub fn tables(&self, db: &str) -> Vec<String> {
        self.inner.lock().unwrap().databases.get(db).map(|t| t.iter().cloned().collect()).unwrap_or_default()
    }

    /// Query jobs whose text contains `needle` answer these rows; with several answers,
    /// each job takes the next and the last repeats.
    pub fn answer(&self, needle: &str, columns: &[(&str, &str)], answers: Vec<Vec<Value>>) {
        let schema = columns.iter().map(|(n, t)| (n.to_string(), t.to_string())).collect();
        self.inner.lock().unwrap().answers.push(Answer { needle: needle.to_string(), schema, rows: answers });
    }

    pub fn connection(&self, name: &str, id: i64) {
        self.inner.lock().unwrap().connections.insert(name.to_string(), id);
    }

    /// A saved query `name` running `query`.
    pub fn saved_query(&self, name: &str, query: &str) {
        self.inner.lock().unwrap().saved_queries.insert(name.to_string(), query.to_string());
    }

    /// A saved data connector session `name` (td_load>).
    pub fn bulk_load_session(&self, name: &str) {
        self.inner.lock().unwrap().bulk_load_sessions.insert(name.to_string());
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.inner.lock().unwrap().requests.clone()
    }

    /// The query texts of issued query jobs, in order.
    pub fn queries(&self) -> Vec<String> {
        self.inner
            .lock()
            .unwrap()
            .jobs
            .iter()
            .filter(|j| j.kind == "presto" || j.kind == "hive")
            .map(|j| j.query.clone())
            .collect()
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok().and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn parse_form(text: &str) -> BTreeMap<String, String> {
    text.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn serve(stream: TcpStream, shared: &Mutex<Inner>) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    let mut parts = request_line.split_whitespace();
    let method = parts.next().unwrap_or("").to_string();
    let target = parts.next().unwrap_or("").to_string();
    let mut length = 0usize;
    let mut authorization = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            break;
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            match name.trim().to_ascii_lowercase().as_str() {
                "content-length" => length = value.trim().parse().unwrap_or(0),
                "authorization" => authorization = Some(value.trim().to_string()),
                _ => {}
            }
        }
    }
    let mut body = vec![0u8; length];
    if reader.read_exact(&mut body).is_err() {
        return;
    }
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let body = String::from_utf8_lossy(&body).into_owned();
    let mut form = parse_form(query);
    if body.trim_start().starts_with('{') {
        if let Ok(Value::Object(m)) = serde_json::from_str::<Value>(&body) {
            form.extend(m.into_iter().map(|(k, v)| (k, v.as_str().map(str::to_string).unwrap_or(v.to_string()))));
        }
    } else {
        form.extend(parse_form(&body));
    }
    let (status, reply) = {
        let mut inner = shared.lock().unwrap();
        inner.requests.push(Recorded {
            method: method.clone(),
            path: path.to_string(),
            form: form.clone(),
            authorization: authorization.clone(),
        });
        if authorization.as_deref() != Some(&format!("TD1 {}", inner.apikey)) {
            (401, json!({"error": "Authentication failed", "message": "invalid API key"}).to_string())
        } else {
            route(&mut inner, &method, path, &form)
        }
    };
    let reason = match status {
        200 => "OK",
        401 => "Unauthorized",
        404 => "Not Found",
        409 => "Conflict",
        _ => "Error",
    };
    let mut stream = stream;
    let _ = write!(
        stream,
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{reply}",
        reply.len()
    );
}

fn error(status: u16, message: &str) -> (u16, String) {
    (status, json!({"error": message, "message": message}).to_string())
}

/// Issues a job (any kind); a seen domain key answers 409 naming its job.
fn issue(inner: &mut Inner, mut job: Job, form: &BTreeMap<String, String>) -> (u16, String) {
    if let Some(key) = form.get("domain_key").filter(|k| !k.is_empty()) {
        if let Some(id) = inner.domain_keys.get(key) {
            return (
                409,
                json!({"error": "Domain key conflict", "details": {"conflicts_with": id.to_string()}}).to_string(),
            );
        }
        inner.domain_keys.insert(key.clone(), inner.jobs.len() + 1);
    }
    job.params = form.clone();
    if job.kind == "presto" || job.kind == "hive" {
        job.failed = job.query.contains("FAIL_ME");
        let scripted = inner.answers.iter().find(|a| job.query.contains(a.needle.as_str())).cloned();
        if let Some(Answer { needle, schema, rows: answers }) = scripted {
            let n = inner.answered.entry(needle).or_insert(0);
            let rows = answers.get(*n).or(answers.last()).cloned().unwrap_or_default();
            *n += 1;
            job.schema = schema;
            job.rows = Some(rows.into_iter().collect());
        } else if job.query.to_ascii_lowercase().contains("select")
            && !job.query.contains("CREATE TABLE")
            && !job.query.contains("INSERT")
        {
            job.rows = Some(Vec::new());
        }
    }
    inner.jobs.push(job);
    let id = inner.jobs.len().to_string();
    (200, json!({"job": id, "job_id": id, "database": form.get("database").cloned().unwrap_or_default()}).to_string())
}

fn new_job(kind: &str, database: &str, query: &str) -> Job {
    Job {
        kind: kind.into(),
        database: database.into(),
        query: query.into(),
        status_checks: 0,
        failed: false,
        schema: Vec::new(),
        rows: None,
        params: BTreeMap::new(),
    }
}

/// The job's status now: queued, running, then finished at the third check.
fn status_of(job: &Job) -> &'static str {
    match job.status_checks {
        0 => "queued",
        1 => "running",
        _ if job.failed => "error",
        _ => "success",
    }
}

/// Finishing a CREATE TABLE ... AS creates its table, as TD would.
fn finish(inner: &mut Inner, index: usize) {
    let job = inner.jobs[index].clone();
    if status_of(&job) != "success" {
        return;
    }
    if let Some(at) = job.query.find("CREATE TABLE \"") {
        let rest = &job.query[at + "CREATE TABLE \"".len()..];
        if let Some(end) = rest.find('"') {
            let table = rest[..end].to_string();
            inner.databases.entry(job.database.clone()).or_default().insert(table);
        }
    }
}

fn route(inner: &mut Inner, method: &str, path: &str, form: &BTreeMap<String, String>) -> (u16, String) {
    let segs: Vec<String> = path.trim_start_matches('/').split('/').map(percent_decode).collect();
    let s: Vec<&str> = segs.iter().map(String::as_str).collect();
    let job_index =
        |id: &str, inner: &Inner| id.parse::<usize>().ok().filter(|i| *i >= 1 && *i <= inner.jobs.len()).map(|i| i - 1);
    match (method, &s[..]) {
        ("POST", ["v3", "job", "issue", kind, db]) => {
            if !inner.databases.contains_key(*db) {
                return error(404, &format!("Database '{db}' does not exist"));
            }
            let query = form.get("query").cloned().unwrap_or_default();
            issue(inner, new_job(kind, db, &query), form)
        }
        ("GET", ["v3", "job", "status", id]) => {
            let Some(i) = job_index(id, inner) else { return error(404, "Job not found") };
            inner.jobs[i].status_checks += 1;
            finish(inner, i);
            let job = &inner.jobs[i];
            (200, json!({"job_id": id, "status": status_of(job)}).to_string())
        }
        ("GET", ["v3", "job", "show", id]) => {
            let Some(i) = job_index(id, inner) else { return error(404, "Job not found") };
            let job = &inner.jobs[i];
            let schema: Vec<Value> = job.schema.iter().map(|(n, t)| json!([n, t])).collect();
            let (cmdout, stderr) = if job.failed {
                (
                    "started at 2024-01-01T00:00:00Z\nexecuting query",
                    "Query failed: line 1:8: Column 'FAIL_ME' cannot be resolved",
                )
            } else {
                ("started at 2024-01-01T00:00:00Z", "")
            };
            let body = json!({
                "job_id": id,
                "type": job.kind,
                "database": job.database,
                "query": job.query,
                "status": status_of(job),
                "hive_result_schema": Value::Array(schema).to_string(),
                "num_records": job.rows.as_ref().map(|r| r.len()).unwrap_or(0),
                "debug": {"cmdout": cmdout, "stderr": stderr},
            });
            (200, body.to_string())
        }
        ("GET", ["v3", "job", "result", id]) => {
            let Some(i) = job_index(id, inner) else { return error(404, "Job not found") };
            if form.get("format").map(String::as_str) != Some("json") {
                return error(400, "this stand-in serves format=json only");
            }
            match &inner.jobs[i].rows {
                Some(rows) => (200, rows.iter().map(|r| format!("{r}\n")).collect()),
                None => error(404, "Result not found"),
            }
        }
        ("POST", ["v3", "job", "kill", id]) => match job_index(id, inner) {
            Some(_) => (200, json!({"job_id": id, "former_status": "running"}).to_string()),
            None => error(404, "Job not found"),
        },
        ("POST", ["v3", "database", "create", db]) => {
            if inner.databases.contains_key(*db) {
                return error(409, &format!("Database '{db}' already exists"));
            }
            inner.databases.insert(db.to_string(), BTreeSet::new());
            (200, json!({"database": db}).to_string())
        }
        ("POST", ["v3", "database", "delete", db]) => match inner.databases.remove(*db) {
            Some(_) => (200, json!({"database": db}).to_string()),
            None => error(404, &format!("Database '{db}' does not exist")),
        },
        ("GET", ["v3", "database", "list"]) => {
            let dbs: Vec<Value> = inner.databases.keys().map(|n| json!({"name": n})).collect();
            (200, json!({"databases": dbs}).to_string())
        }
        ("POST", ["v3", "table", "create", db, table, "log"]) => {
            let Some(tables) = inner.databases.get_mut(*db) else {
                return error(404, &format!("Database '{db}' does not exist"));
            };
            if !tables.insert(table.to_string()) {
                return error(409, &format!("Table '{table}' already exists"));
            }
            (200, json!({"database": db, "table": table, "type": "log"}).to_string())
        }
        ("POST", ["v3", "table", "delete", db, table]) => {
            match inner.databases.get_mut(*db).map(|t| t.remove(*table)) {
                Some(true) => (200, json!({"database": db, "table": table}).to_string()),
                _ => error(404, &format!("Table '{table}' does not exist")),
            }
        }
        ("GET", ["v3", "table", "list", db]) => match inner.databases.get(*db) {
            Some(tables) => {
                let list: Vec<Value> = tables.iter().map(|t| json!({"name": t, "type": "log", "count": 0})).collect();
                (200, json!({"database": db, "tables": list}).to_string())
            }
            None => error(404, &format!("Database '{db}' does not exist")),
        },
        ("POST", ["v3", "table", "rename", db, from, to]) => {
            let Some(tables) = inner.databases.get_mut(*db) else { return error(404, "Database not found") };
            if !tables.remove(*from) {
                return error(404, &format!("Table '{from}' does not exist"));
            }
            tables.insert(to.to_string());
            (200, json!({"database": db, "table": from, "type": "log"}).to_string())
        }
        ("POST", ["v3", "table", "partialdelete", db, table]) => {
            if !inner.databases.get(*db).is_some_and(|t| t.contains(*table)) {
                return error(404, &format!("Table '{db}.{table}' does not exist"));
            }
            issue(inner, new_job("partialdelete", db, ""), form)
        }
        ("POST", ["v3", "export", "run", db, table]) => {
            if !inner.databases.get(*db).is_some_and(|t| t.contains(*table)) {
                return error(404, &format!("Table '{db}.{table}' does not exist"));
            }
            issue(inner, new_job("export", db, ""), form)
        }
        ("POST", ["v3", "job", "result_export", id]) => {
            if job_index(id, inner).is_none() {
                return error(404, "Job not found");
            }
            issue(inner, new_job("result_export", "", ""), form)
        }
        ("POST", ["v3", "schedule", "run", name, _time]) => {
            let Some(query) = inner.saved_queries.get(*name).cloned() else {
                return error(404, &format!("Schedule '{name}' does not exist"));
            };
            let (status, body) = issue(inner, new_job("presto", "", &query), form);
            if status != 200 {
                return (status, body);
            }
            let id = inner.jobs.len().to_string();
            (
                200,
                json!({"jobs": [{"job_id": id, "type": "presto", "scheduled_at": form.get("scheduled_time")}]})
                    .to_string(),
            )
        }
        ("POST", ["v3", "bulk_loads", name, "jobs"]) => {
            if !inner.bulk_load_sessions.contains(*name) {
                return error(404, &format!("Bulk load session '{name}' does not exist"));
            }
            issue(inner, new_job("bulkload", "", ""), form)
        }
        ("GET", ["v3", "connections", "lookup"]) => {
            let name = form.get("name").cloned().unwrap_or_default();
            match inner.connections.get(&name) {
                Some(id) => (200, json!({"id": id, "name": name}).to_string()),
                None => error(404, &format!("Connection '{name}' does not exist")),
            }
        }
        _ => error(404, &format!("no such endpoint in the TD stand-in: {method} {path}")),
    }
}
