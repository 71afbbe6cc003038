//! Schedule slots, without clocks or storage: what the scheduler keeps per workflow
//! ([`SlotState`]), which due slots start or are skipped ([`plan`]), and how `reschedule`
//! and `backfill` move over slots.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use spade_dig::Schedule;
use spade_dig::Zone;

/// What the scheduler keeps per workflow (`schedule:<workflow>` in the state database, as
/// JSON with unix times).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SlotState {
    /// The schedule this state was computed for; another one starts over.
    pub definition: String,
    /// The next slot to start and when it runs; none once past the schedule's `end`.
    #[serde(with = "unix_time")]
    pub next_session_time: Option<DateTime<Utc>>,
    #[serde(with = "unix_time")]
    pub next_run_time: Option<DateTime<Utc>>,
    /// The last slot handled (started or skipped).
    #[serde(with = "unix_time")]
    pub last_session_time: Option<DateTime<Utc>>,
    /// `spade disable`: no slot is decided until `spade enable`, which then catches up the
    /// slots that passed (bounded by `skip_delayed_by`), as after downtime.
    #[serde(default)]
    pub disabled: bool,
}

mod unix_time {
    use chrono::{DateTime, Utc};
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &Option<DateTime<Utc>>, s: S) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => s.serialize_some(&t.timestamp()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<DateTime<Utc>>, D::Error> {
        Ok(Option::<i64>::deserialize(d)?.and_then(|secs| DateTime::from_timestamp(secs, 0)))
    }
}

/// What to do with one due slot.
#[derive(Clone, Debug, PartialEq)]
pub enum Decision {
    Start(DateTime<Zone>),
    Skip(DateTime<Zone>, String),
}

pub fn definition(schedule: &Schedule) -> String {
    format!("{schedule:?}")
}

/// The state for `schedule` when there is none (or it was made for another schedule):
/// the first slot whose run time is at or after `now`.
pub fn fresh_state(schedule: &Schedule, now: DateTime<Utc>) -> SlotState {
    let first = schedule.first_schedule_time(now);
    SlotState {
        definition: definition(schedule),
        next_session_time: first.map(|t| t.session_time.with_timezone(&Utc)),
        next_run_time: first.map(|t| t.run_time.with_timezone(&Utc)),
        last_session_time: None,
        disabled: false,
    }
}

/// How `spade reschedule` moves a schedule.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Skip {
    /// Skip this many slots.
    Count(usize),
    /// Make the first slot at or after this time the next one.
    To(DateTime<Utc>),
}

/// Moves `state` forward as `skip` says (never backwards: slots already decided stay so).
pub fn skip_slots(schedule: &Schedule, state: &mut SlotState, skip: Skip) {
    let set = |state: &mut SlotState, next: Option<spade_dig::ScheduleTime>| {
        state.next_session_time = next.map(|t| t.session_time.with_timezone(&Utc));
        state.next_run_time = next.map(|t| t.run_time.with_timezone(&Utc));
    };
    match skip {
        Skip::Count(n) => {
            for _ in 0..n {
                let Some(current) = state.next_session_time else { return };
                state.last_session_time = Some(current);
                set(state, schedule.next_schedule_time(current.with_timezone(&schedule.timezone)));
            }
        }
        Skip::To(t) => {
            let target =
                schedule.next_schedule_time(t.with_timezone(&schedule.timezone) - chrono::Duration::seconds(1));
            let forward = match (state.next_session_time, target) {
                (Some(now), Some(to)) => to.session_time.with_timezone(&Utc) > now,
                (None, _) => false,
                (Some(_), None) => true,
            };
            if forward {
                state.last_session_time = state.next_session_time;
                set(state, target);
            }
        }
    }
}

/// Decides every slot of `state` due at `now` and advances `state` past them. `running`:
/// whether an attempt of the workflow is running (for `skip_on_overtime`). At most `limit`
/// slots are decided per call, so a long catch-up cannot flood the queue at once.
pub fn plan(
    schedule: &Schedule,
    state: &mut SlotState,
    now: DateTime<Utc>,
    running: bool,
    limit: usize,
) -> Vec<Decision> {
    if state.definition != definition(schedule) {
        *state = fresh_state(schedule, now);
    }
    let mut out = Vec::new();
    while out.len() < limit {
        let (Some(session), Some(run_at)) = (state.next_session_time, state.next_run_time) else { break };
        if run_at > now {
            break;
        }
        let session = session.with_timezone(&schedule.timezone);
        let decision = if schedule.is_delayed_too_much(run_at.with_timezone(&schedule.timezone), now) {
            Decision::Skip(session, format!("it is more than skip_delayed_by late (due at {run_at})"))
        } else if schedule.skip_on_overtime && running {
            Decision::Skip(session, "skip_on_overtime: an attempt of the workflow is still running".into())
        } else {
            Decision::Start(session)
        };
        out.push(decision);
        let next = schedule.next_schedule_time(session);
        state.last_session_time = Some(session.with_timezone(&Utc));
        state.next_session_time = next.map(|t| t.session_time.with_timezone(&Utc));
        state.next_run_time = next.map(|t| t.run_time.with_timezone(&Utc));
    }
    out
}

/// How a session time is written (and stored): ISO 8601 with the zone's offset.
pub fn session_text(t: DateTime<Zone>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%:z").to_string()
}

/// The slots from `from` (inclusive) up to, not including, `until`; at most `count`.
pub fn backfill_slots(
    schedule: &Schedule,
    from: DateTime<Zone>,
    until: DateTime<Utc>,
    count: Option<usize>,
) -> Vec<DateTime<Zone>> {
    let mut out = Vec::new();
    let mut next = schedule.next_schedule_time(from - chrono::Duration::seconds(1));
    while let Some(t) = next {
        if t.session_time.with_timezone(&Utc) >= until || count.is_some_and(|c| out.len() >= c) {
            break;
        }
        out.push(t.session_time);
        next = schedule.next_schedule_time(t.session_time);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use serde_json::json;

    fn schedule(cfg: serde_json::Value) -> Schedule {
        Schedule::parse(&cfg, Zone::UTC).unwrap().0
    }

    fn at(h: u32, m: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2024, 3, 1, h, m, 0).unwrap()
    }

    fn starts(d: &[Decision]) -> Vec<String> {
        d.iter()
            .filter_map(|d| match d {
                Decision::Start(t) => Some(t.format("%H:%M").to_string()),
                Decision::Skip(..) => None,
            })
            .collect()
    }

    #[test]
    fn first_slot_is_after_now_and_each_slot_starts_once() {
        let s = schedule(json!({"hourly>": "10:00"}));
        // 09:00's session runs at 09:10, which is still ahead at 09:05.
        let mut state = fresh_state(&s, at(9, 5));
        assert_eq!(state.next_session_time, Some(at(9, 0)));
        assert_eq!(state.next_run_time, Some(at(9, 10)));
        assert!(plan(&s, &mut state, at(9, 9), false, 100).is_empty(), "not due yet");
        assert_eq!(starts(&plan(&s, &mut state, at(9, 10), false, 100)), ["09:00"]);
        assert!(plan(&s, &mut state, at(9, 30), false, 100).is_empty(), "never twice");
        assert_eq!(state.last_session_time, Some(at(9, 0)));
        assert_eq!(state.next_run_time, Some(at(10, 10)));
    }

    #[test]
    fn downtime_is_caught_up_unless_skip_delayed_by_says_otherwise() {
        let s = schedule(json!({"hourly>": "00:00"}));
        let mut state = fresh_state(&s, at(1, 0));
        assert_eq!(starts(&plan(&s, &mut state, at(4, 30), false, 100)), ["01:00", "02:00", "03:00", "04:00"]);

        let s = schedule(json!({"hourly>": "00:00", "skip_delayed_by": "90m"}));
        let mut state = fresh_state(&s, at(1, 0));
        let d = plan(&s, &mut state, at(4, 30), false, 100);
        assert_eq!(starts(&d), ["03:00", "04:00"]);
        assert!(matches!(&d[0], Decision::Skip(_, why) if why.contains("skip_delayed_by")));
        assert_eq!(state.next_run_time, Some(at(5, 0)));
    }

    #[test]
    fn reschedule_only_moves_forward() {
        let s = schedule(json!({"hourly>": "00:00"}));
        let mut state = fresh_state(&s, at(1, 0));
        skip_slots(&s, &mut state, Skip::Count(2));
        assert_eq!((state.next_session_time, state.last_session_time), (Some(at(3, 0)), Some(at(2, 0))));
        skip_slots(&s, &mut state, Skip::To(at(6, 30)));
        assert_eq!(state.next_session_time, Some(at(7, 0)));
        skip_slots(&s, &mut state, Skip::To(at(2, 0)));
        assert_eq!(state.next_session_time, Some(at(7, 0)), "never back to slots already passed over");
        assert!(plan(&s, &mut state, at(6, 59), false, 100).is_empty());
    }

    #[test]
    fn backfill_takes_the_slots_from_a_time_up_to_a_bound() {
        let s = schedule(json!({"daily>": "07:00:00"}));
        let from = Utc.with_ymd_and_hms(2024, 3, 1, 0, 0, 0).unwrap().with_timezone(&Zone::UTC);
        let until = Utc.with_ymd_and_hms(2024, 3, 4, 0, 0, 0).unwrap();
        let days = |v: Vec<DateTime<Zone>>| v.iter().map(|t| t.format("%m-%d").to_string()).collect::<Vec<_>>();
        assert_eq!(days(backfill_slots(&s, from, until, None)), ["03-01", "03-02", "03-03"]);
        assert_eq!(days(backfill_slots(&s, from, until, Some(2))), ["03-01", "03-02"]);
        let later = from + chrono::Duration::hours(1);
        assert_eq!(days(backfill_slots(&s, later, until, None)), ["03-02", "03-03"]);
    }

    #[test]
    fn overtime_end_and_changed_schedules() {
        let s = schedule(json!({"hourly>": "00:00", "skip_on_overtime": true}));
        let mut state = fresh_state(&s, at(1, 0));
        let d = plan(&s, &mut state, at(1, 0), true, 100);
        assert!(matches!(&d[..], [Decision::Skip(_, why)] if why.contains("skip_on_overtime")));

        let s = schedule(json!({"daily>": "00:00:00", "end": "2024-03-02"}));
        let mut state = fresh_state(&s, at(1, 0));
        let later = Utc.with_ymd_and_hms(2024, 3, 9, 0, 0, 0).unwrap();
        let d = plan(&s, &mut state, later, false, 100);
        assert_eq!(d.len(), 1, "only 2024-03-02 is inside the window: {d:?}");
        assert_eq!(state.next_run_time, None);

        // Another schedule for the same workflow starts over from now.
        let daily = schedule(json!({"daily>": "06:00:00"}));
        let d = plan(&daily, &mut state, at(1, 0), false, 100);
        assert!(d.is_empty());
        assert_eq!(state.next_run_time, Some(at(6, 0)));
        assert_eq!(state.last_session_time, None);

        let s = schedule(json!({"minutes_interval>": 1}));
        let mut state = fresh_state(&s, at(1, 0));
        assert_eq!(plan(&s, &mut state, at(5, 0), false, 10).len(), 10, "the per-call limit");
    }
}
