//! The poll floor and `sla:` of the engine, with an in-process operator host (no wasm).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use spade_api::{CancelToken, Done, Invocation, InvokeError, LogLevel, Object, OperatorHost, Outcome};
use spade_engine::{AttemptInput, AttemptSummary, Console, EngineOptions, run_attempt};
use spade_store::{NewAttempt, SqliteStore, Store};

/// Operators: `spin>: N` polls after 0 s until its N-th call; `block>` polls after 0 s until
/// `release>` ran; `echo>` and `fail>` as usual. Every call is recorded.
#[derive(Default)]
struct Host {
    calls: Mutex<Vec<(String, Instant)>>,
    released: AtomicBool,
}

impl OperatorHost for Host {
    fn has_operator(&self, op: &str) -> bool {
        matches!(op, "spin" | "block" | "release" | "echo" | "fail")
    }

    fn invoke(&self, inv: Invocation<'_>) -> Result<Outcome, InvokeError> {
        let req = inv.request;
        self.calls.lock().unwrap().push((req.task_name.clone(), Instant::now()));
        let done = Outcome::Done(Done::default());
        Ok(match req.operator.as_str() {
            "spin" => {
                let n = req.state.as_ref().and_then(|s| s["n"].as_u64()).unwrap_or(0) + 1;
                if n >= req.command.as_u64().unwrap() {
                    done
                } else {
                    Outcome::Poll { after_seconds: 0, state: json!({"n": n}) }
                }
            }
            "block" if !self.released.load(Ordering::SeqCst) => Outcome::Poll { after_seconds: 0, state: json!({}) },
            "release" => {
                self.released.store(true, Ordering::SeqCst);
                done
            }
            "fail" => Outcome::error(req.command.as_str().unwrap_or("failed")),
            _ => done,
        })
    }
}

#[derive(Default)]
struct Recorder {
    alerts: Mutex<Vec<(String, String)>>,
    failed: Mutex<Vec<(String, String)>>,
}

impl Console for Recorder {
    fn print(&self, _line: &str) {}
    fn log(&self, _task: &str, _level: LogLevel, _message: &str) {}
    fn task_failed(&self, task: &str, message: &str) {
        self.failed.lock().unwrap().push((task.into(), message.into()));
    }
    fn flush(&self) {}
    fn alert(&self, task: &str, message: &str) {
        self.alerts.lock().unwrap().push((task.into(), message.into()));
    }
}

struct Ran {
    summary: AttemptSummary,
    host: Arc<Host>,
    console: Arc<Recorder>,
    store: SqliteStore,
    attempt_id: i64,
}

impl Ran {
    fn called(&self, task: &str) -> usize {
        self.host.calls.lock().unwrap().iter().filter(|(t, _)| t == task).count()
    }
}

fn project(dig: &str) -> PathBuf {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "spade-engine-poll-sla-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("wf.dig"), dig).unwrap();
    dir
}

/// Run `wf.dig` once; `run_time` is the time SLA deadlines count from.
fn run(dig: &str, run_time: chrono::DateTime<chrono::Utc>, min_poll_interval: Duration) -> Ran {
    let dir = project(dig);
    let project = spade_dig::load_project(&dir).unwrap_or_else(|e| panic!("{e}"));
    let wf = &project.workflows[0];
    let mut store = SqliteStore::in_memory().unwrap();
    let session_time = chrono::Utc::now().with_timezone(&wf.timezone);
    let attempt = store
        .begin_attempt(&NewAttempt {
            project: "p".into(),
            workflow: wf.name.clone(),
            session_time: session_time.to_rfc3339(),
            timezone: "UTC".into(),
            name: None,
            params: Object::new(),
        })
        .unwrap();
    let attempt_id = attempt.attempt_id;
    let host = Arc::new(Host::default());
    let console = Arc::new(Recorder::default());
    let input = AttemptInput {
        project_name: "p".into(),
        project_id: 1,
        project_root: dir.clone(),
        workspace: dir.clone(),
        workflow: wf,
        session_time,
        attempt,
        params: Object::new(),
        retry_attempt_name: None,
        saved: HashMap::new(),
        frozen: HashMap::new(),
        cancel: CancelToken::new(),
        run_time: Some(run_time),
    };
    let opts = EngineOptions { workers: 2, min_poll_interval, ..EngineOptions::default() };
    let summary = run_attempt(input, host.clone(), &mut store, console.clone(), None, &opts).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    Ran { summary, host, console, store, attempt_id }
}

fn an_hour_ago() -> chrono::DateTime<chrono::Utc> {
    chrono::Utc::now() - chrono::Duration::hours(1)
}

#[test]
fn the_default_poll_floor_is_a_second() {
    assert_eq!(EngineOptions::default().min_poll_interval, Duration::from_secs(1));
}

#[test]
fn an_operator_asking_for_0s_is_called_no_more_often_than_the_floor() {
    let floor = Duration::from_millis(40);
    let ran = run("+spin:\n  spin>: 6\n", chrono::Utc::now(), floor);
    assert!(ran.summary.success, "{:?}", ran.summary);
    let calls = ran.host.calls.lock().unwrap().iter().map(|(_, at)| *at).collect::<Vec<_>>();
    assert_eq!(calls.len(), 6);
    // Each poll was scheduled at least `floor` after the previous call returned: the
    // timers never fire early, so this lower bound holds however slow the machine is.
    for pair in calls.windows(2) {
        assert!(pair[1] - pair[0] >= floor, "polled again after {:?} (floor {floor:?})", pair[1] - pair[0]);
    }
}

#[test]
fn a_missed_sla_runs_its_tasks_alerts_and_with_fail_fails_the_attempt() {
    // The deadline (run time + 1 s) passed an hour ago: the SLA fires as soon as the attempt
    // runs. `+main` only finishes once `^sla+notice` released it, so nothing here races.
    let ran = run(
        "sla:\n  duration: 00:00:01\n  fail: true\n  +notice:\n    release>: now\n\
         +main:\n  block>: x\n+after:\n  echo>: y\n",
        an_hour_ago(),
        Duration::from_millis(5),
    );
    assert!(!ran.summary.success && !ran.summary.killed);
    assert_eq!(ran.called("+wf^sla+notice"), 1);
    // Running tasks are not stopped, and the ones after them still run (as in Digdag).
    assert_eq!(ran.called("+wf+after"), 1);
    let alerts = ran.console.alerts.lock().unwrap().clone();
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert_eq!(alerts[0].0, "+wf^sla^alert");
    assert!(alerts[0].1.starts_with("SLA violation: workflow wf (session "), "{}", alerts[0].1);
    assert!(alerts[0].1.contains("sla: duration 00:00:01"), "{}", alerts[0].1);
    let failed: Vec<&str> = ran.summary.failed.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(failed, vec!["+wf^sla^fail"]);
    assert!(ran.summary.failed[0].1.contains("SLA violation") && ran.summary.failed[0].1.contains("fail: true"));
    // The alert is in the task log and the SLA tasks in the attempt's task list.
    let mut store = ran.store;
    let logs = store.task_logs(ran.attempt_id, "+wf^sla^alert").unwrap();
    assert!(logs.iter().any(|l| l.level == "warn" && l.message.starts_with("SLA violation")), "{logs:?}");
    let tasks = store.tasks(ran.attempt_id).unwrap();
    let state = |name: &str| tasks.iter().find(|t| t.name == name).map(|t| t.state.as_str().to_string());
    assert_eq!(state("+wf^sla^alert").as_deref(), Some("success"));
    assert_eq!(state("+wf^sla^fail").as_deref(), Some("error"));
    assert_eq!(state("+wf^sla+notice").as_deref(), Some("success"));
}

#[test]
fn a_missed_sla_without_fail_leaves_the_attempt_successful() {
    let ran = run(
        "sla:\n  duration: 00:00:01\n  alert: false\n  +notice:\n    release>: now\n+main:\n  block>: x\n",
        an_hour_ago(),
        Duration::from_millis(5),
    );
    assert!(ran.summary.success, "{:?}", ran.summary);
    assert_eq!(ran.called("+wf^sla+notice"), 1);
    assert!(ran.console.alerts.lock().unwrap().is_empty());
}

#[test]
fn a_failing_sla_task_is_reported_and_fails_the_attempt() {
    // `time: 00:00:30` from a run time of 00:00 two days ago: that deadline has passed.
    let run_time =
        (chrono::Utc::now() - chrono::Duration::days(2)).date_naive().and_hms_opt(0, 0, 0).unwrap().and_utc();
    let ran = run(
        concat!(
            "timezone: UTC\nsla:\n  time: 00:00:30\n  alert: false\n  +release:\n    release>: now\n",
            "  +page:\n    fail>: could not page anyone\n+main:\n  block>: x\n",
        ),
        run_time,
        Duration::from_millis(5),
    );
    assert!(!ran.summary.success);
    assert_eq!(ran.summary.failed, vec![("+wf^sla+page".to_string(), "could not page anyone".to_string())]);
    assert!(
        ran.console.failed.lock().unwrap().iter().any(|(t, m)| t == "+wf^sla+page" && m == "could not page anyone")
    );
    assert!(ran.console.alerts.lock().unwrap().is_empty());
}

#[test]
fn an_attempt_that_ends_before_the_deadline_runs_no_sla_tasks() {
    let ran = run(
        "sla:\n  duration: 01:00:00\n  fail: true\n  +notice:\n    release>: now\n+main:\n  echo>: x\n",
        chrono::Utc::now(),
        Duration::from_millis(5),
    );
    assert!(ran.summary.success, "{:?}", ran.summary);
    assert_eq!(ran.called("+wf^sla+notice"), 0);
    assert!(ran.console.alerts.lock().unwrap().is_empty());
    assert_eq!(ran.summary.tasks, 2);
}
