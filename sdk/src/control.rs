//! Building blocks of Digdag control operators (`loop>`, `for_each>`, `for_range>`, ...):
//! reading the raw `_do` body, stamping one generated child with its `_export`, and copying
//! `_parallel` into the generated group (Digdag's `ParallelControl` copy).
//!
//! Pure functions over JSON objects; they never call the host.

use serde_json::Value;

use crate::{Failure, Object, Request};

/// Generated subtasks written as JSON text while they are generated: [`Generated::push`]
/// serializes each child at once, so a generator of 100,000 children holds their text
/// (tens of bytes each), never 100,000 parsed configs. Give it to
/// [`crate::outcome::Done::generated`].
#[derive(Clone, Debug)]
pub struct Generated {
    text: String,
    entries: usize,
}

impl Default for Generated {
    fn default() -> Self {
        Generated { text: String::from("{"), entries: 0 }
    }
}

impl Generated {
    pub fn new() -> Self {
        Self::default()
    }

    fn key(&mut self, key: &str) {
        if self.entries > 0 {
            self.text.push(',');
        }
        self.entries += 1;
        // A string always serializes.
        self.text.push_str(&serde_json::to_string(key).expect("a string serializes"));
        self.text.push(':');
    }

    /// Add the child task `name` (`+loop-0`) with its config.
    pub fn push(&mut self, name: &str, config: Object) {
        self.set(name, &Value::Object(config));
    }

    /// Add a key of the generated group itself (`_parallel`), or a child given as a value.
    pub fn set(&mut self, key: &str, value: &Value) {
        self.key(key);
        // JSON values always serialize.
        self.text.push_str(&serde_json::to_string(value).expect("a JSON value serializes"));
    }

    /// Entries added so far.
    pub fn len(&self) -> usize {
        self.entries
    }

    pub fn is_empty(&self) -> bool {
        self.entries == 0
    }

    /// The config as JSON text.
    pub fn into_json(mut self) -> String {
        self.text.push('}');
        self.text
    }
}

/// The task's `_parallel`, which Digdag's control operators copy into the generated group.
pub fn parallel_of(req: &Request) -> Option<&Value> {
    req.params.get("_parallel").or_else(|| req.local_params.get("_parallel"))
}

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
    if let Some(parallel) = parallel_of(req) {
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

    #[test]
    fn generated_writes_what_the_object_would_be() {
        let mut g = Generated::new();
        assert!(g.is_empty());
        g.push("+a \"quoted\"", child(&json!({"echo>": "x ${i}"}).as_object().unwrap().clone(), Object::new()));
        g.push("+b", Object::new());
        g.set("_parallel", &json!({"limit": 2}));
        assert_eq!(g.len(), 3);
        let text = g.into_json();
        let parsed: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            parsed,
            json!({"+a \"quoted\"": {"echo>": "x ${i}", "_export": {}}, "+b": {}, "_parallel": {"limit": 2}})
        );
        assert_eq!(serde_json::from_str::<Value>(&Generated::new().into_json()).unwrap(), json!({}));
    }
}
