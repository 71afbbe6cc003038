//! `spade server` with pushed projects: `spade push`, `download`, `projects` and `start`
//! against one server started for this test binary, on PostgreSQL (required in CI, else
//! SQLite when no PostgreSQL answers, with a note), and `spade agent`s running the calls.
//! The agents run as local processes of this host.

mod support;

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;

use support::{spade_env, text};

const PG: &str = "postgres://postgres@127.0.0.1:5432";
const DATABASE: &str = "spade_server_tests";

/// A server shared by the tests of this binary.
struct Server {
    base: String,
    _child: Child,
    _state: tempfile::TempDir,
}

/// The state database: a fresh PostgreSQL database when one answers, else a SQLite file.
fn state_location(dir: &Path) -> String {
    let admin = std::env::var("SPADE_TEST_POSTGRES").unwrap_or_else(|_| format!("{PG}/test"));
    match postgres::Client::connect(&admin, postgres::NoTls) {
        Ok(mut client) => {
            client.batch_execute(&format!("DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")).unwrap();
            client.batch_execute(&format!("CREATE DATABASE {DATABASE}")).unwrap();
            let (base, _) = admin.rsplit_once('/').unwrap();
            format!("{base}/{DATABASE}")
        }
        Err(e) if std::env::var_os("CI").is_none() && std::env::var_os("SPADE_TEST_POSTGRES").is_none() => {
            eprintln!("note: PostgreSQL not reachable at {admin} ({e}); the server runs on SQLite");
            dir.join("server.db").display().to_string()
        }
        Err(e) => panic!("PostgreSQL is required here (CI or SPADE_TEST_POSTGRES is set): {admin}: {e}"),
    }
}

fn server() -> &'static Server {
    static SERVER: OnceLock<Server> = OnceLock::new();
    SERVER.get_or_init(|| {
        let state = tempfile::tempdir().unwrap();
        let location = state_location(state.path());
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_spade"));
        // A short lease: a dead agent's calls run elsewhere within seconds.
        cmd.args(["server", "--port", "0", "--max-archive-size", "1", "--lease-seconds", "2", "--state", &location])
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = support::spawn_for_process_life(cmd);
        let stderr = child.stderr.take().unwrap();
        let mut lines = std::io::BufReader::new(stderr).lines();
        let base = loop {
            let line = lines.next().expect("the server announces its address").unwrap();
            if let Some((_, rest)) = line.split_once("web UI on ") {
                break rest.trim().trim_end_matches('/').to_string();
            }
        };
        // Keep draining its stderr so that it never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Server { base, _child: child, _state: state }
    })
}

/// `spade ARGS -e <server>` in `dir`.
fn client(dir: &Path, args: &[&str]) -> (bool, String, String) {
    let base = &server().base;
    let out = spade_env(dir, args, &[("SPADE_ENDPOINT", base.as_ref())]);
    let (stdout, stderr) = text(&out);
    (out.status.success(), stdout, stderr)
}

fn write(dir: &Path, rel: &str, content: &str) {
    let path = dir.join(rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, content).unwrap();
}

fn http() -> ureq::Agent {
    ureq::Agent::new_with_config(ureq::Agent::config_builder().http_status_as_error(false).build())
}

fn get(path: &str) -> (u16, Vec<u8>) {
    let mut resp = http().get(format!("{}{path}", server().base)).call().unwrap();
    (resp.status().as_u16(), resp.body_mut().read_to_vec().unwrap())
}

fn put_archive(project: &str, revision: &str, bytes: &[u8]) -> (u16, serde_json::Value) {
    let url = format!("{}/api/projects?project={project}&revision={revision}", server().base);
    let mut resp = http().put(url).header("Content-Type", "application/gzip").send(bytes).unwrap();
    let status = resp.status().as_u16();
    (status, serde_json::from_slice(&resp.body_mut().read_to_vec().unwrap()).unwrap())
}

/// Every file under `dir` with its content (links as `-> target`).
fn tree(dir: &Path) -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let meta = std::fs::symlink_metadata(&p).unwrap();
            let rel = p.strip_prefix(dir).unwrap().to_path_buf();
            if meta.is_symlink() {
                out.push((rel, format!("-> {}", std::fs::read_link(&p).unwrap().display())));
            } else if meta.is_dir() {
                stack.push(p);
            } else {
                out.push((rel, std::fs::read_to_string(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}

fn project_id(name: &str) -> String {
    let (status, body) = get(&format!("/api/project?name={name}"));
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    v["id"].as_str().unwrap().to_string()
}

#[test]
fn push_then_download_round_trips_byte_for_byte() {
    let src = tempfile::tempdir().unwrap();
    let p = src.path();
    write(p, "etl.dig", "timezone: UTC\nschedule:\n  daily>: 07:00:00\n+load:\n  sh>: scripts/load.sh\n");
    write(p, "adhoc.dig", "+hello:\n  echo>: hi\n");
    write(p, "scripts/load.sh", "#!/bin/sh\necho loading\n");
    write(p, "queries/daily.sql", "select 1");
    write(p, ".spade/state.db", "local state never travels");
    write(p, "logs/run.log", "ignored");
    write(p, ".digdagignore", "logs/\n");
    std::os::unix::fs::symlink("queries/daily.sql", p.join("latest.sql")).unwrap();

    let (ok, out, err) = client(p, &["push", "etl", "-r", "v1"]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("revision: v1") && out.contains("archive type: db"), "{out}");

    // The archive served is the one pushed, byte for byte (and packing is deterministic).
    let id = project_id("etl");
    let (status, served) = get(&format!("/api/projects/{id}/archive?revision=v1"));
    assert_eq!(status, 200);
    let packed = spade_archive::pack(p, &Default::default()).unwrap();
    assert_eq!(served, packed.bytes, "byte-identical archive");
    assert!(out.contains(&packed.digest()), "the push reports the archive's sha256: {out}");

    // Downloaded into a fresh directory: the same files, without the ignored and dot ones.
    let dl = tempfile::tempdir().unwrap();
    let (ok, out, err) = client(dl.path(), &["download", "etl", "-o", "copy"]);
    assert!(ok, "{out}{err}");
    let mut expected = tree(p);
    expected
        .retain(|(rel, _)| !rel.starts_with(".spade") && !rel.starts_with("logs") && rel != Path::new(".digdagignore"));
    assert_eq!(tree(&dl.path().join("copy")), expected);
    // It never overwrites.
    let (ok, _, err) = client(dl.path(), &["download", "etl", "-o", "copy"]);
    assert!(!ok && err.contains("not empty"), "{err}");

    // The workflows of the revision, compiled.
    let (_, body) = get(&format!("/api/projects/{id}/workflows"));
    let wfs: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let names: Vec<&str> = wfs["workflows"].as_array().unwrap().iter().map(|w| w["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["adhoc", "etl"]);
    assert_eq!(wfs["workflows"][1]["timezone"], "UTC");
    assert_eq!(wfs["workflows"][1]["revision"], "v1");

    // Pushing v1 again with the same files is a no-op; with other files it is refused.
    let (ok, out, err) = client(p, &["push", "etl", "-r", "v1"]);
    assert!(ok, "{out}{err}");
    write(p, "queries/daily.sql", "select 2");
    let (ok, _, err) = client(p, &["push", "etl", "-r", "v1"]);
    assert!(!ok && err.contains("HTTP 409") && err.contains("new revision name"), "{err}");
    let (ok, out, err) = client(p, &["push", "etl", "-r", "v2"]);
    assert!(ok, "{out}{err}");

    let (ok, out, _) = client(p, &["projects", "etl"]);
    assert!(ok);
    let v2 = out.find("v2").unwrap();
    let v1 = out.find("v1").unwrap();
    assert!(v2 < v1, "newest revision first: {out}");
    let (ok, out, _) = client(p, &["projects"]);
    assert!(ok && out.lines().any(|l| l.starts_with("etl ") && l.contains("v2")), "{out}");

    // An older revision stays downloadable as it was.
    let (ok, _, err) = client(dl.path(), &["download", "etl", "-r", "v1", "-o", "old"]);
    assert!(ok, "{err}");
    assert_eq!(std::fs::read_to_string(dl.path().join("old/queries/daily.sql")).unwrap(), "select 1");
    let (ok, _, err) = client(dl.path(), &["download", "etl", "-o", "new"]);
    assert!(ok, "{err}");
    assert_eq!(std::fs::read_to_string(dl.path().join("new/queries/daily.sql")).unwrap(), "select 2");
}

/// A tar.gz with one entry whose name is written byte for byte.
fn evil_archive(name: &str) -> Vec<u8> {
    use std::io::Write;
    let mut h = tar::Header::new_old();
    h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(0o644);
    h.set_size(4);
    h.set_cksum();
    let mut raw = h.as_bytes().to_vec();
    raw.extend_from_slice(b"evil");
    raw.resize(512 * 4, 0);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&raw).unwrap();
    gz.finish().unwrap()
}

#[test]
fn bad_pushes_are_refused_and_store_nothing() {
    // Path traversal.
    let (status, body) = put_archive("evil", "r1", &evil_archive("../../etc/cron.d/evil"));
    assert_eq!(status, 400, "{body}");
    assert!(body["message"].as_str().unwrap().contains("../../etc/cron.d/evil"), "{body}");
    assert_eq!(get("/api/project?name=evil").0, 404, "nothing stored");

    // Not an archive at all.
    let (status, body) = put_archive("evil", "r1", b"hello");
    assert_eq!(status, 400, "{body}");

    // Larger than the server's limit (1 MiB here): refused before it is read.
    let src = tempfile::tempdir().unwrap();
    write(src.path(), "big.dig", "+a:\n  echo>: a\n");
    // Hex digits of a xorshift stream: about 4 bits per byte once compressed.
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    let noise: String = (0..3_000_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            char::from_digit((x & 15) as u32, 16).unwrap()
        })
        .collect();
    write(src.path(), "data/a.txt", &noise);
    let (ok, _, err) = client(src.path(), &["push", "big"]);
    assert!(!ok && err.contains("HTTP 413") && err.contains("too large"), "{err}");
    assert_eq!(get("/api/project?name=big").0, 404, "nothing stored");

    // A workflow that does not compile: the error says where, and nothing is stored.
    let src = tempfile::tempdir().unwrap();
    write(src.path(), "ok.dig", "+a:\n  echo>: a\n");
    write(src.path(), "broken.dig", "+a:\n  echo>: a\n+b:\n  _retry: [nope\n");
    let (ok, _, err) = client(src.path(), &["push", "broken"]);
    assert!(!ok && err.contains("HTTP 400") && err.contains("broken.dig:"), "{err}");
    assert_eq!(get("/api/project?name=broken").0, 404, "nothing stored");

    // An outgoing link is refused by the client before anything is sent.
    let outside = tempfile::tempdir().unwrap();
    write(outside.path(), "secret.txt", "s");
    write(src.path(), "broken.dig", "+a:\n  echo>: a\n");
    std::os::unix::fs::symlink(outside.path().join("secret.txt"), src.path().join("secret.txt")).unwrap();
    let (ok, _, err) = client(src.path(), &["push", "links"]);
    assert!(!ok && err.contains("outside the project directory"), "{err}");
}

#[test]
fn client_errors_are_clear() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, _, err) = client(dir.path(), &["download", "no-such-project"]);
    assert!(!ok && err.contains("HTTP 404") && err.contains("no-such-project"), "{err}");
    assert_eq!(get("/api/projects/999999").0, 404);
    assert_eq!(get("/api/projects/abc").0, 400);

    // Nobody listening.
    let out = spade_env(dir.path(), &["projects", "-e", "http://127.0.0.1:9"], &[]);
    let (_, err) = text(&out);
    assert!(!out.status.success() && err.contains("spade server"), "{err}");

    // Without authentication the server refuses to listen beyond loopback.
    let out = spade_env(dir.path(), &["server", "--bind", "0.0.0.0", "--state", "x.db"], &[]);
    let (_, err) = text(&out);
    assert!(!out.status.success() && err.contains("loopback"), "{err}");
}

/// A `spade agent` of the shared server, killed when dropped.
struct AgentProcess {
    child: Child,
    work: tempfile::TempDir,
}

impl AgentProcess {
    fn start(name: &str, tags: &[&str]) -> AgentProcess {
        let work = tempfile::tempdir().unwrap();
        let mut args = vec!["agent", "--name", name, "--slots", "2", "--work-dir"];
        let work_path = work.path().display().to_string();
        args.push(&work_path);
        let tag_list = tags.join(",");
        if !tags.is_empty() {
            args.extend(["--tags", &tag_list]);
        }
        let child = Command::new(env!("CARGO_BIN_EXE_spade"))
            .args(&args)
            .env("SPADE_ENDPOINT", &server().base)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        AgentProcess { child, work }
    }

    /// Whether a call is running here now (its workspace exists).
    fn has_call(&self) -> bool {
        std::fs::read_dir(self.work.path().join("workspaces")).is_ok_and(|mut d| d.next().is_some())
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn get_json(path: &str) -> serde_json::Value {
    let (status, body) = get(path);
    assert_eq!(status, 200, "{path}: {}", String::from_utf8_lossy(&body));
    serde_json::from_slice(&body).unwrap()
}

/// Polls until `f` gives a value; a bound on polls, not a timed expectation.
fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    for _ in 0..1200 {
        if let Some(v) = f() {
            return v;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    panic!("gave up waiting for {what}");
}

fn attempt_id(start_stdout: &str) -> String {
    start_stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("attempt id: "))
        .expect("start prints the attempt id")
        .to_string()
}

fn finished(id: &str) -> serde_json::Value {
    eventually(&format!("attempt {id} to finish"), || {
        let a = get_json(&format!("/api/attempts/{id}"));
        (a["done"] == true).then_some(a)
    })
}

fn log_messages(id: &str) -> Vec<(String, String)> {
    let logs = get_json(&format!("/api/attempts/{id}/logs"));
    logs["logs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| (l["taskName"].as_str().unwrap().to_string(), l["message"].as_str().unwrap().to_string()))
        .collect()
}

#[test]
fn agents_run_a_pushed_project_and_a_dead_agents_call_runs_elsewhere() {
    let src = tempfile::tempdir().unwrap();
    let p = src.path();
    write(
        p,
        "chaos.dig",
        "timezone: UTC\n\
         _export:\n  agent_tag: chaos\n\
         +first:\n  sh>: echo first-ran; cat input.txt\n\
         +slow:\n  sh>: echo slow-start; sleep 4; echo slow-end\n\
         +fan:\n  _parallel: true\n  +x:\n    echo>: x ${session_date}\n  +y:\n    echo>: y\n\
         +last:\n  sh>: echo last-ran\n",
    );
    write(p, "input.txt", "from the revision");
    let (ok, out, err) = client(p, &["push", "chaos", "-r", "v1"]);
    assert!(ok, "{out}{err}");

    // One agent first, so that it is the one holding the slow call when it dies.
    // Tagged, so that the agents of other tests of this binary leave these calls alone.
    let victim = AgentProcess::start("victim", &["chaos"]);
    let (ok, out, err) = client(p, &["start", "chaos", "chaos", "--session", "2024-05-01"]);
    assert!(ok, "{out}{err}");
    let id = attempt_id(&out);
    eventually("the first task to succeed", || {
        let tasks = get_json(&format!("/api/attempts/{id}/tasks"));
        tasks["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["fullName"] == "+chaos+first" && t["state"] == "success")
            .then_some(())
    });
    // The slow script runs on the victim between polls of its task (the agent holds the
    // script, not a call): kill -9 the agent then.
    eventually("the slow task to poll its script", || {
        let tasks = get_json(&format!("/api/attempts/{id}/tasks"));
        tasks["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["fullName"] == "+chaos+slow" && t["state"] == "polling")
            .then_some(())
    });
    assert!(victim.has_call(), "the victim keeps the polling task's workspace");
    drop(victim);

    let _survivor = AgentProcess::start("survivor", &["chaos"]);
    let attempt = finished(&id);
    assert_eq!(attempt["status"], "success", "{attempt}");
    let logs = log_messages(&id);
    let count = |m: &str| logs.iter().filter(|(_, msg)| msg == m).count();
    assert_eq!(count("first-ran"), 1, "a succeeded task never runs twice: {logs:?}");
    assert_eq!(count("from the revision"), 1, "each call runs in a copy of the revision: {logs:?}");
    assert_eq!(count("slow-end"), 1, "only the call that finished reported: {logs:?}");
    assert!(
        logs.iter().any(|(task, msg)| task == "+chaos+slow" && msg.contains("stopped answering")),
        "the log says why the task started over: {logs:?}"
    );
    assert_eq!(count("last-ran"), 1, "{logs:?}");
    assert_eq!(count("x 2024-05-01"), 1, "echo> output is the task's log: {logs:?}");
}

#[test]
fn tagged_tasks_wait_for_an_agent_with_the_tag() {
    let src = tempfile::tempdir().unwrap();
    write(
        src.path(),
        "tagged.dig",
        "+plain:\n  echo>: plain\n+gpu:\n  _export:\n    agent_tag: gpu\n  echo>: on-gpu\n",
    );
    let (ok, out, err) = client(src.path(), &["push", "tagged"]);
    assert!(ok, "{out}{err}");
    let _plain = AgentProcess::start("plain", &["eu"]);
    let (ok, out, err) = client(src.path(), &["start", "tagged", "tagged", "--session", "2024-05-01"]);
    assert!(ok, "{out}{err}");
    let id = attempt_id(&out);
    eventually("the untagged task to succeed", || {
        let tasks = get_json(&format!("/api/attempts/{id}/tasks"));
        tasks["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["fullName"] == "+tagged+plain" && t["state"] == "success")
            .then_some(())
    });
    // The gpu task waits: no agent has the tag.
    let a = get_json(&format!("/api/attempts/{id}"));
    assert_eq!(a["done"], false, "{a}");
    let _gpu = AgentProcess::start("gpu", &["gpu"]);
    let attempt = finished(&id);
    assert_eq!(attempt["status"], "success", "{attempt}");
    assert!(log_messages(&id).contains(&("+tagged+gpu".into(), "on-gpu".into())));
}

#[test]
fn killing_an_attempt_stops_its_script_on_the_agent() {
    let src = tempfile::tempdir().unwrap();
    write(
        src.path(),
        "kill.dig",
        "_export:\n  agent_tag: kill\n+long:\n  sh>: echo started; sleep 3017\n+never:\n  echo>: never\n",
    );
    let (ok, out, err) = client(src.path(), &["push", "kill"]);
    assert!(ok, "{out}{err}");
    let agent = AgentProcess::start("killer", &["kill"]);
    let (ok, out, err) = client(src.path(), &["start", "kill", "kill", "--session", "2024-05-01"]);
    assert!(ok, "{out}{err}");
    let id = attempt_id(&out);
    eventually("the script to run between polls", || {
        let tasks = get_json(&format!("/api/attempts/{id}/tasks"));
        tasks["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["fullName"] == "+kill+long" && t["state"] == "polling")
            .then_some(())
    });
    let sleeping =
        || Command::new("pgrep").args(["-f", "sleep 3017"]).output().map(|o| !o.stdout.is_empty()).unwrap_or(false);
    assert!(sleeping(), "the script runs on the agent");

    let base = server().base.clone();
    let (ok, _, err) = client(src.path(), &["kill", &id, "-e", &base]);
    assert!(ok, "{err}");
    let attempt = finished(&id);
    assert_eq!(attempt["status"], "killed", "{attempt}");
    // The inspection commands ask the server with -e.
    let (ok, out, err) = client(src.path(), &["attempts", "-e", &base]);
    assert!(ok && out.lines().any(|l| l.starts_with(&format!("{id} ")) && l.contains("killed")), "{out}{err}");
    let (ok, out, err) = client(src.path(), &["tasks", &id, "-e", &base]);
    assert!(ok && out.contains("+kill+long"), "{out}{err}");
    let (ok, out, err) = client(src.path(), &["sessions", "-e", &base]);
    assert!(ok && out.contains("kill") && out.contains("2024-05-01"), "{out}{err}");
    let (ok, _, err) = client(src.path(), &["log", "999999", "-e", &base]);
    assert!(!ok && err.contains("HTTP 404"), "{err}");
    // The agent heard of it: the script is stopped and the task's workspace is gone.
    eventually("the script to stop", || (!sleeping()).then_some(()));
    eventually("the task's workspace to go", || (!agent.has_call()).then_some(()));
    assert!(!log_messages(&id).iter().any(|(_, m)| m == "never"));
}

#[test]
fn pushed_schedules_run_from_schedule_from() {
    let src = tempfile::tempdir().unwrap();
    write(
        src.path(),
        "nightly.dig",
        "timezone: UTC\nschedule:\n  daily>: 00:00:00\n_export:\n  agent_tag: nightly\n+t:\n  echo>: ${session_date}\n",
    );
    // An unknown workflow to clear: refused, nothing stored.
    let (ok, _, err) = client(src.path(), &["push", "nightly", "--clear-schedule", "nope"]);
    assert!(!ok && err.contains("HTTP 400") && err.contains("nope"), "{err}");
    assert_eq!(get("/api/project?name=nightly").0, 404);

    // Two days back: the scheduler starts the missed sessions of those days.
    let from = (chrono::Utc::now() - chrono::Duration::days(2)).format("%Y-%m-%dT00:00:00Z").to_string();
    let (ok, out, err) = client(src.path(), &["push", "nightly", "--schedule-from", &from]);
    assert!(ok, "{out}{err}");
    let expected = [
        (chrono::Utc::now() - chrono::Duration::days(2)).format("%Y-%m-%d").to_string(),
        (chrono::Utc::now() - chrono::Duration::days(1)).format("%Y-%m-%d").to_string(),
    ];
    let sessions = eventually("the missed sessions to start", || {
        let s = get_json("/api/sessions?workflow=nightly");
        let times: Vec<String> = s["sessions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x["sessionTime"].as_str().unwrap()[..10].to_string())
            .collect();
        expected.iter().all(|d| times.contains(d)).then_some(times)
    });
    assert!(sessions.iter().all(|t| t.as_str() >= expected[0].as_str()), "nothing before schedule_from: {sessions:?}");
}
