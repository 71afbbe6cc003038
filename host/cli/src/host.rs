//! Builds the operator runtime with the bundled plugins and their grants.
//!
//! Bundled plugins are granted only the capabilities their operators need: `call>` may load
//! workflow files, `param_eval>` may render templates, `require>` may start attempts, and
//! `http>` may link wasi:http (reaching no host until the project grants some) and read
//! the `http.*` secrets, the `td>` family reaches Treasure Data's API. Each plugin's
//! manifest then narrows that further.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use spade_api::OperatorHost;
use spade_runtime::{CommandGrant, Grants, HttpAllow, InstallReport, Runtime, RuntimeConfig, RuntimeError};

use spade_registry::{Cache, Installed as RegistryInstalled, LOCK_FILE, Lockfile, Update, Wanted};

use crate::config::{PluginSource, ProjectConfig};

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

/// Treasure Data's documented API endpoints (US, Tokyo, EU, Korea).
const TD_ENDPOINTS: [&str; 4] = [
    "https://api.treasuredata.com",
    "https://api.treasuredata.co.jp",
    "https://api.eu01.treasuredata.com",
    "https://api.ap02.treasuredata.com",
];

pub fn grants_for(crate_name: &str) -> Grants {
    let mut g = Grants::default();
    match crate_name {
        "spade-plugin-call" => g.workflows = true,
        "spade-plugin-param-eval" => g.expressions = true,
        "spade-plugin-require" => g.engine = true,
        "spade-plugin-param-server" => g.params = true,
        // Script operators run commands in the default executor (the sandbox, or docker:
        // when a task names an image); `local` and secrets only when the project grants them.
        "spade-plugin-sh" | "spade-plugin-py" | "spade-plugin-rb" => g.command = Some(CommandGrant::default()),
        // embulk> also renders its config file's ${...}.
        "spade-plugin-embulk" => {
            g.command = Some(CommandGrant::default());
            g.expressions = true;
        }
        // http> may link wasi:http, but with an empty allowlist every request is refused
        // until the project's spade.yml grants hosts.
        "spade-plugin-http" => {
            g.http = Some(Vec::new());
            g.secrets = vec!["http.*".into()];
        }
        // The td> family reaches Treasure Data's public API endpoints (a project grants
        // another endpoint, or the loopback stand-in, in spade.yml), reads the td.* secrets
        // and the AWS keys td_table_export> hands to TD, and renders query templates.
        "spade-plugin-td" => {
            g.http = Some(TD_ENDPOINTS.iter().map(|e| HttpAllow::parse(e).expect("a valid built-in grant")).collect());
            g.secrets = [
                "td.*",
                "aws.s3.access_key_id",
                "aws.s3.secret_access_key",
                "aws.access_key_id",
                "aws.secret_access_key",
            ]
            .map(String::from)
            .to_vec();
            g.expressions = true;
        }
        // pg> reads the pg.* secrets and renders query templates; it reaches no database
        // until the project grants one (`tcp: ["db.example.com:5432"]`).
        "spade-plugin-pg" => {
            g.secrets = vec!["pg.*".into()];
            g.expressions = true;
        }
        // mail> likewise: the mail.* secrets, body templates, and only the SMTP servers the
        // project grants.
        "spade-plugin-mail" => {
            g.secrets = vec!["mail.*".into()];
            g.expressions = true;
        }
        _ => {}
    }
    g
}

/// One plugin the runtime tried to install, for `spade plugin list`.
pub struct InstalledPlugin {
    /// `bundled`, the component's path, or `<registry id>`.
    pub source: String,
    pub result: Result<InstallReport, String>,
    /// A bundled plugin the project replaced with its own plugin of the same name: where
    /// the active one comes from.
    pub replaced_by: Option<String>,
}

/// Install a project plugin. One with the name of a bundled plugin replaces it for this
/// project (a project may pin the version it was tested with, or take a fixed plugin
/// without a new spade): the bundled one is removed with its operators, and the
/// replacement gets only the grants the project gives it, never the bundled defaults.
fn install_project_plugin(
    runtime: &Runtime,
    installed: &mut [InstalledPlugin],
    source: &str,
    label: &str,
    bytes: &[u8],
    grants: Grants,
) -> Result<InstallReport, RuntimeError> {
    match runtime.install(label, bytes, grants.clone()) {
        Err(RuntimeError::DuplicatePlugin { plugin, .. }) => {
            let bundled = installed.iter_mut().find(|i| {
                i.source == "bundled"
                    && i.replaced_by.is_none()
                    && i.result.as_ref().is_ok_and(|r| r.info.name == plugin)
            });
            let Some(bundled) = bundled else {
                // Two project plugins of one name: the first stays.
                return runtime.install(label, bytes, grants);
            };
            runtime.uninstall(&plugin);
            bundled.replaced_by = Some(source.to_string());
            runtime.install(label, bytes, grants)
        }
        other => other,
    }
}

/// The runtime with the bundled plugins (their grants widened by the project's
/// `spade.yml`) and the project's own plugins, plus what happened to each.
///
/// A bundled plugin that fails to load leaves its operators unknown (tasks using them fail
/// with that message); a project plugin that fails to load is an error.
pub fn install_all(config: &ProjectConfig, runtime: &Runtime) -> anyhow::Result<Vec<InstalledPlugin>> {
    let mut installed = Vec::new();
    for (name, bytes) in spade_bundled::PLUGINS {
        let mut grants = grants_for(name);
        // The config names plugins as `spade plugin list` shows them (`spade-http`).
        let short = name.replace("spade-plugin-", "spade-");
        if let Some(extra) = config.grants.get(&short).or_else(|| config.grants.get(*name)) {
            extra.apply(&mut grants).with_context(|| format!("grants for {short}"))?;
        }
        let result = match spade_bundled::plugin_digest(name) {
            Some(digest) => runtime.install_with_digest(name, bytes, digest, grants),
            None => runtime.install(name, bytes, grants),
        };
        installed.push(InstalledPlugin {
            source: "bundled".into(),
            result: result.map_err(|e| e.to_string()),
            replaced_by: None,
        });
    }
    let mut from_registry = lock_registry_plugins(config, &Update::None)?.into_iter();
    for (source, spec) in &config.plugins {
        let mut grants = Grants::default();
        spec.apply(&mut grants)?;
        match source {
            PluginSource::File(path) => {
                let report = install_file(runtime, &mut installed, path, grants)?;
                installed.push(InstalledPlugin {
                    source: path.display().to_string(),
                    result: Ok(report),
                    replaced_by: None,
                });
            }
            PluginSource::Registry(wanted) => {
                let got = from_registry.next().context("the registry returned fewer plugins than asked for")?;
                let locked = &got.locked;
                let label = format!("{} {}", locked.name, locked.version);
                let source = format!("{} (spade.lock)", wanted.registry.id());
                let report = install_project_plugin(runtime, &mut installed, &source, &label, &got.bytes, grants)
                    .with_context(|| format!("plugin {label} from registry {}", wanted.registry))?;
                if report.info.name != locked.name || report.info.version != locked.version.to_string() {
                    anyhow::bail!(
                        "plugin {label} from registry {} describes itself as {} {}; the registry's index is wrong \
                         (publish with `spade plugin publish`, which reads name and version from the component)",
                        wanted.registry,
                        report.info.name,
                        report.info.version
                    );
                }
                installed.push(InstalledPlugin { source: wanted.registry.id(), result: Ok(report), replaced_by: None });
            }
        }
    }
    Ok(installed)
}

/// The download cache of registry plugins: `<cache dir>/plugins`, or the project's
/// `.spade/plugins` when there is no cache directory.
fn download_cache(config: &ProjectConfig) -> Cache {
    match cache_dir() {
        Some(dir) => Cache::new(dir.join("plugins")),
        None => Cache::new(config.root.join(".spade/plugins")),
    }
}

/// Resolves, fetches and checks the project's registry plugins (in `spade.yml` order),
/// and rewrites `spade.lock` when what it pins changed (saying so on stderr).
pub fn lock_registry_plugins(config: &ProjectConfig, update: &Update) -> anyhow::Result<Vec<RegistryInstalled>> {
    let wanted: Vec<Wanted> = config
        .plugins
        .iter()
        .filter_map(|(source, _)| match source {
            PluginSource::Registry(w) => Some(w.clone()),
            PluginSource::File(_) => None,
        })
        .collect();
    let lock_path = config.root.join(LOCK_FILE);
    let lock = Lockfile::load(&lock_path)?;
    if wanted.is_empty() && lock.plugins.is_empty() {
        return Ok(Vec::new());
    }
    let (installed, new_lock) =
        spade_registry::install(&wanted, &lock, &download_cache(config), update, &spade_runtime::supports_wit_version)?;
    if new_lock != lock {
        for i in installed.iter().filter(|i| i.newly_locked) {
            eprintln!("locked {} {} from {} ({})", i.locked.name, i.locked.version, i.locked.source, i.locked.digest);
        }
        for gone in lock.plugins.iter().filter(|p| !new_lock.plugins.iter().any(|n| n.name == p.name)) {
            eprintln!("unlocked {} {} (no longer in {})", gone.name, gone.version, crate::config::CONFIG_FILE);
        }
        new_lock.save(&lock_path)?;
    }
    Ok(installed)
}

pub fn new_runtime() -> anyhow::Result<Runtime> {
    Runtime::new(RuntimeConfig { cache_dir: cache_dir(), ..RuntimeConfig::default() })
        .context("starting the plugin runtime")
}

/// The runtime for a run of the project: see [`install_all`]. Problems of bundled plugins
/// are warnings, so is every request of a project plugin's manifest its grants leave out.
pub fn runtime_for(config: &ProjectConfig) -> anyhow::Result<(Runtime, Vec<InstalledPlugin>)> {
    let runtime = new_runtime()?;
    let installed = install_all(config, &runtime)?;
    for i in &installed {
        match &i.result {
            Err(e) => eprintln!("warning: bundled plugin is not available: {e}"),
            Ok(report) if i.source != "bundled" => {
                for w in &report.warnings {
                    eprintln!("warning: plugin {} ({}): {w}", report.info.name, i.source);
                }
            }
            Ok(_) => {}
        }
    }
    Ok((runtime, installed))
}

fn install_file(
    runtime: &Runtime,
    installed: &mut [InstalledPlugin],
    path: &std::path::Path,
    grants: Grants,
) -> anyhow::Result<InstallReport> {
    let bytes = std::fs::read(path).with_context(|| format!("plugin {}", path.display()))?;
    let label = path.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let source = path.display().to_string();
    let report = install_project_plugin(runtime, installed, &source, &label, &bytes, grants)
        .with_context(|| format!("plugin {}", path.display()))?;
    tracing::info!(plugin = %report.info.name, version = %report.info.version, operators = ?report.info.operators, "loaded");
    Ok(report)
}

/// The project's runtime plus plugins given on the command line (no extra grants).
pub fn host_with(config: &ProjectConfig, plugins: &[PathBuf]) -> anyhow::Result<Arc<dyn OperatorHost>> {
    let (runtime, mut installed) = runtime_for(config)?;
    for path in plugins {
        let report = install_file(&runtime, &mut installed, path, Grants::default())?;
        for w in &report.warnings {
            eprintln!("warning: plugin {} ({}): {w}", report.info.name, path.display());
        }
    }
    Ok(Arc::new(runtime))
}
