//! Go-style durations (`300ms`, `1.5h`, `2h45m`) and RFC 3339 instants for WORM clauses.

use std::time::Duration;

/// Parses a Go `time.ParseDuration` string without sign (negative TTLs make no sense).
pub fn parse_go_duration(text: &str) -> Option<Duration> {
    if text.is_empty() {
        return None;
    }
    if text == "0" {
        return Some(Duration::ZERO);
    }
    let bytes = text.as_bytes();
    let mut i = 0;
    let mut total_nanos: f64 = 0.0;
    while i < bytes.len() {
        let start = i;
        while i < bytes.len() && (bytes[i].is_ascii_digit() || bytes[i] == b'.') {
            i += 1;
        }
        let number: f64 = text[start..i].parse().ok()?;
        let unit_start = i;
        while i < bytes.len() && !(bytes[i].is_ascii_digit() || bytes[i] == b'.') {
            i += 1;
        }
        let nanos_per_unit = match &text[unit_start..i] {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return None,
        };
        total_nanos += number * nanos_per_unit;
    }
    // Cap at ~292 years like Go's int64 nanoseconds.
    if !total_nanos.is_finite() || total_nanos > i64::MAX as f64 {
        return None;
    }
    Some(Duration::from_nanos(total_nanos as u64))
}

/// Parses an RFC 3339 instant to Unix milliseconds.
pub fn parse_rfc3339_ms(text: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|t| t.timestamp_millis())
}

/// Formats Unix milliseconds as RFC 3339 in UTC (seconds precision, `Z`).
pub fn format_rfc3339_ms(ms: i64) -> String {
    match chrono::DateTime::from_timestamp_millis(ms) {
        Some(t) => t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        None => ms.to_string(),
    }
}

/// The latest instant RFC 3339 can write (9999-12-31T23:59:59.999Z).
pub const LATEST_RFC3339_MS: i64 = 253_402_300_799_999;
/// The earliest (0000-01-01T00:00:00Z).
pub const EARLIEST_RFC3339_MS: i64 = -62_167_219_200_000;

/// Formats Unix milliseconds as RFC 3339 in UTC to the millisecond, clamped to the years
/// 0000–9999, so [`parse_rfc3339_ms`] reads back exactly the clamped instant.
pub fn format_rfc3339_exact(ms: i64) -> String {
    let ms = ms.clamp(EARLIEST_RFC3339_MS, LATEST_RFC3339_MS);
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_else(|| "9999-12-31T23:59:59.999Z".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_instants_read_back() {
        for ms in [
            0,
            1,
            -1,
            1_893_456_000_123,
            i64::MAX,
            i64::MIN,
            LATEST_RFC3339_MS,
        ] {
            let clamped = ms.clamp(EARLIEST_RFC3339_MS, LATEST_RFC3339_MS);
            assert_eq!(
                parse_rfc3339_ms(&format_rfc3339_exact(ms)),
                Some(clamped),
                "{ms}"
            );
        }
    }

    #[test]
    fn go_durations() {
        assert_eq!(parse_go_duration("300ms"), Some(Duration::from_millis(300)));
        assert_eq!(parse_go_duration("1.5h"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_go_duration("2h45m"), Some(Duration::from_secs(9900)));
        assert_eq!(
            parse_go_duration("1h30m10s"),
            Some(Duration::from_secs(5410))
        );
        assert_eq!(parse_go_duration("0"), Some(Duration::ZERO));
        for bad in ["", "h", "10", "1x", "-1s", "1..2s", "ms5"] {
            assert_eq!(parse_go_duration(bad), None, "{bad}");
        }
    }

    #[test]
    fn rfc3339_round_trip() {
        let ms = parse_rfc3339_ms("2030-01-01T00:00:00Z").unwrap();
        assert_eq!(format_rfc3339_ms(ms), "2030-01-01T00:00:00Z");
        assert_eq!(parse_rfc3339_ms("2030-01-01T01:00:00+01:00"), Some(ms));
        assert!(parse_rfc3339_ms("tomorrow").is_none());
    }
}
