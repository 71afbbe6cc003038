//! `pg>` end to end against the local PostgreSQL (127.0.0.1:5432, database `test`), over the
//! TCP connection the project grants: tables made and filled with `create_table`/
//! `insert_into` under strict transactions, results stored and looped over with
//! `for_each>`, each row queried with `td>` (against the loopback TD stand-in), results
//! downloaded as CSV and mailed as a summary (to a real SMTP server on loopback); and the
//! failures a user meets, with the server's SQLSTATE.

#[path = "support/smtp_sink.rs"]
mod smtp_sink;
mod support;
#[path = "support/td_standin.rs"]
mod td_standin;

use std::path::Path;

use serde_json::json;
use support::{spade_env, stderr, stdout_lines};

fn db() -> postgres::Client {
    postgres::Client::connect("host=127.0.0.1 port=5432 user=postgres dbname=test", postgres::NoTls)
        .expect("the local PostgreSQL at 127.0.0.1:5432 (database test) is running")
}

/// A schema of its own for one test, dropped first if an earlier run left it.
fn fresh_schema(name: &str) -> String {
    let schema = format!("spade_pg_{name}");
    db().batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}")).unwrap();
    schema
}

fn run(dir: &Path) -> std::process::Output {
    let secrets = dir.join("secrets.yml");
    spade_env(dir, &["run", "wf.dig", "--session", "2024-01-01"], &[("SPADE_SECRETS", secrets.as_os_str())])
}

fn header(schema: &str) -> String {
    format!(
        "timezone: UTC\n_export:\n  pg:\n    host: 127.0.0.1\n    port: 5432\n    user: postgres\n    database: test\n    schema: {schema}\n"
    )
}

#[test]
fn pg_loads_loops_queries_td_and_downloads() {
    let schema = fresh_schema("flow");
    let td = td_standin::TdStandIn::start("k");
    let smtp = smtp_sink::Sink::start();
    td.create_database("analytics");
    td.answer("'apple'", &[("events", "bigint")], vec![vec![json!([3])]]);
    td.answer("'banana'", &[("events", "bigint")], vec![vec![json!([5])]]);

    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::write(
        dir.join("spade.yml"),
        format!(
            "grants:\n  spade-pg:\n    tcp: [\"127.0.0.1:5432\"]\n  spade-td:\n    http: [\"http://127.0.0.1:{}\"]\n  spade-mail:\n    tcp: [\"127.0.0.1:{}\"]\n",
            td.port, smtp.port
        ),
    )
    .unwrap();
    let secrets = dir.join("secrets.yml");
    let set = spade_env(dir, &["secrets", "--set", "td.apikey=k"], &[("SPADE_SECRETS", secrets.as_os_str())]);
    assert!(set.status.success());
    std::fs::create_dir(dir.join("queries")).unwrap();
    std::fs::write(dir.join("queries/doubled.sql"), "select name, n * ${factor} as doubled from fruits\n").unwrap();
    let body = format!(
        r#"  td:
    database: analytics
    endpoint: 127.0.0.1:{port}
    use_ssl: false
  factor: 2
+setup:
  pg>:
  query: "CREATE TABLE fruits (name text, n int); INSERT INTO fruits VALUES ('apple', 1), ('banana', 2)"
  strict_transaction: false
+create:
  pg>: queries/doubled.sql
  create_table: summary
+insert:
  pg>:
  query: select 'cherry, ripe', 6
  insert_into: summary
+first:
  pg>:
  query: select count(*) as cnt, sum(doubled) as total, bool_and(doubled > 0) as positive from summary
  store_last_results: first
+show:
  echo>: cnt=${{pg.last_results.cnt}} total=${{pg.last_results.total}} positive=${{pg.last_results.positive}}
+all:
  pg>:
  query: select name, doubled from summary where name not like 'cherry%' order by name
  store_last_results: all
+loop:
  for_each>:
    row: ${{pg.last_results}}
  _do:
    +count:
      td>:
      query: select count(*) as events from events where name = '${{row.name}}'
      store_last_results: true
    +say:
      echo>: ${{row.name}} doubled=${{row.doubled}} events=${{td.last_results.events}}
+download:
  pg>:
  query: select name, doubled from summary order by name
  download_file: out/summary.csv
+mail:
  mail>:
  body: "${{pg.last_results.length}} fruits, summary attached"
  subject: Summary ${{session_date}}
  from: spade@example.com
  to: team@example.com
  host: 127.0.0.1
  port: {smtp_port}
  attach_files:
    - path: out/summary.csv
      content_type: text/csv
"#,
        port = td.port,
        smtp_port = smtp.port
    );
    let workflow = header(&schema) + &body;
    std::fs::write(dir.join("wf.dig"), workflow).unwrap();
    let out = run(dir);
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert_eq!(
        stdout_lines(&out),
        ["cnt=3 total=12 positive=true", "apple doubled=2 events=3", "banana doubled=4 events=5"]
    );
    let csv = std::fs::read_to_string(dir.join(".spade/workspace/out/summary.csv")).unwrap();
    assert_eq!(csv, "name,doubled\r\napple,2\r\nbanana,4\r\n\"cherry, ripe\",6\r\n");

    // The strict transactions left their marks: two statements, each completed once.
    let mut client = db();
    let rows = client.query(&format!("SELECT completed_at IS NOT NULL FROM {schema}.__digdag_status"), &[]).unwrap();
    assert_eq!(rows.len(), 2);
    assert!(rows.iter().all(|r| r.get::<_, bool>(0)));
    let mails = smtp.messages();
    assert_eq!(mails.len(), 1);
    assert_eq!(mails[0]["subject"], "Summary 2024-01-01");
    assert_eq!(mails[0]["body"], "2 fruits, summary attached");
    assert_eq!(mails[0]["attachments"][0]["filename"], "summary.csv");
    let td_queries = td.queries();
    assert!(td_queries.iter().any(|q| q.contains("where name = 'apple'")), "{td_queries:?}");
}

#[test]
fn pg_failures_name_the_task_and_the_server_error() {
    let schema = fresh_schema("errors");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let grant = "grants:\n  spade-pg:\n    tcp: [\"127.0.0.1:5432\"]\n";
    let wf = |body: &str| std::fs::write(dir.join("wf.dig"), format!("{}{body}", header(&schema))).unwrap();

    // Not granted: the connection is refused, and the log says why.
    wf("+q:\n  pg>:\n  query: select 1\n");
    let out = run(dir);
    let err = stderr(&out);
    assert!(!out.status.success());
    assert!(err.contains("+wf+q") && err.contains("not in this plugin's tcp grant"), "{err}");

    std::fs::write(dir.join("spade.yml"), grant).unwrap();
    wf("+q:\n  pg>:\n  query: select * from nope\n");
    let out = run(dir);
    let err = stderr(&out);
    assert!(!out.status.success());
    assert!(err.contains("+wf+q") && err.contains("ERROR 42P01") && err.contains("\"nope\" does not exist"), "{err}");

    // download_file needs a query that writes nothing.
    db().batch_execute(&format!("CREATE TABLE {schema}.t (x int)")).unwrap();
    wf("+q:\n  pg>:\n  query: insert into t values (1) returning x\n  download_file: out.csv\n");
    let out = run(dir);
    assert!(stderr(&out).contains("Query must be read-only"), "{}", stderr(&out));
    let count: i64 = db().query_one(&format!("SELECT count(*) FROM {schema}.t"), &[]).unwrap().get(0);
    assert_eq!(count, 0);

    // Conflicting params are refused before connecting.
    wf("+q:\n  pg>:\n  query: select 1\n  insert_into: a\n  create_table: b\n");
    let out = run(dir);
    assert!(stderr(&out).contains("Can't use both of insert_into and create_table"), "{}", stderr(&out));
    wf("+q:\n  pg>:\n  query: select 1\n  ssl: true\n");
    let out = run(dir);
    assert!(stderr(&out).contains("ssl: true is not supported"), "{}", stderr(&out));
}
