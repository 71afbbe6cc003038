//! Operators written in other languages than Rust: builds each template of
//! `sdk/templates/{python,js,c}` with its own `build.sh`, installs the component into a
//! `spade_runtime::Runtime` granted nothing beyond `log` and `output`, runs it against a
//! workspace with recording services, and measures build time, size and the warm call.
//!
//! A language whose toolchain is missing (see `scripts/install-guest-toolchains.sh`) is
//! skipped with a note, unless `SPADE_REQUIRE_LANGUAGES` (e.g. `python,js,c`) lists it.
//! Run with `-- --nocapture` to see the summary and the figures.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use spade_api::{
    AttemptRef, CancelToken, Invocation, Limits, LogLevel, Object, OperatorHost, Outcome, StartRequest, TaskRequest,
    TaskServices,
};
use spade_runtime::bench::{BenchOptions, measure};
use spade_runtime::{Grants, Runtime, RuntimeConfig};

/// One template and what its example operator must do.
struct Lang {
    /// Directory under sdk/templates and the key of the stored param (`{"<key>": {"lines": N}}`).
    dir: &'static str,
    store_key: &'static str,
    operator: &'static str,
    /// Tools the build needs (looked up on PATH, then in the toolchain prefix).
    tools: &'static [&'static str],
    /// Files the build needs, relative to the toolchain prefix.
    files: &'static [&'static str],
    /// Whether to measure with many calls (a compiled language, where the figure is in
    /// microseconds and noisy) or few (an interpreter, where each call takes milliseconds).
    /// Figures are printed, never asserted: `spade bench --plugin` is the measuring tool.
    many_calls: bool,
}

const LANGS: &[Lang] = &[
    Lang {
        dir: "python",
        store_key: "python",
        operator: "hello_py",
        tools: &["componentize-py"],
        files: &[],
        many_calls: false,
    },
    Lang {
        dir: "js",
        store_key: "js",
        operator: "hello_js",
        tools: &["componentize-js", "node"],
        files: &[],
        many_calls: false,
    },
    Lang {
        dir: "c",
        store_key: "c",
        operator: "hello_c",
        tools: &["wit-bindgen", "wasm-tools", "clang"],
        files: &["share/adapters/wasi_snapshot_preview1.reactor.wasm"],
        many_calls: true,
    },
];

/// Capabilities a template's component must not import: it is installed with no grants,
/// and these are exactly what the runtime would refuse (or an operator never needs).
const FORBIDDEN_IMPORTS: &[&str] = &[
    "spade:operator/secrets",
    "spade:operator/workflows",
    "spade:operator/expressions",
    "spade:operator/engine",
    "wasi:http/",
];

const INPUT: &str = "alpha\nbeta\ngamma\n";

fn toolchain_prefix() -> PathBuf {
    if let Some(p) = std::env::var_os("SPADE_TOOLCHAINS") {
        return PathBuf::from(p);
    }
    let data = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("/nonexistent"));
    data.join("spade-toolchains")
}

fn find_tool(name: &str, prefix: &Path) -> bool {
    // `clang` counts when the Debian versioned binary is there (build.sh prefers it).
    let names: &[&str] = if name == "clang" { &["clang-19", "clang"] } else { &[name] };
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs: Vec<PathBuf> = std::env::split_paths(&path).chain(std::iter::once(prefix.join("bin"))).collect();
    names.iter().any(|n| dirs.iter().any(|d| d.join(n).is_file()))
}

/// Why `lang` cannot be built here, if it cannot.
fn missing(lang: &Lang, prefix: &Path) -> Option<String> {
    let mut gone: Vec<String> =
        lang.tools.iter().filter(|t| !find_tool(t, prefix)).map(|t| format!("{t} not found")).collect();
    gone.extend(
        lang.files
            .iter()
            .filter(|f| !prefix.join(f).is_file())
            .map(|f| format!("{} not found", prefix.join(f).display())),
    );
    (!gone.is_empty()).then(|| gone.join(", "))
}

/// Copies `from` into `to`, following symlinks (the templates link wit/ to the repo's).
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let src = e.path();
        let dst = to.join(e.file_name());
        let meta = std::fs::metadata(&src).unwrap_or_else(|err| panic!("{}: {err} (dangling symlink?)", src.display()));
        if meta.is_dir() {
            copy_tree(&src, &dst);
        } else {
            std::fs::copy(&src, &dst).unwrap();
        }
    }
}

#[derive(Default)]
struct Recorder {
    prints: Mutex<Vec<String>>,
    logs: Mutex<Vec<(LogLevel, String)>>,
}

impl TaskServices for Recorder {
    fn print(&self, line: &str) {
        self.prints.lock().unwrap().push(line.to_string());
    }
    fn log(&self, level: LogLevel, message: &str) {
        self.logs.lock().unwrap().push((level, message.to_string()));
    }
    fn secret(&self, key: &str) -> Option<String> {
        panic!("the template asked for secret {key} without a grant")
    }
    fn load_workflow(&self, path: &str) -> Result<Object, String> {
        panic!("the template loaded workflow {path} without a grant")
    }
    fn render_template(&self, template: &str, _scope: &Object) -> Result<String, String> {
        panic!("the template rendered {template} without a grant")
    }
    fn start_or_find(&self, _req: &StartRequest) -> Result<AttemptRef, String> {
        panic!("the template used the engine without a grant")
    }
    fn attempt_status(&self, _attempt_id: i64) -> Result<AttemptRef, String> {
        panic!("the template used the engine without a grant")
    }
}

fn request(operator: &str, command: Value) -> TaskRequest {
    TaskRequest {
        operator: operator.into(),
        task_name: format!("+langs+{operator}"),
        project_name: "langs".into(),
        workflow_name: "langs".into(),
        attempt_id: 1,
        session_id: 1,
        session_uuid: "6ba7b810-9dad-11d1-80b4-00c04fd430c8".into(),
        session_time: "2024-02-29T13:14:15+00:00".into(),
        timezone: "UTC".into(),
        retry_attempt_name: None,
        command,
        params: Object::new(),
        local_params: Object::new(),
        raw: Object::new(),
        state: None,
        retry_count: 0,
    }
}

struct Figures {
    build: Duration,
    bytes: usize,
    compile: Duration,
    /// `bench::measure` (its private, empty workspace: the call takes the
    /// "cannot read" failure path).
    bench_median: Duration,
    /// Own loop on the success path (reads input.txt, logs, prints, stores).
    ok_median: Duration,
}

fn run_lang(lang: &Lang, templates: &Path, prefix: &Path) -> Figures {
    let tmp = tempfile::tempdir().unwrap();
    let project = tmp.path().join(lang.dir);
    copy_tree(&templates.join(lang.dir), &project);
    let out = tmp.path().join(format!("{}.wasm", lang.operator));

    let t = Instant::now();
    let build = Command::new("bash")
        .arg(project.join("build.sh"))
        .arg(&out)
        .env("SPADE_TOOLCHAINS", prefix)
        .output()
        .expect("cannot run bash");
    let build_time = t.elapsed();
    assert!(
        build.status.success(),
        "{}: build.sh failed ({}):\n{}\n{}",
        lang.dir,
        build.status,
        String::from_utf8_lossy(&build.stdout),
        String::from_utf8_lossy(&build.stderr)
    );
    let bytes = std::fs::read(&out).unwrap_or_else(|e| panic!("{}: build.sh made no {}: {e}", lang.dir, out.display()));

    // No grants: only log, output and WASI are linkable.
    let rt = Runtime::new(RuntimeConfig::default()).unwrap();
    let report = rt
        .install(lang.dir, &bytes, Grants::default())
        .unwrap_or_else(|e| panic!("{}: install with no grants failed: {e}", lang.dir));
    for imp in &report.imports {
        assert!(
            !FORBIDDEN_IMPORTS.iter().any(|f| imp.starts_with(f)),
            "{}: the component imports {imp}; the template must import only what it calls",
            lang.dir
        );
    }
    assert!(
        report.imports.iter().any(|i| i.starts_with("spade:operator/output")),
        "{}: imports {:?} lack spade:operator/output",
        lang.dir,
        report.imports
    );
    assert_eq!(report.info.operators, vec![lang.operator.to_string()], "{}", lang.dir);

    // The success path, with a workspace.
    let ws = tmp.path().join("ws");
    std::fs::create_dir_all(&ws).unwrap();
    std::fs::write(ws.join("input.txt"), INPUT).unwrap();
    let cancel = CancelToken::new();
    let call = |req: &TaskRequest, services: &Recorder| {
        rt.invoke(Invocation {
            request: req,
            workspace: &ws,
            disk: &spade_api::DiskQuota::unlimited(),
            limits: Limits::default(),
            services,
            cancel: &cancel,
        })
        .unwrap_or_else(|e| panic!("{}: invoke failed: {e}", lang.dir))
    };
    let ok_req = request(lang.operator, json!("input.txt"));
    let rec = Recorder::default();
    match call(&ok_req, &rec) {
        Outcome::Done(d) => {
            let mut want = Object::new();
            want.insert(lang.store_key.into(), json!({"lines": 3}));
            assert_eq!(d.store_params, want, "{}: stored params", lang.dir);
        }
        other => panic!("{}: expected done, got {other:?}", lang.dir),
    }
    let prints = rec.prints.lock().unwrap().clone();
    assert_eq!(
        prints,
        vec![format!("hello from {}: input.txt has 3 lines, first: alpha", lang.store_key)],
        "{}: printed lines",
        lang.dir
    );
    let logs = rec.logs.lock().unwrap().clone();
    assert!(logs.contains(&(LogLevel::Info, "read 3 lines from input.txt".to_string())), "{}: logs {logs:?}", lang.dir);

    // A user error becomes a failure outcome naming the file, not a trap.
    let rec = Recorder::default();
    match call(&request(lang.operator, json!("missing.txt")), &rec) {
        Outcome::Error { message, retryable } => {
            assert!(message.contains("cannot read missing.txt"), "{}: failure message {message:?}", lang.dir);
            assert!(!retryable, "{}", lang.dir);
        }
        other => panic!("{}: expected a failure for a missing file, got {other:?}", lang.dir),
    }
    // A path escaping the workspace is refused by the sandbox.
    let rec = Recorder::default();
    match call(&request(lang.operator, json!("../../../../etc/passwd")), &rec) {
        Outcome::Error { message, .. } => assert!(message.contains("cannot read"), "{message}"),
        other => panic!("{}: read outside the workspace: {other:?}", lang.dir),
    }

    // Warm calls on the success path.
    let (warmup, iterations) = if lang.many_calls { (200, 2000) } else { (20, 200) };
    let quiet = Recorder::default();
    for _ in 0..warmup {
        call(&ok_req, &quiet);
    }
    let mut times: Vec<Duration> = (0..iterations)
        .map(|_| {
            let t = Instant::now();
            call(&ok_req, &quiet);
            t.elapsed()
        })
        .collect();
    times.sort();
    let ok_median = times[times.len() / 2];

    let opts = BenchOptions { iterations, warmup, cache_loads: 3, workspace: None };
    let bench = measure(&bytes, lang.operator, Some(&ok_req), &opts)
        .unwrap_or_else(|e| panic!("{}: bench::measure: {e}", lang.dir));
    Figures {
        build: build_time,
        bytes: bytes.len(),
        compile: report.load_time,
        bench_median: bench.invoke_median,
        ok_median,
    }
}

#[test]
fn templates_build_install_and_run() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let templates = root.join("sdk/templates");
    let prefix = toolchain_prefix();
    let required: Vec<String> = std::env::var("SPADE_REQUIRE_LANGUAGES")
        .unwrap_or_default()
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    for r in &required {
        assert!(LANGS.iter().any(|l| l.dir == r), "SPADE_REQUIRE_LANGUAGES names {r}; known: python, js, c");
    }

    let mut ran = Vec::new();
    let mut skipped = Vec::new();
    let mut table = Vec::new();
    for lang in LANGS {
        if let Some(why) = missing(lang, &prefix) {
            assert!(
                !required.iter().any(|r| r == lang.dir),
                "{} is required (SPADE_REQUIRE_LANGUAGES) but {why}; run scripts/install-guest-toolchains.sh {}",
                lang.dir,
                lang.dir
            );
            skipped.push(format!("{} ({why})", lang.dir));
            continue;
        }
        let f = run_lang(lang, &templates, &prefix);
        table.push(format!(
            "  {:<7} build {:>6.1} s  size {:>10} B  compile {:>7.0} ms  warm call: bench::measure {:>7.1} us, read+log+print+store {:>7.1} us",
            lang.dir,
            f.build.as_secs_f64(),
            f.bytes,
            f.compile.as_secs_f64() * 1e3,
            f.bench_median.as_secs_f64() * 1e6,
            f.ok_median.as_secs_f64() * 1e6,
        ));
        ran.push(lang.dir);
    }
    // Written to the process's stderr directly: the test harness captures println!, and
    // the test command must say which languages it ran even when everything passes.
    let mut report = format!(
        "languages: ran {}; skipped {}\n",
        if ran.is_empty() { "none".to_string() } else { ran.join(", ") },
        if skipped.is_empty() { "none".to_string() } else { skipped.join(", ") }
    );
    for line in table {
        report.push_str(&line);
        report.push('\n');
    }
    use std::io::Write;
    let _ = std::io::stderr().lock().write_all(report.as_bytes());
}
