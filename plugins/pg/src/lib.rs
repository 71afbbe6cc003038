//! `pg>`: run SQL on PostgreSQL (Digdag's PgOperatorFactory and AbstractJdbcJobOperator),
//! over a TCP connection the project grants (`grants: {spade-pg: {tcp: ["db:5432"]}}`).
//!
//! The query is the file `pg>: queries/q.sql` names (a `${...}` template) or `query:`.
//! Connection: `host`, `port` (5432), `user`, `database`, `schema` (the search path),
//! `connect_timeout` (30s), `socket_timeout` (30m), each also from a `pg.*` secret, and the
//! password from the `pg.password` secret; a `pg:` map gives defaults. `ssl: true` is not
//! supported yet (refused with a message rather than connecting in clear).
//!
//! - `create_table: t` runs `DROP TABLE IF EXISTS t; CREATE TABLE t AS <query>`,
//!   `insert_into: t` runs `INSERT INTO t <query>`; with `strict_transaction` (the
//!   default) the statement runs exactly once across retries and crashes: it commits in
//!   the same transaction that marks its query id done in a status table
//!   (`status_table_schema`.`status_table`, `__digdag_status`), whose rows older than
//!   `status_table_cleanup` (24h) are deleted. Another run holding the row makes this one
//!   poll (backing off to 20 minutes), as in Digdag.
//! - `download_file: out.csv` writes the results as CSV; `store_last_results: first|all`
//!   stores `pg.last_results` (the first row as a map, or all rows, at most 8192 rows of
//!   64 columns and 256-character values). Both run the query in a read-only
//!   transaction, so it must be one statement that writes nothing.
//!
//! Errors carry the server's SQLSTATE and message (never the password).

mod wire;

use serde_json::{Number, Value};
use spade_sdk::settings::Settings;
use spade_sdk::{Object, Operator, Outcome, Request, Result, log, secrets};

use crate::wire::{Column, Connection, PgError, StatementResult};

const MAX_LAST_RESULTS_ROWS: usize = 8192;
const MAX_LAST_RESULTS_COLUMNS: usize = 64;
const MAX_LAST_RESULTS_VALUE: usize = 256;
/// Digdag's lock-conflict polling: 1 s doubling to 20 minutes.
const MAX_LOCK_POLL_SECONDS: u32 = 1200;

pub struct Pg;

/// `store_last_results`.
#[derive(Clone, Copy, Debug, PartialEq)]
enum StoreLast {
    No,
    First,
    All,
}

/// What only pg> reads from its settings.
trait PgSettings {
    fn table(&self, key: &str) -> Result<Option<String>>;
}

impl PgSettings for Settings<'_> {
    fn table(&self, key: &str) -> Result<Option<String>> {
        match self.params.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(t)) => quote_table(t).map(Some).map_err(|e| self.fail(format!("{key}: {e}"))),
            Some(other) => Err(self.fail(format!("'{key}' must be a table name, got {other}"))),
        }
    }
}

fn quote_ident(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

/// `table` or `schema.table`, each part quoted (Digdag's `TableReference`).
fn quote_table(text: &str) -> std::result::Result<String, String> {
    let text = text.trim();
    let parts: Vec<&str> = text.split('.').collect();
    if parts.is_empty() || parts.len() > 2 || parts.iter().any(|p| p.is_empty()) {
        return Err(format!("'{text}' is not a table name (write `table` or `schema.table`)"));
    }
    Ok(parts.iter().map(|p| quote_ident(p)).collect::<Vec<_>>().join("."))
}

/// A text value as JSON, by its column's type (Digdag stores JDBC objects).
fn json_value(column: &Column, text: Option<&str>) -> Value {
    let Some(text) = text else { return Value::Null };
    match column.type_oid {
        16 => Value::Bool(text == "t"),
        20 | 21 | 23 | 26 => text.parse::<i64>().map(Value::from).unwrap_or_else(|_| Value::String(text.into())),
        700 | 701 | 1700 => {
            if let Ok(i) = text.parse::<i64>() {
                return Value::from(i);
            }
            text.parse::<f64>()
                .ok()
                .and_then(Number::from_f64)
                .map(Value::Number)
                .unwrap_or_else(|| Value::String(text.into()))
        }
        _ => Value::String(text.into()),
    }
}

fn row_map(p: &Settings<'_>, columns: &[Column], row: &[Option<String>]) -> Result<Object> {
    let mut map = Object::new();
    for (column, value) in columns.iter().zip(row) {
        if let Some(v) = value
            && v.chars().count() > MAX_LAST_RESULTS_VALUE
        {
            return Err(p.fail(format!(
                "The size of result value exceeded the limit: {} > {MAX_LAST_RESULTS_VALUE}",
                v.chars().count()
            )));
        }
        map.insert(column.name.clone(), json_value(column, value.as_deref()));
    }
    Ok(map)
}

/// A query id unique to this task run and the same on every call of it, so that the
/// status table recognizes a statement a crashed call already committed.
fn query_id(req: &Request) -> String {
    req.run_key("pg/status")
}

impl Operator for Pg {
    fn run(req: Request) -> Result<Outcome> {
        let p = Settings::new(&req, "pg");
        let query = spade_sdk::workspace::template_command(&req, &p.params, "query").map_err(|e| p.fail(e))?;
        let insert_into = p.table("insert_into")?;
        let create_table = p.table("create_table")?;
        if insert_into.is_some() && create_table.is_some() {
            return Err(p.fail("Can't use both of insert_into and create_table"));
        }
        let modifies = insert_into.is_some() || create_table.is_some();
        let download_file = p.setting("download_file")?;
        if download_file.is_some() && modifies {
            return Err(p.fail("Can't use download_file with insert_into or create_table"));
        }
        let store = match p.params.get("store_last_results") {
            None | Some(Value::Null) | Some(Value::Bool(false)) => StoreLast::No,
            Some(Value::Bool(true)) => StoreLast::First,
            Some(Value::String(s)) => match s.as_str() {
                "false" => StoreLast::No,
                "true" | "first" => StoreLast::First,
                "all" => StoreLast::All,
                other => return Err(p.fail(format!("last_results must be either of \"first\" or \"all\": {other}"))),
            },
            Some(other) => return Err(p.fail(format!("last_results must be either of \"first\" or \"all\": {other}"))),
        };
        if store != StoreLast::No && modifies {
            return Err(p.fail("Can't use store_last_results with insert_into or create_table"));
        }
        if download_file.is_some() && store != StoreLast::No {
            return Err(p.fail("Can't use both download_file and store_last_results at once"));
        }
        if p.flag("ssl", false)? {
            return Err(p.fail(
                "ssl: true is not supported by spade's pg> yet; connect over a trusted network (or a TLS tunnel) with ssl: false",
            ));
        }
        let host = p.required("host")?;
        let port = match p.setting("port")? {
            None => 5432,
            Some(s) => s.parse::<u16>().map_err(|_| p.fail(format!("'port' must be a port number, got {s}")))?,
        };
        let user = p.required("user")?;
        let database = p.required("database")?;
        let password = secrets::get("pg.password");
        let schema = p.setting("schema")?;
        let config = wire::Config {
            host: &host,
            port,
            user: &user,
            password: password.as_deref(),
            database: &database,
            schema: schema.as_deref(),
            connect_timeout: std::time::Duration::from_secs(p.seconds("connect_timeout", 30)?),
            socket_timeout: std::time::Duration::from_secs(p.seconds("socket_timeout", 1800)?),
        };
        let mut conn = Connection::connect(&config).map_err(|e| {
            let hint = match &e {
                PgError::Io(m) if m.contains("ermission denied") => {
                    format!(" (is {host}:{port} in this plugin's tcp grant? spade.yml: `grants: {{spade-pg: {{tcp: [\"{host}:{port}\"]}}}}`)")
                }
                _ => String::new(),
            };
            p.fail(format!("cannot connect to PostgreSQL at {host}:{port} as {user}: {e}{hint}")).retryable()
        })?;
        let outcome = if download_file.is_some() || store != StoreLast::No {
            read_only(&p, &mut conn, &query, download_file.as_deref(), store)
        } else {
            let statement = match (&insert_into, &create_table) {
                (Some(t), _) => format!("INSERT INTO {t}\n{query}"),
                (None, Some(t)) => format!("DROP TABLE IF EXISTS {t}; CREATE TABLE {t} AS \n{query}"),
                (None, None) => query.clone(),
            };
            if p.flag("strict_transaction", true)? {
                exactly_once(&p, &mut conn, &statement)
            } else {
                conn.query(&statement).map(drop).map_err(|e| p.fail(format!("the query failed: {e}")).retryable())?;
                Ok(Outcome::done().into())
            }
        };
        for notice in std::mem::take(&mut conn.notices) {
            log::info(format!("NOTICE: {notice}"));
        }
        conn.close();
        outcome
    }
}

/// Runs `query` in a read-only transaction and downloads or stores its result.
fn read_only(
    p: &Settings<'_>,
    conn: &mut Connection,
    query: &str,
    download_file: Option<&str>,
    store: StoreLast,
) -> Result<Outcome> {
    let db = |what: &str, e: PgError| match e.code() {
        Some("25006") => p.fail(format!("Query must be read-only if download_file or store_last_results is set ({e})")),
        _ => p.fail(format!("{what} failed: {e}")).retryable(),
    };
    conn.query("BEGIN TRANSACTION READ ONLY").map_err(|e| db("starting a read-only transaction", e))?;
    let results = match conn.query(query) {
        Ok(r) => r,
        Err(e) => {
            let _ = conn.query("ROLLBACK");
            return Err(db("the query", e));
        }
    };
    conn.query("COMMIT").map_err(|e| db("committing", e))?;
    let with_rows: Vec<&StatementResult> = results.iter().filter(|r| !r.columns.is_empty()).collect();
    let result = match with_rows[..] {
        [one] => one,
        [] => {
            return Err(p.fail("the query returned no result set (download_file and store_last_results need a SELECT)"));
        }
        _ => return Err(p.fail("the query has several statements; download_file and store_last_results need one")),
    };
    if let Some(file) = download_file {
        let mut text = spade_sdk::csv::line(result.columns.iter().map(|c| Some(c.name.as_str())));
        for row in &result.rows {
            text.push_str(&spade_sdk::csv::line(row.iter().map(Option::as_deref)));
        }
        let path = spade_sdk::command::workspace_path(file);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| p.fail(format!("cannot create the directory of {file}: {e}")))?;
        }
        std::fs::write(&path, text).map_err(|e| p.fail(format!("cannot write {file}: {e}")))?;
        log::info(format!("wrote {} rows to {file}", result.rows.len()));
        return Ok(Outcome::done().into());
    }
    if result.columns.len() > MAX_LAST_RESULTS_COLUMNS {
        return Err(p.fail(format!(
            "The number of result columns exceeded the limit: {} > {MAX_LAST_RESULTS_COLUMNS}",
            result.columns.len()
        )));
    }
    let last = match store {
        StoreLast::First => match result.rows.first() {
            Some(row) => Value::Object(row_map(p, &result.columns, row)?),
            None => Value::Object(Object::new()),
        },
        _ => {
            if result.rows.len() > MAX_LAST_RESULTS_ROWS {
                return Err(p.fail(format!(
                    "The number of result rows exceeded the limit: {} > {MAX_LAST_RESULTS_ROWS}",
                    result.rows.len()
                )));
            }
            let rows = result.rows.iter().map(|r| row_map(p, &result.columns, r).map(Value::Object));
            Value::Array(rows.collect::<Result<_>>()?)
        }
    };
    let mut pg = Object::new();
    pg.insert("last_results".into(), last);
    // Reset first: a map from an earlier pg> must not leak keys into this one.
    Ok(Outcome::done().reset("pg.last_results").store("pg", Value::Object(pg)).into())
}

/// Runs `statement` exactly once for this task run (Digdag's strict transaction).
fn exactly_once(p: &Settings<'_>, conn: &mut Connection, statement: &str) -> Result<Outcome> {
    let table = match p.setting("status_table_schema")? {
        Some(schema) => format!(
            "{}.{}",
            quote_ident(&schema),
            quote_ident(&p.setting("status_table")?.unwrap_or_else(|| "__digdag_status".into()))
        ),
        None => quote_ident(&p.setting("status_table")?.unwrap_or_else(|| "__digdag_status".into())),
    };
    let cleanup = p.seconds("status_table_cleanup", 86_400)?;
    let id = query_id(p.req);
    let create = format!(
        "CREATE TABLE IF NOT EXISTS {table} (query_id text NOT NULL UNIQUE, created_at timestamptz NOT NULL, completed_at timestamptz)"
    );
    conn.query(&create).map_err(|e| {
        p.fail(format!(
            "cannot create the status table {table}: {e}; add `strict_transaction: false`, ask an administrator to run `{create}` \
             and grant INSERT on it, or set `status_table_schema` to a schema this user may create tables in"
        ))
    })?;
    let db = |what: &str, e: PgError| p.fail(format!("{what} failed: {e}")).retryable();
    conn.query(&format!(
        "INSERT INTO {table} (query_id, created_at) VALUES ('{id}', now()) ON CONFLICT (query_id) DO NOTHING"
    ))
    .map_err(|e| db("recording the query in the status table", e))?;
    conn.query("BEGIN").map_err(|e| db("BEGIN", e))?;
    let locked = conn.query(&format!("SELECT completed_at FROM {table} WHERE query_id = '{id}' FOR UPDATE NOWAIT"));
    let completed = match locked {
        Ok(results) => {
            results.last().and_then(|r| r.rows.first()).is_some_and(|row| row.first().is_some_and(Option::is_some))
        }
        Err(e) if e.code() == Some("55P03") => {
            let _ = conn.query("ROLLBACK");
            // Another call holds the row (a run of this task that is still going).
            let state: Object = p.req.state_as()?.unwrap_or_default();
            let wait = state.get("lock_wait").and_then(Value::as_u64).unwrap_or(1) as u32;
            log::info(format!("the status row of this query is locked by another session; checking again in {wait} s"));
            let next = (wait * 2).min(MAX_LOCK_POLL_SECONDS);
            return Ok(Outcome::poll(wait, serde_json::json!({ "lock_wait": next })));
        }
        Err(e) => {
            let _ = conn.query("ROLLBACK");
            return Err(db("locking the status row", e));
        }
    };
    if completed {
        conn.query("COMMIT").map_err(|e| db("COMMIT", e))?;
        log::info("the query already completed in an earlier call (status table); not running it again");
    } else {
        if let Err(e) = conn.query(statement) {
            let _ = conn.query("ROLLBACK");
            return Err(p.fail(format!("the query failed: {e}")).retryable());
        }
        conn.query(&format!("UPDATE {table} SET completed_at = now() WHERE query_id = '{id}'"))
            .map_err(|e| db("marking the query done in the status table", e))?;
        conn.query("COMMIT").map_err(|e| db("COMMIT", e))?;
    }
    let old = format!("DELETE FROM {table} WHERE completed_at < now() - interval '{cleanup} second'");
    if let Err(e) = conn.query(&old) {
        log::warn(format!("deleting old rows of the status table failed, ignored: {e}"));
    }
    Ok(Outcome::done().into())
}

spade_sdk::plugin!(Pg, name = "spade-pg", operators = ["pg"]);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_are_quoted() {
        assert_eq!(quote_table("t").unwrap(), "\"t\"");
        assert_eq!(quote_table("s.t").unwrap(), "\"s\".\"t\"");
        assert_eq!(quote_table("we\"ird").unwrap(), "\"we\"\"ird\"");
        assert!(quote_table("a.b.c").is_err() && quote_table(".t").is_err());
    }

    #[test]
    fn values_by_type() {
        let col = |oid| Column { name: "c".into(), type_oid: oid };
        assert_eq!(json_value(&col(23), Some("42")), Value::from(42));
        assert_eq!(json_value(&col(16), Some("t")), Value::Bool(true));
        assert_eq!(json_value(&col(1700), Some("1.5")), serde_json::json!(1.5));
        assert_eq!(json_value(&col(1700), Some("NaN")), Value::from("NaN"));
        assert_eq!(json_value(&col(25), Some("x")), Value::from("x"));
        assert_eq!(json_value(&col(25), None), Value::Null);
    }
}
