//! What the command line (and a request, which carries the same values) gives as text, parsed
//! into checked values: times, and the `--env K=V` values templates see.

use std::collections::BTreeMap;

use crate::core::error::Error;
use crate::core::model::Millis;

/// `--env K=V` pairs, with keys fit for `{{env.KEY}}`.
pub fn parse_env(pairs: &[String]) -> Result<BTreeMap<String, String>, Error> {
    let mut env = BTreeMap::new();
    for p in pairs {
        let (k, v) = p
            .split_once('=')
            .ok_or_else(|| Error::invalid(format!("--env {p:?}: expected KEY=VALUE")))?;
        env.insert(k.to_owned(), v.to_owned());
    }
    check_env(env)
}

/// Checks `{{env.KEY}}` values: keys of letters, digits and `_` (not starting with a digit),
/// values without NUL, at most 64 of them and 64 KiB in all (the runner gets them from a
/// request).
pub fn check_env(env: BTreeMap<String, String>) -> Result<BTreeMap<String, String>, Error> {
    let mut size = 0;
    for (k, v) in &env {
        let ok = k
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && k.len() <= 64
            && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !ok {
            return Err(Error::invalid(format!(
                "--env {k:?}: the key must be 1 to 64 letters, digits and '_', not starting with a digit"
            )));
        }
        if v.contains('\0') {
            return Err(Error::invalid(format!("--env {k}: the value contains NUL")));
        }
        size += k.len() + v.len();
    }
    if env.len() > 64 || size > 64 * 1024 {
        return Err(Error::invalid("--env: at most 64 values and 64 KiB in all"));
    }
    Ok(env)
}

/// A time given on the command line: RFC 3339, or a date (its start, UTC).
/// A duration as people type it: `30m`, `2h`, `1h30m`, `90m` (hours and minutes, in that
/// order, whole numbers); at least a minute.
pub fn parse_duration(s: &str) -> Result<Millis, Error> {
    let bad = || {
        Error::invalid(format!(
            "invalid duration {s:?}: use hours and minutes, such as 30m, 2h or 1h30m"
        ))
    };
    let mut rest = s.trim();
    let mut total: Millis = 0;
    for (unit, ms) in [('h', 3_600_000), ('m', 60_000)] {
        if let Some(i) = rest.find(unit) {
            let n: Millis = rest[..i].parse().map_err(|_| bad())?;
            total = n
                .checked_mul(ms)
                .and_then(|v| total.checked_add(v))
                .ok_or_else(bad)?;
            rest = &rest[i + 1..];
        }
    }
    if !rest.is_empty() || total < 60_000 {
        return Err(bad());
    }
    Ok(total)
}

pub fn parse_time(s: &str) -> Result<Millis, Error> {
    if let Ok(t) = s.parse::<jiff::Timestamp>() {
        return Ok(t.as_millisecond());
    }
    let day: jiff::civil::Date = s.parse().map_err(|_| {
        Error::invalid(format!(
            "{s:?} is not a time: use a date like 2026-11-01 or an RFC 3339 time"
        ))
    })?;
    Ok(day
        .to_zoned_datetime(jiff::tz::TimeZone::UTC)
        .map_err(|e| Error::invalid(e.to_string()))?
        .timestamp()
        .as_millisecond())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_people_type_them() {
        assert_eq!(parse_duration("30m").unwrap(), 30 * 60_000);
        assert_eq!(parse_duration("2h").unwrap(), 2 * 3_600_000);
        assert_eq!(parse_duration("1h30m").unwrap(), 90 * 60_000);
        for bad in [
            "",
            "0m",
            "30s",
            "m",
            "1.5h",
            "30m2h",
            "-1h",
            "1h 30m",
            "99999999999999h",
        ] {
            let e = parse_duration(bad).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{bad}");
            assert!(e.to_string().contains("invalid duration"), "{bad}: {e}");
        }
    }

    #[test]
    fn env_values_are_checked() {
        let env = parse_env(&["A=1".into(), "_b=x=y".into()]).unwrap();
        assert_eq!(env["_b"], "x=y");
        for bad in ["1A=x", "A-B=x", "noequals", "A=\0"] {
            assert!(parse_env(&[bad.into()]).is_err(), "{bad:?}");
        }
        let many: Vec<String> = (0..65).map(|i| format!("K{i}=v")).collect();
        assert!(parse_env(&many).is_err());
    }

    #[test]
    fn times_are_rfc3339_or_a_day() {
        assert_eq!(parse_time("1970-01-02").unwrap(), 86_400_000);
        assert_eq!(parse_time("1970-01-01T00:00:01Z").unwrap(), 1000);
        let e = parse_time("yesterday").unwrap_err();
        assert_eq!(e.exit_code(), 2);
    }
}
