//! RFC 3339 times in UTC, as Docker's API, json-file logs and image configs write them.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// `2023-11-14T22:13:20.000000123Z`: nanoseconds, as Docker prints container times.
pub fn rfc3339_nanos(t: SystemTime) -> String {
    humantime::format_rfc3339_nanos(t).to_string()
}

/// `2023-11-14T22:13:20Z`: whole seconds, as image configurations record `created`.
pub fn rfc3339_seconds(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// [`rfc3339_nanos`] of a time given in nanoseconds since the Unix epoch.
pub fn rfc3339_from_unix_nanos(unix_nanos: i64) -> String {
    rfc3339_nanos(from_unix_nanos(unix_nanos))
}

/// The current time, [`rfc3339_nanos`].
pub fn now_rfc3339_nanos() -> String {
    rfc3339_nanos(SystemTime::now())
}

/// Parses an RFC 3339 time, with or without a fraction of up to nine digits, in UTC (`Z`) or
/// with an offset (`+01:00`), as image configurations of other tools write it.
pub fn parse_rfc3339(s: &str) -> Option<SystemTime> {
    let s = s.trim();
    let (local, offset_secs) = if let Some(l) = s.strip_suffix('Z').or_else(|| s.strip_suffix('z')) {
        (l, 0i64)
    } else {
        // an offset is the last 6 characters: +hh:mm or -hh:mm
        let at = s.len().checked_sub(6)?;
        let (l, off) = (s.get(..at)?, s.get(at..)?);
        let sign = match off.as_bytes().first()? {
            b'+' => 1,
            b'-' => -1,
            _ => return None,
        };
        let (h, m) = off[1..].split_once(':')?;
        (l, sign * (h.parse::<i64>().ok()? * 3600 + m.parse::<i64>().ok()? * 60))
    };
    let t = humantime::parse_rfc3339_weak(local).ok()?;
    if offset_secs >= 0 {
        t.checked_sub(Duration::from_secs(offset_secs as u64))
    } else {
        t.checked_add(Duration::from_secs((-offset_secs) as u64))
    }
}

/// A duration as Docker's flags take it (`30s`, `1m30s`, `500ms`).
pub fn parse_duration(s: &str) -> Option<Duration> {
    humantime::parse_duration(s.trim()).ok()
}

/// A duration as Go prints it, as Docker's messages show durations (`30s`, `1m30s`, `1.5s`,
/// `500ms`).
pub fn go_duration(d: Duration) -> String {
    let fraction = |n: u128, unit: u128, suffix: &str| {
        let s = format!("{}.{:0width$}", n / unit, n % unit, width = unit.ilog10() as usize);
        format!("{}{suffix}", s.trim_end_matches('0').trim_end_matches('.'))
    };
    let ns = d.as_nanos();
    match ns {
        0 => return "0s".into(),
        1..1_000 => return format!("{ns}ns"),
        1_000..1_000_000 => return fraction(ns, 1_000, "µs"),
        1_000_000..1_000_000_000 => return fraction(ns, 1_000_000, "ms"),
        _ => {}
    }
    let (h, m) = (d.as_secs() / 3600, (d.as_secs() % 3600) / 60);
    let secs = format!("{:.9}", d.as_secs_f64() - (h * 3600 + m * 60) as f64);
    let secs = secs.trim_end_matches('0').trim_end_matches('.');
    let mut out = String::new();
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if h > 0 || m > 0 {
        out.push_str(&format!("{m}m"));
    }
    format!("{out}{secs}s")
}

/// A time as Docker's filters and `--since`/`--until` take it: a duration before `now` (`10m`,
/// `1h30m`), Unix seconds with an optional fraction (`1700000000.5`), or RFC 3339 (a date
/// alone, `2026-01-02`, is its midnight UTC).
pub fn parse_docker_time(s: &str, now: SystemTime) -> Option<SystemTime> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    if let Ok(d) = humantime::parse_duration(s) {
        return now.checked_sub(d);
    }
    let (secs, frac) = s.split_once('.').unwrap_or((s, ""));
    if !secs.is_empty() && secs.bytes().all(|b| b.is_ascii_digit()) && frac.bytes().all(|b| b.is_ascii_digit()) {
        let nanos: u32 =
            if frac.is_empty() { 0 } else { format!("{:0<9}", &frac[..frac.len().min(9)]).parse().ok()? };
        return SystemTime::UNIX_EPOCH.checked_add(Duration::new(secs.parse().ok()?, nanos));
    }
    if s.len() == 10 {
        return parse_rfc3339(&format!("{s}T00:00:00Z"));
    }
    parse_rfc3339(s)
}

/// Seconds since the Unix epoch of an RFC 3339 time; 0 for one that does not parse (Docker's
/// API gives 0 for an unknown `Created`).
pub fn unix_seconds_of(s: &str) -> i64 {
    parse_rfc3339(s).map(unix_seconds).unwrap_or(0)
}

/// Nanoseconds since the Unix epoch of an RFC 3339 time.
pub fn parse_rfc3339_unix_nanos(s: &str) -> Option<i64> {
    parse_rfc3339(s).map(unix_nanos)
}

/// Seconds since the Unix epoch of `t` (negative before it).
pub fn unix_seconds(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64),
    }
}

/// Nanoseconds since the Unix epoch of `t` (0 before it).
pub fn unix_nanos(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as i64).unwrap_or(0)
}

/// The time `unix_nanos` nanoseconds after the Unix epoch.
pub fn from_unix_nanos(unix_nanos: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(unix_nanos.max(0) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_and_parses_back() {
        for t in [0i64, 1_700_000_000_123_456_789, 951_782_400_000_000_001] {
            assert_eq!(parse_rfc3339_unix_nanos(&rfc3339_from_unix_nanos(t)), Some(t));
        }
        assert_eq!(rfc3339_from_unix_nanos(1_700_000_000_000_000_000), "2023-11-14T22:13:20.000000000Z");
        assert_eq!(rfc3339_seconds(from_unix_nanos(1_700_000_000_999_000_000)), "2023-11-14T22:13:20Z");
        assert_eq!(parse_rfc3339_unix_nanos("2023-11-14T22:13:20Z"), Some(1_700_000_000_000_000_000));
        assert_eq!(parse_rfc3339_unix_nanos("2023-11-14T22:13:20.5Z"), Some(1_700_000_000_500_000_000));
        assert_eq!(parse_rfc3339("yesterday"), None);
        assert_eq!(unix_seconds_of("2023-11-14T23:13:20.5+01:00"), 1_700_000_000);
        assert_eq!(unix_seconds_of("2023-11-14T21:13:20-01:00"), 1_700_000_000);
        assert_eq!(unix_seconds_of("0001-01-01T00:00:00Z"), 0);
        assert_eq!(unix_seconds_of(""), 0);
        assert_eq!(unix_seconds(from_unix_nanos(1_700_000_000_999_000_000)), 1_700_000_000);
    }

    #[test]
    fn docker_times_are_durations_unix_seconds_or_rfc3339() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let at = |s: &str| parse_docker_time(s, now).map(unix_nanos);
        assert_eq!(at("10m"), Some((1_000_000 - 600) * 1_000_000_000));
        assert_eq!(at("1h30m"), Some((1_000_000 - 5400) * 1_000_000_000));
        assert_eq!(at("1700000000"), Some(1_700_000_000 * 1_000_000_000));
        assert_eq!(at("1700000000.5"), Some(1_700_000_000 * 1_000_000_000 + 500_000_000));
        assert_eq!(at("2026-01-02T03:04:05Z"), parse_rfc3339_unix_nanos("2026-01-02T03:04:05Z"));
        assert_eq!(at("2026-01-02"), parse_rfc3339_unix_nanos("2026-01-02T00:00:00Z"));
        assert_eq!(at("yesterday"), None);
        assert_eq!(at(""), None);
    }

    #[test]
    fn durations_read_and_print_as_dockers() {
        assert_eq!(parse_duration("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("soon"), None);
        let cases = [
            (Duration::from_secs(30), "30s"),
            (Duration::from_secs(90), "1m30s"),
            (Duration::from_millis(1500), "1.5s"),
        ];
        for (d, shown) in cases {
            assert_eq!(go_duration(d), shown);
        }
        assert_eq!(go_duration(Duration::from_secs(3600)), "1h0m0s");
        assert_eq!(go_duration(Duration::from_millis(250)), "250ms");
        assert_eq!(go_duration(Duration::ZERO), "0s");
        assert_eq!(go_duration(Duration::from_micros(1500)), "1.5ms");
        assert_eq!(go_duration(Duration::from_nanos(2500)), "2.5µs");
        assert_eq!(go_duration(Duration::from_nanos(7)), "7ns");
    }
}
