//! `sla:` of a workflow (Digdag's SlaCalculator and WorkflowExecutor's SLA monitor tasks).
//!
//! ```yaml
//! sla:
//!   time: 02:00          # or duration: 00:30:00 (exactly one of them)
//!   alert: true          # default true: report the violation (`^sla^alert`)
//!   fail: false          # default false: `^sla^fail` fails, so the attempt ends failed
//!   +notice:             # tasks run as `^sla` when the deadline is missed
//!     echo>: late
//! ```
//!
//! The deadline is computed from the attempt's run time: when it was started (`spade run`)
//! or, for a scheduled session, when its slot was due (session time plus `delay`). `time:`
//! is that run time's day in the workflow's zone with the clock set to `time`, one day later
//! if that is before the run time (so it is always within a day after it); `duration:` is
//! the run time plus the duration. Pure: no clock, no IO.

use chrono::{DateTime, Duration, LocalResult, NaiveTime, TimeZone, Utc};
use serde_json::Value;
use spade_api::Object;

/// When a workflow's SLA is missed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlaDeadline {
    /// `time: HH:MM[:SS]`: a wall-clock time in the workflow's zone.
    Time { hour: u32, minute: u32, second: u32 },
    /// `duration: HH:MM[:SS]`: seconds after the run time.
    Duration { seconds: i64 },
}

/// A parsed `sla:`.
#[derive(Clone, Debug, PartialEq)]
pub struct Sla {
    pub deadline: SlaDeadline,
    /// `alert:` (default true, as in Digdag).
    pub alert: bool,
    /// `fail:` (default false).
    pub fail: bool,
    /// The rest of the mapping: the `+` tasks (and group options) of `^sla`.
    pub tasks: Object,
}

fn hms(option: &str, value: &Value) -> Result<(u32, u32, u32), String> {
    let hint = format!("sla {option} must be HH:MM or HH:MM:SS, such as `{option}: 02:30` or `{option}: \"01:00:00\"`");
    let Value::String(text) = value else {
        return Err(format!("{hint}, not {value}"));
    };
    let parts: Vec<&str> = text.trim().split(':').collect();
    if !(2..=3).contains(&parts.len()) {
        return Err(format!("{hint}, not '{text}'"));
    }
    let mut nums = [0u32; 3];
    for (i, p) in parts.iter().enumerate() {
        nums[i] = p.trim().parse().map_err(|_| format!("{hint}, not '{text}'"))?;
    }
    if nums[1] > 59 || nums[2] > 59 {
        return Err(format!("{hint}: minutes and seconds go up to 59 in '{text}'"));
    }
    Ok((nums[0], nums[1], nums[2]))
}

fn flag(config: &Object, key: &str, default: bool) -> Result<bool, String> {
    match config.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Bool(b)) => Ok(*b),
        Some(Value::String(s)) if s == "true" || s == "false" => Ok(s == "true"),
        Some(other) => Err(format!("sla {key} must be true or false, not {other}")),
    }
}

impl Sla {
    /// Parse the value of `sla:`. Errors say which option is wrong and how to write it.
    pub fn parse(value: &Value) -> Result<Sla, String> {
        let Value::Object(config) = value else {
            return Err(format!(
                "sla must be a mapping such as `sla: {{time: 02:00, +notice: {{echo>: late}}}}`, not {value}"
            ));
        };
        let deadline = match (config.get("time"), config.get("duration")) {
            (Some(t), None) => {
                let (hour, minute, second) = hms("time", t)?;
                if hour > 23 {
                    return Err(format!(
                        "sla time is a time of day: the hour of '{}' must be 0 to 23",
                        t.as_str().unwrap_or("")
                    ));
                }
                SlaDeadline::Time { hour, minute, second }
            }
            (None, Some(d)) => {
                let (h, m, s) = hms("duration", d)?;
                SlaDeadline::Duration { seconds: h as i64 * 3600 + m as i64 * 60 + s as i64 }
            }
            _ => {
                return Err("sla must have exactly one of `time: HH:MM[:SS]` (a deadline in the workflow's timezone) \
                            and `duration: HH:MM[:SS]` (from the attempt's start)"
                    .into());
            }
        };
        let alert = flag(config, "alert", true)?;
        let fail = flag(config, "fail", false)?;
        let tasks: Object = config
            .iter()
            .filter(|(k, _)| !matches!(k.as_str(), "time" | "duration" | "alert" | "fail"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        Ok(Sla { deadline, alert, fail, tasks })
    }

    /// Whether `^sla` has tasks to run (`+` keys).
    pub fn has_tasks(&self) -> bool {
        self.tasks.keys().any(|k| k.starts_with('+'))
    }

    /// The deadline of an attempt whose run time is `run_time`, in the workflow's zone `tz`.
    pub fn trigger_time<Z: TimeZone>(&self, run_time: DateTime<Utc>, tz: &Z) -> DateTime<Utc> {
        match self.deadline {
            SlaDeadline::Duration { seconds } => run_time + Duration::seconds(seconds),
            SlaDeadline::Time { hour, minute, second } => {
                let clock = NaiveTime::from_hms_opt(hour, minute, second).expect("validated by parse");
                let local_day = run_time.with_timezone(tz).date_naive();
                let at_day = |day: chrono::NaiveDate| -> DateTime<Utc> {
                    let naive = day.and_time(clock);
                    match tz.from_local_datetime(&naive) {
                        LocalResult::Single(t) => t.with_timezone(&Utc),
                        LocalResult::Ambiguous(earlier, _) => earlier.with_timezone(&Utc),
                        // In a DST gap: the same wall time read with the offset before the gap.
                        LocalResult::None => {
                            let offset = tz.offset_from_utc_datetime(&(naive - Duration::hours(3)));
                            let t = naive - Duration::seconds(chrono::Offset::fix(&offset).local_minus_utc() as i64);
                            Utc.from_utc_datetime(&t)
                        }
                    }
                };
                let today = at_day(local_day);
                // Digdag adds a day when the time has passed (it assumes a daily SLA).
                if today < run_time { today + Duration::days(1) } else { today }
            }
        }
    }

    /// The deadline as written, e.g. `time 02:00:00` or `duration 00:30:00`.
    pub fn describe(&self) -> String {
        match self.deadline {
            SlaDeadline::Time { hour, minute, second } => format!("time {hour:02}:{minute:02}:{second:02}"),
            SlaDeadline::Duration { seconds } => {
                format!("duration {:02}:{:02}:{:02}", seconds / 3600, seconds / 60 % 60, seconds % 60)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn time_is_on_the_run_day_or_the_next_one() {
        let sla = Sla::parse(&json!({"time": "02:00"})).unwrap();
        assert!(sla.alert && !sla.fail && !sla.has_tasks());
        // Run at 01:00 UTC: 02:00 the same day.
        assert_eq!(sla.trigger_time(utc("2024-03-01T01:00:00Z"), &Utc), utc("2024-03-01T02:00:00Z"));
        // Run at 07:00 (a daily>: 07:00 slot): 02:00 the next day, as Digdag computes it.
        assert_eq!(sla.trigger_time(utc("2024-03-01T07:00:00Z"), &Utc), utc("2024-03-02T02:00:00Z"));
        // Exactly at the time: that time.
        assert_eq!(sla.trigger_time(utc("2024-03-01T02:00:00Z"), &Utc), utc("2024-03-01T02:00:00Z"));
    }

    #[test]
    fn time_is_read_in_the_workflow_zone() {
        let sla = Sla::parse(&json!({"time": "09:30:15"})).unwrap();
        let tokyo = chrono_tz::Asia::Tokyo;
        // 2024-03-01 08:00 in Tokyo is 2024-02-29 23:00 UTC: the deadline is 09:30:15 Tokyo that day.
        assert_eq!(sla.trigger_time(utc("2024-02-29T23:00:00Z"), &tokyo), utc("2024-03-01T00:30:15Z"));
    }

    #[test]
    fn duration_counts_from_the_run_time() {
        let sla =
            Sla::parse(&json!({"duration": "01:02:03", "fail": true, "alert": false, "+n": {"echo>": "x"}})).unwrap();
        assert!(sla.fail && !sla.alert && sla.has_tasks());
        assert_eq!(sla.trigger_time(utc("2024-03-01T23:00:00Z"), &Utc), utc("2024-03-02T00:02:03Z"));
        assert_eq!(sla.describe(), "duration 01:02:03");
        assert_eq!(sla.tasks.keys().collect::<Vec<_>>(), vec!["+n"]);
    }

    #[test]
    fn bad_options_are_explained() {
        let err = |v: Value| Sla::parse(&v).unwrap_err();
        assert!(err(json!({"+n": {}})).contains("exactly one of"));
        assert!(err(json!({"time": "02:00", "duration": "00:01"})).contains("exactly one of"));
        assert!(err(json!({"time": "2am"})).contains("HH:MM or HH:MM:SS"));
        assert!(err(json!({"time": "25:00"})).contains("0 to 23"));
        assert!(err(json!({"duration": "00:75"})).contains("up to 59"));
        assert!(err(json!({"duration": 5})).contains("HH:MM"));
        assert!(err(json!({"time": "02:00", "fail": "yes"})).contains("fail must be true or false"));
        assert!(err(json!("02:00")).contains("must be a mapping"));
    }
}
