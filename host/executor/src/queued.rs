//! [`QueuedHost`]: the engine's operator host on a server. A call becomes a row of the task
//! queue that an agent claims; the engine's worker waits for its outcome and replays the
//! call's logs, output and resource figures into the engine's task services, so the attempt
//! is recorded exactly as a local run would record it.

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use spade_api::remote::{CallResult, QueuedCall};
use spade_api::{Invocation, InvokeError, LogLevel, OperatorHost, Outcome, Usage};
use spade_store::{CallState, NewQueuedCall, StorePool};

/// The task param that asks for an agent with a tag (a spade extension, e.g.
/// `_export: {agent_tag: gpu}`).
pub const AGENT_TAG_PARAM: &str = "agent_tag";

/// Wakes the worker waiting on a queued call when its result is accepted (by this
/// process's API): only that worker reads the database, not every waiting one. Each also
/// looks at the database every [`CHECK_EVERY`], for results another server process took.
#[derive(Default)]
pub struct Completions {
    done: Mutex<std::collections::HashSet<i64>>,
    changed: Condvar,
}

/// How often a waiting worker looks at its call's row without a wake-up.
pub const CHECK_EVERY: Duration = Duration::from_millis(500);

impl Completions {
    /// The call `id` has its result.
    pub fn notify(&self, id: i64) {
        self.done.lock().unwrap_or_else(|e| e.into_inner()).insert(id);
        self.changed.notify_all();
    }

    /// Wait until `id` has its result here, or `timeout`; whether it has (the
    /// notification is then forgotten).
    fn wait(&self, id: i64, timeout: Duration) -> bool {
        let guard = self.done.lock().unwrap_or_else(|e| e.into_inner());
        let (mut done, _) =
            self.changed.wait_timeout_while(guard, timeout, |d| !d.contains(&id)).unwrap_or_else(|e| e.into_inner());
        done.remove(&id)
    }

    /// Forget `id` (its waiter is gone).
    fn forget(&self, id: i64) {
        self.done.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
    }
}

/// The operator host of one attempt: its calls run on agents, in workspaces extracted from
/// the attempt's revision archive.
pub struct QueuedHost {
    pub(crate) stores: StorePool,
    pub(crate) completions: Arc<Completions>,
    pub(crate) enqueued: Arc<tokio::sync::Notify>,
    pub(crate) archive_digest: String,
    pub(crate) disk_quota: u64,
    /// The agent each polling task last ran on (its commands and workspace are there).
    pub(crate) polling_on: Mutex<HashMap<String, String>>,
}

/// The outcome a killed call is closed with when no agent holds it yet.
pub(crate) fn killed_result() -> String {
    result_json(&CallResult {
        outcome: Err("task was killed".into()),
        logs: Vec::new(),
        prints: Vec::new(),
        usage: Usage::default(),
        holds_commands: false,
    })
}

pub(crate) fn result_json(result: &CallResult) -> String {
    serde_json::to_string(result).expect("plain data serializes")
}

fn store_error(e: spade_store::StoreError) -> InvokeError {
    InvokeError::Plugin { plugin: "task queue".into(), message: e.to_string() }
}

impl QueuedHost {
    /// The attempt is over: tasks that still have commands on an agent (a kill between
    /// polls) get a call that stops them there. Nobody waits for its result.
    pub(crate) fn abandon_polling(&self, attempt_id: i64, request_of: impl Fn(&str) -> Option<spade_api::TaskRequest>) {
        let left: Vec<(String, String)> = self.polling_on.lock().unwrap_or_else(|e| e.into_inner()).drain().collect();
        for (task, agent) in left {
            let Some(request) = request_of(&task) else { continue };
            let call = QueuedCall {
                request,
                workdir: None,
                limits: Default::default(),
                disk_quota: 0,
                runs_on: Some(agent.clone()),
                abandon: true,
            };
            let call_json = serde_json::to_string(&call).expect("plain data serializes");
            let queued = self.stores.get().and_then(|mut s| {
                s.enqueue(&NewQueuedCall {
                    attempt_id,
                    task_name: &task,
                    archive_digest: Some(&self.archive_digest),
                    tag: None,
                    affinity: Some(&agent),
                    request: &call_json,
                })
            });
            if let Err(e) = queued {
                tracing::warn!(task, agent, "could not ask the agent to stop the task's commands: {e}");
            }
        }
        self.enqueued.notify_waiters();
    }
}

impl OperatorHost for QueuedHost {
    fn has_operator(&self, _operator: &str) -> bool {
        // Agents know their plugins; an unknown operator fails the call there, by name.
        true
    }

    fn invoke(&self, inv: Invocation<'_>) -> Result<Outcome, InvokeError> {
        let request = inv.request;
        let tag = match request.params.get(AGENT_TAG_PARAM) {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::String(t)) if spade_store::queue::valid_tag(t) => Some(t.clone()),
            Some(other) => {
                return Ok(Outcome::error(format!(
                    "{AGENT_TAG_PARAM}: {other} is not an agent tag (letters, digits, '-' and '.')"
                )));
            }
        };
        // A poll of commands goes back to the agent where they run.
        let affinity = match request.state {
            Some(_) => self.polling_on.lock().unwrap_or_else(|e| e.into_inner()).get(&request.task_name).cloned(),
            None => None,
        };
        let call = QueuedCall {
            request: request.clone(),
            workdir: inv.services.workdir(),
            limits: inv.limits,
            disk_quota: self.disk_quota,
            runs_on: affinity.clone(),
            abandon: false,
        };
        let call_json = serde_json::to_string(&call).expect("plain data serializes");
        let id = self
            .stores
            .get()
            .and_then(|mut s| {
                s.enqueue(&NewQueuedCall {
                    attempt_id: request.attempt_id,
                    task_name: &request.task_name,
                    archive_digest: Some(&self.archive_digest),
                    tag: tag.as_deref(),
                    affinity: affinity.as_deref(),
                    request: &call_json,
                })
            })
            .map_err(store_error)?;
        self.enqueued.notify_waiters();
        let mut cancel_sent = false;
        // The row is read when this process accepted its result, after a kill, and every
        // CHECK_EVERY (a result another server process accepted); not right after queueing.
        let mut check = false;
        let mut last_check = std::time::Instant::now();
        let (outcome, agent) = loop {
            if inv.cancel.is_cancelled() && !cancel_sent {
                self.stores.get().and_then(|mut s| s.cancel_call(id, &killed_result())).map_err(store_error)?;
                cancel_sent = true;
                check = true;
            }
            if check {
                last_check = std::time::Instant::now();
                if let CallState::Done { outcome, agent } =
                    self.stores.get().and_then(|mut s| s.call_state(id)).map_err(store_error)?
                {
                    self.completions.forget(id);
                    break (outcome, agent);
                }
            }
            // A kill is noticed within a tenth of a second, a result at once.
            let notified = self.completions.wait(id, Duration::from_millis(100));
            check = notified || last_check.elapsed() >= CHECK_EVERY;
        };
        let result: CallResult = match serde_json::from_str(&outcome) {
            Ok(r) => r,
            // The queue's own outcome when it gave up on the call (not a CallResult).
            Err(_) => {
                return Err(InvokeError::Plugin { plugin: "task queue".into(), message: outcome });
            }
        };
        for line in &result.prints {
            inv.services.print(line);
            inv.services.log(LogLevel::Info, line);
        }
        for (level, message) in &result.logs {
            inv.services.log(*level, message);
        }
        inv.services.record_usage(result.usage);
        let mut polling_on = self.polling_on.lock().unwrap_or_else(|e| e.into_inner());
        match (&result.outcome, agent) {
            (Ok(Outcome::Poll { .. }), Some(agent)) if result.holds_commands => {
                polling_on.insert(request.task_name.clone(), agent);
            }
            _ => {
                polling_on.remove(&request.task_name);
            }
        }
        drop(polling_on);
        match result.outcome {
            Ok(outcome) => Ok(outcome),
            Err(_) if inv.cancel.is_cancelled() => Err(InvokeError::Cancelled),
            Err(message) => Err(InvokeError::Plugin { plugin: "agent".into(), message }),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex as StdMutex;

    use serde_json::Value;
    use spade_api::{CancelToken, DiskQuota, Done, Limits, Object, TaskRequest, TaskServices};
    use spade_store::StoreLocation;

    use super::*;

    fn request(state: Option<Value>) -> TaskRequest {
        TaskRequest {
            operator: "echo".into(),
            task_name: "+wf+t".into(),
            project_name: "p".into(),
            workflow_name: "wf".into(),
            attempt_id: 7,
            session_id: 1,
            session_uuid: "u".into(),
            session_time: "2024-01-01T00:00:00+00:00".into(),
            timezone: "UTC".into(),
            retry_attempt_name: None,
            command: Value::Null,
            params: Object::new(),
            local_params: Object::new(),
            raw: Object::new(),
            state,
            retry_count: 0,
        }
    }

    /// What the engine's task services would have been told.
    #[derive(Default)]
    struct Seen {
        lines: StdMutex<Vec<String>>,
        usage: StdMutex<Usage>,
    }

    impl TaskServices for Seen {
        fn print(&self, line: &str) {
            self.lines.lock().unwrap().push(format!("print {line}"));
        }
        fn log(&self, _level: LogLevel, message: &str) {
            self.lines.lock().unwrap().push(format!("log {message}"));
        }
        fn secret(&self, _key: &str) -> Option<String> {
            None
        }
        fn load_workflow(&self, _path: &str) -> Result<Object, String> {
            Err("no".into())
        }
        fn render_template(&self, t: &str, _scope: &Object) -> Result<String, String> {
            Ok(t.into())
        }
        fn start_or_find(&self, _req: &spade_api::StartRequest) -> Result<spade_api::AttemptRef, String> {
            Err("no".into())
        }
        fn attempt_status(&self, _id: i64) -> Result<spade_api::AttemptRef, String> {
            Err("no".into())
        }
        fn record_usage(&self, usage: Usage) {
            self.usage.lock().unwrap().add(usage);
        }
        fn workdir(&self) -> Option<String> {
            Some("sub".into())
        }
    }

    fn host(dir: &std::path::Path) -> (Arc<QueuedHost>, StorePool) {
        let stores = StorePool::new(StoreLocation::Sqlite(dir.join("s.db")), 4);
        let host = Arc::new(QueuedHost {
            stores: stores.clone(),
            completions: Arc::default(),
            enqueued: Arc::default(),
            archive_digest: "d".into(),
            disk_quota: 1 << 20,
            polling_on: Mutex::default(),
        });
        (host, stores)
    }

    /// Plays one agent: claims the next call as `agent` and reports `result`.
    fn agent_answers(stores: &StorePool, host: &QueuedHost, agent: &str, result: CallResult) -> QueuedCall {
        loop {
            let claimed = stores.get().unwrap().claim(agent, &[], 1, Duration::from_secs(30)).unwrap();
            if let Some(c) = claimed.into_iter().next() {
                assert!(stores.get().unwrap().complete(c.id, c.token, &result_json(&result)).unwrap());
                host.completions.notify(c.id);
                return serde_json::from_str(&c.request).unwrap();
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn invoke(host: &QueuedHost, req: &TaskRequest, seen: &Seen, cancel: &CancelToken) -> Result<Outcome, InvokeError> {
        let disk = DiskQuota::unlimited();
        host.invoke(Invocation {
            request: req,
            workspace: std::path::Path::new("/nonexistent"),
            disk: &disk,
            limits: Limits::default(),
            services: seen,
            cancel,
        })
    }

    #[test]
    fn a_call_goes_through_the_queue_and_its_logs_and_usage_come_back() {
        let dir = tempfile::tempdir().unwrap();
        let (host, stores) = host(dir.path());
        let seen = Seen::default();
        let answer = CallResult {
            outcome: Ok(Outcome::Done(Done::default())),
            logs: vec![(LogLevel::Info, "a log line".into())],
            prints: vec!["printed".into()],
            usage: Usage { cpu: Duration::from_millis(5), ..Usage::default() },
            holds_commands: false,
        };
        let call = std::thread::scope(|s| {
            let agent = s.spawn(|| agent_answers(&stores, &host, "a1", answer.clone()));
            let outcome = invoke(&host, &request(None), &seen, &CancelToken::new()).unwrap();
            assert_eq!(outcome, Outcome::Done(Done::default()));
            agent.join().unwrap()
        });
        assert_eq!(call.workdir.as_deref(), Some("sub"), "the call carries the task's workflow directory");
        assert_eq!(call.disk_quota, 1 << 20);
        assert_eq!(*seen.lines.lock().unwrap(), ["print printed", "log printed", "log a log line"]);
        assert_eq!(seen.usage.lock().unwrap().cpu, Duration::from_millis(5));
    }

    #[test]
    fn a_poll_of_running_commands_goes_back_to_their_agent() {
        let dir = tempfile::tempdir().unwrap();
        let (host, stores) = host(dir.path());
        let seen = Seen::default();
        let polling = CallResult {
            outcome: Ok(Outcome::Poll { after_seconds: 1, state: Value::from(1) }),
            logs: Vec::new(),
            prints: Vec::new(),
            usage: Usage::default(),
            holds_commands: true,
        };
        std::thread::scope(|s| {
            let agent = s.spawn(|| agent_answers(&stores, &host, "a1", polling.clone()));
            invoke(&host, &request(None), &seen, &CancelToken::new()).unwrap();
            agent.join().unwrap();
        });
        // The next poll: another agent finds nothing for it; a1 gets it.
        let done = CallResult { outcome: Ok(Outcome::Done(Done::default())), ..polling.clone() };
        std::thread::scope(|s| {
            let poll = s.spawn(|| invoke(&host, &request(Some(Value::from(1))), &seen, &CancelToken::new()));
            let call = loop {
                assert!(stores.get().unwrap().claim("a2", &[], 5, Duration::from_secs(30)).unwrap().is_empty());
                let claimed = stores.get().unwrap().claim("a1", &[], 0, Duration::from_secs(30)).unwrap();
                if let Some(c) = claimed.into_iter().next() {
                    assert!(stores.get().unwrap().complete(c.id, c.token, &result_json(&done)).unwrap());
                    host.completions.notify(c.id);
                    break serde_json::from_str::<QueuedCall>(&c.request).unwrap();
                }
                std::thread::sleep(Duration::from_millis(5));
            };
            assert_eq!(call.runs_on.as_deref(), Some("a1"));
            assert_eq!(poll.join().unwrap().unwrap(), Outcome::Done(Done::default()));
        });
        assert!(host.polling_on.lock().unwrap().is_empty(), "the task ended: nothing left to poll");
    }

    #[test]
    fn a_killed_call_that_no_agent_took_ends_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let (host, _stores) = host(dir.path());
        let cancel = CancelToken::new();
        cancel.cancel();
        let err = invoke(&host, &request(None), &Seen::default(), &cancel).unwrap_err();
        assert!(matches!(err, InvokeError::Cancelled), "{err}");
    }
}
