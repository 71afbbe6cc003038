//! `require>: workflow`: make sure another workflow's session has run, starting it when
//! needed, and wait for it (Digdag RequireOperatorFactory). Uses the `engine` capability.
//!
//! First call: `engine::start_or_find` for (project, workflow, session_time) with the
//! options below; the host decides whether an existing attempt satisfies it (`rerun_on`).
//! While the attempt runs the task polls `engine::status` with Digdag's back-off (1, 2, 4,
//! 8, then every 10 s), keeping `{attempt_id, polls}` in the poll state. A failed attempt
//! fails the task with "Dependent workflow failed." unless `ignore_failure: true`.
//!
//! Options: `session_time` (default: the task's own), `project_name` (local only; the
//! caller's project by default; `project_id` is refused, spade names projects), `params`
//! (object passed to a newly started attempt; nothing else is inherited), `rerun_on`
//! (`none` | `failed` | `all`), `ignore_failure`, and `retry_attempt_name`, read ONLY from
//! the task's own keys so that `spade retry` of the caller does not re-run the dependency.

use serde::{Deserialize, Serialize};
use spade_sdk::engine::{self, AttemptRef, AttemptState, RerunOn, StartRequest};
use spade_sdk::{Failure, Object, Operator, Outcome, Request, Result, Value};

pub struct Require;

/// What the task keeps between polls.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct PollState {
    attempt_id: i64,
    /// Polls made so far; drives the back-off.
    polls: u32,
}

/// Seconds before poll number `polls` (0-based): 1, 2, 4, 8, then 10.
fn backoff(polls: u32) -> u32 {
    2u32.saturating_pow(polls).min(10)
}

impl Operator for Require {
    fn run(req: Request) -> Result<Outcome> {
        let at = |m: String| Failure::new(format!("{}: {m}", req.location()));
        let ignore_failure: bool = req.param_or("ignore_failure", false)?;
        let (attempt, polls) = match req.state_as::<PollState>()? {
            Some(state) => {
                let attempt = engine::status(state.attempt_id)
                    .map_err(|e| at(format!("cannot read the state of attempt {}: {e}", state.attempt_id)))?;
                (attempt, state.polls)
            }
            None => {
                let start = start_request(&req)?;
                let attempt = engine::start_or_find(&start)
                    .map_err(|e| at(format!("cannot start or find workflow '{}': {e}", start.workflow_name)))?;
                (attempt, 0)
            }
        };
        settle(attempt, polls, ignore_failure)
    }
}

/// The outcome for the attempt's current state.
fn settle(attempt: AttemptRef, polls: u32, ignore_failure: bool) -> Result<Outcome> {
    match attempt.state {
        AttemptState::Running => Ok(Outcome::poll(
            backoff(polls),
            serde_json::to_value(PollState { attempt_id: attempt.attempt_id, polls: polls.saturating_add(1) })
                .unwrap_or(Value::Null),
        )),
        AttemptState::Success => Ok(Outcome::done().into()),
        AttemptState::Failure if ignore_failure => Ok(Outcome::done().into()),
        AttemptState::Failure => Err(Failure::new(format!(
            "Dependent workflow failed. Session id: {}, attempt id: {}",
            attempt.session_id, attempt.attempt_id
        ))),
    }
}

/// The engine request built from the task's options.
fn start_request(req: &Request) -> Result<StartRequest> {
    let at = |m: String| Failure::new(format!("{}: {m}", req.location()));
    let workflow_name = req.command_str()?.trim().to_string();
    if workflow_name.is_empty() {
        return Err(at("the workflow name is empty".into()));
    }
    if req.local("project_id").is_some() {
        return Err(at(if req.local("project_name").is_some() {
            "Both project_id and project_name can't be set".into()
        } else {
            "project_id is not supported: spade identifies projects by name, use project_name".into()
        }));
    }
    let session_time = req.param::<String>("session_time")?.unwrap_or_else(|| req.session_time.clone());
    let rerun_on = match req.param::<String>("rerun_on")? {
        None => RerunOn::None,
        Some(text) => parse_rerun_on(&text)
            .ok_or_else(|| at(format!("invalid rerun_on option: {text} (use none, failed or all)")))?,
    };
    Ok(StartRequest {
        project_name: req.local_as("project_name")?,
        workflow_name,
        session_time,
        attempt_name: req.local_as("retry_attempt_name")?,
        params: req.param::<Object>("params")?.unwrap_or_default(),
        rerun_on,
    })
}

fn parse_rerun_on(text: &str) -> Option<RerunOn> {
    match text {
        "none" => Some(RerunOn::None),
        "failed" => Some(RerunOn::Failed),
        "all" => Some(RerunOn::All),
        _ => None,
    }
}

spade_sdk::plugin!(Require, name = "spade-require", operators = ["require"]);

#[cfg(test)]
mod tests {
    use super::*;
    use spade_sdk::json;
    use spade_sdk::testing::{EngineCall, MockHost, request};

    fn attempt(id: i64, state: AttemptState) -> AttemptRef {
        AttemptRef { attempt_id: id, session_id: 100 + id, state }
    }

    /// A host whose engine answers every call with `answer`.
    fn host(answer: std::result::Result<AttemptRef, String>) -> MockHost {
        MockHost { engine: Some(Box::new(move |_| answer.clone())), ..MockHost::default() }
    }

    #[test]
    fn backoff_doubles_then_caps_at_ten() {
        let seq: Vec<u32> = (0..7).map(backoff).collect();
        assert_eq!(seq, [1, 2, 4, 8, 10, 10, 10]);
        assert_eq!(backoff(u32::MAX), 10);
    }

    #[test]
    fn first_call_starts_with_defaults_and_polls() {
        let mut h = host(Ok(attempt(7, AttemptState::Running)));
        let req = request("require")
            .command(json!("supplier"))
            .session_time("2024-06-01T00:00:00+00:00")
            .param("session_time", json!("2024-06-01T00:00:00+00:00"))
            .param("flavor", json!("vanilla"))
            .retry_attempt_name(Some("inherited"))
            .param("retry_attempt_name", json!("inherited"))
            .build();
        let outcome = h.run::<Require>(req).unwrap();
        assert_eq!(outcome, Outcome::poll(1, json!({"attempt_id": 7, "polls": 1})));
        assert_eq!(
            h.engine_calls,
            [EngineCall::StartOrFind(StartRequest {
                project_name: None,
                workflow_name: "supplier".into(),
                session_time: "2024-06-01T00:00:00+00:00".into(),
                attempt_name: None,
                params: Object::new(),
                rerun_on: RerunOn::None,
            })]
        );
    }

    #[test]
    fn options_are_passed_through() {
        let mut h = host(Ok(attempt(7, AttemptState::Running)));
        let req = request("require")
            .command(json!("supplier"))
            .local("session_time", json!("2024-06-02T00:00:00+00:00"))
            .local("project_name", json!("other"))
            .local("params", json!({"flavor": "vanilla"}))
            .local("rerun_on", json!("failed"))
            .local("retry_attempt_name", json!("r1"))
            .build();
        h.run::<Require>(req).unwrap();
        let [EngineCall::StartOrFind(start)] = h.engine_calls.as_slice() else { panic!("{:?}", h.engine_calls) };
        assert_eq!(start.project_name.as_deref(), Some("other"));
        assert_eq!(start.session_time, "2024-06-02T00:00:00+00:00");
        assert_eq!(start.attempt_name.as_deref(), Some("r1"));
        assert_eq!(Value::Object(start.params.clone()), json!({"flavor": "vanilla"}));
        assert_eq!(start.rerun_on, RerunOn::Failed);
    }

    #[test]
    fn polls_status_with_backoff_until_done() {
        let mut h = host(Ok(attempt(7, AttemptState::Running)));
        let req = request("require").command(json!("w")).state(json!({"attempt_id": 7, "polls": 4})).build();
        assert_eq!(h.run::<Require>(req).unwrap(), Outcome::poll(10, json!({"attempt_id": 7, "polls": 5})));
        assert_eq!(h.engine_calls, [EngineCall::Status(7)]);

        let mut h = host(Ok(attempt(7, AttemptState::Success)));
        let req = request("require").command(json!("w")).state(json!({"attempt_id": 7, "polls": 2})).build();
        assert_eq!(h.run::<Require>(req), Ok(Outcome::done().into()));
    }

    #[test]
    fn an_already_finished_attempt_settles_on_the_first_call() {
        let mut h = host(Ok(attempt(3, AttemptState::Success)));
        assert_eq!(h.run::<Require>(request("require").command(json!("w")).build()), Ok(Outcome::done().into()));
    }

    #[test]
    fn failure_fails_unless_ignored() {
        let mut h = host(Ok(attempt(7, AttemptState::Failure)));
        let req = request("require").command(json!("w")).state(json!({"attempt_id": 7, "polls": 1})).build();
        let err = h.run::<Require>(req.clone()).unwrap_err();
        assert_eq!(err.message, "Dependent workflow failed. Session id: 107, attempt id: 7");
        assert!(!err.retryable);

        let mut ignored = req;
        ignored.params.insert("ignore_failure".into(), json!("true"));
        assert_eq!(h.run::<Require>(ignored), Ok(Outcome::done().into()));
    }

    #[test]
    fn invalid_options() {
        let run = |req: Request| host(Ok(attempt(1, AttemptState::Running))).run::<Require>(req).unwrap_err().message;
        let both =
            request("require").command(json!("w")).local("project_id", json!(1)).local("project_name", json!("p"));
        assert!(run(both.build()).contains("Both project_id and project_name can't be set"));
        assert!(
            run(request("require").command(json!("w")).local("project_id", json!(1)).build())
                .contains("use project_name")
        );
        assert!(
            run(request("require").command(json!("w")).local("rerun_on", json!("sometimes")).build())
                .contains("invalid rerun_on option: sometimes")
        );
        assert!(run(request("require").command(json!("w")).local("params", json!("x")).build()).contains("'params'"));
        assert!(run(request("require").command(json!(" ")).build()).contains("workflow name is empty"));
        // An inherited project_id (a built-in) is not the task's own option.
        let mut h = host(Ok(attempt(1, AttemptState::Running)));
        assert!(h.run::<Require>(request("require").command(json!("w")).param("project_id", json!(1)).build()).is_ok());
    }

    #[test]
    fn engine_errors_name_the_workflow() {
        let mut h = host(Err("no workflow 'w' in project p".into()));
        let err = h.run::<Require>(request("require").command(json!("w")).build()).unwrap_err();
        assert_eq!(
            err.message,
            "task +test+require (require>): cannot start or find workflow 'w': no workflow 'w' in project p"
        );
        let err = h
            .run::<Require>(request("require").command(json!("w")).state(json!({"attempt_id": 9, "polls": 0})).build())
            .unwrap_err();
        assert!(err.message.contains("cannot read the state of attempt 9"), "{err}");
    }
}
