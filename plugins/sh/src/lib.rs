//! `sh>`: run a shell script (Digdag ShOperatorFactory), through the host's `command`
//! capability: in the task's sandbox by default, never inside the engine.
//!
//! - The script (`sh>: ...`, with `${secret:KEY}` replaced) is written to a file of a
//!   task-private directory of the workspace and run as `<shell> <file>` from the workspace
//!   root; `shell:` (a list, default `["/bin/sh"]`) chooses the interpreter. Params in a
//!   nested `sh:` map are defaults for the task's params, as in Digdag.
//! - Every param whose name is a valid environment variable name is exported (text as is,
//!   other values as compact JSON), then `_env` (which may use `${secret:KEY}`).
//! - Output goes to the task log; a non-zero exit fails the task with Digdag's
//!   "Command failed with code N" and the script's last output lines.
//! - A script that outlasts the first call is polled (no wasm instance is held meanwhile).

use spade_sdk::command::{self, Spec};
use spade_sdk::{Failure, Operator, Outcome, Request, Result, Value, json, script, secrets};

pub struct Sh;

impl Operator for Sh {
    fn run(req: Request) -> Result<Outcome> {
        script::run_command(&req, "the script", || start(&req))
    }
}

fn start(req: &Request) -> Result<(Spec, Value)> {
    let at = |m: String| Failure::new(format!("{}: {m}", req.location()));
    let script = match &req.command {
        Value::String(s) => s.clone(),
        Value::Null => return Err(at("missing script; write it as `sh>: <command>`".into())),
        other => other.to_string(),
    };
    let script = secrets::render(&script).map_err(at)?;
    let params = script::params_with_defaults(req, "sh");
    let shell: Vec<String> = match params.get("shell") {
        None | Some(Value::Null) => vec!["/bin/sh".to_string()],
        Some(Value::Array(items)) if !items.is_empty() => items
            .iter()
            .map(|v| v.as_str().map(str::to_string).ok_or_else(|| at(format!("shell: {v} is not text"))))
            .collect::<Result<_>>()?,
        Some(Value::String(s)) => vec![s.clone()],
        Some(other) => return Err(at(format!("shell: must be a list like [\"/bin/bash\"], not {other}"))),
    };
    let env = command::script_env(&params).map_err(at)?;
    let dir = command::task_dir(req)?;
    let runner = format!("{dir}/runner.sh");
    std::fs::write(command::workspace_path(&runner), script.as_bytes())
        .map_err(|e| at(format!("cannot write the script to {runner}: {e}")))?;
    let mut argv = shell;
    argv.push(runner);
    Ok((Spec { argv, env, ..Spec::default() }, json!({ "dir": dir })))
}

spade_sdk::plugin!(Sh, name = "spade-sh", operators = ["sh"]);

#[cfg(test)]
mod tests {
    use super::*;
    use spade_sdk::command::Finished;
    use spade_sdk::testing::{MockHost, request};

    fn host(exit: i32) -> MockHost {
        MockHost {
            command: Some(Box::new(move |_, _| {
                Ok(Finished { exit_code: Some(exit), output_tail: "boom".into(), ..Finished::default() })
            })),
            ..MockHost::default()
        }
    }

    #[test]
    fn runs_the_script_file_with_params_as_env() {
        let mut h = host(0);
        let req = request("sh")
            .command(json!("echo $msg"))
            .param("msg", json!("hi"))
            .param("shell", json!(["/bin/bash", "-e"]))
            .build();
        assert_eq!(h.run::<Sh>(req), Ok(Outcome::done().into()));
        let spec = &h.commands_started[0];
        assert_eq!(spec.argv[..2], ["/bin/bash", "-e"]);
        assert!(spec.argv[2].starts_with(".digdag/tmp/sh-") && spec.argv[2].ends_with("/runner.sh"));
        assert!(spec.env.contains(&("msg".to_string(), "hi".to_string())));
    }

    #[test]
    fn a_failing_script_fails_the_task_like_digdag() {
        let mut h = host(3);
        let err = h.run::<Sh>(request("sh").command(json!("exit 3")).build()).unwrap_err();
        assert!(err.message.contains("Command failed with code 3") && err.message.contains("boom"), "{err:?}");
        assert!(err.retryable);
        let err = host(0).run::<Sh>(request("sh").build()).unwrap_err();
        assert!(err.message.contains("missing script"));
    }
}
