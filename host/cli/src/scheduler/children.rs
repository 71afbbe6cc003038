//! The attempts the scheduler (and its API) start: each a child `spade run` in a process
//! group of its own, reaped by the scheduling loop; and the API's view of the project.

use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::{Arc, Mutex, RwLock};

use anyhow::Context;
use chrono::{DateTime, Timelike, Utc};
use spade_dig::Project;
use spade_store::StoreLocation;

use super::{ScheduleChange, change_schedule, load_state};
use crate::run::ExecArgs;
use spade_scheduler::{Skip, definition, fresh_state, session_text};

/// A started attempt: the child `spade run`.
pub(super) struct Running {
    pub(super) workflow: String,
    pub(super) session: String,
    pub(super) child: Child,
}

/// What the scheduling loop and the API share.
pub(super) struct Shared {
    pub(super) root: PathBuf,
    pub(super) location: StoreLocation,
    pub(super) project_name: String,
    pub(super) exec: ExecArgs,
    pub(super) project: RwLock<Arc<Project>>,
    pub(super) running: Mutex<Vec<Running>>,
}

impl Shared {
    pub(super) fn project(&self) -> Arc<Project> {
        self.project.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub(super) fn is_running(&self, workflow: &str) -> bool {
        self.running.lock().unwrap_or_else(|e| e.into_inner()).iter().any(|r| r.workflow == workflow)
    }

    /// Starts `spade run <workflow> --session <session>` and keeps the child for reaping.
    pub(super) fn start_child(
        &self,
        workflow: &str,
        session: &str,
        params: Option<&serde_json::Map<String, serde_json::Value>>,
    ) -> anyhow::Result<u32> {
        self.start_child_with(workflow, session, params, &[])
    }

    pub(super) fn start_child_with(
        &self,
        workflow: &str,
        session: &str,
        params: Option<&serde_json::Map<String, serde_json::Value>>,
        extra: &[&str],
    ) -> anyhow::Result<u32> {
        let exe = std::env::current_exe().context("locating the spade executable")?;
        let e = &self.exec;
        let mut cmd = Command::new(exe);
        cmd.arg("run")
            .arg(workflow)
            .arg("--session")
            .arg(session)
            .arg("--project")
            .arg(&self.root)
            // Through the environment: a PostgreSQL URL may hold a password.
            .env(
                "SPADE_STATE",
                match &self.location {
                    StoreLocation::Sqlite(path) => path.as_os_str().to_owned(),
                    StoreLocation::Postgres(url) => url.into(),
                },
            )
            .args(["--max-tasks", &e.max_tasks.to_string()])
            .args(["--task-timeout", &e.task_timeout.to_string()])
            .args(["--task-memory", &e.task_memory.to_string()])
            .args(["--task-log-level", &e.task_log_level]);
        if let Some(n) = e.max_task_threads {
            cmd.args(["--max-task-threads", &n.to_string()]);
        }
        for p in &e.plugins {
            cmd.arg("--plugin").arg(p);
        }
        if let Some(params) = params.filter(|p| !p.is_empty()) {
            cmd.arg("--params-json").arg(serde_json::Value::Object(params.clone()).to_string());
        }
        cmd.args(extra);
        // A process group of its own: stopping or restarting the scheduler (Ctrl-C, a
        // service restart) leaves running attempts to finish; `spade kill` stops one.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let child = cmd.spawn().with_context(|| format!("starting `spade run {workflow}`"))?;
        let pid = child.id();
        eprintln!("scheduler: started {workflow} session {session} (pid {pid})");
        self.running.lock().unwrap_or_else(|e| e.into_inner()).push(Running {
            workflow: workflow.to_string(),
            session: session.to_string(),
            child,
        });
        Ok(pid)
    }

    /// Reaps finished attempts; returns whether one that ended failed.
    pub(super) fn reap(&self) -> bool {
        let mut failed = false;
        self.running.lock().unwrap_or_else(|e| e.into_inner()).retain_mut(|r| match r.child.try_wait() {
            Ok(Some(status)) => {
                failed |= !status.success();
                eprintln!(
                    "scheduler: {} session {} {}",
                    r.workflow,
                    r.session,
                    if status.success() { "succeeded" } else { "failed (see `spade attempts`)" }
                );
                false
            }
            Ok(None) => true,
            Err(_) => false,
        });
        failed
    }
}

impl spade_server::Control for Shared {
    fn workflows(&self) -> Vec<spade_server::WorkflowInfo> {
        let project = self.project();
        let mut store = self.location.open().ok();
        let now = Utc::now();
        project
            .workflows
            .iter()
            .map(|wf| {
                let state = wf.schedule.as_ref().map(|schedule| {
                    match store
                        .as_mut()
                        .and_then(|s| load_state(s.as_mut(), &self.project_name, &wf.name).ok())
                        .and_then(|(st, _)| st)
                    {
                        Some(st) if st.definition == definition(schedule) => st,
                        _ => fresh_state(schedule, now),
                    }
                });
                let show = |t: Option<DateTime<Utc>>| t.map(|t| session_text(t.with_timezone(&wf.timezone)));
                spade_server::WorkflowInfo {
                    name: wf.name.clone(),
                    timezone: wf.timezone.name().to_string(),
                    schedule: wf.config.get("schedule").cloned(),
                    next_run_time: state.as_ref().and_then(|s| show(s.next_run_time)),
                    next_session_time: state.as_ref().and_then(|s| show(s.next_session_time)),
                    disabled: state.as_ref().is_some_and(|s| s.disabled),
                }
            })
            .collect()
    }

    fn start(
        &self,
        workflow: &str,
        session_time: Option<&str>,
        params: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<spade_server::Started, String> {
        let project = self.project();
        let wf = project.workflow(workflow).ok_or_else(|| {
            let names: Vec<&str> = project.workflows.iter().map(|w| w.name.as_str()).collect();
            format!("no workflow {workflow:?} in the project (workflows: {})", names.join(", "))
        })?;
        let now = Utc::now();
        let session = match session_time {
            Some(text) => {
                spade_dig::parse_session_time(text, wf.timezone, now).map_err(|e| format!("sessionTime: {e}"))?
            }
            None => now.with_nanosecond(0).unwrap_or(now).with_timezone(&wf.timezone),
        };
        let text = session_text(session);
        let pid = self.start_child(workflow, &text, Some(params)).map_err(|e| format!("{e:#}"))?;
        Ok(spade_server::Started { session_time: text, pid })
    }

    fn owner_gone(&self, owner: Option<u32>) -> bool {
        crate::attempts::owner_gone(&self.location, owner)
    }

    fn change_schedule(
        &self,
        workflow: &str,
        action: spade_server::ScheduleAction,
    ) -> Result<spade_server::WorkflowInfo, String> {
        let project = self.project();
        let change = match action {
            spade_server::ScheduleAction::Enable => ScheduleChange::Enable,
            spade_server::ScheduleAction::Disable => ScheduleChange::Disable,
            spade_server::ScheduleAction::SkipCount(n) => ScheduleChange::Skip(Skip::Count(n)),
            spade_server::ScheduleAction::SkipTo(text) => {
                let wf =
                    project.workflow(workflow).ok_or_else(|| format!("no workflow {workflow:?} in the project"))?;
                let t = spade_dig::parse_session_time(&text, wf.timezone, Utc::now())
                    .map_err(|e| format!("nextTime: {e}"))?;
                ScheduleChange::Skip(Skip::To(t.with_timezone(&Utc)))
            }
        };
        let mut store = self.location.open().map_err(|e| e.to_string())?;
        change_schedule(store.as_mut(), &self.project_name, &project, workflow, &change, false)?;
        spade_server::Control::workflows(self)
            .into_iter()
            .find(|w| w.name == workflow)
            .ok_or_else(|| format!("no workflow {workflow:?} in the project"))
    }
}

/// Serves the REST API and web UI on a thread of its own.
pub(super) fn start_api(shared: Arc<Shared>, bind: &str, port: u16) -> anyhow::Result<()> {
    let addr = format!("{bind}:{port}");
    let listener = std::net::TcpListener::bind(&addr)
        .with_context(|| format!("cannot listen on {addr} for the API (pick another --port, or --no-api)"))?;
    listener.set_nonblocking(true)?;
    let local = listener.local_addr()?;
    eprintln!("scheduler: REST API and web UI on http://{local}/");
    let config = spade_server::ApiConfig {
        stores: spade_store::StorePool::new(shared.location.clone(), 4),
        local: Some(spade_server::Local { project: shared.project_name.clone(), control: shared.clone() }),
        archive_limits: spade_archive::Limits::default(),
        executor: None,
    };
    std::thread::Builder::new().name("api".into()).spawn(move || {
        let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
            Ok(r) => r,
            Err(e) => return eprintln!("scheduler: cannot start the API: {e}"),
        };
        runtime.block_on(async move {
            match tokio::net::TcpListener::from_std(listener) {
                Ok(l) => {
                    if let Err(e) = spade_server::serve(l, config).await {
                        eprintln!("scheduler: the API stopped: {e}");
                    }
                }
                Err(e) => eprintln!("scheduler: cannot start the API: {e}"),
            }
        });
    })?;
    Ok(())
}
