//! The SMTP server mail> tests send to: tests/support/smtp_sink.py (aiosmtpd from PyPI,
//! installed by scripts/install-test-peers.sh) on a loopback port, started for the life of
//! the test process; each message it receives is a JSON file in its directory.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};

use serde_json::Value;

use crate::support::spawn_for_process_life;

pub struct Sink {
    pub port: u16,
    dir: tempfile::TempDir,
    child: std::process::Child,
}

impl Drop for Sink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Sink {
    pub fn start() -> Sink {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/support/smtp_sink.py");
        let mut cmd = Command::new("python3");
        cmd.arg(script).arg(port.to_string()).arg(dir.path()).args(["sender", "s3cret"]).stdout(Stdio::piped());
        let mut child = spawn_for_process_life(cmd);
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "ready", "the SMTP sink (aiosmtpd: scripts/install-test-peers.sh) did not start");
        Sink { port, dir, child }
    }

    /// The messages received so far, in order.
    pub fn messages(&self) -> Vec<Value> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(self.dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "json"))
            .collect();
        files.sort_by_key(|p| p.file_stem().and_then(|s| s.to_str()).and_then(|s| s.parse::<u32>().ok()));
        files.iter().map(|f| serde_json::from_str(&std::fs::read_to_string(f).unwrap()).unwrap()).collect()
    }
}
