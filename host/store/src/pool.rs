//! A pool of open stores for servers: a request borrows a connection instead of opening
//! the database (and taking the migration lock) each time. Built on r2d2; a connection is
//! checked with a ping when it is borrowed, so one the database dropped is replaced.

use std::time::Duration;

use std::collections::HashMap;

use spade_api::{Done, TaskRequest};

use crate::queue::{CallState, ClaimedCall, GivenUp, Held, NewQueuedCall, Queue};
use crate::{
    AttemptInfo, AttemptRecord, AttemptStatus, LogLine, NewAttempt, NewRevision, ProjectRecord, Pushed, Result,
    RevisionRecord, SessionRecord, Store, StoreError, StoreLocation, TaskChange, TaskRecord, WorkflowDefinition,
};

/// Opens and checks the pool's stores (public only as part of [`PooledStore`]'s type).
pub struct Manager(StoreLocation);

impl r2d2::ManageConnection for Manager {
    type Connection = Box<dyn Store>;
    type Error = StoreError;

    fn connect(&self) -> Result<Box<dyn Store>> {
        self.0.open()
    }

    fn is_valid(&self, store: &mut Box<dyn Store>) -> Result<()> {
        store.ping()
    }

    fn has_broken(&self, _: &mut Box<dyn Store>) -> bool {
        false
    }
}

/// Open stores of one database, shared by the threads of a server.
#[derive(Clone)]
pub struct StorePool {
    pool: r2d2::Pool<Manager>,
    location: StoreLocation,
}

/// A store borrowed from a [`StorePool`]; it goes back when dropped.
pub type PooledStore = r2d2::PooledConnection<Manager>;

impl StorePool {
    /// A pool of at most `max` open stores of `location`. Nothing is opened until first
    /// used: open the location once beforehand to report a wrong URL at start.
    pub fn new(location: StoreLocation, max: u32) -> StorePool {
        let pool = r2d2::Pool::builder()
            .max_size(max.max(1))
            .min_idle(Some(0))
            .connection_timeout(Duration::from_secs(30))
            .build_unchecked(Manager(location.clone()));
        StorePool { pool, location }
    }

    /// Borrow a store, waiting for a free one (at most 30 s).
    pub fn get(&self) -> Result<PooledStore> {
        self.pool.get().map_err(|e| StoreError::Pool { location: self.location.to_string(), message: e.to_string() })
    }

    pub fn location(&self) -> &StoreLocation {
        &self.location
    }
}

/// A [`Store`] that borrows a pooled connection for each operation: what a long-lived
/// user (an attempt driven on a server, for hours) holds instead of a connection of its
/// own, so a thousand waiting attempts do not need a thousand database connections. Each
/// operation is one transaction, as on a store of its own.
#[derive(Clone)]
pub struct PooledHandle(pub StorePool);

impl Store for PooledHandle {
    fn ping(&mut self) -> Result<()> {
        self.0.get()?.ping()
    }

    fn begin_attempt(&mut self, new: &NewAttempt) -> Result<AttemptRecord> {
        self.0.get()?.begin_attempt(new)
    }

    fn saved_results(&mut self, session_id: i64, before_attempt: i64) -> Result<HashMap<String, Done>> {
        self.0.get()?.saved_results(session_id, before_attempt)
    }

    fn unfinished_requests(&mut self, session_id: i64, before_attempt: i64) -> Result<HashMap<String, TaskRequest>> {
        self.0.get()?.unfinished_requests(session_id, before_attempt)
    }

    fn write(&mut self, changes: &[TaskChange]) -> Result<()> {
        self.0.get()?.write(changes)
    }

    fn finish_attempt(&mut self, attempt_id: i64, status: AttemptStatus) -> Result<()> {
        self.0.get()?.finish_attempt(attempt_id, status)
    }

    fn attempt(&mut self, attempt_id: i64) -> Result<AttemptRecord> {
        self.0.get()?.attempt(attempt_id)
    }

    fn session_attempts(&mut self, project: &str, workflow: &str, session_time: &str) -> Result<Vec<AttemptRecord>> {
        self.0.get()?.session_attempts(project, workflow, session_time)
    }

    fn running_attempts(&mut self, project: &str, workflow: &str) -> Result<Vec<(AttemptRecord, Option<u32>)>> {
        self.0.get()?.running_attempts(project, workflow)
    }

    fn tasks(&mut self, attempt_id: i64) -> Result<Vec<TaskRecord>> {
        self.0.get()?.tasks(attempt_id)
    }

    fn list_sessions(&mut self, workflow: Option<&str>) -> Result<Vec<SessionRecord>> {
        self.0.get()?.list_sessions(workflow)
    }

    fn list_attempts(&mut self, session_id: Option<i64>) -> Result<Vec<AttemptInfo>> {
        self.0.get()?.list_attempts(session_id)
    }

    fn attempt_info(&mut self, attempt_id: i64) -> Result<AttemptInfo> {
        self.0.get()?.attempt_info(attempt_id)
    }

    fn append_logs(&mut self, lines: &[LogLine]) -> Result<()> {
        self.0.get()?.append_logs(lines)
    }

    fn task_logs(&mut self, attempt_id: i64, prefix: &str) -> Result<Vec<LogLine>> {
        self.0.get()?.task_logs(attempt_id, prefix)
    }

    fn put_revision(&mut self, project: &str, name: &str, workflows: &[WorkflowDefinition]) -> Result<i64> {
        self.0.get()?.put_revision(project, name, workflows)
    }

    fn link_revision(&mut self, attempt_id: i64, revision_id: i64) -> Result<()> {
        self.0.get()?.link_revision(attempt_id, revision_id)
    }

    fn attempt_results(&mut self, attempt_id: i64) -> Result<HashMap<String, Done>> {
        self.0.get()?.attempt_results(attempt_id)
    }

    fn claim_attempt(&mut self, attempt_id: i64, pid: u32) -> Result<()> {
        self.0.get()?.claim_attempt(attempt_id, pid)
    }

    fn attempt_owner(&mut self, attempt_id: i64) -> Result<Option<u32>> {
        self.0.get()?.attempt_owner(attempt_id)
    }

    fn request_cancel(&mut self, attempt_id: i64) -> Result<()> {
        self.0.get()?.request_cancel(attempt_id)
    }

    fn cancel_requested(&mut self, attempt_id: i64) -> Result<bool> {
        self.0.get()?.cancel_requested(attempt_id)
    }

    fn cancel_requests(&mut self) -> Result<Vec<i64>> {
        self.0.get()?.cancel_requests()
    }

    fn get_value(&mut self, project: &str, key: &str) -> Result<Option<String>> {
        self.0.get()?.get_value(project, key)
    }

    fn set_value(&mut self, project: &str, key: &str, value: &str) -> Result<()> {
        self.0.get()?.set_value(project, key, value)
    }

    fn swap_value(&mut self, project: &str, key: &str, expected: Option<&str>, value: &str) -> Result<bool> {
        self.0.get()?.swap_value(project, key, expected, value)
    }

    fn push_revision(&mut self, new: &NewRevision<'_>) -> Result<Pushed> {
        self.0.get()?.push_revision(new)
    }

    fn projects(&mut self) -> Result<Vec<ProjectRecord>> {
        self.0.get()?.projects()
    }

    fn project(&mut self, id: i64) -> Result<ProjectRecord> {
        self.0.get()?.project(id)
    }

    fn project_named(&mut self, name: &str) -> Result<Option<ProjectRecord>> {
        self.0.get()?.project_named(name)
    }

    fn revisions(&mut self, project_id: i64) -> Result<Vec<RevisionRecord>> {
        self.0.get()?.revisions(project_id)
    }

    fn revision(&mut self, project_id: i64, name: Option<&str>) -> Result<RevisionRecord> {
        self.0.get()?.revision(project_id, name)
    }

    fn workflow_definitions(&mut self, revision_id: i64) -> Result<Vec<WorkflowDefinition>> {
        self.0.get()?.workflow_definitions(revision_id)
    }

    fn archive(&mut self, digest: &str) -> Result<Vec<u8>> {
        self.0.get()?.archive(digest)
    }
}

impl Queue for PooledHandle {
    fn enqueue(&mut self, call: &NewQueuedCall<'_>) -> Result<i64> {
        self.0.get()?.enqueue(call)
    }

    fn claim(&mut self, agent: &str, tags: &[String], max: usize, lease: Duration) -> Result<Vec<ClaimedCall>> {
        self.0.get()?.claim(agent, tags, max, lease)
    }

    fn heartbeat(&mut self, agent: &str, held: &[(i64, i64)], lease: Duration) -> Result<Vec<Held>> {
        self.0.get()?.heartbeat(agent, held, lease)
    }

    fn complete(&mut self, id: i64, token: i64, outcome: &str) -> Result<bool> {
        self.0.get()?.complete(id, token, outcome)
    }

    fn requeue_expired(&mut self, max_claims: i64, give_up: &dyn Fn(i64) -> String) -> Result<Vec<GivenUp>> {
        self.0.get()?.requeue_expired(max_claims, give_up)
    }

    fn call_state(&mut self, id: i64) -> Result<CallState> {
        self.0.get()?.call_state(id)
    }

    fn cancel_call(&mut self, id: i64, outcome: &str) -> Result<()> {
        self.0.get()?.cancel_call(id, outcome)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_are_reused() {
        let dir = tempfile::tempdir().unwrap();
        let pool = StorePool::new(StoreLocation::Sqlite(dir.path().join("s.db")), 2);
        {
            let mut s = pool.get().unwrap();
            s.set_value("p", "k", "v").unwrap();
        }
        let (mut a, mut b) = (pool.get().unwrap(), pool.get().unwrap());
        assert_eq!(a.get_value("p", "k").unwrap().as_deref(), Some("v"));
        assert_eq!(b.get_value("p", "k").unwrap().as_deref(), Some("v"));
        assert_eq!(pool.pool.state().connections, 2, "two borrowed at once, none opened beyond the cap");
    }
}
