//! spade-registry: operator plugins from a registry.
//!
//! A registry is a tree of static files, served by any web server or read from a
//! directory, so publishing needs no service of its own:
//!
//! ```text
//! index/<name>.json                   every published version of plugin <name> (IndexFile)
//! files/<name>/<name>-<version>.wasm  the components
//! ```
//!
//! A project asks for plugins by name and semver range (`^1.2`, `~1.2.3`, `>=1, <3`, `*`);
//! [`install`] picks the newest version that matches, is not yanked and is built for a
//! contract version this spade runs, downloads it, checks its sha256 against the index,
//! keeps it in a content-addressed cache shared by all projects, and records name, version,
//! source and digest in the project's lockfile (`spade.lock`). Later runs use the locked
//! version as long as it still satisfies the range, and refuse any file whose digest is not
//! the locked one: what a lockfile names is exactly what runs, on every machine.
//!
//! This crate knows nothing of wasm: the caller says which contract versions it runs and
//! describes components it publishes.

mod cache;
mod index;
mod lock;
mod source;

use std::collections::BTreeSet;
use std::path::Path;

use semver::{Version, VersionReq};

pub use cache::Cache;
pub use index::{IndexEntry, IndexFile, check_name};
pub use lock::{LOCK_FILE, LockedPlugin, Lockfile};
pub use source::Registry;

/// Largest index file read.
pub const MAX_INDEX_BYTES: u64 = 8 << 20;
/// Largest component downloaded (interpreted-language plugins carry their runtime: ~20 MB).
pub const MAX_COMPONENT_BYTES: u64 = 256 << 20;

/// Why a registry operation failed: a message naming the plugin, version, registry and
/// what to do.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct RegistryError(pub String);

pub type Result<T> = std::result::Result<T, RegistryError>;

fn err<T>(message: impl Into<String>) -> Result<T> {
    Err(RegistryError(message.into()))
}

/// `sha256:<hex>` of `bytes`: the digest format of indexes and lockfiles.
pub fn digest_of(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// A plugin a project asks for.
#[derive(Clone, Debug)]
pub struct Wanted {
    pub name: String,
    pub req: VersionReq,
    pub registry: Registry,
}

/// Which locked versions [`install`] may replace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Update {
    /// Keep every locked version that still satisfies its range.
    None,
    /// Re-resolve these plugins to the newest matching versions.
    Only(BTreeSet<String>),
    /// Re-resolve every plugin.
    All,
}

/// A plugin ready to load.
#[derive(Clone, Debug)]
pub struct Installed {
    pub locked: LockedPlugin,
    pub bytes: Vec<u8>,
    /// Whether the lockfile did not already name this version.
    pub newly_locked: bool,
}

/// The newest version in `index` matching `req` that is not yanked and whose contract
/// version `runs` accepts.
pub fn resolve<'a>(index: &'a IndexFile, req: &VersionReq, runs: &dyn Fn(&str) -> bool) -> Result<&'a IndexEntry> {
    let matching: Vec<&IndexEntry> = index.versions.iter().filter(|e| req.matches(&e.version)).collect();
    let usable = matching.iter().filter(|e| !e.yanked && runs(&e.wit)).max_by(|a, b| a.version.cmp(&b.version));
    if let Some(e) = usable {
        return Ok(e);
    }
    let all: Vec<String> = index.versions.iter().map(|e| e.version.to_string()).collect();
    if matching.is_empty() {
        return err(format!(
            "no version of {} matches {req} (published: {})",
            index.name,
            if all.is_empty() { "none".into() } else { all.join(", ") }
        ));
    }
    let why: Vec<String> = matching
        .iter()
        .map(|e| {
            if e.yanked {
                format!("{} is yanked", e.version)
            } else {
                format!("{} is built for spade:operator@{}, which this spade does not run", e.version, e.wit)
            }
        })
        .collect();
    err(format!("no usable version of {} matches {req}: {}", index.name, why.join("; ")))
}

/// Makes every plugin of `wanted` available: from the lock where it still fits (unless
/// `update` says otherwise), else resolved anew; from the cache, else downloaded and
/// checked. Returns the plugins (in `wanted` order) and the lockfile to write, which names
/// exactly the wanted plugins.
pub fn install(
    wanted: &[Wanted],
    lock: &Lockfile,
    cache: &Cache,
    update: &Update,
    runs: &dyn Fn(&str) -> bool,
) -> Result<(Vec<Installed>, Lockfile)> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for w in wanted {
        check_name(&w.name)?;
        if !seen.insert(w.name.clone()) {
            return err(format!("plugin {} is asked for twice; list it once", w.name));
        }
        let source = w.registry.id();
        let may_keep = match update {
            Update::None => true,
            Update::Only(names) => !names.contains(&w.name),
            Update::All => false,
        };
        let kept = lock
            .plugins
            .iter()
            .find(|p| p.name == w.name && p.source == source && w.req.matches(&p.version))
            .filter(|_| may_keep);
        let installed = match kept {
            Some(locked) => {
                Installed { bytes: fetch_locked(w, locked, cache)?, locked: locked.clone(), newly_locked: false }
            }
            None => {
                let index = w.registry.index(&w.name)?;
                let entry = resolve(&index, &w.req, runs)
                    .map_err(|e| RegistryError(format!("{e} (registry {})", w.registry)))?;
                let bytes = match cache.get(&entry.digest) {
                    Some(b) => b,
                    None => download(w, entry, cache)?,
                };
                Installed {
                    locked: LockedPlugin {
                        name: w.name.clone(),
                        version: entry.version.clone(),
                        source,
                        digest: entry.digest.clone(),
                    },
                    bytes,
                    newly_locked: true,
                }
            }
        };
        out.push(installed);
    }
    let mut plugins: Vec<LockedPlugin> = out.iter().map(|i| i.locked.clone()).collect();
    plugins.sort_by(|a, b| a.name.cmp(&b.name));
    Ok((out, Lockfile { plugins }))
}

/// The bytes of a locked plugin: from the cache, else from the registry, which must still
/// serve exactly the locked file.
fn fetch_locked(w: &Wanted, locked: &LockedPlugin, cache: &Cache) -> Result<Vec<u8>> {
    if let Some(bytes) = cache.get(&locked.digest) {
        return Ok(bytes);
    }
    let index = w.registry.index(&w.name)?;
    let Some(entry) = index.versions.iter().find(|e| e.version == locked.version) else {
        return err(format!(
            "{} {} is locked in {LOCK_FILE} but registry {} no longer lists it; \
             run `spade plugin update {}` to pick another version",
            w.name, locked.version, w.registry, w.name
        ));
    };
    if entry.digest != locked.digest {
        return err(format!(
            "registry {} now lists {} {} with digest {}, but {LOCK_FILE} locked {}: the published \
             file was replaced. Refusing to run it; if the change is expected, run \
             `spade plugin update {}`",
            w.registry, w.name, locked.version, entry.digest, locked.digest, w.name
        ));
    }
    download(w, entry, cache)
}

/// Downloads `entry`'s file, checks it against the entry's digest and caches it.
fn download(w: &Wanted, entry: &IndexEntry, cache: &Cache) -> Result<Vec<u8>> {
    let bytes = w.registry.fetch(&entry.file, MAX_COMPONENT_BYTES)?;
    let got = digest_of(&bytes);
    if got != entry.digest {
        return err(format!(
            "{} {} from registry {} has digest {got}, but the index says {}: the download is \
             corrupt or was tampered with; nothing was installed",
            w.name, entry.version, w.registry, entry.digest
        ));
    }
    cache.put(&entry.digest, &bytes)?;
    Ok(bytes)
}

/// What the publisher says about a component (read from it with `describe`).
#[derive(Clone, Debug)]
pub struct PluginMeta {
    pub name: String,
    pub version: Version,
    /// The contract version it was built against, e.g. `0.2.0`.
    pub wit: String,
    pub operators: Vec<String>,
}

/// Whether [`publish`] added a version or found it already there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Published {
    Added,
    AlreadyThere,
}

/// Adds `bytes` as `meta.version` of `meta.name` to the directory registry at `root`
/// (created when missing). A version is immutable: publishing it again with the same
/// bytes does nothing, with other bytes fails.
pub fn publish(root: &Path, bytes: &[u8], meta: &PluginMeta) -> Result<(IndexEntry, Published)> {
    index::publish(root, bytes, meta)
}

/// Marks `version` of `name` in the directory registry at `root` as yanked (or not):
/// resolution skips yanked versions, but lockfiles naming them keep working.
pub fn yank(root: &Path, name: &str, version: &Version, yanked: bool) -> Result<()> {
    index::yank(root, name, version, yanked)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(v: &str, wit: &str, yanked: bool) -> IndexEntry {
        IndexEntry {
            version: v.parse().unwrap(),
            digest: format!("sha256:{v}"),
            wit: wit.into(),
            operators: vec!["op".into()],
            file: format!("files/p/p-{v}.wasm"),
            yanked,
        }
    }

    fn index(entries: Vec<IndexEntry>) -> IndexFile {
        IndexFile { name: "p".into(), versions: entries }
    }

    fn runs(wit: &str) -> bool {
        wit.starts_with("0.2.") || wit.starts_with("0.1.")
    }

    #[test]
    fn resolution_takes_the_newest_usable_match() {
        let idx = index(vec![
            entry("1.0.0", "0.2.0", false),
            entry("1.2.0", "0.2.0", false),
            entry("1.3.0", "0.2.0", true),
            entry("1.4.0", "0.9.0", false),
            entry("1.5.0-beta.1", "0.2.0", false),
            entry("2.0.0", "0.2.0", false),
        ]);
        let pick = |r: &str| resolve(&idx, &r.parse().unwrap(), &runs).map(|e| e.version.to_string());
        assert_eq!(pick("^1").unwrap(), "1.2.0", "yanked, unrunnable and pre-releases are skipped");
        assert_eq!(pick("*").unwrap(), "2.0.0");
        assert_eq!(pick("~1.0").unwrap(), "1.0.0");
        assert_eq!(pick(">=1.5.0-beta.1, <2").unwrap(), "1.5.0-beta.1");
        let none = pick("^3").unwrap_err().to_string();
        assert!(none.contains("no version of p matches ^3") && none.contains("1.0.0, 1.2.0"), "{none}");
        let why = pick("~1.3").unwrap_err().to_string();
        assert!(why.contains("1.3.0 is yanked"), "{why}");
        let why = pick("~1.4").unwrap_err().to_string();
        assert!(why.contains("spade:operator@0.9.0"), "{why}");
    }

    fn meta(v: &str) -> PluginMeta {
        PluginMeta {
            name: "acme".into(),
            version: v.parse().unwrap(),
            wit: "0.2.0".into(),
            operators: vec!["acme".into()],
        }
    }

    #[test]
    fn install_locks_keeps_updates_and_checks_digests() {
        let reg_dir = tempfile::tempdir().unwrap();
        let cache_dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(cache_dir.path());
        let registry = Registry::Dir(reg_dir.path().into());
        publish(reg_dir.path(), b"v1.0", &meta("1.0.0")).unwrap();
        let wanted = vec![Wanted { name: "acme".into(), req: "^1".parse().unwrap(), registry: registry.clone() }];

        let (got, lock) = install(&wanted, &Lockfile::default(), &cache, &Update::None, &runs).unwrap();
        assert_eq!((got[0].bytes.as_slice(), got[0].newly_locked), (&b"v1.0"[..], true));
        assert_eq!(lock.plugins[0].version.to_string(), "1.0.0");
        assert_eq!(lock.plugins[0].digest, digest_of(b"v1.0"));

        // A newer version does not move a lock that still fits; an update does.
        publish(reg_dir.path(), b"v1.1", &meta("1.1.0")).unwrap();
        let (got, same) = install(&wanted, &lock, &cache, &Update::None, &runs).unwrap();
        assert_eq!((got[0].locked.version.to_string(), got[0].newly_locked), ("1.0.0".into(), false));
        assert_eq!(same, lock);
        let only: BTreeSet<String> = ["acme".to_string()].into();
        let (got, newer) = install(&wanted, &lock, &cache, &Update::Only(only), &runs).unwrap();
        assert_eq!(got[0].bytes, b"v1.1");
        assert_eq!(newer.plugins[0].version.to_string(), "1.1.0");

        // A range the lock no longer fits re-resolves.
        let pinned = vec![Wanted { req: "=1.0.0".parse().unwrap(), ..wanted[0].clone() }];
        let (got, _) = install(&pinned, &newer, &cache, &Update::None, &runs).unwrap();
        assert_eq!(got[0].bytes, b"v1.0");

        // The registry replaces the locked file: with the cache gone, install refuses.
        let file = reg_dir.path().join("files/acme/acme-1.0.0.wasm");
        std::fs::write(&file, b"evil").unwrap();
        let index_path = reg_dir.path().join("index/acme.json");
        let index = std::fs::read_to_string(&index_path).unwrap().replace(&digest_of(b"v1.0"), &digest_of(b"evil"));
        std::fs::write(&index_path, index).unwrap();
        let empty = Cache::new(cache_dir.path().join("other"));
        let msg = install(&wanted, &lock, &empty, &Update::None, &runs).unwrap_err().to_string();
        assert!(msg.contains("the published file was replaced"), "{msg}");

        // A download that does not match its index entry is never cached or returned.
        std::fs::write(&file, b"corrupt").unwrap();
        let msg = install(&pinned, &Lockfile::default(), &empty, &Update::None, &runs).unwrap_err().to_string();
        assert!(msg.contains("corrupt or was tampered with"), "{msg}");
        assert_eq!(empty.get(&digest_of(b"corrupt")), None);

        let twice = vec![wanted[0].clone(), wanted[0].clone()];
        assert!(install(&twice, &lock, &cache, &Update::None, &runs).unwrap_err().to_string().contains("twice"));
    }
}
