//! The workspace: the only directory the tasks of a local-mode attempt can see.
//!
//! Digdag runs local-mode tasks in the project directory itself. spade cannot: that
//! directory also holds what the engine trusts — its state database (`.spade/`), the
//! project's grants and lock (`spade.yml`, `spade.lock`) and the workflow files — and a
//! task able to write there could corrupt the history, grant itself every secret or change
//! what the next run executes. A preopen cannot hide single files, so tasks get a separate
//! directory instead: `.spade/workspace/`, a copy of the project's files without the
//! engine's (see [`ENGINE_FILES`]).
//!
//! It keeps Digdag's local-mode contract: every attempt of the project (and the attempts it
//! `require>`s) runs in the same workspace, so a file one task writes is read by the next
//! task, also after a resume. Before each run the copy is brought up to date with the
//! project: a project file whose size or modification time differs from its copy is copied
//! again (the project wins over a task that changed its copy; copies keep the project
//! file's mtime, so an unchanged project costs one `stat` per file), and files that tasks
//! created are left alone. What the engine loads (workflows, `call>`ed files, grants) is
//! always read from the project, never from the workspace.
//!
//! The workspace lives inside the project's `.spade/` but tasks cannot climb out of it: the
//! runtime preopens only this directory, and `..` and symlinks leading out are refused.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use cap_std::ambient_authority;
use cap_std::fs::Dir;

/// Top-level names of the project that never enter the workspace: the engine's state and
/// caches, Digdag's, the grants and the lock, and version control.
pub const ENGINE_FILES: &[&str] = &[".spade", ".digdag", ".git", "spade.yml", "spade.lock"];

/// Where a project's workspace is.
pub fn workspace_dir(project_root: &Path) -> PathBuf {
    project_root.join(".spade").join("workspace")
}

#[derive(Debug, thiserror::Error)]
#[error("preparing the task workspace {}: {what} {}: {source}; check the permissions and free space of the project directory", workspace.display(), path.display())]
pub struct WorkspaceError {
    workspace: PathBuf,
    what: &'static str,
    path: PathBuf,
    source: io::Error,
}

/// What [`prepare`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Prepared {
    /// Files copied because the workspace had no up-to-date copy.
    pub copied: usize,
    /// Files whose copy was already up to date.
    pub unchanged: usize,
}

/// Bring the project's workspace up to date with the project (see the module doc) and
/// return its path. Safe to run while another process does the same, and while tasks (whose
/// scripts may be running) change the workspace: every write goes through a directory
/// handle of the workspace that cannot be led out of it (see [`Sync`]).
pub fn prepare(project_root: &Path) -> Result<(PathBuf, Prepared), WorkspaceError> {
    prepare_excluding(project_root, &[])
}

/// [`prepare`], also leaving out `excluded` files of the project (a state database given
/// with `--state` that lives among the project's files, with its `-wal`/`-shm` files).
pub fn prepare_excluding(project_root: &Path, excluded: &[PathBuf]) -> Result<(PathBuf, Prepared), WorkspaceError> {
    let ws = workspace_dir(project_root);
    let mut sync = Sync { workspace: ws.clone(), done: Prepared::default(), excluded: excluded.to_vec() };
    // `.spade/` is the engine's (tasks cannot reach it): the workspace directory itself is
    // created by path, everything below it through its handle.
    fs::create_dir_all(&ws).map_err(|e| sync.err("creating", &ws, e))?;
    let root = Dir::open_ambient_dir(&ws, ambient_authority()).map_err(|e| sync.err("opening", &ws, e))?;
    sync.dir(project_root, &root, Path::new(""), true)?;
    Ok((ws, sync.done))
}

/// One sync. The project side (`from`) is read by path: tasks cannot write it. The
/// workspace side is written only through `cap_std::fs::Dir` handles, which resolve every
/// path beneath the workspace (links leading out are refused), so a directory a running
/// script swaps for a link to `/etc` between two steps is never written through (spade may
/// run as root).
struct Sync {
    workspace: PathBuf,
    done: Prepared,
    excluded: Vec<PathBuf>,
}

impl Sync {
    fn err(&self, what: &'static str, path: &Path, source: io::Error) -> WorkspaceError {
        WorkspaceError { workspace: self.workspace.clone(), what, path: path.to_path_buf(), source }
    }

    /// Syncs the project directory `from` into `to` (the workspace directory at `rel`).
    fn dir(&mut self, from: &Path, to: &Dir, rel: &Path, top: bool) -> Result<(), WorkspaceError> {
        let entries = fs::read_dir(from).map_err(|e| self.err("reading", from, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| self.err("reading", from, e))?;
            let name = entry.file_name();
            if top && ENGINE_FILES.iter().any(|f| name == *f) {
                continue;
            }
            let src = entry.path();
            if self.excluded.contains(&src) {
                continue;
            }
            let rel = rel.join(&name);
            let meta = fs::symlink_metadata(&src).map_err(|e| self.err("reading", &src, e))?;
            if meta.is_dir() {
                let sub = self.subdir(to, &name, &rel)?;
                self.dir(&src, &sub, &rel, false)?;
            } else if meta.is_symlink() {
                self.symlink(&src, to, &name, &rel)?;
            } else if meta.is_file() {
                self.file(&src, to, &name, &rel, &meta)?;
            }
            // Sockets, fifos and devices are not project files: left out.
        }
        Ok(())
    }

    /// The workspace directory `name` in `to`, made a directory if a task made it anything
    /// else.
    fn subdir(&mut self, to: &Dir, name: &std::ffi::OsStr, rel: &Path) -> Result<Dir, WorkspaceError> {
        match to.symlink_metadata(name) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                to.remove_file(name).map_err(|e| self.err("replacing", rel, e))?;
                to.create_dir(name).map_err(|e| self.err("creating", rel, e))?;
            }
            Err(_) => to.create_dir(name).map_err(|e| self.err("creating", rel, e))?,
        }
        // A task may have swapped it for a link since: cap-std follows a link only while it
        // stays inside the workspace, and refuses one leading out.
        to.open_dir(name).map_err(|e| self.err("opening", rel, e))
    }

    fn remove_any(&self, to: &Dir, name: &std::ffi::OsStr, rel: &Path) -> Result<(), WorkspaceError> {
        match to.symlink_metadata(name) {
            Ok(m) if m.is_dir() => to.remove_dir_all(name).map_err(|e| self.err("replacing", rel, e)),
            Ok(_) => to.remove_file(name).map_err(|e| self.err("replacing", rel, e)),
            Err(_) => Ok(()),
        }
    }

    fn file(
        &mut self,
        src: &Path,
        to: &Dir,
        name: &std::ffi::OsStr,
        rel: &Path,
        meta: &fs::Metadata,
    ) -> Result<(), WorkspaceError> {
        if let Ok(have) = to.symlink_metadata(name)
            && have.is_file()
            && have.len() == meta.len()
            && have.modified().ok().map(|t| t.into_std()) == meta.modified().ok()
        {
            self.done.unchanged += 1;
            return Ok(());
        }
        if to.symlink_metadata(name).is_ok_and(|m| m.is_dir()) {
            to.remove_dir_all(name).map_err(|e| self.err("replacing", rel, e))?;
        }
        // The copy goes to a new file of an unguessable name (never through a link a task
        // planted, never into a file it opened), then replaces `name` by rename, which
        // replaces a link rather than following it.
        let mut attempts = 0;
        let tmp = loop {
            let tmp = format!(".{}.spade-copy-{:016x}", name.to_string_lossy(), random_u64());
            match copy_new(src, to, &tmp, meta) {
                Ok(()) => break tmp,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && attempts < 3 => attempts += 1,
                Err(e) => return Err(self.err("copying", src, e)),
            }
        };
        to.rename(&tmp, to, name).map_err(|e| self.err("copying", src, e))?;
        self.done.copied += 1;
        Ok(())
    }

    /// Symlinks are copied as symlinks: one pointing inside the project keeps working in
    /// the workspace; one pointing out of it dangles or is refused, as a task may not
    /// follow it anyway.
    fn symlink(&mut self, src: &Path, to: &Dir, name: &std::ffi::OsStr, rel: &Path) -> Result<(), WorkspaceError> {
        let target = fs::read_link(src).map_err(|e| self.err("reading", src, e))?;
        if to.read_link_contents(name).ok().as_deref() == Some(target.as_path()) {
            self.done.unchanged += 1;
            return Ok(());
        }
        self.remove_any(to, name, rel)?;
        to.symlink_contents(&target, name).map_err(|e| self.err("linking", rel, e))?;
        self.done.copied += 1;
        Ok(())
    }
}

/// Copy `src` into the new file `name` of `to` (`create_new`: an existing file or link
/// there is an error, never followed) with `src`'s permissions and modification time.
fn copy_new(src: &Path, to: &Dir, name: &str, meta: &fs::Metadata) -> io::Result<()> {
    let mut from = fs::File::open(src)?;
    let out = to.open_with(name, cap_std::fs::OpenOptions::new().write(true).create_new(true))?;
    let mut out = out.into_std();
    io::copy(&mut from, &mut out)?;
    out.set_permissions(meta.permissions())?;
    if let Ok(mtime) = meta.modified() {
        out.set_modified(mtime)?;
    }
    Ok(())
}

/// A random number for temporary names (the standard library's per-process random keys).
fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos()));
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn project() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        fs::create_dir_all(p.join(".spade")).unwrap();
        fs::write(p.join(".spade/state.db"), "state").unwrap();
        fs::write(p.join("spade.yml"), "grants: {}").unwrap();
        fs::write(p.join("spade.lock"), "lock").unwrap();
        fs::write(p.join("etl.dig"), "+a: {echo>: a}").unwrap();
        fs::create_dir_all(p.join("queries/daily")).unwrap();
        fs::write(p.join("queries/daily/q.sql"), "select 1").unwrap();
        std::os::unix::fs::symlink("queries/daily/q.sql", p.join("q_link.sql")).unwrap();
        dir
    }

    #[test]
    fn copies_the_project_without_the_engines_files() {
        let p = project();
        let (ws, done) = prepare(p.path()).unwrap();
        assert_eq!(ws, p.path().join(".spade/workspace"));
        assert_eq!(fs::read_to_string(ws.join("etl.dig")).unwrap(), "+a: {echo>: a}");
        assert_eq!(fs::read_to_string(ws.join("queries/daily/q.sql")).unwrap(), "select 1");
        assert_eq!(fs::read_to_string(ws.join("q_link.sql")).unwrap(), "select 1");
        for hidden in ENGINE_FILES {
            assert!(!ws.join(hidden).exists(), "{hidden} must not be in the workspace");
        }
        assert_eq!(done, Prepared { copied: 3, unchanged: 0 });
    }

    #[test]
    fn keeps_what_tasks_wrote_and_restores_project_files() {
        let p = project();
        let (ws, _) = prepare(p.path()).unwrap();
        fs::write(ws.join("output.csv"), "made by a task").unwrap();
        fs::write(ws.join("etl.dig"), "rewritten by a task").unwrap();
        let (_, done) = prepare(p.path()).unwrap();
        assert_eq!(fs::read_to_string(ws.join("output.csv")).unwrap(), "made by a task");
        assert_eq!(fs::read_to_string(ws.join("etl.dig")).unwrap(), "+a: {echo>: a}");
        assert_eq!(done, Prepared { copied: 1, unchanged: 2 });
        // A changed project file reaches the workspace.
        fs::write(p.path().join("queries/daily/q.sql"), "select 2 -- longer").unwrap();
        prepare(p.path()).unwrap();
        assert_eq!(fs::read_to_string(ws.join("queries/daily/q.sql")).unwrap(), "select 2 -- longer");
    }

    #[test]
    fn a_state_database_among_the_project_files_is_left_out() {
        let p = project();
        fs::create_dir_all(p.path().join("db")).unwrap();
        fs::write(p.path().join("db/state.db"), "history").unwrap();
        fs::write(p.path().join("db/state.db-wal"), "wal").unwrap();
        let excluded = [p.path().join("db/state.db"), p.path().join("db/state.db-wal")];
        let (ws, _) = prepare_excluding(p.path(), &excluded).unwrap();
        assert!(ws.join("db").is_dir() && !ws.join("db/state.db").exists() && !ws.join("db/state.db-wal").exists());
    }

    #[test]
    fn symlinks_planted_by_tasks_are_replaced_never_followed() {
        let p = project();
        let outside = tempfile::tempdir().unwrap();
        let target = outside.path().join("victim.txt");
        fs::write(&target, "untouched").unwrap();
        let (ws, _) = prepare(p.path()).unwrap();
        // A task replaces a project file's copy and a project directory by links out.
        fs::remove_file(ws.join("etl.dig")).unwrap();
        std::os::unix::fs::symlink(&target, ws.join("etl.dig")).unwrap();
        fs::remove_dir_all(ws.join("queries")).unwrap();
        std::os::unix::fs::symlink(outside.path(), ws.join("queries")).unwrap();
        prepare(p.path()).unwrap();
        assert_eq!(fs::read_to_string(&target).unwrap(), "untouched");
        assert!(!outside.path().join("daily").exists(), "the sync wrote through a planted directory link");
        assert_eq!(fs::read_to_string(ws.join("etl.dig")).unwrap(), "+a: {echo>: a}");
        assert!(fs::symlink_metadata(ws.join("queries")).unwrap().is_dir());
    }

    #[test]
    fn a_script_swapping_directories_for_links_during_a_sync_cannot_lead_it_out() {
        // What a script of a running attempt can do while another attempt of the project
        // syncs: swap a directory for a link out, again and again. No write may land outside.
        let p = project();
        let outside = tempfile::tempdir().unwrap();
        let (ws, _) = prepare(p.path()).unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let swapper = {
            let (ws, outside, stop) = (ws.clone(), outside.path().to_path_buf(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let q = ws.join("queries");
                    let _ = fs::remove_dir_all(&q).or_else(|_| fs::remove_file(&q));
                    let _ = std::os::unix::fs::symlink(&outside, &q);
                    let _ = fs::remove_file(&q);
                    let _ = fs::create_dir_all(q.join("daily"));
                }
            })
        };
        for _ in 0..300 {
            // Errors are fine (a directory vanished under the sync); escapes are not.
            let _ = prepare(p.path());
            fs::write(p.path().join("queries/daily/q.sql"), format!("select {}", random_u64())).unwrap();
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        swapper.join().unwrap();
        let leaked: Vec<_> = fs::read_dir(outside.path()).unwrap().flatten().map(|e| e.path()).collect();
        assert!(leaked.is_empty(), "the sync wrote outside the workspace: {leaked:?}");
    }

    #[test]
    fn a_copy_never_goes_through_a_link_at_its_temporary_name() {
        let p = project();
        let outside = tempfile::tempdir().unwrap();
        let target = outside.path().join("victim.txt");
        fs::write(&target, "untouched").unwrap();
        std::os::unix::fs::symlink(&target, p.path().join("planted")).unwrap();
        let meta = fs::metadata(p.path().join("etl.dig")).unwrap();
        let dir = Dir::open_ambient_dir(p.path(), ambient_authority()).unwrap();
        let err = copy_new(&p.path().join("etl.dig"), &dir, "planted", &meta).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(fs::read_to_string(&target).unwrap(), "untouched");
    }

    #[test]
    fn copies_keep_the_permissions() {
        use std::os::unix::fs::PermissionsExt;
        let p = project();
        fs::write(p.path().join("run.sh"), "#!/bin/sh\n").unwrap();
        fs::set_permissions(p.path().join("run.sh"), fs::Permissions::from_mode(0o755)).unwrap();
        let (ws, _) = prepare(p.path()).unwrap();
        assert_eq!(fs::metadata(ws.join("run.sh")).unwrap().permissions().mode() & 0o777, 0o755);
    }

    #[test]
    fn a_task_replacing_a_file_with_a_directory_is_undone() {
        let p = project();
        let (ws, _) = prepare(p.path()).unwrap();
        fs::remove_file(ws.join("etl.dig")).unwrap();
        fs::create_dir_all(ws.join("etl.dig/inner")).unwrap();
        prepare(p.path()).unwrap();
        assert_eq!(fs::read_to_string(ws.join("etl.dig")).unwrap(), "+a: {echo>: a}");
    }
}
