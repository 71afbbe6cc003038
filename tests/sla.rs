//! End-to-end `sla:` (Digdag's SLA, as its acceptance test SlaIT exercises it): the `^sla`
//! tasks, `alert:`, `fail:`, `time:` counted from the run time, and no SLA for an attempt
//! that ends in time.
//!
//! No test races the clock: an SLA that must fire has a deadline that passed before the
//! attempt started (`--run-time` in the past) or one second after the start while the
//! workflow's only task waits for three; an SLA that must not fire is an hour away.

mod support;
use support::*;

fn project(dig: &str) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("wf.dig"), dig).unwrap();
    tmp
}

/// SlaIT's duration_custom + duration_fail_enabled + duration_alert_default in one: the
/// deadline passes while `+main` still waits.
#[test]
fn a_missed_duration_runs_the_sla_tasks_alerts_and_fails_the_attempt() {
    let tmp = project(
        "timezone: UTC\n\
         sla:\n  duration: 00:00:01\n  fail: true\n  +notice:\n    echo>: sla missed\n\
         +main:\n  wait>: 3s\n\
         +after:\n  echo>: after main\n",
    );
    let out = spade(tmp.path(), &["run", "wf", "--session", "2024-03-01"]);
    let err = stderr(&out);
    assert!(!out.status.success(), "fail: true fails the attempt\n{err}");
    // The SLA tasks ran, and the workflow's own tasks were not stopped (as in Digdag).
    assert_eq!(stdout_lines(&out), vec!["sla missed", "after main"], "{err}");
    assert!(
        err.contains(
            "warning: +wf^sla^alert: SLA violation: workflow wf (session 2024-03-01T00:00:00+00:00) did not finish by "
        ) && err.contains("(sla: duration 00:00:01); make it faster or move the deadline"),
        "{err}"
    );
    assert!(err.contains("error: task +wf^sla^fail failed: SLA violation: workflow wf"), "{err}");
    assert!(err.contains("Failed: +wf^sla^fail (attempt 1"), "{err}");

    let tasks = String::from_utf8_lossy(&spade(tmp.path(), &["tasks", "1"]).stdout).into_owned();
    let row = |name: &str| tasks.lines().find(|l| l.starts_with(&format!("{name} "))).unwrap_or_default().to_string();
    assert!(row("+wf^sla^alert").contains("success"), "{tasks}");
    assert!(row("+wf^sla^fail").contains("fail>") && row("+wf^sla^fail").contains("error"), "{tasks}");
    assert!(row("+wf^sla+notice").contains("echo>") && row("+wf^sla+notice").contains("success"), "{tasks}");
    assert!(row("+wf+main").contains("success") && row("+wf+after").contains("success"), "{tasks}");
    let log = String::from_utf8_lossy(&spade(tmp.path(), &["log", "1", "+wf^sla^alert"]).stdout).into_owned();
    assert!(log.contains("warn") && log.contains("SLA violation"), "{log}");
}

/// `time:` is a time of day in the workflow's zone on the run time's day (the next day when
/// it has passed); for a scheduled session the run time is its slot's. Here the deadline,
/// 09:00 Tokyo on 2024-01-01, passed long before the attempt starts: the SLA fires at once.
/// Without `fail:` the attempt succeeds (SlaIT's time_fail_default).
#[test]
fn a_time_before_now_fires_at_once_and_without_fail_the_attempt_succeeds() {
    let tmp = project(
        "timezone: Asia/Tokyo\n\
         sla:\n  time: 09:00\n  +notice:\n    echo>: late for ${session_date}\n\
         +main:\n  wait>: 2s\n",
    );
    let out = spade(tmp.path(), &["run", "wf", "--session", "2024-01-01", "--run-time", "2024-01-01T00:00:00+09:00"]);
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert_eq!(stdout_lines(&out), vec!["late for 2024-01-01"], "{err}");
    assert!(err.contains("did not finish by 2024-01-01 09:00:00 +09:00 (sla: time 09:00:00)"), "{err}");
}

/// SlaIT's *_alert_disabled: no alert, no failure; a failing `^sla` task is reported and
/// fails the attempt.
#[test]
fn a_failing_sla_task_is_reported_and_alert_false_stays_quiet() {
    let tmp = project(
        "timezone: UTC\n\
         sla:\n  time: 00:00:30\n  alert: false\n  +page:\n    fail>: the pager is down; call the on-call engineer\n\
         +main:\n  wait>: 2s\n",
    );
    let out = spade(tmp.path(), &["run", "wf", "--session", "2024-01-01", "--run-time", "2024-01-01T00:00:00Z"]);
    let err = stderr(&out);
    assert!(!out.status.success(), "{err}");
    assert!(!err.contains("warning:"), "alert: false\n{err}");
    assert!(err.contains("error: task +wf^sla+page failed: the pager is down; call the on-call engineer"), "{err}");
    assert!(err.contains("Failed: +wf^sla+page"), "{err}");
}

/// The SLA must not fire for an attempt that finished before its deadline (nor keep the
/// run waiting for it).
#[test]
fn an_attempt_that_ends_in_time_runs_no_sla_tasks() {
    let tmp = project(
        "sla:\n  duration: 01:00:00\n  fail: true\n  +notice:\n    echo>: sla missed\n\
         +main:\n  echo>: done\n",
    );
    let out = spade(tmp.path(), &["run", "wf"]);
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert_eq!(stdout_lines(&out), vec!["done"]);
    assert!(!err.contains("SLA"), "{err}");
    let tasks = String::from_utf8_lossy(&spade(tmp.path(), &["tasks", "1"]).stdout).into_owned();
    assert!(!tasks.contains("^sla"), "{tasks}");
}

#[test]
fn check_shows_the_sla_and_bad_slas_are_load_errors() {
    let tmp = project(
        "sla:\n  duration: 00:30:00\n  fail: true\n  +notice:\n    echo>: late\n\
         +main:\n  echo>: done\n",
    );
    let out = spade(tmp.path(), &["check"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        text.contains(
            "  sla: duration 00:30:00 after the attempt starts; when missed: alert, fail the attempt, run ^sla tasks"
        ),
        "{text}"
    );
    assert!(text.contains("+wf^sla+notice  echo>"), "{text}");

    std::fs::write(tmp.path().join("wf.dig"), "sla:\n  time: 9am\n+main:\n  echo>: done\n").unwrap();
    let out = spade(tmp.path(), &["run", "wf"]);
    let err = stderr(&out);
    assert!(!out.status.success() && out.stdout.is_empty(), "{err}");
    assert!(err.contains("wf.dig:2:") && err.contains("sla time must be HH:MM or HH:MM:SS"), "{err}");

    std::fs::write(tmp.path().join("wf.dig"), "sla:\n  duration: 00:01\n+main:\n  echo>: done\n").unwrap();
    let out = spade(tmp.path(), &["run", "wf", "--run-time", "yesterday"]);
    let err = stderr(&out);
    assert!(!out.status.success() && err.contains("--run-time: 'yesterday' is not an ISO 8601 time"), "{err}");
}
