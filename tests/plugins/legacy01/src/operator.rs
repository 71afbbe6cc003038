// The operator of the frozen-contract test plugins, included by each of them after its own
// bindings (`legacy01`: wit/v0.1, `legacy02`: wit/v0.2) and its NAME, OPERATOR and
// WIT_VERSION constants: both contracts have these records and imports unchanged.

use serde_json::{Map, Value, json};
use spade::operator::log::{self, Level};
use spade::operator::types::{Done, Failure, Poll};
use spade::operator::{expressions, output, secrets};

struct Legacy;

impl Guest for Legacy {
    fn describe() -> PluginInfo {
        PluginInfo {
            name: NAME.into(),
            version: env!("CARGO_PKG_VERSION").into(),
            operators: vec![OPERATOR.into()],
            wit_version: WIT_VERSION.into(),
        }
    }

    fn run(request: TaskRequest) -> Outcome {
        let params: Map<String, Value> = serde_json::from_str(&request.params).unwrap_or_default();
        let command: Value = serde_json::from_str(&request.command).unwrap_or(Value::Null);
        match params.get("mode").and_then(Value::as_str) {
            Some("fail") => {
                return Outcome::Error(Failure { message: "legacy failure".into(), retryable: true });
            }
            Some("poll") if request.state.is_none() => {
                return Outcome::Poll(Poll { after_seconds: 5, state: "{\"step\": 1}".into() });
            }
            _ => {}
        }
        output::print(&format!("legacy says {}", command.as_str().unwrap_or("?")));
        log::write(Level::Info, "legacy log line");
        let rendered = expressions::render("hi ${name}", "{\"name\": \"ana\"}");
        Outcome::Done(Done {
            store_params: json!({
                "legacy": {
                    "task": request.task_name,
                    "secret": secrets::get("allowed"),
                    "rendered": rendered.unwrap_or_else(|e| format!("error: {e}")),
                    "state": request.state,
                    "retry_count": request.retry_count,
                }
            })
            .to_string(),
            reset_store_params: vec!["gone".into()],
            export_params: "{}".into(),
            subtasks: None,
        })
    }
}

export!(Legacy);
