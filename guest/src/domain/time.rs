//! Timestamps: milliseconds since the epoch, shown as RFC 3339 with milliseconds.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch, UTC.
pub type Millis = u64;

/// The wall clock now (wasi:clocks/wall-clock in the component).
pub fn now_millis() -> Millis {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// `2026-03-08T12:00:00.000Z`.
pub fn format_rfc3339(ms: Millis) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

/// The instant an RFC 3339 timestamp in UTC names (`Z` only, any fraction
/// of a second, truncated to milliseconds); `None` for anything else or any
/// instant before 1970.
pub fn parse_rfc3339(text: &str) -> Option<Millis> {
    let at = humantime::parse_rfc3339(text).ok()?;
    let since = at.duration_since(UNIX_EPOCH).ok()?;
    u64::try_from(since.as_millis()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_utc_timestamps_only() {
        assert_eq!(
            parse_rfc3339("2026-03-08T12:00:12.450Z"),
            Some(1_772_971_212_450)
        );
        assert_eq!(
            parse_rfc3339("2026-03-08T12:00:00Z"),
            Some(1_772_971_200_000)
        );
        for bad in [
            "2026-03-08T12:00:00+01:00",
            "2026-03-08 12:00:00Z",
            "2026-03-08",
            "2026-13-08T12:00:00Z",
            "tomorrow",
            "",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }

    #[test]
    fn formats_with_milliseconds_in_utc() {
        assert_eq!(format_rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            format_rfc3339(1_772_971_200_000),
            "2026-03-08T12:00:00.000Z"
        );
        assert_eq!(
            format_rfc3339(1_772_971_212_450),
            "2026-03-08T12:00:12.450Z"
        );
    }

    #[test]
    fn now_is_after_2025() {
        assert!(now_millis() > 1_735_689_600_000);
    }
}
