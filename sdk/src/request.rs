//! The typed task request an operator receives ([`Request`]) and its accessors.
//!
//! The host sends params as JSON text; they are parsed once here. Typed accessors go through
//! the [`lenient`](crate::lenient) reader, because every `${...}` result is a string in
//! Digdag (`loop>: ${n}` arrives as `"3"`).

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::{Failure, Object, lenient};

/// What a task receives. Built by the host once per task run and re-used verbatim for every
/// poll of that run (only [`state`](Self::state) changes between polls).
#[derive(Clone, Debug, PartialEq)]
pub struct Request {
    /// Operator name without the `>` (e.g. `echo`).
    pub operator: String,
    /// Full task name, e.g. `+wf+group^sub+for-0=fruit=0=apple`.
    pub task_name: String,
    pub project_name: String,
    pub workflow_name: String,
    pub attempt_id: i64,
    pub session_id: i64,
    pub session_uuid: String,
    /// ISO 8601 with offset, in [`timezone`](Self::timezone).
    pub session_time: String,
    /// IANA zone of the workflow.
    pub timezone: String,
    /// The attempt's retry name (`digdag retry --name`), when it has one.
    pub retry_attempt_name: Option<String>,
    /// The operator's argument (`echo>: hello` gives `"hello"`); `Null` when absent.
    pub command: Value,
    /// Every param the task sees (exports, stores, built-ins, its own keys), evaluated.
    pub params: Object,
    /// Only the task's own keys, evaluated. Read options here that must not be inherited.
    pub local_params: Object,
    /// Subtrees the host never evaluates (`_do`, `_else_do`), raw, when present.
    pub raw: Object,
    /// The state returned by this task run's previous [`Outcome::poll`](crate::Outcome::poll).
    pub state: Option<Value>,
    /// How many times the task has been retried (0 on the first run).
    pub retry_count: u32,
}

impl Request {
    /// A request for `operator` with everything else empty; fill the public fields you need.
    /// Mostly useful in tests (see also [`testing::RequestBuilder`](crate::testing)).
    pub fn new(operator: impl Into<String>) -> Self {
        Request {
            operator: operator.into(),
            task_name: String::new(),
            project_name: String::new(),
            workflow_name: String::new(),
            attempt_id: 0,
            session_id: 0,
            session_uuid: String::new(),
            session_time: String::new(),
            timezone: "UTC".into(),
            retry_attempt_name: None,
            command: Value::Null,
            params: Object::new(),
            local_params: Object::new(),
            raw: Object::new(),
            state: None,
            retry_count: 0,
        }
    }

    /// A key (32 hex digits) unique to this task run and `purpose`, and the same on every
    /// call of the run (polls, a call repeated after a crash): an idempotency key for work
    /// the operator starts elsewhere (a TD job's domain key, pg>'s status row). A retry
    /// (`_retry`) or another attempt gets other keys.
    pub fn run_key(&self, purpose: &str) -> String {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        for part in [&self.session_uuid, &self.attempt_id.to_string(), &self.task_name, &self.retry_count.to_string()] {
            h.update(part.as_bytes());
            h.update([0]);
        }
        h.update(purpose.as_bytes());
        h.finalize().iter().take(16).map(|b| format!("{b:02x}")).collect()
    }

    /// Where this task is, for error messages: `task +wf+t (echo>)`.
    pub fn location(&self) -> String {
        if self.task_name.is_empty() {
            format!("{}>", self.operator)
        } else {
            format!("task {} ({}>)", self.task_name, self.operator)
        }
    }

    /// The operator argument as a string; a failure naming the task when it is missing or
    /// not a string (numbers and booleans are not turned into strings here: use
    /// [`command_as`](Self::command_as) for that).
    pub fn command_str(&self) -> Result<&str, Failure> {
        match &self.command {
            Value::String(s) => Ok(s),
            Value::Null => Err(Failure::new(format!(
                "{}: missing argument; write it as `{}>: <value>`",
                self.location(),
                self.operator
            ))),
            other => Err(Failure::new(format!("{}: the argument must be a string, got {}", self.location(), other))),
        }
    }

    /// The operator argument converted to `T` with Digdag's coercions (`"3"` is a number,
    /// `'[1, 2]'` a list).
    pub fn command_as<T: DeserializeOwned>(&self) -> Result<T, Failure> {
        if self.command.is_null() {
            return Err(Failure::new(format!(
                "{}: missing argument; write it as `{}>: <value>`",
                self.location(),
                self.operator
            )));
        }
        lenient::from_value(self.command.clone())
            .map_err(|e| Failure::new(format!("{}: invalid argument: {e}", self.location())))
    }

    /// The param `key` (from [`params`](Self::params), which include the task's own keys)
    /// converted to `T`; `None` when absent or `null`.
    pub fn param<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, Failure> {
        self.convert(self.params.get(key), key)
    }

    /// The param `key`, or `default` when absent or `null`.
    pub fn param_or<T: DeserializeOwned>(&self, key: &str, default: T) -> Result<T, Failure> {
        Ok(self.param(key)?.unwrap_or(default))
    }

    /// All params read into the author's own struct (use `#[serde(default)]` for optional
    /// fields; unknown keys are ignored unless the struct denies them).
    pub fn params_as<T: DeserializeOwned>(&self) -> Result<T, Failure> {
        lenient::from_value(Value::Object(self.params.clone()))
            .map_err(|e| Failure::new(format!("{}: invalid parameters: {e}", self.location())))
    }

    /// The task's own (not inherited) value of `key`.
    pub fn local(&self, key: &str) -> Option<&Value> {
        self.local_params.get(key)
    }

    /// The task's own value of `key` converted to `T`; `None` when absent or `null`.
    pub fn local_as<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, Failure> {
        self.convert(self.local_params.get(key), key)
    }

    /// An unevaluated subtree (`_do`, `_else_do`), when present.
    pub fn raw(&self, key: &str) -> Option<&Value> {
        self.raw.get(key)
    }

    /// The previous poll's state converted to `T`; `None` on the first call.
    pub fn state_as<T: DeserializeOwned>(&self) -> Result<Option<T>, Failure> {
        match &self.state {
            None | Some(Value::Null) => Ok(None),
            Some(v) => serde_json::from_value(v.clone()).map(Some).map_err(|e| {
                Failure::new(format!(
                    "{}: cannot read the state saved by the previous poll ({e}); \
                     re-run the task with --rerun",
                    self.location()
                ))
            }),
        }
    }

    fn convert<T: DeserializeOwned>(&self, value: Option<&Value>, key: &str) -> Result<Option<T>, Failure> {
        match value {
            None | Some(Value::Null) => Ok(None),
            Some(v) => lenient::from_value(v.clone())
                .map(Some)
                .map_err(|e| Failure::new(format!("{}: invalid value for '{key}': {e}", self.location()))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use serde_json::json;

    fn req() -> Request {
        let mut r = Request::new("demo");
        r.task_name = "+wf+t".into();
        r.command = json!("arg");
        r.params = json!({"n": "3", "flag": true, "name": "x", "nothing": null}).as_object().unwrap().clone();
        r.local_params = json!({"own": 1}).as_object().unwrap().clone();
        r.raw = json!({"_do": {"echo>": "${i}"}}).as_object().unwrap().clone();
        r
    }

    #[test]
    fn typed_params() {
        let r = req();
        assert_eq!(r.param::<u32>("n").unwrap(), Some(3));
        assert_eq!(r.param::<bool>("flag").unwrap(), Some(true));
        assert_eq!(r.param::<u32>("missing").unwrap(), None);
        assert_eq!(r.param::<u32>("nothing").unwrap(), None);
        assert_eq!(r.param_or("missing", 7u32).unwrap(), 7);
        let err = r.param::<u32>("name").unwrap_err();
        assert!(err.message.contains("task +wf+t (demo>)"), "{err}");
        assert!(err.message.contains("'name'"), "{err}");
    }

    #[test]
    fn params_into_struct() {
        #[derive(Deserialize)]
        struct P {
            n: u64,
            #[serde(default)]
            other: Option<String>,
        }
        let p: P = req().params_as().unwrap();
        assert_eq!(p.n, 3);
        assert!(p.other.is_none());
    }

    #[test]
    fn command_accessors() {
        let mut r = req();
        assert_eq!(r.command_str().unwrap(), "arg");
        r.command = json!(5);
        assert!(r.command_str().unwrap_err().message.contains("must be a string"));
        assert_eq!(r.command_as::<String>().unwrap(), "5");
        r.command = Value::Null;
        assert!(r.command_str().unwrap_err().message.contains("missing argument"));
        assert!(r.command_as::<u32>().is_err());
    }

    #[test]
    fn local_raw_state() {
        let mut r = req();
        assert_eq!(r.local("own"), Some(&json!(1)));
        assert_eq!(r.local("n"), None);
        assert_eq!(r.local_as::<String>("own").unwrap().as_deref(), Some("1"));
        assert_eq!(r.raw("_do"), Some(&json!({"echo>": "${i}"})));
        assert_eq!(r.state_as::<u32>().unwrap(), None);
        r.state = Some(json!(4));
        assert_eq!(r.state_as::<u32>().unwrap(), Some(4));
        r.state = Some(json!("x"));
        assert!(r.state_as::<u32>().is_err());
    }
}
