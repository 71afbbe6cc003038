//! Loads every project of the conformance corpus (the in-repo copy, `tests/conformance/cases`;
//! `SPADE_CONFORMANCE_DIR` or `SPADE_CONFORMANCE_CASES` override the path): the
//! deliberate load-error cases must fail with their intended error, every other case (and
//! every step patch of a multi-step case) must load and compile. Run with `--nocapture` to
//! read the messages.

use std::path::{Path, PathBuf};

use spade_dig::{TaskNode, load_project};

/// Cases that must not load, with a piece of the message each must produce.
const EXPECTED_FAILURES: &[(&str, &str, &str)] = &[
    ("045_malformed_yaml", "workflow.dig:", "invalid YAML"),
    ("046_duplicate_keys", "workflow.dig:", "duplicate task '+step'"),
    ("047_two_operators", "workflow.dig:", "more than one operator (found echo>, fail>)"),
    ("048_unknown_top_level_key", "workflow.dig:", "workflow 'workflow' includes unknown keys: 'owner'"),
    ("054_project_wide_validation", "broken.dig:", "invalid YAML"),
    ("055_group_invalid_key", "workflow.dig:", "task +workflow+group: contains invalid keys: 'color'"),
];

fn cases_dir() -> PathBuf {
    if let Ok(p) = std::env::var("SPADE_CONFORMANCE_CASES") {
        return PathBuf::from(p);
    }
    if let Ok(p) = std::env::var("SPADE_CONFORMANCE_DIR") {
        return PathBuf::from(p).join("cases");
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/conformance/cases")
}

/// Copy the project part of a case (everything but the runner's files) into `dst`.
fn copy_project(src: &Path, dst: &Path, top: bool) {
    for entry in std::fs::read_dir(src).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().into_owned();
        if top && (name == "steps" || name == "cmd" || name == "ordered" || name.starts_with("expected_")) {
            continue;
        }
        let to = dst.join(&name);
        if entry.path().is_dir() {
            std::fs::create_dir_all(&to).unwrap();
            copy_project(&entry.path(), &to, false);
        } else {
            std::fs::copy(entry.path(), &to).unwrap();
        }
    }
}

fn count(n: &TaskNode) -> usize {
    1 + n.children.iter().map(count).sum::<usize>()
}

#[test]
fn every_conformance_case_loads_or_fails_as_intended() {
    let dir = cases_dir();
    assert!(
        dir.is_dir(),
        "conformance cases not found at {}: the corpus is part of the repository (tests/conformance); \
         restore it with `git checkout -- tests/conformance` or `scripts/sync-conformance.sh`, or set \
         SPADE_CONFORMANCE_DIR / SPADE_CONFORMANCE_CASES",
        dir.display()
    );
    let mut cases: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("cmd").is_file() || p.join("steps").is_dir())
        .collect();
    cases.sort();
    assert!(cases.len() >= 55, "expected the whole corpus, found {} cases", cases.len());

    let mut problems = Vec::new();
    let mut seen_failures = 0;
    for case in &cases {
        let name = case.file_name().unwrap().to_string_lossy().into_owned();
        let tmp = tempfile::tempdir().unwrap();
        copy_project(case, tmp.path(), true);
        let mut steps: Vec<PathBuf> = match std::fs::read_dir(case.join("steps")) {
            Ok(rd) => rd.map(|e| e.unwrap().path()).collect(),
            Err(_) => Vec::new(),
        };
        steps.sort_by_key(|p| p.file_name().unwrap().to_string_lossy().parse::<u32>().unwrap_or(0));
        let mut stages = vec![None];
        stages.extend(steps.iter().map(Some));

        for stage in stages {
            let label = match stage {
                Some(s) => {
                    let patch = s.join("patch");
                    if !patch.is_dir() {
                        continue;
                    }
                    copy_project(&patch, tmp.path(), false);
                    format!("{name} (after {})", s.strip_prefix(case).unwrap().display())
                }
                None => name.clone(),
            };
            let expected = EXPECTED_FAILURES.iter().find(|(c, _, _)| *c == name);
            match (load_project(tmp.path()), expected) {
                (Ok(p), None) => {
                    let tasks: usize = p.workflows.iter().map(|w| count(&w.root)).sum();
                    println!("ok    {label}: {} workflow(s), {tasks} task(s)", p.workflows.len());
                }
                (Ok(_), Some((_, _, msg))) => problems.push(format!("{label}: loaded, but must fail with '{msg}'")),
                (Err(e), None) => problems.push(format!("{label}: must load, but:\n{e}")),
                (Err(e), Some((_, file, msg))) => {
                    seen_failures += 1;
                    let text = e.to_string();
                    println!("error {label}:\n      {}", text.replace('\n', "\n      "));
                    if !(text.starts_with(file) && text.contains(msg)) {
                        problems.push(format!("{label}: expected an error in {file} containing '{msg}', got:\n{text}"));
                    }
                    if e.len() != 1 {
                        problems.push(format!("{label}: expected exactly one error, got {}:\n{text}", e.len()));
                    }
                }
            }
        }
    }
    assert_eq!(seen_failures, EXPECTED_FAILURES.len(), "every deliberate error case must be in the corpus");
    assert!(problems.is_empty(), "{}", problems.join("\n\n"));
}
