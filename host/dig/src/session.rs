//! Session times: reading `spade run --session <TIME>` and turning local wall-clock times into
//! instants of a workflow's time zone.
//!
//! Everything happens in the workflow's zone, never the host's (the conformance runner sets
//! `TZ` to something else on purpose). Pure: `now` is always passed in.

use chrono::{DateTime, Duration, NaiveDate, NaiveDateTime, Offset, TimeZone, Timelike, Utc};

use crate::zone::Zone;

/// Why a `--session` value can't be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionTimeError {
    /// `last` and `schedule` depend on saved state or the workflow's schedule.
    #[error("--session {0} must be resolved by the caller (it needs the saved session or the schedule)")]
    NeedsContext(String),
    #[error(
        "invalid session time '{input}': {reason}; use yyyy-MM-dd, \"yyyy-MM-dd HH:mm:ss\" (read in the workflow's \
         timezone), daily, hourly, or an ISO 8601 time with offset such as 2024-01-01T09:00:00+09:00"
    )]
    Invalid { input: String, reason: String },
}

/// Parse a `--session` value in the workflow zone `tz` (Digdag's `Run.parseSessionTime`):
/// * `yyyy-MM-dd` -> that day at 00:00:00 in `tz`;
/// * `yyyy-MM-dd HH:mm:ss` -> that wall-clock time in `tz`;
/// * `daily` / `hourly` -> `now` truncated to the day / hour in `tz`;
/// * an ISO 8601 time with offset (`2024-01-01T00:00:00+09:00`, `...Z`) -> that instant, shown in `tz`.
///
/// `last` and `schedule` return [`SessionTimeError::NeedsContext`].
pub fn parse_session_time(arg: &str, tz: Zone, now: DateTime<Utc>) -> Result<DateTime<Zone>, SessionTimeError> {
    let s = arg.trim();
    let invalid = |reason: &str| SessionTimeError::Invalid { input: arg.to_string(), reason: reason.to_string() };
    match s {
        "daily" => return Ok(truncate_to_day(now.with_timezone(&tz))),
        "hourly" => return Ok(truncate_to_hour(now.with_timezone(&tz))),
        "last" | "schedule" => return Err(SessionTimeError::NeedsContext(s.to_string())),
        "" => return Err(invalid("it is empty")),
        _ => {}
    }
    if let Ok(d) = NaiveDate::parse_from_str(s, "%Y-%m-%d")
        && s.len() == 10
    {
        return Ok(resolve_local(tz, d.and_hms_opt(0, 0, 0).expect("midnight exists")));
    }
    if let Ok(dt) = NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S") {
        return Ok(resolve_local(tz, dt));
    }
    if let Ok(dt) = DateTime::parse_from_rfc3339(s) {
        return Ok(dt.with_timezone(&tz));
    }
    for fmt in ["%Y-%m-%dT%H:%M:%S%z", "%Y-%m-%dT%H:%M%:z", "%Y-%m-%d %H:%M:%S%:z", "%Y-%m-%d %H:%M:%S %z"] {
        if let Ok(dt) = DateTime::parse_from_str(s, fmt) {
            return Ok(dt.with_timezone(&tz));
        }
    }
    // Say what is wrong with almost-right input.
    if NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S").is_ok() {
        return Err(invalid("an ISO 8601 time needs an offset (Z or +09:00); or write it as \"yyyy-MM-dd HH:mm:ss\""));
    }
    if s.len() >= 10 && s.as_bytes()[4] == b'-' && NaiveDate::parse_from_str(&s[..10], "%Y-%m-%d").is_err() {
        return Err(invalid("that date does not exist"));
    }
    Err(invalid("not a date or time this command understands"))
}

/// The instant of a wall-clock time in `tz`, like Java's `ZonedDateTime.of`: in an overlap the
/// earlier offset is used; in a gap the time moves later by the length of the gap.
pub fn resolve_local(tz: Zone, naive: NaiveDateTime) -> DateTime<Zone> {
    match tz.from_local_datetime(&naive) {
        chrono::LocalResult::Single(t) => t,
        chrono::LocalResult::Ambiguous(a, b) => a.min(b),
        chrono::LocalResult::None => {
            // The offset in force just before the gap.
            let before = tz.offset_from_utc_datetime(&(naive - Duration::hours(26))).fix();
            let utc = naive - Duration::seconds(i64::from(before.local_minus_utc()));
            Utc.from_utc_datetime(&utc).with_timezone(&tz)
        }
    }
}

/// 00:00:00 of `t`'s day in its zone.
pub fn truncate_to_day(t: DateTime<Zone>) -> DateTime<Zone> {
    resolve_local(t.timezone(), t.date_naive().and_hms_opt(0, 0, 0).expect("midnight exists"))
}

/// The start of `t`'s hour in its zone.
pub fn truncate_to_hour(t: DateTime<Zone>) -> DateTime<Zone> {
    let back =
        Duration::seconds(i64::from(t.minute() * 60 + t.second())) + Duration::nanoseconds(i64::from(t.nanosecond()));
    t - back
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn dates_and_local_times_are_read_in_the_workflow_zone() {
        let tokyo = Zone::parse("Asia/Tokyo").unwrap();
        let now = utc("2024-05-05T12:00:00Z");
        assert_eq!(parse_session_time("2024-01-01", tokyo, now).unwrap().to_rfc3339(), "2024-01-01T00:00:00+09:00");
        assert_eq!(
            parse_session_time("2024-02-29 13:14:15", Zone::UTC, now).unwrap().to_rfc3339(),
            "2024-02-29T13:14:15+00:00"
        );
        assert_eq!(
            parse_session_time("2024-02-29 13:14:15", tokyo, now).unwrap().to_rfc3339(),
            "2024-02-29T13:14:15+09:00"
        );
    }

    #[test]
    fn daily_and_hourly_truncate_now_in_the_workflow_zone() {
        let tokyo = Zone::parse("Asia/Tokyo").unwrap();
        let ktm = Zone::parse("Asia/Kathmandu").unwrap();
        // 2024-05-05 20:30 UTC is already 05-06 in Tokyo.
        let now = utc("2024-05-05T20:30:45.5Z");
        assert_eq!(parse_session_time("daily", tokyo, now).unwrap().to_rfc3339(), "2024-05-06T00:00:00+09:00");
        assert_eq!(parse_session_time("daily", Zone::UTC, now).unwrap().to_rfc3339(), "2024-05-05T00:00:00+00:00");
        assert_eq!(parse_session_time("hourly", tokyo, now).unwrap().to_rfc3339(), "2024-05-06T05:00:00+09:00");
        assert_eq!(parse_session_time("hourly", ktm, now).unwrap().to_rfc3339(), "2024-05-06T02:00:00+05:45");
    }

    #[test]
    fn iso_with_offset_is_an_instant() {
        let tokyo = Zone::parse("Asia/Tokyo").unwrap();
        let now = utc("2024-05-05T12:00:00Z");
        assert_eq!(
            parse_session_time("2024-01-01T00:00:00Z", tokyo, now).unwrap().to_rfc3339(),
            "2024-01-01T09:00:00+09:00"
        );
        assert_eq!(
            parse_session_time("2024-01-01T09:00:00+09:00", Zone::UTC, now).unwrap().to_rfc3339(),
            "2024-01-01T00:00:00+00:00"
        );
        assert_eq!(
            parse_session_time("2024-01-01T09:00:00+0900", Zone::UTC, now).unwrap().to_rfc3339(),
            "2024-01-01T00:00:00+00:00"
        );
    }

    #[test]
    fn errors_say_what_is_accepted() {
        let now = utc("2024-05-05T12:00:00Z");
        let e = parse_session_time("yesterday", Zone::UTC, now).unwrap_err().to_string();
        assert!(e.starts_with("invalid session time 'yesterday': not a date"), "{e}");
        assert!(e.contains("yyyy-MM-dd"));
        let e = parse_session_time("2024-02-30", Zone::UTC, now).unwrap_err().to_string();
        assert!(e.contains("does not exist"), "{e}");
        let e = parse_session_time("2024-01-01T00:00:00", Zone::UTC, now).unwrap_err().to_string();
        assert!(e.contains("needs an offset"), "{e}");
        assert_eq!(
            parse_session_time("last", Zone::UTC, now).unwrap_err(),
            SessionTimeError::NeedsContext("last".into())
        );
    }

    #[test]
    fn dst_gaps_and_overlaps_follow_java() {
        let ny = Zone::parse("America/New_York").unwrap();
        let gap = NaiveDate::from_ymd_opt(2024, 3, 10).unwrap().and_hms_opt(2, 30, 0).unwrap();
        assert_eq!(resolve_local(ny, gap).to_rfc3339(), "2024-03-10T03:30:00-04:00");
        let overlap = NaiveDate::from_ymd_opt(2024, 11, 3).unwrap().and_hms_opt(1, 30, 0).unwrap();
        assert_eq!(resolve_local(ny, overlap).to_rfc3339(), "2024-11-03T01:30:00-04:00");
    }

    #[test]
    fn session_times_in_a_fixed_offset_zone() {
        let now = utc("2024-05-05T20:00:00Z");
        let plus9 = Zone::parse("+09:00").unwrap();
        assert_eq!(
            parse_session_time("2024-02-29 13:14:15", plus9, now).unwrap().to_rfc3339(),
            "2024-02-29T13:14:15+09:00"
        );
        assert_eq!(parse_session_time("daily", plus9, now).unwrap().to_rfc3339(), "2024-05-06T00:00:00+09:00");
        let t = parse_session_time("2024-01-01T00:00:00Z", Zone::parse("UTC-3").unwrap(), now).unwrap();
        assert_eq!((t.to_rfc3339().as_str(), t.timezone().name().as_str()), ("2023-12-31T21:00:00-03:00", "UTC-03:00"));
    }
}
