//! Small pieces of the emulator's side of the protocol: comparing secrets in constant time, and
//! the .NET TimeSpan format the platform gives lifetimes in.

use std::time::Duration;

/// Compares two secrets in time that depends only on their lengths, not on where they differ.
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// Formats a duration as a .NET TimeSpan, `d.hh:mm:ss` (days omitted when zero).
pub fn format_timespan(d: Duration) -> String {
    let s = d.as_secs();
    let (days, h, m, sec) = (s / 86_400, (s / 3600) % 24, (s / 60) % 60, s % 60);
    if days > 0 {
        format!("{days}.{h:02}:{m:02}:{sec:02}")
    } else {
        format!("{h:02}:{m:02}:{sec:02}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_compare_whole_and_timespans_format_as_the_platform_writes_them() {
        assert!(ct_eq(b"secret", b"secret"));
        assert!(!ct_eq(b"secret", b"secreT"));
        assert!(!ct_eq(b"secret", b"secret!"));
        assert!(ct_eq(b"", b""));
        assert_eq!(format_timespan(Duration::from_secs(734_136)), "8.11:55:36");
        assert_eq!(format_timespan(Duration::from_secs(39)), "00:00:39");
        let parsed = spotflow_core::time_format::parse_timespan(&format_timespan(Duration::from_secs(734_136)));
        assert_eq!(parsed.unwrap(), Duration::from_secs(734_136), "what the SDK parses");
    }
}
