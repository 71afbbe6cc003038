//! The operators: what each one sends and what it stores (Digdag's `Td*OperatorFactory`).
//! Each function advances its task by one call: it returns `Later` to be called again, or
//! `Ready` with the task's result.

use serde_json::{Value, json};
use spade_sdk::control::{parallel_of, required_body};
use spade_sdk::{Done, Object, Outcome, expressions, log, secrets};

use crate::Ctx;
use crate::api::{ApiResult, JobRequest};
use crate::job::{Halt, State, Step, domain_key, run_job};
use crate::sql::{Origin, TableRef, csv, insert_command, with_origin};

type StepResult = Result<Step<Done>, Halt>;

/// Rows `preview: true` logs.
const PREVIEW_ROWS: usize = 20;
/// td_wait_table> checks table existence at least this often.
const TABLE_EXISTENCE_POLL_SECONDS: u32 = 30;
/// Default td_wait>/td_wait_table> interval (Digdag: 30s).
const DEFAULT_WAIT_SECONDS: u32 = 30;

macro_rules! ready {
    ($step:expr) => {
        match $step {
            Step::Ready(v) => v,
            Step::Later(s) => return Ok(Step::Later(s)),
        }
    };
}

/// The query: the file `td>: queries/q.sql` names (its `${...}` rendered with the params),
/// `td>: {data: ...}`, or the `query:` param.
fn query_text(ctx: &Ctx<'_>) -> Result<String, Halt> {
    spade_sdk::workspace::template_command(ctx.req, &ctx.params, "query").map_err(|e| ctx.config(e))
}

/// Digdag's `engine:` (presto or hive).
fn engine(ctx: &Ctx<'_>) -> Result<String, Halt> {
    let engine = ctx.string("engine")?.unwrap_or_else(|| "presto".into());
    if engine != "presto" && engine != "hive" {
        return Err(ctx.config(format!("Unknown 'engine:' option (available options are: hive and presto): {engine}")));
    }
    Ok(engine)
}

/// `priority`: an integer from -2 to 2, or TD's names for them.
fn priority(ctx: &Ctx<'_>) -> Result<i64, Halt> {
    if let Some(Value::String(s)) = ctx.params.get("priority") {
        let named = match s.trim().to_ascii_uppercase().as_str() {
            "VERY_LOW" => Some(-2),
            "LOW" => Some(-1),
            "NORMAL" => Some(0),
            "HIGH" => Some(1),
            "VERY_HIGH" => Some(2),
            _ => None,
        };
        if let Some(p) = named {
            return Ok(p);
        }
    }
    let p = ctx.int("priority", 0)?;
    if !(-2..=2).contains(&p) {
        return Err(ctx.config(format!("'priority' must be from -2 to 2 (or VERY_LOW .. VERY_HIGH), got {p}")));
    }
    Ok(p)
}

/// The job fields every query operator sets from its params.
fn job_request(ctx: &Ctx<'_>, engine: &str, database: &str, query: String) -> Result<JobRequest, Halt> {
    let engine_version = if engine == "hive" {
        ctx.string("hive_engine_version")?.or(ctx.string("engine_version")?)
    } else {
        ctx.string("engine_version")?
    };
    Ok(JobRequest {
        engine: engine.to_string(),
        database: database.to_string(),
        query,
        priority: priority(ctx)?,
        retry_limit: ctx.int("job_retry", 0)?,
        pool_name: ctx.string(&format!("{engine}_pool_name"))?,
        scheduled_time: ctx.params.get("session_unixtime").and_then(Value::as_i64),
        engine_version,
        ..JobRequest::default()
    })
}

/// `text` with `${secret:...}` filled in (result URLs and settings).
fn with_secrets(ctx: &Ctx<'_>, what: &str, text: &str) -> Result<String, Halt> {
    secrets::render(text).map_err(|e| ctx.config(format!("{what}: {e}")))
}

/// What every job operator stores: `td.last_job_id` and `td.last_job.{id,num_records}`.
fn last_job(ctx: &Ctx<'_>, job_id: &str, extra: Object) -> Done {
    let num_records = match ctx.client.job_info(job_id) {
        Ok(info) => info.num_records.unwrap_or(0),
        Err(e) => {
            log::warn(format!("setting num_records failed, ignored: {e}"));
            0
        }
    };
    let mut td = extra;
    td.insert("last_job_id".into(), json!(job_id));
    td.insert("last_job".into(), json!({ "id": job_id, "num_records": num_records }));
    Outcome::done().store("td", Value::Object(td))
}

/// After a query job: `download_file`, `preview` of its rows, `store_last_results`.
fn process_result(ctx: &Ctx<'_>, job_id: &str, preview_rows: bool) -> Result<Done, Halt> {
    if let Some(file) = ctx.string("download_file")? {
        let info = ctx.client.job_info(job_id)?;
        let columns = info.column_names().map_err(|e| ctx.config(e))?;
        let rows = ctx.client.job_result(job_id, None)?;
        let path = spade_sdk::command::workspace_path(&file);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| ctx.config(format!("cannot create the directory of {file}: {e}")))?;
        }
        std::fs::write(&path, csv(&columns, &rows)).map_err(|e| ctx.config(format!("cannot write {file}: {e}")))?;
        log::info(format!("wrote {} rows of job {job_id} to {file}", rows.len()));
    }
    if preview_rows {
        log_preview(ctx, job_id, &format!("job id {job_id}"));
    }
    let store_last_results = ctx.bool("store_last_results", false)?;
    let mut extra = Object::new();
    if store_last_results {
        let info = ctx.client.job_info(job_id)?;
        let columns = info.column_names().map_err(|e| ctx.config(e))?;
        let rows = ctx.client.job_result(job_id, Some(1))?;
        let mut last = Object::new();
        if let Some(row) = rows.first() {
            for (name, value) in columns.iter().zip(row) {
                last.insert(name.clone(), value.clone());
            }
        }
        extra.insert("last_results".into(), Value::Object(last));
    }
    let done = last_job(ctx, job_id, extra);
    Ok(if store_last_results { done.reset("td.last_results") } else { done })
}

/// Logs the first rows of a job as CSV; a failure here is only a warning (as in Digdag).
fn log_preview(ctx: &Ctx<'_>, job_id: &str, description: &str) {
    let rows = ctx.client.job_info(job_id).and_then(|info| {
        let columns = info.column_names().unwrap_or_default();
        ctx.client.job_result(job_id, Some(PREVIEW_ROWS)).map(|rows| (columns, rows))
    });
    match rows {
        Ok((_, rows)) if rows.is_empty() => log::info(format!("preview of {description}: (no results)")),
        Ok((columns, rows)) => log::info(format!("preview of {description}:\r\n{}", csv(&columns, &rows))),
        Err(e) => log::warn(format!("getting rows for preview failed, ignored: {e}")),
    }
}

fn ensure_table(ctx: &Ctx<'_>, database: &str, table: &TableRef) -> ApiResult<()> {
    let db = table.database_or(database);
    ctx.client.create_table(db, &table.table)?;
    // TD's API may answer before the table is visible (Digdag's WM-763): check, once more.
    if !ctx.client.table_exists(db, &table.table)? {
        ctx.client.create_table(db, &table.table)?;
    }
    Ok(())
}

fn origin<'a>(ctx: &'a Ctx<'_>) -> Origin<'a> {
    let req = ctx.req;
    Origin {
        project_id: ctx.params.get("project_id").map(|v| v.to_string()).unwrap_or_default(),
        project_name: &req.project_name,
        workflow_name: &req.workflow_name,
        session_id: req.session_id,
        attempt_id: req.attempt_id,
        task_name: &req.task_name,
    }
}

fn table_param(ctx: &Ctx<'_>, key: &str) -> Result<Option<TableRef>, Halt> {
    ctx.string(key)?.map(|t| TableRef::parse(&t).map_err(|e| ctx.config(format!("{key}: {e}")))).transpose()
}

/// `td>`: run a query, optionally into a table, and store or download its results.
pub fn td(ctx: &Ctx<'_>, state: &mut State) -> StepResult {
    let query = query_text(ctx)?;
    let insert_into = table_param(ctx, "insert_into")?;
    let create_table = table_param(ctx, "create_table")?;
    if insert_into.is_some() && create_table.is_some() {
        return Err(ctx.config("Setting both insert_into and create_table is invalid"));
    }
    let engine = engine(ctx)?;
    let download_file = ctx.string("download_file")?;
    if download_file.is_some() && (insert_into.is_some() || create_table.is_some()) {
        return Err(ctx.config("download_file is invalid if insert_into or create_table is set"));
    }
    let result_connection = ctx.string("result_connection")?;
    let result_settings = match ctx.params.get("result_settings") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(other) => Some(other.to_string()),
    };
    if result_settings.is_some() && result_connection.is_none() {
        return Err(ctx.config("result_settings is valid only if result_connection is set"));
    }
    let preview = ctx.bool("preview", false)?;
    let database = ctx.database()?.to_string();

    if state.done_job_id.is_none() {
        let key = domain_key(ctx.req, "job", 0);
        let job_id = ready!(run_job(&ctx.client, &mut state.job, &key, |key| {
            let statement = match (&engine[..], &insert_into, &create_table) {
                ("presto", Some(t), _) => {
                    ensure_table(ctx, &database, t)?;
                    insert_command(&format!("INSERT INTO {}", t.presto()), &query)
                }
                ("presto", None, Some(t)) => {
                    let name = t.presto();
                    insert_command(&format!("DROP TABLE IF EXISTS {name};\nCREATE TABLE {name} AS"), &query)
                }
                ("hive", Some(t), _) => {
                    ensure_table(ctx, &database, t)?;
                    insert_command(&format!("INSERT INTO TABLE {}", t.hive()), &query)
                }
                ("hive", None, Some(t)) => {
                    ensure_table(ctx, &database, t)?;
                    insert_command(&format!("INSERT OVERWRITE TABLE {}", t.hive()), &query)
                }
                _ => query.clone(),
            };
            let mut job = job_request(ctx, &engine, &database, with_origin(&origin(ctx), &statement))?;
            job.domain_key = key.to_string();
            job.result_url = ctx.string("result_url")?.map(|u| with_secrets(ctx, "result_url", &u)).transpose()?;
            if let Some(name) = &result_connection {
                job.result_connection_id = Some(ctx.client.lookup_connection(name)?);
            }
            job.result_connection_settings =
                result_settings.as_deref().map(|s| with_secrets(ctx, "result_settings", s)).transpose()?;
            log::info(format!("starting {engine} job:\n{}", job.query));
            Ok(ctx.client.issue_job(&job)?)
        })?);
        state.done_job_id = Some(job_id);
        state.job = None;
    }
    let job_id = state.done_job_id.clone().unwrap_or_default();

    let table = insert_into.as_ref().or(create_table.as_ref());
    if preview && let Some(table) = table {
        // The written table's first rows, by a second (presto) job.
        let key = domain_key(ctx.req, "preview", 0);
        let preview_id = ready!(run_job(&ctx.client, &mut state.preview, &key, |key| {
            let mut job = job_request(
                ctx,
                "presto",
                &database,
                format!("-- preview results of job id {job_id}\nSELECT * FROM {} LIMIT {PREVIEW_ROWS}", table.presto()),
            )?;
            job.priority = 0;
            job.retry_limit = 0;
            job.domain_key = key.to_string();
            Ok(ctx.client.issue_job(&job)?)
        })?);
        log_preview(ctx, &preview_id, &format!("table {table}"));
    }
    Ok(Step::Ready(process_result(ctx, &job_id, preview && table.is_none())?))
}

/// One result value as Digdag's td_for_each> exports it (scalars only).
fn each_value(ctx: &Ctx<'_>, column: &str, v: &Value) -> Result<Value, Halt> {
    match v {
        Value::Array(_) | Value::Object(_) => {
            Err(ctx.config(format!("Unsupported column type in column '{column}' (an array or map): {v}")))
        }
        other => Ok(other.clone()),
    }
}

/// `td_for_each>`: run a query and a copy of `_do` per result row, with the row as
/// `${td.each.<column>}`.
pub fn td_for_each(ctx: &Ctx<'_>, state: &mut State) -> StepResult {
    let query = query_text(ctx)?;
    let engine = engine(ctx)?;
    let database = ctx.database()?.to_string();
    let body = required_body(ctx.req, "_do").map_err(Halt::Fail)?;
    let key = domain_key(ctx.req, "job", 0);
    let job_id = ready!(run_job(&ctx.client, &mut state.job, &key, |key| {
        let mut job = job_request(ctx, &engine, &database, query.clone())?;
        job.domain_key = key.to_string();
        log::info(format!("starting {engine} job:\n{query}"));
        Ok(ctx.client.issue_job(&job)?)
    })?);
    let columns = ctx.client.job_info(&job_id)?.column_names().map_err(|e| ctx.config(e))?;
    let rows = ctx.client.job_result(&job_id, None)?;
    let mut generated = Object::new();
    for (i, row) in rows.iter().enumerate() {
        let mut each = Object::new();
        for (name, value) in columns.iter().zip(row) {
            each.insert(name.clone(), each_value(ctx, name, value)?);
        }
        let mut child = body.clone();
        let export = child.entry("_export").or_insert_with(|| json!({}));
        if !export.is_object() {
            *export = json!({});
        }
        let td = export.as_object_mut().map(|e| e.entry("td").or_insert_with(|| json!({})));
        if let Some(td) = td {
            if !td.is_object() {
                *td = json!({});
            }
            if let Some(td) = td.as_object_mut() {
                td.insert("each".into(), Value::Object(each));
            }
        }
        generated.insert(format!("+td-for-each-{i}"), Value::Object(child));
    }
    if let Some(parallel) = parallel_of(ctx.req) {
        generated.insert("_parallel".into(), parallel.clone());
    }
    Ok(Step::Ready(last_job(ctx, &job_id, Object::new()).subtasks(generated)))
}

/// `interval:` of the wait operators, in seconds (`30s`, `1m`, `45`).
fn interval(ctx: &Ctx<'_>) -> Result<u32, Halt> {
    let Some(value) = ctx.params.get("interval").filter(|v| !v.is_null()) else {
        return Ok(DEFAULT_WAIT_SECONDS);
    };
    let seconds = match value {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => spade_sdk::duration::parse_seconds(s).ok().and_then(|s| u64::try_from(s).ok()),
        _ => None,
    };
    match seconds {
        Some(s) if (1..=u64::from(u32::MAX)).contains(&s) => Ok(s as u32),
        _ => Err(ctx.config(format!("'interval' must be a duration such as 30s, 5m or 1h, got {value}"))),
    }
}

/// Digdag's truthiness of td_wait>'s first column: not null, not false, not 0.
fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) if n.is_i64() || n.is_u64() => n.as_f64() != Some(0.0),
        _ => true,
    }
}

/// `td_wait>`: run the query every `interval` until its first row's first column is truthy.
pub fn td_wait(ctx: &Ctx<'_>, state: &mut State) -> StepResult {
    let query = query_text(ctx)?;
    let engine = engine(ctx)?;
    let every = interval(ctx)?;
    let database = ctx.database()?.to_string();
    let key = domain_key(ctx.req, "wait", state.round);
    let job_id = ready!(run_job(&ctx.client, &mut state.job, &key, |key| {
        let mut job = job_request(ctx, &engine, &database, query.clone())?;
        job.domain_key = key.to_string();
        Ok(ctx.client.issue_job(&job)?)
    })?);
    let rows = ctx.client.job_result(&job_id, Some(1))?;
    let done = match rows.first() {
        None => false,
        Some(row) if row.is_empty() => return Err(ctx.config("Got empty row in result of query")),
        Some(row) => truthy(&row[0]),
    };
    if done {
        log::info(format!("finished; last job id={job_id}"));
        return Ok(Step::Ready(Outcome::done()));
    }
    state.job = None;
    state.round += 1;
    Ok(Step::Later(every))
}

/// `td_wait_table>: table`: wait until the table exists (and has at least `rows` rows).
pub fn td_wait_table(ctx: &Ctx<'_>, state: &mut State) -> StepResult {
    let table = match &ctx.req.command {
        Value::String(t) => TableRef::parse(t).map_err(|e| ctx.config(e))?,
        _ => return Err(ctx.config("give the table: `td_wait_table>: table` or `database.table`")),
    };
    let rows = ctx.int("rows", 0)?;
    let engine = engine(ctx)?;
    let every = interval(ctx)?;
    let database = ctx.database()?.to_string();
    if !state.table_exists {
        if !ctx.client.table_exists(table.database_or(&database), &table.table)? {
            return Ok(Step::Later(every.min(TABLE_EXISTENCE_POLL_SECONDS)));
        }
        if rows <= 0 {
            return Ok(Step::Ready(Outcome::done()));
        }
        state.table_exists = true;
    }
    let key = domain_key(ctx.req, "wait_table", state.round);
    let job_id = ready!(run_job(&ctx.client, &mut state.job, &key, |key| {
        let query = if engine == "presto" {
            format!("select count(*) from {}", table.presto())
        } else {
            format!("select count(*) from (select * from {} limit {rows}) sub", table.hive())
        };
        let mut job = job_request(ctx, &engine, &database, query)?;
        job.domain_key = key.to_string();
        Ok(ctx.client.issue_job(&job)?)
    })?);
    let result = ctx.client.job_result(&job_id, Some(1))?;
    let Some(row) = result.first() else {
        return Err(ctx.config(format!("Got unexpected empty result for count job: {job_id}")));
    };
    if row.len() != 1 {
        return Err(ctx.config(format!("Got unexpected result row size for count job: {}", row.len())));
    }
    let Some(count) = row[0].as_i64() else {
        return Err(ctx.config(format!("Got unexpected value type count job: {}", row[0])));
    };
    if count >= rows {
        log::info(format!("finished; last job id={job_id}"));
        return Ok(Step::Ready(Outcome::done()));
    }
    state.job = None;
    state.round += 1;
    Ok(Step::Later(every))
}

/// `td_run>: saved_query` (a name or a numeric id), at the session time.
pub fn td_run(ctx: &Ctx<'_>, state: &mut State) -> StepResult {
    let time = ctx.string("session_time")?.unwrap_or_else(|| ctx.req.session_time.clone());
    if state.done_job_id.is_none() {
        let key = domain_key(ctx.req, "job", 0);
        let job_id = ready!(run_job(&ctx.client, &mut state.job, &key, |key| match &ctx.req.command {
            Value::Number(n) if n.is_i64() =>
                Ok(ctx.client.run_saved_query_by_id(n.as_i64().unwrap_or(0), &time, key)?),
            Value::String(name) if !name.trim().is_empty() =>
                Ok(ctx.client.run_saved_query(name.trim(), &time, key)?),
            other => Err(ctx.config(format!("Invalid saved query reference: {other}"))),
        })?);
        state.done_job_id = Some(job_id);
        state.job = None;
    }
    let job_id = state.done_job_id.clone().unwrap_or_default();
    let preview = ctx.bool("preview", false)?;
    Ok(Step::Ready(process_result(ctx, &job_id, preview)?))
}

/// `td_ddl>`: drop, create, empty and rename databases and tables, in Digdag's order.
pub fn td_ddl(ctx: &Ctx<'_>, state: &mut State) -> StepResult {
    let list = |key: &str| -> Result<Vec<String>, Halt> {
        match ctx.params.get(key) {
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| match v {
                    Value::String(s) => Ok(s.clone()),
                    other => Err(ctx.config(format!("'{key}' must be a list of names, got {other}"))),
                })
                .collect(),
            Some(Value::String(s)) => Ok(vec![s.clone()]),
            Some(other) => Err(ctx.config(format!("'{key}' must be a list of names, got {other}"))),
        }
    };
    let tables = |key: &str| -> Result<Vec<TableRef>, Halt> {
        list(key)?.iter().map(|t| TableRef::parse(t).map_err(|e| ctx.config(format!("{key}: {e}")))).collect()
    };
    let default_db = || ctx.database.clone();
    let db_of = |t: &TableRef| -> Result<String, Halt> {
        match (&t.database, default_db()) {
            (Some(d), _) => Ok(d.clone()),
            (None, Some(d)) => Ok(d),
            (None, None) => Err(ctx.config(format!("table {t} names no database and no `database:` is set"))),
        }
    };

    enum Op {
        DropDb(String),
        CreateDb(String),
        DropTable(String, String),
        CreateTable(String, String),
        Rename(String, String, String),
    }
    let (drop_dbs, create_dbs, empty_dbs) =
        (list("drop_databases")?, list("create_databases")?, list("empty_databases")?);
    let (drop_t, create_t, empty_t) = (tables("drop_tables")?, tables("create_tables")?, tables("empty_tables")?);
    let mut ops = Vec::new();
    ops.extend(drop_dbs.iter().chain(&empty_dbs).map(|d| Op::DropDb(d.clone())));
    ops.extend(create_dbs.iter().chain(&empty_dbs).map(|d| Op::CreateDb(d.clone())));
    for t in drop_t.iter().chain(&empty_t) {
        ops.push(Op::DropTable(db_of(t)?, t.table.clone()));
    }
    for t in create_t.iter().chain(&empty_t) {
        ops.push(Op::CreateTable(db_of(t)?, t.table.clone()));
    }
    let mut renames = Vec::new();
    match ctx.params.get("rename_tables") {
        None | Some(Value::Null) => {}
        Some(Value::Array(items)) => {
            for item in items {
                let from = item.get("from").and_then(Value::as_str);
                let to = item.get("to").and_then(Value::as_str);
                let (Some(from), Some(to)) = (from, to) else {
                    return Err(ctx.config(format!("each of rename_tables needs `from` and `to`, got {item}")));
                };
                if to.contains('.') {
                    return Err(ctx.config("'to' option of rename_tables can't include database name"));
                }
                let from = TableRef::parse(from).map_err(|e| ctx.config(format!("rename_tables: {e}")))?;
                renames.push((db_of(&from)?, from.table.clone(), to.to_string()));
            }
        }
        Some(other) => return Err(ctx.config(format!("'rename_tables' must be a list of {{from, to}}, got {other}"))),
    }
    // Every source must exist before anything is renamed, so that a 404 while renaming
    // means "renamed by an earlier try".
    while state.checked < renames.len() {
        let (db, from, _) = &renames[state.checked];
        if !ctx.client.table_exists(db, from)? {
            return Err(ctx.config(format!("Renaming table {db}.{from} doesn't exist")));
        }
        state.checked += 1;
    }
    ops.extend(renames.into_iter().map(|(db, from, to)| Op::Rename(db, from, to)));
    while state.step < ops.len() {
        match &ops[state.step] {
            Op::DropDb(d) => {
                log::info(format!("Deleting TD database {d}"));
                ctx.client.delete_database(d)?;
            }
            Op::CreateDb(d) => {
                log::info(format!("Creating TD database {d}"));
                ctx.client.create_database(d)?;
                if !ctx.client.database_exists(d)? {
                    ctx.client.create_database(d)?;
                }
            }
            Op::DropTable(d, t) => {
                log::info(format!("Deleting TD table {d}.{t}"));
                ctx.client.delete_table(d, t)?;
            }
            Op::CreateTable(d, t) => {
                log::info(format!("Creating TD table {d}.{t}"));
                ensure_table(ctx, d, &TableRef { database: Some(d.clone()), table: t.clone() })?;
            }
            Op::Rename(d, from, to) => {
                log::info(format!("Renaming TD table {d}.{from} -> {to}"));
                ctx.client.rename_table(d, from, to)?;
            }
        }
        state.step += 1;
    }
    Ok(Step::Ready(Outcome::done()))
}

/// Every string of `v` with its `${secret:KEY}` filled in (Digdag's `Secrets.resolveSecrets`).
fn resolve_secrets(v: &mut Value) -> Result<(), String> {
    match v {
        Value::String(s) => *s = secrets::render(s)?,
        Value::Array(items) => items.iter_mut().try_for_each(resolve_secrets)?,
        Value::Object(map) => map.values_mut().try_for_each(resolve_secrets)?,
        _ => {}
    }
    Ok(())
}

/// `td_load>`: a bulk load, from an Embulk-style config (`td_load>: load.yml`, rendered
/// as a template, or `config:`) into `table`, or a saved data connector session
/// (`td_load>: session_name` or `name:`).
pub fn td_load(ctx: &Ctx<'_>, state: &mut State) -> StepResult {
    let command = match &ctx.req.command {
        Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_string()),
        _ => None,
    };
    let name = ctx.string("name")?;
    let config = ctx.params.get("config").filter(|v| !v.is_null());
    if config.is_some() && name.is_some() {
        return Err(ctx.config("The parameters config and name cannot both be set"));
    }
    match [command.is_some(), name.is_some(), config.is_some()].iter().filter(|b| **b).count() {
        0 => {
            return Err(
                ctx.config("No parameter is set (give `td_load>: load.yml`, a session name, `config:` or `name:`)")
            );
        }
        1 => {}
        _ => return Err(ctx.config("Only the command or one of the config and name params may be set")),
    }
    enum Load {
        Config(Value),
        Session(String),
    }
    let load = match (command, name, config) {
        (Some(file), _, _) if file.ends_with(".yml") || file.ends_with(".yaml") => {
            let text = spade_sdk::workspace::template_file(&file, &ctx.params)
                .map_err(|e| ctx.config(format!("Failed to load bulk load file: {e}")))?;
            let config = spade_sdk::yaml::to_json(&text)
                .map_err(|e| ctx.config(format!("Failed to parse yaml file {file}: {e}")))?;
            if !config.is_object() {
                return Err(ctx.config(format!("{file} is not a YAML map (an Embulk config)")));
            }
            Load::Config(config)
        }
        (Some(session), _, _) | (None, Some(session), _) => Load::Session(session),
        (None, None, Some(config)) => Load::Config(config.clone()),
        (None, None, None) => unreachable!("counted above"),
    };
    if state.done_job_id.is_none() {
        let key = domain_key(ctx.req, "job", 0);
        let job_id = ready!(run_job(&ctx.client, &mut state.job, &key, |key| match &load {
            Load::Config(config) => {
                let table = table_param(ctx, "table")?.ok_or_else(|| ctx.config("'table' is required"))?;
                let database = ctx.database()?.to_string();
                let mut config = config.clone();
                resolve_secrets(&mut config).map_err(|e| ctx.config(format!("config: {e}")))?;
                Ok(ctx.client.issue_bulk_load(table.database_or(&database), &table.table, &config.to_string(), key)?)
            }
            Load::Session(name) => {
                let time = ctx.params.get("session_unixtime").and_then(Value::as_i64).unwrap_or_default();
                Ok(ctx.client.start_bulk_load_session(name, time, key)?)
            }
        })?);
        state.done_job_id = Some(job_id);
    }
    let job_id = state.done_job_id.clone().unwrap_or_default();
    Ok(Step::Ready(last_job(ctx, &job_id, Object::new())))
}

/// Days from 1970-01-01 to a civil date (proleptic Gregorian).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `YYYY-MM-DD[T ]HH:MM[:SS[.fff]]` and what follows it.
fn parse_local(text: &str) -> Option<(i64, &str)> {
    let b = text.as_bytes();
    let num = |r: std::ops::Range<usize>| text.get(r)?.parse::<i64>().ok();
    if b.len() < 16 || b[4] != b'-' || b[7] != b'-' || !(b[10] == b'T' || b[10] == b' ') || b[13] != b':' {
        return None;
    }
    let (y, mo, d, h, mi) = (num(0..4)?, num(5..7)?, num(8..10)?, num(11..13)?, num(14..16)?);
    let mut rest = &text[16..];
    let mut s = 0;
    if let Some(r) = rest.strip_prefix(':') {
        s = r.get(..2)?.parse().ok()?;
        rest = &r[2..];
        if let Some(frac) = rest.strip_prefix('.') {
            rest = frac.trim_start_matches(|c: char| c.is_ascii_digit());
        }
    }
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || s > 60 {
        return None;
    }
    Some((days_from_civil(y, mo, d) * 86_400 + h * 3_600 + mi * 60 + s, rest))
}

/// `Z`, `+09:00`, `+0900`, `+09` (and a leading space): seconds east of UTC.
fn parse_offset(text: &str) -> Option<i64> {
    let t = text.trim();
    if t == "Z" || t == "UTC" {
        return Some(0);
    }
    let sign = match t.chars().next()? {
        '+' => 1,
        '-' => -1,
        _ => return None,
    };
    let digits: String = t[1..].chars().filter(|c| *c != ':').collect();
    if !digits.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let (h, m) = match digits.len() {
        2 => (digits.parse::<i64>().ok()?, 0),
        4 => (digits[..2].parse::<i64>().ok()?, digits[2..].parse::<i64>().ok()?),
        _ => return None,
    };
    Some(sign * (h * 3_600 + m * 60))
}

/// A timestamp param as epoch seconds: a number (or digits), a time with an offset, or a
/// local time in `zone`, which must be the workflow's (the host's expression engine, in
/// that zone, converts it; moment.js there has no other zones, as in Digdag).
fn timestamp(ctx: &Ctx<'_>, key: &str, zone: &str) -> Result<i64, Halt> {
    let bad = |v: &Value| {
        ctx.config(format!(
            "'{key}' must be epoch seconds or a time such as 2024-01-01T00:00:00+09:00 or 2024-01-01 00:00:00, got {v}"
        ))
    };
    let value =
        ctx.params.get(key).filter(|v| !v.is_null()).ok_or_else(|| ctx.config(format!("'{key}' is required")))?;
    let text = match value {
        Value::Number(n) => return n.as_i64().ok_or_else(|| bad(value)),
        Value::String(s) => s.trim(),
        _ => return Err(bad(value)),
    };
    if !text.is_empty() && text.chars().all(|c| c.is_ascii_digit()) {
        return text.parse().map_err(|_| bad(value));
    }
    let (local, rest) = parse_local(text).ok_or_else(|| bad(value))?;
    if !rest.trim().is_empty() {
        let offset = parse_offset(rest).ok_or_else(|| bad(value))?;
        return Ok(local - offset);
    }
    if zone != ctx.req.timezone {
        return Err(ctx.config(format!(
            "'{key}' is a local time in {zone}, which is not the workflow's time zone ({}); give it with an offset",
            ctx.req.timezone
        )));
    }
    let date = &text[..10];
    let time = text[11..].replace(' ', "");
    let template = format!("${{moment('{date} {time}', 'YYYY-MM-DD HH:mm:ss').unix()}}");
    let rendered = expressions::render(&template, &Object::new()).map_err(|e| ctx.config(format!("{key}: {e}")))?;
    rendered.trim().parse().map_err(|_| bad(value))
}

/// `td_partial_delete>: table` with `from`/`to` on whole hours.
pub fn td_partial_delete(ctx: &Ctx<'_>, state: &mut State) -> StepResult {
    let table = match &ctx.req.command {
        Value::String(t) if !t.trim().is_empty() => t.trim().to_string(),
        _ => return Err(ctx.config("give the table: `td_partial_delete>: table`")),
    };
    let zone = ctx.req.timezone.clone();
    let (from, to) = (timestamp(ctx, "from", &zone)?, timestamp(ctx, "to", &zone)?);
    if from % 3600 != 0 || to % 3600 != 0 {
        return Err(ctx.config("'from' and 'to' parameters must be whole hours"));
    }
    let database = ctx.database()?.to_string();
    if state.done_job_id.is_none() {
        let key = domain_key(ctx.req, "job", 0);
        let job_id = ready!(run_job(&ctx.client, &mut state.job, &key, |key| {
            Ok(ctx.client.partial_delete(&database, &table, from, to, key)?)
        })?);
        state.done_job_id = Some(job_id);
    }
    let job_id = state.done_job_id.clone().unwrap_or_default();
    Ok(Step::Ready(last_job(ctx, &job_id, Object::new())))
}

/// `td_table_export>`: export a table's time range to S3 (TD reads the bucket with the
/// `aws.s3.*` or `aws.*` keys, which spade hands to TD and never logs).
pub fn td_table_export(ctx: &Ctx<'_>, state: &mut State) -> StepResult {
    let database = ctx.required("database")?;
    let table = TableRef::parse(&ctx.required("table")?).map_err(|e| ctx.config(format!("table: {e}")))?;
    let file_format = ctx.required("file_format")?;
    if !["jsonl.gz", "line-json.gz", "tsv.gz", "json.gz"].contains(&file_format.as_str()) {
        return Err(ctx.config(format!(
            "invalid file_format option {file_format:?} (jsonl.gz, line-json.gz, tsv.gz or json.gz)"
        )));
    }
    let zone = ctx.string("timezone")?.unwrap_or_else(|| ctx.req.timezone.clone());
    let (from, to) = (timestamp(ctx, "from", &zone)?, timestamp(ctx, "to", &zone)?);
    let bucket = ctx.required("s3_bucket")?;
    let prefix = ctx.required("s3_path_prefix")?;
    let aws = |key: &str| {
        secrets::get(&format!("aws.s3.{key}"))
            .or_else(|| secrets::get(&format!("aws.{key}")))
            .ok_or_else(|| ctx.config(format!("the aws.s3.{key} (or aws.{key}) secret is missing or not granted")))
    };
    if state.done_job_id.is_none() {
        let key = domain_key(ctx.req, "job", 0);
        let job_id = ready!(run_job(&ctx.client, &mut state.job, &key, |key| {
            let mut form = vec![
                ("storage_type", "s3".to_string()),
                ("bucket", bucket.clone()),
                ("path", prefix.clone()),
                ("access_key_id", aws("access_key_id")?),
                ("secret_access_key", aws("secret_access_key")?),
                ("file_format", file_format.clone()),
                ("from", from.to_string()),
                ("to", to.to_string()),
                ("domain_key", key.to_string()),
            ];
            if let Some(pool) = ctx.string("hive_pool_name")? {
                form.push(("pool_name", pool));
            }
            Ok(ctx.client.export_table(table.database_or(&database), &table.table, &form)?)
        })?);
        state.done_job_id = Some(job_id);
    }
    let job_id = state.done_job_id.clone().unwrap_or_default();
    Ok(Step::Ready(last_job(ctx, &job_id, Object::new())))
}

/// `td_result_export>`: export a finished job's result through a saved connection.
pub fn td_result_export(ctx: &Ctx<'_>, state: &mut State) -> StepResult {
    let source_job = ctx.required("job_id")?;
    let connection = ctx.required("result_connection")?;
    let settings = match ctx.params.get("result_settings") {
        None | Some(Value::Null) => return Err(ctx.config("'result_settings' is required")),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    };
    let settings = with_secrets(ctx, "result_settings", &settings)?;
    if state.done_job_id.is_none() {
        let key = domain_key(ctx.req, "job", 0);
        let job_id = ready!(run_job(&ctx.client, &mut state.job, &key, |key| {
            let id = ctx.client.lookup_connection(&connection)?;
            Ok(ctx.client.export_result(&source_job, id, &settings, key)?)
        })?);
        state.done_job_id = Some(job_id);
    }
    let job_id = state.done_job_id.clone().unwrap_or_default();
    Ok(Step::Ready(last_job(ctx, &job_id, Object::new())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truthiness_like_digdag() {
        assert!(!truthy(&Value::Null));
        assert!(!truthy(&json!(false)));
        assert!(!truthy(&json!(0)));
        assert!(truthy(&json!(2)));
        assert!(truthy(&json!("0")));
        assert!(truthy(&json!(0.0)), "Digdag counts any float as true");
    }

    #[test]
    fn times() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2024, 3, 1), 19_783);
        assert_eq!(parse_local("2024-01-01T01:00:00+09:00"), Some((1_704_070_800, "+09:00")));
        assert_eq!(
            parse_local("2024-01-01 00:00:00 +0900").map(|(t, r)| (t, parse_offset(r))),
            Some((1_704_067_200, Some(32_400)))
        );
        assert_eq!(parse_local("2024-01-01 00:00"), Some((1_704_067_200, "")));
        assert_eq!(parse_local("2024-13-01 00:00"), None);
        assert_eq!(parse_offset("Z"), Some(0));
        assert_eq!(parse_offset("-05:30"), Some(-19_800));
        assert_eq!(parse_offset("+9"), None);
    }
}
