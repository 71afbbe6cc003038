//! Installing plugins: the precompiled cache (hit on the second start, recompile on a
//! tampered entry), capability grants checked against imports, refusal of invalid
//! components and of duplicate operators, and forwarding of granted capabilities.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::time::Duration;

use common::*;
use serde_json::json;
use spade_api::{CancelToken, Limits, OperatorHost, Outcome};
use spade_runtime::{Grants, LoadKind, Runtime, RuntimeConfig, RuntimeError};

fn hostile_grants() -> Grants {
    Grants { secrets: vec!["allowed".into()], ..Grants::default() }
}

fn cwasm_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "cwasm"))
        .collect();
    v.sort();
    v
}

#[test]
fn second_start_loads_from_the_cache() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cache/spade");
    let bytes = test_plugin("spade-test-hostile");

    let rt = Runtime::new(RuntimeConfig::with_cache_dir(&dir)).unwrap();
    let first = rt.install("hostile.wasm", &bytes, hostile_grants()).unwrap();
    assert_eq!(first.load, LoadKind::Compiled);
    assert_eq!(first.info.name, "spade-test-hostile");
    assert_eq!(first.info.operators, vec!["hostile"]);
    assert_eq!(first.digest.len(), 64);
    drop(rt);

    // The directory and files are private.
    assert_eq!(std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777, 0o700);
    let files = cwasm_files(&dir);
    assert_eq!(files.len(), 1, "{files:?}");
    assert_eq!(std::fs::metadata(&files[0]).unwrap().permissions().mode() & 0o777, 0o600);
    assert!(files[0].file_name().unwrap().to_str().unwrap().starts_with(&first.digest));

    // A new runtime (as on the next `spade` start) does not recompile.
    let rt = Runtime::new(RuntimeConfig::with_cache_dir(&dir)).unwrap();
    let second = rt.install("hostile.wasm", &bytes, hostile_grants()).unwrap();
    assert_eq!(second.load, LoadKind::Cached);
    assert!(second.load_time < first.load_time, "{:?} vs {:?}", second.load_time, first.load_time);
    let sb = Sandbox::new();
    let out = invoke(
        &rt,
        &sb,
        &Recorder::default(),
        &request("hostile", json!("noop"), json!({})),
        Limits::default(),
        &CancelToken::new(),
    );
    assert!(matches!(out, Ok(Outcome::Done(_))), "{out:?}");
    drop(rt);

    // A copied cache (new inodes) is still used: its content matches the recorded digest.
    let copy = tmp.path().join("copy");
    std::fs::create_dir(&copy).unwrap();
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o700)).unwrap();
    for f in std::fs::read_dir(&dir).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, copy.join(f.file_name().unwrap())).unwrap();
    }
    let rt = Runtime::new(RuntimeConfig::with_cache_dir(&copy)).unwrap();
    assert_eq!(rt.install("hostile.wasm", &bytes, hostile_grants()).unwrap().load, LoadKind::Cached);
    drop(rt);

    // Tampering with the cached code (content, digest or permissions) means recompiling.
    let cwasm = &files[0];
    let mut code = std::fs::read(cwasm).unwrap();
    let mid = code.len() / 2;
    code[mid] ^= 0xff;
    std::fs::write(cwasm, &code).unwrap();
    let rt = Runtime::new(RuntimeConfig::with_cache_dir(&dir)).unwrap();
    assert_eq!(rt.install("hostile.wasm", &bytes, hostile_grants()).unwrap().load, LoadKind::Compiled);
    drop(rt);
    let rt = Runtime::new(RuntimeConfig::with_cache_dir(&dir)).unwrap();
    assert_eq!(rt.install("hostile.wasm", &bytes, hostile_grants()).unwrap().load, LoadKind::Cached);
    drop(rt);

    std::fs::set_permissions(cwasm, std::fs::Permissions::from_mode(0o666)).unwrap();
    let rt = Runtime::new(RuntimeConfig::with_cache_dir(&dir)).unwrap();
    assert_eq!(rt.install("hostile.wasm", &bytes, hostile_grants()).unwrap().load, LoadKind::Compiled);
    assert_eq!(std::fs::metadata(cwasm).unwrap().permissions().mode() & 0o777, 0o600, "rewritten privately");
    assert_eq!(std::fs::metadata(cwasm).unwrap().uid(), euid());
}

fn euid() -> u32 {
    std::fs::metadata("/proc/self").unwrap().uid()
}

#[test]
fn a_shared_cache_directory_is_not_used() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("shared");
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let rt = Runtime::new(RuntimeConfig::with_cache_dir(&dir)).unwrap();
    assert!(!rt.has_cache());
    let r = rt.install("hostile.wasm", &test_plugin("spade-test-hostile"), hostile_grants()).unwrap();
    assert_eq!(r.load, LoadKind::Compiled);
    assert!(cwasm_files(&dir).is_empty());
}

#[test]
fn ungranted_capabilities_are_refused() {
    let rt = Runtime::new(RuntimeConfig::default()).unwrap();
    let err = rt.install("hostile.wasm", &test_plugin("spade-test-hostile"), Grants::default()).unwrap_err();
    assert!(matches!(err, RuntimeError::NotGranted { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("hostile.wasm") && msg.contains("`secrets`"), "{msg}");
    assert!(!rt.has_operator("hostile"));

    let caps = test_plugin("spade-test-caps");
    let grants = Grants {
        secrets: vec!["k".into()],
        workflows: true,
        expressions: false,
        engine: false,
        params: false,
        command: None,
        http: None,
        tcp: Vec::new(),
        limits: None,
    };
    let msg = rt.install("caps.wasm", &caps, grants).unwrap_err().to_string();
    assert!(msg.contains("`engine`, `expressions`") && !msg.contains("`workflows`"), "{msg}");
    assert!(msg.contains("caps.wasm"), "{msg}");
}

#[test]
fn imports_spade_does_not_provide_are_refused() {
    let rt = Runtime::new(RuntimeConfig::default()).unwrap();
    let err = rt.install("alien.wasm", &test_plugin("spade-test-alien"), Grants::all()).unwrap_err();
    assert!(matches!(err, RuntimeError::UnsupportedImport { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("alien.wasm") && msg.contains("`spade-test:alien/weird`"), "{msg}");
    assert!(!rt.has_operator("alien"));
}

#[test]
fn invalid_components_are_refused() {
    let rt = Runtime::new(RuntimeConfig::default()).unwrap();
    let cases: [(&str, Vec<u8>, &str); 4] = [
        ("junk.wasm", b"definitely not wasm".to_vec(), "magic bytes"),
        ("core.wasm", b"\0asm\x01\0\0\0".to_vec(), "core WebAssembly module"),
        ("truncated.wasm", test_plugin("spade-test-hostile")[..1000].to_vec(), "not a valid WebAssembly component"),
        // A component with no exports at all.
        ("empty.wasm", b"\0asm\x0d\0\x01\0".to_vec(), "does not export"),
    ];
    for (label, bytes, expect) in cases {
        let err = rt.install(label, &bytes, Grants::all()).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains(label) && msg.contains(expect), "{label}: {msg}");
    }
    assert!(rt.plugins().is_empty());
}

#[test]
fn operators_are_served_by_one_plugin() {
    let rt = Runtime::new(RuntimeConfig::default()).unwrap();
    let bytes = test_plugin("spade-test-hostile");
    rt.install("a.wasm", &bytes, hostile_grants()).unwrap();
    let err = rt.install("b.wasm", &bytes, hostile_grants()).unwrap_err();
    assert!(matches!(err, RuntimeError::DuplicatePlugin { .. }), "{err:?}");
    assert_eq!(rt.plugins().len(), 1);
    assert_eq!(rt.plugin_for("hostile").unwrap().name, "spade-test-hostile");
}

#[test]
fn granted_capabilities_reach_the_services() {
    let rt = Runtime::new(RuntimeConfig::default()).unwrap();
    let grants = Grants { secrets: vec!["db.*".into()], ..Grants::all() };
    rt.install("caps.wasm", &test_plugin("spade-test-caps"), grants).unwrap();
    let sb = Sandbox::new();
    let services = Recorder::default();
    let req = request(
        "caps",
        json!(null),
        json!({
            "secret_key": "db.password",
            "workflow": "sub/other",
            "template": "hello ${name}",
            "scope": {"name": "world"},
            "start_params": {"x": 1},
        }),
    );
    let store = done_store(invoke(&rt, &sb, &services, &req, Limits::default(), &CancelToken::new()).unwrap());
    let caps = &store["caps"];
    assert_eq!(caps["secret"], "value-of-db.password");
    assert_eq!(caps["workflow"]["ok"], r#"{"+step":{"echo>":"from sub/other"}}"#);
    assert_eq!(caps["rendered"]["ok"], "hello world");
    assert_eq!(caps["start"]["ok"], json!({"attempt_id": 7, "session_id": 3, "state": "running"}));
    assert_eq!(caps["status"]["ok"], json!({"attempt_id": 42, "state": "success"}));
    let started = services.started.lock().unwrap().clone();
    assert_eq!(started.len(), 1);
    assert_eq!(started[0].workflow_name, "sub/other");
    assert_eq!(started[0].params["x"], 1);

    // Errors from the services and bad JSON from the plugin come back as `err`.
    let req = request(
        "caps",
        json!(null),
        json!({"secret_key": "other", "workflow": "missing", "template": "${name}", "scope_text": "[1]", "start_params": [1]}),
    );
    let store = done_store(invoke(&rt, &sb, &services, &req, Limits::default(), &CancelToken::new()).unwrap());
    let caps = &store["caps"];
    assert_eq!(caps["secret"], json!(null));
    assert_eq!(caps["workflow"]["err"], "missing.dig: no such file");
    assert_eq!(caps["rendered"]["err"], "scope must be a JSON object");
    assert_eq!(caps["start"]["err"], "start-request.params must be a JSON object");
}

#[test]
fn grant_limits_cap_the_call() {
    let rt = Runtime::new(RuntimeConfig::default()).unwrap();
    let cap = Limits { cpu_time: Duration::from_millis(200), memory_bytes: 256 << 20, log_bytes: 1 << 20 };
    rt.install("hostile.wasm", &test_plugin("spade-test-hostile"), Grants { limits: Some(cap), ..hostile_grants() })
        .unwrap();
    let sb = Sandbox::new();
    let out = invoke(
        &rt,
        &sb,
        &Recorder::default(),
        &request("hostile", json!("infinite_loop"), json!({})),
        Limits::default(),
        &CancelToken::new(),
    );
    let msg = out.unwrap_err().to_string();
    assert!(msg.contains("time limit of 200ms"), "{msg}");
}

#[test]
fn on_demand_allocator_and_tiny_pool_work() {
    for config in [
        RuntimeConfig { pooling: false, ..RuntimeConfig::default() },
        RuntimeConfig { max_instances: 1, ..RuntimeConfig::default() },
    ] {
        let pooling = config.pooling;
        let rt = Runtime::new(config).unwrap();
        assert_eq!(rt.pooling(), pooling);
        rt.install("hostile.wasm", &test_plugin("spade-test-hostile"), hostile_grants()).unwrap();
        std::thread::scope(|s| {
            for _ in 0..3 {
                s.spawn(|| {
                    let sb = Sandbox::new();
                    for _ in 0..20 {
                        let out = invoke(
                            &rt,
                            &sb,
                            &Recorder::default(),
                            &request("hostile", json!("noop"), json!({})),
                            Limits::default(),
                            &CancelToken::new(),
                        );
                        assert!(matches!(out, Ok(Outcome::Done(_))), "{out:?}");
                    }
                });
            }
        });
    }
}

#[test]
fn falls_back_to_on_demand_when_the_pool_cannot_be_reserved() {
    // 400,000 memory slots of several GiB each exceed the 128 TiB address space.
    let config = RuntimeConfig { max_instances: 100_000, ..RuntimeConfig::default() };
    let rt = Runtime::new(config).unwrap();
    assert!(!rt.pooling());
    rt.install("hostile.wasm", &test_plugin("spade-test-hostile"), hostile_grants()).unwrap();
    let sb = Sandbox::new();
    let req = request("hostile", json!("noop"), json!({}));
    let out = invoke(&rt, &sb, &Recorder::default(), &req, Limits::default(), &CancelToken::new());
    assert!(matches!(out, Ok(Outcome::Done(_))), "{out:?}");
}

#[test]
fn bench_measures_noop() {
    let opts = spade_runtime::bench::BenchOptions { iterations: 300, warmup: 50, cache_loads: 5, workspace: None };
    let report = spade_runtime::bench::measure(&test_plugin("spade-test-hostile"), "hostile", None, &opts).unwrap();
    eprintln!("{report}");
    assert_eq!(report.iterations, 300);
    // Figures are printed, not judged (timings depend on the machine); `measure` itself
    // fails when the cache did not serve the plugin back.
    assert!(report.invoke_median > Duration::ZERO);
    assert!(report.invoke_p90 >= report.invoke_median && report.invoke_p99 >= report.invoke_p90);
}

/// The full measurement `spade bench` makes (run with `--ignored --nocapture`).
#[test]
#[ignore]
fn bench_full() {
    let opts = spade_runtime::bench::BenchOptions::default();
    let report = spade_runtime::bench::measure(&test_plugin("spade-test-hostile"), "hostile", None, &opts).unwrap();
    eprintln!("hostile noop:\n{report}");
    if let Some(echo) = spade_bundled::plugin("spade-plugin-echo") {
        let report = spade_runtime::bench::measure(echo, "echo", None, &opts).unwrap();
        eprintln!("echo:\n{report}");
    }
}

/// Every plugin bundled into spade installs with full grants and serves its own operators.
#[test]
fn bundled_plugins_install() {
    let rt = Runtime::new(RuntimeConfig::default()).unwrap();
    for (name, bytes) in spade_bundled::PLUGINS {
        let r = rt.install(name, bytes, Grants::all()).unwrap_or_else(|e| panic!("{e}"));
        assert!(!r.info.operators.is_empty(), "{name}");
    }
    assert_eq!(rt.plugins().len(), spade_bundled::PLUGINS.len());
}

/// `caps` with `manifest` embedded.
fn caps_with(manifest: &str) -> Vec<u8> {
    spade_runtime::embed_manifest(&test_plugin("spade-test-caps"), manifest).unwrap()
}

#[test]
fn a_manifest_must_ask_for_every_capability_the_component_imports() {
    let rt = Runtime::new(RuntimeConfig::default()).unwrap();
    let err = rt.install("caps.wasm", &caps_with("[wants]\nsecrets = [\"db.*\"]\n"), Grants::all()).unwrap_err();
    assert!(matches!(err, RuntimeError::NotAsked { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("caps.wasm")
            && msg.contains("`engine`, `expressions`, `workflows`")
            && msg.contains("spade-plugin.toml"),
        "{msg}"
    );
    assert!(!msg.contains("`secrets`"), "{msg}");
    assert!(!rt.has_operator("caps"));

    // Asked for, but not granted: refused as before, naming only what is missing.
    let manifest = "[wants]\nsecrets = [\"db.*\"]\nworkflows = true\nexpressions = true\nengine = true\n";
    let grants = Grants { secrets: vec!["db.*".into()], workflows: true, expressions: true, ..Grants::default() };
    let msg = rt.install("caps.wasm", &caps_with(manifest), grants).unwrap_err().to_string();
    assert!(msg.contains("`engine`") && !msg.contains("`workflows`"), "{msg}");
}

#[test]
fn the_plugin_is_linked_with_what_is_both_asked_for_and_granted() {
    let rt = Runtime::new(RuntimeConfig::default()).unwrap();
    let manifest = "[wants]\nsecrets = [\"db.password\", \"api.*\"]\nworkflows = true\nexpressions = true\nengine = true\nmemory_mb = 48\n";
    let report = rt.install("caps.wasm", &caps_with(manifest), Grants::all()).unwrap();
    let asked = report.manifest.as_ref().expect("the manifest is read back");
    assert_eq!(asked.wants.memory_bytes, Some(48 << 20));
    assert_eq!(report.linked.secrets, vec!["db.password".to_string(), "api.*".to_string()]);
    assert_eq!(report.linked.limits.unwrap().memory_bytes, 48 << 20);
    assert!(report.warnings.is_empty(), "{:?}", report.warnings);

    // Granted every key, the plugin still sees only the keys it asked for.
    let sb = Sandbox::new();
    let services = Recorder::default();
    let secret_of = |key: &str| {
        let req = request("caps", json!(null), json!({"secret_key": key}));
        let out = invoke(&rt, &sb, &services, &req, Limits::default(), &CancelToken::new()).unwrap();
        done_store(out)["caps"]["secret"].clone()
    };
    assert_eq!(secret_of("db.password"), json!("value-of-db.password"));
    assert_eq!(secret_of("api.token"), json!("value-of-api.token"));
    assert_eq!(secret_of("db.user"), json!(null));
    assert_eq!(
        *services.secrets_asked.lock().unwrap(),
        vec!["db.password".to_string(), "api.token".to_string()],
        "a key outside the intersection never reaches the secret store"
    );
}

#[test]
fn a_request_beyond_the_grants_is_reported_and_narrowed() {
    let rt = Runtime::new(RuntimeConfig::default()).unwrap();
    let manifest = "[wants]\nsecrets = [\"*\"]\nworkflows = true\nexpressions = true\nengine = true\nmemory_mb = 512\n";
    let grants = Grants {
        secrets: vec!["db.*".into()],
        limits: Some(Limits { cpu_time: Duration::from_secs(5), memory_bytes: 64 << 20, log_bytes: 1 << 20 }),
        ..Grants::all()
    };
    let report = rt.install("caps.wasm", &caps_with(manifest), grants).unwrap();
    assert_eq!(report.linked.secrets, vec!["db.*".to_string()]);
    assert_eq!(report.linked.limits.unwrap().memory_bytes, 64 << 20);
    let warnings = report.warnings.join("\n");
    assert!(warnings.contains("asks for secret keys `*`"), "{warnings}");
    assert!(warnings.contains("asks for 512 MiB"), "{warnings}");
}

#[test]
fn a_broken_manifest_refuses_the_plugin() {
    let rt = Runtime::new(RuntimeConfig::default()).unwrap();
    // embed() refuses bad manifests, so write the section by hand as a hostile build would.
    let mut bytes = test_plugin("spade-test-caps");
    let text = b"[wants]\nengine = \"yes please\"\n";
    let name = b"spade-manifest";
    bytes.push(0);
    bytes.push((1 + name.len() + text.len()) as u8);
    bytes.push(name.len() as u8);
    bytes.extend_from_slice(name);
    bytes.extend_from_slice(text);
    let err = rt.install("caps.wasm", &bytes, Grants::all()).unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, RuntimeError::BadManifest { .. })
            && msg.contains("caps.wasm: its embedded manifest (spade-plugin.toml) is invalid"),
        "{msg}"
    );
    assert!(msg.contains("line 2"), "the TOML error says where: {msg}");
}

#[test]
fn bundled_plugins_carry_their_manifests() {
    let rt = Runtime::new(RuntimeConfig::default()).unwrap();
    for (name, bytes) in spade_bundled::PLUGINS {
        let report = rt.install(name, bytes, Grants::all()).unwrap();
        let manifest = report.manifest.unwrap_or_else(|| panic!("{name} has no manifest"));
        let expect_engine = *name == "spade-plugin-require";
        assert_eq!(manifest.wants.engine, expect_engine, "{name}");
        assert_eq!(report.linked.engine, expect_engine, "{name}: linked only where asked");
    }
}
