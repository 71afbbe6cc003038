//! Running one TD job across polls, as Digdag's `TDOperator.runJob` does, without holding
//! an instance while it runs: issue it (with a domain key, so a repeated call finds the job
//! the first one started instead of starting another), then look at its status on each
//! call, backing off from 1 to 30 seconds, until it finished. A failed job fails the task
//! with the job's own output (Digdag's `cmdout` + `stderr`).
//!
//! Everything a later call needs is in [`State`], which the host persists with the poll.

use serde::{Deserialize, Serialize};
use spade_sdk::{Failure, Request};

use crate::api::{ApiError, Client};

/// Polling backoff bounds (Digdag's `config.td.min_poll_interval`/`max_poll_interval`).
pub const MIN_POLL_SECONDS: u32 = 1;
pub const MAX_POLL_SECONDS: u32 = 30;
/// Consecutive failed API calls (timeouts, 5xx, 429) tolerated before the task fails.
pub const MAX_TRANSIENT_ERRORS: u32 = 12;

/// One job's progress.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct JobState {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_id: Option<String>,
    /// Status checks that found it still running (the backoff exponent).
    #[serde(default)]
    pub polls: u32,
}

/// What the operators keep between calls.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct State {
    /// The main job while it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<JobState>,
    /// The main job, once it succeeded (its results are processed after).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub done_job_id: Option<String>,
    /// `preview:` of a table written by td>: a second job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preview: Option<JobState>,
    /// Consecutive transient API failures.
    #[serde(default)]
    pub errors: u32,
    /// Rounds of td_wait>/td_wait_table> (each round is a new job with its own key).
    #[serde(default)]
    pub round: u32,
    #[serde(default)]
    pub table_exists: bool,
    /// td_ddl>: operations done, rename sources checked.
    #[serde(default)]
    pub step: usize,
    #[serde(default)]
    pub checked: usize,
}

/// Why a step stopped: the API failed (maybe transiently), or the task must fail.
#[derive(Debug)]
pub enum Halt {
    Api(ApiError),
    Fail(Failure),
}

impl From<ApiError> for Halt {
    fn from(e: ApiError) -> Self {
        Halt::Api(e)
    }
}

impl From<Failure> for Halt {
    fn from(f: Failure) -> Self {
        Halt::Fail(f)
    }
}

/// A step's answer: ready, or call again after some seconds.
pub enum Step<T> {
    Ready(T),
    Later(u32),
}

/// A domain key unique to this task run, `purpose` and `round`, and the same on every call
/// of that run: TD refuses a second job with a key it has seen, naming the first job.
pub fn domain_key(req: &Request, purpose: &str, round: u32) -> String {
    format!("spade-{}", req.run_key(&format!("td/{purpose}/{round}")))
}

fn backoff(iteration: u32) -> u32 {
    MIN_POLL_SECONDS.saturating_mul(1u32.checked_shl(iteration.min(16)).unwrap_or(u32::MAX)).min(MAX_POLL_SECONDS)
}

/// Advances the job in `slot`: issues it with `start` (given the domain key) when it has
/// not been, then checks its status. Ready with the job id once it succeeded.
pub fn run_job(
    client: &Client,
    slot: &mut Option<JobState>,
    key: &str,
    start: impl FnOnce(&str) -> Result<String, Halt>,
) -> Result<Step<String>, Halt> {
    let job = slot.get_or_insert_with(JobState::default);
    let job_id = match &job.job_id {
        Some(id) => id.clone(),
        None => {
            let id = start(key)?;
            spade_sdk::log::info(format!("started TD job id={id}"));
            job.job_id = Some(id.clone());
            id
        }
    };
    let status = client.job_status(&job_id)?;
    if !status.finished() {
        let wait = backoff(job.polls);
        job.polls += 1;
        return Ok(Step::Later(wait));
    }
    if status.status != "success" {
        let info = client.job_info(&job_id)?;
        return Err(Halt::Fail(
            Failure::new(format!("TD job {job_id} {}:\n{}", status.status, info.failure_output().trim_end()))
                .retryable(),
        ));
    }
    Ok(Step::Ready(job_id))
}

/// The poll (or failure) for a halted step: deterministic API errors fail the task,
/// others poll again with backoff until [`MAX_TRANSIENT_ERRORS`].
pub fn after_halt(req: &Request, state: &mut State, halt: Halt) -> Result<u32, Failure> {
    match halt {
        Halt::Fail(f) => Err(Failure { message: format!("{}: {}", req.location(), f.message), ..f }),
        Halt::Api(e) if e.deterministic() => Err(Failure::new(format!("{}: {e}", req.location())).retryable()),
        Halt::Api(e) => {
            state.errors += 1;
            if state.errors > MAX_TRANSIENT_ERRORS {
                return Err(
                    Failure::new(format!("{}: {e} (gave up after {} tries)", req.location(), state.errors)).retryable()
                );
            }
            spade_sdk::log::warn(format!("{e}; trying again"));
            Ok(backoff(state.errors - 1))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_thirty_seconds() {
        let waits: Vec<u32> = (0..8).map(backoff).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 30, 30, 30]);
        assert_eq!(backoff(1000), 30);
    }

    #[test]
    fn domain_keys_differ_by_run_purpose_and_round() {
        let mut req = Request::new("td");
        req.session_uuid = "u".into();
        req.task_name = "+wf+t".into();
        let a = domain_key(&req, "job", 0);
        assert_eq!(a, domain_key(&req, "job", 0));
        assert_ne!(a, domain_key(&req, "job", 1));
        assert_ne!(a, domain_key(&req, "preview", 0));
        req.retry_count = 1;
        assert_ne!(a, domain_key(&req, "job", 0));
        assert!(a.starts_with("spade-") && a.len() == 38);
    }
}
