//! Project archives: the tar.gz `spade push` uploads, the server stores by digest and a
//! task's workspace is unpacked from.
//!
//! [`pack`] follows `digdag push`: every file of the project directory except names that
//! start with `.` (spade's `.spade` state, `.git`) and what `.digdagignore` lists (it has
//! `.gitignore`'s syntax); a symbolic link that stays inside the project travels as a link,
//! one that leaves it is refused unless the caller asks to archive what it points to. Unlike
//! Digdag's, an archive is deterministic (entries sorted, times and owners zeroed), so the
//! same files give the same bytes and the same sha256, and a server keeps each content once.
//!
//! [`unpack`] trusts nothing in the archive. It writes through a directory handle (cap-std),
//! so no entry can land outside the target whatever names or links came before it; it also
//! refuses what a well-formed project archive never holds (absolute names, `..`, links that
//! point out, hard links, devices) with a message naming the entry, and it stops at the
//! configured sizes while decompressing, so a small upload cannot expand into a full disk.

use std::io::{self, Read, Write};
use std::path::{Component, Path, PathBuf};

use cap_std::fs::{Dir, OpenOptions, Permissions};
use flate2::Compression;
use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("{path}: {source}")]
    Io { path: String, source: io::Error },
    #[error(
        "{path} is a symbolic link to {target}, outside the project directory; remove it, or archive \
         what it points to instead (--copy-outgoing-symlinks)"
    )]
    OutgoingLink { path: String, target: String },
    #[error("{path} is not a file, a directory or a symbolic link; remove it or list it in .digdagignore")]
    Special { path: String },
    #[error(".digdagignore: {0}")]
    Ignore(String),
    #[error("the archive is too large: {0}; make the project smaller (.digdagignore) or raise the server's limit")]
    TooLarge(String),
    #[error("archive entry '{entry}' {reason}; nothing was extracted from this archive to be trusted")]
    Unsafe { entry: String, reason: String },
    #[error("not a gzip-compressed tar archive: {0}")]
    Corrupt(String),
}

pub type Result<T> = std::result::Result<T, ArchiveError>;

/// How big an archive may be, compressed and unpacked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Bytes of the tar.gz itself.
    pub max_archive_bytes: u64,
    /// Bytes of all its files once unpacked.
    pub max_unpacked_bytes: u64,
    /// Files, directories and links.
    pub max_entries: usize,
}

impl Default for Limits {
    /// 16 MiB compressed, 128 MiB unpacked, 20,000 entries (Digdag's only limit is 2 MiB
    /// in total, which its users routinely raise).
    fn default() -> Self {
        Limits { max_archive_bytes: 16 << 20, max_unpacked_bytes: 128 << 20, max_entries: 20_000 }
    }
}

/// What [`pack`] does with a symbolic link that points outside the project.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PackOptions {
    /// Archive what the link points to instead of refusing it (`digdag push
    /// --copy-outgoing-symlinks`).
    pub copy_outgoing_symlinks: bool,
}

/// A packed project.
#[derive(Clone, Debug)]
pub struct Packed {
    /// The tar.gz.
    pub bytes: Vec<u8>,
    /// Archived files and links, in archive order (`/`-separated, relative).
    pub files: Vec<String>,
}

impl Packed {
    pub fn digest(&self) -> String {
        digest(&self.bytes)
    }
}

/// The content address of an archive: its sha256 in lower-case hex.
pub fn digest(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Directory depth beyond which [`pack`] stops (a followed link that loops back).
const MAX_DEPTH: usize = 64;

/// Pack the project directory `dir` (see the crate docs for what is included).
pub fn pack(dir: &Path, options: &PackOptions) -> Result<Packed> {
    let io_err = |path: &Path| {
        let path = path.display().to_string();
        move |source| ArchiveError::Io { path, source }
    };
    let root = dir.canonicalize().map_err(io_err(dir))?;
    let ignore = ignore_rules(&root)?;
    let mut packer = Packer {
        root: &root,
        ignore,
        options,
        tar: tar::Builder::new(GzEncoder::new(Vec::new(), Compression::default())),
        files: Vec::new(),
    };
    packer.dir(&root, Path::new(""), 0)?;
    let encoder = packer.tar.into_inner().map_err(io_err(&root))?;
    let bytes = encoder.finish().map_err(io_err(&root))?;
    Ok(Packed { bytes, files: packer.files })
}

fn ignore_rules(root: &Path) -> Result<ignore::gitignore::Gitignore> {
    let mut builder = ignore::gitignore::GitignoreBuilder::new(root);
    let file = root.join(".digdagignore");
    if file.is_file()
        && let Some(e) = builder.add(&file)
    {
        return Err(ArchiveError::Ignore(e.to_string()));
    }
    builder.build().map_err(|e| ArchiveError::Ignore(e.to_string()))
}

struct Packer<'a> {
    root: &'a Path,
    ignore: ignore::gitignore::Gitignore,
    options: &'a PackOptions,
    tar: tar::Builder<GzEncoder<Vec<u8>>>,
    files: Vec<String>,
}

impl Packer<'_> {
    /// Archive the entries of `abs` (the directory known in the archive as `rel`).
    fn dir(&mut self, abs: &Path, rel: &Path, depth: usize) -> Result<()> {
        let io_err = |source| ArchiveError::Io { path: abs.display().to_string(), source };
        if depth > MAX_DEPTH {
            return Err(io_err(io::Error::other(format!("deeper than {MAX_DEPTH} directories (a link loop?)"))));
        }
        let mut names: Vec<_> = std::fs::read_dir(abs)
            .map_err(io_err)?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<io::Result<_>>()
            .map_err(io_err)?;
        names.sort();
        for name in names {
            if name.as_encoded_bytes().first() == Some(&b'.') {
                continue;
            }
            let (path, entry_rel) = (abs.join(&name), rel.join(&name));
            let meta = std::fs::symlink_metadata(&path)
                .map_err(|source| ArchiveError::Io { path: path.display().to_string(), source })?;
            let is_dir = meta.is_dir() || (meta.is_symlink() && path.is_dir());
            if self.ignore.matched_path_or_any_parents(&entry_rel, is_dir).is_ignore() {
                continue;
            }
            if meta.is_symlink() {
                self.link(&path, &entry_rel, depth)?;
            } else if meta.is_dir() {
                self.directory(&entry_rel, &path)?;
                self.dir(&path, &entry_rel, depth + 1)?;
            } else if meta.is_file() {
                self.file(&path, &entry_rel, &meta)?;
            } else {
                return Err(ArchiveError::Special { path: path.display().to_string() });
            }
        }
        Ok(())
    }

    fn link(&mut self, path: &Path, rel: &Path, depth: usize) -> Result<()> {
        let io_err = |source| ArchiveError::Io { path: path.display().to_string(), source };
        let target = std::fs::read_link(path).map_err(io_err)?;
        let parent = path.parent().unwrap_or(self.root);
        let resolved = normalize(&parent.join(&target));
        if let Ok(inside) = resolved.strip_prefix(self.root) {
            // Kept as a link, made relative: an absolute target means nothing elsewhere.
            let from = rel.parent().unwrap_or(Path::new(""));
            let relative = relative_path(from, inside);
            let mut header = header(tar::EntryType::Symlink, 0o777, 0);
            self.tar.append_link(&mut header, rel, &relative).map_err(io_err)?;
            self.files.push(slash(rel));
            return Ok(());
        }
        if !self.options.copy_outgoing_symlinks {
            return Err(ArchiveError::OutgoingLink {
                path: path.display().to_string(),
                target: target.display().to_string(),
            });
        }
        let meta = std::fs::metadata(path).map_err(io_err)?;
        if meta.is_dir() {
            self.directory(rel, path)?;
            self.dir(path, rel, depth + 1)
        } else if meta.is_file() {
            self.file(path, rel, &meta)
        } else {
            Err(ArchiveError::Special { path: path.display().to_string() })
        }
    }

    fn directory(&mut self, rel: &Path, abs: &Path) -> Result<()> {
        let mut header = header(tar::EntryType::Directory, 0o755, 0);
        self.tar
            .append_data(&mut header, rel, io::empty())
            .map_err(|source| ArchiveError::Io { path: abs.display().to_string(), source })
    }

    fn file(&mut self, path: &Path, rel: &Path, meta: &std::fs::Metadata) -> Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let io_err = |source| ArchiveError::Io { path: path.display().to_string(), source };
        let file = std::fs::File::open(path).map_err(io_err)?;
        let mode = if meta.permissions().mode() & 0o111 != 0 { 0o755 } else { 0o644 };
        let mut header = header(tar::EntryType::Regular, mode, meta.len());
        // `take`: a file that grows while it is read must not overrun its header's size.
        self.tar.append_data(&mut header, rel, file.take(meta.len())).map_err(io_err)?;
        self.files.push(slash(rel));
        Ok(())
    }
}

/// A header with the deterministic fields set (no time, owner or user names).
fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_mtime(0);
    h.set_uid(0);
    h.set_gid(0);
    h
}

fn slash(p: &Path) -> String {
    p.components().map(|c| c.as_os_str().to_string_lossy()).collect::<Vec<_>>().join("/")
}

/// `p` with `.` and `..` resolved lexically (no file system access).
fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

/// The path from directory `from` to `to`, both relative to the same root.
fn relative_path(from: &Path, to: &Path) -> PathBuf {
    let (from, to): (Vec<_>, Vec<_>) = (from.components().collect(), to.components().collect());
    let common = from.iter().zip(&to).take_while(|(a, b)| a == b).count();
    let mut out = PathBuf::new();
    for _ in common..from.len() {
        out.push("..");
    }
    for c in &to[common..] {
        out.push(c);
    }
    if out.as_os_str().is_empty() { PathBuf::from(".") } else { out }
}

/// What [`unpack`] wrote.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Unpacked {
    pub entries: usize,
    pub bytes: u64,
}

/// Unpack `bytes` into `into`, within `limits` (see the crate docs). On error, what was
/// written so far stays: the caller unpacks into a fresh directory and drops it.
pub fn unpack(bytes: &[u8], into: &Dir, limits: &Limits) -> Result<Unpacked> {
    if bytes.len() as u64 > limits.max_archive_bytes {
        return Err(ArchiveError::TooLarge(format!(
            "{} bytes compressed, the limit is {}",
            bytes.len(),
            limits.max_archive_bytes
        )));
    }
    // Headers and padding come on top of the files' bytes; the cap is on everything the
    // decompressor produces, so oversized metadata (a huge PAX header) is caught as well.
    let cap = limits.max_unpacked_bytes.saturating_add((limits.max_entries as u64 + 4).saturating_mul(3 * 512));
    let reader = Capped { inner: GzDecoder::new(bytes), left: cap };
    let mut archive = tar::Archive::new(reader);
    let mut done = Unpacked::default();
    let entries = archive.entries().map_err(|e| corrupt(e, limits))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| corrupt(e, limits))?;
        let raw = entry.path().map_err(|e| corrupt(e, limits))?.into_owned();
        let name = raw.display().to_string();
        let unsafe_entry = |reason: &str| ArchiveError::Unsafe { entry: name.clone(), reason: reason.to_string() };
        let rel = confined(&raw).ok_or_else(|| unsafe_entry("has an absolute name or a '..' component"))?;
        done.entries += 1;
        if done.entries > limits.max_entries {
            return Err(ArchiveError::TooLarge(format!("more than the limit of {} entries", limits.max_entries)));
        }
        let write_err = |source: io::Error| ArchiveError::Io { path: name.clone(), source };
        let kind = entry.header().entry_type();
        if let Some(parent) = rel.parent().filter(|p| !p.as_os_str().is_empty()) {
            into.create_dir_all(parent).map_err(write_err)?;
        }
        match kind {
            tar::EntryType::Directory => into.create_dir_all(&rel).map_err(write_err)?,
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let size = entry.header().size().map_err(|e| corrupt(e, limits))?;
                done.bytes = done.bytes.saturating_add(size);
                if done.bytes > limits.max_unpacked_bytes {
                    return Err(unpacked_too_large(limits));
                }
                let executable = entry.header().mode().map(|m| m & 0o111 != 0).unwrap_or(false);
                let mut file = into.open_with(&rel, OpenOptions::new().write(true).create_new(true)).map_err(|e| {
                    match e.kind() {
                        io::ErrorKind::AlreadyExists => unsafe_entry("appears twice, or names an existing link"),
                        _ => write_err(e),
                    }
                })?;
                io::copy(&mut entry, &mut file).map_err(|e| corrupt(e, limits))?;
                file.flush().map_err(write_err)?;
                use cap_std::fs::PermissionsExt;
                let mode = if executable { 0o755 } else { 0o644 };
                file.set_permissions(Permissions::from_mode(mode)).map_err(write_err)?;
            }
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name()
                    .map_err(|e| corrupt(e, limits))?
                    .ok_or_else(|| unsafe_entry("is a link without a target"))?
                    .into_owned();
                let parent = rel.parent().unwrap_or(Path::new(""));
                if target.is_absolute() || confined(&parent.join(&target)).is_none() {
                    return Err(unsafe_entry(&format!("links to {}, outside the project", target.display())));
                }
                into.symlink(&target, &rel).map_err(|e| match e.kind() {
                    io::ErrorKind::AlreadyExists => unsafe_entry("appears twice"),
                    _ => write_err(e),
                })?;
            }
            tar::EntryType::Link => {
                return Err(unsafe_entry(
                    "is a hard link; archives may hold only files, directories and symbolic links",
                ));
            }
            other => {
                return Err(unsafe_entry(&format!(
                    "is a {other:?} entry; archives may hold only files, directories and symbolic links"
                )));
            }
        }
    }
    Ok(done)
}

/// Unpack into the directory `dir` (created if missing).
pub fn unpack_to(bytes: &[u8], dir: &Path, limits: &Limits) -> Result<Unpacked> {
    let io_err = |source| ArchiveError::Io { path: dir.display().to_string(), source };
    std::fs::create_dir_all(dir).map_err(io_err)?;
    let handle = Dir::open_ambient_dir(dir, cap_std::ambient_authority()).map_err(io_err)?;
    unpack(bytes, &handle, limits)
}

/// `p` as a relative path of plain names, with `.` dropped and `..` resolved, unless it is
/// absolute or climbs above its start.
fn confined(p: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    return None;
                }
            }
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    // An entry must name something below the root; a link target may be the root itself.
    Some(out)
}

/// Marks the error [`Capped`] returns, to tell "too large" from a broken archive.
#[derive(Debug)]
struct CapReached;

impl std::fmt::Display for CapReached {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("decompressed size limit reached")
    }
}

impl std::error::Error for CapReached {}

fn unpacked_too_large(limits: &Limits) -> ArchiveError {
    ArchiveError::TooLarge(format!("more than the limit of {} bytes once unpacked", limits.max_unpacked_bytes))
}

fn corrupt(e: io::Error, limits: &Limits) -> ArchiveError {
    if e.get_ref().is_some_and(|inner| inner.is::<CapReached>()) {
        unpacked_too_large(limits)
    } else {
        ArchiveError::Corrupt(e.to_string())
    }
}

/// A reader that fails once it has produced `left` bytes.
struct Capped<R> {
    inner: R,
    left: u64,
}

impl<R: Read> Read for Capped<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            // One more byte would exceed the cap: only a clean end of stream is fine.
            let mut probe = [0u8; 1];
            return match self.inner.read(&mut probe)? {
                0 => Ok(0),
                _ => Err(io::Error::other(CapReached)),
            };
        }
        let want = buf.len().min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        self.left -= n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests;
