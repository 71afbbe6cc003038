//! `spade.lock`: the exact plugin versions a project runs, with their digests.

use std::path::Path;

use semver::Version;
use serde::{Deserialize, Serialize};

use crate::index::write_atomic;
use crate::{RegistryError, Result, err};

/// The lockfile's name, next to the project's `spade.yml`.
pub const LOCK_FILE: &str = "spade.lock";

const FORMAT_VERSION: u32 = 1;

const HEADER: &str = "# Written by spade (spade run, spade plugin install/update): the exact plugin versions\n\
# this project runs and their digests. Commit it; do not edit it by hand.\n";

/// The lockfile's contents.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Lockfile {
    pub plugins: Vec<LockedPlugin>,
}

/// One locked plugin.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockedPlugin {
    pub name: String,
    pub version: Version,
    /// The registry it came from ([`crate::Registry::id`]).
    pub source: String,
    /// `sha256:<hex>` of the component.
    pub digest: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct LockText {
    version: u32,
    #[serde(default, rename = "plugin")]
    plugins: Vec<LockedPlugin>,
}

impl Lockfile {
    /// Reads `path`; a missing file is an empty lockfile.
    pub fn load(path: &Path) -> Result<Lockfile> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Lockfile::default()),
            Err(e) => return err(format!("reading {}: {e}", path.display())),
        };
        let parsed: LockText = toml::from_str(&text).map_err(|e| {
            RegistryError(format!(
                "{}: not a valid lockfile ({}); delete it and run `spade plugin install` to write it again",
                path.display(),
                e.to_string().trim_end()
            ))
        })?;
        if parsed.version != FORMAT_VERSION {
            return err(format!(
                "{}: lockfile format {} is not one this spade reads (it reads {FORMAT_VERSION}); \
                 use the spade that wrote it, or delete it and run `spade plugin install`",
                path.display(),
                parsed.version
            ));
        }
        Ok(Lockfile { plugins: parsed.plugins })
    }

    /// Writes the lockfile to `path` (atomically).
    pub fn save(&self, path: &Path) -> Result<()> {
        let body = toml::to_string(&LockText { version: FORMAT_VERSION, plugins: self.plugins.clone() })
            .map_err(|e| RegistryError(format!("cannot write the lockfile: {e}")))?;
        write_atomic(path, format!("{HEADER}{body}").as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_bad_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(LOCK_FILE);
        assert_eq!(Lockfile::load(&path).unwrap(), Lockfile::default());
        let lock = Lockfile {
            plugins: vec![LockedPlugin {
                name: "acme-slack".into(),
                version: "1.2.3".parse().unwrap(),
                source: "https://plugins.example.com/".into(),
                digest: "sha256:ab".into(),
            }],
        };
        lock.save(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("# Written by spade") && text.contains("[[plugin]]"), "{text}");
        assert_eq!(Lockfile::load(&path).unwrap(), lock);
        std::fs::write(&path, "version = 7\n").unwrap();
        assert!(Lockfile::load(&path).unwrap_err().to_string().contains("format 7"));
        std::fs::write(&path, "[[plugin]]\nname = 1\n").unwrap();
        assert!(Lockfile::load(&path).unwrap_err().to_string().contains("not a valid lockfile"));
    }
}
