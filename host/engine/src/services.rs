//! The host capabilities one running task may call ([`spade_api::TaskServices`]).
//!
//! A `TaskCtx` is created per operator call and may run on a worker thread, so it holds
//! only shared, thread-safe handles. Expression rendering for `param_eval>` uses a
//! per-thread evaluator (the attempt's own evaluator lives on the coordinator thread).

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use chrono_tz::Tz;
use serde_json::Value;
use spade_api::{AttemptRef, LogLevel, Object, StartRequest, TaskServices};
use spade_expr::{Evaluator, ExprLimits};

use crate::attempt::{Console, Launcher};

pub struct TaskCtx {
    pub console: Arc<dyn Console>,
    pub task_name: String,
    pub project_root: PathBuf,
    /// Directory (relative to the project) of the workflow the task came from.
    pub workdir: String,
    pub timezone: Tz,
    pub expr_limits: ExprLimits,
    pub launcher: Option<Arc<dyn Launcher>>,
}

thread_local! {
    static EVALUATORS: RefCell<HashMap<Tz, Evaluator>> = RefCell::new(HashMap::new());
}

/// `dir/path` normalised, refusing anything that leaves the project.
fn join_inside(dir: &str, path: &str) -> Result<PathBuf, String> {
    let p = Path::new(path);
    if p.is_absolute() {
        return Err(format!("{path}: must be a path inside the project, not an absolute path"));
    }
    let mut out = PathBuf::new();
    for c in Path::new(dir).join(p).components() {
        match c {
            Component::Normal(s) => out.push(s),
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    return Err(format!("{path}: must not leave the project directory"));
                }
            }
            _ => return Err(format!("{path}: must be a path inside the project")),
        }
    }
    Ok(out)
}

impl TaskServices for TaskCtx {
    fn print(&self, line: &str) {
        self.console.print(line);
    }

    fn log(&self, level: LogLevel, message: &str) {
        self.console.log(&self.task_name, level, message);
    }

    fn secret(&self, _key: &str) -> Option<String> {
        // Local secrets are not wired yet: nothing is granted.
        None
    }

    fn load_workflow(&self, path: &str) -> Result<Object, String> {
        let mut rel = join_inside(&self.workdir, path)?;
        if rel.extension().is_none_or(|e| e != "dig") {
            let mut s = rel.into_os_string();
            s.push(".dig");
            rel = PathBuf::from(s);
        }
        let def = spade_dig::load_workflow_file(&self.project_root, &rel).map_err(|e| e.to_string())?;
        let mut config = def.config;
        // A called workflow in a subdirectory resolves its own paths from there.
        let dir = rel.parent().map(|p| p.to_string_lossy().into_owned()).unwrap_or_default();
        if dir != self.workdir {
            let export = config.entry("_export").or_insert_with(|| Value::Object(Object::new()));
            if let Value::Object(e) = export {
                e.insert("_workdir".into(), Value::String(dir));
            }
        }
        Ok(config)
    }

    fn render_template(&self, template: &str, scope: &Object) -> Result<String, String> {
        EVALUATORS.with(|cell| {
            let mut map = cell.borrow_mut();
            if !map.contains_key(&self.timezone) {
                let ev = Evaluator::new(self.timezone, self.expr_limits.clone()).map_err(|e| e.to_string())?;
                map.insert(self.timezone, ev);
            }
            map[&self.timezone].render(template, scope).map_err(|e| e.to_string())
        })
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workflow_paths_stay_inside_the_project() {
        assert_eq!(join_inside("sub", "x.dig").unwrap(), PathBuf::from("sub/x.dig"));
        assert_eq!(join_inside("sub", "../x.dig").unwrap(), PathBuf::from("x.dig"));
        assert!(join_inside("", "../x.dig").is_err());
        assert!(join_inside("", "/etc/passwd").is_err());
    }
}
