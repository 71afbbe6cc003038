//! `spade scheduler`, `schedules`, `backfill`, `enable`, `disable` and `reschedule`:
//! local-mode scheduling, like `digdag scheduler` and its schedule commands.
//!
//! Every workflow with a `schedule:` gets a session per slot. The scheduler keeps, per
//! workflow, the next slot and when it runs in the state database, so a restart catches up
//! the sessions missed while it was down (bounded by `skip_delayed_by`, as in Digdag), and
//! a slot is never started twice. Each session runs as a child `spade run --session <slot>`
//! process: an attempt that crashes takes nothing else down, and `spade kill`, logs and
//! `spade retry` work on it as on any other. Following Digdag's ScheduleExecutor, a slot
//! whose session already exists is skipped, `skip_on_overtime` skips a slot while an attempt
//! of the workflow is still running, and a changed `schedule:` starts over from the first
//! slot after now. Workflow files are re-read when they change.
//!
//! Like `digdag scheduler`, it also serves the REST API and web UI (spade-server) on
//! 127.0.0.1:65432; attempts started from there run the same way. Attempts outlive the
//! scheduler: stopping it does not stop them.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use anyhow::Context;
use chrono::{DateTime, Utc};
use spade_dig::Zone;
use spade_dig::{Project, Schedule};
use spade_store::Store;

use crate::run::{ExecArgs, ProjectArgs};

mod children;

use children::{Shared, start_api};
use spade_scheduler::state_key;
pub use spade_scheduler::{
    Decision, Skip, SlotState, backfill_slots, definition, fresh_state, plan, session_text, skip_slots,
};

#[derive(clap::Args)]
pub struct SchedulerArgs {
    /// Start what is due now (catching up missed slots), wait for those attempts, and exit:
    /// for running from cron or a systemd timer instead of as a daemon.
    #[arg(long)]
    pub once: bool,
    /// Attempts running at once; further due sessions wait their turn.
    #[arg(long, default_value_t = 4)]
    pub max_attempts: usize,
    /// Address of the REST API and web UI (not with --once).
    #[arg(long, default_value = "127.0.0.1")]
    pub bind: String,
    /// Port of the REST API and web UI (0: any free port; the address is printed).
    #[arg(long, default_value_t = 65432)]
    pub port: u16,
    /// Serve no REST API and web UI.
    #[arg(long)]
    pub no_api: bool,
    #[command(flatten)]
    pub place: ProjectArgs,
    #[command(flatten)]
    pub exec: ExecArgs,
}

#[derive(clap::Args)]
pub struct BackfillArgs {
    /// The scheduled workflow (file or name).
    pub workflow: String,
    /// The first session time to run (yyyy-MM-dd, "yyyy-MM-dd HH:mm:ss" in the workflow's
    /// zone, or ISO 8601): every slot from there to the schedule's next one is run.
    #[arg(long)]
    pub from: String,
    /// Run at most this many slots.
    #[arg(long)]
    pub count: Option<usize>,
    /// The attempts' name: a slot whose session already has an attempt of this name is
    /// skipped, so running the same backfill again only adds what is missing.
    #[arg(long)]
    pub name: String,
    /// Only list the session times that would run.
    #[arg(short = 'd', long)]
    pub dry_run: bool,
    /// Attempts running at once.
    #[arg(long, default_value_t = 4)]
    pub max_attempts: usize,
    #[command(flatten)]
    pub place: ProjectArgs,
    #[command(flatten)]
    pub exec: ExecArgs,
}

#[derive(clap::Args)]
pub struct ToggleArgs {
    /// The scheduled workflow (file or name).
    pub workflow: String,
    #[command(flatten)]
    pub place: ProjectArgs,
}

#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("how").required(true).args(["skip", "skip_to"])))]
pub struct RescheduleArgs {
    /// The scheduled workflow (file or name).
    pub workflow: String,
    /// Skip this many slots.
    #[arg(short = 's', long)]
    pub skip: Option<usize>,
    /// Skip to the first slot at or after this time (yyyy-MM-dd, "yyyy-MM-dd HH:mm:ss" in
    /// the workflow's zone, or ISO 8601).
    #[arg(short = 't', long)]
    pub skip_to: Option<String>,
    /// Only show where the schedule would move.
    #[arg(short = 'd', long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub place: ProjectArgs,
}

#[derive(clap::Args)]
pub struct SchedulesArgs {
    #[command(flatten)]
    pub place: ProjectArgs,
}

/// Applies `change` to the stored state of `workflow` (or its fresh state), retrying when
/// another process changed it meanwhile; returns the new state.
fn update_state(
    store: &mut dyn Store,
    project: &str,
    workflow: &str,
    schedule: &Schedule,
    change: impl Fn(&mut SlotState),
) -> anyhow::Result<SlotState> {
    for _ in 0..100 {
        let (loaded, stored) = load_state(store, project, workflow)?;
        let mut state = match loaded {
            Some(s) if s.definition == definition(schedule) => s,
            Some(s) => SlotState { disabled: s.disabled, ..fresh_state(schedule, Utc::now()) },
            None => fresh_state(schedule, Utc::now()),
        };
        change(&mut state);
        if save_state(store, project, workflow, stored.as_deref(), &state)? {
            return Ok(state);
        }
    }
    anyhow::bail!("the schedule state of {workflow} keeps changing under us; try again")
}

/// The workflow's state and its stored text (what [`save_state`] must find to replace it).
fn load_state(
    store: &mut dyn Store,
    project: &str,
    workflow: &str,
) -> anyhow::Result<(Option<SlotState>, Option<String>)> {
    let text = store.get_value(project, &state_key(workflow))?;
    Ok((text.as_deref().and_then(|t| serde_json::from_str(t).ok()), text))
}

/// Replaces the stored state `old` with `state`; false when another scheduler sharing the
/// store (another host) changed it first, which then owns the slots it decided.
fn save_state(
    store: &mut dyn Store,
    project: &str,
    workflow: &str,
    old: Option<&str>,
    state: &SlotState,
) -> anyhow::Result<bool> {
    Ok(store.swap_value(project, &state_key(workflow), old, &serde_json::to_string(state)?)?)
}

/// The project's `.dig` files with their modification times: reloading happens when it changes.
fn fingerprint(root: &Path) -> Vec<(PathBuf, Option<SystemTime>, u64)> {
    let mut out: Vec<_> = std::fs::read_dir(root)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".dig"))
        .map(|e| {
            let meta = e.metadata().ok();
            (e.path(), meta.as_ref().and_then(|m| m.modified().ok()), meta.map_or(0, |m| m.len()))
        })
        .collect();
    out.sort();
    out
}

struct Scheduler {
    shared: Arc<Shared>,
    max_attempts: usize,
    fingerprint: Vec<(PathBuf, Option<SystemTime>, u64)>,
    queue: VecDeque<(String, DateTime<Zone>)>,
}

impl Scheduler {
    fn reload_if_changed(&mut self) {
        let now = fingerprint(&self.shared.root);
        if now == self.fingerprint {
            return;
        }
        self.fingerprint = now;
        match spade_dig::load_project(&self.shared.root) {
            Ok(p) => {
                eprintln!("scheduler: workflow files changed; reloaded {} workflows", p.workflows.len());
                *self.shared.project.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(p);
            }
            Err(errors) => {
                eprintln!("{errors}\nscheduler: the changed workflow files have errors; keeping the previous ones")
            }
        }
    }

    /// Decides the due slots of every scheduled workflow and queues the starts.
    fn tick(&mut self, store: &mut dyn Store, now: DateTime<Utc>) -> anyhow::Result<()> {
        let project = self.shared.project();
        for wf in &project.workflows {
            let Some(schedule) = &wf.schedule else { continue };
            let (loaded, stored) = load_state(store, &self.shared.project_name, &wf.name)?;
            if loaded.as_ref().is_some_and(|s| s.disabled) {
                continue;
            }
            let mut state = match loaded {
                Some(s) if s.definition != definition(schedule) => {
                    let s = fresh_state(schedule, now);
                    eprintln!(
                        "scheduler: the schedule of {} changed; it next runs at {}",
                        wf.name,
                        s.next_run_time.map_or("never (past its end)".to_string(), |t| t.to_string())
                    );
                    s
                }
                Some(s) => s,
                None => {
                    let s = fresh_state(schedule, now);
                    if !save_state(store, &self.shared.project_name, &wf.name, stored.as_deref(), &s)? {
                        continue;
                    }
                    if let Some(t) = s.next_run_time {
                        eprintln!(
                            "scheduler: {} first runs at {t} (session {})",
                            wf.name,
                            s.next_session_time.unwrap_or(t)
                        );
                    }
                    continue;
                }
            };
            let busy = self.shared.is_running(&wf.name)
                || self.queue.iter().any(|(w, _)| *w == wf.name)
                || (schedule.skip_on_overtime && self.running_elsewhere(store, &wf.name)?);
            let before = state.clone();
            let decisions = plan(schedule, &mut state, now, busy, 1000);
            if state != before && !save_state(store, &self.shared.project_name, &wf.name, stored.as_deref(), &state)? {
                // Another scheduler on the same store got there first: its slots.
                continue;
            }
            for decision in decisions {
                match decision {
                    Decision::Start(session) => {
                        let text = session_text(session);
                        if !store.session_attempts(&self.shared.project_name, &wf.name, &text)?.is_empty() {
                            eprintln!("scheduler: skipped {} session {text}: the session already exists", wf.name);
                        } else {
                            self.queue.push_back((wf.name.clone(), session));
                        }
                    }
                    Decision::Skip(session, why) => {
                        eprintln!("scheduler: skipped {} session {}: {why}", wf.name, session_text(session));
                    }
                }
            }
        }
        Ok(())
    }

    /// Reaps finished attempts and starts queued ones up to the limit. Returns whether an
    /// attempt that ended failed.
    fn pump(&mut self) -> anyhow::Result<bool> {
        let failed = self.shared.reap();
        while self.running_count() < self.max_attempts.max(1) {
            let Some((workflow, session)) = self.queue.pop_front() else { break };
            // Digdag counts `sla:` deadlines of a scheduled session from its slot's run time.
            let schedule =
                self.shared.project().workflows.iter().find(|w| w.name == workflow).and_then(|w| w.schedule.clone());
            let run_time =
                schedule.map(|s| session_text(s.run_time_of(session))).unwrap_or_else(|| session_text(session));
            self.shared.start_child_with(&workflow, &session_text(session), None, &["--run-time", &run_time])?;
        }
        Ok(failed)
    }

    /// Whether an attempt of `workflow` this scheduler did not start is still running: one
    /// started by hand, by a scheduler before a restart, or (shared store) on another host.
    /// On a local store an attempt whose process is gone does not count.
    fn running_elsewhere(&self, store: &mut dyn Store, workflow: &str) -> anyhow::Result<bool> {
        Ok(store
            .running_attempts(&self.shared.project_name, workflow)?
            .iter()
            .any(|(_, pid)| !crate::attempts::owner_gone(&self.shared.location, *pid)))
    }

    fn running_count(&self) -> usize {
        self.shared.running.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

pub fn scheduler(args: SchedulerArgs) -> anyhow::Result<ExitCode> {
    let Some(opened) = crate::run::open_project(&args.place, false)? else {
        return Ok(ExitCode::FAILURE);
    };
    let mut store = opened.store;
    let project = opened.project.clone();
    let scheduled: Vec<&str> =
        project.workflows.iter().filter(|w| w.schedule.is_some()).map(|w| w.name.as_str()).collect();
    if scheduled.is_empty() && args.once {
        eprintln!("scheduler: no workflow of {} has a schedule", opened.root.display());
        return Ok(ExitCode::SUCCESS);
    }
    eprintln!(
        "scheduler: {} scheduled workflow(s) in {}{}",
        scheduled.len(),
        opened.root.display(),
        if scheduled.is_empty() { String::new() } else { format!(": {}", scheduled.join(", ")) }
    );
    let shared = Arc::new(Shared {
        root: opened.root.clone(),
        location: opened.location,
        project_name: opened.name,
        exec: args.exec,
        project: RwLock::new(project),
        running: Mutex::new(Vec::new()),
    });
    if !args.once && !args.no_api {
        start_api(shared.clone(), &args.bind, args.port)?;
    }
    let mut s = Scheduler {
        fingerprint: fingerprint(&opened.root),
        shared,
        max_attempts: args.max_attempts,
        queue: VecDeque::new(),
    };
    if args.once {
        // Only what is due now: slots that come due while these run wait for the next pass.
        s.tick(store.as_mut(), Utc::now())?;
        let mut failed = false;
        loop {
            failed |= s.pump()?;
            if s.queue.is_empty() && s.running_count() == 0 {
                return Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    loop {
        s.reload_if_changed();
        // A daemon outlives a database hiccup (a restarted PostgreSQL, a busy SQLite file):
        // say so, reconnect, and decide the same slots again on the next pass.
        if let Err(e) = s.tick(store.as_mut(), Utc::now()) {
            eprintln!("scheduler: {e:#}; retrying in 5 s");
            std::thread::sleep(Duration::from_secs(5));
            match s.shared.location.open() {
                Ok(fresh) => store = fresh,
                Err(e) => eprintln!("scheduler: cannot reopen the state database: {e}"),
            }
            continue;
        }
        if let Err(e) = s.pump() {
            eprintln!("scheduler: {e:#}");
        }
        // Slots are whole seconds; a short sleep keeps starting, reaping and reloading prompt.
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// `spade backfill`: run the past slots of a schedule (like `digdag backfill`).
pub fn backfill(args: BackfillArgs) -> anyhow::Result<ExitCode> {
    let Some(mut opened) = crate::run::open_project(&args.place, false)? else {
        return Ok(ExitCode::FAILURE);
    };
    let wanted = args.workflow.strip_suffix(".dig").unwrap_or(&args.workflow).to_string();
    let project = opened.project.clone();
    let wf =
        project.workflow(&wanted).with_context(|| format!("no workflow '{wanted}' in {}", opened.root.display()))?;
    let Some(schedule) = &wf.schedule else {
        anyhow::bail!(
            "workflow {wanted} has no schedule; run single sessions with `spade run {wanted} --session TIME`"
        );
    };
    let now = Utc::now();
    let from =
        spade_dig::parse_session_time(&args.from, wf.timezone, now).map_err(|e| anyhow::anyhow!("--from: {e}"))?;
    // Up to the slot the scheduler runs next (or now, when it has not run yet).
    let until = match load_state(opened.store.as_mut(), &opened.name, &wf.name)?.0 {
        Some(s) if s.definition == definition(schedule) => s.next_session_time.unwrap_or(now),
        _ => now,
    };
    let slots = backfill_slots(schedule, from, until, args.count);
    let mut todo = Vec::new();
    for slot in slots {
        let text = session_text(slot);
        let named = opened.store.session_attempts(&opened.name, &wf.name, &text)?.iter().any(|a| a.name == args.name);
        if named {
            eprintln!("backfill: {text} already has an attempt named {:?}; skipped", args.name);
        } else {
            todo.push(text);
        }
    }
    if args.dry_run || todo.is_empty() {
        for t in &todo {
            println!("{t}");
        }
        eprintln!(
            "backfill: {} session(s) {}",
            todo.len(),
            if args.dry_run { "would run (dry run)" } else { "to run" }
        );
        return Ok(ExitCode::SUCCESS);
    }
    let shared = Shared {
        root: opened.root.clone(),
        location: opened.location,
        project_name: opened.name,
        exec: args.exec,
        project: RwLock::new(project.clone()),
        running: Mutex::new(Vec::new()),
    };
    let mut queue: VecDeque<String> = todo.into();
    let mut failed = false;
    while !queue.is_empty() || !shared.running.lock().unwrap_or_else(|e| e.into_inner()).is_empty() {
        failed |= shared.reap();
        while shared.running.lock().unwrap_or_else(|e| e.into_inner()).len() < args.max_attempts.max(1) {
            let Some(session) = queue.pop_front() else { break };
            shared.start_child_with(&wf.name, &session, None, &["--name", &args.name, "--rerun"])?;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

/// A change to a schedule, from the command line or the API.
#[derive(Clone, Debug, PartialEq)]
pub enum ScheduleChange {
    Enable,
    Disable,
    Skip(Skip),
}

/// Applies `change` to the schedule of `workflow`; the message says what was wrong.
fn change_schedule(
    store: &mut dyn Store,
    project_name: &str,
    project: &Project,
    workflow: &str,
    change: &ScheduleChange,
    dry_run: bool,
) -> Result<SlotState, String> {
    let wf = project.workflow(workflow).ok_or_else(|| format!("no workflow {workflow:?} in the project"))?;
    let schedule = wf.schedule.as_ref().ok_or_else(|| format!("workflow {workflow} has no schedule"))?;
    let apply = |s: &mut SlotState| match change {
        ScheduleChange::Enable => s.disabled = false,
        ScheduleChange::Disable => s.disabled = true,
        ScheduleChange::Skip(skip) => skip_slots(schedule, s, *skip),
    };
    if dry_run {
        let mut state = match load_state(store, project_name, &wf.name).map_err(|e| format!("{e:#}"))?.0 {
            Some(s) if s.definition == definition(schedule) => s,
            _ => fresh_state(schedule, Utc::now()),
        };
        apply(&mut state);
        return Ok(state);
    }
    update_state(store, project_name, &wf.name, schedule, apply).map_err(|e| format!("{e:#}"))
}

/// `spade enable` / `spade disable`.
pub fn toggle(args: ToggleArgs, enable: bool) -> anyhow::Result<ExitCode> {
    let Some(mut opened) = crate::run::open_project(&args.place, false)? else {
        return Ok(ExitCode::FAILURE);
    };
    let name = args.workflow.strip_suffix(".dig").unwrap_or(&args.workflow);
    let change = if enable { ScheduleChange::Enable } else { ScheduleChange::Disable };
    let state = change_schedule(opened.store.as_mut(), &opened.name, &opened.project, name, &change, false)
        .map_err(anyhow::Error::msg)?;
    match (enable, state.next_run_time) {
        (true, Some(t)) => eprintln!(
            "enabled {name}; its next slot runs at {t} (slots missed while disabled are caught up, up to skip_delayed_by)"
        ),
        (true, None) => eprintln!("enabled {name}; it has no slot left (past its end)"),
        (false, _) => eprintln!("disabled {name}: the scheduler starts none of its slots until `spade enable {name}`"),
    }
    Ok(ExitCode::SUCCESS)
}

/// `spade reschedule`.
pub fn reschedule(args: RescheduleArgs) -> anyhow::Result<ExitCode> {
    let Some(mut opened) = crate::run::open_project(&args.place, false)? else {
        return Ok(ExitCode::FAILURE);
    };
    let name = args.workflow.strip_suffix(".dig").unwrap_or(&args.workflow).to_string();
    let skip = match (&args.skip, &args.skip_to) {
        (Some(n), _) => Skip::Count(*n),
        (None, Some(text)) => {
            let wf = opened.project.workflow(&name).with_context(|| format!("no workflow '{name}'"))?;
            let t = spade_dig::parse_session_time(text, wf.timezone, Utc::now())
                .map_err(|e| anyhow::anyhow!("--skip-to: {e}"))?;
            Skip::To(t.with_timezone(&Utc))
        }
        (None, None) => unreachable!("clap requires one"),
    };
    let project = opened.project.clone();
    let state = change_schedule(
        opened.store.as_mut(),
        &opened.name,
        &project,
        &name,
        &ScheduleChange::Skip(skip),
        args.dry_run,
    )
    .map_err(anyhow::Error::msg)?;
    let tz = project.workflow(&name).map(|w| w.timezone).unwrap_or(Zone::UTC);
    let show =
        |t: Option<DateTime<Utc>>| t.map_or("none (past its end)".to_string(), |t| session_text(t.with_timezone(&tz)));
    println!(
        "next session {} runs at {}{}",
        show(state.next_session_time),
        show(state.next_run_time),
        if args.dry_run { " (dry run)" } else { "" }
    );
    Ok(ExitCode::SUCCESS)
}

/// `spade schedules`: every scheduled workflow with its next run.
pub fn schedules(args: SchedulesArgs) -> anyhow::Result<ExitCode> {
    let Some(mut opened) = crate::run::open_project(&args.place, false)? else {
        return Ok(ExitCode::FAILURE);
    };
    let now = Utc::now();
    let mut rows: BTreeMap<String, (String, String, String, String)> = BTreeMap::new();
    for wf in &opened.project.workflows {
        let Some(schedule) = &wf.schedule else { continue };
        let state = match load_state(opened.store.as_mut(), &opened.name, &wf.name)?.0 {
            Some(s) if s.definition == definition(schedule) => s,
            _ => fresh_state(schedule, now),
        };
        let show = |t: Option<DateTime<Utc>>| {
            t.map(|t| session_text(t.with_timezone(&schedule.timezone))).unwrap_or_else(|| "-".into())
        };
        let spec = wf.config.get("schedule").map(|v| v.to_string()).unwrap_or_default();
        let run = if state.disabled { "disabled".to_string() } else { show(state.next_run_time) };
        rows.insert(wf.name.clone(), (spec, run, show(state.next_session_time), show(state.last_session_time)));
    }
    if rows.is_empty() {
        println!("no workflow of {} has a schedule", opened.root.display());
        return Ok(ExitCode::SUCCESS);
    }
    println!("{:<20} {:<27} {:<27} {:<27} SCHEDULE", "WORKFLOW", "NEXT RUN", "NEXT SESSION", "LAST SESSION");
    for (name, (spec, run, session, last)) in rows {
        println!("{name:<20} {run:<27} {session:<27} {last:<27} {spec}");
    }
    Ok(ExitCode::SUCCESS)
}
