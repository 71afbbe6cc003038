//! The project's `spade.yml`: which extra operator plugins to load and what each plugin is
//! granted beyond log and output (secrets keys, HTTP hosts, workflow loading, expressions,
//! starting attempts). Without the file, bundled plugins get only what their operators
//! need and nothing reaches the network. A plugin is linked with the intersection of these
//! grants and what its embedded manifest (`spade-plugin.toml`) asks for.
//!
//! ```yaml
//! registry: https://plugins.example.com/   # where `name:` plugins come from (or a directory)
//! plugins:                      # extra plugins
//!   - name: acme-slack          # from the registry: newest version matching the range,
//!     version: "^1.2"           # pinned in spade.lock
//!     grants: {secrets: [slack.*], http: ["https://hooks.slack.com"]}
//!   - path: plugins/notify.wasm # a component file, relative to the project
//! grants:                       # more for installed plugins, by plugin name (`spade plugin list`)
//!   spade-http:
//!     http: ["https://api.example.com", "127.0.0.1:8080"]
//!   spade-pg:
//!     tcp: ["db.example.com:5432"]       # host:port destinations of TCP connections
//!     cpu_seconds: 30               # ceilings of one call (they only ever lower the limits)
//!     memory_mb: 128
//!   spade-sh:
//!     command: {executors: [sandbox, local], timeout_seconds: 600}   # see `CommandSpec`
//! disk_quota_mb: 2048             # what one attempt's tasks may add to the workspace (default 1024)
//! ```
//!
//! Secret values for local runs come from `$SPADE_SECRETS` or `~/.config/spade/secrets.yml`
//! (a flat map of key to value); a plugin sees only the keys granted to it.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow, bail};
use serde::Deserialize;
use std::time::Duration;

use semver::VersionReq;
use spade_api::Limits;
use spade_registry::{Registry, Wanted, check_name};
use spade_runtime::{CommandGrant, ExecutorKind, Grants, HttpAllow, TcpAllow};

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
    /// Allowed TCP destinations `host:port`.
    #[serde(default)]
    pub tcp: Vec<String>,
    #[serde(default)]
    pub workflows: bool,
    #[serde(default)]
    pub expressions: bool,
    #[serde(default)]
    pub engine: bool,
    /// The project's parameter server (`param_get>`/`param_set>`).
    #[serde(default)]
    pub params: bool,
    /// Ceiling of one call's wall-clock time, in seconds (lowers `--task-timeout`).
    #[serde(default)]
    pub cpu_seconds: Option<u64>,
    /// Ceiling of one call's memory, in MiB (lowers `--task-memory`).
    #[serde(default)]
    pub memory_mb: Option<usize>,
    /// Running commands (`sh>`, `py>`, `rb>`): executors, network, mounts and limits.
    #[serde(default)]
    pub command: Option<CommandSpec>,
}

/// The `command:` grant of a plugin.
///
/// ```yaml
/// grants:
///   spade-sh:
///     command:
///       executors: [sandbox, local]   # what tasks may choose (`_export: {executor: local}`)
///       network: true                 # sandboxed commands share the host's network
///       read_only: [/opt/tools]       # host directories mounted read-only in the sandbox
///       memory_mb: 2048               # address space of each process
///       cpu_seconds: 600              # CPU time of each process
///       processes: 128                # processes at once
///       output_mb: 16                 # stdout + stderr
///       timeout_seconds: 3600         # wall time of one command
/// ```
#[derive(Debug, Default, Deserialize, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CommandSpec {
    #[serde(default)]
    pub executors: Vec<String>,
    #[serde(default)]
    pub network: bool,
    #[serde(default)]
    pub read_only: Vec<PathBuf>,
    pub memory_mb: Option<u64>,
    pub cpu_seconds: Option<u64>,
    pub processes: Option<u32>,
    pub output_mb: Option<u64>,
    pub timeout_seconds: Option<u64>,
}

impl CommandSpec {
    /// Widens `g` with these executors, network and mounts; sets the limits given.
    fn apply(&self, g: &mut CommandGrant) -> anyhow::Result<()> {
        for name in &self.executors {
            let kind = ExecutorKind::parse(name).ok_or_else(|| {
                anyhow!("{CONFIG_FILE}: command executors: {name:?} is not an executor (sandbox, docker, local)")
            })?;
            if !g.executors.contains(&kind) {
                g.executors.push(kind);
            }
        }
        g.network |= self.network;
        for p in &self.read_only {
            if !p.is_absolute() {
                bail!("{CONFIG_FILE}: command read_only: {} must be an absolute path", p.display());
            }
            g.read_only.push(p.clone());
        }
        let positive = |what: &str, v: u64| -> anyhow::Result<u64> {
            if v == 0 { Err(anyhow!("{CONFIG_FILE}: command {what} must be at least 1")) } else { Ok(v) }
        };
        let l = &mut g.limits;
        if let Some(v) = self.memory_mb {
            l.memory_bytes = positive("memory_mb", v)?.saturating_mul(1 << 20);
        }
        if let Some(v) = self.cpu_seconds {
            l.cpu_time = Duration::from_secs(positive("cpu_seconds", v)?);
        }
        if let Some(v) = self.processes {
            l.processes = u32::try_from(positive("processes", u64::from(v))?).unwrap_or(u32::MAX);
        }
        if let Some(v) = self.output_mb {
            l.output_bytes = positive("output_mb", v)?.saturating_mul(1 << 20);
        }
        if let Some(v) = self.timeout_seconds {
            l.wall_time = Duration::from_secs(positive("timeout_seconds", v)?);
        }
        Ok(())
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PluginSpec {
    /// A component file of the project...
    path: Option<PathBuf>,
    /// ...or a plugin from a registry, by name,
    name: Option<String>,
    /// a semver range of its versions (default `*`)
    version: Option<String>,
    /// and the registry (default: the top-level `registry`).
    registry: Option<String>,
    #[serde(default)]
    grants: GrantSpec,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    registry: Option<String>,
    #[serde(default)]
    plugins: Vec<PluginSpec>,
    #[serde(default)]
    grants: BTreeMap<String, GrantSpec>,
    /// Bytes (MiB) the tasks of one attempt may add to the workspace.
    disk_quota_mb: Option<u64>,
}

/// Where an extra plugin comes from.
#[derive(Debug, Clone)]
pub enum PluginSource {
    /// A component file (absolute path).
    File(PathBuf),
    /// A registry plugin, pinned by the project's lockfile.
    Registry(Wanted),
}

/// The project's plugin configuration, resolved.
#[derive(Debug, Default)]
pub struct ProjectConfig {
    /// The project directory (where `spade.lock` lives).
    pub root: PathBuf,
    /// Extra plugins and their grants.
    pub plugins: Vec<(PluginSource, GrantSpec)>,
    /// Additional grants for installed plugins, by plugin name.
    pub grants: BTreeMap<String, GrantSpec>,
    /// `disk_quota_mb`: what the tasks of one attempt may add to the workspace (MiB).
    pub disk_quota_mb: Option<u64>,
}

impl ProjectConfig {
    /// Read `spade.yml` of `root` (absent: the default, nothing extra).
    pub fn load(root: &Path) -> anyhow::Result<ProjectConfig> {
        let path = root.join(CONFIG_FILE);
        if !path.exists() {
            return Ok(ProjectConfig { root: root.to_path_buf(), ..ProjectConfig::default() });
        }
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        let loaded = spade_dig::parse_yaml_str(&text, CONFIG_FILE).map_err(|e| anyhow!("{e}"))?;
        let file: ConfigFile = serde_json::from_value(loaded.value).map_err(|e| anyhow!("{CONFIG_FILE}: {e}"))?;
        let default_registry = file
            .registry
            .as_deref()
            .map(|r| Registry::parse(r, root).map_err(|e| anyhow!("{CONFIG_FILE}: registry: {e}")))
            .transpose()?;
        let mut plugins = Vec::new();
        for (i, p) in file.plugins.into_iter().enumerate() {
            let at = format!("{CONFIG_FILE}: plugins[{i}]");
            let source = match (p.path, p.name) {
                (Some(path), None) => {
                    if p.version.is_some() || p.registry.is_some() {
                        bail!("{at}: `version` and `registry` go with `name:` (a registry plugin), not `path:`");
                    }
                    if path.is_absolute() || path.components().any(|c| matches!(c, std::path::Component::ParentDir)) {
                        bail!("{at}: plugin path {} must be inside the project", path.display());
                    }
                    PluginSource::File(root.join(&path))
                }
                (None, Some(name)) => {
                    check_name(&name).map_err(|e| anyhow!("{at}: {e}"))?;
                    let range = p.version.as_deref().unwrap_or("*");
                    let req = VersionReq::parse(range).map_err(|e| {
                        anyhow!("{at}: version {range:?} of {name} is not a semver range ({e}); e.g. \"^1.2\", \"~1.2.3\" or \"*\"")
                    })?;
                    let registry = match &p.registry {
                        Some(r) => Registry::parse(r, root).map_err(|e| anyhow!("{at}: registry: {e}"))?,
                        None => default_registry.clone().ok_or_else(|| {
                            anyhow!("{at}: {name} comes from a registry, but {CONFIG_FILE} sets no `registry:` (a URL or a directory)")
                        })?,
                    };
                    PluginSource::Registry(Wanted { name, req, registry })
                }
                _ => bail!("{at}: give either `path:` (a component file) or `name:` (a registry plugin)"),
            };
            plugins.push((source, p.grants));
        }
        Ok(ProjectConfig { root: root.to_path_buf(), plugins, grants: file.grants, disk_quota_mb: file.disk_quota_mb })
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
        for t in &self.tcp {
            let allow = TcpAllow::parse(t).map_err(|e| anyhow!("{CONFIG_FILE}: {e}"))?;
            if !g.tcp.contains(&allow) {
                g.tcp.push(allow);
            }
        }
        g.workflows |= self.workflows;
        g.expressions |= self.expressions;
        g.engine |= self.engine;
        g.params |= self.params;
        if let Some(c) = &self.command {
            c.apply(g.command.get_or_insert_with(CommandGrant::default))?;
        }
        if self.cpu_seconds.is_some() || self.memory_mb.is_some() {
            let mut limits =
                g.limits.unwrap_or(Limits { cpu_time: Duration::MAX, memory_bytes: usize::MAX, log_bytes: usize::MAX });
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

/// Where local secrets live: `$SPADE_SECRETS`, else `~/.config/spade/secrets.yml`.
pub fn local_secrets_path() -> Option<PathBuf> {
    match std::env::var_os("SPADE_SECRETS") {
        Some(p) => Some(PathBuf::from(p)),
        None => std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config/spade/secrets.yml")),
    }
}

/// Secret values for local runs.
pub fn local_secrets() -> anyhow::Result<HashMap<String, String>> {
    match local_secrets_path() {
        Some(path) => read_secrets(&path),
        None => Ok(HashMap::new()),
    }
}

/// The secrets file at `path` (a flat map of key to value); missing is empty.
pub fn read_secrets(path: &Path) -> anyhow::Result<HashMap<String, String>> {
    if !path.exists() {
        return Ok(HashMap::new());
    }
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let loaded = spade_dig::parse_yaml_str(&text, &path.display().to_string()).map_err(|e| anyhow!("{e}"))?;
    let map = match loaded.value {
        serde_json::Value::Object(map) => map,
        serde_json::Value::Null => return Ok(HashMap::new()),
        _ => bail!("{}: expected a map of secret keys to values", path.display()),
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

/// Writes `secrets` to `path` (sorted, readable only by the user). Values are written as
/// double-quoted scalars (JSON string syntax is valid YAML), so any text round-trips.
pub fn write_secrets(path: &Path, secrets: &HashMap<String, String>) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut keys: Vec<&String> = secrets.keys().collect();
    keys.sort();
    let mut text =
        String::from("# spade secrets for local runs (`spade secrets`); plugins see only keys granted to them.\n");
    for k in keys {
        text.push_str(&format!("{}: {}\n", serde_json::to_string(k)?, serde_json::to_string(&secrets[k])?));
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
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
        assert!(matches!(&c.plugins[0].0, PluginSource::File(p) if *p == dir.path().join("p/x.wasm")));
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

        let file = dir.path().join("secrets.yml");
        let tricky = HashMap::from([
            ("db.password".to_string(), "p\"a: ss\nword #1 \\ é".to_string()),
            ("empty".to_string(), String::new()),
            ("yes".to_string(), "true".to_string()),
        ]);
        write_secrets(&file, &tricky).unwrap();
        assert_eq!(read_secrets(&file).unwrap(), tricky, "values round-trip as text");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);

        let load_err = |text: &str| {
            std::fs::write(dir.path().join(CONFIG_FILE), text).unwrap();
            ProjectConfig::load(dir.path()).unwrap_err().to_string()
        };
        assert!(load_err("plugins:\n  - name: acme\n").contains("sets no `registry:`"));
        assert!(
            load_err("registry: reg\nplugins:\n  - name: acme\n    version: \"one\"\n").contains("not a semver range")
        );
        assert!(load_err("registry: reg\nplugins:\n  - name: acme\n    path: x.wasm\n").contains("either `path:`"));
        assert!(load_err("registry: reg\nplugins:\n  - name: Acme\n").contains("invalid plugin name"));
        std::fs::write(
            dir.path().join(CONFIG_FILE),
            "registry: https://r.example/\nplugins:\n  - name: acme\n    version: \"^1.2\"\n",
        )
        .unwrap();
        let c = ProjectConfig::load(dir.path()).unwrap();
        match &c.plugins[0].0 {
            PluginSource::Registry(w) => {
                assert_eq!((w.name.as_str(), w.req.to_string()), ("acme", "^1.2".to_string()));
                assert_eq!(w.registry.id(), "https://r.example/");
            }
            other => panic!("{other:?}"),
        }
    }
}
