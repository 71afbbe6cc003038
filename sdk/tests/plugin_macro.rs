//! The `plugin!` export glue, exercised natively: describe, routing by operator, request
//! lifting and outcome lowering through the generated WIT types.

use spade_sdk::bindings::Guest;
use spade_sdk::bindings::spade::operator::types as wit;
use spade_sdk::{Operator, Outcome, Request, Result, json};

struct Store;
impl Operator for Store {
    fn run(req: Request) -> Result<Outcome> {
        let n: u32 = req.param_or("n", 0)?;
        Ok(Outcome::done()
            .store("op", req.operator.clone())
            .store("n", n)
            .reset("gone")
            .export("x", json!({"y": [1, 2]}))
            .into())
    }
}

struct Poller;
impl Operator for Poller {
    fn run(req: Request) -> Result<Outcome> {
        match req.state_as::<u32>()? {
            None => Ok(Outcome::poll(3, json!(1))),
            Some(n) => Err(Outcome::error(format!("gave up after {n}")).retryable()),
        }
    }
}

spade_sdk::plugin!(name = "spade-test", operators = {
    "store" => Store,
    "poller" => Poller,
});

fn request(operator: &str, params: &str, state: Option<&str>) -> wit::TaskRequest {
    wit::TaskRequest {
        operator: operator.into(),
        task_name: "+wf+t".into(),
        project_name: "p".into(),
        workflow_name: "wf".into(),
        attempt_id: 1,
        session_id: 2,
        session_uuid: "u".into(),
        session_time: "2024-01-01T00:00:00+00:00".into(),
        timezone: "UTC".into(),
        retry_attempt_name: None,
        command: "null".into(),
        params: params.into(),
        local_params: "{}".into(),
        raw: "{}".into(),
        state: state.map(str::to_string),
        retry_count: 0,
    }
}

#[test]
fn describe_reports_name_version_operators() {
    let info = __SpadePlugin::describe();
    assert_eq!(info.name, "spade-test");
    assert_eq!(info.version, env!("CARGO_PKG_VERSION"));
    assert_eq!(info.operators, vec!["store", "poller"]);
    assert_eq!(info.wit_version, spade_sdk::WIT_VERSION);
}

#[test]
fn done_is_lowered_to_json_text() {
    match __SpadePlugin::run(request("store", r#"{"n": "7"}"#, None)) {
        wit::Outcome::Done(d) => {
            assert_eq!(d.store_params, r#"{"op":"store","n":7}"#);
            assert_eq!(d.reset_store_params, vec!["gone"]);
            assert_eq!(d.export_params, r#"{"x":{"y":[1,2]}}"#);
            assert_eq!(d.subtasks, None);
        }
        other => panic!("expected done, got {other:?}"),
    }
}

#[test]
fn poll_then_error_through_state() {
    match __SpadePlugin::run(request("poller", "{}", None)) {
        wit::Outcome::Poll(p) => {
            assert_eq!(p.after_seconds, 3);
            assert_eq!(p.state, "1");
        }
        other => panic!("expected poll, got {other:?}"),
    }
    match __SpadePlugin::run(request("poller", "{}", Some("1"))) {
        wit::Outcome::Error(f) => {
            assert_eq!(f.message, "gave up after 1");
            assert!(f.retryable);
        }
        other => panic!("expected error, got {other:?}"),
    }
}

#[test]
fn parameter_errors_become_failures() {
    match __SpadePlugin::run(request("store", r#"{"n": "many"}"#, None)) {
        wit::Outcome::Error(f) => {
            assert!(f.message.contains("task +wf+t (store>)"), "{}", f.message);
            assert!(f.message.contains("'n'"), "{}", f.message);
            assert!(!f.retryable);
        }
        other => panic!("expected error, got {other:?}"),
    }
}

#[test]
fn unknown_operator_is_a_clear_failure() {
    match __SpadePlugin::run(request("other", "{}", None)) {
        wit::Outcome::Error(f) => {
            assert_eq!(f.message, "plugin spade-test does not provide operator 'other>' (it provides store>, poller>)");
        }
        other => panic!("expected error, got {other:?}"),
    }
}

#[test]
fn malformed_request_is_a_failure_not_a_panic() {
    match __SpadePlugin::run(request("store", "[1]", None)) {
        wit::Outcome::Error(f) => assert!(f.message.contains("params is not a JSON object"), "{}", f.message),
        other => panic!("expected error, got {other:?}"),
    }
}
