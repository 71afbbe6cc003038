//! Long generated lists (a `for_each>` over more items than the engine creates at once) keep
//! Digdag's semantics: items run in order, a failure stops the rest, a resume runs only
//! what did not succeed, and a `_retry` around the loop runs each body once per try.

mod support;
use support::*;

fn numbers(range: std::ops::Range<u32>) -> Vec<String> {
    range.map(|i| i.to_string()).collect()
}

/// A for_each over 0..200 whose body fails for the item `bad`.
const LOOP: &str =
    "+loop:\n  for_each>:\n    item: ${items}\n  _do:\n    echo>: \"${item == bad ? no_such_variable : item}\"\n";

fn items() -> String {
    format!("items=[{}]", numbers(0..200).join(","))
}

#[test]
fn a_failure_stops_the_rest_and_a_resume_runs_only_what_did_not_succeed() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path();
    std::fs::write(p.join("loop.dig"), LOOP).unwrap();
    let run = |bad: &str| {
        spade(p, &["run", "loop.dig", "--session", "2024-01-01", "-p", &items(), "-p", &format!("bad={bad}")])
    };
    let first = run("150");
    assert!(!first.status.success());
    assert_eq!(stdout_lines(&first), numbers(0..150), "{}", String::from_utf8_lossy(&first.stderr));
    let stderr = String::from_utf8_lossy(&first.stderr);
    assert!(stderr.contains("+loop^sub+for-0=item=150=150 failed"), "the failing item is named: {stderr}");
    assert!(!stderr.contains("item=151"), "nothing after the failure ran: {stderr}");

    let second = run("-1");
    assert!(second.status.success(), "{}", String::from_utf8_lossy(&second.stderr));
    assert_eq!(stdout_lines(&second), numbers(150..200), "{}", String::from_utf8_lossy(&second.stderr));
}

#[test]
fn a_retry_around_the_loop_runs_each_body_once_per_try() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path();
    std::fs::write(
        p.join("retry.dig"),
        format!("+outer:\n  _retry: 1\n{}", LOOP.replace('\n', "\n  ").replacen("+loop", "  +loop", 1)),
    )
    .unwrap();
    let out = spade(p, &["run", "retry.dig", "--session", "2024-01-01", "-p", &items(), "-p", "bad=100"]);
    assert!(!out.status.success());
    let mut want = numbers(0..100);
    want.extend(numbers(0..100));
    assert_eq!(stdout_lines(&out), want, "{}", String::from_utf8_lossy(&out.stderr));
}
