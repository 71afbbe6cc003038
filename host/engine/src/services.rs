//! The host capabilities one running task may call ([`spade_api::TaskServices`]).
//!
//! A `TaskCtx` is created per operator call and may run on a worker thread, so it holds
//! only shared, thread-safe handles. Expression rendering for `param_eval>` uses a
//! per-thread evaluator (the attempt's own evaluator lives on the coordinator thread).

use std::cell::RefCell;
use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use spade_api::{AttemptRef, LogLevel, Object, StartRequest, TaskServices, Usage};
use spade_dig::Zone;
use spade_expr::{Evaluator, ExprLimits};

use crate::attempt::{Console, Launcher};

pub struct TaskCtx {
    pub console: Arc<dyn Console>,
    pub task_name: String,
    pub project_root: PathBuf,
    /// Directory (relative to the project) of the workflow the task came from.
    pub workdir: Option<String>,
    pub timezone: Zone,
    pub expr_limits: ExprLimits,
    pub launcher: Option<Arc<dyn Launcher>>,
    /// Secret values (the runtime only asks for keys granted to the calling plugin).
    pub secrets: Arc<HashMap<String, String>>,
    /// Log lines of this call, kept for the store (bounded by `LOG_KEEP_BYTES`).
    pub logs: Mutex<KeptLogs>,
    /// What this call and the commands that finished during it used.
    pub usage: Mutex<Usage>,
}

/// Most bytes of log text kept in the state database per operator call.
pub const LOG_KEEP_BYTES: usize = 64 << 10;

#[derive(Default)]
pub struct KeptLogs {
    pub lines: Vec<(LogLevel, String)>,
    bytes: usize,
    dropped: usize,
}

impl KeptLogs {
    fn push(&mut self, level: LogLevel, message: &str) {
        if self.bytes + message.len() > LOG_KEEP_BYTES {
            self.dropped += 1;
            return;
        }
        self.bytes += message.len();
        self.lines.push((level, message.to_string()));
    }

    /// The kept lines, with a note when some were dropped.
    pub fn take(&mut self) -> Vec<(LogLevel, String)> {
        let mut lines = std::mem::take(&mut self.lines);
        if self.dropped > 0 {
            lines.push((
                LogLevel::Warn,
                format!("({} more log lines not kept: {} KiB per call)", self.dropped, LOG_KEEP_BYTES >> 10),
            ));
        }
        self.bytes = 0;
        self.dropped = 0;
        lines
    }
}

thread_local! {
    static EVALUATORS: RefCell<HashMap<Zone, Evaluator>> = RefCell::new(HashMap::new());
}

impl TaskServices for TaskCtx {
    fn print(&self, line: &str) {
        self.console.print(line);
    }

    fn log(&self, level: LogLevel, message: &str) {
        self.console.log(&self.task_name, level, message);
        self.logs.lock().unwrap_or_else(|e| e.into_inner()).push(level, message);
    }

    fn command_output(&self, stderr: bool, line: &str) {
        self.console.command_output(&self.task_name, line);
        self.logs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(if stderr { LogLevel::Warn } else { LogLevel::Info }, line);
    }

    fn record_usage(&self, usage: Usage) {
        self.usage.lock().unwrap_or_else(|e| e.into_inner()).add(usage);
    }

    fn secret(&self, key: &str) -> Option<String> {
        self.secrets.get(key).cloned()
    }

    fn load_workflow(&self, path: &str) -> Result<Object, String> {
        spade_dig::load_called_workflow(&self.project_root, self.workdir.as_deref(), path)
            .map(|def| def.task_config())
            .map_err(|e| e.to_string())
    }

    fn render_template(&self, template: &str, scope: &Object) -> Result<String, String> {
        EVALUATORS.with(|cell| {
            let mut map = cell.borrow_mut();
            let evaluator = match map.entry(self.timezone) {
                Entry::Occupied(e) => e.into_mut(),
                Entry::Vacant(e) => {
                    e.insert(Evaluator::new(self.timezone, self.expr_limits).map_err(|e| e.to_string())?)
                }
            };
            evaluator.render(template, scope).map_err(|e| e.to_string())
        })
    }

    fn workdir(&self) -> Option<String> {
        self.workdir.clone()
    }

    fn start_or_find(&self, req: &StartRequest) -> Result<AttemptRef, String> {
        match &self.launcher {
            Some(l) => l.start_or_find(req),
            None => Err("this host cannot start other attempts".into()),
        }
    }

    fn attempt_status(&self, attempt_id: i64) -> Result<AttemptRef, String> {
        match &self.launcher {
            Some(l) => l.status(attempt_id),
            None => Err("this host cannot watch other attempts".into()),
        }
    }

    fn param_get(&self, key: &str) -> Result<Option<String>, String> {
        match &self.launcher {
            Some(l) => l.param_get(key),
            None => Err("the parameter server is not reachable from this host (agents do not have it yet)".into()),
        }
    }

    fn param_set(&self, key: &str, value: &str) -> Result<(), String> {
        match &self.launcher {
            Some(l) => l.param_set(key, value),
            None => Err("the parameter server is not reachable from this host (agents do not have it yet)".into()),
        }
    }
}
