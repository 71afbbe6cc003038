//! Runs the Digdag conformance corpus against the `spade` binary.
//!
//! The corpus lives in the repository, in tests/conformance (README.md, run.sh and one folder
//! per case under cases/); `SPADE_CONFORMANCE_DIR` points the test at another copy. A missing
//! corpus, or a run that does not report every case, fails the test.
//!
//! Cases listed in tests/conformance-expected-failures.txt (with the issue that will fix
//! them) may fail; any other failure fails this test, and so does a listed case that now
//! passes (so the list only shrinks).
//!
//! tests/conformance is a copy of `shared/conformance` beside the repository, where the
//! corpus is maintained. When that folder exists, `in_repo_corpus_matches_shared` fails on any
//! difference between the two (re-sync with `scripts/sync-conformance.sh`); without it (a
//! plain clone of the repository) that check is not applicable and says so.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The in-repo copy of the corpus.
fn in_repo_corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/conformance")
}

/// The corpus to run: `$SPADE_CONFORMANCE_DIR`, else the in-repo copy. Panics (a test
/// failure, never a skip) when it is not there.
fn corpus_dir() -> PathBuf {
    let (dir, source) = match std::env::var_os("SPADE_CONFORMANCE_DIR") {
        Some(dir) => (PathBuf::from(dir), "SPADE_CONFORMANCE_DIR"),
        None => (in_repo_corpus(), "the in-repo copy"),
    };
    assert!(
        dir.join("run.sh").is_file() && dir.join("cases").is_dir(),
        "conformance corpus not found at {} ({source}): expected run.sh and cases/ there. \
         The corpus is part of the repository (tests/conformance); restore it with \
         `git checkout -- tests/conformance` or `scripts/sync-conformance.sh`, or point \
         SPADE_CONFORMANCE_DIR at a copy",
        dir.display()
    );
    dir
}

/// The case folders of a corpus, as run.sh sees them (every sub-folder of cases/).
fn case_names(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir.join("cases"))
        .unwrap_or_else(|e| panic!("{}: {e}", dir.join("cases").display()))
        .map(|e| e.unwrap())
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

#[test]
fn digdag_conformance_corpus() {
    let dir = corpus_dir();
    let cases = case_names(&dir);
    assert!(!cases.is_empty(), "the conformance corpus at {} has no cases", dir.display());
    let expected_path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/conformance-expected-failures.txt");
    let expected: BTreeSet<String> = std::fs::read_to_string(&expected_path)
        .unwrap_or_else(|e| panic!("{}: {e}", expected_path.display()))
        .lines()
        .map(|l| l.split('#').next().unwrap().trim().to_string())
        .filter(|l| !l.is_empty())
        .collect();
    let out = Command::new("bash")
        .arg(dir.join("run.sh"))
        .env("SPADE", env!("CARGO_BIN_EXE_spade"))
        .output()
        .expect("run.sh starts");
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    let failed: BTreeSet<String> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("FAIL "))
        .map(|l| l.split(':').next().unwrap().trim().to_string())
        .collect();
    // The summary line "N passed, N failed" must account for every case: a runner that
    // stopped early or ran nothing is a failure, not a pass.
    let summary = stdout.lines().rev().find(|l| l.contains(" passed, "));
    let counts = summary.and_then(|s| {
        let mut nums = s.split([' ', ',']).filter_map(|w| w.parse::<usize>().ok());
        Some((nums.next()?, nums.next()?))
    });
    let Some((passed, failed_count)) = counts else {
        panic!(
            "run.sh printed no summary line (exit {:?}); stderr:\n{}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    assert_eq!(
        passed + failed_count,
        cases.len(),
        "run.sh reported {passed} passed and {failed_count} failed, but the corpus has {} cases; stderr:\n{}",
        cases.len(),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(failed_count, failed.len(), "the summary and the FAIL lines disagree");
    assert_eq!(out.status.success(), failed.is_empty(), "run.sh's exit status disagrees with its output");
    let unknown: Vec<&String> = expected.difference(&cases).collect();
    let unexpected: Vec<&String> = failed.difference(&expected).collect();
    let now_passing: Vec<&String> = expected.difference(&failed).filter(|c| cases.contains(*c)).collect();
    // Past the harness's capture, so the test command shows the corpus result.
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr().lock(),
        "conformance corpus ({}): {passed} passed, {failed_count} failed; expected failures: {}",
        dir.display(),
        expected.len()
    );
    assert!(unexpected.is_empty(), "conformance cases failed unexpectedly: {unexpected:?}");
    assert!(
        now_passing.is_empty(),
        "these cases pass now; remove them from tests/conformance-expected-failures.txt: {now_passing:?}"
    );
    if std::env::var_os("SPADE_CONFORMANCE_DIR").is_none() {
        assert!(
            unknown.is_empty(),
            "tests/conformance-expected-failures.txt names cases the corpus does not have: {unknown:?}"
        );
    }
}

/// Every file under `root`, by path relative to it, with its bytes.
fn files(root: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
        for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                out.insert(path.strip_prefix(root).unwrap().to_path_buf(), bytes);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

#[test]
fn in_repo_corpus_matches_shared() {
    let shared = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/conformance");
    let ours = in_repo_corpus();
    use std::io::Write;
    if !shared.is_dir() {
        let _ = writeln!(
            std::io::stderr().lock(),
            "conformance sync check: not applicable ({} is absent; the corpus test uses the in-repo copy)",
            shared.display()
        );
        return;
    }
    assert!(ours.is_dir(), "the in-repo corpus {} is missing; run scripts/sync-conformance.sh", ours.display());
    let theirs = files(&shared);
    let mine = files(&ours);
    let mut diffs = Vec::new();
    for (path, bytes) in &theirs {
        match mine.get(path) {
            None => diffs.push(format!("missing in tests/conformance: {}", path.display())),
            Some(b) if b != bytes => diffs.push(format!("differs: {}", path.display())),
            Some(_) => {}
        }
    }
    for path in mine.keys().filter(|p| !theirs.contains_key(*p)) {
        diffs.push(format!("not in ../shared/conformance: {}", path.display()));
    }
    assert!(
        diffs.is_empty(),
        "tests/conformance is out of sync with {} ({} file(s)):\n  {}\nre-sync with `scripts/sync-conformance.sh` and commit tests/conformance",
        shared.display(),
        diffs.len(),
        diffs.join("\n  ")
    );
    let _ = writeln!(
        std::io::stderr().lock(),
        "conformance sync check: tests/conformance matches {} ({} files)",
        shared.display(),
        theirs.len()
    );
}
