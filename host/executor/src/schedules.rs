//! The scheduler of pushed projects: every scheduled workflow of each project's latest
//! revision gets a session per slot, with the semantics of `spade scheduler`
//! (spade-scheduler): missed slots are caught up after downtime (bounded by
//! `skip_delayed_by`), `skip_on_overtime` holds, a slot never starts twice, and a revision
//! that changes a workflow's `schedule:` starts it over from the first slot after now.
//! The state of each workflow is kept among its project's values and advanced with a
//! compare-and-swap, so several servers sharing the database start each slot once.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use spade_scheduler::{Decision, SlotState, fresh_state, plan, session_text, state_key};
use spade_store::{AttemptRecord, ProjectRecord, Store};

use crate::{Executor, ExecutorError, StartAttempt};

/// Slots decided per workflow and tick, so a long catch-up does not flood the queue.
const SLOTS_PER_TICK: usize = 100;

impl Executor {
    /// Start the sessions due at `now` of every scheduled workflow of every project.
    /// Returns the attempts started. A project whose revision cannot be read is skipped
    /// (with a warning); the others still run.
    pub fn schedule_tick(self: &Arc<Self>, now: DateTime<Utc>) -> Result<Vec<AttemptRecord>, ExecutorError> {
        let projects = self.stores.get()?.projects()?;
        let mut started = Vec::new();
        for project in projects {
            if let Err(e) = self.schedule_project(&project, now, &mut started) {
                tracing::warn!(project = project.name, "scheduling: {e}");
            }
        }
        Ok(started)
    }

    fn schedule_project(
        self: &Arc<Self>,
        project: &ProjectRecord,
        now: DateTime<Utc>,
        started: &mut Vec<AttemptRecord>,
    ) -> Result<(), ExecutorError> {
        let Some(revision) = &project.latest else { return Ok(()) };
        let Some(digest) = &revision.archive_digest else { return Ok(()) };
        let mut store = self.stores.get()?;
        let (_, files) = self.unpacked(store.as_mut(), &project.name, &revision.name, digest)?;
        for wf in files.workflows.iter() {
            let Some(schedule) = &wf.schedule else { continue };
            let key = state_key(&wf.name);
            let stored = store.get_value(&project.name, &key)?;
            let loaded: Option<SlotState> = stored.as_deref().and_then(|t| serde_json::from_str(t).ok());
            let mut state = match loaded {
                Some(s) if s.disabled => continue,
                Some(s) => s,
                None => {
                    // First sight of this schedule: its first slot after now.
                    let fresh = fresh_state(schedule, now);
                    store.swap_value(&project.name, &key, stored.as_deref(), &json(&fresh))?;
                    continue;
                }
            };
            let running = schedule.skip_on_overtime && !store.running_attempts(&project.name, &wf.name)?.is_empty();
            let before = state.clone();
            let decisions = plan(schedule, &mut state, now, running, SLOTS_PER_TICK);
            if state != before && !store.swap_value(&project.name, &key, stored.as_deref(), &json(&state))? {
                continue; // another server decided these slots
            }
            for decision in decisions {
                match decision {
                    Decision::Start(session) => {
                        let text = session_text(session);
                        if !store.session_attempts(&project.name, &wf.name, &text)?.is_empty() {
                            tracing::info!(
                                project = project.name,
                                workflow = wf.name,
                                session = text,
                                "slot skipped: the session exists"
                            );
                            continue;
                        }
                        let start = StartAttempt {
                            project_id: project.id,
                            workflow: wf.name.clone(),
                            session_time: Some(text),
                            ..StartAttempt::default()
                        };
                        started.push(self.start(&start)?);
                    }
                    Decision::Skip(session, why) => {
                        tracing::info!(project = project.name, workflow = wf.name, session = %session, "slot skipped: {why}");
                    }
                }
            }
        }
        Ok(())
    }
}

fn json(state: &SlotState) -> String {
    serde_json::to_string(state).expect("plain data serializes")
}

/// What a push says about schedules (`schedule_from`, `clear_schedule`,
/// `clear_schedule_all`), applied to the revision just stored: named workflows (all with
/// `clear_all`) start over from `from` (or now), and workflows new to the project start
/// from `from` instead of now.
pub fn apply_push_schedules(
    store: &mut dyn Store,
    project: &str,
    workflows: &[spade_dig::WorkflowDef],
    from: Option<DateTime<Utc>>,
    clear: &[String],
    clear_all: bool,
) -> spade_store::Result<()> {
    let now = Utc::now();
    for wf in workflows {
        let Some(schedule) = &wf.schedule else { continue };
        let key = state_key(&wf.name);
        let stored = store.get_value(project, &key)?;
        let cleared = clear_all || clear.contains(&wf.name);
        if cleared || (stored.is_none() && from.is_some()) {
            let disabled =
                stored.as_deref().and_then(|t| serde_json::from_str::<SlotState>(t).ok()).is_some_and(|s| s.disabled);
            let state = SlotState { disabled, ..fresh_state(schedule, from.unwrap_or(now)) };
            store.set_value(project, &key, &json(&state))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use chrono::TimeZone;
    use spade_store::{NewRevision, StoreLocation, StorePool};

    use super::*;
    use crate::ExecutorConfig;

    fn push(stores: &StorePool, dir: &std::path::Path, revision: &str, dig: &str) {
        std::fs::write(dir.join("job.dig"), dig).unwrap();
        let packed = spade_archive::pack(dir, &Default::default()).unwrap();
        let defs = spade_engine::workflow_definitions(&spade_dig::load_project(dir).unwrap());
        stores
            .get()
            .unwrap()
            .push_revision(&NewRevision {
                project: "p",
                revision,
                archive: &packed.bytes,
                digest: &packed.digest(),
                workflows: &defs,
            })
            .unwrap();
    }

    fn sessions(started: &[AttemptRecord]) -> Vec<String> {
        started.iter().map(|a| a.session_time.clone()).collect()
    }

    #[test]
    fn slots_start_once_and_a_new_schedule_starts_over() {
        let dir = tempfile::tempdir().unwrap();
        let project = dir.path().join("project");
        std::fs::create_dir(&project).unwrap();
        let stores = StorePool::new(StoreLocation::Sqlite(dir.path().join("s.db")), 4);
        let executor = Executor::new(
            stores.clone(),
            ExecutorConfig {
                data_dir: dir.path().join("data"),
                engine: Default::default(),
                lease: Duration::from_secs(20),
                max_claims: 3,
            },
        );
        push(&stores, &project, "r1", "timezone: UTC\nschedule:\n  hourly>: 00:00\n+t:\n  echo>: hi\n");
        let at = |h: u32, m: u32| Utc.with_ymd_and_hms(2024, 3, 1, h, m, 0).unwrap();

        // First sight: the first slot after now, nothing started.
        assert!(executor.schedule_tick(at(9, 30)).unwrap().is_empty());
        // 10:00's slot is due at 10:00; two ticks start it once.
        assert_eq!(sessions(&executor.schedule_tick(at(10, 0)).unwrap()), ["2024-03-01T10:00:00+00:00"]);
        assert!(executor.schedule_tick(at(10, 0)).unwrap().is_empty(), "a slot starts once");
        // Downtime: 11:00 and 12:00 are caught up.
        assert_eq!(
            sessions(&executor.schedule_tick(at(12, 30)).unwrap()),
            ["2024-03-01T11:00:00+00:00", "2024-03-01T12:00:00+00:00"]
        );

        // A revision with another schedule starts over from its first slot after now.
        push(&stores, &project, "r2", "timezone: UTC\nschedule:\n  daily>: 07:00:00\n+t:\n  echo>: hi\n");
        assert!(executor.schedule_tick(at(13, 0)).unwrap().is_empty());
        let started = executor.schedule_tick(Utc.with_ymd_and_hms(2024, 3, 2, 7, 0, 0).unwrap()).unwrap();
        assert_eq!(sessions(&started), ["2024-03-02T00:00:00+00:00"]);

        // A push that clears the schedule from a time: its slots run from there.
        let mut store = stores.get().unwrap();
        let files = spade_dig::load_project(&project).unwrap();
        let from = Utc.with_ymd_and_hms(2024, 2, 28, 0, 0, 0).unwrap();
        apply_push_schedules(store.as_mut(), "p", &files.workflows, Some(from), &["job".into()], false).unwrap();
        drop(store);
        let started = executor.schedule_tick(Utc.with_ymd_and_hms(2024, 3, 2, 8, 0, 0).unwrap()).unwrap();
        assert_eq!(
            sessions(&started),
            ["2024-02-28T00:00:00+00:00", "2024-02-29T00:00:00+00:00", "2024-03-01T00:00:00+00:00"],
            "the session of 2024-03-02 already exists"
        );
    }
}
