//! Crash safety of `spade run`: a ~1200-task workflow is killed with SIGKILL at pseudo-random
//! points and re-run in the same session until it completes. Every echo line must show up
//! at least once over all runs, the state database must stay readable and intact, and a
//! task whose success was committed before a kill must never run again.

use std::collections::{BTreeSet, HashSet};
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use spade_store::{SqliteStore, Store, TaskState};

const ITEMS: usize = 300;
const KILLS: usize = 8;
const SEED: u64 = 0x5eed_cafe_f00d_0001;

/// xorshift64*: deterministic kill points without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
}

fn workflow() -> String {
    let items: Vec<String> = (0..ITEMS).map(|i| i.to_string()).collect();
    format!(
        r#"timezone: UTC

+before1:
  echo>: "line before1"
+before2:
  echo>: "line before2"
+store:
  param_store>:
    stored_value: kept-42
+each:
  for_each>:
    n: [{}]
  _do:
    +a:
      echo>: "line item ${{n}} a"
    +b:
      echo>: "line item ${{n}} b"
    +c:
      echo>: "line item ${{n}} c"
+show:
  echo>: "line stored ${{stored_value}}"
+after:
  echo>: "line after"
"#,
        items.join(", ")
    )
}

fn expected_lines() -> BTreeSet<String> {
    let mut lines: BTreeSet<String> = ["line before1", "line before2", "line stored kept-42", "line after"]
        .into_iter()
        .map(str::to_string)
        .collect();
    for i in 0..ITEMS {
        for t in ["a", "b", "c"] {
            lines.insert(format!("line item {i} {t}"));
        }
    }
    lines
}

struct RunOutput {
    stdout: Vec<String>,
    stderr: String,
    status: ExitStatus,
    killed: bool,
}

/// When to SIGKILL a run.
#[derive(Clone, Copy, Debug)]
enum Kill {
    Never,
    /// This long after the start, wherever the run is (start-up included).
    After(Duration),
    /// Once this many echo lines have reached stdout, plus a jitter: a point inside the
    /// task loop, whatever the machine's speed (the engine flushes stdout every round).
    AfterLines(usize, Duration),
}

/// Run `spade run` in `dir` and kill it as `kill` says, unless it exits first.
fn run(dir: &Path, kill: Kill) -> RunOutput {
    let mut child = Command::new(env!("CARGO_BIN_EXE_spade"))
        .args(["run", "wf.dig", "--session", "2024-01-01"])
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spade starts");
    // Drain both pipes concurrently so a full pipe can never stall the child.
    let out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let (line_tx, line_rx) = mpsc::channel();
    let out_reader = std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            if line_tx.send(line.unwrap()).is_err() {
                return;
            }
        }
    });
    let err_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        err.read_to_end(&mut buf).unwrap();
        buf
    });
    let started = Instant::now();
    let mut stdout = Vec::new();
    let mut killed = false;
    let mut kill_at = match kill {
        Kill::Never => None,
        Kill::After(d) => Some(started + d),
        Kill::AfterLines(..) => None,
    };
    loop {
        if let Some(at) = kill_at
            && Instant::now() >= at
        {
            if child.try_wait().unwrap().is_none() {
                // std's Child::kill is SIGKILL on Unix: no handler, no flush, no cleanup.
                child.kill().unwrap();
                killed = true;
            }
            break;
        }
        let wait = kill_at.map(|at| at.saturating_duration_since(Instant::now())).unwrap_or(Duration::from_secs(60));
        match line_rx.recv_timeout(wait.min(Duration::from_millis(5))) {
            Ok(line) => {
                stdout.push(line);
                if let Kill::AfterLines(n, jitter) = kill
                    && kill_at.is_none()
                    && stdout.len() >= n
                {
                    kill_at = Some(Instant::now() + jitter);
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                assert!(started.elapsed() < Duration::from_secs(30), "a run takes over 30 s");
            }
            // stdout closed: the process is exiting on its own.
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    let status = child.wait().unwrap();
    out_reader.join().unwrap();
    stdout.extend(line_rx.try_iter());
    let stderr = String::from_utf8_lossy(&err_reader.join().unwrap()).into_owned();
    RunOutput { stdout, stderr, status, killed }
}

/// Echo lines of every echo> task recorded as succeeded in any attempt so far, read from
/// the frozen request (the evaluated message). Replayed tasks carry no request of their
/// own; their original success, with its request, is in an earlier attempt.
fn committed_echo_lines(db: &Path) -> HashSet<String> {
    let mut store = SqliteStore::open(db).expect("the state database opens after a kill");
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
                lines.insert(line.to_string());
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

#[test]
fn sigkill_at_random_points_loses_no_committed_task_and_reruns_none() {
    let started = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::write(dir.join("wf.dig"), workflow()).unwrap();
    let db = dir.join(".spade/state.db");
    let expected = expected_lines();

    let mut rng = Rng(SEED);
    // (stdout of the run, echo lines committed as success once it was over)
    let mut runs: Vec<(Vec<String>, HashSet<String>)> = Vec::new();
    let mut interrupted = 0;
    for k in 0..KILLS {
        // Mostly kills inside the task loop; every fourth one at a time that may also fall
        // into start-up (a full run takes ~0.2 s on a quiet machine). The engine commits in
        // groups (at least every 20 ms), so kills spread over the whole run.
        let before = if db.exists() { committed_echo_lines(&db).len() } else { 0 };
        // A re-run prints only what is not committed yet: aim inside that remainder.
        let remaining = (expected.len() - before) as u64;
        let kill = if k % 4 == 3 {
            Kill::After(Duration::from_millis(rng.range(5, 150)))
        } else {
            let lo = (remaining / 3).max(1);
            let hi = (remaining * 3 / 4).max(lo + 1);
            Kill::AfterLines(rng.range(lo, hi) as usize, Duration::from_micros(rng.range(0, 3000)))
        };
        let out = run(dir, kill);
        if !out.killed {
            assert!(out.status.success(), "run {k} ended on its own but failed: {}", out.stderr);
        }
        if db.exists() {
            integrity_check(&db);
        }
        let committed = if db.exists() { committed_echo_lines(&db) } else { HashSet::new() };
        if out.killed && committed.len() > before && committed.len() < expected.len() {
            interrupted += 1;
        }
        eprintln!(
            "run {k}: {} ({kill:?}); {} lines printed, {} of {} echo tasks committed",
            if out.killed { "killed" } else { "finished" },
            out.stdout.len(),
            committed.len(),
            expected.len()
        );
        runs.push((out.stdout, committed));
    }

    let last = run(dir, Kill::Never);
    assert!(last.status.success(), "the final run fails: {}", last.stderr);
    assert!(last.stderr.contains("Success."), "{}", last.stderr);
    integrity_check(&db);
    let final_committed = committed_echo_lines(&db);
    // The request-based reading of the database sees exactly the workflow's echo tasks.
    assert_eq!(final_committed.iter().cloned().collect::<BTreeSet<_>>(), expected);
    runs.push((last.stdout, final_committed));

    // The test only means something if some kills landed mid-run.
    assert!(interrupted >= 2, "only {interrupted} kills interrupted a run with progress; adjust the kill window");

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
    // A kill before the attempt was created leaves no row; the newest attempt is the last run.
    let rows = listing.lines().count() - 1;
    assert!((2..=KILLS + 1).contains(&rows), "{listing}");
    assert!(listing.lines().nth(1).unwrap().contains(" success "), "{listing}");

    assert!(started.elapsed() < Duration::from_secs(60), "took {:?}", started.elapsed());
}
