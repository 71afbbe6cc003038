//! Builds the operator runtime with the bundled plugins and their grants.
//!
//! Bundled plugins get only the capabilities their operators need: `call>` may load
//! workflow files, `param_eval>` may render templates, `require>` may start attempts.
//! No bundled plugin is granted secrets.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use spade_api::OperatorHost;
use spade_runtime::{Grants, Runtime, RuntimeConfig};

use crate::config::ProjectConfig;

/// Where precompiled components are cached: `$SPADE_CACHE_DIR`, `$XDG_CACHE_HOME/spade`,
/// or `~/.cache/spade`.
pub fn cache_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("SPADE_CACHE_DIR") {
        return Some(PathBuf::from(dir));
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
        return Some(PathBuf::from(dir).join("spade"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/spade"))
}

pub fn grants_for(crate_name: &str) -> Grants {
    let mut g = Grants::default();
    match crate_name {
        "spade-plugin-call" => g.workflows = true,
        "spade-plugin-param-eval" => g.expressions = true,
        "spade-plugin-require" => g.engine = true,
        // http> may link wasi:http, but with an empty allowlist every request is refused
        // until a project grants hosts (grant configuration is not wired yet: see README).
        "spade-plugin-http" => {
            g.http = Some(Vec::new());
            g.secrets = vec!["http.*".into()];
        }
        _ => {}
    }
    g
}

/// The capabilities `g` grants beyond log and output, for display.
pub fn describe_grants(g: &Grants) -> String {
    let mut out = Vec::new();
    if !g.secrets.is_empty() {
        out.push(format!("secrets({})", g.secrets.join(",")));
    }
    if g.workflows {
        out.push("workflows".to_string());
    }
    if g.expressions {
        out.push("expressions".to_string());
    }
    if g.engine {
        out.push("engine".to_string());
    }
    if let Some(hosts) = &g.http {
        out.push(format!("http({})", if hosts.is_empty() { "no hosts".to_string() } else { format!("{} hosts", hosts.len()) }));
    }
    if out.is_empty() { "-".to_string() } else { out.join(" ") }
}

/// The runtime with the bundled plugins (their grants widened by the project's
/// `spade.yml`) and the project's own plugins.
pub fn runtime_for(config: &ProjectConfig) -> anyhow::Result<Runtime> {
    let runtime = Runtime::new(RuntimeConfig { cache_dir: cache_dir(), ..RuntimeConfig::default() })
        .context("starting the plugin runtime")?;
    for (name, bytes) in spade_bundled::PLUGINS {
        let mut grants = grants_for(name);
        // The config names plugins as `spade plugin list` shows them (`spade-http`).
        let short = name.replace("spade-plugin-", "spade-");
        if let Some(extra) = config.grants.get(&short).or_else(|| config.grants.get(*name)) {
            extra.apply(&mut grants).with_context(|| format!("grants for {short}"))?;
        }
        // One broken plugin must not take the others down: its operators are then unknown
        // and the tasks using them fail with that message.
        if let Err(e) = runtime.install(name, bytes, grants) {
            eprintln!("warning: bundled plugin {name} is not available: {e}");
        }
    }
    for (path, spec) in &config.plugins {
        let mut grants = Grants::default();
        spec.apply(&mut grants)?;
        install_file(&runtime, path, grants)?;
    }
    Ok(runtime)
}

fn install_file(runtime: &Runtime, path: &std::path::Path, grants: Grants) -> anyhow::Result<()> {
    let bytes = std::fs::read(path).with_context(|| format!("plugin {}", path.display()))?;
    let label = path.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let report = runtime.install(&label, &bytes, grants).with_context(|| format!("plugin {}", path.display()))?;
    tracing::info!(plugin = %report.info.name, version = %report.info.version, operators = ?report.info.operators, "loaded");
    Ok(())
}

/// The project's runtime plus plugins given on the command line (no extra grants).
pub fn host_with(config: &ProjectConfig, plugins: &[PathBuf]) -> anyhow::Result<Arc<dyn OperatorHost>> {
    let runtime = runtime_for(config)?;
    for path in plugins {
        install_file(&runtime, path, Grants::default())?;
    }
    Ok(Arc::new(runtime))
}
