//! Versions of the `spade:operator` contract this host runs: 0.2.x (current, `wit/operator.wit`)
//! and 0.1.x (frozen, `wit/v0.1/operator.wit`).
//!
//! A component's contract version is read from its `spade:operator/*@X.Y.Z` imports (every
//! plugin imports at least `types`, which its exports use). Each supported version has its
//! own generated bindings; a 0.1 plugin's imports are served by the same host functions as
//! 0.2's (the interfaces are identical) and its request/outcome records are converted
//! field by field. Anything else is refused at install time, naming the versions we support.

use wasmtime::Store;
use wasmtime::component::{HasSelf, InstancePre, Linker};

use crate::host::{
    HostState, Plugin, PluginPre, wit_engine, wit_expressions, wit_log, wit_output, wit_secrets, wit_types,
    wit_workflows,
};

/// The current contract version (what `wit/operator.wit` declares).
pub const WIT_VERSION: &str = "0.2.0";
/// Every contract version this host instantiates, newest first.
pub const SUPPORTED_WIT_VERSIONS: &[&str] = &["0.2.0", "0.1.0"];

/// The frozen 0.1 bindings.
mod v01 {
    wasmtime::component::bindgen!({
        path: "../../wit/v0.1",
        world: "plugin",
    });
}

use v01::spade::operator as old;

/// Which contract a component was built against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Contract {
    V0_2,
    V0_1,
}

/// What the imports say about the contract version.
pub(crate) enum Detected {
    Supported(Contract),
    /// Imports of `spade:operator` at a version this host does not run.
    Unsupported(String),
    /// No versioned `spade:operator` import at all.
    Missing,
    /// Imports of several versions at once.
    Mixed(Vec<String>),
}

fn parse(v: &str) -> Option<(u64, u64, u64)> {
    let core = v.split(['-', '+']).next()?;
    let mut it = core.split('.').map(|p| p.parse::<u64>().ok());
    let r = (it.next()??, it.next()??, it.next()??);
    it.next().is_none().then_some(r)
}

/// Reads the contract version from import names like `spade:operator/log@0.1.0`.
pub(crate) fn detect<'a>(imports: impl IntoIterator<Item = &'a str>) -> Detected {
    let mut versions: Vec<String> = Vec::new();
    for name in imports {
        let Some(rest) = name.strip_prefix("spade:operator/") else {
            continue;
        };
        let version = rest.split_once('@').map_or("", |(_, v)| v).to_string();
        if !versions.contains(&version) {
            versions.push(version);
        }
    }
    match versions.as_slice() {
        [] => Detected::Missing,
        [v] => match parse(v) {
            // Semver for 0.x: 0.Y.* are compatible with each other, 0.Y and 0.Z are not.
            Some((0, 2, _)) => Detected::Supported(Contract::V0_2),
            Some((0, 1, _)) => Detected::Supported(Contract::V0_1),
            _ if v.is_empty() => Detected::Unsupported("(no version)".into()),
            _ => Detected::Unsupported(v.clone()),
        },
        _ => Detected::Mixed(versions),
    }
}

/// Whether a plugin built against contract `version` (e.g. `0.2.0`) runs on this host.
pub fn supports_wit_version(version: &str) -> bool {
    matches!(parse(version), Some((0, 2, _)) | Some((0, 1, _)))
}

/// The supported versions as a user reads them: `0.2.x (current) and 0.1.x`.
pub fn supported_versions_text() -> String {
    "spade:operator 0.2.x (current) and 0.1.x".to_string()
}

/// Adds both versions' spade imports to the linker.
pub(crate) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    Plugin::add_to_linker::<HostState, HasSelf<HostState>>(linker, |s| s)?;
    v01::Plugin::add_to_linker::<HostState, HasSelf<HostState>>(linker, |s| s)?;
    Ok(())
}

/// A pre-instantiated plugin of either version.
pub(crate) enum AnyPre {
    V0_2(PluginPre<HostState>),
    V0_1(v01::PluginPre<HostState>),
}

/// An instantiated plugin of either version.
pub(crate) enum AnyPlugin {
    V0_2(Plugin),
    V0_1(v01::Plugin),
}

impl AnyPre {
    pub fn new(contract: Contract, pre: InstancePre<HostState>) -> wasmtime::Result<AnyPre> {
        Ok(match contract {
            Contract::V0_2 => AnyPre::V0_2(PluginPre::new(pre)?),
            Contract::V0_1 => AnyPre::V0_1(v01::PluginPre::new(pre)?),
        })
    }

    pub fn instantiate(&self, store: &mut Store<HostState>) -> wasmtime::Result<AnyPlugin> {
        Ok(match self {
            AnyPre::V0_2(p) => AnyPlugin::V0_2(p.instantiate(store)?),
            AnyPre::V0_1(p) => AnyPlugin::V0_1(p.instantiate(store)?),
        })
    }
}

impl AnyPlugin {
    pub fn call_describe(&self, store: &mut Store<HostState>) -> wasmtime::Result<wit_types::PluginInfo> {
        match self {
            AnyPlugin::V0_2(p) => p.call_describe(store),
            AnyPlugin::V0_1(p) => {
                let i = p.call_describe(store)?;
                Ok(wit_types::PluginInfo {
                    name: i.name,
                    version: i.version,
                    operators: i.operators,
                    wit_version: i.wit_version,
                })
            }
        }
    }

    pub fn call_run(
        &self,
        store: &mut Store<HostState>,
        r: &wit_types::TaskRequest,
    ) -> wasmtime::Result<wit_types::Outcome> {
        match self {
            AnyPlugin::V0_2(p) => p.call_run(store, r),
            AnyPlugin::V0_1(p) => {
                let req = old::types::TaskRequest {
                    operator: r.operator.clone(),
                    task_name: r.task_name.clone(),
                    project_name: r.project_name.clone(),
                    workflow_name: r.workflow_name.clone(),
                    attempt_id: r.attempt_id,
                    session_id: r.session_id,
                    session_uuid: r.session_uuid.clone(),
                    session_time: r.session_time.clone(),
                    timezone: r.timezone.clone(),
                    retry_attempt_name: r.retry_attempt_name.clone(),
                    command: r.command.clone(),
                    params: r.params.clone(),
                    local_params: r.local_params.clone(),
                    raw: r.raw.clone(),
                    state: r.state.clone(),
                    retry_count: r.retry_count,
                };
                Ok(match p.call_run(store, &req)? {
                    old::types::Outcome::Done(d) => wit_types::Outcome::Done(wit_types::Done {
                        store_params: d.store_params,
                        reset_store_params: d.reset_store_params,
                        export_params: d.export_params,
                        subtasks: d.subtasks,
                    }),
                    old::types::Outcome::Poll(p) => {
                        wit_types::Outcome::Poll(wit_types::Poll { after_seconds: p.after_seconds, state: p.state })
                    }
                    old::types::Outcome::Error(f) => {
                        wit_types::Outcome::Error(wit_types::Failure { message: f.message, retryable: f.retryable })
                    }
                })
            }
        }
    }
}

// The 0.1 interfaces are the 0.2 ones under another version: forward to the same code.

impl old::types::Host for HostState {}

impl old::log::Host for HostState {
    fn write(&mut self, level: old::log::Level, message: String) {
        use old::log::Level as L;
        let level = match level {
            L::Trace => wit_log::Level::Trace,
            L::Debug => wit_log::Level::Debug,
            L::Info => wit_log::Level::Info,
            L::Warn => wit_log::Level::Warn,
            L::Error => wit_log::Level::Error,
        };
        wit_log::Host::write(self, level, message)
    }
}

impl old::output::Host for HostState {
    fn print(&mut self, line: String) {
        wit_output::Host::print(self, line)
    }
}

impl old::secrets::Host for HostState {
    fn get(&mut self, key: String) -> Option<String> {
        wit_secrets::Host::get(self, key)
    }
}

impl old::workflows::Host for HostState {
    fn load(&mut self, path: String) -> Result<String, String> {
        wit_workflows::Host::load(self, path)
    }
}

impl old::expressions::Host for HostState {
    fn render(&mut self, template: String, scope: String) -> Result<String, String> {
        wit_expressions::Host::render(self, template, scope)
    }
}

fn old_ref(r: wit_engine::AttemptRef) -> old::engine::AttemptRef {
    old::engine::AttemptRef {
        attempt_id: r.attempt_id,
        session_id: r.session_id,
        state: match r.state {
            wit_engine::AttemptState::Running => old::engine::AttemptState::Running,
            wit_engine::AttemptState::Success => old::engine::AttemptState::Success,
            wit_engine::AttemptState::Failure => old::engine::AttemptState::Failure,
        },
    }
}

impl old::engine::Host for HostState {
    fn start_or_find(&mut self, req: old::engine::StartRequest) -> Result<old::engine::AttemptRef, String> {
        let req = wit_engine::StartRequest {
            project_name: req.project_name,
            workflow_name: req.workflow_name,
            session_time: req.session_time,
            attempt_name: req.attempt_name,
            params: req.params,
            rerun_on: req.rerun_on,
        };
        wit_engine::Host::start_or_find(self, req).map(old_ref)
    }

    fn status(&mut self, attempt_id: i64) -> Result<old::engine::AttemptRef, String> {
        wit_engine::Host::status(self, attempt_id).map(old_ref)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(names: &[&str]) -> String {
        match detect(names.iter().copied()) {
            Detected::Supported(c) => format!("{c:?}"),
            Detected::Unsupported(v) => format!("unsupported {v}"),
            Detected::Missing => "missing".into(),
            Detected::Mixed(v) => format!("mixed {}", v.join(",")),
        }
    }

    #[test]
    fn detects_versions_from_imports() {
        assert_eq!(d(&["wasi:io/streams@0.2.0", "spade:operator/types@0.2.0"]), "V0_2");
        assert_eq!(d(&["spade:operator/types@0.2.3", "spade:operator/log@0.2.3"]), "V0_2");
        assert_eq!(d(&["spade:operator/types@0.1.0"]), "V0_1");
        assert_eq!(d(&["spade:operator/types@9.0.0"]), "unsupported 9.0.0");
        assert_eq!(d(&["spade:operator/types@0.9.0"]), "unsupported 0.9.0");
        assert_eq!(d(&["spade:operator/types"]), "unsupported (no version)");
        assert_eq!(d(&["wasi:io/streams@0.2.0"]), "missing");
        assert_eq!(d(&["spade:operator/types@0.1.0", "spade:operator/log@0.2.0"]), "mixed 0.1.0,0.2.0");
    }
}
