//! A partitioned agent: `spade agent` in a network namespace of its own (a veth link to
//! the server's host), its link cut while it runs a call. The call runs again on another
//! agent once the lease runs out, the attempt finishes, and when the link comes back the
//! partitioned agent's late result is refused. Where network namespaces cannot be made
//! (not root, no `ip`), the partition is a SIGSTOP of the agent instead, said on stderr.

mod support;

use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use support::{hostile_plugin, spade_env, text};

/// The namespace, the veth pair and the addresses of this test run.
struct Net {
    ns: String,
    host_if: String,
    ns_if: String,
    host_ip: String,
}

fn ip(args: &[&str]) -> bool {
    Command::new("ip").args(args).stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
}

impl Net {
    /// A namespace linked to this host, or none when the machine does not allow it.
    fn create() -> Option<Net> {
        // Lets the SIGSTOP fallback be exercised on a machine that has namespaces.
        if std::env::var_os("SPADE_TEST_NO_NETNS").is_some() {
            return None;
        }
        let id = std::process::id() % 200 + 20;
        let net = Net {
            ns: format!("spade-part-{id}"),
            host_if: format!("sph{id}"),
            ns_if: format!("spn{id}"),
            host_ip: format!("10.231.{id}.1"),
        };
        let ns_ip = format!("10.231.{id}.2/24");
        let host_cidr = format!("{}/24", net.host_ip);
        let ok = ip(&["netns", "add", &net.ns])
            && ip(&["link", "add", &net.host_if, "type", "veth", "peer", "name", &net.ns_if])
            && ip(&["link", "set", &net.ns_if, "netns", &net.ns])
            && ip(&["addr", "add", &host_cidr, "dev", &net.host_if])
            && ip(&["link", "set", &net.host_if, "up"])
            && ip(&["netns", "exec", &net.ns, "ip", "addr", "add", &ns_ip, "dev", &net.ns_if])
            && ip(&["netns", "exec", &net.ns, "ip", "link", "set", &net.ns_if, "up"])
            && ip(&["netns", "exec", &net.ns, "ip", "link", "set", "lo", "up"]);
        if ok {
            Some(net)
        } else {
            drop(net);
            None
        }
    }

    /// Cut (or restore) the namespace's side of the link: the agent can no longer reach
    /// the server, and the server's address stays up for everyone else.
    fn link(&self, up: bool) {
        assert!(ip(&["netns", "exec", &self.ns, "ip", "link", "set", &self.ns_if, if up { "up" } else { "down" }]));
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        ip(&["link", "del", &self.host_if]);
        ip(&["netns", "del", &self.ns]);
    }
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn state_location(dir: &Path) -> String {
    let admin =
        std::env::var("SPADE_TEST_POSTGRES").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    match postgres::Client::connect(&admin, postgres::NoTls) {
        Ok(mut client) => {
            client.batch_execute("DROP DATABASE IF EXISTS spade_partition_tests WITH (FORCE)").unwrap();
            client.batch_execute("CREATE DATABASE spade_partition_tests").unwrap();
            format!("{}/spade_partition_tests", admin.rsplit_once('/').unwrap().0)
        }
        Err(e) if std::env::var_os("CI").is_none() && std::env::var_os("SPADE_TEST_POSTGRES").is_none() => {
            eprintln!("note: PostgreSQL not reachable at {admin} ({e}); the server runs on SQLite");
            dir.join("server.db").display().to_string()
        }
        Err(e) => panic!("PostgreSQL is required here (CI or SPADE_TEST_POSTGRES is set): {admin}: {e}"),
    }
}

fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    for _ in 0..1200 {
        if let Some(v) = f() {
            return v;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("gave up waiting for {what}");
}

fn get_json(base: &str, path: &str) -> serde_json::Value {
    let mut resp = ureq::get(format!("{base}{path}")).call().unwrap();
    serde_json::from_slice(&resp.body_mut().read_to_vec().unwrap()).unwrap()
}

fn task_state(base: &str, attempt: &str, task: &str) -> Option<String> {
    let tasks = get_json(base, &format!("/api/attempts/{attempt}/tasks"));
    tasks["tasks"]
        .as_array()?
        .iter()
        .find(|t| t["fullName"] == task)
        .and_then(|t| t["state"].as_str())
        .map(str::to_string)
}

#[test]
fn a_partitioned_agents_call_runs_elsewhere_and_its_late_result_is_refused() {
    let net = Net::create();
    if net.is_none() {
        eprintln!("note: no network namespace here (needs root and `ip`): the partition is a SIGSTOP of the agent");
    }
    let bind = net.as_ref().map_or("127.0.0.1".to_string(), |n| n.host_ip.clone());
    let work = tempfile::tempdir().unwrap();
    let location = state_location(work.path());
    let mut server = Command::new(env!("CARGO_BIN_EXE_spade"))
        .args(["server", "--bind", &bind, "--port", "0", "--allow-unauthenticated", "--lease-seconds", "2"])
        .args(["--state", &location])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut announced = String::new();
    let mut stderr = server.stderr.take().unwrap();
    let base = loop {
        let mut byte = [0u8; 1];
        assert_eq!(stderr.read(&mut byte).unwrap(), 1, "the server announces its address: {announced}");
        announced.push(byte[0] as char);
        if let Some(rest) = announced.strip_suffix("/\n").and_then(|a| a.split_once("web UI on ")) {
            break rest.1.to_string();
        }
    };
    std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
    let _server = Killed(server);

    let project = tempfile::tempdir().unwrap();
    let p = project.path();
    std::fs::copy(hostile_plugin(), p.join("hostile.wasm")).unwrap();
    // Granted what it imports (it links only then), as in tests/workspace.rs.
    std::fs::write(
        p.join("spade.yml"),
        "plugins:\n  - path: hostile.wasm\n    grants: {secrets: [allowed]}\n\
         grants:\n  spade-http:\n    http: [\"127.0.0.1:9\"]\n",
    )
    .unwrap();
    std::fs::write(
        p.join("part.dig"),
        "+first:\n  echo>: first-ran\n+long:\n  hostile>: sleep\n  ms: 5000\n+after:\n  echo>: after-ran\n",
    )
    .unwrap();
    let env = [("SPADE_ENDPOINT", base.as_ref())];
    let out = spade_env(p, &["push", "part", "-r", "v1"], &env);
    assert!(out.status.success(), "{:?}", text(&out));

    // The agent to be cut off: in the namespace when there is one.
    let agent_log = work.path().join("partitioned.log");
    let agent_dir = work.path().join("partitioned");
    let mut cmd = match &net {
        Some(n) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", &n.ns, env!("CARGO_BIN_EXE_spade")]);
            c
        }
        None => Command::new(env!("CARGO_BIN_EXE_spade")),
    };
    let partitioned = cmd
        .args(["-l", "info", "agent", "-e", &base, "--name", "partitioned", "--work-dir"])
        .arg(&agent_dir)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&agent_log).unwrap())
        .spawn()
        .unwrap();
    let partitioned = Killed(partitioned);

    let out = spade_env(p, &["start", "part", "part", "--session", "2024-06-01"], &env);
    assert!(out.status.success(), "{:?}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let id = stdout.lines().find_map(|l| l.trim().strip_prefix("attempt id: ")).unwrap().to_string();

    // Cut the agent off while it runs the long call.
    eventually("the long call to run on the partitioned agent", || {
        let running = task_state(&base, &id, "+part+long").as_deref() == Some("running");
        let has_call = std::fs::read_dir(agent_dir.join("workspaces")).is_ok_and(|mut d| d.next().is_some());
        (running && has_call).then_some(())
    });
    let pid = partitioned.0.id().to_string();
    match &net {
        Some(n) => n.link(false),
        None => assert!(Command::new("kill").args(["-STOP", &pid]).status().unwrap().success()),
    }

    // Another agent takes the call once the lease runs out; the attempt finishes.
    let helper_dir = work.path().join("helper");
    let _helper = Killed(
        Command::new(env!("CARGO_BIN_EXE_spade"))
            .args(["agent", "-e", &base, "--name", "helper", "--work-dir"])
            .arg(&helper_dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let attempt = eventually("the attempt to finish", || {
        let a = get_json(&base, &format!("/api/attempts/{id}"));
        (a["done"] == true).then_some(a)
    });
    assert_eq!(attempt["status"], "success", "{attempt}");

    // The link comes back: the partitioned agent's result arrives late and is refused.
    match &net {
        Some(n) => n.link(true),
        None => assert!(Command::new("kill").args(["-CONT", &pid]).status().unwrap().success()),
    }
    eventually("the partitioned agent to hear that its result was refused", || {
        std::fs::read_to_string(&agent_log).ok().filter(|log| log.contains("refused the result")).map(|_| ())
    });

    let logs = get_json(&base, &format!("/api/attempts/{id}/logs"));
    let messages: Vec<&str> = logs["logs"].as_array().unwrap().iter().filter_map(|l| l["message"].as_str()).collect();
    assert_eq!(messages.iter().filter(|m| **m == "first-ran").count(), 1, "{messages:?}");
    assert_eq!(messages.iter().filter(|m| **m == "after-ran").count(), 1, "{messages:?}");
}
