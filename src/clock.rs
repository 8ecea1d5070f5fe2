//! Where "now" comes from. Everything time-based (receive times, the far-future clamp, re-poll
//! marks, later backoff and quiet periods) reads a [`Clock`], so tests move time instead of sleeping.

use std::sync::Mutex;

use chrono::{DateTime, Duration, NaiveDateTime, SecondsFormat, Utc};

/// A source of the current time.
pub trait Clock: Send + Sync + 'static {
    /// The current time, in UTC.
    fn now(&self) -> DateTime<Utc>;
}

/// The real wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// A clock that only moves when told to; for tests.
#[derive(Debug)]
pub struct ManualClock {
    /// The time `now()` answers until `set` or `advance` changes it.
    current: Mutex<DateTime<Utc>>,
}

impl ManualClock {
    /// A clock stopped at `start`.
    pub fn new(start: DateTime<Utc>) -> Self {
        Self {
            current: Mutex::new(start),
        }
    }

    /// Jumps to `to` (may go backwards, like a real wall clock can).
    pub fn set(&self, to: DateTime<Utc>) {
        *self.current.lock().unwrap_or_else(|e| e.into_inner()) = to;
    }

    /// Moves forward by `by`.
    pub fn advance(&self, by: Duration) {
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        *current += by;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.current.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The latest time orderwatch stores: the end of year 9999, so stored text stays fixed-width.
pub fn latest() -> DateTime<Utc> {
    DateTime::from_timestamp(253_402_300_799, 0).unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// `time + by`, never past [`latest`] and never panicking, whatever a peer or a config sent.
pub fn later(time: DateTime<Utc>, by: Duration) -> DateTime<Utc> {
    time.checked_add_signed(by)
        .map_or(latest(), |t| t.min(latest()))
}

/// Formats a time the way every table stores it: fixed-width RFC 3339 UTC with milliseconds
/// (`2018-12-10T13:12:40.000Z`), so `sqlite3` users can read it and string order is time order.
pub fn to_db_text(time: DateTime<Utc>) -> String {
    time.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Parses a stored time: what [`to_db_text`] writes, any RFC 3339 time, and the forms people
/// type by hand in `sqlite3`: SQLite's own `YYYY-MM-DD HH:MM:SS` (what `datetime('now')`
/// gives) and `YYYY-MM-DDTHH:MM:SS`, optionally with a fraction, without a zone, read as UTC.
pub fn from_db_text(text: &str) -> Result<DateTime<Utc>, chrono::ParseError> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .or_else(|rfc3339_error| {
            ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f"]
                .iter()
                .find_map(|format| NaiveDateTime::parse_from_str(text, format).ok())
                .map(|naive| naive.and_utc())
                .ok_or(rfc3339_error)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn db_text_is_fixed_width_and_round_trips() {
        let t = DateTime::parse_from_rfc3339("2018-12-10T13:12:40Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(to_db_text(t), "2018-12-10T13:12:40.000Z");
        assert_eq!(from_db_text(&to_db_text(t)).unwrap(), t);
    }

    #[test]
    fn db_text_also_reads_what_people_type_in_sqlite3() {
        let t = from_db_text("2018-12-10T13:12:40.000Z").unwrap();
        for typed in [
            "2018-12-10 13:12:40",     // datetime('now')
            "2018-12-10T13:12:40",     // no zone: UTC
            "2018-12-10 13:12:40.000", // strftime('%Y-%m-%d %H:%M:%f')
            "2018-12-10T15:12:40+02:00",
            "2018-12-10 13:12:40Z",
        ] {
            assert_eq!(from_db_text(typed).ok(), Some(t), "{typed}");
        }
        for garbage in [
            "",
            "yesterday",
            "2018-12-10",
            "2018-12-10 13:12",
            "2018-13-10 13:12:40",
        ] {
            assert!(from_db_text(garbage).is_err(), "{garbage}");
        }
    }

    #[test]
    fn later_saturates_instead_of_panicking() {
        let t = Utc::now();
        assert_eq!(later(t, Duration::seconds(5)), t + Duration::seconds(5));
        assert_eq!(later(t, Duration::MAX), latest());
        assert_eq!(to_db_text(latest()), "9999-12-31T23:59:59.000Z");
    }

    #[test]
    fn manual_clock_moves_only_when_told() {
        let start = Utc::now();
        let clock = ManualClock::new(start);
        assert_eq!(clock.now(), start);
        clock.advance(Duration::seconds(5));
        assert_eq!(clock.now(), start + Duration::seconds(5));
    }
}
