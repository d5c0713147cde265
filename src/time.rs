//! Time as the controller keeps it: unix seconds inside, RFC 3339 in status and on the wire.

/// Parses a point in time: RFC 3339 (`2026-11-22T10:00:00Z`), unix seconds, `now`, or
/// `now-30m`.
pub fn parse_time(text: &str, now: i64) -> Result<i64, String> {
    let text = text.trim();
    if text == "now" {
        return Ok(now);
    }
    if let Some(ago) = text.strip_prefix("now-") {
        return humantime::parse_duration(ago)
            .map(|d| now - d.as_secs() as i64)
            .map_err(|e| format!("{text:?}: {e}"));
    }
    if let Ok(secs) = text.parse::<i64>() {
        return Ok(secs);
    }
    humantime::parse_rfc3339_weak(text)
        .map_err(|e| format!("{text:?} is not a time (RFC 3339, unix seconds or now-30m): {e}"))
        .and_then(|t| {
            t.duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs() as i64)
                .map_err(|_| format!("{text:?} is before 1970"))
        })
}

/// The current time in unix seconds.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// `2026-11-22T10:00:00Z` for unix seconds.
pub fn format_time(at: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(at.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

/// Unix seconds of an RFC 3339 time recorded in status; None when absent or unreadable.
pub fn parse_at(text: Option<&str>) -> Option<i64> {
    let t = humantime::parse_rfc3339_weak(text?).ok()?;
    t.duration_since(std::time::UNIX_EPOCH)
        .ok()
        .map(|d| d.as_secs() as i64)
}

/// A spec duration in seconds, or `default` when it does not parse.
pub fn secs(d: &crate::api::common::Duration, default: u64) -> i64 {
    d.parse().map_or(default, |d| d.as_secs()) as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_parse_in_every_accepted_form() {
        let now = 1_800_000_000;
        assert_eq!(parse_time("now", now), Ok(now));
        assert_eq!(parse_time("now-30m", now), Ok(now - 1800));
        assert_eq!(parse_time("1700000000", now), Ok(1_700_000_000));
        assert_eq!(parse_time("2023-11-14T22:13:20Z", now), Ok(1_700_000_000));
        assert!(
            parse_time("yesterday", now)
                .expect_err("bad")
                .contains("RFC 3339")
        );
        assert_eq!(format_time(1_700_000_000), "2023-11-14T22:13:20Z");
    }
}
