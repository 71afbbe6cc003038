//! Host capabilities as plain functions: [`log`], [`output`], [`secrets`], [`workflows`],
//! [`expressions`], [`engine`].
//!
//! Each function is a thin typed wrapper over one WIT import. A component only imports the
//! interfaces whose functions it calls (unused imports are dropped when the component is
//! made), and the host refuses plugins that import capabilities they were not granted, so
//! call only what the operator needs: `echo>` must never touch [`engine`].
//!
//! Outside wasm (native `cargo test`) the calls go to the thread's
//! [`testing::MockHost`](crate::testing::MockHost) instead of the host.

#[cfg(not(target_arch = "wasm32"))]
use crate::testing::with_mock;

/// Capability: the task log. Always granted.
pub mod log {
    /// Severity of a task log line.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
    pub enum Level {
        Trace,
        Debug,
        Info,
        Warn,
        Error,
    }

    /// Append one line to the task log (the host caps the total size per call).
    pub fn write(level: Level, message: impl AsRef<str>) {
        #[cfg(target_arch = "wasm32")]
        {
            use crate::bindings::spade::operator::log as wit;
            let level = match level {
                Level::Trace => wit::Level::Trace,
                Level::Debug => wit::Level::Debug,
                Level::Info => wit::Level::Info,
                Level::Warn => wit::Level::Warn,
                Level::Error => wit::Level::Error,
            };
            wit::write(level, message.as_ref());
        }
        #[cfg(not(target_arch = "wasm32"))]
        super::with_mock("log", |h| h.logs.push((level, message.as_ref().to_string())));
    }

    pub fn trace(message: impl AsRef<str>) {
        write(Level::Trace, message)
    }
    pub fn debug(message: impl AsRef<str>) {
        write(Level::Debug, message)
    }
    pub fn info(message: impl AsRef<str>) {
        write(Level::Info, message)
    }
    pub fn warn(message: impl AsRef<str>) {
        write(Level::Warn, message)
    }
    pub fn error(message: impl AsRef<str>) {
        write(Level::Error, message)
    }
}

/// Capability: user-facing output (what `echo>` prints). Always granted.
pub mod output {
    /// Emit `line` as one line of output: spade's standard output in local mode, the task
    /// log in server mode.
    pub fn print(line: impl AsRef<str>) {
        #[cfg(target_arch = "wasm32")]
        crate::bindings::spade::operator::output::print(line.as_ref());
        #[cfg(not(target_arch = "wasm32"))]
        super::with_mock("output", |h| h.printed.push(line.as_ref().to_string()));
    }
}

/// Capability: secrets. Only keys granted to the plugin are visible.
pub mod secrets {
    /// The secret `key`, or `None` when it is not set or not granted to this plugin.
    pub fn get(key: &str) -> Option<String> {
        #[cfg(target_arch = "wasm32")]
        return crate::bindings::spade::operator::secrets::get(key);
        #[cfg(not(target_arch = "wasm32"))]
        return super::with_mock("secrets", |h| h.secrets.get(key).cloned());
    }

    /// `text` with every `${secret:KEY}` replaced by the secret's value, as Digdag's
    /// operators do for URIs, headers and commands (the host's `${...}` evaluation leaves
    /// these untouched for the operator). A key that is not set or not granted is an
    /// error naming it; text without `${secret:` never touches the capability.
    pub fn render(text: &str) -> Result<String, String> {
        const OPEN: &str = "${secret:";
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        while let Some(at) = rest.find(OPEN) {
            out.push_str(&rest[..at]);
            let after = &rest[at + OPEN.len()..];
            let Some(end) = after.find('}') else {
                return Err(format!("unclosed `${{secret:` in {text:?}"));
            };
            let key = after[..end].trim();
            if key.is_empty() {
                return Err("`${secret:}` names no key".to_string());
            }
            match get(key) {
                Some(value) => out.push_str(&value),
                None => {
                    return Err(format!(
                        "secret {key} is not set, or not granted to this plugin (grant it in the project's \
                         spade.yml, e.g. `grants: {{<plugin>: {{secrets: [{key}]}}}}`)"
                    ));
                }
            }
            rest = &after[end + 1..];
        }
        out.push_str(rest);
        Ok(out)
    }
}

/// Capability: read workflow definitions of the task's project (for `call>`).
pub mod workflows {
    use crate::Object;

    /// Load the workflow file `path` (relative to the calling workflow's directory; `.dig`
    /// is appended when missing) as a task config object. Errors name the file and reason.
    pub fn load(path: &str) -> Result<Object, String> {
        #[cfg(target_arch = "wasm32")]
        let text = crate::bindings::spade::operator::workflows::load(path)?;
        #[cfg(not(target_arch = "wasm32"))]
        let text = super::with_mock("workflows", |h| match h.workflows.get(path) {
            Some(r) => r.clone().map(|o| serde_json::Value::Object(o).to_string()),
            None => Err(format!("workflow file {path} not found (MockHost.workflows has no entry)")),
        })?;
        match serde_json::from_str::<serde_json::Value>(&text) {
            Ok(serde_json::Value::Object(o)) => Ok(o),
            Ok(other) => Err(format!("{path}: the host returned a {} instead of a task config object", kind(&other))),
            Err(e) => Err(format!("{path}: the host returned malformed JSON: {e}")),
        }
    }

    fn kind(v: &serde_json::Value) -> &'static str {
        match v {
            serde_json::Value::Null => "null",
            serde_json::Value::Bool(_) => "boolean",
            serde_json::Value::Number(_) => "number",
            serde_json::Value::String(_) => "string",
            serde_json::Value::Array(_) => "list",
            serde_json::Value::Object(_) => "object",
        }
    }
}

/// Capability: Digdag's `${...}` template language (JavaScript with moment.js, in the
/// task's time zone). Used by `param_eval>`.
pub mod expressions {
    use crate::Object;

    /// Render `template` (text with `${...}` parts) with `scope` as the variables. Errors
    /// name the failing expression.
    pub fn render(template: &str, scope: &Object) -> Result<String, String> {
        #[cfg(target_arch = "wasm32")]
        {
            let scope = serde_json::Value::Object(scope.clone()).to_string();
            crate::bindings::spade::operator::expressions::render(template, &scope)
        }
        #[cfg(not(target_arch = "wasm32"))]
        super::with_mock("expressions", |h| match h.renderer.as_mut() {
            Some(render) => render(template, scope),
            None => Err("no expression engine in this MockHost (set MockHost.renderer)".into()),
        })
    }
}

/// Capability: start and watch attempts of other workflows (for `require>`). Only plugins
/// granted `engine` may import it.
pub mod engine {
    use serde::Deserialize;

    use crate::Object;

    /// Where an attempt stands.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum AttemptState {
        Running,
        Success,
        Failure,
    }

    /// An attempt found or started by [`start_or_find`].
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct AttemptRef {
        pub attempt_id: i64,
        pub session_id: i64,
        pub state: AttemptState,
    }

    /// What to do when the session already has a finished attempt.
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
    #[serde(rename_all = "lowercase")]
    pub enum RerunOn {
        /// Keep it (the default).
        #[default]
        None,
        /// Start a new attempt if it failed.
        Failed,
        /// Always start a new attempt.
        All,
    }

    impl RerunOn {
        pub fn as_str(self) -> &'static str {
            match self {
                RerunOn::None => "none",
                RerunOn::Failed => "failed",
                RerunOn::All => "all",
            }
        }
    }

    /// Which attempt to find or start.
    #[derive(Clone, Debug, PartialEq)]
    pub struct StartRequest {
        /// Target project; `None` = the caller's project.
        pub project_name: Option<String>,
        pub workflow_name: String,
        /// ISO 8601 session time of the target session.
        pub session_time: String,
        /// Attempt name to start or find; `None` = the session's first attempt.
        pub attempt_name: Option<String>,
        /// Params of a newly started attempt.
        pub params: Object,
        pub rerun_on: RerunOn,
    }

    /// Find the attempt that satisfies `req`, starting one when needed.
    pub fn start_or_find(req: &StartRequest) -> Result<AttemptRef, String> {
        #[cfg(target_arch = "wasm32")]
        {
            use crate::bindings::spade::operator::engine as wit;
            let wire = wit::StartRequest {
                project_name: req.project_name.clone(),
                workflow_name: req.workflow_name.clone(),
                session_time: req.session_time.clone(),
                attempt_name: req.attempt_name.clone(),
                params: serde_json::Value::Object(req.params.clone()).to_string(),
                rerun_on: req.rerun_on.as_str().to_string(),
            };
            wit::start_or_find(&wire).map(lift)
        }
        #[cfg(not(target_arch = "wasm32"))]
        super::with_mock("engine", |h| {
            h.engine_calls.push(crate::testing::EngineCall::StartOrFind(req.clone()));
            match h.engine.as_mut() {
                Some(engine) => engine(&crate::testing::EngineCall::StartOrFind(req.clone())),
                None => Err("no engine in this MockHost (set MockHost.engine)".into()),
            }
        })
    }

    /// The current state of attempt `attempt_id`.
    pub fn status(attempt_id: i64) -> Result<AttemptRef, String> {
        #[cfg(target_arch = "wasm32")]
        return crate::bindings::spade::operator::engine::status(attempt_id).map(lift);
        #[cfg(not(target_arch = "wasm32"))]
        super::with_mock("engine", |h| {
            h.engine_calls.push(crate::testing::EngineCall::Status(attempt_id));
            match h.engine.as_mut() {
                Some(engine) => engine(&crate::testing::EngineCall::Status(attempt_id)),
                None => Err("no engine in this MockHost (set MockHost.engine)".into()),
            }
        })
    }

    #[cfg(target_arch = "wasm32")]
    fn lift(r: crate::bindings::spade::operator::engine::AttemptRef) -> AttemptRef {
        use crate::bindings::spade::operator::engine::AttemptState as W;
        AttemptRef {
            attempt_id: r.attempt_id,
            session_id: r.session_id,
            state: match r.state {
                W::Running => AttemptState::Running,
                W::Success => AttemptState::Success,
                W::Failure => AttemptState::Failure,
            },
        }
    }
}

/// Capability: the project's parameter server (Digdag's `param_get>`/`param_set>`). Only
/// plugins granted `params` may import it.
pub mod params {
    /// The value of `key`, or `None` when it was never set or has expired.
    pub fn get(key: &str) -> Result<Option<String>, String> {
        #[cfg(target_arch = "wasm32")]
        return crate::bindings::spade::operator::params::get(key);
        #[cfg(not(target_arch = "wasm32"))]
        return super::with_mock("params", |h| Ok(h.params.get(key).cloned()));
    }

    /// Set `key` to `value`.
    pub fn set(key: &str, value: &str) -> Result<(), String> {
        #[cfg(target_arch = "wasm32")]
        return crate::bindings::spade::operator::params::set(key, value);
        #[cfg(not(target_arch = "wasm32"))]
        return super::with_mock("params", |h| {
            h.params.insert(key.to_string(), value.to_string());
            Ok(())
        });
    }
}
