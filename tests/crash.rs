//! Crash safety of `spade run`: a ~1200-task workflow is killed with SIGKILL 35 times, at points
//! spread over the whole run, and re-run in the same session until it completes. Every echo
//! line must show up at least once over all runs, the state database must stay readable and
//! intact, and a task whose success was committed before a kill must never run again.
//!
//! Kill points are chosen by observed progress, never by the clock:
//! - most kills (`Kill::Committed`) wait until the state database shows a target number of
//!   echo tasks committed as success (checked after every line the run prints); targets are
//!   spread evenly from the first tasks to ~85% of the run;
//! - a few kill a run as soon as it is started (start-up, before any task) or as soon as it
//!   printed its first line (output printed, not yet committed).
//!
//! Two properties of the workflow make every kill land where it is meant to, whatever the
//! machine's speed or load:
//! - every echo line is ~4 KiB long and the test stops reading stdout when it decides to
//!   kill: the engine can write at most the pipe (64 KiB on Linux) plus its stdout buffer
//!   (64 KiB) plus what our reader buffered past that point, so a run with more output than
//!   that still to print cannot have finished: the kill always lands on a run in progress
//!   (the test checks that each run was ended by the SIGKILL, so a bigger pipe elsewhere
//!   would fail it loudly, not make it pass vacuously);
//! - every 5th item's first echo message calls `Math.random()` (it evaluates to nothing), so
//!   its request is volatile and the engine commits everything before running it: the
//!   database is never more than ~20 lines behind stdout, and one commit adds at most ~16
//!   echo tasks, so a progress target is reached well before the run's end and overshot by
//!   little (in between, the engine's timed group commits still happen when they are due).

use std::collections::{BTreeSet, HashSet};
use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use spade_store::{SqliteStore, Store, TaskState};

const ITEMS: usize = 300;
/// Every this many items, a volatile request forces a commit.
const CHECKPOINT_EVERY: usize = 5;
/// Kills placed by committed progress.
const PROGRESS_KILLS: usize = 32;
/// Length of the padding that ends every echo line.
const PAD_LEN: usize = 4000;
/// Output the engine can produce past the last line we read: the pipe (64 KiB), the engine's
/// stdout buffer (64 KiB) and our reader's buffer (8 KiB), in lines.
const UNREAD_LINES: usize = (64 + 64 + 8) * 1024 / PAD_LEN + 1;
/// The most lines a run prints past what the database shows committed (one checkpoint
/// stretch of three echo tasks per item, plus the lines around it).
const COMMIT_LAG_LINES: usize = 3 * CHECKPOINT_EVERY + 6;

fn pad() -> String {
    // Varied, so a torn or shifted write cannot go unnoticed.
    (0..PAD_LEN).map(|i| char::from(b'a' + (i * 7 % 26) as u8)).collect()
}

fn workflow() -> String {
    let items: Vec<String> = (0..ITEMS).map(|i| i.to_string()).collect();
    let pad = pad();
    format!(
        r#"timezone: UTC

+before1:
  echo>: "line before1 {pad}"
+before2:
  echo>: "line before2 {pad}"
+store:
  param_store>:
    stored_value: kept-42
+each:
  for_each>:
    n: [{items}]
  _do:
    +a:
      echo>: "line item ${{n}} a${{n % {CHECKPOINT_EVERY} == 0 && Math.random() >= 0 ? '' : ''}} {pad}"
    +b:
      echo>: "line item ${{n}} b {pad}"
    +c:
      echo>: "line item ${{n}} c {pad}"
+show:
  echo>: "line stored ${{stored_value}} {pad}"
+after:
  echo>: "line after {pad}"
"#,
        items = items.join(", ")
    )
}

/// The echo lines, without their padding.
fn expected_lines() -> BTreeSet<String> {
    let mut lines: BTreeSet<String> =
        ["line before1", "line before2", "line stored kept-42", "line after"].into_iter().map(str::to_string).collect();
    for i in 0..ITEMS {
        for t in ["a", "b", "c"] {
            lines.insert(format!("line item {i} {t}"));
        }
    }
    lines
}

/// When to SIGKILL a run.
#[derive(Clone, Copy, Debug)]
enum Kill {
    Never,
    /// As soon as the process is started (start-up: opening or creating the database, loading).
    AtStart,
    /// As soon as the first line of the run is read.
    AfterFirstLine,
    /// As soon as the database shows this many echo tasks committed as success in all (at
    /// least one more than before the run).
    Committed(usize),
}

struct RunOutput {
    /// Echo lines without their padding.
    stdout: Vec<String>,
    stderr: String,
    status: ExitStatus,
    killed: bool,
    /// Lines read when the kill was decided.
    lines_at_kill: usize,
    /// A kill that had to be made before its progress target was reached (see `run`).
    target_missed: Option<String>,
    /// The kill cut the last line short (a write of the engine interrupted mid-line).
    torn_line: bool,
}

/// std's Child::kill is SIGKILL on Unix: no handler, no flush, no cleanup.
fn kill_now(child: &mut Child) -> bool {
    child.kill().unwrap();
    true
}

/// Largest attempt id in the database (0 without one).
fn max_attempt_id(db: &Path) -> i64 {
    if !db.exists() {
        return 0;
    }
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.busy_timeout(Duration::from_secs(10)).unwrap();
    conn.query_row("SELECT coalesce(max(id), 0) FROM attempts", [], |r| r.get(0)).unwrap()
}

/// Echo tasks committed as success by attempts after `after_attempt` (the run in progress),
/// counting only tasks that ran there (replayed ones carry no request). Task rows are keyed
/// `attempt_id << 32 | index`; the columns read come before the (long) request text.
fn committed_since(conn: &rusqlite::Connection, after_attempt: i64) -> usize {
    conn.query_row(
        "SELECT count(*) FROM tasks WHERE id >= ?1 AND state = 'success' AND request IS NOT NULL \
         AND (name LIKE '%+a' OR name LIKE '%+b' OR name LIKE '%+c' OR name LIKE '%+before_' \
              OR name LIKE '%+show' OR name LIKE '%+after')",
        [(after_attempt + 1) << 32],
        |r| r.get::<_, i64>(0),
    )
    .unwrap() as usize
}

/// Kills the child if a run hangs (a failure, reported by `run`); not a synchronisation.
fn watchdog(pid: u32) -> (mpsc::Sender<()>, std::thread::JoinHandle<bool>) {
    let (tx, rx) = mpsc::channel::<()>();
    let handle = std::thread::spawn(move || {
        if let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(Duration::from_secs(120)) {
            let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
            return true;
        }
        false
    });
    (tx, handle)
}

/// Run `spade run` in `dir` and kill it as `kill` says. `before` is the number of echo tasks
/// committed before the run, `total` the workflow's.
fn run(dir: &Path, kill: Kill, before: usize, total: usize) -> RunOutput {
    let db = dir.join(".spade/state.db");
    let after_attempt = max_attempt_id(&db);
    let mut child: Child = Command::new(env!("CARGO_BIN_EXE_spade"))
        .args(["run", "wf.dig", "--session", "2024-01-01"])
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spade starts");
    let (stop_watchdog, watchdog) = watchdog(child.id());
    // stderr is drained by a thread so a full pipe never stalls the child; stdout is read
    // here, and not read any further once the kill is decided (see the module comment).
    let mut err = child.stderr.take().unwrap();
    let err_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        err.read_to_end(&mut buf).unwrap();
        buf
    });
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let pad = pad();
    let mut raw: Vec<Vec<u8>> = Vec::new();
    let mut killed = false;
    let mut target_missed = None;
    let mut conn: Option<rusqlite::Connection> = None;
    if let Kill::AtStart = kill {
        killed = kill_now(&mut child);
    }
    // Lines this run will print at least: those of every echo task not committed before it.
    let remaining = total - before;
    while !killed {
        let mut line = Vec::new();
        if out.read_until(b'\n', &mut line).unwrap() == 0 {
            break; // stdout closed: the process is exiting on its own.
        }
        raw.push(line);
        match kill {
            Kill::Never | Kill::AtStart => {}
            Kill::AfterFirstLine => killed = kill_now(&mut child),
            Kill::Committed(target) => {
                let need = target.saturating_sub(before).max(1);
                let conn = conn.get_or_insert_with(|| {
                    let c = rusqlite::Connection::open(&db).expect("the run's database opens");
                    c.busy_timeout(Duration::from_secs(10)).unwrap();
                    c
                });
                let done = committed_since(conn, after_attempt);
                if done >= need {
                    killed = kill_now(&mut child);
                } else if raw.len() + UNREAD_LINES + 2 >= remaining {
                    // Reading on could let the run finish: kill now, and fail the test below.
                    target_missed = Some(format!(
                        "{kill:?}: after {} lines only {done} of {need} echo tasks were committed",
                        raw.len()
                    ));
                    killed = kill_now(&mut child);
                }
            }
        }
    }
    drop(conn);
    let lines_at_kill = raw.len();
    // The rest of what reached the pipe before the kill was printed by this run too.
    loop {
        let mut line = Vec::new();
        if out.read_until(b'\n', &mut line).unwrap() == 0 {
            break;
        }
        raw.push(line);
    }
    // Stopped before the child is reaped, so it can never signal a recycled process id.
    let _ = stop_watchdog.send(());
    let hung = watchdog.join().unwrap();
    let status = child.wait().unwrap();
    assert!(!hung, "a run ({kill:?}) took over 120 s and was killed");
    let stderr = String::from_utf8_lossy(&err_reader.join().unwrap()).into_owned();

    // A SIGKILL can interrupt a write of the engine in the middle of a line: a last line
    // without its newline was not printed in full. Every other line must be whole.
    let torn_line = killed && raw.last().is_some_and(|l| !l.ends_with(b"\n"));
    if torn_line {
        raw.pop();
    }
    let stdout = raw
        .iter()
        .map(|l| {
            let text = std::str::from_utf8(l).expect("stdout is UTF-8");
            let text = text.strip_suffix('\n').unwrap_or_else(|| panic!("line without newline: {:.60}", text));
            let body = text
                .strip_suffix(pad.as_str())
                .and_then(|t| t.strip_suffix(' '))
                .unwrap_or_else(|| panic!("line without its padding intact: {:.60}...", text));
            body.to_string()
        })
        .collect();
    RunOutput { stdout, stderr, status, killed, lines_at_kill, target_missed, torn_line }
}

/// Echo lines (without padding) of every echo> task recorded as succeeded in any attempt so
/// far, read from the frozen request (the evaluated message). Replayed tasks carry no request
/// of their own; their original success, with its request, is in an earlier attempt.
fn committed_echo_lines(db: &Path) -> HashSet<String> {
    let mut store = SqliteStore::open(db).expect("the state database opens after a kill");
    let pad = pad();
    let mut lines = HashSet::new();
    for attempt in store.list_attempts(None).expect("attempts are readable") {
        for task in store.tasks(attempt.attempt.attempt_id).expect("tasks are readable") {
            if task.state != TaskState::Success {
                continue;
            }
            if let Some(req) = &task.request
                && req.operator == "echo"
            {
                let line = req.command.as_str().unwrap_or_else(|| panic!("echo> command of {}", task.name));
                let body = line
                    .strip_suffix(pad.as_str())
                    .and_then(|t| t.strip_suffix(' '))
                    .unwrap_or_else(|| panic!("stored echo> message of {} lost its padding", task.name));
                lines.insert(body.to_string());
            }
        }
    }
    lines
}

fn integrity_check(db: &Path) {
    let conn = rusqlite::Connection::open(db).expect("the state database opens with plain SQLite");
    let result: String = conn.query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap();
    assert_eq!(result, "ok", "integrity_check of {}", db.display());
}

/// The kills, in order: progress targets spread evenly over the run, with start-up and
/// first-line kills on a fresh project and in the middle of the sequence.
fn plan(total: usize) -> Vec<Kill> {
    // The last target leaves enough of the run for the worst case: the kill before it
    // overshot its target by one commit and the unread output, and this run needs the commit
    // lag and the unread output again before its kill.
    let lo = 3;
    let hi = total - 2 * UNREAD_LINES - 2 * COMMIT_LAG_LINES - 20;
    let targets: Vec<Kill> =
        (0..PROGRESS_KILLS).map(|i| Kill::Committed(lo + (hi - lo) * i / (PROGRESS_KILLS - 1))).collect();
    let mut plan = vec![Kill::AtStart];
    plan.extend_from_slice(&targets[..PROGRESS_KILLS / 2]);
    plan.extend([Kill::AtStart, Kill::AfterFirstLine]);
    plan.extend_from_slice(&targets[PROGRESS_KILLS / 2..]);
    plan
}

#[test]
fn sigkill_at_progress_points_loses_no_committed_task_and_reruns_none() {
    let started = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::write(dir.join("wf.dig"), workflow()).unwrap();
    let db = dir.join(".spade/state.db");
    let expected = expected_lines();
    let total = expected.len();
    let plan = plan(total);
    assert!(plan.len() >= 30);

    // (stdout of the run, echo lines committed as success once it was over)
    let mut runs: Vec<(Vec<String>, HashSet<String>)> = Vec::new();
    let mut problems = Vec::new();
    let mut progress_kills = 0;
    for (k, &kill) in plan.iter().enumerate() {
        let before = runs.last().map_or(0, |(_, committed)| committed.len());
        let t0 = Instant::now();
        let out = run(dir, kill, before, total);
        let run_time = t0.elapsed();
        if db.exists() {
            integrity_check(&db);
        }
        let committed = if db.exists() { committed_echo_lines(&db) } else { HashSet::new() };
        eprintln!(
            "run {k:2} ({run_time:.2?}, checks {:.2?}): {kill:?}: killed after {} lines read{}; {} lines printed, {} -> {} of {total} echo tasks committed",
            t0.elapsed() - run_time,
            out.lines_at_kill,
            if out.torn_line { " (last line torn)" } else { "" },
            out.stdout.len(),
            before,
            committed.len(),
        );
        // Every kill must land on a run in progress (the run cannot get to its end while we
        // do not read its output), and a progress kill after new commits and before the end.
        assert!(out.killed, "run {k} ({kill:?}) ended on its own: {}", out.stderr);
        assert_eq!(
            out.status.signal(),
            Some(9),
            "run {k} ({kill:?}) was not ended by the SIGKILL: {:?}\n{}",
            out.status,
            out.stderr
        );
        if let Some(missed) = out.target_missed {
            problems.push(format!("run {k}: kill point not reached: {missed}"));
        }
        if let Kill::Committed(_) = kill {
            if committed.len() > before && committed.len() < total {
                progress_kills += 1;
            } else {
                problems.push(format!(
                    "run {k} ({kill:?}): {before} -> {} of {total} echo tasks committed; expected progress short of the end",
                    committed.len()
                ));
            }
        }
        runs.push((out.stdout, committed));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    assert_eq!(progress_kills, PROGRESS_KILLS);

    let last_before = runs.last().map_or(0, |(_, committed)| committed.len());
    let last = run(dir, Kill::Never, last_before, total);
    assert!(last.status.success(), "the final run fails: {}", last.stderr);
    assert!(last.stderr.contains("Success."), "{}", last.stderr);
    integrity_check(&db);
    let final_committed = committed_echo_lines(&db);
    // The request-based reading of the database sees exactly the workflow's echo tasks.
    assert_eq!(final_committed.iter().cloned().collect::<BTreeSet<_>>(), expected);
    runs.push((last.stdout, final_committed));

    // Nothing committed is lost: every line was printed by some run.
    let printed: HashSet<&String> = runs.iter().flat_map(|(out, _)| out.iter()).collect();
    let missing: Vec<String> = expected
        .iter()
        .filter(|l| !printed.contains(l))
        .map(|l| match runs.iter().position(|(_, committed)| committed.contains(l)) {
            Some(k) => format!("{l:?} (committed by the end of run {k})"),
            None => format!("{l:?}"),
        })
        .collect();
    assert!(
        missing.is_empty(),
        "{} echo lines were committed as success but printed by no run (output lost when a kill \
         lands between the store commit and the stdout flush?): {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    for line in printed {
        assert!(expected.contains(line), "unexpected output line {line:?}");
    }

    // Nothing committed runs again: a line committed by the end of run k is not printed by
    // any later run.
    for (k, (_, committed)) in runs.iter().enumerate() {
        for (j, (later, _)) in runs.iter().enumerate().skip(k + 1) {
            let again: Vec<&String> = later.iter().filter(|l| committed.contains(*l)).collect();
            assert!(
                again.is_empty(),
                "{} tasks committed as success by the end of run {k} ran again in run {j}, e.g. {:?}",
                again.len(),
                &again[..again.len().min(5)]
            );
        }
    }

    // The inspection commands read the database the kills left behind.
    let attempts = Command::new(env!("CARGO_BIN_EXE_spade")).arg("attempts").current_dir(dir).output().unwrap();
    assert!(attempts.status.success(), "{}", String::from_utf8_lossy(&attempts.stderr));
    let listing = String::from_utf8_lossy(&attempts.stdout);
    // A kill at start-up may come before the attempt is created; every other run made one.
    // The newest attempt (listed first) is the last run.
    let rows = listing.lines().count() - 1;
    let at_start = plan.iter().filter(|k| matches!(k, Kill::AtStart)).count();
    assert!((plan.len() + 1 - at_start..=plan.len() + 1).contains(&rows), "{listing}");
    assert!(listing.lines().nth(1).unwrap().contains(" success "), "{listing}");

    eprintln!("{} runs, {} of them killed, in {:?}", runs.len(), plan.len(), started.elapsed());
}
