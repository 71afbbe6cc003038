//! `embulk>`: run an Embulk load (Digdag EmbulkOperatorFactory) with the `embulk` command,
//! through the host's `command` capability.
//!
//! `embulk>: load.yml` reads that file of the workspace and renders its `${...}` with the
//! task's params (Digdag's template engine, the `expressions` capability); `config:` (a map)
//! is the Embulk config itself instead. `${secret:KEY}` is replaced by granted secrets. The
//! result is written to a task-private file and run as `embulk run <file>`; a nested
//! `embulk:` map gives defaults. A non-zero exit fails the task with Digdag's
//! "Command failed with code N".

use spade_sdk::command::{self, Spec};
use spade_sdk::{Failure, Operator, Outcome, Request, Result, Value, expressions, json, script, secrets};

pub struct Embulk;

/// Largest config file read.
const MAX_CONFIG_BYTES: u64 = 4 << 20;

impl Operator for Embulk {
    fn run(req: Request) -> Result<Outcome> {
        script::run_command(&req, "embulk", || start(&req))
    }
}

fn start(req: &Request) -> Result<(Spec, Value)> {
    let at = |m: String| Failure::new(format!("{}: {m}", req.location()));
    let params = script::params_with_defaults(req, "embulk");
    let config = match (&req.command, params.get("config")) {
        (Value::String(file), _) if !file.trim().is_empty() => {
            let path = file.trim();
            let bytes = command::read_file(path, MAX_CONFIG_BYTES).map_err(|e| at(format!("embulk config {e}")))?;
            let text = String::from_utf8(bytes).map_err(|_| at(format!("{path} is not UTF-8 text")))?;
            expressions::render(&text, &params).map_err(|e| at(format!("{path}: {e}")))?
        }
        (Value::Null, Some(Value::Object(config))) => Value::Object(config.clone()).to_string(),
        _ => return Err(at("give the Embulk config file (`embulk>: load.yml`) or `config:` (a map)".into())),
    };
    let config = secrets::render(&config).map_err(at)?;
    let dir = command::task_dir(req)?;
    let file = format!("{dir}/load.yml");
    std::fs::write(command::workspace_path(&file), config.as_bytes())
        .map_err(|e| at(format!("cannot write {file}: {e}")))?;
    let env = script::env_map_only(&params).map_err(at)?;
    Ok((Spec { argv: vec!["embulk".into(), "run".into(), file], env, ..Spec::default() }, json!({ "dir": dir })))
}

spade_sdk::plugin!(Embulk, name = "spade-embulk", operators = ["embulk"]);

#[cfg(test)]
mod tests {
    use super::*;
    use spade_sdk::command::Finished;
    use spade_sdk::testing::{MockHost, request};

    #[test]
    fn renders_the_config_and_runs_embulk() {
        let mut host = MockHost {
            command: Some(Box::new(|_, _| Ok(Finished { exit_code: Some(0), ..Finished::default() }))),
            renderer: Some(Box::new(|t, scope| Ok(t.replace("${table}", scope["table"].as_str().unwrap())))),
            ..MockHost::default()
        };
        host.files.insert("load.yml".into(), b"out: {table: ${table}}".to_vec());
        let req = request("embulk").command(json!("load.yml")).param("table", json!("users")).build();
        assert_eq!(host.run::<Embulk>(req), Ok(Outcome::done().into()));
        let argv = &host.commands_started[0].argv;
        assert_eq!(argv[..2], ["embulk", "run"]);
        assert!(argv[2].ends_with("/load.yml"));
    }

    #[test]
    fn needs_a_config() {
        let mut host = MockHost::default();
        let err = host.run::<Embulk>(request("embulk").build()).unwrap_err();
        assert!(err.message.contains("Embulk config file"), "{err:?}");
    }
}
