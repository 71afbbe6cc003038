//! `param_eval>: key.path`: re-evaluate one param and store the result
//! (civitaspo/digdag-operator-param ParamEvalOperator, the workaround for Digdag issue #862:
//! strings inside nested exported objects are evaluated only one level deep).
//!
//! Like the original it renders the JSON text of all the task's params as one template with
//! those params as the scope, parses the result, takes the value at the key path and stores
//! it at that path (resetting the path first, so the value replaces rather than merges).
//! Quote with `'` inside `${...}`: a `"` in an expression or result breaks the JSON text, as
//! in the original. Uses the `expressions` capability.

use spade_sdk::{Failure, Object, Operator, Outcome, Request, Result, Value, expressions};

pub struct ParamEval;

impl Operator for ParamEval {
    fn run(req: Request) -> Result<Outcome> {
        let at = |m: String| Failure::new(format!("{}: {m}", req.location()));
        let path = key_path(req.command_str()?).map_err(at)?;
        let text = Value::Object(req.params.clone()).to_string();
        let rendered =
            expressions::render(&text, &req.params).map_err(|e| at(format!("evaluating the params failed: {e}")))?;
        let evaluated: Object = serde_json::from_str(&rendered).map_err(|e| {
            at(format!(
                "the evaluated params are not valid JSON ({e}); a '\"' inside ${{...}} or in a value \
                 breaks it, use ' quotes"
            ))
        })?;
        let value = lookup(&evaluated, &path).ok_or_else(|| at(format!("'{}' is not set", path.join("."))))?;
        let (root, nested) = nest(&path, value.clone());
        Ok(Outcome::done().reset(path.join(".")).store(root, nested).into())
    }
}

fn key_path(key: &str) -> std::result::Result<Vec<String>, String> {
    let parts: Vec<String> = key.trim().split('.').map(str::to_string).collect();
    if parts.iter().any(String::is_empty) {
        return Err(format!("expected a key path such as `name` or `card.label`, got '{key}'"));
    }
    Ok(parts)
}

/// The value at `path`; `None` when a part is missing or a parent is not an object.
fn lookup<'a>(root: &'a Object, path: &[String]) -> Option<&'a Value> {
    let (last, parents) = path.split_last()?;
    let mut node = root;
    for part in parents {
        node = node.get(part)?.as_object()?;
    }
    node.get(last)
}

/// `(first, {second: {...: value}})` so storing `first` puts `value` at the whole path.
fn nest(path: &[String], value: Value) -> (String, Value) {
    let nested = path[1..].iter().rev().fold(value, |inner, key| {
        let mut o = Object::new();
        o.insert(key.clone(), inner);
        Value::Object(o)
    });
    (path[0].clone(), nested)
}

spade_sdk::plugin!(ParamEval, name = "spade-param-eval", operators = ["param_eval"]);

#[cfg(test)]
mod tests {
    use super::*;
    use spade_sdk::json;
    use spade_sdk::testing::{MockHost, request};

    /// A tiny stand-in for Digdag's template engine: `${name}` and `${a.b}` lookups only.
    fn render(template: &str, scope: &Object) -> std::result::Result<String, String> {
        let mut out = String::new();
        let mut rest = template;
        while let Some(start) = rest.find("${") {
            out.push_str(&rest[..start]);
            let end = rest[start..].find('}').ok_or("unclosed ${")? + start;
            let name = &rest[start + 2..end];
            let path: Vec<String> = name.split('.').map(str::to_string).collect();
            match lookup(scope, &path) {
                Some(Value::String(s)) => out.push_str(s),
                Some(other) => out.push_str(&other.to_string()),
                None => return Err(format!("ReferenceError: \"{name}\" is not defined")),
            }
            rest = &rest[end + 1..];
        }
        out.push_str(rest);
        Ok(out)
    }

    fn host() -> MockHost {
        MockHost { renderer: Some(Box::new(render)), ..MockHost::default() }
    }

    #[test]
    fn paths() {
        assert_eq!(key_path("card.label").unwrap(), ["card", "label"]);
        assert!(key_path("card.").is_err());
        assert!(key_path("").is_err());
        let root = json!({"a": {"b": 1}, "s": "x"}).as_object().unwrap().clone();
        assert_eq!(lookup(&root, &key_path("a.b").unwrap()), Some(&json!(1)));
        assert_eq!(lookup(&root, &key_path("s.b").unwrap()), None);
        assert_eq!(lookup(&root, &key_path("a.c").unwrap()), None);
        assert_eq!(nest(&key_path("a.b.c").unwrap(), json!(2)), ("a".to_string(), json!({"b": {"c": 2}})));
        assert_eq!(nest(&key_path("a").unwrap(), json!(2)), ("a".to_string(), json!(2)));
    }

    #[test]
    fn re_evaluates_a_nested_value_and_stores_it() {
        // What the host hands over for case 018: card.label kept the raw text of `full`.
        let req = request("param_eval")
            .command(json!("card.label"))
            .param("first", json!("ada"))
            .param("last", json!("lovelace"))
            .param("full", json!("ada-lovelace"))
            .param("card", json!({"label": "${first}-${last}", "size": 3}))
            .build();
        let outcome = host().run::<ParamEval>(req).unwrap();
        let done = outcome.as_done().unwrap();
        assert_eq!(done.reset_store_params, ["card.label"]);
        assert_eq!(Value::Object(done.store_params.clone()), json!({"card": {"label": "ada-lovelace"}}));
    }

    #[test]
    fn failures_are_explained() {
        let run = |req: Request| host().run::<ParamEval>(req).unwrap_err().message;
        let missing = run(request("param_eval").command(json!("card.label")).param("card", json!({})).build());
        assert!(missing.ends_with("'card.label' is not set"), "{missing}");
        let undefined = run(request("param_eval").command(json!("x")).param("x", json!("${nope}")).build());
        assert!(undefined.contains("evaluating the params failed: ReferenceError"), "{undefined}");
        let broken = run(request("param_eval")
            .command(json!("x"))
            .param("x", json!("${q}"))
            .param("q", json!("say \"hi\""))
            .build());
        assert!(broken.contains("use ' quotes"), "{broken}");
    }
}
