//! `param_set>` and `param_get>` (Digdag 0.10's parameter server operators): values shared
//! by the workflows of one project, through the host's `params` capability, which keeps
//! them in the engine's state store (per project, 90 days after they were last set).
//!
//! ```yaml
//! +set:
//!   param_set>:
//!   last_import: ${session_date}
//! +get:
//!   param_get>:
//!   last_import: previous_import     # stores ${previous_import}
//! ```
//!
//! The keys are the task's own params (`param_set>: {k: v}` works too); keys starting with
//! `_` are task options, never parameters. Values are text, as in Digdag: numbers and
//! booleans are written as their text, lists and maps are refused. `param_get>` stores the
//! empty string for a key that is unset or expired, as Digdag does.

use spade_sdk::{Failure, Object, Operator, Outcome, Request, Result, Value, params};

/// The `key: value` pairs of the task: its command when it is a map, then its own params.
fn pairs(req: &Request) -> Result<Vec<(String, Value)>> {
    let mut out: Vec<(String, Value)> = Vec::new();
    if let Value::Object(m) = &req.command {
        out.extend(m.iter().map(|(k, v)| (k.clone(), v.clone())));
    } else if !req.command.is_null() {
        return Err(Failure::new(format!(
            "{}: write the keys as the task's params (`{}>:` on its own line, then `key: value`)",
            req.location(),
            req.operator
        )));
    }
    let own: &Object = &req.local_params;
    for (k, v) in own {
        if !k.starts_with('_') && !out.iter().any(|(o, _)| o == k) {
            out.push((k.clone(), v.clone()));
        }
    }
    if out.is_empty() {
        return Err(Failure::new(format!("{}: no key is set.", req.location())));
    }
    Ok(out)
}

fn text(req: &Request, key: &str, v: &Value) -> Result<Option<String>> {
    match v {
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some(s.clone())),
        Value::Number(_) | Value::Bool(_) => Ok(Some(v.to_string())),
        other => Err(Failure::new(format!(
            "{}: the value of '{key}' must be text (a string, number or boolean), got {other}",
            req.location()
        ))),
    }
}

pub struct ParamSet;

impl Operator for ParamSet {
    fn run(req: Request) -> Result<Outcome> {
        let pairs = pairs(&req)?;
        for (key, value) in &pairs {
            if let Some(value) = text(&req, key, value)? {
                params::set(key, &value).map_err(|e| Failure::new(format!("{}: {e}", req.location())).retryable())?;
            }
        }
        Ok(Outcome::done().into())
    }
}

pub struct ParamGet;

impl Operator for ParamGet {
    fn run(req: Request) -> Result<Outcome> {
        let pairs = pairs(&req)?;
        let mut done = Outcome::done();
        for (key, dest) in &pairs {
            let Some(dest) = text(&req, key, dest)? else { continue };
            let value = params::get(key).map_err(|e| Failure::new(format!("{}: {e}", req.location())).retryable())?;
            done = done.store(dest, value.unwrap_or_default());
        }
        Ok(done.into())
    }
}

spade_sdk::plugin!(name = "spade-param-server", operators = {
    "param_get" => ParamGet,
    "param_set" => ParamSet,
});

#[cfg(test)]
mod tests {
    use super::*;
    use spade_sdk::json;
    use spade_sdk::testing::{MockHost, request};

    #[test]
    fn set_then_get() {
        let mut host = MockHost::default();
        let set =
            request("param_set").local("day", json!("2024-01-01")).local("count", json!(3)).local("_retry", json!(2));
        host.run::<ParamSet>(set.build()).unwrap();
        assert_eq!(host.params.get("day").map(String::as_str), Some("2024-01-01"));
        assert_eq!(host.params.get("count").map(String::as_str), Some("3"));
        assert!(!host.params.contains_key("_retry"));

        let get = request("param_get").local("day", json!("previous_day")).local("missing", json!("nothing"));
        let out = host.run::<ParamGet>(get.build()).unwrap();
        let done = out.as_done().unwrap();
        assert_eq!(done.store_params["previous_day"], "2024-01-01");
        assert_eq!(done.store_params["nothing"], "", "unset reads as empty, as in Digdag");
    }

    #[test]
    fn refuses_nothing_and_structures() {
        let mut host = MockHost::default();
        let err = host.run::<ParamSet>(request("param_set").build()).unwrap_err();
        assert!(err.message.contains("no key is set"), "{err:?}");
        let err = host.run::<ParamSet>(request("param_set").local("k", json!([1])).build()).unwrap_err();
        assert!(err.message.contains("must be text"), "{err:?}");
    }
}
