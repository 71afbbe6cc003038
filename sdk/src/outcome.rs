//! What one call of an operator returns: [`Outcome`] and its builders [`Done`] and [`Failure`].
//!
//! These are plain Rust values; turning them into the WIT `outcome` (JSON text fields) is
//! done once, by the export glue in `lib.rs`, so authors never see JSON strings.

use std::fmt;

use serde_json::Value;

use crate::Object;

/// The result of one call of an operator.
///
/// Build it with [`Outcome::done`], [`Outcome::poll`] or [`Outcome::error`].
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// The task finished successfully.
    Done(Done),
    /// The task is not finished: the host calls it again after `after_seconds` with `state`
    /// (at least 1 second later, whatever `after_seconds` says).
    Poll { after_seconds: u32, state: Value },
    /// The task failed.
    Error(Failure),
}

impl Outcome {
    /// A successful outcome with nothing stored, exported or generated; add those with the
    /// builder methods of [`Done`] and convert with `.into()`.
    pub fn done() -> Done {
        Done::default()
    }

    /// Not finished yet: call again after `after_seconds` with `state` (any JSON, handed back
    /// as [`Request::state`](crate::Request::state)). The host persists `state`, so it
    /// survives a restart between two calls. The host waits at least 1 second between two
    /// calls (Digdag polls no faster either): `after_seconds` of 0 is "as soon as allowed",
    /// not a busy loop.
    pub fn poll(after_seconds: u32, state: impl Into<Value>) -> Outcome {
        Outcome::Poll { after_seconds, state: state.into() }
    }

    /// A failure with a message for the user; not retryable unless `.retryable()` is added.
    /// Return it as `Err(...)` from [`Operator::run`](crate::Operator::run) or convert it
    /// with `.into()`.
    pub fn error(message: impl Into<String>) -> Failure {
        Failure::new(message)
    }

    /// The successful part, if this is a done outcome.
    pub fn as_done(&self) -> Option<&Done> {
        match self {
            Outcome::Done(d) => Some(d),
            _ => None,
        }
    }
}

/// A successful outcome under construction (see [`Outcome::done`]).
///
/// Keys are taken literally: `.store("a.b", 1)` stores a key named `a.b`; to store a nested
/// value pass an object (`.store("a", json!({"b": 1}))`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Done {
    /// Params stored for every following task (deep-merged into the store).
    pub store_params: Object,
    /// Key paths (`a.b.c`) removed from the store before `store_params` is merged.
    pub reset_store_params: Vec<String>,
    /// Params exported to the subtasks this task generates.
    pub export_params: Object,
    /// Generated subtasks as a Digdag task config (`+name` keys plus group options such as
    /// `_parallel`), run as the `^sub` child of this task.
    pub subtasks: Option<Object>,
    /// The same, already written as JSON text by [`crate::control::Generated`] (a
    /// generator of many children never holds them all parsed); used instead of
    /// `subtasks` when set.
    pub subtasks_json: Option<String>,
}

impl Done {
    /// Store `key` for all following tasks.
    pub fn store(mut self, key: impl Into<String>, value: impl Into<Value>) -> Self {
        self.store_params.insert(key.into(), value.into());
        self
    }

    /// Store every key of `params` (later keys of the same name replace earlier ones).
    pub fn store_all(mut self, params: Object) -> Self {
        self.store_params.extend(params);
        self
    }

    /// Remove the stored key path `key_path` (e.g. `shape.sides`) before this outcome's own
    /// stores are merged.
    pub fn reset(mut self, key_path: impl Into<String>) -> Self {
        self.reset_store_params.push(key_path.into());
        self
    }

    /// Export `key` to the subtasks this task generates (not to its siblings).
    pub fn export(mut self, key: impl Into<String>, value: impl Into<Value>) -> Self {
        self.export_params.insert(key.into(), value.into());
        self
    }

    /// Generate subtasks: a task config object (`{"+a": {...}, "_parallel": true}`).
    pub fn subtasks(mut self, config: Object) -> Self {
        self.subtasks = Some(config);
        self.subtasks_json = None;
        self
    }

    /// Generate subtasks written child by child with [`crate::control::Generated`].
    pub fn generated(mut self, generated: crate::control::Generated) -> Self {
        self.subtasks = None;
        self.subtasks_json = Some(generated.into_json());
        self
    }

    /// The generated subtasks, however they were given (parsed; for tests).
    pub fn subtasks_object(&self) -> Option<Object> {
        match &self.subtasks_json {
            Some(text) => serde_json::from_str(text).ok(),
            None => self.subtasks.clone(),
        }
    }
}

impl From<Done> for Outcome {
    fn from(done: Done) -> Self {
        Outcome::Done(done)
    }
}

/// A task failure: a message the user can act on, and whether `_retry` may run the task again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    pub message: String,
    pub retryable: bool,
}

impl Failure {
    /// A non-retryable failure.
    pub fn new(message: impl Into<String>) -> Self {
        Failure { message: message.into(), retryable: false }
    }

    /// Let `_retry` on the task run it again (for transient errors: timeouts, 5xx, ...).
    pub fn retryable(mut self) -> Self {
        self.retryable = true;
        self
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Failure {}

impl From<Failure> for Outcome {
    fn from(failure: Failure) -> Self {
        Outcome::Error(failure)
    }
}

impl From<String> for Failure {
    fn from(message: String) -> Self {
        Failure::new(message)
    }
}

impl From<&str> for Failure {
    fn from(message: &str) -> Self {
        Failure::new(message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn done_builder_collects_everything() {
        let mut sub = Object::new();
        sub.insert("+a".into(), json!({"echo>": "x"}));
        let outcome: Outcome = Outcome::done()
            .store("k", 1)
            .store_all(json!({"m": "n", "k": 2}).as_object().unwrap().clone())
            .reset("old.path")
            .export("e", "v")
            .subtasks(sub.clone())
            .into();
        let done = outcome.as_done().unwrap();
        assert_eq!(Value::Object(done.store_params.clone()), json!({"k": 2, "m": "n"}));
        assert_eq!(done.reset_store_params, vec!["old.path"]);
        assert_eq!(Value::Object(done.export_params.clone()), json!({"e": "v"}));
        assert_eq!(done.subtasks, Some(sub));
    }

    #[test]
    fn error_is_not_retryable_unless_asked() {
        assert!(!Outcome::error("x").retryable);
        let f = Outcome::error("boom").retryable();
        assert!(f.retryable);
        assert_eq!(Outcome::from(f.clone()), Outcome::Error(f));
    }

    #[test]
    fn poll_keeps_state() {
        assert_eq!(Outcome::poll(5, json!({"n": 1})), Outcome::Poll { after_seconds: 5, state: json!({"n": 1}) });
    }
}
