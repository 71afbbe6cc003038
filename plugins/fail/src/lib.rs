//! `fail>`: fail the task with the given message (Digdag FailOperatorFactory). The failure is
//! not retryable by the operator itself; `_retry` on an enclosing group still re-runs it, and
//! `_error` tasks see the message as `${error.message}`. Uses no capability.

use spade_sdk::{Failure, Operator, Outcome, Request, Result, Value};

pub struct Fail;

impl Operator for Fail {
    fn run(req: Request) -> Result<Outcome> {
        Err(failure(&req))
    }
}

fn failure(req: &Request) -> Failure {
    match &req.command {
        Value::String(s) => Failure::new(s.clone()),
        Value::Null => Failure::new(format!("{}: failed (fail> has no message)", req.location())),
        other => Failure::new(other.to_string()),
    }
}

spade_sdk::plugin!(Fail, name = "spade-fail", operators = ["fail"]);

#[cfg(test)]
mod tests {
    use super::*;
    use spade_sdk::json;
    use spade_sdk::testing::{MockHost, request};

    fn fail(command: Value) -> Result<Outcome> {
        MockHost::default().run::<Fail>(request("fail").command(command).build())
    }

    #[test]
    fn fails_with_the_message_not_retryable() {
        assert_eq!(fail(json!("quota exceeded")), Err(Failure::new("quota exceeded")));
    }

    #[test]
    fn non_string_messages_are_json() {
        assert_eq!(fail(json!(3)).unwrap_err().message, "3");
    }

    #[test]
    fn missing_message_still_fails() {
        let err = fail(Value::Null).unwrap_err();
        assert!(err.message.contains("+test+fail"), "{err}");
        assert!(!err.retryable);
    }
}
