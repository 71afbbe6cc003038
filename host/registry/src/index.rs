//! The registry index: one JSON file per plugin listing its published versions, and the
//! two writes a directory registry supports (publish, yank).

use std::path::Path;

use semver::Version;
use serde::{Deserialize, Serialize};

use crate::{PluginMeta, Published, RegistryError, Result, digest_of, err};

/// `index/<name>.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IndexFile {
    pub name: String,
    #[serde(default)]
    pub versions: Vec<IndexEntry>,
}

/// One published version.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IndexEntry {
    pub version: Version,
    /// `sha256:<hex>` of the component file.
    pub digest: String,
    /// The `spade:operator` version the component was built against.
    pub wit: String,
    pub operators: Vec<String>,
    /// The component, relative to the registry root.
    pub file: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub yanked: bool,
}

/// Plugin names are what `describe` reports and what file names are made of: lowercase
/// letters, digits, `-` and `_`, starting with a letter, at most 64 characters.
pub fn check_name(name: &str) -> Result<()> {
    let ok = (1..=64).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        err(format!("invalid plugin name {name:?}: use lowercase letters, digits, `-` and `_`, starting with a letter"))
    }
}

pub(crate) fn index_path(name: &str) -> String {
    format!("index/{name}.json")
}

impl IndexFile {
    pub(crate) fn parse(text: &[u8], name: &str, registry: &dyn std::fmt::Display) -> Result<IndexFile> {
        let index: IndexFile = serde_json::from_slice(text).map_err(|e| {
            RegistryError(format!("registry {registry}: {} is not a valid index: {e}", index_path(name)))
        })?;
        if index.name != name {
            return err(format!(
                "registry {registry}: {} describes plugin {:?}, not {name}",
                index_path(name),
                index.name
            ));
        }
        for e in &index.versions {
            let relative = !e.file.starts_with('/') && !e.file.split('/').any(|p| p == ".." || p.is_empty());
            if !relative || !e.digest.starts_with("sha256:") {
                return err(format!(
                    "registry {registry}: {} lists {name} {} with file {:?} and digest {:?}; \
                     expected a path inside the registry and a sha256: digest",
                    index_path(name),
                    e.version,
                    e.file,
                    e.digest
                ));
            }
        }
        Ok(index)
    }
}

fn read_index(root: &Path, name: &str) -> Result<IndexFile> {
    let path = root.join(index_path(name));
    match std::fs::read(&path) {
        Ok(bytes) => IndexFile::parse(&bytes, name, &root.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Ok(IndexFile { name: name.to_string(), versions: Vec::new() })
        }
        Err(e) => err(format!("reading {}: {e}", path.display())),
    }
}

/// Writes `bytes` to `path` through a temporary file and a rename, so readers never see a
/// half-written file.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let fail = |e: std::io::Error| RegistryError(format!("writing {}: {e}", path.display()));
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(fail)?;
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes).map_err(fail)?;
    std::fs::rename(&tmp, path).map_err(fail)
}

fn write_index(root: &Path, index: &mut IndexFile) -> Result<()> {
    index.versions.sort_by(|a, b| a.version.cmp(&b.version));
    let mut text = serde_json::to_vec_pretty(index).expect("an index serializes");
    text.push(b'\n');
    write_atomic(&root.join(index_path(&index.name)), &text)
}

pub(crate) fn publish(root: &Path, bytes: &[u8], meta: &PluginMeta) -> Result<(IndexEntry, Published)> {
    check_name(&meta.name)?;
    let mut index = read_index(root, &meta.name)?;
    let digest = digest_of(bytes);
    if let Some(existing) = index.versions.iter().find(|e| e.version == meta.version) {
        if existing.digest == digest {
            return Ok((existing.clone(), Published::AlreadyThere));
        }
        return err(format!(
            "{} {} is already published in {} with digest {}; a published version never changes, \
             so bump the plugin's version and publish that",
            meta.name,
            meta.version,
            root.display(),
            existing.digest
        ));
    }
    let file = format!("files/{0}/{0}-{1}.wasm", meta.name, meta.version);
    write_atomic(&root.join(&file), bytes)?;
    let entry = IndexEntry {
        version: meta.version.clone(),
        digest,
        wit: meta.wit.clone(),
        operators: meta.operators.clone(),
        file,
        yanked: false,
    };
    index.versions.push(entry.clone());
    write_index(root, &mut index)?;
    Ok((entry, Published::Added))
}

pub(crate) fn yank(root: &Path, name: &str, version: &Version, yanked: bool) -> Result<()> {
    check_name(name)?;
    let mut index = read_index(root, name)?;
    let Some(entry) = index.versions.iter_mut().find(|e| &e.version == version) else {
        return err(format!("{name} {version} is not published in {}", root.display()));
    };
    entry.yanked = yanked;
    write_index(root, &mut index)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(v: &str) -> PluginMeta {
        PluginMeta {
            name: "acme-slack".into(),
            version: v.parse().unwrap(),
            wit: "0.2.0".into(),
            operators: vec!["slack".into()],
        }
    }

    #[test]
    fn versions_are_immutable_and_yank_marks_them() {
        let dir = tempfile::tempdir().unwrap();
        let (e, p) = publish(dir.path(), b"one", &meta("1.0.0")).unwrap();
        assert_eq!(p, Published::Added);
        assert_eq!(std::fs::read(dir.path().join(&e.file)).unwrap(), b"one");
        assert_eq!(publish(dir.path(), b"one", &meta("1.0.0")).unwrap().1, Published::AlreadyThere);
        let msg = publish(dir.path(), b"two", &meta("1.0.0")).unwrap_err().to_string();
        assert!(msg.contains("already published") && msg.contains("bump"), "{msg}");
        publish(dir.path(), b"two", &meta("0.9.0")).unwrap();
        yank(dir.path(), "acme-slack", &"1.0.0".parse().unwrap(), true).unwrap();
        let index = read_index(dir.path(), "acme-slack").unwrap();
        let listed: Vec<(String, bool)> = index.versions.iter().map(|e| (e.version.to_string(), e.yanked)).collect();
        assert_eq!(listed, [("0.9.0".to_string(), false), ("1.0.0".to_string(), true)]);
        assert!(yank(dir.path(), "acme-slack", &"3.0.0".parse().unwrap(), true).is_err());
        assert!(publish(dir.path(), b"x", &PluginMeta { name: "Bad Name".into(), ..meta("1.0.0") }).is_err());
    }

    #[test]
    fn hostile_indexes_are_refused() {
        let parse = |text: &str| IndexFile::parse(text.as_bytes(), "p", &"r").map(|_| ()).unwrap_err().to_string();
        let entry = |file: &str| {
            format!(
                r#"{{"name": "p", "versions": [{{"version": "1.0.0", "digest": "sha256:00", "wit": "0.2.0", "operators": [], "file": "{file}"}}]}}"#
            )
        };
        assert!(parse(&entry("../../etc/passwd")).contains("a path inside the registry"));
        assert!(parse(&entry("/etc/passwd")).contains("a path inside the registry"));
        assert!(parse(r#"{"name": "q"}"#).contains("describes plugin \"q\""));
        assert!(parse("{").contains("not a valid index"));
    }
}
