//! Contract versions: plugins built against the frozen spade:operator@0.1.0 and @0.2.0 WIT
//! (without the SDK) install and run on this 0.3 host with every field carried across; a
//! plugin built for a version this host does not know is refused at install with a message
//! naming it.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;
use spade_api::{CancelToken, Limits, LogLevel, OperatorHost, Outcome};
use spade_runtime::{Grants, Runtime, RuntimeConfig, RuntimeError, SUPPORTED_WIT_VERSIONS, WIT_VERSION};

fn limits() -> Limits {
    Limits { cpu_time: Duration::from_secs(10), memory_bytes: 256 << 20, log_bytes: 1 << 20 }
}

#[test]
fn a_0_1_plugin_runs_on_the_0_3_host() {
    assert_eq!(WIT_VERSION, "0.3.0");
    assert_eq!(SUPPORTED_WIT_VERSIONS, ["0.3.0", "0.2.0", "0.1.0"]);
    let rt = Runtime::new(RuntimeConfig::default()).unwrap();
    let bytes = test_plugin("spade-test-legacy01");
    // Capabilities are granted as for a 0.2 plugin: secrets and expressions.
    let err = rt.install("legacy01.wasm", &bytes, Grants::default()).unwrap_err();
    assert!(matches!(err, RuntimeError::NotGranted { .. }), "{err}");
    let grants = Grants { secrets: vec!["allowed".into()], expressions: true, ..Grants::default() };
    let report = rt.install("legacy01.wasm", &bytes, grants).unwrap();
    assert_eq!(report.info.name, "spade-test-legacy01");
    assert_eq!(report.info.wit_version, "0.1.0");
    assert!(report.imports.iter().any(|i| i == "spade:operator/types@0.1.0"), "{:?}", report.imports);
    assert!(rt.has_operator("legacy"));

    let sb = Sandbox::new();
    let rec = Recorder::default();
    let mut req = request("legacy", json!("hello"), json!({"name": "x"}));
    req.retry_count = 2;
    let out = invoke(&rt, &sb, &rec, &req, limits(), &CancelToken::new()).unwrap();
    let Outcome::Done(done) = out else { panic!("{out:?}") };
    assert_eq!(
        done.store_params["legacy"],
        json!({"task": "+test+task", "secret": "value-of-allowed", "rendered": "hi ana",
               "state": null, "retry_count": 2})
    );
    assert_eq!(done.reset_store_params, ["gone"]);
    assert_eq!(rec.prints(), ["legacy says hello"]);
    assert!(rec.logs().contains(&(LogLevel::Info, "legacy log line".into())), "{:?}", rec.logs());

    // Poll and error outcomes cross the version boundary too, and the state comes back.
    let req = request("legacy", json!("x"), json!({"mode": "poll"}));
    match invoke(&rt, &sb, &rec, &req, limits(), &CancelToken::new()).unwrap() {
        Outcome::Poll { after_seconds, state } => {
            assert_eq!((after_seconds, state), (5, json!({"step": 1})));
        }
        other => panic!("{other:?}"),
    }
    let mut req = request("legacy", json!("x"), json!({"mode": "poll"}));
    req.state = Some(json!({"step": 1}));
    let done = done_store(invoke(&rt, &sb, &rec, &req, limits(), &CancelToken::new()).unwrap());
    assert_eq!(done["legacy"]["state"], json!("{\"step\":1}"));
    let req = request("legacy", json!("x"), json!({"mode": "fail"}));
    match invoke(&rt, &sb, &rec, &req, limits(), &CancelToken::new()).unwrap() {
        Outcome::Error { message, retryable } => {
            assert_eq!((message.as_str(), retryable), ("legacy failure", true))
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_0_2_plugin_runs_on_the_0_3_host() {
    let rt = Runtime::new(RuntimeConfig::default()).unwrap();
    let bytes = test_plugin("spade-test-legacy02");
    let grants = Grants { secrets: vec!["allowed".into()], expressions: true, ..Grants::default() };
    let report = rt.install("legacy02.wasm", &bytes, grants).unwrap();
    assert_eq!(report.info.wit_version, "0.2.0");
    assert!(report.imports.iter().any(|i| i == "spade:operator/types@0.2.0"), "{:?}", report.imports);
    let sb = Sandbox::new();
    let rec = Recorder::default();
    let mut req = request("legacy2", json!("hello"), json!({"name": "x"}));
    req.retry_count = 1;
    let out = invoke(&rt, &sb, &rec, &req, limits(), &CancelToken::new()).unwrap();
    let Outcome::Done(done) = out else { panic!("{out:?}") };
    assert_eq!(done.store_params["legacy"]["secret"], json!("value-of-allowed"));
    assert_eq!(done.store_params["legacy"]["retry_count"], json!(1));
    assert_eq!(rec.prints(), ["legacy says hello"]);
}

#[test]
fn an_unknown_major_version_is_refused_at_install() {
    let rt = Runtime::new(RuntimeConfig::default()).unwrap();
    let bytes = test_plugin("spade-test-future9");
    let err = rt.install("future9.wasm", &bytes, Grants::all()).unwrap_err();
    assert!(matches!(err, RuntimeError::UnsupportedContract { .. }), "{err:?}");
    let msg = err.to_string();
    for part in ["future9.wasm", "spade:operator@9.0.0", "0.2.x", "0.1.x", "Rebuild"] {
        assert!(msg.contains(part), "{part:?} missing in: {msg}");
    }
    assert!(!rt.has_operator("future"));
    assert!(rt.plugins().is_empty());
}
