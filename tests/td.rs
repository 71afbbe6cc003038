//! The Treasure Data operators end to end: `spade run` drives td>, td_ddl>, td_for_each>,
//! td_wait>, td_wait_table>, td_run>, td_partial_delete> and td_result_export> against a
//! loopback STAND-IN for TD's REST API (tests/support/td_standin.rs, written from TD's
//! public API docs; Treasure Data itself cannot run here), granted to the plugin in
//! spade.yml, with the API key as a local secret.

mod support;
#[path = "support/td_standin.rs"]
mod td_standin;

use std::path::Path;

use serde_json::json;
use support::{spade_env, stderr, stdout_lines};
use td_standin::TdStandIn;

const KEY: &str = "td-test-key-1234";

fn project(dir: &Path, port: u16, workflow: &str) {
    std::fs::write(dir.join("spade.yml"), format!("grants:\n  spade-td:\n    http: [\"http://127.0.0.1:{port}\"]\n"))
        .unwrap();
    std::fs::write(dir.join("wf.dig"), workflow).unwrap();
}

fn set_secret(dir: &Path, key: &str, value: &str) {
    let secrets = dir.join("secrets.yml");
    let out =
        spade_env(dir, &["secrets", "--set", &format!("{key}={value}")], &[("SPADE_SECRETS", secrets.as_os_str())]);
    assert!(out.status.success(), "{}", stderr(&out));
}

fn set_key(dir: &Path, key: &str) {
    set_secret(dir, "td.apikey", key);
}

fn run(dir: &Path) -> std::process::Output {
    let secrets = dir.join("secrets.yml");
    spade_env(dir, &["run", "wf.dig", "--session", "2024-01-01"], &[("SPADE_SECRETS", secrets.as_os_str())])
}

fn header(port: u16) -> String {
    format!(
        "timezone: UTC\n_export:\n  td:\n    database: analytics\n    endpoint: 127.0.0.1:{port}\n    use_ssl: false\n"
    )
}

#[test]
fn td_operators_run_a_workflow_against_the_api() {
    let td = TdStandIn::start(KEY);
    td.create_database("analytics");
    td.create_table("analytics", "events");
    td.create_table("analytics", "old");
    td.answer("from events_v2", &[("cnt", "bigint"), ("day", "varchar")], vec![vec![json!([42, "2024-01-01"])]]);
    td.answer(
        "from users",
        &[("name", "varchar"), ("n", "bigint")],
        vec![vec![json!(["apple", 1]), json!(["banana, ripe", 2])]],
    );
    td.answer("select ready_flag", &[("ready", "bigint")], vec![vec![json!([0])], vec![json!([1])]]);
    td.answer("count(*) from \"summary\"", &[("_col0", "bigint")], vec![vec![json!([3])]]);
    td.answer("* FROM \"summary\"", &[("one", "bigint")], vec![vec![json!([1])]]);
    td.answer("report_status", &[("report_status", "varchar")], vec![vec![json!(["ok"])]]);
    td.saved_query("daily_report", "select 'ok' as report_status");
    td.connection("my_s3", 7);
    td.bulk_load_session("daily_import");

    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::create_dir(dir.join("queries")).unwrap();
    std::fs::write(
        dir.join("queries/count.sql"),
        "-- count the day's events\nselect count(1) as cnt, '${session_date}' as day from events_v2\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("load.yml"),
        "in:\n  type: s3\n  bucket: logs\n  path_prefix: logs/${session_date}/\n  access_key_id: ${secret:aws.s3.access_key_id}\nout:\n  mode: append\n",
    )
    .unwrap();
    let workflow = format!(
        "{}{}",
        header(td.port),
        r#"
+ddl:
  td_ddl>:
  create_databases: [analytics]
  create_tables: [staging]
  empty_tables: [scratch]
  drop_tables: [old]
  rename_tables: [{from: events, to: events_v2}]
+count:
  td>: queries/count.sql
  store_last_results: true
+show:
  echo>: count=${td.last_results.cnt} day=${td.last_results.day} job=${td.last_job_id}
+ctas:
  td>:
  query: select 1 as one
  create_table: summary
  preview: true
+each:
  td_for_each>:
  query: select name, n from users
  _do:
    echo>: ${td.each.name}=${td.each.n}
+download:
  td>:
  query: select name, n from users
  download_file: out/users.csv
+wait:
  td_wait>:
  query: select ready_flag
  interval: 1s
+wait_table:
  td_wait_table>: summary
  rows: 1
  interval: 1s
+run:
  td_run>: daily_report
  store_last_results: true
+show_run:
  echo>: report=${td.last_results.report_status}
+partial:
  td_partial_delete>: events_v2
  from: 2024-01-01T00:00:00+00:00
  to: "2024-01-01 02:00:00"
+export:
  td_result_export>:
  job_id: ${td.last_job_id}
  result_connection: my_s3
  result_settings: {bucket: reports, path: /daily}
+load:
  td_load>: load.yml
  table: imported
+load_session:
  td_load>: daily_import
"#
    );
    project(dir, td.port, &workflow);
    set_key(dir, KEY);
    set_secret(dir, "aws.s3.access_key_id", "AKIATESTKEY");
    let out = run(dir);
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    let lines = stdout_lines(&out);
    assert!(lines[0].starts_with("count=42 day=2024-01-01 job="), "{lines:?}");
    assert_eq!(lines[1..], ["apple=1", "banana, ripe=2", "report=ok"], "{lines:?}");
    assert!(!err.contains(KEY) && !String::from_utf8_lossy(&out.stdout).contains(KEY), "the API key leaked: {err}");

    // td_ddl>: created, emptied, dropped and renamed tables, in Digdag's order.
    assert_eq!(td.tables("analytics"), ["events_v2", "scratch", "staging", "summary"]);

    // Tasks write into the project's workspace copy (see README, "Where tasks run").
    let csv = std::fs::read_to_string(dir.join(".spade/workspace/out/users.csv")).unwrap();
    assert_eq!(csv, "name,n\r\napple,1\r\n\"banana, ripe\",2\r\n");

    let queries = td.queries();
    let count = queries.iter().find(|q| q.contains("events_v2")).unwrap();
    assert!(count.starts_with("-- project_id: "), "{count}");
    assert!(
        count.contains(
            "-- task_name: +wf+count\n-- count the day's events\nselect count(1) as cnt, '2024-01-01' as day"
        ),
        "{count}"
    );
    let ctas = queries.iter().find(|q| q.contains("select 1 as one")).unwrap();
    assert!(ctas.contains("DROP TABLE IF EXISTS \"summary\";\nCREATE TABLE \"summary\" AS\nselect 1 as one"), "{ctas}");
    assert!(queries.iter().any(|q| q.contains("SELECT * FROM \"summary\" LIMIT 20")), "preview job: {queries:?}");
    assert_eq!(queries.iter().filter(|q| q.contains("select ready_flag")).count(), 2, "td_wait> ran two rounds");
    assert!(err.contains("preview of table summary"), "{err}");

    let requests = td.requests();
    assert!(requests.iter().all(|r| r.authorization.as_deref() == Some(&format!("TD1 {KEY}")[..])));
    let issued: Vec<_> = requests.iter().filter(|r| r.path.starts_with("/v3/job/issue/")).collect();
    let mut keys: Vec<_> = issued.iter().map(|r| r.form["domain_key"].clone()).collect();
    assert!(keys.iter().all(|k| k.starts_with("spade-")));
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), issued.len(), "every job has its own domain key");
    let queries_issued = issued.iter().filter(|r| !r.path.contains("/bulkload/"));
    assert!(queries_issued.into_iter().all(|r| r.form["scheduled_time"] == "1704067200"), "session time");
    let partial = requests.iter().find(|r| r.path == "/v3/table/partialdelete/analytics/events_v2").unwrap();
    assert_eq!(partial.method, "POST");
    assert_eq!((partial.form["from"].as_str(), partial.form["to"].as_str()), ("1704067200", "1704074400"));
    let export = requests.iter().find(|r| r.path.starts_with("/v3/job/result_export/")).unwrap();
    assert_eq!(export.form["result_connection_id"], "7");
    assert_eq!(export.form["result_connection_settings"], r#"{"bucket":"reports","path":"/daily"}"#);
    let load = requests.iter().find(|r| r.path == "/v3/job/issue/bulkload/analytics").unwrap();
    assert_eq!(load.form["table"], "imported");
    let config: serde_json::Value = serde_json::from_str(&load.form["config"]).unwrap();
    assert_eq!(config["in"]["path_prefix"], "logs/2024-01-01/", "the config file is a template");
    assert_eq!(config["in"]["access_key_id"], "AKIATESTKEY", "${{secret:...}} is filled in");
    assert!(
        requests
            .iter()
            .any(|r| r.path == "/v3/bulk_loads/daily_import/jobs" && r.form["domain_key"].starts_with("spade-"))
    );
    // Each job was checked while running and again when done: polling, not waiting.
    assert!(requests.iter().filter(|r| r.path.starts_with("/v3/job/status/")).count() >= 2 * issued.len());
}

#[test]
fn td_failures_name_the_task_and_the_cause_never_the_key() {
    let td = TdStandIn::start(KEY);
    td.create_database("analytics");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let wf = |body: &str| format!("{}{body}", header(td.port));

    // No API key.
    project(dir, td.port, &wf("+q:\n  td>:\n  query: select 1\n"));
    let out = run(dir);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("The 'td.apikey' secret is missing"), "{}", stderr(&out));

    // A wrong key: TD's 401, and the key is not shown.
    set_key(dir, "wrong-key-5678");
    let out = run(dir);
    let err = stderr(&out);
    assert!(!out.status.success());
    assert!(
        err.contains("+wf+q") && err.contains("answered 401") && err.contains("check the td.apikey secret"),
        "{err}"
    );
    assert!(!err.contains("wrong-key-5678"), "{err}");

    // A failing job: the job's own error output.
    set_key(dir, KEY);
    project(dir, td.port, &wf("+q:\n  td>:\n  query: select FAIL_ME\n"));
    let out = run(dir);
    let err = stderr(&out);
    assert!(!out.status.success());
    assert!(err.contains("+wf+q") && err.contains("Column 'FAIL_ME' cannot be resolved"), "{err}");

    // A database that does not exist: TD's 404 message.
    project(dir, td.port, &wf("+q:\n  td>:\n  query: select 1\n  database: nope\n"));
    let out = run(dir);
    assert!(stderr(&out).contains("Database 'nope' does not exist"), "{}", stderr(&out));

    // Bad params are refused before any request.
    let before = td.requests().len();
    project(dir, td.port, &wf("+q:\n  td>:\n  query: select 1\n  insert_into: a\n  create_table: b\n"));
    let out = run(dir);
    assert!(stderr(&out).contains("Setting both insert_into and create_table is invalid"), "{}", stderr(&out));
    assert_eq!(td.requests().len(), before);

    // Without the project's grant the stand-in is out of reach.
    project(dir, td.port, &wf("+q:\n  td>:\n  query: select 1\n"));
    std::fs::remove_file(dir.join("spade.yml")).unwrap();
    let out = run(dir);
    let err = stderr(&out);
    assert!(!out.status.success());
    assert!(err.contains("refused by spade"), "{err}");
    assert_eq!(td.requests().len(), before);
}
