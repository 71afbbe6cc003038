//! spade-agent: runs operator calls for a server, speaking only HTTP to it (`spade agent`).
//!
//! The agent claims no more calls than it has free slots. Each call runs in a fresh
//! workspace unpacked from its revision archive (fetched once per digest, its sha256
//! checked, cached), with only the secrets the server sent for it, and its result goes back
//! with the claim's fencing token. A heartbeat thread keeps the leases of the calls in
//! progress; when the server says a call was lost (the lease ran out while this agent was
//! cut off) or its attempt was killed, the call is cancelled, and a late result is refused
//! by the server anyway. The agent holds no database credentials and no encryption key.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use spade_api::remote::CallResult;
use spade_api::{CancelToken, DiskQuota, Invocation, LogLevel, OperatorHost, Usage};
use spade_client::Client;
use spade_client::rest::agent::{ClaimRequest, ClaimedCall, CompleteRequest, HeartbeatRequest, HeldCall};
use spade_engine::Console;
use spade_engine::services::TaskCtx;

/// Builds the operator host for a project unpacked in a directory (its `spade.yml` says
/// which plugins and grants). The binary provides it; the agent keeps one per revision.
pub trait HostFactory: Send + Sync {
    fn host_for(&self, project_dir: &Path) -> Result<Arc<dyn OperatorHost>, String>;
}

#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// How the agent names itself to the server (unique among its agents).
    pub name: String,
    pub tags: Vec<String>,
    /// Calls run at once.
    pub slots: usize,
    /// Revision archives, by digest, and their unpacked copies.
    pub cache_dir: PathBuf,
    /// Where each call's workspace is made (and removed after it).
    pub work_dir: PathBuf,
    /// Pause between claims when there was nothing to do.
    pub idle_wait: Duration,
}

/// How long a claim waits on the server for work when there is none.
const LONG_POLL: Duration = Duration::from_secs(5);

/// One call in progress.
struct Running {
    token: i64,
    cancel: CancelToken,
    /// The server gave the call to another agent: its result is not sent.
    lost: Arc<AtomicBool>,
}

pub struct Agent {
    client: Client,
    config: AgentConfig,
    factory: Arc<dyn HostFactory>,
    running: Mutex<HashMap<i64, Running>>,
    /// Signalled when a call ends, so a full agent claims again at once.
    slot_freed: std::sync::Condvar,
    hosts: Mutex<HashMap<String, Arc<dyn OperatorHost>>>,
    heartbeat_every: Mutex<Duration>,
    /// Workspaces of tasks that poll, by (attempt, task): the server sends their next call
    /// here, where their commands run, and it finds the files the task left.
    polling: Mutex<HashMap<(i64, String), tempfile::TempDir>>,
}

impl Agent {
    pub fn new(endpoint: &str, config: AgentConfig, factory: Arc<dyn HostFactory>) -> Arc<Agent> {
        Arc::new(Agent {
            client: Client::new(endpoint),
            config,
            factory,
            running: Mutex::default(),
            slot_freed: std::sync::Condvar::new(),
            hosts: Mutex::default(),
            heartbeat_every: Mutex::new(Duration::from_secs(10)),
            polling: Mutex::default(),
        })
    }

    fn running(&self) -> std::sync::MutexGuard<'_, HashMap<i64, Running>> {
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Claim and run calls until `stop` is set (it is checked between claims).
    pub fn run(self: &Arc<Self>, stop: &AtomicBool) {
        let me = Arc::clone(self);
        let _ = std::thread::Builder::new().name("heartbeat".into()).spawn(move || me.heartbeats());
        let mut backoff = self.config.idle_wait;
        while !stop.load(Ordering::Relaxed) {
            let free = {
                let running = self.running();
                let free = self.config.slots.saturating_sub(running.len());
                if free == 0 {
                    // Every slot is busy: wait for a call to end.
                    let _ = self.slot_freed.wait_timeout(running, Duration::from_secs(1));
                    continue;
                }
                free
            };
            let request = ClaimRequest {
                agent: self.config.name.clone(),
                tags: self.config.tags.clone(),
                slots: free,
                wait_ms: LONG_POLL.as_millis() as u64,
            };
            match self.client.claim(&request) {
                Ok(response) if response.calls.is_empty() => {}
                Ok(response) => {
                    backoff = self.config.idle_wait;
                    for call in response.calls {
                        self.spawn_call(call);
                    }
                }
                Err(e) => {
                    // Cut off or the server restarting: keep the calls in progress, retry.
                    tracing::warn!("claiming calls: {e}");
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    fn spawn_call(self: &Arc<Self>, call: ClaimedCall) {
        *self.heartbeat_every.lock().unwrap_or_else(|e| e.into_inner()) =
            Duration::from_millis(call.heartbeat_ms.max(100));
        let cancel = CancelToken::new();
        let lost = Arc::new(AtomicBool::new(false));
        self.running().insert(call.id, Running { token: call.token, cancel: cancel.clone(), lost: lost.clone() });
        let me = Arc::clone(self);
        let spawned = std::thread::Builder::new().name(format!("call-{}", call.id)).spawn({
            let call = call.clone();
            move || {
                let (id, token) = (call.id, call.token);
                let result = me.execute(&call, &cancel);
                if !lost.load(Ordering::Relaxed) {
                    me.report(id, token, result);
                }
                me.running().remove(&id);
                me.slot_freed.notify_one();
            }
        });
        if let Err(e) = spawned {
            tracing::error!("cannot start a thread for call {}: {e}", call.id);
            self.running().remove(&call.id);
        }
    }

    /// Run one call to its outcome; every failure is a result the task fails with.
    fn execute(&self, call: &ClaimedCall, cancel: &CancelToken) -> CallResult {
        let failed = |message: String| CallResult {
            outcome: Err(message),
            logs: Vec::new(),
            prints: Vec::new(),
            usage: Usage::default(),
            holds_commands: false,
        };
        let Some(digest) = &call.archive_digest else {
            return failed("the call names no revision archive".into());
        };
        let (project_dir, host) = match self.revision(digest) {
            Ok(r) => r,
            Err(e) => return failed(format!("agent {}: {e}", self.config.name)),
        };
        if call.call.abandon {
            let request = &call.call.request;
            host.end_task(request.attempt_id, &request.task_name);
            self.polling
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&(request.attempt_id, request.task_name.clone()));
            return CallResult {
                outcome: Err("the task ended; its commands were stopped".into()),
                logs: Vec::new(),
                prints: Vec::new(),
                usage: Usage::default(),
                holds_commands: false,
            };
        }
        let mut restarted = None;
        let request = match &call.call.runs_on {
            // The commands this poll was for ran on an agent that is gone: the task starts
            // over here (at least once, as a task whose agent died mid-call).
            Some(other) if *other != self.config.name && call.call.request.state.is_some() => {
                restarted = Some(format!(
                    "agent {other}, which ran this task's commands, stopped answering; the task starts over on agent {}",
                    self.config.name
                ));
                &spade_api::TaskRequest { state: None, ..call.call.request.clone() }
            }
            _ => &call.call.request,
        };
        let key = (request.attempt_id, request.task_name.clone());
        let kept = self.polling.lock().unwrap_or_else(|e| e.into_inner()).remove(&key);
        let workspace = match kept {
            // The task's next poll: where it left its files.
            Some(w) if request.state.is_some() => w,
            _ => {
                // A fresh workspace per task, as Digdag's server mode: a copy of the revision.
                let w = match tempfile::Builder::new().prefix("call-").tempdir_in(&self.config.work_dir) {
                    Ok(w) => w,
                    Err(e) => return failed(format!("agent {}: creating a workspace: {e}", self.config.name)),
                };
                if let Err(e) = copy_tree(&project_dir, w.path()) {
                    return failed(format!("agent {}: preparing the workspace: {e}", self.config.name));
                }
                w
            }
        };
        let timezone = match spade_dig::Zone::parse(&request.timezone) {
            Ok(z) => z,
            Err(e) => return failed(format!("timezone {}: {e}", request.timezone)),
        };
        let console = Arc::new(Collect::default());
        let ctx = TaskCtx {
            console: console.clone(),
            task_name: request.task_name.clone(),
            project_root: workspace.path().to_path_buf(),
            workdir: call.call.workdir.clone(),
            timezone,
            expr_limits: spade_expr::ExprLimits::default(),
            launcher: None,
            secrets: Arc::new(call.secrets.clone().into_iter().collect()),
            logs: Mutex::default(),
            usage: Mutex::default(),
        };
        let disk = DiskQuota::new(call.call.disk_quota);
        let outcome = host.invoke(Invocation {
            request,
            workspace: workspace.path(),
            disk: &disk,
            limits: call.call.limits,
            services: &ctx,
            cancel,
        });
        let mut logs = ctx.logs.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(note) = restarted {
            logs.insert(0, (LogLevel::Warn, note));
        }
        let usage = *ctx.usage.lock().unwrap_or_else(|e| e.into_inner());
        let prints = std::mem::take(&mut *console.prints.lock().unwrap_or_else(|e| e.into_inner()));
        let polls = matches!(&outcome, Ok(spade_api::Outcome::Poll { .. }));
        let holds_commands = polls && host.commands_running(request.attempt_id, &request.task_name);
        if polls {
            self.polling.lock().unwrap_or_else(|e| e.into_inner()).insert(key, workspace);
        }
        CallResult { outcome: outcome.map_err(|e| e.to_string()), logs, prints, usage, holds_commands }
    }

    /// The unpacked revision and its operator host, fetched and built once per digest.
    fn revision(&self, digest: &str) -> Result<(PathBuf, Arc<dyn OperatorHost>), String> {
        let dir = self.config.cache_dir.join("revisions").join(digest);
        if !dir.is_dir() {
            let bytes = self.client.archive_by_digest(digest).map_err(|e| e.to_string())?;
            let actual = spade_archive::digest(&bytes);
            if actual != digest {
                return Err(format!("the server sent an archive whose sha256 is {actual}, not {digest}"));
            }
            let scratch = self.config.cache_dir.join("revisions").join(format!(".{digest}.{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&scratch);
            let limits = spade_archive::Limits {
                max_archive_bytes: u64::MAX,
                max_unpacked_bytes: 1 << 34,
                max_entries: 1_000_000,
            };
            spade_archive::unpack_to(&bytes, &scratch, &limits).map_err(|e| e.to_string())?;
            if std::fs::rename(&scratch, &dir).is_err() {
                let _ = std::fs::remove_dir_all(&scratch);
            }
        }
        let mut hosts = self.hosts.lock().unwrap_or_else(|e| e.into_inner());
        let host = match hosts.get(digest) {
            Some(h) => h.clone(),
            None => {
                let h = self.factory.host_for(&dir)?;
                hosts.insert(digest.to_string(), h.clone());
                h
            }
        };
        Ok((dir, host))
    }

    /// Send a result, retrying while the server cannot be reached (for as long as a lease
    /// could still be ours; after that the server would refuse it).
    fn report(&self, id: i64, token: i64, result: CallResult) {
        let request = CompleteRequest { agent: self.config.name.clone(), id, token, result };
        let deadline = Instant::now() + Duration::from_secs(600);
        loop {
            match self.client.complete(&request) {
                Ok(r) if r.accepted => return,
                Ok(_) => {
                    return tracing::info!(call = id, "the server refused the result: the call went to another agent");
                }
                Err(spade_client::ClientError::Transport { message, .. }) if Instant::now() < deadline => {
                    tracing::warn!(call = id, "reporting the result: {message}; retrying");
                    std::thread::sleep(Duration::from_secs(1));
                }
                Err(e) => return tracing::error!(call = id, "reporting the result: {e}"),
            }
        }
    }

    /// Keep the leases of the calls in progress; cancel those the server says are lost or
    /// killed.
    fn heartbeats(&self) {
        let mut last = Instant::now();
        loop {
            // The interval comes with the claims (a third of the server's lease): look at it
            // often, so that the first heartbeat never waits for a longer default.
            std::thread::sleep(Duration::from_millis(100));
            let every = *self.heartbeat_every.lock().unwrap_or_else(|e| e.into_inner());
            if last.elapsed() < every {
                continue;
            }
            last = Instant::now();
            let held: Vec<HeldCall> =
                self.running().iter().map(|(id, r)| HeldCall { id: *id, token: r.token }).collect();
            if held.is_empty() {
                continue;
            }
            let request = HeartbeatRequest { agent: self.config.name.clone(), held };
            match self.client.heartbeat(&request) {
                Ok(response) => {
                    let running = self.running();
                    for state in response.held {
                        if let Some(r) = running.get(&state.id) {
                            if state.lost {
                                r.lost.store(true, Ordering::Relaxed);
                            }
                            if state.cancel || state.lost {
                                r.cancel.cancel();
                            }
                        }
                    }
                }
                Err(e) => tracing::warn!("heartbeat: {e}"),
            }
        }
    }
}

/// Copy the unpacked revision into a call's workspace (files, directories, links).
fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        let kind = entry.file_type()?;
        if kind.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(&src)?, &dst)?;
        } else if kind.is_dir() {
            std::fs::create_dir(&dst)?;
            copy_tree(&src, &dst)?;
        } else {
            std::fs::copy(&src, &dst)?;
        }
    }
    Ok(())
}

/// Keeps what a call prints; its log lines are kept by the task context.
#[derive(Default)]
struct Collect {
    prints: Mutex<Vec<String>>,
}

impl Console for Collect {
    fn print(&self, line: &str) {
        self.prints.lock().unwrap_or_else(|e| e.into_inner()).push(line.to_string());
    }
    fn log(&self, _task: &str, _level: LogLevel, _message: &str) {}
    fn task_failed(&self, _task: &str, _message: &str) {}
    fn flush(&self) {}
}
