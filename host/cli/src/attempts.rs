//! `spade retry` and `spade kill`: new attempts of a session, and stopping a running one.
//!
//! `retry --resume` re-runs only what did not succeed in the given attempt (succeeded
//! tasks replay their stored results, generated tasks are matched by name); `--all` runs
//! everything again. `kill` asks the process running the attempt to stop (through the
//! state database, polled by the engine); the running plugin call is interrupted at once.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use chrono::DateTime;
use spade_dig::deep_merge;
use spade_store::{AttemptStatus, NewAttempt, StoreLocation};

use crate::run::{ExecArgs, ProjectArgs, execute, open_project, parse_params, schedule_params};

#[derive(clap::Args)]
pub struct RetryArgs {
    /// The attempt to retry (see `spade attempts`).
    pub attempt_id: i64,
    /// Re-run only the tasks that did not succeed; the others replay their results.
    #[arg(long, conflicts_with = "all")]
    pub resume: bool,
    /// Re-run every task.
    #[arg(long)]
    pub all: bool,
    /// Name of the new attempt (default: a random UUID); visible as ${retry_attempt_name}.
    #[arg(long)]
    pub name: Option<String>,
    /// Override a parameter of the original attempt: -p KEY=VALUE.
    #[arg(short = 'p', long = "param", value_name = "KEY=VALUE")]
    pub params: Vec<String>,
    #[command(flatten)]
    pub place: ProjectArgs,
    #[command(flatten)]
    pub exec: ExecArgs,
}

#[derive(clap::Args)]
pub struct KillArgs {
    /// The attempt to stop (see `spade attempts`).
    pub attempt_id: i64,
    #[command(flatten)]
    pub place: ProjectArgs,
    /// Seconds to wait for the attempt to stop.
    #[arg(long, default_value_t = 30)]
    pub wait: u64,
    /// Ask a server's REST API to kill it (it stops the attempt's calls on whichever agent
    /// holds them).
    #[arg(short = 'e', long, value_name = "URL", conflicts_with_all = ["project", "state"])]
    pub endpoint: Option<String>,
}

/// Whether process `pid` is alive (Linux: it has a /proc entry).
/// Whether the process recorded as running an attempt is known to be gone. Process ids mean
/// something only on this host: with a shared store the attempt may run on another one, so
/// there it is never known, and only the attempt's own process may record its end.
pub fn owner_gone(location: &StoreLocation, owner: Option<u32>) -> bool {
    !location.is_shared() && !owner.is_some_and(process_alive)
}

/// Whether process `pid` of this host is alive: it exists and is not a zombie (a killed
/// process stays in /proc until its parent reaps it).
fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state letter follows the parenthesised command name.
        Ok(stat) => !matches!(stat.rsplit_once(") ").and_then(|(_, rest)| rest.chars().next()), Some('Z' | 'X')),
        Err(_) => false,
    }
}

pub fn retry(args: RetryArgs) -> anyhow::Result<ExitCode> {
    if !args.resume && !args.all {
        bail!("choose what to re-run: --resume (only what did not succeed) or --all");
    }
    let Some(mut opened) = open_project(&args.place, false)? else {
        return Ok(ExitCode::FAILURE);
    };
    let old = opened.store.attempt_info(args.attempt_id)?;
    if old.attempt.status == AttemptStatus::Running
        && !owner_gone(&opened.location, opened.store.attempt_owner(args.attempt_id)?)
    {
        bail!("attempt {} is still running; wait for it or stop it with `spade kill {0}`", args.attempt_id);
    }
    if old.attempt.status == AttemptStatus::Running {
        // Its process is gone (killed or crashed): close it, so that only the new attempt
        // of the session is running.
        opened.store.finish_attempt(args.attempt_id, AttemptStatus::Killed)?;
        eprintln!("Attempt {} had no live process; marked killed.", args.attempt_id);
    }
    let index = opened.project.workflows.iter().position(|w| w.name == old.attempt.workflow).ok_or_else(|| {
        anyhow!("workflow '{}' of attempt {} is no longer in the project", old.attempt.workflow, args.attempt_id)
    })?;
    let workflow = &opened.project.workflows[index];
    let session_time = DateTime::parse_from_rfc3339(&old.attempt.session_time)
        .with_context(|| format!("attempt {} has a malformed session time", args.attempt_id))?
        .with_timezone(&workflow.timezone);
    let mut params = old.params.clone();
    deep_merge(&mut params, &parse_params(&args.params)?);
    schedule_params(workflow, session_time, &mut params);
    let name = args.name.clone().unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let attempt = opened.store.begin_attempt(&NewAttempt {
        project: opened.name.clone(),
        workflow: workflow.name.clone(),
        session_time: old.attempt.session_time.clone(),
        timezone: workflow.timezone.name().to_string(),
        name: Some(name.clone()),
        params: params.clone(),
    })?;
    let (saved, frozen) = if args.resume {
        (
            opened.store.attempt_results(args.attempt_id)?,
            opened.store.unfinished_requests(attempt.session_id, attempt.attempt_id)?,
        )
    } else {
        Default::default()
    };
    eprintln!(
        "Retrying attempt {} of {} (session {}) as attempt {} '{name}' ({}).",
        args.attempt_id,
        workflow.name,
        old.attempt.session_time,
        attempt.attempt_id,
        if args.resume { "resume" } else { "all tasks" }
    );
    execute(opened, index, session_time, attempt, Some(name), params, saved, frozen, &args.exec, None)
}

pub fn kill(args: KillArgs) -> anyhow::Result<ExitCode> {
    if let Some(endpoint) = &args.endpoint {
        spade_client::Client::new(endpoint).kill(args.attempt_id)?;
        eprintln!("Kill requested for attempt {}.", args.attempt_id);
        return Ok(ExitCode::SUCCESS);
    }
    let root = crate::project_dir(&args.place.project)?;
    let location = crate::state_location(&root, &args.place.state);
    if let StoreLocation::Sqlite(path) = &location
        && !path.exists()
    {
        bail!("no state database at {} (run a workflow first, or pass --project/--state)", path.display());
    }
    let mut store = location.open()?;
    let attempt = store.attempt(args.attempt_id)?;
    if attempt.status != AttemptStatus::Running {
        bail!("attempt {} already finished ({}); nothing to kill", args.attempt_id, attempt.status.as_str());
    }
    store.request_cancel(args.attempt_id)?;
    let owner = store.attempt_owner(args.attempt_id)?;
    if owner_gone(&location, owner) {
        // Nobody runs it any more (the process was killed or crashed): record the end.
        store.finish_attempt(args.attempt_id, spade_store::AttemptStatus::Killed)?;
        eprintln!("Attempt {} had no live process; marked killed.", args.attempt_id);
        return Ok(ExitCode::SUCCESS);
    }
    eprintln!("Kill requested for attempt {}; waiting for it to stop...", args.attempt_id);
    let deadline = Instant::now() + Duration::from_secs(args.wait);
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        let now = store.attempt(args.attempt_id)?;
        if now.status != AttemptStatus::Running {
            eprintln!("Attempt {} stopped ({}).", args.attempt_id, now.status.as_str());
            return Ok(ExitCode::SUCCESS);
        }
    }
    eprintln!("Attempt {} has not stopped yet; it will stop at its next step.", args.attempt_id);
    Ok(ExitCode::FAILURE)
}
