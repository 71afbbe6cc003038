//! The terminal side of a local run: `echo>` output to stdout (buffered: flushed by the
//! engine before each commit, and by a background thread at least every
//! [`FLUSH_INTERVAL`]), task logs and failures to stderr.

use std::io::{BufWriter, IsTerminal, Stdout, Write};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

/// The longest `echo>` output waits in the buffer while the engine is busy in a long call.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(50);

use spade_api::LogLevel;
use spade_engine::Console;

pub struct StdConsole {
    out: Arc<Mutex<BufWriter<Stdout>>>,
    /// Task log lines at or above this level are shown on stderr.
    show: LogLevel,
    /// stderr is a terminal: colours and a progress line.
    color: bool,
    /// A progress line is on screen and must be cleared before other stderr output.
    progress_shown: std::sync::atomic::AtomicBool,
}

impl StdConsole {
    pub fn new(show: LogLevel) -> Self {
        let out = Arc::new(Mutex::new(BufWriter::with_capacity(64 * 1024, std::io::stdout())));
        start_flusher(Arc::downgrade(&out));
        StdConsole {
            out,
            show,
            color: std::io::stderr().is_terminal(),
            progress_shown: std::sync::atomic::AtomicBool::new(false),
        }
    }
}

/// Flush `out` every [`FLUSH_INTERVAL`] while it has something buffered, until the console
/// is gone. Flushing early is always allowed (a line may be shown before its task commits;
/// it is never the other way round).
fn start_flusher(out: Weak<Mutex<BufWriter<Stdout>>>) {
    let spawned = std::thread::Builder::new().name("stdout-flusher".into()).spawn(move || {
        loop {
            std::thread::sleep(FLUSH_INTERVAL);
            let Some(out) = out.upgrade() else { return };
            let mut out = out.lock().unwrap_or_else(|e| e.into_inner());
            if !out.buffer().is_empty() {
                let _ = out.flush();
            }
        }
    });
    if let Err(e) = spawned {
        // Output is then flushed only with the engine's commits.
        tracing::warn!("cannot start the output flusher: {e}");
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
            self.clear_progress();
            for line in message.lines() {
                eprintln!("{task}: {line}");
            }
        }
    }

    fn command_output(&self, task: &str, line: &str) {
        self.clear_progress();
        eprintln!("{task}: {line}");
    }

    fn task_failed(&self, task: &str, message: &str) {
        // Keep stdout and stderr in a readable order on a terminal.
        self.flush();
        self.clear_progress();
        if self.color {
            eprintln!("\x1b[31merror:\x1b[0m task {task} failed: {message}");
        } else {
            eprintln!("error: task {task} failed: {message}");
        }
    }

    fn flush(&self) {
        let _ = self.out.lock().unwrap().flush();
    }

    fn alert(&self, task: &str, message: &str) {
        // Shown whatever --task-log-level says.
        self.flush();
        self.clear_progress();
        if self.color {
            eprintln!("\x1b[33mwarning:\x1b[0m {task}: {message}");
        } else {
            eprintln!("warning: {task}: {message}");
        }
    }

    fn progress(&self, finished: usize, total: usize) {
        if self.color {
            eprint!("\r\x1b[2K{finished}/{total} tasks done");
            self.progress_shown.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

impl StdConsole {
    fn clear_progress(&self) {
        if self.progress_shown.swap(false, std::sync::atomic::Ordering::Relaxed) {
            eprint!("\r\x1b[2K");
        }
    }

    /// Remove the progress line at the end of a run.
    pub fn finish(&self) {
        self.flush();
        self.clear_progress();
    }
}
