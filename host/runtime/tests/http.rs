//! The `http` capability end to end: the bundled `http>` plugin against a tiny HTTP server
//! on 127.0.0.1, through the runtime's allowlist (granted host works; other hosts, redirects
//! to them and non-public addresses without an explicit grant are refused), timeouts, the
//! 64 KiB `store_content` cap, status handling, and the install-time refusal of a plugin
//! importing `wasi:http` without an http grant.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};
use spade_api::{CancelToken, InvokeError, Limits, LogLevel, Outcome};
use spade_runtime::{Grants, HttpAllow, Runtime, RuntimeConfig, RuntimeError};

/// One request the test server received.
#[derive(Clone, Debug)]
struct Seen {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

/// An HTTP/1.1 server on 127.0.0.1 answering one request per connection. It stops when
/// dropped, and after 60 s in any case.
struct Server {
    port: u16,
    seen: Arc<Mutex<Vec<Seen>>>,
    stop: Arc<AtomicBool>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

impl Server {
    fn start() -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let stop: Arc<AtomicBool> = Arc::default();
        let (s, st) = (seen.clone(), stop.clone());
        thread::spawn(move || {
            let end = Instant::now() + Duration::from_secs(60);
            while !st.load(Ordering::SeqCst) && Instant::now() < end {
                match listener.accept() {
                    Ok((conn, _)) => {
                        let s = s.clone();
                        thread::spawn(move || serve(conn, port, &s));
                    }
                    Err(_) => thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Server { port, seen, stop }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn paths(&self) -> Vec<String> {
        self.seen.lock().unwrap().iter().map(|s| s.path.clone()).collect()
    }
}

fn serve(conn: TcpStream, port: u16, seen: &Mutex<Vec<Seen>>) {
    conn.set_nonblocking(false).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() {
        return;
    }
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("").to_string();
    let path = parts.next().unwrap_or("").to_string();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).unwrap_or(0) == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.trim_end().split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    let len: usize = headers.iter().find(|(k, _)| k == "content-length").and_then(|(_, v)| v.parse().ok()).unwrap_or(0);
    let mut body = vec![0; len.min(1 << 20)];
    let _ = reader.read_exact(&mut body);
    seen.lock().unwrap().push(Seen {
        method: method.clone(),
        path: path.clone(),
        headers: headers.clone(),
        body: body.clone(),
    });
    let content_type = headers.iter().find(|(k, _)| k == "content-type").map(|(_, v)| v.clone()).unwrap_or_default();
    let (status, extra, out): (&str, String, Vec<u8>) = match path.as_str() {
        "/ok" => ("200 OK", String::new(), b"hello from the test server".to_vec()),
        "/echo" => (
            "200 OK",
            String::new(),
            format!("{method} {content_type} {}", String::from_utf8_lossy(&body)).into_bytes(),
        ),
        p if p.starts_with("/token/") => ("200 OK", String::new(), b"token accepted".to_vec()),
        "/redirect-ok" => ("302 Found", "Location: /ok\r\n".into(), vec![]),
        "/redirect-denied" => ("302 Found", format!("Location: http://denied.example:{port}/stolen\r\n"), vec![]),
        "/big" => ("200 OK", String::new(), vec![b'x'; 70 << 10]),
        "/slow" => {
            thread::sleep(Duration::from_secs(4));
            ("200 OK", String::new(), b"late".to_vec())
        }
        "/unavailable" => ("503 Service Unavailable", String::new(), b"try later".to_vec()),
        _ => ("404 Not Found", String::new(), b"no such page".to_vec()),
    };
    let mut w = conn;
    let head = format!("HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n{extra}\r\n", out.len());
    let _ = w.write_all(head.as_bytes());
    let _ = w.write_all(&out);
    let _ = w.flush();
}

fn limits() -> Limits {
    Limits { cpu_time: Duration::from_secs(30), memory_bytes: 256 << 20, log_bytes: 1 << 20 }
}

fn http_plugin() -> &'static [u8] {
    spade_bundled::plugin("spade-plugin-http").expect("the http plugin is bundled")
}

fn runtime(allow: &[&str]) -> Runtime {
    let rt = Runtime::new(RuntimeConfig::default()).unwrap();
    let grants = Grants {
        secrets: vec!["http.*".into()],
        http: Some(allow.iter().map(|a| HttpAllow::parse(a).unwrap()).collect()),
        ..Grants::default()
    };
    rt.install("spade-plugin-http", http_plugin(), grants).unwrap();
    rt
}

fn run(rt: &Runtime, url: &str, params: Value) -> (Result<Outcome, InvokeError>, Recorder) {
    let sb = Sandbox::new();
    let rec = Recorder::default();
    let req = request("http", json!(url), params);
    let out = invoke(rt, &sb, &rec, &req, limits(), &CancelToken::new());
    (out, rec)
}

fn failure(out: Result<Outcome, InvokeError>) -> (String, bool) {
    match out {
        Ok(Outcome::Error { message, retryable }) => (message, retryable),
        other => panic!("expected a task failure, got {other:?}"),
    }
}

fn warnings(rec: &Recorder) -> String {
    rec.logs().into_iter().filter(|(l, _)| *l == LogLevel::Warn).map(|(_, m)| m).collect::<Vec<_>>().join("\n")
}

#[test]
fn granted_host_stores_status_and_content() {
    let server = Server::start();
    let rt = runtime(&[&format!("127.0.0.1:{}", server.port)]);
    let (out, _) = run(&rt, &server.url("/ok"), json!({"store_content": true}));
    let store = done_store(out.unwrap());
    assert_eq!(store["http"], json!({"last_status": 200, "last_content": "hello from the test server"}));
    // Without store_content only the status is stored; both keys are reset first.
    let (out, _) = run(&rt, &server.url("/ok"), json!({}));
    match out.unwrap() {
        Outcome::Done(d) => {
            assert_eq!(d.store_params["http"], json!({"last_status": 200}));
            assert_eq!(d.reset_store_params, ["http.last_content", "http.last_status"]);
        }
        other => panic!("{other:?}"),
    }
    // The granted secret became the Authorization header.
    let seen = server.seen.lock().unwrap().clone();
    assert!(seen[0].headers.contains(&("authorization".into(), "value-of-http.authorization".into())), "{seen:?}");
}

#[test]
fn posts_json_and_form_content_with_headers() {
    let server = Server::start();
    let rt = runtime(&[&format!("http://127.0.0.1:{}", server.port)]);
    let (out, _) = run(
        &rt,
        &server.url("/echo"),
        json!({"method": "POST", "content": {"a": [1, 2]}, "store_content": true,
               "headers": [{"X-Trace": "t1"}]}),
    );
    let store = done_store(out.unwrap());
    assert_eq!(store["http"]["last_content"], json!(r#"POST application/json {"a":[1,2]}"#));
    let (out, _) = run(
        &rt,
        &server.url("/echo"),
        json!({"method": "put", "content": {"q": "a b&c"}, "content_format": "form", "store_content": true}),
    );
    let store = done_store(out.unwrap());
    assert_eq!(store["http"]["last_content"], json!("PUT application/x-www-form-urlencoded q=a+b%26c"));
    let seen = server.seen.lock().unwrap().clone();
    assert!(seen[0].headers.contains(&("x-trace".into(), "t1".into())));
    assert_eq!(seen[0].method, "POST");
    assert_eq!(seen[1].body, b"q=a+b%26c");
}

#[test]
fn ungranted_host_is_refused_before_any_connection() {
    let server = Server::start();
    let rt = runtime(&[&format!("127.0.0.1:{}", server.port)]);
    let (out, rec) = run(&rt, "http://denied.example/x", json!({}));
    let (msg, retryable) = failure(out);
    assert!(msg.contains("refused by spade") && msg.contains("http://denied.example/x"), "{msg}");
    assert!(msg.contains("http grant"), "{msg}");
    assert!(!retryable, "a refusal never succeeds on retry");
    let log = warnings(&rec);
    assert!(log.contains("denied.example:80 is not in this plugin's http grant"), "{log}");
    assert!(log.contains(&format!("granted: 127.0.0.1:{}", server.port)), "{log}");

    // Same host, other port; and https where only http is granted.
    let other = format!("http://127.0.0.1:{}/ok", server.port.wrapping_add(1).max(1));
    let (msg, _) = failure(run(&rt, &other, json!({})).0);
    assert!(msg.contains("refused by spade"), "{msg}");
    let rt = runtime(&[&format!("http://127.0.0.1:{}", server.port)]);
    let (msg, _) = failure(run(&rt, &format!("https://127.0.0.1:{}/ok", server.port), json!({})).0);
    assert!(msg.contains("refused by spade"), "{msg}");
    assert!(server.paths().is_empty(), "{:?}", server.paths());
}

#[test]
fn redirects_are_checked_hop_by_hop() {
    let server = Server::start();
    let rt = runtime(&[&format!("127.0.0.1:{}", server.port)]);
    let (out, _) = run(&rt, &server.url("/redirect-ok"), json!({"store_content": true}));
    let store = done_store(out.unwrap());
    assert_eq!(store["http"]["last_content"], json!("hello from the test server"));
    assert_eq!(server.paths(), ["/redirect-ok", "/ok"]);

    let (out, rec) = run(&rt, &server.url("/redirect-denied"), json!({}));
    let (msg, _) = failure(out);
    assert!(msg.contains("refused by spade") && msg.contains("denied.example"), "{msg}");
    assert!(warnings(&rec).contains("denied.example"), "{}", warnings(&rec));
    assert_eq!(server.paths(), ["/redirect-ok", "/ok", "/redirect-denied"]);
}

#[test]
fn non_public_addresses_need_an_explicit_grant() {
    let server = Server::start();
    // Every host on every port, but no grant names a loopback address.
    let rt = runtime(&["*:*"]);
    let (msg, _) = failure(run(&rt, &server.url("/ok"), json!({})).0);
    assert!(msg.contains("private, loopback or link-local"), "{msg}");
    let (out, rec) = run(&rt, &format!("http://localhost:{}/ok", server.port), json!({}));
    let (msg, _) = failure(out);
    assert!(msg.contains("private, loopback or link-local"), "{msg}");
    let log = warnings(&rec);
    assert!(log.contains("localhost resolves to") && log.contains("127.0.0.1"), "{log}");
    assert!(server.paths().is_empty(), "{:?}", server.paths());

    // A wildcard name grant does not open loopback either; `localhost:PORT` does.
    let rt = runtime(&[&format!("localhost:{}", server.port)]);
    let (out, _) = run(&rt, &format!("http://localhost:{}/ok", server.port), json!({}));
    assert_eq!(done_store(out.unwrap())["http"]["last_status"], json!(200));
}

#[test]
fn statuses_content_cap_and_timeout() {
    let server = Server::start();
    let rt = runtime(&[&format!("127.0.0.1:{}", server.port)]);

    let (msg, retryable) = failure(run(&rt, &server.url("/unavailable"), json!({})).0);
    assert!(msg.contains("503") && msg.contains("try later"), "{msg}");
    assert!(retryable);
    let (msg, retryable) = failure(run(&rt, &server.url("/missing"), json!({})).0);
    assert!(msg.contains("404"), "{msg}");
    assert!(!retryable, "4xx other than 408/429 is not retried");
    let (_, retryable) = failure(run(&rt, &server.url("/unavailable"), json!({"method": "POST"})).0);
    assert!(!retryable, "POST is not retried by default");
    let (_, retryable) = failure(run(&rt, &server.url("/unavailable"), json!({"retry": false})).0);
    assert!(!retryable);

    let (msg, _) = failure(run(&rt, &server.url("/big"), json!({"store_content": true})).0);
    assert!(msg.contains("65536 bytes") && msg.contains("store_content"), "{msg}");
    // Not stored: only the status matters.
    let (out, _) = run(&rt, &server.url("/big"), json!({}));
    assert_eq!(done_store(out.unwrap())["http"], json!({"last_status": 200}));

    let started = Instant::now();
    let (msg, retryable) = failure(run(&rt, &server.url("/slow"), json!({"timeout": 1})).0);
    assert!(msg.contains("timed out"), "{msg}");
    assert!(retryable);
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
}

#[test]
fn wasi_http_needs_an_http_grant() {
    let rt = Runtime::new(RuntimeConfig::default()).unwrap();
    let grants = Grants { secrets: vec!["http.*".into()], ..Grants::default() };
    let err = rt.install("http.wasm", http_plugin(), grants).unwrap_err();
    assert!(matches!(err, RuntimeError::NotGranted { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("http.wasm") && msg.contains("`http`"), "{msg}");

    // Granted http with no hosts: installs, and every request is refused.
    let grants = Grants { secrets: vec!["http.*".into()], http: Some(vec![]), ..Grants::default() };
    rt.install("http.wasm", http_plugin(), grants).unwrap();
    let (out, rec) = run(&rt, "http://127.0.0.1:9/x", json!({}));
    let (msg, _) = failure(out);
    assert!(msg.contains("refused by spade"), "{msg}");
    assert!(warnings(&rec).contains("granted: no hosts"), "{}", warnings(&rec));
}

#[test]
fn grant_syntax_errors_are_clear() {
    let err = HttpAllow::parse("ftp://x").unwrap_err();
    assert!(err.contains("ftp://x") && err.contains("http or https"), "{err}");
    assert_eq!(HttpAllow::parse("HTTPS://Api.Example.com:8443").unwrap().to_string(), "https://api.example.com:8443");
}

#[test]
fn secret_references_are_filled_in_but_never_logged() {
    let server = Server::start();
    let rt = Runtime::new(RuntimeConfig::default()).unwrap();
    let grants = Grants {
        secrets: vec!["http.*".into(), "api.*".into()],
        http: Some(vec![HttpAllow::parse(&format!("127.0.0.1:{}", server.port)).unwrap()]),
        ..Grants::default()
    };
    rt.install("spade-plugin-http", http_plugin(), grants).unwrap();
    let (out, rec) = run(
        &rt,
        &server.url("/token/${secret:api.token}"),
        json!({"method": "POST", "headers": [{"X-Key": "k=${secret:api.key}"}],
               "content": {"auth": "${secret:api.token}", "n": 1}}),
    );
    done_store(out.unwrap());
    let seen = server.seen.lock().unwrap().clone();
    assert_eq!(seen[0].path, "/token/value-of-api.token");
    assert!(seen[0].headers.contains(&("x-key".into(), "k=value-of-api.key".into())), "{seen:?}");
    assert_eq!(seen[0].body, br#"{"auth":"value-of-api.token","n":1}"#);
    let log = rec.logs().into_iter().map(|(_, m)| m).collect::<Vec<_>>().join("\n");
    assert!(log.contains("${secret:api.token}") && !log.contains("value-of-"), "{log}");

    // A key the plugin is not granted fails the task before anything is sent.
    let (msg, retryable) = failure(run(&rt, &server.url("/token/${secret:db.password}"), json!({})).0);
    assert!(msg.contains("secret db.password is not set, or not granted"), "{msg}");
    assert!(!retryable);
    assert_eq!(server.paths().len(), 1);
}

#[test]
fn a_manifest_narrows_the_http_grant() {
    let server = Server::start();
    let manifest = format!("[wants]\nhttp = [\"127.0.0.1:{}\"]\nsecrets = [\"http.*\"]\n", server.port);
    let bytes = spade_runtime::embed_manifest(http_plugin(), &manifest).unwrap();
    let rt = Runtime::new(RuntimeConfig::default()).unwrap();
    let grants = Grants {
        secrets: vec!["http.*".into()],
        http: Some(vec![HttpAllow::parse("127.0.0.1:*").unwrap()]),
        ..Grants::default()
    };
    rt.install("narrow.wasm", &bytes, grants).unwrap();
    let (out, _) = run(&rt, &server.url("/ok"), json!({}));
    done_store(out.unwrap());
    // Granted (any port of 127.0.0.1) but not asked for by the plugin.
    let other = format!("http://127.0.0.1:{}/ok", server.port.wrapping_add(1).max(1));
    let (out, rec) = run(&rt, &other, json!({}));
    let (msg, _) = failure(out);
    assert!(msg.contains("refused by spade"), "{msg}");
    assert!(warnings(&rec).contains("not among the destinations the plugin's manifest asks for"), "{}", warnings(&rec));
    assert_eq!(server.paths(), ["/ok"]);
}
