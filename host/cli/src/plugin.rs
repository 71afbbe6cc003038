//! `spade plugin list` and `spade plugin inspect`: what operator plugins this spade has,
//! and what a component file is (name, version, contract version, operators, the
//! capabilities it imports) before anyone runs it.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use spade_runtime::{Grants, Runtime, RuntimeConfig};

use crate::host::{cache_dir, describe_grants, grants_for};

#[derive(clap::Subcommand)]
pub enum PluginCommand {
    /// List the installed (bundled) plugins: version, contract version, operators, grants.
    List,
    /// Describe a plugin component file without running any of its operators.
    Inspect {
        /// The component (.wasm).
        file: PathBuf,
    },
}

/// Capability imports of a component, in spade's words.
fn capabilities(imports: &[String]) -> Vec<String> {
    let mut caps: Vec<String> = imports
        .iter()
        .filter_map(|i| {
            if let Some(rest) = i.strip_prefix("spade:operator/") {
                Some(rest.split('@').next().unwrap_or(rest).to_string())
            } else if i.starts_with("wasi:http/") {
                Some("http".to_string())
            } else {
                None
            }
        })
        .collect();
    // `types` holds shared record shapes, not a capability.
    caps.retain(|c| c != "types");
    caps.sort();
    caps.dedup();
    caps
}

pub fn plugin(cmd: PluginCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        PluginCommand::List => {
            let runtime = Runtime::new(RuntimeConfig { cache_dir: cache_dir(), ..RuntimeConfig::default() })?;
            println!("{:<26} {:<8} {:<6} {:<24} {:<30} CAPABILITIES USED", "PLUGIN", "VERSION", "WIT", "OPERATORS", "GRANTED");
            for (name, bytes) in spade_bundled::PLUGINS {
                let grants = grants_for(name);
                match runtime.install(name, bytes, grants.clone()) {
                    Ok(report) => println!(
                        "{:<26} {:<8} {:<6} {:<24} {:<30} {}",
                        report.info.name,
                        report.info.version,
                        report.info.wit_version,
                        report.info.operators.iter().map(|o| format!("{o}>")).collect::<Vec<_>>().join(" "),
                        describe_grants(&grants),
                        capabilities(&report.imports).join(" ")
                    ),
                    Err(e) => println!("{name:<26} unavailable: {e}"),
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        PluginCommand::Inspect { file } => {
            let bytes = std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let label = file.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
            let runtime = Runtime::new(RuntimeConfig { cache_dir: cache_dir(), ..RuntimeConfig::default() })?;
            // Grant everything so that describing it cannot fail for lack of a grant; only
            // `describe` runs.
            let report = runtime.install(&label, &bytes, Grants::all()).map_err(|e| anyhow::anyhow!("{e}"))?;
            println!("file:         {} ({} bytes, sha256 {})", file.display(), bytes.len(), report.digest);
            println!("plugin:       {} {}", report.info.name, report.info.version);
            println!("contract:     spade:operator@{}", report.info.wit_version);
            println!(
                "operators:    {}",
                report.info.operators.iter().map(|o| format!("{o}>")).collect::<Vec<_>>().join(" ")
            );
            let caps = capabilities(&report.imports);
            println!(
                "capabilities: {} (log and output are always granted; the rest must be granted)",
                if caps.is_empty() { "-".to_string() } else { caps.join(" ") }
            );
            println!("imports:");
            for i in &report.imports {
                println!("  {i}");
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
