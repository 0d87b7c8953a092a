//! RFC 3339 and TimeSpan formats used by the platform.

use std::time::{Duration, SystemTime};

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::{Error, Result};

/// Formats a time as RFC 3339 in UTC with a `+00:00` offset, whole seconds
/// (`2030-01-01T00:00:00+00:00`).
pub fn rfc3339(t: SystemTime) -> String {
    let dt = OffsetDateTime::from(t).replace_nanosecond(0).unwrap_or(OffsetDateTime::UNIX_EPOCH);
    let fmt = time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]+00:00");
    dt.format(&fmt).unwrap_or_else(|_| "1970-01-01T00:00:00+00:00".to_owned())
}

/// Parses an RFC 3339 time (any offset, optional fractional seconds).
pub fn parse_rfc3339(s: &str) -> Result<SystemTime> {
    OffsetDateTime::parse(s, &Rfc3339)
        .map(SystemTime::from)
        .map_err(|e| Error::Platform(format!("invalid RFC 3339 time {s:?}: {e}")))
}

/// The longest lifetime taken from the platform (100 years): a longer one is taken as this, so
/// that no time computed from it can overflow (`SystemTime + Duration` panics on overflow).
pub(crate) const MAX_LIFETIME: Duration = Duration::from_secs(100 * 365 * 86_400);

/// `now + lifetime` for a lifetime that came from the platform: never panics (the lifetime is
/// capped at 100 years, and a sum past what `SystemTime` holds saturates).
pub fn expiry_after(now: SystemTime, lifetime: Duration) -> SystemTime {
    let lifetime = lifetime.min(MAX_LIFETIME);
    now.checked_add(lifetime).unwrap_or(now)
}

/// Parses a .NET TimeSpan in the "c" format, `[-][d.]hh:mm:ss[.fffffff]`; negative values are zero,
/// values over 100 years are 100 years.
pub fn parse_timespan(s: &str) -> Result<Duration> {
    let bad = || Error::Platform(format!("invalid TimeSpan {s:?}"));
    if s.starts_with('-') {
        return Ok(Duration::ZERO);
    }
    let parts: Vec<&str> = s.split(':').collect();
    let [first, minutes, seconds] = parts[..] else { return Err(bad()) };
    let (days, hours) = match first.split_once('.') {
        Some((d, h)) => (d.parse::<u64>().map_err(|_| bad())?, h),
        None => (0, first),
    };
    let hours: u64 = hours.parse().map_err(|_| bad())?;
    let minutes: u64 = minutes.parse().map_err(|_| bad())?;
    let (secs, frac) = seconds.split_once('.').unwrap_or((seconds, ""));
    let secs: u64 = secs.parse().map_err(|_| bad())?;
    if hours > 23 || minutes > 59 || secs > 59 || !frac.chars().all(|c| c.is_ascii_digit()) {
        return Err(bad());
    }
    let total = days.saturating_mul(86_400).saturating_add(hours * 3600 + minutes * 60 + secs);
    Ok(Duration::from_secs(total).min(MAX_LIFETIME))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timespans() {
        assert_eq!(parse_timespan("8.11:55:36.3296177").unwrap(), Duration::from_secs(734_136));
        assert_eq!(parse_timespan("13:00:39").unwrap(), Duration::from_secs(46_839));
        assert_eq!(parse_timespan("00:00:39").unwrap(), Duration::from_secs(39));
        assert_eq!(parse_timespan("0000.00:00:00.00").unwrap(), Duration::ZERO);
        assert_eq!(parse_timespan("-1.00:00:00").unwrap(), Duration::ZERO);
        // A hostile or broken server: taken as the cap, and a time computed from it never panics
        // (this made `start` panic: "overflow when adding duration to instant").
        for huge in ["200000000000000.00:00:00", "18446744073709551615.23:59:59"] {
            let lifetime = parse_timespan(huge).unwrap();
            assert_eq!(lifetime, MAX_LIFETIME);
            let now = SystemTime::now();
            assert!(expiry_after(now, lifetime) > now);
        }
        assert_eq!(expiry_after(SystemTime::UNIX_EPOCH, Duration::MAX), SystemTime::UNIX_EPOCH + MAX_LIFETIME);
        for bad in ["", "12", "1:2", "a:b:c", "1:2:3:4", "99:00:00", "1.2.3:00:00"] {
            assert!(parse_timespan(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn rfc3339_round_trip() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_893_456_000);
        assert_eq!(rfc3339(t), "2030-01-01T00:00:00+00:00");
        assert_eq!(parse_rfc3339("2030-01-01T00:00:00Z").unwrap(), t);
        assert_eq!(parse_rfc3339("2030-01-01T01:00:00.5+01:00").unwrap(), t + Duration::from_millis(500));
        assert!(parse_rfc3339("yesterday").is_err());
    }
}
