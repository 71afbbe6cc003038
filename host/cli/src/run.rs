//! `spade run`: local mode, like `digdag run`. Loads and validates the whole project, picks
//! the session, replays what already succeeded in that session (unless `--rerun`), runs
//! the rest, and exits non-zero if any task failed.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use serde_json::Value;
use spade_api::{CancelToken, Limits, Object};
use spade_engine::{AttemptInput, EngineOptions, run_attempt};
use spade_store::{NewAttempt, SqliteStore, Store};

use crate::launcher::LocalLauncher;

use crate::console::{StdConsole, level_from_str};

#[derive(clap::Args)]
pub struct RunArgs {
    /// The workflow to run: its file (`etl.dig`) or name (`etl`).
    pub workflow: String,
    /// Set a parameter: -p KEY=VALUE (a dotted key like db.name=x builds a nested object).
    /// Values are strings; `_export` in the workflow wins over them, as in Digdag.
    #[arg(short = 'p', long = "param", value_name = "KEY=VALUE")]
    pub params: Vec<String>,
    /// Session time: yyyy-MM-dd, "yyyy-MM-dd HH:mm:ss" (in the workflow's timezone),
    /// an ISO 8601 time with offset, daily, hourly, or last (the last session run here).
    #[arg(long, default_value = "last")]
    pub session: String,
    /// Run every task again, ignoring what already succeeded in this session.
    #[arg(short = 'a', long)]
    pub rerun: bool,
    /// Project directory (default: the current directory).
    #[arg(long)]
    pub project: Option<PathBuf>,
    /// State database (default: <project>/.spade/state.db).
    #[arg(long, value_name = "FILE")]
    pub state: Option<PathBuf>,
    /// Keep no state: run in memory and save nothing.
    #[arg(long)]
    pub no_save: bool,
    /// Maximum number of tasks per attempt, generated ones included.
    #[arg(long, default_value_t = 100_000)]
    pub max_tasks: usize,
    /// Time limit of one operator call, in seconds.
    #[arg(long, default_value_t = 60)]
    pub task_timeout: u64,
    /// Memory limit of one operator call, in MiB.
    #[arg(long, default_value_t = 256)]
    pub task_memory: usize,
    /// Operator calls that may run at once (default: number of cores).
    #[arg(long)]
    pub max_task_threads: Option<usize>,
    /// Show task log lines at or above this level (trace, debug, info, warn, error).
    #[arg(long, default_value = "info")]
    pub task_log_level: String,
}

const LAST_SESSION_KEY: &str = "last_session_time";

/// `-p KEY=VALUE` pairs as a params object.
pub fn parse_params(pairs: &[String]) -> anyhow::Result<Object> {
    let mut params = Object::new();
    for pair in pairs {
        let (k, v) = pair
            .split_once('=')
            .ok_or_else(|| anyhow!("-p {pair}: expected KEY=VALUE (e.g. -p target=prod)"))?;
        if k.is_empty() {
            bail!("-p {pair}: the key is empty");
        }
        spade_dig::set_dotted(&mut params, k, Value::String(v.to_string()));
    }
    Ok(params)
}

pub fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let project_root = crate::project_dir(&args.project)?;
    let project_root = project_root
        .canonicalize()
        .with_context(|| format!("project directory {}", project_root.display()))?;
    let project = match spade_dig::load_project(&project_root) {
        Ok(p) => p,
        Err(errors) => {
            eprintln!("{errors}");
            eprintln!("error: the project has errors; nothing was run");
            return Ok(ExitCode::FAILURE);
        }
    };
    for warning in project.warnings() {
        eprintln!("warning: {warning}");
    }
    let project = Arc::new(project);
    let wanted = args.workflow.strip_suffix(".dig").unwrap_or(&args.workflow);
    let wanted = wanted.strip_prefix("./").unwrap_or(wanted);
    let workflow = project.workflows.iter().find(|w| w.name == wanted).ok_or_else(|| {
        let names: Vec<&str> = project.workflows.iter().map(|w| w.name.as_str()).collect();
        anyhow!("no workflow '{wanted}' in {} (workflows: {})", project_root.display(), names.join(", "))
    })?;
    let tz: Tz = workflow.timezone;
    let project_name = project_root.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or("default".into());

    // --no-save keeps state in a temporary database that disappears with the run
    // (require>'d attempts still need a shared store to find each other).
    let temp_state = if args.no_save { Some(tempfile::tempdir()?) } else { None };
    let store_path = match (&temp_state, &args.state) {
        (Some(dir), _) => dir.path().join("state.db"),
        (None, Some(path)) => path.clone(),
        (None, None) => project_root.join(".spade/state.db"),
    };
    let mut store = if args.no_save { SqliteStore::open_scratch(&store_path)? } else { SqliteStore::open(&store_path)? };

    let now = Utc::now();
    let session_time: DateTime<Tz> = if args.session == "last" {
        match store.get_value(&format!("{LAST_SESSION_KEY}:{}", workflow.name))? {
            Some(saved) => DateTime::parse_from_rfc3339(&saved)
                .with_context(|| format!("saved session time '{saved}' is malformed; pass --session"))?
                .with_timezone(&tz),
            None => spade_dig::parse_session_time("daily", tz, now).map_err(|e| anyhow!("{e}"))?,
        }
    } else {
        spade_dig::parse_session_time(&args.session, tz, now).map_err(|e| anyhow!("--session: {e}"))?
    };

    let mut params = parse_params(&args.params)?;
    if let Some(schedule) = &workflow.schedule {
        // Like Digdag's AttemptBuilder: schedule slots around the session, as attempt params.
        if let Some(last) = schedule.last_session_time(session_time) {
            spade_engine::params::time_vars("last_session", &last, &mut params);
        }
        if let Some(next) = schedule.next_session_time(session_time) {
            spade_engine::params::time_vars("next_session", &next, &mut params);
        }
    }

    let session_str = session_time.format("%Y-%m-%dT%H:%M:%S%:z").to_string();
    let attempt = store.begin_attempt(&NewAttempt {
        project: project_name.clone(),
        workflow: workflow.name.clone(),
        session_time: session_str.clone(),
        timezone: tz.name().to_string(),
        name: None,
        params: params.clone(),
    })?;
    store.set_value(&format!("{LAST_SESSION_KEY}:{}", workflow.name), &session_str)?;
    let (saved, frozen) = if args.rerun {
        Default::default()
    } else {
        (
            store.saved_results(attempt.session_id, attempt.attempt_id)?,
            store.unfinished_requests(attempt.session_id, attempt.attempt_id)?,
        )
    };

    let opts = EngineOptions {
        max_tasks: args.max_tasks,
        workers: args.max_task_threads.unwrap_or_else(|| EngineOptions::default().workers),
        limits: Limits {
            cpu_time: Duration::from_secs(args.task_timeout),
            memory_bytes: args.task_memory << 20,
            ..Limits::default()
        },
        ..EngineOptions::default()
    };
    let host = crate::host::bundled_host()?;
    let console = Arc::new(StdConsole::new(level_from_str(&args.task_log_level)));
    let cancel = CancelToken::new();
    let launcher = LocalLauncher::new(
        project.clone(),
        project_name.clone(),
        project_root.clone(),
        store_path.clone(),
        host.clone(),
        console.clone(),
        opts.clone(),
        cancel.clone(),
    );
    tracing::info!(workflow = %workflow.name, session = %session_str, attempt = attempt.attempt_id, "starting");
    let input = AttemptInput {
        project_name,
        project_id: 1,
        project_root: project_root.clone(),
        workflow,
        session_time,
        attempt,
        params,
        retry_attempt_name: None,
        saved,
        frozen,
        cancel,
    };
    let summary = run_attempt(input, host, &mut store, console.clone(), Some(launcher), &opts)?;
    console.finish();
    if summary.success {
        eprintln!(
            "Success. {} tasks, {} operator calls, {} replayed from earlier runs of session {session_str}.",
            summary.tasks, summary.invocations, summary.replayed
        );
        Ok(ExitCode::SUCCESS)
    } else {
        let names: Vec<&str> = summary.failed.iter().map(|(n, _)| n.as_str()).collect();
        eprintln!(
            "Failed: {} (session {session_str}). Fix the cause and run again: tasks that succeeded are skipped; --rerun runs everything.",
            if names.is_empty() { "the attempt".to_string() } else { names.join(", ") }
        );
        Ok(ExitCode::FAILURE)
    }
}
