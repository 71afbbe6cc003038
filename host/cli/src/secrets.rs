//! `spade secrets`: the secrets of local runs (like `digdag secrets --local`): list the keys,
//! set and delete values. Values are never printed.

use std::io::{BufRead, IsTerminal, Write};
use std::process::ExitCode;

use anyhow::{Context, bail};

use crate::config::{local_secrets_path, read_secrets, write_secrets};

#[derive(clap::Args)]
#[command(after_help = "The file is $SPADE_SECRETS or ~/.config/spade/secrets.yml (rewritten by --set/--delete). \
                        A plugin reads only the keys granted to it in the project's spade.yml.")]
pub struct SecretsArgs {
    /// Set a secret: KEY=VALUE, KEY=@FILE (the file's contents), or KEY alone (the value is
    /// read from standard input, one line). Repeatable.
    #[arg(long, value_name = "KEY[=VALUE|=@FILE]")]
    pub set: Vec<String>,
    /// Delete a secret. Repeatable.
    #[arg(long, value_name = "KEY")]
    pub delete: Vec<String>,
}

fn check_key(key: &str) -> anyhow::Result<()> {
    let ok = !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if !ok {
        bail!("invalid secret key {key:?}: use letters, digits, `.`, `_` and `-` (e.g. slack.token)");
    }
    Ok(())
}

pub fn secrets(args: SecretsArgs) -> anyhow::Result<ExitCode> {
    let path = local_secrets_path().context("no secrets file: set SPADE_SECRETS or HOME")?;
    let mut secrets = read_secrets(&path)?;
    if args.set.is_empty() && args.delete.is_empty() {
        let mut keys: Vec<&String> = secrets.keys().collect();
        keys.sort();
        for k in keys {
            println!("{k}");
        }
        eprintln!("{} secret(s) in {}", secrets.len(), path.display());
        return Ok(ExitCode::SUCCESS);
    }
    for spec in &args.set {
        let (key, value) = match spec.split_once('=') {
            Some((k, v)) => match v.strip_prefix('@') {
                Some(file) => {
                    (k, std::fs::read_to_string(file).with_context(|| format!("--set {k}=@{file}: reading {file}"))?)
                }
                None => (k, v.to_string()),
            },
            None => {
                let stdin = std::io::stdin();
                if stdin.is_terminal() {
                    eprint!("value of {spec}: ");
                    let _ = std::io::stderr().flush();
                }
                let mut line = String::new();
                stdin.lock().read_line(&mut line).with_context(|| format!("reading the value of {spec}"))?;
                (spec.as_str(), line.trim_end_matches(['\n', '\r']).to_string())
            }
        };
        check_key(key)?;
        secrets.insert(key.to_string(), value);
        eprintln!("set {key}");
    }
    for key in &args.delete {
        if secrets.remove(key).is_some() {
            eprintln!("deleted {key}");
        } else {
            eprintln!("no secret {key}; nothing to delete");
        }
    }
    write_secrets(&path, &secrets)?;
    Ok(ExitCode::SUCCESS)
}
