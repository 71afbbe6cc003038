//! Script operators that call a function of the task's code through a runner (Digdag's
//! `py>` and `rb>`): the params go in as `input.json`, the runner calls the function with
//! params as arguments and writes `output.json` (`store_params`, `export_params`,
//! `subtask_config`, `error`), which becomes the task's result. The runners are
//! [`PYTHON_RUNNER`] and [`RUBY_RUNNER`]; a third-party operator may bring its own.

use serde_json::{Value, json};

use crate::command::{self, Progress, Spec};
use crate::{Failure, Object, Outcome, Request, Result};

/// spade's Python runner (`runner.py`), written from Digdag's runner protocol.
pub const PYTHON_RUNNER: &str = include_str!("runner.py");
/// spade's Ruby runner (`runner.rb`).
pub const RUBY_RUNNER: &str = include_str!("runner.rb");

/// Largest `output.json` read back.
const MAX_OUTPUT_JSON: u64 = 64 << 20;

/// The task's params with its nested `key:` map as defaults (Digdag's
/// `config.mergeDefault(config.getNestedOrGetEmpty(key))`: `sh:`, `py:`, `rb:`, `embulk:`).
pub fn params_with_defaults(req: &Request, key: &str) -> Object {
    let mut params = req.params.clone();
    if let Some(Value::Object(defaults)) = req.params.get(key) {
        for (k, v) in defaults {
            params.entry(k.clone()).or_insert_with(|| v.clone());
        }
    }
    params
}

/// Runs (or keeps polling) the command `start` describes, whose data holds the task
/// directory it writes its files to (`{"dir": ...}`), which is removed once it ends. Done
/// when it exits 0; otherwise Digdag's "Command failed with code N" (or, when spade stopped
/// it, what `program` did and why), with its last output lines, retryable as in Digdag.
pub fn run_command(
    req: &Request,
    program: &str,
    start: impl FnOnce() -> Result<(Spec, Value), Failure>,
) -> Result<Outcome> {
    let (finished, data) = match command::run_or_resume(req, start)? {
        Progress::Pending(poll) => return Ok(poll),
        Progress::Finished { finished, data } => (finished, data),
    };
    if let Some(dir) = data.get("dir").and_then(Value::as_str) {
        let _ = std::fs::remove_dir_all(command::workspace_path(dir));
    }
    if finished.success() {
        return Ok(Outcome::done().into());
    }
    let mut message = match finished.exit_code {
        Some(code) if finished.reason.is_empty() => format!("Command failed with code {code}"),
        _ => format!("{program} {}", finished.describe()),
    };
    if !finished.output_tail.is_empty() {
        message.push_str("; its output ends with:\n");
        message.push_str(&finished.output_tail);
    }
    Err(Failure::new(format!("{}: {message}", req.location())).retryable())
}

/// The environment of `py>`, `rb>` and `embulk>`: only `_env` (Digdag's privileged
/// variables, `${secret:KEY}` allowed), not every param as `sh>` has.
pub fn env_map_only(params: &Object) -> Result<Vec<(String, String)>, String> {
    let mut env_params = Object::new();
    if let Some(e) = params.get("_env") {
        env_params.insert("_env".into(), e.clone());
    }
    Ok(command::script_env(&env_params)?.into_iter().filter(|(k, _)| k != "_env").collect())
}

/// One runner-based operator.
pub struct Runner {
    /// `Python`, `Ruby`: in messages.
    pub language: &'static str,
    /// The param of nested defaults (`py`, `rb`), as Digdag's `mergeDefault`.
    pub defaults_key: &'static str,
    /// The param choosing the interpreter (`python`, `ruby`): text or a list.
    pub interpreter_key: &'static str,
    /// The interpreter when the param is absent, and the one to try when that is not
    /// installed (`python`, then `python3`).
    pub interpreter: &'static str,
    pub fallback_interpreter: Option<&'static str>,
    /// The runner's file name and source.
    pub runner_file: &'static str,
    pub runner_source: &'static str,
    /// Arguments between the interpreter and the runner file (Ruby's `-I . -r feature --`).
    pub interpreter_args: fn(&Object) -> Result<Vec<String>, String>,
}

impl Runner {
    /// Run (or keep polling) the task.
    pub fn run(&self, req: &Request) -> Result<Outcome> {
        let progress = command::run_or_resume(req, || self.start(req))?;
        let (finished, data) = match progress {
            Progress::Pending(poll) => return Ok(poll),
            Progress::Finished { finished, data } => (finished, data),
        };
        let dir = data.get("dir").and_then(Value::as_str).unwrap_or_default().to_string();
        let result = self.finish(req, &dir, &finished);
        let _ = std::fs::remove_dir_all(command::workspace_path(&dir));
        result
    }

    fn start(&self, req: &Request) -> Result<(Spec, Value)> {
        let at = |m: String| Failure::new(format!("{}: {m}", req.location()));
        let params = params_with_defaults(req, self.defaults_key);
        let (mut argv, fallback) = match params.get(self.interpreter_key) {
            None | Some(Value::Null) => (vec![self.interpreter.to_string()], self.fallback_interpreter),
            Some(Value::String(s)) if !s.is_empty() => (vec![s.clone()], None),
            Some(Value::Array(items)) if !items.is_empty() => (
                items
                    .iter()
                    .map(|v| v.as_str().map(str::to_string))
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| at(format!("{}: every item must be text", self.interpreter_key)))?,
                None,
            ),
            Some(other) => return Err(at(format!("Invalid {}: {other}", self.interpreter_key))),
        };
        argv.extend((self.interpreter_args)(&params).map_err(at)?);
        let dir = command::task_dir(req)?;
        let (script, call) = match &req.command {
            Value::String(c) if !c.trim().is_empty() => (self.runner_source.to_string(), Some(c.trim().to_string())),
            Value::Null => match params.get("script") {
                Some(Value::String(s)) => (s.clone(), None),
                _ => {
                    return Err(at(format!(
                        "missing the {} method to call; write it as `{}>: module.function` (or give `script:`)",
                        self.language, req.operator
                    )));
                }
            },
            other => return Err(at(format!("{}> needs a method name, not {other}", req.operator))),
        };
        let write = |name: &str, bytes: &[u8]| {
            let rel = format!("{dir}/{name}");
            std::fs::write(command::workspace_path(&rel), bytes)
                .map(|_| rel.clone())
                .map_err(|e| at(format!("cannot write {rel}: {e}")))
        };
        let input = write("input.json", json!({ "params": params }).to_string().as_bytes())?;
        let runner = write(self.runner_file, script.as_bytes())?;
        let output = format!("{dir}/output.json");
        argv.push(runner);
        argv.extend(call);
        argv.push(input);
        argv.push(output);
        let env = env_map_only(&params).map_err(at)?;
        let spec = Spec { argv, env, fallback_program: fallback.map(str::to_string), ..Spec::default() };
        Ok((spec, json!({ "dir": dir })))
    }

    fn finish(&self, req: &Request, dir: &str, finished: &command::Finished) -> Result<Outcome> {
        let output_path = format!("{dir}/output.json");
        let output = command::read_file(&output_path, MAX_OUTPUT_JSON);
        let parsed: Option<Object> = output.as_ref().ok().and_then(|bytes| serde_json::from_slice(bytes).ok());
        if !finished.success() {
            let mut reason = match finished.exit_code {
                Some(code) => format!("{} command failed with code {code}", self.language),
                None => format!("{} command {}", self.language, finished.describe()),
            };
            if !finished.reason.is_empty() && finished.exit_code.is_some() {
                reason.push_str(": ");
                reason.push_str(&finished.reason);
            }
            match parsed.as_ref().and_then(|o| o.get("error")) {
                Some(error) => {
                    if let Some(m) = error.get("message").and_then(Value::as_str) {
                        reason.push_str(": ");
                        reason.push_str(m);
                    }
                    if let Some(c) = error.get("class").and_then(Value::as_str) {
                        reason.push_str(&format!(" ({c})"));
                    }
                }
                None if !finished.output_tail.is_empty() => {
                    reason.push_str("; its output ends with:\n");
                    reason.push_str(&finished.output_tail);
                }
                None => {}
            }
            return Err(Failure::new(format!("{}: {reason}", req.location())).retryable());
        }
        let out = match (output, parsed) {
            (Ok(_), Some(out)) => out,
            (Ok(_), None) => {
                return Err(Failure::new(format!(
                    "{}: {output_path} is not a JSON object; the {} runner did not finish properly",
                    req.location(),
                    self.language
                )));
            }
            (Err(e), _) => {
                return Err(Failure::new(format!(
                    "{}: output.json could not be read ({e}); the {} code may have removed or replaced it",
                    req.location(),
                    self.language
                )));
            }
        };
        let object = |key: &str| -> Result<Object> {
            match out.get(key) {
                None | Some(Value::Null) => Ok(Object::new()),
                Some(Value::Object(o)) => Ok(o.clone()),
                Some(other) => {
                    Err(Failure::new(format!("{}: {key} in output.json must be a map, not {other}", req.location())))
                }
            }
        };
        let mut done = Outcome::done().store_all(object("store_params")?);
        for (k, v) in object("export_params")? {
            done = done.export(k, v);
        }
        let subtasks = object("subtask_config")?;
        if !subtasks.is_empty() {
            done = done.subtasks(subtasks);
        }
        Ok(done.into())
    }
}

/// `py>` (Digdag PyOperatorFactory).
pub fn python() -> Runner {
    Runner {
        language: "Python",
        defaults_key: "py",
        interpreter_key: "python",
        interpreter: "python",
        fallback_interpreter: Some("python3"),
        runner_file: "runner.py",
        runner_source: PYTHON_RUNNER,
        interpreter_args: |_| Ok(Vec::new()),
    }
}

/// `rb>` (Digdag RbOperatorFactory): `ruby -I <workspace> [-r <require>] -- runner.rb ...`.
pub fn ruby() -> Runner {
    Runner {
        language: "Ruby",
        defaults_key: "rb",
        interpreter_key: "ruby",
        interpreter: "ruby",
        fallback_interpreter: None,
        runner_file: "runner.rb",
        runner_source: RUBY_RUNNER,
        interpreter_args: |params| {
            let mut args = vec!["-I".to_string(), ".".to_string()];
            match params.get("require") {
                None | Some(Value::Null) => {}
                Some(Value::String(feature)) => {
                    args.push("-r".into());
                    args.push(feature.clone());
                }
                Some(other) => return Err(format!("require: must be the name of a file to load, not {other}")),
            }
            args.push("--".into());
            Ok(args)
        },
    }
}
