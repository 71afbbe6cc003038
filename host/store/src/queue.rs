//! The task queue: operator calls waiting for an agent, claimed under leases.
//!
//! The server's executor enqueues one row per operator call (a poll of a waiting task is a
//! new call, so nothing waits on an agent between polls). An agent claims at most as many
//! rows as it has free slots; each claim increments the row's fencing `token` and sets a
//! lease the agent extends with heartbeats. A result is accepted only with the current
//! token of a claimed row, so an agent whose lease ran out (dead, or cut off and then back)
//! cannot overwrite what another agent did since. Expired leases go back to the queue,
//! up to a number of claims: a call that keeps killing its agents then fails with a clear
//! error instead of looping (Digdag #409).
//!
//! The rows hold the frozen request and the outcome as JSON text: the store does not
//! interpret them.

use std::time::Duration;

use crate::{Result, now_ms};

/// An operator call to queue.
#[derive(Clone, Debug)]
pub struct NewQueuedCall<'a> {
    pub attempt_id: i64,
    pub task_name: &'a str,
    /// The revision archive the call runs in (its workspace is extracted from it).
    pub archive_digest: Option<&'a str>,
    /// Only agents with this tag may claim it.
    pub tag: Option<&'a str>,
    /// The agent that should take it: the one that ran the task's previous call, where
    /// the task's commands still run and its workspace is. Another agent may take it once it
    /// has waited a lease (that agent is gone).
    pub affinity: Option<&'a str>,
    /// The frozen request (JSON).
    pub request: &'a str,
}

/// A call an agent claimed.
#[derive(Clone, Debug, PartialEq)]
pub struct ClaimedCall {
    pub id: i64,
    /// The fencing token of this claim: give it back with heartbeats and the result.
    pub token: i64,
    pub attempt_id: i64,
    pub task_name: String,
    pub archive_digest: Option<String>,
    pub request: String,
}

/// What a heartbeat says about one held call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Held {
    /// Still the agent's; the lease is extended.
    Kept { cancel_requested: bool },
    /// The lease expired and the call went to the queue again (or ended): stop it.
    Lost,
}

/// The state of a queued call, for the executor waiting on it.
#[derive(Clone, Debug, PartialEq)]
pub enum CallState {
    Queued,
    Claimed {
        agent: String,
    },
    /// The outcome (JSON) the holder reported, or the queue's own (given up), and the
    /// agent that held it last.
    Done {
        outcome: String,
        agent: Option<String>,
    },
}

/// A call the queue gave up on after too many claims.
#[derive(Clone, Debug, PartialEq)]
pub struct GivenUp {
    pub id: i64,
    pub task_name: String,
    pub claims: i64,
}

pub(crate) const ENQUEUE: &str =
    "INSERT INTO task_queue (attempt_id, task_name, archive_digest, tag, affinity, request,
        state, created_at)
     VALUES ($1, $2, $3, $4, $5, $6, 'queued', $7) RETURNING id";

/// Calls that should go to this agent (`$1`): the next polls of its tasks. An agent takes
/// them whatever its free slots, as each continues work that already holds a slot there.
pub(crate) const CLAIMABLE_OWN: &str = "SELECT id FROM task_queue WHERE state = 'queued' AND affinity = $1 ORDER BY id";

/// The other rows a claim takes: queued, of a tag the agent has (or none), oldest first,
/// not meant for another agent unless they waited longer than a lease. `$1` is the agent's
/// tags as `,a,b,` (tags never contain `,`, `%` or `_`), `$2` when a lease ago was, `$3`
/// how many.
pub(crate) const CLAIMABLE: &str = "SELECT id FROM task_queue
     WHERE state = 'queued' AND (tag IS NULL OR $1 LIKE '%,' || tag || ',%')
       AND (affinity IS NULL OR created_at < $2)
     ORDER BY id LIMIT $3";

pub(crate) const CLAIM: &str =
    "UPDATE task_queue SET state = 'claimed', agent = $1, token = token + 1, lease_until = $2,
        claims = claims + 1
     WHERE id = $3 AND state = 'queued'
     RETURNING id, token, attempt_id, task_name, archive_digest, request";

pub(crate) const EXTEND: &str = "UPDATE task_queue SET lease_until = $1
     WHERE id = $2 AND token = $3 AND agent = $4 AND state = 'claimed'
     RETURNING cancel_requested";

pub(crate) const COMPLETE: &str =
    "UPDATE task_queue SET state = 'done', outcome = $1, finished_at = $2, lease_until = NULL
     WHERE id = $3 AND token = $4 AND state = 'claimed'";

/// Expired leases: `$1` now.
pub(crate) const EXPIRED: &str =
    "SELECT id, task_name, claims FROM task_queue WHERE state = 'claimed' AND lease_until < $1 ORDER BY id";

pub(crate) const REQUEUE: &str = "UPDATE task_queue SET state = 'queued', agent = NULL, lease_until = NULL
     WHERE id = $1 AND state = 'claimed' AND lease_until < $2";

pub(crate) const GIVE_UP: &str =
    "UPDATE task_queue SET state = 'done', outcome = $1, finished_at = $2, lease_until = NULL
     WHERE id = $3 AND state = 'claimed' AND lease_until < $4";

pub(crate) const STATE: &str = "SELECT state, agent, outcome FROM task_queue WHERE id = $1";

pub(crate) const CANCEL: &str = "UPDATE task_queue SET cancel_requested = TRUE WHERE id = $1";

/// A queued call that nobody claimed yet ends at once when cancelled.
pub(crate) const CANCEL_QUEUED: &str =
    "UPDATE task_queue SET state = 'done', outcome = $1, finished_at = $2 WHERE id = $3 AND state = 'queued'";

/// Migration 4 with the backend's auto-increment key (the rest is the same on both).
macro_rules! migration_4 {
    ($id:literal) => {
        concat!(
            "CREATE TABLE task_queue (
                id ",
            $id,
            ",
                attempt_id BIGINT NOT NULL,
                task_name TEXT NOT NULL,
                archive_digest TEXT,
                tag TEXT,
                affinity TEXT,
                request TEXT NOT NULL,
                -- queued, claimed or done
                state TEXT NOT NULL,
                agent TEXT,
                -- Fencing: incremented by every claim; only the current holder's result counts.
                token BIGINT NOT NULL DEFAULT 0,
                lease_until BIGINT,
                claims BIGINT NOT NULL DEFAULT 0,
                cancel_requested BOOLEAN NOT NULL DEFAULT FALSE,
                outcome TEXT,
                created_at BIGINT NOT NULL,
                finished_at BIGINT
            );
            CREATE INDEX task_queue_by_state ON task_queue (state, id);"
        )
    };
}

pub(crate) const MIGRATION_4_SQLITE: &str = migration_4!("INTEGER PRIMARY KEY");
pub(crate) const MIGRATION_4_POSTGRES: &str = migration_4!("BIGSERIAL PRIMARY KEY");

/// The operator-call queue (see the module docs). Both stores implement it.
pub trait Queue {
    /// Queue a call; its id.
    fn enqueue(&mut self, call: &NewQueuedCall<'_>) -> Result<i64>;
    /// Claim up to `max` queued calls for `agent`, which has `tags`, for `lease`.
    fn claim(&mut self, agent: &str, tags: &[String], max: usize, lease: Duration) -> Result<Vec<ClaimedCall>>;
    /// Extend the leases of the calls `agent` holds, given as `(id, token)`.
    fn heartbeat(&mut self, agent: &str, held: &[(i64, i64)], lease: Duration) -> Result<Vec<Held>>;
    /// Record the outcome of a claimed call; false (and nothing changes) unless `token` is
    /// the current claim's.
    fn complete(&mut self, id: i64, token: i64, outcome: &str) -> Result<bool>;
    /// Put calls whose lease expired back in the queue; a call claimed `max_claims` times
    /// already ends with `give_up(claims)` as its outcome instead. The calls given up.
    fn requeue_expired(&mut self, max_claims: i64, give_up: &dyn Fn(i64) -> String) -> Result<Vec<GivenUp>>;
    fn call_state(&mut self, id: i64) -> Result<CallState>;
    /// Ask the holder to stop the call; a call still queued ends at once with `outcome`.
    fn cancel_call(&mut self, id: i64, outcome: &str) -> Result<()>;
}

/// `,a,b,`: the form [`CLAIMABLE`] matches a row's tag in.
pub(crate) fn tag_list(tags: &[String]) -> String {
    let mut s = String::from(",");
    for t in tags {
        s.push_str(t);
        s.push(',');
    }
    s
}

/// Whether `tag` may name an agent tag: letters, digits, `-` and `.` (nothing a `LIKE`
/// pattern or the tag list's separator would read differently).
pub fn valid_tag(tag: &str) -> bool {
    !tag.is_empty() && tag.len() <= 64 && tag.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
}

/// When a lease of `lease` that started now would have begun to run out: affine calls
/// older than this are anyone's.
pub(crate) fn lease_ago(lease: Duration) -> i64 {
    now_ms() - i64::try_from(lease.as_millis()).unwrap_or(i64::MAX / 2)
}

pub(crate) fn lease_end(lease: Duration) -> i64 {
    now_ms() + i64::try_from(lease.as_millis()).unwrap_or(i64::MAX / 2)
}

pub(crate) fn call_state(state: &str, agent: Option<String>, outcome: Option<String>) -> CallState {
    match state {
        "queued" => CallState::Queued,
        "claimed" => CallState::Claimed { agent: agent.unwrap_or_default() },
        _ => CallState::Done { outcome: outcome.unwrap_or_default(), agent },
    }
}
