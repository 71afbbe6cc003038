//! `spade-test-caps`: a test-only plugin importing every capability interface (secrets,
//! workflows, expressions, engine). Operator `caps>` calls each with arguments from its
//! params and reports the answers in `store_params.caps`, so the host tests can check both
//! the forwarding to `TaskServices` and the install-time refusal of ungranted imports.

wit_bindgen::generate!({ path: "../../../wit", world: "plugin" });

use serde_json::{Map, Value, json};
use spade::operator::engine::{self, AttemptState, StartRequest};
use spade::operator::types::{Done, Failure};
use spade::operator::{expressions, secrets, workflows};

struct Caps;

fn res<T: Into<Value>>(r: Result<T, String>) -> Value {
    match r {
        Ok(v) => json!({"ok": v.into()}),
        Err(e) => json!({"err": e}),
    }
}

fn state(s: AttemptState) -> &'static str {
    match s {
        AttemptState::Running => "running",
        AttemptState::Success => "success",
        AttemptState::Failure => "failure",
    }
}

impl Guest for Caps {
    fn describe() -> PluginInfo {
        PluginInfo {
            name: "spade-test-caps".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            operators: vec!["caps".into()],
            wit_version: "0.1.0".into(),
        }
    }

    fn run(request: TaskRequest) -> Outcome {
        let p: Map<String, Value> = serde_json::from_str(&request.params).unwrap_or_default();
        let s = |k: &str| p.get(k).and_then(Value::as_str).unwrap_or("").to_string();
        let secret = secrets::get(&s("secret_key"));
        let workflow = res(workflows::load(&s("workflow")));
        let scope = p.get("scope").map(|v| v.to_string()).unwrap_or_else(|| s("scope_text"));
        let rendered = res(expressions::render(&s("template"), &scope));
        let start = engine::start_or_find(&StartRequest {
            project_name: None,
            workflow_name: s("workflow"),
            session_time: request.session_time.clone(),
            attempt_name: None,
            params: p.get("start_params").map(|v| v.to_string()).unwrap_or_else(|| "{}".into()),
            rerun_on: "none".into(),
        })
        .map(|a| json!({"attempt_id": a.attempt_id, "session_id": a.session_id, "state": state(a.state)}));
        let status = engine::status(42).map(|a| json!({"attempt_id": a.attempt_id, "state": state(a.state)}));
        if s("fail") == "yes" {
            return Outcome::Error(Failure { message: "asked to fail".into(), retryable: false });
        }
        let caps = json!({
            "secret": secret,
            "workflow": workflow,
            "rendered": rendered,
            "start": res(start),
            "status": res(status),
        });
        Outcome::Done(Done {
            store_params: json!({ "caps": caps }).to_string(),
            reset_store_params: vec![],
            export_params: "{}".into(),
            subtasks: None,
        })
    }
}

export!(Caps);
