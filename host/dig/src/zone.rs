//! A workflow's time zone, as Digdag's `timezone:` accepts it.
//!
//! Digdag reads `timezone:` with Java's `ZoneId.of`, which takes IANA names (`Asia/Tokyo`)
//! and fixed offsets (`+09:00`, `-0530`, `+9`, `Z`, `UTC+9`, `GMT-03:00`, `UT`). [`Zone`] is
//! one type for both, implementing chrono's [`TimeZone`], so every use of the workflow's zone
//! (session times, schedules, `session_*` variables, `moment()`) handles both the same way.
//! Its [`Zone::name`] is Java's `ZoneId.getId()` (`+09:00`, `UTC+09:00`, `Z`), which Digdag
//! prints as `${timezone}` and stores with each attempt.

use std::fmt;

use chrono::{FixedOffset, MappedLocalTime, NaiveDate, NaiveDateTime, Offset, TimeZone};
use chrono_tz::{OffsetName, Tz, TzOffset};

/// A workflow's time zone: a tz-database zone or a fixed offset from UTC.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Zone {
    /// An IANA zone (`Asia/Tokyo`, `UTC`).
    Named(Tz),
    /// A fixed offset, with the prefix it was written with (`UTC+9` is named `UTC+09:00`).
    Fixed { offset: FixedOffset, prefix: Prefix },
}

/// How a fixed offset was introduced; part of its name, as in Java.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Prefix {
    /// A bare offset (`+09:00`, `Z`).
    None,
    Utc,
    Gmt,
    Ut,
}

impl Prefix {
    fn text(self) -> &'static str {
        match self {
            Prefix::None => "",
            Prefix::Utc => "UTC",
            Prefix::Gmt => "GMT",
            Prefix::Ut => "UT",
        }
    }
}

/// Why a `timezone:` value is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ZoneError {
    #[error(
        "invalid time zone offset '{input}': {reason}; write an offset as +09:00, -0530, +9 or UTC+9 \
         (at most 18 hours)"
    )]
    BadOffset { input: String, reason: &'static str },
    #[error(
        "unknown time zone '{input}'{hint}; use an IANA name such as UTC, Asia/Tokyo or America/Los_Angeles, \
         or an offset such as +09:00"
    )]
    Unknown { input: String, hint: String },
}

impl Zone {
    pub const UTC: Zone = Zone::Named(chrono_tz::UTC);

    /// Read a zone the way Java's `ZoneId.of` does. IANA names are also found when only their
    /// case differs (spade has always been that lenient), and a misspelling gets a suggestion.
    pub fn parse(text: &str) -> Result<Zone, ZoneError> {
        // The branches follow ZoneId.of: a sign (or a single character) is an offset; a
        // UTC/GMT/UT prefix followed by a sign is a prefixed offset; anything else is a name.
        if text.len() <= 1 || text.starts_with(['+', '-']) {
            return parse_offset(text, text).map(|offset| Zone::Fixed { offset, prefix: Prefix::None });
        }
        for (p, prefix) in [("UTC", Prefix::Utc), ("GMT", Prefix::Gmt), ("UT", Prefix::Ut)] {
            if let Some(rest) = text.strip_prefix(p) {
                if rest.starts_with(['+', '-']) {
                    return parse_offset(rest, text).map(|offset| Zone::Fixed { offset, prefix });
                }
                if rest.is_empty() && prefix == Prefix::Ut {
                    // The tz database has UTC and GMT but no plain UT.
                    return Ok(Zone::Fixed { offset: utc_offset(), prefix });
                }
                break;
            }
        }
        parse_named(text).map(Zone::Named)
    }

    /// The zone's id, as Java's `ZoneId.getId()` gives it: `Asia/Tokyo`, `+09:00`, `Z`,
    /// `UTC+09:00`, `GMT`.
    pub fn name(&self) -> String {
        match self {
            Zone::Named(tz) => tz.name().to_string(),
            Zone::Fixed { offset, prefix } => {
                let secs = offset.local_minus_utc();
                match (prefix, secs) {
                    (Prefix::None, 0) => "Z".to_string(),
                    (p, 0) => p.text().to_string(),
                    (p, s) => format!("{}{}", p.text(), offset_id(s)),
                }
            }
        }
    }
}

impl fmt::Display for Zone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

impl From<Tz> for Zone {
    fn from(tz: Tz) -> Zone {
        Zone::Named(tz)
    }
}

impl std::str::FromStr for Zone {
    type Err = ZoneError;
    fn from_str(s: &str) -> Result<Zone, ZoneError> {
        Zone::parse(s)
    }
}

/// The offset of a [`Zone`] at some instant; it remembers its zone (chrono needs that to get
/// the zone back from a `DateTime`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ZoneOffset {
    Named(TzOffset),
    Fixed { offset: FixedOffset, prefix: Prefix },
}

impl ZoneOffset {
    /// The abbreviation `Date.prototype.toString` shows (`JST`, `+0545`). A fixed offset is
    /// shown the way the tz database names zones without an abbreviation (`+09`, `+0530`).
    pub fn abbreviation(&self) -> String {
        match self {
            ZoneOffset::Named(o) => o.abbreviation().unwrap_or_default().to_string(),
            ZoneOffset::Fixed { offset, .. } => {
                let s = offset.local_minus_utc();
                if s == 0 {
                    return "UTC".to_string();
                }
                let sign = if s < 0 { '-' } else { '+' };
                let a = s.unsigned_abs();
                let (h, m, sec) = (a / 3600, a / 60 % 60, a % 60);
                match (m, sec) {
                    (0, 0) => format!("{sign}{h:02}"),
                    (m, 0) => format!("{sign}{h:02}{m:02}"),
                    (m, sec) => format!("{sign}{h:02}{m:02}{sec:02}"),
                }
            }
        }
    }
}

impl Offset for ZoneOffset {
    fn fix(&self) -> FixedOffset {
        match self {
            ZoneOffset::Named(o) => o.fix(),
            ZoneOffset::Fixed { offset, .. } => *offset,
        }
    }
}

impl fmt::Display for ZoneOffset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ZoneOffset::Named(o) => o.fmt(f),
            ZoneOffset::Fixed { offset, .. } => f.write_str(&offset_id(offset.local_minus_utc())),
        }
    }
}

impl TimeZone for Zone {
    type Offset = ZoneOffset;

    fn from_offset(offset: &ZoneOffset) -> Zone {
        match offset {
            ZoneOffset::Named(o) => Zone::Named(Tz::from_offset(o)),
            ZoneOffset::Fixed { offset, prefix } => Zone::Fixed { offset: *offset, prefix: *prefix },
        }
    }

    fn offset_from_local_date(&self, local: &NaiveDate) -> MappedLocalTime<ZoneOffset> {
        match self {
            Zone::Named(tz) => tz.offset_from_local_date(local).map(ZoneOffset::Named),
            Zone::Fixed { offset, prefix } => {
                MappedLocalTime::Single(ZoneOffset::Fixed { offset: *offset, prefix: *prefix })
            }
        }
    }

    fn offset_from_local_datetime(&self, local: &NaiveDateTime) -> MappedLocalTime<ZoneOffset> {
        match self {
            Zone::Named(tz) => tz.offset_from_local_datetime(local).map(ZoneOffset::Named),
            Zone::Fixed { offset, prefix } => {
                MappedLocalTime::Single(ZoneOffset::Fixed { offset: *offset, prefix: *prefix })
            }
        }
    }

    fn offset_from_utc_date(&self, utc: &NaiveDate) -> ZoneOffset {
        match self {
            Zone::Named(tz) => ZoneOffset::Named(tz.offset_from_utc_date(utc)),
            Zone::Fixed { offset, prefix } => ZoneOffset::Fixed { offset: *offset, prefix: *prefix },
        }
    }

    fn offset_from_utc_datetime(&self, utc: &NaiveDateTime) -> ZoneOffset {
        match self {
            Zone::Named(tz) => ZoneOffset::Named(tz.offset_from_utc_datetime(utc)),
            Zone::Fixed { offset, prefix } => ZoneOffset::Fixed { offset: *offset, prefix: *prefix },
        }
    }
}

fn utc_offset() -> FixedOffset {
    FixedOffset::east_opt(0).expect("zero is a valid offset")
}

/// Java's `ZoneOffset.getId()` for a non-zero offset: `+09:00`, `-05:30`, `+01:02:03`.
fn offset_id(secs: i32) -> String {
    let sign = if secs < 0 { '-' } else { '+' };
    let a = secs.unsigned_abs();
    let (h, m, s) = (a / 3600, a / 60 % 60, a % 60);
    if s == 0 { format!("{sign}{h:02}:{m:02}") } else { format!("{sign}{h:02}:{m:02}:{s:02}") }
}

/// Java's `ZoneOffset.of`: `Z`, `+h`, `+hh`, `+hh:mm`, `+hhmm`, `+hh:mm:ss`, `+hhmmss`, within
/// ±18:00. `whole` is the text as written, for the error.
fn parse_offset(text: &str, whole: &str) -> Result<FixedOffset, ZoneError> {
    let bad = |reason| ZoneError::BadOffset { input: whole.to_string(), reason };
    if text == "Z" {
        return Ok(utc_offset());
    }
    let b = text.as_bytes();
    let sign = match b.first() {
        Some(b'+') => 1,
        Some(b'-') => -1,
        _ => return Err(bad("an offset starts with + or -")),
    };
    let two = |at: usize| -> Result<u32, ZoneError> {
        match (b.get(at), b.get(at + 1)) {
            (Some(x), Some(y)) if x.is_ascii_digit() && y.is_ascii_digit() => {
                Ok(u32::from(x - b'0') * 10 + u32::from(y - b'0'))
            }
            _ => Err(bad("hours, minutes and seconds are two digits each")),
        }
    };
    let colon = |at: usize| if b.get(at) == Some(&b':') { Ok(()) } else { Err(bad("expected ':' between the fields")) };
    let (h, m, s) = match b.len() {
        2 if b[1].is_ascii_digit() => (u32::from(b[1] - b'0'), 0, 0),
        3 => (two(1)?, 0, 0),
        5 => (two(1)?, two(3)?, 0),
        6 => {
            colon(3)?;
            (two(1)?, two(4)?, 0)
        }
        7 => (two(1)?, two(3)?, two(5)?),
        9 => {
            colon(3)?;
            colon(6)?;
            (two(1)?, two(4)?, two(7)?)
        }
        _ => return Err(bad("not a form of offset")),
    };
    if h > 18 || m > 59 || s > 59 || (h == 18 && (m > 0 || s > 0)) {
        return Err(bad("it is out of range"));
    }
    let secs = sign * (h * 3600 + m * 60 + s) as i32;
    FixedOffset::east_opt(secs).ok_or_else(|| bad("it is out of range"))
}

/// An IANA zone by name, with a suggestion when it is misspelled.
fn parse_named(name: &str) -> Result<Tz, ZoneError> {
    if let Ok(tz) = name.parse::<Tz>() {
        return Ok(tz);
    }
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
    Err(ZoneError::Unknown { input: name.to_string(), hint })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> String {
        Zone::parse(s).unwrap_or_else(|e| panic!("{s}: {e}")).name()
    }

    fn secs(s: &str) -> i32 {
        let z = Zone::parse(s).unwrap();
        z.offset_from_utc_datetime(&NaiveDate::from_ymd_opt(2024, 1, 1).unwrap().and_hms_opt(0, 0, 0).unwrap())
            .fix()
            .local_minus_utc()
    }

    #[test]
    fn names_and_offsets_read_like_java_zone_id_of() {
        // (input, Java's getId(), offset in seconds)
        let cases = [
            ("+09:00", "+09:00", 9 * 3600),
            ("-0530", "-05:30", -(5 * 3600 + 1800)),
            ("+9", "+09:00", 9 * 3600),
            ("-09", "-09:00", -9 * 3600),
            ("+05:45:30", "+05:45:30", 5 * 3600 + 45 * 60 + 30),
            ("+054530", "+05:45:30", 5 * 3600 + 45 * 60 + 30),
            ("UTC+9", "UTC+09:00", 9 * 3600),
            ("UTC+09:00", "UTC+09:00", 9 * 3600),
            ("GMT-3", "GMT-03:00", -3 * 3600),
            ("UT+1", "UT+01:00", 3600),
            ("UTC+0", "UTC", 0),
            ("Z", "Z", 0),
            ("+00:00", "Z", 0),
            ("-18:00", "-18:00", -18 * 3600),
            ("UT", "UT", 0),
            ("UTC", "UTC", 0),
            ("GMT", "GMT", 0),
            ("Asia/Tokyo", "Asia/Tokyo", 9 * 3600),
            ("asia/tokyo", "Asia/Tokyo", 9 * 3600),
        ];
        for (input, id, off) in cases {
            assert_eq!(name(input), id, "{input}");
            assert_eq!(secs(input), off, "{input}");
        }
    }

    #[test]
    fn bad_offsets_and_names_are_refused_with_advice() {
        for bad in ["+19", "+18:01", "+9:00", "+09:0", "+0900x", "+09-00", "z", "", "x", "+", "UTC+", "GMT+ab"] {
            let e = Zone::parse(bad).expect_err(bad).to_string();
            assert!(e.contains("+09:00"), "{bad}: {e}");
        }
        assert!(matches!(Zone::parse("+9:00"), Err(ZoneError::BadOffset { .. })));
        let e = Zone::parse("Asia/Tokio").unwrap_err().to_string();
        assert!(e.contains("did you mean Asia/Tokyo?"), "{e}");
    }

    #[test]
    fn fixed_zones_format_like_digdag() {
        let z = Zone::parse("+09:00").unwrap();
        let t = z.with_ymd_and_hms(2024, 1, 1, 0, 0, 0).unwrap();
        assert_eq!(t.format("%Y-%m-%dT%H:%M:%S%:z %z").to_string(), "2024-01-01T00:00:00+09:00 +0900");
        assert_eq!(t.timestamp(), 1704034800);
        assert_eq!(t.offset().abbreviation(), "+09");
        assert_eq!(Zone::parse("-0530").unwrap().offset_from_utc_date(&t.date_naive()).abbreviation(), "-0530");
        // A DateTime gives its zone back, prefix included.
        let u = Zone::parse("UTC+9").unwrap();
        assert_eq!(u.with_ymd_and_hms(2024, 1, 1, 0, 0, 0).unwrap().timezone().name(), "UTC+09:00");
    }
}
