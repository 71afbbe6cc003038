//! `loop>: N`: generate N children `+loop-0` .. `+loop-<N-1>`, each a copy of the raw `_do`
//! exporting `i` (Digdag LoopOperatorFactory). N may be a number or a numeric string (every
//! `${...}` result is a string); a `count` param is used when the argument is absent.
//! `_parallel` is copied into the generated group. Uses no capability.

use spade_sdk::control::{Generated, check_count, child, parallel_of, required_body};
use spade_sdk::{Failure, Object, Operator, Outcome, Request, Result, json};

pub struct Loop;

impl Operator for Loop {
    fn run(req: Request) -> Result<Outcome> {
        let count = count(&req)?;
        check_count(&req, "loop", count)?;
        let body = required_body(&req, "_do")?;
        let mut generated = generate(&body, count);
        if let Some(parallel) = parallel_of(&req) {
            generated.set("_parallel", parallel);
        }
        Ok(Outcome::done().generated(generated).into())
    }
}

fn count(req: &Request) -> Result<u64> {
    let count: i64 = if req.command.is_null() {
        req.param("count")?
            .ok_or_else(|| Failure::new(format!("{}: missing count; write it as `loop>: <N>`", req.location())))?
    } else {
        req.command_as()?
    };
    u64::try_from(count)
        .map_err(|_| Failure::new(format!("{}: the loop count must not be negative, got {count}", req.location())))
}

/// The subtask config: `+loop-<i>` for i in 0..count, in order.
fn generate(body: &Object, count: u64) -> Generated {
    let mut generated = Generated::new();
    for i in 0..count {
        let mut export = Object::new();
        export.insert("i".into(), json!(i));
        generated.push(&format!("+loop-{i}"), child(body, export));
    }
    generated
}

spade_sdk::plugin!(Loop, name = "spade-loop", operators = ["loop"]);

#[cfg(test)]
mod tests {
    use super::*;
    use spade_sdk::Value;
    use spade_sdk::testing::{MockHost, request};

    fn subtasks(outcome: Result<Outcome>) -> Value {
        Value::Object(outcome.unwrap().as_done().unwrap().subtasks_object().unwrap())
    }

    #[test]
    fn generates_numbered_children_exporting_i() {
        let req = request("loop").command(json!(2)).raw("_do", json!({"echo>": "lap ${i}"})).build();
        assert_eq!(
            subtasks(MockHost::default().run::<Loop>(req)),
            json!({
                "+loop-0": {"echo>": "lap ${i}", "_export": {"i": 0}},
                "+loop-1": {"echo>": "lap ${i}", "_export": {"i": 1}},
            })
        );
    }

    #[test]
    fn numeric_string_and_parallel() {
        let req = request("loop")
            .command(json!("3"))
            .local("_parallel", json!(true))
            .raw("_do", json!({"+a": {"echo>": "x"}}))
            .build();
        let sub = subtasks(MockHost::default().run::<Loop>(req));
        let keys: Vec<_> = sub.as_object().unwrap().keys().cloned().collect();
        assert_eq!(keys, ["+loop-0", "+loop-1", "+loop-2", "_parallel"]);
        assert_eq!(sub["+loop-2"], json!({"+a": {"echo>": "x"}, "_export": {"i": 2}}));
        assert_eq!(sub["_parallel"], json!(true));
    }

    #[test]
    fn count_param_when_no_argument() {
        let req = request("loop").local("count", json!(1)).raw("_do", json!({"echo>": "x"})).build();
        assert_eq!(subtasks(MockHost::default().run::<Loop>(req)).as_object().unwrap().len(), 1);
    }

    #[test]
    fn zero_iterations_is_an_empty_group() {
        let req = request("loop").command(json!(0)).raw("_do", json!({"echo>": "x"})).build();
        assert_eq!(subtasks(MockHost::default().run::<Loop>(req)), json!({}));
    }

    #[test]
    fn errors() {
        let run = |cmd: Value, with_do: bool| {
            let mut b = request("loop").command(cmd);
            if with_do {
                b = b.raw("_do", json!({"echo>": "x"}));
            }
            MockHost::default().run::<Loop>(b.build()).unwrap_err().message
        };
        assert!(run(json!(2), false).contains("_do is required"));
        assert!(run(json!("three"), true).contains("invalid argument"));
        assert!(run(json!(-1), true).contains("must not be negative"));
        assert!(run(json!(10_000_001), true).contains("too many loop subtasks"));
        assert!(run(Value::Null, true).contains("missing count"));
    }
}
