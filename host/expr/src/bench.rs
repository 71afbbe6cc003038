//! Timing figures for the evaluator, for `cargo bench -p spade-expr` and for reports. Not a
//! test: nothing here asserts on time.

use std::fmt;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::{Evaluator, ExprLimits, Object};

/// Mean time of each operation over the iterations of [`run`].
#[derive(Clone, Debug)]
pub struct BenchReport {
    pub iterations: u32,
    /// `Evaluator::new` (runtime, context, Date shim, moment.js).
    pub create: Duration,
    /// `eval_config` of a typical task (3 templated params, 1 plain) with 25 params in scope,
    /// after a call whose parameters differed in `task_name` only.
    pub eval_task: Duration,
    /// The same, when the previous call's parameters share nothing with this one (all 25
    /// parameters are loaded into JS).
    pub eval_task_unrelated: Duration,
    /// `eval_config` of a task whose params contain no `$` (no JS at all).
    pub eval_plain_task: Duration,
    /// `render` of `${moment(session_time).add(1, 'days').format('YYYY-MM-DD')}`.
    pub render_moment: Duration,
    /// [`Evaluator::memory_used`] of a fresh evaluator.
    pub memory_fresh: usize,
}

impl fmt::Display for BenchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "spade-expr, mean of {} iterations:", self.iterations)?;
        writeln!(f, "  Evaluator::new (with moment.js)      {:>10.1?}", self.create)?;
        writeln!(f, "  eval_config, typical task            {:>10.1?}", self.eval_task)?;
        writeln!(f, "  eval_config, same, params all new    {:>10.1?}", self.eval_task_unrelated)?;
        writeln!(f, "  eval_config, task without ${{}}        {:>10.1?}", self.eval_plain_task)?;
        writeln!(f, "  render, moment add/format            {:>10.1?}", self.render_moment)?;
        write!(f, "  memory of a fresh evaluator          {:>7.1} KiB", self.memory_fresh as f64 / 1024.0)
    }
}

/// A scope shaped like the engine's: built-ins plus a few exports.
pub fn sample_scope() -> Object {
    let v = json!({
        "timezone": "America/Los_Angeles",
        "project_id": 1,
        "project_name": "demo",
        "workflow_name": "wf",
        "session_uuid": "9f3e5a40-1111-2222-3333-444455556666",
        "session_id": 42,
        "session_time": "2023-02-14T00:00:00-08:00",
        "session_date": "2023-02-14",
        "session_date_compact": "20230214",
        "session_local_time": "2023-02-14 00:00:00",
        "session_tz_offset": "-0800",
        "session_unixtime": 1676361600,
        "last_session_time": "2023-02-13T00:00:00-08:00",
        "last_session_date": "2023-02-13",
        "next_session_time": "2023-02-15T00:00:00-08:00",
        "next_session_date": "2023-02-15",
        "last_executed_session_time": "",
        "task_name": "+wf+group+task",
        "attempt_id": 7,
        "retry_attempt_name": null,
        "target": "world",
        "greeting": "hello ${target}",
        "db": {"host": "localhost", "port": 5432, "name": "analytics"},
        "tags": ["blue", "green"],
        "count": "3",
    });
    v.as_object().cloned().unwrap_or_default()
}

fn sample_task() -> Object {
    json!({
        "echo>": "${greeting} on ${session_date}",
        "table": "events_${session_date_compact}",
        "url": "postgres://${db.host}:${db.port}/${db.name}",
        "retry": 3,
    })
    .as_object()
    .cloned()
    .unwrap_or_default()
}

fn mean(total: Duration, n: u32) -> Duration {
    total / n.max(1)
}

/// Runs each operation `iterations` times (creation `iterations / 10 + 1` times) and returns
/// the mean durations. Panics only if the evaluator cannot be created or evaluation fails,
/// which `cargo test` would have caught.
pub fn run(iterations: u32) -> BenchReport {
    let tz = spade_dig::Zone::Named(chrono_tz::America::Los_Angeles);
    let creations = iterations / 10 + 1;
    let start = Instant::now();
    for _ in 0..creations {
        // The JS context is made on first use: force it, that is what creation costs.
        let ev = Evaluator::new(tz, ExprLimits::default()).expect("evaluator");
        std::hint::black_box(ev.render("${1 + 1}", &Object::new()).expect("eval"));
    }
    let create = mean(start.elapsed(), creations);

    let ev = Evaluator::new(tz, ExprLimits::default()).expect("evaluator");
    ev.render("${1 + 1}", &Object::new()).expect("eval");
    let memory_fresh = ev.memory_used();
    let scope = sample_scope();
    let task = sample_task();
    let plain: Object = json!({"sh>": "echo hi", "retry": 3}).as_object().cloned().unwrap_or_default();
    // Warm-up: template compilation is cached per evaluator.
    ev.eval_config(&task, &scope).expect("eval");

    // Each task of an attempt has its own task_name (and some their own exports).
    let scopes: Vec<Object> = (0..16)
        .map(|i| {
            let mut s = scope.clone();
            s.insert("task_name".into(), json!(format!("+wf+group+task{i}")));
            s
        })
        .collect();
    let start = Instant::now();
    for i in 0..iterations {
        std::hint::black_box(ev.eval_config(&task, &scopes[i as usize % scopes.len()]).expect("eval"));
    }
    let eval_task = mean(start.elapsed(), iterations);

    // The same with a fresh evaluator per call pattern broken: every call loads all params.
    let other_scopes: Vec<Object> = (0..16)
        .map(|i| {
            let mut s = Object::new();
            for (k, v) in &scope {
                s.insert(format!("{k}_{i}"), v.clone());
            }
            s.insert("greeting".into(), json!("hi"));
            s.insert("session_date".into(), json!("2023-02-14"));
            s.insert("session_date_compact".into(), json!("20230214"));
            s.insert("db".into(), json!({"host": "h", "port": 1, "name": "n"}));
            s
        })
        .collect();
    let start = Instant::now();
    for i in 0..iterations {
        std::hint::black_box(ev.eval_config(&task, &other_scopes[i as usize % other_scopes.len()]).expect("eval"));
    }
    let eval_task_unrelated = mean(start.elapsed(), iterations);

    let start = Instant::now();
    for _ in 0..iterations {
        std::hint::black_box(ev.eval_config(&plain, &scope).expect("eval"));
    }
    let eval_plain_task = mean(start.elapsed(), iterations);

    let moment = "${moment(session_time).add(1, 'days').format('YYYY-MM-DD')}";
    ev.render(moment, &scope).expect("render");
    let start = Instant::now();
    for _ in 0..iterations {
        std::hint::black_box(ev.render(moment, &scope).expect("render"));
    }
    let render_moment = mean(start.elapsed(), iterations);

    BenchReport { iterations, create, eval_task, eval_task_unrelated, eval_plain_task, render_moment, memory_fresh }
}
