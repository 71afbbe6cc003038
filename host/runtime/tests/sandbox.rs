//! Every attack of the `hostile>` test plugin is contained: the call fails (or reports the
//! attempt refused), nothing outside the workspace changes, the secret never reaches the
//! outcome, and a normal call right after succeeds on the same runtime.

mod common;

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};
use spade_api::{CancelToken, InvokeError, Limits, LogLevel, OperatorHost, Outcome};
use spade_runtime::{Grants, Runtime, RuntimeConfig};

fn runtime() -> &'static Runtime {
    static RT: OnceLock<(Runtime, tempfile::TempDir)> = OnceLock::new();
    &RT.get_or_init(|| {
        let cache = tempfile::tempdir().unwrap();
        let rt = Runtime::new(RuntimeConfig::with_cache_dir(cache.path().join("spade"))).unwrap();
        let grants = Grants { secrets: vec!["allowed".into(), "team.*".into()], ..Grants::default() };
        rt.install("spade-test-hostile", &test_plugin("spade-test-hostile"), grants).unwrap();
        (rt, cache)
    })
    .0
}

fn limits() -> Limits {
    Limits { cpu_time: Duration::from_secs(20), memory_bytes: 128 << 20, log_bytes: 256 << 10 }
}

/// Runs `attack` in a fresh sandbox, checks containment, then checks a normal call works.
fn attack(name: &str, limits: Limits) -> (Result<Outcome, InvokeError>, Sandbox, Recorder) {
    attack_with(name, json!({}), limits)
}

fn attack_with(name: &str, params: Value, limits: Limits) -> (Result<Outcome, InvokeError>, Sandbox, Recorder) {
    let rt = runtime();
    let sb = Sandbox::new();
    let services = Recorder::default();
    let before = sb.outside_snapshot();
    let mut params = params;
    params["outside"] = json!(sb.outside.display().to_string());
    let req = request("hostile", json!(name), params);
    let out = invoke(rt, &sb, &services, &req, limits, &CancelToken::new());
    assert_eq!(sb.outside_snapshot(), before, "attack {name} changed files outside the workspace");
    if let Ok(o) = &out {
        let text = serde_json::to_string(o).unwrap();
        assert!(!text.contains(SECRET), "attack {name} leaked the secret: {text}");
    }
    for (_, line) in services.logs() {
        assert!(!line.contains(SECRET), "attack {name} leaked the secret into the log");
    }
    // The host is still fine: a normal call right after succeeds.
    let noop = request("hostile", json!("noop"), json!({}));
    let after = invoke(rt, &sb, &Recorder::default(), &noop, Limits::default(), &CancelToken::new());
    assert!(matches!(after, Ok(Outcome::Done(_))), "noop after {name} failed: {after:?}");
    (out, sb, services)
}

/// The per-attempt results a file attack reported.
fn results(out: Result<Outcome, InvokeError>) -> Vec<Value> {
    let store = done_store(out.expect("the attack should return an outcome"));
    store["hostile"]["results"].as_array().cloned().expect("results")
}

fn assert_all_refused(name: &str, results: &[Value], ops: &[&str]) {
    let relevant: Vec<&Value> = results.iter().filter(|r| ops.contains(&r["op"].as_str().unwrap())).collect();
    assert!(!relevant.is_empty(), "{name}: no {ops:?} attempts reported: {results:?}");
    for r in relevant {
        assert_eq!(r["ok"], json!(false), "{name}: an attempt succeeded: {r}");
    }
}

fn plugin_error(out: Result<Outcome, InvokeError>) -> String {
    match out {
        Err(e @ InvokeError::Plugin { .. }) => e.to_string(),
        other => panic!("expected a plugin error, got {other:?}"),
    }
}

#[test]
fn workspace_is_root_and_read_write() {
    let (out, sb, _) = attack("fs_ok", limits());
    let results = results(out);
    for r in &results {
        assert_eq!(r["ok"], json!(true), "{r}");
    }
    assert!(sb.ws.join("rel.txt").is_file() && sb.ws.join("abs.txt").is_file());
    assert!(sb.ws.join("sub/deeper/f.txt").is_file());
    let find = |op: &str, path: &str| {
        results.iter().find(|r| r["op"] == op && r["path"] == path).unwrap()["detail"].as_str().unwrap().to_string()
    };
    assert_eq!(find("read", "input.txt"), "hello from the host\n");
    assert_eq!(find("cwd", ""), "/");
    // "/" lists the workspace (as it was during the call: noop after it changes nothing).
    assert_eq!(find("list", "/"), sb.ws_names());
    assert_eq!(find("list", "."), sb.ws_names());
}

#[test]
fn parent_paths_are_refused() {
    let (out, sb, _) = attack("read_parent", limits());
    assert_all_refused("read_parent", &results(out), &["read"]);
    let (out, _, _) = attack("write_parent", limits());
    assert_all_refused("write_parent", &results(out), &["write", "mkdir", "remove", "rename"]);
    assert!(!sb.root.join("planted.txt").exists());
}

#[test]
fn absolute_paths_stay_inside() {
    let (out, _, _) = attack("read_abs", limits());
    assert_all_refused("read_abs", &results(out), &["read", "list"]);
    let (out, sb, _) = attack("write_abs", limits());
    assert_all_refused("write_abs", &results(out), &["write"]);
    assert!(!sb.outside.join("planted.txt").exists());
}

#[test]
fn premade_symlinks_are_not_followed_outside() {
    let (out, sb, _) = attack("symlink_premade", limits());
    assert_all_refused("symlink_premade", &results(out), &["read", "write", "list"]);
    assert!(!sb.root.join("new_rel.txt").exists() && !sb.outside.join("new_abs.txt").exists());
}

#[test]
fn hard_links_cannot_reach_outside() {
    let (out, sb, _) = attack("hardlink", limits());
    let results = results(out);
    assert_all_refused("hardlink", &results, &["read"]);
    for r in &results {
        let path = r["path"].as_str().unwrap();
        // Linking a workspace symlink itself (stolen3) may succeed: it is still a symlink
        // that cannot be followed; every link naming an outside file must fail.
        if r["op"] == "hard_link" && !path.starts_with("link_rel") {
            assert_eq!(r["ok"], json!(false), "{r}");
        }
    }
    assert!(!sb.root.join("planted_link").exists());
    assert_eq!(
        std::fs::metadata(sb.root.join("secret.txt")).map(|m| std::os::unix::fs::MetadataExt::nlink(&m)).unwrap(),
        1
    );
}

#[test]
fn own_symlinks_are_not_followed_outside() {
    let (out, sb, _) = attack("symlink_own", limits());
    let results = results(out);
    assert_all_refused("symlink_own", &results, &["read", "list"]);
    // Creating a symlink with an absolute target is refused outright; a write to that
    // name then just creates a regular file inside the workspace.
    for r in results.iter().filter(|r| r["op"] == "symlink" || r["op"] == "write") {
        let path = r["path"].as_str().unwrap();
        if r["op"] == "symlink" && path.contains(" -> /") {
            assert_eq!(r["ok"], json!(false), "{r}");
        }
        if r["op"] == "write" && r["ok"] == json!(true) {
            let meta = std::fs::symlink_metadata(sb.ws.join(path)).unwrap();
            assert!(meta.is_file(), "{path} should be a plain file in the workspace");
        }
    }
    assert!(!sb.outside.join("planted.txt").exists());
}

#[test]
fn no_environment_no_proc() {
    let (out, _, _) = attack("proc_environ", limits());
    assert_all_refused("proc_environ", &results(out), &["read", "env", "args"]);
}

#[test]
fn listing_root_shows_only_the_workspace() {
    let (out, sb, _) = attack("list_root", limits());
    let names = sb.ws_names();
    for r in results(out) {
        if r["ok"] == json!(true) {
            assert_eq!(r["detail"].as_str().unwrap(), names, "{r}");
        }
    }
}

#[test]
fn no_network() {
    let (out, _, _) = attack("net", limits());
    assert_all_refused("net", &results(out), &["tcp_connect", "udp_bind", "tcp_listen", "dns"]);
}

#[test]
fn secrets_only_granted_keys() {
    let (out, _, services) =
        attack_with("secret", json!({"keys": ["allowed", "team.token", "forbidden", "team"]}), limits());
    let results = results(out);
    let get = |k: &str| results.iter().find(|r| r["path"] == k).unwrap().clone();
    assert_eq!(get("allowed")["detail"], "value-of-allowed");
    assert_eq!(get("team.token")["detail"], "value-of-team.token");
    assert_eq!(get("forbidden")["ok"], false);
    assert_eq!(get("team")["ok"], false);
    // Ungranted keys never even reach the services.
    let asked = services.secrets_asked.lock().unwrap().clone();
    assert_eq!(asked, vec!["allowed".to_string(), "team.token".to_string()]);
}

#[test]
fn stdio_goes_to_the_task_log() {
    let (out, _, services) = attack("stdio", limits());
    assert!(matches!(out, Ok(Outcome::Done(_))));
    let logs = services.logs();
    assert!(logs.contains(&(LogLevel::Info, "to stdout".into())), "{logs:?}");
    assert!(logs.contains(&(LogLevel::Warn, "to stderr".into())), "{logs:?}");
    assert!(logs.contains(&(LogLevel::Warn, "to log".into())), "{logs:?}");
    assert_eq!(services.prints(), vec!["to output".to_string()]);
}

#[test]
fn infinite_loop_hits_the_deadline() {
    let l = Limits { cpu_time: Duration::from_millis(300), ..limits() };
    let t = Instant::now();
    let (out, _, _) = attack("infinite_loop", l);
    let msg = plugin_error(out);
    assert!(msg.contains("time limit of 300ms"), "{msg}");
    assert!(msg.contains("spade-test-hostile"), "{msg}");
    assert!(t.elapsed() < Duration::from_secs(10));
}

#[test]
fn memory_is_capped() {
    let l = Limits { memory_bytes: 64 << 20, ..limits() };
    let (out, _, _) = attack("memory", l);
    let msg = plugin_error(out);
    assert!(msg.contains("memory limit of 64 MiB"), "{msg}");
}

#[test]
fn stack_overflow_is_a_task_error() {
    let (out, _, _) = attack("recursion", limits());
    let msg = plugin_error(out);
    assert!(msg.contains("stack") || msg.contains("crashed"), "{msg}");
}

#[test]
fn panic_and_exit_are_task_errors() {
    let (out, _, services) = attack("panic", limits());
    let msg = plugin_error(out);
    assert!(msg.contains("crashed") && msg.contains("panicked on purpose"), "{msg}");
    assert!(services.logs().iter().any(|(l, m)| *l == LogLevel::Warn && m.contains("panicked on purpose")));
    let (out, _, _) = attack("exit", limits());
    let msg = plugin_error(out);
    // WASI 0.2's exit carries only success/failure, so exit(7) arrives as status 1.
    assert!(msg.contains("exited with status 1 instead of returning an outcome"), "{msg}");
}

#[test]
fn log_flood_is_capped() {
    let l = Limits { log_bytes: 64 << 10, ..limits() };
    let (out, _, services) = attack_with("log_flood", json!({"count": 50_000, "size": 100}), l);
    assert!(matches!(out, Ok(Outcome::Done(_))), "{out:?}");
    let logs = services.logs();
    let notes: Vec<&String> = logs.iter().map(|(_, m)| m).filter(|m| m.starts_with("spade: ")).collect();
    let kept: usize = logs.iter().filter(|(_, m)| !m.starts_with("spade: ")).map(|(_, m)| m.len()).sum();
    assert!(kept <= 64 << 10, "kept {kept} bytes of log");
    assert!(kept >= 60 << 10, "the budget should be used: kept {kept}");
    assert!(notes.iter().any(|m| m.contains("log lines") && m.contains("dropped")), "{notes:?}");
    let printed: usize = services.prints().iter().map(|l| l.len()).sum();
    assert!((60 << 10..=64 << 10).contains(&printed), "printed {printed}");
    assert!(notes.iter().any(|m| m.contains("output lines")), "{notes:?}");
}

#[test]
fn huge_lines_are_cut() {
    let (out, _, services) = attack_with("big_line", json!({"size": 4 << 20}), limits());
    assert!(matches!(out, Ok(Outcome::Done(_))), "{out:?}");
    let max = spade_runtime::MAX_LINE_BYTES + 100;
    assert!(services.logs().iter().all(|(_, m)| m.len() <= max));
    let prints = services.prints();
    assert_eq!(prints.len(), 1);
    assert!(prints[0].len() <= max && prints[0].ends_with("more bytes]"));
}

#[test]
fn huge_outcome_is_refused() {
    let (out, _, _) = attack_with("huge_outcome", json!({"size": 20 << 20}), limits());
    let msg = plugin_error(out);
    assert!(msg.contains("`done.store-params`") && msg.contains("16 MiB"), "{msg}");
}

#[test]
fn malformed_outcomes_name_the_field() {
    let cases = [
        ("store_params", "malformed", "`done.store-params`", "invalid JSON"),
        ("store_params", "non_object", "`done.store-params`", "must be a JSON object"),
        ("export_params", "non_object", "`done.export-params`", "an array"),
        ("subtasks", "malformed", "`done.subtasks`", "invalid JSON"),
        ("poll_state", "malformed", "`poll.state`", "invalid JSON"),
        ("store_params", "deep", "`done.store-params`", "recursion limit"),
    ];
    for (field, kind, name, what) in cases {
        let (out, _, _) = attack_with("malformed_outcome", json!({"field": field, "kind": kind}), limits());
        let msg = plugin_error(out);
        assert!(msg.contains(name) && msg.contains(what), "{field}/{kind}: {msg}");
    }
}

#[test]
fn outcomes_and_request_round_trip() {
    let rt = runtime();
    let sb = Sandbox::new();
    let services = Recorder::default();
    let mut req = request("hostile", json!("echo_request"), json!({"a": {"b": [1, 2]}}));
    req.local_params.insert("own".into(), json!(true));
    req.raw.insert("_do".into(), json!({"+x": {"echo>": "${a}"}}));
    req.state = Some(json!({"n": 1}));
    req.retry_attempt_name = Some("again".into());
    req.retry_count = 3;
    let store = done_store(invoke(rt, &sb, &services, &req, limits(), &CancelToken::new()).unwrap());
    let echoed = &store["request"];
    assert_eq!(echoed["command"], "echo_request");
    assert_eq!(echoed["params"], json!({"a": {"b": [1, 2]}}));
    assert_eq!(echoed["local_params"], json!({"own": true}));
    assert_eq!(echoed["raw"]["_do"]["+x"]["echo>"], "${a}");
    assert_eq!(echoed["state"], json!({"n": 1}));
    assert_eq!(echoed["retry_attempt_name"], "again");
    assert_eq!(echoed["retry_count"], 3);
    assert_eq!(echoed["attempt_id"], 11);
    assert_eq!(echoed["session_time"], "2024-02-29T13:14:15+00:00");
    assert_eq!(echoed["task_name"], "+test+task");

    let poll = invoke(rt, &sb, &services, &request("hostile", json!("poll"), json!({})), limits(), &CancelToken::new());
    assert_eq!(poll.unwrap(), Outcome::Poll { after_seconds: 5, state: json!({"n": 1}) });
    let fail = invoke(rt, &sb, &services, &request("hostile", json!("fail"), json!({})), limits(), &CancelToken::new());
    assert_eq!(fail.unwrap(), Outcome::Error { message: "hostile failed on purpose".into(), retryable: true });
}

#[test]
fn kill_interrupts_an_infinite_loop() {
    let rt = runtime();
    let sb = Sandbox::new();
    let services = Recorder::default();
    let cancel = CancelToken::new();
    let killer = {
        let c = cancel.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            c.cancel();
        })
    };
    let t = Instant::now();
    let req = request("hostile", json!("infinite_loop"), json!({}));
    let l = Limits { cpu_time: Duration::from_secs(120), ..limits() };
    let out = invoke(rt, &sb, &services, &req, l, &cancel);
    killer.join().unwrap();
    assert!(matches!(out, Err(InvokeError::Cancelled)), "{out:?}");
    assert!(t.elapsed() < Duration::from_secs(5), "kill took {:?}", t.elapsed());
    // Already-cancelled tokens stop the call before it starts.
    let out = invoke(rt, &sb, &services, &request("hostile", json!("noop"), json!({})), l, &cancel);
    assert!(matches!(out, Err(InvokeError::Cancelled)));
    let out = invoke(rt, &sb, &services, &request("hostile", json!("noop"), json!({})), l, &CancelToken::new());
    assert!(matches!(out, Ok(Outcome::Done(_))));
}

#[test]
fn sleeping_guests_are_stopped_too() {
    // A sleep blocks inside the host, out of reach of epoch interruption.
    let l = Limits { cpu_time: Duration::from_millis(300), ..limits() };
    let t = Instant::now();
    let (out, _, _) = attack("sleep", l);
    let msg = plugin_error(out);
    assert!(msg.contains("time limit of 300ms"), "{msg}");
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());

    let rt = runtime();
    let sb = Sandbox::new();
    let cancel = CancelToken::new();
    let c = cancel.clone();
    let killer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        c.cancel();
    });
    let t = Instant::now();
    let out = invoke(rt, &sb, &Recorder::default(), &request("hostile", json!("sleep"), json!({})), limits(), &cancel);
    killer.join().unwrap();
    assert!(matches!(out, Err(InvokeError::Cancelled)), "{out:?}");
    assert!(t.elapsed() < Duration::from_secs(5), "kill took {:?}", t.elapsed());

    // A short sleep within the limits is a normal sleep.
    let out = invoke(
        rt,
        &sb,
        &Recorder::default(),
        &request("hostile", json!("sleep"), json!({"ms": 120})),
        limits(),
        &CancelToken::new(),
    );
    let slept: u64 = results(out)[0]["detail"].as_str().unwrap().parse().unwrap();
    assert!((120..2000).contains(&slept), "slept {slept} ms");
}

#[test]
fn unknown_operator() {
    let rt = runtime();
    let sb = Sandbox::new();
    let out =
        invoke(rt, &sb, &Recorder::default(), &request("nope", json!(null), json!({})), limits(), &CancelToken::new());
    assert!(matches!(out, Err(InvokeError::UnknownOperator(ref op)) if op == "nope"), "{out:?}");
    assert!(rt.has_operator("hostile") && !rt.has_operator("nope"));
}

#[test]
fn missing_workspace_is_a_clear_error() {
    let rt = runtime();
    let sb = Sandbox::new();
    let req = request("hostile", json!("noop"), json!({}));
    let gone = sb.root.join("does-not-exist");
    let out = rt.invoke(spade_api::Invocation {
        request: &req,
        workspace: &gone,
        disk: &spade_api::DiskQuota::unlimited(),
        limits: limits(),
        services: &Recorder::default(),
        cancel: &CancelToken::new(),
    });
    let msg = plugin_error(out);
    assert!(msg.contains("cannot open the task workspace") && msg.contains("does-not-exist"), "{msg}");
}

#[test]
fn concurrent_calls_share_the_runtime() {
    let rt = runtime();
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                let sb = Sandbox::new();
                for _ in 0..50 {
                    let out = invoke(
                        rt,
                        &sb,
                        &Recorder::default(),
                        &request("hostile", json!("noop"), json!({})),
                        limits(),
                        &CancelToken::new(),
                    );
                    assert!(matches!(out, Ok(Outcome::Done(_))), "{out:?}");
                }
            });
        }
    });
}

/// A call in a sandbox whose attempt may add `quota` bytes to the workspace.
fn call_with_quota(sb: &Sandbox, attack: &str, params: Value) -> Result<Outcome, InvokeError> {
    let req = request("hostile", json!(attack), params);
    invoke(runtime(), sb, &Recorder::default(), &req, limits(), &CancelToken::new())
}

#[test]
fn disk_fill_past_the_quota_fails_the_call_naming_the_quota() {
    let mut sb = Sandbox::new();
    sb.disk = spade_api::DiskQuota::new(4 << 20);
    let out = call_with_quota(&sb, "disk_fill", json!({"size": 64 << 20}));
    let msg = plugin_error(out);
    assert!(msg.contains("disk quota of 4 MiB"), "{msg}");
    assert!(msg.contains("--disk-quota"), "the error says how to raise it: {msg}");
    // Nothing past the quota reached the disk.
    let on_disk = std::fs::metadata(sb.ws.join("fill.bin")).map(|m| m.len()).unwrap_or(0)
        + std::fs::metadata(sb.ws.join("sparse.bin")).map(|m| m.len()).unwrap_or(0);
    assert!(on_disk <= 4 << 20, "{on_disk} bytes written past a 4 MiB quota");
    assert!(sb.disk.used() <= 4 << 20);
}

#[test]
fn the_quota_counts_growth_and_gives_back_what_is_deleted() {
    let mut sb = Sandbox::new();
    sb.disk = spade_api::DiskQuota::new(10 << 20);
    // 3 MiB streamed + a 3 MiB set_len, then deleted: the attempt's usage goes back to 0.
    let out = call_with_quota(&sb, "disk_fill", json!({"size": 3 << 20, "cleanup": "yes"}));
    for r in results(out) {
        assert_eq!(r["ok"], json!(true), "{r}");
    }
    assert_eq!(sb.disk.used(), 0);
    // The same again, kept: 6 MiB used, so a second 6 MiB fill (over the same files, which
    // truncation gives back first) fits, and a fill of 12 MiB does not.
    let out = call_with_quota(&sb, "disk_fill", json!({"size": 3 << 20}));
    assert!(matches!(out, Ok(Outcome::Done(_))), "{out:?}");
    assert_eq!(sb.disk.used(), 6 << 20);
    let out = call_with_quota(&sb, "disk_fill", json!({"size": 3 << 20}));
    assert!(matches!(out, Ok(Outcome::Done(_))), "{out:?}");
    assert_eq!(sb.disk.used(), 6 << 20);
    let msg = plugin_error(call_with_quota(&sb, "disk_fill", json!({"size": 12 << 20})));
    assert!(msg.contains("disk quota"), "{msg}");
    // Files the workspace started with are not charged: input.txt is untouched and the
    // quota never counts it.
    assert_eq!(std::fs::read_to_string(sb.ws.join("input.txt")).unwrap(), "hello from the host\n");
}
