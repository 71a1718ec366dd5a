//! Times as people and log tools read them: RFC 3339 in UTC, without a
//! calendar library (the one conversion needed is days to a civil date).

use std::time::{SystemTime, UNIX_EPOCH};

/// `2026-12-02T01:23:45Z`, or with `micros` `2026-12-02T01:23:45.123456Z`
/// (fixed width, so log lines line up). Times before 1970 print as 1970.
pub fn rfc3339(at: SystemTime, micros: bool) -> String {
    let since = at.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (days, rest) = ((secs / 86_400) as i64, secs % 86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let (h, m, s) = (rest / 3600, rest / 60 % 60, rest % 60);
    match micros {
        true => format!(
            "{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}.{:06}Z",
            since.subsec_micros()
        ),
        false => format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}Z"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn times_are_rfc3339_utc() {
        let at = UNIX_EPOCH + Duration::from_micros(1_796_171_445_123_456);
        assert_eq!(rfc3339(at, true), "2026-12-02T00:30:45.123456Z");
        assert_eq!(rfc3339(at, false), "2026-12-02T00:30:45Z");
        assert_eq!(rfc3339(UNIX_EPOCH, true), "1970-01-01T00:00:00.000000Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(rfc3339(leap, false), "2000-02-29T00:00:00Z");
        let t = UNIX_EPOCH + Duration::from_secs(1_796_175_825);
        assert_eq!(rfc3339(t, false), "2026-12-02T01:43:45Z");
    }
}
