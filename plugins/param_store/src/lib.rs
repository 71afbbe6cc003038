//! `param_store>: {key: value, ...}`: store the given params for every following task
//! (civitaspo/digdag-operator-param ParamStoreOperator). Objects are allowed and deep-merge
//! into the store, unlike Digdag's own `param_set>`. Uses no capability.

use spade_sdk::{Object, Operator, Outcome, Request, Result};

pub struct ParamStore;

impl Operator for ParamStore {
    fn run(req: Request) -> Result<Outcome> {
        let params: Object = req.command_as().map_err(|_| {
            spade_sdk::Failure::new(format!(
                "{}: the argument must be a mapping of params to store, got {}",
                req.location(),
                req.command
            ))
        })?;
        Ok(Outcome::done().store_all(params).into())
    }
}

spade_sdk::plugin!(ParamStore, name = "spade-param-store", operators = ["param_store"]);

#[cfg(test)]
mod tests {
    use super::*;
    use spade_sdk::testing::{MockHost, request};
    use spade_sdk::{Value, json};

    fn run(cmd: Value) -> Result<Outcome> {
        MockHost::default().run::<ParamStore>(request("param_store").command(cmd).build())
    }

    #[test]
    fn stores_the_mapping_as_is() {
        let cmd = json!({"ticket": "T-100", "owner": {"name": "ana"}, "n": 1});
        let outcome = run(cmd.clone()).unwrap();
        let done = outcome.as_done().unwrap();
        assert_eq!(Value::Object(done.store_params.clone()), cmd);
        assert!(done.reset_store_params.is_empty() && done.export_params.is_empty() && done.subtasks.is_none());
    }

    #[test]
    fn rejects_non_mappings() {
        let err = run(json!("ticket")).unwrap_err();
        assert!(err.message.contains("must be a mapping of params to store, got \"ticket\""), "{err}");
        assert!(run(json!([1])).is_err());
        assert!(run(Value::Null).is_err());
    }
}
