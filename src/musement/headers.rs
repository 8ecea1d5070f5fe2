//! Pure parsing of the two response headers the client reads: `Date` (Musement's server time,
//! which orders a poll against webhooks) and `Retry-After` (how long to back off).

use std::time::Duration;

use chrono::{DateTime, NaiveDateTime, Utc};

/// Parses an HTTP-date (RFC 7231 §7.1.1.1): the preferred IMF-fixdate
/// (`Sun, 06 Nov 1994 08:49:37 GMT`) and the two obsolete forms servers may still send
/// (RFC 850 `Sunday, 06-Nov-94 08:49:37 GMT` and asctime `Sun Nov  6 08:49:37 1994`).
pub(crate) fn parse_http_date(value: &str) -> Option<DateTime<Utc>> {
    let value = value.trim();
    if let Ok(time) = DateTime::parse_from_rfc2822(value) {
        return Some(time.with_timezone(&Utc));
    }
    // Both obsolete forms are defined to be in GMT.
    ["%A, %d-%b-%y %H:%M:%S GMT", "%a %b %e %H:%M:%S %Y"]
        .iter()
        .find_map(|format| NaiveDateTime::parse_from_str(value, format).ok())
        .map(|naive| naive.and_utc())
}

/// Parses `Retry-After`: delta-seconds (`7`), or an HTTP-date turned into a wait from `now`
/// (zero if it is already past). `None` for anything else, so a bad header means "no advice"
/// rather than an error.
pub(crate) fn parse_retry_after(value: &str, now: DateTime<Utc>) -> Option<Duration> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        return value.parse::<u64>().ok().map(Duration::from_secs);
    }
    let at = parse_http_date(value)?;
    Some((at - now).to_std().unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc)
    }

    #[test]
    fn http_date_in_all_three_forms() {
        let expected = utc("1994-11-06T08:49:37Z");
        for text in [
            "Sun, 06 Nov 1994 08:49:37 GMT",
            " Sun, 06 Nov 1994 08:49:37 GMT ",
            "Sunday, 06-Nov-94 08:49:37 GMT",
            "Sun Nov  6 08:49:37 1994",
        ] {
            assert_eq!(parse_http_date(text), Some(expected), "{text:?}");
        }
    }

    #[test]
    fn unparseable_dates_are_none() {
        for text in [
            "",
            "yesterday",
            "2018-08-17T15:59:43+0000",
            "Sun, 32 Nov 1994",
        ] {
            assert_eq!(parse_http_date(text), None, "{text:?}");
        }
    }

    #[test]
    fn retry_after_delta_seconds() {
        let now = utc("2024-01-01T00:00:00Z");
        assert_eq!(parse_retry_after("7", now), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        for bad in ["", "-1", "1.5", "7s", "99999999999999999999999"] {
            assert_eq!(parse_retry_after(bad, now), None, "{bad:?}");
        }
    }

    #[test]
    fn retry_after_http_date_is_a_wait_from_now() {
        let now = utc("1994-11-06T08:49:00Z");
        let header = "Sun, 06 Nov 1994 08:49:37 GMT";
        assert_eq!(
            parse_retry_after(header, now),
            Some(Duration::from_secs(37))
        );
        let later = utc("1994-11-06T09:00:00Z");
        assert_eq!(parse_retry_after(header, later), Some(Duration::ZERO));
    }
}
