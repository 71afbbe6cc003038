//! The project's `spade.yml`: which extra operator plugins to load and what each plugin is
//! granted beyond log and output (secrets keys, HTTP hosts, workflow loading, expressions,
//! starting attempts). Without the file, bundled plugins get only what their operators
//! need and nothing reaches the network. A plugin is linked with the intersection of these
//! grants and what its embedded manifest (`spade-plugin.toml`) asks for.
//!
//! ```yaml
//! plugins:                      # extra plugins, paths relative to the project
//!   - path: plugins/notify.wasm
//!     grants: {secrets: [slack.*], http: ["https://hooks.slack.com"]}
//! grants:                       # more for installed plugins, by plugin name (`spade plugin list`)
//!   spade-http:
//!     http: ["https://api.example.com", "127.0.0.1:8080"]
//!     cpu_seconds: 30               # ceilings of one call (they only ever lower the limits)
//!     memory_mb: 128
//! ```
//!
//! Secret values for local runs come from `$SPADE_SECRETS` or `~/.config/spade/secrets.yml`
//! (a flat map of key to value); a plugin sees only the keys granted to it.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow, bail};
use serde::Deserialize;
use std::time::Duration;

use spade_api::Limits;
use spade_runtime::{Grants, HttpAllow};

pub const CONFIG_FILE: &str = "spade.yml";

#[derive(Debug, Default, Deserialize, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GrantSpec {
    /// Secret keys: exact, `prefix*` or `*`.
    #[serde(default)]
    pub secrets: Vec<String>,
    /// Allowed HTTP destinations `[scheme://]host[:port]`.
    #[serde(default)]
    pub http: Vec<String>,
    #[serde(default)]
    pub workflows: bool,
    #[serde(default)]
    pub expressions: bool,
    #[serde(default)]
    pub engine: bool,
    /// Ceiling of one call's wall-clock time, in seconds (lowers `--task-timeout`).
    #[serde(default)]
    pub cpu_seconds: Option<u64>,
    /// Ceiling of one call's memory, in MiB (lowers `--task-memory`).
    #[serde(default)]
    pub memory_mb: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PluginSpec {
    path: PathBuf,
    #[serde(default)]
    grants: GrantSpec,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    #[serde(default)]
    plugins: Vec<PluginSpec>,
    #[serde(default)]
    grants: BTreeMap<String, GrantSpec>,
}

/// The project's plugin configuration, resolved.
#[derive(Debug, Default)]
pub struct ProjectConfig {
    /// Extra plugins: (absolute path, grants).
    pub plugins: Vec<(PathBuf, GrantSpec)>,
    /// Additional grants for installed plugins, by plugin name.
    pub grants: BTreeMap<String, GrantSpec>,
}

impl ProjectConfig {
    /// Read `spade.yml` of `root` (absent: the default, nothing extra).
    pub fn load(root: &Path) -> anyhow::Result<ProjectConfig> {
        let path = root.join(CONFIG_FILE);
        if !path.exists() {
            return Ok(ProjectConfig::default());
        }
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        let loaded = spade_dig::parse_yaml_str(&text, CONFIG_FILE).map_err(|e| anyhow!("{e}"))?;
        let file: ConfigFile = serde_json::from_value(loaded.value)
            .map_err(|e| anyhow!("{CONFIG_FILE}: {e}"))?;
        let mut plugins = Vec::new();
        for p in file.plugins {
            if p.path.is_absolute() || p.path.components().any(|c| matches!(c, std::path::Component::ParentDir)) {
                bail!("{CONFIG_FILE}: plugin path {} must be inside the project", p.path.display());
            }
            plugins.push((root.join(&p.path), p.grants));
        }
        Ok(ProjectConfig { plugins, grants: file.grants })
    }
}

impl GrantSpec {
    /// Add these grants to `g` (grants only ever widen).
    pub fn apply(&self, g: &mut Grants) -> anyhow::Result<()> {
        for s in &self.secrets {
            if !g.secrets.contains(s) {
                g.secrets.push(s.clone());
            }
        }
        if !self.http.is_empty() {
            let list = g.http.get_or_insert_with(Vec::new);
            for h in &self.http {
                list.push(HttpAllow::parse(h).map_err(|e| anyhow!("{CONFIG_FILE}: {e}"))?);
            }
        }
        g.workflows |= self.workflows;
        g.expressions |= self.expressions;
        g.engine |= self.engine;
        if self.cpu_seconds.is_some() || self.memory_mb.is_some() {
            let mut limits = g.limits.unwrap_or(Limits {
                cpu_time: Duration::MAX,
                memory_bytes: usize::MAX,
                log_bytes: usize::MAX,
            });
            if let Some(s) = self.cpu_seconds {
                limits.cpu_time = limits.cpu_time.min(Duration::from_secs(s));
            }
            if let Some(m) = self.memory_mb {
                limits.memory_bytes = limits.memory_bytes.min(m << 20);
            }
            g.limits = Some(limits);
        }
        Ok(())
    }
}

/// Secret values for local runs.
pub fn local_secrets() -> anyhow::Result<HashMap<String, String>> {
    let path = match std::env::var_os("SPADE_SECRETS") {
        Some(p) => PathBuf::from(p),
        None => match std::env::var_os("HOME") {
            Some(h) => PathBuf::from(h).join(".config/spade/secrets.yml"),
            None => return Ok(HashMap::new()),
        },
    };
    if !path.exists() {
        return Ok(HashMap::new());
    }
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let loaded = spade_dig::parse_yaml_str(&text, &path.display().to_string()).map_err(|e| anyhow!("{e}"))?;
    let serde_json::Value::Object(map) = loaded.value else {
        bail!("{}: expected a map of secret keys to values", path.display());
    };
    let mut out = HashMap::new();
    for (k, v) in map {
        let value = match v {
            serde_json::Value::String(s) => s,
            other => other.to_string(),
        };
        out.insert(k, value);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_grants_widen_and_reject_bad_input() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(CONFIG_FILE),
            "plugins:\n  - path: p/x.wasm\n    grants: {secrets: [a.*]}\ngrants:\n  spade-http:\n    http: [\"127.0.0.1:8080\"]\n",
        )
        .unwrap();
        let c = ProjectConfig::load(dir.path()).unwrap();
        assert_eq!(c.plugins[0].0, dir.path().join("p/x.wasm"));
        let mut g = Grants::default();
        c.grants["spade-http"].apply(&mut g).unwrap();
        assert_eq!(g.http.as_ref().unwrap().len(), 1);
        assert_eq!(g.limits, None);
        let ceiling = GrantSpec { cpu_seconds: Some(5), memory_mb: Some(64), ..GrantSpec::default() };
        ceiling.apply(&mut g).unwrap();
        let limits = g.limits.unwrap();
        assert_eq!((limits.cpu_time, limits.memory_bytes), (Duration::from_secs(5), 64 << 20));

        std::fs::write(dir.path().join(CONFIG_FILE), "grants:\n  spade-http:\n    htp: [x]\n").unwrap();
        let err = ProjectConfig::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("unknown field `htp`"), "{err}");
        std::fs::write(dir.path().join(CONFIG_FILE), "plugins:\n  - path: ../evil.wasm\n").unwrap();
        assert!(ProjectConfig::load(dir.path()).is_err());
    }
}
