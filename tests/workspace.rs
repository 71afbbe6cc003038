//! The escape suite, end to end: `spade run` of a real project with a hostile task in it.
//! A task granted nothing may not reach the engine's state, the project's grants and lock,
//! or the project's workflow files, and may not fill the disk; tasks of one attempt still
//! share their files as in Digdag's local mode. Also: an attempt that fails before its
//! first task is closed, never left running.

use std::path::Path;

mod support;
use support::*;

/// Every file of `dir` (recursively, except the workspace) with its content.
fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>)> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, Vec<u8>)>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            if rel == ".spade/workspace" {
                continue;
            }
            if e.file_type().unwrap().is_dir() {
                walk(root, &p, out);
            } else {
                out.push((rel, std::fs::read(&p).unwrap()));
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

const OTHER_DIG: &str = "+only:\n  echo>: the other workflow, as written\n";
const SPADE_YML: &str = "plugins:\n  - path: hostile.wasm\n    grants: {secrets: [allowed]}\n\
                         grants:\n  spade-http:\n    http: [\"127.0.0.1:9\"]\n";

/// A project directory with the hostile plugin in it, granted what it imports.
fn project_with_hostile(dir: &Path) {
    std::fs::copy(hostile_plugin(), dir.join("hostile.wasm")).unwrap();
    std::fs::write(dir.join("spade.yml"), SPADE_YML).unwrap();
}

#[test]
fn a_task_cannot_touch_the_state_the_grants_or_the_workflows() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path();
    std::fs::write(p.join("other.dig"), OTHER_DIG).unwrap();
    project_with_hostile(p);
    std::fs::write(p.join("spade.lock"), "# no registry plugins\nversion = 1\n").unwrap();
    std::fs::write(
        p.join("attack.dig"),
        "+first:\n  echo>: before\n\
         +attack:\n  hostile>: engine_files\n  depth: 2\n  workflow: other.dig\n\
         +again:\n  hostile>: engine_files\n  depth: 6\n  workflow: attack.dig\n\
         +report:\n  echo>: ${hostile.results.filter(function(r){return r.ok && /spade-http|SQLite format|no registry/.test(r.detail)}).length} engine files read\n",
    )
    .unwrap();
    // A first run creates the state database the attack goes for.
    let out = spade(p, &["run", "other.dig", "--session", "2024-01-01"]);
    assert!(out.status.success(), "{:?}", text(&out));
    let before = snapshot(p);
    assert!(before.iter().any(|(f, _)| f == ".spade/state.db"), "{before:?}");

    let out = spade(p, &["run", "attack.dig", "--session", "2024-01-01"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert_eq!(stdout, "before\n0 engine files read\n", "{stderr}");

    // The state database, spade.yml, spade.lock and both workflow files are as they were
    // (state.db changed only by the engine's own writes: compare the others byte for byte,
    // and check the database still works).
    let after = snapshot(p);
    for (file, content) in &before {
        if file.starts_with(".spade/state.db") {
            continue;
        }
        let now = after.iter().find(|(f, _)| f == file).map(|(_, c)| c);
        assert_eq!(now, Some(content), "{file} changed");
    }
    let listed = spade(p, &["attempts"]);
    assert!(listed.status.success(), "the state database is damaged: {:?}", text(&listed));
    let out = spade(p, &["run", "other.dig", "--session", "2024-01-02"]);
    assert_eq!(text(&out).0, "the other workflow, as written\n", "{:?}", text(&out));
    // No grant was added: the next run links the plugin with nothing.
    assert_eq!(std::fs::read_to_string(p.join("spade.yml")).unwrap(), SPADE_YML);
}

#[test]
fn tasks_of_an_attempt_share_the_workspace_and_it_starts_from_the_project() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path();
    std::fs::create_dir_all(p.join("data")).unwrap();
    std::fs::write(p.join("data/input.txt"), "from the project\n").unwrap();
    std::fs::write(
        p.join("share.dig"),
        "+read_project:\n  hostile>: cat\n  path: data/input.txt\n\
         +show_project:\n  echo>: ${hostile.results[0].detail.trim()}\n\
         +write:\n  hostile>: fs_ok\n\
         +read_written:\n  hostile>: cat\n  path: sub/deeper/f.txt\n\
         +show_written:\n  echo>: ${hostile.results[0].detail.trim()}\n",
    )
    .unwrap();
    project_with_hostile(p);
    let out = spade(p, &["run", "share.dig", "--session", "2024-01-01"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert_eq!(stdout, "from the project\nplanted by hostile\n", "{stderr}");
    // What tasks wrote is in the workspace, not in the project.
    assert!(!p.join("rel.txt").exists() && !p.join("sub").exists());
    assert!(p.join(".spade/workspace/rel.txt").is_file());
    assert!(p.join(".spade/workspace/data/input.txt").is_file());
}

#[test]
fn filling_the_disk_fails_the_task_with_the_quota_in_the_error() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path();
    std::fs::write(
        p.join("fill.dig"),
        "+fill:\n  hostile>: disk_fill\n  size: 3221225472\n+after:\n  echo>: not reached\n",
    )
    .unwrap();
    project_with_hostile(p);
    let out = spade(p, &["run", "fill.dig", "--session", "2024-01-01", "--disk-quota", "8"]);
    let (stdout, stderr) = text(&out);
    assert!(!out.status.success(), "{stdout}\n{stderr}");
    assert_eq!(stdout, "", "{stderr}");
    assert!(stderr.contains("+fill+fill failed"), "the error names the task: {stderr}");
    assert!(stderr.contains("disk quota of 8 MiB"), "{stderr}");
    let ws = p.join(".spade/workspace");
    let used: u64 =
        ["fill.bin", "sparse.bin"].iter().map(|f| std::fs::metadata(ws.join(f)).map(|m| m.len()).unwrap_or(0)).sum();
    assert!(used <= 8 << 20, "{used} bytes in the workspace past an 8 MiB quota");

    // spade.yml sets the quota for the project; the flag wins over it.
    std::fs::write(p.join("spade.yml"), format!("{SPADE_YML}disk_quota_mb: 2\n")).unwrap();
    let out = spade(p, &["run", "fill.dig", "--session", "2024-01-02"]);
    assert!(text(&out).1.contains("disk quota of 2 MiB"), "{:?}", text(&out));
}

#[test]
fn an_attempt_that_cannot_start_is_closed_as_failed() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path();
    std::fs::write(p.join("wf.dig"), "+a:\n  echo>: never\n").unwrap();
    // A project plugin that is not there: the run fails after its attempt was begun.
    std::fs::write(p.join("spade.yml"), "plugins:\n  - path: plugins/missing.wasm\n").unwrap();
    let out = spade(p, &["run", "wf.dig", "--session", "2024-01-01"]);
    let (stdout, stderr) = text(&out);
    assert!(!out.status.success());
    assert_eq!(stdout, "");
    assert!(stderr.contains("could not start") && stderr.contains("missing.wasm"), "{stderr}");
    let listed = spade(p, &["attempts"]);
    let (table, notes) = text(&listed);
    assert!(table.contains("error") && !table.contains("running"), "{table}\n{notes}");
    let log = spade(p, &["log", "1"]);
    let (log_out, log_err) = text(&log);
    assert!(format!("{log_out}{log_err}").contains("missing.wasm"), "{log_out}\n{log_err}");
}

#[test]
fn a_state_database_kept_among_the_project_files_stays_out_of_the_workspace() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path();
    project_with_hostile(p);
    std::fs::write(
        p.join("peek.dig"),
        "+peek:\n  hostile>: cat\n  path: history.db\n+show:\n  echo>: ${hostile.results[0].ok}\n",
    )
    .unwrap();
    let out = spade(p, &["run", "peek.dig", "--session", "2024-01-01", "--state", "history.db"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert_eq!(stdout, "false\n", "the task could read the state database: {stderr}");
    assert!(p.join("history.db").is_file() && !p.join(".spade/workspace/history.db").exists());
}
