//! Runs the Digdag conformance corpus (../shared/conformance) against the `spade` binary.
//!
//! Cases listed in tests/conformance-expected-failures.txt (with the issue that will fix
//! them) may fail; any other failure fails this test, and so does a listed case that now
//! passes (so the list only shrinks). Without the corpus (e.g. outside this workplace) the
//! test says so and passes.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;

fn corpus_dir() -> Option<PathBuf> {
    if let Ok(dir) = std::env::var("SPADE_CONFORMANCE_DIR") {
        return Some(PathBuf::from(dir));
    }
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/conformance");
    dir.join("run.sh").exists().then_some(dir)
}

#[test]
fn digdag_conformance_corpus() {
    let Some(dir) = corpus_dir() else {
        eprintln!("conformance corpus not found (set SPADE_CONFORMANCE_DIR); skipped");
        return;
    };
    let expected_path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/conformance-expected-failures.txt");
    let expected: BTreeSet<String> = std::fs::read_to_string(&expected_path)
        .unwrap_or_default()
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
    let summary = stdout.lines().rev().find(|l| l.contains(" passed, ")).unwrap_or("no summary line");
    let unexpected: Vec<&String> = failed.difference(&expected).collect();
    let now_passing: Vec<&String> = expected.difference(&failed).collect();
    // Past the harness's capture, so the test command shows the corpus result.
    use std::io::Write;
    let _ = writeln!(std::io::stderr().lock(), "conformance corpus: {summary}; expected failures: {}", expected.len());
    assert!(unexpected.is_empty(), "conformance cases failed unexpectedly: {unexpected:?}");
    assert!(
        now_passing.is_empty(),
        "these cases pass now; remove them from tests/conformance-expected-failures.txt: {now_passing:?}"
    );
}
