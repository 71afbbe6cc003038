//! End-to-end checks of behaviour where spade once differed from Digdag (issue 9, section 2
//! of the tracker): fixed-offset time zones, task names, `last_executed_session_*`, a field
//! of an undefined value, a group's `_parallel: ${...}`, and an operator asking to be polled
//! again after 0 seconds. Each runs the real `spade` binary in a project of its own.

mod support;
use support::*;

/// A project holding one workflow file, `wf.dig`.
fn project(dig: &str) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("wf.dig"), dig).unwrap();
    tmp
}

/// Runs `wf.dig` for the session given; asserts it succeeded and returns what it echoed.
fn run_ok(tmp: &tempfile::TempDir, session: &str) -> Vec<String> {
    let out = spade(tmp.path(), &["run", "wf.dig", "--session", session]);
    assert!(out.status.success(), "stdout: {:?}\nstderr: {}", stdout_lines(&out), stderr(&out));
    stdout_lines(&out)
}

/// Runs `wf.dig`, expecting it to fail; returns (stdout lines, stderr).
fn run_failing(tmp: &tempfile::TempDir) -> (Vec<String>, String) {
    let out = spade(tmp.path(), &["run", "wf.dig", "--session", "2024-01-01"]);
    assert!(!out.status.success(), "should fail; stdout: {:?}", stdout_lines(&out));
    (stdout_lines(&out), stderr(&out))
}

const TIME_ECHO: &str = "  echo>: ${timezone}|${session_time}|${session_local_time}|${session_tz_offset}|\
                         ${session_unixtime}|${moment(session_time).format('YYYY-MM-DD HH:mm Z')}\n";

#[test]
fn timezone_takes_fixed_offsets_like_java_zone_id() {
    // Digdag's own acceptance tests write `timezone: +09:00`, unquoted.
    let cases = [
        ("+09:00", "+09:00|2024-01-01T00:00:00+09:00|2024-01-01 00:00:00|+0900|1704034800|2024-01-01 00:00 +09:00"),
        ("\"-0530\"", "-05:30|2024-01-01T00:00:00-05:30|2024-01-01 00:00:00|-0530|1704087000|2024-01-01 00:00 -05:30"),
        ("\"+9\"", "+09:00|2024-01-01T00:00:00+09:00|2024-01-01 00:00:00|+0900|1704034800|2024-01-01 00:00 +09:00"),
        ("UTC+9", "UTC+09:00|2024-01-01T00:00:00+09:00|2024-01-01 00:00:00|+0900|1704034800|2024-01-01 00:00 +09:00"),
        ("GMT-3", "GMT-03:00|2024-01-01T00:00:00-03:00|2024-01-01 00:00:00|-0300|1704078000|2024-01-01 00:00 -03:00"),
        ("Z", "Z|2024-01-01T00:00:00+00:00|2024-01-01 00:00:00|+0000|1704067200|2024-01-01 00:00 +00:00"),
        ("UTC", "UTC|2024-01-01T00:00:00+00:00|2024-01-01 00:00:00|+0000|1704067200|2024-01-01 00:00 +00:00"),
        (
            "Asia/Tokyo",
            "Asia/Tokyo|2024-01-01T00:00:00+09:00|2024-01-01 00:00:00|+0900|1704034800|2024-01-01 00:00 +09:00",
        ),
    ];
    for (zone, want) in cases {
        let tmp = project(&format!("timezone: {zone}\n+show:\n{TIME_ECHO}"));
        assert_eq!(run_ok(&tmp, "2024-01-01 00:00:00"), vec![want.to_string()], "timezone: {zone}");
    }
}

#[test]
fn a_fixed_offset_zone_drives_schedules_and_the_session_of_the_day() {
    let tmp = project(
        "timezone: +09:00\nschedule:\n  daily>: 07:00:00\n+show:\n  echo>: ${session_time} ${last_session_time} ${next_session_time}\n",
    );
    // Daily sessions are the midnights of the zone (07:00 is when they run).
    assert_eq!(
        run_ok(&tmp, "2024-03-02"),
        vec!["2024-03-02T00:00:00+09:00 2024-03-01T00:00:00+09:00 2024-03-03T00:00:00+09:00"]
    );
}

#[test]
fn a_bad_timezone_is_a_load_error_that_says_what_to_write() {
    let tmp = project("+a:\n  echo>: never\n_export: {}\ntimezone: \"+19:00\"\n");
    let (stdout, err) = run_failing(&tmp);
    assert!(stdout.is_empty(), "{stdout:?}");
    assert!(err.contains("wf.dig:4:"), "{err}");
    assert!(err.contains("'+19:00'") && err.contains("+09:00"), "{err}");
}

#[test]
fn task_names_follow_digdags_rules_at_every_level() {
    // Digdag takes every top-level key starting with '+' as a task, then checks its name
    // (ModelValidator): the same characters are allowed at the top level and in groups.
    let tmp = project("+load_1-x=[a]{b}%&@,.:\n  +inner.step:\n    echo>: ran ${task_name}\n");
    assert_eq!(run_ok(&tmp, "2024-01-01"), vec!["ran +wf+load_1-x=[a]{b}%&@,.+inner.step"]);

    for dig in ["+集計:\n  echo>: x\n", "+group:\n  +集計:\n    echo>: x\n"] {
        let tmp = project(dig);
        let (stdout, err) = run_failing(&tmp);
        assert!(stdout.is_empty(), "{stdout:?}");
        assert!(err.contains("task name '+集計' must not contain '集'"), "{err}");
        assert!(!err.contains("unknown key"), "{err}");
        let line = if dig.starts_with("+集計") { "wf.dig:1:1" } else { "wf.dig:2:3" };
        assert!(err.contains(line), "{err}");
    }
}

#[test]
fn last_executed_session_variables_are_empty_in_local_runs() {
    let tmp = project(
        "+show:\n  echo>: '[${last_executed_session_time}][${last_executed_session_unixtime}]\
         [${last_executed_session_date}][${last_executed_session_tz_offset}]'\n",
    );
    assert_eq!(run_ok(&tmp, "2024-01-01"), vec!["[][][][+0000]"]);
}

#[test]
fn a_field_of_an_undefined_field_fails_the_task() {
    let tmp = project(
        "_export:\n  profile:\n    name: ann\n+known:\n  echo>: '${profile.name}|${profile.address}|'\n\
         +unknown:\n  echo>: ${profile.address.city}\n+after:\n  echo>: not reached\n",
    );
    let (stdout, err) = run_failing(&tmp);
    assert_eq!(stdout, vec!["ann||"]);
    assert!(err.contains("+wf+unknown"), "{err}");
    assert!(err.contains("TypeError"), "{err}");
}

#[test]
fn a_groups_parallel_must_be_literal_while_loops_evaluate_theirs() {
    // Digdag's ParallelIT: parallel_variable_group.dig is refused at push ...
    let tmp = project(
        "_export:\n  parallel: true\n\n+group1:\n  _parallel: ${parallel}\n  +task1:\n    echo>: task1\n  +task2:\n    echo>: task2\n",
    );
    let (stdout, err) = run_failing(&tmp);
    assert!(stdout.is_empty(), "{stdout:?}");
    assert!(err.contains("wf.dig:5:"), "{err}");
    assert!(err.contains("+wf+group1"), "{err}");
    assert!(err.contains("write true, false or {limit: N}"), "{err}");

    // ... and so is a limit that is an expression ...
    let tmp = project("_export:\n  n: 2\n+g:\n  _parallel:\n    limit: ${n}\n  +a:\n    echo>: a\n");
    let (_, err) = run_failing(&tmp);
    assert!(err.contains("wf.dig:4:") && err.contains("limit can't be the expression"), "{err}");

    // ... while parallel_variable_loop.dig runs.
    let tmp = project(
        "_export:\n  parallel: true\n\n+loop:\n  loop>: 2\n  _parallel: ${parallel}\n  _do:\n    +task1:\n      echo>: loop${i},task1\n",
    );
    let mut lines = run_ok(&tmp, "2024-01-01");
    lines.sort();
    assert_eq!(lines, vec!["loop0,task1", "loop1,task1"]);
}

/// An operator asking to be called again after 0 s is called no more than once a second:
/// the calls' log lines (stamped when each call returned) are at least a second apart. A
/// lower bound the engine's timers guarantee, not a timing window.
#[test]
fn polling_after_zero_seconds_is_spaced_by_the_floor() {
    let hostile = hostile_plugin();
    let tmp = project("+poll:\n  hostile>: busy_poll\n  count: 3\n+after:\n  echo>: ${polled}\n");
    std::fs::copy(hostile, tmp.path().join("hostile.wasm")).unwrap();
    std::fs::write(tmp.path().join("spade.yml"), "plugins:\n  - path: hostile.wasm\n    grants: {secrets: [x]}\n")
        .unwrap();
    let out = spade(tmp.path(), &["run", "wf.dig", "--session", "2024-01-01"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout_lines(&out), vec!["3"]);
    let db = rusqlite::Connection::open(tmp.path().join(".spade/state.db")).unwrap();
    let mut stmt = db.prepare("SELECT at FROM task_logs WHERE message LIKE 'busy_poll call %' ORDER BY id").unwrap();
    let at: Vec<i64> = stmt.query_map([], |r| r.get(0)).unwrap().map(Result::unwrap).collect();
    assert_eq!(at.len(), 3, "{at:?}");
    for pair in at.windows(2) {
        assert!(pair[1] - pair[0] >= 1000, "calls {} ms apart: {at:?}", pair[1] - pair[0]);
    }
}
