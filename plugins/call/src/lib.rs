//! `call>: file[.dig]`: run another workflow file of the project as this task's subtasks
//! (Digdag CallOperatorFactory). The host resolves the path relative to the calling
//! workflow's directory and appends `.dig` when missing. The called file's workflow-only keys
//! (`timezone`, `schedule`, `sla`) are dropped; its tasks and group options (`_export`,
//! `_error`, `_retry`, `_parallel`, ...) become the generated group. Uses the `workflows`
//! capability.

use spade_sdk::{Failure, Object, Operator, Outcome, Request, Result, workflows};

pub struct Call;

/// Top-level keys of a workflow file that describe the workflow, not a task group.
const WORKFLOW_ONLY_KEYS: [&str; 3] = ["timezone", "schedule", "sla"];

impl Operator for Call {
    fn run(req: Request) -> Result<Outcome> {
        let path = req.command_str()?;
        if path.trim().is_empty() {
            return Err(Failure::new(format!("{}: the workflow file name is empty", req.location())));
        }
        let definition =
            workflows::load(path).map_err(|e| Failure::new(format!("{}: cannot call {path}: {e}", req.location())))?;
        Ok(Outcome::done().subtasks(as_subtasks(definition)).into())
    }
}

fn as_subtasks(mut definition: Object) -> Object {
    for key in WORKFLOW_ONLY_KEYS {
        definition.shift_remove(key);
    }
    definition
}

spade_sdk::plugin!(Call, name = "spade-call", operators = ["call"]);

#[cfg(test)]
mod tests {
    use super::*;
    use spade_sdk::testing::{MockHost, request};
    use spade_sdk::{Value, json};

    fn obj(v: Value) -> Object {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn loads_and_keeps_task_keys_in_order() {
        let mut host = MockHost::default();
        host.workflows.insert(
            "child.dig".into(),
            Ok(obj(json!({
                "timezone": "Asia/Tokyo",
                "_export": {"suffix": "!"},
                "schedule": {"daily>": "07:00:00"},
                "+say": {"echo>": "${greeting}"},
                "sla": {"time": "02:00"},
                "_error": {"echo>": "bad"},
                "+where": {"echo>": "${task_name}"},
            }))),
        );
        let outcome = host.run::<Call>(request("call").command(json!("child.dig")).build()).unwrap();
        let sub = outcome.as_done().unwrap().subtasks.clone().unwrap();
        assert_eq!(sub.keys().collect::<Vec<_>>(), ["_export", "+say", "_error", "+where"]);
        assert_eq!(sub["+say"], json!({"echo>": "${greeting}"}));
    }

    #[test]
    fn load_errors_name_the_task_and_file() {
        let mut host = MockHost::default();
        host.workflows.insert("missing".into(), Err("missing.dig: no such file".into()));
        let err = host.run::<Call>(request("call").command(json!("missing")).build()).unwrap_err();
        assert_eq!(err.message, "task +test+call (call>): cannot call missing: missing.dig: no such file");
        assert!(!err.retryable);
    }

    #[test]
    fn argument_must_be_a_file_name() {
        let mut host = MockHost::default();
        assert!(host.run::<Call>(request("call").command(json!(1)).build()).is_err());
        assert!(host.run::<Call>(request("call").command(json!(" ")).build()).unwrap_err().message.contains("empty"));
    }
}
