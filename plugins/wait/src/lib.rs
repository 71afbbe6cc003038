//! `wait>: <duration>`: finish once the duration has passed since the task's first call
//! (Digdag WaitOperatorFactory). Durations use Digdag's syntax: `30s`, `10m`, `1h`, `2d`, or
//! a combination such as `1h 30m`.
//!
//! The first call records the end time in the poll state and returns a poll for the
//! remaining time (or every `poll_interval`); later calls finish once the wall clock passes
//! it. Because the end time lives in the persisted state, a host restart does not restart
//! the wait. `blocking: true` is accepted for compatibility but also polls: a plugin call is
//! bounded by the host's CPU-time limit, so sleeping inside it is not an option; as in Digdag
//! it cannot be combined with `poll_interval`. Uses no capability (only the WASI clock).

use std::time::{SystemTime, UNIX_EPOCH};

use spade_sdk::{Failure, Operator, Outcome, Request, Result, json};

pub struct Wait;

/// The poll state key holding the end of the wait, in Unix milliseconds.
const END_KEY: &str = "wait_end_time_millis";

impl Operator for Wait {
    fn run(req: Request) -> Result<Outcome> {
        let at = |m: String| Failure::new(format!("{}: {m}", req.location()));
        let duration = spade_sdk::duration::parse_seconds(&req.command_as::<String>()?).map_err(at)?;
        let blocking: bool = req.param_or("blocking", false)?;
        let poll_interval = match req.param::<String>("poll_interval")? {
            Some(text) => {
                Some(spade_sdk::duration::parse_seconds(&text).map_err(|m| at(format!("poll_interval: {m}")))?)
            }
            None => None,
        };
        if blocking && poll_interval.is_some() {
            return Err(at("poll_interval can't be specified with blocking:true".into()));
        }
        let end = match req.state.as_ref().and_then(|s| s.get(END_KEY)) {
            Some(v) => v.as_i64().ok_or_else(|| at(format!("unreadable poll state {v}; re-run the task")))?,
            None => now_millis().saturating_add(duration.saturating_mul(1000)),
        };
        Ok(match decide(now_millis(), end, poll_interval) {
            None => Outcome::done().into(),
            Some(after) => Outcome::poll(after, json!({ END_KEY: end })),
        })
    }
}

fn now_millis() -> i64 {
    let since = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
}

/// `None` when the wait is over (`end` reached; Digdag checks "after end" with
/// millisecond clocks, where an exact tie would cost a whole extra poll), otherwise the
/// seconds until the next call: the remaining time rounded up (at least 1 s) or
/// `poll_interval` (at least 1 s, so a `0s` interval cannot spin).
fn decide(now: i64, end: i64, poll_interval: Option<i64>) -> Option<u32> {
    if now >= end {
        return None;
    }
    let secs = match poll_interval {
        Some(interval) => interval,
        None => (end - now + 999) / 1000,
    };
    Some(u32::try_from(secs.max(1)).unwrap_or(u32::MAX))
}

spade_sdk::plugin!(Wait, name = "spade-wait", operators = ["wait"]);

#[cfg(test)]
mod tests {
    use super::*;
    use spade_sdk::Value;
    use spade_sdk::testing::{MockHost, request};

    #[test]
    fn decisions() {
        assert_eq!(decide(1_000, 11_000, None), Some(10));
        assert_eq!(decide(10_500, 11_000, None), Some(1));
        assert_eq!(decide(9_500, 11_000, None), Some(2));
        assert_eq!(decide(11_000, 11_000, None), None);
        assert_eq!(decide(11_001, 11_000, None), None);
        assert_eq!(decide(1_000, 61_000, Some(5)), Some(5));
        assert_eq!(decide(1_000, 61_000, Some(0)), Some(1));
    }

    fn run(req: Request) -> Result<Outcome> {
        MockHost::default().run::<Wait>(req)
    }

    #[test]
    fn first_call_polls_with_the_end_time() {
        let before = now_millis();
        let outcome = run(request("wait").command(json!("1h")).build()).unwrap();
        let Outcome::Poll { after_seconds, state } = outcome else { panic!("expected poll, got {outcome:?}") };
        assert!((3598..=3600).contains(&after_seconds), "{after_seconds}");
        let end = state[END_KEY].as_i64().unwrap();
        assert!(end >= before + 3_600_000 && end <= now_millis() + 3_600_000);
    }

    #[test]
    fn later_calls_use_the_saved_end() {
        let past = json!({ END_KEY: now_millis() - 1 });
        assert_eq!(run(request("wait").command(json!("1h")).state(past).build()), Ok(Outcome::done().into()));
        let soon = json!({ END_KEY: now_millis() + 30_000 });
        let outcome = run(request("wait").command(json!("1h")).state(soon.clone()).build()).unwrap();
        assert!(matches!(outcome, Outcome::Poll { after_seconds: 28..=30, ref state } if *state == soon));
        let outcome = run(request("wait").command(json!("1h")).local("poll_interval", json!("5s")).state(soon).build());
        assert!(matches!(outcome, Ok(Outcome::Poll { after_seconds: 5, .. })));
    }

    #[test]
    fn blocking_polls_too_but_rejects_poll_interval() {
        let outcome = run(request("wait").command(json!("10s")).local("blocking", json!(true)).build());
        assert!(matches!(outcome, Ok(Outcome::Poll { after_seconds: 9..=10, .. })), "{outcome:?}");
        let err = run(request("wait")
            .command(json!("10s"))
            .local("blocking", json!("true"))
            .local("poll_interval", json!("1s"))
            .build())
        .unwrap_err();
        assert!(err.message.contains("poll_interval can't be specified with blocking:true"));
    }

    #[test]
    fn bad_input() {
        assert!(
            run(request("wait").command(json!("soon")).build())
                .unwrap_err()
                .message
                .contains("invalid duration 'soon'")
        );
        assert!(run(request("wait").command(Value::Null).build()).is_err());
        assert!(run(request("wait").command(json!("1s")).state(json!({END_KEY: "x"})).build()).is_err());
    }
}
