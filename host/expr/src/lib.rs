//! spade-expr: Digdag's `${...}` expression language.
//!
//! Owns the JS engine (QuickJS through rquickjs) that evaluates `${...}` templates the way
//! Digdag's ConfigEvalEngine does: JavaScript evaluated `with (params)`, moment.js 2.21.0
//! loaded, local time in the workflow's time zone (never the process `TZ`), and the
//! single-pass, order-dependent config walk (§3.3/§3.4 of the Digdag reference). Every
//! evaluation runs under a time limit and the runtime under a memory and stack limit, so a
//! tenant's expression can fail its task but never hang or crash the host.
//!
//! It knows nothing of tasks, stores or wasm: callers hand it a config and a scope.
//!
//! Known differences from Digdag (GraalJS in ES5 mode, a fresh JS context per template):
//! - QuickJS accepts ES2023 syntax (arrow functions, template literals, `let`), Digdag ES5.
//! - One context serves an evaluator (an attempt). Each template still gets freshly copied
//!   parameters and globals it created are removed before the next one, but a change to a
//!   built-in (`Array.prototype.x = ...`, `moment.defaultFormat = ...`) lasts until the
//!   evaluator is dropped.
//! - Inside a template the parameters are inherited, not own, properties of `this`
//!   (`Object.keys(this)` does not list them); digdag.js's internals (`__p`, `print`) are
//!   not visible.
//! - `Date.prototype.toString` ends with the zone abbreviation, as Nashorn does
//!   (`GMT-0800 (PST)`); `toLocaleString` is QuickJS's fixed `MM/DD/YYYY, hh:mm:ss AM`.
//! - Each template has a time limit and the evaluator a memory and stack limit.

mod bytecode;
mod fast;
mod template;
mod tz;

pub mod bench;

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rquickjs::{Context, Ctx, FromJs, Function, Runtime, Value as JsValue};
use serde_json::Value;
use spade_dig::Zone;

/// A JSON object with its key order preserved (the same type as `spade_api::Object`).
pub type Object = serde_json::Map<String, Value>;

pub use template::needs_eval;

const MOMENT_JS: &str = include_str!("../js/moment.min.js");
const DATE_SHIM_JS: &str = include_str!("../js/date_shim.js");
const RUNTIME_JS: &str = include_str!("../js/runtime.js");

/// Keys whose values are never evaluated, at any depth (Digdag's `NO_EVALUATE_PARAMETERS`):
/// the branches of `if>` and the bodies of loops are evaluated later, in their own tasks.
pub const RAW_KEYS: [&str; 2] = ["_do", "_else_do"];

/// Resource limits of one evaluator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExprLimits {
    /// Wall-clock budget of one template evaluation.
    pub time: Duration,
    /// Heap limit of the evaluator's JS runtime (a fresh one uses about 0.5 MiB).
    pub memory_bytes: usize,
    /// Native stack the JS code may use below the point where the host calls in. Deep
    /// recursion fails with a RangeError past it; keep it well under the thread's stack.
    pub stack_bytes: usize,
}

impl Default for ExprLimits {
    fn default() -> Self {
        ExprLimits { time: Duration::from_secs(1), memory_bytes: 64 << 20, stack_bytes: 512 << 10 }
    }
}

/// What kind of failure an [`ExprError`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExprErrorKind {
    /// The expression threw (ReferenceError, TypeError, SyntaxError, a `throw` ...).
    Script,
    /// The evaluation ran past [`ExprLimits::time`].
    Timeout,
    /// The runtime ran out of [`ExprLimits::memory_bytes`].
    Memory,
    /// The engine itself failed (start-up, an unexpected result): a bug, not the workflow's.
    Internal,
}

/// A failed evaluation: where (`path`), what (`template`) and why (`message`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExprError {
    /// Key path of the value being evaluated, e.g. `_export.d`, `echo>`, `args[1]`;
    /// empty for [`Evaluator::render`].
    pub path: String,
    /// The template text (the whole string value, not only the `${...}` part).
    pub template: String,
    pub kind: ExprErrorKind,
    /// The engine's message, e.g. `ReferenceError: no_such_var is not defined`.
    pub message: String,
}

impl ExprError {
    fn internal(message: impl Into<String>) -> Self {
        ExprError {
            path: String::new(),
            template: String::new(),
            kind: ExprErrorKind::Internal,
            message: message.into(),
        }
    }
}

impl fmt::Display for ExprError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        const SHOWN: usize = 200;
        let template = match self.template.char_indices().nth(SHOWN) {
            Some((cut, _)) => format!("{}...", &self.template[..cut]),
            None => self.template.clone(),
        };
        match self.kind {
            ExprErrorKind::Script => {
                write!(f, "failed to evaluate {template:?}: {}", self.message)?;
                if self.message.starts_with("ReferenceError") {
                    write!(f, " (set it with _export or -p, or test it with `typeof name == 'undefined'`)")?;
                }
                Ok(())
            }
            ExprErrorKind::Timeout => {
                write!(f, "evaluating {template:?} was stopped: {}", self.message)
            }
            ExprErrorKind::Memory => {
                write!(f, "evaluating {template:?} was stopped: {}", self.message)
            }
            ExprErrorKind::Internal if template.is_empty() => {
                write!(f, "expression engine: {}", self.message)
            }
            ExprErrorKind::Internal => write!(f, "expression engine failed on {template:?}: {}", self.message),
        }
    }
}

impl std::error::Error for ExprError {}

/// The interrupt handler's view of the current evaluation's deadline.
struct Deadline {
    origin: Instant,
    /// Nanoseconds since `origin`; `u64::MAX` while no evaluation runs.
    at: AtomicU64,
    fired: AtomicBool,
}

impl Deadline {
    fn arm(&self, budget: Duration) {
        let at = self.origin.elapsed().saturating_add(budget).as_nanos().min(u64::MAX as u128 - 1) as u64;
        self.fired.store(false, Ordering::Relaxed);
        self.at.store(at, Ordering::Relaxed);
    }
    fn disarm(&self) {
        self.at.store(u64::MAX, Ordering::Relaxed);
    }
    fn check(&self) -> bool {
        let at = self.at.load(Ordering::Relaxed);
        if at != u64::MAX && self.origin.elapsed().as_nanos() as u64 > at {
            self.fired.store(true, Ordering::Relaxed);
            return true;
        }
        false
    }
}

/// A JS context with moment.js and the workflow-zone `Date` loaded, reused for every
/// evaluation of one attempt. Create one per attempt: a tenant's change to a JS built-in
/// lasts as long as the evaluator (new global variables do not: they are removed before
/// each evaluation). `Send`, and `Sync` through an internal lock.
///
/// The JS runtime is made on the first evaluation that needs it: most configs are plain
/// values or simple `${name}` templates, which never reach JS, and an attempt that needs
/// none saves its half megabyte (a server driving a thousand attempts saves half a GiB).
pub struct Evaluator {
    js: std::sync::OnceLock<Js>,
    timezone: Zone,
    limits: ExprLimits,
    deadline: Arc<Deadline>,
    /// The parameters JS holds from the previous call, if it completed loading them.
    last_scope: Mutex<Option<Object>>,
}

/// The JS side of an [`Evaluator`].
struct Js {
    // Field order is drop order: the context goes before its runtime.
    context: Context,
    runtime: Runtime,
}

/// How the parameters reach JS for one call.
enum ParamsLoad {
    Full(String),
    /// Changed or added keys, removed keys.
    Update(String, String),
}

/// A JSON object text of `entries`, without building the object.
fn object_json<'a>(entries: impl Iterator<Item = (&'a String, &'a Value)>) -> serde_json::Result<String> {
    let mut out = Vec::with_capacity(64);
    out.push(b'{');
    for (i, (k, v)) in entries.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        serde_json::to_writer(&mut out, k)?;
        out.push(b':');
        serde_json::to_writer(&mut out, v)?;
    }
    out.push(b'}');
    // serde_json writes UTF-8 only.
    Ok(String::from_utf8(out).unwrap_or_default())
}

fn serialize<T: serde::Serialize + ?Sized>(value: &T) -> Result<String, ExprError> {
    serde_json::to_string(value).map_err(|e| ExprError::internal(format!("could not serialize the parameters: {e}")))
}

impl fmt::Debug for Evaluator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Evaluator").field("timezone", &self.timezone).field("limits", &self.limits).finish()
    }
}

/// Where a value sits in the config, rendered only when an error needs it.
#[derive(Clone, Copy)]
enum Seg<'a> {
    Key(&'a str),
    Index(usize),
}

fn render_path(path: &[Seg<'_>]) -> String {
    let mut out = String::new();
    for seg in path {
        match seg {
            Seg::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k);
            }
            Seg::Index(i) => {
                out.push('[');
                out.push_str(&i.to_string());
                out.push(']');
            }
        }
    }
    out
}

/// Failure of one JS call, before the path is known.
struct Failure {
    kind: ExprErrorKind,
    message: String,
}

impl Failure {
    fn at(self, path: String, template: &str) -> ExprError {
        ExprError { path, template: template.to_string(), kind: self.kind, message: self.message }
    }
}

/// Per-call JS state: the parameters are parsed into the context once per
/// `eval_config`/`render` call (`__spade_begin`).
struct Session<'js, 'e> {
    ev: &'e Evaluator,
    ctx: Ctx<'js>,
    run: Function<'js>,
}

/// One object of the config walk, as the JS side knows it (see js/runtime.js).
struct Level {
    depth: usize,
    /// Whether JS already holds this object's evaluated keys (it is told on first use).
    known_to_js: bool,
    /// How many of the object's evaluated keys JS has been sent.
    sent: usize,
}

impl Level {
    fn new(depth: usize) -> Self {
        Level { depth, known_to_js: false, sent: 0 }
    }
}

impl<'js> Session<'js, '_> {
    fn render(&self, template: &str, level: &mut Level, built: &Object) -> Result<String, Failure> {
        let fresh = !level.known_to_js;
        let delta = if built.len() > level.sent {
            Some(object_json(built.iter().skip(level.sent)).map_err(|e| Failure {
                kind: ExprErrorKind::Internal,
                message: format!("could not serialize the evaluated keys: {e}"),
            })?)
        } else {
            None
        };
        self.ev.deadline.arm(self.ev.limits.time);
        let result: rquickjs::Result<JsValue<'js>> = match &delta {
            Some(d) => self.run.call((template, level.depth as u32, fresh, d.as_str())),
            None => self.run.call((template, level.depth as u32, fresh)),
        };
        // JS has recorded the level and delta before running anything that can fail.
        level.known_to_js = true;
        level.sent = built.len();
        let outcome = match result {
            Ok(v) => match v.as_string() {
                Some(s) => s.to_string().map_err(|e| Failure { kind: ExprErrorKind::Internal, message: e.to_string() }),
                None => Err(Failure {
                    kind: ExprErrorKind::Internal,
                    message: format!("the template returned a {} instead of text", v.type_name()),
                }),
            },
            Err(rquickjs::Error::Exception) => Err(self.describe_exception()),
            Err(e) => Err(self.classify_engine_error(e)),
        };
        self.ev.deadline.disarm();
        outcome
    }

    fn classify_engine_error(&self, e: rquickjs::Error) -> Failure {
        match e {
            rquickjs::Error::Allocation => self.memory_failure(),
            _ if self.ev.deadline.fired.load(Ordering::Relaxed) => self.timeout_failure(),
            other => Failure { kind: ExprErrorKind::Internal, message: other.to_string() },
        }
    }

    fn timeout_failure(&self) -> Failure {
        Failure {
            kind: ExprErrorKind::Timeout,
            message: format!(
                "it ran longer than the {} expression time limit (an endless loop?)",
                format_duration(self.ev.limits.time)
            ),
        }
    }

    fn memory_failure(&self) -> Failure {
        Failure {
            kind: ExprErrorKind::Memory,
            message: format!(
                "it needed more than the {} MiB expression memory limit",
                self.ev.limits.memory_bytes >> 20
            ),
        }
    }

    fn describe_exception(&self) -> Failure {
        let exc = self.ctx.catch();
        if self.ev.deadline.fired.load(Ordering::Relaxed) {
            return self.timeout_failure();
        }
        let message = exception_message(&exc);
        if message == "InternalError: out of memory" {
            return self.memory_failure();
        }
        Failure { kind: ExprErrorKind::Script, message }
    }
}

/// `Name: message` for Error objects (what Digdag shows), `String(value)` for anything else.
fn exception_message(exc: &JsValue<'_>) -> String {
    if let Some(obj) = exc.as_object() {
        let name: Option<String> = obj.get::<_, Option<String>>("name").ok().flatten();
        let message: Option<String> = obj.get::<_, Option<String>>("message").ok().flatten();
        match (name, message) {
            (Some(n), Some(m)) if !m.is_empty() => return format!("{n}: {m}"),
            (Some(n), _) => return n,
            (None, Some(m)) => return m,
            (None, None) => {}
        }
    }
    match exc.get::<rquickjs::Coerced<String>>() {
        Ok(s) => s.0,
        Err(_) => "an exception that cannot be shown as text".to_string(),
    }
}

fn format_duration(d: Duration) -> String {
    if d.subsec_nanos() == 0 { format!("{}s", d.as_secs()) } else { format!("{}ms", d.as_millis()) }
}

fn any_needs_eval(value: &Value) -> bool {
    match value {
        Value::String(s) => needs_eval(s),
        Value::Array(a) => a.iter().any(any_needs_eval),
        Value::Object(o) => object_needs_eval(o),
        _ => false,
    }
}

fn object_needs_eval(o: &Object) -> bool {
    o.iter().any(|(k, v)| !RAW_KEYS.contains(&k.as_str()) && any_needs_eval(v))
}

impl Evaluator {
    /// An evaluator in `timezone`; its JS context (moment.js loaded, a few milliseconds)
    /// is made when first needed.
    pub fn new(timezone: Zone, limits: ExprLimits) -> Result<Self, ExprError> {
        let deadline =
            Arc::new(Deadline { origin: Instant::now(), at: AtomicU64::new(u64::MAX), fired: AtomicBool::new(false) });
        Ok(Evaluator { js: std::sync::OnceLock::new(), timezone, limits, deadline, last_scope: Mutex::new(None) })
    }

    /// The JS runtime and context, made (and the libraries loaded) on first use.
    fn js(&self) -> Result<&Js, ExprError> {
        if let Some(js) = self.js.get() {
            return Ok(js);
        }
        let runtime = Runtime::new().map_err(|e| ExprError::internal(format!("cannot create a JS runtime: {e}")))?;
        runtime.set_memory_limit(self.limits.memory_bytes);
        runtime.set_max_stack_size(self.limits.stack_bytes);
        let handler_deadline = Arc::clone(&self.deadline);
        runtime.set_interrupt_handler(Some(Box::new(move || handler_deadline.check())));
        let context =
            Context::full(&runtime).map_err(|e| ExprError::internal(format!("cannot create a JS context: {e}")))?;
        let js = Js { context, runtime };
        self.load_libraries(&js)?;
        // Another thread may have made one meanwhile: either serves.
        let _ = self.js.set(js);
        Ok(self.js.get().expect("set just above"))
    }

    fn load_libraries(&self, js: &Js) -> Result<(), ExprError> {
        let bundle = bytecode::bundle().map_err(|e| ExprError::internal(format!("bundled JavaScript: {e}")))?;
        let tz = self.timezone;
        self.deadline.arm(Duration::from_secs(30));
        let result = js.context.with(|ctx| -> rquickjs::Result<()> {
            let globals = ctx.globals();
            let shim = Function::from_js(&ctx, bundle.date_shim.eval(&ctx)?)?;
            let offset = Function::new(ctx.clone(), move |t: f64| tz::offset_ms(tz, t))?;
            let to_utc = Function::new(ctx.clone(), move |t: f64| tz::local_to_utc(tz, t))?;
            let abbr = Function::new(ctx.clone(), move |t: f64| tz::abbreviation(tz, t))?;
            shim.call::<_, ()>((globals.clone(), offset, to_utc, abbr))?;
            bundle.moment.eval(&ctx)?;
            let runtime = Function::from_js(&ctx, bundle.runtime.eval(&ctx)?)?;
            let compile = Function::new(ctx.clone(), |t: String| template::to_js(&t))?;
            runtime.call::<_, ()>((globals, compile))?;
            Ok(())
        });
        self.deadline.disarm();
        result.map_err(|e| {
            let detail = match e {
                rquickjs::Error::Exception => js.context.with(|ctx| exception_message(&ctx.catch())),
                other => other.to_string(),
            };
            ExprError::internal(format!(
                "loading moment.js and the time-zone support failed: {detail} (memory limit {} MiB)",
                self.limits.memory_bytes >> 20
            ))
        })
    }

    /// The workflow time zone local time is computed in.
    pub fn timezone(&self) -> Zone {
        self.timezone
    }

    pub fn limits(&self) -> ExprLimits {
        self.limits
    }

    /// Bytes the JS runtime has allocated (moment.js loaded: about 0.5 MiB; none before the
    /// first evaluation that needs JS).
    pub fn memory_used(&self) -> usize {
        self.js.get().map_or(0, |js| usize::try_from(js.runtime.memory_usage().malloc_size).unwrap_or(usize::MAX))
    }

    fn with_session<R>(
        &self,
        scope: &Object,
        f: impl for<'js> FnOnce(&Session<'js, '_>) -> Result<R, ExprError>,
    ) -> Result<R, ExprError> {
        // Consecutive tasks share most parameters: send JS only what changed since the last
        // call when that is less than half of them (see `update` in js/runtime.js).
        let mut last = self.last_scope.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let load = match last.take() {
            Some(prev) => {
                let changed: Object = scope
                    .iter()
                    .filter(|(k, v)| prev.get(*k) != Some(*v))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                let removed: Vec<&String> = prev.keys().filter(|k| !scope.contains_key(*k)).collect();
                if (changed.len() + removed.len()) * 2 < scope.len() {
                    ParamsLoad::Update(serialize(&changed)?, serialize(&removed)?)
                } else {
                    ParamsLoad::Full(serialize(scope)?)
                }
            }
            None => ParamsLoad::Full(serialize(scope)?),
        };
        let js = self.js()?;
        let result = js.context.with(|ctx| {
            let globals = ctx.globals();
            let (begin, update, run): (Function, Function, Function) = globals
                .get("__spade_begin")
                .and_then(|b| Ok((b, globals.get("__spade_update")?, globals.get("__spade_run")?)))
                .map_err(|e| ExprError::internal(format!("the template runner is missing: {e}")))?;
            self.deadline.arm(self.limits.time);
            let begun = match &load {
                ParamsLoad::Full(json) => begin.call::<_, ()>((json.as_str(),)),
                ParamsLoad::Update(changed, removed) => update.call::<_, ()>((changed.as_str(), removed.as_str())),
            };
            self.deadline.disarm();
            if let Err(e) = begun {
                let detail = match e {
                    rquickjs::Error::Exception => exception_message(&ctx.catch()),
                    other => other.to_string(),
                };
                return Err(ExprError::internal(format!("could not load the parameters into JS: {detail}")));
            }
            // JS now holds exactly `scope` as its parameters.
            *last = Some(scope.clone());
            let session = Session { ev: self, ctx, run };
            f(&session)
        });
        // Give back what a memory bomb took. Only here, outside `with`: the runtime is
        // locked inside it, and collecting from there would deadlock.
        if matches!(&result, Err(e) if e.kind == ExprErrorKind::Memory) {
            js.runtime.run_gc();
        }
        result
    }

    /// Whether JS read the clock or a random number since the last call (and reset it).
    fn take_volatile(&self) -> bool {
        let Some(js) = self.js.get() else { return false };
        js.context.with(|ctx| {
            ctx.globals()
                .get::<_, Function>("__spade_take_volatile")
                .and_then(|f| f.call::<_, bool>(()))
                .unwrap_or(true)
        })
    }

    /// [`eval_config`](Self::eval_config), also telling whether the result depends on the
    /// clock or randomness (`moment()`, `new Date()`, `Math.random()`), i.e. whether evaluating
    /// again could give something else. The engine must persist such a result before use.
    /// Conservative: anything that read the clock counts, even moment's parsing of a full
    /// date (`moment(session_time)`), whose result does not depend on it.
    pub fn eval_config_tracked(&self, config: &Object, scope: &Object) -> Result<(Object, bool), ExprError> {
        if !object_needs_eval(config) {
            return Ok((config.clone(), false));
        }
        if let Some(evaluated) = fast::eval_config(config, scope) {
            return Ok((evaluated, false));
        }
        self.take_volatile();
        let evaluated = self.eval_config(config, scope)?;
        Ok((evaluated, self.take_volatile()))
    }

    /// Renders one template with `scope` as its variables. Text without `$` is returned as is
    /// without touching JS. Used for single values (`_retry: ${n}`, `param_eval>`).
    pub fn render(&self, template: &str, scope: &Object) -> Result<String, ExprError> {
        if !needs_eval(template) {
            return Ok(template.to_string());
        }
        self.with_session(scope, |s| {
            s.render(template, &mut Level::new(0), &Object::new()).map_err(|f| f.at(String::new(), template))
        })
    }

    /// Digdag's ConfigEvalEngine walk. Keys are visited in order; `_do`/`_else_do` are copied
    /// raw; an object is walked recursively with its own, initially empty, set of evaluated
    /// keys; arrays element by element; a string containing `$` is rendered with `scope`
    /// overlaid (key by key, no deep merge) with the keys already evaluated earlier in the same
    /// object; every other value is copied. Results of evaluation are always strings, and are
    /// never evaluated again.
    pub fn eval_config(&self, config: &Object, scope: &Object) -> Result<Object, ExprError> {
        if !object_needs_eval(config) {
            return Ok(config.clone());
        }
        if let Some(evaluated) = fast::eval_config(config, scope) {
            return Ok(evaluated);
        }
        self.eval_config_js(config, scope)
    }

    /// [`eval_config`](Self::eval_config) without the Rust fast path: every template in JS.
    fn eval_config_js(&self, config: &Object, scope: &Object) -> Result<Object, ExprError> {
        self.with_session(scope, |s| {
            let mut path = Vec::new();
            walk_object(s, config, 0, &mut path)
        })
    }
}

fn walk_object<'a>(
    s: &Session<'_, '_>,
    object: &'a Object,
    depth: usize,
    path: &mut Vec<Seg<'a>>,
) -> Result<Object, ExprError> {
    let mut built = Object::new();
    let mut level = Level::new(depth);
    for (key, value) in object {
        path.push(Seg::Key(key));
        let evaluated = if RAW_KEYS.contains(&key.as_str()) {
            value.clone()
        } else {
            walk_value(s, &mut level, &built, value, path)?
        };
        path.pop();
        built.insert(key.clone(), evaluated);
    }
    Ok(built)
}

/// `built` holds the enclosing object's evaluated keys: arrays (at any depth) share it and
/// its level, objects start their own.
fn walk_value<'a>(
    s: &Session<'_, '_>,
    level: &mut Level,
    built: &Object,
    value: &'a Value,
    path: &mut Vec<Seg<'a>>,
) -> Result<Value, ExprError> {
    Ok(match value {
        Value::Object(o) => Value::Object(walk_object(s, o, level.depth + 1, path)?),
        Value::Array(items) => {
            let mut out = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                path.push(Seg::Index(i));
                out.push(walk_value(s, level, built, item, path)?);
                path.pop();
            }
            Value::Array(out)
        }
        Value::String(text) if needs_eval(text) => {
            Value::String(s.render(text, level, built).map_err(|f| f.at(render_path(path), text))?)
        }
        other => other.clone(),
    })
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod volatile_tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Object {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn clock_and_randomness_make_a_result_volatile() {
        let ev = Evaluator::new(Zone::UTC, ExprLimits::default()).unwrap();
        let scope = obj(json!({"a": 1, "session_time": "2024-01-01T00:00:00+00:00"}));
        let tracked = |template: &str| ev.eval_config_tracked(&obj(json!({ "x": template })), &scope).unwrap().1;
        assert!(!tracked("plain"));
        assert!(!tracked("${a + 1}"));
        // Conservative: moment() reads the clock while parsing even a complete date, so
        // `moment(session_time)` counts as volatile too (a false positive costs one commit).
        assert!(tracked("${Math.random()}"));
        assert!(tracked("${moment().format()}"));
        assert!(tracked("${new Date().getTime()}"));
        assert!(tracked("${Date.now()}"));
        // The flag does not leak into the next evaluation.
        assert!(!tracked("${a}"));
    }
}
