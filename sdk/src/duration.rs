//! Durations as Digdag writes them (`30s`, `10m`, `1h 30m`, `2d`): its `Durations.parseDuration`,
//! shared by `wait>`, the wait intervals of `td_wait>` and the timeouts of `pg>`.

/// Digdag's `Durations.parseDuration`: optional `<n>d`, `<n>h`, `<n>m`, `<n>s` parts in
/// that order, blanks allowed around them, case-insensitive, at least one part. Seconds.
pub fn parse_seconds(text: &str) -> Result<i64, String> {
    let invalid = || format!("invalid duration '{text}' (use e.g. 30s, 10m, 1h, 2d or 1h 30m)");
    let mut rest = text.trim_start();
    let mut total: i64 = 0;
    let mut seen = false;
    for (unit, secs) in [('d', 86_400i64), ('h', 3_600), ('m', 60), ('s', 1)] {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            continue;
        }
        let after = rest[digits..].trim_start();
        if !after.starts_with([unit, unit.to_ascii_uppercase()]) {
            continue;
        }
        let n: i64 = rest[..digits].parse().map_err(|_| invalid())?;
        total = n.checked_mul(secs).and_then(|v| total.checked_add(v)).ok_or_else(invalid)?;
        rest = after[1..].trim_start();
        seen = true;
    }
    if !seen || !rest.is_empty() {
        return Err(invalid());
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_seconds("10s"), Ok(10));
        assert_eq!(parse_seconds("1m"), Ok(60));
        assert_eq!(parse_seconds("1h"), Ok(3600));
        assert_eq!(parse_seconds("2d"), Ok(172_800));
        assert_eq!(parse_seconds(" 1h 30m "), Ok(5400));
        assert_eq!(parse_seconds("1d2h3m4s"), Ok(93_784));
        assert_eq!(parse_seconds("5 M"), Ok(300));
        assert_eq!(parse_seconds("0s"), Ok(0));
        for bad in ["", "10", "s", "1x", "1s 1m", "1m1m", "-1s", "1.5h", "10 seconds"] {
            assert!(parse_seconds(bad).is_err(), "{bad:?} should be invalid");
        }
    }
}
