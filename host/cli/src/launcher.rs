//! Local-mode attempts started by `require>`: find the session's attempt or start a new
//! one (on its own thread, with its own store connection), and report its state; and the
//! project's parameter server (`param_get>`/`param_set>`) on the state store.
//!
//! Digdag semantics: the required workflow runs as a separate attempt in its own time
//! zone; a session that already succeeded is not run again unless `rerun_on: all`; one
//! that failed is run again with `rerun_on: failed|all` under a fresh random attempt name.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, Weak};

use chrono::{DateTime, Utc};
use spade_api::{AttemptRef, AttemptState, CancelToken, OperatorHost, StartRequest};
use spade_dig::Project;
use spade_engine::{AttemptInput, Console, EngineOptions, Launcher, run_attempt};
use spade_store::{AttemptRecord, AttemptStatus, NewAttempt, Store, StoreLocation};

pub struct LocalLauncher {
    pub project: Arc<Project>,
    pub project_name: String,
    pub project_root: PathBuf,
    pub location: StoreLocation,
    /// The project's workspace, shared by the attempts it starts (as in Digdag's local mode).
    pub workspace: PathBuf,
    pub host: Arc<dyn OperatorHost>,
    pub console: Arc<dyn Console>,
    pub opts: EngineOptions,
    pub cancel: CancelToken,
    /// The revision of the project this process runs (attempts it starts record it).
    pub revision_id: i64,
    /// Attempts this process started, with their live state.
    started: Mutex<HashMap<i64, AttemptState>>,
    me: Weak<LocalLauncher>,
}

fn state_of(status: AttemptStatus) -> AttemptState {
    match status {
        AttemptStatus::Running => AttemptState::Running,
        AttemptStatus::Success => AttemptState::Success,
        AttemptStatus::Error | AttemptStatus::Killed => AttemptState::Failure,
    }
}

impl LocalLauncher {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        project: Arc<Project>,
        project_name: String,
        project_root: PathBuf,
        location: StoreLocation,
        workspace: PathBuf,
        host: Arc<dyn OperatorHost>,
        console: Arc<dyn Console>,
        opts: EngineOptions,
        cancel: CancelToken,
        revision_id: i64,
    ) -> Arc<Self> {
        Arc::new_cyclic(|me| LocalLauncher {
            project,
            project_name,
            project_root,
            location,
            workspace,
            host,
            console,
            opts,
            cancel,
            revision_id,
            started: Mutex::new(HashMap::new()),
            me: me.clone(),
        })
    }

    fn live_state(&self, a: &AttemptRecord) -> AttemptState {
        match self.started.lock().unwrap().get(&a.attempt_id) {
            Some(s) => *s,
            // A "running" attempt no process of ours is running was cut off (crash, kill):
            // it counts as failed.
            None if a.status == AttemptStatus::Running => AttemptState::Failure,
            None => state_of(a.status),
        }
    }

    fn reference(&self, a: &AttemptRecord) -> AttemptRef {
        AttemptRef { attempt_id: a.attempt_id, session_id: a.session_id, state: self.live_state(a) }
    }

    fn start(
        &self,
        store: &mut dyn Store,
        workflow_index: usize,
        session_time: DateTime<spade_dig::Zone>,
        name: Option<String>,
        req: &StartRequest,
    ) -> Result<AttemptRef, String> {
        let wf = &self.project.workflows[workflow_index];
        let session_str = session_time.format("%Y-%m-%dT%H:%M:%S%:z").to_string();
        let mut params = req.params.clone();
        if let Some(schedule) = &wf.schedule {
            if let Some(last) = schedule.last_session_time(session_time) {
                spade_engine::params::time_vars("last_session", &last, &mut params);
            }
            if let Some(next) = schedule.next_session_time(session_time) {
                spade_engine::params::time_vars("next_session", &next, &mut params);
            }
        }
        let attempt = store
            .begin_attempt(&NewAttempt {
                project: self.project_name.clone(),
                workflow: wf.name.clone(),
                session_time: session_str,
                timezone: wf.timezone.name().to_string(),
                name,
                params: params.clone(),
            })
            .map_err(|e| e.to_string())?;
        store.link_revision(attempt.attempt_id, self.revision_id).map_err(|e| e.to_string())?;
        let reference =
            AttemptRef { attempt_id: attempt.attempt_id, session_id: attempt.session_id, state: AttemptState::Running };
        self.started.lock().unwrap().insert(attempt.attempt_id, AttemptState::Running);
        let me = self.me.upgrade().expect("the launcher outlives its attempts");
        std::thread::spawn(move || {
            let attempt_id = attempt.attempt_id;
            let outcome = (|| -> Result<bool, String> {
                let mut store = me.location.open().map_err(|e| e.to_string())?;
                let wf = &me.project.workflows[workflow_index];
                let retry_attempt_name = (!attempt.name.is_empty()).then(|| attempt.name.clone());
                let input = AttemptInput {
                    project_name: me.project_name.clone(),
                    project_id: 1,
                    project_root: me.project_root.clone(),
                    workspace: me.workspace.clone(),
                    workflow: wf,
                    session_time,
                    attempt,
                    params,
                    retry_attempt_name,
                    saved: Default::default(),
                    frozen: Default::default(),
                    cancel: me.cancel.clone(),
                    run_time: None,
                };
                let launcher: Arc<dyn Launcher> = me.clone();
                let summary =
                    run_attempt(input, me.host.clone(), store.as_mut(), me.console.clone(), Some(launcher), &me.opts)
                        .map_err(|e| e.to_string())?;
                Ok(summary.success)
            })();
            let state = match outcome {
                Ok(true) => AttemptState::Success,
                Ok(false) => AttemptState::Failure,
                Err(e) => {
                    me.console.task_failed(&format!("attempt {attempt_id}"), &e);
                    AttemptState::Failure
                }
            };
            me.started.lock().unwrap().insert(attempt_id, state);
        });
        Ok(reference)
    }
}

impl Launcher for LocalLauncher {
    fn start_or_find(&self, req: &StartRequest) -> Result<AttemptRef, String> {
        if let Some(p) = &req.project_name
            && *p != self.project_name
        {
            return Err(format!(
                "project '{p}': local mode can only require workflows of this project ('{}')",
                self.project_name
            ));
        }
        let index = self
            .project
            .workflows
            .iter()
            .position(|w| w.name == req.workflow_name)
            .ok_or_else(|| format!("no workflow '{}' in this project", req.workflow_name))?;
        let tz = self.project.workflows[index].timezone;
        let session_time = match DateTime::parse_from_rfc3339(&req.session_time) {
            Ok(t) => t.with_timezone(&tz),
            Err(_) => spade_dig::parse_session_time(&req.session_time, tz, Utc::now())
                .map_err(|e| format!("session_time: {e}"))?,
        };
        let session_str = session_time.format("%Y-%m-%dT%H:%M:%S%:z").to_string();
        let mut store = self.location.open().map_err(|e| e.to_string())?;
        let attempts =
            store.session_attempts(&self.project_name, &req.workflow_name, &session_str).map_err(|e| e.to_string())?;
        if let Some(name) = &req.attempt_name {
            if let Some(a) = attempts.iter().find(|a| &a.name == name) {
                return Ok(self.reference(a));
            }
            return self.start(store.as_mut(), index, session_time, Some(name.clone()), req);
        }
        let Some(last) = attempts.last() else {
            return self.start(store.as_mut(), index, session_time, None, req);
        };
        let rerun = match (self.live_state(last), req.rerun_on.as_str()) {
            (AttemptState::Running, _) => false,
            (AttemptState::Success, "all") => true,
            (AttemptState::Failure, "failed" | "all") => true,
            _ => false,
        };
        if rerun {
            let name = uuid::Uuid::new_v4().to_string();
            self.start(store.as_mut(), index, session_time, Some(name), req)
        } else {
            Ok(self.reference(last))
        }
    }

    fn status(&self, attempt_id: i64) -> Result<AttemptRef, String> {
        let mut store = self.location.open().map_err(|e| e.to_string())?;
        let a = store.attempt(attempt_id).map_err(|e| e.to_string())?;
        Ok(self.reference(&a))
    }

    fn param_get(&self, key: &str) -> Result<Option<String>, String> {
        let mut store = self.location.open().map_err(|e| e.to_string())?;
        spade_store::param_server::get(store.as_mut(), &self.project_name, key, Utc::now().timestamp())
            .map_err(|e| e.to_string())
    }

    fn param_set(&self, key: &str, value: &str) -> Result<(), String> {
        let mut store = self.location.open().map_err(|e| e.to_string())?;
        spade_store::param_server::set(store.as_mut(), &self.project_name, key, value, Utc::now().timestamp())
            .map_err(|e| e.to_string())
    }
}
