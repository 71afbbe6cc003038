//! Opening workspace files a script may have tampered with, without following it anywhere.
//!
//! A script runs with the workspace writable: it can replace any file there with a symlink to
//! a host file, a FIFO that blocks its reader forever, or a huge file. Everything the host
//! opens in a workspace after a script ran goes through here: each path component is opened
//! relative to its parent's descriptor with `O_NOFOLLOW` (capability-style, as cap-std does
//! for wasmtime-wasi), files with `O_NONBLOCK` so a FIFO cannot block the open, and the
//! opened descriptor is checked to be a regular file below the size limit.

use std::ffi::CString;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

/// `path` as a relative path without `..`, `.` or root components (empty: the root).
pub fn relative(path: &str) -> Result<PathBuf, String> {
    let mut out = PathBuf::new();
    for c in Path::new(path).components() {
        match c {
            Component::Normal(part) => out.push(part),
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) | Component::ParentDir => {
                return Err(format!("{path:?} must be a path inside the workspace, relative, without `..`"));
            }
        }
    }
    Ok(out)
}

fn c_name(part: &std::ffi::OsStr) -> Result<CString, String> {
    CString::new(std::os::unix::ffi::OsStrExt::as_bytes(part)).map_err(|_| "a path contains a NUL byte".to_string())
}

fn openat(dir: &OwnedFd, name: &CString, flags: libc::c_int) -> std::io::Result<OwnedFd> {
    // SAFETY: `name` is a valid C string and `dir` an open descriptor; the returned descriptor
    // is owned by the `OwnedFd` alone.
    let fd = unsafe { libc::openat(dir.as_raw_fd(), name.as_ptr(), flags | libc::O_CLOEXEC | libc::O_NOFOLLOW) };
    if fd < 0 { Err(std::io::Error::last_os_error()) } else { Ok(unsafe { OwnedFd::from_raw_fd(fd) }) }
}

fn describe(e: std::io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::ELOOP) => "it is a symbolic link, which spade does not follow in a workspace".into(),
        Some(libc::ENOTDIR) => "a part of the path is not a directory (or is a symbolic link)".into(),
        Some(libc::ENOENT) => "it does not exist".into(),
        _ => e.to_string(),
    }
}

/// Opens the directory `rel` below `root` (the workspace itself is trusted: spade made it).
pub fn open_dir(root: &Path, rel: &Path) -> Result<OwnedFd, String> {
    let root = File::open(root).map_err(|e| format!("cannot open the workspace {}: {e}", root.display()))?;
    let mut dir: OwnedFd = root.into();
    for part in rel.iter() {
        dir = openat(&dir, &c_name(part)?, libc::O_RDONLY | libc::O_DIRECTORY).map_err(describe)?;
    }
    Ok(dir)
}

/// Opens the regular file `path` (relative to the workspace `root`) for reading, refusing
/// links, FIFOs, devices, directories and files larger than `max_bytes`. Returns the file
/// and its size.
pub fn open_regular(root: &Path, path: &str, max_bytes: u64) -> Result<(File, u64), String> {
    let rel = relative(path)?;
    let (parent, name) = match (rel.parent(), rel.file_name()) {
        (Some(p), Some(n)) => (p, n),
        _ => return Err(format!("{path:?} names no file")),
    };
    let dir = open_dir(root, parent).map_err(|e| format!("{path}: {e}"))?;
    let fd = openat(&dir, &c_name(name)?, libc::O_RDONLY | libc::O_NONBLOCK | libc::O_NOCTTY)
        .map_err(|e| format!("{path}: {}", describe(e)))?;
    let file = File::from(fd);
    let meta = file.metadata().map_err(|e| format!("{path}: {e}"))?;
    if !meta.file_type().is_file() {
        return Err(format!("{path} is not a regular file (a directory, FIFO, socket or device); refusing to read it"));
    }
    if meta.len() > max_bytes {
        return Err(format!("{path} is {} bytes; the limit is {max_bytes} bytes", meta.len()));
    }
    // Regular files ignore O_NONBLOCK; clear it anyway so reads behave normally.
    // SAFETY: fcntl on a descriptor we own.
    unsafe {
        let flags = libc::fcntl(file.as_raw_fd(), libc::F_GETFL);
        if flags >= 0 {
            libc::fcntl(file.as_raw_fd(), libc::F_SETFL, flags & !libc::O_NONBLOCK);
        }
    }
    Ok((file, meta.len()))
}

/// Gives every entry below `root` (and `root`) to `uid`:`gid` without following links: the
/// sandbox user of a host running as root must be able to write the workspace. Entries
/// already owned are skipped, so a second call is a walk only.
pub fn chown_tree(root: &Path, uid: u32, gid: u32) -> Result<(), String> {
    let dir: OwnedFd =
        File::open(root).map_err(|e| format!("cannot open the workspace {}: {e}", root.display()))?.into();
    // SAFETY: fchown on a descriptor we own.
    if unsafe { libc::fchown(dir.as_raw_fd(), uid, gid) } != 0 {
        return Err(format!("cannot give the workspace to the sandbox user: {}", std::io::Error::last_os_error()));
    }
    walk(dir, 0, &mut |parent, name, st| {
        if st.st_uid != uid || st.st_gid != gid {
            // SAFETY: valid descriptor and C string; AT_SYMLINK_NOFOLLOW changes a link
            // itself, never its target.
            unsafe { libc::fchownat(parent.as_raw_fd(), name.as_ptr(), uid, gid, libc::AT_SYMLINK_NOFOLLOW) };
        }
    })
}

/// Bytes of the regular files below `root` (links not followed): what the workspace holds,
/// to charge what commands added to it against the attempt's disk quota.
pub fn tree_size(root: &Path) -> Result<u64, String> {
    let dir: OwnedFd =
        File::open(root).map_err(|e| format!("cannot open the workspace {}: {e}", root.display()))?.into();
    let mut total = 0u64;
    walk(dir, 0, &mut |_, _, st| {
        if (st.st_mode & libc::S_IFMT) == libc::S_IFREG {
            total = total.saturating_add(st.st_size.max(0) as u64);
        }
    })?;
    Ok(total)
}

/// Calls `visit(parent, name, stat)` for every entry below `dir`, depth first, never
/// following a link (a directory swapped for one meanwhile is not entered).
fn walk(
    dir: OwnedFd,
    depth: usize,
    visit: &mut dyn FnMut(&OwnedFd, &std::ffi::CStr, &libc::stat),
) -> Result<(), String> {
    if depth > 256 {
        return Err("the workspace is nested more than 256 directories deep".into());
    }
    // Read the entries through a duplicate: `fdopendir` takes ownership of its descriptor.
    // SAFETY: dup/fdopendir/readdir/closedir on descriptors we own; names are copied out
    // before the next readdir.
    let names: Vec<CString> = unsafe {
        let dup = libc::fcntl(dir.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0);
        if dup < 0 {
            return Err(std::io::Error::last_os_error().to_string());
        }
        let stream = libc::fdopendir(dup);
        if stream.is_null() {
            libc::close(dup);
            return Err(std::io::Error::last_os_error().to_string());
        }
        let mut names = Vec::new();
        loop {
            let entry = libc::readdir(stream);
            if entry.is_null() {
                break;
            }
            let name = std::ffi::CStr::from_ptr((*entry).d_name.as_ptr()).to_owned();
            if name.as_bytes() != b"." && name.as_bytes() != b".." {
                names.push(name);
            }
        }
        libc::closedir(stream);
        names
    };
    for name in names {
        // SAFETY: an all-zero stat is a valid value to be overwritten.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: valid descriptor, C string and out-pointer.
        if unsafe { libc::fstatat(dir.as_raw_fd(), name.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) } != 0 {
            continue; // removed meanwhile
        }
        visit(&dir, &name, &st);
        if (st.st_mode & libc::S_IFMT) == libc::S_IFDIR
            && let Ok(sub) = openat(&dir, &name, libc::O_RDONLY | libc::O_DIRECTORY)
        {
            walk(sub, depth + 1, visit)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_links_fifos_and_large_files() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::write(root.join("ok.json"), "{}").unwrap();
        std::fs::create_dir(root.join("sub")).unwrap();
        std::fs::write(root.join("sub/big"), vec![b'x'; 100]).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", root.join("link")).unwrap();
        std::os::unix::fs::symlink("/etc", root.join("dirlink")).unwrap();
        let fifo = CString::new(root.join("fifo").to_str().unwrap()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);

        assert_eq!(open_regular(root, "ok.json", 10).unwrap().1, 2);
        assert_eq!(open_regular(root, "./sub/big", 100).unwrap().1, 100);
        assert!(open_regular(root, "sub/big", 99).unwrap_err().contains("the limit is 99"));
        assert!(open_regular(root, "link", 1 << 20).unwrap_err().contains("symbolic link"));
        assert!(open_regular(root, "dirlink/passwd", 1 << 20).is_err());
        assert!(open_regular(root, "fifo", 1 << 20).unwrap_err().contains("not a regular file"));
        assert!(open_regular(root, "../x", 1).unwrap_err().contains("without `..`"));
        assert!(open_regular(root, "/etc/passwd", 1 << 20).is_err());
        assert!(open_regular(root, "missing", 1).unwrap_err().contains("does not exist"));
        assert!(open_dir(root, Path::new("dirlink")).is_err());
        assert!(open_dir(root, Path::new("sub")).is_ok());
        // ok.json (2) + sub/big (100); links and the FIFO count nothing.
        assert_eq!(tree_size(root).unwrap(), 102);
    }
}
