//! End-to-end runs of the `spade` binary: the example workflow the README points at, and
//! the behaviour a user sees at the edges (load errors before anything runs, check).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn spade(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_spade"))
        .args(args)
        .current_dir(dir)
        .env("TZ", "Asia/Kathmandu")
        .output()
        .expect("spade starts")
}

/// `spade ARGS` in `dir` with extra environment variables (state, secrets, caches).
fn spade_env(dir: &Path, args: &[&str], env: &[(&str, &std::ffi::OsStr)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_spade"))
        .args(args)
        .current_dir(dir)
        .envs(env.iter().copied())
        .output()
        .expect("spade starts")
}

/// `spade ARGS` in `dir`, left running in the background with its output discarded.
fn spade_background(dir: &Path, args: &[&str]) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_spade"))
        .args(args)
        .current_dir(dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spade starts")
}

fn stdout_lines(out: &Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_file() {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

fn example() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/hello")
}

#[test]
fn example_workflow_runs_and_reports_its_deliberate_failure() {
    let tmp = tempfile::tempdir().unwrap();
    copy_dir(&example(), tmp.path());
    let out = spade(tmp.path(), &["run", "hello.dig", "--session", "2024-01-01"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stdout_lines(&out),
        vec![
            "Hello from spade! Session 2024-01-01, task +hello+hello",
            "apple has 5 letters",
            "banana has 6 letters",
            "cherry has 6 letters",
            "_error handler saw: this task fails on purpose, to show how a failure looks",
        ],
        "stderr: {stderr}"
    );
    assert!(!out.status.success());
    assert!(stderr.contains("+hello+fails_on_purpose failed: this task fails on purpose"), "{stderr}");

    // Same session again (the default `last`): everything that succeeded — the _error
    // handler included, as in Digdag's local mode — is replayed silently; the failing task
    // runs and fails again.
    let again = spade(tmp.path(), &["run", "hello.dig"]);
    let again_err = String::from_utf8_lossy(&again.stderr);
    assert!(stdout_lines(&again).is_empty(), "stderr: {again_err}");
    assert!(!again.status.success());
    assert!(again_err.contains("+hello+fails_on_purpose failed"), "{again_err}");

    // --rerun runs everything again.
    let rerun = spade(tmp.path(), &["run", "hello.dig", "--rerun"]);
    assert_eq!(stdout_lines(&rerun).len(), 5);
}

#[test]
fn load_errors_name_the_place_and_nothing_runs() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("ok.dig"), "+a:\n  echo>: should not print\n").unwrap();
    std::fs::write(tmp.path().join("broken.dig"), "+a:\n  echo>: x\n  sh>: y\n").unwrap();
    let out = spade(tmp.path(), &["run", "ok.dig", "--session", "2024-01-01"]);
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("broken.dig:"), "{stderr}");
    assert!(stderr.contains("+a"), "{stderr}");
}

#[test]
fn check_prints_the_task_tree() {
    let out = spade(&example(), &["check"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("+hello+each_fruit"), "{text}");
    assert!(text.contains("for_each>"), "{text}");
}

/// The user report behind spade: Digdag re-evaluated `retry_attempt_name` on every poll of
/// `require>` and so started a new attempt each time. Requests are frozen here: one run of
/// the task starts exactly one attempt, however often it polls.
#[test]
fn require_with_random_attempt_name_starts_one_attempt_per_run() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(
        tmp.path().join("main.dig"),
        "+need:\n  require>: dep\n  retry_attempt_name: ${Math.random().toString(36).slice(2)}\n+after:\n  echo>: main done\n",
    )
    .unwrap();
    // The dependency takes a few seconds, so require> polls it several times (1 s, 2 s ...).
    std::fs::write(
        tmp.path().join("dep.dig"),
        "+slow:\n  wait>: 3s\n+say:\n  echo>: dep ran as ${retry_attempt_name.length > 0}\n",
    )
    .unwrap();
    let out = spade(tmp.path(), &["run", "main.dig", "--session", "2024-03-01"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(stdout_lines(&out), vec!["dep ran as true", "main done"], "{stderr}");

    // Exactly one attempt of dep exists for that session.
    use spade_store::Store as _;
    let mut store = spade_store::SqliteStore::open(&tmp.path().join(".spade/state.db")).unwrap();
    let project = tmp.path().canonicalize().unwrap().file_name().unwrap().to_string_lossy().into_owned();
    let attempts = store.session_attempts(&project, "dep", "2024-03-01T00:00:00+00:00").unwrap();
    assert_eq!(attempts.len(), 1, "{attempts:?}");
    assert!(!attempts[0].name.is_empty(), "the attempt carries the evaluated random name");
}

#[test]
fn retry_resume_reruns_only_what_failed_and_all_reruns_everything() {
    let tmp = tempfile::tempdir().unwrap();
    let wf = |b: &str| {
        format!(
            "+a:\n  echo>: \"a ${{typeof retry_attempt_name == 'undefined' ? 'first' : 'retried'}}\"\n+b:\n  {b}\n+c:\n  echo>: c\n"
        )
    };
    std::fs::write(tmp.path().join("wf.dig"), wf("fail>: b broke")).unwrap();
    let first = spade(tmp.path(), &["run", "wf.dig", "--session", "2024-01-01"]);
    assert!(!first.status.success());
    assert_eq!(stdout_lines(&first), vec!["a first"]);
    // The failure is kept in the task log.
    let log = spade(tmp.path(), &["log", "1"]);
    assert!(String::from_utf8_lossy(&log.stdout).contains("+wf+b error failed: b broke"), "{log:?}");

    std::fs::write(tmp.path().join("wf.dig"), wf("echo>: b fixed")).unwrap();
    let missing = spade(tmp.path(), &["retry", "1"]);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("--resume"));

    let resumed = spade(tmp.path(), &["retry", "1", "--resume", "--name", "fix"]);
    assert!(resumed.status.success(), "{}", String::from_utf8_lossy(&resumed.stderr));
    assert_eq!(stdout_lines(&resumed), vec!["b fixed", "c"]);

    let dup = spade(tmp.path(), &["retry", "1", "--resume", "--name", "fix"]);
    assert!(!dup.status.success());
    assert!(String::from_utf8_lossy(&dup.stderr).contains("already has an attempt named 'fix'"));

    let all = spade(tmp.path(), &["retry", "2", "--all"]);
    assert!(all.status.success(), "{}", String::from_utf8_lossy(&all.stderr));
    assert_eq!(stdout_lines(&all), vec!["a retried", "b fixed", "c"]);
}

#[test]
fn kill_stops_a_running_attempt_and_its_waiting_task() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("k.dig"), "+w:\n  wait>: 60s\n+after:\n  echo>: not printed\n").unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_spade"))
        .args(["run", "k.dig", "--session", "2024-01-01"])
        .current_dir(tmp.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the attempt exists and runs.
    let started = std::time::Instant::now();
    loop {
        let out = spade(tmp.path(), &["attempts"]);
        if String::from_utf8_lossy(&out.stdout).contains("running") {
            break;
        }
        assert!(started.elapsed().as_secs() < 20, "the attempt never started");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let kill = spade(tmp.path(), &["kill", "1"]);
    assert!(kill.status.success(), "{}", String::from_utf8_lossy(&kill.stderr));
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    assert!(String::from_utf8_lossy(&out.stderr).contains("Killed"), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(started.elapsed().as_secs() < 30, "kill did not interrupt the 60 s wait");
    let again = spade(tmp.path(), &["kill", "1"]);
    assert!(!again.status.success(), "a finished attempt cannot be killed again");
}

#[test]
fn plugin_list_and_inspect_describe_plugins_without_running_them() {
    let tmp = tempfile::tempdir().unwrap();
    let list = spade(tmp.path(), &["plugin", "list"]);
    assert!(list.status.success(), "{}", String::from_utf8_lossy(&list.stderr));
    let text = String::from_utf8_lossy(&list.stdout);
    for op in ["echo>", "for_each>", "require>", "http>"] {
        assert!(text.contains(op), "{op} missing from:\n{text}");
    }
    let require_line = text.lines().find(|l| l.contains("require>")).unwrap();
    assert!(require_line.contains("engine"), "{require_line}");

    let hostile = spade_bundled::test_plugin_path("spade-test-hostile").expect("built by spade-bundled");
    let inspect = spade(tmp.path(), &["plugin", "inspect", hostile]);
    assert!(inspect.status.success(), "{}", String::from_utf8_lossy(&inspect.stderr));
    let text = String::from_utf8_lossy(&inspect.stdout);
    assert!(text.contains("hostile>"), "{text}");
    assert!(text.contains("contract:     spade:operator@"), "{text}");

    std::fs::write(tmp.path().join("junk.wasm"), b"not wasm").unwrap();
    let junk = spade(tmp.path(), &["plugin", "inspect", "junk.wasm"]);
    assert!(!junk.status.success());
    assert!(String::from_utf8_lossy(&junk.stderr).contains("not a valid WebAssembly component"));
}

/// A loopback HTTP server answering `requests` requests, each with 200 and the content
/// type and body `reply` gives for the request's head; returns its port.
fn loopback_http(requests: usize, reply: impl Fn(&str) -> (&'static str, String) + Send + 'static) -> u16 {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(requests) {
            let Ok(mut s) = stream else { continue };
            let mut buf = [0u8; 4096];
            let mut seen = Vec::new();
            while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => seen.extend_from_slice(&buf[..n]),
                }
            }
            let (kind, body) = reply(&String::from_utf8_lossy(&seen));
            let reply = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = s.write_all(reply.as_bytes());
        }
    });
    port
}

/// `http>` reaches the network only where the project's spade.yml grants it, and fills in
/// `${secret:...}` only from keys the project grants it.
#[test]
fn http_operator_reaches_only_hosts_the_project_grants() {
    // The body is the request's path, so the workflow can show what arrived.
    let port = loopback_http(4, |head| {
        let path = head.split_whitespace().nth(1).unwrap_or("").to_string();
        ("text/plain", path)
    });
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(
        tmp.path().join("wf.dig"),
        format!(
            "+get:\n  http>: http://127.0.0.1:{port}/greeting/${{secret:api.key}}\n  store_content: true\n  retry: false\n+show:\n  echo>: got ${{http.last_status}} ${{http.last_content}}\n"
        ),
    )
    .unwrap();
    let secrets = tmp.path().join("secrets.yml");
    let manage = |args: &[&str]| {
        spade_env(tmp.path(), &[&["secrets"], args].concat(), &[("SPADE_SECRETS", secrets.as_os_str())])
    };
    assert!(manage(&["--set", "api.key=s3cret", "--set", "other=x"]).status.success());
    assert!(manage(&["--delete", "other"]).status.success());
    let listed = manage(&[]);
    assert_eq!(stdout_lines(&listed), ["api.key"], "keys only, never values");
    assert!(!manage(&["--set", "bad key=1"]).status.success());
    let run = || {
        spade_env(tmp.path(), &["run", "wf.dig", "--session", "2024-01-01"], &[("SPADE_SECRETS", secrets.as_os_str())])
    };
    let denied = run();
    assert!(!denied.status.success(), "without a grant the request must be refused");
    assert!(denied.stdout.is_empty());

    // The host is granted, the secret key not yet: the task fails naming the key.
    std::fs::write(tmp.path().join("spade.yml"), format!("grants:\n  spade-http:\n    http: [\"127.0.0.1:{port}\"]\n"))
        .unwrap();
    let no_key = run();
    let err = String::from_utf8_lossy(&no_key.stderr);
    assert!(!no_key.status.success());
    assert!(err.contains("secret api.key is not set, or not granted"), "{err}");

    std::fs::write(
        tmp.path().join("spade.yml"),
        format!("grants:\n  spade-http:\n    http: [\"127.0.0.1:{port}\"]\n    secrets: [api.key]\n"),
    )
    .unwrap();
    let allowed = run();
    let err = String::from_utf8_lossy(&allowed.stderr);
    assert!(allowed.status.success(), "{err}");
    assert_eq!(stdout_lines(&allowed), vec!["got 200 /greeting/s3cret"]);
    assert!(!err.contains("s3cret"), "the log shows the URI as written: {err}");
}

/// `http_call>` fetches a workflow (YAML here, JSON by Content-Type) from a granted host and
/// runs it as the task's subtasks, with the task's params.
#[test]
fn http_call_runs_the_workflow_it_fetches() {
    let port = loopback_http(2, |head| {
        if head.starts_with("GET /yaml") {
            ("application/x-yaml", "+first:\n  echo>: fetched ${who}\n+second:\n  echo>: done\n".to_string())
        } else {
            ("text/html", "<html></html>".to_string())
        }
    });
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("spade.yml"), format!("grants:\n  spade-http:\n    http: [\"127.0.0.1:{port}\"]\n"))
        .unwrap();
    std::fs::write(
        tmp.path().join("wf.dig"),
        format!("_export:\n  who: spade\n+call:\n  http_call>: http://127.0.0.1:{port}/yaml\n"),
    )
    .unwrap();
    let out = spade(tmp.path(), &["run", "wf.dig", "--session", "2024-01-01"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(stdout_lines(&out), ["fetched spade", "done"]);

    std::fs::write(tmp.path().join("wf.dig"), format!("+call:\n  http_call>: http://127.0.0.1:{port}/html\n")).unwrap();
    let out = spade(tmp.path(), &["run", "wf.dig", "--session", "2024-01-02"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("Unsupported Content-Type (expected application/json or application/x-yaml): text/html")
    );
}

/// `param_set>` in one workflow, `param_get>` in another of the same project: the value
/// passes through the project's parameter server (its state store), and a key never set
/// reads as empty.
#[test]
fn param_set_and_param_get_share_values_across_workflows() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("producer.dig"), "+set:\n  param_set>:\n  last_day: ${session_date}\n  rows: 42\n")
        .unwrap();
    std::fs::write(
        tmp.path().join("consumer.dig"),
        "+get:\n  param_get>:\n  last_day: previous\n  rows: rows\n  never_set: nothing\n+show:\n  echo>: previous=${previous} rows=${rows} nothing=[${nothing}]\n",
    )
    .unwrap();
    let set = spade(tmp.path(), &["run", "producer.dig", "--session", "2024-03-04"]);
    assert!(set.status.success(), "{}", String::from_utf8_lossy(&set.stderr));
    let get = spade(tmp.path(), &["run", "consumer.dig", "--session", "2024-03-05"]);
    assert!(get.status.success(), "{}", String::from_utf8_lossy(&get.stderr));
    assert_eq!(stdout_lines(&get), ["previous=2024-03-04 rows=42 nothing=[]"]);
}

/// `spade plugin new --lang rust` makes a project whose own tests pass and which `spade
/// plugin build` turns into a component that `spade run --plugin` loads; `new` never writes
/// into a directory that already has files. Cargo runs offline from its cache, with a
/// target dir of its own under target/ so repeated runs reuse the compiled dependencies.
#[test]
fn plugin_new_rust_scaffold_builds_tests_and_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let project = tmp.path().join("myop");
    let target = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/guest-scaffold");
    let cmd = |program: &str, args: &[&str], dir: &Path| {
        Command::new(program)
            .args(args)
            .current_dir(dir)
            .env("CARGO_NET_OFFLINE", "true")
            .env("CARGO_TARGET_DIR", &target)
            .env_remove("SPADE_SDK_PATH")
            .output()
            .expect("starts")
    };
    let spade_bin = env!("CARGO_BIN_EXE_spade");
    let dir = project.to_str().unwrap();

    let new = cmd(spade_bin, &["plugin", "new", "--lang", "rust", "myop", "--dir", dir], tmp.path());
    assert!(new.status.success(), "{}", String::from_utf8_lossy(&new.stderr));
    let manifest = std::fs::read_to_string(project.join("Cargo.toml")).unwrap();
    assert!(manifest.contains("[workspace]"), "{manifest}");
    assert!(manifest.contains("spade-sdk = { path = "), "the sdk of this checkout is found: {manifest}");
    assert!(std::fs::read_to_string(project.join("src/lib.rs")).unwrap().contains("\"myop\""));

    let again = cmd(spade_bin, &["plugin", "new", "--lang", "rust", "myop", "--dir", dir], tmp.path());
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists and is not empty"));
    let bad = cmd(spade_bin, &["plugin", "new", "--lang", "rust", "My-Op"], tmp.path());
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("invalid operator name"));
    assert!(!tmp.path().join("My-Op").exists());

    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let test = cmd(&cargo, &["test", "--release"], &project);
    let test_out = String::from_utf8_lossy(&test.stdout);
    assert!(test.status.success(), "{test_out}\n{}", String::from_utf8_lossy(&test.stderr));
    assert!(test_out.contains("2 passed"), "{test_out}");

    let build = cmd(spade_bin, &["plugin", "build", dir], tmp.path());
    let text = String::from_utf8_lossy(&build.stdout);
    assert!(build.status.success(), "{text}\n{}", String::from_utf8_lossy(&build.stderr));
    assert!(text.contains("operators:    myop>"), "{text}");
    assert!(text.contains("capabilities: log output "), "{text}");
    assert!(text.contains("asks for:     nothing beyond log and output (its spade-plugin.toml)"), "{text}");
    let wasm = text.lines().find_map(|l| l.strip_prefix("built:")).expect("the built component is named").trim();
    assert!(wasm.ends_with("spade_plugin_myop.wasm"), "{wasm}");

    // The manifest is checked before anything is built: a typo fails at once, naming the file.
    let manifest_path = project.join("spade-plugin.toml");
    let manifest = std::fs::read_to_string(&manifest_path).unwrap();
    std::fs::write(&manifest_path, format!("{manifest}\nsecret = [\"myop.*\"]\n")).unwrap();
    let typo = cmd(spade_bin, &["plugin", "build", dir], tmp.path());
    let err = String::from_utf8_lossy(&typo.stderr);
    assert!(!typo.status.success());
    assert!(err.contains("spade-plugin.toml: invalid plugin manifest") && err.contains("secret"), "{err}");
    std::fs::write(&manifest_path, manifest).unwrap();

    std::fs::write(
        tmp.path().join("wf.dig"),
        "+greet:\n  myop>: world\n  greeting: hi\n+after:\n  echo>: \"last: ${myop.last}\"\n",
    )
    .unwrap();
    let run = spade(tmp.path(), &["run", "wf.dig", "--session", "2024-01-01", "--plugin", wasm]);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stderr}");
    assert_eq!(stdout_lines(&run), vec!["hi from myop>: world", "last: hi from myop>: world"], "{stderr}");
    assert!(stderr.contains("greeted world"), "the operator's log line reaches the task log: {stderr}");
}

/// Serves the files under `root` over HTTP on loopback (404 for anything else), counting
/// requests: enough of a static web server to host a plugin registry.
fn serve_dir(root: PathBuf) -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = hits.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let mut reader = BufReader::new(s.try_clone().unwrap());
            let mut line = String::new();
            let _ = reader.read_line(&mut line);
            loop {
                let mut h = String::new();
                if reader.read_line(&mut h).unwrap_or(0) == 0 || h.trim().is_empty() {
                    break;
                }
            }
            let path = line.split_whitespace().nth(1).unwrap_or("/").trim_start_matches('/').to_string();
            let file = (!path.contains("..")).then(|| std::fs::read(root.join(&path)).ok()).flatten();
            let (status, body) = match file {
                Some(b) => ("200 OK", b),
                None => ("404 Not Found", b"not found".to_vec()),
            };
            let head = format!("HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
            let _ = s.write_all(head.as_bytes());
            let _ = s.write_all(&body);
        }
    });
    (port, hits)
}

/// A plugin from a registry served over http: published with `spade plugin publish`,
/// resolved from a semver range, pinned with its digest in spade.lock, run from the
/// download cache afterwards, and refused when the registry later serves other bytes.
#[test]
fn registry_plugins_are_resolved_locked_and_checked() {
    let tmp = tempfile::tempdir().unwrap();
    let registry = tmp.path().join("registry");
    let project = tmp.path().join("project");
    let cache = tmp.path().join("cache");
    std::fs::create_dir_all(&project).unwrap();
    let run = |dir: &Path, args: &[&str]| spade_env(dir, args, &[("SPADE_CACHE_DIR", cache.as_os_str())]);
    let legacy = spade_bundled::test_plugin_path("spade-test-legacy01").expect("built by spade-bundled");
    let publish = run(tmp.path(), &["plugin", "publish", legacy, "--registry", registry.to_str().unwrap()]);
    assert!(publish.status.success(), "{}", String::from_utf8_lossy(&publish.stderr));
    assert!(String::from_utf8_lossy(&publish.stdout).starts_with("published spade-test-legacy01 0.1.0"));

    let (port, hits) = serve_dir(registry.clone());
    let config = |range: &str| {
        format!(
            "registry: http://127.0.0.1:{port}/\nplugins:\n  - name: spade-test-legacy01\n    version: \"{range}\"\n    grants: {{expressions: true, secrets: [none]}}\n"
        )
    };
    std::fs::write(project.join("spade.yml"), config("^0.1")).unwrap();
    std::fs::write(project.join("wf.dig"), "+a:\n  legacy>: from the registry\n").unwrap();

    let first = run(&project, &["run", "wf.dig", "--session", "2024-01-01"]);
    let err = String::from_utf8_lossy(&first.stderr);
    assert!(first.status.success(), "{err}");
    assert_eq!(stdout_lines(&first), vec!["legacy says from the registry"]);
    assert!(err.contains("locked spade-test-legacy01 0.1.0"), "{err}");
    let lock = std::fs::read_to_string(project.join("spade.lock")).unwrap();
    let digest = format!("sha256:{}", {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(std::fs::read(legacy).unwrap()))
    });
    assert!(lock.contains("version = \"0.1.0\"") && lock.contains(&digest), "{lock}");
    let fetched = hits.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(fetched, 2, "the index and the component");

    // Locked and cached: the next run neither asks the registry nor rewrites the lock.
    let again = run(&project, &["run", "wf.dig", "--session", "2024-01-02"]);
    assert!(again.status.success(), "{}", String::from_utf8_lossy(&again.stderr));
    assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), fetched);
    assert!(!String::from_utf8_lossy(&again.stderr).contains("locked"));
    assert_eq!(std::fs::read_to_string(project.join("spade.lock")).unwrap(), lock);

    // The registry replaces the published file (and its index entry) under the same
    // version: with the cache gone, the locked digest no longer matches and nothing runs.
    let other = std::fs::read(spade_bundled::test_plugin_path("spade-test-caps").unwrap()).unwrap();
    let other_digest = format!("sha256:{}", {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(&other))
    });
    std::fs::write(registry.join("files/spade-test-legacy01/spade-test-legacy01-0.1.0.wasm"), &other).unwrap();
    let index_path = registry.join("index/spade-test-legacy01.json");
    let index = std::fs::read_to_string(&index_path).unwrap().replace(&digest, &other_digest);
    std::fs::write(&index_path, index).unwrap();
    std::fs::remove_dir_all(cache.join("plugins")).unwrap();
    let replaced = run(&project, &["run", "wf.dig", "--session", "2024-01-03"]);
    let err = String::from_utf8_lossy(&replaced.stderr);
    assert!(!replaced.status.success());
    assert!(err.contains("the published file was replaced"), "{err}");
    assert!(replaced.stdout.is_empty());

    // A range nothing satisfies is named, with what exists.
    std::fs::write(project.join("spade.yml"), config("^2")).unwrap();
    let none = run(&project, &["plugin", "install"]);
    let err = String::from_utf8_lossy(&none.stderr);
    assert!(!none.status.success());
    assert!(err.contains("no version of spade-test-legacy01 matches ^2 (published: 0.1.0)"), "{err}");
}

/// `spade scheduler --once` starts one session per due slot (catching up the slots that
/// passed since the previous pass), each exactly once, and `spade schedules` shows where
/// the schedule stands.
#[test]
fn scheduler_starts_each_due_slot_once() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(
        tmp.path().join("tick.dig"),
        "timezone: UTC\nschedule:\n  seconds_interval>: 1\n+hello:\n  echo>: \"tick ${session_time}\"\n",
    )
    .unwrap();
    std::fs::write(tmp.path().join("plain.dig"), "+a:\n  echo>: never scheduled\n").unwrap();
    let first = spade(tmp.path(), &["scheduler", "--once"]);
    assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stderr));
    assert!(String::from_utf8_lossy(&first.stderr).contains("tick first runs at"));

    std::thread::sleep(std::time::Duration::from_millis(2500));
    let second = spade(tmp.path(), &["scheduler", "--once"]);
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(second.status.success(), "{err}");
    let mut ticks = stdout_lines(&second);
    assert!(ticks.len() >= 2, "slots passed during 2.5 s: {ticks:?}\n{err}");
    assert!(ticks.iter().all(|t| t.starts_with("tick ") && t.ends_with("+00:00")), "{ticks:?}");
    ticks.sort();
    ticks.dedup();

    let third = spade(tmp.path(), &["scheduler", "--once"]);
    assert!(third.status.success());
    let sessions = spade(tmp.path(), &["sessions"]);
    let listed = String::from_utf8_lossy(&sessions.stdout);
    let tick_sessions: Vec<&str> = listed.lines().filter(|l| l.contains(" tick ")).collect();
    for t in &ticks {
        let time = t.trim_start_matches("tick ");
        let rows: Vec<&&str> = tick_sessions.iter().filter(|l| l.contains(time)).collect();
        assert_eq!(rows.len(), 1, "session {time} once: {listed}");
        assert!(rows[0].contains("success"), "{}", rows[0]);
    }
    assert!(!listed.contains(" plain "), "{listed}");
    let schedules = spade(tmp.path(), &["schedules"]);
    let text = String::from_utf8_lossy(&schedules.stdout);
    assert!(text.contains("tick") && text.contains("{\"seconds_interval>\":1}") && !text.contains("plain"), "{text}");
}

/// The REST API and web UI that `spade scheduler` serves: workflows, starting an attempt,
/// its tasks and logs, sessions, killing a running attempt, and clear errors.
#[test]
fn api_starts_inspects_and_kills_attempts() {
    use std::io::BufRead;
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("hello.dig"), "timezone: UTC\n+greet:\n  echo>: hello ${who}\n").unwrap();
    std::fs::write(tmp.path().join("slow.dig"), "+w:\n  wait>: 60s\n").unwrap();
    std::fs::write(tmp.path().join("daily.dig"), "timezone: UTC\nschedule:\n  daily>: 23:59:59\n+a:\n  echo>: daily\n")
        .unwrap();
    let mut server = Command::new(env!("CARGO_BIN_EXE_spade"))
        .args(["scheduler", "--port", "0"])
        .current_dir(tmp.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    struct KillOnDrop(std::process::Child);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let stderr = server.stderr.take().unwrap();
    let _server = KillOnDrop(server);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let base = loop {
        let line = rx.recv_timeout(std::time::Duration::from_secs(30)).expect("the scheduler announces its API");
        if let Some(rest) = line.split_once("web UI on ").map(|(_, r)| r.trim().to_string()) {
            break rest;
        }
    };
    let agent = ureq::Agent::new_with_config(ureq::Agent::config_builder().http_status_as_error(false).build());
    let call = |method: &str, path: &str, body: Option<serde_json::Value>| -> (u16, serde_json::Value) {
        let url = format!("{base}{}", path.trim_start_matches('/'));
        let mut resp = match (method, body) {
            ("GET", _) => agent.get(&url).call(),
            ("POST", None) => agent.post(&url).send_empty(),
            ("POST", Some(b)) => agent.post(&url).header("Content-Type", "application/json").send(b.to_string()),
            ("PUT", Some(b)) => agent.put(&url).header("Content-Type", "application/json").send(b.to_string()),
            _ => unreachable!(),
        }
        .unwrap();
        let status = resp.status().as_u16();
        let text = resp.body_mut().read_to_string().unwrap();
        (status, serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)))
    };

    let (status, wfs) = call("GET", "/api/workflows", None);
    assert_eq!(status, 200);
    let names: Vec<&str> = wfs["workflows"].as_array().unwrap().iter().map(|w| w["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["daily", "hello", "slow"]);

    // Schedules: disable, move forward by a slot, and clear errors for what has none.
    let (status, disabled) = call("POST", "/api/schedules/daily/disable", None);
    assert_eq!((status, &disabled["disabled"]), (200, &serde_json::json!(true)), "{disabled}");
    let next = |w: &serde_json::Value| w["nextScheduleTime"].as_str().unwrap().to_string();
    let before = next(&disabled);
    let (status, skipped) = call("POST", "/api/schedules/daily/skip", Some(serde_json::json!({"count": 1})));
    assert_eq!(status, 200, "{skipped}");
    assert!(next(&skipped) > before, "{before} -> {skipped}");
    let (status, _) = call("POST", "/api/schedules/hello/disable", None);
    assert_eq!(status, 400);
    let (_, schedules) = call("GET", "/api/schedules", None);
    assert_eq!(schedules["schedules"].as_array().unwrap().len(), 1);

    let (status, attempt) = call(
        "PUT",
        "/api/attempts",
        Some(serde_json::json!({"workflowName": "hello", "sessionTime": "2024-02-01", "params": {"who": "api"}})),
    );
    assert_eq!(status, 200, "{attempt}");
    assert_eq!(attempt["sessionTime"], "2024-02-01T00:00:00+00:00");
    let id = attempt["id"].as_str().unwrap().to_string();
    let wait_done = |id: &str| {
        for _ in 0..300 {
            let (_, a) = call("GET", &format!("/api/attempts/{id}"), None);
            if a["done"] == true {
                return a;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        panic!("attempt {id} did not finish");
    };
    let done = wait_done(&id);
    assert_eq!((done["status"].as_str(), done["params"]["who"].as_str()), (Some("success"), Some("api")));
    let (_, tasks) = call("GET", &format!("/api/attempts/{id}/tasks"), None);
    let greet = tasks["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["fullName"] == "+hello+greet")
        .expect("the task is listed");
    assert_eq!(greet["state"], "success");
    // What the task used (spade's addition to Digdag's task resource).
    assert!(greet["usage"]["callSeconds"].as_f64().is_some_and(|s| s >= 0.0), "{greet}");
    assert!(greet["usage"]["peakMemoryBytes"].as_u64().is_some_and(|b| b > 0), "{greet}");
    let (status, logs) = call("GET", &format!("/api/attempts/{id}/logs"), None);
    assert_eq!(status, 200);
    assert!(logs["logs"].is_array());
    let (_, sessions) = call("GET", "/api/sessions?workflow=hello", None);
    assert_eq!(sessions["sessions"][0]["sessionTime"], "2024-02-01T00:00:00+00:00");
    assert_eq!(sessions["sessions"][0]["lastAttempt"]["id"].as_str(), Some(id.as_str()));

    // The same session again: a new attempt of it, answered as such.
    let (status, again) = call(
        "PUT",
        "/api/attempts",
        Some(
            serde_json::json!({"workflowName": "hello", "sessionTime": "2024-02-01T00:00:00Z", "params": {"who": "api"}}),
        ),
    );
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["sessionId"], done["sessionId"]);
    assert_ne!(again["id"], done["id"]);
    wait_done(again["id"].as_str().unwrap());

    // Errors say what is wrong.
    let (status, err) = call("PUT", "/api/attempts", Some(serde_json::json!({"workflowName": "nope"})));
    assert_eq!(status, 400);
    assert!(err["message"].as_str().unwrap().contains("no workflow \"nope\""), "{err}");
    let (status, _) = call("POST", &format!("/api/attempts/{id}/kill"), None);
    assert_eq!(status, 409, "a finished attempt cannot be killed");
    let (status, _) = call("GET", "/api/attempts/4242", None);
    assert_eq!(status, 404);

    // Kill a running attempt: its waiting task is interrupted and the attempt ends killed.
    let (status, slow) = call("PUT", "/api/attempts", Some(serde_json::json!({"workflowName": "slow"})));
    assert_eq!(status, 200, "{slow}");
    let slow_id = slow["id"].as_str().unwrap().to_string();
    let (status, killed) = call("POST", &format!("/api/attempts/{slow_id}/kill"), None);
    assert_eq!((status, &killed["cancelRequested"]), (200, &serde_json::json!(true)));
    assert_eq!(wait_done(&slow_id)["status"], "killed");

    // An attempt whose process died (SIGKILL) has nobody to notice a kill request: the API
    // records the end itself.
    let mut orphan = spade_background(tmp.path(), &["run", "slow", "--session", "2024-03-01"]);
    let orphan_id = (0..300)
        .find_map(|_| {
            let (_, list) = call("GET", "/api/sessions?workflow=slow", None);
            let found = list["sessions"].as_array().unwrap().iter().find_map(|s| {
                (s["sessionTime"] == "2024-03-01T00:00:00+00:00")
                    .then(|| s["lastAttempt"]["id"].as_str().unwrap().to_string())
            });
            if found.is_none() {
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            found
        })
        .expect("the orphan's attempt is recorded");
    std::thread::sleep(std::time::Duration::from_millis(500));
    orphan.kill().unwrap();
    orphan.wait().unwrap();
    let (status, _) = call("POST", &format!("/api/attempts/{orphan_id}/kill"), None);
    assert_eq!(status, 200);
    let (_, after) = call("GET", &format!("/api/attempts/{orphan_id}"), None);
    assert_eq!((after["done"].as_bool(), after["status"].as_str()), (Some(true), Some("killed")), "{after}");

    let page = agent.get(&base).call().unwrap().body_mut().read_to_string().unwrap();
    assert!(page.contains("<title>spade</title>"), "{page}");
}

/// Two schedulers sharing one PostgreSQL state (two hosts) start every due slot exactly
/// once between them; inspection reads the same state.
#[test]
fn schedulers_sharing_postgres_start_each_slot_once() {
    let base =
        std::env::var("SPADE_TEST_POSTGRES").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let schema = format!("spade_e2e_{}", std::process::id());
    let mut admin = match postgres::Client::connect(&base, postgres::NoTls) {
        Ok(c) => c,
        // Required in CI, whose machines always run PostgreSQL; elsewhere a printed note.
        Err(e) if std::env::var_os("SPADE_TEST_POSTGRES").is_none() && std::env::var_os("CI").is_none() => {
            eprintln!("note: PostgreSQL not reachable at {base} ({e}); skipped");
            return;
        }
        Err(e) => {
            panic!("PostgreSQL is required here (SPADE_TEST_POSTGRES or CI is set) but {base} does not answer: {e}")
        }
    };
    admin.batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}")).unwrap();
    let sep = if base.contains('?') { '&' } else { '?' };
    let url = format!("{base}{sep}options=-c%20search_path%3D{schema}");
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(
        tmp.path().join("tick.dig"),
        "timezone: UTC\nschedule:\n  seconds_interval>: 1\n+hello:\n  echo>: \"tick ${session_time}\"\n",
    )
    .unwrap();
    let scheduler = || {
        Command::new(env!("CARGO_BIN_EXE_spade"))
            .args(["scheduler", "--once"])
            .current_dir(tmp.path())
            .env("SPADE_STATE", &url)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let init = scheduler().wait_with_output().unwrap();
    assert!(init.status.success(), "{}", String::from_utf8_lossy(&init.stderr));
    std::thread::sleep(std::time::Duration::from_millis(2500));
    let (a, b) = (scheduler(), scheduler());
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    assert!(a.status.success(), "{}", String::from_utf8_lossy(&a.stderr));
    assert!(b.status.success(), "{}", String::from_utf8_lossy(&b.stderr));
    let mut ticks: Vec<String> = [&a, &b].iter().flat_map(|o| stdout_lines(o)).collect();
    let started = ticks.len();
    ticks.sort();
    ticks.dedup();
    assert!(started >= 2, "slots passed during 2.5 s");
    assert_eq!(ticks.len(), started, "a slot ran twice: {ticks:?}");

    let sessions = spade_env(tmp.path(), &["sessions"], &[("SPADE_STATE", url.as_ref())]);
    let listed = String::from_utf8_lossy(&sessions.stdout);
    for t in &ticks {
        let time = t.trim_start_matches("tick ");
        let row = listed.lines().find(|l| l.contains(time)).unwrap_or_else(|| panic!("{time} in {listed}"));
        assert!(row.contains("success"), "{row}");
    }
    let attempts: i64 = admin.query_one(&format!("SELECT COUNT(*) FROM {schema}.attempts"), &[]).unwrap().get(0);
    let sessions: i64 = admin.query_one(&format!("SELECT COUNT(*) FROM {schema}.sessions"), &[]).unwrap().get(0);
    assert_eq!(attempts, sessions, "one attempt per session");
    admin.batch_execute(&format!("DROP SCHEMA {schema} CASCADE")).unwrap();
}

/// `spade backfill` runs past slots as named attempts, and running it again adds nothing.
#[test]
fn backfill_runs_past_slots_once_per_name() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(
        tmp.path().join("daily.dig"),
        "timezone: UTC\nschedule:\n  daily>: 07:00:00\n+a:\n  echo>: day ${session_date} ${retry_attempt_name}\n",
    )
    .unwrap();
    let args = ["backfill", "daily", "--from", "2024-01-30", "--count", "3", "--name", "bf"];
    let dry = spade(tmp.path(), &[&args[..], &["-d"]].concat());
    assert!(dry.status.success(), "{}", String::from_utf8_lossy(&dry.stderr));
    assert_eq!(
        stdout_lines(&dry),
        ["2024-01-30T00:00:00+00:00", "2024-01-31T00:00:00+00:00", "2024-02-01T00:00:00+00:00"]
    );
    let run = spade(tmp.path(), &args);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let mut days = stdout_lines(&run);
    days.sort();
    assert_eq!(days, ["day 2024-01-30 bf", "day 2024-01-31 bf", "day 2024-02-01 bf"]);
    let again = spade(tmp.path(), &args);
    assert!(again.status.success());
    assert!(again.stdout.is_empty());
    assert_eq!(String::from_utf8_lossy(&again.stderr).matches("already has an attempt named").count(), 3);
    let missing = spade(tmp.path(), &["backfill", "nope", "--from", "2024-01-01", "--name", "x"]);
    assert!(!missing.status.success());
}

/// `spade disable` stops a schedule (the scheduler starts none of its slots), `spade enable`
/// catches up what passed meanwhile, and `spade reschedule --skip-to` moves it forward.
#[test]
fn schedules_can_be_disabled_enabled_and_rescheduled() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(
        tmp.path().join("tick.dig"),
        "timezone: UTC\nschedule:\n  seconds_interval>: 1\n+hello:\n  echo>: \"tick ${session_time}\"\n",
    )
    .unwrap();
    assert!(spade(tmp.path(), &["scheduler", "--once"]).status.success());
    assert!(spade(tmp.path(), &["disable", "tick"]).status.success());
    let listed = String::from_utf8_lossy(&spade(tmp.path(), &["schedules"]).stdout).to_string();
    assert!(listed.lines().any(|l| l.starts_with("tick") && l.contains("disabled")), "{listed}");
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let off = spade(tmp.path(), &["scheduler", "--once"]);
    assert!(off.status.success());
    assert!(off.stdout.is_empty(), "a disabled schedule starts nothing");

    assert!(spade(tmp.path(), &["enable", "tick"]).status.success());
    let on = spade(tmp.path(), &["scheduler", "--once"]);
    assert!(on.status.success());
    assert!(!stdout_lines(&on).is_empty(), "the slots missed while disabled are caught up");

    let moved = spade(tmp.path(), &["reschedule", "tick", "--skip-to", "2099-01-01"]);
    assert!(moved.status.success(), "{}", String::from_utf8_lossy(&moved.stderr));
    assert!(String::from_utf8_lossy(&moved.stdout).contains("next session 2099-01-01T00:00:00+00:00"));
    let later = spade(tmp.path(), &["scheduler", "--once"]);
    assert!(later.stdout.is_empty(), "nothing is due before 2099");
    assert!(!spade(tmp.path(), &["reschedule", "tick"]).status.success(), "--skip or --skip-to is required");
}

/// `skip_on_overtime` sees attempts the scheduler did not start itself (by hand, before a
/// restart, or on another host): their slots are skipped while one runs.
#[test]
fn skip_on_overtime_counts_attempts_started_elsewhere() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(
        tmp.path().join("busy.dig"),
        "timezone: UTC\nschedule:\n  seconds_interval>: 1\n  skip_on_overtime: true\n+w:\n  wait>: 30s\n",
    )
    .unwrap();
    assert!(spade(tmp.path(), &["scheduler", "--once"]).status.success());
    let mut by_hand = spade_background(tmp.path(), &["run", "busy", "--session", "2024-01-01"]);
    std::thread::sleep(std::time::Duration::from_millis(2000));
    let pass = spade(tmp.path(), &["scheduler", "--once"]);
    let _ = by_hand.kill();
    let _ = by_hand.wait();
    let err = String::from_utf8_lossy(&pass.stderr);
    assert!(pass.status.success(), "{err}");
    assert!(err.contains("skip_on_overtime"), "{err}");
    assert!(!err.contains("scheduler: started"), "{err}");
}

/// An attempt whose process died shows as such in `spade attempts`; `spade retry --resume`
/// continues it in a new attempt and closes the dead one, `spade kill` closes one.
#[test]
fn attempts_without_a_process_are_pointed_out() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("slow.dig"), "+w:\n  wait>: 2s\n+after:\n  echo>: resumed\n").unwrap();
    let mut run = spade_background(tmp.path(), &["run", "slow", "--session", "2024-01-01"]);
    let db = tmp.path().join(".spade/state.db");
    // Until `n` attempts have recorded their process.
    let wait_claimed = |n: i64| {
        for _ in 0..600 {
            let claimed = db.exists()
                && rusqlite::Connection::open(&db)
                    .and_then(|c| {
                        c.query_row("SELECT COUNT(*) FROM attempts WHERE pid IS NOT NULL", [], |r| r.get::<_, i64>(0))
                    })
                    .unwrap_or(0)
                    >= n;
            if claimed {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        panic!("the run did not record its attempt");
    };
    wait_claimed(1);
    run.kill().unwrap();
    run.wait().unwrap();
    let listed = spade(tmp.path(), &["attempts"]);
    assert!(String::from_utf8_lossy(&listed.stdout).contains("running (no process)"), "{listed:?}");
    assert!(String::from_utf8_lossy(&listed.stderr).contains("`spade kill 1` closes it"));
    let retry = spade(tmp.path(), &["retry", "1", "--resume"]);
    assert!(retry.status.success(), "{}", String::from_utf8_lossy(&retry.stderr));
    assert_eq!(stdout_lines(&retry), ["resumed"]);
    let after = String::from_utf8_lossy(&spade(tmp.path(), &["attempts"]).stdout).to_string();
    let status = |id: &str| after.lines().find(|l| l.starts_with(id)).unwrap_or("").to_string();
    assert!(status("1 ").contains("killed") && status("2 ").contains("success"), "{after}");

    // A second orphan, closed with kill.
    let mut run = spade_background(tmp.path(), &["run", "slow", "--session", "2024-01-02"]);
    wait_claimed(3);
    run.kill().unwrap();
    run.wait().unwrap();
    let kill = spade(tmp.path(), &["kill", "3"]);
    assert!(kill.status.success(), "{}", String::from_utf8_lossy(&kill.stderr));
    let after = String::from_utf8_lossy(&spade(tmp.path(), &["attempts"]).stdout).to_string();
    assert!(after.lines().any(|l| l.starts_with("3 ") && l.contains("killed")), "{after}");
}
