//! `param_reset>: key.path` (or a list of key paths): remove stored params for every
//! following task (civitaspo/digdag-operator-param ParamResetOperator, which sets Digdag's
//! `resetStoreParams`). A nested path such as `shape.sides` removes only that key.
//! Uses no capability.

use spade_sdk::{Failure, Operator, Outcome, Request, Result, Value};

pub struct ParamReset;

impl Operator for ParamReset {
    fn run(req: Request) -> Result<Outcome> {
        let keys = keys(&req.command).map_err(|m| Failure::new(format!("{}: {m}", req.location())))?;
        Ok(keys.into_iter().fold(Outcome::done(), |done, key| done.reset(key)).into())
    }
}

fn keys(command: &Value) -> std::result::Result<Vec<String>, String> {
    let one = |v: &Value| match v {
        Value::String(s) if !s.trim().is_empty() && s.split('.').all(|part| !part.is_empty()) => Ok(s.clone()),
        other => Err(format!("expected a key path such as `name` or `shape.sides`, got {other}")),
    };
    match command {
        Value::Array(items) if !items.is_empty() => items.iter().map(one).collect(),
        other => one(other).map(|k| vec![k]),
    }
}

spade_sdk::plugin!(ParamReset, name = "spade-param-reset", operators = ["param_reset"]);

#[cfg(test)]
mod tests {
    use super::*;
    use spade_sdk::json;
    use spade_sdk::testing::{MockHost, request};

    #[test]
    fn one_or_many_key_paths() {
        assert_eq!(keys(&json!("color")), Ok(vec!["color".to_string()]));
        assert_eq!(keys(&json!(["color", "shape.sides"])), Ok(vec!["color".to_string(), "shape.sides".to_string()]));
    }

    #[test]
    fn invalid_paths() {
        for bad in [json!(""), json!("a..b"), json!(".a"), json!([]), json!(["a", 1]), json!(null), json!({"a": 1})] {
            assert!(keys(&bad).is_err(), "{bad} should be rejected");
        }
    }

    #[test]
    fn resets_without_storing() {
        let req = request("param_reset").command(json!(["color", "shape.sides"])).build();
        let outcome = MockHost::default().run::<ParamReset>(req).unwrap();
        let done = outcome.as_done().unwrap();
        assert_eq!(done.reset_store_params, ["color", "shape.sides"]);
        assert!(done.store_params.is_empty());
        let err = MockHost::default().run::<ParamReset>(request("param_reset").command(json!(3)).build()).unwrap_err();
        assert!(err.message.starts_with("task +test+param_reset (param_reset>): expected a key path"), "{err}");
    }
}
