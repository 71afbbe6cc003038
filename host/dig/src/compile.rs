//! The workflow compiler: a task config (`Object`) -> a tree of [`TaskNode`]s with sibling
//! dependencies, following Digdag's `WorkflowCompiler`.
//!
//! Used for loaded workflows and for the subtask configs operators generate at run time
//! (`^sub`, `^error`, `^check`). It owns the structural rules (one operator per task, no
//! children under an operator, group keys, task names, `_parallel`/`_background`/`_after`
//! dependencies, `_disable`) and the typed readers of `_parallel` and `_retry`. Values stay
//! raw: `${...}` is never evaluated here.
//!
//! A group's `_parallel` must be written out (`true`, `false`, `{limit: N}`): as in Digdag,
//! whose compiler reads it as a boolean or an integer, a `${...}` there is refused before
//! anything runs. Operators (`loop>`, `for_each>`, ...) take an evaluated `_parallel` as a
//! param and hand the value to the group they generate, which is compiled here at run time.

use std::fmt;

use serde_json::Value;
use spade_api::Object;

use crate::yaml::pointer_push;

/// One task of a compiled tree.
#[derive(Clone, Debug, PartialEq)]
pub struct TaskNode {
    /// The local name as given (`+load`, `^sub`, `+wf` for a workflow root).
    pub name: String,
    /// The task's own keys except `+` children, raw (`_export`, `_error`, `_check`, `_retry`,
    /// `op>`, local params ...).
    pub config: Object,
    /// `echo` for `echo>: ...` (or `_type: echo`); `None` for a group.
    pub operator: Option<String>,
    pub children: Vec<TaskNode>,
    /// Indices (into the parent's `children`) of the earlier siblings this task waits for.
    pub upstreams: Vec<usize>,
}

impl TaskNode {
    pub fn is_group(&self) -> bool {
        self.operator.is_none()
    }

    /// The key that names the operator (`echo>`), if it was written in the `op>` form.
    pub fn operator_key(&self) -> Option<&str> {
        self.config.keys().find(|k| k.ends_with('>')).map(String::as_str)
    }

    /// The operator's argument: the value of `op>` or `_command` (`Null` when absent).
    /// With both `_type` and an `op>` key, `_type` names the operator and `_command` (if any)
    /// is the argument, as in Digdag's OperatorManager.
    pub fn command(&self) -> Value {
        if self.config.contains_key("_type") {
            return self.config.get("_command").cloned().unwrap_or(Value::Null);
        }
        match self.operator_key() {
            Some(k) => self.config.get(k).cloned().unwrap_or(Value::Null),
            None => self.config.get("_command").cloned().unwrap_or(Value::Null),
        }
    }

    /// Whether `_disable: true` turned this task into an empty group.
    pub fn is_disabled(&self) -> bool {
        self.config.get("_disable").is_some_and(is_true)
    }
}

/// One problem found by the compiler.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompileError {
    /// Full name of the task (`+wf+group+task`, or under the name given to [`compile_under`]).
    pub task: String,
    /// JSON pointer, relative to the compiled config, of the key at fault (for positions).
    pub pointer: String,
    pub message: String,
}

impl fmt::Display for CompileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "task {}: {}", self.task, self.message)
    }
}

impl std::error::Error for CompileError {}

/// Every problem found in one config (the compiler goes on after the first).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompileErrors(pub Vec<CompileError>);

impl fmt::Display for CompileErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        crate::error::write_lines(f, &self.0)
    }
}

impl std::error::Error for CompileErrors {}

/// Keys a group (a task without operator) may carry besides `+` children
/// (Digdag's `GROUPING_TASK_CONFIG_KEYS`). Other `_`-prefixed keys are tolerated.
pub const GROUPING_TASK_CONFIG_KEYS: &[&str] = &[
    "timezone",
    "schedule",
    "sla",
    "_parallel",
    "_background",
    "_after",
    "_error",
    "_check",
    "_retry",
    "_export",
    "_secrets",
];

/// Longest task name Digdag accepts.
pub const MAX_TASK_NAME_LEN: usize = 255;

/// Compile a task config whose root is called `name` (`+wf` for a workflow, `^sub` for
/// generated subtasks). Task names in errors start at `name`.
pub fn compile(name: &str, config: &Object) -> Result<TaskNode, CompileErrors> {
    compile_under("", name, config)
}

/// Like [`compile`], for a root that lives under `parent_full_name` (e.g. `+wf+loop` for the
/// `^sub` of a `loop>` task), so that error messages carry the real full names.
pub fn compile_under(parent_full_name: &str, name: &str, config: &Object) -> Result<TaskNode, CompileErrors> {
    let mut ctx = Ctx { errors: Vec::new() };
    let node = ctx.collect(parent_full_name, name, config, "");
    if ctx.errors.is_empty() { Ok(node) } else { Err(CompileErrors(ctx.errors)) }
}

struct Ctx {
    errors: Vec<CompileError>,
}

impl Ctx {
    fn err(&mut self, task: &str, pointer: String, message: impl Into<String>) {
        self.errors.push(CompileError { task: task.to_string(), pointer, message: message.into() });
    }

    fn collect(&mut self, parent_full: &str, name: &str, config: &Object, pointer: &str) -> TaskNode {
        let full = format!("{parent_full}{name}");
        let mut own = Object::new();
        let mut subtasks: Vec<(&String, Object)> = Vec::new();
        for (k, v) in config {
            if k.starts_with('+') {
                match v {
                    Value::Object(o) => subtasks.push((k, o.clone())),
                    // `+task:` with nothing under it is an empty group, as in Digdag.
                    Value::Null => subtasks.push((k, Object::new())),
                    other => {
                        self.err(
                            &format!("{full}{k}"),
                            pointer_push(pointer, k),
                            format!(
                                "a task must be a mapping of its options, not {}: write e.g. `{k}: {{echo>: ...}}` \
                                 (a key starting with '+' is always a task)",
                                describe(other)
                            ),
                        );
                    }
                }
            } else {
                own.insert(k.clone(), v.clone());
            }
        }

        if own.get("_disable").is_some_and(is_true) {
            let mut config = Object::new();
            config.insert("_disable".into(), Value::Bool(true));
            return TaskNode {
                name: name.to_string(),
                config,
                operator: None,
                children: Vec::new(),
                upstreams: Vec::new(),
            };
        }

        let op_keys: Vec<&String> = own.keys().filter(|k| k.ends_with('>')).collect();
        if own.contains_key("_type") || !op_keys.is_empty() {
            let operator = self.operator_task(&full, &own, &op_keys, &subtasks, pointer);
            self.validate_common(&full, &own, pointer);
            return TaskNode {
                name: name.to_string(),
                config: own,
                operator,
                children: Vec::new(),
                upstreams: Vec::new(),
            };
        }

        // A group.
        self.check_group_keys(&full, &own, pointer);
        let mut children = Vec::with_capacity(subtasks.len());
        for (k, sub) in &subtasks {
            let child_ptr = pointer_push(pointer, k);
            if let Err(msg) = check_task_name(k) {
                self.err(&format!("{full}{k}"), child_ptr.clone(), msg);
            }
            children.push(self.collect(&full, k, sub, &child_ptr));
        }
        match parallel_mode(own.get("_parallel")) {
            Ok(mode) => {
                for e in link(&mode, &mut children) {
                    let child = &children[e.child];
                    let ptr = pointer_push(&pointer_push(pointer, &child.name), e.key);
                    self.err(&format!("{full}{}", child.name), ptr, e.message);
                }
            }
            Err(msg) => self.err(&full, pointer_push(pointer, "_parallel"), msg),
        }
        self.validate_common(&full, &own, pointer);
        TaskNode { name: name.to_string(), config: own, operator: None, children, upstreams: Vec::new() }
    }

    fn operator_task(
        &mut self,
        full: &str,
        own: &Object,
        op_keys: &[&String],
        subtasks: &[(&String, Object)],
        pointer: &str,
    ) -> Option<String> {
        let op_desc = match op_keys.first() {
            Some(k) => format!("'{k}'"),
            None => "'_type'".to_string(),
        };
        if let Some((first, _)) = subtasks.first() {
            let names: Vec<&str> = subtasks.iter().map(|(k, _)| k.as_str()).collect();
            self.err(
                full,
                pointer_push(pointer, first),
                format!(
                    "a task with an operator ({op_desc}) can't have child tasks ({}); put the operator in a \
                     child task of its own, or move the child tasks into a group",
                    names.join(", ")
                ),
            );
        }
        if op_keys.len() > 1 {
            let names: Vec<&str> = op_keys.iter().map(|k| k.as_str()).collect();
            self.err(
                full,
                pointer_push(pointer, op_keys[1]),
                format!(
                    "a task can't have more than one operator (found {}); split it into one task per operator",
                    names.join(", ")
                ),
            );
        }
        let name = match own.get("_type") {
            Some(Value::String(t)) => t.clone(),
            Some(other) => {
                self.err(
                    full,
                    pointer_push(pointer, "_type"),
                    format!("_type must be an operator name (text), not {}", describe(other)),
                );
                return None;
            }
            None => op_keys[0].trim_end_matches('>').to_string(),
        };
        if name.trim().is_empty() {
            let key = op_keys.first().map(|k| k.as_str()).unwrap_or("_type");
            self.err(
                full,
                pointer_push(pointer, key),
                "operator name is empty: write it before '>', e.g. `echo>: hello`",
            );
            return None;
        }
        Some(name)
    }

    fn check_group_keys(&mut self, full: &str, own: &Object, pointer: &str) {
        let invalid: Vec<&String> =
            own.keys().filter(|k| !k.starts_with('_') && !GROUPING_TASK_CONFIG_KEYS.contains(&k.as_str())).collect();
        if invalid.is_empty() {
            return;
        }
        let listed: Vec<String> = invalid
            .iter()
            .map(|k| {
                let s = suggest(k, GROUPING_TASK_CONFIG_KEYS.iter().copied(), 0.5);
                if s.is_empty() { format!("'{k}'") } else { format!("'{k}' (did you mean {}?)", s.join(" or ")) }
            })
            .collect();
        let is_root = !full.contains('^') && full.matches('+').count() <= 1;
        let hint = if is_root {
            "a workflow may only set timezone, schedule, sla and _-options (_export, _retry, ...) next to its + tasks; \
             put parameters under _export"
        } else {
            "a group (a task without an operator) may only carry _-options (_export, _retry, _parallel, ...) \
             next to its + tasks; put parameters under _export, or give the task an operator"
        };
        self.err(
            full,
            pointer_push(pointer, invalid[0]),
            format!("contains invalid keys: {}; {hint}", listed.join(", ")),
        );
    }

    /// Checks shared by groups and operator tasks.
    fn validate_common(&mut self, full: &str, own: &Object, pointer: &str) {
        if let Some(v) = own.get("_export")
            && !matches!(v, Value::Object(_) | Value::Null)
        {
            self.err(
                full,
                pointer_push(pointer, "_export"),
                format!("_export must be a mapping of parameters, not {}", describe(v)),
            );
        }
        if let Some(v) = own.get("_retry")
            && !is_deferred(v)
            && let Err(msg) = parse_retry(v)
        {
            self.err(full, pointer_push(pointer, "_retry"), msg);
        }
        // `_error` tasks are generated when something already failed, so a broken one would
        // be noticed too late: compile it now (Digdag's validateSpecialSubtasks).
        match own.get("_error") {
            None | Some(Value::Null) => {}
            Some(Value::Object(o)) => {
                if !o.is_empty() {
                    let ptr = pointer_push(pointer, "_error");
                    self.collect(full, "^error", o, &ptr);
                }
            }
            Some(other) => self.err(
                full,
                pointer_push(pointer, "_error"),
                format!(
                    "_error must be a task definition (e.g. `_error: {{echo>: failed}}` or a mapping of + tasks), not {}",
                    describe(other)
                ),
            ),
        }
    }
}

/// Digdag's task-name rule (ModelValidator.checkRawTaskName) for a key like `+load`.
pub fn check_task_name(name: &str) -> Result<(), String> {
    if !(name.starts_with('+') || name.starts_with('^')) {
        return Err(format!("task name '{name}' must start with '+'"));
    }
    let rest = &name[1..];
    if let Some(bad) = rest.chars().find(|&c| !is_task_name_char(c)) {
        let shown = if bad == ' ' { "a space".to_string() } else { format!("'{bad}'") };
        return Err(format!(
            "task name '{name}' must not contain {shown}: use ASCII letters, digits and - _ = [ ] {{ }} % & @ , . only"
        ));
    }
    if name.chars().count() > MAX_TASK_NAME_LEN {
        return Err(format!("task name '{name}' is longer than {MAX_TASK_NAME_LEN} characters"));
    }
    Ok(())
}

fn is_task_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "_-=[]{}%&@`,.^".contains(c)
}

// ---------------------------------------------------------------------------------------------
// _parallel and sibling dependencies.

/// How a group runs its direct children.
#[derive(Clone, Debug, PartialEq)]
pub enum ParallelMode {
    /// One after another (`_background` children run alongside).
    Sequential,
    /// All at once, or in chunks of `limit` where each chunk waits for the whole previous one.
    Parallel { limit: Option<usize> },
}

/// Read a `_parallel` value (absent = sequential).
pub fn parallel_mode(value: Option<&Value>) -> Result<ParallelMode, String> {
    let Some(v) = value else { return Ok(ParallelMode::Sequential) };
    match v {
        Value::Null | Value::Bool(false) => Ok(ParallelMode::Sequential),
        Value::Bool(true) => Ok(ParallelMode::Parallel { limit: None }),
        // Digdag's compiler converts the text to a boolean, which `${...}` is not.
        Value::String(s) if s.contains("${") => Err(format!(
            "a group's _parallel can't be the expression {}: it is read before anything runs, so write \
             true, false or {{limit: N}}; to decide at run time, use an operator that takes _parallel \
             (loop>, for_each>, for_range>) or choose between groups with if>",
            short_json(v)
        )),
        Value::String(s) if s.trim().eq_ignore_ascii_case("true") => Ok(ParallelMode::Parallel { limit: None }),
        Value::String(s) if s.trim().eq_ignore_ascii_case("false") => Ok(ParallelMode::Sequential),
        Value::Object(o) => {
            if let Some(k) = o.keys().find(|k| k.as_str() != "limit") {
                return Err(format!("_parallel has an unknown option '{k}': use `_parallel: {{limit: N}}`"));
            }
            match o.get("limit") {
                None => Err("_parallel: {...} needs a limit, e.g. `_parallel: {limit: 2}`".into()),
                // Read as an integer by Digdag's compiler, so never evaluated.
                Some(l) if is_deferred(l) => Err(format!(
                    "a group's _parallel limit can't be the expression {}: it is read before anything runs, \
                     so write a number, e.g. `_parallel: {{limit: 2}}`",
                    short_json(l)
                )),
                Some(l) => match as_int(l) {
                    Some(n) if n > 0 => Ok(ParallelMode::Parallel { limit: Some(n as usize) }),
                    // Digdag treats a limit of 0 (or less) as no limit.
                    Some(_) => Ok(ParallelMode::Parallel { limit: None }),
                    None => Err(format!("_parallel limit must be a whole number, not {}", describe(l))),
                },
            }
        }
        other => Err(format!("invalid _parallel value {}: use true, false or {{limit: N}}", short_json(other))),
    }
}

struct LinkError {
    child: usize,
    key: &'static str,
    message: String,
}

/// Set the `upstreams` of a group's children for `mode` (Digdag's compiler rules): replaces
/// whatever dependencies they had. Errors name the child task and the option at fault.
pub fn link_children(mode: &ParallelMode, children: &mut [TaskNode]) -> Result<(), String> {
    let errors = link(mode, children);
    if errors.is_empty() {
        return Ok(());
    }
    Err(errors.iter().map(|e| format!("task {}: {}", children[e.child].name, e.message)).collect::<Vec<_>>().join("; "))
}

fn link(mode: &ParallelMode, children: &mut [TaskNode]) -> Vec<LinkError> {
    let mut errors = Vec::new();
    for c in children.iter_mut() {
        c.upstreams.clear();
    }
    match mode {
        ParallelMode::Sequential => {
            // Digdag's beforeList: a background child waits for nothing; the next normal child
            // waits for every child since (and including) the previous normal one.
            let mut before: Vec<usize> = Vec::new();
            for (i, child) in children.iter_mut().enumerate() {
                if child.config.contains_key("_after") {
                    errors.push(LinkError {
                        child: i,
                        key: "_after",
                        message: "_after is only valid when the parent group has `_parallel: true`; in a \
                                  sequential group every task already waits for the previous one"
                            .into(),
                    });
                }
                let is_background = background(child).unwrap_or_else(|message| {
                    errors.push(LinkError { child: i, key: "_background", message });
                    false
                });
                if is_background {
                    before.push(i);
                } else {
                    child.upstreams = std::mem::take(&mut before);
                    before.push(i);
                }
            }
        }
        ParallelMode::Parallel { limit } => {
            for i in 0..children.len() {
                if children[i].config.get("_background").is_some_and(is_true) {
                    errors.push(LinkError {
                        child: i,
                        key: "_background",
                        message: "`_background: true` is invalid (and unnecessary) when the parent group has \
                                  `_parallel: true`"
                            .into(),
                    });
                }
                match after_names(&children[i]) {
                    Ok(names) => {
                        for n in names {
                            let found = children[..i]
                                .iter()
                                .position(|c| c.name == n || (!n.starts_with('+') && c.name == format!("+{n}")));
                            match found {
                                Some(j) => {
                                    if !children[i].upstreams.contains(&j) {
                                        children[i].upstreams.push(j);
                                    }
                                }
                                None => {
                                    let earlier: Vec<&str> = children[..i].iter().map(|c| c.name.as_str()).collect();
                                    let hint = if earlier.is_empty() {
                                        "it is the first task of its group".to_string()
                                    } else {
                                        format!("earlier sibling tasks: {}", earlier.join(", "))
                                    };
                                    errors.push(LinkError {
                                        child: i,
                                        key: "_after",
                                        message: format!(
                                            "_after names '{n}', which is not an earlier sibling task ({hint})"
                                        ),
                                    });
                                }
                            }
                        }
                    }
                    Err(message) => errors.push(LinkError { child: i, key: "_after", message }),
                }
            }
            if let Some(limit) = limit {
                let n = children.len();
                let mut start = *limit;
                while start < n {
                    let prev = start - limit..start;
                    for child in &mut children[start..(start + limit).min(n)] {
                        for j in prev.clone() {
                            if !child.upstreams.contains(&j) {
                                child.upstreams.push(j);
                            }
                        }
                    }
                    start += limit;
                }
                for c in children.iter_mut() {
                    c.upstreams.sort_unstable();
                }
            }
        }
    }
    errors
}

fn background(node: &TaskNode) -> Result<bool, String> {
    match node.config.get("_background") {
        None | Some(Value::Null) => Ok(false),
        Some(v) => as_bool(v).ok_or_else(|| format!("_background must be true or false, not {}", describe(v))),
    }
}

fn after_names(node: &TaskNode) -> Result<Vec<String>, String> {
    match node.config.get("_after") {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(vec![s.clone()]),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| match v {
                Value::String(s) => Ok(s.clone()),
                other => Err(format!("_after must list task names, found {}", describe(other))),
            })
            .collect(),
        Some(other) => Err(format!("_after must be a list of task names, not {}", describe(other))),
    }
}

// ---------------------------------------------------------------------------------------------
// _retry.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IntervalType {
    Constant,
    Exponential,
}

/// A parsed `_retry` (Digdag's RetryControl).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// How many times to retry after the first failure.
    pub limit: u32,
    /// Seconds to wait before a retry (the base of exponential back-off).
    pub interval_secs: u64,
    pub interval_type: IntervalType,
    /// Cap of the exponential wait.
    pub max_interval_secs: Option<u64>,
}

impl RetryPolicy {
    /// Seconds to wait before retry number `retry_count + 1` (`retry_count` retries done).
    pub fn interval_for(&self, retry_count: u32) -> u64 {
        match self.interval_type {
            IntervalType::Constant => self.interval_secs,
            IntervalType::Exponential => {
                let factor = if retry_count >= 64 { u64::MAX } else { 1u64 << retry_count };
                let i = self.interval_secs.saturating_mul(factor);
                match self.max_interval_secs {
                    Some(m) => i.min(m),
                    None => i,
                }
            }
        }
    }

    /// Whether another retry is allowed after `retry_count` retries.
    pub fn allows(&self, retry_count: u32) -> bool {
        self.limit > retry_count
    }
}

const RETRY_KEYS: &[&str] = &["limit", "interval", "interval_type", "max_interval"];

/// Read an (evaluated) `_retry` value: `N`, `"N"` or `{limit, interval, interval_type, max_interval}`.
/// A `${...}` string must be evaluated by the engine first.
pub fn parse_retry(value: &Value) -> Result<RetryPolicy, String> {
    let count = |v: &Value, what: &str| -> Result<u64, String> {
        match as_int(v) {
            Some(n) if n >= 0 => Ok(n as u64),
            Some(n) => Err(format!("_retry {what} must not be negative (got {n})")),
            None => Err(format!("_retry {what} must be a whole number, not {}", describe(v))),
        }
    };
    let limit_of = |n: u64| u32::try_from(n).map_err(|_| format!("_retry limit {n} is too large"));
    match value {
        Value::Number(_) | Value::String(_) => {
            if is_deferred(value) {
                return Err(format!("_retry {} must be evaluated before it is read", short_json(value)));
            }
            Ok(RetryPolicy {
                limit: limit_of(count(value, "limit")?)?,
                interval_secs: 0,
                interval_type: IntervalType::Constant,
                max_interval_secs: None,
            })
        }
        Value::Object(o) => {
            if let Some(k) = o.keys().find(|k| !RETRY_KEYS.contains(&k.as_str())) {
                let s = suggest(k, RETRY_KEYS.iter().copied(), 0.5);
                let dym = if s.is_empty() { String::new() } else { format!(" (did you mean {}?)", s.join(" or ")) };
                return Err(format!(
                    "_retry has an unknown option '{k}'{dym}; options are limit, interval, interval_type and max_interval"
                ));
            }
            let limit = match o.get("limit") {
                Some(v) => limit_of(count(v, "limit")?)?,
                None => return Err("_retry: {...} needs a limit, e.g. `_retry: {limit: 3, interval: 10}`".into()),
            };
            let interval_secs = match o.get("interval") {
                Some(v) => count(v, "interval")?,
                None => 0,
            };
            let max_interval_secs = match o.get("max_interval") {
                Some(v) => Some(count(v, "max_interval")?),
                None => None,
            };
            let interval_type = match o.get("interval_type") {
                None | Some(Value::Null) => IntervalType::Constant,
                Some(Value::String(s)) if s.eq_ignore_ascii_case("constant") => IntervalType::Constant,
                Some(Value::String(s)) if s.eq_ignore_ascii_case("exponential") => IntervalType::Exponential,
                Some(other) => {
                    return Err(format!(
                        "_retry interval_type must be 'constant' or 'exponential', not {}",
                        short_json(other)
                    ));
                }
            };
            Ok(RetryPolicy { limit, interval_secs, interval_type, max_interval_secs })
        }
        other => Err(format!(
            "invalid _retry value {}: use a number of retries (`_retry: 3`) or `{{limit: 3, interval: 10}}`",
            short_json(other)
        )),
    }
}

// ---------------------------------------------------------------------------------------------
// Small helpers shared by the crate.

/// A string value the engine still has to evaluate.
pub fn is_deferred(v: &Value) -> bool {
    matches!(v, Value::String(s) if s.contains("${"))
}

pub(crate) fn is_true(v: &Value) -> bool {
    as_bool(v) == Some(true)
}

pub(crate) fn as_bool(v: &Value) -> Option<bool> {
    match v {
        Value::Bool(b) => Some(*b),
        Value::String(s) if s.trim().eq_ignore_ascii_case("true") => Some(true),
        Value::String(s) if s.trim().eq_ignore_ascii_case("false") => Some(false),
        _ => None,
    }
}

/// An integer from a number or a numeric string (Digdag reads `"3"` as 3).
pub(crate) fn as_int(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64().or_else(|| n.as_f64().filter(|f| f.fract() == 0.0).map(|f| f as i64)),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

pub(crate) fn describe(v: &Value) -> String {
    match v {
        Value::Null => "nothing (null)".into(),
        Value::Bool(_) => format!("a boolean ({v})"),
        Value::Number(_) => format!("a number ({v})"),
        Value::String(_) => format!("text ({})", short_json(v)),
        Value::Array(_) => "a list".into(),
        Value::Object(_) => "a mapping".into(),
    }
}

pub(crate) fn short_json(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 60 { format!("{}...", s.chars().take(57).collect::<String>()) } else { s }
}

/// Candidates within an edit distance of `ratio` x their length (Digdag's EditDistance.suggest).
/// Only the closest ones are kept, so a suggestion reads as one clear choice.
pub(crate) fn suggest<'a>(key: &str, candidates: impl IntoIterator<Item = &'a str>, ratio: f64) -> Vec<&'a str> {
    let close: Vec<(usize, &str)> = candidates
        .into_iter()
        .map(|c| (levenshtein(key, c), c))
        .filter(|(d, c)| *d <= (c.chars().count() as f64 * ratio).floor() as usize)
        .collect();
    let Some(best) = close.iter().map(|(d, _)| *d).min() else { return Vec::new() };
    close.into_iter().filter(|(d, _)| *d == best).map(|(_, c)| c).collect()
}

pub(crate) fn levenshtein(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != cb);
            cur[j + 1] = (prev[j + 1] + 1).min(cur[j] + 1).min(prev[j] + cost);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::obj;
    use serde_json::json;

    fn ok(v: Value) -> TaskNode {
        compile("+wf", &obj(v)).unwrap_or_else(|e| panic!("{e}"))
    }

    fn errs(v: Value) -> Vec<CompileError> {
        compile("+wf", &obj(v)).expect_err("should not compile").0
    }

    const E: Vec<usize> = Vec::new();

    fn ups(n: &TaskNode) -> Vec<Vec<usize>> {
        n.children.iter().map(|c| c.upstreams.clone()).collect()
    }

    #[test]
    fn sequential_children_depend_on_the_previous_one() {
        let t = ok(json!({"+a": {"echo>": "a"}, "+b": {"echo>": "b"}, "+c": {"+d": {"echo>": "d"}}}));
        assert_eq!(t.name, "+wf");
        assert!(t.is_group());
        let names: Vec<&str> = t.children.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["+a", "+b", "+c"]);
        assert_eq!(ups(&t), vec![vec![], vec![0], vec![1]]);
        assert_eq!(t.children[0].operator.as_deref(), Some("echo"));
        assert_eq!(t.children[0].command(), json!("a"));
        assert_eq!(t.children[2].children[0].name, "+d");
        // The group's own config has no children in it.
        assert!(t.children[2].config.is_empty());
    }

    #[test]
    fn parallel_true_has_no_upstreams_and_is_not_inherited() {
        let t =
            ok(json!({"+p": {"_parallel": true, "+a": {"+x": {"echo>": 1}, "+y": {"echo>": 2}}, "+b": {"echo>": 3}}}));
        let p = &t.children[0];
        assert_eq!(ups(p), vec![E, E]);
        assert_eq!(ups(&p.children[0]), vec![vec![], vec![0]]);
        assert_eq!(p.config.get("_parallel"), Some(&json!(true)));
        // Generated subtask configs carry an evaluated string.
        let t = ok(json!({"+a": {"echo>": 1}, "+b": {"echo>": 2}, "_parallel": "true"}));
        assert_eq!(ups(&t), vec![E, E]);
    }

    #[test]
    fn parallel_limit_makes_chunk_barriers() {
        let t = ok(json!({"_parallel": {"limit": 2},
            "+a": {"echo>": 1}, "+b": {"echo>": 2}, "+c": {"echo>": 3}, "+d": {"echo>": 4}, "+e": {"echo>": 5}}));
        assert_eq!(ups(&t), vec![vec![], vec![], vec![0, 1], vec![0, 1], vec![2, 3]]);
        let t = ok(json!({"_parallel": {"limit": 1}, "+a": {"echo>": 1}, "+b": {"echo>": 2}, "+c": {"echo>": 3}}));
        assert_eq!(ups(&t), vec![vec![], vec![0], vec![1]]);
        let t = ok(json!({"_parallel": {"limit": "0"}, "+a": {"echo>": 1}, "+b": {"echo>": 2}}));
        assert_eq!(ups(&t), vec![E, E]);
    }

    #[test]
    fn background_follows_digdag_before_list() {
        let t = ok(json!({
            "+a": {"echo>": 1},
            "+b": {"echo>": 2},
            "+bg": {"_background": true, "echo>": 3},
            "+c": {"echo>": 4},
            "+bg1": {"_background": true, "echo>": 5},
            "+bg2": {"_background": "true", "echo>": 6},
            "+d": {"echo>": 7}
        }));
        assert_eq!(ups(&t), vec![vec![], vec![0], vec![], vec![1, 2], vec![], vec![], vec![3, 4, 5]]);
        // A leading background task and a background group.
        let t = ok(json!({"+bg": {"_background": true, "+x": {"echo>": 1}}, "+a": {"echo>": 2}}));
        assert_eq!(ups(&t), vec![vec![], vec![0]]);
    }

    #[test]
    fn background_under_parallel_is_an_error() {
        let e = errs(json!({"+p": {"_parallel": true, "+a": {"echo>": 1}, "+b": {"_background": true, "echo>": 2}}}));
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].task, "+wf+p+b");
        assert_eq!(e[0].pointer, "/+p/+b/_background");
        assert!(e[0].message.contains("_parallel: true"));
    }

    #[test]
    fn after_only_under_parallel_and_must_name_earlier_siblings() {
        let t = ok(
            json!({"_parallel": true, "+a": {"echo>": 1}, "+b": {"echo>": 2}, "+c": {"_after": ["+a", "b"], "echo>": 3}}),
        );
        assert_eq!(ups(&t), vec![vec![], vec![], vec![0, 1]]);
        let e = errs(json!({"+a": {"echo>": 1}, "+b": {"_after": ["+a"], "echo>": 2}}));
        assert!(e[0].message.contains("only valid when the parent group has `_parallel: true`"));
        assert_eq!(e[0].task, "+wf+b");
        let e = errs(json!({"_parallel": true, "+a": {"_after": "+b", "echo>": 1}, "+b": {"echo>": 2}}));
        assert!(
            e[0].message.contains("not an earlier sibling task (it is the first task of its group)"),
            "{}",
            e[0].message
        );
    }

    #[test]
    fn link_children_redoes_dependencies() {
        let mut t = ok(json!({"+a": {"echo>": 1}, "+b": {"echo>": 2}}));
        assert_eq!(ups(&t), vec![vec![], vec![0]]);
        link_children(&ParallelMode::Parallel { limit: None }, &mut t.children).unwrap();
        assert_eq!(ups(&t), vec![E, E]);
        let mut c = ok(json!({"+a": {"echo>": 1}, "+b": {"_background": true, "echo>": 2}})).children;
        let e = link_children(&ParallelMode::Parallel { limit: None }, &mut c).unwrap_err();
        assert!(e.starts_with("task +b: `_background: true` is invalid"), "{e}");
    }

    #[test]
    fn a_groups_parallel_is_never_an_expression() {
        // Digdag's ParallelIT: `_parallel: ${parallel}` on a group fails at push, and so does a
        // limit that is an expression; the literal strings "true"/"false" are accepted.
        let e = errs(json!({"+g": {"_parallel": "${parallel}", "+a": {"echo>": 1}}}));
        assert_eq!((e[0].task.as_str(), e[0].pointer.as_str()), ("+wf+g", "/+g/_parallel"));
        assert!(e[0].message.contains("can't be the expression \"${parallel}\""), "{}", e[0].message);
        assert!(e[0].message.contains("loop>"), "{}", e[0].message);
        let e = errs(json!({"_parallel": {"limit": "${n}"}, "+a": {"echo>": 1}}));
        assert!(e[0].message.contains("limit can't be the expression"), "{}", e[0].message);
        assert!(parallel_mode(Some(&json!("${p}"))).is_err());
        assert_eq!(parallel_mode(Some(&json!("true"))).unwrap(), ParallelMode::Parallel { limit: None });
        // An operator's _parallel is its param: evaluated at run time, not checked here.
        ok(json!({"+l": {"loop>": 2, "_parallel": "${p}", "_do": {"echo>": "${i}"}}}));
    }

    #[test]
    fn invalid_parallel_values() {
        for v in [json!(3), json!("yes"), json!([1]), json!({"limit": "x"}), json!({"max": 2}), json!({})] {
            let e = errs(json!({"_parallel": v, "+a": {"echo>": 1}}));
            assert_eq!(e[0].pointer, "/_parallel", "{v}");
            assert_eq!(e[0].task, "+wf");
        }
    }

    #[test]
    fn two_operators_is_an_error() {
        let e = errs(json!({"+fine": {"echo>": 1}, "+confused": {"echo>": "one", "fail>": "two"}}));
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].task, "+wf+confused");
        assert_eq!(e[0].pointer, "/+confused/fail>");
        assert_eq!(
            e[0].to_string(),
            "task +wf+confused: a task can't have more than one operator (found echo>, fail>); split it into one task per operator"
        );
    }

    #[test]
    fn operator_task_with_children_is_an_error() {
        let e = errs(json!({"+t": {"sh>": "x", "+child": {"echo>": 1}}}));
        assert_eq!(e[0].pointer, "/+t/+child");
        assert!(e[0].message.contains("can't have child tasks (+child)"), "{}", e[0].message);
    }

    #[test]
    fn type_and_command_long_form() {
        let t = ok(json!({"+t": {"_type": "echo", "_command": "hi"}}));
        assert_eq!(t.children[0].operator.as_deref(), Some("echo"));
        assert_eq!(t.children[0].command(), json!("hi"));
        // _type wins over an op> key, like Digdag's OperatorManager.
        let t = ok(json!({"+t": {"_type": "sh", "echo>": "x"}}));
        assert_eq!(t.children[0].operator.as_deref(), Some("sh"));
        assert!(errs(json!({"+t": {"_type": 3}}))[0].message.contains("_type must be"));
        assert!(errs(json!({"+t": {">": 3}}))[0].message.contains("operator name is empty"));
    }

    #[test]
    fn operator_task_keeps_local_params_and_options() {
        let t = ok(
            json!({"+t": {"x": 1, "_export": {"a": 1}, "_retry": 2, "_error": {"echo>": "e"}, "loop>": 3, "_do": {"echo>": "${i}"}}}),
        );
        let c = &t.children[0];
        assert_eq!(c.operator.as_deref(), Some("loop"));
        let keys: Vec<&String> = c.config.keys().collect();
        assert_eq!(keys, ["x", "_export", "_retry", "_error", "loop>", "_do"]);
        assert_eq!(c.operator_key(), Some("loop>"));
    }

    #[test]
    fn group_with_a_plain_key_is_an_error_with_suggestion() {
        let e = errs(json!({"+group": {"color": "blue", "+child": {"echo>": 1}}}));
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].task, "+wf+group");
        assert_eq!(e[0].pointer, "/+group/color");
        assert!(e[0].message.starts_with("contains invalid keys: 'color'; a group"), "{}", e[0].message);
        let e = errs(json!({"+g": {"export": {"a": 1}, "+c": {"echo>": 1}}}));
        assert!(e[0].message.contains("'export' (did you mean _export?)"), "{}", e[0].message);
        let e = errs(json!({"owner": "me", "+c": {"echo>": 1}}));
        assert!(e[0].message.contains("a workflow may only set"), "{}", e[0].message);
        // Group options and other _-keys are fine.
        ok(
            json!({"+g": {"timezone": "UTC", "_export": {}, "_retry": 1, "_check": {"echo>": 1}, "_secrets": {}, "_custom": 1, "+c": {"echo>": 1}}}),
        );
    }

    #[test]
    fn task_names_follow_digdag_rules() {
        assert!(check_task_name("+load_1-x=[a]{b}%&@,.^y").is_ok());
        assert!(check_task_name("+1st").is_ok()); // Digdag's digit check never fires after '+'
        assert!(check_task_name("^sub").is_ok());
        let e = check_task_name("+my task").unwrap_err();
        assert_eq!(
            e,
            "task name '+my task' must not contain a space: use ASCII letters, digits and - _ = [ ] { } % & @ , . only"
        );
        assert!(check_task_name("+a+b").unwrap_err().contains("'+'"));
        assert!(check_task_name("+naïve").is_err());
        assert!(check_task_name(&format!("+{}", "a".repeat(255))).unwrap_err().contains("longer than 255"));
        let e = errs(json!({"+bad name": {"echo>": 1}}));
        assert_eq!(e[0].task, "+wf+bad name");
        assert_eq!(e[0].pointer, "/+bad name");
    }

    #[test]
    fn task_must_be_a_mapping_and_empty_task_is_an_empty_group() {
        let t = ok(json!({"+empty": null}));
        assert!(t.children[0].is_group());
        assert!(t.children[0].children.is_empty());
        let e = errs(json!({"+t": "echo hi"}));
        assert!(e[0].message.contains("a task must be a mapping"), "{}", e[0].message);
    }

    #[test]
    fn disable_makes_an_empty_group() {
        let t = ok(json!({"+a": {"_disable": true, "echo>": 1, "fail>": 2, "+x": {}}, "+b": {"echo>": 2}}));
        let a = &t.children[0];
        assert!(a.is_disabled());
        assert!(a.is_group());
        assert!(a.children.is_empty());
        assert_eq!(a.config, obj(json!({"_disable": true})));
        assert_eq!(ups(&t), vec![vec![], vec![0]]);
    }

    #[test]
    fn error_tasks_are_validated() {
        let e = errs(json!({"+t": {"echo>": 1, "_error": {"echo>": 1, "fail>": 2}}}));
        assert_eq!(e[0].task, "+wf+t^error");
        assert_eq!(e[0].pointer, "/+t/_error/fail>");
        let e = errs(json!({"_error": {"+n": {"x": 1, "+y": {"echo>": 1}}}, "+a": {"echo>": 1}}));
        assert_eq!(e[0].task, "+wf^error+n");
        assert!(
            errs(json!({"_error": "oops", "+a": {"echo>": 1}}))[0].message.contains("_error must be a task definition")
        );
        // _check is not compiled up front (Digdag generates it after success).
        ok(json!({"+a": {"echo>": 1, "_check": {"echo>": 1, "fail>": 1}}}));
    }

    #[test]
    fn export_and_retry_are_type_checked() {
        assert!(errs(json!({"+a": {"echo>": 1, "_export": "x"}}))[0].message.contains("_export must be a mapping"));
        let e = errs(json!({"+g": {"_retry": {"limt": 3}, "+a": {"echo>": 1}}}));
        assert!(e[0].message.contains("'limt' (did you mean limit?)"), "{}", e[0].message);
        ok(json!({"+g": {"_retry": "${n}", "+a": {"echo>": 1}}}));
    }

    #[test]
    fn collects_every_error() {
        let e = errs(json!({"+a": {"echo>": 1, "fail>": 2}, "+g": {"k": 1, "+c": {"sh>": 1, "py>": 2}}}));
        assert_eq!(e.len(), 3);
    }

    #[test]
    fn compile_under_names_errors_with_the_full_path() {
        let e = compile_under("+wf+loop", "^sub", &obj(json!({"+loop-0": {"echo>": 1, "sh>": 2}}))).unwrap_err();
        assert_eq!(e.0[0].task, "+wf+loop^sub+loop-0");
        let t = compile("^sub", &obj(json!({"+loop-0": {"echo>": 1}, "+loop-1": {"echo>": 2}, "_parallel": true})))
            .unwrap();
        assert_eq!(ups(&t), vec![E, E]);
        // A single operator config compiles to a leaf.
        let t = compile("^sub", &obj(json!({"echo>": "hi"}))).unwrap();
        assert_eq!(t.operator.as_deref(), Some("echo"));
        // Generated names with URL-encoded values are valid.
        compile(
            "^sub",
            &obj(json!({"+for-0=fruit=0=apple%20pie&1=verb=0=eat": {"echo>": 1}, "+range-from=0&to=10": {"echo>": 1}})),
        )
        .unwrap();
    }

    #[test]
    fn retry_policy_parsing() {
        assert_eq!(
            parse_retry(&json!(3)).unwrap(),
            RetryPolicy { limit: 3, interval_secs: 0, interval_type: IntervalType::Constant, max_interval_secs: None }
        );
        assert_eq!(parse_retry(&json!(" 2 ")).unwrap().limit, 2);
        let p = parse_retry(&json!({"limit": 5, "interval": 10, "interval_type": "exponential", "max_interval": 50}))
            .unwrap();
        assert_eq!((p.interval_for(0), p.interval_for(1), p.interval_for(2), p.interval_for(3)), (10, 20, 40, 50));
        assert!(p.allows(4) && !p.allows(5));
        let p = parse_retry(&json!({"limit": "2", "interval": "7"})).unwrap();
        assert_eq!((p.limit, p.interval_for(5)), (2, 7));
        assert_eq!(
            parse_retry(&json!({"limit": 1, "interval": 1, "interval_type": "exponential"})).unwrap().interval_for(200),
            u64::MAX
        );
        assert!(parse_retry(&json!(-1)).unwrap_err().contains("must not be negative"));
        assert!(parse_retry(&json!("x")).unwrap_err().contains("whole number"));
        assert!(parse_retry(&json!({"interval": 3})).unwrap_err().contains("needs a limit"));
        assert!(
            parse_retry(&json!({"limit": 1, "interval_type": "linear"}))
                .unwrap_err()
                .contains("'constant' or 'exponential'")
        );
        assert!(parse_retry(&json!(true)).unwrap_err().contains("invalid _retry value true"));
        assert!(parse_retry(&json!("${n}")).unwrap_err().contains("evaluated"));
    }

    #[test]
    fn edit_distance() {
        assert_eq!(levenshtein("kitten", "sitting"), 3);
        assert_eq!(levenshtein("", "abc"), 3);
        assert_eq!(suggest("_exprot", GROUPING_TASK_CONFIG_KEYS.iter().copied(), 0.5), ["_export"]);
        assert_eq!(suggest("intervall", RETRY_KEYS.iter().copied(), 0.5), ["interval"]);
        assert_eq!(suggest("export", GROUPING_TASK_CONFIG_KEYS.iter().copied(), 0.5), ["_export"]);
        assert!(suggest("color", GROUPING_TASK_CONFIG_KEYS.iter().copied(), 0.5).is_empty());
    }
}
