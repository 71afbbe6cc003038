//! Read-only inspection of a local project's state database, like Digdag's `sessions`,
//! `attempts`, `tasks` and `log`: aligned tables on stdout, notes on stderr. Nothing here
//! writes task state; the database must already exist (made by `spade run`).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use chrono::{Local, TimeZone};
use spade_store::{AttemptInfo, Store, StoreError, StoreLocation, TaskRecord};

/// Where the state database is: the options every inspection command shares.
#[derive(clap::Args)]
pub struct StateArgs {
    /// Project directory (default: the current directory).
    #[arg(long)]
    pub project: Option<PathBuf>,
    /// State database: a file or a PostgreSQL URL [default: <project>/.spade/state.db].
    #[arg(long, value_name = "FILE|URL", env = "SPADE_STATE", hide_env_values = true)]
    pub state: Option<String>,
    /// Ask a server's REST API instead (`spade server`, `spade scheduler`).
    #[arg(short = 'e', long, value_name = "URL", conflicts_with_all = ["project", "state"])]
    pub endpoint: Option<String>,
}

#[derive(clap::Args)]
pub struct SessionsArgs {
    /// Only sessions of this workflow (file or name).
    pub workflow: Option<String>,
    #[command(flatten)]
    pub state: StateArgs,
}

#[derive(clap::Args)]
pub struct AttemptsArgs {
    /// Only attempts of this session (an id from `spade sessions`).
    pub session_id: Option<i64>,
    #[command(flatten)]
    pub state: StateArgs,
}

#[derive(clap::Args)]
pub struct TasksArgs {
    /// The attempt (an id from `spade attempts`).
    pub attempt_id: i64,
    #[command(flatten)]
    pub state: StateArgs,
}

#[derive(clap::Args)]
#[command(after_help = "Kept per task: what the plugin logged, its captured stdout/stderr and why it \
                        failed (at most 64 KiB per operator call). echo> output is not a log line.")]
pub struct LogArgs {
    /// The attempt (an id from `spade attempts`).
    pub attempt_id: i64,
    /// Only tasks whose full name starts with this (e.g. +wf+load).
    pub task_prefix: Option<String>,
    #[command(flatten)]
    pub state: StateArgs,
}

/// Open an existing state database; inspection must not create an empty one by accident.
fn open(args: &StateArgs) -> anyhow::Result<Box<dyn Store>> {
    let location = crate::state_location(&crate::project_dir(&args.project)?, &args.state);
    if let StoreLocation::Sqlite(path) = &location
        && !path.is_file()
    {
        bail!(
            "no state database at {}: nothing has run here yet (run `spade run <workflow>` first, \
             or point --project/--state at the project)",
            path.display()
        );
    }
    location.open().with_context(|| format!("opening {location}"))
}

fn attempt_info(store: &mut dyn Store, attempt_id: i64) -> anyhow::Result<AttemptInfo> {
    match store.attempt_info(attempt_id) {
        Err(StoreError::NoSuchAttempt(id)) => {
            bail!("no attempt with id {id} in this state database; `spade attempts` lists them")
        }
        other => Ok(other?),
    }
}

fn time(ms: i64) -> String {
    match Local.timestamp_millis_opt(ms).single() {
        Some(t) => t.format("%Y-%m-%d %H:%M:%S %:z").to_string(),
        None => format!("{ms} ms"),
    }
}

fn duration(from_ms: i64, to_ms: Option<i64>) -> String {
    let Some(to_ms) = to_ms else { return "-".into() };
    let ms = (to_ms - from_ms).max(0);
    if ms < 60_000 {
        format!("{:.1}s", ms as f64 / 1000.0)
    } else {
        let s = ms / 1000;
        format!("{}h{:02}m{:02}s", s / 3600, s / 60 % 60, s % 60)
    }
}

/// First line of an error, shortened so that a table row stays on one line.
fn short(message: &str) -> String {
    let first = message.lines().next().unwrap_or("");
    let mut out: String = first.chars().take(100).collect();
    if out.len() < first.len() || message.lines().nth(1).is_some() {
        out.push_str(" …");
    }
    out
}

/// Rows whose cells are padded to their column's widest cell (the last column is not).
struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    fn new(headers: &[&str]) -> Self {
        Table { rows: vec![headers.iter().map(|h| h.to_string()).collect()] }
    }

    fn push(&mut self, row: Vec<String>) {
        self.rows.push(row);
    }

    fn widths(&self) -> Vec<usize> {
        let mut widths = vec![0; self.rows[0].len()];
        for row in &self.rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        widths
    }

    fn line(widths: &[usize], row: &[String]) -> String {
        let mut out = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == row.len() {
                out.push_str(cell);
            } else {
                out.push_str(cell);
                out.push_str(&" ".repeat(widths[i] - cell.chars().count() + 2));
            }
        }
        out.trim_end().to_string()
    }

    fn render(&self) -> String {
        let widths = self.widths();
        self.rows.iter().map(|row| Self::line(&widths, row) + "\n").collect()
    }
}

/// Write a whole listing to stdout; a reader that stops early (`| head`) is not an error.
fn emit(text: &str) -> anyhow::Result<()> {
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

pub fn sessions(args: SessionsArgs) -> anyhow::Result<ExitCode> {
    if let Some(endpoint) = &args.state.endpoint {
        return remote::sessions(endpoint, args.workflow.as_deref());
    }
    let mut store = open(&args.state)?;
    let workflow = args.workflow.as_deref().map(|w| {
        let w = w.strip_suffix(".dig").unwrap_or(w);
        w.strip_prefix("./").unwrap_or(w).to_string()
    });
    let sessions = store.list_sessions(workflow.as_deref())?;
    if sessions.is_empty() {
        match &workflow {
            Some(w) => eprintln!("no sessions of workflow '{w}'"),
            None => eprintln!("no sessions yet"),
        }
        return Ok(ExitCode::SUCCESS);
    }
    let mut table = Table::new(&[
        "SESSION",
        "PROJECT",
        "WORKFLOW",
        "SESSION TIME",
        "ATTEMPTS",
        "LAST ATTEMPT",
        "STATUS",
        "STARTED",
    ]);
    for s in sessions {
        table.push(vec![
            s.session_id.to_string(),
            s.project,
            s.workflow,
            s.session_time,
            s.attempt_count.to_string(),
            s.last_attempt_id.map(|id| id.to_string()).unwrap_or("-".into()),
            s.last_status.map(|st| st.as_str().to_string()).unwrap_or("-".into()),
            s.last_attempt_at_ms.map(time).unwrap_or("-".into()),
        ]);
    }
    emit(&table.render())?;
    Ok(ExitCode::SUCCESS)
}

pub fn attempts(args: AttemptsArgs) -> anyhow::Result<ExitCode> {
    if let Some(endpoint) = &args.state.endpoint {
        return remote::attempts(endpoint, args.session_id);
    }
    let mut store = open(&args.state)?;
    let attempts = store.list_attempts(args.session_id)?;
    if attempts.is_empty() {
        match args.session_id {
            Some(id) => eprintln!("no attempts of session {id}; `spade sessions` lists the sessions"),
            None => eprintln!("no attempts yet"),
        }
        return Ok(ExitCode::SUCCESS);
    }
    let mut table = Table::new(&[
        "ATTEMPT",
        "SESSION",
        "WORKFLOW",
        "SESSION TIME",
        "NAME",
        "STATUS",
        "TASKS",
        "SUCCESS",
        "ERROR",
        "CREATED",
        "DURATION",
    ]);
    let location = crate::state_location(&crate::project_dir(&args.state.project)?, &args.state.state);
    let mut orphans = Vec::new();
    for a in attempts {
        let mut status = a.attempt.status.as_str().to_string();
        if a.attempt.status == spade_store::AttemptStatus::Running {
            let owner = store.attempt_owner(a.attempt.attempt_id)?;
            if crate::attempts::owner_gone(&location, owner) {
                status = "running (no process)".into();
                orphans.push(a.attempt.attempt_id);
            }
        }
        table.push(vec![
            a.attempt.attempt_id.to_string(),
            a.attempt.session_id.to_string(),
            a.attempt.workflow,
            a.attempt.session_time,
            if a.attempt.name.is_empty() { "-".into() } else { a.attempt.name },
            status,
            a.tasks.total().to_string(),
            a.tasks.success.to_string(),
            a.tasks.error.to_string(),
            time(a.created_at_ms),
            duration(a.created_at_ms, a.finished_at_ms),
        ]);
    }
    emit(&table.render())?;
    for id in orphans {
        eprintln!(
            "note: attempt {id} is marked running but its process is gone (killed or crashed): \
             `spade retry {id} --resume` continues it, `spade kill {id}` closes it"
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn header(info: &AttemptInfo) {
    let name = if info.attempt.name.is_empty() { String::new() } else { format!(" ({})", info.attempt.name) };
    eprintln!(
        "attempt {}{name} of {} session {} (session id {}): {}",
        info.attempt.attempt_id,
        info.attempt.workflow,
        info.attempt.session_time,
        info.attempt.session_id,
        info.attempt.status.as_str()
    );
}

pub fn tasks(args: TasksArgs) -> anyhow::Result<ExitCode> {
    if let Some(endpoint) = &args.state.endpoint {
        return remote::tasks(endpoint, args.attempt_id);
    }
    let mut store = open(&args.state)?;
    let info = attempt_info(store.as_mut(), args.attempt_id)?;
    header(&info);
    let tasks = store.tasks(args.attempt_id)?;
    if tasks.is_empty() {
        eprintln!("no tasks recorded");
        return Ok(ExitCode::SUCCESS);
    }
    let mut table = Table::new(&[
        "TASK", "OPERATOR", "STATE", "RETRIES", "STARTED", "UPDATED", "OP-TIME", "CPU", "MEMORY", "ERROR",
    ]);
    for t in tasks {
        let usage = t.usage.as_ref();
        table.push(vec![
            t.name,
            t.request.as_ref().map(|r| format!("{}>", r.operator)).unwrap_or("-".into()),
            t.state.as_str().into(),
            t.retry_count.to_string(),
            t.started_at_ms.map(time).unwrap_or_else(|| "-".into()),
            time(t.updated_at_ms),
            usage.map(|u| seconds(u.wall)).unwrap_or_else(|| "-".into()),
            usage.map(|u| seconds(u.cpu)).unwrap_or_else(|| "-".into()),
            usage.map(|u| memory(u.peak_memory_bytes)).unwrap_or_else(|| "-".into()),
            t.error.as_deref().map(short).unwrap_or_default(),
        ]);
    }
    emit(&table.render())?;
    Ok(ExitCode::SUCCESS)
}

/// `0.042s`, `12.5s`.
fn seconds(d: std::time::Duration) -> String {
    if d.as_secs() >= 10 { format!("{:.1}s", d.as_secs_f64()) } else { format!("{:.3}s", d.as_secs_f64()) }
}

/// `812K`, `33.5M`, `1.2G`.
fn memory(bytes: u64) -> String {
    match bytes {
        0 => "-".into(),
        b if b < 1 << 20 => format!("{}K", b >> 10),
        b if b < 1 << 30 => format!("{:.1}M", b as f64 / (1u64 << 20) as f64),
        b => format!("{:.1}G", b as f64 / (1u64 << 30) as f64),
    }
}

pub fn log(args: LogArgs) -> anyhow::Result<ExitCode> {
    if let Some(endpoint) = &args.state.endpoint {
        return remote::log(endpoint, args.attempt_id, args.task_prefix.as_deref().unwrap_or(""));
    }
    let mut store = open(&args.state)?;
    let info = attempt_info(store.as_mut(), args.attempt_id)?;
    header(&info);
    let prefix = args.task_prefix.as_deref().unwrap_or("");
    let tasks: Vec<TaskRecord> =
        store.tasks(args.attempt_id)?.into_iter().filter(|t| t.name.starts_with(prefix)).collect();
    if tasks.is_empty() && !prefix.is_empty() {
        bail!("no task of attempt {} starts with '{prefix}'; `spade tasks {0}` lists them", args.attempt_id);
    }
    let lines = store.task_logs(args.attempt_id, prefix)?;
    if lines.is_empty() {
        eprintln!("no log lines (operators that only print, like echo>, log nothing)");
        return Ok(ExitCode::SUCCESS);
    }
    emit(&log_text(lines.iter().map(|l| (time(l.at_ms), l.task_name.as_str(), l.level.as_str(), l.message.as_str()))))?;
    Ok(ExitCode::SUCCESS)
}

/// Log lines as `spade log` prints them: `(time, task, level, message)`, a message's
/// further lines indented under its first.
fn log_text<'a>(lines: impl Iterator<Item = (String, &'a str, &'a str, &'a str)>) -> String {
    let mut out = String::new();
    for (at, task, level, message) in lines {
        for (i, text) in message.lines().enumerate() {
            if i == 0 {
                out += &format!("{at} {task} {level:<5} {text}\n");
            } else {
                out += &format!("    {text}\n");
            }
        }
    }
    out
}

/// The same commands against a server's REST API (`-e`): the same tables, from the API's
/// resources (times in UTC, as the API gives them).
mod remote {
    use std::process::ExitCode;

    use spade_client::Client;
    use spade_client::rest::RestSessionAttempt;

    use super::{Table, emit, short};

    fn header(a: &RestSessionAttempt) {
        let name = a.retry_attempt_name.as_deref().map(|n| format!(" ({n})")).unwrap_or_default();
        eprintln!(
            "attempt {}{name} of {} session {} (session id {}): {}",
            a.id, a.workflow.name, a.session_time, a.session_id, a.status
        );
    }

    pub fn sessions(endpoint: &str, workflow: Option<&str>) -> anyhow::Result<ExitCode> {
        let sessions = Client::new(endpoint).sessions(workflow)?;
        if sessions.is_empty() {
            eprintln!("no sessions yet");
            return Ok(ExitCode::SUCCESS);
        }
        let mut table = Table::new(&[
            "SESSION",
            "PROJECT",
            "WORKFLOW",
            "SESSION TIME",
            "ATTEMPTS",
            "LAST ATTEMPT",
            "STATUS",
            "STARTED",
        ]);
        for s in sessions {
            let last = s.last_attempt.as_ref();
            table.push(vec![
                s.id,
                s.project.name,
                s.workflow.name,
                s.session_time,
                s.attempt_count.to_string(),
                last.map(|l| l.id.clone()).unwrap_or("-".into()),
                last.and_then(|l| l.status.clone()).unwrap_or("-".into()),
                last.and_then(|l| l.created_at.clone()).unwrap_or("-".into()),
            ]);
        }
        emit(&table.render())?;
        Ok(ExitCode::SUCCESS)
    }

    pub fn attempts(endpoint: &str, session_id: Option<i64>) -> anyhow::Result<ExitCode> {
        let attempts = Client::new(endpoint).attempts(session_id)?;
        if attempts.is_empty() {
            eprintln!("no attempts yet");
            return Ok(ExitCode::SUCCESS);
        }
        let mut table = Table::new(&[
            "ATTEMPT",
            "SESSION",
            "PROJECT",
            "WORKFLOW",
            "SESSION TIME",
            "NAME",
            "STATUS",
            "TASKS",
            "SUCCESS",
            "ERROR",
            "CREATED",
            "FINISHED",
        ]);
        for a in attempts {
            let c = a.task_counts;
            table.push(vec![
                a.id,
                a.session_id,
                a.project.name,
                a.workflow.name,
                a.session_time,
                a.retry_attempt_name.unwrap_or("-".into()),
                a.status,
                (c.running + c.polling + c.success + c.error + c.canceled).to_string(),
                c.success.to_string(),
                c.error.to_string(),
                a.created_at,
                a.finished_at.unwrap_or("-".into()),
            ]);
        }
        emit(&table.render())?;
        Ok(ExitCode::SUCCESS)
    }

    pub fn tasks(endpoint: &str, attempt_id: i64) -> anyhow::Result<ExitCode> {
        let client = Client::new(endpoint);
        header(&client.attempt(&attempt_id.to_string())?);
        let mut table = Table::new(&["TASK", "STATE", "RETRIES", "STARTED", "UPDATED", "OP-TIME", "CPU", "ERROR"]);
        for t in client.tasks(attempt_id)? {
            let usage = t.usage.as_ref();
            table.push(vec![
                t.full_name,
                t.state,
                t.retry_count.to_string(),
                t.started_at.unwrap_or("-".into()),
                t.updated_at,
                usage.map(|u| format!("{:.3}s", u.call_seconds)).unwrap_or("-".into()),
                usage.map(|u| format!("{:.3}s", u.cpu_seconds)).unwrap_or("-".into()),
                t.error.message.as_deref().map(short).unwrap_or_default(),
            ]);
        }
        emit(&table.render())?;
        Ok(ExitCode::SUCCESS)
    }

    pub fn log(endpoint: &str, attempt_id: i64, prefix: &str) -> anyhow::Result<ExitCode> {
        let client = Client::new(endpoint);
        header(&client.attempt(&attempt_id.to_string())?);
        let lines = client.logs(attempt_id, prefix)?;
        if lines.is_empty() {
            eprintln!("no log lines");
            return Ok(ExitCode::SUCCESS);
        }
        emit(&super::log_text(lines.iter().map(|l| {
            (l.at.clone().unwrap_or_else(|| "-".into()), l.task_name.as_str(), l.level.as_str(), l.message.as_str())
        })))?;
        Ok(ExitCode::SUCCESS)
    }
}
