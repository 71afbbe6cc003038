//! Session times: reading `spade run --session <TIME>` and turning local wall-clock times into
//! instants of a workflow's time zone.
//!
//! Everything happens in the workflow's zone, never the host's (the conformance runner sets
//! `TZ` to something else on purpose). Pure: `now` is always passed in.

use chrono::{DateTime, Duration, NaiveDate, NaiveDateTime, Offset, TimeZone, Timelike, Utc};
use chrono_tz::Tz;

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
pub fn parse_session_time(arg: &str, tz: Tz, now: DateTime<Utc>) -> Result<DateTime<Tz>, SessionTimeError> {
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
pub fn resolve_local(tz: Tz, naive: NaiveDateTime) -> DateTime<Tz> {
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
pub fn truncate_to_day(t: DateTime<Tz>) -> DateTime<Tz> {
    resolve_local(t.timezone(), t.date_naive().and_hms_opt(0, 0, 0).expect("midnight exists"))
}

/// The start of `t`'s hour in its zone.
pub fn truncate_to_hour(t: DateTime<Tz>) -> DateTime<Tz> {
    let back =
        Duration::seconds(i64::from(t.minute() * 60 + t.second())) + Duration::nanoseconds(i64::from(t.nanosecond()));
    t - back
}

/// A time zone by IANA name (`UTC`, `Asia/Tokyo`), with a suggestion when it is misspelled.
pub fn parse_timezone(name: &str) -> Result<Tz, String> {
    if let Ok(tz) = name.parse::<Tz>() {
        return Ok(tz);
    }
    // Accept the case-insensitive spelling of a real zone name.
    if let Some(tz) = chrono_tz::TZ_VARIANTS.iter().find(|t| t.name().eq_ignore_ascii_case(name)) {
        return Ok(*tz);
    }
    let mut best: Vec<(usize, &str)> = chrono_tz::TZ_VARIANTS
        .iter()
        .map(|t| (crate::compile::levenshtein(&name.to_ascii_lowercase(), &t.name().to_ascii_lowercase()), t.name()))
        .filter(|(d, n)| *d <= (n.len() / 3).max(1))
        .collect();
    best.sort();
    let hint = match best.first() {
        Some((_, n)) => format!(" (did you mean {n}?)"),
        None => String::new(),
    };
    Err(format!("unknown time zone '{name}'{hint}; use an IANA name such as UTC, Asia/Tokyo or America/Los_Angeles"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn dates_and_local_times_are_read_in_the_workflow_zone() {
        let tokyo: Tz = "Asia/Tokyo".parse().unwrap();
        let now = utc("2024-05-05T12:00:00Z");
        assert_eq!(parse_session_time("2024-01-01", tokyo, now).unwrap().to_rfc3339(), "2024-01-01T00:00:00+09:00");
        assert_eq!(
            parse_session_time("2024-02-29 13:14:15", chrono_tz::UTC, now).unwrap().to_rfc3339(),
            "2024-02-29T13:14:15+00:00"
        );
        assert_eq!(
            parse_session_time("2024-02-29 13:14:15", tokyo, now).unwrap().to_rfc3339(),
            "2024-02-29T13:14:15+09:00"
        );
    }

    #[test]
    fn daily_and_hourly_truncate_now_in_the_workflow_zone() {
        let tokyo: Tz = "Asia/Tokyo".parse().unwrap();
        let ktm: Tz = "Asia/Kathmandu".parse().unwrap();
        // 2024-05-05 20:30 UTC is already 05-06 in Tokyo.
        let now = utc("2024-05-05T20:30:45.5Z");
        assert_eq!(parse_session_time("daily", tokyo, now).unwrap().to_rfc3339(), "2024-05-06T00:00:00+09:00");
        assert_eq!(parse_session_time("daily", chrono_tz::UTC, now).unwrap().to_rfc3339(), "2024-05-05T00:00:00+00:00");
        assert_eq!(parse_session_time("hourly", tokyo, now).unwrap().to_rfc3339(), "2024-05-06T05:00:00+09:00");
        assert_eq!(parse_session_time("hourly", ktm, now).unwrap().to_rfc3339(), "2024-05-06T02:00:00+05:45");
    }

    #[test]
    fn iso_with_offset_is_an_instant() {
        let tokyo: Tz = "Asia/Tokyo".parse().unwrap();
        let now = utc("2024-05-05T12:00:00Z");
        assert_eq!(
            parse_session_time("2024-01-01T00:00:00Z", tokyo, now).unwrap().to_rfc3339(),
            "2024-01-01T09:00:00+09:00"
        );
        assert_eq!(
            parse_session_time("2024-01-01T09:00:00+09:00", chrono_tz::UTC, now).unwrap().to_rfc3339(),
            "2024-01-01T00:00:00+00:00"
        );
        assert_eq!(
            parse_session_time("2024-01-01T09:00:00+0900", chrono_tz::UTC, now).unwrap().to_rfc3339(),
            "2024-01-01T00:00:00+00:00"
        );
    }

    #[test]
    fn errors_say_what_is_accepted() {
        let now = utc("2024-05-05T12:00:00Z");
        let e = parse_session_time("yesterday", chrono_tz::UTC, now).unwrap_err().to_string();
        assert!(e.starts_with("invalid session time 'yesterday': not a date"), "{e}");
        assert!(e.contains("yyyy-MM-dd"));
        let e = parse_session_time("2024-02-30", chrono_tz::UTC, now).unwrap_err().to_string();
        assert!(e.contains("does not exist"), "{e}");
        let e = parse_session_time("2024-01-01T00:00:00", chrono_tz::UTC, now).unwrap_err().to_string();
        assert!(e.contains("needs an offset"), "{e}");
        assert_eq!(
            parse_session_time("last", chrono_tz::UTC, now).unwrap_err(),
            SessionTimeError::NeedsContext("last".into())
        );
    }

    #[test]
    fn dst_gaps_and_overlaps_follow_java() {
        let ny: Tz = "America/New_York".parse().unwrap();
        let gap = NaiveDate::from_ymd_opt(2024, 3, 10).unwrap().and_hms_opt(2, 30, 0).unwrap();
        assert_eq!(resolve_local(ny, gap).to_rfc3339(), "2024-03-10T03:30:00-04:00");
        let overlap = NaiveDate::from_ymd_opt(2024, 11, 3).unwrap().and_hms_opt(1, 30, 0).unwrap();
        assert_eq!(resolve_local(ny, overlap).to_rfc3339(), "2024-11-03T01:30:00-04:00");
    }

    #[test]
    fn timezone_names() {
        assert_eq!(parse_timezone("Asia/Tokyo").unwrap().name(), "Asia/Tokyo");
        assert_eq!(parse_timezone("utc").unwrap().name(), "UTC");
        let e = parse_timezone("Asia/Tokio").unwrap_err();
        assert!(e.contains("did you mean Asia/Tokyo?"), "{e}");
        assert!(parse_timezone("Nowhere/Special").is_err());
    }
}
