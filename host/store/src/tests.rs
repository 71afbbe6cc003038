//! The store contract, checked on every backend (PostgreSQL when reachable).

use super::*;
use std::time::Duration;

/// PostgreSQL for the tests: `$SPADE_TEST_POSTGRES`, else the local server every dev and CI
/// machine of this project runs. Each test gets a schema of its own, dropped afterwards.
fn postgres_url() -> String {
    std::env::var("SPADE_TEST_POSTGRES").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// Whether a PostgreSQL that does not answer fails the tests: when `SPADE_TEST_POSTGRES` names
/// one, and in CI (`CI` set), whose machines always run one. Elsewhere it is a printed note.
fn postgres_required() -> bool {
    std::env::var_os("SPADE_TEST_POSTGRES").is_some() || std::env::var_os("CI").is_some()
}

/// Runs `test` against a fresh SQLite store and a fresh PostgreSQL schema (skipped with a
/// note when no server answers, unless [`postgres_required`]).
fn each_store(test: impl Fn(&mut dyn Store)) {
    test(&mut SqliteStore::in_memory().unwrap());
    let schema = format!("spade_test_{}", uuid::Uuid::new_v4().simple());
    match PgStore::open_schema(&postgres_url(), &schema) {
        Ok(mut pg) => {
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| test(&mut pg)));
            pg.drop_schema().unwrap();
            if let Err(panic) = result {
                std::panic::resume_unwind(panic);
            }
        }
        Err(e) if !postgres_required() => {
            eprintln!("note: PostgreSQL not reachable at {} ({e}); tested SQLite only", postgres_url());
        }
        Err(e) => panic!(
            "PostgreSQL is required here (SPADE_TEST_POSTGRES or CI is set) but {} does not answer: {e}",
            postgres_url()
        ),
    }
}

fn new_attempt(name: Option<&str>) -> NewAttempt {
    NewAttempt {
        project: "p".into(),
        workflow: "wf".into(),
        session_time: "2024-01-01T00:00:00+00:00".into(),
        timezone: "UTC".into(),
        name: name.map(str::to_string),
        params: Object::new(),
    }
}

#[test]
fn sessions_are_unique_and_attempt_names_too() {
    each_store(|s| {
        let a = s.begin_attempt(&new_attempt(None)).unwrap();
        let b = s.begin_attempt(&new_attempt(None)).unwrap();
        assert_eq!(a.session_id, b.session_id);
        assert_eq!(a.name, "");
        assert_ne!(a.attempt_id, b.attempt_id);
        assert_ne!(b.name, "");
        s.begin_attempt(&new_attempt(Some("x"))).unwrap();
        let err = s.begin_attempt(&new_attempt(Some("x"))).unwrap_err();
        assert!(err.to_string().contains("already has an attempt named 'x'"), "{err}");
    });
}

#[test]
fn saved_results_replay_latest_success_of_earlier_attempts() {
    each_store(|s| {
        let a = s.begin_attempt(&new_attempt(None)).unwrap();
        let mut done = Done::default();
        done.store_params.insert("k".into(), "v".into());
        s.write(&[
            TaskChange {
                attempt_id: a.attempt_id,
                index: 0,
                name: "+wf+a".into(),
                state: TaskState::Success,
                retry_count: 0,
                request: None,
                result: Some(done.clone()),
                error: None,
                usage: None,
            },
            TaskChange {
                attempt_id: a.attempt_id,
                index: 1,
                name: "+wf+b".into(),
                state: TaskState::Error,
                retry_count: 0,
                request: None,
                result: None,
                error: Some("boom".into()),
                usage: None,
            },
        ])
        .unwrap();
        let b = s.begin_attempt(&new_attempt(None)).unwrap();
        let saved = s.saved_results(b.session_id, b.attempt_id).unwrap();
        assert_eq!(saved.len(), 1);
        assert_eq!(saved["+wf+a"], done);
        // The running attempt's own rows are not "earlier".
        assert!(s.saved_results(a.session_id, a.attempt_id).unwrap().is_empty());
    });
}

#[test]
fn task_logs_are_kept_per_attempt_and_filtered_by_prefix() {
    each_store(|s| {
        let a = s.begin_attempt(&new_attempt(None)).unwrap();
        let line = |task: &str, msg: &str| LogLine {
            attempt_id: a.attempt_id,
            task_name: task.into(),
            at_ms: 1,
            level: "info".into(),
            message: msg.into(),
        };
        s.append_logs(&[line("+wf+a", "one"), line("+wf+b", "two"), line("+wf+a", "three")]).unwrap();
        let all = s.task_logs(a.attempt_id, "").unwrap();
        assert_eq!(all.iter().map(|l| l.message.as_str()).collect::<Vec<_>>(), ["one", "two", "three"]);
        let a_only = s.task_logs(a.attempt_id, "+wf+a").unwrap();
        assert_eq!(a_only.len(), 2);
        assert!(s.task_logs(a.attempt_id + 1, "").unwrap().is_empty());
    });
}

#[test]
fn revisions_are_recorded_once_per_name() {
    each_store(|s| {
        let wf = WorkflowDefinition { name: "wf".into(), timezone: "UTC".into(), config: Object::new() };
        let r1 = s.put_revision("p", "abc", std::slice::from_ref(&wf)).unwrap();
        assert_eq!(s.put_revision("p", "abc", std::slice::from_ref(&wf)).unwrap(), r1);
        assert_ne!(s.put_revision("p", "def", &[wf]).unwrap(), r1);
        let a = s.begin_attempt(&new_attempt(None)).unwrap();
        s.link_revision(a.attempt_id, r1).unwrap();
    });
}

#[test]
fn kill_requests_and_owners_are_recorded() {
    each_store(|s| {
        let a = s.begin_attempt(&new_attempt(None)).unwrap();
        assert_eq!(s.attempt_owner(a.attempt_id).unwrap(), None);
        s.claim_attempt(a.attempt_id, 4242).unwrap();
        assert_eq!(s.attempt_owner(a.attempt_id).unwrap(), Some(4242));
        assert!(!s.cancel_requested(a.attempt_id).unwrap());
        s.request_cancel(a.attempt_id).unwrap();
        assert!(s.cancel_requested(a.attempt_id).unwrap());
        assert!(matches!(s.request_cancel(999), Err(StoreError::NoSuchAttempt(999))));
    });
}

#[test]
fn attempt_results_are_that_attempts_successes() {
    each_store(|s| {
        let a = s.begin_attempt(&new_attempt(None)).unwrap();
        s.write(&[
            change(a.attempt_id, 0, "+wf+ok", TaskState::Success),
            change(a.attempt_id, 1, "+wf+bad", TaskState::Error),
        ])
        .unwrap();
        let r = s.attempt_results(a.attempt_id).unwrap();
        assert_eq!(r.keys().collect::<Vec<_>>(), vec!["+wf+ok"]);
    });
}

#[test]
fn a_task_keeps_the_time_it_first_started() {
    each_store(|s| {
        let a = s.begin_attempt(&new_attempt(None)).unwrap();
        s.write(&[
            change(a.attempt_id, 0, "+wf+t", TaskState::Running),
            change(a.attempt_id, 1, "+wf+g", TaskState::Success),
        ])
        .unwrap();
        let started = s.tasks(a.attempt_id).unwrap()[0].started_at_ms;
        assert!(started.is_some());
        s.write(&[change(a.attempt_id, 0, "+wf+t", TaskState::Success)]).unwrap();
        let tasks = s.tasks(a.attempt_id).unwrap();
        assert_eq!(tasks[0].started_at_ms, started, "a later change keeps the start time");
        assert_eq!(tasks[1].started_at_ms, None, "a task that never ran has none");
    });
}

#[test]
fn concurrent_first_opens_migrate_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let path = path.clone();
            std::thread::spawn(move || SqliteStore::open(&path).map(|_| ()))
        })
        .collect();
    for h in handles {
        h.join().unwrap().unwrap();
    }
}

#[test]
fn reopening_keeps_state_and_schema_version() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    {
        let mut s = SqliteStore::open(&path).unwrap();
        s.set_value("p", "last_session", "x").unwrap();
    }
    let mut s = SqliteStore::open(&path).unwrap();
    assert_eq!(s.get_value("p", "last_session").unwrap().as_deref(), Some("x"));
}

/// A database of schema 2 (one project, values in `kv`) upgraded to 3 keeps its values,
/// now the project's.
#[test]
fn values_of_a_one_project_database_survive_the_upgrade_to_project_scope() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        for sql in &sqlite::MIGRATIONS[..2] {
            conn.execute_batch(sql).unwrap();
        }
        conn.execute_batch(
            "PRAGMA user_version = 2;
             INSERT INTO projects (name, created_at) VALUES ('mine', 0);
             INSERT INTO kv (key, value) VALUES ('schedule:daily', '{\"next\":1}');",
        )
        .unwrap();
    }
    let mut s = SqliteStore::open(&path).unwrap();
    assert_eq!(s.get_value("mine", "schedule:daily").unwrap().as_deref(), Some("{\"next\":1}"));
    assert_eq!(s.get_value("other", "schedule:daily").unwrap(), None);
}

fn definition(name: &str) -> WorkflowDefinition {
    let mut config = Object::new();
    config.insert("+t".into(), serde_json::json!({"echo>": name}));
    WorkflowDefinition { name: name.into(), timezone: "UTC".into(), config }
}

#[test]
fn pushed_revisions_keep_their_archive_once_and_never_change() {
    each_store(|s| {
        let defs = [definition("daily"), definition("adhoc")];
        let push = |s: &mut dyn Store, project: &str, revision: &str, archive: &[u8], digest: &str| {
            s.push_revision(&NewRevision { project, revision, archive, digest, workflows: &defs })
        };
        let first = push(s, "etl", "r1", b"one", "d1").unwrap();
        assert!(first.created);
        assert_eq!(first.project.name, "etl");
        assert_eq!(first.revision.archive_digest.as_deref(), Some("d1"));
        assert_eq!(first.revision.archive_size, Some(3));
        assert_eq!(first.project.latest.as_ref(), Some(&first.revision));

        // A retried push of the same content is a no-op; other content is refused.
        let again = push(s, "etl", "r1", b"one", "d1").unwrap();
        assert!(!again.created);
        assert_eq!(again.revision, first.revision);
        let err = push(s, "etl", "r1", b"two", "d2").unwrap_err();
        assert!(matches!(err, StoreError::RevisionConflict { .. }), "{err}");
        assert!(err.to_string().contains("new revision name"), "{err}");
        assert!(matches!(s.archive("d2"), Err(StoreError::NoSuchArchive(_))), "the refused push stored nothing");

        let second = push(s, "etl", "r2", b"two", "d2").unwrap();
        // Another project may hold the same content: one archive row serves both.
        let other = push(s, "web", "r1", b"one", "d1").unwrap();
        assert_ne!(other.project.id, first.project.id);

        let names: Vec<String> = s.projects().unwrap().into_iter().map(|p| p.name).collect();
        assert_eq!(names, ["etl", "web"]);
        let etl = s.project_named("etl").unwrap().unwrap();
        assert_eq!(etl.latest.as_ref().map(|r| r.name.as_str()), Some("r2"));
        assert_eq!(s.project(etl.id).unwrap(), etl);
        let revisions: Vec<String> = s.revisions(etl.id).unwrap().into_iter().map(|r| r.name).collect();
        assert_eq!(revisions, ["r2", "r1"], "newest first");
        assert_eq!(s.revision(etl.id, None).unwrap(), second.revision);
        assert_eq!(s.revision(etl.id, Some("r1")).unwrap(), first.revision);
        assert!(matches!(s.revision(etl.id, Some("r9")), Err(StoreError::NoSuchRevision { .. })));
        assert!(matches!(s.project(9999), Err(StoreError::NoSuchProject(_))));
        assert_eq!(s.project_named("nope").unwrap(), None);

        assert_eq!(s.archive("d1").unwrap(), b"one");
        let wfs: Vec<String> = s.workflow_definitions(first.revision.id).unwrap().into_iter().map(|w| w.name).collect();
        assert_eq!(wfs, ["adhoc", "daily"]);
        assert_eq!(s.workflow_definitions(first.revision.id).unwrap()[1], defs[0]);
    });
}

#[test]
fn values_are_scoped_by_project() {
    each_store(|s| {
        s.set_value("a", "schedule:daily", "1").unwrap();
        s.set_value("b", "schedule:daily", "2").unwrap();
        assert_eq!(s.get_value("a", "schedule:daily").unwrap().as_deref(), Some("1"));
        assert_eq!(s.get_value("b", "schedule:daily").unwrap().as_deref(), Some("2"));
        assert!(s.swap_value("a", "schedule:daily", Some("1"), "3").unwrap());
        assert_eq!(s.get_value("b", "schedule:daily").unwrap().as_deref(), Some("2"));
    });
}

fn change(attempt_id: i64, index: u32, name: &str, state: TaskState) -> TaskChange {
    TaskChange {
        attempt_id,
        index,
        name: name.into(),
        state,
        retry_count: 0,
        request: None,
        result: (state == TaskState::Success).then(Done::default),
        error: (state == TaskState::Error).then(|| "boom".to_string()),
        usage: None,
    }
}

#[test]
fn task_usage_is_kept_until_a_change_brings_a_new_one() {
    each_store(|s| {
        let a = s.begin_attempt(&new_attempt(None)).unwrap();
        let used = spade_api::Usage {
            wall: std::time::Duration::from_millis(1500),
            cpu: std::time::Duration::from_millis(320),
            peak_memory_bytes: 64 << 20,
        };
        s.write(&[change(a.attempt_id, 0, "+wf+a", TaskState::Running)]).unwrap();
        assert_eq!(s.tasks(a.attempt_id).unwrap()[0].usage, None, "not run yet");
        s.write(&[TaskChange { usage: Some(used), ..change(a.attempt_id, 0, "+wf+a", TaskState::Polling) }]).unwrap();
        s.write(&[change(a.attempt_id, 0, "+wf+a", TaskState::Success)]).unwrap();
        let t = &s.tasks(a.attempt_id).unwrap()[0];
        assert_eq!((t.state, t.usage), (TaskState::Success, Some(used)));
    });
}

#[test]
fn list_sessions_filters_by_workflow_and_shows_the_latest_attempt() {
    each_store(|s| {
        assert!(s.list_sessions(None).unwrap().is_empty());
        let a = s.begin_attempt(&new_attempt(None)).unwrap();
        s.finish_attempt(a.attempt_id, AttemptStatus::Error).unwrap();
        let b = s.begin_attempt(&new_attempt(None)).unwrap();
        let other = s.begin_attempt(&NewAttempt { workflow: "other".into(), ..new_attempt(None) }).unwrap();

        let all = s.list_sessions(None).unwrap();
        assert_eq!(all.len(), 2);
        // Newest activity first.
        assert_eq!(all[0].workflow, "other");
        assert_eq!(all[0].session_id, other.session_id);

        let wf = s.list_sessions(Some("wf")).unwrap();
        assert_eq!(wf.len(), 1);
        let session = &wf[0];
        assert_eq!(session.session_id, a.session_id);
        assert_eq!(session.session_uuid, a.session_uuid);
        assert_eq!(session.project, "p");
        assert_eq!(session.session_time, "2024-01-01T00:00:00+00:00");
        assert_eq!(session.attempt_count, 2);
        assert_eq!(session.last_attempt_id, Some(b.attempt_id));
        assert_eq!(session.last_status, Some(AttemptStatus::Running));
        assert!(session.last_attempt_at_ms.is_some());
        assert!(s.list_sessions(Some("missing")).unwrap().is_empty());
    });
}

#[test]
fn list_attempts_counts_tasks_per_state_and_filters_by_session() {
    each_store(|s| {
        let mut with_params = new_attempt(None);
        with_params.params.insert("k".into(), "v".into());
        let a = s.begin_attempt(&with_params).unwrap();
        s.write(&[
            change(a.attempt_id, 0, "+wf+a", TaskState::Success),
            change(a.attempt_id, 1, "+wf+b", TaskState::Success),
            change(a.attempt_id, 2, "+wf+c", TaskState::Error),
            change(a.attempt_id, 3, "+wf+d", TaskState::Running),
        ])
        .unwrap();
        s.finish_attempt(a.attempt_id, AttemptStatus::Error).unwrap();
        let b = s.begin_attempt(&new_attempt(None)).unwrap();
        let other = s.begin_attempt(&NewAttempt { workflow: "other".into(), ..new_attempt(None) }).unwrap();

        let all = s.list_attempts(None).unwrap();
        let ids: Vec<i64> = all.iter().map(|i| i.attempt.attempt_id).collect();
        assert_eq!(ids, vec![other.attempt_id, b.attempt_id, a.attempt_id]);

        let session = s.list_attempts(Some(a.session_id)).unwrap();
        assert_eq!(session.len(), 2);
        let first = &session[1];
        assert_eq!(first.attempt, AttemptRecord { status: AttemptStatus::Error, ..a.clone() });
        assert_eq!(first.project, "p");
        assert_eq!(first.timezone, "UTC");
        assert_eq!(first.params.get("k"), Some(&serde_json::Value::String("v".into())));
        assert!(first.finished_at_ms.is_some());
        assert_eq!(first.tasks, TaskCounts { running: 1, polling: 0, success: 2, error: 1, canceled: 0 });
        assert_eq!(first.tasks.total(), 4);
        assert_eq!(session[0].finished_at_ms, None);
        assert_eq!(session[0].tasks.total(), 0);
        assert!(s.list_attempts(Some(9999)).unwrap().is_empty());
    });
}

#[test]
fn attempt_info_reads_one_attempt_or_names_the_missing_id() {
    each_store(|s| {
        let a = s.begin_attempt(&new_attempt(None)).unwrap();
        s.write(&[change(a.attempt_id, 0, "+wf+a", TaskState::Canceled)]).unwrap();
        let info = s.attempt_info(a.attempt_id).unwrap();
        assert_eq!(info.attempt, a);
        assert_eq!(info.tasks.canceled, 1);
        assert_eq!(info.tasks.total(), 1);
        let err = s.attempt_info(a.attempt_id + 100).unwrap_err();
        assert!(matches!(err, StoreError::NoSuchAttempt(id) if id == a.attempt_id + 100), "{err}");
    });
}

#[test]
fn swap_value_lets_one_writer_win() {
    each_store(|s| {
        assert!(s.swap_value("p", "k", None, "1").unwrap(), "unset: the first swap wins");
        assert!(!s.swap_value("p", "k", None, "x").unwrap(), "set: expecting unset loses");
        assert!(!s.swap_value("p", "k", Some("0"), "x").unwrap(), "a stale expectation loses");
        assert!(s.swap_value("p", "k", Some("1"), "2").unwrap());
        assert_eq!(s.get_value("p", "k").unwrap().as_deref(), Some("2"));
    });
}

#[test]
fn postgres_hosts_starting_at_once_migrate_once_and_share_state() {
    let schema = format!("spade_test_{}", uuid::Uuid::new_v4().simple());
    let mut first = match PgStore::open_schema(&postgres_url(), &schema) {
        Ok(store) => store,
        Err(e) if !postgres_required() => {
            eprintln!("note: PostgreSQL not reachable at {} ({e}); skipped", postgres_url());
            return;
        }
        Err(e) => panic!(
            "PostgreSQL is required here (SPADE_TEST_POSTGRES or CI is set) but {} does not answer: {e}",
            postgres_url()
        ),
    };
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let (url, schema) = (postgres_url(), schema.clone());
            std::thread::spawn(move || {
                let mut s = PgStore::open_schema(&url, &schema).unwrap();
                s.begin_attempt(&new_attempt(None)).unwrap().attempt_id
            })
        })
        .collect();
    let mut ids: Vec<i64> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 4, "four attempts of one session, none lost");
    let names: Vec<String> =
        first.session_attempts("p", "wf", "2024-01-01T00:00:00+00:00").unwrap().into_iter().map(|a| a.name).collect();
    assert_eq!(names.iter().filter(|n| n.is_empty()).count(), 1, "one first attempt: {names:?}");
    first.drop_schema().unwrap();
}

#[test]
fn running_attempts_are_listed_with_their_process() {
    each_store(|s| {
        let a = s.begin_attempt(&new_attempt(None)).unwrap();
        s.claim_attempt(a.attempt_id, 77).unwrap();
        let b = s.begin_attempt(&new_attempt(None)).unwrap();
        s.finish_attempt(b.attempt_id, AttemptStatus::Success).unwrap();
        let running = s.running_attempts("p", "wf").unwrap();
        assert_eq!(running.len(), 1);
        assert_eq!((running[0].0.attempt_id, running[0].1), (a.attempt_id, Some(77)));
        assert!(s.running_attempts("p", "other").unwrap().is_empty());
    });
}

#[test]
fn one_batch_may_change_a_task_twice() {
    each_store(|s| {
        let a = s.begin_attempt(&new_attempt(None)).unwrap();
        let request = std::sync::Arc::new(TaskRequest {
            operator: "echo".into(),
            task_name: "+wf+a".into(),
            project_name: "p".into(),
            workflow_name: "wf".into(),
            attempt_id: a.attempt_id,
            session_id: a.session_id,
            session_uuid: a.session_uuid.clone(),
            session_time: a.session_time.clone(),
            timezone: "UTC".into(),
            retry_attempt_name: None,
            command: "hi".into(),
            params: Object::new(),
            local_params: Object::new(),
            raw: Object::new(),
            state: None,
            retry_count: 0,
        });
        let mut running = change(a.attempt_id, 0, "+wf+a", TaskState::Running);
        running.request = Some(request.clone());
        let done = change(a.attempt_id, 0, "+wf+a", TaskState::Success);
        s.write(&[running, done, change(a.attempt_id, 1, "+wf+b", TaskState::Running)]).unwrap();
        let tasks = s.tasks(a.attempt_id).unwrap();
        assert_eq!(tasks.len(), 2);
        assert_eq!(tasks[0].state, TaskState::Success);
        assert_eq!(tasks[0].request.as_ref().map(|r| r.task_name.as_str()), Some("+wf+a"), "the frozen request stays");
        assert!(tasks[0].started_at_ms.is_some(), "it started in this batch");
        let lines: Vec<LogLine> = (0..5)
            .map(|i| LogLine {
                attempt_id: a.attempt_id,
                task_name: "+wf+a".into(),
                at_ms: 1,
                level: "info".into(),
                message: format!("line {i}"),
            })
            .collect();
        s.append_logs(&lines).unwrap();
        let read: Vec<String> = s.task_logs(a.attempt_id, "").unwrap().into_iter().map(|l| l.message).collect();
        assert_eq!(read, ["line 0", "line 1", "line 2", "line 3", "line 4"]);
    });
}

fn call<'a>(task: &'a str, tag: Option<&'a str>) -> NewQueuedCall<'a> {
    NewQueuedCall {
        attempt_id: 1,
        task_name: task,
        archive_digest: Some("d"),
        tag,
        affinity: None,
        request: "{\"r\":1}",
    }
}

#[test]
fn claims_take_free_slots_in_order_and_respect_tags() {
    each_store(|s| {
        let a = s.enqueue(&call("+a", None)).unwrap();
        let gpu = s.enqueue(&call("+gpu", Some("gpu"))).unwrap();
        let b = s.enqueue(&call("+b", None)).unwrap();
        let lease = Duration::from_secs(30);
        let first = s.claim("agent-1", &[], 1, lease).unwrap();
        assert_eq!(first.iter().map(|c| c.id).collect::<Vec<_>>(), [a], "one free slot, the oldest call");
        assert_eq!((first[0].token, first[0].request.as_str()), (1, "{\"r\":1}"));
        let untagged = s.claim("agent-1", &["eu".into()], 5, lease).unwrap();
        assert_eq!(untagged.iter().map(|c| c.id).collect::<Vec<_>>(), [b], "a gpu call needs a gpu agent");
        let tagged = s.claim("agent-2", &["eu".into(), "gpu".into()], 5, lease).unwrap();
        assert_eq!(tagged.iter().map(|c| c.id).collect::<Vec<_>>(), [gpu]);
        assert!(s.claim("agent-3", &["gpu".into()], 5, lease).unwrap().is_empty(), "nothing is claimed twice");
        assert_eq!(s.call_state(a).unwrap(), CallState::Claimed { agent: "agent-1".into() });
    });
}

#[test]
fn only_the_current_holder_completes_and_expired_leases_go_back() {
    each_store(|s| {
        let id = s.enqueue(&call("+a", None)).unwrap();
        let gone = s.claim("dead", &[], 1, Duration::ZERO).unwrap().remove(0);
        std::thread::sleep(Duration::from_millis(5));
        let give_up = |n: i64| format!("given up after {n}");
        assert!(s.requeue_expired(3, &give_up).unwrap().is_empty());
        assert_eq!(s.call_state(id).unwrap(), CallState::Queued, "back in the queue");
        let live = s.claim("live", &[], 1, Duration::from_secs(30)).unwrap().remove(0);
        assert_eq!(live.token, gone.token + 1, "a new claim, a new fencing token");
        // The partitioned agent comes back: its heartbeat and its result are refused.
        assert_eq!(s.heartbeat("dead", &[(id, gone.token)], Duration::from_secs(30)).unwrap(), [Held::Lost]);
        assert!(!s.complete(id, gone.token, "\"late\"").unwrap());
        assert_eq!(
            s.heartbeat("live", &[(id, live.token)], Duration::from_secs(30)).unwrap(),
            [Held::Kept { cancel_requested: false }]
        );
        assert!(s.complete(id, live.token, "\"ok\"").unwrap());
        assert_eq!(s.call_state(id).unwrap(), CallState::Done { outcome: "\"ok\"".into(), agent: Some("live".into()) });
        assert!(!s.complete(id, live.token, "\"twice\"").unwrap(), "a result is recorded once");
        assert!(matches!(s.call_state(9999), Err(StoreError::NoSuchCall(9999))));
    });
}

#[test]
fn a_call_that_keeps_losing_its_agent_is_given_up() {
    each_store(|s| {
        let id = s.enqueue(&call("+crash", None)).unwrap();
        let give_up = |n: i64| format!("lost its agent {n} times");
        for round in 1..=3 {
            let c = s.claim("a", &[], 1, Duration::ZERO).unwrap();
            assert_eq!(c.len(), 1, "round {round}");
            std::thread::sleep(Duration::from_millis(5));
            let given_up = s.requeue_expired(3, &give_up).unwrap();
            assert_eq!(given_up.len(), usize::from(round == 3), "round {round}");
        }
        assert_eq!(
            s.call_state(id).unwrap(),
            CallState::Done { outcome: "lost its agent 3 times".into(), agent: Some("a".into()) }
        );
        assert!(s.claim("a", &[], 1, Duration::from_secs(1)).unwrap().is_empty());
    });
}

#[test]
fn cancelling_ends_a_queued_call_and_tells_a_holder() {
    each_store(|s| {
        let held = s.enqueue(&call("+h", None)).unwrap();
        let queued = s.enqueue(&call("+q", None)).unwrap();
        let claim = s.claim("a", &[], 1, Duration::from_secs(30)).unwrap().remove(0);
        assert_eq!(claim.id, held);
        s.cancel_call(queued, "\"cancelled\"").unwrap();
        assert_eq!(s.call_state(queued).unwrap(), CallState::Done { outcome: "\"cancelled\"".into(), agent: None });
        s.cancel_call(held, "\"cancelled\"").unwrap();
        assert_eq!(s.call_state(held).unwrap(), CallState::Claimed { agent: "a".into() }, "the holder stops it");
        assert_eq!(
            s.heartbeat("a", &[(held, claim.token)], Duration::from_secs(30)).unwrap(),
            [Held::Kept { cancel_requested: true }]
        );
    });
}

#[test]
fn a_tasks_next_poll_goes_to_the_agent_that_runs_its_commands() {
    each_store(|s| {
        let mine = s.enqueue(&NewQueuedCall { affinity: Some("a1"), ..call("+sh", None) }).unwrap();
        let other = s.enqueue(&call("+other", None)).unwrap();
        let lease = Duration::from_secs(30);
        let a2 = s.claim("a2", &[], 5, lease).unwrap();
        assert_eq!(a2.iter().map(|c| c.id).collect::<Vec<_>>(), [other], "a1's poll waits for a1");
        // a1 takes its own poll even with no free slot: the task already holds one there.
        let a1 = s.claim("a1", &[], 0, lease).unwrap();
        assert_eq!(a1.iter().map(|c| c.id).collect::<Vec<_>>(), [mine]);

        // When the agent is gone, the poll is anyone's once it has waited a lease.
        let orphan = s.enqueue(&NewQueuedCall { affinity: Some("dead"), ..call("+sh2", None) }).unwrap();
        assert!(s.claim("a2", &[], 5, lease).unwrap().is_empty());
        std::thread::sleep(Duration::from_millis(5));
        let taken = s.claim("a2", &[], 5, Duration::from_millis(1)).unwrap();
        assert_eq!(taken.iter().map(|c| c.id).collect::<Vec<_>>(), [orphan]);
    });
}

#[test]
fn param_server_values_are_per_project_and_expire() {
    use crate::param_server::{TTL_SECONDS, get, set};
    each_store(|s| {
        assert_eq!(get(s, "p1", "k", 1_000).unwrap(), None);
        set(s, "p1", "k", "v1", 1_000).unwrap();
        set(s, "p2", "k", "other", 1_000).unwrap();
        assert_eq!(get(s, "p1", "k", 1_000).unwrap().as_deref(), Some("v1"));
        assert_eq!(get(s, "p2", "k", 1_000).unwrap().as_deref(), Some("other"));
        set(s, "p1", "k", "v2", 2_000).unwrap();
        assert_eq!(get(s, "p1", "k", 2_000 + TTL_SECONDS).unwrap().as_deref(), Some("v2"));
        assert_eq!(get(s, "p1", "k", 2_001 + TTL_SECONDS).unwrap(), None, "expired");
    });
}
