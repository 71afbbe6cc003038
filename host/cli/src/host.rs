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

fn grants_for(crate_name: &str) -> Grants {
    let mut g = Grants::default();
    match crate_name {
        "spade-plugin-call" => g.workflows = true,
        "spade-plugin-param-eval" => g.expressions = true,
        "spade-plugin-require" => g.engine = true,
        _ => {}
    }
    g
}

pub fn bundled_runtime() -> anyhow::Result<Runtime> {
    let config = RuntimeConfig { cache_dir: cache_dir(), ..RuntimeConfig::default() };
    let runtime = Runtime::new(config).context("starting the plugin runtime")?;
    for (name, bytes) in spade_bundled::PLUGINS {
        runtime
            .install(name, bytes, grants_for(name))
            .with_context(|| format!("installing bundled plugin {name}"))?;
    }
    Ok(runtime)
}

pub fn bundled_host() -> anyhow::Result<Arc<dyn OperatorHost>> {
    Ok(Arc::new(bundled_runtime()?))
}
