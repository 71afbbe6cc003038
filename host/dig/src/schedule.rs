//! `schedule:` of a workflow: parsing, validation and the slot arithmetic (Digdag's scheduler
//! factories and `CronScheduler`).
//!
//! Every kind is a cron pattern plus a delay, as in Digdag: `daily>: 04:30:00` has session
//! times at 00:00 every day and runs 4.5 hours later; `cron>` and `minutes_interval>` run at
//! their session time plus `delay`. Slots are computed in the workflow's zone by a small cron
//! matcher with cron4j's rules (5 fields, names, `L` = last day of month, `|` between
//! alternative patterns, day-of-month AND day-of-week). Pure: no clock is read.

use chrono::{DateTime, Datelike, Duration, NaiveDate, TimeZone, Utc};
use serde_json::Value;

use crate::compile::{as_bool, as_int, describe, suggest};
use crate::session::resolve_local;
use crate::zone::Zone;

/// A validated `schedule:`.
#[derive(Clone, Debug, PartialEq)]
pub struct Schedule {
    /// `daily`, `hourly`, `weekly`, `monthly`, `minutes_interval`, `seconds_interval` or `cron`.
    pub kind: String,
    /// The argument as written (`04:30:00`, `0 * * * *`, `15` ...).
    pub command: String,
    pub timezone: Zone,
    /// Seconds between a session time and the time it runs.
    pub delay_secs: i64,
    pub skip_on_overtime: bool,
    /// Skip a run whose due time is older than this many seconds.
    pub skip_delayed_by_secs: Option<u64>,
    /// First active day (inclusive), in the workflow zone.
    pub start: Option<NaiveDate>,
    /// Last active day (inclusive), in the workflow zone.
    pub end: Option<NaiveDate>,
    slots: Slots,
}

#[derive(Clone, Debug, PartialEq)]
enum Slots {
    Cron(CronPattern),
    /// Every N seconds since the epoch (zone independent).
    Seconds(i64),
}

/// One planned session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScheduleTime {
    pub session_time: DateTime<Zone>,
    pub run_time: DateTime<Zone>,
}

/// A problem in `schedule:`; `key` is the option at fault (for its position).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScheduleIssue {
    pub key: Option<String>,
    pub message: String,
}

impl ScheduleIssue {
    fn new(key: Option<&str>, message: impl Into<String>) -> Self {
        ScheduleIssue { key: key.map(str::to_string), message: message.into() }
    }
}

const KINDS: &[&str] = &["hourly", "daily", "weekly", "monthly", "minutes_interval", "seconds_interval", "cron"];
const OPTIONS: &[&str] = &["delay", "skip_on_overtime", "skip_delayed_by", "start", "end", "at", "_type", "_command"];

/// How many days the matcher looks ahead or back before deciding a pattern never matches
/// (covers leap days).
const SEARCH_DAYS: i64 = 366 * 8 + 2;

impl Schedule {
    /// Parse `schedule:` in the workflow zone. Returns the schedule and warnings (options
    /// Digdag ignores), or every error found.
    pub fn parse(value: &Value, timezone: Zone) -> Result<(Schedule, Vec<ScheduleIssue>), Vec<ScheduleIssue>> {
        let Value::Object(cfg) = value else {
            return Err(vec![ScheduleIssue::new(
                None,
                format!("schedule must be a mapping such as `schedule: {{daily>: 07:00:00}}`, not {}", describe(value)),
            )]);
        };
        let mut errors = Vec::new();
        let mut warnings = Vec::new();

        let op_keys: Vec<&String> = cfg.keys().filter(|k| k.ends_with('>')).collect();
        let (kind, kind_key, command) = match (op_keys.as_slice(), cfg.get("_type")) {
            ([k], None) => (k.trim_end_matches('>').to_string(), k.to_string(), cfg.get(k.as_str())),
            ([], Some(Value::String(t))) => {
                (t.clone(), "_type".to_string(), cfg.get("_command").or_else(|| cfg.get("at")))
            }
            ([], _) => {
                return Err(vec![ScheduleIssue::new(
                    None,
                    "schedule needs a kind, e.g. `daily>: 07:00:00`, `hourly>: 30:00`, `weekly>: Sun,09:00:00`, \
                     `monthly>: 1,09:00:00`, `minutes_interval>: 15` or `cron>: '0 * * * *'`",
                )]);
            }
            (keys, _) => {
                let names: Vec<&str> = keys.iter().map(|k| k.as_str()).collect();
                return Err(vec![ScheduleIssue::new(
                    Some(keys.last().map(|k| k.as_str()).unwrap_or("_type")),
                    format!("schedule can have only one kind (found {})", names.join(", ")),
                )]);
            }
        };
        if !KINDS.contains(&kind.as_str()) {
            let s = suggest(&kind, KINDS.iter().copied(), 0.5);
            let dym = if s.is_empty() { String::new() } else { format!(" (did you mean {}>?)", s[0]) };
            return Err(vec![ScheduleIssue::new(
                Some(&kind_key),
                format!(
                    "unknown schedule kind '{kind}>'{dym}; use hourly>, daily>, weekly>, monthly>, minutes_interval>, \
                     seconds_interval> or cron>"
                ),
            )]);
        }
        let command_text = match command {
            Some(Value::String(s)) => s.trim().to_string(),
            Some(Value::Number(n)) => n.to_string(),
            Some(other) => {
                return Err(vec![ScheduleIssue::new(
                    Some(&kind_key),
                    format!("{kind}> needs a value such as {}, not {}", example(&kind), describe(other)),
                )]);
            }
            None => {
                return Err(vec![ScheduleIssue::new(
                    Some(&kind_key),
                    format!("{kind}> needs a value such as {}", example(&kind)),
                )]);
            }
        };

        for k in cfg.keys() {
            if !k.ends_with('>') && !OPTIONS.contains(&k.as_str()) {
                let s = suggest(k, OPTIONS.iter().copied(), 0.5);
                let dym = if s.is_empty() { String::new() } else { format!(" (did you mean {}?)", s[0]) };
                warnings.push(ScheduleIssue::new(Some(k), format!("schedule option '{k}' is not used{dym}")));
            }
        }

        let delay = match cfg.get("delay") {
            None => 0,
            Some(v) => match as_int(v) {
                Some(n) if n >= 0 => n,
                _ => {
                    errors.push(ScheduleIssue::new(
                        Some("delay"),
                        format!("delay must be a number of seconds (0 or more), not {}", describe(v)),
                    ));
                    0
                }
            },
        };
        let uses_delay = matches!(kind.as_str(), "cron" | "minutes_interval" | "seconds_interval");
        if cfg.contains_key("delay") && !uses_delay {
            warnings.push(ScheduleIssue::new(
                Some("delay"),
                format!("delay is ignored by {kind}> (its time of day already sets when it runs)"),
            ));
        }

        let slots_and_delay: Result<(Slots, i64), String> = match kind.as_str() {
            "daily" => parse_at(&kind, &command_text, 3).map(|d| (Slots::Cron(CronPattern::fixed("0 0 * * *")), d)),
            "hourly" => parse_at(&kind, &command_text, 2).map(|d| (Slots::Cron(CronPattern::fixed("0 * * * *")), d)),
            "weekly" => parse_weekly(&command_text),
            "monthly" => parse_monthly(&command_text),
            "minutes_interval" => match command_text.parse::<i64>() {
                Ok(n) if (1..=59).contains(&n) => {
                    Ok((Slots::Cron(CronPattern::fixed(&format!("*/{n} * * * *"))), delay))
                }
                Ok(n) => Err(format!(
                    "minutes_interval> must be between 1 and 59, not {n} (the count restarts every hour); use cron> for \
                     other intervals"
                )),
                Err(_) => Err(format!("minutes_interval> needs a number of minutes such as 15, not '{command_text}'")),
            },
            "seconds_interval" => match command_text.parse::<i64>() {
                Ok(n) if n >= 1 => Ok((Slots::Seconds(n), delay)),
                _ => Err(format!("seconds_interval> needs a number of seconds (1 or more), not '{command_text}'")),
            },
            "cron" => CronPattern::parse(&command_text)
                .map(|p| (Slots::Cron(p), delay))
                .map_err(|e| format!("cron> '{command_text}': {e}")),
            _ => unreachable!("kind checked above"),
        };
        let (slots, delay_secs) = match slots_and_delay {
            Ok(x) => x,
            Err(msg) => {
                errors.push(ScheduleIssue::new(Some(&kind_key), msg));
                (Slots::Seconds(1), 0)
            }
        };

        let skip_on_overtime = match cfg.get("skip_on_overtime") {
            None | Some(Value::Null) => false,
            Some(v) => as_bool(v).unwrap_or_else(|| {
                errors.push(ScheduleIssue::new(
                    Some("skip_on_overtime"),
                    format!("skip_on_overtime must be true or false, not {}", describe(v)),
                ));
                false
            }),
        };
        let skip_delayed_by_secs = match cfg.get("skip_delayed_by") {
            None | Some(Value::Null) => None,
            Some(v) => match parse_duration(v) {
                Ok(s) => Some(s),
                Err(e) => {
                    errors.push(ScheduleIssue::new(Some("skip_delayed_by"), e));
                    None
                }
            },
        };
        let mut date_opt = |key: &str| -> Option<NaiveDate> {
            let v = cfg.get(key)?;
            let parsed = match v {
                Value::String(s) => {
                    NaiveDate::parse_from_str(s.trim(), "%Y-%m-%d").ok().filter(|_| s.trim().len() == 10)
                }
                _ => None,
            };
            if parsed.is_none() {
                errors.push(ScheduleIssue::new(
                    Some(key),
                    format!("{key} must be a date written yyyy-MM-dd, not {}", describe(v)),
                ));
            }
            parsed
        };
        let start = date_opt("start");
        let end = date_opt("end");
        if let (Some(s), Some(e)) = (start, end)
            && e < s
        {
            errors.push(ScheduleIssue::new(Some("end"), format!("the schedule ends ({e}) before it starts ({s})")));
        }

        let schedule = Schedule {
            kind,
            command: command_text,
            timezone,
            delay_secs,
            skip_on_overtime,
            skip_delayed_by_secs,
            start,
            end,
            slots,
        };
        if errors.is_empty() && schedule.next_session_time(reference_time(timezone)).is_none() {
            errors.push(ScheduleIssue::new(
                Some(&kind_key),
                format!("{}> '{}' never matches any date", schedule.kind, schedule.command),
            ));
        }
        if errors.is_empty() { Ok((schedule, warnings)) } else { Err(errors) }
    }

    /// The latest slot strictly before `t` (Digdag's `last_session_time`), whether or not it ran.
    pub fn last_session_time(&self, t: DateTime<Zone>) -> Option<DateTime<Zone>> {
        let t = t.with_timezone(&self.timezone);
        match &self.slots {
            Slots::Seconds(n) => {
                let ts = t.timestamp() - i64::from(t.timestamp_subsec_nanos() == 0);
                self.at_epoch(ts.div_euclid(*n) * n)
            }
            Slots::Cron(p) => p.prev_match(self.timezone, t),
        }
    }

    /// The earliest slot strictly after `t` (Digdag's `next_session_time`).
    pub fn next_session_time(&self, t: DateTime<Zone>) -> Option<DateTime<Zone>> {
        let t = t.with_timezone(&self.timezone);
        match &self.slots {
            Slots::Seconds(n) => self.at_epoch(t.timestamp().div_euclid(*n) * n + n),
            Slots::Cron(p) => p.next_match(self.timezone, t),
        }
    }

    /// The first session whose run time is at or after `now` (Digdag's
    /// `getFirstScheduleTime`), inside the start/end window; `None` past `end`.
    pub fn first_schedule_time(&self, now: DateTime<Utc>) -> Option<ScheduleTime> {
        let now = now.with_timezone(&self.timezone);
        // One second before `now` so that a run time equal to `now` is included.
        let probe = now - Duration::seconds(1) - Duration::seconds(self.delay_secs);
        let session = self.next_session_time(probe)?;
        self.windowed(session)
    }

    /// The session after `last_session_time`, inside the start/end window; `None` past `end`.
    pub fn next_schedule_time(&self, last_session_time: DateTime<Zone>) -> Option<ScheduleTime> {
        let session = self.next_session_time(last_session_time)?;
        self.windowed(session)
    }

    /// When the next session due at or after `now` runs.
    pub fn next_run_time(&self, now: DateTime<Utc>) -> Option<DateTime<Zone>> {
        self.first_schedule_time(now).map(|s| s.run_time)
    }

    /// The time a session runs (`session_time + delay`).
    pub fn run_time_of(&self, session_time: DateTime<Zone>) -> DateTime<Zone> {
        session_time.with_timezone(&self.timezone) + Duration::seconds(self.delay_secs)
    }

    /// `skip_delayed_by`: whether a run due at `run_time` is too late to start at `now`.
    pub fn is_delayed_too_much(&self, run_time: DateTime<Zone>, now: DateTime<Utc>) -> bool {
        match self.skip_delayed_by_secs {
            Some(limit) => (now - run_time.with_timezone(&Utc)).num_seconds() > limit as i64,
            None => false,
        }
    }

    fn windowed(&self, mut session: DateTime<Zone>) -> Option<ScheduleTime> {
        if let Some(start) = self.start {
            let from = resolve_local(self.timezone, start.and_hms_opt(0, 0, 0)?);
            if session < from {
                session = self.next_session_time(from - Duration::seconds(1))?;
            }
        }
        if let Some(end) = self.end {
            let until = resolve_local(self.timezone, end.succ_opt()?.and_hms_opt(0, 0, 0)?);
            if session >= until {
                return None;
            }
        }
        Some(ScheduleTime { session_time: session, run_time: self.run_time_of(session) })
    }

    fn at_epoch(&self, secs: i64) -> Option<DateTime<Zone>> {
        Utc.timestamp_opt(secs, 0).single().map(|t| t.with_timezone(&self.timezone))
    }
}

fn example(kind: &str) -> &'static str {
    match kind {
        "hourly" => "30:00",
        "daily" => "07:00:00",
        "weekly" => "Sun,09:00:00",
        "monthly" => "1,09:00:00",
        "minutes_interval" => "15",
        "seconds_interval" => "30",
        _ => "'0 * * * *'",
    }
}

/// A fixed instant to check that a pattern matches at all.
fn reference_time(tz: Zone) -> DateTime<Zone> {
    Utc.with_ymd_and_hms(2024, 1, 1, 0, 0, 0).single().expect("valid").with_timezone(&tz)
}

/// `HH:MM:SS` (3 parts) or `MM:SS` (2 parts) -> seconds.
fn parse_at(kind: &str, at: &str, parts: usize) -> Result<i64, String> {
    let format = if parts == 3 { "hh:mm:ss" } else { "mm:ss" };
    let bad = || format!("{kind}> needs {format} format, e.g. {}, not '{at}'", example(kind));
    let fragments: Vec<&str> = at.split(':').collect();
    if fragments.len() != parts {
        return Err(bad());
    }
    let mut secs = 0i64;
    for f in fragments {
        let n: i64 = f.trim().parse().map_err(|_| bad())?;
        if n < 0 {
            return Err(bad());
        }
        secs = secs * 60 + n;
    }
    Ok(secs)
}

fn parse_weekly(desc: &str) -> Result<(Slots, i64), String> {
    let bad = |why: &str| format!("weekly> needs day,hh:mm:ss format, e.g. Sun,09:00:00, not '{desc}'{why}");
    let Some((day, time)) = desc.split_once(',') else { return Err(bad("")) };
    let day = day.trim();
    let delay = parse_at("weekly", time.trim(), 3).map_err(|_| bad(""))?;
    let pattern = CronPattern::parse(&format!("0 0 * * {day}")).map_err(|e| bad(&format!(": {e}")))?;
    Ok((Slots::Cron(pattern), delay))
}

fn parse_monthly(desc: &str) -> Result<(Slots, i64), String> {
    let bad = |why: &str| format!("monthly> needs day,hh:mm:ss format, e.g. 1,09:00:00, not '{desc}'{why}");
    let Some((day, time)) = desc.split_once(',') else { return Err(bad("")) };
    let day: u32 = day.trim().parse().map_err(|_| bad(""))?;
    if !(1..=31).contains(&day) {
        return Err(bad(": the day must be between 1 and 31"));
    }
    let delay = parse_at("monthly", time.trim(), 3).map_err(|_| bad(""))?;
    Ok((Slots::Cron(CronPattern::fixed(&format!("0 0 {day} * *"))), delay))
}

/// `3m`, `1h 30m`, `2d`, `45s`, or a plain number of seconds.
fn parse_duration(v: &Value) -> Result<u64, String> {
    let bad = || format!("skip_delayed_by must be a duration such as 30s, 10m, 1h or 1d 2h, not {}", describe(v));
    let text = match v {
        Value::Number(n) => return n.as_u64().ok_or_else(bad),
        Value::String(s) => s.trim(),
        _ => return Err(bad()),
    };
    if let Ok(n) = text.parse::<u64>() {
        return Ok(n);
    }
    let mut total = 0u64;
    let mut num = String::new();
    let mut any = false;
    for c in text.chars() {
        if c.is_ascii_digit() {
            num.push(c);
        } else if c.is_whitespace() {
            continue;
        } else {
            let unit = match c {
                's' => 1,
                'm' => 60,
                'h' => 3600,
                'd' => 86400,
                _ => return Err(bad()),
            };
            let n: u64 = num.parse().map_err(|_| bad())?;
            total = total.saturating_add(n.saturating_mul(unit));
            num.clear();
            any = true;
        }
    }
    if !num.is_empty() || !any {
        return Err(bad());
    }
    Ok(total)
}

// ---------------------------------------------------------------------------------------------
// Cron matcher (cron4j rules).

/// A cron pattern: one or more 5-field alternatives separated by `|`.
#[derive(Clone, Debug, PartialEq)]
pub struct CronPattern {
    alternatives: Vec<CronFields>,
}

#[derive(Clone, Debug, PartialEq)]
struct CronFields {
    minutes: Vec<bool>,
    hours: Vec<bool>,
    days: Vec<bool>,
    last_day: bool,
    months: Vec<bool>,
    weekdays: Vec<bool>,
}

const MONTH_NAMES: &[&str] = &["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"];
const DAY_NAMES: &[&str] = &["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

impl CronPattern {
    fn fixed(p: &str) -> CronPattern {
        CronPattern::parse(p).expect("built-in pattern is valid")
    }

    /// Parse `minute hour day-of-month month day-of-week` (several joined by `|`).
    pub fn parse(text: &str) -> Result<CronPattern, String> {
        let mut alternatives = Vec::new();
        for alt in text.split('|') {
            let fields: Vec<&str> = alt.split_whitespace().collect();
            if fields.len() != 5 {
                return Err(format!(
                    "a cron pattern has 5 fields (minute hour day-of-month month day-of-week), found {}",
                    fields.len()
                ));
            }
            let minutes = parse_field(fields[0], "minute", 0, 59, &[])?;
            let hours = parse_field(fields[1], "hour", 0, 23, &[])?;
            // `L` (last day of the month) is a list element of its own in the day-of-month field.
            let (last, rest): (Vec<&str>, Vec<&str>) = fields[2].split(',').partition(|p| p.eq_ignore_ascii_case("l"));
            let last_day = !last.is_empty();
            let days = if rest.is_empty() {
                vec![false; 32]
            } else {
                parse_field(&rest.join(","), "day of month", 1, 31, &[])?
            };
            let months = parse_field(fields[3], "month", 1, 12, MONTH_NAMES)?;
            let mut weekdays = parse_field(fields[4], "day of week", 0, 7, DAY_NAMES)?;
            if weekdays[7] {
                weekdays[0] = true; // 7 is Sunday too
            }
            weekdays.truncate(7);
            alternatives.push(CronFields { minutes, hours, days, last_day, months, weekdays });
        }
        Ok(CronPattern { alternatives })
    }

    fn date_matches(&self, d: NaiveDate) -> Vec<&CronFields> {
        let last = last_day_of_month(d);
        self.alternatives
            .iter()
            .filter(|f| {
                f.months[d.month() as usize]
                    && (f.days[d.day() as usize] || (f.last_day && d.day() == last))
                    && f.weekdays[d.weekday().num_days_from_sunday() as usize]
            })
            .collect()
    }

    /// Every matching instant of local day `d`.
    fn instants_of_day(&self, tz: Zone, d: NaiveDate) -> Vec<DateTime<Zone>> {
        let mut out = Vec::new();
        for f in self.date_matches(d) {
            for h in (0..24).filter(|&h| f.hours[h]) {
                for m in (0..60).filter(|&m| f.minutes[m]) {
                    let Some(naive) = d.and_hms_opt(h as u32, m as u32, 0) else { continue };
                    // A wall-clock time skipped by DST never matches; a repeated one matches twice
                    // (cron4j checks every real minute).
                    match tz.from_local_datetime(&naive) {
                        chrono::LocalResult::Single(t) => out.push(t),
                        chrono::LocalResult::Ambiguous(a, b) => {
                            out.push(a);
                            out.push(b);
                        }
                        chrono::LocalResult::None => {}
                    }
                }
            }
        }
        out
    }

    /// The first matching minute strictly after `t`.
    pub fn next_match(&self, tz: Zone, t: DateTime<Zone>) -> Option<DateTime<Zone>> {
        // Start a day early: local days overlap a little around DST changes.
        let start = t.with_timezone(&tz).date_naive().pred_opt()?;
        let mut found: Option<DateTime<Zone>> = None;
        for i in 0..SEARCH_DAYS {
            let d = start.checked_add_signed(Duration::days(i))?;
            let best = self.instants_of_day(tz, d).into_iter().filter(|x| *x > t).min();
            match (found, best) {
                (None, Some(b)) => found = Some(b),
                (Some(f), Some(b)) => return Some(f.min(b)),
                // One more day checked after the first hit: later days can only be later.
                (Some(f), None) => return Some(f),
                (None, None) => {}
            }
        }
        found
    }

    /// The last matching minute strictly before `t`.
    pub fn prev_match(&self, tz: Zone, t: DateTime<Zone>) -> Option<DateTime<Zone>> {
        let start = t.with_timezone(&tz).date_naive().succ_opt()?;
        let mut found: Option<DateTime<Zone>> = None;
        for i in 0..SEARCH_DAYS {
            let d = start.checked_sub_signed(Duration::days(i))?;
            let best = self.instants_of_day(tz, d).into_iter().filter(|x| *x < t).max();
            match (found, best) {
                (None, Some(b)) => found = Some(b),
                (Some(f), Some(b)) => return Some(f.max(b)),
                // One more day checked after the first hit: nothing later can come from earlier days.
                (Some(f), None) => return Some(f),
                (None, None) => {}
            }
        }
        found
    }
}

fn parse_field(text: &str, what: &str, min: usize, max: usize, names: &[&str]) -> Result<Vec<bool>, String> {
    let mut set = vec![false; max + 1];
    for part in text.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => {
                let step: usize = s.parse().map_err(|_| format!("bad step '{s}' in the {what} field"))?;
                if step == 0 {
                    return Err(format!("step 0 in the {what} field"));
                }
                (r, step)
            }
            None => (part, 1),
        };
        let value = |s: &str| -> Result<usize, String> {
            let lower = s.to_ascii_lowercase();
            if let Some(i) = names.iter().position(|n| *n == lower) {
                return Ok(i + min);
            }
            let n: usize = s.parse().map_err(|_| format!("'{s}' is not a valid {what}"))?;
            if n < min || n > max {
                return Err(format!("{what} {n} is out of range ({min}-{max})"));
            }
            Ok(n)
        };
        let (lo, hi) = if range == "*" {
            (min, max)
        } else if let Some((a, b)) = range.split_once('-') {
            let (a, b) = (value(a)?, value(b)?);
            if a > b {
                return Err(format!("range {range} in the {what} field goes backwards"));
            }
            (a, b)
        } else {
            let a = value(range)?;
            // `5/15` means from 5 to the end, every 15.
            (a, if part.contains('/') { max } else { a })
        };
        let mut v = lo;
        while v <= hi {
            set[v] = true;
            v += step;
        }
    }
    Ok(set)
}

fn last_day_of_month(d: NaiveDate) -> u32 {
    let (y, m) = if d.month() == 12 { (d.year() + 1, 1) } else { (d.year(), d.month() + 1) };
    NaiveDate::from_ymd_opt(y, m, 1).and_then(|n| n.pred_opt()).map(|p| p.day()).unwrap_or(28)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sched(v: Value, tz: &str) -> Schedule {
        Schedule::parse(&v, tz.parse().unwrap()).unwrap_or_else(|e| panic!("{e:?}")).0
    }

    fn errs(v: Value) -> Vec<ScheduleIssue> {
        Schedule::parse(&v, Zone::UTC).expect_err("should fail")
    }

    fn at(tz: &str, s: &str) -> DateTime<Zone> {
        let tz = Zone::parse(tz).unwrap();
        resolve_local(tz, chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S").unwrap())
    }

    fn utc(s: &str) -> DateTime<Utc> {
        at("UTC", s).with_timezone(&Utc)
    }

    #[test]
    fn daily_session_times_are_midnights() {
        // Conformance case 021: daily>: 04:30:00, session 2024-03-01.
        let s = sched(json!({"daily>": "04:30:00"}), "UTC");
        let t = at("UTC", "2024-03-01 00:00:00");
        assert_eq!(s.last_session_time(t).unwrap().to_rfc3339(), "2024-02-29T00:00:00+00:00");
        assert_eq!(s.next_session_time(t).unwrap().to_rfc3339(), "2024-03-02T00:00:00+00:00");
        assert_eq!(s.delay_secs, 4 * 3600 + 30 * 60);
        // A session time in the middle of a day.
        let t = at("UTC", "2024-03-01 13:14:15");
        assert_eq!(s.last_session_time(t).unwrap().to_rfc3339(), "2024-03-01T00:00:00+00:00");
        assert_eq!(s.next_session_time(t).unwrap().to_rfc3339(), "2024-03-02T00:00:00+00:00");
        // Runs at 04:30.
        let st = s.first_schedule_time(utc("2024-03-01 05:00:00")).unwrap();
        assert_eq!(st.session_time.to_rfc3339(), "2024-03-02T00:00:00+00:00");
        assert_eq!(st.run_time.to_rfc3339(), "2024-03-02T04:30:00+00:00");
        let st = s.first_schedule_time(utc("2024-03-01 04:30:00")).unwrap();
        assert_eq!(st.session_time.to_rfc3339(), "2024-03-01T00:00:00+00:00");
        assert_eq!(s.next_run_time(utc("2024-03-01 04:00:00")).unwrap().to_rfc3339(), "2024-03-01T04:30:00+00:00");
    }

    #[test]
    fn daily_in_a_zone() {
        let s = sched(json!({"daily>": "07:00:00"}), "Asia/Tokyo");
        let t = at("Asia/Tokyo", "2024-03-01 00:00:00");
        assert_eq!(s.next_session_time(t).unwrap().to_rfc3339(), "2024-03-02T00:00:00+09:00");
        assert_eq!(s.next_run_time(utc("2024-03-01 00:00:00")).unwrap().to_rfc3339(), "2024-03-02T07:00:00+09:00");
    }

    #[test]
    fn hourly_weekly_monthly() {
        let s = sched(json!({"hourly>": "30:00"}), "UTC");
        let t = at("UTC", "2024-03-01 10:15:00");
        assert_eq!(s.last_session_time(t).unwrap().to_rfc3339(), "2024-03-01T10:00:00+00:00");
        assert_eq!(s.next_session_time(t).unwrap().to_rfc3339(), "2024-03-01T11:00:00+00:00");
        assert_eq!(s.delay_secs, 1800);

        let s = sched(json!({"weekly>": "Sun,09:00:00"}), "UTC");
        // 2024-03-01 is a Friday.
        let t = at("UTC", "2024-03-01 00:00:00");
        assert_eq!(s.last_session_time(t).unwrap().to_rfc3339(), "2024-02-25T00:00:00+00:00");
        assert_eq!(s.next_session_time(t).unwrap().to_rfc3339(), "2024-03-03T00:00:00+00:00");
        assert_eq!(s.delay_secs, 9 * 3600);
        let s = sched(json!({"weekly>": "1,00:00:00"}), "UTC");
        assert_eq!(s.next_session_time(t).unwrap().to_rfc3339(), "2024-03-04T00:00:00+00:00");

        let s = sched(json!({"monthly>": "31,01:00:00"}), "UTC");
        assert_eq!(s.next_session_time(t).unwrap().to_rfc3339(), "2024-03-31T00:00:00+00:00");
        assert_eq!(s.last_session_time(t).unwrap().to_rfc3339(), "2024-01-31T00:00:00+00:00");
    }

    #[test]
    fn cron_and_minutes_interval_session_is_run_time() {
        let s = sched(json!({"minutes_interval>": 15}), "UTC");
        let t = at("UTC", "2024-03-01 10:15:00");
        assert_eq!(s.last_session_time(t).unwrap().to_rfc3339(), "2024-03-01T10:00:00+00:00");
        assert_eq!(s.next_session_time(t).unwrap().to_rfc3339(), "2024-03-01T10:30:00+00:00");
        assert_eq!(s.delay_secs, 0);
        let st = s.first_schedule_time(utc("2024-03-01 10:16:00")).unwrap();
        assert_eq!(st.session_time, st.run_time);

        let s = sched(json!({"cron>": "42 4 1 * *", "delay": 60}), "UTC");
        assert_eq!(s.next_session_time(t).unwrap().to_rfc3339(), "2024-04-01T04:42:00+00:00");
        assert_eq!(s.last_session_time(t).unwrap().to_rfc3339(), "2024-03-01T04:42:00+00:00");
        assert_eq!(s.run_time_of(s.next_session_time(t).unwrap()).to_rfc3339(), "2024-04-01T04:43:00+00:00");
    }

    #[test]
    fn cron_syntax() {
        let tz = Zone::UTC;
        let p = CronPattern::parse("*/20 9-17/4 * jan-mar mon-fri").unwrap();
        let t = at("UTC", "2024-03-01 17:50:00"); // Friday
        assert_eq!(p.next_match(tz, t).unwrap().to_rfc3339(), "2024-03-04T09:00:00+00:00");
        assert_eq!(p.prev_match(tz, t).unwrap().to_rfc3339(), "2024-03-01T17:40:00+00:00");
        let p = CronPattern::parse("0 0 L * *").unwrap();
        assert_eq!(
            p.next_match(tz, at("UTC", "2024-02-01 00:00:00")).unwrap().to_rfc3339(),
            "2024-02-29T00:00:00+00:00"
        );
        let p = CronPattern::parse("0 12 * * 7|30 6 * * sat").unwrap();
        assert_eq!(p.next_match(tz, t).unwrap().to_rfc3339(), "2024-03-02T06:30:00+00:00");
        assert_eq!(
            p.next_match(tz, at("UTC", "2024-03-02 06:30:00")).unwrap().to_rfc3339(),
            "2024-03-03T12:00:00+00:00"
        );
        // Day-of-month AND day-of-week (cron4j): the 13th that is a Friday.
        let p = CronPattern::parse("0 0 13 * fri").unwrap();
        assert_eq!(p.next_match(tz, t).unwrap().to_rfc3339(), "2024-09-13T00:00:00+00:00");
        for bad in [
            "* * * *",
            "60 * * * *",
            "* 24 * * *",
            "* * 0 * *",
            "* * * 13 *",
            "* * * * 8",
            "*/0 * * * *",
            "5-1 * * * *",
            "x * * * *",
        ] {
            assert!(CronPattern::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn cron_across_dst() {
        // New York springs forward at 02:00 on 2024-03-10: 02:30 does not exist that day.
        let s = sched(json!({"cron>": "30 2 * * *"}), "America/New_York");
        let t = at("America/New_York", "2024-03-09 03:00:00");
        assert_eq!(s.next_session_time(t).unwrap().to_rfc3339(), "2024-03-11T02:30:00-04:00");
        // Falls back at 02:00 on 2024-11-03: 01:30 happens twice.
        let s = sched(json!({"cron>": "30 1 * * *"}), "America/New_York");
        let first = s.next_session_time(at("America/New_York", "2024-11-03 00:00:00")).unwrap();
        assert_eq!(first.to_rfc3339(), "2024-11-03T01:30:00-04:00");
        let second = s.next_session_time(first).unwrap();
        assert_eq!(second.to_rfc3339(), "2024-11-03T01:30:00-05:00");
        assert_eq!(s.last_session_time(second).unwrap(), first);
        // Daily midnights keep working across the change.
        let s = sched(json!({"daily>": "00:00:00"}), "America/New_York");
        let t = at("America/New_York", "2024-03-10 00:00:00");
        assert_eq!(s.next_session_time(t).unwrap().to_rfc3339(), "2024-03-11T00:00:00-04:00");
        assert_eq!(s.last_session_time(t).unwrap().to_rfc3339(), "2024-03-09T00:00:00-05:00");
    }

    #[test]
    fn seconds_interval() {
        let s = sched(json!({"seconds_interval>": 30}), "Asia/Tokyo");
        let t = at("UTC", "2024-03-01 10:15:00");
        assert_eq!(s.next_session_time(t).unwrap().with_timezone(&Utc).to_rfc3339(), "2024-03-01T10:15:30+00:00");
        assert_eq!(s.last_session_time(t).unwrap().with_timezone(&Utc).to_rfc3339(), "2024-03-01T10:14:30+00:00");
    }

    #[test]
    fn start_and_end_window() {
        let s = sched(json!({"daily>": "01:00:00", "start": "2024-03-05", "end": "2024-03-06"}), "UTC");
        let st = s.first_schedule_time(utc("2024-03-01 00:00:00")).unwrap();
        assert_eq!(st.session_time.to_rfc3339(), "2024-03-05T00:00:00+00:00");
        let st = s.next_schedule_time(st.session_time).unwrap();
        assert_eq!(st.session_time.to_rfc3339(), "2024-03-06T00:00:00+00:00");
        assert!(s.next_schedule_time(st.session_time).is_none());
        assert_eq!(s.start, NaiveDate::from_ymd_opt(2024, 3, 5));
        let e = errs(json!({"daily>": "01:00:00", "start": "2024-03-05", "end": "2024-03-01"}));
        assert_eq!(e[0].key.as_deref(), Some("end"));
        assert!(errs(json!({"daily>": "01:00:00", "start": "2024-02-30"}))[0].message.contains("yyyy-MM-dd"));
    }

    #[test]
    fn options() {
        let (s, w) = Schedule::parse(
            &json!({"daily>": "01:00:00", "skip_on_overtime": true, "skip_delayed_by": "1h 30m", "delay": 5, "colour": 1}),
            Zone::UTC,
        )
        .unwrap();
        assert!(s.skip_on_overtime);
        assert_eq!(s.skip_delayed_by_secs, Some(5400));
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(w[0].message.contains("'colour' is not used"));
        assert!(w[1].message.contains("delay is ignored by daily>"));
        let run = at("UTC", "2024-03-01 01:00:00");
        assert!(!s.is_delayed_too_much(run, utc("2024-03-01 02:30:00")));
        assert!(s.is_delayed_too_much(run, utc("2024-03-01 02:30:01")));
        assert!(errs(json!({"daily>": "01:00:00", "skip_delayed_by": "soon"}))[0].message.contains("duration"));
    }

    #[test]
    fn errors_are_clear() {
        let e = errs(json!({"daily>": "7:00"}));
        assert_eq!(e[0].key.as_deref(), Some("daily>"));
        assert_eq!(e[0].message, "daily> needs hh:mm:ss format, e.g. 07:00:00, not '7:00'");
        assert!(errs(json!({"dayly>": "07:00:00"}))[0].message.contains("did you mean daily>?"));
        assert!(errs(json!({"daily>": "1:00:00", "hourly>": "30:00"}))[0].message.contains("only one kind"));
        assert!(errs(json!({"delay": 3}))[0].message.contains("needs a kind"));
        assert!(errs(json!({"weekly>": "Funday,07:00:00"}))[0].message.contains("weekly> needs day,hh:mm:ss"));
        assert!(errs(json!({"monthly>": "32,07:00:00"}))[0].message.contains("between 1 and 31"));
        assert!(errs(json!({"minutes_interval>": 90}))[0].message.contains("between 1 and 59"));
        assert!(errs(json!({"cron>": "0 0 30 2 *"}))[0].message.contains("never matches"));
        assert!(errs(json!({"cron>": "0 0 * *"}))[0].message.contains("5 fields"));
        assert!(errs(json!("daily"))[0].message.contains("must be a mapping"));
        assert!(errs(json!({"daily>": null}))[0].message.contains("needs a value"));
    }
}
