//! An operator's settings as Digdag's database and mail operators read them: the task's
//! params with its `<family>:` map as defaults (`pg:`, `mail:`), where a connection setting
//! may also come from a `<family>.<key>` secret, which wins. Errors name the task.

use serde_json::Value;

use crate::{Failure, Object, Request, secrets};

pub struct Settings<'a> {
    pub req: &'a Request,
    /// The params, with the family's map as defaults.
    pub params: Object,
    family: &'static str,
}

impl<'a> Settings<'a> {
    /// `family` is the operator family (`pg`, `mail`): its map gives defaults and its
    /// secrets (`pg.password`) override connection settings.
    pub fn new(req: &'a Request, family: &'static str) -> Settings<'a> {
        Settings { req, params: crate::script::params_with_defaults(req, family), family }
    }

    /// A failure naming the task.
    pub fn fail(&self, message: impl std::fmt::Display) -> Failure {
        Failure::new(format!("{}: {message}", self.req.location()))
    }

    /// The param `key` as text (numbers and booleans as their text).
    pub fn param(&self, key: &str) -> Result<Option<String>, Failure> {
        match self.params.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(v @ (Value::Number(_) | Value::Bool(_))) => Ok(Some(v.to_string())),
            Some(other) => Err(self.fail(format!("'{key}' must be a string, got {other}"))),
        }
    }

    /// The `<family>.<key>` secret (trimmed), else the param `key`.
    pub fn setting(&self, key: &str) -> Result<Option<String>, Failure> {
        if let Some(s) = secrets::get(&format!("{}.{key}", self.family)) {
            return Ok(Some(s.trim().to_string()));
        }
        self.param(key)
    }

    /// A setting that must be there and not empty.
    pub fn required(&self, key: &str) -> Result<String, Failure> {
        self.setting(key)?.filter(|s| !s.trim().is_empty()).ok_or_else(|| self.fail(format!("'{key}' is required")))
    }

    /// A `true`/`false` setting.
    pub fn flag(&self, key: &str, default: bool) -> Result<bool, Failure> {
        match self.setting(key)?.as_deref().map(str::trim) {
            None => Ok(default),
            Some("true") => Ok(true),
            Some("false") => Ok(false),
            Some(other) => Err(self.fail(format!("'{key}' must be true or false, got {other}"))),
        }
    }

    /// A duration setting in seconds: a number, or Digdag's `30s`, `5m`, `1h 30m`.
    pub fn seconds(&self, key: &str, default: u64) -> Result<u64, Failure> {
        match self.setting(key)? {
            None => Ok(default),
            Some(text) => match text.trim().parse::<u64>() {
                Ok(s) => Ok(s),
                Err(_) => crate::duration::parse_seconds(&text)
                    .map(|s| s.max(0) as u64)
                    .map_err(|e| self.fail(format!("'{key}': {e}"))),
            },
        }
    }
}
