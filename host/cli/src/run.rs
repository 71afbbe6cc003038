//! `spade run`: local mode, like `digdag run`. Loads and validates the whole project, picks
//! the session, replays what already succeeded in that session (unless `--rerun`), runs
//! the rest, and exits non-zero if any task failed.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use chrono::{DateTime, Utc};
use serde_json::Value;
use spade_dig::Zone;
use std::collections::HashMap;

use spade_api::{CancelToken, Done, Limits, Object, TaskRequest};
use spade_dig::Project;
use spade_engine::{AttemptInput, EngineOptions, run_attempt};
use spade_store::{AttemptRecord, NewAttempt, SqliteStore, Store, StoreLocation};

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
    /// Params as a JSON object (values keep their JSON types); -p keys win over its keys.
    #[arg(long, value_name = "JSON")]
    pub params_json: Option<String>,
    /// Session time: yyyy-MM-dd, "yyyy-MM-dd HH:mm:ss" (in the workflow's timezone),
    /// an ISO 8601 time with offset, daily, hourly, or last (the last session run here).
    #[arg(long, default_value = "last")]
    pub session: String,
    /// When the session was due to run (ISO 8601 with offset): `sla:` deadlines count from
    /// it, as in Digdag. The scheduler passes the slot's run time (session time plus the
    /// schedule's delay); by default it is now.
    #[arg(long, value_name = "TIME")]
    pub run_time: Option<String>,
    /// Run every task again, ignoring what already succeeded in this session.
    #[arg(short = 'a', long)]
    pub rerun: bool,
    /// Name the attempt (its `retry_attempt_name`); a session keeps one attempt per name, so
    /// running a name again is refused (what `spade backfill --name` relies on).
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// Keep no state: use a scratch database that disappears with the run.
    #[arg(long)]
    pub no_save: bool,
    #[command(flatten)]
    pub place: ProjectArgs,
    #[command(flatten)]
    pub exec: ExecArgs,
}

/// Where the project and its state are.
#[derive(clap::Args, Clone)]
pub struct ProjectArgs {
    /// Project directory (default: the current directory).
    #[arg(long)]
    pub project: Option<PathBuf>,
    /// State database: a file, or a PostgreSQL URL (postgres://user@host/db) shared by
    /// several hosts [default: <project>/.spade/state.db].
    #[arg(long, value_name = "FILE|URL", env = "SPADE_STATE", hide_env_values = true)]
    pub state: Option<String>,
}

/// How tasks run.
#[derive(clap::Args, Clone)]
pub struct ExecArgs {
    /// Maximum number of tasks per attempt, generated ones included.
    #[arg(long, default_value_t = 100_000)]
    pub max_tasks: usize,
    /// Time limit of one operator call, in seconds.
    #[arg(long, default_value_t = 60)]
    pub task_timeout: u64,
    /// Memory limit of one operator call, in MiB.
    #[arg(long, default_value_t = 256)]
    pub task_memory: usize,
    /// Bytes the tasks of one attempt may add to their workspace, in MiB [default:
    /// `disk_quota_mb` of spade.yml, else 1024].
    #[arg(long, value_name = "MiB")]
    pub disk_quota: Option<u64>,
    /// Operator calls that may run at once (default: number of cores).
    #[arg(long)]
    pub max_task_threads: Option<usize>,
    /// Show task log lines at or above this level (trace, debug, info, warn, error).
    #[arg(long, default_value = "info")]
    pub task_log_level: String,
    /// Also load this operator plugin (a WASI 0.2 component built from sdk/ or
    /// sdk/templates). Repeatable. It gets no capability beyond log and output; a plugin
    /// that imports more is refused.
    #[arg(long = "plugin", value_name = "FILE.wasm")]
    pub plugins: Vec<PathBuf>,
}

/// A loaded project with its state database open.
pub struct Opened {
    pub project: Arc<Project>,
    pub root: PathBuf,
    pub name: String,
    pub location: StoreLocation,
    pub store: Box<dyn Store>,
    /// Keeps a `--no-save` scratch database alive for the run.
    _scratch: Option<tempfile::TempDir>,
}

/// Load and validate every workflow of the project and open its state. Load errors are
/// printed; `None` then means "nothing may run".
pub fn open_project(place: &ProjectArgs, no_save: bool) -> anyhow::Result<Option<Opened>> {
    let root = crate::project_dir(&place.project)?;
    let root = root.canonicalize().with_context(|| format!("project directory {}", root.display()))?;
    let project = match spade_dig::load_project(&root) {
        Ok(p) => p,
        Err(errors) => {
            eprintln!("{errors}");
            eprintln!("error: the project has errors; nothing was run");
            return Ok(None);
        }
    };
    for warning in project.warnings() {
        eprintln!("warning: {warning}");
    }
    let name = root.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or("default".into());
    // --no-save keeps state in a scratch database that disappears with the run
    // (require>'d attempts still need a shared store to find each other).
    let scratch = if no_save { Some(tempfile::tempdir()?) } else { None };
    let (location, store): (StoreLocation, Box<dyn Store>) = match &scratch {
        Some(dir) => {
            let path = dir.path().join("state.db");
            (StoreLocation::Sqlite(path.clone()), Box::new(SqliteStore::open_scratch(&path)?))
        }
        None => {
            let location = crate::state_location(&root, &place.state);
            let store = location.open().with_context(|| format!("opening the state database {location}"))?;
            (location, store)
        }
    };
    Ok(Some(Opened { project: Arc::new(project), root, name, location, store, _scratch: scratch }))
}

const LAST_SESSION_KEY: &str = "last_session_time";

/// `-p KEY=VALUE` pairs as a params object.
pub fn parse_params(pairs: &[String]) -> anyhow::Result<Object> {
    let mut params = Object::new();
    for pair in pairs {
        let (k, v) =
            pair.split_once('=').ok_or_else(|| anyhow!("-p {pair}: expected KEY=VALUE (e.g. -p target=prod)"))?;
        if k.is_empty() {
            bail!("-p {pair}: the key is empty");
        }
        spade_dig::set_dotted(&mut params, k, Value::String(v.to_string()));
    }
    Ok(params)
}

pub fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let Some(mut opened) = open_project(&args.place, args.no_save)? else {
        return Ok(ExitCode::FAILURE);
    };
    let wanted = args.workflow.strip_suffix(".dig").unwrap_or(&args.workflow);
    let wanted = wanted.strip_prefix("./").unwrap_or(wanted);
    let index = opened.project.workflows.iter().position(|w| w.name == wanted).ok_or_else(|| {
        let names: Vec<&str> = opened.project.workflows.iter().map(|w| w.name.as_str()).collect();
        anyhow!("no workflow '{wanted}' in {} (workflows: {})", opened.root.display(), names.join(", "))
    })?;
    let run_time = match &args.run_time {
        Some(text) => Some(DateTime::parse_from_rfc3339(text).map(|t| t.with_timezone(&Utc)).map_err(|_| {
            anyhow!("--run-time: '{text}' is not an ISO 8601 time with offset such as 2024-03-01T07:00:00+09:00")
        })?),
        None => None,
    };
    let workflow = &opened.project.workflows[index];
    let tz: Zone = workflow.timezone;
    let now = Utc::now();
    let session_time: DateTime<Zone> = if args.session == "last" {
        match opened.store.get_value(&opened.name, &format!("{LAST_SESSION_KEY}:{}", workflow.name))? {
            Some(saved) => DateTime::parse_from_rfc3339(&saved)
                .with_context(|| format!("saved session time '{saved}' is malformed; pass --session"))?
                .with_timezone(&tz),
            None => spade_dig::parse_session_time("daily", tz, now).map_err(|e| anyhow!("{e}"))?,
        }
    } else {
        spade_dig::parse_session_time(&args.session, tz, now).map_err(|e| anyhow!("--session: {e}"))?
    };
    let mut params = match &args.params_json {
        Some(text) => match serde_json::from_str::<Value>(text) {
            Ok(Value::Object(map)) => map,
            _ => bail!("--params-json must be a JSON object, got {text:?}"),
        },
        None => Object::new(),
    };
    spade_dig::deep_merge(&mut params, &parse_params(&args.params)?);
    schedule_params(workflow, session_time, &mut params);

    let session_str = session_time.format("%Y-%m-%dT%H:%M:%S%:z").to_string();
    let attempt = opened.store.begin_attempt(&NewAttempt {
        project: opened.name.clone(),
        workflow: workflow.name.clone(),
        session_time: session_str.clone(),
        timezone: tz.name().to_string(),
        name: args.name.clone(),
        params: params.clone(),
    })?;
    opened.store.set_value(&opened.name, &format!("{LAST_SESSION_KEY}:{}", workflow.name), &session_str)?;
    let (saved, frozen) = if args.rerun {
        Default::default()
    } else {
        (
            opened.store.saved_results(attempt.session_id, attempt.attempt_id)?,
            opened.store.unfinished_requests(attempt.session_id, attempt.attempt_id)?,
        )
    };
    // Unnamed local runs have no retry name (Digdag's `retry_attempt_name` stays undefined).
    execute(opened, index, session_time, attempt, args.name.clone(), params, saved, frozen, &args.exec, run_time)
}

/// Record the project's workflow files as a revision named by their digest (the same files
/// give the same revision), so every attempt says which definitions it ran.
fn record_revision(opened: &mut Opened) -> anyhow::Result<i64> {
    use sha2::{Digest, Sha256};
    let definitions = spade_engine::workflow_definitions(&opened.project);
    let mut hasher = Sha256::new();
    for d in &definitions {
        hasher.update(d.name.as_bytes());
        hasher.update(b"\0");
        hasher.update(serde_json::to_vec(&d.config)?);
        hasher.update(b"\0");
    }
    let name = hex::encode(&hasher.finalize()[..8]);
    Ok(opened.store.put_revision(&opened.name, &name, &definitions)?)
}

pub use spade_engine::params::schedule_params;

/// Run a begun attempt to its end and report it; the exit code says whether it succeeded.
#[allow(clippy::too_many_arguments)]
pub fn execute(
    mut opened: Opened,
    workflow_index: usize,
    session_time: DateTime<Zone>,
    attempt: AttemptRecord,
    retry_attempt_name: Option<String>,
    params: Object,
    saved: HashMap<String, Done>,
    frozen: HashMap<String, TaskRequest>,
    exec: &ExecArgs,
    run_time: Option<DateTime<Utc>>,
) -> anyhow::Result<ExitCode> {
    let attempt_id = attempt.attempt_id;
    // Everything between beginning the attempt and its first task can fail (a project
    // plugin refused, an unreadable spade.yml, a full disk): such a failure closes the
    // attempt as failed, with the reason in its log, so it is never left "running".
    let setup = (|| -> anyhow::Result<_> {
        opened.store.claim_attempt(attempt_id, std::process::id())?;
        let revision = record_revision(&mut opened)?;
        opened.store.link_revision(attempt_id, revision)?;
        let config = crate::config::ProjectConfig::load(&opened.root)?;
        let secrets = Arc::new(crate::config::local_secrets()?);
        let host = crate::host::host_with(&config, &exec.plugins)?;
        let (workspace, _) = spade_engine::workspace::prepare_excluding(&opened.root, &state_files(&opened))?;
        Ok((revision, config, secrets, host, workspace))
    })();
    let (revision, config, secrets, host, workspace) = match setup {
        Ok(ready) => ready,
        Err(e) => {
            close_unstarted(opened.store.as_mut(), &attempt, &format!("{e:#}"));
            return Err(e.context(format!("attempt {attempt_id} could not start; it is closed as failed")));
        }
    };
    let disk_quota = exec.disk_quota.or(config.disk_quota_mb).map_or(spade_engine::DEFAULT_DISK_QUOTA, |mib| mib << 20);
    let opts = EngineOptions {
        max_tasks: exec.max_tasks,
        workers: exec.max_task_threads.unwrap_or_else(|| EngineOptions::default().workers),
        limits: Limits {
            cpu_time: Duration::from_secs(exec.task_timeout),
            memory_bytes: exec.task_memory << 20,
            ..Limits::default()
        },
        secrets,
        disk_quota,
        ..EngineOptions::default()
    };
    let console = Arc::new(StdConsole::new(level_from_str(&exec.task_log_level)));
    let cancel = CancelToken::new();
    let cancel_for_watcher = cancel.clone();
    let launcher = LocalLauncher::new(
        opened.project.clone(),
        opened.name.clone(),
        opened.root.clone(),
        opened.location.clone(),
        workspace.clone(),
        host.clone(),
        console.clone(),
        opts.clone(),
        cancel.clone(),
        revision,
    );
    let project = opened.project.clone();
    let workflow = &project.workflows[workflow_index];
    let session_str = attempt.session_time.clone();
    tracing::info!(workflow = %workflow.name, session = %session_str, attempt = attempt_id, "starting");
    let input = AttemptInput {
        project_name: opened.name.clone(),
        project_id: 1,
        project_root: opened.root.clone(),
        workspace,
        workflow,
        session_time,
        attempt,
        params,
        retry_attempt_name,
        saved,
        frozen,
        cancel,
        run_time,
    };
    let watcher = KillWatcher::start(&opened.location, attempt_id, cancel_for_watcher);
    let summary = run_attempt(input, host, opened.store.as_mut(), console.clone(), Some(launcher), &opts);
    watcher.stop();
    let summary = summary?;
    console.finish();
    if summary.killed {
        eprintln!("Killed: attempt {attempt_id} (session {session_str}) was stopped by `spade kill`.");
        Ok(ExitCode::FAILURE)
    } else if summary.success {
        eprintln!(
            "Success. Attempt {attempt_id}: {} tasks, {} operator calls, {} replayed from earlier runs of session {session_str}.",
            summary.tasks, summary.invocations, summary.replayed
        );
        Ok(ExitCode::SUCCESS)
    } else {
        let names: Vec<&str> = summary.failed.iter().map(|(n, _)| n.as_str()).collect();
        eprintln!(
            "Failed: {} (attempt {attempt_id}, session {session_str}). Fix the cause and run again: tasks that \
             succeeded are skipped (--rerun runs everything), or `spade retry {attempt_id} --resume`.",
            if names.is_empty() { "the attempt".to_string() } else { names.join(", ") }
        );
        Ok(ExitCode::FAILURE)
    }
}

/// The state database's files when `--state` put them among the project's files: they stay
/// out of the workspace like `.spade/` does.
fn state_files(opened: &Opened) -> Vec<PathBuf> {
    let spade_store::StoreLocation::Sqlite(db) = &opened.location else { return Vec::new() };
    let dir = db.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(std::path::Path::new("."));
    let Some(db) = dir.canonicalize().ok().zip(db.file_name()).map(|(d, f)| d.join(f)) else {
        return Vec::new();
    };
    ["", "-wal", "-shm", "-journal"]
        .iter()
        .map(|suffix| {
            let mut name = db.clone().into_os_string();
            name.push(suffix);
            PathBuf::from(name)
        })
        .collect()
}

/// Close an attempt that failed before its first task: its log says why, its status is
/// failed. Best effort: the error that stopped it is reported either way.
fn close_unstarted(store: &mut dyn Store, attempt: &AttemptRecord, why: &str) {
    let line = spade_store::LogLine {
        attempt_id: attempt.attempt_id,
        task_name: String::new(),
        at_ms: chrono::Utc::now().timestamp_millis(),
        level: "error".into(),
        message: format!("the attempt could not start: {why}"),
    };
    let _ = store.append_logs(&[line]);
    let _ = store.finish_attempt(attempt.attempt_id, spade_store::AttemptStatus::Error);
}

/// Watches the state database for `spade kill` of the attempt (from another process) and
/// cancels it; runs beside the engine so that even a long operator call in progress is
/// interrupted.
struct KillWatcher {
    /// Dropping it wakes the watcher and ends it at once.
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl KillWatcher {
    fn start(location: &StoreLocation, attempt_id: i64, cancel: CancelToken) -> Self {
        use std::sync::mpsc::RecvTimeoutError;
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let location = location.clone();
        let thread = std::thread::spawn(move || {
            let Ok(mut store) = location.open() else { return };
            while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(Duration::from_millis(200)) {
                if store.cancel_requested(attempt_id).unwrap_or(false) {
                    cancel.cancel();
                    return;
                }
            }
        });
        KillWatcher { stop: Some(stop), thread: Some(thread) }
    }

    fn stop(mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
