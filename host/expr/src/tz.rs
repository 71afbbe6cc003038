//! Workflow-time-zone arithmetic behind the JS `Date` shim.
//!
//! QuickJS computes local time from the process `TZ`; Digdag computes it in the workflow's
//! `timezone:`. The shim (`js/date_shim.js`) asks these functions, backed by chrono-tz (or a fixed offset), for the
//! offset at an instant and for the instant of a wall-clock time. All times are JS time values
//! (milliseconds since the epoch, as `f64`); this module never panics on out-of-range input.

use chrono::{DateTime, LocalResult, Offset, TimeZone};
use spade_dig::Zone;

const DAY_MS: f64 = 86_400_000.0;

fn instant(t: f64) -> Option<DateTime<chrono::Utc>> {
    if !t.is_finite() {
        return None;
    }
    DateTime::from_timestamp_millis(t.floor() as i64)
}

/// Offset from UTC (local minus UTC, in ms) in effect at the instant `t`.
/// Outside chrono's range (beyond ±262,000 years) the offset is 0.
pub fn offset_ms(tz: Zone, t: f64) -> f64 {
    match instant(t) {
        Some(dt) => f64::from(tz.offset_from_utc_datetime(&dt.naive_utc()).fix().local_minus_utc()) * 1000.0,
        None => 0.0,
    }
}

/// The zone's abbreviation at `t` (`PST`, `JST`, `+0545`), as `Date.prototype.toString` shows it.
pub fn abbreviation(tz: Zone, t: f64) -> String {
    instant(t).map(|dt| tz.offset_from_utc_datetime(&dt.naive_utc()).abbreviation()).unwrap_or_default()
}

/// The instant (ms) whose wall-clock time in `tz` is `local` (a time value read as if it were
/// UTC), following ECMAScript's UTC(t): an ambiguous wall time (clocks set back) is the earlier
/// instant; a skipped one (clocks set forward) is read with the offset in effect before the
/// transition, so 02:30 on a spring-forward night becomes 03:30 daylight time.
pub fn local_to_utc(tz: Zone, local: f64) -> f64 {
    let Some(naive) = instant(local).map(|dt| dt.naive_utc()) else {
        return if local.is_finite() { local } else { f64::NAN };
    };
    let frac = local - local.floor();
    let utc_ms = match tz.from_local_datetime(&naive) {
        LocalResult::Single(dt) => dt.timestamp_millis() as f64,
        LocalResult::Ambiguous(a, b) => a.timestamp_millis().min(b.timestamp_millis()) as f64,
        // A gap lasts hours, never a day: the offset a day earlier is the one before it.
        LocalResult::None => local.floor() - offset_ms(tz, local - DAY_MS),
    };
    utc_ms + frac
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::NaiveDate;

    fn wall(y: i32, m: u32, d: u32, h: u32, mi: u32) -> f64 {
        NaiveDate::from_ymd_opt(y, m, d).unwrap().and_hms_opt(h, mi, 0).unwrap().and_utc().timestamp_millis() as f64
    }

    #[test]
    fn offsets_follow_dst() {
        let la = Zone::parse("America/Los_Angeles").unwrap();
        // 2016-03-13T10:00Z is after the spring-forward at 10:00Z exactly.
        assert_eq!(offset_ms(la, wall(2016, 3, 13, 9, 59)), -8.0 * 3_600_000.0);
        assert_eq!(offset_ms(la, wall(2016, 3, 13, 10, 0)), -7.0 * 3_600_000.0);
        assert_eq!(abbreviation(la, wall(2016, 1, 1, 0, 0)), "PST");
        let ktm = Zone::parse("Asia/Kathmandu").unwrap();
        assert_eq!(offset_ms(ktm, wall(2024, 1, 1, 0, 0)), 5.75 * 3_600_000.0);
    }

    #[test]
    fn fixed_offset_zones() {
        let minus = Zone::parse("-05:30").unwrap();
        assert_eq!(offset_ms(minus, wall(2024, 7, 1, 0, 0)), -5.5 * 3_600_000.0);
        assert_eq!(abbreviation(minus, wall(2024, 7, 1, 0, 0)), "-0530");
        assert_eq!(local_to_utc(minus, wall(2024, 7, 1, 0, 0)), wall(2024, 7, 1, 5, 30));
        assert_eq!(abbreviation(Zone::parse("UTC+9").unwrap(), 0.0), "+09");
    }

    #[test]
    fn local_to_utc_handles_gaps_and_overlaps() {
        let la = Zone::parse("America/Los_Angeles").unwrap();
        // Plain winter time.
        assert_eq!(local_to_utc(la, wall(2023, 2, 14, 0, 0)), wall(2023, 2, 14, 8, 0));
        // Skipped 02:30 on 2016-03-13 is read as PST: 10:30Z (= 03:30 PDT).
        assert_eq!(local_to_utc(la, wall(2016, 3, 13, 2, 30)), wall(2016, 3, 13, 10, 30));
        // Repeated 01:30 on 2016-11-06 is the earlier one (PDT): 08:30Z.
        assert_eq!(local_to_utc(la, wall(2016, 11, 6, 1, 30)), wall(2016, 11, 6, 8, 30));
        assert!(local_to_utc(la, f64::NAN).is_nan());
        assert_eq!(local_to_utc(la, 8.64e15), 8.64e15);
    }
}
