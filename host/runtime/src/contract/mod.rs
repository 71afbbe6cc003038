//! Versions of the `spade:operator` contract this host runs: 0.3.x (current, `wit/operator.wit`,
//! bindings in `crate::host`), and the frozen 0.2.x and 0.1.x (`wit/v0.2`, `wit/v0.1`), one
//! module each ([`v0_2`], [`v0_1`]), like Zed's `since_v0_x_y` modules.
//!
//! A component's contract version is read from its `spade:operator/*@X.Y.Z` imports (every
//! plugin imports at least `types`, which its exports use). Each supported version has its
//! own generated bindings; an older plugin's imports are served by the same host functions
//! as the current version's (every interface it has is unchanged since) and its
//! request/outcome records are converted field by field. Anything else is refused at
//! install time, naming the versions we support.

#[macro_use]
mod frozen;
pub(crate) mod v0_1;
pub(crate) mod v0_2;

use wasmtime::Store;
use wasmtime::component::{HasSelf, InstancePre, Linker};

use crate::host::{HostState, Plugin, PluginPre, wit_types};

/// The current contract version (what `wit/operator.wit` declares).
pub const WIT_VERSION: &str = "0.3.0";
/// Every contract version this host instantiates, newest first.
pub const SUPPORTED_WIT_VERSIONS: &[&str] = &["0.3.0", "0.2.0", "0.1.0"];

/// Which contract a component was built against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Contract {
    V0_3,
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
            Some((0, 3, _)) => Detected::Supported(Contract::V0_3),
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
    matches!(parse(version), Some((0, 3, _)) | Some((0, 2, _)) | Some((0, 1, _)))
}

/// The supported versions as a user reads them.
pub fn supported_versions_text() -> String {
    "spade:operator 0.3.x (current), 0.2.x and 0.1.x".to_string()
}

/// Adds every version's spade imports to the linker.
pub(crate) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    Plugin::add_to_linker::<HostState, HasSelf<HostState>>(linker, |s| s)?;
    v0_2::Plugin::add_to_linker::<HostState, HasSelf<HostState>>(linker, |s| s)?;
    v0_1::Plugin::add_to_linker::<HostState, HasSelf<HostState>>(linker, |s| s)?;
    Ok(())
}

/// A pre-instantiated plugin of either version.
pub(crate) enum AnyPre {
    V0_3(PluginPre<HostState>),
    V0_2(v0_2::PluginPre<HostState>),
    V0_1(v0_1::PluginPre<HostState>),
}

/// An instantiated plugin of any version.
pub(crate) enum AnyPlugin {
    V0_3(Plugin),
    V0_2(v0_2::Plugin),
    V0_1(v0_1::Plugin),
}

impl AnyPre {
    pub fn new(contract: Contract, pre: InstancePre<HostState>) -> wasmtime::Result<AnyPre> {
        Ok(match contract {
            Contract::V0_3 => AnyPre::V0_3(PluginPre::new(pre)?),
            Contract::V0_2 => AnyPre::V0_2(v0_2::PluginPre::new(pre)?),
            Contract::V0_1 => AnyPre::V0_1(v0_1::PluginPre::new(pre)?),
        })
    }

    pub fn instantiate(&self, store: &mut Store<HostState>) -> wasmtime::Result<AnyPlugin> {
        Ok(match self {
            AnyPre::V0_3(p) => AnyPlugin::V0_3(p.instantiate(store)?),
            AnyPre::V0_2(p) => AnyPlugin::V0_2(p.instantiate(store)?),
            AnyPre::V0_1(p) => AnyPlugin::V0_1(p.instantiate(store)?),
        })
    }
}

impl AnyPlugin {
    pub fn call_describe(&self, store: &mut Store<HostState>) -> wasmtime::Result<wit_types::PluginInfo> {
        match self {
            AnyPlugin::V0_3(p) => p.call_describe(store),
            AnyPlugin::V0_2(p) => v0_2::describe(p, store),
            AnyPlugin::V0_1(p) => v0_1::describe(p, store),
        }
    }

    pub fn call_run(
        &self,
        store: &mut Store<HostState>,
        r: &wit_types::TaskRequest,
    ) -> wasmtime::Result<wit_types::Outcome> {
        match self {
            AnyPlugin::V0_3(p) => p.call_run(store, r),
            AnyPlugin::V0_2(p) => v0_2::run(p, store, r),
            AnyPlugin::V0_1(p) => v0_1::run(p, store, r),
        }
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
        assert_eq!(d(&["wasi:io/streams@0.2.0", "spade:operator/types@0.3.0"]), "V0_3");
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
