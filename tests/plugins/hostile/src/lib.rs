//! `spade-test-hostile`: a test-only operator plugin that attacks its own sandbox.
//!
//! Operator `hostile>`; the command names the attack (`hostile>: read_parent`). File attacks
//! report what happened as `store_params.hostile.results` (one entry per attempt, `ok`
//! telling whether the attempt succeeded) so the host tests can check that every escape was
//! refused; resource attacks (loop, sleep, memory, recursion, exit, panic) never return and must be
//! stopped by the host. `noop` returns at once (used by `spade bench`).
//!
//! Params used by some attacks: `outside` (absolute host path of a directory next to the
//! workspace), `count`, `size`, `keys`, `field`, `kind`, `path`, `depth`, `workflow`,
//! `cleanup`.
//!
//! Written against the raw `plugin` world with wit-bindgen (not the SDK) so that it can
//! produce outcomes the SDK would never let through (malformed JSON, huge fields).

wit_bindgen::generate!({ path: "../../../wit", world: "plugin" });

use serde_json::{Map, Value, json};
use spade::operator::log::{self, Level};
use spade::operator::types::{Done, Failure, Poll};
use spade::operator::{output, secrets};
use std::ffi::CString;
use std::os::raw::{c_char, c_int};

unsafe extern "C" {
    // wasi-libc: std has no stable symlink API on WASI targets.
    fn symlink(target: *const c_char, linkpath: *const c_char) -> c_int;
}

struct Hostile;

fn done(store: Value) -> Outcome {
    Outcome::Done(Done {
        store_params: store.to_string(),
        reset_store_params: vec![],
        export_params: "{}".into(),
        subtasks: None,
    })
}

/// One attempt and its result.
struct Report {
    attack: String,
    results: Vec<Value>,
}

impl Report {
    fn push(&mut self, op: &str, path: &str, res: Result<String, String>) {
        let (ok, detail) = match res {
            Ok(d) => (true, d),
            Err(e) => (false, e),
        };
        self.results.push(json!({"op": op, "path": path, "ok": ok, "detail": detail}));
    }
    fn read(&mut self, path: &str) {
        let r = std::fs::read(path).map(|b| String::from_utf8_lossy(&b).into_owned());
        self.push("read", path, r.map_err(|e| e.to_string()));
    }
    fn write(&mut self, path: &str) {
        let r = std::fs::write(path, b"planted by hostile\n").map(|_| "written".to_string());
        self.push("write", path, r.map_err(|e| e.to_string()));
    }
    fn list(&mut self, path: &str) {
        let r = std::fs::read_dir(path).and_then(|rd| {
            let mut names = Vec::new();
            for e in rd {
                names.push(e?.file_name().to_string_lossy().into_owned());
            }
            names.sort();
            Ok(names.join(","))
        });
        self.push("list", path, r.map_err(|e| e.to_string()));
    }
    fn hard_link(&mut self, from: &str, to: &str) {
        let r = std::fs::hard_link(from, to).map(|_| "linked".to_string());
        self.push("hard_link", &format!("{from} -> {to}"), r.map_err(|e| e.to_string()));
    }
    fn symlink(&mut self, target: &str, link: &str) {
        let (t, l) = (CString::new(target).unwrap(), CString::new(link).unwrap());
        // SAFETY: both pointers are valid NUL-terminated strings for the duration of the call.
        let rc = unsafe { symlink(t.as_ptr(), l.as_ptr()) };
        let r = if rc == 0 { Ok("created".to_string()) } else { Err(std::io::Error::last_os_error().to_string()) };
        self.push("symlink", &format!("{link} -> {target}"), r);
    }
    fn finish(self) -> Outcome {
        done(json!({"hostile": {"attack": self.attack, "results": self.results}}))
    }
}

fn param_u64(params: &Map<String, Value>, key: &str, default: u64) -> u64 {
    params.get(key).and_then(Value::as_u64).unwrap_or(default)
}

fn param_str<'a>(params: &'a Map<String, Value>, key: &str, default: &'a str) -> &'a str {
    params.get(key).and_then(Value::as_str).unwrap_or(default)
}

#[inline(never)]
fn recurse(n: u64) -> u64 {
    if n == 0 {
        return 0;
    }
    std::hint::black_box(recurse(std::hint::black_box(n - 1))).wrapping_add(1)
}

impl Guest for Hostile {
    fn describe() -> PluginInfo {
        PluginInfo {
            name: "spade-test-hostile".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            operators: vec!["hostile".into()],
            wit_version: "0.1.0".into(),
        }
    }

    fn run(request: TaskRequest) -> Outcome {
        let command: Value = serde_json::from_str(&request.command).unwrap_or(Value::Null);
        let params: Map<String, Value> = serde_json::from_str(&request.params).unwrap_or_default();
        let attack = command.as_str().unwrap_or("noop").to_string();
        let outside = params.get("outside").and_then(Value::as_str).unwrap_or("/nonexistent").to_string();
        let mut rep = Report { attack: attack.clone(), results: vec![] };
        match attack.as_str() {
            "noop" => return done(json!({})),
            "echo_request" => {
                let state = request.state.as_deref().map(|s| serde_json::from_str::<Value>(s).unwrap_or(Value::Null));
                return done(json!({"request": {
                    "operator": request.operator, "task_name": request.task_name,
                    "project_name": request.project_name, "workflow_name": request.workflow_name,
                    "attempt_id": request.attempt_id, "session_id": request.session_id,
                    "session_uuid": request.session_uuid, "session_time": request.session_time,
                    "timezone": request.timezone, "retry_attempt_name": request.retry_attempt_name,
                    "command": command, "params": params,
                    "local_params": serde_json::from_str::<Value>(&request.local_params).unwrap_or(Value::Null),
                    "raw": serde_json::from_str::<Value>(&request.raw).unwrap_or(Value::Null),
                    "state": state, "retry_count": request.retry_count,
                }}));
            }
            "fs_ok" => {
                // The workspace is "/": relative and absolute paths both land in it.
                rep.write("rel.txt");
                rep.write("/abs.txt");
                rep.push(
                    "mkdir",
                    "/sub",
                    std::fs::create_dir_all("/sub/deeper").map(|_| "ok".into()).map_err(|e| e.to_string()),
                );
                rep.write("sub/deeper/f.txt");
                rep.read("rel.txt");
                rep.read("/sub/deeper/f.txt");
                rep.read("input.txt");
                rep.list(".");
                rep.list("/");
                let cwd = std::env::current_dir().map(|p| p.display().to_string()).map_err(|e| e.to_string());
                rep.push("cwd", "", cwd);
            }
            "read_parent" => {
                rep.read("../secret.txt");
                rep.read("/../secret.txt");
                rep.read("../../../../../../etc/passwd");
                rep.read("sub/../../secret.txt");
            }
            "write_parent" => {
                rep.write("../planted.txt");
                rep.write("/../planted.txt");
                rep.push(
                    "mkdir",
                    "../planted_dir",
                    std::fs::create_dir("../planted_dir").map(|_| "ok".into()).map_err(|e| e.to_string()),
                );
                rep.push(
                    "remove",
                    "../secret.txt",
                    std::fs::remove_file("../secret.txt").map(|_| "ok".into()).map_err(|e| e.to_string()),
                );
                rep.push(
                    "rename",
                    "../secret.txt",
                    std::fs::rename("../secret.txt", "moved.txt").map(|_| "ok".into()).map_err(|e| e.to_string()),
                );
            }
            "cat" => rep.read(param_str(&params, "path", "input.txt")),
            "engine_files" => {
                // What a task granted nothing must never reach in a local project: the
                // state database, the grants and lock, and the project's workflow files.
                // `depth` ../ prefixes try to climb from the workspace to the project.
                let up = "../".repeat(param_u64(&params, "depth", 2) as usize);
                for base in ["", "/", up.as_str()] {
                    rep.read(&format!("{base}.spade/state.db"));
                    rep.read(&format!("{base}spade.yml"));
                    rep.read(&format!("{base}spade.lock"));
                }
                // Corrupt the state: 4 KiB of garbage over the database's first page.
                for path in [format!("{up}state.db"), format!("{up}.spade/state.db"), ".spade/state.db".to_string()] {
                    let r = std::fs::OpenOptions::new()
                        .write(true)
                        .open(&path)
                        .and_then(|mut f| std::io::Write::write_all(&mut f, &[0x5a; 4096]))
                        .map(|_| "overwritten".to_string());
                    rep.push("corrupt", &path, r.map_err(|e| e.to_string()));
                }
                // Grant itself everything.
                for path in [format!("{up}spade.yml"), "spade.yml".to_string(), "/spade.yml".to_string()] {
                    let r = std::fs::OpenOptions::new()
                        .append(true)
                        .create(true)
                        .open(&path)
                        .and_then(|mut f| {
                            std::io::Write::write_all(
                                &mut f,
                                b"grants:\n  spade-test-hostile: {secrets: ['*'], engine: true}\n",
                            )
                        })
                        .map(|_| "appended".to_string());
                    rep.push("grant", &path, r.map_err(|e| e.to_string()));
                }
                // Rewrite the workflow files it can see (its own copies, never the project's).
                let dig = param_str(&params, "workflow", "other.dig");
                rep.write(dig);
                rep.write(&format!("{up}{dig}"));
            }
            "disk_fill" => {
                // Write `size` bytes in 1 MiB chunks (stream writes), then try a positional
                // write far past the end and a file extended by set_len.
                let size = param_u64(&params, "size", 8 << 20);
                let r = (|| -> std::io::Result<String> {
                    let mut f = std::fs::File::create("fill.bin")?;
                    let chunk = vec![0x42u8; 1 << 20];
                    let mut written = 0u64;
                    while written < size {
                        let n = chunk.len().min((size - written) as usize);
                        std::io::Write::write_all(&mut f, &chunk[..n])?;
                        written += n as u64;
                    }
                    Ok(format!("{written} bytes"))
                })();
                rep.push("fill", "fill.bin", r.map_err(|e| e.to_string()));
                let r =
                    std::fs::File::create("sparse.bin").and_then(|f| f.set_len(size)).map(|_| "extended".to_string());
                rep.push("set_len", "sparse.bin", r.map_err(|e| e.to_string()));
                if param_str(&params, "cleanup", "no") == "yes" {
                    let _ = std::fs::remove_file("fill.bin");
                    let _ = std::fs::remove_file("sparse.bin");
                }
            }
            "read_abs" => {
                rep.read(&format!("{outside}/secret.txt"));
                rep.read("/etc/passwd");
                rep.list(&outside);
            }
            "write_abs" => {
                rep.write(&format!("{outside}/planted.txt"));
                rep.write(&format!("{outside}/secret.txt"));
                rep.write("/etc/spade-planted");
            }
            "symlink_premade" => {
                // The host test lays these out before the call.
                rep.read("link_rel");
                rep.read("/link_abs");
                rep.write("link_rel_new");
                rep.write("link_abs_new");
                rep.write("link_rel");
                rep.list("link_dir");
                rep.read("link_dir/secret.txt");
            }
            "hardlink" => {
                rep.hard_link("../secret.txt", "stolen1");
                rep.hard_link(&format!("{outside}/secret.txt"), "stolen2");
                rep.hard_link("link_rel", "stolen3");
                rep.hard_link("input.txt", "../planted_link");
                rep.read("stolen1");
                rep.read("stolen2");
                rep.read("stolen3");
            }
            "symlink_own" => {
                rep.symlink("../secret.txt", "mine_rel");
                rep.symlink(&format!("{outside}/secret.txt"), "mine_abs");
                rep.symlink("..", "mine_dir");
                rep.symlink(&format!("{outside}/planted.txt"), "mine_new");
                rep.read("mine_rel");
                rep.read("mine_abs");
                rep.read("mine_dir/secret.txt");
                rep.list("mine_dir");
                rep.write("mine_new");
                rep.write("mine_rel");
            }
            "proc_environ" => {
                rep.read("/proc/self/environ");
                rep.read("/proc/self/cmdline");
                let vars: Vec<String> = std::env::vars().map(|(k, v)| format!("{k}={v}")).collect();
                rep.push("env", "", if vars.is_empty() { Err("no variables".into()) } else { Ok(vars.join(";")) });
                let args: Vec<String> = std::env::args().collect();
                rep.push("args", "", if args.is_empty() { Err("no arguments".into()) } else { Ok(args.join(" ")) });
            }
            "list_root" => {
                rep.list("/");
                rep.list(".");
                rep.list("..");
                rep.list("/..");
            }
            "net" => {
                let tcp = std::net::TcpStream::connect("127.0.0.1:9").map(|_| "connected".to_string());
                rep.push("tcp_connect", "127.0.0.1:9", tcp.map_err(|e| e.to_string()));
                let udp = std::net::UdpSocket::bind("127.0.0.1:0").map(|_| "bound".to_string());
                rep.push("udp_bind", "127.0.0.1:0", udp.map_err(|e| e.to_string()));
                let tcp_l = std::net::TcpListener::bind("127.0.0.1:0").map(|_| "listening".to_string());
                rep.push("tcp_listen", "127.0.0.1:0", tcp_l.map_err(|e| e.to_string()));
                use std::net::ToSocketAddrs;
                let dns = "localhost:80".to_socket_addrs().map(|a| format!("{:?}", a.collect::<Vec<_>>()));
                rep.push("dns", "localhost", dns.map_err(|e| e.to_string()));
            }
            "secret" => {
                let keys: Vec<String> = params
                    .get("keys")
                    .and_then(Value::as_array)
                    .map(|a| a.iter().filter_map(|v| v.as_str().map(String::from)).collect())
                    .unwrap_or_default();
                for k in keys {
                    let r = secrets::get(&k).ok_or_else(|| "not visible".to_string());
                    rep.push("secret", &k, r);
                }
            }
            "stdio" => {
                println!("to stdout");
                eprintln!("to stderr");
                log::write(Level::Warn, "to log");
                output::print("to output");
            }
            "infinite_loop" => {
                let mut x: u64 = 0;
                loop {
                    x = std::hint::black_box(x.wrapping_add(1));
                }
            }
            "memory" => {
                // Touch every page so the growth is real; ends in an allocation failure.
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![0xA5; 1 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            "recursion" => {
                let n = recurse(std::hint::black_box(u64::MAX));
                rep.push("recursion", "", Ok(n.to_string()));
            }
            "sleep" => {
                // Blocks in the host (wasi:io/poll), where epoch interruption cannot reach.
                let ms = param_u64(&params, "ms", 3_600_000);
                let t = std::time::Instant::now();
                std::thread::sleep(std::time::Duration::from_millis(ms));
                rep.push("sleep", "", Ok(t.elapsed().as_millis().to_string()));
            }
            "panic" => panic!("hostile plugin panicked on purpose"),
            "exit" => std::process::exit(7),
            "log_flood" => {
                let count = param_u64(&params, "count", 200_000);
                let size = param_u64(&params, "size", 100) as usize;
                let line = "x".repeat(size);
                for i in 0..count {
                    log::write(Level::Info, &line);
                    output::print(&line);
                    if i % 8 == 0 {
                        println!("{line}");
                        eprintln!("{line}");
                    }
                }
                rep.push("log_flood", "", Ok(format!("{count} x {size}")));
            }
            "big_line" => {
                let size = param_u64(&params, "size", 8 << 20) as usize;
                let line = "y".repeat(size);
                log::write(Level::Error, &line);
                output::print(&line);
                rep.push("big_line", "", Ok(size.to_string()));
            }
            "huge_outcome" => {
                let size = param_u64(&params, "size", 32 << 20) as usize;
                return done(json!({ "blob": "z".repeat(size) }));
            }
            "malformed_outcome" => {
                let field = params.get("field").and_then(Value::as_str).unwrap_or("store_params");
                let kind = params.get("kind").and_then(Value::as_str).unwrap_or("malformed");
                let bad = match kind {
                    "non_object" => "[1, 2, 3]".to_string(),
                    "deep" => format!("{}{}", "[".repeat(100_000), "]".repeat(100_000)),
                    _ => "{\"unterminated\": ".to_string(),
                };
                let mut d = Done {
                    store_params: "{}".into(),
                    reset_store_params: vec![],
                    export_params: "{}".into(),
                    subtasks: None,
                };
                match field {
                    "export_params" => d.export_params = bad,
                    "subtasks" => d.subtasks = Some(bad),
                    "poll_state" => {
                        return Outcome::Poll(Poll { after_seconds: 1, state: bad });
                    }
                    _ => d.store_params = bad,
                }
                return Outcome::Done(d);
            }
            "poll" => {
                return Outcome::Poll(Poll { after_seconds: 5, state: json!({"n": 1}).to_string() });
            }
            "busy_poll" => {
                // Ask to be called again at once, `count` times, logging each call: the
                // engine's poll floor must space the calls out anyway.
                let n = request.state.as_deref().and_then(|s| serde_json::from_str::<Value>(s).ok());
                let n = n.and_then(|v| v["n"].as_u64()).unwrap_or(0);
                log::write(Level::Info, &format!("busy_poll call {n}"));
                if n + 1 < param_u64(&params, "count", 3) {
                    return Outcome::Poll(Poll { after_seconds: 0, state: json!({"n": n + 1}).to_string() });
                }
                return done(json!({"polled": n + 1}));
            }
            "fail" => {
                return Outcome::Error(Failure { message: "hostile failed on purpose".into(), retryable: true });
            }
            other => {
                return Outcome::Error(Failure { message: format!("unknown attack '{other}'"), retryable: false });
            }
        }
        rep.finish()
    }
}

export!(Hostile);
