//! Building blocks of Digdag control operators (`loop>`, `for_each>`, `for_range>`, ...):
//! reading the raw `_do` body, stamping one generated child with its `_export`, and copying
//! `_parallel` into the generated group (Digdag's `ParallelControl` copy).
//!
//! Pure functions over JSON objects; they never call the host.

use serde_json::Value;

use crate::{Failure, Object, Request};

/// A sanity bound checked up front, before a generator builds its config: no attempt can
/// hold more tasks than this. The real, configurable limit (`spade run --max-tasks`,
/// default 100,000; Digdag's was 1,000) is enforced by the engine when the subtasks arrive.
pub const MAX_GENERATED_TASKS: u64 = 10_000_000;

/// The raw subtree `key` (`_do`, `_else_do`) as a task config object; `None` when absent or
/// `null`, a failure when it is something other than an object.
pub fn body(req: &Request, key: &str) -> Result<Option<Object>, Failure> {
    match req.raw(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(o)) => Ok(Some(o.clone())),
        Some(other) => Err(Failure::new(format!(
            "{}: {key} must be a task config (a mapping of +tasks or an operator), got {other}",
            req.location()
        ))),
    }
}

/// The raw subtree `key`, required: a failure naming the task when it is missing.
pub fn required_body(req: &Request, key: &str) -> Result<Object, Failure> {
    body(req, key)?.ok_or_else(|| {
        Failure::new(format!("{}: {key} is required (the tasks to run for each iteration)", req.location()))
    })
}

/// One generated child: `body` with `exports` set into its `_export` (existing keys of the
/// body's own `_export` are kept unless overwritten; an `_export` key is appended when the
/// body has none).
pub fn child(body: &Object, exports: Object) -> Object {
    let mut child = body.clone();
    let export = child.entry("_export").or_insert_with(|| Value::Object(Object::new()));
    if !export.is_object() {
        *export = Value::Object(Object::new());
    }
    if let Value::Object(map) = export {
        map.extend(exports);
    }
    child
}

/// Copy the task's `_parallel` (from its params) into the generated config, as Digdag's
/// `loop>`/`for_each>`/`for_range>` do, so `_parallel: true` makes the iterations concurrent.
pub fn copy_parallel(req: &Request, generated: &mut Object) {
    // params include the task's own keys; local_params covers a host that keeps `_` keys
    // out of params.
    if let Some(parallel) = req.params.get("_parallel").or_else(|| req.local_params.get("_parallel")) {
        generated.insert("_parallel".into(), parallel.clone());
    }
}

/// A failure when `count` children exceed [`MAX_GENERATED_TASKS`].
pub fn check_count(req: &Request, what: &str, count: u64) -> Result<(), Failure> {
    if count > MAX_GENERATED_TASKS {
        return Err(Failure::new(format!(
            "{}: too many {what} subtasks ({count}); no attempt can hold more than {MAX_GENERATED_TASKS} tasks",
            req.location()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Object {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn child_merges_into_existing_export() {
        let body = obj(json!({"_export": {"a": 1, "i": "old"}, "+t": {"echo>": "${i}"}}));
        let c = child(&body, obj(json!({"i": 3})));
        assert_eq!(Value::Object(c), json!({"_export": {"a": 1, "i": 3}, "+t": {"echo>": "${i}"}}));
    }

    #[test]
    fn child_appends_export() {
        let body = obj(json!({"echo>": "x"}));
        let c = child(&body, obj(json!({"i": 0})));
        assert_eq!(c.keys().collect::<Vec<_>>(), vec!["echo>", "_export"]);
    }

    #[test]
    fn body_and_parallel() {
        let mut r = Request::new("loop");
        assert_eq!(body(&r, "_do").unwrap(), None);
        assert!(required_body(&r, "_do").unwrap_err().message.contains("_do is required"));
        r.raw.insert("_do".into(), json!("text"));
        assert!(body(&r, "_do").is_err());
        r.raw.insert("_do".into(), json!({"echo>": 1}));
        assert_eq!(body(&r, "_do").unwrap(), Some(obj(json!({"echo>": 1}))));

        let mut g = Object::new();
        copy_parallel(&r, &mut g);
        assert!(g.is_empty());
        r.params.insert("_parallel".into(), json!({"limit": 2}));
        copy_parallel(&r, &mut g);
        assert_eq!(g.get("_parallel"), Some(&json!({"limit": 2})));
    }

    #[test]
    fn count_limit() {
        let r = Request::new("loop");
        assert!(check_count(&r, "loop", 100_000).is_ok());
        assert!(check_count(&r, "loop", 10_000_001).unwrap_err().message.contains("too many loop subtasks (10000001)"));
    }
}
