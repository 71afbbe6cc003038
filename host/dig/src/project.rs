//! Projects and workflow files: which `.dig` files make up a project, what a workflow file
//! may contain at its top level, and the [`WorkflowDef`] the engine runs.
//!
//! `load_project` loads and validates every top-level `*.dig` of a directory before anything
//! runs and reports all problems at once (Digdag's ProjectArchiveLoader + WorkflowFile +
//! WorkflowCompiler). `load_workflow_file` does the same for one file, for `call>`. Reading
//! files is the only IO.

use std::path::{Component, Path, PathBuf};

use serde_json::Value;
use spade_api::Object;

use crate::compile::{CompileErrors, TaskNode, compile, describe, suggest};
use crate::error::{LoadError, LoadErrors, SourcePos};
use crate::schedule::Schedule;
use crate::yaml::{SourceMap, display_path, load_yaml_file, pointer_push};
use crate::zone::Zone;

/// File name suffix of a workflow definition.
pub const WORKFLOW_SUFFIX: &str = ".dig";

/// Keys a workflow file may have besides `+` tasks (Digdag's WorkflowFile).
pub const TOP_LEVEL_KEYS: &[&str] =
    &["timezone", "_export", "schedule", "sla", "_error", "_check", "_retry", "_parallel"];

/// One loaded and validated workflow.
#[derive(Clone, Debug, PartialEq)]
pub struct WorkflowDef {
    /// The file name without `.dig`.
    pub name: String,
    /// The file, relative to the project directory.
    pub file: PathBuf,
    /// The whole top-level mapping, raw (includes resolved, `${...}` untouched).
    pub config: Object,
    /// `timezone:`, UTC by default.
    pub timezone: Zone,
    pub schedule: Option<Schedule>,
    /// The compiled task tree; its root is named `+<name>`.
    pub root: TaskNode,
    /// Positions of every key of `config`.
    pub sources: SourceMap,
    /// Things that are not errors but probably mistakes (e.g. an unused schedule option).
    pub warnings: Vec<LoadError>,
}

impl WorkflowDef {
    /// The directory of the file relative to the project (`None` at the top level): the
    /// directory `call>` paths inside this workflow are relative to.
    pub fn workdir(&self) -> Option<String> {
        let parent = self.file.parent()?;
        if parent.as_os_str().is_empty() { None } else { Some(display_path(parent)) }
    }

    /// The config as a subtask of `call>` (Digdag's `toWorkflowDefinition`): without
    /// `timezone` (a called workflow runs in its caller's zone) and, for a file in a
    /// subdirectory, with `_export._workdir` set to that directory.
    pub fn task_config(&self) -> Object {
        let mut config = self.config.clone();
        config.shift_remove("timezone");
        if let Some(dir) = self.workdir() {
            let export = config.entry("_export").or_insert_with(|| Value::Object(Object::new()));
            if !export.is_object() {
                *export = Value::Object(Object::new());
            }
            if let Value::Object(e) = export {
                let workdir = match e.get("_workdir") {
                    Some(Value::String(w)) if !w.is_empty() => format!("{w}/{dir}"),
                    _ => dir,
                };
                e.insert("_workdir".into(), Value::String(workdir));
            }
        }
        config
    }

    /// Where a task of this workflow is defined (`+wf+group+task`; a generated task gives
    /// the position of its nearest static ancestor).
    pub fn task_position(&self, full_name: &str) -> Option<&SourcePos> {
        self.sources.nearest(&SourceMap::task_pointer(full_name))
    }
}

/// Every workflow of a project directory.
#[derive(Clone, Debug, PartialEq)]
pub struct Project {
    pub root: PathBuf,
    /// Sorted by file name.
    pub workflows: Vec<WorkflowDef>,
}

impl Project {
    pub fn workflow(&self, name: &str) -> Option<&WorkflowDef> {
        self.workflows.iter().find(|w| w.name == name)
    }

    /// Warnings of all workflows.
    pub fn warnings(&self) -> impl Iterator<Item = &LoadError> {
        self.workflows.iter().flat_map(|w| w.warnings.iter())
    }
}

/// Load and validate every top-level `*.dig` file of `dir` (sorted by name). Nothing is
/// returned unless all of them are valid; the error lists every problem found.
pub fn load_project(dir: &Path) -> Result<Project, LoadErrors> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| LoadError::new(display_path(dir), format!("can't read the project directory: {e}")))?;
    let mut files: Vec<PathBuf> = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || !name.ends_with(WORKFLOW_SUFFIX) {
            continue;
        }
        if entry.path().is_file() {
            files.push(PathBuf::from(name));
        }
    }
    files.sort();
    let mut workflows = Vec::new();
    let mut errors = Vec::new();
    for f in files {
        match load_workflow_at(dir, &f) {
            Ok(w) => workflows.push(w),
            Err(e) => errors.extend(e),
        }
    }
    if errors.is_empty() { Ok(Project { root: dir.to_path_buf(), workflows }) } else { Err(LoadErrors(errors)) }
}

/// Load one workflow file of the project (for `call>`): `relative_path` is relative to the
/// project directory, `.dig` is appended when missing, and the file must be inside the project.
pub fn load_workflow_file(project_root: &Path, relative_path: &str) -> Result<WorkflowDef, LoadErrors> {
    let rel = confined_dig_path(relative_path).map_err(|m| LoadError::new(relative_path, m))?;
    load_workflow_at(project_root, &rel)
}

/// `call>: target` from a workflow whose directory (relative to the project) is
/// `caller_workdir`: the project-relative path of the called file.
pub fn resolve_call_path(caller_workdir: Option<&str>, target: &str) -> Result<String, String> {
    let joined = match caller_workdir {
        Some(dir) if !dir.is_empty() => format!("{}/{target}", dir.trim_end_matches('/')),
        _ => target.to_string(),
    };
    confined_dig_path(&joined).map(|p| display_path(&p))
}

/// Load `call>: target` from a workflow in `caller_workdir` (see [`resolve_call_path`]).
pub fn load_called_workflow(
    project_root: &Path,
    caller_workdir: Option<&str>,
    target: &str,
) -> Result<WorkflowDef, LoadErrors> {
    let rel = resolve_call_path(caller_workdir, target).map_err(|m| LoadError::new(target, m))?;
    load_workflow_file(project_root, &rel)
}

/// Normalize a project-relative path to a `.dig` file, refusing to leave the project.
fn confined_dig_path(path: &str) -> Result<PathBuf, String> {
    if path.trim().is_empty() {
        return Err("no workflow file given".into());
    }
    let with_suffix =
        if path.ends_with(WORKFLOW_SUFFIX) { path.to_string() } else { format!("{path}{WORKFLOW_SUFFIX}") };
    let p = Path::new(&with_suffix);
    if p.is_absolute() || with_suffix.starts_with('/') {
        return Err(format!("workflow path '{path}' is absolute: use a path relative to the calling workflow"));
    }
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::Normal(s) => out.push(s),
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    return Err(format!("workflow path '{path}' points outside the project directory"));
                }
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err(format!("workflow path '{path}' must be relative"));
            }
        }
    }
    Ok(out)
}

fn load_workflow_at(project_root: &Path, rel: &Path) -> Result<WorkflowDef, LoadErrors> {
    let label = display_path(rel);
    let file_name = rel.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    // Digdag: the name is the file name up to its last dot.
    let name = match file_name.rfind('.') {
        Some(i) if i > 0 => file_name[..i].to_string(),
        _ => file_name.clone(),
    };
    let abs = project_root.join(rel);
    if !abs.is_file() {
        return Err(LoadError::new(&label, format!("workflow file '{label}' does not exist")).into());
    }
    let loaded = load_yaml_file(project_root, rel)?;
    let sources = loaded.sources;
    let config = match loaded.value {
        Value::Object(o) => o,
        other => {
            let pos = sources.get("").cloned();
            let msg = format!(
                "a workflow definition must be a YAML mapping of + tasks and options (timezone, _export, ...), not {}",
                describe(&other)
            );
            return Err(match pos {
                Some(p) => LoadError::at(&p, msg),
                None => LoadError::new(&label, msg),
            }
            .into());
        }
    };

    let mut errors = Vec::new();
    let mut warnings = Vec::new();
    let at = |pointer: &str, msg: String| -> LoadError {
        match sources.nearest(pointer) {
            Some(p) => LoadError::at(p, msg),
            None => LoadError::new(&label, msg),
        }
    };

    if let Err(msg) = check_workflow_name(&name) {
        errors.push(LoadError::new(&label, msg));
    }

    // Top-level keys (WorkflowFile.fromConfig).
    let unknown: Vec<&String> =
        config.keys().filter(|k| !k.starts_with('+') && !TOP_LEVEL_KEYS.contains(&k.as_str())).collect();
    if !unknown.is_empty() {
        let listed: Vec<String> = unknown
            .iter()
            .map(|k| {
                let s = suggest(k, TOP_LEVEL_KEYS.iter().copied(), 0.5);
                if s.is_empty() { format!("'{k}'") } else { format!("'{k}' (did you mean {}?)", s.join(" or ")) }
            })
            .collect();
        let hint = if unknown.iter().any(|k| k.ends_with('>') || k.as_str() == "_type") {
            "a workflow can't run an operator itself: put it in a task, e.g. `+step: {echo>: hello}`"
        } else {
            "a workflow may only have timezone, _export, schedule, sla, _error, _check, _retry, _parallel and + tasks \
             at its top level; put parameters under _export"
        };
        errors.push(at(
            &pointer_push("", unknown[0]),
            format!("workflow '{name}' includes unknown keys: {}; {hint}", listed.join(", ")),
        ));
    }
    for k in config.keys().filter(|k| k.starts_with('+')) {
        if k.contains('^') {
            errors.push(
                at(&pointer_push("", k), format!("task name '{k}' must not contain '^' (it marks generated tasks)"))
                    .with_task(format!("+{name}{k}")),
            );
        }
    }

    let timezone = match config.get("timezone") {
        None | Some(Value::Null) => Zone::UTC,
        Some(Value::String(s)) => Zone::parse(s.trim()).unwrap_or_else(|e| {
            errors.push(at("/timezone", e.to_string()));
            Zone::UTC
        }),
        Some(other) => {
            errors.push(at(
                "/timezone",
                format!(
                    "timezone must be a zone name such as Asia/Tokyo or an offset such as +09:00, not {}; \
                     quote an offset that YAML reads as a number (timezone: \"+9\")",
                    describe(other)
                ),
            ));
            Zone::UTC
        }
    };

    let schedule = match config.get("schedule") {
        None | Some(Value::Null) => None,
        Some(v) => match Schedule::parse(v, timezone) {
            Ok((s, issues)) => {
                for i in issues {
                    let ptr = match &i.key {
                        Some(k) => pointer_push("/schedule", k),
                        None => "/schedule".to_string(),
                    };
                    warnings.push(at(&ptr, i.message));
                }
                Some(s)
            }
            Err(issues) => {
                for i in issues {
                    let ptr = match &i.key {
                        Some(k) => pointer_push("/schedule", k),
                        None => "/schedule".to_string(),
                    };
                    errors.push(at(&ptr, i.message));
                }
                None
            }
        },
    };
    if let Some(v) = config.get("sla")
        && !matches!(v, Value::Null)
    {
        if !matches!(v, Value::Object(_)) {
            errors.push(at(
                "/sla",
                format!("sla must be a mapping such as `sla: {{time: 02:00, +notice: {{...}}}}`, not {}", describe(v)),
            ));
        } else {
            // Checked here, not when the deadline passes (Digdag only logs a bad sla then).
            match crate::sla::Sla::parse(v) {
                Ok(sla) => {
                    if let Err(CompileErrors(list)) =
                        crate::compile::compile_under(&format!("+{name}"), "^sla", &sla.tasks)
                    {
                        for e in list {
                            errors.push(at(&format!("/sla{}", e.pointer), e.message).with_task(e.task));
                        }
                    }
                }
                Err(msg) => {
                    // Point at the option the message is about (`sla time ...` -> /sla/time).
                    let key = ["time", "duration", "alert", "fail"]
                        .into_iter()
                        .find(|k| msg.starts_with(&format!("sla {k} ")));
                    errors.push(at(&key.map(|k| format!("/sla/{k}")).unwrap_or_else(|| "/sla".into()), msg))
                }
            }
        }
    }

    // Compile without the keys already reported, so each problem is told once.
    let mut to_compile = config.clone();
    for k in &unknown {
        to_compile.shift_remove(k.as_str());
    }
    let root_name = format!("+{name}");
    let root = match compile(&root_name, &to_compile) {
        Ok(root) => Some(root),
        Err(CompileErrors(list)) => {
            for e in list {
                errors.push(at(&e.pointer, e.message).with_task(e.task));
            }
            None
        }
    };

    // Read the file top to bottom (problems without a line first).
    errors.sort_by_key(|e| (e.line.unwrap_or(0), e.col.unwrap_or(0)));
    match root {
        Some(root) if errors.is_empty() => {
            Ok(WorkflowDef { name, file: rel.to_path_buf(), config, timezone, schedule, root, sources, warnings })
        }
        _ => Err(LoadErrors(errors)),
    }
}

/// Digdag's workflow-name rule (ModelValidator.checkWorkflowName).
fn check_workflow_name(name: &str) -> Result<(), String> {
    let problem = if name.is_empty() {
        Some("must not be empty".to_string())
    } else if name.starts_with(|c: char| c.is_ascii_digit()) {
        Some("must not start with a digit".to_string())
    } else if name.starts_with(['+', '^', '@', '/', '\\', ':', '*', '?', '"', '<', '>', '|']) {
        Some(format!("must not start with '{}'", name.chars().next().unwrap_or(' ')))
    } else if name.ends_with(WORKFLOW_SUFFIX) {
        Some("must not end with .dig".to_string())
    } else if name.chars().count() > 255 {
        Some("must not be longer than 255 characters".to_string())
    } else {
        None
    };
    match problem {
        Some(p) => Err(format!("workflow name '{name}' (the file name without .dig) {p}; rename the file")),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::project;
    use serde_json::json;

    fn load_err(files: &[(&str, &str)]) -> Vec<String> {
        let d = project(files);
        load_project(d.path()).expect_err("should fail").into_iter().map(|e| e.to_string()).collect()
    }

    #[test]
    fn loads_every_top_level_dig_file_sorted() {
        let d = project(&[
            ("b.dig", "+x:\n  echo>: b\n"),
            ("a.dig", "timezone: Asia/Tokyo\nschedule:\n  daily>: 07:00:00\n+x:\n  echo>: a\n"),
            ("sub/c.dig", "+x:\n  echo>: c\n"),
            (".hidden.dig", "not: [valid\n"),
            ("notes.txt", "x"),
        ]);
        let p = load_project(d.path()).unwrap();
        let names: Vec<&str> = p.workflows.iter().map(|w| w.name.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        let a = p.workflow("a").unwrap();
        assert_eq!(a.timezone.name(), "Asia/Tokyo");
        assert_eq!(a.schedule.as_ref().unwrap().kind, "daily");
        assert_eq!(a.root.name, "+a");
        assert_eq!(a.root.children[0].name, "+x");
        assert_eq!(a.file, PathBuf::from("a.dig"));
        assert_eq!(a.workdir(), None);
        assert_eq!(a.task_position("+a+x").unwrap().to_string(), "a.dig:4:1");
        assert_eq!(p.workflow("b").unwrap().timezone, Zone::UTC);
        assert!(p.workflow("b").unwrap().schedule.is_none());
    }

    #[test]
    fn collects_errors_of_all_files_with_positions() {
        let errs = load_err(&[
            ("a.dig", "+t:\n  echo>: 1\n  fail>: 2\n+g:\n  color: blue\n  +c:\n    echo>: 3\n"),
            ("b.dig", "owner: me\n+x:\n  echo>: [oops\n"),
            ("c.dig", "+x:\n  echo>: 1\n"),
        ]);
        assert_eq!(errs.len(), 3, "{errs:#?}");
        assert_eq!(
            errs[0],
            "a.dig:3:3: task +a+t: a task can't have more than one operator (found echo>, fail>); split it into one task per operator"
        );
        assert!(errs[1].starts_with("a.dig:5:3: task +a+g: contains invalid keys: 'color'"), "{}", errs[1]);
        assert!(errs[2].starts_with("b.dig:3:10: invalid YAML"), "{}", errs[2]);
    }

    #[test]
    fn every_plus_key_is_a_task_whose_name_is_checked() {
        // Digdag's WorkflowFile.fromConfig takes every top-level key starting with '+' as a
        // task, whatever follows; ModelValidator then allows only ASCII letters, digits and
        // - _ = [ ] { } % & @ ` , . in its name, at the top level as in groups.
        for (dig, pos) in [("+集計:\n  echo>: 1\n", "wf.dig:1:1"), ("+g:\n  +集計:\n    echo>: 1\n", "wf.dig:2:3")]
        {
            let errs = load_err(&[("wf.dig", dig)]);
            assert_eq!(errs.len(), 1, "{errs:#?}");
            assert!(errs[0].starts_with(pos), "{}", errs[0]);
            assert!(errs[0].contains("task name '+集計' must not contain '集'"), "{}", errs[0]);
        }
    }

    #[test]
    fn unknown_top_level_keys() {
        let errs = load_err(&[("wf.dig", "owner: data-team\n+only:\n  echo>: hi\ntimezon: UTC\n")]);
        assert_eq!(errs.len(), 1, "{errs:#?}");
        assert!(
            errs[0].starts_with(
                "wf.dig:1:1: workflow 'wf' includes unknown keys: 'owner', 'timezon' (did you mean timezone?); a workflow may only have"
            ),
            "{}",
            errs[0]
        );
        let errs = load_err(&[("wf.dig", "echo>: hi\n")]);
        assert!(errs[0].contains("can't run an operator itself"), "{}", errs[0]);
        let errs = load_err(&[("wf.dig", "_background: true\n+a:\n  echo>: 1\n")]);
        assert!(errs[0].contains("unknown keys: '_background'"), "{}", errs[0]);
        // Everything that is allowed.
        let d = project(&[(
            "wf.dig",
            "timezone: UTC\n_export: {a: 1}\nschedule: {daily>: 01:00:00}\nsla: {time: 02:00}\n_error: {echo>: e}\n\
             _check: {echo>: c}\n_retry: 2\n_parallel: true\n+a: {echo>: 1}\n",
        )]);
        load_project(d.path()).unwrap();
    }

    #[test]
    fn timezone_and_schedule_errors_point_at_their_keys() {
        let errs = load_err(&[("wf.dig", "timezone: Asia/Tokio\nschedule:\n  daily>: 7am\n+a:\n  echo>: 1\n")]);
        assert_eq!(errs.len(), 2, "{errs:#?}");
        assert!(
            errs[0].starts_with("wf.dig:1:1: unknown time zone 'Asia/Tokio' (did you mean Asia/Tokyo?)"),
            "{}",
            errs[0]
        );
        assert_eq!(errs[1], "wf.dig:3:3: daily> needs hh:mm:ss format, e.g. 07:00:00, not '7am'");
        let d = project(&[("wf.dig", "schedule:\n  daily>: 07:00:00\n  colour: red\n+a:\n  echo>: 1\n")]);
        let p = load_project(d.path()).unwrap();
        let w: Vec<String> = p.warnings().map(|w| w.to_string()).collect();
        assert_eq!(w, ["wf.dig:3:3: schedule option 'colour' is not used"]);
    }

    #[test]
    fn workflow_and_task_names() {
        let errs = load_err(&[("1st.dig", "+a:\n  echo>: 1\n")]);
        assert_eq!(
            errs[0],
            "1st.dig: workflow name '1st' (the file name without .dig) must not start with a digit; rename the file"
        );
        let errs = load_err(&[("wf.dig", "+a^b:\n  echo>: 1\n+my task:\n  echo>: 2\n")]);
        assert_eq!(errs.len(), 2, "{errs:#?}");
        assert!(errs[0].starts_with("wf.dig:1:1: task +wf+a^b: task name '+a^b' must not contain '^'"), "{}", errs[0]);
        assert!(
            errs[1].starts_with("wf.dig:3:1: task +wf+my task: task name '+my task' must not contain a space"),
            "{}",
            errs[1]
        );
    }

    #[test]
    fn non_mapping_and_empty_files() {
        let errs = load_err(&[("wf.dig", "- a\n- b\n")]);
        assert!(errs[0].starts_with("wf.dig:1:1: a workflow definition must be a YAML mapping"), "{}", errs[0]);
        let errs = load_err(&[("wf.dig", "# nothing\n")]);
        assert!(errs[0].starts_with("wf.dig: file is empty"), "{}", errs[0]);
    }

    #[test]
    fn errors_in_included_files_name_that_file() {
        let errs = load_err(&[
            ("wf.dig", "+a:\n  echo>: 1\n!include : 'parts/more.dig'\n"),
            ("parts/more.dig", "+b:\n  echo>: 1\n  sh>: 2\n"),
        ]);
        assert_eq!(
            errs[0],
            "parts/more.dig:3:3: task +wf+b: a task can't have more than one operator (found echo>, sh>); split it into one task per operator"
        );
    }

    #[test]
    fn call_targets() {
        let d = project(&[
            ("wf.dig", "+c:\n  call>: lib/helper\n"),
            ("lib/helper.dig", "timezone: Asia/Tokyo\n_export: {x: 1}\n+h:\n  call>: inner.dig\n"),
            ("lib/inner.dig", "+i:\n  echo>: inner\n"),
            ("lib/bad.dig", "+i:\n  echo>: 1\n  sh>: 2\n"),
        ]);
        let h = load_workflow_file(d.path(), "lib/helper").unwrap();
        assert_eq!(h.name, "helper");
        assert_eq!(h.workdir().as_deref(), Some("lib"));
        let tc = h.task_config();
        assert_eq!(tc.get("timezone"), None);
        assert_eq!(tc["_export"], json!({"x": 1, "_workdir": "lib"}));
        let keys: Vec<&String> = tc.keys().collect();
        assert_eq!(keys, ["_export", "+h"]);
        assert_eq!(resolve_call_path(h.workdir().as_deref(), "inner.dig").unwrap(), "lib/inner.dig");
        assert_eq!(resolve_call_path(Some("lib"), "../wf").unwrap(), "wf.dig");
        assert!(resolve_call_path(Some("lib"), "../../etc/x").unwrap_err().contains("outside the project"));
        assert!(resolve_call_path(None, "/etc/passwd").unwrap_err().contains("absolute"));
        let inner = load_called_workflow(d.path(), Some("lib"), "inner").unwrap();
        assert_eq!(inner.root.children[0].name, "+i");
        let e = load_workflow_file(d.path(), "missing").unwrap_err().to_string();
        assert_eq!(e, "missing.dig: workflow file 'missing.dig' does not exist");
        let e = load_workflow_file(d.path(), "lib/bad").unwrap_err().to_string();
        assert!(e.starts_with("lib/bad.dig:3:3: task +bad+i:"), "{e}");
        // A top-level workflow keeps no _workdir.
        let w = load_workflow_file(d.path(), "wf.dig").unwrap();
        assert_eq!(w.task_config().get("_export"), None);
    }

    #[test]
    fn sla_is_checked_when_loading() {
        let errs = load_err(&[("wf.dig", "sla:\n  time: 2am\n+a:\n  echo>: hi\n")]);
        assert!(
            errs[0].starts_with("wf.dig:") && errs[0].contains("sla time must be HH:MM or HH:MM:SS"),
            "{}",
            errs[0]
        );
        let errs = load_err(&[("wf.dig", "sla:\n  +n:\n    echo>: late\n+a:\n  echo>: hi\n")]);
        assert!(errs[0].contains("exactly one of"), "{}", errs[0]);
        let errs =
            load_err(&[("wf.dig", "sla:\n  duration: 00:01\n  +n:\n    echo>: a\n    fail>: b\n+a:\n  echo>: hi\n")]);
        assert!(errs[0].contains("task +wf^sla+n") && errs[0].contains("more than one operator"), "{}", errs[0]);
        let d = project(&[(
            "wf.dig",
            "sla:\n  duration: 00:00:01\n  fail: true\n  +n:\n    echo>: late\n+a:\n  echo>: hi\n",
        )]);
        load_project(d.path()).unwrap();
    }
}
