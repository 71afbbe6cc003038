//! The download cache: components by digest, shared by every project of the user, each
//! checked against its name whenever it is read.

use std::path::PathBuf;

use crate::index::write_atomic;
use crate::{Result, digest_of};

/// A directory of `<hex>.wasm` files named by their sha256.
#[derive(Clone, Debug)]
pub struct Cache {
    dir: PathBuf,
}

impl Cache {
    pub fn new(dir: impl Into<PathBuf>) -> Cache {
        Cache { dir: dir.into() }
    }

    fn path(&self, digest: &str) -> Option<PathBuf> {
        let hex = digest.strip_prefix("sha256:")?;
        (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit())).then(|| self.dir.join(format!("{hex}.wasm")))
    }

    /// The cached component with this digest. A file whose content no longer matches its
    /// name (disk corruption, tampering) is removed and reported missing, so it is fetched
    /// (and checked) again.
    pub fn get(&self, digest: &str) -> Option<Vec<u8>> {
        let path = self.path(digest)?;
        let bytes = std::fs::read(&path).ok()?;
        if digest_of(&bytes) == digest {
            return Some(bytes);
        }
        let _ = std::fs::remove_file(&path);
        None
    }

    /// Keeps `bytes` (already checked to have `digest`).
    pub fn put(&self, digest: &str, bytes: &[u8]) -> Result<()> {
        match self.path(digest) {
            Some(path) => write_atomic(&path, bytes),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_damaged_entry_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path());
        let digest = digest_of(b"component");
        assert_eq!(cache.get(&digest), None);
        cache.put(&digest, b"component").unwrap();
        assert_eq!(cache.get(&digest).as_deref(), Some(&b"component"[..]));
        std::fs::write(cache.path(&digest).unwrap(), b"tampered").unwrap();
        assert_eq!(cache.get(&digest), None);
        assert!(!cache.path(&digest).unwrap().exists());
        assert_eq!(cache.get("sha256:../../x"), None);
    }
}
