//! Runs one attempt: Digdag's task state machine over the [`Tree`].
//!
//! One coordinator thread owns the tree, the expression evaluator and the store handle.
//! Operator calls run inline when they are the only thing to do (sequential workflows pay
//! no thread hop) and on a small worker pool otherwise (`_parallel`). A task waiting for
//! a poll or a retry interval holds a timer entry, never a thread. State changes are
//! collected and committed in one transaction before the next operator calls start, so a
//! frozen request is durable before its plugin runs.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use spade_api::{
    AttemptRef, CancelToken, DiskQuota, Done, Invocation, InvokeError, Limits, LogLevel, Object, OperatorHost, Outcome,
    StartRequest, Subtasks, TaskRequest, Usage,
};
use spade_dig::Zone;
use spade_dig::{
    ParallelMode, RetryPolicy, Sla, TaskNode, WorkflowDef, compile_under, deep_merge, parallel_mode, parse_retry,
};
use spade_expr::{Evaluator, ExprLimits};
use spade_store::{AttemptRecord, AttemptStatus, LogLine, Store, TaskChange, TaskState};

use crate::EngineError;
use crate::params::{self, Identity};
use crate::services::TaskCtx;
use crate::tree::{Origin, Pending, PendingChild, State, TaskId, TaskUsage, Tree};

/// Where user-facing output and task logs go.
pub trait Console: Send + Sync {
    /// `echo>`-style output.
    fn print(&self, line: &str);
    /// A log line of a task (plugin logs, captured stdout/stderr).
    fn log(&self, task: &str, level: LogLevel, message: &str);
    /// A line a command of a task wrote (a script's stdout or stderr): shown whatever the
    /// log level, as a script's output is what its user reads.
    fn command_output(&self, task: &str, line: &str) {
        self.log(task, LogLevel::Info, line);
    }
    /// A task failed (shown to the user on stderr).
    fn task_failed(&self, task: &str, message: &str);
    /// Make everything printed so far visible. The engine calls it before every commit (so
    /// no committed task's output can be lost), not after every task: a console that
    /// buffers should also flush on its own after a short while, so that output printed
    /// just before a long operator call does not wait for the call.
    fn flush(&self);
    /// Called about every quarter second during a run: `finished` of `total` tasks are done.
    fn progress(&self, _finished: usize, _total: usize) {}
    /// Something the user must see whatever log level they chose (an SLA violation with
    /// `alert: true`).
    fn alert(&self, task: &str, message: &str) {
        self.log(task, LogLevel::Warn, message);
    }
}

/// Starts and watches other attempts, for `require>`.
pub trait Launcher: Send + Sync {
    fn start_or_find(&self, req: &StartRequest) -> Result<AttemptRef, String>;
    fn status(&self, attempt_id: i64) -> Result<AttemptRef, String>;
    /// The project's parameter server (`param_get>`): the value of `key`, if set and fresh.
    fn param_get(&self, _key: &str) -> Result<Option<String>, String> {
        Err("the parameter server is not available here".into())
    }
    /// The project's parameter server (`param_set>`).
    fn param_set(&self, _key: &str, _value: &str) -> Result<(), String> {
        Err("the parameter server is not available here".into())
    }
}

#[derive(Clone, Debug)]
pub struct EngineOptions {
    /// Upper bound on tasks per attempt, generated ones included.
    pub max_tasks: usize,
    /// Operator calls that may run at once.
    pub workers: usize,
    pub limits: Limits,
    pub expr_limits: ExprLimits,
    /// Secret values plugins may read (the runtime lets each plugin read only the keys
    /// granted to it).
    pub secrets: Arc<HashMap<String, String>>,
    /// The shortest wait before an operator that returned `poll` is called again, whatever
    /// `after_seconds` it asked for (0 would be a busy loop). Digdag polls no faster than
    /// once a second; tests lower it.
    pub min_poll_interval: Duration,
    /// Bytes the tasks of one attempt may add to the workspace.
    pub disk_quota: u64,
    /// Commit every change before operator calls start, instead of grouping commits over a
    /// few milliseconds: for hosts whose calls may wait long (a queue of remote agents),
    /// where uncommitted progress would stay invisible, and be lost by a crash, meanwhile.
    pub commit_before_calls: bool,
}

/// The default of [`EngineOptions::disk_quota`]: 1 GiB.
pub const DEFAULT_DISK_QUOTA: u64 = 1 << 30;

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            max_tasks: 100_000,
            workers: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2).max(2),
            limits: Limits::default(),
            expr_limits: ExprLimits::default(),
            secrets: Arc::default(),
            min_poll_interval: Duration::from_secs(1),
            disk_quota: DEFAULT_DISK_QUOTA,
            commit_before_calls: false,
        }
    }
}

/// Everything one attempt needs to know about what it runs.
pub struct AttemptInput<'a> {
    pub project_name: String,
    pub project_id: i64,
    /// The project directory: where `call>` finds workflow files.
    pub project_root: PathBuf,
    /// The only directory the tasks see ([`crate::workspace`]): never the project itself.
    pub workspace: PathBuf,
    pub workflow: &'a WorkflowDef,
    pub session_time: DateTime<Zone>,
    pub attempt: AttemptRecord,
    /// Attempt params (`-p`, `last_session_time`, ...).
    pub params: Object,
    pub retry_attempt_name: Option<String>,
    /// Results of tasks that already succeeded in this session, replayed instead of run.
    pub saved: HashMap<String, Done>,
    /// Frozen requests of tasks an earlier attempt left running or polling (crash, kill):
    /// re-used instead of evaluating the task's params again.
    pub frozen: HashMap<String, TaskRequest>,
    pub cancel: CancelToken,
    /// When the attempt was due to run, for `sla:` deadlines: the slot's run time for a
    /// scheduled session; `None`: now (the attempt's start).
    pub run_time: Option<DateTime<Utc>>,
}

#[derive(Clone, Debug, Default)]
pub struct AttemptSummary {
    pub success: bool,
    pub killed: bool,
    /// (task name, error message) of tasks that failed, in the order they failed.
    pub failed: Vec<(String, String)>,
    /// Operator calls made.
    pub invocations: usize,
    /// Tasks whose saved result was replayed.
    pub replayed: usize,
    pub tasks: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Wake {
    /// Call the operator again (a `poll` outcome).
    Poll,
    /// Run the operator again after a failure (`_retry` on an operator task).
    RetryRun,
    /// Re-create a group's children / re-run a generator after a child failed.
    RetryChildren,
    /// The workflow's `sla:` deadline passed (on the root task).
    Sla,
}

struct Job {
    id: TaskId,
    generation: u32,
    request: Arc<TaskRequest>,
    ctx: Arc<TaskCtx>,
}

struct JobResult {
    id: TaskId,
    generation: u32,
    result: Result<Outcome, InvokeError>,
    logs: Vec<(LogLevel, String)>,
    usage: Usage,
}

/// Run the attempt to its end. Task failures end it with `success: false`; an `Err` means
/// the attempt could not run (store failure, broken workflow).
pub fn run_attempt(
    input: AttemptInput<'_>,
    host: Arc<dyn OperatorHost>,
    store: &mut dyn Store,
    console: Arc<dyn Console>,
    launcher: Option<Arc<dyn Launcher>>,
    opts: &EngineOptions,
) -> Result<AttemptSummary, EngineError> {
    let wf = input.workflow;
    let mut tree = Tree::default();
    let root = tree.instantiate(None, &wf.root, Origin::Static, opts.max_tasks).map_err(|e| EngineError::Compile {
        workflow: wf.name.clone(),
        message: format!("the workflow has more than {} tasks (raise --max-tasks)", e.limit),
    })?;
    let eval = Evaluator::new(wf.timezone, opts.expr_limits).map_err(|e| EngineError::Expr(e.to_string()))?;
    let identity = Identity {
        timezone: wf.timezone,
        session_time: input.session_time,
        project_id: input.project_id,
        session_id: input.attempt.session_id,
        session_uuid: &input.attempt.session_uuid,
        attempt_id: input.attempt.attempt_id,
        retry_attempt_name: input.retry_attempt_name.as_deref(),
    };
    let builtins = params::builtins(&identity);
    let workdir = wf.workdir();
    let sla = match wf.config.get("sla").filter(|v| !v.is_null()) {
        Some(v) => {
            let sla = Sla::parse(v).map_err(|message| EngineError::Compile { workflow: wf.name.clone(), message })?;
            let deadline = sla.trigger_time(input.run_time.unwrap_or_else(Utc::now), &wf.timezone);
            Some((sla, deadline))
        }
        None => None,
    };

    let (results_tx, results_rx) = mpsc::channel::<JobResult>();
    let (jobs_tx, jobs_rx) = mpsc::channel::<Job>();
    let jobs_rx = Arc::new(std::sync::Mutex::new(jobs_rx));

    let mut run = Run {
        tree,
        root,
        input: &input,
        host,
        console,
        launcher,
        eval,
        builtins,
        workdir,
        opts,
        disk: DiskQuota::new(opts.disk_quota),
        ready: VecDeque::new(),
        timers: BinaryHeap::new(),
        changes: Vec::new(),
        jobs: Vec::new(),
        running: 0,
        workers: 0,
        finished: false,
        summary: AttemptSummary::default(),
        settled: 0,
        last_progress: Instant::now(),
        must_commit: false,
        last_commit: Instant::now(),
        logs: Vec::new(),
        sla,
    };
    if let Some((_, deadline)) = &run.sla {
        let wait = (*deadline - Utc::now()).to_std().unwrap_or(Duration::ZERO);
        run.timers.push(Reverse((Instant::now() + wait, root, 0, Wake::Sla)));
    }
    let summary = std::thread::scope(|scope| -> Result<AttemptSummary, EngineError> {
        run.make_ready(root);
        let result = run.run_loop(store, scope, &jobs_tx, &jobs_rx, &results_tx, &results_rx);
        drop(jobs_tx);
        result
    })?;
    let status = if summary.killed {
        AttemptStatus::Killed
    } else if summary.success {
        AttemptStatus::Success
    } else {
        AttemptStatus::Error
    };
    store.finish_attempt(input.attempt.attempt_id, status)?;
    Ok(summary)
}

struct Run<'a> {
    tree: Tree,
    root: TaskId,
    input: &'a AttemptInput<'a>,
    host: Arc<dyn OperatorHost>,
    console: Arc<dyn Console>,
    launcher: Option<Arc<dyn Launcher>>,
    eval: Evaluator,
    builtins: Object,
    /// Directory of the workflow file inside the project (for `call>` paths).
    workdir: Option<String>,
    opts: &'a EngineOptions,
    /// What the attempt's tasks may still add to the workspace, shared by all its calls.
    disk: DiskQuota,
    ready: VecDeque<TaskId>,
    timers: BinaryHeap<Reverse<(Instant, TaskId, u32, Wake)>>,
    changes: Vec<TaskChange>,
    /// Operator calls prepared in this round, dispatched after the store commit.
    jobs: Vec<Job>,
    running: usize,
    workers: usize,
    finished: bool,
    summary: AttemptSummary,
    /// Tasks that reached success or error (for progress reports).
    settled: usize,
    last_progress: Instant,
    /// Something in `changes` must be committed before the next operator call.
    must_commit: bool,
    /// Task log lines waiting to be stored with the next commit.
    logs: Vec<LogLine>,
    last_commit: Instant,
    /// The workflow's `sla:` and its deadline.
    sla: Option<(Sla, DateTime<Utc>)>,
}

fn level_name(level: LogLevel) -> &'static str {
    match level {
        LogLevel::Trace => "trace",
        LogLevel::Debug => "debug",
        LogLevel::Info => "info",
        LogLevel::Warn => "warn",
        LogLevel::Error => "error",
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// Most changes held back by group commit, and for how long.
const COMMIT_BATCH: usize = 1024;
const COMMIT_INTERVAL: Duration = Duration::from_millis(20);

impl<'a> Run<'a> {
    fn run_loop<'s>(
        &mut self,
        store: &mut dyn Store,
        scope: &'s std::thread::Scope<'s, '_>,
        jobs_tx: &mpsc::Sender<Job>,
        jobs_rx: &Arc<std::sync::Mutex<mpsc::Receiver<Job>>>,
        results_tx: &mpsc::Sender<JobResult>,
        results_rx: &mpsc::Receiver<JobResult>,
    ) -> Result<AttemptSummary, EngineError>
    where
        'a: 's,
    {
        loop {
            while let Some(id) = self.ready.pop_front() {
                self.start(id);
            }
            // Group commit: state changes are batched unless something must be durable
            // before the next operator call (a volatile frozen request, a poll), the run is
            // about to wait or end, or the batch is big or old enough.
            let idle = self.jobs.is_empty() && self.ready.is_empty();
            if self.must_commit
                || idle
                || (self.opts.commit_before_calls && !self.jobs.is_empty() && !self.changes.is_empty())
                || self.finished
                || self.changes.len() >= COMMIT_BATCH
                || self.last_commit.elapsed() >= COMMIT_INTERVAL
            {
                // Output first: a line printed but not committed runs again after a crash
                // (at least once); a task committed before its line left the buffer would
                // lose it. Flushing with the commit, not after every task, writes output in
                // batches (a write per line was a fifth of a 10,000-echo run into a pipe);
                // the console shows output within its own short interval meanwhile.
                self.console.flush();
                store.write(&self.changes)?;
                self.changes.clear();
                store.append_logs(&self.logs)?;
                self.logs.clear();
                self.must_commit = false;
                self.last_commit = Instant::now();
            }
            if self.last_progress.elapsed() >= Duration::from_millis(250) {
                self.last_progress = Instant::now();
                self.console.progress(self.settled, self.tree.live_count);
            }

            if self.finished {
                break;
            }
            if self.input.cancel.is_cancelled() && self.running == 0 {
                self.summary.killed = true;
                break;
            }

            if self.jobs.len() == 1 && self.running == 0 {
                // The common sequential case: no thread hop.
                let job = self.jobs.pop().unwrap();
                let result = self.invoke(&job);
                let logs = job.ctx.logs.lock().unwrap_or_else(|e| e.into_inner()).take();
                self.keep_logs(job.id, logs);
                let usage = *job.ctx.usage.lock().unwrap_or_else(|e| e.into_inner());
                self.apply(job.id, job.generation, result, usage);
                continue;
            }
            for job in self.jobs.drain(..) {
                if self.workers < self.opts.workers.max(1) && self.workers <= self.running {
                    self.workers += 1;
                    let rx = Arc::clone(jobs_rx);
                    let tx = results_tx.clone();
                    let host = Arc::clone(&self.host);
                    let workspace = self.input.workspace.clone();
                    let disk = self.disk.clone();
                    let limits = self.opts.limits;
                    let cancel = self.input.cancel.clone();
                    scope.spawn(move || {
                        loop {
                            let job = match rx.lock().unwrap().recv() {
                                Ok(job) => job,
                                Err(_) => return,
                            };
                            let result = host.invoke(Invocation {
                                request: &job.request,
                                workspace: &workspace,
                                disk: &disk,
                                limits,
                                services: &*job.ctx,
                                cancel: &cancel,
                            });
                            let logs = job.ctx.logs.lock().unwrap_or_else(|e| e.into_inner()).take();
                            let usage = *job.ctx.usage.lock().unwrap_or_else(|e| e.into_inner());
                            let done = JobResult { id: job.id, generation: job.generation, result, logs, usage };
                            if tx.send(done).is_err() {
                                return;
                            }
                        }
                    });
                }
                self.running += 1;
                jobs_tx.send(job).expect("workers live as long as the run");
            }

            if !self.ready.is_empty() {
                continue;
            }
            // Wait for a call to finish or the next timer.
            let now = Instant::now();
            let due = self.timers.peek().map(|Reverse((t, ..))| *t);
            if let Some(due) = due
                && due <= now
            {
                let Reverse((_, id, generation, wake)) = self.timers.pop().unwrap();
                self.wake(id, generation, wake);
                continue;
            }
            if self.running == 0 && due.is_none() {
                // Nothing runs, nothing is scheduled, the root is not done: a bug, but
                // one that must end the attempt rather than hang it.
                let name = self.tree.get(self.root).name.clone();
                self.console.task_failed(&name, "internal error: the attempt stalled with unfinished tasks");
                self.summary.failed.push((name, "attempt stalled".into()));
                break;
            }
            let timeout = due.map(|d| d.saturating_duration_since(now)).unwrap_or(Duration::from_millis(200));
            match results_rx.recv_timeout(timeout.min(Duration::from_millis(200))) {
                Ok(r) => {
                    self.running -= 1;
                    self.keep_logs(r.id, r.logs);
                    self.apply(r.id, r.generation, r.result, r.usage);
                    while let Ok(r) = results_rx.try_recv() {
                        self.running -= 1;
                        self.keep_logs(r.id, r.logs);
                        self.apply(r.id, r.generation, r.result, r.usage);
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => unreachable!("the coordinator holds a sender"),
            }
        }
        store.write(&self.changes)?;
        self.changes.clear();
        store.append_logs(&self.logs)?;
        self.logs.clear();
        let mut summary = std::mem::take(&mut self.summary);
        summary.success = !summary.killed && self.tree.get(self.root).state == State::Success;
        summary.tasks = self.tree.live_count;
        Ok(summary)
    }

    fn keep_logs(&mut self, id: TaskId, lines: Vec<(LogLevel, String)>) {
        if lines.is_empty() {
            return;
        }
        let name = &self.tree.get(id).name;
        let at_ms = now_ms();
        for (level, message) in lines {
            self.logs.push(LogLine {
                attempt_id: self.input.attempt.attempt_id,
                task_name: name.clone(),
                at_ms,
                level: level_name(level).to_string(),
                message,
            });
        }
    }

    fn invoke(&self, job: &Job) -> Result<Outcome, InvokeError> {
        self.host.invoke(Invocation {
            request: &job.request,
            workspace: &self.input.workspace,
            disk: &self.disk,
            limits: self.opts.limits,
            services: &*job.ctx,
            cancel: &self.input.cancel,
        })
    }

    fn change(&mut self, id: TaskId, state: TaskState, with_request: bool) {
        let t = self.tree.get(id);
        self.changes.push(TaskChange {
            attempt_id: self.input.attempt.attempt_id,
            index: id as u32,
            name: t.name.clone(),
            state,
            retry_count: t.retry_count,
            request: if with_request { t.request.clone() } else { None },
            // A result written when it was produced is not written again (the store keeps it).
            result: if state == TaskState::Success && !t.result_saved { t.result.as_deref().cloned() } else { None },
            error: if state == TaskState::Error { t.error.clone() } else { None },
            usage: t.usage.map(TaskUsage::to_usage),
        });
    }

    fn make_ready(&mut self, id: TaskId) {
        self.tree.compute_store_upstreams(id);
        self.tree.get_mut(id).state = State::Ready;
        self.ready.push_back(id);
    }

    fn start_children(&mut self, id: TaskId) {
        let roots: Vec<TaskId> = self
            .tree
            .get(id)
            .children
            .iter()
            .copied()
            .filter(|&c| {
                let t = self.tree.get(c);
                t.state == State::Blocked && t.pending_upstreams == 0
            })
            .collect();
        for c in roots {
            self.make_ready(c);
        }
    }

    fn start(&mut self, id: TaskId) {
        if self.tree.get(id).state != State::Ready {
            return;
        }
        if self.input.cancel.is_cancelled() {
            self.tree.get_mut(id).error = Some("killed".into());
            self.finish_error(id);
            return;
        }
        if self.tree.get(id).operator.is_none() {
            // A lazily created group starts with its first child.
            if self.tree.get(id).children.is_empty() && self.tree.pending_count(id) > 0 {
                self.create_next_child(id);
            }
            if self.tree.get(id).children.is_empty() {
                self.finish_success(id);
            } else {
                self.tree.get_mut(id).state = State::Planned;
                self.start_children(id);
            }
            return;
        }
        self.prepare_run(id);
    }

    fn prepare_run(&mut self, id: TaskId) {
        let name = self.tree.get(id).name.clone();
        if let Some(done) = self.input.saved.get(&name) {
            self.summary.replayed += 1;
            let done = done.clone();
            self.apply_done(id, done);
            return;
        }
        let first_call = self.tree.get(id).request.is_none();
        if first_call {
            if let Some(frozen) = self.input.frozen.get(&name) {
                // Continue where the cut-off attempt was, with the same evaluated request.
                let t = self.tree.get_mut(id);
                t.poll_state = frozen.state.clone();
                t.request = Some(Arc::new(frozen.clone()));
            } else {
                match self.build_request(id) {
                    Ok((req, volatile)) => {
                        self.tree.get_mut(id).request = Some(Arc::new(req));
                        // A request that depends on the clock or randomness must be on disk
                        // before its operator runs: a re-run after a crash re-uses it.
                        self.must_commit |= volatile;
                    }
                    Err(message) => {
                        self.operator_failed(id, message, false);
                        return;
                    }
                }
            }
        }
        let t = self.tree.get_mut(id);
        let request = Arc::make_mut(t.request.as_mut().unwrap());
        request.retry_count = t.retry_count;
        request.state = t.poll_state.clone();
        t.state = State::Running;
        self.change(id, TaskState::Running, first_call);
        self.enqueue_call(id);
    }

    fn enqueue_call(&mut self, id: TaskId) {
        let t = self.tree.get(id);
        let ctx = Arc::new(TaskCtx {
            console: Arc::clone(&self.console),
            task_name: t.name.clone(),
            project_root: self.input.project_root.clone(),
            workdir: t
                .request
                .as_ref()
                .and_then(|r| r.params.get("_workdir"))
                .and_then(Value::as_str)
                .map(str::to_string)
                .or_else(|| self.workdir.clone()),
            timezone: self.input.workflow.timezone,
            expr_limits: self.opts.expr_limits,
            launcher: self.launcher.clone(),
            secrets: self.opts.secrets.clone(),
            logs: Default::default(),
            usage: Default::default(),
        });
        self.summary.invocations += 1;
        self.jobs.push(Job { id, generation: t.generation, request: t.request.clone().unwrap(), ctx });
    }

    /// The evaluated request, and whether evaluating it used the clock or randomness (so that
    /// evaluating again could give another request).
    fn build_request(&mut self, id: TaskId) -> Result<(TaskRequest, bool), String> {
        let t = self.tree.get(id);
        let mut scope = params::collect(&self.tree, id, &self.input.params);
        let last_executed = params::last_executed_vars(&scope, self.input.workflow.timezone);
        for (k, v) in self.builtins.iter().chain(&last_executed) {
            scope.insert(k.clone(), v.clone());
        }
        scope.insert("task_name".into(), Value::String(t.name.clone()));
        let (local, raw) = params::local_config(&t.config, t.operator.as_deref());
        let mut full = scope.clone();
        deep_merge(&mut full, &local);
        let (evaluated, volatile) = self.eval.eval_config_tracked(&full, &scope).map_err(|e| e.to_string())?;
        let command = evaluated.get("_command").cloned().unwrap_or(Value::Null);
        let local_params: Object =
            local.keys().filter_map(|k| evaluated.get(k).map(|v| (k.clone(), v.clone()))).collect();
        let wf = self.input.workflow;
        Ok((
            TaskRequest {
                operator: t.operator.clone().unwrap_or_default(),
                task_name: t.name.clone(),
                project_name: self.input.project_name.clone(),
                workflow_name: wf.name.clone(),
                attempt_id: self.input.attempt.attempt_id,
                session_id: self.input.attempt.session_id,
                session_uuid: self.input.attempt.session_uuid.clone(),
                session_time: self.builtins["session_time"].as_str().unwrap_or_default().to_string(),
                timezone: wf.timezone.name().to_string(),
                retry_attempt_name: self.input.retry_attempt_name.clone(),
                command,
                params: evaluated,
                local_params,
                raw,
                state: None,
                retry_count: t.retry_count,
            },
            volatile,
        ))
    }

    fn apply(&mut self, id: TaskId, generation: u32, result: Result<Outcome, InvokeError>, usage: Usage) {
        let t = self.tree.get_mut(id);
        if t.generation != generation || t.state != State::Running {
            return;
        }
        t.usage.get_or_insert_with(Default::default).add(&usage);
        match result {
            Ok(Outcome::Done(done)) => self.apply_done(id, done),
            Ok(Outcome::Poll { after_seconds, state }) => {
                let t = self.tree.get_mut(id);
                if let Some(r) = t.request.as_mut() {
                    Arc::make_mut(r).state = Some(state.clone());
                }
                t.poll_state = Some(state);
                t.state = State::Waiting;
                // The floor keeps an operator asking for 0 s from busy-looping the host.
                let at = Instant::now() + Duration::from_secs(after_seconds as u64).max(self.opts.min_poll_interval);
                self.timers.push(Reverse((at, id, t.generation, Wake::Poll)));
                // The request with its poll state goes to disk: a re-run after a crash
                // continues polling the same thing.
                self.change(id, TaskState::Polling, true);
                self.must_commit = true;
            }
            Ok(Outcome::Error { message, retryable }) => self.operator_failed(id, message, retryable),
            Err(InvokeError::Cancelled) => {
                self.operator_failed(id, "killed".into(), false);
            }
            Err(e) => {
                let retryable = matches!(e, InvokeError::Plugin { .. });
                self.operator_failed(id, e.to_string(), retryable)
            }
        }
    }

    fn apply_done(&mut self, id: TaskId, mut done: Done) {
        if !done.store_params.is_empty() || !done.reset_store_params.is_empty() {
            self.tree.mark_store(id);
        }
        let subtasks = done.subtasks.take();
        self.tree.get_mut(id).result = Some(Box::new(done.clone()));
        let mut sub_id = None;
        if let Some(sub) = subtasks {
            match self.generate(id, &sub) {
                Ok(s) => sub_id = Some(s),
                Err(message) => {
                    self.operator_failed(id, message, false);
                    return;
                }
            }
            // The generated config goes to the store now (a resume replays it), so memory
            // holds it only while its tasks are created, not while they run.
            let t = self.tree.get_mut(id);
            t.result_saved = true;
            let t = self.tree.get(id);
            self.changes.push(TaskChange {
                attempt_id: self.input.attempt.attempt_id,
                index: id as u32,
                name: t.name.clone(),
                state: TaskState::Running,
                retry_count: t.retry_count,
                request: None,
                result: Some(Done { subtasks: Some(sub), ..done }),
                error: None,
                usage: t.usage.map(TaskUsage::to_usage),
            });
            self.must_commit = true;
        }
        let mut added = sub_id.is_some();
        if let Some(check) = self.tree.get(id).config.get("_check").cloned() {
            match self.add_handler(id, "^check", &check, Origin::Check) {
                Ok(check_id) => {
                    if let Some(s) = sub_id {
                        self.tree.get_mut(check_id).upstreams.push(s);
                        self.tree.get_mut(check_id).pending_upstreams += 1;
                        self.tree.get_mut(s).downstreams.push(check_id);
                    }
                    added = true;
                }
                Err(msg) => {
                    self.operator_failed(id, msg, false);
                    return;
                }
            }
        }
        if added {
            self.tree.get_mut(id).state = State::Planned;
            self.start_children(id);
        } else {
            self.finish_success(id);
        }
    }

    /// Create the `^sub` group of the subtasks an operator generated: lazily (children as
    /// compact text, created one by one) for a long sequential list, else all at once.
    fn generate(&mut self, id: TaskId, sub: &Subtasks) -> Result<TaskId, String> {
        let parent_name = self.tree.get(id).name.clone();
        let invalid = |e: String| format!("the operator generated an invalid subtask config: {e}");
        let too_many = |e: crate::tree::TooManyTasks| {
            format!("generating subtasks would exceed the limit of {} tasks per attempt (raise --max-tasks)", e.limit)
        };
        match plan_generated(&parent_name, sub).map_err(invalid)? {
            Generated::Lazy(node, pending) => self
                .tree
                .instantiate_lazily(Some(id), &node, Origin::Sub, pending, self.opts.max_tasks)
                .map_err(too_many),
            Generated::Whole(sub) => {
                let node = compile_under(&parent_name, "^sub", &sub).map_err(|e| invalid(e.to_string()))?;
                self.tree.instantiate(Some(id), &node, Origin::Sub, self.opts.max_tasks).map_err(too_many)
            }
        }
    }

    /// Instantiate an `_error`/`_check` config as a child of `id`.
    fn add_handler(&mut self, id: TaskId, name: &str, config: &Value, origin: Origin) -> Result<TaskId, String> {
        let Value::Object(cfg) = config else {
            return Err(format!("{} must be a task (an object), got {config}", &name[1..]));
        };
        let node = compile_under(&self.tree.get(id).name.clone(), name, cfg)
            .map_err(|e| format!("invalid _{} task: {e}", &name[1..]))?;
        self.tree
            .instantiate(Some(id), &node, origin, self.opts.max_tasks)
            .map_err(|e| format!("adding {name} would exceed the limit of {} tasks per attempt", e.limit))
    }

    fn finish_success(&mut self, id: TaskId) {
        self.settled += 1;
        self.tree.get_mut(id).state = State::Success;
        self.change(id, TaskState::Success, false);
        let downstreams = self.tree.get(id).downstreams.clone();
        for d in downstreams {
            let dt = self.tree.get_mut(d);
            dt.pending_upstreams = dt.pending_upstreams.saturating_sub(1);
            if dt.pending_upstreams == 0 && dt.state == State::Blocked {
                self.make_ready(d);
            }
        }
        self.notify_parent(id);
        self.tree.release_settled(id);
    }

    fn finish_error(&mut self, id: TaskId) {
        self.settled += 1;
        let t = self.tree.get_mut(id);
        t.state = State::Error;
        let message = t.error.clone().unwrap_or_else(|| "failed".into());
        let name = t.name.clone();
        self.change(id, TaskState::Error, false);
        // Report where a failure starts, not every group it bubbles up through.
        let is_source = !self.tree.get(id).children.iter().any(|&c| self.tree.get(c).state == State::Error);
        if is_source {
            self.keep_logs(id, vec![(LogLevel::Error, format!("failed: {message}"))]);
            self.console.task_failed(&name, &message);
            self.summary.failed.push((name, message));
        }
        self.kill_downstreams(id);
        self.notify_parent(id);
        self.tree.release_settled(id);
    }

    fn kill_downstreams(&mut self, id: TaskId) {
        let downstreams = self.tree.get(id).downstreams.clone();
        for d in downstreams {
            if self.tree.get(d).state == State::Blocked {
                self.tree.get_mut(d).state = State::Dead;
                if let Some(p) = self.tree.get(d).parent {
                    self.tree.get_mut(p).settled_children += 1;
                }
                self.kill_downstreams(d);
                self.tree.release_settled(d);
            }
        }
    }

    fn notify_parent(&mut self, id: TaskId) {
        let Some(p) = self.tree.get(id).parent else {
            self.finished = true;
            return;
        };
        self.tree.get_mut(p).settled_children += 1;
        if self.tree.pending_count(p) > 0 {
            if self.tree.get(id).state == State::Success {
                // The next child of a lazily created group is due (see `plan_generated`).
                if let Some(next) = self.create_next_child(p) {
                    self.make_ready(next);
                }
            } else {
                // As its downstream siblings would be, the rest are dead and never run.
                let dead = self.tree.drop_pending(p);
                self.tree.get_mut(p).settled_children += dead;
            }
        }
        let pt = self.tree.get(p);
        if pt.settled_children >= pt.children.len() + self.tree.pending_count(p) && pt.state == State::Planned {
            self.children_settled(p);
        }
    }

    /// Create the next pending child of `id`. It was compiled when generated, so this
    /// cannot fail short of a bug; if it does, the group fails with the reason.
    fn create_next_child(&mut self, id: TaskId) -> Option<TaskId> {
        match self.tree.create_next_pending(id)? {
            Ok(child) => Some(child),
            Err(e) => {
                let dead = self.tree.drop_pending(id);
                let t = self.tree.get_mut(id);
                t.settled_children += dead;
                t.error = Some(format!("internal error: a generated task could not be created: {e}"));
                None
            }
        }
    }

    fn children_settled(&mut self, id: TaskId) {
        let t = self.tree.get(id);
        if t.handling_error {
            self.finish_error(id);
            return;
        }
        let failed_child = t.children.iter().copied().find(|&c| self.tree.get(c).state == State::Error);
        let message = match failed_child {
            Some(failed) => self.tree.get(failed).error.clone().unwrap_or_else(|| "a subtask failed".into()),
            // A lazily created group that could not create a child (see `create_next_child`).
            None if t.error.is_some() => t.error.clone().unwrap_or_default(),
            None => {
                self.finish_success(id);
                return;
            }
        };
        match self.retry_policy(id) {
            Ok(Some(policy)) if policy.allows(self.tree.get(id).retry_count) => {
                let delay = Duration::from_secs(policy.interval_for(self.tree.get(id).retry_count));
                let t = self.tree.get_mut(id);
                t.retry_count += 1;
                t.state = State::Waiting;
                self.timers.push(Reverse((Instant::now() + delay, id, t.generation, Wake::RetryChildren)));
            }
            Ok(_) => {
                let stores = params::subtree_stores(&self.tree, id);
                self.handle_failure(id, message, stores);
            }
            Err(e) => self.handle_failure(id, format!("{message} (and its {e})"), Object::new()),
        }
    }

    fn retry_policy(&mut self, id: TaskId) -> Result<Option<RetryPolicy>, String> {
        let Some(v) = self.tree.get(id).config.get("_retry").cloned() else { return Ok(None) };
        let v = match &v {
            Value::String(s) if s.contains("${") => {
                let scope = params::collect(&self.tree, id, &self.input.params);
                Value::String(self.eval.render(s, &scope).map_err(|e| format!("_retry: {e}"))?)
            }
            _ => v,
        };
        parse_retry(&v).map(Some)
    }

    fn operator_failed(&mut self, id: TaskId, message: String, retryable: bool) {
        if retryable
            && let Ok(Some(policy)) = self.retry_policy(id)
            && policy.allows(self.tree.get(id).retry_count)
        {
            let delay = Duration::from_secs(policy.interval_for(self.tree.get(id).retry_count));
            self.console.log(&self.tree.get(id).name.clone(), LogLevel::Warn, &format!("{message} (retrying)"));
            let t = self.tree.get_mut(id);
            t.retry_count += 1;
            t.poll_state = None;
            t.state = State::Waiting;
            self.timers.push(Reverse((Instant::now() + delay, id, t.generation, Wake::RetryRun)));
            return;
        }
        self.handle_failure(id, message, Object::new());
    }

    /// The task failed for good: run its `_error` handler if it has one, then fail.
    fn handle_failure(&mut self, id: TaskId, message: String, stores: Object) {
        self.tree.get_mut(id).error = Some(message.clone());
        let Some(Value::Object(mut handler)) = self.tree.get(id).config.get("_error").cloned() else {
            self.finish_error(id);
            return;
        };
        let mut export = stores;
        deep_merge(&mut export, json!({"error": {"message": message, "stacktrace": ""}}).as_object().unwrap());
        if let Some(Value::Object(own)) = handler.get("_export") {
            deep_merge(&mut export, own);
        }
        handler.insert("_export".into(), Value::Object(export));
        match self.add_handler(id, "^error", &Value::Object(handler), Origin::ErrorHandler) {
            Ok(_) => {
                let t = self.tree.get_mut(id);
                t.handling_error = true;
                t.state = State::Planned;
                self.start_children(id);
            }
            Err(msg) => {
                let name = self.tree.get(id).name.clone();
                self.console.log(&name, LogLevel::Error, &msg);
                self.finish_error(id);
            }
        }
    }

    fn wake(&mut self, id: TaskId, generation: u32, wake: Wake) {
        if wake == Wake::Sla {
            self.sla_missed();
            return;
        }
        let t = self.tree.get(id);
        if t.generation != generation || t.state != State::Waiting {
            return;
        }
        match wake {
            Wake::Poll => {
                let t = self.tree.get_mut(id);
                let request = Arc::make_mut(t.request.as_mut().expect("a polling task has a frozen request"));
                request.state = t.poll_state.clone();
                t.state = State::Running;
                self.enqueue_call(id);
            }
            Wake::RetryRun => {
                self.tree.get_mut(id).state = State::Ready;
                self.prepare_run(id);
            }
            Wake::Sla => unreachable!("handled above"),
            Wake::RetryChildren => {
                self.tree.remove_children(id);
                let t = self.tree.get_mut(id);
                t.error = None;
                t.result = None;
                t.result_saved = false;
                t.poll_state = None;
                if t.operator.is_some() {
                    // A generator (if>, for_each>, call> ...) re-runs and regenerates.
                    t.state = State::Ready;
                    self.prepare_run(id);
                } else {
                    if let Err(e) = self.tree.reinstantiate_children(id, self.opts.max_tasks) {
                        let msg = format!("retrying would exceed the limit of {} tasks per attempt", e.limit);
                        self.handle_failure(id, msg, Object::new());
                        return;
                    }
                    self.tree.get_mut(id).state = State::Ready;
                    self.start(id);
                }
            }
        }
    }
}

impl Run<'_> {
    /// The `sla:` deadline passed with the attempt still running: add Digdag's SLA tasks to
    /// the root (`^sla^alert`, `^sla^fail`, `^sla` with the user's tasks) beside the tasks
    /// that still run. As in Digdag, running tasks are not stopped: with `fail: true` the
    /// attempt ends failed once everything has settled.
    fn sla_missed(&mut self) {
        let root = self.root;
        let state = self.tree.get(root).state;
        if state.is_settled() || self.input.cancel.is_cancelled() {
            return;
        }
        if state != State::Planned {
            // The root is between runs of its children (a `_retry` interval): look again soon.
            self.timers.push(Reverse((Instant::now() + Duration::from_secs(1), root, 0, Wake::Sla)));
            return;
        }
        let Some((sla, deadline)) = self.sla.clone() else { return };
        let wf = self.input.workflow;
        let root_name = self.tree.get(root).name.clone();
        let message = format!(
            "SLA violation: workflow {} (session {}) did not finish by {} (sla: {}); make it faster or move the deadline",
            wf.name,
            self.builtins["session_time"].as_str().unwrap_or_default(),
            deadline.with_timezone(&wf.timezone).format("%Y-%m-%d %H:%M:%S %:z"),
            sla.describe(),
        );
        let mut nodes = Vec::new();
        if sla.alert {
            nodes.push(("^sla^alert", Object::new()));
        }
        if sla.fail {
            let mut cfg = Object::new();
            cfg.insert("fail>".into(), Value::String(format!("{message} (the sla has fail: true)")));
            nodes.push(("^sla^fail", cfg));
        }
        if sla.has_tasks() {
            nodes.push(("^sla", sla.tasks.clone()));
        }
        if nodes.is_empty() {
            // alert: false, fail: false and no tasks: nothing runs, but the log says so.
            self.console.log(&root_name, LogLevel::Info, &message);
            self.keep_logs(root, vec![(LogLevel::Info, message)]);
            return;
        }
        for (name, cfg) in nodes {
            let node = match compile_under(&root_name, name, &cfg) {
                Ok(node) => node,
                Err(e) => {
                    // Checked when the workflow was loaded; reported rather than ignored.
                    let task = format!("{root_name}{name}");
                    let msg = format!("invalid sla tasks: {e}; fix the workflow's sla:");
                    self.console.task_failed(&task, &msg);
                    self.summary.failed.push((task, msg));
                    continue;
                }
            };
            // Without the task limit, as Digdag adds them.
            let id = self.tree.instantiate(Some(root), &node, Origin::Sub, usize::MAX).expect("no limit");
            if name == "^sla^alert" {
                let alert_name = self.tree.get(id).name.clone();
                self.console.alert(&alert_name, &message);
                self.keep_logs(id, vec![(LogLevel::Warn, message.clone())]);
            }
            self.make_ready(id);
        }
    }
}

/// Generated groups with more children than this are created lazily ([`plan_generated`]).
const LAZY_CHILDREN: usize = 64;

/// How the `^sub` group of generated subtasks is created.
enum Generated {
    /// A long sequential list (`for_each>` over many items): a childless node, its children
    /// waiting as text; only one child is a task at a time.
    Lazy(TaskNode, Pending),
    /// Short, parallel, or with `_background`/`_after` children (whose links need every
    /// child at once): the config, parsed, to compile whole.
    Whole(Object),
}

/// Read generated subtasks once (the top level, then each value) and decide how to create them.
fn plan_generated(parent_name: &str, sub: &Subtasks) -> Result<Generated, String> {
    let parse = |raw: &serde_json::value::RawValue| serde_json::from_str::<Value>(raw.get()).map_err(|e| e.to_string());
    let entries = sub.entries()?;
    let is_child = |k: &str| k.starts_with('+');
    let mut own = Object::new();
    for (key, raw) in entries.iter().filter(|(k, _)| !is_child(k)) {
        own.insert(key.clone(), parse(raw)?);
    }
    let children = entries.iter().filter(|(k, _)| is_child(k)).count();
    if children > LAZY_CHILDREN && matches!(parallel_mode(own.get("_parallel")), Ok(ParallelMode::Sequential)) {
        let mut pending = Pending::default();
        let sub_name = format!("{parent_name}^sub");
        let mut linked = false;
        for (name, raw) in entries.iter().filter(|(k, _)| is_child(k)) {
            let config = match parse(raw)? {
                Value::Object(o) if !o.contains_key("_background") && !o.contains_key("_after") => o,
                // Linked to others, or not a task config (the whole-group compile reports it).
                _ => {
                    linked = true;
                    break;
                }
            };
            // Compiled now for its errors and its task count; kept as text until it is due.
            let node = compile_under(&sub_name, name, &config).map_err(|e| e.to_string())?;
            pending.children.push_back(PendingChild {
                name: name.clone(),
                config: raw.get().into(),
                nodes: crate::tree::count_nodes(&node),
            });
        }
        if !linked {
            let node = compile_under(parent_name, "^sub", &own).map_err(|e| e.to_string())?;
            return Ok(Generated::Lazy(node, pending));
        }
    }
    let mut whole = Object::new();
    for (key, raw) in entries {
        let value = match own.remove(&key) {
            Some(v) => v,
            None => parse(&raw)?,
        };
        whole.insert(key, value);
    }
    Ok(Generated::Whole(whole))
}
