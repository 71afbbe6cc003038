//! Helpers shared by the end-to-end test files. Each file is a test crate of its own and
//! uses only some of them, hence the `dead_code` allowance.
#![allow(dead_code)]

use std::ffi::OsStr;
use std::path::Path;
use std::process::{Command, Output};

/// `spade ARGS` in the project `dir`, with a host time zone that differs from every
/// workflow's (nothing may depend on it) and no local secrets of whoever runs the tests.
pub fn spade(dir: &Path, args: &[&str]) -> Output {
    spade_env(dir, args, &[])
}

/// [`spade`] with more environment variables.
pub fn spade_env(dir: &Path, args: &[&str], env: &[(&str, &OsStr)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_spade"))
        .args(args)
        .current_dir(dir)
        .env("TZ", "Asia/Kathmandu")
        .env("SPADE_SECRETS", dir.join("no-secrets.yml"))
        .envs(env.iter().copied())
        .output()
        .expect("spade starts")
}

pub fn stdout_lines(out: &Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// (stdout, stderr) as text.
pub fn text(out: &Output) -> (String, String) {
    (String::from_utf8_lossy(&out.stdout).into_owned(), stderr(out))
}

/// The test-only `hostile>` plugin, built by spade-bundled.
pub fn hostile_plugin() -> &'static str {
    spade_bundled::test_plugin_path("spade-test-hostile").expect("built by spade-bundled")
}

/// Spawns `cmd` so that it dies with this test process (a server shared by the tests of
/// one binary has no owner to kill it). `PR_SET_PDEATHSIG` fires when the thread that
/// forked the child ends, so the fork happens on a thread that lives as long as the
/// process.
pub fn spawn_for_process_life(mut cmd: std::process::Command) -> std::process::Child {
    use std::os::unix::process::CommandExt;
    // SAFETY: only prctl, async-signal-safe, between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong);
            Ok(())
        });
    }
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        tx.send(cmd.spawn()).unwrap();
        loop {
            std::thread::park();
        }
    });
    rx.recv().unwrap().expect("the command starts")
}
