//! The on-disk cache of precompiled components (`.cwasm`).
//!
//! Deserializing a `.cwasm` maps its machine code unchecked, so this module only loads
//! files spade itself wrote. The cache directory is created 0700 and must belong to the
//! current user and not be group/world-writable; each `<key>.cwasm` has a sidecar
//! `<key>.cwasm.sum` written by us right after it, recording the sha256 of its content and
//! the identity of the file we wrote (device, inode, size, ctime). Both must be regular
//! files owned by us and not group/world-writable. On load, if the `.cwasm` is still that
//! very inode, unchanged since (any write, chmod or replacement moves its ctime), it is
//! used as is; otherwise its content is hashed and compared with the recorded sha256 (a
//! copied or restored cache stays usable, and the sidecar is refreshed). Any mismatch is a
//! miss: the component is recompiled and both files are overwritten.
//!
//! Files are written atomically (private temp file in the same directory + rename). The
//! key is `sha256(component bytes)` + a digest of `Engine::precompile_compatibility_hash`,
//! so a wasmtime upgrade or a different engine configuration never picks up stale code.
//!
//! What this does not defend against: a process of the same user rewriting both files
//! (it could as well replace the spade binary), or the file changing between our check and
//! wasmtime's lazy mmap in `deserialize_file` (again only the same user could).

use std::fs;
use std::hash::{Hash, Hasher};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

/// Largest `.cwasm` we are willing to read back (Python/JS components are ~35 MB).
const MAX_CWASM_BYTES: u64 = 1 << 30;

pub(crate) struct Cache {
    dir: PathBuf,
    compat: String,
}

/// Feeds `Hash` output into SHA-256 (std's `DefaultHasher` is not stable across releases).
struct ShaHasher(Sha256);

impl Hasher for ShaHasher {
    fn finish(&self) -> u64 {
        0
    }
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
}

fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Why a path may not be trusted, or `None` when it is ours and private.
fn untrusted(meta: &fs::Metadata, want_dir: bool) -> Option<String> {
    if want_dir && !meta.is_dir() {
        return Some("is not a directory".into());
    }
    if !want_dir && !meta.file_type().is_file() {
        return Some("is not a regular file".into());
    }
    if meta.uid() != euid() {
        return Some(format!("is owned by uid {}, not by the current user ({})", meta.uid(), euid()));
    }
    if meta.mode() & 0o022 != 0 {
        return Some(format!("is writable by group or others (mode {:o})", meta.mode() & 0o7777));
    }
    None
}

/// Which file we wrote: any write, chmod, chown or replacement changes one of these.
#[derive(Debug, PartialEq, Eq)]
struct Identity {
    dev: u64,
    ino: u64,
    size: u64,
    ctime: i64,
    ctime_nsec: i64,
}

impl Identity {
    fn of(meta: &fs::Metadata) -> Identity {
        Identity {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.len(),
            ctime: meta.ctime(),
            ctime_nsec: meta.ctime_nsec(),
        }
    }
}

/// The sidecar record of one `.cwasm`.
struct Sum {
    sha256: String,
    identity: Identity,
}

impl Sum {
    fn render(&self) -> String {
        let i = &self.identity;
        format!(
            "spade-cwasm 1\nsha256 {}\nfile {} {} {} {} {}\n",
            self.sha256, i.dev, i.ino, i.size, i.ctime, i.ctime_nsec
        )
    }

    fn parse(text: &str) -> Option<Sum> {
        let mut lines = text.lines();
        (lines.next()? == "spade-cwasm 1").then_some(())?;
        let sha256 = lines.next()?.strip_prefix("sha256 ")?.to_string();
        if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let f: Vec<&str> = lines.next()?.strip_prefix("file ")?.split(' ').collect();
        let [dev, ino, size, ctime, ctime_nsec] = f.as_slice() else {
            return None;
        };
        let identity = Identity {
            dev: dev.parse().ok()?,
            ino: ino.parse().ok()?,
            size: size.parse().ok()?,
            ctime: ctime.parse().ok()?,
            ctime_nsec: ctime_nsec.parse().ok()?,
        };
        Some(Sum { sha256, identity })
    }
}

pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

impl Cache {
    /// Opens (creating it 0700 if needed) the cache directory; `Err` says why it is unusable.
    pub fn open(dir: &Path, engine: &Engine) -> Result<Cache, String> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| format!("cannot create the compile cache directory {}: {e}", dir.display()))?;
        let meta = fs::symlink_metadata(dir).map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
        if let Some(why) = untrusted(&meta, true) {
            return Err(format!(
                "the compile cache directory {} {why}; fix its ownership/permissions (chmod 700) or set SPADE_CACHE_DIR",
                dir.display()
            ));
        }
        let mut h = ShaHasher(Sha256::new());
        engine.precompile_compatibility_hash().hash(&mut h);
        let compat = hex::encode(&h.0.finalize()[..12]);
        Ok(Cache { dir: dir.to_path_buf(), compat })
    }

    fn paths(&self, digest: &str) -> (PathBuf, PathBuf) {
        let base = format!("{digest}-{}.cwasm", self.compat);
        (self.dir.join(&base), self.dir.join(format!("{base}.sum")))
    }

    /// The cached component for `digest`, or `Err(reason)` on a miss.
    pub fn load(&self, engine: &Engine, digest: &str) -> Result<Component, String> {
        let (cwasm, sidecar) = self.paths(digest);
        let mut metas = Vec::with_capacity(2);
        for p in [&cwasm, &sidecar] {
            let meta = fs::symlink_metadata(p).map_err(|e| format!("{}: {e}", p.display()))?;
            if let Some(why) = untrusted(&meta, false) {
                return Err(format!("{} {why}", p.display()));
            }
            if meta.len() > MAX_CWASM_BYTES {
                return Err(format!("{} is too large", p.display()));
            }
            metas.push(meta);
        }
        let text = fs::read_to_string(&sidecar).map_err(|e| format!("{}: {e}", sidecar.display()))?;
        let sum = Sum::parse(&text).ok_or_else(|| format!("{} is not a spade cache record", sidecar.display()))?;
        if sum.identity != Identity::of(&metas[0]) {
            // Not the inode we wrote (copied, restored, touched): trust the content only.
            let bytes = fs::read(&cwasm).map_err(|e| format!("{}: {e}", cwasm.display()))?;
            if sha256_hex(&bytes) != sum.sha256 {
                return Err(format!("{} does not match its recorded digest", cwasm.display()));
            }
            let meta = fs::symlink_metadata(&cwasm).map_err(|e| format!("{}: {e}", cwasm.display()))?;
            let _ = self.write_atomic(
                &sidecar,
                Sum { sha256: sum.sha256.clone(), identity: Identity::of(&meta) }.render().as_bytes(),
            );
        }
        // SAFETY: the file was written by spade (`Component::serialize` with the same engine
        // configuration: compatibility hash in its name) into our private directory, and is
        // either the very inode we wrote, unchanged since, or has the content we recorded.
        unsafe { Component::deserialize_file(engine, &cwasm) }
            .map_err(|e| format!("{} cannot be loaded: {e}", cwasm.display()))
    }

    /// Stores the compiled `component` under `digest`.
    pub fn store(&self, digest: &str, component: &Component) -> Result<(), String> {
        let bytes = component.serialize().map_err(|e| format!("cannot serialize the compiled component: {e}"))?;
        let (cwasm, sidecar) = self.paths(digest);
        self.write_atomic(&cwasm, &bytes)?;
        let meta = fs::symlink_metadata(&cwasm).map_err(|e| format!("{}: {e}", cwasm.display()))?;
        let sum = Sum { sha256: sha256_hex(&bytes), identity: Identity::of(&meta) };
        self.write_atomic(&sidecar, sum.render().as_bytes())
    }

    fn write_atomic(&self, dest: &Path, bytes: &[u8]) -> Result<(), String> {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let tmp = self.dir.join(format!(
            ".tmp-{}-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed),
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0)
        ));
        let result = (|| {
            let mut f = fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
            f.write_all(bytes)?;
            f.sync_data()?;
            fs::rename(&tmp, dest)
        })();
        result.map_err(|e| {
            let _ = fs::remove_file(&tmp);
            format!("cannot write {}: {e}", dest.display())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sum_round_trips_and_rejects_junk() {
        let s =
            Sum { sha256: "ab".repeat(32), identity: Identity { dev: 1, ino: 2, size: 3, ctime: -4, ctime_nsec: 5 } };
        let back = Sum::parse(&s.render()).unwrap();
        assert_eq!((back.sha256, back.identity), (s.sha256, s.identity));
        assert!(Sum::parse("spade-cwasm 1\nsha256 xyz\nfile 1 2 3 4 5\n").is_none());
        assert!(Sum::parse("").is_none());
        assert!(Sum::parse(&format!("spade-cwasm 2\nsha256 {}\nfile 1 2 3 4 5\n", "a".repeat(64))).is_none());
    }
}
