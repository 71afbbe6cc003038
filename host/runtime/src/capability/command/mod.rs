//! Capability `command`: run a script's interpreter outside wasm (`sh>`, `py>`, `rb>`).
//!
//! This module owns the whole capability, in the shape of Spin's factors: its grant
//! ([`CommandGrant`], the `command:` key of a plugin's grants and `command = true` in its
//! manifest), the per-call state a plugin's calls see ([`CommandCall`]), and the host side of
//! the WIT interface (`spade:operator/command`). Where commands run is an [`executor`]
//! (`sandbox`, `docker`, `local`); the commands themselves live in the [`hub`], shared by all
//! calls, because a command outlives the call that started it.
//!
//! The plugin never chooses the executor or the limits: the executor comes from the task's
//! params (`executor:` or Digdag's `docker:`) and must be one the grant allows; the limits
//! are the grant's.

mod executor;
mod hub;
mod safe_fs;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use spade_api::{CancelToken, DiskQuota, Usage};

pub use executor::ExecutorKind;
pub(crate) use hub::{Hub, Owner};

use crate::host::{HostState, wit_command};
use executor::{Launch, Spec};

/// What a plugin granted `command` may run, and with how much.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommandGrant {
    /// Executors its tasks may choose (`executor:` / `docker:`); the first is the default.
    pub executors: Vec<ExecutorKind>,
    /// Whether sandboxed commands share the host's network (otherwise they have none).
    pub network: bool,
    /// Host directories mounted read-only into the sandbox besides the system's (an
    /// interpreter installed under a home directory, a shared library of scripts).
    pub read_only: Vec<PathBuf>,
    pub limits: CommandLimits,
}

impl Default for CommandGrant {
    fn default() -> Self {
        CommandGrant {
            executors: vec![ExecutorKind::Sandbox, ExecutorKind::Docker],
            network: false,
            read_only: Vec::new(),
            limits: CommandLimits::default(),
        }
    }
}

/// Limits of one command (each process of it, where the limit is per process).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CommandLimits {
    /// Address space of each process (`memory_mb`).
    pub memory_bytes: u64,
    /// CPU time of each process (`cpu_seconds`).
    pub cpu_time: Duration,
    /// Processes of the sandbox user at once (`processes`).
    pub processes: u32,
    /// Bytes of stdout and stderr together (`output_mb`); more kills the command.
    pub output_bytes: u64,
    /// Wall-clock time from start (`timeout_seconds`).
    pub wall_time: Duration,
}

impl Default for CommandLimits {
    fn default() -> Self {
        CommandLimits {
            memory_bytes: 4 << 30,
            cpu_time: Duration::from_secs(3600),
            processes: 512,
            output_bytes: 64 << 20,
            wall_time: Duration::from_secs(24 * 3600),
        }
    }
}

/// Running commands one task may have at once.
const MAX_COMMANDS_PER_TASK: usize = 16;
/// Largest argv + environment a plugin may pass (bytes).
const MAX_SPEC_BYTES: usize = 1 << 20;
/// Most of a command's output kept for `finished.output-tail`.
pub(crate) const TAIL_BYTES: usize = 4096;

/// The command capability as one call sees it.
pub(crate) struct CommandCall {
    hub: Arc<Hub>,
    /// `None` when the plugin is not granted `command` (it cannot import the interface then)
    /// or while it is being described.
    grant: Option<Arc<CommandGrant>>,
    task: Option<TaskSide>,
}

/// What a call of a task brings: who owns the commands, where they run.
struct TaskSide {
    owner: Owner,
    workspace: PathBuf,
    executor: Result<Launch, String>,
    cancel: CancelToken,
    disk: DiskQuota,
}

impl CommandCall {
    pub fn describing(hub: Arc<Hub>) -> CommandCall {
        CommandCall { hub, grant: None, task: None }
    }

    /// The state of one task call. `params` decide the executor (`executor:`, `docker:`).
    pub fn for_task(
        hub: Arc<Hub>,
        grant: Option<Arc<CommandGrant>>,
        request: &spade_api::TaskRequest,
        workspace: &Path,
        cancel: &CancelToken,
        disk: &DiskQuota,
    ) -> CommandCall {
        let task = grant.as_ref().map(|g| TaskSide {
            owner: Owner { attempt_id: request.attempt_id, task_name: request.task_name.clone() },
            workspace: workspace.to_path_buf(),
            executor: executor::choose(g, &request.params),
            cancel: cancel.clone(),
            disk: disk.clone(),
        });
        CommandCall { hub, grant, task }
    }

    /// Called when the call is over: a task that finished (done or failed) leaves no command
    /// running; one that polls keeps them for its next call.
    pub fn end_of_call(&self, polling: bool) {
        if let Some(t) = &self.task
            && !polling
        {
            self.hub.cancel_all_of(&t.owner);
        }
    }
}

fn not_granted() -> String {
    "the command capability is not available here".to_string()
}

impl HostState {
    fn command_task(&self) -> Result<(&CommandGrant, &TaskSide), String> {
        match (&self.command.grant, &self.command.task) {
            (Some(g), Some(t)) => Ok((g, t)),
            _ => Err(not_granted()),
        }
    }

    /// Copies the command's new output lines to the task log.
    fn forward_output(&self, lines: Vec<(bool, String)>) {
        if let Some(s) = self.services {
            for (stderr, line) in lines {
                s.command_output(stderr, &line);
            }
        }
    }

    /// Charges what commands added to the workspace to the attempt's disk quota (a file
    /// is also stopped at what is left of it, by RLIMIT_FSIZE, while it is written). The
    /// reason to fail the task with when it does not fit.
    fn charge_workspace_growth(&self) -> Option<String> {
        let (_, task) = self.command_task().ok()?;
        let growth = match self.command.hub.workspace_growth(&task.workspace, task.owner.attempt_id, task.disk.used()) {
            Ok(g) => g,
            Err(e) => return Some(format!("cannot measure what it wrote to the workspace: {e}")),
        };
        if growth < 0 {
            task.disk.refund(u64::try_from(-growth).unwrap_or(u64::MAX));
            return None;
        }
        let growth = u64::try_from(growth).unwrap_or(u64::MAX);
        (!task.disk.charge(growth)).then(|| {
            format!(
                "exceeded the attempt's disk quota of {} MiB (disk_quota): it added {} MiB to the workspace; \
                 delete what later tasks do not need, or raise the quota (spade run --disk-quota MiB, or \
                 disk_quota_mb in spade.yml)",
                task.disk.limit() >> 20,
                growth >> 20
            )
        })
    }

    fn record_usage(&self, usage: Usage) {
        if let Some(s) = self.services {
            s.record_usage(usage);
        }
    }
}

fn check_spec(spec: &wit_command::CommandSpec) -> Result<(), String> {
    if spec.argv.is_empty() || spec.argv[0].is_empty() {
        return Err("command-spec.argv is empty: give the program to run".into());
    }
    let size: usize = spec.argv.iter().map(String::len).sum::<usize>()
        + spec.env.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>();
    if size > MAX_SPEC_BYTES {
        return Err(format!("the command's arguments and environment are {size} bytes; the limit is {MAX_SPEC_BYTES}"));
    }
    if spec.argv.iter().any(|a| a.contains('\0')) {
        return Err("an argument contains a NUL byte".into());
    }
    for (k, v) in &spec.env {
        if !valid_env_key(k) {
            return Err(format!(
                "environment variable name {k:?} is not valid (letters, digits and `_`, not starting with a digit)"
            ));
        }
        if v.contains('\0') {
            return Err(format!("environment variable {k} contains a NUL byte"));
        }
    }
    Ok(())
}

/// Digdag's `CommandOperators.isValidEnvKey`: `[a-zA-Z_][a-zA-Z0-9_]*`.
pub(crate) fn valid_env_key(key: &str) -> bool {
    let mut chars = key.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

impl wit_command::Host for HostState {
    fn start(&mut self, spec: wit_command::CommandSpec) -> Result<String, String> {
        let (grant, task) = self.command_task()?;
        check_spec(&spec)?;
        let launch = task.executor.clone()?;
        if self.command.hub.running_of(&task.owner) >= MAX_COMMANDS_PER_TASK {
            return Err(format!("the task already runs {MAX_COMMANDS_PER_TASK} commands; wait for one to finish"));
        }
        let cwd = safe_fs::relative(&spec.cwd).map_err(|e| format!("command-spec.cwd: {e}"))?;
        safe_fs::open_dir(&task.workspace, &cwd).map_err(|e| format!("command-spec.cwd {:?}: {e}", spec.cwd))?;
        let stdin = match &spec.stdin_file {
            Some(path) => Some(
                safe_fs::open_regular(&task.workspace, path, u64::MAX)
                    .map_err(|e| format!("command-spec.stdin-file {path:?}: {e}"))?
                    .0,
            ),
            None => None,
        };
        let spec = Spec {
            argv: spec.argv,
            cwd,
            env: spec.env,
            stdin,
            workspace: task.workspace.clone(),
            attempt_id: task.owner.attempt_id,
            file_size_limit: task.disk.limit().saturating_sub(task.disk.used()),
        };
        self.command.hub.note_workspace(&task.workspace, task.owner.attempt_id, task.disk.used())?;
        let child = executor::spawn(&launch, grant, &spec)?;
        Ok(self.command.hub.add(task.owner.clone(), child, grant.limits, task.cancel.clone()))
    }

    fn wait(&mut self, handle: String, timeout_ms: u32) -> Result<wit_command::Status, String> {
        let (_, task) = self.command_task()?;
        let owner = task.owner.clone();
        let running = self.command.hub.get(&handle, &owner).ok_or_else(|| {
            format!(
                "unknown command handle {handle:?}: it belongs to another task, or spade restarted since the command started"
            )
        })?;
        // Return before the call's own deadline, leaving it time to answer.
        let until = (Instant::now() + Duration::from_millis(u64::from(timeout_ms)))
            .min(self.stop.deadline().checked_sub(Duration::from_millis(500)).unwrap_or_else(Instant::now));
        loop {
            let (lines, finished) = running.take_output();
            self.forward_output(lines);
            if let Some(mut f) = finished {
                self.command.hub.remove(&handle);
                if let Some(over) = self.charge_workspace_growth() {
                    f.reason = over;
                }
                // The task's wall time is its calls' (which include this wait); a command adds
                // its CPU time and memory.
                self.record_usage(Usage { wall: Duration::ZERO, ..f.usage });
                return Ok(wit_command::Status::Finished(wit_command::Finished {
                    exit_code: f.code,
                    signal: f.signal,
                    reason: f.reason,
                    output_tail: f.tail,
                }));
            }
            if Instant::now() >= until || self.stop.check().is_some() {
                return Ok(wit_command::Status::Running);
            }
            running.wait_change(until.min(Instant::now() + Duration::from_millis(50)));
        }
    }

    fn cancel(&mut self, handle: String) {
        if let Ok((_, task)) = self.command_task() {
            let owner = task.owner.clone();
            if let Some(running) = self.command.hub.get(&handle, &owner) {
                running.kill("the operator cancelled it");
                let (lines, _) = running.take_output();
                self.forward_output(lines);
                self.command.hub.remove(&handle);
            }
        }
    }

    fn read_file(&mut self, path: String, max_bytes: u64) -> Result<Vec<u8>, String> {
        let (_, task) = self.command_task()?;
        let (mut file, len) = safe_fs::open_regular(&task.workspace, &path, max_bytes)?;
        let mut out = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
        std::io::Read::read_to_end(&mut std::io::Read::take(&mut file, max_bytes.saturating_add(1)), &mut out)
            .map_err(|e| format!("cannot read {path}: {e}"))?;
        if out.len() as u64 > max_bytes {
            return Err(format!("{path} is larger than {max_bytes} bytes"));
        }
        Ok(out)
    }
}
