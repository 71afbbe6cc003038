//! `echo>`: print the message as one line of user-facing output (Digdag EchoOperatorFactory).
//!
//! A string is printed as is; any other value (number, list, object) as its JSON text.
//! Only the `output` capability is used.

use spade_sdk::{Failure, Operator, Outcome, Request, Result, Value, output};

pub struct Echo;

impl Operator for Echo {
    fn run(req: Request) -> Result<Outcome> {
        output::print(message(&req)?);
        Ok(Outcome::done().into())
    }
}

/// The line `echo>` prints for its argument.
fn message(req: &Request) -> Result<String> {
    match &req.command {
        Value::String(s) => Ok(s.clone()),
        Value::Null => {
            Err(Failure::new(format!("{}: missing message; write it as `echo>: <message>`", req.location())))
        }
        other => Ok(other.to_string()),
    }
}

spade_sdk::plugin!(Echo, name = "spade-echo", operators = ["echo"]);

#[cfg(test)]
mod tests {
    use super::*;
    use spade_sdk::json;
    use spade_sdk::testing::{MockHost, request};

    fn echo(command: Value) -> (Result<Outcome>, Vec<String>) {
        let mut host = MockHost::default();
        let outcome = host.run::<Echo>(request("echo").command(command).build());
        (outcome, host.printed)
    }

    #[test]
    fn prints_strings_verbatim() {
        let (outcome, printed) = echo(json!("hello ${not evaluated here} \"q\""));
        assert_eq!(outcome, Ok(Outcome::done().into()));
        assert_eq!(printed, ["hello ${not evaluated here} \"q\""]);
    }

    #[test]
    fn prints_other_values_as_json() {
        assert_eq!(echo(json!(42)).1, ["42"]);
        assert_eq!(echo(json!(true)).1, ["true"]);
        assert_eq!(echo(json!({"a": [1, "b"]})).1, [r#"{"a":[1,"b"]}"#]);
    }

    #[test]
    fn missing_message_fails_without_printing() {
        let (outcome, printed) = echo(Value::Null);
        let err = outcome.unwrap_err();
        assert!(err.message.contains("missing message"), "{err}");
        assert!(!err.retryable);
        assert!(printed.is_empty());
    }
}
