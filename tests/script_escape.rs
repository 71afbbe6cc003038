//! The escape suite for scripts: `sh>` and `py>` tasks of a real project, in the default
//! sandbox, trying to get out. Reads and writes outside the workspace, the engine's state
//! and grants, the network (the local PostgreSQL), host processes and environment must all
//! be out of reach; memory, time, processes and output are limited, each with a task error
//! naming the limit; and after every attempt the host is fine and the next task runs.

use std::path::Path;

mod support;
use support::*;

fn require_bwrap() {
    let found =
        std::process::Command::new("sh").args(["-c", "command -v bwrap"]).output().is_ok_and(|o| o.status.success());
    assert!(found, "bubblewrap is not installed: install it (scripts/test.sh does) to run the escape suite");
}

fn project(files: &[(&str, &str)]) -> tempfile::TempDir {
    require_bwrap();
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    dir
}

/// Runs `dig` and then a harmless workflow in the same project: the second must succeed.
fn run_then_next(dir: &Path, dig: &str) -> (bool, String) {
    let out = spade(dir, &["run", dig]);
    let err = stderr(&out);
    std::fs::write(dir.join("next.dig"), "timezone: UTC\n+next:\n  sh>: echo next > next.txt\n").unwrap();
    let next = spade(dir, &["run", "next.dig"]);
    assert!(next.status.success(), "after {dig}, the next task failed: {}", stderr(&next));
    (out.status.success(), err)
}

/// A script that exits 0 only if `probe` (a shell command) fails: contained.
fn contained(probe: &str) -> String {
    format!("if {probe}; then echo LEAKED; exit 1; else echo contained; fi")
}

#[test]
fn files_outside_the_workspace_are_out_of_reach() {
    let marker = std::env::temp_dir().join(format!("spade-escape-marker-{}", std::process::id()));
    std::fs::write(&marker, "host secret").unwrap();
    let home = std::env::var("HOME").unwrap();
    let home_marker = Path::new(&home).join(format!(".spade-escape-marker-{}", std::process::id()));
    std::fs::write(&home_marker, "home secret").unwrap();
    let dir = project(&[]);
    let project_dir = dir.path().display().to_string();
    let dig = format!(
        "timezone: UTC\n\
         +tmp:\n  sh>: |\n    {}\n\
         +home:\n  sh>: |\n    {}\n\
         +shadow:\n  sh>: |\n    {}\n\
         +write_etc:\n  sh>: |\n    {}\n\
         +write_tmp_host:\n  sh>: |\n    {}\n\
         +state:\n  sh>: |\n    {}\n\
         +grants:\n  sh>: |\n    {}\n\
         +root:\n  sh>: test \"$(id -u)\" != 0\n",
        contained(&format!("cat {} 2>/dev/null", marker.display())),
        contained(&format!("cat {} 2>/dev/null", home_marker.display())),
        contained("cat /etc/shadow 2>/dev/null"),
        contained("touch /etc/spade-escape 2>/dev/null"),
        contained(&format!("echo x >> {} 2>/dev/null", marker.display())),
        contained(&format!("cat {project_dir}/.spade/state.db 2>/dev/null | head -c1 | grep -q .")),
        contained(&format!("echo 'grants: {{}}' >> {project_dir}/spade.yml 2>/dev/null")),
    );
    std::fs::write(dir.path().join("spade.yml"), "disk_quota_mb: 1024\n").unwrap();
    std::fs::write(dir.path().join("files.dig"), dig).unwrap();
    let (ok, err) = run_then_next(dir.path(), "files.dig");
    assert!(ok, "{err}");
    assert!(!err.contains("LEAKED"), "{err}");
    assert_eq!(std::fs::read_to_string(&marker).unwrap(), "host secret");
    assert_eq!(std::fs::read_to_string(dir.path().join("spade.yml")).unwrap(), "disk_quota_mb: 1024\n");
    assert!(!Path::new("/etc/spade-escape").exists());
    let _ = std::fs::remove_file(&marker);
    let _ = std::fs::remove_file(&home_marker);
}

#[test]
fn no_network_no_host_processes_no_host_environment() {
    let dir = project(&[(
        "probe.py",
        "import socket\n\
         def connect():\n    s = socket.socket()\n    s.settimeout(2)\n    try:\n        s.connect(('127.0.0.1', 5432))\n    except OSError as e:\n        print('refused:', e)\n        return\n    raise SystemExit('LEAKED: connected to the host PostgreSQL')\n",
    )]);
    std::fs::write(
        dir.path().join("net.dig"),
        format!(
            "timezone: UTC\n\
             +postgres:\n  py>: probe.connect\n\
             +processes:\n  sh>: |\n    {}\n\
             +environment:\n  sh>: |\n    {}\n",
            contained("ps -e | grep -q spade"),
            // Not `env | grep`: the script itself is in the environment (`_command`).
            contained("printenv SPADE_ESCAPE_MARKER"),
        ),
    )
    .unwrap();
    let marker = std::ffi::OsString::from("visible-to-spade");
    let out = spade_env(dir.path(), &["run", "net.dig"], &[("SPADE_ESCAPE_MARKER", marker.as_os_str())]);
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(!err.contains("LEAKED") && err.contains("refused:"), "{err}");
}

#[test]
fn memory_is_limited_with_a_clear_error() {
    let dir = project(&[
        ("hog.py", "def run():\n    chunks = []\n    while True:\n        chunks.append(bytearray(16 << 20))\n"),
        ("hog.dig", "timezone: UTC\n+hog:\n  py>: hog.run\n"),
        ("spade.yml", "grants:\n  spade-py:\n    command: {memory_mb: 256}\n"),
    ]);
    let (ok, err) = run_then_next(dir.path(), "hog.dig");
    assert!(!ok);
    assert!(err.contains("MemoryError") && err.contains("memory limit of 256 MiB (memory_mb)"), "{err}");
}

#[test]
fn a_script_past_its_deadline_is_stopped() {
    let dir = project(&[
        ("slow.dig", "timezone: UTC\n+slow:\n  sh>: sleep 120\n"),
        ("spade.yml", "grants:\n  spade-sh:\n    command: {timeout_seconds: 2}\n"),
    ]);
    let (ok, err) = run_then_next(dir.path(), "slow.dig");
    assert!(!ok);
    assert!(err.contains("time limit of 2 s (timeout_seconds)"), "{err}");
}

#[test]
fn cpu_time_is_limited() {
    let dir = project(&[
        ("spin.dig", "timezone: UTC\n+spin:\n  sh>: while :; do :; done\n"),
        ("spade.yml", "grants:\n  spade-sh:\n    command: {cpu_seconds: 1}\n"),
    ]);
    let (ok, err) = run_then_next(dir.path(), "spin.dig");
    assert!(!ok);
    assert!(err.contains("CPU time limit of 1 s (cpu_seconds)"), "{err}");
}

#[test]
fn forking_past_the_process_limit_fails() {
    let dir = project(&[
        (
            "fork.dig",
            "timezone: UTC\n+fork:\n  sh>: for i in $(seq 1 100); do sleep 5 & done 2> fork-errors.txt; wait; echo forked all\n",
        ),
        ("spade.yml", "grants:\n  spade-sh:\n    command: {processes: 20}\n"),
    ]);
    let (_, err) = run_then_next(dir.path(), "fork.dig");
    let errors = std::fs::read_to_string(dir.path().join(".spade/workspace/fork-errors.txt")).unwrap_or_default();
    assert!(errors.contains("fork") || errors.contains("Resource temporarily unavailable"), "{errors} / {err}");
}

#[test]
fn flooding_output_is_stopped() {
    let dir = project(&[
        ("flood.dig", "timezone: UTC\n+flood:\n  sh>: yes spade-output-flood\n"),
        ("spade.yml", "grants:\n  spade-sh:\n    command: {output_mb: 1}\n"),
    ]);
    let (ok, err) = run_then_next(dir.path(), "flood.dig");
    assert!(!ok);
    assert!(err.contains("more than 1 MiB of output (output_mb)"), "{}", &err[err.len().saturating_sub(2000)..]);
}

#[test]
fn a_script_that_replaces_its_output_file_cannot_hand_the_host_a_file() {
    let dir = project(&[
        (
            "swap.py",
            "import os, sys, digdag\n\
             def link():\n    out = sys.argv[3]\n    # the runner writes output.json after us: make it a link to a host file instead\n    import atexit\n    def swap():\n        os.remove(out) if os.path.exists(out) else None\n        os.symlink('/etc/passwd', out)\n        os._exit(0)\n    atexit.register(swap)\n",
        ),
        ("swap.dig", "timezone: UTC\n+swap:\n  py>: swap.link\n"),
    ]);
    let (ok, err) = run_then_next(dir.path(), "swap.dig");
    assert!(!ok);
    assert!(err.contains("symbolic link") && !err.contains("root:x:0:0"), "{err}");
}

/// spade run by an ordinary user: bubblewrap then makes an unprivileged user namespace
/// instead of dropping from root. Run when the tests run as root (they drop to `nobody`);
/// otherwise every other test here already runs that way.
#[test]
fn the_sandbox_contains_scripts_of_an_ordinary_user_too() {
    require_bwrap();
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("the tests run as an ordinary user: every other test here covers this case");
        return;
    }
    let dir = project(&[
        (
            "user.dig",
            "timezone: UTC\n+a:\n  sh>: |\n    test \"$(id -u)\" = 65534\n    echo written > f.txt\n    \
             if cat /etc/shadow 2>/dev/null; then echo LEAKED; exit 1; fi\n+b:\n  py>: t.run\n",
        ),
        ("t.py", "import digdag\ndef run():\n    digdag.env.store({'py': 'ok'})\n"),
    ]);
    let status = std::process::Command::new("chown").args(["-R", "65534:65534"]).arg(dir.path()).status().unwrap();
    assert!(status.success());
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(env!("CARGO_BIN_EXE_spade"))
        .args(["run", "user.dig"])
        .current_dir(dir.path())
        .env_clear()
        .env("HOME", dir.path())
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("SPADE_CACHE_DIR", dir.path().join(".cache"))
        .output()
        .unwrap();
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(!err.contains("LEAKED"), "{err}");
    assert_eq!(std::fs::read_to_string(dir.path().join(".spade/workspace/f.txt")).unwrap(), "written\n");
}

#[test]
fn scripts_are_held_to_the_attempts_disk_quota() {
    let dir = project(&[
        ("spade.yml", "disk_quota_mb: 5\n"),
        // One file larger than the quota: stopped while it is written.
        ("big.dig", "timezone: UTC\n+big:\n  sh>: head -c 20000000 /dev/zero > big.bin\n"),
        // Many files, each under it, together over it: charged when the script ends.
        (
            "many.dig",
            "timezone: UTC\n+many:\n  sh>: for i in 1 2 3 4; do head -c 2000000 /dev/zero > part$i.bin; done\n",
        ),
    ]);
    let (ok, err) = run_then_next(dir.path(), "big.dig");
    assert!(!ok);
    assert!(err.contains("disk quota (disk_quota)"), "{err}");
    std::fs::remove_file(dir.path().join(".spade/workspace/big.bin")).ok();
    let (ok, err) = run_then_next(dir.path(), "many.dig");
    assert!(!ok);
    assert!(err.contains("exceeded the attempt's disk quota of 5 MiB (disk_quota)"), "{err}");
}
