//! Capability: run commands outside wasm (a script's interpreter), in the executor and under
//! the limits the host chose for the task. Only plugins granted `command` (and asking for it
//! in their manifest, `command = true`) may import it.
//!
//! A command outlives the call that started it, so a long script holds no wasm instance:
//! [`run_or_resume`] starts it on the first call, waits a little, and otherwise returns a
//! poll outcome carrying its handle; the next call waits on it again. That is the whole
//! protocol `sh>`, `py>` and `rb>` use:
//!
//! ```ignore
//! match command::run_or_resume(&req, || Ok((Spec::new(["/bin/sh", "-c", "make"]), json!({}))))? {
//!     Progress::Pending(poll) => Ok(poll),
//!     Progress::Finished { finished, .. } if finished.success() => Ok(Outcome::done().into()),
//!     Progress::Finished { finished, .. } => Err(Failure::new(finished.describe())),
//! }
//! ```

use serde_json::{Value, json};

use crate::{Failure, Outcome, Request};

/// What to run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Spec {
    /// Program and arguments; the program is looked up on the executor's PATH.
    pub argv: Vec<String>,
    /// Working directory relative to the workspace (`""`: its root).
    pub cwd: String,
    /// Environment variables the command sees (besides PATH, HOME, LANG, TMPDIR).
    pub env: Vec<(String, String)>,
    /// A workspace file to use as standard input.
    pub stdin_file: Option<String>,
    /// A program to run instead when `argv[0]` is not installed (`python3` for `python`).
    /// Used by [`run_or_resume`]; the host never sees it.
    pub fallback_program: Option<String>,
}

impl Spec {
    pub fn new<S: Into<String>>(argv: impl IntoIterator<Item = S>) -> Spec {
        Spec { argv: argv.into_iter().map(Into::into).collect(), ..Spec::default() }
    }

    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Spec {
        self.env.push((key.into(), value.into()));
        self
    }
}

/// How a command ended.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Finished {
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    /// Why the host stopped it (a limit, with its name), else empty.
    pub reason: String,
    /// Its last output lines (at most 4 KiB).
    pub output_tail: String,
}

impl Finished {
    /// Exited with status 0.
    pub fn success(&self) -> bool {
        self.exit_code == Some(0) && self.reason.is_empty()
    }

    /// `exited with code 1`, `was killed by signal 9`, and the host's reason when it
    /// stopped the command.
    pub fn describe(&self) -> String {
        let how = match (self.exit_code, self.signal) {
            (Some(code), _) => format!("exited with code {code}"),
            (None, Some(sig)) => format!("was killed by signal {sig}"),
            (None, None) => "ended".to_string(),
        };
        if self.reason.is_empty() { how } else { format!("{how}: {}", self.reason) }
    }
}

/// Where a command stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Status {
    Running,
    Finished(Finished),
}

/// Start a command; returns its handle.
pub fn start(spec: &Spec) -> Result<String, String> {
    #[cfg(target_arch = "wasm32")]
    {
        use crate::bindings::spade::operator::command as wit;
        wit::start(&wit::CommandSpec {
            argv: spec.argv.clone(),
            cwd: spec.cwd.clone(),
            env: spec.env.clone(),
            stdin_file: spec.stdin_file.clone(),
        })
    }
    #[cfg(not(target_arch = "wasm32"))]
    crate::testing::with_mock("command", |h| {
        h.commands_started.push(spec.clone());
        Ok(format!("mock-{}", h.commands_started.len() - 1))
    })
}

/// Wait up to `timeout_ms` for the command to finish; its output meanwhile goes to the task log.
pub fn wait(handle: &str, timeout_ms: u32) -> Result<Status, String> {
    #[cfg(target_arch = "wasm32")]
    {
        use crate::bindings::spade::operator::command as wit;
        Ok(match wit::wait(handle, timeout_ms)? {
            wit::Status::Running => Status::Running,
            wit::Status::Finished(f) => Status::Finished(Finished {
                exit_code: f.exit_code,
                signal: f.signal,
                reason: f.reason,
                output_tail: f.output_tail,
            }),
        })
    }
    #[cfg(not(target_arch = "wasm32"))]
    crate::testing::with_mock("command", |h| {
        let _ = timeout_ms;
        let index: usize = handle
            .strip_prefix("mock-")
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| format!("unknown command handle {handle:?}"))?;
        let spec =
            h.commands_started.get(index).cloned().ok_or_else(|| format!("unknown command handle {handle:?}"))?;
        match h.command.as_mut() {
            Some(run) => run(&spec, &mut h.files).map(Status::Finished),
            None => Err("no command runner in this MockHost (set MockHost.command)".into()),
        }
    })
}

/// Stop a command and forget its handle.
pub fn cancel(handle: &str) {
    #[cfg(target_arch = "wasm32")]
    crate::bindings::spade::operator::command::cancel(handle);
    #[cfg(not(target_arch = "wasm32"))]
    crate::testing::with_mock("command", |h| h.commands_cancelled.push(handle.to_string()));
}

/// Read a regular file of the workspace a command wrote, at most `max_bytes`. Links, FIFOs,
/// devices and larger files are refused with a message.
pub fn read_file(path: &str, max_bytes: u64) -> Result<Vec<u8>, String> {
    #[cfg(target_arch = "wasm32")]
    return crate::bindings::spade::operator::command::read_file(path, max_bytes);
    #[cfg(not(target_arch = "wasm32"))]
    crate::testing::with_mock("command", |h| match h.files.get(path) {
        Some(bytes) if bytes.len() as u64 > max_bytes => Err(format!("{path} is larger than {max_bytes} bytes")),
        Some(bytes) => Ok(bytes.clone()),
        None => Err(format!("{path}: it does not exist")),
    })
}

/// Where [`run_or_resume`] left the command.
#[derive(Debug)]
pub enum Progress {
    /// Still running: return this poll outcome (it carries the handle).
    Pending(Outcome),
    /// It ended; `data` is what the operator stored when it started it.
    Finished { finished: Finished, data: Value },
}

/// The poll-state key [`run_or_resume`] keeps its command under.
const STATE_KEY: &str = "command";
/// How long the first call waits for the command before answering with a poll: most
/// scripts end well within it, and then the task takes one call.
const FIRST_WAIT_MS: u32 = 2_000;
/// How long later calls wait.
const LATER_WAIT_MS: u32 = 500;

/// Seconds until the next call after `polls` polls: every second at first, then slower,
/// at most every 10 s (Digdag's `sh>` polls every 10 s).
pub fn poll_interval(polls: u32) -> u32 {
    match polls {
        0..=4 => 1,
        5..=9 => 2,
        10..=19 => 5,
        _ => 10,
    }
}

/// Start the command `start` describes (first call of the task), or wait on the one the
/// previous call started (its handle is in the poll state). `start` also returns data the
/// operator needs when the command ends (a file name); it comes back in
/// [`Progress::Finished`]. If the host no longer knows the command (spade restarted while
/// it ran; its sandbox died with the old process), it is started again, with a warning.
pub fn run_or_resume(
    req: &Request,
    start_spec: impl FnOnce() -> Result<(Spec, Value), Failure>,
) -> Result<Progress, Failure> {
    let pending = |handle: String, data: Value, polls: u32| {
        let state = json!({ STATE_KEY: { "handle": handle, "data": data, "polls": polls + 1 } });
        Progress::Pending(Outcome::poll(poll_interval(polls), state))
    };
    if let Some(saved) = req.state.as_ref().and_then(|s| s.get(STATE_KEY)) {
        let handle = saved.get("handle").and_then(Value::as_str).unwrap_or_default().to_string();
        let data = saved.get("data").cloned().unwrap_or(Value::Null);
        let polls = saved.get("polls").and_then(Value::as_u64).unwrap_or(0) as u32;
        match wait(&handle, LATER_WAIT_MS) {
            Ok(Status::Finished(finished)) => return Ok(Progress::Finished { finished, data }),
            Ok(Status::Running) => return Ok(pending(handle, data, polls)),
            Err(lost) => crate::log::warn(format!("{lost}; starting the command again")),
        }
    }
    let (mut spec, data) = start_spec()?;
    let at = |m: String| Failure::new(format!("{}: {m}", req.location()));
    let handle = match (start(&spec), spec.fallback_program.take()) {
        (Err(e), Some(other)) if e.contains("command not found") => {
            spec.argv[0] = other;
            start(&spec).map_err(|e2| at(format!("{e}; and {e2}")))?
        }
        (started, _) => started.map_err(at)?,
    };
    match wait(&handle, FIRST_WAIT_MS).map_err(at)? {
        Status::Finished(finished) => Ok(Progress::Finished { finished, data }),
        Status::Running => Ok(pending(handle, data, 0)),
    }
}

/// The environment Digdag's script operators give a command: every param whose name is a
/// valid variable name (text as is, anything else as compact JSON), then the task's `_env`
/// map, whose values may use `${secret:KEY}` (only keys granted to the plugin).
pub fn script_env(params: &crate::Object) -> Result<Vec<(String, String)>, String> {
    let mut env: Vec<(String, String)> = Vec::new();
    let mut set = |k: &str, v: String| match env.iter_mut().find(|(key, _)| key == k) {
        Some(slot) => slot.1 = v,
        None => env.push((k.to_string(), v)),
    };
    for (key, value) in params {
        if valid_env_key(key) {
            set(key, text_of(value));
        }
    }
    match params.get("_env") {
        None | Some(Value::Null) => {}
        Some(Value::Object(vars)) => {
            for (key, value) in vars {
                if !valid_env_key(key) {
                    return Err(format!("_env: {key:?} is not a valid environment variable name"));
                }
                let text = crate::secrets::render(&text_of(value)).map_err(|e| format!("_env.{key}: {e}"))?;
                set(key, text);
            }
        }
        Some(other) => return Err(format!("_env must be a map of variable names to values, not {other}")),
    }
    Ok(env)
}

fn text_of(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Digdag's `CommandOperators.isValidEnvKey`: `[a-zA-Z_][a-zA-Z0-9_]*`.
pub fn valid_env_key(key: &str) -> bool {
    let mut chars = key.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// A directory of the workspace private to one run of one task, for the files a script
/// operator hands its command (`.digdag/tmp/<operator>-<attempt>-<task>-<retry>`, relative
/// to the workspace root). Created empty.
pub fn task_dir(req: &Request) -> Result<String, Failure> {
    // FNV-1a of the task name: short, stable, and distinct for the tasks of one attempt.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in req.task_name.bytes() {
        hash = (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    let dir = format!(".digdag/tmp/{}-{}-{hash:016x}-{}", req.operator, req.attempt_id, req.retry_count);
    let at = workspace_path(&dir);
    let _ = std::fs::remove_dir_all(&at);
    std::fs::create_dir_all(&at)
        .map_err(|e| Failure::new(format!("{}: cannot create {dir} in the workspace: {e}", req.location())))?;
    Ok(dir)
}

/// Where a workspace-relative path is for this plugin's own file access: the workspace is
/// the plugin's root directory (natively, in tests: a directory under the system's temp dir).
pub fn workspace_path(rel: &str) -> std::path::PathBuf {
    #[cfg(target_arch = "wasm32")]
    return std::path::Path::new("/").join(rel);
    #[cfg(not(target_arch = "wasm32"))]
    std::env::temp_dir().join(format!("spade-sdk-workspace-{}", std::process::id())).join(rel)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{MockHost, request};
    use crate::{Operator, Result as SdkResult};

    #[test]
    fn env_from_params_and_env_map() {
        struct Env;
        impl Operator for Env {
            fn run(req: Request) -> SdkResult<Outcome> {
                let env = script_env(&req.params).map_err(Failure::new)?;
                Ok(Outcome::done().store("env", serde_json::to_value(env).unwrap()).into())
            }
        }
        let mut host = MockHost::default();
        host.secrets.insert("db.pass".into(), "s3cret".into());
        let req = request("sh")
            .param("name", json!("x"))
            .param("n", json!(3))
            .param("obj", json!({"a": [1, 2]}))
            .param("bad-key", json!("skipped"))
            .param("_env", json!({"PASS": "${secret:db.pass}", "name": "over"}))
            .build();
        let out = host.run::<Env>(req).unwrap();
        let env = &out.as_done().unwrap().store_params["env"];
        // `_env` is a valid variable name too: Digdag exports it as JSON like any param.
        let env_json = r#"{"PASS":"${secret:db.pass}","name":"over"}"#;
        assert_eq!(
            env,
            &json!([["name", "over"], ["n", "3"], ["obj", "{\"a\":[1,2]}"], ["_env", env_json], ["PASS", "s3cret"]])
        );
        let req = request("sh").param("_env", json!({"X": "${secret:missing}"})).build();
        assert!(host.run::<Env>(req).unwrap_err().message.contains("secret missing"));
    }

    #[test]
    fn polls_slow_down() {
        assert_eq!(poll_interval(0), 1);
        assert_eq!(poll_interval(7), 2);
        assert_eq!(poll_interval(100), 10);
    }
}
