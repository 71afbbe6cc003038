//! `if>: <condition>`: run the raw `_do` when the condition is true, the raw `_else_do` when
//! it is false (Digdag IfOperatorFactory). The chosen subtree itself is the generated
//! subtask config, so it is evaluated only when it runs. The condition may be a boolean or
//! the string `true`/`false` (what `${...}` yields). Uses no capability.

use spade_sdk::control::body;
use spade_sdk::{Failure, Object, Operator, Outcome, Request, Result};

pub struct If;

impl Operator for If {
    fn run(req: Request) -> Result<Outcome> {
        let condition: bool = req.command_as().map_err(|_| {
            Failure::new(format!("{}: the condition must be true or false, got {}", req.location(), req.command))
        })?;
        let then = body(&req, "_do")?.filter(|b| !b.is_empty());
        let otherwise = body(&req, "_else_do")?.filter(|b| !b.is_empty());
        if then.is_none() && otherwise.is_none() {
            return Err(Failure::new(format!("{}: Both _do and _else_do are not specified.", req.location())));
        }
        Ok(branch(condition, then, otherwise).map_or_else(Outcome::done, |sub| Outcome::done().subtasks(sub)).into())
    }
}

fn branch(condition: bool, then: Option<Object>, otherwise: Option<Object>) -> Option<Object> {
    if condition { then } else { otherwise }
}

spade_sdk::plugin!(If, name = "spade-if", operators = ["if"]);

#[cfg(test)]
mod tests {
    use super::*;
    use spade_sdk::testing::{MockHost, request};
    use spade_sdk::{Value, json};

    fn run(cmd: Value, then: Option<Value>, otherwise: Option<Value>) -> Result<Outcome> {
        let mut b = request("if").command(cmd);
        if let Some(t) = then {
            b = b.raw("_do", t);
        }
        if let Some(o) = otherwise {
            b = b.raw("_else_do", o);
        }
        MockHost::default().run::<If>(b.build())
    }

    fn subtasks(outcome: Result<Outcome>) -> Option<Value> {
        outcome.unwrap().as_done().unwrap().subtasks.clone().map(Value::Object)
    }

    #[test]
    fn true_runs_do_verbatim() {
        let then = json!({"+a": {"echo>": "${undefined_later}"}, "+b": {"fail>": "x"}});
        assert_eq!(subtasks(run(json!(true), Some(then.clone()), None)), Some(then.clone()));
        assert_eq!(subtasks(run(json!("true"), Some(then.clone()), Some(json!({"echo>": "no"})))), Some(then));
    }

    #[test]
    fn false_runs_else_do_or_nothing() {
        let otherwise = json!({"echo>": "else"});
        assert_eq!(
            subtasks(run(json!("false"), Some(json!({"echo>": "no"})), Some(otherwise.clone()))),
            Some(otherwise)
        );
        assert_eq!(subtasks(run(json!(false), Some(json!({"echo>": "no"})), None)), None);
    }

    #[test]
    fn errors() {
        let err = run(json!("maybe"), Some(json!({"echo>": "x"})), None).unwrap_err();
        assert!(err.message.contains("must be true or false, got \"maybe\""), "{err}");
        let err = run(json!(true), None, None).unwrap_err();
        assert!(err.message.contains("Both _do and _else_do are not specified."), "{err}");
        assert!(run(json!(true), Some(json!({})), Some(json!({}))).is_err());
        assert!(run(json!(true), Some(json!([1])), None).unwrap_err().message.contains("_do must be a task config"));
    }
}
