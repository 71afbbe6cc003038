use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};

use super::*;

fn write(dir: &Path, rel: &str, text: &str) {
    let p = dir.join(rel);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, text).unwrap();
}

fn project() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    write(d.path(), "main.dig", "+a:\n  echo>: hi\n");
    write(d.path(), "scripts/run.sh", "#!/bin/sh\necho ok\n");
    fs::set_permissions(d.path().join("scripts/run.sh"), fs::Permissions::from_mode(0o700)).unwrap();
    write(d.path(), "queries/q.sql", "select 1");
    write(d.path(), ".spade/state.db", "state");
    write(d.path(), ".git/HEAD", "ref");
    write(d.path(), "tmp/big.log", "log");
    write(d.path(), ".digdagignore", "tmp/\n*.bak\n");
    write(d.path(), "old.bak", "x");
    d
}

#[test]
fn packs_like_digdag_push_and_round_trips() {
    let src = project();
    symlink("queries/q.sql", src.path().join("q-link.sql")).unwrap();
    let packed = pack(src.path(), &PackOptions::default()).unwrap();
    assert_eq!(packed.files, ["main.dig", "q-link.sql", "queries/q.sql", "scripts/run.sh"]);

    let out = tempfile::tempdir().unwrap();
    let done = unpack_to(&packed.bytes, out.path(), &Limits::default()).unwrap();
    assert_eq!(done.bytes, ("+a:\n  echo>: hi\n".len() + "#!/bin/sh\necho ok\n".len() + "select 1".len()) as u64);
    assert_eq!(fs::read_to_string(out.path().join("main.dig")).unwrap(), "+a:\n  echo>: hi\n");
    assert_eq!(fs::read_link(out.path().join("q-link.sql")).unwrap(), Path::new("queries/q.sql"));
    assert_eq!(fs::read_to_string(out.path().join("q-link.sql")).unwrap(), "select 1");
    let mode = fs::metadata(out.path().join("scripts/run.sh")).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o755, "executables stay executable");
    assert!(!out.path().join(".spade").exists() && !out.path().join("tmp").exists());
    assert!(!out.path().join("old.bak").exists());

    // Deterministic: the same files give the same bytes, so the same digest.
    let again = pack(src.path(), &PackOptions::default()).unwrap();
    assert_eq!(packed.digest(), again.digest());
    assert_eq!(packed.digest().len(), 64);
    // And an unpacked copy packs to the same bytes.
    assert_eq!(pack(out.path(), &PackOptions::default()).unwrap().digest(), packed.digest());
}

#[test]
fn outgoing_links_are_refused_unless_copied() {
    let src = project();
    let outside = tempfile::tempdir().unwrap();
    write(outside.path(), "shared.sql", "select 2");
    symlink(outside.path().join("shared.sql"), src.path().join("shared.sql")).unwrap();
    let err = pack(src.path(), &PackOptions::default()).unwrap_err();
    assert!(matches!(err, ArchiveError::OutgoingLink { .. }), "{err}");
    assert!(err.to_string().contains("--copy-outgoing-symlinks"), "{err}");

    let packed = pack(src.path(), &PackOptions { copy_outgoing_symlinks: true }).unwrap();
    let out = tempfile::tempdir().unwrap();
    unpack_to(&packed.bytes, out.path(), &Limits::default()).unwrap();
    let meta = fs::symlink_metadata(out.path().join("shared.sql")).unwrap();
    assert!(meta.is_file(), "the link's content travels as a file");
    assert_eq!(fs::read_to_string(out.path().join("shared.sql")).unwrap(), "select 2");
}

/// A tar with entries written byte by byte, as an attacker would (the tar crate's
/// builder refuses `..` names itself).
fn raw_tar(entries: &[(&str, tar::EntryType, &str, &[u8])]) -> Vec<u8> {
    let mut tar = Vec::new();
    for (name, kind, link, data) in entries {
        let mut h = tar::Header::new_old();
        h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        h.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
        h.set_entry_type(*kind);
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        h.set_cksum();
        tar.extend_from_slice(h.as_bytes());
        tar.extend_from_slice(data);
        tar.resize(tar.len().next_multiple_of(512), 0);
    }
    tar.resize(tar.len() + 1024, 0);
    let mut gz = GzEncoder::new(Vec::new(), Compression::default());
    gz.write_all(&tar).unwrap();
    gz.finish().unwrap()
}

fn refused(bytes: &[u8], limits: &Limits) -> (ArchiveError, tempfile::TempDir, tempfile::TempDir) {
    let parent = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir_in(parent.path()).unwrap();
    let err = unpack_to(bytes, out.path(), limits).unwrap_err();
    (err, parent, out)
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> =
        fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into()).collect();
    v.sort();
    v
}

#[test]
fn traversal_and_absolute_names_are_refused() {
    use tar::EntryType::*;
    for name in ["../escape.txt", "a/../../escape.txt", "/etc/escape.txt"] {
        let bytes = raw_tar(&[("ok.txt", Regular, "", b"fine"), (name, Regular, "", b"evil")]);
        let (err, parent, out) = refused(&bytes, &Limits::default());
        assert!(matches!(err, ArchiveError::Unsafe { .. }), "{name}: {err}");
        assert!(err.to_string().contains(name.trim_start_matches('/')), "{name}: {err}");
        assert_eq!(names_in(parent.path()).len(), 1, "{name}: nothing lands beside the target");
        assert!(!Path::new("/etc/escape.txt").exists());
        drop(out);
    }
}

#[test]
fn links_out_and_writes_through_links_are_refused() {
    use tar::EntryType::*;
    // A link pointing out, then a file written through it.
    let bytes = raw_tar(&[("up", Symlink, "..", b""), ("up/escape.txt", Regular, "", b"evil")]);
    let (err, parent, _out) = refused(&bytes, &Limits::default());
    assert!(err.to_string().contains("outside the project"), "{err}");
    assert_eq!(names_in(parent.path()).len(), 1);

    let bytes = raw_tar(&[("abs", Symlink, "/etc", b"")]);
    let (err, ..) = refused(&bytes, &Limits::default());
    assert!(err.to_string().contains("outside the project"), "{err}");

    // Even if a link out were on disk already, the directory handle would not follow it.
    let parent = tempfile::tempdir().unwrap();
    let out = parent.path().join("ws");
    fs::create_dir(&out).unwrap();
    symlink(parent.path(), out.join("up")).unwrap();
    let bytes = raw_tar(&[("up/escape.txt", Regular, "", b"evil")]);
    let err = unpack_to(&bytes, &out, &Limits::default()).unwrap_err();
    assert!(matches!(err, ArchiveError::Io { .. }), "{err}");
    assert!(!parent.path().join("escape.txt").exists());
}

#[test]
fn hard_links_devices_and_duplicates_are_refused() {
    use tar::EntryType::*;
    let (err, ..) = refused(&raw_tar(&[("a", Regular, "", b"x"), ("b", Link, "a", b"")]), &Limits::default());
    assert!(err.to_string().contains("hard link"), "{err}");
    let (err, ..) = refused(&raw_tar(&[("dev", Char, "", b"")]), &Limits::default());
    assert!(err.to_string().contains("Char"), "{err}");
    let (err, ..) = refused(&raw_tar(&[("a", Regular, "", b"x"), ("a", Regular, "", b"y")]), &Limits::default());
    assert!(err.to_string().contains("appears twice"), "{err}");
}

#[test]
fn sizes_are_capped_while_decompressing() {
    use tar::EntryType::*;
    let limits = Limits { max_archive_bytes: 1 << 20, max_unpacked_bytes: 10_000, max_entries: 3 };
    // A gzip bomb: 4 MiB of one byte compresses to a few KiB.
    let big = vec![b'a'; 4 << 20];
    let (err, ..) = refused(&raw_tar(&[("big", Regular, "", &big)]), &limits);
    assert!(matches!(err, ArchiveError::TooLarge(_)), "{err}");
    assert!(err.to_string().contains("10000 bytes"), "{err}");

    let (err, ..) = refused(
        &raw_tar(&[
            ("a", Regular, "", b"1"),
            ("b", Regular, "", b"2"),
            ("c", Directory, "", b""),
            ("d", Regular, "", b""),
        ]),
        &limits,
    );
    assert!(err.to_string().contains("3 entries"), "{err}");

    let small = Limits { max_archive_bytes: 100, ..limits };
    let (err, ..) = refused(&raw_tar(&[("big", Regular, "", &big)]), &small);
    assert!(err.to_string().contains("compressed"), "{err}");

    let (err, ..) = refused(b"not a tarball", &Limits::default());
    assert!(matches!(err, ArchiveError::Corrupt(_)), "{err}");
}
