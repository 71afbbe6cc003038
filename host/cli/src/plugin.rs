//! `spade plugin list` and `spade plugin inspect`: what operator plugins a project runs
//! with, and what a component file is (name, version, contract version, operators, the
//! capabilities it imports and its manifest asks for) before anyone runs it. `spade plugin
//! new` scaffolds a plugin project (Rust on sdk/, or the python/js/c templates of
//! sdk/templates, embedded here so an installed binary needs no checkout) and `spade plugin
//! build` builds one, embeds its manifest (`spade-plugin.toml`) and inspects the result.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};

use anyhow::Context;
use spade_runtime::{Grants, MANIFEST_FILE, Manifest};

use spade_registry::Update;

use crate::config::{PluginSource, ProjectConfig};
use crate::host::{grants_for, install_all, lock_registry_plugins, new_runtime};

#[derive(clap::Subcommand)]
pub enum PluginCommand {
    /// List the plugins a project runs with (bundled and its spade.yml's): version, contract
    /// version, operators, and the capabilities each is linked with.
    List {
        /// The project directory (its spade.yml grants and adds plugins).
        #[arg(long, default_value = ".")]
        project: PathBuf,
    },
    /// Describe a plugin component file without running any of its operators.
    Inspect {
        /// The component (.wasm).
        file: PathBuf,
    },
    /// Create a plugin project that builds and tests as it is: `spade plugin new --lang rust my_op`.
    New {
        /// The language: rust (on spade-sdk), python, js or c (sdk/templates).
        #[arg(long, value_enum)]
        lang: Lang,
        /// The operator name (used as `NAME>:` in workflows): lowercase letters, digits, `_`.
        name: String,
        /// Where to create the project (must not exist or be empty) [default: ./NAME].
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Resolve the project's registry plugins (`name:` entries of spade.yml), download and
    /// check them, and write spade.lock (`spade run` does the same when needed).
    Install {
        /// The project directory.
        #[arg(long, default_value = ".")]
        project: PathBuf,
    },
    /// Move registry plugins to the newest versions their ranges allow, and relock.
    Update {
        /// Only these plugins [default: all of the project's registry plugins].
        names: Vec<String>,
        /// The project directory.
        #[arg(long, default_value = ".")]
        project: PathBuf,
    },
    /// Publish a component to a directory registry (serve the directory over http(s) to
    /// share it); name, version and operators are read from the component itself.
    Publish {
        /// The component (.wasm), as `spade plugin build` left it (manifest embedded).
        file: PathBuf,
        /// The registry directory (created when missing).
        #[arg(long)]
        registry: PathBuf,
    },
    /// Mark a published version as yanked: new resolutions skip it, lockfiles naming it
    /// keep working.
    Yank {
        /// NAME@VERSION, e.g. acme-slack@1.2.0.
        spec: String,
        /// The registry directory.
        #[arg(long)]
        registry: PathBuf,
        /// Un-yank instead.
        #[arg(long)]
        undo: bool,
    },
    /// Build the plugin project in DIR (cargo for Rust, build.sh otherwise), embed its
    /// spade-plugin.toml and inspect the result.
    Build {
        /// The project directory.
        #[arg(default_value = ".")]
        dir: PathBuf,
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
        PluginCommand::List { project } => {
            list(&project)?;
            Ok(ExitCode::SUCCESS)
        }
        PluginCommand::Inspect { file } => {
            inspect(&file)?;
            Ok(ExitCode::SUCCESS)
        }
        PluginCommand::New { lang, name, dir } => new_plugin(lang, &name, dir),
        PluginCommand::Build { dir } => build_plugin(&dir),
        PluginCommand::Install { project } => {
            lock_plugins(&project, &Update::None)?;
            Ok(ExitCode::SUCCESS)
        }
        PluginCommand::Update { names, project } => {
            let update = if names.is_empty() { Update::All } else { Update::Only(names.into_iter().collect()) };
            lock_plugins(&project, &update)?;
            Ok(ExitCode::SUCCESS)
        }
        PluginCommand::Publish { file, registry } => {
            publish(&file, &registry)?;
            Ok(ExitCode::SUCCESS)
        }
        PluginCommand::Yank { spec, registry, undo } => {
            let (name, version) =
                spec.split_once('@').context("give the version to yank as NAME@VERSION, e.g. acme-slack@1.2.0")?;
            let version: semver::Version =
                version.parse().with_context(|| format!("{version:?} is not a version (e.g. 1.2.0)"))?;
            spade_registry::yank(&registry, name, &version, !undo)?;
            println!("{} {name} {version} in {}", if undo { "un-yanked" } else { "yanked" }, registry.display());
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `spade plugin install` / `update`: (re)lock the project's registry plugins and say what
/// each resolved to.
fn lock_plugins(project: &Path, update: &Update) -> anyhow::Result<()> {
    let config = ProjectConfig::load(project)?;
    let registry_names: Vec<&str> = config
        .plugins
        .iter()
        .filter_map(|(s, _)| match s {
            PluginSource::Registry(w) => Some(w.name.as_str()),
            PluginSource::File(_) => None,
        })
        .collect();
    if let Update::Only(names) = update
        && let Some(unknown) = names.iter().find(|n| !registry_names.contains(&n.as_str()))
    {
        anyhow::bail!(
            "{unknown} is not a registry plugin of this project (its spade.yml names: {})",
            if registry_names.is_empty() { "none".to_string() } else { registry_names.join(", ") }
        );
    }
    let installed = lock_registry_plugins(&config, update)?;
    if installed.is_empty() {
        println!("no registry plugins in {}", project.join(crate::config::CONFIG_FILE).display());
    }
    for i in &installed {
        println!("{:<24} {:<10} {}  {}", i.locked.name, i.locked.version.to_string(), i.locked.digest, i.locked.source);
    }
    Ok(())
}

/// `spade plugin publish`: checks the component loads, reads what it is, adds it.
fn publish(file: &Path, registry: &Path) -> anyhow::Result<()> {
    let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let label = file.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let runtime = new_runtime()?;
    let report = runtime.install(&label, &bytes, Grants::all()).map_err(|e| anyhow::anyhow!("{e}"))?;
    let info = report.info;
    let version = semver::Version::parse(&info.version).with_context(|| {
        format!("plugin {} reports version {:?}, which is not a semver version (e.g. 1.2.0)", info.name, info.version)
    })?;
    let meta = spade_registry::PluginMeta {
        name: info.name.clone(),
        version,
        wit: info.wit_version,
        operators: info.operators,
    };
    let (entry, published) = spade_registry::publish(registry, &bytes, &meta)?;
    let what = match published {
        spade_registry::Published::Added => "published",
        spade_registry::Published::AlreadyThere => "already published (same bytes)",
    };
    println!("{what} {} {} ({}) to {}: {}", meta.name, entry.version, entry.digest, registry.display(), entry.file);
    if report.manifest.is_none() {
        eprintln!(
            "note: the component has no embedded {MANIFEST_FILE}; build it with `spade plugin build` so it says what it asks for"
        );
    }
    Ok(())
}

fn list(project: &Path) -> anyhow::Result<()> {
    let config = ProjectConfig::load(project)?;
    let runtime = new_runtime()?;
    let installed = install_all(&config, &runtime)?;
    println!("{:<26} {:<8} {:<6} {:<26} {:<40} SOURCE", "PLUGIN", "VERSION", "WIT", "OPERATORS", "LINKED CAPABILITIES");
    let mut notes = Vec::new();
    for i in &installed {
        match &i.result {
            Ok(report) if i.replaced_by.is_some() => notes.push(format!(
                "bundled {} {} is replaced in this project by the plugin from {}",
                report.info.name,
                report.info.version,
                i.replaced_by.as_deref().unwrap_or_default()
            )),
            Ok(report) => {
                println!(
                    "{:<26} {:<8} {:<6} {:<26} {:<40} {}",
                    report.info.name,
                    report.info.version,
                    report.info.wit_version,
                    report.info.operators.iter().map(|o| format!("{o}>")).collect::<Vec<_>>().join(" "),
                    report.linked.to_string(),
                    i.source
                );
                for w in &report.warnings {
                    notes.push(format!("{}: {w}", report.info.name));
                }
            }
            Err(e) => notes.push(format!("unavailable: {e}")),
        }
    }
    if !notes.is_empty() {
        println!();
        for n in notes {
            println!("note: {n}");
        }
    }
    Ok(())
}

/// Print what `file` is: plugin name and version, contract, operators, capabilities.
fn inspect(file: &Path) -> anyhow::Result<()> {
    let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let label = file.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let runtime = new_runtime()?;
    // Grant everything so that describing it cannot fail for lack of a grant; only
    // `describe` runs.
    let report = runtime.install(&label, &bytes, Grants::all()).map_err(|e| anyhow::anyhow!("{e}"))?;
    println!("file:         {} ({} bytes, sha256 {})", file.display(), bytes.len(), report.digest);
    println!("plugin:       {} {}", report.info.name, report.info.version);
    println!("contract:     spade:operator@{}", report.info.wit_version);
    println!("operators:    {}", report.info.operators.iter().map(|o| format!("{o}>")).collect::<Vec<_>>().join(" "));
    let caps = capabilities(&report.imports);
    println!(
        "capabilities: {} (log and output are always granted; the rest must be granted)",
        if caps.is_empty() { "-".to_string() } else { caps.join(" ") }
    );
    match &report.manifest {
        Some(m) => println!("asks for:     {} (its {MANIFEST_FILE})", m.wants),
        None => println!(
            "asks for:     no manifest: whatever it imports, with the keys, hosts and limits its grants give \
             (build with `spade plugin build` to embed a {MANIFEST_FILE})"
        ),
    }
    println!("imports:");
    for i in &report.imports {
        println!("  {i}");
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// `spade plugin new` / `spade plugin build`
// ---------------------------------------------------------------------------------------

/// Languages `spade plugin new` can scaffold.
#[derive(Clone, Copy, PartialEq, Eq, Debug, clap::ValueEnum)]
pub enum Lang {
    Rust,
    Python,
    Js,
    C,
}

/// One file of a scaffold: path inside the project, contents, executable bit.
struct TemplateFile {
    path: &'static str,
    text: &'static str,
    executable: bool,
}

macro_rules! tfile {
    ($path:literal, $src:literal) => {
        TemplateFile { path: $path, text: include_str!(concat!("../../../", $src)), executable: false }
    };
    ($path:literal, $src:literal, exec) => {
        TemplateFile { path: $path, text: include_str!(concat!("../../../", $src)), executable: true }
    };
}

// The templates' `wit/operator.wit` and `wit/deps` are symlinks into the repository's wit/;
// embedding the targets makes a scaffold from an installed binary self-contained.
const WIT_FILES: &[TemplateFile] = &[
    tfile!("wit/operator.wit", "wit/operator.wit"),
    tfile!("wit/deps/cli.wit", "wit/deps/cli.wit"),
    tfile!("wit/deps/clocks.wit", "wit/deps/clocks.wit"),
    tfile!("wit/deps/filesystem.wit", "wit/deps/filesystem.wit"),
    tfile!("wit/deps/http.wit", "wit/deps/http.wit"),
    tfile!("wit/deps/io.wit", "wit/deps/io.wit"),
    tfile!("wit/deps/random.wit", "wit/deps/random.wit"),
    tfile!("wit/deps/sockets.wit", "wit/deps/sockets.wit"),
];

const PYTHON_FILES: &[TemplateFile] = &[
    tfile!(".gitignore", "sdk/templates/python/.gitignore"),
    tfile!("README.md", "sdk/templates/python/README.md"),
    tfile!("app.py", "sdk/templates/python/app.py"),
    tfile!("build.sh", "sdk/templates/python/build.sh", exec),
    tfile!("spade.py", "sdk/templates/python/spade.py"),
    tfile!("wit/world.wit", "sdk/templates/python/wit/world.wit"),
];

const JS_FILES: &[TemplateFile] = &[
    tfile!(".gitignore", "sdk/templates/js/.gitignore"),
    tfile!("README.md", "sdk/templates/js/README.md"),
    tfile!("operator.js", "sdk/templates/js/operator.js"),
    tfile!("build.sh", "sdk/templates/js/build.sh", exec),
    tfile!("spade.js", "sdk/templates/js/spade.js"),
    tfile!("wit/world.wit", "sdk/templates/js/wit/world.wit"),
];

const C_FILES: &[TemplateFile] = &[
    tfile!(".gitignore", "sdk/templates/c/.gitignore"),
    tfile!("README.md", "sdk/templates/c/README.md"),
    tfile!("hello.c", "sdk/templates/c/hello.c"),
    tfile!("build.sh", "sdk/templates/c/build.sh", exec),
    tfile!("spade.c", "sdk/templates/c/spade.c"),
    tfile!("spade.h", "sdk/templates/c/spade.h"),
    tfile!("wit/world.wit", "sdk/templates/c/wit/world.wit"),
];

/// Every scaffold's `spade-plugin.toml` (`__NAME__` filled in): asks for nothing yet.
const MANIFEST_TEMPLATE: &str = include_str!("../../../sdk/templates/spade-plugin.toml");

/// Files of the Rust scaffold; `__NAME__` (operator), `__TYPE__` (its Rust type) and
/// `__CRATE__` (package and plugin name) are filled in.
const RUST_LIB: &str = r#"//! `__NAME__>: WHO`: prints `<greeting> from __NAME__>: WHO` (greeting from the `greeting`
//! param, default "hello"), logs what it did and stores the line as `__NAME__.last`, so
//! later tasks can read `${__NAME__.last}`.
//!
//! Build: `cargo build --release --target wasm32-wasip2` (or `spade plugin build`).
//! Test: `cargo test --release` runs natively against `spade_sdk::testing::MockHost`.

use spade_sdk::{Failure, Operator, Outcome, Request, Result, Value, json, log, output};

pub struct __TYPE__;

impl Operator for __TYPE__ {
    fn run(req: Request) -> Result<Outcome> {
        let who = match &req.command {
            Value::String(s) => s.clone(),
            Value::Null => {
                return Err(Failure::new(format!(
                    "{}: missing argument; write it as `__NAME__>: <who>`",
                    req.location()
                )));
            }
            other => other.to_string(),
        };
        // Looked up on the task and its parents; `${...}` results arrive as strings.
        let greeting: String = req.param_or("greeting", "hello".to_string())?;
        let line = format!("{greeting} from __NAME__>: {who}");
        output::print(&line);
        log::info(format!("greeted {who} with {greeting:?}"));
        Ok(Outcome::done().store("__NAME__", json!({ "last": line })).into())
    }
}

spade_sdk::plugin!(__TYPE__, name = "__CRATE__", operators = ["__NAME__"]);

#[cfg(test)]
mod tests {
    use super::*;
    use spade_sdk::testing::{MockHost, request};

    #[test]
    fn prints_logs_and_stores() {
        let mut host = MockHost::default();
        let req = request("__NAME__").command(json!("world")).param("greeting", json!("hi")).build();
        let outcome = host.run::<__TYPE__>(req).unwrap();
        assert_eq!(host.printed, ["hi from __NAME__>: world"]);
        assert_eq!(host.logs.len(), 1);
        assert_eq!(
            outcome.as_done().unwrap().store_params["__NAME__"],
            json!({ "last": "hi from __NAME__>: world" })
        );
    }

    #[test]
    fn missing_argument_fails_without_printing() {
        let mut host = MockHost::default();
        let err = host.run::<__TYPE__>(request("__NAME__").build()).unwrap_err();
        assert!(err.message.contains("missing argument"), "{err}");
        assert!(host.printed.is_empty());
    }
}
"#;

const RUST_README: &str = r#"# __CRATE__

A spade operator plugin in Rust: `__NAME__>: WHO` prints `<greeting> from __NAME__>: WHO`
(`greeting` param, default "hello"), logs a line and stores it as `__NAME__.last`.
Generated by `spade plugin new --lang rust __NAME__`; the API is described in the spade
repository's `sdk/README.md`.

```sh
cargo test --release                                 # native unit tests (MockHost)
cargo build --release --target wasm32-wasip2         # -> target/wasm32-wasip2/release/__LIB__.wasm
spade plugin build                                   # the same build, then `spade plugin inspect`
spade run my.dig --plugin target/wasm32-wasip2/release/__LIB__.wasm
```

The wasm target: `rustup target add wasm32-wasip2`. A plugin from `--plugin` gets log and
output only; calling another capability (secrets, http, ...) makes spade refuse to load it.

Files: `src/lib.rs` (the operator and its tests), `Cargo.toml` (its own `[workspace]`, so
it is never pulled into a surrounding workspace).
"#;

/// Operator names a scaffold accepts: what `describe` may return and what a `.dig` file can
/// spell as `name>`, kept to one identifier style so the name also works as a Rust, Python,
/// JS and C identifier and file name.
fn check_operator_name(name: &str) -> anyhow::Result<()> {
    let ok = name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if !ok {
        anyhow::bail!(
            "invalid operator name {name:?}: use lowercase letters, digits and `_`, starting with a letter \
             (at most 64 characters), e.g. `my_op`"
        );
    }
    Ok(())
}

/// `my_op` -> `MyOp`, avoiding names the scaffold imports from spade_sdk (and `Self`).
fn rust_type_name(name: &str) -> String {
    let mut out = String::new();
    for part in name.split('_').filter(|p| !p.is_empty()) {
        let mut chars = part.chars();
        if let Some(first) = chars.next() {
            out.push(first.to_ascii_uppercase());
            out.extend(chars);
        }
    }
    if matches!(out.as_str(), "Self" | "Failure" | "Operator" | "Outcome" | "Request" | "Result" | "Value" | "Done") {
        out.push_str("Op");
    }
    out
}

/// A TOML basic string.
fn toml_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// spade's `sdk/` directory: `$SPADE_SDK_PATH`, else the source checkout this executable was
/// built in (found by walking up from the executable, e.g. `<repo>/target/release/spade`).
fn find_sdk() -> anyhow::Result<Option<PathBuf>> {
    let is_sdk = |dir: &Path| {
        std::fs::read_to_string(dir.join("Cargo.toml"))
            .map(|t| t.lines().any(|l| l.trim().replace(' ', "") == "name=\"spade-sdk\""))
            .unwrap_or(false)
    };
    if let Some(path) = std::env::var_os("SPADE_SDK_PATH") {
        let dir = PathBuf::from(path);
        if !is_sdk(&dir) {
            anyhow::bail!(
                "SPADE_SDK_PATH={} is not spade's sdk/ directory (no Cargo.toml of package spade-sdk there)",
                dir.display()
            );
        }
        return Ok(Some(dir.canonicalize().unwrap_or(dir)));
    }
    let exe = std::env::current_exe().ok().and_then(|e| e.canonicalize().ok());
    Ok(exe.and_then(|exe| exe.ancestors().skip(1).map(|d| d.join("sdk")).find(|d| is_sdk(d))))
}

/// Operators the bundled plugins serve; a scaffold with one of these names could never be
/// loaded next to them. None when the runtime cannot start (the check is then skipped).
fn bundled_operators() -> Option<Vec<(String, String)>> {
    let runtime = new_runtime().ok()?;
    let mut ops = Vec::new();
    for (name, bytes) in spade_bundled::PLUGINS {
        if let Ok(report) = runtime.install(name, bytes, grants_for(name)) {
            ops.extend(report.info.operators.into_iter().map(|o| (o, report.info.name.clone())));
        }
    }
    Some(ops)
}

fn write_file(dir: &Path, rel: &str, text: &str, executable: bool) -> anyhow::Result<()> {
    let path = dir.join(rel);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    #[cfg(unix)]
    if executable {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
            .with_context(|| format!("making {} executable", path.display()))?;
    }
    #[cfg(not(unix))]
    let _ = executable;
    Ok(())
}

fn new_plugin(lang: Lang, name: &str, dir: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    check_operator_name(name)?;
    let dir = dir.unwrap_or_else(|| PathBuf::from(name));
    if dir.exists() {
        if !dir.is_dir() {
            anyhow::bail!("{} exists and is not a directory; pick another --dir", dir.display());
        }
        let mut entries = std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))?;
        if entries.next().is_some() {
            anyhow::bail!(
                "{} already exists and is not empty; refusing to write a plugin project into it (pick another --dir or remove it)",
                dir.display()
            );
        }
    }
    if let Some(ops) = bundled_operators()
        && let Some((_, plugin)) = ops.iter().find(|(op, _)| op == name)
    {
        anyhow::bail!(
            "operator {name}> is already served by the bundled plugin {plugin}; spade could not load a second one, pick another name"
        );
    }
    let crate_name = format!("spade-plugin-{}", name.replace('_', "-"));
    let fill = |text: &str| {
        text.replace("__NAME__", name)
            .replace("__TYPE__", &rust_type_name(name))
            .replace("__CRATE__", &crate_name)
            .replace("__LIB__", &crate_name.replace('-', "_"))
    };
    // Resolved before anything is written, so a bad SPADE_SDK_PATH leaves no directory.
    let sdk = if lang == Lang::Rust { find_sdk()? } else { None };
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut notes = Vec::new();
    match lang {
        Lang::Rust => {
            let dependency = match &sdk {
                Some(sdk) => format!("spade-sdk = {{ path = {} }}\n", toml_str(&sdk.to_string_lossy())),
                None => {
                    notes.push(
                        "warning: spade's sdk/ was not found (this spade does not run from a source checkout and \
                         SPADE_SDK_PATH is not set): edit the spade-sdk dependency in Cargo.toml before building"
                            .to_string(),
                    );
                    format!(
                        "# {SDK_MISSING}. Point this at it, e.g.\n\
                     #   spade-sdk = {{ path = \"/path/to/spade/sdk\" }}\n\
                     # or a git dependency on the spade repository:\n\
                     #   spade-sdk = {{ git = \"<spade repository URL>\" }}\n"
                    )
                }
            };
            let manifest = format!(
                "[package]\n\
                 name = \"{crate_name}\"\n\
                 version = \"0.1.0\"   # reported by `describe` as the plugin's version\n\
                 edition = \"2024\"\n\
                 publish = false\n\
                 \n\
                 [lib]\n\
                 crate-type = [\"cdylib\"]   # a wasm32-wasip2 cdylib is a component\n\
                 \n\
                 [dependencies]\n\
                 {dependency}\
                 \n\
                 # A workspace of its own: never pulled into a workspace around this directory.\n\
                 [workspace]\n"
            );
            write_file(&dir, "Cargo.toml", &manifest, false)?;
            write_file(&dir, "src/lib.rs", &fill(RUST_LIB), false)?;
            write_file(&dir, "README.md", &fill(RUST_README), false)?;
            write_file(&dir, ".gitignore", "/target\n*.wasm\n", false)?;
            // Start from the versions spade's own checkout locks (and so has built and
            // cached); cargo drops the entries this project does not use on first build.
            if let Some(lock) = sdk.as_ref().and_then(|s| s.parent()).map(|r| r.join("Cargo.lock"))
                && lock.is_file()
            {
                std::fs::copy(&lock, dir.join("Cargo.lock")).with_context(|| format!("copying {}", lock.display()))?;
            }
            if let Some(sdk) = &sdk {
                notes.push(format!("spade-sdk: path dependency on {}", sdk.display()));
            }
        }
        Lang::Python | Lang::Js | Lang::C => {
            let (files, suffix) = match lang {
                Lang::Python => (PYTHON_FILES, "py"),
                Lang::Js => (JS_FILES, "js"),
                _ => (C_FILES, "c"),
            };
            let template_op = format!("hello_{suffix}");
            let template_plugin = format!("spade-hello-{suffix}");
            for f in files {
                // The helper layers are left as shipped: only their doc comments mention
                // the example operator.
                let helper = f.path.starts_with("spade.");
                let text = if helper {
                    f.text.to_string()
                } else {
                    f.text.replace(&template_plugin, &crate_name).replace(&template_op, name)
                };
                let text = if f.path == "README.md" {
                    format!(
                        "<!-- Generated by `spade plugin new --lang {lang} {name}` from spade's sdk/templates/{lang}. \
                         Build with `spade plugin build` or ./build.sh; the toolchain installer \
                         scripts/install-guest-toolchains.sh is in the spade repository. -->\n\n{text}",
                        lang = lang_dir(lang)
                    )
                } else {
                    text
                };
                write_file(&dir, f.path, &text, f.executable)?;
            }
            for f in WIT_FILES {
                write_file(&dir, f.path, f.text, false)?;
            }
        }
    }
    write_file(&dir, MANIFEST_FILE, &fill(MANIFEST_TEMPLATE), false)?;
    println!("created {} plugin project {} (operator {name}>)", lang_dir(lang), dir.display());
    for n in notes {
        eprintln!("{n}");
    }
    println!("build it with: spade plugin build {}", dir.display());
    Ok(ExitCode::SUCCESS)
}

fn lang_dir(lang: Lang) -> &'static str {
    match lang {
        Lang::Rust => "rust",
        Lang::Python => "python",
        Lang::Js => "js",
        Lang::C => "c",
    }
}

/// Marks the Cargo.toml of a scaffold made without a known sdk/ location.
const SDK_MISSING: &str = "spade's sdk/ was not found when this project was made";

/// `cargo build --release --target wasm32-wasip2` in `dir`; the components it produced.
fn build_rust(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let manifest = std::fs::read_to_string(dir.join("Cargo.toml")).unwrap_or_default();
    if manifest.contains(SDK_MISSING) && !manifest.lines().any(|l| l.trim_start().starts_with("spade-sdk")) {
        anyhow::bail!(
            "{}: the spade-sdk dependency is still commented out (spade's sdk/ was not found when the \
             project was made); point it at spade's sdk/ directory first",
            dir.join("Cargo.toml").display()
        );
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(&cargo)
        .args(["build", "--release", "--target", "wasm32-wasip2", "--message-format=json-render-diagnostics"])
        .current_dir(dir)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running {} (is Rust installed?)", cargo.to_string_lossy()))?;
    if !out.status.success() {
        anyhow::bail!(
            "cargo build of {} failed (see above); if rustc cannot find `core`/`std`, add the target with \
             `rustup target add wasm32-wasip2`",
            dir.display()
        );
    }
    let mut wasm = Vec::new();
    for line in out.stdout.split(|&b| b == b'\n') {
        let Ok(msg) = serde_json::from_slice::<serde_json::Value>(line) else { continue };
        if msg["reason"] != "compiler-artifact" {
            continue;
        }
        let is_cdylib = msg["target"]["kind"].as_array().is_some_and(|k| k.iter().any(|k| k == "cdylib"));
        if !is_cdylib {
            continue;
        }
        for f in msg["filenames"].as_array().into_iter().flatten() {
            if let Some(f) = f.as_str().filter(|f| f.ends_with(".wasm")) {
                wasm.push(PathBuf::from(f));
            }
        }
    }
    if wasm.is_empty() {
        anyhow::bail!(
            "cargo built {} but produced no .wasm component: its Cargo.toml needs `[lib] crate-type = [\"cdylib\"]`",
            dir.display()
        );
    }
    Ok(wasm)
}

/// `build.sh` in `dir`; the component it names on the last line of its output.
fn build_script(dir: &Path) -> anyhow::Result<PathBuf> {
    let script = dir.join("build.sh");
    let out = Command::new("bash")
        .arg("build.sh")
        .current_dir(dir)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running {} with bash", script.display()))?;
    if !out.status.success() {
        anyhow::bail!("{} failed (see above)", script.display());
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().rev().map(str::trim).find(|l| !l.is_empty()).unwrap_or("");
    let path = dir.join(last);
    if last.is_empty() || !path.is_file() {
        anyhow::bail!(
            "{} succeeded but did not print the path of the component it built as its last line (got {last:?})",
            script.display()
        );
    }
    Ok(path)
}

fn build_plugin(dir: &Path) -> anyhow::Result<ExitCode> {
    // Checked before the (slow) build, so a typo in it fails at once.
    let manifest_path = dir.join(MANIFEST_FILE);
    let manifest = match std::fs::read_to_string(&manifest_path) {
        Ok(text) => {
            Manifest::parse(&text)
                .map_err(|e| anyhow::anyhow!("{}: invalid plugin manifest: {e}", manifest_path.display()))?;
            Some(text)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(anyhow::anyhow!("reading {}: {e}", manifest_path.display())),
    };
    let wasm = if dir.join("Cargo.toml").is_file() {
        build_rust(dir)?
    } else if dir.join("build.sh").is_file() {
        vec![build_script(dir)?]
    } else {
        anyhow::bail!(
            "{} is not a plugin project: it has neither Cargo.toml (Rust) nor build.sh (python/js/c); \
             create one with `spade plugin new`",
            dir.display()
        );
    };
    for (i, path) in wasm.iter().enumerate() {
        if i > 0 {
            println!();
        }
        if let Some(text) = &manifest {
            let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            let with =
                spade_runtime::embed_manifest(&bytes, text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            std::fs::write(path, with).with_context(|| format!("writing {}", path.display()))?;
        }
        println!("built:        {}", path.display());
        inspect(path)?;
    }
    if manifest.is_none() {
        eprintln!(
            "note: {} has no {MANIFEST_FILE}, so the component asks for whatever it imports; `spade plugin new` \
             writes one to start from",
            dir.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}
