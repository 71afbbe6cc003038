//! The terminal side of a local run: `echo>` output to stdout (buffered, flushed by the
//! engine between rounds), task logs and failures to stderr.

use std::io::{BufWriter, IsTerminal, Stdout, Write};
use std::sync::Mutex;

use spade_api::LogLevel;
use spade_engine::Console;

pub struct StdConsole {
    out: Mutex<BufWriter<Stdout>>,
    /// Task log lines at or above this level are shown on stderr.
    show: LogLevel,
    color: bool,
}

impl StdConsole {
    pub fn new(show: LogLevel) -> Self {
        StdConsole {
            out: Mutex::new(BufWriter::with_capacity(64 * 1024, std::io::stdout())),
            show,
            color: std::io::stderr().is_terminal(),
        }
    }
}

pub fn level_from_str(s: &str) -> LogLevel {
    match s.to_ascii_lowercase().as_str() {
        "trace" => LogLevel::Trace,
        "debug" => LogLevel::Debug,
        "info" => LogLevel::Info,
        "error" => LogLevel::Error,
        _ => LogLevel::Warn,
    }
}

impl Console for StdConsole {
    fn print(&self, line: &str) {
        let mut out = self.out.lock().unwrap();
        // A closed stdout (e.g. `| head`) must not fail the workflow.
        let _ = out.write_all(line.as_bytes());
        let _ = out.write_all(b"\n");
    }

    fn log(&self, task: &str, level: LogLevel, message: &str) {
        if level >= self.show {
            for line in message.lines() {
                eprintln!("{task}: {line}");
            }
        }
    }

    fn task_failed(&self, task: &str, message: &str) {
        // Keep stdout and stderr in a readable order on a terminal.
        self.flush();
        if self.color {
            eprintln!("\x1b[31merror:\x1b[0m task {task} failed: {message}");
        } else {
            eprintln!("error: task {task} failed: {message}");
        }
    }

    fn flush(&self) {
        let _ = self.out.lock().unwrap().flush();
    }
}
